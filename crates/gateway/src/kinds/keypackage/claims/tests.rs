//! Tests of `kinds/keypackage/claims.rs`: KeyPackage claims (§5).

use crate::tests::fixtures::*;

/// `owner` publishes `n` KeyPackages (newest last); returns them newest first, as a REQ would.
fn publish_kps(e: &mut Env, owner: &Keypair, n: u8, kind: u16) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = reference(i + 1 + pk(owner).0[0] % 64 * 2);
        let kp = mdk_kp(owner, kind, &r, T + u64::from(i), &[]);
        e.ok(&kp, &[pk(owner)], T);
        out.push(kp);
    }
    out.reverse();
    out
}

fn claim(e: &mut Env, requester: &Keypair, candidates: &[Event]) -> Result<Vec<Hex32>, Rejection> {
    let gw = e.gw.clone();
    gw.claim_keypackages(
        &Viewer::authenticated_as([pk(requester)]),
        candidates,
        T + 10,
        &mut e.st,
    )
}

fn ids(events: &[&Event]) -> Vec<Hex32> {
    events.iter().map(|e| e.id).collect()
}

#[test]
fn claims_serve_newest_unclaimed_and_never_the_last() {
    let mut e = claims_env(|_| {});
    let w = W::new();
    let kps = publish_kps(&mut e, &w.alice, 4, 443); // kps[0] newest
    assert_eq!(
        claim(&mut e, &w.bob, &kps).unwrap(),
        ids(&[&kps[0], &kps[1]])
    );
    assert_eq!(
        claim(&mut e, &w.carol, &kps).unwrap(),
        ids(&[&kps[2], &kps[3]]),
        "kps[3] is the last: served, not claimed"
    );
    assert_eq!(
        claim(&mut e, &w.erin, &kps).unwrap(),
        ids(&[&kps[3]]),
        "the last one stays available"
    );
    assert_eq!(
        claim(&mut e, &w.bob, &kps).unwrap(),
        ids(&[&kps[0], &kps[1]]),
        "a requester gets back its own claims"
    );
    // Nothing of alice's was claimed twice.
    let rows = keypackage::rows_of(&e.st, &pk(&w.alice), T).unwrap();
    let claimed: Vec<_> = rows.iter().map(|(_, r)| r.claimed_by).collect();
    assert_eq!(
        claimed,
        vec![Some(pk(&w.bob)), Some(pk(&w.bob)), Some(pk(&w.carol)), None]
    );
}

#[test]
fn claims_single_keypackage_is_last_resort() {
    let mut e = claims_env(|_| {});
    let w = W::new();
    let kps = publish_kps(&mut e, &w.alice, 1, 30443);
    for requester in [&w.bob, &w.carol, &w.erin] {
        assert_eq!(claim(&mut e, requester, &kps).unwrap(), ids(&[&kps[0]]));
    }
    let rows = keypackage::rows_of(&e.st, &pk(&w.alice), T).unwrap();
    assert_eq!(rows[0].1.claimed_by, None);
}

#[test]
fn claims_respect_max_per_query_and_pass_through_the_rest() {
    let mut e = claims_env(|c| c.max_keypackages_per_query = 1);
    let w = W::new();
    let alice_kps = publish_kps(&mut e, &w.alice, 3, 443);
    let bob_kps = publish_kps(&mut e, &w.bob, 3, 443);
    let carol_kps = publish_kps(&mut e, &w.carol, 2, 443);
    let note = ev(&w.dave, 1, T, &[], "x");
    let mut candidates = vec![note.clone()];
    candidates.extend(alice_kps.iter().cloned());
    candidates.extend(bob_kps.iter().cloned());
    candidates.extend(carol_kps.iter().cloned());
    // carol asks: one of alice's, one of bob's, all of her own, the note.
    let mut want = vec![note.id, alice_kps[0].id, bob_kps[0].id];
    want.extend(carol_kps.iter().map(|k| k.id));
    assert_eq!(claim(&mut e, &w.carol, &candidates).unwrap(), want);
}

#[test]
fn claims_dual_published_keypackage_is_one() {
    let mut e = claims_env(|c| c.max_keypackages_per_query = 1);
    let w = W::new();
    let mut candidates = Vec::new();
    for i in 0..2u8 {
        for kind in [30443u16, 443] {
            let kp = mdk_kp(&w.alice, kind, &reference(50 + i), T + u64::from(i), &[]);
            e.ok(&kp, &[pk(&w.alice)], T);
            candidates.insert(0, kp);
        }
    }
    let served = claim(&mut e, &w.bob, &candidates).unwrap();
    assert_eq!(served.len(), 2, "both events of the newest KeyPackage");
    let newest_ref = reference(51);
    for id in &served {
        let event = candidates.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(event.tag_value("i"), Some(newest_ref.as_str()));
    }
}

#[test]
fn claims_fetch_limit_per_pair() {
    let mut e = claims_env(|c| c.max_keypackage_fetches_per_hour = 2);
    let w = W::new();
    let kps = publish_kps(&mut e, &w.alice, 5, 443);
    let bob_kps = publish_kps(&mut e, &w.bob, 2, 443);
    claim(&mut e, &w.carol, &kps).unwrap();
    claim(&mut e, &w.carol, &kps).unwrap();
    let before = e.st.clone();
    let refused = claim(&mut e, &w.carol, &kps).unwrap_err();
    assert!(
        refused
            .0
            .starts_with("rate-limited: max_keypackage_fetches_per_hour"),
        "{}",
        refused.0
    );
    assert_eq!(e.st, before, "a refused fetch claims nothing");
    claim(&mut e, &w.carol, &bob_kps).expect("another owner is another pair");
    claim(&mut e, &w.erin, &kps).expect("another requester is another pair");
    // An hour later the pair may fetch again.
    let gw = e.gw.clone();
    gw.claim_keypackages(
        &Viewer::authenticated_as([pk(&w.carol)]),
        &kps,
        T + 3700,
        &mut e.st,
    )
    .expect("next window");
}

#[test]
fn claims_pass_through_when_not_applicable() {
    let w = W::new();
    // Claims off.
    let mut e = env(true);
    let kps = publish_kps(&mut e, &w.alice, 3, 443);
    assert_eq!(
        claim(&mut e, &w.bob, &kps).unwrap(),
        ids(&kps.iter().collect::<Vec<_>>())
    );
    // Claims on: an unauthenticated requester gets unclaimed ones within the per-owner
    // budget and claims nothing; the owner gets all of its own.
    let mut e = claims_env(|_| {});
    let kps = publish_kps(&mut e, &w.alice, 3, 443);
    let gw = e.gw.clone();
    let all = ids(&kps.iter().collect::<Vec<_>>());
    let anonymous = gw
        .claim_keypackages(&Viewer::anonymous(), &kps, T, &mut e.st)
        .unwrap();
    assert_eq!(
        anonymous.len(),
        gw.config().max_keypackages_per_query as usize
    );
    assert!(anonymous.iter().all(|id| all.contains(id)));
    assert_eq!(claim(&mut e, &w.alice, &kps).unwrap(), all);
    assert!(keypackage::rows_of(&e.st, &pk(&w.alice), T)
        .unwrap()
        .iter()
        .all(|(_, r)| r.claimed_by.is_none()));
}
