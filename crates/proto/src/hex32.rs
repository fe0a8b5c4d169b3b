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
                if s.len() != $len * 2 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return None;
                }
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
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
                hex::encode_to_slice(self.0, &mut buf).expect("buffer sized for hex");
                s.serialize_str(std::str::from_utf8(&buf).expect("hex is ascii"))
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

hex_bytes!(Hex32, 32);
hex_bytes!(Hex64, 64);
