//! `[extensions.mls_gateway]`: the gateway's settings, as the seed's config file spells them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// LMDB under `[data] path`: one process, no services.
    #[default]
    Embedded,
    /// PostgreSQL (Cloud SQL), via `database_url`.
    Cloudsql,
    /// Google Firestore, via `project_id`.
    Firestore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownGroups {
    /// A 445 for a group with no known membership is accepted and served to any reader
    /// allowed to read (standard Marmot clients never announce membership).
    #[default]
    Open,
    /// Such a 445 is refused.
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MembershipSource {
    Roster,
    Giftwrap,
    Api,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Events per minute per client IP, and per authenticated pubkey too. 0 = unlimited.
    pub max_events_per_minute: u32,
    /// KeyPackages per hour per owner. 0 = unlimited.
    pub max_keypackages_per_hour: u32,
    /// Group messages (445) per minute per group and publisher. 0 = unlimited.
    pub max_group_messages_per_minute: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            max_events_per_minute: 600,
            max_keypackages_per_hour: 100,
            max_group_messages_per_minute: 600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    pub storage_backend: StorageBackend,
    /// Firestore project (env `GOOGLE_CLOUD_PROJECT` / `FIREBASE_PROJECT_ID`).
    pub project_id: Option<String>,
    /// Firestore database in that project; `None`: `(default)`.
    pub database_id: Option<String>,
    /// PostgreSQL URL for `cloudsql` (env `DATABASE_URL`). A secret: masked when printed.
    pub database_url: Option<String>,
    /// Most connections one instance opens to PostgreSQL (`cloudsql`).
    pub database_pool_size: u32,
    /// Longest a PostgreSQL statement may run, seconds; 0: the server's default.
    pub database_statement_timeout: u64,
    /// KeyPackage lifetime from receipt when it carries no expiry, seconds.
    pub keypackage_ttl: u64,
    /// Longest expiry a KeyPackage may ask for, seconds from now.
    pub keypackage_max_ttl: u64,
    /// Gift wrap (1059) retention from receipt, seconds.
    pub welcome_ttl: u64,
    /// How far in the past a gift wrap's `created_at` may be (NIP-59 backdating), seconds.
    pub giftwrap_max_backdate: u64,
    pub enable_api: bool,
    pub api_prefix: String,
    /// false: 445/446/1059 are delivered live only, never stored.
    pub enable_message_archive: bool,
    pub message_archive_ttl_days: u64,
    pub keypackage_claims: bool,
    pub max_keypackages_per_query: u32,
    pub max_keypackage_fetches_per_hour: u32,
    pub membership_sources: Vec<MembershipSource>,
    pub unknown_groups: UnknownGroups,
    /// Pubkeys (hex or npub) allowed to bootstrap any group and to use the admin API.
    pub admin_pubkeys: Vec<String>,
    pub rate_limits: RateLimits,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            storage_backend: StorageBackend::Embedded,
            project_id: None,
            database_id: None,
            database_url: None,
            database_pool_size: 16,
            database_statement_timeout: 10,
            keypackage_ttl: 7 * 86400,
            keypackage_max_ttl: 90 * 86400,
            welcome_ttl: 7 * 86400,
            giftwrap_max_backdate: 2 * 86400,
            enable_api: true,
            api_prefix: "/api/v1/mls".into(),
            enable_message_archive: true,
            message_archive_ttl_days: 30,
            keypackage_claims: false,
            max_keypackages_per_query: 2,
            max_keypackage_fetches_per_hour: 10,
            membership_sources: vec![
                MembershipSource::Roster,
                MembershipSource::Giftwrap,
                MembershipSource::Api,
            ],
            unknown_groups: UnknownGroups::Open,
            admin_pubkeys: Vec::new(),
            rate_limits: RateLimits::default(),
        }
    }
}
