//! The message engine's keys over the store: the [`KeyStore`] the engine
//! reads through, with caches in front of the store, and the upkeep done
//! at each login (moving records of older versions to hashed names,
//! pruning old bookkeeping, loading the recent deduplication window and
//! the index of idempotency keys, `known_keys`) and daily while online
//! (pruning). The
//! names and layout of the records are `key_records`.
//!
//! Every call here blocks on the store: it runs on a blocking thread, inside
//! the one hop per step that the messenger makes.

use std::collections::HashMap;
use std::sync::Arc;

use zeroize::Zeroizing;

use super::known_keys::KnownKeys;
use crate::store::{Batch, SecretOp, SessionId, Store, StoreError};
use crate::wa::appstate::{CollectionRecord, SharedKey};
use crate::wa::creds::Credentials;
use crate::wa::crypto::KeyPair;
use crate::wa::messaging::{
    Change, ChatRecord, ContactRecord, DedupeKey, IdempotencyRecord, KeyError, KeyStore,
    MediaRecord, PendingHistory, PollRecord, SenderKeyMemory, SentRecord,
};
use crate::wa::signal::{PreKey, ProtocolAddress, SenderKeyName, SenderKeyRecord, SessionRecord};

use prost::Message as _;

use super::key_records::{
    self, prefix_of, prekey_name, seen_bytes, seen_value, Names, APP_STATE_KEY, CHAT, COLLECTION,
    CONTACT, HISTORY, IDEMPOTENCY, LEGACY, LID, MEDIA, NAMES_HASHED, PHONE_LID, POLL, PREKEY_NEXT,
    SEEN, SENDER_KEY, SENDER_KEY_MEMORY, SENT, SESSION,
};

/// Signal sessions (and sender keys) kept in memory per session.
const MAX_CACHED_RECORDS: usize = 256;
/// Prekeys (and the fact that one is used) kept in memory per session.
const MAX_CACHED_PREKEYS: usize = 64;
/// LID mappings kept in memory per session.
const MAX_CACHED_LIDS: usize = 1024;
/// Contacts kept in memory per session (each incoming message looks up its
/// sender's, for its push name).
const MAX_CACHED_CONTACTS: usize = 256;
/// Deduplication keys kept in memory per session; older ones are asked of
/// the store.
const MAX_SEEN_IN_MEMORY: usize = 16_384;
/// How far back the in-memory deduplication window reaches at load.
const SEEN_WINDOW_S: u64 = 24 * 3600;
/// Sent messages kept to answer retry receipts, and seen ids kept for
/// deduplication, by age.
const SENT_RETENTION_MS: u64 = 7 * 24 * 3_600_000;
const SEEN_RETENTION_MS: u64 = 30 * 24 * 3_600_000;
/// How long a Send's idempotency key is remembered, from its ack (or,
/// unacknowledged, from its first write): a retry within it is answered
/// from the first attempt, a key reused after it sends a new message.
pub(crate) const IDEMPOTENCY_RETENTION_MS: u64 = 7 * 24 * 3_600_000;

/// How often a session that stays online prunes its bookkeeping (a login
/// always does).
pub(crate) const UPKEEP_EVERY_MS: u64 = 24 * 3_600_000;

/// What a prune found besides what it removed.
pub(crate) struct Pruned {
    /// Deduplication keys of the last day (server time at or after
    /// `since_s`), with their server time.
    recent: HashMap<String, u64>,
    since_s: u64,
    /// Sends written but never acknowledged, oldest first.
    pub(crate) unacked: Vec<IdempotencyRecord>,
}

fn key_error(e: StoreError) -> KeyError {
    KeyError {
        retryable: e.is_retryable(),
        message: e.to_string(),
    }
}

/// Deduplication keys of recent messages: complete for every message whose
/// server time is at or after `since_s` (older ones are asked of the store).
struct SeenWindow {
    since_s: u64,
    keys: HashMap<String, u64>,
    /// The newest server time among `keys`.
    newest_s: u64,
    loaded: bool,
}

impl SeenWindow {
    fn insert(&mut self, name: String, t_s: u64) {
        if t_s < self.since_s {
            return;
        }
        self.keys.insert(name, t_s);
        self.newest_s = self.newest_s.max(t_s);
        // Keep memory bounded: move the window's start forward until the
        // keys fit, dropping only keys older than the new start.
        let newest = self.newest_s;
        while self.keys.len() > MAX_SEEN_IN_MEMORY && self.since_s < newest {
            self.since_s += (newest - self.since_s).div_ceil(2);
            let since = self.since_s;
            self.keys.retain(|_, t| *t >= since);
        }
    }
}

