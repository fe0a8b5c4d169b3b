//! Durability: `OK true` means committed. A burst of publishes from several connections, the
//! relay SIGKILLed in the middle of it, restarted on the same data directory: every event that
//! was acknowledged is still there, and the store opens cleanly.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const CONNECTIONS: usize = 4;
const EVENTS_PER_CONNECTION: usize = 1000;
/// Kill once this many OKs have come back (the burst is then still running, usually).
const KILL_AFTER_ACKS: usize = 1200;
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_events_survive_sigkill() {
    let mut relay = Relay::builder()
        .config("[limitation]\nmax_limit = 5000\n")
        .start()
        .await;
    let mut all_acked: Vec<String> = Vec::new();

    for round in 0..ROUNDS {
        let acked = Arc::new(Mutex::new(Vec::<String>::new()));
        let refused = Arc::new(Mutex::new(Vec::<Value>::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for c in 0..CONNECTIONS {
            let ws = relay.connect().await.into_inner();
            let (acked, refused, answered) = (acked.clone(), refused.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let (mut sink, mut stream) = ws.split();
                let k = keys();
                let events: Vec<String> = (0..EVENTS_PER_CONNECTION)
                    .map(|i| {
                        let e = ev(&k, 1, &[&["t", "burst"]], &format!("r{round} c{c} #{i}"));
                        json!(["EVENT", e]).to_string()
                    })
                    .collect();
                let sender = tokio::spawn(async move {
                    for text in events {
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break; // relay killed
                        }
                    }
                    sink
                });
                while let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_secs(30), stream.next()).await
                {
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v[0] != "OK" {
                        continue;
                    }
                    if v[2] == true {
                        acked
                            .lock()
                            .unwrap()
                            .push(v[1].as_str().unwrap().to_owned());
                    } else {
                        refused.lock().unwrap().push(v);
                    }
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                let _ = sender.await;
            }));
        }

        // Wait until the burst is well under way (or over), then SIGKILL.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while answered.load(Ordering::SeqCst) < KILL_AFTER_ACKS
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        relay.kill();
        for t in tasks {
            t.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        let refused = refused.lock().unwrap().clone();
        assert!(
            refused.is_empty(),
            "round {round}: events refused during the burst: {:?}",
            &refused[..refused.len().min(5)]
        );
        assert!(
            !acked.is_empty(),
            "round {round}: no event acknowledged before the kill"
        );
        eprintln!(
            "round {round}: {} acknowledged of {} sent before SIGKILL",
            acked.len(),
            CONNECTIONS * EVENTS_PER_CONNECTION
        );
        all_acked.extend(acked);

        // The store opens cleanly on the same data directory ...
        relay.spawn().await;
        let health = relay.get("/health").await;
        assert_eq!(health.status, 200, "{}", health.text());
        assert_eq!(health.json()["status"], "healthy");

        // ... and every acknowledged event, of this round and the earlier ones, is there.
        let mut ws = relay.connect().await;
        let mut missing = Vec::new();
        for chunk in all_acked.chunks(200) {
            let got = ws.query_ids(&[json!({"ids": chunk})]).await;
            for id in chunk {
                if !got.contains(id) {
                    missing.push(id.clone());
                }
            }
        }
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged events lost after SIGKILL, e.g. {:?}",
            missing.len(),
            all_acked.len(),
            &missing[..missing.len().min(5)]
        );
        // The relay still accepts writes after recovery.
        ws.publish_ok(&ev(&keys(), 1, &[], "after recovery")).await;
    }
}
