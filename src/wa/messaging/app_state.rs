//! The engine's part in app-state sync: the keys the account's phone
//! shares, and every collection synced with them (when a key arrives and
//! when the server says a collection changed, `server_sync`), each patch
//! checked before anything of it is taken. Read from them: the account's
//! push name, contacts' names and chats' archive, pin, mute and read marks,
//! reported as events when they change; and contacts' push names, as
//! their messages carry them. Keys, each collection's state
//! (version, LTHash, entries) and what was reported are committed with the
//! events, so a restarted session resumes from the version it had and
//! reports nothing twice. A patch that fails a MAC or hash check resets its
//! collection to empty and syncs it from the start (once; a second failure
//! waits for the next `server_sync`). A sync from the start (the first, or
//! after such a reset) asks for the collection's snapshot: the server then
//! answers with a blob on the media host, which the owner fetches
//! ([`SnapshotJob`]) and hands back; it is checked (every MAC, and the
//! snapshot MAC over the LTHash of all its entries) and applied, then the
//! patches after it.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::proto::wa::{ExternalBlobReference, SyncdPatch};
use crate::wa::appstate::{
    self, Action, AppStateError, CollectionState, MutationKeys, SharedKey, COLLECTIONS,
};
use crate::wa::binary::Node;
use crate::wa::jid::Jid;

use super::iq::{AppStateQuery, Awaiting, IqSpec};
use super::keys::{ChatRecord, ContactRecord, KeyError};
use super::{Cx, Engine, Event};

/// Most app-state keys kept in memory (phones share one, rotate rarely).
const MAX_KEYS: usize = 64;

/// A contact's names changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactUpdate {
    pub jid: Jid,
    /// From the phone's address book.
    pub full_name: Option<String>,
    pub first_name: Option<String>,
    /// The name the contact gave itself, when known.
    pub push_name: Option<String>,
}

/// A chat's settings after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatSettings {
    pub chat: Jid,
    pub archived: bool,
    pub pinned: bool,
    /// Unix milliseconds the mute ends, -1 for good; `None`: not muted.
    pub muted_until_ms: Option<i64>,
    /// Marked unread on one of the account's devices.
    pub unread: bool,
}

#[derive(Default)]
pub(super) struct AppState {
    /// Expanded keys by id, loaded from the store as patches name them.
    keys: HashMap<Vec<u8>, MutationKeys>,
    /// A sync iq is out.
    syncing: bool,
    /// Collections to sync once the answer out is in.
    pending: BTreeSet<&'static str>,
    /// Collections syncing from their start after a failed check.
    resyncing: HashSet<&'static str>,
    /// Collections whose snapshot the owner is fetching: not asked for
    /// again until it is applied.
    fetching: HashSet<&'static str>,
}

impl AppState {
    pub(super) fn disconnected(&mut self) {
        self.syncing = false;
        self.fetching.clear();
    }
}

/// A collection's snapshot for the owner to fetch from the media host (as
/// app-state media, checked against the reference's hashes) and hand back
/// to [`Engine::handle_app_state_snapshot`], with the patches the server
/// sent after it.
#[derive(Clone, Debug)]
pub struct SnapshotJob {
    pub collection: &'static str,
    pub reference: ExternalBlobReference,
    pub patches: Vec<SyncdPatch>,
    /// The server has more patches after these.
    pub has_more: bool,
}

/// What applying one collection's patches came to.
enum Applied {
    /// Its version moved.
    Moved,
    /// Nothing of it was taken (no patches, or none that applies).
    Still,
    /// It was reset, to sync again from its start.
    Resync,
}

/// The collection of that name, as a known constant.
fn known(name: &str) -> Option<&'static str> {
    COLLECTIONS.iter().copied().find(|c| *c == name)
}

impl Engine {
    /// The phone shared app-state keys: they are stored, and every
    /// collection is synced with them.
    pub(super) fn on_app_state_keys(
        &mut self,
        keys: &[SharedKey],
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let mut fresh = false;
        for key in keys {
            if cx.txn.app_state_key(&key.id)?.as_ref() == Some(key) {
                continue;
            }
            cx.txn.put_app_state_key(key.clone());
            self.remember_key(key);
            fresh = true;
        }
        if fresh {
            self.sync_collections(COLLECTIONS.iter().copied(), cx)?;
        }
        Ok(())
    }

