//! Prometheus metrics (PROTOCOL §8), rendered as text at `GET /metrics`.
//!
//! Through `prometheus-client`, the Prometheus project's own Rust client: every label is a
//! typed set ([`EncodeLabelSet`]) of enums whose values are fixed at compile time (kinds by
//! number, refusal prefixes, commands, operations), so no pubkey, group id or other
//! client-chosen string can ever become a label or grow the output. Served in the Prometheus
//! text format 0.0.4 ([`prometheus_text`]), where a counter's `# HELP`/`# TYPE` lines carry
//! its `_total` name: the names are those the relay always exported (counters are registered
//! without `_total`, the encoder adds it).
//!
//! What is counted where:
//! - event outcomes (`mls_gateway_*`) in [`MeteredStore`], which wraps the store: every write
//!   the rules accepted or refused passes through it, and it times every store operation;
//! - relay traffic by hooks: [`message_in`] / [`message_out`] (session), [`event_refused`]
//!   (relay-level refusals), [`FanoutTimer`] (fan-out), connection permits (`ratelimit`),
//!   [`slow_reader_cut`] (outbox), [`auth_refused`] (NIP-42).
//!
//! The registry is process-global (the hooks sit where no `App` is at hand, e.g. a
//! connection's outbox); one relay runs per process.

use mls_proto::{Event, Filter, Hex32};
use mls_store::{
    BackupItem, Bounded, EventStore, Publisher, ReadBounds, ReadScope, Rejection, StateRead,
    StateWrite, StoreResult, StoredEvent, Visible, WriteOutcome,
};
use prometheus_client::encoding::{
    prometheus_text, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

/// A label's values as an enum, its wire strings, and the `&[&str]` list of them (the lists
/// are public: tests check every exported value against them). An unknown string maps to the
/// last value (`other` where the list has one).
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident, $list:ident { $($variant:ident = $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in the order of the list.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }

            /// The value whose label is `label`; anything else is the last value.
            pub fn from_label(label: &str) -> $name {
                match label {
                    $($label => $name::$variant,)+
                    _ => $name::ALL[$name::ALL.len() - 1],
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }

        $(#[$doc])*
        pub const $list: &[&str] = &[$($label),+];
    };
}

label_values! {
    /// The kinds that get their own `kind` label; everything else is `other`.
    Kind, KINDS {
        K443 = "443", K444 = "444", K445 = "445", K446 = "446", K450 = "450", K1059 = "1059",
        K10002 = "10002", K10050 = "10050", K10051 = "10051", K30443 = "30443", Other = "other",
    }
}
label_values! {
    /// Refusal prefixes (PROTOCOL §1) as `reason` labels; anything else is `other`.
    Reason, REASONS {
        Invalid = "invalid", Duplicate = "duplicate", Blocked = "blocked",
        RateLimited = "rate-limited", Restricted = "restricted", AuthRequired = "auth-required",
        Error = "error", Other = "other",
    }
}
label_values! {
    /// Client → relay commands.
    CommandIn, COMMANDS_IN {
        Event = "EVENT", Req = "REQ", Close = "CLOSE", Count = "COUNT", Auth = "AUTH",
        Other = "other",
    }
}
label_values! {
    /// Relay → client commands.
    CommandOut, COMMANDS_OUT {
        Event = "EVENT", Ok = "OK", Eose = "EOSE", Closed = "CLOSED", Notice = "NOTICE",
        Count = "COUNT", Auth = "AUTH", Other = "other",
    }
}
label_values! {
    /// Store operations timed by [`MeteredStore`] (`state` = gateway state reads and updates).
    DbOp, DB_OPS {
        Write = "write", Query = "query", Count = "count", State = "state", Since = "since",
        CommittedSeq = "committed_seq", Purge = "purge",
    }
}
label_values! {
    /// The relay's own rate limits (`ratelimit`).
    Limit, LIMITS {
        Events = "events", Reqs = "reqs", Connections = "connections", Api = "api", Auth = "auth",
    }
}
label_values! {
    /// HTTP endpoints (route names, never paths with ids in them).
    Endpoint, ENDPOINTS {
        Group = "group", Keypackages = "keypackages", AdminGroups = "admin_groups",
        AdminGroup = "admin_group", AdminRename = "admin_rename",
        AdminMembers = "admin_members", AdminAdmins = "admin_admins", Metrics = "metrics",
        Other = "other",
    }
}
label_values! {
    /// HTTP statuses the API answers with; anything else is `other`.
    Status, STATUSES {
        S200 = "200", S204 = "204", S400 = "400", S401 = "401", S403 = "403", S404 = "404",
        S405 = "405", S413 = "413", S429 = "429", S503 = "503", Other = "other",
    }
}

/// `{kind}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: Kind,
}

/// `{reason}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: Reason,
}

