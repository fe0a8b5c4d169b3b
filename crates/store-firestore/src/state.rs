//! The gateway's key/value state (collection `state`, one document per key) behind the
//! synchronous [`StateRead`] / [`StateWrite`] the rules use: a read view of what is committed
//! (queries, REST, live fan-out) and the reads of the writer's transaction.
//!
//! Both block the calling thread on the store's runtime (see [`crate::Io`]).

use crate::client::{Client, RpcResult};
use crate::model::{bytes, string, Fields, STATE};
use crate::query::{cond, structured, Op};
use crate::Io;
use googleapis_tonic_google_firestore_v1::google::firestore::v1::{Document, Value};
use mls_store::{StateRead, StoreResult, MAX_STATE_KEY_LEN};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;

/// Documents fetched per round trip of a prefix scan.
pub(crate) const SCAN_PAGE: i32 = 256;

pub(crate) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A state key's document id.
pub(crate) fn doc_id(key: &[u8]) -> String {
    hex::encode(key)
}

pub(crate) fn fields(key: &[u8], value: &[u8]) -> HashMap<String, Value> {
    HashMap::from([
        ("k".to_string(), string(hex::encode(key))),
        ("v".to_string(), bytes(value.to_vec())),
    ])
}

pub(crate) fn row(doc: &Document) -> StoreResult<(Vec<u8>, Vec<u8>)> {
    let f = Fields(doc);
    let key = hex::decode(f.str("k")?).map_err(|_| {
        mls_store::StoreError::Corrupt(format!("{}: state key is not hex", doc.name))
    })?;
    Ok((key, f.bytes("v")?))
}

/// The smallest byte string greater than every string starting with `prefix` (`None`: no
/// upper bound).
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

/// Up to [`SCAN_PAGE`] entries of `[from, end)` in key order.
pub(crate) async fn scan_page(
    client: &Client,
    from: Vec<u8>,
    end: Option<Vec<u8>>,
    transaction: Option<&[u8]>,
) -> RpcResult<Rows> {
    let mut conds = vec![cond(
        "k",
        Op::GreaterThanOrEqual,
        string(hex::encode(&from)),
    )];
    if let Some(end) = end {
        conds.push(cond("k", Op::LessThan, string(hex::encode(&end))));
    }
    let docs = client
        .query(
            structured(STATE, conds, Some(("k", false)), Some(SCAN_PAGE)),
            transaction,
        )
        .await?;
    Ok(docs.iter().map(row).collect::<StoreResult<_>>()?)
}

/// Walks `prefix` in key order from the first key `>= from` over the stored entries (fetched
/// a page at a time by `page`, from an inclusive start key) with `buffer` laid on top (a
/// buffered `None` hides a stored key), until `f` returns false.
pub(crate) fn scan_merged(
    prefix: &[u8],
    from: &[u8],
    buffer: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    page: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>) -> StoreResult<Rows>,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> StoreResult<()> {
    let from = from.max(prefix);
    let end = prefix_end(prefix);
    let mut stored: std::vec::IntoIter<(Vec<u8>, Vec<u8>)> = Vec::new().into_iter();
    let mut next_from = Some(from.to_vec());
    let mut next_stored = || -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        if let Some(row) = stored.next() {
            return Ok(Some(row));
        }
        let Some(from) = next_from.take() else {
            return Ok(None);
        };
        let rows = page(from, end.clone())?;
        if rows.len() as i32 == SCAN_PAGE {
            // The smallest key after the last one: the last key with a 0x00 appended.
            let mut after = rows[rows.len() - 1].0.clone();
            after.push(0);
            next_from = Some(after);
        }
        stored = rows.into_iter();
        Ok(stored.next())
    };
    let mut buffered = buffer
        .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .peekable();
    let mut head = next_stored()?;
    loop {
        let take_buffered = match (&head, buffered.peek()) {
            (None, None) => return Ok(()),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((sk, _)), Some((bk, _))) => bk.as_slice() <= sk.as_slice(),
        };
        if take_buffered {
            let Some((bk, bv)) = buffered.next() else {
                return Ok(());
            };
            if head.as_ref().is_some_and(|(sk, _)| sk == bk) {
                head = next_stored()?;
            }
            if let Some(v) = bv {
                if !f(bk, v) {
                    return Ok(());
                }
            }
        } else {
            let Some((sk, sv)) = head.take() else {
                return Ok(());
            };
            if !f(&sk, &sv) {
                return Ok(());
            }
            head = next_stored()?;
        }
    }
}

/// The committed state (what `visible` and `read_state` see). Keys read once are remembered
/// for the life of the view, so a query that checks the same group for many events asks
/// Firestore once.
pub(crate) struct CommittedState<'a> {
    pub io: &'a Io,
    pub client: &'a Client,
    cache: Mutex<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'a> CommittedState<'a> {
    pub fn new(io: &'a Io, client: &'a Client) -> Self {
        CommittedState {
            io,
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl StateRead for CommittedState<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if key.is_empty() || key.len() > MAX_STATE_KEY_LEN {
            return Ok(None);
        }
        if let Some(v) = crate::lock(&self.cache).get(key) {
            return Ok(v.clone());
        }
        let client = self.client.clone();
        let name = client.name(STATE, &doc_id(key));
        let value = self.io.wait(async move {
            let doc = client.get(vec![name], None).await?.pop().flatten();
            Ok(match doc {
                Some(d) => Some(row(&d)?.1),
                None => None,
            })
        })?;
        crate::lock(&self.cache).insert(key.to_vec(), value.clone());
        Ok(value)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let mut page = |start: Vec<u8>, end: Option<Vec<u8>>| {
            let client = self.client.clone();
            self.io
                .wait(async move { Ok(scan_page(&client, start, end, None).await?) })
        };
        scan_merged(prefix, from, &BTreeMap::new(), &mut page, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_string() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn hex_keys_keep_byte_order() {
        let keys: [&[u8]; 4] = [b"", b"a", b"a\x00", b"\xff"];
        for w in keys.windows(2) {
            assert!(w[0] < w[1]);
            assert!(doc_id(w[0]) < doc_id(w[1]));
        }
    }
}
