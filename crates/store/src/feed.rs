//! The commit stream's doorbell: each backend rings it after a durable commit, live fan-out
//! listens. The notice says how far the store has committed (`seq`); the events themselves
//! are read back from the store ([`crate::EventStore::since`]), so a bus between instances can
//! ring the same bell later and a listener that fell behind catches up from the store.
//!
//! Events that are accepted but not stored (the rules' `store: false`, ephemeral kinds) have
//! no `seq` and cannot be read back: they ride in the notice itself, each with the `seq` of the
//! last stored event committed before it, so a listener delivers everything in commit order.
//! They are at-most-once (a listener that lagged loses them), like ephemeral events anyway.

use mls_proto::Event;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Notices buffered per listener before the slowest one lags (and catches up from the store).
const CAPACITY: usize = 4096;

/// A stored event and its place in commit order.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub seq: u64,
    pub event: crate::StoredEvent,
}

/// What one commit (or announcement) made deliverable.
#[derive(Debug, Clone, Default)]
pub struct CommitNotice {
    /// Every stored event with `seq <= last_seq` is committed.
    pub last_seq: u64,
    /// Accepted events that are not stored, in commit order, each with the `seq` of the
    /// last stored event committed before it.
    pub transient: Vec<(u64, Arc<Event>)>,
}

/// The per-store, per-process commit stream.
pub struct CommitFeed {
    sender: broadcast::Sender<Arc<CommitNotice>>,
    last_seq: AtomicU64,
    /// Serialises notices so `last_seq` never goes backwards on the wire.
    ring: Mutex<()>,
}

impl CommitFeed {
    /// A feed whose store has committed up to `last_seq`.
    pub fn new(last_seq: u64) -> CommitFeed {
        CommitFeed {
            sender: broadcast::channel(CAPACITY).0,
            last_seq: AtomicU64::new(last_seq),
            ring: Mutex::new(()),
        }
    }

    /// Listens to notices from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<CommitNotice>> {
        self.sender.subscribe()
    }

    /// The highest `seq` this process knows to be committed.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Called by a backend after a commit returned: stored events up to `last_seq` are
    /// durable, `transient` were accepted without being stored.
    pub fn committed(&self, last_seq: u64, transient: Vec<(u64, Arc<Event>)>) {
        let _ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let last_seq = self
            .last_seq
            .fetch_max(last_seq, Ordering::AcqRel)
            .max(last_seq);
        if transient.is_empty() && self.sender.receiver_count() == 0 {
            return;
        }
        // No listener is not an error: tools and tests run stores without fan-out.
        let _ = self.sender.send(Arc::new(CommitNotice {
            last_seq,
            transient,
        }));
    }

    /// An accepted event that nothing stores (ephemeral): delivered after what is committed.
    pub fn announce(&self, event: Arc<Event>) {
        let _ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let last_seq = self.last_seq();
        let _ = self.sender.send(Arc::new(CommitNotice {
            last_seq,
            transient: vec![(last_seq, event)],
        }));
    }
}
