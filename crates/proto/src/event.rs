//! The signed Nostr event (NIP-01): canonical id, BIP-340 signature, kind classes and tag access.

use crate::{Hex32, Hex64};
use secp256k1::{schnorr, XOnlyPublicKey, SECP256K1};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub type Tag = Vec<String>;

/// An event exactly as its author signed it. Field order matches NIP-01 so that serialising it
/// back gives the same object the client sent (re-serialised, never rewritten).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: Hex32,
    pub pubkey: Hex32,
    pub created_at: u64,
    pub kind: u16,
    pub tags: Vec<Tag>,
    pub content: String,
    pub sig: Hex64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event id does not match its content")]
    BadId,
    #[error("bad signature")]
    BadSignature,
    #[error("pubkey is not a valid x-only secp256k1 key")]
    BadPubkey,
}

/// Feeds what the serialiser writes straight into a sha256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.update(buf);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a relay stores a kind (NIP-01 "kinds" section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindClass {
    Regular,
    /// Only the newest per (pubkey, kind) is kept.
    Replaceable,
    /// Delivered live, never stored.
    Ephemeral,
    /// Only the newest per (pubkey, kind, `d` tag) is kept.
    Addressable,
}

impl KindClass {
    pub fn of(kind: u16) -> Self {
        match kind {
            0 | 3 | 10000..=19999 => KindClass::Replaceable,
            20000..=29999 => KindClass::Ephemeral,
            30000..=39999 => KindClass::Addressable,
            _ => KindClass::Regular,
        }
    }
}

impl Event {
    /// sha256 of `[0,pubkey,created_at,kind,tags,content]`, serialised with NIP-01 escaping
    /// (serde_json escapes exactly the characters NIP-01 names and nothing else).
    pub fn compute_id(
        pubkey: &Hex32,
        created_at: u64,
        kind: u16,
        tags: &[Tag],
        content: &str,
    ) -> Hex32 {
        // Streamed into the hash: no buffer to allocate and grow for every event.
        let mut hasher = HashWriter(Sha256::new());
        serde_json::to_writer(&mut hasher, &(0u8, pubkey, created_at, kind, tags, content))
            .expect("canonical form serialises");
        Hex32(hasher.0.finalize().into())
    }

    /// Checks the id against the content and the signature against the id.
    pub fn verify(&self) -> Result<(), EventError> {
        let id = Self::compute_id(
            &self.pubkey,
            self.created_at,
            self.kind,
            &self.tags,
            &self.content,
        );
        if id != self.id {
            return Err(EventError::BadId);
        }
        let pk = XOnlyPublicKey::from_slice(&self.pubkey.0).map_err(|_| EventError::BadPubkey)?;
        let sig =
            schnorr::Signature::from_slice(&self.sig.0).map_err(|_| EventError::BadSignature)?;
        SECP256K1
            .verify_schnorr(&sig, &self.id.0, &pk)
            .map_err(|_| EventError::BadSignature)
    }

    /// Builds and signs an event (used by tests, tools and the load generator).
    pub fn sign(
        keys: &secp256k1::Keypair,
        created_at: u64,
        kind: u16,
        tags: Vec<Tag>,
        content: impl Into<String>,
    ) -> Event {
        let content = content.into();
        let pubkey = Hex32(keys.x_only_public_key().0.serialize());
        let id = Self::compute_id(&pubkey, created_at, kind, &tags, &content);
        let sig = SECP256K1.sign_schnorr_no_aux_rand(&id.0, keys);
        Event {
            id,
            pubkey,
            created_at,
            kind,
            tags,
            content,
            sig: Hex64(*sig.as_ref()),
        }
    }

    pub fn class(&self) -> KindClass {
        KindClass::of(self.kind)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("event serialises")
    }

