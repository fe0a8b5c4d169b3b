//! The writer's transaction: one per batch of the shared writer ([`mls_store::writer`]),
//! and the primitives the shared write path ([`mls_store::write_txn`]) runs on.
//!
//! The writer is a dedicated thread (not a runtime worker: the rules are synchronous and read
//! the state inside the transaction, so it blocks on each statement). Each transaction
//! begins with `pg_advisory_xact_lock`. Every instance sharing the database takes the same
//! lock, so batches from all instances run one after another: the rules' read-then-write of
//! the state keeps the single-writer semantics across instances, and `seq` (commit order) is
//! handed out inside the lock, so it has no gaps and commits in order. Requests are answered
//! only once COMMIT returned.

use crate::keys::{self, from_ts, hex32, ts};
use crate::{state, Io};
use deadpool_postgres::{Object, Pool};
use mls_proto::{Event, Hex32};
use mls_store::address::Address;
use mls_store::audience::Audience;
use mls_store::overlay::StateChanges;
use mls_store::write_txn::WriteTxn;
use mls_store::writer::WriteBackend;
use mls_store::{StateRead, StoreError, StoreResult};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// Opens the writer's transactions.
pub(crate) struct Backend {
    pub io: Arc<Io>,
    pub pool: Pool,
    /// The advisory lock every instance's writer takes (one per schema).
    pub lock_key: i64,
}

/// One batch's transaction, on a connection of its own.
///
/// Round trips are what a batch costs here, so the transaction buffers its inserts
/// ([`Pending`], sent as one statement per table by [`WriteTxn::flush`] or before a read of
/// the events tables needs them) and answers the duplicate, tombstone and version checks of
/// the batch's own events from what [`WriteTxn::prefetch`] read at once ([`Known`]).
pub(crate) struct Txn<'a> {
    io: &'a Io,
    client: Object,
    /// The last `seq` handed out, this transaction's included; written back at commit.
    last_seq: i64,
    seq_before: i64,
    pending: RefCell<Pending>,
    known: RefCell<Known>,
    /// State keys read or written by this transaction (nobody else writes under the lock).
    state_cache: RefCell<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

/// Rows this transaction wrote but has not sent yet.
#[derive(Default)]
struct Pending {
    events: HashMap<Hex32, PendingEvent>,
    /// Address key → the pending event stored at it.
    addresses: HashMap<Vec<u8>, Hex32>,
    /// New audiences of events already sent (event id → keys).
    audiences: HashMap<Hex32, Vec<Vec<u8>>>,
}

struct PendingEvent {
    event: Event,
    seq: i64,
    received_at: i64,
    expires_at: Option<i64>,
    address: Option<Vec<u8>>,
    audience: Vec<Vec<u8>>,
}

/// The columns of [`INSERT_EVENTS`].
#[derive(Default)]
struct EventColumns {
    ids: Vec<Vec<u8>>,
    seqs: Vec<i64>,
    pubkeys: Vec<Vec<u8>>,
    kinds: Vec<i32>,
    created: Vec<i64>,
    received: Vec<i64>,
    expires: Vec<Option<i64>>,
    addresses: Vec<Option<Vec<u8>>>,
    json: Vec<String>,
}

/// The columns of [`INSERT_AUDIENCE`] and [`INSERT_TAGS`] (`names` for tags only).
#[derive(Default)]
struct RowColumns {
    ids: Vec<Vec<u8>>,
    names: Vec<String>,
    values: Vec<Vec<u8>>,
    kinds: Vec<i32>,
    created: Vec<i64>,
    expires: Vec<Option<i64>>,
}

impl RowColumns {
    fn push(&mut self, id: &[u8], value: Vec<u8>, kind: i32, created: i64, expires: Option<i64>) {
        self.ids.push(id.to_vec());
        self.values.push(value);
        self.kinds.push(kind);
        self.created.push(created);
        self.expires.push(expires);
    }
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.audiences.is_empty()
    }
}

/// What the database held, when the batch began, for the ids and addresses of its events;
/// kept up to date by this transaction's own writes. Anything not in here is read.
#[derive(Default)]
struct Known {
    /// Id → stored in the database (pending rows not counted).
    stored: HashMap<Hex32, bool>,
    deleters: HashMap<Hex32, Vec<Hex32>>,
    /// Address key → `created_at` and id of the version in the database.
    versions: HashMap<Vec<u8>, Option<(u64, Hex32)>>,
    /// Address key → `until` of its tombstone.
    address_tombstones: HashMap<Vec<u8>, Option<u64>>,
}

