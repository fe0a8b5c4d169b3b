//! The gRPC client: one channel to Firestore (or the emulator), credentials the Google way,
//! and the few RPCs the store uses — all reads and writes go through `BeginTransaction`,
//! `BatchGetDocuments`, `RunQuery`, `Commit` and `Rollback` (the plain document RPCs are not
//! used, and the test emulator does not have them).
//!
//! Credentials: with `FIRESTORE_EMULATOR_HOST` the emulator is reached in plain text with the
//! emulator's `owner` token; otherwise Application Default Credentials (`gcp_auth`: the key
//! file named by `GOOGLE_APPLICATION_CREDENTIALS`, the metadata server on Cloud Run / GCE, or
//! gcloud's user credentials), refreshed as they expire.

use crate::indexes::{QueryLog, QueryShape};
use googleapis_tonic_google_firestore_v1::google::firestore::v1::{
    batch_get_documents_request, batch_get_documents_response, firestore_client::FirestoreClient,
    run_query_request, transaction_options, BatchGetDocumentsRequest, BeginTransactionRequest,
    CommitRequest, Document, RollbackRequest, RunQueryRequest, StructuredQuery, TransactionOptions,
    Write,
};
use mls_store::StoreError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

const PRODUCTION: &str = "https://firestore.googleapis.com";
const SCOPES: &[&str] = &["https://www.googleapis.com/auth/datastore"];

/// A failed RPC: its gRPC code (the writer retries `ABORTED`) and what was being done.
#[derive(Debug, Clone)]
pub(crate) struct RpcError {
    pub code: tonic::Code,
    pub text: String,
}

impl RpcError {
    pub fn new(what: &str, status: &tonic::Status) -> RpcError {
        RpcError {
            code: status.code(),
            text: format!(
                "firestore: {what}: {:?}: {}",
                status.code(),
                status.message()
            ),
        }
    }

    pub fn other(text: impl Into<String>) -> RpcError {
        RpcError {
            code: tonic::Code::Unknown,
            text: text.into(),
        }
    }

