//! The relay on PostgreSQL (`storage_backend = "cloudsql"`), end to end: the two keys are all it
//! takes, acknowledged events survive a SIGKILL, and a database outage is reported (503,
//! `OK false "error: …"`, `CLOSED "error: …"`) and recovered from without a restart.
//!
//! Needs `DATABASE_URL` (scripts/test.sh starts a throwaway cluster); each relay gets a fresh
//! database. Outages are made by a TCP proxy between the relay and the database, so other
//! tests sharing the cluster are not disturbed.

mod common;

use common::outage::*;
use common::pg;
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn skip() -> bool {
    if pg::database_url().is_none() {
        eprintln!("skipped: DATABASE_URL is not set (scripts/test.sh starts a PostgreSQL)");
        return true;
    }
    false
}

/// Exactly the two keys an operator sets.
fn cloudsql_config(url: &str) -> String {
    format!("[extensions.mls_gateway]\nstorage_backend = \"cloudsql\"\ndatabase_url = {url:?}\n")
}

#[tokio::test]
async fn two_keys_suffice_and_acknowledged_events_survive_sigkill() {
    if skip() {
        return;
    }
    let url = pg::fresh_database();
    let mut relay = Relay::builder()
        .config(&cloudsql_config(&url))
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let e = ev(&k, 1, &[&["t", "pg"]], &format!("n{i}"));
        ws.publish_ok(&e).await;
        acked.push(id_hex(&e));
    }
    // A burst not waited for, then SIGKILL: whatever got `OK true` must be there after.
    for i in 0..200 {
        let e = ev(&k, 1, &[&["t", "pg"]], &format!("burst{i}"));
        ws.send(&json!(["EVENT", e])).await;
    }
    let mut burst_acked = 0;
    while let Some(m) = ws.recv_timeout(Duration::from_millis(300)).await {
        if m[0] == "OK" && m[2] == true {
            acked.push(m[1].as_str().unwrap().to_owned());
            burst_acked += 1;
        }
        if burst_acked >= 50 {
            break; // kill mid-burst
        }
    }
    relay.restart().await;
    assert!(
        relay.log().contains("PostgreSQL store open"),
        "{}",
        relay.log_tail(20)
    );
    let mut ws = relay.connect().await;
    let stored = req_ids(&mut ws, "all", json!({"#t": ["pg"], "limit": 500}))
        .await
        .expect("REQ answered");
    for id in &acked {
        assert!(stored.contains(id), "acknowledged event {id} lost");
    }
}

#[tokio::test]
async fn database_outage_is_reported_and_recovered_without_restart() {
    if skip() {
        return;
    }
    let url = pg::fresh_database();
    let proxy = Proxy::start(pg::host_port(&url)).await;
    let via_proxy = pg::with_host_port(&url, "127.0.0.1", proxy.port);
    let relay = Relay::builder()
        .config(&cloudsql_config(&via_proxy))
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let before = ev(&k, 1, &[&["t", "outage"]], "before");
    ws.publish_ok(&before).await;

    proxy.cut();
    let health = relay.get("/health").await;
    assert_eq!(health.status, 503, "{}", health.text());
    assert_eq!(health.json()["failing"], "store");
    let during = ev(&k, 1, &[&["t", "outage"]], "during");
    let (ok, msg) = publish_during_outage(&mut ws, &during).await;
    assert!(!ok, "OK true while the database is down");
    assert_prefix(&msg, "error:");
    let closed = req_ids(&mut ws, "down", json!({"#t": ["outage"]})).await;
    match closed {
        Err(msg) => assert_prefix(&msg, "error:"),
        Ok(ids) => panic!("REQ answered while the database is down: {ids:?}"),
    }

    proxy.restore();
    let deadline = std::time::Instant::now() + pg::RECOVERY_TIMEOUT;
    while relay.get("/health").await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "relay did not recover; log:\n{}",
            relay.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = ev_at(&k, before.created_at + 1, 1, &[&["t", "outage"]], "after");
    ws.publish_ok(&after).await;
    let ids = req_ids(&mut ws, "up", json!({"#t": ["outage"]}))
        .await
        .expect("REQ answered after recovery");
    assert_eq!(ids, vec![id_hex(&after), id_hex(&before)]);
}

