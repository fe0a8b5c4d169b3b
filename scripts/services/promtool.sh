#!/usr/bin/env bash
# promtool (Debian's `prometheus` package), to check the alerting rules in deploy/prometheus/.
# Not a service: nothing is started, only the tool is installed when missing.
#
# Sourced by scripts/test.sh, which calls `check_alert_rules`. Also runnable by hand:
#
#   bash scripts/services/promtool.sh       # installs promtool if needed, checks the rules
#
# - Installs Debian's `prometheus` package when promtool is missing (its own service is kept
#   from starting; no Prometheus server runs).
# - `promtool check rules` validates deploy/prometheus/alerts.yml (syntax, PromQL, templates);
#   `promtool test rules` runs deploy/prometheus/alerts.test.yml, where every alert fires on
#   made-up series and stays quiet on others; the Grafana dashboard's queries are checked as
#   PromQL the same way (as recording rules of a throwaway file).

# shellcheck source=apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

_promtool_log() { printf '[promtool.sh] %s\n' "$*" >&2; }

_promtool_install() {
    command -v promtool >/dev/null 2>&1 && return 0
    apt_install promtool.sh --no-install-recommends prometheus || return 1
    command -v promtool >/dev/null 2>&1 || { _promtool_log "no promtool after installing prometheus"; return 1; }
}

# check_alert_rules: installs promtool if needed, then checks and unit-tests the rules.
check_alert_rules() {
    _promtool_install || return 1
    _promtool_log "$(promtool --version 2>&1 | head -n1)"
    promtool check rules deploy/prometheus/alerts.yml </dev/null || return 1
    promtool test rules deploy/prometheus/alerts.test.yml </dev/null || return 1
    # The dashboard's queries parse as PromQL too: each becomes a recording rule of a
    # throwaway rules file (Grafana's $__rate_interval read as 5m) that promtool checks.
    local dir
    dir="$(mktemp -d)"
    python3 - deploy/grafana/mls-gateway.json >"$dir/dashboard-rules.yml" <<'PY' || { rm -rf "$dir"; return 1; }
import json, sys
def exprs(v):
    if isinstance(v, dict):
        for k, x in v.items():
            if k == "expr" and isinstance(x, str):
                yield x
            else:
                yield from exprs(x)
    elif isinstance(v, list):
        for x in v:
            yield from exprs(x)
found = [e.replace("$__rate_interval", "5m") for e in exprs(json.load(open(sys.argv[1])))]
assert found, "no queries in the dashboard"
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(found):
    print(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(e)}")
PY
    _promtool_log "the dashboard's queries (deploy/grafana/mls-gateway.json) as PromQL"
    promtool check rules "$dir/dashboard-rules.yml" </dev/null || { rm -rf "$dir"; return 1; }
    rm -rf "$dir"
}

# Run by hand.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/../.."
    check_alert_rules
fi
