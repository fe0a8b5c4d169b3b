//! What one write does inside the writer's transaction, written once for every backend:
//! the order of checks the relay promises (duplicate, tombstones, newer version, the rules
//! with their state changes, then storage and NIP-09 deletions), the state overlay around
//! the rules, state-only changes, and the verbatim restore of a backup.
//!
//! A backend supplies only its transaction's primitives ([`WriteTxn`]): look an event up,
//! insert and remove one with all its index entries, read and write tombstones, apply state
//! changes, purge. Its reads see the transaction's own earlier writes, so the events of one
//! batch see each other.

use crate::address::Address;
use crate::audience::{Audience, ReadKey};
use crate::overlay::{state_key_problem, Overlay, StateChanges};
use crate::{
    Admission, Admitted, BackupItem, Publisher, Rejection, StateRead, StoreResult, StoredEvent,
    Tombstone, WriteOutcome,
};
use mls_proto::{Event, Hex32, KindClass};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A backend's write transaction. Every method runs inside it; nothing is visible to others
/// before the backend commits it.
pub trait WriteTxn: StateRead {
    /// This transaction as the state view the rules read (every implementation: `self`).
    fn state(&self) -> &dyn StateRead;

    /// Is an event with this id stored?
    fn contains(&self, id: &Hex32) -> StoreResult<bool>;

    /// The stored event with this id.
    fn load(&self, id: &Hex32) -> StoreResult<Option<Event>>;

    /// `created_at` and id of the version stored at `address`.
    fn version_at(&self, address: &Address) -> StoreResult<Option<(u64, Hex32)>>;

    /// `until` of the tombstone of `address`: versions created at or before it are deleted.
    fn address_deleted_until(&self, address: &Address) -> StoreResult<Option<u64>>;

    /// Who left a tombstone for `id` (whether it counts depends on who may delete the event).
    fn id_deleters(&self, id: &Hex32) -> StoreResult<Vec<Hex32>>;

    /// Stores `ev` with every index entry and its audience, giving it the next `seq`
    /// (commit order).
    fn insert(
        &mut self,
        ev: &Event,
        received_at: u64,
        expires_at: Option<u64>,
        audience: &Audience,
    ) -> StoreResult<()>;

    /// Stored events with `seq > after`, in `seq` order, at most `max`, each with its `seq`.
    fn events_after(&self, after: u64, max: usize) -> StoreResult<Vec<(u64, Event)>>;

    /// Replaces the stored audience of the stored event `ev` (and its index entries).
    fn set_audience(&mut self, ev: &Event, audience: &Audience) -> StoreResult<()>;

    /// Removes the event and everything pointing at it; says whether it was there.
    fn remove(&mut self, id: &Hex32) -> StoreResult<bool>;

    fn put_id_tombstone(&mut self, id: &Hex32, deleter: &Hex32) -> StoreResult<()>;

    /// Records that the versions of `address` created at or before `until` are deleted;
    /// of two tombstones of one address, the later `until` wins.
    fn put_address_tombstone(&mut self, address: &Address, until: u64) -> StoreResult<()>;

    /// Writes buffered state changes (see [`Overlay`]).
    fn apply_state(&mut self, changes: StateChanges) -> StoreResult<()>;

    /// Removes up to `max` events expired at `now`; returns how many, and whether more remain.
    fn purge_expired(&mut self, now: u64, max: usize) -> StoreResult<(u64, bool)>;

    /// The last `seq` handed out, this transaction's included (0: none yet).
    fn last_seq(&self) -> StoreResult<u64>;

    /// The events a batch is about to write, before its first request runs: a backend that
    /// pays a round trip per lookup reads what their checks need at once. Default: nothing.
    fn prefetch(&mut self, _events: &[&Event]) -> StoreResult<()> {
        Ok(())
    }

    /// The transaction holds as much as one commit should (a backend's per-commit limits):
    /// the writer leaves the rest of its batch to the next transaction. Asked before each
    /// request but the first. Default: never.
    fn full(&self) -> bool {
        false
    }

