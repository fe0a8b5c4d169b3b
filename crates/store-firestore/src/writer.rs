//! The single writer: group commit of everything queued, one Firestore transaction per batch.
//!
//! A dedicated thread (the rules are synchronous and read the state inside the transaction)
//! takes the first request, then whatever else is queued (up to `max_batch` events), and runs
//! them in one read-write transaction that begins by reading `meta/store`. Every writer of
//! every instance reads and then writes that document, so their transactions conflict and
//! Firestore serialises them: the rules' read-then-write of the state keeps the
//! single-writer semantics across instances, and `seq` (commit order) is handed out inside
//! that order, gapless. The contended document is written once per *batch*, not per event,
//! and carries a commit counter (`version`) that every commit bumps.
//!
//! Round trips: a batch's first lookups (the stream position, its events' ids and tombstones)
//! are one read. The writer remembers what it read and wrote ([`Known`]), and while
//! `meta/store` still shows the counter of its own last commit (nobody else committed since),
//! the rules' state reads and prefix scans are answered from that memory.
//!
//! Firestore sends no write before COMMIT: the batch's writes are buffered here, in layers
//! (the batch's, and the current request's, discarded when the rules refuse it), and every
//! read looks at them before asking Firestore. Requests are answered only once COMMIT
//! returned. A transaction that lost a conflict (`ABORTED`) is run again from the start, up
//! to `max_attempts` times; then each request gets an error.
//!
//! Limits: at most [`MAX_WRITES`] documents per commit and [`MAX_COMMIT_BYTES`] per request
//! (Firestore's 500 writes and 10 MiB); a batch stops taking requests before it would exceed
//! them, and a single request that alone would is refused with an error naming the limit —
//! except a state change that only deletes (the gateway's purge of expired keys): its first
//! part commits with the transaction and the rest in further commits.

