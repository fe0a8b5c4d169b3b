//! Group records and membership (PROTOCOL §4): the one path every membership source takes
//! (roster 450, gift wraps, the admin API), always inside the caller's transaction.
//!
//! A group exists in the registry only once its membership is known; existence is what makes
//! it *gated*. Roles are rows (`m/{group}/{pubkey}`) so that visibility checks are one key
//! lookup, and metadata (name, owner, counts, last epoch, last roster seq) is one record.
//! Changes are computed in memory first and written at the end, so a refused change writes
//! nothing even if the store did not discard partial writes.
//!
//! State keys (see `state.rs` for the whole namespace): `g/{hex(group)}` metadata,
//! `m/{hex(group)}/{pubkey}` roles, `mg/{pubkey}/{hex(group)}` the same roles by pubkey,
//! `v/member-groups` once those are built, `o/{hex(group)}` a group served open.
//!
//! The kind rules that change membership call in here: `kinds::roster` (450),
//! `kinds::giftwrap` (1059 with `h`), `kinds::group_message` (445: served open, `last_epoch`);
//! and the admin API ([`apply_admin_change`]).

use crate::config::MembershipSource;
use crate::dialect::{invalid, short, RosterOp};
use crate::state::{get_json, put_json, scan, store_err};
use crate::Gateway;
use mls_proto::Hex32;
use mls_store::{Rejection, StateRead, StateWrite, StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Role bits of a membership row.
pub(crate) const MEMBER: u8 = 1;
pub(crate) const ADMIN: u8 = 2;

/// Longest group id (`h` value) and display name accepted, in bytes.
pub(crate) use crate::state::MAX_GROUP_ID;
pub(crate) const MAX_NAME: usize = 256;

pub(crate) fn group_key(group: &str) -> Vec<u8> {
    format!("g/{}", mls_proto::to_lower_hex(group.as_bytes())).into_bytes()
}

/// Written once, with the first 445 accepted while the group had no known membership (read
/// before write: not one write per 445). Never removed: a group once used open stays
/// protected from a stranger's bootstrap (PROTOCOL §4).
pub(crate) fn served_open_key(group: &str) -> Vec<u8> {
    format!("o/{}", mls_proto::to_lower_hex(group.as_bytes())).into_bytes()
}

pub(crate) fn member_prefix(group: &str) -> Vec<u8> {
    format!("m/{}/", mls_proto::to_lower_hex(group.as_bytes())).into_bytes()
}

/// `m/{hex(group)}/{hex(pk)}`, hex-encoded straight into the key: live fan-out builds one per
/// subscriber per event (through `participant`), where `format!` with `hex::encode` cost ~8% of
/// the relay's CPU.
pub(crate) fn member_key(group: &str, pk: &Hex32) -> Vec<u8> {
    let g = 2 + 2 * group.len();
    let mut key = vec![0u8; g + 1 + 64];
    key[..2].copy_from_slice(b"m/");
    hex::encode_to_slice(group, &mut key[2..g]).expect("sized for the group id");
    key[g] = b'/';
    hex::encode_to_slice(pk.0, &mut key[g + 1..]).expect("sized for the pubkey");
    key
}

/// The `m/` rows again, keyed by pubkey first, so that a reader's groups are one prefix scan
/// (a read's scope names them; see `visibility::read_scope`).
pub(crate) fn member_group_key(pk: &Hex32, group: &str) -> Vec<u8> {
    format!("mg/{pk}/{}", mls_proto::to_lower_hex(group.as_bytes())).into_bytes()
}

pub(crate) fn member_group_prefix(pk: &Hex32) -> Vec<u8> {
    format!("mg/{pk}/").into_bytes()
}

/// Present once every `m/` row has its `mg/` row: written with a store's first group, or, for
/// stores written before `mg/` existed, by a one-time chunked walk at start-up; until then a
/// read's scope holds every group.
pub(crate) const MEMBER_GROUPS_BUILT: &[u8] = b"v/member-groups";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GroupMeta {
    pub group_id: String,
    pub display_name: Option<String>,
    pub owner: Option<Hex32>,
    pub member_count: u64,
    pub admin_count: u64,
    pub last_epoch: Option<u64>,
    pub last_seq: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
    /// The admin API has changed the group's membership (absent from older records).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api_managed: bool,
}

impl GroupMeta {
    /// A roster (450) or an admin API change has been accepted for the group: admins manage
    /// its membership, and gift wraps no longer change it (else a member's wrap could
    /// re-admit someone an admin removed).
    pub(crate) fn roster_managed(&self) -> bool {
        self.last_seq.is_some() || self.api_managed
    }
}

/// A group as the registry knows it (for REST and the admin API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub group_id: String,
    pub display_name: Option<String>,
    pub owner: Option<Hex32>,
    pub admins: Vec<Hex32>,
    pub members: Vec<Hex32>,
    pub member_count: u64,
    /// Largest `k` seen on a 445 (never goes backwards).
    pub last_epoch: Option<u64>,
    /// Last accepted roster (450) `seq`; the next must be greater.
    pub last_seq: Option<u64>,
    pub created_at: u64,
    pub updated_at: u64,
}

