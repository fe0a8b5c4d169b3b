//! Issue 8's rules on groups and mailboxes, as pure rules over [`MemState`]: a group served
//! open cannot be taken over (rule 4), rosters win over gift wraps (rule 5).

use super::*;

fn msg445(w: &W, group: &str) -> Event {
    ev(&w.eph, 445, T, &[&["h", group]], "x")
}

fn wrap(w: &W, group: &str, to: &Keypair) -> Event {
    ev(
        &w.eph,
        1059,
        T,
        &[&["p", &hx(to)], &["h", group], &["v", "gift.1"]],
        "x",
    )
}

fn refused_with(r: Result<Admitted, Rejection>, prefix: &str) -> String {
    match r {
        Ok(_) => panic!("accepted, expected {prefix:?}…"),
        Err(Rejection(m)) => {
            assert!(m.starts_with(prefix), "expected {prefix:?}…, got {m:?}");
            m
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 4: a group served open can be gated only by a configured admin (or the admin API).

#[test]
fn a_group_served_open_is_gated_only_by_a_configured_admin() {
    for archive in [true, false] {
        let mut e = env_with(true, |c| c.enable_message_archive = archive);
        let w = W::new();
        // Stored (or delivered live): either way the group is in use.
        e.ok(&msg445(&w, OPEN), &[pk(&w.bob)], T);

        let m = refused_with(
            e.admit(
                &roster_ev(&w.carol, OPEN, "bootstrap", 1, &[]),
                &[pk(&w.carol)],
                T,
            ),
            "restricted: group",
        );
        assert!(
            m.contains("admin_pubkeys") && m.contains("served open"),
            "{m}"
        );
        let m = refused_with(
            e.admit(&wrap(&w, OPEN, &w.carol), &[pk(&w.carol)], T),
            "restricted: group",
        );
        assert!(m.contains("gift wrap"), "{m}");
        assert!(
            !registry::is_gated(&e.st, OPEN).unwrap(),
            "archive {archive}"
        );

        // An unauthenticated wrap grants nothing and so is not refused (as before).
        e.ok(&wrap(&w, OPEN, &w.carol), &[], T);
        // The configured admin may gate it.
        e.ok(
            &roster_ev(&w.dave, OPEN, "bootstrap", 1, &[&w.bob]),
            &[pk(&w.dave)],
            T,
        );
        assert_eq!(e.record(OPEN).owner, Some(pk(&w.dave)));
        assert!(e.sees(&[pk(&w.bob)], &msg445(&w, OPEN)));
        assert!(!e.sees(&[pk(&w.carol)], &msg445(&w, OPEN)));
    }
}

#[test]
fn a_configured_admins_gift_wrap_may_gate_a_group_served_open() {
    let mut e = env(true);
    let w = W::new();
    e.ok(&msg445(&w, OPEN), &[], T);
    // The connection is authenticated as alice and as dave (the configured admin).
    e.ok(&wrap(&w, OPEN, &w.bob), &[pk(&w.alice), pk(&w.dave)], T);
    let rec = e.record(OPEN);
    assert_eq!(
        rec.owner,
        Some(pk(&w.dave)),
        "the admin gates it, not alice"
    );
    assert!(rec.members.contains(&pk(&w.bob)));
}

#[test]
fn a_fresh_group_id_is_still_first_come() {
    let mut e = env(true);
    let w = W::new();
    e.ok(
        &roster_ev(&w.carol, OPEN, "bootstrap", 1, &[]),
        &[pk(&w.carol)],
        T,
    );
    e.ok(&wrap(&w, GROUP, &w.bob), &[pk(&w.alice)], T);
    assert_eq!(e.record(GROUP).owner, Some(pk(&w.alice)));
    // A 445 to a gated group does not mark it served open.
    e.ok(&msg445(&w, GROUP), &[pk(&w.bob)], T);
    assert!(!registry::served_open(&e.st, GROUP).unwrap());
}

#[test]
fn the_served_open_marker_is_written_once() {
    let mut e = env_with(false, |c| c.rate_limits.max_group_messages_per_minute = 0);
    let w = W::new();
    let before = e.st.clone();
    e.ok(&msg445(&w, OPEN), &[], T);
    assert_eq!(e.st.0.len(), before.0.len() + 1, "one key: the marker");
    let after_first = e.st.clone();
    e.ok(&msg445(&w, OPEN), &[], T + 5);
    assert_eq!(e.st, after_first, "a later 445 writes nothing");
    assert!(registry::served_open(&e.st, OPEN).unwrap());
}

#[test]
fn an_operator_replay_of_a_bootstrap_is_not_refused() {
    // Import replays in created_at order; the bootstrap was checked when first accepted.
    let mut e = env(true);
    let w = W::new();
    e.ok(&msg445(&w, OPEN), &[], T);
    let p = Publisher {
        authed: vec![],
        operator: true,
    };
    let boot = roster_ev(&w.alice, OPEN, "bootstrap", 1, &[]);
    e.gw.admit(&boot, &p, T, &mut e.st)
        .expect("replayed bootstrap");
}

// ---------------------------------------------------------------------------------------------
// Rule 5: once rosters manage a group, gift wraps change no membership.

#[test]
fn gift_wraps_do_not_change_a_roster_managed_group() {
    let mut e = env(true);
    let w = W::new();
    e.gate(); // alice admin, bob member, erin added then removed by rosters
    let before = e.record(GROUP);
    for target in [&w.erin, &w.carol] {
        // Delivered (it is a Welcome), but membership stays what the rosters say.
        e.ok(&wrap(&w, GROUP, target), &[pk(&w.bob)], T);
        e.ok(&wrap(&w, GROUP, target), &[pk(&w.alice)], T);
    }
    assert_eq!(e.record(GROUP), before);
    assert!(!e.sees(&[pk(&w.erin)], &msg445(&w, GROUP)));
    refused_with(
        e.admit(&msg445(&w, GROUP), &[pk(&w.erin)], T),
        "restricted: not a member",
    );
    // A stranger's wrap is still refused outright.
    refused_with(
        e.admit(&wrap(&w, GROUP, &w.carol), &[pk(&w.carol)], T),
        "restricted: not a member",
    );
    // The roster's own decisions apply.
    e.roster(&w.alice, "add", 4, &[&w.erin]).unwrap();
    assert!(e.sees(&[pk(&w.erin)], &msg445(&w, GROUP)));
}

#[test]
fn a_group_made_by_gift_wraps_is_roster_managed_after_its_first_roster() {
    let mut e = env(true);
    let w = W::new();
    e.ok(&wrap(&w, GROUP, &w.bob), &[pk(&w.alice)], T);
    // Without rosters, members' wraps admit (the giftwrap source).
    e.ok(&wrap(&w, GROUP, &w.erin), &[pk(&w.bob)], T);
    assert!(e.record(GROUP).members.contains(&pk(&w.erin)));
    // alice (owner and admin from her wrap) removes erin by roster …
    e.roster(&w.alice, "remove", 1, &[&w.erin]).unwrap();
    // … and bob's wrap can no longer bring her back.
    e.ok(&wrap(&w, GROUP, &w.erin), &[pk(&w.bob)], T);
    assert!(!e.record(GROUP).members.contains(&pk(&w.erin)));
}

// ---------------------------------------------------------------------------------------------
// Rule 6: one recipient cannot take a message away from the others.

#[test]
fn a_recipient_deletes_only_what_is_addressed_to_it_alone() {
    let e = env(false);
    let w = W::new();
    let (bob, carol, alice) = (hx(&w.bob), hx(&w.carol), hx(&w.alice));
    let sole_wrap = ev(&w.eph, 1059, T, &[&["p", &bob]], "x");
    let twice_bob = ev(&w.eph, 1059, T, &[&["p", &bob], &["p", &bob]], "x");
    let shared_wrap = ev(&w.eph, 1059, T, &[&["p", &bob], &["p", &carol]], "x");
    let shared_dm = ev(&w.alice, 446, T, &[&["p", &bob], &["p", &carol]], "x");
    let dm_to_self_too = ev(&w.alice, 446, T, &[&["p", &bob], &["p", &alice]], "x");
    let note = ev(&w.alice, 1, T, &[&["p", &bob], &["p", &carol]], "x");
    let sole_dm = ev(&w.alice, 446, T, &[&["p", &bob]], "x");

    let (b, c, a) = (pk(&w.bob), pk(&w.carol), pk(&w.alice));
    // (deleter, target, may delete, refused outright)
    let rows: [(&Hex32, &Event, bool, bool); 14] = [
        (&b, &sole_wrap, true, false),
        (&b, &twice_bob, true, false),
        (&c, &sole_wrap, false, false),
        (&b, &shared_wrap, false, true),
        (&c, &shared_wrap, false, true),
        (&b, &shared_dm, false, true),
        (&a, &shared_dm, true, false),
        (&b, &dm_to_self_too, false, true),
        (&a, &dm_to_self_too, true, false),
        (&b, &note, false, false),
        (&a, &note, true, false),
        (&pk(&w.dave), &shared_wrap, false, false),
        // A 446's author reads it too: its sole recipient may not take it away from them.
        (&b, &sole_dm, false, true),
        (&a, &sole_dm, true, false),
    ];
    for (i, (deleter, target, may, refused)) in rows.iter().enumerate() {
        assert_eq!(
            e.gw.may_delete(deleter, target),
            *may,
            "row {i}: may_delete"
        );
        let r = e.gw.refuse_deletion(deleter, target);
        assert_eq!(r.is_some(), *refused, "row {i}: refusal {r:?}");
        if let Some(Rejection(m)) = r {
            assert!(
                m.starts_with("restricted: kind") && m.contains("other reader(s)"),
                "{m}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 12: the state purge runs in bounded chunks.

/// A state that counts the keys every scan hands out (what a chunk "looks at").
struct Counting<'a> {
    inner: &'a mut MemState,
    seen: std::cell::Cell<usize>,
}

impl StateRead for Counting<'_> {
    fn get(&self, key: &[u8]) -> mls_store::StoreResult<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> mls_store::StoreResult<()> {
        self.inner.scan_prefix_from(prefix, from, &mut |k, v| {
            self.seen.set(self.seen.get() + 1);
            f(k, v)
        })
    }
}

impl StateWrite for Counting<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> mls_store::StoreResult<()> {
        self.inner.put(key, value)
    }

    fn delete(&mut self, key: &[u8]) -> mls_store::StoreResult<()> {
        self.inner.delete(key)
    }
}

#[test]
fn the_state_purge_looks_at_a_bounded_number_of_keys_per_chunk() {
    let mut e = env_with(false, |c| {
        c.rate_limits.max_keypackages_per_hour = 100;
        c.rate_limits.max_group_messages_per_minute = 100;
    });
    let w = W::new();
    // Live bookkeeping: a KeyPackage and the counters of the current windows.
    e.ok(&lox_kp(&w.alice, &hx(&w.alice), "live", T + 86_400), &[], T);
    e.ok(&msg445(&w, OPEN), &[], T);
    // Expired: short-lived KeyPackages and counters of long-gone windows.
    for i in 0..7 {
        let r = format!("short{i}");
        e.ok(&lox_kp(&w.bob, &hx(&w.bob), &r, T + 100), &[], T);
    }
    for i in 0..40 {
        e.st.put(format!("rg/{i:04x}/anon/1").as_bytes(), b"1")
            .unwrap();
    }
    let mut expected = e.st.clone();
    let removed_at_once = e.gw.purge_state(T + 4000, &mut expected).unwrap();
    assert!(removed_at_once >= 47, "{removed_at_once}");

    const MAX: usize = 10;
    let mut progress = StatePurge::default();
    let mut chunks = 0;
    while !progress.done() {
        let mut st = Counting {
            inner: &mut e.st,
            seen: 0.into(),
        };
        e.gw.purge_state_chunk(T + 4000, &mut st, &mut progress, MAX)
            .unwrap();
        let seen = st.seen.get();
        assert!(seen <= MAX, "chunk {chunks} looked at {seen} keys");
        chunks += 1;
        assert!(chunks < 100, "the purge does not end");
    }
    assert_eq!(progress.chunks, chunks);
    assert!(chunks >= 6, "about 50 keys in chunks of {MAX}: {chunks}");
    assert_eq!(progress.removed, removed_at_once);
    assert_eq!(e.st, expected, "chunked and whole purges remove the same");
    // What is live stays.
    assert_eq!(
        e.gw.keypackages_of(&pk(&w.alice), T + 4000, &e.st)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_nip98_token_is_used_once_and_forgotten_by_the_purge_after_it_expires() {
    let mut e = env(true);
    let token = Hex32([7; 32]);
    let other = Hex32([8; 32]);
    let forget_after = T + 121;
    e.gw.use_token_once(&token, forget_after, &mut e.st)
        .unwrap();
    let again = e.gw.use_token_once(&token, forget_after, &mut e.st);
    assert!(
        matches!(&again, Err(r) if r.0.starts_with("restricted:") && r.0.contains("already used")),
        "{again:?}"
    );
    e.gw.use_token_once(&other, forget_after, &mut e.st)
        .unwrap();
    // Still remembered while it could verify; gone after.
    e.gw.purge_state(forget_after, &mut e.st).unwrap();
    assert!(e
        .gw
        .use_token_once(&token, forget_after, &mut e.st)
        .is_err());
    let removed = e.gw.purge_state(forget_after + 120, &mut e.st).unwrap();
    assert_eq!(removed, 2);
    e.gw.use_token_once(&token, forget_after + 200, &mut e.st)
        .unwrap();
}
