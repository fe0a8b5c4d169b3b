// A loopback-only Firestore emulator for the tests, on the in-memory state of the npm package
// @firestore-emulator/server (pinned by scripts/services/firestore.sh).
//
// The package's own server binds every interface, gives every transaction the same id and
// applies a commit's writes one by one with no check of what the transaction read. This
// launcher serves the RPCs the relay uses (BeginTransaction, BatchGetDocuments, RunQuery,
// Commit, Rollback) over that same state, on 127.0.0.1 only, with what the relay's promises
// rest on:
//  - a commit is atomic: every precondition is checked before any write is applied;
//  - transactions are optimistic: a read-write transaction whose documents (or a collection
//    it queried) changed after it read them gets ABORTED at commit, as contention does on
//    production Firestore.
//
// Usage: node firestore-emulator.js PORT [PORT_FILE]   (PORT 0: any free port, written to
// PORT_FILE). Prints "listening on 127.0.0.1:PORT" once it serves.
"use strict";

const grpc = require("@grpc/grpc-js");
const { FirestoreState } = require("@firestore-emulator/server");
const v1 = require("@firestore-emulator/proto/dist/google/firestore/v1/firestore");
const { Empty } = require("@firestore-emulator/proto/dist/google/protobuf/empty");
const crypto = require("node:crypto");
const fs = require("node:fs");

const state = new FirestoreState();
/** Writes seen per document path and per collection path (for the optimistic check). */
const docVersion = new Map();
const collectionVersion = new Map();
/** Open transactions by id (hex): what each one read, at which version. */
const transactions = new Map();

const collectionOf = (path) => path.slice(0, path.lastIndexOf("/"));
const version = (map, key) => map.get(key) || 0;
const bump = (map, key) => map.set(key, version(map, key) + 1);

