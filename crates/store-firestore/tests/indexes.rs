//! Indexes as code: every structured query the store sends must be served by
//! `deploy/firestore.indexes.json`. The emulator answers queries that production Firestore
//! refuses for want of a composite index, so the queries are recorded (their shape: equality,
//! `array-contains` and range fields, order) and checked against the file.
//!
//! - `every_query_shape_of_a_full_workload_is_served_by_the_index_file`: drives every read and
//!   write path of the store on the emulator with an in-memory log, then checks the log.
//! - `queries_logged_by_the_whole_test_run_are_served_by_the_index_file`: scripts/test.sh sets
//!   `MLS_FIRESTORE_QUERY_LOG` for the Firestore runs (this crate's tests, the end-to-end suites
//!   and the MDK flow on Firestore, relays included) and runs this last: every shape any of
//!   them sent is checked.

use mls_store::conformance::{ev, filter, keys, now, TestRules};
use mls_store::{EventStore, Publisher, ReadBounds, ReadKey, ReadScope, StateRead, WriteOutcome};
use mls_store_firestore::{missing_index, QueryLog, QueryShape};
use serde_json::Value;
use std::sync::Arc;

mod emulator;

fn index_file() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/firestore.indexes.json"
    );
    let text = std::fs::read_to_string(path).expect("read deploy/firestore.indexes.json");
    serde_json::from_str(&text).expect("deploy/firestore.indexes.json is JSON")
}

