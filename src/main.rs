//! `mls-gateway`: the relay binary and its operator commands.

use clap::{Parser, Subcommand};
use mls_relay::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mls-gateway",
    version,
    about = "Nostr relay and MLS delivery service"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay (the default when no command is given).
    Relay(Common),
    /// Load and validate a config file, print the effective config with secrets masked.
    CheckConfig(Common),
    /// Write a backup to stdout: every event and all gateway state, as versioned JSON lines.
    Export(Common),
    /// Restore a backup from stdin into an empty store, or store plain event JSON lines (as
    /// other relays export them) through the relay's checks.
    Import(Common),
}

#[derive(clap::Args, Default)]
struct Common {
    /// Config file (TOML). Without one: built-in defaults (embedded store under ./data).
    #[arg(short, long, env = "MLS_GATEWAY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: json (default, for Cloud Logging) or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    log_format: String,
}

fn load(common: &Common) -> Result<Config, String> {
    let (mut config, warnings) =
        Config::load(common.config.as_deref()).map_err(|e| e.to_string())?;
    for w in &warnings {
        tracing::warn!("{w}");
        eprintln!("warning: {w}");
    }
    config
        .apply_env(&|name| std::env::var(name).ok())
        .map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, String> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(w) = workers.filter(|w| *w > 0) {
        b.worker_threads(w);
    }
    b.enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Relay(Common::default()));
    let result = match command {
        Command::Relay(common) => {
            mls_relay::logging::init(common.log_format != "text");
            load(&common)
                .and_then(|config| runtime(config.server.workers)?.block_on(mls_relay::run(config)))
        }
        Command::CheckConfig(common) => load(&common).map(|config| {
            print!("{}", config.to_masked_toml());
        }),
        Command::Export(common) => load(&common).and_then(|config| {
            let s = runtime(Some(1))?.block_on(async {
                let mut out = std::io::BufWriter::new(std::io::stdout());
                mls_relay::tools::export(&config, &mut out).await
            })?;
            eprintln!(
                "exported {} events, {} state entries, {} tombstones",
                s.events, s.state, s.tombstones
            );
            Ok(())
        }),
        Command::Import(common) => load(&common).and_then(|config| {
            let summary = runtime(Some(1))?.block_on(async {
                let mut input = std::io::stdin().lock();
                let mut report = std::io::stderr();
                // A file on stdin has a size, so progress can say how much is left.
                let input_bytes = std::fs::metadata("/proc/self/fd/0")
                    .ok()
                    .filter(|m| m.is_file())
                    .map(|m| m.len());
                mls_relay::tools::import(&config, &mut input, input_bytes, &mut report).await
            })?;
            eprintln!(
                "imported {} events ({} duplicates, {} rejected)",
                summary.accepted, summary.duplicate, summary.rejected
            );
            if !summary.restored {
                return Ok(());
            }
            eprintln!(
                "restored {} state entries, {} tombstones",
                summary.state, summary.tombstones
            );
            // A backup that did not come back whole did not give back the same relay.
            match summary.rejected {
                0 => Ok(()),
                n => Err(format!(
                    "import: {n} line(s) of the backup were refused (listed above)"
                )),
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
