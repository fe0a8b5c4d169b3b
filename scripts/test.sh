#!/usr/bin/env bash
# The project's one test command (README): installs and starts whatever the tests need, then
# runs every test of the workspace. CI runs it through .ci/run.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh --test nip01   # extra arguments go to `cargo test`
#
# Services are started on loopback only, with stdin/stdout/stderr redirected so that nothing
# waits on a pipe, and stopped again when the script exits.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
SERVICES_DIR="${SERVICES_DIR:-$ROOT/target/test-services}"
mkdir -p "$SERVICES_DIR"

log() { printf '[test.sh] %s\n' "$*" >&2; }

# Cleanup hooks registered by the service sections below, run in reverse order on exit.
CLEANUP=()
cleanup() {
    local i
    for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUP[$i]}" </dev/null >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------
# Toolchain
# ---------------------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found on PATH"
    exit 1
fi
# CI runs on a fresh clone, where cargo's incremental cache (~8 GB for this suite) is never
# reused, and the image test at the end needs several GB of its own. CARGO_INCREMENTAL=1 keeps
# the cache for quicker reruns after small edits.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_space() { df -h --output=avail "$ROOT/target" 2>/dev/null | tail -n 1 | tr -d ' '; }
mkdir -p "$ROOT/target"
log "free space under target/: $(free_space)"

