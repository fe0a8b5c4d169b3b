//! Reads: REQ queries, COUNT and export.
//!
//! A filter becomes one SQL statement ordered `created_at DESC, id` (the order of the
//! `events_*` indexes and of NIP-01 results) and cut by `LIMIT`; its tag conditions go
//! through `event_tags`. The read's scope (see [`mls_store::audience`]) is part of the
//! statement: a broad filter (no ids, authors or tags) walks `event_audience` under each read
//! key the scope holds (and each kind), newest first, so events out of scope are never
//! fetched; a narrow one gets an `EXISTS` on `event_audience`. The visibility rule is then
//! the final check in Rust, so rows are fetched a page at a time (keyset pagination on
//! `(created_at, id)`) until the filter's `limit` of visible events is reached or the rows
//! run out.

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

/// A read scope as SQL uses it: the read keys held, as stored, and whether every group's key
/// is held too (group keys begin with [`mls_store::audience::GROUP_KEY_PREFIX`]).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub keys: Vec<Vec<u8>>,
    pub any_group: bool,
}

impl Scope {
    /// `None` for a scope that holds everything.
    pub fn of(scope: &mls_store::ReadScope) -> Option<Scope> {
        Some(Scope {
            keys: scope
                .keys()?
                .iter()
                .map(mls_store::ReadKey::to_bytes)
                .collect(),
            any_group: scope.any_group(),
        })
    }
}

/// Most (read key, kind) pairs a broad read walks one index range each; more fall back to
/// the `EXISTS` form.
const MAX_PAIRS: usize = 1024;

/// Does `filter` name nothing narrower than kinds (no ids, authors or indexed tags)?
fn is_broad(filter: &Filter) -> bool {
    filter.ids.is_none()
        && filter.authors.is_none()
        && !filter.tags.keys().any(|l| l.is_ascii_alphabetic())
}

