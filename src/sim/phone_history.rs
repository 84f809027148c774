//! The history a virtual phone sends a companion it has just linked, as a
//! real phone does: the chats it has (the texts in its inbox, and a
//! generated history seeded over the control API) in INITIAL_BOOTSTRAP
//! chunks (the newest messages of each chat), a PUSH_NAME chunk, RECENT
//! chunks (older messages within the recent window) and, when the
//! companion asked for it at registration (`requireFullSync`), FULL chunks
//! with everything older. Each chunk is a zlib-compressed `HistorySync`,
//! encrypted with a fresh media key and put on the media host, announced
//! by a `historySyncNotification` with its chunk order and progress.
//! Imports `wa` only.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::ops::Range;

use bytes::Bytes;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use prost::Message as _;

use super::messaging::PhonePlan;
use super::phone::InboxMessage;
use super::{Inner, SimError};
use crate::proto::wa::message::history_sync_notification::HistorySyncType;
use crate::proto::wa::message::protocol_message::Type as ProtocolType;
use crate::proto::wa::message::{HistorySyncNotification, ProtocolMessage};
use crate::proto::wa::{
    Conversation, HistorySync, HistorySyncMsg, Message, MessageKey, Pushname, WebMessageInfo,
};
use crate::wa::jid::{Jid, PhoneNumber};
use crate::wa::media::{body_len, Encryptor, MediaKey, MediaType};

/// Newest messages of each chat sent in INITIAL_BOOTSTRAP chunks.
pub(crate) const BOOTSTRAP_PER_CHAT: usize = 20;
/// Newest messages of each chat a phone sends without a full sync (the
/// rest of them in RECENT chunks).
pub(crate) const RECENT_PER_CHAT: usize = 100;
/// Most messages in one chunk.
pub(crate) const CHUNK_MESSAGES: usize = 2_000;
/// Limits of a seeded history.
pub(crate) const MAX_SEED_CHATS: u32 = 10_000;
pub(crate) const MAX_SEED_PER_CHAT: u32 = 100_000;
pub(crate) const MAX_SEED_MESSAGES: u64 = 1_000_000;
/// Seconds between two seeded messages of a chat.
const SEED_SPACING_S: u64 = 60;

/// A generated history (see `SeedHistoryRequest`): nothing but these
/// numbers is kept; the messages are made when a chunk needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HistorySeed {
    pub(crate) chats: u32,
    pub(crate) messages_per_chat: u32,
    pub(crate) base_time: u64,
}

impl HistorySeed {
    fn chat_jid(chat: u32) -> String {
        format!("1555900{chat:05}@s.whatsapp.net")
    }

    /// Message `n` (0 = oldest) of seeded chat `chat`.
    fn message(&self, chat: u32, n: u32, own: &str) -> HistorySyncMsg {
        let jid = Self::chat_jid(chat);
        let from_me = n % 3 == 0;
        let age = u64::from(self.messages_per_chat - n) * SEED_SPACING_S;
        stored(
            &jid,
            format!("HIST{chat:05X}{n:07X}"),
            from_me,
            self.base_time.saturating_sub(age),
            format!("history {chat}/{n}"),
            if from_me { own.to_owned() } else { jid.clone() },
            (!from_me).then(|| format!("Contact {chat}")),
        )
    }
}

/// A chat of the phone's history: where its messages come from.
enum Chat {
    Seeded(u32),
    Inbox {
        jid: String,
        texts: Vec<InboxMessage>,
    },
}

/// What the phone's history holds, in chat order.
struct History {
    own: String,
    seed: Option<HistorySeed>,
    chats: Vec<Chat>,
}

impl History {
    fn len(&self, chat: &Chat) -> usize {
        match chat {
            Chat::Seeded(_) => self
                .seed
                .as_ref()
                .map_or(0, |s| s.messages_per_chat as usize),
            Chat::Inbox { texts, .. } => texts.len(),
        }
    }

    fn jid<'a>(&self, chat: &'a Chat) -> std::borrow::Cow<'a, str> {
        match chat {
            Chat::Seeded(c) => HistorySeed::chat_jid(*c).into(),
            Chat::Inbox { jid, .. } => jid.as_str().into(),
        }
    }

    /// Message `n` (0 = oldest) of `chat`.
    fn message(&self, chat: &Chat, n: usize) -> Option<HistorySyncMsg> {
        match chat {
            Chat::Seeded(c) => {
                let seed = self.seed.as_ref()?;
                Some(seed.message(*c, u32::try_from(n).ok()?, &self.own))
            }
            Chat::Inbox { jid, texts } => {
                let text = texts.get(n)?;
                let sender = text
                    .from
                    .parse::<Jid>()
                    .map_or_else(|_| text.from.clone(), |j| j.to_non_ad().to_string());
                Some(stored(
                    jid,
                    text.id.clone(),
                    false,
                    text.timestamp,
                    text.text.clone(),
                    sender,
                    None,
                ))
            }
        }
    }

    /// The messages of `chat` a chunk of `ty` carries (0 = oldest).
    fn range(&self, chat: &Chat, ty: HistorySyncType) -> Range<usize> {
        let len = self.len(chat);
        let bootstrap = len.saturating_sub(BOOTSTRAP_PER_CHAT);
        let recent = len.saturating_sub(RECENT_PER_CHAT);
        match ty {
            HistorySyncType::InitialBootstrap => bootstrap..len,
            HistorySyncType::Recent => recent..bootstrap,
            HistorySyncType::Full => 0..recent,
            _ => 0..0,
        }
    }
}

