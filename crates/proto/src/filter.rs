//! REQ / COUNT filters (NIP-01) and matching an event against them.

use crate::{Event, Hex32};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// One filter of a REQ. Conditions inside a filter are ANDed; the values of one condition ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub ids: Option<Vec<Hex32>>,
    pub authors: Option<Vec<Hex32>>,
    pub kinds: Option<Vec<u16>>,
    /// Single-letter tag conditions: `#e`, `#p`, `#h`, …
    pub tags: BTreeMap<char, Vec<String>>,
    pub since: Option<u64>,
    pub until: Option<u64>,
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

impl Filter {
    /// Parses a filter object strictly: wrong types and malformed ids are errors, not ignored.
    pub fn from_value(v: &Value) -> Result<Filter, FilterError> {
        let Some(obj) = v.as_object() else {
            return err("filter must be an object");
        };
        Self::from_map(obj)
    }

    fn from_map(obj: &Map<String, Value>) -> Result<Filter, FilterError> {
        let mut f = Filter::default();
        for (key, val) in obj {
            match key.as_str() {
                "ids" => f.ids = Some(hex_list(key, val)?),
                "authors" => f.authors = Some(hex_list(key, val)?),
                "kinds" => {
                    let list = array(key, val)?;
                    let mut kinds = Vec::with_capacity(list.len());
                    for k in list {
                        match k.as_u64() {
                            Some(k) if k <= u16::MAX as u64 => kinds.push(k as u16),
                            _ => return err("kinds must be integers between 0 and 65535"),
                        }
                    }
                    f.kinds = Some(kinds);
                }
                "since" => f.since = Some(uint(key, val)?),
                "until" => f.until = Some(uint(key, val)?),
                "limit" => f.limit = Some(uint(key, val)?),
                // NIP-50 search is not supported; a filter asking for it matches as if absent
                // would be wrong, so refuse it.
                "search" => return err("search is not supported"),
                k if k.starts_with('#') => {
                    let mut chars = k[1..].chars();
                    let (Some(letter), None) = (chars.next(), chars.next()) else {
                        return err(format!("tag filter {k} must be a single letter"));
                    };
                    if !letter.is_ascii_alphabetic() {
                        return err(format!("tag filter {k} must be a single letter"));
                    }
                    let mut values = Vec::new();
                    for v in array(key, val)? {
                        match v.as_str() {
                            Some(s) => values.push(s.to_owned()),
                            None => return err(format!("{k} values must be strings")),
                        }
                    }
                    f.tags.insert(letter, values);
                }
                other => return err(format!("unknown filter field {other}")),
            }
        }
        Ok(f)
    }

    /// True when the filter can match no event at all (an empty list in any condition).
    pub fn is_empty_match(&self) -> bool {
        self.ids.as_ref().is_some_and(Vec::is_empty)
            || self.authors.as_ref().is_some_and(Vec::is_empty)
            || self.kinds.as_ref().is_some_and(Vec::is_empty)
            || self.tags.values().any(Vec::is_empty)
            || matches!((self.since, self.until), (Some(s), Some(u)) if s > u)
    }

    pub fn matches(&self, ev: &Event) -> bool {
        if let Some(ids) = &self.ids {
            if !ids.contains(&ev.id) {
                return false;
            }
        }
        if let Some(authors) = &self.authors {
            if !authors.contains(&ev.pubkey) {
                return false;
            }
        }
        if let Some(kinds) = &self.kinds {
            if !kinds.contains(&ev.kind) {
                return false;
            }
        }
        if self.since.is_some_and(|s| ev.created_at < s) {
            return false;
        }
        if self.until.is_some_and(|u| ev.created_at > u) {
            return false;
        }
        self.tags.iter().all(|(letter, values)| {
            let mut buf = [0u8; 4];
            let name: &str = letter.encode_utf8(&mut buf);
            let found = ev.tag_values(name).any(|v| values.iter().any(|w| w == v));
            found
        })
    }
}

fn array<'a>(key: &str, v: &'a Value) -> Result<&'a Vec<Value>, FilterError> {
    v.as_array()
        .ok_or_else(|| FilterError(format!("{key} must be an array")))
}

fn uint(key: &str, v: &Value) -> Result<u64, FilterError> {
    v.as_u64()
        .ok_or_else(|| FilterError(format!("{key} must be a non-negative integer")))
}

fn hex_list(key: &str, v: &Value) -> Result<Vec<Hex32>, FilterError> {
    array(key, v)?
        .iter()
        .map(|x| {
            x.as_str().and_then(Hex32::from_hex).ok_or_else(|| {
                FilterError(format!(
                    "{key} must hold 64-character lowercase hex strings"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(kind: u16, tags: Vec<Vec<&str>>, created_at: u64) -> Event {
        let k = secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng());
        let tags = tags
            .into_iter()
            .map(|t| t.into_iter().map(String::from).collect())
            .collect();
        Event::sign(&k, created_at, kind, tags, "")
    }

    #[test]
    fn matching_rules() {
        let e = ev(445, vec![vec!["h", "g1"], vec!["k", "3"]], 100);
        let f = |v: Value| Filter::from_value(&v).unwrap();
        assert!(f(json!({})).matches(&e));
        assert!(f(json!({"kinds":[1,445]})).matches(&e));
        assert!(!f(json!({"kinds":[1]})).matches(&e));
        assert!(f(json!({"#h":["g0","g1"]})).matches(&e));
        assert!(!f(json!({"#h":["g0"]})).matches(&e));
        assert!(!f(json!({"#p":["g1"]})).matches(&e));
        assert!(f(json!({"since":100,"until":100})).matches(&e));
        assert!(!f(json!({"since":101})).matches(&e));
        assert!(!f(json!({"until":99})).matches(&e));
        assert!(f(json!({"ids":[e.id.to_hex()]})).matches(&e));
        assert!(f(json!({"authors":[e.pubkey.to_hex()]})).matches(&e));
        assert!(f(json!({"kinds":[]})).is_empty_match());
    }

    #[test]
    fn strict_parsing() {
        for bad in [
            json!([]),
            json!({"ids":["abc"]}),
            json!({"ids":"x"}),
            json!({"kinds":[-1]}),
            json!({"kinds":[70000]}),
            json!({"since":"1"}),
            json!({"limit":-1}),
            json!({"#hh":["x"]}),
            json!({"#h":[1]}),
            json!({"bogus":1}),
            json!({"authors":["AB".repeat(32)]}),
        ] {
            assert!(Filter::from_value(&bad).is_err(), "{bad}");
        }
        let f = Filter::from_value(&json!({"kinds":[1],"limit":5,"#e":["x"]})).unwrap();
        assert_eq!(f.limit, Some(5));
        assert_eq!(f.tags[&'e'], vec!["x".to_string()]);
    }
}
