//! The embedded store's write transaction: one LMDB write transaction per batch of the
//! shared writer ([`crate::writer`]), and the primitives the shared write path
//! ([`crate::write_txn`]) runs on. LMDB allows one write transaction at a time, and each
//! commit is durable (fsync).
//!
//! A commit writes every page the transaction touched, and under load that page I/O, not
//! the CPU, is what a batch waits for: an event inserted at a random place of a B-tree (by
//! id, by a fresh pubkey) costs one page of its own. So records are keyed by `seq` and
//! appended (a batch fills the last pages of `events` instead of one page per event at
//! random), only the small `ids` entry goes in by id, and the transaction keeps `last_seq` in
//! memory and writes it once at commit.

use super::keys::{self, decode_record, encode_record};
use super::records;
use super::state::{self, TxnState};
use super::{backend, describe, Dbs};
use crate::address::Address;
use crate::audience::Audience;
use crate::overlay::StateChanges;
use crate::write_txn::WriteTxn;
use crate::writer::WriteBackend;
use crate::{StateRead, StoreError, StoreResult};
use heed::{Env, PutFlags, RwTxn, WithoutTls};
use mls_proto::{Event, Hex32};
use std::ops::Bound;

/// Opens the writer's transactions on one environment.
pub(super) struct Backend {
    pub env: Env<WithoutTls>,
    pub dbs: Dbs,
}

pub(super) struct Txn<'e> {
    txn: RwTxn<'e>,
    dbs: Dbs,
    /// The last `seq` handed out, this transaction's included.
    last_seq: u64,
    /// `last_seq` as the transaction found it: `meta` is written at commit only if it moved.
    begun_at_seq: u64,
}

impl WriteBackend for Backend {
    type Txn<'a> = Txn<'a>;

    fn begin(&self) -> Result<Txn<'_>, String> {
        let txn = self.env.write_txn().map_err(|e| e.to_string())?;
        let last_seq = keys::last_seq(&txn, &self.dbs).map_err(|e| e.to_string())?;
        Ok(Txn {
            txn,
            dbs: self.dbs,
            last_seq,
            begun_at_seq: last_seq,
        })
    }

    fn commit(&self, mut txn: Txn<'_>) -> Result<(), String> {
        if txn.last_seq != txn.begun_at_seq {
            self.dbs
                .meta
                .put(&mut txn.txn, keys::LAST_SEQ, &txn.last_seq.to_be_bytes())
                .map_err(|e| format!("write last_seq: {}", describe(e)))?;
        }
        txn.txn.commit().map_err(describe)
    }

    /// Aborting an LMDB transaction cannot fail: the others of the batch may be retried.
    fn rollback(&self, txn: Txn<'_>) -> bool {
        txn.txn.abort();
        true
    }
}

impl Txn<'_> {
    fn view(&self) -> TxnState<'_> {
        TxnState {
            txn: &self.txn,
            db: self.dbs.state,
        }
    }
}

impl StateRead for Txn<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.view().get(key)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        self.view().scan_prefix_from(prefix, from, f)
    }
}

