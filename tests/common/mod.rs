//! Harness for the end-to-end tests: starts the real `mls-gateway` binary on a free loopback
//! port with its own temporary data directory, and talks to it over raw WebSocket frames and
//! raw HTTP/1.1, so that every test sees exactly what a client on the wire would see.
//!
//! Every test starts its own relay ([`Relay::start`] / [`Relay::builder`]); the relay is killed
//! when the handle is dropped. Waits use generous timeouts and never assert durations.

#![allow(dead_code, clippy::result_large_err)]

pub mod firestore;
pub mod outage;
pub mod pg;

use futures_util::{SinkExt, StreamExt};
use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_mls-gateway");

/// How long any single expected message may take before a test gives up.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the relay may take to answer `/health` after spawning.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variables the relay reads; removed from the child's environment so the host's
/// settings (CI, Cloud Run-like shells) cannot change what a test runs against.
const RELAY_ENV: &[&str] = &[
    "PORT",
    "NOSTR_AUTH_REQUIRED",
    "DATABASE_URL",
    "GOOGLE_CLOUD_PROJECT",
    "FIREBASE_PROJECT_ID",
    "FIRESTORE_EMULATOR_HOST",
    "ALLOWED_ORIGINS",
    "LOG_LEVEL",
    "RUST_LOG",
    "REDIS_URL",
    "MLS_GATEWAY_CONFIG",
    "LOG_FORMAT",
    "RELAY_URL",
];

// ---------------------------------------------------------------------------------------------
// Time, keys, events
// ---------------------------------------------------------------------------------------------

pub fn now() -> u64 {
    mls_proto::unix_now()
}

