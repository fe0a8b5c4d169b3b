//! Tests of `purge.rs`: the state purge.

use crate::tests::fixtures::*;

#[test]
fn purge_state_drops_expired_bookkeeping() {
    let mut e = env(false);
    let w = W::new();
    e.ok(&lox_kp(&w.alice, &hx(&w.alice), "short", T + 100), &[], T);
    e.ok(&mdk_kp(&w.alice, 30443, &reference(1), T, &[]), &[], T);
    e.ok(&ev(&w.eph, 445, T, &[&["h", OPEN]], "x"), &[], T);
    let gw = e.gw.clone();
    let removed = gw.purge_state(T + 4000, &mut e.st).unwrap();
    assert!(
        removed >= 3,
        "one KeyPackage row, its reference, the rate counters: {removed}"
    );
    assert!(e
        .st
        .get(&keypackage::reference_key("short"))
        .unwrap()
        .is_none());
    assert_eq!(
        gw.keypackages_of(&pk(&w.alice), T + 4000, &e.st)
            .unwrap()
            .len(),
        1
    );
    // The reference is free again after expiry.
    e.ok(
        &lox_kp(&w.bob, &hx(&w.bob), "short", T + 4100),
        &[],
        T + 4000,
    );
}
