//! Backups of the embedded store: everything it holds, read from one snapshot ([`backup`]).
//! A restore runs in the writer's transaction ([`crate::write_txn`]).

use super::keys;
use super::query;
use super::{backend, Dbs};
use crate::address::split_address_key;
use crate::{BackupItem, StoreError, StoreResult, Tombstone};
use heed::{Env, WithoutTls};
use mls_proto::Hex32;

type Sink<'f> = &'f mut (dyn FnMut(&BackupItem) -> bool + Send);

/// Events (oldest first, ties lowest id first), then state (key order), then tombstones (id
/// tombstones by id and deleter, then address tombstones by address key), in one read
/// transaction.
pub(super) fn backup(env: &Env<WithoutTls>, dbs: &Dbs, f: Sink<'_>) -> StoreResult<()> {
    let txn = env.read_txn().map_err(backend("begin read transaction"))?;
    if !query::oldest_first(&txn, dbs, &mut |stored| f(&BackupItem::Event(stored)))? {
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
