//! The app-state a virtual phone keeps for its account, as WhatsApp's
//! server holds it for the account's companions: contacts
//! (`critical_unblock_low`), mutes (`regular_high`), pins, archives and
//! read marks (`regular_low`), each change one patch encoded with the
//! account's app-state key when it is made (so every companion reads the
//! same bytes and LTHash), and the `server_sync` notification that tells
//! the companions a collection moved. The push name (`critical_block`) is
//! answered from the account itself (see `phone_sync`). A client that asks
//! for a collection from its start with `return_snapshot="true"` gets a
//! snapshot (its current entries) as a blob on the media host, as from
//! WhatsApp; otherwise every patch after the version it names. Never holds
//! a registry lock across an `.await`. Imports `wa` only.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use prost::Message as _;
use rand::{CryptoRng, RngCore};

use super::mailbox::QueueClass;
use super::phone::Phone;
use super::snapshot::{InvalidState, SavedCollection};
use super::{unix_now, Inner, SimError, Simulator};
use crate::proto::wa::{ExternalBlobReference, SyncdPatch, SyncdSnapshot};
use crate::wa::appstate::{self, Action, CollectionRecord, CollectionState, MutationKeys};
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER};
use crate::wa::media::{body_len, Encryptor, MediaKey, MediaType};

/// Most patches a collection keeps; past it a change is refused (a real
/// server would compact them into a snapshot).
const MAX_PATCHES: usize = 10_000;

/// Most snapshots made for one sync query (WhatsApp has five collections).
const MAX_SNAPSHOTS: usize = 8;

/// A collection's snapshot on the media host: its version and the encoded
/// `ExternalBlobReference`, by collection name.
pub(crate) type Snapshots = HashMap<String, (u64, Vec<u8>)>;

/// One collection: its state after its last patch, and every patch.
#[derive(Default)]
pub(crate) struct SimCollection {
    state: CollectionState,
    patches: Vec<SyncdPatch>,
}

/// The collections a phone keeps, by name.
#[derive(Default)]
pub(crate) struct PhoneAppState {
    collections: BTreeMap<&'static str, SimCollection>,
}

/// A chat's settings to change (what is `None` stays as it is).
#[derive(Clone, Debug, Default)]
pub struct ChatSettingsChange {
    pub archived: Option<bool>,
    pub pinned: Option<bool>,
    /// `Some(None)`: unmuted; `Some(Some(ms))`: muted until then (-1 for
    /// good).
    pub muted_until_ms: Option<Option<i64>>,
    pub unread: Option<bool>,
}

impl PhoneAppState {
    /// The version of `name` and its patches after `version`.
    pub(crate) fn patches_after(&self, name: &str, version: u64) -> (u64, Vec<SyncdPatch>) {
        let Some(collection) = self.collections.get(name) else {
            return (version, Vec::new());
        };
        let from = usize::try_from(version).unwrap_or(usize::MAX);
        let after = collection.patches.get(from..).unwrap_or_default().to_vec();
        (collection.state.version.max(version), after)
    }

    pub(crate) fn saved(&self) -> Vec<SavedCollection> {
        self.collections
            .iter()
            .map(|(name, c)| SavedCollection {
                name: (*name).to_owned(),
                state: c.state.to_record().encode_to_vec(),
                patches: c.patches.iter().map(|p| p.encode_to_vec()).collect(),
            })
            .collect()
    }

