//! Several instances on one database: the single-writer semantics the rules rely on (read the
//! state, then write it) hold across instances, commit sequence numbers have no gaps, and
//! instances starting at once against an empty database migrate it once.
//!
//! Needs `DATABASE_URL`; without it every test says it was skipped.

mod pg;

use mls_proto::Event;
use mls_store::{
    Admission, Admitted, EventStore, Publisher, Rejection, StateWrite, StoreError, WriteOutcome,
};
use std::sync::Arc;

/// Rules with a read-then-write on shared state, the shape of the gateway's claims, group
/// registry and roster order:
/// - `["claim", x]`: accepted only if nobody claimed `x` yet;
/// - `["seq", g, n]`: accepted only if `n` is exactly one more than the last accepted `n` of `g`.
struct RaceRules;

impl Admission for RaceRules {
    fn admit(
        &self,
        ev: &Event,
        _: &Publisher,
        _: u64,
        state: &mut dyn StateWrite,
    ) -> Result<Admitted, Rejection> {
        let fail = |e: StoreError| Rejection(format!("error: {e}"));
        let accepted = Admitted {
            expires_at: None,
            store: true,
        };
        for t in &ev.tags {
            match t.first().map(String::as_str) {
                Some("claim") => {
                    let key = format!("claim/{}", t[1]);
                    if state.get(key.as_bytes()).map_err(fail)?.is_some() {
                        return Err(Rejection("restricted: already claimed".into()));
                    }
                    state
                        .put(key.as_bytes(), ev.pubkey.to_hex().as_bytes())
                        .map_err(fail)?;
                }
                Some("seq") => {
                    let key = format!("seq/{}", t[1]);
                    let n: u64 = t[2].parse().unwrap();
                    let last: u64 = state
                        .get(key.as_bytes())
                        .map_err(fail)?
                        .map(|v| String::from_utf8(v).unwrap().parse().unwrap())
                        .unwrap_or(0);
                    if n != last + 1 {
                        return Err(Rejection(format!("invalid: seq {n} after {last}")));
                    }
                    state
                        .put(key.as_bytes(), n.to_string().as_bytes())
                        .map_err(fail)?;
                }
                _ => {}
            }
        }
        Ok(accepted)
    }
}

fn keys() -> secp256k1::Keypair {
    secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

fn ev(k: &secp256k1::Keypair, tags: &[&[&str]], content: &str) -> Event {
    let tags = tags
        .iter()
        .map(|t| t.iter().map(|s| s.to_string()).collect())
        .collect();
    Event::sign(k, mls_proto::unix_now(), 1, tags, content)
}

/// Writes `events[i]` to `stores[i % 2]`, all at once; returns the outcomes in order.
async fn race(
    stores: &[Arc<mls_store_postgres::PostgresStore>; 2],
    events: Vec<Event>,
) -> Vec<WriteOutcome> {
    let tasks: Vec<_> = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move { store.write(e, Publisher::default()).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().expect("write"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_never_both_win_a_claim() {
    let Some(schema) = pg::Schema::new() else {
        return;
    };
    let stores = [
        schema.store(Arc::new(RaceRules)).await,
        schema.store(Arc::new(RaceRules)).await,
    ];
    for round in 0..20 {
        // Ten contenders for one claim, half on each instance.
        let events: Vec<Event> = (0..10)
            .map(|i| {
                ev(
                    &keys(),
                    &[&["claim", &format!("kp{round}")]],
                    &i.to_string(),
                )
            })
            .collect();
        let outcomes = race(&stores, events).await;
        let won = outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Accepted)
            .count();
        assert_eq!(won, 1, "round {round}: {outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_keep_a_sequence_strictly_ordered() {
    let Some(schema) = pg::Schema::new() else {
        return;
    };
    let stores = [
        schema.store(Arc::new(RaceRules)).await,
        schema.store(Arc::new(RaceRules)).await,
    ];
    let k = keys();
    for n in 1..=20u64 {
        // Both instances offer the same next `seq` (different events) at once.
        let events: Vec<Event> = (0..6)
            .map(|i| ev(&k, &[&["seq", "g", &n.to_string()]], &format!("{n}-{i}")))
            .collect();
        let outcomes = race(&stores, events).await;
        let won = outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Accepted)
            .count();
        assert_eq!(won, 1, "seq {n}: {outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commit_sequence_has_no_gaps_across_instances() {
    let Some(schema) = pg::Schema::new() else {
        return;
    };
    let stores = [
        schema.store(Arc::new(RaceRules)).await,
        schema.store(Arc::new(RaceRules)).await,
    ];
    let events: Vec<Event> = (0..300).map(|i| ev(&keys(), &[], &i.to_string())).collect();
    let outcomes = race(&stores, events).await;
    assert!(outcomes.iter().all(|o| *o == WriteOutcome::Accepted));
    let seqs: Vec<i64> = schema
        .query("SELECT seq FROM events ORDER BY seq")
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_at_once_migrate_once() {
    let Some(schema) = pg::Schema::new() else {
        return;
    };
    let opening: Vec<_> = (0..6)
        .map(|_| {
            let options = schema.options();
            tokio::spawn(async move {
                mls_store_postgres::PostgresStore::open(
                    options,
                    Arc::new(mls_store::AcceptAll),
                    Some(std::time::Duration::from_secs(10)),
                )
                .await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opening {
        stores.push(o.await.unwrap().expect("open while others open"));
    }
    let versions = schema
        .query("SELECT version, count(*) FROM schema_migrations GROUP BY version")
        .await;
    // Every version this build knows (1: the tables, 2: event audiences), each once.
    assert_eq!(versions.len(), 2);
    for v in &versions {
        assert_eq!(v.get::<_, i64>(1), 1, "migration applied once");
    }
    for s in &stores {
        s.health().await.unwrap();
    }
}
