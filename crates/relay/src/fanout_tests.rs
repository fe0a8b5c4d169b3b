//! Live delivery over several lanes, against a real embedded store and the gateway's rules:
//! every connection gets what it may see, in commit order, exactly once.

use super::*;
use crate::connection::ConnectionHandle;
use crate::outbox::Outbox;
use mls_gateway_rules::GatewayConfig;
use mls_proto::{Filter, Hex32};
use mls_store::embedded::{EmbeddedOptions, EmbeddedStore};
use mls_store::{Publisher, WriteOutcome};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

fn keys() -> secp256k1::Keypair {
    secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

fn pubkey(k: &secp256k1::Keypair) -> Hex32 {
    Hex32(k.x_only_public_key().0.serialize())
}

fn subscribe(index: &SubscriptionIndex, conn: &Arc<ConnectionHandle>, id: &str, f: Value) {
    let filter = Filter::from_value(&f).expect("filter");
    let sub = Arc::new(Subscription::new(
        Arc::from(id),
        vec![filter],
        conn.clone(),
        0,
    ));
    index.insert(sub.clone());
    sub.release_pending(HashSet::new(), 0); // as after an empty stored answer and EOSE
}

/// `(sub id, event id)` of each EVENT frame queued in `outbox`, in queue order.
fn frames(outbox: &Outbox) -> Vec<(String, String)> {
    std::iter::from_fn(|| outbox.try_pop())
        .map(|f| {
            let v: Value = serde_json::from_str(&f).expect("frame is JSON");
            assert_eq!(v[0], "EVENT", "{f}");
            (
                v[1].as_str().unwrap().to_owned(),
                v[2]["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn write(store: &EmbeddedStore, ev: Event) {
    let outcome = store
        .write(
            ev,
            Publisher {
                authed: Vec::new(),
                operator: false,
            },
        )
        .await
        .expect("store write");
    assert!(matches!(outcome, WriteOutcome::Accepted), "{outcome:?}");
}

/// Many connections on more lanes (8) than worker threads (4), bursts of events: each connection gets, per
/// subscription, every event it may see in commit order and once, and nothing it may not see
/// (gift wraps only to their recipient's connections, decided per subscriber).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lanes_deliver_in_commit_order_once_each_and_only_what_each_may_see() {
    const CONNECTIONS: u64 = 300;
    const EVENTS: usize = 120;
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Arc::new(Gateway::new(GatewayConfig::default(), false).expect("gateway"));
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default(), gateway.clone())
        .expect("store");
    let index = Arc::new(SubscriptionIndex::default());
    let recipient = keys();

    // Every third connection is authenticated as the gift wraps' recipient; every fifth has a
    // second subscription, for notes only.
    let mut outboxes = Vec::new();
    let mut conns = Vec::new();
    for id in 1..=CONNECTIONS {
        let (conn, outbox) = ConnectionHandle::detached(id, 100_000);
        let conn = Arc::new(conn);
        if id.is_multiple_of(3) {
            assert!(conn.add_authed(pubkey(&recipient), 4));
        }
        subscribe(&index, &conn, "all", json!({"kinds": [1, 1059]}));
        if id.is_multiple_of(5) {
            subscribe(&index, &conn, "notes", json!({"kinds": [1]}));
        }
        conns.push(conn);
        outboxes.push(outbox);
    }
    let (watch_conn, watch_outbox) = ConnectionHandle::detached(CONNECTIONS + 1, 1000);
    let watch_conn = Arc::new(watch_conn);
    subscribe(&index, &watch_conn, "ping", json!({"kinds": [7]}));

    let (stop, shutdown) = watch::channel(false);
    let fan = Fanout {
        store: store.clone(),
        gateway,
        subscriptions: index.clone(),
    };
    let task = tokio::spawn(run_with_lanes(
        fan,
        8,
        shutdown,
        Duration::from_secs(3600),
        None,
    ));

    // Live delivery starts after what is committed when it starts: ping until it answers.
    let author = keys();
    let now = mls_proto::unix_now();
    for n in 0.. {
        write(
            &store,
            Event::sign(&author, now - 1000 + n, 7, vec![], "ping"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !frames(&watch_outbox).is_empty() {
            break;
        }
        assert!(n < 500, "fan-out never delivered the ping");
    }

    // Notes and gift wraps alternate, written all at once: the store commits them in groups,
    // so fan-out hands the lanes bursts of events. Commit order is the store's `seq` order.
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            if i % 2 == 0 {
                Event::sign(&author, now + i as u64, 1, vec![], format!("note {i}"))
            } else {
                let p = vec!["p".to_owned(), pubkey(&recipient).to_hex()];
                Event::sign(&keys(), now, 1059, vec![p], format!("wrap {i}"))
            }
        })
        .collect();
    futures_util::future::join_all(events.into_iter().map(|ev| write(&store, ev))).await;
    let after_pings = store.since(0, usize::MAX).await.expect("read back");
    let committed: Vec<(String, u16)> = after_pings
        .into_iter()
        .filter(|s| s.event.event.kind != 7)
        .map(|s| (s.event.event.id.to_hex(), s.event.event.kind))
        .collect();
    assert_eq!(committed.len(), EVENTS);

    let expected = |conn_id: u64, sub: &str| -> Vec<String> {
        committed
            .iter()
            .filter(|(_, kind)| match (sub, *kind) {
                ("notes", k) => k == 1,
                (_, 1059) => conn_id.is_multiple_of(3),
                _ => true,
            })
            .map(|(id, _)| id.clone())
            .collect()
    };
    let mut got: Vec<HashMap<String, Vec<String>>> = vec![HashMap::new(); outboxes.len()];
    let complete = |got: &[HashMap<String, Vec<String>>]| {
        got.iter().enumerate().all(|(i, subs)| {
            let id = i as u64 + 1;
            let n = |s: &str| subs.get(s).map_or(0, Vec::len);
            n("all") >= expected(id, "all").len()
                && (!id.is_multiple_of(5) || n("notes") >= expected(id, "notes").len())
        })
    };
    // Bounded wait (a failure, never a timing figure): what is missing after it is lost.
    for _ in 0..600 {
        for (outbox, subs) in outboxes.iter().zip(got.iter_mut()) {
            for (sub, id) in frames(outbox) {
                subs.entry(sub).or_default().push(id);
            }
        }
        if complete(&got) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything late would show up as a duplicate or out of order now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (outbox, subs) in outboxes.iter().zip(got.iter_mut()) {
        for (sub, id) in frames(outbox) {
            subs.entry(sub).or_default().push(id);
        }
    }
    for (i, subs) in got.iter().enumerate() {
        let id = i as u64 + 1;
        assert_eq!(subs["all"], expected(id, "all"), "connection {id}, sub all");
        if id.is_multiple_of(5) {
            assert_eq!(
                subs["notes"],
                expected(id, "notes"),
                "connection {id}, sub notes"
            );
        } else {
            assert!(!subs.contains_key("notes"), "connection {id}");
        }
    }
    drop(stop);
    task.abort();
}
