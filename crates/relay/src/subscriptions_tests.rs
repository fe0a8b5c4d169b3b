//! Unit tests of the subscription index (kept out of `subscriptions.rs`, which the index
//! benchmark compiles on its own).

use crate::connection::ConnectionHandle;
use crate::subscriptions::{CommitPosition, Subscription, SubscriptionIndex};
use mls_proto::{Event, Filter};
use serde_json::json;
use std::sync::Arc;

fn event(kind: u16, tags: Vec<Vec<String>>) -> Event {
    let keys =
        secp256k1::Keypair::from_seckey_slice(secp256k1::SECP256K1, &[7u8; 32]).expect("valid key");
    Event::sign(&keys, 1, kind, tags, "")
}

fn sub(conn: &Arc<ConnectionHandle>, id: &str, filter: serde_json::Value) -> Arc<Subscription> {
    let f = Filter::from_value(&filter).expect("filter");
    Arc::new(Subscription::new(Arc::from(id), vec![f], conn.clone(), 0))
}

#[test]
fn matches_through_each_index_and_forgets_closed_connections() {
    let index = SubscriptionIndex::default();
    let (a, _rx_a) = ConnectionHandle::detached(1, 8);
    let (b, _rx_b) = ConnectionHandle::detached(2, 8);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let h = vec!["h".to_string(), "g1".to_string()];
    let ev = event(445, vec![h]);
    index.insert(sub(&a, "by-tag", json!({"#h": ["g1"]})));
    index.insert(sub(&a, "by-kind", json!({"kinds": [445]})));
    index.insert(sub(&a, "other-kind", json!({"kinds": [1]})));
    index.insert(sub(&b, "all", json!({})));
    index.insert(sub(&b, "by-id", json!({"ids": [ev.id.to_hex()]})));
    index.insert(sub(
        &b,
        "by-author",
        json!({"authors": [ev.pubkey.to_hex()]}),
    ));
    let mut got: Vec<String> = index
        .matching(&ev)
        .iter()
        .map(|s| s.sub_id.to_string())
        .collect();
    got.sort();
    assert_eq!(got, ["all", "by-author", "by-id", "by-kind", "by-tag"]);

    // Replacing a subscription id keeps one entry; closing a connection drops all of its.
    index.insert(sub(&a, "by-kind", json!({"kinds": [1]})));
    assert_eq!(index.len(), 6);
    let ids_of_a: Vec<Arc<str>> = ["by-tag", "by-kind", "other-kind"].map(Arc::from).into();
    index.remove_connection(1, &ids_of_a);
    assert_eq!(index.len(), 3);
    assert!(index.matching(&ev).iter().all(|s| s.conn.id == 2));
    assert!(index.remove(2, "all"));
    let ids_of_b: Vec<Arc<str>> = ["by-id", "by-author"].map(Arc::from).into();
    index.remove_connection(2, &ids_of_b);
    assert!(index.is_empty());
    // No subscription keeps a connection alive once it is gone from the index.
    assert_eq!(Arc::strong_count(&a), 1);
    assert_eq!(Arc::strong_count(&b), 1);
}

#[test]
fn a_connections_subscriptions_are_bounded_in_bytes_and_give_them_back() {
    use crate::subscriptions::subscription_bytes;
    let index = SubscriptionIndex::default();
    let (a, _rx_a) = ConnectionHandle::detached(1, 8);
    let (b, _rx_b) = ConnectionHandle::detached(2, 8);
    let (a, b) = (Arc::new(a), Arc::new(b));
    let ids = |n: usize, seed: u8| -> Vec<String> {
        (0..n)
            .map(|i| format!("{seed:02x}{i:062x}"))
            .collect::<Vec<_>>()
    };
    let one = sub(&a, "one", json!({"ids": ids(10, 1)}));
    let cost = subscription_bytes("one", &one.filters);
    assert_eq!(cost, 3 + 64 + 10 * 32);
    let max = 2 * cost + 10;
    index.try_insert(one, max).unwrap();
    index
        .try_insert(sub(&a, "two", json!({"ids": ids(10, 2)})), max)
        .unwrap();
    let refused = index
        .try_insert(sub(&a, "six", json!({"ids": ids(10, 3)})), max)
        .unwrap_err();
    assert!(refused.starts_with("invalid:") && refused.contains("max_subscription_bytes"));
    // Another connection has its own budget; replacing a subscription counts it once.
    index
        .try_insert(sub(&b, "one", json!({"ids": ids(10, 4)})), max)
        .unwrap();
    index
        .try_insert(sub(&a, "two", json!({"ids": ids(10, 5)})), max)
        .unwrap();
    assert_eq!(index.connection_bytes(1), 2 * cost);
    // A refused replacement ends the old subscription of that id too.
    let big = sub(&a, "two", json!({"ids": ids(20, 6)}));
    assert!(index.try_insert(big, max).is_err());
    assert_eq!(index.connection_bytes(1), cost);
    assert!(index.remove(1, "one"));
    assert_eq!(index.connection_bytes(1), 0);
    index.remove_connection(2, &[Arc::from("one")]);
    assert!(index.is_empty());
    assert_eq!(Arc::strong_count(&a), 1);
}