    /// Sends writes the backend buffered (to pay one round trip per batch rather than per
    /// event). Called after the last request, before the commit; a failure here is handled
    /// like a failed request (the batch is rolled back and each request retried alone).
    /// Default: nothing buffered.
    fn flush(&mut self) -> StoreResult<()> {
        Ok(())
    }
}

/// The rules and what calls them, with a panicking rule turned into a refusal rather than
/// a dead writer.
pub(crate) struct Rules<'r>(pub &'r dyn Admission);

fn deleted() -> WriteOutcome {
    WriteOutcome::Rejected("blocked: event was deleted".into())
}

fn newer_stored() -> WriteOutcome {
    WriteOutcome::Rejected("invalid: a newer version of this event is already stored".into())
}

/// Is `(created_at, id)` of a stored version newer than `ev` (later, or as late with a lower
/// id: NIP-01 keeps the lowest id of a tie)?
fn stored_is_newer(stored: (u64, Hex32), ev: &Event) -> bool {
    let (created_at, id) = stored;
    created_at > ev.created_at || (created_at == ev.created_at && id < ev.id)
}

impl Rules<'_> {
    /// One event, in the order the relay promises: duplicate, tombstones, newer version,
    /// rules (with their state changes), then storage and NIP-09 deletions.
    pub fn write_event(
        &self,
        txn: &mut dyn WriteTxn,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> StoreResult<WriteOutcome> {
        if ev.class() == KindClass::Ephemeral {
            return Ok(WriteOutcome::Accepted); // the relay delivers these live; never stored
        }
        if txn.contains(&ev.id)? {
            return Ok(WriteOutcome::Duplicate);
        }
        // Deletions of deletions do nothing (NIP-09), so a kind 5 is never tombstoned.
        if ev.kind != 5 && self.id_tombstoned(txn, ev)? {
            return Ok(deleted());
        }

        let address = Address::of(ev);
        let mut replaces = None;
        if let Some(address) = &address {
            if txn
                .address_deleted_until(address)?
                .is_some_and(|until| until >= ev.created_at)
            {
                return Ok(deleted());
            }
            if let Some(stored) = txn.version_at(address)? {
                if stored_is_newer(stored, ev) {
                    return Ok(newer_stored());
                }
                replaces = Some(stored.1);
            }
        }

        // Before the rules run: a refused deletion must leave no state change behind.
        if ev.kind == 5 {
            if let Some(refusal) = self.refused_deletion(txn, ev)? {
                return Ok(WriteOutcome::Rejected(refusal.0));
            }
        }
        let admitted = match self.admit(txn, ev, publisher, now)? {
            Ok(a) => a,
            Err(rejection) => return Ok(WriteOutcome::Rejected(rejection.0)),
        };

        if admitted.store {
            if let Some(old) = replaces {
                txn.remove(&old)?;
            }
            // NIP-40 keeps its meaning even if the rules chose a later expiry.
            let expires_at = match (admitted.expires_at, ev.expiration()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let audience = self.audience(txn, ev);
            txn.insert(ev, now, expires_at, &audience)?;
        }
        // An accepted deletion takes effect even when the rules keep the kind 5 itself out
        // of storage: the client was told its deletion was accepted.
        if ev.kind == 5 {
            self.apply_deletion(txn, ev)?;
        }
        Ok(WriteOutcome::Accepted)
    }

    /// Runs the rules over the overlay; applies their changes only if they accept.
    fn admit(
        &self,
        txn: &mut dyn WriteTxn,
        ev: &Event,
        publisher: &Publisher,
        now: u64,
    ) -> StoreResult<Result<Admitted, Rejection>> {
        let (decision, changes) = {
            let mut overlay = Overlay::new(txn.state());
            let decision = catch_unwind(AssertUnwindSafe(|| {
                self.0.admit(ev, publisher, now, &mut overlay)
            }));
            (decision, overlay.into_changes())
        };
        let decision = decision.unwrap_or_else(|_| {
            tracing::error!(id = %ev.id, kind = ev.kind, "admission rules panicked");
            Err(Rejection(
                "error: internal error while checking the event".into(),
            ))
        });
        if decision.is_ok() {
            txn.apply_state(changes)?;
        }
        Ok(decision)
    }

    /// Who may read `ev`, over the state as the transaction holds it now. A panicking rule
    /// gives [`ReadKey::Unknown`]: every read then finds the event and the visibility rule
    /// alone decides, as for events stored before audiences existed.
    fn audience(&self, txn: &dyn WriteTxn, ev: &Event) -> Audience {
        catch_unwind(AssertUnwindSafe(|| self.0.audience(ev, txn.state()))).unwrap_or_else(|_| {
            tracing::error!(id = %ev.id, kind = ev.kind, "audience rule panicked");
            Audience::new(vec![ReadKey::Unknown])
        })
    }

    fn may_delete(&self, deleter: &Hex32, target: &Event) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.0.may_delete(deleter, target))).unwrap_or(false)
    }

    /// Is `ev` refused by a tombstone? Only a tombstone written by someone allowed to delete
    /// `ev` counts: a stranger cannot block an event by "deleting" its id in advance.
    fn id_tombstoned(&self, txn: &dyn WriteTxn, ev: &Event) -> StoreResult<bool> {
        Ok(txn
            .id_deleters(&ev.id)?
            .iter()
            .any(|deleter| self.may_delete(deleter, ev)))
    }

    /// The refusal of the first stored target of the kind 5 `del` that the rules will not let
    /// its author delete at all (e.g. a message with several recipients, deleted by one).
    fn refused_deletion(&self, txn: &dyn WriteTxn, del: &Event) -> StoreResult<Option<Rejection>> {
        for id in del.tag_values("e").filter_map(Hex32::from_hex) {
            let Some(target) = txn.load(&id)? else {
                continue;
            };
            let refusal = catch_unwind(AssertUnwindSafe(|| {
                self.0.refuse_deletion(&del.pubkey, &target)
            }))
            .unwrap_or_else(|_| {
                Some(Rejection(
                    "error: internal error while checking the deletion".into(),
                ))
            });
            if refusal.is_some() {
                return Ok(refusal);
            }
        }
        Ok(None)
    }

    /// NIP-09: removes what the kind 5 `del` may delete and records tombstones.
    fn apply_deletion(&self, txn: &mut dyn WriteTxn, del: &Event) -> StoreResult<()> {
        let mut ids: Vec<Hex32> = del.tag_values("e").filter_map(Hex32::from_hex).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            // When the target is not here (yet), the tombstone alone refuses it later, if
            // this deleter may delete it.
            if let Some(target) = txn.load(&id)? {
                if target.kind == 5 || !self.may_delete(&del.pubkey, &target) {
                    continue;
                }
                txn.remove(&id)?;
            }
            txn.put_id_tombstone(&id, &del.pubkey)?;
        }

        for value in del.tag_values("a") {
            let Some(address) = Address::parse_a_tag(value) else {
                continue;
            };
            let stored = txn.version_at(&address)?;
            let allowed = address.owner == del.pubkey
                || match &stored {
                    Some((_, id)) => txn
                        .load(id)?
                        .is_some_and(|target| self.may_delete(&del.pubkey, &target)),
                    None => false,
                };
            if !allowed {
                continue;
            }
            if let Some((created_at, id)) = stored {
                if created_at <= del.created_at {
                    txn.remove(&id)?;
                }
            }
            txn.put_address_tombstone(&address, del.created_at)?;
        }
        Ok(())
    }
}

