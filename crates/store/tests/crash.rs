//! Crash safety of the embedded store: an event whose `write()` returned `Accepted` survives
//! a SIGKILL at any moment.
//!
//! The test re-runs its own binary as a child (selected by an environment variable) that
//! writes events from many tasks at once and prints each id as soon as its write is
//! acknowledged. The parent kills the child mid-burst, reopens the store and looks every
//! printed id up.

use mls_proto::{Event, Filter, Hex32};
use mls_store::embedded::{EmbeddedOptions, EmbeddedStore};
use mls_store::{AcceptAll, EventStore, Publisher, WriteOutcome};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_DIR: &str = "MLS_STORE_CRASH_CHILD_DIR";
const TEST_NAME: &str = "sigkill_mid_burst_loses_no_accepted_event";

fn options() -> EmbeddedOptions {
    EmbeddedOptions {
        map_size: 1 << 30,
        ..EmbeddedOptions::default()
    }
}

#[test]
fn sigkill_mid_burst_loses_no_accepted_event() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut all_accepted: Vec<Hex32> = Vec::new();
    // Kill at different depths of the burst: early, in the middle, late.
    for kill_after in [50usize, 700, 2500] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut accepted = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("ACCEPTED ") {
                accepted.push(Hex32::from_hex(id).expect("hex id"));
                if accepted.len() >= kill_after {
                    break;
                }
            }
        }
        child.kill().expect("SIGKILL the child");
        child.wait().unwrap();
        // Acknowledgements printed before the kill are still in the pipe.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(id) = line.strip_prefix("ACCEPTED ") {
                if let Some(id) = Hex32::from_hex(id) {
                    accepted.push(id);
                }
            }
        }
        assert!(accepted.len() >= kill_after, "child stopped early");
        all_accepted.extend(accepted);
        check_present(dir.path(), &all_accepted);
    }
}

/// Reopens the store and checks that every acknowledged id is there.
fn check_present(dir: &Path, ids: &[Hex32]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(dir, options(), Arc::new(AcceptAll))
            .expect("store opens cleanly after a crash");
        store.health().await.unwrap();
        let everyone = |_: &Event, _: &dyn mls_store::StateRead| true;
        let mut missing: Vec<Hex32> = Vec::new();
        for chunk in ids.chunks(500) {
            let filter = Filter {
                ids: Some(chunk.to_vec()),
                ..Filter::default()
            };
            let found: std::collections::HashSet<Hex32> = store
                .query(
                    &[filter],
                    mls_store::ReadBounds::unbounded(1000),
                    mls_proto::unix_now(),
                    &mls_store::ReadScope::everything(),
                    &everyone,
                )
                .await
                .unwrap()
                .value
                .into_iter()
                .map(|s| s.event.id)
                .collect();
            missing.extend(chunk.iter().filter(|id| !found.contains(id)));
        }
        assert!(
            missing.is_empty(),
            "{} of {} acknowledged events lost, e.g. {}",
            missing.len(),
            ids.len(),
            missing[0]
        );
        store.close();
    });
}

/// The child: writes from 64 tasks as fast as it can, printing each acknowledged id, until
/// killed (or a minute passes, should the parent be gone).
fn child(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        let store = EmbeddedStore::open(dir, options(), Arc::new(AcceptAll)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    let k = secp256k1::Keypair::new(
                        secp256k1::SECP256K1,
                        &mut secp256k1::rand::thread_rng(),
                    );
                    let mut i = 0u64;
                    while Instant::now() < deadline {
                        i += 1;
                        let e = Event::sign(
                            &k,
                            1_700_000_000 + i,
                            1,
                            vec![vec!["t".into(), "crash".into()]],
                            "x".repeat(200),
                        );
                        let id = e.id;
                        let outcome = store.write(e, Publisher::default()).await.unwrap();
                        assert_eq!(outcome, WriteOutcome::Accepted);
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACCEPTED {id}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}
