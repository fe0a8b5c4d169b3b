//! The relay server: HTTP and WebSocket on one port, sessions, live subscriptions, fan-out,
//! NIP-42. It wires the wire model (`mls-proto`), the rules (`mls-gateway-rules`) and the
//! storage (`mls-store`) together; the path of one event is
//! `session` → `ingest` (relay checks, the signature on `verify_pool`) → store writer (gateway
//! rules, commit) → the store's commit stream → `fanout` (one consumer task per process, in
//! commit order, delivering through one lane per core, a connection always on the same lane).
//! Several instances on one database hear each other's commits through `bus`.

// The layers, from the top down, one group each: a module imports only modules of its own
// group or of the groups below it (checked, with "no import cycle", by `tests/import_graph.rs`).

// The operator's tools (export, import); `run` below starts the server.
pub mod tools;

// The HTTP surface: the WebSocket upgrade, NIP-11, `/health`, `/metrics`, the REST API.
pub mod http;

// One WebSocket session, one file per client message.
mod session;
// The WebSocket framing sessions read and write through (RFC 6455, server side).
mod websocket;

// The state built once at start-up and handed to HTTP handlers and sessions.
pub mod app;

// Background work: live delivery (the one consumer of the commit stream), the bus between
// instances, the purge of expired events and stale gateway state.
pub mod bus;
mod fanout;
mod purge;

// The checks a client message meets: relay limits (`ingest`), who the client is (`auth`),
// KeyPackage claims on reads; the threads that run the EVENT checks (`verify_pool`).
mod auth;
mod claims;
mod ingest;
mod verify_pool;

// Live subscriptions: which connections an event goes to.
mod subscriptions;
#[cfg(test)]
mod subscriptions_tests;

// One connection as the rest of the relay holds it: its handle, and its bounded outbox.
mod connection;
mod outbox;

// Leaves every layer may use: rate limits, metrics, config, logs, the shutdown flags.
pub mod config;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
mod shutdown;

use app::App;
use config::Config;
use mls_gateway_rules::Gateway;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// At shutdown, how long the relay waits for its WebSocket sessions to answer their in-flight
/// writes and send their close frames (they get the writer's `SHUTDOWN_DRAIN` to drain) before
/// it closes the store and exits: Cloud Run sends SIGKILL 10 s after SIGTERM.
const SHUTDOWN_SESSIONS_DEADLINE: Duration = Duration::from_secs(6);

/// Builds the gateway from the config (auth mode and admin keys come from it).
pub fn gateway(config: &Config) -> Result<Arc<Gateway>, String> {
    Gateway::new(config.extensions.mls_gateway.clone(), config.auth.enabled)
        .map(Arc::new)
        .map_err(|e| format!("extensions.mls_gateway: {e}"))
}

/// Connections the kernel holds for the relay before it accepts them (capped by the kernel's
/// `net.core.somaxconn`). A burst of opens — every client of an instance that went away
/// reconnecting at once — must fit: a SYN dropped from a full queue is retried only after a
/// second. The default of `TcpListener::bind` (1,024) overflowed when 1,000 clients opened at
/// once (`mls-bench connections`, docs/PERFORMANCE.md).
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on the first address `addr` resolves to that can be bound.
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for sa in tokio::net::lookup_host(addr).await? {
        let socket = match sa {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As `TcpListener::bind` does: a restarted relay listens while its old connections
        // linger in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(sa).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to listen on")
    }))
}

/// Runs the relay until SIGTERM/SIGINT, then shuts down gracefully within Cloud Run's 10 s:
/// stop accepting, let sessions answer their in-flight writes and close their sockets with a
/// close frame and a reason, let the store commit what it accepted, exit.
pub async fn run(config: Config) -> Result<(), String> {
    // Before anything is opened: a public relay without its own URL does not start.
    config
        .public_urls(config.server.port)
        .map_err(|e| e.to_string())?;
    let gateway = gateway(&config)?;
    let (store, bus) = app::open_store_and_bus(&config, gateway.clone()).await?;
    let store = metrics::MeteredStore::wrap(store);
    let addr = config.listen_addr();
    let listener = listen(&addr)
        .await
        .map_err(|e| format!("server.host/server.port {addr}: cannot listen: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let purger = tokio::spawn(purge::run(
        store.clone(),
        gateway.clone(),
        shutdown_rx.clone(),
    ));
    let relay_urls = config
        .public_urls(local.port())
        .map_err(|e| e.to_string())?;
    tracing::info!(urls = ?relay_urls, "NIP-42 and NIP-98 accept these relay URLs");
    let mut app = App::new(config, store.clone(), gateway, shutdown_rx.clone());
    app.relay_urls = relay_urls;
    let app = Arc::new(app);
    // Live delivery consumes the commit stream (this instance's, and the others' through
    // the bus); sessions only write.
    let heard = bus.map(|transport| bus::start(transport, store.clone(), shutdown_rx.clone()));
    let fan = fanout::Fanout {
        store: app.store.clone(),
        gateway: app.gateway.clone(),
        subscriptions: app.subscriptions.clone(),
    };
    let catch_up = Duration::from_millis(app.config.bus.catch_up_interval_ms);
    let fanout = tokio::spawn(fanout::run(fan, shutdown_rx.clone(), catch_up, heard));

    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel();
    let outboxes = app.outboxes.clone();
    tokio::spawn(async move {
        shutdown::signal().await;
        tracing::info!("shutdown signal received");
        let _ = signalled_tx.send(tokio::time::Instant::now());
        let _ = shutdown_tx.send(true);
        // WebSocket sessions learn it through their outboxes (no receiver each).
        outboxes.shut_down();
    });

    tracing::info!(address = %local, "listening on {local}");
    let mut server_shutdown = shutdown_rx.clone();
    let service =
        http::router(app.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // Without TCP_NODELAY, a REQ's second small frame waits for the client's delayed ACK
    // (~40 ms per REQ, measured in docs/PERFORMANCE.md).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, service)
        .with_graceful_shutdown(async move { shutdown::until_set(&mut server_shutdown).await })
        .await
        .map_err(|e| format!("server error: {e}"))?;

    // Upgraded WebSockets are not the server's to wait for: wait for the sessions here.
    let since = signalled_rx
        .await
        .unwrap_or_else(|_| tokio::time::Instant::now());
    let mut sessions = app.sessions.subscribe();
    let drained = tokio::time::timeout_at(since + SHUTDOWN_SESSIONS_DEADLINE, async {
        let _ = sessions.wait_for(|n| *n == 0).await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = *sessions.borrow(),
            "sessions still open at the shutdown deadline; exiting without them"
        );
    }

    let _ = purger.await;
    store.close().await;
    let _ = fanout.await;
    tracing::info!("relay stopped");
    Ok(())
}
