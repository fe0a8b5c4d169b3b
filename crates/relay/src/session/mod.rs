//! One WebSocket session: reads client messages in order and dispatches each to its command,
//! one file per client message (`event`, `req`, `count`, `close`, `auth`), each parsing and
//! answering its own message; `read` holds the checks REQ and COUNT share, `writer` drains the
//! connection's outbox to the socket.
//!
//! EVENTs are checked on the verification pool and written concurrently (so one connection's
//! burst uses every core and shares a group commit) but their writes are enqueued and answered
//! in arrival order (`event::InFlight`); a REQ or COUNT first waits for the
//! connection's earlier EVENTs, so a client always reads its own writes.

mod auth;
mod close;
mod count;
mod event;
mod read;
mod req;
mod writer;

use crate::app::App;
use crate::connection::ConnectionHandle;
use crate::ingest;
use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use mls_proto::{relay, ClientMessage, MessageError};
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

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
    challenge: String,
    /// The client's address (rate limits, logs).
    ip: IpAddr,
    subs: HashSet<Arc<str>>,
    in_flight: event::InFlight,
}

/// Runs one WebSocket session from the upgrade until the client leaves, the connection is cut
/// (a slow reader) or reaches its age, or the relay shuts down; then answers the writes still
/// in flight, forgets the connection's subscriptions and waits for its writer.
pub async fn run(app: Arc<App>, socket: WebSocket, ip: IpAddr) {
    let (sink, mut stream) = socket.split();
    let id = app.next_connection_id();
    let limits = &app.config.limitation;
    // Known to the relay-wide outbox budget until this function returns.
    let (outbox, _registration) =
        app.outboxes
            .open(id, limits.outbox_capacity, limits.outbox_max_bytes);
    let conn = Arc::new(ConnectionHandle::new(id, outbox.clone()));
    let mut shutdown = app.shutdown.clone();
    let max_in_flight = MAX_IN_FLIGHT
        .min(app.config.limitation.outbox_capacity / 2)
        .max(1);

    let mut reader_slow = outbox.cut_flag();
    // Why the session ended, when its client should be told in the close frame.
    let farewell = Arc::new(std::sync::OnceLock::new());
    let writer = tokio::spawn(writer::write_outbox(
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
        in_flight: event::InFlight::default(),
    };
    tracing::info!(conn = conn.id, ip = %ip, "connection opened");
    session.conn.send(relay::auth(&session.challenge));

    let reason = loop {
        tokio::select! {
            _ = crate::shutdown::until_set(&mut shutdown) => break "relay shutting down",
            _ = crate::shutdown::until_set(&mut reader_slow) => break "slow reader",
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

impl Session {
    /// Parses one client message and hands it to its command (one file each); what cannot
    /// be parsed is answered here.
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
