//! The embedded store's write transaction: one LMDB write transaction per batch of the
//! shared writer ([`crate::writer`]), and the primitives the shared write path
//! ([`crate::write_txn`]) runs on. LMDB allows one write transaction at a time, and each
//! commit is durable (fsync).
//!
//! A commit writes every page the transaction touched, and under load that page I/O, not
//! the CPU, is what a batch waits for: an event inserted at a random place of a B-tree (by
//! id, by a fresh pubkey) costs one page of its own. So the transaction keeps `last_seq` in
//! memory and writes it once at commit, and an event's `seq` lives in its record rather than
//! in an `event_seq` entry of its own.

use super::keys::{self, decode_record, encode_record};
use super::state::{self, TxnState};
use super::{backend, Dbs};
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
                .map_err(|e| format!("write last_seq: {e}"))?;
        }
        txn.txn.commit().map_err(|e| e.to_string())
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
        Ok(self
            .dbs
            .events
            .get(&self.txn, &id.0)
            .map_err(backend("look up event id"))?
            .is_some())
    }

    fn load(&self, id: &Hex32) -> StoreResult<Option<Event>> {
        load_event(&self.txn, &self.dbs, id)
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
            audience,
        )?;
        self.last_seq = seq;
        Ok(())
    }

    fn remove(&mut self, id: &Hex32) -> StoreResult<bool> {
        remove_event(&mut self.txn, &self.dbs, id)
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
        let end = keys::expiry_key(now, &Hex32([0xff; 32]));
        let mut expired: Vec<(Vec<u8>, Option<Hex32>)> = dbs
            .expiry
            .range(txn, &(Bound::Unbounded, Bound::Included(end.as_slice())))
            .map_err(backend("walk expiry index"))?
            .take(max + 1)
            .map(|entry| entry.map(|(k, v)| (k.to_vec(), keys::expiry_entry_id(k, v))))
            .collect::<heed::Result<_>>()
            .map_err(backend("walk expiry index"))?;
        let more = expired.len() > max;
        expired.truncate(max);
        let mut removed = 0;
        for (key, id) in expired {
            let Some(id) = id else {
                continue;
            };
            if remove_event(txn, dbs, &id)? {
                removed += 1;
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
        let Some(start) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        let from = start.to_be_bytes();
        let range = (Bound::Included(&from[..]), Bound::Unbounded);
        let mut out = Vec::new();
        for entry in self
            .dbs
            .seq
            .range(&self.txn, &range)
            .map_err(backend("read seq index"))?
        {
            if out.len() >= max {
                break;
            }
            let (key, id) = entry.map_err(backend("read seq index"))?;
            let (Ok(seq), Ok(id)) = (<[u8; 8]>::try_from(key), <[u8; 32]>::try_from(id)) else {
                return Err(StoreError::Corrupt("seq index entry".into()));
            };
            if let Some(ev) = load_event(&self.txn, &self.dbs, &Hex32(id))? {
                out.push((u64::from_be_bytes(seq), ev));
            }
        }
        Ok(out)
    }

    fn set_audience(&mut self, ev: &Event, audience: &Audience) -> StoreResult<()> {
        let dbs = &self.dbs;
        let old = dbs
            .audience
            .get(&self.txn, &ev.id.0)
            .map_err(backend("read audience record"))?
            .and_then(keys::decode_audience)
            .unwrap_or_default();
        for (index, key) in keys::audience_index_keys(ev.created_at, &ev.id, ev.kind, &old) {
            dbs.index(index)
                .delete(&mut self.txn, &key)
                .map_err(backend("delete audience index entry"))?;
        }
        let new = audience.key_bytes();
        let meta = keys::meta(ev);
        for (index, key) in keys::audience_index_keys(ev.created_at, &ev.id, ev.kind, &new) {
            dbs.index(index)
                .put(&mut self.txn, &key, &meta)
                .map_err(backend("write audience index entry"))?;
        }
        dbs.audience
            .put(&mut self.txn, &ev.id.0, &keys::encode_audience(&new))
            .map_err(backend("write audience record"))
    }
}

fn load_event(txn: &RwTxn, dbs: &Dbs, id: &Hex32) -> StoreResult<Option<Event>> {
    let Some(bytes) = dbs.events.get(txn, &id.0).map_err(backend("read event"))? else {
        return Ok(None);
    };
    let record = decode_record(bytes).map_err(|e| StoreError::Corrupt(format!("{id}: {e}")))?;
    serde_json::from_str(record.json)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("{id}: event JSON: {e}")))
}

