//! HTTP to the relay (NIP-11, `/health`, `/metrics`, the REST API) through `ureq`, a kept
//! client crate: any method, optional JSON body, every status returned as an answer (a 4xx is
//! what many tests assert), no redirects followed.
//!
//! `ureq` is blocking: each request runs on tokio's blocking pool, so a test's runtime (and a
//! WebSocket it holds open meanwhile) keeps going.

use super::RECV_TIMEOUT;
use serde_json::Value;
use std::time::Duration;

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

pub async fn http_get(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_get_timeout(port, path, headers, RECV_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// A GET that may fail (the relay not listening yet, or too slow): `Err` says why.
pub async fn http_get_timeout(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse, String> {
    send(port, "GET", path, headers, None, timeout).await
}

/// Any method, with a JSON body (`Content-Type: application/json`) when given.
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    send(port, method, path, headers, body, RECV_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn send(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<HttpResponse, String> {
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if body.is_some() {
        req = req.header("Content-Type", "application/json");
    }
    let body = body.map(<[u8]>::to_vec);
    let req = req.body(()).map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(timeout))
            .build()
            .into();
        let resp = match body {
            Some(b) => {
                let (parts, ()) = req.into_parts();
                agent.run(ureq::http::Request::from_parts(parts, b))
            }
            None => agent.run(req),
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
                (k.as_str().to_ascii_lowercase(), v)
            })
            .collect();
        let body = resp
            .into_body()
            .with_config()
            .limit(u64::MAX)
            .read_to_vec()
            .map_err(|e| e.to_string())?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    })
    .await
    .map_err(|e| e.to_string())?
}
