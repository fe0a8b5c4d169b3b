//! Tests of `kinds/roster.rs`: the 450 admission table, sequence and atomicity.

use crate::tests::fixtures::*;

#[test]
fn roster_rules() {
    run(vec![
        row(
            "bootstrap of an unknown group",
            |w| {
                (
                    roster_ev(&w.alice, GROUP, "bootstrap", 1, &[&w.bob]),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "bootstrap with auth on, signer authenticated",
            |w| {
                (
                    roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        )
        .auth(),
        row(
            "bootstrap with auth on, unauthenticated",
            |w| (roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]), vec![]),
            Err("auth-required: roster events"),
        )
        .auth(),
        row(
            "bootstrap with auth on, authenticated as someone else",
            |w| {
                (
                    roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]),
                    vec![pk(&w.bob)],
                )
            },
            Err("restricted: roster signer is not authenticated"),
        )
        .auth(),
        row(
            "bootstrap of an existing group",
            |w| (roster_ev(&w.carol, GROUP, "bootstrap", 9, &[]), vec![]),
            Err("restricted: group 865f0c83… already exists"),
        )
        .setup(Env::gate),
        row(
            "bootstrap of an existing group by a configured admin",
            |w| (roster_ev(&w.dave, GROUP, "bootstrap", 9, &[&w.bob]), vec![]),
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "add by a group admin",
            |w| (roster_ev(&w.alice, GROUP, "add", 4, &[&w.carol]), vec![]),
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "add by a configured admin",
            |w| (roster_ev(&w.dave, GROUP, "add", 4, &[&w.carol]), vec![]),
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "add by a member",
            |w| (roster_ev(&w.bob, GROUP, "add", 4, &[&w.carol]), vec![]),
            Err("restricted: roster signer is not an admin of group"),
        )
        .setup(Env::gate),
        row(
            "add by a stranger",
            |w| (roster_ev(&w.carol, GROUP, "add", 4, &[&w.carol]), vec![]),
            Err("restricted: roster signer is not an admin of group"),
        )
        .setup(Env::gate),
        row(
            "seq replayed",
            |w| (roster_ev(&w.alice, GROUP, "add", 3, &[&w.carol]), vec![]),
            Err("blocked: roster seq must be greater than 3"),
        )
        .setup(Env::gate),
        row(
            "seq going backwards",
            |w| (roster_ev(&w.alice, GROUP, "add", 1, &[&w.carol]), vec![]),
            Err("blocked: roster seq must be greater than 3"),
        )
        .setup(Env::gate),
        row(
            "op on an unknown group",
            |w| (roster_ev(&w.alice, GROUP, "add", 1, &[&w.carol]), vec![]),
            Err("invalid: unknown group"),
        ),
        row(
            "unknown op",
            |w| (roster_ev(&w.alice, GROUP, "kick", 1, &[&w.carol]), vec![]),
            Err("invalid: unknown roster op"),
        ),
        row(
            "missing op",
            |w| {
                (
                    ev(&w.alice, 450, T, &[&["h", GROUP], &["seq", "1"]], ""),
                    vec![],
                )
            },
            Err("invalid: kind 450 must have an op tag"),
        ),
        row(
            "missing seq",
            |w| {
                (
                    ev(&w.alice, 450, T, &[&["h", GROUP], &["op", "bootstrap"]], ""),
                    vec![],
                )
            },
            Err("invalid: kind 450 must have a seq tag"),
        ),
        row(
            "non-numeric seq",
            |w| {
                (
                    ev(
                        &w.alice,
                        450,
                        T,
                        &[&["h", GROUP], &["op", "bootstrap"], &["seq", "x"]],
                        "",
                    ),
                    vec![],
                )
            },
            Err("invalid: seq tag must be an unsigned integer"),
        ),
        row(
            "missing h",
            |w| {
                (
                    ev(&w.alice, 450, T, &[&["op", "bootstrap"], &["seq", "1"]], ""),
                    vec![],
                )
            },
            Err("invalid: kind 450 must have exactly one h tag"),
        ),
        row(
            "add without targets",
            |w| (roster_ev(&w.alice, GROUP, "add", 4, &[]), vec![]),
            Err("invalid: roster op add needs at least one p tag"),
        )
        .setup(Env::gate),
        row(
            "demoting the last admin",
            |w| (roster_ev(&w.alice, GROUP, "demote", 4, &[&w.alice]), vec![]),
            Err("invalid: roster op demote would leave group"),
        )
        .setup(Env::gate),
        row(
            "removing the last admin",
            |w| (roster_ev(&w.alice, GROUP, "remove", 4, &[&w.alice]), vec![]),
            Err("invalid: roster op remove would leave group"),
        )
        .setup(Env::gate),
        row(
            "roster source disabled",
            |w| (roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]), vec![]),
            Err("restricted: the roster membership source is disabled"),
        )
        .cfg(|c| c.membership_sources = vec![MembershipSource::Api]),
    ]);
}

