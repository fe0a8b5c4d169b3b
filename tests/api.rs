//! The HTTP API end to end (PROTOCOL §2, §7): every endpoint's success and each refusal, NIP-98,
//! allowlists, CORS, and the OpenAPI document against the implemented routes.

mod common;
mod support_api;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use support_api::*;

const OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

fn admin_config(admin: &secp256k1::Keypair) -> String {
    format!(
        "[extensions.mls_gateway]\nadmin_pubkeys = [\"{}\"]\n",
        pk_hex(admin)
    )
}

/// Creates `group` through the admin API with `members`.
async fn create_group(relay: &Relay, admin: &secp256k1::Keypair, group: &str, members: &[String]) {
    let resp = call(
        relay,
        "POST",
        &format!("/admin/groups/{group}/members"),
        Some(admin),
        Some(&pubkeys_body(members)),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

// ---------------------------------------------------------------------------------------------
// The OpenAPI document
// ---------------------------------------------------------------------------------------------

fn documented() -> BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(OPENAPI).unwrap()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete", "head", "options"]
                .contains(&method.as_str())
            {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn openapi_documents_exactly_the_implemented_routes() {
    let implemented: BTreeSet<(String, String)> =
        mls_relay::http::routes(&mls_relay::config::Config::default())
            .into_iter()
            .map(|(m, p)| (m.to_string(), p))
            .collect();
    let documented = documented();
    let missing: Vec<_> = implemented.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&implemented).collect();
    assert!(
        missing.is_empty(),
        "routes not in docs/openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented but not implemented: {extra:?}"
    );

    // And the running relay answers every documented route (no "unknown endpoint", no 405),
    // while an undocumented path is unknown.
    let relay = Relay::start().await;
    for (method, path) in &documented {
        let path = path.replace("{group_id}", "g1");
        let body = (method != "GET").then(|| b"{}".as_slice());
        let resp = request(relay.port, method, &path, &[], body).await;
        assert!(
            resp.status != 405 && !(resp.status == 404 && resp.text().contains("unknown_endpoint")),
            "{method} {path} is documented but answered {} {}",
            resp.status,
            resp.text()
        );
    }
    let resp = request(
        relay.port,
        "GET",
        &format!("{PREFIX}/nothing-here"),
        &[],
        None,
    )
    .await;
    assert_error(&resp, 404, "unknown_endpoint");
    let resp = request(
        relay.port,
        "PUT",
        &format!("{PREFIX}/keypackages"),
        &[],
        Some(b"{}"),
    )
    .await;
    assert_error(&resp, 405, "method_not_allowed");
}

#[tokio::test]
async fn enable_api_false_removes_the_api_but_not_health_or_metrics() {
    let relay = Relay::builder()
        .config("[extensions.mls_gateway]\nenable_api = false\n")
        .start()
        .await;
    let owner = pk_hex(&keys());
    let resp = relay
        .get(&format!("{PREFIX}/keypackages?owner={owner}"))
        .await;
    assert_error(&resp, 404, "unknown_endpoint");
    assert_eq!(relay.get("/health").await.status, 200);
    assert_eq!(relay.get("/metrics").await.status, 200);
    assert!(mls_relay::http::routes(&{
        let mut c = mls_relay::config::Config::default();
        c.extensions.mls_gateway.enable_api = false;
        c
    })
    .iter()
    .all(|(_, p)| !p.starts_with(PREFIX)));
}

#[tokio::test]
async fn api_prefix_is_configurable() {
    let relay = Relay::builder()
        .config("[extensions.mls_gateway]\napi_prefix = \"/mls\"\n")
        .start()
        .await;
    let owner = pk_hex(&keys());
    let resp = relay.get(&format!("/mls/keypackages?owner={owner}")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!({"keypackages": []}));
    let resp = relay
        .get(&format!("{PREFIX}/keypackages?owner={owner}"))
        .await;
    assert_error(&resp, 404, "unknown_endpoint");
}

// ---------------------------------------------------------------------------------------------
// KeyPackage directory
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn keypackage_listing_is_public_with_auth_off_and_lists_unexpired_only() {
    let relay = Relay::start().await;
    let alice = keys();
    let mut ws = relay.connect().await;
    let r1 = unique_hex();
    let r2 = unique_hex();
    let r3 = unique_hex();
    let kp1 = keypackage(&alice, 443, &r1, "AAEAASDKu4HPHhXparg+o4NY", &[]);
    let kp2 = keypackage(&alice, 30443, &r2, "AAEAASDKu4HPHhXparg+o4NZ", &[]);
    let soon = (now() + 2).to_string();
    let kp3 = keypackage(
        &alice,
        443,
        &r3,
        "AAEAASDKu4HPHhXparg+o4Na",
        &[&["expiration", &soon]],
    );
    for kp in [&kp1, &kp2, &kp3] {
        ws.publish_ok(kp).await;
    }
    // Someone else's KeyPackage is not listed for alice.
    ws.publish_ok(&keypackage(&keys(), 443, &unique_hex(), "AAEAAQ==", &[]))
        .await;

    // Wait until kp3 has expired (by the clock, not by a duration assertion).
    while now() <= now_plus(&soon) {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let resp = relay
        .get(&format!("{PREFIX}/keypackages?owner={}", pk_hex(&alice)))
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let list = resp.json()["keypackages"].as_array().unwrap().clone();
    let ids: BTreeSet<String> = list
        .iter()
        .map(|k| k["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from([id_hex(&kp1), id_hex(&kp2)]),
        "{list:?}"
    );
    for k in &list {
        let keys: BTreeSet<&str> = k.as_object().unwrap().keys().map(|s| s.as_str()).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "owner",
                "key_reference",
                "ciphersuite",
                "expires_at",
                "event_id"
            ])
        );
        assert_eq!(k["owner"], pk_hex(&alice));
        assert_eq!(k["ciphersuite"], "0x0001");
        assert!(k["expires_at"].as_u64().unwrap() > now());
    }
    let refs: BTreeSet<&str> = list
        .iter()
        .map(|k| k["key_reference"].as_str().unwrap())
        .collect();
    assert_eq!(refs, BTreeSet::from([r1.as_str(), r2.as_str()]));

    // npub works as well as hex.
    let by_npub = relay
        .get(&format!("{PREFIX}/keypackages?owner={}", npub(&alice)))
        .await;
    assert_eq!(by_npub.json(), resp.json());

    assert_error(
        &relay.get(&format!("{PREFIX}/keypackages")).await,
        400,
        "bad_request",
    );
    assert_error(
        &relay
            .get(&format!("{PREFIX}/keypackages?owner=nobody"))
            .await,
        400,
        "bad_request",
    );
    // Credentials are checked even where they are optional.
    let bad = auth_header(&nip98_event(
        &alice,
        now(),
        "http://elsewhere.example/x",
        "GET",
        None,
    ));
    let resp = relay
        .get_with(
            &format!("{PREFIX}/keypackages?owner={}", pk_hex(&alice)),
            &[("Authorization", &bad)],
        )
        .await;
    assert_error(&resp, 401, "auth_invalid");
}

fn now_plus(s: &str) -> u64 {
    s.parse().unwrap()
}

#[tokio::test]
async fn keypackage_listing_needs_nip98_when_auth_is_on() {
    let relay = Relay::builder()
        .config("[auth]\nenabled = true\n")
        .start()
        .await;
    let alice = keys();
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&alice));
    let resp = relay.get(&path).await;
    assert_error(&resp, 401, "auth_required");
    assert_eq!(resp.header("www-authenticate"), Some("Nostr"));
    let h = nip98(&keys(), &url(&relay, &path), "GET", None);
    let resp = relay.get_with(&path, &[("Authorization", &h)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json(), json!({"keypackages": []}));
}

