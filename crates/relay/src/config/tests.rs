use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mls_gateway_rules::config::{MembershipSource, StorageBackend, UnknownGroups};
use mls_proto::parse_pubkey;

use super::mask::mask_database_url;
use super::*;

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/rnostr.toml");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/example.toml");
const DEV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/dev.toml");

/// NIP-19's example key, both spellings.
const HEX: &str = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
const NPUB: &str = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";

fn parse(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    Config::from_toml_str(text, "test.toml")
}

fn parse_ok(text: &str) -> Config {
    let (config, warnings) = parse(text).expect("parses");
    assert!(warnings.is_empty(), "unexpected warnings: {warnings:?}");
    config
}

fn value_error(text: &str) -> (String, String) {
    match parse(text) {
        Err(e @ ConfigError::Value { .. }) => (e.key().unwrap().to_string(), e.to_string()),
        other => panic!("expected a value error, got {other:?}"),
    }
}

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k: &str| map.get(k).cloned()
}

fn invalid_messages(config: &Config) -> Vec<String> {
    match config.validate() {
        Ok(()) => Vec::new(),
        Err(ConfigError::Many(all)) => all.iter().map(|e| e.to_string()).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn seed_file_loads_as_written() {
    let (config, warnings) = Config::load(Some(Path::new(SEED))).expect("seed file loads");
    assert!(warnings.is_empty(), "{warnings:?}");

    assert_eq!(config.server.host, "0.0.0.0");
    assert_eq!(config.server.port, 8080);
    assert_eq!(config.server.workers, Some(2));
    assert!(config.auth.enabled);
    assert_eq!(config.auth.pubkey_whitelist.len(), 2);
    assert_eq!(
        config.whitelist().len(),
        2,
        "hex and npub entries both parse"
    );
    let g = &config.extensions.mls_gateway;
    assert_eq!(g.storage_backend, StorageBackend::Firestore);
    assert_eq!(g.project_id.as_deref(), Some("your-gcp-project"));
    assert_eq!(g.keypackage_ttl, 86400);
    assert_eq!(g.welcome_ttl, 3600);
    assert!(g.enable_api);
    assert_eq!(g.api_prefix, "/api/v1/mls");
    assert!(g.enable_message_archive);
    assert_eq!(g.message_archive_ttl_days, 30);
    assert_eq!(g.rate_limits.max_events_per_minute, 100);
    assert_eq!(g.rate_limits.max_keypackages_per_hour, 10);
    assert_eq!(g.rate_limits.max_group_messages_per_minute, 50);
    // Keys the seed does not set keep their defaults.
    assert_eq!(config.limitation, Limits::default());
    assert_eq!(config.data, DataConfig::default());
    assert_eq!(config.listen_addr(), "0.0.0.0:8080");

    config
        .validate()
        .expect("the seed file is a valid configuration");
}

#[test]
fn example_file_is_the_defaults() {
    let (config, warnings) = Config::load(Some(Path::new(EXAMPLE))).expect("example loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(config, Config::default());
    config.validate().expect("defaults validate");
}

#[test]
fn example_file_documents_every_key() {
    fn keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if let toml::Value::Table(t) = v {
                keys(&key, t, out);
            } else {
                out.push(key);
            }
        }
    }
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let example: toml::Table = std::fs::read_to_string(EXAMPLE).unwrap().parse().unwrap();
    let (mut want, mut have) = (Vec::new(), Vec::new());
    keys("", &defaults, &mut want);
    keys("", &example, &mut have);
    let missing: Vec<_> = want.iter().filter(|k| !have.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "config/example.toml does not document {missing:?}"
    );
    // Keys without a default are shown commented out.
    let text = std::fs::read_to_string(EXAMPLE).unwrap();
    for key in [
        "workers",
        "relay_url",
        "metrics_token",
        "pubkey",
        "contact",
        "project_id",
        "database_id",
        "database_url",
        "redis_url",
    ] {
        assert!(text.contains(&format!("# {key} = ")), "{key} not shown");
    }
}

#[test]
fn dev_file_is_local_embedded_and_open() {
    let (config, warnings) = Config::load(Some(Path::new(DEV))).expect("dev loads");
    assert!(warnings.is_empty(), "{warnings:?}");
    config.validate().expect("dev validates");
    assert_eq!(config.listen_addr(), "127.0.0.1:8080");
    assert!(!config.auth.enabled);
    assert_eq!(
        config.extensions.mls_gateway.storage_backend,
        StorageBackend::Embedded
    );
}

#[test]
fn missing_file_means_defaults_but_a_wrong_path_is_an_error() {
    let (config, warnings) = Config::load(None).unwrap();
    assert_eq!(config, Config::default());
    assert!(warnings.is_empty());
    assert_eq!(config.listen_addr(), "127.0.0.1:8080");
    assert_eq!(config.data.path, PathBuf::from("./data"));
    assert_eq!(
        config.extensions.mls_gateway.storage_backend,
        StorageBackend::Embedded
    );
    assert!(!config.auth.enabled);

    let err = Config::load(Some(Path::new("/nonexistent/mls-gateway.toml"))).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/mls-gateway.toml"),
        "{err}"
    );

    // An empty file is a file with every key at its default.
    assert_eq!(parse_ok(""), Config::default());
}

