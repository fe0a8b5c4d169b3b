//! `COUNT` (NIP-45): the same checks and scope as REQ, then the store's count of what this
//! connection may see (approximate when it stopped at `max_query_candidates`).

use super::Session;
use crate::subscriptions::check_filter_values;
use mls_proto::{relay, unix_now, Event, Filter};

impl Session {
    pub(super) async fn on_count(&mut self, sub_id: String, filters: Vec<Filter>) {
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
}
