//! Figures for docs/PERFORMANCE.md, against the emulator: the store's write throughput and
//! commit latency (what an `OK` waits for), its REQ rate, and the round trips (RPCs) each event
//! costs — the figure that carries over to production, where each costs ~5–30 ms instead of
//! the emulator's. Ignored by default (it prints figures and asserts nothing about them):
//!
//! `FIRESTORE_EMULATOR_HOST=… cargo test --release -p mls-store-firestore --test bench -- --ignored --nocapture`
//!
//! Sizes: `MLS_BENCH_WRITERS` (64), `MLS_BENCH_EVENTS` (2000), `MLS_BENCH_STORED` (2000).

use mls_proto::Event;
use mls_store::conformance::{ev, filter, keys, now};
use mls_store::{AcceptAll, Admission, EventStore, Publisher, ReadBounds, WriteOutcome};
use mls_store_firestore::{FirestoreStore, RpcCounts};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod emulator;

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Writes `events` from `writers` concurrent tasks; returns (events/s, sorted latencies).
async fn ingest(
    store: Arc<dyn EventStore>,
    events: Vec<Event>,
    writers: usize,
) -> (f64, Vec<Duration>) {
    let events = Arc::new(std::sync::Mutex::new(events));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let (store, events) = (store.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let Some(e) = events.lock().unwrap().pop() else {
                    return lat;
                };
                let t = Instant::now();
                let got = store.write(e, Publisher::default()).await.expect("write");
                assert_eq!(got, WriteOutcome::Accepted);
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// RPCs per event between two counts.
fn per_event(before: RpcCounts, after: RpcCounts, events: usize) -> String {
    let n = events as f64;
    format!(
        "per event: {:.2} reads, {:.2} queries, {:.2} commits ({:.2} begins)",
        (after.get - before.get) as f64 / n,
        (after.query - before.query) as f64 / n,
        (after.commit - before.commit) as f64 / n,
        (after.begin - before.begin) as f64 / n,
    )
}

/// Kind-445 events of 256 B from 16 authors over 50 groups.
fn group_messages(n: usize, t: u64) -> Vec<Event> {
    let authors: Vec<_> = (0..16).map(|_| keys()).collect();
    (0..n)
        .map(|i| {
            let g = format!("{:064x}", i % 50);
            ev(
                &authors[i % authors.len()],
                t - (i as u64 % 3600),
                445,
                &[&["h", &g]],
                &"c".repeat(256),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn figures_with_the_gateway_rules() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let rules: Arc<dyn Admission> = Arc::new(
        mls_gateway_rules::Gateway::new(Default::default(), false).expect("default rules"),
    );
    let fs: Arc<FirestoreStore> = project.store(rules).await;
    let store: Arc<dyn EventStore> = fs.clone();
    let writers = size("MLS_BENCH_WRITERS", 64);
    let n = size("MLS_BENCH_EVENTS", 2000);
    let before = fs.rpc_counts();
    let (rate, lat) = ingest(store.clone(), group_messages(n, now()), writers).await;
    println!(
        "gateway rules, {writers} writers, {n} kind-445 events of 256 B in 50 groups: \
         {rate:.0} events/s, OK latency p50 {:.1} ms p99 {:.1} ms; {}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        per_event(before, fs.rpc_counts(), n)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints figures"]
async fn figures() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let fs: Arc<FirestoreStore> = project.store(Arc::new(AcceptAll)).await;
    let store: Arc<dyn EventStore> = fs.clone();
    let writers = size("MLS_BENCH_WRITERS", 64);
    let n = size("MLS_BENCH_EVENTS", 2000);
    let stored = size("MLS_BENCH_STORED", 2000);
    let t = now();

    // One writer at a time: the latency of one commit (BeginTransaction, reads, Commit).
    let k = keys();
    let single: Vec<Event> = (0..200)
        .map(|i| ev(&k, t - i, 445, &[&["h", "solo"]], "x"))
        .collect();
    let before = fs.rpc_counts();
    let (rate, lat) = ingest(store.clone(), single, 1).await;
    println!(
        "ingest, 1 writer: {rate:.0} events/s, OK latency p50 {:.2} ms p99 {:.2} ms; {}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        per_event(before, fs.rpc_counts(), 200)
    );

    // Many writers: group commit batches what is queued behind each commit.
    let authors: Vec<_> = (0..16).map(|_| keys()).collect();
    let events: Vec<Event> = (0..n)
        .map(|i| {
            let g = format!("g{}", i % 50);
            ev(
                &authors[i % authors.len()],
                t - (i as u64 % 3600),
                445,
                &[&["h", &g]],
                &"c".repeat(256),
            )
        })
        .collect();
    let before = fs.rpc_counts();
    let (rate, lat) = ingest(store.clone(), events, writers).await;
    println!(
        "ingest, {writers} writers, {n} kind-445 events of 256 B: {rate:.0} events/s, \
         OK latency p50 {:.1} ms p99 {:.1} ms; {}",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        per_event(before, fs.rpc_counts(), n)
    );

    // Top up to `stored` events, then REQs with limit 10 from 4 concurrent readers.
    let have = 200 + n;
    if stored > have {
        let more: Vec<Event> = (0..stored - have)
            .map(|i| ev(&authors[i % 16], t - 7200 - i as u64, 1, &[], "filler"))
            .collect();
        ingest(store.clone(), more, writers).await;
    }
    let total = have.max(stored);
    for (name, f) in [
        (
            "#h (one group), kind 445",
            serde_json::json!({"kinds": [445], "#h": ["g7"], "limit": 10}),
        ),
        (
            "authors (one)",
            serde_json::json!({"authors": [hex::encode(authors[3].x_only_public_key().0.serialize())], "limit": 10}),
        ),
    ] {
        let f = filter(f);
        let requests = 200;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (store, f) = (store.clone(), f.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let everyone: mls_store::Visible = &mls_store::conformance::everyone;
                for _ in 0..requests / 4 {
                    let t0 = Instant::now();
                    let got = store
                        .query(
                            std::slice::from_ref(&f),
                            ReadBounds::unbounded(500),
                            now(),
                            &mls_store::ReadScope::everything(),
                            everyone,
                        )
                        .await
                        .expect("query");
                    assert_eq!(got.value.len(), 10);
                    lat.push(t0.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
        lat.sort();
        println!(
            "REQ {name}, limit 10, over {total} events, 4 readers: {rate:.0} REQ/s, \
             p50 {:.1} ms p99 {:.1} ms",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
    }
}
