//! NIP-01 core over raw WebSocket frames: publish, query, ordering, limits, subscriptions,
//! event classes (replaceable, addressable, ephemeral), error answers, COUNT (NIP-45).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn publish_then_fetch_by_id_returns_the_event_unchanged() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    // Content and tags that a careless re-serialiser would change.
    let e = ev(
        &k,
        1,
        &[
            &["t", "nostr"],
            &["p", &pk_hex(&keys()), "wss://r.example", "mention"],
            &["x", ""],
            &["emoji", "🦀", "ünïcødé"],
        ],
        "line1\nline2\t\"quoted\" \\ back </script> \u{1} é 🦀 \u{2028}",
    );
    let (ok, msg) = ws.publish(&e).await;
    assert!(ok, "OK false: {msg}");

    let got = ws.query(&[json!({"ids": [id_hex(&e)]})]).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0], event_value(&e), "event not served as signed");
    served_event(&got[0]);

    // A second connection sees the same.
    let mut ws2 = relay.connect().await;
    let got = ws2.query(&[json!({"authors": [pk_hex(&k)]})]).await;
    assert_eq!(got, vec![event_value(&e)]);
}

#[tokio::test]
async fn answers_have_the_nip01_shapes() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let e = ev(&keys(), 1, &[], "shape");
    ws.send(&json!(["EVENT", e])).await;
    let ok = ws.recv().await;
    assert_eq!(ok, json!(["OK", id_hex(&e), true, ok[3].clone()]));
    assert!(ok[3].is_string());

    ws.send(&json!(["REQ", "shape-sub", {"ids": [id_hex(&e)]}]))
        .await;
    let m = ws.recv().await;
    assert_eq!(m, json!(["EVENT", "shape-sub", event_value(&e)]));
    let m = ws.recv().await;
    assert_eq!(m, json!(["EOSE", "shape-sub"]));

    ws.send(&json!(["COUNT", "shape-count", {"ids": [id_hex(&e)]}]))
        .await;
    let m = ws.recv().await;
    assert_eq!(m, json!(["COUNT", "shape-count", {"count": 1}]));
}

#[tokio::test]
async fn duplicate_event_is_ok_true_with_duplicate_prefix() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let e = ev(&keys(), 1, &[], "twice");
    ws.publish_ok(&e).await;
    let (ok, msg) = ws.publish(&e).await;
    assert!(ok, "duplicate must be OK true, got OK false {msg:?}");
    assert_prefix(&msg, "duplicate:");
    // From another connection too.
    let mut ws2 = relay.connect().await;
    let (ok, msg) = ws2.publish(&e).await;
    assert!(ok);
    assert_prefix(&msg, "duplicate:");
    assert_eq!(ws.query(&[json!({"ids": [id_hex(&e)]})]).await.len(), 1);
}

#[tokio::test]
async fn bad_signature_is_refused_invalid_and_not_stored() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let mut e = ev(&keys(), 1, &[], "sig");
    e.sig.0[10] ^= 0x01;
    let (ok, msg) = ws.publish(&e).await;
    assert!(!ok, "bad signature accepted");
    assert_prefix(&msg, "invalid:");
    assert!(ws.query(&[json!({"ids": [id_hex(&e)]})]).await.is_empty());
}

#[tokio::test]
async fn bad_id_is_refused_invalid_and_not_stored() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let mut e = ev(&k, 1, &[], "original");
    e.content = "tampered".into();
    let (ok, msg) = ws.publish(&e).await;
    assert!(!ok, "event whose id does not match accepted");
    assert_prefix(&msg, "invalid:");
    assert!(ws
        .query(&[json!({"authors": [pk_hex(&k)]})])
        .await
        .is_empty());

    // Signature of another event reused under a different id.
    let a = ev(&k, 1, &[], "a");
    let mut b = ev(&k, 1, &[], "b");
    b.sig = a.sig;
    let (ok, msg) = ws.publish(&b).await;
    assert!(!ok);
    assert_prefix(&msg, "invalid:");
}

