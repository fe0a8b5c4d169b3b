//! The storage conformance suite (`mls_store::conformance`, as every backend runs it) against
//! the Firestore emulator, each test in its own project so they run in parallel. Needs
//! `FIRESTORE_EMULATOR_HOST` (scripts/test.sh starts an emulator and sets it); without it
//! every test says it was skipped.

use mls_store::conformance as suite;
use mls_store::conformance_tests;

mod emulator;

conformance_tests!(match emulator::Project::new() {
    Some(h) => h,
    None => return,
});

#[async_trait::async_trait]
impl suite::Harness for emulator::Project {
    async fn open(
        &self,
        rules: std::sync::Arc<dyn mls_store::Admission>,
    ) -> std::sync::Arc<dyn mls_store::EventStore> {
        self.store(rules).await
    }

    async fn open_other(
        &self,
        rules: std::sync::Arc<dyn mls_store::Admission>,
    ) -> std::sync::Arc<dyn mls_store::EventStore> {
        let other = emulator::Project::new().expect("FIRESTORE_EMULATOR_HOST");
        other.store(rules).await
    }

    async fn close(&self, store: std::sync::Arc<dyn mls_store::EventStore>) {
        // Dropping the last reference closes the store (drains the writer).
        assert_eq!(
            std::sync::Arc::strong_count(&store),
            1,
            "store still shared"
        );
        drop(store);
    }
}