/// `{command}` of a client message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CommandInLabel {
    pub command: CommandIn,
}

/// `{command}` of a relay message.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CommandOutLabel {
    pub command: CommandOut,
}

/// `{op}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OpLabel {
    pub op: DbOp,
}

/// `{limit}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: Limit,
}

/// `{endpoint, status}`
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub endpoint: Endpoint,
    pub status: Status,
}

/// Latency buckets, seconds (100 µs to 10 s).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// A latency histogram per label set.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the relay exports, and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    pub events_processed: Family<KindLabel, Counter>,
    pub groups_updated: Counter,
    pub keypackages_stored: Counter,
    pub membership_updates: Counter,
    pub errors: Family<ReasonLabel, Counter>,
    pub db_duration: HistogramFamily<OpLabel>,
    pub store_health_checks: Counter,
    pub store_health_failures: Counter,
    pub connections: Gauge,
    pub connections_opened: Counter,
    /// Set from the subscription index at scrape time.
    subscriptions: Gauge,
    pub messages_in: Family<CommandInLabel, Counter>,
    pub messages_out: Family<CommandOutLabel, Counter>,
    pub rejections: Family<ReasonLabel, Counter>,
    pub rate_limited: Family<LimitLabel, Counter>,
    pub auth_refused: Family<ReasonLabel, Counter>,
    pub slow_reader_cuts: Counter,
    pub fanout_duration: Histogram,
    pub http_responses: Family<HttpLabels, Counter>,
}

/// Creates the series of every label value up front, so a dashboard sees zeros, not gaps.
fn every<L, M, C, V>(family: &Family<L, M, C>, values: &[V], label: impl Fn(V) -> L)
where
    L: Clone + std::hash::Hash + Eq,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
    V: Copy,
{
    for v in values {
        let _ = family.get_or_create(&label(*v));
    }
}

impl Metrics {
    fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::default(),
            events_processed: Family::default(),
            groups_updated: Counter::default(),
            keypackages_stored: Counter::default(),
            membership_updates: Counter::default(),
            errors: Family::default(),
            db_duration: Family::new_with_constructor(latency_histogram),
            store_health_checks: Counter::default(),
            store_health_failures: Counter::default(),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            subscriptions: Gauge::default(),
            messages_in: Family::default(),
            messages_out: Family::default(),
            rejections: Family::default(),
            rate_limited: Family::default(),
            auth_refused: Family::default(),
            slow_reader_cuts: Counter::default(),
            fanout_duration: latency_histogram(),
            http_responses: Family::default(),
        };
        every(&m.events_processed, Kind::ALL, |kind| KindLabel { kind });
        every(&m.errors, Reason::ALL, |reason| ReasonLabel { reason });
        every(&m.db_duration, DbOp::ALL, |op| OpLabel { op });
        every(&m.messages_in, CommandIn::ALL, |command| CommandInLabel {
            command,
        });
        every(&m.messages_out, CommandOut::ALL, |command| {
            CommandOutLabel { command }
        });
        every(&m.rejections, Reason::ALL, |reason| ReasonLabel { reason });
        every(&m.rate_limited, Limit::ALL, |limit| LimitLabel { limit });
        every(&m.auth_refused, Reason::ALL, |reason| ReasonLabel {
            reason,
        });
        m.register()
    }

    /// Registers every metric, in exposition order. Counter names are given without `_total`
    /// and help texts without the final period: the encoder adds both.
    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "mls_gateway_events_processed",
            "Events accepted by the gateway rules and committed, by kind (ephemeral kinds, never stored, are not counted)",
            self.events_processed.clone(),
        );
        r.register(
            "mls_gateway_groups_updated",
            "Changes to a group record: roster events (450), gift wraps with an h tag, admin API",
            self.groups_updated.clone(),
        );
        r.register(
            "mls_gateway_keypackages_stored",
            "KeyPackage events (443, 30443) accepted",
            self.keypackages_stored.clone(),
        );
        r.register(
            "mls_gateway_membership_updates",
            "Membership changes: roster events (450), gift wraps with an h tag, admin API member/admin changes",
            self.membership_updates.clone(),
        );
        r.register(
            "mls_gateway_errors",
            "Events refused, by refusal prefix",
            self.errors.clone(),
        );
        r.register(
            "mls_gateway_db_operation_duration_seconds",
            "Store operation latency (write includes waiting for the group commit)",
            self.db_duration.clone(),
        );
        r.register(
            "mls_gateway_store_health_checks",
            "Store health checks (each GET /health asks the store)",
            self.store_health_checks.clone(),
        );
        r.register(
            "mls_gateway_store_health_failures",
            "Store health checks that failed (the store was unreachable; GET /health answered 503)",
            self.store_health_failures.clone(),
        );
        r.register(
            "mls_relay_connections",
            "Open WebSocket connections",
            self.connections.clone(),
        );
        r.register(
            "mls_relay_connections_opened",
            "WebSocket connections accepted since start",
            self.connections_opened.clone(),
        );
        r.register(
            "mls_relay_subscriptions",
            "Open live subscriptions (REQs not yet closed)",
            self.subscriptions.clone(),
        );
        r.register(
            "mls_relay_messages_in",
            "Client messages received, by command",
            self.messages_in.clone(),
        );
        r.register(
            "mls_relay_messages_out",
            "Messages sent to clients, by command",
            self.messages_out.clone(),
        );
        r.register(
            "mls_relay_rejections",
            "OK false and CLOSED messages sent, by refusal prefix",
            self.rejections.clone(),
        );
        r.register(
            "mls_relay_rate_limited",
            "Requests refused by the relay's own rate limits, by limit",
            self.rate_limited.clone(),
        );
        r.register(
            "mls_relay_auth_refused",
            "NIP-42 AUTH messages answered OK false (bad signature, challenge or relay tag, pubkey not allowed, over the AUTH rate limit, too many pubkeys), by refusal prefix",
            self.auth_refused.clone(),
        );
        r.register(
            "mls_relay_slow_reader_disconnects",
            "Connections cut because their outbox went over a bound (a client that reads too slowly)",
            self.slow_reader_cuts.clone(),
        );
        r.register(
            "mls_relay_fanout_duration_seconds",
            "Live fan-out of one accepted event to the matching subscriptions",
            self.fanout_duration.clone(),
        );
        r.register(
            "mls_relay_http_responses",
            "HTTP API and /metrics responses, by endpoint and status",
            self.http_responses.clone(),
        );
        self
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide registry.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// The `kind` label of an event kind.
pub fn kind_label(kind: u16) -> &'static str {
    kind_value(kind).as_str()
}

