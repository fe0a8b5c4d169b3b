//! One WebSocket session: reads client messages in order and dispatches each to its command,
//! one file per client message (`event`, `req`, `count`, `close`, `auth`), each parsing and
//! answering its own message; `read` holds the checks REQ and COUNT share, `writer` is the
//! socket: it reads frames and drains the connection's outbox, in the session's own task.
//!
//! EVENTs are checked on the verification pool and written concurrently (so one connection's
//! burst uses every core and shares a group commit) but their writes are enqueued and answered
//! in arrival order (`in_flight::InFlight`); a REQ or COUNT first waits for the
//! connection's earlier EVENTs, so a client always reads its own writes.

mod auth;
mod close;
mod count;
mod event;
mod in_flight;
mod read;
mod req;
mod writer;

use crate::app::App;
use crate::connection::ConnectionHandle;
use crate::ingest;
use crate::outbox::Registration;
use crate::websocket::{self, Incoming};
use futures_util::StreamExt;
use mls_proto::{relay, ClientMessage, MessageError};
use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Sleep;
use writer::{End, Next, Socket};

/// EVENT writes one connection may have in flight before it stops reading (and at most half
/// its outbox, so a burst of OKs to a client that is reading never overflows it).
const MAX_IN_FLIGHT: usize = 256;

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

/// The state of one session: its connection, its AUTH challenge, its subscriptions and its
/// EVENT writes in flight.
struct Session {
    app: Arc<App>,
    conn: Arc<ConnectionHandle>,
    /// The AUTH challenge's 16 random bytes (sent and compared as hex, [`Session::challenge`]):
    /// inline, not a `String` on the heap.
    challenge: [u8; 16],
    /// The client's address (rate limits, logs).
    ip: IpAddr,
    subs: HashSet<Arc<str>>,
    in_flight: in_flight::InFlight,
}

/// Everything one open connection holds: its session, its socket and their timers. The
/// connection's task is this struct and the small future that drives it (see `run`).
struct Connection<G> {
    session: Session,
    socket: Socket,
    /// The connection's age limit (`None` = no limit).
    expires: Option<Pin<Box<Sleep>>>,
    max_in_flight: usize,
    /// Known to the relay-wide outbox budget until the connection is dropped.
    _registration: Registration,
    /// Released when the connection is dropped (per-IP permit, open-session count).
    _guards: G,
}

/// A WebSocket connection's task: hyper's upgrade (once the 101 response is sent), then the
/// session ([`run`]) over the upgraded connection, with messages up to `max_message` bytes.
/// A failed upgrade (the client left) has nobody to tell.
///
/// Combinators, not an `async` block: a block keeps what it captures (the app, the guards)
/// beside the session's future for the connection's life; `then` holds them only until the
/// upgrade.
pub fn upgrade<G: Send + 'static>(
    app: Arc<App>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    max_message: usize,
    ip: IpAddr,
    guards: G,
) -> impl Future<Output = ()> + Send {
    use futures_util::future::{FutureExt, OptionFuture};
    on_upgrade
        .then(move |upgraded| {
            OptionFuture::from(upgraded.ok().map(|upgraded| {
                let io = hyper_util::rt::TokioIo::new(upgraded);
                run(app, websocket::WebSocket::new(io, max_message), ip, guards)
            }))
        })
        .map(|_| ())
}

