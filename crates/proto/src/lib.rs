//! Nostr wire model for the MLS gateway: events, filters, client and relay messages, kind
//! classes, canonical ids and BIP-340 signature checks.
//!
//! No I/O and no async: everything here is a pure function of its input, so it can be fuzzed
//! and used from every other crate.

mod event;
mod filter;
mod hex32;
mod keys;
mod message;

pub use event::{Event, EventError, KindClass, Tag};
pub use filter::{Filter, FilterError};
pub use hex32::{to_lower_hex, Hex32, Hex64};
pub use keys::{parse_pubkey, short_pubkey};
pub use message::{relay, ClientMessage, MessageError};

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
