//! Security rules 8 and 10 (issue 8), from the attacker's side, against the real binary:
//!
//! - rule 8: hidden events cannot make a read expensive. A stranger's `{"kinds":[1059]}` is
//!   read through its own mailbox (it finds its own gift wrap without walking the others'),
//!   its `{}` is kept to what it may see by the store itself (visibility as data: the others'
//!   wraps are never examined, the answer is whole), and a REQ / COUNT that must still
//!   examine hidden events one by one stops at `limitation.max_query_candidates`, saying so;
//! - rule 10: answers do not reveal what they protect. A REQ for a group's 445s / 450s
//!   answers the same whether the group is gated or does not exist; an `ids` REQ answers the
//!   same whatever `#p` (or other field) it adds; with KeyPackage claims on, another owner's
//!   KeyPackages are not handed out by live delivery, only by a stored REQ that claims them.
//!
//! Each attack comes with its positive control: the rightful reader still gets through.

mod common;
mod support_api;
mod support_mls;

use common::*;
use mls_proto::Event;
use serde_json::{json, Value};
use support_mls::*;

/// A REQ's whole answer, for comparing two answers: the events' ids, and how it ended
/// (`EOSE`, or the `CLOSED` message's prefix).
async fn answer(ws: &mut Ws, filters: &[Value]) -> (Vec<String>, String) {
    let sub = format!("a-{}", rand_suffix());
    ws.send_req(&sub, filters).await;
    let got = ws.collect(&sub).await;
    ws.send(&json!(["CLOSE", sub])).await;
    match got {
        Ok(evs) => (
            evs.iter()
                .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
                .collect(),
            "EOSE".into(),
        ),
        Err(msg) => (
            Vec::new(),
            format!("CLOSED {}", msg.split(':').next().unwrap_or_default()),
        ),
    }
}

/// `["COUNT", sub, {…}]`'s object, or `Err(CLOSED message)`.
async fn count_raw(ws: &mut Ws, filters: &[Value]) -> Result<Value, String> {
    let sub = format!("c-{}", rand_suffix());
    let mut msg = vec![json!("COUNT"), json!(sub)];
    msg.extend(filters.iter().cloned());
    ws.send(&Value::Array(msg)).await;
    let v = ws
        .wait_for("COUNT/CLOSED", |v| {
            (v[0] == "COUNT" || v[0] == "CLOSED") && v[1] == sub
        })
        .await;
    if v[0] == "CLOSED" {
        return Err(v[2].as_str().unwrap_or_default().to_owned());
    }
    Ok(v[2].clone())
}

// ---------------------------------------------------------------------------------------------
// Rule 8: hidden events cannot make a read expensive
// ---------------------------------------------------------------------------------------------

const BOUND: usize = 40;

