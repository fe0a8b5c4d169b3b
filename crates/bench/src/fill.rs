//! Pre-filling a store for the query scenario.
//!
//! The data set: N events, half kind-445 group messages spread over N/100 groups (100 per
//! group), half kind-1 notes; both signed by a pool of author keys, `created_at` one second
//! apart ending now. Or, with `--mix giftwrap`, N kind-1059 gift wraps, each to one of the
//! pool's keys (never to the querying connections), `created_at` an eighth of a second apart
//! (within the gift-wrap backdating bound). Written straight into an embedded store directory (through the same
//! group-commit writer and gateway rules the relay uses), or published over the socket to a
//! relay the user runs.

use crate::client;
use mls_gateway_rules::{Gateway, GatewayConfig, RateLimits};
use mls_proto::Event;
use mls_store::embedded::{EmbeddedOptions, EmbeddedStore};
use mls_store::{EventStore, Publisher, WriteOutcome};
use secp256k1::Keypair;
use std::path::Path;
use std::sync::Arc;

/// Authors whose keys sign the data set.
pub const AUTHORS: usize = 1000;

/// What a data set of `n` events looks like, so queries can aim at it.
pub struct DataSet {
    pub authors: Vec<Keypair>,
    pub groups: Vec<String>,
    pub n: usize,
    pub content: usize,
    pub end: u64,
    /// Gift wraps to the pool instead of 445s and notes.
    pub giftwraps: bool,
}

impl DataSet {
    pub fn new(n: usize, content: usize, giftwraps: bool) -> DataSet {
        // Deterministic keys and groups, so a store filled by an earlier run can be reused.
        let authors = (0..AUTHORS)
            .map(|i| {
                let mut sk = [0u8; 32];
                sk[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
                sk[31] = 1;
                Keypair::from_seckey_slice(secp256k1::SECP256K1, &sk).expect("valid key")
            })
            .collect();
        let groups = (0..(n / 200).max(1))
            .map(|g| format!("{:064x}", g as u128 * 0x9E37_79B9_7F4A_7C15 + 1))
            .collect();
        DataSet {
            authors,
            groups,
            n,
            content,
            end: mls_proto::unix_now(),
            giftwraps,
        }
    }

    /// Event `i` of the data set.
    pub fn event(&self, i: usize) -> Event {
        let author = &self.authors[i % self.authors.len()];
        if self.giftwraps {
            let to = &self.authors[(i * 7 + 1) % self.authors.len()];
            return Event::sign(
                author,
                self.end - (self.n - i) as u64 / 8,
                1059,
                client::tags(&[&["p", &client::pubkey_hex(to)]]),
                client::content(self.content, i as u64),
            );
        }
        let created_at = self.end - (self.n - i) as u64;
        if i.is_multiple_of(2) {
            let group = &self.groups[(i / 2) % self.groups.len()];
            Event::sign(
                author,
                created_at,
                445,
                client::tags(&[&["h", group], &["encoding", "base64"]]),
                client::content(self.content, i as u64),
            )
        } else {
            Event::sign(
                author,
                created_at,
                1,
                client::tags(&[&["t", "bench"]]),
                client::content(self.content, i as u64),
            )
        }
    }
}

/// Writes the data set into an embedded store at `dir` (created if needed). Returns the
/// number of accepted events.
pub async fn fill_store(dir: &Path, data: &DataSet) -> Result<u64, String> {
    let config = GatewayConfig {
        rate_limits: RateLimits {
            max_events_per_minute: 0,
            max_keypackages_per_hour: 0,
            max_group_messages_per_minute: 0,
        },
        ..GatewayConfig::default()
    };
    let gateway = Arc::new(Gateway::new(config, true)?);
    let store = EmbeddedStore::open(dir, EmbeddedOptions::default(), gateway)
        .map_err(|e| format!("open store {}: {e}", dir.display()))?;
    let mut accepted = 0u64;
    const CHUNK: usize = 50_000;
    let mut start = 0;
    while start < data.n {
        let end = (start + CHUNK).min(data.n);
        let events = tokio::task::block_in_place(|| {
            client::sign_parallel(end - start, |j| data.event(start + j))
        });
        use futures_util::stream::{self, StreamExt};
        let outcomes: Vec<_> = stream::iter(events)
            .map(|ev| {
                let store = store.clone();
                let publisher = Publisher {
                    authed: vec![ev.pubkey],
                    operator: false,
                };
                async move { store.write(ev, publisher).await }
            })
            .buffer_unordered(4096)
            .collect()
            .await;
        for o in outcomes {
            match o {
                Ok(WriteOutcome::Accepted) | Ok(WriteOutcome::Duplicate) => accepted += 1,
                Ok(WriteOutcome::Rejected(r)) => return Err(format!("fill refused: {r}")),
                Err(e) => return Err(format!("fill write failed: {e}")),
            }
        }
        start = end;
        eprintln!("query: filled {end}/{} events", data.n);
    }
    tokio::task::block_in_place(|| store.close());
    Ok(accepted)
}
