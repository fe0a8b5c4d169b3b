//! Who may see what (PROTOCOL §3 "served to"): the ONE visibility rule, used by stored REQ
//! results (also by `ids`), live fan-out, COUNT and REST, so a leak fixed here is fixed on
//! every path; and the REQ pre-check that answers a filter which can only match invisible
//! events with `CLOSED auth-required:` / `restricted:` instead of silence.
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

use crate::dialect::short;
use crate::registry;
use crate::{Gateway, ReadRefusal, Viewer};
use mls_proto::{Event, Filter, Hex32};
use mls_store::StateRead;

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
    Audience { gw, who }
}

/// A roster reader: a member or admin of `group`, or a configured admin.
fn group_participant(gw: &Gateway, viewer: &Viewer, group: &str, state: &dyn StateRead) -> bool {
    let who = Who::Members {
        group,
        configured_admins: true,
    };
    Audience { gw, who }.admits(viewer, state)
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

pub(crate) fn check_read(
    gw: &Gateway,
    viewer: &Viewer,
    filters: &[Filter],
    state: &dyn StateRead,
    evidence: Evidence,
) -> Result<(), ReadRefusal> {
    let mut reason = None;
    for f in filters {
        match filter_refusal(gw, viewer, f, state, evidence) {
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
fn filter_refusal(
    gw: &Gateway,
    viewer: &Viewer,
    f: &Filter,
    state: &dyn StateRead,
    evidence: Evidence,
) -> Option<String> {
    if f.is_empty_match() {
        return None;
    }
    if evidence == Evidence::FoundOnlyHidden && f.ids.is_some() {
        return Some("the requested events are not served to this connection".into());
    }
    let kinds = f.kinds.as_ref()?;
    let mut reason = None;
    for kind in kinds {
        match kind_refusal(gw, viewer, *kind, f, state) {
            None => return None,
            Some(r) => {
                reason.get_or_insert(r);
            }
        }
    }
    reason
}

fn kind_refusal(
    gw: &Gateway,
    viewer: &Viewer,
    kind: u16,
    f: &Filter,
    state: &dyn StateRead,
) -> Option<String> {
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
        445 => {
            let groups = tag('h')?;
            for g in groups {
                match registry::is_gated(state, g) {
                    Ok(false) | Err(_) => return None,
                    Ok(true) => {
                        if registry::participant(state, g, &viewer.authed)
                            .is_ok_and(|p| p.is_some())
                        {
                            return None;
                        }
                    }
                }
            }
            let first = groups.first().map(String::as_str).unwrap_or("");
            Some(format!(
                "kind 445 of group {} is only served to its members",
                short(first)
            ))
        }
        450 => {
            if !authed {
                return Some("kind 450 is only served to group members and admins".to_string());
            }
            let groups = tag('h')?;
            for g in groups {
                match registry::is_gated(state, g) {
                    // Unknown yet: a bootstrap may create it while the subscription is live.
                    Ok(false) | Err(_) => return None,
                    Ok(true) => {
                        if group_participant(gw, viewer, g, state) {
                            return None;
                        }
                    }
                }
            }
            let first = groups.first().map(String::as_str).unwrap_or("");
            Some(format!(
                "kind 450 of group {} is only served to its members and admins",
                short(first)
            ))
        }
        443 | 30443 => (!any_reader(gw, viewer))
            .then(|| "keypackages are only served to authenticated users".to_string()),
        _ => None,
    }
}
