//! Unit tests of the subscription index (kept out of `subscriptions.rs`, which the index
//! benchmark compiles on its own).

use crate::session::ConnectionHandle;
use crate::subscriptions::{Subscription, SubscriptionIndex};
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
    Arc::new(Subscription::new(Arc::from(id), vec![f], conn.clone()))
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
