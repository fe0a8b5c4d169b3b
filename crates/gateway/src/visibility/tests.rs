//! Tests of `visibility.rs`: the visibility matrix, REQ pre-checks, read scopes, limits,
//! live KeyPackages under claims.

use crate::tests::fixtures::*;

#[test]
fn visibility_matrix() {
    for auth in [false, true] {
        let mut e = env(auth);
        e.gate();
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
        let relays = ev(&w.carol, 10050, T, &[&["relay", "wss://x"]], "");
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
        let any = !auth; // "anyone when auth is off"
        #[rustfmt::skip]
        let expected: [(&str, &Event, [bool; 7]); 9] = [
            //                          unauth  stranger member removed admin  cfgadm  multi
            ("1059 to bob",     &gift,   [false, false,   true,  false,  false, false,  true]),
            ("446 alice→bob",   &dm,     [false, false,   true,  false,  true,  false,  true]),
            ("445 gated",       &gated,  [false, false,   true,  false,  true,  false,  true]),
            ("445 open",        &open,   [any,   true,    true,  true,   true,  true,   true]),
            ("450 roster",      &roster, [false, false,   true,  false,  true,  true,   true]),
            ("30443 keypackage",&kp,     [any,   true,    true,  true,   true,  true,   true]),
            ("kind 1",          &note,   [true,  true,    true,  true,   true,  true,   true]),
            ("10050",           &relays, [true,  true,    true,  true,   true,  true,   true]),
            ("444 rumor",       &rumor,  [false, false,   false, false,  false, false,  false]),
        ];
        for (name, event, row) in expected {
            for ((who, viewer), want) in viewers.iter().zip(row) {
                assert_eq!(
                    e.sees(viewer, event),
                    want,
                    "auth {auth}: {name} seen by {who}"
                );
            }
        }
    }
}

#[test]
fn membership_changes_are_seen_at_once() {
    let mut e = env(false);
    e.gate();
    let w = W::new();
    let gated = ev(&w.eph, 445, T, &[&["h", GROUP]], "x");
    assert!(!e.sees(&[pk(&w.carol)], &gated));
    e.roster(&w.alice, "add", 4, &[&w.carol]).unwrap();
    assert!(e.sees(&[pk(&w.carol)], &gated));
    e.roster(&w.alice, "remove", 5, &[&w.carol]).unwrap();
    assert!(!e.sees(&[pk(&w.carol)], &gated));
    // A group becomes gated the moment its membership is known.
    let open = ev(&w.eph, 445, T, &[&["h", OPEN]], "x");
    assert!(e.sees(&[pk(&w.carol)], &open));
    e.ok(&roster_ev(&w.alice, OPEN, "bootstrap", 1, &[]), &[], T);
    assert!(!e.sees(&[pk(&w.carol)], &open));
    assert!(e.sees(&[pk(&w.alice)], &open));
}