/// A `WebMessageInfo` of a text, as phones store them.
fn stored(
    chat: &str,
    id: String,
    from_me: bool,
    timestamp: u64,
    text: String,
    sender: String,
    push_name: Option<String>,
) -> HistorySyncMsg {
    HistorySyncMsg {
        message: Some(WebMessageInfo {
            key: MessageKey {
                remote_jid: Some(chat.to_owned()),
                from_me: Some(from_me),
                id: Some(id),
                participant: None,
            },
            message: Some(Message {
                conversation: Some(text),
                ..Default::default()
            }),
            message_timestamp: Some(timestamp),
            participant: Some(sender),
            push_name,
        }),
        msg_order_id: None,
    }
}

impl super::Simulator {
    /// Gives the phone of `phone` a generated history of `chats` chats of
    /// `messages_per_chat` messages each (replacing an earlier seed),
    /// sent to companions linked afterwards. The unix second timestamps
    /// count back from.
    pub fn seed_history(
        &self,
        phone: &PhoneNumber,
        chats: u32,
        messages_per_chat: u32,
    ) -> Result<u64, SimError> {
        if chats > MAX_SEED_CHATS
            || messages_per_chat > MAX_SEED_PER_CHAT
            || u64::from(chats) * u64::from(messages_per_chat) > MAX_SEED_MESSAGES
        {
            return Err(SimError::InvalidHistorySeed(format!(
                "at most {MAX_SEED_CHATS} chats, {MAX_SEED_PER_CHAT} messages per chat and {MAX_SEED_MESSAGES} in all"
            )));
        }
        let base_time = super::unix_now();
        let seed = HistorySeed {
            chats,
            messages_per_chat,
            base_time,
        };
        if self.inner.registry.seed_history(phone.as_str(), seed) {
            Ok(base_time)
        } else {
            Err(SimError::NotFound(format!("no account {phone}")))
        }
    }
}

impl Inner {
    /// Sends `companion` its account's history (after the app-state key
    /// share), chunk by chunk; `full_sync` adds the FULL chunks.
    pub(super) async fn send_history(
        &self,
        plan: &PhonePlan,
        companion: &Jid,
        full_sync: bool,
    ) -> Result<(), SimError> {
        let history = self.history_of(companion);
        let mut types = vec![HistorySyncType::InitialBootstrap, HistorySyncType::Recent];
        if full_sync {
            types.push(HistorySyncType::Full);
        }
        for ty in types {
            self.send_chunks(plan, &history, ty).await?;
            if ty == HistorySyncType::InitialBootstrap {
                let names = self.push_names_of(&history);
                if !names.is_empty() {
                    let blob = HistorySync {
                        sync_type: HistorySyncType::PushName.into(),
                        chunk_order: Some(0),
                        progress: Some(100),
                        pushnames: names,
                        ..Default::default()
                    };
                    self.send_chunk(plan, &blob).await?;
                }
            }
        }
        Ok(())
    }

    fn history_of(&self, companion: &Jid) -> History {
        let user = &companion.user;
        let seed = self.registry.history_seed(user);
        let inbox: Vec<InboxMessage> = self
            .registry
            .with_handset(user, |handset| handset.inbox().cloned().collect())
            .unwrap_or_default();
        let mut by_chat: BTreeMap<String, Vec<InboxMessage>> = BTreeMap::new();
        for text in inbox {
            by_chat.entry(text.chat.clone()).or_default().push(text);
        }
        let mut chats: Vec<Chat> = by_chat
            .into_iter()
            .map(|(jid, texts)| Chat::Inbox { jid, texts })
            .collect();
        if let Some(seed) = &seed {
            chats.extend((0..seed.chats).map(Chat::Seeded));
        }
        History {
            own: companion.to_non_ad().to_string(),
            seed,
            chats,
        }
    }

    fn push_names_of(&self, history: &History) -> Vec<Pushname> {
        history
            .chats
            .iter()
            .filter_map(|chat| match chat {
                Chat::Seeded(c) => Some((HistorySeed::chat_jid(*c), format!("Contact {c}"))),
                Chat::Inbox { jid, .. } => {
                    let user = jid.parse::<Jid>().ok()?.user;
                    Some((jid.clone(), self.registry.push_name(&user)?))
                }
            })
            .filter(|(_, name)| !name.is_empty())
            .map(|(id, name)| Pushname {
                id: Some(id),
                pushname: Some(name),
            })
            .collect()
    }