#[test]
fn documented_defaults() {
    let c = Config::default();
    assert_eq!(c.server.host, "127.0.0.1");
    assert_eq!(c.server.port, 8080);
    assert_eq!(c.info.name, "MLS Gateway");
    assert_eq!(c.limitation.max_message_length, 1_048_576);
    assert_eq!(c.limitation.max_subscriptions, 50);
    assert_eq!(c.limitation.max_filters, 10);
    assert_eq!(c.limitation.max_limit, 500);
    assert_eq!(c.limitation.max_subid_length, 64);
    assert_eq!(c.limitation.max_event_tags, 2000);
    assert_eq!(c.limitation.max_content_length, 512 * 1024);
    assert_eq!(c.limitation.created_at_lower_limit, 0);
    assert_eq!(c.limitation.created_at_upper_limit, 900);
    assert_eq!(c.limitation.outbox_capacity, 1024);
}

#[test]
fn unknown_keys_are_warned_by_dotted_name() {
    let (config, warnings) = parse(
        r#"
        colour = "blue"
        [server]
        hots = "0.0.0.0"
        port = 9000
        [metrics]
        enabled = true
        [extensions.other]
        x = 1
        [extensions.mls_gateway]
        api_prefx = "/x"
        [extensions.mls_gateway.rate_limits]
        max_events_per_minute = 5
        max_events_per_hour = 7
        "#,
    )
    .expect("unknown keys are not errors");
    let mut warnings = warnings;
    warnings.sort();
    assert_eq!(
        warnings,
        vec![
            "unknown key colour",
            "unknown key extensions.mls_gateway.api_prefx",
            // rate_limits uses deny_unknown_fields: still a warning, not an error.
            "unknown key extensions.mls_gateway.rate_limits.max_events_per_hour",
            "unknown key extensions.other",
            "unknown key metrics",
            "unknown key server.hots",
        ]
    );
    // Known keys next to unknown ones still apply.
    assert_eq!(config.server.port, 9000);
    assert_eq!(
        config
            .extensions
            .mls_gateway
            .rate_limits
            .max_events_per_minute,
        5
    );
}

