//! Who a client is and whether this relay lets it in: NIP-42 on the WebSocket (`nip42`), NIP-98
//! on the HTTP API (`nip98`), and the pubkey allow/deny lists both apply (`Access`). Checks
//! here are pure: they take this relay's URLs and lists, never the whole relay.

pub mod nip42;
pub mod nip98;

use crate::config::Config;
use mls_proto::Hex32;

/// `[auth]`: whether clients must authenticate, and the pubkey white/blacklists, parsed once.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `auth.enabled`: only authenticated clients read and publish.
    pub auth_required: bool,
    whitelist: Vec<Hex32>,
    blacklist: Vec<Hex32>,
}

impl Access {
    pub fn from_config(config: &Config) -> Access {
        Access {
            auth_required: config.auth.enabled,
            whitelist: config.whitelist(),
            blacklist: config.blacklist(),
        }
    }

    /// May this pubkey authenticate (NIP-42, NIP-98) here? (Events a blacklisted key signed
    /// are refused in `ingest` whoever sends them: [`Access::blocks_author`].)
    pub fn pubkey_allowed(&self, pk: &Hex32) -> bool {
        !self.blacklist.contains(pk) && (self.whitelist.is_empty() || self.whitelist.contains(pk))
    }

    /// Is this event author on `auth.pubkey_blacklist`?
    pub fn blocks_author(&self, pk: &Hex32) -> bool {
        self.blacklist.contains(pk)
    }

    /// Only some pubkeys may write here (NIP-11 `restricted_writes`).
    pub fn restricts_writes(&self) -> bool {
        self.auth_required || !self.whitelist.is_empty()
    }
}
