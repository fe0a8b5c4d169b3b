//! Who may see what (PROTOCOL §3 "served to"): the viewer model ([`Viewer`], [`Audience`]) and
//! the ONE visibility rule, used by stored REQ
//! results (also by `ids`), live fan-out, COUNT and REST, so a leak fixed here is fixed on
//! every path; the REQ pre-check that answers a filter which can only match invisible
//! events with `CLOSED auth-required:` / `restricted:` instead of silence; and the scoping
//! of a read's stored query to what the reader may see ([`scope`]), so that hidden events
//! are not walked at all where an index can avoid them.
//!
//! The pre-check refuses on the filters alone, never on what the state holds for someone
//! else: a REQ for a group's 445s / 450s by `#h` answers the same (EOSE, subscription open)
//! whether the group is gated or does not exist; a REQ by `ids` whose events are all hidden
//! is refused whatever else the filter says (its `#p`, `kinds`, `since`…), so that extra
//! fields cannot probe who an event is for.
//!
//! | kind          | visible to                                                             |
//! |---------------|------------------------------------------------------------------------|
//! | 1059          | viewers authenticated as one of its `p` recipients                     |
//! | 446           | its `p` recipients and its author, authenticated as such               |
//! | 445           | gated group: its members and admins; open/unknown group: any reader¹   |
//! | 450           | the group's members and admins, and configured admins                  |
//! | 443 / 30443   | any reader¹                                                            |
//! | 444           | nobody (never stored)                                                  |
//! | anything else | anyone (the relay refuses unauthenticated reads itself when auth is on)|
//!
//! ¹ any authenticated viewer when auth is on; anyone when it is off.
//!
//! Each kind family's part of the rule (its audience, its REQ pre-check, how a read of it is
//! scoped) is in its module under `kinds/`; this module dispatches to them on the kind number
//! and does the rest: the viewer model, read keys, splitting filters, trimming to limits.
//!
//! A storage error while deciding means "not visible": fail closed.

use crate::kinds::{giftwrap, group_message, keypackage, noise_dm, roster};
use crate::registry;
use crate::Gateway;
use mls_proto::{Event, Filter, Hex32};
use mls_store::{Audience as StoredAudience, ReadScope, StateRead};

/// Who is reading: the connection's NIP-42 authenticated pubkeys (empty = unauthenticated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    pub authed: Vec<Hex32>,
}

impl Viewer {
    pub fn anonymous() -> Viewer {
        Viewer::default()
    }

    pub fn authenticated_as(pubkeys: impl IntoIterator<Item = Hex32>) -> Viewer {
        Viewer {
            authed: pubkeys.into_iter().collect(),
        }
    }
}

/// Why a REQ / COUNT is refused before it runs. The message carries its prefix
/// (`auth-required: …` / `restricted: …`) for `CLOSED`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRefusal {
    /// Not authenticated: the relay sends an AUTH challenge with the `CLOSED`.
    AuthRequired(String),
    /// Authenticated, but as someone the filters can never match for.
    Restricted(String),
}

impl ReadRefusal {
    pub fn message(&self) -> &str {
        match self {
            ReadRefusal::AuthRequired(m) | ReadRefusal::Restricted(m) => m,
        }
    }
}

impl std::fmt::Display for ReadRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Readers of non-restricted gateway kinds (open-group 445, KeyPackages).
pub(crate) fn any_reader(gw: &Gateway, viewer: &Viewer) -> bool {
    !gw.auth_enabled() || !viewer.authed.is_empty()
}

/// Who may see one event, decided once per event: live fan-out asks it for every matching
/// subscriber, so the event's own part of the rule (its tags, whether its group is gated) is
/// not worked out again per viewer.
pub struct Audience<'a> {
    gw: &'a Gateway,
    who: Who<'a>,
    /// Live delivery only to this pubkey's connections (another owner's KeyPackage while
    /// claiming is on: handed out only through a stored REQ, which claims it).
    live_owner: Option<Hex32>,
}

