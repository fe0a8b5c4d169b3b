//! Kind 1059 (NIP-59 gift wrap, carrying Welcomes) and kind 444 (the Welcome rumor itself):
//! accept, audience, read pre-check and scope, deletion by a recipient, retention. State: none
//! of its own; a wrap with `h` changes membership through `registry`.
//!
//! 444 is never accepted top-level: a Welcome travels sealed (13) inside a gift wrap, and a
//! bare one would expose who joins which group.
//!
//! 1059 is accepted when: at least one `p`; `created_at` no more than `giftwrap_max_backdate`
//! before receipt (NIP-59 backdates on purpose, bounded so that a wrap cannot pretend to be
//! arbitrarily old). Served only to connections authenticated as a `p` recipient; its sole
//! recipient may delete it (kind 5, see `Gateway::may_delete`). Kept receipt + `welcome_ttl`.
//!
//! Membership source `giftwrap` (PROTOCOL §4): a 1059 with an `h` published by an
//! authenticated connection makes its `p` recipients members of that group. If the group is
//! unknown, the publisher (its first authenticated pubkey) creates it and becomes owner, admin
//! and member, as a roster `bootstrap` would make it — unless the group has been served open
//! (445s accepted while its membership was unknown): then only a configured admin may gate it
//! (`restricted:` otherwise). If the group is known, the publisher must be a member or admin,
//! otherwise anyone authenticated could add themselves to any group; and once rosters (450) or
//! the admin API manage the group, the wrap is delivered but changes no membership: admins'
//! decisions win.

use crate::config::{GatewayConfig, MembershipSource};
use crate::dialect::{invalid, short, MlsEvent, RosterOp};
use crate::registry::{self, Group};
use crate::state::store_err;
use crate::visibility::Who;
use crate::{Gateway, Viewer};
use mls_proto::{Event, Filter, Hex32};
use mls_store::{Admitted, Publisher, Rejection, StateWrite};
use std::collections::BTreeSet;

/// Kind 444 at top level.
pub(crate) fn refuse_rumor() -> Rejection {
    invalid("kind 444 must be gift-wrapped")
}

/// Seconds of slack on `giftwrap_max_backdate` for clock skew and transit time.
pub(crate) const GIFTWRAP_CLOCK_GRACE: u64 = 600;

pub(crate) fn admit(
    gw: &Gateway,
    ev: &Event,
    m: &MlsEvent<'_>,
    publisher: &Publisher,
    received_at: u64,
    state: &mut dyn StateWrite,
) -> Result<Admitted, Rejection> {
    let cfg = gw.config();
    if m.recipients.is_empty() {
        return Err(invalid("kind 1059 must have at least one p tag"));
    }
    // The grace covers clock skew and transit: clients backdate up to exactly the maximum.
    let oldest = received_at.saturating_sub(cfg.giftwrap_max_backdate + GIFTWRAP_CLOCK_GRACE);
    // An operator's replay (import) brings wraps received long ago: freshness was checked then.
    if !publisher.operator && ev.created_at < oldest {
        return Err(invalid(format!(
            "gift wrap created_at is more than giftwrap_max_backdate ({}s) in the past",
            cfg.giftwrap_max_backdate
        )));
    }
    if m.group_ids.len() > 1 {
        return Err(invalid("kind 1059 may have at most one h tag"));
    }

    // An operator's replay does not know who published the wrap: it grants no membership.
    if let (Some(group), Some(first)) = (m.group_ids.first(), publisher.authed.first()) {
        if gw.source_enabled(MembershipSource::Giftwrap) && !publisher.operator {
            registry::validate_group_id(group)?;
            match Group::load(state, group).map_err(store_err)? {
                Some(mut g) => {
                    let inviter = registry::participant(state, group, &publisher.authed)
                        .map_err(store_err)?;
                    if inviter.is_none() {
                        return Err(Rejection(format!(
                            "restricted: not a member of group {}; only members may invite",
                            short(group)
                        )));
                    }
                    // Roster decisions win: a group managed by 450s takes its membership from
                    // them alone. The wrap (a Welcome) is still delivered to its recipients.
                    if !g.meta.roster_managed() {
                        g.apply(RosterOp::Add, None, &m.recipients);
                        g.save(state, received_at).map_err(store_err)?;
                    }
                }
                None => {
                    registry::check_may_gate(gw, state, group, &publisher.authed, "gift wrap")?;
                    // A group served open is gated here only by a configured admin: its owner.
                    let served_open = registry::served_open(state, group).map_err(store_err)?;
                    let owner = publisher
                        .authed
                        .iter()
                        .find(|pk| served_open && gw.is_admin(pk))
                        .unwrap_or(first);
                    let mut g = Group::create(group, Some(*owner), received_at);
                    g.apply(RosterOp::Bootstrap, Some(*owner), &m.recipients);
                    g.save(state, received_at).map_err(store_err)?;
                }
            }
        }
    }

    Ok(Admitted {
        expires_at: expiry(cfg, received_at, m.nip40),
        store: cfg.enable_message_archive,
    })
}

/// Kept receipt + `welcome_ttl`.
pub(crate) fn expiry(cfg: &GatewayConfig, received_at: u64, nip40: Option<u64>) -> Option<u64> {
    super::earliest(received_at.saturating_add(cfg.welcome_ttl), nip40)
}

/// Served to viewers authenticated as one of its `p` recipients (its author is a throwaway
/// key).
pub(crate) fn audience(ev: &Event) -> Who<'_> {
    Who::Pubkeys(super::p_pubkeys(ev))
}

/// A 444 is never stored, so never served.
pub(crate) fn rumor_audience() -> Who<'static> {
    Who::Nobody
}

/// Who reads a gift wrap: its distinct `p` recipients (a deletion by one of them is allowed
/// only when it is the sole reader, see `Gateway::may_delete`).
pub(crate) fn readers(ev: &Event) -> BTreeSet<Hex32> {
    super::p_pubkeys(ev).into_iter().collect()
}

/// The REQ pre-check. A `#p` naming only others is refused even though a multi-recipient wrap
/// could also name the viewer: a reader asks for its own mailbox, not someone else's.
pub(crate) fn read_refusal(viewer: &Viewer, f: &Filter) -> Option<String> {
    let refused = viewer.authed.is_empty() || super::p_names_only_others(viewer, f);
    refused.then(|| "kind 1059 is only served to its recipients".to_string())
}

/// A read of 1059s goes through the reader's own pubkeys (`#p` = its pubkeys, or the filter's
/// `#p` values that are its own).
pub(crate) fn scope(viewer: &Viewer, f: &Filter) -> Vec<Filter> {
    let own_p = super::own_p(viewer, f);
    if own_p.is_empty() {
        return Vec::new();
    }
    let mut g = super::with_kind(f, 1059);
    g.tags.insert('p', own_p);
    vec![g]
}

#[cfg(test)]
mod tests;