use crate::client::{Client, RpcError, RpcResult};
use crate::model::{self, from_ts, integer, Fields, EVENTS, META, META_DOC, TOMB_ADDRS, TOMB_IDS};
use crate::query::{cond, structured, Op};
use crate::state::{self, scan_merged};
use crate::Io;
use googleapis_tonic_google_firestore_v1::google::firestore::v1::{
    write::Operation, Document, StructuredQuery, Value, Write,
};
use mls_proto::{Event, Hex32, KindClass};
use mls_store::{
    Admission, Admitted, BackupItem, CommitFeed, Publisher, Rejection, StateRead, StateWrite,
    StoreError, StoreResult, StoredEvent, Tombstone, WriteOutcome, MAX_STATE_KEY_LEN,
};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Most documents written by one commit (Firestore's limit), the store's own `meta` included.
pub(crate) const MAX_WRITES: usize = 500;
/// Most bytes of documents in one commit (Firestore's request limit is 10 MiB).
pub(crate) const MAX_COMMIT_BYTES: usize = 9 * 1024 * 1024;
/// Expired events removed per commit.
const PURGE_CHUNK: i32 = 400;

pub(crate) type StateFn = Box<dyn FnOnce(&mut dyn StateWrite) -> Result<(), Rejection> + Send>;

/// Runs just before each COMMIT is sent (tests make contention with it).
pub type CommitHook = Arc<dyn Fn() + Send + Sync>;

pub(crate) enum Request {
    Write {
        event: Box<Event>,
        publisher: Publisher,
        reply: oneshot::Sender<StoreResult<WriteOutcome>>,
    },
    State {
        /// Taken when run: a state change cannot be run twice.
        f: Option<StateFn>,
        reply: oneshot::Sender<StoreResult<Result<(), Rejection>>>,
    },
    Purge {
        now: u64,
        /// Removed by earlier commits of this same purge.
        purged: u64,
        reply: oneshot::Sender<StoreResult<u64>>,
    },
    Restore {
        items: Vec<BackupItem>,
        reply: oneshot::Sender<StoreResult<Vec<WriteOutcome>>>,
    },
}

impl Request {
    /// Requests that run in a batch of their own: a state change cannot be re-run after a
    /// conflict, and deletions, purges and restores may write many documents.
    fn alone(&self) -> bool {
        match self {
            Request::Write { event, .. } => event.kind == 5,
            _ => true,
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

    /// Delivers `outcome`; an unfinished purge goes back to `carry` for the next batch.
    fn answer(self, outcome: Outcome, carry: &mut VecDeque<Request>) {
        match (self, outcome) {
            (Request::Write { reply, .. }, Outcome::Write(o)) => drop(reply.send(Ok(o))),
            (Request::State { reply, .. }, Outcome::State(o)) => drop(reply.send(Ok(o))),
            (Request::Purge { now, purged, reply }, Outcome::Purge { removed, more }) => {
                if more {
                    carry.push_front(Request::Purge {
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
}

enum Outcome {
    Write(WriteOutcome),
    State(Result<(), Rejection>),
    Purge { removed: u64, more: bool },
    Restore(Vec<WriteOutcome>),
    Failed(StoreError),
}

pub(crate) struct Writer {
    pub io: Arc<Io>,
    pub client: Client,
    pub rules: Arc<dyn Admission>,
    pub feed: Arc<CommitFeed>,
    pub max_batch: usize,
    pub max_attempts: u32,
    pub before_commit: Option<CommitHook>,
    /// What this writer knows of the committed documents (see [`Known`]).
    pub known: std::cell::RefCell<Known>,
}

/// Documents this writer read or wrote, as they stand at `meta/store`'s commit counter
/// `version`. Every committing transaction bumps that counter, so while it still reads
/// `version`, nobody else committed since and these are exact: the rules' state reads need no
/// round trip. Any other value and they are dropped. Bounded by [`KNOWN_BYTES`].
#[derive(Default)]
pub(crate) struct Known {
    version: Option<i64>,
    docs: HashMap<String, Option<Document>>,
    /// Whole state prefixes (what a prefix scan returned, kept up to date with this writer's
    /// own commits): the rules' per-event scans (rate counters) need no query either.
    scans: HashMap<Vec<u8>, ScanRows>,
    bytes: usize,
}

/// Every committed state entry under one prefix, by key.
pub(crate) type ScanRows = BTreeMap<Vec<u8>, Vec<u8>>;

/// Most bytes of documents a writer remembers between batches.
const KNOWN_BYTES: usize = 64 * 1024 * 1024;

impl Known {
    fn forget(&mut self) {
        self.version = None;
        self.docs.clear();
        self.scans.clear();
        self.bytes = 0;
    }

    fn insert_scan(&mut self, prefix: Vec<u8>, rows: ScanRows) {
        self.bytes += prefix.len() + rows.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.scans.insert(prefix, rows);
    }

    /// A committed state change, applied to the prefixes that hold its key.
    fn apply_state(&mut self, key: &[u8], value: Option<&[u8]>) {
        for (prefix, rows) in self.scans.iter_mut() {
            if !key.starts_with(prefix) {
                continue;
            }
            match value {
                Some(v) => {
                    self.bytes += key.len() + v.len();
                    rows.insert(key.to_vec(), v.to_vec());
                }
                None => {
                    rows.remove(key);
                }
            }
        }
    }

    fn insert(&mut self, name: String, doc: Option<Document>) {
        self.bytes += name.len()
            + doc
                .as_ref()
                .map_or(0, |d| model::document_size(&d.name, &d.fields));
        self.docs.insert(name, doc);
    }
}

/// What a committed attempt gives back.
struct Committed {
    /// One per request processed (a prefix of the batch; the rest waits for the next one).
    outcomes: Vec<Outcome>,
    last_seq: i64,
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
            let mut batch = Vec::new();
            while let Some(next) = pending.front() {
                if !batch.is_empty() && (next.alone() || batch.len() >= self.max_batch) {
                    break;
                }
                let alone = next.alone();
                batch.extend(pending.pop_front());
                if alone {
                    break;
                }
            }
            self.run_batch(batch, &mut pending);
        }
    }

    fn run_batch(&self, mut batch: Vec<Request>, carry: &mut VecDeque<Request>) {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            match self.attempt(&mut batch) {
                Ok(Committed {
                    outcomes,
                    last_seq,
                    transient,
                }) => {
                    tracing::trace!(
                        size = outcomes.len(),
                        micros = started.elapsed().as_micros() as u64,
                        attempt,
                        "firestore batch committed"
                    );
                    // Before the answers: a publisher that sees its OK finds the stream rung.
                    self.feed.committed(last_seq.max(0) as u64, transient);
                    let rest = batch.split_off(outcomes.len());
                    for request in rest.into_iter().rev() {
                        carry.push_front(request);
                    }
                    for (request, outcome) in batch.into_iter().zip(outcomes) {
                        request.answer(outcome, carry);
                    }
                    return;
                }
                Err(e) if e.is_aborted() && attempt < self.max_attempts => {
                    tracing::debug!(error = %e, attempt, "firestore transaction aborted; running it again");
                    // Back off a little, with jitter, so two contenders stop colliding.
                    let jitter = u64::from(std::process::id() % 7)
                        + started.elapsed().subsec_nanos() as u64 % 13;
                    std::thread::sleep(Duration::from_millis((5u64 << attempt.min(6)) + jitter));
                    attempt += 1;
                }
                Err(e) if !e.is_aborted() && batch.len() > 1 => {
                    // One bad request must not sink the others: run each alone.
                    tracing::warn!(error = %e, size = batch.len(), "firestore batch failed; retrying one by one");
                    for request in batch {
                        self.run_batch(vec![request], carry);
                    }
                    return;
                }
                Err(e) => {
                    let text = if e.is_aborted() {
                        format!("{e} (contention: the transaction was aborted {attempt} times)")
                    } else {
                        e.to_string()
                    };
                    tracing::error!(error = %text, size = batch.len(), "firestore batch not committed");
                    for request in batch {
                        request.fail(StoreError::Backend(text.clone()));
                    }
                    return;
                }
            }
        }
    }

    /// One run of `batch` in a fresh transaction, committed.
    fn attempt(&self, batch: &mut [Request]) -> RpcResult<Committed> {
        let io = &*self.io;
        let client = self.client.clone();
        let transaction = io.block_on(async move { client.begin(false).await })??;
        let known = self.known.borrow();
        let reader = Reader {
            io,
            client: &self.client,
            transaction: transaction.clone(),
            cache: Mutex::new(HashMap::new()),
            known: &known.docs,
            known_scans: &known.scans,
            trust_known: std::cell::Cell::new(false),
            scans: Mutex::new(HashMap::new()),
        };
        let result = self.process(&reader, &known, batch);
        let (mut tx, outcomes, transient) = match result {
            Ok(done) => done,
            Err(e) => {
                let client = self.client.clone();
                let _ = io.block_on(async move { client.rollback(transaction).await });
                return Err(e);
            }
        };
        let (last_seq, version) = (tx.last_seq, tx.version);
        let overflow = std::mem::take(&mut tx.overflow);
        let writes = tx.into_writes(&self.client);
        let committed = !writes.is_empty();
        let written: Vec<(String, Option<Document>)> = writes
            .iter()
            .filter_map(|w| match &w.operation {
                Some(Operation::Update(d)) => Some((d.name.clone(), Some(d.clone()))),
                Some(Operation::Delete(name)) => Some((name.clone(), None)),
                _ => None,
            })
            .collect();
        if committed {
            if let Some(hook) = &self.before_commit {
                hook();
            }
            let client = self.client.clone();
            io.block_on(async move { client.commit(Some(transaction.clone()), writes).await })??;
        } else {
            let client = self.client.clone();
            let _ = io.block_on(async move { client.rollback(transaction).await });
        }
        let trusted = reader.trust_known.get();
        let reads = std::mem::take(&mut *crate::lock(&reader.cache));
        let scans = std::mem::take(&mut *crate::lock(&reader.scans));
        drop(reader);
        drop(known);
        self.remember(version, trusted, reads, scans, committed.then_some(written));
        let mut outcomes = outcomes;
        if !overflow.is_empty() {
            self.known.borrow_mut().forget();
            if let Err(e) = self.delete_state_keys(overflow) {
                // The transaction's part is committed; the caller hears that the rest is not.
                if let Some(last) = outcomes.last_mut() {
                    *last = Outcome::Failed(StoreError::Backend(format!(
                        "a large state deletion was committed in part: {e}"
                    )));
                }
            }
        }
        Ok(Committed {
            outcomes,
            last_seq,
            transient,
        })
    }

    /// Keeps what an attempt read at `version` and, when it committed (`version + 1`), what
    /// it wrote.
    fn remember(
        &self,
        version: i64,
        trusted: bool,
        reads: HashMap<String, Option<Document>>,
        scans: HashMap<Vec<u8>, ScanRows>,
        written: Option<Vec<(String, Option<Document>)>>,
    ) {
        let mut known = self.known.borrow_mut();
        if !trusted {
            known.forget();
        }
        let meta = self.client.name(META, META_DOC);
        for (name, doc) in reads.into_iter().filter(|(n, _)| *n != meta) {
            known.insert(name, doc);
        }
        for (prefix, rows) in scans {
            known.insert_scan(prefix, rows);
        }
        known.version = Some(version);
        if let Some(written) = written {
            let state_docs = format!("{}/{}/", self.client.documents, model::STATE);
            for (name, doc) in written.into_iter().filter(|(n, _)| *n != meta) {
                if let Some(key) = name
                    .strip_prefix(&state_docs)
                    .and_then(|id| hex::decode(id).ok())
                {
                    let value = doc.as_ref().and_then(|d| state::row(d).ok()).map(|r| r.1);
                    known.apply_state(&key, value.as_deref());
                }
                known.insert(name, doc);
            }
            known.version = Some(version + 1);
        }
        if known.bytes > KNOWN_BYTES {
            known.forget();
        }
    }

    /// Deletes state keys in transactions of at most [`MAX_WRITES`] writes, each bumping the
    /// commit counter like any other commit.
    fn delete_state_keys(&self, keys: Vec<Vec<u8>>) -> RpcResult<()> {
        for chunk in keys.chunks(MAX_WRITES - 1) {
            let mut attempt = 1;
            loop {
                match self.delete_chunk(chunk) {
                    Err(e) if e.is_aborted() && attempt < self.max_attempts => attempt += 1,
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn delete_chunk(&self, keys: &[Vec<u8>]) -> RpcResult<()> {
        let client = self.client.clone();
        let transaction = self
            .io
            .block_on(async move { client.begin(false).await })??;
        let meta_name = self.client.name(META, META_DOC);
        let (client, tx, names) = (
            self.client.clone(),
            transaction.clone(),
            vec![meta_name.clone()],
        );
        let meta = self
            .io
            .block_on(async move { client.get(names, Some(&tx)).await })??
            .pop()
            .flatten();
        let (last_seq, version) = meta_position(meta.as_ref())?;
        let mut writes: Vec<Write> = keys
            .iter()
            .map(|k| Write {
                operation: Some(Operation::Delete(
                    self.client.name(model::STATE, &state::doc_id(k)),
                )),
                ..Default::default()
            })
            .collect();
        writes.push(meta_write(meta_name, last_seq, version + 1));
        let client = self.client.clone();
        self.io
            .block_on(async move { client.commit(Some(transaction), writes).await })?
    }

    #[allow(clippy::type_complexity)]
    fn process<'r>(
        &'r self,
        reader: &'r Reader<'r>,
        known: &'r Known,
        batch: &mut [Request],
    ) -> RpcResult<(Tx<'r>, Vec<Outcome>, Vec<(u64, Arc<Event>)>)> {
        let meta_name = self.client.name(META, META_DOC);
        let mut first_reads = vec![meta_name.clone()];
        for request in batch.iter() {
            if let Request::Write { event, .. } = request {
                let id = event.id.to_hex();
                first_reads.push(self.client.name(EVENTS, &id));
                first_reads.push(self.client.name(TOMB_IDS, &id));
                if let Some(addr) = model::event_addr(event) {
                    first_reads.push(self.client.name(TOMB_ADDRS, &addr));
                }
            }
        }
        // What this writer already knows is left out, and read after all only if someone
        // else committed since (the counter in `meta/store` says).
        let (unknown, remembered): (Vec<String>, Vec<String>) =
            first_reads.into_iter().partition(|n| {
                *n == meta_name || known.version.is_none() || !known.docs.contains_key(n)
            });
        reader.prefetch(unknown)?;
        let meta = reader.doc(&meta_name)?;
        let (last_seq, version) = meta_position(meta.as_ref())?;
        if known.version == Some(version) {
            reader.trust_known.set(true);
        } else {
            reader.prefetch(remembered)?;
        }
        let mut tx = Tx {
            reader,
            rules: &*self.rules,
            batch: Layer::default(),
            request: Layer::default(),
            last_seq,
            version,
            bytes: 0,
            overflow: Vec::new(),
        };
        let now = mls_proto::unix_now();
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut transient = Vec::new();
        for request in batch.iter_mut() {
            if !outcomes.is_empty()
                && (tx.batch.writes() >= MAX_WRITES * 4 / 5 || tx.bytes >= MAX_COMMIT_BYTES / 2)
            {
                break; // the rest goes to the next batch
            }
            let seq = tx.last_seq;
            let transient_before = transient.len();
            tx.request = Layer::default();
            let outcome = match request {
                Request::Write {
                    event, publisher, ..
                } => {
                    let outcome = tx.write_event(event, publisher, now)?;
                    if outcome == WriteOutcome::Accepted && tx.last_seq == seq {
                        transient.push((seq.max(0) as u64, Arc::new((**event).clone())));
                    }
                    Outcome::Write(outcome)
                }
                Request::State { f, .. } => match f.take() {
                    Some(f) => tx.update_state(f)?,
                    None => Outcome::Failed(StoreError::Backend(
                        "state change not applied: its transaction was aborted by contention; try again"
                            .into(),
                    )),
                },
                Request::Purge { now, .. } => {
                    let (removed, more) = tx.purge(*now)?;
                    Outcome::Purge { removed, more }
                }
                Request::Restore { items, .. } => Outcome::Restore(tx.restore(items)?),
            };
            let keep = matches!(
                outcome,
                Outcome::Write(WriteOutcome::Accepted)
                    | Outcome::State(Ok(()))
                    | Outcome::Purge { .. }
                    | Outcome::Restore(_)
            );
            let layer = std::mem::take(&mut tx.request);
            if !keep {
                outcomes.push(outcome);
                tx.last_seq = seq;
                continue;
            }
            let bytes = layer.bytes();
            if tx.batch.writes() + layer.writes() + 1 > MAX_WRITES
                || tx.bytes + bytes > MAX_COMMIT_BYTES
            {
                let deletes_only = matches!(request, Request::State { .. })
                    && layer.docs.is_empty()
                    && layer.state.values().all(Option::is_none);
                if outcomes.is_empty() && deletes_only {
                    // A large deletion (the gateway's purge of expired keys): the first part
                    // commits with the transaction, the rest in further commits (deleting is
                    // idempotent; documented as the one change that is not atomic here).
                    let mut keys: Vec<Vec<u8>> = layer.state.into_keys().collect();
                    tx.overflow = keys.split_off((MAX_WRITES - 2).min(keys.len()));
                    tx.batch.state.extend(keys.into_iter().map(|k| (k, None)));
                    outcomes.push(outcome);
                    break;
                }
                if outcomes.is_empty() {
                    // Alone it is already too large: refused, naming the limit.
                    let text = format!(
                        "error: this change needs {} document writes ({} bytes) in one commit; \
                         Firestore commits at most {MAX_WRITES} writes and 10 MiB",
                        layer.writes(),
                        bytes
                    );
                    tx.last_seq = seq;
                    transient.truncate(transient_before);
                    outcomes.push(match request {
                        Request::Write { .. } => Outcome::Write(WriteOutcome::Rejected(text)),
                        Request::State { .. } => Outcome::State(Err(Rejection(text))),
                        _ => Outcome::Failed(StoreError::Backend(text)),
                    });
                    continue;
                }
                // Not in this batch after all: the next one runs it again from the start.
                tx.last_seq = seq;
                transient.truncate(transient_before);
                break;
            }
            tx.bytes += bytes;
            tx.batch.absorb(layer);
            outcomes.push(outcome);
        }
        Ok((tx, outcomes, transient))
    }
}

/// The transaction's reads of what is committed (each document read once per attempt).
pub(crate) struct Reader<'a> {
    io: &'a Io,
    client: &'a Client,
    transaction: Vec<u8>,
    cache: Mutex<HashMap<String, Option<Document>>>,
    /// The writer's [`Known`] documents, consulted once `meta/store` showed them current
    /// (`trust_known`).
    known: &'a HashMap<String, Option<Document>>,
    known_scans: &'a HashMap<Vec<u8>, ScanRows>,
    trust_known: std::cell::Cell<bool>,
    /// Whole prefixes this attempt scanned (at its version).
    scans: Mutex<HashMap<Vec<u8>, ScanRows>>,
}

impl Reader<'_> {
    fn doc(&self, name: &str) -> RpcResult<Option<Document>> {
        if let Some(d) = crate::lock(&self.cache).get(name) {
            return Ok(d.clone());
        }
        if self.trust_known.get() {
            if let Some(d) = self.known.get(name) {
                return Ok(d.clone());
            }
        }
        let client = self.client.clone();
        let tx = self.transaction.clone();
        let names = vec![name.to_string()];
        let doc = self
            .io
            .block_on(async move { client.get(names, Some(&tx)).await })??
            .pop()
            .flatten();
        crate::lock(&self.cache).insert(name.to_string(), doc.clone());
        Ok(doc)
    }

    /// Every committed entry under `prefix`, if this attempt or (when current) the writer
    /// already has them.
    fn cached_scan(&self, prefix: &[u8]) -> Option<ScanRows> {
        if let Some(rows) = crate::lock(&self.scans).get(prefix) {
            return Some(rows.clone());
        }
        if self.trust_known.get() {
            return self.known_scans.get(prefix).cloned();
        }
        None
    }

    /// Reads `names` in one round trip into the cache (what a batch's events will look up
    /// first: their own id, its tombstone, their address's tombstone).
    fn prefetch(&self, names: Vec<String>) -> RpcResult<()> {
        let names: Vec<String> = {
            let cache = crate::lock(&self.cache);
            names
                .into_iter()
                .filter(|n| !cache.contains_key(n))
                .collect()
        };
        for chunk in names.chunks(300) {
            let client = self.client.clone();
            let tx = self.transaction.clone();
            let chunk = chunk.to_vec();
            let asked = chunk.clone();
            let docs = self
                .io
                .block_on(async move { client.get(chunk, Some(&tx)).await })??;
            let mut cache = crate::lock(&self.cache);
            for (name, doc) in asked.into_iter().zip(docs) {
                cache.insert(name, doc);
            }
        }
        Ok(())
    }

    fn query(&self, query: StructuredQuery) -> RpcResult<Vec<Document>> {
        let client = self.client.clone();
        let tx = self.transaction.clone();
        self.io
            .block_on(async move { client.query(query, Some(&tx)).await })?
    }
}

/// Buffered changes: documents by name (`None`: deleted) and state keys.
#[derive(Default)]
struct Layer {
    docs: HashMap<String, Option<HashMap<String, Value>>>,
    state: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Layer {
    fn writes(&self) -> usize {
        self.docs.len() + self.state.len()
    }

    fn bytes(&self) -> usize {
        self.docs
            .iter()
            .map(|(name, f)| {
                f.as_ref()
                    .map_or(name.len(), |f| model::document_size(name, f))
            })
            .sum::<usize>()
            + self
                .state
                .iter()
                .map(|(k, v)| 2 * k.len() + v.as_ref().map_or(0, Vec::len) + 64)
                .sum::<usize>()
    }

    fn absorb(&mut self, other: Layer) {
        self.docs.extend(other.docs);
        self.state.extend(other.state);
    }
}

/// One attempt's transaction: the committed state as the transaction reads it, under the
/// batch's and the current request's buffered changes.
struct Tx<'a> {
    reader: &'a Reader<'a>,
    rules: &'a dyn Admission,
    batch: Layer,
    request: Layer,
    last_seq: i64,
    /// `meta/store`'s commit counter as this transaction read it.
    version: i64,
    /// Bytes of the documents the batch writes.
    bytes: usize,
    /// State keys a too-large deletion removes after the transaction, in further commits.
    overflow: Vec<Vec<u8>>,
}

fn deleted() -> WriteOutcome {
    WriteOutcome::Rejected("blocked: event was deleted".into())
}

impl<'a> Tx<'a> {
    fn client(&self) -> &Client {
        self.reader.client
    }

    /// The document `name` as this transaction sees it.
    fn doc(&self, name: &str) -> RpcResult<Option<HashMap<String, Value>>> {
        for layer in [&self.request, &self.batch] {
            if let Some(d) = layer.docs.get(name) {
                return Ok(d.clone());
            }
        }
        Ok(self.reader.doc(name)?.map(|d| d.fields))
    }

    fn put_doc(&mut self, name: String, fields: HashMap<String, Value>) {
        self.request.docs.insert(name, Some(fields));
    }

    fn delete_doc(&mut self, name: String) {
        self.request.docs.insert(name, None);
    }

    fn event_name(&self, id: &Hex32) -> String {
        self.client().name(EVENTS, &id.to_hex())
    }

    fn load_event(&self, id: &Hex32) -> RpcResult<Option<Event>> {
        let Some(fields) = self.doc(&self.event_name(id))? else {
            return Ok(None);
        };
        let doc = Document {
            name: self.event_name(id),
            fields,
            ..Default::default()
        };
        Ok(Some(model::stored_event(&doc)?.1.event))
    }

    /// The event stored at address `addr`: its id and `created_at`.
    fn addr_holder(&self, addr: &str) -> RpcResult<Option<(Hex32, u64)>> {
        let is_at = |f: &HashMap<String, Value>| {
            matches!(f.get("addr").and_then(|v| v.value_type.as_ref()),
                Some(googleapis_tonic_google_firestore_v1::google::firestore::v1::value::ValueType::StringValue(s)) if s == addr)
        };
        // Buffered versions first (the newest writes), then what Firestore holds unless a
        // buffered change replaced or removed it.
        for layer in [&self.request, &self.batch] {
            for (name, fields) in &layer.docs {
                if let Some(f) = fields {
                    if name.contains("/events/") && is_at(f) {
                        return Ok(Some(holder(name, f)?));
                    }
                }
            }
        }
        let found = self.reader.query(structured(
            EVENTS,
            vec![cond("addr", Op::Equal, model::string(addr))],
            None,
            Some(4),
        ))?;
        for doc in found {
            if let Some(f) = self.doc(&doc.name)? {
                if is_at(&f) {
                    return Ok(Some(holder(&doc.name, &f)?));
                }
            }
        }
        Ok(None)
    }

    fn id_tombstone(&self, id: &Hex32) -> RpcResult<Vec<Hex32>> {
        let name = self.client().name(TOMB_IDS, &id.to_hex());
        Ok(match self.doc(&name)? {
            None => Vec::new(),
            Some(f) => {
                let doc = Document {
                    name,
                    fields: f,
                    ..Default::default()
                };
                Fields(&doc)
                    .strings("deleters")?
                    .iter()
                    .filter_map(|d| Hex32::from_hex(d))
                    .collect()
            }
        })
    }

    fn add_id_tombstone(&mut self, id: &Hex32, deleter: &Hex32) -> RpcResult<()> {
        let mut deleters = self.id_tombstone(id)?;
        if deleters.contains(deleter) {
            return Ok(());
        }
        deleters.push(*deleter);
        deleters.sort_unstable();
        let fields = HashMap::from([
            ("id".to_string(), model::string(id.to_hex())),
            (
                "deleters".to_string(),
                model::array(deleters.iter().map(|d| model::string(d.to_hex())).collect()),
            ),
        ]);
        let name = self.client().name(TOMB_IDS, &id.to_hex());
        self.put_doc(name, fields);
        Ok(())
    }

    fn addr_tombstone_until(&self, addr: &str) -> RpcResult<Option<u64>> {
        let name = self.client().name(TOMB_ADDRS, addr);
        Ok(match self.doc(&name)? {
            None => None,
            Some(f) => {
                let doc = Document {
                    name,
                    fields: f,
                    ..Default::default()
                };
                Some(from_ts(Fields(&doc).int("until")?))
            }
        })
    }

    /// Records that the versions of `address` created at or before `until` are deleted (the
    /// later of two tombstones wins).
    fn tombstone_address(&mut self, address: &model::Address<'_>, until: u64) -> RpcResult<()> {
        let until = match self.addr_tombstone_until(&address.key)? {
            Some(old) => old.max(until),
            None => until,
        };
        let fields = HashMap::from([
            ("key".to_string(), model::string(address.key.clone())),
            ("kind".to_string(), integer(i64::from(address.kind))),
            ("pubkey".to_string(), model::string(address.owner.to_hex())),
            ("d".to_string(), model::string(address.d)),
            ("until".to_string(), integer(model::ts(until))),
        ]);
        let name = self.client().name(TOMB_ADDRS, &address.key);
        self.put_doc(name, fields);
        Ok(())
    }

    fn may_delete(&self, deleter: &Hex32, target: &Event) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.rules.may_delete(deleter, target))).unwrap_or(false)
    }

    /// Is `ev` refused by a tombstone? Only one written by someone allowed to delete `ev`
    /// counts: a stranger cannot block an event by "deleting" its id in advance.
    fn id_tombstoned(&self, ev: &Event) -> RpcResult<bool> {
        Ok(self
            .id_tombstone(&ev.id)?
            .iter()
            .any(|d| self.may_delete(d, ev)))
    }

    /// One event, in the order the relay promises: duplicate, tombstones, size, newer
    /// version, rules (with their state changes), then storage and NIP-09 deletions.
    fn write_event(
        &mut self,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> RpcResult<WriteOutcome> {
        if ev.class() == KindClass::Ephemeral {
            return Ok(WriteOutcome::Accepted); // the relay delivers these live; never stored
        }
        if self.doc(&self.event_name(&ev.id))?.is_some() {
            return Ok(WriteOutcome::Duplicate);
        }
        if self.id_tombstoned(ev)? {
            return Ok(deleted());
        }
        let json = ev.to_json();
        let fields = model::event_fields(ev, &json, 0, now, ev.expiration());
        let size = model::document_size(&self.event_name(&ev.id), &fields);
        if size > model::MAX_DOCUMENT_BYTES {
            return Ok(WriteOutcome::Rejected(format!(
                "invalid: event too large to store: {size} bytes as a Firestore document \
                 (JSON and indexed tags), at most {}",
                model::MAX_DOCUMENT_BYTES
            )));
        }
        let address = model::event_addr(ev);
        let mut replaces = None;
        if let Some(addr) = &address {
            if self
                .addr_tombstone_until(addr)?
                .is_some_and(|until| until >= ev.created_at)
            {
                return Ok(deleted());
            }
            if let Some((stored_id, created_at)) = self.addr_holder(addr)? {
                if created_at > ev.created_at || (created_at == ev.created_at && stored_id < ev.id)
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
                self.delete_doc(self.event_name(&old));
            }
            // NIP-40 keeps its meaning even if the rules chose a later expiry.
            let expires_at = match (admitted.expires_at, ev.expiration()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            self.store_event(ev, &json, now, expires_at);
        }
        // An accepted deletion takes effect even when the rules keep the kind 5 itself out
        // of storage: the client was told its deletion was accepted.
        if ev.kind == 5 {
            self.apply_deletion(ev)?;
        }
        Ok(WriteOutcome::Accepted)
    }

    fn store_event(&mut self, ev: &Event, json: &str, received_at: u64, expires_at: Option<u64>) {
        self.last_seq += 1;
        let fields = model::event_fields(ev, json, self.last_seq, received_at, expires_at);
        self.put_doc(self.event_name(&ev.id), fields);
    }

    /// Runs the rules over the request's layer; their changes stay only if they accept (the
    /// caller discards the layer of a refused event). A panicking rule refuses the event.
    fn admit(
        &mut self,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> RpcResult<Result<Admitted, Rejection>> {
        let mut view = TxState {
            reader: self.reader,
            batch: &self.batch.state,
            local: &mut self.request.state,
            error: Default::default(),
        };
        let decision = catch_unwind(AssertUnwindSafe(|| {
            self.rules.admit(ev, publisher, now, &mut view)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(id = %ev.id, kind = ev.kind, "admission rules panicked");
            Err(Rejection(
                "error: internal error while checking the event".into(),
            ))
        });
        // A conflict seen by a read inside the rules aborts the whole attempt.
        if let Some(e) = view.take_error() {
            return Err(e);
        }
        Ok(decision)
    }

    fn update_state(&mut self, f: StateFn) -> RpcResult<Outcome> {
        let mut view = TxState {
            reader: self.reader,
            batch: &self.batch.state,
            local: &mut self.request.state,
            error: Default::default(),
        };
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut view)));
        if let Some(e) = view.take_error() {
            return Err(e);
        }
        Ok(match result {
            Ok(r) => Outcome::State(r),
            Err(_) => Outcome::Failed(StoreError::Backend("state change panicked".into())),
        })
    }

    /// NIP-09: removes what the kind 5 `del` may delete and records tombstones.
    fn apply_deletion(&mut self, del: &Event) -> RpcResult<()> {
        let mut ids: Vec<Hex32> = del.tag_values("e").filter_map(Hex32::from_hex).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            // When the target is not here (yet), the tombstone alone refuses it later, if
            // this deleter may delete it.
            if let Some(target) = self.load_event(&id)? {
                if target.kind == 5 || !self.may_delete(&del.pubkey, &target) {
                    continue;
                }
                self.delete_doc(self.event_name(&id));
            }
            self.add_id_tombstone(&id, &del.pubkey)?;
        }
        for value in del.tag_values("a") {
            let Some(address) = model::parse_a_tag(value) else {
                continue;
            };
            let stored = match self.addr_holder(&address.key)? {
                Some((id, created_at)) => self.load_event(&id)?.map(|e| (created_at, e)),
                None => None,
            };
            let allowed = address.owner == del.pubkey
                || stored
                    .as_ref()
                    .is_some_and(|(_, target)| self.may_delete(&del.pubkey, target));
            if !allowed {
                continue;
            }
            if let Some((created_at, target)) = stored {
                if created_at <= del.created_at {
                    self.delete_doc(self.event_name(&target.id));
                }
            }
            self.tombstone_address(&address, del.created_at)?;
        }
        Ok(())
    }

    /// The refusal of the first stored target of the kind 5 `del` that the rules will not let
    /// its author delete at all.
    fn refused_deletion(&self, del: &Event) -> RpcResult<Option<Rejection>> {
        for id in del.tag_values("e").filter_map(Hex32::from_hex) {
            let Some(target) = self.load_event(&id)? else {
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

    /// Puts backup items back verbatim: no rules run, no deletion is applied.
    fn restore(&mut self, items: &[BackupItem]) -> RpcResult<Vec<WriteOutcome>> {
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
                        self.request.state.insert(key.clone(), Some(value.clone()));
                        WriteOutcome::Accepted
                    }
                }
                BackupItem::Tombstone(Tombstone::Id { id, deleter }) => {
                    self.add_id_tombstone(id, deleter)?;
                    WriteOutcome::Accepted
                }
                BackupItem::Tombstone(Tombstone::Address {
                    kind,
                    pubkey,
                    d,
                    until,
                }) => match KindClass::of(*kind) {
                    class @ (KindClass::Replaceable | KindClass::Addressable) => {
                        let d = if class == KindClass::Addressable {
                            d.as_str()
                        } else {
                            ""
                        };
                        let address = model::Address {
                            kind: *kind,
                            owner: *pubkey,
                            d,
                            key: model::addr_key(*kind, pubkey, d),
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

    fn restore_event(&mut self, stored: &StoredEvent) -> RpcResult<WriteOutcome> {
        let ev = &stored.event;
        if ev.class() == KindClass::Ephemeral {
            return Ok(WriteOutcome::Rejected(
                "invalid: ephemeral events are not stored".into(),
            ));
        }
        if self.doc(&self.event_name(&ev.id))?.is_some() {
            return Ok(WriteOutcome::Duplicate);
        }
        if let Some(addr) = model::event_addr(ev) {
            if let Some((current, created_at)) = self.addr_holder(&addr)? {
                if created_at > ev.created_at || (created_at == ev.created_at && current < ev.id) {
                    return Ok(WriteOutcome::Rejected(
                        "invalid: a newer version of this event is already stored".into(),
                    ));
                }
                self.delete_doc(self.event_name(&current));
            }
        }
        self.store_event(ev, &stored.json, stored.received_at, stored.expires_at);
        Ok(WriteOutcome::Accepted)
    }

    /// Removes up to [`PURGE_CHUNK`] events expired at `now`; says whether more remain.
    fn purge(&mut self, now: u64) -> RpcResult<(u64, bool)> {
        let found = self.reader.query(structured(
            EVENTS,
            vec![cond(
                "expires_at",
                Op::LessThanOrEqual,
                integer(model::ts(now)),
            )],
            Some(("expires_at", false)),
            Some(PURGE_CHUNK),
        ))?;
        let more = found.len() as i32 == PURGE_CHUNK;
        let mut removed = 0;
        for doc in found {
            if self.doc(&doc.name)?.is_some() {
                self.delete_doc(doc.name);
                removed += 1;
            }
        }
        Ok((removed, more))
    }

    /// Every buffered change as a Firestore write, and the commit stream's position.
    fn into_writes(self, client: &Client) -> Vec<Write> {
        let mut writes = Vec::with_capacity(self.batch.writes() + 1);
        let update = |name: String, fields: HashMap<String, Value>| Write {
            operation: Some(Operation::Update(Document {
                name,
                fields,
                ..Default::default()
            })),
            ..Default::default()
        };
        let mut docs: Vec<_> = self.batch.docs.into_iter().collect();
        docs.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, fields) in docs {
            writes.push(match fields {
                Some(f) => update(name, f),
                None => Write {
                    operation: Some(Operation::Delete(name)),
                    ..Default::default()
                },
            });
        }
        for (key, value) in self.batch.state {
            let name = client.name(model::STATE, &state::doc_id(&key));
            writes.push(match value {
                Some(v) => update(name, state::fields(&key, &v)),
                None => Write {
                    operation: Some(Operation::Delete(name)),
                    ..Default::default()
                },
            });
        }
        if !writes.is_empty() {
            writes.push(meta_write(
                client.name(META, META_DOC),
                self.last_seq,
                self.version + 1,
            ));
        }
        writes
    }
}

/// The commit stream's position and the commit counter in `meta/store` (0, 0 when new).
fn meta_position(meta: Option<&Document>) -> RpcResult<(i64, i64)> {
    Ok(match meta {
        Some(doc) => (
            Fields(doc).int("last_seq")?,
            Fields(doc).opt_int("version")?.unwrap_or(0),
        ),
        None => (0, 0),
    })
}

fn meta_write(name: String, last_seq: i64, version: i64) -> Write {
    Write {
        operation: Some(Operation::Update(Document {
            name,
            fields: HashMap::from([
                ("last_seq".to_string(), integer(last_seq)),
                ("version".to_string(), integer(version)),
            ]),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn holder(name: &str, f: &HashMap<String, Value>) -> RpcResult<(Hex32, u64)> {
    let doc = Document {
        name: name.to_string(),
        fields: f.clone(),
        ..Default::default()
    };
    let key = Fields(&doc).str("order_key")?.to_string();
    let id = Hex32::from_hex(model::doc_id(name))
        .ok_or_else(|| RpcError::other(format!("{name}: document id is not an event id")))?;
    let inverted = u64::from_str_radix(key.get(..16).unwrap_or(""), 16)
        .map_err(|_| RpcError::other(format!("{name}: bad order_key")))?;
    Ok((id, u64::MAX - inverted))
}

/// The rules' view of the state inside the writer's transaction: their own changes, then the
/// batch's, then what the transaction reads. A failed read is also kept in `error` (the
/// rules' interface cannot carry a retryable conflict): it fails the whole attempt afterwards,
/// whatever the rules made of it, so a conflict is retried rather than answered.
struct TxState<'v> {
    reader: &'v Reader<'v>,
    batch: &'v BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    local: &'v mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    error: std::cell::RefCell<Option<RpcError>>,
}

impl TxState<'_> {
    fn keep<T>(&self, r: RpcResult<T>) -> StoreResult<T> {
        r.map_err(|e| {
            let store = StoreError::Backend(e.text.clone());
            self.error.borrow_mut().get_or_insert(e);
            store
        })
    }

    fn take_error(&mut self) -> Option<RpcError> {
        self.error.get_mut().take()
    }
}

fn check_key(key: &[u8]) -> StoreResult<()> {
    if key.is_empty() || key.len() > MAX_STATE_KEY_LEN {
        return Err(StoreError::Backend(format!(
            "state key must be 1 to {MAX_STATE_KEY_LEN} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

impl StateRead for TxState<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if let Some(v) = self.local.get(key).or_else(|| self.batch.get(key)) {
            return Ok(v.clone());
        }
        if key.is_empty() || key.len() > MAX_STATE_KEY_LEN {
            return Ok(None);
        }
        let name = self.reader.client.name(model::STATE, &state::doc_id(key));
        match self.keep(self.reader.doc(&name))? {
            Some(d) => Ok(Some(state::row(&d)?.1)),
            None => Ok(None),
        }
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        self.scan_prefix_from(prefix, prefix, f)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        // The buffered changes under the prefix: the batch's, then the rules' own.
        let under = |m: &BTreeMap<Vec<u8>, Option<Vec<u8>>>| {
            m.range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
        };
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            under(self.batch).into_iter().collect();
        merged.extend(under(self.local));
        if let Some(rows) = self.reader.cached_scan(prefix) {
            let mut page = |start: Vec<u8>, end: Option<Vec<u8>>| -> StoreResult<state::Rows> {
                Ok(rows
                    .range(start..)
                    .take_while(|(k, _)| end.as_ref().is_none_or(|e| k < &e))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect())
            };
            return scan_merged(prefix, from, &merged, &mut page, f);
        }
        // A walk of the whole prefix that fits one page is the whole prefix: kept.
        let whole = from <= prefix;
        let mut complete: Option<state::Rows> = None;
        let mut first = true;
        let mut page = |start: Vec<u8>, end: Option<Vec<u8>>| -> StoreResult<state::Rows> {
            let client = self.reader.client.clone();
            let tx = self.reader.transaction.clone();
            let rows = self
                .reader
                .io
                .block_on(async move { state::scan_page(&client, start, end, Some(&tx)).await })
                .map_err(|e| RpcError::other(e.to_string()))
                .and_then(|r| r);
            let rows = self.keep(rows)?;
            if first && whole && (rows.len() as i32) < state::SCAN_PAGE {
                complete = Some(rows.clone());
            }
            first = false;
            Ok(rows)
        };
        scan_merged(prefix, from, &merged, &mut page, f)?;
        if let Some(rows) = complete {
            crate::lock(&self.reader.scans).insert(prefix.to_vec(), rows.into_iter().collect());
        }
        Ok(())
    }
}

impl StateWrite for TxState<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        check_key(key)?;
        self.local.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> StoreResult<()> {
        check_key(key)?;
        self.local.insert(key.to_vec(), None);
        Ok(())
    }
}