/// Who an event is for, as its kind family decides it (`kinds/`).
pub(crate) enum Who<'a> {
    Anyone,
    Nobody,
    /// Any authenticated viewer when auth is on; anyone when it is off.
    Readers,
    /// Viewers authenticated as one of these pubkeys.
    Pubkeys(Vec<Hex32>),
    /// Members and admins of the group (and, for rosters, configured admins).
    Members {
        group: &'a str,
        configured_admins: bool,
    },
}

impl<'a> Audience<'a> {
    /// An audience with no live restriction.
    pub(crate) fn of(gw: &'a Gateway, who: Who<'a>) -> Audience<'a> {
        Audience {
            gw,
            who,
            live_owner: None,
        }
    }

    pub fn admits(&self, viewer: &Viewer, state: &dyn StateRead) -> bool {
        match &self.who {
            Who::Anyone => true,
            Who::Nobody => false,
            Who::Readers => any_reader(self.gw, viewer),
            Who::Pubkeys(list) => viewer.authed.iter().any(|pk| list.contains(pk)),
            Who::Members {
                group,
                configured_admins,
            } => {
                (*configured_admins && viewer.authed.iter().any(|pk| self.gw.is_admin(pk)))
                    || registry::participant(state, group, &viewer.authed)
                        .is_ok_and(|p| p.is_some())
            }
        }
    }

    /// Live fan-out: [`Audience::admits`], and with KeyPackage claims on, another owner's
    /// KeyPackage is not pushed (a live push would hand it out without the claim rules of
    /// PROTOCOL §5; a stored REQ serves and claims it).
    pub fn admits_live(&self, viewer: &Viewer, state: &dyn StateRead) -> bool {
        self.live_owner
            .is_none_or(|owner| viewer.authed.contains(&owner))
            && self.admits(viewer, state)
    }
}

/// The kind family's audience of `ev` (the dispatch of the visibility rule).
fn who<'a>(ev: &'a Event, state: &dyn StateRead) -> Who<'a> {
    match ev.kind {
        1059 => giftwrap::audience(ev),
        444 => giftwrap::rumor_audience(),
        446 => noise_dm::audience(ev),
        445 => group_message::audience(ev, state),
        450 => roster::audience(ev),
        443 | 30443 => keypackage::audience(),
        _ => Who::Anyone,
    }
}

pub(crate) fn audience<'a>(gw: &'a Gateway, ev: &'a Event, state: &dyn StateRead) -> Audience<'a> {
    let live_owner = match ev.kind {
        443 | 30443 => keypackage::live_owner(gw, ev),
        _ => None,
    };
    Audience {
        gw,
        who: who(ev, state),
        live_owner,
    }
}

// ---------------------------------------------------------------------------------------------
// Visibility as data (see `mls_store::audience`): the same rule, as read keys the store keeps
// with each event and a reader's scope, so a backend skips what a reader may never see.

/// Most groups a read's scope names one by one; a reader in more holds every group's key
/// (still exact: `may_see` decides each event).
pub(crate) const MAX_SCOPE_GROUPS: usize = 256;

/// The read keys of `ev` once stored: every key a viewer may need to see it now or later
/// (its audience's keys, widened where a kind's audience may grow: see
/// `group_message::stored_audience`).
pub(crate) fn stored_audience(ev: &Event, state: &dyn StateRead) -> StoredAudience {
    use mls_store::ReadKey;
    let who = who(ev, state);
    if ev.kind == 445 {
        if let Some(widened) = group_message::stored_audience(&who, ev) {
            return widened;
        }
    }
    let keys = match who {
        Who::Anyone => return StoredAudience::anyone(),
        Who::Nobody => return StoredAudience::nobody(),
        Who::Readers => vec![ReadKey::Readers],
        Who::Pubkeys(list) => list.into_iter().map(ReadKey::Pubkey).collect(),
        Who::Members {
            group,
            configured_admins,
        } => {
            let mut keys = vec![ReadKey::Group(group.to_string())];
            if configured_admins {
                keys.push(ReadKey::Admins);
            }
            keys
        }
    };
    StoredAudience::new(keys)
}

