//! `[limitation]` and rate limits: what is refused, with which message and prefix, and that
//! the connection stays usable.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const LIMITS: &str = r#"
[limitation]
max_message_length = 8192
max_subscriptions = 3
max_filters = 3
max_limit = 5
max_subid_length = 16
max_event_tags = 10
max_content_length = 1000
created_at_lower_limit = 3600
created_at_upper_limit = 900
"#;

async fn limited() -> Relay {
    Relay::builder().config(LIMITS).start().await
}

fn filters(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!({"kinds": [i as u64 + 1]})).collect()
}

#[tokio::test]
async fn too_many_filters_is_closed_invalid() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    let m = ws.req_closed("f4", &filters(4)).await;
    assert_prefix(&m, "invalid:");
    ws.req("f3", &filters(3)).await;
    let m = ws.count("cf4", &filters(4)).await;
    match m {
        Err(m) => assert_prefix(&m, "invalid:"),
        Ok(n) => panic!("COUNT with too many filters answered {n}"),
    }
}

#[tokio::test]
async fn sub_id_too_long_is_closed_invalid() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    let long = "x".repeat(17);
    let m = ws.req_closed(&long, &[json!({"kinds": [1]})]).await;
    assert_prefix(&m, "invalid:");
    ws.req(&"y".repeat(16), &[json!({"kinds": [1]})]).await;
}

#[tokio::test]
async fn default_limits_for_sub_id_and_filters() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let m = ws
        .req_closed(&"a".repeat(65), &[json!({"kinds": [1]})])
        .await;
    assert_prefix(&m, "invalid:");
    ws.req(&"b".repeat(64), &[json!({"kinds": [1]})]).await;
    let m = ws.req_closed("many", &filters(11)).await;
    assert_prefix(&m, "invalid:");
    ws.req("ten", &filters(10)).await;
}

#[tokio::test]
async fn bad_filters_are_closed_invalid_and_connection_stays_usable() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let bad = [
        json!({"kinds": "1"}),
        json!({"ids": ["zz"]}),
        json!({"authors": ["not-hex"]}),
        json!({"limit": -1}),
        json!({"since": "yesterday"}),
        json!({"#t": "not-an-array"}),
        json!("not an object"),
    ];
    for (i, f) in bad.iter().enumerate() {
        let sub = format!("bad{i}");
        let m = ws.req_closed(&sub, std::slice::from_ref(f)).await;
        assert_prefix(&m, "invalid:");
    }
    let e = ev(&keys(), 1, &[], "usable");
    ws.publish_ok(&e).await;
    assert_eq!(
        ws.query_ids(&[json!({"ids": [id_hex(&e)]})]).await,
        vec![id_hex(&e)]
    );
}

#[tokio::test]
async fn too_many_subscriptions_is_closed_with_a_standard_prefix() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    for i in 0..3 {
        ws.req(&format!("s{i}"), &[json!({"kinds": [1]})]).await;
    }
    let m = ws.req_closed("s3", &[json!({"kinds": [1]})]).await;
    assert_any_prefix(&m, &["rate-limited:", "restricted:"]);

    // Replacing an existing subscription is not a new one.
    ws.req("s1", &[json!({"kinds": [7]})]).await;
    // Closing one frees a slot.
    ws.send(&json!(["CLOSE", "s0"])).await;
    ws.req("s4", &[json!({"kinds": [1]})]).await;

    // The limit is per connection.
    let mut other = relay.connect().await;
    for i in 0..3 {
        other.req(&format!("o{i}"), &[json!({"kinds": [1]})]).await;
    }
}

#[tokio::test]
async fn limit_is_clamped_to_max_limit() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let t = now() - 100;
    let mut ids = Vec::new();
    for i in 0..8 {
        let e = ev_at(&k, t + i, 1, &[], &format!("{i}"));
        ws.publish_ok(&e).await;
        ids.push(id_hex(&e));
    }
    ids.reverse();
    let got = ws
        .query_ids(&[json!({"authors": [pk_hex(&k)], "limit": 100})])
        .await;
    assert_eq!(got, ids[..5].to_vec(), "limit above max_limit not clamped");
}

#[tokio::test]
async fn too_many_tags_is_refused_invalid() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let many: Vec<Vec<String>> = (0..11).map(|i| vec!["t".into(), format!("{i}")]).collect();
    let e = mls_proto::Event::sign(&k, now(), 1, many, "tags");
    let (ok, msg) = ws.publish(&e).await;
    assert!(!ok, "event with 11 tags accepted (max_event_tags = 10)");
    assert_prefix(&msg, "invalid:");
    let ten: Vec<Vec<String>> = (0..10).map(|i| vec!["t".into(), format!("{i}")]).collect();
    ws.publish_ok(&mls_proto::Event::sign(&k, now(), 1, ten, "tags"))
        .await;
}

