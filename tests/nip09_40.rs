//! NIP-09 deletion (by `e` and `a`, own events only, tombstones) and NIP-40 expiration.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn delete_by_e_removes_own_event_and_tombstones_its_id() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let e1 = ev(&k, 1, &[], "to delete");
    let e2 = ev(&k, 1, &[], "to keep");
    ws.publish_ok(&e1).await;
    ws.publish_ok(&e2).await;

    let del = ev(&k, 5, &[&["e", &id_hex(&e1)], &["k", "1"]], "oops");
    ws.publish_ok(&del).await;

    assert!(
        ws.query(&[json!({"ids": [id_hex(&e1)]})]).await.is_empty(),
        "deleted event still served by id"
    );
    assert_eq!(
        ws.query_ids(&[json!({"authors": [pk_hex(&k)], "kinds": [1]})])
            .await,
        vec![id_hex(&e2)]
    );
    assert_eq!(
        ws.count("c", &[json!({"authors": [pk_hex(&k)], "kinds": [1]})])
            .await,
        Ok(1),
        "deleted event still counted"
    );
    // The deletion request itself is an ordinary stored event.
    assert_eq!(
        ws.query(&[json!({"ids": [id_hex(&del)]})]).await,
        vec![event_value(&del)]
    );

    // Re-submission of the deleted id is refused, from any connection.
    let (ok, msg) = ws.publish(&e1).await;
    assert!(!ok, "deleted event accepted again");
    assert_prefix(&msg, "blocked:");
    let mut other = relay.connect().await;
    let (ok, msg) = other.publish(&e1).await;
    assert!(!ok, "deleted event accepted again from another connection");
    assert_prefix(&msg, "blocked:");
    assert!(ws.query(&[json!({"ids": [id_hex(&e1)]})]).await.is_empty());
}

#[tokio::test]
async fn delete_by_e_of_someone_elses_event_has_no_effect() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let (owner, attacker) = (keys(), keys());
    let victim = ev(&owner, 1, &[], "not yours");
    ws.publish_ok(&victim).await;

    let del = ev(&attacker, 5, &[&["e", &id_hex(&victim)]], "");
    let (_ok, msg) = ws.publish(&del).await;
    if !_ok {
        assert_any_prefix(&msg, STANDARD_PREFIXES);
    }
    assert_eq!(
        ws.query(&[json!({"ids": [id_hex(&victim)]})]).await,
        vec![event_value(&victim)],
        "someone else's deletion removed the event"
    );

    // A deletion naming an id that is not stored yet does not block its real author.
    let future = ev(&owner, 1, &[], "published after a foreign deletion");
    let pre = ev(&attacker, 5, &[&["e", &id_hex(&future)]], "");
    let (_ok, _msg) = ws.publish(&pre).await;
    let (ok, msg) = ws.publish(&future).await;
    assert!(
        ok,
        "foreign deletion tombstoned another author's event: {msg}"
    );
    assert_eq!(
        ws.query(&[json!({"ids": [id_hex(&future)]})]).await.len(),
        1
    );
}

#[tokio::test]
async fn delete_by_a_covers_versions_up_to_the_deletion_created_at() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let me = pk_hex(&k);
    let t = now() - 1000;
    let v1 = ev_at(&k, t, 30023, &[&["d", "article"]], "v1");
    let other_d = ev_at(&k, t, 30023, &[&["d", "other"]], "other d");
    ws.publish_ok(&v1).await;
    ws.publish_ok(&other_d).await;

    let addr = format!("30023:{me}:article");
    let del = ev_at(&k, t + 100, 5, &[&["a", &addr], &["k", "30023"]], "");
    ws.publish_ok(&del).await;

    assert!(
        ws.query(&[json!({"authors": [me], "kinds": [30023], "#d": ["article"]})])
            .await
            .is_empty(),
        "address-deleted event still served"
    );
    assert!(ws.query(&[json!({"ids": [id_hex(&v1)]})]).await.is_empty());
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "kinds": [30023], "#d": ["other"]})])
            .await,
        vec![id_hex(&other_d)],
        "a deletion of one address removed another"
    );

    // The deleted version again: refused.
    let (ok, msg) = ws.publish(&v1).await;
    assert!(!ok, "deleted addressable accepted again");
    assert_prefix(&msg, "blocked:");

    // Another version older than the deletion: refused, not served.
    let v_old = ev_at(
        &k,
        t + 50,
        30023,
        &[&["d", "article"]],
        "older than deletion",
    );
    let (ok, msg) = ws.publish(&v_old).await;
    assert!(!ok, "version older than the `a` deletion accepted");
    assert_any_prefix(&msg, &["blocked:", "invalid:"]);
    assert!(ws
        .query(&[json!({"ids": [id_hex(&v_old)]})])
        .await
        .is_empty());

    // A version newer than the deletion is a new life of the address.
    let v_new = ev_at(&k, t + 200, 30023, &[&["d", "article"]], "after deletion");
    ws.publish_ok(&v_new).await;
    assert_eq!(
        ws.query_ids(&[json!({"authors": [me], "kinds": [30023], "#d": ["article"]})])
            .await,
        vec![id_hex(&v_new)]
    );
}