#[tokio::test]
async fn malformed_event_with_readable_id_gets_ok_false_invalid() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let id = "ab".repeat(32);
    ws.send(&json!(["EVENT", {"id": id, "kind": "not-a-number"}]))
        .await;
    let (ok, msg) = ws.wait_ok(&id).await;
    assert!(!ok);
    assert_prefix(&msg, "invalid:");
    // Uppercase hex is not NIP-01.
    let e = ev(&keys(), 1, &[], "upper");
    let upper = id_hex(&e).to_uppercase();
    let mut v = event_value(&e);
    v["id"] = json!(upper);
    ws.send(&json!(["EVENT", v])).await;
    // Either an OK false for the (uppercase) id or a NOTICE; never acceptance.
    let m = ws
        .wait_for("answer to uppercase id", |m| {
            m[0] == "OK" || m[0] == "NOTICE"
        })
        .await;
    if m[0] == "OK" {
        assert_eq!(m[2], false, "{m}");
        assert_prefix(m[3].as_str().unwrap(), "invalid:");
    } else {
        assert_prefix(m[1].as_str().unwrap(), "invalid:");
    }
}

#[tokio::test]
async fn malformed_json_gets_notice_and_connection_stays_usable() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    for bad in [
        "this is not json",
        "{\"an\": \"object\"}",
        "[]",
        "[1, 2]",
        "[\"EVENT\"]",
        "[\"REQ\"]",
        "[\"CLOSE\"]",
        "[\"EVENT\", ",
        "[\"REQ\", 1, {}]",
        "[\"REQ\", \"\", {}]",
    ] {
        ws.send_text(bad).await;
        let n = ws.notice().await;
        assert_prefix(&n, "invalid:");
    }
    ws.publish_ok(&ev(&keys(), 1, &[], "still works")).await;
}

#[tokio::test]
async fn unknown_command_gets_notice_and_connection_stays_usable() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    ws.send(&json!(["FROBNICATE", "x", {}])).await;
    let n = ws.notice().await;
    assert_prefix(&n, "invalid:");
    let e = ev(&keys(), 1, &[], "after unknown");
    ws.publish_ok(&e).await;
    assert_eq!(ws.query(&[json!({"ids": [id_hex(&e)]})]).await.len(), 1);
}

#[tokio::test]
async fn binary_frame_gets_notice_and_connection_stays_usable() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let e = ev(&keys(), 1, &[], "binary");
    ws.send_binary(json!(["EVENT", e]).to_string().as_bytes())
        .await;
    let n = ws.notice().await;
    assert_prefix(&n, "invalid:");
    // The binary frame was not taken as an event.
    assert!(ws.query(&[json!({"ids": [id_hex(&e)]})]).await.is_empty());
    ws.publish_ok(&e).await;
}

#[tokio::test]
async fn results_are_newest_first_with_ties_lowest_id_first() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let t = now() - 100;
    let mut evs = vec![
        ev_at(&k, t + 1, 1, &[], "a"),
        ev_at(&k, t + 50, 1, &[], "b"),
        ev_at(&k, t + 20, 1, &[], "c"),
        ev_at(&k, t + 20, 1, &[], "d"),
        ev_at(&k, t + 20, 1, &[], "e"),
        ev_at(&k, t + 90, 1, &[], "f"),
        ev_at(&k, t + 5, 1, &[], "g"),
    ];
    for e in &evs {
        ws.publish_ok(e).await;
    }
    evs.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then_with(|| a.id.to_hex().cmp(&b.id.to_hex()))
    });
    let expected: Vec<String> = evs.iter().map(id_hex).collect();

    let by_author = ws.query_ids(&[json!({"authors": [pk_hex(&k)]})]).await;
    assert_eq!(by_author, expected, "authors filter order");

    // `ids` filters are ordered the same way, whatever order the ids were asked in.
    let mut asked = expected.clone();
    asked.reverse();
    asked.swap(0, 3);
    let by_ids = ws.query_ids(&[json!({"ids": asked})]).await;
    assert_eq!(by_ids, expected, "ids filter order");

    let limited = ws
        .query_ids(&[json!({"authors": [pk_hex(&k)], "limit": 3})])
        .await;
    assert_eq!(limited, expected[..3].to_vec(), "limit keeps the newest");

    let limited_ids = ws.query_ids(&[json!({"ids": asked, "limit": 2})]).await;
    assert_eq!(
        limited_ids,
        expected[..2].to_vec(),
        "limit on ids keeps the newest"
    );
}

