//! The embedded backend: LMDB (through heed) in the relay's own process, no services.
//!
//! Layout (schema 5), in one LMDB environment:
//! - `events_by_seq`: the event's commit sequence number (`seq`, big-endian) → its record
//!   (received_at, expires_at, the read keys of its audience, the event JSON as first
//!   serialised; see [`keys::encode_record`]). A new event's `seq` is past every stored one,
//!   so a commit appends to the last pages of this table instead of touching one page per
//!   event at random; the commit stream ([`EventStore::since`]) reads it from a `seq` on;
//! - `ids`: event id → `seq`, the only table keyed by event id (8-byte values);
//! - time-ordered indexes `created`, `kind`, `author_kind`, `tag`, keyed
//!   `prefix ++ (u64::MAX - created_at) ++ seq` so that cursors walk newest first and a
//!   burst's entries (one second) sit side by side, with `kind ++ pubkey ++ id` as the value,
//!   so that a query rejects a candidate without its record, puts a second's entries lowest
//!   id first, and reads one that passes in one lookup (see [`keys`]); a read by author alone
//!   walks `author_kind` once per kind the author has;
//! - the time-ordered `audience_kind` index (read key ++ kind), so that a read walks only
//!   events its scope holds (see [`crate::audience`]), per kind as above; every event a group
//!   reads is also listed under one prefix for all groups (`keys::EVERY_GROUP`), for a scope
//!   that holds every group;
//! - `expiry` (expires_at ++ seq) for purges, `addr` (address → newest version) for
//!   replaceable and addressable events, `tomb_ids` / `tomb_addrs` for NIP-09 tombstones;
//! - `state`: the gateway's key/value state, so a rule and its state change commit together;
//! - `meta`: the schema version and the last `seq` handed out (`last_seq`).
//!
//! A store of schema 1, 2 (records keyed by id), 3 (with an author index and an audience
//! index without kinds) or 4 (index keys ending with the id) is upgraded when first opened by
//! this build (see `upgrade`).
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
mod records;
mod state;
mod txn;
mod upgrade;

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
use std::time::Instant;

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
/// rather than misread. Schema 3 keys records by `seq`; schema 4 drops the author index and
/// the audience index without kinds; schema 5 ends index keys with `seq` in place of the id
/// (see `keys`). Older layouts are upgraded at open (see `upgrade`), and from then on an
/// older build refuses the store.
const SCHEMA_VERSION: &[u8] = b"5";
/// Layouts this build upgrades to [`SCHEMA_VERSION`] when it opens them.
const UPGRADABLE_SCHEMAS: &[&[u8]] = &[b"1", b"2", b"3", b"4"];

/// The LMDB databases of one environment.
#[derive(Clone, Copy)]
pub(crate) struct Dbs {
    events: Database<Bytes, Bytes>,
    ids: Database<Bytes, Bytes>,
    created: Database<Bytes, Bytes>,
    kind: Database<Bytes, Bytes>,
    author_kind: Database<Bytes, Bytes>,
    tag: Database<Bytes, Bytes>,
    expiry: Database<Bytes, Bytes>,
    addr: Database<Bytes, Bytes>,
    tomb_ids: Database<Bytes, Bytes>,
    tomb_addrs: Database<Bytes, Bytes>,
    state: Database<Bytes, Bytes>,
    meta: Database<Bytes, Bytes>,
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
            events: db("events_by_seq")?,
            ids: db("ids")?,
            created: db("idx_created")?,
            kind: db("idx_kind")?,
            author_kind: db("idx_author_kind")?,
            tag: db("idx_tag")?,
            expiry: db("idx_expiry")?,
            addr: db("addr")?,
            tomb_ids: db("tomb_ids")?,
            tomb_addrs: db("tomb_addrs")?,
            state: db("state")?,
            meta: db("meta")?,
            audience_kind_idx: db("idx_audience_kind")?,
        };
        let upgrade = match check_schema(&mut txn, dbs.meta)? {
            None => None,
            Some(from) => {
                let started = Instant::now();
                let done = upgrade::upgrade(env, &mut txn, &dbs, &from)?;
                Some((from, started, done))
            }
        };
        txn.commit().map_err(backend("commit schema transaction"))?;
        if let Some((from, started, done)) = upgrade {
            tracing::info!(
                from,
                to = %String::from_utf8_lossy(SCHEMA_VERSION),
                events = done.events,
                given_a_seq = done.given_a_seq,
                last_seq = done.last_seq,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "upgraded the store's schema"
            );
        }
        Ok(dbs)
    }

    fn index(&self, index: keys::Index) -> Database<Bytes, Bytes> {
        match index {
            keys::Index::Created => self.created,
            keys::Index::Kind => self.kind,
            keys::Index::AuthorKind => self.author_kind,
            keys::Index::Tag => self.tag,
            keys::Index::AudienceKind => self.audience_kind_idx,
        }
    }
}