// ---------------------------------------------------------------------------------------------
// Group info
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn group_info_is_for_members_and_admins_only() {
    let (admin, alice, bob, carol) = (keys(), keys(), keys(), keys());
    let relay = Relay::builder().config(&admin_config(&admin)).start().await;

    // A group created by a roster bootstrap (alice owner/admin, bob member) …
    let group = unique_hex();
    let mut ws = relay.connect().await;
    ws.publish_ok(&bootstrap(&alice, &group, &[&bob])).await;
    // … and one created through the admin API.
    let api_group = unique_hex();
    create_group(&relay, &admin, &api_group, &[pk_hex(&carol)]).await;

    let path = format!("/groups/{group}");
    for who in [&alice, &bob, &admin] {
        let resp = call(&relay, "GET", &path, Some(who), None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let v = resp.json();
        let keys: BTreeSet<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
        assert_eq!(
            keys,
            BTreeSet::from([
                "group_id",
                "display_name",
                "member_count",
                "last_epoch",
                "created_at"
            ])
        );
        assert_eq!(v["group_id"], group);
        assert_eq!(v["member_count"], 2);
        assert!(v["created_at"].as_u64().unwrap() > 0);
    }
    let resp = call(
        &relay,
        "GET",
        &format!("/groups/{api_group}"),
        Some(&carol),
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["member_count"], 1);

    // A stranger gets exactly what they would get for a group that does not exist.
    let stranger = call(&relay, "GET", &path, Some(&carol), None).await;
    assert_error(&stranger, 404, "not_found");
    let missing = call(
        &relay,
        "GET",
        &format!("/groups/{}", unique_hex()),
        Some(&alice),
        None,
    )
    .await;
    assert_error(&missing, 404, "not_found");
    assert_eq!(
        stranger.body, missing.body,
        "existence must not be revealed"
    );

    // Group info needs NIP-98 even though [auth] is off.
    let resp = call(&relay, "GET", &path, None, None).await;
    assert_error(&resp, 401, "auth_required");
}

// ---------------------------------------------------------------------------------------------
// NIP-98 refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn nip98_refusals() {
    let (admin, alice) = (keys(), keys());
    let relay = Relay::builder().config(&admin_config(&admin)).start().await;
    let group = unique_hex();
    create_group(&relay, &admin, &group, &[pk_hex(&alice)]).await;
    let path = format!("{PREFIX}/groups/{group}");
    let u = url(&relay, &path);

    let get = |h: String| {
        let path = path.clone();
        let port = relay.port;
        async move { request(port, "GET", &path, &[("Authorization", &h)], None).await }
    };

    // The valid token works (and GET tokens may be reused within their minute).
    let good = nip98(&alice, &u, "GET", None);
    assert_eq!(get(good.clone()).await.status, 200);
    assert_eq!(get(good).await.status, 200);
    // Scheme and case of the host don't matter.
    let alt = format!("HTTPS://127.0.0.1:{}{path}", relay.port);
    assert_eq!(get(nip98(&alice, &alt, "GET", None)).await.status, 200);

    let cases: Vec<(&str, String)> = vec![
        ("no Nostr scheme", "Bearer abc".to_string()),
        ("not base64", "Nostr !!!".to_string()),
        ("not an event", format!("Nostr {}", base64_of(b"{\"a\":1}"))),
        ("bad signature", {
            let mut e = nip98_event(&alice, now(), &u, "GET", None);
            e.sig = nip98_event(&keys(), now(), &u, "GET", None).sig;
            auth_header(&e)
        }),
        (
            "wrong kind",
            auth_header(&ev(&alice, 27236, &[&["u", &u], &["method", "GET"]], "")),
        ),
        (
            "wrong URL path",
            auth_header(&nip98_event(
                &alice,
                now(),
                &url(&relay, &format!("{PREFIX}/groups/other")),
                "GET",
                None,
            )),
        ),
        (
            "wrong host",
            auth_header(&nip98_event(
                &alice,
                now(),
                &format!("http://evil.example{path}"),
                "GET",
                None,
            )),
        ),
        (
            "missing u",
            auth_header(&ev(&alice, 27235, &[&["method", "GET"]], "")),
        ),
        (
            "wrong method",
            auth_header(&nip98_event(&alice, now(), &u, "POST", None)),
        ),
        (
            "missing method",
            auth_header(&ev(&alice, 27235, &[&["u", &u]], "")),
        ),
        (
            "stale created_at",
            auth_header(&nip98_event(&alice, now() - 120, &u, "GET", None)),
        ),
        (
            "future created_at",
            auth_header(&nip98_event(&alice, now() + 120, &u, "GET", None)),
        ),
        (
            "payload without body",
            auth_header(&nip98_event(
                &alice,
                now(),
                &u,
                "GET",
                Some(&sha256_hex(b"x")),
            )),
        ),
    ];
    for (what, header) in cases {
        let resp = get(header).await;
        assert_error(&resp, 401, "auth_invalid");
        assert_eq!(resp.header("www-authenticate"), Some("Nostr"), "{what}");
    }
    assert_error(
        &request(relay.port, "GET", &path, &[], None).await,
        401,
        "auth_required",
    );

    // Bodies: payload must be the body's sha256, and is required.
    let add = format!("{PREFIX}/admin/groups/{group}/members");
    let body = serde_json::to_vec(&pubkeys_body(&[pk_hex(&keys())])).unwrap();
    let post = |h: String, b: Vec<u8>| {
        let add = add.clone();
        let port = relay.port;
        async move { request(port, "POST", &add, &[("Authorization", &h)], Some(&b)).await }
    };
    let au = url(&relay, &add);
    let wrong_hash = auth_header(&nip98_event(
        &admin,
        now(),
        &au,
        "POST",
        Some(&sha256_hex(b"other")),
    ));
    assert_error(&post(wrong_hash, body.clone()).await, 401, "auth_invalid");
    let no_hash = auth_header(&nip98_event(&admin, now(), &au, "POST", None));
    assert_error(&post(no_hash, body.clone()).await, 401, "auth_invalid");
    // A state-changing token is accepted once.
    let once = nip98(&admin, &au, "POST", Some(&body));
    assert_eq!(post(once.clone(), body.clone()).await.status, 200);
    let replay = post(once, body).await;
    assert_error(&replay, 401, "auth_invalid");
    assert!(replay.json()["error"]
        .as_str()
        .unwrap()
        .contains("already used"));
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn nip98_url_uses_relay_url_when_configured() {
    let alice = keys();
    let relay = Relay::builder()
        .config("[server]\nrelay_url = \"wss://relay.example.com\"\n[auth]\nenabled = true\n")
        .start()
        .await;
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&alice));
    let public = format!("https://relay.example.com{path}");
    let h = nip98(&alice, &public, "GET", None);
    let resp = relay.get_with(&path, &[("Authorization", &h)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let local = nip98(&alice, &url(&relay, &path), "GET", None);
    assert_error(
        &relay.get_with(&path, &[("Authorization", &local)]).await,
        401,
        "auth_invalid",
    );
    // The query string is part of the URL.
    let other_query = nip98(
        &alice,
        &format!("https://relay.example.com{PREFIX}/keypackages?owner=x"),
        "GET",
        None,
    );
    assert_error(
        &relay
            .get_with(&path, &[("Authorization", &other_query)])
            .await,
        401,
        "auth_invalid",
    );
}

// ---------------------------------------------------------------------------------------------
// Admin endpoints
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn admin_endpoints_change_membership_atomically_and_only_for_admins() {
    let (admin, alice, bob, carol) = (keys(), keys(), keys(), keys());
    let relay = Relay::builder().config(&admin_config(&admin)).start().await;
    let group = unique_hex();
    let g = format!("/admin/groups/{group}");

    // Not an admin: 403 on every admin endpoint; no credentials: 401.
    let body = pubkeys_body(&[pk_hex(&bob)]);
    for (method, path, body) in [
        ("GET", "/admin/groups".to_string(), None),
        ("GET", g.clone(), None),
        ("PATCH", g.clone(), Some(json!({"display_name": "x"}))),
        ("POST", format!("{g}/members"), Some(body.clone())),
        ("DELETE", format!("{g}/members"), Some(body.clone())),
        ("POST", format!("{g}/admins"), Some(body.clone())),
        ("DELETE", format!("{g}/admins"), Some(body.clone())),
    ] {
        let resp = call(&relay, method, &path, Some(&alice), body.as_ref()).await;
        assert_error(&resp, 403, "forbidden");
        let resp = call(&relay, method, &path, None, body.as_ref()).await;
        assert_error(&resp, 401, "auth_required");
    }

    // Unknown group: remove/demote/rename are 404, reading it is 404.
    for (method, path, body) in [
        ("GET", g.clone(), None),
        ("PATCH", g.clone(), Some(json!({"display_name": "x"}))),
        ("DELETE", format!("{g}/members"), Some(body.clone())),
        ("DELETE", format!("{g}/admins"), Some(body.clone())),
    ] {
        let resp = call(&relay, method, &path, Some(&admin), body.as_ref()).await;
        assert_error(&resp, 404, "not_found");
    }

    // Add members (hex and npub): creates the group, the admin is its owner.
    let resp = call(
        &relay,
        "POST",
        &format!("{g}/members"),
        Some(&admin),
        Some(&pubkeys_body(&[pk_hex(&alice), npub(&bob)])),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let rec = &resp.json()["group"];
    assert_eq!(rec["group_id"], group);
    assert_eq!(rec["owner"], pk_hex(&admin));
    assert_eq!(rec["member_count"], 2);
    let members: BTreeSet<&str> = rec["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        members,
        BTreeSet::from([pk_hex(&alice).as_str(), pk_hex(&bob).as_str()])
    );

    // The group is gated now: bob (member) reads its info, carol does not.
    assert_eq!(
        call(&relay, "GET", &format!("/groups/{group}"), Some(&bob), None)
            .await
            .status,
        200
    );
    assert_eq!(
        call(
            &relay,
            "GET",
            &format!("/groups/{group}"),
            Some(&carol),
            None
        )
        .await
        .status,
        404
    );
    // … and its messages over WebSocket: carol, authenticated, may not publish or read them.
    let mut ws = relay.connect_authed(&carol).await;
    let msg = ev(&keys(), 445, &[&["h", &group]], "c2VjcmV0");
    let (ok, why) = ws.publish(&msg).await;
    assert!(!ok, "a non-member published to a gated group");
    assert_any_prefix(&why, &["restricted:", "auth-required:"]);

    // Promote alice, demote her again.
    let resp = call(
        &relay,
        "POST",
        &format!("{g}/admins"),
        Some(&admin),
        Some(&pubkeys_body(&[pk_hex(&alice)])),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["group"]["admins"], json!([pk_hex(&alice)]));
    let resp = call(
        &relay,
        "DELETE",
        &format!("{g}/admins"),
        Some(&admin),
        Some(&pubkeys_body(&[pk_hex(&alice)])),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["group"]["admins"], json!([]));
    assert_eq!(
        resp.json()["group"]["member_count"],
        2,
        "demote keeps membership"
    );

    // Rename: roles unchanged.
    let resp = call(
        &relay,
        "PATCH",
        &g,
        Some(&admin),
        Some(&json!({"display_name": "Ops"})),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["group"]["display_name"], "Ops");
    assert_eq!(resp.json()["group"]["member_count"], 2);
    let info = call(
        &relay,
        "GET",
        &format!("/groups/{group}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(info.json()["display_name"], "Ops");

    // Remove bob: he loses access.
    let resp = call(
        &relay,
        "DELETE",
        &format!("{g}/members"),
        Some(&admin),
        Some(&pubkeys_body(&[npub(&bob)])),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["group"]["members"], json!([pk_hex(&alice)]));
    assert_eq!(
        call(&relay, "GET", &format!("/groups/{group}"), Some(&bob), None)
            .await
            .status,
        404
    );

    // Read it back and list groups.
    let resp = call(&relay, "GET", &g, Some(&admin), None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["group"]["members"], json!([pk_hex(&alice)]));
    let other = unique_hex();
    create_group(&relay, &admin, &other, &[pk_hex(&carol)]).await;
    let resp = call(&relay, "GET", "/admin/groups", Some(&admin), None).await;
    assert_eq!(resp.status, 200);
    let ids: BTreeSet<String> = resp.json()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, BTreeSet::from([group.clone(), other]));

    // Bad input: 400.
    for body in [
        json!({"pubkeys": []}),
        json!({"pubkeys": ["not-a-key"]}),
        json!({"members": [pk_hex(&bob)]}),
        json!("nope"),
    ] {
        let resp = call(
            &relay,
            "POST",
            &format!("{g}/members"),
            Some(&admin),
            Some(&body),
        )
        .await;
        assert_error(&resp, 400, "bad_request");
    }
    let resp = call(
        &relay,
        "PATCH",
        &g,
        Some(&admin),
        Some(&json!({"display_name": "x".repeat(300)})),
    )
    .await;
    assert_error(&resp, 400, "bad_request");
    // Too large a body: 413.
    let huge = json!({"pubkeys": vec![pk_hex(&bob); 2000]});
    let resp = call(
        &relay,
        "POST",
        &format!("{g}/members"),
        Some(&admin),
        Some(&huge),
    )
    .await;
    assert_error(&resp, 413, "payload_too_large");
}

#[tokio::test]
async fn admin_api_refused_when_the_api_membership_source_is_disabled() {
    let admin = keys();
    let relay = Relay::builder()
        .config(&format!(
            "{}membership_sources = [\"roster\", \"giftwrap\"]\n",
            admin_config(&admin)
        ))
        .start()
        .await;
    let resp = call(
        &relay,
        "POST",
        &format!("/admin/groups/{}/members", unique_hex()),
        Some(&admin),
        Some(&pubkeys_body(&[pk_hex(&keys())])),
    )
    .await;
    assert_error(&resp, 403, "forbidden");
}

// ---------------------------------------------------------------------------------------------
// Allowlists (NIP-42 and NIP-98 alike)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn whitelist_accepts_hex_and_npub_entries_on_every_path() {
    let (alice, bob, carol) = (keys(), keys(), keys());
    let relay = Relay::builder()
        .config(&format!(
            "[auth]\nenabled = true\npubkey_whitelist = [\"{}\", \"{}\"]\n",
            pk_hex(&alice),
            npub(&bob)
        ))
        .start()
        .await;
    // NIP-42.
    for k in [&alice, &bob] {
        let mut ws = relay.connect().await;
        let (ok, msg) = ws.auth(k, &relay.ws_url()).await;
        assert!(ok, "{msg}");
        ws.publish_ok(&ev(k, 1, &[], "hello")).await;
    }
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&carol, &relay.ws_url()).await;
    assert!(!ok);
    assert_prefix(&msg, "restricted:");
    // NIP-98.
    let path = format!("/keypackages?owner={}", pk_hex(&alice));
    for k in [&alice, &bob] {
        let resp = call(&relay, "GET", &path, Some(k), None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_error(
        &call(&relay, "GET", &path, Some(&carol), None).await,
        403,
        "forbidden",
    );
}

#[tokio::test]
async fn blacklist_accepts_hex_and_npub_entries_on_every_path() {
    let (alice, bob, carol) = (keys(), keys(), keys());
    let relay = Relay::builder()
        .config(&format!(
            "[auth]\nenabled = true\npubkey_blacklist = [\"{}\", \"{}\"]\n",
            pk_hex(&alice),
            npub(&bob)
        ))
        .start()
        .await;
    let path = format!("/keypackages?owner={}", pk_hex(&carol));
    for k in [&alice, &bob] {
        let mut ws = relay.connect().await;
        let (ok, msg) = ws.auth(k, &relay.ws_url()).await;
        assert!(!ok, "a blacklisted key authenticated");
        assert_prefix(&msg, "restricted:");
        assert_error(
            &call(&relay, "GET", &path, Some(k), None).await,
            403,
            "forbidden",
        );
    }
    let mut ws = relay.connect().await;
    let (ok, msg) = ws.auth(&carol, &relay.ws_url()).await;
    assert!(ok, "{msg}");
    assert_eq!(
        call(&relay, "GET", &path, Some(&carol), None).await.status,
        200
    );
}

// ---------------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cors_follows_allowed_origins() {
    let relay = Relay::builder()
        .env(
            "ALLOWED_ORIGINS",
            "https://app.example.com, https://admin.example.com",
        )
        .start()
        .await;
    let path = format!("{PREFIX}/keypackages?owner={}", pk_hex(&keys()));
    let preflight = |origin: &'static str| {
        let path = path.clone();
        let port = relay.port;
        async move {
            request(
                port,
                "OPTIONS",
                &path,
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "GET"),
                    ("Access-Control-Request-Headers", "authorization"),
                ],
                None,
            )
            .await
        }
    };
    let ok = preflight("https://app.example.com").await;
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(ok
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("authorization")));
    assert!(ok
        .header("access-control-allow-methods")
        .is_some_and(|h| h.contains("POST") && h.contains("DELETE")));
    let no = preflight("https://evil.example.com").await;
    assert_eq!(no.header("access-control-allow-origin"), None);

    let resp = relay
        .get_with(&path, &[("Origin", "https://admin.example.com")])
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://admin.example.com")
    );
    let resp = relay
        .get_with(&path, &[("Origin", "https://evil.example.com")])
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    // Errors carry the header too (a browser app must be able to read them).
    let resp = relay
        .get_with(
            &format!("{PREFIX}/keypackages"),
            &[("Origin", "https://app.example.com")],
        )
        .await;
    assert_eq!(resp.status, 400);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let health = relay
        .get_with("/health", &[("Origin", "https://app.example.com")])
        .await;
    assert_eq!(
        health.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
}
