//! What the engine reads ([`KeyStore`], implemented by the owner over its
//! store) and writes ([`Change`], committed by the owner), and the overlay
//! ([`Txn`]) that lets one step see its own uncommitted writes.

use std::collections::{HashMap, HashSet};

use crate::wa::appstate::{CollectionRecord, SharedKey};
use crate::wa::signal::{PreKey, ProtocolAddress, SenderKeyName, SenderKeyRecord, SessionRecord};

/// A store read failed. `retryable` says whether the same read may work
/// later (a busy or unreachable store) or not (corrupt data).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct KeyError {
    pub message: String,
    pub retryable: bool,
}

/// Identifies an incoming message for deduplication: (chat, sender
/// account, id), as WhatsApp clients key messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DedupeKey(pub String);

/// Stored with every sent message so a retry receipt can be answered.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SentRecord {
    #[prost(string, tag = "1")]
    pub chat: String,
    /// The `Message` protobuf as sent to the peer.
    #[prost(bytes = "vec", tag = "2")]
    pub message: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub sent_at_ms: u64,
}

/// Stored per idempotency key, from the moment the message was encrypted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdempotencyRecord {
    #[prost(string, tag = "1")]
    pub message_id: String,
    /// 0 until the server acknowledged it.
    #[prost(uint64, tag = "2")]
    pub acked_at_s: u64,
    /// SHA-256 of the request (recipient and content): a key reused for
    /// another message is refused. Empty in records of older versions.
    #[prost(bytes = "vec", tag = "3")]
    pub fingerprint: Vec<u8>,
    /// The encoded `<message>` stanza as first written, kept until the
    /// server acknowledges it so a retry sends the very same bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub stanza: Vec<u8>,
    /// When the stanza was first written, in ms, while the record keeps it
    /// (0 once acknowledged: `acked_at_s` then dates it, and in records of
    /// older versions).
    #[prost(uint64, tag = "5")]
    pub created_at_ms: u64,
    /// The idempotency key itself, while the record keeps the stanza (its
    /// name is a hash of the key): with it a send an earlier connection
    /// left unacknowledged is written again at the next login. Empty once
    /// acknowledged or refused by the server, and in records of older
    /// versions.
    #[prost(string, tag = "6")]
    pub key: String,
}

impl IdempotencyRecord {
    /// When the record was last written (its ack, else its first write),
    /// in ms; `None` for a record of an older version not yet acknowledged.
    pub fn written_at_ms(&self) -> Option<u64> {
        let acked_ms = self.acked_at_s.saturating_mul(1000);
        Some(acked_ms.max(self.created_at_ms)).filter(|&at| at > 0)
    }

    /// Whether the record is of a send written but not acknowledged that
    /// can be written again as it was (stanza and key kept).
    pub fn awaits_ack(&self) -> bool {
        self.acked_at_s == 0 && !self.stanza.is_empty() && !self.key.is_empty()
    }
}

/// What downloading a received message's media needs, stored with the
/// message's event (keyed by message id). The media key makes it a secret:
/// `Debug` leaves it out.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct MediaRecord {
    /// The `<enc mediatype>` name of its type (`image`, `ptt`, …).
    #[prost(string, tag = "1")]
    pub media_type: String,
    #[prost(string, tag = "2")]
    pub direct_path: String,
    #[prost(bytes = "vec", tag = "3")]
    pub media_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub file_sha256: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    pub file_enc_sha256: Vec<u8>,
    #[prost(uint64, tag = "6")]
    pub file_length: u64,
    #[prost(string, tag = "7")]
    pub mimetype: String,
    /// The chat and sender (a media retry receipt names them).
    #[prost(string, tag = "8")]
    pub chat: String,
    #[prost(string, tag = "9")]
    pub sender: String,
    #[prost(bool, tag = "10")]
    pub from_me: bool,
    #[prost(string, tag = "11")]
    pub file_name: String,
}

