//! Microbenchmarks of the embedded (LMDB) store: a batch of N concurrent `write()`s (one group
//! commit with its fsync, as under load; also with ingest-like random ids and keys), the typical REQ queries (by kind, by author, by
//! `#h` tag, each `limit` 10) on a pre-filled store, and a stranger's broad reads over a store
//! of gift wraps to others (kept to its scope by the audience index, against the visibility
//! predicate alone under the relay's default candidate bound).
//!
//! `cargo bench -p mls-store` (divan). The store lives in a temporary directory on the same
//! disk as the relay's data; write figures include the fsync of every commit.

use divan::{black_box, Bencher};
use mls_proto::{Event, Filter, Hex32, Hex64};
use mls_store::embedded::{EmbeddedOptions, EmbeddedStore};
use mls_store::{AcceptAll, EventStore, Publisher, WriteOutcome};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn main() {
    divan::Divan::default()
        .max_time(Duration::from_secs(1))
        .sample_count(20)
        .config_with_args()
        .main();
}

/// `cargo test --all-targets` runs every benchmark once: keep the pre-filled store small then.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

const NOW: u64 = 1_700_000_000;
const AUTHORS: u64 = 1000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hex32(n: u64, salt: u8) -> Hex32 {
    let mut b = [salt; 32];
    b[..8].copy_from_slice(&n.to_be_bytes());
    Hex32(b)
}

fn group(g: u64) -> String {
    format!("{g:064x}")
}

/// Event `n` of the data set: alternately a kind-445 message of one of `n/200` groups and a
/// kind-1 note, from 1000 authors, one second apart. The store does not verify signatures,
/// so ids are unique counters and signatures zero (the bytes stored are the same size).
fn event(n: u64, groups: u64) -> Event {
    let (kind, tags) = if n.is_multiple_of(2) {
        (
            445,
            vec![
                vec!["h".to_owned(), group((n / 2) % groups)],
                vec!["encoding".to_owned(), "base64".to_owned()],
            ],
        )
    } else {
        (1, vec![vec!["t".to_owned(), "bench".to_owned()]])
    };
    Event {
        id: hex32(n, 0xee),
        pubkey: hex32(n % AUTHORS, 0xaa),
        created_at: NOW + n,
        kind,
        tags,
        content: "A".repeat(512),
        sig: Hex64([0; 64]),
    }
}

fn open(dir: &std::path::Path) -> Arc<EmbeddedStore> {
    EmbeddedStore::open(dir, EmbeddedOptions::default(), Arc::new(AcceptAll)).unwrap()
}

async fn write_all(store: &Arc<EmbeddedStore>, events: Vec<Event>) {
    let writes = events
        .into_iter()
        .map(|ev| store.write(ev, Publisher::default()));
    for outcome in futures_util::future::join_all(writes).await {
        assert_eq!(outcome.unwrap(), WriteOutcome::Accepted);
    }
}

/// N concurrent writes of new events: they share one or a few group commits. Time per batch;
/// divide by N for the cost per event.
#[divan::bench(args = [1, 100, 1000])]
fn write_batch(bencher: Bencher, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rt = runtime();
    static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .with_inputs(|| {
            let start = NEXT.fetch_add(n as u64, Ordering::Relaxed);
            (start..start + n as u64)
                .map(|i| event(i, 1000))
                .collect::<Vec<_>>()
        })
        .bench_local_values(|events| rt.block_on(write_all(&store, events)));
}

/// A pseudo-random 32 bytes from `n` (splitmix64), as unlike its neighbours as a sha256 id or
/// a fresh key is.
fn scattered(n: u64, salt: u64) -> Hex32 {
    let mut b = [0u8; 32];
    let mut x = n ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in b.chunks_mut(8) {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        chunk.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
    }
    Hex32(b)
}

/// A kind-445 as the relay ingests them: random id, a fresh key each, one of 8 groups, 5,000
/// per `created_at` second (ties ordered by id, so index inserts land anywhere in the second).
fn ingest_event(n: u64) -> Event {
    Event {
        id: scattered(n, 1),
        pubkey: scattered(n, 2),
        created_at: NOW + n / 5000,
        kind: 445,
        tags: vec![
            vec!["h".to_owned(), group(n % 8)],
            vec!["encoding".to_owned(), "base64".to_owned()],
        ],
        content: "A".repeat(512),
        sig: Hex64([0; 64]),
    }
}

