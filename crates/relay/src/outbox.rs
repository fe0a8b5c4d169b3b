//! Connection outboxes, bounded in messages and in bytes, and the relay-wide budget of bytes
//! all outboxes may hold together (`limitation.outbox_capacity`, `outbox_max_bytes`,
//! `outbox_total_bytes`).
//!
//! A message's bytes are counted when it is queued and given back once the connection's session
//! has flushed it to the socket (or dropped it). A connection whose outbox would go over its
//! bound is cut: its queue is dropped at once, and its session sends a NOTICE naming the limit
//! and closes. When all outboxes together would go over the budget, the connections with the
//! largest backlog are cut first, until the rest fits.

use futures_util::task::AtomicWaker;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;
use tokio::sync::Notify;

/// Why a connection was cut; the NOTICE names the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// Its outbox held `outbox_capacity` messages.
    Count,
    /// Its outbox held `outbox_max_bytes`.
    Bytes,
    /// All outboxes held `outbox_total_bytes` and this one had the largest backlog.
    Total,
    /// Live events held back while a REQ's stored part was sent reached the outbox bounds.
    Held,
}

/// The relay-wide budget, and the outboxes it may cut.
pub struct OutboxBudget {
    max_total: usize,
    total: AtomicUsize,
    outboxes: Mutex<HashMap<u64, Arc<Outbox>>>,
    /// The relay is shutting down: every session starts its drain (see [`Self::shut_down`]).
    shutting_down: AtomicBool,
}

/// Keeps an outbox known to the budget; dropping it (the session's end) forgets the outbox.
pub struct Registration {
    budget: Arc<OutboxBudget>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let gone = self.budget.registry().remove(&self.id);
        drop(gone); // outside the registry lock
    }
}

