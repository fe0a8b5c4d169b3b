//! The single writer: group commit of everything queued, in one durable LMDB transaction.
//!
//! The thread blocks for the first request, takes whatever else is already queued (up to
//! `max_batch`), runs them all in order in one write transaction, commits (fsync), and only
//! then answers. No timer: under load the queue refills during the commit, so batches grow by
//! themselves and a burst costs one fsync rather than one per event.

use super::keys::{self, decode_record, encode_record};
use super::state::{self, Overlay};
use super::{backend, Dbs};
use crate::{
    Admission, Admitted, BackupItem, Publisher, Rejection, StateWrite, StoreError, StoreResult,
    WriteOutcome,
};
use heed::{Env, RwTxn, WithoutTls};
use mls_proto::{Event, Hex32, KindClass};
use std::collections::VecDeque;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

pub(super) type StateFn = Box<dyn FnOnce(&mut dyn StateWrite) -> Result<(), Rejection> + Send>;

/// Most expired events removed per transaction, so a large backlog cannot make one huge
/// transaction (and hold up the events queued behind it).
const PURGE_CHUNK: usize = 10_000;

pub(super) enum Request {
    Write {
        event: Box<Event>,
        publisher: Publisher,
        reply: oneshot::Sender<StoreResult<WriteOutcome>>,
    },
    State {
        /// Taken when run: a state change cannot be replayed if its batch fails.
        f: Option<StateFn>,
        reply: oneshot::Sender<StoreResult<Result<(), Rejection>>>,
    },
    Purge {
        now: u64,
        /// Removed by earlier transactions of this same purge.
        purged: u64,
        reply: oneshot::Sender<StoreResult<u64>>,
    },
    /// Backup items put back verbatim (see `backup::restore`).
    Restore {
        items: Vec<BackupItem>,
        reply: oneshot::Sender<StoreResult<Vec<WriteOutcome>>>,
    },
}

/// The result of one request inside a transaction, delivered only once it committed.
enum Outcome {
    Write(WriteOutcome),
    State(Result<(), Rejection>),
    Purge { removed: u64, more: bool },
    Restore(Vec<WriteOutcome>),
    Failed(StoreError),
}

impl Request {
    /// Delivers `outcome`; an unfinished purge goes back to `carry` for the next batch.
    fn answer(self, outcome: Outcome, carry: &mut VecDeque<Request>) {
        // A send fails only when the caller stopped waiting (its future was dropped).
        match (self, outcome) {
            (Request::Write { reply, .. }, Outcome::Write(o)) => drop(reply.send(Ok(o))),
            (Request::State { reply, .. }, Outcome::State(o)) => drop(reply.send(Ok(o))),
            (Request::Purge { now, purged, reply }, Outcome::Purge { removed, more }) => {
                if more {
                    carry.push_back(Request::Purge {
                        now,
                        purged: purged + removed,
                        reply,
                    });
                } else {
                    drop(reply.send(Ok(purged + removed)));
                }
            }
            (Request::Restore { reply, .. }, Outcome::Restore(o)) => drop(reply.send(Ok(o))),
            (request, Outcome::Failed(e)) => request.fail(e),
            (request, _) => request.fail(StoreError::Backend(
                "store writer: outcome does not fit its request".into(),
            )),
        }
    }