/// One session's keys: the store, caches in front of it, secret names.
pub(crate) struct StoreKeys {
    id: SessionId,
    store: Arc<dyn Store>,
    names: Names,
    sessions: HashMap<ProtocolAddress, Option<SessionRecord>>,
    sender_keys: HashMap<SenderKeyName, Option<SenderKeyRecord>>,
    lids: HashMap<String, Option<String>>,
    phone_lids: HashMap<String, Option<String>>,
    contacts: HashMap<String, Option<ContactRecord>>,
    /// One-time prekeys looked up, including used (deleted) ones: a peer
    /// keeps naming the prekey in every message until we answer it.
    prekeys: HashMap<u32, Option<PreKey>>,
    seen: SeenWindow,
    /// Names of the dedupe keys looked up in the current step, so the HMAC
    /// runs once per message (lookup, write, cache); emptied by `apply`.
    seen_names: HashMap<DedupeKey, String>,
    next_prekey: Option<u32>,
    /// The idempotency keys in the store, once `load` listed them.
    idempotency: KnownKeys,
}

impl StoreKeys {
    pub(crate) fn new(id: SessionId, store: Arc<dyn Store>, creds: &Credentials) -> Self {
        let mut keys = Self {
            id,
            store,
            names: Names::new(&creds.identity_key),
            sessions: HashMap::new(),
            sender_keys: HashMap::new(),
            lids: HashMap::new(),
            phone_lids: HashMap::new(),
            contacts: HashMap::new(),
            prekeys: HashMap::new(),
            seen: SeenWindow {
                since_s: u64::MAX,
                keys: HashMap::new(),
                newest_s: 0,
                loaded: false,
            },
            seen_names: HashMap::new(),
            next_prekey: None,
            idempotency: KnownKeys::default(),
        };
        // The account's own LID is in its credentials: every step checks
        // it is known (see `learn_lid`), which would otherwise cost two
        // store reads at each session's first step after a restart.
        if let Some(account) = &creds.account {
            let phone = crate::wa::message::phone_of(&account.jid.to_non_ad());
            if let (Some(phone), Some(lid)) = (phone, &account.lid) {
                let lid_user = lid.to_non_ad().user;
                keys.apply(vec![Change::Lid { lid_user, phone }]);
            }
        }
        keys
    }

    fn read(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
        self.store.secret(&self.id, name).map_err(key_error)
    }

    fn read_text(&self, name: &str) -> Result<Option<String>, KeyError> {
        Ok(self
            .read(name)?
            .and_then(|b| String::from_utf8(b.to_vec()).ok()))
    }

    /// Once per connection, at login: records of older versions move to
    /// hashed names, bookkeeping past its retention goes (`prune`), and the
    /// recent deduplication window is loaded. Returns the sends written but
    /// never acknowledged (their records keep the stanza and its key),
    /// oldest first, for the engine to write again.
    pub(crate) fn load(&mut self, now_ms: u64) -> Result<Vec<IdempotencyRecord>, StoreError> {
        if self.seen.loaded {
            return Ok(Vec::new());
        }
        self.migrate(now_ms)?;
        let Pruned {
            recent,
            unacked,
            since_s,
        } = self.prune(now_ms)?;
        self.seen = SeenWindow {
            since_s,
            keys: HashMap::new(),
            newest_s: since_s,
            loaded: true,
        };
        for (name, t_s) in recent {
            self.seen.insert(name, t_s);
        }
        Ok(unacked)
    }

