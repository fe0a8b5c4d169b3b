//! Tests of `dialect.rs`: ciphersuites, the group-id shortener, and the real MDK 0.8 events
//! (Marmot spelling) accepted and served as they are.

use crate::dialect::*;
use crate::tests::fixtures::*;

#[test]
fn ciphersuite_names_and_ids_agree() {
    for (id, name) in CIPHERSUITES {
        assert_eq!(ciphersuite_id(name), Some(id));
        assert_eq!(ciphersuite_id(&format!("0x{id:04x}")), Some(id));
        assert_eq!(ciphersuite_id(&format!("0x{id:04X}")), Some(id));
    }
    assert_eq!(
        ciphersuite_id("0x0001"),
        ciphersuite_id("MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519")
    );
    assert_eq!(ciphersuite_id("0x004a"), Some(0x4a));
    assert!(!ciphersuite_known(0x4a));
    assert_eq!(ciphersuite_id("MLS_FAKE"), None);
    assert_eq!(ciphersuite_id("0x"), None);
    assert_eq!(ciphersuite_id("0x00001"), None);
    assert_eq!(ciphersuite_id("1"), None);
}

#[test]
fn short_group_ids() {
    assert_eq!(short("abc"), "abc");
    assert_eq!(short("0123456789"), "01234567…");
}

fn vectors() -> Vec<(String, serde_json::Value)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("vectors directory {dir}: {e}"))
        .map(|f| f.unwrap().path())
        // The directory also holds a README: only the JSON-lines files are vectors.
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            out.push((
                format!("{}: {}", f.display(), v["label"]),
                v["event"].clone(),
            ));
        }
    }
    out
}

#[test]
fn mdk_vectors_are_accepted_as_is() {
    for auth in [false, true] {
        let mut e = env(auth);
        let stranger = pk(&e.w.carol);
        let mut n = 0;
        for (label, raw) in vectors() {
            if raw["kind"] == 444 {
                // The unsigned rumor: never accepted top-level.
                let rumor = Event {
                    sig: mls_proto::Hex64([0; 64]),
                    ..serde_json::from_value(json!({
                        "id": raw["id"], "pubkey": raw["pubkey"], "created_at": raw["created_at"],
                        "kind": 444, "tags": raw["tags"], "content": raw["content"],
                        "sig": "00".repeat(64)
                    }))
                    .unwrap()
                };
                assert!(e.admit(&rumor, &[], T).is_err());
                continue;
            }
            let event: Event = serde_json::from_value(raw).unwrap();
            event.verify().unwrap();
            let normalized = normalize(&event).unwrap();
            // KeyPackages come from their owner; 445 / 1059 from anyone (throwaway keys).
            let publisher = match event.kind {
                443 | 30443 => vec![event.pubkey],
                _ if auth => vec![stranger],
                _ => vec![],
            };
            let a = e
                .admit(&event, &publisher, event.created_at)
                .unwrap_or_else(|r| panic!("{label} (auth {auth}): {}", r.0));
            assert!(a.store, "{label}");
            match event.kind {
                443 | 30443 => {
                    assert_eq!(normalized.dialect, Dialect::Marmot);
                    assert_eq!(normalized.ciphersuite.unwrap().1, Some(1));
                    assert!(normalized.key_reference.is_some());
                    assert_eq!(
                        a.expires_at,
                        Some(event.created_at + e.gw.config().keypackage_ttl)
                    );
                }
                1059 => assert_eq!(
                    a.expires_at,
                    Some(event.created_at + e.gw.config().welcome_ttl)
                ),
                445 => {
                    assert_eq!(normalized.group_ids.len(), 1);
                    let archive = event.created_at + 30 * 86400;
                    assert_eq!(
                        a.expires_at,
                        Some(event.expiration().map_or(archive, |x| x.min(archive)))
                    );
                }
                k => panic!("unexpected kind {k} in vectors"),
            }
            n += 1;
        }
        assert_eq!(n, 12);
        // Both dual-published KeyPackages are listed under one reference each.
        for (_, raw) in vectors().iter().filter(|(_, r)| r["kind"] == 30443) {
            let owner = Hex32::from_hex(raw["pubkey"].as_str().unwrap()).unwrap();
            let listed = e.gw.keypackages_of(&owner, T, &e.st).unwrap();
            assert_eq!(listed.len(), 2);
            assert_eq!(listed[0].key_reference, listed[1].key_reference);
            assert_eq!(listed[0].ciphersuite, "0x0001");
        }
    }
}

#[test]
fn mdk_vectors_visibility() {
    let mut e = env(true);
    let w = W::new();
    let mut gift = None;
    for (_, raw) in vectors() {
        if raw["kind"] == 444 {
            continue;
        }
        let event: Event = serde_json::from_value(raw).unwrap();
        let publisher = if matches!(event.kind, 443 | 30443) {
            vec![event.pubkey]
        } else {
            vec![pk(&w.carol)]
        };
        e.ok(&event, &publisher, event.created_at);
        if event.kind == 1059 {
            gift = Some(event);
        }
    }
    let gift = gift.unwrap();
    let recipient = Hex32::from_hex(gift.tag_value("p").unwrap()).unwrap();
    assert!(e.sees(&[recipient], &gift));
    assert!(!e.sees(&[pk(&w.carol)], &gift));
    assert!(
        !e.sees(&[gift.pubkey], &gift),
        "the wrapper's throwaway key is not a recipient"
    );
    assert!(!e.sees(&[], &gift));
}
