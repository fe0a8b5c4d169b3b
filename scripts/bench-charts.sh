#!/usr/bin/env bash
# Two builds of the relay, every scenario at three sizes, runs alternating between the builds,
# then one chart per scenario and figure and a markdown table of medians, spreads and ratios.
#
#   bash scripts/bench-charts.sh BEFORE_BIN_DIR AFTER_BIN_DIR OUT_DIR
#
# Each BIN_DIR holds an `mls-gateway` and an `mls-bench` (e.g. target/release of each build).
# At every size the script runs RUNS pairs of single runs, before then after, the next pair
# after then before (ABBA), so a burst of load on the machine hits both builds alike. Each JSON
# line is labelled `"relay":"before"` or `"relay":"after"` (the series of the charts) and kept
# in OUT_DIR/<scenario>.jsonl; then the AFTER build's `mls-bench chart` draws
# OUT_DIR/charts/*.svg and OUT_DIR/summary.md gets the table (also printed on stdout).
# mls-bench's tables and logs go to OUT_DIR/bench.log, the time of every run to
# OUT_DIR/timings.tsv, runs that failed to OUT_DIR/failures.txt (the script goes on and exits
# non-zero at the end).
#
# Sizes (SIZES=full, the default):
#   ingest       connections 1, 8, 64 (--events 20000, as fast as OKs return)
#   ingest rate  1,000 and 5,000 events/s (--events 20000, 8 connections): OK p99
#   fanout       members 100, 1,000, 5,000 of one gated group (--events 100 --rate 10)
#   query        10k, 100k, 1M stored events (--requests 10000)
#   connections  1k, 5k, 10k idle; 10k each holding a subscription (--subscribe)
# SIZES=small runs the same shapes about ten times smaller, for a quick pass (minutes).
#
# Environment:
#   RUNS=3          pairs of runs per size
#   SCENARIOS=...   subset of: ingest rate fanout query connections (default: all)
#   GEN=own         each build's mls-bench drives its own relay; GEN=after: the AFTER build's
#                   mls-bench drives both relays (--relay-bin), so only the relay differs
#   WAIT_QUIET=0    passed as --wait-quiet (seconds to wait for a quiet machine before a run)
#   STORE_CACHE=... where the query scenario's pre-filled stores are kept between runs of this
#                   script (default ${TMPDIR:-/tmp}/mls-bench-stores): one per size, filled
#                   once by the BEFORE build's mls-bench and used by both builds. The 1M fill
#                   takes minutes and ~1 GB.
#
# 10k connections need as many open files in the generator and in the relay (which inherits
# the generator's limit); the script raises its soft limit to the hard one, and the hard one
# when it is too low and it may (root), else stops before running anything.
set -euo pipefail

usage() {
    echo "usage: $0 BEFORE_BIN_DIR AFTER_BIN_DIR OUT_DIR   (RUNS=3 SIZES=full|small SCENARIOS=... GEN=own|after)" >&2
    exit 2
}
[ "$#" -eq 3 ] || usage
BEFORE_DIR="$(realpath "$1")"
AFTER_DIR="$(realpath "$2")"
OUT="$(realpath -m "$3")"
RUNS="${RUNS:-3}"
SIZES="${SIZES:-full}"
SCENARIOS="${SCENARIOS:-ingest rate fanout query connections}"
GEN="${GEN:-own}"
WAIT_QUIET="${WAIT_QUIET:-0}"
STORE_CACHE="$(realpath -m "${STORE_CACHE:-${TMPDIR:-/tmp}/mls-bench-stores}")"

for d in "$BEFORE_DIR" "$AFTER_DIR"; do
    for b in mls-gateway mls-bench; do
        [ -x "$d/$b" ] || { echo "$d/$b: missing or not executable" >&2; exit 1; }
    done
done
case "$GEN" in own | after) ;; *) echo "GEN=$GEN: expected own or after" >&2; exit 2 ;; esac
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || { echo "RUNS=$RUNS: expected a positive number" >&2; exit 2; }
for s in $SCENARIOS; do
    case "$s" in ingest | rate | fanout | query | connections) ;;
    *) echo "SCENARIOS: unknown scenario $s (ingest rate fanout query connections)" >&2; exit 2 ;;
    esac
done
if compgen -G "$OUT/*.jsonl" >/dev/null; then
    echo "$OUT already holds runs (*.jsonl): give an empty or new OUT_DIR" >&2
    exit 1
fi

