#!/usr/bin/env bash
# Builds the container image (deploy/Dockerfile, unchanged) and starts it, here, without a
# Docker engine or an image registry:
#
#   1. local stand-ins of the Dockerfile's base images, made from Debian's packages with
#      mmdebstrap and `podman import`ed under the exact names the Dockerfile uses (the builder
#      gets this machine's Rust toolchain under /usr/local/rust and this machine's CA bundle);
#   2. `podman build --isolation chroot` (layers cached: a second run rebuilds only what
#      changed; the dependency layer is reused until Cargo.toml / Cargo.lock change);
#   3. the image's root filesystem (`podman create` + `podman mount`: a disposable, writable
#      copy) and its OWN entrypoint, user, working directory, environment and config, started
#      with `chroot --userspec` (containers cannot be run here: setting rlimits is refused),
#      with PORT and RELAY_URL set as Cloud Run would;
#   4. checks from outside with the workspace's own client (tests/deployed.rs, pointed at the
#      image by MLS_EXTERNAL_RELAY_URL): /health, NIP-11, EVENT → OK → REQ, and SIGTERM → close
#      frames with a reason and exit within 10 s. With DATABASE_URL set (scripts/test.sh's
#      PostgreSQL), the same again with the image's cloudsql config against that database.
#
#   bash scripts/image-test.sh
#
# Called by scripts/test.sh. Installs podman, mmdebstrap and uidmap with apt-get when missing;
# skips (exit 0, saying why) only when podman cannot work on the machine. Everything it keeps
# (the stand-ins, podman's storage and build cache) lives under target/image-test/.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
WORK="${IMAGE_TEST_DIR:-$ROOT/target/image-test}"
DOCKERFILE="deploy/Dockerfile"
IMAGE="localhost/mls-gateway:image-test"
# Bump when a stand-in's recipe below changes: cached stand-ins are then rebuilt.
RECIPE_VERSION=1

log() { printf '[image-test] %s\n' "$*" >&2; }
skip() {
    log "SKIPPED: $*"
    exit 0
}
# Checks passed so far; the closing line is `image-test: N passed, N failed`.
CHECKS=0
die() {
    log "FAILED: $*"
    echo "image-test: $CHECKS passed, 1 failed"
    exit 1
}
T0=$(date +%s)
elapsed() { echo $(($(date +%s) - T0)); }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
[ "$(uname -s)" = Linux ] || skip "podman builds need Linux"
missing=()
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v newuidmap >/dev/null 2>&1 || missing+=(uidmap)
command -v chroot >/dev/null 2>&1 || missing+=(coreutils)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        skip "${missing[*]} missing and cannot be installed here (needs root and apt-get)"
    fi
    log "installing ${missing[*]} (apt-get)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" containernetworking-plugins; } </dev/null >"/tmp/image-test-apt.$$.log" 2>&1; then
        tail -n 20 "/tmp/image-test-apt.$$.log" >&2
        skip "apt-get could not install ${missing[*]}"
    fi
fi
# Building images as another user needs subordinate ids and user namespaces; as root it needs
# neither. Not root: let podman say whether it can work.
[ "$(id -u)" -eq 0 ] || log "not root: rootless podman (needs /etc/subuid for $(id -un))"

mkdir -p "$WORK"
# overlay where the kernel allows it here (fast, small); otherwise vfs (full copies per layer).
DRIVER="${IMAGE_TEST_STORAGE_DRIVER:-}"
if [ -z "$DRIVER" ]; then
    DRIVER=vfs
    probe="$WORK/overlay-probe"
    rm -rf "$probe" && mkdir -p "$probe"/{l,u,w,m}
    if [ "$(id -u)" -eq 0 ] && mount -t overlay overlay \
        -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
        umount "$probe/m"
        DRIVER=overlay
    fi
    rm -rf "$probe"
fi
# A storage made with one driver cannot be opened with another.
if [ -f "$WORK/storage.driver" ] && [ "$(cat "$WORK/storage.driver")" != "$DRIVER" ]; then
    log "storage driver changed to $DRIVER: dropping the old storage"
    rm -rf "$WORK/storage" "$WORK/run" "$WORK"/stand-in.*
fi
echo "$DRIVER" >"$WORK/storage.driver"

