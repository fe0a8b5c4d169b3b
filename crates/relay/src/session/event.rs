//! `EVENT`: the relay checks (`ingest`), then the store's write (the gateway rules run inside
//! its transaction); the `OK` goes out in arrival order once the write is answered.
//! Ephemeral events are never stored: they join the commit stream at once.

use super::Session;
use crate::ingest;
use futures_util::StreamExt;
use mls_proto::{relay, unix_now, Event, KindClass};
use mls_store::{Publisher, WriteOutcome};
use std::sync::Arc;

impl Session {
    pub(super) async fn on_event(&mut self, ev: Event) {
        let id = ev.id.to_hex();
        let authed = self.conn.authed();
        // The rate limit first: a flood of badly signed events must not buy signature checks.
        if let Err(reason) = self
            .app
            .rate_limits
            .check_event(&authed, self.ip)
            .and_then(|()| {
                ingest::check(
                    &self.app.config.limitation,
                    &self.app.access,
                    &ev,
                    &authed,
                    unix_now(),
                )
            })
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
    pub(super) async fn settle_writes(&mut self) {
        while let Some(ok) = self.in_flight.next().await {
            self.conn.send(ok);
        }
    }
}
