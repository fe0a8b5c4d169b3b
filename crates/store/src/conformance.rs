//! Storage conformance suite: what every backend of [`EventStore`] must do, written once
//! against the interface and exported (feature `conformance`) so every backend's tests run
//! the same code. A backend implements [`Harness`] and writes
//! `mls_store::conformance_tests!(MyHarness::new());` in a test file, which makes one
//! `#[tokio::test]` per behaviour below (the test crate needs tokio's `macros` and
//! `rt-multi-thread`).

use crate::{
    Admission, Admitted, Audience, BackupItem, Bounded, EventStore, Publisher, ReadBounds, ReadKey,
    ReadScope, Rejection, StateRead, StateWrite, StoredEvent, Tombstone, Visible, WriteOutcome,
};
use mls_proto::{Event, Filter, Hex32};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::Arc;

/// How the suite gets at a backend.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// Opens the store over this harness's data (empty the first time) with `rules`.
    async fn open(&self, rules: Arc<dyn Admission>) -> Arc<dyn EventStore>;
    /// Shuts down `store` (its last reference) so the same data can be opened again.
    async fn close(&self, store: Arc<dyn EventStore>);
    /// Opens a second store, empty and separate from the first (a restore's target).
    async fn open_other(&self, rules: Arc<dyn Admission>) -> Arc<dyn EventStore>;
}

