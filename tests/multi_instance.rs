//! Three relay instances on one database behave as one relay (issue 12): subscribers and
//! publishers spread over the instances, a gated group, gift wraps, public and ephemeral
//! events; every acknowledged event reaches every allowed, still-connected subscriber exactly
//! once, in each publisher's order, and no one else. Then, mid-stream, one instance is
//! SIGKILLed and restarted (and, on Redis, Redis is restarted): the subscribers still
//! connected elsewhere get everything exactly once, and a client that reconnects with `since`
//! gets the rest, stored and live, without a duplicate at the seam.
//!
//! What a second instance would otherwise let through twice is shared through the store: a
//! single-use NIP-98 token used on one instance is refused on another, and a KeyPackage
//! claimed through one is not handed out by another.
//!
//! Three variants: the bus is Redis (`[bus] redis_url`), or PostgreSQL LISTEN/NOTIFY (no
//! `[bus]` at all); and the instances on one Firestore project (the emulator) joined by
//! Redis (with the KeyPackage claim again). Needs `DATABASE_URL`, `FIRESTORE_EMULATOR_HOST`
//! and `redis-server` (scripts/test.sh starts / installs them); without them the tests say
//! they were skipped.

mod common;
mod support_api;
mod support_mls;

use common::pg;
use common::*;
use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support_mls::*;

/// Rounds each publisher sends per phase.
const ROUNDS: usize = 12;
/// How long deliveries may take to settle after the last acknowledgement.
const SETTLE: Duration = Duration::from_secs(30);
/// Quiet time after everything expected arrived, in which a duplicate would show up: longer
/// than the catch-up interval, so a late catch-up read would be seen.
const QUIET: Duration = Duration::from_millis(2500);
/// Ephemeral kind used for "not stored, delivered live only".
const EPHEMERAL: u16 = 20001;

fn skip() -> bool {
    skip_on(Store::Postgres)
}

