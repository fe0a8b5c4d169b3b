//! The MLS gateway rules (PROTOCOL.md §3–§6).

pub mod config;

pub use config::GatewayConfig;
