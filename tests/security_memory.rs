//! Issue 8, rules 13 and 14, from the attacker's side: what a client can make the relay hold
//! in memory is bounded in bytes.
//!
//! - A reader that stops reading while large events are published is cut (NOTICE, close) once
//!   its outbox holds `limitation.outbox_max_bytes`, or the slowest readers are once all
//!   outboxes hold `limitation.outbox_total_bytes`; the relay's RSS stays bounded, and a
//!   reader that keeps reading gets everything.
//! - Subscriptions are bounded per filter array (`limitation.max_filter_values`) and per
//!   connection (`limitation.max_subscription_bytes`), refused with `CLOSED "invalid: …"`
//!   naming the limit; the relay's RSS stays bounded, and ordinary subscriptions work.
//!
//! Memory is read from `/proc/<pid>/status` of the spawned relay; bounds are derived from the
//! configured limits with generous slack for the allocator, never from timing.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

/// The spawned relay's process id: the process whose command line names this relay's config.
fn relay_pid(relay: &Relay) -> u32 {
    let config = relay.config_path();
    let config = config.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&config.as_bytes()) && args.contains(&b"relay".as_slice()) {
            return pid;
        }
    }
    panic!("no relay process with config {config}");
}

/// A `VmRSS` / `VmHWM` line of `/proc/<pid>/status`, in bytes.
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable {line:?}"));
    kib * 1024
}

fn rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "VmRSS:")
}

/// The relay's own memory: resident anonymous pages, without the store's memory-mapped file
/// (page cache the kernel reclaims; live fan-out reads each committed event back from it).
fn anon_rss(pid: u32) -> u64 {
    proc_status_bytes(pid, "RssAnon:")
}

const MIB: u64 = 1024 * 1024;

// -------------------------------------------------------------------------------------------
// Rule 13: a reader that stops reading costs bounded memory, in bytes
// -------------------------------------------------------------------------------------------

const OUTBOX_MAX_BYTES: u64 = 2 * MIB;
const OUTBOX_TOTAL_BYTES: u64 = 6 * MIB;
const SLOW_READERS: usize = 5;
const LARGE_EVENTS: usize = 300;
const LARGE_CONTENT: usize = 500_000;

