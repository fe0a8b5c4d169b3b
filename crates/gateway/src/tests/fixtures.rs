//! The fixtures every rule test shares: the cast of keys, an in-memory state with a gateway
//! ([`Env`]), event builders (rosters, MDK and Loxation KeyPackages), and the admission table
//! ([`Row`], [`run`]).
//!
//! Every admission goes through [`Env::admit`], which also asserts that a refusal left the
//! state byte-for-byte unchanged: the rules never rely on the store discarding partial writes.

pub(crate) use crate::*;
pub(crate) use mls_proto::Tag;
pub(crate) use secp256k1::{Keypair, SECP256K1};
pub(crate) use serde_json::json;

/// "Now" for the tests: the MDK vectors' `created_at`.
pub(crate) const T: u64 = 1_795_994_933;
pub(crate) const GROUP: &str = "865f0c8384da1be9ffca0f9bf6da9210d94f9f932acd788172ad1defabb5dadb";
pub(crate) const OPEN: &str = "0000000000000000000000000000000000000000000000000000000000000001";
pub(crate) const CS_NAME: &str = "MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519";

pub(crate) fn keypair(seed: u8) -> Keypair {
    Keypair::from_seckey_slice(SECP256K1, &[seed; 32]).expect("valid secret key")
}

pub(crate) fn pk(k: &Keypair) -> Hex32 {
    Hex32(k.x_only_public_key().0.serialize())
}

pub(crate) fn hx(k: &Keypair) -> String {
    pk(k).to_hex()
}

pub(crate) fn tags(v: &[&[&str]]) -> Vec<Tag> {
    v.iter()
        .map(|t| t.iter().map(|s| s.to_string()).collect())
        .collect()
}

pub(crate) fn ev(k: &Keypair, kind: u16, at: u64, t: &[&[&str]], content: &str) -> Event {
    Event::sign(k, at, kind, tags(t), content)
}

/// The cast: alice owns/administers GROUP, bob is a member, carol a stranger, dave a
/// configured admin, erin a removed member, eph an ephemeral 445 key.
pub(crate) struct W {
    pub(crate) alice: Keypair,
    pub(crate) bob: Keypair,
    pub(crate) carol: Keypair,
    pub(crate) dave: Keypair,
    pub(crate) erin: Keypair,
    pub(crate) eph: Keypair,
}

impl W {
    pub(crate) fn new() -> W {
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

pub(crate) struct Env {
    pub(crate) gw: Gateway,
    pub(crate) st: MemState,
    pub(crate) w: W,
}

pub(crate) fn env_with(auth: bool, cfg: impl FnOnce(&mut GatewayConfig)) -> Env {
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

pub(crate) fn env(auth: bool) -> Env {
    env_with(auth, |_| {})
}

impl Env {
    pub(crate) fn admit(
        &mut self,
        e: &Event,
        publisher: &[Hex32],
        at: u64,
    ) -> Result<Admitted, Rejection> {
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

    pub(crate) fn ok(&mut self, e: &Event, publisher: &[Hex32], at: u64) -> Admitted {
        self.admit(e, publisher, at)
            .unwrap_or_else(|r| panic!("kind {} refused: {}", e.kind, r.0))
    }

    pub(crate) fn roster(
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
    pub(crate) fn gate(&mut self) {
        let (alice, bob, erin) = (self.w.alice, self.w.bob, self.w.erin);
        self.roster(&alice, "bootstrap", 1, &[&bob]).unwrap();
        self.roster(&alice, "add", 2, &[&erin]).unwrap();
        self.roster(&alice, "remove", 3, &[&erin]).unwrap();
    }

    pub(crate) fn record(&self, group: &str) -> GroupRecord {
        registry::load_record(&self.st, group)
            .unwrap()
            .expect("group exists")
    }

    pub(crate) fn sees(&self, viewer: &[Hex32], e: &Event) -> bool {
        self.gw.may_see(
            &Viewer::authenticated_as(viewer.iter().copied()),
            e,
            &self.st,
        )
    }
}

pub(crate) fn roster_ev(
    signer: &Keypair,
    group: &str,
    op: &str,
    seq: u64,
    targets: &[&Keypair],
) -> Event {
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

pub(crate) fn mdk_kp(k: &Keypair, kind: u16, reference: &str, at: u64, extra: &[&[&str]]) -> Event {
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

pub(crate) fn lox_kp(k: &Keypair, owner: &str, reference: &str, exp: u64) -> Event {
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

pub(crate) fn reference(n: u8) -> String {
    hex::encode([n; 32])
}

// ---------------------------------------------------------------------------------------------
// The admission table.

pub(crate) struct Row {
    pub(crate) name: &'static str,
    pub(crate) auth: bool,
    pub(crate) cfg: fn(&mut GatewayConfig),
    pub(crate) setup: fn(&mut Env),
    pub(crate) make: fn(&W) -> (Event, Vec<Hex32>),
    /// `Ok` or the start of the refusal message.
    pub(crate) expect: Result<(), &'static str>,
}

pub(crate) fn row(
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
    pub(crate) fn auth(mut self) -> Row {
        self.auth = true;
        self
    }
    pub(crate) fn cfg(mut self, f: fn(&mut GatewayConfig)) -> Row {
        self.cfg = f;
        self
    }
    pub(crate) fn setup(mut self, f: fn(&mut Env)) -> Row {
        self.setup = f;
        self
    }
}

pub(crate) fn run(rows: Vec<Row>) -> usize {
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

pub(crate) fn filters(v: serde_json::Value) -> Vec<Filter> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|f| Filter::from_value(f).unwrap())
        .collect()
}

pub(crate) fn claims_env(cfg: fn(&mut GatewayConfig)) -> Env {
    env_with(true, |c| {
        c.keypackage_claims = true;
        cfg(c);
    })
}
