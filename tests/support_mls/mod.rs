//! Helpers for the MLS gateway end-to-end tests (`mls_adversarial.rs`, `loxation_flow.rs`), on
//! top of the shared harness in `tests/common` (used read-only): the gateway events in both
//! dialects, and probes that run one read path (stored REQ, COUNT, live subscription) and
//! check exactly what comes back — the events, or the `CLOSED` with its prefix (plus the AUTH
//! challenge that must come with `auth-required:`).

#![allow(dead_code)]

use crate::common::{ev, ev_at, keys, now, pk_hex, rand_suffix, Relay, Ws};
use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long a connection that must receive nothing live is watched, *after* the legitimate
/// reader on the same relay has received the event (so the event has been fanned out).
pub const SILENCE_MS: u64 = 400;

pub const CIPHERSUITE_NAME: &str = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519";

// ---------------------------------------------------------------------------------------------
// Relays and connections
// ---------------------------------------------------------------------------------------------

/// A relay with `[auth] enabled = auth`, plus `extra` TOML merged over it.
pub async fn start_relay(auth: bool, extra: &str) -> Relay {
    let mut b = Relay::builder().config(&format!("[auth]\nenabled = {auth}\n"));
    if !extra.is_empty() {
        b = b.config(extra);
    }
    b.start().await
}

/// `[extensions.mls_gateway] admin_pubkeys = [...]`.
pub fn admin_pubkeys_config(admins: &[&Keypair]) -> String {
    let list: Vec<String> = admins
        .iter()
        .map(|k| format!("\"{}\"", pk_hex(k)))
        .collect();
    format!(
        "[extensions.mls_gateway]\nadmin_pubkeys = [{}]\n",
        list.join(", ")
    )
}

/// An unauthenticated connection whose on-connect AUTH challenge has already been received,
/// so that `ws.challenges.len()` grows only with challenges sent later (with a CLOSED).
pub async fn anon(relay: &Relay) -> Ws {
    let mut ws = relay.connect().await;
    ws.challenge().await;
    ws
}

