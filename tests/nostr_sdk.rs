//! The core flows through a real client library, nostr-sdk 0.44.1: publish, fetch by filter,
//! live subscription, deletion, replaceable metadata, protected events and automatic NIP-42
//! authentication against an auth-enabled relay.

mod common;

use common::Relay;
use nostr_sdk::prelude::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A connected client. Without a signer, automatic authentication is turned off: nostr-sdk
/// would otherwise answer the relay's on-connect challenge with a failed AUTH attempt and abort
/// whatever fetch is in flight (`AuthenticationFailed`), which says nothing about the relay.
async fn client(relay: &Relay, keys: Option<&Keys>, auto_auth: bool) -> Client {
    let auto_auth = auto_auth && keys.is_some();
    let mut b = Client::builder().opts(ClientOptions::new().automatic_authentication(auto_auth));
    if let Some(k) = keys {
        b = b.signer(k.clone());
    }
    let c = b.build();
    c.add_relay(relay.ws_url()).await.unwrap();
    let out = c.try_connect(WAIT).await;
    assert!(
        !out.success.is_empty(),
        "nostr-sdk could not connect: {:?}",
        out.failed
    );
    c
}

fn same_json(a: &Event, b: &Event) -> bool {
    let a: serde_json::Value = serde_json::from_str(&a.as_json()).unwrap();
    let b: serde_json::Value = serde_json::from_str(&b.as_json()).unwrap();
    a == b
}

#[track_caller]
fn assert_sent<T: std::fmt::Debug>(out: &Output<T>) {
    assert!(
        !out.success.is_empty() && out.failed.is_empty(),
        "relay did not accept: {:?}",
        out.failed
    );
}

#[tokio::test]
async fn publish_and_fetch_by_filter() {
    let relay = Relay::start().await;
    let keys = Keys::generate();
    let alice = client(&relay, Some(&keys), true).await;
    let note = EventBuilder::text_note("hello from nostr-sdk ✓")
        .tag(Tag::hashtag("mlsgw"))
        .sign_with_keys(&keys)
        .unwrap();
    let out = alice.send_event(&note).await.unwrap();
    assert_sent(&out);

    let bob = client(&relay, None, true).await;
    let by_author = bob
        .fetch_events(
            Filter::new().author(keys.public_key()).kind(Kind::TextNote),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(by_author.len(), 1);
    let got = by_author.first().unwrap();
    assert!(
        same_json(got, &note),
        "served event differs: {}",
        got.as_json()
    );
    got.verify().unwrap();

    let by_id = bob
        .fetch_events(Filter::new().id(note.id), WAIT)
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    let by_tag = bob
        .fetch_events(Filter::new().hashtag("mlsgw"), WAIT)
        .await
        .unwrap();
    assert!(by_tag.iter().any(|e| e.id == note.id));
    let none = bob
        .fetch_events(Filter::new().author(Keys::generate().public_key()), WAIT)
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn subscribe_and_receive_live() {
    let relay = Relay::start().await;
    let keys = Keys::generate();
    let bob = client(&relay, None, true).await;
    let mut notes = bob.notifications();
    let sub = bob
        .subscribe(
            Filter::new().author(keys.public_key()).kind(Kind::TextNote),
            None,
        )
        .await
        .unwrap();
    assert_sent(&sub);
    // Give the REQ a chance to be registered before publishing: wait for its EOSE.
    let eose = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(RelayPoolNotification::Message {
                message: RelayMessage::EndOfStoredEvents(id),
                ..
            }) = notes.recv().await
            {
                if *id == sub.val {
                    return;
                }
            }
        }
    })
    .await;
    assert!(eose.is_ok(), "no EOSE for the subscription");

    let alice = client(&relay, Some(&keys), true).await;
    let note = EventBuilder::text_note("live")
        .sign_with_keys(&keys)
        .unwrap();
    assert_sent(&alice.send_event(&note).await.unwrap());

    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(RelayPoolNotification::Event {
                subscription_id,
                event,
                ..
            }) = notes.recv().await
            {
                if subscription_id == sub.val {
                    return event;
                }
            }
        }
    })
    .await
    .expect("live event not delivered to the nostr-sdk subscription");
    assert!(same_json(&got, &note));
}

