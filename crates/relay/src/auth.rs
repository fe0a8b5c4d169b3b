//! NIP-42: checking an AUTH event against this connection's challenge and this relay's URL.

use crate::app::App;
use mls_proto::{Event, Hex32};

/// How far an AUTH event's `created_at` may be from now.
const AUTH_WINDOW_SECS: u64 = 600;

/// Ok(pubkey) when `ev` authenticates its author on this connection; else the `OK false`
/// message.
pub fn verify(
    app: &App,
    ev: &Event,
    challenge: &str,
    host: Option<&str>,
    now: u64,
) -> Result<Hex32, String> {
    if ev.kind != 22242 {
        return Err("invalid: AUTH event must be kind 22242".into());
    }
    ev.verify().map_err(|e| format!("invalid: {e}"))?;
    if ev.created_at.abs_diff(now) > AUTH_WINDOW_SECS {
        return Err("invalid: AUTH event created_at must be within 10 minutes of now".into());
    }
    if ev.tag_value("challenge") != Some(challenge) {
        return Err("invalid: AUTH challenge does not match this connection's".into());
    }
    let expected = match (&app.config.server.relay_url, host) {
        (Some(url), _) => normalize_relay_url(url),
        (None, Some(host)) => normalize_relay_url(host),
        (None, None) => return Err("invalid: cannot tell which relay URL to expect".into()),
    };
    match ev.tag_value("relay") {
        Some(url) if normalize_relay_url(url) == expected => {}
        Some(_) => {
            return Err(format!(
                "invalid: AUTH relay tag does not name this relay ({expected})"
            ))
        }
        None => return Err("invalid: AUTH event needs a relay tag".into()),
    }
    if !app.pubkey_allowed(&ev.pubkey) {
        return Err("restricted: this pubkey is not allowed on this relay".into());
    }
    Ok(ev.pubkey)
}

/// `wss://Relay.example.com/` and `relay.example.com` name the same relay: scheme, case of
/// the host and a trailing slash don't matter.
fn normalize_relay_url(url: &str) -> String {
    let s = url.trim();
    let s = s.split_once("://").map(|(_, rest)| rest).unwrap_or(s);
    let s = s.trim_end_matches('/');
    match s.split_once('/') {
        Some((host, path)) => format!("{}/{}", host.to_ascii_lowercase(), path),
        None => s.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_relay_url as n;

    #[test]
    fn relay_urls_compare_without_scheme_and_slash() {
        assert_eq!(n("wss://Relay.Example.com/"), n("relay.example.com"));
        assert_eq!(n("ws://127.0.0.1:8080"), n("127.0.0.1:8080"));
        assert_eq!(n("https://h/path/"), n("wss://h/path"));
        assert_ne!(n("wss://a.example"), n("wss://b.example"));
    }
}
