//! The Loxation dialect end to end, driven by raw events against the real binary (PROTOCOL
//! §3–§6): KeyPackages with `p`/`cs`/`kpr`/`exp` and the directory (REQ and REST); a gift
//! wrap with `h` that makes its recipient a member (and the group gated); 445s with `k`
//! signed by throwaway keys, delivered live and stored only to members; a 446 Noise DM seen
//! only by its recipient and author; 450 rosters (bootstrap, remove) after which a removed
//! member stops receiving, live and stored. Each flow runs with `[auth] enabled` off and on.

mod common;
mod support_api;
mod support_mls;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use support_mls::*;

/// `GET {prefix}/groups/{g}` as `k` (NIP-98).
async fn group_info(relay: &Relay, k: &secp256k1::Keypair, g: &str) -> HttpResponse {
    support_api::call(relay, "GET", &format!("/groups/{g}"), Some(k), None).await
}

// ---------------------------------------------------------------------------------------------
// KeyPackage directory
// ---------------------------------------------------------------------------------------------

async fn loxation_keypackage_directory(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (owner, reader, mallory) = (keys(), keys(), keys());
    let op = pk_hex(&owner);
    let mut own = authed(&relay, &owner).await;
    let mut rd = authed(&relay, &reader).await;

    // Hex content (no `encoding` tag), and base64 content with `["encoding", "base64"]`.
    let (ref1, ref2) = (unique_id(), unique_id());
    let (exp1, exp2) = (now() + 86400, now() + 2 * 86400);
    let kp1 = lox_keypackage_for(&owner, &op, &ref1, exp1);
    let kp2 = ev(
        &owner,
        443,
        &[
            &["p", &op],
            &["cs", CIPHERSUITE_NAME],
            &["kpr", &ref2],
            &["exp", &exp2.to_string()],
            &["encoding", "base64"],
        ],
        "AAEAASDKu4HPHhXparg+o4NY",
    );
    open_live(
        &mut rd,
        "reader",
        "p",
        json!({"kinds": [443], "#p": [op]}),
        NOTHING,
    )
    .await;
    own.publish_ok(&kp1).await;
    own.publish_ok(&kp2).await;
    let (i1, i2) = (id(&kp1), id(&kp2));
    expect_live_set(&mut rd, "reader", "p", &[&i1, &i2]).await;

    // Refused: a past or too distant expiry, a key reference already used by someone else.
    for (e, why) in [
        (
            lox_keypackage_for(&owner, &op, &unique_id(), now() - 10),
            "past exp",
        ),
        (
            lox_keypackage_for(&owner, &op, &unique_id(), now() + 400 * 86400),
            "exp beyond keypackage_max_ttl",
        ),
    ] {
        let (ok, msg) = own.publish(&e).await;
        assert!(!ok, "{why}: accepted");
        assert_prefix(&msg, "invalid:");
    }
    let mut mal = authed(&relay, &mallory).await;
    let squat = lox_keypackage(&mallory, &ref1);
    let msg = publish_refused(&mut mal, &squat, "invalid:").await;
    assert!(msg.contains("key reference"), "{msg}");

    // The directory by REQ: `#p` (the Loxation owner tag), `authors`, `ids`. (`kpr` is a
    // multi-letter tag, which NIP-01 filters cannot name: the REST listing gives it.)
    let both = [i1.as_str(), i2.as_str()];
    check_paths(
        &mut rd,
        "reader",
        &[
            (json!({"kinds": [443], "#p": [op]}), Want::Events(&both)),
            (json!({"#p": [op]}), Want::Events(&both)),
            (json!({"authors": [op]}), Want::Events(&both)),
            (
                json!({"kinds": [443], "authors": [op]}),
                Want::Events(&both),
            ),
            (json!({"ids": [i1]}), Want::Events(&[i1.as_str()])),
            (
                json!({"ids": [i2, id(&squat)]}),
                Want::Events(&[i2.as_str()]),
            ),
        ],
    )
    .await;
    // Served unchanged.
    let served = rd.query(&[json!({"ids": [i1]})]).await;
    assert_eq!(served, vec![event_value(&kp1)]);
    served_event(&served[0]);

    // The REST listing.
    let path = format!("{}/keypackages?owner={op}", support_api::PREFIX);
    let h = support_api::nip98(&reader, &support_api::url(&relay, &path), "GET", None);
    let resp = relay.get_with(&path, &[("Authorization", &h)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let list = resp.json()["keypackages"].as_array().unwrap().clone();
    let got: BTreeSet<(String, String, u64)> = list
        .iter()
        .map(|k| {
            assert_eq!(k["owner"], op.as_str(), "{k}");
            assert_eq!(k["ciphersuite"], "0x0001", "{k}");
            (
                k["event_id"].as_str().unwrap().to_owned(),
                k["key_reference"].as_str().unwrap().to_owned(),
                k["expires_at"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        BTreeSet::from([
            (i1.clone(), ref1.clone(), exp1),
            (i2.clone(), ref2.clone(), exp2)
        ]),
        "{list:?}"
    );
    if auth {
        // Unauthenticated: the REST directory needs NIP-98, the WebSocket one an AUTH.
        let resp = relay.get(&path).await;
        support_api::assert_error(&resp, 401, "auth_required");
        let mut anon = anon(&relay).await;
        check_paths(
            &mut anon,
            "unauthenticated",
            &[
                (json!({"kinds": [443], "#p": [op]}), AUTH_REQUIRED),
                (json!({"ids": [i1]}), AUTH_REQUIRED),
            ],
        )
        .await;
    }
}

#[tokio::test]
async fn loxation_keypackage_directory_auth_off() {
    loxation_keypackage_directory(false).await;
}

#[tokio::test]
async fn loxation_keypackage_directory_auth_on() {
    loxation_keypackage_directory(true).await;
}

// ---------------------------------------------------------------------------------------------
// Invite by gift wrap, group messages, Noise DM, removal by roster
// ---------------------------------------------------------------------------------------------

async fn loxation_group_flow(auth: bool) {
    let (alice, bob, carol, mallory) = (keys(), keys(), keys(), keys());
    // Alice is a configured admin: the group below is served open before it is gated, and
    // only a configured admin may gate such a group (issue 8, rule 4).
    let relay = start_relay(auth, &admin_pubkeys_config(&[&alice])).await;
    let (bp, cp) = (pk_hex(&bob), pk_hex(&carol));
    let g = unique_id();
    let mut a = authed(&relay, &alice).await;
    let mut b = authed(&relay, &bob).await;
    let mut c = authed(&relay, &carol).await;
    let mut m = authed(&relay, &mallory).await;
    let mut anon = anon(&relay).await;

    // Bob and Carol publish KeyPackages; Alice finds them by owner.
    let kpb = lox_keypackage(&bob, &unique_id());
    let kpc = lox_keypackage(&carol, &unique_id());
    b.publish_ok(&kpb).await;
    c.publish_ok(&kpc).await;
    expect_req(
        &mut a,
        "alice",
        &[json!({"kinds": [443], "#p": [bp, cp]})],
        Want::Events(&[id(&kpb).as_str(), id(&kpc).as_str()]),
    )
    .await;

    // Before anyone announces its membership the group is open: a 445 from Mallory is
    // accepted (unknown_groups = "open").
    let m0 = group_message(&g, Some(0));
    m.publish_ok(&m0).await;
    let i0 = id(&m0);
    expect_req(
        &mut m,
        "mallory",
        &[json!({"ids": [i0]})],
        Want::Events(&[i0.as_str()]),
    )
    .await;

    // Gift-wrap subscriptions before the invitations.
    open_live(&mut b, "bob", "gw", json!({"kinds": [1059]}), NOTHING).await;
    open_live(
        &mut c,
        "carol",
        "gw",
        json!({"kinds": [1059], "#p": [cp]}),
        NOTHING,
    )
    .await;
    open_live(&mut m, "mallory", "gw", json!({"kinds": [1059]}), NOTHING).await;

    // Alice invites Bob: a Loxation gift wrap (throwaway signer) with `h`, published by
    // Alice's authenticated connection. Bob becomes a member; Alice owner and admin.
    let w1 = giftwrap(&[&bob], Some(&g));
    a.publish_ok(&w1).await;
    expect_live(&mut b, "bob", "gw", &id(&w1)).await;

    // The group is gated now.
    publish_refused(&mut m, &group_message(&g, Some(1)), "restricted:").await;
    publish_refused(&mut anon, &group_message(&g, Some(1)), "auth-required:").await;
    expect_req(
        &mut m,
        "mallory",
        &[json!({"ids": [i0]})],
        HIDDEN_RESTRICTED,
    )
    .await;

    // Alice, a member, invites Carol. Bob is a member but not this wrap's recipient.
    let w2 = giftwrap(&[&carol], Some(&g));
    a.publish_ok(&w2).await;
    expect_live(&mut c, "carol", "gw", &id(&w2)).await;
    expect_no_live(&mut b, "bob (member, not the recipient of carol's wrap)").await;
    expect_no_live(&mut m, "mallory").await;
    expect_req(
        &mut b,
        "bob",
        &[json!({"ids": [id(&w2)]})],
        HIDDEN_RESTRICTED,
    )
    .await;

    // Group-message subscriptions: members get the stored history (m0 included: it belongs
    // to a group that is gated now), outsiders nothing.
    let target = json!({"kinds": [445], "#h": [g]});
    for (ws, who) in [(&mut a, "alice"), (&mut b, "bob"), (&mut c, "carol")] {
        open_live(ws, who, "g", target.clone(), Want::Events(&[i0.as_str()])).await;
    }
    // As for a group that does not exist (security rule 10): open, and nothing arrives.
    open_live(&mut m, "mallory", "g", target.clone(), NOTHING).await;
    open_live(&mut m, "mallory", "b", json!({"kinds": [445]}), NOTHING).await;
    open_live(&mut m, "mallory", "h", json!({"#h": [g]}), NOTHING).await;
    let anon_open = if auth { AUTH_REQUIRED } else { NOTHING };
    open_live(&mut anon, "unauthenticated", "g", target.clone(), anon_open).await;
    open_live(
        &mut anon,
        "unauthenticated",
        "b",
        json!({"kinds": [445]}),
        anon_open,
    )
    .await;
    open_live(
        &mut anon,
        "unauthenticated",
        "h",
        json!({"#h": [g]}),
        anon_open,
    )
    .await;

    // Members talk: throwaway signers, `k` epochs, published by members' connections.
    let b1 = group_message(&g, Some(1));
    b.publish_ok(&b1).await;
    let c1 = group_message(&g, Some(2));
    c.publish_ok(&c1).await;
    let (ib1, ic1) = (id(&b1), id(&c1));
    for (ws, who) in [(&mut a, "alice"), (&mut b, "bob"), (&mut c, "carol")] {
        expect_live_set(ws, who, "g", &[&ib1, &ic1]).await;
    }
    expect_no_live(&mut m, "mallory").await;
    expect_no_live(&mut anon, "unauthenticated").await;

    let info = group_info(&relay, &alice, &g).await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["member_count"], 3, "{}", info.text());
    assert_eq!(info.json()["last_epoch"], 2, "{}", info.text());
    support_api::assert_error(&group_info(&relay, &mallory, &g).await, 404, "not_found");

    // A Noise DM from Bob to Carol: Carol (and Bob, its author) only.
    let dm = noise_dm(&bob, &[&carol]);
    let idm = id(&dm);
    open_live(
        &mut c,
        "carol",
        "dm",
        json!({"kinds": [446], "#p": [cp]}),
        NOTHING,
    )
    .await;
    open_live(&mut a, "alice", "dm", json!({"kinds": [446]}), NOTHING).await;
    open_live(&mut m, "mallory", "dm", json!({"kinds": [446]}), NOTHING).await;
    b.publish_ok(&dm).await;
    expect_live(&mut c, "carol", "dm", &idm).await;
    expect_no_live(&mut a, "alice (member, not a recipient)").await;
    expect_no_live(&mut m, "mallory").await;
    for (ws, who) in [(&mut b, "bob (author)"), (&mut c, "carol (recipient)")] {
        expect_req(
            ws,
            who,
            &[json!({"ids": [idm]})],
            Want::Events(&[idm.as_str()]),
        )
        .await;
        expect_req(
            ws,
            who,
            &[json!({"kinds": [446]})],
            Want::Events(&[idm.as_str()]),
        )
        .await;
    }
    for (ws, who) in [(&mut a, "alice"), (&mut m, "mallory")] {
        expect_req(ws, who, &[json!({"ids": [idm]})], HIDDEN_RESTRICTED).await;
        expect_req(ws, who, &[json!({"kinds": [446]})], NOTHING).await;
        expect_req(
            ws,
            who,
            &[json!({"kinds": [446], "#p": [cp], "authors": [bp]})],
            RESTRICTED,
        )
        .await;
        expect_count(ws, who, &[json!({"kinds": [446]})], NOTHING).await;
    }

    // Alice (admin through her gift wrap) removes Carol with a roster event.
    let r1 = roster(&alice, &g, "remove", 1, &[&carol]);
    a.publish_ok(&r1).await;

    let b2 = group_message(&g, Some(3));
    b.publish_ok(&b2).await;
    let ib2 = id(&b2);
    expect_live(&mut a, "alice", "g", &ib2).await;
    expect_live(&mut b, "bob", "g", &ib2).await;
    expect_no_live(&mut c, "carol (removed)").await;
    expect_no_live(&mut m, "mallory").await;
    expect_no_live(&mut anon, "unauthenticated").await;

    // Stored: members see the whole history, Carol none of it any more.
    let history = [i0.as_str(), ib1.as_str(), ic1.as_str(), ib2.as_str()];
    for (ws, who) in [(&mut a, "alice"), (&mut b, "bob")] {
        check_paths(
            ws,
            who,
            &[
                (target.clone(), Want::Events(&history)),
                (json!({"ids": history}), Want::Events(&history)),
            ],
        )
        .await;
    }
    let outsider: [(Value, Want); 4] = [
        (target.clone(), NOTHING),
        (json!({"kinds": [445]}), NOTHING),
        (json!({"ids": history}), HIDDEN_RESTRICTED),
        (json!({"kinds": [450], "#h": [g]}), NOTHING),
    ];
    check_paths(&mut c, "carol (removed)", &outsider).await;
    check_paths(&mut m, "mallory", &outsider).await;

    // Carol can neither post nor invite herself back.
    publish_refused(&mut c, &group_message(&g, Some(4)), "restricted:").await;
    publish_refused(&mut c, &giftwrap(&[&carol], Some(&g)), "restricted:").await;
    support_api::assert_error(&group_info(&relay, &carol, &g).await, 404, "not_found");
    let info = group_info(&relay, &bob, &g).await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["member_count"], 2, "{}", info.text());
    assert_eq!(info.json()["last_epoch"], 3, "{}", info.text());
}

#[tokio::test]
async fn loxation_invite_gates_the_group_and_a_roster_remove_cuts_a_member_off_auth_off() {
    loxation_group_flow(false).await;
}

#[tokio::test]
async fn loxation_invite_gates_the_group_and_a_roster_remove_cuts_a_member_off_auth_on() {
    loxation_group_flow(true).await;
}

// ---------------------------------------------------------------------------------------------
// Roster bootstrap by the group admin, invitation, removal
// ---------------------------------------------------------------------------------------------

async fn loxation_roster_bootstrap_flow(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (alice, bob, mallory) = (keys(), keys(), keys());
    let g = unique_id();
    let mut a = authed(&relay, &alice).await;
    let mut b = authed(&relay, &bob).await;
    let mut m = authed(&relay, &mallory).await;

    // Alice bootstraps the group: owner and admin, no other member yet.
    let mut t = vec![
        vec!["h".to_string(), g.clone()],
        vec!["op".into(), "bootstrap".into()],
        vec!["seq".into(), "1".into()],
        vec!["name".into(), "Hiking club".into()],
    ];
    let r1 = mls_proto::Event::sign(&alice, now(), 450, std::mem::take(&mut t), "");
    a.publish_ok(&r1).await;
    let info = group_info(&relay, &alice, &g).await;
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(
        info.json()["display_name"],
        "Hiking club",
        "{}",
        info.text()
    );
    assert_eq!(info.json()["member_count"], 1, "{}", info.text());

    // Mallory cannot invite herself (or anyone) into a known group.
    publish_refused(&mut m, &giftwrap(&[&mallory], Some(&g)), "restricted:").await;
    // Nor through an unauthenticated connection: with auth off the wrap is an ordinary
    // gift wrap (delivered to its recipient) but grants no membership.
    let mut anon = anon(&relay).await;
    let sneaky = giftwrap(&[&mallory], Some(&g));
    if auth {
        publish_refused(&mut anon, &sneaky, "auth-required:").await;
    } else {
        anon.publish_ok(&sneaky).await;
    }
    expect_req(
        &mut m,
        "mallory",
        &[json!({"kinds": [445, 450], "#h": [g]})],
        NOTHING,
    )
    .await;
    support_api::assert_error(&group_info(&relay, &mallory, &g).await, 404, "not_found");

    // Alice invites Bob: rosters manage this group, so a roster `add` admits him (a gift
    // wrap to a roster-managed group only carries the Welcome; issue 8, rule 5).
    let r_add = roster(&alice, &g, "add", 2, &[&bob]);
    a.publish_ok(&r_add).await;
    a.publish_ok(&giftwrap(&[&bob], Some(&g))).await;
    let target = json!({"kinds": [445], "#h": [g]});
    open_live(&mut a, "alice", "g", target.clone(), NOTHING).await;
    open_live(&mut b, "bob", "g", target.clone(), NOTHING).await;
    open_live(
        &mut b,
        "bob",
        "r",
        json!({"kinds": [450], "#h": [g]}),
        Want::Events(&[id(&r1).as_str(), id(&r_add).as_str()]),
    )
    .await;
    let bm = group_message(&g, Some(1));
    b.publish_ok(&bm).await;
    expect_live(&mut a, "alice", "g", &id(&bm)).await;
    expect_live(&mut b, "bob", "g", &id(&bm)).await;

    // The admin removes Bob (seq 3).
    let r2 = roster(&alice, &g, "remove", 3, &[&bob]);
    a.publish_ok(&r2).await;
    drain_allowing(&mut b, "bob (removed)", &[&id(&r2)]).await;
    let am = group_message(&g, Some(2));
    a.publish_ok(&am).await;
    expect_live(&mut a, "alice", "g", &id(&am)).await;
    expect_no_live(&mut b, "bob (removed)").await;
    check_paths(
        &mut b,
        "bob (removed)",
        &[
            (target.clone(), NOTHING),
            (json!({"ids": [id(&bm), id(&am)]}), HIDDEN_RESTRICTED),
            (json!({"kinds": [450], "#h": [g]}), NOTHING),
        ],
    )
    .await;
    publish_refused(&mut b, &group_message(&g, Some(3)), "restricted:").await;
    check_paths(
        &mut a,
        "alice",
        &[(
            target.clone(),
            Want::Events(&[id(&bm).as_str(), id(&am).as_str()]),
        )],
    )
    .await;
}

#[tokio::test]
async fn loxation_roster_bootstrap_invite_and_remove_auth_off() {
    loxation_roster_bootstrap_flow(false).await;
}

#[tokio::test]
async fn loxation_roster_bootstrap_invite_and_remove_auth_on() {
    loxation_roster_bootstrap_flow(true).await;
}
