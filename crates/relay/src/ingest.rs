//! The relay-level checks every EVENT passes before the gateway rules and the store see it:
//! signature, size limits, the `created_at` window, NIP-40, NIP-70, auth and allowlists.

use crate::auth::Access;
use crate::config::Limits;
use mls_proto::{Event, Hex32};
use mls_store::MAX_TAG_VALUE_LEN;

/// Ok, or the `OK false` message (with its prefix).
pub fn check(
    limits: &Limits,
    access: &Access,
    ev: &Event,
    authed: &[Hex32],
    now: u64,
) -> Result<(), String> {
    if ev.tags.len() > limits.max_event_tags {
        return Err(format!(
            "invalid: {} tags, max_event_tags is {}",
            ev.tags.len(),
            limits.max_event_tags
        ));
    }
    if ev.content.len() > limits.max_content_length {
        return Err(format!(
            "invalid: content is {} bytes, max_content_length is {}",
            ev.content.len(),
            limits.max_content_length
        ));
    }
    // Indexed tag values are bounded by what every store indexes (a longer one would be
    // truncated, hashed or refused differently by each backend).
    if let Some(t) = ev.tags.iter().find(|t| {
        t.first()
            .is_some_and(|n| n.len() == 1 && n.as_bytes()[0].is_ascii_alphabetic())
            && t.get(1).is_some_and(|v| v.len() > MAX_TAG_VALUE_LEN)
    }) {
        return Err(format!(
            "invalid: {} tag value is {} bytes, the most for an indexed (single-letter) tag is {MAX_TAG_VALUE_LEN}",
            t[0],
            t[1].len()
        ));
    }
    if let Err(e) = ev.verify() {
        return Err(format!("invalid: {e}"));
    }
    if access.auth_required && authed.is_empty() {
        return Err("auth-required: authenticate (NIP-42) before publishing".into());
    }
    // The author, not only the connection: with auth on, an authenticated friend (or an
    // `import`) must not publish what a blacklisted key signed.
    if access.blocks_author(&ev.pubkey) {
        return Err("blocked: the event's author is in auth.pubkey_blacklist".into());
    }
    if ev.kind == 22242 {
        return Err("invalid: kind 22242 is only accepted in an AUTH message".into());
    }
    if limits.created_at_upper_limit > 0 && ev.created_at > now + limits.created_at_upper_limit {
        return Err(format!(
            "invalid: created_at is more than {} s in the future",
            limits.created_at_upper_limit
        ));
    }
    // Gift wraps are backdated on purpose; the gateway applies their own window.
    if limits.created_at_lower_limit > 0
        && ev.kind != 1059
        && ev.created_at + limits.created_at_lower_limit < now
    {
        return Err(format!(
            "invalid: created_at is more than {} s in the past",
            limits.created_at_lower_limit
        ));
    }
    if let Some(exp) = ev.expiration() {
        if exp <= now {
            return Err("invalid: event has expired (NIP-40)".into());
        }
    }
    // NIP-70 on every client write, here too: ephemeral events never reach the gateway's
    // `admit`, and the store answers a duplicate before it.
    mls_gateway_rules::check_protected(ev, authed)
}

/// Finds the `"id":"<64 hex>"` of an EVENT too large to parse, so it can still get an `OK`.
pub fn sniff_event_id(text: &str) -> Option<String> {
    let head = text.get(..text.len().min(256))?;
    if !head
        .trim_start()
        .trim_start_matches('[')
        .trim_start()
        .starts_with("\"EVENT\"")
    {
        return None;
    }
    let mut rest = text;
    while let Some(pos) = rest.find("\"id\"") {
        rest = &rest[pos + 4..];
        let after = rest.trim_start().strip_prefix(':')?.trim_start();
        if let Some(v) = after.strip_prefix('"') {
            let cand = v.get(..64)?;
            if v[64..].starts_with('"') && Hex32::from_hex(cand).is_some() {
                return Some(cand.to_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_ids_of_oversize_events() {
        let id = "ab".repeat(32);
        let msg = format!(r#"["EVENT",{{"content":"xx","id" : "{id}","kind":1}}]"#);
        assert_eq!(sniff_event_id(&msg), Some(id));
        assert_eq!(sniff_event_id(r#"["REQ","x",{}]"#), None);
        assert_eq!(sniff_event_id(r#"["EVENT",{"id":"short"}]"#), None);
    }
}
