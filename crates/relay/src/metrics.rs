//! Prometheus metrics (PROTOCOL §8), rendered as text at `GET /metrics`.
//!
//! A small fixed registry instead of the `metrics` crates: every label value is an index into
//! a list fixed at compile time (kinds by number, refusal prefixes, commands, operations), so no
//! pubkey, group id or other client-chosen string can ever become a label or grow the output,
//! and the build does not pay for a recorder, an exporter and their dependencies (measured:
//! ~30 s of clean build on this machine for `metrics` + `metrics-exporter-prometheus` alone).
//!
//! What is counted where:
//! - event outcomes (`mls_gateway_*`) in [`MeteredStore`], which wraps the store: every write
//!   the rules accepted or refused passes through it, and it times every store operation;
//! - relay traffic by hooks: [`message_in`] / [`message_out`] (session), [`event_refused`]
//!   (relay-level refusals), [`FanoutTimer`] (fan-out), connection permits (`ratelimit`).
//!
//! The registry is process-global (the hooks sit where no `App` is at hand, e.g. a
//! connection's outbox); one relay runs per process.

use mls_proto::{Event, Filter, Hex32};
use mls_store::{
    BackupItem, Bounded, EventStore, Publisher, ReadBounds, ReadScope, Rejection, StateRead,
    StateWrite, StoreResult, StoredEvent, Visible, WriteOutcome,
};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// The kinds that get their own `kind` label; everything else is `other`.
pub const KINDS: &[&str] = &[
    "443", "444", "445", "446", "450", "1059", "10002", "10050", "10051", "30443", "other",
];
/// Refusal prefixes (PROTOCOL §1) as `reason` labels; anything else is `other`.
pub const REASONS: &[&str] = &[
    "invalid",
    "duplicate",
    "blocked",
    "rate-limited",
    "restricted",
    "auth-required",
    "error",
    "other",
];
/// Client → relay commands.
pub const COMMANDS_IN: &[&str] = &["EVENT", "REQ", "CLOSE", "COUNT", "AUTH", "other"];
/// Relay → client commands.
pub const COMMANDS_OUT: &[&str] = &[
    "EVENT", "OK", "EOSE", "CLOSED", "NOTICE", "COUNT", "AUTH", "other",
];
/// Store operations timed by [`MeteredStore`] (`state` = gateway state reads and updates).
pub const DB_OPS: &[&str] = &[
    "write",
    "query",
    "count",
    "state",
    "since",
    "committed_seq",
    "purge",
];
/// The relay's own rate limits (`ratelimit`).
pub const LIMITS: &[&str] = &["events", "reqs", "connections", "api", "auth"];
/// HTTP endpoints (route names, never paths with ids in them).
pub const ENDPOINTS: &[&str] = &[
    "group",
    "keypackages",
    "admin_groups",
    "admin_group",
    "admin_rename",
    "admin_members",
    "admin_admins",
    "metrics",
    "other",
];
/// HTTP statuses the API answers with; anything else is `other`.
pub const STATUSES: &[&str] = &[
    "200", "204", "400", "401", "403", "404", "405", "413", "429", "503", "other",
];

/// Latency buckets, seconds (100 µs to 10 s).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn index_of(list: &[&str], value: &str) -> usize {
    list.iter()
        .position(|v| *v == value)
        .unwrap_or(list.len() - 1)
}

/// A counter with one label whose values are fixed.
pub struct Family {
    label: &'static str,
    values: &'static [&'static str],
    counts: Vec<AtomicU64>,
}

