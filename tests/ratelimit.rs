//! The relay's own rate limits end to end: events and REQs per minute (per IP, and per
//! authenticated pubkey too), REST requests (429), connections per IP, and `X-Forwarded-For` only
//! when trusted. Each limit is reached, refused with its prefix, then recovers once the bucket
//! refills — waited for by retrying, never by asserting a duration.

mod common;
mod support_api;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use support_api::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How long a refused client may have to wait for its bucket to refill (generous: the
/// limits below refill one token per second).
const RECOVERY: Duration = Duration::from_secs(20);

/// Waits a little between retries, and fails the test after [`RECOVERY`].
async fn retry_pause(what: &str, started: Instant) {
    assert!(
        started.elapsed() < RECOVERY,
        "{what}: did not recover within {RECOVERY:?}"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
}

#[tokio::test]
async fn events_per_minute_are_limited_per_ip_then_per_pubkey_and_recover() {
    // 60 per minute: a burst of 60, then one more per second.
    let relay = Relay::builder()
        .config("[extensions.mls_gateway.rate_limits]\nmax_events_per_minute = 60\n")
        .start()
        .await;
    let k = keys();
    let mut ws = relay.connect().await;
    let burst: Vec<_> = (0..90)
        .map(|i| ev(&k, 1, &[], &format!("note {i}")))
        .collect();
    for e in &burst {
        ws.send(&json!(["EVENT", e])).await;
    }
    let mut limited = 0;
    let mut accepted = 0;
    for e in &burst {
        let (ok, msg) = ws.wait_ok(&id_hex(e)).await;
        if ok {
            accepted += 1;
        } else {
            assert_prefix(&msg, "rate-limited:");
            limited += 1;
        }
    }
    assert!(
        limited > 0,
        "90 events in a burst with a limit of 60/min: none refused"
    );
    let metrics = scrape(&relay, None).await;
    let limited_f = f64::from(limited);
    assert_eq!(
        metrics.get("mls_relay_rate_limited_total", &[("limit", "events")]),
        limited_f
    );
    assert_eq!(
        metrics.get("mls_gateway_errors_total", &[("reason", "rate-limited")]),
        limited_f
    );
    assert!(
        accepted >= 60,
        "the first 60 of the burst are allowed, got {accepted}"
    );

    // An authenticated connection from the same IP shares the IP's allowance (a fresh key
    // must not reset the limit: issue 8, rule 9).
    let alice = keys();
    let mut authed = relay.connect_authed(&alice).await;
    let (ok, msg) = authed.publish(&ev(&alice, 1, &[], "from alice")).await;
    assert!(!ok, "a fresh key reset the IP's event limit");
    assert_prefix(&msg, "rate-limited:");

    // The anonymous IP bucket refills.
    let started = Instant::now();
    for n in 0.. {
        let (ok, msg) = ws.publish(&ev(&k, 1, &[], &format!("retry {n}"))).await;
        if ok {
            break;
        }
        assert_prefix(&msg, "rate-limited:");
        retry_pause("events per minute", started).await;
    }
}

#[tokio::test]
async fn reqs_per_minute_are_limited_and_recover() {
    let relay = Relay::builder()
        .config("[limitation]\nmax_reqs_per_minute = 60\n")
        .start()
        .await;
    let mut ws = relay.connect().await;
    let filter = json!({"kinds": [1], "limit": 1});
    for i in 0..90 {
        ws.send(&json!(["COUNT", format!("c{i}"), filter])).await;
    }
    let mut limited = 0;
    for i in 0..90 {
        let sub = format!("c{i}");
        let v = ws
            .wait_for("COUNT or CLOSED", |v| {
                (v[0] == "COUNT" || v[0] == "CLOSED") && v[1] == sub
            })
            .await;
        if v[0] == "CLOSED" {
            assert_prefix(v[2].as_str().unwrap(), "rate-limited:");
            limited += 1;
        }
    }
    assert!(
        limited > 0,
        "90 COUNTs with a limit of 60/min: none refused"
    );
    // REQ shares the allowance and is refused with CLOSED too.
    let msg = ws
        .req_closed("after-burst", std::slice::from_ref(&filter))
        .await;
    assert_prefix(&msg, "rate-limited:");

    let started = Instant::now();
    for n in 0.. {
        let sub = format!("r{n}");
        ws.send_req(&sub, std::slice::from_ref(&filter)).await;
        match ws.collect(&sub).await {
            Ok(_) => break,
            Err(msg) => assert_prefix(&msg, "rate-limited:"),
        }
        retry_pause("REQs per minute", started).await;
    }
}

#[tokio::test]
async fn api_requests_get_429_then_recover() {
    let relay = Relay::builder()
        .config("[limitation]\nmax_reqs_per_minute = 60\n")
        .start()
        .await;
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&keys()));
    let mut limited = None;
    for _ in 0..90 {
        let resp = relay.get(&path).await;
        if resp.status == 429 {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let resp = limited.expect("90 API calls with a limit of 60/min: none refused");
    assert_error(&resp, 429, "rate_limited");
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    let metrics = scrape(&relay, None).await;
    assert_eq!(
        metrics.get("mls_relay_rate_limited_total", &[("limit", "api")]),
        1.0
    );

    // A signed caller from the exhausted IP is refused too (a fresh key must not reset the
    // limit: issue 8, rule 9).
    let alice = keys();
    let signed = call(
        &relay,
        "GET",
        &format!("/keypackages?owner={}", pk_hex(&alice)),
        Some(&alice),
        None,
    )
    .await;
    assert_error(&signed, 429, "rate_limited");

    let started = Instant::now();
    loop {
        let resp = relay.get(&path).await;
        if resp.status == 200 {
            break;
        }
        assert_error(&resp, 429, "rate_limited");
        retry_pause("API requests per minute", started).await;
    }
}

/// A WebSocket handshake with extra headers: `Ok(stream)` or `Err(HTTP status)`.
async fn ws_connect(relay: &Relay, headers: &[(&'static str, &str)]) -> Result<impl Sized, u16> {
    let mut req = relay.ws_url().into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
    {
        Ok((stream, _)) => Ok(stream),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed: {e}"),
    }
}

#[tokio::test]
async fn connections_per_ip_are_limited_and_freed_on_close() {
    let relay = Relay::builder()
        .config("[limitation]\nmax_connections_per_ip = 2\n")
        .start()
        .await;
    let first = relay.connect().await;
    let _second = relay.connect().await;
    assert_eq!(ws_connect(&relay, &[]).await.err(), Some(429));
    let metrics = scrape(&relay, None).await;
    assert_eq!(
        metrics.get("mls_relay_rate_limited_total", &[("limit", "connections")]),
        1.0
    );
    assert_eq!(metrics.get("mls_relay_connections", &[]), 2.0);
    // HTTP requests are not connections in this sense.
    assert_eq!(relay.get("/health").await.status, 200);
    first.close_ws().await;
    let started = Instant::now();
    while ws_connect(&relay, &[]).await.is_err() {
        retry_pause("a connection slot", started).await;
    }
}

#[tokio::test]
async fn forwarded_for_is_used_only_when_trusted() {
    // Not trusted: every connection is 127.0.0.1 whatever the header says.
    let relay = Relay::builder()
        .config("[limitation]\nmax_connections_per_ip = 1\n")
        .start()
        .await;
    let _a = ws_connect(&relay, &[("x-forwarded-for", "203.0.113.1")])
        .await
        .unwrap();
    assert_eq!(
        ws_connect(&relay, &[("x-forwarded-for", "203.0.113.2")])
            .await
            .err(),
        Some(429)
    );
    drop(relay);

    // Trusted: the last X-Forwarded-For entry is the client.
    let relay = Relay::builder()
        .config("[server]\ntrust_forwarded_for = true\n[limitation]\nmax_connections_per_ip = 1\n")
        .start()
        .await;
    let _a = ws_connect(&relay, &[("x-forwarded-for", "203.0.113.1")])
        .await
        .unwrap();
    let _b = ws_connect(&relay, &[("x-forwarded-for", "198.51.100.7, 203.0.113.2")])
        .await
        .unwrap();
    assert_eq!(
        ws_connect(&relay, &[("x-forwarded-for", "203.0.113.2")])
            .await
            .err(),
        Some(429),
        "same client IP as the previous connection"
    );
    // A spoofed first entry does not help: only the last one (the proxy's) counts.
    assert_eq!(
        ws_connect(&relay, &[("x-forwarded-for", "192.0.2.99, 203.0.113.1")])
            .await
            .err(),
        Some(429)
    );
}
