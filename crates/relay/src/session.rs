//! One WebSocket connection: reads client messages in order, answers them, and owns the
//! connection's outbox (bounded in messages and bytes, `outbox`) drained by a writer task.
//!
//! EVENTs are written concurrently (so one connection's burst shares a group commit) but their
//! writes are enqueued and answered in arrival order; a REQ or COUNT first waits for the
//! connection's earlier EVENTs, so a client always reads its own writes.

use crate::app::App;
use crate::outbox::{CutReason, Outbox};
use crate::subscriptions::{check_filter_values, Subscription};
use crate::{auth, ingest};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{FuturesOrdered, SplitSink};
use futures_util::{SinkExt, StreamExt};
use mls_gateway_rules::{within_limits, ReadRefusal, Viewer};
use mls_proto::{relay, unix_now, ClientMessage, Event, Filter, Hex32, KindClass, MessageError};
use mls_store::{Publisher, ReadBounds, ReadScope, WriteOutcome};
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// EVENT writes one connection may have in flight before it stops reading (and at most half
/// its outbox, so a burst of OKs to a client that is reading never overflows it).
const MAX_IN_FLIGHT: usize = 256;

/// How long a cut connection's writer tries to deliver the NOTICE and close frame (it goes out
/// once the client has read what the socket already holds): a client that never reads again
/// must not keep the socket and the writer forever. Its outbox is already dropped, so this
/// costs a socket and at most one message in the WebSocket's write buffer. Long enough for a
/// client that was paused (a phone app in the background) to learn why it was closed.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(300);

/// At shutdown, how long a connection's writer goes on sending what its session still queues
/// (the answers to its in-flight writes) before the close frame. Within Cloud Run's 10 s
/// between SIGTERM and SIGKILL, with room for the store to finish its commits.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// The close frame's reason at shutdown.
const SHUTTING_DOWN: &str = "relay shutting down";

/// How long this connection may stay open (`server.max_connection_age_seconds`): between 90 %
/// and 100 % of the setting, so connections opened together (after a deploy) do not all
/// reconnect at the same moment. `None` = no limit.
fn connection_lifetime(max_age_seconds: u64) -> Option<Duration> {
    if max_age_seconds == 0 {
        return None;
    }
    let max = Duration::from_secs(max_age_seconds);
    Some(max.mul_f64(rand::random::<f64>().mul_add(0.1, 0.9)))
}

/// What the rest of the relay holds of a connection: its outbox and who it is.
pub struct ConnectionHandle {
    pub id: u64,
    outbox: Arc<Outbox>,
    /// The pubkeys this connection authenticated as (NIP-42), as the gateway's viewer.
    authed: RwLock<Viewer>,
}

impl Drop for ConnectionHandle {
    fn drop(&mut self) {
        // No one can queue anything more: the writer sends what is queued and closes.
        self.outbox.finish();
    }
}

impl ConnectionHandle {
    /// Queues a message. A full outbox (in messages or bytes) means the client is not
    /// reading: it is disconnected rather than allowed to grow memory or stall the sender.
    pub fn send(&self, msg: String) {
        self.outbox.push(msg);
    }

    /// Queues a message of this connection's own answer, waiting for room in its outbox
    /// (see [`Outbox::push_wait`]).
    pub async fn send_wait(&self, msg: String) {
        self.outbox.push_wait(msg).await;
    }

    /// A handle with no socket behind it, and its outbox (tests).
    #[cfg(test)]
    pub(crate) fn detached(id: u64, capacity: usize) -> (Self, Arc<Outbox>) {
        let outbox = Outbox::detached(capacity, usize::MAX);
        let handle = ConnectionHandle {
            id,
            outbox: outbox.clone(),
            authed: RwLock::new(Viewer { authed: Vec::new() }),
        };
        (handle, outbox)
    }

    pub fn outbox_capacity(&self) -> usize {
        self.outbox.max_len()
    }

    pub fn outbox_max_bytes(&self) -> usize {
        self.outbox.max_bytes()
    }

    /// Cuts the connection because live events held back during a REQ outgrew the outbox.
    pub fn mark_slow(&self) {
        self.outbox.cut(CutReason::Held);
    }

    pub fn authed(&self) -> Vec<Hex32> {
        self.authed.read().expect("authed lock").authed.clone()
    }