    /// Removes the bookkeeping past its retention — deduplication keys,
    /// sent messages, idempotency keys — in one commit, and lists the
    /// idempotency keys left (`known_keys`). Run at each login and, for a
    /// session that stays online, every [`UPKEEP_EVERY_MS`] (see
    /// `Messenger::upkeep`), so the store does not grow with its uptime.
    pub(crate) fn prune(&mut self, now_ms: u64) -> Result<Pruned, StoreError> {
        let mut batch = Batch::default();
        let since_s = (now_ms / 1000).saturating_sub(SEEN_WINDOW_S);
        let mut recent = HashMap::new();
        for (name, value) in self.store.secrets_with_prefix(&self.id, &prefix_of(SEEN))? {
            let (at_ms, t_s) = seen_value(&value);
            if at_ms.saturating_add(SEEN_RETENTION_MS) < now_ms {
                batch.secrets.push(SecretOp::Delete { key: name });
            } else if t_s >= since_s {
                recent.insert(name, t_s);
            }
        }
        for (name, value) in self.store.secrets_with_prefix(&self.id, SENT)? {
            let at = SentRecord::decode(value.as_slice()).map_or(0, |r| r.sent_at_ms);
            if at.saturating_add(SENT_RETENTION_MS) < now_ms {
                batch.secrets.push(SecretOp::Delete { key: name });
            }
        }
        // A record that cannot be read or dated (an older version's,
        // unacknowledged) stays: forgetting it could send a message twice.
        let idempotency = prefix_of(IDEMPOTENCY);
        let mut idempotency_kept = Vec::new();
        let mut unacked = Vec::new();
        for (name, value) in self.store.secrets_with_prefix(&self.id, &idempotency)? {
            let record = IdempotencyRecord::decode(value.as_slice()).ok();
            let written = record.as_ref().and_then(IdempotencyRecord::written_at_ms);
            if written.is_some_and(|at| at.saturating_add(IDEMPOTENCY_RETENTION_MS) < now_ms) {
                batch.secrets.push(SecretOp::Delete { key: name });
                continue;
            }
            idempotency_kept.push(name);
            if let Some(record) = record.filter(IdempotencyRecord::awaits_ack) {
                unacked.push(record);
            }
        }
        unacked.sort_by_key(|r| r.created_at_ms);
        if !batch.secrets.is_empty() {
            self.store
                .commit(&self.id, batch)
                .inspect_err(super::events::count_fenced)?;
        }
        self.idempotency = KnownKeys::listed(idempotency_kept.iter().map(String::as_str));
        Ok(Pruned {
            recent,
            unacked,
            since_s,
        })
    }

    /// Moves records kept under identifiers in clear by older versions.
    /// A session whose records were moved once carries a marker, so later
    /// loads read one record instead of scanning each old prefix.
    fn migrate(&mut self, now_ms: u64) -> Result<(), StoreError> {
        if self.store.secret(&self.id, NAMES_HASHED)?.is_some() {
            return Ok(());
        }
        let mut batch = Batch::default();
        for (prefix, kind) in LEGACY {
            for (name, value) in self.store.secrets_with_prefix(&self.id, prefix)? {
                let ident = name.get(prefix.len()..).unwrap_or_default();
                let value = if kind == SEEN {
                    // Older versions kept only when it was committed.
                    let (at_ms, _) = seen_value(&value);
                    seen_bytes(at_ms, at_ms / 1000)
                } else {
                    value
                };
                batch.secrets.push(SecretOp::Put {
                    key: self.names.of(kind, ident),
                    value,
                });
                batch.secrets.push(SecretOp::Delete { key: name });
            }
        }
        if !batch.secrets.is_empty() {
            tracing::info!(session = %self.id, records = batch.secrets.len() / 2, "secret names moved to the hashed form");
        }
        batch.secrets.push(SecretOp::Put {
            key: NAMES_HASHED.to_owned(),
            value: Zeroizing::new(now_ms.to_be_bytes().to_vec()),
        });
        self.store
            .commit(&self.id, batch)
            .inspect_err(super::events::count_fenced)
            .map(|_| ())
    }

    /// The store writes for `changes`.
    pub(crate) fn batch(&self, changes: &[Change]) -> Batch {
        key_records::batch(&self.names, &self.seen_names, changes)
    }