fn skip_on(store: Store) -> bool {
    match store {
        Store::Postgres if pg::database_url().is_none() => {
            eprintln!("skipped: DATABASE_URL is not set (scripts/test.sh starts a PostgreSQL)");
            true
        }
        Store::Firestore if common::firestore::emulator_host().is_none() => {
            eprintln!(
                "skipped: FIRESTORE_EMULATOR_HOST is not set (scripts/test.sh starts the emulator)"
            );
            true
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Redis, started by the test so that it can be restarted mid-stream
// ---------------------------------------------------------------------------------------------

struct Redis {
    port: u16,
    child: Option<Child>,
    bin: String,
}

impl Redis {
    /// `None` when no redis-server is installed (scripts/services/redis.sh installs it).
    fn start() -> Option<Redis> {
        let bin = std::env::var("REDIS_TEST_SERVER")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| "redis-server".into());
        let found = Command::new(&bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return None;
        }
        let mut redis = Redis {
            port: free_port(),
            child: None,
            bin,
        };
        redis.spawn();
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf).is_ok_and(|n| &buf[..n] == b"+PONG\r\n")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster and its clients
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bus {
    Redis,
    Notify,
}

/// The database the instances share.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Store {
    Postgres,
    /// A fresh project on the emulator; the instances need the Redis bus (Firestore has no
    /// notifications of its own).
    Firestore,
}

struct People {
    admin: Keypair,
    alice: Keypair,
    bob: Keypair,
    carol: Keypair,
    mallory: Keypair,
    watcher: Keypair,
}

/// Three relays on one fresh PostgreSQL database, auth on, `admin` configured, with `extra`.
async fn cluster(admin: &Keypair, extra: &str) -> Vec<Relay> {
    cluster_on(Store::Postgres, admin, extra).await
}

/// Three relays on one fresh database of `store`, auth on, `admin` configured, with `extra`.
async fn cluster_on(store: Store, admin: &Keypair, extra: &str) -> Vec<Relay> {
    let (backend, env) = match store {
        Store::Postgres => (
            format!(
                "[extensions.mls_gateway]\nstorage_backend = \"cloudsql\"\ndatabase_url = {:?}\n",
                pg::fresh_database()
            ),
            None,
        ),
        Store::Firestore => (
            format!(
                "[extensions.mls_gateway]\nstorage_backend = \"firestore\"\nproject_id = {:?}\n",
                common::firestore::fresh_project()
            ),
            common::firestore::emulator_host(),
        ),
    };
    let mut relays = Vec::new();
    for _ in 0..3 {
        let mut builder = Relay::builder()
            .config("[auth]\nenabled = true\n")
            .config(&admin_pubkeys_config(&[admin]))
            .config(&backend)
            .config(extra);
        if let Some(host) = &env {
            builder = builder.env("FIRESTORE_EMULATOR_HOST", host);
        }
        relays.push(builder.start().await);
    }
    relays
}

/// A live subscription whose messages a background task records until stopped.
struct Recorder {
    name: &'static str,
    sub: String,
    got: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Ws>,
}

impl Recorder {
    /// Opens `filters` as `name` on `ws` (after its stored part and EOSE, which are returned)
    /// and records every later message for that subscription.
    async fn open(name: &'static str, mut ws: Ws, filters: &[Value]) -> (Recorder, Vec<Value>) {
        let sub = format!("{name}-{}", rand_suffix());
        let stored = ws.req(&sub, filters).await;
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (got, stop) = (got.clone(), stop.clone());
            async move {
                loop {
                    match ws.recv_timeout(Duration::from_millis(100)).await {
                        Some(v) => got.lock().unwrap().push(v),
                        None if stop.load(Ordering::SeqCst) => return ws,
                        None => {}
                    }
                }
            }
        });
        let recorder = Recorder {
            name,
            sub,
            got,
            stop,
            task,
        };
        (recorder, stored)
    }

    /// Ids of the EVENTs received for this subscription so far, in arrival order. Any other
    /// message for it (CLOSED, a second EOSE) or a NOTICE fails the test.
    fn ids(&self) -> Vec<String> {
        let got = self.got.lock().unwrap();
        let mut ids = Vec::new();
        for v in got.iter() {
            match v[0].as_str() {
                Some("EVENT") if v[1] == self.sub.as_str() => {
                    ids.push(v[2]["id"].as_str().unwrap().to_owned())
                }
                _ => panic!("{}: unexpected message {v}", self.name),
            }
        }
        ids
    }

    fn clear(&self) {
        self.got.lock().unwrap().clear();
    }

    /// Stops recording and gives the connection back.
    async fn stop(self) -> Ws {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("recorder task")
    }
}

/// What was published and acknowledged, in each publisher's order.
#[derive(Default, Clone)]
struct Ledger {
    /// (publisher, event) in acknowledgement order per publisher.
    acked: Vec<(&'static str, Event)>,
}

impl Ledger {
    fn ids_where(&self, pred: impl Fn(&Event) -> bool) -> HashSet<String> {
        self.acked
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(_, e)| id(e))
            .collect()
    }

    /// Each publisher's acknowledged ids, in order.
    fn sequences(&self) -> HashMap<&'static str, Vec<String>> {
        let mut out: HashMap<&'static str, Vec<String>> = HashMap::new();
        for (p, e) in &self.acked {
            out.entry(p).or_default().push(id(e));
        }
        out
    }
}

/// A publishing connection: `name` authenticated as `as_key` on one relay, sending what
/// `make(round)` builds, one event at a time (each after the previous one's OK).
async fn publish_rounds(
    name: &'static str,
    mut ws: Ws,
    rounds: std::ops::Range<usize>,
    make: impl Fn(usize) -> Vec<Event>,
    ledger: Arc<Mutex<Ledger>>,
) -> Ws {
    for round in rounds {
        for e in make(round) {
            let (ok, msg) = ws.publish(&e).await;
            assert!(ok, "{name}: kind {} refused: {msg}", e.kind);
            ledger.lock().unwrap().acked.push((name, e));
        }
    }
    ws
}

