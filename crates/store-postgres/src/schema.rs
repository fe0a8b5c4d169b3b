//! The schema, created and migrated by the relay itself.
//!
//! Migrations are numbered and applied in order, each once, recorded in `schema_migrations`.
//! They run in one transaction under an advisory lock, so several instances starting at once
//! against an empty database queue behind each other: the first applies, the others find the
//! versions recorded and apply nothing.
//!
//! Tables:
//! - `events`: one row per stored event, its JSON as first serialised (served as is), the
//!   columns queries filter on, `seq` (commit order), `addr` (address of a replaceable or
//!   addressable event, unique: the database itself keeps one version per address);
//! - `event_tags`: one row per single-letter tag (name, value capped or hashed, created_at,
//!   kind copied in), so `#x` filters walk an index newest first instead of a GIN that
//!   cannot return rows in order;
//! - `tomb_ids`, `tomb_addrs`: NIP-09 tombstones (an address tombstone keeps its kind, pubkey
//!   and `d` whole, so a backup can name it); `state`: the gateway's key/value state;
//! - `store_meta`: the last commit sequence number handed out;
//! - `event_audience` (version 2): one row per read key of each event's audience (see
//!   [`mls_store::audience`]), with kind, created_at and expires_at copied in, so a broad read
//!   walks, per read key its scope holds, an index newest first and never sees events out of
//!   its scope.

use tokio_postgres::Client;

/// Statements of each version, applied in order. Never edit one that shipped: add another.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE events (
    id          BYTEA PRIMARY KEY,
    seq         BIGINT NOT NULL,
    pubkey      BYTEA NOT NULL,
    kind        INTEGER NOT NULL,
    created_at  BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    expires_at  BIGINT,
    addr        BYTEA,
    json        TEXT NOT NULL
);
CREATE UNIQUE INDEX events_seq ON events (seq);
CREATE UNIQUE INDEX events_addr ON events (addr) WHERE addr IS NOT NULL;
CREATE INDEX events_created ON events (created_at DESC, id);
CREATE INDEX events_author ON events (pubkey, created_at DESC, id);
CREATE INDEX events_author_kind ON events (pubkey, kind, created_at DESC, id);
CREATE INDEX events_kind ON events (kind, created_at DESC, id);
CREATE INDEX events_expiry ON events (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE event_tags (
    event_id   BYTEA NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    value      BYTEA NOT NULL,
    kind       INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (event_id, name, value)
);
CREATE INDEX event_tags_value ON event_tags (name, value, created_at DESC, event_id);

CREATE TABLE tomb_ids (
    id      BYTEA NOT NULL,
    deleter BYTEA NOT NULL,
    PRIMARY KEY (id, deleter)
);
CREATE TABLE tomb_addrs (
    addr   BYTEA PRIMARY KEY,
    kind   INTEGER NOT NULL,
    pubkey BYTEA NOT NULL,
    d      TEXT NOT NULL,
    until  BIGINT NOT NULL
);

CREATE TABLE state (
    key   BYTEA PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE store_meta (
    one      BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    last_seq BIGINT NOT NULL
);
INSERT INTO store_meta (last_seq) VALUES (0);
"#,
    ),
    (
        2,
        // Events stored before audiences existed read as `ReadKey::Unknown` (0xff), which
        // every scope holds: the visibility rule alone decides them, as before.
        r#"
CREATE TABLE event_audience (
    event_id   BYTEA NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    key        BYTEA NOT NULL,
    kind       INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (event_id, key)
);
CREATE INDEX event_audience_key ON event_audience (key, created_at DESC, event_id);
CREATE INDEX event_audience_key_kind ON event_audience (key, kind, created_at DESC, event_id);
INSERT INTO event_audience (event_id, key, kind, created_at, expires_at)
    SELECT id, '\xff'::bytea, kind, created_at, expires_at FROM events;
"#,
    ),
];

/// The newest schema version this build knows.
pub(crate) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// Creates the schema (`name`, or the connection's default when `None`) and applies what is
/// missing. Returns the versions applied now.
pub(crate) async fn migrate(
    client: &mut Client,
    schema: Option<&str>,
    lock_key: i64,
) -> Result<Vec<i32>, String> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| format!("begin migration transaction: {e}"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key])
        .await
        .map_err(|e| format!("take the migration lock: {e}"))?;
    if let Some(schema) = schema {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {0}; SET LOCAL search_path TO {0}",
            quote_ident(schema)
        ))
        .await
        .map_err(|e| format!("create schema {schema}: {e}"))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(|e| format!("create schema_migrations: {e}"))?;
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(|e| format!("read schema_migrations: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(newest) = applied.iter().max().filter(|v| **v > latest()) {
        return Err(format!(
            "the database has schema version {newest}, this build knows up to {}: \
             run a newer build",
            latest()
        ));
    }
    let mut now_applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| format!("schema migration {version}: {e}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(|e| format!("record schema migration {version}: {e}"))?;
        now_applied.push(*version);
    }
    tx.commit()
        .await
        .map_err(|e| format!("commit schema migrations: {e}"))?;
    Ok(now_applied)
}

/// `name` as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
