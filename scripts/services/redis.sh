#!/usr/bin/env bash
# A throwaway Redis for the tests (the bus between relay instances), on loopback only.
#
# Sourced by scripts/test.sh, which calls `start_redis` (it then exports REDIS_URL and
# registers the stop in test.sh's CLEANUP hooks). Also runnable by hand while developing:
#
#   bash scripts/services/redis.sh start    # prints `export REDIS_URL=...`
#   bash scripts/services/redis.sh stop
#
# - Installs Debian's `redis-server` package when it is missing (its own service is kept
#   from starting).
# - The server runs from $SERVICES_DIR/redis on a free port, bound to 127.0.0.1, with no
#   persistence (`--save '' --appendonly no`); one already running there is reused.
# - Exported for tests: REDIS_URL, and REDIS_TEST_SERVER (the redis-server binary: tests that
#   restart Redis mid-stream start their own server with it).
# - REDIS_URL already set: nothing is started, that server is used.

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_redis_log() { printf '[redis.sh] %s\n' "$*" >&2; }

_redis_install() {
    command -v redis-server >/dev/null 2>&1 && return 0
    apt_install redis.sh redis-server || return 1
    command -v redis-server >/dev/null 2>&1 || { _redis_log "no redis-server after installing it"; return 1; }
}

_redis_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

_redis_ping() { # port
    redis-cli -h 127.0.0.1 -p "$1" ping </dev/null 2>/dev/null | grep -q PONG
}

# start_redis: starts (or reuses) the server and exports REDIS_URL and REDIS_TEST_SERVER.
start_redis() {
    _redis_install || return 1
    REDIS_TEST_SERVER="$(command -v redis-server)"
    export REDIS_TEST_SERVER
    if [ -n "${REDIS_URL:-}" ]; then
        _redis_log "REDIS_URL is set: using that server"
        return 0
    fi
    local dir port i
    dir="${SERVICES_DIR:?}/redis"
    if [ -f "$dir/port" ] && _redis_ping "$(cat "$dir/port")"; then
        REDIS_URL="redis://127.0.0.1:$(cat "$dir/port")"
        export REDIS_URL
        _redis_log "reusing the running server in $dir"
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    port="$(_redis_free_port)"
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" \
        </dev/null >/dev/null 2>&1 || { _redis_log "redis-server did not start, see $dir/redis.log"; return 1; }
    for ((i = 0; i < 100; i++)); do
        _redis_ping "$port" && break
        sleep 0.1
    done
    _redis_ping "$port" || { _redis_log "redis-server does not answer, see $dir/redis.log"; return 1; }
    CLEANUP+=("stop_redis")
    printf '%s\n' "$port" >"$dir/port"
    REDIS_URL="redis://127.0.0.1:$port"
    export REDIS_URL
    _redis_log "Redis $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port"
}

stop_redis() {
    local dir="${SERVICES_DIR:?}/redis"
    if [ -f "$dir/redis.pid" ]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
    rm -f "$dir/port" "$dir/redis.pid"
}

# Run by hand: start (left running) or stop.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    SERVICES_DIR="${SERVICES_DIR:-$(pwd)/target/test-services}"
    mkdir -p "$SERVICES_DIR"
    CLEANUP=()
    case "${1:-start}" in
    start)
        start_redis
        printf 'export REDIS_URL=%q REDIS_TEST_SERVER=%q\n' "$REDIS_URL" "$REDIS_TEST_SERVER"
        ;;
    stop) stop_redis ;;
    *)
        _redis_log "usage: $0 [start|stop]"
        exit 2
        ;;
    esac
fi
