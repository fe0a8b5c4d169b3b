//! Storage for the relay: events, their indexes, tombstones, and the gateway's state
//! (group registry, membership, KeyPackage claims, roster sequence numbers).
//!
//! One interface ([`EventStore`]), several backends. Events and gateway state live in the same
//! backend so that an event and the state change it causes commit in one transaction: the
//! writer runs the [`Admission`] hook *inside* the write transaction.
//!
//! This crate knows no sockets. It knows nothing of MLS either: the rules arrive through
//! [`Admission`], and visibility as data ([`audience`]: each event's audience stored with it,
//! each read's [`ReadScope`]) plus the `visible` predicate of [`EventStore::query`], the
//! final check.
//!
//! What every backend shares is written here once: the writer thread and its group commit
//! ([`writer`]), the order of checks one write goes through and the verbatim restore
//! ([`write_txn`]), the state overlay the rules write through ([`overlay`]), and the
//! address keys of replaceable events ([`address`]). A backend supplies its transaction
//! ([`writer::WriteBackend`], [`write_txn::WriteTxn`]) and its reads.

pub mod address;
pub mod audience;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod embedded;
mod feed;
pub mod overlay;
pub mod write_txn;
pub mod writer;

pub use audience::{Audience, ReadKey, ReadScope};
pub use feed::{CommitFeed, CommitNotice, Sequenced};
use mls_proto::{Event, Filter, Hex32};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Backend(String),
    #[error("storage: corrupt record: {0}")]
    Corrupt(String),
    #[error("storage is shutting down")]
    Closed,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Longest gateway state key, in bytes, that every backend holds (LMDB's default
/// `MDB_MAXKEYSIZE`). The gateway bounds the client-controlled parts of its keys (group ids,
/// `d` tags, key references) so that no key it builds can be longer.
pub const MAX_STATE_KEY_LEN: usize = 511;

/// Longest value of an indexed (single-letter) tag, in bytes, that every backend indexes and
/// answers `#x` filters for (the embedded store hashes values longer than its inline limit).
/// The relay refuses events with a longer one at ingest.
pub const MAX_TAG_VALUE_LEN: usize = 1024;

/// Read access to the gateway's key/value state, inside a transaction.
/// Keys are namespaced by their first bytes (the gateway owns the layout).
pub trait StateRead {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;

    /// Calls `f(key, value)` for every key starting with `prefix`, in key order, until it
    /// returns false.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        self.scan_prefix_from(prefix, prefix, f)
    }

    /// [`StateRead::scan_prefix`] starting at the first key `>= from` (a key under `prefix`),
    /// so that a long walk can resume where it stopped without re-reading what it passed.
    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()>;
}

/// Write access to the gateway's state, inside the writer's transaction.
pub trait StateWrite: StateRead {
    fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()>;
    fn delete(&mut self, key: &[u8]) -> StoreResult<()>;
}

/// Who is writing: what the rules need to know about the publishing connection.
#[derive(Debug, Clone, Default)]
pub struct Publisher {
    /// Pubkeys the connection has authenticated as (NIP-42). Empty when unauthenticated.
    pub authed: Vec<Hex32>,
    /// The relay's operator replaying plain event lines (`import` without a backup header):
    /// the checks that depend on the original publishing connection (its authentication, its
    /// group membership) cannot be re-run and are skipped, and the event grants no membership;
    /// everything the event itself must satisfy (shape, uniqueness, roster order, expiry)
    /// still applies. (A backup is restored with [`EventStore::restore`], no rules at all.)
    pub operator: bool,
}

/// What the rules decided for an accepted event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// When the relay stops serving and purges the event (retention / NIP-40 / KeyPackage
    /// expiry), in unix seconds.
    pub expires_at: Option<u64>,
    /// False: state changes commit but the event itself is not stored (live delivery only).
    pub store: bool,
}

/// A refusal, already carrying its machine-readable prefix (`invalid: …`, `restricted: …`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(pub String);

/// Rules that run inside the write transaction, so the check and the state change it implies
/// are atomic (no read-then-write race between two writers of the same group).
pub trait Admission: Send + Sync + 'static {
    /// Decides whether `event` is accepted, and applies the state changes it implies.
    /// Called with `received_at` = the receipt time (unix seconds).
    fn admit(
        &self,
        event: &Event,
        publisher: &Publisher,
        received_at: u64,
        state: &mut dyn StateWrite,
    ) -> Result<Admitted, Rejection>;

    /// May the author of a kind-5 deletion remove `target`? NIP-09 says: only its own author.
    /// Also decides whether a tombstone left by `deleter` refuses `target` later.
    fn may_delete(&self, deleter: &Hex32, target: &Event) -> bool {
        *deleter == target.pubkey
    }

    /// Is a kind 5 by `deleter` naming the stored `target` refused as a whole? `Some(reason)`
    /// answers the deletion `OK false` with that reason (prefixed), for a target the deleter
    /// has a claim on but may not take from the others; a target that is simply not the
    /// deleter's is skipped quietly (NIP-09) and needs no refusal.
    fn refuse_deletion(&self, _deleter: &Hex32, _target: &Event) -> Option<Rejection> {
        None
    }

    /// Who may read `event` once stored, recorded with it (see [`audience`]): computed after
    /// its own state changes, over the state as its batch left it, and for restored events
    /// too. It must hold every key a reader needs to see the event now *or later* under the
    /// visibility rule (a read's scope is only a pre-filter; the rule is the final check).
    fn audience(&self, _event: &Event, _state: &dyn StateRead) -> Audience {
        Audience::anyone()
    }
}

