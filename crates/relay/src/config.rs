//! The relay's configuration (PROTOCOL.md §9): one TOML file, then environment overrides, then
//! validation.
//!
//! The operators' existing file (`config/rnostr.toml`) loads as written. Every key has a default, so
//! a missing file means a working local relay. Unknown keys are warnings, never errors (a typo must
//! be visible, an old key must not stop a deploy); a value of the wrong type or out of range is an
//! error that names the key. `config/example.toml` documents every key with its default.
//!
//! Order of use: [`Config::load`] → [`Config::apply_env`] → [`Config::validate`].

mod env;
mod mask;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use mls_gateway_rules::GatewayConfig;
use mls_proto::{parse_pubkey, Hex32};
use serde::{Deserialize, Serialize};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    pub server: ServerConfig,
    pub info: InfoConfig,
    pub data: DataConfig,
    pub limitation: Limits,
    pub auth: AuthConfig,
    pub bus: BusConfig,
    pub extensions: Extensions,
}

/// `[bus]`: how relay instances that share one database tell each other about commits, so
/// that an event accepted by one reaches live subscribers on all (`crate::bus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BusConfig {
    /// Redis pub/sub (env `REDIS_URL`), e.g. `redis://10.0.0.3:6379/0`. Unset: PostgreSQL
    /// LISTEN/NOTIFY when `storage_backend = "cloudsql"`, no bus for the embedded store (one
    /// process). A secret when it holds a password: shown masked.
    pub redis_url: Option<String>,
    /// The Redis channel; deployments sharing one Redis need one each.
    pub redis_channel: String,
    /// How often each instance also reads the store for commits it heard nothing of (a lost
    /// bus message, a bus outage), milliseconds.
    pub catch_up_interval_ms: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            redis_url: None,
            redis_channel: "mls-gateway-commits".into(),
            catch_up_interval_ms: 1000,
        }
    }
}

/// `[server]`: where to listen and how the HTTP side behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    pub host: String,
    /// Env `PORT` (Cloud Run). 0 = any free port.
    pub port: u16,
    /// Tokio worker threads; unset = one per CPU.
    pub workers: Option<usize>,
    /// This relay's public URL(s), what NIP-42 `relay` tags and NIP-98 `u` URLs must name
    /// (env `RELAY_URL`, comma-separated). Unset = derived from a loopback listen address
    /// ([`Config::public_urls`]); never taken from a request.
    pub relay_url: Option<RelayUrls>,
    /// CORS origins for the HTTP API (env `ALLOWED_ORIGINS`, comma-separated). Empty = none;
    /// `"*"` = any.
    pub allowed_origins: Vec<String>,
    /// Bearer token for `GET /metrics` (env `METRICS_TOKEN`); unset = open. A secret.
    pub metrics_token: Option<String>,
    /// Take the client IP (rate limits, logs) from the last `X-Forwarded-For` entry instead of
    /// the socket. Only behind a proxy that sets it (Cloud Run, a load balancer).
    pub trust_forwarded_for: bool,
    /// A WebSocket older than this gets a NOTICE and a close frame with a reason, so that its
    /// client reconnects before the platform cuts it (Cloud Run ends requests at the service's
    /// `timeoutSeconds`, at most 3600 s). Each connection's age is drawn between 90 % and 100 %
    /// of it, so connections opened together do not all reconnect at once. 0 = no limit.
    pub max_connection_age_seconds: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            workers: None,
            relay_url: None,
            allowed_origins: Vec::new(),
            metrics_token: None,
            trust_forwarded_for: false,
            max_connection_age_seconds: 3000,
        }
    }
}

/// `server.relay_url`: one URL or a list (a relay reachable under several names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RelayUrls {
    One(String),
    Many(Vec<String>),
}

impl RelayUrls {
    pub fn as_slice(&self) -> &[String] {
        match self {
            RelayUrls::One(url) => std::slice::from_ref(url),
            RelayUrls::Many(urls) => urls,
        }
    }
}

impl From<&str> for RelayUrls {
    fn from(url: &str) -> Self {
        RelayUrls::One(url.to_owned())
    }
}

