//! `AUTH` (NIP-42): the rate limit, the event checked against this connection's challenge and
//! this relay's URLs (`crate::auth::nip42`), then the pubkey joins the connection's identities.

use super::Session;
use mls_proto::{relay, unix_now, Event};

impl Session {
    pub(super) fn on_auth(&mut self, ev: Event) {
        let id = ev.id.to_hex();
        let max = self.app.config.auth.max_pubkeys_per_connection;
        let result = self
            .app
            .rate_limits
            .check_auth(self.conn.id, self.ip)
            .and_then(|()| {
                crate::auth::nip42::verify(
                    &ev,
                    &self.challenge,
                    &self.app.relay_urls,
                    &self.app.access,
                    unix_now(),
                )
            })
            .and_then(|pk| {
                if self.conn.add_authed(pk, max) {
                    Ok(pk)
                } else {
                    Err(format!(
                        "restricted: this connection is already authenticated as {max} pubkeys \
                         (auth.max_pubkeys_per_connection); open another connection"
                    ))
                }
            })
            .inspect_err(|reason| crate::metrics::auth_refused(reason));
        match result {
            Ok(pk) => {
                tracing::info!(conn = self.conn.id, pubkey = %mls_proto::short_pubkey(&pk), "authenticated");
                self.conn.send(relay::ok(&id, true, ""));
            }
            Err(reason) => self.conn.send(relay::ok(&id, false, &reason)),
        }
    }
}