fn has_tag(e: &Event, name: &str, value: &str) -> bool {
    e.tags
        .iter()
        .any(|t| t.len() >= 2 && t[0] == name && t[1] == value)
}

fn note(k: &Keypair, kind: u16) -> Event {
    ev(k, kind, &[], &format!("note-{}", rand_suffix()))
}

/// Waits until `rec` has received at least `want` (or `SETTLE` passed), then `QUIET` more,
/// and checks: every wanted id exactly once, nothing else, each publisher's events in the
/// order they were acknowledged.
async fn expect_exactly(rec: &Recorder, want: &HashSet<String>, ledger: &Ledger) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let got: HashSet<String> = rec.ids().into_iter().collect();
        if want.is_subset(&got) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(QUIET).await;
    let ids = rec.ids();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for i in &ids {
        *seen.entry(i.as_str()).or_default() += 1;
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|i| !seen.contains_key(i.as_str()))
        .collect();
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    let stranger: Vec<_> = seen.keys().filter(|i| !want.contains(**i)).collect();
    assert!(
        missing.is_empty(),
        "{}: {} of {} events never arrived: {missing:?}",
        rec.name,
        missing.len(),
        want.len()
    );
    assert!(twice.is_empty(), "{}: delivered twice: {twice:?}", rec.name);
    assert!(
        stranger.is_empty(),
        "{}: got events it must not: {stranger:?}",
        rec.name
    );
    // Commit order per publisher (each publisher waited for an OK before the next event).
    for (publisher, order) in ledger.sequences() {
        let theirs: Vec<&String> = order.iter().filter(|i| want.contains(*i)).collect();
        let arrived: Vec<&String> = ids.iter().filter(|i| theirs.contains(i)).collect();
        assert_eq!(
            arrived, theirs,
            "{}: {publisher}'s events out of commit order",
            rec.name
        );
    }
}

