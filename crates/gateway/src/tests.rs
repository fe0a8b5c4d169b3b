//! Rule tests: one row per rule and dialect (accepted and refused), the MDK vectors, the
//! visibility matrix, REQ pre-checks, claims, roster ordering and atomicity.
//!
//! Every admission goes through [`Env::admit`], which also asserts that a refusal left the
//! state byte-for-byte unchanged: the rules never rely on the store discarding partial writes.

use super::*;
use mls_proto::Tag;
use secp256k1::{Keypair, SECP256K1};
use serde_json::json;

/// Visibility as data: stored audiences and read scopes against the visibility rule.
mod audience;
/// Issue 8's group and mailbox rules (takeover, roster vs gift wrap, deletions, purge chunks).
mod security;

/// "Now" for the tests: the MDK vectors' `created_at`.
const T: u64 = 1_795_994_933;
const GROUP: &str = "865f0c8384da1be9ffca0f9bf6da9210d94f9f932acd788172ad1defabb5dadb";
const OPEN: &str = "0000000000000000000000000000000000000000000000000000000000000001";
const CS_NAME: &str = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519";

fn keypair(seed: u8) -> Keypair {
    Keypair::from_seckey_slice(SECP256K1, &[seed; 32]).expect("valid secret key")
}

fn pk(k: &Keypair) -> Hex32 {
    Hex32(k.x_only_public_key().0.serialize())
}

fn hx(k: &Keypair) -> String {
    pk(k).to_hex()
}

fn tags(v: &[&[&str]]) -> Vec<Tag> {
    v.iter()
        .map(|t| t.iter().map(|s| s.to_string()).collect())
        .collect()
}

fn ev(k: &Keypair, kind: u16, at: u64, t: &[&[&str]], content: &str) -> Event {
    Event::sign(k, at, kind, tags(t), content)
}

/// The cast: alice owns/administers GROUP, bob is a member, carol a stranger, dave a
/// configured admin, erin a removed member, eph an ephemeral 445 key.
struct W {
    alice: Keypair,
    bob: Keypair,
    carol: Keypair,
    dave: Keypair,
    erin: Keypair,
    eph: Keypair,
}

impl W {
    fn new() -> W {
        W {
            alice: keypair(1),
            bob: keypair(2),
            carol: keypair(3),
            dave: keypair(4),
            erin: keypair(5),
            eph: keypair(6),
        }
    }
}

struct Env {
    gw: Gateway,
    st: MemState,
    w: W,
}

fn env_with(auth: bool, cfg: impl FnOnce(&mut GatewayConfig)) -> Env {
    let w = W::new();
    let mut c = GatewayConfig {
        admin_pubkeys: vec![hx(&w.dave)],
        ..GatewayConfig::default()
    };
    cfg(&mut c);
    Env {
        gw: Gateway::new(c, auth).expect("config is valid"),
        st: MemState::default(),
        w,
    }
}

fn env(auth: bool) -> Env {
    env_with(auth, |_| {})
}

impl Env {
    fn admit(&mut self, e: &Event, publisher: &[Hex32], at: u64) -> Result<Admitted, Rejection> {
        let before = self.st.clone();
        let p = Publisher {
            authed: publisher.to_vec(),
            operator: false,
        };
        let r = self.gw.admit(e, &p, at, &mut self.st);
        if r.is_err() {
            assert_eq!(self.st, before, "a refusal wrote state: {r:?}");
        }
        r
    }

    fn ok(&mut self, e: &Event, publisher: &[Hex32], at: u64) -> Admitted {
        self.admit(e, publisher, at)
            .unwrap_or_else(|r| panic!("kind {} refused: {}", e.kind, r.0))
    }

    fn roster(
        &mut self,
        signer: &Keypair,
        op: &str,
        seq: u64,
        targets: &[&Keypair],
    ) -> Result<Admitted, Rejection> {
        let e = roster_ev(signer, GROUP, op, seq, targets);
        self.admit(&e, &[pk(signer)], T)
    }

    /// GROUP becomes gated: alice owner/admin, bob member; erin added then removed.
    fn gate(&mut self) {
        let (alice, bob, erin) = (self.w.alice, self.w.bob, self.w.erin);
        self.roster(&alice, "bootstrap", 1, &[&bob]).unwrap();
        self.roster(&alice, "add", 2, &[&erin]).unwrap();
        self.roster(&alice, "remove", 3, &[&erin]).unwrap();
    }

    fn record(&self, group: &str) -> GroupRecord {
        registry::load_record(&self.st, group)
            .unwrap()
            .expect("group exists")
    }

    fn sees(&self, viewer: &[Hex32], e: &Event) -> bool {
        self.gw.may_see(
            &Viewer::authenticated_as(viewer.iter().copied()),
            e,
            &self.st,
        )
    }
}

fn roster_ev(signer: &Keypair, group: &str, op: &str, seq: u64, targets: &[&Keypair]) -> Event {
    let seq = seq.to_string();
    let hexes: Vec<String> = targets.iter().map(|k| hx(k)).collect();
    let mut t: Vec<&[&str]> = vec![];
    let h = ["h", group];
    let o = ["op", op];
    let s = ["seq", seq.as_str()];
    t.push(&h);
    t.push(&o);
    t.push(&s);
    let ps: Vec<[&str; 2]> = hexes.iter().map(|x| ["p", x.as_str()]).collect();
    for p in &ps {
        t.push(p);
    }
    ev(signer, 450, T, &t, "")
}

fn mdk_kp(k: &Keypair, kind: u16, reference: &str, at: u64, extra: &[&[&str]]) -> Event {
    let mut t: Vec<&[&str]> = vec![];
    let d = ["d", &reference[..8.min(reference.len())]];
    let i = ["i", reference];
    if kind == 30443 {
        t.push(&d);
    }
    t.extend_from_slice(&[
        &["mls_protocol_version", "1.0"],
        &["mls_ciphersuite", "0x0001"],
        &["mls_extensions", "0x000a", "0xf2ee"],
        &["mls_proposals", "0x000a"],
        &["relays", "ws://127.0.0.1:1"],
        &i,
        &["client", "MDK/0.8.0"],
        &["encoding", "base64"],
    ]);
    t.extend_from_slice(extra);
    ev(
        k,
        kind,
        at,
        &t,
        "AAEAASDKu4HPHhXparg+o4NYFLF2FCMMBz4Kd8r/E2oNYZbaViA4nf01zS4f",
    )
}

fn lox_kp(k: &Keypair, owner: &str, reference: &str, exp: u64) -> Event {
    let exp = exp.to_string();
    ev(
        k,
        443,
        T,
        &[
            &["p", owner],
            &["cs", CS_NAME],
            &["kpr", reference],
            &["exp", &exp],
        ],
        "0001000120abcdef",
    )
}

fn reference(n: u8) -> String {
    hex::encode([n; 32])
}

// ---------------------------------------------------------------------------------------------
// The admission table.

struct Row {
    name: &'static str,
    auth: bool,
    cfg: fn(&mut GatewayConfig),
    setup: fn(&mut Env),
    make: fn(&W) -> (Event, Vec<Hex32>),
    /// `Ok` or the start of the refusal message.
    expect: Result<(), &'static str>,
}

