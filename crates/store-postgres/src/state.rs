//! The gateway's key/value state (table `state`) behind the synchronous [`StateRead`] /
//! [`StateWrite`] the rules use: a read view for queries and REST, and a buffering overlay
//! for the rules inside the writer's transaction.
//!
//! Both wait for the database from a thread that may block (see [`crate::Io::wait`]).

use crate::keys::prefix_end;
use crate::{pg_error, Io};
use deadpool_postgres::{Object, Pool};
use mls_store::{StateRead, StateWrite, StoreError, StoreResult};
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
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
async fn scan_page(client: &Object, from: Vec<u8>, end: Option<Vec<u8>>) -> StoreResult<Rows> {
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

async fn get_on(client: &Object, key: Vec<u8>) -> StoreResult<Option<Vec<u8>>> {
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

/// Walks `prefix` in key order from the first key `>= from` over the stored rows (fetched a
/// page at a time by `page`, from an inclusive start key) with `buffer` laid on top (a
/// buffered `None` hides a stored key), until `f` returns false.
fn scan_merged(
    prefix: &[u8],
    from: &[u8],
    buffer: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    page: &mut dyn FnMut(Vec<u8>, Option<Vec<u8>>) -> StoreResult<Rows>,
    f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
) -> StoreResult<()> {
    let from = from.max(prefix);
    let end = prefix_end(prefix);
    let mut stored: std::vec::IntoIter<(Vec<u8>, Vec<u8>)> = Vec::new().into_iter();
    let mut next_from = Some(from.to_vec());
    let mut next_stored = || -> StoreResult<Option<(Vec<u8>, Vec<u8>)>> {
        if let Some(row) = stored.next() {
            return Ok(Some(row));
        }
        let Some(from) = next_from.take() else {
            return Ok(None);
        };
        let rows = page(from, end.clone())?;
        if rows.len() as i64 == SCAN_PAGE {
            // The smallest key after the last one: the last key with a 0x00 appended.
            let mut after = rows[rows.len() - 1].0.clone();
            after.push(0);
            next_from = Some(after);
        }
        stored = rows.into_iter();
        Ok(stored.next())
    };
    let mut buffered = buffer
        .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .peekable();
    let mut head = next_stored()?;
    loop {
        let take_buffered = match (&head, buffered.peek()) {
            (None, None) => return Ok(()),
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((sk, _)), Some((bk, _))) => bk.as_slice() <= sk.as_slice(),
        };
        if take_buffered {
            let Some((bk, bv)) = buffered.next() else {
                return Ok(());
            };
            if head.as_ref().is_some_and(|(sk, _)| sk == bk) {
                head = next_stored()?;
            }
            if let Some(v) = bv {
                if !f(bk, v) {
                    return Ok(());
                }
            }
        } else {
            let Some((sk, sv)) = head.take() else {
                return Ok(());
            };
            if !f(&sk, &sv) {
                return Ok(());
            }
            head = next_stored()?;
        }
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
            let (pool, deadline) = (self.pool.clone(), self.io.deadline);
            self.io.wait(async move {
                crate::on_pooled(&pool, deadline, move |client| {
                    Box::pin(scan_page(client, start, end))
                })
                .await
            })
        };
        scan_merged(prefix, from, &BTreeMap::new(), &mut page, f)
    }
}

/// What the rules write while deciding on one event: buffered in memory over the writer's
/// transaction (whose reads already see the batch's earlier writes), and applied only if the
/// rules accept. A refused event thus leaves no trace, while its batch-mates keep theirs.
pub(crate) struct Overlay<'t> {
    io: &'t Io,
    client: &'t Object,
    buffer: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'t> Overlay<'t> {
    pub fn new(io: &'t Io, client: &'t Object) -> Self {
        Overlay {
            io,
            client,
            buffer: BTreeMap::new(),
        }
    }

    pub fn into_changes(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.buffer
    }
}

/// Writes buffered changes into the writer's transaction: one statement for the puts and
/// one for the deletes, whatever their number (a purge chunk deletes thousands of keys).
pub(crate) async fn apply(
    client: &Object,
    changes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
) -> StoreResult<()> {
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

fn check_key(key: &[u8]) -> StoreResult<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(StoreError::Backend(format!(
            "state key must be 1 to {MAX_KEY} bytes, got {}",
            key.len()
        )));
    }
    Ok(())
}

impl StateRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if let Some(v) = self.buffer.get(key) {
            return Ok(v.clone());
        }
        if key.is_empty() || key.len() > MAX_KEY {
            return Ok(None);
        }
        // The writer thread is not a runtime worker: it may block on the store's runtime.
        self.io.block_on(get_on(self.client, key.to_vec()))?
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
            self.io.block_on(scan_page(self.client, start, end))?
        };
        scan_merged(prefix, from, &self.buffer, &mut page, f)
    }
}

impl StateWrite for Overlay<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        check_key(key)?;
        self.buffer.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> StoreResult<()> {
        check_key(key)?;
        self.buffer.insert(key.to_vec(), None);
        Ok(())
    }
}
