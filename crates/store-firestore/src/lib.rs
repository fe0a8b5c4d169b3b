//! The Firestore backend of [`mls_store::EventStore`] (`storage_backend = "firestore"`).
//!
//! Same promises as the other backends: a write is answered only after the COMMIT of its
//! batch returned; the rules run inside that transaction over a view of the state that sees
//! the batch's own writes; duplicates, tombstones, replaceable/addressable versions, kind-5
//! deletions and NIP-40 behave the same, because the writer, its batches and the order of
//! checks are `mls_store`'s own ([`mls_store::writer`], [`mls_store::write_txn`]): this crate
//! supplies the transaction (`writer`) and the reads. Several relay instances may share one
//! database: every writer's transaction reads and writes `meta/store`, so Firestore
//! serialises them, and a transaction that lost a conflict (`ABORTED`) is run again.
//!
//! Visibility as data: each event document holds its audience (`audience`, an array of read
//! keys), and a read's scope is an `array-contains-any` on it (`query::plan`), so a
//! stranger's read does not walk the events it may not see.
//!
//! The document model and how it meets Firestore's limits (1 MiB documents, 500 writes per
//! commit, contention, indexes) are in `docs/FIRESTORE.md`; `model` lays it out and
//! [`indexes`] checks that `deploy/firestore.indexes.json` serves every query the store sends.
//!
//! Threads: the gRPC client is async and runs on the store's own small runtime, so that the
//! synchronous interfaces the rules and the visibility predicate use
//! ([`mls_store::StateRead`]) can wait for Firestore from any thread. The writer is a
//! dedicated thread; a read that must wait runs under `block_in_place`. Every RPC has a
//! client-side deadline: an unreachable Firestore yields errors, not hangs.

mod client;
pub mod indexes;
mod model;
mod query;
mod state;
mod writer;

pub use client::RpcCounts;
pub use indexes::{missing_index, QueryLog, QueryShape};
pub use writer::CommitHook;

use client::Client;
use mls_proto::{Event, Filter, Hex32};
use mls_store::writer::WriterHandle;
use mls_store::{
    Admission, BackupItem, Bounded, Budget, CommitFeed, EventStore, Publisher, ReadBounds,
    ReadScope, Rejection, Sequenced, StateRead, StateWrite, StoreError, StoreResult, StoredEvent,
    Tombstone, Visible, WriteOutcome,
};
use model::{EVENTS, META, META_DOC, STATE, TOMB_ADDRS, TOMB_IDS};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Which database, and how hard to use it.
#[derive(Clone)]
pub struct FirestoreOptions {
    pub project_id: String,
    /// `(default)` unless the deployment made another database.
    pub database_id: String,
    /// `host:port` of an emulator (plain text, no credentials); `None`: production Firestore
    /// with Application Default Credentials. Defaults to `FIRESTORE_EMULATOR_HOST`.
    pub emulator_host: Option<String>,
    /// Longest any one RPC may take.
    pub deadline: Duration,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Runs of a transaction that lost a conflict (`ABORTED`) before its requests get an error.
    pub max_attempts: u32,
    /// Records the shape of every query sent (for the index check); defaults to the log
    /// named by `MLS_FIRESTORE_QUERY_LOG`, if set.
    pub query_log: Option<Arc<QueryLog>>,
    /// Called by the writer just before each COMMIT: tests use it to make contention.
    pub before_commit: Option<CommitHook>,
}

impl FirestoreOptions {
    pub fn new(project_id: impl Into<String>) -> Self {
        FirestoreOptions {
            project_id: project_id.into(),
            database_id: "(default)".into(),
            emulator_host: std::env::var("FIRESTORE_EMULATOR_HOST")
                .ok()
                .filter(|h| !h.is_empty()),
            deadline: Duration::from_secs(10),
            max_batch: 100,
            max_attempts: 20,
            query_log: QueryLog::from_env().map(Arc::new),
            before_commit: None,
        }
    }
}

