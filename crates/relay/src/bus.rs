//! The bus between relay instances that share one store: each instance says on it what it
//! committed, and hears what the others did, so that live fan-out on every instance delivers
//! every event (DESIGN "Scale-out").
//!
//! The bus is a doorbell, the store is the truth. A message carries the committed `seq` (and
//! the accepted events that are not stored, which have no other way across); the receiving
//! fan-out reads the stored events from the store (`since`), in commit order, through the same
//! visibility rule as local ones. So a lost message, a bus outage or a reconnect costs only
//! time: after a reconnect, and every `bus.catch_up_interval_ms` anyway, fan-out reads the
//! store for anything it heard nothing of. What is not caught up: unstored events (ephemeral
//! kinds, `enable_message_archive = false`) sent while the bus was down or too large for
//! NOTIFY — at most once, as in one process.
//!
//! Transports: Redis pub/sub (`bus.redis_url`) or PostgreSQL LISTEN/NOTIFY (the store's own
//! database, payloads < 8000 bytes). One instance alone, on the embedded store, has none.

use mls_proto::Event;
use mls_store::{CommitNotice, EventStore};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, watch};

/// Messages from other instances buffered for fan-out before the bus reader waits.
const INBOX: usize = 4096;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest a publish may take before it is given up (fan-out elsewhere then catches up).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
/// Most local notices merged into one message when commits come faster than publishes.
const MERGE: usize = 256;
/// An idle instance still publishes this often, so that its listener hears its own echo.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// A listener that has not echoed this instance's messages for this long after one was
/// published is taken for dead (a connection gone silent without closing) and replaced.
const ECHO_TIMEOUT: Duration = Duration::from_secs(15);

/// When this instance last published, and last heard itself on the bus (milliseconds since
/// `epoch`): both transports echo a message to its sender's own listener.
struct Liveness {
    epoch: tokio::time::Instant,
    published: std::sync::atomic::AtomicU64,
    echoed: std::sync::atomic::AtomicU64,
}

impl Liveness {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn mark(&self, which: &std::sync::atomic::AtomicU64) {
        which.store(self.now(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Published, and not heard back within `ECHO_TIMEOUT`.
    fn deaf(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let (published, echoed) = (self.published.load(Relaxed), self.echoed.load(Relaxed));
        published > echoed && self.now() - echoed > ECHO_TIMEOUT.as_millis() as u64
    }
}

/// What fan-out hears from the bus.
#[derive(Debug)]
pub enum BusEvent {
    /// Another instance committed up to `last_seq` (and accepted these unstored events).
    Notice(CommitNotice),
    /// The bus (re)connected: whatever was sent while it was away is in the store only.
    Reconnected,
}

/// One message on the wire (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    /// The sending instance (its own messages are already delivered by its local feed).
    from: String,
    /// Every stored event with `seq <= seq` is committed.
    seq: u64,
    /// Unstored events, each after the stored `seq` it was committed behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<(u64, Event)>,
}

/// Where messages go and come from.
pub enum Transport {
    #[cfg(feature = "postgres")]
    Notify(Arc<mls_store_postgres::PostgresStore>),
    #[cfg(feature = "redis")]
    Redis(Box<redis_bus::RedisBus>),
}

impl Transport {
    fn name(&self) -> &'static str {
        match *self {
            #[cfg(feature = "postgres")]
            Transport::Notify(_) => "postgres-notify",
            #[cfg(feature = "redis")]
            Transport::Redis(_) => "redis",
        }
    }

    /// Largest payload the transport carries.
    fn max_payload(&self) -> usize {
        match *self {
            #[cfg(feature = "postgres")]
            Transport::Notify(_) => mls_store_postgres::MAX_NOTIFY_PAYLOAD,
            #[cfg(feature = "redis")]
            Transport::Redis(_) => usize::MAX,
        }
    }

