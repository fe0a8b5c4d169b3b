//! One module per gateway kind family; each owns its kinds' whole rule: what is accepted and
//! the refusal wording, who may read it (its part of the visibility rule, the REQ pre-check
//! and how a read is scoped to it), the state keys it keeps, and how long it is kept.
//!
//! | module             | kinds        | state keys                         |
//! |--------------------|--------------|------------------------------------|
//! | `keypackage.rs`    | 443 / 30443  | `kp/`, `kr/`, `ka/`, `rk/`         |
//! | `keypackage/claims.rs` | 443 / 30443 claims (§5) | `rf/`, claim fields of `kp/` |
//! | `giftwrap.rs`      | 1059, 444    | membership through `registry`      |
//! | `group_message.rs` | 445          | `rg/`, `o/` and `last_epoch` through `registry` |
//! | `noise_dm.rs`      | 446          | none                               |
//! | `roster.rs`        | 450          | membership through `registry`      |
//!
//! Every other kind (10050 / 10051 / 10002 relay lists included) follows plain Nostr rules:
//! accepted, served to anyone, kept until its NIP-40 expiration. The dispatch on the kind
//! number is in `lib.rs` (admission) and `visibility.rs` (reads), nowhere else.
//!
//! Retention counts from **receipt**, not `created_at`: gift wraps are backdated on purpose,
//! so `created_at` would expire them early. A NIP-40 `expiration` always applies on top
//! (whichever comes first); the helpers below are what the families share.

pub(crate) mod giftwrap;
pub(crate) mod group_message;
pub(crate) mod keypackage;
pub(crate) mod noise_dm;
pub(crate) mod roster;

use crate::config::GatewayConfig;

/// `at`, or the NIP-40 expiration if earlier.
pub(crate) fn earliest(at: u64, nip40: Option<u64>) -> Option<u64> {
    Some(nip40.map_or(at, |e| e.min(at)))
}

/// The message archive (445 and 446): receipt + `message_archive_ttl_days` (0 = no archive
/// time limit).
pub(crate) fn archive_expiry(
    cfg: &GatewayConfig,
    received_at: u64,
    nip40: Option<u64>,
) -> Option<u64> {
    match cfg.message_archive_ttl_days {
        0 => nip40,
        days => earliest(
            received_at.saturating_add(days.saturating_mul(86_400)),
            nip40,
        ),
    }
}

/// The retention figures for NIP-11.
pub(crate) fn describe_retention(cfg: &GatewayConfig) -> serde_json::Value {
    serde_json::json!({
        "keypackage_ttl": cfg.keypackage_ttl,
        "keypackage_max_ttl": cfg.keypackage_max_ttl,
        "welcome_ttl": cfg.welcome_ttl,
        "giftwrap_max_backdate": cfg.giftwrap_max_backdate,
        "message_archive": cfg.enable_message_archive,
        "message_archive_ttl_days": cfg.message_archive_ttl_days,
        "counted_from": "receipt",
    })
}

/// A `Filter` like `f` for one kind only (a read scoped per kind family).
pub(crate) fn with_kind(f: &mls_proto::Filter, kind: u16) -> mls_proto::Filter {
    mls_proto::Filter {
        kinds: Some(vec![kind]),
        ..f.clone()
    }
}

/// The viewer's pubkeys as hex, narrowed to the filter's `#p` when it has one (a reader reads
/// its own mailbox).
pub(crate) fn own_p(viewer: &crate::Viewer, f: &mls_proto::Filter) -> Vec<String> {
    viewer
        .authed
        .iter()
        .map(mls_proto::Hex32::to_hex)
        .filter(|pk| f.tags.get(&'p').is_none_or(|ps| ps.contains(pk)))
        .collect()
}

/// Does a `#p` of the filter name only others (not one of the viewer's pubkeys)?
pub(crate) fn p_names_only_others(viewer: &crate::Viewer, f: &mls_proto::Filter) -> bool {
    f.tags.get(&'p').is_some_and(|ps| {
        !ps.iter()
            .filter_map(|v| mls_proto::Hex32::from_hex(v))
            .any(|pk| viewer.authed.contains(&pk))
    })
}

/// A read of a group kind by `#h`, narrowed to the groups `readable` keeps (none: no query).
pub(crate) fn scope_by_h(
    f: &mls_proto::Filter,
    kind: u16,
    readable: impl Fn(&str) -> bool,
) -> Vec<mls_proto::Filter> {
    let groups: Vec<String> = f
        .tags
        .get(&'h')
        .into_iter()
        .flatten()
        .filter(|g| readable(g))
        .cloned()
        .collect();
    if groups.is_empty() {
        return Vec::new();
    }
    let mut g = with_kind(f, kind);
    g.tags.insert('h', groups);
    vec![g]
}

/// The only `h` of an event; `None` when it has none or several.
pub(crate) fn only_h(ev: &mls_proto::Event) -> Option<&str> {
    let mut hs = ev.tag_values("h");
    match (hs.next(), hs.next()) {
        (Some(h), None) => Some(h),
        _ => None,
    }
}

/// The `p` values of an event that are pubkeys.
pub(crate) fn p_pubkeys(ev: &mls_proto::Event) -> Vec<mls_proto::Hex32> {
    ev.tag_values("p")
        .filter_map(mls_proto::Hex32::from_hex)
        .collect()
}

#[cfg(test)]
mod tests;