    pub fn viewer(&self) -> Viewer {
        self.authed.read().expect("authed lock").clone()
    }

    /// Runs `f` with this connection's viewer, without copying it (fan-out calls this once
    /// per matching subscription).
    pub fn with_viewer<R>(&self, f: impl FnOnce(&Viewer) -> R) -> R {
        f(&self.authed.read().expect("authed lock"))
    }

    fn is_authed(&self) -> bool {
        !self.authed.read().expect("authed lock").authed.is_empty()
    }

    /// Adds `pk` to the connection's pubkeys; false when it already holds `max` others (the
    /// viewer is checked per delivered event, so its size must stay small).
    fn add_authed(&self, pk: Hex32, max: usize) -> bool {
        let list = &mut self.authed.write().expect("authed lock").authed;
        if list.contains(&pk) {
            return true;
        }
        if list.len() >= max {
            return false;
        }
        list.push(pk);
        true
    }
}

type WriteFuture = Pin<Box<dyn Future<Output = String> + Send>>;

struct Session {
    app: Arc<App>,
    conn: Arc<ConnectionHandle>,
    challenge: String,
    /// The client's address (rate limits, logs).
    ip: IpAddr,
    subs: HashSet<Arc<str>>,
    in_flight: FuturesOrdered<WriteFuture>,
}

