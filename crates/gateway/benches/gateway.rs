//! Microbenchmarks of the gateway's two decisions: `admit` (run by the store writer for every
//! event, inside the write transaction) and `may_see` (run for every stored result and every
//! live delivery), over the in-memory state [`MemState`].
//!
//! `cargo bench -p mls-gateway-rules` (divan; `-- --help` for options).

use divan::{black_box, Bencher};
use mls_gateway_rules::{Gateway, GatewayConfig, MemState, RateLimits, Viewer};
use mls_proto::{Event, Filter, Hex32};
use mls_store::{Admission, Publisher};
use secp256k1::Keypair;
use std::time::Duration;

fn main() {
    divan::Divan::default()
        .max_time(Duration::from_millis(500))
        .config_with_args()
        .main();
}

const NOW: u64 = 1_700_000_000;

fn keys() -> Keypair {
    Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

fn pk(k: &Keypair) -> Hex32 {
    Hex32(k.x_only_public_key().0.serialize())
}

fn tags(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|tag| tag.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// Auth on, rate limits off (so repeated admits measure the rule, not the throttle).
fn gateway() -> Gateway {
    let config = GatewayConfig {
        rate_limits: RateLimits {
            max_events_per_minute: 0,
            max_keypackages_per_hour: 0,
            max_group_messages_per_minute: 0,
        },
        ..GatewayConfig::default()
    };
    Gateway::new(config, true).unwrap()
}

fn group_message(group: &str) -> Event {
    Event::sign(
        &keys(),
        NOW,
        445,
        tags(&[&["h", group], &["encoding", "base64"]]),
        "AAEAASAURJVF/FQ/rTE4PIurJe04BwwIYHiDw4sXWd0hU1Z9dSCLc9hWz+XYfv8G".repeat(8),
    )
}

/// A gated group of `members` members (bootstrapped by a kind-450 roster), with its state.
struct Fixture {
    gw: Gateway,
    state: MemState,
    group: String,
    member: Hex32,
    stranger: Hex32,
}

fn fixture(members: usize) -> Fixture {
    let gw = gateway();
    let mut state = MemState::default();
    let admin = keys();
    let group = "ab".repeat(32);
    let member_keys: Vec<Hex32> = (0..members).map(|_| pk(&keys())).collect();
    let mut t = tags(&[&["h", &group], &["op", "bootstrap"], &["seq", "1"]]);
    t.extend(member_keys.iter().map(|m| vec!["p".into(), m.to_hex()]));
    let roster = Event::sign(&admin, NOW, 450, t, "");
    let publisher = Publisher {
        authed: vec![pk(&admin)],
        operator: false,
    };
    gw.admit(&roster, &publisher, NOW, &mut state)
        .expect("roster accepted");
    Fixture {
        gw,
        state,
        group,
        member: member_keys[members / 2],
        stranger: pk(&keys()),
    }
}

mod admit {
    use super::*;

    /// A 445 to a group the relay knows nothing about (open): rate counter read + write.
    #[divan::bench]
    fn group_message_open_group(bencher: Bencher) {
        let gw = gateway();
        let mut state = MemState::default();
        let ev = group_message(&"cd".repeat(32));
        let publisher = Publisher {
            authed: vec![pk(&keys())],
            operator: false,
        };
        bencher.bench_local(|| {
            gw.admit(black_box(&ev), &publisher, NOW, &mut state)
                .unwrap()
        });
    }

    /// A 445 from a member of a gated group of N members: membership lookup + counter.
    #[divan::bench(args = [10, 1000])]
    fn group_message_gated_member(bencher: Bencher, members: usize) {
        let mut f = fixture(members);
        let ev = group_message(&f.group);
        let publisher = Publisher {
            authed: vec![f.member],
            operator: false,
        };
        bencher.bench_local(|| {
            f.gw.admit(black_box(&ev), &publisher, NOW, &mut f.state)
                .unwrap()
        });
    }

    /// A 445 from a stranger to a gated group: refused.
    #[divan::bench]
    fn group_message_gated_stranger(bencher: Bencher) {
        let mut f = fixture(100);
        let ev = group_message(&f.group);
        let publisher = Publisher {
            authed: vec![f.stranger],
            operator: false,
        };
        bencher.bench_local(|| {
            f.gw.admit(black_box(&ev), &publisher, NOW, &mut f.state)
                .unwrap_err()
        });
    }

    /// A kind-1 note: no gateway rule, the default path.
    #[divan::bench]
    fn plain_note(bencher: Bencher) {
        let gw = gateway();
        let mut state = MemState::default();
        let ev = Event::sign(&keys(), NOW, 1, vec![], "hello");
        let publisher = Publisher::default();
        bencher.bench_local(|| {
            gw.admit(black_box(&ev), &publisher, NOW, &mut state)
                .unwrap()
        });
    }
}

mod may_see {
    use super::*;

    #[divan::bench(args = [10, 1000])]
    fn group_message_gated_member(bencher: Bencher, members: usize) {
        let f = fixture(members);
        let ev = group_message(&f.group);
        let viewer = Viewer::authenticated_as([f.member]);
        bencher.bench(|| f.gw.may_see(black_box(&viewer), &ev, &f.state));
    }

    #[divan::bench]
    fn group_message_gated_stranger(bencher: Bencher) {
        let f = fixture(100);
        let ev = group_message(&f.group);
        let viewer = Viewer::authenticated_as([f.stranger]);
        bencher.bench(|| f.gw.may_see(black_box(&viewer), &ev, &f.state));
    }

    #[divan::bench]
    fn group_message_open_group(bencher: Bencher) {
        let f = fixture(10);
        let ev = group_message(&"cd".repeat(32));
        let viewer = Viewer::authenticated_as([f.stranger]);
        bencher.bench(|| f.gw.may_see(black_box(&viewer), &ev, &f.state));
    }

    /// A gift wrap (1059) seen by its recipient: `p` tags compared, no state read.
    #[divan::bench]
    fn gift_wrap_recipient(bencher: Bencher) {
        let f = fixture(10);
        let ev = Event::sign(
            &keys(),
            NOW,
            1059,
            tags(&[&["p", &f.member.to_hex()]]),
            "x".repeat(512),
        );
        let viewer = Viewer::authenticated_as([f.member]);
        bencher.bench(|| f.gw.may_see(black_box(&viewer), &ev, &f.state));
    }

    /// The REQ pre-check for a member's group subscription.
    #[divan::bench]
    fn check_read_group_filter(bencher: Bencher) {
        let f = fixture(100);
        let filter =
            Filter::from_value(&serde_json::json!({"kinds":[445],"#h":[f.group]})).unwrap();
        let filters = [filter];
        let viewer = Viewer::authenticated_as([f.member]);
        bencher.bench(|| f.gw.check_read(black_box(&viewer), &filters, &f.state));
    }
}
