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
