//! One normalisation of the two wire dialects into one model ([`MlsEvent`]).
//!
//! Standard Marmot (MDK / White Noise) and Loxation spell the same facts differently
//! (`mls_ciphersuite` vs `cs`, `i` vs `kpr`, NIP-40 `expiration` vs `exp`, …). Every rule works
//! on the model, so a dialect difference is handled here and nowhere else. This module only
//! says what the tags *mean* and refuses tags that are malformed; whether a field is required
//! for a kind is the kind's rule (see `keypackage.rs`, `group_message.rs`, …).
//!
//! Kind 450 (Loxation roster) shape, decided here because PROTOCOL.md names only its tags:
//! `["h", group]` (one), `["op", bootstrap|add|remove|promote|demote|replace]` (one),
//! `["seq", decimal]` (one), `["p", pubkey]…` the targets (for `replace`: the new full member
//! list; for `bootstrap`: initial members besides the signer), optional `["name", display]`.
//! The content is not interpreted.

use crate::state::{MAX_GROUP_ID, MAX_KEY_PART};
use mls_proto::{Event, Hex32};
use mls_store::Rejection;
use serde::Serialize;

/// Which spelling an event uses (informational: rules never branch on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Marmot,
    Loxation,
}

/// RFC 9420 §17.1 cipher suites, by id and name.
pub const CIPHERSUITES: [(u16, &str); 7] = [
    (0x0001, "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519"),
    (0x0002, "MLS_128_DHKEMP256_AES128GCM_SHA256_P256"),
    (
        0x0003,
        "MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519",
    ),
    (0x0004, "MLS_256_DHKEMX448_AES256GCM_SHA512_Ed448"),
    (0x0005, "MLS_256_DHKEMP521_AES256GCM_SHA512_P521"),
    (0x0006, "MLS_256_DHKEMX448_CHACHA20POLY1305_SHA512_Ed448"),
    (0x0007, "MLS_256_DHKEMP384_AES256GCM_SHA384_P384"),
];

/// A ciphersuite tag value (`0x0001` or an RFC 9420 name) as an id; `None` if unrecognised.
pub fn ciphersuite_id(value: &str) -> Option<u16> {
    let v = value.trim();
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 4 {
            return None;
        }
        return u16::from_str_radix(hex, 16).ok();
    }
    CIPHERSUITES
        .iter()
        .find(|(_, name)| name.eq_ignore_ascii_case(v))
        .map(|(id, _)| *id)
}

/// True for the suites RFC 9420 defines.
pub fn ciphersuite_known(id: u16) -> bool {
    CIPHERSUITES.iter().any(|(i, _)| *i == id)
}

/// How a KeyPackage's content is encoded (`encoding` tag; hex when absent, as NIP-EE began).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Base64,
    Hex,
}

/// The roster operations of kind 450 (and of the admin API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RosterOp {
    Bootstrap,
    Add,
    Remove,
    Promote,
    Demote,
    Replace,
}

impl RosterOp {
    pub fn parse(s: &str) -> Option<RosterOp> {
        Some(match s {
            "bootstrap" => RosterOp::Bootstrap,
            "add" => RosterOp::Add,
            "remove" => RosterOp::Remove,
            "promote" => RosterOp::Promote,
            "demote" => RosterOp::Demote,
            "replace" => RosterOp::Replace,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RosterOp::Bootstrap => "bootstrap",
            RosterOp::Add => "add",
            RosterOp::Remove => "remove",
            RosterOp::Promote => "promote",
            RosterOp::Demote => "demote",
            RosterOp::Replace => "replace",
        }
    }
}

/// The roster fields of a 450 (each `None` when its tag is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterFields {
    pub op: Option<RosterOp>,
    pub seq: Option<u64>,
    pub name: Option<String>,
}

/// An event as the rules see it, whichever dialect it came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsEvent<'a> {
    pub kind: u16,
    pub dialect: Dialect,
    /// KeyPackages: the owner it names (`p`, Loxation) or else its author.
    pub owner: Option<Hex32>,
    /// KeyPackages: the ciphersuite tag's raw value and its id (when recognised).
    pub ciphersuite: Option<(&'a str, Option<u16>)>,
    /// KeyPackages: `kpr` (Loxation) or `i` (Marmot KeyPackageRef).
    pub key_reference: Option<&'a str>,
    /// KeyPackages: `exp` (Loxation), else NIP-40 `expiration`.
    pub expiry: Option<u64>,
    pub encoding: Encoding,
    /// Every `h` value (the kind's rule decides how many are allowed).
    pub group_ids: Vec<&'a str>,
    /// 445: `k` (Loxation epoch).
    pub epoch: Option<u64>,
    /// `p` values as pubkeys: recipients (446/1059), owner claims (443), targets (450).
    pub recipients: Vec<Hex32>,
    pub roster: Option<RosterFields>,
    /// NIP-40 `expiration`.
    pub nip40: Option<u64>,
}

/// The one `invalid:` refusal (NIP-01 prefix) every rule builds its malformed-event answers
/// with.
pub(crate) fn invalid(msg: impl std::fmt::Display) -> Rejection {
    Rejection(format!("invalid: {msg}"))
}

/// The value of the only tag `name`; more than one is malformed.
fn single<'a>(ev: &'a Event, name: &str) -> Result<Option<&'a str>, Rejection> {
    let mut it = ev.tag_values(name);
    let first = it.next();
    if it.next().is_some() {
        return Err(invalid(format!("more than one {name} tag")));
    }
    Ok(first)
}

