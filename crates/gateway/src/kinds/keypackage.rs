//! Kinds 443 / 30443: KeyPackages (PROTOCOL §3 table, §5 directory): accept, audience (and
//! live delivery under claims), read pre-check, retention, deletion, the REST directory, and
//! its state (the keys below) with their purge. Claims (§5) are in `keypackage/claims.rs`.
//!
//! Accepted when: signed by the owner (a `p` tag, if any, equals the author; with auth on the
//! author is also authenticated on the connection); content non-empty and decoding per
//! `encoding` (base64, or hex when absent); a known ciphersuite; a key reference not used by
//! another event; an expiry in the future and within `keypackage_max_ttl`; within
//! `max_keypackages_per_hour` for the owner. Served to any authenticated user (anyone when auth
//! is off); with claims on, another owner's KeyPackage is not delivered live (only a stored
//! REQ hands it out, under the claim rules). Kept until its own expiry (`exp`, else NIP-40
//! `expiration`), else receipt + `keypackage_ttl`.
//!
//! Bookkeeping is one row per *key reference* (`kp/{owner}/{ref}`), not per event: MDK
//! dual-publishes the same KeyPackage as a 443 and a 30443 with the same `i`, and both must be
//! accepted, count once against the hourly cap, and be claimed together. A reference may
//! therefore be carried by at most one 443 and one 30443 address of the same owner; a 30443
//! replacing its own previous version keeps (or changes) its reference.
//!
//! | key                | value                                                  |
//! |--------------------|--------------------------------------------------------|
//! | `kp/{owner}/{ref}` | one KeyPackage (by key reference) and its events       |
//! | `kr/{ref}`         | owner of a key reference (uniqueness across owners)    |
//! | `ka/{owner}/{d}`   | current 30443 version of an address                    |
//! | `rk/{owner}/{hour}`| new KeyPackages of that owner in that hour             |
//!
//! References without a `kpr`/`i` tag are stored as `id:{event id}`.

use crate::config::GatewayConfig;
use crate::dialect::{ciphersuite_known, invalid, short, Encoding, MlsEvent};
use crate::state::{self, get_json, put_json, scan, store_err, WindowCounter};
use crate::visibility::Who;
use crate::{Gateway, Viewer};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use mls_proto::{Event, Hex32};
use mls_store::{Admitted, Publisher, Rejection, StateRead, StateWrite, StoreError, StoreResult};
use serde::{Deserialize, Serialize};

/// Standard alphabet, padding optional (clients differ on it; the bytes are what matter).
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Longest key reference accepted, in bytes (an MLS KeyPackageRef is 32 bytes = 64 hex).
const MAX_REFERENCE: usize = state::MAX_KEY_PART;

/// One event carrying a KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KpEvent {
    pub id: Hex32,
    pub kind: u16,
    pub created_at: u64,
    pub expires_at: u64,
    /// The `d` tag of a 30443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub d: Option<String>,
}

/// One KeyPackage (by key reference) of one owner, with the events that carry it and its claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KpRow {
    pub owner: Hex32,
    /// `None` when the events carried no `kpr`/`i` (the row is keyed by `id:{event id}`).
    pub key_reference: Option<String>,
    pub ciphersuite: u16,
    pub received_at: u64,
    pub events: Vec<KpEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<Hex32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_at: Option<u64>,
}

impl KpRow {
    pub(crate) fn expires_at(&self) -> u64 {
        self.events.iter().map(|e| e.expires_at).max().unwrap_or(0)
    }

    pub(crate) fn created_at(&self) -> u64 {
        self.events.iter().map(|e| e.created_at).max().unwrap_or(0)
    }

    pub(crate) fn live(&self, now: u64) -> bool {
        self.expires_at() > now
    }
}

/// The current version of a 30443 address (`ka/{owner}/{d}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AddressEntry {
    id: Hex32,
    created_at: u64,
    reference: String,
}

/// A KeyPackage in the REST directory listing (`GET {api_prefix}/keypackages?owner=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackageEntry {
    pub owner: Hex32,
    pub key_reference: Option<String>,
    /// `0x0001` form.
    pub ciphersuite: String,
    pub expires_at: u64,
    pub event_id: Hex32,
    pub kind: u16,
    pub created_at: u64,
}

pub(crate) mod claims;

/// Where the KeyPackage rows live (the state purge walks them).
pub(crate) const ROWS_PREFIX: &[u8] = b"kp/";
/// Where the hourly counters of new KeyPackages live.
pub(crate) const RATE_PREFIX: &[u8] = b"rk/";

pub(crate) fn rows_prefix(owner: &Hex32) -> Vec<u8> {
    format!("kp/{owner}/").into_bytes()
}

