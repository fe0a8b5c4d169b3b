//! Reads: REQ queries, COUNT and export.
//!
//! A filter becomes one SQL statement ordered `created_at DESC, id` (the order of the
//! `events_*` indexes and of NIP-01 results) and cut by `LIMIT`; its tag conditions go
//! through `event_tags`. Visibility is still a closure of the caller's, so rows are fetched a
//! page at a time (keyset pagination on `(created_at, id)`) and checked until the filter's
//! `limit` of visible events is reached or the rows run out.

use crate::keys::{self, from_ts, ts};
use crate::pg_error;
use deadpool_postgres::Pool;
use mls_proto::{Event, Filter};
use mls_store::{StoreError, StoreResult, StoredEvent};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::ToSql;

type Param = Box<dyn ToSql + Sync + Send>;

/// Where a page starts: after the row `(created_at, id)` in the walk's order.
pub(crate) type Cursor = Option<(i64, Vec<u8>)>;

/// A fetched row, JSON not yet parsed.
pub(crate) struct Row {
    pub id: Vec<u8>,
    pub created_at: i64,
    pub received_at: i64,
    pub expires_at: Option<i64>,
    pub json: String,
}

impl Row {
    pub fn from_pg(r: &tokio_postgres::Row) -> Row {
        Row {
            id: r.get(0),
            created_at: r.get(1),
            received_at: r.get(2),
            expires_at: r.get(3),
            json: r.get(4),
        }
    }

    /// The stored event, if it matches `filter` and has not expired at `now` (the SQL
    /// conditions already say so; this re-check keeps the promise for what SQL cannot
    /// express: tags that are not single letters, hashed long tag values).
    pub fn into_matching(self, filter: &Filter, now: u64) -> StoreResult<Option<StoredEvent>> {
        let stored = self.into_stored()?;
        let ev = &stored.event;
        if !filter.matches(ev)
            || stored.expires_at.is_some_and(|t| t <= now)
            || ev.expiration().is_some_and(|t| t <= now)
        {
            return Ok(None);
        }
        Ok(Some(stored))
    }

    pub fn into_stored(self) -> StoreResult<StoredEvent> {
        let event: Event = serde_json::from_str(&self.json).map_err(|e| {
            StoreError::Corrupt(format!("{}: event JSON: {e}", hex::encode(&self.id)))
        })?;
        Ok(StoredEvent {
            event,
            json: Arc::from(self.json),
            received_at: from_ts(self.received_at),
            expires_at: self.expires_at.map(from_ts),
        })
    }
}

const COLUMNS: &str = "e.id, e.created_at, e.received_at, e.expires_at, e.json";

/// One page of rows matching `filter` (as far as SQL can tell) and not expired at `now`,
/// newest first (ties: lowest id first), after `cursor`.
pub(crate) async fn page(
    pool: Pool,
    deadline: Duration,
    filter: Filter,
    now: u64,
    cursor: Cursor,
    size: i64,
) -> StoreResult<Vec<Row>> {
    let mut params: Vec<Param> = Vec::new();
    let mut arg = |p: Param| {
        params.push(p);
        format!("${}", params.len())
    };
    let mut conds = vec![format!(
        "(e.expires_at IS NULL OR e.expires_at > {})",
        arg(Box::new(ts(now)))
    )];
    if let Some(ids) = &filter.ids {
        let ids: Vec<Vec<u8>> = ids.iter().map(|i| i.0.to_vec()).collect();
        conds.push(format!("e.id = ANY({})", arg(Box::new(ids))));
    }
    if let Some(authors) = &filter.authors {
        let authors: Vec<Vec<u8>> = authors.iter().map(|a| a.0.to_vec()).collect();
        conds.push(format!("e.pubkey = ANY({})", arg(Box::new(authors))));
    }
    if let Some(kinds) = &filter.kinds {
        let kinds: Vec<i32> = kinds.iter().map(|k| i32::from(*k)).collect();
        conds.push(format!("e.kind = ANY({})", arg(Box::new(kinds))));
    }
    if let Some(since) = filter.since {
        conds.push(format!("e.created_at >= {}", arg(Box::new(ts(since)))));
    }
    if let Some(until) = filter.until {
        conds.push(format!("e.created_at <= {}", arg(Box::new(ts(until)))));
    }
    // Only single letters are indexed (NIP-01); other tag conditions are checked in Rust.
    for (letter, values) in filter.tags.iter().filter(|(l, _)| l.is_ascii_alphabetic()) {
        let values: Vec<Vec<u8>> = values.iter().map(|v| keys::tag_value(v)).collect();
        conds.push(format!(
            "e.id IN (SELECT t.event_id FROM event_tags t WHERE t.name = {} AND t.value = ANY({}))",
            arg(Box::new(letter.to_string())),
            arg(Box::new(values))
        ));
    }
    if let Some((created_at, id)) = cursor {
        let c = arg(Box::new(created_at));
        conds.push(format!(
            "(e.created_at < {c} OR (e.created_at = {c} AND e.id > {}))",
            arg(Box::new(id))
        ));
    }
    let sql = format!(
        "SELECT {COLUMNS} FROM events e WHERE {} ORDER BY e.created_at DESC, e.id LIMIT {}",
        conds.join(" AND "),
        arg(Box::new(size))
    );
    fetch(&pool, deadline, sql, params).await
}

/// One page of every stored event, oldest first (ties: highest id first, the embedded
/// store's export order), after `cursor`.
pub(crate) async fn export_page(
    pool: Pool,
    deadline: Duration,
    cursor: Cursor,
    size: i64,
) -> StoreResult<Vec<Row>> {
    match cursor {
        None => {
            let sql =
                format!("SELECT {COLUMNS} FROM events e ORDER BY e.created_at, e.id DESC LIMIT $1");
            fetch(&pool, deadline, sql, vec![Box::new(size)]).await
        }
        Some((created_at, id)) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM events e \
                 WHERE e.created_at > $1 OR (e.created_at = $1 AND e.id < $2) \
                 ORDER BY e.created_at, e.id DESC LIMIT $3"
            );
            let params: Vec<Param> = vec![Box::new(created_at), Box::new(id), Box::new(size)];
            fetch(&pool, deadline, sql, params).await
        }
    }
}

async fn fetch(
    pool: &Pool,
    deadline: Duration,
    sql: String,
    params: Vec<Param>,
) -> StoreResult<Vec<Row>> {
    crate::on_pooled(pool, deadline, move |client| {
        Box::pin(async move {
            let stmt = client
                .prepare_cached(&sql)
                .await
                .map_err(pg_error("query"))?;
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = client
                .query(&stmt, &refs)
                .await
                .map_err(pg_error("query"))?;
            Ok(rows.iter().map(Row::from_pg).collect())
        })
    })
    .await
}

/// The cursor after `row`.
pub(crate) fn cursor_after(row: &Row) -> Cursor {
    Some((row.created_at, row.id.clone()))
}