impl GroupRecord {
    /// The public shape of `GET {api_prefix}/groups/{id}` (PROTOCOL §7).
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "group_id": self.group_id,
            "display_name": self.display_name,
            "member_count": self.member_count,
            "last_epoch": self.last_epoch,
            "created_at": self.created_at,
        })
    }
}

/// A membership change requested through the admin API (source `api`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChange {
    pub group_id: String,
    /// `add` / `remove` change members, `promote` / `demote` change admins, `replace` sets
    /// the member list. `bootstrap` is a roster-only operation and is refused here.
    pub op: RosterOp,
    pub pubkeys: Vec<Hex32>,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The administrator making the change; recorded as owner if the change creates the group.
    #[serde(default)]
    pub actor: Option<Hex32>,
}

pub(crate) fn validate_group_id(group: &str) -> Result<(), Rejection> {
    if group.is_empty() || group.len() > MAX_GROUP_ID {
        return Err(invalid(format!(
            "group id (h tag) must be 1 to {MAX_GROUP_ID} bytes"
        )));
    }
    Ok(())
}

pub(crate) fn validate_name(name: &str) -> Result<(), Rejection> {
    if name.len() > MAX_NAME {
        return Err(invalid(format!(
            "group display name longer than {MAX_NAME} bytes"
        )));
    }
    Ok(())
}

/// True when the group's membership is known (it has a record): its 445s are members-only.
pub(crate) fn is_gated(state: &dyn StateRead, group: &str) -> StoreResult<bool> {
    Ok(state.get(&group_key(group))?.is_some())
}

/// True when a 445 was accepted for `group` while its membership was unknown (stored, or
/// delivered live when the archive is off): the group is in use by people the relay does not
/// know, so seeing its `h` must not let a stranger gate it (PROTOCOL §4).
pub(crate) fn served_open(state: &dyn StateRead, group: &str) -> StoreResult<bool> {
    Ok(state.get(&served_open_key(group))?.is_some())
}

/// Records that `group` was served open. Read before write: only the first open 445 writes,
/// so a busy group does not rewrite one key per message (a hot document on some backends).
pub(crate) fn mark_served_open(
    state: &mut dyn StateWrite,
    group: &str,
    now: u64,
) -> StoreResult<()> {
    let key = served_open_key(group);
    if state.get(&key)?.is_none() {
        state.put(&key, now.to_string().as_bytes())?;
    }
    Ok(())
}

/// May an event of `signers` turn the unknown `group` into a gated one (450 `bootstrap`, 1059
/// with `h`)? A fresh group id: first come, first served. A group served open: only a
/// configured admin (else its users would be locked out of their own history).
pub(crate) fn check_may_gate(
    gw: &Gateway,
    state: &dyn StateRead,
    group: &str,
    signers: &[Hex32],
    what: &str,
) -> Result<(), Rejection> {
    if signers.iter().any(|pk| gw.is_admin(pk)) || !served_open(state, group).map_err(store_err)? {
        return Ok(());
    }
    Err(Rejection(format!(
        "restricted: group {} is already in use (its messages were served open); a {what} may not gate it, only a configured admin (admin_pubkeys) or the admin API",
        short(group)
    )))
}

fn role_of(state: &dyn StateRead, group: &str, pk: &Hex32) -> StoreResult<u8> {
    Ok(state
        .get(&member_key(group, pk))?
        .and_then(|v| v.first().map(|b| b.wrapping_sub(b'0') & (MEMBER | ADMIN)))
        .unwrap_or(0))
}

