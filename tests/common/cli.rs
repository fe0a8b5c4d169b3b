//! The binary's command-line tools (`export`, `import`, `check-config`, …), run to completion.

use super::{firestore, BIN, RELAY_ENV};
use std::process::Command;
use std::time::{Duration, Instant};

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
