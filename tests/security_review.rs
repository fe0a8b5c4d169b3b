//! Gaps between the parts of issue 8, from the attacker's side: each test attacks a path that
//! the per-rule suites (`security_*.rs`) did not cover, with its positive control.

mod common;
mod support_api;
mod support_mls;

use common::*;
use serde_json::{json, Value};
use support_mls::*;

/// The ids a REQ returns, or the `CLOSED` message.
async fn read_ids(ws: &mut Ws, filter: Value) -> Result<Vec<String>, String> {
    let sub = format!("r{}", rand_suffix());
    ws.send_req(&sub, std::slice::from_ref(&filter)).await;
    let got = ws.collect(&sub).await;
    if got.is_ok() {
        ws.send(&json!(["CLOSE", sub])).await;
    }
    got.map(|evs| {
        evs.iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    })
}

/// `who` reads none of `group`'s 445s (an empty EOSE or a `CLOSED`).
async fn reads_nothing_of_group(ws: &mut Ws, who: &str, group: &str) {
    if let Ok(got) = read_ids(ws, json!({"kinds": [445], "#h": [group]})).await {
        assert!(got.is_empty(), "{who}: served the group's 445s: {got:?}");
    }
}

async fn admin_members(
    relay: &Relay,
    admin: &secp256k1::Keypair,
    method: &str,
    group: &str,
    who: &[&secp256k1::Keypair],
) {
    let body = support_api::pubkeys_body(&who.iter().map(|k| pk_hex(k)).collect::<Vec<_>>());
    let resp = support_api::call(
        relay,
        method,
        &format!("/admin/groups/{group}/members"),
        Some(admin),
        Some(&body),
    )
    .await;
    assert_eq!(resp.status, 200, "{method} members: {}", resp.text());
}

// ---------------------------------------------------------------------------------------------
// Rule 5 through the admin API: a member's gift wrap must not re-admit someone an admin
// removed with the API (nor admit anyone the API did not).
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gift_wrap_cannot_readmit_someone_the_admin_api_removed() {
    let (admin, alice, bob, erin, carol) = (keys(), keys(), keys(), keys(), keys());
    let relay = start_relay(true, &admin_pubkeys_config(&[&admin])).await;
    let g = unique_id();
    admin_members(&relay, &admin, "POST", &g, &[&alice, &bob, &erin]).await;
    admin_members(&relay, &admin, "DELETE", &g, &[&erin]).await;

    // Bob (a member) gift-wraps erin (removed by the admin) and carol (never admitted).
    let mut b = authed(&relay, &bob).await;
    let (ok, msg) = b.publish(&giftwrap(&[&erin, &carol], Some(&g))).await;
    if !ok {
        assert!(msg.starts_with("restricted:"), "{msg:?}");
    }
    for (k, who) in [(&erin, "erin"), (&carol, "carol")] {
        let mut ws = authed(&relay, k).await;
        publish_refused(&mut ws, &group_message(&g, None), "restricted:").await;
        reads_nothing_of_group(&mut ws, who, &g).await;
    }

    // Positive control: the admin's own decisions still apply.
    admin_members(&relay, &admin, "POST", &g, &[&carol]).await;
    let mut c = authed(&relay, &carol).await;
    let msg = group_message(&g, None);
    c.publish_ok(&msg).await;
    let mut a = authed(&relay, &alice).await;
    assert_eq!(
        read_ids(&mut a, json!({"kinds": [445], "#h": [g]})).await,
        Ok(vec![id(&msg)])
    );
}

// ---------------------------------------------------------------------------------------------
// Rule 1, NIP-42 edge: an AUTH event that also names another relay (or another challenge) is
// ambiguous — the same signed event could log its author in elsewhere — and is refused.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_event_naming_another_relay_or_challenge_too_is_refused() {
    let relay = Relay::builder()
        .config("[server]\nrelay_url = \"wss://relay.example.com\"\n[auth]\nenabled = true\n")
        .start()
        .await;
    let victim = keys();
    let ours = "wss://relay.example.com";
    let evil = "wss://evil.example";
    for (what, order) in [
        ("ours then evil", [ours, evil]),
        ("evil then ours", [evil, ours]),
    ] {
        let mut ws = relay.connect().await;
        let c = ws.challenge().await;
        let e = mls_proto::Event::sign(
            &victim,
            now(),
            22242,
            tags(&[
                &["relay", order[0]],
                &["relay", order[1]],
                &["challenge", &c],
            ]),
            "",
        );
        let (ok, msg) = ws.send_auth(&e).await;
        assert!(!ok, "AUTH with relay tags {what} accepted");
        assert_prefix(&msg, "invalid:");
    }
    let mut ws = relay.connect().await;
    let c = ws.challenge().await;
    let e = mls_proto::Event::sign(
        &victim,
        now(),
        22242,
        tags(&[
            &["relay", ours],
            &["challenge", &c],
            &["challenge", "other"],
        ]),
        "",
    );
    let (ok, msg) = ws.send_auth(&e).await;
    assert!(!ok, "AUTH with a second challenge accepted");
    assert_prefix(&msg, "invalid:");

    // Positive control: one relay tag naming this relay, one challenge.
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&victim, ours).await;
    assert!(ok, "{msg}");
    ws.publish_ok(&ev(&victim, 1, &[], "rightful")).await;
}

