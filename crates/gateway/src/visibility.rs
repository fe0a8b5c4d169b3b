//! Who may see what (PROTOCOL §3 "served to"): the ONE visibility rule, used by stored REQ
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
//! A storage error while deciding means "not visible": fail closed.

use crate::registry;
use crate::{Gateway, ReadRefusal, Viewer};
use mls_proto::{Event, Filter, Hex32};
use mls_store::{Audience as StoredAudience, ReadScope, StateRead};

fn names_viewer<'a>(viewer: &Viewer, values: impl IntoIterator<Item = &'a str>) -> bool {
    values
        .into_iter()
        .filter_map(Hex32::from_hex)
        .any(|pk| viewer.authed.contains(&pk))
}

/// Readers of non-restricted gateway kinds (open-group 445, KeyPackages).
fn any_reader(gw: &Gateway, viewer: &Viewer) -> bool {
    !gw.auth_enabled() || !viewer.authed.is_empty()
}

fn only_h(ev: &Event) -> Option<&str> {
    let mut hs = ev.tag_values("h");
    match (hs.next(), hs.next()) {
        (Some(h), None) => Some(h),
        _ => None,
    }
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

enum Who<'a> {
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

impl Audience<'_> {
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

fn pubkeys<'e>(values: impl Iterator<Item = &'e str>) -> Vec<Hex32> {
    values.filter_map(Hex32::from_hex).collect()
}

pub(crate) fn audience<'a>(gw: &'a Gateway, ev: &'a Event, state: &dyn StateRead) -> Audience<'a> {
    let who = match ev.kind {
        1059 => Who::Pubkeys(pubkeys(ev.tag_values("p"))),
        446 => {
            let mut list = pubkeys(ev.tag_values("p"));
            list.push(ev.pubkey);
            Who::Pubkeys(list)
        }
        445 => match only_h(ev).map(|g| (g, registry::is_gated(state, g))) {
            Some((group, Ok(true))) => Who::Members {
                group,
                configured_admins: false,
            },
            Some((_, Ok(false))) => Who::Readers,
            // No single group, or its state unreadable: fail closed.
            None | Some((_, Err(_))) => Who::Nobody,
        },
        450 => match only_h(ev) {
            Some(group) => Who::Members {
                group,
                configured_admins: true,
            },
            None => Who::Nobody,
        },
        443 | 30443 => Who::Readers,
        444 => Who::Nobody,
        _ => Who::Anyone,
    };
    let live_owner =
        (gw.config().keypackage_claims && matches!(ev.kind, 443 | 30443)).then_some(ev.pubkey);
    Audience {
        gw,
        who,
        live_owner,
    }
}

// ---------------------------------------------------------------------------------------------
// Visibility as data (see `mls_store::audience`): the same rule, as read keys the store keeps
// with each event and a reader's scope, so a backend skips what a reader may never see.

/// Most groups a read's scope names one by one; a reader in more holds every group's key
/// (still exact: `may_see` decides each event).
pub(crate) const MAX_SCOPE_GROUPS: usize = 256;

