//! The binary's other commands: `check-config` (seed file, errors naming the key, unknown-key
//! warnings, env overrides, masking), startup errors, and `export` / `import`.

mod common;

use common::*;
use mls_proto::Event;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn write_config(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.toml");
    std::fs::write(&p, text).unwrap();
    let s = p.to_str().unwrap().to_owned();
    (dir, s)
}

fn check_config(text: &str, env: &[(&str, &str)]) -> CliOutput {
    let (_dir, path) = write_config(text);
    run_cli(&["check-config", "-c", &path], None, env)
}

#[track_caller]
fn printed(out: &CliOutput) -> toml::Table {
    assert!(out.success(), "check-config failed: {out:?}");
    out.stdout
        .parse::<toml::Table>()
        .unwrap_or_else(|e| panic!("check-config output is not TOML ({e}): {}", out.stdout))
}

fn get<'a>(t: &'a toml::Table, path: &str) -> Option<&'a toml::Value> {
    let mut cur: Option<&toml::Value> = None;
    let mut table = t;
    for part in path.split('.') {
        let v = table.get(part)?;
        cur = Some(v);
        if let toml::Value::Table(next) = v {
            table = next;
        }
    }
    cur
}

/// The seed's file, as PROTOCOL.md §9 shows it (with real keys for the whitelist).
fn seed_text() -> String {
    format!(
        r#"
[server]
host = "0.0.0.0"
port = 8080
workers = 2
[auth]
enabled = true
pubkey_whitelist = ["{}", "{}"]
[extensions.mls_gateway]
storage_backend = "firestore"      # or "cloudsql" (PostgreSQL, database_url); default: embedded
project_id = "your-gcp-project"
keypackage_ttl = 86400
welcome_ttl = 3600
enable_api = true
api_prefix = "/api/v1/mls"
enable_message_archive = true
message_archive_ttl_days = 30
[extensions.mls_gateway.rate_limits]
max_events_per_minute = 100
max_keypackages_per_hour = 10
max_group_messages_per_minute = 50
"#,
        pk_hex(&keys()),
        npub(&keys())
    )
}

#[test]
fn seed_config_file_in_the_repo_parses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/rnostr.toml");
    assert!(
        std::path::Path::new(path).exists(),
        "config/rnostr.toml (the seed's file) is missing"
    );
    let out = run_cli(&["check-config", "-c", path], None, &[]);
    let t = printed(&out);
    assert!(get(&t, "server.port").is_some(), "{}", out.stdout);
}

#[test]
fn container_config_is_valid_and_uses_the_embedded_store() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config.toml");
    let out = run_cli(&["check-config", "-c", path], None, &[]);
    let t = printed(&out);
    assert_eq!(
        get(&t, "server.host").and_then(|v| v.as_str()),
        Some("0.0.0.0")
    );
    assert_eq!(
        get(&t, "extensions.mls_gateway.storage_backend").and_then(|v| v.as_str()),
        Some("embedded")
    );
}

