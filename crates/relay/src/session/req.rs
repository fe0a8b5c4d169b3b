//! `REQ`: registers the live subscription, serves the stored events this connection may see
//! (KeyPackage claims applied), `EOSE`, then releases the live events held back meanwhile.

use super::Session;
use crate::app::App;
use crate::subscriptions::{check_filter_values, Subscription};
use mls_gateway_rules::{within_limits, ReadRefusal, Viewer};
use mls_proto::{relay, unix_now, Event, Filter, Hex32};
use mls_store::{ReadBounds, ReadScope};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

impl Session {
    pub(super) async fn on_req(&mut self, sub_id: String, filters: Vec<Filter>) {
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
        let served =
            crate::claims::apply(&*self.app.store, &self.app.gateway, &viewer, &found, now).await?;
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
