//! `server.max_connection_age_seconds`: a WebSocket is closed cleanly, with a NOTICE and a
//! close frame saying why, before the platform's request timeout would cut it (Cloud Run ends
//! WebSockets at the service's `timeoutSeconds`), so that its client reconnects.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Reads until the close frame: the texts before it, the frame, and when it came.
async fn until_close(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    timeout: Duration,
) -> (Vec<Value>, Option<CloseFrame>, Instant) {
    let mut texts = Vec::new();
    let frame = tokio::time::timeout(timeout, async {
        while let Some(m) = ws.next().await {
            match m.expect("connection ended without a close frame") {
                Message::Close(f) => return f,
                Message::Text(t) => texts.push(serde_json::from_str(t.as_str()).unwrap()),
                _ => {}
            }
        }
        panic!("connection ended without a close frame");
    })
    .await
    .unwrap_or_else(|_| panic!("no close frame within {timeout:?}; got {texts:?}"));
    (texts, frame, Instant::now())
}

#[tokio::test]
async fn an_old_connection_gets_a_notice_and_a_close_frame_then_reconnects() {
    let relay = Relay::builder()
        .config("[server]\nmax_connection_age_seconds = 2")
        .start()
        .await;
    let k = keys();
    let opened = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(relay.ws_url())
        .await
        .unwrap();
    // A busy connection (a live subscription) is closed all the same.
    ws.send(Message::Text(
        json!(["REQ", "live", {"kinds": [1], "limit": 0}])
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let (texts, frame, closed) = until_close(&mut ws, Duration::from_secs(20)).await;
    let age = closed - opened;
    // Drawn between 90 % and 100 % of the setting.
    assert!(age >= Duration::from_millis(1800), "closed after {age:?}");
    let notice = texts
        .iter()
        .find(|v| v[0] == "NOTICE")
        .unwrap_or_else(|| panic!("no NOTICE before the close frame: {texts:?}"));
    assert!(
        notice[1]
            .as_str()
            .unwrap()
            .contains("server.max_connection_age_seconds"),
        "the NOTICE names the setting: {notice}"
    );
    let frame = frame.expect("the close frame carries a code and a reason");
    assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
    assert_eq!(
        frame.reason.as_str(),
        "max connection age reached, reconnect"
    );

    // The client reconnects and goes on.
    let mut again = relay.connect().await;
    let e = ev(&k, 1, &[], "after reconnecting");
    again.publish_ok(&e).await;
    assert_eq!(
        again.query_ids(&[json!({"ids": [id_hex(&e)]})]).await.len(),
        1
    );
}

/// Positive control: with the default (3000 s) and with 0 (no limit), a connection stays open.
#[tokio::test]
async fn connections_younger_than_the_limit_or_without_one_stay_open() {
    for config in ["", "[server]\nmax_connection_age_seconds = 0"] {
        let relay = Relay::builder().config(config).start().await;
        let mut ws = relay.connect().await;
        ws.expect_silence(3000).await;
        let k = keys();
        let e = ev(&k, 1, &[], "still connected");
        ws.publish_ok(&e).await;
    }
}

#[test]
fn a_limit_beyond_a_year_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[server]\nmax_connection_age_seconds = 999999999999\n",
    )
    .unwrap();
    let out = run_cli(&["check-config", "-c", path.to_str().unwrap()], None, &[]);
    assert!(!out.success(), "accepted: {}", out.stdout);
    assert!(
        out.stderr.contains("server.max_connection_age_seconds"),
        "{}",
        out.stderr
    );
}