/// The default rules: accept everything, keep NIP-40 expiration. Used by tools and tests.
pub struct AcceptAll;

impl Admission for AcceptAll {
    fn admit(
        &self,
        event: &Event,
        _: &Publisher,
        _: u64,
        _: &mut dyn StateWrite,
    ) -> Result<Admitted, Rejection> {
        Ok(Admitted {
            expires_at: event.expiration(),
            store: true,
        })
    }
}

/// The outcome of one write, after the transaction that carried it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Durably committed (or, for `store: false`, its state changes committed).
    Accepted,
    /// Already stored: `duplicate: …`. Counts as success for the client (`OK true`).
    Duplicate,
    /// Refused, with its prefixed reason (`OK false`).
    Rejected(String),
}

/// An event as stored: the signed event, its JSON (serialised once, served as is), and the
/// relay's own bookkeeping.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event: Event,
    pub json: Arc<str>,
    pub received_at: u64,
    pub expires_at: Option<u64>,
}

/// A NIP-09 tombstone: what keeps a deleted event deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tombstone {
    /// `id` was deleted by `deleter` (an `e` tag); a later copy of `id` is refused when
    /// `deleter` may delete it.
    Id { id: Hex32, deleter: Hex32 },
    /// The versions of address `kind:pubkey:d` (an `a` tag) created at or before `until` are
    /// deleted. `d` is empty for replaceable kinds.
    Address {
        kind: u16,
        pubkey: Hex32,
        d: String,
        until: u64,
    },
}

/// One piece of what a store holds, as a backup carries it (see [`EventStore::backup`]).
#[derive(Debug, Clone)]
pub enum BackupItem {
    /// A stored event with its receipt and expiry times.
    Event(StoredEvent),
    /// One entry of the gateway's key/value state.
    State {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Tombstone(Tombstone),
}

/// Visibility predicate for reads: called with each candidate event and a view of the gateway
/// state in the same read transaction. Only events for which it returns true are counted
/// towards `limit` and returned.
pub type Visible<'a> = &'a (dyn Fn(&Event, &dyn StateRead) -> bool + Send + Sync);

/// What one read may cost. `max_candidates` bounds the stored events (index entries, or ids
/// looked up) a whole REQ / COUNT examines, visible or not, across all its filters: events the
/// reader may not see never count towards `limit`, so without it a filter that matches only
/// hidden events would walk the whole store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBounds {
    /// Cap on a filter's `limit`, and the limit of a filter without one (REQ only).
    pub max_limit: u64,
    pub max_candidates: u64,
}

impl ReadBounds {
    /// No bound on candidates (tools, tests): every match is examined.
    pub fn unbounded(max_limit: u64) -> ReadBounds {
        ReadBounds {
            max_limit,
            max_candidates: u64::MAX,
        }
    }
}

/// What is left of one read's candidate bound ([`ReadBounds::max_candidates`]), for
/// backends to count what they examine.
#[derive(Debug)]
pub struct Budget {
    left: u64,
    exhausted: bool,
}

impl Budget {
    pub fn new(bounds: ReadBounds) -> Budget {
        Budget {
            left: bounds.max_candidates,
            exhausted: false,
        }
    }

    /// Takes one candidate; false (and marks the read incomplete) when none is left.
    pub fn take(&mut self) -> bool {
        if self.left == 0 {
            self.exhausted = true;
            return false;
        }
        self.left -= 1;
        true
    }

    /// Ends the read here, incomplete, for a bound of the backend's own.
    pub fn exhaust(&mut self) {
        self.exhausted = true;
    }

    /// Candidates still allowed.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// The read stopped at the bound with candidates left to examine.
    pub fn exhausted(&self) -> bool {
        self.exhausted
    }
}

/// A read's answer, and whether it is whole: `complete` is false when the read stopped at
/// `max_candidates` with candidates left to examine (the answer then covers the newest part).
#[derive(Debug, Clone)]
pub struct Bounded<T> {
    pub value: T,
    pub complete: bool,
}