pub async fn run(app: Arc<App>, socket: WebSocket, ip: IpAddr) {
    let (sink, mut stream) = socket.split();
    let id = app.next_connection_id();
    let limits = &app.config.limitation;
    // Known to the relay-wide outbox budget until this function returns.
    let (outbox, _registration) =
        app.outboxes
            .open(id, limits.outbox_capacity, limits.outbox_max_bytes);
    let conn = Arc::new(ConnectionHandle {
        id,
        outbox: outbox.clone(),
        authed: RwLock::new(Viewer { authed: Vec::new() }),
    });
    let mut shutdown = app.shutdown.clone();
    let max_in_flight = MAX_IN_FLIGHT
        .min(app.config.limitation.outbox_capacity / 2)
        .max(1);

    let mut reader_slow = outbox.cut_flag();
    // Why the session ended, when its client should be told in the close frame.
    let farewell = Arc::new(std::sync::OnceLock::new());
    let writer = tokio::spawn(write_outbox(
        sink,
        outbox,
        app.shutdown.clone(),
        farewell.clone(),
    ));
    let max_age = app.config.server.max_connection_age_seconds;
    let expired = async {
        match connection_lifetime(max_age) {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);

    let mut session = Session {
        challenge: hex::encode(rand::random::<[u8; 16]>()),
        app: app.clone(),
        conn: conn.clone(),
        ip,
        subs: HashSet::new(),
        in_flight: FuturesOrdered::new(),
    };
    tracing::info!(conn = conn.id, ip = %ip, "connection opened");
    session.conn.send(relay::auth(&session.challenge));

    let reason = loop {
        tokio::select! {
            _ = crate::app::until_set(&mut shutdown) => break "relay shutting down",
            _ = crate::app::until_set(&mut reader_slow) => break "slow reader",
            _ = &mut expired => break "max connection age",
            Some(ok) = session.in_flight.next(), if !session.in_flight.is_empty() => {
                session.conn.send(ok);
            }
            frame = stream.next(), if session.in_flight.len() < max_in_flight => match frame {
                // Boxed: an idle connection then holds a small future, not room for the
                // largest message handler (REQ with its query and claims).
                Some(Ok(Message::Text(text))) => Box::pin(session.handle_text(text.as_str())).await,
                Some(Ok(Message::Binary(_))) => session
                    .conn
                    .send(relay::notice("invalid: binary frames are not supported, send JSON text")),
                Some(Ok(Message::Close(_))) | None => break "client closed",
                Some(Err(_)) => break "transport error",
                Some(Ok(_)) => {} // ping/pong are answered by the WebSocket layer
            },
        }
    };
    tracing::info!(conn = conn.id, ip = %ip, reason, "connection closed");
    // Answer what was already accepted for writing before going away (at shutdown too: the
    // writer goes on sending for `SHUTDOWN_DRAIN`).
    while let Some(ok) = session.in_flight.next().await {
        session.conn.send(ok);
    }
    if reason == "max connection age" {
        session.conn.send(relay::notice(&format!(
            "closing: this connection reached its maximum age \
             (server.max_connection_age_seconds = {max_age}); reconnect"
        )));
        let _ = farewell.set("max connection age reached, reconnect");
    }
    app.subscriptions.remove_connection(conn.id, &session.subs);
    drop(session);
    drop(conn);
    let _ = writer.await;
}

/// How the writer's pumping ended.
enum End {
    Cut,
    /// Shutdown's drain time ran out.
    Shutdown,
    /// No sender left and the outbox drained.
    Finished,
    /// The socket failed.
    Failed,
}

/// The connection's writer: drains the outbox to the socket, flushing once per burst. A cut
/// connection (a slow reader) is told why and closed; so is everyone at shutdown. Both are
/// checked first and between messages, so a backlog never hides them; a cut also interrupts a
/// write the client is not reading.
async fn write_outbox(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    shutdown: watch::Receiver<bool>,
    farewell: Arc<std::sync::OnceLock<&'static str>>,
) {
    let close = |reason: &str| {
        Message::Close(Some(CloseFrame {
            code: 1001,
            reason: reason.to_owned().into(),
        }))
    };
    let mut cut = outbox.cut_flag();
    let mut stop = shutdown.clone();
    let end = tokio::select! {
        biased;
        _ = crate::app::until_set(&mut cut) => End::Cut,
        // At shutdown the session stops reading, answers its in-flight writes and ends: what
        // it queued goes out first (`End::Finished`), within `SHUTDOWN_DRAIN`. The deadline
        // also ends a write the client is not reading, so the session's own waiting answer
        // (`send_wait`) is released.
        _ = async {
            crate::app::until_set(&mut stop).await;
            tokio::time::sleep(SHUTDOWN_DRAIN).await;
        } => End::Shutdown,
        end = pump(&mut sink, &outbox) => end,
    };
    // Nothing more is queued; what still is, is dropped and its bytes given back.
    outbox.close();
    match end {
        End::Cut => {
            let notice = relay::notice(&cut_notice(&outbox));
            let farewell = async {
                let _ = sink.send(Message::Text(notice.into())).await;
                let _ = sink.send(close("slow reader")).await;
                let _ = sink.close().await;
            };
            let _ = tokio::time::timeout(FAREWELL_TIMEOUT, farewell).await;
            return;
        }
        End::Shutdown => {
            let _ = sink.send(close(SHUTTING_DOWN)).await;
        }
        End::Finished => {
            let frame = match farewell.get() {
                Some(reason) => close(reason),
                None if *shutdown.borrow() => close(SHUTTING_DOWN),
                None => Message::Close(None),
            };
            let _ = sink.send(frame).await;
        }
        End::Failed => {}
    }
    let _ = sink.close().await;
}

/// Writes the outbox to the socket until the connection is cut or shut down (then this future
/// is dropped by the caller), finished or failed.
async fn pump(sink: &mut SplitSink<WebSocket, Message>, outbox: &Outbox) -> End {
    /// Bytes taken from the outbox: given back once flushed, or when the write is abandoned.
    struct Taken<'a>(&'a Outbox, usize);
    impl Drop for Taken<'_> {
        fn drop(&mut self) {
            self.0.release(self.1);
        }
    }
    loop {
        let first = outbox.pop().await;
        let Some(first) = first else {
            return match outbox.cut_reason() {
                Some(_) => End::Cut,
                None => End::Finished,
            };
        };
        // Everything already queued goes out with one flush (one syscall for a REQ's events
        // and EOSE, not one each).
        let mut taken = Taken(outbox, 0);
        let mut next = Some(first);
        while let Some(text) = next.take() {
            taken.1 += text.len();
            crate::metrics::message_out(&text);
            if sink.feed(Message::Text(text.into())).await.is_err() {
                return End::Failed;
            }
            next = outbox.try_pop();
        }
        if sink.flush().await.is_err() {
            return End::Failed;
        }
    }
}

