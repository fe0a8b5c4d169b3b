//! The embedded backend: LMDB (through heed) in the relay's own process, no services.
//!
//! Layout, in one LMDB environment:
//! - `events`: id → record (received_at, expires_at, the event JSON as first serialised);
//! - time-ordered indexes `created`, `author`, `kind`, `author_kind`, `tag`, keyed
//!   `prefix ++ (u64::MAX - created_at) ++ id` so that cursors walk newest first
//!   (see [`keys`]);
//! - `expiry` (expires_at ++ id) for purges, `addr` (address → newest version) for
//!   replaceable and addressable events, `tomb_ids` / `tomb_addrs` for NIP-09 tombstones;
//! - `state`: the gateway's key/value state, so a rule and its state change commit together;
//! - `seq` (commit sequence → id) for the commit stream, each event's own sequence in its
//!   record (`event_seq`, id → sequence, holds it for events stored before schema 2), the
//!   last sequence handed out in `meta` (`last_seq`), all written in the event's transaction;
//! - `audience` (id → its read keys, see [`crate::audience`]) and the time-ordered
//!   `audience` (read key) and `audience_kind` (read key ++ kind) indexes, so that a read
//!   walks only events its scope holds. Events stored before these existed are given
//!   [`crate::ReadKey::Unknown`] when the store is first opened by this version.
//!
//! A backup ([`EventStore::backup`]) walks all of it in one read transaction (see `backup`); a
//! restore puts it back verbatim in the writer's transaction ([`crate::write_txn`]).
//!
//! Writes go through one writer thread that commits everything queued in one durable
//! transaction (group commit, see [`crate::writer`]; this backend's transaction is `txn`).
//! Reads run on the caller's thread with their own read transaction (LMDB readers never block
//! the writer nor each other).

mod backup;
mod keys;
mod query;
mod state;
mod txn;

use crate::writer::WriterHandle;
use crate::{
    Admission, BackupItem, Bounded, CommitFeed, EventStore, Publisher, ReadBounds, ReadScope,
    Rejection, Sequenced, StateRead, StateWrite, StoreError, StoreResult, StoredEvent, Visible,
    WriteOutcome,
};
use heed::{Database, Env, EnvOpenOptions, RwTxn, WithoutTls};
use mls_proto::{Event, Filter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) type Bytes = heed::types::Bytes;

/// Tuning of the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// Size of the memory map, i.e. the most the database can grow to. The file is sparse:
    /// this costs address space, not disk. Rounded up to a multiple of 64 KiB.
    pub map_size: usize,
    /// Most requests committed in one transaction.
    pub max_batch: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            map_size: 64 << 30,
            max_batch: 4096,
        }
    }
}

/// Bumped when the on-disk layout changes; a store written by another layout is refused
/// rather than misread. Schema 2 records carry their `seq` (see `keys::encode_record`); a
/// schema 1 store is upgraded in place at open (its records stay readable as they are), and
/// from then on a build that reads only schema 1 refuses it.
const SCHEMA_VERSION: &[u8] = b"2";
/// Layouts this build upgrades to [`SCHEMA_VERSION`] when it opens them.
const UPGRADABLE_SCHEMAS: &[&[u8]] = &[b"1"];

/// The LMDB databases of one environment.
#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    events: Database<Bytes, Bytes>,
    created: Database<Bytes, Bytes>,
    author: Database<Bytes, Bytes>,
    kind: Database<Bytes, Bytes>,
    author_kind: Database<Bytes, Bytes>,
    tag: Database<Bytes, Bytes>,
    expiry: Database<Bytes, Bytes>,
    addr: Database<Bytes, Bytes>,
    tomb_ids: Database<Bytes, Bytes>,
    tomb_addrs: Database<Bytes, Bytes>,
    state: Database<Bytes, Bytes>,
    seq: Database<Bytes, Bytes>,
    event_seq: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
    audience: Database<Bytes, Bytes>,
    audience_idx: Database<Bytes, Bytes>,
    audience_kind_idx: Database<Bytes, Bytes>,
}

