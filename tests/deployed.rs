//! What any started relay must show from outside: the health probe, NIP-11, a publish read
//! back, and on SIGTERM a close frame with a reason.
//!
//! By default each test starts its own relay (the binary, as every e2e test does). With
//! `MLS_EXTERNAL_RELAY_URL=ws://127.0.0.1:PORT` they check a relay started by someone else:
//! `scripts/image-test.sh` points them at the container image's own entrypoint. Then
//! `close_frame_on_sigterm` subscribes, writes `MLS_EXTERNAL_READY_FILE` and waits for the
//! script to send the relay SIGTERM.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A relay to check: someone else's (`MLS_EXTERNAL_RELAY_URL`) or one started here.
struct Target {
    url: String,
    port: u16,
    own: Option<Relay>,
}

async fn target() -> Target {
    match std::env::var("MLS_EXTERNAL_RELAY_URL") {
        Ok(url) if !url.is_empty() => {
            let port = url
                .rsplit(':')
                .next()
                .and_then(|p| p.trim_end_matches('/').parse().ok())
                .unwrap_or_else(|| panic!("MLS_EXTERNAL_RELAY_URL {url:?}: want ws://HOST:PORT"));
            Target {
                url,
                port,
                own: None,
            }
        }
        _ => {
            let relay = Relay::builder()
                .config("[auth]\nenabled = true")
                .start()
                .await;
            Target {
                url: relay.ws_url(),
                port: relay.port,
                own: Some(relay),
            }
        }
    }
}

impl Target {
    async fn nip11(&self) -> Value {
        let r = http_get(self.port, "/", &[("Accept", "application/nostr+json")]).await;
        assert_eq!(r.status, 200, "NIP-11: {}", r.text());
        r.json()
    }

    /// A connection, authenticated (NIP-42, naming the relay's URL) when the relay asks for it.
    async fn connect(&self, k: &secp256k1::Keypair) -> Ws {
        let auth = self.nip11().await["limitation"]["auth_required"] == true;
        let mut ws = Ws::connect(&self.url).await;
        if auth {
            let (ok, msg) = ws.auth(k, &self.url).await;
            assert!(ok, "AUTH naming {} refused: {msg}", self.url);
        }
        ws
    }
}

#[tokio::test]
async fn health_probe_and_nip11() {
    let t = target().await;
    let r = http_get(t.port, "/health", &[]).await;
    assert_eq!(r.status, 200, "/health: {}", r.text());
    assert_eq!(r.json()["status"], "healthy", "{}", r.text());
    let info = t.nip11().await;
    assert!(info["name"].is_string(), "{info}");
    let nips = info["supported_nips"].as_array().expect("supported_nips");
    for nip in [1, 11, 42] {
        assert!(nips.contains(&json!(nip)), "NIP-{nip} missing: {info}");
    }
}

#[tokio::test]
async fn event_ok_then_req_reads_it_back() {
    let t = target().await;
    let k = keys();
    let mut ws = t.connect(&k).await;
    let e = ev(&k, 1, &[], "published to a started relay");
    ws.publish_ok(&e).await;
    let id = id_hex(&e);

    // Another connection reads it back, from the store.
    let mut reader = t.connect(&k).await;
    let got = reader.query(&[json!({"ids": [id]})]).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["content"], "published to a started relay");
}

#[tokio::test]
async fn close_frame_on_sigterm() {
    let mut t = target().await;
    let k = keys();
    let url = t.url.clone();
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    // A live subscription: the socket is busy when the signal comes.
    ws.send(Message::Text(
        json!(["REQ", "live", {"kinds": [1], "authors": [pk_hex(&k)], "limit": 0}])
            .to_string()
            .into(),
    ))
    .await
    .unwrap();

    match std::env::var("MLS_EXTERNAL_READY_FILE") {
        Ok(ready) if t.own.is_none() => std::fs::write(ready, "ready").unwrap(),
        _ => {
            let relay = t.own.as_mut().expect("MLS_EXTERNAL_READY_FILE not set");
            // Answered before the signal: the subscription is in place.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let status = relay
                .terminate(Duration::from_secs(20))
                .expect("relay still running 20 s after SIGTERM");
            assert!(status.success(), "exit status after SIGTERM: {status}");
        }
    }

    let frame = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => continue,
                Err(e) => panic!("connection ended without a close frame: {e}"),
            }
        }
        panic!("connection ended without a close frame");
    })
    .await
    .expect("no close frame within 30 s");
    let frame = frame.expect("the close frame carries no code and reason");
    assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
    assert_eq!(frame.reason.as_str(), "relay shutting down", "{frame:?}");
}