#[test]
fn seed_config_as_written_in_the_protocol_parses() {
    let out = check_config(&seed_text(), &[]);
    let t = printed(&out);
    assert_eq!(
        get(&t, "server.port").and_then(|v| v.as_integer()),
        Some(8080)
    );
    assert_eq!(
        get(&t, "auth.enabled").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(
        get(&t, "extensions.mls_gateway.storage_backend").and_then(|v| v.as_str()),
        Some("firestore")
    );
    assert_eq!(
        get(
            &t,
            "extensions.mls_gateway.rate_limits.max_keypackages_per_hour"
        )
        .and_then(|v| v.as_integer()),
        Some(10)
    );
    assert_eq!(
        get(&t, "extensions.mls_gateway.welcome_ttl").and_then(|v| v.as_integer()),
        Some(3600)
    );
    // What it prints is itself a valid config.
    let again = check_config(&out.stdout, &[]);
    assert!(
        again.success(),
        "printed config does not load back: {again:?}"
    );
}

#[test]
fn secrets_are_masked_when_printed() {
    let out = check_config(
        r#"
[extensions.mls_gateway]
storage_backend = "cloudsql"
database_url = "postgres://gw:hunter2secret@db.internal:5432/gw"
"#,
        &[],
    );
    assert!(out.success(), "{out:?}");
    assert!(
        !out.stdout.contains("hunter2secret") && !out.stderr.contains("hunter2secret"),
        "database password printed: {out:?}"
    );
}

#[test]
fn invalid_values_exit_non_zero_naming_the_key() {
    let cases = [
        ("[server]\nport = \"eighty\"\n", "port"),
        ("[server]\nport = 70000\n", "port"),
        (
            "[limitation]\nmax_subscriptions = -5\n",
            "max_subscriptions",
        ),
        (
            "[limitation]\nmax_message_length = \"big\"\n",
            "max_message_length",
        ),
        ("[auth]\nenabled = \"yes\"\n", "enabled"),
        (
            "[auth]\npubkey_whitelist = [\"not-a-key\"]\n",
            "pubkey_whitelist",
        ),
        (
            "[extensions.mls_gateway]\nstorage_backend = \"mongodb\"\n",
            "storage_backend",
        ),
        (
            "[extensions.mls_gateway]\nunknown_groups = \"maybe\"\n",
            "unknown_groups",
        ),
        (
            "[extensions.mls_gateway.rate_limits]\nmax_events_per_minute = \"lots\"\n",
            "max_events_per_minute",
        ),
    ];
    for (text, key) in cases {
        let out = check_config(text, &[]);
        assert!(
            !out.success() && out.code.is_some(),
            "invalid config accepted:\n{text}\n{out:?}"
        );
        assert!(
            out.stderr.contains(key),
            "error does not name {key:?}:\n{text}\nstderr: {}",
            out.stderr
        );
    }
    let out = check_config("[server\nport = 1\n", &[]);
    assert!(!out.success(), "TOML syntax error accepted: {out:?}");
    assert!(!out.stderr.trim().is_empty());
}

#[test]
fn unknown_keys_are_warned_about_by_name() {
    let out = check_config(
        "[server]\nport = 8081\nbogus_setting = 1\n[extensions.mls_gateway]\nmystery_knob = true\n",
        &[],
    );
    assert!(out.success(), "unknown keys must warn, not fail: {out:?}");
    assert!(out.stderr.contains("bogus_setting"), "{}", out.stderr);
    assert!(out.stderr.contains("mystery_knob"), "{}", out.stderr);
}

#[test]
fn no_config_file_means_built_in_defaults() {
    // Without `-c` (and without MLS_GATEWAY_CONFIG, which the harness removes) the built-in
    // defaults apply. (An explicit `-c` naming a file that does not exist is an error: a typo
    // in a path must not silently start a relay with defaults.)
    let out = run_cli(&["check-config"], None, &[]);
    let t = printed(&out);
    assert_eq!(
        get(&t, "server.port").and_then(|v| v.as_integer()),
        Some(8080)
    );
    assert_eq!(
        get(&t, "server.host").and_then(|v| v.as_str()),
        Some("127.0.0.1")
    );
    assert_eq!(
        get(&t, "auth.enabled").and_then(|v| v.as_bool()),
        Some(false)
    );
    assert_eq!(
        get(&t, "extensions.mls_gateway.storage_backend").and_then(|v| v.as_str()),
        Some("embedded")
    );
}

#[test]
fn environment_overrides_the_file() {
    let out = check_config(
        "[server]\nport = 8081\n[auth]\nenabled = false\n",
        &[
            ("PORT", "9911"),
            ("NOSTR_AUTH_REQUIRED", "true"),
            ("GOOGLE_CLOUD_PROJECT", "env-project"),
        ],
    );
    let t = printed(&out);
    assert_eq!(
        get(&t, "server.port").and_then(|v| v.as_integer()),
        Some(9911)
    );
    assert_eq!(
        get(&t, "auth.enabled").and_then(|v| v.as_bool()),
        Some(true)
    );
    assert_eq!(
        get(&t, "extensions.mls_gateway.project_id").and_then(|v| v.as_str()),
        Some("env-project")
    );
}

#[test]
fn firestore_backend_without_project_id_is_a_clear_startup_error() {
    let data = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = {}\n[data]\npath = {:?}\n[extensions.mls_gateway]\nstorage_backend = \"firestore\"\n",
        free_port(),
        data.path().join("data").to_string_lossy()
    );
    let (_dir, path) = write_config(&text);
    let out = run_cli_timeout(&["relay", "-c", &path], None, &[], Duration::from_secs(60));
    assert!(!out.success() && out.code.is_some(), "{out:?}");
    assert!(
        out.stderr
            .contains("project_id required for Firestore backend"),
        "stderr: {}",
        out.stderr
    );
}