impl Dbs {
    fn create(env: &Env<WithoutTls>) -> StoreResult<Dbs> {
        let mut txn = env
            .write_txn()
            .map_err(backend("begin schema transaction"))?;
        let mut db = |name: &'static str| -> StoreResult<Database<Bytes, Bytes>> {
            env.create_database(&mut txn, Some(name))
                .map_err(|e| StoreError::Backend(format!("create database {name}: {e}")))
        };
        let dbs = Dbs {
            events: db("events")?,
            created: db("idx_created")?,
            author: db("idx_author")?,
            kind: db("idx_kind")?,
            author_kind: db("idx_author_kind")?,
            tag: db("idx_tag")?,
            expiry: db("idx_expiry")?,
            addr: db("addr")?,
            tomb_ids: db("tomb_ids")?,
            tomb_addrs: db("tomb_addrs")?,
            state: db("state")?,
            // Added after schema 1 without changing its layout: a store written before has
            // no sequence numbers for its old events, and the stream starts after them.
            seq: db("seq")?,
            event_seq: db("event_seq")?,
            meta: db("meta")?,
            // Added after schema 1 too: see `backfill_audiences`.
            audience: db("audience")?,
            audience_idx: db("idx_audience")?,
            audience_kind_idx: db("idx_audience_kind")?,
        };
        check_schema(&mut txn, dbs.meta)?;
        backfill_audiences(&mut txn, &dbs)?;
        txn.commit().map_err(backend("commit schema transaction"))?;
        Ok(dbs)
    }

    fn index(&self, index: keys::Index) -> Database<Bytes, Bytes> {
        match index {
            keys::Index::Created => self.created,
            keys::Index::Author => self.author,
            keys::Index::Kind => self.kind,
            keys::Index::AuthorKind => self.author_kind,
            keys::Index::Tag => self.tag,
            keys::Index::Audience => self.audience_idx,
            keys::Index::AudienceKind => self.audience_kind_idx,
        }
    }
}

fn check_schema(txn: &mut RwTxn, meta: Database<Bytes, Bytes>) -> StoreResult<()> {
    let found = meta
        .get(txn, b"schema")
        .map_err(backend("read schema version"))?
        .map(<[u8]>::to_vec);
    match found {
        None => meta
            .put(txn, b"schema", SCHEMA_VERSION)
            .map_err(backend("write schema version")),
        Some(v) if v == SCHEMA_VERSION => Ok(()),
        Some(v) if UPGRADABLE_SCHEMAS.contains(&v.as_slice()) => {
            tracing::info!(
                from = %String::from_utf8_lossy(&v),
                to = %String::from_utf8_lossy(SCHEMA_VERSION),
                "upgrading the store's schema"
            );
            meta.put(txn, b"schema", SCHEMA_VERSION)
                .map_err(backend("write schema version"))
        }
        Some(v) => Err(StoreError::Backend(format!(
            "store has schema version {:?}, this build reads {:?}",
            String::from_utf8_lossy(&v),
            String::from_utf8_lossy(SCHEMA_VERSION)
        ))),
    }
}

/// Gives every event stored before audiences were recorded the audience
/// [`crate::ReadKey::Unknown`] (held by every reader: the visibility rule alone decides
/// them, as before), once, so that reads walking the audience indexes find them too.
fn backfill_audiences(txn: &mut RwTxn, dbs: &Dbs) -> StoreResult<()> {
    const DONE: &[u8] = b"audience";
    if dbs
        .meta
        .get(txn, DONE)
        .map_err(backend("read audience marker"))?
        .is_some()
    {
        return Ok(());
    }
    let unknown = [crate::ReadKey::Unknown.to_bytes()];
    let mut entries = Vec::new();
    for entry in dbs
        .created
        .iter(txn)
        .map_err(backend("walk created_at index"))?
    {
        let (key, meta) = entry.map_err(backend("walk created_at index"))?;
        let (Some((created_at, id)), Some((kind, _))) =
            (keys::split_suffix(key), keys::split_meta(meta))
        else {
            return Err(StoreError::Corrupt("created_at index entry".into()));
        };
        let meta = <[u8; keys::META_LEN]>::try_from(meta)
            .map_err(|_| StoreError::Corrupt("created_at index entry".into()))?;
        entries.push((created_at, id, kind, meta));
    }
    if !entries.is_empty() {
        tracing::info!(
            events = entries.len(),
            "recording the audience of events stored before audiences existed"
        );
    }
    let record = keys::encode_audience(&unknown);
    for (created_at, id, kind, meta) in entries {
        dbs.audience
            .put(txn, &id.0, &record)
            .map_err(backend("write audience record"))?;
        for (index, key) in keys::audience_index_keys(created_at, &id, kind, &unknown) {
            dbs.index(index)
                .put(txn, &key, &meta)
                .map_err(backend("write audience index entry"))?;
        }
    }
    dbs.meta
        .put(txn, DONE, b"1")
        .map_err(backend("write audience marker"))
}

