//! A connection's EVENTs between arrival and `OK`: the checks on the verification pool, then
//! the store writes, each stage taken in arrival order (see [`InFlight`]). The session's run
//! loop polls it; `event` fills it.

use futures_util::stream::{FuturesOrdered, Stream, StreamExt};
use std::future::{ready, Future};
use std::pin::Pin;
use std::task::{Context, Poll};

/// One EVENT's store write (or its answer without one), resolving to its `OK` frame. Lazy:
/// nothing reaches the store writer before its first poll.
pub(super) type WriteFuture = Pin<Box<dyn Future<Output = String> + Send>>;

/// An `OK` that needs no write.
pub(super) fn answer(ok: String) -> WriteFuture {
    Box::pin(ready(ok))
}

/// One EVENT's checks on the pool, resolving to its (not yet started) write.
pub(super) type CheckFuture = Pin<Box<dyn Future<Output = WriteFuture> + Send>>;

/// A connection's EVENTs between arrival and `OK`, in two ordered stages. Checks run
/// concurrently on the pool and finish in any order; their results are taken in arrival order
/// and only then is each write started (first polled), so the writes reach the store writer in
/// arrival order, as one connection's writes must; the `OK`s come out in arrival order.
/// `len` counts both stages: the session's in-flight bound covers work queued on the pool.
/// The stages are allocated by the first EVENT and freed when the last is answered (an empty
/// `FuturesOrdered` still allocates, and most connections are idle or only read).
#[derive(Default)]
pub(super) struct InFlight(Option<Box<Stages>>);

#[derive(Default)]
struct Stages {
    checking: FuturesOrdered<CheckFuture>,
    writing: FuturesOrdered<WriteFuture>,
}

impl InFlight {
    pub(super) fn len(&self) -> usize {
        self.0
            .as_ref()
            .map_or(0, |s| s.checking.len() + s.writing.len())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn push_check(&mut self, check: CheckFuture) {
        self.0
            .get_or_insert_with(Default::default)
            .checking
            .push_back(check);
    }

    /// An answer that needs no check, sent in its turn after the earlier EVENTs' `OK`s.
    pub(super) fn push_answer(&mut self, ok: String) {
        self.push_check(Box::pin(ready(answer(ok))));
    }
}

impl Stream for InFlight {
    type Item = String;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<String>> {
        let Some(stages) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        // Checked events, oldest first: their writes are pushed (and so first polled, and
        // queued to the store writer) in arrival order.
        while let Poll::Ready(Some(write)) = stages.checking.poll_next_unpin(cx) {
            stages.writing.push_back(write);
        }
        let next = match stages.writing.poll_next_unpin(cx) {
            Poll::Ready(Some(ok)) => Poll::Ready(Some(ok)),
            Poll::Ready(None) if stages.checking.is_empty() => Poll::Ready(None),
            // Still checking: `checking` was polled above and will wake this task.
            _ => Poll::Pending,
        };
        if stages.checking.is_empty() && stages.writing.is_empty() {
            self.0 = None;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A check yields its (not yet started) write, as `on_event`'s do.
    #[allow(clippy::async_yields_async)]
    #[tokio::test]
    async fn oks_come_out_in_arrival_order_and_the_stages_are_freed_when_drained() {
        let mut in_flight = InFlight::default();
        assert!(
            in_flight.0.is_none(),
            "nothing allocated before the first EVENT"
        );
        let (slow_tx, slow_rx) = tokio::sync::oneshot::channel::<()>();
        in_flight.push_check(Box::pin(async move {
            let _ = slow_rx.await;
            answer("first".to_owned())
        }));
        in_flight.push_answer("second".to_owned());
        assert_eq!(in_flight.len(), 2);
        // The second is ready, but waits for the first.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), in_flight.next());
        assert!(
            waiting.await.is_err(),
            "the second came out before the first"
        );
        slow_tx.send(()).unwrap();
        assert_eq!(in_flight.next().await.as_deref(), Some("first"));
        assert_eq!(in_flight.next().await.as_deref(), Some("second"));
        assert!(in_flight.is_empty());
        assert!(
            in_flight.0.is_none(),
            "freed once the last EVENT is answered"
        );
        assert_eq!(in_flight.next().await, None);
        in_flight.push_answer("again".to_owned());
        assert_eq!(in_flight.next().await.as_deref(), Some("again"));
    }
}
