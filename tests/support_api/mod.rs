//! Helpers for the operator-surface tests (API, metrics, rate limits, logs), on top of the
//! shared harness in `tests/common`: any-method HTTP/1.1 requests with bodies, NIP-98 tokens,
//! Prometheus text parsing, and the MLS events the tests publish.

#![allow(dead_code)]

use crate::common::{ev, now, pk_hex, HttpResponse, Relay, RECV_TIMEOUT};
use base64::Engine as _;
use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFIX: &str = "/api/v1/mls";

/// A raw HTTP/1.1 request (`Connection: close`), any method, optional body.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut req =
            format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some(b) = body {
            bytes.extend_from_slice(b);
        }
        // The relay may answer (413, 401) and close before reading a large body: keep what
        // it sent even if the connection is then reset.
        let _ = s.write_all(&bytes).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if buf.is_empty() => panic!("{method} {path}: {e}"),
                Err(_) => break,
            }
        }
        parse_response(&buf)
    };
    tokio::time::timeout(RECV_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no response within {RECV_TIMEOUT:?}"))
}

fn parse_response(buf: &[u8]) -> HttpResponse {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header terminator");
    let head = std::str::from_utf8(&buf[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16).unwrap();
        raw = &raw[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

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
