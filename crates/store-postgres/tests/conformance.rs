//! The storage conformance suite (the same file the embedded store runs) against PostgreSQL,
//! each test in its own schema so they run in parallel. Needs `DATABASE_URL` (scripts/test.sh
//! starts a throwaway cluster and sets it); without it every test says it was skipped.

#[macro_use]
#[path = "../../store/tests/suite/mod.rs"]
mod suite;

mod pg;

conformance_tests!(match pg::Schema::new() {
    Some(h) => h,
    None => return,
});

#[async_trait::async_trait]
impl suite::Harness for pg::Schema {
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
        let other = pg::Schema::new().expect("DATABASE_URL");
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