# podman copies imported and built layers through a temporary directory (/var/tmp unless
# TMPDIR says otherwise), which may be small or another disk: keep it beside the storage.
mkdir -p "$WORK/tmp"
pm() {
    TMPDIR="$WORK/tmp" podman --root "$WORK/storage" --runroot "$WORK/run" --storage-driver "$DRIVER" \
        --cgroup-manager cgroupfs --events-backend file "$@"
}
free_space() { df -h --output=avail "$1" 2>/dev/null | tail -n 1 | tr -d ' '; }
log "free space under $WORK: $(free_space "$WORK")"
# A cache that cannot be opened (it records its absolute path: a moved checkout, an older
# podman) is dropped and made again; a fresh storage that cannot be opened means podman cannot
# work here.
if ! pm info >"$WORK/podman-info.log" 2>&1 && [ -d "$WORK/storage" ]; then
    log "podman cannot open the cached storage ($(tail -n 1 "$WORK/podman-info.log")): dropping it"
    rm -rf "$WORK/storage" "$WORK/run" "$WORK"/stand-in.*
fi
if ! pm info >"$WORK/podman-info.log" 2>&1; then
    tail -n 20 "$WORK/podman-info.log" >&2
    skip "podman cannot open its storage on this machine (see above)"
fi
log "podman $(podman --version | awk '{print $3}'), storage driver $DRIVER, under $WORK"

# ---------------------------------------------------------------------------------------------
# Stand-ins of the base images, under the names the Dockerfile uses
# ---------------------------------------------------------------------------------------------
qualify() { # rust:1.95-bookworm -> docker.io/library/rust:1.95-bookworm
    local n="$1"
    case "$n" in
    */*/*) ;;
    */*) n="docker.io/$n" ;;
    *) n="docker.io/library/$n" ;;
    esac
    case "$n" in *:* | *@*) ;; *) n="$n:latest" ;; esac
    echo "$n"
}

