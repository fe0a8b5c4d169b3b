//! The MLS gateway rules (PROTOCOL.md §3–§6): who may publish what, who may read what, what the
//! relay remembers about groups and KeyPackages, and for how long events are kept.
//!
//! Pure logic over the store's key/value state ([`mls_store::StateRead`] / [`StateWrite`]):
//! no sockets, no database engine. The store's single writer calls [`Gateway`]'s
//! [`Admission::admit`] inside its write transaction, so every check and the state change it
//! implies commit together; reads call [`Gateway::may_see`].
//!
//! One module per kind family owns its whole rule (accept, refusal wording, audience, read
//! pre-check and scope, state keys, retention), so everything about kind 445 is in one file:
//!
//! | module                       | kinds / concern                                            |
//! |------------------------------|------------------------------------------------------------|
//! | `kinds/keypackage.rs`        | 443 / 30443 KeyPackages, the directory, their purge        |
//! | `kinds/keypackage/claims.rs` | KeyPackage claiming (§5)                                   |
//! | `kinds/giftwrap.rs`          | 1059 gift wraps, 444 Welcome rumors                        |
//! | `kinds/group_message.rs`     | 445 group messages                                         |
//! | `kinds/noise_dm.rs`          | 446 Noise DMs                                              |
//! | `kinds/roster.rs`            | 450 roster events                                          |
//! | `kinds/mod.rs`               | the family index, shared retention and scoping helpers     |
//! | `dialect.rs`                 | Marmot and Loxation tags → one model ([`MlsEvent`]); `invalid()`, [`dialect::short`] |
//! | `registry.rs`                | group records and membership (roster, giftwrap, api sources) |
//! | `visibility.rs`              | the viewer model, the one visibility rule (dispatching to the kinds), read scopes |
//! | `purge.rs`                   | background cleanup of the state, in bounded chunks         |
//! | `state.rs`                   | the state's namespace, typed helpers, [`MemState`]         |
//! | `config.rs`                  | `[extensions.mls_gateway]`                                 |
//! | `lib.rs`                     | [`Gateway`]: admission (dispatching to the kinds), NIP-70, deletions, NIP-98 tokens, NIP-11 |
//!
//! Tests mirror the modules: `kinds/group_message/tests.rs` tests `kinds/group_message.rs`,
//! and so on; `tests.rs` (with its shared fixtures in `tests/fixtures.rs`) tests `lib.rs`;
//! `tests/audience.rs` and `tests/security.rs` are suites across modules.
//!
//! Decisions where PROTOCOL.md is silent:
//! - 450 shape: `h`, `op`, `seq` (one each), `p` targets, optional `name`; `bootstrap` by a
//!   configured admin on an existing group resets its roster; `remove` takes every role,
//!   `promote` makes admin + member, `demote` keeps membership, `replace` sets the member list
//!   and keeps admin roles; a roster change may not leave a group without an admin.
//! - Group admins may publish and read a gated group's 445 like members; configured admins
//!   may read 450s (they need the last `seq`) but not 445s of groups they are not in.
//! - How the membership sources combine (PROTOCOL §4). A group is *open* until one source
//!   gates it; who may gate it depends on whether it is in use:
//!   - a fresh group id (no 445 ever accepted for it) is first come, first served: a 450
//!     `bootstrap` makes its signer owner, a 1059 with `h` its publisher;
//!   - a group *served open* (a 445 accepted while its membership was unknown, stored or only
//!     delivered live; marked once in `o/{group}`) is gated only by a configured
//!     `admin_pubkeys` entry (450 `bootstrap`, or a 1059 with `h` from a connection
//!     authenticated as one) or the admin API; anyone else gets `restricted:`. Marmot clients
//!     never announce membership, so otherwise a stranger who saw the `h` could lock the
//!     group's users out of it and of its history;
//!   - once gated, a 1059 with `h` changes membership only when its publisher is a member or
//!     admin (else `restricted:`), and only while no admin manages the group. After the
//!     first accepted 450 or admin API change the group is *roster-managed*: its members are
//!     exactly what the rosters and the admin API say; a member's gift wrap is still
//!     delivered (it carries a Welcome) but admits no one, in particular not someone a roster
//!     or the API removed.
//! - Key references: one per owner, carried by at most one 443 and one 30443 address (MDK's
//!   dual publish); an expired KeyPackage's reference is free again. The hourly cap counts
//!   new KeyPackages (references), not events. A missing reference uses the event id.
//! - Rate counters (445 per minute per group + publisher, KeyPackages per hour per owner,
//!   claimed fetches per hour per pair) are fixed windows in the state: shared by instances,
//!   kept across restarts, rolled back with a refused event. `0` = unlimited, also for
//!   `max_keypackage_fetches_per_hour` and `message_archive_ttl_days` (no archive limit).
//! - Claims are per key reference; a requester gets its own earlier claims back; an owner's
//!   last unclaimed KeyPackage is served but never claimed; a pair over its fetch limit makes
//!   the whole call `rate-limited:`.
//! - NIP-70 (`["-"]`) is also enforced here, so no write path can skip it.
//! - Deleting a gift wrap (1059) or Noise DM (446) as a recipient (NIP-59): allowed only when
//!   the deleter is its sole reader — the sole `p` of a 1059; never for a 446, whose author
//!   reads it too. Otherwise `OK false "restricted: …"` (only its author may delete it, for
//!   everyone). Hiding it from the deleter
//!   alone would make visibility depend on per-reader deletion records; refusing keeps an
//!   event's audience a fact of the event (data a SQL or Firestore backend can index). A
//!   tombstone left by such a recipient for an id not stored yet blocks nobody's copy.
//! - Reads are scoped before they run ([`Gateway::scope_reads`]): 1059 / 446 through the
//!   reader's own pubkeys, 445 / 450 by `#h` through the groups it may read; the REQ
//!   pre-check never refuses on another group's state, so a gated group's `#h` answers as an
//!   unknown one's. With claims on, another owner's KeyPackage is not delivered live
//!   ([`Audience::admits_live`]): only a stored REQ hands it out, under the claim rules.

