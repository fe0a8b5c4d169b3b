//! A real Marmot (MLS over Nostr, NIP-EE) group through the relay, driven by mdk-core 0.8.0 and
//! nostr-sdk 0.44.1:
//!
//! 1. Bob and Carol publish their KeyPackages as MDK makes them (30443 and legacy 443);
//! 2. Alice fetches them from the relay, creates the group, gift-wraps (NIP-59) the two
//!    Welcomes and publishes them (MDK 0.8 does not publish the creation commit);
//! 3. Bob and Carol fetch their gift wraps (`{"kinds":[1059],"#p":[me]}`), unwrap, process and
//!    accept the Welcome;
//! 4. all three send an application message (445) and decrypt the others';
//! 5. Bob commits a self-update, Alice and Carol fetch and apply it; messages sent after the
//!    commit still decrypt everywhere.
//!
//! Every event goes through the relay; each member only keeps its own keys and MDK state. The
//! flow runs against a relay with `[auth] enabled = false` and one with `enabled = true`; in both,
//! the clients authenticate with NIP-42 automatically (gift wraps are served only to their
//! authenticated recipient either way), and the harness checks on the wire that they did.

mod support;

use mdk_core::prelude::*;
use mdk_memory_storage::MdkMemoryStorage;
use nostr_sdk::prelude::*;
use std::collections::{BTreeSet, HashSet};
use support::{Relay, WAIT};

const KEY_PACKAGE: Kind = Kind::Custom(30443);
const KEY_PACKAGE_LEGACY: Kind = Kind::Custom(443);
const CHAT: Kind = Kind::Custom(9);

/// One group member: its own keys, its own MDK state, its own connection to the relay.
struct Member {
    name: &'static str,
    keys: Keys,
    mdk: MDK<MdkMemoryStorage>,
    client: Client,
    /// 445 events this member already handled (sent itself or processed), by id.
    seen: HashSet<EventId>,
}

impl Member {
    async fn join(name: &'static str, relay: &Relay) -> Member {
        let keys = Keys::generate();
        let client = relay.client(&keys).await;
        Member {
            name,
            keys,
            mdk: MDK::new(MdkMemoryStorage::default()),
            client,
            seen: HashSet::new(),
        }
    }

    fn pk(&self) -> PublicKey {
        self.keys.public_key()
    }

    /// Publishes `event` and requires the relay's `OK true`.
    async fn publish(&self, relay: &Relay, event: &Event) {
        let out = self.client.send_event(event).await.unwrap_or_else(|e| {
            panic!(
                "{}: publishing kind {} failed: {e}; relay log tail:\n{}",
                self.name,
                event.kind,
                relay.log_tail(20)
            )
        });
        assert!(
            out.success.len() == 1 && out.failed.is_empty(),
            "{}: relay did not accept kind {} ({}): {:?}; relay log tail:\n{}",
            self.name,
            event.kind,
            event.id,
            out.failed,
            relay.log_tail(20)
        );
    }