/// Checks the store's schema version (writing it into a new store) and marks an older one
/// as upgraded; returns the version it had when it needs upgrading. The transaction is
/// committed only after the upgrade, so a refused or failed open changes nothing.
fn check_schema(txn: &mut RwTxn, meta: Database<Bytes, Bytes>) -> StoreResult<Option<String>> {
    let found = meta
        .get(txn, b"schema")
        .map_err(backend("read schema version"))?
        .map(<[u8]>::to_vec);
    match found {
        None => meta
            .put(txn, b"schema", SCHEMA_VERSION)
            .map(|()| None)
            .map_err(backend("write schema version")),
        Some(v) if v == SCHEMA_VERSION => Ok(None),
        Some(v) if UPGRADABLE_SCHEMAS.contains(&v.as_slice()) => {
            let from = String::from_utf8_lossy(&v).into_owned();
            tracing::info!(
                from,
                to = %String::from_utf8_lossy(SCHEMA_VERSION),
                "upgrading the store's schema"
            );
            meta.put(txn, b"schema", SCHEMA_VERSION)
                .map_err(backend("write schema version"))?;
            Ok(Some(from))
        }
        Some(v) => Err(StoreError::Backend(format!(
            "store has schema version {:?}, this build reads {:?}",
            String::from_utf8_lossy(&v),
            String::from_utf8_lossy(SCHEMA_VERSION)
        ))),
    }
}

/// Maps any displayable error to [`StoreError::Backend`], naming what was being done.
pub(crate) fn backend(what: &'static str) -> impl Fn(heed::Error) -> StoreError {
    move |e| StoreError::Backend(format!("{what}: {}", describe(e)))
}

