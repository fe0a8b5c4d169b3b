//! Microbenchmarks of the wire model: decoding a client message, verifying an event (id +
//! BIP-340 signature), matching filters, and encoding what the relay sends.
//!
//! `cargo bench -p mls-proto` (divan; `-- --help` for options, e.g. `-- verify`).

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use mls_proto::{relay, ClientMessage, Event, Filter};
use serde_json::json;
use std::time::Duration;

fn main() {
    divan::Divan::default()
        .max_time(Duration::from_millis(500))
        .config_with_args()
        .main();
}

fn keys() -> secp256k1::Keypair {
    secp256k1::Keypair::new(secp256k1::SECP256K1, &mut secp256k1::rand::thread_rng())
}

fn tags(t: &[&[&str]]) -> Vec<Vec<String>> {
    t.iter()
        .map(|tag| tag.iter().map(|s| s.to_string()).collect())
        .collect()
}

const GROUP: &str = "737da1f77cf73c5cc9030ea66f9da87aa0d087b44715655ef43d56751a60195e";

/// A kind-445 group message as MDK sends it, with `content_len` bytes of base64.
fn group_message(content_len: usize) -> Event {
    let content: String = "AAEAASAURJVF/FQ/rTE4PIurJe04BwwIYHiDw4sXWd0hU1Z9dSCLc9hWz+XYfv8G"
        .chars()
        .cycle()
        .take(content_len)
        .collect();
    Event::sign(
        &keys(),
        1_700_000_000,
        445,
        tags(&[&["h", GROUP], &["encoding", "base64"]]),
        content,
    )
}

/// `["EVENT", <kind 445>]` decoded into an [`Event`]: a typical MLS message (~512 bytes of
/// content, as in the MDK vectors) and one with 1 KiB of content.
#[divan::bench(args = [512, 1024])]
fn decode_event_445(bencher: Bencher, content: usize) {
    let text = format!("[\"EVENT\",{}]", group_message(content).to_json());
    bencher
        .counter(BytesCount::of_str(&text))
        .bench(|| ClientMessage::parse(black_box(&text)).unwrap());
}

#[divan::bench]
fn decode_req(bencher: Bencher) {
    let text = format!(r##"["REQ","sub-1",{{"kinds":[445],"#h":["{GROUP}"],"limit":10}}]"##);
    bencher.bench(|| ClientMessage::parse(black_box(&text)).unwrap());
}

/// Id (sha256 of the canonical form) and BIP-340 signature: the full check every EVENT gets.
#[divan::bench(args = [512, 1024])]
fn verify_id_and_sig(bencher: Bencher, content: usize) {
    let ev = group_message(content);
    bencher.bench(|| black_box(&ev).verify().unwrap());
}

/// The id alone (canonical serialisation + sha256).
#[divan::bench(args = [512, 1024])]
fn compute_id(bencher: Bencher, content: usize) {
    let ev = group_message(content);
    bencher.bench(|| {
        Event::compute_id(
            black_box(&ev.pubkey),
            ev.created_at,
            ev.kind,
            &ev.tags,
            &ev.content,
        )
    });
}

/// The id as it was computed before: the canonical form serialised into a `Vec`, then hashed
/// (kept here to compare with `compute_id`, which streams into the hasher).
#[divan::bench(args = [512, 1024])]
fn compute_id_buffered(bencher: Bencher, content: usize) {
    use sha2::{Digest, Sha256};
    let ev = group_message(content);
    bencher.bench(|| {
        let canonical = serde_json::to_vec(&(
            0u8,
            black_box(&ev.pubkey),
            ev.created_at,
            ev.kind,
            &ev.tags,
            &ev.content,
        ))
        .unwrap();
        let id: [u8; 32] = Sha256::digest(&canonical).into();
        id
    });
}

/// Parsing the x-only public key (a square root on the curve), part of every verification.
#[divan::bench]
fn xonly_key_parse(bencher: Bencher) {
    let ev = group_message(512);
    bencher.bench(|| secp256k1::XOnlyPublicKey::from_slice(black_box(&ev.pubkey.0)).unwrap());
}

/// The Schnorr verification alone (libsecp256k1).
#[divan::bench]
fn schnorr_only(bencher: Bencher) {
    let ev = group_message(512);
    let pk = secp256k1::XOnlyPublicKey::from_slice(&ev.pubkey.0).unwrap();
    let sig = secp256k1::schnorr::Signature::from_slice(&ev.sig.0).unwrap();
    bencher.bench(|| {
        secp256k1::SECP256K1
            .verify_schnorr(black_box(&sig), &ev.id.0, &pk)
            .unwrap()
    });
}

/// A stored event's JSON read back into an [`Event`]: what the store's read path does for
/// every event it returns (the id, pubkey and signature hex decoded each time).
#[divan::bench(args = [256, 512])]
fn decode_stored_event(bencher: Bencher, content: usize) {
    let json = group_message(content).to_json();
    bencher
        .counter(BytesCount::of_str(&json))
        .bench(|| serde_json::from_str::<Event>(black_box(&json)).unwrap());
}

/// 64 hex digits to 32 bytes: `Hex32::from_hex` (the crate's decoder, one table lookup per
/// digit) beside what it replaced (the `hex` crate after an uppercase scan).
mod hex_decode {
    use super::*;
    use mls_proto::Hex32;

    #[divan::bench]
    fn from_hex(bencher: Bencher) {
        bencher.bench(|| Hex32::from_hex(black_box(GROUP)).unwrap());
    }

    #[divan::bench]
    fn hex_crate_as_before(bencher: Bencher) {
        bencher.bench(|| {
            let s = black_box(GROUP);
            if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                return None;
            }
            let mut out = [0u8; 32];
            hex::decode_to_slice(s, &mut out).ok()?;
            Some(Hex32(out))
        });
    }
}

