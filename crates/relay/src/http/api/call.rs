//! One API call: what a handler reads of its request ([`ApiCall`]), who may make it
//! ([`Callers`], [`authorize`]: rate limits, NIP-98, allow/deny lists, single-use tokens), the
//! body limit, and the JSON error every refusal is ([`ApiError`]).

use crate::app::App;
use crate::auth::nip98;
use crate::http::extract::ClientIp;
use crate::ratelimit::RateKey;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
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
pub enum Callers {
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
        callers: Callers,
    ) -> Result<Option<Hex32>, ApiError> {
        let call = Call {
            ip: self.ip,
            method: &self.method,
            uri: &self.uri,
            headers: &self.headers,
            body,
        };
        authorize(app, &call, callers).await
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
/// allowed for [`Callers::Public`]).
pub async fn authorize(
    app: &App,
    call: &Call<'_>,
    callers: Callers,
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
            let verified = nip98::verify(value, &req, &app.relay_urls, mls_proto::unix_now())
                .map_err(|message| ApiError::unauthorized("auth_invalid", message))?;
            Some(verified)
        }
    };
    let caller = verified.as_ref().map(|v| v.pubkey);
    if let Some(pk) = caller {
        app.rate_limits
            .reqs
            .check(RateKey::Pubkey(pk))
            .map_err(rate_limited)?;
    }
    let required = callers != Callers::Public || app.access.auth_required;
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
    if !app.access.pubkey_allowed(&pk) {
        return Err(ApiError::forbidden(
            "restricted: this pubkey is not allowed on this relay",
        ));
    }
    if callers == Callers::Admin && !app.gateway.is_admin(&pk) {
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