pub(crate) fn row_key(owner: &Hex32, reference: &str) -> Vec<u8> {
    format!("kp/{owner}/{reference}").into_bytes()
}

pub(crate) fn reference_key(reference: &str) -> Vec<u8> {
    format!("kr/{reference}").into_bytes()
}

pub(crate) fn address_key(owner: &Hex32, d: &str) -> Vec<u8> {
    format!("ka/{owner}/{d}").into_bytes()
}

pub(crate) fn rate_prefix(owner: &Hex32) -> Vec<u8> {
    format!("rk/{owner}/").into_bytes()
}

/// The KeyPackage's own expiry (already checked against `keypackage_max_ttl`), else receipt +
/// `keypackage_ttl`; a NIP-40 `expiration` if earlier.
pub(crate) fn expiry(
    cfg: &GatewayConfig,
    received_at: u64,
    expiry: Option<u64>,
    nip40: Option<u64>,
) -> u64 {
    let own = expiry.unwrap_or(received_at.saturating_add(cfg.keypackage_ttl));
    nip40.map_or(own, |e| e.min(own))
}

/// Served to any reader (authenticated, when auth is on).
pub(crate) fn audience() -> Who<'static> {
    Who::Readers
}

/// With claims on, another owner's KeyPackage is pushed live only to its owner: a live push
/// would hand it out without the claim rules of PROTOCOL §5 (a stored REQ serves and claims
/// it).
pub(crate) fn live_owner(gw: &Gateway, ev: &Event) -> Option<Hex32> {
    gw.config().keypackage_claims.then_some(ev.pubkey)
}

/// The REQ pre-check: refused when the viewer may not read KeyPackages at all.
pub(crate) fn read_refusal(gw: &Gateway, viewer: &Viewer) -> Option<String> {
    (!crate::visibility::any_reader(gw, viewer))
        .then(|| "keypackages are only served to authenticated users".to_string())
}

/// The row key of an event's KeyPackage: its key reference, or `id:{event id}` without one.
fn reference_of(ev: &Event, m: &MlsEvent<'_>) -> String {
    m.key_reference
        .map(str::to_owned)
        .unwrap_or_else(|| format!("id:{}", ev.id))
}

