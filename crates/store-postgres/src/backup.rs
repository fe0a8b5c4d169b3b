//! Backups: everything the store holds, read from one snapshot (a REPEATABLE READ, READ ONLY
//! transaction) through server-side cursors, so one sort serves the whole walk and memory
//! stays at one page whatever the store's size. Restores run in the writer
//! ([`mls_store::write_txn`]).

use crate::keys::hex32;
use crate::pg_error;
use crate::query::Row;
use deadpool_postgres::{Object, Pool};
use mls_store::{BackupItem, StoreError, StoreResult, Tombstone};
use tokio::sync::mpsc;

/// Rows fetched per round trip.
const PAGE: usize = 1000;

/// Sends every item, in the interface's order, until done, an error (sent last), or the
/// receiver is gone (the caller stopped early).
pub(crate) async fn produce(pool: Pool, out: mpsc::Sender<StoreResult<BackupItem>>) {
    if let Err(e) = snapshot(&pool, &out).await {
        let _ = out.send(Err(e)).await;
    }
}

async fn snapshot(pool: &Pool, out: &mpsc::Sender<StoreResult<BackupItem>>) -> StoreResult<()> {
    let client = pool.get().await.map_err(pg_error("database connection"))?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(pg_error("begin backup transaction"))?;
    let walked = walk(&client, out).await;
    // Read only: nothing to commit. A connection that cannot end its transaction is closed.
    if client.batch_execute("ROLLBACK").await.is_err() {
        drop(Object::take(client));
    }
    walked
}

type Convert = fn(&tokio_postgres::Row) -> StoreResult<BackupItem>;

async fn walk(client: &Object, out: &mpsc::Sender<StoreResult<BackupItem>>) -> StoreResult<()> {
    let parts: [(&str, Convert); 4] = [
        (
            // Oldest first, ties lowest id first.
            "SELECT e.id, e.created_at, e.received_at, e.expires_at, e.json FROM events e \
             ORDER BY e.created_at, e.id",
            |r| Ok(BackupItem::Event(Row::from_pg(r).into_stored()?)),
        ),
        ("SELECT key, value FROM state ORDER BY key", |r| {
            Ok(BackupItem::State {
                key: r.get(0),
                value: r.get(1),
            })
        }),
        (
            "SELECT id, deleter FROM tomb_ids ORDER BY id, deleter",
            |r| {
                Ok(BackupItem::Tombstone(Tombstone::Id {
                    id: hex32(r.get(0), "tombstone id")?,
                    deleter: hex32(r.get(1), "tombstone deleter")?,
                }))
            },
        ),
        (
            "SELECT kind, pubkey, d, until FROM tomb_addrs ORDER BY addr",
            |r| {
                Ok(BackupItem::Tombstone(Tombstone::Address {
                    kind: u16::try_from(r.get::<_, i32>(0))
                        .map_err(|_| StoreError::Corrupt("address tombstone kind".into()))?,
                    pubkey: hex32(r.get(1), "address tombstone pubkey")?,
                    d: r.get(2),
                    until: crate::keys::from_ts(r.get(3)),
                }))
            },
        ),
    ];
    for (sql, convert) in parts {
        client
            .batch_execute(&format!("DECLARE backup_walk NO SCROLL CURSOR FOR {sql}"))
            .await
            .map_err(pg_error("backup"))?;
        loop {
            let rows = client
                .query(&format!("FETCH {PAGE} FROM backup_walk"), &[])
                .await
                .map_err(pg_error("backup"))?;
            for row in &rows {
                if out.send(Ok(convert(row)?)).await.is_err() {
                    return Ok(()); // the caller stopped
                }
            }
            if rows.len() < PAGE {
                break;
            }
        }
        client
            .batch_execute("CLOSE backup_walk")
            .await
            .map_err(pg_error("backup"))?;
    }
    Ok(())
}
