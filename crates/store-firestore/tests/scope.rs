//! The read scope on Firestore's own paths, from a stranger's side: events asked for by id,
//! by tag (the scope checked on fetched documents: Firestore allows one
//! `array-contains-any` per query), by several authors with a scope wider than one query's
//! 30 disjunctions, and a scope that admits every group. Each is read by whoever may see the
//! events and by someone who may not, with REQ (`query`) and COUNT (`count`) alike.

use mls_proto::{Event, Hex32};
use mls_store::conformance::{ev, filter, keys, now, TestRules};
use mls_store::{EventStore, Publisher, ReadBounds, ReadKey, ReadScope, WriteOutcome};
use serde_json::{json, Value};
use std::sync::Arc;

mod emulator;

fn pk(k: &secp256k1::Keypair) -> Hex32 {
    Hex32(k.x_only_public_key().0.serialize())
}

async fn accept(store: &dyn EventStore, e: &Event) {
    let got = store.write(e.clone(), Publisher::default()).await.unwrap();
    assert_eq!(got, WriteOutcome::Accepted, "{}", e.id);
}

/// Ids (sorted) `scope` reads with `shape`, after checking COUNT agrees.
async fn read(store: &dyn EventStore, shape: Value, scope: &ReadScope) -> Vec<Hex32> {
    let everyone: mls_store::Visible = &mls_store::conformance::everyone;
    let filters = [filter(shape.clone())];
    let bounds = ReadBounds::unbounded(500);
    let found = store
        .query(&filters, bounds, now(), scope, everyone)
        .await
        .unwrap();
    let mut ids: Vec<Hex32> = found.value.iter().map(|s| s.event.id).collect();
    ids.sort();
    let counted = store
        .count(&filters, bounds, now(), scope, everyone)
        .await
        .unwrap();
    assert_eq!(counted.value, ids.len() as u64, "COUNT of {shape}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_reads_nothing_private_by_any_path() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let store = project.store(Arc::new(TestRules)).await;
    let s = &*store;
    let (alice, bob, me, stranger) = (keys(), keys(), keys(), keys());
    let me_p = format!("p:{}", pk(&me).to_hex());
    let t = now() - 100;
    // Mine, by two authors, tagged; and one in group g1.
    let to_me = ev(&alice, t, 1059, &[&["aud", &me_p], &["t", "x"]], "to me");
    let from_bob = ev(
        &bob,
        t + 1,
        1059,
        &[&["aud", &me_p], &["t", "x"]],
        "from bob",
    );
    let in_group = ev(
        &alice,
        t + 2,
        445,
        &[&["aud", "g:g1"], &["t", "x"]],
        "group",
    );
    for e in [&to_me, &from_bob, &in_group] {
        accept(s, e).await;
    }
    let mut mine = vec![to_me.id, from_bob.id];
    mine.sort();

    let me_scope = ReadScope::holding(vec![ReadKey::Pubkey(pk(&me))], false);
    // More keys than one query's 30 disjunctions: 40 other pubkeys, and mine last.
    let wide: Vec<ReadKey> = (0..40u8)
        .map(|i| ReadKey::Pubkey(Hex32([i; 32])))
        .chain([ReadKey::Pubkey(pk(&me))])
        .collect();
    let wide_scope = ReadScope::holding(wide, false);
    let stranger_scope = ReadScope::holding(vec![ReadKey::Pubkey(pk(&stranger))], false);
    let member = ReadScope::holding(vec![ReadKey::Group("g1".into())], false);
    let any_group = ReadScope::holding(Vec::new(), true);

    let ids: Vec<String> = [&to_me, &from_bob, &in_group]
        .iter()
        .map(|e| e.id.to_hex())
        .collect();
    let authors = [pk(&alice).to_hex(), pk(&bob).to_hex()];
    let shapes = [
        json!({"ids": ids}),
        json!({"#t": ["x"]}),
        json!({"authors": authors, "kinds": [1059, 445]}),
        json!({"kinds": [1059]}),
    ];
    for shape in shapes {
        let private = |ids: Vec<Hex32>| {
            ids.into_iter()
                .filter(|id| *id != in_group.id)
                .collect::<Vec<_>>()
        };
        let kinds_only = shape.get("kinds") == Some(&json!([1059]));
        assert_eq!(
            private(read(s, shape.clone(), &me_scope).await),
            mine,
            "{shape}: mine"
        );
        assert_eq!(
            private(read(s, shape.clone(), &wide_scope).await),
            mine,
            "{shape}: mine, in a scope of 41 keys"
        );
        assert_eq!(
            read(s, shape.clone(), &stranger_scope).await,
            Vec::<Hex32>::new(),
            "{shape}: a stranger"
        );
        let group_reads = read(s, shape.clone(), &member).await;
        let any_group_reads = read(s, shape.clone(), &any_group).await;
        let want_group = if kinds_only {
            Vec::new()
        } else {
            vec![in_group.id]
        };
        assert_eq!(group_reads, want_group, "{shape}: the group's member");
        assert_eq!(any_group_reads, want_group, "{shape}: every group");
    }
}
