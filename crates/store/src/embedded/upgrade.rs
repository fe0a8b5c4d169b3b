//! The upgrade of an older store to the current schema, in the transaction that opens it.
//!
//! Schema 5 ends every time-ordered index key with `rev(created_at) ++ seq` (schemas 1 to 4:
//! `rev(created_at) ++ id`) and puts the id in the entry's value in place of the `seq`. The
//! upgrade from 3 or 4 rebuilds those indexes from the records, which stay as they are.
//! Schema 3 also had two more indexes, `idx_author` (pubkey) and `idx_audience` (read key
//! without kind), whose reads schema 4 answers from `idx_author_kind` and
//! `idx_audience_kind` (where it also lists every group's events together,
//! `keys::EVERY_GROUP`); the upgrade removes the two tables.
//!
//! Schemas 1 and 2 kept each event's record under its id in `events`, its audience in an
//! `audience` table (id → read keys), the commit stream in `seq` (seq → id) and, for events
//! stored before records carried their `seq` (schema 1), that `seq` in `event_seq`. The
//! upgrade moves every record to `events_by_seq` under its `seq` with its audience folded in,
//! rebuilds the time-ordered indexes and `expiry` (their values and keys now carry the `seq`),
//! and removes the four old tables. Events that never had a `seq` (stored before there was
//! a commit stream) get new ones past the last one handed out, and `last_seq` moves past
//! them: none of them is delivered as a new commit.

use super::keys::{self, Index};
use super::{backend, txn, Bytes, Dbs};
use crate::{ReadKey, StoreError, StoreResult};
use heed::{Database, Env, RwTxn, WithoutTls};
use mls_proto::{Event, Hex32};
use std::ops::Bound;

/// The tables of schemas 1 and 2 that schema 3 does without.
const LEGACY_EVENTS: &str = "events";
const LEGACY_TABLES: [&str; 4] = [LEGACY_EVENTS, "audience", "seq", "event_seq"];
/// The marker schemas 1 and 2 left in `meta` once every event had an audience record.
const AUDIENCE_MARKER: &[u8] = b"audience";
/// Records moved per walk of the old `events` table (the walk's borrow of the transaction
/// ends before they are written).
const CHUNK: usize = 4096;

/// What an upgrade did, logged once it is committed.
pub(super) struct Upgraded {
    pub events: u64,
    /// Events that had no `seq` (stored before there was a commit stream).
    pub given_a_seq: u64,
    pub last_seq: u64,
}

/// Indexes of schema 3 that schema 4 does without.
const SCHEMA_3_INDEXES: [&str; 2] = ["idx_author", "idx_audience"];

/// Brings a store of schema `from` (1 to 4) to the current layout.
pub(super) fn upgrade(
    env: &Env<WithoutTls>,
    txn: &mut RwTxn,
    dbs: &Dbs,
    from: &str,
) -> StoreResult<Upgraded> {
    let upgraded = if from == "1" || from == "2" {
        move_records(env, txn, dbs)?
    } else {
        rebuild_indexes(txn, dbs)?
    };
    remove_tables(env, txn, &SCHEMA_3_INDEXES)?;
    Ok(upgraded)
}

