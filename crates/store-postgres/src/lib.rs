//! The PostgreSQL backend of [`mls_store::EventStore`] (`storage_backend = "cloudsql"`).
//!
//! Same promises as the embedded store: a write is answered only after the COMMIT of its
//! batch returned; the rules run inside that transaction over a view of the state that sees
//! the batch's own writes; duplicates, tombstones, replaceable/addressable versions (one per
//! address, enforced by a unique index), kind-5 deletions and NIP-40 behave the same. Several
//! relay instances may share one database: every writer takes the same advisory lock per
//! batch (see [`writer`]), and the schema is migrated under another (see [`schema`]).
//!
//! Threads: the database client is async (tokio-postgres, pooled by deadpool-postgres) and
//! runs on the store's own small runtime, so that the synchronous interfaces the rules and
//! the visibility predicate use ([`mls_store::StateRead`]) can wait for the database from any
//! thread without deadlocking the caller's runtime. The writer is a dedicated thread; a read
//! that must wait runs under `block_in_place`, never stalling a runtime worker's other tasks.
//! Every database operation has a client-side deadline (statement timeout + connect timeout):
//! a database that goes silent yields errors, not hangs, and a connection that missed its
//! deadline is closed rather than pooled.
//!
//! Each stored event gets `seq`, its place in commit order, handed out inside the writer lock
//! (no gaps, in commit order across instances): the commit stream ([`EventStore::since`], and
//! the [`mls_store::CommitFeed`] rung after each of this process's commits).
//!
//! Connection strings: a URL (`postgres://user:pass@host:port/db?sslmode=require`) or
//! key/value form (`host=/cloudsql/PROJECT:REGION:INSTANCE user=… dbname=…` for Cloud Run's
//! unix socket). `sslmode=require` uses rustls ([`tls`]); without `sslmode` the connection is
//! plain (a unix socket or a private network).

mod backup;
mod keys;
mod notify;
pub use notify::MAX_NOTIFY_PAYLOAD;
mod query;
mod schema;
mod state;
mod tls;
mod writer;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use mls_proto::{Event, Filter, Hex32};
use mls_store::writer::WriterHandle;
use mls_store::{
    Admission, BackupItem, Bounded, Budget, CommitFeed, EventStore, Publisher, ReadBounds,
    ReadScope, Rejection, Sequenced, StateRead, StateWrite, StoreError, StoreResult, StoredEvent,
    Visible, WriteOutcome,
};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio_postgres::config::SslMode;

/// How to reach the database and how hard to use it.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Connection string (URL or key/value form). Holds a secret: never log it as is.
    pub url: String,
    /// Most connections this instance opens (the writer uses one of them).
    pub pool_size: usize,
    /// Longest a statement may run; `None`: the server's default.
    pub statement_timeout: Option<Duration>,
    /// Longest to wait for a connection (TCP connect, or a free slot in the pool).
    pub connect_timeout: Duration,
    /// Schema holding the tables (created if missing); `None`: the connection's default
    /// (`public`). Tests give each store its own.
    pub schema: Option<String>,
    /// Most requests committed in one transaction.
    pub max_batch: usize,
    /// CA certificate (PEM) the server's chain must lead to under `sslmode=require`; `None`:
    /// the public web roots. Defaults to libpq's `PGSSLROOTCERT`.
    pub ssl_root_cert: Option<std::path::PathBuf>,
}

impl PostgresOptions {
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            pool_size: 16,
            statement_timeout: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(5),
            schema: None,
            max_batch: 1024,
            ssl_root_cert: std::env::var_os("PGSSLROOTCERT")
                .filter(|p| !p.is_empty())
                .map(Into::into),
        }
    }
}

/// Maps a database error to [`StoreError::Backend`], naming what was being done (with the
/// server's own message when there is one).
pub(crate) fn pg_error<E: std::fmt::Display + 'static>(
    what: &'static str,
) -> impl Fn(E) -> StoreError {
    move |e| {
        let any: &dyn std::any::Any = &e;
        let text = match any.downcast_ref::<tokio_postgres::Error>() {
            Some(pg) => writer::describe(pg),
            None => e.to_string(),
        };
        StoreError::Backend(format!("postgres: {what}: {text}"))
    }
}

