//! The document model: how events, gateway state and tombstones are laid out as Firestore
//! documents (docs/FIRESTORE.md explains the choices against Firestore's limits).
//!
//! Collections under the database's root:
//! - `events/{id}`: one per stored event. `json` (the event as served, not indexed), `pubkey`,
//!   `kind`, `tags` (`"x:value"` for every single-letter tag, so one `array-contains` answers
//!   `#x`), `order_key` (newest first, ties lowest id first: the order of results and the
//!   only range a query needs), `asc_key` (oldest first, ties lowest id: the backup order),
//!   `seq` (commit order), `received_at`, `expires_at` and `addr` (replaceable/addressable
//!   events) when they apply, and `audience` (who may read it: each read key in hex, see
//!   [`audience_entries`]; a read's scope is an `array-contains-any` on it).
//! - `state/{hex key}`: one per gateway state key, `k` (the hex key, for ordered prefix
//!   scans) and `v` (bytes).
//! - `tomb_ids/{event id}`: the pubkeys that deleted that id (`deleters`).
//! - `tomb_addrs/{hex address}`: an address tombstone (`kind`, `pubkey`, `d`, `until`).
//! - `meta/store`: `last_seq`, the commit stream's position, and `version`, the commit
//!   counter (see the writer).
//!
//! Keys are hex so that string order is byte order (and document ids stay valid UTF-8 with no
//! `/`). Numbers are int64 (Nostr's u64 times are clamped, as the PostgreSQL backend does).

use googleapis_tonic_google_firestore_v1::google::firestore::v1::{
    value::ValueType, ArrayValue, Document, Value,
};
use mls_proto::{Event, Hex32};
use mls_store::address::Address;
use mls_store::{Audience, ReadKey, ReadScope, StoreError, StoreResult, StoredEvent};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) const EVENTS: &str = "events";
pub(crate) const STATE: &str = "state";
pub(crate) const TOMB_IDS: &str = "tomb_ids";
pub(crate) const TOMB_ADDRS: &str = "tomb_addrs";
pub(crate) const META: &str = "meta";
pub(crate) const META_DOC: &str = "store";

/// Firestore's largest document (1 MiB), as its storage-size rules count it.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub(crate) fn string(s: impl Into<String>) -> Value {
    Value {
        value_type: Some(ValueType::StringValue(s.into())),
    }
}

pub(crate) fn integer(v: i64) -> Value {
    Value {
        value_type: Some(ValueType::IntegerValue(v)),
    }
}

pub(crate) fn bytes(v: Vec<u8>) -> Value {
    Value {
        value_type: Some(ValueType::BytesValue(v)),
    }
}

pub(crate) fn array(values: Vec<Value>) -> Value {
    Value {
        value_type: Some(ValueType::ArrayValue(ArrayValue { values })),
    }
}

/// Nostr's u64 times as int64 (clamped; order is kept).
pub(crate) fn ts(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn from_ts(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Typed access to a fetched document's fields, with errors naming the document.
pub(crate) struct Fields<'a>(pub &'a Document);

impl Fields<'_> {
    fn corrupt(&self, field: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "{}: field {field} missing or mistyped",
            self.0.name
        ))
    }

    pub fn str(&self, field: &str) -> StoreResult<&str> {
        match self.0.fields.get(field).and_then(|v| v.value_type.as_ref()) {
            Some(ValueType::StringValue(s)) => Ok(s),
            _ => Err(self.corrupt(field)),
        }
    }

    pub fn int(&self, field: &str) -> StoreResult<i64> {
        self.opt_int(field)?.ok_or_else(|| self.corrupt(field))
    }

    pub fn opt_int(&self, field: &str) -> StoreResult<Option<i64>> {
        match self.0.fields.get(field).and_then(|v| v.value_type.as_ref()) {
            None | Some(ValueType::NullValue(_)) => Ok(None),
            Some(ValueType::IntegerValue(v)) => Ok(Some(*v)),
            // The emulator (JavaScript) may hand back a whole number as a double.
            Some(ValueType::DoubleValue(v)) if v.fract() == 0.0 => Ok(Some(*v as i64)),
            _ => Err(self.corrupt(field)),
        }
    }

    pub fn bytes(&self, field: &str) -> StoreResult<Vec<u8>> {
        match self.0.fields.get(field).and_then(|v| v.value_type.as_ref()) {
            Some(ValueType::BytesValue(b)) => Ok(b.clone()),
            _ => Err(self.corrupt(field)),
        }
    }

    pub fn strings(&self, field: &str) -> StoreResult<Vec<String>> {
        match self.0.fields.get(field).and_then(|v| v.value_type.as_ref()) {
            None => Ok(Vec::new()),
            Some(ValueType::ArrayValue(a)) => a
                .values
                .iter()
                .map(|v| match &v.value_type {
                    Some(ValueType::StringValue(s)) => Ok(s.clone()),
                    _ => Err(self.corrupt(field)),
                })
                .collect(),
            _ => Err(self.corrupt(field)),
        }
    }
}