fn kind_value(kind: u16) -> Kind {
    match kind {
        443 => Kind::K443,
        444 => Kind::K444,
        445 => Kind::K445,
        446 => Kind::K446,
        450 => Kind::K450,
        1059 => Kind::K1059,
        10002 => Kind::K10002,
        10050 => Kind::K10050,
        10051 => Kind::K10051,
        30443 => Kind::K30443,
        _ => Kind::Other,
    }
}

/// The `reason` label of a refusal message: its machine-readable prefix.
pub fn reason_label(message: &str) -> &'static str {
    reason_of(message).as_str()
}

fn reason_of(message: &str) -> Reason {
    Reason::from_label(message.split(':').next().unwrap_or("").trim())
}

/// The command of a NIP-01 message (`["EVENT", …]` → `EVENT`), without parsing the rest.
fn command_of(text: &str) -> &str {
    let rest = text.trim_start().strip_prefix('[').unwrap_or("");
    let rest = rest.trim_start().strip_prefix('"').unwrap_or("");
    rest.split('"').next().unwrap_or("")
}

/// Hook: a text frame arrived from a client.
pub fn message_in(text: &str) {
    let command = CommandIn::from_label(command_of(text));
    global()
        .messages_in
        .get_or_create(&CommandInLabel { command })
        .inc();
}