case "$SIZES" in
full)
    INGEST_CONNS=(1 8 64) INGEST_EVENTS=20000
    RATES=(1000 5000) RATE_EVENTS=20000
    MEMBERS=(100 1000 5000) FANOUT_EVENTS=100
    STORED=(10000 100000 1000000) QUERY_REQUESTS=10000
    IDLE=(1000 5000 10000) SUBSCRIBED=10000
    ;;
small)
    INGEST_CONNS=(1 8 64) INGEST_EVENTS=2000
    RATES=(1000 5000) RATE_EVENTS=2000
    MEMBERS=(10 50 100) FANOUT_EVENTS=20
    STORED=(1000 10000 100000) QUERY_REQUESTS=1000
    IDLE=(100 500 1000) SUBSCRIBED=1000
    ;;
*) echo "SIZES=$SIZES: expected full or small" >&2; exit 2 ;;
esac

# The open-file limit: the largest connection count, plus the relay's own files and slack.
max_conns=0
case " $SCENARIOS " in *" connections "*)
    for c in "${IDLE[@]}" "$SUBSCRIBED"; do [ "$c" -gt "$max_conns" ] && max_conns="$c"; done ;;
esac
case " $SCENARIOS " in *" fanout "*)
    for c in "${MEMBERS[@]}"; do [ "$c" -gt "$max_conns" ] && max_conns="$c"; done ;;
esac
need_files=$((max_conns + 1024))
hard="$(ulimit -Hn)"
if [ "$hard" != unlimited ] && [ "$hard" -lt "$need_files" ]; then
    if ! ulimit -Hn "$need_files" 2>/dev/null; then
        echo "open-file limit: $max_conns connections need $need_files open files, the hard limit is $hard" >&2
        echo "  and this process may not raise it (that takes CAP_SYS_RESOURCE): raise it where it is set" >&2
        echo "  (ulimit -Hn $need_files as root, limits.conf nofile, the container's nofile ulimit)," >&2
        echo "  or leave out the largest sizes (SCENARIOS=..., SIZES=small)" >&2
        exit 1
    fi
fi
ulimit -Sn "$(ulimit -Hn)"

mkdir -p "$OUT/charts"
LOG="$OUT/bench.log"
TIMINGS="$OUT/timings.tsv"
FAILURES="$OUT/failures.txt"
: >"$FAILURES"
printf 'scenario\tsize\tbuild\tpair\tseconds\tstatus\n' >"$TIMINGS"
{
    echo "# bench-charts $(date -u +%FT%TZ) SIZES=$SIZES RUNS=$RUNS GEN=$GEN WAIT_QUIET=$WAIT_QUIET"
    echo "# before: $BEFORE_DIR  after: $AFTER_DIR  open files: $(ulimit -Sn)"
    echo "# machine: $(nproc) cores, $(uname -r)"
} | tee "$LOG" >&2

build_dir() { if [ "$1" = before ]; then echo "$BEFORE_DIR"; else echo "$AFTER_DIR"; fi; }
bench_of() { if [ "$GEN" = after ]; then echo "$AFTER_DIR/mls-bench"; else echo "$(build_dir "$1")/mls-bench"; fi; }

# The runs to make: "file|size label|mls-bench arguments", in order.
JOBS=()
for s in $SCENARIOS; do
    case "$s" in
    ingest) for c in "${INGEST_CONNS[@]}"; do
        JOBS+=("ingest|connections=$c|ingest --connections $c --events $INGEST_EVENTS"); done ;;
    rate) for r in "${RATES[@]}"; do
        JOBS+=("ingest-rate|rate=$r|ingest --rate $r --events $RATE_EVENTS"); done ;;
    fanout) for m in "${MEMBERS[@]}"; do
        JOBS+=("fanout|members=$m|fanout --subscribers $m --events $FANOUT_EVENTS --rate 10"); done ;;
    query) for n in "${STORED[@]}"; do
        JOBS+=("query|stored=$n|query --stored $n --requests $QUERY_REQUESTS"); done ;;
    connections)
        for c in "${IDLE[@]}"; do
            JOBS+=("connections|connections=$c|connections --connections $c"); done
        JOBS+=("connections|connections=$SUBSCRIBED subscribed|connections --connections $SUBSCRIBED --subscribe") ;;
    esac