impl WriteBackend for Backend {
    type Txn<'a> = Txn<'a>;

    fn begin(&self) -> Result<Txn<'_>, String> {
        let io = &*self.io;
        let client = match io.block_on(self.pool.get()) {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(format!("database connection: {e}")),
            Err(e) => return Err(format!("database connection: {e}")),
        };
        let begin = async {
            client.batch_execute("BEGIN").await?;
            client
                .execute("SELECT pg_advisory_xact_lock($1)", &[&self.lock_key])
                .await?;
            let row = client
                .query_one("SELECT last_seq FROM store_meta", &[])
                .await?;
            Ok::<i64, tokio_postgres::Error>(row.get(0))
        };
        let began = match io.block_on(begin) {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(e)) => Err(describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        match began {
            Ok(seq) => Ok(Txn {
                io,
                client,
                last_seq: seq,
                seq_before: seq,
                pending: RefCell::default(),
                known: RefCell::default(),
                state_cache: RefCell::default(),
            }),
            Err(e) => {
                discard(io, client);
                Err(e)
            }
        }
    }

    fn commit(&self, txn: Txn<'_>) -> Result<(), String> {
        // The writer flushes before it commits; this only guards against a caller that did not.
        if let Err(e) = txn.send_pending() {
            let error = e.to_string();
            discard(txn.io, txn.client);
            return Err(error);
        }
        let Txn {
            io,
            client,
            last_seq,
            seq_before,
            ..
        } = txn;
        let commit = async {
            if last_seq != seq_before {
                client
                    .execute("UPDATE store_meta SET last_seq = $1", &[&last_seq])
                    .await?;
            }
            client.batch_execute("COMMIT").await
        };
        let committed = match io.block_on(commit) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(describe(&e)),
            Err(e) => Err(e.to_string()),
        };
        if committed.is_err() {
            // Whether COMMIT took effect is unknown when the connection broke: every request
            // is failed (never acknowledged without a confirmed commit).
            discard(io, client);
        }
        committed
    }

    /// A connection that still rolls back says one request was bad (the others are retried
    /// alone); one that does not says the database is gone (all fail now, rather than each
    /// waiting out the deadline again). One that cannot end its transaction is closed rather
    /// than returned to the pool mid-transaction.
    fn rollback(&self, txn: Txn<'_>) -> bool {
        let ok = matches!(
            txn.io.block_on(txn.client.batch_execute("ROLLBACK")),
            Ok(Ok(()))
        );
        if !ok {
            discard(txn.io, txn.client);
        }
        ok
    }
}

/// Error text with the server's own message when there is one.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{e}: {}", db.message()),
        None => e.to_string(),
    }
}

fn discard(io: &Io, client: Object) {
    let _guard = io.handle.enter();
    drop(Object::take(client));
}

// Many rows per statement: one array per column.
const INSERT_EVENTS: &str = "INSERT INTO events \
    (id, seq, pubkey, kind, created_at, received_at, expires_at, addr, json) \
    SELECT * FROM unnest($1::bytea[], $2::int8[], $3::bytea[], $4::int4[], $5::int8[], \
    $6::int8[], $7::int8[], $8::bytea[], $9::text[])";
const INSERT_AUDIENCE: &str = "INSERT INTO event_audience \
    (event_id, key, kind, created_at, expires_at) \
    SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::int4[], $4::int8[], $5::int8[])";
const INSERT_TAGS: &str = "INSERT INTO event_tags (event_id, name, value, kind, created_at) \
    SELECT * FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::int4[], $5::int8[])";
// Kind, time and expiry come from the event's own row; an event removed meanwhile gets none.
const REPLACE_AUDIENCE: &str = "INSERT INTO event_audience \
    (event_id, key, kind, created_at, expires_at) \
    SELECT e.id, a.key, e.kind, e.created_at, e.expires_at \
    FROM unnest($1::bytea[], $2::bytea[]) AS a (event_id, key) JOIN events e ON e.id = a.event_id";