#[tokio::test]
async fn limit_is_per_filter_and_several_filters_are_a_union() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let (a, b) = (keys(), keys());
    let t = now() - 100;
    let mut a_evs = Vec::new();
    let mut b_evs = Vec::new();
    for i in 0..4 {
        let e = ev_at(&a, t + i, 1, &[], &format!("a{i}"));
        ws.publish_ok(&e).await;
        a_evs.push(e);
        let e = ev_at(&b, t + i, 1, &[], &format!("b{i}"));
        ws.publish_ok(&e).await;
        b_evs.push(e);
    }
    let got = ws
        .query_ids(&[
            json!({"authors": [pk_hex(&a)], "limit": 2}),
            json!({"authors": [pk_hex(&b)], "limit": 1}),
        ])
        .await;
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want = vec![id_hex(&a_evs[3]), id_hex(&a_evs[2]), id_hex(&b_evs[3])];
    want.sort();
    assert_eq!(got_sorted, want, "per-filter limits: {got:?}");

    // Overlapping filters: every match once.
    let got = ws
        .query_ids(&[
            json!({"authors": [pk_hex(&a)]}),
            json!({"kinds": [1], "authors": [pk_hex(&a), pk_hex(&b)], "since": t + 3}),
        ])
        .await;
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want: Vec<String> = a_evs.iter().map(id_hex).collect();
    want.push(id_hex(&b_evs[3]));
    want.sort();
    assert_eq!(
        got_sorted, want,
        "union of filters, each event once: {got:?}"
    );
}

#[tokio::test]
async fn filters_match_kinds_tags_since_until() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let other = pk_hex(&keys());
    let t = now() - 1000;
    let e1 = ev_at(&k, t + 10, 1, &[&["t", "rust"]], "1");
    let e2 = ev_at(&k, t + 20, 7, &[&["p", &other]], "2");
    let e3 = ev_at(&k, t + 30, 1, &[&["t", "nostr"], &["p", &other]], "3");
    for e in [&e1, &e2, &e3] {
        ws.publish_ok(e).await;
    }
    let me = pk_hex(&k);
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "kinds": [7]})])
            .await,
        vec![id_hex(&e2)]
    );
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "#t": ["rust", "zig"]})])
            .await,
        vec![id_hex(&e1)]
    );
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "#p": [other]})])
            .await,
        vec![id_hex(&e3), id_hex(&e2)]
    );
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "since": t + 20})])
            .await,
        vec![id_hex(&e3), id_hex(&e2)]
    );
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "until": t + 20})])
            .await,
        vec![id_hex(&e2), id_hex(&e1)]
    );
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "kinds": [1], "#t": ["nostr"], "#p": [other]})])
            .await,
        vec![id_hex(&e3)]
    );
    assert!(ws
        .query_ids(&[json!({"authors": [pk_hex(&keys())]})])
        .await
        .is_empty());
}

#[tokio::test]
async fn limit_zero_gives_eose_at_once_then_live_events() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    ws.publish_ok(&ev(&k, 1, &[], "stored")).await;

    ws.send_req("live", &[json!({"authors": [pk_hex(&k)], "limit": 0})])
        .await;
    let first = ws.recv().await;
    assert_eq!(
        first,
        json!(["EOSE", "live"]),
        "limit:0 must not serve stored events"
    );

    let mut pub_ws = relay.connect().await;
    let e = ev(&k, 1, &[], "live one");
    pub_ws.publish_ok(&e).await;
    let got = ws.next_event("live").await;
    assert_eq!(got, event_value(&e));
}