fn row(
    name: &'static str,
    make: fn(&W) -> (Event, Vec<Hex32>),
    expect: Result<(), &'static str>,
) -> Row {
    Row {
        name,
        auth: false,
        cfg: |_| {},
        setup: |_| {},
        make,
        expect,
    }
}

impl Row {
    fn auth(mut self) -> Row {
        self.auth = true;
        self
    }
    fn cfg(mut self, f: fn(&mut GatewayConfig)) -> Row {
        self.cfg = f;
        self
    }
    fn setup(mut self, f: fn(&mut Env)) -> Row {
        self.setup = f;
        self
    }
}

fn run(rows: Vec<Row>) -> usize {
    let n = rows.len();
    for r in rows {
        let mut e = env_with(r.auth, r.cfg);
        (r.setup)(&mut e);
        let (event, publisher) = (r.make)(&e.w);
        let got = e.admit(&event, &publisher, T);
        match (&r.expect, &got) {
            (Ok(()), Ok(_)) => {}
            (Err(prefix), Err(Rejection(msg))) if msg.starts_with(prefix) => {}
            _ => panic!("{}: expected {:?}, got {:?}", r.name, r.expect, got),
        }
    }
    n
}

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
fn giftwrap_and_welcome_rules() {
    run(vec![
        row(
            "444 top-level",
            |w| {
                (
                    ev(&w.alice, 444, T, &[&["e", "x"]], "AAEA"),
                    vec![pk(&w.alice)],
                )
            },
            Err("invalid: kind 444 must be gift-wrapped"),
        ),
        row(
            "marmot 1059 with one p",
            |w| {
                (
                    ev(&w.eph, 1059, T - 3600, &[&["p", &hx(&w.bob)]], "wrapped"),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "marmot 1059 backdated 2 days plus clock grace",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T - 2 * 86400 - crate::giftwrap::GIFTWRAP_CLOCK_GRACE,
                        &[&["p", &hx(&w.bob)]],
                        "x",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "marmot 1059 backdated beyond giftwrap_max_backdate",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T - 2 * 86400 - crate::giftwrap::GIFTWRAP_CLOCK_GRACE - 1,
                        &[&["p", &hx(&w.bob)]],
                        "x",
                    ),
                    vec![],
                )
            },
            Err("invalid: gift wrap created_at is more than giftwrap_max_backdate"),
        ),
        row(
            "1059 without p",
            |w| (ev(&w.eph, 1059, T, &[], "x"), vec![]),
            Err("invalid: kind 1059 must have at least one p tag"),
        ),
        row(
            "1059 with a malformed p",
            |w| (ev(&w.eph, 1059, T, &[&["p", "bob"]], "x"), vec![]),
            Err("invalid: p tag"),
        ),
        row(
            "loxation 1059 with h from an authenticated inviter",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.bob)], &["h", OPEN], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        ),
        row(
            "loxation 1059 with h, unauthenticated: no membership change",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.bob)], &["h", OPEN], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "loxation 1059 to a gated group from a non-member",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.carol)], &["h", GROUP], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![pk(&w.carol)],
                )
            },
            Err("restricted: not a member of group"),
        )
        .setup(Env::gate),
        row(
            "loxation 1059 to a gated group from a member",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.carol)], &["h", GROUP], &["v", "gift.1"]],
                        "x",
                    ),
                    vec![pk(&w.bob)],
                )
            },
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "1059 with two h",
            |w| {
                (
                    ev(
                        &w.eph,
                        1059,
                        T,
                        &[&["p", &hx(&w.bob)], &["h", OPEN], &["h", GROUP]],
                        "x",
                    ),
                    vec![pk(&w.alice)],
                )
            },
            Err("invalid: kind 1059 may have at most one h tag"),
        ),
    ]);
}

#[test]
fn group_message_rules() {
    run(vec![
        row(
            "marmot 445 to an unknown group, unauthenticated (open)",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", OPEN], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "loxation 445 to an unknown group (open)",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", OPEN], &["k", "3"], &["p", "hint-not-a-key"]],
                        "AAEA",
                    ),
                    vec![pk(&w.carol)],
                )
            },
            Ok(()),
        ),
        row(
            "445 to an unknown group with unknown_groups = deny",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", OPEN], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.alice)],
                )
            },
            Err("restricted: unknown group"),
        )
        .cfg(|c| c.unknown_groups = UnknownGroups::Deny),
        row(
            "marmot 445 to a gated group, unauthenticated",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![],
                )
            },
            Err("auth-required: group"),
        )
        .setup(Env::gate),
        row(
            "marmot 445 to a gated group, stranger",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.carol)],
                )
            },
            Err("restricted: not a member of group 865f0c83…"),
        )
        .setup(Env::gate),
        row(
            "marmot 445 to a gated group, removed member",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.erin)],
                )
            },
            Err("restricted: not a member of group"),
        )
        .setup(Env::gate),
        row(
            "marmot 445 to a gated group, member (signed by an ephemeral key)",
            |w| {
                (
                    ev(
                        &w.eph,
                        445,
                        T,
                        &[&["h", GROUP], &["encoding", "base64"]],
                        "AAEA",
                    ),
                    vec![pk(&w.carol), pk(&w.bob)],
                )
            },
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "loxation 445 to a gated group, admin",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", GROUP], &["k", "4"]], "AAEA"),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "445 signed by a member's own key but published unauthenticated",
            |w| (ev(&w.bob, 445, T, &[&["h", GROUP]], "AAEA"), vec![]),
            Err("auth-required: group"),
        )
        .setup(Env::gate),
        row(
            "445 without h",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["encoding", "base64"]], "AAEA"),
                    vec![],
                )
            },
            Err("invalid: kind 445 must have exactly one h tag"),
        ),
        row(
            "445 with two h",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", OPEN], &["h", GROUP]], "AAEA"),
                    vec![],
                )
            },
            Err("invalid: kind 445 must have exactly one h tag"),
        ),
        row(
            "445 with empty content",
            |w| (ev(&w.eph, 445, T, &[&["h", OPEN]], ""), vec![]),
            Err("invalid: kind 445 content is empty"),
        ),
        row(
            "loxation 445 with a non-numeric k",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", OPEN], &["k", "x"]], "A"),
                    vec![],
                )
            },
            Err("invalid: k tag must be an unsigned integer"),
        ),
        row(
            "max_group_messages_per_minute reached",
            |w| (ev(&w.eph, 445, T, &[&["h", OPEN]], "second"), vec![]),
            Err("rate-limited: max_group_messages_per_minute reached"),
        )
        .cfg(|c| c.rate_limits.max_group_messages_per_minute = 1)
        .setup(|e| {
            let first = ev(&e.w.eph, 445, T, &[&["h", OPEN]], "first");
            e.ok(&first, &[], T);
        }),
        row(
            "group rate is per publisher",
            |w| {
                (
                    ev(&w.eph, 445, T, &[&["h", OPEN]], "second"),
                    vec![pk(&w.carol)],
                )
            },
            Ok(()),
        )
        .cfg(|c| c.rate_limits.max_group_messages_per_minute = 1)
        .setup(|e| {
            let first = ev(&e.w.eph, 445, T, &[&["h", OPEN]], "first");
            e.ok(&first, &[], T);
        }),
    ]);
}