/// Replaceable ordering (NIP-01): newer `created_at`, ties to the lowest id.
fn supersedes(ev: &Event, cur: &AddressEntry) -> bool {
    ev.created_at > cur.created_at || (ev.created_at == cur.created_at && ev.id < cur.id)
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
    let owner = ev.pubkey;

    // Signed by the owner; with auth on, the owner is also the one on the connection.
    if gw.auth_enabled() && !publisher.operator && !publisher.authed.contains(&owner) {
        return Err(Rejection(if publisher.authed.is_empty() {
            "auth-required: keypackages are accepted only from their authenticated owner".into()
        } else {
            "restricted: keypackage author is not authenticated on this connection".into()
        }));
    }
    if m.recipients.iter().any(|p| *p != owner) {
        return Err(invalid("keypackage owner tag does not match author"));
    }

    // Content: non-empty and decoding per `encoding`.
    if ev.content.is_empty() {
        return Err(invalid("keypackage content is empty"));
    }
    let decoded = match m.encoding {
        Encoding::Base64 => BASE64.decode(ev.content.trim()).is_ok(),
        Encoding::Hex => hex::decode(ev.content.trim()).is_ok(),
    };
    if !decoded {
        return Err(invalid(match m.encoding {
            Encoding::Base64 => "keypackage content is not valid base64 (encoding tag)",
            Encoding::Hex => "keypackage content is not valid hex (no encoding tag means hex)",
        }));
    }

    // Ciphersuite known.
    let ciphersuite = match m.ciphersuite {
        None => {
            return Err(invalid(
                "keypackage has no ciphersuite tag (mls_ciphersuite / cs / ciphersuite)",
            ))
        }
        Some((_, Some(id))) if ciphersuite_known(id) => id,
        Some((raw, _)) => return Err(invalid(format!("unknown ciphersuite {raw:?}"))),
    };

    // Expiry in the future and not beyond keypackage_max_ttl.
    if let Some(exp) = m.expiry {
        if exp <= received_at {
            return Err(invalid("keypackage expiry is in the past"));
        }
        if exp > received_at.saturating_add(cfg.keypackage_max_ttl) {
            return Err(invalid(format!(
                "keypackage expiry is beyond keypackage_max_ttl ({}s)",
                cfg.keypackage_max_ttl
            )));
        }
    }
    let expires_at = expiry(cfg, received_at, m.expiry, m.nip40);
    let admitted = Admitted {
        expires_at: Some(expires_at),
        store: true,
    };

    let reference = reference_of(ev, m);
    if reference.is_empty() || reference.len() > MAX_REFERENCE {
        return Err(invalid(format!(
            "key reference (kpr / i) must be 1 to {MAX_REFERENCE} bytes"
        )));
    }

    // A 30443 replacing an earlier version of its address.
    let d = (ev.kind == 30443).then(|| ev.d_tag().to_string());
    let mut replaced = None;
    if let Some(d) = &d {
        let current: Option<AddressEntry> =
            get_json(state, &address_key(&owner, d)).map_err(store_err)?;
        if let Some(cur) = current {
            if cur.id == ev.id || !supersedes(ev, &cur) {
                // The same event again, or an older version: the store answers it
                // (duplicate / refused as older) and the directory stays as it is.
                return Ok(admitted);
            }
            replaced = Some(cur);
        }
    }

    // Key reference not used by another event (expired KeyPackages no longer count).
    let own_row = row_key(&owner, &reference);
    if let Some(other) = reference_owner(state, &reference).map_err(store_err)? {
        if other != owner {
            let theirs: Option<KpRow> =
                get_json(state, &row_key(&other, &reference)).map_err(store_err)?;
            if theirs.is_some_and(|r| r.live(received_at)) {
                return Err(invalid(format!(
                    "key reference {} is already used by another event",
                    short(&reference)
                )));
            }
        }
    }
    let existing: Option<KpRow> = get_json::<KpRow>(state, &own_row)
        .map_err(store_err)?
        .filter(|r| r.live(received_at));
    if let Some(row) = &existing {
        if row.events.iter().any(|e| e.id == ev.id) {
            return Ok(admitted);
        }
        let clash = row
            .events
            .iter()
            .any(|e| e.kind == ev.kind && !matches!(&replaced, Some(r) if r.id == e.id));
        if clash {
            return Err(invalid(format!(
                "key reference {} is already used by another event",
                short(&reference)
            )));
        }
    }

    // Per-owner hourly cap, counted in new KeyPackages (a dual-published one counts once).
    let counter = if existing.is_none() {
        let c = WindowCounter::read(state, rate_prefix(&owner), received_at, 3600)
            .map_err(store_err)?;
        if c.exhausted(cfg.rate_limits.max_keypackages_per_hour) {
            return Err(Rejection(format!(
                "rate-limited: max_keypackages_per_hour reached ({})",
                cfg.rate_limits.max_keypackages_per_hour
            )));
        }
        Some(c)
    } else {
        None
    };

    // Every check passed: write.
    let mut row = existing.unwrap_or(KpRow {
        owner,
        key_reference: m.key_reference.map(str::to_owned),
        ciphersuite,
        received_at,
        events: Vec::new(),
        claimed_by: None,
        claimed_at: None,
    });
    if let Some(old) = &replaced {
        if old.reference == reference {
            row.events.retain(|e| e.id != old.id);
        } else {
            remove_event(state, &owner, &old.reference, &old.id).map_err(store_err)?;
        }
    }
    row.events.push(KpEvent {
        id: ev.id,
        kind: ev.kind,
        created_at: ev.created_at,
        expires_at,
        d: d.clone(),
    });
    (|| -> StoreResult<()> {
        put_json(state, &own_row, &row)?;
        state.put(&reference_key(&reference), owner.to_hex().as_bytes())?;
        if let Some(d) = &d {
            let entry = AddressEntry {
                id: ev.id,
                created_at: ev.created_at,
                reference: reference.clone(),
            };
            put_json(state, &address_key(&owner, d), &entry)?;
        }
        if let Some(c) = counter {
            c.bump(state)?;
        }
        Ok(())
    })()
    .map_err(store_err)?;
    Ok(admitted)
}

fn reference_owner(state: &dyn StateRead, reference: &str) -> StoreResult<Option<Hex32>> {
    Ok(state
        .get(&reference_key(reference))?
        .and_then(|v| std::str::from_utf8(&v).ok().and_then(Hex32::from_hex)))
}

/// Drops one event from a KeyPackage row; the row (and its reference) goes with its last event.
fn remove_event(
    state: &mut dyn StateWrite,
    owner: &Hex32,
    reference: &str,
    id: &Hex32,
) -> StoreResult<()> {
    let key = row_key(owner, reference);
    let Some(mut row) = get_json::<KpRow>(state, &key)? else {
        return Ok(());
    };
    row.events.retain(|e| e.id != *id);
    if row.events.is_empty() {
        delete_row(state, owner, reference)
    } else {
        put_json(state, &key, &row)
    }
}

fn delete_row(state: &mut dyn StateWrite, owner: &Hex32, reference: &str) -> StoreResult<()> {
    state.delete(&row_key(owner, reference))?;
    if reference_owner(state, reference)? == Some(*owner) {
        state.delete(&reference_key(reference))?;
    }
    Ok(())
}

