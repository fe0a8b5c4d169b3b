//! How long each kind is kept (PROTOCOL §3 "kept until"), counted from **receipt**: gift wraps
//! are backdated on purpose, so `created_at` would expire them early. A NIP-40 `expiration`
//! always applies on top (whichever comes first).

use crate::config::GatewayConfig;

fn earliest(a: u64, nip40: Option<u64>) -> Option<u64> {
    Some(nip40.map_or(a, |e| e.min(a)))
}

/// 443 / 30443: the KeyPackage's own expiry (already checked against `keypackage_max_ttl`),
/// else receipt + `keypackage_ttl`.
pub(crate) fn keypackage(
    cfg: &GatewayConfig,
    received_at: u64,
    expiry: Option<u64>,
    nip40: Option<u64>,
) -> Option<u64> {
    earliest(
        expiry.unwrap_or(received_at.saturating_add(cfg.keypackage_ttl)),
        nip40,
    )
}

/// 1059: receipt + `welcome_ttl`.
pub(crate) fn giftwrap(cfg: &GatewayConfig, received_at: u64, nip40: Option<u64>) -> Option<u64> {
    earliest(received_at.saturating_add(cfg.welcome_ttl), nip40)
}

/// 445 / 446: receipt + `message_archive_ttl_days` (0 = no archive time limit).
pub(crate) fn archive(cfg: &GatewayConfig, received_at: u64, nip40: Option<u64>) -> Option<u64> {
    match cfg.message_archive_ttl_days {
        0 => nip40,
        days => earliest(
            received_at.saturating_add(days.saturating_mul(86_400)),
            nip40,
        ),
    }
}

/// 450 (kept while the group exists) and every other kind: NIP-40 only.
pub(crate) fn default(nip40: Option<u64>) -> Option<u64> {
    nip40
}

/// The retention figures for NIP-11.
pub(crate) fn describe(cfg: &GatewayConfig) -> serde_json::Value {
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