#[test]
fn noise_dm_rules() {
    run(vec![
        row(
            "446 with p and v",
            |w| {
                (
                    ev(
                        &w.alice,
                        446,
                        T,
                        &[&["p", &hx(&w.bob)], &["v", "noise.1"]],
                        "noise",
                    ),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "446 without p",
            |w| (ev(&w.alice, 446, T, &[&["v", "noise.1"]], "noise"), vec![]),
            Err("invalid: kind 446 must have at least one p tag"),
        ),
        row(
            "446 with empty content",
            |w| (ev(&w.alice, 446, T, &[&["p", &hx(&w.bob)]], ""), vec![]),
            Err("invalid: kind 446 content is empty"),
        ),
    ]);
}

#[test]
fn roster_rules() {
    run(vec![
        row(
            "bootstrap of an unknown group",
            |w| {
                (
                    roster_ev(&w.alice, GROUP, "bootstrap", 1, &[&w.bob]),
                    vec![],
                )
            },
            Ok(()),
        ),
        row(
            "bootstrap with auth on, signer authenticated",
            |w| {
                (
                    roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]),
                    vec![pk(&w.alice)],
                )
            },
            Ok(()),
        )
        .auth(),
        row(
            "bootstrap with auth on, unauthenticated",
            |w| (roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]), vec![]),
            Err("auth-required: roster events"),
        )
        .auth(),
        row(
            "bootstrap with auth on, authenticated as someone else",
            |w| {
                (
                    roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]),
                    vec![pk(&w.bob)],
                )
            },
            Err("restricted: roster signer is not authenticated"),
        )
        .auth(),
        row(
            "bootstrap of an existing group",
            |w| (roster_ev(&w.carol, GROUP, "bootstrap", 9, &[]), vec![]),
            Err("restricted: group 865f0c83… already exists"),
        )
        .setup(Env::gate),
        row(
            "bootstrap of an existing group by a configured admin",
            |w| (roster_ev(&w.dave, GROUP, "bootstrap", 9, &[&w.bob]), vec![]),
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "add by a group admin",
            |w| (roster_ev(&w.alice, GROUP, "add", 4, &[&w.carol]), vec![]),
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "add by a configured admin",
            |w| (roster_ev(&w.dave, GROUP, "add", 4, &[&w.carol]), vec![]),
            Ok(()),
        )
        .setup(Env::gate),
        row(
            "add by a member",
            |w| (roster_ev(&w.bob, GROUP, "add", 4, &[&w.carol]), vec![]),
            Err("restricted: roster signer is not an admin of group"),
        )
        .setup(Env::gate),
        row(
            "add by a stranger",
            |w| (roster_ev(&w.carol, GROUP, "add", 4, &[&w.carol]), vec![]),
            Err("restricted: roster signer is not an admin of group"),
        )
        .setup(Env::gate),
        row(
            "seq replayed",
            |w| (roster_ev(&w.alice, GROUP, "add", 3, &[&w.carol]), vec![]),
            Err("blocked: roster seq must be greater than 3"),
        )
        .setup(Env::gate),
        row(
            "seq going backwards",
            |w| (roster_ev(&w.alice, GROUP, "add", 1, &[&w.carol]), vec![]),
            Err("blocked: roster seq must be greater than 3"),
        )
        .setup(Env::gate),
        row(
            "op on an unknown group",
            |w| (roster_ev(&w.alice, GROUP, "add", 1, &[&w.carol]), vec![]),
            Err("invalid: unknown group"),
        ),
        row(
            "unknown op",
            |w| (roster_ev(&w.alice, GROUP, "kick", 1, &[&w.carol]), vec![]),
            Err("invalid: unknown roster op"),
        ),
        row(
            "missing op",
            |w| {
                (
                    ev(&w.alice, 450, T, &[&["h", GROUP], &["seq", "1"]], ""),
                    vec![],
                )
            },
            Err("invalid: kind 450 must have an op tag"),
        ),
        row(
            "missing seq",
            |w| {
                (
                    ev(&w.alice, 450, T, &[&["h", GROUP], &["op", "bootstrap"]], ""),
                    vec![],
                )
            },
            Err("invalid: kind 450 must have a seq tag"),
        ),
        row(
            "non-numeric seq",
            |w| {
                (
                    ev(
                        &w.alice,
                        450,
                        T,
                        &[&["h", GROUP], &["op", "bootstrap"], &["seq", "x"]],
                        "",
                    ),
                    vec![],
                )
            },
            Err("invalid: seq tag must be an unsigned integer"),
        ),
        row(
            "missing h",
            |w| {
                (
                    ev(&w.alice, 450, T, &[&["op", "bootstrap"], &["seq", "1"]], ""),
                    vec![],
                )
            },
            Err("invalid: kind 450 must have exactly one h tag"),
        ),
        row(
            "add without targets",
            |w| (roster_ev(&w.alice, GROUP, "add", 4, &[]), vec![]),
            Err("invalid: roster op add needs at least one p tag"),
        )
        .setup(Env::gate),
        row(
            "demoting the last admin",
            |w| (roster_ev(&w.alice, GROUP, "demote", 4, &[&w.alice]), vec![]),
            Err("invalid: roster op demote would leave group"),
        )
        .setup(Env::gate),
        row(
            "removing the last admin",
            |w| (roster_ev(&w.alice, GROUP, "remove", 4, &[&w.alice]), vec![]),
            Err("invalid: roster op remove would leave group"),
        )
        .setup(Env::gate),
        row(
            "roster source disabled",
            |w| (roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]), vec![]),
            Err("restricted: the roster membership source is disabled"),
        )
        .cfg(|c| c.membership_sources = vec![MembershipSource::Api]),
    ]);
}

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

// ---------------------------------------------------------------------------------------------
// Retention.

#[test]
fn retention_counts_from_receipt() {
    let mut e = env(false);
    let w = W::new();
    let cfg = e.gw.config().clone();
    let at = T + 1000;
    let gift = e.ok(
        &ev(&w.eph, 1059, T - 86400, &[&["p", &hx(&w.bob)]], "x"),
        &[],
        at,
    );
    assert_eq!(gift.expires_at, Some(at + cfg.welcome_ttl));
    let msg = e.ok(&ev(&w.eph, 445, T - 5000, &[&["h", OPEN]], "x"), &[], at);
    assert_eq!(
        msg.expires_at,
        Some(at + cfg.message_archive_ttl_days * 86400)
    );
    let soon = (at + 60).to_string();
    let msg = e.ok(
        &ev(&w.eph, 445, T, &[&["h", OPEN], &["expiration", &soon]], "y"),
        &[],
        at,
    );
    assert_eq!(msg.expires_at, Some(at + 60), "NIP-40 expiration first");
    let dm = e.ok(&ev(&w.alice, 446, T, &[&["p", &hx(&w.bob)]], "x"), &[], at);
    assert_eq!(
        dm.expires_at,
        Some(at + cfg.message_archive_ttl_days * 86400)
    );
    let kp = e.ok(&mdk_kp(&w.alice, 30443, &reference(1), T, &[]), &[], at);
    assert_eq!(kp.expires_at, Some(at + cfg.keypackage_ttl));
    let kp = e.ok(&lox_kp(&w.bob, &hx(&w.bob), "r", at + 500), &[], at);
    assert_eq!(kp.expires_at, Some(at + 500));
    let roster = e.ok(&roster_ev(&w.alice, GROUP, "bootstrap", 1, &[]), &[], at);
    assert_eq!(roster.expires_at, None, "kept while the group exists");
}