    pub(crate) fn restore(saved: &[SavedCollection]) -> Result<Self, InvalidState> {
        let mut collections = BTreeMap::new();
        for s in saved {
            let name = appstate::COLLECTIONS
                .iter()
                .copied()
                .find(|c| *c == s.name)
                .ok_or_else(|| {
                    InvalidState::field(format_args!("unknown app state collection {:?}", s.name))
                })?;
            let state = CollectionRecord::decode(s.state.as_slice())
                .ok()
                .as_ref()
                .and_then(CollectionState::from_record)
                .ok_or_else(|| {
                    InvalidState::field(format_args!("app state collection {name}: bad state"))
                })?;
            let patches = s
                .patches
                .iter()
                .map(|p| SyncdPatch::decode(p.as_slice()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| {
                    InvalidState::field(format_args!("app state collection {name}: {err}"))
                })?;
            collections.insert(name, SimCollection { state, patches });
        }
        Ok(Self { collections })
    }
}

impl Phone {
    /// A snapshot of collection `name` at its version, once it holds
    /// anything and the account has its app-state key.
    fn app_state_snapshot(&self, name: &str) -> Option<(u64, SyncdSnapshot)> {
        let key = self.shared_app_state_key()?;
        let collection = self
            .app_state
            .collections
            .get(name)
            .filter(|c| !c.patches.is_empty())?;
        let keys = MutationKeys::expand(key.data.as_ref());
        let records = appstate::current_records(&collection.patches);
        Some((
            collection.state.version,
            appstate::encode_snapshot(name, &collection.state, records, &key.id, &keys),
        ))
    }

    /// The phone makes `actions` (on itself: nothing is checked against
    /// its chats): one patch per collection they touch, encoded with the
    /// account's app-state key (made now if it has none yet). Returns the
    /// collections that moved, with their new versions.
    pub(crate) fn change_app_state(
        &mut self,
        actions: &[Action],
        now_ms: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<(&'static str, u64)>, SimError> {
        let key = self.app_state_key(now_ms, rng);
        let keys = MutationKeys::expand(key.data.as_ref());
        let mut by_collection: BTreeMap<&'static str, Vec<appstate::Mutation>> = BTreeMap::new();
        for action in actions {
            by_collection
                .entry(action.collection())
                .or_default()
                .push(action.to_mutation(now_ms));
        }
        let mut moved = Vec::with_capacity(by_collection.len());
        for (name, mutations) in by_collection {
            let collection = self.app_state.collections.entry(name).or_default();
            if collection.patches.len() >= MAX_PATCHES {
                return Err(SimError::AppState(format!(
                    "collection {name} holds {MAX_PATCHES} patches already"
                )));
            }
            // Encoded on a copy: a refused patch leaves the state as it was.
            let mut state = collection.state.clone();
            let patch = appstate::encode_patch(name, &mut state, &key.id, &keys, &mutations, rng)
                .map_err(|err| SimError::Encryption(err.to_string()))?;
            collection.state = state;
            collection.patches.push(patch);
            moved.push((name, collection.state.version));
        }
        Ok(moved)
    }
}

impl Inner {
    /// The phone of `user` makes `actions`; its companions are told which
    /// collections moved (queued until they ack, as notifications are).
    pub(crate) async fn change_app_state(
        &self,
        user: &str,
        actions: &[Action],
    ) -> Result<(), SimError> {
        let now_ms = i64::try_from(unix_now().saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut rng = self.fork_rng();
        let moved = self
            .registry
            .with_handset(user, |phone| {
                phone.change_app_state(actions, now_ms, &mut rng)
            })
            .ok_or_else(|| SimError::NotFound(format!("no account {user}")))??;
        let companions: Vec<Jid> = self
            .registry
            .user_devices(user)
            .into_iter()
            .filter(|(device, _)| *device != 0)
            .map(|(device, _)| Jid::with_device(user, device, DEFAULT_USER_SERVER))
            .collect();
        // One notification per collection: clients such as Baileys read
        // only the first `<collection>` of one.
        for (name, version) in moved {
            let id = self.new_iq_id();
            let node = server_sync(&id, unix_now(), name, version);
            for device in &companions {
                self.to_companion(device, QueueClass::Notification, &id, node.clone())
                    .await;
            }
        }
        Ok(())
    }
}

impl Inner {
    /// Snapshots of the collections `iq` asks for from their start with
    /// `return_snapshot="true"`, put on the media host. A collection that
    /// holds nothing, or whose blob cannot be stored, comes as patches.
    pub(crate) async fn app_state_snapshots(&self, user: &str, iq: &Node) -> Snapshots {
        let wanted: Vec<String> = iq
            .child("sync")
            .into_iter()
            .flat_map(|sync| sync.children_by_tag("collection"))
            .filter(|c| {
                c.attr_u64("version").unwrap_or(0) == 0
                    && c.attr_str("return_snapshot") == Some("true")
            })
            .filter_map(|c| c.attr_string("name"))
            .take(MAX_SNAPSHOTS)
            .collect();
        let mut out = Snapshots::new();
        for name in wanted {
            let Some(Some((version, snapshot))) = self
                .registry
                .with_handset(user, |phone| phone.app_state_snapshot(&name))
            else {
                continue;
            };
            match self.upload_app_state_blob(&snapshot.encode_to_vec()).await {
                Ok(reference) => {
                    out.insert(name, (version, reference.encode_to_vec()));
                }
                Err(err) => {
                    tracing::warn!(%err, collection = %name, "app-state snapshot not stored; answering with patches");
                }
            }
        }
        out
    }