/// Generates one test per conformance behaviour for the harness built by `$harness`.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@each $harness;
            indexes_answer_each_filter_shape,
            newest_first_with_lowest_id_on_ties,
            limit_per_filter_and_max_limit,
            limit_zero_returns_nothing,
            filters_merge_without_duplicates,
            since_and_until_bound_results,
            ids_lookup_is_newest_first,
            duplicate_is_reported,
            replaceable_keeps_the_newest,
            addressable_versions_by_d_tag,
            deletion_by_e_tag_and_tombstone,
            deletion_by_a_tag_bounded_by_created_at,
            strangers_cannot_delete,
            deleting_a_deletion_does_nothing,
            expired_events_hidden_then_purged,
            visibility_applies_before_limit,
            reads_stop_at_max_candidates,
            count_is_distinct_and_visible_only,
            refused_event_leaves_no_state_and_batchmates_commit,
            state_put_get_and_prefix_scan,
            state_scan_resumes_from_a_key,
            unstored_events_commit_their_state,
            reopen_keeps_data,
            concurrent_writers_all_answered_and_stored,
            long_tag_values_are_indexed,
            ephemeral_events_are_not_stored,
            export_is_oldest_first,
            backup_then_restore_gives_back_the_same_store,
            backup_order_is_deterministic,
            restore_runs_no_rules,
            restore_reports_duplicates_and_refusals,
            health_is_ok,
            commit_stream_reads_back_in_commit_order,
            commit_stream_is_rung_after_commit,
            commit_stream_continues_after_reopen,
            concurrent_commits_get_gapless_seqs,
            scope_keeps_reads_to_what_the_reader_holds,
            out_of_scope_events_are_not_candidates,
            refreshed_audiences_follow_the_state,
            a_batch_sees_its_own_writes,
            limits_cut_newest_first_across_kinds_and_groups,
        );
    };
    (@each $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let harness = $harness;
                $crate::conformance::$name(&harness).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

pub fn keys() -> secp256k1::Keypair {
    secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

pub fn pk(k: &secp256k1::Keypair) -> Hex32 {
    Hex32(k.x_only_public_key().0.serialize())
}

pub fn ev(
    k: &secp256k1::Keypair,
    created_at: u64,
    kind: u16,
    tags: &[&[&str]],
    content: &str,
) -> Event {
    let tags = tags
        .iter()
        .map(|t| t.iter().map(|s| s.to_string()).collect())
        .collect();
    Event::sign(k, created_at, kind, tags, content)
}

pub fn filter(v: Value) -> Filter {
    Filter::from_value(&v).expect("valid filter")
}

pub fn now() -> u64 {
    mls_proto::unix_now()
}

/// Shows everything.
pub fn everyone(_: &Event, _: &dyn StateRead) -> bool {
    true
}

/// Hides events listed under `hide:<id>` in the state (exercises the state view of reads).
pub fn unless_hidden(ev: &Event, state: &dyn StateRead) -> bool {
    state
        .get(format!("hide:{}", ev.id).as_bytes())
        .expect("state read")
        .is_none()
}

/// Rules for the suite:
/// - every `["put", key, value]` tag is written to the state, and a per-author counter
///   `n:<pubkey>` is incremented — before deciding, so a refusal must discard them;
/// - content `reject` is refused with `restricted: test rule`;
/// - `["nostore"]`: accepted but not stored;
/// - `["retain", secs]`: expires `secs` after receipt (like a retention rule);
/// - may_delete: the author, or whoever `["deleter", pubkey]` names (like a gift-wrap
///   recipient);
/// - audience: one read key per `["aud", key]` tag (`readers`, `admins`, `p:<hex>`,
///   `g:<group>`, `nobody` for none); with `["aud-state", k]`, the pubkey the state holds at
///   `aud:<k>` (anyone while it holds none); anyone without such tags.
pub struct TestRules;

impl Admission for TestRules {
    fn admit(
        &self,
        ev: &Event,
        _: &Publisher,
        received_at: u64,
        state: &mut dyn StateWrite,
    ) -> Result<Admitted, Rejection> {
        let fail = |e: crate::StoreError| Rejection(format!("error: {e}"));
        for t in ev.tags.iter().filter(|t| t.len() >= 3 && t[0] == "put") {
            state.put(t[1].as_bytes(), t[2].as_bytes()).map_err(fail)?;
        }
        let counter = format!("n:{}", ev.pubkey);
        let n = state
            .get(counter.as_bytes())
            .map_err(fail)?
            .map(|v| String::from_utf8(v).unwrap().parse::<u64>().unwrap())
            .unwrap_or(0);
        state
            .put(counter.as_bytes(), (n + 1).to_string().as_bytes())
            .map_err(fail)?;
        if ev.content == "reject" {
            return Err(Rejection("restricted: test rule".into()));
        }
        let retain = ev
            .tag_value("retain")
            .and_then(|s| s.parse::<u64>().ok())
            .map(|s| received_at + s);
        Ok(Admitted {
            expires_at: match (retain, ev.expiration()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            store: !ev.has_tag("nostore"),
        })
    }

    fn may_delete(&self, deleter: &Hex32, target: &Event) -> bool {
        *deleter == target.pubkey || target.tag_value("deleter") == Some(&deleter.to_hex())
    }

    fn audience(&self, ev: &Event, state: &dyn StateRead) -> Audience {
        if let Some(k) = ev.tag_value("aud-state") {
            let held = state
                .get(format!("aud:{k}").as_bytes())
                .expect("state read")
                .and_then(|v| Hex32::from_hex(std::str::from_utf8(&v).ok()?));
            return match held {
                Some(pk) => Audience::new(vec![ReadKey::Pubkey(pk)]),
                None => Audience::anyone(),
            };
        }
        let tags: Vec<&str> = ev.tag_values("aud").collect();
        if tags.is_empty() {
            return Audience::anyone();
        }
        Audience::new(
            tags.into_iter()
                .filter_map(|t| match t {
                    "readers" => Some(ReadKey::Readers),
                    "admins" => Some(ReadKey::Admins),
                    _ => match t.split_once(':') {
                        Some(("p", pk)) => Hex32::from_hex(pk).map(ReadKey::Pubkey),
                        Some(("g", g)) => Some(ReadKey::Group(g.to_string())),
                        _ => None,
                    },
                })
                .collect(),
        )
    }
}

async fn open(h: &dyn Harness) -> Arc<dyn EventStore> {
    h.open(Arc::new(TestRules)).await
}

async fn put(store: &dyn EventStore, e: &Event) -> WriteOutcome {
    store
        .write(e.clone(), Publisher::default())
        .await
        .expect("write")
}

async fn accept(store: &dyn EventStore, e: &Event) {
    assert_eq!(
        put(store, e).await,
        WriteOutcome::Accepted,
        "writing {}",
        e.id
    );
}

async fn query_with(
    store: &dyn EventStore,
    filters: &[Value],
    max_limit: u64,
    now: u64,
    visible: &(dyn Fn(&Event, &dyn StateRead) -> bool + Send + Sync),
) -> Vec<StoredEvent> {
    let filters: Vec<Filter> = filters.iter().cloned().map(filter).collect();
    store
        .query(
            &filters,
            ReadBounds::unbounded(max_limit),
            now,
            &ReadScope::everything(),
            visible,
        )
        .await
        .expect("query")
        .value
}

/// Ids returned for `filters` (max_limit 500, everything visible, real clock).
async fn ids(store: &dyn EventStore, filters: &[Value]) -> Vec<Hex32> {
    query_with(store, filters, 500, now(), &everyone)
        .await
        .into_iter()
        .map(|s| s.event.id)
        .collect()
}

async fn count(store: &dyn EventStore, filters: &[Value]) -> u64 {
    let filters: Vec<Filter> = filters.iter().cloned().map(filter).collect();
    count_with(store, &filters, now(), &everyone).await
}

async fn count_with(
    store: &dyn EventStore,
    filters: &[Filter],
    now: u64,
    visible: &(dyn Fn(&Event, &dyn StateRead) -> bool + Send + Sync),
) -> u64 {
    let counted = store
        .count(
            filters,
            ReadBounds::unbounded(500),
            now,
            &ReadScope::everything(),
            visible,
        )
        .await
        .expect("count");
    assert!(counted.complete, "an unbounded count is complete");
    counted.value
}

async fn state_get(store: &dyn EventStore, key: &str) -> Option<String> {
    let mut out = None;
    store
        .read_state(&mut |s| {
            out = s
                .get(key.as_bytes())?
                .map(|v| String::from_utf8(v).unwrap());
            Ok(())
        })
        .await
        .expect("read_state");
    out
}

async fn hide(store: &dyn EventStore, id: Hex32) {
    store
        .update_state(Box::new(move |s| {
            s.put(format!("hide:{id}").as_bytes(), b"1")
                .map_err(|e| Rejection(e.to_string()))
        }))
        .await
        .expect("update_state")
        .expect("accepted");
}

/// `events` sorted the way results must come: newest first, ties lowest id first.
fn newest_first(events: &[&Event]) -> Vec<Hex32> {
    let mut v: Vec<&Event> = events.to_vec();
    v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    v.into_iter().map(|e| e.id).collect()
}

fn deleted() -> WriteOutcome {
    WriteOutcome::Rejected("blocked: event was deleted".into())
}

fn newer_stored() -> WriteOutcome {
    WriteOutcome::Rejected("invalid: a newer version of this event is already stored".into())
}

// ---------------------------------------------------------------------------------------
// Behaviours
// ---------------------------------------------------------------------------------------

pub async fn indexes_answer_each_filter_shape(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let (alice, bob) = (keys(), keys());
    let (a, b) = (pk(&alice).to_hex(), pk(&bob).to_hex());
    let a1 = ev(&alice, 100, 1, &[&["t", "x"]], "a1");
    let a2 = ev(&alice, 101, 7, &[&["p", &b]], "a2");
    let b1 = ev(&bob, 102, 1, &[&["t", "y"], &["t", "x"]], "b1");
    let b2 = ev(&bob, 103, 445, &[&["h", "g1"]], "b2");
    for e in [&a1, &a2, &b1, &b2] {
        accept(s, e).await;
    }
    let cases: Vec<(Value, Vec<&Event>)> = vec![
        (json!({}), vec![&b2, &b1, &a2, &a1]),
        (json!({"authors": [a]}), vec![&a2, &a1]),
        (json!({"kinds": [1]}), vec![&b1, &a1]),
        (json!({"authors": [b], "kinds": [1]}), vec![&b1]),
        (
            json!({"authors": [a, b], "kinds": [1, 7]}),
            vec![&b1, &a2, &a1],
        ),
        (json!({"#t": ["x"]}), vec![&b1, &a1]),
        (json!({"#t": ["x"], "authors": [a]}), vec![&a1]),
        (json!({"#t": ["x", "y"]}), vec![&b1, &a1]),
        (json!({"#p": [b]}), vec![&a2]),
        (json!({"#h": ["g1"], "kinds": [445]}), vec![&b2]),
        (json!({"#h": ["g1"], "kinds": [1]}), vec![]),
        (json!({"#h": ["g2"]}), vec![]),
        (json!({"kinds": [1], "#t": ["y"]}), vec![&b1]),
        (json!({"ids": [a1.id.to_hex()]}), vec![&a1]),
    ];
    for (f, want) in cases {
        let want: Vec<Hex32> = want.iter().map(|e| e.id).collect();
        assert_eq!(ids(s, std::slice::from_ref(&f)).await, want, "filter {f}");
    }
    // Served as signed: the event and its JSON are unchanged.
    let got = query_with(s, &[json!({"ids": [b1.id.to_hex()]})], 10, now(), &everyone).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].event, b1);
    assert_eq!(&*got[0].json, b1.to_json());
    assert_eq!(serde_json::from_str::<Event>(&got[0].json).unwrap(), b1);
}

pub async fn newest_first_with_lowest_id_on_ties(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let mut all = Vec::new();
    for i in 0..8u64 {
        let created = if i < 5 { 200 } else { 201 };
        let half = format!("n{}", i % 2);
        let e = ev(
            &k,
            created,
            1,
            &[&["t", "tie"], &["t", &half]],
            &format!("e{i}"),
        );
        accept(&*store, &e).await;
        all.push(e);
    }
    let want = newest_first(&all.iter().collect::<Vec<_>>());
    let author = pk(&k).to_hex();
    for f in [
        json!({}),
        json!({"kinds": [1]}),
        json!({"authors": [author]}),
        json!({"authors": [author], "kinds": [1]}),
        json!({"#t": ["tie"]}),
        // Two walks merged: each value holds half of each second.
        json!({"#t": ["n0", "n1"]}),
        // Every event under two of the values: listed once.
        json!({"#t": ["tie", "n0", "n1"]}),
        json!({"ids": all.iter().map(|e| e.id.to_hex()).collect::<Vec<_>>()}),
    ] {
        assert_eq!(
            ids(&*store, std::slice::from_ref(&f)).await,
            want,
            "filter {f}"
        );
        // With a limit the cut also follows that order, inside the older second too.
        let mut limited = f.clone();
        limited["limit"] = json!(4);
        assert_eq!(
            ids(&*store, &[limited.clone()]).await,
            want[..4].to_vec(),
            "filter {limited}"
        );
    }
}

pub async fn limit_per_filter_and_max_limit(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let (k, other) = (keys(), keys());
    let mut mine = Vec::new();
    for t in 1..=10 {
        let e = ev(&k, t, 1, &[], "");
        accept(s, &e).await;
        mine.push(e);
    }
    let theirs: Vec<Event> = (1..=3).map(|t| ev(&other, 100 + t, 7, &[], "")).collect();
    for e in &theirs {
        accept(s, e).await;
    }
    let newest_mine: Vec<Hex32> = mine.iter().rev().map(|e| e.id).collect();
    let q = |f: Vec<Value>, max: u64| async move {
        query_with(s, &f, max, now(), &everyone)
            .await
            .into_iter()
            .map(|e| e.event.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        q(vec![json!({"kinds": [1], "limit": 3})], 500).await,
        newest_mine[..3]
    );
    assert_eq!(q(vec![json!({"kinds": [1]})], 4).await, newest_mine[..4]);
    assert_eq!(
        q(vec![json!({"kinds": [1], "limit": 100})], 5).await,
        newest_mine[..5]
    );
    // Each filter gets its own limit.
    let got = q(
        vec![
            json!({"kinds": [1], "limit": 2}),
            json!({"kinds": [7], "limit": 1}),
        ],
        500,
    )
    .await;
    assert_eq!(got, vec![theirs[2].id, newest_mine[0], newest_mine[1]]);
}

pub async fn limit_zero_returns_nothing(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let e = ev(&k, 10, 1, &[], "");
    accept(&*store, &e).await;
    assert!(ids(&*store, &[json!({"limit": 0})]).await.is_empty());
    assert!(ids(&*store, &[json!({"ids": [e.id.to_hex()], "limit": 0})])
        .await
        .is_empty());
    assert!(ids(&*store, &[json!({"kinds": []})]).await.is_empty());
    assert!(ids(&*store, &[json!({"since": 11, "until": 10})])
        .await
        .is_empty());
    // Another filter of the same REQ is unaffected.
    assert_eq!(
        ids(&*store, &[json!({"limit": 0}), json!({"kinds": [1]})]).await,
        vec![e.id]
    );
    let none = query_with(&*store, &[json!({})], 0, now(), &everyone).await;
    assert!(none.is_empty(), "max_limit 0");
}

pub async fn filters_merge_without_duplicates(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let a = ev(&k, 1, 1, &[&["t", "x"]], "");
    let b = ev(&k, 2, 1, &[&["t", "y"]], "");
    let c = ev(&k, 3, 7, &[&["t", "x"]], "");
    for e in [&a, &b, &c] {
        accept(&*store, e).await;
    }
    let got = ids(
        &*store,
        &[
            json!({"kinds": [1]}),
            json!({"#t": ["x"]}),
            json!({"authors": [pk(&k).to_hex()]}),
            json!({"ids": [a.id.to_hex(), c.id.to_hex()]}),
        ],
    )
    .await;
    assert_eq!(got, vec![c.id, b.id, a.id]);
}

pub async fn since_and_until_bound_results(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let mut all = Vec::new();
    for t in 10..=20 {
        let e = ev(&k, t, 1, &[&["t", "x"]], "");
        accept(&*store, &e).await;
        all.push(e);
    }
    let range = |lo: u64, hi: u64| -> Vec<Hex32> {
        all.iter()
            .rev()
            .filter(|e| e.created_at >= lo && e.created_at <= hi)
            .map(|e| e.id)
            .collect()
    };
    let author = pk(&k).to_hex();
    for base in [
        json!({}),
        json!({"kinds": [1]}),
        json!({"#t": ["x"]}),
        json!({"authors": [author]}),
        json!({"authors": [author], "kinds": [1]}),
    ] {
        let with = |extra: Value| {
            let mut f = base.clone();
            for (k, v) in extra.as_object().unwrap() {
                f[k] = v.clone();
            }
            f
        };
        assert_eq!(
            ids(&*store, &[with(json!({"since": 12, "until": 15}))]).await,
            range(12, 15)
        );
        assert_eq!(
            ids(&*store, &[with(json!({"since": 18}))]).await,
            range(18, 20)
        );
        assert_eq!(
            ids(&*store, &[with(json!({"until": 11}))]).await,
            range(10, 11)
        );
        assert_eq!(
            ids(&*store, &[with(json!({"since": 15, "until": 15}))]).await,
            range(15, 15)
        );
        assert!(ids(&*store, &[with(json!({"since": 21}))]).await.is_empty());
    }
}

pub async fn ids_lookup_is_newest_first(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let old = ev(&k, 1, 1, &[], "old");
    let mid = ev(&k, 2, 7, &[], "mid");
    let new = ev(&k, 3, 1, &[], "new");
    for e in [&old, &mid, &new] {
        accept(&*store, e).await;
    }
    let unknown = Hex32([7; 32]).to_hex();
    let asked = vec![
        old.id.to_hex(),
        unknown,
        new.id.to_hex(),
        mid.id.to_hex(),
        old.id.to_hex(),
    ];
    assert_eq!(
        ids(&*store, &[json!({"ids": asked})]).await,
        vec![new.id, mid.id, old.id]
    );
    assert_eq!(
        ids(&*store, &[json!({"ids": asked, "limit": 2})]).await,
        vec![new.id, mid.id]
    );
    assert_eq!(
        ids(&*store, &[json!({"ids": asked, "kinds": [1]})]).await,
        vec![new.id, old.id]
    );
}

pub async fn duplicate_is_reported(h: &dyn Harness) {
    let store = open(h).await;
    let e = ev(&keys(), 5, 1, &[], "once");
    accept(&*store, &e).await;
    assert_eq!(put(&*store, &e).await, WriteOutcome::Duplicate);
    assert_eq!(count(&*store, &[json!({})]).await, 1);
}

pub async fn replaceable_keeps_the_newest(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let k = keys();
    let author = pk(&k).to_hex();
    let v100 = ev(&k, 100, 0, &[&["t", "p"]], "v100");
    accept(s, &v100).await;
    assert_eq!(put(s, &ev(&k, 90, 0, &[], "older")).await, newer_stored());
    let v110 = ev(&k, 110, 0, &[&["t", "p"]], "v110");
    accept(s, &v110).await;
    // The replaced version vanished from every path.
    for f in [
        json!({}),
        json!({"kinds": [0]}),
        json!({"authors": [author]}),
        json!({"authors": [author], "kinds": [0]}),
        json!({"#t": ["p"]}),
        json!({"ids": [v100.id.to_hex(), v110.id.to_hex()]}),
    ] {
        assert_eq!(
            ids(s, std::slice::from_ref(&f)).await,
            vec![v110.id],
            "filter {f}"
        );
    }
    assert_eq!(count(s, &[json!({"kinds": [0]})]).await, 1);

    // Equal created_at: the lowest id wins, whatever the arrival order.
    let mut tie: Vec<Event> = (0..2)
        .map(|i| ev(&k, 120, 0, &[], &format!("tie{i}")))
        .collect();
    tie.sort_by_key(|e| e.id);
    let (low, high) = (&tie[0], &tie[1]);
    accept(s, high).await;
    accept(s, low).await;
    assert_eq!(put(s, high).await, newer_stored());
    assert_eq!(ids(s, &[json!({"kinds": [0]})]).await, vec![low.id]);

    // Replaceable kinds ignore `d`: one address per kind and author.
    let r1 = ev(&k, 1, 10002, &[&["d", "a"]], "");
    let r2 = ev(&k, 2, 10002, &[&["d", "b"]], "");
    accept(s, &r1).await;
    accept(s, &r2).await;
    assert_eq!(ids(s, &[json!({"kinds": [10002]})]).await, vec![r2.id]);
    // Another author's version is another address.
    let other = ev(&keys(), 1, 0, &[], "");
    accept(s, &other).await;
    assert_eq!(
        ids(s, &[json!({"kinds": [0]})]).await,
        vec![low.id, other.id]
    );
}

pub async fn addressable_versions_by_d_tag(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let k = keys();
    let a100 = ev(&k, 100, 30000, &[&["d", "a"]], "");
    let b100 = ev(&k, 100, 30000, &[&["d", "b"]], "");
    let nod = ev(&k, 100, 30000, &[], "no d tag");
    for e in [&a100, &b100, &nod] {
        accept(s, e).await;
    }
    let a101 = ev(&k, 101, 30000, &[&["d", "a"]], "");
    accept(s, &a101).await;
    assert_eq!(
        put(s, &ev(&k, 99, 30000, &[&["d", "a"]], "")).await,
        newer_stored()
    );
    // An empty `d` is the same address as no `d`.
    assert_eq!(
        put(s, &ev(&k, 50, 30000, &[&["d", ""]], "")).await,
        newer_stored()
    );
    assert_eq!(ids(s, &[json!({"#d": ["a"]})]).await, vec![a101.id]);
    let mut want = vec![a101.id];
    want.extend(newest_first(&[&b100, &nod]));
    assert_eq!(ids(s, &[json!({"kinds": [30000]})]).await, want);
    // Same d, other kind: another address.
    accept(s, &ev(&k, 1, 30001, &[&["d", "a"]], "")).await;
}

pub async fn deletion_by_e_tag_and_tombstone(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let alice = keys();
    let a1 = ev(&alice, 100, 1, &[&["t", "x"]], "a1");
    let keep = ev(&alice, 101, 1, &[&["t", "x"]], "keep");
    accept(s, &a1).await;
    accept(s, &keep).await;
    // A deletion naming a stored event and one not seen yet.
    let later = ev(&alice, 102, 1, &[], "arrives after its deletion");
    let del = ev(
        &alice,
        200,
        5,
        &[&["e", &a1.id.to_hex()], &["e", &later.id.to_hex()]],
        "",
    );
    accept(s, &del).await;
    let author = pk(&alice).to_hex();
    for f in [
        json!({"ids": [a1.id.to_hex()]}),
        json!({"kinds": [1]}),
        json!({"#t": ["x"]}),
        json!({"authors": [author], "kinds": [1]}),
    ] {
        assert!(
            !ids(s, std::slice::from_ref(&f)).await.contains(&a1.id),
            "filter {f}"
        );
    }
    assert_eq!(ids(s, &[json!({"kinds": [1]})]).await, vec![keep.id]);
    // The kind 5 itself is stored like any regular event.
    assert_eq!(ids(s, &[json!({"kinds": [5]})]).await, vec![del.id]);
    // Tombstones refuse re-submission.
    assert_eq!(put(s, &a1).await, deleted());
    assert_eq!(put(s, &later).await, deleted());
    assert_eq!(count(s, &[json!({})]).await, 2);
}

pub async fn deletion_by_a_tag_bounded_by_created_at(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let alice = keys();
    let a = pk(&alice).to_hex();
    let x100 = ev(&alice, 100, 30000, &[&["d", "x"]], "");
    let y200 = ev(&alice, 200, 30000, &[&["d", "y"]], "");
    let p100 = ev(&alice, 100, 10002, &[], "");
    for e in [&x100, &y200, &p100] {
        accept(s, e).await;
    }
    let del = ev(
        &alice,
        150,
        5,
        &[
            &["a", &format!("30000:{a}:x")],
            &["a", &format!("30000:{a}:y")],
            &["a", &format!("10002:{a}:")],
        ],
        "",
    );
    accept(s, &del).await;
    // x100 and p100 are covered (created before the deletion), y200 is not.
    assert_eq!(
        ids(s, &[json!({"kinds": [30000, 10002]})]).await,
        vec![y200.id]
    );
    // Versions up to the deletion's created_at are refused, later ones accepted.
    assert_eq!(
        put(s, &ev(&alice, 140, 30000, &[&["d", "x"]], "")).await,
        deleted()
    );
    assert_eq!(
        put(s, &ev(&alice, 150, 30000, &[&["d", "x"]], "")).await,
        deleted()
    );
    assert_eq!(put(s, &ev(&alice, 150, 10002, &[], "")).await, deleted());
    let x160 = ev(&alice, 160, 30000, &[&["d", "x"]], "");
    accept(s, &x160).await;
    accept(s, &ev(&alice, 151, 10002, &[], "")).await;
    // The y address is tombstoned up to 150 too, but y200 stays the stored version.
    assert_eq!(
        put(s, &ev(&alice, 120, 30000, &[&["d", "y"]], "")).await,
        deleted()
    );
    assert_eq!(ids(s, &[json!({"#d": ["y"]})]).await, vec![y200.id]);
}

pub async fn strangers_cannot_delete(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let (alice, mallory, bob) = (keys(), keys(), keys());
    let a = pk(&alice).to_hex();
    let a1 = ev(&alice, 100, 1, &[], "a1");
    let ax = ev(&alice, 100, 30000, &[&["d", "x"]], "");
    accept(s, &a1).await;
    accept(s, &ax).await;
    // Mallory's deletion is stored (it is a valid event) but deletes nothing ...
    let future = ev(&alice, 101, 1, &[], "not yet published");
    let del = ev(
        &mallory,
        200,
        5,
        &[
            &["e", &a1.id.to_hex()],
            &["e", &future.id.to_hex()],
            &["a", &format!("30000:{a}:x")],
            &["a", &format!("30000:{a}:z")],
        ],
        "",
    );
    accept(s, &del).await;
    assert_eq!(
        ids(s, &[json!({"authors": [a]})]).await,
        newest_first(&[&a1, &ax])
    );
    // ... and blocks nothing: her tombstones do not count against Alice's events.
    accept(s, &future).await;
    accept(s, &ev(&alice, 150, 30000, &[&["d", "z"]], "")).await;
    // The rules may let someone else delete (e.g. a gift wrap's recipient).
    let b = pk(&bob).to_hex();
    let wrap = ev(&alice, 300, 1059, &[&["deleter", &b]], "");
    accept(s, &wrap).await;
    accept(s, &ev(&bob, 301, 5, &[&["e", &wrap.id.to_hex()]], "")).await;
    assert!(ids(s, &[json!({"kinds": [1059]})]).await.is_empty());
    assert_eq!(put(s, &wrap).await, deleted());
}

pub async fn deleting_a_deletion_does_nothing(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let alice = keys();
    let a1 = ev(&alice, 100, 1, &[], "a1");
    accept(s, &a1).await;
    let d1 = ev(&alice, 101, 5, &[&["e", &a1.id.to_hex()]], "");
    accept(s, &d1).await;
    let d2 = ev(&alice, 102, 5, &[&["e", &d1.id.to_hex()]], "");
    accept(s, &d2).await;
    assert_eq!(ids(s, &[json!({"kinds": [5]})]).await, vec![d2.id, d1.id]);
    assert_eq!(put(s, &a1).await, deleted());
}

pub async fn expired_events_hidden_then_purged(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let k = keys();
    let t = now();
    let nip40 = ev(
        &k,
        1,
        1,
        &[&["expiration", &(t + 100).to_string()]],
        "nip40",
    );
    let retained = ev(&k, 2, 1, &[&["retain", "200"]], "retention rule");
    let forever = ev(&k, 3, 1, &[], "forever");
    for e in [&nip40, &retained, &forever] {
        accept(s, e).await;
    }
    let at = |when: u64| async move {
        query_with(s, &[json!({})], 500, when, &everyone)
            .await
            .into_iter()
            .map(|e| e.event.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(at(t).await, vec![forever.id, retained.id, nip40.id]);
    assert_eq!(
        at(t + 100).await,
        vec![forever.id, retained.id],
        "expiration <= now is hidden"
    );
    assert!(at(t + 10_000).await == vec![forever.id]);
    let filters = vec![filter(json!({}))];
    assert_eq!(count_with(s, &filters, t + 100, &everyone).await, 2);

    assert_eq!(s.purge_expired(t + 50).await.unwrap(), 0);
    assert_eq!(s.purge_expired(t + 100).await.unwrap(), 1);
    assert_eq!(
        at(t).await,
        vec![forever.id, retained.id],
        "purged for good"
    );
    assert_eq!(s.purge_expired(t + 10_000).await.unwrap(), 1);
    assert_eq!(s.purge_expired(t + 10_000).await.unwrap(), 0);
    assert_eq!(ids(s, &[json!({"kinds": [1]})]).await, vec![forever.id]);
    let mut exported = Vec::new();
    s.export(&mut |e| exported.push(e.event.id)).await.unwrap();
    assert_eq!(exported, vec![forever.id]);
}

pub async fn visibility_applies_before_limit(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let k = keys();
    let all: Vec<Event> = (1..=5).map(|t| ev(&k, t, 1, &[&["t", "x"]], "")).collect();
    for e in &all {
        accept(s, e).await;
    }
    hide(s, all[4].id).await;
    hide(s, all[3].id).await;
    for f in [
        json!({"limit": 2}),
        json!({"kinds": [1], "limit": 2}),
        json!({"#t": ["x"], "limit": 2}),
    ] {
        let got: Vec<Hex32> = query_with(s, std::slice::from_ref(&f), 500, now(), &unless_hidden)
            .await
            .into_iter()
            .map(|e| e.event.id)
            .collect();
        assert_eq!(got, vec![all[2].id, all[1].id], "filter {f}");
    }
    let ids_filter =
        json!({"ids": all.iter().map(|e| e.id.to_hex()).collect::<Vec<_>>(), "limit": 2});
    let got: Vec<Hex32> = query_with(s, &[ids_filter], 500, now(), &unless_hidden)
        .await
        .into_iter()
        .map(|e| e.event.id)
        .collect();
    assert_eq!(got, vec![all[2].id, all[1].id]);
    let filters = vec![filter(json!({}))];
    assert_eq!(count_with(s, &filters, now(), &unless_hidden).await, 3);
}

/// Bounds of at most `max_candidates` candidates (and a limit no test reaches).
fn candidates_bound(max_candidates: u64) -> ReadBounds {
    ReadBounds {
        max_limit: 500,
        max_candidates,
    }
}

/// A query everything is in scope for, examining at most `max_candidates` stored events.
async fn query_bounded(
    s: &dyn EventStore,
    filters: &[Filter],
    max_candidates: u64,
    visible: Visible<'_>,
) -> Bounded<Vec<StoredEvent>> {
    let bounds = candidates_bound(max_candidates);
    s.query(filters, bounds, now(), &ReadScope::everything(), visible)
        .await
        .expect("query")
}

/// [`query_bounded`]'s COUNT.
async fn count_bounded(
    s: &dyn EventStore,
    filters: &[Filter],
    max_candidates: u64,
    visible: Visible<'_>,
) -> Bounded<u64> {
    let bounds = candidates_bound(max_candidates);
    s.count(filters, bounds, now(), &ReadScope::everything(), visible)
        .await
        .expect("count")
}

/// Hidden events count towards `max_candidates` (not towards `limit`): a read stops there,
/// keeps what it found, and says it is incomplete; one bound covers all of a read's filters.
pub async fn reads_stop_at_max_candidates(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let k = keys();
    let all: Vec<Event> = (1..=10).map(|t| ev(&k, t, 1, &[&["t", "x"]], "")).collect();
    for e in &all {
        accept(s, e).await;
    }
    // The newest six are hidden.
    for e in &all[4..] {
        hide(s, e.id).await;
    }
    let author = pk(&k).to_hex();
    for f in [
        json!({}),
        json!({"kinds": [1]}),
        json!({"#t": ["x"]}),
        json!({"authors": [author]}),
    ] {
        let filters = vec![filter(f.clone())];
        let got = query_bounded(s, &filters, 8, &unless_hidden).await;
        let ids: Vec<Hex32> = got.value.iter().map(|e| e.event.id).collect();
        assert_eq!(
            ids,
            vec![all[3].id, all[2].id],
            "{f}: the newest eight examined"
        );
        assert!(!got.complete, "{f}: stopped with candidates left");
        let got = query_bounded(s, &filters, 10, &unless_hidden).await;
        assert_eq!(got.value.len(), 4, "{f}");
        assert!(got.complete, "{f}: exactly enough is complete");
        let counted = count_bounded(s, &filters, 8, &unless_hidden).await;
        assert_eq!((counted.value, counted.complete), (2, false), "{f}");
        let counted = count_bounded(s, &filters, 10, &unless_hidden).await;
        assert_eq!((counted.value, counted.complete), (4, true), "{f}");
    }
    // A limit reached before the bound is a complete answer.
    let filters = vec![filter(json!({"kinds": [1], "limit": 1}))];
    let got = query_bounded(s, &filters, 7, &everyone).await;
    assert!(got.complete && got.value.len() == 1);
    // The bound is shared by the filters of one read, ids included.
    let ids: Vec<String> = all.iter().map(|e| e.id.to_hex()).collect();
    let filters = vec![filter(json!({"kinds": [1]})), filter(json!({"ids": ids}))];
    let got = count_bounded(s, &filters, 15, &everyone).await;
    assert_eq!((got.value, got.complete), (10, false));
    // An author with many kinds cannot make a read by author alone expensive either.
    let many = keys();
    for kind in 1..=12u16 {
        accept(s, &ev(&many, 100 + u64::from(kind), 1000 + kind, &[], "")).await;
    }
    let filters = vec![filter(json!({"authors": [pk(&many).to_hex()]}))];
    let got = query_bounded(s, &filters, 8, &everyone).await;
    assert!(!got.complete, "twelve kinds, eight candidates: partial");
    assert!(got.value.len() <= 8);
    let got = query_bounded(s, &filters, 500, &everyone).await;
    assert!(got.complete);
    assert_eq!(got.value.len(), 12, "every kind, newest first");
    assert!(got
        .value
        .windows(2)
        .all(|w| w[0].event.created_at > w[1].event.created_at));
    // A busy second (twenty events sharing their created_at) costs a read that reaches its
    // limit inside it only the candidates that read takes, lowest id first.
    let busy: Vec<Event> = (0..20)
        .map(|i| ev(&keys(), 500, 1, &[&["t", "busy"]], &format!("b{i}")))
        .collect();
    for e in &busy {
        accept(s, e).await;
    }
    let want = newest_first(&busy.iter().collect::<Vec<_>>());
    let filters = vec![filter(json!({"#t": ["busy"], "limit": 3}))];
    let got = query_bounded(s, &filters, 5, &everyone).await;
    let ids: Vec<Hex32> = got.value.iter().map(|e| e.event.id).collect();
    assert_eq!(ids, want[..3], "the three lowest ids of the second");
    assert!(got.complete, "limit reached before the bound");
    let filters = vec![filter(json!({"#t": ["busy"]}))];
    let got = query_bounded(s, &filters, 5, &everyone).await;
    let ids: Vec<Hex32> = got.value.iter().map(|e| e.event.id).collect();
    assert_eq!(ids, want[..5], "cut at the bound, in the answer's order");
    assert!(!got.complete);
}

pub async fn count_is_distinct_and_visible_only(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let k = keys();
    let a = ev(&k, 1, 1, &[&["t", "x"]], "");
    let b = ev(&k, 2, 1, &[], "");
    let c = ev(&k, 3, 7, &[&["t", "x"]], "");
    for e in [&a, &b, &c] {
        accept(s, e).await;
    }
    assert_eq!(
        count(s, &[json!({"kinds": [1]}), json!({"#t": ["x"]})]).await,
        3
    );
    assert_eq!(
        count(s, &[json!({"kinds": [1], "limit": 1})]).await,
        2,
        "limit is ignored"
    );
    assert_eq!(count(s, &[json!({"kinds": [9]})]).await, 0);
    assert_eq!(
        count(s, &[json!({"ids": [a.id.to_hex(), a.id.to_hex()]})]).await,
        1
    );
    hide(s, c.id).await;
    let filters = vec![filter(json!({"#t": ["x"]}))];
    assert_eq!(count_with(s, &filters, now(), &unless_hidden).await, 1);
}

pub async fn refused_event_leaves_no_state_and_batchmates_commit(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let author = pk(&k);
    // Fired together so that they share group commits.
    let mut tasks = Vec::new();
    let mut events = Vec::new();
    for i in 0..60u64 {
        let key = format!("k{i:02}");
        let content = if i % 3 == 0 { "reject" } else { "ok" };
        let e = ev(&k, 1000 + i, 1, &[&["put", &key, "v"]], content);
        events.push(e.clone());
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.write(e, Publisher::default()).await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let outcome = task.await.unwrap().unwrap();
        if i % 3 == 0 {
            assert_eq!(
                outcome,
                WriteOutcome::Rejected("restricted: test rule".into())
            );
        } else {
            assert_eq!(outcome, WriteOutcome::Accepted);
        }
    }
    let mut keys_found = Vec::new();
    store
        .read_state(&mut |s| {
            s.scan_prefix(b"k", &mut |k, _| {
                keys_found.push(String::from_utf8(k.to_vec()).unwrap());
                true
            })
        })
        .await
        .unwrap();
    let want: Vec<String> = (0..60)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("k{i:02}"))
        .collect();
    assert_eq!(keys_found, want);
    // The per-author counter saw exactly the accepted events, in order, across batches.
    assert_eq!(
        state_get(&*store, &format!("n:{author}")).await.as_deref(),
        Some("40")
    );
    let stored: HashSet<Hex32> = ids(&*store, &[json!({})]).await.into_iter().collect();
    let accepted: HashSet<Hex32> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, e)| e.id)
        .collect();
    assert_eq!(stored, accepted);
}

pub async fn state_put_get_and_prefix_scan(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let r = s
        .update_state(Box::new(|st| {
            let put = |st: &mut dyn StateWrite, k: &str, v: &str| {
                st.put(k.as_bytes(), v.as_bytes())
                    .map_err(|e| Rejection(e.to_string()))
            };
            for (k, v) in [
                ("g/b", "2"),
                ("g/a", "1"),
                ("g/c", "3"),
                ("h/a", "x"),
                ("g", "0"),
            ] {
                put(st, k, v)?;
            }
            st.delete(b"g/c").map_err(|e| Rejection(e.to_string()))?;
            // Reads inside the change see the change.
            assert_eq!(st.get(b"g/a").unwrap().as_deref(), Some(&b"1"[..]));
            assert_eq!(st.get(b"g/c").unwrap(), None);
            Ok(())
        }))
        .await
        .unwrap();
    assert_eq!(r, Ok(()));
    // A refused change leaves nothing behind.
    let r = s
        .update_state(Box::new(|st| {
            st.put(b"g/z", b"no").unwrap();
            st.delete(b"g/a").unwrap();
            Err(Rejection("restricted: nope".into()))
        }))
        .await
        .unwrap();
    assert_eq!(r, Err(Rejection("restricted: nope".into())));

    let mut seen = Vec::new();
    let mut first = Vec::new();
    let mut all = Vec::new();
    s.read_state(&mut |st| {
        assert_eq!(st.get(b"g/a")?.as_deref(), Some(&b"1"[..]));
        assert_eq!(st.get(b"g/z")?, None);
        assert_eq!(st.get(b"missing")?, None);
        st.scan_prefix(b"g/", &mut |k, v| {
            seen.push((k.to_vec(), v.to_vec()));
            true
        })?;
        st.scan_prefix(b"g/", &mut |k, _| {
            first.push(k.to_vec());
            false
        })?;
        st.scan_prefix(b"", &mut |k, _| {
            all.push(k.to_vec());
            true
        })
    })
    .await
    .unwrap();
    assert_eq!(
        seen,
        vec![
            (b"g/a".to_vec(), b"1".to_vec()),
            (b"g/b".to_vec(), b"2".to_vec())
        ]
    );
    assert_eq!(first, vec![b"g/a".to_vec()]);
    let all: Vec<String> = all
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(all, vec!["g", "g/a", "g/b", "h/a"]);

    // The overlay's scan merges buffered changes over stored ones, in key order.
    let r = s
        .update_state(Box::new(|st| {
            st.put(b"g/0", b"new").unwrap();
            st.put(b"g/b", b"changed").unwrap();
            st.delete(b"g/a").unwrap();
            let mut got = Vec::new();
            st.scan_prefix(b"g/", &mut |k, v| {
                got.push(format!(
                    "{}={}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(v)
                ));
                true
            })
            .unwrap();
            assert_eq!(got, vec!["g/0=new", "g/b=changed"]);
            Ok(())
        }))
        .await
        .unwrap();
    assert_eq!(r, Ok(()));
    assert_eq!(state_get(s, "g/b").await.as_deref(), Some("changed"));
    assert_eq!(state_get(s, "g/a").await, None);
}

/// `scan_prefix_from` (what a chunked walk resumes with): starts at the first key `>= from`,
/// stays under the prefix, and sees the overlay's buffered changes.
pub async fn state_scan_resumes_from_a_key(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let keys_from = |st: &dyn StateRead, prefix: &str, from: &str| {
        let mut got = Vec::new();
        st.scan_prefix_from(prefix.as_bytes(), from.as_bytes(), &mut |k, _| {
            got.push(String::from_utf8_lossy(k).into_owned());
            true
        })
        .unwrap();
        got
    };
    let r = s
        .update_state(Box::new(move |st| {
            for k in ["a/1", "a/2", "a/3", "a/4", "b/1", "a"] {
                st.put(k.as_bytes(), b"v").unwrap();
            }
            Ok(())
        }))
        .await
        .unwrap();
    assert_eq!(r, Ok(()));
    let mut committed = Vec::new();
    s.read_state(&mut |st| {
        committed.push(keys_from(st, "a/", "a/2"));
        committed.push(keys_from(st, "a/", "a/2\0"));
        committed.push(keys_from(st, "a/", "a/"));
        committed.push(keys_from(st, "a/", "a/9"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        committed,
        vec![
            vec!["a/2", "a/3", "a/4"],
            vec!["a/3", "a/4"],
            vec!["a/1", "a/2", "a/3", "a/4"],
            Vec::<&str>::new(),
        ]
    );
    let r = s
        .update_state(Box::new(move |st| {
            st.delete(b"a/3").unwrap();
            st.put(b"a/25", b"v").unwrap();
            assert_eq!(keys_from(st, "a/", "a/2\0"), vec!["a/25", "a/4"]);
            Ok(())
        }))
        .await
        .unwrap();
    assert_eq!(r, Ok(()));
}

pub async fn unstored_events_commit_their_state(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let e = ev(
        &keys(),
        1,
        445,
        &[&["nostore"], &["put", "live", "yes"]],
        "",
    );
    accept(s, &e).await;
    assert!(ids(s, &[json!({})]).await.is_empty());
    assert_eq!(state_get(s, "live").await.as_deref(), Some("yes"));
}

pub async fn reopen_keeps_data(h: &dyn Harness) {
    let store = open(h).await;
    let alice = keys();
    let a1 = ev(&alice, 1, 1, &[&["t", "x"]], "a1");
    let a2 = ev(&alice, 2, 1, &[&["put", "kept", "1"]], "a2");
    let gone = ev(&alice, 3, 1, &[], "deleted");
    for e in [&a1, &a2, &gone] {
        accept(&*store, e).await;
    }
    accept(&*store, &ev(&alice, 4, 5, &[&["e", &gone.id.to_hex()]], "")).await;
    h.close(store).await;

    let store = open(h).await;
    assert_eq!(
        ids(&*store, &[json!({"kinds": [1]})]).await,
        vec![a2.id, a1.id]
    );
    assert_eq!(ids(&*store, &[json!({"#t": ["x"]})]).await, vec![a1.id]);
    assert_eq!(state_get(&*store, "kept").await.as_deref(), Some("1"));
    assert_eq!(put(&*store, &a1).await, WriteOutcome::Duplicate);
    assert_eq!(put(&*store, &gone).await, deleted());
    store.health().await.unwrap();
}

pub async fn concurrent_writers_all_answered_and_stored(h: &dyn Harness) {
    let store = open(h).await;
    let authors: Vec<secp256k1::Keypair> = (0..20).map(|_| keys()).collect();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let e = ev(
            &authors[(i % 20) as usize],
            1000 + i,
            1,
            &[&["t", "load"]],
            &i.to_string(),
        );
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.write(e, Publisher::default()).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), WriteOutcome::Accepted);
    }
    assert_eq!(count(&*store, &[json!({"#t": ["load"]})]).await, 200);
    assert_eq!(ids(&*store, &[json!({"kinds": [1]})]).await.len(), 200);
    for k in &authors {
        assert_eq!(
            state_get(&*store, &format!("n:{}", pk(k))).await.as_deref(),
            Some("10")
        );
    }
}

pub async fn long_tag_values_are_indexed(h: &dyn Harness) {
    let store = open(h).await;
    let long = "v".repeat(1000);
    let longer = "v".repeat(1001);
    let e = ev(&keys(), 1, 1, &[&["r", &long]], "");
    let f = ev(&keys(), 2, 1, &[&["r", &longer]], "");
    accept(&*store, &e).await;
    accept(&*store, &f).await;
    assert_eq!(ids(&*store, &[json!({"#r": [long]})]).await, vec![e.id]);
    assert_eq!(ids(&*store, &[json!({"#r": [longer]})]).await, vec![f.id]);
    assert!(ids(&*store, &[json!({"#r": ["v".repeat(999)]})])
        .await
        .is_empty());
}

pub async fn ephemeral_events_are_not_stored(h: &dyn Harness) {
    let store = open(h).await;
    accept(&*store, &ev(&keys(), 1, 20001, &[], "live only")).await;
    assert!(ids(&*store, &[json!({})]).await.is_empty());
}

pub async fn export_is_oldest_first(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let events: Vec<Event> = [3u64, 1, 2]
        .iter()
        .map(|t| ev(&k, *t, 1, &[], ""))
        .collect();
    for e in &events {
        accept(&*store, e).await;
    }
    let mut got = Vec::new();
    store
        .export(&mut |s| got.push((s.event.created_at, s.json.to_string())))
        .await
        .unwrap();
    let mut want: Vec<(u64, String)> = events.iter().map(|e| (e.created_at, e.to_json())).collect();
    want.sort();
    assert_eq!(got, want);
}

/// Everything `backup` yields, rendered comparably (events as JSON + times).
async fn backup_of(store: &dyn EventStore) -> Vec<String> {
    let mut out = Vec::new();
    store
        .backup(&mut |item| {
            out.push(match item {
                BackupItem::Event(s) => {
                    format!("event {} {} {:?}", s.json, s.received_at, s.expires_at)
                }
                BackupItem::State { key, value } => format!("state {key:?} {value:?}"),
                BackupItem::Tombstone(t) => format!("tombstone {t:?}"),
            });
            true
        })
        .await
        .expect("backup");
    out
}

async fn backup_items(store: &dyn EventStore) -> Vec<BackupItem> {
    let mut out = Vec::new();
    store
        .backup(&mut |item| {
            out.push(item.clone());
            true
        })
        .await
        .expect("backup");
    out
}

/// Rules that refuse everything: a restore must not run them.
struct RefuseAll;

impl Admission for RefuseAll {
    fn admit(
        &self,
        _: &Event,
        _: &Publisher,
        _: u64,
        state: &mut dyn StateWrite,
    ) -> Result<Admitted, Rejection> {
        let _ = state.put(b"rules-ran", b"1");
        Err(Rejection("restricted: refuse all".into()))
    }
}

pub async fn backup_then_restore_gives_back_the_same_store(h: &dyn Harness) {
    let a = open(h).await;
    let (alice, mallory) = (keys(), keys());
    let pa = pk(&alice).to_hex();
    let t = now() - 1000;
    let note = ev(&alice, t, 1, &[&["t", "x"], &["put", "g/1", "{}"]], "n");
    let kept = ev(&alice, t + 1, 1, &[&["retain", "86400"]], "kept a day");
    let doomed = ev(&alice, t, 1, &[], "doomed");
    let meta_old = ev(&alice, t, 0, &[], "old");
    let meta_new = ev(&alice, t + 5, 0, &[], "new");
    let long_d = "d".repeat(400);
    let art = ev(&alice, t, 30000, &[&["d", &long_d]], "");
    for e in [&note, &kept, &doomed, &meta_old, &meta_new, &art] {
        accept(&*a, e).await;
    }
    let del = ev(
        &alice,
        t + 10,
        5,
        &[
            &["e", &doomed.id.to_hex()],
            &["a", &format!("30000:{pa}:{long_d}")],
            &["a", &format!("30000:{pa}:short")],
        ],
        "",
    );
    accept(&*a, &del).await;
    // A stranger's tombstone of a stored event: kept, and blocks nothing.
    accept(
        &*a,
        &ev(&mallory, t + 11, 5, &[&["e", &note.id.to_hex()]], ""),
    )
    .await;
    hide(&*a, kept.id).await;
    let before = backup_of(&*a).await;
    assert!(before.iter().any(|l| l.starts_with("tombstone Address")));
    assert!(before.iter().any(|l| l.contains(&long_d)), "long d carried");

    let b = h.open_other(Arc::new(TestRules)).await;
    assert!(
        backup_of(&*b).await.is_empty(),
        "the other store starts empty"
    );
    let items = backup_items(&*a).await;
    let n = items.len();
    let outcomes = b.restore(items).await.expect("restore");
    assert_eq!(outcomes, vec![WriteOutcome::Accepted; n]);
    assert_eq!(
        backup_of(&*b).await,
        before,
        "a restore gives back the same store"
    );

    // It behaves as the original: deletions stay, versions stay replaced, state is there.
    assert_eq!(put(&*b, &doomed).await, deleted());
    assert_eq!(put(&*b, &meta_old).await, newer_stored());
    let old_art = ev(&alice, t + 1, 30000, &[&["d", &long_d]], "");
    assert_eq!(put(&*b, &old_art).await, deleted());
    assert_eq!(
        put(&*b, &ev(&alice, t, 30000, &[&["d", "short"]], "")).await,
        deleted()
    );
    assert_eq!(state_get(&*b, "g/1").await.as_deref(), Some("{}"));
    assert_eq!(
        state_get(&*b, &format!("hide:{}", kept.id))
            .await
            .as_deref(),
        Some("1")
    );
    let filters = [json!({"authors": [pa]})];
    assert_eq!(ids(&*b, &filters).await, ids(&*a, &filters).await);
    assert_eq!(ids(&*b, &[json!({"#t": ["x"]})]).await, vec![note.id]);
    assert_eq!(
        query_with(
            &*b,
            &[json!({"ids": [kept.id.to_hex()]})],
            10,
            now(),
            &everyone
        )
        .await
        .iter()
        .map(|s| (s.received_at, s.expires_at))
        .collect::<Vec<_>>(),
        query_with(
            &*a,
            &[json!({"ids": [kept.id.to_hex()]})],
            10,
            now(),
            &everyone
        )
        .await
        .iter()
        .map(|s| (s.received_at, s.expires_at))
        .collect::<Vec<_>>(),
        "receipt and expiry times are kept"
    );
    // The retention expiry still purges it in time.
    assert_eq!(b.purge_expired(now() + 2 * 86400).await.unwrap(), 1);
}

pub async fn backup_order_is_deterministic(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let mut events: Vec<Event> = (0..6)
        .map(|i| ev(&k, 50 + i % 2, 1, &[], &i.to_string()))
        .collect();
    events.push(ev(&k, 10, 1, &[&["put", "b", "2"], &["put", "a", "1"]], ""));
    for e in &events {
        accept(&*store, e).await;
    }
    let mut got_events = Vec::new();
    let mut got_keys = Vec::new();
    store
        .backup(&mut |item| {
            match item {
                BackupItem::Event(s) => got_events.push((s.event.created_at, s.event.id)),
                BackupItem::State { key, .. } => got_keys.push(key.clone()),
                BackupItem::Tombstone(_) => {}
            }
            true
        })
        .await
        .unwrap();
    let mut want: Vec<(u64, Hex32)> = events.iter().map(|e| (e.created_at, e.id)).collect();
    want.sort();
    assert_eq!(got_events, want, "oldest first, ties lowest id first");
    let mut sorted = got_keys.clone();
    sorted.sort();
    assert_eq!(got_keys, sorted, "state in key order");
    assert!(got_keys.contains(&b"a".to_vec()) && got_keys.contains(&b"b".to_vec()));
    assert_eq!(backup_of(&*store).await, backup_of(&*store).await);

    // Stopping early stops.
    let mut seen = 0;
    store
        .backup(&mut |_| {
            seen += 1;
            seen < 3
        })
        .await
        .unwrap();
    assert_eq!(seen, 3);
}

pub async fn restore_runs_no_rules(h: &dyn Harness) {
    let a = open(h).await;
    let k = keys();
    let e = ev(&k, 100, 1, &[&["put", "x", "1"]], "");
    accept(&*a, &e).await;
    let items = backup_items(&*a).await;
    let b = h.open_other(Arc::new(RefuseAll)).await;
    let n = items.len();
    assert_eq!(
        b.restore(items).await.unwrap(),
        vec![WriteOutcome::Accepted; n]
    );
    assert_eq!(backup_of(&*b).await, backup_of(&*a).await);
    assert_eq!(state_get(&*b, "rules-ran").await, None);
    // The rules still hold for writes.
    assert_eq!(
        put(&*b, &ev(&k, 101, 1, &[], "")).await,
        WriteOutcome::Rejected("restricted: refuse all".into())
    );
}

pub async fn restore_reports_duplicates_and_refusals(h: &dyn Harness) {
    let store = open(h).await;
    let k = keys();
    let e = ev(&k, 100, 1, &[], "");
    accept(&*store, &e).await;
    let newer = ev(&k, 200, 0, &[], "new");
    accept(&*store, &newer).await;
    let stored = |ev: &Event| {
        BackupItem::Event(StoredEvent {
            event: ev.clone(),
            json: ev.to_json().into(),
            received_at: 5,
            expires_at: None,
        })
    };
    let items = vec![
        stored(&e),
        stored(&ev(&k, 100, 0, &[], "old")),
        BackupItem::State {
            key: vec![b'k'; 512],
            value: vec![],
        },
        BackupItem::State {
            key: vec![b'k'; 511],
            value: b"v".to_vec(),
        },
        BackupItem::Tombstone(Tombstone::Address {
            kind: 1,
            pubkey: pk(&k),
            d: String::new(),
            until: 1,
        }),
    ];
    let out = store.restore(items).await.unwrap();
    assert_eq!(out[0], WriteOutcome::Duplicate);
    assert_eq!(out[1], newer_stored());
    assert!(matches!(&out[2], WriteOutcome::Rejected(m) if m.starts_with("invalid:")));
    assert_eq!(out[3], WriteOutcome::Accepted);
    assert!(matches!(&out[4], WriteOutcome::Rejected(m) if m.starts_with("invalid:")));
    assert_eq!(ids(&*store, &[json!({"kinds": [0]})]).await, vec![newer.id]);
}

pub async fn health_is_ok(h: &dyn Harness) {
    let store = open(h).await;
    store.health().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The commit stream
// ---------------------------------------------------------------------------------------

async fn since_ids(store: &dyn EventStore, after: u64, limit: usize) -> Vec<(u64, Hex32)> {
    store
        .since(after, limit)
        .await
        .expect("since")
        .into_iter()
        .map(|s| (s.seq, s.event.event.id))
        .collect()
}

pub async fn commit_stream_reads_back_in_commit_order(h: &dyn Harness) {
    let store = open(h).await;
    let start = store.commits().last_seq();
    let alice = keys();
    // Written oldest-last: commit order, not created_at, decides.
    let a = ev(&alice, 30, 1, &[], "a");
    let b = ev(&alice, 20, 1, &[], "b");
    let c = ev(&alice, 10, 1, &[], "c");
    for e in [&a, &b, &c] {
        accept(&*store, e).await;
    }
    // Not stored, no seq: refused, duplicate, `store: false`, ephemeral.
    assert!(matches!(
        put(&*store, &ev(&alice, 1, 1, &[], "reject")).await,
        WriteOutcome::Rejected(_)
    ));
    assert_eq!(put(&*store, &a).await, WriteOutcome::Duplicate);
    accept(&*store, &ev(&alice, 1, 1, &[&["nostore"]], "")).await;
    accept(&*store, &ev(&alice, 1, 20001, &[], "")).await;
    let all = since_ids(&*store, start, 100).await;
    assert_eq!(
        all,
        vec![(start + 1, a.id), (start + 2, b.id), (start + 3, c.id)]
    );
    assert_eq!(store.commits().last_seq(), start + 3);
    // Bounded, and resumable after any seq.
    assert_eq!(since_ids(&*store, start, 2).await, all[..2].to_vec());
    assert_eq!(since_ids(&*store, start + 2, 2).await, all[2..].to_vec());
    assert_eq!(since_ids(&*store, start + 3, 10).await, vec![]);
    assert_eq!(since_ids(&*store, u64::MAX, 10).await, vec![]);
    // A deleted event leaves the stream; the deletion itself takes the next seq, and the
    // numbers already handed out do not move.
    let del = ev(&alice, 40, 5, &[&["e", &b.id.to_hex()]], "");
    accept(&*store, &del).await;
    assert_eq!(
        since_ids(&*store, start, 100).await,
        vec![(start + 1, a.id), (start + 3, c.id), (start + 4, del.id)]
    );
    // A replaced version leaves it too; the new version is a new commit.
    let r1 = ev(&alice, 50, 10002, &[], "v1");
    let r2 = ev(&alice, 51, 10002, &[], "v2");
    accept(&*store, &r1).await;
    accept(&*store, &r2).await;
    assert_eq!(
        since_ids(&*store, start + 4, 100).await,
        vec![(start + 6, r2.id)]
    );
    let got = store.since(start + 5, 1).await.unwrap();
    assert_eq!(got[0].event.json.as_ref(), r2.to_json());
}

pub async fn commit_stream_is_rung_after_commit(h: &dyn Harness) {
    let store = open(h).await;
    let mut notices = store.commits().subscribe();
    let start = store.commits().last_seq();
    let alice = keys();
    let stored = ev(&alice, 1, 1, &[], "stored");
    accept(&*store, &stored).await;
    let n = notices.recv().await.unwrap();
    assert_eq!(n.last_seq, start + 1);
    assert!(n.transient.is_empty());
    // When the notice arrives, the event is readable.
    assert_eq!(
        since_ids(&*store, start, 10).await,
        vec![(start + 1, stored.id)]
    );

    // Accepted but not stored: carried by the notice, placed after what committed before it.
    let unstored = ev(&alice, 2, 1, &[&["nostore"]], "");
    accept(&*store, &unstored).await;
    let n = notices.recv().await.unwrap();
    assert_eq!(n.last_seq, start + 1);
    assert_eq!(n.transient.len(), 1);
    assert_eq!(n.transient[0].0, start + 1);
    assert_eq!(n.transient[0].1.id, unstored.id);

    // An announced (ephemeral) event too.
    let eph = Arc::new(ev(&alice, 3, 20001, &[], ""));
    store.commits().announce(eph.clone());
    let n = notices.recv().await.unwrap();
    assert_eq!(n.transient[0].1.id, eph.id);
    assert_eq!(n.last_seq, start + 1);

    // A refusal rings nothing new (no stored event, nothing to deliver).
    let _ = put(&*store, &ev(&alice, 4, 1, &[], "reject")).await;
    while let Ok(n) = notices.try_recv() {
        assert_eq!(n.last_seq, start + 1);
        assert!(n.transient.is_empty());
    }
}

pub async fn commit_stream_continues_after_reopen(h: &dyn Harness) {
    let store = open(h).await;
    let alice = keys();
    accept(&*store, &ev(&alice, 1, 1, &[], "one")).await;
    let last = store.commits().last_seq();
    h.close(store).await;
    let store = open(h).await;
    assert_eq!(store.commits().last_seq(), last);
    let two = ev(&alice, 2, 1, &[], "two");
    accept(&*store, &two).await;
    assert_eq!(since_ids(&*store, last, 10).await, vec![(last + 1, two.id)]);
}

pub async fn concurrent_commits_get_gapless_seqs(h: &dyn Harness) {
    let store = open(h).await;
    let start = store.commits().last_seq();
    let authors: Vec<secp256k1::Keypair> = (0..10).map(|_| keys()).collect();
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        let e = ev(
            &authors[(i % 10) as usize],
            1000 + i,
            1,
            &[],
            &i.to_string(),
        );
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.write(e, Publisher::default()).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), WriteOutcome::Accepted);
    }
    let mut seqs = Vec::new();
    let mut after = start;
    loop {
        let page = store.since(after, 7).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        seqs.extend(page.iter().map(|s| s.seq));
    }
    assert_eq!(seqs, (start + 1..=start + 100).collect::<Vec<_>>());
    assert_eq!(store.commits().last_seq(), start + 100);
}