#[test]
fn values_shared_by_many_subscriptions_and_tags_match_exactly() {
    let index = SubscriptionIndex::default();
    let conns: Vec<_> = (0..5)
        .map(|i| Arc::new(ConnectionHandle::detached(i, 8).0))
        .collect();
    let g1 = "a".repeat(64);
    let g2 = "b".repeat(64);
    for c in &conns {
        index.insert(sub(c, "g", json!({"kinds": [445], "#h": [g1, g2]})));
    }
    index.insert(sub(&conns[0], "other", json!({"#h": ["g3"]})));
    let in_g1 = event(445, vec![vec!["h".into(), g1.clone()]]);
    let in_g3 = event(445, vec![vec!["h".into(), "g3".into()]]);
    let in_g4 = event(445, vec![vec!["h".into(), "g4".into()]]);
    assert_eq!(index.matching(&in_g1).len(), 5);
    assert_eq!(index.matching(&in_g3).len(), 1);
    assert!(index.matching(&in_g4).is_empty());
    // Members leave one by one; the rest still match.
    for (i, c) in conns.iter().enumerate() {
        assert!(index.remove(c.id, "g"));
        assert_eq!(index.matching(&in_g1).len(), 4 - i);
    }
    assert!(index.remove(0, "other"));
    assert!(index.is_empty() && index.matching(&in_g3).is_empty());
}

#[test]
fn events_committed_before_registration_are_not_live() {
    let (conn, _outbox) = ConnectionHandle::detached(1, 8);
    let sub = Subscription::new(Arc::from("s"), vec![], Arc::new(conn), 7);
    assert!(!sub.is_live(CommitPosition::Stored(6)));
    assert!(!sub.is_live(CommitPosition::Stored(7)));
    assert!(sub.is_live(CommitPosition::Stored(8)));
    assert!(!sub.is_live(CommitPosition::TransientAfter(6)));
    assert!(sub.is_live(CommitPosition::TransientAfter(7)));
}

#[test]
fn a_subscription_dropped_by_the_index_delivers_nothing_more() {
    // A delivery lane may still hold it in a queued batch after CLOSE or a replacing REQ.
    let index = SubscriptionIndex::default();
    let (conn, outbox) = ConnectionHandle::detached(1, 8);
    let conn = Arc::new(conn);
    let ev = event(1, vec![]);
    let json: Arc<str> = ev.to_json().into();
    let old = sub(&conn, "s", json!({"kinds": [1]}));
    index.insert(old.clone());
    old.release_pending(Default::default(), 0);
    old.deliver(ev.id, &json, CommitPosition::Stored(1));
    assert!(outbox.try_pop().is_some(), "a live subscription delivers");
    // Replaced by a REQ of the same id: the old one is silent, the new one delivers.
    let new = sub(&conn, "s", json!({"kinds": [1]}));
    index.insert(new.clone());
    new.release_pending(Default::default(), 0);
    old.deliver(ev.id, &json, CommitPosition::Stored(2));
    assert!(
        outbox.try_pop().is_none(),
        "the replaced subscription delivered"
    );
    new.deliver(ev.id, &json, CommitPosition::Stored(2));
    assert!(outbox.try_pop().is_some());
    // Closed: silent too.
    assert!(index.remove(1, "s"));
    new.deliver(ev.id, &json, CommitPosition::Stored(3));
    assert!(
        outbox.try_pop().is_none(),
        "the closed subscription delivered"
    );
}