/// The read keys of `ev` once stored: every key a viewer may need to see it now or later.
/// A 445 stored while its group is open is read by any reader *and* the group (an admin may
/// gate the group later; `may_see` then hides it from the others); a gated group never opens
/// again (its record is never removed), so the group's key alone serves its later 445s.
pub(crate) fn stored_audience(gw: &Gateway, ev: &Event, state: &dyn StateRead) -> StoredAudience {
    use mls_store::ReadKey;
    let keys = match audience(gw, ev, state).who {
        Who::Anyone => return StoredAudience::anyone(),
        Who::Nobody => return StoredAudience::nobody(),
        Who::Readers if ev.kind == 445 => match only_h(ev) {
            Some(group) => vec![ReadKey::Readers, ReadKey::Group(group.to_string())],
            None => vec![ReadKey::Readers],
        },
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

/// A roster reader: a member or admin of `group`, or a configured admin.
fn group_participant(gw: &Gateway, viewer: &Viewer, group: &str, state: &dyn StateRead) -> bool {
    let who = Who::Members {
        group,
        configured_admins: true,
    };
    Audience {
        gw,
        who,
        live_owner: None,
    }
    .admits(viewer, state)
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

fn kind_refusal(gw: &Gateway, viewer: &Viewer, kind: u16, f: &Filter) -> Option<String> {
    let tag = |c: char| f.tags.get(&c);
    let authed = !viewer.authed.is_empty();
    match kind {
        1059 => {
            // A `#p` naming only others is refused even though a multi-recipient wrap could
            // also name the viewer: a reader asks for its own mailbox, not someone else's.
            let refused = !authed
                || tag('p').is_some_and(|ps| !names_viewer(viewer, ps.iter().map(String::as_str)));
            refused.then(|| "kind 1059 is only served to its recipients".to_string())
        }
        446 => {
            let p_others =
                tag('p').is_some_and(|ps| !names_viewer(viewer, ps.iter().map(String::as_str)));
            let authors_others = f
                .authors
                .as_ref()
                .is_some_and(|a| !a.iter().any(|pk| viewer.authed.contains(pk)));
            let refused = !authed || (p_others && authors_others);
            refused.then(|| "kind 446 is only served to its recipients and author".to_string())
        }
        // 445 / 450 by `#h`: never refused on the group's state (gated, or unknown), so the
        // answer does not say whether a group exists; the stored query is scoped to the
        // reader's groups instead (`scope`), and `may_see` decides every event.
        450 => (!authed).then(|| "kind 450 is only served to group members and admins".into()),
        443 | 30443 => (!any_reader(gw, viewer))
            .then(|| "keypackages are only served to authenticated users".to_string()),
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

fn is_scoped_kind(kind: u16, f: &Filter) -> bool {
    match kind {
        1059 | 446 => true,
        445 | 450 => f.tags.contains_key(&'h'),
        _ => false,
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
    let with_kind = |kind: u16| Filter {
        kinds: Some(vec![kind]),
        ..f.clone()
    };
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
    // The reader's pubkeys, narrowed by what the filter already asks for.
    let own_p: Vec<String> = viewer
        .authed
        .iter()
        .map(Hex32::to_hex)
        .filter(|pk| f.tags.get(&'p').is_none_or(|ps| ps.contains(pk)))
        .collect();
    let own_authors: Vec<Hex32> = viewer
        .authed
        .iter()
        .copied()
        .filter(|pk| f.authors.as_ref().is_none_or(|a| a.contains(pk)))
        .collect();
    let mut seen = Vec::new();
    for &kind in kinds {
        if !is_scoped_kind(kind, f) || seen.contains(&kind) {
            continue;
        }
        seen.push(kind);
        match kind {
            1059 | 446 => {
                if !own_p.is_empty() {
                    let mut g = with_kind(kind);
                    g.tags.insert('p', own_p.clone());
                    out.push(g);
                }
                if kind == 446 && !own_authors.is_empty() {
                    let mut g = with_kind(kind);
                    g.authors = Some(own_authors.clone());
                    out.push(g);
                }
            }
            _ => {
                let groups: Vec<String> = f.tags[&'h']
                    .iter()
                    .filter(|g| readable_group(gw, viewer, kind, g, state))
                    .cloned()
                    .collect();
                if !groups.is_empty() {
                    let mut g = with_kind(kind);
                    g.tags.insert('h', groups);
                    out.push(g);
                }
            }
        }
    }
}

/// May `viewer` read some of `group`'s events of `kind` (445 or 450)? Unknown groups are
/// readable (open 445 traffic); a state error drops the group (fail closed).
fn readable_group(
    gw: &Gateway,
    viewer: &Viewer,
    kind: u16,
    group: &str,
    state: &dyn StateRead,
) -> bool {
    match registry::is_gated(state, group) {
        Err(_) => false,
        Ok(false) => true,
        Ok(true) if kind == 450 => group_participant(gw, viewer, group, state),
        Ok(true) => registry::participant(state, group, &viewer.authed).is_ok_and(|p| p.is_some()),
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