pub mod config;
pub mod dialect;

mod kinds;
mod purge;
mod registry;
mod state;
mod visibility;

#[cfg(test)]
mod tests;

pub use config::{GatewayConfig, MembershipSource, RateLimits, StorageBackend, UnknownGroups};
pub use dialect::{normalize, Dialect, MlsEvent, RosterOp};
pub use kinds::keypackage::KeyPackageEntry;
pub use purge::{StatePurge, STATE_PURGE_CHUNK};
pub use registry::{GroupRecord, MemberGroupsBuild, MembershipChange};
pub use state::{MemState, MAX_GROUP_ID, MAX_KEY_PART};
pub use visibility::{within_limits, Audience, ReadRefusal, Viewer};

use kinds::keypackage::claims;
use kinds::{giftwrap, group_message, keypackage, noise_dm, roster};

use mls_proto::{parse_pubkey, Event, Filter, Hex32};
use mls_store::{Admission, Admitted, Publisher, Rejection, StateRead, StateWrite, StoreError};

/// The gateway: configuration plus the rules. Holds no state of its own (everything lives in
/// the store), so one instance may serve every connection and several relays may share a backend.
#[derive(Debug, Clone)]
pub struct Gateway {
    config: GatewayConfig,
    auth_enabled: bool,
    admins: Vec<Hex32>,
}