/// 32 bytes to 64 hex digits (state keys, `Hex32::to_hex`): the crate's table encoder beside
/// the `hex` crate's `encode` it replaced.
mod hex_encode {
    use super::*;

    #[divan::bench]
    fn to_lower_hex(bencher: Bencher) {
        let bytes = [0xa5u8; 32];
        bencher.bench(|| mls_proto::to_lower_hex(black_box(&bytes)));
    }

    #[divan::bench]
    fn hex_crate_as_before(bencher: Bencher) {
        let bytes = [0xa5u8; 32];
        bencher.bench(|| hex::encode(black_box(&bytes)));
    }
}

/// What fan-out pays per event (serialise once) and per subscriber (wrap in `["EVENT",sub,…]`).
#[divan::bench]
fn encode_event_json(bencher: Bencher) {
    let ev = group_message(512);
    bencher.bench(|| black_box(&ev).to_json());
}

#[divan::bench]
fn encode_event_frame(bencher: Bencher) {
    let json = group_message(512).to_json();
    bencher.bench(|| relay::event(black_box("sub-1"), &json));
}

/// `relay::event` as it was before issue 13 (the sub id through `serde_json::to_string`, then
/// copied), kept beside the current one for comparison in the same run.
#[divan::bench]
fn encode_event_frame_previous(bencher: Bencher) {
    fn event(sub_id: &str, event_json: &str) -> String {
        let sub = serde_json::to_string(sub_id).expect("string serialises");
        let mut s = String::with_capacity(event_json.len() + sub.len() + 12);
        s.push_str("[\"EVENT\",");
        s.push_str(&sub);
        s.push(',');
        s.push_str(event_json);
        s.push(']');
        s
    }
    let json = group_message(512).to_json();
    bencher.bench(|| event(black_box("sub-1"), &json));
}

mod filter_match {
    use super::*;

    fn filter(v: serde_json::Value) -> Filter {
        Filter::from_value(&v).unwrap()
    }

    /// The subscription every group member holds, against a message of its group.
    #[divan::bench]
    fn kind_and_h_hit(bencher: Bencher) {
        let ev = group_message(512);
        let f = filter(json!({"kinds":[445],"#h":[GROUP]}));
        bencher.bench(|| black_box(&f).matches(&ev));
    }

    /// The same subscription against another group's message (tag compared, no match).
    #[divan::bench]
    fn kind_and_h_miss(bencher: Bencher) {
        let ev = group_message(512);
        let f = filter(json!({"kinds":[445],"#h":["00".repeat(32)]}));
        bencher.bench(|| black_box(&f).matches(&ev));
    }

    /// A follow-list style filter: 100 authors, none of them the event's.
    #[divan::bench]
    fn authors_100_miss(bencher: Bencher) {
        let ev = group_message(512);
        let authors: Vec<String> = (0..100).map(|i| format!("{i:064x}")).collect();
        let f = filter(json!({"authors": authors, "kinds":[1, 445]}));
        bencher.bench(|| black_box(&f).matches(&ev));
    }

    /// One event against N group-member filters of N different groups (what a relay without
    /// an index would do for every event).
    #[divan::bench(args = [1_000, 10_000])]
    fn scan_n_filters(bencher: Bencher, n: usize) {
        let ev = group_message(512);
        let filters: Vec<Filter> = (0..n)
            .map(|i| filter(json!({"kinds":[445],"#h":[format!("{i:064x}")]})))
            .collect();
        bencher.bench(|| filters.iter().filter(|f| f.matches(black_box(&ev))).count());
    }
}