    /// Contention: the transaction may succeed when run again.
    pub fn is_aborted(&self) -> bool {
        self.code == tonic::Code::Aborted
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl From<RpcError> for StoreError {
    fn from(e: RpcError) -> StoreError {
        StoreError::Backend(e.text)
    }
}

impl From<StoreError> for RpcError {
    fn from(e: StoreError) -> RpcError {
        RpcError::other(e.to_string())
    }
}

pub(crate) type RpcResult<T> = Result<T, RpcError>;

/// RPCs sent so far, by kind (for the benchmark's "round trips per event").
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RpcCounts {
    pub begin: u64,
    pub get: u64,
    pub query: u64,
    pub commit: u64,
    pub rollback: u64,
}

#[derive(Default)]
struct Counters {
    begin: AtomicU64,
    get: AtomicU64,
    query: AtomicU64,
    commit: AtomicU64,
    rollback: AtomicU64,
}

enum Auth {
    Emulator,
    Google(Arc<dyn gcp_auth::TokenProvider>),
}

/// One database's client. Cheap to clone (the channel is shared).
#[derive(Clone)]
pub(crate) struct Client {
    grpc: FirestoreClient<Channel>,
    auth: Arc<Auth>,
    /// `projects/{project}/databases/{database}`.
    pub database: String,
    /// `{database}/documents`: the parent of every collection.
    pub documents: String,
    /// Routes requests to a non-default database.
    routing: MetadataValue<tonic::metadata::Ascii>,
    /// Longest any one RPC may take.
    pub deadline: Duration,
    queries: Option<Arc<QueryLog>>,
    counters: Arc<Counters>,
}

impl Client {
    pub fn counts(&self) -> RpcCounts {
        let c = &self.counters;
        RpcCounts {
            begin: c.begin.load(Ordering::Relaxed),
            get: c.get.load(Ordering::Relaxed),
            query: c.query.load(Ordering::Relaxed),
            commit: c.commit.load(Ordering::Relaxed),
            rollback: c.rollback.load(Ordering::Relaxed),
        }
    }

    /// A client for `project` / `database` (on the store's runtime: the channel connects
    /// lazily, so an unreachable Firestore shows up in the first RPC, not here).
    pub async fn new(
        project: &str,
        database: &str,
        emulator: Option<&str>,
        deadline: Duration,
        queries: Option<Arc<QueryLog>>,
    ) -> Result<Client, StoreError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Backend(format!("firestore: {what}: {e}"))
        };
        let (endpoint, auth) = match emulator {
            Some(host) => (
                Endpoint::from_shared(format!("http://{host}"))
                    .map_err(|e| bad("FIRESTORE_EMULATOR_HOST", &e))?,
                Auth::Emulator,
            ),
            None => {
                let provider = gcp_auth::provider().await.map_err(|e| {
                    bad(
                        "no Google credentials (GOOGLE_APPLICATION_CREDENTIALS, the metadata server or gcloud)",
                        &e,
                    )
                })?;
                (
                    Endpoint::from_static(PRODUCTION)
                        .tls_config(ClientTlsConfig::new().with_webpki_roots())
                        .map_err(|e| bad("TLS", &e))?,
                    Auth::Google(provider),
                )
            }
        };
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let database_path = format!("projects/{project}/databases/{database}");
        let routing = format!("project_id={project}&database_id={database}")
            .parse()
            .map_err(|e| bad("project_id / database_id", &e))?;
        Ok(Client {
            grpc: FirestoreClient::new(channel)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024),
            auth: Arc::new(auth),
            documents: format!("{database_path}/documents"),
            database: database_path,
            routing,
            deadline,
            queries,
            counters: Arc::default(),
        })
    }

    /// The full name of document `id` in `collection`.
    pub fn name(&self, collection: &str, id: &str) -> String {
        format!("{}/{collection}/{id}", self.documents)
    }

    async fn request<T>(&self, what: &str, message: T) -> RpcResult<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.deadline);
        let md = request.metadata_mut();
        md.insert("x-goog-request-params", self.routing.clone());
        let bearer = match &*self.auth {
            Auth::Emulator => "Bearer owner".to_string(),
            Auth::Google(provider) => {
                let token = provider
                    .token(SCOPES)
                    .await
                    .map_err(|e| RpcError::other(format!("firestore: {what}: credentials: {e}")))?;
                format!("Bearer {}", token.as_str())
            }
        };
        md.insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| RpcError::other("firestore: access token is not ASCII"))?,
        );
        Ok(request)
    }

    /// Runs `call` within the deadline, naming `what` in its error.
    async fn bounded<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> RpcResult<T> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(status)) => Err(RpcError::new(what, &status)),
            Err(_) => Err(RpcError {
                code: tonic::Code::DeadlineExceeded,
                text: format!("firestore: {what}: no answer within {:?}", self.deadline),
            }),
        }
    }

    /// Starts a transaction: read-write (locks what it reads until commit) or read-only
    /// (one consistent snapshot).
    pub async fn begin(&self, read_only: bool) -> RpcResult<Vec<u8>> {
        let mode = if read_only {
            transaction_options::Mode::ReadOnly(Default::default())
        } else {
            transaction_options::Mode::ReadWrite(Default::default())
        };
        let request = self
            .request(
                "begin transaction",
                BeginTransactionRequest {
                    database: self.database.clone(),
                    options: Some(TransactionOptions { mode: Some(mode) }),
                },
            )
            .await?;
        let mut grpc = self.grpc.clone();
        self.counters.begin.fetch_add(1, Ordering::Relaxed);
        let response = self
            .bounded("begin transaction", grpc.begin_transaction(request))
            .await?;
        Ok(response.into_inner().transaction)
    }

    /// Commits `writes` (in `transaction`, when given). Fails with `ABORTED` when the
    /// transaction lost a conflict.
    pub async fn commit(&self, transaction: Option<Vec<u8>>, writes: Vec<Write>) -> RpcResult<()> {
        let request = self
            .request(
                "commit",
                CommitRequest {
                    database: self.database.clone(),
                    writes,
                    transaction: transaction.unwrap_or_default(),
                },
            )
            .await?;
        let mut grpc = self.grpc.clone();
        self.counters.commit.fetch_add(1, Ordering::Relaxed);
        self.bounded("commit", grpc.commit(request)).await?;
        Ok(())
    }

    /// Ends a transaction without writing (errors are only logged: the transaction expires
    /// on its own).
    pub async fn rollback(&self, transaction: Vec<u8>) {
        let Ok(request) = self
            .request(
                "rollback",
                RollbackRequest {
                    database: self.database.clone(),
                    transaction,
                },
            )
            .await
        else {
            return;
        };
        let mut grpc = self.grpc.clone();
        self.counters.rollback.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.bounded("rollback", grpc.rollback(request)).await {
            tracing::debug!(error = %e, "rollback failed");
        }
    }

    /// The documents named `names` (full names), in the same order; `None` for missing ones.
    pub async fn get(
        &self,
        names: Vec<String>,
        transaction: Option<&[u8]>,
    ) -> RpcResult<Vec<Option<Document>>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let request = self
            .request(
                "read documents",
                BatchGetDocumentsRequest {
                    database: self.database.clone(),
                    documents: names.clone(),
                    mask: None,
                    consistency_selector: transaction.map(|t| {
                        batch_get_documents_request::ConsistencySelector::Transaction(t.to_vec())
                    }),
                },
            )
            .await?;
        let mut grpc = self.grpc.clone();
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        let read = async {
            let mut stream = grpc.batch_get_documents(request).await?.into_inner();
            let mut found: HashMap<String, Document> = HashMap::new();
            while let Some(item) = stream.message().await? {
                if let Some(batch_get_documents_response::Result::Found(doc)) = item.result {
                    found.insert(doc.name.clone(), doc);
                }
            }
            Ok(found)
        };
        let mut found = self.bounded("read documents", read).await?;
        Ok(names.iter().map(|n| found.remove(n)).collect())
    }

    /// The documents `query` finds in `collection` (at the database's root).
    pub async fn query(
        &self,
        mut query: StructuredQuery,
        transaction: Option<&[u8]>,
    ) -> RpcResult<Vec<Document>> {
        if let Some(log) = &self.queries {
            log.record(QueryShape::of(&query));
        }
        query.from.truncate(1);
        let request = self
            .request(
                "query",
                RunQueryRequest {
                    parent: self.documents.clone(),
                    explain_options: None,
                    query_type: Some(run_query_request::QueryType::StructuredQuery(query)),
                    consistency_selector: transaction
                        .map(|t| run_query_request::ConsistencySelector::Transaction(t.to_vec())),
                },
            )
            .await?;
        let mut grpc = self.grpc.clone();
        self.counters.query.fetch_add(1, Ordering::Relaxed);
        let read = async {
            let mut stream = grpc.run_query(request).await?.into_inner();
            let mut docs = Vec::new();
            while let Some(item) = stream.message().await? {
                if let Some(doc) = item.document {
                    docs.push(doc);
                }
            }
            Ok(docs)
        };
        self.bounded("query", read).await
    }
}