impl<'de> Deserialize<'de> for RelayUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RelayUrls;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a URL or a list of URLs")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RelayUrls, E> {
                Ok(RelayUrls::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RelayUrls, A::Error> {
                let mut out = Vec::new();
                while let Some(url) = seq.next_element::<String>()? {
                    out.push(url);
                }
                Ok(RelayUrls::Many(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[info]`: the NIP-11 relay information document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InfoConfig {
    pub name: String,
    pub description: String,
    /// The operator's pubkey (hex or npub).
    pub pubkey: Option<String>,
    pub contact: Option<String>,
}

impl Default for InfoConfig {
    fn default() -> Self {
        InfoConfig {
            name: "MLS Gateway".into(),
            description: "Nostr relay and MLS delivery service for end-to-end encrypted group \
                          messaging"
                .into(),
            pubkey: None,
            contact: None,
        }
    }
}

/// `[data]`: where the embedded store keeps its files, and how large they may grow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DataConfig {
    pub path: PathBuf,
    /// Most the embedded store may hold, GiB (LMDB's map size: address space, not disk,
    /// until used). Writes are refused once it is full; raising it and restarting is enough.
    pub max_size_gib: f64,
}

impl DataConfig {
    /// [`Self::max_size_gib`] in bytes.
    pub fn max_size_bytes(&self) -> usize {
        (self.max_size_gib * f64::from(1u32 << 30)) as usize
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            path: PathBuf::from("./data"),
            max_size_gib: 64.0,
        }
    }
}

/// `[limitation]`: per-connection and per-message limits (the NIP-11 `limitation` names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest WebSocket message, bytes. MLS Welcomes are large, hence 1 MiB.
    pub max_message_length: usize,
    /// Open subscriptions per connection.
    pub max_subscriptions: usize,
    /// Filters per REQ / COUNT.
    pub max_filters: usize,
    /// Values in one filter array (`ids`, `authors`, `kinds`, a `#tag`) of a REQ / COUNT.
    pub max_filter_values: usize,
    /// What all open subscriptions of one connection may hold, bytes (32 per id or pubkey, 2
    /// per kind, a tag value's length plus 16, 64 per filter, plus the subscription id).
    pub max_subscription_bytes: usize,
    /// Cap on a filter's `limit`, and the limit of a filter that has none.
    pub max_limit: u64,
    /// Stored events one REQ or COUNT may examine (visible or not, all filters together);
    /// at the bound a REQ ends with `CLOSED "invalid: …"` after what it found and a COUNT
    /// answers `approximate`.
    pub max_query_candidates: u64,
    pub max_subid_length: usize,
    pub max_event_tags: usize,
    /// Largest event `content`, bytes.
    pub max_content_length: usize,
    /// 0 = no limit; else events with `created_at` older than now minus this are refused.
    pub created_at_lower_limit: u64,
    /// Events more than this many seconds in the future are refused.
    pub created_at_upper_limit: u64,
    /// Messages queued per connection before it is disconnected as a slow reader.
    pub outbox_capacity: usize,
    /// Bytes queued per connection before it is disconnected as a slow reader (one larger
    /// message still goes to an empty outbox).
    pub outbox_max_bytes: usize,
    /// Bytes queued in all connections' outboxes together; beyond it the connections with the
    /// largest backlog are disconnected first.
    pub outbox_total_bytes: usize,
    /// Open WebSocket connections per client IP (IPv6: per /64). 0 = unlimited.
    pub max_connections_per_ip: u32,
    /// REQ and COUNT messages (and REST API requests) per minute per client IP, and per
    /// authenticated pubkey too. 0 = unlimited.
    pub max_reqs_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_length: 1024 * 1024,
            max_subscriptions: 50,
            max_filters: 10,
            max_filter_values: 2000,
            max_subscription_bytes: 256 * 1024,
            max_limit: 500,
            max_query_candidates: 10_000,
            max_subid_length: 64,
            max_event_tags: 2000,
            max_content_length: 512 * 1024,
            created_at_lower_limit: 0,
            created_at_upper_limit: 900,
            outbox_capacity: 1024,
            outbox_max_bytes: 4 * 1024 * 1024,
            outbox_total_bytes: 256 * 1024 * 1024,
            max_connections_per_ip: 100,
            max_reqs_per_minute: 600,
        }
    }
}

/// `[auth]`: NIP-42 and the pubkey allow/deny lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Env `NOSTR_AUTH_REQUIRED`. true: nothing but AUTH is served before authentication.
    pub enabled: bool,
    /// Hex or npub; empty = everyone.
    pub pubkey_whitelist: Vec<String>,
    /// Hex or npub; never authenticates, and events it signed are refused.
    pub pubkey_blacklist: Vec<String>,
    /// Pubkeys one connection may authenticate as; further AUTHs get `restricted:`.
    pub max_pubkeys_per_connection: usize,
    /// AUTH messages per minute per connection (accepted or not). 0 = unlimited.
    pub max_auths_per_minute_per_connection: u32,
    /// AUTH messages per minute per client IP (IPv6: per /64). 0 = unlimited.
    pub max_auths_per_minute_per_ip: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            enabled: false,
            pubkey_whitelist: Vec::new(),
            pubkey_blacklist: Vec::new(),
            max_pubkeys_per_connection: 8,
            max_auths_per_minute_per_connection: 60,
            max_auths_per_minute_per_ip: 600,
        }
    }
}

