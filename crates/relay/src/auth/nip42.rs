//! NIP-42: checking an AUTH event against this connection's challenge and this relay's own
//! URL(s) (`relay_urls`, from `server.relay_url` through [`Config::public_urls`]; never from
//! the request's `Host`, which the client controls).
//!
//! [`Config::public_urls`]: crate::config::Config::public_urls

use super::Access;
use crate::config::normalize_url;
use mls_proto::{Event, Hex32};

/// How far an AUTH event's `created_at` may be from now.
const AUTH_WINDOW_SECS: u64 = 600;

/// Ok(pubkey) when `ev` authenticates its author on this connection; else the `OK false`
/// message.
pub fn verify(
    ev: &Event,
    challenge: &str,
    relay_urls: &[String],
    access: &Access,
    now: u64,
) -> Result<Hex32, String> {
    if ev.kind != 22242 {
        return Err("invalid: AUTH event must be kind 22242".into());
    }
    ev.verify().map_err(|e| format!("invalid: {e}"))?;
    if ev.created_at.abs_diff(now) > AUTH_WINDOW_SECS {
        return Err("invalid: AUTH event created_at must be within 10 minutes of now".into());
    }
    // Every `challenge` and `relay` tag must fit, not just the first: an event that also
    // names another relay or challenge could log its author in there too.
    let mut challenges = ev.tag_values("challenge").peekable();
    if challenges.peek().is_none() || challenges.any(|c| c != challenge) {
        return Err("invalid: AUTH challenge does not match this connection's".into());
    }
    let mut relays = ev.tag_values("relay").peekable();
    if relays.peek().is_none() {
        return Err("invalid: AUTH event needs a relay tag".into());
    }
    if relays.any(|url| !relay_urls.contains(&normalize_url(url))) {
        return Err(format!(
            "invalid: AUTH relay tag does not name this relay ({})",
            relay_urls.join(", ")
        ));
    }
    if !access.pubkey_allowed(&ev.pubkey) {
        return Err("restricted: this pubkey is not allowed on this relay".into());
    }
    Ok(ev.pubkey)
}
