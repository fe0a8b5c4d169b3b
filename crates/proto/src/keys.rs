//! Public keys as people write them: hex or NIP-19 `npub`.

use crate::Hex32;

/// Parses a public key given as 64 hex characters or as a NIP-19 `npub1…` string.
pub fn parse_pubkey(s: &str) -> Option<Hex32> {
    let s = s.trim();
    if s.starts_with("npub1") {
        let (hrp, data) = bech32::decode(s).ok()?;
        if hrp.as_str() != "npub" || data.len() != 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(&data);
        return Some(Hex32(out));
    }
    Hex32::from_hex(&s.to_ascii_lowercase())
}

/// A pubkey shortened for logs: enough to correlate, not enough to identify.
pub fn short_pubkey(pk: &Hex32) -> String {
    let h = pk.to_hex();
    format!("{}…{}", &h[..8], &h[60..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npub_and_hex_agree() {
        // NIP-19 example key.
        let hex = "7e7e9c42a91bfef19fa929e5fda1b72e0ebc1a4c1141673e2794234d86addf4e";
        let npub = "npub10elfcs4fr0l0r8af98jlmgdh9c8tcxjvz9qkw038js35mp4dma8qzvjptg";
        assert_eq!(parse_pubkey(npub), parse_pubkey(hex));
        assert!(parse_pubkey(hex).is_some());
        assert!(parse_pubkey("npub1invalid").is_none());
        assert!(parse_pubkey("abc").is_none());
    }
}