/// Hook: a message is sent to a client. `OK false` and `CLOSED` count as rejections by
/// their prefix (only these short messages are parsed).
pub fn message_out(text: &str) {
    let m = global();
    let command = CommandOut::from_label(command_of(text));
    m.messages_out
        .get_or_create(&CommandOutLabel { command })
        .inc();
    // Only refusals are parsed: an accepting OK (the common case) never contains `,false,`.
    let refusal = match command {
        CommandOut::Ok => text.contains(",false,"),
        CommandOut::Closed => true,
        _ => false,
    };
    if !refusal {
        return;
    }
    let reason = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| match command {
            CommandOut::Ok if v[2] == false => v[3].as_str().map(reason_of),
            CommandOut::Closed => v[2].as_str().map(reason_of),
            _ => None,
        });
    if let Some(reason) = reason {
        m.rejections.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Hook: an EVENT was refused. Counts it under `mls_gateway_errors_total{reason}` and logs one
/// line with the rule: kind, short id, the reason (never content or a full pubkey).
pub fn event_refused(ev: &Event, reason: &str) {
    let label = reason_of(reason);
    global()
        .errors
        .get_or_create(&ReasonLabel { reason: label })
        .inc();
    tracing::info!(
        target: "mls_relay::events",
        kind = ev.kind,
        event = %short_id(&ev.id),
        reason = %crate::logging::redact(reason),
        rule = label.as_str(),
        "event refused"
    );
}

/// Hook: an AUTH message was refused (`reason`: its `OK false` message).
pub fn auth_refused(reason: &str) {
    global()
        .auth_refused
        .get_or_create(&ReasonLabel {
            reason: reason_of(reason),
        })
        .inc();
}

/// Hook: a WebSocket connection was accepted (its permit taken).
pub fn connection_opened() {
    let m = global();
    m.connections.inc();
    m.connections_opened.inc();
}

/// Hook: a WebSocket connection ended (its permit dropped).
pub fn connection_closed() {
    global().connections.dec();
}

/// Hook: a connection was cut because its outbox went over a bound.
pub fn slow_reader_cut() {
    global().slow_reader_cuts.inc();
}

/// A relay rate limit refused something (`limit`: one of [`LIMITS`]).
pub fn rate_limited(limit: &str) {
    global()
        .rate_limited
        .get_or_create(&LimitLabel {
            limit: Limit::from_label(limit),
        })
        .inc();
}

/// An HTTP endpoint answered.
pub fn http_response(endpoint: &str, status: u16) {
    let labels = HttpLabels {
        endpoint: Endpoint::from_label(endpoint),
        status: Status::from_label(&status.to_string()),
    };
    global().http_responses.get_or_create(&labels).inc();
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
        global()
            .fanout_duration
            .observe(self.0.elapsed().as_secs_f64());
    }
}

/// Counts an accepted event by kind, and the gateway counters its kind implies (the rules run
/// inside the store's transaction, so the relay counts by the kind of what was accepted).
fn count_accepted(kind: u16, has_h: bool) {
    let m = global();
    m.events_processed
        .get_or_create(&KindLabel {
            kind: kind_value(kind),
        })
        .inc();
    match kind {
        443 | 30443 => {
            m.keypackages_stored.inc();
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
    m.groups_updated.inc();
    if membership {
        m.membership_updates.inc();
    }
}

/// The store, timed and counted. Behaves exactly like the store it wraps.
pub struct MeteredStore(Arc<dyn EventStore>);

impl MeteredStore {
    pub fn wrap(inner: Arc<dyn EventStore>) -> Arc<dyn EventStore> {
        Arc::new(MeteredStore(inner))
    }
}

fn timed<T>(op: DbOp, started: Instant, value: T) -> T {
    global()
        .db_duration
        .get_or_create(&OpLabel { op })
        .observe(started.elapsed().as_secs_f64());
    value
}

#[async_trait::async_trait]
impl EventStore for MeteredStore {
    async fn write(&self, event: Event, publisher: Publisher) -> StoreResult<WriteOutcome> {
        let (kind, has_h) = (event.kind, event.has_tag("h"));
        let refused = event.clone();
        let started = Instant::now();
        let outcome = timed(DbOp::Write, started, self.0.write(event, publisher).await);
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
            DbOp::Query,
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
            DbOp::Count,
            started,
            self.0.count(filters, bounds, now, scope, visible).await,
        )
    }

    async fn read_state(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        let started = Instant::now();
        timed(DbOp::State, started, self.0.read_state(f).await)
    }

    async fn read_state_brief(
        &self,
        f: &mut (dyn for<'s> FnMut(&'s dyn StateRead) -> StoreResult<()> + Send),
    ) -> StoreResult<()> {
        let started = Instant::now();
        timed(DbOp::State, started, self.0.read_state_brief(f).await)
    }

    async fn update_state(
        &self,
        f: Box<dyn for<'s> FnOnce(&'s mut dyn StateWrite) -> Result<(), Rejection> + Send>,
    ) -> StoreResult<Result<(), Rejection>> {
        let started = Instant::now();
        timed(DbOp::State, started, self.0.update_state(f).await)
    }

    async fn purge_expired(&self, now: u64) -> StoreResult<u64> {
        let started = Instant::now();
        timed(DbOp::Purge, started, self.0.purge_expired(now).await)
    }

    async fn health(&self) -> StoreResult<()> {
        let health = self.0.health().await;
        let m = global();
        m.store_health_checks.inc();
        if health.is_err() {
            m.store_health_failures.inc();
        }
        health
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
        timed(DbOp::Since, started, self.0.since(after, limit).await)
    }

    async fn committed_seq(&self) -> StoreResult<u64> {
        let started = Instant::now();
        timed(DbOp::CommittedSeq, started, self.0.committed_seq().await)
    }
}