fn unserved(shapes: &[QueryShape], indexes: &Value) -> Vec<String> {
    shapes
        .iter()
        .filter_map(|s| missing_index(s, indexes))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_query_shape_of_a_full_workload_is_served_by_the_index_file() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let log = Arc::new(QueryLog::in_memory());
    let mut options = project.options();
    options.query_log = Some(log.clone());
    let store = project.open(options, Arc::new(TestRules)).await;
    let (alice, bob) = (keys(), keys());
    let (a, b) = (alice.x_only_public_key().0, bob.x_only_public_key().0);
    let (a, b) = (hex::encode(a.serialize()), hex::encode(b.serialize()));
    let t = now();
    let note = ev(&alice, t - 10, 1, &[&["p", &b], &["h", "g1"]], "hi");
    let message = ev(&alice, t - 9, 445, &[&["h", "g1"]], "m");
    let expiring = ev(
        &bob,
        t - 8,
        1,
        &[&["expiration", &(t - 1).to_string()]],
        "gone",
    );
    let profile = ev(&alice, t - 7, 0, &[], "v1");
    let profile2 = ev(&alice, t - 6, 0, &[], "v2");
    let article = ev(&bob, t - 5, 30023, &[&["d", "x"], &["put", "k1", "v"]], "");
    for e in [&note, &message, &expiring, &profile, &profile2, &article] {
        let got = store.write(e.clone(), Publisher::default()).await.unwrap();
        assert_eq!(got, WriteOutcome::Accepted, "{}", e.id);
    }
    let deletion = ev(
        &alice,
        t - 4,
        5,
        &[
            &["e", &note.id.to_hex()],
            &["a", &format!("30023:{b}:x")],
            &["a", &format!("0:{a}")],
        ],
        "",
    );
    store.write(deletion, Publisher::default()).await.unwrap();

    // Every filter shape the planner knows.
    let many_kinds: Vec<u16> = (1..40).collect();
    let many_authors: Vec<String> = (0..35).map(|i| format!("{i:064x}")).collect();
    let filters = [
        serde_json::json!({}),
        serde_json::json!({"ids": [message.id.to_hex()]}),
        serde_json::json!({"authors": [a]}),
        serde_json::json!({"authors": many_authors}),
        serde_json::json!({"authors": [a], "kinds": [445]}),
        serde_json::json!({"authors": [a], "kinds": [445, 1]}),
        serde_json::json!({"kinds": [445]}),
        serde_json::json!({"kinds": [445, 1]}),
        serde_json::json!({"kinds": many_kinds}),
        serde_json::json!({"#h": ["g1"]}),
        serde_json::json!({"#h": ["g1"], "kinds": [445]}),
        serde_json::json!({"#h": ["g1"], "kinds": [445, 1], "authors": [a]}),
        serde_json::json!({"#p": [b], "since": t - 100, "until": t}),
        serde_json::json!({"since": t - 100, "until": t, "limit": 1}),
    ];
    let bounds = ReadBounds::unbounded(500);
    let everyone: mls_store::Visible = &mls_store::conformance::everyone;
    // Every read scope shape: none, a few keys, more keys than one disjunction holds, and
    // every group.
    let pubkey = |i: u8| ReadKey::Pubkey(mls_proto::Hex32([i; 32]));
    let scopes = [
        ReadScope::everything(),
        ReadScope::holding(vec![pubkey(1), ReadKey::Group("g1".into())], false),
        ReadScope::holding((0..40).map(pubkey).collect(), false),
        ReadScope::holding(vec![ReadKey::Admins], true),
    ];
    for f in &filters {
        let f = filter(f.clone());
        for scope in &scopes {
            store
                .query(std::slice::from_ref(&f), bounds, t, scope, everyone)
                .await
                .unwrap();
            store
                .count(std::slice::from_ref(&f), bounds, t, scope, everyone)
                .await
                .unwrap();
        }
    }
    store.refresh_audiences().await.unwrap();
    store.committed_seq().await.unwrap();
    // The state: a read, a prefix scan, a state change; the commit stream, purge, export,
    // backup and restore.
    store
        .read_state(&mut |s: &dyn StateRead| {
            s.get(b"k1")?;
            s.scan_prefix(b"k", &mut |_, _| true)
        })
        .await
        .unwrap();
    store
        .update_state(Box::new(|s| {
            s.scan_prefix(b"n:", &mut |_, _| true)
                .map_err(|e| mls_store::Rejection(e.to_string()))?;
            s.put(b"k2", b"v")
                .map_err(|e| mls_store::Rejection(e.to_string()))
        }))
        .await
        .unwrap()
        .unwrap();
    store.since(0, 100).await.unwrap();
    assert_eq!(store.purge_expired(t).await.unwrap(), 1);
    store.export(&mut |_| {}).await.unwrap();
    let mut items = Vec::new();
    store
        .backup(&mut |i| {
            items.push(i.clone());
            true
        })
        .await
        .unwrap();
    let other = emulator::Project::new().unwrap();
    let mut other_options = other.options();
    other_options.query_log = Some(log.clone());
    let target = other.open(other_options, Arc::new(TestRules)).await;
    target.restore(items).await.unwrap();

    let shapes = log.shapes();
    let indexes = index_file();
    // The log really holds the workload's shapes: the check below cannot pass on nothing.
    let has = |collection: &str, eq: &[&str], array: Option<&str>| {
        shapes.iter().any(|s| {
            s.collection == collection
                && s.equalities
                    .iter()
                    .map(String::as_str)
                    .eq(eq.iter().copied())
                && s.array_contains.as_deref() == array
        })
    };
    assert!(has("events", &["kind"], Some("tags")), "{shapes:#?}");
    assert!(has("events", &["kind", "pubkey"], None), "{shapes:#?}");
    assert!(has("events", &["addr"], None), "{shapes:#?}");
    assert!(has("state", &[], None), "{shapes:#?}");
    assert!(shapes.len() >= 10, "{shapes:#?}");
    let missing = unserved(&shapes, &indexes);
    assert!(
        missing.is_empty(),
        "not served by the index file: {missing:#?}"
    );

    // And the check fails when an index the workload needs is taken out of the file.
    let mut fewer = indexes.clone();
    fewer["indexes"].as_array_mut().unwrap().remove(1);
    assert!(!unserved(&shapes, &fewer).is_empty());
}

#[test]
fn queries_logged_by_the_whole_test_run_are_served_by_the_index_file() {
    let Some(path) = std::env::var_os("MLS_FIRESTORE_QUERY_LOG").filter(|p| !p.is_empty()) else {
        eprintln!("skipped: MLS_FIRESTORE_QUERY_LOG is not set (scripts/test.sh sets it for the Firestore runs)");
        return;
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "skipped: {} does not exist yet (no Firestore run logged a query)",
            std::path::Path::new(&path).display()
        );
        return;
    };
    let shapes: Vec<QueryShape> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a JSON line");
            QueryShape::from_json(&v).unwrap_or_else(|| panic!("not a query shape: {l}"))
        })
        .collect();
    eprintln!("{} logged query shapes", shapes.len());
    let missing = unserved(&shapes, &index_file());
    assert!(
        missing.is_empty(),
        "not served by the index file: {missing:#?}"
    );
}
