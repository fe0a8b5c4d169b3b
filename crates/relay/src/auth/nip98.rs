//! NIP-98 HTTP auth: `Authorization: Nostr <base64 of a kind-27235 event>`.
//!
//! The event must verify, be at most 60 s from now, name this request in its `u` tag (the
//! full URL: one of this relay's own URLs, `relay_urls` from `server.relay_url`, never
//! the request's Host; then path and query exactly as sent; the scheme, a default port and a
//! trailing slash don't matter, as for NIP-42) and its `method` tag, and, when the request has
//! a body, carry the body's sha256 in `payload`. A token that changes something (any method
//! but GET/HEAD) is accepted once: a captured admin call cannot be replayed within its minute.
//! The caller marks it used ([`SeenTokens::first_use`]) only once the request is authorized,
//! so tokens of callers who may not change anything never take room in that set.

use crate::config::normalize_url;
use base64::Engine as _;
use mls_proto::{Event, Hex32};
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
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
    pub body: &'a [u8],
}

/// A token that verified.
pub struct Verified {
    pub pubkey: Hex32,
    /// For a state-changing request: the token's id, to pass to [`SeenTokens::first_use`]
    /// once the request is authorized.
    pub single_use: Option<Hex32>,
}

/// The pubkey the request is signed by, or why not (the API answers it with 401
/// `auth_invalid`).
pub fn verify(
    header: &str,
    req: &HttpRequest<'_>,
    relay_urls: &[String],
    now: u64,
) -> Result<Verified, String> {
    if header.len() > MAX_HEADER {
        return Err("NIP-98: Authorization header too large".to_owned());
    }
    let token = header
        .strip_prefix("Nostr ")
        .or_else(|| header.strip_prefix("nostr "))
        .map(str::trim)
        .ok_or_else(|| "NIP-98: expected \"Authorization: Nostr <base64 event>\"".to_owned())?;
    let bytes = decode_base64(token).ok_or_else(|| "NIP-98: token is not base64".to_owned())?;
    let ev: Event = serde_json::from_slice(&bytes)
        .map_err(|_| "NIP-98: token is not a Nostr event".to_owned())?;
    if ev.kind != KIND {
        return Err(format!("NIP-98: event kind must be {KIND}"));
    }
    ev.verify().map_err(|e| format!("NIP-98: {e}"))?;
    if ev.created_at.abs_diff(now) > WINDOW_SECS {
        return Err(format!(
            "NIP-98: created_at must be within {WINDOW_SECS} s of the server's time"
        ));
    }
    let expected = || {
        relay_urls
            .iter()
            .map(|base| normalize_url(&format!("{base}{}", req.path_and_query)))
    };
    // Every `u` tag must name this request (a token naming another URL too could be spent
    // there as well).
    let mut us = ev.tag_values("u").peekable();
    if us.peek().is_none() {
        return Err("NIP-98: missing u tag".to_owned());
    }
    if us.any(|u| !expected().any(|e| e == normalize_url(u))) {
        return Err(format!(
            "NIP-98: u tag does not match the request URL ({})",
            expected().collect::<Vec<_>>().join(" or ")
        ));
    }
    match ev.tag_value("method") {
        Some(m) if m.eq_ignore_ascii_case(req.method) => {}
        Some(_) => {
            return Err(format!(
                "NIP-98: method tag does not match the request method ({})",
                req.method
            ))
        }
        None => return Err("NIP-98: missing method tag".to_owned()),
    }
    let payload = ev.tag_value("payload");
    if !req.body.is_empty() || payload.is_some() {
        let want = hex::encode(Sha256::digest(req.body));
        match payload {
            Some(p) if p.eq_ignore_ascii_case(&want) => {}
            Some(_) => {
                return Err("NIP-98: payload tag is not the sha256 of the request body".to_owned())
            }
            None => {
                return Err(
                    "NIP-98: a request with a body needs a payload tag (sha256 of the body)"
                        .to_owned(),
                )
            }
        }
    }
    Ok(Verified {
        pubkey: ev.pubkey,
        single_use: (!matches!(req.method, "GET" | "HEAD")).then_some(ev.id),
    })
}

/// Standard or URL-safe base64, padded or not.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(s).ok())
}

/// Most single-use tokens remembered at once. Only authorized state-changing calls (admin
/// endpoints) are remembered, each for two minutes: beyond this many in two minutes new ones
/// are refused (fail closed) rather than old ones forgotten (which would allow their replay).
pub const MAX_SEEN_TOKENS: usize = 100_000;

/// Ids of tokens already used for a state-changing request, until they could no longer
/// verify anyway. Bounded ([`MAX_SEEN_TOKENS`]) and O(1) per call (amortised): tokens leave
/// in the order they came, which is the order they expire.
#[derive(Default)]
pub struct SeenTokens(Mutex<Seen>);

#[derive(Default)]
struct Seen {
    ids: HashSet<Hex32>,
    /// (forget after, id), oldest first.
    order: VecDeque<(u64, Hex32)>,
}

/// Why a token was not accepted as new.
#[derive(Debug, PartialEq, Eq)]
pub enum Reuse {
    AlreadyUsed,
    Full,
}

impl SeenTokens {
    /// Ok the first time `id` is seen (and remembers it).
    pub fn first_use(&self, id: Hex32, now: u64) -> Result<(), Reuse> {
        let mut seen = self.0.lock().expect("nip98 tokens");
        while let Some(&(until, old)) = seen.order.front() {
            if until >= now {
                break;
            }
            seen.order.pop_front();
            seen.ids.remove(&old);
        }
        if seen.ids.contains(&id) {
            return Err(Reuse::AlreadyUsed);
        }
        if seen.ids.len() >= MAX_SEEN_TOKENS {
            return Err(Reuse::Full);
        }
        seen.ids.insert(id);
        // A token verifies for WINDOW_SECS either side of its created_at.
        seen.order.push_back((now + 2 * WINDOW_SECS + 1, id));
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u32) -> Hex32 {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        Hex32(b)
    }

    #[test]
    fn tokens_are_single_use_and_forgotten_after_their_window() {
        let seen = SeenTokens::default();
        assert_eq!(seen.first_use(id(1), 1000), Ok(()));
        assert_eq!(seen.first_use(id(1), 1000), Err(Reuse::AlreadyUsed));
        assert_eq!(
            seen.first_use(id(1), 1000 + 2 * WINDOW_SECS),
            Err(Reuse::AlreadyUsed)
        );
        assert_eq!(seen.first_use(id(2), 1000 + 2 * WINDOW_SECS + 2), Ok(()));
        assert_eq!(seen.len(), 1, "the expired token is forgotten");
    }

    #[test]
    fn the_set_is_bounded() {
        let seen = SeenTokens::default();
        for i in 0..MAX_SEEN_TOKENS as u32 {
            seen.first_use(id(i), 5).unwrap();
        }
        assert_eq!(seen.first_use(id(u32::MAX), 5), Err(Reuse::Full));
        assert_eq!(seen.len(), MAX_SEEN_TOKENS);
        // Once they expire there is room again, and the old ones are gone in one pass.
        assert_eq!(
            seen.first_use(id(u32::MAX), 5 + 2 * WINDOW_SECS + 2),
            Ok(())
        );
        assert_eq!(seen.len(), 1);
    }
}
