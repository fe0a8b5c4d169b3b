//! PostgreSQL for the end-to-end tests: fresh databases in the cluster `DATABASE_URL` names
//! (scripts/test.sh starts one).
//!
//! `MLS_TEST_STORE=cloudsql` makes every relay the harness spawns run on PostgreSQL, each in a
//! database of its own, so any end-to-end suite can be run against that backend:
//! `MLS_TEST_STORE=cloudsql cargo test --test mls_adversarial`.

use std::time::Duration;

/// The cluster's URL from `DATABASE_URL`, or `None`.
pub fn database_url() -> Option<String> {
    std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty())
}

/// Whether spawned relays should use PostgreSQL (`MLS_TEST_STORE=cloudsql`). Panics when that
/// is asked without a `DATABASE_URL`: a run meant for PostgreSQL must not silently test the
/// embedded store.
pub fn e2e_on_postgres() -> bool {
    match std::env::var("MLS_TEST_STORE").as_deref() {
        Ok("cloudsql") => {
            assert!(
                database_url().is_some(),
                "MLS_TEST_STORE=cloudsql needs DATABASE_URL (scripts/services/postgres.sh start)"
            );
            true
        }
        _ => false,
    }
}

/// Creates an empty database and returns its URL (the `DATABASE_URL` cluster, same role).
pub fn fresh_database() -> String {
    let base = database_url().expect("DATABASE_URL");
    let mut b = [0u8; 8];
    secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut b);
    let name = format!("e2e_{}", hex::encode(b));
    let create = format!("CREATE DATABASE {name}");
    let url = base.clone();
    // Its own thread and runtime: callable from sync and async test code alike.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to DATABASE_URL");
            tokio::spawn(conn);
            client
                .batch_execute(&create)
                .await
                .expect("create database");
        })
    })
    .join()
    .expect("create database thread");
    with_dbname(&base, &name)
}

/// `url` (postgres://…/db?params) naming database `name` instead.
pub fn with_dbname(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// `url` with its host and port replaced (to go through a proxy).
pub fn with_host_port(url: &str, host: &str, port: u16) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host_start = rest.rfind('@').map_or(0, |i| i + 1);
    let host_end = rest[host_start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| host_start + i);
    format!(
        "{}{}{host}:{port}{}",
        &url[..scheme_end],
        &rest[..host_start],
        &rest[host_end..]
    )
}

/// Host and port of a `postgres://` URL.
pub fn host_port(url: &str) -> (String, u16) {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host_start = rest.rfind('@').map_or(0, |i| i + 1);
    let host_end = rest[host_start..]
        .find(['/', '?'])
        .map_or(rest.len(), |i| host_start + i);
    let hp = &rest[host_start..host_end];
    match hp.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().expect("port")),
        None => (hp.to_string(), 5432),
    }
}

/// How long to wait for the relay to notice the database came back.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