    fn fail(self, e: StoreError) {
        match self {
            Request::Write { reply, .. } => drop(reply.send(Err(e))),
            Request::State { reply, .. } => drop(reply.send(Err(e))),
            Request::Purge { reply, .. } => drop(reply.send(Err(e))),
            Request::Restore { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// A request failed part-way (the transaction is unusable): the others may be fine.
    Processing(String),
    /// Beginning or committing the transaction failed: nothing in the batch is durable.
    Commit(String),
}

pub(super) struct Writer {
    pub env: Env<WithoutTls>,
    pub dbs: Dbs,
    pub rules: Arc<dyn Admission>,
    pub max_batch: usize,
    /// Rung after each durable commit (the commit stream).
    pub feed: Arc<crate::CommitFeed>,
}

/// What a committed batch tells the commit stream.
struct Committed {
    outcomes: Vec<Outcome>,
    last_seq: u64,
    transient: Vec<(u64, Arc<Event>)>,
}

impl Writer {
    /// The writer thread's loop; returns when every sender is gone and the queue is drained.
    pub fn run(self, queue: mpsc::Receiver<Request>) {
        let mut pending: VecDeque<Request> = VecDeque::new();
        loop {
            if pending.is_empty() {
                match queue.recv() {
                    Ok(r) => pending.push_back(r),
                    Err(_) => return, // closed and drained
                }
            }
            while pending.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(r) => pending.push_back(r),
                    Err(_) => break,
                }
            }
            let batch: Vec<Request> = pending.drain(..).collect();
            self.run_batch(batch, &mut pending);
        }
    }

    fn run_batch(&self, mut batch: Vec<Request>, carry: &mut VecDeque<Request>) {
        let started = std::time::Instant::now();
        match self.commit_batch(&mut batch) {
            Ok(Committed {
                outcomes,
                last_seq,
                transient,
            }) => {
                tracing::trace!(
                    size = batch.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "store batch committed"
                );
                // Before the answers: a publisher that sees its OK finds the stream rung.
                self.feed.committed(last_seq, transient);
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    request.answer(outcome, carry);
                }
            }
            // One bad request must not sink the others: run each alone.
            Err(BatchError::Processing(e)) if batch.len() > 1 => {
                tracing::warn!(error = %e, size = batch.len(), "store batch failed; retrying one by one");
                for request in batch {
                    self.run_batch(vec![request], carry);
                }
            }
            Err(BatchError::Processing(e) | BatchError::Commit(e)) => {
                tracing::error!(error = %e, size = batch.len(), "store batch not committed");
                for request in batch {
                    request.fail(StoreError::Backend(e.clone()));
                }
            }
        }
    }

