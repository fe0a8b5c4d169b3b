//! Issue 8, authentication rules, from the attacker's side:
//!
//! - rule 1: NIP-42 `relay` tags and NIP-98 `u` URLs are checked against this relay's own
//!   configured URL(s) (or, without one, its loopback listen address), never the `Host` header;
//!   a relay on a public address without `server.relay_url` refuses to start;
//! - rule 2: a connection authenticates a bounded number of pubkeys, and AUTH is rate limited;
//! - rule 3: `pubkey_blacklist` applies to an event's author, with auth on or off, on the socket
//!   and through `import`;
//! - rule 9: rate limits count the client IP whatever key signs, so throwaway keys do not reset
//!   them.

mod common;
mod support_api;

use common::*;
use serde_json::json;
use std::time::Duration;
use support_api::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REFUSED_AUTH: &[&str] = &["invalid:", "auth-required:"];

/// A raw HTTP/1.1 GET with a `Host` of the caller's choosing: `(status, body)`. Raw on
/// purpose: a client crate derives `Host` from the URL, and these tests forge it.
async fn get_with_host(
    port: u16,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {text:?}"));
        (status, text)
    };
    tokio::time::timeout(RECV_TIMEOUT, fut)
        .await
        .expect("HTTP request timed out")
}

// ---------------------------------------------------------------------------------------------
// Rule 1: NIP-42 and NIP-98 are bound to this relay's own URL
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn nip42_relay_tag_naming_a_forged_host_is_refused() {
    // Defaults: no relay_url, listening on 127.0.0.1 → the expected URL is ws://127.0.0.1:port.
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let victim = keys();

    // Another relay forwarded our challenge to its visitor, who signed `relay=wss://evil.example`;
    // the attacker connects to us claiming to be evil.example.
    let mut ws = Ws::connect_with_host(&relay.ws_url(), "evil.example").await;
    let (ok, msg) = ws.auth(&victim, "wss://evil.example").await;
    assert!(
        !ok,
        "AUTH naming the forged Host accepted: logged in as the victim"
    );
    assert_any_prefix(&msg, REFUSED_AUTH);
    let (ok, msg) = ws.publish(&ev(&victim, 1, &[], "as the victim")).await;
    assert!(!ok, "publishing after a refused AUTH accepted");
    assert_prefix(&msg, "auth-required:");

    // Positive control: the relay's own URL works, whatever Host the client sent.
    for tag in [relay.ws_url(), format!("wss://127.0.0.1:{}/", relay.port)] {
        let mut ws = Ws::connect_with_host(&relay.ws_url(), "evil.example").await;
        let (ok, msg) = ws.auth(&victim, &tag).await;
        assert!(ok, "AUTH naming the relay's own URL {tag} refused: {msg}");
        ws.publish_ok(&ev(&victim, 1, &[], "rightful")).await;
    }
}

#[tokio::test]
async fn nip42_accepts_each_configured_relay_url_and_nothing_else() {
    let relay = Relay::builder()
        .config(
            "[server]\nrelay_url = [\"wss://relay.example.com\", \"wss://alt.example.org/nostr/\"]\n\
             [auth]\nenabled = true\n",
        )
        .start()
        .await;
    for tag in [
        "wss://relay.example.com",
        "ws://RELAY.example.com/",
        "https://relay.example.com:443",
        "wss://alt.example.org/nostr",
        "http://alt.example.org/nostr/",
    ] {
        let mut ws = relay.connect().await;
        let (ok, msg) = ws.auth(&keys(), tag).await;
        assert!(ok, "AUTH naming a configured URL ({tag}) refused: {msg}");
    }
    for (host, tag) in [
        ("evil.example", "wss://evil.example".to_owned()),
        (
            "relay.example.com.evil.example",
            "wss://relay.example.com.evil.example".to_owned(),
        ),
        // With relay_url set, the listen address is not a name of this relay.
        ("127.0.0.1", relay.ws_url()),
        ("alt.example.org", "wss://alt.example.org".to_owned()),
    ] {
        let mut ws = Ws::connect_with_host(&relay.ws_url(), host).await;
        let (ok, msg) = ws.auth(&keys(), &tag).await;
        assert!(!ok, "AUTH naming {tag} with Host {host} accepted");
        assert_any_prefix(&msg, REFUSED_AUTH);
    }
}

