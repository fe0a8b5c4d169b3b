//! The client side: WebSocket connections, NIP-42 authentication, and events signed ahead of
//! the timed part.

use futures_util::{SinkExt, StreamExt};
use mls_proto::Event;
use secp256k1::{Keypair, SECP256K1};
use serde_json::Value;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single setup step (connect, AUTH, EOSE) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn keys() -> Keypair {
    Keypair::new(SECP256K1, &mut secp256k1::rand::thread_rng())
}

pub fn pubkey_hex(k: &Keypair) -> String {
    hex::encode(k.x_only_public_key().0.serialize())
}

pub fn tags(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|tag| tag.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// Base64-looking content of `len` bytes (like an MLS ciphertext), different for each `seed`.
pub fn content(len: usize, seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// A random group id as Marmot puts it in `h` (32 bytes, hex).
pub fn group_id() -> String {
    hex::encode(rand_bytes())
}

fn rand_bytes() -> [u8; 32] {
    let k = keys();
    k.secret_bytes()
}

/// A kind-445 group message as MDK sends it: `h`, `encoding`, base64 content, signed by a
/// fresh ephemeral key.
pub fn group_message(group: &str, content_len: usize, seed: u64, created_at: u64) -> Event {
    Event::sign(
        &keys(),
        created_at,
        445,
        tags(&[&["h", group], &["encoding", "base64"]]),
        content(content_len, seed),
    )
}

/// Signs `n` events on all cores (signing is the expensive part of preparing a run).
pub fn sign_parallel<F>(n: usize, make: F) -> Vec<Event>
where
    F: Fn(usize) -> Event + Sync,
{
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(1)
        .min(n.max(1));
    let chunk = n.div_ceil(threads.max(1)).max(1);
    let make = &make;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|start| {
                s.spawn(move || {
                    (start..(start + chunk).min(n))
                        .map(make)
                        .collect::<Vec<Event>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signing thread"))
            .collect::<Vec<Event>>()
    })
}

pub fn event_msg(ev: &Event) -> String {
    format!("[\"EVENT\",{}]", ev.to_json())
}

/// Bytes tungstenite reads per socket read. Its default (128 KiB) is zeroed before every read
/// (`FrameCodec::read_in` resizes the buffer to its capacity): at one ~1 KB frame per read,
/// that memset was ~40% of the generator's CPU in the fan-out scenario. The relay's frames
/// are small; a larger one just takes more reads.
const READ_BUFFER: usize = 8 * 1024;

pub async fn connect(url: &str) -> Result<Ws, String> {
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let fut = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(format!("connect {url}: {e}")),
        Err(_) => Err(format!("connect {url}: timed out")),
    }
}

/// The next text frame as JSON (skipping pings), or an error on close / timeout.
pub async fn next_json(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let frame = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| "timed out waiting for the relay".to_string())?;
        match frame {
            Some(Ok(Message::Text(t))) => {
                return serde_json::from_str(t.as_str()).map_err(|e| format!("bad JSON: {e}"))
            }
            Some(Ok(Message::Close(c))) => return Err(format!("relay closed: {c:?}")),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("socket error: {e}")),
            None => return Err("socket closed".into()),
        }
    }
}

/// Connects and authenticates as `keys` (NIP-42): waits for the relay's AUTH challenge, signs
/// a kind-22242 event naming `relay_url` and the challenge, and waits for its `OK true`.
pub async fn connect_authed(url: &str, relay_url: &str, keys: &Keypair) -> Result<Ws, String> {
    let mut ws = connect(url).await?;
    authenticate(&mut ws, relay_url, keys).await?;
    Ok(ws)
}

pub async fn authenticate(ws: &mut Ws, relay_url: &str, keys: &Keypair) -> Result<(), String> {
    let challenge = loop {
        let v = next_json(ws).await?;
        if v[0] == "AUTH" {
            break v[1].as_str().unwrap_or_default().to_owned();
        }
    };
    let auth = Event::sign(
        keys,
        mls_proto::unix_now(),
        22242,
        tags(&[&["relay", relay_url], &["challenge", &challenge]]),
        "",
    );
    let id = auth.id.to_hex();
    send(ws, format!("[\"AUTH\",{}]", auth.to_json())).await?;
    loop {
        let v = next_json(ws).await?;
        if v[0] == "OK" && v[1] == id.as_str() {
            return if v[2] == true {
                Ok(())
            } else {
                Err(format!("AUTH refused: {}", v[3]))
            };
        }
    }
}

pub async fn send(ws: &mut Ws, text: String) -> Result<(), String> {
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

/// Publishes one event and waits for its OK; Err carries the refusal.
pub async fn publish(ws: &mut Ws, ev: &Event) -> Result<(), String> {
    let id = ev.id.to_hex();
    send(ws, event_msg(ev)).await?;
    loop {
        let v = next_json(ws).await?;
        if v[0] == "OK" && v[1] == id.as_str() {
            return if v[2] == true {
                Ok(())
            } else {
                Err(v[3].as_str().unwrap_or_default().to_owned())
            };
        }
    }
}

/// The id of the event inside an `["EVENT",<sub>,{"id":…` or `["OK",<id>,…` frame, found
/// without parsing the whole frame (the generator shares the CPU with the relay).
pub fn frame_event_id(text: &str) -> Option<&str> {
    let pos = text.find("\"id\":\"")?;
    text.get(pos + 6..pos + 6 + 64)
}

/// `(event id, accepted)` of an `["OK","<id>",true|false,…]` frame, without a full parse.
pub fn ok_frame(text: &str) -> Option<(&str, bool)> {
    let rest = text.strip_prefix("[\"OK\",\"")?;
    let id = rest.get(..64)?;
    let after = rest.get(64..)?.strip_prefix("\",")?;
    Some((id, after.starts_with("true")))
}

/// Opens `n` connections `concurrency` at a time, each authenticated with its own key from
/// `make_keys(i)`; returns them in order with each one's open+auth time in microseconds.
pub async fn open_many(
    url: &str,
    relay_url: &str,
    keys: &[Keypair],
    concurrency: usize,
) -> Result<Vec<(Ws, u64)>, String> {
    use futures_util::stream::{self, TryStreamExt};
    let results: Vec<(usize, Ws, u64)> = stream::iter(keys.iter().enumerate().map(Ok))
        .map_ok(|(i, k)| async move {
            let t = std::time::Instant::now();
            let ws = connect_authed(url, relay_url, k)
                .await
                .map_err(|e| format!("connection {i}: {e}"))?;
            Ok::<_, String>((i, ws, t.elapsed().as_micros() as u64))
        })
        .try_buffer_unordered(concurrency.max(1))
        .try_collect()
        .await?;
    let mut results = results;
    results.sort_by_key(|(i, _, _)| *i);
    Ok(results.into_iter().map(|(_, ws, t)| (ws, t)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_in_frames() {
        let ev = group_message("g", 16, 1, 1);
        let frame = mls_proto::relay::event("sub", &ev.to_json());
        assert_eq!(frame_event_id(&frame), Some(ev.id.to_hex().as_str()));
        assert!(ev.verify().is_ok());
        let ok = mls_proto::relay::ok(&ev.id.to_hex(), true, "");
        assert_eq!(ok_frame(&ok), Some((ev.id.to_hex().as_str(), true)));
        let ok = mls_proto::relay::ok(&ev.id.to_hex(), false, "invalid: x");
        assert_eq!(ok_frame(&ok).map(|o| o.1), Some(false));
        assert_eq!(content(100, 7).len(), 100);
    }
}