/// Writes the time-ordered indexes again from the records (schemas 3 and 4 keyed their
/// entries by id where schema 5 keys them by `seq`).
fn rebuild_indexes(txn: &mut RwTxn, dbs: &Dbs) -> StoreResult<Upgraded> {
    let stored = dbs.events.len(txn).map_err(backend("count the records"))?;
    // Said before the work: on a large store the relay is not listening meanwhile.
    tracing::info!(
        events = stored,
        "upgrading the store's schema: rebuilding its indexes (the relay listens once it is done)"
    );
    for index in Index::ALL {
        dbs.index(index)
            .clear(txn)
            .map_err(backend("clear index for the upgrade"))?;
    }
    let (mut after, mut done) = (0u64, 0u64);
    loop {
        // A chunk at a time: the walk borrows the transaction the entries are written in.
        let (mut chunk, mut walked) = (Vec::with_capacity(CHUNK), 0);
        let from = keys::seq_key(after);
        for entry in dbs
            .events
            .range(txn, &(Bound::Excluded(&from[..]), Bound::Unbounded))
            .map_err(backend("walk the records"))?
            .take(CHUNK)
        {
            let (key, bytes) = entry.map_err(backend("walk the records"))?;
            let seq =
                keys::split_seq(key).ok_or_else(|| StoreError::Corrupt("events key".into()))?;
            (after, walked) = (seq, walked + 1);
            match txn::indexed_parts(bytes) {
                Ok(parts) => chunk.push((seq, parts.ev, parts.audience)),
                // Unreadable before the upgrade too (a read reaching it failed); left without
                // index entries, so reads no longer reach it.
                Err(error) => tracing::error!(seq, error, "upgrade: skipping a corrupt record"),
            }
        }
        if walked == 0 {
            break;
        }
        for (seq, ev, audience) in &chunk {
            txn::put_index_entries(txn, dbs, ev, *seq, audience)?;
        }
        done += chunk.len() as u64;
    }
    Ok(Upgraded {
        events: done,
        given_a_seq: 0,
        last_seq: keys::last_seq(txn, dbs)?,
    })
}

/// Removes the named tables, where they exist.
fn remove_tables(env: &Env<WithoutTls>, txn: &mut RwTxn, names: &[&str]) -> StoreResult<()> {
    for name in names {
        let db: Option<Database<Bytes, Bytes>> = env
            .open_database(txn, Some(name))
            .map_err(|e| StoreError::Backend(format!("open database {name}: {e}")))?;
        if let Some(db) = db {
            // SAFETY: opened just now, in this transaction, and nothing else holds a handle
            // (the rest of the store never opens these tables).
            unsafe { db.remove(txn) }
                .map_err(|e| StoreError::Backend(format!("remove database {name}: {e}")))?;
        }
    }
    Ok(())
}

/// Moves every event of a schema 1 or 2 store into the current layout.
fn move_records(env: &Env<WithoutTls>, txn: &mut RwTxn, dbs: &Dbs) -> StoreResult<Upgraded> {
    let mut legacy: [Option<Database<Bytes, Bytes>>; 4] = [None; 4];
    for (db, name) in legacy.iter_mut().zip(LEGACY_TABLES) {
        *db = env
            .open_database(txn, Some(name))
            .map_err(|e| StoreError::Backend(format!("open database {name}: {e}")))?;
    }
    let [old_events, old_audience, _, old_event_seq] = legacy;
    // Said before the work: on a large store the relay is silent, and not listening, for
    // about a minute per million events.
    let stored = match old_events {
        Some(db) => db.len(txn).map_err(backend("count the old records"))?,
        None => 0,
    };
    tracing::info!(
        events = stored,
        "upgrading the store's schema to records keyed by commit sequence (about a minute \
         per million events; the relay listens once it is done)"
    );
    for index in Index::ALL {
        dbs.index(index)
            .clear(txn)
            .map_err(backend("clear index for the upgrade"))?;
    }
    dbs.expiry
        .clear(txn)
        .map_err(backend("clear expiry index for the upgrade"))?;

    let last_before = keys::last_seq(txn, dbs)?;
    let mut last_seq = last_before;
    let (mut moved, mut new_seqs) = (0u64, 0u64);
    if let Some(old_events) = old_events {
        let mut after: Option<[u8; keys::ID_LEN]> = None;
        loop {
            let chunk = read_chunk(txn, old_events, old_audience, old_event_seq, after)?;
            let Some(last) = chunk.last() else { break };
            after = Some(last.id.0);
            for old in chunk {
                let parsed = decode_record(&old.record)
                    .ok_or_else(|| "record header".to_string())
                    .and_then(|record| {
                        serde_json::from_str::<Event>(record.json)
                            .map(|ev| (record, ev))
                            .map_err(|e| format!("event JSON: {e}"))
                    });
                let (record, ev) = match parsed {
                    Ok(parsed) => parsed,
                    Err(error) => {
                        // Unreadable before the upgrade too: reads skipped it.
                        tracing::error!(id = %old.id, error, "upgrade: skipping a corrupt record");
                        continue;
                    }
                };
                let seq = match record.seq.or(old.seq) {
                    Some(seq) if !taken(txn, dbs, seq)? => seq,
                    _ => {
                        new_seqs += 1;
                        last_seq + 1
                    }
                };
                last_seq = last_seq.max(seq);
                // Stored before audiences were recorded: for the visibility rule alone.
                let audience = old
                    .audience
                    .unwrap_or_else(|| vec![ReadKey::Unknown.to_bytes()]);
                txn::store_event(
                    txn,
                    dbs,
                    &ev,
                    record.received_at,
                    record.expires_at,
                    seq,
                    &audience,
                    false,
                )?;
                moved += 1;
            }
        }
    }
    remove_tables(env, txn, &LEGACY_TABLES)?;
    dbs.meta
        .delete(txn, AUDIENCE_MARKER)
        .map_err(backend("delete audience marker"))?;
    if last_seq != last_before {
        dbs.meta
            .put(txn, keys::LAST_SEQ, &last_seq.to_be_bytes())
            .map_err(backend("write last_seq"))?;
    }
    Ok(Upgraded {
        events: moved,
        given_a_seq: new_seqs,
        last_seq,
    })
}