#[tokio::test]
async fn live_delivery_matches_filters_only() {
    let relay = Relay::start().await;
    let mut sub = relay.connect().await;
    let (a, b) = (keys(), keys());
    let stored = sub
        .req("s1", &[json!({"authors": [pk_hex(&a)], "kinds": [1]})])
        .await;
    assert!(stored.is_empty());

    let mut publisher = relay.connect().await;
    publisher.publish_ok(&ev(&b, 1, &[], "other author")).await;
    publisher.publish_ok(&ev(&a, 7, &[], "other kind")).await;
    let want = ev(&a, 1, &[], "match");
    publisher.publish_ok(&want).await;

    let got = sub.next_event("s1").await;
    assert_eq!(got, event_value(&want));
    sub.expect_silence(500).await;

    // Several subscriptions on one connection: each gets its own copy under its own id.
    let _ = sub
        .req("s2", &[json!({"kinds": [1], "authors": [pk_hex(&a)]})])
        .await;
    let e = ev(&a, 1, &[], "two subs");
    publisher.publish_ok(&e).await;
    assert_eq!(sub.next_event("s1").await, event_value(&e));
    assert_eq!(sub.next_event("s2").await, event_value(&e));
}

#[tokio::test]
async fn publisher_receives_its_own_event_on_its_subscription() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    ws.req("mine", &[json!({"authors": [pk_hex(&k)]})]).await;
    let e = ev(&k, 1, &[], "echo");
    ws.publish_ok(&e).await;
    assert_eq!(ws.next_event("mine").await, event_value(&e));
}

#[tokio::test]
async fn req_with_existing_sub_id_replaces_it() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let (a, b) = (keys(), keys());
    let old_a = ev(&a, 1, &[], "old a");
    let old_b = ev(&b, 1, &[], "old b");
    let mut publisher = relay.connect().await;
    publisher.publish_ok(&old_a).await;
    publisher.publish_ok(&old_b).await;

    assert_eq!(
        ws.req("same", &[json!({"authors": [pk_hex(&a)]})]).await,
        vec![event_value(&old_a)]
    );
    // Same id, new filter: stored results of the new filter, then live for the new filter only.
    assert_eq!(
        ws.req("same", &[json!({"authors": [pk_hex(&b)]})]).await,
        vec![event_value(&old_b)]
    );
    publisher.publish_ok(&ev(&a, 1, &[], "new a")).await;
    let nb = ev(&b, 1, &[], "new b");
    publisher.publish_ok(&nb).await;
    let got = ws.next_event("same").await;
    assert_eq!(
        got,
        event_value(&nb),
        "old filter still active after replacement"
    );
    ws.expect_silence(500).await;
}

#[tokio::test]
async fn close_stops_delivery() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    ws.req("c", &[json!({"authors": [pk_hex(&k)]})]).await;
    ws.send(&json!(["CLOSE", "c"])).await;
    // Keep a second subscription so we know when fan-out for the event has happened.
    ws.req("witness", &[json!({"authors": [pk_hex(&k)]})]).await;
    let mut publisher = relay.connect().await;
    let e = ev(&k, 1, &[], "after close");
    publisher.publish_ok(&e).await;
    assert_eq!(ws.next_event("witness").await, event_value(&e));
    // Nothing for the closed subscription, now or a little later.
    let mut late = Vec::new();
    while let Some(m) = ws.recv_timeout(Duration::from_millis(500)).await {
        late.push(m);
    }
    assert!(
        !late.iter().any(|m| m[0] == "EVENT" && m[1] == "c"),
        "closed subscription still delivered: {late:?}"
    );
}

#[tokio::test]
async fn count_returns_the_number_of_matches() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    for i in 0..3 {
        ws.publish_ok(&ev(&k, 1, &[&["t", "counted"]], &format!("{i}")))
            .await;
    }
    ws.publish_ok(&ev(&k, 7, &[], "reaction")).await;
    let me = pk_hex(&k);
    assert_eq!(ws.count("c1", &[json!({"authors": [me]})]).await, Ok(4));
    assert_eq!(
        ws.count("c2", &[json!({"authors": [me], "kinds": [1]})])
            .await,
        Ok(3)
    );
    assert_eq!(
        ws.count("c3", &[json!({"authors": [me], "#t": ["counted"]})])
            .await,
        Ok(3)
    );
    assert_eq!(
        ws.count("c4", &[json!({"authors": [me], "kinds": [30023]})])
            .await,
        Ok(0)
    );
    // Several filters: one count of the union.
    assert_eq!(
        ws.count(
            "c5",
            &[
                json!({"authors": [me], "kinds": [1]}),
                json!({"authors": [me], "kinds": [7]})
            ]
        )
        .await,
        Ok(4)
    );
}

