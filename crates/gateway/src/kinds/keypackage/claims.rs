//! KeyPackage claims (PROTOCOL §5, opt-in `keypackage_claims`).
//!
//! A KeyPackage handed to one inviter should not be handed to the next: when an authenticated
//! user fetches another owner's KeyPackages, the relay serves the newest unclaimed ones (at most
//! `max_keypackages_per_query` per owner), records them as claimed by that requester, and never
//! claims an owner's last unclaimed one (MLS "last resort": it is served, not claimed). A
//! requester gets back what it already claimed; KeyPackages claimed by someone else are
//! withheld. An unauthenticated reader (auth off) gets unclaimed ones only, within the same
//! per-owner budget, and claims nothing. Per requester/owner pair at most `max_keypackage_fetches_per_hour` fetches
//! (0 = unlimited); one call that returns any of an owner's KeyPackages is one fetch.
//!
//! Claims are made per key reference, so a dual-published 443 + 30443 is claimed as one.
//! Events are served unchanged: claiming only chooses which ones.
//!
//! State: the claim fields of the `kp/` rows (`keypackage.rs`), and the hourly fetch counters
//! `rf/{requester}/{owner}/{hour}`.

use super::{row_key, rows_of, KpRow};
use crate::state::{put_json, store_err, WindowCounter};
use crate::{Gateway, Viewer};
use mls_proto::{Event, Hex32};
use mls_store::{Rejection, StateWrite};
use std::collections::HashSet;

/// Where the hourly counters of claimed fetches live.
pub(crate) const FETCH_RATE_PREFIX: &[u8] = b"rf/";

pub(crate) fn fetch_rate_prefix(requester: &Hex32, owner: &Hex32) -> Vec<u8> {
    format!("rf/{requester}/{owner}/").into_bytes()
}

fn is_keypackage(kind: u16) -> bool {
    matches!(kind, 443 | 30443)
}

struct OwnerPlan {
    owner: Hex32,
    counter: WindowCounter,
    claim: Vec<(String, KpRow)>,
}

pub(crate) fn claim(
    gw: &Gateway,
    requester: &Viewer,
    candidates: &[Event],
    now: u64,
    state: &mut dyn StateWrite,
) -> Result<Vec<Hex32>, Rejection> {
    let cfg = gw.config();
    // An unauthenticated reader (auth off) has no identity to claim for: it is served only
    // unclaimed KeyPackages, within the per-owner budget, and claims nothing.
    let req = requester.authed.first().copied();
    if !cfg.keypackage_claims {
        return Ok(candidates.iter().map(|e| e.id).collect());
    }
    let claimable = |e: &Event| is_keypackage(e.kind) && !requester.authed.contains(&e.pubkey);

    let mut serve: HashSet<Hex32> = candidates
        .iter()
        .filter(|e| !claimable(e))
        .map(|e| e.id)
        .collect();
    let mut owners: Vec<Hex32> = Vec::new();
    for e in candidates.iter().filter(|e| claimable(e)) {
        if !owners.contains(&e.pubkey) {
            owners.push(e.pubkey);
        }
    }

    // Decide everything first (reads only), then write.
    let mut plans = Vec::with_capacity(owners.len());
    for owner in owners {
        let counter = match req {
            Some(req) => Some(
                WindowCounter::read(state, fetch_rate_prefix(&req, &owner), now, 3600)
                    .map_err(store_err)?,
            ),
            None => None,
        };
        if counter
            .as_ref()
            .is_some_and(|c| c.exhausted(cfg.max_keypackage_fetches_per_hour))
        {
            return Err(Rejection(format!(
                "rate-limited: max_keypackage_fetches_per_hour reached ({}) for this keypackage owner",
                cfg.max_keypackage_fetches_per_hour
            )));
        }
        let asked: HashSet<Hex32> = candidates
            .iter()
            .filter(|e| claimable(e) && e.pubkey == owner)
            .map(|e| e.id)
            .collect();
        let rows = rows_of(state, &owner, now).map_err(store_err)?;
        let mut unclaimed = rows.iter().filter(|(_, r)| r.claimed_by.is_none()).count();
        let mut budget = cfg.max_keypackages_per_query as usize;
        let mut claim = Vec::new();
        let mut known: HashSet<Hex32> = HashSet::new();
        for (reference, row) in &rows {
            let ids: Vec<Hex32> = row
                .events
                .iter()
                .map(|e| e.id)
                .filter(|id| asked.contains(id))
                .collect();
            known.extend(ids.iter().copied());
            if ids.is_empty() || budget == 0 {
                continue;
            }
            match row.claimed_by {
                Some(by) if requester.authed.contains(&by) => {}
                Some(_) => continue,
                None if unclaimed > 1 => {
                    if let Some(req) = req {
                        unclaimed -= 1;
                        let mut row = row.clone();
                        row.claimed_by = Some(req);
                        row.claimed_at = Some(now);
                        claim.push((reference.clone(), row));
                    }
                }
                // The owner's last unclaimed KeyPackage: served, never claimed.
                None => {}
            }
            budget -= 1;
            serve.extend(ids);
        }
        // KeyPackages the directory does not know (none in normal operation): not claimable.
        serve.extend(asked.difference(&known).copied());
        if let Some(counter) = counter {
            plans.push(OwnerPlan {
                owner,
                counter,
                claim,
            });
        }
    }

    for plan in plans {
        plan.counter.bump(state).map_err(store_err)?;
        for (reference, row) in &plan.claim {
            put_json(state, &row_key(&plan.owner, reference), row).map_err(store_err)?;
        }
    }
    Ok(candidates
        .iter()
        .map(|e| e.id)
        .filter(|id| serve.contains(id))
        .collect())
}

#[cfg(test)]
mod tests;
