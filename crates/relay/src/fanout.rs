//! Live delivery, as the one consumer of the store's commit stream in this process.
//!
//! The store rings its [`mls_store::CommitFeed`] after each durable commit; this task reads
//! what was committed back from the store (`since(seq)`, in commit order) and delivers each
//! event: the subscription index narrows the candidates, the gateway's visibility rule decides
//! (the event's part once, then per subscriber), and matching subscriptions get it once.
//! Publishing sessions never deliver themselves, so a bus between instances can ring the same
//! bell later without touching sessions. Events accepted but not stored (`store: false`,
//! ephemeral kinds) ride in the notice, placed in commit order.
//!
//! One event's deliveries are spread over the cores: this task only narrows the candidates and
//! hands them to delivery *lanes* (one task each, as many as the runtime has workers), each
//! connection always to the same lane (`conn.id % lanes`). A lane decides visibility for its
//! share (its own state read, the one rule per subscriber) and queues the frames. Lanes take
//! batches in the order this task sends them, which is commit order, so a connection gets its
//! events in commit order however the lanes interleave, and each subscription is in one
//! lane's batch once per event.

use crate::bus::BusEvent;
use crate::metrics::FanoutTimer;
use crate::subscriptions::{CommitPosition, Subscription, SubscriptionIndex};
use mls_gateway_rules::Gateway;
use mls_proto::Event;
use mls_store::{CommitNotice, EventStore};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What live delivery reads and delivers through.
pub struct Fanout {
    pub store: Arc<dyn EventStore>,
    /// Decides who may see each event.
    pub gateway: Arc<Gateway>,
    pub subscriptions: Arc<SubscriptionIndex>,
}

/// Events read from the store per catch-up read (each up to an event's size limit in memory).
const CHUNK: usize = 64;
/// A failing catch-up read is retried this many times (100 ms apart) before the range is
/// given up (logged): live delivery is best effort, the store keeps everything.
const READ_ATTEMPTS: u32 = 30;
/// Batches queued per lane before this task waits for the lane (each holds one event and its
/// share of the subscriptions, not frames).
const LANE_QUEUE: usize = 256;

/// Runs until shutdown (or until the store's feed is gone). Starts after what is already
/// committed: older events are served by REQ, not live.
///
/// With a bus (`bus`: several instances on one store), other instances' notices are consumed
/// the same way: the stored events are read from the shared store in `seq` order, so each is
/// delivered once whichever instance committed it. After a bus reconnect, and every
/// `catch_up_interval` (`bus.catch_up_interval_ms`), the store itself is asked how far it has
/// committed.
///
/// Deliveries run on `lanes` tasks (the runtime's worker count by default, see [`lanes`]).
pub async fn run(
    fan: Fanout,
    shutdown: watch::Receiver<bool>,
    catch_up_interval: Duration,
    bus: Option<mpsc::Receiver<BusEvent>>,
) {
    run_with_lanes(fan, lanes(), shutdown, catch_up_interval, bus).await
}

/// The default number of delivery lanes: one per runtime worker thread.
pub fn lanes() -> usize {
    tokio::runtime::Handle::try_current()
        .map(|h| h.metrics().num_workers())
        .unwrap_or(1)
        .max(1)
}

/// [`run`] with `lanes` delivery lanes. Returns once the lanes have queued everything handed
/// to them.
pub async fn run_with_lanes(
    fan: Fanout,
    lanes: usize,
    shutdown: watch::Receiver<bool>,
    catch_up_interval: Duration,
    bus: Option<mpsc::Receiver<BusEvent>>,
) {
    let fan = Arc::new(fan);
    let lanes = Lanes::start(&fan, lanes);
    consume_commits(&fan, &lanes, shutdown, catch_up_interval, bus).await;
    lanes.finish().await;
}