impl Txn<'_> {
    /// Sends the buffered rows: one statement per table, whatever their number.
    fn send_pending(&self) -> StoreResult<()> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return Ok(());
        }
        // What was known about the database no longer holds once these rows are in it.
        *self.known.borrow_mut() = Known::default();
        let mut events: Vec<PendingEvent> = pending.events.into_values().collect();
        events.sort_unstable_by_key(|p| p.seq);
        if !events.is_empty() {
            let mut cols = EventColumns::default();
            let mut audience = RowColumns::default();
            let mut tags = RowColumns::default();
            for p in &events {
                let id = p.event.id.0.to_vec();
                let kind = i32::from(p.event.kind);
                let created_at = ts(p.event.created_at);
                for key in &p.audience {
                    audience.push(&id, key.clone(), kind, created_at, p.expires_at);
                }
                for (name, value) in keys::indexed_tags(&p.event) {
                    tags.names.push(name);
                    tags.push(&id, value, kind, created_at, None);
                }
                cols.ids.push(id);
                cols.seqs.push(p.seq);
                cols.pubkeys.push(p.event.pubkey.0.to_vec());
                cols.kinds.push(kind);
                cols.created.push(created_at);
                cols.received.push(p.received_at);
                cols.expires.push(p.expires_at);
                cols.addresses.push(p.address.clone());
                cols.json.push(p.event.to_json());
            }
            self.execute(
                "insert events",
                INSERT_EVENTS,
                &[
                    &cols.ids,
                    &cols.seqs,
                    &cols.pubkeys,
                    &cols.kinds,
                    &cols.created,
                    &cols.received,
                    &cols.expires,
                    &cols.addresses,
                    &cols.json,
                ],
            )?;
            if !audience.ids.is_empty() {
                self.execute(
                    "insert event audience",
                    INSERT_AUDIENCE,
                    &[
                        &audience.ids,
                        &audience.values,
                        &audience.kinds,
                        &audience.created,
                        &audience.expires,
                    ],
                )?;
            }
            if !tags.ids.is_empty() {
                self.execute(
                    "insert event tags",
                    INSERT_TAGS,
                    &[
                        &tags.ids,
                        &tags.names,
                        &tags.values,
                        &tags.kinds,
                        &tags.created,
                    ],
                )?;
            }
        }
        if !pending.audiences.is_empty() {
            let ids: Vec<Vec<u8>> = pending.audiences.keys().map(|id| id.0.to_vec()).collect();
            self.execute(
                "clear event audience",
                "DELETE FROM event_audience WHERE event_id = ANY($1)",
                &[&ids],
            )?;
            let (mut event_ids, mut keys) = (Vec::new(), Vec::new());
            for (id, audience) in pending.audiences {
                for key in audience {
                    event_ids.push(id.0.to_vec());
                    keys.push(key);
                }
            }
            if !event_ids.is_empty() {
                self.execute(
                    "write event audience",
                    REPLACE_AUDIENCE,
                    &[&event_ids, &keys],
                )?;
            }
        }
        Ok(())
    }

    fn block<T>(
        &self,
        what: &'static str,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> StoreResult<T> {
        match self.io.block_on(f) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Backend(format!("{what}: {}", describe(&e)))),
            Err(e) => Err(StoreError::Backend(format!("{what}: {e}"))),
        }
    }

    fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.block(what, async {
            let stmt = self.client.prepare_cached(sql).await?;
            self.client.query(&stmt, params).await
        })
    }

    fn execute(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> StoreResult<u64> {
        self.block(what, async {
            let stmt = self.client.prepare_cached(sql).await?;
            self.client.execute(&stmt, params).await
        })
    }
}

/// The rules read the state through the transaction, so they see the batch's earlier writes.
impl StateRead for Txn<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if key.is_empty() || key.len() > mls_store::MAX_STATE_KEY_LEN {
            return Ok(None);
        }
        if let Some(value) = self.state_cache.borrow().get(key) {
            return Ok(value.clone());
        }
        // The writer thread is not a runtime worker: it may block on the store's runtime.
        let value = self
            .io
            .block_on(state::get_on(&self.client, key.to_vec()))??;
        self.state_cache
            .borrow_mut()
            .insert(key.to_vec(), value.clone());
        Ok(value)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let mut page = |start: Vec<u8>, end: Option<Vec<u8>>| {
            self.io
                .block_on(state::scan_page(&self.client, start, end))?
        };
        state::scan_paged(prefix, from, &mut page, f)
    }
}

