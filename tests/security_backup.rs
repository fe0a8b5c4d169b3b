//! Backups keep the rules, and client-chosen keys never overflow the store (issue 8, rules 7
//! and 11), from the attacker's side: a stranger reading a restored relay, a client sending
//! group ids, `d` tags and tag values longer than the store can hold.

mod common;
mod support_api;
mod support_mls;

use common::*;
use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::{json, Value};
use support_mls::{giftwrap, group_message, marmot_keypackage, roster, unique_id};

/// The bounds under test (`mls_gateway_rules::MAX_GROUP_ID`, `MAX_KEY_PART`,
/// `mls_store::MAX_TAG_VALUE_LEN`), spelled out so the test reads as a client sees them.
const MAX_GROUP_ID: usize = 200;
const MAX_KEY_PART: usize = 256;
const MAX_TAG_VALUE: usize = 1024;

fn config(admin: &Keypair) -> String {
    format!(
        "[auth]\nenabled = true\n[extensions.mls_gateway]\nkeypackage_claims = true\nadmin_pubkeys = [\"{}\"]\n",
        pk_hex(admin)
    )
}

/// Runs `export` against `relay`'s config; returns stdout.
#[track_caller]
fn export(relay: &Relay) -> String {
    let out = relay.cli(&["export"], None);
    assert!(out.success(), "export failed: {out:?}");
    out.stdout
}

/// `who` is served no event and counted none for any of `filters` (a CLOSED is also fine:
/// how a refusal reads is another rule's business; what matters is that nothing leaks).
async fn reads_nothing(ws: &mut Ws, who: &str, filters: &[Value]) {
    for f in filters {
        let sub = format!("s{}", rand_suffix());
        ws.send_req(&sub, std::slice::from_ref(f)).await;
        if let Ok(evs) = ws.collect(&sub).await {
            ws.send(&json!(["CLOSE", sub])).await;
            assert!(evs.is_empty(), "{who} read {f}: {evs:?}");
        }
        let sub = format!("c{}", rand_suffix());
        if let Ok(n) = ws.count(&sub, std::slice::from_ref(f)).await {
            assert_eq!(n, 0, "{who} counted {n} for {f}");
        }
    }
}

/// The ids `ws` is served for `filter`, sorted.
async fn read_ids(ws: &mut Ws, filter: Value) -> Vec<String> {
    let mut ids = ws.query_ids(&[filter]).await;
    ids.sort();
    ids
}

fn sorted(events: &[&Event]) -> Vec<String> {
    let mut ids: Vec<String> = events.iter().map(|e| id_hex(e)).collect();
    ids.sort();
    ids
}

async fn group_info(relay: &Relay, who: &Keypair, group: &str) -> HttpResponse {
    support_api::call(relay, "GET", &format!("/groups/{group}"), Some(who), None).await
}