#[tokio::test]
async fn relay_url_env_override_is_a_comma_separated_list() {
    let relay = Relay::builder()
        .config("[server]\nrelay_url = \"wss://from-file.example\"\n")
        .env("RELAY_URL", "wss://a.example, wss://b.example")
        .start()
        .await;
    for tag in ["wss://a.example", "wss://b.example"] {
        let mut ws = relay.connect().await;
        let (ok, msg) = ws.auth(&keys(), tag).await;
        assert!(ok, "AUTH naming RELAY_URL entry {tag} refused: {msg}");
    }
    let mut ws = relay.connect().await;
    let (ok, _) = ws.auth(&keys(), "wss://from-file.example").await;
    assert!(!ok, "the environment replaces the file's relay_url");
}

#[tokio::test]
async fn nip98_u_naming_a_forged_host_is_refused() {
    let alice = keys();
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&alice));
    let forged = nip98(&alice, &format!("https://evil.example{path}"), "GET", None);
    let (status, body) = get_with_host(
        relay.port,
        &path,
        "evil.example",
        &[("Authorization", &forged)],
    )
    .await;
    assert_eq!(
        status, 401,
        "NIP-98 token for the forged Host accepted: {body}"
    );
    assert!(body.contains("auth_invalid"), "{body}");

    // Positive control: the relay's own URL, whatever Host was sent.
    let own = nip98(&alice, &url(&relay, &path), "GET", None);
    let (status, body) = get_with_host(
        relay.port,
        &path,
        "evil.example",
        &[("Authorization", &own)],
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn nip98_accepts_each_configured_relay_url() {
    let alice = keys();
    let relay = Relay::builder()
        .config(
            "[server]\nrelay_url = [\"wss://relay.example.com\", \"wss://alt.example.org\"]\n\
             [auth]\nenabled = true\n",
        )
        .start()
        .await;
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&alice));
    for base in ["https://relay.example.com", "https://alt.example.org"] {
        let h = nip98(&alice, &format!("{base}{path}"), "GET", None);
        let resp = relay.get_with(&path, &[("Authorization", &h)]).await;
        assert_eq!(resp.status, 200, "{base}: {}", resp.text());
    }
    let forged = nip98(&alice, &format!("https://evil.example{path}"), "GET", None);
    let (status, body) = get_with_host(
        relay.port,
        &path,
        "evil.example",
        &[("Authorization", &forged)],
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn public_listen_address_without_relay_url_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhost = \"0.0.0.0\"\nport = {}\n[data]\npath = {:?}\n[auth]\nenabled = true\n",
            free_port(),
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let config = config.to_string_lossy().into_owned();
    let out = run_cli_timeout(
        &["relay", "-c", &config, "--log-format", "text"],
        None,
        &[],
        Duration::from_secs(20),
    );
    assert!(
        !out.success(),
        "started on 0.0.0.0 with auth on and no relay_url: {out:?}"
    );
    assert!(out.stderr.contains("server.relay_url"), "{}", out.stderr);
}

