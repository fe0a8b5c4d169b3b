//! Visibility as data: who may read a stored event, decided once when it is written and
//! stored with it, indexed, so that a backend can answer "matches the filter *and* is for
//! this reader" itself (in SQL, in an index walk) and apply `limit` there, instead of
//! walking every match and asking a closure.
//!
//! An event's [`Audience`] is a set of [`ReadKey`]s; a reader's [`ReadScope`] is the set of
//! keys it holds. An event is in scope when the two share a key. The rules compute both
//! ([`crate::Admission::audience`] and the relay's reader scope), from the one visibility
//! rule; the scope is a *pre-filter*: it may let through an event the rule then hides (the
//! rule stays the final check on every event a read returns), but it never hides an event
//! the rule shows. That one-way promise is what keeps the answers exact while the backend
//! skips what the reader may never see.
//!
//! Events stored before audiences existed carry [`ReadKey::Unknown`], which every scope
//! holds: they are decided by the final check alone, as before.

use mls_proto::Hex32;
use sha2::{Digest, Sha256};

/// One reason a reader may see an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadKey {
    /// Everyone.
    Anyone,
    /// Every reader of the gateway's restricted kinds (the rules say who: e.g. anyone
    /// authenticated when auth is on).
    Readers,
    /// The relay's configured administrators.
    Admins,
    /// A reader authenticated as this pubkey.
    Pubkey(Hex32),
    /// A reader of this group (a member or admin of it).
    Group(String),
    /// Stored before audiences were recorded: held by every reader, decided by the final
    /// check alone.
    Unknown,
}

/// Group ids up to this many bytes are kept in a key as they are, after a length byte;
/// longer ones by their sha256 after `0xff` (never a length). The gateway bounds group ids
/// well below this.
const GROUP_INLINE_MAX: usize = 254;

/// First byte of every [`ReadKey::Group`]'s bytes (and of no other key's): what a backend
/// matches for a scope that holds every group.
pub const GROUP_KEY_PREFIX: u8 = 4;

/// Are these a [`ReadKey::Group`]'s bytes (as [`ReadKey::to_bytes`] makes them)?
pub fn is_group_key(bytes: &[u8]) -> bool {
    bytes.first() == Some(&GROUP_KEY_PREFIX)
}

impl ReadKey {
    /// The key's bytes as backends index them: a type byte, then the pubkey or the group id
    /// (or `0xff ++ sha256(id)` for a long one). Distinct keys never share bytes, and a
    /// scope's keys are looked up by equality.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            ReadKey::Anyone => vec![0],
            ReadKey::Readers => vec![1],
            ReadKey::Admins => vec![2],
            ReadKey::Pubkey(pk) => {
                let mut b = Vec::with_capacity(33);
                b.push(3);
                b.extend_from_slice(&pk.0);
                b
            }
            ReadKey::Group(g) => {
                let mut b = Vec::with_capacity(2 + g.len().min(GROUP_INLINE_MAX));
                b.push(GROUP_KEY_PREFIX);
                if g.len() <= GROUP_INLINE_MAX {
                    b.push(g.len() as u8);
                    b.extend_from_slice(g.as_bytes());
                } else {
                    b.push(0xff);
                    b.extend_from_slice(&Sha256::digest(g.as_bytes()));
                }
                b
            }
            ReadKey::Unknown => vec![0xff],
        }
    }
}

/// Who may read one event: any reader holding one of these keys. Empty: nobody.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Audience(Vec<ReadKey>);

impl Audience {
    pub fn new(mut keys: Vec<ReadKey>) -> Audience {
        keys.sort_unstable();
        keys.dedup();
        Audience(keys)
    }

    pub fn anyone() -> Audience {
        Audience(vec![ReadKey::Anyone])
    }

    pub fn nobody() -> Audience {
        Audience(Vec::new())
    }

    pub fn keys(&self) -> &[ReadKey] {
        &self.0
    }

