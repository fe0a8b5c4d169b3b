//! Tests of `kinds/keypackage.rs`: the 443 / 30443 admission table, the directory.

use crate::tests::fixtures::*;

#[test]
fn keypackage_rules() {
    let n = run(vec![
        row(
            "marmot 30443 accepted",
            |w| {
                (
                    mdk_kp(&w.alice, 30443, &reference(1), T, &[]),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        )
        .auth(),
        row(
            "marmot 443 accepted",
            |w| {
                (
                    mdk_kp(&w.alice, 443, &reference(1), T, &[]),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        )
        .auth(),
        row(
            "loxation 443 accepted",
            |w| {
                (
                    lox_kp(&w.alice, &hx(&w.alice), "kpr-1", T + 3600),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        )
        .auth(),
        row(
            "loxation cs as 0x id",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[&["p", &hx(&w.alice)], &["cs", "0x0001"], &["kpr", "r"]],
                        "00ff",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "marmot: auth off, signature is the proof",
            |w| (mdk_kp(&w.alice, 443, &reference(1), T, &[]), vec![]),
            Ok(()),
        ),
        row(
            "loxation: auth off, signature is the proof",
            |w| (lox_kp(&w.alice, &hx(&w.alice), "kpr-1", T + 60), vec![]),
            Ok(()),
        ),
        row(
            "marmot: auth on, unauthenticated",
            |w| (mdk_kp(&w.alice, 443, &reference(1), T, &[]), vec![]),
            Err("auth-required: keypackages are accepted only from their authenticated owner"),
        )
        .auth(),
        row(
            "marmot: auth on, authenticated as someone else",
            |w| {
                (
                    mdk_kp(&w.alice, 30443, &reference(1), T, &[]),
                    vec![pk(&w.bob)],
                )
            },
            Err("restricted: keypackage author"),
        )
        .auth(),
        row(
            "loxation: auth on, authenticated as someone else",
            |w| {
                (
                    lox_kp(&w.alice, &hx(&w.alice), "k", T + 60),
                    vec![pk(&w.bob)],
                )
            },
            Err("restricted: keypackage author"),
        )
        .auth(),
        row(
            "loxation: owner p differs from author",
            |w| {
                (
                    lox_kp(&w.alice, &hx(&w.bob), "kpr-1", T + 3600),
                    vec![pk(&w.alice)],
                )
            },
            Err("invalid: keypackage owner tag does not match author"),
        ),
        row(
            "marmot: p differs from author",
            |w| {
                (
                    mdk_kp(&w.alice, 443, &reference(1), T, &[&["p", &hx(&w.bob)]]),
                    vec![],
                )
            },
            Err("invalid: keypackage owner tag does not match author"),
        ),
        row(
            "marmot: empty content",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[
                            &["mls_ciphersuite", "0x0001"],
                            &["i", "ab"],
                            &["encoding", "base64"],
                        ],
                        "",
                    ),
                    vec![],
                )
            },
            Err("invalid: keypackage content is empty"),
        ),
        row(
            "loxation: empty content",
            |w| {
                (
                    ev(&w.alice, 443, T, &[&["cs", CS_NAME], &["kpr", "k"]], ""),
                    vec![],
                )
            },
            Err("invalid: keypackage content is empty"),
        ),
        row(
            "marmot: content not base64",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[
                            &["mls_ciphersuite", "0x0001"],
                            &["i", "ab"],
                            &["encoding", "base64"],
                        ],
                        "not base64!",
                    ),
                    vec![],
                )
            },
            Err("invalid: keypackage content is not valid base64"),
        ),
        row(
            "loxation: content not hex (no encoding tag)",
            |w| {
                (
                    ev(&w.alice, 443, T, &[&["cs", CS_NAME], &["kpr", "k"]], "zz"),
                    vec![],
                )
            },
            Err("invalid: keypackage content is not valid hex"),
        ),
        row(
            "unsupported encoding",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[&["mls_ciphersuite", "0x0001"], &["encoding", "base32"]],
                        "AA",
                    ),
                    vec![],
                )
            },
            Err("invalid: unsupported encoding"),
        ),
        row(
            "marmot: unknown ciphersuite id",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[
                            &["mls_ciphersuite", "0x0042"],
                            &["i", "ab"],
                            &["encoding", "base64"],
                        ],
                        "AAEA",
                    ),
                    vec![],
                )
            },
            Err("invalid: unknown ciphersuite"),
        ),
        row(
            "loxation: unknown ciphersuite name",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[&["cs", "MLS_FAKE_SUITE"], &["kpr", "k"]],
                        "00",
                    ),
                    vec![],
                )
            },
            Err("invalid: unknown ciphersuite"),
        ),
        row(
            "ciphersuite tag spelled `ciphersuite`",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[&["ciphersuite", "0x0003"], &["kpr", "k"]],
                        "00",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "no ciphersuite tag",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[&["i", "ab"], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![],
                )
            },
            Err("invalid: keypackage has no ciphersuite tag"),
        ),
        row(
            "loxation: exp in the past",
            |w| (lox_kp(&w.alice, &hx(&w.alice), "k", T - 1), vec![]),
            Err("invalid: keypackage expiry is in the past"),
        ),
        row(
            "marmot: NIP-40 expiration in the past",
            |w| {
                (
                    mdk_kp(
                        &w.alice,
                        443,
                        &reference(1),
                        T,
                        &[&["expiration", &(T - 10).to_string()]],
                    ),
                    vec![],
                )
            },
            Err("invalid: keypackage expiry is in the past"),
        ),
        row(
            "loxation: exp beyond keypackage_max_ttl",
            |w| (lox_kp(&w.alice, &hx(&w.alice), "k", T + 91 * 86400), vec![]),
            Err("invalid: keypackage expiry is beyond keypackage_max_ttl"),
        ),
        row(
            "marmot: expiration beyond keypackage_max_ttl",
            |w| {
                (
                    mdk_kp(
                        &w.alice,
                        30443,
                        &reference(1),
                        T,
                        &[&["expiration", &(T + 91 * 86400).to_string()]],
                    ),
                    vec![],
                )
            },
            Err("invalid: keypackage expiry is beyond keypackage_max_ttl"),
        ),
        row(
            "loxation: exp not a number",
            |w| {
                (
                    ev(
                        &w.alice,
                        443,
                        T,
                        &[&["cs", CS_NAME], &["kpr", "k"], &["exp", "soon"]],
                        "00",
                    ),
                    vec![],
                )
            },
            Err("invalid: exp tag must be an unsigned integer"),
        ),
        row(
            "marmot: key reference used by another owner",
            |w| (mdk_kp(&w.alice, 443, &reference(9), T, &[]), vec![]),
            Err("invalid: key reference"),
        )
        .setup(|e| {
            let other = mdk_kp(&e.w.carol, 443, &reference(9), T - 5, &[]);
            e.ok(&other, &[], T);
        }),
        row(
            "loxation: kpr used by another owner",
            |w| (lox_kp(&w.alice, &hx(&w.alice), "shared", T + 60), vec![]),
            Err("invalid: key reference"),
        )
        .setup(|e| {
            let other = lox_kp(&e.w.carol, &hx(&e.w.carol), "shared", T + 60);
            e.ok(&other, &[], T);
        }),
        row(
            "key reference reused by another 443 of the same owner",
            |w| (mdk_kp(&w.alice, 443, &reference(9), T + 1, &[]), vec![]),
            Err("invalid: key reference"),
        )
        .setup(|e| {
            let first = mdk_kp(&e.w.alice, 443, &reference(9), T, &[]);
            e.ok(&first, &[], T);
        }),
        row(
            "marmot dual publish: 443 after 30443 with the same i",
            |w| (mdk_kp(&w.alice, 443, &reference(9), T, &[]), vec![]),
            Ok(()),
        )
        .setup(|e| {
            let first = mdk_kp(&e.w.alice, 30443, &reference(9), T, &[]);
            e.ok(&first, &[], T);
        }),
        row(
            "30443 replacing its own version with the same reference",
            |w| {
                (
                    mdk_kp(&w.alice, 30443, &reference(9), T + 5, &[&["x", "v2"]]),
                    vec![],
                )
            },
            Ok(()),
        )
        .setup(|e| {
            let first = mdk_kp(&e.w.alice, 30443, &reference(9), T, &[]);
            e.ok(&first, &[], T);
        }),
        row(
            "30443 with the same reference under another d",
            |w| {
                let mut t = mdk_kp(&w.alice, 30443, &reference(9), T + 5, &[]).tags;
                t[0][1] = "other-d".into();
                (Event::sign(&w.alice, T + 5, 30443, t, "AAEA"), vec![])
            },
            Err("invalid: key reference"),
        )
        .setup(|e| {
            let first = mdk_kp(&e.w.alice, 30443, &reference(9), T, &[]);
            e.ok(&first, &[], T);
        }),
        row(
            "max_keypackages_per_hour reached",
            |w| (mdk_kp(&w.alice, 443, &reference(2), T, &[]), vec![]),
            Err("rate-limited: max_keypackages_per_hour reached"),
        )
        .cfg(|c| c.rate_limits.max_keypackages_per_hour = 1)
        .setup(|e| {
            let first = mdk_kp(&e.w.alice, 443, &reference(1), T, &[]);
            e.ok(&first, &[], T);
        }),
        row(
            "dual publish counts once against the hourly cap",
            |w| (mdk_kp(&w.alice, 30443, &reference(1), T, &[]), vec![]),
            Ok(()),
        )
        .cfg(|c| c.rate_limits.max_keypackages_per_hour = 1)
        .setup(|e| {
            let first = mdk_kp(&e.w.alice, 443, &reference(1), T, &[]);
            e.ok(&first, &[], T);
        }),
        row(
            "hourly cap of another owner does not count",
            |w| (mdk_kp(&w.alice, 443, &reference(2), T, &[]), vec![]),
            Ok(()),
        )
        .cfg(|c| c.rate_limits.max_keypackages_per_hour = 1)
        .setup(|e| {
            let first = mdk_kp(&e.w.bob, 443, &reference(1), T, &[]);
            e.ok(&first, &[], T);
        }),
        row(
            "protected (NIP-70) from an unauthenticated connection",
            |w| (mdk_kp(&w.alice, 443, &reference(1), T, &[&["-"]]), vec![]),
            Err("auth-required: this event is protected"),
        ),
        row(
            "protected (NIP-70) from its author",
            |w| {
                (
                    mdk_kp(&w.alice, 443, &reference(1), T, &[&["-"]]),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        ),
    ]);
    assert!(n >= 30);
}