#[tokio::test]
async fn a_silent_database_gets_errors_in_bounded_time_not_a_hang() {
    if skip() {
        return;
    }
    let url = pg::fresh_database();
    let proxy = Proxy::start(pg::host_port(&url)).await;
    let via_proxy = pg::with_host_port(&url, "127.0.0.1", proxy.port);
    // Client deadline = statement timeout (1 s) + connect timeout (5 s).
    let relay = Relay::builder()
        .config(&cloudsql_config(&via_proxy))
        .config("[extensions.mls_gateway]\ndatabase_statement_timeout = 1\n")
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let before = ev(&k, 1, &[&["t", "silent"]], "before");
    ws.publish_ok(&before).await;

    proxy.silence();
    let during = ev(&k, 1, &[&["t", "silent"]], "during");
    let (ok, msg) = publish_during_outage(&mut ws, &during).await;
    assert!(!ok, "OK true while the database is silent");
    assert_prefix(&msg, "error:");
    match req_ids(&mut ws, "silent", json!({"#t": ["silent"]})).await {
        Err(msg) => assert_prefix(&msg, "error:"),
        Ok(ids) => panic!("REQ answered while the database is silent: {ids:?}"),
    }
    assert_eq!(relay.get("/health").await.status, 503);

    // Connections that went silent were closed, not pooled: recovery needs no restart.
    proxy.restore();
    let deadline = std::time::Instant::now() + pg::RECOVERY_TIMEOUT;
    while relay.get("/health").await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "relay did not recover; log:\n{}",
            relay.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = ev_at(&k, before.created_at + 1, 1, &[&["t", "silent"]], "after");
    ws.publish_ok(&after).await;
    let ids = req_ids(&mut ws, "up", json!({"#t": ["silent"]}))
        .await
        .expect("REQ answered after recovery");
    assert_eq!(ids, vec![id_hex(&after), id_hex(&before)]);
}

#[tokio::test]
async fn relay_started_while_database_is_down_retries_then_serves() {
    if skip() {
        return;
    }
    let url = pg::fresh_database();
    let proxy = Proxy::start(pg::host_port(&url)).await;
    proxy.cut();
    let via_proxy = pg::with_host_port(&url, "127.0.0.1", proxy.port);
    let proxy = Arc::new(proxy);
    let restore = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.restore();
        })
    };
    // `start` waits for /health: it returns once the database came back.
    let relay = Relay::builder()
        .config(&cloudsql_config(&via_proxy))
        .start()
        .await;
    restore.await.unwrap();
    assert!(
        relay.log().contains("database unreachable; retrying"),
        "no retry logged:\n{}",
        relay.log_tail(20)
    );
    assert!(
        !relay.log().contains("mls_test:mls_test@"),
        "password logged"
    );
    let mut ws = relay.connect().await;
    ws.publish_ok(&ev(&keys(), 1, &[], "hello")).await;
}

// ---------------------------------------------------------------------------------------------
// Two relay instances on one database, racing through the real gateway rules
// ---------------------------------------------------------------------------------------------

#[path = "support_mls/mod.rs"]
mod support_mls;

/// Two relays (auth off) on one fresh database.
async fn two_instances() -> (Relay, Relay) {
    let url = pg::fresh_database();
    let config = format!("{}[auth]\nenabled = false\n", cloudsql_config(&url));
    let a = Relay::builder().config(&config).start().await;
    let b = Relay::builder().config(&config).start().await;
    (a, b)
}

/// Sends `events[i]` to `conns[i % 2]` without waiting, then collects every OK:
/// `(accepted, message)` per event, in order.
async fn race(conns: &mut [Ws; 2], events: &[mls_proto::Event]) -> Vec<(bool, String)> {
    for (i, e) in events.iter().enumerate() {
        conns[i % 2].send(&json!(["EVENT", e])).await;
    }
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        out.push(conns[i % 2].wait_ok(&id_hex(e)).await);
    }
    out
}

fn winners(outcomes: &[(bool, String)]) -> usize {
    outcomes.iter().filter(|(ok, _)| *ok).count()
}

#[tokio::test]
async fn two_instances_never_both_create_a_group() {
    if skip() {
        return;
    }
    let (a, b) = two_instances().await;
    let mut conns = [a.connect().await, b.connect().await];
    for round in 0..10 {
        let g = support_mls::unique_id();
        // Two owners bootstrap the same group, one through each instance, at once.
        let events = [
            support_mls::roster(&keys(), &g, "bootstrap", 1, &[]),
            support_mls::roster(&keys(), &g, "bootstrap", 1, &[]),
        ];
        let outcomes = race(&mut conns, &events).await;
        assert_eq!(winners(&outcomes), 1, "round {round}: {outcomes:?}");
    }
}

