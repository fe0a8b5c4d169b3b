//! The single writer every backend shares: group commit of everything queued, one
//! transaction per batch, answers only after the commit.
//!
//! A dedicated thread (never a runtime worker: the rules are synchronous and read the state
//! inside the transaction, so a database backend blocks on each statement) blocks for the
//! first request, takes whatever else is already queued (up to `max_batch`), runs them all in
//! order in one transaction, commits, and only then answers. No timer: under load the queue
//! refills during the commit, so batches grow by themselves and a burst costs one commit
//! rather than one per event. The backend supplies the transaction ([`WriteBackend`]); what
//! happens inside it is [`crate::write_txn`].

use crate::write_txn::{self, Rules, StateOutcome, WriteTxn};
use crate::{
    Admission, BackupItem, CommitFeed, Publisher, Rejection, StateWrite, StoreError, StoreResult,
    WriteOutcome,
};
use mls_proto::Event;
use std::collections::VecDeque;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::oneshot;

/// Most expired events removed per transaction, so a large backlog cannot make one huge
/// transaction (and hold up the events queued behind it).
pub const PURGE_CHUNK: usize = 10_000;

/// A state-only change, run inside the writer's transaction.
pub type StateFn = Box<dyn FnOnce(&mut dyn StateWrite) -> Result<(), Rejection> + Send>;

