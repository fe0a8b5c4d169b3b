//! The writer's transaction: one Firestore read-write transaction per batch of the shared
//! writer ([`mls_store::writer`]), and the primitives the shared write path
//! ([`mls_store::write_txn`]) runs on.
//!
//! Every transaction reads `meta/store` and every committing one writes it, so the writers
//! of all instances conflict and Firestore serialises them: the rules' read-then-write of the
//! state keeps the single-writer semantics across instances, and `seq` (commit order) is
//! handed out inside that order, gapless. The contended document is written once per
//! *batch*, not per event, and carries a commit counter (`version`) that every commit bumps.
//! A transaction that lost a conflict (`ABORTED`) is reported as contention
//! ([`WriteBackend::contended`]) and the shared writer runs the batch again, up to
//! `max_attempts` times.
//!
//! Round trips: a batch's first lookups (the stream position, its events' ids and
//! tombstones) are one read ([`WriteTxn::prefetch`]). The backend remembers what it read and
//! wrote ([`Known`]), and while `meta/store` still shows the counter of its own last commit
//! (nobody else committed since), the rules' state reads and prefix scans are answered from
//! that memory.
//!
//! Firestore sends no write before COMMIT: the batch's writes are buffered here and every
//! read looks at them before asking Firestore (the shared overlay holds the rules' own
//! changes until they accept).
//!
//! Limits: at most [`MAX_WRITES`] documents per commit and [`MAX_COMMIT_BYTES`] per request
//! (Firestore's 500 writes and 10 MiB); the transaction says it is full
//! ([`WriteTxn::full`]) before it would exceed them, and a request that alone would is an
//! error naming the limit — except a state change that only deletes (the gateway's purge of
//! expired keys): its first part commits with the transaction and the rest in further
//! commits right after.

