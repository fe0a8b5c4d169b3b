//! Kind 1059 (NIP-59 gift wrap, carrying Welcomes) and kind 444 (the Welcome rumor itself).
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

use crate::config::MembershipSource;
use crate::dialect::{short, MlsEvent, RosterOp};
use crate::registry::{self, Group};
use crate::retention;
use crate::state::store_err;
use crate::Gateway;
use mls_proto::Event;
use mls_store::{Admitted, Publisher, Rejection, StateWrite};

/// Kind 444 at top level.
pub(crate) fn refuse_rumor() -> Rejection {
    Rejection("invalid: kind 444 must be gift-wrapped".into())
}

/// Seconds of slack on `giftwrap_max_backdate` for clock skew and transit time.
pub const GIFTWRAP_CLOCK_GRACE: u64 = 600;

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
        return Err(Rejection(
            "invalid: kind 1059 must have at least one p tag".into(),
        ));
    }
    // The grace covers clock skew and transit: clients backdate up to exactly the maximum.
    let oldest = received_at.saturating_sub(cfg.giftwrap_max_backdate + GIFTWRAP_CLOCK_GRACE);
    // An operator's replay (import) brings wraps received long ago: freshness was checked then.
    if !publisher.operator && ev.created_at < oldest {
        return Err(Rejection(format!(
            "invalid: gift wrap created_at is more than giftwrap_max_backdate ({}s) in the past",
            cfg.giftwrap_max_backdate
        )));
    }
    if m.group_ids.len() > 1 {
        return Err(Rejection(
            "invalid: kind 1059 may have at most one h tag".into(),
        ));
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
        expires_at: retention::giftwrap(cfg, received_at, m.nip40),
        store: cfg.enable_message_archive,
    })
}