# ---------------------------------------------------------------------------------------------
# Services
#
# One script per service under scripts/services/, sourced here: each defines `start_<name>`,
# which starts it (or reuses one already running), exports where the tests find it, and adds
# its stop to CLEANUP.
# ---------------------------------------------------------------------------------------------
wait_for_port() { # host port [seconds]
    local host="$1" port="$2" secs="${3:-30}" i
    for ((i = 0; i < secs * 10; i++)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "nothing listening on $host:$port after ${secs}s"
    return 1
}

# PostgreSQL (the `cloudsql` backend's tests): exports DATABASE_URL (a DATABASE_URL already
# set is used as is). MLS_TEST_NO_POSTGRES=1 skips it; those tests then say they were skipped.
# shellcheck source=services/postgres.sh
source scripts/services/postgres.sh
if [ "${MLS_TEST_NO_POSTGRES:-}" = 1 ]; then
    log "MLS_TEST_NO_POSTGRES=1: the PostgreSQL tests will be skipped"
    unset DATABASE_URL
elif ! start_postgres; then
    log "PostgreSQL could not be started (MLS_TEST_NO_POSTGRES=1 runs the rest without it)"
    exit 1
fi

# Redis (the bus between relay instances, tests/multi_instance.rs): installs redis-server,
# exports REDIS_URL and REDIS_TEST_SERVER (the multi-instance test starts and restarts its own
# server with it). MLS_TEST_NO_REDIS=1 skips it; the Redis variant then says it was skipped.
# shellcheck source=services/redis.sh
source scripts/services/redis.sh
if [ "${MLS_TEST_NO_REDIS:-}" = 1 ]; then
    log "MLS_TEST_NO_REDIS=1: the Redis bus test will be skipped"
    unset REDIS_URL
    export REDIS_TEST_SERVER=/nonexistent/redis-server
elif ! start_redis; then
    log "Redis could not be started (MLS_TEST_NO_REDIS=1 runs the rest without it)"
    exit 1
fi

# The Firestore emulator (the `firestore` backend's tests): exports FIRESTORE_EMULATOR_HOST (one
# already set is used as is). MLS_TEST_NO_FIRESTORE=1 skips it; those tests then say they were
# skipped. Every query shape the Firestore runs send is logged, then checked against
# deploy/firestore.indexes.json at the end.
# shellcheck source=services/firestore.sh
source scripts/services/firestore.sh
if [ "${MLS_TEST_NO_FIRESTORE:-}" = 1 ]; then
    log "MLS_TEST_NO_FIRESTORE=1: the Firestore tests will be skipped"
    unset FIRESTORE_EMULATOR_HOST
elif ! start_firestore; then
    log "the Firestore emulator could not be started (MLS_TEST_NO_FIRESTORE=1 runs the rest without it)"
    exit 1
else
    export MLS_FIRESTORE_QUERY_LOG="$SERVICES_DIR/firestore/queries.jsonl"
    rm -f "$MLS_FIRESTORE_QUERY_LOG"
fi

# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
# A fresh clone must pass wherever it is placed: nothing tracked may read above the root.
log "checking that no tracked file refers to a path outside the repository"
python3 scripts/check-self-contained.py

# The Prometheus alerting rules: `promtool check rules` and the rules' unit tests (every alert
# fires on made-up series and stays quiet on others). Installs Debian's `prometheus` package for
# promtool when missing. MLS_TEST_NO_PROMTOOL=1 skips it. (That every metric the rules and the
# Grafana dashboard name exists in /metrics is checked by tests/monitoring.rs, with cargo test.)
# shellcheck source=services/promtool.sh
source scripts/services/promtool.sh
if [ "${MLS_TEST_NO_PROMTOOL:-}" = 1 ]; then
    log "MLS_TEST_NO_PROMTOOL=1: the alerting rules are not checked with promtool"
else
    log "alerting rules (promtool check rules, promtool test rules)"
    check_alert_rules
fi

# The end-to-end tests (tests/) each start their own relay binary on a free loopback port
# with a temporary data directory; nothing else to set up for them.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# --no-fail-fast: one run reports every failing target, not just the first.
log "cargo test --workspace --all-targets --no-fail-fast $*"
cargo test --workspace --all-targets --no-fail-fast "$@" </dev/null

if [ "$#" -eq 0 ]; then
    log "cargo test --workspace --doc"
    cargo test --workspace --doc </dev/null
fi

# The end-to-end suites that depend on the backend, again with every relay on PostgreSQL (a
# fresh database each): privacy, reads, groups, backups, the crash test, the MDK group flow.
if [ "$#" -eq 0 ] && [ -n "${DATABASE_URL:-}" ]; then
    log "end-to-end suites on PostgreSQL (MLS_TEST_STORE=cloudsql)"
    MLS_TEST_STORE=cloudsql cargo test --no-fail-fast -p mls-gateway \
        --test mls_adversarial --test security_reads --test security_groups \
        --test security_backup --test crash --test nip01 --test nip09_40 \
        --test loxation_flow --test nip11_health --test shutdown </dev/null
    MLS_TEST_STORE=cloudsql cargo test --no-fail-fast -p marmot-e2e </dev/null
fi

# The same suites with every relay on the Firestore emulator (a fresh project each), then the
# check that every query shape logged by all the Firestore runs has its index in
# deploy/firestore.indexes.json.
if [ "$#" -eq 0 ] && [ -n "${FIRESTORE_EMULATOR_HOST:-}" ]; then
    log "end-to-end suites on Firestore (MLS_TEST_STORE=firestore)"
    MLS_TEST_STORE=firestore cargo test --no-fail-fast -p mls-gateway \
        --test mls_adversarial --test security_reads --test security_groups \
        --test security_backup --test crash --test nip01 --test nip09_40 \
        --test loxation_flow --test nip11_health --test shutdown </dev/null
    MLS_TEST_STORE=firestore cargo test --no-fail-fast -p marmot-e2e </dev/null
    log "every logged Firestore query is served by deploy/firestore.indexes.json"
    cargo test -p mls-store-firestore --test indexes queries_logged_by_the_whole_test_run </dev/null
fi

# The container image (deploy/Dockerfile), built with podman against local stand-ins of its
# base images and started from its root filesystem: /health, NIP-11, a publish read back,
# SIGTERM; on the embedded store and, with DATABASE_URL, on PostgreSQL. ~6 min from cold on 2
# cores, ~1 min when only sources changed, seconds when nothing did (target/image-test caches).
# MLS_TEST_NO_IMAGE=1 skips it.
if [ "$#" -eq 0 ]; then
    if [ "${MLS_TEST_NO_IMAGE:-}" = 1 ]; then
        log "MLS_TEST_NO_IMAGE=1: the image test is skipped"
    else
        log "image test (scripts/image-test.sh); free space under target/: $(free_space)"
        bash scripts/image-test.sh </dev/null
    fi
fi
