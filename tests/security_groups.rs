//! Security of groups and mailboxes, from the attacker's side (issue 8, rules 4, 5, 6, 12):
//!
//! - rule 4: a stranger who saw a group's `h` in its 445 traffic cannot gate it (450
//!   `bootstrap` or 1059 with `h`) and lock its users out; a configured admin and the admin
//!   API still can, and a fresh group id is still first-come;
//! - rule 5: once rosters (450) manage a group, a member's gift wrap cannot re-admit someone a
//!   roster removed, nor admit anyone a roster did not;
//! - rule 6: one recipient of a multi-recipient 1059 / 446 cannot delete it for the others
//!   (nor block their copy with a tombstone); a sole recipient still can;
//! - rule 12: the periodic purge of gateway state runs in bounded chunks while publishes get
//!   their OK.
//!
//! Every attack has its positive control (the rightful user still gets through).

mod common;
mod support_api;
mod support_mls;

use common::*;
use mls_store::EventStore;
use serde_json::{json, Value};
use std::sync::Arc;
use support_mls::*;

/// The ids a REQ returns, or the `CLOSED` message.
async fn read_ids(ws: &mut Ws, filter: Value) -> Result<Vec<String>, String> {
    let sub = format!("r{}", rand_suffix());
    ws.send_req(&sub, std::slice::from_ref(&filter)).await;
    let got = ws.collect(&sub).await;
    if got.is_ok() {
        ws.send(&json!(["CLOSE", sub])).await;
    }
    got.map(|evs| {
        evs.iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    })
}

/// `who` reads exactly `want` of `group`'s 445s.
async fn reads_group(ws: &mut Ws, who: &str, group: &str, want: &[&str]) {
    let mut got = read_ids(ws, json!({"kinds": [445], "#h": [group]}))
        .await
        .unwrap_or_else(|m| panic!("{who}: REQ for the group's 445s was CLOSED: {m}"));
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want, "{who}: the group's 445 history");
}

/// `who` reads none of `group`'s 445s (an empty EOSE or a `CLOSED`).
async fn reads_nothing_of_group(ws: &mut Ws, who: &str, group: &str) {
    if let Ok(got) = read_ids(ws, json!({"kinds": [445], "#h": [group]})).await {
        assert!(got.is_empty(), "{who}: served the group's 445s: {got:?}");
    }
}

/// `who` reads event `id` by id (true) or not (false).
async fn reads_event(ws: &mut Ws, id: &str) -> bool {
    matches!(read_ids(ws, json!({"ids": [id]})).await, Ok(v) if v == [id])
}

// ---------------------------------------------------------------------------------------------
// Rule 4: a group already in use cannot be taken over
// ---------------------------------------------------------------------------------------------

async fn stranger_cannot_gate_a_group_served_open(auth: bool) {
    let (alice, bob, mallory, dave) = (keys(), keys(), keys(), keys());
    let relay = start_relay(auth, &admin_pubkeys_config(&[&dave])).await;
    let g = unique_id();
    let mut a = authed(&relay, &alice).await;
    let mut b = authed(&relay, &bob).await;
    let mut m = authed(&relay, &mallory).await;

    // A standard Marmot group: its members never announce membership, they just talk.
    let first = group_message(&g, None);
    a.publish_ok(&first).await;

    // Mallory saw `h` on the wire and tries to gate the group with herself as owner.
    let msg = publish_refused(
        &mut m,
        &roster(&mallory, &g, "bootstrap", 1, &[]),
        "restricted:",
    )
    .await;
    assert!(
        msg.contains("admin"),
        "the refusal names who may gate the group: {msg:?}"
    );
    let wrap = giftwrap(&[&mallory], Some(&g));
    let msg = publish_refused(&mut m, &wrap, "restricted:").await;
    assert!(
        msg.contains("admin"),
        "the refusal names who may gate the group: {msg:?}"
    );

    // The real users are not locked out: they still publish, and read all of their history.
    let second = group_message(&g, None);
    b.publish_ok(&second).await;
    reads_group(&mut a, "alice", &g, &[&id(&first), &id(&second)]).await;
    reads_group(&mut b, "bob", &g, &[&id(&first), &id(&second)]).await;

    // Positive control: first come still wins on a fresh, never used group id.
    let fresh = unique_id();
    m.publish_ok(&roster(&mallory, &fresh, "bootstrap", 1, &[]))
        .await;

    // Positive control: a configured admin may gate a group served open.
    let mut d = authed(&relay, &dave).await;
    d.publish_ok(&roster(&dave, &g, "bootstrap", 1, &[&alice, &bob]))
        .await;
    let third = group_message(&g, None);
    a.publish_ok(&third).await;
    reads_group(&mut b, "bob", &g, &[&id(&first), &id(&second), &id(&third)]).await;
    reads_nothing_of_group(&mut m, "mallory", &g).await;
}

