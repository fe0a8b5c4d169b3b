//! Several instances on one database: the single-writer semantics the rules rely on (read the
//! state, then write it) hold across instances, and commit sequence numbers have no gaps.
//! The instances' transactions really conflict on the emulator (it aborts the loser, which
//! runs again), so these also exercise the retries.
//!
//! Needs `FIRESTORE_EMULATOR_HOST`; without it every test says it was skipped.

mod emulator;

use mls_proto::Event;
use mls_store::{
    Admission, Admitted, EventStore, Publisher, Rejection, StateWrite, StoreError, WriteOutcome,
};
use mls_store_firestore::FirestoreStore;
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

/// Two instances on one project, patient with conflicts (the races below are all conflicts).
async fn two_instances(project: &emulator::Project) -> [Arc<FirestoreStore>; 2] {
    let open = || {
        let mut options = project.options();
        options.max_attempts = 50;
        project.open(options, Arc::new(RaceRules))
    };
    [open().await, open().await]
}

/// Writes `events[i]` to `stores[i % 2]`, all at once; returns the outcomes in order.
async fn race(stores: &[Arc<FirestoreStore>; 2], events: Vec<Event>) -> Vec<WriteOutcome> {
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
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let stores = two_instances(&project).await;
    for round in 0..10 {
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
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let stores = two_instances(&project).await;
    let k = keys();
    for n in 1..=10u64 {
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
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let stores = two_instances(&project).await;
    let events: Vec<Event> = (0..300).map(|i| ev(&keys(), &[], &i.to_string())).collect();
    let ids: std::collections::HashSet<String> = events.iter().map(|e| e.id.to_hex()).collect();
    let outcomes = race(&stores, events).await;
    assert!(outcomes.iter().all(|o| *o == WriteOutcome::Accepted));
    let read = stores[0].since(0, 1000).await.unwrap();
    let seqs: Vec<u64> = read.iter().map(|s| s.seq).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    let got: std::collections::HashSet<String> =
        read.iter().map(|s| s.event.event.id.to_hex()).collect();
    assert_eq!(got, ids);
}