/// How a backend opens and ends the writer's transactions.
pub trait WriteBackend: Send + 'static {
    type Txn<'a>: WriteTxn
    where
        Self: 'a;

    /// Begins a write transaction, under whatever makes this the only writer (a lock shared
    /// by every instance on one database). An error fails the whole batch.
    fn begin(&self) -> Result<Self::Txn<'_>, String>;

    /// Makes the transaction durable. An error fails the whole batch: nothing is answered as
    /// stored unless the commit is known to have happened.
    fn commit(&self, txn: Self::Txn<'_>) -> Result<(), String>;

    /// Abandons the transaction after one request failed. False when the backend itself is
    /// unusable (a lost connection): then every request of the batch fails at once instead
    /// of being retried alone.
    fn rollback(&self, txn: Self::Txn<'_>) -> bool;

    /// Whether the last failure (of `begin`, a request or `commit`) was the database
    /// aborting the transaction because another writer got there first: the whole batch
    /// then runs again from the start, up to [`WriteBackend::max_attempts`] runs. Backends
    /// that serialise their writers by a lock never see it (the default).
    fn contended(&self) -> bool {
        false
    }

    /// Most runs of one batch that keeps losing to contention.
    fn max_attempts(&self) -> u32 {
        1
    }
}

enum Request {
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
    /// Audiences worked out again (see `EventStore::refresh_audiences`), a chunk per batch.
    Refresh {
        /// The last `seq` gone through by earlier chunks.
        after: u64,
        done: u64,
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
    Refresh { last: u64, done: u64, more: bool },
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
            (
                Request::Refresh {
                    done: before,
                    reply,
                    ..
                },
                Outcome::Refresh { last, done, more },
            ) => {
                if more {
                    carry.push_back(Request::Refresh {
                        after: last,
                        done: before + done,
                        reply,
                    });
                } else {
                    drop(reply.send(Ok(before + done)));
                }
            }
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
            Request::Refresh { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// Why a batch did not commit.
enum BatchError {
    /// A request failed part-way (the transaction is unusable): the others may be fine.
    Processing(String),
    /// Beginning or committing failed, or the backend is gone: nothing in the batch is
    /// durable.
    Commit(String),
}

/// A request and when it was queued (how long batches wait shows in the writer's trace).
struct Queued {
    at: Instant,
    request: Request,
}

/// Where a batch's time went: running its requests (rules, lookups, puts) and the durable
/// commit (for LMDB: writing the dirty pages and syncing them).
#[derive(Default)]
struct BatchTiming {
    run: std::time::Duration,
    commit: std::time::Duration,
}

/// What a committed batch tells the commit stream.
struct Committed {
    outcomes: Vec<Outcome>,
    last_seq: u64,
    transient: Vec<(u64, Arc<Event>)>,
}

struct Writer<B> {
    backend: B,
    rules: Arc<dyn Admission>,
    max_batch: usize,
    /// Rung after each durable commit (the commit stream).
    feed: Arc<CommitFeed>,
}

impl<B: WriteBackend> Writer<B> {
    /// The writer thread's loop; returns when every sender is gone and the queue is drained.
    fn run(self, queue: mpsc::Receiver<Queued>) {
        let mut pending: VecDeque<Request> = VecDeque::new();
        loop {
            // When the oldest request of this batch was queued (a carried-over request: now).
            let mut oldest = None;
            if pending.is_empty() {
                match queue.recv() {
                    Ok(q) => {
                        oldest = Some(q.at);
                        pending.push_back(q.request);
                    }
                    Err(_) => return, // closed and drained
                }
            }
            while pending.len() < self.max_batch {
                match queue.try_recv() {
                    Ok(q) => {
                        oldest.get_or_insert(q.at);
                        pending.push_back(q.request);
                    }
                    Err(_) => break,
                }
            }
            let batch: Vec<Request> = pending.drain(..).collect();
            self.run_batch(batch, &mut pending, oldest);
        }
    }

    fn run_batch(
        &self,
        mut batch: Vec<Request>,
        carry: &mut VecDeque<Request>,
        queued_at: Option<Instant>,
    ) {
        let started = Instant::now();
        let mut timing = BatchTiming::default();
        let mut attempt = 1;
        let result = loop {
            match self.commit_batch(&mut batch, &mut timing) {
                Err(BatchError::Processing(e) | BatchError::Commit(e))
                    if self.backend.contended() =>
                {
                    if attempt >= self.backend.max_attempts() {
                        break Err(BatchError::Commit(format!(
                            "{e} (contention: the transaction was aborted {attempt} times)"
                        )));
                    }
                    tracing::debug!(error = %e, attempt, "store transaction aborted by contention; running it again");
                    // Back off, doubling, with as much jitter again, so contenders spread out
                    // rather than colliding again in step.
                    let base = 5u64 << attempt.min(6);
                    let seed = u64::from(std::process::id())
                        ^ u64::from(
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap_or_default()
                                .subsec_nanos(),
                        );
                    std::thread::sleep(std::time::Duration::from_millis(base + seed % base));
                    attempt += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok(Committed {
                outcomes,
                last_seq,
                transient,
            }) => {
                tracing::trace!(
                    size = outcomes.len(),
                    micros = started.elapsed().as_micros() as u64,
                    wait_us =
                        queued_at.map_or(0, |at| started.duration_since(at).as_micros() as u64),
                    run_us = timing.run.as_micros() as u64,
                    commit_us = timing.commit.as_micros() as u64,
                    attempt,
                    "store batch committed"
                );
                // Before the answers: a publisher that sees its OK finds the stream rung.
                self.feed.committed(last_seq, transient);
                // A transaction that filled up took a prefix of the batch; the rest runs
                // next, before anything queued later.
                let rest = batch.split_off(outcomes.len());
                for request in rest.into_iter().rev() {
                    carry.push_front(request);
                }
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    request.answer(outcome, carry);
                }
            }
            // One bad request must not sink the others: run each alone.
            Err(BatchError::Processing(e)) if batch.len() > 1 => {
                tracing::warn!(error = %e, size = batch.len(), "store batch failed; retrying one by one");
                for request in batch {
                    self.run_batch(vec![request], carry, None);
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

    /// Runs `batch` in one transaction and commits it.
    fn commit_batch(
        &self,
        batch: &mut [Request],
        timing: &mut BatchTiming,
    ) -> Result<Committed, BatchError> {
        let began = Instant::now();
        let mut txn = self
            .backend
            .begin()
            .map_err(|e| BatchError::Commit(format!("begin write transaction: {e}")))?;
        let events: Vec<&Event> = batch
            .iter()
            .flat_map(|r| match r {
                Request::Write { event, .. } => vec![&**event],
                Request::Restore { items, .. } => items
                    .iter()
                    .filter_map(|item| match item {
                        BackupItem::Event(stored) => Some(&stored.event),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            })
            .collect();
        if let Err(e) = txn.prefetch(&events) {
            return Err(self.abandon(txn, format!("prefetch: {e}")));
        }
        match self.run_requests(&mut txn, batch) {
            Ok((outcomes, transient)) => {
                if let Err(e) = txn.flush() {
                    return Err(self.abandon(txn, format!("flush: {e}")));
                }
                let last_seq = match txn.last_seq() {
                    Ok(seq) => seq,
                    Err(e) => return Err(self.abandon(txn, format!("read last seq: {e}"))),
                };
                let committing = Instant::now();
                timing.run += committing - began;
                self.backend
                    .commit(txn)
                    .map_err(|e| BatchError::Commit(format!("commit write transaction: {e}")))?;
                timing.commit += committing.elapsed();
                Ok(Committed {
                    outcomes,
                    last_seq,
                    transient,
                })
            }
            Err(e) => Err(self.abandon(txn, e)),
        }
    }

    /// Rolls back after `e`; says whether the others of the batch may be retried.
    fn abandon(&self, txn: B::Txn<'_>, e: String) -> BatchError {
        if self.backend.rollback(txn) {
            BatchError::Processing(e)
        } else {
            BatchError::Commit(e)
        }
    }

    /// Every request of the batch, in order; the first failure stops the batch.
    #[allow(clippy::type_complexity)]
    fn run_requests(
        &self,
        txn: &mut B::Txn<'_>,
        batch: &mut [Request],
    ) -> Result<(Vec<Outcome>, Vec<(u64, Arc<Event>)>), String> {
        let now = mls_proto::unix_now();
        let rules = Rules(&*self.rules);
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut transient = Vec::new();
        for request in batch.iter_mut() {
            if !outcomes.is_empty() && txn.full() {
                break; // the rest goes to the next transaction
            }
            let outcome = match request {
                Request::Write {
                    event, publisher, ..
                } => {
                    let failed = |e: StoreError| format!("event {}: {e}", event.id);
                    let seq = txn.last_seq().map_err(failed)?;
                    let outcome = rules
                        .write_event(txn, event, publisher, now)
                        .map_err(failed)?;
                    // Accepted without taking a seq: not stored, delivered from the notice.
                    if outcome == WriteOutcome::Accepted && txn.last_seq().map_err(failed)? == seq {
                        transient.push((seq, Arc::new((**event).clone())));
                    }
                    Outcome::Write(outcome)
                }
                Request::State { f, .. } => match f.take() {
                    Some(f) => match write_txn::update_state(txn, f)
                        .map_err(|e| format!("state change: {e}"))?
                    {
                        StateOutcome::Done(result) => Outcome::State(result),
                        StateOutcome::Panicked => {
                            Outcome::Failed(StoreError::Backend("state change panicked".into()))
                        }
                    },
                    None => Outcome::Failed(StoreError::Backend(
                        "state change not applied: its transaction failed".into(),
                    )),
                },
                Request::Purge { now, .. } => {
                    let (removed, more) = txn
                        .purge_expired(*now, PURGE_CHUNK)
                        .map_err(|e| format!("purge: {e}"))?;
                    Outcome::Purge { removed, more }
                }
                Request::Refresh { after, .. } => {
                    let (last, done, more) = rules
                        .refresh_audiences(txn, *after, PURGE_CHUNK)
                        .map_err(|e| format!("refresh audiences: {e}"))?;
                    Outcome::Refresh { last, done, more }
                }
                Request::Restore { items, .. } => Outcome::Restore(
                    rules
                        .restore(txn, items)
                        .map_err(|e| format!("restore: {e}"))?,
                ),
            };
            outcomes.push(outcome);
        }
        Ok((outcomes, transient))
    }
}

/// The writer thread of one store, and the queue to it. The store's write methods are its
/// methods.
pub struct WriterHandle {
    /// `None` once closed: later writes get [`StoreError::Closed`].
    queue: Mutex<Option<mpsc::Sender<Queued>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A poisoned lock only means another thread panicked while holding it; the guarded
/// `Option`s are always in a valid state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn answer<T>(reply: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
    reply
        .await
        .map_err(|_| StoreError::Backend("store writer stopped before answering".into()))?
}

impl WriterHandle {
    /// Starts the writer thread `name` over `backend`; it rings `feed` after each commit.
    pub fn start<B: WriteBackend>(
        name: &str,
        backend: B,
        rules: Arc<dyn Admission>,
        feed: Arc<CommitFeed>,
        max_batch: usize,
    ) -> StoreResult<WriterHandle> {
        let (sender, receiver) = mpsc::channel();
        let writer = Writer {
            backend,
            rules,
            max_batch: max_batch.max(1),
            feed,
        };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StoreError::Backend(format!("start the store writer thread: {e}")))?;
        Ok(WriterHandle {
            queue: Mutex::new(Some(sender)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn submit(&self, request: Request) -> StoreResult<()> {
        match lock(&self.queue).as_ref() {
            None => Err(StoreError::Closed),
            Some(queue) => queue
                .send(Queued {
                    at: Instant::now(),
                    request,
                })
                .map_err(|_| StoreError::Backend("store writer thread has stopped".into())),
        }
    }

    /// [`crate::EventStore::write`].
    pub async fn write(&self, event: Event, publisher: Publisher) -> StoreResult<WriteOutcome> {
        let (reply, answered) = oneshot::channel();
        self.submit(Request::Write {
            event: Box::new(event),
            publisher,
            reply,
        })?;
        answer(answered).await
    }

    /// [`crate::EventStore::update_state`].
    pub async fn update_state(&self, f: StateFn) -> StoreResult<Result<(), Rejection>> {
        let (reply, answered) = oneshot::channel();
        self.submit(Request::State { f: Some(f), reply })?;
        answer(answered).await
    }

    /// [`crate::EventStore::purge_expired`]: in chunks of [`PURGE_CHUNK`], one transaction
    /// each, so the writes queued meanwhile get their turn.
    pub async fn purge_expired(&self, now: u64) -> StoreResult<u64> {
        let (reply, answered) = oneshot::channel();
        self.submit(Request::Purge {
            now,
            purged: 0,
            reply,
        })?;
        answer(answered).await
    }

    /// [`crate::EventStore::refresh_audiences`], in chunks of [`PURGE_CHUNK`] events.
    pub async fn refresh_audiences(&self) -> StoreResult<u64> {
        let (reply, answered) = oneshot::channel();
        self.submit(Request::Refresh {
            after: 0,
            done: 0,
            reply,
        })?;
        answer(answered).await
    }

    /// [`crate::EventStore::restore`].
    pub async fn restore(&self, items: Vec<BackupItem>) -> StoreResult<Vec<WriteOutcome>> {
        let (reply, answered) = oneshot::channel();
        self.submit(Request::Restore { items, reply })?;
        answer(answered).await
    }

    /// Stops taking writes, lets the thread commit and answer what is already queued, and
    /// waits for it (at most a commit or two). Returns false if the thread had panicked.
    pub fn close(&self) -> bool {
        drop(lock(&self.queue).take());
        let thread = lock(&self.thread).take();
        thread.is_none_or(|t| t.join().is_ok())
    }

    /// The thread ended without being closed (it panicked): the store cannot write.
    pub fn has_died(&self) -> bool {
        lock(&self.thread).as_ref().is_some_and(|t| t.is_finished())
    }
}