impl std::fmt::Debug for MediaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRecord")
            .field("media_type", &self.media_type)
            .field("file_length", &self.file_length)
            .finish_non_exhaustive()
    }
}

/// A history chunk announced by the account's phone whose pages are not
/// all committed yet, kept (with the ratchet step that decrypted its
/// notification) until they are: a redelivered notification resumes it
/// after the pages already committed. The media key makes it a secret.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct PendingHistory {
    /// The `HistorySyncNotification` as received.
    #[prost(bytes = "vec", tag = "1")]
    pub notification: Vec<u8>,
    /// Pages of the chunk already committed.
    #[prost(uint32, tag = "2")]
    pub pages_done: u32,
}

impl std::fmt::Debug for PendingHistory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingHistory")
            .field("pages_done", &self.pages_done)
            .finish_non_exhaustive()
    }
}

/// A poll's secret and options, kept by the poll's message id so the votes
/// on it can be opened (and this account's own cast). The secret makes it
/// a secret: `Debug` leaves it out.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct PollRecord {
    /// The poll's `messageSecret` (32 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub secret: Vec<u8>,
    /// Who made it: a user JID without device.
    #[prost(string, tag = "2")]
    pub creator: String,
    #[prost(string, repeated, tag = "3")]
    pub options: Vec<String>,
    #[prost(uint32, tag = "4")]
    pub selectable: u32,
}

impl std::fmt::Debug for PollRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollRecord")
            .field("options", &self.options.len())
            .finish_non_exhaustive()
    }
}

/// A contact as the account's app-state names it (the phone's address
/// book), by user JID.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ContactRecord {
    #[prost(string, optional, tag = "1")]
    pub full_name: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub first_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub push_name: Option<String>,
}

/// A chat's settings as the account's app-state keeps them, by chat JID.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ChatRecord {
    #[prost(bool, tag = "1")]
    pub archived: bool,
    #[prost(bool, tag = "2")]
    pub pinned: bool,
    /// Unix milliseconds the mute ends, -1 for good; unset: not muted.
    #[prost(int64, optional, tag = "3")]
    pub muted_until_ms: Option<i64>,
    /// Marked unread on a device.
    #[prost(bool, tag = "4")]
    pub unread: bool,
}

/// Keys the engine reads. Every call may hit a store; implementations cache.
pub trait KeyStore {
    fn session(&mut self, address: &ProtocolAddress) -> Result<Option<SessionRecord>, KeyError>;
    fn prekey(&mut self, id: u32) -> Result<Option<PreKey>, KeyError>;
    /// The id the next generated prekey gets (1 when none was generated).
    fn next_prekey_id(&mut self) -> Result<u32, KeyError>;
    fn sender_key(&mut self, name: &SenderKeyName) -> Result<Option<SenderKeyRecord>, KeyError>;
    /// Whether a message with this key was already committed. `t_s` is its
    /// server timestamp (implementations may keep recent keys in memory and
    /// ask their store only for older ones).
    fn seen(&mut self, key: &DedupeKey, t_s: u64) -> Result<bool, KeyError>;
    fn sent(&mut self, message_id: &str) -> Result<Option<SentRecord>, KeyError>;
    fn idempotency(&mut self, key: &str) -> Result<Option<IdempotencyRecord>, KeyError>;
    fn phone_of_lid(&mut self, lid_user: &str) -> Result<Option<String>, KeyError>;
    /// The LID user of a phone number (the reverse of [`KeyStore::phone_of_lid`]).
    fn lid_of_phone(&mut self, phone: &str) -> Result<Option<String>, KeyError>;
    /// The devices that hold our current sender key of `group`.
    fn sender_key_memory(&mut self, group: &str) -> Result<Option<SenderKeyMemory>, KeyError>;
    /// The pending history chunk of a notification (by its dedupe key).
    fn pending_history(&mut self, key: &DedupeKey) -> Result<Option<PendingHistory>, KeyError>;
    /// An app-state sync key the phone shared, by id.
    fn app_state_key(&mut self, id: &[u8]) -> Result<Option<SharedKey>, KeyError>;
    /// An app-state collection's state (version, LTHash, entries).
    fn app_state_collection(&mut self, name: &str) -> Result<Option<CollectionRecord>, KeyError>;
    fn contact(&mut self, jid: &str) -> Result<Option<ContactRecord>, KeyError>;
    fn chat_settings(&mut self, chat: &str) -> Result<Option<ChatRecord>, KeyError>;
    /// A poll this account made or received, by its message id.
    fn poll(&mut self, id: &str) -> Result<Option<PollRecord>, KeyError>;
}