#[tokio::test]
async fn stranger_cannot_gate_a_group_served_open_auth_on() {
    stranger_cannot_gate_a_group_served_open(true).await;
}

#[tokio::test]
async fn stranger_cannot_gate_a_group_served_open_auth_off() {
    stranger_cannot_gate_a_group_served_open(false).await;
}

/// With the archive off nothing is stored, but a 445 delivered live still makes the group
/// "served open".
#[tokio::test]
async fn group_delivered_live_only_is_served_open_too() {
    let (alice, bob, mallory) = (keys(), keys(), keys());
    let relay = start_relay(
        true,
        "[extensions.mls_gateway]\nenable_message_archive = false\n",
    )
    .await;
    let g = unique_id();
    let mut a = authed(&relay, &alice).await;
    let mut b = authed(&relay, &bob).await;
    let mut m = authed(&relay, &mallory).await;
    open_live(
        &mut b,
        "bob",
        "live",
        json!({"kinds": [445], "#h": [g]}),
        NOTHING,
    )
    .await;
    let first = group_message(&g, None);
    a.publish_ok(&first).await;
    expect_live(&mut b, "bob", "live", &id(&first)).await;

    publish_refused(
        &mut m,
        &roster(&mallory, &g, "bootstrap", 1, &[]),
        "restricted:",
    )
    .await;
    publish_refused(&mut m, &giftwrap(&[&mallory], Some(&g)), "restricted:").await;

    // Still open: the next message reaches bob live.
    let second = group_message(&g, None);
    a.publish_ok(&second).await;
    expect_live(&mut b, "bob", "live", &id(&second)).await;
}

