//! Backups of the embedded store: everything it holds, read from one snapshot ([`backup`]).
//! A restore runs in the writer's transaction ([`crate::write_txn`]).

use super::keys::{self, decode_record};
use super::{backend, Dbs};
use crate::address::split_address_key;
use crate::{BackupItem, StoreError, StoreResult, StoredEvent, Tombstone};
use heed::{Env, RoTxn, WithoutTls};
use mls_proto::{Event, Hex32};
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
        let (Some((kind, pubkey, inline)), Some((until, carried))) =
            (split_address_key(key), keys::split_tomb_addr_value(value))
        else {
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