#[test]
fn keypackage_directory_follows_replacement_deletion_and_expiry() {
    let mut e = env(false);
    let w = W::new();
    let owner = pk(&w.alice);
    let v1 = mdk_kp(&w.alice, 30443, &reference(1), T, &[]);
    e.ok(&v1, &[], T);
    // The new version of the address carries a new KeyPackage.
    let mut t = mdk_kp(&w.alice, 30443, &reference(2), T + 5, &[]).tags;
    t[0][1] = v1.d_tag().to_string();
    let v2 = Event::sign(&w.alice, T + 5, 30443, t, "AAEA");
    e.ok(&v2, &[], T + 5);
    let listed = e.gw.keypackages_of(&owner, T + 5, &e.st).unwrap();
    assert_eq!(
        listed.iter().map(|k| k.event_id).collect::<Vec<_>>(),
        vec![v2.id]
    );
    // The replaced version's reference is free again.
    e.ok(
        &mdk_kp(&w.alice, 443, &reference(1), T + 6, &[]),
        &[],
        T + 6,
    );
    // An older version arriving late changes nothing (the store refuses it).
    let mut t = mdk_kp(&w.alice, 30443, &reference(3), T - 5, &[]).tags;
    t[0][1] = v1.d_tag().to_string();
    let old = Event::sign(&w.alice, T - 5, 30443, t, "AAEA");
    let snapshot = e.st.clone();
    e.ok(&old, &[], T + 7);
    assert_eq!(e.st, snapshot);
    // Loxation KeyPackage with its own expiry.
    let lox = lox_kp(&w.alice, &hx(&w.alice), "lox-ref", T + 100);
    e.ok(&lox, &[], T);
    assert_eq!(e.gw.keypackages_of(&owner, T + 10, &e.st).unwrap().len(), 3);
    assert_eq!(
        e.gw.keypackages_of(&owner, T + 100, &e.st).unwrap().len(),
        2,
        "expired: not listed"
    );
    // Deletion by id (kind 5 from the owner) and by address.
    let del = ev(&w.alice, 5, T + 20, &[&["e", &lox.id.to_hex()]], "");
    e.ok(&del, &[], T + 20);
    assert_eq!(e.gw.keypackages_of(&owner, T + 20, &e.st).unwrap().len(), 2);
    let addr = format!("30443:{owner}:{}", v1.d_tag());
    let del = ev(&w.alice, 5, T + 30, &[&["a", &addr]], "");
    e.ok(&del, &[], T + 30);
    let left = e.gw.keypackages_of(&owner, T + 30, &e.st).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].kind, 443);
    // Someone else's deletion touches nothing.
    let snapshot = e.st.clone();
    e.ok(
        &ev(&w.bob, 5, T + 40, &[&["e", &left[0].event_id.to_hex()]], ""),
        &[],
        T + 40,
    );
    assert_eq!(e.st, snapshot);
}