    #[cfg_attr(
        not(any(feature = "postgres", feature = "redis")),
        allow(unused_variables)
    )]
    async fn publish(&self, payload: String) -> Result<(), String> {
        // `*self`: without either feature the enum is empty, and so is this match.
        match *self {
            #[cfg(feature = "postgres")]
            Transport::Notify(ref store) => store.notify(payload).await.map_err(|e| e.to_string()),
            #[cfg(feature = "redis")]
            Transport::Redis(ref bus) => bus.publish(payload).await,
        }
    }

    /// A fresh subscription: payloads until the connection is lost.
    async fn listen(&self) -> Result<mpsc::Receiver<String>, String> {
        match *self {
            #[cfg(feature = "postgres")]
            Transport::Notify(ref store) => store.listen().await.map_err(|e| e.to_string()),
            #[cfg(feature = "redis")]
            Transport::Redis(ref bus) => bus.listen().await,
        }
    }
}

/// Starts the two bus tasks (say what this instance commits; hear the others) and returns
/// what fan-out reads. They stop at shutdown.
pub fn start(
    transport: Transport,
    store: Arc<dyn EventStore>,
    shutdown: watch::Receiver<bool>,
) -> mpsc::Receiver<BusEvent> {
    let transport = Arc::new(transport);
    let me = instance_id();
    tracing::info!(transport = transport.name(), instance = %me, "bus between instances on");
    let (inbox, events) = mpsc::channel(INBOX);
    let live = Arc::new(Liveness {
        epoch: tokio::time::Instant::now(),
        published: 0.into(),
        echoed: 0.into(),
    });
    tokio::spawn(say(
        transport.clone(),
        store,
        me.clone(),
        live.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(hear(transport, me, live, inbox, shutdown));
    events
}

/// A random id for this process's messages.
fn instance_id() -> String {
    let mut b = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
    hex::encode(b)
}

/// Publishes this instance's commit notices, in order; notices that queued up while the
/// previous publish was under way go out as one message (one NOTIFY per burst, not per batch).
/// An idle instance sends its position every `HEARTBEAT`.
async fn say(
    transport: Arc<Transport>,
    store: Arc<dyn EventStore>,
    me: String,
    live: Arc<Liveness>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut notices = store.commits().subscribe();
    let max = transport.max_payload();
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        let notice = tokio::select! {
            n = notices.recv() => Some(n),
            _ = heartbeat.tick() => None,
            _ = crate::shutdown::until_set(&mut shutdown) => return,
        };
        let wire = match notice {
            None => Wire {
                from: me.clone(),
                seq: store.commits().last_seq(),
                events: Vec::new(),
            },
            Some(notice) => match notice {
                Ok(n) => {
                    let mut wire = Wire {
                        from: me.clone(),
                        seq: n.last_seq,
                        events: Vec::new(),
                    };
                    let add = |n: &CommitNotice, wire: &mut Wire| {
                        wire.seq = wire.seq.max(n.last_seq);
                        let events = n.transient.iter().map(|(a, ev)| (*a, (**ev).clone()));
                        wire.events.extend(events);
                    };
                    add(&n, &mut wire);
                    for _ in 1..MERGE {
                        match notices.try_recv() {
                            Ok(more) => add(&more, &mut wire),
                            // Lagged: the stored part goes out with a later seq anyway.
                            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                                wire.seq = wire.seq.max(store.commits().last_seq());
                            }
                            Err(_) => break,
                        }
                    }
                    wire
                }
                // The others catch up the stored part from the store; unstored events are lost.
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "bus publisher fell behind this instance's commits");
                    Wire {
                        from: me.clone(),
                        seq: store.commits().last_seq(),
                        events: Vec::new(),
                    }
                }
                Err(RecvError::Closed) => return,
            },
        };
        heartbeat.reset();
        let payload = encode(wire, max);
        match tokio::time::timeout(PUBLISH_TIMEOUT, transport.publish(payload)).await {
            Ok(Ok(())) => live.mark(&live.published),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "bus publish failed; other instances will catch up from the store")
            }
            Err(_) => tracing::warn!(
                "bus publish timed out; other instances will catch up from the store"
            ),
        }
    }
}

