//! Firestore's limits meet the documented answers (docs/FIRESTORE.md): an event whose document
//! would pass 1 MiB is refused with `invalid:` before the rules run, and a transaction that
//! keeps losing conflicts (`ABORTED`) is run again up to `max_attempts` times, then answered
//! with an error; one that wins on a later attempt is stored once, in commit order.
//!
//! Contention is real, not simulated: a second store on the same database commits between
//! the first one's reads and its COMMIT (the `before_commit` hook), and the emulator's
//! optimistic check aborts the first one's transaction.

use mls_store::conformance::{ev, filter, keys, now, TestRules};
use mls_store::{EventStore, Publisher, ReadBounds, StateRead, StoreError, WriteOutcome};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

mod emulator;

fn counter(store_state: &dyn StateRead, pubkey: &str) -> Option<Vec<u8>> {
    store_state
        .get(format!("n:{pubkey}").as_bytes())
        .expect("state read")
}

async fn stored_ids(store: &dyn EventStore, author: &str) -> Vec<String> {
    let everyone: mls_store::Visible = &mls_store::conformance::everyone;
    store
        .query(
            &[filter(serde_json::json!({ "authors": [author] }))],
            ReadBounds::unbounded(1000),
            now(),
            &mls_store::ReadScope::everything(),
            everyone,
        )
        .await
        .unwrap()
        .value
        .iter()
        .map(|s| s.event.id.to_hex())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_too_large_for_a_document_is_refused_naming_the_limit() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let store = project.store(Arc::new(TestRules)).await;
    let alice = keys();
    let author = hex::encode(alice.x_only_public_key().0.serialize());
    let t = now();
    // 300 KB of content and 400 tags of 1000 bytes: ~700 KB of JSON (under the relay's 1 MiB
    // message limit), but the tags are also indexed as their own field: ~1.1 MB of document.
    // Distinct values: repeated tags are indexed once.
    let values: Vec<String> = (0..400)
        .map(|i| format!("{i:04}{}", "v".repeat(996)))
        .collect();
    let tags: Vec<Vec<&str>> = values.iter().map(|v| vec!["t", v.as_str()]).collect();
    let big_tags: Vec<&[&str]> = tags.iter().map(|t| t.as_slice()).collect();
    let content = "x".repeat(300_000);
    let big = ev(&alice, t, 1, &big_tags, &content);
    assert!(big.to_json().len() < 1024 * 1024);
    let got = store
        .write(big.clone(), Publisher::default())
        .await
        .unwrap();
    let WriteOutcome::Rejected(reason) = got else {
        panic!("a 1.1 MB document was not refused: {got:?}");
    };
    assert!(
        reason.starts_with("invalid: event too large to store") && reason.contains("1048576"),
        "{reason}"
    );
    // Refused before the rules ran: they left no state change.
    let mut seen = None;
    store
        .read_state(&mut |s: &dyn StateRead| {
            seen = counter(s, &author);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(seen, None, "the rules' counter moved for a refused event");
    assert!(stored_ids(&*store, &author).await.is_empty());

    // Control: half the tags fit, and are stored and read back whole.
    let half: Vec<&[&str]> = big_tags[..200].to_vec();
    let fits = ev(&alice, t, 1, &half, &content);
    assert_eq!(
        store
            .write(fits.clone(), Publisher::default())
            .await
            .unwrap(),
        WriteOutcome::Accepted
    );
    assert_eq!(stored_ids(&*store, &author).await, vec![fits.id.to_hex()]);
}

/// Opens the contended store: before each of its COMMITs, `hook_commits` times, a second
/// store on the same database commits an event of `bob`'s (so the first one's read of the
/// commit stream's position is stale).
async fn contended(
    project: &emulator::Project,
    max_attempts: u32,
    hook_commits: u32,
) -> (
    Arc<mls_store_firestore::FirestoreStore>,
    Arc<mls_store_firestore::FirestoreStore>,
    Arc<AtomicU32>,
    secp256k1::Keypair,
) {
    let rival = project.store(Arc::new(TestRules)).await;
    let bob = keys();
    let fired = Arc::new(AtomicU32::new(0));
    let runtime = tokio::runtime::Handle::current();
    let hook = {
        let (rival, fired) = (rival.clone(), fired.clone());
        Arc::new(move || {
            let n = fired.fetch_add(1, Ordering::SeqCst);
            if n >= hook_commits {
                return;
            }
            let e = ev(&bob, now() - u64::from(n), 1, &[], &format!("rival {n}"));
            // The writer thread is not a runtime worker: it may wait for the rival here.
            let got = runtime
                .block_on(rival.write(e, Publisher::default()))
                .expect("rival write");
            assert_eq!(got, WriteOutcome::Accepted);
        })
    };
    let mut options = project.options();
    options.max_attempts = max_attempts;
    options.before_commit = Some(hook);
    let store = project.open(options, Arc::new(TestRules)).await;
    (store, rival, fired, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_that_keeps_losing_conflicts_is_answered_with_an_error() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let (store, rival, fired, bob) = contended(&project, 3, u32::MAX).await;
    let alice = keys();
    let author = hex::encode(alice.x_only_public_key().0.serialize());
    let e = ev(&alice, now(), 1, &[], "contended");
    let got = store.write(e.clone(), Publisher::default()).await;
    let Err(StoreError::Backend(text)) = got else {
        panic!("a transaction aborted 3 times was not answered with an error: {got:?}");
    };
    assert!(
        text.contains("Aborted") && text.contains("aborted 3 times"),
        "{text}"
    );
    // Three runs, each beaten by the rival's commit; nothing of the loser is stored.
    assert_eq!(fired.load(Ordering::SeqCst), 3);
    assert!(stored_ids(&*store, &author).await.is_empty());
    let bob_key = hex::encode(bob.x_only_public_key().0.serialize());
    assert_eq!(stored_ids(&*rival, &bob_key).await.len(), 3);
    // The commit stream stays gapless: the rival's three commits took seq 1..=3.
    let seqs: Vec<u64> = store
        .since(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|s| s.seq)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_that_loses_once_is_run_again_and_stored_once() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let (store, _rival, fired, _bob) = contended(&project, 3, 1).await;
    let alice = keys();
    let author = hex::encode(alice.x_only_public_key().0.serialize());
    let e = ev(&alice, now(), 1, &[&["put", "k", "v"]], "second time lucky");
    assert_eq!(
        store.write(e.clone(), Publisher::default()).await.unwrap(),
        WriteOutcome::Accepted
    );
    // Lost to the rival once, committed on the second run (the hook runs before each).
    assert_eq!(fired.load(Ordering::SeqCst), 2);
    assert_eq!(stored_ids(&*store, &author).await, vec![e.id.to_hex()]);
    // Its rules ran again on the fresh state and their change is there once.
    let mut n = None;
    store
        .read_state(&mut |s: &dyn StateRead| {
            n = counter(s, &author);
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(n.as_deref(), Some(&b"1"[..]));
    let seqs: Vec<(u64, String)> = store
        .since(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|s| (s.seq, s.event.event.id.to_hex()))
        .collect();
    assert_eq!(seqs.len(), 2);
    assert_eq!(seqs[1], (2, e.id.to_hex()));
}

type StateChange = Box<
    dyn for<'s> FnOnce(&'s mut dyn mls_store::StateWrite) -> Result<(), mls_store::Rejection>
        + Send,
>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_state_change_past_500_writes_is_refused_unless_it_only_deletes() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let store = project.store(Arc::new(TestRules)).await;
    let put = |range: std::ops::Range<u32>| -> StateChange {
        Box::new(move |s| {
            for i in range {
                s.put(format!("x/{i:05}").as_bytes(), b"1")
                    .map_err(|e| mls_store::Rejection(e.to_string()))?;
            }
            Ok(())
        })
    };
    // 600 puts in one change: more than one commit may hold, refused naming the limit.
    let refused = store.update_state(put(0..600)).await.unwrap();
    let Err(mls_store::Rejection(text)) = refused else {
        panic!("a 600-write change was applied: {refused:?}");
    };
    assert!(text.starts_with("error:") && text.contains("500"), "{text}");
    let count = |store: Arc<mls_store_firestore::FirestoreStore>| async move {
        let mut n = 0;
        store
            .read_state(&mut |s: &dyn StateRead| {
                n = 0;
                s.scan_prefix(b"x/", &mut |_, _| {
                    n += 1;
                    true
                })
            })
            .await
            .unwrap();
        n
    };
    assert_eq!(count(store.clone()).await, 0, "a refused change left keys");
    // 1200 keys in changes of 400, then one change deleting them all (the state purge's
    // shape): applied, in parts.
    for part in [0..400, 400..800, 800..1200] {
        store.update_state(put(part)).await.unwrap().unwrap();
    }
    assert_eq!(count(store.clone()).await, 1200);
    store
        .update_state(Box::new(|s| {
            let mut keys = Vec::new();
            s.scan_prefix(b"x/", &mut |k, _| {
                keys.push(k.to_vec());
                true
            })
            .map_err(|e| mls_store::Rejection(e.to_string()))?;
            for k in keys {
                s.delete(&k)
                    .map_err(|e| mls_store::Rejection(e.to_string()))?;
            }
            Ok(())
        }))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(count(store.clone()).await, 0);
}

/// `refresh_audiences` goes through more events than one commit may rewrite (500 writes),
/// in several transactions, and every event gets its new audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audiences_of_more_events_than_one_commit_holds_are_all_refreshed() {
    let Some(project) = emulator::Project::new() else {
        return;
    };
    let store = project.store(Arc::new(TestRules)).await;
    let (author, owner, stranger) = (keys(), keys(), keys());
    let owner_hex = hex::encode(owner.x_only_public_key().0.serialize());
    let t = now() - 10_000;
    // Stored while `aud:k` is unset: readable by anyone.
    let events: Vec<_> = (0..1100)
        .map(|i| ev(&author, t + i, 1, &[&["aud-state", "k"]], &format!("{i}")))
        .collect();
    for chunk in events.chunks(100) {
        let writes = chunk
            .iter()
            .map(|e| store.write(e.clone(), Publisher::default()));
        for got in futures_util::future::join_all(writes).await {
            assert_eq!(got.unwrap(), WriteOutcome::Accepted);
        }
    }
    let owner_hex2 = owner_hex.clone();
    store
        .update_state(Box::new(move |s| {
            s.put(b"aud:k", owner_hex2.as_bytes())
                .map_err(|e| mls_store::Rejection(e.to_string()))
        }))
        .await
        .unwrap()
        .unwrap();
    let count = |scope: mls_store::ReadScope| {
        let store = store.clone();
        async move {
            let everyone: mls_store::Visible = &mls_store::conformance::everyone;
            store
                .count(
                    &[filter(serde_json::json!({"kinds": [1]}))],
                    ReadBounds::unbounded(500),
                    now(),
                    &scope,
                    everyone,
                )
                .await
                .unwrap()
                .value
        }
    };
    let scope_of = |k: &secp256k1::Keypair| {
        mls_store::ReadScope::holding(
            vec![mls_store::ReadKey::Pubkey(mls_proto::Hex32(
                k.x_only_public_key().0.serialize(),
            ))],
            false,
        )
    };
    assert_eq!(count(scope_of(&stranger)).await, 1100, "before the refresh");
    assert_eq!(store.refresh_audiences().await.unwrap(), 1100);
    assert_eq!(
        count(scope_of(&stranger)).await,
        0,
        "after: the owner's only"
    );
    assert_eq!(count(scope_of(&owner)).await, 1100);
}
