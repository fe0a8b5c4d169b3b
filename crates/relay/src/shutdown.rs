//! Stopping: the process signal (SIGTERM/SIGINT) and the `watch` flags that carry "stop" to
//! every task (shutdown, a cut outbox).

use tokio::sync::watch;

/// Resolves once a flag (shutdown, a cut outbox) is set, or its sender is gone.
pub async fn until_set(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|s| *s).await;
}

/// Resolves on SIGTERM (what Cloud Run sends) or Ctrl-C.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
