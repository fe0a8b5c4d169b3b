//! LISTEN/NOTIFY on the store's database: the bus between relay instances when there is no
//! Redis. The relay sends a short message after each commit ([`PostgresStore::notify`]) and
//! every instance listens on its own connection ([`PostgresStore::listen`]).
//!
//! A notification is only a doorbell: payloads are capped at 7999 bytes by the server, and a
//! listener whose connection dropped has missed whatever was sent meanwhile, so listeners read
//! the events themselves from the store (`since`). The channel is per schema, so stores in
//! different schemas of one database (tests) do not hear each other.

use crate::{pg_error, tls::Connector, PostgresStore};
use mls_store::{StoreError, StoreResult};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

/// The largest payload PostgreSQL accepts in a NOTIFY (8000 bytes including its terminator).
pub const MAX_NOTIFY_PAYLOAD: usize = 7999;

/// Notifications buffered for a listener that is busy before it lags (then the oldest wait
/// in the server's queue, which holds 8 GB, not in this process).
const LISTEN_BUFFER: usize = 1024;

/// What a connection outside the pool needs.
#[derive(Clone)]
pub(crate) struct Connect {
    pub config: tokio_postgres::Config,
    pub tls: Connector,
    pub channel: String,
    pub timeout: Duration,
}

/// `mls_gateway_commits`, or `mls_gateway_commits_{schema}`: a valid identifier either way
/// (schemas are checked to be lowercase letters, digits and `_` at open).
pub(crate) fn channel_name(schema: Option<&str>) -> String {
    match schema {
        Some(s) => format!("mls_gateway_commits_{s}"),
        None => "mls_gateway_commits".into(),
    }
}

impl PostgresStore {
    /// The LISTEN/NOTIFY channel this store's instances share.
    pub fn notify_channel(&self) -> &str {
        &self.connect.channel
    }

    /// Sends `payload` (at most [`MAX_NOTIFY_PAYLOAD`] bytes) to every listener of this
    /// store's channel, the sender's own included. Delivered when this statement commits
    /// (at once: it runs alone).
    pub async fn notify(&self, payload: String) -> StoreResult<()> {
        if payload.len() > MAX_NOTIFY_PAYLOAD {
            return Err(StoreError::Backend(format!(
                "postgres: a NOTIFY payload of {} bytes is over the server's {MAX_NOTIFY_PAYLOAD}",
                payload.len()
            )));
        }
        let pool = self.pool.clone();
        let deadline = self.io.deadline;
        let channel = self.connect.channel.clone();
        self.io
            .run(async move {
                crate::on_pooled(&pool, deadline, |client| {
                    Box::pin(async move {
                        client
                            .execute("SELECT pg_notify($1, $2)", &[&channel, &payload])
                            .await
                            .map_err(pg_error("notify"))?;
                        Ok(())
                    })
                })
                .await
            })
            .await
    }

    /// Opens a connection of its own that LISTENs on this store's channel. The receiver yields
    /// each payload in the order the server sent them, and ends when the connection is lost
    /// (the caller opens a new one, and reads from the store what it may have missed).
    pub async fn listen(&self) -> StoreResult<mpsc::Receiver<String>> {
        let connect = self.connect.clone();
        self.io
            .run(async move {
                let (client, mut connection) = tokio::time::timeout(
                    connect.timeout,
                    connect.config.connect(connect.tls.clone()),
                )
                .await
                .map_err(|_| {
                    StoreError::Backend(format!(
                        "postgres: listen: no connection within {:?}",
                        connect.timeout
                    ))
                })?
                .map_err(pg_error("listen: connect"))?;
                let (tx, rx) = mpsc::channel(LISTEN_BUFFER);
                // The connection task owns the client too: both end together.
                let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
                tokio::spawn(async move {
                    let mut ready_tx = Some(ready_tx);
                    let mut client = Some(client);
                    let listen = format!("LISTEN {}", connect.channel);
                    let mut pending_listen = {
                        let c = client.take().expect("client");
                        Box::pin(async move {
                            let r = c.batch_execute(&listen).await;
                            (c, r)
                        })
                    };
                    let mut listening = false;
                    loop {
                        let message = tokio::select! {
                            done = &mut pending_listen, if !listening => {
                                let (c, r) = done;
                                client = Some(c);
                                listening = true;
                                let answer = r.map_err(pg_error("listen"));
                                let failed = answer.is_err();
                                if let Some(ready) = ready_tx.take() {
                                    let _ = ready.send(answer);
                                }
                                if failed {
                                    return;
                                }
                                continue;
                            }
                            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => m,
                        };
                        match message {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                if tx.send(n.payload().to_owned()).await.is_err() {
                                    return; // nobody listens any more
                                }
                            }
                            Some(Ok(_)) => {} // notices: nothing to do
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "postgres LISTEN connection lost");
                                break;
                            }
                            None => break,
                        }
                    }
                    if let Some(ready) = ready_tx.take() {
                        let _ = ready.send(Err(StoreError::Backend(
                            "postgres: listen: the connection closed".into(),
                        )));
                    }
                    drop(client);
                });
                ready_rx.await.map_err(|_| {
                    StoreError::Backend("postgres: listen: the connection task ended".into())
                })??;
                Ok(rx)
            })
            .await
    }
}