/// One page of rows matching `filter` (as far as SQL can tell) and not expired at `now`,
/// newest first (ties: lowest id first), after `cursor`.
pub(crate) async fn page(
    pool: Pool,
    deadline: Duration,
    filter: Filter,
    now: u64,
    scope: Option<Scope>,
    cursor: Cursor,
    size: i64,
) -> StoreResult<Vec<Row>> {
    if let Some(scope) = &scope {
        let pairs = scope.keys.len() * filter.kinds.as_ref().map_or(1, Vec::len);
        if is_broad(&filter) && !scope.any_group && pairs <= MAX_PAIRS {
            return audience_page(&pool, deadline, &filter, now, scope, cursor, size).await;
        }
    }
    let mut params: Vec<Param> = Vec::new();
    let mut arg = |p: Param| {
        params.push(p);
        format!("${}", params.len())
    };
    let mut conds = vec![format!(
        "(e.expires_at IS NULL OR e.expires_at > {})",
        arg(Box::new(ts(now)))
    )];
    // One tag value (`#h` of one group, `#p` of one recipient): the walk starts from
    // `event_tags_value`, in its order, so it stops at `LIMIT` however many events carry
    // the tag; `t.created_at` is the event's own.
    let mut indexed_tags = filter.tags.iter().filter(|(l, _)| l.is_ascii_alphabetic());
    let single_tag = match (indexed_tags.next(), indexed_tags.next()) {
        (Some((letter, values)), None) if values.len() == 1 => Some((*letter, &values[0])),
        _ => None,
    };
    let (from, order) = match single_tag {
        Some((letter, value)) => {
            conds.push(format!(
                "t.name = {} AND t.value = {}",
                arg(Box::new(letter.to_string())),
                arg(Box::new(keys::tag_value(value)))
            ));
            (
                "event_tags t JOIN events e ON e.id = t.event_id",
                ("t.created_at", "t.event_id"),
            )
        }
        None => ("events e", ("e.created_at", "e.id")),
    };
    if let Some(ids) = &filter.ids {
        let ids: Vec<Vec<u8>> = ids.iter().map(|i| i.0.to_vec()).collect();
        conds.push(one_of("e.id", ids, &mut arg));
    }
    // Several authors (a follow list) and nothing narrower: one walk of `events_author` per
    // author, newest first, each cut at the limit, merged (below); `= ANY` would fetch every
    // event of every author and sort them.
    let mut per_author = None;
    if let Some(authors) = &filter.authors {
        let authors: Vec<Vec<u8>> = authors.iter().map(|a| a.0.to_vec()).collect();
        if authors.len() > 1 && filter.ids.is_none() && single_tag.is_none() {
            per_author = Some(arg(Box::new(authors)));
            conds.push("e.pubkey = p.pubkey".to_string());
        } else {
            conds.push(one_of("e.pubkey", authors, &mut arg));
        }
    }
    if let Some(kinds) = &filter.kinds {
        let kinds: Vec<i32> = kinds.iter().map(|k| i32::from(*k)).collect();
        conds.push(one_of("e.kind", kinds, &mut arg));
    }
    if let Some(since) = filter.since {
        conds.push(format!("e.created_at >= {}", arg(Box::new(ts(since)))));
    }
    if let Some(until) = filter.until {
        conds.push(format!("e.created_at <= {}", arg(Box::new(ts(until)))));
    }
    // Only single letters are indexed (NIP-01); other tag conditions are checked in Rust.
    let other_tags = filter
        .tags
        .iter()
        .filter(|(l, _)| l.is_ascii_alphabetic() && single_tag.is_none());
    for (letter, values) in other_tags {
        let values: Vec<Vec<u8>> = values.iter().map(|v| keys::tag_value(v)).collect();
        conds.push(format!(
            "e.id IN (SELECT t.event_id FROM event_tags t WHERE t.name = {} AND t.value = ANY({}))",
            arg(Box::new(letter.to_string())),
            arg(Box::new(values))
        ));
    }
    if let Some(scope) = scope {
        conds.push(format!(
            "EXISTS (SELECT 1 FROM event_audience a WHERE a.event_id = e.id \
             AND (a.key = ANY({}) OR ({} AND get_byte(a.key, 0) = {})))",
            arg(Box::new(scope.keys)),
            arg(Box::new(scope.any_group)),
            mls_store::audience::GROUP_KEY_PREFIX
        ));
    }
    let (time, id_column) = order;
    if let Some((created_at, id)) = cursor {
        let c = arg(Box::new(created_at));
        conds.push(format!(
            "({time} < {c} OR ({time} = {c} AND {id_column} > {}))",
            arg(Box::new(id))
        ));
    }
    let limit = arg(Box::new(size));
    let sql = match per_author {
        None => format!(
            "SELECT {COLUMNS} FROM {from} WHERE {} ORDER BY {time} DESC, {id_column} LIMIT {limit}",
            conds.join(" AND ")
        ),
        Some(authors) => format!(
            "SELECT {COLUMNS} FROM unnest({authors}::bytea[]) AS p (pubkey) CROSS JOIN LATERAL \
             (SELECT {COLUMNS} FROM events e WHERE {} \
              ORDER BY e.created_at DESC, e.id LIMIT {limit}) e \
             ORDER BY e.created_at DESC, e.id LIMIT {limit}",
            conds.join(" AND ")
        ),
    };
    fetch(&pool, deadline, sql, params).await
}

/// `column` equal to one of `values`. A single value is written as `=`: PostgreSQL walks
/// an index such as `(pubkey, created_at DESC)` in order and stops at `LIMIT` for `=`, while
/// for `= ANY(…)` it fetches every match and sorts (1,000 rows for one busy author).
fn one_of<T: ToSql + Sync + Send + 'static>(
    column: &str,
    mut values: Vec<T>,
    arg: &mut impl FnMut(Param) -> String,
) -> String {
    if values.len() == 1 {
        let value = values.pop().expect("one value");
        format!("{column} = {}", arg(Box::new(value)))
    } else {
        format!("{column} = ANY({})", arg(Box::new(values)))
    }
}