impl WriteTxn for Txn<'_> {
    fn state(&self) -> &dyn StateRead {
        self
    }

    fn contains(&self, id: &Hex32) -> StoreResult<bool> {
        Ok(records::seq_of(&self.txn, &self.dbs, id)?.is_some())
    }

    fn load(&self, id: &Hex32) -> StoreResult<Option<Event>> {
        Ok(records::by_id(&self.txn, &self.dbs, id)?.map(|stored| stored.event))
    }

    fn version_at(&self, address: &Address) -> StoreResult<Option<(u64, Hex32)>> {
        match self
            .dbs
            .addr
            .get(&self.txn, &address.key)
            .map_err(backend("look up address"))?
        {
            None => Ok(None),
            Some(v) => keys::split_addr_value(v)
                .map(Some)
                .ok_or_else(|| StoreError::Corrupt("address entry".into())),
        }
    }

    fn address_deleted_until(&self, address: &Address) -> StoreResult<Option<u64>> {
        Ok(self
            .dbs
            .tomb_addrs
            .get(&self.txn, &address.key)
            .map_err(backend("look up address tombstone"))?
            .and_then(keys::split_tomb_addr_value)
            .map(|(until, _)| until))
    }

    fn id_deleters(&self, id: &Hex32) -> StoreResult<Vec<Hex32>> {
        self.dbs
            .tomb_ids
            .prefix_iter(&self.txn, &id.0)
            .map_err(backend("read id tombstones"))?
            .map(|entry| {
                let (key, _) = entry.map_err(backend("read id tombstones"))?;
                let deleter = key
                    .get(32..64)
                    .and_then(|d| <[u8; 32]>::try_from(d).ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("tombstone key for {id}")))?;
                Ok(Hex32(deleter))
            })
            .collect()
    }

    fn insert(
        &mut self,
        ev: &Event,
        received_at: u64,
        expires_at: Option<u64>,
        audience: &Audience,
    ) -> StoreResult<()> {
        // The next place in commit order; the counter lives in the transaction, so a batch
        // that does not commit hands out nothing.
        let seq = self.last_seq + 1;
        store_event(
            &mut self.txn,
            &self.dbs,
            ev,
            received_at,
            expires_at,
            seq,
            &audience.key_bytes(),
            true,
        )?;
        self.last_seq = seq;
        Ok(())
    }

    fn remove(&mut self, id: &Hex32) -> StoreResult<bool> {
        match records::seq_of(&self.txn, &self.dbs, id)? {
            Some(seq) => remove_event(&mut self.txn, &self.dbs, seq, Some(id)),
            None => Ok(false),
        }
    }

    fn put_id_tombstone(&mut self, id: &Hex32, deleter: &Hex32) -> StoreResult<()> {
        self.dbs
            .tomb_ids
            .put(&mut self.txn, &keys::tomb_id_key(id, deleter), &[])
            .map_err(backend("write id tombstone"))
    }

    fn put_address_tombstone(&mut self, address: &Address, until: u64) -> StoreResult<()> {
        let until = self
            .address_deleted_until(address)?
            .map_or(until, |t| t.max(until));
        self.dbs
            .tomb_addrs
            .put(
                &mut self.txn,
                &address.key,
                &keys::tomb_addr_value(until, &address.d),
            )
            .map_err(backend("write address tombstone"))
    }

    fn apply_state(&mut self, changes: StateChanges) -> StoreResult<()> {
        state::apply(&mut self.txn, self.dbs.state, changes)
    }

    fn purge_expired(&mut self, now: u64, max: usize) -> StoreResult<(u64, bool)> {
        let dbs = &self.dbs;
        let txn = &mut self.txn;
        let end = keys::expiry_key(now, u64::MAX);
        let mut expired: Vec<(Vec<u8>, Option<u64>)> = dbs
            .expiry
            .range(txn, &(Bound::Unbounded, Bound::Included(end.as_slice())))
            .map_err(backend("walk expiry index"))?
            .take(max + 1)
            .map(|entry| entry.map(|(k, _)| (k.to_vec(), keys::expiry_entry_seq(k))))
            .collect::<heed::Result<_>>()
            .map_err(backend("walk expiry index"))?;
        let more = expired.len() > max;
        expired.truncate(max);
        let mut removed = 0;
        for (key, seq) in expired {
            if let Some(seq) = seq {
                if remove_event(txn, dbs, seq, None)? {
                    removed += 1;
                }
            }
            // Normally already gone with the event; this clears a stray entry too.
            dbs.expiry
                .delete(txn, &key)
                .map_err(backend("delete expiry entry"))?;
        }
        Ok((removed, more))
    }

    fn last_seq(&self) -> StoreResult<u64> {
        Ok(self.last_seq)
    }

    fn events_after(&self, after: u64, max: usize) -> StoreResult<Vec<(u64, Event)>> {
        Ok(records::after(&self.txn, &self.dbs, after, max)?
            .into_iter()
            .map(|(seq, stored)| (seq, stored.event))
            .collect())
    }

    /// Rewrites the record in place (same `seq`) with the new audience, and moves the
    /// audience index entries.
    fn set_audience(&mut self, ev: &Event, audience: &Audience) -> StoreResult<()> {
        let dbs = &self.dbs;
        let Some(seq) = records::seq_of(&self.txn, dbs, &ev.id)? else {
            return Ok(()); // removed meanwhile
        };
        let Some(record) = records::raw(&self.txn, dbs, seq)? else {
            return Err(StoreError::Corrupt(format!("{}: no record", ev.id)));
        };
        let old: Vec<Vec<u8>> = keys::decode_audience(record.audience)
            .ok_or_else(|| StoreError::Corrupt(format!("event {seq}: audience")))?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let new = audience.key_bytes();
        let rewritten = encode_record(
            record.received_at,
            record.expires_at,
            &keys::encode_audience(&new),
            record.json,
        );
        for (index, key) in keys::audience_index_keys(ev.created_at, seq, ev.kind, &old) {
            dbs.index(index)
                .delete(&mut self.txn, &key)
                .map_err(backend("delete audience index entry"))?;
        }
        let meta = keys::meta(ev);
        for (index, key) in keys::audience_index_keys(ev.created_at, seq, ev.kind, &new) {
            dbs.index(index)
                .put(&mut self.txn, &key, &meta)
                .map_err(backend("write audience index entry"))?;
        }
        dbs.events
            .put(&mut self.txn, &keys::seq_key(seq), &rewritten)
            .map_err(backend("write event record"))
    }
}

