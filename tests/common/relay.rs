//! The relay process: the real `mls-gateway` binary on a free loopback port, with its own
//! temporary data directory and a config rendered from the harness's base plus each test's
//! overrides; killed when its handle is dropped.

use super::{firestore, http_get, http_get_timeout, pg, run_cli, CliOutput, HttpResponse, Ws};
use secp256k1::Keypair;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mls-gateway");

/// How long the relay may take to answer `/health` after spawning.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Environment variables the relay reads; removed from the child's environment so the host's
/// settings (CI, Cloud Run-like shells) cannot change what a test runs against.
pub const RELAY_ENV: &[&str] = &[
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

    /// TOML merged over the config from the next start on (as [`RelayBuilder::config`]).
    pub fn add_config(&mut self, toml_text: &str) {
        self.overrides.push(toml_text.to_owned());
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
