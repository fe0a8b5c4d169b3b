//! The HTTP API under `[extensions.mls_gateway] api_prefix` (PROTOCOL §7): group info and the
//! KeyPackage directory for clients, the admin membership endpoints (the "sidecar ACL"), NIP-98
//! auth, JSON errors, CORS. `docs/openapi.json` describes exactly [`routes`].
//!
//! Who may call what (PROTOCOL §2 and §7; decided where they are silent):
//!
//! | endpoint                   | `[auth] enabled = false`  | `[auth] enabled = true`   |
//! |----------------------------|---------------------------|---------------------------|
//! | `GET keypackages?owner=`   | anyone                    | NIP-98, any allowed key   |
//! | `GET groups/{id}`          | NIP-98, member or admin   | same                      |
//! | `admin/…`                  | NIP-98, `admin_pubkeys`   | same                      |
//!
//! Group info is "members only" data, so it always needs proof of who is asking, whatever
//! `[auth]` says; a caller that is neither member nor admin gets 404 for groups that exist and
//! for groups that don't. A request that carries an `Authorization` header is checked even
//! where it is optional (bad credentials are never ignored), and its pubkey must pass the
//! white/blacklist. Every API request takes a token from `max_reqs_per_minute` for its client
//! IP, and a signed one also for its NIP-98 pubkey (a fresh key per call does not reset the
//! limit).

mod admin;
mod call;
mod public;

pub use call::ApiError;
use call::MAX_BODY;

use crate::app::App;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;
use std::sync::Arc;

/// The API's routes relative to `api_prefix`: `(method, path, endpoint name for metrics)`.
/// [`router`] is built from this list and `docs/openapi.json` must describe exactly it.
fn table() -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    MethodRouter<Arc<App>>,
)> {
    vec![
        ("GET", "/groups/{group_id}", "group", get(public::group)),
        (
            "GET",
            "/keypackages",
            "keypackages",
            get(public::keypackages),
        ),
        (
            "GET",
            "/admin/groups",
            "admin_groups",
            get(admin::list_groups),
        ),
        (
            "GET",
            "/admin/groups/{group_id}",
            "admin_group",
            get(admin::group),
        ),
        (
            "PATCH",
            "/admin/groups/{group_id}",
            "admin_rename",
            patch(admin::rename),
        ),
        (
            "POST",
            "/admin/groups/{group_id}/members",
            "admin_members",
            post(admin::add_members),
        ),
        (
            "DELETE",
            "/admin/groups/{group_id}/members",
            "admin_members",
            delete(admin::remove_members),
        ),
        (
            "POST",
            "/admin/groups/{group_id}/admins",
            "admin_admins",
            post(admin::add_admins),
        ),
        (
            "DELETE",
            "/admin/groups/{group_id}/admins",
            "admin_admins",
            delete(admin::remove_admins),
        ),
    ]
}

/// `(method, path)` of every API route, with `prefix` in front.
pub fn routes(prefix: &str) -> Vec<(&'static str, String)> {
    table()
        .into_iter()
        .map(|(m, p, _, _)| (m, join(prefix, p)))
        .collect()
}

fn join(prefix: &str, path: &str) -> String {
    format!("{}{path}", prefix.trim_end_matches('/'))
}

/// The API routes under `prefix`, each counted in `mls_relay_http_responses_total`.
pub fn router(prefix: &str) -> Router<Arc<App>> {
    let mut r = Router::new();
    for (_, path, endpoint, handler) in table() {
        let handler = handler.route_layer(axum::middleware::from_fn(
            move |req: Request, next: Next| async move {
                let resp = next.run(req).await;
                crate::metrics::http_response(endpoint, resp.status().as_u16());
                resp
            },
        ));
        r = r.route(&join(prefix, path), handler);
    }
    r.layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Unknown paths: a JSON 404 (`unknown_endpoint`, distinct from a resource's `not_found`).
pub async fn unknown_endpoint() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_endpoint",
        "no such endpoint",
    )
}

/// A known path with a method it does not take.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

/// CORS for the HTTP API from `server.allowed_origins` (env `ALLOWED_ORIGINS`): a preflight
/// (`OPTIONS` with `Access-Control-Request-Method`) from an allowed origin is answered here,
/// and responses to an allowed origin carry `Access-Control-Allow-Origin`. Other origins get
/// no CORS headers (the browser then refuses to hand the response to the page).
pub async fn cors(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = origin
        .as_ref()
        .and_then(|o| o.to_str().ok())
        .and_then(|o| allow_origin(&app.config.server.allowed_origins, o));
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if let Some(value) = allowed {
            let h = resp.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        return resp;
    }
    let mut resp = next.run(req).await;
    if let Some(value) = allowed {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after, www-authenticate"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    resp
}

/// The `Access-Control-Allow-Origin` value for `origin`, if it is allowed.
fn allow_origin(allowed: &[String], origin: &str) -> Option<HeaderValue> {
    if allowed.iter().any(|a| a == "*") {
        return Some(HeaderValue::from_static("*"));
    }
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
        .then(|| HeaderValue::from_str(origin).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_by_star() {
        let list = vec!["https://app.example.com".to_string()];
        assert!(allow_origin(&list, "https://app.example.com").is_some());
        assert!(allow_origin(&list, "https://evil.example.com").is_none());
        assert!(allow_origin(&list, "http://app.example.com").is_none());
        assert_eq!(
            allow_origin(&["*".into()], "https://x.example").unwrap(),
            "*"
        );
        assert!(allow_origin(&[], "https://app.example.com").is_none());
    }

    #[test]
    fn routes_carry_the_prefix() {
        let r = routes("/api/v1/mls");
        assert!(r.contains(&("GET", "/api/v1/mls/groups/{group_id}".to_string())));
        assert!(routes("/").iter().all(|(_, p)| p.starts_with("/groups")
            || p.starts_with("/keypackages")
            || p.starts_with("/admin/")));
    }
}
