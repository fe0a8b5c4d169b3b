//! Microbenchmarks of the relay's live subscription index (`crates/relay/src/subscriptions.rs`):
//! matching one event against 10k / 100k subscriptions, against a plain scan of the same
//! filters, and what registering and dropping subscriptions costs at that size.
//!
//! `cargo bench -p mls-bench --bench index` (divan).
//!
//! The index is private to the relay and holds `Arc<ConnectionHandle>`s that only a live
//! WebSocket session can build, so this bench compiles the relay's *own* `subscriptions.rs`
//! into itself (`#[path]`) next to a stand-in `connection::ConnectionHandle` with the few
//! members the index uses. If `subscriptions.rs` starts using another member of the handle,
//! add it to the stand-in below (it only needs to compile; nothing is delivered here).

#[allow(dead_code)]
mod connection {
    /// Stand-in for the relay's connection handle: the index files subscriptions by `id`;
    /// delivery (`send`, `outbox_capacity`, `outbox_max_bytes`, `mark_slow`) is not exercised by these benches.
    pub struct ConnectionHandle {
        pub id: u64,
    }

    impl ConnectionHandle {
        pub fn send(&self, _msg: String) {}
        pub fn outbox_capacity(&self) -> usize {
            1024
        }
        pub fn outbox_max_bytes(&self) -> usize {
            4 << 20
        }
        pub fn mark_slow(&self) {}
    }
}

#[allow(dead_code)]
#[path = "../../relay/src/subscriptions.rs"]
mod subscriptions;

use connection::ConnectionHandle;
use divan::{black_box, Bencher};
use mls_proto::{Event, Filter, Hex32, Hex64};
use std::sync::Arc;
use std::time::Duration;
use subscriptions::{Subscription, SubscriptionIndex};

fn main() {
    divan::Divan::default()
        .max_time(Duration::from_millis(500))
        .config_with_args()
        .main();
}

/// Members per group: every group's message matches this many subscriptions.
const MEMBERS: usize = 10;

fn group(g: usize) -> String {
    format!("{g:064x}")
}

fn member_filter(g: usize) -> Filter {
    Filter::from_value(&serde_json::json!({"kinds":[445],"#h":[group(g)]})).unwrap()
}

/// A kind-445 message of group `g` (the index never looks at the signature).
fn message(g: usize) -> Event {
    Event {
        id: Hex32([7; 32]),
        pubkey: Hex32([9; 32]),
        created_at: 1_700_000_000,
        kind: 445,
        tags: vec![
            vec!["h".into(), group(g)],
            vec!["encoding".into(), "base64".into()],
        ],
        content: "A".repeat(512),
        sig: Hex64([0; 64]),
    }
}

/// `n` connections, each with one group subscription; `n / MEMBERS` groups.
fn index_of(n: usize) -> SubscriptionIndex {
    let index = SubscriptionIndex::default();
    for c in 0..n {
        let conn = Arc::new(ConnectionHandle { id: c as u64 });
        index.insert(Arc::new(Subscription::new(
            Arc::from("live"),
            vec![member_filter(c % (n / MEMBERS))],
            conn,
            0,
        )));
    }
    index
}

/// One group message against N subscriptions: the index finds the group's 10 members.
#[divan::bench(args = [10_000, 100_000])]
fn index_match_group_message(bencher: Bencher, n: usize) {
    let index = index_of(n);
    let ev = message(n / MEMBERS / 2);
    assert_eq!(index.matching(&ev).len(), MEMBERS);
    bencher.bench(|| index.matching(black_box(&ev)));
}

/// A message of a group nobody is subscribed to.
#[divan::bench(args = [10_000, 100_000])]
fn index_match_nobody(bencher: Bencher, n: usize) {
    let index = index_of(n);
    let ev = message(n * 10);
    bencher.bench(|| index.matching(black_box(&ev)));
}

/// The same N filters scanned one by one (what matching costs without the index).
#[divan::bench(args = [10_000, 100_000])]
fn scan_match_group_message(bencher: Bencher, n: usize) {
    let filters: Vec<Filter> = (0..n).map(|c| member_filter(c % (n / MEMBERS))).collect();
    let ev = message(n / MEMBERS / 2);
    bencher.bench(|| filters.iter().filter(|f| f.matches(black_box(&ev))).count());
}

/// REQ then CLOSE of one subscription in an index of N.
#[divan::bench(args = [10_000, 100_000])]
fn index_insert_and_remove(bencher: Bencher, n: usize) {
    let index = index_of(n);
    let conn = Arc::new(ConnectionHandle { id: u64::MAX });
    bencher.bench(|| {
        index.insert(Arc::new(Subscription::new(
            Arc::from("new"),
            vec![member_filter(3)],
            conn.clone(),
            0,
        )));
        index.remove(u64::MAX, "new")
    });
}

/// A connection with one subscription goes away (`remove_connection`) in an index of N.
#[divan::bench(args = [10_000, 100_000])]
fn index_connection_closes(bencher: Bencher, n: usize) {
    let index = index_of(n);
    let conn = Arc::new(ConnectionHandle { id: u64::MAX });
    let ids: [Arc<str>; 1] = [Arc::from("new")];
    bencher.bench(|| {
        index.insert(Arc::new(Subscription::new(
            ids[0].clone(),
            vec![member_filter(3)],
            conn.clone(),
            0,
        )));
        index.remove_connection(u64::MAX, &ids)
    });
}
