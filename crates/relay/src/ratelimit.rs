//! The relay's own rate limits (the gateway's per-owner and per-group ones live in its rules,
//! in the store): events and REQs per minute, AUTH messages per minute, and open connections
//! per IP.
//!
//! The client IP is always one of the keys a message is counted against: a key pair costs
//! nothing to make, so a limit per pubkey alone is reset by signing each request with a fresh
//! one. An authenticated client is counted against its (first) pubkey as well, so one key
//! spread over many addresses is limited too.
//!
//! `governor`'s keyed GCRA limiters in memory, per process (the equivalent of a token bucket):
//! a key may spend a burst of its whole per-minute allowance, which refills evenly over the
//! minute, so a client that was refused is served again as soon as it slows down. Keys whose
//! allowance has refilled completely are forgotten (`retain_recent`, run when the key count
//! has doubled since the last sweep or a minute after it), so a stream of new IPs cannot grow
//! memory without bound. Measured (`bench_keyed_limiter`, release, on a loaded 2-core machine):
//! ~0.65 µs per `check_all` of an IP and a pubkey, against ~0.34 µs for the hand-written
//! buckets this replaced; small beside the signature check and the store write of an EVENT.
//!
//! IPv6 clients are keyed by their /64 (one customer's allocation), not by address: otherwise
//! one host could walk through its prefix and never be limited.

use crate::config::Config;
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::{DashMapStateStore, ShrinkableKeyedStateStore};
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use mls_proto::Hex32;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Who a limit is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKey {
    Pubkey(Hex32),
    Ip(IpAddr),
    /// One WebSocket connection (its id).
    Connection(u64),
}

impl RateKey {
    /// The client's IP (IPv6: its /64), then the first authenticated pubkey if any.
    pub fn all(authed: &[Hex32], ip: IpAddr) -> impl Iterator<Item = RateKey> {
        std::iter::once(RateKey::Ip(ip_key(ip)))
            .chain(authed.first().map(|pk| RateKey::Pubkey(*pk)))
    }
}

/// The address a limit counts against: IPv4 as is, IPv6 cut to its /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// How many checks pass between two looks at the number of keys (`len` visits every shard
/// of the map, so not on every message).
const SWEEP_CHECK_EVERY: u64 = 256;
/// A limiter with at least this many keys sweeps out the full ones when it has doubled since
/// its last sweep, or a minute after it (by then every idle key is full again).
const SWEEP_AT: usize = 1024;

/// governor's keyed state (a `DashMap` of GCRA arrival times), held outside the limiter as
/// well so that a refused [`KeyedLimiter::check_all`] can give back what it took (governor
/// has no refund).
struct SharedStore(Arc<DashMapStateStore<RateKey>>);

impl StateStore for SharedStore {
    type Key = RateKey;

    fn measure_and_replace<T, F, E>(&self, key: &RateKey, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<RateKey> for SharedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below)
    }

    fn shrink_to_fit(&self) {
        self.0.shrink_to_fit()
    }

    fn len(&self) -> usize {
        ShrinkableKeyedStateStore::len(&*self.0)
    }

    fn is_empty(&self) -> bool {
        ShrinkableKeyedStateStore::is_empty(&*self.0)
    }
}

/// governor's keyed limiter over [`SharedStore`].
type Limiter<C> = RateLimiter<RateKey, SharedStore, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A limiter per key: bursts of `per_minute`, refilled at `per_minute / 60` per second.
pub struct KeyedLimiter<C: Clock = DefaultClock> {
    per_minute: u32,
    /// `None`: unlimited.
    limiter: Option<Limiter<C>>,
    store: Arc<DashMapStateStore<RateKey>>,
    /// One emission interval (`60 s / per_minute`): what one check takes from a key.
    interval: Duration,
    checks: AtomicU64,
    sweep: Mutex<Sweep<C::Instant>>,
}

struct Sweep<I> {
    next_at: usize,
    last: Option<I>,
}

impl KeyedLimiter {
    /// `per_minute = 0`: unlimited.
    pub fn new(per_minute: u32) -> KeyedLimiter {
        KeyedLimiter::with_clock(per_minute, DefaultClock::default())
    }
}

