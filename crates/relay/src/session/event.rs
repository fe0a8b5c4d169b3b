//! `EVENT`: the relay checks (`ingest`, signature included) on the verification pool, then
//! the store's write (the gateway rules run inside its transaction); the `OK` goes out in
//! arrival order once the write is answered. Ephemeral events are never stored: they join the
//! commit stream once checked, in their turn.

use super::in_flight::{answer, WriteFuture};
use super::Session;
use crate::{ingest, verify_pool};
use futures_util::StreamExt;
use mls_proto::{relay, unix_now, Event, KindClass};
use mls_store::{Publisher, WriteOutcome};
use std::sync::Arc;

impl Session {
    // The check future yields the write future on purpose: `InFlight` starts it later, in
    // arrival order.
    #[allow(clippy::async_yields_async)]
    pub(super) async fn on_event(&mut self, ev: Event) {
        let id = ev.id.to_hex();
        let authed = self.conn.authed();
        // The rate limit first, here: a flood of badly signed events must not buy signature
        // checks.
        if let Err(reason) = self.app.rate_limits.check_event(&authed, self.ip) {
            crate::metrics::event_refused(&ev, &reason);
            self.in_flight.push_answer(relay::ok(&id, false, &reason));
            return;
        }
        let app = self.app.clone();
        let checked = verify_pool::run(move || {
            let verdict = ingest::check(
                &app.config.limitation,
                &app.access,
                &ev,
                &authed,
                unix_now(),
            );
            (ev, authed, verdict)
        });
        let app = self.app.clone();
        self.in_flight.push_check(Box::pin(async move {
            let Some((ev, authed, verdict)) = checked.await else {
                tracing::error!(event = %id, "the event's checks panicked");
                return answer(relay::ok(&id, false, "error: could not check the event"));
            };
            if let Err(reason) = verdict {
                crate::metrics::event_refused(&ev, &reason);
                return answer(relay::ok(&id, false, &reason));
            }
            if ev.class() == KindClass::Ephemeral {
                // Delivered live, never stored: nothing to commit before the OK. It joins
                // the commit stream (which live fan-out consumes) in its turn.
                let announce: WriteFuture = Box::pin(async move {
                    app.store.commits().announce(Arc::new(ev));
                    relay::ok(&id, true, "")
                });
                return announce;
            }
            let write: WriteFuture = Box::pin(async move {
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
            });
            write
        }));
    }

    /// Waits for this connection's pending EVENTs, checks and writes (read-your-writes for
    /// REQ/COUNT).
    pub(super) async fn settle_writes(&mut self) {
        while let Some(ok) = self.in_flight.next().await {
            self.conn.send(ok);
        }
    }
}
