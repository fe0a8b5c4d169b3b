//! Adversarial end-to-end tests of the gateway's "served to" rules (PROTOCOL §2, §3), against
//! the real binary.
//!
//! For each rule — 1059 gift wrap (recipients only), 446 Noise DM (recipients and author),
//! 445 in a gated group (members only), 450 roster (members and admins), KeyPackages with auth
//! on (authenticated only) — a stranger (authenticated as someone else), an unauthenticated
//! connection and, for 445/450, a member removed by a 450 `remove` try every read path:
//! REQ by kind, by `ids`, by tag (`#p` / `#h`), by author, an empty filter, COUNT, and live
//! subscriptions (broad and targeted) opened before the event arrives. They get no event, a
//! COUNT of 0, and `CLOSED auth-required:` (with an AUTH challenge) / `CLOSED restricted:`
//! where the filter can only match what they may not see (except a group's 445 / 450 by
//! `#h`, which answers as an unknown group would: see `tests/security_reads.rs`). The legitimate readers get the
//! event on the same paths (the positive control, so that every test can fail). Every rule
//! runs with `[auth] enabled` off and on.
//!
//! Then the publishing side: KeyPackage for someone else, 445 to a gated group from a
//! non-member or an unauthenticated connection, roster update from a non-admin, replayed
//! `seq`, top-level 444, `unknown_groups = "deny"`.

mod common;
mod support_api;
mod support_mls;

use common::*;
use serde_json::{json, Value};
use support_mls::*;

