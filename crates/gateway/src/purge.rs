//! Background cleanup of the gateway's own state, in bounded chunks.
//!
//! What goes: KeyPackage rows past their expiry (with their reference and address entries),
//! rate counters of past windows and used NIP-98 tokens that could no longer verify. The walk is split into chunks that each look at no more
//! than a given number of keys, each run in its own write transaction, like the store's purge
//! of expired events: the single writer commits the events queued behind one chunk before
//! the next starts, so a large backlog never holds up a publish's `OK`. A chunk resumes at the
//! key after the last one the previous chunk looked at (`StateRead::scan_prefix_from`), so
//! live keys are read once per purge, not once per chunk.

use crate::kinds::{group_message, keypackage};
use crate::state::USED_TOKENS_PREFIX;
use mls_store::{StateWrite, StoreResult};

/// Most state keys one chunk looks at (the same bound as the store's `PURGE_CHUNK` of events).
pub const STATE_PURGE_CHUNK: usize = 10_000;

/// What the purge walks, in order: a prefix, and how its keys are judged.
/// Each prefix is owned by the module named (which builds its keys).
const SECTIONS: [(&[u8], Section); 5] = [
    (keypackage::ROWS_PREFIX, Section::KeyPackages),
    (group_message::RATE_PREFIX, Section::Counter { width: 60 }),
    (keypackage::RATE_PREFIX, Section::Counter { width: 3600 }),
    (
        keypackage::claims::FETCH_RATE_PREFIX,
        Section::Counter { width: 3600 },
    ),
    // Used NIP-98 tokens, by the minute after which they can no longer verify.
    (USED_TOKENS_PREFIX, Section::Counter { width: 60 }),
];

#[derive(Clone, Copy)]
enum Section {
    /// `kp/{owner}/{ref}` rows, gone once expired.
    KeyPackages,
    /// Fixed-window counters `…/{window}` of `width` seconds, gone once their window passed.
    Counter { width: u64 },
}

/// Where a chunked purge stands. Start from `StatePurge::default()` and call
/// [`crate::Gateway::purge_state_chunk`] until [`StatePurge::done`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatePurge {
    /// Index into `SECTIONS` of the section being walked.
    section: usize,
    /// The key to resume the current section at (`None`: its start).
    resume: Option<Vec<u8>>,
    /// Records removed so far (a KeyPackage row counts once, with its reference entries).
    pub removed: u64,
    /// Chunks run so far.
    pub chunks: u64,
}

impl StatePurge {
    pub fn done(&self) -> bool {
        self.section >= SECTIONS.len()
    }
}

/// One chunk: looks at no more than `max_keys` keys (at least one), removes what expired at
/// `now`, and records where to resume.
pub(crate) fn chunk(
    state: &mut dyn StateWrite,
    now: u64,
    progress: &mut StatePurge,
    max_keys: usize,
) -> StoreResult<()> {
    let mut budget = max_keys.max(1);
    while budget > 0 && !progress.done() {
        let (prefix, section) = SECTIONS[progress.section];
        let from = progress.resume.clone().unwrap_or_else(|| prefix.to_vec());
        let want = budget;
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        state.scan_prefix_from(prefix, &from, &mut |k, v| {
            batch.push((k.to_vec(), v.to_vec()));
            batch.len() < want
        })?;
        budget -= batch.len();
        match batch.last() {
            // The budget ran out first: resume just after the last key looked at.
            Some((last, _)) if batch.len() == want => {
                let mut next = last.clone();
                next.push(0);
                progress.resume = Some(next);
            }
            // The section ended first.
            _ => {
                progress.section += 1;
                progress.resume = None;
            }
        }
        for (key, value) in batch {
            let removed = match section {
                Section::KeyPackages => keypackage::purge_row(state, &key, &value, now)?,
                Section::Counter { width } => purge_counter(state, &key, now, width)?,
            };
            progress.removed += u64::from(removed);
        }
    }
    progress.chunks += 1;
    Ok(())
}

/// Removes a fixed-window counter whose window is over (or that cannot be read).
fn purge_counter(
    state: &mut dyn StateWrite,
    key: &[u8],
    now: u64,
    width: u64,
) -> StoreResult<bool> {
    let window = key
        .rsplit(|b| *b == b'/')
        .next()
        .and_then(|w| std::str::from_utf8(w).ok())
        .and_then(|w| w.parse::<u64>().ok());
    if matches!(window, Some(w) if w >= now / width) {
        return Ok(false);
    }
    state.delete(key)?;
    Ok(true)
}

/// A whole purge in one transaction (tests and tools; the relay runs chunks).
pub(crate) fn all(state: &mut dyn StateWrite, now: u64) -> StoreResult<u64> {
    let mut progress = StatePurge::default();
    while !progress.done() {
        chunk(state, now, &mut progress, STATE_PURGE_CHUNK)?;
    }
    Ok(progress.removed)
}

#[cfg(test)]
mod tests;