/// The result of a state-only change.
pub(crate) enum StateOutcome {
    Done(Result<(), Rejection>),
    Panicked,
}

/// Runs a state-only change (admin API, KeyPackage claims) over the overlay; applies it
/// only if it succeeds.
pub(crate) fn update_state(
    txn: &mut dyn WriteTxn,
    f: crate::writer::StateFn,
) -> StoreResult<StateOutcome> {
    let (result, changes) = {
        let mut overlay = Overlay::new(txn.state());
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut overlay)));
        (result, overlay.into_changes())
    };
    Ok(match result {
        Ok(Ok(())) => {
            txn.apply_state(changes)?;
            StateOutcome::Done(Ok(()))
        }
        Ok(Err(rejection)) => StateOutcome::Done(Err(rejection)),
        Err(_) => StateOutcome::Panicked,
    })
}

impl Rules<'_> {
    /// Works the audience of up to `max` stored events with `seq > after` out again; returns
    /// the last `seq` gone through (`after` when none), how many, and whether more remain.
    pub fn refresh_audiences(
        &self,
        txn: &mut dyn WriteTxn,
        after: u64,
        max: usize,
    ) -> StoreResult<(u64, u64, bool)> {
        let events = txn.events_after(after, max + 1)?;
        let more = events.len() > max;
        let mut last = after;
        let mut done = 0;
        for (seq, ev) in events.into_iter().take(max) {
            // A backend's commit limit: the rest goes to the next transaction.
            if done > 0 && txn.full() {
                return Ok((last, done, true));
            }
            let audience = self.audience(txn, &ev);
            txn.set_audience(&ev, &audience)?;
            last = seq;
            done += 1;
        }
        Ok((last, done, more))
    }
}