/// `[extensions]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Extensions {
    pub mls_gateway: GatewayConfig,
}

/// Why a configuration was refused. The text names the file or variable, the key, and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML at all; `message` carries the line and column.
    #[error("{origin}: invalid TOML: {message}")]
    Syntax { origin: String, message: String },
    /// A key whose value has the wrong type or is out of range.
    #[error("{origin}: {key}: {message}")]
    Value {
        origin: String,
        key: String,
        message: String,
    },
    /// An environment override that could not be applied.
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    /// A value that parsed but is not acceptable (see [`Config::validate`]); `message` starts
    /// with or contains the key.
    #[error("{message}")]
    Invalid { key: String, message: String },
    /// More than one [`ConfigError::Invalid`], one per line.
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// The dotted key (or variable name) the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Value { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Env { var, .. } => Some(var),
            ConfigError::Many(all) => all.first().and_then(|e| e.key()),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

impl Config {
    /// Reads the file at `path`; `None` → built-in defaults. Returns the config plus warnings
    /// (unknown keys, by dotted name: "unknown key server.hots").
    ///
    /// A path that is given but cannot be read is an error, not defaults: a mistyped `--config`
    /// must not silently start an open relay.
    pub fn load(path: Option<&Path>) -> Result<(Config, Vec<String>), ConfigError> {
        let Some(path) = path else {
            return Ok((Config::default(), Vec::new()));
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// [`Config::load`] for text already in memory; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<(Config, Vec<String>), ConfigError> {
        Self::parse(text, origin)
    }

    fn parse(text: &str, origin: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let syntax = |e: toml::de::Error| ConfigError::Syntax {
            origin: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        };
        let mut table: toml::Table = text.parse().map_err(syntax)?;
        let mut warnings = Vec::new();
        // Sections that use `deny_unknown_fields` (owned elsewhere) turn an unknown key into an
        // error; we want a warning, so drop the key and try again. Bounded: each round removes
        // one key from a finite table.
        loop {
            let mut ignored = Vec::new();
            let mut on_ignored =
                |path: serde_ignored::Path| ignored.push(format!("unknown key {path}"));
            let value = toml::Value::Table(table.clone());
            let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
            match serde_path_to_error::deserialize::<_, Config>(de) {
                Ok(config) => {
                    warnings.extend(ignored);
                    return Ok((config, warnings));
                }
                Err(err) => {
                    let segments: Vec<String> = err
                        .path()
                        .iter()
                        .map(|s| match s {
                            serde_path_to_error::Segment::Seq { index } => format!("[{index}]"),
                            other => other.to_string(),
                        })
                        .collect();
                    let message = err.inner().message().trim_end().to_string();
                    if let Some(field) = unknown_field_name(&message) {
                        if let Some(parent) = unknown_field_parent(err.path(), field) {
                            if remove_key(&mut table, &parent, field) {
                                let mut dotted = parent.join(".");
                                if !dotted.is_empty() {
                                    dotted.push('.');
                                }
                                dotted.push_str(field);
                                warnings.push(format!("unknown key {dotted}"));
                                continue;
                            }
                        }
                    }
                    return Err(ConfigError::Value {
                        origin: origin.to_string(),
                        key: dotted_key(&segments),
                        message,
                    });
                }
            }
        }
    }

    /// The effective listen address, `host:port` (an IPv6 host is bracketed).
    pub fn listen_addr(&self) -> String {
        let host = &self.server.host;
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", self.server.port)
        } else {
            format!("{host}:{}", self.server.port)
        }
    }

