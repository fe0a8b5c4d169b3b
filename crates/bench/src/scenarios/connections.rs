//! Connections: C idle, authenticated WebSocket connections (optionally each holding one live
//! subscription) → the relay's resident memory per connection, from `/proc/<pid>/status`
//! before and after, and how long opening them took.

use super::Target;
use crate::client::{self, Ws};
use crate::relay;
use crate::report::{Latencies, Record};
use futures_util::stream::{self, TryStreamExt};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, clap::Args)]
pub struct ConnOpts {
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Each connection also holds one live subscription (`{"kinds":[445],"#h":[own group]}`).
    #[arg(long)]
    pub subscribe: bool,
    /// Seconds to hold the connections idle before reading the relay's memory.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
}

async fn subscribe(mut ws: Ws, i: usize) -> Result<Ws, String> {
    let group = format!("{i:064x}");
    let req = format!(r##"["REQ","idle",{{"kinds":[445],"#h":["{group}"],"limit":0}}]"##);
    client::send(&mut ws, req).await?;
    loop {
        let v = client::next_json(&mut ws).await?;
        if v[0] == "EOSE" {
            return Ok(ws);
        }
        if v[0] == "CLOSED" {
            return Err(format!("subscription refused: {}", v[2]));
        }
    }
}

pub async fn run(target: &Target, opts: &ConnOpts, nofile: u64) -> Result<Record, String> {
    let c = opts.connections.max(1);
    if target.pid.is_none() {
        eprintln!("connections: relay pid unknown (pass --relay-pid): no memory figures");
    }
    if c as u64 + 64 > nofile {
        eprintln!(
            "connections: {c} connections need more than the open-file limit ({nofile}) allows"
        );
    }
    let keys: Vec<_> = (0..c).map(|_| client::keys()).collect();
    let rss = |pid: Option<u32>| pid.and_then(relay::rss_kib).map_or(f64::NAN, |k| k as f64);
    let before = rss(target.pid);

    let t0 = Instant::now();
    let conns = client::open_many(&target.url, &target.relay_url, &keys, opts.concurrency).await?;
    let open_s = t0.elapsed().as_secs_f64();
    let mut open_lat = Latencies::default();
    let mut socks = Vec::with_capacity(c);
    for (ws, t) in conns {
        open_lat.push(t);
        socks.push(ws);
    }
    if opts.subscribe {
        socks = stream::iter(socks.into_iter().enumerate().map(Ok))
            .map_ok(|(i, ws)| subscribe(ws, i))
            .try_buffer_unordered(opts.concurrency.max(1))
            .try_collect()
            .await?;
    }
    tokio::time::sleep(Duration::from_secs_f64(opts.hold)).await;
    let after = rss(target.pid);
    let peak = target
        .pid
        .and_then(relay::hwm_kib)
        .map_or(f64::NAN, |k| k as f64);
    let gen_rss = relay::rss_kib(std::process::id()).map_or(f64::NAN, |k| k as f64);

    drop(socks);
    tokio::time::sleep(Duration::from_secs_f64(opts.hold)).await;
    let closed = rss(target.pid);

    let mut rec = Record::new("connections");
    rec.text("subscribed", if opts.subscribe { "yes" } else { "no" });
    rec.int("connections", c as u64);
    rec.int("nofile_limit", nofile);
    rec.num("open_s", open_s);
    rec.num("opens_per_s", c as f64 / open_s.max(1e-9));
    open_lat.add_to(&mut rec, "open");
    rec.num("relay_rss_before_mib", before / 1024.0);
    rec.num("relay_rss_after_mib", after / 1024.0);
    rec.num("relay_rss_peak_mib", peak / 1024.0);
    rec.num("relay_rss_closed_mib", closed / 1024.0);
    rec.num("bytes_per_connection", (after - before) * 1024.0 / c as f64);
    rec.num("gen_rss_mib", gen_rss / 1024.0);
    Ok(rec)
}
