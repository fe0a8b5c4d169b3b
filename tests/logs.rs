//! The relay's logs during a session that publishes and reads MLS events (KeyPackage 443,
//! group message 445, gift wrap 1059) and uses the admin API: JSON lines with the fields Cloud
//! Logging reads, one line per connection open/close (with reason) and per refused event (with
//! its rule), and never event content, a full pubkey, or a token.

mod common;
mod support_api;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use support_api::*;

fn lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect()
}

#[tokio::test]
async fn logs_carry_no_content_no_full_pubkeys_and_no_tokens() {
    let (admin, alice, bob) = (keys(), keys(), keys());
    let relay = Relay::builder()
        .config(&format!(
            "[auth]\nenabled = true\n[extensions.mls_gateway]\nadmin_pubkeys = [\"{}\"]\n",
            pk_hex(&admin)
        ))
        .env("METRICS_TOKEN", "metrics-secret-4f1c")
        .start()
        .await;

    // Content strings unique enough to search for.
    let kp_content = "QUFFQUFTREt1NEhQSGhYcGFyZytvNE5ZRkxGMkZDTU1CejRLZDhyL0Uyb05Z";
    let msg_content = "Z3JvdXAtbWVzc2FnZS1jaXBoZXJ0ZXh0LXVuaXF1ZS03NzE=";
    let wrap_content = "Z2lmdC13cmFwLWNpcGhlcnRleHQtdW5pcXVlLTQwMg==";
    let refused_content = "cmVmdXNlZC1ydW1vci1jb250ZW50LTkxMw==";
    let group = unique_hex();
    let ephemeral = keys();

    let mut a = relay.connect_authed(&alice).await;
    let mut b = relay.connect_authed(&bob).await;
    let kp = keypackage(&alice, 443, &unique_hex(), kp_content, &[]);
    a.publish_ok(&kp).await;
    let msg = ev(&ephemeral, 445, &[&["h", &group]], msg_content);
    a.publish_ok(&msg).await;
    let wrap = ev(&keys(), 1059, &[&["p", &pk_hex(&bob)]], wrap_content);
    a.publish_ok(&wrap).await;
    // Refused events: one by the gateway rules, one by the relay's own checks.
    let (ok, _) = a.publish(&ev(&alice, 444, &[], refused_content)).await;
    assert!(!ok);
    let mut forged = ev(&alice, 1, &[], refused_content);
    forged.sig = ev(&bob, 1, &[], "x").sig;
    let (ok, _) = a.publish(&forged).await;
    assert!(!ok);

    // Bob reads everything back.
    let got = b
        .query(&[json!({"kinds": [443], "authors": [pk_hex(&alice)]})])
        .await;
    assert_eq!(got.len(), 1);
    let got = b.query(&[json!({"kinds": [445], "#h": [group]})]).await;
    assert_eq!(got.len(), 1);
    let got = b
        .query(&[json!({"kinds": [1059], "#p": [pk_hex(&bob)]})])
        .await;
    assert_eq!(got.len(), 1);

    // REST with NIP-98 tokens, and a metrics scrape with its token.
    let resp = call(
        &relay,
        "POST",
        &format!("/admin/groups/{group}/members"),
        Some(&admin),
        Some(&pubkeys_body(&[pk_hex(&alice), pk_hex(&bob)])),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&alice));
    let token = nip98(&bob, &url(&relay, &path), "GET", None);
    assert_eq!(
        relay
            .get_with(&path, &[("Authorization", &token)])
            .await
            .status,
        200
    );
    scrape(&relay, Some("metrics-secret-4f1c")).await;

    a.close_ws().await;
    b.close_ws().await;
    // Wait until both connections have logged their close.
    let mut log = String::new();
    for _ in 0..100 {
        log = relay.log();
        if log.matches("connection closed").count() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entries = lines(&log);

    // Every line is a JSON object Cloud Logging understands.
    for e in &entries {
        for field in ["timestamp", "severity", "level", "target", "message"] {
            assert!(e.get(field).is_some(), "{field} missing in {e}");
        }
    }

    // Never content, a full pubkey, an id in full, or a secret.
    let forbidden = [
        kp_content.to_string(),
        msg_content.to_string(),
        wrap_content.to_string(),
        refused_content.to_string(),
        pk_hex(&alice),
        pk_hex(&bob),
        pk_hex(&admin),
        pk_hex(&ephemeral),
        npub(&alice),
        npub(&bob),
        group.clone(),
        "metrics-secret-4f1c".to_string(),
        token.trim_start_matches("Nostr ").to_string(),
    ];
    for s in &forbidden {
        assert!(!log.contains(s.as_str()), "the log contains {s:?}:\n{log}");
    }
    let long_hex = log
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|run| run.len() >= 64);
    assert!(
        long_hex.is_none(),
        "a 64-hex value in the log: {long_hex:?}"
    );

    // One line per connection open and close, with the connection id, the IP and a reason.
    let opened: Vec<&Value> = entries
        .iter()
        .filter(|e| e["message"] == "connection opened")
        .collect();
    let closed: Vec<&Value> = entries
        .iter()
        .filter(|e| e["message"] == "connection closed")
        .collect();
    assert_eq!(opened.len(), 2, "{log}");
    assert_eq!(closed.len(), 2, "{log}");
    for e in opened.iter().chain(&closed) {
        assert!(e["fields"]["conn"].is_u64(), "{e}");
        assert_eq!(e["fields"]["ip"], "127.0.0.1", "{e}");
    }
    for e in &closed {
        assert_eq!(e["fields"]["reason"], "client closed", "{e}");
    }

    // One line per refused event: kind, short id, the rule.
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|e| e["message"] == "event refused")
        .collect();
    assert_eq!(refused.len(), 2, "{log}");
    let kinds: Vec<u64> = refused
        .iter()
        .map(|e| e["fields"]["kind"].as_u64().unwrap())
        .collect();
    assert!(kinds.contains(&444) && kinds.contains(&1), "{kinds:?}");
    for e in &refused {
        assert_eq!(e["fields"]["rule"], "invalid", "{e}");
        assert_eq!(e["fields"]["event"].as_str().unwrap().len(), 8, "{e}");
        assert!(
            e["fields"]["reason"]
                .as_str()
                .unwrap()
                .starts_with("invalid:"),
            "{e}"
        );
    }
}
