//! `GET /metrics` end to end: counters move by exactly the traffic sent, gauges follow open
//! connections and subscriptions, every label value comes from its fixed list, and no pubkey
//! or group id ever appears; the bearer token when configured.

mod common;
mod support_api;

use common::*;
use mls_relay::metrics as m;
use serde_json::json;
use std::collections::HashMap;
use support_api::*;

/// Every label value must come from the relay's fixed lists.
#[track_caller]
fn assert_labels_bounded(scrape: &Scrape) {
    let allowed: HashMap<&str, &[&str]> = HashMap::from([
        ("kind", m::KINDS),
        ("reason", m::REASONS),
        ("op", m::DB_OPS),
        ("limit", m::LIMITS),
        ("endpoint", m::ENDPOINTS),
        ("status", m::STATUSES),
    ]);
    for s in &scrape.samples {
        assert!(
            s.name.starts_with("mls_gateway_") || s.name.starts_with("mls_relay_"),
            "{}",
            s.name
        );
        for (k, v) in &s.labels {
            match k.as_str() {
                "le" => assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "le={v}"),
                "command" => assert!(
                    m::COMMANDS_IN.contains(&v.as_str()) || m::COMMANDS_OUT.contains(&v.as_str()),
                    "command={v}"
                ),
                other => {
                    let list = allowed
                        .get(other)
                        .unwrap_or_else(|| panic!("unexpected label {other} on {}", s.name));
                    assert!(
                        list.contains(&v.as_str()),
                        "{}: {other}={v:?} is not a bounded value",
                        s.name
                    );
                }
            }
        }
    }
    // No 64-hex string (pubkey, id, group id) anywhere in the exposition.
    let hex_run = scrape
        .text
        .split(|c: char| !c.is_ascii_hexdigit())
        .any(|run| run.len() >= 64);
    assert!(!hex_run, "a 64-hex value appears in /metrics");
}