    /// The URLs NIP-42 `relay` tags and NIP-98 `u` URLs must name, normalised
    /// ([`normalize_url`]), for a relay listening on `port` (the bound port, when
    /// `server.port` is 0).
    ///
    /// `server.relay_url` when set. Else the listen address, `ws://host:port`, if it is a
    /// loopback one (a local relay works without a config file). A relay on a public address
    /// cannot know the name its clients use, and must not take it from them (the `Host`
    /// header is the client's to forge): with auth or the API (NIP-98) on, that is an error
    /// naming `server.relay_url`.
    pub fn public_urls(&self, port: u16) -> Result<Vec<String>, ConfigError> {
        if let Some(urls) = &self.server.relay_url {
            return Ok(urls.as_slice().iter().map(|u| normalize_url(u)).collect());
        }
        let host = self
            .server
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && (self.auth.enabled || self.extensions.mls_gateway.enable_api) {
            return Err(ConfigError::Invalid {
                key: "server.relay_url".into(),
                message: format!(
                    "server.relay_url must be set (or env RELAY_URL) when listening on {:?} \
                     with auth or the API enabled: NIP-42 and NIP-98 need this relay's public \
                     URL, e.g. relay_url = \"wss://relay.example.com\"",
                    self.server.host
                ),
            });
        }
        let mut own = self.clone();
        own.server.port = port;
        Ok(vec![normalize_url(&format!("ws://{}", own.listen_addr()))])
    }

    /// `auth.pubkey_whitelist` parsed (entries that are not keys are skipped: see `validate`).
    pub fn whitelist(&self) -> Vec<Hex32> {
        parse_keys(&self.auth.pubkey_whitelist)
    }

    /// `auth.pubkey_blacklist` parsed (entries that are not keys are skipped: see `validate`).
    pub fn blacklist(&self) -> Vec<Hex32> {
        parse_keys(&self.auth.pubkey_blacklist)
    }
}

/// The form URLs are compared in (NIP-42 `relay` tags, NIP-98 `u` URLs, `server.relay_url`):
/// `https://Relay.Example.com:443/api?x=1#f` → `relay.example.com/api?x=1`. The scheme, the
/// case of the host, a default port (80, 443), the fragment and a trailing slash don't matter;
/// the path and query do.
pub fn normalize_url(url: &str) -> String {
    let s = url.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let s = s.split('#').next().unwrap_or(s);
    let (s, query) = match s.split_once('?') {
        Some((s, q)) => (s, Some(q)),
        None => (s, None),
    };
    let (authority, path) = s.split_once('/').unwrap_or((s, ""));
    let authority = authority.to_ascii_lowercase();
    let authority = authority
        .strip_suffix(":443")
        .or_else(|| authority.strip_suffix(":80"))
        .unwrap_or(&authority);
    let mut out = authority.to_owned();
    let path = path.trim_end_matches('/');
    if !path.is_empty() {
        out.push('/');
        out.push_str(path);
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn parse_keys(list: &[String]) -> Vec<Hex32> {
    let mut out: Vec<Hex32> = Vec::with_capacity(list.len());
    for key in list.iter().filter_map(|s| parse_pubkey(s)) {
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// `server.port`, `auth.pubkey_whitelist[1]`.
fn dotted_key(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if !out.is_empty() && !s.starts_with('[') {
            out.push('.');
        }
        out.push_str(s);
    }
    out
}

/// serde's text for a key refused by `deny_unknown_fields`: "unknown field `x`, expected …".
fn unknown_field_name(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(&rest[..rest.find('`')?])
}

/// The table holding a key refused as unknown: the error's path, without the key itself when
/// the path already ends with it. `None` when the path goes through anything but tables.
fn unknown_field_parent(path: &serde_path_to_error::Path, field: &str) -> Option<Vec<String>> {
    let mut keys = Vec::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Map { key } => keys.push(key.clone()),
            _ => return None,
        }
    }
    if keys.last().is_some_and(|k| k == field) {
        keys.pop();
    }
    Some(keys)
}

/// Removes `field` from the table at `parent`; false when there is no such table or key.
fn remove_key(root: &mut toml::Table, parent: &[String], field: &str) -> bool {
    let mut table = root;
    for key in parent {
        match table.get_mut(key) {
            Some(toml::Value::Table(t)) => table = t,
            _ => return false,
        }
    }
    table.remove(field).is_some()
}