    /// Stored events matching `filter`, oldest first.
    async fn fetch(&self, relay: &Relay, filter: Filter) -> Vec<Event> {
        let events = self
            .client
            .fetch_events(filter.clone(), WAIT)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{}: fetching {} failed: {e}; relay log tail:\n{}",
                    self.name,
                    filter.as_json(),
                    relay.log_tail(20)
                )
            });
        let mut events: Vec<Event> = events.into_iter().collect();
        events.sort_by_key(|e| (e.created_at, e.id));
        events
    }

    /// Encrypts `text` as a kind-9 chat rumor into a 445 and publishes it.
    async fn say(&mut self, relay: &Relay, group: &GroupId, text: &str) -> Event {
        let rumor = EventBuilder::new(CHAT, text).build(self.pk());
        let event = self
            .mdk
            .create_message(group, rumor, None)
            .unwrap_or_else(|e| panic!("{}: create_message: {e}", self.name));
        assert_eq!(event.kind, Kind::MlsGroupMessage);
        assert_ne!(
            event.pubkey,
            self.pk(),
            "a 445 must be signed by an ephemeral key"
        );
        self.publish(relay, &event).await;
        self.seen.insert(event.id);
        event
    }

    /// Fetches every 445 of the group from the relay, requires exactly `expected_total` of them,
    /// and processes (oldest first) the ones this member has not handled yet.
    async fn sync(
        &mut self,
        relay: &Relay,
        nostr_group_id: &str,
        expected_total: usize,
    ) -> Vec<MessageProcessingResult> {
        let filter = Filter::new()
            .kind(Kind::MlsGroupMessage)
            .custom_tag(SingleLetterTag::lowercase(Alphabet::H), nostr_group_id);
        let events = self.fetch(relay, filter).await;
        assert_eq!(
            events.len(),
            expected_total,
            "{}: expected {expected_total} group messages from the relay, got {}: {:?}",
            self.name,
            events.len(),
            events.iter().map(|e| e.id).collect::<Vec<_>>()
        );
        let mut results = Vec::new();
        for event in events {
            assert_eq!(event.kind, Kind::MlsGroupMessage);
            let h: Vec<&str> = event
                .tags
                .iter()
                .filter(|t| t.kind() == TagKind::h())
                .filter_map(|t| t.content())
                .collect();
            assert_eq!(
                h,
                [nostr_group_id],
                "a 445 carries exactly its group's h tag"
            );
            if !self.seen.insert(event.id) {
                continue;
            }
            let result = self
                .mdk
                .process_message(&event)
                .unwrap_or_else(|e| panic!("{}: process_message({}): {e}", self.name, event.id));
            results.push(result);
        }
        results
    }

    fn group(&self, id: &GroupId) -> group_types::Group {
        self.mdk
            .get_group(id)
            .unwrap()
            .unwrap_or_else(|| panic!("{}: group not found", self.name))
    }
}

/// The application messages among `results`, as (real sender, plaintext), sorted.
fn chats(name: &str, results: Vec<MessageProcessingResult>) -> Vec<(PublicKey, String)> {
    let mut out: Vec<(PublicKey, String)> = results
        .into_iter()
        .map(|r| match r {
            MessageProcessingResult::ApplicationMessage(m) => {
                assert_eq!(m.kind, CHAT);
                (m.pubkey, m.content)
            }
            other => panic!("{name}: expected an application message, got {other:?}"),
        })
        .collect();
    out.sort();
    out
}

#[track_caller]
fn assert_prefix(closed: Option<String>, prefix: &str, what: &str) {
    match closed {
        Some(m) if m.starts_with(prefix) => {}
        other => panic!("{what}: expected CLOSED {prefix:?}…, got {other:?}"),
    }
}

fn sorted(mut v: Vec<(PublicKey, String)>) -> Vec<(PublicKey, String)> {
    v.sort();
    v
}

/// Publishes a KeyPackage the way MDK 0.8 makes it: the addressable 30443 and the legacy 443,
/// same content and key reference. Returns both events.
async fn publish_key_packages(m: &Member, relay: &Relay) -> (Event, Event) {
    let relay_url = RelayUrl::parse(&relay.ws_url()).unwrap();
    let kp = m
        .mdk
        .create_key_package_for_event(&m.pk(), [relay_url])
        .unwrap();
    let current = EventBuilder::new(KEY_PACKAGE, kp.content.clone())
        .tags(kp.tags_30443)
        .sign_with_keys(&m.keys)
        .unwrap();
    let legacy = EventBuilder::new(KEY_PACKAGE_LEGACY, kp.content)
        .tags(kp.tags_443)
        .sign_with_keys(&m.keys)
        .unwrap();
    m.publish(relay, &current).await;
    m.publish(relay, &legacy).await;
    (current, legacy)
}

/// The `e` tag of a Welcome rumor: the KeyPackage event it consumes.
fn welcome_key_package(rumor: &UnsignedEvent) -> EventId {
    rumor
        .tags
        .event_ids()
        .next()
        .copied()
        .expect("a Welcome rumor names its KeyPackage event")
}