#[tokio::test]
async fn readers_that_stop_reading_are_cut_and_relay_memory_stays_bounded() {
    let relay = Relay::builder()
        .config(&format!(
            "[limitation]\noutbox_max_bytes = {OUTBOX_MAX_BYTES}\n\
             outbox_total_bytes = {OUTBOX_TOTAL_BYTES}\n"
        ))
        .start()
        .await;
    let pid = relay_pid(&relay);

    // Signed up front, so the publishing itself is quick.
    let k = keys();
    let body = "x".repeat(LARGE_CONTENT);
    let events: Vec<_> = (0..LARGE_EVENTS)
        .map(|i| ev(&k, 1, &[], &format!("{i} {body}")))
        .collect();

    // The attackers: subscribe to every kind-1, then never read again.
    let mut slow = Vec::new();
    for i in 0..SLOW_READERS {
        let mut ws = relay.connect().await;
        ws.req(&format!("slow{i}"), &[json!({"kinds": [1]})]).await;
        slow.push(ws);
    }
    // The rightful reader: same subscription, reads everything as it comes.
    let mut reader = relay.connect().await;
    reader.req("live", &[json!({"kinds": [1]})]).await;
    // The publisher waits for the reader after each batch (a batch fits its outbox), so the
    // control checks the bound, not how fast this test's reader gets CPU time.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    let reader = tokio::spawn(async move {
        let mut got = HashSet::new();
        while got.len() < LARGE_EVENTS {
            match reader.recv_until_closed(Duration::from_secs(120)).await {
                Some(m) if m[0] == "EVENT" && m[1] == "live" => {
                    got.insert(m[2]["id"].as_str().unwrap().to_owned());
                    counter.store(got.len(), std::sync::atomic::Ordering::SeqCst);
                }
                Some(m) if m[0] == "NOTICE" => panic!("the reading subscriber got {m}"),
                Some(_) => {}
                None => panic!("the reading subscriber was disconnected"),
            }
        }
        got.len()
    });

    let before = anon_rss(pid);
    let mut publisher = relay.connect().await;
    // Three 500 KB events: under the reader's 2 MiB outbox.
    let mut sent = 0;
    for batch in events.chunks(3) {
        for e in batch {
            publisher.send(&json!(["EVENT", e])).await;
        }
        for e in batch {
            let (ok, msg) = publisher.wait_ok(&id_hex(e)).await;
            assert!(ok, "publisher refused while readers are slow: {msg}");
        }
        sent += batch.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while received.load(std::sync::atomic::Ordering::SeqCst) < sent
            && std::time::Instant::now() < deadline
            && !reader.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let delivered = tokio::time::timeout(Duration::from_secs(300), reader)
        .await
        .expect("the reading subscriber did not get every event")
        .unwrap();
    let after = anon_rss(pid);

    // What the outboxes may hold, plus per slow connection one message in the writer's hands
    // and the WebSocket's write buffer, plus generous allocator slack.
    let per_conn_in_flight = 1024 * 1024 + 256 * 1024;
    let bound = OUTBOX_TOTAL_BYTES + SLOW_READERS as u64 * per_conn_in_flight + 128 * MIB;
    let grown = after.saturating_sub(before);
    eprintln!(
        "relay anonymous RSS {} MiB -> {} MiB (+{} MiB, bound {} MiB; VmRSS {} MiB)",
        before / MIB,
        after / MIB,
        grown / MIB,
        bound / MIB,
        rss(pid) / MIB
    );
    assert!(
        grown < bound,
        "{SLOW_READERS} readers that stopped reading grew the relay by {} MiB \
         (bound {} MiB from outbox_total_bytes)",
        grown / MIB,
        bound / MIB
    );
    assert_eq!(
        delivered, LARGE_EVENTS,
        "the reading subscriber missed events"
    );

    // The slow readers read again: some events, a NOTICE naming the limit, then the close.
    for (i, mut ws) in slow.into_iter().enumerate() {
        let mut notices = Vec::new();
        let mut events = 0usize;
        while let Some(m) = ws.recv_until_closed(Duration::from_secs(60)).await {
            match m[0].as_str() {
                Some("NOTICE") => notices.push(m[1].as_str().unwrap_or_default().to_owned()),
                Some("EVENT") => events += 1,
                _ => {}
            }
        }
        assert!(
            events < LARGE_EVENTS,
            "slow reader {i} got every event: it was never cut"
        );
        let notice = notices
            .last()
            .unwrap_or_else(|| panic!("slow reader {i} was closed without a NOTICE"));
        assert_prefix(notice, "error:");
        assert!(
            notice.contains("limitation.outbox_"),
            "slow reader {i}: the NOTICE does not name the limit: {notice:?}"
        );
    }

    // The relay goes on.
    let mut other = relay.connect().await;
    let e = ev(&k, 1, &[], "after the slow readers");
    other.publish_ok(&e).await;
    assert_eq!(
        other.query_ids(&[json!({"ids": [id_hex(&e)]})]).await,
        vec![id_hex(&e)]
    );
}

/// The global budget alone cuts readers: a per-connection bound far above it, and readers that
/// stop reading are still cut once all outboxes together hold `outbox_total_bytes`.
#[tokio::test]
async fn the_global_outbox_budget_cuts_the_slowest_readers() {
    let relay = Relay::builder()
        .config(&format!(
            "[limitation]\noutbox_capacity = 100000\noutbox_max_bytes = {}\n\
             outbox_total_bytes = {OUTBOX_TOTAL_BYTES}\n",
            1024 * MIB
        ))
        .start()
        .await;
    let k = keys();
    let body = "y".repeat(200_000);
    let events: Vec<_> = (0..200)
        .map(|i| ev(&k, 1, &[], &format!("{i} {body}")))
        .collect();
    let mut slow = Vec::new();
    for i in 0..3 {
        let mut ws = relay.connect().await;
        ws.req(&format!("slow{i}"), &[json!({"kinds": [1]})]).await;
        slow.push(ws);
    }
    let mut publisher = relay.connect().await;
    for batch in events.chunks(10) {
        for e in batch {
            publisher.send(&json!(["EVENT", e])).await;
        }
        for e in batch {
            let (ok, msg) = publisher.wait_ok(&id_hex(e)).await;
            assert!(ok, "publisher refused: {msg}");
        }
    }
    // The publisher itself (a reader with a small backlog) was never cut.
    let e = ev(&k, 1, &[], "publisher still served");
    publisher.publish_ok(&e).await;

    for (i, mut ws) in slow.into_iter().enumerate() {
        let mut notices = Vec::new();
        let mut events = 0usize;
        while let Some(m) = ws.recv_until_closed(Duration::from_secs(60)).await {
            match m[0].as_str() {
                Some("NOTICE") => notices.push(m[1].as_str().unwrap_or_default().to_owned()),
                Some("EVENT") => events += 1,
                _ => {}
            }
        }
        assert!(events < 200, "slow reader {i} was never cut");
        let notice = notices
            .last()
            .unwrap_or_else(|| panic!("slow reader {i} was closed without a NOTICE"));
        assert_prefix(notice, "error:");
        assert!(
            notice.contains("limitation.outbox_total_bytes"),
            "slow reader {i}: expected the global budget to cut it: {notice:?}"
        );
    }
}

