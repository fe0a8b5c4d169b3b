//! Kind 446: Noise direct messages (Loxation, `["p", recipient]`, `["v", "noise.1"]`): accept,
//! audience, read pre-check and scope, deletion, retention. State: none.
//!
//! Accepted when: at least one `p`; non-empty content. Served to the `p` recipients and to the
//! author, each only when authenticated as such; only its author may delete it (kind 5, see
//! `Gateway::may_delete`): a recipient's deletion would take it from the author, who reads it
//! too. Kept receipt + `message_archive_ttl_days`.

use crate::dialect::{invalid, MlsEvent};
use crate::visibility::Who;
use crate::{Gateway, Viewer};
use mls_proto::{Event, Filter, Hex32};
use mls_store::{Admitted, Rejection};
use std::collections::BTreeSet;

pub(crate) fn admit(
    gw: &Gateway,
    ev: &Event,
    m: &MlsEvent<'_>,
    received_at: u64,
) -> Result<Admitted, Rejection> {
    if m.recipients.is_empty() {
        return Err(invalid("kind 446 must have at least one p tag"));
    }
    if ev.content.is_empty() {
        return Err(invalid("kind 446 content is empty"));
    }
    let cfg = gw.config();
    Ok(Admitted {
        expires_at: super::archive_expiry(cfg, received_at, m.nip40),
        store: cfg.enable_message_archive,
    })
}

/// Served to its `p` recipients and its author, authenticated as such.
pub(crate) fn audience(ev: &Event) -> Who<'_> {
    let mut list = super::p_pubkeys(ev);
    list.push(ev.pubkey);
    Who::Pubkeys(list)
}

/// Who reads a Noise DM: its `p` recipients and its author (so a recipient is never its sole
/// reader and may not delete it).
pub(crate) fn readers(ev: &Event) -> BTreeSet<Hex32> {
    let mut readers: BTreeSet<Hex32> = super::p_pubkeys(ev).into_iter().collect();
    readers.insert(ev.pubkey);
    readers
}

/// The REQ pre-check: refused unauthenticated, or when both `#p` and `authors` name only
/// others.
pub(crate) fn read_refusal(viewer: &Viewer, f: &Filter) -> Option<String> {
    let authors_others = f
        .authors
        .as_ref()
        .is_some_and(|a| !a.iter().any(|pk| viewer.authed.contains(pk)));
    let refused =
        viewer.authed.is_empty() || (super::p_names_only_others(viewer, f) && authors_others);
    refused.then(|| "kind 446 is only served to its recipients and author".to_string())
}

/// A read of 446s goes through the reader's own pubkeys: by `#p` (its mailbox), and by
/// `authors` (a DM is also served to its author).
pub(crate) fn scope(viewer: &Viewer, f: &Filter) -> Vec<Filter> {
    let mut out = Vec::new();
    let own_p = super::own_p(viewer, f);
    if !own_p.is_empty() {
        let mut g = super::with_kind(f, 446);
        g.tags.insert('p', own_p);
        out.push(g);
    }
    let own_authors: Vec<Hex32> = viewer
        .authed
        .iter()
        .copied()
        .filter(|pk| f.authors.as_ref().is_none_or(|a| a.contains(pk)))
        .collect();
    if !own_authors.is_empty() {
        let mut g = super::with_kind(f, 446);
        g.authors = Some(own_authors);
        out.push(g);
    }
    out
}

#[cfg(test)]
mod tests;
