//! Firestore for the end-to-end tests: a project of its own on the emulator that
//! `FIRESTORE_EMULATOR_HOST` names (scripts/test.sh starts one).
//!
//! `MLS_TEST_STORE=firestore` makes every relay the harness spawns run on Firestore, each in
//! a project of its own, so any end-to-end suite can be run against that backend:
//! `MLS_TEST_STORE=firestore cargo test --test mls_adversarial`.

/// The emulator's `host:port` from `FIRESTORE_EMULATOR_HOST`, or `None`.
pub fn emulator_host() -> Option<String> {
    std::env::var("FIRESTORE_EMULATOR_HOST")
        .ok()
        .filter(|h| !h.is_empty())
}

/// Whether spawned relays should use Firestore (`MLS_TEST_STORE=firestore`). Panics when that
/// is asked without an emulator: a run meant for Firestore must not silently test the
/// embedded store.
pub fn e2e_on_firestore() -> bool {
    match std::env::var("MLS_TEST_STORE").as_deref() {
        Ok("firestore") => {
            assert!(
                emulator_host().is_some(),
                "MLS_TEST_STORE=firestore needs FIRESTORE_EMULATOR_HOST (scripts/services/firestore.sh start)"
            );
            true
        }
        _ => false,
    }
}

/// A project id nobody used yet (the emulator starts each project empty).
pub fn fresh_project() -> String {
    let mut b = [0u8; 8];
    secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut b);
    format!("e2e-{}", hex::encode(b))
}
