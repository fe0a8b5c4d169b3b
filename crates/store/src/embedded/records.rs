//! Event records read back: by `seq` (the key of `events`), or by id through `ids`.

use super::keys::{self, decode_record, RawRecord};
use super::{backend, Dbs};
use crate::{StoreError, StoreResult, StoredEvent};
use heed::RoTxn;
use mls_proto::{Event, Hex32};
use std::ops::Bound;
use std::sync::Arc;

/// The `seq` of the stored event `id`.
pub(super) fn seq_of(txn: &RoTxn, dbs: &Dbs, id: &Hex32) -> StoreResult<Option<u64>> {
    match dbs
        .ids
        .get(txn, &id.0)
        .map_err(backend("look up event id"))?
    {
        None => Ok(None),
        Some(v) => keys::split_seq(v)
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt(format!("{id}: ids entry"))),
    }
}

/// The record stored under `seq`, header decoded, JSON not parsed.
pub(super) fn raw<'t>(txn: &'t RoTxn, dbs: &Dbs, seq: u64) -> StoreResult<Option<RawRecord<'t>>> {
    let Some(bytes) = dbs
        .events
        .get(txn, &keys::seq_key(seq))
        .map_err(backend("read event"))?
    else {
        return Ok(None);
    };
    decode(seq, bytes).map(Some)
}

/// The record `bytes` stored under `seq`, header decoded.
fn decode(seq: u64, bytes: &[u8]) -> StoreResult<RawRecord<'_>> {
    decode_record(bytes).map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))
}

/// The stored event `id`, expired or not.
pub(super) fn by_id(txn: &RoTxn, dbs: &Dbs, id: &Hex32) -> StoreResult<Option<StoredEvent>> {
    match seq_of(txn, dbs, id)? {
        None => Ok(None),
        Some(seq) => by_seq(txn, dbs, seq),
    }
}

/// The event stored under `seq`, expired or not.
pub(super) fn by_seq(txn: &RoTxn, dbs: &Dbs, seq: u64) -> StoreResult<Option<StoredEvent>> {
    raw(txn, dbs, seq)?
        .map(|record| parse(seq, &record))
        .transpose()
}

/// The event of a record, its JSON parsed.
pub(super) fn parse(seq: u64, record: &RawRecord<'_>) -> StoreResult<StoredEvent> {
    let event: Event = serde_json::from_str(record.json)
        .map_err(|e| StoreError::Corrupt(format!("event {seq}: event JSON: {e}")))?;
    Ok(StoredEvent {
        event,
        json: Arc::from(record.json),
        received_at: record.received_at,
        expires_at: record.expires_at,
    })
}

/// Stored events with `seq > after`, in `seq` order, at most `max`: the commit stream, read
/// from `events` itself.
pub(super) fn after(
    txn: &RoTxn,
    dbs: &Dbs,
    after: u64,
    max: usize,
) -> StoreResult<Vec<(u64, StoredEvent)>> {
    let Some(start) = after.checked_add(1) else {
        return Ok(Vec::new());
    };
    let from = keys::seq_key(start);
    let range = (Bound::Included(&from[..]), Bound::Unbounded);
    let mut out = Vec::new();
    for entry in dbs
        .events
        .range(txn, &range)
        .map_err(backend("walk events"))?
        .take(max)
    {
        let (key, bytes) = entry.map_err(backend("walk events"))?;
        let seq = keys::split_seq(key).ok_or_else(|| StoreError::Corrupt("events key".into()))?;
        out.push((seq, parse(seq, &decode(seq, bytes)?)?));
    }
    Ok(out)
}
