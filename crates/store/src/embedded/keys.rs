//! Byte layouts of the LMDB keys and records.
//!
//! Every time-ordered index key ends with the same 16-byte suffix: `u64::MAX - created_at`
//! (big-endian) then the event's `seq`. LMDB sorts keys bytewise, so a forward cursor walks
//! newest first, and within one second in commit order: the events of a burst (which share
//! their second) go side by side into the page or two where the newest are, not each to a
//! random page of the index, as they did when the suffix ended with the id. NIP-01's order
//! for ties (lowest id first) is restored by the reads, which gather each second's entries
//! (the id is in every entry's value) before taking them — see `query`.

use crate::address::{Address, D_INLINE_MAX};
use crate::audience::is_group_key;
use mls_proto::{Event, Hex32};
use sha2::{Digest, Sha256};

pub(super) const ID_LEN: usize = 32;
/// `rev(created_at) ++ seq`.
pub(super) const SUFFIX_LEN: usize = 8 + 8;
/// Value of every time-ordered index entry: `kind ++ pubkey ++ id`, so a query can reject a
/// candidate on kind or author without reading (and parsing) the event record, and put a
/// second's entries in id order; the key's `seq` finds the record (`events` is keyed by it).
pub(super) const META_LEN: usize = 2 + 32 + ID_LEN;

/// Tag values up to this many bytes are stored in the key as they are; longer ones are
/// replaced by their sha256 (keys must stay under LMDB's 511-byte limit).
const TAG_INLINE_MAX: usize = 200;
/// Length byte marking a hashed tag value (never a real inline length).
const TAG_HASHED: u8 = 0xff;

pub(super) fn rev(ts: u64) -> [u8; 8] {
    (u64::MAX - ts).to_be_bytes()
}

pub(super) fn suffix(created_at: u64, seq: u64) -> [u8; SUFFIX_LEN] {
    let mut out = [0u8; SUFFIX_LEN];
    out[..8].copy_from_slice(&rev(created_at));
    out[8..].copy_from_slice(&seq.to_be_bytes());
    out
}

/// `created_at` and `seq` back from the last [`SUFFIX_LEN`] bytes of an index key.
pub(super) fn split_suffix(key: &[u8]) -> Option<(u64, u64)> {
    let s = key.get(key.len().checked_sub(SUFFIX_LEN)?..)?;
    Some((u64::MAX - u64_at(s, 0), u64_at(s, 8)))
}

pub(super) fn meta(ev: &Event) -> [u8; META_LEN] {
    let mut out = [0u8; META_LEN];
    out[..2].copy_from_slice(&ev.kind.to_be_bytes());
    out[2..34].copy_from_slice(&ev.pubkey.0);
    out[34..].copy_from_slice(&ev.id.0);
    out
}

/// Kind, pubkey and id of an index entry's value.
pub(super) fn split_meta(value: &[u8]) -> Option<(u16, &[u8], Hex32)> {
    let value = <&[u8; META_LEN]>::try_from(value).ok()?;
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&value[34..]);
    Some((
        u16::from_be_bytes([value[0], value[1]]),
        &value[2..34],
        Hex32(id),
    ))
}

fn with_suffix(prefix: &[u8], created_at: u64, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + SUFFIX_LEN);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&suffix(created_at, seq));
    k
}

pub(super) fn kind_prefix(kind: u16) -> Vec<u8> {
    kind.to_be_bytes().to_vec()
}

pub(super) fn author_kind_prefix(pubkey: &Hex32, kind: u16) -> Vec<u8> {
    prefix_with_kind(&pubkey.0, kind)
}

/// `letter ++ len ++ value`, or `letter ++ 0xff ++ sha256(value)` for long values. The length
/// byte makes the prefix exact: value "ab" never matches an entry for "abc".
pub(super) fn tag_prefix(letter: u8, value: &str) -> Vec<u8> {
    let v = value.as_bytes();
    let mut k = Vec::with_capacity(2 + v.len().min(TAG_INLINE_MAX.max(32)));
    k.push(letter);
    if v.len() <= TAG_INLINE_MAX {
        k.push(v.len() as u8);
        k.extend_from_slice(v);
    } else {
        k.push(TAG_HASHED);
        k.extend_from_slice(&Sha256::digest(v));
    }
    k
}

