//! The single writer: group commit of everything queued, one transaction per batch.
//!
//! A dedicated thread (not a runtime worker: the rules are synchronous and read the state
//! inside the transaction, so it blocks on each statement) takes the first request, then
//! whatever else is queued (up to `max_batch`), and runs them all in one transaction that
//! begins with `pg_advisory_xact_lock`. Every instance sharing the database takes the same
//! lock, so batches from all instances run one after another: the rules' read-then-write of
//! the state keeps the single-writer semantics across instances, and `seq` (commit order) is
//! handed out inside the lock, so it has no gaps and commits in order. Requests are answered
//! only once COMMIT returned.

use crate::keys::{self, from_ts, ts};
use crate::state::{self, Overlay};
use crate::Io;
use deadpool_postgres::{Object, Pool};
use mls_proto::{Event, Hex32, KindClass};
use mls_store::{
    Admission, Admitted, BackupItem, Publisher, Rejection, StateWrite, StoreError, StoreResult,
    StoredEvent, Tombstone, WriteOutcome, MAX_STATE_KEY_LEN,
};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;

pub(crate) type StateFn = Box<dyn FnOnce(&mut dyn StateWrite) -> Result<(), Rejection> + Send>;

/// Most expired events removed per transaction, so a large backlog cannot make one huge
/// transaction (and hold up the events queued behind it).
const PURGE_CHUNK: i64 = 10_000;

pub(crate) enum Request {
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
    /// Backup items put back verbatim, in one transaction.
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
    /// Connecting, beginning or committing failed: nothing in the batch is durable.
    Commit(String),
}

pub(crate) struct Writer {
    pub io: Arc<Io>,
    pub pool: Pool,
    pub rules: Arc<dyn Admission>,
    pub max_batch: usize,
    /// The advisory lock every instance's writer takes (one per schema).
    pub lock_key: i64,
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
            Ok(outcomes) => {
                tracing::trace!(
                    size = batch.len(),
                    micros = started.elapsed().as_micros() as u64,
                    "store batch committed"
                );
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

    /// Runs `batch` in one transaction under the writer lock and commits it.
    fn commit_batch(&self, batch: &mut [Request]) -> Result<Vec<Outcome>, BatchError> {
        let io = &*self.io;
        let client = match io.block_on(self.pool.get()) {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(BatchError::Commit(format!("database connection: {e}"))),
            Err(e) => return Err(BatchError::Commit(format!("database connection: {e}"))),
        };
        let begin = async {
            client.batch_execute("BEGIN").await?;
            client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_key])
                .await?;
            let row = client
                .query_one("SELECT last_seq FROM store_meta", &[])
                .await?;
            Ok::<i64, tokio_postgres::Error>(row.get(0))
        };
        let began = match io.block_on(begin) {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        let mut last_seq = match began {
            Ok(seq) => seq,
            Err(e) => {
                discard(io, client);
                return Err(BatchError::Commit(format!("begin write transaction: {e}")));
            }
        };
        let seq_before = last_seq;
        let now = mls_proto::unix_now();
        let mut tx = Tx {
            io: &self.io,
            client: &client,
            rules: &*self.rules,
            last_seq: &mut last_seq,
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut failure = None;
        for request in batch.iter_mut() {
            let outcome = match request {
                Request::Write {
                    event, publisher, ..
                } => tx
                    .write_event(event, publisher, now)
                    .map(Outcome::Write)
                    .map_err(|e| format!("event {}: {e}", event.id)),
                Request::State { f, .. } => match f.take() {
                    Some(f) => tx.update_state(f).map_err(|e| format!("state change: {e}")),
                    None => Ok(Outcome::Failed(StoreError::Backend(
                        "state change not applied: its transaction failed".into(),
                    ))),
                },
                Request::Purge { now, .. } => tx
                    .purge(*now)
                    .map(|(removed, more)| Outcome::Purge { removed, more })
                    .map_err(|e| format!("purge: {e}")),
                Request::Restore { items, .. } => tx
                    .restore(items)
                    .map(Outcome::Restore)
                    .map_err(|e| format!("restore: {e}")),
            };
            match outcome {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            // A connection that still rolls back says one request was bad (the others are
            // retried alone); one that does not says the database is gone (all fail now,
            // rather than each waiting out the deadline again).
            return Err(if rollback(io, client) {
                BatchError::Processing(e)
            } else {
                BatchError::Commit(e)
            });
        }
        let commit = async {
            if last_seq != seq_before {
                client
                    .execute("UPDATE store_meta SET last_seq = $1", &[&last_seq])
                    .await?;
            }
            client.batch_execute("COMMIT").await
        };
        let committed = match io.block_on(commit) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = committed {
            // Whether COMMIT took effect is unknown when the connection broke: every request
            // is failed (never acknowledged without a confirmed commit).
            discard(io, client);
            return Err(BatchError::Commit(format!("commit write transaction: {e}")));
        }
        Ok(outcomes)
    }
}

/// Error text with the server's own message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => e.to_string(),
    }
}