done
TOTAL=$((${#JOBS[@]} * RUNS * 2))
STEP=0
START="$(date +%s)"

# fill_store N: the query store of N events in STORE_CACHE, filled once (into a side directory
# renamed when complete, so an interrupted fill is never taken for a full store).
fill_store() {
    local n="$1" dir="$STORE_CACHE/notes-$1"
    [ -e "$dir/data.mdb" ] && { echo "query: store of $n events cached in $dir" >&2; return 0; }
    rm -rf "$dir.partial"
    mkdir -p "$STORE_CACHE"
    echo "query: filling a store of $n events into $dir (once; the 1M fill takes minutes)" >&2
    "$BEFORE_DIR/mls-bench" --relay-bin "$BEFORE_DIR/mls-gateway" --runs 1 \
        query --stored "$n" --requests 100 --store-dir "$dir.partial" >/dev/null 2>>"$LOG" || return 1
    mv "$dir.partial" "$dir" || return 1
}

# The store's files with sizes and modification times (but LMDB's lock file, which every reader
# writes): compared before and after the runs, because both builds must query the same bytes.
store_state() { (cd "$1" && find . -type f ! -name lock.mdb -printf '%p %s %T@\n' | sort); }

# run_one BUILD FILE SIZE PAIR ARGS...: one run of one build, its JSON line labelled.
run_one() {
    local build="$1" file="$2" size="$3" pair="$4" t0 t1 secs status=ok
    shift 4
    STEP=$((STEP + 1))
    local elapsed=$(($(date +%s) - START)) eta=""
    [ "$STEP" -gt 1 ] && eta=", ~$(((elapsed * (TOTAL - STEP + 1) / (STEP - 1) + 30) / 60)) min left"
    echo "[$STEP/$TOTAL] $file $size $build (pair $pair)$eta" >&2
    echo "## $file $size $build pair $pair: $(bench_of "$build") --relay-bin $(build_dir "$build")/mls-gateway $*" >>"$LOG"
    t0="$(date +%s.%N)"
    # Records start with `{"scenario":`; the label goes in front of it.
    if ! "$(bench_of "$build")" --relay-bin "$(build_dir "$build")/mls-gateway" --runs 1 \
        --wait-quiet "$WAIT_QUIET" "$@" 2>>"$LOG" </dev/null |
        sed -u "s/^{\"scenario\":/{\"relay\":\"$build\",\"scenario\":/" >>"$OUT/$file.jsonl"; then
        status=failed
        echo "$file $size $build pair $pair: mls-bench $* failed (see $LOG)" | tee -a "$FAILURES" >&2
    fi
    t1="$(date +%s.%N)"
    secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$file" "$size" "$build" "$pair" "$secs" "$status" >>"$TIMINGS"
}

for job in "${JOBS[@]}"; do
    IFS='|' read -r file size args <<<"$job"
    read -ra argv <<<"$args"
    store=""
    if [ "$file" = query ]; then
        n="${size#stored=}"
        store="$STORE_CACHE/notes-$n"
        t0="$(date +%s)"
        if ! fill_store "$n"; then
            echo "query $size: filling the store failed (see $LOG); its runs are skipped" | tee -a "$FAILURES" >&2
            STEP=$((STEP + RUNS * 2))
            continue
        fi
        printf 'query-fill\t%s\t-\t-\t%s\tok\n' "$size" "$(($(date +%s) - t0))" >>"$TIMINGS"
        # The after build queries a copy of the same events: a newer build may upgrade the
        # store's layout when it opens it, which an older one then refuses.
        rm -rf "$store.after"
        cp -a "$store" "$store.after"
        state0="$(store_state "$store")"
    fi
    after_state0=""
    for pair in $(seq 1 "$RUNS"); do
        if [ $((pair % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
        for build in $order; do
            store_args=()
            if [ -n "$store" ]; then
                store_args=(--store-dir "$store")
                [ "$build" = after ] && store_args=(--store-dir "$store.after")
            fi
            run_one "$build" "$file" "$size" "$pair" "${argv[@]}" "${store_args[@]}"
            # The after copy as its first run left it (upgraded, if the build upgrades).
            if [ -n "$store" ] && [ "$build" = after ] && [ -z "$after_state0" ]; then
                after_state0="$(store_state "$store.after")"
            fi
        done
    done
    if [ -n "$store" ] && { [ "$(store_state "$store")" != "$state0" ] ||
        [ "$(store_state "$store.after")" != "$after_state0" ]; }; then
        echo "query $size: a relay wrote to its store during the runs: the runs did not query identical bytes" |
            tee -a "$FAILURES" >&2
    fi
    if [ -n "$store" ]; then rm -rf "$store.after"; fi
done

echo "runs done in $((($(date +%s) - START) / 60)) min; drawing the charts" >&2
shopt -s nullglob
jsonl=("$OUT"/*.jsonl)
if [ "${#jsonl[@]}" -gt 0 ]; then
    "$AFTER_DIR/mls-bench" chart --out "$OUT/charts" "${jsonl[@]}" >"$OUT/charts.txt" 2>>"$LOG" ||
        echo "mls-bench chart failed (see $LOG)" | tee -a "$FAILURES" >&2
fi

# The table: one section per scenario (and text-field variant), one row per size and figure,
# each build's median with the min-max of its runs, and after/before of the medians. The
# figures are the charts' headline figures, plus `other_cores` (what the rest of the machine
# used during the timed part: the noise each build's runs met).
python3 - "$OUT" "$RUNS" <<'PY' | tee "$OUT/summary.md"
import glob, json, os, statistics, sys

out, runs = sys.argv[1], int(sys.argv[2])
# scenario -> (size field per variant, figures); ingest's size is the rate in fixed-rate mode.
FIGURES = {
    "ingest": ["accepted_per_s", "ok_p50_ms", "ok_p99_ms", "relay_cpu_us_per_event"],
    "fanout": ["delivery_p50_ms", "delivery_p99_ms", "lost", "deliveries_per_s",
               "relay_cpu_us_per_delivery"],
    "query": ["reqs_per_s", "eose_p50_ms", "eose_p99_ms", "relay_cpu_us_per_req"],
    "connections": ["bytes_per_connection", "relay_rss_after_mib", "opens_per_s", "open_p99_ms"],
}
for figs in FIGURES.values():
    figs.append("other_cores")
SIZE = {"ingest": "connections", "fanout": "subscribers", "query": "stored",
        "connections": "connections"}


def size_field(line):
    if line["scenario"] == "ingest" and line.get("mode") == "fixed-rate":
        return "target_rate"
    return SIZE.get(line["scenario"], "connections")


def fmt(v):
    if v is None:
        return "–"
    a = abs(v)
    if v == int(v) and a < 1e15:
        return f"{int(v):,}"
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


lines = []
# The script's order first (ingest, fixed rate, fan-out, query, connections), then any other.
ORDER = ["ingest", "ingest-rate", "fanout", "query", "connections"]
paths = sorted(glob.glob(os.path.join(out, "*.jsonl")),
               key=lambda p: (ORDER + [os.path.basename(p)[:-6]]).index(os.path.basename(p)[:-6]))
for path in paths:
    for raw in open(path):
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("scenario"), str):
            lines.append(obj)

# (scenario, variant) -> size -> figure -> build -> values
groups = {}
for l in lines:
    variant = tuple(sorted((k, v) for k, v in l.items()
                           if isinstance(v, str) and k not in ("scenario", "relay")))
    x = l.get(size_field(l))
    if x is None:
        continue
    g = groups.setdefault((l["scenario"], variant, size_field(l)), {})
    for fig in FIGURES.get(l["scenario"], []):
        v = l.get(fig)
        if isinstance(v, (int, float)):
            g.setdefault(x, {}).setdefault(fig, {}).setdefault(l.get("relay", "?"), []).append(v)

print(f"Medians of {runs} run(s) per build and size (min–max of the runs); ratio = after / before "
      "of the medians.\n")
for (scenario, variant, xf), by_size in groups.items():
    title = scenario + "".join(f" {k}={v}" for k, v in variant)
    print(f"#### {title}, by {xf}\n")
    print(f"| {xf} | figure | before | after | after/before |")
    print("|---|---|---|---|---|")
    for x in sorted(by_size):
        for fig in FIGURES[scenario]:
            per = by_size[x].get(fig, {})
            if not per:
                continue  # a figure this scenario does not report (connections: other_cores)
            cells, med = [], {}
            for build in ("before", "after"):
                vals = sorted(per.get(build, []))
                if not vals:
                    cells.append("–")
                    continue
                med[build] = statistics.median(vals)
                cell = f"{fmt(med[build])} ({fmt(vals[0])}–{fmt(vals[-1])})"
                if len(vals) != runs:
                    cell += f" [{len(vals)} runs]"
                cells.append(cell)
            b, a = med.get("before"), med.get("after")
            ratio = f"{a / b:.2f}×" if a is not None and b else "–"
            print(f"| {x:,.0f} | {fig} | {cells[0]} | {cells[1]} | {ratio} |")
    print()
PY

total=$(($(date +%s) - START))
echo "done in $((total / 60)) min $((total % 60)) s: $OUT/*.jsonl, $OUT/charts ($(wc -l <"$OUT/charts.txt" 2>/dev/null || echo 0) SVGs), $OUT/summary.md" >&2
if [ -s "$FAILURES" ]; then
    echo "some runs failed:" >&2
    cat "$FAILURES" >&2
    exit 1
fi
