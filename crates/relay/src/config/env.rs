//! Environment overrides (PROTOCOL.md §9), applied after the file: the platform (Cloud Run,
//! docker-compose) sets these, and they win over what the file says.

use super::{Config, ConfigError};

impl Config {
    /// Applies `PORT`, `NOSTR_AUTH_REQUIRED` (true/false/1/0), `ALLOWED_ORIGINS` and `RELAY_URL`
    /// (comma-separated),
    /// `DATABASE_URL`, `GOOGLE_CLOUD_PROJECT` / `FIREBASE_PROJECT_ID` (project id; the first one
    /// set wins), `METRICS_TOKEN` and `REDIS_URL`. `lookup` is `|k| std::env::var(k).ok()` in the binary; tests
    /// pass their own. A variable that is set but empty counts as unset.
    pub fn apply_env(
        &mut self,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let get = |var: &str| {
            lookup(var)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        if let Some(v) = get("PORT") {
            self.server.port = v.parse().map_err(|_| ConfigError::Env {
                var: "PORT".into(),
                message: format!("{v:?} is not a port number (0-65535)"),
            })?;
        }
        if let Some(v) = get("NOSTR_AUTH_REQUIRED") {
            self.auth.enabled = parse_bool(&v).ok_or_else(|| ConfigError::Env {
                var: "NOSTR_AUTH_REQUIRED".into(),
                message: format!("{v:?} is not one of true, false, 1, 0"),
            })?;
        }
        if let Some(v) = get("ALLOWED_ORIGINS") {
            self.server.allowed_origins = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        let gateway = &mut self.extensions.mls_gateway;
        if let Some(v) = get("DATABASE_URL") {
            gateway.database_url = Some(v);
        }
        if let Some(v) = get("GOOGLE_CLOUD_PROJECT").or_else(|| get("FIREBASE_PROJECT_ID")) {
            gateway.project_id = Some(v);
        }
        if let Some(v) = get("RELAY_URL") {
            let urls: Vec<String> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            self.server.relay_url = Some(super::RelayUrls::Many(urls));
        }
        if let Some(v) = get("METRICS_TOKEN") {
            self.server.metrics_token = Some(v);
        }
        if let Some(v) = get("REDIS_URL") {
            self.bus.redis_url = Some(v);
        }
        Ok(())
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}