/// The NOTICE a cut connection gets, naming the limit it hit.
fn cut_notice(outbox: &Outbox) -> String {
    let detail = match outbox.cut_reason() {
        Some(CutReason::Count) => format!(
            "limitation.outbox_capacity: {} messages queued",
            outbox.max_len()
        ),
        Some(CutReason::Bytes) | None => format!(
            "limitation.outbox_max_bytes: {} bytes queued",
            outbox.max_bytes()
        ),
        Some(CutReason::Total) => "largest backlog while all connections' outboxes held \
             limitation.outbox_total_bytes"
            .to_owned(),
        Some(CutReason::Held) => format!(
            "live events held back during a REQ reached limitation.outbox_capacity ({}) or \
             limitation.outbox_max_bytes ({})",
            outbox.max_len(),
            outbox.max_bytes()
        ),
    };
    format!("error: outbox full, closing slow connection ({detail})")
}

impl Session {
    async fn handle_text(&mut self, text: &str) {
        crate::metrics::message_in(text);
        let limits = &self.app.config.limitation;
        if text.len() > limits.max_message_length {
            let msg = format!(
                "invalid: message is {} bytes, max_message_length is {}",
                text.len(),
                limits.max_message_length
            );
            match ingest::sniff_event_id(text) {
                Some(id) => self.conn.send(relay::ok(&id, false, &msg)),
                None => self.conn.send(relay::notice(&msg)),
            }
            return;
        }
        match ClientMessage::parse(text) {
            Ok(ClientMessage::Event(ev)) => self.on_event(*ev).await,
            Ok(ClientMessage::Req { sub_id, filters }) => self.on_req(sub_id, filters).await,
            Ok(ClientMessage::Count { sub_id, filters }) => self.on_count(sub_id, filters).await,
            Ok(ClientMessage::Close(sub_id)) => {
                if let Some(sub) = self.subs.take(sub_id.as_str()) {
                    self.app.subscriptions.remove(self.conn.id, &sub);
                }
            }
            Ok(ClientMessage::Auth(ev)) => self.on_auth(*ev),
            Err(MessageError::BadEvent {
                id: Some(id),
                reason,
            }) => self
                .conn
                .send(relay::ok(&id, false, &format!("invalid: {reason}"))),
            Err(MessageError::BadFilter { sub_id, reason }) => self
                .conn
                .send(relay::closed(&sub_id, &format!("invalid: {reason}"))),
            Err(e) => self.conn.send(relay::notice(&e.to_string())),
        }
    }

    async fn on_event(&mut self, ev: Event) {
        let id = ev.id.to_hex();
        let authed = self.conn.authed();
        // The rate limit first: a flood of badly signed events must not buy signature checks.
        if let Err(reason) = self
            .app
            .rate_limits
            .check_event(&authed, self.ip)
            .and_then(|()| ingest::check(&self.app, &ev, &authed, unix_now()))
        {
            crate::metrics::event_refused(&ev, &reason);
            self.conn.send(relay::ok(&id, false, &reason));
            return;
        }
        let app = self.app.clone();
        if ev.class() == KindClass::Ephemeral {
            // Delivered live, never stored: nothing to commit before the OK. It joins the
            // commit stream, which live fan-out consumes.
            app.store.commits().announce(Arc::new(ev));
            self.conn.send(relay::ok(&id, true, ""));
            return;
        }
        // Polled first in push order, so writes reach the store writer in arrival order.
        self.in_flight.push_back(Box::pin(async move {
            match app
                .store
                .write(
                    ev,
                    Publisher {
                        authed,
                        operator: false,
                    },
                )
                .await
            {
                // Live fan-out reads it from the commit stream (see `fanout`).
                Ok(WriteOutcome::Accepted) => relay::ok(&id, true, ""),
                Ok(WriteOutcome::Duplicate) => {
                    relay::ok(&id, true, "duplicate: already have this event")
                }
                Ok(WriteOutcome::Rejected(reason)) => relay::ok(&id, false, &reason),
                Err(e) => {
                    tracing::error!(error = %e, "event write failed");
                    relay::ok(&id, false, "error: could not store the event")
                }
            }
        }));
    }

    /// Waits for this connection's pending EVENT writes (read-your-writes for REQ/COUNT).
    async fn settle_writes(&mut self) {
        while let Some(ok) = self.in_flight.next().await {
            self.conn.send(ok);
        }
    }