#[tokio::test]
async fn replaceable_kinds_keep_only_the_newest() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let t = now() - 1000;
    for kind in [0u16, 3, 10002, 19999] {
        let k = keys();
        let older = ev_at(&k, t + 10, kind, &[], "older");
        let newer = ev_at(&k, t + 20, kind, &[], "newer");
        ws.publish_ok(&older).await;
        ws.publish_ok(&newer).await;
        let got = ws
            .query_ids(&[json!({"authors": [pk_hex(&k)], "kinds": [kind]})])
            .await;
        assert_eq!(got, vec![id_hex(&newer)], "kind {kind}");
        assert!(
            ws.query(&[json!({"ids": [id_hex(&older)]})])
                .await
                .is_empty(),
            "kind {kind}: replaced version still served by id"
        );

        // An older version arriving later is refused.
        let oldest = ev_at(&k, t + 5, kind, &[], "oldest");
        let (ok, msg) = ws.publish(&oldest).await;
        assert!(!ok, "kind {kind}: older replaceable accepted");
        assert_prefix(&msg, "invalid:");
        let got = ws
            .query_ids(&[json!({"authors": [pk_hex(&k)], "kinds": [kind]})])
            .await;
        assert_eq!(got, vec![id_hex(&newer)], "kind {kind} after refused older");
    }
}

#[tokio::test]
async fn replaceable_tie_lowest_id_wins() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let t = now() - 100;

    // Higher id first, then the lower id with the same created_at: the lower one replaces it.
    let k = keys();
    let (lo, hi) = tie_pair(&k, t, 0);
    ws.publish_ok(&hi).await;
    ws.publish_ok(&lo).await;
    assert_eq!(
        ws.query_ids(&[json!({"authors": [pk_hex(&k)], "kinds": [0]})])
            .await,
        vec![id_hex(&lo)]
    );

    // Lower id first: the higher one loses the tie and is refused.
    let k = keys();
    let (lo, hi) = tie_pair(&k, t, 0);
    ws.publish_ok(&lo).await;
    let (ok, msg) = ws.publish(&hi).await;
    assert!(!ok, "tie: higher id accepted over a lower one");
    assert_prefix(&msg, "invalid:");
    assert_eq!(
        ws.query_ids(&[json!({"authors": [pk_hex(&k)], "kinds": [0]})])
            .await,
        vec![id_hex(&lo)]
    );
}

fn tie_pair(k: &secp256k1::Keypair, t: u64, kind: u16) -> (mls_proto::Event, mls_proto::Event) {
    let a = ev_at(k, t, kind, &[&["d", "tie"]], "{\"name\":\"a\"}");
    let b = ev_at(k, t, kind, &[&["d", "tie"]], "{\"name\":\"b\"}");
    if a.id.to_hex() < b.id.to_hex() {
        (a, b)
    } else {
        (b, a)
    }
}