#[tokio::test]
async fn too_long_content_is_refused_invalid() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let (ok, msg) = ws.publish(&ev(&k, 1, &[], &"c".repeat(1001))).await;
    assert!(!ok, "content over max_content_length accepted");
    assert_prefix(&msg, "invalid:");
    ws.publish_ok(&ev(&k, 1, &[], &"c".repeat(1000))).await;
}

#[tokio::test]
async fn created_at_outside_the_window_is_refused_invalid() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let (ok, msg) = ws.publish(&ev_at(&k, now() + 3600, 1, &[], "future")).await;
    assert!(
        !ok,
        "event an hour in the future accepted (upper limit 900 s)"
    );
    assert_prefix(&msg, "invalid:");
    let (ok, msg) = ws.publish(&ev_at(&k, now() - 7200, 1, &[], "past")).await;
    assert!(!ok, "event two hours old accepted (lower limit 3600 s)");
    assert_prefix(&msg, "invalid:");
    ws.publish_ok(&ev_at(&k, now() + 60, 1, &[], "near future"))
        .await;
    ws.publish_ok(&ev_at(&k, now() - 600, 1, &[], "recent past"))
        .await;
}

#[tokio::test]
async fn created_at_upper_limit_applies_by_default() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let (ok, msg) = ws.publish(&ev_at(&k, now() + 3600, 1, &[], "future")).await;
    assert!(
        !ok,
        "event an hour in the future accepted (default upper limit 900 s)"
    );
    assert_prefix(&msg, "invalid:");
    // Lower limit is off by default.
    ws.publish_ok(&ev_at(&k, 1_000_000_000, 1, &[], "old"))
        .await;
}

#[tokio::test]
async fn oversize_message_is_answered_and_not_stored() {
    let relay = limited().await;
    let mut ws = relay.connect().await;
    let e = ev(&keys(), 1, &[], &"z".repeat(10_000));
    ws.send(&json!(["EVENT", e])).await;
    let m = ws
        .wait_for("NOTICE or OK for an oversize message", |m| {
            m[0] == "NOTICE" || m[0] == "OK"
        })
        .await;
    if m[0] == "OK" {
        assert_eq!(m[1], id_hex(&e).as_str(), "{m}");
        assert_eq!(m[2], false, "oversize event accepted: {m}");
        assert_any_prefix(m[3].as_str().unwrap(), STANDARD_PREFIXES);
    } else {
        assert_any_prefix(m[1].as_str().unwrap(), STANDARD_PREFIXES);
    }
    let mut other = relay.connect().await;
    assert!(other
        .query(&[json!({"ids": [id_hex(&e)]})])
        .await
        .is_empty());
}

#[tokio::test]
async fn events_per_minute_rate_limit() {
    let relay = Relay::builder()
        .config("[extensions.mls_gateway.rate_limits]\nmax_events_per_minute = 3\n")
        .start()
        .await;
    let mut ws = relay.connect().await;
    let k = keys();
    let mut refused = None;
    for i in 0..10 {
        let (ok, msg) = ws.publish(&ev(&k, 1, &[], &format!("{i}"))).await;
        if !ok {
            refused = Some((i, msg));
            break;
        }
    }
    let (i, msg) = refused.expect("10 events in a row accepted with max_events_per_minute = 3");
    assert!(i >= 3, "refused after only {i} events: {msg}");
    assert_prefix(&msg, "rate-limited:");
}

#[tokio::test]
async fn default_max_message_length_is_one_mib_and_connection_stays_usable() {
    let relay = Relay::builder()
        .config("[limitation]\nmax_content_length = 4194304\n")
        .start()
        .await;
    let mut ws = relay.connect().await;
    let k = keys();
    // Just under 1 MiB: accepted.
    let fits = ev(&k, 1, &[], &"a".repeat(1_000_000));
    ws.publish_ok(&fits).await;
    // Over 1 MiB: refused with an answer, and the connection goes on.
    let big = ev(&k, 1, &[], &"b".repeat(1_100_000));
    ws.send(&json!(["EVENT", big])).await;
    let m = ws
        .wait_for("NOTICE or OK for an oversize message", |m| {
            m[0] == "NOTICE" || m[0] == "OK"
        })
        .await;
    if m[0] == "OK" {
        assert_eq!(m[2], false, "oversize event accepted");
        assert_any_prefix(m[3].as_str().unwrap(), STANDARD_PREFIXES);
    } else {
        assert_any_prefix(m[1].as_str().unwrap(), STANDARD_PREFIXES);
    }
    let small = ev(&k, 1, &[], "small");
    ws.publish_ok(&small).await;
    assert!(ws.query(&[json!({"ids": [id_hex(&big)]})]).await.is_empty());
}

