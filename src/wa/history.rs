//! History sync, sans-IO: what a `historySyncNotification` announces, a
//! bounded zlib inflater for its blob, and a reader that turns the inflated
//! `HistorySync` into pages of chats and messages, one conversation decoded
//! at a time. Must not import tokio, the store, the clock or `sim`.
//!
//! Memory: the caller holds one chunk's inflated bytes (capped by the
//! inflater's limit) and the page being built; conversations are decoded
//! one by one as the pages need them.

use std::collections::VecDeque;

use flate2::{Decompress, FlushDecompress, Status};
use prost::Message as _;

use crate::proto::wa::message::history_sync_notification::HistorySyncType;
use crate::proto::wa::message::HistorySyncNotification;
use crate::proto::wa::{Conversation, HistorySyncMsg, Pushname};
use crate::wa::media::{MediaKey, MEDIA_KEY_LEN};
use crate::wa::message::Content;

/// Most messages in one page.
pub const MAX_PAGE_MESSAGES: usize = 256;
/// Most bytes of text and names (estimated as encoded) in one page.
pub const MAX_PAGE_BYTES: usize = 256 * 1024;
/// Default cap on one chunk's inflated size. Phones keep chunks to a few
/// MB; anything far larger is hostile or broken.
pub const DEFAULT_MAX_INFLATED: usize = 32 * 1024 * 1024;
/// Room the inflater's output grows by at a time.
const INFLATE_STEP: usize = 64 * 1024;
/// Bytes counted per message on top of its strings (timestamps, flags,
/// framing).
const MESSAGE_OVERHEAD: usize = 48;
/// Longest string field kept from a history message (ids, names, JIDs);
/// texts are capped by [`crate::wa::messaging::MAX_TEXT_BYTES`].
const MAX_FIELD_BYTES: usize = 1024;

/// Why a history chunk could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("history notification: missing or malformed {0}")]
    Notification(&'static str),
    #[error("the history chunk inflates to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the history chunk is not valid zlib: {0}")]
    Inflate(String),
    #[error("the history chunk's zlib stream is truncated")]
    Truncated,
    #[error("the history chunk has data after its zlib stream")]
    TrailingData,
    #[error("the history chunk is not a HistorySync: {0}")]
    Decode(String),
}

/// What a `historySyncNotification` announces: a chunk of the phone's
/// history on the media host.
#[derive(Clone, PartialEq, Eq)]
pub struct HistoryNotice {
    pub direct_path: String,
    pub media_key: [u8; MEDIA_KEY_LEN],
    pub file_sha256: [u8; 32],
    pub file_enc_sha256: Option<[u8; 32]>,
    pub file_length: u64,
    pub sync_type: HistorySyncType,
    pub chunk_order: u32,
    pub progress: u32,
}

impl std::fmt::Debug for HistoryNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryNotice")
            .field("sync_type", &self.sync_type)
            .field("chunk_order", &self.chunk_order)
            .field("progress", &self.progress)
            .field("file_length", &self.file_length)
            .finish_non_exhaustive()
    }
}

impl HistoryNotice {
    /// Reads a notification; the blob's location, key and hashes are
    /// required.
    pub fn from_proto(n: &HistorySyncNotification) -> Result<Self, HistoryError> {
        let hash = |v: &Option<Vec<u8>>| v.as_deref().and_then(|b| <[u8; 32]>::try_from(b).ok());
        let direct_path = n
            .direct_path
            .clone()
            .filter(|p| p.starts_with('/') && p.len() <= MAX_FIELD_BYTES)
            .ok_or(HistoryError::Notification("direct path"))?;
        let media_key = n
            .media_key
            .as_deref()
            .and_then(|k| <[u8; MEDIA_KEY_LEN]>::try_from(k).ok())
            .ok_or(HistoryError::Notification("media key"))?;
        Ok(Self {
            direct_path,
            media_key,
            file_sha256: hash(&n.file_sha256).ok_or(HistoryError::Notification("file sha256"))?,
            file_enc_sha256: hash(&n.file_enc_sha256),
            file_length: n
                .file_length
                .ok_or(HistoryError::Notification("file length"))?,
            sync_type: n
                .sync_type
                .and_then(|t| HistorySyncType::try_from(t).ok())
                .ok_or(HistoryError::Notification("sync type"))?,
            chunk_order: n.chunk_order.unwrap_or_default(),
            progress: n.progress.unwrap_or_default(),
        })
    }

