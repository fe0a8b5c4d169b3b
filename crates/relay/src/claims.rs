//! KeyPackage claims on the REQ path (PROTOCOL §5): the gateway decides which of the found
//! KeyPackages to hand out and records the claims in one state transaction.

use mls_gateway_rules::{Gateway, Viewer};
use mls_proto::{Event, Hex32};
use mls_store::{EventStore, StoredEvent};
use std::collections::HashSet;
use std::sync::Arc;

/// `None`: serve everything found. `Some(ids)`: serve only these.
pub async fn apply(
    store: &dyn EventStore,
    gateway: &Arc<Gateway>,
    viewer: &Viewer,
    found: &[StoredEvent],
    now: u64,
) -> Result<Option<HashSet<Hex32>>, String> {
    let gateway = gateway.clone();
    if !gateway.config().keypackage_claims
        || !found.iter().any(|s| {
            matches!(s.event.kind, 443 | 30443) && !viewer.authed.contains(&s.event.pubkey)
        })
    {
        return Ok(None);
    }
    let candidates: Vec<Event> = found.iter().map(|s| s.event.clone()).collect();
    let viewer = viewer.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = store
        .update_state(Box::new(move |state| {
            let ids = gateway.claim_keypackages(&viewer, &candidates, now, state)?;
            let _ = tx.send(ids);
            Ok(())
        }))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "claim transaction failed");
            "error: could not record KeyPackage claims".to_owned()
        })?;
    match outcome {
        Ok(()) => Ok(Some(
            rx.try_recv().unwrap_or_default().into_iter().collect(),
        )),
        Err(rejection) => Err(rejection.0),
    }
}
