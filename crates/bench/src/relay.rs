//! The relay under test: either one the user runs (`--url`) or one this tool starts
//! (`target/release/mls-gateway relay -c <temp config>` on a free loopback port, with its own
//! temporary data directory), plus what we read about its process from `/proc`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Raises this process's open-file limit to its hard limit (children inherit it). Returns the
/// soft limit in force afterwards.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    }
}

/// Resident set size of `pid`, KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of `pid`, KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system) `pid` has used so far, seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / if hz > 0.0 { hz } else { 100.0 })
}

/// CPU time the whole machine has been busy so far (all cores, every process), seconds.
pub fn machine_busy_secs() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(busy / if hz > 0.0 { hz } else { 100.0 })
}

/// CPU time this process (the generator) has used so far, seconds.
pub fn own_cpu_secs() -> f64 {
    cpu_secs(std::process::id()).unwrap_or(f64::NAN)
}

/// How the spawned relay is configured.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    pub binary: PathBuf,
    /// NIP-42 required for everything (`[auth] enabled`).
    pub auth: bool,
    /// Tokio worker threads (`[server] workers`); None = one per CPU.
    pub workers: Option<usize>,
    /// `[limitation] outbox_capacity`.
    pub outbox: usize,
    /// A pre-filled data directory to use instead of an empty one.
    pub data_dir: Option<PathBuf>,
    /// Extra TOML appended to the generated config (e.g. admin keys).
    pub extra_toml: String,
}

/// A relay process this tool started. Killed (SIGTERM, then SIGKILL) when dropped.
pub struct SpawnedRelay {
    child: Child,
    pub url: String,
    pub pid: u32,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where the relay binary is expected: next to this executable (both built into
/// `target/release`), else `target/release/mls-gateway` from the current directory.
pub fn default_binary() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let cand = dir.join("mls-gateway");
            if cand.exists() {
                return cand;
            }
        }
    }
    PathBuf::from("target/release/mls-gateway")
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl SpawnedRelay {
    pub fn start(opts: &SpawnOptions) -> Result<SpawnedRelay, String> {
        if !opts.binary.exists() {
            return Err(format!(
                "relay binary {} not found: build it with `cargo build --release --bin mls-gateway` \
                 or pass --relay-bin",
                opts.binary.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("mls-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let data = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let port = free_port().map_err(|e| format!("free port: {e}"))?;
        let url = format!("ws://127.0.0.1:{port}");
        let workers = opts
            .workers
            .map(|w| format!("workers = {w}\n"))
            .unwrap_or_default();
        // Rate limits off: the scenarios measure the relay's capacity, not its throttles (keys
        // this build does not know are only warned about).
        let config = format!(
            r#"[server]
host = "127.0.0.1"
port = {port}
relay_url = "{url}"
{workers}
[data]
path = {data:?}

[limitation]
outbox_capacity = {outbox}
max_subscriptions = 64
max_connections_per_ip = 0
max_reqs_per_minute = 0

[auth]
enabled = {auth}
max_auths_per_minute_per_ip = 0
max_auths_per_minute_per_connection = 0

[extensions.mls_gateway]
storage_backend = "embedded"
{extra}

[extensions.mls_gateway.rate_limits]
max_events_per_minute = 0
max_keypackages_per_hour = 0
max_group_messages_per_minute = 0
"#,
            data = data.display().to_string(),
            outbox = opts.outbox,
            auth = opts.auth,
            extra = opts.extra_toml,
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("write config: {e}"))?;
        let log = dir.path().join("relay.log");
        let log_file = std::fs::File::create(&log).map_err(|e| format!("log file: {e}"))?;
        let child = Command::new(&opts.binary)
            .arg("relay")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "warn")
            .env_remove("PORT")
            .env_remove("NOSTR_AUTH_REQUIRED")
            .env_remove("LOG_LEVEL")
            .env_remove("REDIS_URL")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("start {}: {e}", opts.binary.display()))?;
        let pid = child.id();
        let mut relay = SpawnedRelay {
            child,
            url,
            pid,
            log,
            _dir: dir,
        };
        relay.wait_healthy(port)?;
        Ok(relay)
    }

    /// Waits for `/health`. Generous: a build that upgrades a pre-filled store's layout at
    /// open (1M events: about a minute) only listens afterwards.
    fn wait_healthy(&mut self, port: u16) -> Result<(), String> {
        const START_UP: Duration = Duration::from_secs(300);
        let deadline = Instant::now() + START_UP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "relay exited ({status}) during start-up:\n{}",
                    self.log_tail()
                ));
            }
            if health_ok(port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "relay did not answer /health within {START_UP:?}:\n{}",
            self.log_tail()
        ))
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn health_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

impl Drop for SpawnedRelay {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Total size of the files under `path`, bytes.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
