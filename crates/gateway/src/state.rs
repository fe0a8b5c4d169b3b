//! The gateway's key/value layout in the store's state, and small typed helpers over it.
//!
//! Everything the rules remember lives here, in the same backend and transaction as the
//! events, so a rule and the state change it implies commit together (PROTOCOL §10).
//!
//! The whole namespace, by owner (each module builds its own keys):
//!
//! | key                                   | value                                              | owner |
//! |---------------------------------------|----------------------------------------------------|-------|
//! | `g/{hex(group)}`                      | group metadata JSON; its existence = group *gated* | `registry` |
//! | `m/{hex(group)}/{pubkey}`             | role: `1` member, `2` admin, `3` both              | `registry` |
//! | `mg/{pubkey}/{hex(group)}`            | the same role, by pubkey: the groups a reader reads | `registry` |
//! | `v/member-groups`                     | every `m/` row has its `mg/` row (built once)      | `registry` |
//! | `o/{hex(group)}`                      | the group was served open: receipt time of its first 445 | `registry` |
//! | `kp/{owner}/{ref}`                    | one KeyPackage (by key reference) and its events   | `kinds::keypackage` |
//! | `kr/{ref}`                            | owner of a key reference (uniqueness across owners)| `kinds::keypackage` |
//! | `ka/{owner}/{d}`                      | current 30443 version of an address                | `kinds::keypackage` |
//! | `rk/{owner}/{hour}`                   | new KeyPackages of that owner in that hour         | `kinds::keypackage` |
//! | `rf/{requester}/{owner}/{hour}`       | claimed fetches of that pair in that hour          | `kinds::keypackage::claims` |
//! | `rg/{hex(group)}/{publisher}/{minute}`| 445 count in that minute (`publisher` = `anon` when unauthenticated) | `kinds::group_message` |
//! | `nt/{token id}/{minute}`              | a single-use NIP-98 token, used; kept until that minute is over | here (`Gateway::use_token_once`) |
//!
//! Group ids are arbitrary strings from `h` tags (they may contain `/`), so they are
//! hex-encoded wherever they sit in the middle of a key; pubkeys are 64 hex characters.
//!
//! Keys are at most [`MAX_STATE_KEY_LEN`] bytes (what every backend holds), so the parts a
//! client chooses are bounded: group ids to [`MAX_GROUP_ID`] bytes, key references and 30443
//! `d` tags to [`MAX_KEY_PART`] bytes. Events over them are refused `invalid:` when normalised
//! (`dialect.rs`), before any rule builds a key. A new key holding such a part must fit too
//! (see the assertions below).
//!
//! Backups (`export`) carry every entry of this namespace as it is, in key order, whatever the
//! prefix: state added here travels with a backup and comes back with a restore.
//!
//! Rate counters are fixed windows kept in the state (not in memory): they survive restarts,
//! are shared by every instance on the same backend, and an increment made by a refused event
//! is discarded with the rest of its transaction. The price is one small write per accepted
//! 445 to the same key (a hot document on Firestore for very busy groups).

use mls_proto::Hex32;
use mls_store::{Rejection, StateRead, StateWrite, StoreError, StoreResult, MAX_STATE_KEY_LEN};
use serde::{de::DeserializeOwned, Serialize};
use std::collections::BTreeMap;

/// Longest group id (`h` value), in bytes. Hex-encoded it is twice as long, and the longest key
/// holding one, `rg/{hex(group)}/{pubkey}/{minute}`, must stay within [`MAX_STATE_KEY_LEN`].
pub const MAX_GROUP_ID: usize = 200;
/// Longest key reference (`kpr` / `i`) and 30443 `d`, in bytes (`kp/{owner}/{ref}`,
/// `ka/{owner}/{d}`).
pub const MAX_KEY_PART: usize = 256;

/// `rg/` + `/` + pubkey + `/` + a u64 window: what surrounds a group id in its longest key.
const GROUP_KEY_OVERHEAD: usize = 3 + 1 + 64 + 1 + 20;
const _: () = assert!(2 * MAX_GROUP_ID + GROUP_KEY_OVERHEAD <= MAX_STATE_KEY_LEN);
const _: () = assert!(3 + 64 + 1 + MAX_KEY_PART <= MAX_STATE_KEY_LEN);