/// Is `seq` already given to a moved record (only in a corrupt store: two records claiming
/// one `seq`)?
fn taken(txn: &RwTxn, dbs: &Dbs, seq: u64) -> StoreResult<bool> {
    Ok(dbs
        .events
        .get(txn, &keys::seq_key(seq))
        .map_err(backend("read event"))?
        .is_some())
}

/// One event of the old layout, as read from its tables.
struct OldEvent {
    id: Hex32,
    record: Vec<u8>,
    /// From `event_seq` (schema 1 records do not carry it).
    seq: Option<u64>,
    /// Its read keys; `None` when stored before audiences were recorded.
    audience: Option<Vec<Vec<u8>>>,
}

/// Up to [`CHUNK`] old records after id `after`, in id order.
fn read_chunk(
    txn: &RwTxn,
    events: Database<Bytes, Bytes>,
    audience: Option<Database<Bytes, Bytes>>,
    event_seq: Option<Database<Bytes, Bytes>>,
    after: Option<[u8; keys::ID_LEN]>,
) -> StoreResult<Vec<OldEvent>> {
    let from = after
        .as_ref()
        .map_or(Bound::Unbounded, |id| Bound::Excluded(&id[..]));
    let mut out = Vec::new();
    for entry in events
        .range(txn, &(from, Bound::Unbounded))
        .map_err(backend("walk old events"))?
        .take(CHUNK)
    {
        let (key, record) = entry.map_err(backend("walk old events"))?;
        let id = <[u8; keys::ID_LEN]>::try_from(key)
            .map(Hex32)
            .map_err(|_| StoreError::Corrupt("old events key".into()))?;
        let seq = match event_seq {
            None => None,
            Some(db) => db
                .get(txn, key)
                .map_err(backend("read old seq entry"))?
                .and_then(keys::split_seq),
        };
        let audience = match audience {
            None => None,
            Some(db) => db
                .get(txn, key)
                .map_err(backend("read old audience record"))?
                .map(|v| {
                    keys::decode_audience(v)
                        .map(|keys| keys.into_iter().map(<[u8]>::to_vec).collect())
                        .ok_or_else(|| StoreError::Corrupt(format!("{id}: old audience record")))
                })
                .transpose()?,
        };
        out.push(OldEvent {
            id,
            record: record.to_vec(),
            seq,
            audience,
        });
    }
    Ok(out)
}