use crate::client::{Client, RpcError, RpcResult};
use crate::model::{self, from_ts, integer, Fields, EVENTS, META, META_DOC, TOMB_ADDRS, TOMB_IDS};
use crate::query::{cond, structured, Op};
use crate::state::{self, scan_merged};
use crate::Io;
use googleapis_tonic_google_firestore_v1::google::firestore::v1::{
    value::ValueType, write::Operation, Document, StructuredQuery, Value, Write,
};
use mls_proto::{Event, Hex32};
use mls_store::address::Address;
use mls_store::audience::Audience;
use mls_store::overlay::StateChanges;
use mls_store::write_txn::WriteTxn;
use mls_store::writer::WriteBackend;
use mls_store::{StateRead, StoreError, StoreResult};
use std::cell::{Cell, OnceCell, Ref, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// Most documents written by one commit (Firestore's limit), the store's own `meta` included.
pub(crate) const MAX_WRITES: usize = 500;
/// Most bytes of documents in one commit (Firestore's request limit is 10 MiB).
pub(crate) const MAX_COMMIT_BYTES: usize = 9 * 1024 * 1024;
/// Expired events removed per commit.
const PURGE_CHUNK: usize = 400;

/// Runs just before each COMMIT is sent (tests make contention with it).
pub type CommitHook = Arc<dyn Fn() + Send + Sync>;

/// Opens the writer's transactions, and what it remembers between them.
pub(crate) struct Backend {
    pub io: Arc<Io>,
    pub client: Client,
    pub max_attempts: u32,
    pub before_commit: Option<CommitHook>,
    /// What this writer knows of the committed documents (see [`Known`]).
    pub known: RefCell<Known>,
    /// The last failure was Firestore aborting the transaction (contention).
    pub aborted: Cell<bool>,
    /// The last failure said Firestore cannot be reached (no use retrying each request).
    pub unreachable: Cell<bool>,
}

/// Documents this writer read or wrote, as they stand at `meta/store`'s commit counter
/// `version`. Every committing transaction bumps that counter, so while it still reads
/// `version`, nobody else committed since and these are exact: the rules' state reads need no
/// round trip. Any other value and they are dropped. Bounded by [`KNOWN_BYTES`].
#[derive(Default)]
pub(crate) struct Known {
    version: Option<i64>,
    docs: HashMap<String, Option<Document>>,
    /// Whole state prefixes (what a prefix scan returned, kept up to date with this writer's
    /// own commits): the rules' per-event scans (rate counters) need no query either.
    scans: HashMap<Vec<u8>, ScanRows>,
    bytes: usize,
}

/// Every committed state entry under one prefix, by key.
pub(crate) type ScanRows = BTreeMap<Vec<u8>, Vec<u8>>;

/// Most bytes of documents a writer remembers between batches.
const KNOWN_BYTES: usize = 64 * 1024 * 1024;

impl Known {
    fn forget(&mut self) {
        self.version = None;
        self.docs.clear();
        self.scans.clear();
        self.bytes = 0;
    }

    fn insert_scan(&mut self, prefix: Vec<u8>, rows: ScanRows) {
        self.bytes += prefix.len() + rows.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        self.scans.insert(prefix, rows);
    }

    /// A committed state change, applied to the prefixes that hold its key.
    fn apply_state(&mut self, key: &[u8], value: Option<&[u8]>) {
        for (prefix, rows) in self.scans.iter_mut() {
            if !key.starts_with(prefix) {
                continue;
            }
            match value {
                Some(v) => {
                    self.bytes += key.len() + v.len();
                    rows.insert(key.to_vec(), v.to_vec());
                }
                None => {
                    rows.remove(key);
                }
            }
        }
    }

    fn insert(&mut self, name: String, doc: Option<Document>) {
        self.bytes += name.len()
            + doc
                .as_ref()
                .map_or(0, |d| model::document_size(&d.name, &d.fields));
        self.docs.insert(name, doc);
    }
}

impl Backend {
    /// Records why an RPC failed (the shared writer asks [`WriteBackend::contended`] next).
    fn note(&self, e: &RpcError) {
        self.aborted.set(e.is_aborted());
        self.unreachable.set(matches!(
            e.code,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ));
    }

    fn meta_name(&self) -> String {
        self.client.name(META, META_DOC)
    }

    /// Keeps what an attempt read at `version` and, when it committed (`version + 1`), what
    /// it wrote.
    fn remember(
        &self,
        version: i64,
        trusted: bool,
        reads: HashMap<String, Option<Document>>,
        scans: HashMap<Vec<u8>, ScanRows>,
        written: Option<Vec<(String, Option<Document>)>>,
    ) {
        let mut known = self.known.borrow_mut();
        if !trusted {
            known.forget();
        }
        let meta = self.meta_name();
        for (name, doc) in reads.into_iter().filter(|(n, _)| *n != meta) {
            known.insert(name, doc);
        }
        for (prefix, rows) in scans {
            known.insert_scan(prefix, rows);
        }
        known.version = Some(version);
        if let Some(written) = written {
            let state_docs = format!("{}/{}/", self.client.documents, model::STATE);
            for (name, doc) in written.into_iter().filter(|(n, _)| *n != meta) {
                if let Some(key) = name
                    .strip_prefix(&state_docs)
                    .and_then(|id| hex::decode(id).ok())
                {
                    let value = doc.as_ref().and_then(|d| state::row(d).ok()).map(|r| r.1);
                    known.apply_state(&key, value.as_deref());
                }
                known.insert(name, doc);
            }
            known.version = Some(version + 1);
        }
        if known.bytes > KNOWN_BYTES {
            known.forget();
        }
    }

    /// Deletes state keys in transactions of at most [`MAX_WRITES`] writes, each bumping the
    /// commit counter like any other commit.
    fn delete_state_keys(&self, keys: Vec<Vec<u8>>) -> RpcResult<()> {
        for chunk in keys.chunks(MAX_WRITES - 1) {
            let mut attempt = 1;
            loop {
                match self.delete_chunk(chunk) {
                    Err(e) if e.is_aborted() && attempt < self.max_attempts => attempt += 1,
                    other => {
                        other?;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn delete_chunk(&self, keys: &[Vec<u8>]) -> RpcResult<()> {
        let client = self.client.clone();
        let transaction = self
            .io
            .block_on(async move { client.begin(false).await })??;
        let meta_name = self.meta_name();
        let (client, tx, names) = (
            self.client.clone(),
            transaction.clone(),
            vec![meta_name.clone()],
        );
        let meta = self
            .io
            .block_on(async move { client.get(names, Some(&tx)).await })??
            .pop()
            .flatten();
        let (last_seq, version) = meta_position(meta.as_ref())?;
        let mut writes: Vec<Write> = keys
            .iter()
            .map(|k| Write {
                operation: Some(Operation::Delete(
                    self.client.name(model::STATE, &state::doc_id(k)),
                )),
                ..Default::default()
            })
            .collect();
        writes.push(meta_write(meta_name, last_seq, version + 1));
        let client = self.client.clone();
        self.io
            .block_on(async move { client.commit(Some(transaction), writes).await })?
    }
}

impl WriteBackend for Backend {
    type Txn<'a> = Txn<'a>;

    fn begin(&self) -> Result<Txn<'_>, String> {
        self.aborted.set(false);
        self.unreachable.set(false);
        let client = self.client.clone();
        let transaction = match self
            .io
            .block_on(async move { client.begin(false).await })
            .map_err(RpcError::from)
            .and_then(|r| r)
        {
            Ok(t) => t,
            Err(e) => {
                self.note(&e);
                return Err(e.text);
            }
        };
        Ok(Txn {
            backend: self,
            reader: Reader {
                io: &self.io,
                client: &self.client,
                transaction,
                cache: Mutex::new(HashMap::new()),
                known: self.known.borrow(),
                trust_known: Cell::new(false),
                scans: Mutex::new(HashMap::new()),
            },
            layer: Layer::default(),
            meta: OnceCell::new(),
            added: 0,
            bytes: 0,
            overflow: Vec::new(),
            failed: RefCell::new(None),
        })
    }

    fn commit(&self, txn: Txn<'_>) -> Result<(), String> {
        let failed = txn.failed.borrow_mut().take();
        if let Some(e) = failed {
            self.rollback(txn);
            return Err(e);
        }
        // Every transaction reads `meta/store` before it commits: that read is what makes
        // two instances' transactions conflict.
        let (seq_before, version) = match txn.meta() {
            Ok(m) => m,
            Err(e) => {
                self.rollback(txn);
                return Err(e.to_string());
            }
        };
        let Txn {
            reader,
            layer,
            added,
            overflow,
            ..
        } = txn;
        let writes = into_writes(&self.client, layer, seq_before + added, version);
        let committed = !writes.is_empty();
        let written: Vec<(String, Option<Document>)> = writes
            .iter()
            .filter_map(|w| match &w.operation {
                Some(Operation::Update(d)) => Some((d.name.clone(), Some(d.clone()))),
                Some(Operation::Delete(name)) => Some((name.clone(), None)),
                _ => None,
            })
            .collect();
        let transaction = reader.transaction.clone();
        if committed {
            if let Some(hook) = &self.before_commit {
                hook();
            }
            let client = self.client.clone();
            let result = self
                .io
                .block_on(async move { client.commit(Some(transaction), writes).await })
                .map_err(RpcError::from)
                .and_then(|r| r);
            if let Err(e) = result {
                self.note(&e);
                return Err(e.text);
            }
        } else {
            let client = self.client.clone();
            let _ = self
                .io
                .block_on(async move { client.rollback(transaction).await });
        }
        let trusted = reader.trust_known.get();
        let reads = std::mem::take(&mut *crate::lock(&reader.cache));
        let scans = std::mem::take(&mut *crate::lock(&reader.scans));
        drop(reader); // releases the borrow of `known`
        self.remember(version, trusted, reads, scans, committed.then_some(written));
        if !overflow.is_empty() {
            self.known.borrow_mut().forget();
            // The transaction is committed and its requests are answered as such; deleting
            // is idempotent and the gateway's purge runs again, so what fails here is only
            // logged.
            if let Err(e) = self.delete_state_keys(overflow) {
                tracing::error!(error = %e, "a large state deletion was committed in part");
            }
        }
        Ok(())
    }

    fn rollback(&self, txn: Txn<'_>) -> bool {
        let transaction = txn.reader.transaction.clone();
        drop(txn);
        let client = self.client.clone();
        let _ = self
            .io
            .block_on(async move { client.rollback(transaction).await });
        !self.unreachable.get()
    }

    fn contended(&self) -> bool {
        self.aborted.get()
    }

    fn max_attempts(&self) -> u32 {
        self.max_attempts
    }
}

/// The transaction's reads of what is committed (each document read once per attempt).
pub(crate) struct Reader<'a> {
    io: &'a Io,
    client: &'a Client,
    transaction: Vec<u8>,
    cache: Mutex<HashMap<String, Option<Document>>>,
    /// The backend's [`Known`] documents, consulted once `meta/store` showed them current
    /// (`trust_known`).
    known: Ref<'a, Known>,
    trust_known: Cell<bool>,
    /// Whole prefixes this attempt scanned (at its version).
    scans: Mutex<HashMap<Vec<u8>, ScanRows>>,
}

impl Reader<'_> {
    fn doc(&self, name: &str) -> RpcResult<Option<Document>> {
        if let Some(d) = crate::lock(&self.cache).get(name) {
            return Ok(d.clone());
        }
        if self.trust_known.get() {
            if let Some(d) = self.known.docs.get(name) {
                return Ok(d.clone());
            }
        }
        let client = self.client.clone();
        let tx = self.transaction.clone();
        let names = vec![name.to_string()];
        let doc = self
            .io
            .block_on(async move { client.get(names, Some(&tx)).await })??
            .pop()
            .flatten();
        crate::lock(&self.cache).insert(name.to_string(), doc.clone());
        Ok(doc)
    }

    /// Every committed entry under `prefix`, if this attempt or (when current) the writer
    /// already has them.
    fn cached_scan(&self, prefix: &[u8]) -> Option<ScanRows> {
        if let Some(rows) = crate::lock(&self.scans).get(prefix) {
            return Some(rows.clone());
        }
        if self.trust_known.get() {
            return self.known.scans.get(prefix).cloned();
        }
        None
    }

    /// Reads `names` in one round trip into the cache.
    fn prefetch(&self, names: Vec<String>) -> RpcResult<()> {
        let names: Vec<String> = {
            let cache = crate::lock(&self.cache);
            names
                .into_iter()
                .filter(|n| !cache.contains_key(n))
                .collect()
        };
        for chunk in names.chunks(300) {
            let client = self.client.clone();
            let tx = self.transaction.clone();
            let chunk = chunk.to_vec();
            let asked = chunk.clone();
            let docs = self
                .io
                .block_on(async move { client.get(chunk, Some(&tx)).await })??;
            let mut cache = crate::lock(&self.cache);
            for (name, doc) in asked.into_iter().zip(docs) {
                cache.insert(name, doc);
            }
        }
        Ok(())
    }

    fn query(&self, query: StructuredQuery) -> RpcResult<Vec<Document>> {
        let client = self.client.clone();
        let tx = self.transaction.clone();
        self.io
            .block_on(async move { client.query(query, Some(&tx)).await })?
    }
}

/// Buffered changes: documents by name (`None`: deleted) and state keys.
#[derive(Default)]
struct Layer {
    docs: HashMap<String, Option<HashMap<String, Value>>>,
    state: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// One batch's transaction: the committed documents as the transaction reads them, under the
/// batch's buffered writes.
pub(crate) struct Txn<'a> {
    backend: &'a Backend,
    reader: Reader<'a>,
    layer: Layer,
    /// `meta/store` as this transaction read it: the stream position and the commit counter.
    meta: OnceCell<(i64, i64)>,
    /// `seq`s handed out by this transaction.
    added: i64,
    /// Bytes of the documents the batch writes.
    bytes: usize,
    /// State keys a too-large deletion removes after the commit, in further commits.
    overflow: Vec<Vec<u8>>,
    /// The first failed read: the rules may have turned it into a refusal, so the
    /// transaction must not commit (a conflict is run again rather than answered).
    failed: RefCell<Option<String>>,
}

fn too_many_writes(writes: usize) -> StoreError {
    StoreError::Backend(format!(
        "this change needs more than {writes} document writes in one commit; Firestore commits \
         at most {MAX_WRITES} writes and 10 MiB"
    ))
}

impl Txn<'_> {
    fn client(&self) -> &Client {
        self.reader.client
    }

    /// `r`, with a failure recorded (see `failed`).
    fn rpc<T>(&self, r: RpcResult<T>) -> StoreResult<T> {
        r.map_err(|e| {
            self.backend.note(&e);
            self.failed.borrow_mut().get_or_insert(e.text.clone());
            StoreError::Backend(e.text)
        })
    }

    /// `meta/store` as this transaction reads it (read once); when it shows the backend's
    /// own last commit, what the backend remembers is current.
    fn meta(&self) -> StoreResult<(i64, i64)> {
        if let Some(m) = self.meta.get() {
            return Ok(*m);
        }
        let doc = self.rpc(self.reader.doc(&self.backend.meta_name()))?;
        let m = self.rpc(meta_position(doc.as_ref()))?;
        if self.reader.known.version == Some(m.1) {
            self.reader.trust_known.set(true);
        }
        Ok(*self.meta.get_or_init(|| m))
    }

    fn writes(&self) -> usize {
        self.layer.docs.len() + self.layer.state.len()
    }

    /// The document `name` as this transaction sees it.
    fn doc(&self, name: &str) -> StoreResult<Option<HashMap<String, Value>>> {
        if let Some(d) = self.layer.docs.get(name) {
            return Ok(d.clone());
        }
        Ok(self.rpc(self.reader.doc(name))?.map(|d| d.fields))
    }

    fn put_doc(&mut self, name: String, fields: Option<HashMap<String, Value>>) -> StoreResult<()> {
        if !self.layer.docs.contains_key(&name) && self.writes() + 2 > MAX_WRITES {
            return Err(too_many_writes(MAX_WRITES - 1));
        }
        self.bytes += fields
            .as_ref()
            .map_or(name.len(), |f| model::document_size(&name, f));
        self.layer.docs.insert(name, fields);
        Ok(())
    }

    fn event_name(&self, id: &Hex32) -> String {
        self.client().name(EVENTS, &id.to_hex())
    }

    /// The event in the document `name` with `fields`: its `seq` and itself.
    fn parse_event(name: &str, fields: HashMap<String, Value>) -> StoreResult<(i64, Event)> {
        let doc = Document {
            name: name.to_string(),
            fields,
            ..Default::default()
        };
        let (seq, stored) = model::stored_event(&doc)?;
        Ok((seq, stored.event))
    }

    fn load_event(&self, id: &Hex32) -> StoreResult<Option<Event>> {
        let name = self.event_name(id);
        match self.doc(&name)? {
            None => Ok(None),
            Some(fields) => Ok(Some(Self::parse_event(&name, fields)?.1)),
        }
    }

    /// The event stored at the address `addr` (hex): its id and `created_at`.
    fn addr_holder(&self, addr: &str) -> StoreResult<Option<(Hex32, u64)>> {
        let is_at = |f: &HashMap<String, Value>| {
            matches!(f.get("addr").and_then(|v| v.value_type.as_ref()),
                Some(ValueType::StringValue(s)) if s == addr)
        };
        // Buffered versions first (the newest writes), then what Firestore holds unless a
        // buffered change replaced or removed it.
        for (name, fields) in &self.layer.docs {
            if let Some(f) = fields {
                if name.contains("/events/") && is_at(f) {
                    return Ok(Some(self.rpc(holder(name, f))?));
                }
            }
        }
        let found = self.rpc(self.reader.query(structured(
            EVENTS,
            vec![cond("addr", Op::Equal, model::string(addr))],
            None,
            Some(4),
        )))?;
        for doc in found {
            if let Some(f) = self.doc(&doc.name)? {
                if is_at(&f) {
                    return Ok(Some(self.rpc(holder(&doc.name, &f))?));
                }
            }
        }
        Ok(None)
    }

    fn addr_tombstone_until(&self, addr: &str) -> StoreResult<Option<u64>> {
        let name = self.client().name(TOMB_ADDRS, addr);
        Ok(match self.doc(&name)? {
            None => None,
            Some(fields) => {
                let doc = Document {
                    name,
                    fields,
                    ..Default::default()
                };
                Some(from_ts(Fields(&doc).int("until")?))
            }
        })
    }
}

impl StateRead for Txn<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if let Some(v) = self.layer.state.get(key) {
            return Ok(v.clone());
        }
        if mls_store::overlay::state_key_problem(key).is_some() {
            return Ok(None);
        }
        let name = self.client().name(model::STATE, &state::doc_id(key));
        match self.rpc(self.reader.doc(&name))? {
            Some(d) => Ok(Some(state::row(&d)?.1)),
            None => Ok(None),
        }
    }

    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        // The batch's buffered changes under the prefix.
        let merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = self
            .layer
            .state
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(rows) = self.reader.cached_scan(prefix) {
            let mut page = |start: Vec<u8>, end: Option<Vec<u8>>| -> StoreResult<state::Rows> {
                Ok(rows
                    .range(start..)
                    .take_while(|(k, _)| end.as_ref().is_none_or(|e| k < &e))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect())
            };
            return scan_merged(prefix, from, &merged, &mut page, f);
        }
        // A walk of the whole prefix that fits one page is the whole prefix: kept.
        let whole = from <= prefix;
        let mut complete: Option<state::Rows> = None;
        let mut first = true;
        let mut page = |start: Vec<u8>, end: Option<Vec<u8>>| -> StoreResult<state::Rows> {
            let client = self.reader.client.clone();
            let tx = self.reader.transaction.clone();
            let rows = self
                .reader
                .io
                .block_on(async move { state::scan_page(&client, start, end, Some(&tx)).await })
                .map_err(RpcError::from)
                .and_then(|r| r);
            let rows = self.rpc(rows)?;
            if first && whole && (rows.len() as i32) < state::SCAN_PAGE {
                complete = Some(rows.clone());
            }
            first = false;
            Ok(rows)
        };
        scan_merged(prefix, from, &merged, &mut page, f)?;
        if let Some(rows) = complete {
            crate::lock(&self.reader.scans).insert(prefix.to_vec(), rows.into_iter().collect());
        }
        Ok(())
    }
}