/// A relay with a group gated by each membership source (roster 450, gift wrap 1059 with
/// `h`, the admin API), KeyPackage claims and deletions is backed up and restored into a fresh
/// store: a stranger then reads and counts nothing of those groups on any path, the members
/// read everything, the rules' state (roster `seq`, claims, tombstones, last epoch) is the
/// same, and a second backup is byte for byte the first.
#[tokio::test]
async fn backup_restore_keeps_every_gate_and_all_gateway_state() {
    let (admin, alice, bob, carol, dave, eve) = (keys(), keys(), keys(), keys(), keys(), keys());
    let cfg = config(&admin);
    let mut a = Relay::builder().config(&cfg).start().await;
    let mut al = a.connect_authed(&alice).await;
    let mut bo = a.connect_authed(&bob).await;

    // Roster group: bob a member, carol added then removed.
    let roster_group = unique_id();
    let rosters = [
        roster(&alice, &roster_group, "bootstrap", 1, &[&bob]),
        roster(&alice, &roster_group, "add", 2, &[&carol]),
        roster(&alice, &roster_group, "remove", 3, &[&carol]),
    ];
    for r in &rosters {
        al.publish_ok(r).await;
    }
    let roster_msgs = [
        group_message(&roster_group, Some(1)),
        group_message(&roster_group, Some(2)),
    ];
    for m in &roster_msgs {
        al.publish_ok(m).await;
    }
    // Gift-wrap group: alice's wrap to bob creates it.
    let wrap_group = unique_id();
    let wrap = giftwrap(&[&bob], Some(&wrap_group));
    al.publish_ok(&wrap).await;
    let wrap_msg = group_message(&wrap_group, None);
    bo.publish_ok(&wrap_msg).await;
    // Admin-API group: alice and bob added by a configured admin.
    let api_group = unique_id();
    let resp = support_api::call(
        &a,
        "POST",
        &format!("/admin/groups/{api_group}/members"),
        Some(&admin),
        Some(&json!({"pubkeys": [pk_hex(&alice), pk_hex(&bob)]})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let api_msg = group_message(&api_group, Some(7));
    al.publish_ok(&api_msg).await;
    // A plain welcome to bob (no group).
    let welcome = giftwrap(&[&bob], None);
    al.publish_ok(&welcome).await;
    // KeyPackages of dave, two of them claimed by alice.
    let mut da = a.connect_authed(&dave).await;
    let kps: Vec<Event> = (0..3)
        .map(|_| marmot_keypackage(&dave, &unique_id()))
        .collect();
    for kp in &kps {
        da.publish_ok(kp).await;
    }
    let kp_filter = json!({"kinds": [443], "authors": [pk_hex(&dave)]});
    let claimed = read_ids(&mut al, kp_filter.clone()).await;
    assert_eq!(claimed.len(), 2, "alice claims two of dave's three");
    // A deletion.
    let note = ev(&alice, 1, &[], "soon deleted");
    al.publish_ok(&note).await;
    al.publish_ok(&ev(&alice, 5, &[&["e", &id_hex(&note)]], ""))
        .await;
    let info_before = group_info(&a, &bob, &roster_group).await.json();
    drop((al, bo, da));
    a.kill();

    let backup = export(&a);
    let mut b = Relay::builder().config(&cfg).prepare();
    let out = b.cli(&["import"], Some(backup.as_bytes()));
    assert!(out.success(), "import failed: {out:?}");
    let second = export(&b);
    b.spawn().await;

    // Strangers — eve, and carol whom the roster removed — read and count nothing.
    let groups = [&roster_group, &wrap_group, &api_group];
    let mut group_ids: Vec<String> = rosters.iter().chain(&roster_msgs).map(id_hex).collect();
    group_ids.extend([&wrap, &wrap_msg, &api_msg, &welcome].map(id_hex));
    let mut filters: Vec<Value> = groups
        .iter()
        .map(|g| json!({"kinds": [445], "#h": [g]}))
        .collect();
    filters.extend([
        json!({"#h": groups}),
        json!({"kinds": [445, 450, 1059]}),
        json!({"ids": group_ids}),
        json!({"#p": [pk_hex(&bob)], "kinds": [1059]}),
        json!({"kinds": [450], "#h": [&roster_group]}),
    ]);
    for (name, who) in [("eve", &eve), ("carol", &carol)] {
        let mut ws = b.connect_authed(who).await;
        reads_nothing(&mut ws, name, &filters).await;
        for g in groups {
            let resp = group_info(&b, who, g).await;
            assert_eq!(resp.status, 404, "{name} sees group info: {}", resp.text());
        }
    }
    let mut anon = b.connect().await;
    reads_nothing(&mut anon, "anonymous", &filters).await;

    // Members read everything of their groups.
    let mut bo = b.connect_authed(&bob).await;
    let mut al = b.connect_authed(&alice).await;
    let h = |g: &str| json!({"kinds": [445], "#h": [g]});
    for ws in [&mut bo, &mut al] {
        assert_eq!(
            read_ids(ws, h(&roster_group)).await,
            sorted(&[&roster_msgs[0], &roster_msgs[1]])
        );
        assert_eq!(read_ids(ws, h(&wrap_group)).await, sorted(&[&wrap_msg]));
        assert_eq!(read_ids(ws, h(&api_group)).await, sorted(&[&api_msg]));
        assert_eq!(
            read_ids(ws, json!({"kinds": [450], "#h": [&roster_group]})).await,
            sorted(&rosters.iter().collect::<Vec<_>>())
        );
    }
    assert_eq!(
        read_ids(&mut bo, json!({"kinds": [1059], "#p": [pk_hex(&bob)]})).await,
        sorted(&[&wrap, &welcome])
    );
    for g in groups {
        let resp = group_info(&b, &bob, g).await;
        assert_eq!(resp.status, 200, "bob's group {g}: {}", resp.text());
    }
    assert_eq!(
        group_info(&b, &bob, &roster_group).await.json(),
        info_before
    );

    // The rules' state came back: claims hold (bob gets only dave's last, unclaimed one),
    // the deletion holds, and the roster's seq goes on from where it was.
    let got = read_ids(&mut bo, kp_filter).await;
    assert_eq!(got.len(), 1, "claims lost in the restore: bob got {got:?}");
    assert!(!claimed.contains(&got[0]), "bob was served alice's claim");
    let (ok, msg) = al.publish(&note).await;
    assert!(!ok, "deleted note accepted again after the restore");
    assert_prefix(&msg, "blocked:");
    let (ok, msg) = al
        .publish(&roster(&alice, &roster_group, "add", 3, &[&carol]))
        .await;
    assert!(!ok, "roster seq 3 replayed after the restore");
    assert_prefix(&msg, "blocked:");
    al.publish_ok(&roster(&alice, &roster_group, "add", 4, &[&carol]))
        .await;

    // A backup only goes into an empty store: merging would mix two relays' gates.
    b.kill();
    let again = b.cli(&["import"], Some(backup.as_bytes()));
    assert!(!again.success(), "restored over existing data: {again:?}");
    assert!(again.stderr.contains("already holds data"), "{again:?}");

    // The backup is versioned, and backing up the restored store gives the same bytes.
    assert_eq!(
        backup.lines().next(),
        Some(r#"{"format":"mls-gateway-export","version":1}"#)
    );
    assert!(
        second == backup,
        "second export differs from the first ({} vs {} bytes)",
        second.len(),
        backup.len()
    );
}

/// An unknown format or version is refused by name, with a non-zero exit, and nothing is
/// stored; plain event lines (as other relays export them) are still imported.
#[tokio::test]
async fn import_refuses_unknown_formats_and_still_reads_plain_events() {
    let relay = Relay::builder().prepare();
    let note = ev(&keys(), 1, &[], "from another relay");
    for (header, named) in [
        (
            r#"{"format":"mls-gateway-export","version":2}"#,
            "version 2",
        ),
        (
            r#"{"format":"other-relay-dump","version":1}"#,
            "other-relay-dump",
        ),
    ] {
        let input = format!("{header}\n{}\n", note.to_json());
        let out = relay.cli(&["import"], Some(input.as_bytes()));
        assert!(!out.success(), "{header} accepted: {out:?}");
        assert!(
            out.stderr.contains(named),
            "error does not name {named}: {out:?}"
        );
    }
    let out = relay.cli(&["export"], None);
    assert!(out.success(), "{out:?}");
    assert!(
        !out.stdout.contains(&id_hex(&note)),
        "a refused backup stored events"
    );
    // strfry / nostr-rs-relay style: one event per line, no header.
    let out = relay.cli(
        &["import"],
        Some(format!("{}\n", note.to_json()).as_bytes()),
    );
    assert!(out.success(), "{out:?}");
    assert!(out.stderr.contains("imported 1 events"), "{out:?}");
    assert!(relay.cli(&["export"], None).stdout.contains(&id_hex(&note)));
}

/// Long group ids, `d` tags and indexed tag values are refused `invalid:` at the length the
/// store holds, never answered `error:` nor stored ungated; at the limit they are accepted.
#[tokio::test]
async fn client_chosen_keys_are_bounded_with_invalid() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let (alice, stranger) = (keys(), keys());
    let mut al = relay.connect_authed(&alice).await;

    #[track_caller]
    fn refused_invalid((ok, msg): (bool, String), what: &str) {
        assert!(!ok, "{what} accepted");
        assert_prefix(&msg, "invalid:");
    }

    for len in [MAX_GROUP_ID + 1, 240, 300] {
        let long = "g".repeat(len);
        refused_invalid(
            al.publish(&roster(&alice, &long, "bootstrap", 1, &[]))
                .await,
            &format!("450 with an h of {len} bytes"),
        );
        refused_invalid(
            al.publish(&group_message(&long, None)).await,
            &format!("445 with an h of {len} bytes"),
        );
        refused_invalid(
            al.publish(&giftwrap(&[&alice], Some(&long))).await,
            &format!("1059 with an h of {len} bytes"),
        );
    }
    // Positive control: a group id at the limit is gated like any other.
    let at_limit = "g".repeat(MAX_GROUP_ID);
    al.publish_ok(&roster(&alice, &at_limit, "bootstrap", 1, &[]))
        .await;
    let msg = group_message(&at_limit, Some(1));
    al.publish_ok(&msg).await;
    let filter = json!({"kinds": [445], "#h": [&at_limit]});
    assert_eq!(read_ids(&mut al, filter.clone()).await, vec![id_hex(&msg)]);
    let mut st = relay.connect_authed(&stranger).await;
    reads_nothing(&mut st, "stranger", &[filter]).await;
    let (ok, msg) = st.publish(&group_message(&at_limit, None)).await;
    assert!(!ok, "a stranger posted in a gated group");
    assert_prefix(&msg, "restricted:");

    // KeyPackage `d` (30443) and key reference.
    let long_d = "d".repeat(MAX_KEY_PART + 1);
    let kp = resign_with_tag(
        &alice,
        &support_api::keypackage(&alice, 30443, &unique_id(), "AAEAASDKu4HPHhXparg+o4NY", &[]),
        "d",
        &long_d,
    );
    refused_invalid(al.publish(&kp).await, "30443 with a long d");
    let ok_d = "d".repeat(MAX_KEY_PART);
    let kp = resign_with_tag(
        &alice,
        &support_api::keypackage(&alice, 30443, &unique_id(), "AAEAASDKu4HPHhXparg+o4NY", &[]),
        "d",
        &ok_d,
    );
    al.publish_ok(&kp).await;
    refused_invalid(
        al.publish(&marmot_keypackage(&alice, &"r".repeat(MAX_KEY_PART + 1)))
            .await,
        "443 with a long key reference",
    );
    al.publish_ok(&marmot_keypackage(&alice, &"r".repeat(MAX_KEY_PART)))
        .await;

    // Any addressable event's `d`, and any indexed single-letter tag value.
    let over = "v".repeat(MAX_TAG_VALUE + 1);
    let at = "v".repeat(MAX_TAG_VALUE);
    refused_invalid(
        al.publish(&ev(&alice, 30000, &[&["d", &over]], "")).await,
        "30000 with a long d",
    );
    refused_invalid(
        al.publish(&ev(&alice, 1, &[&["t", &over]], "")).await,
        "kind 1 with a long t",
    );
    let list = ev(&alice, 30000, &[&["d", &at]], "");
    al.publish_ok(&list).await;
    let note = ev(&alice, 1, &[&["t", &at]], "");
    al.publish_ok(&note).await;
    assert_eq!(
        read_ids(&mut al, json!({"#t": [&at]})).await,
        vec![id_hex(&note)]
    );
    assert_eq!(
        read_ids(&mut al, json!({"kinds": [30000], "#d": [&at]})).await,
        vec![id_hex(&list)]
    );
    // Long multi-letter tags are not indexed and stay allowed.
    al.publish_ok(&ev(&alice, 1, &[&["alt", &over]], "")).await;
}

/// `ev` re-signed by `k` with its `name` tag set to `value` (added when absent).
fn resign_with_tag(k: &Keypair, e: &Event, name: &str, value: &str) -> Event {
    let mut tags = e.tags.clone();
    match tags
        .iter_mut()
        .find(|t| t.first().map(String::as_str) == Some(name))
    {
        Some(t) => t[1] = value.to_string(),
        None => tags.push(vec![name.to_string(), value.to_string()]),
    }
    Event::sign(k, e.created_at, e.kind, tags, &e.content)
}

/// A restore records again who may read each event once the state is back (a backup lists
/// the events before the state that gates their groups): on the restored relay a stranger's
/// broad read of group messages is kept to what it may see by the store — a whole, empty
/// answer under a candidate bound smaller than the group's history — while the member reads
/// them.
#[tokio::test]
async fn a_restore_records_who_may_read_each_event_over_the_restored_state() {
    let (admin, alice, bob, eve) = (keys(), keys(), keys(), keys());
    const BOUND: usize = 10;
    let cfg = format!(
        "{}[limitation]\nmax_query_candidates = {BOUND}\n",
        config(&admin)
    );
    let mut a = Relay::builder().config(&cfg).start().await;
    let group = unique_id();
    let mut al = a.connect_authed(&alice).await;
    al.publish_ok(&roster(&alice, &group, "bootstrap", 1, &[&bob]))
        .await;
    let mut bo = a.connect_authed(&bob).await;
    for _ in 0..BOUND * 3 {
        bo.publish_ok(&group_message(&group, None)).await;
    }
    a.kill();

    let backup = export(&a);
    let mut b = Relay::builder().config(&cfg).prepare();
    let out = b.cli(&["import"], Some(backup.as_bytes()));
    assert!(out.success(), "import failed: {out:?}");
    b.spawn().await;

    let mut ev = b.connect_authed(&eve).await;
    let sub = "broad";
    ev.send_req(sub, &[json!({"kinds": [445]})]).await;
    let got = ev.collect(sub).await;
    assert_eq!(
        got.map(|evs| evs.len()),
        Ok(0),
        "eve's broad read: a whole, empty answer (EOSE), not a walk through the group's messages"
    );
    assert_eq!(ev.count("c", &[json!({"kinds": [445]})]).await, Ok(0));
    let mut bo = b.connect_authed(&bob).await;
    let got = bo.query(&[json!({"kinds": [445], "limit": 5})]).await;
    assert_eq!(got.len(), 5, "the member reads the restored messages");
}
