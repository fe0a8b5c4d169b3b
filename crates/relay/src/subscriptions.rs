//! The live subscription index: an accepted event touches only the subscriptions that can match
//! it, not every connection.
//!
//! Each filter is filed under the values of its most selective condition (ids, then authors,
//! then a tag, then kinds); a filter with none of these is filed under "all". An event looks up
//! its own id, author, kind and tag values, and checks the full filter only on those hits.
//!
//! What a connection may make the index hold is bounded (issue 8 rule 14): the values of one
//! filter array (`limitation.max_filter_values`, [`check_filter_values`]) and the size of all
//! its subscriptions ([`subscription_bytes`], `limitation.max_subscription_bytes`,
//! [`SubscriptionIndex::try_insert`]). An index entry is cheap (about 24 bytes): a value is filed
//! under a 64-bit keyed hash of it, not a copy (the filter holds the value; every hit is checked
//! against the full filter, so a collision costs one check, never a wrong delivery, and the
//! per-process random key keeps clients from aiming collisions at others' values), and an entry
//! points at its subscription (one shared `Arc`) rather than holding the key that names it; most
//! values have one subscription, held inline.

use mls_proto::{Event, Filter, Hex32};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::connection::ConnectionHandle;

/// Refuses a filter array with more than `max` values, naming the limit.
pub fn check_filter_values(filters: &[Filter], max: usize) -> Result<(), String> {
    for f in filters {
        let arrays = [
            ("ids", f.ids.as_ref().map_or(0, Vec::len)),
            ("authors", f.authors.as_ref().map_or(0, Vec::len)),
            ("kinds", f.kinds.as_ref().map_or(0, Vec::len)),
        ]
        .into_iter()
        .map(|(name, n)| (name.to_owned(), n))
        .chain(f.tags.iter().map(|(c, v)| (format!("#{c}"), v.len())));
        for (name, n) in arrays {
            if n > max {
                return Err(format!(
                    "invalid: filter {name} has {n} values, max_filter_values is {max}"
                ));
            }
        }
    }
    Ok(())
}

/// What a subscription counts against `max_subscription_bytes`: about what the relay holds
/// for it. 32 bytes per id or pubkey, 2 per kind, a tag value's length plus 16, 64 per filter,
/// plus the subscription id.
pub fn subscription_bytes(sub_id: &str, filters: &[Filter]) -> usize {
    let per_filter = |f: &Filter| {
        64 + 32 * f.ids.as_ref().map_or(0, Vec::len)
            + 32 * f.authors.as_ref().map_or(0, Vec::len)
            + 2 * f.kinds.as_ref().map_or(0, Vec::len)
            + f.tags
                .values()
                .flatten()
                .map(|v| v.len() + 16)
                .sum::<usize>()
    };
    sub_id.len() + filters.iter().map(per_filter).sum::<usize>()
}