#[tokio::test]
async fn public_listen_address_with_relay_url_from_the_environment_starts() {
    let relay = Relay::builder()
        .config("[server]\nhost = \"0.0.0.0\"\n[auth]\nenabled = true\n")
        .env("RELAY_URL", "wss://relay.example.com")
        .start()
        .await;
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&keys(), "wss://relay.example.com").await;
    assert!(ok, "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Rule 2: a bounded number of pubkeys per connection; AUTH is rate limited
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_connection_authenticates_at_most_max_pubkeys_per_connection() {
    // The default is 8.
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let first: Vec<_> = (0..8).map(|_| keys()).collect();
    for k in &first {
        let (ok, msg) = ws.auth(k, &relay.ws_url()).await;
        assert!(ok, "AUTH within the bound refused: {msg}");
    }
    let mut refused = 0;
    for _ in 0..20 {
        let (ok, msg) = ws.auth(&keys(), &relay.ws_url()).await;
        if !ok {
            assert_prefix(&msg, "restricted:");
            assert!(msg.contains("max_pubkeys_per_connection"), "{msg}");
            refused += 1;
        }
    }
    assert_eq!(refused, 20, "AUTHs beyond 8 pubkeys accepted");
    // Positive control: re-authenticating a key already held is fine, and every held key works.
    let (ok, msg) = ws.auth(&first[3], &relay.ws_url()).await;
    assert!(ok, "re-AUTH of a held key refused: {msg}");
    for k in &first {
        ws.publish_ok(&ev(k, 1, &[&["-"]], "protected, by a held key"))
            .await;
    }
}

#[tokio::test]
async fn auth_messages_are_rate_limited_per_connection_and_per_ip() {
    let relay = Relay::builder()
        .config(
            "[auth]\nmax_auths_per_minute_per_connection = 5\nmax_auths_per_minute_per_ip = 12\n",
        )
        .start()
        .await;
    // One connection: failing AUTHs (wrong relay tag) count too.
    let mut ws = relay.connect().await;
    let mut limited = 0;
    for _ in 0..10 {
        let (ok, msg) = ws.auth(&keys(), "wss://wrong.example").await;
        assert!(!ok);
        if msg.starts_with("rate-limited:") {
            limited += 1;
        } else {
            assert_prefix(&msg, "invalid:");
        }
    }
    assert_eq!(limited, 5, "10 AUTHs with a per-connection limit of 5/min");

    // New connections from the same IP share the IP's allowance (12, 5 already spent).
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..4 {
        let mut ws = relay.connect().await;
        for _ in 0..3 {
            let (ok, msg) = ws.auth(&keys(), &relay.ws_url()).await;
            if ok {
                accepted += 1;
            } else {
                assert_prefix(&msg, "rate-limited:");
                limited += 1;
            }
        }
    }
    // 7 left of the IP's 12 (a slow run may see one more refilled).
    assert!(
        (7..=8).contains(&accepted),
        "{accepted} of 12 AUTHs accepted with 7 left of the IP's allowance"
    );
    assert_eq!(accepted + limited, 12);
}

// ---------------------------------------------------------------------------------------------
// Rule 3: the blacklist applies to the event's author
// ---------------------------------------------------------------------------------------------

fn blacklist_config(bad: &secp256k1::Keypair, auth: bool) -> String {
    format!(
        "[auth]\nenabled = {auth}\npubkey_blacklist = [\"{}\"]\n",
        pk_hex(bad)
    )
}

#[tokio::test]
async fn blacklisted_author_is_refused_on_an_authenticated_connection() {
    let (bad, good) = (keys(), keys());
    for auth in [true, false] {
        let relay = Relay::builder()
            .config(&blacklist_config(&bad, auth))
            .start()
            .await;
        let mut ws = relay.connect_authed(&good).await;
        for e in [
            ev(&bad, 1, &[], "from a blacklisted key"),
            ev(&bad, 30023, &[&["d", "x"]], "addressable"),
            ev(&bad, 20001, &[], "ephemeral"),
        ] {
            let (ok, msg) = ws.publish(&e).await;
            assert!(
                !ok,
                "auth={auth}: kind {} by a blacklisted author accepted",
                e.kind
            );
            assert_prefix(&msg, "blocked:");
        }
        // The blacklisted key cannot authenticate either.
        let mut other = relay.connect().await;
        let (ok, msg) = other.auth(&bad, &relay.ws_url()).await;
        assert!(!ok);
        assert_prefix(&msg, "restricted:");
        // Positive control.
        ws.publish_ok(&ev(&good, 1, &[], "fine")).await;
    }
}

#[tokio::test]
async fn import_refuses_blacklisted_authors() {
    let (bad, good) = (keys(), keys());
    let relay = Relay::builder()
        .config(&blacklist_config(&bad, true))
        .prepare();
    let lines = [
        serde_json::to_string(&ev(&bad, 1, &[], "smuggled")).unwrap(),
        serde_json::to_string(&ev(&good, 1, &[], "fine")).unwrap(),
    ]
    .join("\n");
    let out = relay.cli(&["import"], Some(lines.as_bytes()));
    assert!(out.success(), "{out:?}");
    assert!(
        out.stderr.contains("imported 1 events"),
        "the blacklisted author's event was imported: {}",
        out.stderr
    );
    assert!(out.stderr.contains("blocked:"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------------------------
// Rule 9: throwaway keys do not reset rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn throwaway_keys_do_not_reset_the_event_limit() {
    let relay = Relay::builder()
        .config(
            "[server]\ntrust_forwarded_for = true\n\
             [extensions.mls_gateway.rate_limits]\nmax_events_per_minute = 10\n",
        )
        .start()
        .await;
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..20 {
        // A fresh key on a fresh connection per event.
        let k = keys();
        let mut ws = relay.connect_authed(&k).await;
        let (ok, msg) = ws.publish(&ev(&k, 1, &[], "throwaway")).await;
        if ok {
            accepted += 1;
        } else {
            assert_prefix(&msg, "rate-limited:");
            limited += 1;
        }
    }
    assert!(
        accepted <= 11,
        "{accepted} events accepted from one IP with a limit of 10/min"
    );
    assert!(limited >= 9);

    // Positive control: another client address is not affected.
    let k = keys();
    let mut ws =
        Ws::connect_with_headers(&relay.ws_url(), &[("x-forwarded-for", "203.0.113.9")]).await;
    let (ok, msg) = ws.auth(&k, &relay.ws_url()).await;
    assert!(ok, "{msg}");
    ws.publish_ok(&ev(&k, 1, &[], "from elsewhere")).await;
}

#[tokio::test]
async fn throwaway_keys_do_not_reset_the_req_limit() {
    let relay = Relay::builder()
        .config("[server]\ntrust_forwarded_for = true\n[limitation]\nmax_reqs_per_minute = 10\n")
        .start()
        .await;
    let mut limited = 0;
    for i in 0..20 {
        let k = keys();
        let mut ws = relay.connect_authed(&k).await;
        match ws.count(&format!("c{i}"), &[json!({"kinds": [1]})]).await {
            Ok(_) => {}
            Err(msg) => {
                assert_prefix(&msg, "rate-limited:");
                limited += 1;
            }
        }
    }
    assert!(
        limited >= 9,
        "only {limited} of 20 COUNTs refused with a limit of 10/min"
    );

    let mut ws =
        Ws::connect_with_headers(&relay.ws_url(), &[("x-forwarded-for", "203.0.113.9")]).await;
    assert!(ws.count("other", &[json!({"kinds": [1]})]).await.is_ok());
}

#[tokio::test]
async fn throwaway_nip98_keys_do_not_reset_the_api_limit() {
    let relay = Relay::builder()
        .config("[server]\ntrust_forwarded_for = true\n[limitation]\nmax_reqs_per_minute = 10\n")
        .start()
        .await;
    let mut limited = 0;
    for _ in 0..20 {
        let k = keys();
        let resp = call(
            &relay,
            "GET",
            &format!("/keypackages?owner={}", pk_hex(&k)),
            Some(&k),
            None,
        )
        .await;
        if resp.status == 429 {
            assert_error(&resp, 429, "rate_limited");
            limited += 1;
        } else {
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    assert!(
        limited >= 9,
        "only {limited} of 20 signed API calls refused with a limit of 10/min"
    );

    // Positive control: another client address.
    let k = keys();
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&k));
    let h = nip98(&k, &url(&relay, &path), "GET", None);
    let resp = request(
        relay.port,
        "GET",
        &path,
        &[("Authorization", &h), ("X-Forwarded-For", "203.0.113.9")],
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}
