//! Backups of the embedded store: everything it holds, read from one snapshot ([`backup`]),
//! and put back verbatim inside the writer's transaction ([`restore`]).

use super::keys::{self, decode_record};
use super::writer::{remove_event, store_event};
use super::{backend, Dbs};
use crate::{
    BackupItem, StoreError, StoreResult, StoredEvent, Tombstone, WriteOutcome, MAX_STATE_KEY_LEN,
};
use heed::{Env, RoTxn, RwTxn, WithoutTls};
use mls_proto::{Event, Hex32, KindClass};
use std::sync::Arc;

type Sink<'f> = &'f mut (dyn FnMut(&BackupItem) -> bool + Send);

/// Events (oldest first, ties lowest id first), then state (key order), then tombstones (id
/// tombstones by id and deleter, then address tombstones by address key), in one read
/// transaction.
pub(super) fn backup(env: &Env<WithoutTls>, dbs: &Dbs, f: Sink<'_>) -> StoreResult<()> {
    let txn = env.read_txn().map_err(backend("begin read transaction"))?;
    if !events(&txn, dbs, f)? {
        return Ok(());
    }
    for entry in dbs.state.iter(&txn).map_err(backend("walk state"))? {
        let (key, value) = entry.map_err(backend("walk state"))?;
        let item = BackupItem::State {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        if !f(&item) {
            return Ok(());
        }
    }
    for entry in dbs
        .tomb_ids
        .iter(&txn)
        .map_err(backend("walk id tombstones"))?
    {
        let (key, _) = entry.map_err(backend("walk id tombstones"))?;
        let (Some(id), Some(deleter)) = (hex32(key.get(..32)), hex32(key.get(32..))) else {
            return Err(StoreError::Corrupt("id tombstone key".into()));
        };
        if !f(&BackupItem::Tombstone(Tombstone::Id { id, deleter })) {
            return Ok(());
        }
    }
    for entry in dbs
        .tomb_addrs
        .iter(&txn)
        .map_err(backend("walk address tombstones"))?
    {
        let (key, value) = entry.map_err(backend("walk address tombstones"))?;
        let (Some((kind, pubkey, inline)), Some((until, carried))) = (
            keys::split_addr_key(key),
            keys::split_tomb_addr_value(value),
        ) else {
            return Err(StoreError::Corrupt("address tombstone".into()));
        };
        let d = match inline {
            Some(d) => d,
            None if !carried.is_empty() => carried,
            None => {
                // Written before the value carried long `d`s: only the hash is known.
                tracing::warn!(kind, %pubkey, "address tombstone with a hashed d cannot be backed up");
                continue;
            }
        };
        let d = String::from_utf8(d.to_vec())
            .map_err(|_| StoreError::Corrupt("address tombstone d is not UTF-8".into()))?;
        let item = BackupItem::Tombstone(Tombstone::Address {
            kind,
            pubkey,
            d,
            until,
        });
        if !f(&item) {
            return Ok(());
        }
    }
    Ok(())
}

fn hex32(b: Option<&[u8]>) -> Option<Hex32> {
    Some(Hex32(b?.try_into().ok()?))
}

/// Every event, oldest first and lowest id first among equal `created_at`s. The created_at
/// index walked backwards gives oldest first but highest id first, so the ids of one second
/// are gathered and turned around (a second's worth of ids, not its events, is held).
fn events(txn: &RoTxn, dbs: &Dbs, f: Sink<'_>) -> StoreResult<bool> {
    let mut second: Option<u64> = None;
    let mut ids: Vec<Hex32> = Vec::new();
    for entry in dbs
        .created
        .rev_iter(txn)
        .map_err(backend("walk created_at index"))?
    {
        let (key, _) = entry.map_err(backend("walk created_at index"))?;
        let Some((created_at, id)) = keys::split_suffix(key) else {
            return Err(StoreError::Corrupt("created_at index key".into()));
        };
        if second != Some(created_at) {
            if !flush(txn, dbs, &mut ids, f)? {
                return Ok(false);
            }
            second = Some(created_at);
        }
        ids.push(id);
    }
    flush(txn, dbs, &mut ids, f)
}

fn flush(txn: &RoTxn, dbs: &Dbs, ids: &mut Vec<Hex32>, f: Sink<'_>) -> StoreResult<bool> {
    for id in ids.drain(..).rev() {
        let Some(bytes) = dbs.events.get(txn, &id.0).map_err(backend("read event"))? else {
            continue; // an index entry left behind by a corrupt record
        };
        let record = decode_record(bytes).map_err(|e| StoreError::Corrupt(format!("{id}: {e}")))?;
        let event: Event = serde_json::from_str(record.json)
            .map_err(|e| StoreError::Corrupt(format!("{id}: event JSON: {e}")))?;
        let item = BackupItem::Event(StoredEvent {
            event,
            json: Arc::from(record.json),
            received_at: record.received_at,
            expires_at: record.expires_at,
        });
        if !f(&item) {
            return Ok(false); // dropping the drain empties `ids`
        }
    }
    Ok(true)
}

/// Puts `items` back verbatim in the writer's transaction: no rules, no deletions applied.
pub(super) fn restore(
    txn: &mut RwTxn,
    dbs: &Dbs,
    items: &[BackupItem],
) -> StoreResult<Vec<WriteOutcome>> {
    items
        .iter()
        .map(|item| match item {
            BackupItem::Event(stored) => restore_event(txn, dbs, stored),
            BackupItem::State { key, value } => {
                if key.is_empty() || key.len() > MAX_STATE_KEY_LEN {
                    return Ok(WriteOutcome::Rejected(format!(
                        "invalid: state key must be 1 to {MAX_STATE_KEY_LEN} bytes, got {}",
                        key.len()
                    )));
                }
                dbs.state
                    .put(txn, key, value)
                    .map_err(backend("write state key"))?;
                Ok(WriteOutcome::Accepted)
            }
            BackupItem::Tombstone(Tombstone::Id { id, deleter }) => {
                dbs.tomb_ids
                    .put(txn, &keys::tomb_id_key(id, deleter), &[])
                    .map_err(backend("write id tombstone"))?;
                Ok(WriteOutcome::Accepted)
            }
            BackupItem::Tombstone(Tombstone::Address {
                kind,
                pubkey,
                d,
                until,
            }) => {
                if !matches!(
                    KindClass::of(*kind),
                    KindClass::Replaceable | KindClass::Addressable
                ) {
                    return Ok(WriteOutcome::Rejected(format!(
                        "invalid: kind {kind} has no address"
                    )));
                }
                let addr = keys::addr_key(*kind, pubkey, d);
                let until = dbs
                    .tomb_addrs
                    .get(txn, &addr)
                    .map_err(backend("look up address tombstone"))?
                    .and_then(keys::split_tomb_addr_value)
                    .map_or(*until, |(t, _)| t.max(*until));
                dbs.tomb_addrs
                    .put(txn, &addr, &keys::tomb_addr_value(until, d))
                    .map_err(backend("write address tombstone"))?;
                Ok(WriteOutcome::Accepted)
            }
        })
        .collect()
}

fn restore_event(txn: &mut RwTxn, dbs: &Dbs, stored: &StoredEvent) -> StoreResult<WriteOutcome> {
    let ev = &stored.event;
    if ev.class() == KindClass::Ephemeral {
        return Ok(WriteOutcome::Rejected(
            "invalid: ephemeral events are not stored".into(),
        ));
    }
    if dbs
        .events
        .get(txn, &ev.id.0)
        .map_err(backend("look up event id"))?
        .is_some()
    {
        return Ok(WriteOutcome::Duplicate);
    }
    if let Some(addr) = keys::event_addr_key(ev) {
        if let Some(current) = dbs
            .addr
            .get(txn, &addr)
            .map_err(backend("look up address"))?
        {
            let (created_at, id) = keys::split_addr_value(current)
                .ok_or_else(|| StoreError::Corrupt("address entry".into()))?;
            if created_at > ev.created_at || (created_at == ev.created_at && id < ev.id) {
                return Ok(WriteOutcome::Rejected(
                    "invalid: a newer version of this event is already stored".into(),
                ));
            }
            remove_event(txn, dbs, &id)?;
        }
    }
    store_event(txn, dbs, ev, stored.received_at, stored.expires_at)?;
    Ok(WriteOutcome::Accepted)
}