/// Ids (sorted) of what a read in `scope` returns for each filter shape, and its count; every
/// shape must give the same answer (each takes another index or path).
async fn scoped_ids(store: &dyn EventStore, scope: &ReadScope, author: &Hex32) -> Vec<Hex32> {
    let shapes = [
        json!({}),
        json!({"kinds": [1, 7]}),
        json!({"authors": [author.to_hex()]}),
        json!({"kinds": [1, 7], "#t": ["x"]}),
    ];
    let mut answers = Vec::new();
    for shape in shapes {
        let filters = vec![filter(shape.clone())];
        let found = store
            .query(
                &filters,
                ReadBounds::unbounded(500),
                now(),
                scope,
                &everyone,
            )
            .await
            .expect("query");
        assert!(found.complete);
        let mut ids: Vec<Hex32> = found.value.iter().map(|s| s.event.id).collect();
        ids.sort();
        let counted = store
            .count(
                &filters,
                ReadBounds::unbounded(500),
                now(),
                scope,
                &everyone,
            )
            .await
            .expect("count");
        assert_eq!(counted.value, ids.len() as u64, "count of {shape}");
        answers.push((shape, ids));
    }
    let first = answers[0].1.clone();
    for (shape, ids) in &answers {
        assert_eq!(ids, &first, "{shape} answers like {{}}");
    }
    // By ids: the same events, whatever else was asked for.
    let all_ids: Vec<String> = ids(store, &[json!({})])
        .await
        .iter()
        .map(Hex32::to_hex)
        .collect();
    let by_id = store
        .query(
            &[filter(json!({ "ids": all_ids }))],
            ReadBounds::unbounded(500),
            now(),
            scope,
            &everyone,
        )
        .await
        .expect("query by ids");
    let mut by_id: Vec<Hex32> = by_id.value.iter().map(|s| s.event.id).collect();
    by_id.sort();
    assert_eq!(by_id, first, "lookup by ids");
    first
}

