//! Operator tools behind the CLI: export and import of events as JSON lines.

use crate::app;
use crate::config::Config;
use mls_proto::{unix_now, Event, KindClass};
use mls_store::{Publisher, WriteOutcome};
use std::io::{BufRead, Write};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
}

/// Writes every stored event, oldest first, one JSON object per line.
pub async fn export(config: &Config, out: &mut (dyn Write + Send)) -> Result<u64, String> {
    let gateway = crate::gateway(config)?;
    let store = app::open_store(config, gateway).await?;
    let mut n = 0u64;
    let mut failed = None;
    store
        .export(&mut |s| {
            if failed.is_none() {
                match writeln!(out, "{}", s.json) {
                    Ok(()) => n += 1,
                    Err(e) => failed = Some(e.to_string()),
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
    store.close().await;
    if let Err(e) = out.flush() {
        failed.get_or_insert(e.to_string());
    }
    match failed {
        Some(e) => Err(format!("export: write failed: {e}")),
        None => Ok(n),
    }
}

/// Reads JSON lines and stores each event through the same checks as the socket path, with
/// the operator standing in for the publishing connection (authenticated as each event's
/// pubkey, and `Publisher::operator`: checks that belonged to the original connection, such as
/// group membership of a 445's sender, are not re-run, and gift wraps grant no membership).
/// Refusals are reported on `report` and counted; they do not stop the import.
pub async fn import(
    config: &Config,
    input: &mut dyn BufRead,
    report: &mut dyn Write,
) -> Result<ImportSummary, String> {
    let gateway = crate::gateway(config)?;
    let store = app::open_store(config, gateway.clone()).await?;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let relay = app::App::new(config.clone(), store.clone(), gateway, rx);
    let mut summary = ImportSummary::default();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("import: read failed at line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut refuse = |summary: &mut ImportSummary, why: &str| {
            summary.rejected += 1;
            let _ = writeln!(report, "line {}: {why}", n + 1);
        };
        let ev: Event = match serde_json::from_str(&line) {
            Ok(ev) => ev,
            Err(e) => {
                refuse(&mut summary, &format!("invalid: malformed event: {e}"));
                continue;
            }
        };
        let authed = vec![ev.pubkey];
        if let Err(why) = crate::ingest::check(&relay, &ev, &authed, unix_now()) {
            refuse(&mut summary, &why);
            continue;
        }
        if ev.class() == KindClass::Ephemeral {
            refuse(&mut summary, "invalid: ephemeral events are not stored");
            continue;
        }
        let publisher = Publisher {
            authed,
            operator: true,
        };
        match store.write(ev, publisher).await {
            Ok(WriteOutcome::Accepted) => summary.accepted += 1,
            Ok(WriteOutcome::Duplicate) => summary.duplicate += 1,
            Ok(WriteOutcome::Rejected(why)) => refuse(&mut summary, &why),
            Err(e) => return Err(format!("import: store failed at line {}: {e}", n + 1)),
        }
    }
    store.close().await;
    Ok(summary)
}
