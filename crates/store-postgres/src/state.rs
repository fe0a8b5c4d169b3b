//! The gateway's key/value state (table `state`) behind the synchronous [`StateRead`] the
//! rules and the visibility rule use: a read view through the pool for queries and REST
//! ([`PoolState`]), the writer's transaction for the rules (`writer::Txn`, with
//! [`mls_store::overlay::Overlay`] on top), and the application of accepted changes.
//!
//! Both wait for the database from a thread that may block (see [`crate::Io::wait`]).

use crate::keys::prefix_end;
use crate::{pg_error, Io};
use deadpool_postgres::{Object, Pool};
use mls_store::overlay::StateChanges;
use mls_store::{StateRead, StoreResult};
use std::collections::HashMap;
use std::sync::Mutex;

/// Longest state key accepted (every backend's limit, so the gateway sees one rule).
const MAX_KEY: usize = mls_store::MAX_STATE_KEY_LEN;
/// Rows fetched per round trip of a prefix scan.
const SCAN_PAGE: i64 = 256;

const GET: &str = "SELECT value FROM state WHERE key = $1";
const SCAN: &str =
    "SELECT key, value FROM state WHERE key >= $1 AND key < $2 ORDER BY key LIMIT $3";
const SCAN_OPEN: &str = "SELECT key, value FROM state WHERE key >= $1 ORDER BY key LIMIT $2";
// Keys are unique within one change set (a map), so one upsert cannot touch a row twice.
const PUT: &str = "INSERT INTO state (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value";
const DELETE: &str = "DELETE FROM state WHERE key = ANY($1)";

type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Up to [`SCAN_PAGE`] rows of `[from, end)` in key order, on `client`.
pub(crate) async fn scan_page(
    client: &Object,
    from: Vec<u8>,
    end: Option<Vec<u8>>,
) -> StoreResult<Rows> {
    let rows = match &end {
        Some(end) => {
            let stmt = client
                .prepare_cached(SCAN)
                .await
                .map_err(pg_error("scan state"))?;
            client.query(&stmt, &[&from, end, &SCAN_PAGE]).await
        }
        None => {
            let stmt = client
                .prepare_cached(SCAN_OPEN)
                .await
                .map_err(pg_error("scan state"))?;
            client.query(&stmt, &[&from, &SCAN_PAGE]).await
        }
    }
    .map_err(pg_error("scan state"))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub(crate) async fn get_on(client: &Object, key: Vec<u8>) -> StoreResult<Option<Vec<u8>>> {
    let stmt = client
        .prepare_cached(GET)
        .await
        .map_err(pg_error("read state key"))?;
    Ok(client
        .query_opt(&stmt, &[&key])
        .await
        .map_err(pg_error("read state key"))?
        .map(|r| r.get(0)))
}

/// Walks `prefix` in key order from the first key `>= from` over the stored rows, fetched a
/// page at a time by `page` (from an inclusive start key to an exclusive end), until `f`
/// returns false.
pub(crate) fn scan_paged(
    prefix: &[u8],
    from: &[u8],
    page: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>) -> StoreResult<Rows>,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> StoreResult<()> {
    let end = prefix_end(prefix);
    let mut next_from = from.max(prefix).to_vec();
    loop {
        let rows = page(next_from, end.clone())?;
        let full = rows.len() as i64 == SCAN_PAGE;
        let Some(last) = rows.last().map(|(k, _)| k.clone()) else {
            return Ok(());
        };
        for (k, v) in &rows {
            if !f(k, v) {
                return Ok(());
            }
        }
        if !full {
            return Ok(());
        }
        // The smallest key after the last one: the last key with a 0x00 appended.
        next_from = last;
        next_from.push(0);
    }
}

/// The committed state, read through the pool (what `visible` and `read_state` see). Keys
/// read once are remembered for the life of the view, so a query that checks the same group
/// for many events asks the database once.
pub(crate) struct PoolState<'a> {
    pub io: &'a Io,
    pub pool: &'a Pool,
    cache: Mutex<HashMap<Vec<u8>, Option<Vec<u8>>>>,
}

impl<'a> PoolState<'a> {
    pub fn new(io: &'a Io, pool: &'a Pool) -> Self {
        PoolState {
            io,
            pool,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl StateRead for PoolState<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if key.is_empty() || key.len() > MAX_KEY {
            return Ok(None);
        }
        if let Some(v) = crate::lock(&self.cache).get(key) {
            return Ok(v.clone());
        }
        let (pool, deadline) = (self.pool.clone(), self.io.deadline);
        let k = key.to_vec();
        let value = self.io.wait(async move {
            crate::on_pooled(&pool, deadline, move |client| Box::pin(get_on(client, k))).await
        })?;
        crate::lock(&self.cache).insert(key.to_vec(), value.clone());
        Ok(value)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let mut page = |start: Vec<u8>, end: Option<Vec<u8>>| {
            let (pool, deadline) = (self.pool.clone(), self.io.deadline);
            self.io.wait(async move {
                crate::on_pooled(&pool, deadline, move |client| {
                    Box::pin(scan_page(client, start, end))
                })
                .await
            })
        };
        scan_paged(prefix, from, &mut page, f)
    }
}

/// Writes buffered changes into the writer's transaction: one statement for the puts and
/// one for the deletes, whatever their number (a purge chunk deletes thousands of keys).
pub(crate) async fn apply(client: &Object, changes: StateChanges) -> StoreResult<()> {
    let mut put_keys = Vec::new();
    let mut put_values = Vec::new();
    let mut deletes = Vec::new();
    for (k, v) in changes {
        match v {
            Some(v) => {
                put_keys.push(k);
                put_values.push(v);
            }
            None => deletes.push(k),
        }
    }
    if !deletes.is_empty() {
        let stmt = client
            .prepare_cached(DELETE)
            .await
            .map_err(pg_error("delete state keys"))?;
        client
            .execute(&stmt, &[&deletes])
            .await
            .map_err(pg_error("delete state keys"))?;
    }
    if !put_keys.is_empty() {
        let stmt = client
            .prepare_cached(PUT)
            .await
            .map_err(pg_error("write state keys"))?;
        client
            .execute(&stmt, &[&put_keys, &put_values])
            .await
            .map_err(pg_error("write state keys"))?;
    }
    Ok(())
}