    /// `changes` were committed: the caches follow.
    pub(crate) fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            match change {
                Change::Session(address, record) => bounded_insert(
                    &mut self.sessions,
                    address,
                    Some(*record),
                    MAX_CACHED_RECORDS,
                ),
                Change::SenderKey(name, record) => bounded_insert(
                    &mut self.sender_keys,
                    name,
                    Some(*record),
                    MAX_CACHED_RECORDS,
                ),
                Change::NextPrekeyId(next) => self.next_prekey = Some(next),
                Change::Seen { key, t_s, .. } => {
                    let name = match self.seen_names.remove(&key) {
                        Some(name) => name,
                        None => self.names.of(SEEN, &key.0),
                    };
                    self.seen.insert(name, t_s);
                }
                Change::Lid { lid_user, phone } => {
                    let (lid, number) = (lid_user.clone(), phone.clone());
                    bounded_insert(&mut self.lids, lid_user, Some(phone), MAX_CACHED_LIDS);
                    bounded_insert(&mut self.phone_lids, number, Some(lid), MAX_CACHED_LIDS);
                }
                Change::Prekey(key) => {
                    bounded_insert(&mut self.prekeys, key.id, Some(*key), MAX_CACHED_PREKEYS)
                }
                Change::PrekeyUsed(id) => {
                    bounded_insert(&mut self.prekeys, id, None, MAX_CACHED_PREKEYS)
                }
                Change::Contact(jid, record) => {
                    bounded_insert(&mut self.contacts, jid, Some(record), MAX_CACHED_CONTACTS)
                }
                Change::Idempotency(key, _) => {
                    self.idempotency.insert(&self.names.of(IDEMPOTENCY, &key));
                }
                Change::Sent(..)
                | Change::SenderKeyMemory(..)
                | Change::Media(..)
                | Change::History(..)
                | Change::AppStateKey(..)
                | Change::AppStateCollection(..)
                | Change::ChatSettings(..)
                | Change::Poll(..) => {}
            }
        }
        // Lookups that led to no write (duplicates, retries) end here.
        self.seen_names.clear();
    }

    /// The media record of a received message (never cached: downloads
    /// are rare next to messages).
    pub(crate) fn media(&self, message_id: &str) -> Result<Option<MediaRecord>, KeyError> {
        let Some(bytes) = self.read(&self.names.of(MEDIA, message_id))? else {
            return Ok(None);
        };
        MediaRecord::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| KeyError {
                message: format!("media record of {message_id:?} is unreadable: {e}"),
                retryable: false,
            })
    }

    /// A commit failed: cached values may be ahead of the store.
    pub(crate) fn forget(&mut self) {
        self.seen_names.clear();
        self.sessions.clear();
        self.prekeys.clear();
        self.sender_keys.clear();
        self.contacts.clear();
        self.next_prekey = None;
        self.idempotency.forget();
    }
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    value: V,
    max: usize,
) {
    if map.len() >= max && !map.contains_key(&key) {
        map.clear();
    }
    map.insert(key, value);
}

impl KeyStore for StoreKeys {
    fn session(&mut self, address: &ProtocolAddress) -> Result<Option<SessionRecord>, KeyError> {
        if let Some(cached) = self.sessions.get(address) {
            return Ok(cached.clone());
        }
        let stored = self.read(&self.names.of(SESSION, &address.to_string()))?;
        // An unreadable record is replaced by a fresh session on the next
        // prekey message.
        let record = stored.and_then(|bytes| SessionRecord::deserialize(&bytes).ok());
        bounded_insert(
            &mut self.sessions,
            address.clone(),
            record.clone(),
            MAX_CACHED_RECORDS,
        );
        Ok(record)
    }

    fn prekey(&mut self, id: u32) -> Result<Option<PreKey>, KeyError> {
        if let Some(cached) = self.prekeys.get(&id) {
            return Ok(cached.clone());
        }
        let stored = self.read(&prekey_name(id))?;
        let key = stored.and_then(|bytes| {
            let private: [u8; 32] = bytes.as_slice().try_into().ok()?;
            PreKey::new(id, KeyPair::from_private(private)).ok()
        });
        bounded_insert(&mut self.prekeys, id, key.clone(), MAX_CACHED_PREKEYS);
        Ok(key)
    }

    fn next_prekey_id(&mut self) -> Result<u32, KeyError> {
        if let Some(next) = self.next_prekey {
            return Ok(next);
        }
        let next = self
            .read(PREKEY_NEXT)?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map_or(1, u32::from_be_bytes);
        self.next_prekey = Some(next);
        Ok(next)
    }

    fn sender_key(&mut self, name: &SenderKeyName) -> Result<Option<SenderKeyRecord>, KeyError> {
        if let Some(cached) = self.sender_keys.get(name) {
            return Ok(cached.clone());
        }
        let stored = self.read(&self.names.of(SENDER_KEY, &name.to_string()))?;
        let record = stored.and_then(|b| SenderKeyRecord::deserialize(&b).ok());
        bounded_insert(
            &mut self.sender_keys,
            name.clone(),
            record.clone(),
            MAX_CACHED_RECORDS,
        );
        Ok(record)
    }

    fn seen(&mut self, key: &DedupeKey, t_s: u64) -> Result<bool, KeyError> {
        let name = self.names.of(SEEN, &key.0);
        self.seen_names.insert(key.clone(), name.clone());
        if self.seen.keys.contains_key(&name) {
            return Ok(true);
        }
        if self.seen.loaded && t_s >= self.seen.since_s {
            return Ok(false);
        }
        Ok(self.read(&name)?.is_some())
    }

