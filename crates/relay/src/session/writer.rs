//! The connection's socket as its session drives it, in the session's own task: reads client
//! frames, drains the outbox to the socket (flushing once per burst), and says goodbye (a slow
//! reader's NOTICE, the close frame at shutdown or at the connection's age).
//!
//! One task per connection, not a session task and a writer task: an idle connection then
//! holds one small future and no second task, split-stream lock or wake-up channel (see
//! docs/PERFORMANCE.md, "Memory per connection").

use crate::outbox::{CutReason, Outbox};
use crate::websocket::{self, Incoming};
use mls_proto::relay;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// How long a cut connection tries to deliver the NOTICE and close frame (they go out once the
/// client has read what the socket already holds): a client that never reads again must not
/// keep the socket and the task forever. Its outbox is already dropped, so this costs a socket
/// and at most one message in the WebSocket's write buffer. Long enough for a client that was
/// paused (a phone app in the background) to learn why it was closed.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(300);

/// At shutdown, how long a connection goes on sending what its session still queues (the
/// answers to its in-flight writes) before the close frame. Within Cloud Run's 10 s between
/// SIGTERM and SIGKILL, with room for the store to finish its commits.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// The close frame's reason at shutdown.
const SHUTTING_DOWN: &str = "relay shutting down";

/// Why the socket stopped being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The outbox was cut (a slow reader).
    Cut,
    /// Shutdown's drain time ran out.
    Shutdown,
    /// The outbox drained after the session's end.
    Finished,
    /// The socket failed.
    Failed,
}

impl End {
    /// The reason logged when the socket ends the session.
    pub(super) fn reason(self) -> &'static str {
        match self {
            End::Cut => "slow reader",
            End::Failed => "transport error",
            End::Shutdown | End::Finished => "relay shutting down",
        }
    }
}

/// What the socket has for the session: the client's next message, or the end of the
/// connection.
pub(super) enum Next {
    Frame(Option<Result<Incoming, websocket::Error>>),
    End(End),
    /// The relay began shutting down (and the drain has not started).
    Shutdown,
}

/// One connection's WebSocket and its outbox.
pub(super) struct Socket {
    ws: websocket::Upgraded,
    outbox: Arc<Outbox>,
    /// Bytes fed to the socket since its last flush: given back to the outbox's bounds once
    /// flushed (or when the socket is dropped).
    unflushed: usize,
    /// Messages fed since the last flush.
    fed: bool,
    /// Set at shutdown: the time left to drain. Boxed: only a closing connection needs it.
    drain: Option<Pin<Box<Sleep>>>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.outbox.release(self.unflushed);
    }
}

impl Socket {
    pub(super) fn new(ws: websocket::Upgraded, outbox: Arc<Outbox>) -> Self {
        Socket {
            ws,
            outbox,
            unflushed: 0,
            fed: false,
            drain: None,
        }
    }

    /// Shutdown began: what is queued may still go out for [`SHUTDOWN_DRAIN`].
    pub(super) fn start_drain(&mut self) {
        if self.drain.is_none() {
            self.drain = Some(Box::pin(tokio::time::sleep(SHUTDOWN_DRAIN)));
        }
    }