/// The store's own runtime, on which every RPC runs.
pub(crate) struct Io {
    pub handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Io {
    fn new() -> StoreResult<Io> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("firestore-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("firestore: start the store runtime: {e}")))?;
        Ok(Io {
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Blocks this thread (never a runtime worker: the writer thread) on `fut`, which runs
    /// on the store's runtime (every RPC bounds itself by the client's deadline).
    pub fn block_on<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Backend("firestore: store runtime stopped".into()))
    }

    /// [`Io::block_on`] for a fallible future.
    pub fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        self.block_on(fut)?
    }

    /// Runs `fut` on the store's runtime and awaits it from the caller's.
    pub async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        self.handle
            .spawn(fut)
            .await
            .map_err(|e| StoreError::Backend(format!("firestore: store task failed: {e}")))?
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; shutting it down in the background
        // does not.
        if let Some(rt) = lock(&self.runtime).take() {
            rt.shutdown_background();
        }
    }
}

/// Runs a loop that may block on Firestore without stalling the async runtime (see the
/// PostgreSQL backend's twin: other tasks move to another worker meanwhile).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A poisoned lock only means another thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Firestore store. Open it once per process and share the `Arc`.
pub struct FirestoreStore {
    io: Arc<Io>,
    client: Client,
    writer: WriterHandle,
    feed: Arc<CommitFeed>,
}

impl FirestoreStore {
    /// Connects and starts the writer. While Firestore cannot be reached it retries with
    /// backoff (logging each attempt), for at most `give_up_after` when given.
    pub async fn open(
        options: FirestoreOptions,
        rules: Arc<dyn Admission>,
        give_up_after: Option<Duration>,
    ) -> StoreResult<Arc<FirestoreStore>> {
        if options.project_id.is_empty() {
            return Err(StoreError::Backend(
                "project_id required for Firestore backend".into(),
            ));
        }
        let io = Arc::new(Io::new()?);
        let client = {
            let o = options.clone();
            io.run(async move {
                Client::new(
                    &o.project_id,
                    &o.database_id,
                    o.emulator_host.as_deref(),
                    o.deadline,
                    o.query_log,
                )
                .await
            })
            .await?
        };
        let last_seq = {
            let client = client.clone();
            io.run(async move { read_last_seq_with_retry(&client, give_up_after).await })
                .await?
        };
        let feed = Arc::new(CommitFeed::new(last_seq));
        let backend = writer::Backend {
            io: io.clone(),
            client: client.clone(),
            max_attempts: options.max_attempts.max(1),
            before_commit: options.before_commit.clone(),
            known: Default::default(),
            aborted: Default::default(),
            unreachable: Default::default(),
        };
        let writer = WriterHandle::start(
            "firestore-writer",
            backend,
            rules,
            feed.clone(),
            options.max_batch,
        )?;
        tracing::info!(database = %client.database, emulator = options.emulator_host.is_some(), "Firestore store open");
        Ok(Arc::new(FirestoreStore {
            io,
            client,
            writer,
            feed,
        }))
    }

    /// Graceful shutdown: stops accepting writes, lets the writer commit and answer what is
    /// already queued, and waits for it.
    pub fn close(&self) {
        if !self.writer.close() {
            tracing::error!(database = %self.client.database, "store writer thread panicked");
        }
    }

    /// RPCs this store sent so far, by kind.
    pub fn rpc_counts(&self) -> RpcCounts {
        self.client.counts()
    }

    /// `projects/{project}/databases/{database}`.
    pub fn database(&self) -> &str {
        &self.client.database
    }