#[tokio::test]
async fn hidden_events_cannot_make_a_read_expensive() {
    let admin = keys();
    let relay = start_relay(
        true,
        &format!(
            "{}[limitation]\nmax_query_candidates = {BOUND}\n",
            admin_pubkeys_config(&[&admin])
        ),
    )
    .await;
    let (sender, stranger, friend) = (keys(), keys(), keys());
    let mut tx = authed(&relay, &sender).await;
    let mut other = authed(&relay, &stranger).await;
    let mut rx = authed(&relay, &friend).await;

    // The stranger's and the friend's own wraps first, then more wraps to others than one read
    // may examine.
    let own = giftwrap(&[&stranger], None);
    let theirs = giftwrap(&[&friend], None);
    tx.publish_ok(&own).await;
    tx.publish_ok(&theirs).await;
    for _ in 0..BOUND + 20 {
        let others = keys();
        tx.publish_ok(&giftwrap(&[&others], None)).await;
    }

    // The stranger's mailbox read goes through its own pubkey: its one wrap, a whole answer,
    // never cut short by the others' wraps.
    let mine = [id(&own)];
    let mine: Vec<&str> = mine.iter().map(String::as_str).collect();
    for f in [
        json!({"kinds": [1059]}),
        json!({"kinds": [1059], "limit": 1}),
    ] {
        expect_req(
            &mut other,
            "stranger",
            std::slice::from_ref(&f),
            Want::Events(&mine),
        )
        .await;
        assert_eq!(
            count_raw(&mut other, std::slice::from_ref(&f)).await,
            Ok(json!({"count": 1})),
            "COUNT {f}"
        );
    }

    // A read that cannot use a mailbox index is kept to the stranger's audience by the store:
    // its `{}` walks only what it may see, so the others' wraps are never examined and the
    // answer is whole (EOSE), the COUNT exact.
    expect_req(&mut other, "stranger", &[json!({})], Want::Events(&mine)).await;
    assert_eq!(
        count_raw(&mut other, &[json!({})]).await,
        Ok(json!({"count": 1})),
        "COUNT {{}}"
    );

    // What the store cannot tell by itself is still bounded: messages a group served open
    // (stored for any reader) stay in every reader's scope after an admin gates the group,
    // and the visibility rule hides them one by one. A stranger's read of them stops at the
    // bound, saying so, instead of walking them all.
    let group = unique_id();
    for _ in 0..BOUND + 20 {
        tx.publish_ok(&group_message(&group, None)).await;
    }
    let gated = support_api::call(
        &relay,
        "POST",
        &format!("/admin/groups/{group}/members"),
        Some(&admin),
        Some(&support_api::pubkeys_body(&[pk_hex(&friend)])),
    )
    .await;
    assert_eq!(gated.status, 200, "{}", gated.text());
    let sub = "group-messages";
    other.send_req(sub, &[json!({"kinds": [445]})]).await;
    let end = other.collect(sub).await;
    let msg = end.expect_err("a REQ that reached max_query_candidates ends with CLOSED");
    assert_prefix(&msg, "invalid:");
    assert!(msg.contains("max_query_candidates"), "{msg}");
    let counted = count_raw(&mut other, &[json!({"kinds": [445]})])
        .await
        .expect("a COUNT");
    assert_eq!(
        counted["approximate"],
        json!(true),
        "a COUNT that reached the bound says it is approximate: {counted}"
    );
    assert_eq!(counted["count"], json!(0), "{counted}");
    // The new member reads them, a whole answer within its limit.
    let got = rx.query(&[json!({"kinds": [445], "limit": 5})]).await;
    assert_eq!(got.len(), 5, "the member reads the group's messages");

    // Positive controls: the recipient reads its wrap the same way, and a query that reaches
    // its limit before the bound is whole.
    let friends = [id(&theirs)];
    let friends: Vec<&str> = friends.iter().map(String::as_str).collect();
    expect_req(
        &mut rx,
        "recipient",
        &[json!({"kinds": [1059]})],
        Want::Events(&friends),
    )
    .await;
    let notes: Vec<Event> = (0..5)
        .map(|i| ev(&friend, 1, &[], &format!("n{i}")))
        .collect();
    for n in &notes {
        rx.publish_ok(n).await;
    }
    let got = other.query(&[json!({"kinds": [1], "limit": 5})]).await;
    assert_eq!(got.len(), 5);
    // Split filters keep their limit: kinds 1 and 1059 together, limit 3.
    let got = rx.query(&[json!({"kinds": [1, 1059], "limit": 3})]).await;
    assert_eq!(got.len(), 3, "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// Rule 10: answers do not reveal what they protect
// ---------------------------------------------------------------------------------------------

async fn a_groups_existence_does_not_show(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (admin, member, stranger) = (keys(), keys(), keys());
    let (gated, unknown) = (unique_id(), unique_id());
    let mut adm = authed(&relay, &admin).await;
    let mut mem = authed(&relay, &member).await;
    let mut other = authed(&relay, &stranger).await;
    let mut anon = anon(&relay).await;

    adm.publish_ok(&roster(&admin, &gated, "bootstrap", 1, &[&member]))
        .await;
    let m1 = group_message(&gated, Some(1));
    mem.publish_ok(&m1).await;

    let mut readers: Vec<(&str, &mut Ws)> = vec![("stranger", &mut other)];
    if !auth {
        readers.push(("unauthenticated", &mut anon));
    }
    for (who, ws) in readers {
        for kinds in [json!([445]), json!([450]), json!([445, 450])] {
            let on_gated = [json!({"kinds": kinds, "#h": [gated]})];
            let on_unknown = [json!({"kinds": kinds, "#h": [unknown]})];
            let a = answer(ws, &on_gated).await;
            let b = answer(ws, &on_unknown).await;
            assert_eq!(
                a, b,
                "{who} (auth {auth}): kinds {kinds} of a gated group answer {a:?}, of an unknown group {b:?}"
            );
            let a = ws.count("c", &on_gated).await;
            let b = ws.count("c", &on_unknown).await;
            assert_eq!(a, b, "{who} (auth {auth}): COUNT kinds {kinds}");
        }
        // The subscription on the gated group stays open and delivers nothing.
        ws.req("live", &[json!({"kinds": [445], "#h": [gated]})])
            .await;
    }

    // Positive control: the member reads the group's messages, stored and live.
    let only = [id(&m1)];
    let only: Vec<&str> = only.iter().map(String::as_str).collect();
    let target = json!({"kinds": [445], "#h": [gated]});
    expect_req(
        &mut mem,
        "member",
        std::slice::from_ref(&target),
        Want::Events(&only),
    )
    .await;
    expect_count(
        &mut mem,
        "member",
        std::slice::from_ref(&target),
        Want::Events(&only),
    )
    .await;
    mem.req("live", &[target]).await;
    let m2 = group_message(&gated, Some(2));
    adm.publish_ok(&m2).await;
    expect_live(&mut mem, "member", "live", &id(&m2)).await;
    expect_no_live(&mut other, "stranger").await;
    if !auth {
        expect_no_live(&mut anon, "unauthenticated").await;
    }
}

#[tokio::test]
async fn a_groups_existence_does_not_show_in_the_answer_auth_on() {
    a_groups_existence_does_not_show(true).await;
}

#[tokio::test]
async fn a_groups_existence_does_not_show_in_the_answer_auth_off() {
    a_groups_existence_does_not_show(false).await;
}

#[tokio::test]
async fn extra_filter_fields_cannot_probe_who_an_event_is_for() {
    let relay = start_relay(true, "").await;
    let (sender, bob, carol, stranger) = (keys(), keys(), keys(), keys());
    let mut tx = authed(&relay, &sender).await;
    let mut rx = authed(&relay, &bob).await;
    let mut other = authed(&relay, &stranger).await;

    let wrap = giftwrap(&[&bob], None);
    let dm = noise_dm(&sender, &[&bob]);
    tx.publish_ok(&wrap).await;
    tx.publish_ok(&dm).await;

    for (what, e) in [("gift wrap", &wrap), ("noise DM", &dm)] {
        let x = id(e);
        let probes = [
            json!({"ids": [x]}),
            json!({"ids": [x], "#p": [pk_hex(&bob)]}),
            json!({"ids": [x], "#p": [pk_hex(&carol)]}),
            json!({"ids": [x], "#p": [pk_hex(&stranger)]}),
            json!({"ids": [x], "kinds": [1]}),
            json!({"ids": [x], "since": now() + 3600}),
            json!({"ids": [x], "authors": [pk_hex(&carol)]}),
        ];
        let baseline = answer(&mut other, &probes[..1]).await;
        assert_eq!(
            baseline,
            (Vec::new(), "CLOSED restricted".to_owned()),
            "{what}: a hidden event asked by id"
        );
        for p in &probes[1..] {
            let got = answer(&mut other, std::slice::from_ref(p)).await;
            assert_eq!(
                got, baseline,
                "{what}: {p} answers differently from {{\"ids\":[…]}} alone"
            );
        }
        // Positive control: the recipient gets it, with or without its own `#p`.
        for p in &probes[..2] {
            let got = answer(&mut rx, std::slice::from_ref(p)).await;
            assert_eq!(got, (vec![x.clone()], "EOSE".to_owned()), "recipient: {p}");
        }
    }
}

#[tokio::test]
async fn live_keypackages_follow_the_claim_rules() {
    let relay = start_relay(
        true,
        "[extensions.mls_gateway]\nkeypackage_claims = true\nmax_keypackages_per_query = 2\n",
    )
    .await;
    let (owner, inviter, second) = (keys(), keys(), keys());
    let op = pk_hex(&owner);
    let mut own = authed(&relay, &owner).await;
    let mut inv = authed(&relay, &inviter).await;
    let mut sec = authed(&relay, &second).await;

    own.req("mine", &[json!({"kinds": [443], "authors": [op]})])
        .await;
    inv.req("broad", &[json!({"kinds": [443]})]).await;
    inv.req("owner", &[json!({"kinds": [443, 30443], "authors": [op]})])
        .await;

    let kps: Vec<Event> = (0..3)
        .map(|_| lox_keypackage(&owner, &unique_id()))
        .collect();
    for kp in &kps {
        own.publish_ok(kp).await;
    }
    // Positive control: the owner's own connection gets them live.
    for kp in &kps {
        expect_live(&mut own, "owner", "mine", &id(kp)).await;
    }
    // Live fan-out would hand them all out without claiming: nothing arrives.
    expect_no_live(&mut inv, "another user subscribed to KeyPackages").await;

    // A stored REQ hands them out under the claim rules: the first inviter claims two, the
    // second gets the last one (served, never claimed), not the first inviter's.
    let f = [json!({"kinds": [443], "authors": [op]})];
    let first = inv.query_ids(&f).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let then = sec.query_ids(&f).await;
    assert_eq!(then.len(), 1, "{then:?}");
    assert!(
        !first.contains(&then[0]),
        "a claimed KeyPackage was handed out twice"
    );
}

// ---------------------------------------------------------------------------------------------
// Visibility as data: the store keeps broad reads to the reader's scope
// ---------------------------------------------------------------------------------------------

/// From the rightful readers' side: a broad read (no ids, authors or tags) is kept to the
/// reader's read keys by the store, and those never leave out what the reader may see — the
/// recipient of a gift wrap, the author and the recipient of a Noise DM, a group's member and
/// admin (445, 450), a configured admin (450) — while a stranger's broad read gets the public
/// note alone. By REQ `{}`, by kinds, and by COUNT.
#[tokio::test]
async fn broad_reads_serve_each_reader_what_it_may_see() {
    let configured_admin = keys();
    let relay = start_relay(true, &admin_pubkeys_config(&[&configured_admin])).await;
    let (owner, member, dm_author, stranger) = (keys(), keys(), keys(), keys());
    let group = unique_id();
    let mut o = authed(&relay, &owner).await;
    let mut m = authed(&relay, &member).await;
    let mut d = authed(&relay, &dm_author).await;
    let mut s = authed(&relay, &stranger).await;
    let mut c = authed(&relay, &configured_admin).await;

    let rost = roster(&owner, &group, "bootstrap", 1, &[&member]);
    o.publish_ok(&rost).await;
    let msg = group_message(&group, None);
    m.publish_ok(&msg).await;
    let wrap = giftwrap(&[&member], None);
    o.publish_ok(&wrap).await;
    let dm = noise_dm(&dm_author, &[&member]);
    d.publish_ok(&dm).await;
    let note = ev(&stranger, 1, &[], "public");
    s.publish_ok(&note).await;

    let ids = |events: &[&Event]| -> Vec<String> { events.iter().map(|e| id(e)).collect() };
    let cases: Vec<(&str, &mut Ws, Vec<String>)> = vec![
        ("member", &mut m, ids(&[&rost, &msg, &wrap, &dm, &note])),
        ("group admin", &mut o, ids(&[&rost, &msg, &note])),
        ("DM author", &mut d, ids(&[&dm, &note])),
        ("configured admin", &mut c, ids(&[&rost, &note])),
        ("stranger", &mut s, ids(&[&note])),
    ];
    for (who, ws, want) in cases {
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        for f in [json!({}), json!({"kinds": [1, 445, 446, 450, 1059]})] {
            expect_req(ws, who, std::slice::from_ref(&f), Want::Events(&want)).await;
            assert_eq!(
                count_raw(ws, std::slice::from_ref(&f)).await,
                Ok(json!({"count": want.len()})),
                "{who}: COUNT {f}"
            );
        }
    }
}
