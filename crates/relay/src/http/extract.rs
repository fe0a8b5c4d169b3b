//! Request extractors of the HTTP surface: what a handler reads of a request beside its body.

use crate::app::App;
use crate::ratelimit::client_ip;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The client IP of a request (see [`client_ip`]: the peer, or the proxy's
/// `X-Forwarded-For` entry with `server.trust_forwarded_for`).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<Arc<App>> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        Ok(ClientIp(client_ip(&app.config, peer, &parts.headers)))
    }
}