/// Which devices (JIDs with device ids) were given our current sender key
/// of a group, so a send distributes it only to those that lack it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SenderKeyMemory {
    #[prost(string, repeated, tag = "1")]
    pub devices: Vec<String>,
}

/// One write the owner commits.
#[derive(Clone, Debug)]
pub enum Change {
    Session(ProtocolAddress, Box<SessionRecord>),
    Prekey(Box<PreKey>),
    PrekeyUsed(u32),
    NextPrekeyId(u32),
    SenderKey(SenderKeyName, Box<SenderKeyRecord>),
    /// A message committed; `t_s` is its server timestamp.
    Seen {
        key: DedupeKey,
        t_s: u64,
        at_ms: u64,
    },
    Sent(String, SentRecord),
    Idempotency(String, IdempotencyRecord),
    Lid {
        lid_user: String,
        phone: String,
    },
    SenderKeyMemory(String, SenderKeyMemory),
    /// A received message's media, by message id (see [`MediaRecord`]).
    Media(String, MediaRecord),
    /// A history notification's chunk to fetch (see [`PendingHistory`]);
    /// `None` once all its pages are committed.
    History(DedupeKey, Option<PendingHistory>),
    /// An app-state sync key the phone shared.
    AppStateKey(SharedKey),
    /// An app-state collection's state, by collection name.
    AppStateCollection(String, CollectionRecord),
    Contact(String, ContactRecord),
    ChatSettings(String, ChatRecord),
    /// A poll's secret and options, by its message id.
    Poll(String, PollRecord),
}

/// Reads through to a [`KeyStore`] with the step's own writes on top.
pub struct Txn<'a> {
    keys: &'a mut dyn KeyStore,
    sessions: HashMap<ProtocolAddress, SessionRecord>,
    sender_keys: HashMap<SenderKeyName, SenderKeyRecord>,
    used_prekeys: HashSet<u32>,
    seen: HashSet<DedupeKey>,
    lids: HashMap<String, String>,
    /// The reverse of `lids`: LID users by phone number.
    phones: HashMap<String, String>,
    idempotency: HashMap<String, IdempotencyRecord>,
    sender_key_memory: HashMap<String, SenderKeyMemory>,
    next_prekey: Option<u32>,
    app_state_keys: HashMap<Vec<u8>, SharedKey>,
    collections: HashMap<String, CollectionRecord>,
    contacts: HashMap<String, ContactRecord>,
    chats: HashMap<String, ChatRecord>,
    /// Writes in order; the maps above are their latest values.
    log: Vec<Change>,
}