#[test]
fn archive_off_delivers_live_only() {
    let mut e = env_with(false, |c| c.enable_message_archive = false);
    let w = W::new();
    for event in [
        ev(&w.eph, 445, T, &[&["h", OPEN]], "x"),
        ev(&w.alice, 446, T, &[&["p", &hx(&w.bob)]], "x"),
        ev(&w.eph, 1059, T, &[&["p", &hx(&w.bob)]], "x"),
    ] {
        assert!(!e.ok(&event, &[], T).store, "kind {}", event.kind);
    }
    // State changes still happen: a gift wrap's membership, a roster, a KeyPackage.
    e.ok(
        &ev(&w.eph, 1059, T, &[&["p", &hx(&w.bob)], &["h", GROUP]], "x"),
        &[pk(&w.alice)],
        T,
    );
    assert!(e.record(GROUP).members.contains(&pk(&w.bob)));
    assert!(
        e.ok(&mdk_kp(&w.alice, 443, &reference(1), T, &[]), &[], T)
            .store
    );
    // OPEN was served open (live) above: only a configured admin may gate it now.
    assert!(
        e.ok(&roster_ev(&w.dave, OPEN, "bootstrap", 1, &[]), &[], T)
            .store
    );
}

// ---------------------------------------------------------------------------------------------
// The real MDK 0.8 events.

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

// ---------------------------------------------------------------------------------------------
// Visibility.

#[test]
fn visibility_matrix() {
    for auth in [false, true] {
        let mut e = env(auth);
        e.gate();
        let w = W::new();
        let gift = ev(&w.eph, 1059, T, &[&["p", &hx(&w.bob)]], "x");
        let dm = ev(
            &w.alice,
            446,
            T,
            &[&["p", &hx(&w.bob)], &["v", "noise.1"]],
            "x",
        );
        let gated = ev(&w.eph, 445, T, &[&["h", GROUP]], "x");
        let open = ev(&w.eph, 445, T, &[&["h", OPEN]], "x");
        let roster = roster_ev(&w.alice, GROUP, "add", 4, &[&w.carol]);
        let kp = mdk_kp(&w.alice, 30443, &reference(1), T, &[]);
        let note = ev(&w.carol, 1, T, &[], "x");
        let relays = ev(&w.carol, 10050, T, &[&["relay", "wss://x"]], "");
        let rumor = ev(&w.alice, 444, T, &[], "x");

        let viewers: [(&str, Vec<Hex32>); 7] = [
            ("unauthenticated", vec![]),
            ("stranger", vec![pk(&w.carol)]),
            ("member", vec![pk(&w.bob)]),
            ("removed member", vec![pk(&w.erin)]),
            ("admin/author", vec![pk(&w.alice)]),
            ("configured admin", vec![pk(&w.dave)]),
            ("stranger + member", vec![pk(&w.carol), pk(&w.bob)]),
        ];
        let any = !auth; // "anyone when auth is off"
        #[rustfmt::skip]
        let expected: [(&str, &Event, [bool; 7]); 9] = [
            //                          unauth  stranger member removed admin  cfgadm  multi
            ("1059 to bob",     &gift,   [false, false,   true,  false,  false, false,  true]),
            ("446 alice→bob",   &dm,     [false, false,   true,  false,  true,  false,  true]),
            ("445 gated",       &gated,  [false, false,   true,  false,  true,  false,  true]),
            ("445 open",        &open,   [any,   true,    true,  true,   true,  true,   true]),
            ("450 roster",      &roster, [false, false,   true,  false,  true,  true,   true]),
            ("30443 keypackage",&kp,     [any,   true,    true,  true,   true,  true,   true]),
            ("kind 1",          &note,   [true,  true,    true,  true,   true,  true,   true]),
            ("10050",           &relays, [true,  true,    true,  true,   true,  true,   true]),
            ("444 rumor",       &rumor,  [false, false,   false, false,  false, false,  false]),
        ];
        for (name, event, row) in expected {
            for ((who, viewer), want) in viewers.iter().zip(row) {
                assert_eq!(
                    e.sees(viewer, event),
                    want,
                    "auth {auth}: {name} seen by {who}"
                );
            }
        }
    }
}

#[test]
fn membership_changes_are_seen_at_once() {
    let mut e = env(false);
    e.gate();
    let w = W::new();
    let gated = ev(&w.eph, 445, T, &[&["h", GROUP]], "x");
    assert!(!e.sees(&[pk(&w.carol)], &gated));
    e.roster(&w.alice, "add", 4, &[&w.carol]).unwrap();
    assert!(e.sees(&[pk(&w.carol)], &gated));
    e.roster(&w.alice, "remove", 5, &[&w.carol]).unwrap();
    assert!(!e.sees(&[pk(&w.carol)], &gated));
    // A group becomes gated the moment its membership is known.
    let open = ev(&w.eph, 445, T, &[&["h", OPEN]], "x");
    assert!(e.sees(&[pk(&w.carol)], &open));
    e.ok(&roster_ev(&w.alice, OPEN, "bootstrap", 1, &[]), &[], T);
    assert!(!e.sees(&[pk(&w.carol)], &open));
    assert!(e.sees(&[pk(&w.alice)], &open));
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

// ---------------------------------------------------------------------------------------------
// REQ pre-checks.

fn filters(v: serde_json::Value) -> Vec<Filter> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| Filter::from_value(f).unwrap())
        .collect()
}