async fn marmot_group_flow(auth: bool) {
    let relay = Relay::start(auth).await;
    let relay_url = RelayUrl::parse(&relay.ws_url()).unwrap();

    let mut alice = Member::join("alice", &relay).await;
    let mut bob = Member::join("bob", &relay).await;
    let mut carol = Member::join("carol", &relay).await;

    // --- 1. KeyPackages ------------------------------------------------------------------------
    let (bob_kp, bob_kp_legacy) = publish_key_packages(&bob, &relay).await;
    let (carol_kp, carol_kp_legacy) = publish_key_packages(&carol, &relay).await;

    // --- 2. Alice fetches them and creates the group --------------------------------------------
    let kp_filter = |who: PublicKey| {
        Filter::new()
            .author(who)
            .kinds([KEY_PACKAGE, KEY_PACKAGE_LEGACY])
    };
    let bobs = alice.fetch(&relay, kp_filter(bob.pk())).await;
    let carols = alice.fetch(&relay, kp_filter(carol.pk())).await;
    for (got, published) in [
        (&bobs, [&bob_kp, &bob_kp_legacy]),
        (&carols, [&carol_kp, &carol_kp_legacy]),
    ] {
        let got_ids: BTreeSet<EventId> = got.iter().map(|e| e.id).collect();
        let want: BTreeSet<EventId> = published.iter().map(|e| e.id).collect();
        assert_eq!(got_ids, want, "alice: KeyPackages served for an owner");
        for e in got {
            e.verify().expect("served KeyPackage verifies");
        }
    }
    // One of each dialect: Bob's addressable 30443, Carol's legacy 443.
    let bob_pick = bobs.iter().find(|e| e.kind == KEY_PACKAGE).unwrap().clone();
    let carol_pick = carols
        .iter()
        .find(|e| e.kind == KEY_PACKAGE_LEGACY)
        .unwrap()
        .clone();

    let config = NostrGroupConfigData::new(
        "Marmot e2e".to_owned(),
        "Alice, Bob and Carol through mls-gateway".to_owned(),
        None,
        None,
        None,
        vec![relay_url.clone()],
        vec![alice.pk()],
    );
    let created = alice
        .mdk
        .create_group(
            &alice.pk(),
            vec![bob_pick.clone(), carol_pick.clone()],
            config,
        )
        .expect("alice: create_group");
    let group_id = created.group.mls_group_id.clone();
    let nostr_group_id = hex::encode(created.group.nostr_group_id);
    assert_eq!(created.welcome_rumors.len(), 2, "one Welcome per invitee");
    assert_eq!(alice.mdk.get_members(&group_id).unwrap().len(), 3);
    let epoch_at_creation = created.group.epoch;

    // Gift-wrap each Welcome to the owner of the KeyPackage it consumes, and publish.
    for rumor in &created.welcome_rumors {
        assert_eq!(rumor.kind, Kind::MlsWelcome);
        let to = match welcome_key_package(rumor) {
            id if id == bob_pick.id => bob.pk(),
            id if id == carol_pick.id => carol.pk(),
            other => panic!("Welcome for an unknown KeyPackage {other}"),
        };
        let wrap = EventBuilder::gift_wrap(&alice.keys, &to, rumor.clone(), [])
            .await
            .unwrap();
        assert_eq!(wrap.kind, Kind::GiftWrap);
        assert_eq!(wrap.tags.public_keys().collect::<Vec<_>>(), [&to]);
        alice.publish(&relay, &wrap).await;
    }

    // A gift wrap is served only to its recipient: Carol asking for Bob's is refused.
    let (n, closed) = support::fetch_with_closed(
        &carol.client,
        Filter::new().kind(Kind::GiftWrap).pubkey(bob.pk()),
    )
    .await;
    assert_eq!(n, 0, "carol was served bob's gift wrap");
    assert_prefix(closed, "restricted:", "carol's REQ for bob's gift wraps");

    // A connection that never authenticates: KeyPackages are public on an open relay only;
    // gift wraps are never served to it; with auth required it may not publish either.
    let anon = support::anonymous_client(&relay).await;
    let (n, closed) = support::fetch_with_closed(&anon, kp_filter(bob.pk())).await;
    if auth {
        assert_eq!(n, 0, "KeyPackages served to an unauthenticated connection");
        assert_prefix(
            closed,
            "auth-required:",
            "unauthenticated REQ for KeyPackages",
        );
    } else {
        assert_eq!(n, 2, "KeyPackages on an open relay, unauthenticated");
    }
    let (n, closed) =
        support::fetch_with_closed(&anon, Filter::new().kind(Kind::GiftWrap).pubkey(bob.pk()))
            .await;
    assert_eq!(n, 0, "gift wrap served to an unauthenticated connection");
    assert_prefix(
        closed,
        "auth-required:",
        "unauthenticated REQ for gift wraps",
    );
    if auth {
        let note = EventBuilder::text_note("unauthenticated")
            .sign_with_keys(&Keys::generate())
            .unwrap();
        let refusal = match anon.send_event(&note).await {
            Ok(out) => {
                assert!(out.success.is_empty(), "unauthenticated EVENT accepted");
                out.failed.into_values().collect::<Vec<_>>().join("; ")
            }
            Err(e) => e.to_string(),
        };
        assert!(
            refusal.starts_with("auth-required:"),
            "unauthenticated EVENT: {refusal}"
        );
    }
    anon.shutdown().await;

    // --- 3. Bob and Carol fetch, unwrap, process and accept their Welcome -----------------------
    let everyone = BTreeSet::from([alice.pk(), bob.pk(), carol.pk()]);
    for m in [&bob, &carol] {
        let wraps = m
            .fetch(&relay, Filter::new().kind(Kind::GiftWrap).pubkey(m.pk()))
            .await;
        assert_eq!(
            wraps.len(),
            1,
            "{}: expected exactly one gift wrap, got {}",
            m.name,
            wraps.len()
        );
        let wrap = &wraps[0];
        assert_eq!(wrap.tags.public_keys().collect::<Vec<_>>(), [&m.pk()]);
        let gift = UnwrappedGift::from_gift_wrap(&m.keys, wrap)
            .await
            .unwrap_or_else(|e| panic!("{}: unwrap gift wrap: {e}", m.name));
        assert_eq!(gift.sender, alice.pk(), "{}: the seal is Alice's", m.name);
        assert_eq!(gift.rumor.kind, Kind::MlsWelcome);
        let welcome = m
            .mdk
            .process_welcome(&wrap.id, &gift.rumor)
            .unwrap_or_else(|e| panic!("{}: process_welcome: {e}", m.name));
        assert_eq!(welcome.group_name, "Marmot e2e");
        assert_eq!(welcome.member_count, 3);
        assert_eq!(welcome.welcomer, alice.pk());
        let pending = m.mdk.get_pending_welcomes(None).unwrap();
        assert_eq!(pending.len(), 1, "{}: one pending Welcome", m.name);
        m.mdk
            .accept_welcome(&pending[0])
            .unwrap_or_else(|e| panic!("{}: accept_welcome: {e}", m.name));
        let groups = m.mdk.get_groups().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(hex::encode(groups[0].nostr_group_id), nostr_group_id);
        assert_eq!(groups[0].mls_group_id, group_id);
        let members = m.mdk.get_members(&group_id).unwrap();
        assert_eq!(members, everyone, "{}: the group's members", m.name);
        assert_eq!(m.group(&group_id).epoch, epoch_at_creation);
    }

    // --- 4. Everyone talks; everyone decrypts the others ---------------------------------------
    let lines = [
        (alice.pk(), "hello from alice".to_owned()),
        (bob.pk(), "bob here 🦫".to_owned()),
        (carol.pk(), "carol says hi".to_owned()),
    ];
    alice.say(&relay, &group_id, &lines[0].1).await;
    bob.say(&relay, &group_id, &lines[1].1).await;
    carol.say(&relay, &group_id, &lines[2].1).await;
    for (i, m) in [&mut alice, &mut bob, &mut carol].into_iter().enumerate() {
        let name = m.name;
        let got = chats(name, m.sync(&relay, &nostr_group_id, 3).await);
        let want: Vec<_> = lines
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, l)| l.clone())
            .collect();
        assert_eq!(got, sorted(want), "{name}: decrypted messages");
    }

    // --- 5. Bob commits a self-update; the others fetch and apply it ----------------------------
    let tree_before = alice
        .mdk
        .get_ratchet_tree_info(&group_id)
        .unwrap()
        .tree_hash;
    let update = bob.mdk.self_update(&group_id).expect("bob: self_update");
    assert_eq!(update.evolution_event.kind, Kind::MlsGroupMessage);
    assert!(update.welcome_rumors.is_none_or(|w| w.is_empty()));
    bob.publish(&relay, &update.evolution_event).await;
    bob.seen.insert(update.evolution_event.id);
    // MLS: apply one's own commit only after the relay's OK.
    bob.mdk.merge_pending_commit(&group_id).unwrap();
    for m in [&mut alice, &mut carol] {
        let results = m.sync(&relay, &nostr_group_id, 4).await;
        assert_eq!(results.len(), 1, "{}: one new event, the commit", m.name);
        assert!(
            matches!(results[0], MessageProcessingResult::Commit { .. }),
            "{}: expected the commit, got {:?}",
            m.name,
            results[0]
        );
    }
    let epoch_after = bob.group(&group_id).epoch;
    assert_eq!(
        epoch_after,
        epoch_at_creation + 1,
        "the commit opened a new epoch"
    );
    let tree_after = bob.mdk.get_ratchet_tree_info(&group_id).unwrap().tree_hash;
    assert_ne!(
        tree_after, tree_before,
        "the self-update changed Bob's leaf"
    );
    for m in [&alice, &carol] {
        assert_eq!(m.group(&group_id).epoch, epoch_after, "{}: epoch", m.name);
        assert_eq!(
            m.mdk.get_ratchet_tree_info(&group_id).unwrap().tree_hash,
            tree_after,
            "{}: ratchet tree after the commit",
            m.name
        );
    }

    // Messages in the new epoch, from the committer and from another member, still decrypt.
    let after = [
        (carol.pk(), "after the commit".to_owned()),
        (bob.pk(), "bob, new keys".to_owned()),
    ];
    carol.say(&relay, &group_id, &after[0].1).await;
    bob.say(&relay, &group_id, &after[1].1).await;
    let got = chats("alice", alice.sync(&relay, &nostr_group_id, 6).await);
    assert_eq!(
        got,
        sorted(after.to_vec()),
        "alice: messages after the commit"
    );
    let got = chats("bob", bob.sync(&relay, &nostr_group_id, 6).await);
    assert_eq!(got, vec![after[0].clone()], "bob: message after the commit");
    let got = chats("carol", carol.sync(&relay, &nostr_group_id, 6).await);
    assert_eq!(
        got,
        vec![after[1].clone()],
        "carol: message after the commit"
    );

    // Each member's own store now holds the whole conversation (5 chat messages).
    for m in [&alice, &bob, &carol] {
        let all = m.mdk.get_messages(&group_id, None).unwrap();
        assert_eq!(all.len(), 5, "{}: messages in MDK's store", m.name);
    }

    // The relay saw the three NIP-42 authentications.
    for m in [&alice, &bob, &carol] {
        assert!(
            relay.logged_auth_of(&m.pk()),
            "relay log has no authentication of {}",
            m.name
        );
    }

    for m in [alice, bob, carol] {
        m.client.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marmot_group_with_auth_disabled() {
    marmot_group_flow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marmot_group_with_auth_required() {
    marmot_group_flow(true).await;
}
