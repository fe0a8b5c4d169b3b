#!/usr/bin/env bash
# This relay beside a peer, in one run on one machine: rnostr (a Rust relay on LMDB, published
# as a crate) driven by nostr-bench (the rnostr project's load tool), against this relay with
# the same tool, one after the other and alternating. Not part of the test suite: the peer is
# built outside the project, in target/peer.
#
#   cargo build --release -p mls-gateway
#   bash scripts/bench-peer.sh build     # fetch and build rnostr 0.4.8 and nostr-bench 0.4.0
#   bash scripts/bench-peer.sh run       # RUNS (3) alternating runs of each scenario
#
# rnostr's search extension downloads dictionaries while it builds, which fails without
# network access beyond the crate registry; it is built without that extension (the `search`
# features removed from its manifest, and the one call that needs them), which a plain
# EVENT/REQ benchmark does not use.
#
# Scenarios (nostr-bench's own): `event` (CONNS connections, each publishing a freshly signed
# kind-1 note as soon as the previous one is answered; events/s) and `req` (CONNS connections,
# each sending a `#t` REQ with limit 1 as soon as the previous one ended; REQ/s, over what
# `event` stored). Both relays run with authentication and rate limits off, their data in a
# fresh directory per run; the generator gets GEN_THREADS (1) threads. nostr-bench counts any
# message that is not `OK … true` as an error: this relay's AUTH challenge on connect is one per
# connection.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PEER="$(pwd)/target/peer"
RNOSTR_VERSION=0.4.8
NOSTR_BENCH_VERSION=0.4.0
BIN="${BIN:-target/release/mls-gateway}"
RUNS="${RUNS:-3}"
CONNS="${CONNS:-64}"
SECS="${SECS:-20}"
GEN_THREADS="${GEN_THREADS:-1}"