/// Ends a failed transaction; says whether the connection could. One that cannot is closed
/// rather than returned to the pool mid-transaction.
fn rollback(io: &Io, client: Object) -> bool {
    let ok = matches!(io.block_on(client.batch_execute("ROLLBACK")), Ok(Ok(())));
    if !ok {
        discard(io, client);
    }
    ok
}

fn discard(io: &Io, client: Object) {
    let _guard = io.handle.enter();
    drop(Object::take(client));
}

/// One batch's transaction.
struct Tx<'a> {
    io: &'a Io,
    client: &'a Object,
    rules: &'a dyn Admission,
    last_seq: &'a mut i64,
}

const INSERT_EVENT: &str = "INSERT INTO events \
    (id, seq, pubkey, kind, created_at, received_at, expires_at, addr, json) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const INSERT_TAGS: &str = "INSERT INTO event_tags (event_id, name, value, kind, created_at) \
    SELECT $1, t.name, t.value, $4, $5 FROM unnest($2::text[], $3::bytea[]) AS t (name, value)";

impl Tx<'_> {
    fn block<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> StoreResult<T> {
        match self.io.block_on(f) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Backend(format!("{what}: {}", describe(&e)))),
            Err(e) => Err(StoreError::Backend(format!("{what}: {e}"))),
        }
    }

    fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.block(what, async {
            let stmt = self.client.prepare_cached(sql).await?;
            self.client.query(&stmt, params).await
        })
    }

    fn execute(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<u64> {
        self.block(what, async {
            let stmt = self.client.prepare_cached(sql).await?;
            self.client.execute(&stmt, params).await
        })
    }

    /// One event, in the order the relay promises: duplicate, tombstones, newer version,
    /// rules (with their state changes), then storage and NIP-09 deletions.
    fn write_event(
        &mut self,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> StoreResult<WriteOutcome> {
        if ev.class() == KindClass::Ephemeral {
            return Ok(WriteOutcome::Accepted); // the relay delivers these live; never stored
        }
        let id = ev.id.0.to_vec();
        if !self
            .query(
                "look up event id",
                "SELECT 1 FROM events WHERE id = $1",
                &[&id],
            )?
            .is_empty()
        {
            return Ok(WriteOutcome::Duplicate);
        }
        // Deletions of deletions do nothing (NIP-09), so a kind 5 is never tombstoned.
        if ev.kind != 5 && self.id_tombstoned(ev)? {
            return Ok(deleted());
        }

        let address = keys::event_addr(ev);
        let mut replaces = None;
        if let Some(addr) = &address {
            let until = self.query(
                "look up address tombstone",
                "SELECT until FROM tomb_addrs WHERE addr = $1",
                &[addr],
            )?;
            if let Some(until) = until.first().map(|r| from_ts(r.get(0))) {
                if until >= ev.created_at {
                    return Ok(deleted());
                }
            }
            let stored = self.query(
                "look up address",
                "SELECT created_at, id FROM events WHERE addr = $1",
                &[addr],
            )?;
            if let Some(row) = stored.first() {
                let created_at = from_ts(row.get(0));
                let stored_id: Vec<u8> = row.get(1);
                if created_at > ev.created_at
                    || (created_at == ev.created_at && stored_id.as_slice() < &ev.id.0[..])
                {
                    return Ok(WriteOutcome::Rejected(
                        "invalid: a newer version of this event is already stored".into(),
                    ));
                }
                replaces = Some(stored_id);
            }
        }

        // Before the rules run: a refused deletion must leave no state change behind.
        if ev.kind == 5 {
            if let Some(refusal) = self.refused_deletion(ev)? {
                return Ok(WriteOutcome::Rejected(refusal.0));
            }
        }
        let admitted = match self.admit(ev, publisher, now)? {
            Ok(a) => a,
            Err(rejection) => return Ok(WriteOutcome::Rejected(rejection.0)),
        };

        if admitted.store {
            if let Some(old) = replaces {
                self.execute(
                    "remove replaced version",
                    "DELETE FROM events WHERE id = $1",
                    &[&old],
                )?;
            }
            // NIP-40 keeps its meaning even if the rules chose a later expiry.
            let expires_at = match (admitted.expires_at, ev.expiration()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.store_event(ev, now, expires_at, address)?;
        }
        // An accepted deletion takes effect even when the rules keep the kind 5 itself out
        // of storage: the client was told its deletion was accepted.
        if ev.kind == 5 {
            self.apply_deletion(ev)?;
        }
        Ok(WriteOutcome::Accepted)
    }

    fn store_event(
        &mut self,
        ev: &Event,
        received_at: u64,
        expires_at: Option<u64>,
        addr: Option<Vec<u8>>,
    ) -> StoreResult<()> {
        *self.last_seq += 1;
        let id = ev.id.0.to_vec();
        let kind = i32::from(ev.kind);
        let created_at = ts(ev.created_at);
        self.execute(
            "insert event",
            INSERT_EVENT,
            &[
                &id,
                &*self.last_seq,
                &ev.pubkey.0.to_vec(),
                &kind,
                &created_at,
                &ts(received_at),
                &expires_at.map(ts),
                &addr,
                &ev.to_json(),
            ],
        )?;
        let tags = keys::indexed_tags(ev);
        if !tags.is_empty() {
            let (names, values): (Vec<String>, Vec<Vec<u8>>) = tags.into_iter().unzip();
            self.execute(
                "insert event tags",
                INSERT_TAGS,
                &[&id, &names, &values, &kind, &created_at],
            )?;
        }
        Ok(())
    }

    /// Runs the rules over a buffered view of the state; applies their changes only if they
    /// accept. A panicking rule refuses the event instead of killing the writer.
    fn admit(
        &self,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> StoreResult<Result<Admitted, Rejection>> {
        let mut overlay = Overlay::new(self.io, self.client);
        let decision = catch_unwind(AssertUnwindSafe(|| {
            self.rules.admit(ev, publisher, now, &mut overlay)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(id = %ev.id, kind = ev.kind, "admission rules panicked");
            Err(Rejection(
                "error: internal error while checking the event".into(),
            ))
        });
        if decision.is_ok() {
            self.io
                .block_on(state::apply(self.client, overlay.into_changes()))??;
        }
        Ok(decision)
    }

    fn update_state(&self, f: StateFn) -> StoreResult<Outcome> {
        let mut overlay = Overlay::new(self.io, self.client);
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut overlay)));
        Ok(match result {
            Ok(Ok(())) => {
                self.io
                    .block_on(state::apply(self.client, overlay.into_changes()))??;
                Outcome::State(Ok(()))
            }
            Ok(Err(rejection)) => Outcome::State(Err(rejection)),
            Err(_) => Outcome::Failed(StoreError::Backend("state change panicked".into())),
        })
    }

    fn may_delete(&self, deleter: &Hex32, target: &Event) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.rules.may_delete(deleter, target))).unwrap_or(false)
    }

    /// Is `ev` refused by a tombstone? Only a tombstone written by someone allowed to delete
    /// `ev` counts: a stranger cannot block an event by "deleting" its id in advance.
    fn id_tombstoned(&self, ev: &Event) -> StoreResult<bool> {
        let rows = self.query(
            "read id tombstones",
            "SELECT deleter FROM tomb_ids WHERE id = $1",
            &[&ev.id.0.to_vec()],
        )?;
        for row in rows {
            let deleter: Vec<u8> = row.get(0);
            let deleter = <[u8; 32]>::try_from(deleter.as_slice())
                .map_err(|_| StoreError::Corrupt(format!("tombstone for {}", ev.id)))?;
            if self.may_delete(&Hex32(deleter), ev) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn load_event(&self, sql: &str, key: &Vec<u8>) -> StoreResult<Option<(u64, Event)>> {
        let rows = self.query("read event", sql, &[key])?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let json: String = row.get(1);
        let ev: Event = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("event JSON: {e}")))?;
        Ok(Some((from_ts(row.get(0)), ev)))
    }

    /// NIP-09: removes what the kind 5 `del` may delete and records tombstones.
    fn apply_deletion(&self, del: &Event) -> StoreResult<()> {
        let mut ids: Vec<Hex32> = del.tag_values("e").filter_map(Hex32::from_hex).collect();
        ids.sort_unstable();
        ids.dedup();
        let deleter = del.pubkey.0.to_vec();
        for id in ids {
            let id = id.0.to_vec();
            // When the target is not here (yet), the tombstone alone refuses it later, if
            // this deleter may delete it.
            if let Some((_, target)) =
                self.load_event("SELECT created_at, json FROM events WHERE id = $1", &id)?
            {
                if target.kind == 5 || !self.may_delete(&del.pubkey, &target) {
                    continue;
                }
                self.execute("delete event", "DELETE FROM events WHERE id = $1", &[&id])?;
            }
            self.execute(
                "write id tombstone",
                "INSERT INTO tomb_ids (id, deleter) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&id, &deleter],
            )?;
        }

        for value in del.tag_values("a") {
            let Some(address) = keys::parse_a_tag(value) else {
                continue;
            };
            let stored = self.load_event(
                "SELECT created_at, json FROM events WHERE addr = $1",
                &address.key,
            )?;
            let allowed = address.owner == del.pubkey
                || stored
                    .as_ref()
                    .is_some_and(|(_, target)| self.may_delete(&del.pubkey, target));
            if !allowed {
                continue;
            }
            if let Some((created_at, target)) = stored {
                if created_at <= del.created_at {
                    self.execute(
                        "delete event",
                        "DELETE FROM events WHERE id = $1",
                        &[&target.id.0.to_vec()],
                    )?;
                }
            }
            self.tombstone_address(&address, del.created_at)?;
        }
        Ok(())
    }

    /// Records that the versions of `address` created at or before `until` are deleted (the
    /// later of two tombstones wins).
    fn tombstone_address(&self, address: &keys::Address<'_>, until: u64) -> StoreResult<()> {
        self.execute(
            "write address tombstone",
            "INSERT INTO tomb_addrs (addr, kind, pubkey, d, until) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (addr) DO UPDATE SET until = GREATEST(tomb_addrs.until, EXCLUDED.until)",
            &[
                &address.key,
                &i32::from(address.kind),
                &address.owner.0.to_vec(),
                &address.d,
                &ts(until),
            ],
        )?;
        Ok(())
    }

    /// The refusal of the first stored target of the kind 5 `del` that the rules will not let
    /// its author delete at all (e.g. a message with several recipients, deleted by one).
    fn refused_deletion(&self, del: &Event) -> StoreResult<Option<Rejection>> {
        for id in del.tag_values("e").filter_map(Hex32::from_hex) {
            let Some((_, target)) = self.load_event(
                "SELECT created_at, json FROM events WHERE id = $1",
                &id.0.to_vec(),
            )?
            else {
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

    /// Puts backup items back verbatim: no rules run, no deletion is applied (the rules'
    /// state and the tombstones come as their own items).
    fn restore(&mut self, items: &[BackupItem]) -> StoreResult<Vec<WriteOutcome>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            out.push(match item {
                BackupItem::Event(stored) => self.restore_event(stored)?,
                BackupItem::State { key, value } => {
                    if key.is_empty() || key.len() > MAX_STATE_KEY_LEN {
                        WriteOutcome::Rejected(format!(
                            "invalid: state key must be 1 to {MAX_STATE_KEY_LEN} bytes, got {}",
                            key.len()
                        ))
                    } else {
                        self.execute(
                            "write state key",
                            "INSERT INTO state (key, value) VALUES ($1, $2) \
                             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                            &[key, value],
                        )?;
                        WriteOutcome::Accepted
                    }
                }
                BackupItem::Tombstone(Tombstone::Id { id, deleter }) => {
                    self.execute(
                        "write id tombstone",
                        "INSERT INTO tomb_ids (id, deleter) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&id.0.to_vec(), &deleter.0.to_vec()],
                    )?;
                    WriteOutcome::Accepted
                }
                BackupItem::Tombstone(Tombstone::Address {
                    kind,
                    pubkey,
                    d,
                    until,
                }) => match KindClass::of(*kind) {
                    KindClass::Replaceable | KindClass::Addressable => {
                        let d = if KindClass::of(*kind) == KindClass::Addressable {
                            d.as_str()
                        } else {
                            ""
                        };
                        let address = keys::Address {
                            kind: *kind,
                            owner: *pubkey,
                            d,
                            key: keys::addr_key(*kind, pubkey, d),
                        };
                        self.tombstone_address(&address, *until)?;
                        WriteOutcome::Accepted
                    }
                    _ => WriteOutcome::Rejected(format!("invalid: kind {kind} has no address")),
                },
            });
        }
        Ok(out)
    }

    fn restore_event(&mut self, stored: &StoredEvent) -> StoreResult<WriteOutcome> {
        let ev = &stored.event;
        if ev.class() == KindClass::Ephemeral {
            return Ok(WriteOutcome::Rejected(
                "invalid: ephemeral events are not stored".into(),
            ));
        }
        let id = ev.id.0.to_vec();
        if !self
            .query(
                "look up event id",
                "SELECT 1 FROM events WHERE id = $1",
                &[&id],
            )?
            .is_empty()
        {
            return Ok(WriteOutcome::Duplicate);
        }
        let address = keys::event_addr(ev);
        if let Some(addr) = &address {
            let current = self.query(
                "look up address",
                "SELECT created_at, id FROM events WHERE addr = $1",
                &[addr],
            )?;
            if let Some(row) = current.first() {
                let created_at = from_ts(row.get(0));
                let current_id: Vec<u8> = row.get(1);
                if created_at > ev.created_at
                    || (created_at == ev.created_at && current_id.as_slice() < &ev.id.0[..])
                {
                    return Ok(WriteOutcome::Rejected(
                        "invalid: a newer version of this event is already stored".into(),
                    ));
                }
                self.execute(
                    "remove replaced version",
                    "DELETE FROM events WHERE id = $1",
                    &[&current_id],
                )?;
            }
        }
        self.store_event(ev, stored.received_at, stored.expires_at, address)?;
        Ok(WriteOutcome::Accepted)
    }

    /// Removes up to [`PURGE_CHUNK`] events expired at `now`; says whether more remain.
    fn purge(&self, now: u64) -> StoreResult<(u64, bool)> {
        let removed = self.execute(
            "purge expired events",
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)",
            &[&ts(now), &PURGE_CHUNK],
        )?;
        Ok((removed, removed >= PURGE_CHUNK as u64))
    }
}

fn deleted() -> WriteOutcome {
    WriteOutcome::Rejected("blocked: event was deleted".into())
}