#[test]
fn check_read_refusals() {
    for auth in [false, true] {
        let mut e = env(auth);
        e.gate();
        let w = W::new();
        let (bob, carol, alice, dave) = (hx(&w.bob), hx(&w.carol), hx(&w.alice), hx(&w.dave));
        enum Want {
            Ok,
            Auth(&'static str),
            Restricted(&'static str),
        }
        use Want::*;
        let cases: Vec<(Vec<Hex32>, serde_json::Value, Want)> = vec![
            (
                vec![],
                json!([{"kinds":[1059]}]),
                Auth("auth-required: kind 1059 is only served to its recipients"),
            ),
            (
                vec![],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Auth("auth-required: kind 1059"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Restricted("restricted: kind 1059 is only served to its recipients"),
            ),
            (vec![pk(&w.bob)], json!([{"kinds":[1059],"#p":[bob]}]), Ok),
            (
                vec![pk(&w.carol), pk(&w.bob)],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Ok,
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[1059]}]), Ok),
            (vec![], json!([{"kinds":[1059]},{"kinds":[1]}]), Ok),
            (vec![], json!([{"kinds":[1059,1]}]), Ok),
            (vec![], json!([{"ids":["00".repeat(32)]}]), Ok),
            (vec![], json!([{"kinds":[1059],"limit":0,"#p":[]}]), Ok),
            (
                vec![],
                json!([{"kinds":[446]}]),
                Auth("auth-required: kind 446"),
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[446],"#p":[bob]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[alice]}]),
                Restricted("restricted: kind 446"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[carol]}]),
                Ok,
            ),
            // A gated group's 445s / 450s by `#h` answer as an unknown group's would (the
            // stored query is scoped instead): the answer does not say the group exists.
            (vec![], json!([{"kinds":[445],"#h":[GROUP]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[445],"#h":[GROUP]}]),
                Ok,
            ),
            (vec![pk(&w.erin)], json!([{"kinds":[445],"#h":[GROUP]}]), Ok),
            (vec![pk(&w.bob)], json!([{"kinds":[445],"#h":[GROUP]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[445],"#h":[GROUP, OPEN]}]),
                Ok,
            ),
            (vec![], json!([{"kinds":[445]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[450],"#h":[GROUP]}]),
                Ok,
            ),
            (vec![pk(&w.dave)], json!([{"kinds":[450],"#h":[GROUP]}]), Ok),
            (vec![pk(&w.bob)], json!([{"kinds":[450],"#h":[GROUP]}]), Ok),
            (vec![pk(&w.carol)], json!([{"kinds":[450],"#h":[OPEN]}]), Ok),
            (
                vec![],
                json!([{"kinds":[450],"#h":[OPEN]}]),
                Auth("auth-required: kind 450"),
            ),
            (
                vec![],
                json!([{"kinds":[450]}]),
                Auth("auth-required: kind 450"),
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[450]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[443, 30443],"authors":[dave]}]),
                Ok,
            ),
            (vec![], json!([{"kinds":[1]}]), Ok),
        ];
        for (i, (who, f, want)) in cases.into_iter().enumerate() {
            let got =
                e.gw.check_read(&Viewer::authenticated_as(who), &filters(f.clone()), &e.st);
            match (&want, &got) {
                (Ok, Result::Ok(())) => {}
                (Auth(p), Err(ReadRefusal::AuthRequired(m))) if m.starts_with(p) => {}
                (Restricted(p), Err(ReadRefusal::Restricted(m))) if m.starts_with(p) => {}
                _ => panic!("case {i} (auth {auth}) {f}: got {got:?}"),
            }
        }
        // After a query that found only hidden events, targeted filters are refused too.
        let hidden_cases: Vec<(Vec<Hex32>, serde_json::Value, Want)> = vec![
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Restricted("restricted: kind 1059 is only served to its recipients"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[alice]}]),
                Restricted("restricted: kind 446"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"ids":["00".repeat(32)]}]),
                Restricted("restricted: the requested events"),
            ),
            (
                vec![],
                json!([{"ids":["00".repeat(32)]}]),
                Auth("auth-required: the requested events"),
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[1059]}]), Ok),
            (vec![pk(&w.bob)], json!([{"kinds":[1059],"#p":[bob]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[carol]}]),
                Ok,
            ),
        ];
        for (i, (who, f, want)) in hidden_cases.into_iter().enumerate() {
            let got = e.gw.check_hidden_result(
                &Viewer::authenticated_as(who),
                &filters(f.clone()),
                &e.st,
            );
            match (&want, &got) {
                (Ok, Result::Ok(())) => {}
                (Auth(p), Err(ReadRefusal::AuthRequired(m))) if m.starts_with(p) => {}
                (Restricted(p), Err(ReadRefusal::Restricted(m))) if m.starts_with(p) => {}
                _ => panic!("hidden case {i} (auth {auth}) {f}: got {got:?}"),
            }
        }
        let kp_anon = e.gw.check_read(
            &Viewer::anonymous(),
            &filters(json!([{"kinds":[30443]}])),
            &e.st,
        );
        if auth {
            assert!(matches!(kp_anon, Err(ReadRefusal::AuthRequired(_))));
        } else {
            assert_eq!(kp_anon, Result::Ok(()));
        }
    }
}