#[test]
fn check_read_refusals() {
    for auth in [false, true] {
        let mut e = env(auth);
        e.gate();
        let w = W::new();
        let (bob, carol, alice, dave) = (hx(&w.bob), hx(&w.carol), hx(&w.alice), hx(&w.dave));
        enum Want {
            Ok,
            Auth(&'static str),
            Restricted(&'static str),
        }
        use Want::*;
        let cases: Vec<(Vec<Hex32>, serde_json::Value, Want)> = vec![
            (
                vec![],
                json!([{"kinds":[1059]}]),
                Auth("auth-required: kind 1059 is only served to its recipients"),
            ),
            (
                vec![],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Auth("auth-required: kind 1059"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Restricted("restricted: kind 1059 is only served to its recipients"),
            ),
            (vec![pk(&w.bob)], json!([{"kinds":[1059],"#p":[bob]}]), Ok),
            (
                vec![pk(&w.carol), pk(&w.bob)],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Ok,
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[1059]}]), Ok),
            (vec![], json!([{"kinds":[1059]},{"kinds":[1]}]), Ok),
            (vec![], json!([{"kinds":[1059,1]}]), Ok),
            (vec![], json!([{"ids":["00".repeat(32)]}]), Ok),
            (vec![], json!([{"kinds":[1059],"limit":0,"#p":[]}]), Ok),
            (
                vec![],
                json!([{"kinds":[446]}]),
                Auth("auth-required: kind 446"),
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[446],"#p":[bob]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[alice]}]),
                Restricted("restricted: kind 446"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[carol]}]),
                Ok,
            ),
            // A gated group's 445s / 450s by `#h` answer as an unknown group's would (the
            // stored query is scoped instead): the answer does not say the group exists.
            (vec![], json!([{"kinds":[445],"#h":[GROUP]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[445],"#h":[GROUP]}]),
                Ok,
            ),
            (vec![pk(&w.erin)], json!([{"kinds":[445],"#h":[GROUP]}]), Ok),
            (vec![pk(&w.bob)], json!([{"kinds":[445],"#h":[GROUP]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[445],"#h":[GROUP, OPEN]}]),
                Ok,
            ),
            (vec![], json!([{"kinds":[445]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[450],"#h":[GROUP]}]),
                Ok,
            ),
            (vec![pk(&w.dave)], json!([{"kinds":[450],"#h":[GROUP]}]), Ok),
            (vec![pk(&w.bob)], json!([{"kinds":[450],"#h":[GROUP]}]), Ok),
            (vec![pk(&w.carol)], json!([{"kinds":[450],"#h":[OPEN]}]), Ok),
            (
                vec![],
                json!([{"kinds":[450],"#h":[OPEN]}]),
                Auth("auth-required: kind 450"),
            ),
            (
                vec![],
                json!([{"kinds":[450]}]),
                Auth("auth-required: kind 450"),
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[450]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[443, 30443],"authors":[dave]}]),
                Ok,
            ),
            (vec![], json!([{"kinds":[1]}]), Ok),
        ];
        for (i, (who, f, want)) in cases.into_iter().enumerate() {
            let got =
                e.gw.check_read(&Viewer::authenticated_as(who), &filters(f.clone()), &e.st);
            match (&want, &got) {
                (Ok, Result::Ok(())) => {}
                (Auth(p), Err(ReadRefusal::AuthRequired(m))) if m.starts_with(p) => {}
                (Restricted(p), Err(ReadRefusal::Restricted(m))) if m.starts_with(p) => {}
                _ => panic!("case {i} (auth {auth}) {f}: got {got:?}"),
            }
        }
        // After a query that found only hidden events, targeted filters are refused too.
        let hidden_cases: Vec<(Vec<Hex32>, serde_json::Value, Want)> = vec![
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[1059],"#p":[bob]}]),
                Restricted("restricted: kind 1059 is only served to its recipients"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[alice]}]),
                Restricted("restricted: kind 446"),
            ),
            (
                vec![pk(&w.carol)],
                json!([{"ids":["00".repeat(32)]}]),
                Restricted("restricted: the requested events"),
            ),
            (
                vec![],
                json!([{"ids":["00".repeat(32)]}]),
                Auth("auth-required: the requested events"),
            ),
            (vec![pk(&w.carol)], json!([{"kinds":[1059]}]), Ok),
            (vec![pk(&w.bob)], json!([{"kinds":[1059],"#p":[bob]}]), Ok),
            (
                vec![pk(&w.carol)],
                json!([{"kinds":[446],"#p":[bob],"authors":[carol]}]),
                Ok,
            ),
        ];
        for (i, (who, f, want)) in hidden_cases.into_iter().enumerate() {
            let got = e.gw.check_hidden_result(
                &Viewer::authenticated_as(who),
                &filters(f.clone()),
                &e.st,
            );
            match (&want, &got) {
                (Ok, Result::Ok(())) => {}
                (Auth(p), Err(ReadRefusal::AuthRequired(m))) if m.starts_with(p) => {}
                (Restricted(p), Err(ReadRefusal::Restricted(m))) if m.starts_with(p) => {}
                _ => panic!("hidden case {i} (auth {auth}) {f}: got {got:?}"),
            }
        }
        let kp_anon = e.gw.check_read(
            &Viewer::anonymous(),
            &filters(json!([{"kinds":[30443]}])),
            &e.st,
        );
        if auth {
            assert!(matches!(kp_anon, Err(ReadRefusal::AuthRequired(_))));
        } else {
            assert_eq!(kp_anon, Result::Ok(()));
        }
    }
}

#[test]
fn reads_are_scoped_to_what_the_reader_may_see() {
    let mut e = env(true);
    e.gate();
    let w = W::new();
    let (bob, carol, alice) = (hx(&w.bob), hx(&w.carol), hx(&w.alice));
    let scope = |who: Vec<Hex32>, f: serde_json::Value| -> serde_json::Value {
        let got =
            e.gw.scope_reads(&Viewer::authenticated_as(who), &filters(f), &e.st);
        serde_json::Value::Array(got.iter().map(filter_json).collect())
    };
    // Mailboxes: through the reader's own pubkeys.
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[1059],"limit":5}])),
        json!([{"kinds":[1059],"#p":[carol],"limit":5}])
    );
    assert_eq!(
        scope(
            vec![pk(&w.carol), pk(&w.bob)],
            json!([{"kinds":[1059],"#p":[bob, alice]}])
        ),
        json!([{"kinds":[1059],"#p":[bob]}])
    );
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[446]}])),
        json!([{"kinds":[446],"#p":[carol]},{"kinds":[446],"authors":[carol]}])
    );
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[446],"#p":[bob]}])),
        json!([{"kinds":[446],"#p":[bob],"authors":[carol]}])
    );
    assert_eq!(scope(vec![], json!([{"kinds":[1059]}])), json!([]));
    // Other kinds of the same filter keep it as it is.
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[1,1059],"since":3}])),
        json!([{"kinds":[1],"since":3},{"kinds":[1059],"#p":[carol],"since":3}])
    );
    // Gated groups by `#h`: only the reader's; open/unknown groups stay.
    assert_eq!(
        scope(
            vec![pk(&w.carol)],
            json!([{"kinds":[445],"#h":[GROUP, OPEN]}])
        ),
        json!([{"kinds":[445],"#h":[OPEN]}])
    );
    assert_eq!(
        scope(vec![pk(&w.carol)], json!([{"kinds":[445],"#h":[GROUP]}])),
        json!([])
    );
    assert_eq!(
        scope(vec![pk(&w.bob)], json!([{"kinds":[445,450],"#h":[GROUP]}])),
        json!([{"kinds":[445],"#h":[GROUP]},{"kinds":[450],"#h":[GROUP]}])
    );
    // A configured admin reads 450s of any group, not 445s of groups it is not in.
    assert_eq!(
        scope(
            vec![pk(&w.dave)],
            json!([{"kinds":[445,450,1],"#h":[GROUP]}])
        ),
        json!([{"kinds":[1],"#h":[GROUP]},{"kinds":[450],"#h":[GROUP]}])
    );
    // Unchanged: ids, no kinds, 445 without `#h`.
    for f in [
        json!({"ids":["00".repeat(32)],"kinds":[1059]}),
        json!({}),
        json!({"#p":[bob]}),
        json!({"kinds":[445]}),
    ] {
        assert_eq!(scope(vec![pk(&w.carol)], json!([f.clone()])), json!([f]));
    }
}