impl Gateway {
    /// `auth_enabled` = the relay's `[auth] enabled`. Admin pubkeys come from
    /// `config.admin_pubkeys` (hex or npub); an invalid entry is an error naming it.
    pub fn new(config: GatewayConfig, auth_enabled: bool) -> Result<Gateway, String> {
        let mut admins = Vec::with_capacity(config.admin_pubkeys.len());
        for entry in &config.admin_pubkeys {
            let pk = parse_pubkey(entry).ok_or_else(|| {
                format!(
                    "admin_pubkeys: invalid pubkey {entry:?} (expected 64 hex characters or npub)"
                )
            })?;
            admins.push(pk);
        }
        if config.max_keypackages_per_query == 0 {
            return Err("max_keypackages_per_query must be at least 1".into());
        }
        if config.keypackage_ttl > config.keypackage_max_ttl {
            return Err(format!(
                "keypackage_ttl ({}) must not exceed keypackage_max_ttl ({})",
                config.keypackage_ttl, config.keypackage_max_ttl
            ));
        }
        Ok(Gateway {
            config,
            auth_enabled,
            admins,
        })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn auth_enabled(&self) -> bool {
        self.auth_enabled
    }

    /// Records that the single-use NIP-98 token `id` was used, until `forget_after` (unix
    /// seconds: when it can no longer verify). Kept in the store's state, so every relay
    /// instance on the same store refuses its replay; refused `restricted:` when it was used.
    pub fn use_token_once(
        &self,
        id: &Hex32,
        forget_after: u64,
        state: &mut dyn StateWrite,
    ) -> Result<(), Rejection> {
        let prefix = state::used_token_prefix(id);
        let mut used = false;
        state
            .scan_prefix(&prefix, &mut |_, _| {
                used = true;
                false
            })
            .map_err(state::store_err)?;
        if used {
            return Err(Rejection(
                "restricted: NIP-98: this token was already used".into(),
            ));
        }
        // The minute is rounded up: the purge keeps it until that minute is over.
        let mut key = prefix;
        key.extend_from_slice(forget_after.div_ceil(60).to_string().as_bytes());
        state.put(&key, b"").map_err(state::store_err)
    }

    /// A configured `admin_pubkeys` entry (may bootstrap any group, use the admin API).
    pub fn is_admin(&self, pk: &Hex32) -> bool {
        self.admins.contains(pk)
    }

    pub fn admin_pubkeys(&self) -> &[Hex32] {
        &self.admins
    }

    pub(crate) fn source_enabled(&self, source: MembershipSource) -> bool {
        self.config.membership_sources.contains(&source)
    }

    /// THE visibility rule (see `visibility.rs`), for stored REQ, live fan-out, COUNT and REST.
    pub fn may_see(&self, viewer: &Viewer, event: &Event, state: &dyn StateRead) -> bool {
        visibility::may_see(self, viewer, event, state)
    }

    /// The same rule split in two for fan-out: the event's part once, then
    /// [`Audience::admits`] per viewer (`may_see` is exactly `audience(..).admits(..)`).
    pub fn audience<'a>(&'a self, event: &'a Event, state: &dyn StateRead) -> Audience<'a> {
        visibility::audience(self, event, state)
    }

    /// The read keys `viewer` holds (see `mls_store::audience`): what a stored read passes to
    /// the store so that it skips events this viewer may never see. Only a pre-filter:
    /// `may_see` stays the final check on every event served.
    pub fn read_scope(&self, viewer: &Viewer, state: &dyn StateRead) -> mls_store::ReadScope {
        visibility::read_scope(self, viewer, state)
    }

    /// One chunk of the one-time build of the by-pubkey membership rows that
    /// [`Gateway::read_scope`] reads (stores written before they existed): looks at no more
    /// than `max_keys` rows. Run each chunk in its own state transaction until
    /// `progress.done()`; until then scopes hold every group.
    pub fn build_member_groups_chunk(
        &self,
        state: &mut dyn StateWrite,
        progress: &mut MemberGroupsBuild,
        max_keys: usize,
    ) -> Result<(), StoreError> {
        registry::build_member_groups_chunk(state, progress, max_keys)
    }

    /// Before a REQ / COUNT runs: `Err` when the filters can only match events this viewer may
    /// never see. Filters that may match visible events pass (the rest is left to `may_see`).
    pub fn check_read(
        &self,
        viewer: &Viewer,
        filters: &[Filter],
        state: &dyn StateRead,
    ) -> Result<(), ReadRefusal> {
        visibility::check_read(self, viewer, filters, state, visibility::Evidence::Filters)
    }

    /// The stored query of a REQ / COUNT, scoped to what `viewer` may see (mailbox kinds
    /// through its own pubkeys, gated groups through its groups), so hidden events are not
    /// walked. Trim a REQ's results with [`within_limits`] against the original `filters`;
    /// live subscriptions keep the original filters (fan-out decides per event).
    pub fn scope_reads(
        &self,
        viewer: &Viewer,
        filters: &[Filter],
        state: &dyn StateRead,
    ) -> Vec<Filter> {
        visibility::scope(self, viewer, filters, state)
    }

    /// After a query that served nothing while some event asked for by `ids` exists but is
    /// hidden from `viewer` (decided on the ids alone, never on the filter's other fields):
    /// `Err` when every filter asked by `ids` (or is refused by `check_read`), so the client
    /// hears why instead of an empty EOSE. Broad filters pass: their live part may still
    /// deliver the viewer's own events later.
    pub fn check_hidden_result(
        &self,
        viewer: &Viewer,
        filters: &[Filter],
        state: &dyn StateRead,
    ) -> Result<(), ReadRefusal> {
        visibility::check_read(
            self,
            viewer,
            filters,
            state,
            visibility::Evidence::FoundOnlyHidden,
        )
    }

    /// KeyPackage claims (§5): of the KeyPackage events a REQ returned (already visible), the
    /// ids to serve, in input order, with claims recorded in `state`. Other events pass through;
    /// so does everything when claims are off, the requester is unauthenticated, or the
    /// KeyPackage is the requester's own. Run it in a state transaction (`update_state`).
    pub fn claim_keypackages(
        &self,
        requester: &Viewer,
        candidates: &[Event],
        now: u64,
        state: &mut dyn StateWrite,
    ) -> Result<Vec<Hex32>, Rejection> {
        claims::claim(self, requester, candidates, now, state)
    }

    /// The `mls` object of the NIP-11 document.
    pub fn nip11_section(&self) -> serde_json::Value {
        let cfg = &self.config;
        serde_json::json!({
            "kinds": [443, 444, 445, 446, 450, 1059, 10002, 10050, 10051, 30443],
            "dialects": ["marmot", "loxation"],
            "ciphersuites": dialect::CIPHERSUITES
                .iter()
                .map(|(id, _)| format!("0x{id:04x}"))
                .collect::<Vec<_>>(),
            "retention": kinds::describe_retention(cfg),
            "membership": {
                "sources": cfg.membership_sources,
                "unknown_groups": cfg.unknown_groups,
            },
            "keypackage_claims": {
                "enabled": cfg.keypackage_claims,
                "max_keypackages_per_query": cfg.max_keypackages_per_query,
                "max_keypackage_fetches_per_hour": cfg.max_keypackage_fetches_per_hour,
            },
            "rate_limits": {
                "max_keypackages_per_hour": cfg.rate_limits.max_keypackages_per_hour,
                "max_group_messages_per_minute": cfg.rate_limits.max_group_messages_per_minute,
            },
        })
    }

    /// The group record, if `viewer` is a member or admin of it, or a configured admin.
    /// `None` otherwise, so that REST does not reveal whether the group exists.
    pub fn group_for(
        &self,
        viewer: &Viewer,
        group_id: &str,
        state: &dyn StateRead,
    ) -> Result<Option<GroupRecord>, StoreError> {
        let Some(rec) = registry::load_record(state, group_id)? else {
            return Ok(None);
        };
        let allowed = viewer
            .authed
            .iter()
            .any(|pk| self.is_admin(pk) || rec.members.contains(pk) || rec.admins.contains(pk));
        Ok(allowed.then_some(rec))
    }

    /// Every group the registry knows (admin API).
    pub fn list_groups(&self, state: &dyn StateRead) -> Result<Vec<GroupRecord>, StoreError> {
        registry::list(state)
    }

    /// An admin API membership change (source `api`): the same atomic registry path as a
    /// roster event. The caller has already checked that the requester is a configured admin.
    pub fn apply_admin_change(
        &self,
        change: &MembershipChange,
        now: u64,
        state: &mut dyn StateWrite,
    ) -> Result<GroupRecord, Rejection> {
        registry::apply_admin_change(self, change, now, state)
    }

    /// The REST KeyPackage directory of `owner`: unexpired only, newest first.
    pub fn keypackages_of(
        &self,
        owner: &Hex32,
        now: u64,
        state: &dyn StateRead,
    ) -> Result<Vec<KeyPackageEntry>, StoreError> {
        keypackage::entries_of(state, owner, now)
    }

    /// Background cleanup of the gateway's own state (expired KeyPackage bookkeeping, rate
    /// counters of past windows), one bounded chunk: looks at no more than `max_keys` keys
    /// and records in `progress` where the next chunk resumes. Run each chunk in its own
    /// state transaction (`update_state`) until `progress.done()`, so that the writer commits
    /// the events queued behind a chunk before the next (see `purge.rs`).
    pub fn purge_state_chunk(
        &self,
        now: u64,
        state: &mut dyn StateWrite,
        progress: &mut StatePurge,
        max_keys: usize,
    ) -> Result<(), StoreError> {
        purge::chunk(state, now, progress, max_keys)
    }

    /// The whole purge of [`Gateway::purge_state_chunk`] in one transaction (for tests and
    /// tools, not for a relay serving traffic). Returns the records removed.
    pub fn purge_state(&self, now: u64, state: &mut dyn StateWrite) -> Result<u64, StoreError> {
        purge::all(state, now)
    }

    /// NIP-70 on the store's write path (see [`check_protected`]); the operator's import is
    /// exempt.
    fn check_protected(event: &Event, publisher: &Publisher) -> Result<(), Rejection> {
        if publisher.operator {
            return Ok(());
        }
        check_protected(event, &publisher.authed).map_err(Rejection)
    }
}

/// NIP-70: a protected event (`["-"]`) only from a connection authenticated as its author.
/// The one definition: the relay runs it on every client write (ephemeral events never reach
/// `admit`, and the store answers a duplicate before it), and `admit` runs it again for any
/// write that skipped the relay.
pub fn check_protected(event: &Event, authed: &[Hex32]) -> Result<(), String> {
    if !event.is_protected() || authed.contains(&event.pubkey) {
        return Ok(());
    }
    Err(if authed.is_empty() {
        "auth-required: this event is protected (NIP-70); authenticate as its author".into()
    } else {
        "restricted: this event is protected (NIP-70) and may only be published by its author"
            .into()
    })
}

impl Admission for Gateway {
    fn admit(
        &self,
        event: &Event,
        publisher: &Publisher,
        received_at: u64,
        state: &mut dyn StateWrite,
    ) -> Result<Admitted, Rejection> {
        Self::check_protected(event, publisher)?;
        // Only the gateway kinds go through the dialect model; other kinds keep plain Nostr rules.
        let m = || dialect::normalize(event);
        match event.kind {
            443 | 30443 => keypackage::admit(self, event, &m()?, publisher, received_at, state),
            444 => Err(giftwrap::refuse_rumor()),
            445 => group_message::admit(self, event, &m()?, publisher, received_at, state),
            446 => noise_dm::admit(self, event, &m()?, received_at),
            450 => roster::admit(self, event, &m()?, publisher, received_at, state),
            1059 => giftwrap::admit(self, event, &m()?, publisher, received_at, state),
            5 => {
                keypackage::on_deletion(event, state).map_err(state::store_err)?;
                Ok(Admitted {
                    expires_at: event.expiration(),
                    store: true,
                })
            }
            // 10050 / 10051 / 10002 relay lists and every other kind: ordinary Nostr rules,
            // kept until their NIP-40 expiration.
            _ => Ok(Admitted {
                expires_at: event.expiration(),
                store: true,
            }),
        }
    }