#[tokio::test]
async fn delete_by_a_of_someone_elses_address_has_no_effect() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let (owner, attacker) = (keys(), keys());
    let t = now() - 100;
    let art = ev_at(&owner, t, 30023, &[&["d", "mine"]], "owner's");
    ws.publish_ok(&art).await;
    let addr = format!("30023:{}:mine", pk_hex(&owner));
    let del = ev(&attacker, 5, &[&["a", &addr]], "");
    let (_ok, _msg) = ws.publish(&del).await;
    assert_eq!(
        ws.query(&[json!({"ids": [id_hex(&art)]})]).await,
        vec![event_value(&art)],
        "foreign `a` deletion removed the event"
    );
    // Nor does it block the owner's next version.
    let next = ev_at(&owner, t + 10, 30023, &[&["d", "mine"]], "owner's v2");
    ws.publish_ok(&next).await;
}

#[tokio::test]
async fn delete_by_a_of_a_replaceable_event() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let t = now() - 100;
    let list = ev_at(&k, t, 10002, &[&["r", "wss://relay.example"]], "");
    ws.publish_ok(&list).await;
    let del = ev_at(
        &k,
        t + 10,
        5,
        &[&["a", &format!("10002:{}:", pk_hex(&k))]],
        "",
    );
    ws.publish_ok(&del).await;
    assert!(ws
        .query(&[json!({"authors": [pk_hex(&k)], "kinds": [10002]})])
        .await
        .is_empty());
}

#[tokio::test]
async fn gift_wrap_recipient_may_delete_it() {
    let relay = Relay::start().await;
    let (recipient, stranger) = (keys(), keys());
    let wrapper = keys(); // throwaway key, as NIP-59 does
    let gw = ev_at(
        &wrapper,
        now() - 3600,
        1059,
        &[&["p", &pk_hex(&recipient)]],
        "sealed-welcome-ciphertext",
    );
    let mut publisher = relay.connect().await;
    publisher.publish_ok(&gw).await;
    // Recipient-only (PROTOCOL.md §3): not served to the unauthenticated publisher. By id it
    // is simply not there (answering CLOSED would reveal that the id exists); a filter that can
    // only match the recipient's gift wraps is answered `CLOSED auth-required:`.
    publisher
        .send_req("gw-id", &[json!({"ids": [id_hex(&gw)]})])
        .await;
    match publisher.collect("gw-id").await {
        Ok(evs) => assert!(
            evs.is_empty(),
            "gift wrap served to an unauthenticated connection"
        ),
        Err(m) => assert_any_prefix(&m, &["auth-required:", "restricted:"]),
    }
    let only_theirs = json!({"kinds": [1059], "#p": [pk_hex(&recipient)]});
    let m = publisher
        .req_closed("gw-anon", std::slice::from_ref(&only_theirs))
        .await;
    assert_prefix(&m, "auth-required:");

    let mut r = relay.connect_authed(&recipient).await;
    assert_eq!(
        r.query_ids(&[json!({"ids": [id_hex(&gw)]})]).await,
        vec![id_hex(&gw)]
    );

    // A stranger can neither read it ...
    let mut s = relay.connect_authed(&stranger).await;
    let m = s
        .req_closed("gw-stranger", std::slice::from_ref(&only_theirs))
        .await;
    assert_prefix(&m, "restricted:");
    s.send_req("gw-stranger-id", &[json!({"ids": [id_hex(&gw)]})])
        .await;
    match s.collect("gw-stranger-id").await {
        Ok(evs) => assert!(evs.is_empty(), "gift wrap served to a stranger"),
        Err(m) => assert_any_prefix(&m, &["auth-required:", "restricted:"]),
    }
    // ... nor delete it.
    let del = ev(&stranger, 5, &[&["e", &id_hex(&gw)], &["k", "1059"]], "");
    let _ = s.publish(&del).await;
    assert_eq!(
        r.query_ids(&[json!({"ids": [id_hex(&gw)]})]).await,
        vec![id_hex(&gw)]
    );

    // The recipient can.
    let del = ev(&recipient, 5, &[&["e", &id_hex(&gw)], &["k", "1059"]], "");
    r.publish_ok(&del).await;
    assert!(r.query(&[json!({"ids": [id_hex(&gw)]})]).await.is_empty());
    assert!(r
        .query(&[json!({"kinds": [1059], "#p": [pk_hex(&recipient)]})])
        .await
        .is_empty());
}