impl WriteTxn for Txn<'_> {
    fn state(&self) -> &dyn StateRead {
        self
    }

    fn contains(&self, id: &Hex32) -> StoreResult<bool> {
        Ok(self.doc(&self.event_name(id))?.is_some())
    }

    fn load(&self, id: &Hex32) -> StoreResult<Option<Event>> {
        self.load_event(id)
    }

    fn version_at(&self, address: &Address) -> StoreResult<Option<(u64, Hex32)>> {
        Ok(self
            .addr_holder(&hex::encode(&address.key))?
            .map(|(id, created_at)| (created_at, id)))
    }

    fn address_deleted_until(&self, address: &Address) -> StoreResult<Option<u64>> {
        self.addr_tombstone_until(&hex::encode(&address.key))
    }

    fn id_deleters(&self, id: &Hex32) -> StoreResult<Vec<Hex32>> {
        let name = self.client().name(TOMB_IDS, &id.to_hex());
        Ok(match self.doc(&name)? {
            None => Vec::new(),
            Some(fields) => {
                let doc = Document {
                    name,
                    fields,
                    ..Default::default()
                };
                Fields(&doc)
                    .strings("deleters")?
                    .iter()
                    .filter_map(|d| Hex32::from_hex(d))
                    .collect()
            }
        })
    }

    fn insert(
        &mut self,
        ev: &Event,
        received_at: u64,
        expires_at: Option<u64>,
        audience: &Audience,
    ) -> StoreResult<()> {
        let seq = self.meta()?.0 + self.added + 1;
        let mut fields = model::event_fields(ev, &ev.to_json(), seq, received_at, expires_at);
        fields.insert("audience".into(), model::audience_value(audience));
        let name = self.event_name(&ev.id);
        let size = model::document_size(&name, &fields);
        if size > model::MAX_DOCUMENT_BYTES {
            // The store checks the size before the writer; only a large audience gets here.
            return Err(StoreError::Backend(format!(
                "event too large to store: {size} bytes as a Firestore document (JSON, \
                 indexed tags and audience), at most {}",
                model::MAX_DOCUMENT_BYTES
            )));
        }
        self.put_doc(name, Some(fields))?;
        self.added += 1;
        Ok(())
    }

    /// At most [`MAX_WRITES`] per call: the refresh that asks rewrites each event it gets
    /// and stops, with more to do, once the transaction is full (at 400 writes), so a
    /// shorter page than it asked for is never taken for the end.
    fn events_after(&self, after: u64, max: usize) -> StoreResult<Vec<(u64, Event)>> {
        let max = max.min(MAX_WRITES);
        let limit = i32::try_from(max).unwrap_or(i32::MAX);
        let found = self.rpc(self.reader.query(structured(
            EVENTS,
            vec![cond("seq", Op::GreaterThan, integer(model::ts(after)))],
            Some(("seq", false)),
            Some(limit),
        )))?;
        let mut out: BTreeMap<i64, Event> = BTreeMap::new();
        // As the transaction sees them: the batch may have removed or rewritten some, and
        // stored others.
        for doc in found {
            if let Some(fields) = self.doc(&doc.name)? {
                let (seq, ev) = Self::parse_event(&doc.name, fields)?;
                out.insert(seq, ev);
            }
        }
        for (name, fields) in &self.layer.docs {
            if let (true, Some(fields)) = (name.contains("/events/"), fields) {
                let (seq, ev) = Self::parse_event(name, fields.clone())?;
                out.insert(seq, ev);
            }
        }
        Ok(out
            .into_iter()
            .filter(|(seq, _)| from_ts(*seq) > after)
            .take(max)
            .map(|(seq, ev)| (from_ts(seq), ev))
            .collect())
    }

    fn set_audience(&mut self, ev: &Event, audience: &Audience) -> StoreResult<()> {
        let name = self.event_name(&ev.id);
        if let Some(mut fields) = self.doc(&name)? {
            fields.insert("audience".into(), model::audience_value(audience));
            self.put_doc(name, Some(fields))?;
        }
        Ok(())
    }

    fn remove(&mut self, id: &Hex32) -> StoreResult<bool> {
        let name = self.event_name(id);
        if self.doc(&name)?.is_none() {
            return Ok(false);
        }
        self.put_doc(name, None)?;
        Ok(true)
    }

    fn put_id_tombstone(&mut self, id: &Hex32, deleter: &Hex32) -> StoreResult<()> {
        let mut deleters = self.id_deleters(id)?;
        if deleters.contains(deleter) {
            return Ok(());
        }
        deleters.push(*deleter);
        deleters.sort_unstable();
        let fields = HashMap::from([
            ("id".to_string(), model::string(id.to_hex())),
            (
                "deleters".to_string(),
                model::array(deleters.iter().map(|d| model::string(d.to_hex())).collect()),
            ),
        ]);
        let name = self.client().name(TOMB_IDS, &id.to_hex());
        self.put_doc(name, Some(fields))
    }

    fn put_address_tombstone(&mut self, address: &Address, until: u64) -> StoreResult<()> {
        let key = hex::encode(&address.key);
        let until = match self.addr_tombstone_until(&key)? {
            Some(old) => old.max(until),
            None => until,
        };
        let fields = HashMap::from([
            ("key".to_string(), model::string(key.clone())),
            ("kind".to_string(), integer(i64::from(address.kind))),
            ("pubkey".to_string(), model::string(address.owner.to_hex())),
            ("d".to_string(), model::string(address.d.clone())),
            ("until".to_string(), integer(model::ts(until))),
        ]);
        let name = self.client().name(TOMB_ADDRS, &key);
        self.put_doc(name, Some(fields))
    }

    fn apply_state(&mut self, changes: StateChanges) -> StoreResult<()> {
        let new_keys = changes
            .keys()
            .filter(|k| !self.layer.state.contains_key(*k))
            .count();
        if self.writes() + new_keys + 1 > MAX_WRITES {
            if changes.values().any(Option::is_some) {
                return Err(too_many_writes(self.writes() + new_keys));
            }
            // Deletions only (the gateway's purge of expired keys): what fits commits with
            // the transaction, the rest right after it (deleting is idempotent; the one
            // change that is not atomic here, see docs/FIRESTORE.md). The transaction then
            // takes no more requests.
            let room = (MAX_WRITES - 1).saturating_sub(self.writes());
            for (i, key) in changes.into_keys().enumerate() {
                if i < room {
                    self.layer.state.insert(key, None);
                } else {
                    self.overflow.push(key);
                }
            }
            return Ok(());
        }
        for (key, value) in changes {
            self.bytes += 2 * key.len() + value.as_ref().map_or(0, Vec::len) + 64;
            self.layer.state.insert(key, value);
        }
        Ok(())
    }

    fn purge_expired(&mut self, now: u64, max: usize) -> StoreResult<(u64, bool)> {
        let room = (MAX_WRITES - 1).saturating_sub(self.writes());
        let chunk = max.min(PURGE_CHUNK).min(room).max(1);
        let found = self.rpc(self.reader.query(structured(
            EVENTS,
            vec![cond(
                "expires_at",
                Op::LessThanOrEqual,
                integer(model::ts(now)),
            )],
            Some(("expires_at", false)),
            Some(chunk as i32),
        )))?;
        let more = found.len() == chunk;
        let mut removed = 0;
        for doc in found {
            if self.doc(&doc.name)?.is_some() {
                self.put_doc(doc.name, None)?;
                removed += 1;
            }
        }
        Ok((removed, more))
    }

    fn last_seq(&self) -> StoreResult<u64> {
        if let Some(e) = self.failed.borrow().as_ref() {
            return Err(StoreError::Backend(e.clone()));
        }
        Ok(from_ts(self.meta()?.0 + self.added))
    }

    /// One read for the stream position and, for every event of the batch, its document,
    /// its id tombstone and its address tombstone; what the backend already knows is read
    /// only if someone else committed since (the counter in `meta/store` says).
    fn prefetch(&mut self, events: &[&Event]) -> StoreResult<()> {
        let meta_name = self.backend.meta_name();
        let mut names = vec![meta_name.clone()];
        for ev in events {
            let id = ev.id.to_hex();
            names.push(self.client().name(EVENTS, &id));
            names.push(self.client().name(TOMB_IDS, &id));
            if let Some(address) = Address::of(ev) {
                names.push(self.client().name(TOMB_ADDRS, &hex::encode(&address.key)));
            }
        }
        let known = &self.reader.known;
        let (unknown, remembered): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| {
            *n == meta_name || known.version.is_none() || !known.docs.contains_key(n)
        });
        self.rpc(self.reader.prefetch(unknown))?;
        self.meta()?;
        if !self.reader.trust_known.get() {
            self.rpc(self.reader.prefetch(remembered))?;
        }
        Ok(())
    }

    fn full(&self) -> bool {
        !self.overflow.is_empty()
            || self.writes() >= MAX_WRITES * 4 / 5
            || self.bytes >= MAX_COMMIT_BYTES / 2
    }
}