/// Writes the record under `seq` (appended: `seq` is past every stored one), its `ids` entry
/// and every index entry of `ev`. Also the write path of the upgrade (`upgrade`), which
/// rewrites older stores' events in this layout: `append` says whether `seq` is known to be
/// the largest yet.
#[allow(clippy::too_many_arguments)]
pub(super) fn store_event(
    txn: &mut RwTxn,
    dbs: &Dbs,
    ev: &Event,
    received_at: u64,
    expires_at: Option<u64>,
    seq: u64,
    audience: &[Vec<u8>],
    append: bool,
) -> StoreResult<()> {
    let json = ev.to_json();
    let record = encode_record(
        received_at,
        expires_at,
        &keys::encode_audience(audience),
        &json,
    );
    // Past the last entry: appended without a search (LMDB refuses it otherwise).
    let flags = if append {
        PutFlags::APPEND
    } else {
        PutFlags::NO_OVERWRITE
    };
    dbs.events
        .put_with_flags(txn, flags, &keys::seq_key(seq), &record)
        .map_err(backend("write event record"))?;
    dbs.ids
        .put(txn, &ev.id.0, &keys::seq_key(seq))
        .map_err(backend("write ids entry"))?;
    put_index_entries(txn, dbs, ev, seq, audience)?;
    if let Some(expires_at) = expires_at {
        dbs.expiry
            .put(txn, &keys::expiry_key(expires_at, seq), &[])
            .map_err(backend("write expiry entry"))?;
    }
    if let Some(addr) = keys::event_addr_key(ev) {
        dbs.addr
            .put(txn, &addr, &keys::addr_value(ev.created_at, &ev.id))
            .map_err(backend("write address entry"))?;
    }
    Ok(())
}

/// The time-ordered index entries of `ev`, stored under `seq` and read by `audience` (also
/// how `upgrade` rebuilds the indexes of an older layout).
pub(super) fn put_index_entries(
    txn: &mut RwTxn,
    dbs: &Dbs,
    ev: &Event,
    seq: u64,
    audience: &[Vec<u8>],
) -> StoreResult<()> {
    let meta = keys::meta(ev);
    for (index, key) in keys::index_keys(ev, seq, audience) {
        dbs.index(index)
            .put(txn, &key, &meta)
            .map_err(backend("write index entry"))?;
    }
    Ok(())
}

/// What a record's index entries are made of.
pub(super) struct IndexedParts {
    pub ev: Event,
    pub expires_at: Option<u64>,
    /// Its read keys' bytes.
    pub audience: Vec<Vec<u8>>,
}

/// The [`IndexedParts`] of a record (its JSON parsed); an error names what could not be read.
pub(super) fn indexed_parts(bytes: &[u8]) -> Result<IndexedParts, String> {
    let record = decode_record(bytes)?;
    let ev: Event = serde_json::from_str(record.json).map_err(|e| e.to_string())?;
    let audience = keys::decode_audience(record.audience)
        .ok_or("event record audience")?
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    Ok(IndexedParts {
        ev,
        expires_at: record.expires_at,
        audience,
    })
}

/// Removes the event stored under `seq` and every entry pointing at it (the exact mirror of
/// [`store_event`]), so a deleted, replaced or purged event vanishes from every path.
/// `id`, when the caller knows it, is unlinked even if the record cannot be read. Returns
/// whether the record was there.
fn remove_event(txn: &mut RwTxn, dbs: &Dbs, seq: u64, id: Option<&Hex32>) -> StoreResult<bool> {
    let key = keys::seq_key(seq);
    let Some(bytes) = dbs.events.get(txn, &key).map_err(backend("read event"))? else {
        return Ok(false);
    };
    let parsed = indexed_parts(bytes);
    match parsed {
        Ok(IndexedParts {
            ev,
            expires_at,
            audience,
        }) => {
            for (index, key) in keys::index_keys(&ev, seq, &audience) {
                dbs.index(index)
                    .delete(txn, &key)
                    .map_err(backend("delete index entry"))?;
            }
            if let Some(expires_at) = expires_at {
                dbs.expiry
                    .delete(txn, &keys::expiry_key(expires_at, seq))
                    .map_err(backend("delete expiry entry"))?;
            }
            if let Some(addr) = keys::event_addr_key(&ev) {
                let points_here = dbs
                    .addr
                    .get(txn, &addr)
                    .map_err(backend("look up address"))?
                    .and_then(keys::split_addr_value)
                    .is_some_and(|(_, stored)| stored == ev.id);
                if points_here {
                    dbs.addr
                        .delete(txn, &addr)
                        .map_err(backend("delete address entry"))?;
                }
            }
            dbs.ids
                .delete(txn, &ev.id.0)
                .map_err(backend("delete ids entry"))?;
        }
        // Its index keys cannot be computed; the entries left behind point at nothing and
        // reads skip them.
        Err(e) => {
            tracing::error!(seq, ?id, error = %e, "removing a corrupt event record");
            if let Some(id) = id {
                dbs.ids
                    .delete(txn, &id.0)
                    .map_err(backend("delete ids entry"))?;
            }
        }
    }
    dbs.events
        .delete(txn, &key)
        .map_err(backend("delete event record"))?;
    Ok(true)
}