#[test]
fn roster_sequence_and_membership() {
    let mut e = env(false);
    let w = W::new();
    e.roster(&w.alice, "bootstrap", 10, &[&w.bob]).unwrap();
    let r = e.record(GROUP);
    assert_eq!(r.owner, Some(pk(&w.alice)));
    assert_eq!(r.admins, vec![pk(&w.alice)]);
    assert_eq!(r.member_count, 2);
    assert_eq!(r.last_seq, Some(10));

    assert!(e
        .roster(&w.alice, "add", 10, &[&w.carol])
        .unwrap_err()
        .0
        .starts_with("blocked:"));
    assert!(e
        .roster(&w.alice, "add", 9, &[&w.carol])
        .unwrap_err()
        .0
        .starts_with("blocked:"));
    e.roster(&w.alice, "add", 12, &[&w.carol]).unwrap();
    e.roster(&w.alice, "promote", 13, &[&w.bob]).unwrap();
    e.roster(&w.bob, "demote", 14, &[&w.alice]).unwrap();
    let r = e.record(GROUP);
    assert_eq!(r.admins, vec![pk(&w.bob)]);
    assert!(r.members.contains(&pk(&w.alice)), "demote keeps membership");
    // alice is no longer an admin.
    assert!(e
        .roster(&w.alice, "add", 15, &[&w.erin])
        .unwrap_err()
        .0
        .starts_with("restricted:"));
    e.roster(&w.bob, "replace", 15, &[&w.bob, &w.erin]).unwrap();
    let r = e.record(GROUP);
    let mut want = vec![pk(&w.bob), pk(&w.erin)];
    want.sort();
    assert_eq!(r.members, want);
    assert_eq!(r.member_count, 2);
    e.roster(&w.bob, "remove", 16, &[&w.erin]).unwrap();
    assert_eq!(e.record(GROUP).members, vec![pk(&w.bob)]);
    // Display name.
    let named = ev(
        &w.bob,
        450,
        T,
        &[
            &["h", GROUP],
            &["op", "add"],
            &["seq", "17"],
            &["p", &hx(&w.carol)],
            &["name", "Friends"],
        ],
        "",
    );
    e.ok(&named, &[], T);
    assert_eq!(e.record(GROUP).display_name.as_deref(), Some("Friends"));
    // A configured admin re-bootstraps: roster reset, seq continues.
    e.roster(&w.dave, "bootstrap", 18, &[&w.alice]).unwrap();
    let r = e.record(GROUP);
    assert_eq!(r.owner, Some(pk(&w.dave)));
    assert_eq!(r.admins, vec![pk(&w.dave)]);
    assert_eq!(r.last_seq, Some(18));
}

#[test]
fn refused_roster_changes_nothing() {
    let mut e = env(false);
    e.gate();
    let w = W::new();
    let before = e.st.clone();
    // Each of these passes every check but one; Env::admit asserts the state is untouched.
    for (signer, op, seq) in [
        (&w.bob, "add", 4),
        (&w.alice, "add", 3),
        (&w.alice, "demote", 4),
        (&w.carol, "bootstrap", 4),
    ] {
        let target = if op == "demote" { &w.alice } else { &w.carol };
        assert!(e.roster(signer, op, seq, &[target]).is_err(), "{op} {seq}");
    }
    assert_eq!(e.st, before);
}
