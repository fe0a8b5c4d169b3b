//! Reads: REQ queries, COUNT and export, each in one read transaction.
//!
//! A filter is answered from the most selective index it allows; the index entries carry
//! kind and author, so candidates are mostly rejected before their record is read, and the
//! event JSON is parsed only for candidates that passed the index.
//!
//! Every index entry (or id) a read examines is a candidate, matching or not, visible or not;
//! one read examines at most `ReadBounds::max_candidates` of them and then stops, saying so.
//!
//! A read's scope (see [`crate::audience`]) decides which index a broad filter walks (no
//! authors, tags or ids): the `audience_kind` index under each read key and kind, each kind
//! stored under the key when the filter names none. Events out of scope are then never
//! candidates. The other plans are already narrow (an author, a tag value, ids): there each
//! candidate's audience, in its record's header, is checked before its JSON is read.
//!
//! A walk "under each kind found" (by author alone, by read key alone) first seeks the kinds
//! present under each prefix, one B-tree lookup per kind, then merges one cursor per
//! prefix and kind.
//!
//! Index entries carry their event's `seq`, so a candidate that passes them costs one lookup
//! in `events` (keyed by `seq`; recent events sit side by side there).

use super::keys::{self, Index, RawRecord, META_LEN};
use super::records;
use super::state::TxnState;
use super::{backend, Bytes, Dbs};
use crate::audience::is_group_key;
use crate::{
    Bounded, Budget, ReadBounds, ReadScope, StoreError, StoreResult, StoredEvent, Visible,
};
use heed::{Env, RoRange, RoTxn, WithoutTls};
use mls_proto::{Filter, Hex32};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ops::Bound;

/// Most author × kind pairs walked in parallel on the author+kind index; a larger product
/// falls back to a one-dimension index (still far better than scanning everything).
const MAX_PAIRS: usize = 1024;