#[tokio::test]
async fn already_expired_event_is_refused() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let exp = (now() - 10).to_string();
    let e = ev(&k, 1, &[&["expiration", &exp]], "stale");
    let (ok, msg) = ws.publish(&e).await;
    assert!(!ok, "expired event accepted");
    assert_prefix(&msg, "invalid:");
    assert!(ws.query(&[json!({"ids": [id_hex(&e)]})]).await.is_empty());
}

#[tokio::test]
async fn event_that_expires_while_stored_is_no_longer_served() {
    let relay = Relay::start().await;
    let mut ws = relay.connect().await;
    let k = keys();
    let exp = now() + 4;
    let e = ev(&k, 1, &[&["expiration", &exp.to_string()]], "short-lived");
    let keep = ev(
        &k,
        1,
        &[&["expiration", &(now() + 86400).to_string()]],
        "long-lived",
    );
    ws.publish_ok(&e).await;
    ws.publish_ok(&keep).await;
    if now() + 1 < exp {
        assert_eq!(
            ws.query_ids(&[json!({"ids": [id_hex(&e)]})]).await,
            vec![id_hex(&e)],
            "not-yet-expired event not served"
        );
    }
    while now() <= exp + 1 {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        ws.query(&[json!({"ids": [id_hex(&e)]})]).await.is_empty(),
        "expired event served by id"
    );
    assert_eq!(
        ws.query_ids(&[json!({"authors": [pk_hex(&k)]})]).await,
        vec![id_hex(&keep)],
        "expired event served by author"
    );
    assert_eq!(
        ws.count("c", &[json!({"authors": [pk_hex(&k)]})]).await,
        Ok(1),
        "expired event counted"
    );
}

#[tokio::test]
async fn tombstones_and_replacements_survive_a_restart() {
    let mut relay = Relay::start().await;
    let k = keys();
    let t = now() - 100;
    let mut ws = relay.connect().await;
    let doomed = ev(&k, 1, &[], "deleted before restart");
    ws.publish_ok(&doomed).await;
    ws.publish_ok(&ev(&k, 5, &[&["e", &id_hex(&doomed)]], ""))
        .await;
    let art = ev_at(&k, t, 30023, &[&["d", "x"]], "v1");
    ws.publish_ok(&art).await;
    let addr = format!("30023:{}:x", pk_hex(&k));
    ws.publish_ok(&ev_at(&k, t + 10, 5, &[&["a", &addr]], ""))
        .await;
    let meta_old = ev_at(&k, t, 0, &[], "{}");
    let meta_new = ev_at(&k, t + 1, 0, &[], "{\"name\":\"n\"}");
    ws.publish_ok(&meta_old).await;
    ws.publish_ok(&meta_new).await;
    drop(ws);

    relay.restart().await;
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.publish(&doomed).await;
    assert!(!ok, "deleted id accepted after restart");
    assert_prefix(&msg, "blocked:");
    let (ok, _) = ws.publish(&art).await;
    assert!(!ok, "address-deleted version accepted after restart");
    let (ok, msg) = ws.publish(&meta_old).await;
    assert!(!ok, "replaced version accepted after restart");
    assert_prefix(&msg, "invalid:");
    assert_eq!(
        ws.query_ids(&[json!({"authors": [pk_hex(&k)], "kinds": [0, 1, 30023]})])
            .await,
        vec![id_hex(&meta_new)]
    );
}
