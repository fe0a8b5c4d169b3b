//! Event audiences in PostgreSQL (schema version 2): a database written before them keeps
//! serving its events after the migration, decided by the visibility rule alone, while new
//! events are kept to their readers by the query itself.
//!
//! Needs `DATABASE_URL`; without it every test says it was skipped.

mod pg;

use mls_proto::{Event, Filter, Hex32};
use mls_store::{
    Admission, Admitted, Audience, EventStore, Publisher, ReadBounds, ReadKey, ReadScope,
    Rejection, StateRead, StateWrite, WriteOutcome,
};
use std::sync::Arc;

/// Every event is for the pubkey in its `p` tag alone.
struct ForItsP;

impl Admission for ForItsP {
    fn admit(
        &self,
        _: &Event,
        _: &Publisher,
        _: u64,
        _: &mut dyn StateWrite,
    ) -> Result<Admitted, Rejection> {
        Ok(Admitted {
            expires_at: None,
            store: true,
        })
    }

    fn audience(&self, ev: &Event, _: &dyn StateRead) -> Audience {
        Audience::new(
            ev.tag_values("p")
                .filter_map(Hex32::from_hex)
                .map(ReadKey::Pubkey)
                .collect(),
        )
    }
}

fn keys() -> secp256k1::Keypair {
    secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

fn for_p(author: &secp256k1::Keypair, p: &Hex32, created_at: u64) -> Event {
    let tags = vec![vec!["p".to_string(), p.to_hex()]];
    Event::sign(author, created_at, 1059, tags, "wrap")
}

async fn ids(store: &dyn EventStore, scope: &ReadScope) -> Vec<Hex32> {
    let filters = [
        Filter::default(),
        Filter::from_value(&serde_json::json!({"kinds": [1059]})).unwrap(),
    ];
    let mut answers = Vec::new();
    for f in filters {
        let found = store
            .query(
                &[f],
                ReadBounds::unbounded(100),
                mls_proto::unix_now(),
                scope,
                &|_, _| true,
            )
            .await
            .expect("query");
        let mut ids: Vec<Hex32> = found.value.iter().map(|s| s.event.id).collect();
        ids.sort();
        answers.push(ids);
    }
    assert_eq!(answers[0], answers[1], "by kind answers like no filter");
    answers.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_audiences_stay_readable_after_the_migration() {
    let Some(schema) = pg::Schema::new() else {
        return;
    };
    let (author, reader, stranger) = (keys(), keys(), keys());
    let reader_pk = Hex32(reader.x_only_public_key().0.serialize());
    let t = mls_proto::unix_now() - 100;
    let store = schema.store(Arc::new(ForItsP)).await;
    let mut old: Vec<Hex32> = Vec::new();
    for i in 0..3 {
        let e = for_p(&author, &reader_pk, t + i);
        assert_eq!(
            store.write(e.clone(), Publisher::default()).await.unwrap(),
            WriteOutcome::Accepted
        );
        old.push(e.id);
    }
    old.sort();
    store.close();
    drop(store);
    // The database as a build before audiences left it: schema version 1 only.
    schema.query("DROP TABLE event_audience").await;
    schema
        .query("DELETE FROM schema_migrations WHERE version = 2")
        .await;

    let store = schema.store(Arc::new(ForItsP)).await;
    let stranger_scope = ReadScope::holding(
        vec![ReadKey::Pubkey(Hex32(
            stranger.x_only_public_key().0.serialize(),
        ))],
        false,
    );
    // Old events: in every scope, for the visibility rule to decide.
    assert_eq!(
        ids(&*store, &stranger_scope).await,
        old,
        "old events, stranger's scope"
    );
    // A new one is kept to its reader by the query.
    let new = for_p(&author, &reader_pk, t + 10);
    store
        .write(new.clone(), Publisher::default())
        .await
        .unwrap();
    assert_eq!(
        ids(&*store, &stranger_scope).await,
        old,
        "the new event is not the stranger's"
    );
    let reader_scope = ReadScope::holding(vec![ReadKey::Pubkey(reader_pk)], false);
    let mut all = old.clone();
    all.push(new.id);
    all.sort();
    assert_eq!(ids(&*store, &reader_scope).await, all, "the reader's scope");
    let versions = schema
        .query("SELECT count(*) FROM schema_migrations WHERE version = 2")
        .await;
    assert_eq!(versions[0].get::<_, i64>(0), 1, "migration 2 applied once");
}

/// Figures, not a check: a stranger's `{"limit":10}` and `{"kinds":[1059],"limit":10}` over
/// 100,000 gift wraps to others (its own 10 among the oldest), kept to its scope by the query,
/// against the visibility predicate alone under the relay's default candidate bound.
///
/// `cargo test --release -p mls-store-postgres --test audience -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures"]
async fn figures_hidden_reads() {
    let Some(schema) = pg::Schema::new() else {
        return;
    };
    let n: u64 = std::env::var("HIDDEN_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let store = schema.store(Arc::new(ForItsP)).await;
    let (author, stranger) = (keys(), keys());
    let stranger_pk = Hex32(stranger.x_only_public_key().0.serialize());
    let t = mls_proto::unix_now() - n - 10;
    let started = std::time::Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2000) {
        let writes = chunk.iter().map(|&i| {
            let to = if i < 10 {
                stranger_pk
            } else {
                Hex32(keys().x_only_public_key().0.serialize())
            };
            store.write(for_p(&author, &to, t + i), Publisher::default())
        });
        for w in futures_util::future::join_all(writes).await {
            assert_eq!(w.unwrap(), WriteOutcome::Accepted);
        }
    }
    println!("filled {n} wraps in {:?}", started.elapsed());
    schema.query("ANALYZE").await;
    let scope = ReadScope::holding(vec![ReadKey::Pubkey(stranger_pk)], false);
    let bounds = ReadBounds {
        max_limit: 500,
        max_candidates: 10_000,
    };
    let stranger_hex = stranger_pk.to_hex();
    let mine = move |e: &Event, _: &dyn StateRead| e.tag_values("p").any(|p| p == stranger_hex);
    for shape in [
        serde_json::json!({"limit": 10}),
        serde_json::json!({"kinds": [1059], "limit": 10}),
    ] {
        let f = Filter::from_value(&shape).unwrap();
        for (name, scope, visible) in [
            ("in scope", &scope, &mine as mls_store::Visible<'_>),
            ("predicate only", &ReadScope::everything(), &mine),
        ] {
            let mut times = Vec::new();
            let mut last = None;
            for _ in 0..20 {
                let s = std::time::Instant::now();
                let found = store
                    .query(
                        std::slice::from_ref(&f),
                        bounds,
                        mls_proto::unix_now(),
                        scope,
                        visible,
                    )
                    .await
                    .unwrap();
                times.push(s.elapsed());
                last = Some((found.value.len(), found.complete));
            }
            times.sort();
            println!(
                "{shape} {name}: median {:?}, min {:?}, max {:?}; found {:?} (events, complete)",
                times[10],
                times[0],
                times[19],
                last.unwrap()
            );
        }
    }
    // The plan of the broad read in scope.
    let key = hex::encode(ReadKey::Pubkey(stranger_pk).to_bytes());
    let plan = schema
        .query(&format!(
            "EXPLAIN ANALYZE SELECT e.id FROM unnest(ARRAY['\\x{key}'::bytea, '\\x00'::bytea, '\\xff'::bytea]) AS k (key) \
             CROSS JOIN LATERAL (SELECT a.event_id, a.created_at FROM event_audience a WHERE a.key = k.key \
             ORDER BY a.created_at DESC, a.event_id LIMIT 13) a JOIN events e ON e.id = a.event_id \
             ORDER BY a.created_at DESC, a.event_id LIMIT 13"
        ))
        .await;
    for row in plan {
        println!("  {}", row.get::<_, String>(0));
    }
}
