//! The periodic purge: expired events (NIP-40, retention) and the gateway's stale bookkeeping
//! (expired KeyPackage records, rate counters of past windows), and the one-time build of the
//! by-pubkey membership rows for a store written before they existed. Gateway-state jobs run
//! one bounded chunk per write transaction, so events queued behind a chunk are not held up.

use mls_gateway_rules::Gateway;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often expired events are purged.
const PURGE_INTERVAL: Duration = Duration::from_secs(60);

/// Drops expired events and the gateway's stale bookkeeping (expired KeyPackage records, rate
/// counters of past windows) every `PURGE_INTERVAL`.
pub async fn run(
    store: Arc<dyn mls_store::EventStore>,
    gateway: Arc<Gateway>,
    mut shutdown: watch::Receiver<bool>,
) {
    build_member_groups(&*store, &gateway, &shutdown).await;
    let mut tick = tokio::time::interval(PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shutdown::until_set(&mut shutdown) => break,
        }
        let now = mls_proto::unix_now();
        match store.purge_expired(now).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "expired events purged"),
            Err(e) => tracing::error!(error = %e, "event purge failed"),
        }
        purge_state(&*store, &gateway, now, &shutdown).await;
    }
}

/// Runs a resumable gateway-state job one bounded chunk per write transaction, so events
/// queued behind a chunk are committed before the next one. Returns the job's progress, or
/// the error that stopped it (the job is tried again at its next run).
async fn run_state_chunks<P>(
    store: &dyn mls_store::EventStore,
    shutdown: &watch::Receiver<bool>,
    done: fn(&P) -> bool,
    chunk: impl Fn(&mut dyn mls_store::StateWrite, &mut P) -> Result<(), mls_store::StoreError>
        + Clone
        + Send
        + 'static,
) -> Result<P, String>
where
    P: Default + Clone + Send + 'static,
{
    let progress = Arc::new(std::sync::Mutex::new(P::default()));
    let lock = |p: &std::sync::Mutex<P>| {
        p.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    };
    while !done(&lock(&progress)) && !*shutdown.borrow() {
        let (chunk, shared) = (chunk.clone(), progress.clone());
        let result = store
            .update_state(Box::new(move |state| {
                let mut p = shared
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                chunk(state, &mut p).map_err(|e| mls_store::Rejection(format!("error: {e}")))
            }))
            .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.0),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(lock(&progress))
}

/// The gateway's state purge (KeyPackage records, rate counters), in chunks.
async fn purge_state(
    store: &dyn mls_store::EventStore,
    gateway: &Arc<Gateway>,
    now: u64,
    shutdown: &watch::Receiver<bool>,
) {
    use mls_gateway_rules::{StatePurge, STATE_PURGE_CHUNK};
    let gateway = gateway.clone();
    let purge = move |state: &mut dyn mls_store::StateWrite, p: &mut StatePurge| {
        gateway.purge_state_chunk(now, state, p, STATE_PURGE_CHUNK)
    };
    match run_state_chunks(store, shutdown, StatePurge::done, purge).await {
        Ok(done) if done.removed > 0 => tracing::info!(
            removed = done.removed,
            chunks = done.chunks,
            "gateway state purged"
        ),
        Ok(_) => {}
        Err(error) => tracing::error!(%error, "gateway state purge failed"),
    }
}

/// The one-time build of the gateway's by-pubkey membership rows (what a reader's scope reads)
/// for a store written before they existed, in chunks like the purge. Until it is done, read
/// scopes hold every group: reads stay exact, only slower.
async fn build_member_groups(
    store: &dyn mls_store::EventStore,
    gateway: &Arc<Gateway>,
    shutdown: &watch::Receiver<bool>,
) {
    use mls_gateway_rules::{MemberGroupsBuild, STATE_PURGE_CHUNK};
    let gateway = gateway.clone();
    let build = move |state: &mut dyn mls_store::StateWrite, p: &mut MemberGroupsBuild| {
        gateway.build_member_groups_chunk(state, p, STATE_PURGE_CHUNK)
    };
    match run_state_chunks(store, shutdown, MemberGroupsBuild::done, build).await {
        Ok(done) if done.written > 0 => tracing::info!(
            rows = done.written,
            "by-pubkey membership rows built for read scopes"
        ),
        Ok(_) => {}
        // Tried again at the next start; reads stay exact meanwhile.
        Err(error) => {
            tracing::error!(%error, "building the by-pubkey membership rows failed")
        }
    }
}
