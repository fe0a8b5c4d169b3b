//! Start-up wiring: opens the configured store (and the bus its instances share) and builds
//! the [`App`], the state built once and handed to every HTTP handler and WebSocket session.
//! Below the sessions, modules take the narrow parts they use (limits, `Access`, the store,
//! the subscription index), never the `App`.

use crate::auth::nip98::SeenTokens;
use crate::auth::Access;
use crate::config::Config;
use crate::outbox::OutboxBudget;
use crate::ratelimit::RateLimiters;
use crate::subscriptions::SubscriptionIndex;
use mls_gateway_rules::config::StorageBackend;
use mls_gateway_rules::Gateway;
use mls_store::embedded::{EmbeddedOptions, EmbeddedStore};
use mls_store::EventStore;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

pub struct App {
    pub config: Config,
    pub store: Arc<dyn EventStore>,
    pub gateway: Arc<Gateway>,
    pub subscriptions: Arc<SubscriptionIndex>,
    /// Bytes all connections' outboxes may hold together (`limitation.outbox_total_bytes`).
    pub outboxes: Arc<OutboxBudget>,
    /// `[auth]`: whether clients must authenticate, and the pubkey allow/deny lists.
    pub access: Access,
    pub started: Instant,
    /// Flips to true on SIGTERM/SIGINT: sessions close their sockets with a close frame.
    pub shutdown: watch::Receiver<bool>,
    /// Events / REQs per minute and connections per IP (`ratelimit`).
    pub rate_limits: RateLimiters,
    /// NIP-98 tokens already used for a state-changing API call (replay protection).
    pub nip98_seen: SeenTokens,
    /// This relay's own URLs, normalised: what NIP-42 `relay` tags and NIP-98 `u` URLs must
    /// name ([`Config::public_urls`]). Empty: no AUTH or NIP-98 token is accepted.
    pub relay_urls: Vec<String>,
    /// Open WebSocket sessions: at shutdown the relay waits for them to answer their
    /// in-flight writes and send their close frames before it closes the store.
    pub sessions: watch::Sender<usize>,
    next_connection_id: AtomicU64,
}

/// Counts one WebSocket session in [`App::sessions`] while it lives.
pub struct SessionGuard(watch::Sender<usize>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Opens the configured store. Backends not built into this binary are a clear error.
/// PostgreSQL or Firestore that cannot be reached yet is retried with backoff (logged), not
/// given up on.
pub async fn open_store(
    config: &Config,
    gateway: Arc<Gateway>,
) -> Result<Arc<dyn EventStore>, String> {
    open_backend(config, gateway).await.map(|(store, _)| store)
}

/// [`open_store`], and the bus between instances this store needs (`[bus]`): Redis when
/// `bus.redis_url` is set, else the database's own LISTEN/NOTIFY for PostgreSQL, none for the
/// embedded store (one process).
pub async fn open_store_and_bus(
    config: &Config,
    gateway: Arc<Gateway>,
) -> Result<(Arc<dyn EventStore>, Option<crate::bus::Transport>), String> {
    let (store, transport) = open_backend(config, gateway).await?;
    if let Some(url) = &config.bus.redis_url {
        #[cfg(feature = "redis")]
        {
            let bus = crate::bus::redis_bus::RedisBus::new(url, &config.bus.redis_channel)?;
            return Ok((store, Some(crate::bus::Transport::Redis(Box::new(bus)))));
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = url;
            return Err(
                "bus.redis_url: Redis is not built into this binary (feature \"redis\")".into(),
            );
        }
    }
    Ok((store, transport))
}

async fn open_backend(
    config: &Config,
    gateway: Arc<Gateway>,
) -> Result<(Arc<dyn EventStore>, Option<crate::bus::Transport>), String> {
    match config.extensions.mls_gateway.storage_backend {
        #[cfg(feature = "postgres")]
        StorageBackend::Cloudsql => {
            use mls_store_postgres::{PostgresOptions, PostgresStore};
            let g = &config.extensions.mls_gateway;
            let url = g.database_url.clone().unwrap_or_default();
            let options = PostgresOptions {
                pool_size: g.database_pool_size as usize,
                statement_timeout: (g.database_statement_timeout > 0)
                    .then(|| std::time::Duration::from_secs(g.database_statement_timeout)),
                ..PostgresOptions::new(url)
            };
            // Errors name the key; the URL itself (a secret) is never in them.
            let store = PostgresStore::open(options, gateway, None)
                .await
                .map_err(|e| format!("extensions.mls_gateway.database_url: {e}"))?;
            let notify = crate::bus::Transport::Notify(store.clone());
            let store: Arc<dyn EventStore> = store;
            Ok((store, Some(notify)))
        }
        #[cfg(feature = "firestore")]
        StorageBackend::Firestore => {
            use mls_store_firestore::{FirestoreOptions, FirestoreStore};
            let g = &config.extensions.mls_gateway;
            let mut options = FirestoreOptions::new(g.project_id.clone().unwrap_or_default());
            if let Some(id) = &g.database_id {
                options.database_id = id.clone();
            }
            let store = FirestoreStore::open(options, gateway, None)
                .await
                .map_err(|e| format!("extensions.mls_gateway.project_id: {e}"))?;
            // Firestore has no notification channel of its own: several instances need
            // `bus.redis_url`.
            let store: Arc<dyn EventStore> = store;
            Ok((store, None))
        }
        StorageBackend::Embedded => {
            std::fs::create_dir_all(&config.data.path).map_err(|e| {
                format!("data.path {}: cannot create: {e}", config.data.path.display())
            })?;
            let options = EmbeddedOptions {
                map_size: config.data.max_size_bytes(),
                ..EmbeddedOptions::default()
            };
            let store = EmbeddedStore::open(&config.data.path, options, gateway)
                .map_err(|e| format!("data.path {}: {e}", config.data.path.display()))?;
            let store: Arc<dyn EventStore> = store;
            Ok((store, None))
        }
        // Reachable when the binary is built without a backend's feature.
        #[allow(unreachable_patterns)]
        other => Err(format!(
            "extensions.mls_gateway.storage_backend = \"{}\" is not available in this build; use \"embedded\"",
            serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        )),
    }
}

impl App {
    pub fn new(
        config: Config,
        store: Arc<dyn EventStore>,
        gateway: Arc<Gateway>,
        shutdown: watch::Receiver<bool>,
    ) -> App {
        App {
            relay_urls: config.public_urls(config.server.port).unwrap_or_default(),
            access: Access::from_config(&config),
            rate_limits: RateLimiters::new(&config),
            outboxes: OutboxBudget::new(config.limitation.outbox_total_bytes),
            config,
            store,
            gateway,
            subscriptions: Arc::default(),
            started: Instant::now(),
            shutdown,
            nip98_seen: SeenTokens::default(),
            sessions: watch::Sender::new(0),
            next_connection_id: AtomicU64::new(1),
        }
    }

    pub fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Counts a session until the guard is dropped.
    pub fn session_guard(&self) -> SessionGuard {
        self.sessions.send_modify(|n| *n += 1);
        SessionGuard(self.sessions.clone())
    }
}
