//! Fan-out: S subscribers, each authenticated as a member of one group, subscribe to
//! `{"kinds":[445],"#h":[G]}`; P publishers (members too) publish E kind-445 messages to the
//! group at a fixed total rate. Every subscriber must receive every event exactly once.
//!
//! The group is *gated* by default (a kind-450 roster bootstrapped by an admin lists every
//! member), so each delivery also runs the membership check of `may_see`; `--open-group`
//! skips the roster (an unknown group is open to any authenticated reader).
//!
//! Several instances (`--sub-urls`, `--pub-urls`): subscribers and publishers are spread
//! round-robin over those relays (instances sharing one database, with `--relay-url` naming
//! their common public URL), so most deliveries cross the bus between instances.
//!
//! Figures: delivery latency (scheduled publish time → frame received by the subscriber),
//! delivered / lost / duplicate counts, subscribers the relay dropped as slow readers, the
//! publishers' OK latency, and the relay's CPU per delivery.

use super::ingest::{self, Batch};
use super::{CpuMeter, Target};
use crate::client::{self, Ws};
use crate::report::{Latencies, Record};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use mls_proto::Event;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Debug, clap::Args)]
pub struct FanoutOpts {
    /// Subscribing members.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishing members.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Events published in total.
    #[arg(long, default_value_t = 100)]
    pub events: usize,
    /// Total publish rate, events/s.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Bytes of content per event.
    #[arg(long, default_value_t = 512)]
    pub content: usize,
    /// Skip the roster: publish to an unknown (open) group.
    #[arg(long)]
    pub open_group: bool,
    /// How long a subscriber waits for missing events after its last frame, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Relays the subscribers connect to, comma-separated, round-robin (default: --url).
    #[arg(long, value_delimiter = ',')]
    pub sub_urls: Vec<String>,
    /// Relays the publishers connect to, comma-separated, round-robin (default: --url).
    #[arg(long, value_delimiter = ',')]
    pub pub_urls: Vec<String>,
}

/// Opens one authenticated connection per key, key `i` on `urls[i % urls.len()]` (or on
/// `fallback` when `urls` is empty), in key order.
async fn open_spread(
    urls: &[String],
    fallback: &str,
    relay_url: &str,
    keys: &[secp256k1::Keypair],
    concurrency: usize,
) -> Result<Vec<Ws>, String> {
    let fallback = [fallback.to_owned()];
    let urls = if urls.is_empty() { &fallback[..] } else { urls };
    let mut slots: Vec<Option<Ws>> = (0..keys.len()).map(|_| None).collect();
    for (u, url) in urls.iter().enumerate() {
        let mine: Vec<usize> = (u..keys.len()).step_by(urls.len()).collect();
        let their_keys: Vec<_> = mine.iter().map(|&i| keys[i]).collect();
        let opened = client::open_many(url, relay_url, &their_keys, concurrency).await?;
        for (i, (ws, _)) in mine.into_iter().zip(opened) {
            slots[i] = Some(ws);
        }
    }
    Ok(slots
        .into_iter()
        .map(|w| w.expect("every key opened"))
        .collect())
}

/// Roster events (kind 450) that create `group` with `members` (chunks of 1000 `p` tags).
fn roster(admin: &secp256k1::Keypair, group: &str, members: &[String]) -> Vec<Event> {
    let now = mls_proto::unix_now();
    members
        .chunks(1000)
        .enumerate()
        .map(|(i, chunk)| {
            let op = if i == 0 { "bootstrap" } else { "add" };
            let seq = (i + 1).to_string();
            let mut tags = client::tags(&[&["h", group], &["op", op], &["seq", &seq]]);
            tags.extend(chunk.iter().map(|p| vec!["p".to_owned(), p.clone()]));
            Event::sign(admin, now, 450, tags, "")
        })
        .collect()
}

#[derive(Default)]
struct SubOutcome {
    unique: u64,
    duplicate: u64,
    lat: Latencies,
    kicked: bool,
    error: Option<String>,
}