pub(super) fn query(
    env: &Env<WithoutTls>,
    dbs: &Dbs,
    filters: &[Filter],
    bounds: ReadBounds,
    now: u64,
    scope: &ReadScope,
    visible: Visible<'_>,
) -> StoreResult<Bounded<Vec<StoredEvent>>> {
    let txn = env.read_txn().map_err(backend("begin read transaction"))?;
    let state = TxnState {
        txn: &txn,
        db: dbs.state,
    };
    let mut budget = Budget::new(bounds);
    // Sized for the usual answer (every filter's limit), so that it does not grow per event.
    let expected: u64 = filters
        .iter()
        .map(|f| f.limit.unwrap_or(bounds.max_limit).min(bounds.max_limit))
        .fold(0, u64::saturating_add);
    let mut found: HashMap<Hex32, StoredEvent> =
        HashMap::with_capacity(expected.min(1024) as usize);
    for filter in filters {
        let limit = filter
            .limit
            .unwrap_or(bounds.max_limit)
            .min(bounds.max_limit);
        if limit == 0 || filter.is_empty_match() {
            continue;
        }
        let mut taken = 0u64;
        walk(&txn, dbs, filter, now, scope, &mut budget, &mut |stored| {
            if !visible(&stored.event, &state) {
                return true;
            }
            taken += 1;
            found.entry(stored.event.id).or_insert(stored);
            taken < limit
        })?;
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

pub(super) fn count(
    env: &Env<WithoutTls>,
    dbs: &Dbs,
    filters: &[Filter],
    bounds: ReadBounds,
    now: u64,
    scope: &ReadScope,
    visible: Visible<'_>,
) -> StoreResult<Bounded<u64>> {
    let txn = env.read_txn().map_err(backend("begin read transaction"))?;
    let state = TxnState {
        txn: &txn,
        db: dbs.state,
    };
    let mut budget = Budget::new(bounds);
    let mut ids = HashSet::new();
    for filter in filters {
        if filter.is_empty_match() {
            continue;
        }
        walk(&txn, dbs, filter, now, scope, &mut budget, &mut |stored| {
            if visible(&stored.event, &state) {
                ids.insert(stored.event.id);
            }
            true
        })?;
        if budget.exhausted() {
            break;
        }
    }
    Ok(Bounded {
        value: ids.len() as u64,
        complete: !budget.exhausted(),
    })
}

/// Every stored event, oldest first (the created_at index walked backwards); among equal
/// `created_at`s lowest id first, as [`oldest_first`] gives them.
pub(super) fn export(
    env: &Env<WithoutTls>,
    dbs: &Dbs,
    f: &mut (dyn FnMut(&StoredEvent) + Send),
) -> StoreResult<()> {
    let txn = env.read_txn().map_err(backend("begin read transaction"))?;
    oldest_first(&txn, dbs, &mut |stored| {
        f(&stored);
        true
    })?;
    Ok(())
}

/// Calls `f` with every stored event, oldest first and lowest id first among equal
/// `created_at`s, until it returns false; says whether it went through them all. The
/// created_at index walked backwards gives each second's entries in reverse commit order, so
/// they are gathered (ids and `seq`s, not events) and put in id order.
pub(super) fn oldest_first(
    txn: &RoTxn,
    dbs: &Dbs,
    f: &mut dyn FnMut(StoredEvent) -> bool,
) -> StoreResult<bool> {
    let mut current: Option<u64> = None;
    // (id, seq) of the current second's entries.
    let mut second: Vec<(Hex32, u64)> = Vec::new();
    let mut flush = |second: &mut Vec<(Hex32, u64)>| -> StoreResult<bool> {
        second.sort_unstable();
        for (_, seq) in second.drain(..) {
            let Some(stored) = records::by_seq(txn, dbs, seq)? else {
                continue; // an index entry left behind by a corrupt record
            };
            if !f(stored) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    for entry in dbs
        .created
        .rev_iter(txn)
        .map_err(backend("walk created_at index"))?
    {
        let (key, meta) = entry.map_err(backend("walk created_at index"))?;
        let (Some((created_at, seq)), Some((_, _, id))) =
            (keys::split_suffix(key), keys::split_meta(meta))
        else {
            return Err(StoreError::Corrupt("created_at index entry".into()));
        };
        if current != Some(created_at) {
            if !flush(&mut second)? {
                return Ok(false);
            }
            current = Some(created_at);
        }
        second.push((id, seq));
    }
    flush(&mut second)
}

fn sort_newest_first(events: &mut [StoredEvent]) {
    events.sort_unstable_by(|a, b| {
        (Reverse(a.event.created_at), a.event.id).cmp(&(Reverse(b.event.created_at), b.event.id))
    });
}

/// How one filter is answered.
enum Plan {
    Ids(Vec<Hex32>),
    /// Walk `index` under each prefix.
    Index(Index, Vec<Vec<u8>>),
    /// Walk `index` (keyed `prefix ++ kind ++ …`) under each prefix and each kind stored
    /// under it.
    EachKind(Index, Vec<Vec<u8>>),
}

/// The read keys a scope holds, as stored (`None`: everything is in scope).
struct Held {
    keys: Vec<Vec<u8>>,
    any_group: bool,
}

impl Held {
    fn of(scope: &ReadScope) -> Option<Held> {
        Some(Held {
            keys: scope.keys()?.iter().map(crate::ReadKey::to_bytes).collect(),
            any_group: scope.any_group(),
        })
    }

    /// Is the event of `record` (stored under `seq`) in scope?
    fn admits(&self, seq: u64, record: &RawRecord<'_>) -> StoreResult<bool> {
        let keys = keys::decode_audience(record.audience)
            .ok_or_else(|| StoreError::Corrupt(format!("event {seq}: audience")))?;
        Ok(keys.iter().any(|k| {
            (self.any_group && is_group_key(k))
                || self.keys.iter().any(|held| held.as_slice() == *k)
        }))
    }

    /// The `audience_kind` prefixes (before the kind) that list exactly this scope's events.
    fn prefixes(&self) -> Vec<Vec<u8>> {
        let mut out = self.keys.clone();
        if self.any_group {
            out.retain(|k| !is_group_key(k));
            out.push(vec![keys::EVERY_GROUP]);
        }
        out
    }
}

/// The plan for `filter` under `held`, and whether its index already keeps to the scope.
fn plan_in_scope(filter: &Filter, held: Option<&Held>) -> (Plan, bool) {
    let Some(held) = held else {
        return (plan(filter), true);
    };
    let broad = filter.ids.is_none()
        && filter.authors.is_none()
        && !filter.tags.keys().any(|l| l.is_ascii_alphabetic());
    if broad {
        let held_prefixes = held.prefixes();
        match &filter.kinds {
            None => return (Plan::EachKind(Index::AudienceKind, held_prefixes), true),
            Some(kinds) if held_prefixes.len() * kinds.len() <= MAX_PAIRS => {
                let prefixes = held_prefixes
                    .iter()
                    .flat_map(|key| kinds.iter().map(|k| keys::prefix_with_kind(key, *k)))
                    .collect();
                return (Plan::Index(Index::AudienceKind, prefixes), true);
            }
            Some(_) => {}
        }
    }
    (plan(filter), false)
}

/// Picks the most selective index the filter allows: author+kind, a tag, kind, author (each
/// of its kinds), else everything by created_at.
fn plan(filter: &Filter) -> Plan {
    if let Some(ids) = &filter.ids {
        return Plan::Ids(ids.clone());
    }
    if let (Some(authors), Some(kinds)) = (&filter.authors, &filter.kinds) {
        if authors.len().saturating_mul(kinds.len()) <= MAX_PAIRS {
            let prefixes = authors
                .iter()
                .flat_map(|a| kinds.iter().map(|k| keys::author_kind_prefix(a, *k)))
                .collect();
            return Plan::Index(Index::AuthorKind, prefixes);
        }
    }
    let tag = filter
        .tags
        .iter()
        .filter(|(letter, _)| letter.is_ascii_alphabetic())
        .min_by_key(|(_, values)| values.len());
    if let Some((letter, values)) = tag {
        let prefixes = values
            .iter()
            .map(|v| keys::tag_prefix(*letter as u8, v))
            .collect();
        return Plan::Index(Index::Tag, prefixes);
    }
    if let Some(kinds) = &filter.kinds {
        return Plan::Index(
            Index::Kind,
            kinds.iter().map(|k| keys::kind_prefix(*k)).collect(),
        );
    }
    if let Some(authors) = &filter.authors {
        return Plan::EachKind(
            Index::AuthorKind,
            authors.iter().map(|a| a.0.to_vec()).collect(),
        );
    }
    Plan::Index(Index::Created, vec![Vec::new()])
}

/// Calls `f` with each event matching `filter`, in `scope` and not expired at `now`, newest
/// first (ties: lowest id first), until it returns false or `budget` runs out.
fn walk(
    txn: &RoTxn,
    dbs: &Dbs,
    filter: &Filter,
    now: u64,
    scope: &ReadScope,
    budget: &mut Budget,
    f: &mut dyn FnMut(StoredEvent) -> bool,
) -> StoreResult<()> {
    let held = Held::of(scope);
    let (plan, in_scope) = plan_in_scope(filter, held.as_ref());
    // Each candidate's audience is checked unless the index walked holds only the scope's.
    let check = if in_scope { None } else { held.as_ref() };
    let (index, prefixes) = match plan {
        Plan::Ids(mut ids) => {
            ids.sort_unstable();
            ids.dedup();
            let mut events = Vec::with_capacity(ids.len());
            for id in &ids {
                if !budget.take() {
                    break;
                }
                let Some(seq) = records::seq_of(txn, dbs, id)? else {
                    continue;
                };
                if let Some(stored) = load_matching(txn, dbs, seq, check, filter, now)? {
                    events.push(stored);
                }
            }
            sort_newest_first(&mut events);
            for stored in events {
                if !f(stored) {
                    break;
                }
            }
            return Ok(());
        }
        Plan::Index(index, prefixes) => (index, prefixes),
        Plan::EachKind(index, prefixes) => {
            let db = dbs.index(index);
            let mut each = Vec::new();
            for prefix in prefixes {
                for kind in kinds_under(txn, db, &prefix, budget)? {
                    each.push(keys::prefix_with_kind(&prefix, kind));
                }
            }
            (index, each)
        }
    };

    // since/until become the bounds of each prefix's range.
    let newest = keys::rev(filter.until.unwrap_or(u64::MAX));
    let oldest = keys::rev(filter.since.unwrap_or(0));
    let bounds: Vec<(Vec<u8>, Vec<u8>)> = prefixes
        .into_iter()
        .map(|prefix| {
            let mut start = prefix.clone();
            start.extend_from_slice(&newest);
            start.extend_from_slice(&[0u8; 8]);
            let mut end = prefix;
            end.extend_from_slice(&oldest);
            end.extend_from_slice(&[0xffu8; 8]);
            (start, end)
        })
        .collect();
    let db = dbs.index(index);
    let mut cursors: Vec<RoRange<'_, Bytes, Bytes>> = Vec::with_capacity(bounds.len());
    for (start, end) in &bounds {
        cursors.push(
            db.range(
                txn,
                &(
                    Bound::Included(start.as_slice()),
                    Bound::Included(end.as_slice()),
                ),
            )
            .map_err(backend("walk index"))?,
        );
    }

    // Merge the cursors by suffix: newest second first, each second's entries in commit
    // order. A second's entries are gathered from every cursor, then taken lowest id first
    // (NIP-01's order for ties) without repeats (an event can sit under several of the
    // filter's tag values).
    let mut heads: BinaryHeap<Reverse<Head>> = BinaryHeap::with_capacity(cursors.len());
    for (i, cursor) in cursors.iter_mut().enumerate() {
        if let Some(head) = next_head(cursor, i)? {
            heads.push(head);
        }
    }
    // Sets, so that long author lists cost nothing per candidate.
    let kinds: Option<HashSet<u16>> = filter.kinds.as_ref().map(|k| k.iter().copied().collect());
    let authors: Option<HashSet<&[u8]>> = filter
        .authors
        .as_ref()
        .map(|a| a.iter().map(|a| &a.0[..]).collect());
    let mut second: Vec<Entry> = Vec::new();
    while let Some(Reverse(newest)) = heads.peek() {
        let created_at = newest.created_at;
        while heads
            .peek()
            .is_some_and(|Reverse(head)| head.created_at == created_at)
        {
            if second.len() == MAX_SECOND {
                budget.exhaust();
                return Ok(());
            }
            let Reverse(head) = heads.pop().expect("peeked");
            if let Some(next) = next_head(&mut cursors[head.cursor], head.cursor)? {
                heads.push(next);
            }
            let Some((kind, pubkey, id)) = keys::split_meta(&head.meta) else {
                continue;
            };
            let wanted = kinds.as_ref().is_none_or(|k| k.contains(&kind))
                && authors.as_ref().is_none_or(|a| a.contains(pubkey));
            second.push(Entry {
                id,
                seq: head.seq,
                wanted,
            });
        }
        second.sort_unstable();
        let mut last = None;
        for entry in second.drain(..) {
            // Counted in the order the answer takes them, as if the index held them so.
            if !budget.take() {
                return Ok(());
            }
            // Repeats share id and `seq`. An entry left behind by a corrupt record that was
            // removed has the id of the event stored again since, under a later `seq`: both
            // are tried, and only the live one has a record.
            if last == Some((entry.id, entry.seq)) || !entry.wanted {
                continue;
            }
            last = Some((entry.id, entry.seq));
            if let Some(stored) = load_matching(txn, dbs, entry.seq, check, filter, now)? {
                if !f(stored) {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Most index entries of one second one read gathers (across its prefixes) to put them in id
/// order: a second holding more under the prefixes of one read ends it there, incomplete.
/// Gathering reads index entries only (no record), so this is far above what
/// `max_query_candidates` lets a read load, and only a burst of that size in one second
/// reaches it.
const MAX_SECOND: usize = 100_000;

/// A candidate of one second, in the order it is taken: lowest id first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    id: Hex32,
    seq: u64,
    /// Kind and author pass the filter (told by the index entry).
    wanted: bool,
}

/// The kinds of the entries under `prefix` in an index keyed `prefix ++ kind ++ …`, in
/// order: one lookup each. Every kind past the first costs a candidate of `budget`, so a
/// prefix with many kinds cannot make a read expensive, while the usual one or two cost a
/// long author list next to nothing.
fn kinds_under(
    txn: &RoTxn,
    db: heed::Database<Bytes, Bytes>,
    prefix: &[u8],
    budget: &mut Budget,
) -> StoreResult<Vec<u16>> {
    let mut kinds = Vec::new();
    let mut seek = prefix.to_vec();
    seek.extend_from_slice(&0u16.to_be_bytes());
    while let Some((key, _)) = db
        .get_greater_than_or_equal_to(txn, &seek)
        .map_err(backend("seek the kinds under a prefix"))?
    {
        let Some(kind) = key
            .strip_prefix(prefix)
            .and_then(|rest| rest.get(..2))
            .map(|k| u16::from_be_bytes([k[0], k[1]]))
        else {
            break; // past the prefix
        };
        if !kinds.is_empty() && !budget.take() {
            break;
        }
        kinds.push(kind);
        let Some(next) = kind.checked_add(1) else {
            break;
        };
        seek.truncate(prefix.len());
        seek.extend_from_slice(&next.to_be_bytes());
    }
    Ok(kinds)
}

/// A cursor's current entry in the merge. The heap holds them in `Reverse`, so the smallest
/// pops first: newest second first (the reversed `created_at`, as in the keys), then in commit
/// order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Head {
    created_at: Reverse<u64>,
    seq: u64,
    cursor: usize,
    /// `kind ++ pubkey ++ id`.
    meta: [u8; META_LEN],
}

fn next_head(
    cursor: &mut RoRange<'_, Bytes, Bytes>,
    i: usize,
) -> StoreResult<Option<Reverse<Head>>> {
    let Some((key, value)) = cursor.next().transpose().map_err(backend("walk index"))? else {
        return Ok(None);
    };
    let (created_at, seq) =
        keys::split_suffix(key).ok_or_else(|| StoreError::Corrupt("index key too short".into()))?;
    let meta = <[u8; META_LEN]>::try_from(value)
        .map_err(|_| StoreError::Corrupt("index entry value".into()))?;
    Ok(Some(Reverse(Head {
        created_at: Reverse(created_at),
        seq,
        cursor: i,
        meta,
    })))
}

/// The event stored under `seq` if it is in `held` (when given), matches `filter` and has
/// not expired at `now`.
fn load_matching(
    txn: &RoTxn,
    dbs: &Dbs,
    seq: u64,
    held: Option<&Held>,
    filter: &Filter,
    now: u64,
) -> StoreResult<Option<StoredEvent>> {
    // The record header answers scope and expiry before the JSON is parsed.
    let Some(record) = records::raw(txn, dbs, seq)? else {
        return Ok(None); // deleted meanwhile, or a stale entry left by a corrupt record
    };
    if record.expires_at.is_some_and(|t| t <= now) {
        return Ok(None);
    }
    if let Some(held) = held {
        if !held.admits(seq, &record)? {
            return Ok(None);
        }
    }
    let stored = records::parse(seq, &record)?;
    let ev = &stored.event;
    if !filter.matches(ev) || ev.expiration().is_some_and(|t| t <= now) {
        return Ok(None);
    }
    Ok(Some(stored))
}

/// Stored events with `seq > after` in seq order, at most `limit` (see `EventStore::since`):
/// `events` walked from `after`. Events removed since are gone with their records.
pub(super) fn since(
    env: &Env<WithoutTls>,
    dbs: &Dbs,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<crate::Sequenced>> {
    let txn = env.read_txn().map_err(backend("begin read transaction"))?;
    Ok(records::after(&txn, dbs, after, limit)?
        .into_iter()
        .map(|(seq, event)| crate::Sequenced { seq, event })
        .collect())
}