/// One page of a broad filter (kinds at most) in `scope`: for each read key held (and each
/// kind asked for), the newest `size` rows of that `event_audience` index range, merged
/// newest first and cut to `size`. Every condition of a broad filter is inside each range
/// (kind, time bounds, expiry, the cursor), so the merge is exact; an event under two held
/// keys comes twice, next to itself.
async fn audience_page(
    pool: &Pool,
    deadline: Duration,
    filter: &Filter,
    now: u64,
    scope: &Scope,
    cursor: Cursor,
    size: i64,
) -> StoreResult<Vec<Row>> {
    let mut params: Vec<Param> = Vec::new();
    let mut arg = |p: Param| {
        params.push(p);
        format!("${}", params.len())
    };
    let (ranges, by_kind) = match &filter.kinds {
        None => (
            format!(
                "unnest({}::bytea[]) AS k (key)",
                arg(Box::new(scope.keys.clone()))
            ),
            "",
        ),
        Some(kinds) => {
            let (keys, kinds): (Vec<Vec<u8>>, Vec<i32>) = scope
                .keys
                .iter()
                .flat_map(|key| kinds.iter().map(move |k| (key.clone(), i32::from(*k))))
                .unzip();
            (
                format!(
                    "unnest({}::bytea[], {}::int[]) AS k (key, kind)",
                    arg(Box::new(keys)),
                    arg(Box::new(kinds))
                ),
                " AND a.kind = k.kind",
            )
        }
    };
    let mut conds = vec![
        format!("a.key = k.key{by_kind}"),
        format!(
            "(a.expires_at IS NULL OR a.expires_at > {})",
            arg(Box::new(ts(now)))
        ),
    ];
    if let Some(since) = filter.since {
        conds.push(format!("a.created_at >= {}", arg(Box::new(ts(since)))));
    }
    if let Some(until) = filter.until {
        conds.push(format!("a.created_at <= {}", arg(Box::new(ts(until)))));
    }
    if let Some((created_at, id)) = cursor {
        let c = arg(Box::new(created_at));
        conds.push(format!(
            "(a.created_at < {c} OR (a.created_at = {c} AND a.event_id > {}))",
            arg(Box::new(id))
        ));
    }
    let limit = arg(Box::new(size));
    let sql = format!(
        "SELECT {COLUMNS} FROM {ranges} CROSS JOIN LATERAL \
         (SELECT a.event_id, a.created_at FROM event_audience a WHERE {} \
          ORDER BY a.created_at DESC, a.event_id LIMIT {limit}) a \
         JOIN events e ON e.id = a.event_id \
         ORDER BY a.created_at DESC, a.event_id LIMIT {limit}",
        conds.join(" AND ")
    );
    fetch(pool, deadline, sql, params).await
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

/// Stored events with `seq > after`, in seq order, at most `limit` (the commit stream's
/// catch-up read; `events_seq` serves it).
pub(crate) async fn since(
    pool: Pool,
    deadline: Duration,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<mls_store::Sequenced>> {
    let rows = crate::on_pooled(&pool, deadline, move |client| {
        Box::pin(async move {
            let sql = format!(
                "SELECT {COLUMNS}, e.seq FROM events e WHERE e.seq > $1 ORDER BY e.seq LIMIT $2"
            );
            let stmt = client
                .prepare_cached(&sql)
                .await
                .map_err(pg_error("read commit stream"))?;
            client
                .query(&stmt, &[&after, &limit])
                .await
                .map_err(pg_error("read commit stream"))
        })
    })
    .await?;
    rows.iter()
        .map(|r| {
            let seq: i64 = r.get(5);
            Ok(mls_store::Sequenced {
                seq: seq as u64,
                event: Row::from_pg(r).into_stored()?,
            })
        })
        .collect()
}

/// The cursor after `row`.
pub(crate) fn cursor_after(row: &Row) -> Cursor {
    Some((row.created_at, row.id.clone()))
}
