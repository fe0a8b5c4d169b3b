//! Harness: builds and starts the real `mls-gateway` binary on a free loopback port with its own
//! temporary data directory, and connects nostr-sdk clients to it that authenticate (NIP-42)
//! automatically — and checks, on the wire, that they did.
//!
//! `CARGO_BIN_EXE_mls-gateway` only exists for the binary's own package, so the binary is built
//! once per test process with `cargo build -p mls-gateway --bin mls-gateway` (same cargo, same
//! target dir, so it is a no-op when it is up to date) and its path is read from cargo's JSON
//! output.

#![allow(dead_code)]

use nostr_sdk::prelude::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long any single relay round trip (connect, OK, EOSE) may take before a test gives up.
pub const WAIT: Duration = Duration::from_secs(15);
/// How long the relay may take to answer `GET /health` with 200 after spawning.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables the relay reads: removed from the child's environment so the host's
/// settings cannot change what the test runs against.
const RELAY_ENV: &[&str] = &[
    "PORT",
    "NOSTR_AUTH_REQUIRED",
    "DATABASE_URL",
    "GOOGLE_CLOUD_PROJECT",
    "FIREBASE_PROJECT_ID",
    "FIRESTORE_EMULATOR_HOST",
    "ALLOWED_ORIGINS",
    "METRICS_TOKEN",
    "LOG_LEVEL",
    "RUST_LOG",
    "REDIS_URL",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// Path of the freshly built `mls-gateway` binary (built at most once per test process).
pub fn relay_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "mls-gateway",
                "--bin",
                "mls-gateway",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build for mls-gateway");
        assert!(
            out.status.success(),
            "cargo build --bin mls-gateway failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let exe = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "mls-gateway")
            .filter(|m| {
                m["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
            })
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no executable for the mls-gateway binary");
        assert!(exe.is_file(), "{} is not a file", exe.display());
        exe
    })
}

/// `MLS_TEST_STORE=cloudsql`: the relay runs on PostgreSQL, in a fresh database of the cluster
/// `DATABASE_URL` names (as the workspace's end-to-end harness does); `MLS_TEST_STORE=firestore`:
/// on the emulator `FIRESTORE_EMULATOR_HOST` names, in a fresh project; otherwise nothing (the
/// embedded store).
fn store_config() -> String {
    if let Some(project) = firestore_project() {
        return format!(
            "\n[extensions.mls_gateway]\nstorage_backend = \"firestore\"\nproject_id = \"{project}\"\n"
        );
    }
    if std::env::var("MLS_TEST_STORE").as_deref() != Ok("cloudsql") {
        return String::new();
    }
    let base = std::env::var("DATABASE_URL").expect("MLS_TEST_STORE=cloudsql needs DATABASE_URL");
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = format!(
        "marmot_{}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let create = format!("CREATE DATABASE {name}");
    let url = base.clone();
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
    .expect("create database");
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base.as_str(), String::new()),
    };
    let server = &head[..head.rfind('/').expect("postgres://…/db")];
    format!(
        "\n[extensions.mls_gateway]\nstorage_backend = \"cloudsql\"\ndatabase_url = \"{server}/{name}{query}\"\n"
    )
}

