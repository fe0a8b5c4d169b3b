//! Operator tools behind the CLI: backups (`export`) and restores or imports (`import`).
//!
//! A backup is JSON lines (documented in `docs/OPERATIONS.md`, "Backups"): a header
//! `{"format":"mls-gateway-export","version":1}`, then one typed line per stored event (with its
//! receipt and expiry times), per gateway state entry and per tombstone, in the store's
//! deterministic backup order. It carries everything the relay holds, backend-independently, so
//! a restore gives back the same relay (gates, rosters, claims, deletions) on any backend.
//!
//! `import` reads such a backup and restores it verbatim into an empty store, or, without the
//! header, plain event JSON lines as other relays export them (one event object per line),
//! replayed through the relay's checks with the operator standing in for the publisher.

use crate::app;
use crate::config::Config;
use mls_proto::{unix_now, Event, Hex32, KindClass};
use mls_store::{BackupItem, EventStore, Publisher, StoredEvent, Tombstone, WriteOutcome};
use serde::Deserialize;
use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The `format` of the header line.
pub const EXPORT_FORMAT: &str = "mls-gateway-export";
/// The `version` of the header line this build writes and reads.
pub const EXPORT_VERSION: u64 = 1;

/// Most items restored in one store transaction, and most bytes of lines they came from.
const RESTORE_BATCH: usize = 1000;
const RESTORE_BATCH_BYTES: usize = 16 << 20;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub events: u64,
    pub state: u64,
    pub tombstones: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    /// Events stored.
    pub accepted: u64,
    pub duplicate: u64,
    /// Lines refused (reported with their line number).
    pub rejected: u64,
    /// The input was a backup (restored verbatim), not plain event lines.
    pub restored: bool,
    /// Backups only: state entries and tombstones restored.
    pub state: u64,
    pub tombstones: u64,
}

/// Writes a backup of everything the store holds (see the module doc).
pub async fn export(
    config: &Config,
    out: &mut (dyn Write + Send),
) -> Result<ExportSummary, String> {
    let gateway = crate::gateway(config)?;
    let store = app::open_store(config, gateway).await?;
    let mut summary = ExportSummary::default();
    let mut failed = writeln!(
        out,
        r#"{{"format":"{EXPORT_FORMAT}","version":{EXPORT_VERSION}}}"#
    )
    .err()
    .map(|e| e.to_string());
    let result = store
        .backup(&mut |item| {
            if failed.is_some() {
                return false;
            }
            match writeln!(out, "{}", backup_line(item)) {
                Ok(()) => {
                    match item {
                        BackupItem::Event(_) => summary.events += 1,
                        BackupItem::State { .. } => summary.state += 1,
                        BackupItem::Tombstone(_) => summary.tombstones += 1,
                    }
                    true
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    false
                }
            }
        })
        .await;
    store.close().await;
    result.map_err(|e| format!("export: {e}"))?;
    if let Err(e) = out.flush() {
        failed.get_or_insert(e.to_string());
    }
    match failed {
        Some(e) => Err(format!("export: write failed: {e}")),
        None => Ok(summary),
    }
}