/// Maps any displayable error to [`StoreError::Backend`], naming what was being done.
pub(crate) fn backend<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

/// The embedded (LMDB) store. Open it once per process and share the `Arc`.
pub struct EmbeddedStore {
    env: Env<WithoutTls>,
    dbs: Dbs,
    path: PathBuf,
    writer: WriterHandle,
    feed: Arc<CommitFeed>,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in directory `path` and starts its writer thread.
    pub fn open(
        path: &Path,
        options: EmbeddedOptions,
        rules: Arc<dyn Admission>,
    ) -> StoreResult<Arc<EmbeddedStore>> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Backend(format!("create {}: {e}", path.display())))?;
        let map_size = options.map_size.max(1 << 20).div_ceil(1 << 16) << 16;
        let mut env_options = EnvOpenOptions::new().read_txn_without_tls();
        env_options.map_size(map_size).max_dbs(32).max_readers(1024);
        // SAFETY: heed marks opening unsafe because a memory-mapped file modified behind
        // LMDB's back is undefined behaviour. We keep LMDB's locking on (no NO_LOCK) and
        // only ever touch these files through LMDB. Flags stay at their defaults, which make
        // every commit durable (fsync) — the relay's `OK true` depends on it.
        let env = unsafe { env_options.open(path) }.map_err(|e| {
            StoreError::Backend(format!("open LMDB environment {}: {e}", path.display()))
        })?;
        // A process killed while reading leaves its reader slot behind; free those now.
        env.clear_stale_readers()
            .map_err(backend("clear stale LMDB readers"))?;
        let dbs = Dbs::create(&env)?;
        let last_seq = {
            let txn = env.read_txn().map_err(backend("begin read transaction"))?;
            keys::last_seq(&txn, &dbs)?
        };
        let feed = Arc::new(CommitFeed::new(last_seq));

        let writer = WriterHandle::start(
            "store-writer",
            txn::Backend {
                env: env.clone(),
                dbs,
            },
            rules,
            feed.clone(),
            options.max_batch,
        )?;
        Ok(Arc::new(EmbeddedStore {
            env,
            dbs,
            path: path.to_path_buf(),
            writer,
            feed,
        }))
    }

    /// Graceful shutdown: stops accepting writes, lets the writer commit and answer what is
    /// already queued, and waits for it. Blocks for at most one or two commits. Reads keep
    /// working until the store is dropped; writes get [`StoreError::Closed`].
    pub fn close(&self) {
        if !self.writer.close() {
            tracing::error!(path = %self.path.display(), "store writer thread panicked");
        }
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the committed state, in one read transaction on the calling thread.
    fn with_state(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        let txn = self
            .env
            .read_txn()
            .map_err(backend("begin read transaction"))?;
        f(&state::TxnState {
            txn: &txn,
            db: self.dbs.state,
        })
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Runs a synchronous LMDB read without stalling the async runtime. The interface hands us
/// borrowed closures (`visible`, `read_state`'s `f`), which `spawn_blocking` cannot take
/// (it needs `'static`); `block_in_place` can, and hands this worker's other tasks to another
/// worker meanwhile. On a current-thread runtime (tests, tools) the read just runs inline.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Most candidates a REQ's read examines on the caller's own (runtime) thread. A read of
/// a few `limit`s' worth of candidates costs tens of microseconds, less than handing the
/// worker to another thread (`block_in_place`: a thread wake-up and two context switches,
/// ~15% of a REQ's CPU in the profile); a read that needs more is run again, whole, through
/// [`blocking`], so no read holds a runtime thread for more than this many candidates.
const INLINE_CANDIDATES: u64 = 128;

/// Candidates a query is expected to examine when every match is visible: the sum of its
/// filters' limits (`ids` filters: their ids).
fn expected_candidates(filters: &[Filter], bounds: ReadBounds) -> u64 {
    filters
        .iter()
        .filter(|f| !f.is_empty_match())
        .map(|f| {
            let limit = f.limit.unwrap_or(bounds.max_limit).min(bounds.max_limit);
            match &f.ids {
                Some(ids) if limit > 0 => limit.min(ids.len() as u64),
                _ => limit,
            }
        })
        .fold(0u64, u64::saturating_add)
}

#[async_trait::async_trait]
impl EventStore for EmbeddedStore {
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
        if expected_candidates(filters, bounds) <= INLINE_CANDIDATES {
            let small = ReadBounds {
                max_candidates: bounds.max_candidates.min(INLINE_CANDIDATES),
                ..bounds
            };
            let found = query::query(&self.env, &self.dbs, filters, small, now, scope, visible)?;
            if found.complete || small == bounds {
                return Ok(found);
            }
            // Hidden or non-matching candidates made it longer than expected: start again
            // off the runtime (a fresh snapshot; the answer is still taken in one read).
        }
        blocking(|| query::query(&self.env, &self.dbs, filters, bounds, now, scope, visible))
    }

    async fn count(
        &self,
        filters: &[Filter],
        bounds: ReadBounds,
        now: u64,
        scope: &ReadScope,
        visible: Visible<'_>,
    ) -> StoreResult<Bounded<u64>> {
        blocking(|| query::count(&self.env, &self.dbs, filters, bounds, now, scope, visible))
    }

    async fn read_state(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        blocking(|| self.with_state(f))
    }

    /// On the caller's thread: a few B-tree lookups in the memory map cost less than the
    /// hand-off of [`blocking`].
    async fn read_state_brief(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        self.with_state(f)
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

    /// The store is usable: its file is still where it was opened (not a vanished volume),
    /// the writer thread has not died, and a read transaction opens.
    async fn health(&self) -> StoreResult<()> {
        let file = self.path().join("data.mdb");
        if !file.exists() {
            return Err(StoreError::Backend(format!(
                "{} is missing",
                file.display()
            )));
        }
        // After `close()` reads still work; a writer that ended on its own did not.
        if self.writer.has_died() {
            return Err(StoreError::Backend("the writer thread has stopped".into()));
        }
        self.env
            .read_txn()
            .map(drop)
            .map_err(backend("begin read transaction"))
    }

    async fn export(&self, f: &mut (dyn for<'e> FnMut(&'e StoredEvent) + Send)) -> StoreResult<()> {
        blocking(|| query::export(&self.env, &self.dbs, f))
    }

    async fn backup(
        &self,
        f: &mut (dyn for<'i> FnMut(&'i BackupItem) -> bool + Send),
    ) -> StoreResult<()> {
        blocking(|| backup::backup(&self.env, &self.dbs, f))
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
        blocking(|| query::since(&self.env, &self.dbs, after, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Admitted, Audience, ReadKey, StateRead};
    use mls_proto::Hex32;

    /// Every event is for the pubkey in its `p` tag alone.
    struct ForItsP;

    impl Admission for ForItsP {
        fn admit(
            &self,
            _: &Event,
            _: &Publisher,
            _: u64,
            _: &mut dyn StateWrite,
        ) -> Result<Admitted, Rejection> {
            Ok(Admitted {
                expires_at: None,
                store: true,
            })
        }

        fn audience(&self, ev: &Event, _: &dyn StateRead) -> Audience {
            Audience::new(
                ev.tag_values("p")
                    .filter_map(Hex32::from_hex)
                    .map(ReadKey::Pubkey)
                    .collect(),
            )
        }
    }

    fn wrap(to: &Hex32, created_at: u64) -> Event {
        let k = secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng());
        Event::sign(
            &k,
            created_at,
            1059,
            vec![vec!["p".into(), to.to_hex()]],
            "x",
        )
    }

    async fn read(store: &EmbeddedStore, scope: &ReadScope) -> Vec<Hex32> {
        let mut answers = Vec::new();
        for f in [
            Filter::default(),
            Filter::from_value(&serde_json::json!({"kinds": [1059]})).unwrap(),
        ] {
            let found = store
                .query(
                    &[f],
                    ReadBounds::unbounded(100),
                    mls_proto::unix_now(),
                    scope,
                    &|_, _| true,
                )
                .await
                .unwrap();
            let mut ids: Vec<Hex32> = found.value.iter().map(|s| s.event.id).collect();
            ids.sort();
            answers.push(ids);
        }
        assert_eq!(answers[0], answers[1], "by kind answers like no filter");
        answers.remove(0)
    }

    /// A read that starts on the runtime's thread and finds more hidden candidates than it
    /// may examine there is run again, whole, off it: the answer is the same as one read
    /// under the caller's bound, and "incomplete" only when that bound (not the inline one)
    /// was reached.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_past_the_inline_bound_is_answered_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        let to = Hex32([7; 32]);
        let t = mls_proto::unix_now() - 1000;
        let hidden = INLINE_CANDIDATES as usize * 2;
        let mut visible_ids = Vec::new();
        // The oldest 5 are visible, the newer ones hidden: a newest-first walk meets every
        // hidden one before any visible one.
        for i in 0..hidden + 5 {
            let e = wrap(&to, t + i as u64);
            if i < 5 {
                visible_ids.push(e.id);
            }
            store.write(e, Publisher::default()).await.unwrap();
        }
        visible_ids.reverse(); // newest first
        let shown: std::collections::HashSet<Hex32> = visible_ids.iter().copied().collect();
        let visible = |ev: &Event, _: &dyn StateRead| shown.contains(&ev.id);
        let filter =
            Filter::from_value(&serde_json::json!({"kinds": [1059], "limit": 10})).unwrap();
        let everything = ReadScope::everything();
        let read = |max_candidates| {
            store.query(
                std::slice::from_ref(&filter),
                ReadBounds {
                    max_limit: 500,
                    max_candidates,
                },
                mls_proto::unix_now(),
                &everything,
                &visible,
            )
        };
        let whole = read(10_000).await.unwrap();
        assert!(whole.complete, "the caller's bound was not reached");
        let ids: Vec<Hex32> = whole.value.iter().map(|s| s.event.id).collect();
        assert_eq!(ids, visible_ids);

        let cut = read(INLINE_CANDIDATES / 2).await.unwrap();
        assert!(!cut.complete, "stopped at the caller's bound");
        assert!(cut.value.is_empty(), "only hidden events within the bound");
    }

    #[test]
    fn expected_candidates_adds_the_limits_capped_by_max_limit() {
        let bounds = ReadBounds {
            max_limit: 100,
            max_candidates: 10_000,
        };
        let f = |v: serde_json::Value| Filter::from_value(&v).unwrap();
        let id = "ab".repeat(32);
        let filters = [
            f(serde_json::json!({"kinds": [1], "limit": 10})),
            f(serde_json::json!({"authors": [id], "limit": 5000})),
            f(serde_json::json!({"ids": [id], "limit": 50})),
            f(serde_json::json!({"kinds": [1], "limit": 0})),
        ];
        assert_eq!(expected_candidates(&filters, bounds), 10 + 100 + 1);
        assert_eq!(
            expected_candidates(&[f(serde_json::json!({}))], bounds),
            100,
            "no limit: max_limit"
        );
    }

    #[tokio::test]
    async fn events_stored_before_audiences_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let (reader, stranger) = (Hex32([1; 32]), Hex32([2; 32]));
        let t = mls_proto::unix_now() - 100;
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        let mut old = Vec::new();
        for i in 0..3 {
            let e = wrap(&reader, t + i);
            store.write(e.clone(), Publisher::default()).await.unwrap();
            old.push(e.id);
        }
        old.sort();
        // The store as a build before audiences left it: no audience record, index entry or
        // marker.
        store.close();
        {
            let mut txn = store.env.write_txn().unwrap();
            for db in [
                store.dbs.audience,
                store.dbs.audience_idx,
                store.dbs.audience_kind_idx,
            ] {
                db.clear(&mut txn).unwrap();
            }
            store.dbs.meta.delete(&mut txn, b"audience").unwrap();
            txn.commit().unwrap();
        }
        drop(store);

        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        let strangers = ReadScope::holding(vec![ReadKey::Pubkey(stranger)], false);
        assert_eq!(
            read(&store, &strangers).await,
            old,
            "old events: for the rule to decide"
        );
        let new = wrap(&reader, t + 10);
        store
            .write(new.clone(), Publisher::default())
            .await
            .unwrap();
        assert_eq!(
            read(&store, &strangers).await,
            old,
            "the new one is not the stranger's"
        );
        let mut all = old.clone();
        all.push(new.id);
        all.sort();
        let readers = ReadScope::holding(vec![ReadKey::Pubkey(reader)], false);
        assert_eq!(read(&store, &readers).await, all);
    }

    fn expiring_wrap(to: &Hex32, created_at: u64, expires_at: u64) -> Event {
        let k = secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng());
        Event::sign(
            &k,
            created_at,
            1059,
            vec![
                vec!["p".into(), to.to_hex()],
                vec!["expiration".into(), expires_at.to_string()],
            ],
            "x",
        )
    }

    #[tokio::test]
    async fn a_schema_1_store_is_upgraded_and_its_old_records_still_leave_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let now = mls_proto::unix_now();
        let reader = Hex32([1; 32]);
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        let old = expiring_wrap(&reader, now - 100, now + 1000);
        store
            .write(old.clone(), Publisher::default())
            .await
            .unwrap();
        store.close();
        // The store as schema 1 left it: the record without its seq, which is in `event_seq`.
        {
            let mut txn = store.env.write_txn().unwrap();
            let bytes = store
                .dbs
                .events
                .get(&txn, &old.id.0)
                .unwrap()
                .unwrap()
                .to_vec();
            let record = keys::decode_record(&bytes).unwrap();
            let seq = record.seq.unwrap();
            let v1 = keys::encode_record_v1(record.received_at, record.expires_at, record.json);
            store.dbs.events.put(&mut txn, &old.id.0, &v1).unwrap();
            store
                .dbs
                .event_seq
                .put(&mut txn, &old.id.0, &seq.to_be_bytes())
                .unwrap();
            let expires_at = record.expires_at.unwrap();
            store
                .dbs
                .expiry
                .delete(&mut txn, &keys::expiry_seq_key(expires_at, seq))
                .unwrap();
            store
                .dbs
                .expiry
                .put(&mut txn, &keys::expiry_key(expires_at, &old.id), &[])
                .unwrap();
            store.dbs.meta.put(&mut txn, b"schema", b"1").unwrap();
            txn.commit().unwrap();
        }
        drop(store);

        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        {
            let txn = store.env.read_txn().unwrap();
            let schema = store.dbs.meta.get(&txn, b"schema").unwrap();
            assert_eq!(schema, Some(SCHEMA_VERSION), "upgraded at open");
        }
        let new = expiring_wrap(&reader, now - 50, now + 1000);
        store
            .write(new.clone(), Publisher::default())
            .await
            .unwrap();
        let readers = ReadScope::holding(vec![ReadKey::Pubkey(reader)], false);
        let mut both = vec![old.id, new.id];
        both.sort();
        assert_eq!(
            read(&store, &readers).await,
            both,
            "the old record reads as before"
        );
        let stream: Vec<(u64, Hex32)> = store
            .since(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|s| (s.seq, s.event.event.id))
            .collect();
        assert_eq!(stream, vec![(1, old.id), (2, new.id)], "one commit order");
        {
            let txn = store.env.read_txn().unwrap();
            assert_eq!(
                store.dbs.event_seq.len(&txn).unwrap(),
                1,
                "none for the new one"
            );
        }

        assert_eq!(store.purge_expired(now + 2000).await.unwrap(), 2);
        let txn = store.env.read_txn().unwrap();
        assert_eq!(
            store.dbs.seq.len(&txn).unwrap(),
            0,
            "both seq entries removed"
        );
        assert_eq!(store.dbs.event_seq.len(&txn).unwrap(), 0);
        assert_eq!(store.dbs.events.len(&txn).unwrap(), 0);
        assert_eq!(
            store.dbs.expiry.len(&txn).unwrap(),
            0,
            "both expiry layouts removed"
        );
        drop(txn);
        assert_eq!(keys_last_seq(&store), 2, "seq never handed out twice");
    }

    fn keys_last_seq(store: &EmbeddedStore) -> u64 {
        let txn = store.env.read_txn().unwrap();
        keys::last_seq(&txn, &store.dbs).unwrap()
    }
}