/// A kind-5 deletion by a KeyPackage's owner takes it out of the directory (by `e` id or by
/// `30443:{owner}:{d}` address, the latter up to the deletion's `created_at`). Only the
/// deleter's own rows are touched, as NIP-09 allows.
pub(crate) fn on_deletion(ev: &Event, state: &mut dyn StateWrite) -> StoreResult<()> {
    let owner = ev.pubkey;
    let ids: Vec<Hex32> = ev.tag_values("e").filter_map(Hex32::from_hex).collect();
    if !ids.is_empty() {
        let prefix = rows_prefix(&owner);
        for (k, v) in scan(state, &prefix)? {
            let mut row: KpRow = serde_json::from_slice(&v).map_err(|e| {
                StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(&k)))
            })?;
            let gone: Vec<KpEvent> = row
                .events
                .iter()
                .filter(|e| ids.contains(&e.id))
                .cloned()
                .collect();
            if gone.is_empty() {
                continue;
            }
            row.events.retain(|e| !ids.contains(&e.id));
            let reference = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            if row.events.is_empty() {
                delete_row(state, &owner, &reference)?;
            } else {
                put_json(state, &k, &row)?;
            }
            for e in gone.iter().filter(|e| e.d.is_some()) {
                let akey = address_key(&owner, e.d.as_deref().unwrap_or(""));
                if get_json::<AddressEntry>(state, &akey)?.is_some_and(|a| a.id == e.id) {
                    state.delete(&akey)?;
                }
            }
        }
    }
    let own_address = format!("30443:{owner}:");
    for a in ev.tag_values("a") {
        let Some(d) = a.strip_prefix(&own_address) else {
            continue;
        };
        let akey = address_key(&owner, d);
        if let Some(cur) = get_json::<AddressEntry>(state, &akey)? {
            if cur.created_at <= ev.created_at {
                remove_event(state, &owner, &cur.reference, &cur.id)?;
                state.delete(&akey)?;
            }
        }
    }
    Ok(())
}

/// Every live KeyPackage row of `owner`, newest first.
pub(crate) fn rows_of(
    state: &dyn StateRead,
    owner: &Hex32,
    now: u64,
) -> StoreResult<Vec<(String, KpRow)>> {
    let prefix = rows_prefix(owner);
    let mut rows = Vec::new();
    for (k, v) in scan(state, &prefix)? {
        let row: KpRow = serde_json::from_slice(&v)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(&k))))?;
        if row.live(now) {
            rows.push((
                String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                row,
            ));
        }
    }
    rows.sort_by(|a, b| b.1.created_at().cmp(&a.1.created_at()).then(a.0.cmp(&b.0)));
    Ok(rows)
}

/// The REST directory of one owner: one entry per unexpired KeyPackage event, newest first.
pub(crate) fn entries_of(
    state: &dyn StateRead,
    owner: &Hex32,
    now: u64,
) -> StoreResult<Vec<KeyPackageEntry>> {
    let mut out: Vec<KeyPackageEntry> = rows_of(state, owner, now)?
        .into_iter()
        .flat_map(|(_, row)| {
            row.events
                .iter()
                .filter(|e| e.expires_at > now)
                .map(|e| KeyPackageEntry {
                    owner: row.owner,
                    key_reference: row.key_reference.clone(),
                    ciphersuite: format!("0x{:04x}", row.ciphersuite),
                    expires_at: e.expires_at,
                    event_id: e.id,
                    kind: e.kind,
                    created_at: e.created_at,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_by(|a, b| {
        b.created_at
            .cmp(&a.created_at)
            .then(a.event_id.cmp(&b.event_id))
    });
    Ok(out)
}

/// One `kp/{owner}/{ref}` row seen by the state purge (`purge.rs`): removed with its
/// reference and address entries once expired at `now`. Returns whether it was removed.
pub(crate) fn purge_row(
    state: &mut dyn StateWrite,
    key: &[u8],
    value: &[u8],
    now: u64,
) -> StoreResult<bool> {
    let Ok(row) = serde_json::from_slice::<KpRow>(value) else {
        return Ok(false);
    };
    if row.live(now) {
        return Ok(false);
    }
    let prefix = rows_prefix(&row.owner);
    let Some(reference) = key.strip_prefix(prefix.as_slice()) else {
        return Ok(false);
    };
    let reference = String::from_utf8_lossy(reference).into_owned();
    for e in &row.events {
        if let Some(d) = &e.d {
            let akey = address_key(&row.owner, d);
            if get_json::<AddressEntry>(state, &akey)?.is_some_and(|a| a.id == e.id) {
                state.delete(&akey)?;
            }
        }
    }
    delete_row(state, &row.owner, &reference)?;
    Ok(true)
}

#[cfg(test)]
mod tests;
