//! Query: C authenticated connections send REQs with `limit` 10 over a store of N events
//! (see [`crate::fill`]), W at a time per connection, each closed after its EOSE.
//!
//! The REQs rotate over three shapes a client sends: the newest kind-1 notes
//! (`{"kinds":[1],"limit":10}`), one author's events (`{"authors":[A],"limit":10}`) and one
//! group's messages (`{"kinds":[445],"#h":[G],"limit":10}`), with A and G moving over the
//! whole data set.
//!
//! With `--mix giftwrap --shape hidden`, the store holds gift wraps to other people and each
//! connection (a stranger to all of them) asks for `{"kinds":[1059]}`: what a read costs when
//! everything it could match is hidden from the reader (security rule 8).
//!
//! Figures: REQs/s, REQ → EOSE latency, events returned per REQ, relay CPU per REQ.

use super::{CpuMeter, Target};
use crate::client::{self, Ws};
use crate::fill::DataSet;
use crate::report::{Latencies, Record};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Debug, clap::Args)]
pub struct QueryOpts {
    /// Events in the store.
    #[arg(long = "stored", default_value_t = 100_000)]
    pub stored: usize,
    /// Querying connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// REQs each connection keeps open at once.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// REQs in total.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Only one shape of REQ: kind, author or tag (default: rotate over all three); or
    /// `hidden`: `{"kinds":[1059]}`, `everything`: `{}` (with `--mix giftwrap`).
    #[arg(long)]
    pub shape: Option<String>,
    /// What the store holds: `notes` (445s and kind-1 notes) or `giftwrap` (gift wraps to
    /// the data set's keys, hidden from the querying connections).
    #[arg(long, default_value = "notes")]
    pub mix: String,
    /// Bytes of content per stored event.
    #[arg(long, default_value_t = 256)]
    pub content: usize,
    /// Keep the filled store here (and reuse it when it is already there) instead of a
    /// temporary directory. Only when this tool starts the relay.
    #[arg(long)]
    pub store_dir: Option<PathBuf>,
    /// With `--url`: the relay already holds this data set (same `--stored`, `--mix` and
    /// `--content`), e.g. restored from a backup with `mls-gateway import`; skip the fill.
    #[arg(long)]
    pub prefilled: bool,
}