#[tokio::test]
async fn slow_reader_is_disconnected_with_a_notice_and_others_go_on() {
    let relay = Relay::builder()
        .config("[limitation]\noutbox_capacity = 16\nmax_content_length = 262144\n")
        .start()
        .await;
    let k = keys();
    // Subscribes to everything, then does not read.
    let mut slow = relay.connect().await;
    slow.req("all", &[json!({"kinds": [1]})]).await;

    // Enough live traffic to fill the kernel's socket buffers and then the outbox:
    // 400 × 100 KiB = 40 MiB, in pipelined batches (smaller than the outbox, so the
    // publisher's own OKs never overflow it). The publisher is never held up.
    let mut publisher = relay.connect().await;
    let body = "p".repeat(100 * 1024);
    for batch in 0..40 {
        let evs: Vec<_> = (0..10)
            .map(|i| ev(&k, 1, &[], &format!("{batch}-{i} {body}")))
            .collect();
        for e in &evs {
            publisher.send(&json!(["EVENT", e])).await;
        }
        for e in &evs {
            let (ok, msg) = publisher.wait_ok(&id_hex(e)).await;
            assert!(ok, "publisher refused while a reader is slow: {msg}");
        }
    }

    // The slow reader now reads: a NOTICE, then the end of the connection.
    let mut notices = Vec::new();
    let mut events = 0usize;
    while let Some(m) = slow.recv_until_closed(Duration::from_secs(30)).await {
        match m[0].as_str() {
            Some("NOTICE") => notices.push(m[1].as_str().unwrap_or_default().to_owned()),
            Some("EVENT") => events += 1,
            _ => {}
        }
        assert!(
            events <= 400,
            "slow reader got every event: it was never disconnected"
        );
    }
    assert!(
        events < 400,
        "slow reader got every event: never disconnected"
    );
    assert!(
        !notices.is_empty(),
        "slow reader disconnected without a NOTICE"
    );
    assert_any_prefix(notices.last().unwrap(), STANDARD_PREFIXES);

    // The relay is fine and others are served.
    let mut other = relay.connect().await;
    let e = ev(&k, 1, &[], "after the slow reader");
    other.publish_ok(&e).await;
    assert_eq!(
        other.query_ids(&[json!({"ids": [id_hex(&e)]})]).await,
        vec![id_hex(&e)]
    );
}

#[tokio::test]
async fn a_full_embedded_store_refuses_writes_keeps_what_it_has_and_grows_on_restart() {
    if pg::e2e_on_postgres() || firestore::e2e_on_firestore() {
        return; // the embedded store's own limit
    }
    // A 2 MiB store: full after a few hundred events.
    let mut relay = Relay::builder()
        .config("[data]\nmax_size_gib = 0.002\n")
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let mut accepted = Vec::new();
    let refusal = loop {
        assert!(accepted.len() < 5000, "a 2 MiB store took 5,000 events");
        let e = ev(&k, 1, &[], &format!("{:0>900}", accepted.len()));
        let (ok, msg) = ws.publish(&e).await;
        if !ok {
            break msg;
        }
        accepted.push(id_hex(&e));
    };
    assert!(
        !accepted.is_empty(),
        "the store refused its first event: {refusal}"
    );
    assert_prefix(&refusal, "error:");
    let log = relay.log();
    assert!(
        log.contains("max_size_gib"),
        "the log does not say which setting to raise ({refusal}):\n{}",
        relay.log_tail(20)
    );
    // Nothing acknowledged is lost, and reads go on.
    let n = accepted.len() as u64;
    assert_eq!(
        ws.count("c", &[json!({"authors": [pk_hex(&k)]})]).await,
        Ok(n)
    );

    relay.add_config("[data]\nmax_size_gib = 0.05\n");
    relay.restart().await;
    let mut ws = relay.connect().await;
    let more = ev(&k, 1, &[], "after the restart");
    ws.publish_ok(&more).await;
    assert_eq!(
        ws.count("c", &[json!({"authors": [pk_hex(&k)]})]).await,
        Ok(n + 1),
        "events lost over the restart"
    );
    // And each of the first ones by id (REQs of at most 100 ids: the relay caps a filter's ids).
    for ids in accepted.chunks(100) {
        let served = ws.query_ids(&[json!({"ids": ids})]).await;
        assert_eq!(served.len(), ids.len(), "events lost over the restart");
    }
}