/// Schema 1 records: `1 ++ flags ++ received_at ++ expires_at ++ json`; schema 2 records
/// add the `seq` before the JSON: `2 ++ flags ++ received_at ++ expires_at ++ seq ++ json`.
const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
const HEADER_V1_LEN: usize = 1 + 1 + 8 + 8;
const HEADER_V2_LEN: usize = HEADER_V1_LEN + 8;

/// An old record read in place.
struct OldRecord<'a> {
    received_at: u64,
    expires_at: Option<u64>,
    /// Schema 2 records only.
    seq: Option<u64>,
    json: &'a str,
}

fn decode_record(bytes: &[u8]) -> Option<OldRecord<'_>> {
    let header = match *bytes.first()? {
        RECORD_V1 => HEADER_V1_LEN,
        RECORD_V2 => HEADER_V2_LEN,
        _ => return None,
    };
    let json = std::str::from_utf8(bytes.get(header..)?).ok()?;
    Some(OldRecord {
        received_at: keys::u64_at(bytes, 2),
        expires_at: (bytes[1] & 1 == 1).then(|| keys::u64_at(bytes, 10)),
        seq: (header == HEADER_V2_LEN).then(|| keys::u64_at(bytes, HEADER_V1_LEN)),
        json,
    })
}

/// Writers of the old layout, so that tests can make the stores older builds left.
#[cfg(test)]
pub(super) mod old_layout {
    use super::*;