/// The message as JSON within `max` bytes: unstored events that do not fit are left out
/// (logged); the `seq` always goes.
fn encode(mut wire: Wire, max: usize) -> String {
    let text = serde_json::to_string(&wire).expect("bus message serialises");
    if text.len() <= max {
        return text;
    }
    let mut kept = Vec::new();
    let mut dropped = 0;
    let events = std::mem::take(&mut wire.events);
    for e in events {
        kept.push(e);
        wire.events = kept;
        if serde_json::to_string(&wire).map_or(true, |t| t.len() > max) {
            kept = std::mem::take(&mut wire.events);
            kept.pop();
            dropped += 1;
        } else {
            kept = std::mem::take(&mut wire.events);
        }
    }
    wire.events = kept;
    tracing::warn!(
        dropped,
        max,
        "unstored events too large for the bus were not sent to other instances"
    );
    serde_json::to_string(&wire).expect("bus message serialises")
}

/// Listens (reconnecting with backoff) and hands other instances' notices to fan-out.
async fn hear(
    transport: Arc<Transport>,
    me: String,
    live: Arc<Liveness>,
    inbox: mpsc::Sender<BusEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut watchdog = tokio::time::interval(ECHO_TIMEOUT / 3);
    let mut backoff = BACKOFF_MIN;
    let mut was_down = false;
    loop {
        let listening = tokio::select! {
            l = transport.listen() => l,
            _ = crate::shutdown::until_set(&mut shutdown) => return,
        };
        let mut messages = match listening {
            Ok(m) => m,
            Err(e) => {
                if !was_down {
                    tracing::warn!(error = %e, "bus unreachable; retrying (fan-out reads the store meanwhile)");
                }
                was_down = true;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = crate::shutdown::until_set(&mut shutdown) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        if std::mem::take(&mut was_down) {
            tracing::info!("bus reconnected");
        }
        backoff = BACKOFF_MIN;
        live.mark(&live.echoed);
        // Anything sent while no one listened is only in the store.
        if inbox.send(BusEvent::Reconnected).await.is_err() {
            return;
        }
        loop {
            let payload = tokio::select! {
                p = messages.recv() => p,
                _ = watchdog.tick() => {
                    if !live.deaf() {
                        continue;
                    }
                    tracing::warn!("bus listener hears nothing, not even this instance; reconnecting");
                    None
                }
                _ = crate::shutdown::until_set(&mut shutdown) => return,
            };
            let Some(payload) = payload else {
                tracing::warn!("bus connection lost; reconnecting");
                was_down = true;
                break;
            };
            match decode(&payload, &me) {
                Heard::Own => live.mark(&live.echoed),
                Heard::Other(notice) => {
                    if inbox.send(BusEvent::Notice(notice)).await.is_err() {
                        return;
                    }
                }
                Heard::Unreadable => {}
            }
        }
    }
}

/// What a message on the bus is to this instance.
#[derive(Debug)]
enum Heard {
    /// Its own, echoed back (proof the listener works).
    Own,
    /// Another instance's, as a notice.
    Other(CommitNotice),
    /// Not a message of ours at all.
    Unreadable,
}

/// Reads a message. Unstored events are checked like any event from a client (id and
/// signature): they reach subscribers without passing a store.
fn decode(payload: &str, me: &str) -> Heard {
    let wire: Wire = match serde_json::from_str(payload) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "bus message ignored: not ours");
            return Heard::Unreadable;
        }
    };
    if wire.from == me {
        return Heard::Own;
    }
    let mut transient = Vec::with_capacity(wire.events.len());
    for (after, ev) in wire.events {
        match ev.verify() {
            Ok(()) => transient.push((after, Arc::new(ev))),
            Err(e) => tracing::warn!(error = %e, "bus event ignored: it does not verify"),
        }
    }
    Heard::Other(CommitNotice {
        last_seq: wire.seq,
        transient,
    })
}

#[cfg(feature = "redis")]
pub mod redis_bus {
    //! Redis pub/sub: one multiplexed connection to publish, one subscriber connection.

    use super::PUBLISH_TIMEOUT;
    use redis::aio::MultiplexedConnection;
    use tokio::sync::{mpsc, Mutex};

    pub struct RedisBus {
        client: redis::Client,
        channel: String,
        publisher: Mutex<Option<MultiplexedConnection>>,
    }

