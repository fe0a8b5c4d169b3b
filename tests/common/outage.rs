//! Outages as the relay sees them: a TCP proxy between the relay and its database (PostgreSQL,
//! the Firestore emulator) that can be cut, silenced and restored, and the waits a test makes
//! for the relay's answers while the database misbehaves.

use super::{id_hex, Ws};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A TCP proxy to a database that can be cut (every connection dropped, new ones closed at
/// once), silenced (connections stay open but nothing gets through either way, as in a
/// network partition) and restored: database outages as the relay sees them.
pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    silent: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

/// Copies `from` to `to`, dropping what it reads while `silent` is set.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if !silent.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Proxy {
    pub async fn start(target: (String, u16)) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let silent = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (up2, silent2, conns2) = (up.clone(), silent.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                if silent2.load(Ordering::SeqCst) {
                    held.push(client); // open, and never answered
                    continue;
                }
                let target = target.clone();
                let silent = silent2.clone();
                let task = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(pump(cr, sw, silent.clone()), pump(sr, cw, silent));
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            port,
            up,
            silent,
            conns,
            accept,
        }
    }

    pub fn silence(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.silent.store(false, Ordering::SeqCst);
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// How long a test waits for the relay's answer while the database misbehaves: well past the
/// relay's own deadlines (statement timeout + connect timeout, and a rollback's), so a loaded
/// machine does not fail the test, yet far from the hang it guards against.
pub const OUTAGE_ANSWER: Duration = Duration::from_secs(60);

/// The OK for `event`, waited for up to [`OUTAGE_ANSWER`].
pub async fn publish_during_outage(ws: &mut Ws, event: &mls_proto::Event) -> (bool, String) {
    ws.send(&json!(["EVENT", event])).await;
    let id = id_hex(event);
    loop {
        let m = ws
            .recv_until_closed(OUTAGE_ANSWER)
            .await
            .expect("relay closed the connection");
        if m[0] == "OK" && m[1] == id.as_str() {
            return (m[2] == true, m[3].as_str().unwrap_or_default().to_owned());
        }
    }
}

pub async fn req_ids(
    ws: &mut Ws,
    sub: &str,
    filter: serde_json::Value,
) -> Result<Vec<String>, String> {
    ws.send(&json!(["REQ", sub, filter])).await;
    let mut ids = Vec::new();
    loop {
        let m = ws
            .recv_until_closed(OUTAGE_ANSWER)
            .await
            .expect("relay closed the connection");
        match m[0].as_str() {
            Some("EVENT") if m[1] == sub => ids.push(m[2]["id"].as_str().unwrap().to_owned()),
            Some("EOSE") if m[1] == sub => {
                ws.send(&json!(["CLOSE", sub])).await;
                return Ok(ids);
            }
            Some("CLOSED") if m[1] == sub => return Err(m[2].as_str().unwrap().to_owned()),
            _ => {}
        }
    }
}