/// One WebSocket session from the upgrade until the client leaves, the connection is cut (a
/// slow reader) or reaches its age, or the relay shuts down; then it answers the writes still
/// in flight, forgets the connection's subscriptions, sends what its outbox holds and closes.
/// Reading, handling and writing all run in this one task (see `writer`); `guards` are
/// dropped at the very end.
///
/// Not an `async fn`: the state is built here and the returned future uses it in place, so
/// the task holds it once (an `async fn` keeps its arguments beside what it builds from them).
pub fn run<G: Send + 'static>(
    app: Arc<App>,
    socket: websocket::Upgraded,
    ip: IpAddr,
    guards: G,
) -> impl Future<Output = ()> + Send {
    let id = app.next_connection_id();
    let limits = &app.config.limitation;
    let (outbox, registration) =
        app.outboxes
            .open(id, limits.outbox_capacity, limits.outbox_max_bytes);
    let max_in_flight = MAX_IN_FLIGHT.min(limits.outbox_capacity / 2).max(1);
    let expires = connection_lifetime(app.config.server.max_connection_age_seconds)
        .map(|lifetime| Box::pin(tokio::time::sleep(lifetime)));
    let conn = Arc::new(ConnectionHandle::new(id, outbox.clone()));
    let mut connection = Connection {
        socket: Socket::new(socket, outbox),
        session: Session {
            challenge: rand::random(),
            app,
            conn,
            ip,
            subs: HashSet::new(),
            in_flight: in_flight::InFlight::default(),
        },
        expires,
        max_in_flight,
        _registration: registration,
        _guards: guards,
    };
    async move { connection.serve().await }
}