impl Family {
    fn new(label: &'static str, values: &'static [&'static str]) -> Family {
        Family {
            label,
            values,
            counts: values.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one for `value` (a value not in the list counts as the last one, `other`).
    pub fn inc(&self, value: &str) {
        self.counts[index_of(self.values, value)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, value: &str) -> u64 {
        self.counts[index_of(self.values, value)].load(Ordering::Relaxed)
    }
}

/// A counter with two fixed labels.
pub struct Family2 {
    labels: (&'static str, &'static str),
    values: (&'static [&'static str], &'static [&'static str]),
    counts: Vec<AtomicU64>,
}

impl Family2 {
    fn new(
        labels: (&'static str, &'static str),
        values: (&'static [&'static str], &'static [&'static str]),
    ) -> Family2 {
        Family2 {
            labels,
            values,
            counts: (0..values.0.len() * values.1.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub fn inc(&self, a: &str, b: &str) {
        let i = index_of(self.values.0, a) * self.values.1.len() + index_of(self.values.1, b);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// A histogram of durations with fixed buckets (and optionally one fixed label).
pub struct Histogram {
    label: Option<&'static str>,
    values: &'static [&'static str],
    /// Per label value: one count per bucket (not cumulative), then +Inf.
    buckets: Vec<Vec<AtomicU64>>,
    sum_nanos: Vec<AtomicU64>,
    count: Vec<AtomicU64>,
}

impl Histogram {
    fn new(label: Option<&'static str>, values: &'static [&'static str]) -> Histogram {
        let n = values.len().max(1);
        Histogram {
            label,
            values,
            buckets: (0..n)
                .map(|_| (0..=BUCKETS.len()).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            sum_nanos: (0..n).map(|_| AtomicU64::new(0)).collect(),
            count: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn observe(&self, value: &str, d: Duration) {
        let i = if self.values.is_empty() {
            0
        } else {
            index_of(self.values, value)
        };
        let secs = d.as_secs_f64();
        let b = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i][b].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos[i].fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Every metric the relay exports.
pub struct Metrics {
    pub events_processed: Family,
    pub groups_updated: AtomicU64,
    pub keypackages_stored: AtomicU64,
    pub membership_updates: AtomicU64,
    pub errors: Family,
    pub db_duration: Histogram,
    pub connections: AtomicI64,
    pub connections_opened: AtomicU64,
    pub messages_in: Family,
    pub messages_out: Family,
    pub rejections: Family,
    pub rate_limited: Family,
    pub fanout_duration: Histogram,
    pub http_responses: Family2,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    events_processed: Family::new("kind", KINDS),
    groups_updated: AtomicU64::new(0),
    keypackages_stored: AtomicU64::new(0),
    membership_updates: AtomicU64::new(0),
    errors: Family::new("reason", REASONS),
    db_duration: Histogram::new(Some("op"), DB_OPS),
    connections: AtomicI64::new(0),
    connections_opened: AtomicU64::new(0),
    messages_in: Family::new("command", COMMANDS_IN),
    messages_out: Family::new("command", COMMANDS_OUT),
    rejections: Family::new("reason", REASONS),
    rate_limited: Family::new("limit", LIMITS),
    fanout_duration: Histogram::new(None, &[]),
    http_responses: Family2::new(("endpoint", "status"), (ENDPOINTS, STATUSES)),
});

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// The `kind` label of an event kind.
pub fn kind_label(kind: u16) -> &'static str {
    let k = kind.to_string();
    KINDS[index_of(KINDS, &k)]
}

/// The `reason` label of a refusal message: its machine-readable prefix.
pub fn reason_label(message: &str) -> &'static str {
    let prefix = message.split(':').next().unwrap_or("").trim();
    REASONS[index_of(REASONS, prefix)]
}

/// The command of a NIP-01 message (`["EVENT", …]` → `EVENT`), without parsing the rest.
fn command_of(text: &str) -> &str {
    let rest = text.trim_start().strip_prefix('[').unwrap_or("");
    let rest = rest.trim_start().strip_prefix('"').unwrap_or("");
    rest.split('"').next().unwrap_or("")
}

/// Hook: a text frame arrived from a client.
pub fn message_in(text: &str) {
    global().messages_in.inc(command_of(text));
}

/// Hook: a message is sent to a client. `OK false` and `CLOSED` count as rejections by
/// their prefix (only these short messages are parsed).
pub fn message_out(text: &str) {
    let m = global();
    let command = command_of(text);
    m.messages_out.inc(command);
    // Only refusals are parsed: an accepting OK (the common case) never contains `,false,`.
    let refusal = match command {
        "OK" => text.contains(",false,"),
        "CLOSED" => true,
        _ => false,
    };
    let reason = match command {
        _ if !refusal => None,
        "OK" | "CLOSED" => serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| match command {
                "OK" if v[2] == false => v[3].as_str().map(reason_label),
                "CLOSED" => v[2].as_str().map(reason_label),
                _ => None,
            }),
        _ => None,
    };
    if let Some(reason) = reason {
        m.rejections.inc(reason);
    }
}

/// Hook: an EVENT was refused. Counts it under `mls_gateway_errors_total{reason}` and logs one
/// line with the rule: kind, short id, the reason (never content or a full pubkey).
pub fn event_refused(ev: &Event, reason: &str) {
    let label = reason_label(reason);
    global().errors.inc(label);
    tracing::info!(
        target: "mls_relay::events",
        kind = ev.kind,
        event = %short_id(&ev.id),
        reason = %crate::logging::redact(reason),
        rule = label,
        "event refused"
    );
}

/// A relay rate limit refused something.
pub fn rate_limited(limit: &str) {
    global().rate_limited.inc(limit);
}

/// An HTTP endpoint answered.
pub fn http_response(endpoint: &str, status: u16) {
    global().http_responses.inc(endpoint, &status.to_string());
}

/// The first 8 hex digits of an event id, for logs.
pub fn short_id(id: &Hex32) -> String {
    id.to_hex()[..8].to_owned()
}

/// Times one fan-out; recorded when dropped.
pub struct FanoutTimer(Instant);

impl FanoutTimer {
    pub fn start() -> FanoutTimer {
        FanoutTimer(Instant::now())
    }
}

impl Drop for FanoutTimer {
    fn drop(&mut self) {
        global().fanout_duration.observe("", self.0.elapsed());
    }
}

/// Counts an accepted event by kind, and the gateway counters its kind implies (the rules run
/// inside the store's transaction, so the relay counts by the kind of what was accepted).
fn count_accepted(kind: u16, has_h: bool) {
    let m = global();
    m.events_processed.inc(kind_label(kind));
    match kind {
        443 | 30443 => {
            m.keypackages_stored.fetch_add(1, Ordering::Relaxed);
        }
        450 => count_group_change(true),
        1059 if has_h => count_group_change(true),
        _ => {}
    }
}

/// A group record changed (roster event, gift wrap with `h`, admin API); `membership` when
/// members or admins were the subject.
pub fn count_group_change(membership: bool) {
    let m = global();
    m.groups_updated.fetch_add(1, Ordering::Relaxed);
    if membership {
        m.membership_updates.fetch_add(1, Ordering::Relaxed);
    }
}

/// The store, timed and counted. Behaves exactly like the store it wraps.
pub struct MeteredStore(Arc<dyn EventStore>);

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(MeteredStore(inner))
    }
}

fn timed<T>(op: &str, started: Instant, value: T) -> T {
    global().db_duration.observe(op, started.elapsed());
    value
}

#[async_trait::async_trait]
impl EventStore for MeteredStore {
    async fn write(&self, event: Event, publisher: Publisher) -> StoreResult<WriteOutcome> {
        let (kind, has_h) = (event.kind, event.has_tag("h"));
        let refused = event.clone();
        let started = Instant::now();
        let outcome = timed("write", started, self.0.write(event, publisher).await);
        match &outcome {
            Ok(WriteOutcome::Accepted) => count_accepted(kind, has_h),
            Ok(WriteOutcome::Duplicate) => {}
            Ok(WriteOutcome::Rejected(reason)) => event_refused(&refused, reason),
            Err(_) => event_refused(&refused, "error: storage failure"),
        }
        outcome
    }

    async fn query(
        &self,
        filters: &[Filter],
        bounds: ReadBounds,
        now: u64,
        scope: &ReadScope,
        visible: Visible<'_>,
    ) -> StoreResult<Bounded<Vec<StoredEvent>>> {
        let started = Instant::now();
        timed(
            "query",
            started,
            self.0.query(filters, bounds, now, scope, visible).await,
        )
    }

    async fn count(
        &self,
        filters: &[Filter],
        bounds: ReadBounds,
        now: u64,
        scope: &ReadScope,
        visible: Visible<'_>,
    ) -> StoreResult<Bounded<u64>> {
        let started = Instant::now();
        timed(
            "count",
            started,
            self.0.count(filters, bounds, now, scope, visible).await,
        )
    }

    async fn read_state(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        let started = Instant::now();
        timed("state", started, self.0.read_state(f).await)
    }

    async fn update_state(
        &self,
        f: Box<dyn for<'s> FnOnce(&'s mut dyn StateWrite) -> Result<(), Rejection> + Send>,
    ) -> StoreResult<Result<(), Rejection>> {
        let started = Instant::now();
        timed("state", started, self.0.update_state(f).await)
    }

    async fn purge_expired(&self, now: u64) -> StoreResult<u64> {
        let started = Instant::now();
        timed("purge", started, self.0.purge_expired(now).await)
    }

    async fn health(&self) -> StoreResult<()> {
        self.0.health().await
    }

    async fn close(&self) {
        self.0.close().await
    }

    async fn export(&self, f: &mut (dyn for<'e> FnMut(&'e StoredEvent) + Send)) -> StoreResult<()> {
        self.0.export(f).await
    }

    async fn backup(
        &self,
        f: &mut (dyn for<'i> FnMut(&'i BackupItem) -> bool + Send),
    ) -> StoreResult<()> {
        self.0.backup(f).await
    }