/// The first of `pubkeys` that is a member or an admin of `group`.
pub(crate) fn participant(
    state: &dyn StateRead,
    group: &str,
    pubkeys: &[Hex32],
) -> StoreResult<Option<Hex32>> {
    for pk in pubkeys {
        if role_of(state, group, pk)? != 0 {
            return Ok(Some(*pk));
        }
    }
    Ok(None)
}

pub(crate) fn load_meta(state: &dyn StateRead, group: &str) -> StoreResult<Option<GroupMeta>> {
    get_json(state, &group_key(group))
}

/// Raises `last_epoch` to `epoch` (never lowers it).
pub(crate) fn record_epoch(
    state: &mut dyn StateWrite,
    mut meta: GroupMeta,
    epoch: u64,
    now: u64,
) -> StoreResult<()> {
    if meta.last_epoch.is_some_and(|e| e >= epoch) {
        return Ok(());
    }
    meta.last_epoch = Some(epoch);
    meta.updated_at = now;
    let key = group_key(&meta.group_id);
    put_json(state, &key, &meta)
}

/// A group loaded for a change: metadata and every role, plus the roles as they were so that
/// saving writes only the rows that changed.
pub(crate) struct Group {
    pub meta: GroupMeta,
    pub roles: BTreeMap<Hex32, u8>,
    before: BTreeMap<Hex32, u8>,
}

impl Group {
    pub(crate) fn load(state: &dyn StateRead, group: &str) -> StoreResult<Option<Group>> {
        let Some(meta) = load_meta(state, group)? else {
            return Ok(None);
        };
        let prefix = member_prefix(group);
        let mut roles = BTreeMap::new();
        for (k, v) in scan(state, &prefix)? {
            let pk = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(Hex32::from_hex)
                .ok_or_else(|| StoreError::Corrupt(format!("{}", String::from_utf8_lossy(&k))))?;
            let role = v
                .first()
                .map_or(0, |b| b.wrapping_sub(b'0') & (MEMBER | ADMIN));
            if role != 0 {
                roles.insert(pk, role);
            }
        }
        Ok(Some(Group {
            meta,
            before: roles.clone(),
            roles,
        }))
    }

    /// A group the registry does not know yet (nothing is written until [`Group::save`]).
    pub(crate) fn create(group: &str, owner: Option<Hex32>, now: u64) -> Group {
        Group {
            meta: GroupMeta {
                group_id: group.to_string(),
                display_name: None,
                owner,
                member_count: 0,
                admin_count: 0,
                last_epoch: None,
                last_seq: None,
                created_at: now,
                updated_at: now,
                api_managed: false,
            },
            roles: BTreeMap::new(),
            before: BTreeMap::new(),
        }
    }

    pub(crate) fn role(&self, pk: &Hex32) -> u8 {
        self.roles.get(pk).copied().unwrap_or(0)
    }

    fn set(&mut self, pk: Hex32, role: u8) {
        if role == 0 {
            self.roles.remove(&pk);
        } else {
            self.roles.insert(pk, role);
        }
    }

    /// Applies one roster operation in memory. `bootstrap` resets the roster: `signer` becomes
    /// owner, admin and member, `targets` members. `remove` takes every role away; `promote`
    /// makes an admin (and member); `demote` keeps membership; `replace` sets the member list
    /// exactly (admin roles are kept).
    pub(crate) fn apply(&mut self, op: RosterOp, signer: Option<Hex32>, targets: &[Hex32]) {
        match op {
            RosterOp::Bootstrap => {
                self.roles.clear();
                for t in targets {
                    self.set(*t, MEMBER);
                }
                if let Some(s) = signer {
                    self.set(s, MEMBER | ADMIN);
                    self.meta.owner = Some(s);
                }
            }
            RosterOp::Add => {
                for t in targets {
                    self.set(*t, self.role(t) | MEMBER);
                }
            }
            RosterOp::Remove => {
                for t in targets {
                    self.set(*t, 0);
                }
            }
            RosterOp::Promote => {
                for t in targets {
                    self.set(*t, MEMBER | ADMIN);
                }
            }
            RosterOp::Demote => {
                for t in targets {
                    self.set(*t, self.role(t) & !ADMIN);
                }
            }
            RosterOp::Replace => {
                let all: Vec<Hex32> = self.roles.keys().copied().collect();
                for pk in all {
                    self.set(pk, self.role(&pk) & !MEMBER);
                }
                for t in targets {
                    self.set(*t, self.role(t) | MEMBER);
                }
            }
        }
    }

