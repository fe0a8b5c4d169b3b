//! Addresses of replaceable and addressable events (`kind:pubkey:d`), and the bytes every
//! backend keys them by, so that "one version per address" and address tombstones mean the
//! same thing everywhere.

use mls_proto::{Event, Hex32, KindClass};
use sha2::{Digest, Sha256};

/// `d` values up to this many bytes are kept in the address key as they are; longer ones by
/// their sha256 (keys stay short enough for every backend's index).
pub const D_INLINE_MAX: usize = 300;

/// The address of a replaceable or addressable event, or one named by an `a` tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub kind: u16,
    pub owner: Hex32,
    /// Empty for replaceable kinds (their address ignores `d`).
    pub d: String,
    /// [`address_key`] of the above.
    pub key: Vec<u8>,
}

impl Address {
    /// `None` for kinds that have no address.
    pub fn new(kind: u16, owner: Hex32, d: &str) -> Option<Address> {
        let d = match KindClass::of(kind) {
            KindClass::Replaceable => "",
            KindClass::Addressable => d,
            _ => return None,
        };
        Some(Address {
            kind,
            owner,
            d: d.to_string(),
            key: address_key(kind, &owner, d),
        })
    }

    /// The address `ev` is a version of, if its kind has one.
    pub fn of(ev: &Event) -> Option<Address> {
        // Most events have no address: no walk of their tags for a `d` then.
        match KindClass::of(ev.kind) {
            KindClass::Addressable => Address::new(ev.kind, ev.pubkey, ev.d_tag()),
            KindClass::Replaceable => Address::new(ev.kind, ev.pubkey, ""),
            _ => None,
        }
    }

    /// Parses an `a` tag value `kind:pubkey:d`; `None` for anything that is not a
    /// replaceable or addressable address.
    pub fn parse_a_tag(value: &str) -> Option<Address> {
        let mut parts = value.splitn(3, ':');
        let kind: u16 = parts.next()?.parse().ok()?;
        let owner = Hex32::from_hex(parts.next()?)?;
        Address::new(kind, owner, parts.next().unwrap_or(""))
    }
}

/// `kind ++ pubkey ++ (0x00 ++ d | 0x01 ++ sha256(d))`. Replaceable kinds always use an
/// empty `d` (their address is kind:pubkey).
pub fn address_key(kind: u16, pubkey: &Hex32, d: &str) -> Vec<u8> {
    let d = if KindClass::of(kind) == KindClass::Addressable {
        d.as_bytes()
    } else {
        b""
    };
    let mut k = Vec::with_capacity(35 + d.len().min(D_INLINE_MAX));
    k.extend_from_slice(&kind.to_be_bytes());
    k.extend_from_slice(&pubkey.0);
    if d.len() <= D_INLINE_MAX {
        k.push(0);
        k.extend_from_slice(d);
    } else {
        k.push(1);
        k.extend_from_slice(&Sha256::digest(d));
    }
    k
}

/// Kind, pubkey and (when stored inline, not hashed) `d` back from an [`address_key`].
pub fn split_address_key(key: &[u8]) -> Option<(u16, Hex32, Option<&[u8]>)> {
    let kind = u16::from_be_bytes(key.get(..2)?.try_into().ok()?);
    let pubkey = Hex32(key.get(2..34)?.try_into().ok()?);
    match key.get(34)? {
        0 => Some((kind, pubkey, Some(&key[35..]))),
        1 => Some((kind, pubkey, None)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tags_parse_only_addresses() {
        let pk = Hex32([3; 32]);
        let a = Address::parse_a_tag(&format!("30000:{pk}:x:y")).unwrap();
        assert_eq!((a.kind, a.owner, a.d.as_str()), (30000, pk, "x:y"));
        assert_eq!(a.key, address_key(30000, &pk, "x:y"));
        assert_eq!(
            split_address_key(&a.key),
            Some((30000, pk, Some(&b"x:y"[..])))
        );
        let r = Address::parse_a_tag(&format!("10002:{pk}:x")).unwrap();
        assert_eq!((r.d.as_str(), r.key), ("", address_key(10002, &pk, "")));
        assert_eq!(
            Address::parse_a_tag(&format!("10002:{pk}")).unwrap().key,
            address_key(10002, &pk, "")
        );
        assert!(Address::parse_a_tag(&format!("1:{pk}:")).is_none());
        assert!(Address::parse_a_tag("30000:zz:x").is_none());
    }

    #[test]
    fn long_d_values_are_hashed_in_the_key() {
        let pk = Hex32([3; 32]);
        let long = "d".repeat(D_INLINE_MAX + 1);
        let key = address_key(30000, &pk, &long);
        assert_eq!(key.len(), 2 + 32 + 1 + 32);
        assert_eq!(split_address_key(&key), Some((30000, pk, None)));
        assert_ne!(key, address_key(30000, &pk, &"d".repeat(D_INLINE_MAX + 2)));
    }
}
