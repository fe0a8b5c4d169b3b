//! Test helpers: a fresh schema in the database named by `DATABASE_URL`.
#![allow(dead_code)]

use mls_store::Admission;
use mls_store_postgres::{PostgresOptions, PostgresStore};
use std::sync::Arc;
use std::time::Duration;

/// The database URL, or `None` (with a message saying the test is skipped).
pub fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "skipped: DATABASE_URL is not set (scripts/test.sh starts a PostgreSQL for the tests)"
            );
            None
        }
    }
}

/// A schema of its own for one test; stores opened on it share its tables.
pub struct Schema {
    pub url: String,
    pub name: String,
}

impl Schema {
    pub fn new() -> Option<Schema> {
        let url = database_url()?;
        let mut b = [0u8; 8];
        secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut b);
        Some(Schema {
            url,
            name: format!("t_{}", hex::encode(b)),
        })
    }

    pub fn options(&self) -> PostgresOptions {
        PostgresOptions {
            pool_size: 4,
            schema: Some(self.name.clone()),
            ..PostgresOptions::new(self.url.clone())
        }
    }

    pub async fn store(&self, rules: Arc<dyn Admission>) -> Arc<PostgresStore> {
        PostgresStore::open(self.options(), rules, Some(Duration::from_secs(10)))
            .await
            .expect("open PostgreSQL store")
    }
}

impl Schema {
    /// Runs `sql` in this schema on a connection of its own (for checks the interface does
    /// not expose).
    pub async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path TO {}", self.name))
            .await
            .unwrap();
        client.query(sql, &[]).await.expect("query")
    }
}