impl<G> Connection<G> {
    async fn serve(&mut self) {
        let (id, ip) = (self.session.conn.id, self.session.ip);
        tracing::info!(conn = id, ip = %ip, "connection opened");
        self.session
            .conn
            .send(relay::auth(&self.session.challenge()));
        // How the socket ended, when it ended before the session.
        let mut ended = None;
        let reason = loop {
            let reading = self.session.in_flight.len() < self.max_in_flight;
            let (session, socket) = (&mut self.session, &mut self.socket);
            let expired = async {
                match self.expires.as_mut() {
                    Some(sleep) => sleep.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            // What woke the session, acted on below, after the select's futures are gone: a
            // message's handler then does not sit on top of them in the task's memory.
            let next = tokio::select! {
                biased;
                _ = expired => break "max connection age",
                Some(ok) = session.in_flight.next(), if !session.in_flight.is_empty() => {
                    session.conn.send(ok);
                    continue;
                }
                next = std::future::poll_fn(|cx| socket.poll_next(cx, reading)) => next,
            };
            match next {
                // Shutdown comes through the socket (its outbox is woken): an idle connection
                // holds no shutdown receiver or future of its own.
                Next::Shutdown => {
                    self.socket.start_drain();
                    break "relay shutting down";
                }
                Next::End(end) => {
                    ended = Some(end);
                    break end.reason();
                }
                // Boxed: an idle connection then holds a small future, not room for the
                // largest message handler (REQ with its query and claims). The socket goes on
                // writing meanwhile: a handler may wait for room in the outbox.
                Next::Frame(Some(Ok(Incoming::Text(text)))) => {
                    let handled = Box::pin(self.session.handle_text(text));
                    let work = while_writing(handled, &mut self.socket);
                    if let Err(end) = Box::pin(work).await {
                        ended = Some(end);
                        break end.reason();
                    }
                }
                Next::Frame(Some(Ok(Incoming::Binary(_)))) => self.session.conn.send(
                    relay::notice("invalid: binary frames are not supported, send JSON text"),
                ),
                Next::Frame(Some(Ok(Incoming::Close)) | None) => break "client closed",
                Next::Frame(Some(Err(_))) => break "transport error",
            }
        };
        tracing::info!(conn = id, ip = %ip, reason, "connection closed");
        // Boxed: only a closing connection needs room for its goodbye.
        Box::pin(self.goodbye(ended, reason)).await;
    }

    /// The end of a session: answers what was already accepted for writing (at shutdown too,
    /// within `SHUTDOWN_DRAIN`), tells a connection closed at its age why, forgets its
    /// subscriptions, then sends what its outbox holds and closes the socket.
    async fn goodbye(&mut self, mut ended: Option<End>, reason: &'static str) {
        let session = &mut self.session;
        if ended.is_none() {
            let answered = async {
                while let Some(ok) = session.in_flight.next().await {
                    session.conn.send(ok);
                }
            };
            ended = while_writing(answered, &mut self.socket).await.err();
        }
        // The socket ended first: the writes are awaited all the same, nobody can be told.
        while let Some(ok) = session.in_flight.next().await {
            session.conn.send(ok);
        }
        let mut farewell = None;
        if reason == "max connection age" {
            let max_age = session.app.config.server.max_connection_age_seconds;
            session.conn.send(relay::notice(&format!(
                "closing: this connection reached its maximum age \
                 (server.max_connection_age_seconds = {max_age}); reconnect"
            )));
            farewell = Some("max connection age reached, reconnect");
        }
        session
            .app
            .subscriptions
            .remove_connection(session.conn.id, &session.subs);
        session.subs.clear();
        self.socket.close(ended, farewell).await;
    }
}

/// Runs `work` (a message's handler, the answers still in flight) while the socket goes on
/// writing the outbox (and starts its drain at shutdown); Err when the connection ended
/// first (cut, failed, or the shutdown drain ran out; `work` is then dropped).
async fn while_writing<F: Future>(work: F, socket: &mut Socket) -> Result<F::Output, End> {
    tokio::pin!(work);
    tokio::select! {
        biased;
        out = &mut work => Ok(out),
        end = socket.ended() => Err(end),
    }
}

impl Session {
    /// This connection's AUTH challenge (NIP-42), hex.
    fn challenge(&self) -> String {
        hex::encode(self.challenge)
    }

    /// Parses one client message and hands it to its command (one file each); what cannot
    /// be parsed is answered here. `text` is the message as the socket read it: freed once
    /// parsed, before the command runs.
    async fn handle_text(&mut self, text: String) {
        crate::metrics::message_in(&text);
        let limits = &self.app.config.limitation;
        if text.len() > limits.max_message_length {
            let msg = format!(
                "invalid: message is {} bytes, max_message_length is {}",
                text.len(),
                limits.max_message_length
            );
            match ingest::sniff_event_id(&text) {
                Some(id) => self.conn.send(relay::ok(&id, false, &msg)),
                None => self.conn.send(relay::notice(&msg)),
            }
            return;
        }
        let message = ClientMessage::parse(&text);
        drop(text);
        match message {
            Ok(ClientMessage::Event(ev)) => self.on_event(*ev).await,
            Ok(ClientMessage::Req { sub_id, filters }) => self.on_req(sub_id, filters).await,
            Ok(ClientMessage::Count { sub_id, filters }) => self.on_count(sub_id, filters).await,
            Ok(ClientMessage::Close(sub_id)) => self.on_close(&sub_id),
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

#[cfg(test)]
mod size_tests {
    use std::future::Future;

    fn future_size<A, B, C, F: Future>(_: impl FnOnce(A, B, C, ()) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size5<A, B, C, D, F: Future>(_: impl FnOnce(A, B, C, D, ()) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle connection's task holds `run`'s future for the connection's whole life, so its
    /// size is memory per connection (docs/PERFORMANCE.md, "Memory per connection"): what only
    /// a message or the goodbye needs is boxed.
    #[test]
    fn the_future_an_idle_connection_holds_stays_small() {
        let run = future_size(super::run::<()>);
        let task = future_size5(super::upgrade::<()>);
        eprintln!("connection task future (upgrade, then run): {task} bytes");
        eprintln!(
            "session::run future: {run} bytes (socket {}, websocket {}, session {})",
            std::mem::size_of::<super::Socket>(),
            std::mem::size_of::<crate::websocket::Upgraded>(),
            std::mem::size_of::<super::Session>(),
        );
        assert!(run <= 1024, "session::run future is {run} bytes");
        // Tokio puts a task's future in a 128-byte-aligned cell beside a 128-byte header and
        // trailer: up to 496 bytes of future, the cell is 768 bytes; one more byte, 896.
        assert!(task <= 496, "a connection's task future is {task} bytes");
    }
}
