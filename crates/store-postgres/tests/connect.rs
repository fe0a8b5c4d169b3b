//! The connection forms an operator uses: TLS (`sslmode=require`, rustls, the certificate
//! checked), and the key/value form with a unix socket that Cloud Run's Cloud SQL connector
//! gives (`host=/cloudsql/…`). Needs `DATABASE_URL` and what scripts/services/postgres.sh
//! exports (`PG_TEST_SSLROOTCERT`, `PG_TEST_SOCKET_DIR`); skipped with a message otherwise.

mod pg;

use mls_store::{AcceptAll, EventStore, Publisher, WriteOutcome};
use mls_store_postgres::{PostgresOptions, PostgresStore};
use std::sync::Arc;
use std::time::Duration;

fn env(name: &str) -> Option<String> {
    let v = std::env::var(name).ok().filter(|v| !v.is_empty());
    if v.is_none() {
        eprintln!("skipped: {name} is not set (scripts/services/postgres.sh sets it)");
    }
    v
}

async fn write_and_read(store: &PostgresStore) {
    let k = secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng());
    let e = mls_proto::Event::sign(&k, 1, 1, vec![], "over this connection");
    assert_eq!(
        store.write(e.clone(), Publisher::default()).await.unwrap(),
        WriteOutcome::Accepted
    );
    let filter =
        mls_proto::Filter::from_value(&serde_json::json!({"ids": [e.id.to_hex()]})).unwrap();
    let got = store
        .query(
            &[filter],
            mls_store::ReadBounds::unbounded(10),
            mls_proto::unix_now(),
            &mls_store::ReadScope::everything(),
            &|_, _| true,
        )
        .await
        .unwrap()
        .value;
    assert_eq!(got.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_checks_the_server_certificate() {
    let (Some(schema), Some(ca)) = (pg::Schema::new(), env("PG_TEST_SSLROOTCERT")) else {
        return;
    };
    let tls_url = format!("{}?sslmode=require", schema.url);
    // The test cluster's CA: the chain verifies, TLS carries the session.
    let store = PostgresStore::open(
        PostgresOptions {
            url: tls_url.clone(),
            ssl_root_cert: Some(ca.into()),
            ..schema.options()
        },
        Arc::new(AcceptAll),
        Some(Duration::from_secs(10)),
    )
    .await
    .expect("open over TLS");
    write_and_read(&store).await;
    // The public roots do not know that CA: refused, not silently unencrypted or unchecked.
    let refused = PostgresStore::open(
        PostgresOptions {
            url: tls_url,
            ssl_root_cert: None,
            ..schema.options()
        },
        Arc::new(AcceptAll),
        Some(Duration::from_secs(1)),
    )
    .await;
    let err = refused
        .err()
        .expect("an unknown CA must be refused")
        .to_string();
    assert!(err.contains("unreachable"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_form_over_a_unix_socket() {
    let (Some(schema), Some(dir)) = (pg::Schema::new(), env("PG_TEST_SOCKET_DIR")) else {
        return;
    };
    // user:password@host:port/db of the URL, re-spelled as Cloud Run's socket form.
    let rest = schema.url.split_once("://").unwrap().1;
    let (userinfo, hostpart) = rest.rsplit_once('@').unwrap();
    let (user, password) = userinfo.split_once(':').unwrap();
    let (hostport, db) = hostpart.split_once('/').unwrap();
    let port = hostport.rsplit_once(':').unwrap().1;
    let db = db.split('?').next().unwrap();
    let url = format!("host={dir} port={port} user={user} password={password} dbname={db}");
    let store = PostgresStore::open(
        PostgresOptions {
            url,
            ..schema.options()
        },
        Arc::new(AcceptAll),
        Some(Duration::from_secs(10)),
    )
    .await
    .expect("open over the unix socket");
    assert!(store.target().contains(&dir), "{}", store.target());
    // user@socket:port/db: the password is not part of what logs show.
    assert_eq!(store.target(), format!("{user}@{dir}:{port}/{db}"));
    write_and_read(&store).await;
}