    /// Runs `batch` in one transaction and commits it durably.
    fn commit_batch(&self, batch: &mut [Request]) -> Result<Committed, BatchError> {
        let now = mls_proto::unix_now();
        let mut txn = self
            .env
            .write_txn()
            .map_err(|e| BatchError::Commit(format!("begin write transaction: {e}")))?;
        let seq_of = |txn: &RwTxn| {
            keys::last_seq(txn, &self.dbs).map_err(|e| BatchError::Processing(e.to_string()))
        };
        let mut last_seq = seq_of(&txn)?;
        let mut transient = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.len());
        for request in batch.iter_mut() {
            let outcome = match request {
                Request::Write {
                    event, publisher, ..
                } => {
                    let outcome = self
                        .write_event(&mut txn, event, publisher, now)
                        .map_err(|e| BatchError::Processing(format!("event {}: {e}", event.id)))?;
                    let seq = seq_of(&txn)?;
                    // Accepted without taking a seq: not stored, delivered from the notice.
                    if outcome == WriteOutcome::Accepted && seq == last_seq {
                        transient.push((seq, Arc::new((**event).clone())));
                    }
                    last_seq = seq;
                    Outcome::Write(outcome)
                }
                Request::State { f, .. } => match f.take() {
                    Some(f) => self
                        .update_state(&mut txn, f)
                        .map_err(|e| BatchError::Processing(format!("state change: {e}")))?,
                    None => Outcome::Failed(StoreError::Backend(
                        "state change not applied: its transaction failed".into(),
                    )),
                },
                Request::Purge { now, .. } => {
                    let (removed, more) = self
                        .purge(&mut txn, *now)
                        .map_err(|e| BatchError::Processing(format!("purge: {e}")))?;
                    Outcome::Purge { removed, more }
                }
                Request::Restore { items, .. } => Outcome::Restore(
                    super::backup::restore(&mut txn, &self.dbs, items)
                        .map_err(|e| BatchError::Processing(format!("restore: {e}")))?,
                ),
            };
            outcomes.push(outcome);
        }
        let last_seq = seq_of(&txn)?;
        txn.commit()
            .map_err(|e| BatchError::Commit(format!("commit write transaction: {e}")))?;
        Ok(Committed {
            outcomes,
            last_seq,
            transient,
        })
    }

    /// One event, in the order the relay promises: duplicate, tombstones, newer version,
    /// rules (with their state changes), then storage and NIP-09 deletions.
    fn write_event(
        &self,
        txn: &mut RwTxn,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> StoreResult<WriteOutcome> {
        let dbs = &self.dbs;
        if ev.class() == KindClass::Ephemeral {
            return Ok(WriteOutcome::Accepted); // the relay delivers these live; never stored
        }
        if dbs
            .events
            .get(txn, &ev.id.0)
            .map_err(backend("look up event id"))?
            .is_some()
        {
            return Ok(WriteOutcome::Duplicate);
        }
        // Deletions of deletions do nothing (NIP-09), so a kind 5 is never tombstoned.
        if ev.kind != 5 && self.id_tombstoned(txn, ev)? {
            return Ok(deleted());
        }

        let address = keys::event_addr_key(ev);
        let mut replaces = None;
        if let Some(addr) = &address {
            if let Some(deleted_until) = dbs
                .tomb_addrs
                .get(txn, addr)
                .map_err(backend("look up address tombstone"))?
                .and_then(read_u64)
            {
                if deleted_until >= ev.created_at {
                    return Ok(deleted());
                }
            }
            if let Some(stored) = dbs
                .addr
                .get(txn, addr)
                .map_err(backend("look up address"))?
            {
                let (created_at, id) = keys::split_addr_value(stored)
                    .ok_or_else(|| StoreError::Corrupt("address entry".into()))?;
                if created_at > ev.created_at || (created_at == ev.created_at && id < ev.id) {
                    return Ok(WriteOutcome::Rejected(
                        "invalid: a newer version of this event is already stored".into(),
                    ));
                }
                replaces = Some(id);
            }
        }

        // Before the rules run: a refused deletion must leave no state change behind.
        if ev.kind == 5 {
            if let Some(refusal) = self.refused_deletion(txn, ev)? {
                return Ok(WriteOutcome::Rejected(refusal.0));
            }
        }
        let admitted = match self.admit(txn, ev, publisher, now)? {
            Ok(a) => a,
            Err(rejection) => return Ok(WriteOutcome::Rejected(rejection.0)),
        };

        if admitted.store {
            if let Some(old) = replaces {
                remove_event(txn, dbs, &old)?;
            }
            // NIP-40 keeps its meaning even if the rules chose a later expiry.
            let expires_at = match (admitted.expires_at, ev.expiration()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            store_event(txn, dbs, ev, now, expires_at)?;
        }
        // An accepted deletion takes effect even when the rules keep the kind 5 itself out
        // of storage: the client was told its deletion was accepted.
        if ev.kind == 5 {
            self.apply_deletion(txn, ev)?;
        }
        Ok(WriteOutcome::Accepted)
    }

    /// Runs the rules over a buffered view of the state; applies their changes only if they
    /// accept. A panicking rule refuses the event instead of killing the writer.
    fn admit(
        &self,
        txn: &mut RwTxn,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> StoreResult<Result<Admitted, Rejection>> {
        let (decision, changes) = {
            let mut overlay = Overlay::new(txn, self.dbs.state);
            let decision = catch_unwind(AssertUnwindSafe(|| {
                self.rules.admit(ev, publisher, now, &mut overlay)
            }));
            (decision, overlay.into_changes())
        };
        let decision = decision.unwrap_or_else(|_| {
            tracing::error!(id = %ev.id, kind = ev.kind, "admission rules panicked");
            Err(Rejection(
                "error: internal error while checking the event".into(),
            ))
        });
        if decision.is_ok() {
            state::apply(txn, self.dbs.state, changes)?;
        }
        Ok(decision)
    }

    fn update_state(&self, txn: &mut RwTxn, f: StateFn) -> StoreResult<Outcome> {
        let (result, changes) = {
            let mut overlay = Overlay::new(txn, self.dbs.state);
            let result = catch_unwind(AssertUnwindSafe(|| f(&mut overlay)));
            (result, overlay.into_changes())
        };
        Ok(match result {
            Ok(Ok(())) => {
                state::apply(txn, self.dbs.state, changes)?;
                Outcome::State(Ok(()))
            }
            Ok(Err(rejection)) => Outcome::State(Err(rejection)),
            Err(_) => Outcome::Failed(StoreError::Backend("state change panicked".into())),
        })
    }

    fn may_delete(&self, deleter: &Hex32, target: &Event) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.rules.may_delete(deleter, target))).unwrap_or(false)
    }

    /// The refusal of the first stored target of the kind 5 `del` that the rules will not let
    /// its author delete at all (e.g. a message with several recipients, deleted by one).
    fn refused_deletion(&self, txn: &RwTxn, del: &Event) -> StoreResult<Option<Rejection>> {
        for id in del.tag_values("e").filter_map(Hex32::from_hex) {
            let Some(target) = load_event(txn, &self.dbs, &id)? else {
                continue;
            };
            let refusal = catch_unwind(AssertUnwindSafe(|| {
                self.rules.refuse_deletion(&del.pubkey, &target)
            }))
            .unwrap_or_else(|_| {
                Some(Rejection(
                    "error: internal error while checking the deletion".into(),
                ))
            });
            if refusal.is_some() {
                return Ok(refusal);
            }
        }
        Ok(None)
    }

    /// Is `ev` refused by a tombstone? Only a tombstone written by someone allowed to delete
    /// `ev` counts: a stranger cannot block an event by "deleting" its id in advance.
    fn id_tombstoned(&self, txn: &RwTxn, ev: &Event) -> StoreResult<bool> {
        let deleters: Vec<Hex32> =
            self.dbs
                .tomb_ids
                .prefix_iter(txn, &ev.id.0)
                .map_err(backend("read id tombstones"))?
                .map(|entry| {
                    let (key, _) = entry.map_err(backend("read id tombstones"))?;
                    let mut deleter = [0u8; 32];
                    deleter.copy_from_slice(key.get(32..64).ok_or_else(|| {
                        StoreError::Corrupt(format!("tombstone key for {}", ev.id))
                    })?);
                    Ok(Hex32(deleter))
                })
                .collect::<StoreResult<_>>()?;
        Ok(deleters.iter().any(|d| self.may_delete(d, ev)))
    }

    /// NIP-09: removes what the kind 5 `del` may delete and records tombstones.
    fn apply_deletion(&self, txn: &mut RwTxn, del: &Event) -> StoreResult<()> {
        let dbs = &self.dbs;
        let mut ids: Vec<Hex32> = del.tag_values("e").filter_map(Hex32::from_hex).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            // When the target is not here (yet), the tombstone alone refuses it later, if
            // this deleter may delete it.
            if let Some(target) = load_event(txn, dbs, &id)? {
                if target.kind == 5 || !self.may_delete(&del.pubkey, &target) {
                    continue;
                }
                remove_event(txn, dbs, &id)?;
            }
            dbs.tomb_ids
                .put(txn, &keys::tomb_id_key(&id, &del.pubkey), &[])
                .map_err(backend("write id tombstone"))?;
        }

        for value in del.tag_values("a") {
            let Some((owner, addr, d)) = keys::parse_a_tag(value) else {
                continue;
            };
            let stored = dbs
                .addr
                .get(txn, &addr)
                .map_err(backend("look up address"))?
                .and_then(keys::split_addr_value);
            let allowed = owner == del.pubkey
                || match &stored {
                    Some((_, id)) => load_event(txn, dbs, id)?
                        .is_some_and(|target| self.may_delete(&del.pubkey, &target)),
                    None => false,
                };
            if !allowed {
                continue;
            }
            if let Some((created_at, id)) = stored {
                if created_at <= del.created_at {
                    remove_event(txn, dbs, &id)?;
                }
            }
            let until = dbs
                .tomb_addrs
                .get(txn, &addr)
                .map_err(backend("look up address tombstone"))?
                .and_then(read_u64)
                .map_or(del.created_at, |t| t.max(del.created_at));
            dbs.tomb_addrs
                .put(txn, &addr, &keys::tomb_addr_value(until, d))
                .map_err(backend("write address tombstone"))?;
        }
        Ok(())
    }

    /// Removes up to [`PURGE_CHUNK`] events expired at `now`; says whether more remain.
    fn purge(&self, txn: &mut RwTxn, now: u64) -> StoreResult<(u64, bool)> {
        let dbs = &self.dbs;
        let end = keys::expiry_key(now, &Hex32([0xff; 32]));
        let mut expired: Vec<Vec<u8>> = dbs
            .expiry
            .range(txn, &(Bound::Unbounded, Bound::Included(end.as_slice())))
            .map_err(backend("walk expiry index"))?
            .take(PURGE_CHUNK + 1)
            .map(|entry| entry.map(|(k, _)| k.to_vec()))
            .collect::<heed::Result<_>>()
            .map_err(backend("walk expiry index"))?;
        let more = expired.len() > PURGE_CHUNK;
        expired.truncate(PURGE_CHUNK);
        let mut removed = 0;
        for key in expired {
            let Some(id) = key.get(8..).and_then(|b| <[u8; 32]>::try_from(b).ok()) else {
                continue;
            };
            if remove_event(txn, dbs, &Hex32(id))? {
                removed += 1;
            }
            // Normally already gone with the event; this clears a stray entry too.
            dbs.expiry
                .delete(txn, &key)
                .map_err(backend("delete expiry entry"))?;
        }
        Ok((removed, more))
    }
}