/// `MLS_TEST_STORE=firestore`: a project id nobody used yet on the emulator.
fn firestore_project() -> Option<String> {
    if std::env::var("MLS_TEST_STORE").as_deref() != Ok("firestore") {
        return None;
    }
    emulator_host();
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    Some(format!(
        "marmot-{}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ))
}

/// The emulator a Firestore run uses (`FIRESTORE_EMULATOR_HOST`).
fn emulator_host() -> String {
    std::env::var("FIRESTORE_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .expect("MLS_TEST_STORE=firestore needs FIRESTORE_EMULATOR_HOST")
}

/// Picks a free loopback port (bind :0, read, drop).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// One running relay process; killed when dropped.
pub struct Relay {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Relay {
    /// Starts the relay with `[auth] enabled = auth` and otherwise default settings.
    pub async fn start(auth: bool) -> Relay {
        let bin = relay_binary();
        let dir = tempfile::Builder::new()
            .prefix("marmot-e2e-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let config = format!(
            r#"[server]
host = "127.0.0.1"
port = {port}
relay_url = "ws://127.0.0.1:{port}"

[data]
path = {data:?}

[auth]
enabled = {auth}
{store}"#,
            data = dir.path().join("data").to_string_lossy(),
            store = store_config(),
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("relay")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for k in RELAY_ENV {
            cmd.env_remove(k);
        }
        cmd.env("RUST_LOG", "info");
        if std::env::var("MLS_TEST_STORE").as_deref() == Ok("firestore") {
            cmd.env("FIRESTORE_EMULATOR_HOST", emulator_host());
        }
        let child = cmd.spawn().expect("spawn mls-gateway");
        let mut relay = Relay {
            port,
            dir,
            child: Some(child),
        };
        relay.wait_healthy().await;
        relay
    }

    async fn wait_healthy(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "mls-gateway exited during startup ({status}); log tail:\n{}",
                    self.log_tail(40)
                );
            }
            if health_status(self.port) == Some(200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mls-gateway did not answer GET /health with 200 within {STARTUP_TIMEOUT:?}; \
                 log tail:\n{}",
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A nostr-sdk client signing as `keys`, with automatic NIP-42 authentication, connected to
    /// this relay. Returns only once the relay has sent its AUTH challenge and accepted the
    /// client's AUTH event (`OK true`), so that nothing later races the authentication.
    pub async fn client(&self, keys: &Keys) -> Client {
        let client = Client::builder()
            .signer(keys.clone())
            .opts(ClientOptions::new().automatic_authentication(true))
            .build();
        // Subscribe before connecting so that the challenge cannot be missed.
        let mut notes = client.notifications();
        client.add_relay(self.ws_url()).await.unwrap();
        let out = client.try_connect(WAIT).await;
        assert!(
            !out.success.is_empty(),
            "nostr-sdk could not connect: {:?}",
            out.failed
        );
        let authed = tokio::time::timeout(WAIT, async {
            let mut challenged = false;
            loop {
                match notes.recv().await {
                    Ok(RelayPoolNotification::Message { message, .. }) => match message {
                        RelayMessage::Auth { .. } => challenged = true,
                        // Nothing else has been sent on this connection: the first OK after
                        // the challenge answers the SDK's AUTH event.
                        RelayMessage::Ok {
                            status, message, ..
                        } if challenged => return (status, message.to_string()),
                        _ => {}
                    },
                    Ok(_) => {}
                    Err(e) => panic!("notification channel: {e}"),
                }
            }
        })
        .await;
        match authed {
            Ok((true, _)) => {}
            Ok((false, msg)) => panic!("relay refused nostr-sdk's AUTH: {msg}"),
            Err(_) => panic!(
                "nostr-sdk did not complete NIP-42 authentication within {WAIT:?}; log tail:\n{}",
                self.log_tail(20)
            ),
        }
        client
    }

    /// Whether the relay logged a successful NIP-42 authentication of `pk`.
    pub fn logged_auth_of(&self, pk: &PublicKey) -> bool {
        let hex = pk.to_hex();
        let short = format!("{}…{}", &hex[..8], &hex[60..]);
        self.log()
            .lines()
            .any(|l| l.contains("authenticated") && l.contains(&short))
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET /health` over plain HTTP/1.1; the status code, or None when unreachable.
fn health_status(port: u16) -> Option<u16> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf);
    head.lines().next()?.split_whitespace().nth(1)?.parse().ok()
}

/// A nostr-sdk client that never authenticates (no signer, automatic authentication off).
pub async fn anonymous_client(relay: &Relay) -> Client {
    let client = Client::builder()
        .opts(ClientOptions::new().automatic_authentication(false))
        .build();
    client.add_relay(relay.ws_url()).await.unwrap();
    let out = client.try_connect(WAIT).await;
    assert!(
        !out.success.is_empty(),
        "nostr-sdk could not connect: {:?}",
        out.failed
    );
    client
}

/// Runs `filter` as a one-shot REQ and returns the events served plus the reason of the relay's
/// `CLOSED` for it, if it sent one (read from the client's notification stream).
pub async fn fetch_with_closed(client: &Client, filter: Filter) -> (usize, Option<String>) {
    let mut notes = client.notifications();
    let events = client
        .fetch_events(filter.clone(), WAIT)
        .await
        .unwrap_or_else(|e| panic!("fetching {} failed: {e}", filter.as_json()));
    let mut closed = None;
    while let Ok(n) = notes.try_recv() {
        if let RelayPoolNotification::Message {
            message: RelayMessage::Closed { message, .. },
            ..
        } = n
        {
            closed = Some(message.to_string());
        }
    }
    (events.len(), closed)
}