build() {
    mkdir -p "$PEER/fetch/src"
    cat >"$PEER/fetch/Cargo.toml" <<EOF
[package]
name = "peer-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[workspace]
[dependencies]
rnostr = "=$RNOSTR_VERSION"
EOF
    echo 'fn main() {}' >"$PEER/fetch/src/main.rs"
    (cd "$PEER/fetch" && cargo fetch -q)
    local crate
    crate="$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/rnostr-$RNOSTR_VERSION.crate | head -n 1)"
    rm -rf "$PEER/rnostr-$RNOSTR_VERSION"
    tar xzf "$crate" -C "$PEER"
    python3 - "$PEER/rnostr-$RNOSTR_VERSION" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
manifest = root / "Cargo.toml"
text = manifest.read_text()
# nostr-db and nostr-relay: drop `features = ["search"]`; nostr-extensions: its defaults
# without `search`.
text = re.sub(r'(\[dependencies\.nostr-(?:db|relay)\]\nversion = "[^"]+"\n)features = \["search"\]\n', r'\1', text)
text = re.sub(r'(\[dependencies\.nostr-extensions\]\nversion = "[^"]+"\n)',
              r'\1default-features = false\nfeatures = ["metrics", "rate_limiter", "count"]\n', text)
text += "\n[workspace]\n"
assert "search" not in text.split("[dependencies")[1:] .__str__(), "search feature still requested"
manifest.write_text(text)
# The calls that build search words (only there with `search`).
for path in (root / "src").glob("*.rs"):
    src = path.read_text()
    src = src.replace("event.build_note_words();", "let _ = &mut event; // search extension left out")
    src = src.replace("opts.filter.build_words();", "// search extension left out")
    path.write_text(src)
relay = root / "src" / "relay.rs"
src = relay.read_text()
src = src.replace(".add_extension(nostr_extensions::Search::new())", "")
relay.write_text(src)
PY
    (cd "$PEER/rnostr-$RNOSTR_VERSION" && CARGO_TARGET_DIR="$PEER/target" cargo build --release)
    cargo install --locked --root "$PEER" --version "=$NOSTR_BENCH_VERSION" nostr-bench ||
        cargo install --root "$PEER" --version "=$NOSTR_BENCH_VERSION" nostr-bench
    echo "built: $PEER/target/release/rnostr and $PEER/bin/nostr-bench" >&2
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

WORK=""
PID=""
# Ends with a status of 0: an EXIT trap's last status would become the script's.
cleanup() {
    if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; fi
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# start_ours DIR PORT / start_peer DIR PORT: set PID.
start_ours() {
    cat >"$1/relay.toml" <<EOF
[server]
host = "127.0.0.1"
port = $2
relay_url = "ws://127.0.0.1:$2"
[data]
path = "$1/data"
[limitation]
max_subscriptions = 64
max_connections_per_ip = 0
max_reqs_per_minute = 0
max_events_per_minute_per_ip = 0
[auth]
enabled = false
[extensions.mls_gateway]
storage_backend = "embedded"
[extensions.mls_gateway.rate_limits]
max_events_per_minute = 0
max_keypackages_per_hour = 0
max_group_messages_per_minute = 0
EOF
    RUST_LOG=warn "$BIN" relay -c "$1/relay.toml" </dev/null >"$1/relay.log" 2>&1 &
    PID="$!"
    wait_port "$2"
}

start_peer() {
    mkdir -p "$1/config"
    cat >"$1/config/rnostr.toml" <<EOF
[data]
path = "$1/data"
[network]
host = "127.0.0.1"
port = $2
[limitation]
max_subscriptions = 64
[auth]
enabled = false
[rate_limiter]
enabled = false
[metrics]
enabled = false
EOF
    # `exec`: the subshell becomes rnostr, so PID is the relay's own (its CPU is read from /proc).
    (cd "$1" && exec "$PEER/target/release/rnostr" relay -c config/rnostr.toml </dev/null >"$1/relay.log" 2>&1) &
    PID="$!"
    wait_port "$2"
}

stop() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
}

# bench NAME START: one relay, nostr-bench `event` then `req` against it, SECS seconds each.
# nostr-bench runs until stopped and prints a JSON line per second; the figure is the median
# of its per-interval rates after the first 3 s (connections opening, its 1 s start delay).
bench() {
    local name="$1" start="$2" port cpu0 cpu1
    WORK="$(mktemp -d /tmp/mls-peer-XXXXXX)"
    port="$(free_port)"
    "$start" "$WORK" "$port"
    for scenario in event req; do
        cpu0="$(awk '{print $14+$15}' "/proc/$PID/stat")"
        timeout -s INT "$SECS" "$PEER/bin/nostr-bench" "$scenario" -c "$CONNS" -r "$CONNS" -t "$GEN_THREADS" \
            --json "ws://127.0.0.1:$port" </dev/null >"$WORK/$scenario.json" 2>"$WORK/$scenario.err" || true
        cpu1="$(awk '{print $14+$15}' "/proc/$PID/stat")"
        python3 - "$name" "$scenario" "$WORK/$scenario.json" "$cpu0" "$cpu1" "$SECS" "$CONNS" <<'PY'
import json, os, statistics, sys
name, scenario, path, c0, c1, secs, conns = sys.argv[1:]
lines = []
for raw in open(path):
    try:
        lines.append(json.loads(raw))
    except ValueError:
        pass  # its first line echoes the options
rates = [l["tps"] for l in lines if l.get("elapsed", 0) > 3000 and l.get("tps")]
last = lines[-1] if lines else {}
stats = last.get("message_stats", {})
hz = os.sysconf("SC_CLK_TCK")
print(json.dumps({
    "relay": name, "scenario": scenario, "conns": int(conns),
    "per_s_median": statistics.median(rates) if rates else 0,
    "per_s_min": min(rates, default=0), "per_s_max": max(rates, default=0),
    "complete": stats.get("complete"), "errors": stats.get("error"),
    "connections": last.get("connect_stats", {}).get("alive"),
    "relay_cores": round((float(c1) - float(c0)) / hz / float(secs), 2),
}))
PY
    done
    stop
    rm -rf "$WORK"
    WORK=""
}

case "${1:-run}" in
build) build ;;
run)
    [ -x "$PEER/target/release/rnostr" ] && [ -x "$PEER/bin/nostr-bench" ] ||
        { echo "build the peer first: bash scripts/bench-peer.sh build" >&2; exit 1; }
    [ -x "$BIN" ] || { echo "build first: cargo build --release -p mls-gateway" >&2; exit 1; }
    for run in $(seq 1 "$RUNS"); do
        echo "== run $run" >&2
        bench mls-gateway start_ours
        bench rnostr start_peer
    done
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