    pub(crate) fn admin_count(&self) -> usize {
        self.roles.values().filter(|r| *r & ADMIN != 0).count()
    }

    pub(crate) fn record(&self) -> GroupRecord {
        let pick = |bit: u8| -> Vec<Hex32> {
            self.roles
                .iter()
                .filter(|(_, r)| **r & bit != 0)
                .map(|(pk, _)| *pk)
                .collect()
        };
        let members = pick(MEMBER);
        GroupRecord {
            group_id: self.meta.group_id.clone(),
            display_name: self.meta.display_name.clone(),
            owner: self.meta.owner,
            admins: pick(ADMIN),
            member_count: members.len() as u64,
            members,
            last_epoch: self.meta.last_epoch,
            last_seq: self.meta.last_seq,
            created_at: self.meta.created_at,
            updated_at: self.meta.updated_at,
        }
    }

    /// Writes the metadata and every role row that changed; returns the new record.
    pub(crate) fn save(mut self, state: &mut dyn StateWrite, now: u64) -> StoreResult<GroupRecord> {
        let group = self.meta.group_id.clone();
        // The first membership row of a store: every row from now on comes with its by-pubkey
        // row, so the store is born with them built.
        if state.get(MEMBER_GROUPS_BUILT)?.is_none() && !any_member_row(state)? {
            state.put(MEMBER_GROUPS_BUILT, b"1")?;
        }
        for (pk, old) in &self.before {
            if !self.roles.contains_key(pk) && *old != 0 {
                state.delete(&member_key(&group, pk))?;
                state.delete(&member_group_key(pk, &group))?;
            }
        }
        for (pk, role) in &self.roles {
            if self.before.get(pk) != Some(role) {
                state.put(&member_key(&group, pk), &[b'0' + role])?;
                state.put(&member_group_key(pk, &group), &[b'0' + role])?;
            }
        }
        self.meta.member_count = self.roles.values().filter(|r| *r & MEMBER != 0).count() as u64;
        self.meta.admin_count = self.admin_count() as u64;
        self.meta.updated_at = now;
        put_json(state, &group_key(&group), &self.meta)?;
        Ok(self.record())
    }
}

/// The groups any of `pubkeys` is a member or admin of, from the `mg/` rows; `None` when
/// there are more than `max`, or the rows are not built yet (`v/member-groups` absent).
pub(crate) fn groups_of(
    state: &dyn StateRead,
    pubkeys: &[Hex32],
    max: usize,
) -> StoreResult<Option<Vec<String>>> {
    if state.get(MEMBER_GROUPS_BUILT)?.is_none() {
        return Ok(None);
    }
    let mut groups = Vec::new();
    let mut bad = None;
    for pk in pubkeys {
        let prefix = member_group_prefix(pk);
        state.scan_prefix(&prefix, &mut |k, v| {
            if v.first()
                .map_or(0, |b| b.wrapping_sub(b'0') & (MEMBER | ADMIN))
                == 0
            {
                return true;
            }
            match hex::decode(&k[prefix.len()..])
                .ok()
                .and_then(|g| String::from_utf8(g).ok())
            {
                Some(g) => groups.push(g),
                None => bad = Some(String::from_utf8_lossy(k).into_owned()),
            }
            bad.is_none() && groups.len() <= max
        })?;
        if let Some(key) = bad {
            return Err(StoreError::Corrupt(key));
        }
        if groups.len() > max {
            return Ok(None);
        }
    }
    groups.sort_unstable();
    groups.dedup();
    Ok(Some(groups))
}

fn any_member_row(state: &dyn StateRead) -> StoreResult<bool> {
    let mut found = false;
    state.scan_prefix(b"m/", &mut |_, _| {
        found = true;
        false
    })?;
    Ok(found)
}

/// Where the one-time build of the `mg/` rows stands: the `m/` key to resume at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberGroupsBuild {
    resume: Option<Vec<u8>>,
    done: bool,
    /// Rows written so far.
    pub written: u64,
}

