//! Byte encodings of the tables: indexed tag values, and the mapping of Nostr's u64
//! timestamps onto PostgreSQL's BIGINT. (Addresses of replaceable/addressable events are
//! keyed as every backend keys them: [`mls_store::address`].)

use mls_proto::{Event, Hex32};
use mls_store::{StoreError, StoreResult};
use sha2::{Digest, Sha256};

/// Tag values up to this many bytes are indexed as they are; longer ones by their sha256, so
/// an over-long value can neither break an insert (btree rows are limited to ~2.7 KB) nor
/// bloat the index.
const TAG_INLINE_MAX: usize = 200;
/// Marks a hashed tag value. UTF-8 text never contains the byte 0xff, so a hashed value can
/// never equal an inline one.
const TAG_HASHED: u8 = 0xff;

/// How a tag value is stored in `event_tags.value` and looked up by a filter.
pub(crate) fn tag_value(value: &str) -> Vec<u8> {
    let v = value.as_bytes();
    if v.len() <= TAG_INLINE_MAX {
        v.to_vec()
    } else {
        let mut k = Vec::with_capacity(33);
        k.push(TAG_HASHED);
        k.extend_from_slice(&Sha256::digest(v));
        k
    }
}

/// The single-letter tags an event is indexed under (NIP-01 indexes only those), without
/// repeats, values encoded by [`tag_value`].
pub(crate) fn indexed_tags(ev: &Event) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = ev
        .tags
        .iter()
        .filter_map(|t| {
            let name = t.first()?;
            let value = t.get(1)?;
            let b = name.as_bytes();
            (b.len() == 1 && b[0].is_ascii_alphabetic()).then(|| (name.clone(), tag_value(value)))
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Timestamps are u64 in Nostr and BIGINT here: values beyond i64::MAX (year 292e9) are
/// clamped. Order is kept; only such absurd values become indistinguishable.
pub(crate) fn ts(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn from_ts(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The smallest byte string greater than every string starting with `prefix` (`None`: no
/// upper bound), for prefix scans as ranges an index can serve.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A 32-byte key (event id, pubkey) read back from a BYTEA column; `what` names the column in
/// the error.
pub(crate) fn hex32(bytes: &[u8], what: &str) -> StoreResult<Hex32> {
    <[u8; 32]>::try_from(bytes)
        .map(Hex32)
        .map_err(|_| StoreError::Corrupt(format!("{what}: not 32 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_tag_values_are_hashed_and_never_equal_an_inline_value() {
        assert_eq!(tag_value("abc"), b"abc");
        let long = tag_value(&"x".repeat(1000));
        assert_eq!(long.len(), 33);
        assert_eq!(long[0], 0xff);
        assert_ne!(long, tag_value(&"x".repeat(1001)));
    }

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn timestamps_clamp_and_keep_order() {
        assert_eq!(ts(5), 5);
        assert_eq!(ts(u64::MAX), i64::MAX);
        assert_eq!(from_ts(ts(1_700_000_000)), 1_700_000_000);
    }
}
