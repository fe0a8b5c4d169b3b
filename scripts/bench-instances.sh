#!/usr/bin/env bash
# Cross-instance fan-out: the same fan-out benchmark against 1 relay instance and against 3
# instances sharing one PostgreSQL database, with subscribers and publishers spread over the
# instances (so most deliveries cross the bus), over PostgreSQL NOTIFY and, when REDIS_URL is
# set, over Redis. Prints mls-bench's records; docs/PERFORMANCE.md has the figures.
#
#   cargo build --release -p mls-gateway -p mls-bench
#   eval "$(bash scripts/services/postgres.sh start)"; eval "$(bash scripts/services/redis.sh start)"
#   bash scripts/bench-instances.sh [fanout options...]   # default: 300 subscribers, 300 events at 50/s
#
# Each setup gets a fresh database. Relays run with NIP-42 on, rate limits off, and one public
# URL (`relay_url`) shared by the instances, as behind a load balancer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${DATABASE_URL:?DATABASE_URL: start scripts/services/postgres.sh first}"
BIN="${BIN:-target/release/mls-gateway}"
BENCH="${BENCH:-target/release/mls-bench}"
RUNS="${RUNS:-3}"
[ -x "$BIN" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release -p mls-gateway -p mls-bench" >&2; exit 1; }
if [ "$#" -eq 0 ]; then
    set -- --subscribers 300 --publishers 3 --events 300 --rate 50
fi
PSQL="$(command -v psql || echo "${PG_TEST_BINDIR:-/usr/lib/postgresql/15/bin}/psql")"
WORK="$(mktemp -d /tmp/mls-bench-instances-XXXXXX)"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# fresh_db NAME: creates it, prints its URL.
fresh_db() {
    "$PSQL" "$DATABASE_URL" -q -c "CREATE DATABASE $1" </dev/null >/dev/null
    python3 - "$DATABASE_URL" "$1" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + sys.argv[2], u.query, u.fragment)))
PY
}

# start_relays N DB_URL BUS_TOML: starts N relays, sets URLS (comma-separated) and FIRST_PID.
start_relays() {
    local n="$1" db="$2" bus="$3" i port dir
    URLS=""
    PIDS=()
    for ((i = 0; i < n; i++)); do
        port="$(free_port)"
        dir="$WORK/relay-$RANDOM-$i"
        mkdir -p "$dir"
        cat >"$dir/relay.toml" <<EOF
[server]
host = "127.0.0.1"
port = $port
relay_url = "ws://bench.instances"

[limitation]
max_subscriptions = 64
max_connections_per_ip = 0
max_reqs_per_minute = 0

[auth]
enabled = true
max_auths_per_minute_per_ip = 0
max_auths_per_minute_per_connection = 0

$bus

[extensions.mls_gateway]
storage_backend = "cloudsql"
database_url = "$db"

[extensions.mls_gateway.rate_limits]
max_events_per_minute = 0
max_keypackages_per_hour = 0
max_group_messages_per_minute = 0
EOF
        RUST_LOG=warn "$BIN" relay -c "$dir/relay.toml" </dev/null >"$dir/relay.log" 2>&1 &
        PIDS+=("$!")
        [ "$i" -eq 0 ] && FIRST_PID="$!"
        for _ in $(seq 1 200); do
            curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -fsS "http://127.0.0.1:$port/health" >/dev/null || { cat "$dir/relay.log" >&2; exit 1; }
        URLS="${URLS:+$URLS,}ws://127.0.0.1:$port"
    done
}

stop_relays() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    PIDS=()
}

# run LABEL N BUS_TOML [fanout options]
run() {
    local label="$1" n="$2" bus="$3"
    shift 3
    local db
    db="$(fresh_db "bench_$(date +%s)_$RANDOM")"
    start_relays "$n" "$db" "$bus"
    local first="${URLS%%,*}"
    echo "== $label: $n instance(s) ($URLS)" >&2
    "$BENCH" --url "$first" --relay-url ws://bench.instances --relay-pid "$FIRST_PID" \
        --runs "$RUNS" fanout --sub-urls "$URLS" --pub-urls "$URLS" "$@" </dev/null
    stop_relays
}

run "PostgreSQL, NOTIFY" 1 "" "$@"
run "PostgreSQL, NOTIFY" 3 "" "$@"
if [ -n "${REDIS_URL:-}" ]; then
    run "PostgreSQL, Redis" 3 "[bus]
redis_url = \"$REDIS_URL\"" "$@"
fi
