//! Tests of `lib.rs`: construction, NIP-11, deletion rights, the kinds with plain Nostr rules.
//! Each module's own tests are beside it (`kinds/group_message/tests.rs`, …); the suites
//! below this file run across modules.

pub(crate) mod fixtures;

use fixtures::*;

/// Visibility as data: stored audiences and read scopes against the visibility rule.
mod audience;
/// Issue 8's group and mailbox rules (takeover, roster vs gift wrap, deletions, purge chunks).
mod security;

#[test]
fn other_kinds_follow_plain_nostr_rules() {
    let mut e = env(true);
    let alice = e.w.alice;
    for kind in [1u16, 10002, 10050, 10051, 0, 3] {
        let a = e.ok(
            &ev(&alice, kind, T, &[&["relay", "wss://x"]], "x"),
            &[pk(&alice)],
            T,
        );
        assert_eq!(
            a,
            Admitted {
                expires_at: None,
                store: true
            },
            "kind {kind}"
        );
    }
    let exp = (T + 50).to_string();
    let a = e.ok(
        &ev(&alice, 10050, T, &[&["expiration", &exp]], ""),
        &[pk(&alice)],
        T,
    );
    assert_eq!(a.expires_at, Some(T + 50));
    // A malformed expiration on a non-gateway kind is not the gateway's business.
    e.ok(&ev(&alice, 1, T, &[&["expiration", "soon"]], ""), &[], T);
}

#[test]
fn deletion_rights() {
    let e = env(false);
    let w = W::new();
    let gift = ev(&w.eph, 1059, T, &[&["p", &hx(&w.bob)]], "x");
    let dm = ev(&w.alice, 446, T, &[&["p", &hx(&w.bob)]], "x");
    let note = ev(&w.alice, 1, T, &[&["p", &hx(&w.bob)]], "x");
    assert!(
        e.gw.may_delete(&pk(&w.bob), &gift),
        "recipient deletes a gift wrap"
    );
    assert!(
        e.gw.may_delete(&pk(&w.eph), &gift),
        "author deletes a gift wrap"
    );
    assert!(!e.gw.may_delete(&pk(&w.carol), &gift));
    assert!(
        !e.gw.may_delete(&pk(&w.bob), &dm),
        "a 446's recipient may not take it from its author, who reads it too"
    );
    assert!(e.gw.may_delete(&pk(&w.alice), &dm));
    assert!(!e.gw.may_delete(&pk(&w.carol), &dm));
    assert!(
        !e.gw.may_delete(&pk(&w.bob), &note),
        "p on other kinds gives no right"
    );
    assert!(e.gw.may_delete(&pk(&w.alice), &note));
}

#[test]
fn construction_validates_admin_pubkeys() {
    let w = W::new();
    let cfg = |admins: Vec<String>| GatewayConfig {
        admin_pubkeys: admins,
        ..GatewayConfig::default()
    };
    let err = Gateway::new(cfg(vec![hx(&w.alice), "not-a-key".into()]), true).unwrap_err();
    assert!(
        err.contains("admin_pubkeys") && err.contains("not-a-key"),
        "{err}"
    );
    let npub = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
    let gw = Gateway::new(cfg(vec![npub.into(), hx(&w.alice).to_uppercase()]), false).unwrap();
    assert!(gw.is_admin(&pk(&w.alice)));
    assert_eq!(gw.admin_pubkeys().len(), 2);
    let bad = GatewayConfig {
        max_keypackages_per_query: 0,
        ..GatewayConfig::default()
    };
    assert!(Gateway::new(bad, false)
        .unwrap_err()
        .contains("max_keypackages_per_query"));
}

#[test]
fn nip11_describes_the_gateway() {
    let e = env_with(true, |c| {
        c.unknown_groups = UnknownGroups::Deny;
        c.keypackage_claims = true;
    });
    let s = e.gw.nip11_section();
    assert_eq!(s["dialects"], json!(["marmot", "loxation"]));
    for k in [443, 444, 445, 446, 450, 1059, 10002, 10050, 10051, 30443] {
        assert!(s["kinds"].as_array().unwrap().contains(&json!(k)));
    }
    assert_eq!(s["membership"]["unknown_groups"], "deny");
    assert_eq!(
        s["membership"]["sources"],
        json!(["roster", "giftwrap", "api"])
    );
    assert_eq!(s["keypackage_claims"]["enabled"], true);
    assert_eq!(s["retention"]["welcome_ttl"], e.gw.config().welcome_ttl);
    assert!(
        !s.to_string().contains(&hx(&e.w.dave)),
        "admin keys are not published"
    );
}
