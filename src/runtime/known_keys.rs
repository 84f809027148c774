//! Which idempotency keys a session's store holds, kept in memory so that
//! a Send with a new key — nearly every Send — learns it is new without a
//! store read (a reader's page cache starts over after every commit, so
//! that read fetched its pages again each time).
//!
//! The index is trusted only while it is complete: from the load that
//! listed every key of the session until a commit fails (it may or may
//! not have written) or the keys outgrow [`MAX_KNOWN_KEYS`]. Until then a
//! key it does not hold is not in the store; otherwise, and for a key it
//! may hold, the store answers as before. Only this session's owner
//! writes its keys (another gateway that takes the session over fences
//! this one's writes, and this one's session stops), so nothing else adds
//! to the store behind it. Imports no other runtime module.

use std::collections::HashSet;

/// Keys indexed per session (10 to 20 bytes each, with the hash table's
/// spare room); past it, lookups go to the store.
pub(super) const MAX_KNOWN_KEYS: usize = 16_384;

/// The first 8 bytes of each key's hashed secret name. Two names that
/// share them only cost a store read.
#[derive(Default)]
pub(super) struct KnownKeys {
    complete: bool,
    tags: HashSet<u64>,
}

impl KnownKeys {
    /// An index of every name in `names` (all the session's keys).
    pub(super) fn listed<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut known = Self {
            complete: true,
            tags: HashSet::new(),
        };
        for name in names {
            known.insert(name);
        }
        known
    }

    /// A key was committed under `name`.
    pub(super) fn insert(&mut self, name: &str) {
        if !self.complete {
            return;
        }
        match tag(name) {
            Some(tag) if self.tags.len() < MAX_KNOWN_KEYS || self.tags.contains(&tag) => {
                self.tags.insert(tag);
            }
            _ => self.forget(),
        }
    }

    /// Whether the store may hold `name` (`false`: it certainly does not).
    pub(super) fn may_hold(&self, name: &str) -> bool {
        !self.complete || tag(name).is_none_or(|tag| self.tags.contains(&tag))
    }

    /// The index may be behind the store: every lookup asks the store.
    pub(super) fn forget(&mut self) {
        self.complete = false;
        self.tags = HashSet::new();
    }
}

/// The first 16 hex digits of a hashed name (`k/<kind>/<hex>`).
fn tag(name: &str) -> Option<u64> {
    let hex = name.rsplit('/').next()?.get(..16)?;
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "k/idem/00112233445566778899aabbccddeeff";
    const B: &str = "k/idem/ffeeddccbbaa99887766554433221100";

    #[test]
    fn a_complete_index_answers_for_absent_keys() {
        let mut known = KnownKeys::listed([A]);
        assert!(known.may_hold(A));
        assert!(!known.may_hold(B));
        known.insert(B);
        assert!(known.may_hold(B));
        // A name it cannot read is left to the store.
        assert!(known.may_hold("k/idem/not-hex-at-all"));
    }

    #[test]
    fn an_incomplete_index_sends_every_lookup_to_the_store() {
        assert!(KnownKeys::default().may_hold(B));
        let mut known = KnownKeys::listed([A]);
        known.forget();
        assert!(known.may_hold(B));
        known.insert(A);
        assert!(known.may_hold(B));
        // Too many keys: the index gives up rather than grow.
        let names: Vec<String> = (0..=MAX_KNOWN_KEYS as u64)
            .map(|i| format!("k/idem/{i:016x}{i:016x}"))
            .collect();
        let full = KnownKeys::listed(names.iter().map(String::as_str));
        assert!(full.may_hold(B));
    }
}
