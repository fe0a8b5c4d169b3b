//! Kind 446: Noise direct messages (Loxation, `["p", recipient]`, `["v", "noise.1"]`).
//!
//! Accepted when: at least one `p`; non-empty content. Served to the `p` recipients and to the
//! author (each only when authenticated as such, see `visibility.rs`); only its author may
//! delete it (kind 5, see `Gateway::may_delete`): a recipient's deletion would take it from the
//! author, who reads it too. Kept receipt + `message_archive_ttl_days`.

use crate::dialect::MlsEvent;
use crate::retention;
use crate::Gateway;
use mls_proto::Event;
use mls_store::{Admitted, Rejection};

pub(crate) fn admit(
    gw: &Gateway,
    ev: &Event,
    m: &MlsEvent<'_>,
    received_at: u64,
) -> Result<Admitted, Rejection> {
    if m.recipients.is_empty() {
        return Err(Rejection(
            "invalid: kind 446 must have at least one p tag".into(),
        ));
    }
    if ev.content.is_empty() {
        return Err(Rejection("invalid: kind 446 content is empty".into()));
    }
    let cfg = gw.config();
    Ok(Admitted {
        expires_at: retention::archive(cfg, received_at, m.nip40),
        store: cfg.enable_message_archive,
    })
}