/// The store's own runtime, on which every database connection lives.
pub(crate) struct Io {
    pub handle: tokio::runtime::Handle,
    /// Longest the client waits for any one database operation. The server's
    /// `statement_timeout` cannot end a wait on a connection that went silent (a network
    /// partition drops packets rather than resetting them): this does.
    pub deadline: Duration,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl Io {
    fn new(deadline: Duration) -> StoreResult<Io> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pg-store")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("postgres: start the store runtime: {e}")))?;
        Ok(Io {
            handle: runtime.handle().clone(),
            deadline,
            runtime: Mutex::new(Some(runtime)),
        })
    }

    /// Blocks this thread (never a runtime worker: the writer thread) on `fut`, for at most
    /// the deadline.
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> Result<T, Elapsed> {
        // The timer is made inside: it needs the runtime's context.
        let deadline = self.deadline;
        self.handle
            .block_on(async move { tokio::time::timeout(deadline, fut).await })
            .map_err(|_| Elapsed(deadline))
    }

    /// `fut` with the deadline, as a store error when it passes.
    fn bounded<T: Send + 'static>(
        &self,
        fut: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> impl Future<Output = StoreResult<T>> + Send + 'static {
        // A safety net behind the per-connection deadline of `on_pooled` (which also waits
        // for a connection first).
        let deadline = self.deadline * 2;
        async move {
            tokio::time::timeout(deadline, fut)
                .await
                .unwrap_or_else(|_| Err(Elapsed(deadline).into()))
        }
    }

    /// Runs `fut` on the store's runtime and awaits it from the caller's.
    pub async fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        self.handle
            .spawn(self.bounded(fut))
            .await
            .map_err(|e| StoreError::Backend(format!("postgres: store task failed: {e}")))?
    }

    /// Runs `fut` on the store's runtime and blocks this thread until it is done. For the
    /// synchronous state views; callers on a runtime worker wrap their loop in [`blocking`].
    pub fn wait<T: Send + 'static>(
        &self,
        fut: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        let fut = self.bounded(fut);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Backend("postgres: store runtime stopped".into()))?
    }
}

/// Runs `f` on a pooled connection for at most `deadline`. A connection that did not answer
/// in time is closed, not returned to the pool: a request may still be in flight on it, and
/// on a connection gone silent every later request would wait behind it.
pub(crate) async fn on_pooled<T>(
    pool: &Pool,
    deadline: Duration,
    f: impl for<'c> FnOnce(
        &'c deadpool_postgres::Object,
    ) -> std::pin::Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'c>>,
) -> StoreResult<T> {
    let client = pool.get().await.map_err(pg_error("database connection"))?;
    let answer = tokio::time::timeout(deadline, f(&client)).await;
    match answer {
        Ok(result) => result,
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(Elapsed(deadline).into())
        }
    }
}

/// The database did not answer within the deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Elapsed(pub Duration);

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer from the database within {:?}", self.0)
    }
}

