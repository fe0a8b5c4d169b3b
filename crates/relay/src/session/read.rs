//! What `REQ` and `COUNT` share: the limits, auth and rate checks, the gateway's read check and
//! the reader's scope, and the refusal (`CLOSED`, with an `AUTH` challenge when it asks for one).

use super::Session;
use mls_gateway_rules::ReadRefusal;
use mls_proto::{relay, Filter};
use mls_store::{ReadBounds, ReadScope};

impl Session {
    /// The checks REQ and COUNT share. On refusal the CLOSED has been sent; else the filters of
    /// the stored query, scoped to what this connection may see (security rule 8), and the
    /// read keys it holds, which the store keeps the query to (visibility as data).
    pub(super) async fn admit_read(
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
        } else if self.app.access.auth_required && !self.conn.is_authed() {
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
            .read_state_brief(&mut |state| {
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

    pub(super) fn read_bounds(&self) -> ReadBounds {
        let limits = &self.app.config.limitation;
        ReadBounds {
            max_limit: limits.max_limit,
            max_candidates: limits.max_query_candidates,
        }
    }

    pub(super) fn refuse_read(&self, sub_id: &str, reason: &str) {
        if reason.starts_with("auth-required:") {
            self.conn.send(relay::auth(&self.challenge()));
        }
        self.conn.send(relay::closed(sub_id, reason));
    }
}