/// The read keys `viewer` holds: readers' (when it may read restricted kinds at all), its
/// pubkeys, the administrators' (a configured admin), and its groups (every group when they
/// are too many to name, or not indexed yet). A state error widens the scope rather than
/// narrowing it: `may_see` is the final check either way.
pub(crate) fn read_scope(gw: &Gateway, viewer: &Viewer, state: &dyn StateRead) -> ReadScope {
    use mls_store::ReadKey;
    let mut keys = Vec::new();
    if any_reader(gw, viewer) {
        keys.push(ReadKey::Readers);
    }
    for pk in &viewer.authed {
        keys.push(ReadKey::Pubkey(*pk));
        if gw.is_admin(pk) {
            keys.push(ReadKey::Admins);
        }
    }
    let groups = if viewer.authed.is_empty() {
        Ok(Some(Vec::new()))
    } else {
        registry::groups_of(state, &viewer.authed, MAX_SCOPE_GROUPS)
    };
    match groups {
        Ok(Some(groups)) => {
            keys.extend(groups.into_iter().map(ReadKey::Group));
            ReadScope::holding(keys, false)
        }
        Ok(None) => ReadScope::holding(keys, true),
        Err(e) => {
            tracing::warn!(error = %e, "reading a reader's groups failed; scope holds every group");
            ReadScope::holding(keys, true)
        }
    }
}

pub(crate) fn may_see(gw: &Gateway, viewer: &Viewer, ev: &Event, state: &dyn StateRead) -> bool {
    audience(gw, ev, state).admits(viewer, state)
}

/// What a read refusal may rest on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evidence {
    /// The filters alone, before any query: only refusals that hold whatever is stored.
    Filters,
    /// A query that found matching events, none of them visible: also refuse filters that
    /// asked for them by `ids` (before the query, an id says nothing about whose event it is).
    FoundOnlyHidden,
}

/// Decided on the filters and the viewer alone: what the state holds about others' groups
/// must not change the answer (`_state` is kept for rules that may need the viewer's own).
pub(crate) fn check_read(
    gw: &Gateway,
    viewer: &Viewer,
    filters: &[Filter],
    _state: &dyn StateRead,
    evidence: Evidence,
) -> Result<(), ReadRefusal> {
    let mut reason = None;
    for f in filters {
        match filter_refusal(gw, viewer, f, evidence) {
            None => return Ok(()),
            Some(r) => {
                reason.get_or_insert(r);
            }
        }
    }
    match reason {
        None => Ok(()),
        Some(r) if viewer.authed.is_empty() => {
            Err(ReadRefusal::AuthRequired(format!("auth-required: {r}")))
        }
        Some(r) => Err(ReadRefusal::Restricted(format!("restricted: {r}"))),
    }
}

/// `Some(reason)` when `f` can only match events this viewer may never see.
fn filter_refusal(gw: &Gateway, viewer: &Viewer, f: &Filter, evidence: Evidence) -> Option<String> {
    if f.is_empty_match() {
        return None;
    }
    if evidence == Evidence::FoundOnlyHidden && f.ids.is_some() {
        return Some("the requested events are not served to this connection".into());
    }
    let kinds = f.kinds.as_ref()?;
    let mut reason = None;
    for kind in kinds {
        match kind_refusal(gw, viewer, *kind, f) {
            None => return None,
            Some(r) => {
                reason.get_or_insert(r);
            }
        }
    }
    reason
}