impl MemberGroupsBuild {
    pub fn done(&self) -> bool {
        self.done
    }
}

/// One chunk of the build: looks at no more than `max_keys` `m/` rows, writes their `mg/`
/// rows, and once the walk is through, the marker that says so. Nothing to do when the
/// marker is already there (a store written by this version has it from its first group), nor
/// when there is no row at all (then the first group writes it: an empty store stays empty,
/// and a backup can still be imported into it).
pub(crate) fn build_member_groups_chunk(
    state: &mut dyn StateWrite,
    progress: &mut MemberGroupsBuild,
    max_keys: usize,
) -> StoreResult<()> {
    if progress.done {
        return Ok(());
    }
    if state.get(MEMBER_GROUPS_BUILT)?.is_some() {
        progress.done = true;
        return Ok(());
    }
    let prefix = b"m/".to_vec();
    let from = progress.resume.clone().unwrap_or_else(|| prefix.clone());
    let mut rows: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    state.scan_prefix_from(&prefix, &from, &mut |k, v| {
        rows.push((k.to_vec(), v.to_vec()));
        rows.len() <= max_keys.max(1)
    })?;
    let more = rows.len() > max_keys.max(1);
    if more {
        // The first key of the next chunk.
        progress.resume = rows.pop().map(|(k, _)| k);
    }
    for (k, v) in rows {
        // `m/{hex(group)}/{pubkey}`
        let parsed = std::str::from_utf8(&k[2..]).ok().and_then(|rest| {
            let (group, pk) = rest.rsplit_once('/')?;
            let group = String::from_utf8(hex::decode(group).ok()?).ok()?;
            Some((group, Hex32::from_hex(pk)?))
        });
        let Some((group, pk)) = parsed else {
            return Err(StoreError::Corrupt(
                String::from_utf8_lossy(&k).into_owned(),
            ));
        };
        state.put(&member_group_key(&pk, &group), &v)?;
        progress.written += 1;
    }
    if !more {
        if progress.written > 0 {
            state.put(MEMBER_GROUPS_BUILT, b"1")?;
        }
        progress.done = true;
    }
    Ok(())
}

pub(crate) fn load_record(state: &dyn StateRead, group: &str) -> StoreResult<Option<GroupRecord>> {
    Ok(Group::load(state, group)?.map(|g| g.record()))
}

pub(crate) fn list(state: &dyn StateRead) -> StoreResult<Vec<GroupRecord>> {
    let mut out = Vec::new();
    for (k, v) in scan(state, b"g/")? {
        let meta: GroupMeta = serde_json::from_slice(&v)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(&k))))?;
        if let Some(rec) = load_record(state, &meta.group_id)? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// The admin API's membership change: same registry path as a roster event, source `api`.
pub(crate) fn apply_admin_change(
    gw: &Gateway,
    change: &MembershipChange,
    now: u64,
    state: &mut dyn StateWrite,
) -> Result<GroupRecord, Rejection> {
    if !gw.source_enabled(MembershipSource::Api) {
        return Err(Rejection(
            "restricted: the api membership source is disabled (membership_sources)".into(),
        ));
    }
    validate_group_id(&change.group_id)?;
    if let Some(name) = &change.display_name {
        validate_name(name)?;
    }
    if change.op == RosterOp::Bootstrap {
        return Err(invalid(
            "bootstrap is a roster (kind 450) operation; use add or promote",
        ));
    }
    if change.pubkeys.is_empty() && change.op != RosterOp::Replace {
        return Err(invalid(format!(
            "{} needs at least one pubkey",
            change.op.as_str()
        )));
    }
    let mut group = match Group::load(state, &change.group_id).map_err(store_err)? {
        Some(g) => g,
        None if matches!(change.op, RosterOp::Remove | RosterOp::Demote) => {
            return Err(invalid(format!(
                "unknown group {}",
                short(&change.group_id)
            )))
        }
        None => Group::create(&change.group_id, change.actor, now),
    };
    group.apply(change.op, None, &change.pubkeys);
    if let Some(name) = &change.display_name {
        group.meta.display_name = Some(name.clone());
    }
    // Membership decided by an admin: gift wraps no longer change it (rule 5).
    group.meta.api_managed = true;
    group.save(state, now).map_err(store_err)
}

#[cfg(test)]
mod tests;