    /// Values of every tag named `name` (the tag's second element).
    pub fn tag_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.tags
            .iter()
            .filter(move |t| t.first().map(String::as_str) == Some(name))
            .filter_map(|t| t.get(1).map(String::as_str))
    }

    /// The value of the first tag named `name`.
    pub fn tag_value<'a>(&'a self, name: &str) -> Option<&'a str> {
        self.tag_values(name).next()
    }

    pub fn has_tag(&self, name: &str) -> bool {
        self.tags
            .iter()
            .any(|t| t.first().map(String::as_str) == Some(name))
    }

    /// The `d` tag value of an addressable event ("" when absent, as NIP-01 says).
    pub fn d_tag(&self) -> &str {
        self.tag_value("d").unwrap_or("")
    }

    /// NIP-40 `expiration`, when present and numeric.
    pub fn expiration(&self) -> Option<u64> {
        self.tag_value("expiration").and_then(|v| v.parse().ok())
    }

    /// NIP-70: the event carries `["-"]` and may only be published by its author.
    pub fn is_protected(&self) -> bool {
        self.tags.iter().any(|t| t.len() == 1 && t[0] == "-")
    }

    /// `kind:pubkey:d` for addressable events, `kind:pubkey:` for replaceable ones.
    pub fn address(&self) -> Option<String> {
        match self.class() {
            KindClass::Addressable => {
                Some(format!("{}:{}:{}", self.kind, self.pubkey, self.d_tag()))
            }
            KindClass::Replaceable => Some(format!("{}:{}:", self.kind, self.pubkey)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn keys() -> secp256k1::Keypair {
        secp256k1::Keypair::new(SECP256K1, &mut secp256k1::rand::thread_rng())
    }

    #[test]
    fn signed_event_verifies_and_tampering_is_caught() {
        let k = keys();
        let ev = Event::sign(
            &k,
            1_700_000_000,
            1,
            vec![vec!["t".into(), "x".into()]],
            "hi\n\"q\"",
        );
        assert_eq!(ev.verify(), Ok(()));
        let mut bad = ev.clone();
        bad.content.push('!');
        assert_eq!(bad.verify(), Err(EventError::BadId));
        let mut bad = ev.clone();
        bad.sig.0[0] ^= 1;
        assert_eq!(bad.verify(), Err(EventError::BadSignature));
    }

    #[test]
    fn streamed_id_is_the_sha256_of_the_canonical_serialisation() {
        let pubkey = Hex32([0xab; 32]);
        for content in [
            "",
            "plain",
            "line\n\t\"q\" \\ </script> \u{1} é 🦀 \u{2028}",
        ] {
            let tags = vec![
                vec!["h".to_string(), content.to_string()],
                vec!["x".to_string()],
            ];
            let canonical = format!(
                "[0,\"{pubkey}\",1700000000,445,{},{}]",
                serde_json::to_string(&tags).unwrap(),
                serde_json::to_string(content).unwrap()
            );
            let want = Hex32(Sha256::digest(canonical.as_bytes()).into());
            assert_eq!(
                Event::compute_id(&pubkey, 1_700_000_000, 445, &tags, content),
                want,
                "{content:?}"
            );
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let k = keys();
        let ev = Event::sign(&k, 5, 30443, vec![vec!["d".into(), "x".into()]], "é\u{1}");
        let back: Event = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(back, ev);
        assert_eq!(ev.address().unwrap(), format!("30443:{}:x", ev.pubkey));
    }

    #[test]
    fn kind_classes() {
        assert_eq!(KindClass::of(0), KindClass::Replaceable);
        assert_eq!(KindClass::of(3), KindClass::Replaceable);
        assert_eq!(KindClass::of(10050), KindClass::Replaceable);
        assert_eq!(KindClass::of(22242), KindClass::Ephemeral);
        assert_eq!(KindClass::of(30443), KindClass::Addressable);
        assert_eq!(KindClass::of(445), KindClass::Regular);
    }

    #[test]
    fn mdk_vectors_verify() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/vectors");
        let Ok(entries) = std::fs::read_dir(dir) else {
            panic!("vectors directory missing at {dir}");
        };
        let mut n = 0;
        for f in entries {
            let path = f.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("jsonl") {
                continue; // the README
            }
            let text = std::fs::read_to_string(path).unwrap();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if v["event"]["kind"] == 444 {
                    continue; // unsigned rumor
                }
                let ev: Event = serde_json::from_value(v["event"].clone()).unwrap();
                assert_eq!(ev.verify(), Ok(()), "{}", v["label"]);
                n += 1;
            }
        }
        assert!(n >= 10);
    }
}