    /// The chunks of `ty`: at most [`CHUNK_MESSAGES`] each, built one at a
    /// time; INITIAL_BOOTSTRAP is sent even when empty (a companion waits
    /// for it), the others only when they carry something.
    async fn send_chunks(
        &self,
        plan: &PhonePlan,
        history: &History,
        ty: HistorySyncType,
    ) -> Result<(), SimError> {
        let total: usize = history
            .chats
            .iter()
            .map(|c| history.range(c, ty).len())
            .sum();
        if total == 0 && ty != HistorySyncType::InitialBootstrap {
            return Ok(());
        }
        let mut sent = 0usize;
        let mut order = 0u32;
        let mut chunk = new_chunk(ty);
        let mut in_chunk = 0usize;
        for chat in &history.chats {
            let range = history.range(chat, ty);
            let mut conversation: Option<Conversation> = None;
            for n in range {
                let Some(message) = history.message(chat, n) else {
                    continue;
                };
                conversation
                    .get_or_insert_with(|| Conversation {
                        id: history.jid(chat).into_owned(),
                        ..Default::default()
                    })
                    .messages
                    .push(message);
                in_chunk += 1;
                if in_chunk == CHUNK_MESSAGES {
                    chunk.conversations.extend(conversation.take());
                    sent += in_chunk;
                    finish_chunk(&mut chunk, order, sent, total);
                    self.send_chunk(plan, &chunk).await?;
                    order += 1;
                    chunk = new_chunk(ty);
                    in_chunk = 0;
                }
            }
            chunk.conversations.extend(conversation);
        }
        if in_chunk > 0 || order == 0 {
            sent += in_chunk;
            finish_chunk(&mut chunk, order, sent, total);
            self.send_chunk(plan, &chunk).await?;
        }
        Ok(())
    }

    async fn send_chunk(&self, plan: &PhonePlan, blob: &HistorySync) -> Result<(), SimError> {
        let notification = self.upload_history(blob).await?;
        let history = Message {
            protocol_message: Some(Box::new(ProtocolMessage {
                r#type: Some(ProtocolType::HistorySyncNotification.into()),
                history_sync_notification: Some(notification),
                ..Default::default()
            })),
            ..Default::default()
        };
        self.phone_send_message(plan, &history, &history, None)
            .await
            .map(drop)
    }

    /// Puts a history blob on the media host, compressed and encrypted as
    /// phones do, and describes it for a notification.
    async fn upload_history(
        &self,
        blob: &HistorySync,
    ) -> Result<HistorySyncNotification, SimError> {
        let mut zlib = ZlibEncoder::new(Vec::new(), Compression::default());
        let compressed = zlib
            .write_all(&blob.encode_to_vec())
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
            sync_type: Some(blob.sync_type),
            chunk_order: blob.chunk_order,
            original_message_id: None,
            progress: blob.progress,
        })
    }
}

fn new_chunk(ty: HistorySyncType) -> HistorySync {
    HistorySync {
        sync_type: ty.into(),
        ..Default::default()
    }
}

/// Sets a chunk's order and its progress through `total` messages of its
/// type (100 on the last).
fn finish_chunk(chunk: &mut HistorySync, order: u32, sent: usize, total: usize) {
    chunk.chunk_order = Some(order);
    let progress = if total == 0 || sent >= total {
        100
    } else {
        (sent * 100 / total) as u32
    };
    chunk.progress = Some(progress);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ranges_split_each_chat_once() {
        let history = History {
            own: "1@s.whatsapp.net".into(),
            seed: Some(HistorySeed {
                chats: 2,
                messages_per_chat: 150,
                base_time: 1_000_000,
            }),
            chats: vec![Chat::Seeded(0), Chat::Seeded(1)],
        };
        let chat = &history.chats[0];
        let full = history.range(chat, HistorySyncType::Full);
        let recent = history.range(chat, HistorySyncType::Recent);
        let bootstrap = history.range(chat, HistorySyncType::InitialBootstrap);
        assert_eq!(
            (full.clone(), recent.clone(), bootstrap.clone()),
            (0..50, 50..130, 130..150)
        );
        let first = history
            .message(chat, 0)
            .and_then(|m| m.message)
            .expect("message");
        assert_eq!(first.key.id.as_deref(), Some("HIST000000000000"));
        assert_eq!(first.message_timestamp, Some(1_000_000 - 150 * 60));
        assert_eq!(first.key.from_me, Some(true));
    }

    #[test]
    fn progress_reaches_100_on_the_last_chunk() {
        let mut chunk = new_chunk(HistorySyncType::Recent);
        finish_chunk(&mut chunk, 0, 2000, 5000);
        assert_eq!(chunk.progress, Some(40));
        finish_chunk(&mut chunk, 2, 5000, 5000);
        assert_eq!(chunk.progress, Some(100));
    }
}