    /// The checks REQ and COUNT share. On refusal the CLOSED has been sent; else the filters of
    /// the stored query, scoped to what this connection may see (security rule 8), and the
    /// read keys it holds, which the store keeps the query to (visibility as data).
    async fn admit_read(
        &mut self,
        sub_id: &str,
        filters: &[Filter],
    ) -> Option<(Vec<Filter>, ReadScope)> {
        let limits = &self.app.config.limitation;
        let refusal = if sub_id.chars().count() > limits.max_subid_length {
            Some(format!(
                "invalid: subscription id longer than max_subid_length ({})",
                limits.max_subid_length
            ))
        } else if filters.len() > limits.max_filters {
            Some(format!(
                "invalid: {} filters, max_filters is {}",
                filters.len(),
                limits.max_filters
            ))
        } else if self.app.auth_required() && !self.conn.is_authed() {
            Some("auth-required: this relay serves authenticated clients only".to_owned())
        } else {
            self.app
                .rate_limits
                .check_req(&self.conn.authed(), self.ip)
                .err()
        };
        if let Some(reason) = refusal {
            self.refuse_read(sub_id, &reason);
            return None;
        }
        self.settle_writes().await;
        let viewer = self.conn.viewer();
        let gateway = self.app.gateway.clone();
        // Replaced by the state read below (which either refuses or gives both).
        let mut verdict = Ok((Vec::new(), ReadScope::everything()));
        let read = self
            .app
            .store
            .read_state(&mut |state| {
                verdict = gateway.check_read(&viewer, filters, state).map(|()| {
                    (
                        gateway.scope_reads(&viewer, filters, state),
                        gateway.read_scope(&viewer, state),
                    )
                });
                Ok(())
            })
            .await;
        let reason = match (read, verdict) {
            (Err(e), _) => {
                tracing::error!(error = %e, "state read failed");
                "error: could not read relay state".to_owned()
            }
            (Ok(()), Ok(scoped)) => return Some(scoped),
            (Ok(()), Err(ReadRefusal::AuthRequired(m) | ReadRefusal::Restricted(m))) => m,
        };
        self.refuse_read(sub_id, &reason);
        None
    }

    fn read_bounds(&self) -> ReadBounds {
        let limits = &self.app.config.limitation;
        ReadBounds {
            max_limit: limits.max_limit,
            max_candidates: limits.max_query_candidates,
        }
    }

    fn refuse_read(&self, sub_id: &str, reason: &str) {
        if reason.starts_with("auth-required:") {
            self.conn.send(relay::auth(&self.challenge));
        }
        self.conn.send(relay::closed(sub_id, reason));
    }

    async fn on_req(&mut self, sub_id: String, filters: Vec<Filter>) {
        let limits = &self.app.config.limitation;
        if !self.subs.contains(sub_id.as_str()) && self.subs.len() >= limits.max_subscriptions {
            let reason = format!(
                "rate-limited: {} open subscriptions, max_subscriptions is {}",
                self.subs.len(),
                limits.max_subscriptions
            );
            self.conn.send(relay::closed(&sub_id, &reason));
            return;
        }
        if let Err(reason) = check_filter_values(&filters, limits.max_filter_values) {
            if let Some(old) = self.subs.take(sub_id.as_str()) {
                self.app.subscriptions.remove(self.conn.id, &old);
            }
            self.conn.send(relay::closed(&sub_id, &reason));
            return;
        }
        let Some((scoped, scope)) = self.admit_read(&sub_id, &filters).await else {
            // A refused REQ that reuses an id ends the old subscription too.
            if let Some(old) = self.subs.take(sub_id.as_str()) {
                self.app.subscriptions.remove(self.conn.id, &old);
            }
            return;
        };
        let sub_id: Arc<str> = Arc::from(sub_id);
        // Registered before the query so nothing committed meanwhile is missed; live events
        // are held back until EOSE, and what was committed before is left to the query.
        // "Before" is the store's own position: with several instances on one database,
        // this process may not have heard of every commit yet.
        let after_seq = committed_seq(&self.app).await;
        let sub = Arc::new(Subscription::new(
            sub_id.clone(),
            filters,
            self.conn.clone(),
            after_seq,
        ));
        let max_bytes = self.app.config.limitation.max_subscription_bytes;
        if let Err(reason) = self.app.subscriptions.try_insert(sub.clone(), max_bytes) {
            self.subs.remove(&sub_id);
            self.conn.send(relay::closed(&sub_id, &reason));
            return;
        }
        self.subs.insert(sub_id.clone());

        let (results, complete) = match self.stored_results(&sub.filters, &scoped, &scope).await {
            Ok(r) => r,
            Err(reason) => {
                self.app.subscriptions.remove(self.conn.id, &sub_id);
                self.subs.remove(&sub_id);
                self.refuse_read(&sub_id, &reason);
                return;
            }
        };
        // Events committed between registration and the query's snapshot may be in both
        // the answer and, later, live delivery: the answer's ids are kept up to this seq.
        let served_upto = if results.is_empty() {
            0
        } else {
            committed_seq(&self.app).await
        };
        let mut sent = HashSet::with_capacity(results.len());
        for (id, json) in results {
            // Waits for room: a reading client gets an answer larger than its outbox.
            self.conn.send_wait(relay::event(&sub_id, &json)).await;
            sent.insert(id);
        }
        if !complete {
            // What was found is sent; the rest would cost more than one read may. The
            // subscription ends (no EOSE: the stored part is not whole).
            self.app.subscriptions.remove(self.conn.id, &sub_id);
            self.subs.remove(&sub_id);
            let reason = format!(
                "invalid: this query examined max_query_candidates ({}) stored events; the events sent are a partial answer, narrow the filters (since/until, authors, kinds, tags) for the rest",
                self.app.config.limitation.max_query_candidates
            );
            self.conn.send(relay::closed(&sub_id, &reason));
            return;
        }
        self.conn.send(relay::eose(&sub_id));
        sub.release_pending(sent, served_upto);
    }