#[test]
fn firestore_backend_in_relay_mode_is_a_clear_startup_error() {
    let data = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nhost = \"127.0.0.1\"\nport = {}\n[data]\npath = {:?}\n[extensions.mls_gateway]\nstorage_backend = \"firestore\"\nproject_id = \"your-gcp-project\"\n",
        free_port(),
        data.path().join("data").to_string_lossy()
    );
    let (_dir, path) = write_config(&text);
    let out = run_cli_timeout(&["relay", "-c", &path], None, &[], Duration::from_secs(60));
    assert!(
        !out.success() && out.code.is_some(),
        "relay with an unreachable Firestore did not exit non-zero: {out:?}"
    );
    assert!(
        out.stderr.to_ascii_lowercase().contains("firestore"),
        "error does not say what failed: {}",
        out.stderr
    );
}

/// The events of a backup, as plain event lines (what other relays export).
fn export_ids(relay: &Relay) -> (Vec<String>, BTreeSet<String>) {
    let out = relay.cli(&["export"], None);
    assert!(out.success(), "export failed: {out:?}");
    let lines: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["type"] == "event").then(|| v["event"].to_string())
        })
        .collect();
    let mut ids = BTreeSet::new();
    for l in &lines {
        let e: Event = serde_json::from_str(l)
            .unwrap_or_else(|err| panic!("export line is not an event ({err}): {l}"));
        assert_eq!(e.verify(), Ok(()), "exported event does not verify: {l}");
        assert!(ids.insert(e.id.to_hex()), "event exported twice: {l}");
    }
    (lines, ids)
}

