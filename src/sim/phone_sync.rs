//! What a virtual phone sends a companion it has just linked, as a real
//! primary phone does: the account's app-state sync key (so the companion
//! can read and write app-state, and clients such as Baileys stop holding
//! back incoming messages while they wait for it) and a history-sync
//! notification whose blob is on the media host. Both travel as ordinary
//! end-to-end encrypted messages from device 0. And the account's
//! app-state as the server keeps it for its companions: the push name
//! setting in `critical_block`, encrypted with that key. Never holds a
//! registry lock across an `.await`. Imports `wa` only.

use std::io::Write as _;

use bytes::Bytes;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use prost::Message as _;

use super::messaging::PhonePlan;
use super::stanza;
use super::{unix_now, Inner, SimError};
use crate::proto::wa::message::history_sync_notification::HistorySyncType;
use crate::proto::wa::message::protocol_message::Type as ProtocolType;
use crate::proto::wa::message::{AppStateSyncKeyShare, HistorySyncNotification, ProtocolMessage};
use crate::proto::wa::{HistorySync, Message};
use crate::wa::appstate::{self, CollectionState, MutationKeys, CRITICAL_BLOCK};
use crate::wa::binary::Node;
use crate::wa::jid::Jid;
use crate::wa::media::{body_len, Encryptor, MediaKey, MediaType};

/// `progress` of a history chunk that is the last one.
const HISTORY_COMPLETE: u32 = 100;

impl Inner {
    /// The phone of `companion`'s account greets the newly linked device:
    /// the app-state key share first, then the history notification. Both
    /// wait in the companion's queue until it logs in.
    pub(crate) async fn welcome_companion(&self, companion: &Jid) -> Result<(), SimError> {
        let plan = self.phone_plan_own(companion);
        let now_ms = i64::try_from(unix_now().saturating_mul(1000)).unwrap_or(i64::MAX);
        let mut rng = self.fork_rng();
        let key = self
            .registry
            .with_handset(&companion.user, |handset| {
                handset.app_state_key(now_ms, &mut rng)
            })
            .ok_or_else(|| SimError::NotFound(format!("no account {}", companion.user)))?;
        let share = protocol_message(ProtocolMessage {
            r#type: Some(ProtocolType::AppStateSyncKeyShare.into()),
            app_state_sync_key_share: Some(AppStateSyncKeyShare {
                keys: vec![key.to_proto()],
            }),
            ..Default::default()
        });
        self.send_own(&plan, &share).await?;
        let notification = self
            .upload_history(HistorySyncType::NonBlockingData)
            .await?;
        let history = protocol_message(ProtocolMessage {
            r#type: Some(ProtocolType::HistorySyncNotification.into()),
            history_sync_notification: Some(notification),
            ..Default::default()
        });
        self.send_own(&plan, &history).await
    }

    /// Answers a companion's app-state sync: once the account's phone has
    /// made its app-state key, `critical_block` is at version 1, one patch
    /// that sets the account's push name (`setting_pushName`); the other
    /// collections are the phone's (`app_state`).
    pub(crate) async fn app_state_sync_answer(&self, companion: &Jid, id: &str, iq: &Node) -> Node {
        let user = &companion.user;
        let name = self.registry.push_name(user).filter(|n| !n.is_empty());
        let key = self
            .registry
            .with_handset(user, |handset| handset.shared_app_state_key())
            .flatten();
        let critical = name.zip(key).and_then(|(name, key)| {
            let keys = MutationKeys::expand(key.data.as_ref());
            let setting = appstate::push_name_mutation(&name, key.timestamp_ms);
            self.with_rng(|rng| {
                appstate::encode_patch(
                    CRITICAL_BLOCK,
                    &mut CollectionState::default(),
                    &key.id,
                    &keys,
                    &[setting],
                    rng,
                )
            })
            .ok()
        });
        // The collections the phone keeps (see `app_state`).
        let snapshots = self.app_state_snapshots(user, iq).await;
        stanza::app_state_sync_result(id, iq, |collection, asked| match &critical {
            Some(patch) if collection == CRITICAL_BLOCK && asked < 1 => {
                (1, None, vec![patch.clone()])
            }
            _ if collection == CRITICAL_BLOCK => (asked, None, Vec::new()),
            _ => self.kept_app_state(user, collection, asked, &snapshots),
        })
    }

    async fn send_own(&self, plan: &PhonePlan, message: &Message) -> Result<(), SimError> {
        self.phone_send_message(plan, message, message, None)
            .await
            .map(drop)
    }

    /// Puts a history blob of `sync_type` (the account keeps no chats, so
    /// it holds no conversations) on the media host, compressed and
    /// encrypted as phones do, and describes it for a notification.
    async fn upload_history(
        &self,
        sync_type: HistorySyncType,
    ) -> Result<HistorySyncNotification, SimError> {
        let blob = HistorySync {
            sync_type: sync_type.into(),
            chunk_order: Some(0),
            progress: Some(HISTORY_COMPLETE),
        }
        .encode_to_vec();
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        let compressed = zlib
            .write_all(&blob)
            .and_then(|()| zlib.finish())
            .map_err(|err| SimError::MediaStore(err.to_string()))?;
        let media_key = self.with_rng(MediaKey::generate);
        let mut encryptor = Encryptor::new(&media_key.keys(MediaType::History));
        let mut body = Vec::with_capacity(
            usize::try_from(body_len(compressed.len() as u64)).unwrap_or_default(),
        );
        encryptor.update(&compressed, &mut body);
        let encrypted = encryptor.finish(&mut body);
        let upload = self
            .media
            .put(Bytes::from(body))
            .await
            .map_err(|err| SimError::MediaStore(err.to_string()))?;
        Ok(HistorySyncNotification {
            file_sha256: Some(encrypted.file_sha256.to_vec()),
            file_length: Some(encrypted.file_length),
            media_key: Some(media_key.as_bytes().to_vec()),
            file_enc_sha256: Some(encrypted.file_enc_sha256.to_vec()),
            direct_path: Some(upload.direct_path),
            sync_type: Some(sync_type.into()),
            chunk_order: Some(0),
            original_message_id: None,
            progress: Some(HISTORY_COMPLETE),
        })
    }
}

fn protocol_message(protocol: ProtocolMessage) -> Message {
    Message {
        protocol_message: Some(Box::new(protocol)),
        ..Default::default()
    }
}