fn filter_json(f: &Filter) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    if let Some(ids) = &f.ids {
        m.insert(
            "ids".into(),
            json!(ids.iter().map(Hex32::to_hex).collect::<Vec<_>>()),
        );
    }
    if let Some(a) = &f.authors {
        m.insert(
            "authors".into(),
            json!(a.iter().map(Hex32::to_hex).collect::<Vec<_>>()),
        );
    }
    if let Some(k) = &f.kinds {
        m.insert("kinds".into(), json!(k));
    }
    for (letter, values) in &f.tags {
        m.insert(format!("#{letter}"), json!(values));
    }
    for (key, v) in [("since", f.since), ("until", f.until), ("limit", f.limit)] {
        if let Some(v) = v {
            m.insert(key.into(), json!(v));
        }
    }
    serde_json::Value::Object(m)
}

#[test]
fn split_filters_keep_each_filters_limit() {
    let w = W::new();
    let bob = hx(&w.bob);
    let note = |t: u64| ev(&w.alice, 1, t, &[], "");
    let wrap = |t: u64| ev(&w.alice, 1059, t, &[&["p", &bob]], "");
    // Newest first, as a query returns them.
    let found = vec![wrap(9), note(8), wrap(7), note(6), note(5)];
    let want = |evs: &[&Event]| evs.iter().map(|e| e.id).collect::<Vec<_>>();
    let kept = within_limits(
        &filters(json!([{"kinds":[1,1059],"limit":3}])),
        500,
        found.clone(),
        |e| e,
    );
    assert_eq!(
        kept.iter().map(|e| e.id).collect::<Vec<_>>(),
        want(&[&found[0], &found[1], &found[2]])
    );
    // Two filters: each its own newest; an event counts for every filter it matches.
    let kept = within_limits(
        &filters(json!([{"kinds":[1],"limit":1},{"limit":2}])),
        500,
        found.clone(),
        |e| e,
    );
    assert_eq!(
        kept.iter().map(|e| e.id).collect::<Vec<_>>(),
        want(&[&found[0], &found[1]])
    );
    // max_limit caps a filter without its own limit.
    assert_eq!(
        within_limits(&filters(json!([{}])), 2, found, |e| e).len(),
        2
    );
}

#[test]
fn live_keypackages_follow_the_claim_rules() {
    let w = W::new();
    let kp = mdk_kp(&w.alice, 443, &reference(1), T, &[]);
    let mut claims_on = claims_env(|_| {});
    claims_on.ok(&kp, &[pk(&w.alice)], T);
    let mut claims_off = env(true);
    claims_off.ok(&kp, &[pk(&w.alice)], T);
    let live = |e: &Env, who: Vec<Hex32>| {
        e.gw.audience(&kp, &e.st)
            .admits_live(&Viewer::authenticated_as(who), &e.st)
    };
    assert!(
        !live(&claims_on, vec![pk(&w.bob)]),
        "a stored REQ claims it"
    );
    assert!(!live(&claims_on, vec![]));
    assert!(
        live(&claims_on, vec![pk(&w.bob), pk(&w.alice)]),
        "its owner"
    );
    assert!(live(&claims_off, vec![pk(&w.bob)]));
    // Stored reads are unchanged: the claim rules decide there.
    assert!(claims_on.sees(&[pk(&w.bob)], &kp));
}

// ---------------------------------------------------------------------------------------------
// Claims.

fn claims_env(cfg: fn(&mut GatewayConfig)) -> Env {
    env_with(true, |c| {
        c.keypackage_claims = true;
        cfg(c);
    })
}

/// `owner` publishes `n` KeyPackages (newest last); returns them newest first, as a REQ would.
fn publish_kps(e: &mut Env, owner: &Keypair, n: u8, kind: u16) -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..n {
        let r = reference(i + 1 + pk(owner).0[0] % 64 * 2);
        let kp = mdk_kp(owner, kind, &r, T + u64::from(i), &[]);
        e.ok(&kp, &[pk(owner)], T);
        out.push(kp);
    }
    out.reverse();
    out
}

fn claim(e: &mut Env, requester: &Keypair, candidates: &[Event]) -> Result<Vec<Hex32>, Rejection> {
    let gw = e.gw.clone();
    gw.claim_keypackages(
        &Viewer::authenticated_as([pk(requester)]),
        candidates,
        T + 10,
        &mut e.st,
    )
}

fn ids(events: &[&Event]) -> Vec<Hex32> {
    events.iter().map(|e| e.id).collect()
}

#[test]
fn claims_serve_newest_unclaimed_and_never_the_last() {
    let mut e = claims_env(|_| {});
    let w = W::new();
    let kps = publish_kps(&mut e, &w.alice, 4, 443); // kps[0] newest
    assert_eq!(
        claim(&mut e, &w.bob, &kps).unwrap(),
        ids(&[&kps[0], &kps[1]])
    );
    assert_eq!(
        claim(&mut e, &w.carol, &kps).unwrap(),
        ids(&[&kps[2], &kps[3]]),
        "kps[3] is the last: served, not claimed"
    );
    assert_eq!(
        claim(&mut e, &w.erin, &kps).unwrap(),
        ids(&[&kps[3]]),
        "the last one stays available"
    );
    assert_eq!(
        claim(&mut e, &w.bob, &kps).unwrap(),
        ids(&[&kps[0], &kps[1]]),
        "a requester gets back its own claims"
    );
    // Nothing of alice's was claimed twice.
    let rows = keypackage::rows_of(&e.st, &pk(&w.alice), T).unwrap();
    let claimed: Vec<_> = rows.iter().map(|(_, r)| r.claimed_by).collect();
    assert_eq!(
        claimed,
        vec![Some(pk(&w.bob)), Some(pk(&w.bob)), Some(pk(&w.carol)), None]
    );
}

#[test]
fn claims_single_keypackage_is_last_resort() {
    let mut e = claims_env(|_| {});
    let w = W::new();
    let kps = publish_kps(&mut e, &w.alice, 1, 30443);
    for requester in [&w.bob, &w.carol, &w.erin] {
        assert_eq!(claim(&mut e, requester, &kps).unwrap(), ids(&[&kps[0]]));
    }
    let rows = keypackage::rows_of(&e.st, &pk(&w.alice), T).unwrap();
    assert_eq!(rows[0].1.claimed_by, None);
}

