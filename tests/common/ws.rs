//! The NIP-01 WebSocket client of the tests: raw JSON frames over `tokio-tungstenite`.

use super::{auth_event, id_hex, rand_suffix, RECV_TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use mls_proto::Event;
use secp256k1::Keypair;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw NIP-01 client. AUTH challenges the relay sends are recorded in `challenge` (and not
/// returned by `recv`); messages skipped while waiting for a specific answer are kept and
/// returned by later `recv` calls, so nothing is lost.
pub struct Ws {
    stream: Stream,
    pending: VecDeque<Value>,
    pub challenge: Option<String>,
    /// Every AUTH challenge received, in order.
    pub challenges: Vec<String>,
}

impl Ws {
    pub async fn connect(url: &str) -> Ws {
        let (stream, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timeout"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws::wrap(stream)
    }

    /// Connects sending a specific `Host` header (to test the NIP-42 relay tag rule).
    pub async fn connect_with_host(url: &str, host: &str) -> Ws {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert("host", host.parse().unwrap());
        let (stream, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timeout"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws::wrap(stream)
    }

    /// Connects sending extra handshake headers (`Host`, `X-Forwarded-For`, …).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Ws {
        let mut req = url.into_client_request().unwrap();
        for (k, v) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
            req.headers_mut().insert(name, v.parse().unwrap());
        }
        let (stream, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|_| panic!("connect {url}: timeout"))
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Ws::wrap(stream)
    }

    fn wrap(stream: Stream) -> Ws {
        Ws {
            stream,
            pending: VecDeque::new(),
            challenge: None,
            challenges: Vec::new(),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("websocket send");
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: &[u8]) {
        self.stream
            .send(Message::Binary(data.to_vec().into()))
            .await
            .expect("websocket send");
    }

    /// Next frame from the socket as JSON (AUTH recorded and skipped). `Err` on timeout,
    /// `Ok(None)` when the connection closed.
    async fn read_frame(&mut self, timeout: Duration) -> Result<Option<Value>, ()> {
        self.read_frame_inner(timeout, false).await
    }

    /// Like `read_frame`, but `stop_on_auth` returns `Ok(Some(Null))` right after recording an
    /// AUTH challenge.
    async fn read_frame_inner(
        &mut self,
        timeout: Duration,
        stop_on_auth: bool,
    ) -> Result<Option<Value>, ()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| ())?;
            match next {
                None | Some(Err(_)) => return Ok(None),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|e| panic!("relay sent non-JSON text ({e}): {t}"));
                    if v[0] == "AUTH" {
                        let c = v[1]
                            .as_str()
                            .unwrap_or_else(|| panic!("AUTH without a string challenge: {v}"))
                            .to_owned();
                        self.challenge = Some(c.clone());
                        self.challenges.push(c);
                        if stop_on_auth {
                            return Ok(Some(Value::Null));
                        }
                        continue;
                    }
                    return Ok(Some(v));
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Binary(b))) => {
                    panic!("relay sent a binary frame ({} bytes)", b.len())
                }
                Some(Ok(_)) => continue, // ping/pong/raw frames
            }
        }
    }

    /// The next message, or `None` if nothing arrives within `timeout`. Panics if the
    /// connection closed.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        match self.read_frame(timeout).await {
            Ok(Some(v)) => Some(v),
            Ok(None) => panic!("relay closed the connection"),
            Err(()) => None,
        }
    }

    /// The next message, or `None` once the relay has closed the connection. Panics if
    /// nothing at all happens within `timeout`.
    pub async fn recv_until_closed(&mut self, timeout: Duration) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        match self.read_frame(timeout).await {
            Ok(v) => v,
            Err(()) => panic!("connection neither sent anything nor closed within {timeout:?}"),
        }
    }

    /// The next message (panics after [`RECV_TIMEOUT`]).
    #[track_caller]
    pub fn recv(&mut self) -> impl std::future::Future<Output = Value> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            self.recv_timeout(RECV_TIMEOUT).await.unwrap_or_else(|| {
                panic!("no message from the relay within {RECV_TIMEOUT:?} (at {caller})")
            })
        }
    }

    /// Waits `ms` and asserts that no message arrived.
    pub async fn expect_silence(&mut self, ms: u64) {
        if let Some(v) = self.recv_timeout(Duration::from_millis(ms)).await {
            panic!("expected no message, got {v}");
        }
    }

    /// Waits until a message matching `pred` arrives; others are kept for later `recv`.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return self.pending.remove(pos).unwrap();
        }
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame(left).await {
                Ok(Some(v)) if pred(&v) => return v,
                Ok(Some(v)) => self.pending.push_back(v),
                Ok(None) => panic!(
                    "relay closed the connection while waiting for {what}; pending: {:?}",
                    self.pending
                ),
                Err(()) => panic!(
                    "no {what} within {RECV_TIMEOUT:?}; other messages: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// Whether the relay has closed the connection (waits up to `timeout` for it).
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        loop {
            match self.read_frame(timeout).await {
                Ok(None) => return true,
                Err(()) => return false,
                Ok(Some(v)) => self.pending.push_back(v),
            }
        }
    }

    /// Waits for an AUTH challenge (the relay sends one on connect).
    pub async fn challenge(&mut self) -> String {
        if let Some(c) = &self.challenge {
            return c.clone();
        }
        let deadline = tokio::time::Instant::now() + RECV_TIMEOUT;
        while self.challenge.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read_frame_inner(left, true).await {
                Ok(Some(Value::Null)) => {}
                Ok(Some(v)) => self.pending.push_back(v),
                Ok(None) => panic!("connection closed before an AUTH challenge"),
                Err(()) => panic!("no AUTH challenge within {RECV_TIMEOUT:?}"),
            }
        }
        self.challenge.clone().unwrap()
    }

    /// Sends `["EVENT", e]` and returns the OK's `(accepted, message)`.
    pub async fn publish(&mut self, e: &Event) -> (bool, String) {
        self.send(&json!(["EVENT", e])).await;
        self.wait_ok(&id_hex(e)).await
    }

    /// Publishes and asserts `OK true`.
    #[track_caller]
    pub fn publish_ok<'a>(
        &'a mut self,
        e: &'a Event,
    ) -> impl std::future::Future<Output = String> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let (ok, msg) = self.publish(e).await;
            assert!(ok, "event kind {} refused: {msg:?} (at {caller})", e.kind);
            msg
        }
    }

    /// Waits for the OK for `id` and returns `(accepted, message)`.
    pub async fn wait_ok(&mut self, id: &str) -> (bool, String) {
        let v = self
            .wait_for(&format!("OK for {id}"), |v| v[0] == "OK" && v[1] == id)
            .await;
        assert_eq!(
            v.as_array().unwrap().len(),
            4,
            "OK must have 4 elements: {v}"
        );
        let ok = v[2]
            .as_bool()
            .unwrap_or_else(|| panic!("OK status not a bool: {v}"));
        let msg = v[3]
            .as_str()
            .unwrap_or_else(|| panic!("OK message not a string: {v}"))
            .to_owned();
        (ok, msg)
    }

    /// Sends AUTH for the current challenge naming `relay_url`; returns the OK.
    pub async fn auth(&mut self, k: &Keypair, relay_url: &str) -> (bool, String) {
        let c = self.challenge().await;
        let e = auth_event(k, &c, relay_url);
        self.send_auth(&e).await
    }

    pub async fn send_auth(&mut self, e: &Event) -> (bool, String) {
        self.send(&json!(["AUTH", e])).await;
        self.wait_ok(&id_hex(e)).await
    }

    /// Sends `["REQ", sub, filters…]`.
    pub async fn send_req(&mut self, sub: &str, filters: &[Value]) {
        let mut msg = vec![json!("REQ"), json!(sub)];
        msg.extend(filters.iter().cloned());
        self.send(&Value::Array(msg)).await;
    }

    /// Collects the stored events for `sub` until its EOSE (`Ok`) or a CLOSED (`Err(message)`).
    /// Messages for other subscriptions are kept for later.
    pub async fn collect(&mut self, sub: &str) -> Result<Vec<Value>, String> {
        let mut out = Vec::new();
        loop {
            let v = self
                .wait_for(&format!("EVENT/EOSE/CLOSED for {sub:?}"), |v| {
                    (v[0] == "EVENT" || v[0] == "EOSE" || v[0] == "CLOSED") && v[1] == sub
                })
                .await;
            match v[0].as_str().unwrap() {
                "EVENT" => out.push(v[2].clone()),
                "EOSE" => return Ok(out),
                _ => return Err(v[2].as_str().unwrap_or_default().to_owned()),
            }
        }
    }

    /// REQ then collect until EOSE; the subscription stays open. Panics on CLOSED.
    pub async fn req(&mut self, sub: &str, filters: &[Value]) -> Vec<Value> {
        self.send_req(sub, filters).await;
        match self.collect(sub).await {
            Ok(v) => v,
            Err(m) => panic!("REQ {sub} {filters:?} was CLOSED: {m:?}"),
        }
    }

    /// REQ, collect until EOSE, then CLOSE; returns the events.
    pub async fn query(&mut self, filters: &[Value]) -> Vec<Value> {
        let sub = format!("q{}", rand_suffix());
        let out = self.req(&sub, filters).await;
        self.send(&json!(["CLOSE", sub])).await;
        out
    }

    /// The ids of a query's results, in order.
    pub async fn query_ids(&mut self, filters: &[Value]) -> Vec<String> {
        self.query(filters)
            .await
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// REQ expected to be refused: returns the CLOSED message.
    pub async fn req_closed(&mut self, sub: &str, filters: &[Value]) -> String {
        self.send_req(sub, filters).await;
        match self.collect(sub).await {
            Ok(evs) => {
                panic!("REQ {sub} {filters:?} was answered with EOSE ({evs:?}), expected CLOSED")
            }
            Err(m) => m,
        }
    }

    /// `["COUNT", sub, filters…]` → `Ok(n)` or `Err(CLOSED message)`.
    pub async fn count(&mut self, sub: &str, filters: &[Value]) -> Result<u64, String> {
        let mut msg = vec![json!("COUNT"), json!(sub)];
        msg.extend(filters.iter().cloned());
        self.send(&Value::Array(msg)).await;
        let v = self
            .wait_for(&format!("COUNT/CLOSED for {sub:?}"), |v| {
                (v[0] == "COUNT" || v[0] == "CLOSED") && v[1] == sub
            })
            .await;
        if v[0] == "CLOSED" {
            return Err(v[2].as_str().unwrap_or_default().to_owned());
        }
        Ok(v[2]["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("COUNT without a numeric count: {v}")))
    }

    /// Waits for the next live `["EVENT", sub, …]` and returns the event.
    pub async fn next_event(&mut self, sub: &str) -> Value {
        let v = self
            .wait_for(&format!("live EVENT for {sub:?}"), |v| {
                v[0] == "EVENT" && v[1] == sub
            })
            .await;
        v[2].clone()
    }

    /// Waits for a NOTICE and returns its message.
    pub async fn notice(&mut self) -> String {
        let v = self.wait_for("NOTICE", |v| v[0] == "NOTICE").await;
        v[1].as_str()
            .unwrap_or_else(|| panic!("NOTICE without a string: {v}"))
            .to_owned()
    }

    pub async fn close_ws(mut self) {
        let _ = self.stream.close(None).await;
    }

    pub fn into_inner(self) -> Stream {
        self.stream
    }
}
