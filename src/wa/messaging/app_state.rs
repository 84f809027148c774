//! The engine's part in app-state sync: the keys the account's phone
//! shares, and its `critical_block` collection read for the account's push
//! name (the `setting_pushName` setting), as WhatsApp Web clients learn it.
//! Keys and the collection's state live in memory: the push name found is
//! handed to the owner to keep, and a later connection syncs again once the
//! phone shares its key again.

use std::collections::HashMap;

use crate::wa::appstate::{self, CollectionState, MutationKeys, SharedKey, CRITICAL_BLOCK};
use crate::wa::binary::Node;

use super::iq::{AppStateQuery, Awaiting, IqSpec};
use super::{Engine, Step};

/// Most app-state keys kept (phones share one, rotate rarely).
const MAX_KEYS: usize = 64;

#[derive(Default)]
pub(super) struct AppState {
    keys: HashMap<Vec<u8>, MutationKeys>,
    critical: CollectionState,
    /// A sync of `critical_block` is out.
    syncing: bool,
}

impl Engine {
    /// The phone shared app-state keys: a new one starts a sync.
    pub(super) fn on_app_state_keys(&mut self, keys: &[SharedKey], step: &mut Step) {
        let mut fresh = false;
        for key in keys {
            let known = self.app_state.keys.contains_key(&key.id);
            if known || self.app_state.keys.len() >= MAX_KEYS {
                continue;
            }
            self.app_state
                .keys
                .insert(key.id.clone(), MutationKeys::expand(&key.data));
            fresh = true;
        }
        if fresh && !self.app_state.syncing {
            self.sync_critical_block(step);
        }
    }

    fn sync_critical_block(&mut self, step: &mut Step) {
        self.app_state.syncing = true;
        let query = AppStateQuery {
            collection: CRITICAL_BLOCK,
            version: self.app_state.critical.version,
        };
        self.issue(query, Awaiting::AppState, step);
    }

    /// Decodes the patches of the answer; a patch that fails a check stops
    /// the collection there (nothing of it is taken).
    pub(super) fn on_app_state_answer(&mut self, node: &Node, step: &mut Step) {
        self.app_state.syncing = false;
        let collections = match AppStateQuery::answer(node) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("app-state sync failed: {e}");
                return;
            }
        };
        let mut more = false;
        for collection in collections.iter().filter(|c| c.name == CRITICAL_BLOCK) {
            let AppState { keys, critical, .. } = &mut self.app_state;
            for patch in &collection.patches {
                match appstate::decode_patch(CRITICAL_BLOCK, critical, patch, |id| keys.get(id)) {
                    Ok(mutations) => {
                        if let Some(name) = appstate::push_name(&mutations) {
                            step.push_name = Some(name);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("app-state patch of {CRITICAL_BLOCK} refused: {e}");
                        return;
                    }
                }
            }
            more |= collection.has_more && !collection.patches.is_empty();
        }
        if more {
            self.sync_critical_block(step);
        }
    }
}