/// The single-letter tags an event is indexed under (NIP-01 indexes only those), without
/// repeats.
pub(super) fn indexed_tags(ev: &Event) -> Vec<(u8, &str)> {
    let mut out: Vec<(u8, &str)> = ev
        .tags
        .iter()
        .filter_map(|t| {
            let name = t.first()?.as_bytes();
            let value = t.get(1)?;
            (name.len() == 1 && name[0].is_ascii_alphabetic()).then(|| (name[0], value.as_str()))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every time-ordered index key of `ev`, stored under `seq` and read by `audience` (its read
/// keys' bytes), as (index, key): what storing `ev` writes and removing it deletes.
pub(super) fn index_keys<K: AsRef<[u8]>>(
    ev: &Event,
    seq: u64,
    audience: &[K],
) -> Vec<(Index, Vec<u8>)> {
    let (ca, id) = (ev.created_at, seq);
    let mut keys = vec![
        (Index::Created, suffix(ca, id).to_vec()),
        (Index::Kind, with_suffix(&kind_prefix(ev.kind), ca, id)),
        (
            Index::AuthorKind,
            with_suffix(&author_kind_prefix(&ev.pubkey, ev.kind), ca, id),
        ),
    ];
    for (letter, value) in indexed_tags(ev) {
        keys.push((Index::Tag, with_suffix(&tag_prefix(letter, value), ca, id)));
    }
    keys.extend(audience_index_keys(ca, seq, ev.kind, audience));
    keys
}

/// Prefix of the `audience_kind` entries that list every group's events together (in place
/// of a read key: no [`crate::ReadKey`]'s bytes start with it), for a scope that holds every
/// group: each group's own entries sit apart, so no walk of them is newest first across
/// groups.
pub(super) const EVERY_GROUP: u8 = 5;

/// The audience index entries of `ev` (see [`crate::audience`]): one per read key in
/// `audience` (key bytes as [`crate::ReadKey::to_bytes`] makes them) and kind, so that a read
/// walks only what its scope holds, and one under [`EVERY_GROUP`] and kind when a group reads
/// it. A read of every kind under a key walks each kind found there (see `query`).
pub(super) fn audience_index_keys<K: AsRef<[u8]>>(
    created_at: u64,
    seq: u64,
    kind: u16,
    audience: &[K],
) -> Vec<(Index, Vec<u8>)> {
    let mut out: Vec<_> = audience
        .iter()
        .map(|key| {
            let prefix = prefix_with_kind(key.as_ref(), kind);
            (Index::AudienceKind, with_suffix(&prefix, created_at, seq))
        })
        .collect();
    if audience.iter().any(|key| is_group_key(key.as_ref())) {
        out.push((Index::AudienceKind, every_group_key(created_at, seq, kind)));
    }
    out
}

/// The [`EVERY_GROUP`] entry's key of an event a group reads.
pub(super) fn every_group_key(created_at: u64, seq: u64, kind: u16) -> Vec<u8> {
    with_suffix(&prefix_with_kind(&[EVERY_GROUP], kind), created_at, seq)
}

/// `prefix ++ kind`: the prefixes of `author_kind` (a pubkey) and `audience_kind` (a read
/// key).
pub(super) fn prefix_with_kind(prefix: &[u8], kind: u16) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 2);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&kind.to_be_bytes());
    k
}

/// The audience part of an event record: each read key's bytes after a 2-byte length.
pub(super) fn encode_audience(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::with_capacity(keys.iter().map(|k| k.len() + 2).sum());
    for k in keys {
        v.extend_from_slice(&(k.len() as u16).to_be_bytes());
        v.extend_from_slice(k);
    }
    v
}

/// The read keys of [`encode_audience`]'s bytes, borrowed from them.
pub(super) fn decode_audience(mut v: &[u8]) -> Option<Vec<&[u8]>> {
    let mut keys = Vec::new();
    while !v.is_empty() {
        let len = u16::from_be_bytes(v.get(..2)?.try_into().ok()?) as usize;
        keys.push(v.get(2..2 + len)?);
        v = &v[2 + len..];
    }
    Some(keys)
}

/// The time-ordered indexes (all keyed `prefix ++ rev(created_at) ++ seq`). Reads by author
/// alone, or by read key alone, walk `AuthorKind` or `AudienceKind` once per kind found
/// under the author or key: a second index per event for those reads would cost every
/// write one more B-tree entry at a random place (a page written per event), for reads that
/// seldom span more than a few kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Index {
    Created,
    Kind,
    /// Prefix: a pubkey and a kind.
    AuthorKind,
    Tag,
    /// Prefix: a read key (or [`EVERY_GROUP`]) and a kind.
    AudienceKind,
}

impl Index {
    pub(super) const ALL: [Index; 5] = [
        Index::Created,
        Index::Kind,
        Index::AuthorKind,
        Index::Tag,
        Index::AudienceKind,
    ];
}