    /// Visible events of one filter, newest first, at most `limit`, handed to `keep`: pages
    /// of each of the filter's queries, checked against the whole filter and `visible` until
    /// enough passed, the documents ran out, or the read's candidate `budget` did.
    #[allow(clippy::too_many_arguments)]
    async fn walk(
        &self,
        filter: &Filter,
        now: u64,
        limit: u64,
        budget: &mut Budget,
        scope: Option<&[String]>,
        state: &state::CommittedState<'_>,
        visible: Visible<'_>,
        keep: &mut (dyn FnMut(StoredEvent) + Send),
    ) -> StoreResult<()> {
        if let Some(ids) = &filter.ids {
            return self
                .walk_ids(ids, filter, now, limit, budget, scope, state, visible, keep)
                .await;
        }
        let size = limit.saturating_add(limit / 4).clamp(16, 1000);
        for part in query::plan(filter, scope) {
            let mut cursor = None;
            let mut taken = 0u64;
            loop {
                let size = size.min(budget.left().saturating_add(1)) as i32;
                let docs = {
                    let (client, part, filter, cursor) = (
                        self.client.clone(),
                        part.clone(),
                        filter.clone(),
                        cursor.clone(),
                    );
                    self.io
                        .run(async move {
                            Ok(query::page(&client, &part, &filter, cursor, size).await?)
                        })
                        .await?
                };
                let full = docs.len() as i32 == size;
                cursor = match docs.last() {
                    Some(d) => Some(model::Fields(d).str("order_key")?.to_string()),
                    None => None,
                };
                let done = blocking(|| -> StoreResult<bool> {
                    for doc in &docs {
                        if !budget.take() {
                            return Ok(true);
                        }
                        // A tag query cannot carry the scope: it is checked here.
                        if !part.scoped && !in_scope(doc, scope) {
                            continue;
                        }
                        let Some(stored) = matching(doc, filter, now)? else {
                            continue;
                        };
                        if !visible(&stored.event, state) {
                            continue;
                        }
                        taken += 1;
                        keep(stored);
                        if taken >= limit {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                })?;
                if budget.exhausted() {
                    return Ok(());
                }
                if done || !full {
                    break;
                }
            }
        }
        Ok(())
    }

    /// An `ids` filter: the documents by name (each id looked up is a candidate).
    #[allow(clippy::too_many_arguments)]
    async fn walk_ids(
        &self,
        ids: &[Hex32],
        filter: &Filter,
        now: u64,
        limit: u64,
        budget: &mut Budget,
        scope: Option<&[String]>,
        state: &state::CommittedState<'_>,
        visible: Visible<'_>,
        keep: &mut (dyn FnMut(StoredEvent) + Send),
    ) -> StoreResult<()> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut found = Vec::new();
        for chunk in ids.chunks(100) {
            let names: Vec<String> = chunk
                .iter()
                .map(|id| self.client.name(EVENTS, &id.to_hex()))
                .collect();
            let client = self.client.clone();
            let docs = self
                .io
                .run(async move { Ok(client.get(names, None).await?) })
                .await?;
            for doc in docs.into_iter().flatten() {
                if !budget.take() {
                    break;
                }
                if !in_scope(&doc, scope) {
                    continue;
                }
                if let Some(stored) = matching(&doc, filter, now)? {
                    found.push(stored);
                }
            }
            if budget.exhausted() {
                break;
            }
        }
        found.sort_unstable_by(|a, b| {
            b.event
                .created_at
                .cmp(&a.event.created_at)
                .then(a.event.id.cmp(&b.event.id))
        });
        blocking(|| {
            let mut taken = 0;
            for stored in found {
                if taken >= limit {
                    break;
                }
                if visible(&stored.event, state) {
                    taken += 1;
                    keep(stored);
                }
            }
        });
        Ok(())
    }
}

/// The stored event in `doc`, if it matches `filter` and has not expired at `now`.
fn matching(
    doc: &googleapis_tonic_google_firestore_v1::google::firestore::v1::Document,
    filter: &Filter,
    now: u64,
) -> StoreResult<Option<StoredEvent>> {
    let (_, stored) = model::stored_event(doc)?;
    let ev = &stored.event;
    if !filter.matches(ev)
        || stored.expires_at.is_some_and(|t| t <= now)
        || ev.expiration().is_some_and(|t| t <= now)
    {
        return Ok(None);
    }
    Ok(Some(stored))
}

/// Reads the commit stream's position, retrying with backoff while Firestore cannot be
/// reached.
async fn read_last_seq_with_retry(
    client: &Client,
    give_up_after: Option<Duration>,
) -> StoreResult<u64> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        match client.get(vec![client.name(META, META_DOC)], None).await {
            Ok(mut docs) => {
                return Ok(match docs.pop().flatten() {
                    Some(doc) => model::from_ts(model::Fields(&doc).int("last_seq")?),
                    None => 0,
                });
            }
            Err(e) => {
                let retryable = matches!(
                    e.code,
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Unknown
                        | tonic::Code::Aborted
                );
                if !retryable || give_up_after.is_some_and(|max| started.elapsed() >= max) {
                    return Err(StoreError::Backend(format!(
                        "firestore: {} unreachable: {e}",
                        client.database
                    )));
                }
                tracing::warn!(database = %client.database, error = %e,
                    retry_in_ms = delay.as_millis() as u64, "Firestore unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

impl Drop for FirestoreStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[async_trait::async_trait]
impl EventStore for FirestoreStore {
    async fn write(&self, event: Event, publisher: Publisher) -> StoreResult<WriteOutcome> {
        // Refused before the writer (so before the rules run and change any state): a
        // document cannot hold it.
        if let Some(refusal) = too_large(&self.client, &event) {
            return Ok(WriteOutcome::Rejected(refusal));
        }
        self.writer.write(event, publisher).await
    }

    async fn query(
        &self,
        filters: &[Filter],
        bounds: ReadBounds,
        now: u64,
        scope: &ReadScope,
        visible: Visible<'_>,
    ) -> StoreResult<Bounded<Vec<StoredEvent>>> {
        let scope = model::scope_entries(scope);
        let state = state::CommittedState::new(&self.io, &self.client);
        let mut budget = Budget::new(bounds);
        let mut found: HashMap<Hex32, StoredEvent> = HashMap::new();
        for filter in filters {
            let limit = filter
                .limit
                .unwrap_or(bounds.max_limit)
                .min(bounds.max_limit);
            if limit == 0 || filter.is_empty_match() {
                continue;
            }
            // A filter's parts each give their newest `limit`; the filter keeps the newest
            // `limit` of their union.
            let mut mine: HashMap<Hex32, StoredEvent> = HashMap::new();
            let mut keep = |stored: StoredEvent| {
                mine.entry(stored.event.id).or_insert(stored);
            };
            self.walk(
                filter,
                now,
                limit,
                &mut budget,
                scope.as_deref(),
                &state,
                visible,
                &mut keep,
            )
            .await?;
            let mut mine: Vec<StoredEvent> = mine.into_values().collect();
            sort_newest_first(&mut mine);
            for stored in mine.into_iter().take(limit as usize) {
                found.entry(stored.event.id).or_insert(stored);
            }
            if budget.exhausted() {
                break;
            }
        }
        let mut events: Vec<StoredEvent> = found.into_values().collect();
        sort_newest_first(&mut events);
        Ok(Bounded {
            value: events,
            complete: !budget.exhausted(),
        })
    }

    async fn count(
        &self,
        filters: &[Filter],
        bounds: ReadBounds,
        now: u64,
        scope: &ReadScope,
        visible: Visible<'_>,
    ) -> StoreResult<Bounded<u64>> {
        let scope = model::scope_entries(scope);
        let state = state::CommittedState::new(&self.io, &self.client);
        let mut budget = Budget::new(bounds);
        let mut ids: HashSet<Hex32> = HashSet::new();
        for filter in filters {
            if filter.is_empty_match() {
                continue;
            }
            let mut keep = |stored: StoredEvent| {
                ids.insert(stored.event.id);
            };
            self.walk(
                filter,
                now,
                u64::MAX,
                &mut budget,
                scope.as_deref(),
                &state,
                visible,
                &mut keep,
            )
            .await?;
            if budget.exhausted() {
                break;
            }
        }
        Ok(Bounded {
            value: ids.len() as u64,
            complete: !budget.exhausted(),
        })
    }

    async fn read_state(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        let state = state::CommittedState::new(&self.io, &self.client);
        blocking(|| f(&state))
    }

    async fn update_state(
        &self,
        f: Box<dyn for<'s> FnOnce(&'s mut dyn StateWrite) -> Result<(), Rejection> + Send>,
    ) -> StoreResult<Result<(), Rejection>> {
        // A change that writes more keys than one commit holds is refused, naming the limit,
        // before anything is applied (one that only deletes is applied in parts: see the
        // writer).
        let bounded: mls_store::writer::StateFn = Box::new(move |s: &mut dyn StateWrite| {
            let mut counted = CountedWrites {
                inner: s,
                puts: HashSet::new(),
            };
            f(&mut counted)?;
            let puts = counted.puts.len();
            if puts > writer::MAX_WRITES - 1 {
                return Err(Rejection(format!(
                    "error: this change writes {puts} state keys in one commit; Firestore \
                     commits at most {} writes and 10 MiB",
                    writer::MAX_WRITES
                )));
            }
            Ok(())
        });
        self.writer.update_state(bounded).await
    }

    async fn purge_expired(&self, now: u64) -> StoreResult<u64> {
        self.writer.purge_expired(now).await
    }

    /// Firestore answers a read of `meta/store` within a few seconds, and the writer thread
    /// is alive.
    async fn health(&self) -> StoreResult<()> {
        if self.writer.has_died() {
            return Err(StoreError::Backend("the writer thread has stopped".into()));
        }
        let client = self.client.clone();
        let database = self.client.database.clone();
        self.io
            .run(async move {
                let probe = client.get(vec![client.name(META, META_DOC)], None);
                match tokio::time::timeout(Duration::from_secs(3), probe).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => Err(StoreError::Backend(format!(
                        "firestore: {database} did not answer within 3s"
                    ))),
                }
            })
            .await
    }

    async fn close(&self) {
        blocking(|| FirestoreStore::close(self));
    }

    /// Oldest first, ties highest id first (the embedded store's export order).
    async fn export(&self, f: &mut (dyn for<'e> FnMut(&'e StoredEvent) + Send)) -> StoreResult<()> {
        let mut cursor = None;
        loop {
            let docs = {
                let (client, cursor) = (self.client.clone(), cursor.clone());
                self.io
                    .run(async move {
                        Ok(query::ordered_page(
                            &client,
                            EVENTS,
                            "order_key",
                            true,
                            cursor,
                            500,
                            None,
                        )
                        .await?)
                    })
                    .await?
            };
            let full = docs.len() == 500;
            if let Some(last) = docs.last() {
                cursor = Some(model::Fields(last).str("order_key")?.to_string());
            }
            for doc in &docs {
                f(&model::stored_event(doc)?.1);
            }
            if !full {
                return Ok(());
            }
        }
    }

    async fn backup(
        &self,
        f: &mut (dyn for<'i> FnMut(&'i BackupItem) -> bool + Send),
    ) -> StoreResult<()> {
        // One read-only transaction: every page is read at the same snapshot.
        let client = self.client.clone();
        let transaction = self
            .io
            .run(async move { Ok(client.begin(true).await?) })
            .await?;
        let parts: [(&str, &str); 4] = [
            (EVENTS, "asc_key"),
            (STATE, "k"),
            (TOMB_IDS, "id"),
            (TOMB_ADDRS, "key"),
        ];
        for (collection, field) in parts {
            let mut cursor = None;
            loop {
                let docs = {
                    let (client, cursor, tx) =
                        (self.client.clone(), cursor.clone(), transaction.clone());
                    self.io
                        .run(async move {
                            Ok(query::ordered_page(
                                &client,
                                collection,
                                field,
                                false,
                                cursor,
                                500,
                                Some(&tx),
                            )
                            .await?)
                        })
                        .await?
                };
                let full = docs.len() == 500;
                if let Some(last) = docs.last() {
                    cursor = Some(model::Fields(last).str(field)?.to_string());
                }
                for doc in &docs {
                    for item in backup_items(collection, doc)? {
                        if !f(&item) {
                            return Ok(());
                        }
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn restore(&self, items: Vec<BackupItem>) -> StoreResult<Vec<WriteOutcome>> {
        // Restored in commits of a few hundred items (Firestore's 500 writes per commit);
        // each part is atomic. A backup is restored into an empty store.
        let mut out = Vec::with_capacity(items.len());
        let mut items = items.into_iter().peekable();
        while items.peek().is_some() {
            let mut part = Vec::new();
            let mut bytes = 0;
            while let Some(item) = items.peek() {
                let size = match item {
                    BackupItem::Event(e) => e.json.len() * 2 + 512,
                    _ => 1024,
                };
                if !part.is_empty() && (part.len() >= 200 || bytes + size > 4 * 1024 * 1024) {
                    break;
                }
                bytes += size;
                part.extend(items.next());
            }
            out.extend(self.writer.restore(part).await?);
        }
        Ok(out)
    }

    async fn refresh_audiences(&self) -> StoreResult<u64> {
        self.writer.refresh_audiences().await
    }

    /// `meta/store`'s `last_seq`: what every instance's writer committed.
    async fn committed_seq(&self) -> StoreResult<u64> {
        let client = self.client.clone();
        self.io
            .run(async move {
                let meta = client.get(vec![client.name(META, META_DOC)], None).await?;
                Ok(match meta.into_iter().flatten().next() {
                    Some(doc) => model::from_ts(model::Fields(&doc).int("last_seq")?),
                    None => 0,
                })
            })
            .await
    }

    fn commits(&self) -> &CommitFeed {
        &self.feed
    }

    async fn since(&self, after: u64, limit: usize) -> StoreResult<Vec<Sequenced>> {
        let limit = i32::try_from(limit).unwrap_or(i32::MAX).min(1000);
        let client = self.client.clone();
        let docs = self
            .io
            .run(async move { Ok(query::since(&client, after, limit).await?) })
            .await?;
        docs.iter()
            .map(|d| {
                let (seq, event) = model::stored_event(d)?;
                Ok(Sequenced {
                    seq: model::from_ts(seq),
                    event,
                })
            })
            .collect()
    }
}

fn sort_newest_first(events: &mut [StoredEvent]) {
    events.sort_unstable_by(|a, b| {
        b.event
            .created_at
            .cmp(&a.event.created_at)
            .then(a.event.id.cmp(&b.event.id))
    });
}

/// The backup items one document holds.
fn backup_items(
    collection: &str,
    doc: &googleapis_tonic_google_firestore_v1::google::firestore::v1::Document,
) -> StoreResult<Vec<BackupItem>> {
    let f = model::Fields(doc);
    let hex32 = |s: &str| {
        Hex32::from_hex(s).ok_or_else(|| StoreError::Corrupt(format!("{}: not a key", doc.name)))
    };
    Ok(match collection {
        EVENTS => vec![BackupItem::Event(model::stored_event(doc)?.1)],
        STATE => {
            let (key, value) = state::row(doc)?;
            vec![BackupItem::State { key, value }]
        }
        TOMB_IDS => {
            let id = hex32(f.str("id")?)?;
            let mut deleters = f
                .strings("deleters")?
                .iter()
                .map(|d| hex32(d))
                .collect::<StoreResult<Vec<_>>>()?;
            deleters.sort_unstable();
            deleters
                .into_iter()
                .map(|deleter| BackupItem::Tombstone(Tombstone::Id { id, deleter }))
                .collect()
        }
        _ => vec![BackupItem::Tombstone(Tombstone::Address {
            kind: u16::try_from(f.int("kind")?)
                .map_err(|_| StoreError::Corrupt(format!("{}: kind", doc.name)))?,
            pubkey: hex32(f.str("pubkey")?)?,
            d: f.str("d")?.to_string(),
            until: model::from_ts(f.int("until")?),
        })],
    })
}

/// Does `doc`'s audience share a value with the read's scope (`None`: every event)?
fn in_scope(
    doc: &googleapis_tonic_google_firestore_v1::google::firestore::v1::Document,
    scope: Option<&[String]>,
) -> bool {
    let Some(scope) = scope else {
        return true;
    };
    model::Fields(doc)
        .strings("audience")
        .is_ok_and(|entries| entries.iter().any(|e| scope.contains(e)))
}

/// The refusal of an event no Firestore document can hold (1 MiB, counting its JSON and
/// indexed tags), naming the limit.
fn too_large(client: &Client, ev: &Event) -> Option<String> {
    let name = client.name(EVENTS, &ev.id.to_hex());
    let fields = model::event_fields(ev, &ev.to_json(), 0, 0, ev.expiration());
    let size = model::document_size(&name, &fields);
    (size > model::MAX_DOCUMENT_BYTES).then(|| {
        format!(
            "invalid: event too large to store: {size} bytes as a Firestore document (JSON \
             and indexed tags), at most {}",
            model::MAX_DOCUMENT_BYTES
        )
    })
}

/// The rules' state view, counting the distinct keys a change writes.
struct CountedWrites<'s> {
    inner: &'s mut dyn StateWrite,
    puts: HashSet<Vec<u8>>,
}

impl StateRead for CountedWrites<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        self.inner.scan_prefix_from(prefix, from, f)
    }
}

impl StateWrite for CountedWrites<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.puts.insert(key.to_vec());
        self.inner.put(key, value)
    }

    fn delete(&mut self, key: &[u8]) -> StoreResult<()> {
        self.puts.remove(key);
        self.inner.delete(key)
    }
}