pub fn keys() -> Keypair {
    Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

pub fn pk_hex(k: &Keypair) -> String {
    hex::encode(k.x_only_public_key().0.serialize())
}

pub fn npub(k: &Keypair) -> String {
    let hrp = bech32::Hrp::parse("npub").unwrap();
    bech32::encode::<bech32::Bech32>(hrp, &k.x_only_public_key().0.serialize()).unwrap()
}

pub fn tags(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|tag| tag.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// A signed event created now.
pub fn ev(k: &Keypair, kind: u16, t: &[&[&str]], content: &str) -> Event {
    Event::sign(k, now(), kind, tags(t), content)
}

/// A signed event with an explicit `created_at`.
pub fn ev_at(k: &Keypair, created_at: u64, kind: u16, t: &[&[&str]], content: &str) -> Event {
    Event::sign(k, created_at, kind, tags(t), content)
}

pub fn id_hex(e: &Event) -> String {
    e.id.to_hex()
}

pub fn event_value(e: &Event) -> Value {
    serde_json::to_value(e).unwrap()
}

/// NIP-42 AUTH event for `challenge` naming `relay`.
pub fn auth_event(k: &Keypair, challenge: &str, relay: &str) -> Event {
    auth_event_at(k, challenge, relay, now())
}

pub fn auth_event_at(k: &Keypair, challenge: &str, relay: &str, created_at: u64) -> Event {
    Event::sign(
        k,
        created_at,
        22242,
        tags(&[&["relay", relay], &["challenge", challenge]]),
        "",
    )
}

/// Asserts that a refusal/notice message starts with the given machine-readable prefix.
#[track_caller]
pub fn assert_prefix(msg: &str, prefix: &str) {
    assert!(
        msg.starts_with(prefix),
        "expected a message starting with {prefix:?}, got {msg:?}"
    );
}

/// Asserts the message starts with one of the given prefixes.
#[track_caller]
pub fn assert_any_prefix(msg: &str, prefixes: &[&str]) {
    assert!(
        prefixes.iter().any(|p| msg.starts_with(p)),
        "expected a message starting with one of {prefixes:?}, got {msg:?}"
    );
}

pub const STANDARD_PREFIXES: &[&str] = &[
    "invalid:",
    "duplicate:",
    "blocked:",
    "rate-limited:",
    "restricted:",
    "auth-required:",
    "error:",
    "pow:",
    "unsupported:",
];

// ---------------------------------------------------------------------------------------------
// The relay process
// ---------------------------------------------------------------------------------------------

/// Deep-merges `over` into `base` (tables merge key by key; anything else is replaced).
pub fn merge_toml(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_toml(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Picks a free loopback port (bind :0, read, drop). Racy in theory, fine in practice.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

pub struct RelayBuilder {
    /// TOML fragments, each deep-merged over the base config in order.
    config: Vec<String>,
    env: Vec<(String, String)>,
}

impl RelayBuilder {
    /// TOML merged over the harness's base config (deep merge, later calls win).
    pub fn config(mut self, toml_text: &str) -> Self {
        self.config.push(toml_text.to_owned());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub async fn start(self) -> Relay {
        let mut relay = self.prepare();
        relay.spawn().await;
        relay
    }

    /// Writes the config and creates the data directory's parent, without starting the relay
    /// (for CLI tests that use the config first; `spawn` starts it later).
    pub fn prepare(self) -> Relay {
        let dir = tempfile::Builder::new()
            .prefix("mls-gw-e2e-")
            .tempdir()
            .expect("tempdir");
        let mut relay = Relay {
            port: 0,
            dir,
            child: None,
            overrides: self.config,
            env: self.env,
            starts: 0,
            // MLS_TEST_STORE=cloudsql: a database of its own, kept across restarts.
            database_url: pg::e2e_on_postgres().then(pg::fresh_database),
            // MLS_TEST_STORE=firestore: a project of its own, kept across restarts.
            firestore_project: firestore::e2e_on_firestore().then(firestore::fresh_project),
        };
        relay.port = free_port();
        std::fs::write(relay.config_path(), relay.render_config(relay.port)).unwrap();
        relay
    }
}

pub struct Relay {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    overrides: Vec<String>,
    env: Vec<(String, String)>,
    starts: u32,
    /// Set when the relay runs on PostgreSQL (`MLS_TEST_STORE=cloudsql`).
    pub database_url: Option<String>,
    /// Set when the relay runs on the Firestore emulator (`MLS_TEST_STORE=firestore`).
    pub firestore_project: Option<String>,
}

impl Relay {
    pub async fn start() -> Relay {
        Relay::builder().start().await
    }

    pub fn builder() -> RelayBuilder {
        RelayBuilder {
            config: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("relay.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("relay-{}.log", self.starts))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The base config every test relay runs with, with `overrides` merged over it.
    pub fn render_config(&self, port: u16) -> String {
        let base = format!(
            r#"
[server]
host = "127.0.0.1"
port = {port}

[info]
name = "{name}"

[data]
path = {data:?}

# Tests open many connections and REQs from one address; the per-IP limits are tested
# explicitly where they matter.
[limitation]
max_connections_per_ip = 0
max_reqs_per_minute = 0

[extensions.mls_gateway.rate_limits]
max_events_per_minute = 0
max_keypackages_per_hour = 0
max_group_messages_per_minute = 0
"#,
            data = self.data_path().to_string_lossy(),
            name = self.name()
        );
        let mut table: toml::Table = base.parse().expect("base config parses");
        if let Some(url) = &self.database_url {
            let mut store = toml::Table::new();
            store.insert("storage_backend".into(), "cloudsql".into());
            store.insert("database_url".into(), url.as_str().into());
            let mut ext = toml::Table::new();
            ext.insert("mls_gateway".into(), store.into());
            let mut over = toml::Table::new();
            over.insert("extensions".into(), ext.into());
            merge_toml(&mut table, over);
        }
        if let Some(project) = &self.firestore_project {
            let mut store = toml::Table::new();
            store.insert("storage_backend".into(), "firestore".into());
            store.insert("project_id".into(), project.as_str().into());
            let mut ext = toml::Table::new();
            ext.insert("mls_gateway".into(), store.into());
            let mut over = toml::Table::new();
            over.insert("extensions".into(), ext.into());
            merge_toml(&mut table, over);
        }
        for text in &self.overrides {
            let over: toml::Table = text
                .parse()
                .unwrap_or_else(|e| panic!("test config override does not parse ({e}):\n{text}"));
            merge_toml(&mut table, over);
        }
        toml::to_string(&table).unwrap()
    }

    /// Writes the config (on a new free port) and starts the binary; waits for `/health`.
    /// Retries on a fresh port if the port turned out to be taken (another test's relay
    /// grabbed it between `free_port` and the bind).
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "relay already running");
        for attempt in 0..3 {
            match self.try_spawn().await {
                Ok(()) => return,
                Err(log) if attempt < 2 && looks_like_port_in_use(&log) => continue,
                Err(log) => panic!("{log}"),
            }
        }
    }

    async fn try_spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        self.port = free_port();
        std::fs::write(self.config_path(), self.render_config(self.port)).unwrap();
        let log = std::fs::File::create(self.log_path()).unwrap();
        let out = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("relay")
            .arg("-c")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log);
        for k in RELAY_ENV {
            cmd.env_remove(k);
        }
        cmd.env("RUST_LOG", "info");
        if self.firestore_project.is_some() {
            cmd.env(
                "FIRESTORE_EMULATOR_HOST",
                firestore::emulator_host().expect("FIRESTORE_EMULATOR_HOST"),
            );
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn mls-gateway"));
        self.wait_healthy().await
    }

    /// `/health` answers 200 and the NIP-11 name is this relay's own (not another test's
    /// relay on a reused port).
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let name = self.name();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!(
                    "mls-gateway exited during startup ({status}); log tail:\n{}",
                    self.log_tail(40)
                ));
            }
            let short = Duration::from_secs(2);
            if let Ok(resp) = http_get_timeout(self.port, "/health", &[], short).await {
                if resp.status == 200 {
                    let info = http_get_timeout(
                        self.port,
                        "/",
                        &[("Accept", "application/nostr+json")],
                        short,
                    )
                    .await;
                    let ours = match info {
                        Ok(r) => match serde_json::from_slice::<Value>(&r.body) {
                            Ok(v) => v["name"] == name.as_str() || v["name"].is_null(),
                            Err(_) => true,
                        },
                        Err(_) => false,
                    };
                    if ours {
                        return Ok(());
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = self.child.as_mut().map(|c| c.kill());
                self.child = None;
                return Err(format!(
                    "mls-gateway did not answer GET /health with 200 within {:?}; log tail:\n{}",
                    STARTUP_TIMEOUT,
                    self.log_tail(40)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The NIP-11 name this test relay runs with (unique per relay).
    fn name(&self) -> String {
        format!(
            "e2e-{}",
            self.dir
                .path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("mls-gw-e2e-")
        )
    }

    /// SIGKILL (no chance to flush anything) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (what Cloud Run sends), then waits up to `timeout` for the process to exit.
    /// Returns its exit status, or `None` if it was still running (it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "could not send SIGTERM to {pid}"
        );
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// SIGKILL, then start again on the same data directory (new port).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub async fn connect(&self) -> Ws {
        Ws::connect(&self.ws_url()).await
    }

    /// A connection that has already authenticated (NIP-42) as `k`.
    pub async fn connect_authed(&self, k: &Keypair) -> Ws {
        let mut ws = self.connect().await;
        let (ok, msg) = ws.auth(k, &self.ws_url()).await;
        assert!(ok, "AUTH refused: {msg}");
        ws
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.port, path, &[]).await
    }

    pub async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_get(self.port, path, headers).await
    }

    /// Runs the binary with `args` plus `-c <this relay's config>`, stdin from `input`.
    pub fn cli(&self, args: &[&str], input: Option<&[u8]>) -> CliOutput {
        let cfg = self.config_path();
        let mut all: Vec<&str> = args.to_vec();
        all.push("-c");
        all.push(cfg.to_str().unwrap());
        run_cli(&all, input, &[])
    }
}

fn looks_like_port_in_use(log: &str) -> bool {
    let l = log.to_ascii_lowercase();
    l.contains("address already in use") || l.contains("addrinuse") || l.contains("os error 98")
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs `mls-gateway args…` to completion (killed after 120 s), with a clean environment for
/// the relay's variables plus `env`.
pub fn run_cli(args: &[&str], input: Option<&[u8]>, env: &[(&str, &str)]) -> CliOutput {
    run_cli_timeout(args, input, env, Duration::from_secs(120))
}

pub fn run_cli_timeout(
    args: &[&str],
    input: Option<&[u8]>,
    env: &[(&str, &str)],
    timeout: Duration,
) -> CliOutput {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let in_path = dir.path().join("stdin");
    std::fs::write(&in_path, input.unwrap_or(b"")).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir.path())
        .stdin(std::fs::File::open(&in_path).unwrap())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for k in RELAY_ENV {
        cmd.env_remove(k);
    }
    // A relay's config on Firestore (MLS_TEST_STORE=firestore) names the emulator by env.
    if firestore::e2e_on_firestore() {
        cmd.env(
            "FIRESTORE_EMULATOR_HOST",
            firestore::emulator_host().expect("FIRESTORE_EMULATOR_HOST"),
        );
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn mls-gateway");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = CliOutput {
        code: status.and_then(|s| s.code()),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(
        status.is_some(),
        "mls-gateway {args:?} did not exit within {timeout:?}: {out:?}"
    );
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

pub async fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_get_timeout(port, path, headers, RECV_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A hand-written HTTP/1.1 GET with `Connection: close` (keeps the test build free of an HTTP
/// client crate).
pub async fn http_get_timeout(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        parse_http_response(&buf)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("timed out after {timeout:?}"))?
}

fn parse_http_response(buf: &[u8]) -> Result<HttpResponse, String> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no header terminator")?;
    let head = std::str::from_utf8(&buf[..split]).map_err(|e| e.to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw = &buf[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        decode_chunked(raw)?
    } else {
        raw.to_vec()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn decode_chunked(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk header")?;
        let size_text = std::str::from_utf8(&raw[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size..];
        raw = raw.strip_prefix(b"\r\n").unwrap_or(raw);
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket client
// ---------------------------------------------------------------------------------------------

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw NIP-01 client. AUTH challenges the relay sends are recorded in `challenge` (and not
/// returned by `recv`); messages skipped while waiting for a specific answer are kept and
/// returned by later `recv` calls, so nothing is lost.
pub struct Ws {
    stream: Stream,
    pending: VecDeque<Value>,
    pub challenge: Option<String>,
    /// Every AUTH challenge received, in order.
    pub challenges: Vec<String>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timeout"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws::wrap(stream)
    }

    /// Connects sending a specific `Host` header (to test the NIP-42 relay tag rule).
    pub async fn connect_with_host(url: &str, host: &str) -> Ws {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("host", host.parse().unwrap());
        let (stream, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timeout"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws::wrap(stream)
    }

    /// Connects sending extra handshake headers (`Host`, `X-Forwarded-For`, …).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Ws {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
            req.headers_mut().insert(name, v.parse().unwrap());
        }
        let (stream, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timeout"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws::wrap(stream)
    }

    fn wrap(stream: Stream) -> Ws {
        Ws {
            stream,
            pending: VecDeque::new(),
            challenge: None,
            challenges: Vec::new(),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("websocket send");
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.stream
            .send(Message::Binary(data.to_vec().into()))
            .await
            .expect("websocket send");
    }

    /// Next frame from the socket as JSON (AUTH recorded and skipped). `Err` on timeout,
    /// `Ok(None)` when the connection closed.
    async fn read_frame(&mut self, timeout: Duration) -> Result<Option<Value>, ()> {
        self.read_frame_inner(timeout, false).await
    }

    /// Like `read_frame`, but `stop_on_auth` returns `Ok(Some(Null))` right after recording an
    /// AUTH challenge.
    async fn read_frame_inner(
        &mut self,
        timeout: Duration,
        stop_on_auth: bool,
    ) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| ())?;
            match next {
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("relay sent non-JSON text ({e}): {t}"));
                    if v[0] == "AUTH" {
                        let c = v[1]
                            .as_str()
                            .unwrap_or_else(|| panic!("AUTH without a string challenge: {v}"))
                            .to_owned();
                        self.challenge = Some(c.clone());
                        self.challenges.push(c);
                        if stop_on_auth {
                            return Ok(Some(Value::Null));
                        }
                        continue;
                    }
                    return Ok(Some(v));
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(b))) => {
                    panic!("relay sent a binary frame ({} bytes)", b.len())
                }
                Some(Ok(_)) => continue, // ping/pong/raw frames
            }
        }
    }

    /// The next message, or `None` if nothing arrives within `timeout`. Panics if the
    /// connection closed.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        match self.read_frame(timeout).await {
            Ok(Some(v)) => Some(v),
            Ok(None) => panic!("relay closed the connection"),
            Err(()) => None,
        }
    }

    /// The next message, or `None` once the relay has closed the connection. Panics if
    /// nothing at all happens within `timeout`.
    pub async fn recv_until_closed(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        match self.read_frame(timeout).await {
            Ok(v) => v,
            Err(()) => panic!("connection neither sent anything nor closed within {timeout:?}"),
        }
    }

    /// The next message (panics after [`RECV_TIMEOUT`]).
    #[track_caller]
    pub fn recv(&mut self) -> impl std::future::Future<Output = Value> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            self.recv_timeout(RECV_TIMEOUT).await.unwrap_or_else(|| {
                panic!("no message from the relay within {RECV_TIMEOUT:?} (at {caller})")
            })
        }
    }

    /// Waits `ms` and asserts that no message arrived.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Some(v) = self.recv_timeout(Duration::from_millis(ms)).await {
            panic!("expected no message, got {v}");
        }
    }

    /// Waits until a message matching `pred` arrives; others are kept for later `recv`.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return self.pending.remove(pos).unwrap();
        }
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(Some(v)) if pred(&v) => return v,
                Ok(Some(v)) => self.pending.push_back(v),
                Ok(None) => panic!(
                    "relay closed the connection while waiting for {what}; pending: {:?}",
                    self.pending
                ),
                Err(()) => panic!(
                    "no {what} within {RECV_TIMEOUT:?}; other messages: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Whether the relay has closed the connection (waits up to `timeout` for it).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        loop {
            match self.read_frame(timeout).await {
                Ok(None) => return true,
                Err(()) => return false,
                Ok(Some(v)) => self.pending.push_back(v),
            }
        }
    }

    /// Waits for an AUTH challenge (the relay sends one on connect).
    pub async fn challenge(&mut self) -> String {
        if let Some(c) = &self.challenge {
            return c.clone();
        }
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        while self.challenge.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame_inner(left, true).await {
                Ok(Some(Value::Null)) => {}
                Ok(Some(v)) => self.pending.push_back(v),
                Ok(None) => panic!("connection closed before an AUTH challenge"),
                Err(()) => panic!("no AUTH challenge within {RECV_TIMEOUT:?}"),
            }
        }
        self.challenge.clone().unwrap()
    }

    /// Sends `["EVENT", e]` and returns the OK's `(accepted, message)`.
    pub async fn publish(&mut self, e: &Event) -> (bool, String) {
        self.send(&json!(["EVENT", e])).await;
        self.wait_ok(&id_hex(e)).await
    }

    /// Publishes and asserts `OK true`.
    #[track_caller]
    pub fn publish_ok<'a>(
        &'a mut self,
        e: &'a Event,
    ) -> impl std::future::Future<Output = String> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let (ok, msg) = self.publish(e).await;
            assert!(ok, "event kind {} refused: {msg:?} (at {caller})", e.kind);
            msg
        }
    }

    /// Waits for the OK for `id` and returns `(accepted, message)`.
    pub async fn wait_ok(&mut self, id: &str) -> (bool, String) {
        let v = self
            .wait_for(&format!("OK for {id}"), |v| v[0] == "OK" && v[1] == id)
            .await;
        assert_eq!(
            v.as_array().unwrap().len(),
            4,
            "OK must have 4 elements: {v}"
        );
        let ok = v[2]
            .as_bool()
            .unwrap_or_else(|| panic!("OK status not a bool: {v}"));
        let msg = v[3]
            .as_str()
            .unwrap_or_else(|| panic!("OK message not a string: {v}"))
            .to_owned();
        (ok, msg)
    }

    /// Sends AUTH for the current challenge naming `relay_url`; returns the OK.
    pub async fn auth(&mut self, k: &Keypair, relay_url: &str) -> (bool, String) {
        let c = self.challenge().await;
        let e = auth_event(k, &c, relay_url);
        self.send_auth(&e).await
    }

    pub async fn send_auth(&mut self, e: &Event) -> (bool, String) {
        self.send(&json!(["AUTH", e])).await;
        self.wait_ok(&id_hex(e)).await
    }

    /// Sends `["REQ", sub, filters…]`.
    pub async fn send_req(&mut self, sub: &str, filters: &[Value]) {
        let mut msg = vec![json!("REQ"), json!(sub)];
        msg.extend(filters.iter().cloned());
        self.send(&Value::Array(msg)).await;
    }

    /// Collects the stored events for `sub` until its EOSE (`Ok`) or a CLOSED (`Err(message)`).
    /// Messages for other subscriptions are kept for later.
    pub async fn collect(&mut self, sub: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            let v = self
                .wait_for(&format!("EVENT/EOSE/CLOSED for {sub:?}"), |v| {
                    (v[0] == "EVENT" || v[0] == "EOSE" || v[0] == "CLOSED") && v[1] == sub
                })
                .await;
            match v[0].as_str().unwrap() {
                "EVENT" => out.push(v[2].clone()),
                "EOSE" => return Ok(out),
                _ => return Err(v[2].as_str().unwrap_or_default().to_owned()),
            }
        }
    }

    /// REQ then collect until EOSE; the subscription stays open. Panics on CLOSED.
    pub async fn req(&mut self, sub: &str, filters: &[Value]) -> Vec<Value> {
        self.send_req(sub, filters).await;
        match self.collect(sub).await {
            Ok(v) => v,
            Err(m) => panic!("REQ {sub} {filters:?} was CLOSED: {m:?}"),
        }
    }

    /// REQ, collect until EOSE, then CLOSE; returns the events.
    pub async fn query(&mut self, filters: &[Value]) -> Vec<Value> {
        let sub = format!("q{}", rand_suffix());
        let out = self.req(&sub, filters).await;
        self.send(&json!(["CLOSE", sub])).await;
        out
    }

    /// The ids of a query's results, in order.
    pub async fn query_ids(&mut self, filters: &[Value]) -> Vec<String> {
        self.query(filters)
            .await
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// REQ expected to be refused: returns the CLOSED message.
    pub async fn req_closed(&mut self, sub: &str, filters: &[Value]) -> String {
        self.send_req(sub, filters).await;
        match self.collect(sub).await {
            Ok(evs) => {
                panic!("REQ {sub} {filters:?} was answered with EOSE ({evs:?}), expected CLOSED")
            }
            Err(m) => m,
        }
    }

    /// `["COUNT", sub, filters…]` → `Ok(n)` or `Err(CLOSED message)`.
    pub async fn count(&mut self, sub: &str, filters: &[Value]) -> Result<u64, String> {
        let mut msg = vec![json!("COUNT"), json!(sub)];
        msg.extend(filters.iter().cloned());
        self.send(&Value::Array(msg)).await;
        let v = self
            .wait_for(&format!("COUNT/CLOSED for {sub:?}"), |v| {
                (v[0] == "COUNT" || v[0] == "CLOSED") && v[1] == sub
            })
            .await;
        if v[0] == "CLOSED" {
            return Err(v[2].as_str().unwrap_or_default().to_owned());
        }
        Ok(v[2]["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("COUNT without a numeric count: {v}")))
    }

    /// Waits for the next live `["EVENT", sub, …]` and returns the event.
    pub async fn next_event(&mut self, sub: &str) -> Value {
        let v = self
            .wait_for(&format!("live EVENT for {sub:?}"), |v| {
                v[0] == "EVENT" && v[1] == sub
            })
            .await;
        v[2].clone()
    }

    /// Waits for a NOTICE and returns its message.
    pub async fn notice(&mut self) -> String {
        let v = self.wait_for("NOTICE", |v| v[0] == "NOTICE").await;
        v[1].as_str()
            .unwrap_or_else(|| panic!("NOTICE without a string: {v}"))
            .to_owned()
    }

    pub async fn close_ws(mut self) {
        let _ = self.stream.close(None).await;
    }

    pub fn into_inner(self) -> Stream {
        self.stream
    }
}

pub fn rand_suffix() -> String {
    use secp256k1::rand::Rng;
    format!("{:08x}", secp256k1::rand::thread_rng().gen::<u32>())
}

/// Parses a served event back into an [`Event`] (and checks it still verifies).
#[track_caller]
pub fn served_event(v: &Value) -> Event {
    let e: Event = serde_json::from_value(v.clone())
        .unwrap_or_else(|err| panic!("served event does not parse ({err}): {v}"));
    assert_eq!(e.verify(), Ok(()), "served event does not verify: {v}");
    e
}

/// Writes `lines` of JSON to a file in `dir`.
pub fn write_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}