/// `expires_at ++ seq`, no value: oldest expiry first, so a purge walks from the start up
/// to `now` and goes straight to each record; within one second in commit order, so the
/// events of one batch (which mostly share their expiry second) go side by side into a page
/// or two instead of one page each at random.
pub(super) fn expiry_key(expires_at: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The `seq` an expiry entry points at.
pub(super) fn expiry_entry_seq(key: &[u8]) -> Option<u64> {
    split_seq(key.get(8..)?)
}

/// The address key of a replaceable or addressable event (see [`crate::address`]).
pub(super) fn event_addr_key(ev: &Event) -> Option<Vec<u8>> {
    Address::of(ev).map(|a| a.key)
}

/// Value of an address tombstone: `until` (the newest deleted `created_at`), followed by `d`
/// when the key holds only its hash, so that a backup can still name the address.
pub(super) fn tomb_addr_value(until: u64, d: &str) -> Vec<u8> {
    let mut v = until.to_be_bytes().to_vec();
    if d.len() > D_INLINE_MAX {
        v.extend_from_slice(d.as_bytes());
    }
    v
}

/// `until` and the `d` carried in an address tombstone's value (empty when inline in the key).
pub(super) fn split_tomb_addr_value(v: &[u8]) -> Option<(u64, &[u8])> {
    Some((u64::from_be_bytes(v.get(..8)?.try_into().ok()?), &v[8..]))
}

/// Value of the address table: `created_at ++ id` of the stored version, so a newer/older
/// decision needs no record read.
pub(super) fn addr_value(created_at: u64, id: &Hex32) -> [u8; 8 + ID_LEN] {
    let mut v = [0u8; 8 + ID_LEN];
    v[..8].copy_from_slice(&created_at.to_be_bytes());
    v[8..].copy_from_slice(&id.0);
    v
}

pub(super) fn split_addr_value(v: &[u8]) -> Option<(u64, Hex32)> {
    if v.len() != 8 + ID_LEN {
        return None;
    }
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&v[..8]);
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&v[8..]);
    Some((u64::from_be_bytes(ts), Hex32(id)))
}

/// `id ++ deleter`: one id may be tombstoned by several deleters, and whether a tombstone
/// blocks a later submission depends on who wrote it.
pub(super) fn tomb_id_key(id: &Hex32, deleter: &Hex32) -> [u8; 64] {
    let mut k = [0u8; 64];
    k[..32].copy_from_slice(&id.0);
    k[32..].copy_from_slice(&deleter.0);
    k
}

/// The record layout of schema 3 (1 and 2, keyed by id, are read by `upgrade` alone).
const RECORD_V3: u8 = 3;
/// `version ++ flags ++ received_at ++ expires_at ++ audience length`.
const HEADER_LEN: usize = 1 + 1 + 8 + 8 + 4;

/// An event record, stored under its `seq`: `3 ++ flags ++ received_at ++ expires_at ++
/// audience length (u32) ++ audience ++ json`. The audience is its read keys as
/// [`encode_audience`] lays them out (a read checks its scope against them before parsing
/// anything); the JSON is the event serialised once at write time and served as is.
pub(super) fn encode_record(
    received_at: u64,
    expires_at: Option<u64>,
    audience: &[u8],
    json: &str,
) -> Vec<u8> {
    let mut r = Vec::with_capacity(HEADER_LEN + audience.len() + json.len());
    r.push(RECORD_V3);
    r.push(u8::from(expires_at.is_some()));
    r.extend_from_slice(&received_at.to_be_bytes());
    r.extend_from_slice(&expires_at.unwrap_or(0).to_be_bytes());
    r.extend_from_slice(&(audience.len() as u32).to_be_bytes());
    r.extend_from_slice(audience);
    r.extend_from_slice(json.as_bytes());
    r
}

/// A record read in place, JSON not yet parsed.
pub(super) struct RawRecord<'a> {
    pub received_at: u64,
    pub expires_at: Option<u64>,
    /// The read keys, as [`encode_audience`] lays them out (see [`decode_audience`]).
    pub audience: &'a [u8],
    pub json: &'a str,
}

pub(super) fn decode_record(bytes: &[u8]) -> Result<RawRecord<'_>, String> {
    if bytes.first() != Some(&RECORD_V3) || bytes.len() < HEADER_LEN {
        return Err("event record header".into());
    }
    let audience_len = u32::from_be_bytes(bytes[18..22].try_into().expect("4 bytes")) as usize;
    let Some(audience) = bytes.get(HEADER_LEN..HEADER_LEN + audience_len) else {
        return Err("event record audience".into());
    };
    let json = std::str::from_utf8(&bytes[HEADER_LEN + audience_len..])
        .map_err(|_| "event record JSON is not UTF-8".to_string())?;
    Ok(RawRecord {
        received_at: u64_at(bytes, 2),
        expires_at: (bytes[1] & 1 == 1).then(|| u64_at(bytes, 10)),
        audience,
        json,
    })
}