impl Rules<'_> {
    /// Puts backup items back verbatim: no rules run, no deletion is applied (the rules'
    /// state and the tombstones come as their own items). Only each event's audience is
    /// worked out again (a backup does not carry it), over the state restored so far.
    pub fn restore(
        &self,
        txn: &mut dyn WriteTxn,
        items: &[BackupItem],
    ) -> StoreResult<Vec<WriteOutcome>> {
        items
            .iter()
            .map(|item| self.restore_item(txn, item))
            .collect()
    }

    fn restore_item(&self, txn: &mut dyn WriteTxn, item: &BackupItem) -> StoreResult<WriteOutcome> {
        match item {
            BackupItem::Event(stored) => self.restore_event(txn, stored),
            BackupItem::State { key, value } => {
                if let Some(problem) = state_key_problem(key) {
                    return Ok(WriteOutcome::Rejected(format!("invalid: {problem}")));
                }
                txn.apply_state(StateChanges::from([(key.clone(), Some(value.clone()))]))?;
                Ok(WriteOutcome::Accepted)
            }
            BackupItem::Tombstone(Tombstone::Id { id, deleter }) => {
                txn.put_id_tombstone(id, deleter)?;
                Ok(WriteOutcome::Accepted)
            }
            BackupItem::Tombstone(Tombstone::Address {
                kind,
                pubkey,
                d,
                until,
            }) => match Address::new(*kind, *pubkey, d) {
                Some(address) => {
                    txn.put_address_tombstone(&address, *until)?;
                    Ok(WriteOutcome::Accepted)
                }
                None => Ok(WriteOutcome::Rejected(format!(
                    "invalid: kind {kind} has no address"
                ))),
            },
        }
    }

    fn restore_event(
        &self,
        txn: &mut dyn WriteTxn,
        stored: &StoredEvent,
    ) -> StoreResult<WriteOutcome> {
        let ev = &stored.event;
        if ev.class() == KindClass::Ephemeral {
            return Ok(WriteOutcome::Rejected(
                "invalid: ephemeral events are not stored".into(),
            ));
        }
        if txn.contains(&ev.id)? {
            return Ok(WriteOutcome::Duplicate);
        }
        if let Some(address) = Address::of(ev) {
            if let Some(current) = txn.version_at(&address)? {
                if stored_is_newer(current, ev) {
                    return Ok(newer_stored());
                }
                txn.remove(&current.1)?;
            }
        }
        let audience = self.audience(txn, ev);
        txn.insert(ev, stored.received_at, stored.expires_at, &audience)?;
        Ok(WriteOutcome::Accepted)
    }
}