#[tokio::test]
async fn delete_removes_the_event() {
    let relay = Relay::start().await;
    let keys = Keys::generate();
    let alice = client(&relay, Some(&keys), true).await;
    let note = EventBuilder::text_note("regret")
        .sign_with_keys(&keys)
        .unwrap();
    assert_sent(&alice.send_event(&note).await.unwrap());
    let del = alice
        .send_event_builder(EventBuilder::delete(
            EventDeletionRequest::new().id(note.id).reason("typo"),
        ))
        .await
        .unwrap();
    assert_sent(&del);

    let bob = client(&relay, None, true).await;
    let got = bob
        .fetch_events(Filter::new().id(note.id), WAIT)
        .await
        .unwrap();
    assert!(got.is_empty(), "deleted event still served");
    let dels = bob
        .fetch_events(
            Filter::new()
                .author(keys.public_key())
                .kind(Kind::EventDeletion),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(dels.len(), 1);

    // Re-publishing the deleted event is refused as blocked.
    let carol = client(&relay, None, true).await;
    let out = carol.send_event(&note).await;
    let msg = match out {
        Ok(out) => {
            assert!(out.success.is_empty(), "deleted event accepted again");
            out.failed.values().next().cloned().unwrap_or_default()
        }
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("blocked:"), "{msg}");
}

#[tokio::test]
async fn metadata_is_replaceable() {
    let relay = Relay::start().await;
    let keys = Keys::generate();
    let alice = client(&relay, Some(&keys), true).await;
    let t = Timestamp::now().as_secs();
    let old = EventBuilder::metadata(&Metadata::new().name("old"))
        .custom_created_at(Timestamp::from(t - 20))
        .sign_with_keys(&keys)
        .unwrap();
    let new = EventBuilder::metadata(&Metadata::new().name("new"))
        .custom_created_at(Timestamp::from(t - 10))
        .sign_with_keys(&keys)
        .unwrap();
    assert_sent(&alice.send_event(&old).await.unwrap());
    assert_sent(&alice.send_event(&new).await.unwrap());
    let bob = client(&relay, None, true).await;
    let md = bob
        .fetch_metadata(keys.public_key(), WAIT)
        .await
        .unwrap()
        .expect("no metadata");
    assert_eq!(md.name.as_deref(), Some("new"));
    let all = bob
        .fetch_events(
            Filter::new().author(keys.public_key()).kind(Kind::Metadata),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
}

#[tokio::test]
async fn nip42_automatic_auth_against_an_auth_required_relay() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let keys = Keys::generate();
    let alice = client(&relay, Some(&keys), true).await;
    let note = EventBuilder::text_note("authed")
        .sign_with_keys(&keys)
        .unwrap();
    let out = alice.send_event(&note).await.unwrap();
    assert_sent(&out);

    let bob_keys = Keys::generate();
    let bob = client(&relay, Some(&bob_keys), true).await;
    let got = bob
        .fetch_events(Filter::new().author(keys.public_key()), WAIT)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "authenticated fetch returned {got:?}");
    assert!(same_json(got.first().unwrap(), &note));

    // Protected events from the authenticated author go through as well.
    let protected = EventBuilder::text_note("protected")
        .tag(Tag::protected())
        .sign_with_keys(&keys)
        .unwrap();
    assert_sent(&alice.send_event(&protected).await.unwrap());
}

#[tokio::test]
async fn without_auth_the_auth_required_relay_refuses() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let keys = Keys::generate();
    let no_auto = client(&relay, Some(&keys), false).await;
    let note = EventBuilder::text_note("not authed")
        .sign_with_keys(&keys)
        .unwrap();
    let msg = match no_auto.send_event(&note).await {
        Ok(out) => {
            assert!(out.success.is_empty(), "event accepted without AUTH");
            out.failed.values().next().cloned().unwrap_or_default()
        }
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("auth-required:"), "{msg}");

    // And a reader that cannot sign gets nothing.
    let authed = client(&relay, Some(&keys), true).await;
    assert_sent(&authed.send_event(&note).await.unwrap());
    let anon = client(&relay, None, true).await;
    // An error (CLOSED auth-required) or an empty result; never the event.
    if let Ok(evs) = anon.fetch_events(Filter::new().id(note.id), WAIT).await {
        assert!(evs.is_empty(), "served without AUTH: {evs:?}");
    }
}

#[tokio::test]
async fn protected_event_with_automatic_auth_on_an_open_relay() {
    let relay = Relay::start().await;
    let keys = Keys::generate();
    let alice = client(&relay, Some(&keys), true).await;
    let protected = EventBuilder::text_note("mine only")
        .tag(Tag::protected())
        .sign_with_keys(&keys)
        .unwrap();
    assert_sent(&alice.send_event(&protected).await.unwrap());
    let bob = client(&relay, None, true).await;
    let got = bob
        .fetch_events(Filter::new().id(protected.id), WAIT)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(same_json(got.first().unwrap(), &protected));

    // Someone else relaying Alice's protected event is refused.
    let mallory_keys = Keys::generate();
    let mallory = client(&relay, Some(&mallory_keys), true).await;
    let again = EventBuilder::text_note("mine only, again")
        .tag(Tag::protected())
        .sign_with_keys(&keys)
        .unwrap();
    let msg = match mallory.send_event(&again).await {
        Ok(out) => {
            assert!(
                out.success.is_empty(),
                "protected event relayed by a stranger accepted"
            );
            out.failed.values().next().cloned().unwrap_or_default()
        }
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("restricted:") || msg.contains("auth-required:"),
        "{msg}"
    );
}