/// The big-endian u64 at `bytes[i..i + 8]` (the caller checked the length).
pub(super) fn u64_at(bytes: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"))
}

/// A `seq` as the `events` key and the `ids` value hold it.
pub(super) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// A `seq` back from an `events` key or an `ids` value.
pub(super) fn split_seq(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Key of the last commit sequence number handed out, in `meta`.
pub(super) const LAST_SEQ: &[u8] = b"last_seq";

/// The last commit sequence number handed out (0: none yet).
pub(super) fn last_seq(txn: &heed::RoTxn<'_>, dbs: &super::Dbs) -> crate::StoreResult<u64> {
    let v = dbs
        .meta
        .get(txn, LAST_SEQ)
        .map_err(super::backend("read last_seq"))?;
    match v {
        None => Ok(0),
        Some(b) => b
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| crate::StoreError::Corrupt("meta last_seq".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_orders_newest_first_then_by_commit() {
        let a = suffix(10, 1);
        let b = suffix(10, 2);
        let c = suffix(11, 9);
        assert!(c < a && a < b);
        assert_eq!(split_suffix(&a), Some((10, 1)));
        assert_eq!(split_suffix(&[&b"prefix"[..], &a].concat()), Some((10, 1)));
        assert_eq!(split_suffix(&a[1..]), None);
    }

    #[test]
    fn tag_prefixes_are_exact_and_long_values_hashed() {
        let ab = tag_prefix(b'h', "ab");
        let abc = tag_prefix(b'h', "abc");
        assert!(!abc.starts_with(&ab));
        let long = "x".repeat(1000);
        assert_eq!(tag_prefix(b'h', &long).len(), 2 + 32);
    }

    #[test]
    fn audience_records_round_trip() {
        let keys = vec![vec![0], vec![3; 33], vec![4; 256]];
        let bytes = encode_audience(&keys);
        let back: Vec<Vec<u8>> = decode_audience(&bytes)
            .unwrap()
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(back, keys);
        assert_eq!(decode_audience(&[]), Some(Vec::new()));
        assert_eq!(decode_audience(&[0, 5, 1]), None);
    }

    #[test]
    fn records_round_trip() {
        let audience = encode_audience(&[vec![1, 2], vec![3]]);
        let r = encode_record(5, Some(7), &audience, "{}");
        let d = decode_record(&r).unwrap();
        assert_eq!(
            (d.received_at, d.expires_at, d.audience, d.json),
            (5, Some(7), &audience[..], "{}")
        );
        let r = encode_record(5, None, &[], "{\"a\":1}");
        let d = decode_record(&r).unwrap();
        assert_eq!(
            (d.expires_at, d.audience, d.json),
            (None, &[][..], "{\"a\":1}")
        );
        assert!(
            decode_record(&[2; 40]).is_err(),
            "a record of another schema"
        );
        assert!(decode_record(&[3; 20]).is_err(), "header cut short");
        let mut cut = r.clone();
        cut[21] = 9; // audience longer than the record
        assert!(decode_record(&cut).is_err());
    }

    #[test]
    fn index_values_carry_kind_pubkey_and_id() {
        let k = secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng());
        let ev = Event::sign(&k, 1, 7, vec![], "");
        let m = meta(&ev);
        assert_eq!(split_meta(&m), Some((7, &ev.pubkey.0[..], ev.id)));
        assert_eq!(split_meta(&m[..34]), None, "a schema 2 value");
        assert_eq!(split_meta(&m[..42]), None, "a schema 4 value");
    }

    #[test]
    fn expiry_entries_sort_by_expiry_then_seq() {
        assert_eq!(expiry_entry_seq(&expiry_key(5, 9)), Some(9));
        assert!(expiry_key(5, 9) < expiry_key(5, 10));
        assert!(expiry_key(5, u64::MAX) < expiry_key(6, 0));
    }

    #[test]
    fn long_d_tags_are_kept_in_the_tombstone_value() {
        let long = "d".repeat(D_INLINE_MAX + 1);
        let v = tomb_addr_value(9, &long);
        assert_eq!(split_tomb_addr_value(&v), Some((9, long.as_bytes())));
        assert_eq!(
            split_tomb_addr_value(&tomb_addr_value(9, "x")),
            Some((9, &b""[..]))
        );
    }
}