#[tokio::test]
async fn counters_move_by_the_traffic_sent() {
    let (admin, alice, bob) = (keys(), keys(), keys());
    let relay = Relay::builder()
        .config(&format!(
            "[extensions.mls_gateway]\nadmin_pubkeys = [\"{}\"]\n",
            pk_hex(&admin)
        ))
        .start()
        .await;
    let s0 = scrape(&relay, None).await;
    assert_labels_bounded(&s0);
    assert_eq!(s0.get("mls_relay_connections", &[]), 0.0);

    let mut ws = relay.connect().await;
    // A live subscription for kind 1, open through the traffic.
    let live = ws.req("live", &[json!({"kinds": [1]})]).await;
    assert!(live.is_empty());

    let group = unique_hex();
    let open_group = unique_hex();
    let accepted = vec![
        keypackage(&alice, 443, &unique_hex(), "AAEAASDKu4HPHhXparg+o4NY", &[]),
        keypackage(
            &alice,
            30443,
            &unique_hex(),
            "AAEAASDKu4HPHhXparg+o4NZ",
            &[],
        ),
        bootstrap(&alice, &group, &[&bob]),
        ev(&keys(), 445, &[&["h", &open_group]], "bWxzIDE="),
        ev(&keys(), 445, &[&["h", &open_group]], "bWxzIDI="),
        ev(&keys(), 445, &[&["h", &open_group]], "bWxzIDM="),
        ev(&keys(), 1059, &[&["p", &pk_hex(&bob)]], "d3JhcA=="),
    ];
    for e in &accepted {
        ws.publish_ok(e).await;
    }
    let note = ev(&alice, 1, &[], "hello");
    ws.publish_ok(&note).await;
    ws.next_event("live").await;
    let msg = ws.publish_ok(&note).await; // duplicate: OK true, counted nowhere
    assert_prefix(&msg, "duplicate:");
    let (ok, why) = ws.publish(&ev(&alice, 444, &[], "rumor")).await;
    assert!(!ok);
    assert_prefix(&why, "invalid:");
    let mut forged = ev(&alice, 1, &[], "forged");
    forged.sig = ev(&bob, 1, &[], "x").sig;
    let (ok, why) = ws.publish(&forged).await;
    assert!(!ok);
    assert_prefix(&why, "invalid:");
    let closed = ws
        .req_closed("wraps", &[json!({"kinds": [1059], "#p": [pk_hex(&bob)]})])
        .await;
    assert_prefix(&closed, "auth-required:");

    // Admin API: one membership change, one rename.
    let api_group = unique_hex();
    let resp = call(
        &relay,
        "POST",
        &format!("/admin/groups/{api_group}/members"),
        Some(&admin),
        Some(&pubkeys_body(&[pk_hex(&bob)])),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let resp = call(
        &relay,
        "PATCH",
        &format!("/admin/groups/{api_group}"),
        Some(&admin),
        Some(&json!({"display_name": "ops"})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let s1 = scrape(&relay, None).await;
    assert_labels_bounded(&s1);
    let d = |name: &str, labels: &[(&str, &str)]| s1.get(name, labels) - s0.get(name, labels);

    let processed = "mls_gateway_events_processed_total";
    assert_eq!(d(processed, &[("kind", "443")]), 1.0);
    assert_eq!(d(processed, &[("kind", "30443")]), 1.0);
    assert_eq!(d(processed, &[("kind", "450")]), 1.0);
    assert_eq!(d(processed, &[("kind", "445")]), 3.0);
    assert_eq!(d(processed, &[("kind", "1059")]), 1.0);
    assert_eq!(d(processed, &[("kind", "other")]), 1.0);
    assert_eq!(d(processed, &[]), 8.0);
    assert_eq!(d("mls_gateway_keypackages_stored_total", &[]), 2.0);
    // 450 + admin add + admin rename.
    assert_eq!(d("mls_gateway_groups_updated_total", &[]), 3.0);
    // 450 + admin add (a rename is not a membership change).
    assert_eq!(d("mls_gateway_membership_updates_total", &[]), 2.0);
    assert_eq!(d("mls_gateway_errors_total", &[("reason", "invalid")]), 2.0);
    assert_eq!(d("mls_gateway_errors_total", &[]), 2.0);

    // Store: 10 writes (7 + note + duplicate + 444; the forged event never reaches the store).
    assert_eq!(
        d(
            "mls_gateway_db_operation_duration_seconds_count",
            &[("op", "write")]
        ),
        10.0
    );
    assert_eq!(
        d(
            "mls_gateway_db_operation_duration_seconds_bucket",
            &[("op", "write"), ("le", "+Inf")]
        ),
        10.0
    );
    assert!(
        d(
            "mls_gateway_db_operation_duration_seconds_count",
            &[("op", "state")]
        ) >= 2.0
    );
    assert!(
        d(
            "mls_gateway_db_operation_duration_seconds_count",
            &[("op", "query")]
        ) >= 1.0
    );

    // Relay traffic.
    assert_eq!(s1.get("mls_relay_connections", &[]), 1.0);
    assert_eq!(d("mls_relay_connections_opened_total", &[]), 1.0);
    assert_eq!(s1.get("mls_relay_subscriptions", &[]), 1.0);
    assert_eq!(
        d("mls_relay_messages_in_total", &[("command", "EVENT")]),
        11.0
    );
    assert_eq!(d("mls_relay_messages_in_total", &[("command", "REQ")]), 2.0);
    assert_eq!(
        d("mls_relay_messages_out_total", &[("command", "OK")]),
        11.0
    );
    assert_eq!(
        d("mls_relay_messages_out_total", &[("command", "EOSE")]),
        1.0
    );
    assert_eq!(
        d("mls_relay_messages_out_total", &[("command", "CLOSED")]),
        1.0
    );
    assert_eq!(
        d("mls_relay_messages_out_total", &[("command", "EVENT")]),
        1.0
    );
    assert_eq!(
        d("mls_relay_rejections_total", &[("reason", "invalid")]),
        2.0
    );
    assert_eq!(
        d("mls_relay_rejections_total", &[("reason", "auth-required")]),
        1.0
    );
    assert_eq!(d("mls_relay_rejections_total", &[]), 3.0);
    // One fan-out had a candidate subscription (the note).
    assert_eq!(d("mls_relay_fanout_duration_seconds_count", &[]), 1.0);
    assert_eq!(
        d(
            "mls_relay_http_responses_total",
            &[("endpoint", "admin_members"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        d(
            "mls_relay_http_responses_total",
            &[("endpoint", "admin_rename"), ("status", "200")]
        ),
        1.0
    );

    // No pubkey or group id in the exposition.
    for secret in [
        pk_hex(&admin),
        pk_hex(&alice),
        pk_hex(&bob),
        group.clone(),
        open_group,
        api_group,
    ] {
        assert!(!s1.text.contains(&secret), "{secret} appears in /metrics");
        assert!(
            !s1.text.contains(&secret[..16]),
            "a prefix of {secret} appears in /metrics"
        );
    }

    // Gauges follow the connection.
    ws.close_ws().await;
    let mut gauge = 1.0;
    for _ in 0..100 {
        let s = scrape(&relay, None).await;
        gauge = s.get("mls_relay_connections", &[]);
        if gauge == 0.0 && s.get("mls_relay_subscriptions", &[]) == 0.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(gauge, 0.0, "connections gauge after close");
}

#[tokio::test]
async fn metrics_token_from_config_or_env() {
    let relay = Relay::builder()
        .config("[server]\nmetrics_token = \"from-config\"\n")
        .start()
        .await;
    let resp = relay.get("/metrics").await;
    assert_error(&resp, 401, "auth_required");
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
    let resp = relay
        .get_with("/metrics", &[("Authorization", "Bearer wrong")])
        .await;
    assert_error(&resp, 401, "auth_required");
    let ok = scrape(&relay, Some("from-config")).await;
    assert!(ok
        .text
        .contains("# TYPE mls_gateway_events_processed_total counter"));
    let ok = relay
        .get_with("/metrics", &[("Authorization", "Bearer from-config")])
        .await;
    assert!(ok
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    drop(relay);

    let relay = Relay::builder()
        .config("[server]\nmetrics_token = \"from-config\"\n")
        .env("METRICS_TOKEN", "from-env")
        .start()
        .await;
    assert_eq!(
        relay
            .get_with("/metrics", &[("Authorization", "Bearer from-config")])
            .await
            .status,
        401
    );
    scrape(&relay, Some("from-env")).await;
    // /health stays open.
    assert_eq!(relay.get("/health").await.status, 200);
}

#[tokio::test]
async fn every_documented_metric_is_exported() {
    let relay = Relay::start().await;
    let s = scrape(&relay, None).await;
    for (name, kind) in [
        ("mls_gateway_events_processed_total", "counter"),
        ("mls_gateway_groups_updated_total", "counter"),
        ("mls_gateway_keypackages_stored_total", "counter"),
        ("mls_gateway_membership_updates_total", "counter"),
        ("mls_gateway_errors_total", "counter"),
        ("mls_gateway_db_operation_duration_seconds", "histogram"),
        ("mls_relay_connections", "gauge"),
        ("mls_relay_connections_opened_total", "counter"),
        ("mls_relay_subscriptions", "gauge"),
        ("mls_relay_messages_in_total", "counter"),
        ("mls_relay_messages_out_total", "counter"),
        ("mls_relay_rejections_total", "counter"),
        ("mls_relay_rate_limited_total", "counter"),
        ("mls_relay_fanout_duration_seconds", "histogram"),
        ("mls_relay_http_responses_total", "counter"),
    ] {
        assert!(
            s.text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} ({kind}) missing from /metrics"
        );
        assert!(
            s.text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    // Every kind label is present from the start (a dashboard sees zeros, not gaps).
    for kind in m::KINDS {
        assert!(s
            .samples
            .iter()
            .any(|x| x.name == "mls_gateway_events_processed_total"
                && x.labels == vec![("kind".to_string(), kind.to_string())]));
    }
}
