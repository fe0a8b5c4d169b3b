//! NIP-98 HTTP auth: `Authorization: Nostr <base64 of a kind-27235 event>`.
//!
//! The event must verify, be at most 60 s from now, name this request in its `u` tag (the
//! full URL: host and port from `server.relay_url` when configured, else the request's Host;
//! path and query exactly as sent; the scheme and a default port don't matter, as for NIP-42)
//! and its `method` tag, and, when the request has a body, carry the body's sha256 in
//! `payload`. A token that changes something (any method but GET/HEAD) is accepted once: a
//! captured admin call cannot be replayed within its minute.

use super::ApiError;
use crate::app::App;
use base64::Engine as _;
use mls_proto::{Event, Hex32};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

pub const KIND: u16 = 27235;
/// How far `created_at` may be from now, seconds.
pub const WINDOW_SECS: u64 = 60;
/// Largest header value looked at (an event with a few tags is well under 2 KiB).
const MAX_HEADER: usize = 16 * 1024;

/// What the check needs to know about the request.
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Path and query exactly as received (`/api/v1/mls/keypackages?owner=…`).
    pub path_and_query: &'a str,
    /// The Host header (or HTTP/2 authority).
    pub host: Option<&'a str>,
    pub body: &'a [u8],
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::unauthorized("auth_invalid", message)
}

/// The pubkey the request is signed by, or why not (always 401 `auth_invalid`).
pub fn verify(app: &App, header: &str, req: &HttpRequest<'_>, now: u64) -> Result<Hex32, ApiError> {
    if header.len() > MAX_HEADER {
        return Err(invalid("NIP-98: Authorization header too large"));
    }
    let token = header
        .strip_prefix("Nostr ")
        .or_else(|| header.strip_prefix("nostr "))
        .map(str::trim)
        .ok_or_else(|| invalid("NIP-98: expected \"Authorization: Nostr <base64 event>\""))?;
    let bytes = decode_base64(token).ok_or_else(|| invalid("NIP-98: token is not base64"))?;
    let ev: Event = serde_json::from_slice(&bytes)
        .map_err(|_| invalid("NIP-98: token is not a Nostr event"))?;
    if ev.kind != KIND {
        return Err(invalid(format!("NIP-98: event kind must be {KIND}")));
    }
    ev.verify().map_err(|e| invalid(format!("NIP-98: {e}")))?;
    if ev.created_at.abs_diff(now) > WINDOW_SECS {
        return Err(invalid(format!(
            "NIP-98: created_at must be within {WINDOW_SECS} s of the server's time"
        )));
    }
    let expected = expected_url(app, req)
        .ok_or_else(|| invalid("NIP-98: cannot tell which URL to expect (no Host header)"))?;
    match ev.tag_value("u") {
        Some(u) if normalize_url(u) == expected => {}
        Some(_) => {
            return Err(invalid(format!(
                "NIP-98: u tag does not match the request URL ({expected})"
            )))
        }
        None => return Err(invalid("NIP-98: missing u tag")),
    }
    match ev.tag_value("method") {
        Some(m) if m.eq_ignore_ascii_case(req.method) => {}
        Some(_) => {
            return Err(invalid(format!(
                "NIP-98: method tag does not match the request method ({})",
                req.method
            )))
        }
        None => return Err(invalid("NIP-98: missing method tag")),
    }
    let payload = ev.tag_value("payload");
    if !req.body.is_empty() || payload.is_some() {
        let want = hex::encode(Sha256::digest(req.body));
        match payload {
            Some(p) if p.eq_ignore_ascii_case(&want) => {}
            Some(_) => {
                return Err(invalid(
                    "NIP-98: payload tag is not the sha256 of the request body",
                ))
            }
            None => {
                return Err(invalid(
                    "NIP-98: a request with a body needs a payload tag (sha256 of the body)",
                ))
            }
        }
    }
    if !matches!(req.method, "GET" | "HEAD") && !app.nip98_seen.first_use(ev.id, now) {
        return Err(invalid("NIP-98: this token was already used"));
    }
    Ok(ev.pubkey)
}

/// Standard or URL-safe base64, padded or not.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// The URL the `u` tag must name, normalised.
fn expected_url(app: &App, req: &HttpRequest<'_>) -> Option<String> {
    let base = match &app.config.server.relay_url {
        Some(url) => normalize_url(url).trim_end_matches('/').to_owned(),
        None => normalize_url(req.host?).trim_end_matches('/').to_owned(),
    };
    Some(format!("{base}{}", req.path_and_query))
}

/// `https://Relay.Example.com:443/api?x=1#f` → `relay.example.com/api?x=1`: no scheme, host
/// lowercased, default ports and fragment dropped, path and query as written.
pub fn normalize_url(url: &str) -> String {
    let s = url.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let s = s.split('#').next().unwrap_or(s);
    let split = s.find(['/', '?']).unwrap_or(s.len());
    let (authority, rest) = s.split_at(split);
    let authority = authority.to_ascii_lowercase();
    let authority = authority
        .strip_suffix(":443")
        .or_else(|| authority.strip_suffix(":80"))
        .unwrap_or(&authority);
    let rest = if rest.starts_with('?') {
        format!("/{rest}")
    } else if rest.is_empty() {
        "/".to_owned()
    } else {
        rest.to_owned()
    };
    format!("{authority}{rest}")
}

/// Ids of tokens already used for a state-changing request, until they could no longer
/// verify anyway.
#[derive(Default)]
pub struct SeenTokens(Mutex<HashMap<Hex32, u64>>);

impl SeenTokens {
    /// True the first time `id` is seen (and remembers it).
    pub fn first_use(&self, id: Hex32, now: u64) -> bool {
        let mut seen = self.0.lock().expect("nip98 tokens");
        if seen.len() > 1024 {
            seen.retain(|_, until| *until >= now);
        }
        seen.insert(id, now + 2 * WINDOW_SECS + 1).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_url as n;

    #[test]
    fn urls_compare_without_scheme_default_port_or_fragment() {
        assert_eq!(
            n("https://Relay.Example.com:443/api/v1/mls/keypackages?owner=ab#x"),
            "relay.example.com/api/v1/mls/keypackages?owner=ab"
        );
        assert_eq!(n("http://127.0.0.1:8080/x"), "127.0.0.1:8080/x");
        assert_eq!(n("wss://relay.example.com"), "relay.example.com/");
        assert_eq!(n("relay.example.com?x=1"), "relay.example.com/?x=1");
        assert_ne!(n("https://a.example/x"), n("https://a.example/x/"));
        assert_ne!(n("https://a.example/X"), n("https://a.example/x"));
    }
}