    /// The notification as it travels (and as it is kept while pending).
    pub fn to_proto(&self) -> HistorySyncNotification {
        HistorySyncNotification {
            file_sha256: Some(self.file_sha256.to_vec()),
            file_length: Some(self.file_length),
            media_key: Some(self.media_key.to_vec()),
            file_enc_sha256: self.file_enc_sha256.map(|h| h.to_vec()),
            direct_path: Some(self.direct_path.clone()),
            sync_type: Some(self.sync_type.into()),
            chunk_order: Some(self.chunk_order),
            original_message_id: None,
            progress: Some(self.progress),
        }
    }

    pub fn media_key(&self) -> MediaKey {
        MediaKey::from_bytes(self.media_key)
    }
}

/// A zlib inflater that refuses to produce more than `limit` bytes: a small
/// hostile blob cannot expand into memory.
pub struct Inflater {
    inner: Decompress,
    out: Vec<u8>,
    limit: usize,
    ended: bool,
}

impl Inflater {
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Decompress::new(true),
            out: Vec::new(),
            limit,
            ended: false,
        }
    }

    /// Inflates the next compressed bytes.
    pub fn update(&mut self, mut input: &[u8]) -> Result<(), HistoryError> {
        while !input.is_empty() {
            if self.ended {
                return Err(HistoryError::TrailingData);
            }
            if self.out.len() == self.out.capacity() {
                // One byte past the limit tells "exactly at" from "over".
                let room = (self.limit + 1).saturating_sub(self.out.len());
                if room == 0 {
                    return Err(HistoryError::TooLarge { limit: self.limit });
                }
                self.out.reserve_exact(room.min(INFLATE_STEP));
            }
            let (in_before, out_before) = (self.inner.total_in(), self.out.len());
            let status = self
                .inner
                .decompress_vec(input, &mut self.out, FlushDecompress::None)
                .map_err(|e| HistoryError::Inflate(e.to_string()))?;
            if self.out.len() > self.limit {
                return Err(HistoryError::TooLarge { limit: self.limit });
            }
            let used = usize::try_from(self.inner.total_in() - in_before).unwrap_or(usize::MAX);
            input = input.get(used..).unwrap_or_default();
            match status {
                Status::StreamEnd => self.ended = true,
                Status::Ok | Status::BufError => {
                    let stalled = used == 0 && self.out.len() == out_before;
                    if stalled && self.out.len() < self.out.capacity() {
                        return Err(HistoryError::Inflate("no progress".into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The inflated bytes, once the stream ended.
    pub fn finish(mut self) -> Result<Vec<u8>, HistoryError> {
        if !self.ended {
            // Output may still be buffered inside the decoder.
            self.update(&[])?;
            loop {
                if self.out.len() == self.out.capacity() {
                    let room = (self.limit + 1).saturating_sub(self.out.len());
                    if room == 0 {
                        return Err(HistoryError::TooLarge { limit: self.limit });
                    }
                    self.out.reserve_exact(room.min(INFLATE_STEP));
                }
                let before = self.out.len();
                let status = self
                    .inner
                    .decompress_vec(&[], &mut self.out, FlushDecompress::Finish)
                    .map_err(|e| HistoryError::Inflate(e.to_string()))?;
                if self.out.len() > self.limit {
                    return Err(HistoryError::TooLarge { limit: self.limit });
                }
                match status {
                    Status::StreamEnd => break,
                    _ if self.out.len() == before => return Err(HistoryError::Truncated),
                    _ => {}
                }
            }
        }
        Ok(self.out)
    }
}

/// One-shot inflate of a whole blob (tests, small inputs).
pub fn inflate(compressed: &[u8], limit: usize) -> Result<Vec<u8>, HistoryError> {
    let mut inflater = Inflater::new(limit);
    inflater.update(compressed)?;
    inflater.finish()
}

/// A message of a history page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryMessage {
    pub id: String,
    /// The sender's user JID as the phone recorded it (empty: the chat's
    /// peer, or this account for `from_me`).
    pub sender: String,
    pub timestamp_s: u64,
    pub from_me: bool,
    pub text: Option<String>,
    pub kind: String,
    pub push_name: Option<String>,
}

/// A chat of a history page with its messages in the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryChat {
    pub chat: String,
    pub name: Option<String>,
    pub unread_count: u32,
    pub messages: Vec<HistoryMessage>,
}

/// One page of a chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryPage {
    pub sync_type: HistorySyncType,
    pub chunk_order: u32,
    pub progress: u32,
    /// From 0 within the chunk.
    pub index: u32,
    pub last: bool,
    pub chats: Vec<HistoryChat>,
    /// (user JID, push name).
    pub push_names: Vec<(String, String)>,
}

impl HistoryPage {
    pub fn message_count(&self) -> usize {
        self.chats.iter().map(|c| c.messages.len()).sum()
    }
}

/// Reads pages out of one inflated `HistorySync`, decoding a conversation
/// only when the page being built reaches it.
pub struct PageReader<'a> {
    rest: &'a [u8],
    sync_type: HistorySyncType,
    chunk_order: u32,
    progress: u32,
    /// The conversation being paged: its header and messages not yet paged.
    current: Option<(HistoryChat, VecDeque<HistorySyncMsg>)>,
    next_index: u32,
    done: bool,
    max_messages: usize,
    max_bytes: usize,
}

impl<'a> PageReader<'a> {
    /// Reads the chunk's header fields (a first pass that skips the
    /// conversations) and prepares to page.
    pub fn new(inflated: &'a [u8]) -> Result<Self, HistoryError> {
        let mut sync_type = None;
        let mut chunk_order = 0;
        let mut progress = 0;
        let mut fields = Fields(inflated);
        while let Some(field) = fields.next_field()? {
            match field {
                (1, Value::Varint(v)) => {
                    sync_type = Some(
                        i32::try_from(v)
                            .ok()
                            .and_then(|t| HistorySyncType::try_from(t).ok())
                            .ok_or_else(|| HistoryError::Decode("unknown sync type".into()))?,
                    )
                }
                (5, Value::Varint(v)) => chunk_order = u32::try_from(v).unwrap_or(u32::MAX),
                (6, Value::Varint(v)) => progress = u32::try_from(v).unwrap_or(u32::MAX),
                (1 | 5 | 6, _) => return Err(HistoryError::Decode("bad header field".into())),
                _ => {}
            }
        }
        Ok(Self {
            rest: inflated,
            sync_type: sync_type.ok_or_else(|| HistoryError::Decode("no sync type".into()))?,
            chunk_order,
            progress,
            current: None,
            next_index: 0,
            done: false,
            max_messages: MAX_PAGE_MESSAGES,
            max_bytes: MAX_PAGE_BYTES,
        })
    }

    /// Smaller pages (tests).
    pub fn with_limits(mut self, max_messages: usize, max_bytes: usize) -> Self {
        self.max_messages = max_messages.max(1);
        self.max_bytes = max_bytes.max(1);
        self
    }

    pub fn sync_type(&self) -> HistorySyncType {
        self.sync_type
    }

    pub fn chunk_order(&self) -> u32 {
        self.chunk_order
    }

    pub fn progress(&self) -> u32 {
        self.progress
    }

    /// The next page; `None` after the last. A chunk with no content
    /// still gives one (empty, last) page, so every chunk is reported.
    pub fn next_page(&mut self) -> Option<Result<HistoryPage, HistoryError>> {
        if self.done {
            return None;
        }
        let result = self.build_page();
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }

    fn build_page(&mut self) -> Result<HistoryPage, HistoryError> {
        let mut chats: Vec<HistoryChat> = Vec::new();
        let mut push_names = Vec::new();
        let mut messages = 0;
        let mut bytes = 0;
        let full = |messages: usize, bytes: usize, this: &Self| {
            messages >= this.max_messages || bytes >= this.max_bytes
        };
        loop {
            if let Some((chat, pending)) = &mut self.current {
                let mut page_chat = HistoryChat {
                    messages: Vec::new(),
                    ..chat.clone()
                };
                bytes += chat.chat.len() + chat.name.as_ref().map_or(0, String::len);
                while let Some(raw) = pending.front() {
                    let Some(message) = history_message(raw) else {
                        pending.pop_front();
                        continue;
                    };
                    let size = message_size(&message);
                    let has_room = messages < self.max_messages
                        && (bytes + size <= self.max_bytes || messages == 0);
                    if !has_room {
                        break;
                    }
                    pending.pop_front();
                    messages += 1;
                    bytes += size;
                    page_chat.messages.push(message);
                }
                let finished = pending.is_empty();
                if !page_chat.messages.is_empty() || finished {
                    chats.push(page_chat);
                }
                if finished {
                    self.current = None;
                } else {
                    break;
                }
            }
            if full(messages, bytes, self) {
                break;
            }
            let mut fields = Fields(self.rest);
            let Some(field) = fields.next_field()? else {
                break;
            };
            self.rest = fields.0;
            match field {
                (2, Value::Bytes(b)) => {
                    let conversation = Conversation::decode(b)
                        .map_err(|e| HistoryError::Decode(format!("conversation: {e}")))?;
                    let chat = HistoryChat {
                        chat: capped(conversation.id),
                        name: conversation.name.map(capped).filter(|n| !n.is_empty()),
                        unread_count: conversation.unread_count.unwrap_or_default(),
                        messages: Vec::new(),
                    };
                    self.current = Some((chat, conversation.messages.into()));
                }
                (7, Value::Bytes(b)) => {
                    let name = Pushname::decode(b)
                        .map_err(|e| HistoryError::Decode(format!("push name: {e}")))?;
                    if let (Some(id), Some(name)) = (name.id, name.pushname) {
                        bytes += id.len() + name.len() + 8;
                        push_names.push((capped(id), capped(name)));
                    }
                }
                (2 | 7, _) => return Err(HistoryError::Decode("bad repeated field".into())),
                _ => {}
            }
        }
        let last = self.current.is_none() && self.rest.is_empty();
        self.done = last;
        let index = self.next_index;
        self.next_index += 1;
        Ok(HistoryPage {
            sync_type: self.sync_type,
            chunk_order: self.chunk_order,
            progress: self.progress,
            index,
            last,
            chats,
            push_names,
        })
    }
}

/// The page entry of a stored message; `None` when it has no id.
fn history_message(raw: &HistorySyncMsg) -> Option<HistoryMessage> {
    let info = raw.message.as_ref()?;
    let key = &info.key;
    let id = key.id.clone().filter(|id| !id.is_empty())?;
    let (kind, text) = match &info.message {
        Some(message) => match Content::decode(&message.encode_to_vec()) {
            Ok(content) => (content.kind, content.text),
            Err(_) => ("unknown".to_owned(), None),
        },
        None => ("unavailable".to_owned(), None),
    };
    let text = text.map(|mut t| {
        if t.len() > crate::wa::messaging::MAX_TEXT_BYTES {
            let mut end = crate::wa::messaging::MAX_TEXT_BYTES;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
        t
    });
    let sender = info
        .participant
        .clone()
        .or_else(|| key.participant.clone())
        .map(capped)
        .unwrap_or_default();
    Some(HistoryMessage {
        id: capped(id),
        sender,
        timestamp_s: info.message_timestamp.unwrap_or_default(),
        from_me: key.from_me.unwrap_or_default(),
        text,
        kind,
        push_name: info.push_name.clone().map(capped).filter(|n| !n.is_empty()),
    })
}

fn message_size(m: &HistoryMessage) -> usize {
    MESSAGE_OVERHEAD
        + m.id.len()
        + m.sender.len()
        + m.kind.len()
        + m.text.as_ref().map_or(0, String::len)
        + m.push_name.as_ref().map_or(0, String::len)
}

/// A string field cut to [`MAX_FIELD_BYTES`] (at a character boundary).
fn capped(mut s: String) -> String {
    if s.len() > MAX_FIELD_BYTES {
        let mut end = MAX_FIELD_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// A protobuf field's value, as far as the walker needs it.
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Walks the top-level fields of an encoded message without decoding the
/// nested ones. Every length is checked against what remains.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>, HistoryError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = key >> 3;
        if tag == 0 {
            return Err(HistoryError::Decode("field number 0".into()));
        }
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| HistoryError::Decode("length too large".into()))?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Value::Fixed
            }
            other => return Err(HistoryError::Decode(format!("wire type {other}"))),
        };
        Ok(Some((tag, value)))
    }

    fn varint(&mut self) -> Result<u64, HistoryError> {
        let mut value = 0u64;
        for shift in 0..10u32 {
            let (&byte, rest) = self
                .0
                .split_first()
                .ok_or_else(|| HistoryError::Decode("truncated varint".into()))?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(HistoryError::Decode("varint too long".into()))
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], HistoryError> {
        if len > self.0.len() {
            return Err(HistoryError::Decode("field runs past the end".into()));
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;