    /// The keys as backends store them, without repeats (two long group ids never hash
    /// alike in practice, but a set is what is indexed).
    pub fn key_bytes(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.0.iter().map(ReadKey::to_bytes).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// What one read may return: events whose audience shares a key with these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadScope {
    /// `None`: every event (tools, tests, the operator's export, lookups that must find
    /// hidden events too).
    keys: Option<Vec<ReadKey>>,
    /// Every [`ReadKey::Group`] too, whatever the group (a reader in more groups than a
    /// scope lists one by one).
    any_group: bool,
}

impl ReadScope {
    /// No restriction: the final check alone decides.
    pub fn everything() -> ReadScope {
        ReadScope {
            keys: None,
            any_group: false,
        }
    }

    /// A reader holding `keys` (plus [`ReadKey::Anyone`] and [`ReadKey::Unknown`], which
    /// every reader holds), and every group's key when `any_group`.
    pub fn holding(mut keys: Vec<ReadKey>, any_group: bool) -> ReadScope {
        keys.push(ReadKey::Anyone);
        keys.push(ReadKey::Unknown);
        if any_group {
            keys.retain(|k| !matches!(k, ReadKey::Group(_)));
        }
        keys.sort_unstable();
        keys.dedup();
        ReadScope {
            keys: Some(keys),
            any_group,
        }
    }

    /// The keys held, `None` for [`ReadScope::everything`].
    pub fn keys(&self) -> Option<&[ReadKey]> {
        self.keys.as_deref()
    }

    pub fn any_group(&self) -> bool {
        self.any_group
    }

    /// Does an event with `audience` fall in this scope?
    pub fn admits(&self, audience: &[ReadKey]) -> bool {
        let Some(keys) = &self.keys else {
            return true;
        };
        audience
            .iter()
            .any(|k| (self.any_group && matches!(k, ReadKey::Group(_))) || keys.contains(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_encode_apart() {
        let keys = [
            ReadKey::Anyone,
            ReadKey::Readers,
            ReadKey::Admins,
            ReadKey::Pubkey(Hex32([1; 32])),
            ReadKey::Pubkey(Hex32([2; 32])),
            ReadKey::Group("ab".into()),
            ReadKey::Group("abc".into()),
            ReadKey::Group("x".repeat(254)),
            ReadKey::Group("x".repeat(255)),
            ReadKey::Group("x".repeat(301)),
            ReadKey::Unknown,
        ];
        let bytes: Vec<Vec<u8>> = keys.iter().map(ReadKey::to_bytes).collect();
        for (i, a) in bytes.iter().enumerate() {
            for b in &bytes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // The length byte keeps one key from being a prefix of another (backends walk an
        // index by key prefix).
        for (k, b) in keys.iter().zip(&bytes) {
            assert_eq!(is_group_key(b), matches!(k, ReadKey::Group(_)), "{k:?}");
        }
        for (i, a) in bytes.iter().enumerate() {
            for (j, b) in bytes.iter().enumerate() {
                assert!(
                    i == j || !b.starts_with(a),
                    "{:?} prefixes {:?}",
                    keys[i],
                    keys[j]
                );
            }
        }
    }

    #[test]
    fn a_scope_admits_an_audience_sharing_a_key() {
        let me = Hex32([7; 32]);
        let scope =
            ReadScope::holding(vec![ReadKey::Pubkey(me), ReadKey::Group("g".into())], false);
        let for_me = Audience::new(vec![ReadKey::Pubkey(me), ReadKey::Pubkey(Hex32([8; 32]))]);
        let for_other = Audience::new(vec![ReadKey::Pubkey(Hex32([8; 32]))]);
        let group = Audience::new(vec![ReadKey::Group("g".into())]);
        let other_group = Audience::new(vec![ReadKey::Group("h".into())]);
        for (audience, expected) in [
            (&for_me, true),
            (&for_other, false),
            (&group, true),
            (&other_group, false),
            (&Audience::anyone(), true),
            (&Audience::new(vec![ReadKey::Unknown]), true),
            (&Audience::new(vec![ReadKey::Readers]), false),
            (&Audience::nobody(), false),
        ] {
            assert_eq!(scope.admits(audience.keys()), expected, "{audience:?}");
            assert!(ReadScope::everything().admits(audience.keys()));
        }
        let every_group = ReadScope::holding(Vec::new(), true);
        assert!(every_group.admits(other_group.keys()));
        assert!(!every_group.admits(for_other.keys()));
    }
}
