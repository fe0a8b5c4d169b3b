//! The state overlay: what a rule (or a state change) writes is buffered in memory over the
//! writer's transaction and applied only if it succeeds, while its own reads already see it.
//! A refused event thus leaves no trace, and the events before it in the same batch keep
//! theirs (the transaction underneath already holds those).
//!
//! Written once for every backend: a backend gives a [`StateRead`] view of its write
//! transaction (which sees the batch's earlier writes) and applies the [`StateChanges`]
//! that come out; the merge of buffered and stored keys lives here.

use crate::{StateRead, StateWrite, StoreError, StoreResult, MAX_STATE_KEY_LEN};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Buffered changes, in key order: `Some(value)` puts, `None` deletes.
pub type StateChanges = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A buffering [`StateWrite`] over `base`.
pub struct Overlay<'a> {
    base: &'a dyn StateRead,
    buffer: StateChanges,
}

impl<'a> Overlay<'a> {
    pub fn new(base: &'a dyn StateRead) -> Self {
        Overlay {
            base,
            buffer: StateChanges::new(),
        }
    }

    /// What was written, for the backend to apply once the change is accepted.
    pub fn into_changes(self) -> StateChanges {
        self.buffer
    }
}

/// Every backend holds keys of 1 to [`MAX_STATE_KEY_LEN`] bytes; a longer one is a bug in the
/// rules, refused here rather than at commit (where it would fail the whole batch).
pub fn check_state_key(key: &[u8]) -> StoreResult<()> {
    match state_key_problem(key) {
        Some(problem) => Err(StoreError::Backend(problem)),
        None => Ok(()),
    }
}

/// What is wrong with `key` as a state key, if anything.
pub fn state_key_problem(key: &[u8]) -> Option<String> {
    (key.is_empty() || key.len() > MAX_STATE_KEY_LEN).then(|| {
        format!(
            "state key must be 1 to {MAX_STATE_KEY_LEN} bytes, got {}",
            key.len()
        )
    })
}

impl StateRead for Overlay<'_> {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        match self.buffer.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    /// The stored keys and the buffered ones merged in key order; a buffered key replaces
    /// (or, deleted, hides) the stored one.
    fn scan_prefix_from(
        &self,
        prefix: &[u8],
        from: &[u8],
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> StoreResult<()> {
        let from = from.max(prefix);
        let mut buffered = self
            .buffer
            .range::<[u8], _>((Bound::Included(from), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut stopped = false;
        self.base.scan_prefix_from(prefix, from, &mut |sk, sv| {
            while let Some((bk, bv)) = buffered.next_if(|(bk, _)| bk.as_slice() < sk) {
                if !emit(bk, bv, f) {
                    stopped = true;
                    return false;
                }
            }
            let keep_going = match buffered.next_if(|(bk, _)| bk.as_slice() == sk) {
                Some((bk, bv)) => emit(bk, bv, f),
                None => f(sk, sv),
            };
            stopped = !keep_going;
            keep_going
        })?;
        if stopped {
            return Ok(());
        }
        for (bk, bv) in buffered {
            if !emit(bk, bv, f) {
                break;
            }
        }
        Ok(())
    }
}

/// Hands a buffered entry to `f` unless it is a deletion; false when `f` said stop.
fn emit(k: &[u8], v: &Option<Vec<u8>>, f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> bool {
    v.as_deref().is_none_or(|v| f(k, v))
}

impl StateWrite for Overlay<'_> {
    fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        check_state_key(key)?;
        self.buffer.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> StoreResult<()> {
        check_state_key(key)?;
        self.buffer.insert(key.to_vec(), None);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored state: a sorted map.
    struct Stored(BTreeMap<Vec<u8>, Vec<u8>>);

    impl StateRead for Stored {
        fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
            Ok(self.0.get(key).cloned())
        }

        fn scan_prefix_from(
            &self,
            prefix: &[u8],
            from: &[u8],
            f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> StoreResult<()> {
            for (k, v) in self
                .0
                .range::<[u8], _>((Bound::Included(from.max(prefix)), Bound::Unbounded))
            {
                if !k.starts_with(prefix) || !f(k, v) {
                    break;
                }
            }
            Ok(())
        }
    }

    fn stored(keys: &[&str]) -> Stored {
        Stored(
            keys.iter()
                .map(|k| (k.as_bytes().to_vec(), format!("s-{k}").into_bytes()))
                .collect(),
        )
    }

    fn scan(o: &Overlay, prefix: &str, from: &str, stop_after: usize) -> Vec<String> {
        let mut out = Vec::new();
        o.scan_prefix_from(prefix.as_bytes(), from.as_bytes(), &mut |k, v| {
            out.push(format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            ));
            out.len() < stop_after
        })
        .unwrap();
        out
    }

    #[test]
    fn buffered_keys_merge_replace_and_hide_stored_ones_in_key_order() {
        let base = stored(&["a/1", "a/3", "a/5", "b/1"]);
        let mut o = Overlay::new(&base);
        o.put(b"a/0", b"n").unwrap();
        o.put(b"a/3", b"n").unwrap();
        o.put(b"a/4", b"n").unwrap();
        o.delete(b"a/5").unwrap();
        o.put(b"a/6", b"n").unwrap();
        o.delete(b"a/7").unwrap(); // deleting what is not there changes nothing
        o.put(b"c/1", b"n").unwrap();
        assert_eq!(
            scan(&o, "a/", "a/", usize::MAX),
            ["a/0=n", "a/1=s-a/1", "a/3=n", "a/4=n", "a/6=n"]
        );
        assert_eq!(o.get(b"a/5").unwrap(), None);
        assert_eq!(o.get(b"a/1").unwrap(), Some(b"s-a/1".to_vec()));
        assert_eq!(o.get(b"a/4").unwrap(), Some(b"n".to_vec()));
    }

    #[test]
    fn a_scan_resumes_from_a_key_and_stops_when_told() {
        let base = stored(&["a/1", "a/3", "a/5"]);
        let mut o = Overlay::new(&base);
        o.put(b"a/2", b"n").unwrap();
        o.put(b"a/6", b"n").unwrap();
        assert_eq!(
            scan(&o, "a/", "a/3", usize::MAX),
            ["a/3=s-a/3", "a/5=s-a/5", "a/6=n"]
        );
        assert_eq!(scan(&o, "a/", "a/", 2), ["a/1=s-a/1", "a/2=n"]);
        // Stopping on a buffered key after the stored ones ran out.
        assert_eq!(scan(&o, "a/", "a/4", 2), ["a/5=s-a/5", "a/6=n"]);
        assert_eq!(scan(&o, "a/", "a/6", 1), ["a/6=n"]);
        // Only buffered keys under the prefix.
        let empty = stored(&[]);
        let mut o = Overlay::new(&empty);
        o.put(b"x/1", b"n").unwrap();
        o.put(b"y/1", b"n").unwrap();
        assert_eq!(scan(&o, "x/", "", usize::MAX), ["x/1=n"]);
    }

    #[test]
    fn keys_no_backend_holds_are_refused() {
        let base = stored(&[]);
        let mut o = Overlay::new(&base);
        assert!(o.put(b"", b"v").is_err());
        assert!(o.put(&vec![b'k'; MAX_STATE_KEY_LEN + 1], b"v").is_err());
        assert!(o.put(&vec![b'k'; MAX_STATE_KEY_LEN], b"v").is_ok());
    }
}