async fn subscriber(
    mut ws: Ws,
    index: Arc<HashMap<String, u32>>,
    sent: ingest::SentTimes,
    t0: Instant,
    drain: Duration,
) -> SubOutcome {
    let n = index.len();
    let mut seen = vec![false; n];
    let mut out = SubOutcome::default();
    // One timer for the whole run, moved on only when it fires (a `timeout` per frame put a
    // timer entry in and out of the runtime's wheel for every frame read).
    let quiet = tokio::time::sleep(drain);
    tokio::pin!(quiet);
    let mut last_frame = Instant::now();
    while (out.unique as usize) < n {
        let next = tokio::select! {
            biased;
            next = ws.next() => next,
            _ = &mut quiet => {
                if last_frame.elapsed() >= drain {
                    break; // nothing more is coming
                }
                quiet.as_mut().reset((last_frame + drain).into());
                continue;
            }
        };
        last_frame = Instant::now();
        let frame = match next {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => {
                out.kicked = true;
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                out.error = Some(format!("socket error: {e}"));
                break;
            }
        };
        let text = frame.as_str();
        if !text.starts_with("[\"EVENT\"") {
            if text.starts_with("[\"NOTICE\"") {
                out.error = Some(text.chars().take(200).collect());
            }
            continue;
        }
        let now = last_frame.duration_since(t0).as_nanos() as u64;
        let Some(&i) = client::frame_event_id(text).and_then(|id| index.get(id)) else {
            continue;
        };
        if std::mem::replace(&mut seen[i as usize], true) {
            out.duplicate += 1;
        } else {
            out.unique += 1;
            let at = sent[i as usize].load(Ordering::Acquire);
            out.lat.push(now.saturating_sub(at) / 1000);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    out
}

/// Sends the REQ and waits for its EOSE.
async fn subscribe(mut ws: Ws, group: &str) -> Result<Ws, String> {
    let req = format!(r##"["REQ","fan",{{"kinds":[445],"#h":["{group}"],"limit":0}}]"##);
    client::send(&mut ws, req).await?;
    loop {
        let v = client::next_json(&mut ws).await?;
        match v[0].as_str() {
            Some("EOSE") => return Ok(ws),
            Some("CLOSED") => return Err(format!("subscription refused: {}", v[2])),
            _ => {}
        }
    }
}

pub async fn run(target: &Target, opts: &FanoutOpts) -> Result<Record, String> {
    let s = opts.subscribers.max(1);
    let p = opts.publishers.max(1);
    let group = client::group_id();
    let sub_keys: Vec<_> = (0..s).map(|_| client::keys()).collect();
    let pub_keys: Vec<_> = (0..p).map(|_| client::keys()).collect();

    if !opts.open_group {
        // The bootstrapper becomes the group's owner and admin, so it may `add` the rest.
        let admin = client::keys();
        let mut ws = client::connect_authed(&target.url, &target.relay_url, &admin).await?;
        let members: Vec<String> = sub_keys
            .iter()
            .chain(&pub_keys)
            .map(client::pubkey_hex)
            .collect();
        for ev in roster(&admin, &group, &members) {
            client::publish(&mut ws, &ev)
                .await
                .map_err(|e| format!("roster event refused: {e}"))?;
        }
        let _ = ws.close(None).await;
    }

    eprintln!("fanout: opening {s} subscribers");
    let subs = open_spread(
        &opts.sub_urls,
        &target.url,
        &target.relay_url,
        &sub_keys,
        128,
    )
    .await?;
    let subs: Vec<Ws> = stream::iter(subs.into_iter().map(Ok))
        .map_ok(|ws| subscribe(ws, &group))
        .try_buffer_unordered(128)
        .try_collect()
        .await?;
    let pubs = open_spread(
        &opts.pub_urls,
        &target.url,
        &target.relay_url,
        &pub_keys,
        64,
    )
    .await?;

    let now = mls_proto::unix_now();
    let events = client::sign_parallel(opts.events, |i| {
        client::group_message(&group, opts.content, i as u64, now)
    });
    let index: Arc<HashMap<String, u32>> = Arc::new(
        events
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.to_hex(), i as u32))
            .collect(),
    );
    let mut per_pub: Vec<(Vec<Event>, Vec<Duration>, Vec<u32>)> = vec![Default::default(); p];
    for (i, ev) in events.into_iter().enumerate() {
        let slot = &mut per_pub[i % p];
        slot.0.push(ev);
        slot.1
            .push(Duration::from_secs_f64(i as f64 / opts.rate.max(1e-3)));
        slot.2.push(i as u32);
    }
    let sent = ingest::sent_times(opts.events);

    let cpu = CpuMeter::start(target);
    let t0 = Instant::now();
    let drain = Duration::from_secs_f64(opts.drain.max(0.1));
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .map(|ws| tokio::spawn(subscriber(ws, index.clone(), sent.clone(), t0, drain)))
        .collect();
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .zip(per_pub)
        .map(|(ws, (evs, due, slots))| {
            let batch = Batch::new(&evs, Some(due), slots);
            tokio::spawn(ingest::pipeline(ws, batch, usize::MAX, t0, sent.clone()))
        })
        .collect();

    let mut ok_lat = Latencies::default();
    let (mut accepted, mut refused) = (0u64, 0u64);
    for t in pub_tasks {
        let o = t.await.map_err(|e| format!("publisher task: {e}"))?;
        accepted += o.accepted + o.duplicate;
        refused += o.rejected;
        ok_lat.extend(o.lat);
        for e in o.errors.iter().take(3) {
            eprintln!("fanout publisher: {e}");
        }
    }
    let published_at = t0.elapsed();
    let mut lat = Latencies::default();
    let (mut unique, mut dup, mut kicked, mut errors) = (0u64, 0u64, 0u64, 0u64);
    for t in sub_tasks {
        let o = t.await.map_err(|e| format!("subscriber task: {e}"))?;
        unique += o.unique;
        dup += o.duplicate;
        kicked += o.kicked as u64;
        if let Some(e) = o.error {
            if errors == 0 {
                eprintln!("fanout subscriber: {e}");
            }
            errors += 1;
        }
        lat.extend(o.lat);
    }
    let expected = (s * opts.events) as u64;

    let mut rec = Record::new("fanout");
    rec.text("group", if opts.open_group { "open" } else { "gated" });
    rec.int("subscribers", s as u64);
    rec.int("sub_instances", opts.sub_urls.len().max(1) as u64);
    rec.int("pub_instances", opts.pub_urls.len().max(1) as u64);
    rec.int("publishers", p as u64);
    rec.int("events", opts.events as u64);
    rec.num("rate", opts.rate);
    rec.int("content_bytes", opts.content as u64);
    rec.int("accepted", accepted);
    rec.int("refused", refused);
    rec.int("expected_deliveries", expected);
    rec.int("delivered", unique);
    rec.int("lost", expected.saturating_sub(unique));
    rec.int("duplicates", dup);
    rec.int("subscribers_dropped", kicked);
    rec.int("subscriber_errors", errors);
    rec.num("publish_s", published_at.as_secs_f64());
    rec.num(
        "deliveries_per_s",
        unique as f64 / published_at.as_secs_f64().max(1e-9),
    );
    lat.add_to(&mut rec, "delivery");
    ok_lat.add_to(&mut rec, "ok");
    cpu.finish(&mut rec, Some(("delivery", unique)));
    Ok(rec)
}