/// The storage interface every backend implements.
#[async_trait::async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Runs the rules and stores the event in the next group commit; returns after the commit
    /// is durable. Handles duplicates, tombstones (NIP-09), replaceable/addressable versions,
    /// and kind-5 deletions.
    async fn write(&self, event: Event, publisher: Publisher) -> StoreResult<WriteOutcome>;

    /// Events matching any of `filters`, in `scope` and `visible`, newest first (ties:
    /// lowest id first), at most `limit` per filter (the filter's own `limit`, capped by
    /// `bounds.max_limit`), merged and de-duplicated, never expired at `now`; at most
    /// `bounds.max_candidates` stored events examined in all. Events out of `scope` are
    /// skipped by the backend (through its audience index where it has one) and are not
    /// meant to count as examined; `visible` decides the rest.
    async fn query(
        &self,
        filters: &[Filter],
        bounds: ReadBounds,
        now: u64,
        scope: &ReadScope,
        visible: Visible<'_>,
    ) -> StoreResult<Bounded<Vec<StoredEvent>>>;

    /// Number of distinct events matching any of `filters`, in `scope` and `visible`
    /// (NIP-45), examining at most `bounds.max_candidates` stored events (`bounds.max_limit`
    /// is not used).
    async fn count(
        &self,
        filters: &[Filter],
        bounds: ReadBounds,
        now: u64,
        scope: &ReadScope,
        visible: Visible<'_>,
    ) -> StoreResult<Bounded<u64>>;

    /// Runs `f` with a read view of the gateway state (for live fan-out decisions and REST).
    // The `for<'s>` is spelled out because `async_trait` would otherwise name the elided
    // lifetime after the method's, making `f` callable with no reference we could create.
    async fn read_state(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()>;

    /// [`EventStore::read_state`] for a handful of point reads (one REQ's read check and
    /// scope): a backend whose reads are memory lookups may run `f` on the caller's thread
    /// instead of handing it off. Never for a walk whose length the caller does not bound.
    async fn read_state_brief(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        self.read_state(f).await
    }

    /// Applies a state-only change atomically (admin API, KeyPackage claims).
    async fn update_state(
        &self,
        f: Box<dyn for<'s> FnOnce(&'s mut dyn StateWrite) -> Result<(), Rejection> + Send>,
    ) -> StoreResult<Result<(), Rejection>>;

    /// Removes events whose `expires_at` is at or before `now`; returns how many.
    async fn purge_expired(&self, now: u64) -> StoreResult<u64>;

    /// Cheap liveness probe for `/health`.
    async fn health(&self) -> StoreResult<()>;

    /// Stops taking writes once everything already queued is committed (graceful shutdown).
    async fn close(&self) {}

    /// Every stored event, oldest first (events only: a backup is [`EventStore::backup`]).
    async fn export(&self, f: &mut (dyn for<'e> FnMut(&'e StoredEvent) + Send)) -> StoreResult<()>;

    /// Everything the store holds, from one consistent snapshot, in a deterministic order:
    /// every event (oldest first, ties lowest id first), then every gateway state entry (key
    /// order), then every tombstone. `f` returns false to stop early. This is what a backup
    /// (`export`) is made of, and what moves a deployment to another backend.
    async fn backup(
        &self,
        f: &mut (dyn for<'i> FnMut(&'i BackupItem) -> bool + Send),
    ) -> StoreResult<()>;

    /// Puts back what [`EventStore::backup`] gave, verbatim and in one transaction: events with
    /// their receipt and expiry times (no rules run and no deletion is applied: the rules'
    /// state and the tombstones come as their own items), state entries (overwriting the key),
    /// tombstones. One outcome per item: `Accepted`, `Duplicate` (the event is already
    /// stored) or `Rejected` (a newer version of the event's address is stored, or a state key
    /// no backend can hold).
    async fn restore(&self, items: Vec<BackupItem>) -> StoreResult<Vec<WriteOutcome>>;

    /// Works every stored event's audience out again over the state as it is now, in chunks
    /// of [`writer::PURGE_CHUNK`] events, one write transaction each; returns how many events
    /// it went through. A restore needs it at the end: a backup lists the events before the
    /// state their audience depends on (a group's gate).
    async fn refresh_audiences(&self) -> StoreResult<u64>;

    /// The commit stream of this store in this process: a notice after each durable commit
    /// (the highest `seq` committed, and the accepted events that are not stored), and the
    /// ephemeral events announced by the relay. Live fan-out consumes it.
    fn commits(&self) -> &CommitFeed;

    /// Committed events with `seq > after`, in `seq` (commit) order, at most `limit`. Every
    /// stored event gets the next `seq` when it commits (no gaps among committed events);
    /// events deleted, replaced or purged since are skipped. Fewer than `limit` events means
    /// every event committed when the read began was returned.
    async fn since(&self, after: u64, limit: usize) -> StoreResult<Vec<Sequenced>>;

    /// The highest `seq` committed in the store, by any writer: with several relay instances
    /// on one database this is the database's own, not what this process has heard of
    /// ([`CommitFeed::last_seq`]). Every stored event with a lower `seq` is committed too, so
    /// a read that starts after this answer sees all of them. A store only one process
    /// writes answers from its feed.
    async fn committed_seq(&self) -> StoreResult<u64> {
        Ok(self.commits().last_seq())
    }
}
