//! Tests of `kinds/mod.rs`: retention, counted from receipt, per family.

use crate::tests::fixtures::*;

#[test]
fn retention_counts_from_receipt() {
    let mut e = env(false);
    let w = W::new();
    let cfg = e.gw.config().clone();
    let at = T + 1000;
    let gift = e.ok(
        &ev(&w.eph, 1059, T - 86400, &[&["p", &hx(&w.bob)]], "x"),
        &[],
        at,
    );
    assert_eq!(gift.expires_at, Some(at + cfg.welcome_ttl));
    let msg = e.ok(&ev(&w.eph, 445, T - 5000, &[&["h", OPEN]], "x"), &[], at);
    assert_eq!(
        msg.expires_at,
        Some(at + cfg.message_archive_ttl_days * 86400)
    );
    let soon = (at + 60).to_string();
    let msg = e.ok(
        &ev(&w.eph, 445, T, &[&["h", OPEN], &["expiration", &soon]], "y"),
        &[],
        at,
    );
    assert_eq!(msg.expires_at, Some(at + 60), "NIP-40 expiration first");
    let dm = e.ok(&ev(&w.alice, 446, T, &[&["p", &hx(&w.bob)]], "x"), &[], at);
    assert_eq!(
        dm.expires_at,
        Some(at + cfg.message_archive_ttl_days * 86400)
    );
    let kp = e.ok(&mdk_kp(&w.alice, 30443, &reference(1), T, &[]), &[], at);
    assert_eq!(kp.expires_at, Some(at + cfg.keypackage_ttl));
    let kp = e.ok(&lox_kp(&w.bob, &hx(&w.bob), "r", at + 500), &[], at);
    assert_eq!(kp.expires_at, Some(at + 500));
    let roster = e.ok(&roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]), &[], at);
    assert_eq!(roster.expires_at, None, "kept while the group exists");
}

#[test]
fn archive_off_delivers_live_only() {
    let mut e = env_with(false, |c| c.enable_message_archive = false);
    let w = W::new();
    for event in [
        ev(&w.eph, 445, T, &[&["h", OPEN]], "x"),
        ev(&w.alice, 446, T, &[&["p", &hx(&w.bob)]], "x"),
        ev(&w.eph, 1059, T, &[&["p", &hx(&w.bob)]], "x"),
    ] {
        assert!(!e.ok(&event, &[], T).store, "kind {}", event.kind);
    }
    // State changes still happen: a gift wrap's membership, a roster, a KeyPackage.
    e.ok(
        &ev(&w.eph, 1059, T, &[&["p", &hx(&w.bob)], &["h", GROUP]], "x"),
        &[pk(&w.alice)],
        T,
    );
    assert!(e.record(GROUP).members.contains(&pk(&w.bob)));
    assert!(
        e.ok(&mdk_kp(&w.alice, 443, &reference(1), T, &[]), &[], T)
            .store
    );
    // OPEN was served open (live) above: only a configured admin may gate it now.
    assert!(
        e.ok(&roster_ev(&w.dave, OPEN, "bootstrap", 1, &[]), &[], T)
            .store
    );
}