impl From<Elapsed> for StoreError {
    fn from(e: Elapsed) -> StoreError {
        StoreError::Backend(format!("postgres: {e}"))
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

/// Runs a loop that may block on the database without stalling the async runtime: on a
/// multi-thread runtime this worker's other tasks move to another worker meanwhile; on a
/// current-thread runtime (tests, tools) it just runs (the I/O happens on the store's own
/// runtime, so it cannot deadlock).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A poisoned lock only means another thread panicked while holding it; the guarded
/// `Option`s are always in a valid state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The advisory lock key for `what` in `schema`: several stores (tests, or several
/// deployments) in one database lock independently.
fn lock_key(what: &str, schema: Option<&str>) -> i64 {
    let digest = Sha256::digest(format!("mls-gateway:{what}:{}", schema.unwrap_or("")));
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The PostgreSQL store. Open it once per process and share the `Arc`.
pub struct PostgresStore {
    io: Arc<Io>,
    pool: Pool,
    writer: WriterHandle,
    /// What logs and errors may show of the connection string (no password).
    target: String,
    feed: Arc<CommitFeed>,
    /// How to open a connection outside the pool (the LISTEN connection of [`notify`]).
    connect: notify::Connect,
}

impl PostgresStore {
    /// Connects, creates or migrates the schema, and starts the writer. While the database
    /// cannot be reached it retries with backoff (logging each attempt), for at most
    /// `give_up_after` when given; errors other than "unreachable" fail at once.
    pub async fn open(
        options: PostgresOptions,
        rules: Arc<dyn Admission>,
        give_up_after: Option<Duration>,
    ) -> StoreResult<Arc<PostgresStore>> {
        let mut pg: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e| StoreError::Backend(format!("database_url: {e}")))?;
        let target = describe_target(&pg);
        if let Some(schema) = &options.schema {
            if schema.is_empty()
                || !schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(StoreError::Backend(format!(
                    "postgres schema {schema:?}: use lowercase letters, digits and _"
                )));
            }
        }
        // Session settings ride on the startup packet, so every pooled connection has them.
        let mut session = pg.get_options().unwrap_or("").to_string();
        if let Some(t) = options.statement_timeout {
            session.push_str(&format!(" -c statement_timeout={}", t.as_millis()));
        }
        if let Some(schema) = &options.schema {
            session.push_str(&format!(" -c search_path={schema}"));
        }
        pg.options(session.trim());
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(options.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("mls-gateway");
        }
        // Without an explicit sslmode the connection is plain: tokio-postgres's default
        // ("prefer") would try TLS and then fail on a certificate it cannot verify. A unix
        // socket never uses TLS (libpq ignores sslmode there too).
        let all_sockets = pg
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
        if (pg.get_ssl_mode() == SslMode::Prefer && !options.url.contains("sslmode"))
            || (all_sockets && !pg.get_hosts().is_empty())
        {
            pg.ssl_mode(SslMode::Disable);
        }
        let tls = tls::connector(options.ssl_root_cert.as_deref()).map_err(StoreError::Backend)?;
        let connect = notify::Connect {
            config: pg.clone(),
            tls: tls.clone(),
            channel: notify::channel_name(options.schema.as_deref()),
            timeout: options.connect_timeout,
        };
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // A statement may run for its timeout; the answer then takes a moment to arrive.
        let deadline =
            options.statement_timeout.unwrap_or(Duration::from_secs(60)) + options.connect_timeout;
        let io = Arc::new(Io::new(deadline)?);
        let pool = {
            let _enter = io.handle.enter();
            Pool::builder(manager)
                .max_size(options.pool_size.max(2))
                .runtime(deadpool_postgres::Runtime::Tokio1)
                .wait_timeout(Some(options.connect_timeout))
                .create_timeout(Some(options.connect_timeout))
                .recycle_timeout(Some(options.connect_timeout))
                .build()
                .map_err(|e| StoreError::Backend(format!("postgres: connection pool: {e}")))?
        };

        let migrate_pool = pool.clone();
        let schema = options.schema.clone();
        let migrate_target = target.clone();
        // Not under the deadline: the retry loop waits for the database as long as it takes.
        io.handle
            .spawn(async move {
                migrate_with_retry(
                    &migrate_pool,
                    schema.as_deref(),
                    &migrate_target,
                    give_up_after,
                )
                .await
            })
            .await
            .map_err(|e| StoreError::Backend(format!("postgres: migration task failed: {e}")))??;

        let last_seq = io
            .run({
                let pool = pool.clone();
                let deadline = io.deadline;
                async move {
                    on_pooled(&pool, deadline, |client| {
                        Box::pin(async move {
                            let row = client
                                .query_one("SELECT last_seq FROM store_meta", &[])
                                .await
                                .map_err(pg_error("read last_seq"))?;
                            Ok(row.get::<_, i64>(0))
                        })
                    })
                    .await
                }
            })
            .await?;
        let feed = Arc::new(CommitFeed::new(last_seq.max(0) as u64));

        let writer = WriterHandle::start(
            "pg-writer",
            writer::Backend {
                io: io.clone(),
                pool: pool.clone(),
                lock_key: lock_key("writer", options.schema.as_deref()),
            },
            rules,
            feed.clone(),
            options.max_batch,
        )?;
        tracing::info!(database = %target, "PostgreSQL store open");
        Ok(Arc::new(PostgresStore {
            io,
            pool,
            writer,
            target,
            feed,
            connect,
        }))
    }

    /// Graceful shutdown: stops accepting writes, lets the writer commit and answer what is
    /// already queued, and waits for it. Reads keep working; writes get
    /// [`StoreError::Closed`].
    pub fn close(&self) {
        if !self.writer.close() {
            tracing::error!(database = %self.target, "store writer thread panicked");
        }
    }

    /// The database this store talks to, without secrets (for logs).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Visible events of one filter, newest first, at most `limit`, handed to `keep`: pages
    /// of rows from the database, checked against `visible` until enough passed, the rows ran
    /// out, or the read's candidate `budget` did (every row fetched is a candidate).
    #[allow(clippy::too_many_arguments)]
    async fn walk(
        &self,
        filter: &Filter,
        now: u64,
        limit: u64,
        scope: &Option<query::Scope>,
        budget: &mut Budget,
        state: &state::PoolState<'_>,
        visible: Visible<'_>,
        keep: &mut (dyn FnMut(StoredEvent) + Send),
    ) -> StoreResult<()> {
        // A page a bit larger than the limit, so a few hidden events cost no extra trip, and
        // never more than one row past the budget (that row only tells whether more exist).
        let size = limit.saturating_add(limit / 4).clamp(16, 1000);
        let mut cursor = None;
        let mut taken = 0u64;
        // An event under two read keys of the scope comes twice in a row.
        let mut last: Option<Vec<u8>> = None;
        loop {
            let size = size.min(budget.left().saturating_add(1)) as i64;
            let rows = self
                .io
                .run(query::page(
                    self.pool.clone(),
                    self.io.deadline,
                    filter.clone(),
                    now,
                    scope.clone(),
                    cursor.clone(),
                    size,
                ))
                .await?;
            let full = rows.len() as i64 == size;
            cursor = rows.last().and_then(query::cursor_after);
            let done = blocking(|| -> StoreResult<bool> {
                for row in rows {
                    if last.as_ref() == Some(&row.id) {
                        continue;
                    }
                    last = Some(row.id.clone());
                    if !budget.take() {
                        return Ok(true);
                    }
                    let Some(stored) = row.into_matching(filter, now)? else {
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
            if done || !full {
                return Ok(());
            }
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// `user@host:port/db` of a connection config: what logs may show (never the password).
fn describe_target(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{}/{}",
        pg.get_user().unwrap_or(""),
        hosts.join(","),
        port,
        pg.get_dbname().unwrap_or("")
    )
}

/// Applies the migrations, retrying with backoff while the database cannot be reached.
async fn migrate_with_retry(
    pool: &Pool,
    schema: Option<&str>,
    target: &str,
    give_up_after: Option<Duration>,
) -> StoreResult<()> {
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(250);
    loop {
        let mut client = match pool.get().await {
            Ok(c) => c,
            Err(e) => {
                let waited = started.elapsed();
                if give_up_after.is_some_and(|max| waited >= max) {
                    return Err(StoreError::Backend(format!(
                        "postgres: database {target} unreachable: {e}"
                    )));
                }
                tracing::warn!(database = %target, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "database unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let applied = schema::migrate(&mut client, schema, lock_key("migrate", None))
            .await
            .map_err(|e| StoreError::Backend(format!("postgres: {e}")))?;
        if !applied.is_empty() {
            tracing::info!(database = %target, versions = ?applied, "schema migrations applied");
        }
        return Ok(());
    }
}

#[async_trait::async_trait]
impl EventStore for PostgresStore {
    async fn write(&self, event: Event, publisher: Publisher) -> StoreResult<WriteOutcome> {
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
        let scope = query::Scope::of(scope);
        let state = state::PoolState::new(&self.io, &self.pool);
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
            let mut keep = |stored: StoredEvent| {
                found.entry(stored.event.id).or_insert(stored);
            };
            self.walk(
                filter,
                now,
                limit,
                &scope,
                &mut budget,
                &state,
                visible,
                &mut keep,
            )
            .await?;
            if budget.exhausted() {
                break;
            }
        }
        let mut events: Vec<StoredEvent> = found.into_values().collect();
        events.sort_unstable_by(|a, b| {
            b.event
                .created_at
                .cmp(&a.event.created_at)
                .then(a.event.id.cmp(&b.event.id))
        });
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
        let scope = query::Scope::of(scope);
        let state = state::PoolState::new(&self.io, &self.pool);
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
                &scope,
                &mut budget,
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
        let state = state::PoolState::new(&self.io, &self.pool);
        blocking(|| f(&state))
    }

    async fn update_state(
        &self,
        f: Box<dyn for<'s> FnOnce(&'s mut dyn StateWrite) -> Result<(), Rejection> + Send>,
    ) -> StoreResult<Result<(), Rejection>> {
        self.writer.update_state(f).await
    }

    async fn purge_expired(&self, now: u64) -> StoreResult<u64> {
        self.writer.purge_expired(now).await
    }

    /// The database answers a trivial query within a few seconds, and the writer thread is
    /// alive.
    async fn health(&self) -> StoreResult<()> {
        if self.writer.has_died() {
            return Err(StoreError::Backend("the writer thread has stopped".into()));
        }
        let pool = self.pool.clone();
        let target = self.target.clone();
        self.io
            .run(async move {
                // Waiting for a connection counts too: a full pool is not a healthy store.
                let probe = crate::on_pooled(&pool, Duration::from_secs(3), |client| {
                    Box::pin(async move {
                        client
                            .simple_query("SELECT 1")
                            .await
                            .map_err(pg_error("health probe"))?;
                        Ok(())
                    })
                });
                match tokio::time::timeout(Duration::from_secs(3), probe).await {
                    Ok(r) => r,
                    Err(_) => Err(StoreError::Backend(format!(
                        "postgres: database {target} did not answer within 3s"
                    ))),
                }
            })
            .await
    }

    async fn close(&self) {
        blocking(|| PostgresStore::close(self));
    }

    async fn export(&self, f: &mut (dyn for<'e> FnMut(&'e StoredEvent) + Send)) -> StoreResult<()> {
        let mut cursor = None;
        loop {
            let rows = self
                .io
                .run(query::export_page(
                    self.pool.clone(),
                    self.io.deadline,
                    cursor.clone(),
                    1000,
                ))
                .await?;
            let full = rows.len() == 1000;
            cursor = rows.last().and_then(query::cursor_after);
            for row in rows {
                f(&row.into_stored()?);
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
        let (tx, mut rx) = tokio::sync::mpsc::channel(256);
        self.io.handle.spawn(backup::produce(self.pool.clone(), tx));
        // Dropping `rx` on an early stop ends the producer (and its transaction).
        while let Some(item) = rx.recv().await {
            if !f(&item?) {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn restore(&self, items: Vec<BackupItem>) -> StoreResult<Vec<WriteOutcome>> {
        self.writer.restore(items).await
    }

    async fn refresh_audiences(&self) -> StoreResult<u64> {
        self.writer.refresh_audiences().await
    }

    fn commits(&self) -> &CommitFeed {
        &self.feed
    }

    async fn since(&self, after: u64, limit: usize) -> StoreResult<Vec<Sequenced>> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.io
            .run(query::since(
                self.pool.clone(),
                self.io.deadline,
                after,
                limit,
            ))
            .await
    }

    async fn committed_seq(&self) -> StoreResult<u64> {
        // `store_meta.last_seq` moves in the same transaction as the events it numbers.
        let pool = self.pool.clone();
        let deadline = self.io.deadline;
        let seq = self
            .io
            .run(async move {
                on_pooled(&pool, deadline, |client| {
                    Box::pin(async move {
                        // Asked twice per REQ: prepared once per connection.
                        let stmt = client
                            .prepare_cached("SELECT last_seq FROM store_meta")
                            .await
                            .map_err(pg_error("read last_seq"))?;
                        let row = client
                            .query_one(&stmt, &[])
                            .await
                            .map_err(pg_error("read last_seq"))?;
                        Ok(row.get::<_, i64>(0))
                    })
                })
                .await
            })
            .await?;
        Ok(seq.max(0) as u64)
    }
}
