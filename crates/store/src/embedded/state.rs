//! The gateway's key/value state over an LMDB transaction: a plain read view for queries,
//! and a buffering overlay for the rules running inside the writer's transaction.

use super::{backend, Bytes};
use crate::{StateRead, StateWrite, StoreError, StoreResult};
use heed::{Database, RoTxn, RwTxn};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Longest state key LMDB accepts (its default `MDB_MAXKEYSIZE`).
const MAX_KEY: usize = 511;

/// Read view of the state in one transaction (what `visible` and `read_state` see).
pub(super) struct TxnState<'t> {
    pub txn: &'t RoTxn<'t>,
    pub db: Database<Bytes, Bytes>,
}

impl StateRead for TxnState<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        get(self.txn, self.db, key)
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        scan(self.txn, self.db, prefix, prefix, &BTreeMap::new(), f)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        scan(self.txn, self.db, prefix, from, &BTreeMap::new(), f)
    }
}

fn get(txn: &RoTxn, db: Database<Bytes, Bytes>, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Ok(None); // cannot exist; LMDB would refuse the lookup
    }
    Ok(db
        .get(txn, key)
        .map_err(backend("read state key"))?
        .map(<[u8]>::to_vec))
}

type Entry<'t> = (&'t [u8], &'t [u8]);

/// Walks `prefix` in key order from the first key `>= from` over the committed state with
/// `buffer` laid on top (a buffered `None` hides a stored key).
fn scan(
    txn: &RoTxn,
    db: Database<Bytes, Bytes>,
    prefix: &[u8],
    from: &[u8],
    buffer: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> StoreResult<()> {
    let from = from.max(prefix);
    // An empty prefix cannot go through prefix_iter (LMDB refuses empty keys as bounds).
    let mut stored: Box<dyn Iterator<Item = heed::Result<Entry<'_>>>> = if from.is_empty() {
        Box::new(db.iter(txn).map_err(backend("scan state"))?)
    } else if from == prefix {
        Box::new(db.prefix_iter(txn, prefix).map_err(backend("scan state"))?)
    } else {
        let range = (Bound::Included(from), Bound::Unbounded);
        Box::new(
            db.range(txn, &range)
                .map_err(backend("scan state"))?
                .take_while(|entry| entry.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))),
        )
    };
    let stored_iter = &mut stored;
    let mut buffered = buffer
        .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix));

    let mut next_stored = stored_iter
        .next()
        .transpose()
        .map_err(backend("scan state"))?;
    let mut next_buffered = buffered.next();
    loop {
        let take_buffered = match (next_stored, next_buffered) {
            (None, None) => return Ok(()),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((sk, _)), Some((bk, _))) => bk.as_slice() <= sk,
        };
        if take_buffered {
            let Some((bk, bv)) = next_buffered else {
                return Ok(());
            };
            if next_stored.is_some_and(|(sk, _)| sk == bk.as_slice()) {
                next_stored = stored_iter
                    .next()
                    .transpose()
                    .map_err(backend("scan state"))?;
            }
            next_buffered = buffered.next();
            if let Some(v) = bv {
                if !f(bk, v) {
                    return Ok(());
                }
            }
        } else {
            let Some((sk, sv)) = next_stored else {
                return Ok(());
            };
            next_stored = stored_iter
                .next()
                .transpose()
                .map_err(backend("scan state"))?;
            if !f(sk, sv) {
                return Ok(());
            }
        }
    }
}

/// What the rules write while deciding on one event: buffered in memory over the writer's
/// transaction, and applied only if the rules accept. A refused event thus leaves no trace,
/// while the events before it in the same batch keep theirs.
pub(super) struct Overlay<'t> {
    txn: &'t RoTxn<'t>,
    db: Database<Bytes, Bytes>,
    buffer: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'t> Overlay<'t> {
    pub fn new(txn: &'t RoTxn<'t>, db: Database<Bytes, Bytes>) -> Self {
        Overlay {
            txn,
            db,
            buffer: BTreeMap::new(),
        }
    }

    pub fn into_changes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.buffer
    }
}

/// Writes buffered changes into the transaction.
pub(super) fn apply(
    txn: &mut RwTxn,
    db: Database<Bytes, Bytes>,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> StoreResult<()> {
    for (k, v) in changes {
        match v {
            Some(v) => db.put(txn, &k, &v).map_err(backend("write state key"))?,
            None => {
                db.delete(txn, &k).map_err(backend("delete state key"))?;
            }
        }
    }
    Ok(())
}

fn check_key(key: &[u8]) -> StoreResult<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(StoreError::Backend(format!(
            "state key must be 1 to {MAX_KEY} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

impl StateRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        match self.buffer.get(key) {
            Some(v) => Ok(v.clone()),
            None => get(self.txn, self.db, key),
        }
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        scan(self.txn, self.db, prefix, prefix, &self.buffer, f)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        scan(self.txn, self.db, prefix, from, &self.buffer, f)
    }
}

impl StateWrite for Overlay<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        check_key(key)?;
        self.buffer.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> StoreResult<()> {
        check_key(key)?;
        self.buffer.insert(key.to_vec(), None);
        Ok(())
    }
}