    /// What a sync of `collection` after `asked` gets from the phone of
    /// `user`: its snapshot if one was made for this query, otherwise its
    /// patches after `asked`.
    pub(crate) fn kept_app_state(
        &self,
        user: &str,
        collection: &str,
        asked: u64,
        snapshots: &Snapshots,
    ) -> (u64, Option<Vec<u8>>, Vec<SyncdPatch>) {
        if let Some((version, reference)) = snapshots.get(collection) {
            return (*version, Some(reference.clone()), Vec::new());
        }
        let (version, patches) = self
            .registry
            .with_handset(user, |phone| {
                phone.app_state.patches_after(collection, asked)
            })
            .unwrap_or((asked, Vec::new()));
        (version, None, patches)
    }

    /// Encrypts `plain` as app-state media and puts it on the media host.
    async fn upload_app_state_blob(&self, plain: &[u8]) -> Result<ExternalBlobReference, SimError> {
        let media_key = self.with_rng(MediaKey::generate);
        let mut encryptor = Encryptor::new(&media_key.keys(MediaType::AppState));
        let mut body =
            Vec::with_capacity(usize::try_from(body_len(plain.len() as u64)).unwrap_or_default());
        encryptor.update(plain, &mut body);
        let encrypted = encryptor.finish(&mut body);
        let upload = self
            .media
            .put(Bytes::from(body))
            .await
            .map_err(|err| SimError::MediaStore(err.to_string()))?;
        Ok(ExternalBlobReference {
            media_key: Some(media_key.as_bytes().to_vec()),
            direct_path: Some(upload.direct_path),
            handle: None,
            file_size_bytes: Some(encrypted.file_length),
            file_sha256: Some(encrypted.file_sha256.to_vec()),
            file_enc_sha256: Some(encrypted.file_enc_sha256.to_vec()),
        })
    }
}

/// `<notification from="s.whatsapp.net" type="server_sync" id t>
/// <collection name version/></notification>`.
fn server_sync(id: &str, t: u64, name: &str, version: u64) -> Node {
    Node::new("notification")
        .attr("from", Jid::server_jid())
        .attr("type", "server_sync")
        .attr("id", id.to_owned())
        .attr("t", t.to_string())
        .children(vec![Node::new("collection")
            .attr("name", name.to_owned())
            .attr("version", version.to_string())])
}

impl Simulator {
    /// The virtual phone of `phone` saves `contact` in its address book
    /// (empty names: forgets them): its companions sync the change.
    pub async fn set_contact(
        &self,
        phone: &PhoneNumber,
        contact: &Jid,
        full_name: &str,
        first_name: &str,
    ) -> Result<(), SimError> {
        let name = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let action = Action::Contact {
            jid: contact.to_non_ad().to_string(),
            full_name: name(full_name),
            first_name: name(first_name),
        };
        self.inner.change_app_state(phone.as_str(), &[action]).await
    }