/// A REQ whose stored answer is larger than the outbox bound is delivered whole to a client
/// that reads: the relay waits for room rather than cutting it.
#[tokio::test]
async fn a_reading_client_gets_a_stored_answer_larger_than_its_outbox() {
    let relay = Relay::builder()
        .config("[limitation]\noutbox_max_bytes = 1048576\n")
        .start()
        .await;
    let k = keys();
    let body = "z".repeat(200_000);
    let mut ws = relay.connect().await;
    let mut ids = Vec::new();
    for i in 0..40 {
        let e = ev(&k, 1, &[], &format!("{i} {body}"));
        ws.publish_ok(&e).await;
        ids.push(id_hex(&e));
    }
    // 40 × 200 KB = 8 MB of answer through a 1 MiB outbox.
    let got = ws.query_ids(&[json!({"authors": [pk_hex(&k)]})]).await;
    assert_eq!(got.len(), ids.len(), "the stored answer was cut short");
}

// -------------------------------------------------------------------------------------------
// Rule 14: live subscriptions cost bounded memory
// -------------------------------------------------------------------------------------------

/// `n` distinct 64-hex values never used before in this process (cheaper than random ones).
fn random_ids(n: usize) -> Vec<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let salt: u64 = secp256k1::rand::random();
    let start = NEXT.fetch_add(n as u64, Ordering::Relaxed);
    (start..start + n as u64)
        .map(|i| format!("{salt:016x}{:048x}", i))
        .collect()
}

/// Sends `subs` REQs of `filters()` on `ws` (pipelined), then reads every answer: returns the
/// number accepted (EOSE) and the CLOSED messages.
async fn flood_reqs(
    ws: &mut Ws,
    tag: &str,
    subs: usize,
    filters: impl Fn() -> Vec<Value>,
) -> (usize, Vec<String>) {
    for s in 0..subs {
        ws.send_req(&format!("{tag}{s}"), &filters()).await;
    }
    let mut accepted = 0;
    let mut closed = Vec::new();
    for s in 0..subs {
        match ws.collect(&format!("{tag}{s}")).await {
            Ok(_) => accepted += 1,
            Err(m) => closed.push(m),
        }
    }
    (accepted, closed)
}

const ATTACK_CONNS: usize = 4;
const ATTACK_SUBS: usize = 50;
const ATTACK_IDS: usize = 14_000;