    /// `<notification type="server_sync"><collection name version/>…`: the
    /// collections named (all when none is) changed on the server.
    pub(super) fn on_server_sync(
        &mut self,
        node: &Node,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let named: Vec<&'static str> = node
            .children_by_tag("collection")
            .filter_map(|c| c.attr_str("name").and_then(known))
            .collect();
        if named.is_empty() {
            self.sync_collections(COLLECTIONS.iter().copied(), cx)
        } else {
            self.sync_collections(named.into_iter(), cx)
        }
    }

    fn remember_key(&mut self, key: &SharedKey) {
        if self.app_state.keys.len() >= MAX_KEYS && !self.app_state.keys.contains_key(&key.id) {
            self.app_state.keys.clear();
        }
        self.app_state
            .keys
            .insert(key.id.clone(), MutationKeys::expand(&key.data));
    }

    /// Asks for `names` after their stored versions, now or once the sync
    /// out is answered.
    fn sync_collections(
        &mut self,
        names: impl Iterator<Item = &'static str>,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        self.app_state.pending.extend(names);
        if self.app_state.syncing {
            return Ok(());
        }
        // A collection whose snapshot is being fetched waits for it.
        let fetching = &self.app_state.fetching;
        let names: Vec<&'static str> = self
            .app_state
            .pending
            .iter()
            .copied()
            .filter(|n| !fetching.contains(n))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        for name in &names {
            self.app_state.pending.remove(name);
        }
        let mut collections = Vec::with_capacity(names.len());
        for name in names {
            let version = cx
                .txn
                .app_state_collection(name)?
                .map_or(0, |record| record.version);
            collections.push((name, version));
        }
        self.app_state.syncing = true;
        self.issue(
            AppStateQuery { collections },
            Awaiting::AppState,
            &mut cx.step,
        );
        Ok(())
    }