/// A read in a scope returns exactly the events whose audience shares a key with it, on
/// every index path (broad, by kind, by author, by tag, by ids) and in COUNT; audiences go
/// with the event when it is replaced, deleted or restored.
pub async fn scope_keeps_reads_to_what_the_reader_holds(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let (alice, me, other) = (keys(), keys(), keys());
    let me_p = format!("p:{}", pk(&me).to_hex());
    let other_p = format!("p:{}", pk(&other).to_hex());
    let t = now() - 100;
    let public = ev(&alice, t, 1, &[&["t", "x"]], "public");
    let mine = ev(&alice, t + 1, 7, &[&["t", "x"], &["aud", &me_p]], "mine");
    let shared = ev(
        &alice,
        t + 2,
        1,
        &[&["t", "x"], &["aud", &other_p], &["aud", &me_p]],
        "shared",
    );
    let theirs = ev(
        &alice,
        t + 3,
        1,
        &[&["t", "x"], &["aud", &other_p]],
        "theirs",
    );
    let g1 = ev(&alice, t + 4, 7, &[&["t", "x"], &["aud", "g:g1"]], "g1");
    let g2 = ev(&alice, t + 5, 1, &[&["t", "x"], &["aud", "g:g2"]], "g2");
    let readers = ev(
        &alice,
        t + 6,
        1,
        &[&["t", "x"], &["aud", "readers"]],
        "readers",
    );
    let admins = ev(
        &alice,
        t + 7,
        7,
        &[&["t", "x"], &["aud", "admins"]],
        "admins",
    );
    let nobody = ev(
        &alice,
        t + 8,
        1,
        &[&["t", "x"], &["aud", "nobody"]],
        "nobody",
    );
    let all = [
        &public, &mine, &shared, &theirs, &g1, &g2, &readers, &admins, &nobody,
    ];
    for e in all {
        accept(s, e).await;
    }
    let sorted = |events: &[&Event]| {
        let mut v: Vec<Hex32> = events.iter().map(|e| e.id).collect();
        v.sort();
        v
    };
    let me_in_g1 = ReadScope::holding(
        vec![ReadKey::Pubkey(pk(&me)), ReadKey::Group("g1".into())],
        false,
    );
    let a = pk(&alice);
    assert_eq!(
        scoped_ids(s, &me_in_g1, &a).await,
        sorted(&[&public, &mine, &shared, &g1]),
        "my pubkey and my group"
    );
    assert_eq!(
        scoped_ids(
            s,
            &ReadScope::holding(vec![ReadKey::Readers, ReadKey::Admins], true),
            &a
        )
        .await,
        sorted(&[&public, &g1, &g2, &readers, &admins]),
        "readers, admins and every group"
    );
    assert_eq!(
        scoped_ids(s, &ReadScope::holding(Vec::new(), false), &a).await,
        sorted(&[&public]),
        "a stranger"
    );
    assert_eq!(
        scoped_ids(s, &ReadScope::everything(), &a).await,
        sorted(&all),
        "no scope"
    );

    // Replaced and deleted events leave no audience behind; their successors bring theirs.
    let profile = ev(&alice, t + 10, 0, &[&["aud", &me_p]], "v1");
    accept(s, &profile).await;
    let profile2 = ev(&alice, t + 11, 0, &[&["aud", &other_p]], "v2");
    accept(s, &profile2).await;
    // (Read by nobody, so every filter shape below still answers alike.)
    let del = ev(
        &alice,
        t + 12,
        5,
        &[&["e", &mine.id.to_hex()], &["aud", "nobody"]],
        "",
    );
    accept(s, &del).await;
    let seen = scoped_ids(s, &me_in_g1, &a).await;
    assert!(
        !seen.contains(&profile.id) && !seen.contains(&profile2.id),
        "replaced"
    );
    assert!(!seen.contains(&mine.id), "deleted");
    let them = ReadScope::holding(vec![ReadKey::Pubkey(pk(&other))], false);
    let found = s
        .query(
            &[filter(json!({"kinds": [0]}))],
            ReadBounds::unbounded(10),
            now(),
            &them,
            &everyone,
        )
        .await
        .expect("query");
    assert_eq!(
        found.value.iter().map(|e| e.event.id).collect::<Vec<_>>(),
        vec![profile2.id],
        "the new version's audience"
    );

    // A restored store works the audiences out again.
    let target = h.open_other(Arc::new(TestRules)).await;
    let items = backup_items(s).await;
    target.restore(items).await.expect("restore");
    assert_eq!(
        scoped_ids(&*target, &me_in_g1, &a).await,
        scoped_ids(s, &me_in_g1, &a).await,
        "after restore"
    );
}