/// The admin API may gate a group served open (positive control of the operator's path).
#[tokio::test]
async fn admin_api_may_gate_a_group_served_open() {
    let (alice, mallory, admin) = (keys(), keys(), keys());
    let relay = start_relay(true, &admin_pubkeys_config(&[&admin])).await;
    let g = unique_id();
    let mut a = authed(&relay, &alice).await;
    let first = group_message(&g, None);
    a.publish_ok(&first).await;

    let resp = support_api::call(
        &relay,
        "POST",
        &format!("/admin/groups/{g}/members"),
        Some(&admin),
        Some(&support_api::pubkeys_body(&[pk_hex(&alice)])),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    // Gated now: alice reads, mallory does not and cannot post.
    reads_group(&mut a, "alice", &g, &[&id(&first)]).await;
    let mut m = authed(&relay, &mallory).await;
    reads_nothing_of_group(&mut m, "mallory", &g).await;
    publish_refused(&mut m, &group_message(&g, None), "restricted:").await;
}

// ---------------------------------------------------------------------------------------------
// Rule 5: roster decisions win over gift wraps
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn gift_wrap_cannot_readmit_someone_a_roster_removed() {
    let (alice, bob, erin, carol) = (keys(), keys(), keys(), keys());
    let relay = start_relay(true, "").await;
    let g = unique_id();
    let mut a = authed(&relay, &alice).await;
    let mut b = authed(&relay, &bob).await;
    a.publish_ok(&roster(&alice, &g, "bootstrap", 1, &[&bob, &erin]))
        .await;
    a.publish_ok(&roster(&alice, &g, "remove", 2, &[&erin]))
        .await;
    let before = group_message(&g, None);
    b.publish_ok(&before).await;

    // Bob (a member) gift-wraps erin (removed by the admin) and carol (never admitted).
    let wrap = giftwrap(&[&erin, &carol], Some(&g));
    let (ok, msg) = b.publish(&wrap).await;
    if !ok {
        assert!(
            msg.starts_with("restricted:"),
            "a refused wrap says why: {msg:?}"
        );
    }

    // Neither became a member: they cannot post to nor read the group.
    for (k, who) in [(&erin, "erin"), (&carol, "carol")] {
        let mut ws = authed(&relay, k).await;
        publish_refused(&mut ws, &group_message(&g, None), "restricted:").await;
        reads_nothing_of_group(&mut ws, who, &g).await;
    }

    // Positive control: the roster's own decisions still apply.
    a.publish_ok(&roster(&alice, &g, "add", 3, &[&carol])).await;
    let mut c = authed(&relay, &carol).await;
    let after = group_message(&g, None);
    c.publish_ok(&after).await;
    reads_group(&mut c, "carol", &g, &[&id(&before), &id(&after)]).await;
    reads_group(&mut b, "bob", &g, &[&id(&before), &id(&after)]).await;
}

/// A group whose membership comes from gift wraps only keeps growing by gift wraps.
#[tokio::test]
async fn gift_wraps_still_admit_members_of_a_group_without_rosters() {
    let (alice, bob) = (keys(), keys());
    let relay = start_relay(true, "").await;
    let g = unique_id();
    let mut a = authed(&relay, &alice).await;
    a.publish_ok(&giftwrap(&[&bob], Some(&g))).await;
    let msg = group_message(&g, None);
    let mut b = authed(&relay, &bob).await;
    b.publish_ok(&msg).await;
    reads_group(&mut a, "alice", &g, &[&id(&msg)]).await;
}

// ---------------------------------------------------------------------------------------------
// Rule 6: one recipient cannot take a message away from the others
// ---------------------------------------------------------------------------------------------

fn deletion(k: &secp256k1::Keypair, target: &str, kind: &str) -> mls_proto::Event {
    ev(k, 5, &[&["e", target], &["k", kind]], "")
}

#[tokio::test]
async fn recipient_cannot_delete_a_multi_recipient_message_for_the_others() {
    let (alice, bob, carol) = (keys(), keys(), keys());
    let relay = start_relay(true, "").await;
    let mut a = authed(&relay, &alice).await;
    let mut b = authed(&relay, &bob).await;
    let mut c = authed(&relay, &carol).await;

    let wrap = giftwrap(&[&bob, &carol], None);
    a.publish_ok(&wrap).await;
    let dm = noise_dm(&alice, &[&bob, &carol]);
    a.publish_ok(&dm).await;

    for (target, kind) in [(&wrap, "1059"), (&dm, "446")] {
        let msg = publish_refused(&mut b, &deletion(&bob, &id(target), kind), "restricted:").await;
        assert!(
            msg.contains("recipients"),
            "the refusal says why (several recipients): {msg:?}"
        );
        assert!(
            reads_event(&mut c, &id(target)).await,
            "carol lost kind {kind}"
        );
        assert!(
            reads_event(&mut b, &id(target)).await,
            "bob lost kind {kind}"
        );
    }
    assert!(
        reads_event(&mut a, &id(&dm)).await,
        "the author lost the DM"
    );

    // Positive control: the author may delete it for everyone.
    a.publish_ok(&deletion(&alice, &id(&dm), "446")).await;
    assert!(!reads_event(&mut c, &id(&dm)).await);
    assert!(!reads_event(&mut b, &id(&dm)).await);
}

#[tokio::test]
async fn a_recipients_tombstone_does_not_block_the_others_copy() {
    let (bob, carol) = (keys(), keys());
    let relay = start_relay(true, "").await;
    let mut b = authed(&relay, &bob).await;
    let mut c = authed(&relay, &carol).await;

    // Bob learns (or guesses) the id of a wrap to him and carol before it is published, and
    // "deletes" it in advance.
    let wrap = giftwrap(&[&bob, &carol], None);
    let (ok, msg) = b.publish(&deletion(&bob, &id(&wrap), "1059")).await;
    assert!(
        ok,
        "a deletion of an unknown id is accepted (NIP-09): {msg:?}"
    );

    let mut sender = authed(&relay, &keys()).await;
    sender.publish_ok(&wrap).await;
    assert!(
        reads_event(&mut c, &id(&wrap)).await,
        "carol's copy was blocked"
    );
}

#[tokio::test]
async fn recipient_cannot_take_a_noise_dm_away_from_its_author() {
    let (alice, bob) = (keys(), keys());
    let relay = start_relay(true, "").await;
    let mut a = authed(&relay, &alice).await;
    let mut b = authed(&relay, &bob).await;
    let dm = noise_dm(&alice, &[&bob]);
    a.publish_ok(&dm).await;

    // Bob is its only recipient, but alice reads it too: his deletion would take it from her.
    let msg = publish_refused(&mut b, &deletion(&bob, &id(&dm), "446"), "restricted:").await;
    assert!(
        msg.contains("other reader"),
        "the refusal says why: {msg:?}"
    );
    assert!(
        reads_event(&mut a, &id(&dm)).await,
        "the author lost the DM"
    );
    assert!(reads_event(&mut b, &id(&dm)).await, "bob lost the DM");
}

#[tokio::test]
async fn sole_recipient_may_still_delete_a_gift_wrap() {
    let bob = keys();
    let relay = start_relay(true, "").await;
    let mut b = authed(&relay, &bob).await;
    let wrap = giftwrap(&[&bob], None);
    let mut sender = authed(&relay, &keys()).await;
    sender.publish_ok(&wrap).await;
    assert!(reads_event(&mut b, &id(&wrap)).await);
    b.publish_ok(&deletion(&bob, &id(&wrap), "1059")).await;
    assert!(!reads_event(&mut b, &id(&wrap)).await, "the wrap survived");
    // Its tombstone refuses it again (NIP-09).
    let (ok, msg) = sender.publish(&wrap).await;
    assert!(!ok, "a deleted wrap was accepted again");
    assert_prefix(&msg, "blocked:");
}

// ---------------------------------------------------------------------------------------------
// Rule 12: the purge of gateway state runs in bounded chunks
// ---------------------------------------------------------------------------------------------

/// Expired rate counters seeded straight into the store before the relay starts.
const SEEDED: usize = 25_000;

#[tokio::test]
async fn gateway_state_purge_runs_in_chunks_while_publishes_get_their_ok() {
    // The seed goes straight into the embedded store: pinned to it whatever the run's backend.
    let mut relay = Relay::builder()
        .config("[auth]\nenabled = false\n")
        .config("[extensions.mls_gateway]\nstorage_backend = \"embedded\"\n")
        .prepare();
    {
        let store = mls_store::embedded::EmbeddedStore::open(
            &relay.data_path(),
            mls_store::embedded::EmbeddedOptions::default(),
            Arc::new(mls_store::AcceptAll),
        )
        .expect("open the store");
        // 445 counters of a long past minute (window 1): all stale.
        let done = store
            .update_state(Box::new(|st| {
                for i in 0..SEEDED {
                    let key = format!("rg/{:064x}/anon/1", i);
                    st.put(key.as_bytes(), b"1")
                        .map_err(|e| mls_store::Rejection(format!("error: {e}")))?;
                }
                Ok(())
            }))
            .await
            .expect("seed");
        done.expect("seeded");
        store.close();
    }
    relay.spawn().await;

    let mut ws = relay.connect().await;
    let k = keys();
    ws.publish_ok(&ev(&k, 1, &[], "published during the purge"))
        .await;

    // The purge reports its chunks once done.
    let deadline = std::time::Instant::now() + RECV_TIMEOUT;
    let line = loop {
        let found = relay.log().lines().find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "gateway state purged"
                || v["message"] == "gateway state purged")
                .then_some(v)
        });
        if let Some(v) = found {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no \"gateway state purged\" log line; log tail:\n{}",
            relay.log_tail(20)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let field = |name: &str| {
        line["fields"][name]
            .as_u64()
            .or_else(|| line[name].as_u64())
            .unwrap_or_else(|| panic!("log line without {name}: {line}"))
    };
    assert_eq!(field("removed"), SEEDED as u64, "{line}");
    assert!(
        field("chunks") >= 3,
        "{SEEDED} stale keys purged in fewer than 3 bounded chunks: {line}"
    );
    // And the relay still answers.
    ws.publish_ok(&ev(&k, 1, &[], "after the purge")).await;
}
