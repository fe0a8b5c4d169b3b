//! Kind 445: MLS group messages (PROTOCOL §3 table, §4).
//!
//! Accepted when: exactly one `h`; non-empty content; if the group is *gated* (its membership
//! is known to the registry) the connection is authenticated as a member or admin; if it is
//! unknown, `unknown_groups` decides (`open` accepts, `deny` refuses); within
//! `max_group_messages_per_minute` per (group, publisher). A Loxation `k` raises the group's
//! `last_epoch` (never lowers it). The first 445 accepted for a group with no known membership
//! marks it *served open* (see `registry::check_may_gate`). Served to the gated group's members, or for an open group to
//! anyone who may read (see `visibility.rs`). Kept receipt + `message_archive_ttl_days`, or to
//! its NIP-40 expiration if earlier.
//!
//! The event's `pubkey` is never used: MDK signs every 445 with a fresh ephemeral key, so the
//! only identity that means anything is the connection's authenticated pubkeys.

use crate::config::UnknownGroups;
use crate::dialect::{short, MlsEvent};
use crate::registry;
use crate::retention;
use crate::state::{self, store_err, WindowCounter};
use crate::Gateway;
use mls_proto::{Event, Hex32};
use mls_store::{Admitted, Publisher, Rejection, StateWrite};

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
        return Err(Rejection(
            "invalid: kind 445 must have exactly one h tag".into(),
        ));
    };
    registry::validate_group_id(group)?;
    if ev.content.is_empty() {
        return Err(Rejection("invalid: kind 445 content is empty".into()));
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
        let counter = WindowCounter::read(
            state,
            state::group_rate_prefix(group, speaker.as_ref()),
            received_at,
            60,
        )
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
        expires_at: retention::archive(cfg, received_at, m.nip40),
        store: cfg.enable_message_archive,
    })
}
