#!/usr/bin/env bash
# The embedded store and PostgreSQL side by side over the same stored events: REQ/s (limit 10)
# and REQ → EOSE latency from the same relay binary and config, runs alternating between the
# two; plus how long the restore path takes to move those events into PostgreSQL
# (`mls-gateway export`, then `mls-gateway import` into an empty database). Prints mls-bench's
# records; docs/PERFORMANCE.md has the figures.
#
#   cargo build --release -p mls-gateway -p mls-bench
#   eval "$(PG_SERVER_OPTIONS='-c shared_buffers=1GB -c max_wal_size=4GB' bash scripts/services/postgres.sh start)"
#   bash scripts/bench-postgres.sh [STORED] [query options...]   # default 1000000 events
#
# STORE_DIR (default target/bench-store-$STORED) keeps the filled embedded store between runs;
# the generator's data set is deterministic, so a kept store matches the REQs. Each run of this
# script restores into a fresh database, unless REUSE_DB names one an earlier run filled.
# Relays run with NIP-42 on and rate limits off.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${DATABASE_URL:?DATABASE_URL: start scripts/services/postgres.sh first}"
BIN="${BIN:-target/release/mls-gateway}"
BENCH="${BENCH:-target/release/mls-bench}"
RUNS="${RUNS:-3}"
STORED="${1:-1000000}"
[ "$#" -gt 0 ] && shift
STORE_DIR="${STORE_DIR:-target/bench-store-$STORED}"
[ -x "$BIN" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p mls-gateway -p mls-bench" >&2; exit 1; }
PSQL="$(command -v psql || echo "${PG_TEST_BINDIR:-/usr/lib/postgresql/15/bin}/psql")"
WORK="$(mktemp -d /tmp/mls-bench-postgres-XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# The relay takes DATABASE_URL and REDIS_URL from the environment over its config file.
relay_env() { env -u DATABASE_URL -u REDIS_URL "$@"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# write_config FILE PORT STORE_TOML
write_config() {
    cat >"$1" <<EOF
[server]
host = "127.0.0.1"
port = $2
relay_url = "ws://127.0.0.1:$2"

[data]
path = "$(realpath -m "$STORE_DIR")"

[limitation]
max_subscriptions = 64
max_connections_per_ip = 0
max_reqs_per_minute = 0

[auth]
enabled = true
max_auths_per_minute_per_ip = 0
max_auths_per_minute_per_connection = 0

[extensions.mls_gateway]
$3

[extensions.mls_gateway.rate_limits]
max_events_per_minute = 0
max_keypackages_per_hour = 0
max_group_messages_per_minute = 0
EOF
}

# start_relay CONFIG: starts it, waits for /health, sets PID.
start_relay() {
    local port
    port="$(sed -n 's/^port = //p' "$1")"
    env -u DATABASE_URL -u REDIS_URL RUST_LOG=warn "$BIN" relay -c "$1" </dev/null >"$1.log" 2>&1 &
    PID="$!"
    PIDS+=("$PID")
    for _ in $(seq 1 600); do
        curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$1.log" >&2
    exit 1
}

# 1. The embedded store, filled by the generator (kept in STORE_DIR).
echo "== filling (or reusing) the embedded store in $STORE_DIR" >&2
"$BENCH" --runs 1 query --stored "$STORED" --store-dir "$STORE_DIR" --requests 1000 </dev/null >/dev/null

# 2. The same events into a fresh PostgreSQL database through the restore path.
DB="${REUSE_DB:-bench_query_$(date +%s)}"
[ -n "${REUSE_DB:-}" ] || "$PSQL" "$DATABASE_URL" -q -c "CREATE DATABASE $DB" </dev/null >/dev/null
DB_URL="$(python3 - "$DATABASE_URL" "$DB" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
PY
)"
EMB_PORT="$(free_port)"
PG_PORT="$(free_port)"
write_config "$WORK/embedded.toml" "$EMB_PORT" 'storage_backend = "embedded"'
write_config "$WORK/postgres.toml" "$PG_PORT" "storage_backend = \"cloudsql\"
database_url = \"$DB_URL\""
if [ -z "${REUSE_DB:-}" ]; then
    echo "== export from the embedded store" >&2
    start=$(date +%s.%N)
    relay_env "$BIN" export -c "$WORK/embedded.toml" >"$WORK/backup.jsonl"
    t_export=$(echo "$(date +%s.%N) - $start" | bc)
    echo "== import into PostgreSQL ($DB)" >&2
    start=$(date +%s.%N)
    relay_env "$BIN" import -c "$WORK/postgres.toml" <"$WORK/backup.jsonl" >&2
    t_import=$(echo "$(date +%s.%N) - $start" | bc)
    lines=$(($(wc -l <"$WORK/backup.jsonl") - 1))
    printf '{"scenario":"restore","stored":%s,"lines":%s,"export_s":%.1f,"import_s":%.1f,"import_lines_per_s":%.0f,"backup_mib":%s,"database_mib":%s}\n' \
        "$STORED" "$lines" "$t_export" "$t_import" "$(echo "$lines / $t_import" | bc -l)" \
        "$(($(stat -c %s "$WORK/backup.jsonl") >> 20))" \
        "$("$PSQL" "$DB_URL" -At -c "SELECT pg_database_size(current_database()) >> 20" </dev/null)"
    rm -f "$WORK/backup.jsonl"
fi

# 3. REQ/s: both relays up, runs alternating embedded / PostgreSQL.
start_relay "$WORK/embedded.toml"
EMB_PID="$PID"
start_relay "$WORK/postgres.toml"
PG_PID="$PID"
for run in $(seq 1 "$RUNS"); do
    echo "== run $run: embedded" >&2
    "$BENCH" --url "ws://127.0.0.1:$EMB_PORT" --relay-pid "$EMB_PID" --runs 1 \
        query --prefilled --stored "$STORED" "$@" </dev/null | sed -n 's/^{/{"store":"embedded",/p'
    echo "== run $run: postgres" >&2
    "$BENCH" --url "ws://127.0.0.1:$PG_PORT" --relay-pid "$PG_PID" --runs 1 \
        query --prefilled --stored "$STORED" "$@" </dev/null | sed -n 's/^{/{"store":"postgres",/p'
done