fn deleted() -> WriteOutcome {
    WriteOutcome::Rejected("blocked: event was deleted".into())
}

/// `until` of an address tombstone (the value may carry the `d` after it).
fn read_u64(b: &[u8]) -> Option<u64> {
    keys::split_tomb_addr_value(b).map(|(until, _)| until)
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

/// Writes the record and every index entry of `ev`.
pub(super) fn store_event(
    txn: &mut RwTxn,
    dbs: &Dbs,
    ev: &Event,
    received_at: u64,
    expires_at: Option<u64>,
) -> StoreResult<()> {
    let json = ev.to_json();
    dbs.events
        .put(
            txn,
            &ev.id.0,
            &encode_record(received_at, expires_at, &json),
        )
        .map_err(backend("write event record"))?;
    let meta = keys::meta(ev);
    for (index, key) in keys::index_keys(ev) {
        dbs.index(index)
            .put(txn, &key, &meta)
            .map_err(backend("write index entry"))?;
    }
    if let Some(expires_at) = expires_at {
        dbs.expiry
            .put(txn, &keys::expiry_key(expires_at, &ev.id), &[])
            .map_err(backend("write expiry entry"))?;
    }
    if let Some(addr) = keys::event_addr_key(ev) {
        dbs.addr
            .put(txn, &addr, &keys::addr_value(ev.created_at, &ev.id))
            .map_err(backend("write address entry"))?;
    }
    // The next place in commit order; the counter lives in the transaction, so a batch that
    // does not commit hands out nothing.
    let seq = (keys::last_seq(txn, dbs)? + 1).to_be_bytes();
    dbs.meta
        .put(txn, keys::LAST_SEQ, &seq)
        .map_err(backend("write last_seq"))?;
    dbs.seq
        .put(txn, &seq, &ev.id.0)
        .map_err(backend("write seq entry"))?;
    dbs.event_seq
        .put(txn, &ev.id.0, &seq)
        .map_err(backend("write seq entry"))?;
    Ok(())
}

/// Removes the event and every index entry pointing at it (the exact mirror of
/// [`store_event`]), so a deleted, replaced or purged event vanishes from every path.
/// Returns whether it was there.
pub(super) fn remove_event(txn: &mut RwTxn, dbs: &Dbs, id: &Hex32) -> StoreResult<bool> {
    let Some(bytes) = dbs.events.get(txn, &id.0).map_err(backend("read event"))? else {
        return Ok(false);
    };
    let parsed = decode_record(bytes).and_then(|record| {
        let ev: Event = serde_json::from_str(record.json).map_err(|e| e.to_string())?;
        Ok((ev, record.expires_at))
    });
    match parsed {
        Ok((ev, expires_at)) => {
            for (index, key) in keys::index_keys(&ev) {
                dbs.index(index)
                    .delete(txn, &key)
                    .map_err(backend("delete index entry"))?;
            }
            if let Some(expires_at) = expires_at {
                dbs.expiry
                    .delete(txn, &keys::expiry_key(expires_at, id))
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
    let seq = dbs
        .event_seq
        .get(txn, &id.0)
        .map_err(backend("read seq entry"))?
        .map(<[u8]>::to_vec);
    if let Some(seq) = seq {
        dbs.seq
            .delete(txn, &seq)
            .map_err(backend("delete seq entry"))?;
        dbs.event_seq
            .delete(txn, &id.0)
            .map_err(backend("delete seq entry"))?;
    }
    dbs.events
        .delete(txn, &id.0)
        .map_err(backend("delete event record"))?;
    Ok(true)
}
