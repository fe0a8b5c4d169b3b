//! NIP-42 authentication (challenge, relay tag, time window, several pubkeys, `[auth] enabled`,
//! whitelist) and NIP-70 protected events.

mod common;

use common::*;
use serde_json::json;

const REFUSED_AUTH: &[&str] = &["invalid:", "auth-required:"];

#[tokio::test]
async fn challenge_is_sent_on_connect_and_differs_per_connection() {
    let relay = Relay::start().await;
    let mut a = relay.connect().await;
    let mut b = relay.connect().await;
    let ca = a.challenge().await;
    let cb = b.challenge().await;
    assert!(!ca.is_empty());
    assert!(
        ca.len() >= 8,
        "challenge too short to be unguessable: {ca:?}"
    );
    assert_ne!(ca, cb, "two connections got the same challenge");
}

#[tokio::test]
async fn auth_with_the_host_as_relay_tag_is_accepted() {
    let relay = Relay::start().await;
    let k = keys();
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&k, &relay.ws_url()).await;
    assert!(ok, "AUTH refused: {msg}");

    // Scheme and trailing slash do not matter.
    for tag in [
        format!("wss://127.0.0.1:{}/", relay.port),
        format!("ws://127.0.0.1:{}/", relay.port),
        format!("wss://127.0.0.1:{}", relay.port),
    ] {
        let mut ws = relay.connect().await;
        let (ok, msg) = ws.auth(&keys(), &tag).await;
        assert!(ok, "AUTH with relay tag {tag} refused: {msg}");
    }
}

#[tokio::test]
async fn relay_tag_names_the_relay_not_the_host_header_the_client_sent() {
    // The Host header is the client's to forge (issue 8, rule 1): without relay_url the
    // expected URL is the loopback listen address, whatever Host was sent.
    let relay = Relay::start().await;
    let host = "relay.test:4444";
    let mut ws = Ws::connect_with_host(&relay.ws_url(), host).await;
    let (ok, msg) = ws.auth(&keys(), "wss://relay.test:4444/").await;
    assert!(!ok, "AUTH naming the forged Host header accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);

    let mut ws = Ws::connect_with_host(&relay.ws_url(), host).await;
    let (ok, msg) = ws.auth(&keys(), &relay.ws_url()).await;
    assert!(ok, "AUTH naming the relay's own address refused: {msg}");
}

#[tokio::test]
async fn configured_relay_url_is_the_one_to_name() {
    let relay = Relay::builder()
        .config("[server]\nrelay_url = \"wss://relay.example.com\"\n")
        .start()
        .await;
    for tag in [
        "wss://relay.example.com",
        "wss://relay.example.com/",
        "ws://relay.example.com",
    ] {
        let mut ws = relay.connect().await;
        let (ok, msg) = ws.auth(&keys(), tag).await;
        assert!(ok, "AUTH naming relay_url as {tag} refused: {msg}");
    }
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&keys(), &relay.ws_url()).await;
    assert!(
        !ok,
        "AUTH naming the socket address accepted although relay_url is set"
    );
    assert_any_prefix(&msg, REFUSED_AUTH);
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&keys(), "wss://evil.example.com").await;
    assert!(!ok);
    assert_any_prefix(&msg, REFUSED_AUTH);
}