/// Writes the record (with its `seq`) and every index entry of `ev`.
fn store_event(
    txn: &mut RwTxn,
    dbs: &Dbs,
    ev: &Event,
    received_at: u64,
    expires_at: Option<u64>,
    seq: u64,
    audience: &Audience,
) -> StoreResult<()> {
    let json = ev.to_json();
    dbs.events
        .put(
            txn,
            &ev.id.0,
            &encode_record(received_at, expires_at, seq, &json),
        )
        .map_err(backend("write event record"))?;
    let meta = keys::meta(ev);
    let audience = audience.key_bytes();
    let entries = keys::index_keys(ev)
        .into_iter()
        .chain(keys::audience_index_keys(
            ev.created_at,
            &ev.id,
            ev.kind,
            &audience,
        ));
    for (index, key) in entries {
        dbs.index(index)
            .put(txn, &key, &meta)
            .map_err(backend("write index entry"))?;
    }
    dbs.audience
        .put(txn, &ev.id.0, &keys::encode_audience(&audience))
        .map_err(backend("write audience record"))?;
    if let Some(expires_at) = expires_at {
        dbs.expiry
            .put(txn, &keys::expiry_seq_key(expires_at, seq), &ev.id.0)
            .map_err(backend("write expiry entry"))?;
    }
    if let Some(addr) = keys::event_addr_key(ev) {
        dbs.addr
            .put(txn, &addr, &keys::addr_value(ev.created_at, &ev.id))
            .map_err(backend("write address entry"))?;
    }
    // Always past the last entry: appended without a search (LMDB refuses it otherwise).
    dbs.seq
        .put_with_flags(txn, PutFlags::APPEND, &seq.to_be_bytes(), &ev.id.0)
        .map_err(backend("write seq entry"))?;
    Ok(())
}

/// Removes the event and every index entry pointing at it (the exact mirror of
/// [`store_event`]), so a deleted, replaced or purged event vanishes from every path.
/// Returns whether it was there.
fn remove_event(txn: &mut RwTxn, dbs: &Dbs, id: &Hex32) -> StoreResult<bool> {
    let Some(bytes) = dbs.events.get(txn, &id.0).map_err(backend("read event"))? else {
        return Ok(false);
    };
    let parsed = decode_record(bytes).and_then(|record| {
        let ev: Event = serde_json::from_str(record.json).map_err(|e| e.to_string())?;
        Ok((ev, record.expires_at, record.seq))
    });
    // Where its `seq` is: in the record, or (stored before schema 2) in `event_seq`.
    let mut seq = None;
    match parsed {
        Ok((ev, expires_at, in_record)) => {
            seq = in_record.map(u64::to_be_bytes);
            let audience = dbs
                .audience
                .get(txn, &id.0)
                .map_err(backend("read audience record"))?
                .and_then(keys::decode_audience)
                .unwrap_or_default();
            let entries = keys::index_keys(&ev)
                .into_iter()
                .chain(keys::audience_index_keys(
                    ev.created_at,
                    id,
                    ev.kind,
                    &audience,
                ));
            for (index, key) in entries {
                dbs.index(index)
                    .delete(txn, &key)
                    .map_err(backend("delete index entry"))?;
            }
            if let Some(expires_at) = expires_at {
                let key = match in_record {
                    Some(seq) => keys::expiry_seq_key(expires_at, seq).to_vec(),
                    None => keys::expiry_key(expires_at, id).to_vec(),
                };
                dbs.expiry
                    .delete(txn, &key)
                    .map_err(backend("delete expiry entry"))?;
            }
            if let Some(addr) = keys::event_addr_key(&ev) {
                let points_here = dbs
                    .addr
                    .get(txn, &addr)
                    .map_err(backend("look up address"))?
                    .and_then(keys::split_addr_value)
                    .is_some_and(|(_, stored)| stored == *id);
                if points_here {
                    dbs.addr
                        .delete(txn, &addr)
                        .map_err(backend("delete address entry"))?;
                }
            }
        }
        // Its index keys cannot be computed; the entries left behind point at nothing and
        // reads skip them.
        Err(e) => tracing::error!(%id, error = %e, "removing a corrupt event record"),
    }
    if seq.is_none() {
        seq = dbs
            .event_seq
            .get(txn, &id.0)
            .map_err(backend("read seq entry"))?
            .and_then(|s| <[u8; 8]>::try_from(s).ok());
        if seq.is_some() {
            dbs.event_seq
                .delete(txn, &id.0)
                .map_err(backend("delete seq entry"))?;
        }
    }
    if let Some(seq) = seq {
        dbs.seq
            .delete(txn, &seq)
            .map_err(backend("delete seq entry"))?;
    }
    dbs.audience
        .delete(txn, &id.0)
        .map_err(backend("delete audience record"))?;
    dbs.events
        .delete(txn, &id.0)
        .map_err(backend("delete event record"))?;
    Ok(true)
}
