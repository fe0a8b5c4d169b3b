//! Helpers for the operator-surface tests (API, metrics, rate limits, logs), on top of the
//! shared harness in `tests/common` (whose client makes any-method requests): NIP-98 tokens,
//! Prometheus text parsing, and the MLS events the tests publish.

#![allow(dead_code)]

use crate::common::{ev, now, pk_hex, HttpResponse, Relay};
use base64::Engine as _;
use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const PREFIX: &str = "/api/v1/mls";

/// Any-method requests live with the harness's HTTP client (`tests/common/http.rs`).
pub use crate::common::request;

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `Nostr <base64>` for an already built event.
pub fn auth_header(e: &Event) -> String {
    format!(
        "Nostr {}",
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(e).unwrap())
    )
}

/// A NIP-98 event with explicit fields (for the refusal tests).
pub fn nip98_event(
    k: &Keypair,
    created_at: u64,
    url: &str,
    method: &str,
    payload: Option<&str>,
) -> Event {
    let mut t = vec![
        vec!["u".to_string(), url.to_string()],
        vec!["method".to_string(), method.to_string()],
    ];
    if let Some(h) = payload {
        t.push(vec!["payload".to_string(), h.to_string()]);
    }
    Event::sign(k, created_at, 27235, t, "")
}

/// A valid NIP-98 header for `method url` with `body`.
pub fn nip98(k: &Keypair, url: &str, method: &str, body: Option<&[u8]>) -> String {
    let hash = body.map(sha256_hex);
    auth_header(&nip98_event(k, now(), url, method, hash.as_deref()))
}

/// The full URL of `path` on this relay, as a client would sign it.
pub fn url(relay: &Relay, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", relay.port)
}

/// Calls the API: `path` relative to the default prefix, signed by `signer` when given, with
/// a JSON body when given.
pub async fn call(
    relay: &Relay,
    method: &str,
    path: &str,
    signer: Option<&Keypair>,
    body: Option<&Value>,
) -> HttpResponse {
    let full = format!("{PREFIX}{path}");
    let body = body.map(|b| serde_json::to_vec(b).unwrap());
    let header = signer.map(|k| nip98(k, &url(relay, &full), method, body.as_deref()));
    let headers: Vec<(&str, &str)> = header
        .iter()
        .map(|h| ("Authorization", h.as_str()))
        .collect();
    request(relay.port, method, &full, &headers, body.as_deref()).await
}

/// Asserts status and the JSON error shape `{"error": "...", "code": code}`.
#[track_caller]
pub fn assert_error(resp: &HttpResponse, status: u16, code: &str) {
    assert_eq!(resp.status, status, "body: {}", resp.text());
    let v = resp.json();
    assert_eq!(v["code"], code, "body: {v}");
    assert!(
        v["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error message missing: {v}"
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "an error has exactly error and code: {v}"
    );
    assert!(
        resp.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        resp.headers
    );
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let labels = inner
                    .split("\",")
                    .filter(|s| !s.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Scraped metrics, looked up by name and labels (missing series = 0).
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
            .sum()
    }
}

pub async fn scrape(relay: &Relay, token: Option<&str>) -> Scrape {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let resp = request(relay.port, "GET", "/metrics", &headers, None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let text = resp.text();
    Scrape {
        samples: parse_metrics(&text),
        text,
    }
}

// ---------------------------------------------------------------------------------------------
// MLS events
// ---------------------------------------------------------------------------------------------

/// A Marmot (MDK) KeyPackage, kind 443 or 30443, with a unique key reference.
pub fn keypackage(
    k: &Keypair,
    kind: u16,
    reference: &str,
    content: &str,
    extra: &[&[&str]],
) -> Event {
    let mut t: Vec<&[&str]> = vec![];
    let d = ["d", reference];
    if kind == 30443 {
        t.push(&d);
    }
    let i = ["i", reference];
    t.extend_from_slice(&[
        &["mls_protocol_version", "1.0"],
        &["mls_ciphersuite", "0x0001"],
        &["mls_extensions", "0x000a", "0xf2ee"],
        &["relays", "ws://127.0.0.1:1"],
        &i,
        &["client", "test"],
        &["encoding", "base64"],
    ]);
    t.extend_from_slice(extra);
    ev(k, kind, &t, content)
}

/// 64 hex digits, unique per call (key references, group ids).
pub fn unique_hex() -> String {
    hex::encode(pk_bytes(&crate::common::keys()))
}

fn pk_bytes(k: &Keypair) -> [u8; 32] {
    k.x_only_public_key().0.serialize()
}

/// A roster `bootstrap` (kind 450) of `group` by `k`, with `members`.
pub fn bootstrap(k: &Keypair, group: &str, members: &[&Keypair]) -> Event {
    let hexes: Vec<String> = members.iter().map(|m| pk_hex(m)).collect();
    let mut t: Vec<Vec<String>> = vec![
        vec!["h".into(), group.into()],
        vec!["op".into(), "bootstrap".into()],
        vec!["seq".into(), "1".into()],
    ];
    for h in hexes {
        t.push(vec!["p".into(), h]);
    }
    Event::sign(k, now(), 450, t, "")
}

/// `{"pubkeys": [...]}`.
pub fn pubkeys_body(keys: &[String]) -> Value {
    json!({ "pubkeys": keys })
}

/// Every pair `(key, count)` of a map, for readable assertion messages.
pub fn counts<K: std::fmt::Debug + Ord + Clone>(m: &HashMap<K, usize>) -> Vec<(K, usize)> {
    let mut v: Vec<_> = m.iter().map(|(k, c)| (k.clone(), *c)).collect();
    v.sort();
    v
}
