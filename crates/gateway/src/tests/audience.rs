//! Visibility as data: the read keys stored with an event and the scope a reader holds are
//! the visibility rule written another way. The scope is a pre-filter, so it must never
//! hide what `may_see` shows; here it is also checked to keep out what `may_see` hides,
//! except where the rule itself changed after the event was stored (a group gated later).

use super::*;

impl Env {
    /// Does `viewer`'s read scope hold `e` (its audience worked out over today's state)?
    fn in_scope(&self, viewer: &[Hex32], e: &Event) -> bool {
        let v = Viewer::authenticated_as(viewer.iter().copied());
        let audience = self.stored(e);
        self.gw.read_scope(&v, &self.st).admits(audience.keys())
    }

    /// The audience the store records for `e` (the `Admission` hook, not fan-out's).
    fn stored(&self, e: &Event) -> mls_store::Audience {
        Admission::audience(&self.gw, e, &self.st)
    }

    fn build_member_groups(&mut self, chunk: usize) -> MemberGroupsBuild {
        let mut progress = MemberGroupsBuild::default();
        let mut rounds = 0;
        while !progress.done() {
            let gw = &self.gw;
            gw.build_member_groups_chunk(&mut self.st, &mut progress, chunk)
                .unwrap();
            rounds += 1;
            assert!(rounds < 1000, "the build ends");
        }
        progress
    }
}

#[test]
fn scopes_hold_exactly_what_the_visibility_matrix_shows() {
    for auth in [false, true] {
        let mut e = env(auth);
        e.gate();
        e.build_member_groups(10);
        let w = W::new();
        let gift = ev(&w.eph, 1059, T, &[&["p", &hx(&w.bob)]], "x");
        let dm = ev(
            &w.alice,
            446,
            T,
            &[&["p", &hx(&w.bob)], &["v", "noise.1"]],
            "x",
        );
        let gated = ev(&w.eph, 445, T, &[&["h", GROUP]], "x");
        let open = ev(&w.eph, 445, T, &[&["h", OPEN]], "x");
        let roster = roster_ev(&w.alice, GROUP, "add", 4, &[&w.carol]);
        let kp = mdk_kp(&w.alice, 30443, &reference(1), T, &[]);
        let note = ev(&w.carol, 1, T, &[], "x");
        let rumor = ev(&w.alice, 444, T, &[], "x");
        let viewers: [(&str, Vec<Hex32>); 7] = [
            ("unauthenticated", vec![]),
            ("stranger", vec![pk(&w.carol)]),
            ("member", vec![pk(&w.bob)]),
            ("removed member", vec![pk(&w.erin)]),
            ("admin/author", vec![pk(&w.alice)]),
            ("configured admin", vec![pk(&w.dave)]),
            ("stranger + member", vec![pk(&w.carol), pk(&w.bob)]),
        ];
        for (name, event) in [
            ("1059", &gift),
            ("446", &dm),
            ("445 gated", &gated),
            ("445 open", &open),
            ("450", &roster),
            ("30443", &kp),
            ("kind 1", &note),
            ("444", &rumor),
        ] {
            for (who, viewer) in &viewers {
                assert_eq!(
                    e.in_scope(viewer, event),
                    e.sees(viewer, event),
                    "auth {auth}: {name}, {who}"
                );
            }
        }
    }
}

#[test]
fn a_group_gated_after_its_messages_were_stored_keeps_them_in_every_readers_scope() {
    let mut e = env(true);
    e.build_member_groups(10);
    let w = W::new();
    let early = ev(&w.eph, 445, T, &[&["h", OPEN]], "x");
    e.ok(&early, &[pk(&w.carol)], T);
    // Recorded while the group was open.
    let stored = e.stored(&early);
    // An admin gates it (the admin API: only a configured admin may gate a group served open).
    let change = MembershipChange {
        group_id: OPEN.into(),
        op: RosterOp::Add,
        pubkeys: vec![pk(&w.bob)],
        display_name: None,
        actor: Some(pk(&w.dave)),
    };
    e.gw.apply_admin_change(&change, T, &mut e.st).unwrap();
    let scope_of = |viewer: &[Hex32]| {
        e.gw.read_scope(&Viewer::authenticated_as(viewer.iter().copied()), &e.st)
    };
    // The stranger's scope still holds the stored message (it was for any reader), and the
    // rule hides it: the scope only pre-filters.
    assert!(scope_of(&[pk(&w.carol)]).admits(stored.keys()));
    assert!(!e.sees(&[pk(&w.carol)], &early));
    // The new member reads it through the group.
    assert!(scope_of(&[pk(&w.bob)]).admits(stored.keys()));
    assert!(e.sees(&[pk(&w.bob)], &early));
    // Messages stored from now on are the group's alone.
    let later = ev(&w.eph, 445, T + 1, &[&["h", OPEN]], "y");
    assert!(!scope_of(&[pk(&w.carol)]).admits(e.stored(&later).keys()));
}

#[test]
fn scopes_hold_every_group_until_the_by_pubkey_rows_are_built() {
    let mut e = env(true);
    e.gate();
    // A store's first group wrote the marker with its rows: scopes are exact at once.
    assert!(e.st.0.contains_key(registry::MEMBER_GROUPS_BUILT));
    let w = W::new();
    let gated = ev(&w.eph, 445, T, &[&["h", GROUP]], "x");
    let audience = e.stored(&gated);
    let carol = Viewer::authenticated_as([pk(&w.carol)]);
    assert!(!e.gw.read_scope(&carol, &e.st).any_group());

    // A store written before the by-pubkey rows existed: membership rows only.
    let mg_rows = |st: &MemState| -> Vec<Vec<u8>> {
        st.0.keys()
            .filter(|k| k.starts_with(b"mg/"))
            .cloned()
            .collect()
    };
    let rows_before = mg_rows(&e.st);
    assert!(!rows_before.is_empty());
    e.st.0
        .retain(|k, _| !k.starts_with(b"mg/") && k.as_slice() != registry::MEMBER_GROUPS_BUILT);
    // Not built yet: wider than the rule (still exact through may_see), never narrower.
    assert!(e.gw.read_scope(&carol, &e.st).any_group());
    assert!(e.gw.read_scope(&carol, &e.st).admits(audience.keys()));

    // Built in chunks of one row: every m/ row gets its mg/ row, then the marker.
    let written = e.build_member_groups(1).written;
    let members = e.st.0.keys().filter(|k| k.starts_with(b"m/")).count() as u64;
    assert_eq!(written, members);
    assert_eq!(
        mg_rows(&e.st),
        rows_before,
        "the same rows as the rosters write themselves"
    );
    let scope = e.gw.read_scope(&carol, &e.st);
    assert!(!scope.any_group());
    assert!(
        !scope.admits(audience.keys()),
        "a stranger's scope leaves the group out"
    );
    let bob = Viewer::authenticated_as([pk(&w.bob)]);
    assert!(e.gw.read_scope(&bob, &e.st).admits(audience.keys()));
    // A build that finds the marker does nothing.
    assert_eq!(e.build_member_groups(1).written, 0);
}

#[test]
fn an_empty_store_stays_empty_until_its_first_group() {
    let mut e = env(true);
    let progress = e.build_member_groups(10);
    assert_eq!(progress.written, 0);
    assert!(
        e.st.0.is_empty(),
        "nothing written: a backup may still be imported"
    );
    e.gate();
    assert!(e.st.0.contains_key(registry::MEMBER_GROUPS_BUILT));
}