/// A connection that publishes: authenticated as `k` (needed when auth is on; harmless off).
pub async fn authed(relay: &Relay, k: &Keypair) -> Ws {
    relay.connect_authed(k).await
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// 64 lowercase hex characters, unique per call (group ids, key references).
pub fn unique_id() -> String {
    pk_hex(&keys())
}

/// A kind-1059 gift wrap to `recipients`, signed by a fresh throwaway key (as NIP-59 does),
/// backdated an hour. With `group`, the Loxation spelling: `["h", group]`, `["v", "gift.1"]`.
pub fn giftwrap(recipients: &[&Keypair], group: Option<&str>) -> Event {
    let mut t: Vec<Vec<String>> = recipients
        .iter()
        .map(|r| vec!["p".to_string(), pk_hex(r)])
        .collect();
    if let Some(g) = group {
        t.push(vec!["h".into(), g.into()]);
        t.push(vec!["v".into(), "gift.1".into()]);
    }
    let content = format!("sealed-welcome-{}", rand_suffix());
    Event::sign(&keys(), now() - 3600, 1059, t, &content)
}

/// A kind-445 group message of `group`, signed by a fresh throwaway key; Loxation `k` epoch
/// when given.
pub fn group_message(group: &str, epoch: Option<u64>) -> Event {
    let mut t = vec![vec!["h".to_string(), group.to_string()]];
    if let Some(k) = epoch {
        t.push(vec!["k".into(), k.to_string()]);
    }
    let content = format!("mls-ciphertext-{}", rand_suffix());
    Event::sign(&keys(), now(), 445, t, &content)
}

/// A kind-446 Noise DM (Loxation) from `author` to `recipients`.
pub fn noise_dm(author: &Keypair, recipients: &[&Keypair]) -> Event {
    let mut t: Vec<Vec<String>> = recipients
        .iter()
        .map(|r| vec!["p".to_string(), pk_hex(r)])
        .collect();
    t.push(vec!["v".into(), "noise.1".into()]);
    let content = format!("noise-ciphertext-{}", rand_suffix());
    Event::sign(author, now(), 446, t, &content)
}

/// A kind-450 roster event: `h`, `op`, `seq`, one `p` per target.
pub fn roster(signer: &Keypair, group: &str, op: &str, seq: u64, targets: &[&Keypair]) -> Event {
    let mut t = vec![
        vec!["h".to_string(), group.to_string()],
        vec!["op".into(), op.into()],
        vec!["seq".into(), seq.to_string()],
    ];
    for k in targets {
        t.push(vec!["p".into(), pk_hex(k)]);
    }
    // Distinct content, so that two roster events with the same fields differ in id.
    let content = format!("roster-{}", rand_suffix());
    Event::sign(signer, now(), 450, t, &content)
}

/// A Loxation KeyPackage (443): `["p", owner_tag]`, `["cs", name]`, `["kpr", reference]`,
/// `["exp", exp]`, hex content (no `encoding` tag means hex), signed by `signer`.
pub fn lox_keypackage_for(signer: &Keypair, owner_tag: &str, reference: &str, exp: u64) -> Event {
    ev(
        signer,
        443,
        &[
            &["p", owner_tag],
            &["cs", CIPHERSUITE_NAME],
            &["kpr", reference],
            &["exp", &exp.to_string()],
        ],
        "0001000120cabb81cf1e15e96ab83ea38358",
    )
}

/// A Loxation KeyPackage of `owner`, signed by `owner`, expiring in a day.
pub fn lox_keypackage(owner: &Keypair, reference: &str) -> Event {
    lox_keypackage_for(owner, &pk_hex(owner), reference, now() + 86400)
}

/// A Marmot (MDK) KeyPackage 443 with `i` = `reference`, base64 content.
pub fn marmot_keypackage(owner: &Keypair, reference: &str) -> Event {
    ev(
        owner,
        443,
        &[
            &["mls_protocol_version", "1.0"],
            &["mls_ciphersuite", "0x0001"],
            &["mls_extensions", "0x000a", "0xf2ee"],
            &["relays", "ws://127.0.0.1:1"],
            &["i", reference],
            &["client", "test"],
            &["encoding", "base64"],
        ],
        "AAEAASDKu4HPHhXparg+o4NY",
    )
}

/// An event with `created_at` in the past (for ordering), any kind.
pub fn event_at(k: &Keypair, created_at: u64, kind: u16, t: &[&[&str]], content: &str) -> Event {
    ev_at(k, created_at, kind, t, content)
}

pub fn id(e: &Event) -> String {
    e.id.to_hex()
}

// ---------------------------------------------------------------------------------------------
// Probes
// ---------------------------------------------------------------------------------------------

/// What one read path must answer.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    /// EOSE (REQ) with exactly these event ids (any order), or COUNT = their number.
    Events(&'a [&'a str]),
    /// `CLOSED` whose message starts with this prefix; for `auth-required:` the relay must
    /// also have sent a new AUTH challenge.
    Closed(&'static str),
    /// A filter by `ids` whose events exist but are all invisible to this reader: the REQ
    /// can only match what it may not see, so `CLOSED` with this prefix (never silence); a
    /// COUNT is 0 or that `CLOSED` (it never counts what the asker may not see).
    HiddenById(&'static str),
}

pub const NOTHING: Want<'static> = Want::Events(&[]);
pub const AUTH_REQUIRED: Want<'static> = Want::Closed("auth-required:");
pub const RESTRICTED: Want<'static> = Want::Closed("restricted:");
pub const HIDDEN_AUTH: Want<'static> = Want::HiddenById("auth-required:");
pub const HIDDEN_RESTRICTED: Want<'static> = Want::HiddenById("restricted:");

fn new_sub(prefix: &str) -> String {
    format!("{prefix}-{}", rand_suffix())
}

#[track_caller]
fn check_closed(who: &str, what: &str, msg: &str, prefix: &str, challenges: (usize, usize)) {
    assert!(
        msg.starts_with(prefix),
        "{who}: {what}: expected CLOSED {prefix:?}…, got CLOSED {msg:?}"
    );
    assert!(
        msg.len() > prefix.len() + 1,
        "{who}: {what}: CLOSED {msg:?} carries no reason after its prefix"
    );
    if prefix == "auth-required:" {
        assert!(
            challenges.1 > challenges.0,
            "{who}: {what}: CLOSED {msg:?} came without an AUTH challenge"
        );
    }
}

/// Stored REQ with `filters`; asserts `want`. The subscription is closed afterwards.
#[track_caller]
pub fn expect_req<'a>(
    ws: &'a mut Ws,
    who: &'a str,
    filters: &'a [Value],
    want: Want<'a>,
) -> impl std::future::Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let sub = new_sub("req");
        let before = ws.challenges.len();
        ws.send_req(&sub, filters).await;
        let got = ws.collect(&sub).await;
        let what = format!("REQ {} (at {caller})", Value::Array(filters.to_vec()));
        let want = match want {
            Want::HiddenById(prefix) => Want::Closed(prefix),
            w => w,
        };
        match (want, got) {
            (Want::Events(ids), Ok(evs)) => {
                ws.send(&json!(["CLOSE", sub])).await;
                let got: BTreeSet<String> = evs
                    .iter()
                    .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
                    .collect();
                assert_eq!(
                    evs.len(),
                    got.len(),
                    "{who}: {what}: an event was served twice: {evs:?}"
                );
                let expected: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
                assert_eq!(
                    got, expected,
                    "{who}: {what}: served events differ from what this reader may see; served {evs:?}"
                );
            }
            (Want::Events(ids), Err(msg)) => panic!(
                "{who}: {what}: expected EOSE with {} event(s), got CLOSED {msg:?}",
                ids.len()
            ),
            (Want::Closed(prefix), Ok(evs)) => {
                panic!("{who}: {what}: expected CLOSED {prefix:?}…, got EOSE after {evs:?}")
            }
            (Want::Closed(prefix), Err(msg)) => {
                check_closed(who, &what, &msg, prefix, (before, ws.challenges.len()))
            }
            (Want::HiddenById(_), _) => unreachable!("mapped to Closed above"),
        }
    }
}