/// Events out of a read's scope are skipped by the backend, not examined one by one: a
/// reader whose few events sit under many others' gets them all within a small candidate
/// bound, by kind and with no filter at all.
pub async fn out_of_scope_events_are_not_candidates(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let (alice, me, other) = (keys(), keys(), keys());
    let me_p = format!("p:{}", pk(&me).to_hex());
    let other_p = format!("p:{}", pk(&other).to_hex());
    let t = now() - 1000;
    let mut mine = Vec::new();
    for i in 0..3 {
        let e = ev(&alice, t + i, 1059, &[&["aud", &me_p]], "mine");
        accept(s, &e).await;
        mine.push(e.id);
    }
    // Newer, and many more than the bound below.
    for i in 0..60 {
        accept(
            s,
            &ev(&alice, t + 10 + i, 1059, &[&["aud", &other_p]], "theirs"),
        )
        .await;
    }
    mine.sort();
    let scope = ReadScope::holding(vec![ReadKey::Pubkey(pk(&me))], false);
    let bounds = ReadBounds {
        max_limit: 500,
        max_candidates: 10,
    };
    for shape in [
        json!({}),
        json!({"kinds": [1059]}),
        json!({"kinds": [1059], "limit": 3}),
    ] {
        let filters = vec![filter(shape.clone())];
        let found = s
            .query(&filters, bounds, now(), &scope, &everyone)
            .await
            .expect("query");
        assert!(found.complete, "{shape}: the bound is not reached");
        let mut ids: Vec<Hex32> = found.value.iter().map(|e| e.event.id).collect();
        ids.sort();
        assert_eq!(ids, mine, "{shape}");
        let counted = s
            .count(&filters, bounds, now(), &scope, &everyone)
            .await
            .expect("count");
        assert!(
            counted.complete && counted.value == 3,
            "{shape}: {counted:?}"
        );
    }
    // Control: without the scope, the same read stops at the bound.
    let found = s
        .query(
            &[filter(json!({"kinds": [1059]}))],
            bounds,
            now(),
            &ReadScope::everything(),
            &|e: &Event, _: &dyn StateRead| e.content == "mine",
        )
        .await
        .expect("query");
    assert!(!found.complete, "a closure alone walks the others' events");
}