    /// The virtual phone of `phone` changes the settings of `chat`: its
    /// companions sync the change.
    pub async fn set_chat_settings(
        &self,
        phone: &PhoneNumber,
        chat: &Jid,
        change: ChatSettingsChange,
    ) -> Result<(), SimError> {
        let chat = chat.to_non_ad().to_string();
        let mut actions = Vec::new();
        if let Some(archived) = change.archived {
            actions.push(Action::Archive {
                chat: chat.clone(),
                archived,
            });
        }
        if let Some(pinned) = change.pinned {
            actions.push(Action::Pin {
                chat: chat.clone(),
                pinned,
            });
        }
        if let Some(until_ms) = change.muted_until_ms {
            actions.push(Action::Mute {
                chat: chat.clone(),
                until_ms,
            });
        }
        if let Some(unread) = change.unread {
            actions.push(Action::MarkRead {
                chat,
                read: !unread,
            });
        }
        self.inner.change_app_state(phone.as_str(), &actions).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn a_phone_keeps_one_patch_per_collection_and_change() {
        let mut rng = StdRng::seed_from_u64(4);
        let identity = crate::wa::crypto::KeyPair::generate(&mut rng);
        let mut phone = Phone::generate(identity, &mut rng);
        let chat = "15550001111@s.whatsapp.net".to_owned();
        let moved = phone
            .change_app_state(
                &[
                    Action::Archive {
                        chat: chat.clone(),
                        archived: true,
                    },
                    Action::Pin {
                        chat: chat.clone(),
                        pinned: true,
                    },
                    Action::Mute {
                        chat: chat.clone(),
                        until_ms: Some(-1),
                    },
                ],
                1,
                &mut rng,
            )
            .expect("changed");
        assert_eq!(
            moved,
            vec![(appstate::REGULAR_HIGH, 1), (appstate::REGULAR_LOW, 1)]
        );
        // A companion holding the shared key reads them back.
        let key = phone.shared_app_state_key().expect("made");
        let keys = MutationKeys::expand(key.data.as_ref());
        let found = |id: &[u8]| (id == key.id.as_slice()).then_some(&keys);
        let (version, patches) = phone.app_state.patches_after(appstate::REGULAR_LOW, 0);
        assert_eq!((version, patches.len()), (1, 1));
        let mut state = CollectionState::default();
        let m = appstate::decode_patch(appstate::REGULAR_LOW, &mut state, &patches[0], found)
            .expect("valid");
        assert_eq!(m.len(), 2);
        assert_eq!(
            phone.app_state.patches_after(appstate::REGULAR_LOW, 1).1,
            []
        );
        // Its snapshot: the current entries, with the same LTHash.
        let (at, snapshot) = phone
            .app_state_snapshot(appstate::REGULAR_LOW)
            .expect("a snapshot");
        let (snap_state, entries) =
            appstate::decode_snapshot(appstate::REGULAR_LOW, &snapshot, found).expect("valid");
        assert_eq!((at, entries.len()), (1, 2));
        assert_eq!(snap_state, state);
        assert!(phone.app_state_snapshot(appstate::REGULAR).is_none());
        assert_eq!(
            phone.app_state.patches_after(appstate::REGULAR, 0),
            (0, vec![])
        );
        // Kept across a restart.
        let back = PhoneAppState::restore(&phone.app_state.saved()).expect("restored");
        assert_eq!(
            back.patches_after(appstate::REGULAR_LOW, 0),
            phone.app_state.patches_after(appstate::REGULAR_LOW, 0)
        );
        assert!(PhoneAppState::restore(&[SavedCollection {
            name: "nope".into(),
            ..Default::default()
        }])
        .is_err());
    }
}
