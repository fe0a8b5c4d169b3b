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
pub mod nip98;
mod public;

use crate::app::App;
use crate::ratelimit::{ClientIp, RateKey};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, MethodRouter};
use axum::Router;
use mls_proto::Hex32;
use mls_store::Rejection;
use serde_json::json;
use std::sync::Arc;

/// Largest request body accepted (admin calls carry a list of pubkeys).
pub const MAX_BODY: usize = 64 * 1024;

/// A JSON error: `{"error": "...", "code": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A storage failure: logged here, shown to the client without details.
    pub fn storage(e: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %e, "api: storage failure");
        ApiError::unavailable("storage is unavailable, retry later")
    }

    /// A refusal of the gateway rules, by its prefix.
    pub fn from_rejection(r: Rejection) -> ApiError {
        let msg = r.0;
        let (status, code) = match crate::metrics::reason_label(&msg) {
            "invalid" => (StatusCode::BAD_REQUEST, "bad_request"),
            "restricted" | "blocked" => (StatusCode::FORBIDDEN, "forbidden"),
            "rate-limited" => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            "auth-required" => (StatusCode::UNAUTHORIZED, "auth_required"),
            "error" => return ApiError::storage(msg),
            _ if msg.starts_with("not-found:") => (StatusCode::NOT_FOUND, "not_found"),
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        ApiError::new(status, code, msg)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            axum::Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response();
        let h = resp.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Nostr"));
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone when `[auth]` is off; an authenticated (NIP-98) caller when it is on.
    Public,
    /// Always an authenticated caller.
    Authenticated,
    /// Always an authenticated caller listed in `admin_pubkeys`.
    Admin,
}

/// A REST request's parts that authorization reads (NIP-98 signs the method and URL; limits
/// key on the client IP), extracted once per handler.
pub struct ApiCall {
    pub ip: std::net::IpAddr,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
}

impl FromRequestParts<Arc<App>> for ApiCall {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let ClientIp(ip) = ClientIp::from_request_parts(parts, app).await?;
        Ok(ApiCall {
            ip,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
        })
    }
}

impl ApiCall {
    /// [`authorize`] for this request with its `body`.
    pub async fn authorize(
        &self,
        app: &App,
        body: &[u8],
        access: Access,
    ) -> Result<Option<Hex32>, ApiError> {
        let call = Call {
            ip: self.ip,
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            body,
        };
        authorize(app, &call, access).await
    }
}

/// The parts of a request the auth check looks at.
pub struct Call<'a> {
    pub ip: std::net::IpAddr,
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The rate limit (client IP, before any signature is checked), NIP-98, the rate limit of the
/// signing pubkey, the allow/deny lists and the endpoint's access rule, in that order; last,
/// a state-changing token is marked used. Returns the caller's pubkey (`None`: anonymous,
/// allowed for [`Access::Public`]).
pub async fn authorize(
    app: &App,
    call: &Call<'_>,
    access: Access,
) -> Result<Option<Hex32>, ApiError> {
    let rate_limited = |wait: std::time::Duration| {
        crate::metrics::rate_limited("api");
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate-limited: more than {} requests per minute",
                app.rate_limits.reqs.per_minute()
            ),
        );
        e.retry_after = Some(wait.as_secs().max(1));
        e
    };
    app.rate_limits
        .reqs
        .check_all(RateKey::all(&[], call.ip))
        .map_err(rate_limited)?;
    let verified = match call.headers.get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value.to_str().map_err(|_| {
                ApiError::unauthorized("auth_invalid", "NIP-98: header is not text")
            })?;
            let path_and_query = call
                .uri
                .path_and_query()
                .map_or(call.uri.path(), |p| p.as_str());
            let req = nip98::HttpRequest {
                method: call.method.as_str(),
                path_and_query,
                body: call.body,
            };
            Some(nip98::verify(app, value, &req, mls_proto::unix_now())?)
        }
    };
    let caller = verified.as_ref().map(|v| v.pubkey);
    if let Some(pk) = caller {
        app.rate_limits
            .reqs
            .check(RateKey::Pubkey(pk))
            .map_err(rate_limited)?;
    }
    let required = access != Access::Public || app.auth_required();
    let Some(pk) = caller else {
        return if required {
            Err(ApiError::unauthorized(
                "auth_required",
                "auth-required: sign the request with NIP-98 (Authorization: Nostr <base64 event>)",
            ))
        } else {
            Ok(None)
        };
    };
    if !app.pubkey_allowed(&pk) {
        return Err(ApiError::forbidden(
            "restricted: this pubkey is not allowed on this relay",
        ));
    }
    if access == Access::Admin && !app.gateway.is_admin(&pk) {
        return Err(ApiError::forbidden(
            "restricted: admin endpoints are for admin_pubkeys only",
        ));
    }
    if let Some(id) = verified.and_then(|v| v.single_use) {
        let now = mls_proto::unix_now();
        match app.nip98_seen.first_use(id, now) {
            // This instance has not seen it; neither may any other on the same store.
            Ok(()) => {
                let gateway = app.gateway.clone();
                let forget_after = now + 2 * nip98::WINDOW_SECS + 1;
                let marked = app
                    .store
                    .update_state(Box::new(move |state| {
                        gateway.use_token_once(&id, forget_after, state)
                    }))
                    .await
                    .map_err(ApiError::storage)?;
                if marked.is_err() {
                    return Err(ApiError::unauthorized(
                        "auth_invalid",
                        "NIP-98: this token was already used",
                    ));
                }
            }
            Err(nip98::Reuse::AlreadyUsed) => {
                return Err(ApiError::unauthorized(
                    "auth_invalid",
                    "NIP-98: this token was already used",
                ))
            }
            Err(nip98::Reuse::Full) => {
                return Err(rate_limited(std::time::Duration::from_secs(
                    2 * nip98::WINDOW_SECS,
                )))
            }
        }
    }
    Ok(Some(pk))
}

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