/// One backup line. Written by hand (not through a map) so that field order, and thus the
/// bytes of a backup, never depend on a serialiser's choices.
fn backup_line(item: &BackupItem) -> String {
    let string = |s: &str| serde_json::Value::from(s).to_string();
    // State keys and values are bytes: a JSON string when they are UTF-8 (always, for the
    // gateway's own layout), else hex under `key_hex` / `value_hex`.
    let bytes = |name: &str, b: &[u8]| match std::str::from_utf8(b) {
        Ok(s) => format!(r#""{name}":{}"#, string(s)),
        Err(_) => format!(r#""{name}_hex":"{}""#, hex::encode(b)),
    };
    match item {
        BackupItem::Event(s) => format!(
            r#"{{"type":"event","received_at":{},"expires_at":{},"event":{}}}"#,
            s.received_at,
            s.expires_at
                .map_or_else(|| "null".to_string(), |e| e.to_string()),
            s.json
        ),
        BackupItem::State { key, value } => format!(
            r#"{{"type":"state",{},{}}}"#,
            bytes("key", key),
            bytes("value", value)
        ),
        BackupItem::Tombstone(Tombstone::Id { id, deleter }) => {
            format!(r#"{{"type":"tombstone","id":"{id}","deleter":"{deleter}"}}"#)
        }
        BackupItem::Tombstone(Tombstone::Address {
            kind,
            pubkey,
            d,
            until,
        }) => format!(
            r#"{{"type":"tombstone","address":{},"until":{until}}}"#,
            string(&format!("{kind}:{pubkey}:{d}"))
        ),
    }
}

/// A typed line of a backup.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line {
    Event {
        received_at: u64,
        expires_at: Option<u64>,
        event: Event,
    },
    State {
        key: Option<String>,
        key_hex: Option<String>,
        value: Option<String>,
        value_hex: Option<String>,
    },
    Tombstone {
        id: Option<Hex32>,
        deleter: Option<Hex32>,
        address: Option<String>,
        until: Option<u64>,
    },
}

fn bytes_field(name: &str, text: Option<String>, hex: Option<String>) -> Result<Vec<u8>, String> {
    match (text, hex) {
        (Some(t), None) => Ok(t.into_bytes()),
        (None, Some(h)) => hex::decode(h).map_err(|e| format!("{name}_hex: {e}")),
        _ => Err(format!(
            "a state line has exactly one of {name} and {name}_hex"
        )),
    }
}

/// A backup line as the item to restore; `Err` is the refusal (without prefix).
fn parse_line(line: &str) -> Result<BackupItem, String> {
    let parsed: Line = serde_json::from_str(line).map_err(|e| format!("malformed line: {e}"))?;
    Ok(match parsed {
        Line::Event {
            received_at,
            expires_at,
            event,
        } => {
            // A backup is trusted for what the relay decided, never for what was signed.
            event.verify().map_err(|e| e.to_string())?;
            BackupItem::Event(StoredEvent {
                json: Arc::from(event.to_json()),
                event,
                received_at,
                expires_at,
            })
        }
        Line::State {
            key,
            key_hex,
            value,
            value_hex,
        } => BackupItem::State {
            key: bytes_field("key", key, key_hex)?,
            value: bytes_field("value", value, value_hex)?,
        },
        Line::Tombstone {
            id: Some(id),
            deleter: Some(deleter),
            address: None,
            until: None,
        } => BackupItem::Tombstone(Tombstone::Id { id, deleter }),
        Line::Tombstone {
            id: None,
            deleter: None,
            address: Some(address),
            until: Some(until),
        } => {
            let mut parts = address.splitn(3, ':');
            let kind = parts.next().and_then(|k| k.parse::<u16>().ok());
            let pubkey = parts.next().and_then(Hex32::from_hex);
            let d = parts.next().unwrap_or("").to_string();
            match (kind, pubkey) {
                (Some(kind), Some(pubkey))
                    if matches!(
                        KindClass::of(kind),
                        KindClass::Replaceable | KindClass::Addressable
                    ) =>
                {
                    BackupItem::Tombstone(Tombstone::Address {
                        kind,
                        pubkey,
                        d,
                        until,
                    })
                }
                _ => {
                    return Err(format!(
                        "tombstone address {address:?} is not kind:pubkey:d"
                    ))
                }
            }
        }
        Line::Tombstone { .. } => {
            return Err("a tombstone has either id and deleter, or address and until".into())
        }
    })
}

/// What the first line says the input is.
#[derive(Debug)]
enum Input {
    Backup,
    Events,
}

/// A header names a known format and version; anything else with a `format` is refused
/// rather than guessed at. A line without `format` is the first event of a plain export.
fn classify(first: &str) -> Result<Input, String> {
    let Ok(serde_json::Value::Object(head)) = serde_json::from_str::<serde_json::Value>(first)
    else {
        return Ok(Input::Events);
    };
    let Some(format) = head.get("format") else {
        return Ok(Input::Events);
    };
    if format.as_str() != Some(EXPORT_FORMAT) {
        return Err(format!(
            "import: unknown export format {format} (this build reads \"{EXPORT_FORMAT}\" version {EXPORT_VERSION})"
        ));
    }
    match head.get("version") {
        Some(v) if v.as_u64() == Some(EXPORT_VERSION) => Ok(Input::Backup),
        Some(v) => Err(format!(
            "import: {EXPORT_FORMAT} version {v} is not supported (this build reads version {EXPORT_VERSION})"
        )),
        None => Err(format!(
            "import: the {EXPORT_FORMAT} header has no version (this build reads version {EXPORT_VERSION})"
        )),
    }
}

/// Reads a backup (restored verbatim into an empty store) or plain event JSON lines (see
/// `import_events`). Refused lines are reported on `report` and counted; they do not stop
/// the import.
///
/// `input_bytes` (the input's size, when it is a file) lets the progress line say how much
/// is left.
pub async fn import(
    config: &Config,
    input: &mut dyn BufRead,
    input_bytes: Option<u64>,
    report: &mut dyn Write,
) -> Result<ImportSummary, String> {
    let progress = Progress::new(input_bytes);
    let mut lines = input
        .lines()
        .inspect(|line| progress.read(line.as_ref().map_or(0, |l| l.len() + 1)))
        .enumerate();
    let mut first = None;
    for (n, line) in lines.by_ref() {
        let line = line.map_err(|e| format!("import: read failed at line {}: {e}", n + 1))?;
        if !line.trim().is_empty() {
            first = Some((n, line));
            break;
        }
    }
    let Some((n, first)) = first else {
        return Ok(ImportSummary::default());
    };
    let kind = classify(&first)?;
    let gateway = crate::gateway(config)?;
    let store = app::open_store(config, gateway).await?;
    let result = match kind {
        Input::Backup => restore(&*store, &mut lines, report, &progress).await,
        Input::Events => {
            let all = std::iter::once((n, Ok(first))).chain(lines);
            import_events(config, &*store, all, report).await
        }
    };
    store.close().await;
    progress.finish();
    result
}

/// The progress line on stderr of a long import (every few seconds; nothing for a short
/// one): lines read, rate, and with the input's size, how much is left.
struct Progress {
    started: Instant,
    last: Cell<Instant>,
    lines: Cell<u64>,
    bytes: Cell<u64>,
    total_bytes: Option<u64>,
    printed: Cell<bool>,
}

const PROGRESS_EVERY: Duration = Duration::from_secs(2);

impl Progress {
    fn new(total_bytes: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress {
            started: now,
            last: Cell::new(now),
            lines: Cell::new(0),
            bytes: Cell::new(0),
            total_bytes: total_bytes.filter(|&b| b > 0),
            printed: Cell::new(false),
        }
    }

    fn read(&self, bytes: usize) {
        self.lines.set(self.lines.get() + 1);
        self.bytes.set(self.bytes.get() + bytes as u64);
        if self.last.get().elapsed() >= PROGRESS_EVERY {
            self.last.set(Instant::now());
            self.printed.set(true);
            eprintln!("{}", self.line());
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let (lines, bytes) = (self.lines.get(), self.bytes.get());
        let rate = lines as f64 / secs;
        let mut line = format!("import: {lines} lines in {secs:.0} s, {rate:.0} lines/s");
        if let Some(total) = self.total_bytes {
            let done = (bytes as f64 / total as f64).min(1.0);
            let left = if done > 0.0 {
                secs * (1.0 - done) / done
            } else {
                0.0
            };
            line.push_str(&format!(
                ", {:.0}% of {} MiB, about {left:.0} s left",
                done * 100.0,
                total >> 20
            ));
        }
        line
    }

    /// A last line, if any was printed: the import's whole rate.
    fn finish(&self) {
        if self.printed.get() {
            eprintln!("{} (done)", self.line());
        }
    }
}

type Lines<'a> = dyn Iterator<Item = (usize, std::io::Result<String>)> + 'a;

/// Restores a backup's lines (after the header) verbatim: no rules run, so nothing is
/// re-derived (a roster `seq` already stored, a gift wrap's membership) and nothing is refused
/// for what the relay already accepted; signatures and ids are still checked. Only who may
/// read each event (its audience, an index) is worked out again, once the state is back.
async fn restore(
    store: &dyn EventStore,
    lines: &mut Lines<'_>,
    report: &mut dyn Write,
    progress: &Progress,
) -> Result<ImportSummary, String> {
    // Restoring over existing data would merge two relays' gates and rosters.
    let mut holds_data = false;
    store
        .backup(&mut |_| {
            holds_data = true;
            false
        })
        .await
        .map_err(|e| format!("import: {e}"))?;
    if holds_data {
        return Err(
            "import: the store already holds data; a backup is restored into an \
                    empty store (a new data directory or database)"
                .into(),
        );
    }
    let mut summary = ImportSummary {
        restored: true,
        ..ImportSummary::default()
    };
    let mut batch: Vec<(usize, BackupItem)> = Vec::new();
    let mut batch_bytes = 0;
    loop {
        let next = lines.next();
        let done = next.is_none();
        if let Some((n, line)) = next {
            let line = line.map_err(|e| format!("import: read failed at line {}: {e}", n + 1))?;
            if line.trim().is_empty() {
                continue;
            }
            match parse_line(&line) {
                Ok(item) => {
                    batch_bytes += line.len();
                    batch.push((n, item));
                }
                Err(why) => {
                    summary.rejected += 1;
                    let _ = writeln!(report, "line {}: invalid: {why}", n + 1);
                }
            }
            if batch.len() < RESTORE_BATCH && batch_bytes < RESTORE_BATCH_BYTES {
                continue;
            }
        }
        if !batch.is_empty() {
            let (numbers, items): (Vec<usize>, Vec<BackupItem>) = batch.drain(..).unzip();
            let kinds: Vec<u8> = items.iter().map(item_kind).collect();
            let outcomes = store.restore(items).await.map_err(|e| {
                format!(
                    "import: store failed at lines {}..{}: {e}",
                    numbers[0] + 1,
                    n_last(&numbers)
                )
            })?;
            for ((n, kind), outcome) in numbers.iter().zip(kinds).zip(outcomes) {
                match (outcome, kind) {
                    (WriteOutcome::Accepted, 0) => summary.accepted += 1,
                    (WriteOutcome::Accepted, 1) => summary.state += 1,
                    (WriteOutcome::Accepted, _) => summary.tombstones += 1,
                    (WriteOutcome::Duplicate, _) => summary.duplicate += 1,
                    (WriteOutcome::Rejected(why), _) => {
                        summary.rejected += 1;
                        let _ = writeln!(report, "line {}: {why}", n + 1);
                    }
                }
            }
            batch_bytes = 0;
        }
        if done {
            break;
        }
    }
    // Each event's audience (who may read it) was worked out when it was restored, before
    // the state it depends on (a backup lists the state after the events): again, over the
    // whole restored state.
    if summary.accepted > 0 {
        if progress.printed.get() {
            eprintln!("import: working out who may read each restored event");
        }
        store
            .refresh_audiences()
            .await
            .map_err(|e| format!("import: recording who may read each event: {e}"))?;
    }
    Ok(summary)
}

fn n_last(numbers: &[usize]) -> usize {
    numbers.last().map_or(0, |n| n + 1)
}

fn item_kind(item: &BackupItem) -> u8 {
    match item {
        BackupItem::Event(_) => 0,
        BackupItem::State { .. } => 1,
        BackupItem::Tombstone(_) => 2,
    }
}

/// Writes of plain event lines in flight at once. Each is queued to the store's writer in
/// line order before the next line is read, so the writer commits them in groups (one
/// durable commit per batch, not per event) and in the order of the file. Two writer
/// batches' worth: one being committed while the next fills, and a batch of thousands
/// writes each touched B-tree page once for many events (1,024 in flight wrote ~4× the
/// pages per event of 8,192, 100k lines: 2.1 GB against 0.55 GB).
const IMPORT_WINDOW: usize = 8192;
/// At most this many bytes of lines in flight or being checked, whatever their number
/// (events of up to the relay's maximum size).
const IMPORT_WINDOW_BYTES: usize = 64 << 20;

type PendingWrite<'a> =
    Pin<Box<dyn Future<Output = mls_store::StoreResult<WriteOutcome>> + Send + 'a>>;

/// Counts one answered line; a store failure ends the import.
fn settle(
    summary: &mut ImportSummary,
    report: &mut dyn Write,
    n: usize,
    outcome: mls_store::StoreResult<WriteOutcome>,
) -> Result<(), String> {
    match outcome {
        Ok(WriteOutcome::Accepted) => summary.accepted += 1,
        Ok(WriteOutcome::Duplicate) => summary.duplicate += 1,
        Ok(WriteOutcome::Rejected(why)) => {
            summary.rejected += 1;
            let _ = writeln!(report, "line {}: {why}", n + 1);
        }
        Err(e) => return Err(format!("import: store failed at line {}: {e}", n + 1)),
    }
    Ok(())
}

/// Lines checked as one job on the verification pool: enough that handing them over costs
/// little per line, few enough that both cores are busy from the first lines.
const CHECK_CHUNK: usize = 64;
/// Chunks on the pool at once, ahead of the writes being queued: enough that the checks go
/// on while the writer commits (a batch's durable commit leaves the cores idle otherwise).
const CHECKS_AHEAD: usize = 64;

/// One line's relay checks (decode, signature, `ingest::check`): the event and the operator's
/// stand-in for its publishing connection, or the refusal.
fn check_line(
    limits: &crate::config::Limits,
    access: &crate::auth::Access,
    line: &str,
) -> Result<(Event, Vec<Hex32>), String> {
    let ev = serde_json::from_str::<Event>(line)
        .map_err(|e| format!("invalid: malformed event: {e}"))?;
    let authed = vec![ev.pubkey];
    crate::ingest::check(limits, access, &ev, &authed, unix_now())?;
    if ev.class() == KindClass::Ephemeral {
        return Err("invalid: ephemeral events are not stored".to_string());
    }
    Ok((ev, authed))
}

/// Stores each event line through the same checks as the socket path, with the operator
/// standing in for the publishing connection (authenticated as each event's pubkey, and
/// `Publisher::operator`: checks that belonged to the original connection, such as group
/// membership of a 445's sender, are not re-run, and gift wraps grant no membership).
///
/// The checks run on the verification pool, chunks of lines at once; the chunks are taken
/// back in file order and each line's write is queued to the store writer in that order.
async fn import_events(
    config: &Config,
    store: &dyn EventStore,
    mut lines: impl Iterator<Item = (usize, std::io::Result<String>)>,
    report: &mut dyn Write,
) -> Result<ImportSummary, String> {
    let mut summary = ImportSummary::default();
    let access = Arc::new(crate::auth::Access::from_config(config));
    let limits = Arc::new(config.limitation.clone());
    // Chunks being checked, oldest first (their lines' bytes count in `held` until written).
    let mut checking = VecDeque::new();
    // Line numbers with their queued write (or their refusal) and their line's bytes,
    // oldest first; answers are taken in that order, so the report stays in line order.
    let mut in_flight: VecDeque<(usize, usize, PendingWrite<'_>)> = VecDeque::new();
    // Bytes of the lines being checked or written.
    let mut held = 0usize;
    loop {
        while checking.len() < CHECKS_AHEAD && held < IMPORT_WINDOW_BYTES {
            let mut chunk = Vec::with_capacity(CHECK_CHUNK);
            let mut bytes = 0;
            for (n, line) in lines.by_ref() {
                let line =
                    line.map_err(|e| format!("import: read failed at line {}: {e}", n + 1))?;
                if line.trim().is_empty() {
                    continue;
                }
                bytes += line.len();
                chunk.push((n, line));
                if chunk.len() == CHECK_CHUNK {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            held += bytes;
            let (limits, access) = (limits.clone(), access.clone());
            checking.push_back(crate::verify_pool::run(move || {
                chunk
                    .into_iter()
                    .map(|(n, line)| (n, line.len(), check_line(&limits, &access, &line)))
                    .collect::<Vec<_>>()
            }));
        }
        let Some(chunk) = checking.pop_front() else {
            break;
        };
        let chunk = chunk
            .await
            .ok_or("import: the checks of a chunk of lines panicked")?;
        for (n, bytes, checked) in chunk {
            let write: PendingWrite<'_> = match checked {
                Err(why) => Box::pin(std::future::ready(Ok(WriteOutcome::Rejected(why)))),
                Ok((ev, authed)) => {
                    let publisher = Publisher {
                        authed,
                        operator: true,
                    };
                    let mut write = store.write(ev, publisher);
                    // Polled once now, so it is queued to the writer before the next line's.
                    match std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx)))
                        .await
                    {
                        std::task::Poll::Ready(outcome) => Box::pin(std::future::ready(outcome)),
                        std::task::Poll::Pending => write,
                    }
                }
            };
            in_flight.push_back((n, bytes, write));
            while in_flight.len() >= IMPORT_WINDOW || held >= IMPORT_WINDOW_BYTES {
                let Some((m, bytes, write)) = in_flight.pop_front() else {
                    break;
                };
                settle(&mut summary, report, m, write.await)?;
                held -= bytes;
            }
        }
    }
    while let Some((m, _, write)) = in_flight.pop_front() {
        settle(&mut summary, report, m, write.await)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_recognised_or_refused_by_name() {
        assert!(matches!(
            classify(r#"{"format":"mls-gateway-export","version":1}"#),
            Ok(Input::Backup)
        ));
        assert!(matches!(
            classify(r#"{"id":"00","pubkey":"00","kind":1}"#),
            Ok(Input::Events)
        ));
        assert!(matches!(classify("not json"), Ok(Input::Events)));
        let e = classify(r#"{"format":"mls-gateway-export","version":2}"#).unwrap_err();
        assert!(e.contains("version 2"), "{e}");
        let e = classify(r#"{"format":"strfry-dump","version":1}"#).unwrap_err();
        assert!(e.contains("strfry-dump"), "{e}");
        assert!(classify(r#"{"format":"mls-gateway-export"}"#).is_err());
    }

    #[test]
    fn state_lines_round_trip_text_and_bytes() {
        for (key, value) in [
            (b"g/6869".to_vec(), b"{\"a\":\"\\u00e9\"}".to_vec()),
            (vec![0xff, 0x00, b'k'], vec![0xc3]),
        ] {
            let item = BackupItem::State {
                key: key.clone(),
                value: value.clone(),
            };
            match parse_line(&backup_line(&item)).unwrap() {
                BackupItem::State { key: k, value: v } => assert_eq!((k, v), (key, value)),
                _ => panic!("not a state line"),
            }
        }
    }

    #[test]
    fn tombstone_lines_round_trip() {
        let pubkey = Hex32([7; 32]);
        for t in [
            Tombstone::Id {
                id: Hex32([1; 32]),
                deleter: pubkey,
            },
            Tombstone::Address {
                kind: 30000,
                pubkey,
                d: "a:b\"c".into(),
                until: 9,
            },
            Tombstone::Address {
                kind: 10002,
                pubkey,
                d: String::new(),
                until: 9,
            },
        ] {
            let line = backup_line(&BackupItem::Tombstone(t.clone()));
            match parse_line(&line).unwrap() {
                BackupItem::Tombstone(back) => assert_eq!(back, t, "{line}"),
                _ => panic!("not a tombstone line"),
            }
        }
        assert!(parse_line(r#"{"type":"tombstone","address":"1:00:x","until":1}"#).is_err());
        assert!(parse_line(r#"{"type":"mystery"}"#).is_err());
    }
}
