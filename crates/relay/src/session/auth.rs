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
                    &self.challenge(),
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
        let ok = match result {
            Ok(pk) => {
                tracing::info!(conn = self.conn.id, pubkey = %mls_proto::short_pubkey(&pk), "authenticated");
                relay::ok(&id, true, "")
            }
            Err(reason) => relay::ok(&id, false, &reason),
        };
        // After the OKs of EVENTs that arrived before it: a client that sent EVENT then AUTH
        // and gets `auth-required` for the EVENT waits for its AUTH's OK before resending
        // (nostr-sdk does), so that OK must not overtake the refusal.
        if self.in_flight.is_empty() {
            self.conn.send(ok);
        } else {
            self.in_flight.push_answer(ok);
        }
    }
}
