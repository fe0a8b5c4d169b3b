//! The shipped monitoring names only metrics the relay exports: every metric in the PromQL of
//! `deploy/prometheus/alerts.yml` and `deploy/grafana/mls-gateway.json` is looked up in the
//! `/metrics` of a running relay that has seen some traffic (histograms by their
//! `_bucket`/`_sum`/`_count` series). A renamed metric, or a typo in a rule or a panel, fails
//! here rather than as an alert that never fires or an empty panel.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// PromQL words that are not metric names: aggregations (which may be followed by `by (…)`
/// before their `(`) and keywords; functions are recognised by the `(` that follows them.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects. A small lexer, enough for what dashboards
/// and rules contain: string literals, label matchers (`{…}`) and range/subquery durations
/// (`[…]`) are dropped; an identifier followed by `(` is a function or aggregation; the label
/// lists after `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` are labels; numbers
/// and keywords are skipped; everything else is a metric name.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let mut label_list_next = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += if chars[i] == '\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if label_list_next => {
                // `by (le, op)`: labels up to the closing parenthesis.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                label_list_next = false;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let lower = word.to_ascii_lowercase();
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&lower.as_str())
                {
                    label_list_next = true;
                } else if chars.get(j) == Some(&'(') || KEYWORDS.contains(&lower.as_str()) {
                    // A function call, or a keyword.
                } else {
                    names.insert(word);
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number (with exponent or duration unit): not a name.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            '$' => {
                // A Grafana variable (`$__rate_interval`, `${datasource}`).
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || "_{}".contains(chars[i]))
                {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The `expr:` values of a Prometheus rules file (inline, or a `|` block of deeper-indented
/// lines).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let indent = line.len() - line.trim_start().len();
        if let Some(rest) = line.trim_start().strip_prefix("expr:") {
            let rest = rest.trim();
            if rest == "|" || rest == ">" || rest.starts_with("|-") || rest.starts_with(">-") {
                let mut block = String::new();
                while i + 1 < lines.len() {
                    let next = lines[i + 1];
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push_str(next.trim());
                    block.push('\n');
                    i += 1;
                }
                exprs.push(block);
            } else {
                exprs.push(rest.trim_matches(|c| c == '\'' || c == '"').to_owned());
            }
        }
        i += 1;
    }
    exprs
}

/// Every `expr` string anywhere in a Grafana dashboard (panels, rows, nested panels).
fn dashboard_exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The names the exposition has: every sample name, and every `# TYPE` name.
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.insert(rest.split(' ').next().unwrap_or("").to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

/// The referenced names the exposition lacks.
fn missing(referenced: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    referenced
        .iter()
        .filter(|n| !exported.contains(*n))
        .cloned()
        .collect()
}

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// (rules, dashboard): the metric names each references.
fn referenced() -> (BTreeSet<String>, BTreeSet<String>) {
    let rules: BTreeSet<String> = rule_exprs(&read("deploy/prometheus/alerts.yml"))
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/mls-gateway.json")).expect("dashboard JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "only {} dashboard queries", exprs.len());
    let panels: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    (rules, panels)
}

#[test]
fn promql_names_are_extracted_and_a_made_up_one_is_reported_missing() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le, op) (rate(mls_gateway_db_operation_duration_seconds_bucket{op=~"query|count"}[5m]))) > 1
           and on (instance) sum without (reason) (increase(mls_relay_rejections_total{reason="error"}[$__rate_interval] offset 1h)) / 2e3
           or vector(0) unless up"#,
    );
    let expected: BTreeSet<String> = [
        "mls_gateway_db_operation_duration_seconds_bucket",
        "mls_relay_rejections_total",
        "up",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, expected);

    let rules = "groups:\n  - rules:\n      - alert: A\n        expr: |\n          sum(rate(a_total[5m]))\n            / sum(rate(b_total[5m]))\n        for: 5m\n      - alert: B\n        expr: c > 0\n";
    assert_eq!(
        rule_exprs(rules),
        vec![
            "sum(rate(a_total[5m]))\n/ sum(rate(b_total[5m]))\n".to_owned(),
            "c > 0".to_owned()
        ]
    );

    let exposition = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"b\"} 1\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 0\nh_sum 0\nh_count 0\n";
    let exported = exported_names(exposition);
    let referenced: BTreeSet<String> =
        ["x_total", "h_bucket", "h_count", "mls_relay_made_up_total"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(
        missing(&referenced, &exported),
        vec!["mls_relay_made_up_total".to_owned()]
    );
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_name_is_in_metrics() {
    let (rules, panels) = referenced();
    assert!(rules.len() >= 6, "{rules:?}");
    assert!(panels.len() >= 12, "{panels:?}");

    let relay = Relay::start().await;
    // A bit of traffic, so that series which appear only once used exist too: an event
    // accepted (and fanned out to a live REQ), one refused, an AUTH accepted and one refused,
    // a COUNT, a /health check.
    let alice = keys();
    let mut ws = relay.connect_authed(&alice).await;
    let live = ws.req("live", &[serde_json::json!({"kinds": [1]})]).await;
    assert!(live.is_empty());
    ws.publish_ok(&ev(&alice, 1, &[], "hello")).await;
    ws.next_event("live").await;
    let (ok, _) = ws.publish(&ev(&alice, 444, &[], "rumor")).await;
    assert!(!ok);
    let mut other = relay.connect().await;
    let (ok, _) = other.auth(&keys(), "wss://not-this-relay.example").await;
    assert!(!ok);
    assert_eq!(relay.get("/health").await.status, 200);

    let resp = relay.get("/metrics").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let exported = exported_names(&resp.text());

    let missing_rules = missing(&rules, &exported);
    assert!(
        missing_rules.is_empty(),
        "deploy/prometheus/alerts.yml names metrics /metrics does not have: {missing_rules:?}"
    );
    let missing_panels = missing(&panels, &exported);
    assert!(
        missing_panels.is_empty(),
        "deploy/grafana/mls-gateway.json names metrics /metrics does not have: {missing_panels:?}"
    );
}

/// The value of one series (`name{labels}` exactly as exposed) in an exposition; 0 if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().expect("sample value"))
}

