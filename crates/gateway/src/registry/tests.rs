//! Tests of `registry.rs`: the admin API's membership changes.

use crate::tests::fixtures::*;

#[test]
fn admin_api_changes() {
    let mut e = env(true);
    let w = W::new();
    let gw = e.gw.clone();
    let change = |op, pubkeys: Vec<Hex32>| MembershipChange {
        group_id: GROUP.into(),
        op,
        pubkeys,
        display_name: Some("Ops".into()),
        actor: Some(pk(&w.dave)),
    };
    let err = gw
        .apply_admin_change(&change(RosterOp::Remove, vec![pk(&w.bob)]), T, &mut e.st)
        .unwrap_err();
    assert!(err.0.starts_with("invalid: unknown group"), "{}", err.0);
    let err = gw
        .apply_admin_change(&change(RosterOp::Bootstrap, vec![pk(&w.bob)]), T, &mut e.st)
        .unwrap_err();
    assert!(err.0.starts_with("invalid: bootstrap"), "{}", err.0);
    let r = gw
        .apply_admin_change(&change(RosterOp::Add, vec![pk(&w.bob)]), T, &mut e.st)
        .unwrap();
    assert_eq!(
        (r.owner, r.members.clone(), r.display_name.as_deref()),
        (Some(pk(&w.dave)), vec![pk(&w.bob)], Some("Ops"))
    );
    gw.apply_admin_change(&change(RosterOp::Promote, vec![pk(&w.alice)]), T, &mut e.st)
        .unwrap();
    let r = gw
        .apply_admin_change(
            &change(RosterOp::Demote, vec![pk(&w.alice)]),
            T + 1,
            &mut e.st,
        )
        .unwrap();
    assert!(r.admins.is_empty() && r.members.contains(&pk(&w.alice)));
    assert_eq!(r.updated_at, T + 1);
    // The api path gates the group exactly like a roster would.
    let msg = ev(&w.eph, 445, T, &[&["h", GROUP]], "x");
    assert!(e.admit(&msg, &[pk(&w.carol)], T).is_err());
    e.ok(&msg, &[pk(&w.bob)], T);
    // REST reads: members, admins and configured admins only.
    let view = |k: &Keypair| Viewer::authenticated_as([pk(k)]);
    assert!(gw.group_for(&view(&w.bob), GROUP, &e.st).unwrap().is_some());
    assert!(gw
        .group_for(&view(&w.dave), GROUP, &e.st)
        .unwrap()
        .is_some());
    assert!(gw
        .group_for(&view(&w.carol), GROUP, &e.st)
        .unwrap()
        .is_none());
    assert!(gw
        .group_for(&Viewer::anonymous(), GROUP, &e.st)
        .unwrap()
        .is_none());
    assert!(gw.group_for(&view(&w.bob), OPEN, &e.st).unwrap().is_none());
    let summary = gw
        .group_for(&view(&w.bob), GROUP, &e.st)
        .unwrap()
        .unwrap()
        .summary();
    assert_eq!(summary["member_count"], 2);
    assert_eq!(summary.as_object().unwrap().len(), 5);
    assert_eq!(gw.list_groups(&e.st).unwrap().len(), 1);
    // Api source disabled.
    let mut e2 = env_with(true, |c| {
        c.membership_sources = vec![MembershipSource::Roster]
    });
    let gw2 = e2.gw.clone();
    let err = gw2
        .apply_admin_change(&change(RosterOp::Add, vec![pk(&w.bob)]), T, &mut e2.st)
        .unwrap_err();
    assert!(err
        .0
        .starts_with("restricted: the api membership source is disabled"));
}

#[test]
fn member_key_is_the_hex_of_group_and_pubkey() {
    // The stored row's key format: existing stores hold rows under it, so it must not change.
    let pubkey = Hex32([0xa5; 32]);
    for group in ["", "g", GROUP, &"ab".repeat(32), "é/\u{0}"] {
        assert_eq!(
            super::member_key(group, &pubkey),
            format!("m/{}/{pubkey}", hex::encode(group)).into_bytes(),
            "group {group:?}"
        );
    }
}