async fn consume_commits(
    fan: &Fanout,
    lanes: &Lanes,
    mut shutdown: watch::Receiver<bool>,
    catch_up_interval: Duration,
    mut bus: Option<mpsc::Receiver<BusEvent>>,
) {
    let mut notices = fan.store.commits().subscribe();
    let mut cursor = fan.store.commits().last_seq();
    let mut poll = tokio::time::interval(catch_up_interval.max(Duration::from_millis(1)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let heard = tokio::select! {
            n = notices.recv() => Heard::Local(n),
            b = recv(&mut bus), if bus.is_some() => match b {
                Some(event) => Heard::Bus(event),
                None => {
                    bus = None; // the bus tasks stopped (shutdown)
                    continue;
                }
            },
            _ = poll.tick(), if bus.is_some() => Heard::Poll,
            _ = crate::shutdown::until_set(&mut shutdown) => return,
        };
        match heard {
            Heard::Local(Ok(notice)) => consume(fan, lanes, &mut cursor, &notice).await,
            Heard::Bus(BusEvent::Notice(notice)) => consume(fan, lanes, &mut cursor, &notice).await,
            Heard::Local(Err(RecvError::Lagged(missed))) => {
                // Stored events are read back from the store; transient ones are lost.
                tracing::warn!(missed, "fan-out fell behind the commit stream; catching up");
                catch_up_with_store(fan, lanes, &mut cursor).await;
            }
            Heard::Local(Err(RecvError::Closed)) => return,
            Heard::Bus(BusEvent::Reconnected) | Heard::Poll => {
                catch_up_with_store(fan, lanes, &mut cursor).await
            }
        }
    }
}

enum Heard {
    Local(Result<Arc<CommitNotice>, RecvError>),
    Bus(BusEvent),
    Poll,
}

async fn recv(bus: &mut Option<mpsc::Receiver<BusEvent>>) -> Option<BusEvent> {
    match bus {
        Some(b) => b.recv().await,
        None => std::future::pending().await,
    }
}

/// Delivers everything the store has committed that this process has not delivered yet.
async fn catch_up_with_store(fan: &Fanout, lanes: &Lanes, cursor: &mut u64) {
    match fan.store.committed_seq().await {
        Ok(to) => catch_up(fan, lanes, cursor, to).await,
        Err(e) => tracing::warn!(error = %e, "fan-out cannot read how far the store committed"),
    }
}

async fn consume(fan: &Fanout, lanes: &Lanes, cursor: &mut u64, notice: &CommitNotice) {
    for (after, ev) in &notice.transient {
        catch_up(fan, lanes, cursor, *after).await;
        let position = CommitPosition::TransientAfter(*after);
        lanes.publish(fan, ev.clone(), position, None).await;
    }
    catch_up(fan, lanes, cursor, notice.last_seq).await;
}

/// Delivers the stored events with `cursor < seq <= to`, in seq order.
async fn catch_up(fan: &Fanout, lanes: &Lanes, cursor: &mut u64, to: u64) {
    if fan.subscriptions.is_empty() {
        // Nobody listens: nothing to read back. A REQ registered after this check queries
        // the store after these events committed, so it finds them there.
        *cursor = to.max(*cursor);
        return;
    }
    let mut failures = 0;
    while *cursor < to {
        let batch = match fan.store.since(*cursor, CHUNK).await {
            Ok(batch) => batch,
            Err(e) => {
                failures += 1;
                if failures >= READ_ATTEMPTS {
                    tracing::error!(error = %e, from = *cursor, to, "fan-out skips events it could not read");
                    *cursor = to;
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let whole = batch.len() < CHUNK;
        for s in batch {
            if s.seq > to {
                // Committed after the point we deliver up to: read again later, in order.
                *cursor = to;
                return;
            }
            let (event, json) = (Arc::new(s.event.event), s.event.json);
            lanes
                .publish(fan, event, CommitPosition::Stored(s.seq), Some(json))
                .await;
            *cursor = s.seq;
        }
        if whole {
            // Everything committed up to `to` was read (what is missing was removed since).
            *cursor = to;
        }
    }
}

/// One event's deliveries to one lane's share of its matching subscriptions.
struct LaneBatch {
    event: Arc<Event>,
    json: Arc<str>,
    position: CommitPosition,
    subs: Vec<Arc<Subscription>>,
    /// Shared by the event's batches: the fan-out is timed until the last lane is done.
    _timer: Arc<FanoutTimer>,
}

/// The delivery lanes: one task each, fed in commit order.
struct Lanes {
    senders: Vec<mpsc::Sender<LaneBatch>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Lanes {
    fn start(fan: &Arc<Fanout>, n: usize) -> Lanes {
        let (senders, tasks) = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(LANE_QUEUE);
                (tx, tokio::spawn(lane(fan.clone(), rx)))
            })
            .unzip();
        Lanes { senders, tasks }
    }

    /// Hands `ev` to the lanes of its matching live subscriptions (waiting while a lane's
    /// queue is full). Returns once it is queued to every lane concerned, not delivered.
    async fn publish(
        &self,
        fan: &Fanout,
        ev: Arc<Event>,
        position: CommitPosition,
        json: Option<Arc<str>>,
    ) {
        let mut candidates = fan.subscriptions.matching(&ev);
        candidates.retain(|sub| sub.is_live(position));
        if candidates.is_empty() {
            return;
        }
        let timer = Arc::new(FanoutTimer::start());
        let json = json.unwrap_or_else(|| ev.to_json().into());
        let n = self.senders.len();
        let mut shares: Vec<Vec<Arc<Subscription>>> = vec![Vec::new(); n];
        for sub in candidates {
            // By connection, never by subscription: a connection's frames stay in one queue.
            shares[(sub.conn.id % n as u64) as usize].push(sub);
        }
        for (lane, subs) in self.senders.iter().zip(shares) {
            if subs.is_empty() {
                continue;
            }
            let batch = LaneBatch {
                event: ev.clone(),
                json: json.clone(),
                position,
                subs,
                _timer: timer.clone(),
            };
            // A lane ends only when its sender is dropped (`finish`).
            let _ = lane.send(batch).await;
        }
    }

    /// No more batches: each lane delivers what it holds, then ends.
    async fn finish(self) {
        drop(self.senders);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn lane(fan: Arc<Fanout>, mut batches: mpsc::Receiver<LaneBatch>) {
    while let Some(batch) = batches.recv().await {
        deliver(&fan, batch).await;
    }
}

/// The visibility rule for each subscription of the batch (the event's part once), then the
/// frames of those that may see it.
async fn deliver(fan: &Fanout, batch: LaneBatch) {
    let LaneBatch {
        event: ev,
        json,
        position,
        subs,
        ..
    } = batch;
    let mut visible = Vec::with_capacity(subs.len());
    let read = fan
        .store
        .read_state(&mut |state| {
            visible.clear();
            let audience = fan.gateway.audience(&ev, state);
            for sub in &subs {
                if sub.conn.with_viewer(|v| audience.admits_live(v, state)) {
                    visible.push(sub);
                }
            }
            Ok(())
        })
        .await;
    if let Err(e) = read {
        // Without state we cannot decide visibility: deliver nothing rather than leak.
        tracing::error!(error = %e, "fan-out state read failed");
        return;
    }
    for sub in visible {
        sub.deliver(ev.id, &json, position);
    }
}

#[cfg(test)]
#[path = "fanout_tests.rs"]
mod tests;
