//! The document model: how events, gateway state and tombstones are laid out as Firestore
//! documents (docs/FIRESTORE.md explains the choices against Firestore's limits).
//!
//! Collections under the database's root:
//! - `events/{id}`: one per stored event. `json` (the event as served, not indexed), `pubkey`,
//!   `kind`, `tags` (`"x:value"` for every single-letter tag, so one `array-contains` answers
//!   `#x`), `order_key` (newest first, ties lowest id first: the order of results and the
//!   only range a query needs), `asc_key` (oldest first, ties lowest id: the backup order),
//!   `seq` (commit order), `received_at`, `expires_at` and `addr` (replaceable/addressable
//!   events) when they apply.
//! - `state/{hex key}`: one per gateway state key, `k` (the hex key, for ordered prefix
//!   scans) and `v` (bytes).
//! - `tomb_ids/{event id}`: the pubkeys that deleted that id (`deleters`).
//! - `tomb_addrs/{hex address}`: an address tombstone (`kind`, `pubkey`, `d`, `until`).
//! - `meta/store`: `last_seq`, the commit stream's position (see the writer).
//!
//! Keys are hex so that string order is byte order (and document ids stay valid UTF-8 with no
//! `/`). Numbers are int64 (Nostr's u64 times are clamped, as the PostgreSQL backend does).

use googleapis_tonic_google_firestore_v1::google::firestore::v1::{
    value::ValueType, ArrayValue, Document, Value,
};
use mls_proto::{Event, Hex32, KindClass};
use mls_store::{StoreError, StoreResult, StoredEvent};
use sha2::{Digest, Sha256};
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
/// `d` values up to this many bytes are kept in the address as they are (else their sha256).
const D_INLINE_MAX: usize = 300;

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

/// `kind ++ pubkey ++ (0x00 ++ d | 0x01 ++ sha256(d))`, hex. Replaceable kinds always use an
/// empty `d` (their address is kind:pubkey).
pub(crate) fn addr_key(kind: u16, pubkey: &Hex32, d: &str) -> String {
    let d = if KindClass::of(kind) == KindClass::Addressable {
        d.as_bytes()
    } else {
        b""
    };
    let mut k = Vec::with_capacity(35 + d.len().min(D_INLINE_MAX));
    k.extend_from_slice(&kind.to_be_bytes());
    k.extend_from_slice(&pubkey.0);
    if d.len() <= D_INLINE_MAX {
        k.push(0);
        k.extend_from_slice(d);
    } else {
        k.push(1);
        k.extend_from_slice(&Sha256::digest(d));
    }
    hex::encode(k)
}

/// The address of a replaceable or addressable event.
pub(crate) fn event_addr(ev: &Event) -> Option<String> {
    match ev.class() {
        KindClass::Replaceable | KindClass::Addressable => {
            Some(addr_key(ev.kind, &ev.pubkey, ev.d_tag()))
        }
        _ => None,
    }
}

/// An `a` tag's address, parsed.
pub(crate) struct Address<'a> {
    pub kind: u16,
    pub owner: Hex32,
    /// Empty for replaceable kinds (their address ignores `d`).
    pub d: &'a str,
    pub key: String,
}

/// Parses an `a` tag value `kind:pubkey:d`; `None` for anything that is not a replaceable or
/// addressable address.
pub(crate) fn parse_a_tag(value: &str) -> Option<Address<'_>> {
    let mut parts = value.splitn(3, ':');
    let kind: u16 = parts.next()?.parse().ok()?;
    let owner = Hex32::from_hex(parts.next()?)?;
    let d = match KindClass::of(kind) {
        KindClass::Replaceable => "",
        KindClass::Addressable => parts.next().unwrap_or(""),
        _ => return None,
    };
    Some(Address {
        kind,
        owner,
        d,
        key: addr_key(kind, &owner, d),
    })
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
    fn a_tags_parse_only_addresses() {
        let pk = Hex32([3; 32]);
        let tag = format!("30000:{pk}:x:y");
        let a = parse_a_tag(&tag).unwrap();
        assert_eq!((a.kind, a.owner, a.d), (30000, pk, "x:y"));
        assert_eq!(a.key, addr_key(30000, &pk, "x:y"));
        let tag = format!("10002:{pk}:x");
        let r = parse_a_tag(&tag).unwrap();
        assert_eq!((r.d, r.key), ("", addr_key(10002, &pk, "")));
        assert!(parse_a_tag(&format!("1:{pk}:")).is_none());
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
