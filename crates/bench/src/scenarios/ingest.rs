//! Ingest: C authenticated connections publish kind-445 group messages, either as fast as the
//! OKs come back (a window of W unanswered EVENTs per connection) or at a fixed total rate.
//!
//! Figures: accepted events/s (from the first send to the last OK), OK latency (send → OK;
//! at a fixed rate, measured from the *scheduled* send time so a stalled relay cannot hide
//! its backlog), refusals and errors, and the CPU the relay used per event.

use super::{CpuMeter, Target};
use crate::client::{self, Ws};
use crate::report::{Latencies, Record};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Debug, clap::Args)]
pub struct IngestOpts {
    /// Publishing connections.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Events in total.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Unanswered EVENTs each connection may have in flight.
    #[arg(long, default_value_t = 64)]
    pub window: usize,
    /// Fixed total rate, events/s (instead of as fast as OKs return).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Bytes of content per event (a typical MLS application message is ~500).
    #[arg(long, default_value_t = 512)]
    pub content: usize,
}

/// What one connection saw.
#[derive(Default)]
pub struct ConnOutcome {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub lat: Latencies,
    pub errors: Vec<String>,
    pub last_ok: Option<Instant>,
}

/// One connection's pre-serialised EVENT messages and where each id sits.
pub struct Batch {
    pub msgs: Vec<String>,
    pub index: HashMap<String, u32>,
    /// Offset from the start at which each message is due (fixed-rate mode).
    pub due: Option<Vec<Duration>>,
    /// Where each message's send time goes in the shared `sent` array.
    pub slots: Vec<u32>,
}

impl Batch {
    pub fn new(events: &[mls_proto::Event], due: Option<Vec<Duration>>, slots: Vec<u32>) -> Batch {
        Batch {
            slots,
            msgs: events.iter().map(client::event_msg).collect(),
            index: events
                .iter()
                .enumerate()
                .map(|(i, e)| (e.id.to_hex(), i as u32))
                .collect(),
            due,
        }
    }
}

/// Send times (nanoseconds after `t0`) of every event of a run, shared by the publishing
/// connections and, in the fan-out scenario, by the subscribers.
pub type SentTimes = Arc<Vec<AtomicU64>>;

pub fn sent_times(n: usize) -> SentTimes {
    Arc::new((0..n).map(|_| AtomicU64::new(0)).collect())
}

/// Sends `batch` on `ws` with at most `window` unanswered, reading OKs as they come.
pub async fn pipeline(
    ws: Ws,
    batch: Batch,
    window: usize,
    t0: Instant,
    sent: SentTimes,
) -> ConnOutcome {
    let n = batch.msgs.len();
    let mut out = ConnOutcome::default();
    if n == 0 {
        return out;
    }
    let (mut sink, mut stream) = ws.split();
    let sem = Arc::new(Semaphore::new(window.clamp(1, Semaphore::MAX_PERMITS)));
    let Batch {
        msgs,
        index,
        due,
        slots,
    } = batch;
    let slots = Arc::new(slots);

    let sender = {
        let sent = sent.clone();
        let sem = sem.clone();
        let slots = slots.clone();
        async move {
            // Returns the sink so the socket stays open until the receiver is done.
            for (i, msg) in msgs.into_iter().enumerate() {
                match sem.try_acquire() {
                    Ok(p) => p.forget(),
                    Err(_) => {
                        if sink.flush().await.is_err() {
                            return sink;
                        }
                        match sem.acquire().await {
                            Ok(p) => p.forget(),
                            Err(_) => return sink,
                        }
                    }
                }
                let stamp = match &due {
                    Some(due) => {
                        let at = t0 + due[i];
                        if at > Instant::now() {
                            if sink.flush().await.is_err() {
                                return sink;
                            }
                            tokio::time::sleep_until(at.into()).await;
                        }
                        due[i]
                    }
                    None => t0.elapsed(),
                };
                sent[slots[i] as usize].store(stamp.as_nanos() as u64, Ordering::Release);
                if sink.feed(Message::Text(msg.into())).await.is_err() {
                    return sink;
                }
            }
            let _ = sink.flush().await;
            sink
        }
    };

    let receiver = async move {
        let mut answered = 0;
        while answered < n {
            let frame = match tokio::time::timeout(client::STEP_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => t,
                Ok(Some(Ok(Message::Close(c)))) => {
                    out.errors
                        .push(format!("relay closed the connection: {c:?}"));
                    break;
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    out.errors.push(format!("socket error: {e}"));
                    break;
                }
                Ok(None) => {
                    out.errors.push("socket closed".into());
                    break;
                }
                Err(_) => {
                    out.errors
                        .push(format!("no answer for {:?}", client::STEP_TIMEOUT));
                    break;
                }
            };
            let text = frame.as_str();
            let Some((id, accepted)) = client::ok_frame(text) else {
                if !text.starts_with("[\"AUTH\"") {
                    out.errors.push(text.chars().take(200).collect());
                }
                continue;
            };
            let Some(&i) = index.get(id) else {
                continue;
            };
            let now = t0.elapsed().as_nanos() as u64;
            let at = sent[slots[i as usize] as usize].load(Ordering::Acquire);
            out.lat.push(now.saturating_sub(at) / 1000);
            answered += 1;
            sem.add_permits(1);
            if accepted {
                if text.contains("\"duplicate:") {
                    out.duplicate += 1;
                } else {
                    out.accepted += 1;
                }
            } else {
                out.rejected += 1;
                if out.errors.len() < 5 {
                    out.errors.push(text.chars().take(200).collect());
                }
            }
        }
        out.last_ok = Some(Instant::now());
        out
    };

    let (mut sink, out) = tokio::join!(sender, receiver);
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    out
}