#[test]
fn invalid_values_name_the_key() {
    let (key, text) = value_error("[server]\nport = \"abc\"\n");
    assert_eq!(key, "server.port");
    assert!(text.contains("server.port"), "{text}");
    assert!(text.contains("test.toml"), "{text}");

    let (key, _) = value_error("[server]\nport = 70000\n");
    assert_eq!(key, "server.port");

    let (key, text) = value_error("[limitation]\nmax_limit = -1\n");
    assert_eq!(key, "limitation.max_limit");
    assert!(text.contains("limitation.max_limit"), "{text}");

    let (key, text) = value_error("[extensions.mls_gateway]\nstorage_backend = \"mongo\"\n");
    assert_eq!(key, "extensions.mls_gateway.storage_backend");
    for allowed in ["embedded", "cloudsql", "firestore"] {
        assert!(text.contains(allowed), "{text}");
    }

    let (key, text) = value_error("[extensions.mls_gateway]\nunknown_groups = \"maybe\"\n");
    assert_eq!(key, "extensions.mls_gateway.unknown_groups");
    assert!(text.contains("open") && text.contains("deny"), "{text}");

    let (key, _) =
        value_error("[extensions.mls_gateway]\nmembership_sources = [\"roster\", \"x\"]\n");
    assert_eq!(key, "extensions.mls_gateway.membership_sources[1]");

    let (key, _) =
        value_error("[extensions.mls_gateway.rate_limits]\nmax_events_per_minute = true\n");
    assert_eq!(
        key,
        "extensions.mls_gateway.rate_limits.max_events_per_minute"
    );

    let (key, _) = value_error("[auth]\npubkey_whitelist = \"abc\"\n");
    assert_eq!(key, "auth.pubkey_whitelist");

    let (key, _) = value_error("server = 3\n");
    assert_eq!(key, "server");

    match parse("[server\nport = 1\n") {
        Err(e @ ConfigError::Syntax { .. }) => assert!(e.to_string().contains("line 1"), "{e}"),
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

#[test]
fn bad_pubkeys_fail_validation_by_index() {
    let config = parse_ok(&format!(
        "[auth]\npubkey_whitelist = [\"{HEX}\", \"npub1nope\"]\npubkey_blacklist = [\"zz\"]\n\
         [info]\npubkey = \"x\"\n[extensions.mls_gateway]\nadmin_pubkeys = [\"{NPUB}\", \"{HEX}x\"]\n"
    ));
    assert_eq!(
        invalid_messages(&config),
        vec![
            "info.pubkey: not a hex or npub public key",
            "auth.pubkey_whitelist[1]: not a hex or npub public key",
            "auth.pubkey_blacklist[0]: not a hex or npub public key",
            "extensions.mls_gateway.admin_pubkeys[1]: not a hex or npub public key",
        ]
    );
    let single = parse_ok("[auth]\npubkey_whitelist = [\"nope\"]\n");
    let err = single.validate().unwrap_err();
    assert_eq!(err.key(), Some("auth.pubkey_whitelist"));
    assert_eq!(
        err.to_string(),
        "auth.pubkey_whitelist[0]: not a hex or npub public key"
    );
}

#[test]
fn npub_and_hex_entries_are_the_same_key() {
    let config = parse_ok(&format!(
        "[auth]\npubkey_whitelist = [\"{HEX}\", \"{NPUB}\"]\npubkey_blacklist = [\"{}\"]\n",
        HEX.to_uppercase()
    ));
    config.validate().unwrap();
    let key = parse_pubkey(HEX).unwrap();
    assert_eq!(config.whitelist(), vec![key]);
    assert_eq!(config.blacklist(), vec![key]);
    assert_eq!(parse_pubkey(NPUB), Some(key));
}

#[test]
fn limits_must_be_positive() {
    let mut config = Config::default();
    config.limitation.max_filters = 0;
    let err = config.validate().unwrap_err();
    assert_eq!(err.to_string(), "limitation.max_filters must be at least 1");
    assert_eq!(err.key(), Some("limitation.max_filters"));

    config.limitation.outbox_capacity = 0;
    config.server.workers = Some(0);
    assert_eq!(
        invalid_messages(&config),
        vec![
            "server.workers must be at least 1",
            "limitation.max_filters must be at least 1",
            "limitation.outbox_capacity must be at least 1",
        ]
    );
}

#[test]
fn server_values_are_checked() {
    let mut config = Config::default();
    config.server.relay_url = Some("wss://relay.example.com/".into());
    config.server.allowed_origins = vec!["*".into(), "https://app.example.com".into()];
    config.server.metrics_token = Some("s3cret".into());
    config.validate().unwrap();

    config.server.allowed_origins = vec!["https://app.example.com/".into(), "example.com".into()];
    config.server.relay_url = Some("wss://".into());
    config.server.host = String::new();
    config.server.metrics_token = Some(String::new());
    let messages = invalid_messages(&config);
    assert_eq!(messages.len(), 5, "{messages:?}");
    assert!(messages[0].starts_with("server.host"));
    assert!(messages[1].starts_with("server.relay_url"));
    assert!(messages[2].starts_with("server.allowed_origins[0]"));
    assert!(messages[3].starts_with("server.allowed_origins[1]"));
    assert!(messages[4].starts_with("server.metrics_token"));

    let mut config = Config::default();
    config.extensions.mls_gateway.api_prefix = "api/".into();
    assert!(config
        .validate()
        .unwrap_err()
        .to_string()
        .starts_with("extensions.mls_gateway.api_prefix"));
}

#[test]
fn firestore_database_id_follows_firestores_rule() {
    for ok in ["(default)", "mls-gateway", "db01"] {
        let text = format!(
            "[extensions.mls_gateway]\nstorage_backend = \"firestore\"\nproject_id = \"p\"\n\
             database_id = \"{ok}\"\n"
        );
        parse_ok(&text).validate().unwrap();
    }
    for bad in ["", "abc", "Mls", "1abc", "abc-", "a_bcd"] {
        let text = format!(
            "[extensions.mls_gateway]\nstorage_backend = \"firestore\"\nproject_id = \"p\"\n\
             database_id = \"{bad}\"\n"
        );
        let err = parse_ok(&text).validate().unwrap_err().to_string();
        assert!(
            err.starts_with("extensions.mls_gateway.database_id"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn backends_need_their_settings() {
    let mut config = parse_ok("[extensions.mls_gateway]\nstorage_backend = \"firestore\"\n");
    let err = config.validate().unwrap_err();
    assert_eq!(
        err.to_string(),
        "extensions.mls_gateway.project_id required for Firestore backend"
    );
    assert!(err
        .to_string()
        .contains("project_id required for Firestore backend"));
    config
        .apply_env(&env(&[("FIREBASE_PROJECT_ID", "proj")]))
        .unwrap();
    config.validate().unwrap();

    let mut config = parse_ok("[extensions.mls_gateway]\nstorage_backend = \"cloudsql\"\n");
    assert_eq!(
        config.validate().unwrap_err().to_string(),
        "extensions.mls_gateway.database_url required for cloudsql backend"
    );
    config
        .apply_env(&env(&[("DATABASE_URL", "postgres://u:p@db/mls")]))
        .unwrap();
    config.validate().unwrap();
    assert_eq!(
        config.extensions.mls_gateway.storage_backend,
        StorageBackend::Cloudsql
    );
}

#[test]
fn database_pool_size_is_bounded_and_named() {
    let text = "[extensions.mls_gateway]\nstorage_backend = \"cloudsql\"\n\
                database_url = \"postgres://u:p@db/mls\"\n";
    let config = parse_ok(text);
    assert_eq!(config.extensions.mls_gateway.database_pool_size, 16);
    assert_eq!(config.extensions.mls_gateway.database_statement_timeout, 10);
    for bad in [0, 1, 1001] {
        let config = parse_ok(&format!("{text}database_pool_size = {bad}\n"));
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("extensions.mls_gateway.database_pool_size"),
            "{bad}: {err}"
        );
    }
    parse_ok(&format!(
        "{text}database_pool_size = 2\ndatabase_statement_timeout = 0\n"
    ))
    .validate()
    .unwrap();
}

#[test]
fn env_overrides_each_variable() {
    let mut config = Config::load(Some(Path::new(SEED))).unwrap().0;
    config
        .apply_env(&env(&[
            ("PORT", "9999"),
            ("NOSTR_AUTH_REQUIRED", "0"),
            (
                "ALLOWED_ORIGINS",
                "https://a.example, https://b.example:8443 ,,",
            ),
            ("DATABASE_URL", "postgres://u:pw@h/db"),
            ("GOOGLE_CLOUD_PROJECT", "gcp"),
            ("FIREBASE_PROJECT_ID", "firebase"),
            ("METRICS_TOKEN", "tok"),
        ]))
        .unwrap();
    assert_eq!(config.server.port, 9999);
    assert!(!config.auth.enabled);
    assert_eq!(
        config.server.allowed_origins,
        vec!["https://a.example", "https://b.example:8443"]
    );
    let g = &config.extensions.mls_gateway;
    assert_eq!(g.database_url.as_deref(), Some("postgres://u:pw@h/db"));
    assert_eq!(
        g.project_id.as_deref(),
        Some("gcp"),
        "GOOGLE_CLOUD_PROJECT wins"
    );
    assert_eq!(config.server.metrics_token.as_deref(), Some("tok"));

    let mut config = Config::default();
    config
        .apply_env(&env(&[("FIREBASE_PROJECT_ID", "firebase")]))
        .unwrap();
    assert_eq!(
        config.extensions.mls_gateway.project_id.as_deref(),
        Some("firebase")
    );

    for (value, want) in [
        ("true", true),
        ("1", true),
        ("TRUE", true),
        ("false", false),
        ("0", false),
    ] {
        let mut config = Config::default();
        config.auth.enabled = !want;
        config
            .apply_env(&env(&[("NOSTR_AUTH_REQUIRED", value)]))
            .unwrap();
        assert_eq!(config.auth.enabled, want, "{value}");
    }

    // Nothing set, or set but empty: the file's values stay.
    let mut config = Config::load(Some(Path::new(SEED))).unwrap().0;
    let before = config.clone();
    config.apply_env(&env(&[])).unwrap();
    config
        .apply_env(&env(&[("PORT", ""), ("ALLOWED_ORIGINS", " ")]))
        .unwrap();
    assert_eq!(config, before);

    let err = Config::default()
        .apply_env(&env(&[("PORT", "http")]))
        .unwrap_err();
    assert_eq!(err.key(), Some("PORT"));
    assert!(err.to_string().contains("PORT"), "{err}");
    let err = Config::default()
        .apply_env(&env(&[("NOSTR_AUTH_REQUIRED", "yes please")]))
        .unwrap_err();
    assert!(err.to_string().contains("NOSTR_AUTH_REQUIRED"), "{err}");
}

#[test]
fn masking_hides_secrets() {
    let mut config = Config::default();
    config.server.metrics_token = Some("metrics-s3cret".into());
    config.extensions.mls_gateway.database_url =
        Some("postgres://gateway:db-s3cret@10.0.0.5:5432/mls?sslmode=require".into());
    config.auth.pubkey_whitelist = vec![HEX.into()];
    let shown = config.to_masked_toml();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("metrics_token = \"***\""), "{shown}");
    assert!(
        shown.contains("postgres://gateway:***@10.0.0.5:5432/mls?sslmode=require"),
        "{shown}"
    );
    assert!(shown.contains(HEX), "not a secret: {shown}");
    // The original is untouched, and the output is a loadable config.
    assert_eq!(
        config.server.metrics_token.as_deref(),
        Some("metrics-s3cret")
    );
    let (reloaded, warnings) = parse(&shown).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(reloaded.limitation, config.limitation);
    assert_eq!(reloaded.auth, config.auth);

    // The seed's config round-trips too.
    let seed = Config::load(Some(Path::new(SEED))).unwrap().0;
    assert_eq!(parse_ok(&seed.to_masked_toml()), seed);
}

#[test]
fn database_url_forms_are_masked() {
    for (url, want) in [
        ("postgres://u:pw@h/db", "postgres://u:***@h/db"),
        (
            "postgresql://u:p@ss@h:5432/db",
            "postgresql://u:***@h:5432/db",
        ),
        (
            "postgres://u@h/db?password=pw&sslmode=disable",
            "postgres://u@h/db?password=***&sslmode=disable",
        ),
        ("postgres://h/db", "postgres://h/db"),
        (
            "host=h user=u password=pw dbname=d",
            "host=h user=u password=*** dbname=d",
        ),
        (
            "host=h password = 'p w\\'x' user=u",
            "host=h password = *** user=u",
        ),
    ] {
        assert_eq!(mask_database_url(url), want, "{url}");
    }
}

#[test]
fn listen_addr_brackets_ipv6() {
    let mut config = Config::default();
    config.server.host = "::".into();
    config.server.port = 443;
    assert_eq!(config.listen_addr(), "[::]:443");
    config.server.host = "[::1]".into();
    assert_eq!(config.listen_addr(), "[::1]:443");
}

#[test]
fn enums_parse_by_name() {
    let config = parse_ok(
        "[extensions.mls_gateway]\nstorage_backend = \"cloudsql\"\nunknown_groups = \"deny\"\n\
         membership_sources = [\"roster\"]\n",
    );
    let g = &config.extensions.mls_gateway;
    assert_eq!(g.storage_backend, StorageBackend::Cloudsql);
    assert_eq!(g.unknown_groups, UnknownGroups::Deny);
    assert_eq!(g.membership_sources, vec![MembershipSource::Roster]);
}

#[test]
fn advisory_warnings() {
    assert!(Config::default().warnings().is_empty());
    let mut config = Config::default();
    config.auth.pubkey_whitelist = vec![HEX.into()];
    config.auth.pubkey_blacklist = vec![NPUB.into()];
    config.limitation.created_at_lower_limit = 3600;
    let w = config.warnings();
    assert_eq!(w.len(), 3, "{w:?}");
    assert!(w[0].starts_with("auth.pubkey_whitelist"));
    assert!(w[1].contains("both"));
    assert!(w[2].starts_with("limitation.created_at_lower_limit"));
}

#[test]
fn relay_url_is_one_url_or_a_list() {
    let config = parse_ok("[server]\nrelay_url = \"wss://Relay.example.com/\"\n");
    assert_eq!(config.public_urls(1).unwrap(), vec!["relay.example.com"]);
    let config =
        parse_ok("[server]\nrelay_url = [\"wss://a.example\", \"https://b.example:443/n/\"]\n");
    assert_eq!(
        config.public_urls(1).unwrap(),
        vec!["a.example", "b.example/n"]
    );
    config.validate().unwrap();

    let (key, message) = value_error("[server]\nrelay_url = 5\n");
    assert_eq!(key, "server.relay_url");
    assert!(message.contains("a URL or a list of URLs"), "{message}");
    let config = parse_ok("[server]\nrelay_url = []\n");
    assert!(invalid_messages(&config)[0].starts_with("server.relay_url"));
    let config = parse_ok("[server]\nrelay_url = [\"wss://a.example\", \"\"]\n");
    assert!(invalid_messages(&config)[0].starts_with("server.relay_url"));

    let mut config = Config::default();
    config
        .apply_env(&env(&[("RELAY_URL", "wss://a.example, wss://b.example")]))
        .unwrap();
    assert_eq!(
        config.public_urls(1).unwrap(),
        vec!["a.example", "b.example"]
    );
}

#[test]
fn without_relay_url_only_a_loopback_listen_address_is_derived() {
    let mut config = Config::default();
    assert_eq!(config.public_urls(8080).unwrap(), vec!["127.0.0.1:8080"]);
    // The port actually bound, for port = 0.
    config.server.port = 0;
    assert_eq!(config.public_urls(40123).unwrap(), vec!["127.0.0.1:40123"]);
    config.server.host = "::1".into();
    assert_eq!(config.public_urls(80).unwrap(), vec!["[::1]"]);
    config.server.host = "localhost".into();
    assert_eq!(config.public_urls(81).unwrap(), vec!["localhost:81"]);

    // A public address: NIP-42 / NIP-98 would need a URL the relay cannot know.
    for host in ["0.0.0.0", "::", "192.0.2.7", "relay.example.com"] {
        let mut config = Config::default();
        config.server.host = host.into();
        let err = config.public_urls(8080).unwrap_err();
        assert_eq!(err.key(), Some("server.relay_url"), "{host}");
        assert!(err.to_string().contains("RELAY_URL"), "{err}");
        config.auth.enabled = true;
        assert!(config.public_urls(8080).is_err());
        // Neither auth nor the API: nothing needs the URL; the listen address stands in.
        config.auth.enabled = false;
        config.extensions.mls_gateway.enable_api = false;
        assert!(config.public_urls(8080).is_ok(), "{host}");
        // With relay_url set, any listen address.
        config.auth.enabled = true;
        config.server.relay_url = Some("wss://relay.example.com".into());
        assert_eq!(config.public_urls(8080).unwrap(), vec!["relay.example.com"]);
    }
}

#[test]
fn auth_bounds_are_checked() {
    let mut config = Config::default();
    assert_eq!(config.auth.max_pubkeys_per_connection, 8);
    config.auth.max_pubkeys_per_connection = 0;
    assert_eq!(
        invalid_messages(&config),
        vec!["auth.max_pubkeys_per_connection must be at least 1"]
    );
}

#[test]
fn memory_bounds_have_defaults_and_are_checked() {
    let l = &Config::default().limitation;
    assert_eq!(l.outbox_max_bytes, 4 * 1024 * 1024);
    assert_eq!(l.outbox_total_bytes, 256 * 1024 * 1024);
    assert_eq!(l.max_filter_values, 2000);
    assert_eq!(l.max_subscription_bytes, 256 * 1024);
    let config = parse_ok(
        "[limitation]\noutbox_max_bytes = 1048576\noutbox_total_bytes = 8388608\n\
         max_filter_values = 500\nmax_subscription_bytes = 65536\n",
    );
    assert_eq!(config.limitation.outbox_total_bytes, 8 << 20);
    assert_eq!(config.limitation.max_filter_values, 500);
    let mut config = Config::default();
    config.limitation.outbox_max_bytes = 0;
    config.limitation.max_subscription_bytes = 0;
    assert_eq!(
        invalid_messages(&config),
        vec![
            "limitation.max_subscription_bytes must be at least 1",
            "limitation.outbox_max_bytes must be at least 1",
        ]
    );
    let mut config = Config::default();
    config.limitation.outbox_total_bytes = 1024;
    let w = config.warnings();
    assert!(
        w.len() == 1 && w[0].starts_with("limitation.outbox_total_bytes"),
        "{w:?}"
    );
}

#[test]
fn bus_keys_are_checked_named_and_masked() {
    let cloudsql = "[extensions.mls_gateway]\nstorage_backend = \"cloudsql\"\n\
                    database_url = \"postgres://u:p@db/mls\"\n";
    let config = parse_ok(cloudsql);
    assert_eq!(config.bus, BusConfig::default());
    assert_eq!(config.bus.catch_up_interval_ms, 1000);
    config.validate().unwrap();

    // REDIS_URL is the same key.
    let mut config = parse_ok(cloudsql);
    config
        .apply_env(&env(&[(
            "REDIS_URL",
            "redis://:r3dis-s3cret@10.0.0.3:6379",
        )]))
        .unwrap();
    config.validate().unwrap();
    let shown = config.to_masked_toml();
    assert!(!shown.contains("r3dis-s3cret"), "{shown}");
    assert!(shown.contains("redis://:***@10.0.0.3:6379"), "{shown}");

    for (extra, key) in [
        ("[bus]\nredis_url = \"10.0.0.3:6379\"\n", "bus.redis_url"),
        ("[bus]\nredis_channel = \"\"\n", "bus.redis_channel"),
        (
            "[bus]\ncatch_up_interval_ms = 0\n",
            "bus.catch_up_interval_ms",
        ),
        (
            "[bus]\ncatch_up_interval_ms = 60001\n",
            "bus.catch_up_interval_ms",
        ),
    ] {
        let err = parse_ok(&format!("{cloudsql}{extra}"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{extra}: {err}");
    }
    // A bus joins instances sharing a database; the embedded store is one process's.
    let err = parse_ok("[bus]\nredis_url = \"redis://127.0.0.1:6379\"\n")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bus.redis_url") && err.contains("cloudsql"),
        "{err}"
    );
}

// The one URL normaliser: NIP-42 `relay` tags, NIP-98 `u` URLs and `server.relay_url`.
#[test]
fn relay_urls_compare_without_scheme_and_slash() {
    assert_eq!(
        normalize_url("wss://Relay.Example.com/"),
        normalize_url("relay.example.com")
    );
    assert_eq!(
        normalize_url("ws://127.0.0.1:8080"),
        normalize_url("127.0.0.1:8080")
    );
    assert_eq!(
        normalize_url("https://h/path/"),
        normalize_url("wss://h/path")
    );
    assert_eq!(normalize_url("wss://h:443"), normalize_url("ws://h"));
    assert_ne!(
        normalize_url("wss://a.example"),
        normalize_url("wss://b.example")
    );
    assert_ne!(
        normalize_url("wss://a.example:8443"),
        normalize_url("wss://a.example")
    );
    assert_ne!(
        normalize_url("wss://a.example.evil"),
        normalize_url("wss://a.example")
    );
}

#[test]
fn urls_compare_without_scheme_default_port_or_fragment() {
    assert_eq!(
        normalize_url("https://Relay.Example.com:443/api/v1/mls/keypackages?owner=ab#x"),
        "relay.example.com/api/v1/mls/keypackages?owner=ab"
    );
    assert_eq!(normalize_url("http://127.0.0.1:8080/x"), "127.0.0.1:8080/x");
    assert_eq!(
        normalize_url("wss://relay.example.com"),
        "relay.example.com"
    );
    assert_eq!(
        normalize_url("relay.example.com/?x=1"),
        "relay.example.com?x=1"
    );
    // A trailing slash of the path doesn't matter; one in the query does.
    assert_eq!(
        normalize_url("https://a.example/x"),
        normalize_url("https://a.example/x/")
    );
    assert_ne!(
        normalize_url("https://a.example/x?o=a"),
        normalize_url("https://a.example/x?o=a/")
    );
    assert_ne!(
        normalize_url("https://a.example/X"),
        normalize_url("https://a.example/x")
    );
}

#[test]
fn the_embedded_store_size_is_checked() {
    let mut config = Config::default();
    assert_eq!(config.data.max_size_bytes(), 64 << 30);
    config.data.max_size_gib = 0.5;
    assert_eq!(config.data.max_size_bytes(), 512 << 20);
    assert!(config.validate().is_ok());
    for bad in [0.0, -1.0, 0.0001, f64::NAN, 2e6] {
        config.data.max_size_gib = bad;
        let err = config.validate().unwrap_err();
        assert_eq!(err.key(), Some("data.max_size_gib"), "{bad}: {err}");
    }
}
