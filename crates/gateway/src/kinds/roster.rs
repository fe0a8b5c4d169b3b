//! Kind 450: roster / policy events (Loxation), membership source `roster` (PROTOCOL §3, §4):
//! accept, audience, read pre-check and scope, retention. State: the group's roles, `last_seq`
//! and display name, through `registry`.
//!
//! Shape (see `dialect.rs`): `h` (one), `op` (bootstrap, add, remove, promote, demote,
//! replace), `seq` (decimal), `p` targets (for `replace` the new full member list; for
//! `bootstrap` the initial members besides the signer), optional `name` (display name).
//!
//! Accepted when: `seq` is strictly greater than the group's last (compared and stored in the
//! same transaction: no replay, no reordering); signed by an admin of the group or a configured
//! `admin_pubkeys` entry; `bootstrap` only for an unknown group that has not been served open
//! (no 445 accepted for it yet), or by a configured admin (who thereby resets the roster); the change leaves the group at least one admin. The signature
//! proves the signer; with auth on, the signer must also be authenticated on the connection.
//! Served to the group's members and admins (and configured admins, who need the last `seq`);
//! an unauthenticated REQ for 450s is refused `auth-required:`, an authenticated one by `#h`
//! is scoped to the groups it may read (never refused on a group's state, so the answer does
//! not say whether a group exists). Kept while the group exists (NIP-40 `expiration` still
//! applies).

use crate::config::MembershipSource;
use crate::dialect::{invalid, short, MlsEvent, RosterOp};
use crate::registry::{self, Group, ADMIN};
use crate::state::store_err;
use crate::visibility::{Audience, Who};
use crate::{Gateway, Viewer};
use mls_proto::{Event, Filter};
use mls_store::{Admitted, Publisher, Rejection, StateRead, StateWrite};

pub(crate) fn admit(
    gw: &Gateway,
    ev: &Event,
    m: &MlsEvent<'_>,
    publisher: &Publisher,
    received_at: u64,
    state: &mut dyn StateWrite,
) -> Result<Admitted, Rejection> {
    if !gw.source_enabled(MembershipSource::Roster) {
        return Err(Rejection(
            "restricted: the roster membership source is disabled (membership_sources)".into(),
        ));
    }
    let Some(fields) = &m.roster else {
        return Err(invalid("kind 450 is not a roster event"));
    };
    let [group] = m.group_ids[..] else {
        return Err(invalid("kind 450 must have exactly one h tag"));
    };
    registry::validate_group_id(group)?;
    let Some(op) = fields.op else {
        return Err(invalid(
            "kind 450 must have an op tag (bootstrap, add, remove, promote, demote, replace)",
        ));
    };
    let Some(seq) = fields.seq else {
        return Err(invalid("kind 450 must have a seq tag"));
    };
    if let Some(name) = &fields.name {
        registry::validate_name(name)?;
    }
    if op != RosterOp::Bootstrap && m.recipients.is_empty() {
        return Err(invalid(format!(
            "roster op {} needs at least one p tag",
            op.as_str()
        )));
    }

    let signer = ev.pubkey;
    if gw.auth_enabled() && !publisher.operator && !publisher.authed.contains(&signer) {
        return Err(Rejection(if publisher.authed.is_empty() {
            "auth-required: roster events are accepted only from their authenticated signer".into()
        } else {
            "restricted: roster signer is not authenticated on this connection".into()
        }));
    }

    let configured_admin = gw.is_admin(&signer);
    let mut g = match (Group::load(state, group).map_err(store_err)?, op) {
        (None, RosterOp::Bootstrap) => {
            // An operator's replay was checked when first accepted; events replay in
            // `created_at` order, which need not be the order they were accepted in.
            if !publisher.operator {
                registry::check_may_gate(gw, state, group, &[signer], "roster bootstrap")?;
            }
            Group::create(group, Some(signer), received_at)
        }
        (None, _) => {
            return Err(invalid(format!(
                "unknown group {}: roster op {} needs a bootstrap first",
                short(group),
                op.as_str()
            )))
        }
        (Some(g), RosterOp::Bootstrap) if configured_admin => g,
        (Some(_), RosterOp::Bootstrap) => {
            return Err(Rejection(format!(
            "restricted: group {} already exists; only a configured admin may bootstrap it again",
            short(group)
        )))
        }
        (Some(g), _) if configured_admin || g.role(&signer) & ADMIN != 0 => g,
        (Some(_), _) => {
            return Err(Rejection(format!(
                "restricted: roster signer is not an admin of group {}",
                short(group)
            )))
        }
    };
    if let Some(last) = g.meta.last_seq {
        if seq <= last {
            return Err(Rejection(format!(
                "blocked: roster seq must be greater than {last}"
            )));
        }
    }

    let bootstrap_signer = (op == RosterOp::Bootstrap).then_some(signer);
    g.apply(op, bootstrap_signer, &m.recipients);
    if g.admin_count() == 0 {
        return Err(invalid(format!(
            "roster op {} would leave group {} without an admin",
            op.as_str(),
            short(group)
        )));
    }
    if let Some(name) = &fields.name {
        g.meta.display_name = Some(name.clone());
    }
    g.meta.last_seq = Some(seq);
    g.save(state, received_at).map_err(store_err)?;
    Ok(Admitted {
        expires_at: m.nip40,
        store: true,
    })
}

/// Served to the group's members and admins, and to configured admins. No single `h`: nobody.
pub(crate) fn audience(ev: &Event) -> Who<'_> {
    match super::only_h(ev) {
        Some(group) => Who::Members {
            group,
            configured_admins: true,
        },
        None => Who::Nobody,
    }
}

/// The REQ pre-check: only unauthenticated reads are refused (see the module doc).
pub(crate) fn read_refusal(viewer: &Viewer) -> Option<String> {
    viewer
        .authed
        .is_empty()
        .then(|| "kind 450 is only served to group members and admins".into())
}

/// A read of 450s by `#h` keeps the groups the reader may read: open or unknown ones, gated
/// ones it is a member or admin of, every one for a configured admin. A state error drops
/// the group (fail closed).
pub(crate) fn scope(
    gw: &Gateway,
    viewer: &Viewer,
    f: &Filter,
    state: &dyn StateRead,
) -> Vec<Filter> {
    super::scope_by_h(f, 450, |group| match registry::is_gated(state, group) {
        Err(_) => false,
        Ok(false) => true,
        Ok(true) => Audience::of(
            gw,
            Who::Members {
                group,
                configured_admins: true,
            },
        )
        .admits(viewer, state),
    })
}

#[cfg(test)]
mod tests;
