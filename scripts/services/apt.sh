#!/usr/bin/env bash
# Installing a service's Debian packages, shared by the scripts in scripts/services/ (sourced).
#
#   apt_install NAME [apt-get install options...] PACKAGE...
#
# As root only (NAME prefixes the messages). Quiet; packages that ship a service are kept from
# starting it (policy-rc.d), since the tests start their own on loopback; a failed install is
# retried once after `apt-get update`.
apt_install() {
    local name="$1"
    shift
    if [ "$(id -u)" -ne 0 ]; then
        printf '[%s] not installed and we are not root: apt-get install %s\n' "$name" "$*" >&2
        return 1
    fi
    printf "[%s] installing %s from Debian's packages\n" "$name" "$*" >&2
    export DEBIAN_FRONTEND=noninteractive
    local policy="" ok=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy=/usr/sbin/policy-rc.d
    fi
    apt-get install -y -q "$@" </dev/null >/dev/null 2>&1 ||
        { apt-get update -q </dev/null >/dev/null 2>&1 &&
            apt-get install -y -q "$@" </dev/null >/dev/null 2>&1; } || ok=1
    [ -n "$policy" ] && rm -f "$policy"
    [ "$ok" -eq 0 ] || printf '[%s] apt-get install %s failed\n' "$name" "$*" >&2
    return "$ok"
}
