//! HTTP surface of the relay core: `/health` and the NIP-11 document.

mod common;

use common::*;

#[tokio::test]
async fn health_reports_healthy_version_and_uptime() {
    let relay = Relay::start().await;
    let r = relay.get("/health").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "healthy", "{v}");
    assert!(
        v["version"].as_str().is_some_and(|s| !s.is_empty()),
        "version missing: {v}"
    );
    assert!(v["uptime_seconds"].is_u64(), "uptime_seconds missing: {v}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.contains("application/json")),
        "{:?}",
        r.headers
    );
}

#[tokio::test]
async fn health_is_503_naming_the_store_when_its_files_vanish() {
    // The embedded store's files (PostgreSQL's outage: tests/store_postgres.rs).
    let relay = Relay::builder()
        .config("[extensions.mls_gateway]\nstorage_backend = \"embedded\"\n")
        .start()
        .await;
    assert_eq!(relay.get("/health").await.status, 200);
    // What an unmounted volume looks like from inside: the store's directory is gone.
    std::fs::remove_dir_all(relay.data_path()).unwrap();
    let r = relay.get("/health").await;
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "unhealthy", "{v}");
    assert_eq!(v["failing"], "store", "{v}");
    assert!(
        v["version"].is_string() && v["uptime_seconds"].is_u64(),
        "{v}"
    );
}

#[tokio::test]
async fn health_is_served_when_auth_is_required() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let r = relay.get("/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "healthy");
}

#[tokio::test]
async fn nip11_document_with_limitation_and_mls_section() {
    let relay = Relay::builder()
        .config(
            r#"
[limitation]
max_message_length = 65536
max_subscriptions = 7
max_filters = 4
max_limit = 123
max_subid_length = 40
max_event_tags = 99
"#,
        )
        .start()
        .await;
    let r = relay
        .get_with("/", &[("Accept", "application/nostr+json")])
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.contains("application/nostr+json") || c.contains("application/json")),
        "content-type: {:?}",
        r.header("content-type")
    );
    assert!(
        r.header("access-control-allow-origin").is_some(),
        "NIP-11 requires CORS headers: {:?}",
        r.headers
    );
    let v = r.json();
    let lim = &v["limitation"];
    assert!(lim.is_object(), "limitation missing: {v}");
    assert_eq!(lim["max_message_length"], 65536, "{lim}");
    assert_eq!(lim["max_subscriptions"], 7, "{lim}");
    assert_eq!(lim["max_limit"], 123, "{lim}");
    assert_eq!(lim["max_subid_length"], 40, "{lim}");
    assert_eq!(lim["max_event_tags"], 99, "{lim}");
    assert_eq!(lim["auth_required"], false, "{lim}");
    let nips: Vec<u64> = v["supported_nips"]
        .as_array()
        .unwrap_or_else(|| panic!("supported_nips missing: {v}"))
        .iter()
        .filter_map(|n| n.as_u64())
        .collect();
    for nip in [1, 9, 11, 40, 42, 45, 70] {
        assert!(nips.contains(&nip), "supported_nips lacks {nip}: {nips:?}");
    }
    assert!(v["mls"].is_object(), "mls section missing: {v}");
}

#[tokio::test]
async fn nip11_reports_auth_required_when_enabled() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let r = relay
        .get_with("/", &[("Accept", "application/nostr+json")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["limitation"]["auth_required"], true);
}

#[tokio::test]
async fn unknown_path_is_404() {
    let relay = Relay::start().await;
    let r = relay.get("/definitely/not/here").await;
    assert_eq!(r.status, 404);
}

/// PROTOCOL.md §8: structured JSON logs with a Cloud Logging `severity`; never event content,
/// never a full pubkey — also at debug level for the relay's own crates.
#[tokio::test]
async fn logs_are_json_lines_without_content_or_full_pubkeys() {
    let relay = Relay::builder()
        .env(
            "RUST_LOG",
            "debug,hyper=info,h2=info,tungstenite=info,tokio_tungstenite=info,axum=info,tower=info,heed=info",
        )
        .start()
        .await;
    let k = keys();
    let secret = "very-secret-content-7f3a91";
    let mut ws = relay.connect_authed(&k).await;
    let e = ev(&k, 1, &[&["t", "log-test"]], secret);
    ws.publish_ok(&e).await;
    let mut bad = ev(&k, 1, &[], "another-secret-c0ffee");
    bad.sig.0[0] ^= 1;
    let (ok, _) = ws.publish(&bad).await;
    assert!(!ok);
    let _ = ws
        .query(&[serde_json::json!({"authors": [pk_hex(&k)]})])
        .await;
    ws.send_text("garbage that is not json").await;
    let _ = ws.notice().await;
    drop(ws);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let log = relay.log();
    let complete = match log.rfind('\n') {
        Some(i) => &log[..i],
        None => "",
    };
    let lines: Vec<&str> = complete.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "the relay logged nothing to stderr");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}"));
        assert!(v.is_object(), "{l}");
        assert!(
            v.get("severity").is_some(),
            "log line without severity: {l}"
        );
        assert!(
            v.get("timestamp").is_some() || v.get("time").is_some(),
            "no timestamp: {l}"
        );
    }
    assert!(!log.contains(secret), "event content logged");
    assert!(
        !log.contains("another-secret-c0ffee"),
        "refused event content logged"
    );
    assert!(!log.contains(&pk_hex(&k)), "full pubkey logged");
}
