//! One WebSocket connection as the rest of the relay holds it: its outbox (bounded in messages
//! and bytes, see `outbox`) and who it authenticated as. Subscriptions and fan-out send
//! through this handle; the session owns the socket.

use crate::outbox::{CutReason, Outbox};
use mls_gateway_rules::Viewer;
use mls_proto::Hex32;
use std::sync::{Arc, RwLock};

/// What the rest of the relay holds of a connection: its outbox and who it is.
pub struct ConnectionHandle {
    pub id: u64,
    outbox: Arc<Outbox>,
    /// The pubkeys this connection authenticated as (NIP-42), as the gateway's viewer.
    authed: RwLock<Viewer>,
}

impl ConnectionHandle {
    /// The handle of connection `id`, not authenticated yet.
    pub fn new(id: u64, outbox: Arc<Outbox>) -> Self {
        ConnectionHandle {
            id,
            outbox,
            authed: RwLock::new(Viewer { authed: Vec::new() }),
        }
    }

    /// Queues a message. A full outbox (in messages or bytes) means the client is not
    /// reading: it is disconnected rather than allowed to grow memory or stall the sender.
    pub fn send(&self, msg: String) {
        self.outbox.push(msg);
    }

    /// Queues a message of this connection's own answer, waiting for room in its outbox
    /// (see [`Outbox::push_wait`]).
    pub async fn send_wait(&self, msg: String) {
        self.outbox.push_wait(msg).await;
    }

    /// A handle with no socket behind it, and its outbox (tests).
    #[cfg(test)]
    pub(crate) fn detached(id: u64, capacity: usize) -> (Self, Arc<Outbox>) {
        let outbox = Outbox::detached(capacity, usize::MAX);
        (ConnectionHandle::new(id, outbox.clone()), outbox)
    }

    pub fn outbox_capacity(&self) -> usize {
        self.outbox.max_len()
    }

    pub fn outbox_max_bytes(&self) -> usize {
        self.outbox.max_bytes()
    }

    /// Cuts the connection because live events held back during a REQ outgrew the outbox.
    pub fn mark_slow(&self) {
        self.outbox.cut(CutReason::Held);
    }

    pub fn authed(&self) -> Vec<Hex32> {
        self.authed.read().expect("authed lock").authed.clone()
    }

    pub fn viewer(&self) -> Viewer {
        self.authed.read().expect("authed lock").clone()
    }

    /// Runs `f` with this connection's viewer, without copying it (fan-out calls this once
    /// per matching subscription).
    pub fn with_viewer<R>(&self, f: impl FnOnce(&Viewer) -> R) -> R {
        f(&self.authed.read().expect("authed lock"))
    }

    pub fn is_authed(&self) -> bool {
        !self.authed.read().expect("authed lock").authed.is_empty()
    }

    /// Adds `pk` to the connection's pubkeys; false when it already holds `max` others (the
    /// viewer is checked per delivered event, so its size must stay small).
    pub fn add_authed(&self, pk: Hex32, max: usize) -> bool {
        let list = &mut self.authed.write().expect("authed lock").authed;
        if list.contains(&pk) {
            return true;
        }
        if list.len() >= max {
            return false;
        }
        // Exactly one more: most connections hold one key for their whole life, and the
        // doubling growth would give each room for four.
        list.reserve_exact(1);
        list.push(pk);
        true
    }
}