impl OutboxBudget {
    pub fn new(max_total: usize) -> Arc<Self> {
        Arc::new(OutboxBudget {
            max_total,
            total: AtomicUsize::new(0),
            outboxes: Mutex::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The relay is shutting down: every connection's session is woken (through its outbox's
    /// waker) and sees [`Outbox::relay_shutting_down`], so that an idle connection needs no
    /// shutdown receiver and future of its own. A session checks the flag after registering
    /// its waker, so one that is opening meanwhile sees it too.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        let outboxes: Vec<Arc<Outbox>> = self.registry().values().cloned().collect();
        for outbox in outboxes {
            outbox.ready.wake();
        }
    }

    /// A new outbox for connection `id`, bounded to `max_len` messages and `max_bytes`.
    pub fn open(
        self: &Arc<Self>,
        id: u64,
        max_len: usize,
        max_bytes: usize,
    ) -> (Arc<Outbox>, Registration) {
        let outbox = Arc::new(Outbox::new(self.clone(), max_len, max_bytes));
        self.registry().insert(id, outbox.clone());
        let registration = Registration {
            budget: self.clone(),
            id,
        };
        (outbox, registration)
    }

    /// Bytes queued (or being written) in all outboxes that still count.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<u64, Arc<Outbox>>> {
        self.outboxes.lock().expect("outbox registry lock")
    }

    /// Over budget: cut the largest backlog until the rest fits. A scan of all connections,
    /// but only when the budget is exceeded, and each round closes one of them.
    fn shed(&self) {
        while self.total() > self.max_total {
            let victim = self
                .registry()
                .values()
                .filter(|o| !o.closed.load(Ordering::Relaxed))
                .max_by_key(|o| o.backlog.load(Ordering::Relaxed))
                .cloned();
            match victim {
                Some(v) if v.backlog.load(Ordering::Relaxed) > 0 => v.shut(Some(CutReason::Total)),
                _ => break,
            }
        }
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    /// Bytes in `queue`.
    queued_bytes: usize,
    /// Bytes in `queue` plus those the session has taken and not yet flushed.
    bytes: usize,
    /// Cut, or the session stopped writing: nothing more is queued.
    closed: bool,
    /// Cut: this outbox's bytes no longer count towards the budget (subtracted at the cut).
    detached: bool,
}

/// One connection's outbox.
pub struct Outbox {
    budget: Arc<OutboxBudget>,
    max_len: usize,
    max_bytes: usize,
    state: Mutex<State>,
    /// `State::bytes` and `State::closed`, readable without the lock (the budget's scan).
    backlog: AtomicUsize,
    closed: AtomicBool,
    /// The connection's session, woken when a message is queued or the outbox is cut (one
    /// waiter: a waker, not a channel, so an idle connection holds no allocation for it).
    ready: AtomicWaker,
    /// Bytes were given back, or the outbox closed (a sender waiting for room waits on this).
    room: Notify,
    reason: OnceLock<CutReason>,
}

impl Outbox {
    /// Set once the relay began shutting down ([`OutboxBudget::shut_down`]).
    pub fn relay_shutting_down(&self) -> bool {
        self.budget.shutting_down.load(Ordering::SeqCst)
    }

    fn new(budget: Arc<OutboxBudget>, max_len: usize, max_bytes: usize) -> Self {
        Outbox {
            budget,
            max_len: max_len.max(1),
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State::default()),
            backlog: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            ready: AtomicWaker::new(),
            room: Notify::new(),
            reason: OnceLock::new(),
        }
    }

    /// An outbox on a budget of its own (tests).
    #[cfg(test)]
    pub fn detached(max_len: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Outbox::new(
            OutboxBudget::new(usize::MAX),
            max_len,
            max_bytes,
        ))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("outbox lock")
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn cut_reason(&self) -> Option<CutReason> {
        self.reason.get().copied()
    }

    /// Queues a message without waiting. An outbox that would go over its bounds means the
    /// client is not reading: the connection is cut rather than allowed to grow memory or
    /// stall the sender. A single message larger than the byte bound still goes to an empty
    /// outbox. False when the message was not queued.
    pub fn push(&self, msg: String) -> bool {
        let refused = {
            let mut st = self.lock();
            if st.closed {
                return false;
            }
            if st.queue.len() >= self.max_len {
                Some(CutReason::Count)
            } else if st.bytes > 0 && st.bytes + msg.len() > self.max_bytes {
                Some(CutReason::Bytes)
            } else {
                self.enqueue(&mut st, msg);
                None
            }
        };
        match refused {
            Some(reason) => {
                self.shut(Some(reason));
                false
            }
            None => {
                self.after_enqueue();
                true
            }
        }
    }

    /// Queues a message of the connection's own answer (a REQ's stored events), waiting while
    /// the outbox holds more than half its bounds: a client that reads gets an answer of any
    /// size, and the other half stays for live events. False when the connection is closed.
    pub async fn push_wait(&self, msg: String) -> bool {
        loop {
            let room = self.room.notified();
            {
                let mut st = self.lock();
                if st.closed {
                    return false;
                }
                let fits =
                    st.bytes + msg.len() <= self.max_bytes / 2 && st.queue.len() < self.max_len / 2;
                if st.bytes == 0 || fits {
                    self.enqueue(&mut st, msg);
                    break;
                }
            }
            room.await;
        }
        self.after_enqueue();
        true
    }

    fn enqueue(&self, st: &mut State, msg: String) {
        let n = msg.len();
        st.queue.push_back(msg);
        st.queued_bytes += n;
        st.bytes += n;
        self.backlog.store(st.bytes, Ordering::Relaxed);
        // Under the lock, so a concurrent cut never subtracts bytes not yet added.
        self.budget.total.fetch_add(n, Ordering::Relaxed);
    }

    fn after_enqueue(&self) {
        self.ready.wake();
        if self.budget.total() > self.budget.max_total {
            self.budget.shed();
        }
    }

    /// Wakes `waker` when a message is queued or the outbox is cut. Register before looking at
    /// the queue ([`Outbox::try_pop`]), so a message queued in between is not missed.
    pub fn register(&self, waker: &Waker) {
        self.ready.register(waker);
    }

    /// The next message for the socket if one is queued. Its bytes still count until
    /// [`Outbox::release`].
    pub fn try_pop(&self) -> Option<String> {
        Self::take_front(&mut self.lock())
    }

    /// Frees the queue's storage once it is empty: an idle connection then holds none (it
    /// grows again with the next burst; called once per burst, when the socket is flushed).
    pub fn shrink_if_empty(&self) {
        let mut st = self.lock();
        if st.queue.is_empty() && st.queue.capacity() > 0 {
            st.queue = VecDeque::new();
        }
    }

    fn take_front(st: &mut State) -> Option<String> {
        let msg = st.queue.pop_front()?;
        st.queued_bytes -= msg.len();
        Some(msg)
    }

    /// Gives back the bytes of popped messages once they are written to the socket.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        {
            let mut st = self.lock();
            st.bytes -= n;
            self.backlog.store(st.bytes, Ordering::Relaxed);
            if !st.detached {
                self.budget.total.fetch_sub(n, Ordering::Relaxed);
            }
        }
        self.room.notify_one();
    }

    /// Cuts the connection: its session is woken, and the queue is dropped now.
    pub fn cut(&self, reason: CutReason) {
        self.shut(Some(reason));
    }

    /// The session stopped writing: nothing more is queued, and what is queued is dropped.
    pub fn close(&self) {
        self.shut(None);
    }

    fn shut(&self, reason: Option<CutReason>) {
        let dropped = {
            let mut st = self.lock();
            if let Some(reason) = reason {
                if st.closed {
                    // Already cut (or the writer is gone): the first reason stands.
                    return;
                }
                let _ = self.reason.set(reason);
                if !st.detached {
                    self.budget.total.fetch_sub(st.bytes, Ordering::Relaxed);
                    st.detached = true;
                }
            } else if !st.detached {
                self.budget
                    .total
                    .fetch_sub(st.queued_bytes, Ordering::Relaxed);
            }
            st.closed = true;
            self.closed.store(true, Ordering::Relaxed);
            st.bytes -= st.queued_bytes;
            st.queued_bytes = 0;
            self.backlog.store(st.bytes, Ordering::Relaxed);
            std::mem::take(&mut st.queue)
        };
        if reason.is_some() {
            crate::metrics::slow_reader_cut();
        }
        self.ready.wake();
        self.room.notify_one();
        drop(dropped); // freed outside the lock
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let st = self.state.get_mut().expect("outbox lock");
        if !st.detached {
            self.budget.total.fetch_sub(st.bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: usize) -> String {
        "m".repeat(n)
    }

    #[test]
    fn bytes_are_counted_when_queued_and_given_back_when_written() {
        let budget = OutboxBudget::new(1000);
        let (a, _ra) = budget.open(1, 100, 500);
        assert!(a.push(msg(200)));
        assert!(a.push(msg(200)));
        assert_eq!(budget.total(), 400);
        let first = a.try_pop().unwrap();
        // Taken by the writer but not written yet: still counted.
        assert_eq!(budget.total(), 400);
        a.release(first.len());
        assert_eq!(budget.total(), 200);
        // Over its own bound: cut, queue dropped, bytes given back.
        assert!(a.push(msg(200)));
        assert!(!a.push(msg(200)));
        assert_eq!(a.cut_reason(), Some(CutReason::Bytes));
        assert_eq!(budget.total(), 0);
        assert!(a.try_pop().is_none());
        assert!(!a.push(msg(1)), "a cut outbox takes nothing more");
    }

    #[test]
    fn one_large_message_goes_to_an_empty_outbox() {
        let budget = OutboxBudget::new(usize::MAX);
        let (a, _ra) = budget.open(1, 100, 10);
        assert!(a.push(msg(50)));
        assert!(!a.push(msg(1)));
        assert_eq!(a.cut_reason(), Some(CutReason::Bytes));
    }

    #[test]
    fn the_message_count_is_bounded_too() {
        let budget = OutboxBudget::new(usize::MAX);
        let (a, _ra) = budget.open(1, 2, 1000);
        assert!(a.push(msg(1)));
        assert!(a.push(msg(1)));
        assert!(!a.push(msg(1)));
        assert_eq!(a.cut_reason(), Some(CutReason::Count));
    }

    #[test]
    fn over_the_budget_the_largest_backlog_is_cut_first() {
        let budget = OutboxBudget::new(1000);
        let (a, _ra) = budget.open(1, 100, 1000);
        let (b, _rb) = budget.open(2, 100, 1000);
        let (c, _rc) = budget.open(3, 100, 1000);
        assert!(a.push(msg(600)));
        assert!(b.push(msg(300)));
        // 600 + 300 + 200 > 1000: `a` goes, `b` and `c` stay.
        assert!(c.push(msg(200)));
        assert_eq!(a.cut_reason(), Some(CutReason::Total));
        assert_eq!(b.cut_reason(), None);
        assert_eq!(c.cut_reason(), None);
        assert_eq!(budget.total(), 500);
        // A cut outbox's message already taken by its writer no longer counts twice.
        let (d, _rd) = budget.open(4, 100, 1000);
        assert!(d.push(msg(100)));
        let taken = d.try_pop().unwrap();
        d.cut(CutReason::Count);
        assert_eq!(budget.total(), 500);
        d.release(taken.len());
        assert_eq!(budget.total(), 500);
    }

    #[test]
    fn a_forgotten_outbox_gives_back_what_it_held() {
        let budget = OutboxBudget::new(usize::MAX);
        let (a, reg) = budget.open(1, 100, 1000);
        assert!(a.push(msg(100)));
        a.close();
        assert_eq!(budget.total(), 0);
        let (b, reg_b) = budget.open(2, 100, 1000);
        assert!(b.push(msg(100)));
        drop((reg, reg_b, a, b));
        assert_eq!(budget.total(), 0);
    }

    #[tokio::test]
    async fn an_own_answer_waits_for_room_instead_of_cutting() {
        let budget = OutboxBudget::new(usize::MAX);
        let (a, _ra) = budget.open(1, 100, 100);
        assert!(a.push_wait(msg(40)).await);
        let waiting = {
            let a = a.clone();
            tokio::spawn(async move { a.push_wait(msg(40)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let first = a.try_pop().unwrap();
        a.release(first.len());
        assert!(waiting.await.unwrap());
        assert_eq!(a.cut_reason(), None);
    }
}