/// Where a filter is filed: the values of its most selective condition.
enum Filed<'a> {
    Ids(&'a [Hex32]),
    Authors(&'a [Hex32]),
    Tag(char, &'a [String]),
    Kinds(&'a [u16]),
    All,
}

fn filed(filter: &Filter) -> Filed<'_> {
    if let Some(ids) = &filter.ids {
        return Filed::Ids(ids);
    }
    if let Some(authors) = &filter.authors {
        return Filed::Authors(authors);
    }
    if let Some((letter, values)) = filter.tags.iter().next() {
        return Filed::Tag(*letter, values);
    }
    if let Some(kinds) = &filter.kinds {
        return Filed::Kinds(kinds);
    }
    Filed::All
}

/// A subscription as a set member: by identity (its `Arc`), not by value, so the interior
/// mutability of a subscription (its held-back events) never changes its hash.
#[derive(Clone)]
struct SubRef(Arc<Subscription>);

impl PartialEq for SubRef {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for SubRef {}
impl Hash for SubRef {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state);
    }
}

/// The subscriptions filed under one value; almost always one, held inline (16 bytes).
// Boxed: the rare set must not make every entry the size of a `HashSet`.
#[allow(clippy::box_collection)]
enum Postings {
    One(Arc<Subscription>),
    Many(Box<HashSet<SubRef>>),
}

// `SubRef` hashes by address: the "mutable key type" lint does not apply.
#[allow(clippy::mutable_key_type)]
impl Postings {
    fn add(&mut self, sub: &Arc<Subscription>) {
        match self {
            Postings::One(one) if Arc::ptr_eq(one, sub) => {}
            Postings::One(one) => {
                let set = HashSet::from([SubRef(one.clone()), SubRef(sub.clone())]);
                *self = Postings::Many(Box::new(set));
            }
            Postings::Many(set) => {
                set.insert(SubRef(sub.clone()));
            }
        }
    }

    /// Removes `sub`; true when nothing is left.
    fn remove(&mut self, sub: &Arc<Subscription>) -> bool {
        match self {
            Postings::One(one) => Arc::ptr_eq(one, sub),
            Postings::Many(set) => {
                set.remove(&SubRef(sub.clone()));
                match set.len() {
                    0 => true,
                    1 => {
                        let last = set.iter().next().expect("one left").0.clone();
                        *self = Postings::One(last);
                        false
                    }
                    _ => false,
                }
            }
        }
    }

    fn for_each(&self, mut f: impl FnMut(&Arc<Subscription>)) {
        match self {
            Postings::One(one) => f(one),
            Postings::Many(set) => set.iter().for_each(|s| f(&s.0)),
        }
    }
}

/// The index's keys are already keyed hashes: hashing them again would only cost time.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else rather than panic.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type HashedMap = HashMap<u64, Postings, BuildHasherDefault<Prehashed>>;

/// Adds `sub` under `key` in `map`.
fn file_in<K: Hash + Eq, S: BuildHasher>(
    map: &mut HashMap<K, Postings, S>,
    key: K,
    sub: &Arc<Subscription>,
) {
    use std::collections::hash_map::Entry;
    match map.entry(key) {
        Entry::Occupied(mut e) => e.get_mut().add(sub),
        Entry::Vacant(e) => {
            e.insert(Postings::One(sub.clone()));
        }
    }
}

/// Removes `sub` from under `key` in `map`, and the key when nothing is left.
fn unfile_from<K: Hash + Eq, S: BuildHasher>(
    map: &mut HashMap<K, Postings, S>,
    key: &K,
    sub: &Arc<Subscription>,
) {
    if map.get_mut(key).is_some_and(|p| p.remove(sub)) {
        map.remove(key);
    }
}

type SubKey = (u64, Arc<str>);

/// Where an event sits in the commit stream.
#[derive(Debug, Clone, Copy)]
pub enum CommitPosition {
    /// A stored event's own `seq`.
    Stored(u64),
    /// An accepted, unstored event, placed after the stored event with this `seq`.
    TransientAfter(u64),
}

/// A live event held back until EOSE: its id (to skip it if the stored results had it) and JSON.
type HeldEvent = (Hex32, Arc<str>);

/// One live subscription of one connection.
pub struct Subscription {
    pub sub_id: Arc<str>,
    pub filters: Vec<Filter>,
    pub conn: Arc<ConnectionHandle>,
    /// The commit stream's `seq` when this subscription was registered: stored events up to
    /// it are the stored part's to serve (the query runs after), so live delivery skips them
    /// even when fan-out reaches them late.
    pub after_seq: u64,
    /// Events that arrived between registration and EOSE, and their bytes: held back so the
    /// stored results and EOSE go first. `None` once EOSE was sent.
    pending: Mutex<Option<(Vec<HeldEvent>, usize)>>,
    /// After EOSE: the ids the stored part sent, and the store's committed `seq` read after
    /// that query. An event up to that `seq` may have been committed after registration and
    /// still be in the stored answer (another instance committed it, and fan-out hears of it
    /// only later), so live delivery skips those ids; the first later event drops the set.
    served: Mutex<Option<(u64, HashSet<Hex32>)>>,
    /// Set when the index drops it (CLOSE, a REQ replacing it, the connection's end): a
    /// delivery lane still holding it in a queued batch sends nothing more for it.
    closed: AtomicBool,
}

impl Subscription {
    pub fn new(
        sub_id: Arc<str>,
        filters: Vec<Filter>,
        conn: Arc<ConnectionHandle>,
        after_seq: u64,
    ) -> Self {
        Subscription {
            sub_id,
            filters,
            conn,
            after_seq,
            pending: Mutex::new(Some((Vec::new(), 0))),
            served: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    pub fn matches(&self, ev: &Event) -> bool {
        self.filters.iter().any(|f| f.matches(ev))
    }

    /// Whether an event at this place in commit order was committed after registration.
    /// A transient event placed after `seq` = `after_seq` may predate registration; it is
    /// delivered (it cannot be served from the store).
    pub fn is_live(&self, position: CommitPosition) -> bool {
        match position {
            CommitPosition::Stored(seq) => seq > self.after_seq,
            CommitPosition::TransientAfter(seq) => seq >= self.after_seq,
        }
    }

    /// Delivers a live event: held back before EOSE, sent after unless the stored answer
    /// already had it.
    pub fn deliver(&self, id: Hex32, json: &Arc<str>, position: CommitPosition) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut pending = self.pending.lock().expect("pending lock");
        match pending.as_mut() {
            // Bounded like the outbox: a REQ whose stored part takes long enough to hold
            // back more than that is a connection that cannot keep up.
            Some((held, bytes))
                if held.len() >= self.conn.outbox_capacity()
                    || (*bytes > 0 && *bytes + json.len() > self.conn.outbox_max_bytes()) =>
            {
                self.conn.mark_slow()
            }
            Some((held, bytes)) => {
                held.push((id, json.clone()));
                *bytes += json.len();
            }
            None => {
                if self.was_served(id, position) {
                    return;
                }
                drop(pending);
                self.conn.send(mls_proto::relay::event(&self.sub_id, json));
            }
        }
    }

    /// Whether the stored answer may have had this event and did (see `served`).
    fn was_served(&self, id: Hex32, position: CommitPosition) -> bool {
        let CommitPosition::Stored(seq) = position else {
            return false; // never stored, so never in a stored answer
        };
        let mut served = self.served.lock().expect("served lock");
        match served.as_ref() {
            Some((upto, ids)) if seq <= *upto => ids.contains(&id),
            Some(_) => {
                // Fan-out goes in seq order: nothing at or below `upto` comes any more.
                *served = None;
                false
            }
            None => false,
        }
    }

    /// Called right after EOSE: sends what was held back, skipping ids already sent as stored
    /// results, and keeps those ids for live events up to `served_upto` (the store's committed
    /// `seq` read after the query; 0 or `after_seq`: nothing to keep).
    pub fn release_pending(&self, already_sent: HashSet<Hex32>, served_upto: u64) {
        let unsent: Vec<HeldEvent> = {
            let mut pending = self.pending.lock().expect("pending lock");
            let held = pending.take().map(|(events, _)| events).unwrap_or_default();
            let unsent = held
                .into_iter()
                .filter(|(id, _)| !already_sent.contains(id))
                .collect();
            if served_upto > self.after_seq && !already_sent.is_empty() {
                // Set while `pending` is still locked: a concurrent `deliver` sees either
                // the held list or this set, never neither.
                *self.served.lock().expect("served lock") = Some((served_upto, already_sent));
            }
            unsent
        };
        for (_, json) in unsent {
            self.conn.send(mls_proto::relay::event(&self.sub_id, &json));
        }
    }
}

#[derive(Default)]
struct Inner {
    /// Each subscription and what it counts against `max_subscription_bytes`.
    subs: HashMap<SubKey, (Arc<Subscription>, usize)>,
    /// Per connection: the sum of its subscriptions' bytes.
    conn_bytes: HashMap<u64, usize>,
    /// Keys the hashes values are filed under (random per process).
    keyer: RandomState,
    ids: HashedMap,
    authors: HashedMap,
    /// A tag letter and value.
    tags: HashedMap,
    kinds: HashMap<u16, Postings>,
    all: HashSet<SubRef>,
}

/// All live subscriptions of this process.
#[derive(Default)]
pub struct SubscriptionIndex {
    inner: RwLock<Inner>,
}

impl SubscriptionIndex {
    /// Adds (or replaces, for the same connection and id) a subscription, without a bound.
    pub fn insert(&self, sub: Arc<Subscription>) {
        let _ = self.try_insert(sub, usize::MAX);
    }

    /// Adds (or replaces) a subscription unless the connection's subscriptions would then
    /// count more than `max_bytes` ([`subscription_bytes`]); a replaced one no longer counts.
    /// On refusal the subscription it would have replaced is gone too (a refused REQ ends the
    /// old one of the same id, as any refused REQ does).
    pub fn try_insert(&self, sub: Arc<Subscription>, max_bytes: usize) -> Result<(), String> {
        let key: SubKey = (sub.conn.id, sub.sub_id.clone());
        let bytes = subscription_bytes(&sub.sub_id, &sub.filters);
        let mut inner = self.inner.write().expect("index lock");
        inner.remove(&key);
        let held = inner.conn_bytes.get(&key.0).copied().unwrap_or(0);
        if held.saturating_add(bytes) > max_bytes {
            return Err(format!(
                "invalid: this connection's subscriptions would hold {} bytes, \
                 max_subscription_bytes is {max_bytes}",
                held.saturating_add(bytes)
            ));
        }
        for f in &sub.filters {
            inner.file(f, &sub);
        }
        *inner.conn_bytes.entry(key.0).or_default() += bytes;
        inner.subs.insert(key, (sub, bytes));
        Ok(())
    }

    pub fn remove(&self, conn_id: u64, sub_id: &str) -> bool {
        let key: SubKey = (conn_id, Arc::from(sub_id));
        self.inner.write().expect("index lock").remove(&key)
    }

    /// Removes a closed connection's subscriptions (the session knows their ids, so nothing
    /// is scanned).
    pub fn remove_connection<'a>(
        &self,
        conn_id: u64,
        sub_ids: impl IntoIterator<Item = &'a Arc<str>>,
    ) {
        let mut inner = self.inner.write().expect("index lock");
        for sub_id in sub_ids {
            inner.remove(&(conn_id, sub_id.clone()));
        }
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("index lock").subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What a connection's subscriptions count against `max_subscription_bytes`.
    pub fn connection_bytes(&self, conn_id: u64) -> usize {
        let inner = self.inner.read().expect("index lock");
        inner.conn_bytes.get(&conn_id).copied().unwrap_or(0)
    }

    /// The subscriptions whose filters match `ev` (each at most once).
    pub fn matching(&self, ev: &Event) -> Vec<Arc<Subscription>> {
        let inner = self.inner.read().expect("index lock");
        let mut seen: HashSet<*const Subscription> = HashSet::new();
        let mut out = Vec::new();
        let mut visit = |sub: &Arc<Subscription>| {
            if seen.insert(Arc::as_ptr(sub)) && sub.matches(ev) {
                out.push(sub.clone());
            }
        };
        let tag_hits = ev.tags.iter().filter_map(|t| {
            let name = t.first()?;
            let mut chars = name.chars();
            match (chars.next(), chars.next(), t.get(1)) {
                (Some(c), None, Some(v)) if c.is_ascii_alphabetic() => {
                    inner.tags.get(&inner.tag_key(c, v))
                }
                _ => None,
            }
        });
        inner
            .ids
            .get(&inner.hex_key(&ev.id))
            .into_iter()
            .chain(inner.authors.get(&inner.hex_key(&ev.pubkey)))
            .chain(inner.kinds.get(&ev.kind))
            .chain(tag_hits)
            .for_each(|p| p.for_each(&mut visit));
        inner.all.iter().for_each(|s| visit(&s.0));
        out
    }
}

impl Inner {
    fn hex_key(&self, value: &Hex32) -> u64 {
        self.keyer.hash_one(value.0)
    }

    fn tag_key(&self, letter: char, value: &str) -> u64 {
        self.keyer.hash_one((letter, value))
    }

    fn file(&mut self, filter: &Filter, sub: &Arc<Subscription>) {
        match filed(filter) {
            Filed::Ids(ids) => {
                for id in ids {
                    let key = self.hex_key(id);
                    file_in(&mut self.ids, key, sub);
                }
            }
            Filed::Authors(pks) => {
                for pk in pks {
                    let key = self.hex_key(pk);
                    file_in(&mut self.authors, key, sub);
                }
            }
            Filed::Tag(letter, values) => {
                for v in values {
                    let key = self.tag_key(letter, v);
                    file_in(&mut self.tags, key, sub);
                }
            }
            Filed::Kinds(kinds) => kinds.iter().for_each(|k| file_in(&mut self.kinds, *k, sub)),
            Filed::All => {
                self.all.insert(SubRef(sub.clone()));
            }
        }
    }

    fn unfile(&mut self, filter: &Filter, sub: &Arc<Subscription>) {
        match filed(filter) {
            Filed::Ids(ids) => {
                for id in ids {
                    let key = self.hex_key(id);
                    unfile_from(&mut self.ids, &key, sub);
                }
            }
            Filed::Authors(pks) => {
                for pk in pks {
                    let key = self.hex_key(pk);
                    unfile_from(&mut self.authors, &key, sub);
                }
            }
            Filed::Tag(letter, values) => {
                for v in values {
                    let key = self.tag_key(letter, v);
                    unfile_from(&mut self.tags, &key, sub);
                }
            }
            Filed::Kinds(kinds) => kinds
                .iter()
                .for_each(|k| unfile_from(&mut self.kinds, k, sub)),
            Filed::All => {
                self.all.remove(&SubRef(sub.clone()));
            }
        }
    }

    fn remove(&mut self, key: &SubKey) -> bool {
        let Some((sub, bytes)) = self.subs.remove(key) else {
            return false;
        };
        sub.closed.store(true, Ordering::Release);
        for f in &sub.filters {
            self.unfile(f, &sub);
        }
        if let Some(held) = self.conn_bytes.get_mut(&key.0) {
            *held -= bytes;
            if *held == 0 {
                self.conn_bytes.remove(&key.0);
            }
        }
        true
    }
}