/// The last path segment of a document name (its id).
pub(crate) fn doc_id(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

/// `order_key`: newest first, ties lowest id first, as one ascending string.
pub(crate) fn order_key(created_at: u64, id: &Hex32) -> String {
    format!("{:016x}{id}", u64::MAX - created_at)
}

/// The first `order_key` of events created at `created_at` (any id).
pub(crate) fn order_key_at(created_at: u64) -> String {
    format!("{:016x}", u64::MAX - created_at)
}

/// `asc_key`: oldest first, ties lowest id first (the backup order).
pub(crate) fn asc_key(created_at: u64, id: &Hex32) -> String {
    format!("{:016x}{id}", created_at)
}

/// The `tags` entries of an event: `"x:value"` for each single-letter tag, without repeats.
pub(crate) fn tag_entries(ev: &Event) -> Vec<String> {
    let mut out: Vec<String> = ev
        .tags
        .iter()
        .filter_map(|t| {
            let name = t.first()?;
            let value = t.get(1)?;
            let b = name.as_bytes();
            (b.len() == 1 && b[0].is_ascii_alphabetic()).then(|| format!("{name}:{value}"))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The address key of a replaceable or addressable event, hex (the `addr` field and the
/// `tomb_addrs` document id): [`mls_store::address`]'s bytes.
pub(crate) fn event_addr(ev: &Event) -> Option<String> {
    Address::of(ev).map(|a| hex::encode(a.key))
}

/// The marker an audience holding any group key also carries, so that a scope that admits
/// every group (`ReadScope::any_group`) is one more `array-contains-any` value.
pub(crate) const ANY_GROUP: &str = "group";

/// An audience as the `audience` field: each read key's bytes in hex, plus [`ANY_GROUP`]
/// when it names a group.
pub(crate) fn audience_entries(audience: &Audience) -> Vec<String> {
    let mut out: Vec<String> = audience.key_bytes().iter().map(hex::encode).collect();
    if audience
        .keys()
        .iter()
        .any(|k| matches!(k, ReadKey::Group(_)))
    {
        out.push(ANY_GROUP.into());
    }
    out
}

pub(crate) fn audience_value(audience: &Audience) -> Value {
    array(audience_entries(audience).into_iter().map(string).collect())
}

/// The `audience` values a read in `scope` may match; `None`: every event.
pub(crate) fn scope_entries(scope: &ReadScope) -> Option<Vec<String>> {
    let keys = scope.keys()?;
    let mut out: Vec<String> = keys.iter().map(|k| hex::encode(k.to_bytes())).collect();
    if scope.any_group() {
        out.push(ANY_GROUP.into());
    }
    out.sort_unstable();
    out.dedup();
    Some(out)
}

/// An event as a document's fields.
pub(crate) fn event_fields(
    ev: &Event,
    json: &str,
    seq: i64,
    received_at: u64,
    expires_at: Option<u64>,
) -> HashMap<String, Value> {
    let mut f = HashMap::with_capacity(10);
    f.insert("json".into(), string(json));
    f.insert("pubkey".into(), string(ev.pubkey.to_hex()));
    f.insert("kind".into(), integer(i64::from(ev.kind)));
    f.insert("order_key".into(), string(order_key(ev.created_at, &ev.id)));
    f.insert("asc_key".into(), string(asc_key(ev.created_at, &ev.id)));
    f.insert(
        "tags".into(),
        array(tag_entries(ev).into_iter().map(string).collect()),
    );
    f.insert("seq".into(), integer(seq));
    f.insert("received_at".into(), integer(ts(received_at)));
    if let Some(t) = expires_at {
        f.insert("expires_at".into(), integer(ts(t)));
    }
    if let Some(addr) = event_addr(ev) {
        f.insert("addr".into(), string(addr));
    }
    f
}

/// An event read back from its document.
pub(crate) fn stored_event(doc: &Document) -> StoreResult<(i64, StoredEvent)> {
    let f = Fields(doc);
    let json = f.str("json")?;
    let event: Event = serde_json::from_str(json)
        .map_err(|e| StoreError::Corrupt(format!("{}: event JSON: {e}", doc.name)))?;
    Ok((
        f.int("seq")?,
        StoredEvent {
            event,
            json: Arc::from(json),
            received_at: from_ts(f.int("received_at")?),
            expires_at: f.opt_int("expires_at")?.map(from_ts),
        },
    ))
}

/// Firestore's storage size of a document (its name, then each field's name + value, plus
/// 32 bytes), as its documentation counts it: what the 1 MiB limit applies to.
pub(crate) fn document_size(name: &str, fields: &HashMap<String, Value>) -> usize {
    fn value_size(v: &Value) -> usize {
        match &v.value_type {
            Some(ValueType::StringValue(s)) => s.len() + 1,
            Some(ValueType::BytesValue(b)) => b.len(),
            Some(ValueType::ArrayValue(a)) => a.values.iter().map(value_size).sum(),
            Some(ValueType::MapValue(m)) => m
                .fields
                .iter()
                .map(|(k, v)| k.len() + 1 + value_size(v))
                .sum(),
            _ => 8,
        }
    }
    // A document name counts each path segment's string size, plus 16.
    let name_size: usize = name
        .split("/documents/")
        .nth(1)
        .unwrap_or(name)
        .split('/')
        .map(|s| s.len() + 1)
        .sum::<usize>()
        + 16;
    name_size
        + fields
            .iter()
            .map(|(k, v)| k.len() + 1 + value_size(v))
            .sum::<usize>()
        + 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_key_sorts_newest_first_then_lowest_id() {
        let (a, b) = (Hex32([1; 32]), Hex32([2; 32]));
        assert!(order_key(20, &a) < order_key(10, &a));
        assert!(order_key(10, &a) < order_key(10, &b));
        assert!(order_key_at(10) < order_key(10, &a));
        assert!(order_key(10, &b) < order_key_at(9));
        assert!(asc_key(10, &b) < asc_key(20, &a));
    }

    #[test]
    fn audiences_and_scopes_share_entries() {
        let pk = Hex32([3; 32]);
        let group = Audience::new(vec![ReadKey::Group("g".into()), ReadKey::Admins]);
        let entries = audience_entries(&group);
        assert!(entries.contains(&ANY_GROUP.to_string()));
        let admin = ReadScope::holding(vec![ReadKey::Admins], false);
        let member = ReadScope::holding(vec![ReadKey::Group("g".into())], false);
        let stranger = ReadScope::holding(vec![ReadKey::Pubkey(pk)], false);
        let any_group = ReadScope::holding(Vec::new(), true);
        let shares = |scope: &ReadScope| {
            scope_entries(scope)
                .unwrap()
                .iter()
                .any(|e| entries.contains(e))
        };
        assert!(shares(&admin) && shares(&member) && shares(&any_group));
        assert!(!shares(&stranger));
        assert_eq!(scope_entries(&ReadScope::everything()), None);
    }

    #[test]
    fn document_size_counts_names_and_values() {
        let mut f = HashMap::new();
        f.insert("json".to_string(), string("x".repeat(100)));
        // "events" + "abc" segments: 7 + 4 + 16; "json": 5 + 101; + 32.
        assert_eq!(
            document_size("projects/p/databases/d/documents/events/abc", &f),
            7 + 4 + 16 + 5 + 101 + 32
        );
    }
}