#[tokio::test]
async fn wrong_challenge_is_refused() {
    let relay = Relay::start().await;
    let k = keys();
    let mut ws = relay.connect().await;
    let _ = ws.challenge().await;
    let e = auth_event(&k, "not-the-challenge", &relay.ws_url());
    let (ok, msg) = ws.send_auth(&e).await;
    assert!(!ok, "AUTH with a wrong challenge accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);

    // Another connection's challenge is not this connection's.
    let mut other = relay.connect().await;
    let theirs = other.challenge().await;
    let e = auth_event(&k, &theirs, &relay.ws_url());
    let (ok, msg) = ws.send_auth(&e).await;
    assert!(!ok, "AUTH with another connection's challenge accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);

    // Not authenticated afterwards: a protected event is still refused.
    let p = ev(&k, 1, &[&["-"]], "protected");
    let (ok, msg) = ws.publish(&p).await;
    assert!(!ok);
    assert_prefix(&msg, "auth-required:");
}

#[tokio::test]
async fn missing_challenge_or_relay_tag_is_refused() {
    let relay = Relay::start().await;
    let k = keys();
    let mut ws = relay.connect().await;
    let c = ws.challenge().await;
    let e = ev(&k, 22242, &[&["relay", &relay.ws_url()]], "");
    let (ok, msg) = ws.send_auth(&e).await;
    assert!(!ok, "AUTH without challenge accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);
    let e = ev(&k, 22242, &[&["challenge", &c]], "");
    let (ok, msg) = ws.send_auth(&e).await;
    assert!(!ok, "AUTH without relay tag accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);
}

#[tokio::test]
async fn wrong_relay_is_refused() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&keys(), "wss://some.other.relay").await;
    assert!(!ok, "AUTH for another relay accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);
    let mut ws = relay.connect().await;
    let (ok, msg) = ws
        .auth(
            &keys(),
            &format!("ws://127.0.0.1:{}", relay.port.wrapping_add(1)),
        )
        .await;
    assert!(!ok, "AUTH for another port accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);
}

#[tokio::test]
async fn auth_created_at_must_be_within_ten_minutes() {
    let relay = Relay::start().await;
    for (delta, accept) in [
        (-11 * 60, false),
        (11 * 60, false),
        (-9 * 60, true),
        (9 * 60, true),
    ] {
        let mut ws = relay.connect().await;
        let c = ws.challenge().await;
        let at = (now() as i64 + delta) as u64;
        let e = auth_event_at(&keys(), &c, &relay.ws_url(), at);
        let (ok, msg) = ws.send_auth(&e).await;
        assert_eq!(ok, accept, "AUTH created_at now{delta:+}s: OK {ok} {msg:?}");
        if !ok {
            assert_any_prefix(&msg, REFUSED_AUTH);
        }
    }
}

#[tokio::test]
async fn auth_must_be_kind_22242_and_correctly_signed() {
    let relay = Relay::start().await;
    let k = keys();
    let mut ws = relay.connect().await;
    let c = ws.challenge().await;
    let wrong_kind = ev(
        &k,
        1,
        &[&["relay", &relay.ws_url()], &["challenge", &c]],
        "",
    );
    let (ok, msg) = ws.send_auth(&wrong_kind).await;
    assert!(!ok, "AUTH of kind 1 accepted");
    assert_any_prefix(&msg, REFUSED_AUTH);

    let mut bad_sig = auth_event(&k, &c, &relay.ws_url());
    bad_sig.sig.0[3] ^= 0x40;
    let (ok, msg) = ws.send_auth(&bad_sig).await;
    assert!(!ok, "AUTH with a bad signature accepted");
    assert_prefix(&msg, "invalid:");

    // Then a correct one still works on the same connection.
    let (ok, msg) = ws.auth(&k, &relay.ws_url()).await;
    assert!(ok, "{msg}");
}

#[tokio::test]
async fn a_connection_may_authenticate_several_pubkeys() {
    let relay = Relay::start().await;
    let (a, b) = (keys(), keys());
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&a, &relay.ws_url()).await;
    assert!(ok, "{msg}");
    let (ok, msg) = ws.auth(&b, &relay.ws_url()).await;
    assert!(ok, "second pubkey refused: {msg}");
    // Both identities are in force: protected events of either author are accepted.
    ws.publish_ok(&ev(&a, 1, &[&["-"]], "protected by a")).await;
    ws.publish_ok(&ev(&b, 1, &[&["-"]], "protected by b")).await;
    let (ok, msg) = ws.publish(&ev(&keys(), 1, &[&["-"]], "someone else")).await;
    assert!(!ok);
    assert_prefix(&msg, "restricted:");
}

#[tokio::test]
async fn auth_enabled_serves_nothing_before_auth() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let _ = ws.challenge().await;

    let e = ev(&k, 1, &[], "before auth");
    let (ok, msg) = ws.publish(&e).await;
    assert!(!ok, "EVENT accepted before AUTH");
    assert_prefix(&msg, "auth-required:");

    let m = ws.req_closed("r", &[json!({"kinds": [1]})]).await;
    assert_prefix(&m, "auth-required:");
    let m = ws.count("c", &[json!({"kinds": [1]})]).await;
    match m {
        Err(m) => assert_prefix(&m, "auth-required:"),
        Ok(n) => panic!("COUNT answered ({n}) before AUTH"),
    }

    let (ok, msg) = ws.auth(&k, &relay.ws_url()).await;
    assert!(ok, "{msg}");
    ws.publish_ok(&e).await;
    assert_eq!(
        ws.query(&[json!({"ids": [id_hex(&e)]})]).await,
        vec![event_value(&e)]
    );
    assert_eq!(ws.count("c2", &[json!({"ids": [id_hex(&e)]})]).await, Ok(1));

    // Another, unauthenticated, connection still gets nothing.
    let mut other = relay.connect().await;
    let m = other
        .req_closed("r2", &[json!({"ids": [id_hex(&e)]})])
        .await;
    assert_prefix(&m, "auth-required:");
}

#[tokio::test]
async fn an_auth_sent_right_after_an_event_is_answered_after_that_event() {
    // A client that sends EVENT then AUTH without waiting (nostr-sdk does, when it publishes
    // before the challenge is answered) must get the EVENT's `auth-required` refusal before the
    // AUTH's OK: on the refusal it waits for its AUTH's OK and only then resends. And the EVENT
    // stays refused: it arrived before the AUTH.
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let k = keys();
    for round in 0..5 {
        let mut ws = relay.connect().await;
        let challenge = ws.challenge().await;
        let events: Vec<_> = (0..3)
            .map(|i| ev(&k, 1, &[], &format!("before auth {round}/{i}")))
            .collect();
        let auth = auth_event(&k, &challenge, &relay.ws_url());
        for e in &events {
            ws.send(&json!(["EVENT", e])).await;
        }
        ws.send(&json!(["AUTH", auth])).await;

        let mut order = Vec::new();
        while order.len() < events.len() + 1 {
            let v = ws.recv().await;
            if v[0] == "OK" {
                order.push(v);
            }
        }
        for (e, ok) in events.iter().zip(&order) {
            assert_eq!(ok[1], id_hex(e), "OKs out of arrival order: {order:?}");
            assert_eq!(ok[2], false, "EVENT sent before AUTH accepted: {ok}");
            assert_prefix(ok[3].as_str().unwrap(), "auth-required:");
        }
        let last = order.last().unwrap();
        assert_eq!(
            last[1],
            id_hex(&auth),
            "AUTH's OK overtook an EVENT's: {order:?}"
        );
        assert_eq!(last[2], true, "AUTH refused: {last}");

        // Resent after the AUTH's OK, as the client does, it is accepted.
        ws.publish_ok(&events[0]).await;
    }
}

#[tokio::test]
async fn nostr_auth_required_env_turns_auth_on() {
    let relay = Relay::builder()
        .env("NOSTR_AUTH_REQUIRED", "true")
        .start()
        .await;
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.publish(&ev(&keys(), 1, &[], "env")).await;
    assert!(
        !ok,
        "EVENT accepted before AUTH with NOSTR_AUTH_REQUIRED=true"
    );
    assert_prefix(&msg, "auth-required:");
    let m = ws.req_closed("r", &[json!({"kinds": [1]})]).await;
    assert_prefix(&m, "auth-required:");
}

#[tokio::test]
async fn whitelist_admits_listed_pubkeys_hex_or_npub_only() {
    let (a, b, c) = (keys(), keys(), keys());
    let relay = Relay::builder()
        .config(&format!(
            "[auth]\nenabled = true\npubkey_whitelist = [\"{}\", \"{}\"]\n",
            pk_hex(&a),
            npub(&b)
        ))
        .start()
        .await;

    let mut wa = relay.connect_authed(&a).await;
    wa.publish_ok(&ev(&a, 1, &[], "listed hex")).await;
    let mut wb = relay.connect_authed(&b).await;
    let eb = ev(&b, 1, &[], "listed npub");
    wb.publish_ok(&eb).await;

    let mut wc = relay.connect().await;
    let (ok, msg) = wc.auth(&c, &relay.ws_url()).await;
    assert!(!ok, "AUTH of a pubkey not on the whitelist accepted");
    assert_prefix(&msg, "restricted:");
    let (ok, msg) = wc.publish(&ev(&c, 1, &[], "not listed")).await;
    assert!(!ok, "non-listed pubkey could publish");
    assert_any_prefix(&msg, &["auth-required:", "restricted:"]);
    let m = wc.req_closed("r", &[json!({"ids": [id_hex(&eb)]})]).await;
    assert_any_prefix(&m, &["auth-required:", "restricted:"]);
}

#[tokio::test]
async fn protected_event_needs_its_author_authenticated() {
    let relay = Relay::start().await;
    let (author, other) = (keys(), keys());
    let e = ev(&author, 1, &[&["-"]], "protected");

    let mut anon = relay.connect().await;
    let (ok, msg) = anon.publish(&e).await;
    assert!(
        !ok,
        "protected event accepted from an unauthenticated connection"
    );
    assert_prefix(&msg, "auth-required:");

    let mut as_other = relay.connect_authed(&other).await;
    let (ok, msg) = as_other.publish(&e).await;
    assert!(
        !ok,
        "protected event accepted from a connection authed as someone else"
    );
    assert_prefix(&msg, "restricted:");

    assert!(anon.query(&[json!({"ids": [id_hex(&e)]})]).await.is_empty());

    let mut as_author = relay.connect_authed(&author).await;
    let (ok, msg) = as_author.publish(&e).await;
    assert!(ok, "protected event refused from its author: {msg}");

    // Served unchanged (the "-" tag included) to an ordinary reader.
    assert_eq!(
        anon.query(&[json!({"ids": [id_hex(&e)]})]).await,
        vec![event_value(&e)]
    );
}

/// NIP-70 is checked by the relay (`ingest`) on every client write, before the store: ephemeral
/// events never reach the gateway's rules, and a duplicate is answered before them, so neither
/// may slip past it.
#[tokio::test]
async fn protected_ephemeral_and_duplicate_events_still_need_their_author() {
    let relay = Relay::start().await;
    let (author, other) = (keys(), keys());
    let mut listener = relay.connect().await;
    listener.req("live", &[json!({"kinds": [20001]})]).await;

    let mut anon = relay.connect().await;
    let mut as_other = relay.connect_authed(&other).await;
    let mut as_author = relay.connect_authed(&author).await;
    let relayed = ev(
        &author,
        20001,
        &[&["-"]],
        "ephemeral, relayed by a stranger",
    );
    let (ok, msg) = as_other.publish(&relayed).await;
    assert!(!ok, "a stranger's protected ephemeral event accepted");
    assert_prefix(&msg, "restricted:");
    let (ok, msg) = anon.publish(&relayed).await;
    assert!(!ok, "a protected ephemeral event accepted unauthenticated");
    assert_prefix(&msg, "auth-required:");
    let own = ev(&author, 20001, &[&["-"]], "ephemeral, from its author");
    let (ok, msg) = as_author.publish(&own).await;
    assert!(
        ok,
        "protected ephemeral event refused from its author: {msg}"
    );
    // The first live event is the author's: the refused ones were not delivered.
    assert_eq!(listener.next_event("live").await["id"], id_hex(&own));

    let stored = ev(&author, 1, &[&["-"]], "stored, protected");
    let (ok, msg) = as_author.publish(&stored).await;
    assert!(ok, "{msg}");
    let (ok, msg) = as_other.publish(&stored).await;
    assert!(
        !ok,
        "a stranger re-sending a stored protected event got OK true: {msg}"
    );
    assert_prefix(&msg, "restricted:");
    let (ok, msg) = anon.publish(&stored).await;
    assert!(
        !ok,
        "re-sending a stored protected event unauthenticated got OK true: {msg}"
    );
    assert_prefix(&msg, "auth-required:");
}
