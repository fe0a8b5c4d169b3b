//! Tests of `kinds/giftwrap.rs`: the 1059 / 444 admission table, the giftwrap membership source.

use crate::tests::fixtures::*;

#[test]
fn giftwrap_and_welcome_rules() {
    run(vec![
        row(
            "444 top-level",
            |w| {
                (
                    ev(&w.alice, 444, T, &[&["e", "x"]], "AAEA"),
                    vec![pk(&w.alice)],
                )
            },
            Err("invalid: kind 444 must be gift-wrapped"),
        ),
        row(
            "marmot 1059 with one p",
            |w| {
                (
                    ev(&w.eph, 1059, T - 3600, &[&["p", &hx(&w.bob)]], "wrapped"),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "marmot 1059 backdated 2 days plus clock grace",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T - 2 * 86400 - crate::giftwrap::GIFTWRAP_CLOCK_GRACE,
                        &[&["p", &hx(&w.bob)]],
                        "x",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "marmot 1059 backdated beyond giftwrap_max_backdate",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T - 2 * 86400 - crate::giftwrap::GIFTWRAP_CLOCK_GRACE - 1,
                        &[&["p", &hx(&w.bob)]],
                        "x",
                    ),
                    vec![],
                )
            },
            Err("invalid: gift wrap created_at is more than giftwrap_max_backdate"),
        ),
        row(
            "1059 without p",
            |w| (ev(&w.eph, 1059, T, &[], "x"), vec![]),
            Err("invalid: kind 1059 must have at least one p tag"),
        ),
        row(
            "1059 with a malformed p",
            |w| (ev(&w.eph, 1059, T, &[&["p", "bob"]], "x"), vec![]),
            Err("invalid: p tag"),
        ),
        row(
            "loxation 1059 with h from an authenticated inviter",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.bob)], &["h", OPEN], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        ),
        row(
            "loxation 1059 with h, unauthenticated: no membership change",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.bob)], &["h", OPEN], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "loxation 1059 to a gated group from a non-member",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.carol)], &["h", GROUP], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![pk(&w.carol)],
                )
            },
            Err("restricted: not a member of group"),
        )
        .setup(Env::gate),
        row(
            "loxation 1059 to a gated group from a member",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.carol)], &["h", GROUP], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![pk(&w.bob)],
                )
            },
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "1059 with two h",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.bob)], &["h", OPEN], &["h", GROUP]],
                        "x",
                    ),
                    vec![pk(&w.alice)],
                )
            },
            Err("invalid: kind 1059 may have at most one h tag"),
        ),
    ]);
}

#[test]
fn giftwrap_membership_source() {
    let mut e = env(false);
    let w = W::new();
    let wrap = |to: &Keypair, group: &str| {
        ev(
            &w.eph,
            1059,
            T,
            &[&["p", &hx(to)], &["h", group], &["v", "gift.1"]],
            "x",
        )
    };
    // Unauthenticated: no membership.
    e.ok(&wrap(&w.bob, GROUP), &[], T);
    assert!(registry::load_record(&e.st, GROUP).unwrap().is_none());
    // Authenticated inviter of an unknown group: it becomes gated, the inviter its owner.
    e.ok(&wrap(&w.bob, GROUP), &[pk(&w.alice)], T);
    let r = e.record(GROUP);
    assert_eq!(r.owner, Some(pk(&w.alice)));
    let mut want = vec![pk(&w.alice), pk(&w.bob)];
    want.sort();
    assert_eq!(r.members, want);
    // A member invites: the recipient joins.
    e.ok(&wrap(&w.carol, GROUP), &[pk(&w.bob)], T);
    assert!(e.record(GROUP).members.contains(&pk(&w.carol)));
    // A stranger cannot invite themselves.
    assert!(e.admit(&wrap(&w.erin, GROUP), &[pk(&w.erin)], T).is_err());
    // Source disabled: accepted, no membership.
    let mut e = env_with(false, |c| {
        c.membership_sources = vec![MembershipSource::Roster]
    });
    e.ok(&wrap(&w.bob, GROUP), &[pk(&w.alice)], T);
    assert!(registry::load_record(&e.st, GROUP).unwrap().is_none());
}