#[tokio::test]
async fn export_import_round_trip_through_a_second_data_dir() {
    let mut a = Relay::start().await;
    let k = keys();
    let t = now() - 1000;
    let mut ws = a.connect().await;
    let regular: Vec<Event> = (0..3)
        .map(|i| ev_at(&k, t + i, 1, &[&["t", "x"]], &format!("note {i} ✓")))
        .collect();
    for e in &regular {
        ws.publish_ok(e).await;
    }
    let meta_old = ev_at(&k, t, 0, &[], "{\"name\":\"old\"}");
    let meta_new = ev_at(&k, t + 5, 0, &[], "{\"name\":\"new\"}");
    ws.publish_ok(&meta_old).await;
    ws.publish_ok(&meta_new).await;
    let art = ev_at(&k, t, 30023, &[&["d", "a"]], "article");
    ws.publish_ok(&art).await;
    let doomed = ev_at(&k, t, 1, &[], "deleted");
    ws.publish_ok(&doomed).await;
    let del = ev_at(&k, t + 10, 5, &[&["e", &id_hex(&doomed)]], "");
    ws.publish_ok(&del).await;
    drop(ws);
    a.kill();

    let (lines, ids) = export_ids(&a);
    let mut want: BTreeSet<String> = regular.iter().map(id_hex).collect();
    want.extend([id_hex(&meta_new), id_hex(&art), id_hex(&del)]);
    assert_eq!(ids, want, "exported set differs from the stored set");

    let mut b = Relay::builder().prepare();
    let input = lines.join("\n") + "\n";
    let out = b.cli(&["import"], Some(input.as_bytes()));
    assert!(out.success(), "import failed: {out:?}");
    assert!(
        !(out.stdout.trim().is_empty() && out.stderr.trim().is_empty()),
        "import printed no summary"
    );
    let (_, ids_b) = export_ids(&b);
    assert_eq!(ids_b, want, "import lost or added events");

    b.spawn().await;
    let mut ws = b.connect().await;
    let mut served = ws.query(&[json!({"authors": [pk_hex(&k)]})]).await;
    let mut expected: Vec<serde_json::Value> = regular.iter().map(event_value).collect();
    expected.extend([event_value(&meta_new), event_value(&art), event_value(&del)]);
    let key = |v: &serde_json::Value| v["id"].as_str().unwrap().to_owned();
    served.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(served, expected, "imported events not served unchanged");

    // The deletion came along as a deletion: the deleted id stays refused.
    let (ok, msg) = ws.publish(&doomed).await;
    assert!(!ok, "deleted event accepted after import");
    assert_prefix(&msg, "blocked:");
    // And the replaced metadata stays replaced.
    let (ok, _) = ws.publish(&meta_old).await;
    assert!(!ok, "older metadata accepted after import");
}

/// A gated group's traffic, exported and imported: the 445s were accepted because their
/// (throwaway-key) publisher's connection was a member, which an import cannot re-check; the
/// operator's replay takes them, and the replayed roster gates the group again.
#[tokio::test]
async fn import_replays_a_gated_groups_messages() {
    let mut a = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let (admin, member, stranger, throwaway) = (keys(), keys(), keys(), keys());
    let group = "ab".repeat(32);
    let mut adm = a.connect_authed(&admin).await;
    let roster = ev(
        &admin,
        450,
        &[
            &["h", &group],
            &["op", "bootstrap"],
            &["seq", "1"],
            &["p", &pk_hex(&member)],
        ],
        "",
    );
    adm.publish_ok(&roster).await;
    let mut mem = a.connect_authed(&member).await;
    let message = ev(
        &throwaway,
        445,
        &[&["h", &group], &["k", "1"]],
        "ciphertext",
    );
    mem.publish_ok(&message).await;
    drop((adm, mem));
    a.kill();

    let (lines, ids) = export_ids(&a);
    assert!(ids.contains(&id_hex(&message)) && ids.contains(&id_hex(&roster)));
    let mut b = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .prepare();
    let out = b.cli(&["import"], Some((lines.join("\n") + "\n").as_bytes()));
    assert!(out.success(), "import failed: {out:?}");
    assert!(
        out.stderr
            .contains("imported 2 events (0 duplicates, 0 rejected)"),
        "{out:?}"
    );

    b.spawn().await;
    let filter = [json!({"kinds": [445], "#h": [group]})];
    let mut mem = b.connect_authed(&member).await;
    let got = mem.query(&filter).await;
    assert_eq!(
        got,
        vec![event_value(&message)],
        "the member reads the imported 445"
    );
    let mut other = b.connect_authed(&stranger).await;
    // Nothing for the stranger: an empty EOSE, as for a group that does not exist (security
    // rule 10: the answer does not say the group is gated).
    assert!(
        other.query(&filter).await.is_empty(),
        "the stranger reads nothing"
    );
}

