//! Graceful shutdown on SIGTERM (Cloud Run's stop signal): open sockets get a close frame, the
//! process exits cleanly, and everything acknowledged before is still there afterwards.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn sigterm_closes_sockets_exits_zero_and_keeps_acknowledged_events() {
    let mut relay = Relay::start().await;
    let author = keys();
    let mut ws = relay.connect().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let e = ev(&author, 1, &[], &format!("before shutdown {i}"));
        ws.send(&json!(["EVENT", event_value(&e)])).await;
        ids.push(id_hex(&e));
    }
    for _ in 0..20 {
        let ok = ws.recv().await;
        assert_eq!(ok[0], "OK", "{ok}");
        assert_eq!(ok[2], true, "{ok}");
    }
    // A live subscription keeps the socket busy: shutdown must still end it.
    ws.send(&json!(["REQ", "live", {"kinds": [1], "limit": 0}]))
        .await;
    assert_eq!(ws.recv().await[0], "EOSE");

    let status = relay
        .terminate(Duration::from_secs(20))
        .expect("relay still running 20 s after SIGTERM");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(
        ws.recv_until_closed(Duration::from_secs(10))
            .await
            .is_none(),
        "the socket should be closed by the relay"
    );
    assert!(
        relay.log().contains("shutdown signal received"),
        "{}",
        relay.log_tail(20)
    );

    relay.spawn().await;
    let mut ws = relay.connect().await;
    ws.send(&json!(["REQ", "after", {"ids": ids}])).await;
    let mut found = Vec::new();
    loop {
        let m = ws.recv().await;
        if m[0] == "EOSE" {
            break;
        }
        found.push(m[2]["id"].as_str().unwrap().to_owned());
    }
    found.sort();
    ids.sort();
    assert_eq!(
        found, ids,
        "every acknowledged event survives a graceful restart"
    );
}

/// Many connections, live subscriptions and writes still in flight when SIGTERM comes: every
/// socket gets a close frame with the reason, the process exits within Cloud Run's 10 s, and
/// what is stored afterwards is exactly what the publishers were told was accepted (an event
/// written but never acknowledged would be published again by its client; one acknowledged
/// but lost would be gone).
#[tokio::test]
async fn sigterm_with_many_connections_and_writes_in_flight() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    const SUBSCRIBERS: usize = 40;
    const PUBLISHERS: usize = 8;
    const BURST: usize = 60;

    let mut relay = Relay::start().await;
    let url = relay.ws_url();
    let author = keys();
    let mut sockets = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        ws.send(Message::Text(
            json!(["REQ", "live", {"kinds": [1], "limit": 0}])
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        sockets.push(ws);
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let events: Vec<_> = (0..BURST)
            .map(|i| ev(&author, 1, &[], &format!("in flight {p}/{i}")))
            .collect();
        publishers.push((ws, events));
    }
    // Every subscription is in place (its EOSE read) before the bursts.
    for ws in &mut sockets {
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(t) if t.as_str().contains("EOSE") => break,
                _ => continue,
            }
        }
    }
    let mut sent = Vec::new();
    for (ws, events) in &mut publishers {
        for e in events.iter() {
            ws.feed(Message::Text(
                json!(["EVENT", event_value(e)]).to_string().into(),
            ))
            .await
            .unwrap();
            sent.push(id_hex(e));
        }
        ws.flush().await.unwrap();
    }

    // SIGTERM while the bursts are being written.
    let started = std::time::Instant::now();
    let status = relay
        .terminate(Duration::from_secs(10))
        .expect("relay still running 10 s after SIGTERM (Cloud Run would SIGKILL it)");
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let took = started.elapsed();

    // Every socket, subscribers and publishers alike, ends with the close frame.
    let mut acked = Vec::new();
    let all = sockets
        .into_iter()
        .chain(publishers.into_iter().map(|(ws, _)| ws));
    for (i, mut ws) in all.enumerate() {
        let mut frame = None;
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Close(f)) => {
                    frame = Some(f);
                    break;
                }
                Ok(Message::Text(t)) => {
                    let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                    if v[0] == "OK" && v[2] == true {
                        acked.push(v[1].as_str().unwrap().to_owned());
                    }
                }
                Ok(_) => {}
                Err(e) => panic!("socket {i} ended without a close frame: {e}"),
            }
        }
        let frame = frame
            .unwrap_or_else(|| panic!("socket {i} ended without a close frame"))
            .unwrap_or_else(|| panic!("socket {i}: close frame without a reason"));
        assert_eq!(u16::from(frame.code), 1001, "socket {i}: {frame:?}");
        assert_eq!(frame.reason.as_str(), "relay shutting down", "socket {i}");
    }
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the signal"
    );

    relay.spawn().await;
    let mut ws = relay.connect().await;
    let mut stored: Vec<String> = Vec::new();
    for chunk in sent.chunks(100) {
        stored.extend(ws.query_ids(&[json!({"ids": chunk})]).await);
    }
    stored.sort();
    acked.sort();
    assert_eq!(
        stored.len(),
        acked.len(),
        "stored {} of {} sent, acknowledged {} (exit took {took:?})",
        stored.len(),
        sent.len(),
        acked.len()
    );
    assert_eq!(
        stored, acked,
        "stored events must be exactly the acknowledged ones"
    );
}
