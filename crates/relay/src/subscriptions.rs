//! The live subscription index: an accepted event touches only the subscriptions that can match
//! it, not every connection.
//!
//! Each filter is filed under the values of its most selective condition (ids, then authors,
//! then a tag, then kinds); a filter with none of these is filed under `All`. An event looks up
//! its own id, author, kind and tag values, and checks the full filter only on those hits.

use mls_proto::{Event, Filter, Hex32};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use crate::session::ConnectionHandle;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum IndexKey {
    Id(Hex32),
    Author(Hex32),
    Tag(char, String),
    Kind(u16),
    All,
}

fn index_keys(filter: &Filter) -> Vec<IndexKey> {
    if let Some(ids) = &filter.ids {
        return ids.iter().copied().map(IndexKey::Id).collect();
    }
    if let Some(authors) = &filter.authors {
        return authors.iter().copied().map(IndexKey::Author).collect();
    }
    if let Some((letter, values)) = filter.tags.iter().next() {
        return values
            .iter()
            .map(|v| IndexKey::Tag(*letter, v.clone()))
            .collect();
    }
    if let Some(kinds) = &filter.kinds {
        return kinds.iter().copied().map(IndexKey::Kind).collect();
    }
    vec![IndexKey::All]
}

fn event_keys(ev: &Event) -> impl Iterator<Item = IndexKey> + '_ {
    let tags = ev.tags.iter().filter_map(|t| {
        let name = t.first()?;
        let mut chars = name.chars();
        match (chars.next(), chars.next(), t.get(1)) {
            (Some(c), None, Some(v)) if c.is_ascii_alphabetic() => {
                Some(IndexKey::Tag(c, v.clone()))
            }
            _ => None,
        }
    });
    [
        IndexKey::Id(ev.id),
        IndexKey::Author(ev.pubkey),
        IndexKey::Kind(ev.kind),
        IndexKey::All,
    ]
    .into_iter()
    .chain(tags)
}

type SubKey = (u64, Arc<str>);

/// A live event held back until EOSE: its id (to skip it if the stored results had it) and JSON.
type HeldEvent = (Hex32, Arc<str>);

/// One live subscription of one connection.
pub struct Subscription {
    pub sub_id: Arc<str>,
    pub filters: Vec<Filter>,
    pub conn: Arc<ConnectionHandle>,
    /// Events that arrived between registration and EOSE, and their bytes: held back so the
    /// stored results and EOSE go first. `None` once EOSE was sent.
    pending: Mutex<Option<(Vec<HeldEvent>, usize)>>,
}

impl Subscription {
    pub fn new(sub_id: Arc<str>, filters: Vec<Filter>, conn: Arc<ConnectionHandle>) -> Self {
        Subscription {
            sub_id,
            filters,
            conn,
            pending: Mutex::new(Some((Vec::new(), 0))),
        }
    }

    pub fn matches(&self, ev: &Event) -> bool {
        self.filters.iter().any(|f| f.matches(ev))
    }

    /// Delivers a live event: held back before EOSE, sent after.
    pub fn deliver(&self, id: Hex32, json: &Arc<str>) {
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
                drop(pending);
                self.conn.send(mls_proto::relay::event(&self.sub_id, json));
            }
        }
    }

    /// Called right after EOSE: sends what was held back, skipping ids already sent as stored
    /// results.
    pub fn release_pending(&self, already_sent: &HashSet<Hex32>) {
        let held = self.pending.lock().expect("pending lock").take();
        for (id, json) in held.map(|(events, _)| events).unwrap_or_default() {
            if !already_sent.contains(&id) {
                self.conn.send(mls_proto::relay::event(&self.sub_id, &json));
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    subs: HashMap<SubKey, (Arc<Subscription>, Vec<IndexKey>)>,
    index: HashMap<IndexKey, HashSet<SubKey>>,
}

/// All live subscriptions of this process.
#[derive(Default)]
pub struct SubscriptionIndex {
    inner: RwLock<Inner>,
}

impl SubscriptionIndex {
    /// Adds (or replaces, for the same connection and id) a subscription.
    pub fn insert(&self, sub: Arc<Subscription>) {
        let key: SubKey = (sub.conn.id, sub.sub_id.clone());
        let mut keys: Vec<IndexKey> = sub.filters.iter().flat_map(index_keys).collect();
        keys.sort();
        keys.dedup();
        let mut inner = self.inner.write().expect("index lock");
        inner.remove(&key);
        for k in &keys {
            inner
                .index
                .entry(k.clone())
                .or_default()
                .insert(key.clone());
        }
        inner.subs.insert(key, (sub, keys));
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

    /// The subscriptions whose filters match `ev` (each at most once).
    pub fn matching(&self, ev: &Event) -> Vec<Arc<Subscription>> {
        let inner = self.inner.read().expect("index lock");
        let mut seen: HashSet<&SubKey> = HashSet::new();
        let mut out = Vec::new();
        for k in event_keys(ev) {
            let Some(set) = inner.index.get(&k) else {
                continue;
            };
            for sk in set {
                if seen.insert(sk) {
                    let (sub, _) = &inner.subs[sk];
                    if sub.matches(ev) {
                        out.push(sub.clone());
                    }
                }
            }
        }
        out
    }
}

impl Inner {
    fn remove(&mut self, key: &SubKey) -> bool {
        let Some((_, keys)) = self.subs.remove(key) else {
            return false;
        };
        for k in keys {
            if let Some(set) = self.index.get_mut(&k) {
                set.remove(key);
                if set.is_empty() {
                    self.index.remove(&k);
                }
            }
        }
        true
    }
}