    /// Decodes and applies the patches of each collection of the answer.
    pub(super) fn on_app_state_answer(
        &mut self,
        node: &Node,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        self.app_state.syncing = false;
        let collections = match AppStateQuery::answer(node) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("app-state sync failed: {e}");
                return Ok(());
            }
        };
        for collection in collections {
            let Some(name) = known(&collection.name) else {
                continue;
            };
            if let Some(reference) = collection.snapshot {
                self.app_state.fetching.insert(name);
                cx.step.app_state_snapshots.push(SnapshotJob {
                    collection: name,
                    reference,
                    patches: collection.patches,
                    has_more: collection.has_more,
                });
                continue;
            }
            let applied = self.apply_patches(name, &collection.patches, cx)?;
            self.after_sync(name, applied, collection.has_more);
        }
        self.sync_collections(std::iter::empty(), cx)
    }

    /// What comes after a collection's sync: again from its start, more
    /// patches, or done.
    fn after_sync(&mut self, name: &'static str, applied: Applied, has_more: bool) {
        match applied {
            Applied::Resync => {
                self.app_state.pending.insert(name);
            }
            // More only while it moves: a server repeating itself is not
            // asked again.
            Applied::Moved if has_more => {
                self.app_state.pending.insert(name);
            }
            Applied::Moved | Applied::Still => {
                self.app_state.resyncing.remove(name);
            }
        }
    }

    /// The snapshot of a [`SnapshotJob`] was fetched (or not): checked and
    /// applied, then the patches after it. A snapshot that cannot be had
    /// or fails a check resets the collection to sync from its start again
    /// (once, as a failed patch does).
    pub(super) fn on_app_state_snapshot(
        &mut self,
        job: SnapshotJob,
        blob: Result<Vec<u8>, String>,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let name = job.collection;
        self.app_state.fetching.remove(name);
        let taken = match blob {
            Ok(bytes) => self.apply_snapshot(name, &bytes, cx)?,
            Err(e) => Err(format!("its snapshot could not be fetched: {e}")),
        };
        let applied = match taken {
            Ok(()) => match self.apply_patches(name, &job.patches, cx)? {
                // The snapshot itself moved the collection.
                Applied::Still => Applied::Moved,
                other => other,
            },
            Err(why) => self.resync(name, &why, cx)?,
        };
        self.after_sync(name, applied, job.has_more);
        self.sync_collections(std::iter::empty(), cx)
    }

    /// Checks a snapshot blob of collection `name` and makes it the
    /// collection's state, its entries applied; why not, if not.
    fn apply_snapshot(
        &mut self,
        name: &'static str,
        bytes: &[u8],
        cx: &mut Cx<'_, '_>,
    ) -> Result<Result<(), String>, KeyError> {
        let snapshot = match appstate::parse_snapshot(bytes) {
            Ok(snapshot) => snapshot,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let ids: Vec<Vec<u8>> = snapshot
            .key_id
            .iter()
            .chain(snapshot.records.iter().filter_map(|r| r.key_id.as_ref()))
            .filter_map(|k| k.id.clone())
            .collect();
        self.load_key_ids(ids.iter().map(Vec::as_slice), cx)?;
        let keys = &self.app_state.keys;
        let (state, mutations) = match appstate::decode_snapshot(name, &snapshot, |id| keys.get(id))
        {
            Ok(decoded) => decoded,
            Err(e) => return Ok(Err(format!("its snapshot was refused: {e}"))),
        };
        for action in mutations.iter().filter_map(|m| m.action()) {
            apply_action(action, cx)?;
        }
        cx.txn
            .put_app_state_collection(name.to_owned(), state.to_record());
        Ok(Ok(()))
    }

    /// Applies `patches` to collection `name` in order, stopping at the
    /// first that fails.
    fn apply_patches(
        &mut self,
        name: &'static str,
        patches: &[SyncdPatch],
        cx: &mut Cx<'_, '_>,
    ) -> Result<Applied, KeyError> {
        let stored = cx.txn.app_state_collection(name)?;
        let mut state = match stored.as_ref().map(CollectionState::from_record) {
            None => CollectionState::default(),
            Some(Some(state)) => state,
            Some(None) => return self.resync(name, "its stored state is unreadable", cx),
        };
        let before = state.version;
        for patch in patches {
            self.load_keys(patch, cx)?;
            let keys = &self.app_state.keys;
            match appstate::decode_patch(name, &mut state, patch, |id| keys.get(id)) {
                Ok(mutations) => {
                    for action in mutations.iter().filter_map(|m| m.action()) {
                        apply_action(action, cx)?;
                    }
                }
                Err(e) if e.needs_resync() => return self.resync(name, &e.to_string(), cx),
                // Kept up to the last good patch; the next sync tries again.
                Err(AppStateError::Version { .. }) => continue,
                Err(e) => {
                    tracing::warn!("app-state patch of {name} refused: {e}");
                    break;
                }
            }
        }
        if state.version != before || stored.is_none() {
            cx.txn
                .put_app_state_collection(name.to_owned(), state.to_record());
        }
        Ok(if state.version == before {
            Applied::Still
        } else {
            Applied::Moved
        })
    }

    /// Resets `name` to empty and asks for it from its start, unless that
    /// is what just failed (then it waits for the next `server_sync`).
    fn resync(
        &mut self,
        name: &'static str,
        why: &str,
        cx: &mut Cx<'_, '_>,
    ) -> Result<Applied, KeyError> {
        cx.txn
            .put_app_state_collection(name.to_owned(), CollectionState::default().to_record());
        if self.app_state.resyncing.insert(name) {
            tracing::warn!("app-state collection {name} syncs again from its start: {why}");
            Ok(Applied::Resync)
        } else {
            tracing::warn!("app-state collection {name} failed again from its start: {why}");
            self.app_state.resyncing.remove(name);
            Ok(Applied::Still)
        }
    }

    /// Expands the keys `patch` names that are not in memory yet.
    fn load_keys(&mut self, patch: &SyncdPatch, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        let ids = patch
            .key_id
            .iter()
            .chain(
                patch
                    .mutations
                    .iter()
                    .filter_map(|m| m.record.as_ref()?.key_id.as_ref()),
            )
            .filter_map(|k| k.id.as_deref());
        self.load_key_ids(ids, cx)
    }

    /// Expands the keys of `ids` that are not in memory yet.
    fn load_key_ids<'i>(
        &mut self,
        ids: impl Iterator<Item = &'i [u8]>,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let mut missing: Vec<Vec<u8>> = Vec::new();
        for id in ids {
            if !self.app_state.keys.contains_key(id) && !missing.iter().any(|m| m == id) {
                missing.push(id.to_vec());
            }
        }
        for id in missing {
            if let Some(key) = cx.txn.app_state_key(&id)? {
                self.remember_key(&key);
            }
        }
        Ok(())
    }
}

