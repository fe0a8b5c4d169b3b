//! The HTTP surface on the relay's port: WebSocket upgrade and NIP-11 at `/`, `/health`,
//! `/metrics`, and the API under `api_prefix` (`api`); the request extractors they share
//! (`extract`).

pub mod api;
pub mod extract;

use crate::app::App;
use crate::config::Config;
use crate::session;
use crate::websocket;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use extract::ClientIp;
use serde_json::json;
use std::sync::Arc;

pub fn router(app: Arc<App>) -> Router {
    let gateway = &app.config.extensions.mls_gateway;
    let mut http = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics));
    if gateway.enable_api {
        http = http.merge(api::router(&gateway.api_prefix));
    }
    // The 405 fallback goes in before the CORS layer, so that preflights (OPTIONS) of these
    // routes reach the layer.
    let http = http
        .method_not_allowed_fallback(api::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), api::cors));
    Router::new()
        .route("/", get(root))
        .merge(http)
        .fallback(api::unknown_endpoint)
        .with_state(app)
}

/// `(method, path)` of every HTTP route but the WebSocket / NIP-11 root: what
/// `docs/openapi.json` must describe.
pub fn routes(config: &Config) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("GET", "/health".to_owned()),
        ("GET", "/metrics".to_owned()),
    ];
    let gateway = &config.extensions.mls_gateway;
    if gateway.enable_api {
        out.extend(api::routes(&gateway.api_prefix));
    }
    out
}

/// `/` is the WebSocket endpoint, the NIP-11 document for `Accept: application/nostr+json`,
/// and a short text page otherwise.
async fn root(
    State(app): State<Arc<App>>,
    ClientIp(ip): ClientIp,
    mut request: Request,
) -> Response {
    let upgrade =
        websocket::upgrade_request(request.method(), request.version(), request.headers())
            .map(websocket::accept_key);
    // The upgrade itself, once the response is sent (absent when the connection cannot be
    // upgraded: then the request is answered as a plain GET, as for any other).
    let on_upgrade = upgrade
        .is_some()
        .then(|| {
            request
                .extensions_mut()
                .remove::<hyper::upgrade::OnUpgrade>()
        })
        .flatten();
    if let (Some(accept), Some(on_upgrade)) = (upgrade, on_upgrade) {
        let Some(permit) = app.rate_limits.connections.try_open(ip) else {
            crate::metrics::rate_limited("connections");
            tracing::info!(ip = %ip, "connection refused: max_connections_per_ip reached");
            return api::ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "rate-limited: more than {} open connections from this address",
                    app.rate_limits.connections.max()
                ),
            )
            .into_response();
        };
        // Let oversize messages through the transport so the session can answer them with a
        // NOTICE or OK instead of dropping the connection; far larger ones still are.
        let max = app
            .config
            .limitation
            .max_message_length
            .saturating_mul(4)
            .max(64 * 1024);
        // The WebSocket layer holds no read buffer between messages: each message's payload
        // is allocated when its header arrives (docs/PERFORMANCE.md, "Memory per connection").
        let counted = app.session_guard();
        tokio::spawn(session::upgrade(
            app,
            on_upgrade,
            max,
            ip,
            (permit, counted),
        ));
        return Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .expect("valid upgrade response");
    }
    let wants_nip11 = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|a| a.contains("application/nostr+json"));
    if wants_nip11 {
        return (
            [
                (header::CONTENT_TYPE, "application/nostr+json"),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                (header::ACCESS_CONTROL_ALLOW_HEADERS, "*"),
                (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            ],
            nip11(&app).to_string(),
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "MLS Gateway: a Nostr relay. Connect with a WebSocket client.\n",
    )
        .into_response()
}

/// The NIP-11 relay information document.
pub fn nip11(app: &App) -> serde_json::Value {
    let c = &app.config;
    let l = &c.limitation;
    json!({
        "name": c.info.name,
        "description": c.info.description,
        "pubkey": c.info.pubkey,
        "contact": c.info.contact,
        "supported_nips": [1, 9, 11, 40, 42, 45, 70],
        "software": "mls-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "limitation": {
            "max_message_length": l.max_message_length,
            "max_subscriptions": l.max_subscriptions,
            "max_filters": l.max_filters,
            "max_limit": l.max_limit,
            "default_limit": l.max_limit,
            "max_subid_length": l.max_subid_length,
            "max_event_tags": l.max_event_tags,
            "max_content_length": l.max_content_length,
            "min_pow_difficulty": 0,
            "auth_required": c.auth.enabled,
            "payment_required": false,
            "restricted_writes": app.access.restricts_writes(),
            "created_at_lower_limit": l.created_at_lower_limit,
            "created_at_upper_limit": l.created_at_upper_limit,
        },
        "mls": app.gateway.nip11_section(),
    })
}

async fn health(State(app): State<Arc<App>>) -> Response {
    let uptime = app.started.elapsed().as_secs();
    match app.store.health().await {
        Ok(()) => Json(json!({
            "status": "healthy",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": uptime,
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "unhealthy",
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_seconds": uptime,
                    "failing": "store",
                    "error": e.to_string(),
                })),
            )
                .into_response()
        }
    }
}

/// `GET /metrics`: the text exposition, behind `Authorization: Bearer <server.metrics_token>`
/// when a token is configured.
async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    use crate::metrics::{http_response, render};
    if let Some(token) = &app.config.server.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.trim().as_bytes())) {
            http_response("metrics", 401);
            let mut resp = api::ApiError::unauthorized(
                "auth_required",
                "GET /metrics needs Authorization: Bearer <metrics token>",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    http_response("metrics", 200);
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(app.subscriptions.len()),
    )
        .into_response()
}

/// Compares without returning early on the first difference (the token is a secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