impl<C: Clock> KeyedLimiter<C> {
    fn with_clock(per_minute: u32, clock: C) -> KeyedLimiter<C> {
        let store: Arc<DashMapStateStore<RateKey>> = Arc::default();
        let quota = NonZeroU32::new(per_minute).map(Quota::per_minute);
        KeyedLimiter {
            per_minute,
            limiter: quota.map(|q| RateLimiter::new(q, SharedStore(store.clone()), clock)),
            store,
            interval: Duration::from_secs(60) / per_minute.max(1),
            checks: AtomicU64::new(0),
            sweep: Mutex::new(Sweep {
                next_at: SWEEP_AT,
                last: None,
            }),
        }
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// Takes one token for `key`. `Err(wait)`: refused, a token is back after `wait`.
    pub fn check(&self, key: RateKey) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        self.maybe_sweep(limiter);
        limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Takes one token from each of `keys`, or from none of them (a key that is refused gives
    /// back the tokens already taken). `Err(wait)`: the refused key's wait.
    pub fn check_all(&self, keys: impl IntoIterator<Item = RateKey>) -> Result<(), Duration> {
        let mut taken: Vec<RateKey> = Vec::new();
        for key in keys {
            if let Err(wait) = self.check(key) {
                for key in taken {
                    self.refund(key);
                }
                return Err(wait);
            }
            taken.push(key);
        }
        Ok(())
    }

    /// Gives back one token: the key's theoretical arrival time moves back one interval.
    fn refund(&self, key: RateKey) {
        if self.limiter.is_none() {
            return;
        }
        let interval = Nanos::from(self.interval);
        let _ = self.store.measure_and_replace(&key, |tat| match tat {
            Some(tat) => Ok(((), tat.saturating_sub(interval))),
            None => Err(()),
        });
    }

    /// Every [`SWEEP_CHECK_EVERY`] checks: when the limiter holds at least [`SWEEP_AT`] keys
    /// and has doubled since the last sweep (or a minute has passed), forgets every key whose
    /// allowance is full again.
    fn maybe_sweep(&self, limiter: &Limiter<C>) {
        if !self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_CHECK_EVERY)
        {
            return;
        }
        let len = limiter.len();
        if len < SWEEP_AT {
            return;
        }
        let now = limiter.clock().now();
        let mut sweep = self.sweep.lock().expect("rate limit sweep");
        let stale = sweep
            .last
            .is_none_or(|t| now.duration_since(t) >= Nanos::from(Duration::from_secs(60)));
        if len >= sweep.next_at || stale {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            sweep.next_at = (limiter.len() * 2).max(SWEEP_AT);
            sweep.last = Some(now);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

/// Open connections per IP; also keeps the connections gauge. A count of what is open, not a
/// rate, so not a governor limiter.
pub struct ConnectionLimiter {
    max: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

/// One open connection; released (and the gauge lowered) when dropped.
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    key: IpAddr,
}

impl ConnectionLimiter {
    /// `max = 0`: unlimited.
    pub fn new(max: u32) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more connection from `ip`, or `None` when it has `max` open.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionPermit> {
        let key = ip_key(ip);
        let mut open = self.open.lock().expect("connection counts");
        let n = open.entry(key).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        drop(open);
        crate::metrics::connection_opened();
        Some(ConnectionPermit {
            limiter: self.clone(),
            key,
        })
    }

    pub fn max(&self) -> u32 {
        self.max
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limiter.open.lock().expect("connection counts");
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
        crate::metrics::connection_closed();
    }
}

/// Every relay-level limiter, built from `[limitation]` and `[extensions.mls_gateway.rate_limits]`.
pub struct RateLimiters {
    /// EVENT messages (`max_events_per_minute`).
    pub events: KeyedLimiter,
    /// REQ / COUNT messages and REST API requests (`max_reqs_per_minute`).
    pub reqs: KeyedLimiter,
    pub connections: Arc<ConnectionLimiter>,
    /// AUTH messages per connection (`auth.max_auths_per_minute_per_connection`).
    pub auths_per_connection: KeyedLimiter,
    /// AUTH messages per client IP (`auth.max_auths_per_minute_per_ip`).
    pub auths_per_ip: KeyedLimiter,
}

impl RateLimiters {
    pub fn new(config: &Config) -> RateLimiters {
        RateLimiters {
            events: KeyedLimiter::new(
                config
                    .extensions
                    .mls_gateway
                    .rate_limits
                    .max_events_per_minute,
            ),
            reqs: KeyedLimiter::new(config.limitation.max_reqs_per_minute),
            connections: ConnectionLimiter::new(config.limitation.max_connections_per_ip),
            auths_per_connection: KeyedLimiter::new(
                config.auth.max_auths_per_minute_per_connection,
            ),
            auths_per_ip: KeyedLimiter::new(config.auth.max_auths_per_minute_per_ip),
        }
    }

    /// Hook for EVENT: the `OK false` message when over `max_events_per_minute`.
    pub fn check_event(&self, authed: &[Hex32], ip: IpAddr) -> Result<(), String> {
        self.events
            .check_all(RateKey::all(authed, ip))
            .map_err(|wait| {
                crate::metrics::rate_limited("events");
                format!(
                    "rate-limited: more than {} events per minute, retry in {} s",
                    self.events.per_minute(),
                    wait.as_secs().max(1)
                )
            })
    }

    /// Hook for REQ / COUNT: the `CLOSED` message when over `max_reqs_per_minute`.
    pub fn check_req(&self, authed: &[Hex32], ip: IpAddr) -> Result<(), String> {
        self.reqs
            .check_all(RateKey::all(authed, ip))
            .map_err(|wait| {
                crate::metrics::rate_limited("reqs");
                format!(
                    "rate-limited: more than {} REQ/COUNT per minute, retry in {} s",
                    self.reqs.per_minute(),
                    wait.as_secs().max(1)
                )
            })
    }
}

impl RateLimiters {
    /// Hook for AUTH (before its signature is checked): the `OK false` message when the
    /// connection or its IP is over its AUTH allowance.
    pub fn check_auth(&self, connection: u64, ip: IpAddr) -> Result<(), String> {
        let refused = |limiter: &KeyedLimiter, per: &str, wait: Duration| {
            crate::metrics::rate_limited("auth");
            format!(
                "rate-limited: more than {} AUTH messages per minute per {per}, retry in {} s",
                limiter.per_minute(),
                wait.as_secs().max(1)
            )
        };
        self.auths_per_connection
            .check(RateKey::Connection(connection))
            .map_err(|wait| refused(&self.auths_per_connection, "connection", wait))?;
        self.auths_per_ip
            .check(RateKey::Ip(ip_key(ip)))
            .map_err(|wait| refused(&self.auths_per_ip, "address", wait))
    }
}

/// The client's IP: the socket's peer, or — with `server.trust_forwarded_for` — the last
/// `X-Forwarded-For` entry (the one the proxy in front of us appended; entries before it are
/// whatever the client sent and prove nothing).
pub fn client_ip(config: &Config, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
    let socket = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
    if !config.server.trust_forwarded_for {
        return canonical(socket);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(parse_forwarded);
    canonical(forwarded.unwrap_or(socket))
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443`, `203.0.113.7:5000`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let s = entry.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|r| r.parse().ok())
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bucket_refuses_then_refills() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(60, clock.clone()); // one per second, burst 60
        let key = RateKey::Ip(ip("192.0.2.1"));
        for _ in 0..60 {
            assert!(l.check(key).is_ok());
        }
        let wait = l.check(key).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        // Another key is not affected.
        assert!(l.check(RateKey::Ip(ip("192.0.2.2"))).is_ok());
        clock.advance(Duration::from_millis(1100));
        assert!(l.check(key).is_ok());
        assert!(l.check(key).is_err());
        assert!(KeyedLimiter::new(0).check(key).is_ok());
    }

    #[test]
    fn the_ip_is_always_a_key() {
        let l = KeyedLimiter::new(3);
        let addr = ip("192.0.2.1");
        // Each call signed by a fresh key: the IP's bucket still empties.
        for i in 0..3u8 {
            let pk = Hex32([i; 32]);
            assert!(l.check_all(RateKey::all(&[pk], addr)).is_ok());
        }
        assert!(l.check_all(RateKey::all(&[Hex32([9; 32])], addr)).is_err());
        assert!(l.check_all(RateKey::all(&[], addr)).is_err());
        // A refused key gives back what the others took: the pubkey of a refused call keeps
        // its tokens for another address.
        let pk = Hex32([7; 32]);
        let other = ip("192.0.2.2");
        assert!(l.check_all(RateKey::all(&[pk], addr)).is_err());
        for _ in 0..3 {
            assert!(l.check_all(RateKey::all(&[pk], other)).is_ok());
        }
        assert!(l.check_all(RateKey::all(&[pk], ip("192.0.2.3"))).is_err());
        // …and that refusal refunded 192.0.2.3's token.
        for _ in 0..3 {
            assert!(l.check_all(RateKey::all(&[], ip("192.0.2.3"))).is_ok());
        }
    }

    #[test]
    fn full_buckets_are_swept() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(600, clock.clone());
        let many = SWEEP_AT * 32;
        for i in 0..many as u32 {
            let _ = l.check(RateKey::Ip(IpAddr::from(i.to_be_bytes())));
        }
        assert_eq!(l.len(), many); // none of them is full again yet: all kept
                                   // Two minutes later every one of them is full again: the next sweep forgets them.
        clock.advance(Duration::from_secs(120));
        for i in 0..SWEEP_CHECK_EVERY as u32 {
            let _ = l.check(RateKey::Ip(IpAddr::from((u32::MAX - i).to_be_bytes())));
        }
        assert!(l.len() <= SWEEP_CHECK_EVERY as usize, "{}", l.len());
    }

    #[test]
    fn a_refused_check_all_gives_back_what_it_took() {
        let clock = FakeRelativeClock::default();
        let l = KeyedLimiter::with_clock(2, clock);
        let (pk, a, b) = (Hex32([1; 32]), ip("192.0.2.1"), ip("192.0.2.2"));
        assert!(l.check(RateKey::Pubkey(pk)).is_ok());
        assert!(l.check(RateKey::Pubkey(pk)).is_ok());
        // `a` passes, the pubkey is refused: `a` keeps both its tokens.
        for _ in 0..3 {
            assert!(l.check_all(RateKey::all(&[pk], a)).is_err());
        }
        assert!(l.check_all(RateKey::all(&[], a)).is_ok());
        assert!(l.check_all(RateKey::all(&[], a)).is_ok());
        assert!(l.check_all(RateKey::all(&[], a)).is_err());
        // A refund never adds a token to a key that has its whole allowance.
        let _ = l.check_all(RateKey::all(&[pk], b));
        let _ = l.check_all(RateKey::all(&[pk], b));
        assert!(l.check_all(RateKey::all(&[], b)).is_ok());
        assert!(l.check_all(RateKey::all(&[], b)).is_ok());
        assert!(l.check_all(RateKey::all(&[], b)).is_err());
    }

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        assert_eq!(ip_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(ip_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
    }

    #[test]
    fn forwarded_for_only_when_trusted() {
        let mut config = Config::default();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.9.9.9, 203.0.113.7".parse().unwrap());
        let peer = Some("127.0.0.1:5555".parse().unwrap());
        assert_eq!(client_ip(&config, peer, &headers), ip("127.0.0.1"));
        config.server.trust_forwarded_for = true;
        assert_eq!(client_ip(&config, peer, &headers), ip("203.0.113.7"));
        headers.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(client_ip(&config, peer, &headers), ip("2001:db8::1"));
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(&config, peer, &headers), ip("127.0.0.1"));
    }

    #[test]
    fn connection_permits_count_per_ip() {
        let l = ConnectionLimiter::new(2);
        let a = l.try_open(ip("192.0.2.1")).unwrap();
        let _b = l.try_open(ip("192.0.2.1")).unwrap();
        assert!(l.try_open(ip("192.0.2.1")).is_none());
        assert!(l.try_open(ip("192.0.2.2")).is_some());
        drop(a);
        assert!(l.try_open(ip("192.0.2.1")).is_some());
    }

    /// Figures, not a check: `cargo test -p mls-relay --release --lib ratelimit::tests::bench
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "benchmark; prints figures"]
    fn bench_keyed_limiter() {
        let n = 2_000_000u32;
        // One key pair and 1,000 addresses, all within their allowance (the common case).
        let l = KeyedLimiter::new(1_000_000_000);
        let pk = Hex32([7; 32]);
        let t = std::time::Instant::now();
        for i in 0..n {
            let addr = IpAddr::from((0xC000_0200u32 + i % 1000).to_be_bytes());
            assert!(l.check_all(RateKey::all(&[pk], addr)).is_ok());
        }
        let hot = t.elapsed().as_nanos() as f64 / f64::from(n);
        // A new address every time (a flood of fresh IPs: inserts and sweeps).
        let l = KeyedLimiter::new(600);
        let t = std::time::Instant::now();
        for i in 0..n {
            let _ = l.check(RateKey::Ip(IpAddr::from(i.to_be_bytes())));
        }
        let fresh = t.elapsed().as_nanos() as f64 / f64::from(n);
        // Refused: one key over its allowance.
        let l = KeyedLimiter::new(60);
        let key = RateKey::Ip(ip("192.0.2.1"));
        let t = std::time::Instant::now();
        for _ in 0..n {
            let _ = l.check(key);
        }
        let refused = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "keyed limiter, ns per call: check_all(ip, pubkey) within allowance {hot:.0}; \
             check(new ip) {fresh:.0}; check(refused key) {refused:.0}"
        );
    }
}