/// What an unauthenticated connection must get: with auth on every read is refused at the
/// door; with auth off, `off`.
fn anon_want(auth: bool, off: Want<'static>) -> Want<'static> {
    if auth {
        AUTH_REQUIRED
    } else {
        off
    }
}

// ---------------------------------------------------------------------------------------------
// 1059 gift wrap: only connections authenticated as a `p` recipient
// ---------------------------------------------------------------------------------------------

async fn giftwrap_is_served_to_its_recipient_only(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (sender, recipient, stranger) = (keys(), keys(), keys());
    let rp = pk_hex(&recipient);
    let mut rx = authed(&relay, &recipient).await;
    let mut other = authed(&relay, &stranger).await;
    let mut anon = anon(&relay).await;
    let mut tx = authed(&relay, &sender).await;

    let gw = giftwrap(&[&recipient], None);
    let gid = id(&gw);
    let wrapper = gw.pubkey.to_hex();

    // Live subscriptions, opened before the gift wrap arrives.
    open_live(&mut rx, "recipient", "b", json!({"kinds": [1059]}), NOTHING).await;
    open_live(
        &mut rx,
        "recipient",
        "t",
        json!({"kinds": [1059], "#p": [rp]}),
        NOTHING,
    )
    .await;
    open_live(&mut rx, "recipient", "ids", json!({"ids": [gid]}), NOTHING).await;
    for (sub, f, want) in [
        ("broad", json!({"kinds": [1059]}), NOTHING),
        ("all", json!({}), NOTHING),
        ("p", json!({"#p": [rp]}), NOTHING),
        ("author", json!({"authors": [wrapper]}), NOTHING),
        ("ids", json!({"ids": [gid]}), NOTHING),
        ("target", json!({"kinds": [1059], "#p": [rp]}), RESTRICTED),
    ] {
        open_live(&mut other, "stranger", sub, f, want).await;
    }
    for (sub, f, want) in [
        ("broad", json!({"kinds": [1059]}), AUTH_REQUIRED),
        (
            "target",
            json!({"kinds": [1059], "#p": [rp]}),
            AUTH_REQUIRED,
        ),
        ("all", json!({}), anon_want(auth, NOTHING)),
        ("p", json!({"#p": [rp]}), anon_want(auth, NOTHING)),
        (
            "author",
            json!({"authors": [wrapper]}),
            anon_want(auth, NOTHING),
        ),
        ("ids", json!({"ids": [gid]}), anon_want(auth, NOTHING)),
    ] {
        open_live(&mut anon, "unauthenticated", sub, f, want).await;
    }

    // A harmless filter next to a targeted one lets a REQ through the pre-check; it must
    // still deliver nothing.
    let mixed = vec![json!({"kinds": [1]}), json!({"kinds": [1059], "#p": [rp]})];
    open_live_filters(&mut other, "stranger", "mixed", mixed.clone(), NOTHING).await;
    let anon_mixed = anon_want(auth, NOTHING);
    open_live_filters(
        &mut anon,
        "unauthenticated",
        "mixed",
        mixed.clone(),
        anon_mixed,
    )
    .await;

    tx.publish_ok(&gw).await;
    expect_live(&mut rx, "recipient", "b", &gid).await;
    expect_live(&mut rx, "recipient", "t", &gid).await;
    expect_live(&mut rx, "recipient", "ids", &gid).await;
    expect_no_live(&mut other, "stranger").await;
    expect_no_live(&mut anon, "unauthenticated").await;
    expect_no_live(&mut tx, "sender (not a recipient)").await;

    // Stored paths.
    let only = [gid.as_str()];
    let mine = Want::Events(&only);
    let filters = [
        json!({"kinds": [1059]}),
        json!({"ids": [gid]}),
        json!({"ids": [gid], "kinds": [1059]}),
        json!({"kinds": [1059], "#p": [rp]}),
        json!({"#p": [rp]}),
        json!({"authors": [wrapper]}),
        json!({}),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().map(|f| (f.clone(), mine)).collect();
    check_paths(&mut rx, "recipient", &rows).await;

    let stranger_wants = [
        NOTHING,
        HIDDEN_RESTRICTED,
        HIDDEN_RESTRICTED,
        RESTRICTED,
        NOTHING,
        NOTHING,
        NOTHING,
    ];
    let anon_wants = [
        AUTH_REQUIRED,
        anon_want(auth, HIDDEN_AUTH),
        AUTH_REQUIRED,
        AUTH_REQUIRED,
        anon_want(auth, NOTHING),
        anon_want(auth, NOTHING),
        anon_want(auth, NOTHING),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(stranger_wants).collect();
    check_paths(&mut other, "stranger", &rows).await;
    check_paths(&mut tx, "sender (not a recipient)", &rows).await;
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(anon_wants).collect();
    check_paths(&mut anon, "unauthenticated", &rows).await;
    expect_req(&mut other, "stranger", &mixed, NOTHING).await;
    expect_count(&mut other, "stranger", &mixed, NOTHING).await;
    expect_req(&mut anon, "unauthenticated", &mixed, anon_mixed).await;
    expect_count(&mut anon, "unauthenticated", &mixed, anon_mixed).await;
}

#[tokio::test]
async fn giftwrap_is_served_to_its_recipient_only_auth_off() {
    giftwrap_is_served_to_its_recipient_only(false).await;
}

#[tokio::test]
async fn giftwrap_is_served_to_its_recipient_only_auth_on() {
    giftwrap_is_served_to_its_recipient_only(true).await;
}

// ---------------------------------------------------------------------------------------------
// 446 Noise DM: its `p` recipients and its author
// ---------------------------------------------------------------------------------------------

async fn noise_dm_is_served_to_recipients_and_author_only(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (author, r1, r2, stranger) = (keys(), keys(), keys(), keys());
    let (ap, p1) = (pk_hex(&author), pk_hex(&r1));
    let mut from = authed(&relay, &author).await;
    let mut rx1 = authed(&relay, &r1).await;
    let mut rx2 = authed(&relay, &r2).await;
    let mut other = authed(&relay, &stranger).await;
    let mut anon = anon(&relay).await;

    let dm = noise_dm(&author, &[&r1, &r2]);
    let did = id(&dm);
    open_live(
        &mut rx2,
        "recipient 2",
        "ids",
        json!({"ids": [did]}),
        NOTHING,
    )
    .await;

    open_live(&mut rx1, "recipient", "b", json!({"kinds": [446]}), NOTHING).await;
    open_live(
        &mut rx1,
        "recipient",
        "t",
        json!({"kinds": [446], "#p": [p1]}),
        NOTHING,
    )
    .await;
    open_live(
        &mut from,
        "author",
        "a",
        json!({"kinds": [446], "authors": [ap]}),
        NOTHING,
    )
    .await;
    for (sub, f, want) in [
        ("broad", json!({"kinds": [446]}), NOTHING),
        ("all", json!({}), NOTHING),
        // The stranger could be the author of a 446 to r1: open, but nothing arrives.
        ("p", json!({"kinds": [446], "#p": [p1]}), NOTHING),
        ("author", json!({"authors": [ap]}), NOTHING),
        ("ids", json!({"ids": [did]}), NOTHING),
        (
            "target",
            json!({"kinds": [446], "#p": [p1], "authors": [ap]}),
            RESTRICTED,
        ),
    ] {
        open_live(&mut other, "stranger", sub, f, want).await;
    }
    for (sub, f, want) in [
        ("broad", json!({"kinds": [446]}), AUTH_REQUIRED),
        ("p", json!({"kinds": [446], "#p": [p1]}), AUTH_REQUIRED),
        ("all", json!({}), anon_want(auth, NOTHING)),
        ("ptag", json!({"#p": [p1]}), anon_want(auth, NOTHING)),
        ("author", json!({"authors": [ap]}), anon_want(auth, NOTHING)),
        ("ids", json!({"ids": [did]}), anon_want(auth, NOTHING)),
    ] {
        open_live(&mut anon, "unauthenticated", sub, f, want).await;
    }

    from.publish_ok(&dm).await;
    expect_live(&mut rx2, "recipient 2", "ids", &did).await;
    expect_live(&mut rx1, "recipient", "b", &did).await;
    expect_live(&mut rx1, "recipient", "t", &did).await;
    expect_live(&mut from, "author", "a", &did).await;
    expect_no_live(&mut other, "stranger").await;
    expect_no_live(&mut anon, "unauthenticated").await;

    let only = [did.as_str()];
    let seen = Want::Events(&only);
    let filters = [
        json!({"kinds": [446]}),
        json!({"ids": [did]}),
        json!({"ids": [did], "kinds": [446]}),
        json!({"kinds": [446], "#p": [p1]}),
        json!({"kinds": [446], "#p": [p1], "authors": [ap]}),
        json!({"#p": [p1]}),
        json!({"authors": [ap]}),
        json!({}),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().map(|f| (f.clone(), seen)).collect();
    check_paths(&mut rx1, "recipient 1", &rows).await;
    check_paths(&mut from, "author", &rows).await;
    // Recipient 2 on every filter but those by `#p: [r1]` (see
    // `a_multi_recipient_*_is_read_through_each_recipients_own_mailbox`): a 446 read is scoped
    // to the reader's own mailbox, so `#p: [r1]` from r2 means the DMs r2 wrote to r1.
    let mut rows2 = rows.clone();
    rows2.remove(4);
    rows2.remove(3);
    check_paths(&mut rx2, "recipient 2", &rows2).await;

    let stranger_wants = [
        NOTHING,
        HIDDEN_RESTRICTED,
        HIDDEN_RESTRICTED,
        NOTHING,
        RESTRICTED,
        NOTHING,
        NOTHING,
        NOTHING,
    ];
    let anon_wants = [
        AUTH_REQUIRED,
        anon_want(auth, HIDDEN_AUTH),
        AUTH_REQUIRED,
        AUTH_REQUIRED,
        AUTH_REQUIRED,
        anon_want(auth, NOTHING),
        anon_want(auth, NOTHING),
        anon_want(auth, NOTHING),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(stranger_wants).collect();
    check_paths(&mut other, "stranger", &rows).await;
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(anon_wants).collect();
    check_paths(&mut anon, "unauthenticated", &rows).await;
}

#[tokio::test]
async fn noise_dm_is_served_to_recipients_and_author_only_auth_off() {
    noise_dm_is_served_to_recipients_and_author_only(false).await;
}

#[tokio::test]
async fn noise_dm_is_served_to_recipients_and_author_only_auth_on() {
    noise_dm_is_served_to_recipients_and_author_only(true).await;
}

// ---------------------------------------------------------------------------------------------
// 445 in a gated group: its members (and admins) only
// ---------------------------------------------------------------------------------------------

async fn gated_group_message_is_served_to_members_only(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (admin, member, doomed, stranger) = (keys(), keys(), keys(), keys());
    let g = unique_id();
    let mut adm = authed(&relay, &admin).await;
    let mut mem = authed(&relay, &member).await;
    let mut doom = authed(&relay, &doomed).await;
    let mut other = authed(&relay, &stranger).await;
    let mut anon = anon(&relay).await;

    // The group is gated from its roster bootstrap on.
    let r1 = roster(&admin, &g, "bootstrap", 1, &[&member, &doomed]);
    adm.publish_ok(&r1).await;

    let m1 = group_message(&g, Some(1));
    let m2 = group_message(&g, Some(2));
    let (i1, i2) = (id(&m1), id(&m2));

    // Live subscriptions before the first message.
    let target = json!({"kinds": [445], "#h": [g]});
    open_live(&mut mem, "member", "t", target.clone(), NOTHING).await;
    open_live(&mut mem, "member", "b", json!({"kinds": [445]}), NOTHING).await;
    open_live(
        &mut doom,
        "member-to-be-removed",
        "t",
        target.clone(),
        NOTHING,
    )
    .await;
    open_live(
        &mut doom,
        "member-to-be-removed",
        "b",
        json!({"kinds": [445]}),
        NOTHING,
    )
    .await;
    for (sub, f, want) in [
        ("broad", json!({"kinds": [445]}), NOTHING),
        ("all", json!({}), NOTHING),
        ("h", json!({"#h": [g]}), NOTHING),
        ("ids", json!({"ids": [i1, i2]}), NOTHING),
        // As for a group that does not exist: open, and nothing arrives.
        ("target", target.clone(), NOTHING),
    ] {
        open_live(&mut other, "stranger", sub, f, want).await;
    }
    for (sub, f, want) in [
        ("broad", json!({"kinds": [445]}), anon_want(auth, NOTHING)),
        ("all", json!({}), anon_want(auth, NOTHING)),
        ("h", json!({"#h": [g]}), anon_want(auth, NOTHING)),
        ("ids", json!({"ids": [i1, i2]}), anon_want(auth, NOTHING)),
        ("target", target.clone(), anon_want(auth, NOTHING)),
    ] {
        open_live(&mut anon, "unauthenticated", sub, f, want).await;
    }

    let mixed = vec![json!({"kinds": [1]}), target.clone()];
    open_live_filters(&mut other, "stranger", "mixed", mixed.clone(), NOTHING).await;
    let anon_mixed = anon_want(auth, NOTHING);
    open_live_filters(
        &mut anon,
        "unauthenticated",
        "mixed",
        mixed.clone(),
        anon_mixed,
    )
    .await;

    // m1, published by a member's connection (signed by a throwaway key): every member,
    // including the one about to be removed, gets it live.
    mem.publish_ok(&m1).await;
    for (ws, who) in [(&mut mem, "member"), (&mut doom, "member-to-be-removed")] {
        expect_live(ws, who, "t", &id(&m1)).await;
        expect_live(ws, who, "b", &id(&m1)).await;
    }

    // The removal, through a 450 `remove`.
    let r2 = roster(&admin, &g, "remove", 2, &[&doomed]);
    adm.publish_ok(&r2).await;
    // The removed member's fresh subscriptions after the removal.
    open_live(&mut doom, "removed member", "t2", target.clone(), NOTHING).await;
    open_live(
        &mut doom,
        "removed member",
        "b2",
        json!({"kinds": [445]}),
        NOTHING,
    )
    .await;
    open_live(
        &mut doom,
        "removed member",
        "h2",
        json!({"#h": [g]}),
        NOTHING,
    )
    .await;
    open_live(
        &mut doom,
        "removed member",
        "ids2",
        json!({"ids": [i2]}),
        NOTHING,
    )
    .await;
    open_live_filters(
        &mut doom,
        "removed member",
        "mixed2",
        mixed.clone(),
        NOTHING,
    )
    .await;

    mem.publish_ok(&m2).await;
    expect_live(&mut mem, "member", "t", &id(&m2)).await;
    expect_live(&mut mem, "member", "b", &id(&m2)).await;
    expect_no_live(&mut doom, "removed member").await;
    expect_no_live(&mut other, "stranger").await;
    expect_no_live(&mut anon, "unauthenticated").await;

    // Stored paths.
    let (ir1, ir2) = (id(&r1), id(&r2));
    let msgs = [i1.as_str(), i2.as_str()];
    let everything = [i1.as_str(), i2.as_str(), ir1.as_str(), ir2.as_str()];
    let filters = [
        json!({"kinds": [445]}),
        json!({"ids": [i1, i2]}),
        json!({"ids": [i1, i2], "kinds": [445]}),
        target.clone(),
        json!({"#h": [g]}),
        json!({}),
    ];
    let member_wants = [
        Want::Events(&msgs),
        Want::Events(&msgs),
        Want::Events(&msgs),
        Want::Events(&msgs),
        Want::Events(&everything),
        Want::Events(&everything),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(member_wants).collect();
    check_paths(&mut mem, "member", &rows).await;
    // Group admins read like members.
    check_paths(&mut adm, "group admin", &rows).await;

    let outsider_wants = [
        NOTHING,
        HIDDEN_RESTRICTED,
        HIDDEN_RESTRICTED,
        NOTHING,
        NOTHING,
        NOTHING,
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(outsider_wants).collect();
    check_paths(&mut other, "stranger", &rows).await;
    check_paths(&mut doom, "removed member", &rows).await;
    let anon_wants = [
        anon_want(auth, NOTHING),
        anon_want(auth, HIDDEN_AUTH),
        anon_want(auth, HIDDEN_AUTH),
        anon_want(auth, NOTHING),
        anon_want(auth, NOTHING),
        anon_want(auth, NOTHING),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(anon_wants).collect();
    check_paths(&mut anon, "unauthenticated", &rows).await;
    for (ws, who) in [(&mut other, "stranger"), (&mut doom, "removed member")] {
        expect_req(ws, who, &mixed, NOTHING).await;
        expect_count(ws, who, &mixed, NOTHING).await;
    }
    expect_req(&mut anon, "unauthenticated", &mixed, anon_mixed).await;
    expect_count(&mut anon, "unauthenticated", &mixed, anon_mixed).await;
}

#[tokio::test]
async fn gated_group_message_is_served_to_members_only_auth_off() {
    gated_group_message_is_served_to_members_only(false).await;
}

#[tokio::test]
async fn gated_group_message_is_served_to_members_only_auth_on() {
    gated_group_message_is_served_to_members_only(true).await;
}

// ---------------------------------------------------------------------------------------------
// 450 roster: the group's members and admins
// ---------------------------------------------------------------------------------------------

async fn roster_is_served_to_members_and_admins_only(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (admin, member, doomed, stranger, newbie) = (keys(), keys(), keys(), keys(), keys());
    let g = unique_id();
    let mut adm = authed(&relay, &admin).await;
    let mut mem = authed(&relay, &member).await;
    let mut doom = authed(&relay, &doomed).await;
    let mut other = authed(&relay, &stranger).await;
    let mut anon = anon(&relay).await;

    let r1 = roster(&admin, &g, "bootstrap", 1, &[&member, &doomed]);
    let r2 = roster(&admin, &g, "remove", 2, &[&doomed]);
    let r3 = roster(&admin, &g, "add", 3, &[&newbie]);
    let (i1, i2, i3) = (id(&r1), id(&r2), id(&r3));

    // Live subscriptions opened before the group exists.
    let target = json!({"kinds": [450], "#h": [g]});
    open_live(&mut mem, "member", "t", target.clone(), NOTHING).await;
    open_live(
        &mut doom,
        "member-to-be-removed",
        "t",
        target.clone(),
        NOTHING,
    )
    .await;
    for (sub, f) in [
        ("broad", json!({"kinds": [450]})),
        ("all", json!({})),
        ("h", json!({"#h": [g]})),
        ("ids", json!({"ids": [i1, i2, i3]})),
        // The group does not exist yet: the stranger might bootstrap it, so this may be open.
        ("target", target.clone()),
    ] {
        open_live(&mut other, "stranger", sub, f, NOTHING).await;
    }
    // (The same targeted filter from an unauthenticated connection before the group exists:
    // see `roster_request_from_an_unauthenticated_connection_is_closed_before_the_group_exists`.)
    for (sub, f, want) in [
        ("broad", json!({"kinds": [450]}), AUTH_REQUIRED),
        ("all", json!({}), anon_want(auth, NOTHING)),
        ("h", json!({"#h": [g]}), anon_want(auth, NOTHING)),
        (
            "ids",
            json!({"ids": [i1, i2, i3]}),
            anon_want(auth, NOTHING),
        ),
    ] {
        open_live(&mut anon, "unauthenticated", sub, f, want).await;
    }

    adm.publish_ok(&r1).await;
    expect_live(&mut mem, "member", "t", &id(&r1)).await;
    expect_live(&mut doom, "member-to-be-removed", "t", &id(&r1)).await;
    expect_no_live(&mut other, "stranger").await;
    expect_no_live(&mut anon, "unauthenticated").await;

    adm.publish_ok(&r2).await;
    expect_live(&mut mem, "member", "t", &id(&r2)).await;
    // Whether the removed member is told of its own removal is left open by the rules; it
    // gets nothing else.
    drain_allowing(&mut doom, "removed member", &[&id(&r2)]).await;
    open_live(&mut doom, "removed member", "t2", target.clone(), NOTHING).await;
    open_live(
        &mut doom,
        "removed member",
        "b2",
        json!({"kinds": [450]}),
        NOTHING,
    )
    .await;
    open_live(
        &mut doom,
        "removed member",
        "h2",
        json!({"#h": [g]}),
        NOTHING,
    )
    .await;
    open_live(
        &mut doom,
        "removed member",
        "ids2",
        json!({"ids": [i3]}),
        NOTHING,
    )
    .await;
    // Now that the group exists, the targeted filter is refused to the unauthenticated.
    open_live(
        &mut anon,
        "unauthenticated",
        "target",
        target.clone(),
        AUTH_REQUIRED,
    )
    .await;

    adm.publish_ok(&r3).await;
    expect_live(&mut mem, "member", "t", &id(&r3)).await;
    expect_no_live(&mut doom, "removed member").await;
    expect_no_live(&mut other, "stranger").await;
    expect_no_live(&mut anon, "unauthenticated").await;

    // Stored paths.
    let all = [i1.as_str(), i2.as_str(), i3.as_str()];
    let filters = [
        json!({"kinds": [450]}),
        json!({"ids": [i1, i2, i3]}),
        json!({"ids": [i1, i2, i3], "kinds": [450]}),
        target.clone(),
        json!({"#h": [g]}),
        json!({}),
    ];
    let rows: Vec<(Value, Want)> = filters
        .iter()
        .map(|f| (f.clone(), Want::Events(&all)))
        .collect();
    check_paths(&mut mem, "member", &rows).await;
    check_paths(&mut adm, "group admin", &rows).await;
    let mut new = authed(&relay, &newbie).await;
    check_paths(&mut new, "member added by roster", &rows).await;

    let outsider_wants = [
        NOTHING,
        HIDDEN_RESTRICTED,
        HIDDEN_RESTRICTED,
        NOTHING,
        NOTHING,
        NOTHING,
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(outsider_wants).collect();
    check_paths(&mut other, "stranger", &rows).await;
    check_paths(&mut doom, "removed member", &rows).await;
    let anon_wants = [
        AUTH_REQUIRED,
        anon_want(auth, HIDDEN_AUTH),
        AUTH_REQUIRED,
        AUTH_REQUIRED,
        anon_want(auth, NOTHING),
        anon_want(auth, NOTHING),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(anon_wants).collect();
    check_paths(&mut anon, "unauthenticated", &rows).await;

    // REST group info: members and admins only; 404 for everyone else, as for no group.
    let path = format!("/groups/{g}");
    for (k, who) in [
        (&admin, "admin"),
        (&member, "member"),
        (&newbie, "new member"),
    ] {
        let resp = support_api::call(&relay, "GET", &path, Some(k), None).await;
        assert_eq!(resp.status, 200, "{who}: {}", resp.text());
        assert_eq!(resp.json()["group_id"], g.as_str(), "{who}");
        assert_eq!(resp.json()["member_count"], 3, "{who}: {}", resp.text());
    }
    let missing = support_api::call(
        &relay,
        "GET",
        &format!("/groups/{}", unique_id()),
        Some(&admin),
        None,
    )
    .await;
    support_api::assert_error(&missing, 404, "not_found");
    for (k, who) in [(&stranger, "stranger"), (&doomed, "removed member")] {
        let resp = support_api::call(&relay, "GET", &path, Some(k), None).await;
        support_api::assert_error(&resp, 404, "not_found");
        assert_eq!(
            resp.body, missing.body,
            "{who}: existence must not be revealed"
        );
    }
}

#[tokio::test]
async fn roster_is_served_to_members_and_admins_only_auth_off() {
    roster_is_served_to_members_and_admins_only(false).await;
}

#[tokio::test]
async fn roster_is_served_to_members_and_admins_only_auth_on() {
    roster_is_served_to_members_and_admins_only(true).await;
}

// ---------------------------------------------------------------------------------------------
// KeyPackages: any authenticated user when auth is on; anyone when it is off
// ---------------------------------------------------------------------------------------------

async fn keypackages_paths(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (owner, reader) = (keys(), keys());
    let op = pk_hex(&owner);
    let mut own = authed(&relay, &owner).await;
    let mut rd = authed(&relay, &reader).await;
    let mut anon = anon(&relay).await;

    let (lref, mref) = (unique_id(), unique_id());
    let lox = lox_keypackage(&owner, &lref);
    let marmot = marmot_keypackage(&owner, &mref);
    let (il, im) = (id(&lox), id(&marmot));

    // With auth off an unauthenticated connection is a legitimate reader.
    let anon_live = anon_want(auth, NOTHING);
    for (ws, who, w) in [
        (&mut rd, "authenticated reader", NOTHING),
        (&mut anon, "unauthenticated", anon_live),
    ] {
        open_live(ws, who, "b", json!({"kinds": [443]}), w).await;
        open_live(ws, who, "p", json!({"kinds": [443], "#p": [op]}), w).await;
        open_live(ws, who, "i", json!({"kinds": [443], "#i": [mref]}), w).await;
        open_live(ws, who, "all", json!({}), w).await;
    }

    own.publish_ok(&lox).await;
    own.publish_ok(&marmot).await;
    let live: [(&str, Vec<&str>); 4] = [
        ("b", vec![&il, &im]),
        ("p", vec![&il]),
        ("i", vec![&im]),
        ("all", vec![&il, &im]),
    ];
    for (sub, ids) in &live {
        expect_live_set(&mut rd, "authenticated reader", sub, ids).await;
    }
    if !auth {
        // With auth off the unauthenticated reader is a legitimate one: the positive control.
        for (sub, ids) in &live {
            expect_live_set(&mut anon, "unauthenticated (auth off)", sub, ids).await;
        }
    }
    expect_no_live(&mut anon, "unauthenticated").await;
    expect_no_live(&mut rd, "authenticated reader").await;

    let both = [il.as_str(), im.as_str()];
    let just_lox = [il.as_str()];
    let just_marmot = [im.as_str()];
    let filters = [
        json!({"kinds": [443]}),
        json!({"ids": [il, im]}),
        json!({"authors": [op]}),
        json!({"kinds": [443], "#p": [op]}),
        json!({"kinds": [443], "#i": [mref]}),
        json!({}),
    ];
    let wants = [
        Want::Events(&both),
        Want::Events(&both),
        Want::Events(&both),
        Want::Events(&just_lox),
        Want::Events(&just_marmot),
        Want::Events(&both),
    ];
    let rows: Vec<(Value, Want)> = filters.iter().cloned().zip(wants).collect();
    check_paths(&mut rd, "authenticated reader", &rows).await;
    if auth {
        let rows: Vec<(Value, Want)> = filters.iter().map(|f| (f.clone(), AUTH_REQUIRED)).collect();
        check_paths(&mut anon, "unauthenticated", &rows).await;
    } else {
        check_paths(&mut anon, "unauthenticated (auth off)", &rows).await;
    }
}

#[tokio::test]
async fn keypackages_are_served_to_anyone_when_auth_is_off() {
    keypackages_paths(false).await;
}

#[tokio::test]
async fn keypackages_are_served_to_authenticated_users_only_when_auth_is_on() {
    keypackages_paths(true).await;
}

// ---------------------------------------------------------------------------------------------
// Publishing refusals
// ---------------------------------------------------------------------------------------------

async fn keypackage_for_someone_else_is_refused(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (victim, mallory, reader) = (keys(), keys(), keys());
    let vp = pk_hex(&victim);
    let mut mal = authed(&relay, &mallory).await;
    let mut anon = anon(&relay).await;

    // Signed by mallory, naming the victim as owner.
    let forged = lox_keypackage_for(&mallory, &vp, &unique_id(), now() + 86400);
    let msg = publish_refused(&mut mal, &forged, "invalid:").await;
    assert_eq!(msg, "invalid: keypackage owner tag does not match author");
    if !auth {
        let msg = publish_refused(&mut anon, &forged, "invalid:").await;
        assert_eq!(msg, "invalid: keypackage owner tag does not match author");
    }

    // The victim's own, well-formed KeyPackage, relayed by someone who is not the victim.
    let genuine = lox_keypackage(&victim, &unique_id());
    if auth {
        publish_refused(&mut anon, &genuine, "auth-required:").await;
        publish_refused(&mut mal, &genuine, "restricted:").await;
    }

    // Nothing of the above was stored.
    let mut rd = authed(&relay, &reader).await;
    for f in [
        json!({"kinds": [443]}),
        json!({"ids": [id(&forged), id(&genuine)]}),
        json!({"#p": [vp]}),
    ] {
        expect_req(&mut rd, "reader", std::slice::from_ref(&f), NOTHING).await;
    }
    for owner in [&victim, &mallory] {
        let path = format!(
            "{}/keypackages?owner={}",
            support_api::PREFIX,
            pk_hex(owner)
        );
        let auth_h = support_api::nip98(&reader, &support_api::url(&relay, &path), "GET", None);
        let resp = relay.get_with(&path, &[("Authorization", &auth_h)]).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json(), json!({"keypackages": []}));
    }

    // Positive control: the owner publishing its own KeyPackage is accepted and served.
    let mut vic = authed(&relay, &victim).await;
    vic.publish_ok(&genuine).await;
    expect_req(
        &mut rd,
        "reader",
        &[json!({"#p": [vp]})],
        Want::Events(&[id(&genuine).as_str()]),
    )
    .await;
}

#[tokio::test]
async fn keypackage_for_someone_else_is_refused_auth_off() {
    keypackage_for_someone_else_is_refused(false).await;
}

#[tokio::test]
async fn keypackage_for_someone_else_is_refused_auth_on() {
    keypackage_for_someone_else_is_refused(true).await;
}

async fn group_message_to_gated_group_from_non_member_is_refused(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (admin, member, doomed, stranger) = (keys(), keys(), keys(), keys());
    let g = unique_id();
    let mut adm = authed(&relay, &admin).await;
    adm.publish_ok(&roster(&admin, &g, "bootstrap", 1, &[&member, &doomed]))
        .await;
    adm.publish_ok(&roster(&admin, &g, "remove", 2, &[&doomed]))
        .await;

    let mut other = authed(&relay, &stranger).await;
    let mut doom = authed(&relay, &doomed).await;
    let mut anon = anon(&relay).await;
    let from_stranger = group_message(&g, Some(1));
    let from_removed = group_message(&g, Some(1));
    let from_anon = group_message(&g, Some(1));
    publish_refused(&mut other, &from_stranger, "restricted:").await;
    publish_refused(&mut doom, &from_removed, "restricted:").await;
    publish_refused(&mut anon, &from_anon, "auth-required:").await;

    // Positive control: a member's message is accepted; only it is stored.
    let mut mem = authed(&relay, &member).await;
    let ok = group_message(&g, Some(1));
    mem.publish_ok(&ok).await;
    let ids = [
        id(&from_stranger),
        id(&from_removed),
        id(&from_anon),
        id(&ok),
    ];
    expect_req(
        &mut mem,
        "member",
        &[json!({"ids": ids})],
        Want::Events(&[id(&ok).as_str()]),
    )
    .await;
    expect_req(
        &mut mem,
        "member",
        &[json!({"kinds": [445], "#h": [g]})],
        Want::Events(&[id(&ok).as_str()]),
    )
    .await;
}

#[tokio::test]
async fn group_message_to_gated_group_from_non_member_is_refused_auth_off() {
    group_message_to_gated_group_from_non_member_is_refused(false).await;
}

#[tokio::test]
async fn group_message_to_gated_group_from_non_member_is_refused_auth_on() {
    group_message_to_gated_group_from_non_member_is_refused(true).await;
}

async fn roster_update_from_non_admin_is_refused(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (admin, member, stranger) = (keys(), keys(), keys());
    let g = unique_id();
    let mut adm = authed(&relay, &admin).await;
    let r1 = roster(&admin, &g, "bootstrap", 1, &[&member]);
    adm.publish_ok(&r1).await;

    let mut mem = authed(&relay, &member).await;
    let mut other = authed(&relay, &stranger).await;
    let mut anon = anon(&relay).await;

    // A member who is not an admin.
    let by_member = roster(&member, &g, "add", 2, &[&stranger]);
    publish_refused(&mut mem, &by_member, "restricted:").await;
    let promote_self = roster(&member, &g, "promote", 2, &[&member]);
    publish_refused(&mut mem, &promote_self, "restricted:").await;
    // A stranger adding itself, or bootstrapping the existing group again.
    let by_stranger = roster(&stranger, &g, "add", 2, &[&stranger]);
    publish_refused(&mut other, &by_stranger, "restricted:").await;
    let rebootstrap = roster(&stranger, &g, "bootstrap", 2, &[]);
    publish_refused(&mut other, &rebootstrap, "restricted:").await;
    if auth {
        // The admin's signature, but not the admin's connection.
        let relayed = roster(&admin, &g, "add", 2, &[&stranger]);
        publish_refused(&mut other, &relayed, "restricted:").await;
        publish_refused(&mut anon, &relayed, "auth-required:").await;
    }

    // Nothing changed: the stranger is still outside, the roster holds the bootstrap only.
    expect_req(
        &mut other,
        "stranger",
        &[json!({"kinds": [445, 450], "#h": [g]})],
        NOTHING,
    )
    .await;
    expect_req(
        &mut mem,
        "member",
        &[json!({"kinds": [450], "#h": [g]})],
        Want::Events(&[id(&r1).as_str()]),
    )
    .await;
    let resp = support_api::call(&relay, "GET", &format!("/groups/{g}"), Some(&member), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["member_count"], 2, "{}", resp.text());

    // Positive control: seq 2 is still free for the admin.
    let r2 = roster(&admin, &g, "add", 2, &[&stranger]);
    adm.publish_ok(&r2).await;
    expect_req(
        &mut other,
        "stranger, now a member",
        &[json!({"kinds": [450], "#h": [g]})],
        Want::Events(&[id(&r1).as_str(), id(&r2).as_str()]),
    )
    .await;
}

#[tokio::test]
async fn roster_update_from_non_admin_is_refused_auth_off() {
    roster_update_from_non_admin_is_refused(false).await;
}

#[tokio::test]
async fn roster_update_from_non_admin_is_refused_auth_on() {
    roster_update_from_non_admin_is_refused(true).await;
}

async fn replayed_roster_seq_is_refused(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (admin, member, carol) = (keys(), keys(), keys());
    let g = unique_id();
    let mut adm = authed(&relay, &admin).await;
    let r1 = roster(&admin, &g, "bootstrap", 1, &[&member]);
    adm.publish_ok(&r1).await;
    // Sequence numbers need only increase, not be contiguous.
    let r5 = roster(&admin, &g, "add", 5, &[&carol]);
    adm.publish_ok(&r5).await;

    // The same seq again (a different event), and an older one: refused.
    let same_seq = roster(&admin, &g, "remove", 5, &[&member]);
    let msg = publish_refused(&mut adm, &same_seq, "blocked:").await;
    assert!(msg.contains("seq"), "{msg}");
    let older = roster(&admin, &g, "remove", 3, &[&member]);
    let msg = publish_refused(&mut adm, &older, "blocked:").await;
    assert!(msg.contains("seq"), "{msg}");
    // The very same event again: NIP-01's `OK true "duplicate: …"`, and no second effect.
    let (ok, msg) = adm.publish(&r5).await;
    assert!(ok, "a resent roster event: {msg:?}");
    assert_prefix(&msg, "duplicate:");

    // The refused removals changed nothing: the member still reads the group.
    let mut mem = authed(&relay, &member).await;
    expect_req(
        &mut mem,
        "member",
        &[json!({"kinds": [450], "#h": [g]})],
        Want::Events(&[id(&r1).as_str(), id(&r5).as_str()]),
    )
    .await;
    let resp = support_api::call(&relay, "GET", &format!("/groups/{g}"), Some(&member), None).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["member_count"], 3, "{}", resp.text());

    // Positive control: the next seq is accepted, and then 6 is a replay too.
    let r6 = roster(&admin, &g, "remove", 6, &[&carol]);
    adm.publish_ok(&r6).await;
    let again = roster(&admin, &g, "add", 6, &[&carol]);
    publish_refused(&mut adm, &again, "blocked:").await;
}

#[tokio::test]
async fn replayed_roster_seq_is_refused_auth_off() {
    replayed_roster_seq_is_refused(false).await;
}

#[tokio::test]
async fn replayed_roster_seq_is_refused_auth_on() {
    replayed_roster_seq_is_refused(true).await;
}

async fn top_level_444_is_refused(auth: bool) {
    let relay = start_relay(auth, "").await;
    let (alice, bob) = (keys(), keys());
    let mut ws = authed(&relay, &alice).await;
    let group = unique_id();
    let rumor = ev(
        &alice,
        444,
        &[&["p", &pk_hex(&bob)], &["e", &unique_id()], &["h", &group]],
        "welcome-bytes",
    );
    let (ok, msg) = ws.publish(&rumor).await;
    assert!(!ok, "a top-level 444 was accepted");
    assert_eq!(msg, "invalid: kind 444 must be gift-wrapped");
    if !auth {
        let mut anon = anon(&relay).await;
        let (ok, msg) = anon.publish(&rumor).await;
        assert!(!ok);
        assert_eq!(msg, "invalid: kind 444 must be gift-wrapped");
    }
    let mut rd = authed(&relay, &bob).await;
    expect_req(
        &mut rd,
        "recipient",
        &[json!({"ids": [id(&rumor)]})],
        NOTHING,
    )
    .await;
    expect_count(&mut rd, "recipient", &[json!({"kinds": [444]})], NOTHING).await;
}

#[tokio::test]
async fn top_level_444_is_refused_auth_off() {
    top_level_444_is_refused(false).await;
}

#[tokio::test]
async fn top_level_444_is_refused_auth_on() {
    top_level_444_is_refused(true).await;
}

async fn unknown_groups_deny(auth: bool) {
    let relay = start_relay(
        auth,
        "[extensions.mls_gateway]\nunknown_groups = \"deny\"\n",
    )
    .await;
    let (admin, member) = (keys(), keys());
    let unknown = unique_id();
    let mut mem = authed(&relay, &member).await;
    let msg = publish_refused(&mut mem, &group_message(&unknown, None), "restricted:").await;
    assert!(msg.contains("unknown"), "{msg}");
    if !auth {
        let mut anon = anon(&relay).await;
        let (ok, msg) = anon.publish(&group_message(&unknown, None)).await;
        assert!(
            !ok,
            "a 445 for an unknown group was accepted with unknown_groups = deny"
        );
        assert_any_prefix(&msg, &["restricted:", "auth-required:"]);
    }
    expect_req(&mut mem, "member", &[json!({"kinds": [445]})], NOTHING).await;

    // Positive control: once the group is known, a member's message is accepted.
    let mut adm = authed(&relay, &admin).await;
    adm.publish_ok(&roster(&admin, &unknown, "bootstrap", 1, &[&member]))
        .await;
    let m = group_message(&unknown, None);
    mem.publish_ok(&m).await;
    expect_req(
        &mut mem,
        "member",
        &[json!({"kinds": [445], "#h": [unknown]})],
        Want::Events(&[id(&m).as_str()]),
    )
    .await;
}

#[tokio::test]
async fn unknown_groups_deny_refuses_group_messages_for_unknown_groups_auth_off() {
    unknown_groups_deny(false).await;
}

#[tokio::test]
async fn unknown_groups_deny_refuses_group_messages_for_unknown_groups_auth_on() {
    unknown_groups_deny(true).await;
}

#[tokio::test]
async fn unknown_groups_open_accepts_group_messages_for_unknown_groups() {
    // The contrast for the test above: the default is `open`.
    let relay = start_relay(false, "").await;
    let mut ws = relay.connect().await;
    let m = group_message(&unique_id(), None);
    ws.publish_ok(&m).await;
    expect_req(
        &mut ws,
        "anyone",
        &[json!({"ids": [id(&m)]})],
        Want::Events(&[id(&m).as_str()]),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Pre-check edge cases ("CLOSED only when the filter can only match invisible events")
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn roster_request_from_an_unauthenticated_connection_is_closed_before_the_group_exists() {
    // An unauthenticated connection is never a member or admin of any group, so a kind-450
    // filter can only match events it may not see — whether or not its group exists yet
    // (PROTOCOL §2, §3: `CLOSED auth-required:` plus an AUTH challenge, never silence).
    let relay = start_relay(false, "").await;
    let admin = keys();
    let g = unique_id();
    let mut anon = anon(&relay).await;
    let target = [json!({"kinds": [450], "#h": [g]})];
    expect_req(&mut anon, "unauthenticated", &target, AUTH_REQUIRED).await;
    expect_count(&mut anon, "unauthenticated", &target, AUTH_REQUIRED).await;

    // Control: the same filter once the group exists.
    let mut adm = authed(&relay, &admin).await;
    adm.publish_ok(&roster(&admin, &g, "bootstrap", 1, &[]))
        .await;
    expect_req(&mut anon, "unauthenticated", &target, AUTH_REQUIRED).await;
    expect_count(&mut anon, "unauthenticated", &target, AUTH_REQUIRED).await;
}

/// A 446 or 1059 may name several recipients. r2 reads it through its own mailbox (by kind, or
/// `#p` naming r2); a filter whose `#p` names only someone else is refused before any query
/// (README "Protocol choices"), even though this event happens to name r2 too.
async fn multi_recipient(kind: u16) {
    let relay = start_relay(false, "").await;
    let (author, r1, r2) = (keys(), keys(), keys());
    let p1 = pk_hex(&r1);
    let mut from = authed(&relay, &author).await;
    let e = if kind == 446 {
        noise_dm(&author, &[&r1, &r2])
    } else {
        giftwrap(&[&r1, &r2], None)
    };
    from.publish_ok(&e).await;
    let eid = id(&e);
    let author_of_e = e.pubkey.to_hex();

    let mut rx2 = authed(&relay, &r2).await;
    // Control: by kind alone, r2 gets it.
    expect_req(
        &mut rx2,
        "recipient 2",
        &[json!({"kinds": [kind]})],
        Want::Events(&[eid.as_str()]),
    )
    .await;
    let p2 = pk_hex(&r2);
    expect_req(
        &mut rx2,
        "recipient 2",
        &[json!({"kinds": [kind], "#p": [p2]})],
        Want::Events(&[eid.as_str()]),
    )
    .await;
    let others_mailbox = [json!({"kinds": [kind], "#p": [p1], "authors": [author_of_e]})];
    expect_req(&mut rx2, "recipient 2", &others_mailbox, RESTRICTED).await;
    expect_count(&mut rx2, "recipient 2", &others_mailbox, RESTRICTED).await;
}

#[tokio::test]
async fn a_multi_recipient_noise_dm_is_read_through_each_recipients_own_mailbox() {
    multi_recipient(446).await;
}

#[tokio::test]
async fn a_multi_recipient_giftwrap_is_read_through_each_recipients_own_mailbox() {
    multi_recipient(1059).await;
}