fn number(ev: &Event, name: &str) -> Result<Option<u64>, Rejection> {
    single(ev, name)?
        .map(|v| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| invalid(format!("{name} tag must be an unsigned integer")))
        })
        .transpose()
}

fn pubkeys(ev: &Event) -> Result<Vec<Hex32>, Rejection> {
    ev.tag_values("p")
        .map(|v| {
            Hex32::from_hex(v)
                .ok_or_else(|| invalid("p tag must be a 64-character lowercase hex pubkey"))
        })
        .collect()
}

/// Normalises `ev`. Only the tags meaningful for its kind are read, so an unrelated kind is
/// never refused for a tag that happens to share a name.
pub fn normalize(ev: &Event) -> Result<MlsEvent<'_>, Rejection> {
    let nip40 = match single(ev, "expiration")? {
        None => None,
        Some(v) => Some(
            v.trim()
                .parse::<u64>()
                .map_err(|_| invalid("expiration tag must be an unsigned integer"))?,
        ),
    };
    let mut m = MlsEvent {
        kind: ev.kind,
        dialect: Dialect::Marmot,
        owner: None,
        ciphersuite: None,
        key_reference: None,
        expiry: None,
        encoding: Encoding::Hex,
        group_ids: Vec::new(),
        epoch: None,
        recipients: Vec::new(),
        roster: None,
        nip40,
    };
    match ev.kind {
        443 | 30443 => {
            if ev.has_tag("cs") || ev.has_tag("kpr") || ev.has_tag("exp") {
                m.dialect = Dialect::Loxation;
            }
            m.recipients = pubkeys(ev)?;
            m.owner = Some(m.recipients.first().copied().unwrap_or(ev.pubkey));
            let cs = match single(ev, "mls_ciphersuite")? {
                Some(v) => Some(v),
                None => match single(ev, "cs")? {
                    Some(v) => Some(v),
                    None => single(ev, "ciphersuite")?,
                },
            };
            m.ciphersuite = cs.map(|v| (v, ciphersuite_id(v)));
            m.key_reference = match single(ev, "kpr")? {
                Some(r) => Some(r),
                None => single(ev, "i")?,
            };
            m.expiry = match number(ev, "exp")? {
                Some(e) => Some(e),
                None => nip40,
            };
            m.encoding = match single(ev, "encoding")? {
                None | Some("hex") => Encoding::Hex,
                Some("base64") => Encoding::Base64,
                Some(other) => return Err(invalid(format!("unsupported encoding {other:?}"))),
            };
        }
        445 => {
            m.group_ids = ev.tag_values("h").collect();
            m.epoch = number(ev, "k")?;
            if m.epoch.is_some() {
                m.dialect = Dialect::Loxation;
            }
            // A Loxation `p` here is only a delivery hint: never a permission, not parsed.
        }
        446 => {
            m.dialect = Dialect::Loxation;
            m.recipients = pubkeys(ev)?;
        }
        1059 => {
            m.group_ids = ev.tag_values("h").collect();
            if !m.group_ids.is_empty() || ev.tag_value("v") == Some("gift.1") {
                m.dialect = Dialect::Loxation;
            }
            m.recipients = pubkeys(ev)?;
        }
        450 => {
            m.dialect = Dialect::Loxation;
            m.group_ids = ev.tag_values("h").collect();
            m.recipients = pubkeys(ev)?;
            let op = match single(ev, "op")? {
                None => None,
                Some(v) => Some(
                    RosterOp::parse(v)
                        .ok_or_else(|| invalid(format!("unknown roster op {v:?}")))?,
                ),
            };
            m.roster = Some(RosterFields {
                op,
                seq: number(ev, "seq")?,
                name: single(ev, "name")?.map(str::to_owned),
            });
        }
        _ => {}
    }
    check_key_parts(ev, &m)?;
    Ok(m)
}

/// The values that become parts of state keys are bounded (see `state.rs`), so no key built
/// from them can overflow the store: refused here, before any rule builds one.
fn check_key_parts(ev: &Event, m: &MlsEvent<'_>) -> Result<(), Rejection> {
    if let Some(g) = m.group_ids.iter().find(|g| g.len() > MAX_GROUP_ID) {
        return Err(invalid(format!(
            "group id (h tag) is {} bytes, the most is {MAX_GROUP_ID}",
            g.len()
        )));
    }
    if let Some(r) = m.key_reference.filter(|r| r.len() > MAX_KEY_PART) {
        return Err(invalid(format!(
            "key reference (kpr / i) is {} bytes, the most is {MAX_KEY_PART}",
            r.len()
        )));
    }
    if ev.kind == 30443 && ev.d_tag().len() > MAX_KEY_PART {
        return Err(invalid(format!(
            "keypackage d tag is {} bytes, the most is {MAX_KEY_PART}",
            ev.d_tag().len()
        )));
    }
    Ok(())
}

/// A group id (or key reference, event id) shortened for messages and logs: its first 8
/// characters and `…`. The one shortener of the workspace.
pub fn short(group: &str) -> String {
    match group.char_indices().nth(8) {
        Some((i, _)) => format!("{}…", &group[..i]),
        None => group.to_string(),
    }
}

#[cfg(test)]
mod tests;