/// The counters the alerts added move by what happened: a slow reader cut, an AUTH refused
/// (and one accepted, which does not count), a health check.
#[tokio::test]
async fn slow_reader_auth_and_health_counters_move() {
    let relay = Relay::builder()
        .config("[limitation]\noutbox_capacity = 16\nmax_content_length = 262144\n")
        .start()
        .await;
    let before = relay.get("/metrics").await.text();
    let slow_cuts = "mls_relay_slow_reader_disconnects_total";
    let auth_invalid = "mls_relay_auth_refused_total{reason=\"invalid\"}";
    let checks = "mls_gateway_store_health_checks_total";
    let failures = "mls_gateway_store_health_failures_total";

    let k = keys();
    relay.connect_authed(&k).await;
    let mut refused = relay.connect().await;
    let (ok, msg) = refused.auth(&keys(), "wss://not-this-relay.example").await;
    assert!(!ok);
    assert_prefix(&msg, "invalid:");
    assert_eq!(relay.get("/health").await.status, 200);

    // A reader that subscribes to everything, then does not read, under 40 MiB of live traffic
    // (as in tests/limits.rs): its outbox fills and it is cut.
    let mut slow = relay.connect().await;
    slow.req("all", &[serde_json::json!({"kinds": [1]})]).await;
    let mut publisher = relay.connect().await;
    let body = "p".repeat(100 * 1024);
    'publish: for batch in 0..40 {
        let evs: Vec<_> = (0..10)
            .map(|i| ev(&k, 1, &[], &format!("{batch}-{i} {body}")))
            .collect();
        for e in &evs {
            publisher.send(&serde_json::json!(["EVENT", e])).await;
        }
        for e in &evs {
            let (ok, msg) = publisher.wait_ok(&id_hex(e)).await;
            assert!(ok, "{msg}");
        }
        let now = relay.get("/metrics").await.text();
        if value(&now, slow_cuts) > value(&before, slow_cuts) {
            break 'publish;
        }
    }

    let after = relay.get("/metrics").await.text();
    let d = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(d(slow_cuts), 1.0, "one slow reader, cut once");
    assert_eq!(d(auth_invalid), 1.0);
    assert_eq!(
        d("mls_relay_auth_refused_total{reason=\"restricted\"}"),
        0.0
    );
    assert_eq!(d(checks), 1.0);
    assert_eq!(d(failures), 0.0);
}