pub async fn run(target: &Target, opts: &IngestOpts) -> Result<Record, String> {
    let c = opts.connections.max(1);
    let keys: Vec<_> = (0..c).map(|_| client::keys()).collect();
    let conns = client::open_many(&target.url, &target.relay_url, &keys, 64).await?;

    // One (open) group per connection, events dealt round-robin; all signed before timing.
    let groups: Vec<String> = (0..c).map(|_| client::group_id()).collect();
    let now = mls_proto::unix_now();
    let events = client::sign_parallel(opts.events, |i| {
        client::group_message(&groups[i % c], opts.content, i as u64, now)
    });
    let mut per_conn: Vec<Vec<mls_proto::Event>> = vec![Vec::new(); c];
    let mut due: Vec<Vec<Duration>> = vec![Vec::new(); c];
    for (i, ev) in events.into_iter().enumerate() {
        per_conn[i % c].push(ev);
        if let Some(rate) = opts.rate {
            due[i % c].push(Duration::from_secs_f64(i as f64 / rate));
        }
    }
    let window = if opts.rate.is_some() {
        // At a fixed rate the schedule, not a window, paces the sender.
        usize::MAX
    } else {
        opts.window
    };
    let batches: Vec<Batch> = per_conn
        .iter()
        .zip(due)
        .enumerate()
        .map(|(k, (evs, d))| {
            let slots = (0..evs.len()).map(|j| (j * c + k) as u32).collect();
            Batch::new(evs, opts.rate.map(|_| d), slots)
        })
        .collect();
    let sent = sent_times(opts.events);

    let cpu = CpuMeter::start(target);
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(batches)
        .map(|((ws, _), b)| tokio::spawn(pipeline(ws, b, window, t0, sent.clone())))
        .collect();
    let mut all = ConnOutcome::default();
    for t in tasks {
        let o = t.await.map_err(|e| format!("connection task: {e}"))?;
        all.accepted += o.accepted;
        all.duplicate += o.duplicate;
        all.rejected += o.rejected;
        all.lat.extend(o.lat);
        all.errors.extend(o.errors);
        all.last_ok = all.last_ok.max(o.last_ok);
    }
    let elapsed = all
        .last_ok
        .map(|l| l.duration_since(t0))
        .unwrap_or_default()
        .as_secs_f64();

    let mut rec = Record::new("ingest");
    rec.text(
        "mode",
        match opts.rate {
            Some(_) => "fixed-rate",
            None => "max",
        },
    );
    rec.int("connections", c as u64);
    rec.int("events", opts.events as u64);
    rec.int(
        "window",
        if opts.rate.is_some() {
            0
        } else {
            opts.window as u64
        },
    );
    rec.num("target_rate", opts.rate.unwrap_or(f64::NAN));
    rec.int("content_bytes", opts.content as u64);
    rec.int("accepted", all.accepted);
    rec.int("duplicates", all.duplicate);
    rec.int("rejected", all.rejected);
    let unanswered = opts.events as u64 - all.accepted - all.duplicate - all.rejected;
    rec.int("unanswered", unanswered);
    rec.num("elapsed_s", elapsed);
    rec.num("accepted_per_s", all.accepted as f64 / elapsed.max(1e-9));
    all.lat.add_to(&mut rec, "ok");
    cpu.finish(&mut rec, Some(("event", all.accepted)));
    for e in all.errors.iter().take(3) {
        eprintln!("ingest: {e}");
    }
    Ok(rec)
}