async fn several_instances_behave_as_one(bus: Bus, store: Store) {
    if skip_on(store) {
        return;
    }
    let mut redis = match bus {
        Bus::Redis => match Redis::start() {
            Some(r) => Some(r),
            None => {
                eprintln!("skipped: no redis-server (scripts/services/redis.sh installs it)");
                return;
            }
        },
        Bus::Notify => None,
    };
    let bus_toml = match &redis {
        Some(r) => format!("[bus]\nredis_url = {:?}\n", r.url()),
        None => String::new(),
    };
    let p = People {
        admin: keys(),
        alice: keys(),
        bob: keys(),
        carol: keys(),
        mallory: keys(),
        watcher: keys(),
    };
    let mut relays = cluster_on(store, &p.admin, &bus_toml).await;
    let group = unique_id();
    let (alice_pk, carol_pk) = (pk_hex(&p.alice), pk_hex(&p.carol));

    // The admin gates the group on instance 0: alice and bob are its members.
    let mut admin = relays[0].connect_authed(&p.admin).await;
    admin
        .publish_ok(&roster(
            &p.admin,
            &group,
            "bootstrap",
            1,
            &[&p.alice, &p.bob],
        ))
        .await;

    // Subscribers, each on another instance than most publishers.
    let open = |name, relay: usize, who: &Keypair, filters: Vec<Value>| {
        let relay = &relays[relay];
        let who = *who;
        async move {
            let ws = relay.connect_authed(&who).await;
            let (rec, stored) = Recorder::open(name, ws, &filters).await;
            assert!(
                stored.iter().all(|e| e["kind"] == 450),
                "{name}: {stored:?}"
            );
            rec
        }
    };
    let s_alice = open(
        "alice",
        1,
        &p.alice,
        vec![
            json!({"kinds": [445], "#h": [group]}),
            json!({"kinds": [1059], "#p": [alice_pk]}),
        ],
    )
    .await;
    let s_bob = open(
        "bob",
        2,
        &p.bob,
        vec![json!({"kinds": [445], "#h": [group]})],
    )
    .await;
    let s_carol = open(
        "carol",
        0,
        &p.carol,
        vec![json!({"kinds": [1059], "#p": [carol_pk]})],
    )
    .await;
    let s_mallory = open(
        "mallory",
        1,
        &p.mallory,
        vec![
            json!({"kinds": [445, 1059]}),
            json!({"#h": [group]}),
            json!({"#p": [alice_pk, carol_pk]}),
        ],
    )
    .await;
    let s_public = open("public", 2, &p.watcher, vec![json!({"kinds": [1]})]).await;
    let s_ephemeral = open(
        "ephemeral",
        0,
        &p.watcher,
        vec![json!({"kinds": [EPHEMERAL]})],
    )
    .await;

    // Publishers: alice on 0, bob on 1, carol on 2.
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let pub_alice = relays[0].connect_authed(&p.alice).await;
    let pub_bob = relays[1].connect_authed(&p.bob).await;
    let pub_carol = relays[2].connect_authed(&p.carol).await;
    let (alice, bob, carol) = (p.alice, p.bob, p.carol);
    let g = group.clone();
    let alice_makes = move |_r: usize| {
        vec![
            group_message(&g, None),
            giftwrap(&[&carol], None),
            note(&alice, 1),
        ]
    };
    let g = group.clone();
    let alice2 = p.alice;
    let bob_makes = move |_r: usize| {
        vec![
            group_message(&g, None),
            note(&bob, 1),
            giftwrap(&[&alice2], None),
        ]
    };
    let carol2 = p.carol;
    let alice3 = p.alice;
    let carol_makes = move |_r: usize| {
        vec![
            note(&carol2, 1),
            note(&carol2, EPHEMERAL),
            giftwrap(&[&alice3], None),
        ]
    };

    // Phase 1: everyone connected, all three publishing at once.
    let t1 = tokio::spawn(publish_rounds(
        "alice@0",
        pub_alice,
        0..ROUNDS,
        alice_makes.clone(),
        ledger.clone(),
    ));
    let t2 = tokio::spawn(publish_rounds(
        "bob@1",
        pub_bob,
        0..ROUNDS,
        bob_makes.clone(),
        ledger.clone(),
    ));
    let t3 = tokio::spawn(publish_rounds(
        "carol@2",
        pub_carol,
        0..ROUNDS,
        carol_makes,
        ledger.clone(),
    ));
    let (r1, r2, r3) = (t1.await, t2.await, t3.await);
    if r1.is_err() || r2.is_err() || r3.is_err() {
        // Why a publish was refused is in the instances' logs.
        for (i, relay) in relays.iter().enumerate() {
            eprintln!("instance {i}, log tail:\n{}", relay.log_tail(40));
        }
    }
    let (pub_alice, pub_bob, pub_carol) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
    drop(pub_carol);
    let l1 = ledger.lock().unwrap().clone();
    let in_group = |e: &Event| e.kind == 445 && has_tag(e, "h", &group);
    let wrapped_to = |pk: &str| {
        let pk = pk.to_owned();
        move |e: &Event| e.kind == 1059 && has_tag(e, "p", &pk)
    };
    let to_alice = wrapped_to(&alice_pk);
    let to_carol = wrapped_to(&carol_pk);
    expect_exactly(&s_alice, &l1.ids_where(|e| in_group(e) || to_alice(e)), &l1).await;
    expect_exactly(&s_bob, &l1.ids_where(in_group), &l1).await;
    expect_exactly(&s_carol, &l1.ids_where(&to_carol), &l1).await;
    expect_exactly(&s_mallory, &HashSet::new(), &l1).await;
    expect_exactly(&s_public, &l1.ids_where(|e| e.kind == 1), &l1).await;
    expect_exactly(&s_ephemeral, &l1.ids_where(|e| e.kind == EPHEMERAL), &l1).await;
    assert_eq!(l1.ids_where(in_group).len(), 2 * ROUNDS);

    // Phase 2, mid-stream: instance 2 is SIGKILLed (its subscribers are gone with it) and
    // restarted; on Redis, Redis is restarted too. Publishing goes on on 0 and 1.
    for r in [&s_alice, &s_carol, &s_mallory, &s_ephemeral] {
        r.clear();
    }
    drop(s_bob.stop().await);
    drop(s_public.stop().await);
    let since = now();
    ledger.lock().unwrap().acked.clear();
    let half = ROUNDS / 2;
    let t1 = tokio::spawn(publish_rounds(
        "alice@0",
        pub_alice,
        0..half,
        alice_makes.clone(),
        ledger.clone(),
    ));
    let t2 = tokio::spawn(publish_rounds(
        "bob@1",
        pub_bob,
        0..half,
        bob_makes.clone(),
        ledger.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(150)).await;
    relays[2].kill();
    if let Some(r) = redis.as_mut() {
        r.kill();
    }
    let (pub_alice, pub_bob) = (t1.await.unwrap(), t2.await.unwrap());
    // More while the bus is down (Redis) or the instance is away.
    let t1 = tokio::spawn(publish_rounds(
        "alice@0",
        pub_alice,
        half..ROUNDS,
        alice_makes.clone(),
        ledger.clone(),
    ));
    let t2 = tokio::spawn(publish_rounds(
        "bob@1",
        pub_bob,
        half..ROUNDS,
        bob_makes.clone(),
        ledger.clone(),
    ));
    if let Some(r) = redis.as_mut() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.spawn();
    }
    relays[2].spawn().await;
    let (pub_alice, pub_bob) = (t1.await.unwrap(), t2.await.unwrap());
    drop(pub_bob);
    let l2 = ledger.lock().unwrap().clone();
    expect_exactly(&s_alice, &l2.ids_where(|e| in_group(e) || to_alice(e)), &l2).await;
    expect_exactly(&s_carol, &l2.ids_where(&to_carol), &l2).await;
    expect_exactly(&s_mallory, &HashSet::new(), &l2).await;
    // Ephemeral events are at most once (none were sent in this phase).
    assert!(s_ephemeral.ids().is_empty(), "{:?}", s_ephemeral.ids());

    // Bob reconnects to the restarted instance with `since` while alice keeps publishing on
    // instance 0: what committed before his REQ comes in the stored part, the rest live, and
    // nothing in both (the seam), nothing twice.
    // On Redis, the bus is down meanwhile: instance 2 hears of instance 0's commits only from
    // its periodic catch-up, long after they are in the stored part.
    if let Some(r) = redis.as_mut() {
        r.kill();
    }
    ledger.lock().unwrap().acked.clear();
    let g = group.clone();
    let more = tokio::spawn(publish_rounds(
        "alice@0",
        pub_alice,
        0..30,
        move |_| vec![group_message(&g, None)],
        ledger.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let bob_ws = relays[2].connect_authed(&p.bob).await;
    let (s_bob, stored) = Recorder::open(
        "bob-again",
        bob_ws,
        &[json!({"kinds": [445], "#h": [group], "since": since})],
    )
    .await;
    drop(more.await.unwrap());
    if let Some(r) = redis.as_mut() {
        r.spawn();
    }
    let stored_ids: HashSet<String> = stored
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stored.len(),
        stored_ids.len(),
        "bob-again: duplicates in the stored part"
    );
    assert!(
        l2.ids_where(in_group).is_subset(&stored_ids),
        "bob-again: phase 2's group messages missing from the stored part"
    );
    let l3 = ledger.lock().unwrap().clone();
    let live_want: HashSet<String> = l3
        .ids_where(in_group)
        .difference(&stored_ids)
        .cloned()
        .collect();
    expect_exactly(&s_bob, &live_want, &l3).await;
    eprintln!(
        "bob-again: {} stored, {} live of the {} published meanwhile",
        stored_ids.len(),
        live_want.len(),
        l3.acked.len()
    );

    for r in [s_alice, s_carol, s_mallory, s_ephemeral, s_bob] {
        drop(r.stop().await);
    }
    // The restarted instance logged its catch-up, not an error about the bus.
    for relay in &relays {
        assert!(!relay.log().contains("panicked"), "{}", relay.log_tail(30));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_redis_deliver_every_event_once() {
    several_instances_behave_as_one(Bus::Redis, Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_postgres_notify_deliver_every_event_once() {
    several_instances_behave_as_one(Bus::Notify, Store::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_on_firestore_and_redis_deliver_every_event_once() {
    several_instances_behave_as_one(Bus::Redis, Store::Firestore).await;
}

// ---------------------------------------------------------------------------------------------
// What must be shared is shared
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_nip98_token_used_on_one_instance_is_refused_on_another() {
    use support_api::*;
    if skip() {
        return;
    }
    let admin = keys();
    // Behind one load balancer every instance answers to the same public URL.
    let relays = cluster(&admin, "[server]\nrelay_url = \"wss://relay.test\"\n").await;
    let group = unique_hex();
    let path = format!("{PREFIX}/admin/groups/{group}/members");
    let post = |relay: &Relay, token: &str, body: &[u8]| {
        let (port, path, token, body) = (relay.port, path.clone(), token.to_owned(), body.to_vec());
        async move {
            request(
                port,
                "POST",
                &path,
                &[("Authorization", &token)],
                Some(&body),
            )
            .await
        }
    };
    let body = serde_json::to_vec(&pubkeys_body(&[pk_hex(&keys())])).unwrap();
    let token = nip98(
        &admin,
        &format!("https://relay.test{path}"),
        "POST",
        Some(&body),
    );
    let first = post(&relays[0], &token, &body).await;
    assert_eq!(first.status, 200, "{}", first.text());

    for relay in &relays[1..] {
        let replay = post(relay, &token, &body).await;
        assert_error(&replay, 401, "auth_invalid");
        assert!(
            replay.json()["error"]
                .as_str()
                .unwrap()
                .contains("already used"),
            "{}",
            replay.text()
        );
    }
    // Control: a fresh token (another created_at, so another id) works on another instance.
    let fresh = auth_header(&nip98_event(
        &admin,
        now() - 5,
        &format!("https://relay.test{path}"),
        "POST",
        Some(&sha256_hex(&body)),
    ));
    assert_eq!(post(&relays[2], &fresh, &body).await.status, 200);
}

#[tokio::test]
async fn a_keypackage_claimed_through_one_instance_is_not_handed_out_by_another() {
    keypackage_claimed_once_across_instances(Store::Postgres).await;
}

#[tokio::test]
async fn a_keypackage_claimed_through_one_instance_is_not_handed_out_by_another_on_firestore() {
    keypackage_claimed_once_across_instances(Store::Firestore).await;
}

async fn keypackage_claimed_once_across_instances(store: Store) {
    if skip_on(store) {
        return;
    }
    let relays = cluster_on(
        store,
        &keys(),
        "[extensions.mls_gateway]\nkeypackage_claims = true\nmax_keypackages_per_query = 2\n",
    )
    .await;
    let (owner, inviter, second) = (keys(), keys(), keys());
    let mut own = authed(&relays[0], &owner).await;
    for _ in 0..3 {
        own.publish_ok(&lox_keypackage(&owner, &unique_id())).await;
    }
    let f = [json!({"kinds": [443], "authors": [pk_hex(&owner)]})];
    let first = authed(&relays[1], &inviter).await.query_ids(&f).await;
    assert_eq!(first.len(), 2, "{first:?}");
    let then = authed(&relays[2], &second).await.query_ids(&f).await;
    assert_eq!(then.len(), 1, "{then:?}");
    assert!(
        !first.contains(&then[0]),
        "a KeyPackage claimed through one instance was handed out by another"
    );
}
