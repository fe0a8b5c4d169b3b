#!/usr/bin/env bash
# A Firestore emulator for the tests, on loopback only.
#
# Sourced by scripts/test.sh, which calls `start_firestore` (it then exports
# FIRESTORE_EMULATOR_HOST and registers the stop in test.sh's CLEANUP hooks). Also runnable by
# hand while developing:
#
#   bash scripts/services/firestore.sh start    # prints `export FIRESTORE_EMULATOR_HOST=...`
#   bash scripts/services/firestore.sh stop
#
# - Google's emulator cannot be downloaded here; the npm package @firestore-emulator/server
#   (pinned below) is an in-memory gRPC Firestore. It is installed with npm into
#   $SERVICES_DIR/firestore (Debian's `nodejs` and `npm` are installed when missing) and
#   started through our own launcher, firestore-emulator.js beside this file: loopback only,
#   atomic commits, and ABORTED on contended transactions (see the launcher's header).
# - An emulator already running there is reused and left running (whoever started it stops it).
# - FIRESTORE_EMULATOR_HOST already set: nothing is started, that emulator is used.

FIRESTORE_EMULATOR_PACKAGE="@firestore-emulator/server@0.3.15"

_fs_log() { printf '[firestore.sh] %s\n' "$*" >&2; }

_fs_dir() { printf '%s\n' "${SERVICES_DIR:?}/firestore"; }

_fs_install() {
    local dir
    dir="$(_fs_dir)"
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" -ne 0 ]; then
            _fs_log "node/npm are not installed and we are not root: apt-get install nodejs npm"
            return 1
        fi
        _fs_log "installing nodejs and npm from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q nodejs npm </dev/null >/dev/null 2>&1 ||
            { apt-get update -q </dev/null >/dev/null 2>&1 &&
                apt-get install -y -q nodejs npm </dev/null >/dev/null 2>&1; } ||
            { _fs_log "apt-get install nodejs npm failed"; return 1; }
    fi
    mkdir -p "$dir"
    if [ -f "$dir/node_modules/@firestore-emulator/server/package.json" ] &&
        grep -q "\"version\": \"${FIRESTORE_EMULATOR_PACKAGE##*@}\"" \
            "$dir/node_modules/@firestore-emulator/server/package.json"; then
        return 0
    fi
    _fs_log "installing $FIRESTORE_EMULATOR_PACKAGE with npm"
    [ -f "$dir/package.json" ] || printf '{"private": true}\n' >"$dir/package.json"
    (cd "$dir" && npm install --no-audit --no-fund --silent "$FIRESTORE_EMULATOR_PACKAGE") \
        </dev/null >"$dir/npm.log" 2>&1 ||
        { _fs_log "npm install failed, see $dir/npm.log"; return 1; }
}

# start_firestore: starts (or reuses) the emulator and exports FIRESTORE_EMULATOR_HOST.
start_firestore() {
    if [ -n "${FIRESTORE_EMULATOR_HOST:-}" ]; then
        _fs_log "FIRESTORE_EMULATOR_HOST is set: using that emulator"
        return 0
    fi
    _fs_install || return 1
    local dir launcher pid port i
    dir="$(_fs_dir)"
    launcher="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/firestore-emulator.js"
    if [ -f "$dir/pid" ] && [ -f "$dir/port" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        export FIRESTORE_EMULATOR_HOST="127.0.0.1:$(cat "$dir/port")"
        _fs_log "reusing the running emulator on $FIRESTORE_EMULATOR_HOST"
        return 0
    fi
    rm -f "$dir/port" "$dir/pid"
    # The launcher resolves the package from the install directory.
    NODE_PATH="$dir/node_modules" nohup node "$launcher" 0 "$dir/port" \
        </dev/null >"$dir/emulator.log" 2>&1 &
    pid=$!
    printf '%s\n' "$pid" >"$dir/pid"
    CLEANUP+=("kill $pid")
    for ((i = 0; i < 300; i++)); do
        [ -s "$dir/port" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ ! -s "$dir/port" ]; then
        _fs_log "the emulator did not start, see $dir/emulator.log"
        return 1
    fi
    port="$(cat "$dir/port")"
    export FIRESTORE_EMULATOR_HOST="127.0.0.1:$port"
    _fs_log "Firestore emulator ($FIRESTORE_EMULATOR_PACKAGE) on $FIRESTORE_EMULATOR_HOST"
}

stop_firestore() {
    local dir
    dir="$(_fs_dir)"
    if [ -f "$dir/pid" ]; then
        kill "$(cat "$dir/pid")" 2>/dev/null || true
    fi
    rm -f "$dir/pid" "$dir/port"
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
        start_firestore
        printf 'export FIRESTORE_EMULATOR_HOST=%q\n' "$FIRESTORE_EMULATOR_HOST"
        ;;
    stop) stop_firestore ;;
    *)
        _fs_log "usage: $0 [start|stop]"
        exit 2
        ;;
    esac
fi