/// The same for NIP-98: a token whose `u` tags also name another URL is refused.
#[tokio::test]
async fn nip98_token_naming_another_url_too_is_refused() {
    let relay = start_relay(true, "").await;
    let k = keys();
    let path = format!("{}/keypackages?owner={}", support_api::PREFIX, pk_hex(&k));
    let ours = support_api::url(&relay, &path);
    let get = |tags: Vec<Vec<String>>| {
        let e = mls_proto::Event::sign(&k, now(), 27235, tags, "");
        let header = support_api::auth_header(&e);
        let path = path.clone();
        let port = relay.port;
        async move {
            support_api::request(
                port,
                "GET",
                &path,
                &[("Authorization", header.as_str())],
                None,
            )
            .await
        }
    };
    let t = |u: &[&str]| {
        let mut t: Vec<Vec<String>> = u.iter().map(|u| vec!["u".into(), u.to_string()]).collect();
        t.push(vec!["method".into(), "GET".into()]);
        t
    };
    let resp = get(t(&[&ours, "https://other.example/api"])).await;
    support_api::assert_error(&resp, 401, "auth_invalid");
    // Positive control.
    let resp = get(t(&[&ours])).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// With auth off, an unauthenticated reader has no identity to claim for: it must not be handed
/// the KeyPackages an inviter already claimed (which would let the next inviter reuse them).
#[tokio::test]
async fn anonymous_readers_do_not_get_claimed_keypackages() {
    let relay = start_relay(
        false,
        "[extensions.mls_gateway]\nkeypackage_claims = true\nmax_keypackages_per_query = 2\n",
    )
    .await;
    let (owner, inviter) = (keys(), keys());
    let op = pk_hex(&owner);
    let mut own = authed(&relay, &owner).await;
    let kps: Vec<_> = (0..3)
        .map(|_| lox_keypackage(&owner, &unique_id()))
        .collect();
    for kp in &kps {
        own.publish_ok(kp).await;
    }
    let f = [json!({"kinds": [443], "authors": [op]})];
    let mut inv = authed(&relay, &inviter).await;
    let claimed = inv.query_ids(&f).await;
    assert_eq!(claimed.len(), 2, "the inviter claims two: {claimed:?}");

    let mut stranger = anon(&relay).await;
    let got = stranger.query_ids(&f).await;
    assert!(
        got.iter().all(|id| !claimed.contains(id)),
        "an unauthenticated reader was handed claimed KeyPackages: {got:?}"
    );
    // Positive control: the owner's last unclaimed one is still served to it.
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        own.query_ids(&f).await.len() == 3,
        "the owner reads all of its own"
    );
}

/// Badly signed events count against the sender's event limit: a flood of them must not buy
/// unlimited signature checks.
#[tokio::test]
async fn badly_signed_events_count_against_the_rate_limit() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = false\n[extensions.mls_gateway.rate_limits]\nmax_events_per_minute = 20\n")
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let forged: Vec<Value> = (0..40)
        .map(|i| {
            let mut e = serde_json::to_value(ev(&k, 1, &[], &format!("forged {i}"))).unwrap();
            e["sig"] = json!("00".repeat(64));
            e
        })
        .collect();
    let mut refusals = Vec::new();
    for e in &forged {
        ws.send(&json!(["EVENT", e])).await;
    }
    for e in &forged {
        let (ok, msg) = ws.wait_ok(e["id"].as_str().unwrap()).await;
        assert!(!ok, "a forged signature was accepted");
        refusals.push(msg);
    }
    assert!(
        refusals.iter().any(|m| m.starts_with("rate-limited:")),
        "40 forged events under a limit of 20/min were all verified: {:?}",
        &refusals[refusals.len() - 3..]
    );
    // Positive control: within the limit, events are checked and refused for their signature.
    assert!(
        refusals[0].starts_with("invalid:"),
        "the first forged event: {}",
        refusals[0]
    );
}