    /// Stored events for a REQ, visible to this connection, newest first, with KeyPackage
    /// claims applied, and whether the read was whole (false: stopped at
    /// `max_query_candidates`). `scoped` is the query [`Session::admit_read`] made of `filters`,
    /// `scope` the read keys this connection holds.
    async fn stored_results(
        &mut self,
        filters: &[Filter],
        scoped: &[Filter],
        scope: &ReadScope,
    ) -> Result<(Vec<(Hex32, Arc<str>)>, bool), String> {
        if filters.iter().all(|f| f.limit == Some(0)) {
            return Ok((Vec::new(), true));
        }
        let viewer = self.conn.viewer();
        let gateway = self.app.gateway.clone();
        let visible =
            |ev: &Event, state: &dyn mls_store::StateRead| gateway.may_see(&viewer, ev, state);
        let now = unix_now();
        let bounds = self.read_bounds();
        let found = self
            .app
            .store
            .query(scoped, bounds, now, scope, &visible)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "query failed");
                "error: could not run the query".to_owned()
            })?;
        let complete = found.complete;
        // The scoped filters may split one filter in several: each keeps its own `limit`.
        let found = within_limits(filters, bounds.max_limit, found.value, |s| &s.event);
        if found.is_empty() {
            self.refuse_hidden_ids(filters, &viewer, bounds, now)
                .await?;
        }
        let served = crate::claims::apply(&self.app, &viewer, &found, now).await?;
        let events = found
            .into_iter()
            .filter(|s| served.as_ref().is_none_or(|ids| ids.contains(&s.event.id)))
            .map(|s| (s.event.id, s.json))
            .collect();
        Ok((events, complete))
    }

    /// A REQ that served nothing while an event it asked for by `ids` exists but is hidden
    /// from this connection: refused with why (`CLOSED auth-required:` / `restricted:`),
    /// rather than an empty EOSE, when every filter asked by `ids`. Whether such an event
    /// exists is looked up by the ids alone, so a filter's other fields (`#p`, `kinds`,
    /// `since`…) cannot probe who it is for.
    async fn refuse_hidden_ids(
        &mut self,
        filters: &[Filter],
        viewer: &Viewer,
        bounds: ReadBounds,
        now: u64,
    ) -> Result<(), String> {
        let probe: Vec<Filter> = filters
            .iter()
            .filter(|f| f.limit != Some(0) && !f.is_empty_match())
            .filter_map(|f| {
                f.ids.as_ref().map(|ids| Filter {
                    ids: Some(ids.clone()),
                    ..Filter::default()
                })
            })
            .collect();
        if probe.is_empty() {
            return Ok(());
        }
        let gateway = self.app.gateway.clone();
        let hidden = AtomicBool::new(false);
        let spot_hidden = |ev: &Event, state: &dyn mls_store::StateRead| {
            if !gateway.may_see(viewer, ev, state) {
                hidden.store(true, Ordering::Relaxed);
            }
            false
        };
        self.app
            .store
            // Every event, in scope or not: this lookup is for the hidden ones.
            .query(&probe, bounds, now, &ReadScope::everything(), &spot_hidden)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "query failed");
                "error: could not run the query".to_owned()
            })?;
        if !hidden.into_inner() {
            return Ok(());
        }
        let mut verdict = Ok(());
        self.app
            .store
            .read_state(&mut |state| {
                verdict = gateway.check_hidden_result(viewer, filters, state);
                Ok(())
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "state read failed");
                "error: could not read relay state".to_owned()
            })?;
        verdict.map_err(|(ReadRefusal::AuthRequired(m) | ReadRefusal::Restricted(m))| m)
    }

    async fn on_count(&mut self, sub_id: String, filters: Vec<Filter>) {
        let max_values = self.app.config.limitation.max_filter_values;
        if let Err(reason) = check_filter_values(&filters, max_values) {
            self.conn.send(relay::closed(&sub_id, &reason));
            return;
        }
        let Some((scoped, scope)) = self.admit_read(&sub_id, &filters).await else {
            return;
        };
        let viewer = self.conn.viewer();
        let gateway = self.app.gateway.clone();
        let visible =
            move |ev: &Event, state: &dyn mls_store::StateRead| gateway.may_see(&viewer, ev, state);
        let bounds = self.read_bounds();
        match self
            .app
            .store
            .count(&scoped, bounds, unix_now(), &scope, &visible)
            .await
        {
            Ok(n) if n.complete => self.conn.send(relay::count(&sub_id, n.value)),
            // Stopped at max_query_candidates: what was counted so far, a lower bound.
            Ok(n) => self.conn.send(relay::count_approximate(&sub_id, n.value)),
            Err(e) => {
                tracing::error!(error = %e, "count failed");
                self.conn
                    .send(relay::closed(&sub_id, "error: could not count"));
            }
        }
    }

    fn on_auth(&mut self, ev: Event) {
        let id = ev.id.to_hex();
        let max = self.app.config.auth.max_pubkeys_per_connection;
        let result = self
            .app
            .rate_limits
            .check_auth(self.conn.id, self.ip)
            .and_then(|()| auth::verify(&self.app, &ev, &self.challenge, unix_now()))
            .and_then(|pk| {
                if self.conn.add_authed(pk, max) {
                    Ok(pk)
                } else {
                    Err(format!(
                        "restricted: this connection is already authenticated as {max} pubkeys \
                         (auth.max_pubkeys_per_connection); open another connection"
                    ))
                }
            })
            .inspect_err(|reason| crate::metrics::auth_refused(reason));
        match result {
            Ok(pk) => {
                tracing::info!(conn = self.conn.id, pubkey = %mls_proto::short_pubkey(&pk), "authenticated");
                self.conn.send(relay::ok(&id, true, ""));
            }
            Err(reason) => self.conn.send(relay::ok(&id, false, &reason)),
        }
    }
}

/// The store's committed `seq` ([`mls_store::EventStore::committed_seq`]); when the store
/// cannot say, what this process has heard of (the query that follows fails the same way).
async fn committed_seq(app: &App) -> u64 {
    match app.store.committed_seq().await {
        Ok(seq) => seq,
        Err(e) => {
            tracing::warn!(error = %e, "committed seq unavailable; using this process's");
            app.store.commits().last_seq()
        }
    }
}

#[cfg(test)]
mod lifetime_tests {
    use super::connection_lifetime;
    use std::time::Duration;

    #[test]
    fn a_connection_lives_90_to_100_percent_of_the_max_age_or_forever_at_zero() {
        assert_eq!(connection_lifetime(0), None);
        for _ in 0..1000 {
            let d = connection_lifetime(3000).unwrap();
            assert!(
                d >= Duration::from_secs(2700) && d <= Duration::from_secs(3000),
                "{d:?}"
            );
        }
    }
}
