//! Checks that the file cannot express by types alone: ranges, key formats and which backend
//! needs which setting. Every message starts with (or contains) the dotted key.

use mls_gateway_rules::config::StorageBackend;
use mls_proto::parse_pubkey;

use super::{Config, ConfigError};

/// Largest `server.max_connection_age_seconds` (a year): beyond it the limit means nothing,
/// and the deadline it sets must stay representable.
const MAX_CONNECTION_AGE_LIMIT: u64 = 365 * 24 * 3600;

impl Config {
    /// Checks values and cross-field rules. All problems are reported at once (one per line,
    /// [`ConfigError::Many`]); a single problem is returned as itself.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut fail = |key: &str, message: String| {
            errors.push(ConfigError::Invalid {
                key: key.to_string(),
                message,
            })
        };

        // [data]
        // 1 MiB to 1 PiB: below, LMDB cannot hold its own tables; above, the size means nothing.
        let gib = self.data.max_size_gib;
        if !(1.0 / 1024.0..=1024.0 * 1024.0).contains(&gib) {
            fail(
                "data.max_size_gib",
                format!(
                    "data.max_size_gib {gib} must be between 0.001 (1 MiB) and 1048576 (1 PiB)"
                ),
            );
        }

        // [server]
        let server = &self.server;
        if server.host.trim().is_empty() || server.host.contains(char::is_whitespace) {
            fail(
                "server.host",
                format!(
                    "server.host {:?} is not a host name or address",
                    server.host
                ),
            );
        }
        if server.workers == Some(0) {
            fail("server.workers", "server.workers must be at least 1".into());
        }
        if let Some(urls) = &server.relay_url {
            if urls.as_slice().is_empty() {
                fail(
                    "server.relay_url",
                    "server.relay_url must name at least one URL (remove the key to derive it from a loopback listen address)".into(),
                );
            }
            for url in urls.as_slice() {
                if url_host(url).is_none() {
                    fail(
                        "server.relay_url",
                        format!("server.relay_url {url:?} is not a relay URL (e.g. wss://relay.example.com)"),
                    );
                }
            }
        }
        for (i, origin) in server.allowed_origins.iter().enumerate() {
            if origin != "*" && !is_origin(origin) {
                fail(
                    "server.allowed_origins",
                    format!(
                        "server.allowed_origins[{i}]: {origin:?} is not an origin \
                         (\"*\" or scheme://host[:port], no path)"
                    ),
                );
            }
        }
        if server
            .metrics_token
            .as_deref()
            .is_some_and(|t| t.trim().is_empty())
        {
            fail(
                "server.metrics_token",
                "server.metrics_token must not be empty (remove the key to serve /metrics without a token)".into(),
            );
        }

        if server.max_connection_age_seconds > MAX_CONNECTION_AGE_LIMIT {
            fail(
                "server.max_connection_age_seconds",
                format!(
                    "server.max_connection_age_seconds must be at most {MAX_CONNECTION_AGE_LIMIT} (a year; 0 = no limit)"
                ),
            );
        }

        // [info]
        if let Some(pk) = &self.info.pubkey {
            if parse_pubkey(pk).is_none() {
                fail(
                    "info.pubkey",
                    "info.pubkey: not a hex or npub public key".into(),
                );
            }
        }

        // [limitation]
        let l = &self.limitation;
        let at_least_one = [
            ("max_message_length", l.max_message_length as u64),
            ("max_subscriptions", l.max_subscriptions as u64),
            ("max_filters", l.max_filters as u64),
            ("max_filter_values", l.max_filter_values as u64),
            ("max_subscription_bytes", l.max_subscription_bytes as u64),
            ("max_limit", l.max_limit),
            ("max_query_candidates", l.max_query_candidates),
            ("max_subid_length", l.max_subid_length as u64),
            ("max_event_tags", l.max_event_tags as u64),
            ("max_content_length", l.max_content_length as u64),
            ("outbox_capacity", l.outbox_capacity as u64),
            ("outbox_max_bytes", l.outbox_max_bytes as u64),
            ("outbox_total_bytes", l.outbox_total_bytes as u64),
        ];
        for (name, value) in at_least_one {
            if value == 0 {
                let key = format!("limitation.{name}");
                fail(&key, format!("{key} must be at least 1"));
            }
        }

        // [auth]
        if self.auth.max_pubkeys_per_connection == 0 {
            fail(
                "auth.max_pubkeys_per_connection",
                "auth.max_pubkeys_per_connection must be at least 1".into(),
            );
        }
        check_keys(
            &mut fail,
            "auth.pubkey_whitelist",
            &self.auth.pubkey_whitelist,
        );
        check_keys(
            &mut fail,
            "auth.pubkey_blacklist",
            &self.auth.pubkey_blacklist,
        );

        // [extensions.mls_gateway]
        let g = &self.extensions.mls_gateway;
        match g.storage_backend {
            StorageBackend::Embedded => {
                if self.data.path.as_os_str().is_empty() {
                    fail(
                        "data.path",
                        "data.path must not be empty for the embedded backend".into(),
                    );
                }
            }
            StorageBackend::Firestore => {
                if !is_set(&g.project_id) {
                    // The seed's own text, with the key in front. Env: GOOGLE_CLOUD_PROJECT.
                    fail(
                        "extensions.mls_gateway.project_id",
                        "extensions.mls_gateway.project_id required for Firestore backend".into(),
                    );
                }
                // Firestore's own rule for database ids.
                if let Some(id) = &g.database_id {
                    let valid = id == "(default)"
                        || ((4..=63).contains(&id.len())
                            && id.starts_with(|c: char| c.is_ascii_lowercase())
                            && !id.ends_with('-')
                            && id.bytes().all(|b| {
                                b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
                            }));
                    if !valid {
                        fail(
                            "extensions.mls_gateway.database_id",
                            format!(
                                "extensions.mls_gateway.database_id {id:?}: use \"(default)\" or 4 to 63 \
                                 lowercase letters, digits and hyphens, starting with a letter"
                            ),
                        );
                    }
                }
            }
            StorageBackend::Cloudsql => {
                if !is_set(&g.database_url) {
                    // Env: DATABASE_URL.
                    fail(
                        "extensions.mls_gateway.database_url",
                        "extensions.mls_gateway.database_url required for cloudsql backend".into(),
                    );
                }
                // One connection is the writer's; reads need at least one more.
                if !(2..=1000).contains(&g.database_pool_size) {
                    fail(
                        "extensions.mls_gateway.database_pool_size",
                        format!(
                            "extensions.mls_gateway.database_pool_size must be 2 to 1000, got {}",
                            g.database_pool_size
                        ),
                    );
                }
            }
        }
        // [bus]
        let bus = &self.bus;
        if let Some(url) = &bus.redis_url {
            if !url.starts_with("redis://") {
                fail(
                    "bus.redis_url",
                    "bus.redis_url must be a redis:// URL (e.g. redis://10.0.0.3:6379; TLS, rediss://, is not built in)".into(),
                );
            }
            if g.storage_backend == StorageBackend::Embedded {
                fail(
                    "bus.redis_url",
                    "bus.redis_url joins instances that share one database: it needs a shared store, storage_backend = \"cloudsql\" or \"firestore\" (the embedded store belongs to one process)".into(),
                );
            }
        }
        if bus.redis_channel.is_empty() {
            fail(
                "bus.redis_channel",
                "bus.redis_channel must not be empty".into(),
            );
        }
        if !(10..=60_000).contains(&bus.catch_up_interval_ms) {
            fail(
                "bus.catch_up_interval_ms",
                format!(
                    "bus.catch_up_interval_ms must be 10 to 60000, got {}",
                    bus.catch_up_interval_ms
                ),
            );
        }

        if g.enable_api
            && (!g.api_prefix.starts_with('/')
                || (g.api_prefix.len() > 1 && g.api_prefix.ends_with('/')))
        {
            fail(
                "extensions.mls_gateway.api_prefix",
                format!(
                    "extensions.mls_gateway.api_prefix {:?} must start with '/' and not end with '/' (e.g. \"/api/v1/mls\")",
                    g.api_prefix
                ),
            );
        }
        check_keys(
            &mut fail,
            "extensions.mls_gateway.admin_pubkeys",
            &g.admin_pubkeys,
        );

        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().expect("one error")),
            _ => Err(ConfigError::Many(errors)),
        }
    }

    /// Settings that are valid but probably not what the operator meant. Call after
    /// [`Config::apply_env`]; log each line as a warning.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.auth.enabled && !self.auth.pubkey_whitelist.is_empty() {
            out.push(
                "auth.pubkey_whitelist is set but auth.enabled = false: \
                 clients are not required to authenticate"
                    .to_string(),
            );
        }
        let black = self.blacklist();
        for key in self.whitelist().iter().filter(|k| black.contains(k)) {
            out.push(format!(
                "auth: {} is in both pubkey_whitelist and pubkey_blacklist (the blacklist wins)",
                mls_proto::short_pubkey(key)
            ));
        }
        let l = &self.limitation;
        if l.outbox_total_bytes < l.outbox_max_bytes {
            out.push(format!(
                "limitation.outbox_total_bytes = {} is less than limitation.outbox_max_bytes = {}: \
                 the relay-wide budget cuts slow readers before their own bound does",
                l.outbox_total_bytes, l.outbox_max_bytes
            ));
        }
        let lower = self.limitation.created_at_lower_limit;
        let backdate = self.extensions.mls_gateway.giftwrap_max_backdate;
        if lower != 0 && lower < backdate {
            out.push(format!(
                "limitation.created_at_lower_limit = {lower} is less than \
                 extensions.mls_gateway.giftwrap_max_backdate = {backdate}: \
                 backdated gift wraps (Welcomes) will be refused"
            ));
        }
        out
    }
}

fn is_set(value: &Option<String>) -> bool {
    value.as_deref().is_some_and(|v| !v.trim().is_empty())
}

fn check_keys(fail: &mut impl FnMut(&str, String), key: &str, list: &[String]) {
    for (i, entry) in list.iter().enumerate() {
        if parse_pubkey(entry).is_none() {
            fail(key, format!("{key}[{i}]: not a hex or npub public key"));
        }
    }
}

/// The host of `wss://host[:port][/path]`; the scheme is optional, as the NIP-42 check ignores it.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next()?;
    (!host.is_empty() && !host.contains(char::is_whitespace)).then_some(host)
}

/// `scheme://host[:port]`, as browsers send in `Origin` (no path, no trailing slash).
fn is_origin(s: &str) -> bool {
    let Some((scheme, authority)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !authority.is_empty()
        && !authority.contains(['/', '?', '#'])
        && !authority.contains(char::is_whitespace)
}