    /// One event as a schema 1 or 2 build stored it.
    pub struct Old<'a> {
        pub ev: &'a Event,
        pub received_at: u64,
        pub expires_at: Option<u64>,
        /// Its `seq`: in the record (schema 2) or in `event_seq` (schema 1, `in_record`
        /// false); `None`: stored before there was a commit stream.
        pub seq: Option<u64>,
        pub in_record: bool,
        /// `None`: stored before audiences were recorded.
        pub audience: Option<Vec<Vec<u8>>>,
    }

    fn table(env: &Env<WithoutTls>, txn: &mut RwTxn, name: &str) -> Database<Bytes, Bytes> {
        env.create_database(txn, Some(name)).unwrap()
    }

    /// Writes `old` (record, `seq`, audience, index and expiry entries, address) as the old
    /// layout did.
    pub fn put(env: &Env<WithoutTls>, txn: &mut RwTxn, dbs: &Dbs, old: &Old<'_>) {
        let ev = old.ev;
        let mut record = vec![if old.in_record { RECORD_V2 } else { RECORD_V1 }];
        record.push(u8::from(old.expires_at.is_some()));
        record.extend_from_slice(&old.received_at.to_be_bytes());
        record.extend_from_slice(&old.expires_at.unwrap_or(0).to_be_bytes());
        if old.in_record {
            record.extend_from_slice(&old.seq.expect("a schema 2 record has a seq").to_be_bytes());
        }
        record.extend_from_slice(ev.to_json().as_bytes());
        table(env, txn, LEGACY_EVENTS)
            .put(txn, &ev.id.0, &record)
            .unwrap();
        if let Some(seq) = old.seq {
            table(env, txn, "seq")
                .put(txn, &seq.to_be_bytes(), &ev.id.0)
                .unwrap();
            if !old.in_record {
                table(env, txn, "event_seq")
                    .put(txn, &ev.id.0, &seq.to_be_bytes())
                    .unwrap();
            }
        }
        // Index values of schemas 1 and 2: kind ++ pubkey.
        let meta = &keys::meta(ev)[..2 + 32];
        let audience = old.audience.clone().unwrap_or_default();
        put_schema_4_indexes(txn, dbs, ev, &audience, meta, false);
        put_schema_3_indexes(env, txn, ev, &audience, meta);
        if let Some(audience) = &old.audience {
            table(env, txn, "audience")
                .put(txn, &ev.id.0, &keys::encode_audience(audience))
                .unwrap();
        }
        if let Some(expires_at) = old.expires_at {
            match old.seq.filter(|_| old.in_record) {
                // Schema 2: expires_at ++ seq → id.
                Some(seq) => dbs
                    .expiry
                    .put(txn, &keys::expiry_key(expires_at, seq), &ev.id.0),
                // Schema 1: expires_at ++ id, no value.
                None => {
                    let mut key = expires_at.to_be_bytes().to_vec();
                    key.extend_from_slice(&ev.id.0);
                    dbs.expiry.put(txn, &key, &[])
                }
            }
            .unwrap();
        }
        if let Some(addr) = keys::event_addr_key(ev) {
            dbs.addr
                .put(txn, &addr, &keys::addr_value(ev.created_at, &ev.id))
                .unwrap();
        }
    }

    /// The value of schemas 3 and 4's index entries: `kind ++ pubkey ++ seq`.
    pub fn schema_4_value(ev: &Event, seq: u64) -> Vec<u8> {
        [&ev.kind.to_be_bytes()[..], &ev.pubkey.0, &seq.to_be_bytes()].concat()
    }

    /// The suffix of schemas 1 to 4's index keys: `rev(created_at) ++ id`.
    fn old_suffix(ev: &Event) -> Vec<u8> {
        [&keys::rev(ev.created_at)[..], &ev.id.0].concat()
    }

    /// The entries of `ev` in the time-ordered indexes as schema 4 wrote them (`prefix ++
    /// rev(created_at) ++ id`), with `value`; schemas 1 to 3 wrote the same but for the
    /// every-group entries (`every_group` false).
    pub fn put_schema_4_indexes(
        txn: &mut RwTxn,
        dbs: &Dbs,
        ev: &Event,
        audience: &[Vec<u8>],
        value: &[u8],
        every_group: bool,
    ) {
        for (index, key) in keys::index_keys(ev, 0, audience) {
            let prefix = &key[..key.len() - keys::SUFFIX_LEN];
            let lists_every_group = index == Index::AudienceKind
                && prefix == keys::prefix_with_kind(&[keys::EVERY_GROUP], ev.kind);
            if lists_every_group && !every_group {
                continue;
            }
            let key = [prefix, &old_suffix(ev)].concat();
            dbs.index(index).put(txn, &key, value).unwrap();
        }
    }

    /// The entries of `ev` in the indexes schema 4 does without (by pubkey, by read key
    /// without kind), with `value`.
    pub fn put_schema_3_indexes(
        env: &Env<WithoutTls>,
        txn: &mut RwTxn,
        ev: &Event,
        audience: &[Vec<u8>],
        value: &[u8],
    ) {
        let suffix = old_suffix(ev);
        let [by_author, by_audience] = SCHEMA_3_INDEXES;
        let key = [&ev.pubkey.0[..], &suffix].concat();
        table(env, txn, by_author).put(txn, &key, value).unwrap();
        for read_key in audience {
            let key = [&read_key[..], &suffix].concat();
            table(env, txn, by_audience).put(txn, &key, value).unwrap();
        }
    }

    /// Marks the store as schema `schema` with `last_seq`, audiences recorded or not.
    pub fn finish(txn: &mut RwTxn, dbs: &Dbs, schema: &str, last_seq: u64, audiences: bool) {
        dbs.meta.put(txn, b"schema", schema.as_bytes()).unwrap();
        dbs.meta
            .put(txn, keys::LAST_SEQ, &last_seq.to_be_bytes())
            .unwrap();
        if audiences {
            dbs.meta.put(txn, AUDIENCE_MARKER, b"1").unwrap();
        }
    }

    /// Does the old table `name` still exist?
    pub fn exists(env: &Env<WithoutTls>, name: &str) -> bool {
        let txn = env.read_txn().unwrap();
        env.open_database::<Bytes, Bytes>(&txn, Some(name))
            .unwrap()
            .is_some()
    }

    /// Every table of schemas 1 to 3 the current one does without.
    pub const TABLES: [&str; 6] = [
        LEGACY_TABLES[0],
        LEGACY_TABLES[1],
        LEGACY_TABLES[2],
        LEGACY_TABLES[3],
        SCHEMA_3_INDEXES[0],
        SCHEMA_3_INDEXES[1],
    ];
}