function timestamp(date) {
  const ms = date.getTime();
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

function fail(callbackOrCall, code, message) {
  const err = { code, message, details: message };
  if (typeof callbackOrCall === "function") {
    callbackOrCall(err, null);
  } else {
    callbackOrCall.emit("error", err);
  }
}

function newTransaction(readOnly) {
  const id = crypto.randomBytes(16);
  transactions.set(id.toString("hex"), {
    readOnly,
    docs: new Map(),
    collections: new Map(),
    started: Date.now(),
  });
  return id;
}

function transactionOf(bytes) {
  if (!bytes || bytes.length === 0) return null;
  return transactions.get(Buffer.from(bytes).toString("hex")) || null;
}

function guarded(name, handler) {
  return (call, callback) => {
    try {
      handler(call, callback);
    } catch (err) {
      console.error(`${name}:`, err);
      const code = err && typeof err.code === "number" ? err.code : grpc.status.INTERNAL;
      fail(callback || call, code, `${name}: ${err && err.message}`);
    }
  };
}

/** What a write needs of the document as it stands (after the earlier writes of its commit). */
function checkPrecondition(write, exists) {
  if (!write.has_current_document || !write.current_document.has_exists) return null;
  const path = write.has_delete ? write.delete : write.update.name;
  if (write.current_document.exists && !exists) {
    return [grpc.status.NOT_FOUND, `no entity to update: ${path}`];
  }
  if (!write.current_document.exists && exists) {
    return [grpc.status.ALREADY_EXISTS, `entity already exists: ${path}`];
  }
  return null;
}

const service = {
  BeginTransaction: guarded("BeginTransaction", (call, callback) => {
    const readOnly = call.request.has_options && call.request.options.has_read_only;
    callback(null, v1.BeginTransactionResponse.fromObject({ transaction: newTransaction(readOnly) }));
  }),

  Rollback: guarded("Rollback", (call, callback) => {
    transactions.delete(Buffer.from(call.request.transaction).toString("hex"));
    callback(null, Empty.fromObject({}));
  }),

  BatchGetDocuments: guarded("BatchGetDocuments", (call) => {
    let tx = transactionOf(call.request.transaction);
    if (call.request.has_transaction && !tx) {
      return fail(call, grpc.status.INVALID_ARGUMENT, "unknown or expired transaction");
    }
    const readTime = timestamp(new Date());
    if (call.request.has_new_transaction) {
      const id = newTransaction(call.request.new_transaction.has_read_only);
      tx = transactionOf(id);
      call.write(v1.BatchGetDocumentsResponse.fromObject({ transaction: id }));
    }
    for (const path of call.request.documents) {
      const doc = state.getDocument(path);
      if (tx && !tx.docs.has(path)) tx.docs.set(path, version(docVersion, path));
      call.write(
        v1.BatchGetDocumentsResponse.fromObject(
          doc.metadata.hasExist
            ? { found: doc.toV1DocumentObject(), read_time: readTime }
            : { missing: path, read_time: readTime },
        ),
      );
    }
    call.end();
  }),

  RunQuery: guarded("RunQuery", (call) => {
    const tx = transactionOf(call.request.transaction);
    if (call.request.has_transaction && !tx) {
      return fail(call, grpc.status.INVALID_ARGUMENT, "unknown or expired transaction");
    }
    const query = call.request.structured_query;
    const collection = `${call.request.parent}/${query.from[0].collection_id}`;
    if (tx && !tx.collections.has(collection)) {
      tx.collections.set(collection, version(collectionVersion, collection));
    }
    const results = state.v1Query(call.request.parent, query);
    const readTime = timestamp(new Date());
    if (results.length === 0) {
      call.write(v1.RunQueryResponse.fromObject({ done: true, read_time: readTime }));
    }
    results.forEach((doc, i) => {
      call.write(
        v1.RunQueryResponse.fromObject({
          document: doc.toV1DocumentObject(),
          read_time: readTime,
          done: i === results.length - 1,
        }),
      );
    });
    call.end();
  }),

  Commit: guarded("Commit", (call, callback) => {
    const key = Buffer.from(call.request.transaction || []).toString("hex");
    const tx = key ? transactions.get(key) : null;
    if (key && !tx) {
      return fail(callback, grpc.status.INVALID_ARGUMENT, "unknown or expired transaction");
    }
    if (tx) {
      transactions.delete(key);
      for (const [path, seen] of tx.docs) {
        if (version(docVersion, path) !== seen) {
          return fail(callback, grpc.status.ABORTED, `Transaction lock timeout: ${path} was written by another transaction`);
        }
      }
      for (const [collection, seen] of tx.collections) {
        if (version(collectionVersion, collection) !== seen) {
          return fail(callback, grpc.status.ABORTED, `Transaction lock timeout: ${collection} was written by another transaction`);
        }
      }
    }
    // All or nothing: preconditions first, against the document as the earlier writes of
    // this same commit leave it.
    const exists = new Map();
    for (const write of call.request.writes) {
      const path = write.has_delete ? write.delete : write.update.name;
      const now = exists.has(path) ? exists.get(path) : state.getDocument(path).metadata.hasExist;
      const refused = checkPrecondition(write, now);
      if (refused) return fail(callback, refused[0], refused[1]);
      exists.set(path, !write.has_delete);
    }
    const date = new Date();
    const results = call.request.writes.map((write) => {
      const path = write.has_delete ? write.delete : write.update.name;
      bump(docVersion, path);
      bump(collectionVersion, collectionOf(path));
      return state.writeV1Document(date, write).toObject();
    });
    callback(null, v1.CommitResponse.fromObject({ commit_time: timestamp(date), write_results: results }));
  }),
};

// Transactions left open by a client that went away expire, as on Firestore (270 s).
setInterval(() => {
  const cutoff = Date.now() - 270_000;
  for (const [id, tx] of transactions) if (tx.started < cutoff) transactions.delete(id);
}, 30_000).unref();

const port = Number(process.argv[2] || 0);
const portFile = process.argv[3];
const server = new grpc.Server({ "grpc.max_receive_message_length": 64 * 1024 * 1024 });
server.addService(v1.UnimplementedFirestoreService.definition, service);
server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(`cannot listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  }
  if (portFile) fs.writeFileSync(portFile, `${bound}\n`);
  console.log(`listening on 127.0.0.1:${bound}`);
});
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.forceShutdown();
    process.exit(0);
  });
}