#[tokio::test]
async fn huge_subscriptions_are_refused_naming_the_limit_and_memory_stays_bounded() {
    let relay = Relay::start().await;
    let pid = relay_pid(&relay);
    let k = keys();
    let mut user = relay.connect().await;
    let stored = ev(&k, 1, &[], "stored before the attack");
    user.publish_ok(&stored).await;

    let before = rss(pid);
    let mut attackers = Vec::new();
    for c in 0..ATTACK_CONNS {
        let mut ws = relay.connect().await;
        // One filter of 14,000 ids per REQ, each REQ under the 1 MiB message limit.
        let (accepted, closed) = flood_reqs(&mut ws, "big", ATTACK_SUBS, || {
            vec![json!({"ids": random_ids(ATTACK_IDS)})]
        })
        .await;
        assert_eq!(
            accepted, 0,
            "connection {c}: {accepted} REQs of {ATTACK_IDS} ids were accepted"
        );
        for m in &closed {
            assert_prefix(m, "invalid:");
            assert!(m.contains("max_filter_values"), "limit not named: {m:?}");
        }
        // The attacker adapts: filters under the per-array bound, as many as it may open.
        let (accepted, closed) = flood_reqs(&mut ws, "many", ATTACK_SUBS, || {
            vec![
                json!({"ids": random_ids(1_500)}),
                json!({"authors": random_ids(1_500)}),
            ]
        })
        .await;
        assert!(
            accepted < ATTACK_SUBS,
            "connection {c}: all {ATTACK_SUBS} REQs of 3,000 values were accepted"
        );
        for m in &closed {
            assert_prefix(m, "invalid:");
            assert!(
                m.contains("max_subscription_bytes"),
                "limit not named: {m:?}"
            );
        }
        attackers.push(ws);
    }
    let grown = rss(pid).saturating_sub(before);
    // Default max_subscription_bytes (256 KiB) per connection, an index entry a few times the
    // 32 bytes an id counts for, and generous allocator slack.
    let bound = ATTACK_CONNS as u64 * 8 * 256 * 1024 + 64 * MIB;
    eprintln!(
        "relay RSS +{} MiB after the subscription flood (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );
    assert!(
        grown < bound,
        "{ATTACK_CONNS} connections' subscriptions grew the relay by {} MiB (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );

    // The rightful user: an ids REQ finds its event, and live delivery works, also on an
    // attacker's connection whose subscriptions were accepted.
    let mut ids = random_ids(99);
    ids.push(id_hex(&stored));
    assert_eq!(
        user.query_ids(&[json!({"ids": ids})]).await,
        vec![id_hex(&stored)]
    );
    user.req("mine", &[json!({"authors": [pk_hex(&k)]})]).await;
    attackers[0]
        .req("small", &[json!({"authors": [pk_hex(&k)]})])
        .await;
    let live = ev(&k, 1, &[], "live after the attack");
    let mut publisher = relay.connect().await;
    publisher.publish_ok(&live).await;
    assert_eq!(user.next_event("mine").await["id"], id_hex(&live));
    assert_eq!(attackers[0].next_event("small").await["id"], id_hex(&live));
}

/// Closing subscriptions gives their budget back, and a REQ that replaces one counts once.
#[tokio::test]
async fn the_subscription_budget_is_given_back_on_close_and_replace() {
    let relay = Relay::builder()
        .config("[limitation]\nmax_subscription_bytes = 100000\nmax_filter_values = 2000\n")
        .start()
        .await;
    let mut ws = relay.connect().await;
    let half = || vec![json!({"authors": random_ids(1_200)})]; // 38,400 bytes each
    ws.req("a", &half()).await;
    ws.req("b", &half()).await;
    let m = ws.req_closed("c", &half()).await;
    assert_prefix(&m, "invalid:");
    assert!(m.contains("max_subscription_bytes"), "{m:?}");
    // Replacing "b" with a filter of the same size fits: the old one no longer counts.
    ws.req("b", &half()).await;
    ws.send(&json!(["CLOSE", "a"])).await;
    ws.req("c", &half()).await;
    // Over the per-array bound: refused, naming it; COUNT too.
    let m = ws
        .req_closed("d", &[json!({"kinds": [1], "#p": random_ids(2_001)})])
        .await;
    assert_prefix(&m, "invalid:");
    assert!(m.contains("max_filter_values"), "{m:?}");
    let m = ws
        .count("n", &[json!({"authors": random_ids(2_001)})])
        .await
        .expect_err("COUNT over max_filter_values answered");
    assert_prefix(&m, "invalid:");
    assert!(m.contains("max_filter_values"), "{m:?}");
}

/// Bytes per id of a live `ids` subscription, from the relay's RSS (not a check: a figure).
/// `cargo test --test security_memory -- --ignored --nocapture bytes_per_id`
#[tokio::test]
#[ignore]
async fn bytes_per_id_of_a_live_subscription() {
    const CONNS: usize = 2;
    const SUBS: usize = 50;
    const IDS: usize = 10_000;
    let relay = Relay::builder()
        .config(&format!(
            "[limitation]\nmax_filter_values = {IDS}\nmax_subscription_bytes = {}\n",
            1u64 << 40
        ))
        .start()
        .await;
    let pid = relay_pid(&relay);
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        conns.push(relay.connect().await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss(pid);
    for ws in &mut conns {
        let (accepted, closed) =
            flood_reqs(ws, "s", SUBS, || vec![json!({"ids": random_ids(IDS)})]).await;
        assert_eq!(accepted, SUBS, "refused: {closed:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss(pid).saturating_sub(before);
    let ids = (CONNS * SUBS * IDS) as u64;
    println!(
        "{ids} ids in live subscriptions: relay RSS +{} MiB, {} bytes per id",
        grown / MIB,
        grown / ids
    );
}