/// The kind family's REQ pre-check (445 and kinds without one: never refused).
fn kind_refusal(gw: &Gateway, viewer: &Viewer, kind: u16, f: &Filter) -> Option<String> {
    match kind {
        1059 => giftwrap::read_refusal(viewer, f),
        446 => noise_dm::read_refusal(viewer, f),
        450 => roster::read_refusal(viewer),
        443 | 30443 => keypackage::read_refusal(gw, viewer),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Scoping a read to what the reader may see (security rule 8).

/// The stored query for `filters`, narrowed to events `viewer` may see where the filter alone
/// allows it, so that a read never walks other people's mailboxes or other groups' messages:
///
/// - kind 1059 is read through the reader's own pubkeys (`#p` = its pubkeys, or the
///   filter's `#p` values that are its own); kind 446 likewise, plus a second filter by
///   `authors` = its pubkeys (a DM is also served to its author);
/// - kinds 445 and 450 asked by `#h` keep only the groups the reader may read (open or
///   unknown groups, groups it is a member or admin of; for 450 also any group for a
///   configured admin);
/// - the other kinds of the same filter keep the filter as it is.
///
/// A filter is split per kind family when needed; every output filter keeps the input's
/// `limit`, so the caller trims the merged results to each input filter's limit
/// ([`within_limits`]). Filters by `ids` (already one lookup per id) and filters without
/// `kinds` are kept as they are (their cost is bounded by `max_query_candidates`). The
/// result is exact for visible events, except that a `#p` naming others next to the reader
/// is narrowed to the reader (a reader reads its own mailbox); `may_see` stays the final
/// check on every event.
pub(crate) fn scope(
    gw: &Gateway,
    viewer: &Viewer,
    filters: &[Filter],
    state: &dyn StateRead,
) -> Vec<Filter> {
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        scope_one(gw, viewer, f, state, &mut out);
    }
    out
}

/// Kinds whose read is narrowed by their family (for this filter).
fn is_scoped_kind(kind: u16, f: &Filter) -> bool {
    match kind {
        1059 | 446 => true,
        445 | 450 => f.tags.contains_key(&'h'),
        _ => false,
    }
}

/// The kind family's narrowing of `f` to what `viewer` may read, one filter per output
/// (none: nothing of that kind to read).
fn scope_kind(
    gw: &Gateway,
    viewer: &Viewer,
    kind: u16,
    f: &Filter,
    state: &dyn StateRead,
) -> Vec<Filter> {
    match kind {
        1059 => giftwrap::scope(viewer, f),
        446 => noise_dm::scope(viewer, f),
        445 => group_message::scope(viewer, f, state),
        450 => roster::scope(gw, viewer, f, state),
        _ => vec![f.clone()],
    }
}

fn scope_one(
    gw: &Gateway,
    viewer: &Viewer,
    f: &Filter,
    state: &dyn StateRead,
    out: &mut Vec<Filter>,
) {
    let Some(kinds) = f.kinds.as_ref() else {
        out.push(f.clone());
        return;
    };
    if f.ids.is_some() || f.is_empty_match() || !kinds.iter().any(|k| is_scoped_kind(*k, f)) {
        out.push(f.clone());
        return;
    }
    let plain: Vec<u16> = kinds
        .iter()
        .copied()
        .filter(|k| !is_scoped_kind(*k, f))
        .collect();
    if !plain.is_empty() {
        out.push(Filter {
            kinds: Some(plain),
            ..f.clone()
        });
    }
    let mut seen = Vec::new();
    for &kind in kinds {
        if !is_scoped_kind(kind, f) || seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        out.extend(scope_kind(gw, viewer, kind, f, state));
    }
}

/// The events to serve for `filters` out of `found` (newest first, from the scoped filters):
/// for each filter, its newest `limit` (capped by `max_limit`) among the events it matches.
/// `found` holds each filter's newest visible matches, so this is exactly the answer the
/// unscoped filters would give.
pub fn within_limits<T>(
    filters: &[Filter],
    max_limit: u64,
    found: Vec<T>,
    event: impl Fn(&T) -> &Event,
) -> Vec<T> {
    let mut room: Vec<u64> = filters
        .iter()
        .map(|f| f.limit.unwrap_or(max_limit).min(max_limit))
        .collect();
    found
        .into_iter()
        .filter(|item| {
            let ev = event(item);
            let mut keep = false;
            for (f, left) in filters.iter().zip(room.iter_mut()) {
                if *left > 0 && f.matches(ev) {
                    *left -= 1;
                    keep = true;
                }
            }
            keep
        })
        .collect()
}

#[cfg(test)]
mod tests;