#[tokio::test]
async fn addressable_events_are_keyed_by_pubkey_kind_and_d() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let me = pk_hex(&k);
    let t = now() - 1000;
    let a1 = ev_at(&k, t + 10, 30023, &[&["d", "post-a"]], "a v1");
    let a2 = ev_at(&k, t + 20, 30023, &[&["d", "post-a"]], "a v2");
    let b1 = ev_at(&k, t + 10, 30023, &[&["d", "post-b"]], "b v1");
    let nod = ev_at(&k, t + 10, 30023, &[], "no d tag");
    for e in [&a1, &a2, &b1, &nod] {
        ws.publish_ok(e).await;
    }
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "kinds": [30023], "#d": ["post-a"]})])
            .await,
        vec![id_hex(&a2)]
    );
    let mut all = ws
        .query_ids(&[json!({"authors": [me], "kinds": [30023]})])
        .await;
    all.sort();
    let mut want = vec![id_hex(&a2), id_hex(&b1), id_hex(&nod)];
    want.sort();
    assert_eq!(all, want);

    // Older version of post-a refused.
    let a0 = ev_at(&k, t + 5, 30023, &[&["d", "post-a"]], "a v0");
    let (ok, msg) = ws.publish(&a0).await;
    assert!(!ok, "older addressable accepted");
    assert_prefix(&msg, "invalid:");

    // Same d from another author is a different address.
    let other = ev_at(&keys(), t + 1, 30023, &[&["d", "post-a"]], "other's");
    ws.publish_ok(&other).await;

    // Tie on an addressable: lower id wins.
    let (lo, hi) = tie_pair(&k, t + 100, 30078);
    ws.publish_ok(&lo).await;
    let (ok, msg) = ws.publish(&hi).await;
    assert!(!ok, "addressable tie: higher id accepted");
    assert_prefix(&msg, "invalid:");
}

#[tokio::test]
async fn ephemeral_events_are_delivered_live_and_never_stored() {
    let relay = Relay::start().await;
    let k = keys();
    let mut sub = relay.connect().await;
    sub.req("eph", &[json!({"kinds": [20001], "authors": [pk_hex(&k)]})])
        .await;

    let mut publisher = relay.connect().await;
    let e = ev(&k, 20001, &[], "ephemeral");
    let (ok, msg) = publisher.publish(&e).await;
    assert!(ok, "ephemeral refused: {msg}");
    assert_eq!(sub.next_event("eph").await, event_value(&e));

    let mut late = relay.connect().await;
    assert!(late.query(&[json!({"ids": [id_hex(&e)]})]).await.is_empty());
    assert!(late
        .query(&[json!({"kinds": [20001], "authors": [pk_hex(&k)]})])
        .await
        .is_empty());
    assert_eq!(
        late.count("ce", &[json!({"kinds": [20001], "authors": [pk_hex(&k)]})])
            .await,
        Ok(0)
    );
}

#[tokio::test]
async fn top_level_welcome_444_is_refused() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let e = ev(&keys(), 444, &[&["e", &"00".repeat(32)]], "welcome");
    let (ok, msg) = ws.publish(&e).await;
    assert!(!ok, "top-level 444 accepted");
    assert_eq!(msg, "invalid: kind 444 must be gift-wrapped");
}

#[tokio::test]
async fn auth_event_kind_22242_is_never_stored_or_served() {
    let relay = Relay::start().await;
    let k = keys();
    let mut ws = relay.connect_authed(&k).await;
    let mut other = relay.connect().await;
    assert!(other.query(&[json!({"kinds": [22242]})]).await.is_empty());
    // Published as a plain EVENT, 22242 is ephemeral-range: never served afterwards either.
    let c = ws.challenge().await;
    let e = auth_event(&k, &c, &relay.ws_url());
    let (_ok, msg) = ws.publish(&e).await;
    if !_ok {
        assert_any_prefix(&msg, STANDARD_PREFIXES);
    }
    assert!(other
        .query(&[json!({"kinds": [22242], "authors": [pk_hex(&k)]})])
        .await
        .is_empty());
}