#[test]
fn claims_respect_max_per_query_and_pass_through_the_rest() {
    let mut e = claims_env(|c| c.max_keypackages_per_query = 1);
    let w = W::new();
    let alice_kps = publish_kps(&mut e, &w.alice, 3, 443);
    let bob_kps = publish_kps(&mut e, &w.bob, 3, 443);
    let carol_kps = publish_kps(&mut e, &w.carol, 2, 443);
    let note = ev(&w.dave, 1, T, &[], "x");
    let mut candidates = vec![note.clone()];
    candidates.extend(alice_kps.iter().cloned());
    candidates.extend(bob_kps.iter().cloned());
    candidates.extend(carol_kps.iter().cloned());
    // carol asks: one of alice's, one of bob's, all of her own, the note.
    let mut want = vec![note.id, alice_kps[0].id, bob_kps[0].id];
    want.extend(carol_kps.iter().map(|k| k.id));
    assert_eq!(claim(&mut e, &w.carol, &candidates).unwrap(), want);
}

#[test]
fn claims_dual_published_keypackage_is_one() {
    let mut e = claims_env(|c| c.max_keypackages_per_query = 1);
    let w = W::new();
    let mut candidates = Vec::new();
    for i in 0..2u8 {
        for kind in [30443u16, 443] {
            let kp = mdk_kp(&w.alice, kind, &reference(50 + i), T + u64::from(i), &[]);
            e.ok(&kp, &[pk(&w.alice)], T);
            candidates.insert(0, kp);
        }
    }
    let served = claim(&mut e, &w.bob, &candidates).unwrap();
    assert_eq!(served.len(), 2, "both events of the newest KeyPackage");
    let newest_ref = reference(51);
    for id in &served {
        let event = candidates.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(event.tag_value("i"), Some(newest_ref.as_str()));
    }
}

#[test]
fn claims_fetch_limit_per_pair() {
    let mut e = claims_env(|c| c.max_keypackage_fetches_per_hour = 2);
    let w = W::new();
    let kps = publish_kps(&mut e, &w.alice, 5, 443);
    let bob_kps = publish_kps(&mut e, &w.bob, 2, 443);
    claim(&mut e, &w.carol, &kps).unwrap();
    claim(&mut e, &w.carol, &kps).unwrap();
    let before = e.st.clone();
    let refused = claim(&mut e, &w.carol, &kps).unwrap_err();
    assert!(
        refused
            .0
            .starts_with("rate-limited: max_keypackage_fetches_per_hour"),
        "{}",
        refused.0
    );
    assert_eq!(e.st, before, "a refused fetch claims nothing");
    claim(&mut e, &w.carol, &bob_kps).expect("another owner is another pair");
    claim(&mut e, &w.erin, &kps).expect("another requester is another pair");
    // An hour later the pair may fetch again.
    let gw = e.gw.clone();
    gw.claim_keypackages(
        &Viewer::authenticated_as([pk(&w.carol)]),
        &kps,
        T + 3700,
        &mut e.st,
    )
    .expect("next window");
}

#[test]
fn claims_pass_through_when_not_applicable() {
    let w = W::new();
    // Claims off.
    let mut e = env(true);
    let kps = publish_kps(&mut e, &w.alice, 3, 443);
    assert_eq!(
        claim(&mut e, &w.bob, &kps).unwrap(),
        ids(&kps.iter().collect::<Vec<_>>())
    );
    // Claims on: an unauthenticated requester gets unclaimed ones within the per-owner
    // budget and claims nothing; the owner gets all of its own.
    let mut e = claims_env(|_| {});
    let kps = publish_kps(&mut e, &w.alice, 3, 443);
    let gw = e.gw.clone();
    let all = ids(&kps.iter().collect::<Vec<_>>());
    let anonymous = gw
        .claim_keypackages(&Viewer::anonymous(), &kps, T, &mut e.st)
        .unwrap();
    assert_eq!(
        anonymous.len(),
        gw.config().max_keypackages_per_query as usize
    );
    assert!(anonymous.iter().all(|id| all.contains(id)));
    assert_eq!(claim(&mut e, &w.alice, &kps).unwrap(), all);
    assert!(keypackage::rows_of(&e.st, &pk(&w.alice), T)
        .unwrap()
        .iter()
        .all(|(_, r)| r.claimed_by.is_none()));
}

// ---------------------------------------------------------------------------------------------
// Registry: rosters, gift wraps, the admin API, epochs.

#[test]
fn roster_sequence_and_membership() {
    let mut e = env(false);
    let w = W::new();
    e.roster(&w.alice, "bootstrap", 10, &[&w.bob]).unwrap();
    let r = e.record(GROUP);
    assert_eq!(r.owner, Some(pk(&w.alice)));
    assert_eq!(r.admins, vec![pk(&w.alice)]);
    assert_eq!(r.member_count, 2);
    assert_eq!(r.last_seq, Some(10));

    assert!(e
        .roster(&w.alice, "add", 10, &[&w.carol])
        .unwrap_err()
        .0
        .starts_with("blocked:"));
    assert!(e
        .roster(&w.alice, "add", 9, &[&w.carol])
        .unwrap_err()
        .0
        .starts_with("blocked:"));
    e.roster(&w.alice, "add", 12, &[&w.carol]).unwrap();
    e.roster(&w.alice, "promote", 13, &[&w.bob]).unwrap();
    e.roster(&w.bob, "demote", 14, &[&w.alice]).unwrap();
    let r = e.record(GROUP);
    assert_eq!(r.admins, vec![pk(&w.bob)]);
    assert!(r.members.contains(&pk(&w.alice)), "demote keeps membership");
    // alice is no longer an admin.
    assert!(e
        .roster(&w.alice, "add", 15, &[&w.erin])
        .unwrap_err()
        .0
        .starts_with("restricted:"));
    e.roster(&w.bob, "replace", 15, &[&w.bob, &w.erin]).unwrap();
    let r = e.record(GROUP);
    let mut want = vec![pk(&w.bob), pk(&w.erin)];
    want.sort();
    assert_eq!(r.members, want);
    assert_eq!(r.member_count, 2);
    e.roster(&w.bob, "remove", 16, &[&w.erin]).unwrap();
    assert_eq!(e.record(GROUP).members, vec![pk(&w.bob)]);
    // Display name.
    let named = ev(
        &w.bob,
        450,
        T,
        &[
            &["h", GROUP],
            &["op", "add"],
            &["seq", "17"],
            &["p", &hx(&w.carol)],
            &["name", "Friends"],
        ],
        "",
    );
    e.ok(&named, &[], T);
    assert_eq!(e.record(GROUP).display_name.as_deref(), Some("Friends"));
    // A configured admin re-bootstraps: roster reset, seq continues.
    e.roster(&w.dave, "bootstrap", 18, &[&w.alice]).unwrap();
    let r = e.record(GROUP);
    assert_eq!(r.owner, Some(pk(&w.dave)));
    assert_eq!(r.admins, vec![pk(&w.dave)]);
    assert_eq!(r.last_seq, Some(18));
}

#[test]
fn refused_roster_changes_nothing() {
    let mut e = env(false);
    e.gate();
    let w = W::new();
    let before = e.st.clone();
    // Each of these passes every check but one; Env::admit asserts the state is untouched.
    for (signer, op, seq) in [
        (&w.bob, "add", 4),
        (&w.alice, "add", 3),
        (&w.alice, "demote", 4),
        (&w.carol, "bootstrap", 4),
    ] {
        let target = if op == "demote" { &w.alice } else { &w.carol };
        assert!(e.roster(signer, op, seq, &[target]).is_err(), "{op} {seq}");
    }
    assert_eq!(e.st, before);
}

