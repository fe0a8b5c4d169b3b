#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests, on loopback only.
#
# Sourced by scripts/test.sh, which calls `start_postgres` (it then exports DATABASE_URL and
# registers the stop in test.sh's CLEANUP hooks). Also runnable by hand while developing:
#
#   bash scripts/services/postgres.sh start    # prints `export DATABASE_URL=...`
#   bash scripts/services/postgres.sh stop
#
# - Installs Debian's `postgresql` package when no server binaries are found.
# - `initdb` refuses to run as root: as root the cluster belongs to the `postgres` user.
# - The cluster lives in $SERVICES_DIR/postgres (a free port, listen_addresses=127.0.0.1,
#   its unix socket in the same directory); a cluster already running there is reused and
#   left running (whoever started it stops it).
# - TLS is on (a throwaway CA and a server certificate for localhost/127.0.0.1, made with
#   openssl when it is there), so `sslmode=require` can be tested.
# - Exported for tests: PG_TEST_SOCKET_DIR (the unix socket's directory, for the
#   `host=/cloudsql/…` form), PG_TEST_SSLROOTCERT (the CA, when TLS is on), and for tests that
#   stop and start the database: PG_TEST_BINDIR, PG_TEST_DATADIR, PG_TEST_USER.
# - DATABASE_URL already set: nothing is started, that database is used.
# - PG_SERVER_OPTIONS: more server settings for a new cluster (the benchmarks give it a
#   production-like `-c shared_buffers=1GB -c max_wal_size=4GB`).

PG_ROLE="mls_test"
PG_PASSWORD="mls_test"
PG_DATABASE="mls_test"

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_pg_log() { printf '[postgres.sh] %s\n' "$*" >&2; }

# Runs a server binary as the cluster's owner.
_pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

_pg_bindir() {
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$d" ] && [ -x "$d/initdb" ]; then
        printf '%s\n' "$d"
    fi
}

_pg_install() {
    [ -n "$(_pg_bindir)" ] && return 0
    apt_install postgres.sh postgresql || return 1
    [ -n "$(_pg_bindir)" ] || { _pg_log "no initdb after installing postgresql"; return 1; }
}

_pg_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A CA and a server certificate (localhost, 127.0.0.1) signed by it, in $1.
_pg_make_certs() {
    local d="$1"
    {
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mls-gateway test CA" \
            -keyout "$d/ca.key" -out "$d/ca.crt" &&
            openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
                -keyout "$d/server.key" -out "$d/server.csr" &&
            printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$d/server.ext" &&
            openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" \
                -CAcreateserial -days 2 -extfile "$d/server.ext" -out "$d/server.crt"
    } </dev/null >"$d/certs.log" 2>&1 || { _pg_log "no TLS: openssl failed, see $d/certs.log"; return 1; }
    chmod 600 "$d/server.key"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$d/server.key" "$d/server.crt"
    return 0
}

# start_postgres: starts (or reuses) the cluster and exports DATABASE_URL and PG_TEST_*.
start_postgres() {
    if [ -n "${DATABASE_URL:-}" ]; then
        _pg_log "DATABASE_URL is set: using that database"
        return 0
    fi
    _pg_install || return 1
    local bindir dir data port
    bindir="$(_pg_bindir)"
    dir="${SERVICES_DIR:?}/postgres"
    # The unix socket path must stay under ~100 bytes; the cluster's owner must reach it.
    if [ "${#dir}" -gt 80 ]; then
        dir="/tmp/mls-gateway-pg-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
    fi
    data="$dir/data"
    export PG_TEST_BINDIR="$bindir" PG_TEST_DATADIR="$data" PG_TEST_SOCKET_DIR="$dir"
    if [ "$(id -u)" -eq 0 ]; then export PG_TEST_USER=postgres; else export PG_TEST_USER="$(id -un)"; fi

    if [ -f "$dir/url" ] && _pg_as_owner "$bindir/pg_ctl" -D "$data" status </dev/null >/dev/null 2>&1; then
        DATABASE_URL="$(cat "$dir/url")"
        export DATABASE_URL
        [ -f "$dir/ca.crt" ] && export PG_TEST_SSLROOTCERT="$dir/ca.crt"
        _pg_log "reusing the running cluster in $dir"
        return 0
    fi

    rm -rf "$dir"
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres: "$dir"
        if ! runuser -u postgres -- test -w "$dir"; then
            # A parent directory the postgres user cannot enter (e.g. under /root).
            rm -rf "$dir"
            dir="$(mktemp -d /tmp/mls-gateway-pg-XXXXXX)"
            data="$dir/data"
            export PG_TEST_DATADIR="$data" PG_TEST_SOCKET_DIR="$dir"
            chown postgres: "$dir"
        fi
    fi
    printf '%s\n' "$PG_PASSWORD" >"$dir/pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/pwfile"
    _pg_as_owner "$bindir/initdb" -D "$data" -U postgres --pwfile="$dir/pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync -E UTF8 --locale=C.UTF-8 \
        </dev/null >"$dir/initdb.log" 2>&1 ||
        { _pg_log "initdb failed, see $dir/initdb.log"; return 1; }

    local ssl=""
    if command -v openssl >/dev/null 2>&1 && _pg_make_certs "$dir"; then
        ssl="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
        export PG_TEST_SSLROOTCERT="$dir/ca.crt"
    fi
    port="$(_pg_free_port)"
    # Tests open many small pools in parallel: room for a few hundred connections.
    _pg_as_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=400 -c shared_buffers=64MB -c fsync=on $ssl ${PG_SERVER_OPTIONS:-}" \
        start </dev/null >/dev/null 2>&1 ||
        { _pg_log "PostgreSQL did not start, see $dir/server.log"; return 1; }
    CLEANUP+=("_pg_as_owner '$bindir/pg_ctl' -D '$data' -m immediate -w stop")

    _pg_as_owner "$bindir/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
        -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" \
        -c "CREATE DATABASE $PG_DATABASE OWNER $PG_ROLE" </dev/null >"$dir/setup.log" 2>&1 ||
        { _pg_log "creating the test role and database failed, see $dir/setup.log"; return 1; }

    DATABASE_URL="postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$port/$PG_DATABASE"
    export DATABASE_URL
    printf '%s\n' "$DATABASE_URL" >"$dir/url"
    _pg_log "PostgreSQL $(basename "$(dirname "$bindir")") on 127.0.0.1:$port (data in $data)"
}

stop_postgres() {
    local bindir dir
    bindir="$(_pg_bindir)"
    dir="${SERVICES_DIR:?}/postgres"
    [ "${#dir}" -gt 80 ] && dir="/tmp/mls-gateway-pg-$(printf '%s' "$dir" | sha256sum | cut -c1-12)"
    if [ -n "$bindir" ] && [ -d "$dir/data" ]; then
        _pg_as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop </dev/null >/dev/null 2>&1 || true
    fi
    rm -f "$dir/url"
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
        start_postgres
        printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
        printf 'export PG_TEST_BINDIR=%q PG_TEST_DATADIR=%q PG_TEST_USER=%q PG_TEST_SOCKET_DIR=%q\n' \
            "$PG_TEST_BINDIR" "$PG_TEST_DATADIR" "$PG_TEST_USER" "$PG_TEST_SOCKET_DIR"
        if [ -n "${PG_TEST_SSLROOTCERT:-}" ]; then printf 'export PG_TEST_SSLROOTCERT=%q\n' "$PG_TEST_SSLROOTCERT"; fi
        ;;
    stop) stop_postgres ;;
    *)
        _pg_log "usage: $0 [start|stop]"
        exit 2
        ;;
    esac
fi