    async fn restore(&self, items: Vec<BackupItem>) -> StoreResult<Vec<WriteOutcome>> {
        self.0.restore(items).await
    }

    async fn refresh_audiences(&self) -> StoreResult<u64> {
        self.0.refresh_audiences().await
    }

    fn commits(&self) -> &mls_store::CommitFeed {
        self.0.commits()
    }

    async fn since(&self, after: u64, limit: usize) -> StoreResult<Vec<mls_store::Sequenced>> {
        let started = Instant::now();
        timed("since", started, self.0.since(after, limit).await)
    }

    async fn committed_seq(&self) -> StoreResult<u64> {
        let started = Instant::now();
        timed("committed_seq", started, self.0.committed_seq().await)
    }
}

/// The Prometheus text exposition (format 0.0.4) of every metric; `subscriptions` is read
/// from the subscription index at scrape time.
pub fn render(subscriptions: usize) -> String {
    let m = global();
    let mut out = String::with_capacity(16 * 1024);
    family(
        &mut out,
        "mls_gateway_events_processed_total",
        "Events accepted by the gateway rules and committed, by kind (ephemeral kinds, never stored, are not counted).",
        &m.events_processed,
    );
    counter(
        &mut out,
        "mls_gateway_groups_updated_total",
        "Changes to a group record: roster events (450), gift wraps with an h tag, admin API.",
        m.groups_updated.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "mls_gateway_keypackages_stored_total",
        "KeyPackage events (443, 30443) accepted.",
        m.keypackages_stored.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "mls_gateway_membership_updates_total",
        "Membership changes: roster events (450), gift wraps with an h tag, admin API member/admin changes.",
        m.membership_updates.load(Ordering::Relaxed),
    );
    family(
        &mut out,
        "mls_gateway_errors_total",
        "Events refused, by refusal prefix.",
        &m.errors,
    );
    histogram(
        &mut out,
        "mls_gateway_db_operation_duration_seconds",
        "Store operation latency (write includes waiting for the group commit).",
        &m.db_duration,
    );
    gauge(
        &mut out,
        "mls_relay_connections",
        "Open WebSocket connections.",
        m.connections.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "mls_relay_connections_opened_total",
        "WebSocket connections accepted since start.",
        m.connections_opened.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "mls_relay_subscriptions",
        "Open live subscriptions (REQs not yet closed).",
        subscriptions as i64,
    );
    family(
        &mut out,
        "mls_relay_messages_in_total",
        "Client messages received, by command.",
        &m.messages_in,
    );
    family(
        &mut out,
        "mls_relay_messages_out_total",
        "Messages sent to clients, by command.",
        &m.messages_out,
    );
    family(
        &mut out,
        "mls_relay_rejections_total",
        "OK false and CLOSED messages sent, by refusal prefix.",
        &m.rejections,
    );
    family(
        &mut out,
        "mls_relay_rate_limited_total",
        "Requests refused by the relay's own rate limits, by limit.",
        &m.rate_limited,
    );
    histogram(
        &mut out,
        "mls_relay_fanout_duration_seconds",
        "Live fan-out of one accepted event to the matching subscriptions.",
        &m.fanout_duration,
    );
    family2(
        &mut out,
        "mls_relay_http_responses_total",
        "HTTP API and /metrics responses, by endpoint and status.",
        &m.http_responses,
    );
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: i64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn family(out: &mut String, name: &str, help: &str, f: &Family) {
    header(out, name, help, "counter");
    for (v, c) in f.values.iter().zip(&f.counts) {
        let _ = writeln!(
            out,
            "{name}{{{}=\"{v}\"}} {}",
            f.label,
            c.load(Ordering::Relaxed)
        );
    }
}

fn family2(out: &mut String, name: &str, help: &str, f: &Family2) {
    header(out, name, help, "counter");
    for (i, a) in f.values.0.iter().enumerate() {
        for (j, b) in f.values.1.iter().enumerate() {
            let n = f.counts[i * f.values.1.len() + j].load(Ordering::Relaxed);
            // Only pairs that occurred: the full cross product is mostly impossible pairs.
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{name}{{{}=\"{a}\",{}=\"{b}\"}} {n}",
                    f.labels.0, f.labels.1
                );
            }
        }
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    header(out, name, help, "histogram");
    let series: Vec<(usize, String)> = match h.label {
        Some(label) => h
            .values
            .iter()
            .enumerate()
            .map(|(i, v)| (i, format!("{label}=\"{v}\",")))
            .collect(),
        None => vec![(0, String::new())],
    };
    for (i, prefix) in series {
        let mut cumulative = 0;
        for (b, le) in BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i][b].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"{le}\"}} {cumulative}");
        }
        cumulative += h.buckets[i][BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{prefix}le=\"+Inf\"}} {cumulative}");
        let labels = prefix.trim_end_matches(',');
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = h.sum_nanos[i].load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(
            out,
            "{name}_count{braces} {}",
            h.count[i].load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(kind_label(445), "445");
        assert_eq!(kind_label(1), "other");
        assert_eq!(kind_label(30443), "30443");
        assert_eq!(reason_label("rate-limited: slow down"), "rate-limited");
        assert_eq!(reason_label("auth-required: who are you"), "auth-required");
        assert_eq!(reason_label("abcdef0123: not a prefix"), "other");
        assert_eq!(reason_label(""), "other");
    }

    #[test]
    fn commands_are_sniffed_without_parsing() {
        assert_eq!(command_of(r#"["EVENT",{"id":"x"}]"#), "EVENT");
        assert_eq!(command_of(r#" [ "REQ" , "s", {}]"#), "REQ");
        assert_eq!(command_of("not json"), "");
        let f = Family::new("command", COMMANDS_IN);
        f.inc(command_of("garbage"));
        assert_eq!(f.get("other"), 1);
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::new(Some("op"), DB_OPS);
        h.observe("write", Duration::from_micros(300));
        h.observe("write", Duration::from_secs(20));
        let mut out = String::new();
        histogram(&mut out, "x", "help", &h);
        assert!(
            out.contains("x_bucket{op=\"write\",le=\"0.0005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"write\",le=\"10\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{op=\"write\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_count{op=\"write\"} 2\n"), "{out}");
        assert!(out.contains("x_count{op=\"query\"} 0\n"), "{out}");
    }
}