    pub(super) fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Writes the outbox and, when `read`, reads the client's next frame. A cut or the end of
    /// the shutdown drain is checked first, so a backlog never hides them, and interrupts a
    /// write the client is not reading.
    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>, read: bool) -> Poll<Next> {
        if let Some(end) = self.poll_stop(cx) {
            return Poll::Ready(Next::End(end));
        }
        if let Poll::Ready(Err(())) = self.poll_write(cx) {
            return Poll::Ready(Next::End(End::Failed));
        }
        // Checked after `poll_write` registered this task with the outbox, which the relay's
        // shutdown wakes (`OutboxBudget::shut_down`): no wake-up is missed.
        if !self.draining() && self.outbox.relay_shutting_down() {
            return Poll::Ready(Next::Shutdown);
        }
        if read {
            if let Poll::Ready(frame) = self.ws.poll_next(cx) {
                return Poll::Ready(Next::Frame(frame));
            }
        }
        Poll::Pending
    }

    /// Resolves with the end of the connection while its session works on something else (a
    /// message's handler, the answers still in flight): the outbox goes on being written, and
    /// a shutdown starts the drain.
    pub(super) async fn ended(&mut self) -> End {
        std::future::poll_fn(|cx| loop {
            match self.poll_next(cx, false) {
                Poll::Ready(Next::End(end)) => return Poll::Ready(end),
                Poll::Ready(Next::Shutdown) => self.start_drain(),
                _ => return Poll::Pending,
            }
        })
        .await
    }

    fn poll_stop(&mut self, cx: &mut Context<'_>) -> Option<End> {
        if self.outbox.cut_reason().is_some() {
            return Some(End::Cut);
        }
        let deadline = self.drain.as_mut()?;
        deadline
            .as_mut()
            .poll(cx)
            .is_ready()
            .then_some(End::Shutdown)
    }

    /// Feeds every queued message to the socket and flushes once (one syscall for a REQ's
    /// events and EOSE, not one each). Ready(Ok) once everything queued is flushed (the
    /// outbox then wakes this task for the next message); Pending while the socket is busy.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        loop {
            // Registered before looking at the queue, so a message queued meanwhile wakes us.
            self.outbox.register(cx.waker());
            loop {
                match self.ws.poll_ready(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(())) => {}
                }
                let Some(text) = self.outbox.try_pop() else {
                    break;
                };
                self.unflushed += text.len();
                self.fed = true;
                crate::metrics::message_out(&text);
                if self.ws.feed_text(&text).is_err() {
                    return Poll::Ready(Err(()));
                }
            }
            // A pong the socket could not take when the ping was read goes out here.
            if !self.fed && self.ws.pending() == 0 {
                return Poll::Ready(Ok(()));
            }
            match self.ws.poll_flush(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                Poll::Ready(Ok(())) => {
                    self.outbox.release(std::mem::take(&mut self.unflushed));
                    self.fed = false;
                    self.outbox.shrink_if_empty();
                }
            }
        }
    }

    /// After the session: sends what its outbox still holds (within the shutdown drain), then
    /// says goodbye — the NOTICE of a cut, the close frame with `farewell` or the shutdown
    /// reason — and closes the socket. `ended` is how the socket already ended, if it did.
    pub(super) async fn close(&mut self, ended: Option<End>, farewell: Option<&'static str>) {
        let end = match ended {
            Some(end) => end,
            None => std::future::poll_fn(|cx| self.poll_drained(cx)).await,
        };
        // Nothing more is queued; what still is, is dropped and its bytes given back.
        self.outbox.close();
        let going_away = |reason| Some((websocket::code::GOING_AWAY, reason));
        match end {
            End::Cut => {
                let notice = relay::notice(&cut_notice(&self.outbox));
                let ws = &mut self.ws;
                let goodbye = async {
                    let _ = ws.send_text(&notice).await;
                    let _ = ws.send_close(going_away("slow reader")).await;
                    let _ = ws.close().await;
                };
                let _ = tokio::time::timeout(FAREWELL_TIMEOUT, goodbye).await;
                return;
            }
            End::Shutdown => {
                let _ = self.ws.send_close(going_away(SHUTTING_DOWN)).await;
            }
            End::Finished => {
                let frame = match farewell {
                    Some(reason) => going_away(reason),
                    None if self.outbox.relay_shutting_down() => going_away(SHUTTING_DOWN),
                    None => None,
                };
                let _ = self.ws.send_close(frame).await;
            }
            End::Failed => {}
        }
        let _ = self.ws.close().await;
    }

    /// Ready once the outbox is written and flushed, or the connection ended otherwise; a
    /// shutdown meanwhile starts the drain.
    fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        loop {
            if let Some(end) = self.poll_stop(cx) {
                return Poll::Ready(end);
            }
            match self.poll_write(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(End::Finished),
                Poll::Ready(Err(())) => return Poll::Ready(End::Failed),
                Poll::Pending => {}
            }
            if self.draining() || !self.outbox.relay_shutting_down() {
                return Poll::Pending;
            }
            self.start_drain();
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