/// N concurrent writes of ingest-like 445s (random ids and keys) into a store already holding
/// 20,000 of them (200 under `cargo test`): the page writes per event of a group commit, as
/// under load. Time per batch; divide by N for the cost per event.
#[divan::bench(args = [1, 10, 100, 1000])]
fn write_batch_ingest(bencher: Bencher, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rt = runtime();
    let prefill: u64 = if bench_mode() { 20_000 } else { 200 };
    for chunk in (0..prefill).collect::<Vec<_>>().chunks(1000) {
        rt.block_on(write_all(
            &store,
            chunk.iter().map(|&i| ingest_event(i)).collect(),
        ));
    }
    let next = AtomicU64::new(prefill);
    bencher
        .counter(divan::counter::ItemsCount::new(n))
        .with_inputs(|| {
            let start = next.fetch_add(n as u64, Ordering::Relaxed);
            (start..start + n as u64)
                .map(ingest_event)
                .collect::<Vec<_>>()
        })
        .bench_local_values(|events| rt.block_on(write_all(&store, events)));
}

struct Filled {
    _dir: tempfile::TempDir,
    store: Arc<EmbeddedStore>,
    groups: u64,
}

/// A store of 100k events (1k under `cargo test`), filled once for all query benches.
fn filled() -> &'static Filled {
    static FILLED: OnceLock<Filled> = OnceLock::new();
    FILLED.get_or_init(|| {
        let n: u64 = if bench_mode() { 100_000 } else { 1_000 };
        let groups = (n / 200).max(1);
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let rt = runtime();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let events = chunk.iter().map(|&i| event(i, groups)).collect();
            rt.block_on(write_all(&store, events));
        }
        Filled {
            _dir: dir,
            store,
            groups,
        }
    })
}

fn query(bencher: Bencher, make: impl Fn(u64, &Filled) -> serde_json::Value) {
    let f = filled();
    let rt = runtime();
    let everyone = |_: &Event, _: &dyn mls_store::StateRead| true;
    let mut i = 0u64;
    bencher.bench_local(|| {
        i += 1;
        let filter = Filter::from_value(&make(i, f)).unwrap();
        let found = rt
            .block_on(f.store.query(
                &[filter],
                mls_store::ReadBounds::unbounded(500),
                NOW,
                &mls_store::ReadScope::everything(),
                &everyone,
            ))
            .unwrap()
            .value;
        // The small store of `cargo test` has fewer than 10 events per author.
        assert!(found.len() == 10 || (!bench_mode() && !found.is_empty()));
        black_box(found)
    });
}

/// `{"kinds":[1],"limit":10}`: the newest notes.
#[divan::bench]
fn query_kind_limit_10(bencher: Bencher) {
    query(bencher, |_, _| serde_json::json!({"kinds":[1],"limit":10}));
}

/// `{"authors":[A],"limit":10}` over 1000 authors.
#[divan::bench]
fn query_author_limit_10(bencher: Bencher) {
    query(
        bencher,
        |i, _| serde_json::json!({"authors":[hex32(i % AUTHORS, 0xaa)],"limit":10}),
    );
}

/// `{"kinds":[445],"#h":[G],"limit":10}`: one group's latest messages.
#[divan::bench]
fn query_group_tag_limit_10(bencher: Bencher) {
    query(
        bencher,
        |i, f| serde_json::json!({"kinds":[445],"#h":[group(i % f.groups)],"limit":10}),
    );
}

/// `{"kinds":[1],"limit":10}` from a task of a multi-thread runtime, as the relay runs it:
/// `inline` is the store's own call (a read this small runs on the task's thread);
/// `handed_off` wraps the same call in `block_in_place`, as every read was before (the
/// worker's queue moves to another thread and back), to show what that hand-off costs.
mod query_in_runtime {
    use super::*;

    fn run(bencher: Bencher, hand_off: bool) {
        let f = filled();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        bencher.bench_local(|| {
            // On a worker, as one REQ is handled on its connection's task.
            let task = rt.spawn(async move {
                let filter =
                    Filter::from_value(&serde_json::json!({"kinds":[1],"limit":10})).unwrap();
                let everyone = |_: &Event, _: &dyn mls_store::StateRead| true;
                let everything = mls_store::ReadScope::everything();
                let read = f.store.query(
                    std::slice::from_ref(&filter),
                    mls_store::ReadBounds::unbounded(500),
                    NOW,
                    &everything,
                    &everyone,
                );
                let found = if hand_off {
                    let handle = tokio::runtime::Handle::current();
                    tokio::task::block_in_place(|| handle.block_on(read))
                } else {
                    read.await
                };
                found.unwrap().value.len()
            });
            black_box(rt.block_on(task).unwrap())
        });
    }

