//! Fixed-size byte strings that travel as lowercase hex on the wire (ids, pubkeys, signatures).

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

macro_rules! hex_bytes {
    ($name:ident, $len:expr) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Parses exactly `2 * LEN` lowercase hex digits (NIP-01 requires lowercase).
            pub fn from_hex(s: &str) -> Option<Self> {
                let digits: &[u8; $len * 2] = s.as_bytes().try_into().ok()?;
                decode_lower_hex(digits).map(Self)
            }
            pub fn to_hex(&self) -> String {
                to_lower_hex(&self.0)
            }
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut buf = [0u8; $len * 2];
                s.serialize_str(encode_lower_hex(&self.0, &mut buf))
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s: std::borrow::Cow<'de, str> = Deserialize::deserialize(d)?;
                $name::from_hex(&s).ok_or_else(|| {
                    de::Error::custom(format!("expected {} lowercase hex characters", $len * 2))
                })
            }
        }
    };
}

/// Each byte's value as a lowercase hex digit, or `INVALID`: one table lookup per digit. Every
/// stored event's id, pubkey and signature are decoded on each read that returns it, where
/// the `hex` crate's per-digit matching and uppercase check showed as ~10% of a REQ's CPU.
const INVALID: u8 = 0xff;
const LOWER_HEX: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Decodes `2 * N` lowercase hex digits; `None` on any other byte (uppercase included).
fn decode_lower_hex<const N: usize, const D: usize>(digits: &[u8; D]) -> Option<[u8; N]> {
    debug_assert_eq!(D, 2 * N);
    let mut out = [0u8; N];
    // Or-ing the digits' values and testing once keeps the loop free of branches.
    let mut bad = 0u8;
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let (hi, lo) = (LOWER_HEX[pair[0] as usize], LOWER_HEX[pair[1] as usize]);
        bad |= hi | lo;
        *byte = (hi << 4) | (lo & 0x0f);
    }
    (bad & 0xf0 == 0).then_some(out)
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (exactly twice as long) and returns it as text.
/// Two table lookups per byte: the `hex` crate's `encode` builds its `String` one `char` at a
/// time, which showed in the store writer's profile (state keys name groups and pubkeys in hex).
fn encode_lower_hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    assert_eq!(out.len(), bytes.len() * 2, "hex buffer sized for the bytes");
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX_DIGITS[usize::from(b >> 4)];
        pair[1] = HEX_DIGITS[usize::from(b & 0x0f)];
    }
    std::str::from_utf8(out).expect("hex digits are ASCII")
}

/// `bytes` as lowercase hex.
pub fn to_lower_hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    encode_lower_hex(bytes, &mut out);
    String::from_utf8(out).expect("hex digits are ASCII")
}

hex_bytes!(Hex32, 32);
hex_bytes!(Hex64, 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_hex_crate_does() {
        let all: Vec<u8> = (0u8..=255).collect();
        assert_eq!(to_lower_hex(&all), hex::encode(&all));
        assert_eq!(to_lower_hex(&[]), "");
        let id = Hex32([0xa5; 32]);
        assert_eq!(id.to_hex(), "a5".repeat(32));
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            format!("\"{}\"", "a5".repeat(32))
        );
    }

    /// The table decoder against the `hex` crate, for every byte value in every position of
    /// a digit pair: same bytes out, and every non-lowercase-hex byte refused.
    #[test]
    fn decodes_exactly_the_lowercase_hex_digits() {
        let base = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        for pos in [0usize, 1, 31, 62, 63] {
            for b in 0u8..=255 {
                let mut digits = base.as_bytes().to_vec();
                digits[pos] = b;
                let Ok(s) = std::str::from_utf8(&digits) else {
                    continue;
                };
                let mut want = [0u8; 32];
                let lower = !b.is_ascii_uppercase();
                let expected =
                    (lower && hex::decode_to_slice(s, &mut want).is_ok()).then_some(want);
                assert_eq!(
                    Hex32::from_hex(s).map(|h| h.0),
                    expected,
                    "byte {b:#x} at {pos}"
                );
            }
        }
        assert_eq!(Hex32::from_hex(&base[..62]), None, "too short");
        assert_eq!(Hex32::from_hex(&format!("{base}00")), None, "too long");
        let sig = base.repeat(2);
        assert_eq!(Hex64::from_hex(&sig).unwrap().to_hex(), sig);
        assert_eq!(
            Hex64::from_hex(&sig.to_uppercase()),
            None,
            "uppercase refused"
        );
    }
}
