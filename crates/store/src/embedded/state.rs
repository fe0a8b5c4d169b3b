//! The gateway's key/value state over an LMDB transaction: the read view queries and the
//! rules see (the rules write through [`crate::overlay::Overlay`] on top of it), and the
//! application of accepted changes.

use super::{backend, Bytes};
use crate::overlay::StateChanges;
use crate::{StateRead, StoreResult, MAX_STATE_KEY_LEN};
use heed::{Database, RoTxn, RwTxn};
use std::ops::Bound;

type Entry<'t> = (&'t [u8], &'t [u8]);

/// Read view of the state in one transaction (a read transaction for queries and
/// `read_state`, the writer's for the rules).
pub(super) struct TxnState<'t> {
    pub txn: &'t RoTxn<'t>,
    pub db: Database<Bytes, Bytes>,
}

impl StateRead for TxnState<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if key.is_empty() || key.len() > MAX_STATE_KEY_LEN {
            return Ok(None); // cannot exist; LMDB would refuse the lookup
        }
        Ok(self
            .db
            .get(self.txn, key)
            .map_err(backend("read state key"))?
            .map(<[u8]>::to_vec))
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let from = from.max(prefix);
        // An empty prefix cannot go through prefix_iter (LMDB refuses empty keys as bounds).
        let entries: Box<dyn Iterator<Item = heed::Result<Entry<'_>>>> = if from.is_empty() {
            Box::new(self.db.iter(self.txn).map_err(backend("scan state"))?)
        } else if from == prefix {
            Box::new(
                self.db
                    .prefix_iter(self.txn, prefix)
                    .map_err(backend("scan state"))?,
            )
        } else {
            let range = (Bound::Included(from), Bound::Unbounded);
            Box::new(
                self.db
                    .range(self.txn, &range)
                    .map_err(backend("scan state"))?
                    .take_while(|entry| {
                        entry.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))
                    }),
            )
        };
        for entry in entries {
            let (k, v) = entry.map_err(backend("scan state"))?;
            if !f(k, v) {
                break;
            }
        }
        Ok(())
    }
}

/// Writes accepted changes into the writer's transaction.
pub(super) fn apply(
    txn: &mut RwTxn,
    db: Database<Bytes, Bytes>,
    changes: StateChanges,
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
