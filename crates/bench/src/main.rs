//! `mls-bench`: drives the relay over real WebSockets and prints what it measured, one JSON
//! line per run on stdout and a readable table (each run, median, spread) on stderr.
//!
//! ```sh
//! cargo build --release --bin mls-gateway -p mls-bench
//! target/release/mls-bench all                          # every scenario, relay started here
//! target/release/mls-bench --runs 3 ingest --connections 8 --events 20000
//! target/release/mls-bench --url ws://127.0.0.1:8080 ingest --rate 5000
//! target/release/mls-bench --runs 3 query --stored 10000 > q.jsonl   # ... and 100k, 1M
//! target/release/mls-bench chart --out docs/charts q.jsonl          # one SVG per figure
//! ```
//!
//! Without `--url` the tool starts `target/release/mls-gateway` itself for every run: a free
//! loopback port, a temporary data directory, NIP-42 required, rate limits off. With `--url`
//! it drives a relay you run (turn its rate limits off, and pass `--relay-pid` for CPU and
//! memory figures).
//!
//! Every event is signed before the timed part; the generator shares the machine with the
//! relay, so each record also says how much CPU each of them used.

mod chart;
mod client;
mod fill;
mod relay;
mod report;
mod scenarios;

use clap::{Parser, Subcommand};
use report::Record;
use scenarios::{connections, fanout, ingest, query, Target};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "mls-bench",
    about = "Load generator for the MLS gateway relay",
    version
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Global {
    /// Drive this running relay (e.g. ws://127.0.0.1:8080) instead of starting one.
    #[arg(long, global = true)]
    url: Option<String>,
    /// NIP-42 `relay` tag to sign (the relay's `[server] relay_url`); default: --url.
    #[arg(long, global = true)]
    relay_url: Option<String>,
    /// Process id of the relay given by --url, for CPU and memory figures.
    #[arg(long, global = true)]
    relay_pid: Option<u32>,
    /// Relay binary to start (default: mls-gateway next to this binary, else
    /// target/release/mls-gateway).
    #[arg(long, global = true)]
    relay_bin: Option<PathBuf>,
    /// Repeat each scenario this many times (a fresh relay each time when started here).
    #[arg(long, global = true, default_value_t = 1)]
    runs: usize,
    /// Worker threads of this generator.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// Started relay: `[auth] enabled = false` (clients still answer the AUTH challenge).
    #[arg(long, global = true)]
    no_auth: bool,
    /// Started relay: `[server] workers` (default: one per CPU).
    #[arg(long, global = true)]
    relay_workers: Option<usize>,
    /// Started relay: `[limitation] outbox_capacity`.
    #[arg(long, global = true, default_value_t = 1024)]
    outbox: usize,
    /// Before each run, wait up to this many seconds for the machine to be quiet (other
    /// processes using less than a third of a core over two seconds). 0 = don't wait.
    #[arg(long, global = true, default_value_t = 0.0)]
    wait_quiet: f64,
}

#[derive(Subcommand)]
enum Command {
    /// C connections publish kind-445 events; events/s and OK latency.
    Ingest(ingest::IngestOpts),
    /// S member subscribers, P publishers of 445s to their group; delivery latency, losses.
    Fanout(fanout::FanoutOpts),
    /// REQs with limit 10 over a store of N events; REQ/s and REQ → EOSE latency.
    Query(query::QueryOpts),
    /// C idle authenticated connections; relay memory per connection, time to open.
    Connections(connections::ConnOpts),
    /// Every scenario at its default size, then the figures against the targets.
    All,
    /// Charts from the JSON lines of earlier runs: one SVG per scenario and figure, x the
    /// size, one series per `store`/`relay` label, median and min–max of the runs.
    Chart(chart::ChartOpts),
}

enum Scenario {
    Ingest(ingest::IngestOpts),
    Fanout(fanout::FanoutOpts),
    Query(query::QueryOpts),
    Connections(connections::ConnOpts),
}

struct Bench {
    global: Global,
    rt: tokio::runtime::Runtime,
    nofile: u64,
}