/// `refresh_audiences` works every stored event's audience out again over today's state
/// (what a restore needs: a backup lists events before the state), and goes through all of
/// them, however many chunks that takes.
pub async fn refreshed_audiences_follow_the_state(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let (alice, owner, stranger) = (keys(), keys(), keys());
    let t = now() - 100;
    let tied = ev(&alice, t, 1, &[&["aud-state", "x"]], "tied to x");
    let free = ev(&alice, t + 1, 1, &[], "public");
    accept(s, &tied).await;
    accept(s, &free).await;
    let scope_of = |k: &secp256k1::Keypair| ReadScope::holding(vec![ReadKey::Pubkey(pk(k))], false);
    let read = |scope: ReadScope| async move {
        let mut ids: Vec<Hex32> = s
            .query(
                &[filter(json!({}))],
                ReadBounds::unbounded(100),
                now(),
                &scope,
                &everyone,
            )
            .await
            .expect("query")
            .value
            .iter()
            .map(|e| e.event.id)
            .collect();
        ids.sort();
        ids
    };
    let both = {
        let mut v = vec![tied.id, free.id];
        v.sort();
        v
    };
    assert_eq!(read(scope_of(&stranger)).await, both, "stored for anyone");
    let owner_hex = pk(&owner).to_hex();
    s.update_state(Box::new(move |st| {
        st.put(b"aud:x", owner_hex.as_bytes())
            .map_err(|e| Rejection(e.to_string()))
    }))
    .await
    .expect("update_state")
    .expect("accepted");
    assert_eq!(read(scope_of(&stranger)).await, both, "not refreshed yet");
    assert_eq!(s.refresh_audiences().await.expect("refresh"), 2);
    assert_eq!(read(scope_of(&stranger)).await, vec![free.id], "refreshed");
    assert_eq!(read(scope_of(&owner)).await, both, "the owner's now");
    // Replaced, deleted and purged events keep no stale audience entry behind (a second
    // refresh finds the same two events).
    assert_eq!(s.refresh_audiences().await.expect("refresh"), 2);
}