#[tokio::test]
async fn import_refuses_a_tampered_event() {
    let relay = Relay::builder().prepare();
    let k = keys();
    let good = ev(&k, 1, &[], "good");
    let mut tampered = ev(&k, 1, &[], "signed text");
    tampered.content = "changed text".into();
    let mut bad_sig = ev(&k, 1, &[], "bad sig");
    bad_sig.sig.0[0] ^= 1;
    let input = format!(
        "{}\n{}\nthis is not json\n{}\n",
        tampered.to_json(),
        good.to_json(),
        bad_sig.to_json()
    );
    let out = relay.cli(&["import"], Some(input.as_bytes()));
    assert!(out.code.is_some(), "{out:?}");
    assert!(
        !(out.stdout.trim().is_empty() && out.stderr.trim().is_empty()),
        "import printed no summary"
    );
    let (_, ids) = export_ids(&relay);
    assert!(
        ids.contains(&id_hex(&good)),
        "valid event not imported: {out:?}"
    );
    assert!(!ids.contains(&id_hex(&tampered)), "tampered event imported");
    assert!(
        !ids.contains(&id_hex(&bad_sig)),
        "badly signed event imported"
    );
    assert_eq!(ids.len(), 1);
}

/// Plain event lines are written many at a time (group commit), yet in the order of the
/// file: a deletion before a re-sent target, versions of one address, a roster sequence and
/// refusals all come out as they would one by one, and the report keeps line order.
#[tokio::test]
async fn import_of_plain_lines_keeps_the_order_of_the_file() {
    let relay = Relay::builder().prepare();
    let (alice, admin, member) = (keys(), keys(), keys());
    let t = now() - 1000;
    let note = ev_at(&alice, t, 1, &[], "note");
    let delete = ev_at(&alice, t + 1, 5, &[&["e", &id_hex(&note)]], "");
    let v1 = ev_at(&alice, t + 10, 0, &[], "v1");
    let v0 = ev_at(&alice, t + 5, 0, &[], "v0 (older)");
    let v2 = ev_at(&alice, t + 20, 0, &[], "v2");
    let group = "cd".repeat(32);
    let roster = |seq: &str, at: u64| {
        ev_at(
            &admin,
            at,
            450,
            &[
                &["h", &group],
                &["op", if seq == "1" { "bootstrap" } else { "add" }],
                &["seq", seq],
                &["p", &pk_hex(&member)],
            ],
            "",
        )
    };
    let (r1, r2) = (roster("1", t + 30), roster("2", t + 31));
    // Filler between them, so the writes span several batches and the window.
    let filler: Vec<Event> = (0..3000)
        .map(|i| ev_at(&keys(), t - 10_000 + i, 1, &[&["t", "filler"]], "x"))
        .collect();
    let mut lines: Vec<String> = vec![note.to_json(), delete.to_json(), note.to_json()];
    lines.extend(filler[..1500].iter().map(|e| e.to_json()));
    lines.extend([v1.to_json(), v0.to_json(), v2.to_json(), r1.to_json()]);
    lines.extend(filler[1500..].iter().map(|e| e.to_json()));
    lines.extend([r1.to_json(), r2.to_json(), "not json".to_string()]);
    let out = relay.cli(&["import"], Some((lines.join("\n") + "\n").as_bytes()));
    assert!(out.success(), "import failed: {out:?}");
    // note, delete, 3000 filler, v1, v2, r1, r2 stored; v0 refused for the newer version, the
    // re-sent note for its deletion, the repeated r1 a duplicate, the last line not JSON.
    assert!(
        out.stderr
            .contains("imported 3006 events (1 duplicates, 3 rejected)"),
        "{out:?}"
    );
    let report: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("line "))
        .collect();
    let numbers: Vec<usize> = report
        .iter()
        .map(|l| l[5..l.find(':').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(numbers, vec![3, 1505, lines.len()], "{report:?}");
    let (_, ids) = export_ids(&relay);
    assert!(!ids.contains(&id_hex(&note)), "the deleted note came back");
    assert!(ids.contains(&id_hex(&v2)) && !ids.contains(&id_hex(&v1)));
    assert!(!ids.contains(&id_hex(&v0)));
    assert!(ids.contains(&id_hex(&r1)) && ids.contains(&id_hex(&r2)));
}
