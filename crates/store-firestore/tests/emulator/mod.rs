//! Test helpers: a database of its own on the emulator named by `FIRESTORE_EMULATOR_HOST`
//! (a fresh project id: the emulator keeps each project apart).
#![allow(dead_code)]

use mls_store::Admission;
use mls_store_firestore::{FirestoreOptions, FirestoreStore};
use std::sync::Arc;
use std::time::Duration;

/// The emulator's address, or `None` (with a message saying the test is skipped).
pub fn emulator_host() -> Option<String> {
    match std::env::var("FIRESTORE_EMULATOR_HOST") {
        Ok(host) if !host.is_empty() => Some(host),
        _ => {
            eprintln!(
                "skipped: FIRESTORE_EMULATOR_HOST is not set (scripts/test.sh starts a Firestore emulator for the tests)"
            );
            None
        }
    }
}

/// A project of its own for one test; stores opened on it share its documents.
pub struct Project {
    pub host: String,
    pub id: String,
}

impl Project {
    pub fn new() -> Option<Project> {
        let host = emulator_host()?;
        let mut b = [0u8; 8];
        secp256k1::rand::RngCore::fill_bytes(&mut secp256k1::rand::thread_rng(), &mut b);
        Some(Project {
            host,
            id: format!("test-{}", hex::encode(b)),
        })
    }

    pub fn options(&self) -> FirestoreOptions {
        FirestoreOptions {
            emulator_host: Some(self.host.clone()),
            ..FirestoreOptions::new(self.id.clone())
        }
    }

    pub async fn store(&self, rules: Arc<dyn Admission>) -> Arc<FirestoreStore> {
        self.open(self.options(), rules).await
    }

    pub async fn open(
        &self,
        options: FirestoreOptions,
        rules: Arc<dyn Admission>,
    ) -> Arc<FirestoreStore> {
        FirestoreStore::open(options, rules, Some(Duration::from_secs(10)))
            .await
            .expect("open Firestore store")
    }
}