    /// NIP-09: the author; and, for a gift wrap (1059) or Noise DM (446), a `p` recipient who
    /// is its *only* reader (NIP-59 advises recipients to delete what they have read). Deleting
    /// is for everyone, so a recipient may not take a message away from another recipient or,
    /// for a 446, from its author (who reads it too) — nor block their copy with a tombstone,
    /// since tombstones count only when their deleter passes this same check.
    fn may_delete(&self, deleter: &Hex32, target: &Event) -> bool {
        *deleter == target.pubkey
            || mailbox_readers(target)
                .is_some_and(|r| r.contains(deleter) && r.iter().all(|p| p == deleter))
    }

    /// A recipient's kind 5 naming a gift wrap or Noise DM that someone else reads too is
    /// refused outright (`restricted:`) rather than skipped, so the client knows it stayed.
    /// Who may read a stored event, as read keys: the visibility rule of `visibility.rs`,
    /// widened to what it may become (an open group's messages once the group is gated).
    fn audience(&self, event: &Event, state: &dyn StateRead) -> mls_store::Audience {
        visibility::stored_audience(event, state)
    }

    fn refuse_deletion(&self, deleter: &Hex32, target: &Event) -> Option<Rejection> {
        let readers = mailbox_readers(target)?;
        if *deleter == target.pubkey || !target.tag_values("p").any(|p| p == deleter.to_hex()) {
            return None;
        }
        let others = readers.iter().filter(|p| *p != deleter).count();
        (others > 0).then(|| {
            Rejection(format!(
                "restricted: kind {} event {} is also read by {others} other reader(s) (its author or other recipients); a recipient may delete only what no one else reads (its author may delete it for everyone)",
                target.kind,
                dialect::short(&target.id.to_hex()),
            ))
        })
    }
}

/// Who reads a mailbox event (the kind family decides: `kinds/giftwrap.rs`,
/// `kinds/noise_dm.rs`); `None` for other kinds.
fn mailbox_readers(target: &Event) -> Option<std::collections::BTreeSet<Hex32>> {
    match target.kind {
        1059 => Some(giftwrap::readers(target)),
        446 => Some(noise_dm::readers(target)),
        _ => None,
    }
}
