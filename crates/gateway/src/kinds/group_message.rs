//! Kind 445: MLS group messages (PROTOCOL §3 table, §4): accept, audience (and the read keys
//! it is stored with), read scope, retention, and its state: the per-minute rate counters
//! `rg/{hex(group)}/{publisher}/{minute}`, and through `registry` the served-open mark and the
//! group's `last_epoch`.
//!
//! Accepted when: exactly one `h`; non-empty content; if the group is *gated* (its membership
//! is known to the registry) the connection is authenticated as a member or admin; if it is
//! unknown, `unknown_groups` decides (`open` accepts, `deny` refuses); within
//! `max_group_messages_per_minute` per (group, publisher). A Loxation `k` raises the group's
//! `last_epoch` (never lowers it). The first 445 accepted for a group with no known membership
//! marks it *served open* (see `registry::check_may_gate`). Served to the gated group's
//! members and admins, or for an open group to anyone who may read; never refused by the REQ
//! pre-check (by `#h` the answer must not say whether a group exists: the stored query is
//! scoped to the groups the reader may read instead). Kept receipt +
//! `message_archive_ttl_days`, or to its NIP-40 expiration if earlier.
//!
//! The event's `pubkey` is never used: MDK signs every 445 with a fresh ephemeral key, so the
//! only identity that means anything is the connection's authenticated pubkeys.

use crate::config::UnknownGroups;
use crate::dialect::{invalid, short, MlsEvent};
use crate::registry;
use crate::state::{store_err, WindowCounter};
use crate::visibility::Who;
use crate::{Gateway, Viewer};
use mls_proto::{Event, Filter, Hex32};
use mls_store::{
    Admitted, Audience as StoredAudience, Publisher, ReadKey, Rejection, StateRead, StateWrite,
};

/// Where the per-minute counters of 445s live (`rg/{hex(group)}/{publisher}/{minute}`).
pub(crate) const RATE_PREFIX: &[u8] = b"rg/";

/// The counters of one (group, publisher) pair; `anon` when unauthenticated.
pub(crate) fn rate_prefix(group: &str, publisher: Option<&Hex32>) -> Vec<u8> {
    let who = publisher.map_or_else(|| "anon".to_string(), Hex32::to_hex);
    format!("rg/{}/{who}/", mls_proto::to_lower_hex(group.as_bytes())).into_bytes()
}

pub(crate) fn admit(
    gw: &Gateway,
    ev: &Event,
    m: &MlsEvent<'_>,
    publisher: &Publisher,
    received_at: u64,
    state: &mut dyn StateWrite,
) -> Result<Admitted, Rejection> {
    let cfg = gw.config();
    let [group] = m.group_ids[..] else {
        return Err(invalid("kind 445 must have exactly one h tag"));
    };
    registry::validate_group_id(group)?;
    if ev.content.is_empty() {
        return Err(invalid("kind 445 content is empty"));
    }

    let meta = registry::load_meta(state, group).map_err(store_err)?;
    // Which authenticated pubkey speaks for the publisher (for the rate counter).
    let speaker: Option<Hex32> = match &meta {
        Some(_) if publisher.operator => None,
        Some(_) => {
            if publisher.authed.is_empty() {
                return Err(Rejection(format!(
                    "auth-required: group {} is members-only; authenticate as a member",
                    short(group)
                )));
            }
            match registry::participant(state, group, &publisher.authed).map_err(store_err)? {
                Some(pk) => Some(pk),
                None => {
                    return Err(Rejection(format!(
                        "restricted: not a member of group {}",
                        short(group)
                    )))
                }
            }
        }
        None => {
            if cfg.unknown_groups == UnknownGroups::Deny {
                return Err(Rejection(format!(
                    "restricted: unknown group {} (unknown_groups = deny)",
                    short(group)
                )));
            }
            publisher.authed.first().copied()
        }
    };

    let limit = cfg.rate_limits.max_group_messages_per_minute;
    // 0 = unlimited: no counter to read or write on the hottest path.
    if limit > 0 {
        let counter =
            WindowCounter::read(state, rate_prefix(group, speaker.as_ref()), received_at, 60)
                .map_err(store_err)?;
        if counter.exhausted(limit) {
            return Err(Rejection(format!(
                "rate-limited: max_group_messages_per_minute reached ({limit}) in group {}",
                short(group)
            )));
        }
        counter.bump(state).map_err(store_err)?;
    }
    match meta {
        Some(meta) => {
            if let Some(epoch) = m.epoch {
                registry::record_epoch(state, meta, epoch, received_at).map_err(store_err)?;
            }
        }
        // Served open (stored or delivered live): from now on only a configured admin or the
        // admin API may gate this group.
        None => registry::mark_served_open(state, group, received_at).map_err(store_err)?,
    }
    Ok(Admitted {
        expires_at: super::archive_expiry(cfg, received_at, m.nip40),
        store: cfg.enable_message_archive,
    })
}

/// A gated group's 445 is served to its members and admins; an open (or unknown) group's to
/// any reader. No single `h`, or the group's state unreadable: nobody (fail closed).
pub(crate) fn audience<'e>(ev: &'e Event, state: &dyn StateRead) -> Who<'e> {
    match super::only_h(ev).map(|g| (g, registry::is_gated(state, g))) {
        Some((group, Ok(true))) => Who::Members {
            group,
            configured_admins: false,
        },
        Some((_, Ok(false))) => Who::Readers,
        None | Some((_, Err(_))) => Who::Nobody,
    }
}

/// The read keys a 445 is stored with. One stored while its group is open is read by any
/// reader *and* the group (an admin may gate the group later; `may_see` then hides it from
/// the others); a gated group never opens again (its record is never removed), so the group's
/// key alone serves its later 445s.
pub(crate) fn stored_audience(who: &Who<'_>, ev: &Event) -> Option<StoredAudience> {
    match who {
        Who::Readers => Some(StoredAudience::new(match super::only_h(ev) {
            Some(group) => vec![ReadKey::Readers, ReadKey::Group(group.to_string())],
            None => vec![ReadKey::Readers],
        })),
        _ => None,
    }
}

/// A read of 445s by `#h` keeps the groups the reader may read: open or unknown ones (open
/// traffic), and gated ones it is a member or admin of. A state error drops the group (fail
/// closed).
pub(crate) fn scope(viewer: &Viewer, f: &Filter, state: &dyn StateRead) -> Vec<Filter> {
    super::scope_by_h(f, 445, |group| match registry::is_gated(state, group) {
        Err(_) => false,
        Ok(false) => true,
        Ok(true) => registry::participant(state, group, &viewer.authed).is_ok_and(|p| p.is_some()),
    })
}

#[cfg(test)]
mod tests;
