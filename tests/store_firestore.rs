//! The relay on Firestore (`storage_backend = "firestore"`), end to end: the config keys and
//! `FIRESTORE_EMULATOR_HOST` are all it takes, a missing project is refused at start-up with
//! the seed's words, an event too large for a document gets `OK false "invalid: …"`, and
//! Firestore going away is reported (503, `OK false "error: …"`, `CLOSED "error: …"`) and
//! recovered from without a restart.
//!
//! Needs `FIRESTORE_EMULATOR_HOST` (scripts/test.sh starts an emulator); each relay gets a
//! project of its own. Outages are made by a TCP proxy between the relay and the emulator.

mod common;

use common::outage::*;
use common::*;
use serde_json::json;
use std::time::Duration;

fn emulator() -> Option<String> {
    let host = common::firestore::emulator_host();
    if host.is_none() {
        eprintln!(
            "skipped: FIRESTORE_EMULATOR_HOST is not set (scripts/test.sh starts an emulator)"
        );
    }
    host
}

/// Exactly the keys an operator sets.
fn firestore_config(project: &str) -> String {
    format!("[extensions.mls_gateway]\nstorage_backend = \"firestore\"\nproject_id = {project:?}\n")
}

fn host_port(host: &str) -> (String, u16) {
    let (h, p) = host.rsplit_once(':').expect("host:port");
    (h.to_string(), p.parse().expect("port"))
}

#[tokio::test]
async fn the_keys_and_the_emulator_variable_are_all_it_takes() {
    let Some(host) = emulator() else {
        return;
    };
    let project = common::firestore::fresh_project();
    let mut relay = Relay::builder()
        .config(&firestore_config(&project))
        .env("FIRESTORE_EMULATOR_HOST", &host)
        .start()
        .await;
    assert!(
        relay.log().contains("Firestore store open"),
        "{}",
        relay.log_tail(20)
    );
    let k = keys();
    let mut ws = relay.connect().await;
    let first = ev(&k, 1, &[&["t", "fs"]], "first");
    ws.publish_ok(&first).await;
    let ids = req_ids(&mut ws, "a", json!({"#t": ["fs"]})).await.unwrap();
    assert_eq!(ids, vec![id_hex(&first)]);

    // Another relay on the same project sees it: the data is in Firestore, not the process.
    relay.kill();
    let other = Relay::builder()
        .config(&firestore_config(&project))
        .env("FIRESTORE_EMULATOR_HOST", &host)
        .start()
        .await;
    let mut ws = other.connect().await;
    let ids = req_ids(&mut ws, "b", json!({"#t": ["fs"]})).await.unwrap();
    assert_eq!(ids, vec![id_hex(&first)]);
}

#[tokio::test]
async fn a_missing_project_is_refused_with_the_seeds_words() {
    let config = "[extensions.mls_gateway]\nstorage_backend = \"firestore\"\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, config).unwrap();
    let out = run_cli(&["check-config", "-c", path.to_str().unwrap()], None, &[]);
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("extensions.mls_gateway.project_id required for Firestore backend"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn an_event_too_large_for_a_firestore_document_gets_ok_false_invalid() {
    let Some(host) = emulator() else {
        return;
    };
    let relay = Relay::builder()
        .config(&firestore_config(&common::firestore::fresh_project()))
        .config("[limitation]\nmax_event_tags = 2000\n")
        .env("FIRESTORE_EMULATOR_HOST", &host)
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    // ~700 KB of JSON, within the relay's 1 MiB message; with its 400 distinct 1000-byte
    // tags indexed too, ~1.1 MB as a document.
    let values: Vec<String> = (0..400)
        .map(|i| format!("{i:04}{}", "v".repeat(996)))
        .collect();
    let tag_list: Vec<Vec<&str>> = values.iter().map(|v| vec!["t", v.as_str()]).collect();
    let tag_refs: Vec<&[&str]> = tag_list.iter().map(|t| t.as_slice()).collect();
    let content = "x".repeat(300_000);
    let big = ev(&k, 1, &tag_refs, &content);
    let (ok, msg) = ws.publish(&big).await;
    assert!(!ok, "a 1.1 MB document was acknowledged");
    assert_prefix(&msg, "invalid: event too large to store");
    assert!(msg.contains("1048576"), "{msg}");
    // Control: half the tags fit.
    let fits = ev(&k, 1, &tag_refs[..200], &content);
    ws.publish_ok(&fits).await;
}

#[tokio::test]
async fn firestore_outage_is_reported_and_recovered_without_restart() {
    let Some(host) = emulator() else {
        return;
    };
    let proxy = Proxy::start(host_port(&host)).await;
    let relay = Relay::builder()
        .config(&firestore_config(&common::firestore::fresh_project()))
        .env(
            "FIRESTORE_EMULATOR_HOST",
            &format!("127.0.0.1:{}", proxy.port),
        )
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let before = ev(&k, 1, &[&["t", "outage"]], "before");
    ws.publish_ok(&before).await;

    proxy.cut();
    let health = relay.get("/health").await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["failing"], "store");
    let during = ev(&k, 1, &[&["t", "outage"]], "during");
    let (ok, msg) = publish_during_outage(&mut ws, &during).await;
    assert!(!ok, "OK true while Firestore is unreachable");
    assert_prefix(&msg, "error:");
    match req_ids(&mut ws, "down", json!({"#t": ["outage"]})).await {
        Err(msg) => assert_prefix(&msg, "error:"),
        Ok(ids) => panic!("REQ answered while Firestore is unreachable: {ids:?}"),
    }

    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while relay.get("/health").await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "relay did not recover; log:\n{}",
            relay.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = ev_at(&k, before.created_at + 1, 1, &[&["t", "outage"]], "after");
    ws.publish_ok(&after).await;
    let ids = req_ids(&mut ws, "up", json!({"#t": ["outage"]}))
        .await
        .expect("REQ answered after recovery");
    assert_eq!(ids, vec![id_hex(&after), id_hex(&before)]);
}

#[tokio::test]
async fn the_containers_firestore_config_takes_its_project_from_the_environment() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/firestore.toml");
    let out = run_cli(
        &["check-config", "-c", path],
        None,
        &[("GOOGLE_CLOUD_PROJECT", "my-project")],
    );
    assert!(out.success(), "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("storage_backend = \"firestore\"")
            && out.stdout.contains("project_id = \"my-project\""),
        "{}",
        out.stdout
    );
    let out = run_cli(&["check-config", "-c", path], None, &[]);
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("extensions.mls_gateway.project_id required for Firestore backend"),
        "{}",
        out.stderr
    );
}