/// Where used NIP-98 tokens live (the state purge walks them like counters).
pub(crate) const USED_TOKENS_PREFIX: &[u8] = b"nt/";

/// A used NIP-98 token's entries: `nt/{id}/{minute}` (purged like a counter of that minute).
pub(crate) fn used_token_prefix(id: &Hex32) -> Vec<u8> {
    format!("nt/{id}/").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{group_message, keypackage};
    use crate::registry::{group_key, member_group_key, member_key};

    #[test]
    fn keys_built_from_the_longest_client_parts_fit_every_backend() {
        let group = "g".repeat(MAX_GROUP_ID);
        let part = "r".repeat(MAX_KEY_PART);
        let pk = Hex32([0xab; 32]);
        let mut rate = group_message::rate_prefix(&group, Some(&pk));
        rate.extend_from_slice(u64::MAX.to_string().as_bytes());
        for key in [
            group_key(&group),
            member_key(&group, &pk),
            member_group_key(&pk, &group),
            rate,
            keypackage::row_key(&pk, &part),
            keypackage::reference_key(&part),
            keypackage::address_key(&pk, &part),
        ] {
            assert!(key.len() <= MAX_STATE_KEY_LEN, "{} bytes", key.len());
        }
    }
}

/// A storage failure inside a rule: refuse with `error:` (the client may retry).
pub(crate) fn store_err(e: StoreError) -> Rejection {
    Rejection(format!("error: {e}"))
}

pub(crate) fn get_json<T: DeserializeOwned>(
    state: &dyn StateRead,
    key: &[u8],
) -> StoreResult<Option<T>> {
    match state.get(key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(key)))),
    }
}

pub(crate) fn put_json<T: Serialize>(
    state: &mut dyn StateWrite,
    key: &[u8],
    value: &T,
) -> StoreResult<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Backend(e.to_string()))?;
    state.put(key, &bytes)
}

/// Every `(key, value)` under `prefix`, collected (so the caller may write afterwards).
pub(crate) fn scan(state: &dyn StateRead, prefix: &[u8]) -> StoreResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    state.scan_prefix(prefix, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok(out)
}

/// A fixed-window counter (`{prefix}{window}` → count), checked before any write and bumped
/// only once the whole event has passed its rules.
pub(crate) struct WindowCounter {
    prefix: Vec<u8>,
    window: u64,
    current: u64,
    stale: Vec<Vec<u8>>,
}

impl WindowCounter {
    /// Reads the counter for the window containing `now` (`width` seconds wide).
    pub(crate) fn read(
        state: &dyn StateRead,
        prefix: Vec<u8>,
        now: u64,
        width: u64,
    ) -> StoreResult<WindowCounter> {
        let window = now / width;
        let mut current = 0;
        let mut stale = Vec::new();
        for (k, v) in scan(state, &prefix)? {
            let suffix = std::str::from_utf8(&k[prefix.len()..]).ok();
            if suffix.and_then(|s| s.parse::<u64>().ok()) == Some(window) {
                current = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else {
                stale.push(k);
            }
        }
        Ok(WindowCounter {
            prefix,
            window,
            current,
            stale,
        })
    }

    /// True when one more would exceed `limit` (0 = unlimited).
    pub(crate) fn exhausted(&self, limit: u32) -> bool {
        limit != 0 && self.current >= u64::from(limit)
    }

    /// Counts one more and drops the counters of past windows.
    pub(crate) fn bump(self, state: &mut dyn StateWrite) -> StoreResult<()> {
        for k in &self.stale {
            state.delete(k)?;
        }
        let mut key = self.prefix;
        key.extend_from_slice(self.window.to_string().as_bytes());
        state.put(&key, (self.current + 1).to_string().as_bytes())
    }
}

/// An in-memory [`StateWrite`] (a sorted map). Not a database: it is what the rule tests run
/// on, and what a caller can use to exercise the rules without a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemState(pub BTreeMap<Vec<u8>, Vec<u8>>);

impl StateRead for MemState {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        for (k, v) in self.0.range(from.max(prefix).to_vec()..) {
            if !k.starts_with(prefix) || !f(k, v) {
                break;
            }
        }
        Ok(())
    }
}

impl StateWrite for MemState {
    fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.0.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> StoreResult<()> {
        self.0.remove(key);
        Ok(())
    }
}