fn req_text(sub: &str, shape: usize, j: usize, data: &DataSet) -> String {
    match shape {
        3 => format!(r#"["REQ","{sub}",{{"kinds":[1059]}}]"#),
        4 => format!(r#"["REQ","{sub}",{{}}]"#),
        0 => format!(r#"["REQ","{sub}",{{"kinds":[1],"limit":10}}]"#),
        1 => {
            let a = client::pubkey_hex(&data.authors[j % data.authors.len()]);
            format!(r#"["REQ","{sub}",{{"authors":["{a}"],"limit":10}}]"#)
        }
        _ => {
            let g = &data.groups[j % data.groups.len()];
            format!(r##"["REQ","{sub}",{{"kinds":[445],"#h":["{g}"],"limit":10}}]"##)
        }
    }
}

fn shape_of(opts: &QueryOpts, j: usize) -> Result<usize, String> {
    Ok(match opts.shape.as_deref() {
        None => j % 3,
        Some("kind") => 0,
        Some("author") => 1,
        Some("tag") => 2,
        Some("hidden") => 3,
        Some("everything") => 4,
        Some(other) => {
            return Err(format!(
                "--shape {other}: expected kind, author, tag, hidden or everything"
            ))
        }
    })
}

#[derive(Default)]
struct ConnOutcome {
    done: u64,
    events: u64,
    lat: Latencies,
    errors: Vec<String>,
}

async fn querier(ws: Ws, reqs: Vec<String>, window: usize) -> (ConnOutcome, Option<Instant>) {
    let (mut sink, mut stream) = ws.split();
    let mut out = ConnOutcome::default();
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let total = reqs.len();
    let mut next = reqs.into_iter().enumerate();
    let mut send_next = |pending: &mut HashMap<String, Instant>| {
        next.next().map(|(i, text)| {
            pending.insert(format!("q{i}"), Instant::now());
            Message::Text(text.into())
        })
    };
    for _ in 0..window.max(1) {
        if let Some(m) = send_next(&mut pending) {
            let _ = sink.feed(m).await;
        }
    }
    let _ = sink.flush().await;
    let mut last = None;
    while (out.done as usize) < total {
        let frame = match tokio::time::timeout(client::STEP_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            other => {
                out.errors.push(format!("connection ended: {other:?}"));
                break;
            }
        };
        let text = frame.as_str();
        if text.starts_with("[\"EVENT\",\"") {
            out.events += 1;
        } else if let Some(rest) = text.strip_prefix("[\"EOSE\",\"") {
            let sub = rest.trim_end_matches("\"]");
            if let Some(at) = pending.remove(sub) {
                out.lat.push(at.elapsed().as_micros() as u64);
                out.done += 1;
                last = Some(Instant::now());
                let _ = sink
                    .feed(Message::Text(format!(r#"["CLOSE","{sub}"]"#).into()))
                    .await;
                if let Some(m) = send_next(&mut pending) {
                    let _ = sink.feed(m).await;
                }
                let _ = sink.flush().await;
            }
        } else if text.starts_with("[\"CLOSED\"") || text.starts_with("[\"NOTICE\"") {
            if out.errors.len() < 3 {
                out.errors.push(text.chars().take(200).collect());
            }
            if let Some(rest) = text.strip_prefix("[\"CLOSED\",\"") {
                let sub = rest.split('"').next().unwrap_or_default();
                if pending.remove(sub).is_some() {
                    out.done += 1;
                    if let Some(m) = send_next(&mut pending) {
                        let _ = sink.send(m).await;
                    }
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    (out, last)
}

pub async fn run(target: &Target, opts: &QueryOpts, data: &DataSet) -> Result<Record, String> {
    let c = opts.connections.max(1);
    let keys: Vec<_> = (0..c).map(|_| client::keys()).collect();
    let conns = client::open_many(&target.url, &target.relay_url, &keys, 64).await?;
    let mut per_conn: Vec<Vec<String>> = vec![Vec::new(); c];
    for j in 0..opts.requests {
        let k = j % c;
        let sub = format!("q{}", per_conn[k].len());
        let text = req_text(&sub, shape_of(opts, j)?, j / 3, data);
        per_conn[k].push(text);
    }

    let cpu = CpuMeter::start(target);
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(per_conn)
        .map(|((ws, _), reqs)| tokio::spawn(querier(ws, reqs, opts.window)))
        .collect();
    let mut lat = Latencies::default();
    let (mut done, mut events, mut last) = (0u64, 0u64, None);
    let mut errors = Vec::new();
    for t in tasks {
        let (o, l) = t.await.map_err(|e| format!("query task: {e}"))?;
        done += o.done;
        events += o.events;
        lat.extend(o.lat);
        errors.extend(o.errors);
        last = last.max(l);
    }
    let elapsed = last.map(|l| l.duration_since(t0)).unwrap_or_default();
    for e in errors.iter().take(3) {
        eprintln!("query: {e}");
    }

    let mut rec = Record::new("query");
    rec.text(
        "shape",
        opts.shape.clone().unwrap_or_else(|| "mixed".into()),
    );
    rec.text("mix", opts.mix.clone());
    rec.int("stored", data.n as u64);
    rec.int("connections", c as u64);
    rec.int("window", opts.window as u64);
    rec.int("requests", opts.requests as u64);
    rec.int("answered", done);
    rec.int("errors", errors.len() as u64);
    rec.num("elapsed_s", elapsed.as_secs_f64());
    rec.num("reqs_per_s", done as f64 / elapsed.as_secs_f64().max(1e-9));
    rec.num("events_per_req", events as f64 / done.max(1) as f64);
    lat.add_to(&mut rec, "eose");
    cpu.finish(&mut rec, Some(("req", done)));
    Ok(rec)
}

/// Publishes the data set to a relay the user runs (when the tool cannot fill its store).
pub async fn fill_socket(target: &Target, data: &DataSet) -> Result<u64, String> {
    let keys = client::keys();
    let ws = client::connect_authed(&target.url, &target.relay_url, &keys).await?;
    let events = client::sign_parallel(data.n, |i| data.event(i));
    let n = events.len();
    let batch = super::ingest::Batch::new(&events, None, (0..n as u32).collect());
    let sent = super::ingest::sent_times(n);
    let out = super::ingest::pipeline(ws, batch, 256, Instant::now(), Arc::clone(&sent)).await;
    if out.rejected > 0 {
        eprintln!(
            "query: {} fill events refused, e.g. {:?}",
            out.rejected,
            out.errors.first()
        );
    }
    Ok(out.accepted + out.duplicate)
}