/// COUNT with `filters`; asserts `want` (`Events(ids)` means a count of `ids.len()`).
#[track_caller]
pub fn expect_count<'a>(
    ws: &'a mut Ws,
    who: &'a str,
    filters: &'a [Value],
    want: Want<'a>,
) -> impl std::future::Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let sub = new_sub("cnt");
        let before = ws.challenges.len();
        let got = ws.count(&sub, filters).await;
        let what = format!("COUNT {} (at {caller})", Value::Array(filters.to_vec()));
        match (want, got) {
            (Want::HiddenById(_), Ok(n)) => {
                assert_eq!(
                    n, 0,
                    "{who}: {what}: counted {n} events this reader may not see"
                )
            }
            (Want::HiddenById(prefix), Err(msg)) => {
                check_closed(who, &what, &msg, prefix, (before, ws.challenges.len()))
            }
            (Want::Events(ids), Ok(n)) => assert_eq!(
                n,
                ids.len() as u64,
                "{who}: {what}: counted {n}, this reader may see {}",
                ids.len()
            ),
            (Want::Events(_), Err(msg)) => {
                panic!("{who}: {what}: expected a COUNT, got CLOSED {msg:?}")
            }
            (Want::Closed(prefix), Ok(n)) => {
                panic!("{who}: {what}: expected CLOSED {prefix:?}…, got COUNT {n}")
            }
            (Want::Closed(prefix), Err(msg)) => {
                check_closed(who, &what, &msg, prefix, (before, ws.challenges.len()))
            }
        }
    }
}

/// Opens a live subscription `sub` with `filter`. `Want::Events(ids)`: EOSE with exactly those
/// stored events, and the subscription stays open; `Want::Closed(prefix)`: refused.
#[track_caller]
pub fn open_live<'a>(
    ws: &'a mut Ws,
    who: &'a str,
    sub: &'a str,
    filter: Value,
    want: Want<'a>,
) -> impl std::future::Future<Output = ()> + 'a {
    open_live_filters(ws, who, sub, vec![filter], want)
}