/// A message from `sender` named it `name`: kept with the contact, and
/// reported when it is new or changed.
pub(super) fn learn_push_name(
    sender: Jid,
    name: String,
    cx: &mut Cx<'_, '_>,
) -> Result<(), KeyError> {
    if name.trim().is_empty() {
        return Ok(());
    }
    let key = sender.to_string();
    let stored = cx.txn.contact(&key)?;
    if stored.as_ref().and_then(|c| c.push_name.as_deref()) == Some(name.as_str()) {
        return Ok(());
    }
    let mut new = stored.unwrap_or_default();
    new.push_name = Some(name);
    cx.step.events.push(Event::Contact(ContactUpdate {
        jid: sender,
        full_name: new.full_name.clone(),
        first_name: new.first_name.clone(),
        push_name: new.push_name.clone(),
    }));
    cx.txn.put_contact(key, new);
    Ok(())
}

/// Takes one action into the stored contacts and chats, reporting it when
/// it changes what was stored.
fn apply_action(action: Action, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
    match action {
        Action::PushName(name) => cx.step.push_name = Some(name),
        Action::Contact {
            jid,
            full_name,
            first_name,
        } => {
            let Ok(jid) = jid.parse::<Jid>() else {
                return Ok(());
            };
            let key = jid.to_string();
            let stored = cx.txn.contact(&key)?;
            let old = stored.clone().unwrap_or_default();
            let new = ContactRecord {
                full_name,
                first_name,
                push_name: old.push_name.clone(),
            };
            if stored.as_ref() == Some(&new) || (stored.is_none() && new == old) {
                return Ok(());
            }
            cx.step.events.push(Event::Contact(ContactUpdate {
                jid,
                full_name: new.full_name.clone(),
                first_name: new.first_name.clone(),
                push_name: new.push_name.clone(),
            }));
            cx.txn.put_contact(key, new);
        }
        Action::Mute { chat, until_ms } => {
            update_chat(&chat, |c| c.muted_until_ms = until_ms, cx)?;
        }
        Action::Pin { chat, pinned } => update_chat(&chat, |c| c.pinned = pinned, cx)?,
        Action::Archive { chat, archived } => update_chat(&chat, |c| c.archived = archived, cx)?,
        Action::MarkRead { chat, read } => update_chat(&chat, |c| c.unread = !read, cx)?,
    }
    Ok(())
}

fn update_chat(
    chat: &str,
    change: impl FnOnce(&mut ChatRecord),
    cx: &mut Cx<'_, '_>,
) -> Result<(), KeyError> {
    let Ok(jid) = chat.parse::<Jid>() else {
        return Ok(());
    };
    let key = jid.to_string();
    let old = cx.txn.chat_settings(&key)?.unwrap_or_default();
    let mut new = old.clone();
    change(&mut new);
    if new == old {
        return Ok(());
    }
    cx.step.events.push(Event::ChatSettings(ChatSettings {
        chat: jid,
        archived: new.archived,
        pinned: new.pinned,
        muted_until_ms: new.muted_until_ms,
        unread: new.unread,
    }));
    cx.txn.put_chat_settings(key, new);
    Ok(())
}