/// The Prometheus text exposition (format 0.0.4) of every metric; `subscriptions` is read
/// from the subscription index at scrape time.
pub fn render(subscriptions: usize) -> String {
    let m = global();
    m.subscriptions
        .set(i64::try_from(subscriptions).unwrap_or(i64::MAX));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_text::encode(&mut out, &m.registry).expect("writing to a String cannot fail");
    out
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
        // Every enum value is its list's entry, in the same order.
        assert!(Kind::ALL
            .iter()
            .map(|k| k.as_str())
            .eq(KINDS.iter().copied()));
        assert!(DbOp::ALL
            .iter()
            .map(|o| o.as_str())
            .eq(DB_OPS.iter().copied()));
        for kind in KINDS.iter().filter(|k| **k != "other") {
            assert_eq!(kind_label(kind.parse().unwrap()), *kind);
        }
    }

    #[test]
    fn commands_are_sniffed_without_parsing() {
        assert_eq!(command_of(r#"["EVENT",{"id":"x"}]"#), "EVENT");
        assert_eq!(command_of(r#" [ "REQ" , "s", {}]"#), "REQ");
        assert_eq!(command_of("not json"), "");
        let f: Family<CommandInLabel, Counter> = Family::default();
        let command = CommandIn::from_label(command_of("garbage"));
        f.get_or_create(&CommandInLabel { command }).inc();
        let other = CommandInLabel {
            command: CommandIn::Other,
        };
        assert_eq!(f.get(&other).map(|c| c.get()), Some(1));
    }

    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h: HistogramFamily<OpLabel> = Family::new_with_constructor(latency_histogram);
        every(&h, DbOp::ALL, |op| OpLabel { op });
        let write = OpLabel { op: DbOp::Write };
        h.get_or_create(&write).observe(0.0003);
        h.get_or_create(&write).observe(20.0);
        let mut registry = Registry::default();
        registry.register("x", "help", h);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &registry).unwrap();
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

    /// One sample line of the text format: `name{labels} value`.
    fn parse_sample(line: &str) -> Option<(&str, f64)> {
        let (series, value) = line.rsplit_once(' ')?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().ok()?,
        };
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        let valid_name = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        let labels = &series[name_end..];
        let valid_labels = labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}'));
        (valid_name && valid_labels).then_some((series, value))
    }

    /// The exposition parses, and it has every `# HELP`/`# TYPE` line and every series (name
    /// and labels) the relay's own renderer exported before `prometheus-client`
    /// (`testdata/metrics-before.txt`, taken from a relay after some traffic; its HTTP series
    /// depend on the traffic and are left out), so dashboards and alerts keep working.
    #[test]
    fn exposition_parses_and_keeps_every_old_name_type_help_and_series() {
        // As `endpoint` does: the scrape counts itself first, so the HTTP family has a series
        // (prometheus-client leaves a family without any series out, HELP and TYPE included).
        http_response("metrics", 200);
        let out = render(3);
        let mut series = std::collections::HashSet::new();
        let mut typed = std::collections::HashMap::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                typed.insert(name.to_owned(), kind.to_owned());
            } else if line.starts_with("# HELP ") || line.is_empty() {
            } else {
                let (s, _) = parse_sample(line).unwrap_or_else(|| panic!("unparsable: {line}"));
                let name = &s[..s.find('{').unwrap_or(s.len())];
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|base| typed.get(*base).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(typed.contains_key(family), "{name} has no TYPE line");
                series.insert(s.to_owned());
            }
        }
        assert!(series.contains("mls_relay_subscriptions"), "{out}");
        assert!(out.contains("\nmls_relay_subscriptions 3\n"), "{out}");
        let before = include_str!("../testdata/metrics-before.txt");
        assert!(before.lines().count() > 200, "fixture truncated");
        for line in before.lines() {
            if line.starts_with('#') {
                assert!(out.contains(&format!("{line}\n")), "missing: {line}\n{out}");
            } else {
                assert!(series.contains(line), "missing series: {line}\n{out}");
            }
        }
    }
}
