//! The four scenarios. Each prepares everything (keys, signed events, connections,
//! subscriptions) first, then times only the traffic, and fills one [`Record`].

pub mod connections;
pub mod fanout;
pub mod ingest;
pub mod query;

use crate::relay;
use crate::report::Record;
use std::time::Instant;

/// The relay being driven.
#[derive(Clone, Debug)]
pub struct Target {
    /// Where to connect.
    pub url: String,
    /// What to put in the NIP-42 `relay` tag (the relay's `relay_url`, or the URL itself).
    pub relay_url: String,
    /// The relay's process id, for RSS and CPU figures (known when spawned, or `--relay-pid`).
    pub pid: Option<u32>,
}

/// CPU used by the relay and by this generator between `start` and `finish`.
pub struct CpuMeter {
    relay_pid: Option<u32>,
    relay0: Option<f64>,
    gen0: f64,
    machine0: Option<f64>,
    wall0: Instant,
}

impl CpuMeter {
    pub fn start(target: &Target) -> CpuMeter {
        CpuMeter {
            relay_pid: target.pid,
            relay0: target.pid.and_then(relay::cpu_secs),
            gen0: relay::own_cpu_secs(),
            machine0: relay::machine_busy_secs(),
            wall0: Instant::now(),
        }
    }

    /// Adds `relay_cpu_s`, `relay_cores` (CPU seconds per wall second), `gen_cpu_s`,
    /// `other_cores` (what every other process on the machine used meanwhile: the noise) and,
    /// when `per` is given, `relay_cpu_us_per_{unit}`.
    pub fn finish(&self, rec: &mut Record, per: Option<(&str, u64)>) {
        let wall = self.wall0.elapsed().as_secs_f64();
        let relay = match (self.relay_pid.and_then(relay::cpu_secs), self.relay0) {
            (Some(b), Some(a)) => b - a,
            _ => f64::NAN,
        };
        rec.num("relay_cpu_s", relay);
        rec.num("relay_cores", relay / wall);
        if let Some((unit, n)) = per {
            rec.num(
                &format!("relay_cpu_us_per_{unit}"),
                relay * 1e6 / n.max(1) as f64,
            );
        }
        let gen = relay::own_cpu_secs() - self.gen0;
        rec.num("gen_cpu_s", gen);
        let machine = match (relay::machine_busy_secs(), self.machine0) {
            (Some(b), Some(a)) => b - a,
            _ => f64::NAN,
        };
        let relay = if relay.is_finite() { relay } else { 0.0 };
        rec.num("other_cores", ((machine - relay - gen) / wall).max(0.0));
    }
}
