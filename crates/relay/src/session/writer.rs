//! The connection's writer task: drains the outbox to the socket, flushing once per burst, and
//! says goodbye (a slow reader's NOTICE, the close frame at shutdown or at the connection's age).

use crate::outbox::{CutReason, Outbox};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use mls_proto::relay;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

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
pub(super) async fn write_outbox(
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
        _ = crate::shutdown::until_set(&mut cut) => End::Cut,
        // At shutdown the session stops reading, answers its in-flight writes and ends: what
        // it queued goes out first (`End::Finished`), within `SHUTDOWN_DRAIN`. The deadline
        // also ends a write the client is not reading, so the session's own waiting answer
        // (`send_wait`) is released.
        _ = async {
            crate::shutdown::until_set(&mut stop).await;
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