#[test]
fn giftwrap_membership_source() {
    let mut e = env(false);
    let w = W::new();
    let wrap = |to: &Keypair, group: &str| {
        ev(
            &w.eph,
            1059,
            T,
            &[&["p", &hx(to)], &["h", group], &["v", "gift.1"]],
            "x",
        )
    };
    // Unauthenticated: no membership.
    e.ok(&wrap(&w.bob, GROUP), &[], T);
    assert!(registry::load_record(&e.st, GROUP).unwrap().is_none());
    // Authenticated inviter of an unknown group: it becomes gated, the inviter its owner.
    e.ok(&wrap(&w.bob, GROUP), &[pk(&w.alice)], T);
    let r = e.record(GROUP);
    assert_eq!(r.owner, Some(pk(&w.alice)));
    let mut want = vec![pk(&w.alice), pk(&w.bob)];
    want.sort();
    assert_eq!(r.members, want);
    // A member invites: the recipient joins.
    e.ok(&wrap(&w.carol, GROUP), &[pk(&w.bob)], T);
    assert!(e.record(GROUP).members.contains(&pk(&w.carol)));
    // A stranger cannot invite themselves.
    assert!(e.admit(&wrap(&w.erin, GROUP), &[pk(&w.erin)], T).is_err());
    // Source disabled: accepted, no membership.
    let mut e = env_with(false, |c| {
        c.membership_sources = vec![MembershipSource::Roster]
    });
    e.ok(&wrap(&w.bob, GROUP), &[pk(&w.alice)], T);
    assert!(registry::load_record(&e.st, GROUP).unwrap().is_none());
}

#[test]
fn epochs_never_go_backwards() {
    let mut e = env(false);
    e.gate();
    let w = W::new();
    for (k, want) in [(5, 5), (3, 5), (7, 7)] {
        let msg = ev(
            &w.eph,
            445,
            T,
            &[&["h", GROUP], &["k", &k.to_string()]],
            &format!("m{k}"),
        );
        e.ok(&msg, &[pk(&w.bob)], T);
        assert_eq!(e.record(GROUP).last_epoch, Some(want));
    }
}

#[test]
fn admin_api_changes() {
    let mut e = env(true);
    let w = W::new();
    let gw = e.gw.clone();
    let change = |op, pubkeys: Vec<Hex32>| MembershipChange {
        group_id: GROUP.into(),
        op,
        pubkeys,
        display_name: Some("Ops".into()),
        actor: Some(pk(&w.dave)),
    };
    let err = gw
        .apply_admin_change(&change(RosterOp::Remove, vec![pk(&w.bob)]), T, &mut e.st)
        .unwrap_err();
    assert!(err.0.starts_with("invalid: unknown group"), "{}", err.0);
    let err = gw
        .apply_admin_change(&change(RosterOp::Bootstrap, vec![pk(&w.bob)]), T, &mut e.st)
        .unwrap_err();
    assert!(err.0.starts_with("invalid: bootstrap"), "{}", err.0);
    let r = gw
        .apply_admin_change(&change(RosterOp::Add, vec![pk(&w.bob)]), T, &mut e.st)
        .unwrap();
    assert_eq!(
        (r.owner, r.members.clone(), r.display_name.as_deref()),
        (Some(pk(&w.dave)), vec![pk(&w.bob)], Some("Ops"))
    );
    gw.apply_admin_change(&change(RosterOp::Promote, vec![pk(&w.alice)]), T, &mut e.st)
        .unwrap();
    let r = gw
        .apply_admin_change(
            &change(RosterOp::Demote, vec![pk(&w.alice)]),
            T + 1,
            &mut e.st,
        )
        .unwrap();
    assert!(r.admins.is_empty() && r.members.contains(&pk(&w.alice)));
    assert_eq!(r.updated_at, T + 1);
    // The api path gates the group exactly like a roster would.
    let msg = ev(&w.eph, 445, T, &[&["h", GROUP]], "x");
    assert!(e.admit(&msg, &[pk(&w.carol)], T).is_err());
    e.ok(&msg, &[pk(&w.bob)], T);
    // REST reads: members, admins and configured admins only.
    let view = |k: &Keypair| Viewer::authenticated_as([pk(k)]);
    assert!(gw.group_for(&view(&w.bob), GROUP, &e.st).unwrap().is_some());
    assert!(gw
        .group_for(&view(&w.dave), GROUP, &e.st)
        .unwrap()
        .is_some());
    assert!(gw
        .group_for(&view(&w.carol), GROUP, &e.st)
        .unwrap()
        .is_none());
    assert!(gw
        .group_for(&Viewer::anonymous(), GROUP, &e.st)
        .unwrap()
        .is_none());
    assert!(gw.group_for(&view(&w.bob), OPEN, &e.st).unwrap().is_none());
    let summary = gw
        .group_for(&view(&w.bob), GROUP, &e.st)
        .unwrap()
        .unwrap()
        .summary();
    assert_eq!(summary["member_count"], 2);
    assert_eq!(summary.as_object().unwrap().len(), 5);
    assert_eq!(gw.list_groups(&e.st).unwrap().len(), 1);
    // Api source disabled.
    let mut e2 = env_with(true, |c| {
        c.membership_sources = vec![MembershipSource::Roster]
    });
    let gw2 = e2.gw.clone();
    let err = gw2
        .apply_admin_change(&change(RosterOp::Add, vec![pk(&w.bob)]), T, &mut e2.st)
        .unwrap_err();
    assert!(err
        .0
        .starts_with("restricted: the api membership source is disabled"));
}

// ---------------------------------------------------------------------------------------------
// KeyPackage directory.

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

#[test]
fn purge_state_drops_expired_bookkeeping() {
    let mut e = env(false);
    let w = W::new();
    e.ok(&lox_kp(&w.alice, &hx(&w.alice), "short", T + 100), &[], T);
    e.ok(&mdk_kp(&w.alice, 30443, &reference(1), T, &[]), &[], T);
    e.ok(&ev(&w.eph, 445, T, &[&["h", OPEN]], "x"), &[], T);
    let gw = e.gw.clone();
    let removed = gw.purge_state(T + 4000, &mut e.st).unwrap();
    assert!(
        removed >= 3,
        "one KeyPackage row, its reference, the rate counters: {removed}"
    );
    assert!(e.st.get(&state::key_ref_key("short")).unwrap().is_none());
    assert_eq!(
        gw.keypackages_of(&pk(&w.alice), T + 4000, &e.st)
            .unwrap()
            .len(),
        1
    );
    // The reference is free again after expiry.
    e.ok(
        &lox_kp(&w.bob, &hx(&w.bob), "short", T + 4100),
        &[],
        T + 4000,
    );
}

// ---------------------------------------------------------------------------------------------
// Construction and NIP-11.

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