#[tokio::test]
async fn two_instances_never_accept_the_same_roster_seq_twice() {
    if skip() {
        return;
    }
    let (a, b) = two_instances().await;
    let mut conns = [a.connect().await, b.connect().await];
    let admin = keys();
    let g = support_mls::unique_id();
    conns[0]
        .publish_ok(&support_mls::roster(&admin, &g, "bootstrap", 1, &[]))
        .await;
    for seq in 2..12 {
        // The same next seq, with different members, through both instances at once.
        let events = [
            support_mls::roster(&admin, &g, "add", seq, &[&keys()]),
            support_mls::roster(&admin, &g, "add", seq, &[&keys()]),
        ];
        let outcomes = race(&mut conns, &events).await;
        assert_eq!(winners(&outcomes), 1, "seq {seq}: {outcomes:?}");
    }
}

#[tokio::test]
async fn two_instances_never_give_one_keypackage_reference_to_two_owners() {
    if skip() {
        return;
    }
    let (a, b) = two_instances().await;
    let mut conns = [a.connect().await, b.connect().await];
    for round in 0..10 {
        let reference = support_mls::unique_id();
        let events = [
            support_mls::lox_keypackage(&keys(), &reference),
            support_mls::lox_keypackage(&keys(), &reference),
        ];
        let outcomes = race(&mut conns, &events).await;
        assert_eq!(winners(&outcomes), 1, "round {round}: {outcomes:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The gateway state purge runs in bounded chunks on PostgreSQL too
// ---------------------------------------------------------------------------------------------

/// Runs `sql` on the database `url` names.
async fn sql(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client.batch_execute(sql).await.expect("sql");
}

#[tokio::test]
async fn gateway_state_purge_runs_in_chunks_on_postgres() {
    if skip() {
        return;
    }
    const SEEDED: usize = 25_000;
    let url = pg::fresh_database();
    let mut relay = Relay::builder()
        .config(&cloudsql_config(&url))
        .config("[auth]\nenabled = false\n")
        .start()
        .await;
    relay.kill();
    // 445 rate counters of a long past minute (window 1): all stale (as security_groups.rs
    // seeds the embedded store).
    sql(
        &url,
        &format!(
            "INSERT INTO state (key, value) SELECT convert_to('rg/' || lpad(to_hex(i), 64, '0') \
             || '/anon/1', 'UTF8'), '\\x31'::bytea FROM generate_series(0, {}) AS i",
            SEEDED - 1
        ),
    )
    .await;
    relay.spawn().await;
    let mut ws = relay.connect().await;
    let k = keys();
    ws.publish_ok(&ev(&k, 1, &[], "published during the purge"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let line = loop {
        let found = relay.log().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let field = |name: &str| line["fields"][name].as_u64().unwrap_or(0);
    assert_eq!(field("removed"), SEEDED as u64, "{line}");
    assert!(field("chunks") >= 3, "{line}");
    ws.publish_ok(&ev(&k, 1, &[], "after the purge")).await;
}

// ---------------------------------------------------------------------------------------------
// Moving between backends: a backup of the embedded store restores into PostgreSQL and back
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_backup_moves_from_embedded_to_postgres_and_back_byte_for_byte() {
    if skip() {
        return;
    }
    let embedded = "[extensions.mls_gateway]\nstorage_backend = \"embedded\"\n";
    let mut a = Relay::builder()
        .config("[auth]\nenabled = false\n")
        .config(embedded)
        .start()
        .await;
    let (admin, alice) = (keys(), keys());
    let mut ws = a.connect().await;
    // Gateway state (a roster-gated group, a KeyPackage reference), events, a tombstone.
    let g = support_mls::unique_id();
    ws.publish_ok(&support_mls::roster(&admin, &g, "bootstrap", 1, &[&alice]))
        .await;
    ws.publish_ok(&support_mls::lox_keypackage(
        &alice,
        &support_mls::unique_id(),
    ))
    .await;
    let note = ev(&alice, 1, &[&["t", "moved"]], "moves with the backup");
    ws.publish_ok(&note).await;
    let doomed = ev(&alice, 1, &[], "deleted before the move");
    ws.publish_ok(&doomed).await;
    ws.publish_ok(&ev(&alice, 5, &[&["e", &id_hex(&doomed)]], ""))
        .await;
    drop(ws);
    a.kill();
    let backup = a.cli(&["export"], None);
    assert!(backup.success(), "{backup:?}");

    // Into an empty PostgreSQL database.
    let url = pg::fresh_database();
    let mut b = Relay::builder()
        .config("[auth]\nenabled = false\n")
        .config(&cloudsql_config(&url))
        .prepare();
    let imported = b.cli(&["import"], Some(backup.stdout.as_bytes()));
    assert!(imported.success(), "{imported:?}");
    let from_pg = b.cli(&["export"], None);
    assert!(from_pg.success(), "{from_pg:?}");
    assert_eq!(
        from_pg.stdout, backup.stdout,
        "PostgreSQL gives back the same backup"
    );
    b.spawn().await;
    let mut ws = b.connect().await;
    let ids = req_ids(&mut ws, "moved", json!({"#t": ["moved"]}))
        .await
        .unwrap();
    assert_eq!(ids, vec![id_hex(&note)]);
    let (ok, msg) = ws.publish(&doomed).await;
    assert!(!ok, "a deleted event came back after the move");
    assert_prefix(&msg, "blocked:");
    drop(ws);
    b.kill();

    // And back into a fresh embedded store.
    let c = Relay::builder()
        .config("[auth]\nenabled = false\n")
        .config(embedded)
        .prepare();
    let from_pg = b.cli(&["export"], None);
    let imported = c.cli(&["import"], Some(from_pg.stdout.as_bytes()));
    assert!(imported.success(), "{imported:?}");
    assert_eq!(c.cli(&["export"], None).stdout, backup.stdout);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL itself stopped and started mid-run (a cluster of the test's own, so the shared one
// is not disturbed)
// ---------------------------------------------------------------------------------------------

/// A throwaway cluster of this test's own, started with the server binaries scripts/test.sh
/// found (`PG_TEST_BINDIR`, run as `PG_TEST_USER`).
struct OwnCluster {
    dir: tempfile::TempDir,
    bindir: String,
    user: String,
    port: u16,
}

impl OwnCluster {
    fn create() -> Option<OwnCluster> {
        let (Ok(bindir), Ok(user)) = (
            std::env::var("PG_TEST_BINDIR"),
            std::env::var("PG_TEST_USER"),
        ) else {
            eprintln!(
                "skipped: PG_TEST_BINDIR / PG_TEST_USER not set (scripts/services/postgres.sh)"
            );
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("mls-gw-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let cluster = OwnCluster {
            dir,
            bindir,
            user,
            port: free_port(),
        };
        let me = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        if me.trim() != cluster.user {
            let ok = std::process::Command::new("chown")
                .arg(&cluster.user)
                .arg(cluster.dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown the cluster directory");
        }
        cluster.run(&[
            "initdb",
            "-D",
            &cluster.data(),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]);
        cluster.start();
        Some(cluster)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, args: &[&str]) {
        let bin = format!("{}/{}", self.bindir, args[0]);
        let me = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let mut cmd = if me.trim() == self.user {
            std::process::Command::new(&bin)
        } else {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", &self.user, "--", &bin]);
            c
        };
        let out = cmd
            .args(&args[1..])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=on",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-l",
            &log.to_string_lossy(),
            "-w",
            "-o",
            &opts,
            "start",
        ]);
    }

    /// `immediate`: the server stops without a checkpoint, as in a crash; what was committed
    /// must still be there after the restart.
    fn stop(&self) {
        self.run(&[
            "pg_ctl",
            "-D",
            &self.data(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
    }
}

#[tokio::test]
async fn postgres_restart_mid_burst_loses_nothing_acknowledged() {
    if skip() {
        return;
    }
    let Some(cluster) = OwnCluster::create() else {
        return;
    };
    let relay = Relay::builder()
        .config(&cloudsql_config(&cluster.url()))
        .config("[auth]\nenabled = false\n")
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let events: Vec<mls_proto::Event> = (0..300)
        .map(|i| ev(&k, 1, &[&["t", "restart"]], &format!("r{i}")))
        .collect();
    let mut acked = Vec::new();
    let mut refused = 0;
    for (i, e) in events.iter().enumerate() {
        if i == 100 {
            cluster.stop();
        }
        if i == 150 {
            cluster.start();
        }
        let (ok, msg) = ws.publish(e).await;
        if ok {
            acked.push(id_hex(e));
        } else {
            assert_prefix(&msg, "error:");
            refused += 1;
        }
        if (100..150).contains(&i) {
            assert!(!ok, "OK true while the database was stopped");
        }
    }
    assert!(refused >= 50, "{refused} refused");
    // Serving again without a restart: the events published after the database came back are
    // acknowledged, and every acknowledged event is stored.
    let deadline = std::time::Instant::now() + pg::RECOVERY_TIMEOUT;
    while relay.get("/health").await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            relay.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last = ev(&k, 1, &[&["t", "restart"]], "after");
    ws.publish_ok(&last).await;
    acked.push(id_hex(&last));
    let stored = req_ids(&mut ws, "all", json!({"#t": ["restart"], "limit": 1000}))
        .await
        .unwrap();
    let mut stored_sorted = stored.clone();
    stored_sorted.sort();
    let mut acked_sorted = acked.clone();
    acked_sorted.sort();
    assert_eq!(stored_sorted, acked_sorted, "stored = acknowledged");
}
