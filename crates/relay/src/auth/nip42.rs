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

#[cfg(test)]
mod tests {
    use crate::config::normalize_url as n;

    #[test]
    fn relay_urls_compare_without_scheme_and_slash() {
        assert_eq!(n("wss://Relay.Example.com/"), n("relay.example.com"));
        assert_eq!(n("ws://127.0.0.1:8080"), n("127.0.0.1:8080"));
        assert_eq!(n("https://h/path/"), n("wss://h/path"));
        assert_eq!(n("wss://h:443"), n("ws://h"));
        assert_ne!(n("wss://a.example"), n("wss://b.example"));
        assert_ne!(n("wss://a.example:8443"), n("wss://a.example"));
        assert_ne!(n("wss://a.example.evil"), n("wss://a.example"));
    }

    #[test]
    fn urls_compare_without_scheme_default_port_or_fragment() {
        assert_eq!(
            n("https://Relay.Example.com:443/api/v1/mls/keypackages?owner=ab#x"),
            "relay.example.com/api/v1/mls/keypackages?owner=ab"
        );
        assert_eq!(n("http://127.0.0.1:8080/x"), "127.0.0.1:8080/x");
        assert_eq!(n("wss://relay.example.com"), "relay.example.com");
        assert_eq!(n("relay.example.com/?x=1"), "relay.example.com?x=1");
        // A trailing slash of the path doesn't matter; one in the query does.
        assert_eq!(n("https://a.example/x"), n("https://a.example/x/"));
        assert_ne!(n("https://a.example/x?o=a"), n("https://a.example/x?o=a/"));
        assert_ne!(n("https://a.example/X"), n("https://a.example/x"));
    }
}