MMDEBSTRAP_SLIM=(--variant=minbase
    # What Debian's -slim images leave out.
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/info/*'
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin')

make_stand_in() { # qualified-name
    local name="$1" tag suite key stamp tar
    tag="${name##*:}"
    case "$name" in
    docker.io/library/debian:*-slim | docker.io/library/debian:*) suite="${tag%-slim}" ;;
    docker.io/library/rust:*-*) suite="${tag##*-}" ;;
    *) die "no local stand-in recipe for base image $name (add one to $0)" ;;
    esac
    case "$name" in
    docker.io/library/rust:*)
        local sysroot want have
        sysroot="$(rustc --print sysroot)"
        have="$(rustc -V | awk '{print $2}')"
        want="${tag%%-*}"
        case "$have" in
        "$want" | "$want".*) ;;
        *) log "warning: $name stands in with this machine's rustc $have" ;;
        esac
        key="$RECIPE_VERSION rust $suite $(rustc -vV | sha256sum | cut -c1-16) $(sha256sum </etc/ssl/certs/ca-certificates.crt | cut -c1-16)"
        ;;
    *) key="$RECIPE_VERSION debian $suite" ;;
    esac
    stamp="$WORK/stand-in.$(echo "$name" | tr '/:@' '___')"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && pm image exists "$name"; then
        log "stand-in $name: cached"
        return 0
    fi
    tar="$WORK/stand-in.tar"
    rm -f "$tar"
    log "stand-in $name: mmdebstrap $suite ..."
    local t=$SECONDS
    case "$name" in
    docker.io/library/rust:*)
        # The toolchain without its docs (800 MB); the CA bundle this machine's cargo trusts.
        local copy
        copy="mkdir -p \"\$1/usr/local/rust\" \"\$1/usr/local/cargo\" && cp -a $(printf %q "$sysroot")/bin $(printf %q "$sysroot")/lib \"\$1/usr/local/rust/\" && cp /etc/ssl/certs/ca-certificates.crt \"\$1/etc/ssl/certs/ca-certificates.crt\""
        mmdebstrap --variant=apt --include=build-essential,pkg-config,ca-certificates \
            --customize-hook="$copy" \
            --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
            "$suite" "$tar" </dev/null >"$WORK/mmdebstrap.log" 2>&1 ||
            { tail -n 30 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap for $name failed"; }
        import_stand_in "$tar" "$name" \
            --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV CARGO_HOME=/usr/local/cargo'
        ;;
    *)
        mmdebstrap "${MMDEBSTRAP_SLIM[@]}" "$suite" "$tar" </dev/null >"$WORK/mmdebstrap.log" 2>&1 ||
            { tail -n 30 "$WORK/mmdebstrap.log" >&2; die "mmdebstrap for $name failed"; }
        import_stand_in "$tar" "$name" \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'CMD ["bash"]'
        ;;
    esac
    rm -f "$tar"
    echo "$key" >"$stamp"
    log "stand-in $name: made in $((SECONDS - t)) s"
}

# `podman import TAR NAME` with the given --change options. A failure says why (podman's own
# words and the free space: an import writes the layer more than once) and is tried once more
# after dropping what podman holds but no image uses.
import_stand_in() {
    local tar="$1" name="$2"
    shift 2
    local try
    for try in 1 2; do
        if pm import "$@" "$tar" "$name" >/dev/null 2>"$WORK/import.log"; then
            return 0
        fi
        log "podman import of $name failed (try $try, $(du -sh "$tar" | cut -f1) tar, $(free_space "$WORK") free under $WORK):"
        tail -n 20 "$WORK/import.log" >&2
        pm system prune -f >/dev/null 2>&1 || true
        rm -rf "${WORK:?}/tmp"/*
    done
    die "podman import of the stand-in $name failed twice (see above)"
}

stages=$(awk 'toupper($1) == "FROM" && toupper($3) == "AS" { print $4 }' "$DOCKERFILE")
for base in $(awk 'toupper($1) == "FROM" { print $2 }' "$DOCKERFILE" | sort -u); do
    if printf '%s\n' $stages | grep -qx -- "$base"; then
        continue # FROM an earlier stage
    fi
    make_stand_in "$(qualify "$base")"
done

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
log "podman build --isolation chroot -f $DOCKERFILE ."
t=$SECONDS
if ! pm build --isolation chroot --pull=never --layers -f "$DOCKERFILE" -t "$IMAGE" . \
    </dev/null >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    die "podman build failed ($(free_space "$WORK") free under $WORK; whole log: $WORK/build.log)"
fi
# The builder stage's layers belong to no tagged image: tag them (all cached, seconds) so that
# pruning the images of earlier builds keeps this build's cache, the dependency layer included.
pm build --isolation chroot --pull=never --layers -f "$DOCKERFILE" --target build \
    -t "$IMAGE-build" . </dev/null >>"$WORK/build.log" 2>&1 || die "tagging the build stage failed"
BUILD_SECS=$((SECONDS - t))
pm image prune -f >/dev/null 2>&1 || true
SIZE=$(pm image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE in ${BUILD_SECS} s: $((SIZE / 1000000)) MB"
CHECKS=$((CHECKS + 1))

# ---------------------------------------------------------------------------------------------
# Start the image's own entrypoint, user and config from its root filesystem
# ---------------------------------------------------------------------------------------------
# Built before anything is started, so that compiling is not counted against the relay.
log "building the outside client (cargo test --test deployed --no-run)"
cargo test -p mls-gateway --test deployed --no-run </dev/null >"$WORK/client-build.log" 2>&1 ||
    { tail -n 30 "$WORK/client-build.log" >&2; die "cannot build tests/deployed.rs"; }

CID=""
RELAY_PID=""
cleanup() {
    if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -KILL "$RELAY_PID" 2>/dev/null || true
    fi
    if [ -n "$CID" ]; then
        pm umount "$CID" >/dev/null 2>&1 || true
        pm rm -f "$CID" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# The image's config, as a runtime would read it.
eval "$(pm image inspect --format '{{json .Config}}' "$IMAGE" | python3 -c '
import json, shlex, sys
c = json.load(sys.stdin)
cmd = (c.get("Entrypoint") or []) + (c.get("Cmd") or [])
print("IMG_USER=" + shlex.quote(c.get("User") or "0"))
print("IMG_WORKDIR=" + shlex.quote(c.get("WorkingDir") or "/"))
print("IMG_ENV=(" + " ".join(shlex.quote(e) for e in c.get("Env") or []) + ")")
print("IMG_CMD=(" + " ".join(shlex.quote(a) for a in cmd) + ")")
')"
[ "${#IMG_CMD[@]}" -gt 0 ] || die "the image has no ENTRYPOINT/CMD"

CID=$(pm create --name "mls-gateway-image-test-$$" "$IMAGE")
RFS=$(pm mount "$CID")
[ -x "$RFS/usr/bin/env" ] || die "the image has no /usr/bin/env (used to enter its WORKDIR)"

# USER name[:group] resolves in the image's own /etc/passwd and /etc/group.
id_in_image() { # file name
    if [[ "$2" =~ ^[0-9]+$ ]]; then echo "$2"; else awk -F: -v n="$2" '$1 == n { print $3 }' "$RFS/etc/$1"; fi
}
img_user="${IMG_USER%%:*}"
uid=$(id_in_image passwd "$img_user")
if [[ "$IMG_USER" == *:* ]]; then
    gid=$(id_in_image group "${IMG_USER#*:}")
else
    gid=$(awk -F: -v u="$uid" '$3 == u { print $4; exit }' "$RFS/etc/passwd")
fi
[ -n "$uid" ] && [ -n "$gid" ] || die "USER $IMG_USER does not resolve in the image"
[ "$uid" -ne 0 ] || die "the image runs as root (USER $IMG_USER)"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_relay NAME [VAR=VALUE ...]: the image's command as its user, in its working directory,
# with its environment plus what Cloud Run sets (PORT) and the deployment gives (RELAY_URL).
start_relay() {
    local name="$1"
    shift
    PORT=$(free_port)
    URL="ws://127.0.0.1:$PORT"
    RELAY_LOG="$WORK/relay-$name.log"
    env -i "${IMG_ENV[@]}" PORT="$PORT" RELAY_URL="$URL" "$@" \
        chroot --userspec="$uid:$gid" "$RFS" /usr/bin/env -C "$IMG_WORKDIR" "${IMG_CMD[@]}" \
        </dev/null >"$RELAY_LOG" 2>&1 &
    RELAY_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            log "$name: the image's relay (pid $RELAY_PID, uid $uid) listens on $URL"
            return 0
        fi
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 30 "$RELAY_LOG" >&2
    die "$name: the image's relay did not start"
}

# check_relay NAME: the outside client's checks, then SIGTERM with a subscriber connected.
check_relay() {
    local name="$1" ready="$WORK/ready-$1" client_pid t rc i
    MLS_EXTERNAL_RELAY_URL="$URL" cargo test -q -p mls-gateway --test deployed -- \
        --skip close_frame </dev/null >"$WORK/client-$name.log" 2>&1 ||
        { cat "$WORK/client-$name.log" >&2; tail -n 30 "$RELAY_LOG" >&2; die "$name: checks failed"; }
    grep -E '^test result' "$WORK/client-$name.log" | sed "s/^/[image-test] $name: /" >&2
    CHECKS=$((CHECKS + 2)) # /health + NIP-11; EVENT -> OK -> REQ

    rm -f "$ready"
    MLS_EXTERNAL_RELAY_URL="$URL" MLS_EXTERNAL_READY_FILE="$ready" \
        cargo test -q -p mls-gateway --test deployed -- close_frame \
        </dev/null >"$WORK/client-$name-close.log" 2>&1 &
    client_pid=$!
    for ((i = 0; i < 300; i++)); do
        [ -f "$ready" ] && break
        sleep 0.1
    done
    [ -f "$ready" ] || { cat "$WORK/client-$name-close.log" >&2; die "$name: the subscriber did not get ready"; }
    t=$(date +%s%N)
    kill -TERM "$RELAY_PID"
    rc=0
    for ((i = 0; i < 150; i++)); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$RELAY_PID" 2>/dev/null; then
        die "$name: the relay still runs 15 s after SIGTERM"
    fi
    wait "$RELAY_PID" || rc=$?
    RELAY_PID=""
    local ms=$((($(date +%s%N) - t) / 1000000))
    [ "$rc" -eq 0 ] || { tail -n 20 "$RELAY_LOG" >&2; die "$name: exit status $rc after SIGTERM"; }
    [ "$ms" -le 10000 ] || die "$name: exit took $ms ms after SIGTERM (Cloud Run kills after 10 s)"
    wait "$client_pid" ||
        { cat "$WORK/client-$name-close.log" >&2; die "$name: no close frame with a reason on SIGTERM"; }
    log "$name: SIGTERM -> close frame with a reason, exit 0 in $ms ms"
    CHECKS=$((CHECKS + 1))
    grep -q '"severity"' "$RELAY_LOG" || die "$name: the image's logs are not JSON with severity"
    CHECKS=$((CHECKS + 1))
}

start_relay embedded
check_relay embedded

# PostgreSQL: the same image with its own cloudsql config (as deploy/cloudrun.yaml selects it)
# and scripts/test.sh's database.
if [ -n "${DATABASE_URL:-}" ]; then
    [ -f "$RFS/etc/mls-gateway/cloudsql.toml" ] || die "the image has no /etc/mls-gateway/cloudsql.toml"
    start_relay postgres MLS_GATEWAY_CONFIG=/etc/mls-gateway/cloudsql.toml DATABASE_URL="$DATABASE_URL"
    check_relay postgres
else
    log "PostgreSQL variant not run: DATABASE_URL is not set (scripts/test.sh sets it)"
fi

log "image $IMAGE: $((SIZE / 1000000)) MB; build ${BUILD_SECS} s; whole image test $(elapsed) s"
echo "image-test: $CHECKS passed, 0 failed"
