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

use crate::keys::{self, from_ts, ts};
use crate::{state, Io};
use deadpool_postgres::{Object, Pool};
use mls_proto::{Event, Hex32};
use mls_store::address::Address;
use mls_store::audience::Audience;
use mls_store::overlay::StateChanges;
use mls_store::write_txn::WriteTxn;
use mls_store::writer::WriteBackend;
use mls_store::{StateRead, StoreError, StoreResult};
use std::sync::Arc;

/// Opens the writer's transactions.
pub(crate) struct Backend {
    pub io: Arc<Io>,
    pub pool: Pool,
    /// The advisory lock every instance's writer takes (one per schema).
    pub lock_key: i64,
}

/// One batch's transaction, on a connection of its own.
pub(crate) struct Txn<'a> {
    io: &'a Io,
    client: Object,
    /// The last `seq` handed out, this transaction's included; written back at commit.
    last_seq: i64,
    seq_before: i64,
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
            }),
            Err(e) => {
                discard(io, client);
                Err(e)
            }
        }
    }

    fn commit(&self, txn: Txn<'_>) -> Result<(), String> {
        let Txn {
            io,
            client,
            last_seq,
            seq_before,
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

const INSERT_EVENT: &str = "INSERT INTO events \
    (id, seq, pubkey, kind, created_at, received_at, expires_at, addr, json) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const INSERT_AUDIENCE: &str = "INSERT INTO event_audience \
    (event_id, key, kind, created_at, expires_at) \
    SELECT $1, k, $3, $4, $5 FROM unnest($2::bytea[]) AS k";
const INSERT_TAGS: &str = "INSERT INTO event_tags (event_id, name, value, kind, created_at) \
    SELECT $1, t.name, t.value, $4, $5 FROM unnest($2::text[], $3::bytea[]) AS t (name, value)";

impl Txn<'_> {
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
        // The writer thread is not a runtime worker: it may block on the store's runtime.
        self.io
            .block_on(state::get_on(&self.client, key.to_vec()))?
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        self.scan_prefix_from(prefix, prefix, f)
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
        Ok(!self
            .query(
                "look up event id",
                "SELECT 1 FROM events WHERE id = $1",
                &[&id.0.to_vec()],
            )?
            .is_empty())
    }

    fn load(&self, id: &Hex32) -> StoreResult<Option<Event>> {
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
        let rows = self.query(
            "look up address",
            "SELECT created_at, id FROM events WHERE addr = $1",
            &[&address.key],
        )?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let id: Vec<u8> = row.get(1);
        let id = <[u8; 32]>::try_from(id.as_slice())
            .map_err(|_| StoreError::Corrupt("event id of an address".into()))?;
        Ok(Some((from_ts(row.get(0)), Hex32(id))))
    }

    fn address_deleted_until(&self, address: &Address) -> StoreResult<Option<u64>> {
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
        self.query(
            "read id tombstones",
            "SELECT deleter FROM tomb_ids WHERE id = $1",
            &[&id.0.to_vec()],
        )?
        .iter()
        .map(|row| {
            let deleter: Vec<u8> = row.get(0);
            <[u8; 32]>::try_from(deleter.as_slice())
                .map(Hex32)
                .map_err(|_| StoreError::Corrupt(format!("tombstone for {id}")))
        })
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
        let id = ev.id.0.to_vec();
        let kind = i32::from(ev.kind);
        let created_at = ts(ev.created_at);
        self.execute(
            "insert event",
            INSERT_EVENT,
            &[
                &id,
                &seq,
                &ev.pubkey.0.to_vec(),
                &kind,
                &created_at,
                &ts(received_at),
                &expires_at.map(ts),
                &Address::of(ev).map(|a| a.key),
                &ev.to_json(),
            ],
        )?;
        let audience = audience.key_bytes();
        if !audience.is_empty() {
            self.execute(
                "insert event audience",
                INSERT_AUDIENCE,
                &[&id, &audience, &kind, &created_at, &expires_at.map(ts)],
            )?;
        }
        let tags = keys::indexed_tags(ev);
        if !tags.is_empty() {
            let (names, values): (Vec<String>, Vec<Vec<u8>>) = tags.into_iter().unzip();
            self.execute(
                "insert event tags",
                INSERT_TAGS,
                &[&id, &names, &values, &kind, &created_at],
            )?;
        }
        // Taken only once stored: a failed insert hands out nothing.
        self.last_seq = seq;
        Ok(())
    }

    /// Its tags and audience go with it (ON DELETE CASCADE).
    fn remove(&mut self, id: &Hex32) -> StoreResult<bool> {
        Ok(self.execute(
            "delete event",
            "DELETE FROM events WHERE id = $1",
            &[&id.0.to_vec()],
        )? > 0)
    }

    fn put_id_tombstone(&mut self, id: &Hex32, deleter: &Hex32) -> StoreResult<()> {
        self.execute(
            "write id tombstone",
            "INSERT INTO tomb_ids (id, deleter) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&id.0.to_vec(), &deleter.0.to_vec()],
        )?;
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
        Ok(())
    }

    fn apply_state(&mut self, changes: StateChanges) -> StoreResult<()> {
        self.io.block_on(state::apply(&self.client, changes))?
    }

    fn purge_expired(&mut self, now: u64, max: usize) -> StoreResult<(u64, bool)> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        let removed = self.execute(
            "purge expired events",
            "DELETE FROM events WHERE id IN \
             (SELECT id FROM events WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)",
            &[&ts(now), &max],
        )?;
        Ok((removed, removed >= max as u64))
    }

    fn last_seq(&self) -> StoreResult<u64> {
        Ok(self.last_seq.max(0) as u64)
    }

    fn events_after(&self, after: u64, max: usize) -> StoreResult<Vec<(u64, Event)>> {
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
        let id = ev.id.0.to_vec();
        self.execute(
            "clear event audience",
            "DELETE FROM event_audience WHERE event_id = $1",
            &[&id],
        )?;
        let keys = audience.key_bytes();
        if keys.is_empty() {
            return Ok(());
        }
        // Kind, time and expiry come from the event's own row.
        self.execute(
            "write event audience",
            "INSERT INTO event_audience (event_id, key, kind, created_at, expires_at) \
             SELECT e.id, k, e.kind, e.created_at, e.expires_at \
             FROM events e, unnest($2::bytea[]) AS k WHERE e.id = $1",
            &[&id, &keys],
        )?;
        Ok(())
    }
}