impl WriteTxn for Txn<'_> {
    fn state(&self) -> &dyn StateRead {
        self
    }

    fn contains(&self, id: &Hex32) -> StoreResult<bool> {
        if self.pending.borrow().events.contains_key(id) {
            return Ok(true);
        }
        if let Some(stored) = self.known.borrow().stored.get(id) {
            return Ok(*stored);
        }
        Ok(!self
            .query(
                "look up event id",
                "SELECT 1 FROM events WHERE id = $1",
                &[&id.0.to_vec()],
            )?
            .is_empty())
    }

    fn load(&self, id: &Hex32) -> StoreResult<Option<Event>> {
        if let Some(p) = self.pending.borrow().events.get(id) {
            return Ok(Some(p.event.clone()));
        }
        let rows = self.query(
            "read event",
            "SELECT json FROM events WHERE id = $1",
            &[&id.0.to_vec()],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let json: String = row.get(0);
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{id}: event JSON: {e}")))
    }

    fn version_at(&self, address: &Address) -> StoreResult<Option<(u64, Hex32)>> {
        {
            let pending = self.pending.borrow();
            if let Some(id) = pending.addresses.get(&address.key) {
                let p = &pending.events[id];
                return Ok(Some((p.event.created_at, *id)));
            }
        }
        if let Some(version) = self.known.borrow().versions.get(&address.key) {
            return Ok(*version);
        }
        let rows = self.query(
            "look up address",
            "SELECT created_at, id FROM events WHERE addr = $1",
            &[&address.key],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let id: Vec<u8> = row.get(1);
        Ok(Some((
            from_ts(row.get(0)),
            hex32(&id, "event id of an address")?,
        )))
    }

    fn address_deleted_until(&self, address: &Address) -> StoreResult<Option<u64>> {
        if let Some(until) = self.known.borrow().address_tombstones.get(&address.key) {
            return Ok(*until);
        }
        Ok(self
            .query(
                "look up address tombstone",
                "SELECT until FROM tomb_addrs WHERE addr = $1",
                &[&address.key],
            )?
            .first()
            .map(|r| from_ts(r.get(0))))
    }

    fn id_deleters(&self, id: &Hex32) -> StoreResult<Vec<Hex32>> {
        if let Some(deleters) = self.known.borrow().deleters.get(id) {
            return Ok(deleters.clone());
        }
        self.query(
            "read id tombstones",
            "SELECT deleter FROM tomb_ids WHERE id = $1",
            &[&id.0.to_vec()],
        )?
        .iter()
        .map(|row| hex32(row.get::<_, &[u8]>(0), &format!("tombstone for {id}")))
        .collect()
    }

    fn insert(
        &mut self,
        ev: &Event,
        received_at: u64,
        expires_at: Option<u64>,
        audience: &Audience,
    ) -> StoreResult<()> {
        let seq = self.last_seq + 1;
        let address = Address::of(ev).map(|a| a.key);
        let mut pending = self.pending.borrow_mut();
        if let Some(key) = &address {
            pending.addresses.insert(key.clone(), ev.id);
        }
        pending.events.insert(
            ev.id,
            PendingEvent {
                event: ev.clone(),
                seq,
                received_at: ts(received_at),
                expires_at: expires_at.map(ts),
                address,
                audience: audience.key_bytes(),
            },
        );
        self.last_seq = seq;
        Ok(())
    }

    /// Its tags and audience go with it (ON DELETE CASCADE).
    fn remove(&mut self, id: &Hex32) -> StoreResult<bool> {
        let removed_pending = {
            let mut pending = self.pending.borrow_mut();
            let gone = pending.events.remove(id);
            if let Some(key) = gone.as_ref().and_then(|p| p.address.as_ref()) {
                pending.addresses.remove(key);
            }
            pending.audiences.remove(id);
            gone.is_some()
        };
        if removed_pending {
            return Ok(true);
        }
        let rows = self.query(
            "delete event",
            "DELETE FROM events WHERE id = $1 RETURNING addr",
            &[&id.0.to_vec()],
        )?;
        let Some(row) = rows.first() else {
            return Ok(false);
        };
        let known = self.known.get_mut();
        if let Some(stored) = known.stored.get_mut(id) {
            *stored = false;
        }
        if let Some(key) = row.get::<_, Option<Vec<u8>>>(0) {
            if let Some(version) = known.versions.get_mut(&key) {
                *version = None;
            }
        }
        Ok(true)
    }

    fn put_id_tombstone(&mut self, id: &Hex32, deleter: &Hex32) -> StoreResult<()> {
        self.execute(
            "write id tombstone",
            "INSERT INTO tomb_ids (id, deleter) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&id.0.to_vec(), &deleter.0.to_vec()],
        )?;
        if let Some(deleters) = self.known.get_mut().deleters.get_mut(id) {
            if !deleters.contains(deleter) {
                deleters.push(*deleter);
            }
        }
        Ok(())
    }

    fn put_address_tombstone(&mut self, address: &Address, until: u64) -> StoreResult<()> {
        self.execute(
            "write address tombstone",
            "INSERT INTO tomb_addrs (addr, kind, pubkey, d, until) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (addr) DO UPDATE SET until = GREATEST(tomb_addrs.until, EXCLUDED.until)",
            &[
                &address.key,
                &i32::from(address.kind),
                &address.owner.0.to_vec(),
                &address.d,
                &ts(until),
            ],
        )?;
        if let Some(known) = self
            .known
            .get_mut()
            .address_tombstones
            .get_mut(&address.key)
        {
            *known = Some(known.map_or(until, |u| u.max(until)));
        }
        Ok(())
    }

    fn apply_state(&mut self, changes: StateChanges) -> StoreResult<()> {
        let cache = self.state_cache.get_mut();
        for (key, value) in &changes {
            cache.insert(key.clone(), value.clone());
        }
        self.io.block_on(state::apply(&self.client, changes))?
    }

    fn purge_expired(&mut self, now: u64, max: usize) -> StoreResult<(u64, bool)> {
        self.send_pending()?;
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let removed = self.execute(
            "purge expired events",
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)",
            &[&ts(now), &max],
        )?;
        if removed > 0 {
            // Which of the known ids went is not said: forget them all (they are read again).
            *self.known.get_mut() = Known::default();
        }
        Ok((removed, removed >= max as u64))
    }

    fn last_seq(&self) -> StoreResult<u64> {
        Ok(self.last_seq.max(0) as u64)
    }

    fn events_after(&self, after: u64, max: usize) -> StoreResult<Vec<(u64, Event)>> {
        self.send_pending()?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.query(
            "read events by seq",
            "SELECT seq, json FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after, &max],
        )?
        .iter()
        .map(|row| {
            let json: String = row.get(1);
            let ev: Event = serde_json::from_str(&json)
                .map_err(|e| StoreError::Corrupt(format!("event JSON: {e}")))?;
            Ok((row.get::<_, i64>(0).max(0) as u64, ev))
        })
        .collect()
    }

    fn set_audience(&mut self, ev: &Event, audience: &Audience) -> StoreResult<()> {
        let keys = audience.key_bytes();
        let mut pending = self.pending.borrow_mut();
        match pending.events.get_mut(&ev.id) {
            Some(p) => p.audience = keys,
            None => {
                pending.audiences.insert(ev.id, keys);
            }
        }
        Ok(())
    }

    /// Four reads for the whole batch instead of several per event: which ids are stored,
    /// their tombstones, and the versions and tombstones of their addresses.
    fn prefetch(&mut self, events: &[&Event]) -> StoreResult<()> {
        let ids: Vec<Vec<u8>> = events.iter().map(|ev| ev.id.0.to_vec()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mut known = Known::default();
        for ev in events {
            known.stored.insert(ev.id, false);
            known.deleters.insert(ev.id, Vec::new());
        }
        for row in self.query(
            "look up event ids",
            "SELECT id FROM events WHERE id = ANY($1)",
            &[&ids],
        )? {
            known.stored.insert(hex32(row.get(0), "event id")?, true);
        }
        for row in self.query(
            "read id tombstones",
            "SELECT id, deleter FROM tomb_ids WHERE id = ANY($1)",
            &[&ids],
        )? {
            let id = hex32(row.get(0), "tombstone id")?;
            let deleter = hex32(row.get(1), &format!("tombstone for {id}"))?;
            known.deleters.entry(id).or_default().push(deleter);
        }
        let addresses: Vec<Vec<u8>> = events
            .iter()
            .filter_map(|ev| Address::of(ev).map(|a| a.key))
            .collect();
        if !addresses.is_empty() {
            for key in &addresses {
                known.versions.insert(key.clone(), None);
                known.address_tombstones.insert(key.clone(), None);
            }
            for row in self.query(
                "look up addresses",
                "SELECT addr, created_at, id FROM events WHERE addr = ANY($1)",
                &[&addresses],
            )? {
                let id = hex32(row.get(2), "event id of an address")?;
                known
                    .versions
                    .insert(row.get(0), Some((from_ts(row.get(1)), id)));
            }
            for row in self.query(
                "look up address tombstones",
                "SELECT addr, until FROM tomb_addrs WHERE addr = ANY($1)",
                &[&addresses],
            )? {
                known
                    .address_tombstones
                    .insert(row.get(0), Some(from_ts(row.get(1))));
            }
        }
        *self.known.get_mut() = known;
        Ok(())
    }

    fn flush(&mut self) -> StoreResult<()> {
        self.send_pending()
    }
}
