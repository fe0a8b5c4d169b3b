//! The storage conformance suite run against the embedded (LMDB) backend, plus the
//! embedded-only behaviours (close, throughput figure).

use mls_store::conformance as suite;
use mls_store::conformance_tests;

use mls_proto::Event;
use mls_store::embedded::{EmbeddedOptions, EmbeddedStore};
use mls_store::{AcceptAll, Admission, EventStore, Publisher, StoreError, WriteOutcome};
use std::sync::Arc;
use std::time::Instant;
use suite::Harness;

/// An embedded store in a fresh temporary directory.
struct Embedded {
    dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Self {
        Embedded {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }
}

#[async_trait::async_trait]
impl Harness for Embedded {
    async fn open(&self, rules: Arc<dyn Admission>) -> Arc<dyn EventStore> {
        let options = EmbeddedOptions {
            map_size: 1 << 30,
            ..EmbeddedOptions::default()
        };
        EmbeddedStore::open(&self.dir.path().join("db"), options, rules).expect("open store")
    }

    async fn close(&self, store: Arc<dyn EventStore>) {
        // Dropping the last reference closes the store (drains the writer, closes LMDB).
        assert_eq!(Arc::strong_count(&store), 1, "store still shared");
        drop(store);
    }

    async fn open_other(&self, rules: Arc<dyn Admission>) -> Arc<dyn EventStore> {
        let options = EmbeddedOptions {
            map_size: 1 << 30,
            ..EmbeddedOptions::default()
        };
        EmbeddedStore::open(&self.dir.path().join("other"), options, rules).expect("open store")
    }
}

conformance_tests!(Embedded::new());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_drains_then_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(AcceptAll)).unwrap();
    let k = suite::keys();
    let queued: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            let e = suite::ev(&k, i, 1, &[], "");
            tokio::spawn(async move { store.write(e, Publisher::default()).await })
        })
        .collect();
    tokio::task::yield_now().await;
    store.close();
    // Everything that got in before close was committed and answered.
    for task in queued {
        match task.await.unwrap() {
            Ok(outcome) => assert_eq!(outcome, WriteOutcome::Accepted),
            Err(e) => assert!(matches!(e, StoreError::Closed), "{e}"),
        }
    }
    let late = store
        .write(suite::ev(&k, 99, 1, &[], ""), Publisher::default())
        .await;
    assert!(matches!(late, Err(StoreError::Closed)));
    store.health().await.unwrap();
}

/// Not an assertion: prints the group-commit write rate.
/// `cargo test -p mls-store --release -- --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_concurrent_writes() {
    let n: usize = std::env::var("THROUGHPUT_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            2_000
        } else {
            10_000
        });
    let dir = tempfile::tempdir().unwrap();
    let store =
        EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), Arc::new(AcceptAll)).unwrap();
    let authors: Vec<_> = (0..50).map(|_| suite::keys()).collect();
    let events: Vec<Event> = (0..n)
        .map(|i| {
            let group = format!("group{}", i % 100);
            suite::ev(
                &authors[i % authors.len()],
                1_700_000_000 + i as u64,
                445,
                &[
                    &["h", &group],
                    &[
                        "p",
                        &authors[(i + 1) % 50].x_only_public_key().0.to_string(),
                    ],
                ],
                &"x".repeat(300),
            )
        })
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = events
        .into_iter()
        .map(|e| {
            let store = store.clone();
            tokio::spawn(async move { store.write(e, Publisher::default()).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), WriteOutcome::Accepted);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "throughput: {n} concurrent writes in {secs:.2}s = {:.0} events/s (durable group commit)",
        n as f64 / secs
    );
}