    fn sent(&mut self, message_id: &str) -> Result<Option<SentRecord>, KeyError> {
        let stored = self.read(&format!("{SENT}{message_id}"))?;
        Ok(stored.and_then(|b| SentRecord::decode(b.as_slice()).ok()))
    }

    fn idempotency(&mut self, key: &str) -> Result<Option<IdempotencyRecord>, KeyError> {
        let name = self.names.of(IDEMPOTENCY, key);
        if !self.idempotency.may_hold(&name) {
            return Ok(None);
        }
        let stored = self.read(&name)?;
        Ok(stored.and_then(|b| IdempotencyRecord::decode(b.as_slice()).ok()))
    }

    fn phone_of_lid(&mut self, lid_user: &str) -> Result<Option<String>, KeyError> {
        if let Some(cached) = self.lids.get(lid_user) {
            return Ok(cached.clone());
        }
        let phone = self.read_text(&self.names.of(LID, lid_user))?;
        bounded_insert(
            &mut self.lids,
            lid_user.to_owned(),
            phone.clone(),
            MAX_CACHED_LIDS,
        );
        Ok(phone)
    }

    fn lid_of_phone(&mut self, phone: &str) -> Result<Option<String>, KeyError> {
        if let Some(cached) = self.phone_lids.get(phone) {
            return Ok(cached.clone());
        }
        let lid = self.read_text(&self.names.of(PHONE_LID, phone))?;
        bounded_insert(
            &mut self.phone_lids,
            phone.to_owned(),
            lid.clone(),
            MAX_CACHED_LIDS,
        );
        Ok(lid)
    }

    fn sender_key_memory(&mut self, group: &str) -> Result<Option<SenderKeyMemory>, KeyError> {
        // Read only when sending to a group (not cached: one read per send
        // to a group, next to that send's commit).
        let stored = self.read(&self.names.of(SENDER_KEY_MEMORY, group))?;
        Ok(stored.and_then(|b| SenderKeyMemory::decode(b.as_slice()).ok()))
    }

    fn pending_history(&mut self, key: &DedupeKey) -> Result<Option<PendingHistory>, KeyError> {
        // Read only for redelivered messages of the account's own devices.
        let stored = self.read(&self.names.of(HISTORY, &key.0))?;
        Ok(stored.and_then(|b| PendingHistory::decode(b.as_slice()).ok()))
    }

    // Other app-state records are read only while a sync is applied (not
    // cached: syncs are rare next to messages).
    fn app_state_key(&mut self, id: &[u8]) -> Result<Option<SharedKey>, KeyError> {
        let stored = self.read(&self.names.of(APP_STATE_KEY, &hex::encode(id)))?;
        Ok(stored.map(|data| SharedKey {
            id: id.to_vec(),
            data,
        }))
    }

    fn app_state_collection(&mut self, name: &str) -> Result<Option<CollectionRecord>, KeyError> {
        let Some(bytes) = self.read(&format!("{COLLECTION}{name}"))? else {
            return Ok(None);
        };
        // An unreadable state is an empty one: the collection syncs again
        // from its start.
        Ok(Some(
            CollectionRecord::decode(bytes.as_slice()).unwrap_or_default(),
        ))
    }

    fn contact(&mut self, jid: &str) -> Result<Option<ContactRecord>, KeyError> {
        if let Some(cached) = self.contacts.get(jid) {
            return Ok(cached.clone());
        }
        let stored = self.read(&self.names.of(CONTACT, jid))?;
        let record = stored.and_then(|b| ContactRecord::decode(b.as_slice()).ok());
        bounded_insert(
            &mut self.contacts,
            jid.to_owned(),
            record.clone(),
            MAX_CACHED_CONTACTS,
        );
        Ok(record)
    }

    fn chat_settings(&mut self, chat: &str) -> Result<Option<ChatRecord>, KeyError> {
        let stored = self.read(&self.names.of(CHAT, chat))?;
        Ok(stored.and_then(|b| ChatRecord::decode(b.as_slice()).ok()))
    }

    // Read only for votes (not cached: one read per vote).
    fn poll(&mut self, id: &str) -> Result<Option<PollRecord>, KeyError> {
        let stored = self.read(&self.names.of(POLL, id))?;
        Ok(stored.and_then(|b| PollRecord::decode(b.as_slice()).ok()))
    }
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