#[tokio::test]
async fn refused_and_duplicate_events_are_not_delivered_live() {
    let relay = Relay::start().await;
    let k = keys();
    let me = pk_hex(&k);
    let mut sub = relay.connect().await;
    sub.req("watch", &[json!({"authors": [me]})]).await;
    let mut publisher = relay.connect().await;
    let t = now() - 100;

    let newer = ev_at(&k, t + 10, 0, &[], "{\"name\":\"newer\"}");
    publisher.publish_ok(&newer).await;
    assert_eq!(sub.next_event("watch").await, event_value(&newer));

    // Older replaceable (OK false), duplicate (OK true duplicate:), bad signature (OK false),
    // already expired (OK false), deleted then re-submitted (OK false): none goes out live.
    let older = ev_at(&k, t, 0, &[], "{\"name\":\"older\"}");
    let (ok, _) = publisher.publish(&older).await;
    assert!(!ok);
    let (ok, msg) = publisher.publish(&newer).await;
    assert!(ok);
    assert_prefix(&msg, "duplicate:");
    let mut bad = ev(&k, 1, &[], "bad sig");
    bad.sig.0[1] ^= 1;
    let (ok, _) = publisher.publish(&bad).await;
    assert!(!ok);
    let expired = ev(
        &k,
        1,
        &[&["expiration", &(now() - 5).to_string()]],
        "expired",
    );
    let (ok, _) = publisher.publish(&expired).await;
    assert!(!ok);
    let doomed = ev(&k, 1, &[], "doomed");
    publisher.publish_ok(&doomed).await;
    assert_eq!(sub.next_event("watch").await, event_value(&doomed));
    let del = ev(&k, 5, &[&["e", &id_hex(&doomed)]], "");
    publisher.publish_ok(&del).await;
    assert_eq!(sub.next_event("watch").await, event_value(&del));
    let (ok, _) = publisher.publish(&doomed).await;
    assert!(!ok);

    // A final accepted event marks the end: it must be the next thing the subscriber sees.
    let last = ev(&k, 1, &[], "last");
    publisher.publish_ok(&last).await;
    assert_eq!(
        sub.next_event("watch").await,
        event_value(&last),
        "a refused or duplicate event was delivered live"
    );
    sub.expect_silence(300).await;
}

/// One connection's EVENTs are checked concurrently (on the verification pool, every core),
/// yet reach the store and are answered in arrival order: a burst of versions of one
/// replaceable event with rising `created_at` (a version that reached the store after a newer
/// one would be refused as older), badly signed and ephemeral events among them, gets its OKs
/// in send order with every version accepted, and a REQ sent right behind the burst is
/// answered after all of them and sees the last version.
#[tokio::test]
async fn a_burst_on_one_connection_is_stored_and_answered_in_arrival_order() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let t = now() - 1000;
    let mut sent = Vec::new(); // (id, accepted)
    let mut last_version = String::new();
    for i in 0..300u64 {
        let (e, accepted) = match i % 10 {
            3 => {
                let mut bad = ev_at(&k, t + i, 1, &[], &format!("bad signature {i}"));
                bad.sig.0[0] ^= 1;
                (bad, false)
            }
            7 => (ev(&k, 20001, &[], &format!("ephemeral {i}")), true),
            _ => {
                let v = ev_at(&k, t + i, 10002, &[], &format!("version {i}"));
                last_version = id_hex(&v);
                (v, true)
            }
        };
        sent.push((id_hex(&e), accepted));
        ws.send(&json!(["EVENT", e])).await;
    }
    ws.send_req(
        "after",
        &[json!({"authors": [pk_hex(&k)], "kinds": [10002]})],
    )
    .await;
    let mut oks = Vec::new();
    let mut stored = Vec::new();
    loop {
        let v = ws.recv().await;
        match v[0].as_str() {
            Some("OK") => {
                assert!(stored.is_empty(), "an OK after the REQ's answer: {v}");
                oks.push((
                    v[1].as_str().unwrap().to_owned(),
                    v[2] == true,
                    v[3].clone(),
                ));
            }
            Some("EVENT") if v[1] == "after" => {
                stored.push(v[2]["id"].as_str().unwrap().to_owned())
            }
            Some("EOSE") if v[1] == "after" => break,
            _ => {} // the AUTH challenge
        }
    }
    assert_eq!(
        oks.len(),
        sent.len(),
        "one OK per EVENT before the REQ's EOSE"
    );
    for (i, ((want_id, want_ok), (id, ok, msg))) in sent.iter().zip(&oks).enumerate() {
        assert_eq!(id, want_id, "OK #{i} is not for the #{i} EVENT sent");
        assert_eq!(ok, want_ok, "EVENT #{i}: {msg}");
        if !want_ok {
            assert_prefix(msg.as_str().unwrap(), "invalid:");
        }
    }
    assert_eq!(
        stored,
        vec![last_version],
        "the REQ sees the last version only"
    );
}