impl Bench {
    fn spawn_options(&self, data_dir: Option<PathBuf>) -> relay::SpawnOptions {
        relay::SpawnOptions {
            binary: self
                .global
                .relay_bin
                .clone()
                .unwrap_or_else(relay::default_binary),
            auth: !self.global.no_auth,
            workers: self.global.relay_workers,
            outbox: self.global.outbox,
            data_dir,
            extra_toml: String::new(),
        }
    }

    /// Runs one scenario `--runs` times; prints each run's JSON line, then the table.
    fn run(&self, scenario: &Scenario) -> Result<Vec<Record>, String> {
        // The query data set is built once and shared by every run.
        let mut data_dir: Option<(PathBuf, Option<tempfile::TempDir>)> = None;
        let mut data = None;
        if let Scenario::Query(q) = scenario {
            let giftwraps = match q.mix.as_str() {
                "notes" => false,
                "giftwrap" => true,
                other => return Err(format!("--mix {other}: expected notes or giftwrap")),
            };
            let set = fill::DataSet::new(q.stored, q.content, giftwraps);
            if self.global.url.is_none() {
                let (dir, tmp) = match &q.store_dir {
                    Some(d) => (d.clone(), None),
                    None => {
                        let t = tempfile::Builder::new()
                            .prefix("mls-bench-store-")
                            .tempdir()
                            .map_err(|e| format!("temp dir: {e}"))?;
                        (t.path().to_path_buf(), Some(t))
                    }
                };
                if dir.join("data.mdb").exists() {
                    eprintln!("query: reusing the store in {}", dir.display());
                } else {
                    let t = std::time::Instant::now();
                    let n = self.rt.block_on(fill::fill_store(&dir, &set))?;
                    eprintln!(
                        "query: stored {n} events in {:.1} s ({} MiB on disk)",
                        t.elapsed().as_secs_f64(),
                        relay::dir_size(&dir) >> 20
                    );
                }
                data_dir = Some((dir, tmp));
            }
            data = Some(set);
        }

        let mut records = Vec::new();
        for run in 1..=self.global.runs.max(1) {
            let busy_before = wait_quiet(self.global.wait_quiet);
            let spawned = match &self.global.url {
                Some(_) => None,
                None => Some(relay::SpawnedRelay::start(
                    &self.spawn_options(data_dir.as_ref().map(|(d, _)| d.clone())),
                )?),
            };
            let target = match (&spawned, &self.global.url) {
                (Some(r), _) => Target {
                    url: r.url.clone(),
                    relay_url: r.url.clone(),
                    pid: Some(r.pid),
                },
                (None, Some(url)) => Target {
                    url: url.clone(),
                    relay_url: self.global.relay_url.clone().unwrap_or_else(|| url.clone()),
                    pid: self.global.relay_pid,
                },
                (None, None) => unreachable!("either started or given"),
            };
            let result = self.rt.block_on(async {
                match scenario {
                    Scenario::Ingest(o) => ingest::run(&target, o).await,
                    Scenario::Fanout(o) => fanout::run(&target, o).await,
                    Scenario::Query(o) => {
                        let data = data.as_ref().expect("data set built above");
                        if self.global.url.is_some() && run == 1 && data.n > 0 && !o.prefilled {
                            let n = query::fill_socket(&target, data).await?;
                            eprintln!("query: published {n} events to fill the relay");
                        }
                        query::run(&target, o, data).await
                    }
                    Scenario::Connections(o) => connections::run(&target, o, self.nofile).await,
                }
            });
            let mut rec = match result {
                Ok(rec) => rec,
                Err(e) => {
                    if let Some(r) = &spawned {
                        eprintln!("relay log (last lines):\n{}", r.log_tail());
                    }
                    return Err(e);
                }
            };
            rec.int("run", run as u64);
            rec.num("busy_cores_before", busy_before);
            println!("{}", rec.json_line());
            records.push(rec);
            drop(spawned);
        }
        eprint!("{}", report::table(&records));
        Ok(records)
    }
}