/// Writes submitted together, in order, so a backend that buffers a batch's writes (or answers
/// its checks from what it read at once) must see the batch's own earlier writes: a version
/// replaced, a duplicate, an event deleted and its tombstone, an address deleted, all inside
/// what is likely one transaction. The outcomes and the store afterwards are those of the
/// same writes one by one.
pub async fn a_batch_sees_its_own_writes(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let alice = keys();
    let a = pk(&alice).to_hex();
    let v100 = ev(&alice, 100, 0, &[&["t", "p"]], "v100");
    let v110 = ev(&alice, 110, 0, &[&["t", "p"]], "v110");
    let v90 = ev(&alice, 90, 0, &[], "v90");
    let note = ev(&alice, 120, 1, &[&["t", "n"]], "note");
    let del_note = ev(&alice, 130, 5, &[&["e", &note.id.to_hex()]], "");
    let x100 = ev(&alice, 100, 30000, &[&["d", "x"]], "");
    let del_x = ev(&alice, 150, 5, &[&["a", &format!("30000:{a}:x")]], "");
    let x140 = ev(&alice, 140, 30000, &[&["d", "x"]], "");
    let x160 = ev(&alice, 160, 30000, &[&["d", "x"], &["t", "x"]], "");
    let plan: Vec<(&Event, WriteOutcome)> = vec![
        (&v100, WriteOutcome::Accepted),
        (&v110, WriteOutcome::Accepted),
        (&v90, newer_stored()),
        (&note, WriteOutcome::Accepted),
        (&note, WriteOutcome::Duplicate),
        (&del_note, WriteOutcome::Accepted),
        (&note, deleted()),
        (&x100, WriteOutcome::Accepted),
        (&del_x, WriteOutcome::Accepted),
        (&x140, deleted()),
        (&x160, WriteOutcome::Accepted),
    ];
    // Polled in order: each write is queued before the next.
    let outcomes = futures_util::future::join_all(
        plan.iter()
            .map(|(e, _)| s.write((*e).clone(), Publisher::default())),
    )
    .await;
    for ((e, want), got) in plan.iter().zip(outcomes) {
        assert_eq!(
            &got.expect("write"),
            want,
            "writing {} ({})",
            e.id,
            e.content
        );
    }
    assert_eq!(ids(s, &[json!({"kinds": [0]})]).await, vec![v110.id]);
    assert_eq!(ids(s, &[json!({"#t": ["p"]})]).await, vec![v110.id]);
    assert!(ids(s, &[json!({"ids": [note.id.to_hex()]})])
        .await
        .is_empty());
    assert!(ids(s, &[json!({"#t": ["n"]})]).await.is_empty());
    assert_eq!(ids(s, &[json!({"kinds": [30000]})]).await, vec![x160.id]);
    assert_eq!(ids(s, &[json!({"#t": ["x"]})]).await, vec![x160.id]);
    assert_eq!(count(s, &[json!({})]).await, 4, "v110, two deletions, x160");
    // The commit stream holds what is stored, in the order it was written.
    let streamed: Vec<Hex32> = since_ids(s, 0, 100)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    assert_eq!(streamed, vec![v110.id, del_note.id, del_x.id, x160.id]);
    // Nothing was left half-written: the same writes again are all refused or duplicates.
    assert_eq!(put(s, &v100).await, newer_stored());
    assert_eq!(put(s, &note).await, deleted());
    assert_eq!(put(s, &x160).await, WriteOutcome::Duplicate);
}

