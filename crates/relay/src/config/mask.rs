//! The effective configuration as TOML, safe to print (`check-config`, startup log): secrets are
//! replaced by `***`.

use super::Config;

const MASK: &str = "***";

impl Config {
    /// The effective config as TOML with secrets masked: the password inside
    /// `extensions.mls_gateway.database_url`, `bus.redis_url` and `server.metrics_token`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        if let Some(token) = &mut masked.server.metrics_token {
            *token = MASK.into();
        }
        if let Some(url) = &mut masked.extensions.mls_gateway.database_url {
            *url = mask_database_url(url);
        }
        // redis://user:secret@host or redis://:secret@host: the same URL form.
        if let Some(url) = &mut masked.bus.redis_url {
            *url = mask_database_url(url);
        }
        toml::to_string(&masked)
            .unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"))
    }
}

/// Hides the password of a PostgreSQL connection string, in either form libpq accepts:
/// `postgres://user:secret@host/db?password=secret` or `host=h user=u password=secret`.
pub(crate) fn mask_database_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (head, query) = match rest.find('?') {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let head = match head.rfind('@') {
            Some(at) => {
                let (userinfo, host) = head.split_at(at);
                match userinfo.split_once(':') {
                    Some((user, _password)) => format!("{user}:{MASK}{host}"),
                    None => head.to_string(),
                }
            }
            None => head.to_string(),
        };
        let mut out = format!("{scheme}://{head}");
        if let Some(query) = query {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if is_password_key(k) => format!("{k}={MASK}"),
                    _ => p.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&params.join("&"));
        }
        out
    } else {
        mask_key_value(url)
    }
}

/// `host=h password='a b' user=u` → `host=h password=*** user=u`.
fn mask_key_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let before = rest[..eq].trim_end();
        let key = &before[before.rfind(char::is_whitespace).map_or(0, |i| i + 1)..];
        out.push_str(&rest[..=eq]);
        let after = rest[eq + 1..].trim_start();
        out.push_str(&rest[eq + 1..rest.len() - after.len()]);
        // A value is a quoted string (with \' escapes) or runs to the next whitespace.
        let value_len = if let Some(quoted) = after.strip_prefix('\'') {
            let mut escaped = false;
            let mut end = after.len();
            for (i, c) in quoted.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '\'' => {
                        end = i + 2;
                        break;
                    }
                    _ => {}
                }
            }
            end
        } else {
            after.find(char::is_whitespace).unwrap_or(after.len())
        };
        if is_password_key(key) {
            out.push_str(MASK);
        } else {
            out.push_str(&after[..value_len]);
        }
        rest = &after[value_len..];
    }
    out.push_str(rest);
    out
}

fn is_password_key(key: &str) -> bool {
    key.eq_ignore_ascii_case("password")
}