    #[divan::bench]
    fn inline(bencher: Bencher) {
        run(bencher, false);
    }

    #[divan::bench]
    fn handed_off(bencher: Bencher) {
        run(bencher, true);
    }
}

/// Every event is for the pubkey in its `p` tag alone (the shape of a gift wrap's audience).
struct ForItsP;

impl mls_store::Admission for ForItsP {
    fn admit(
        &self,
        _: &Event,
        _: &Publisher,
        _: u64,
        _: &mut dyn mls_store::StateWrite,
    ) -> Result<mls_store::Admitted, mls_store::Rejection> {
        Ok(mls_store::Admitted {
            expires_at: None,
            store: true,
        })
    }

    fn audience(&self, ev: &Event, _: &dyn mls_store::StateRead) -> mls_store::Audience {
        mls_store::Audience::new(
            ev.tag_values("p")
                .filter_map(Hex32::from_hex)
                .map(mls_store::ReadKey::Pubkey)
                .collect(),
        )
    }
}

/// 100k kind-1059 wraps (1k under `cargo test`), each to a recipient of its own, and the
/// stranger's own 10 wraps among the oldest.
fn hidden() -> &'static (tempfile::TempDir, Arc<EmbeddedStore>) {
    static HIDDEN: OnceLock<(tempfile::TempDir, Arc<EmbeddedStore>)> = OnceLock::new();
    HIDDEN.get_or_init(|| {
        let n: u64 = if bench_mode() { 100_000 } else { 1_000 };
        let dir = tempfile::tempdir().unwrap();
        let store =
            EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(ForItsP)).unwrap();
        let rt = runtime();
        let wrap = |i: u64, to: Hex32| Event {
            id: hex32(i, 0xdd),
            pubkey: hex32(i, 0xbb),
            created_at: NOW + i,
            kind: 1059,
            tags: vec![vec!["p".to_owned(), to.to_hex()]],
            content: "A".repeat(512),
            sig: Hex64([0; 64]),
        };
        for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
            let events = chunk
                .iter()
                .map(|&i| wrap(i, if i < 10 { STRANGER } else { hex32(i, 0xcc) }))
                .collect();
            rt.block_on(write_all(&store, events));
        }
        (dir, store)
    })
}

const STRANGER: Hex32 = Hex32([0x5a; 32]);

/// The stranger's `{"limit":10}` (and `{"kinds":[1059],"limit":10}`): its own 10 wraps,
/// found through the audience index under its read keys, whatever else is stored.
#[divan::bench(args = ["{}", "kinds"])]
fn hidden_read_in_scope(bencher: Bencher, shape: &str) {
    let store = &hidden().1;
    let rt = runtime();
    let filter = broad(shape);
    let scope = mls_store::ReadScope::holding(vec![mls_store::ReadKey::Pubkey(STRANGER)], false);
    let everyone = |_: &Event, _: &dyn mls_store::StateRead| true;
    bencher.bench_local(|| {
        let found = rt
            .block_on(store.query(
                std::slice::from_ref(&filter),
                mls_store::ReadBounds {
                    max_limit: 500,
                    max_candidates: 10_000,
                },
                NOW,
                &scope,
                &everyone,
            ))
            .unwrap();
        assert!(found.complete && found.value.len() == 10);
        black_box(found)
    });
}

/// The same read with the visibility predicate alone (no scope): it examines candidates up to
/// the relay's default bound (`max_query_candidates` 10,000) and stops incomplete.
#[divan::bench(args = ["{}", "kinds"])]
fn hidden_read_predicate_only(bencher: Bencher, shape: &str) {
    let store = &hidden().1;
    let rt = runtime();
    let filter = broad(shape);
    let stranger = STRANGER.to_hex();
    let mine =
        move |e: &Event, _: &dyn mls_store::StateRead| e.tag_values("p").any(|p| p == stranger);
    bencher.bench_local(|| {
        let found = rt
            .block_on(store.query(
                std::slice::from_ref(&filter),
                mls_store::ReadBounds {
                    max_limit: 500,
                    max_candidates: 10_000,
                },
                NOW,
                &mls_store::ReadScope::everything(),
                &mine,
            ))
            .unwrap();
        black_box(found)
    });
}

fn broad(shape: &str) -> Filter {
    Filter::from_value(&match shape {
        "kinds" => serde_json::json!({"kinds": [1059], "limit": 10}),
        _ => serde_json::json!({"limit": 10}),
    })
    .unwrap()
}