/// An LMDB error as text; the one an operator fixes by configuration says how.
pub(crate) fn describe(e: heed::Error) -> String {
    match e {
        heed::Error::Mdb(heed::MdbError::MapFull) => format!(
            "{e} (the store reached its maximum size: raise [data] max_size_gib and restart)"
        ),
        e => e.to_string(),
    }
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
            Audience::new(audience_keys(ev))
        }
    }

    fn fresh_keys() -> secp256k1::Keypair {
        secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
    }

    /// The audience of [`ForItsP`]: its `p` tags' pubkeys and its `h` tags' groups.
    fn audience_keys(ev: &Event) -> Vec<ReadKey> {
        let pubkeys = ev
            .tag_values("p")
            .filter_map(Hex32::from_hex)
            .map(ReadKey::Pubkey);
        let groups = ev.tag_values("h").map(|g| ReadKey::Group(g.to_string()));
        pubkeys.chain(groups).collect()
    }

    fn wrap(to: &Hex32, created_at: u64) -> Event {
        let k = fresh_keys();
        Event::sign(
            &k,
            created_at,
            1059,
            vec![vec!["p".into(), to.to_hex()]],
            "x",
        )
    }

    fn expiring_wrap(to: &Hex32, created_at: u64, expires_at: u64) -> Event {
        let k = fresh_keys();
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

    fn signed(k: &secp256k1::Keypair, created_at: u64, kind: u16, tags: Vec<Vec<String>>) -> Event {
        Event::sign(k, created_at, kind, tags, "x")
    }

    fn p_tag(to: &Hex32) -> Vec<String> {
        vec!["p".into(), to.to_hex()]
    }

    /// A store as an older build left it: opened (so that this build's tables exist, empty),
    /// closed, then `write` puts the old layout in with [`upgrade::old_layout`].
    async fn old_store(dir: &Path, write: impl FnOnce(&Env<WithoutTls>, &mut RwTxn, &Dbs)) {
        let store =
            EmbeddedStore::open(dir, EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        store.close();
        let mut txn = store.env.write_txn().unwrap();
        write(&store.env, &mut txn, &store.dbs);
        txn.commit().unwrap();
    }

    /// Key and value of a table entry.
    type Entry = (Vec<u8>, Vec<u8>);

    /// What a store holds, to compare two opens: every record and index entry, `last_seq`.
    fn snapshot(store: &EmbeddedStore) -> (Vec<Entry>, u64) {
        let txn = store.env.read_txn().unwrap();
        let mut all = Vec::new();
        let d = &store.dbs;
        let tables = [
            d.events,
            d.ids,
            d.created,
            d.tag,
            d.kind,
            d.author_kind,
            d.audience_kind_idx,
            d.expiry,
            d.addr,
        ];
        for db in tables {
            for entry in db.iter(&txn).unwrap() {
                let (k, v) = entry.unwrap();
                all.push((k.to_vec(), v.to_vec()));
            }
        }
        (all, keys::last_seq(&txn, d).unwrap())
    }

    async fn stream(store: &EmbeddedStore) -> Vec<(u64, Hex32)> {
        store
            .since(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|s| (s.seq, s.event.event.id))
            .collect()
    }

    fn schema(store: &EmbeddedStore) -> Vec<u8> {
        let txn = store.env.read_txn().unwrap();
        store
            .dbs
            .meta
            .get(&txn, b"schema")
            .unwrap()
            .unwrap()
            .to_vec()
    }

    fn sorted(mut ids: Vec<Hex32>) -> Vec<Hex32> {
        ids.sort();
        ids
    }

    /// A schema 1 store from before audiences and, for its oldest event, before the commit
    /// stream: every event moves to its `seq` (the oldest gets one past `last_seq`), events
    /// without an audience are for the visibility rule alone, expiry, addresses and
    /// tombstones work as before, nothing is replayed, and a second open changes nothing.
    #[tokio::test]
    async fn a_schema_1_store_is_upgraded_to_records_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let now = mls_proto::unix_now();
        let (reader, stranger) = (Hex32([1; 32]), Hex32([2; 32]));
        let author = fresh_keys();
        // Before the commit stream: no seq at all.
        let oldest = wrap(&reader, now - 300);
        // seq 1 (in `event_seq`), expiring.
        let expiring = expiring_wrap(&reader, now - 200, now + 1000);
        // seq 2, addressable.
        let d = vec!["d".to_string(), "list".to_string()];
        let addressed = signed(&author, now - 100, 30000, vec![d.clone(), p_tag(&reader)]);
        // Deleted by its author (id tombstone), no longer stored.
        let deleted = signed(&author, now - 50, 1, vec![p_tag(&reader)]);
        old_store(dir.path(), |env, txn, dbs| {
            use upgrade::old_layout::{finish, put, Old};
            for (ev, seq, expires_at) in [
                (&oldest, None, None),
                (&expiring, Some(1), Some(now + 1000)),
                (&addressed, Some(2), None),
            ] {
                put(
                    env,
                    txn,
                    dbs,
                    &Old {
                        ev,
                        received_at: now,
                        expires_at,
                        seq,
                        in_record: false,
                        audience: None,
                    },
                );
            }
            dbs.tomb_ids
                .put(txn, &keys::tomb_id_key(&deleted.id, &deleted.pubkey), &[])
                .unwrap();
            finish(txn, dbs, "1", 2, false);
        })
        .await;

        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION, "upgraded at open");
        for name in upgrade::old_layout::TABLES {
            assert!(
                !upgrade::old_layout::exists(&store.env, name),
                "{name} removed"
            );
        }
        assert_eq!(
            stream(&store).await,
            vec![(1, expiring.id), (2, addressed.id), (3, oldest.id)],
            "each at its seq, the oldest one past the last"
        );
        assert_eq!(keys_last_seq(&store), 3);
        assert_eq!(
            store.commits().last_seq(),
            3,
            "the stream starts after them"
        );
        let all = sorted(vec![oldest.id, expiring.id, addressed.id]);
        let strangers = ReadScope::holding(vec![ReadKey::Pubkey(stranger)], false);
        assert_eq!(
            read_any(&store, &strangers).await,
            all,
            "no audience: for the rule to decide"
        );
        let store = reopened_unchanged(store, dir.path());
        let outcome = store
            .write(deleted.clone(), Publisher::default())
            .await
            .unwrap();
        assert!(
            matches!(outcome, WriteOutcome::Rejected(r) if r.contains("deleted")),
            "tombstone kept"
        );
        let older = signed(&author, now - 150, 30000, vec![d.clone(), p_tag(&reader)]);
        let outcome = store.write(older, Publisher::default()).await.unwrap();
        assert!(
            matches!(outcome, WriteOutcome::Rejected(r) if r.contains("newer")),
            "address kept"
        );
        let newer = signed(&author, now - 10, 30000, vec![d, p_tag(&stranger)]);
        let outcome = store
            .write(newer.clone(), Publisher::default())
            .await
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Accepted));
        assert_eq!(
            stream(&store).await,
            vec![(1, expiring.id), (3, oldest.id), (4, newer.id)],
            "the replaced version is gone, the new one is next in order"
        );
        assert_eq!(
            read_any(&store, &strangers).await,
            sorted(vec![oldest.id, expiring.id, newer.id])
        );

        assert_eq!(store.purge_expired(now + 2000).await.unwrap(), 1);
        let txn = store.env.read_txn().unwrap();
        assert_eq!(
            store.dbs.expiry.len(&txn).unwrap(),
            0,
            "expiry entry gone with it"
        );
        assert_eq!(store.dbs.events.len(&txn).unwrap(), 2);
        assert_eq!(store.dbs.ids.len(&txn).unwrap(), 2);
        drop(txn);
        assert_eq!(keys_last_seq(&store), 4, "seq never handed out twice");
    }

    /// A schema 2 store (records carrying their `seq`, audiences recorded) with a schema 1
    /// record left in it: audiences keep the reads to their readers, expiry and address
    /// tombstones work as before, the stream position stays.
    #[tokio::test]
    async fn a_schema_2_store_is_upgraded_to_records_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let now = mls_proto::unix_now();
        let (reader, stranger) = (Hex32([1; 32]), Hex32([2; 32]));
        let author = fresh_keys();
        let from_schema_1 = expiring_wrap(&reader, now - 300, now + 1000);
        let expiring = expiring_wrap(&reader, now - 200, now + 1000);
        let d = vec!["d".to_string(), "list".to_string()];
        let addressed = signed(&author, now - 100, 30000, vec![d.clone(), p_tag(&stranger)]);
        let for_reader = wrap(&reader, now - 50);
        old_store(dir.path(), |env, txn, dbs| {
            use upgrade::old_layout::{finish, put, Old};
            let audience = |to: &Hex32| Some(vec![ReadKey::Pubkey(*to).to_bytes()]);
            let events = [
                (
                    &from_schema_1,
                    3,
                    false,
                    Some(now + 1000),
                    audience(&reader),
                ),
                (&expiring, 5, true, Some(now + 1000), audience(&reader)),
                (&addressed, 6, true, None, audience(&stranger)),
                (&for_reader, 8, true, None, audience(&reader)),
            ];
            for (ev, seq, in_record, expires_at, audience) in events {
                let old = Old {
                    ev,
                    received_at: now,
                    expires_at,
                    seq: Some(seq),
                    in_record,
                    audience,
                };
                put(env, txn, dbs, &old);
            }
            let tomb = keys::tomb_addr_value(now - 20, "list");
            let address = crate::address::Address::of(&addressed).unwrap();
            dbs.tomb_addrs.put(txn, &address.key, &tomb).unwrap();
            finish(txn, dbs, "2", 9, true);
        })
        .await;

        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION);
        assert_eq!(
            stream(&store).await,
            vec![
                (3, from_schema_1.id),
                (5, expiring.id),
                (6, addressed.id),
                (8, for_reader.id)
            ]
        );
        assert_eq!(keys_last_seq(&store), 9, "last_seq as it was");
        assert_eq!(store.commits().last_seq(), 9);
        let readers = ReadScope::holding(vec![ReadKey::Pubkey(reader)], false);
        let strangers = ReadScope::holding(vec![ReadKey::Pubkey(stranger)], false);
        assert_eq!(
            read_any(&store, &readers).await,
            sorted(vec![from_schema_1.id, expiring.id, for_reader.id])
        );
        assert_eq!(read_any(&store, &strangers).await, vec![addressed.id]);
        // A narrow read (by author) checks each record's audience.
        let by_author =
            Filter::from_value(&serde_json::json!({"authors": [addressed.pubkey.to_hex()]}))
                .unwrap();
        let found = store
            .query(
                &[by_author],
                ReadBounds::unbounded(100),
                now,
                &readers,
                &|_, _| true,
            )
            .await
            .unwrap();
        assert!(found.value.is_empty(), "not the reader's");
        let store = reopened_unchanged(store, dir.path());
        let outcome = store
            .write(
                signed(&author, now - 30, 30000, vec![d, p_tag(&reader)]),
                Publisher::default(),
            )
            .await
            .unwrap();
        assert!(
            matches!(outcome, WriteOutcome::Rejected(r) if r.contains("deleted")),
            "address tombstone kept"
        );
        let new = wrap(&reader, now - 5);
        store
            .write(new.clone(), Publisher::default())
            .await
            .unwrap();
        assert_eq!(stream(&store).await.last(), Some(&(10, new.id)));
        assert_eq!(
            store.purge_expired(now + 2000).await.unwrap(),
            2,
            "both expiry layouts"
        );
        let txn = store.env.read_txn().unwrap();
        assert_eq!(store.dbs.expiry.len(&txn).unwrap(), 0);
        assert_eq!(store.dbs.events.len(&txn).unwrap(), 3);
    }

    /// The every-group entries' prefix is no read key's first byte, so no scope's walk of its
    /// own keys runs into them.
    #[test]
    fn the_every_group_prefix_is_no_read_keys_first_byte() {
        for key in [
            ReadKey::Anyone,
            ReadKey::Readers,
            ReadKey::Admins,
            ReadKey::Pubkey(Hex32([5; 32])),
            ReadKey::Group("g".into()),
            ReadKey::Group("x".repeat(300)),
            ReadKey::Unknown,
        ] {
            assert_ne!(key.to_bytes()[0], keys::EVERY_GROUP, "{key:?}");
        }
    }

    /// A store of a later schema is refused, and the refusal leaves it as it was.
    #[tokio::test]
    async fn a_store_of_another_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        old_store(dir.path(), |_, txn, dbs| {
            dbs.meta.put(txn, b"schema", b"6").unwrap();
        })
        .await;
        let refused =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP));
        assert!(
            matches!(refused, Err(StoreError::Backend(e)) if e.contains("schema version \"6\""))
        );
    }

    /// A schema 3 store (with the author index and the audience index without kinds): the
    /// two tables go, nothing else changes, and reads by author alone and by scope alone
    /// still find every event, newest first, across kinds.
    #[tokio::test]
    async fn a_schema_3_store_loses_its_author_and_audience_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let now = mls_proto::unix_now();
        let (reader, stranger) = (Hex32([1; 32]), Hex32([2; 32]));
        let author = fresh_keys();
        let by_author = [
            signed(&author, now - 40, 1, vec![p_tag(&reader)]),
            signed(&author, now - 30, 7, vec![p_tag(&stranger)]),
            signed(
                &author,
                now - 20,
                30000,
                vec![vec!["d".into(), "x".into()], p_tag(&reader)],
            ),
            signed(&author, now - 10, 1, vec![p_tag(&reader)]),
        ];
        let group_message = |group: &str, created_at: u64| {
            let k = fresh_keys();
            signed(&k, created_at, 445, vec![vec!["h".into(), group.into()]])
        };
        let others = [
            wrap(&reader, now - 35),
            wrap(&stranger, now - 5),
            group_message("g1", now - 25),
            group_message("g2", now - 15),
            group_message("g1", now - 3),
        ];
        let all: Vec<Event> = by_author.iter().chain(&others).cloned().collect();
        let (store, before) = stored(dir.path(), &all).await;
        // Schema 3: keys ending with the id, no every-group entries, and the two indexes.
        rewrite_indexes_as(&store, &all, b"3");
        drop(store);

        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION, "upgraded at open");
        for name in ["idx_author", "idx_audience"] {
            assert!(
                !upgrade::old_layout::exists(&store.env, name),
                "{name} removed"
            );
        }
        assert!(
            snapshot(&store) == before,
            "the other tables are as the current schema writes them"
        );
        let store = reopened_unchanged(store, dir.path());

        let newest_first = |evs: &[&Event]| -> Vec<Hex32> {
            let mut evs = evs.to_vec();
            evs.sort_by_key(|e| std::cmp::Reverse(e.created_at));
            evs.iter().map(|e| e.id).collect()
        };
        let found = ids_read(
            &store,
            serde_json::json!({"authors": [by_author[0].pubkey.to_hex()], "limit": 3}),
            &ReadScope::everything(),
        )
        .await;
        let all: Vec<&Event> = by_author.iter().collect();
        assert_eq!(
            found,
            newest_first(&all)[..3],
            "by author alone: every kind, newest first"
        );

        let readers = ReadScope::holding(vec![ReadKey::Pubkey(reader)], false);
        let want = sorted(vec![
            by_author[0].id,
            by_author[2].id,
            by_author[3].id,
            others[0].id,
        ]);
        assert_eq!(
            read_any(&store, &readers).await,
            want,
            "by scope alone: every kind"
        );
        assert_eq!(
            ids_read(
                &store,
                serde_json::json!({"limit": 2}),
                &ReadScope::holding(Vec::new(), true)
            )
            .await,
            vec![others[4].id, others[3].id],
            "every group, newest first: the every-group entries the upgrade added"
        );
    }

    /// A schema 4 store (index keys ending with the id, values with the `seq`): its indexes
    /// are written again as the current schema writes them, records untouched, and reads
    /// still come newest first, ties lowest id first.
    #[tokio::test]
    async fn a_schema_4_store_has_its_indexes_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let now = mls_proto::unix_now();
        let reader = Hex32([1; 32]);
        let group_message = |group: &str, created_at: u64| {
            signed(
                &fresh_keys(),
                created_at,
                445,
                vec![vec!["h".into(), group.into()]],
            )
        };
        // A burst: six messages in one second, in two groups, then one a second later.
        let mut events: Vec<Event> = (0..6)
            .map(|i| group_message(["g1", "g2"][i % 2], now - 10))
            .collect();
        events.push(group_message("g1", now - 9));
        events.push(wrap(&reader, now - 10));
        let (store, before) = stored(dir.path(), &events).await;
        rewrite_indexes_as(&store, &events, b"4");
        assert!(snapshot(&store) != before, "the indexes are schema 4's");
        drop(store);

        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        assert_eq!(schema(&store), SCHEMA_VERSION, "upgraded at open");
        assert!(
            snapshot(&store) == before,
            "every table as the current schema writes it"
        );
        let store = reopened_unchanged(store, dir.path());

        let messages: Vec<&Event> = events.iter().filter(|e| e.kind == 445).collect();
        let mut want: Vec<&Event> = messages.clone();
        want.sort_by_key(|e| (std::cmp::Reverse(e.created_at), e.id));
        let want: Vec<Hex32> = want.iter().map(|e| e.id).collect();
        assert_eq!(
            ids_read(
                &store,
                serde_json::json!({"kinds": [445], "limit": 4}),
                &ReadScope::everything()
            )
            .await,
            want[..4],
            "by kind: the burst's second cut lowest id first"
        );
        assert_eq!(
            ids_read(
                &store,
                serde_json::json!({"limit": 5}),
                &ReadScope::holding(Vec::new(), true)
            )
            .await,
            want[..5],
            "every group, across groups"
        );
    }

    /// A record that cannot be read is removed with its `ids` entry, its index entries left
    /// behind (their keys cannot be worked out): the same event stored again, under a later
    /// `seq`, is still found by every index, not hidden behind the stale entry of its id.
    #[tokio::test]
    async fn an_event_stored_again_after_its_corrupt_record_was_removed_is_found() {
        use crate::write_txn::WriteTxn;
        use crate::writer::WriteBackend;
        let dir = tempfile::tempdir().unwrap();
        let x = signed(&fresh_keys(), mls_proto::unix_now() - 10, 1, vec![]);
        let (store, _) = stored(dir.path(), std::slice::from_ref(&x)).await;
        {
            let mut txn = store.env.write_txn().unwrap();
            let seq = records::seq_of(&txn, &store.dbs, &x.id).unwrap().unwrap();
            store
                .dbs
                .events
                .put(&mut txn, &keys::seq_key(seq), b"\x09not a record")
                .unwrap();
            txn.commit().unwrap();
        }
        {
            let backend = txn::Backend {
                env: store.env.clone(),
                dbs: store.dbs,
            };
            let mut t = backend.begin().unwrap();
            assert!(t.remove(&x.id).unwrap(), "the corrupt record is removed");
            backend.commit(t).unwrap();
        }
        drop(store);
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        let outcome = store.write(x.clone(), Publisher::default()).await.unwrap();
        assert!(matches!(outcome, WriteOutcome::Accepted));
        for f in [
            serde_json::json!({"ids": [x.id.to_hex()]}),
            serde_json::json!({"kinds": [1]}),
            serde_json::json!({"authors": [x.pubkey.to_hex()]}),
            serde_json::json!({}),
        ] {
            assert_eq!(
                ids_read(&store, f.clone(), &ReadScope::everything()).await,
                vec![x.id],
                "{f}"
            );
        }
    }

    /// A store in `dir` holding `events` as the current schema writes them, closed, and its
    /// tables as they are then.
    async fn stored(dir: &Path, events: &[Event]) -> (Arc<EmbeddedStore>, (Vec<Entry>, u64)) {
        let store =
            EmbeddedStore::open(dir, EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        for ev in events {
            let outcome = store.write(ev.clone(), Publisher::default()).await.unwrap();
            assert!(matches!(outcome, WriteOutcome::Accepted));
        }
        let tables = snapshot(&store);
        store.close();
        (store, tables)
    }

    /// Writes the closed `store`'s time-ordered indexes of `events` again as schema `schema`
    /// (3 or 4) wrote them, and marks the store as that schema: keys ending with the id, values
    /// carrying the `seq`; every-group entries from schema 4, the author index and the audience
    /// index without kinds in schema 3.
    fn rewrite_indexes_as(store: &EmbeddedStore, events: &[Event], schema: &[u8]) {
        let mut txn = store.env.write_txn().unwrap();
        for index in keys::Index::ALL {
            store.dbs.index(index).clear(&mut txn).unwrap();
        }
        for ev in events {
            let audience: Vec<Vec<u8>> = audience_keys(ev).iter().map(ReadKey::to_bytes).collect();
            let seq = records::seq_of(&txn, &store.dbs, &ev.id).unwrap().unwrap();
            let value = upgrade::old_layout::schema_4_value(ev, seq);
            let every_group = schema == b"4";
            upgrade::old_layout::put_schema_4_indexes(
                &mut txn,
                &store.dbs,
                ev,
                &audience,
                &value,
                every_group,
            );
            if schema == b"3" {
                upgrade::old_layout::put_schema_3_indexes(
                    &store.env, &mut txn, ev, &audience, &value,
                );
            }
        }
        store.dbs.meta.put(&mut txn, b"schema", schema).unwrap();
        txn.commit().unwrap();
    }

    /// Closes and opens the store again, checking that the second open changes nothing.
    fn reopened_unchanged(store: Arc<EmbeddedStore>, dir: &Path) -> Arc<EmbeddedStore> {
        let first = snapshot(&store);
        drop(store);
        let store =
            EmbeddedStore::open(dir, EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        assert_eq!(snapshot(&store), first, "a second open changes nothing");
        store
    }

    /// The ids `filter` reads in `scope`, in the order returned (the visibility rule lets
    /// everything through).
    async fn ids_read(
        store: &EmbeddedStore,
        filter: serde_json::Value,
        scope: &ReadScope,
    ) -> Vec<Hex32> {
        let filter = Filter::from_value(&filter).unwrap();
        let found = store
            .query(
                &[filter],
                ReadBounds::unbounded(100),
                mls_proto::unix_now(),
                scope,
                &|_, _| true,
            )
            .await
            .unwrap();
        found.value.iter().map(|s| s.event.id).collect()
    }

    /// Every event a scope reads, whatever its kind (two plans: each kind found under the
    /// scope's keys, and the kinds named).
    async fn read_any(store: &EmbeddedStore, scope: &ReadScope) -> Vec<Hex32> {
        let mut ids = Vec::new();
        for f in [
            serde_json::json!({}),
            serde_json::json!({"kinds": [1, 1059, 30000]}),
        ] {
            ids.push(sorted(ids_read(store, f, scope).await));
        }
        assert_eq!(ids[0], ids[1], "by kind answers like no filter");
        ids.remove(0)
    }

    fn keys_last_seq(store: &EmbeddedStore) -> u64 {
        let txn = store.env.read_txn().unwrap();
        keys::last_seq(&txn, &store.dbs).unwrap()
    }
}