impl<'a> Txn<'a> {
    pub fn new(keys: &'a mut dyn KeyStore) -> Self {
        Self {
            keys,
            sessions: HashMap::new(),
            sender_keys: HashMap::new(),
            used_prekeys: HashSet::new(),
            seen: HashSet::new(),
            lids: HashMap::new(),
            phones: HashMap::new(),
            idempotency: HashMap::new(),
            sender_key_memory: HashMap::new(),
            next_prekey: None,
            app_state_keys: HashMap::new(),
            collections: HashMap::new(),
            contacts: HashMap::new(),
            chats: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// The writes, with repeated writes of one record folded into the last.
    pub fn into_changes(self) -> Vec<Change> {
        let mut out = Vec::with_capacity(self.log.len());
        let mut sessions = self.sessions;
        let mut sender_keys = self.sender_keys;
        let mut idempotency = self.idempotency;
        let mut memory = self.sender_key_memory;
        let mut collections = self.collections;
        let mut contacts = self.contacts;
        let mut chats = self.chats;
        for change in self.log {
            match change {
                Change::Session(address, _) => {
                    if let Some(record) = sessions.remove(&address) {
                        out.push(Change::Session(address, Box::new(record)));
                    }
                }
                Change::SenderKey(name, _) => {
                    if let Some(record) = sender_keys.remove(&name) {
                        out.push(Change::SenderKey(name, Box::new(record)));
                    }
                }
                Change::Idempotency(key, _) => {
                    if let Some(record) = idempotency.remove(&key) {
                        out.push(Change::Idempotency(key, record));
                    }
                }
                Change::SenderKeyMemory(group, _) => {
                    if let Some(record) = memory.remove(&group) {
                        out.push(Change::SenderKeyMemory(group, record));
                    }
                }
                Change::AppStateCollection(name, _) => {
                    if let Some(record) = collections.remove(&name) {
                        out.push(Change::AppStateCollection(name, record));
                    }
                }
                Change::Contact(jid, _) => {
                    if let Some(record) = contacts.remove(&jid) {
                        out.push(Change::Contact(jid, record));
                    }
                }
                Change::ChatSettings(chat, _) => {
                    if let Some(record) = chats.remove(&chat) {
                        out.push(Change::ChatSettings(chat, record));
                    }
                }
                other => out.push(other),
            }
        }
        out
    }

    /// The session of `address`. A phone number's device whose LID is
    /// known keeps its session under the LID's address (`user_1`), as
    /// WhatsApp clients do: one peer device, one session, whichever
    /// address the wire uses. A session made before the LID was known is
    /// still under the phone number's address; it is read from there
    /// until the next write puts it under the LID's (the migration).
    pub fn session(
        &mut self,
        address: &ProtocolAddress,
    ) -> Result<Option<SessionRecord>, KeyError> {
        let home = self.home_of(address)?;
        if let Some(record) = self.stored_session(&home)? {
            return Ok(Some(record));
        }
        match self.phone_address_of(&home)? {
            Some(legacy) => self.stored_session(&legacy),
            None => Ok(None),
        }
    }

    /// Writes the session of `address` (under its LID's address, when known).
    pub fn put_session(&mut self, address: ProtocolAddress, record: SessionRecord) {
        // A failed read leaves the address as it is: the record is then
        // found through the migration read above.
        let home = self.home_of(&address).unwrap_or(address);
        if self.sessions.insert(home.clone(), record).is_none() {
            self.log.push(Change::Session(home, Box::default()));
        }
    }

    fn stored_session(
        &mut self,
        address: &ProtocolAddress,
    ) -> Result<Option<SessionRecord>, KeyError> {
        match self.sessions.get(address) {
            Some(record) => Ok(Some(record.clone())),
            None => self.keys.session(address),
        }
    }

    /// The address a session is kept under: the LID's for a phone number
    /// whose LID is known, else `address` itself.
    fn home_of(&mut self, address: &ProtocolAddress) -> Result<ProtocolAddress, KeyError> {
        if !is_phone_name(&address.name) {
            return Ok(address.clone());
        }
        Ok(match self.lid_of_phone(&address.name)? {
            Some(lid) => ProtocolAddress::new(format!("{lid}{LID_SUFFIX}"), address.device),
            None => address.clone(),
        })
    }

    /// The phone number's address of a LID's address, when the phone
    /// number is known.
    fn phone_address_of(
        &mut self,
        address: &ProtocolAddress,
    ) -> Result<Option<ProtocolAddress>, KeyError> {
        let Some(lid) = address.name.strip_suffix(LID_SUFFIX) else {
            return Ok(None);
        };
        Ok(self
            .phone_of_lid(lid)?
            .map(|phone| ProtocolAddress::new(phone, address.device)))
    }

    pub fn prekey(&mut self, id: u32) -> Result<Option<PreKey>, KeyError> {
        if self.used_prekeys.contains(&id) {
            return Ok(None);
        }
        self.keys.prekey(id)
    }

    pub fn use_prekey(&mut self, id: u32) {
        if self.used_prekeys.insert(id) {
            self.log.push(Change::PrekeyUsed(id));
        }
    }

    pub fn next_prekey_id(&mut self) -> Result<u32, KeyError> {
        match self.next_prekey {
            Some(next) => Ok(next),
            None => self.keys.next_prekey_id(),
        }
    }

    /// Stores a generated prekey and moves the counter past it.
    pub fn put_prekey(&mut self, key: PreKey, next: u32) {
        self.log.push(Change::Prekey(Box::new(key)));
        self.next_prekey = Some(next);
        self.log.push(Change::NextPrekeyId(next));
    }

    pub fn sender_key(
        &mut self,
        name: &SenderKeyName,
    ) -> Result<Option<SenderKeyRecord>, KeyError> {
        match self.sender_keys.get(name) {
            Some(record) => Ok(Some(record.clone())),
            None => self.keys.sender_key(name),
        }
    }

    pub fn put_sender_key(&mut self, name: SenderKeyName, record: SenderKeyRecord) {
        if self.sender_keys.insert(name.clone(), record).is_none() {
            self.log.push(Change::SenderKey(name, Box::default()));
        }
    }

    pub fn seen(&mut self, key: &DedupeKey, t_s: u64) -> Result<bool, KeyError> {
        if self.seen.contains(key) {
            return Ok(true);
        }
        self.keys.seen(key, t_s)
    }

    pub fn mark_seen(&mut self, key: DedupeKey, t_s: u64, at_ms: u64) {
        if self.seen.insert(key.clone()) {
            self.log.push(Change::Seen { key, t_s, at_ms });
        }
    }

    pub fn sent(&mut self, message_id: &str) -> Result<Option<SentRecord>, KeyError> {
        let pending = self.log.iter().rev().find_map(|c| match c {
            Change::Sent(id, record) if id == message_id => Some(record.clone()),
            _ => None,
        });
        match pending {
            Some(record) => Ok(Some(record)),
            None => self.keys.sent(message_id),
        }
    }

    pub fn put_sent(&mut self, message_id: String, record: SentRecord) {
        self.log.push(Change::Sent(message_id, record));
    }

    pub fn idempotency(&mut self, key: &str) -> Result<Option<IdempotencyRecord>, KeyError> {
        match self.idempotency.get(key) {
            Some(record) => Ok(Some(record.clone())),
            None => self.keys.idempotency(key),
        }
    }

    pub fn put_idempotency(&mut self, key: String, record: IdempotencyRecord) {
        if self.idempotency.insert(key.clone(), record).is_none() {
            self.log
                .push(Change::Idempotency(key, IdempotencyRecord::default()));
        }
    }

    pub fn phone_of_lid(&mut self, lid_user: &str) -> Result<Option<String>, KeyError> {
        match self.lids.get(lid_user) {
            Some(phone) => Ok(Some(phone.clone())),
            None => self.keys.phone_of_lid(lid_user),
        }
    }

    pub fn lid_of_phone(&mut self, phone: &str) -> Result<Option<String>, KeyError> {
        match self.phones.get(phone) {
            Some(lid) => Ok(Some(lid.clone())),
            None => self.keys.lid_of_phone(phone),
        }
    }

    pub fn sender_key_memory(&mut self, group: &str) -> Result<SenderKeyMemory, KeyError> {
        match self.sender_key_memory.get(group) {
            Some(record) => Ok(record.clone()),
            None => Ok(self.keys.sender_key_memory(group)?.unwrap_or_default()),
        }
    }

    pub fn put_sender_key_memory(&mut self, group: String, record: SenderKeyMemory) {
        if self
            .sender_key_memory
            .insert(group.clone(), record)
            .is_none()
        {
            self.log
                .push(Change::SenderKeyMemory(group, SenderKeyMemory::default()));
        }
    }

    pub fn put_media(&mut self, message_id: String, record: MediaRecord) {
        self.log.push(Change::Media(message_id, record));
    }

    pub fn poll(&mut self, id: &str) -> Result<Option<PollRecord>, KeyError> {
        let pending = self.log.iter().rev().find_map(|c| match c {
            Change::Poll(poll, record) if poll == id => Some(record.clone()),
            _ => None,
        });
        match pending {
            Some(record) => Ok(Some(record)),
            None => self.keys.poll(id),
        }
    }

    pub fn put_poll(&mut self, id: String, record: PollRecord) {
        self.log.push(Change::Poll(id, record));
    }

    pub fn pending_history(&mut self, key: &DedupeKey) -> Result<Option<PendingHistory>, KeyError> {
        let pending = self.log.iter().rev().find_map(|c| match c {
            Change::History(k, record) if k == key => Some(record.clone()),
            _ => None,
        });
        match pending {
            Some(record) => Ok(record),
            None => self.keys.pending_history(key),
        }
    }

    pub fn put_pending_history(&mut self, key: DedupeKey, record: PendingHistory) {
        self.log.push(Change::History(key, Some(record)));
    }

    pub fn app_state_key(&mut self, id: &[u8]) -> Result<Option<SharedKey>, KeyError> {
        match self.app_state_keys.get(id) {
            Some(key) => Ok(Some(key.clone())),
            None => self.keys.app_state_key(id),
        }
    }

    pub fn put_app_state_key(&mut self, key: SharedKey) {
        self.app_state_keys.insert(key.id.clone(), key.clone());
        self.log.push(Change::AppStateKey(key));
    }

    pub fn app_state_collection(
        &mut self,
        name: &str,
    ) -> Result<Option<CollectionRecord>, KeyError> {
        match self.collections.get(name) {
            Some(record) => Ok(Some(record.clone())),
            None => self.keys.app_state_collection(name),
        }
    }

    pub fn put_app_state_collection(&mut self, name: String, record: CollectionRecord) {
        if self.collections.insert(name.clone(), record).is_none() {
            self.log.push(Change::AppStateCollection(
                name,
                CollectionRecord::default(),
            ));
        }
    }

    pub fn contact(&mut self, jid: &str) -> Result<Option<ContactRecord>, KeyError> {
        match self.contacts.get(jid) {
            Some(record) => Ok(Some(record.clone())),
            None => self.keys.contact(jid),
        }
    }

    pub fn put_contact(&mut self, jid: String, record: ContactRecord) {
        if self.contacts.insert(jid.clone(), record).is_none() {
            self.log
                .push(Change::Contact(jid, ContactRecord::default()));
        }
    }

    pub fn chat_settings(&mut self, chat: &str) -> Result<Option<ChatRecord>, KeyError> {
        match self.chats.get(chat) {
            Some(record) => Ok(Some(record.clone())),
            None => self.keys.chat_settings(chat),
        }
    }

    pub fn put_chat_settings(&mut self, chat: String, record: ChatRecord) {
        if self.chats.insert(chat.clone(), record).is_none() {
            self.log
                .push(Change::ChatSettings(chat, ChatRecord::default()));
        }
    }

    pub fn put_lid(&mut self, lid_user: String, phone: String) {
        self.phones.insert(phone.clone(), lid_user.clone());
        self.lids.insert(lid_user.clone(), phone.clone());
        self.log.push(Change::Lid { lid_user, phone });
    }
}

/// The suffix of a LID user's Signal address (its JID domain, 1).
const LID_SUFFIX: &str = "_1";

/// Whether a Signal address's name is a phone number (digits only; a LID's
/// carries its suffix).
fn is_phone_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}