    impl RedisBus {
        /// Checks the URL only; connections are made when first needed (and again after a
        /// loss), so a relay starts while Redis is down.
        pub fn new(url: &str, channel: &str) -> Result<RedisBus, String> {
            let client = redis::Client::open(url).map_err(|e| format!("bus.redis_url: {e}"))?;
            Ok(RedisBus {
                client,
                channel: channel.to_owned(),
                publisher: Mutex::new(None),
            })
        }

        pub async fn publish(&self, payload: String) -> Result<(), String> {
            let mut slot = self.publisher.lock().await;
            if slot.is_none() {
                let conn = tokio::time::timeout(
                    PUBLISH_TIMEOUT,
                    self.client.get_multiplexed_async_connection(),
                )
                .await
                .map_err(|_| "redis: no connection".to_owned())?
                .map_err(|e| format!("redis: {e}"))?;
                *slot = Some(conn);
            }
            let conn = slot.as_mut().expect("connected");
            let sent: Result<i64, _> = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(payload)
                .query_async(conn)
                .await;
            if let Err(e) = sent {
                // A fresh connection next time.
                *slot = None;
                return Err(format!("redis: {e}"));
            }
            Ok(())
        }

        pub async fn listen(&self) -> Result<mpsc::Receiver<String>, String> {
            use futures_util::StreamExt;
            let mut pubsub = tokio::time::timeout(PUBLISH_TIMEOUT, self.client.get_async_pubsub())
                .await
                .map_err(|_| "redis: no connection".to_owned())?
                .map_err(|e| format!("redis: {e}"))?;
            pubsub
                .subscribe(&self.channel)
                .await
                .map_err(|e| format!("redis: subscribe: {e}"))?;
            let (tx, rx) = mpsc::channel(super::INBOX);
            tokio::spawn(async move {
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    let Ok(payload) = msg.get_payload::<String>() else {
                        continue;
                    };
                    if tx.send(payload).await.is_err() {
                        return;
                    }
                }
                // The stream ended: the connection is gone; dropping `tx` says so.
            });
            Ok(rx)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn other(heard: Heard) -> CommitNotice {
        match heard {
            Heard::Other(n) => n,
            h => panic!("not another instance's notice: {h:?}"),
        }
    }

    fn signed(content: &str) -> Event {
        let keys =
            secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng());
        Event::sign(&keys, mls_proto::unix_now(), 20001, vec![], content)
    }

    #[test]
    fn a_message_names_its_sender_and_our_own_are_ignored() {
        let ev = signed("hi");
        let text = encode(
            Wire {
                from: "a".into(),
                seq: 7,
                events: vec![(6, ev.clone())],
            },
            usize::MAX,
        );
        assert!(matches!(decode(&text, "a"), Heard::Own));
        let notice = other(decode(&text, "b"));
        assert_eq!(notice.last_seq, 7);
        assert_eq!(notice.transient.len(), 1);
        assert_eq!(notice.transient[0].0, 6);
        assert_eq!(notice.transient[0].1.id, ev.id);
    }

    #[test]
    fn events_that_do_not_verify_are_dropped_the_seq_is_kept() {
        let mut forged = signed("hi");
        forged.content = "changed".into();
        let text = encode(
            Wire {
                from: "a".into(),
                seq: 3,
                events: vec![(3, forged)],
            },
            usize::MAX,
        );
        let notice = other(decode(&text, "b"));
        assert_eq!(notice.last_seq, 3);
        assert!(notice.transient.is_empty());
        assert!(matches!(decode("not json", "b"), Heard::Unreadable));
    }

    #[test]
    fn a_message_over_the_transport_limit_keeps_its_seq_and_what_fits() {
        let small = signed("small");
        let big = signed(&"x".repeat(9000));
        let text = encode(
            Wire {
                from: "a".into(),
                seq: 9,
                events: vec![(8, small.clone()), (8, big), (9, small.clone())],
            },
            7999,
        );
        assert!(text.len() <= 7999, "{}", text.len());
        let notice = other(decode(&text, "b"));
        assert_eq!(notice.last_seq, 9);
        let ids: Vec<_> = notice.transient.iter().map(|(_, e)| e.id).collect();
        assert_eq!(ids, vec![small.id, small.id]);
    }
}