/// Waits (up to `max_secs`) for a two-second window in which the whole machine is busy less
/// than a third of a core; returns the busy cores of the last window measured.
fn wait_quiet(max_secs: f64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(max_secs);
    loop {
        let a = relay::machine_busy_secs();
        std::thread::sleep(std::time::Duration::from_secs(2));
        let busy = match (relay::machine_busy_secs(), a) {
            (Some(b), Some(a)) => (b - a) / 2.0,
            _ => return f64::NAN,
        };
        if busy < 0.34 || std::time::Instant::now() >= deadline {
            return busy;
        }
    }
}

fn default_opts<T: clap::Args>() -> T {
    #[derive(Parser)]
    struct Wrap<A: clap::Args> {
        #[command(flatten)]
        inner: A,
    }
    Wrap::<T>::parse_from(["mls-bench"]).inner
}

fn all(bench: &Bench) -> Result<(), String> {
    let mut ingest_max: ingest::IngestOpts = default_opts();
    // Enough connections for verification to use every core.
    ingest_max.connections = 64;
    let mut ingest_rate: ingest::IngestOpts = default_opts();
    ingest_rate.rate = Some(5000.0);
    let fan: fanout::FanoutOpts = default_opts();
    let q: query::QueryOpts = default_opts();
    let conn: connections::ConnOpts = default_opts();

    let r_ingest = bench.run(&Scenario::Ingest(ingest_max))?;
    let r_rate = bench.run(&Scenario::Ingest(ingest_rate))?;
    let r_fan = bench.run(&Scenario::Fanout(fan.clone()))?;
    let r_query = bench.run(&Scenario::Query(q.clone()))?;
    let r_conn = bench.run(&Scenario::Connections(conn.clone()))?;

    let m = report::median_of;
    let rows = [
        (
            "ingest, verified events/s (64 connections)".to_owned(),
            m(&r_ingest, "accepted_per_s"),
            ">= 20000".to_owned(),
            m(&r_ingest, "accepted_per_s") >= 20_000.0,
        ),
        (
            "OK p99 at 5000 events/s, ms".to_owned(),
            m(&r_rate, "ok_p99_ms"),
            "< 20".to_owned(),
            m(&r_rate, "ok_p99_ms") < 20.0,
        ),
        (
            format!("fan-out to {} members, p99 ms", fan.subscribers),
            m(&r_fan, "delivery_p99_ms"),
            "< 50, nothing lost".to_owned(),
            m(&r_fan, "delivery_p99_ms") < 50.0 && r_fan.iter().all(|r| r.get("lost") == Some(0.0)),
        ),
        (
            format!("query, REQ/s (limit 10) over {} events", q.stored),
            m(&r_query, "reqs_per_s"),
            ">= 20000 over 1M".to_owned(),
            m(&r_query, "reqs_per_s") >= 20_000.0,
        ),
        (
            format!("bytes per idle connection at {}", conn.connections),
            m(&r_conn, "bytes_per_connection"),
            "<= 4096 at 10k".to_owned(),
            m(&r_conn, "bytes_per_connection") <= 4096.0,
        ),
    ];
    eprintln!(
        "\n== against the targets (medians of {} run(s))",
        bench.global.runs.max(1)
    );
    for (what, value, target, met) in rows {
        eprintln!(
            "{what:<48} {value:>10.1}   target {target:<20} {}",
            if met { "met" } else { "MISSED" }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Chart(o) = &cli.command {
        // Reads files only: no runtime, no relay.
        return match chart::run(o) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let nofile = relay::raise_nofile_limit();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.global.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let bench = Bench {
        global: cli.global,
        rt,
        nofile,
    };
    let result = match cli.command {
        Command::Ingest(o) => bench.run(&Scenario::Ingest(o)).map(drop),
        Command::Fanout(o) => bench.run(&Scenario::Fanout(o)).map(drop),
        Command::Query(o) => bench.run(&Scenario::Query(o)).map(drop),
        Command::Connections(o) => bench.run(&Scenario::Connections(o)).map(drop),
        Command::All => all(&bench),
        Command::Chart(_) => unreachable!("handled before the runtime starts"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