/// A limit cuts the newest events of the whole answer, where the index walked lists them by
/// kind or by group: an author's events of several kinds, a scope's events of several kinds,
/// a scope holding every group (whose events sit under one key per group).
pub async fn limits_cut_newest_first_across_kinds_and_groups(h: &dyn Harness) {
    let store = open(h).await;
    let s = &*store;
    let (author, me) = (keys(), keys());
    let me_hex = pk(&me).to_hex();
    // Kinds and groups interleaved in time: each kind's or group's newest is not the newest.
    let mut mine = Vec::new();
    let mut grouped = Vec::new();
    for i in 0..9u64 {
        let kind = [1, 7, 30000][i as usize % 3];
        let d = format!("d{i}");
        let to_me = format!("p:{me_hex}");
        let aud_tag = ["aud", to_me.as_str()];
        let d_tag = ["d", d.as_str()];
        let mut tags: Vec<&[&str]> = vec![&aud_tag];
        if kind == 30000 {
            tags.push(&d_tag);
        }
        let e = ev(&author, 300 + i, kind, &tags, &format!("m{i}"));
        accept(s, &e).await;
        mine.push(e);
        let group = format!("g:group{}", i % 3);
        let e = ev(&keys(), 400 + i, 445, &[&["aud", &group]], &format!("g{i}"));
        accept(s, &e).await;
        grouped.push(e);
    }
    let newest = |evs: &[Event], n: usize| -> Vec<Hex32> {
        newest_first(&evs.iter().collect::<Vec<_>>())[..n].to_vec()
    };
    let by_author = json!({"authors": [pk(&author).to_hex()], "limit": 4});
    assert_eq!(
        ids(s, std::slice::from_ref(&by_author)).await,
        newest(&mine, 4),
        "by author alone"
    );
    let read = |scope: ReadScope, f: Value| async move {
        let found = s
            .query(
                &[filter(f)],
                ReadBounds::unbounded(500),
                now(),
                &scope,
                &everyone,
            )
            .await
            .expect("query");
        found.value.iter().map(|e| e.event.id).collect::<Vec<_>>()
    };
    let mine_only = ReadScope::holding(vec![ReadKey::Pubkey(pk(&me))], false);
    assert_eq!(
        read(mine_only, json!({"limit": 4})).await,
        newest(&mine, 4),
        "a scope's events of every kind"
    );
    let every_group = ReadScope::holding(Vec::new(), true);
    assert_eq!(
        read(every_group.clone(), json!({"limit": 4})).await,
        newest(&grouped, 4),
        "a scope holding every group"
    );
    assert_eq!(
        read(every_group, json!({"kinds": [445], "limit": 4})).await,
        newest(&grouped, 4),
        "every group, by kind"
    );
}