/// Every buffered change as a Firestore write, and the commit stream's position.
fn into_writes(client: &Client, layer: Layer, last_seq: i64, version: i64) -> Vec<Write> {
    let mut writes = Vec::with_capacity(layer.docs.len() + layer.state.len() + 1);
    let update = |name: String, fields: HashMap<String, Value>| Write {
        operation: Some(Operation::Update(Document {
            name,
            fields,
            ..Default::default()
        })),
        ..Default::default()
    };
    let delete = |name: String| Write {
        operation: Some(Operation::Delete(name)),
        ..Default::default()
    };
    let mut docs: Vec<_> = layer.docs.into_iter().collect();
    docs.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, fields) in docs {
        writes.push(match fields {
            Some(f) => update(name, f),
            None => delete(name),
        });
    }
    for (key, value) in layer.state {
        let name = client.name(model::STATE, &state::doc_id(&key));
        writes.push(match value {
            Some(v) => update(name, state::fields(&key, &v)),
            None => delete(name),
        });
    }
    if !writes.is_empty() {
        writes.push(meta_write(
            client.name(META, META_DOC),
            last_seq,
            version + 1,
        ));
    }
    writes
}

/// The commit stream's position and the commit counter in `meta/store` (0, 0 when new).
fn meta_position(meta: Option<&Document>) -> RpcResult<(i64, i64)> {
    Ok(match meta {
        Some(doc) => (
            Fields(doc).int("last_seq")?,
            Fields(doc).opt_int("version")?.unwrap_or(0),
        ),
        None => (0, 0),
    })
}

fn meta_write(name: String, last_seq: i64, version: i64) -> Write {
    Write {
        operation: Some(Operation::Update(Document {
            name,
            fields: HashMap::from([
                ("last_seq".to_string(), integer(last_seq)),
                ("version".to_string(), integer(version)),
            ]),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn holder(name: &str, f: &HashMap<String, Value>) -> RpcResult<(Hex32, u64)> {
    let doc = Document {
        name: name.to_string(),
        fields: f.clone(),
        ..Default::default()
    };
    let key = Fields(&doc).str("order_key")?.to_string();
    let id = Hex32::from_hex(model::doc_id(name))
        .ok_or_else(|| RpcError::other(format!("{name}: document id is not an event id")))?;
    let inverted = u64::from_str_radix(key.get(..16).unwrap_or(""), 16)
        .map_err(|_| RpcError::other(format!("{name}: bad order_key")))?;
    Ok((id, u64::MAX - inverted))
}
