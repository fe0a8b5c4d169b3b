//! Harness for the end-to-end tests: starts the real `mls-gateway` binary on a free loopback
//! port with its own temporary data directory, and talks to it over raw WebSocket frames and
//! HTTP, so that every test sees exactly what a client on the wire would see.
//!
//! Every test starts its own relay ([`Relay::start`] / [`Relay::builder`]); the relay is killed
//! when the handle is dropped. Waits use generous timeouts and never assert durations.
//!
//! | module        | what                                                                  |
//! |---------------|-----------------------------------------------------------------------|
//! | `events.rs`   | keys, signed events, assertions on refusal prefixes                   |
//! | `relay.rs`    | the relay process: config, ports, spawn / restart / kill, its log     |
//! | `cli.rs`      | the binary's command-line tools, run to completion                    |
//! | `ws.rs`       | the NIP-01 WebSocket client ([`Ws`])                                  |
//! | `http.rs`     | HTTP through `ureq` ([`http_get`], [`request`], [`HttpResponse`])     |
//! | `pg.rs`, `firestore.rs` | the relay on PostgreSQL / the Firestore emulator (`MLS_TEST_STORE`) |
//! | `outage.rs`   | a cuttable TCP proxy between the relay and its database               |

#![allow(dead_code, clippy::result_large_err)]

pub mod firestore;
pub mod outage;
pub mod pg;

mod cli;
mod events;
mod http;
mod relay;
mod ws;

pub use cli::*;
pub use events::*;
pub use http::*;
pub use relay::*;
pub use ws::*;

use std::time::Duration;

/// How long any single expected message may take before a test gives up.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(10);