#[test]
fn reads_are_scoped_to_what_the_reader_may_see() {
    let mut e = env(true);
    e.gate();
    let w = W::new();
    let (bob, carol, alice) = (hx(&w.bob), hx(&w.carol), hx(&w.alice));
    let scope = |who: Vec<Hex32>, f: serde_json::Value| -> serde_json::Value {
        let got =
            e.gw.scope_reads(&Viewer::authenticated_as(who), &filters(f), &e.st);
        serde_json::Value::Array(got.iter().map(filter_json).collect())
    };
    // Mailboxes: through the reader's own pubkeys.
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[1059],"limit":5}])),
        json!([{"kinds":[1059],"#p":[carol],"limit":5}])
    );
    assert_eq!(
        scope(
            vec![pk(&w.carol), pk(&w.bob)],
            json!([{"kinds":[1059],"#p":[bob, alice]}])
        ),
        json!([{"kinds":[1059],"#p":[bob]}])
    );
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[446]}])),
        json!([{"kinds":[446],"#p":[carol]},{"kinds":[446],"authors":[carol]}])
    );
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[446],"#p":[bob]}])),
        json!([{"kinds":[446],"#p":[bob],"authors":[carol]}])
    );
    assert_eq!(scope(vec![], json!([{"kinds":[1059]}])), json!([]));
    // Other kinds of the same filter keep it as it is.
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[1,1059],"since":3}])),
        json!([{"kinds":[1],"since":3},{"kinds":[1059],"#p":[carol],"since":3}])
    );
    // Gated groups by `#h`: only the reader's; open/unknown groups stay.
    assert_eq!(
        scope(
            vec![pk(&w.carol)],
            json!([{"kinds":[445],"#h":[GROUP, OPEN]}])
        ),
        json!([{"kinds":[445],"#h":[OPEN]}])
    );
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[445],"#h":[GROUP]}])),
        json!([])
    );
    assert_eq!(
        scope(vec![pk(&w.bob)], json!([{"kinds":[445,450],"#h":[GROUP]}])),
        json!([{"kinds":[445],"#h":[GROUP]},{"kinds":[450],"#h":[GROUP]}])
    );
    // A configured admin reads 450s of any group, not 445s of groups it is not in.
    assert_eq!(
        scope(
            vec![pk(&w.dave)],
            json!([{"kinds":[445,450,1],"#h":[GROUP]}])
        ),
        json!([{"kinds":[1],"#h":[GROUP]},{"kinds":[450],"#h":[GROUP]}])
    );
    // Unchanged: ids, no kinds, 445 without `#h`.
    for f in [
        json!({"ids":["00".repeat(32)],"kinds":[1059]}),
        json!({}),
        json!({"#p":[bob]}),
        json!({"kinds":[445]}),
    ] {
        assert_eq!(scope(vec![pk(&w.carol)], json!([f.clone()])), json!([f]));
    }
}

fn filter_json(f: &Filter) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(ids) = &f.ids {
        m.insert(
            "ids".into(),
            json!(ids.iter().map(Hex32::to_hex).collect::<Vec<_>>()),
        );
    }
    if let Some(a) = &f.authors {
        m.insert(
            "authors".into(),
            json!(a.iter().map(Hex32::to_hex).collect::<Vec<_>>()),
        );
    }
    if let Some(k) = &f.kinds {
        m.insert("kinds".into(), json!(k));
    }
    for (letter, values) in &f.tags {
        m.insert(format!("#{letter}"), json!(values));
    }
    for (key, v) in [("since", f.since), ("until", f.until), ("limit", f.limit)] {
        if let Some(v) = v {
            m.insert(key.into(), json!(v));
        }
    }
    serde_json::Value::Object(m)
}

#[test]
fn split_filters_keep_each_filters_limit() {
    let w = W::new();
    let bob = hx(&w.bob);
    let note = |t: u64| ev(&w.alice, 1, t, &[], "");
    let wrap = |t: u64| ev(&w.alice, 1059, t, &[&["p", &bob]], "");
    // Newest first, as a query returns them.
    let found = vec![wrap(9), note(8), wrap(7), note(6), note(5)];
    let want = |evs: &[&Event]| evs.iter().map(|e| e.id).collect::<Vec<_>>();
    let kept = within_limits(
        &filters(json!([{"kinds":[1,1059],"limit":3}])),
        500,
        found.clone(),
        |e| e,
    );
    assert_eq!(
        kept.iter().map(|e| e.id).collect::<Vec<_>>(),
        want(&[&found[0], &found[1], &found[2]])
    );
    // Two filters: each its own newest; an event counts for every filter it matches.
    let kept = within_limits(
        &filters(json!([{"kinds":[1],"limit":1},{"limit":2}])),
        500,
        found.clone(),
        |e| e,
    );
    assert_eq!(
        kept.iter().map(|e| e.id).collect::<Vec<_>>(),
        want(&[&found[0], &found[1]])
    );
    // max_limit caps a filter without its own limit.
    assert_eq!(
        within_limits(&filters(json!([{}])), 2, found, |e| e).len(),
        2
    );
}

#[test]
fn live_keypackages_follow_the_claim_rules() {
    let w = W::new();
    let kp = mdk_kp(&w.alice, 443, &reference(1), T, &[]);
    let mut claims_on = claims_env(|_| {});
    claims_on.ok(&kp, &[pk(&w.alice)], T);
    let mut claims_off = env(true);
    claims_off.ok(&kp, &[pk(&w.alice)], T);
    let live = |e: &Env, who: Vec<Hex32>| {
        e.gw.audience(&kp, &e.st)
            .admits_live(&Viewer::authenticated_as(who), &e.st)
    };
    assert!(
        !live(&claims_on, vec![pk(&w.bob)]),
        "a stored REQ claims it"
    );
    assert!(!live(&claims_on, vec![]));
    assert!(
        live(&claims_on, vec![pk(&w.bob), pk(&w.alice)]),
        "its owner"
    );
    assert!(live(&claims_off, vec![pk(&w.bob)]));
    // Stored reads are unchanged: the claim rules decide there.
    assert!(claims_on.sees(&[pk(&w.bob)], &kp));
}