/// [`open_live`] with several filters in one REQ.
#[track_caller]
pub fn open_live_filters<'a>(
    ws: &'a mut Ws,
    who: &'a str,
    sub: &'a str,
    filters: Vec<Value>,
    want: Want<'a>,
) -> impl std::future::Future<Output = ()> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let before = ws.challenges.len();
        ws.send_req(sub, &filters).await;
        let got = ws.collect(sub).await;
        let what = format!(
            "live REQ {sub:?} {} (at {caller})",
            Value::Array(filters.clone())
        );
        let want = match want {
            Want::HiddenById(prefix) => Want::Closed(prefix),
            w => w,
        };
        match (want, got) {
            (Want::Events(ids), Ok(evs)) => {
                let got: BTreeSet<String> = evs
                    .iter()
                    .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
                    .collect();
                let expected: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
                assert_eq!(got, expected, "{who}: {what}: stored part: {evs:?}");
            }
            (Want::Events(_), Err(msg)) => {
                panic!("{who}: {what}: expected EOSE (subscription open), got CLOSED {msg:?}")
            }
            (Want::Closed(prefix), Ok(evs)) => {
                panic!("{who}: {what}: expected CLOSED {prefix:?}…, got EOSE after {evs:?}")
            }
            (Want::Closed(prefix), Err(msg)) => {
                check_closed(who, &what, &msg, prefix, (before, ws.challenges.len()))
            }
            (Want::HiddenById(_), _) => unreachable!("mapped to Closed above"),
        }
    }
}

/// Waits for the live event `event_id` on `sub` (the positive control of a live path).
pub async fn expect_live(ws: &mut Ws, who: &str, sub: &str, event_id: &str) {
    let got = ws.next_event(sub).await;
    assert_eq!(
        got["id"].as_str(),
        Some(event_id),
        "{who}: live subscription {sub:?} received an unexpected event: {got}"
    );
}

/// Asserts that nothing at all arrives on `ws` for [`SILENCE_MS`] (call it after the
/// legitimate reader has received the event live).
pub async fn expect_no_live(ws: &mut Ws, who: &str) {
    if let Some(v) = ws.recv_timeout(Duration::from_millis(SILENCE_MS)).await {
        panic!("{who}: must receive nothing live, got {v}");
    }
}

/// Publishes and asserts `OK false` with `prefix`; returns the message.
#[track_caller]
pub fn publish_refused<'a>(
    ws: &'a mut Ws,
    e: &'a Event,
    prefix: &'static str,
) -> impl std::future::Future<Output = String> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let (ok, msg) = ws.publish(e).await;
        assert!(
            !ok,
            "kind {} was accepted, expected OK false {prefix:?}… (at {caller})",
            e.kind
        );
        assert!(
            msg.starts_with(prefix),
            "kind {}: expected OK false {prefix:?}…, got OK false {msg:?} (at {caller})",
            e.kind
        );
        msg
    }
}

/// Every stored read path for each `(filter, want)` row: a REQ (then CLOSE) and a COUNT.
pub async fn check_paths(ws: &mut Ws, who: &str, rows: &[(Value, Want<'_>)]) {
    for (filter, want) in rows {
        let filters = std::slice::from_ref(filter);
        expect_req(ws, who, filters, *want).await;
        expect_count(ws, who, filters, *want).await;
    }
}

/// Reads whatever arrives on `ws` for [`SILENCE_MS`]; every message must be a live EVENT of
/// one of `allowed` (an event whose delivery the rules leave open, e.g. a member's own removal
/// notice). Returns the ids received.
pub async fn drain_allowing(ws: &mut Ws, who: &str, allowed: &[&str]) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(v) = ws.recv_timeout(Duration::from_millis(SILENCE_MS)).await {
        let id = v[2]["id"].as_str().unwrap_or_default().to_owned();
        assert!(
            v[0] == "EVENT" && allowed.contains(&id.as_str()),
            "{who}: unexpected message {v}"
        );
        got.push(id);
    }
    got
}

/// Waits for exactly `ids.len()` live events on `sub` and asserts they are `ids` (any order).
pub async fn expect_live_set(ws: &mut Ws, who: &str, sub: &str, ids: &[&str]) {
    let mut got = BTreeSet::new();
    for _ in 0..ids.len() {
        let e = ws.next_event(sub).await;
        got.insert(e["id"].as_str().unwrap_or_default().to_owned());
    }
    let expected: BTreeSet<String> = ids.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected, "{who}: live subscription {sub:?}");
}
