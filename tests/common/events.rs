//! Keys, events and the assertions on the relay's answers that every end-to-end test uses.

use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn now() -> u64 {
    mls_proto::unix_now()
}

pub fn keys() -> Keypair {
    Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

pub fn pk_hex(k: &Keypair) -> String {
    hex::encode(k.x_only_public_key().0.serialize())
}

pub fn npub(k: &Keypair) -> String {
    let hrp = bech32::Hrp::parse("npub").unwrap();
    bech32::encode::<bech32::Bech32>(hrp, &k.x_only_public_key().0.serialize()).unwrap()
}

pub fn tags(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|tag| tag.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// A signed event created now.
pub fn ev(k: &Keypair, kind: u16, t: &[&[&str]], content: &str) -> Event {
    Event::sign(k, now(), kind, tags(t), content)
}

/// A signed event with an explicit `created_at`.
pub fn ev_at(k: &Keypair, created_at: u64, kind: u16, t: &[&[&str]], content: &str) -> Event {
    Event::sign(k, created_at, kind, tags(t), content)
}

pub fn id_hex(e: &Event) -> String {
    e.id.to_hex()
}

pub fn event_value(e: &Event) -> Value {
    serde_json::to_value(e).unwrap()
}

/// NIP-42 AUTH event for `challenge` naming `relay`.
pub fn auth_event(k: &Keypair, challenge: &str, relay: &str) -> Event {
    auth_event_at(k, challenge, relay, now())
}

pub fn auth_event_at(k: &Keypair, challenge: &str, relay: &str, created_at: u64) -> Event {
    Event::sign(
        k,
        created_at,
        22242,
        tags(&[&["relay", relay], &["challenge", challenge]]),
        "",
    )
}

/// Asserts that a refusal/notice message starts with the given machine-readable prefix.
#[track_caller]
pub fn assert_prefix(msg: &str, prefix: &str) {
    assert!(
        msg.starts_with(prefix),
        "expected a message starting with {prefix:?}, got {msg:?}"
    );
}

/// Asserts the message starts with one of the given prefixes.
#[track_caller]
pub fn assert_any_prefix(msg: &str, prefixes: &[&str]) {
    assert!(
        prefixes.iter().any(|p| msg.starts_with(p)),
        "expected a message starting with one of {prefixes:?}, got {msg:?}"
    );
}

pub const STANDARD_PREFIXES: &[&str] = &[
    "invalid:",
    "duplicate:",
    "blocked:",
    "rate-limited:",
    "restricted:",
    "auth-required:",
    "error:",
    "pow:",
    "unsupported:",
];

pub fn rand_suffix() -> String {
    use secp256k1::rand::Rng;
    format!("{:08x}", secp256k1::rand::thread_rng().gen::<u32>())
}

/// Parses a served event back into an [`Event`] (and checks it still verifies).
#[track_caller]
pub fn served_event(v: &Value) -> Event {
    let e: Event = serde_json::from_value(v.clone())
        .unwrap_or_else(|err| panic!("served event does not parse ({err}): {v}"));
    assert_eq!(e.verify(), Ok(()), "served event does not verify: {v}");
    e
}

/// Writes `lines` of JSON to a file in `dir`.
pub fn write_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}
