//! End-to-end messaging of one session, driven by its actor: decrypting
//! incoming messages and committing their events together with the ratchet
//! state before the receipt goes out; sending texts with device fan-out
//! (usync, prekey bundles, per-device Signal sessions, a copy for our own
//! devices) and answering after the server's ack; receipts, retry receipts
//! both ways, prekey upkeep and the LID↔phone mapping.
//!
//! Durability: every Signal state change is committed before the frame that
//! depends on it is queued, and in the same batch as the event it produced
//! (DESIGN §8). The protocol pieces (stanzas, payloads, Signal) live in
//! `wa`; this module decides, persists and sequences.

use std::collections::HashMap;
use std::sync::Arc;

use prost::Message as _;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{MessageEvent, ReceiptEvent, ReceiptType};
use crate::proto::wa::Message;
use crate::store::{Batch, SecretOp, SessionId, Store, StoreError};
use crate::wa::binary::Node;
use crate::wa::conn::Connection;
use crate::wa::creds::Credentials;
use crate::wa::crypto::KeyPair;
use crate::wa::jid::Jid;
use crate::wa::message::{
    self as wamsg, Content, IncomingMessage, IncomingReceipt, ReceiptKind, ServerAck,
};
use crate::wa::prekeys::{self, MIN_SERVER_PREKEYS, UPLOAD_BATCH};
use crate::wa::signal::{
    self, LocalKeys, PreKey, PreKeySignalMessage, ProtocolAddress, SenderKeyName, SenderKeyRecord,
    SessionRecord, SignalError, MAX_PRE_KEY_ID,
};
use crate::wa::usync;

use super::events::{timestamp, EventLog};

/// Decryption failures answered with a retry receipt before the message is
/// reported as undecryptable.
pub(crate) const MAX_RETRIES: u32 = 5;
/// How long a Send may take from the request to the server's ack.
const SEND_TIMEOUT_MS: u64 = 20_000;
/// How long a device list from usync is trusted.
const DEVICE_CACHE_MS: u64 = 5 * 60_000;
/// Signal records kept in memory; the store holds them all.
const MAX_CACHED_RECORDS: usize = 512;
/// Sent messages kept to answer retry receipts, and seen ids kept for
/// deduplication: by age.
const SENT_RETENTION_MS: u64 = 7 * 24 * 3_600_000;
const SEEN_RETENTION_MS: u64 = 30 * 24 * 3_600_000;

/// Secret key names. Everything here is encrypted at rest by the store.
mod keys {
    pub(super) const SESSION: &str = "signal/session/";
    pub(super) const PREKEY: &str = "signal/prekey/";
    pub(super) const PREKEY_NEXT: &str = "signal/prekey-next";
    pub(super) const SENDER_KEY: &str = "signal/sender-key/";
    pub(super) const SEEN: &str = "seen/";
    pub(super) const SENT: &str = "sent/";
    pub(super) const IDEMPOTENCY: &str = "idem/";
    pub(super) const LID: &str = "lid/";
}

/// Why a Send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("session is not connected")]
    NotConnected,
    #[error("{0} is not on WhatsApp")]
    UnknownRecipient(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "the server did not acknowledge the message in time; retry with the same idempotency key"
    )]
    Timeout,
    #[error("the connection closed before the server acknowledged the message ({0}); retry with the same idempotency key")]
    ConnectionLost(String),
    #[error("the server refused the message (error {0})")]
    Refused(String),
    #[error("cannot encrypt for the recipient: {0}")]
    Encryption(String),
    #[error("store: {0}")]
    Store(String),
}

/// A text to send.
#[derive(Debug, Clone)]
pub struct OutgoingText {
    pub to: Jid,
    pub text: String,
    pub idempotency_key: Option<String>,
}

/// A sent message, acknowledged by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    /// Server timestamp, unix seconds.
    pub timestamp_s: u64,
}

pub(crate) type SendReply = oneshot::Sender<Result<Sent, SendError>>;

/// A send in progress.
struct Outgoing {
    id: String,
    chat: Jid,
    message: Message,
    idempotency_key: Option<String>,
    waiters: Vec<SendReply>,
    deadline: u64,
}

impl Outgoing {
    fn finish(self, result: Result<Sent, SendError>) {
        for waiter in self.waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// Iqs of ours waiting for their answer.
enum PendingIq {
    PrekeyCount,
    PrekeyUpload,
    Devices(Outgoing),
    Bundles {
        send: Outgoing,
        targets: Vec<Jid>,
    },
    /// A peer asked for a resend and we had no session with it.
    RetryBundle {
        message_id: String,
        device: Jid,
        count: u32,
    },
}

impl PendingIq {
    /// The send waiting on this iq, if any.
    fn send(&self) -> Option<&Outgoing> {
        match self {
            PendingIq::Devices(send) | PendingIq::Bundles { send, .. } => Some(send),
            PendingIq::PrekeyCount | PendingIq::PrekeyUpload | PendingIq::RetryBundle { .. } => {
                None
            }
        }
    }
}

/// What a decrypted message turned into, for the commit.
enum Outcome {
    Event(Box<MessageEvent>),
    /// Only key material (a sender key distribution): nothing to report.
    Silent,
}

/// Stored with every sent message so a retry receipt can be answered.
#[derive(Clone, PartialEq, prost::Message)]
struct SentRecord {
    #[prost(string, tag = "1")]
    chat: String,
    #[prost(bytes = "vec", tag = "2")]
    message: Vec<u8>,
    #[prost(uint64, tag = "3")]
    sent_at_ms: u64,
}

/// Stored per idempotency key.
#[derive(Clone, PartialEq, prost::Message)]
struct IdempotencyRecord {
    #[prost(string, tag = "1")]
    message_id: String,
    /// 0 until the server acknowledged it.
    #[prost(uint64, tag = "2")]
    acked_at_s: u64,
}

/// The Signal address of a device JID, keyed as WhatsApp clients key it:
/// LID users get the `_1` domain suffix.
pub(crate) fn address_of(jid: &Jid) -> ProtocolAddress {
    let name = if jid.is_lid() {
        format!("{}_1", jid.user)
    } else {
        jid.user.clone()
    };
    ProtocolAddress::new(name, u32::from(jid.device))
}

pub(crate) struct Messenger {
    id: SessionId,
    events: EventLog,
    rng: StdRng,
    /// Signal sessions by address; `None` = known to be absent.
    records: HashMap<ProtocolAddress, Option<SessionRecord>>,
    /// usync device lists by bare user JID, with when they were fetched.
    devices: HashMap<Jid, (Vec<Jid>, u64)>,
    /// LID user → phone user.
    lids: HashMap<String, String>,
    pending_iqs: HashMap<String, PendingIq>,
    pending_acks: HashMap<String, Outgoing>,
    /// Decryption failures per message (dedupe key).
    retries: HashMap<String, u32>,
    pruned: bool,
}

impl Messenger {
    pub(crate) fn new(id: SessionId, events: EventLog) -> Self {
        Self {
            id,
            events,
            rng: StdRng::from_entropy(),
            records: HashMap::new(),
            devices: HashMap::new(),
            lids: HashMap::new(),
            pending_iqs: HashMap::new(),
            pending_acks: HashMap::new(),
            retries: HashMap::new(),
            pruned: false,
        }
    }

    fn store(&self) -> Arc<dyn Store> {
        self.events.store().clone()
    }

    async fn read(&self, key: String) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let store = self.store();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || store.secret(&id, &key))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    async fn read_prefix(
        &self,
        prefix: &'static str,
    ) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>, StoreError> {
        let store = self.store();
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || store.secrets_with_prefix(&id, prefix))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    async fn commit(&self, batch: Batch, events: Vec<Payload>, now_ms: u64) -> Result<(), String> {
        self.events
            .commit(&self.id, batch, events, now_ms)
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot commit message state: {e}"))
    }

    /// The Signal session with `address`, from memory or the store.
    async fn record(&mut self, address: &ProtocolAddress) -> Result<Option<SessionRecord>, String> {
        if let Some(cached) = self.records.get(address) {
            return Ok(cached.clone());
        }
        let stored = self
            .read(format!("{}{address}", keys::SESSION))
            .await
            .map_err(|e| format!("cannot load Signal session: {e}"))?;
        let record = match stored {
            Some(bytes) => match SessionRecord::deserialize(&bytes) {
                Ok(record) => Some(record),
                Err(e) => {
                    // A fresh session replaces it on the next prekey message.
                    warn!(session = %self.id, %address, "stored Signal session unreadable: {e}");
                    None
                }
            },
            None => None,
        };
        self.cache_record(address.clone(), record.clone());
        Ok(record)
    }

    fn cache_record(&mut self, address: ProtocolAddress, record: Option<SessionRecord>) {
        if self.records.len() >= MAX_CACHED_RECORDS && !self.records.contains_key(&address) {
            self.records.clear();
        }
        self.records.insert(address, record);
    }

    fn put_record(batch: &mut Batch, address: &ProtocolAddress, record: &SessionRecord) {
        batch.secrets.push(SecretOp::Put {
            key: format!("{}{address}", keys::SESSION),
            value: record.serialize(),
        });
    }

    /// The phone number of a user, also through the LID mapping.
    async fn phone_for(&mut self, jid: &Jid) -> Option<String> {
        if let Some(phone) = wamsg::phone_of(jid) {
            return Some(phone);
        }
        if !jid.is_lid() {
            return None;
        }
        if let Some(phone) = self.lids.get(&jid.user) {
            return Some(phone.clone());
        }
        let stored = self
            .read(format!("{}{}", keys::LID, jid.user))
            .await
            .ok()
            .flatten()?;
        let phone = String::from_utf8(stored.to_vec()).ok()?;
        self.lids.insert(jid.user.clone(), phone.clone());
        Some(phone)
    }

    /// Records a LID↔phone pair learned from the wire (in `batch`).
    fn learn_lid(&mut self, a: &Jid, b: &Jid, batch: &mut Batch) {
        let (lid, pn) = match (a.is_lid(), b.is_lid()) {
            (true, false) => (a, b),
            (false, true) => (b, a),
            _ => return,
        };
        let Some(phone) = wamsg::phone_of(pn) else {
            return;
        };
        if self.lids.get(&lid.user) == Some(&phone) {
            return;
        }
        batch.secrets.push(SecretOp::Put {
            key: format!("{}{}", keys::LID, lid.user),
            value: Zeroizing::new(phone.clone().into_bytes()),
        });
        self.lids.insert(lid.user.clone(), phone);
    }

    // ----- connection lifecycle -----

    /// Logged in: check the server's prekey stock; prune old bookkeeping.
    pub(crate) async fn on_connected(&mut self, conn: &mut Connection, now_ms: u64) {
        if let Ok(id) = conn.send_iq(prekeys::count_query()) {
            self.pending_iqs.insert(id, PendingIq::PrekeyCount);
        }
        if let Some(account) = conn.credentials().account.as_ref() {
            if let Some(lid) = &account.lid {
                if let Some(phone) = wamsg::phone_of(&account.jid) {
                    self.lids.insert(lid.user.clone(), phone);
                }
            }
        }
        if !self.pruned {
            self.pruned = true;
            if let Err(e) = self.prune(now_ms).await {
                warn!(session = %self.id, "pruning message bookkeeping failed: {e}");
            }
        }
    }

    /// Drops seen-ids and sent messages past their retention.
    async fn prune(&self, now_ms: u64) -> Result<(), String> {
        let mut batch = Batch::default();
        for (key, value) in self
            .read_prefix(keys::SEEN)
            .await
            .map_err(|e| e.to_string())?
        {
            let at = value
                .get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map_or(0, u64::from_be_bytes);
            if at + SEEN_RETENTION_MS < now_ms {
                batch.secrets.push(SecretOp::Delete { key });
            }
        }
        for (key, value) in self
            .read_prefix(keys::SENT)
            .await
            .map_err(|e| e.to_string())?
        {
            let at = SentRecord::decode(value.as_slice()).map_or(0, |r| r.sent_at_ms);
            if at + SENT_RETENTION_MS < now_ms {
                batch.secrets.push(SecretOp::Delete { key });
            }
        }
        if batch.secrets.is_empty() {
            return Ok(());
        }
        debug!(session = %self.id, deleted = batch.secrets.len(), "pruned message bookkeeping");
        self.commit(batch, Vec::new(), now_ms).await
    }

    /// The connection ended: sends in flight fail (the caller may retry with
    /// its idempotency key; the message id stays the same).
    pub(crate) fn connection_lost(&mut self, why: &str) {
        for (_, pending) in self.pending_iqs.drain() {
            match pending {
                PendingIq::Devices(send) | PendingIq::Bundles { send, .. } => {
                    send.finish(Err(SendError::ConnectionLost(why.to_owned())))
                }
                PendingIq::PrekeyCount
                | PendingIq::PrekeyUpload
                | PendingIq::RetryBundle { .. } => {}
            }
        }
        for (_, send) in self.pending_acks.drain() {
            send.finish(Err(SendError::ConnectionLost(why.to_owned())));
        }
    }

    /// The earliest send deadline.
    pub(crate) fn poll_timeout(&self) -> Option<u64> {
        let iqs = self.pending_iqs.values().filter_map(PendingIq::send);
        iqs.chain(self.pending_acks.values())
            .map(|s| s.deadline)
            .min()
    }

    pub(crate) fn handle_timeout(&mut self, now_ms: u64) {
        let expired = |send: Option<&Outgoing>| send.is_some_and(|s| s.deadline <= now_ms);
        let iqs: Vec<String> = self
            .pending_iqs
            .iter()
            .filter(|(_, p)| expired(p.send()))
            .map(|(id, _)| id.clone())
            .collect();
        let acks: Vec<String> = self
            .pending_acks
            .iter()
            .filter(|(_, s)| expired(Some(s)))
            .map(|(id, _)| id.clone())
            .collect();
        let mut timed_out = Vec::new();
        for id in iqs {
            if let Some(PendingIq::Devices(send) | PendingIq::Bundles { send, .. }) =
                self.pending_iqs.remove(&id)
            {
                timed_out.push(send);
            }
        }
        for id in acks {
            timed_out.extend(self.pending_acks.remove(&id));
        }
        for send in timed_out {
            send.finish(Err(SendError::Timeout));
        }
    }

    // ----- incoming stanzas -----

    /// A stanza the connection passed up. `Err` is a local failure (the
    /// store): the connection must close without acknowledging anything.
    pub(crate) async fn on_stanza(
        &mut self,
        node: Node,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        match node.tag() {
            "message" => self.on_message(&node, conn, now_ms).await,
            "receipt" => self.on_receipt(&node, conn, now_ms).await,
            "ack" => {
                self.on_ack(&node, now_ms).await;
                Ok(())
            }
            "iq" => self.on_iq_answer(node, conn, now_ms).await,
            "notification" => {
                self.on_notification(&node, conn, now_ms).await?;
                Ok(())
            }
            "call" => {
                if let Some(ack) = wamsg::stanza_ack(&node) {
                    let _ = conn.send_node(&ack);
                }
                Ok(())
            }
            tag => {
                debug!(session = %self.id, tag, "stanza not handled");
                Ok(())
            }
        }
    }

    async fn on_message(
        &mut self,
        node: &Node,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(own) = conn.credentials().account.as_ref().map(|a| a.jid.clone()) else {
            return Ok(());
        };
        let msg = match IncomingMessage::parse(node) {
            Ok(msg) => msg,
            Err(e) => {
                warn!(session = %self.id, "unreadable message stanza: {e}");
                if let Some(ack) = wamsg::stanza_ack(node) {
                    let _ = conn.send_node(&ack.attr("error", "487"));
                }
                return Ok(());
            }
        };
        crate::metrics::global()
            .messages_in
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dedupe = msg.dedupe_key(&own);
        let seen_key = format!("{}{dedupe}", keys::SEEN);
        if self
            .read(seen_key.clone())
            .await
            .map_err(|e| format!("cannot check for duplicates: {e}"))?
            .is_some()
        {
            debug!(session = %self.id, id = %msg.id, "duplicate delivery");
            let _ = conn.send_node(&msg.receipt(&own));
            return Ok(());
        }

        // Borrowed until the first frame is written below.
        let creds = conn.credentials();
        let mut batch = Batch::default();
        let mut content: Option<Content> = None;
        let mut failure: Option<String> = None;
        let mut duplicate = false;
        let mut updated: Vec<(ProtocolAddress, SessionRecord)> = Vec::new();
        let mut sender_keys: HashMap<String, SenderKeyRecord> = HashMap::new();
        let sender = msg.sender().clone();
        let address = address_of(&sender);
        for enc in &msg.encs {
            let plaintext = match enc.kind.as_str() {
                "pkmsg" | "msg" => {
                    self.decrypt_pairwise(&address, enc, creds, &mut batch, &mut updated)
                        .await?
                }
                "skmsg" => {
                    self.decrypt_group(&msg, &address, enc, &mut sender_keys)
                        .await?
                }
                other => Err(format!("unsupported payload type {other:?}")),
            };
            let plaintext = match plaintext {
                Ok(p) => p,
                Err(e) if e == DUPLICATE => {
                    duplicate = true;
                    continue;
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            let decoded = signal::unpad(&plaintext)
                .map_err(|e| e.to_string())
                .and_then(|p| Content::decode(p).map_err(|e| format!("not a Message: {e}")));
            match decoded {
                Ok(c) => {
                    if let Some((group, distribution)) = &c.sender_key {
                        let name = SenderKeyName {
                            group_id: group.clone(),
                            sender: address.clone(),
                        };
                        let key = name.to_string();
                        let mut record = match sender_keys.remove(&key) {
                            Some(r) => r,
                            None => self.sender_key(&name).await?,
                        };
                        match signal::process_distribution_message(&mut record, distribution) {
                            Ok(()) => {
                                sender_keys.insert(key, record);
                            }
                            Err(e) => warn!(session = %self.id, "bad sender key: {e}"),
                        }
                    }
                    // A text beats key-only payloads of the same stanza.
                    if content.as_ref().is_none_or(Content::is_key_only) {
                        content = Some(c);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        for (name, record) in &sender_keys {
            batch.secrets.push(SecretOp::Put {
                key: format!("{}{name}", keys::SENDER_KEY),
                value: record.serialize(),
            });
        }
        if let Some(alt) = &msg.sender_alt {
            self.learn_lid(&sender.to_non_ad(), &alt.to_non_ad(), &mut batch);
        }

        let outcome = match (content, failure) {
            (Some(content), _) => self
                .message_event(&msg, &own, content)
                .await
                .map_or(Outcome::Silent, |event| Outcome::Event(Box::new(event))),
            (None, None) if duplicate => {
                let _ = conn.send_node(&msg.receipt(&own));
                return Ok(());
            }
            (None, None) => {
                let error = "message carried no encrypted payload".to_owned();
                Outcome::Event(Box::new(
                    self.failed_event(&msg, &own, "unavailable", error).await,
                ))
            }
            (None, Some(error)) => {
                let count = self.retries.entry(dedupe.clone()).or_insert(0);
                *count += 1;
                let count = *count;
                if count <= MAX_RETRIES {
                    info!(session = %self.id, id = %msg.id, count, "cannot decrypt, asking for a resend: {error}");
                    let keys = if count >= 2 {
                        Some(self.retry_keys(creds, now_ms).await?)
                    } else {
                        None
                    };
                    let receipt = msg.retry_receipt(count, creds.registration_id, keys);
                    let _ = conn.send_node(&receipt);
                    return Ok(());
                }
                warn!(session = %self.id, id = %msg.id, "giving up decrypting: {error}");
                Outcome::Event(Box::new(
                    self.failed_event(&msg, &own, "undecryptable", error).await,
                ))
            }
        };
        self.retries.remove(&dedupe);
        batch.secrets.push(SecretOp::Put {
            key: seen_key,
            value: Zeroizing::new(now_ms.to_be_bytes().to_vec()),
        });
        let events = match outcome {
            Outcome::Event(event) => vec![Payload::Message(*event)],
            Outcome::Silent => Vec::new(),
        };
        // Durability rule 1: ratchet state and event together, then the receipt.
        self.commit(batch, events, now_ms).await?;
        for (address, record) in updated {
            self.cache_record(address, Some(record));
        }
        let _ = conn.send_node(&msg.receipt(&own));
        Ok(())
    }

    /// Decrypts a `pkmsg`/`msg`; the new record goes into `batch` and
    /// `updated`. Outer `Err` is a store failure; inner `Err` a decryption
    /// failure ([`DUPLICATE`] for a replay).
    async fn decrypt_pairwise(
        &mut self,
        address: &ProtocolAddress,
        enc: &wamsg::EncPayload,
        creds: &Credentials,
        batch: &mut Batch,
        updated: &mut Vec<(ProtocolAddress, SessionRecord)>,
    ) -> Result<Result<Vec<u8>, String>, String> {
        let existing = match updated.iter().rev().find(|(a, _)| a == address) {
            Some((_, record)) => Some(record.clone()),
            None => self.record(address).await?,
        };
        let result = if enc.kind == "pkmsg" {
            let header = match PreKeySignalMessage::decode(&enc.ciphertext) {
                Ok(h) => h,
                Err(e) => return Ok(Err(e.to_string())),
            };
            let mut one_time = Vec::new();
            if let Some(id) = header.pre_key_id {
                if let Some(key) = self.prekey(id).await? {
                    one_time.push(key);
                }
            }
            let local = LocalKeys {
                identity: &creds.identity_key,
                registration_id: creds.registration_id,
                signed_pre_keys: std::slice::from_ref(&creds.signed_prekey),
                pre_keys: &one_time,
            };
            signal::decrypt_prekey_message(
                existing.as_ref(),
                &local,
                &enc.ciphertext,
                &mut self.rng,
            )
            .map(|decrypted| {
                if let Some(used) = decrypted.used_prekey_id {
                    batch.secrets.push(SecretOp::Delete {
                        key: prekey_key(used),
                    });
                }
                if decrypted.identity_changed {
                    info!(session = %self.id, %address, "peer identity changed");
                }
                (decrypted.plaintext, decrypted.record)
            })
        } else {
            match existing {
                Some(mut record) => signal::decrypt_message(
                    &mut record,
                    &creds.identity_key.public,
                    &enc.ciphertext,
                    &mut self.rng,
                )
                .map(|plain| (plain, record)),
                None => Err(SignalError::NoSession),
            }
        };
        Ok(match result {
            Ok((plaintext, record)) => {
                Self::put_record(batch, address, &record);
                updated.push((address.clone(), record));
                Ok(plaintext)
            }
            Err(e) if e.is_duplicate() => Err(DUPLICATE.to_owned()),
            Err(e) => Err(e.to_string()),
        })
    }

    async fn decrypt_group(
        &mut self,
        msg: &IncomingMessage,
        address: &ProtocolAddress,
        enc: &wamsg::EncPayload,
        pending: &mut HashMap<String, SenderKeyRecord>,
    ) -> Result<Result<Vec<u8>, String>, String> {
        let name = SenderKeyName {
            group_id: msg.from.to_non_ad().to_string(),
            sender: address.clone(),
        };
        let key = name.to_string();
        let mut record = match pending.remove(&key) {
            Some(r) => r,
            None => self.sender_key(&name).await?,
        };
        let result = signal::group_decrypt(&mut record, &enc.ciphertext);
        let out = match result {
            Ok(plain) => Ok(plain),
            Err(e) if e.is_duplicate() => Err(DUPLICATE.to_owned()),
            Err(e) => Err(e.to_string()),
        };
        if out.is_ok() {
            pending.insert(key, record);
        }
        Ok(out)
    }

    async fn sender_key(&self, name: &SenderKeyName) -> Result<SenderKeyRecord, String> {
        let stored = self
            .read(format!("{}{name}", keys::SENDER_KEY))
            .await
            .map_err(|e| format!("cannot load sender key: {e}"))?;
        Ok(stored
            .and_then(|b| SenderKeyRecord::deserialize(&b).ok())
            .unwrap_or_default())
    }

    async fn prekey(&self, id: u32) -> Result<Option<PreKey>, String> {
        let stored = self
            .read(prekey_key(id))
            .await
            .map_err(|e| format!("cannot load prekey: {e}"))?;
        Ok(stored.and_then(|bytes| {
            let private: [u8; 32] = bytes.as_slice().try_into().ok()?;
            PreKey::new(id, KeyPair::from_private(private)).ok()
        }))
    }

    async fn message_event(
        &mut self,
        msg: &IncomingMessage,
        own: &Jid,
        content: Content,
    ) -> Option<MessageEvent> {
        if content.is_key_only() {
            return None;
        }
        let from_me = msg.from_me(own);
        let chat = match (&content.destination, from_me) {
            (Some(destination), true) => destination.to_non_ad(),
            _ => msg.chat(own),
        };
        let sender = msg.sender().clone();
        let sender_phone = match self.phone_for(&sender).await {
            Some(phone) => Some(phone),
            None => match &msg.sender_alt {
                Some(alt) => self.phone_for(alt).await,
                None => None,
            },
        };
        Some(MessageEvent {
            id: msg.id.clone(),
            chat: chat.to_string(),
            sender: sender.to_string(),
            sender_phone: sender_phone.unwrap_or_default(),
            push_name: msg.push_name.clone().unwrap_or_default(),
            timestamp: Some(timestamp(msg.t as i64 * 1000)),
            from_me,
            text: content.text.unwrap_or_default(),
            r#type: content.kind,
            offline: msg.offline,
            error: String::new(),
        })
    }

    async fn failed_event(
        &mut self,
        msg: &IncomingMessage,
        own: &Jid,
        kind: &str,
        error: String,
    ) -> MessageEvent {
        let sender = msg.sender().clone();
        let sender_phone = self.phone_for(&sender).await.unwrap_or_default();
        MessageEvent {
            id: msg.id.clone(),
            chat: msg.chat(own).to_string(),
            sender: sender.to_string(),
            sender_phone,
            push_name: msg.push_name.clone().unwrap_or_default(),
            timestamp: Some(timestamp(msg.t as i64 * 1000)),
            from_me: msg.from_me(own),
            text: String::new(),
            r#type: kind.to_owned(),
            offline: msg.offline,
            error,
        }
    }

    /// A fresh one-time prekey, stored before it is offered in a retry receipt.
    async fn retry_keys(&mut self, creds: &Credentials, now_ms: u64) -> Result<Node, String> {
        let mut keys = self.generate_prekeys(1, now_ms).await?;
        let key = keys.pop().ok_or("no prekey generated")?;
        let identity = creds
            .account
            .as_ref()
            .map(|a| a.signed_identity.clone())
            .unwrap_or_default();
        Ok(prekeys::retry_keys(creds, &key, &identity))
    }

    /// Generates and stores `count` one-time prekeys with the next ids.
    async fn generate_prekeys(&mut self, count: u32, now_ms: u64) -> Result<Vec<PreKey>, String> {
        let next = self
            .read(keys::PREKEY_NEXT.to_owned())
            .await
            .map_err(|e| format!("cannot load prekey counter: {e}"))?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map_or(1, u32::from_be_bytes);
        let mut batch = Batch::default();
        let mut out = Vec::with_capacity(count as usize);
        let mut id = next;
        for _ in 0..count {
            if id == 0 || id > MAX_PRE_KEY_ID {
                id = 1;
            }
            let key = PreKey::generate(id, &mut self.rng).map_err(|e| e.to_string())?;
            batch.secrets.push(SecretOp::Put {
                key: prekey_key(id),
                value: Zeroizing::new(key.key.private_bytes().to_vec()),
            });
            out.push(key);
            id += 1;
        }
        batch.secrets.push(SecretOp::Put {
            key: keys::PREKEY_NEXT.to_owned(),
            value: Zeroizing::new(id.to_be_bytes().to_vec()),
        });
        self.commit(batch, Vec::new(), now_ms).await?;
        Ok(out)
    }

    async fn upload_prekeys(&mut self, conn: &mut Connection, now_ms: u64) -> Result<(), String> {
        let keys = self.generate_prekeys(UPLOAD_BATCH, now_ms).await?;
        let node = prekeys::upload(conn.credentials(), &keys);
        if let Ok(id) = conn.send_iq(node) {
            info!(session = %self.id, count = keys.len(), "uploading prekeys");
            self.pending_iqs.insert(id, PendingIq::PrekeyUpload);
        }
        Ok(())
    }

    async fn on_notification(
        &mut self,
        node: &Node,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        if node.attr_str("type") == Some("encrypt") {
            let low = node
                .child("count")
                .and_then(|c| c.attr_u64("value"))
                .is_some_and(|n| n < u64::from(MIN_SERVER_PREKEYS));
            if low {
                self.upload_prekeys(conn, now_ms).await?;
            }
        }
        if let Some(ack) = wamsg::stanza_ack(node) {
            let _ = conn.send_node(&ack);
        }
        Ok(())
    }

    async fn on_receipt(
        &mut self,
        node: &Node,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        let receipt = match IncomingReceipt::parse(node) {
            Ok(r) => r,
            Err(e) => {
                warn!(session = %self.id, "unreadable receipt: {e}");
                return Ok(());
            }
        };
        let kind = match receipt.kind {
            ReceiptKind::Delivered => Some(ReceiptType::Delivered),
            ReceiptKind::Read => Some(ReceiptType::Read),
            ReceiptKind::Played => Some(ReceiptType::Played),
            ReceiptKind::Retry => {
                if let Err(e) = self.on_retry_request(node, &receipt, conn, now_ms).await {
                    warn!(session = %self.id, id = %receipt.id, "cannot answer retry receipt: {e}");
                }
                None
            }
            ReceiptKind::Other => None,
        };
        if let Some(kind) = kind {
            let from = receipt.sender().clone();
            let chat = if receipt.from.is_group() {
                receipt.from.to_non_ad()
            } else {
                receipt
                    .recipient
                    .as_ref()
                    .unwrap_or(&receipt.from)
                    .to_non_ad()
            };
            let from_phone = self.phone_for(&from).await.unwrap_or_default();
            let event = ReceiptEvent {
                message_ids: receipt.message_ids.clone(),
                r#type: kind as i32,
                chat: chat.to_string(),
                from: from.to_string(),
                from_phone,
                timestamp: Some(timestamp(
                    receipt.t.map_or(now_ms as i64, |t| t as i64 * 1000),
                )),
            };
            self.commit(Batch::default(), vec![Payload::Receipt(event)], now_ms)
                .await?;
        }
        let _ = conn.send_node(&receipt.ack());
        Ok(())
    }

    /// A peer could not decrypt one of our messages: encrypt it again for
    /// that device, from a new session when the peer sent its keys.
    async fn on_retry_request(
        &mut self,
        node: &Node,
        receipt: &IncomingReceipt,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        let device = receipt.sender().clone();
        if receipt.retry_count > MAX_RETRIES {
            return Err(format!("retry {} is past the limit", receipt.retry_count));
        }
        let address = address_of(&device);
        let mut batch = Batch::default();
        let record = match prekeys::parse_retry_keys(node, device.device) {
            Some(Ok(bundle)) => {
                let previous = self.record(&address).await?;
                let creds = conn.credentials();
                let record = signal::process_bundle(
                    &bundle,
                    &creds.identity_key,
                    creds.registration_id,
                    previous,
                    &mut self.rng,
                )
                .map_err(|e| format!("bundle in retry receipt: {e}"))?;
                Some(record)
            }
            Some(Err(e)) => return Err(format!("keys in retry receipt: {e}")),
            None => self.record(&address).await?,
        };
        let Some(record) = record else {
            // No session and no keys: fetch the bundle first.
            let id = conn
                .send_iq(prekeys::bundle_query(std::slice::from_ref(&device)))
                .map_err(|e| e.to_string())?;
            self.pending_iqs.insert(
                id,
                PendingIq::RetryBundle {
                    message_id: receipt.id.clone(),
                    device,
                    count: receipt.retry_count,
                },
            );
            return Ok(());
        };
        self.resend(
            &receipt.id,
            &device,
            record,
            receipt.retry_count,
            &mut batch,
            conn,
            now_ms,
        )
        .await
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one resend, every input it needs"
    )]
    async fn resend(
        &mut self,
        message_id: &str,
        device: &Jid,
        mut record: SessionRecord,
        count: u32,
        batch: &mut Batch,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        let stored = self
            .read(format!("{}{message_id}", keys::SENT))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("message {message_id} is not among the recent sends"))?;
        let sent = SentRecord::decode(stored.as_slice()).map_err(|e| e.to_string())?;
        let chat: Jid = sent.chat.parse().map_err(|e| format!("stored chat: {e}"))?;
        let message = Message::decode(sent.message.as_slice()).map_err(|e| e.to_string())?;
        let creds = conn.credentials().clone();
        let own = creds
            .account
            .as_ref()
            .map(|a| a.jid.clone())
            .ok_or("not paired")?;
        let payload = if device.user == own.user {
            wamsg::device_sent(&chat, &message)
        } else {
            message
        };
        let padded = signal::pad(&mut self.rng, &payload.encode_to_vec());
        let ciphertext = signal::encrypt(&mut record, &creds.identity_key, &padded)
            .map_err(|e| e.to_string())?;
        let address = address_of(device);
        Self::put_record(batch, &address, &record);
        self.commit(std::mem::take(batch), Vec::new(), now_ms)
            .await?;
        self.cache_record(address, Some(record));
        let identity = creds
            .account
            .as_ref()
            .map(|a| a.signed_identity.clone())
            .unwrap_or_default();
        info!(session = %self.id, id = message_id, %device, "resending after retry receipt");
        let _ = conn.send_node(&wamsg::resend_stanza(
            message_id,
            device,
            &ciphertext,
            count,
            &identity,
        ));
        Ok(())
    }

    async fn on_ack(&mut self, node: &Node, now_ms: u64) {
        let Some(ack) = ServerAck::parse(node) else {
            return;
        };
        let Some(send) = self.pending_acks.remove(&ack.id) else {
            return;
        };
        if let Some(error) = ack.error {
            warn!(session = %self.id, id = %ack.id, %error, "server refused message");
            return send.finish(Err(SendError::Refused(error)));
        }
        let timestamp_s = ack.t.unwrap_or(now_ms / 1000);
        if let Some(key) = &send.idempotency_key {
            let record = IdempotencyRecord {
                message_id: send.id.clone(),
                acked_at_s: timestamp_s,
            };
            let batch = Batch::default().put_secret(idempotency_key(key), record.encode_to_vec());
            if let Err(e) = self.commit(batch, Vec::new(), now_ms).await {
                // The message is out; a retry would resend it with the same id.
                warn!(session = %self.id, "cannot record the acknowledged send: {e}");
            }
        }
        crate::metrics::global()
            .messages_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let message_id = send.id.clone();
        send.finish(Ok(Sent {
            message_id,
            timestamp_s,
        }));
    }

    async fn on_iq_answer(
        &mut self,
        node: Node,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(id) = node.attr_string("id") else {
            return Ok(());
        };
        let Some(pending) = self.pending_iqs.remove(&id) else {
            debug!(session = %self.id, "iq answer nobody waits for");
            return Ok(());
        };
        let is_error = node.attr_str("type") == Some("error");
        match pending {
            PendingIq::PrekeyCount => match prekeys::parse_count(&node) {
                Ok(count) if count < MIN_SERVER_PREKEYS => {
                    self.upload_prekeys(conn, now_ms).await?
                }
                Ok(count) => debug!(session = %self.id, count, "server holds enough prekeys"),
                Err(e) => warn!(session = %self.id, "prekey count: {e}"),
            },
            PendingIq::PrekeyUpload => {
                if is_error {
                    warn!(session = %self.id, "prekey upload refused");
                }
            }
            PendingIq::Devices(send) => {
                if is_error {
                    let why = "the server refused the device query".to_owned();
                    send.finish(Err(SendError::Encryption(why)));
                    return Ok(());
                }
                match usync::parse_devices(&node) {
                    Ok(users) => {
                        for user in users {
                            let jids = user.device_jids();
                            self.devices.insert(user.user.clone(), (jids, now_ms));
                            if let Some(lid) = &user.lid {
                                let mut batch = Batch::default();
                                self.learn_lid(lid, &user.user, &mut batch);
                                if !batch.is_empty() {
                                    self.commit(batch, Vec::new(), now_ms).await?;
                                }
                            }
                        }
                        self.route(send, conn, now_ms).await?;
                    }
                    Err(e) => send.finish(Err(SendError::Encryption(format!("device list: {e}")))),
                }
            }
            PendingIq::Bundles { send, targets } => {
                if is_error {
                    let why = "the server refused the prekey query".to_owned();
                    send.finish(Err(SendError::Encryption(why)));
                    return Ok(());
                }
                let bundles = match prekeys::parse_bundles(&node) {
                    Ok(b) => b,
                    Err(e) => {
                        send.finish(Err(SendError::Encryption(format!("bundles: {e}"))));
                        return Ok(());
                    }
                };
                let mut fresh = HashMap::new();
                let creds = conn.credentials().clone();
                for entry in bundles {
                    let address = address_of(&entry.device);
                    match entry.bundle {
                        Ok(bundle) => match signal::process_bundle(
                            &bundle,
                            &creds.identity_key,
                            creds.registration_id,
                            None,
                            &mut self.rng,
                        ) {
                            Ok(record) => {
                                fresh.insert(address, record);
                            }
                            Err(e) => {
                                warn!(session = %self.id, device = %entry.device, "unusable bundle: {e}")
                            }
                        },
                        Err(e) => {
                            warn!(session = %self.id, device = %entry.device, "no bundle: {e}")
                        }
                    }
                }
                self.encrypt_and_send(send, targets, fresh, conn, now_ms)
                    .await?;
            }
            PendingIq::RetryBundle {
                message_id,
                device,
                count,
            } => {
                let bundle = prekeys::parse_bundles(&node)
                    .ok()
                    .and_then(|b| b.into_iter().find(|e| e.device == device))
                    .and_then(|e| e.bundle.ok());
                let Some(bundle) = bundle else {
                    warn!(session = %self.id, %device, "no bundle to answer a retry receipt");
                    return Ok(());
                };
                let creds = conn.credentials().clone();
                let record = match signal::process_bundle(
                    &bundle,
                    &creds.identity_key,
                    creds.registration_id,
                    None,
                    &mut self.rng,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(session = %self.id, %device, "unusable bundle: {e}");
                        return Ok(());
                    }
                };
                let mut batch = Batch::default();
                if let Err(e) = self
                    .resend(
                        &message_id,
                        &device,
                        record,
                        count,
                        &mut batch,
                        conn,
                        now_ms,
                    )
                    .await
                {
                    warn!(session = %self.id, "cannot resend: {e}");
                }
            }
        }
        Ok(())
    }

    // ----- sending -----

    /// Starts a send; `reply` is answered after the server's ack (or on
    /// failure).
    pub(crate) async fn start_send(
        &mut self,
        text: OutgoingText,
        reply: SendReply,
        conn: &mut Connection,
        now_ms: u64,
    ) {
        let Some(own) = conn.credentials().account.as_ref().map(|a| a.jid.clone()) else {
            let _ = reply.send(Err(SendError::NotConnected));
            return;
        };
        if !conn.is_connected() {
            let _ = reply.send(Err(SendError::NotConnected));
            return;
        }
        if text.to.is_group() || !(text.to.is_user() || text.to.is_lid()) {
            let _ = reply.send(Err(SendError::Unsupported(format!(
                "sending to {} is not supported yet; send to a phone number or a user JID",
                text.to
            ))));
            return;
        }
        let chat = text.to.to_non_ad();
        let mut id = None;
        if let Some(key) = &text.idempotency_key {
            match self.read(idempotency_key(key)).await {
                Ok(Some(bytes)) => {
                    if let Ok(record) = IdempotencyRecord::decode(bytes.as_slice()) {
                        if record.acked_at_s > 0 {
                            let _ = reply.send(Ok(Sent {
                                message_id: record.message_id,
                                timestamp_s: record.acked_at_s,
                            }));
                            return;
                        }
                        if let Some(pending) = self.pending_acks.get_mut(&record.message_id) {
                            pending.waiters.push(reply);
                            return;
                        }
                        let waiting = self.pending_iqs.values_mut().find_map(|p| match p {
                            PendingIq::Devices(send) | PendingIq::Bundles { send, .. }
                                if send.id == record.message_id =>
                            {
                                Some(send)
                            }
                            _ => None,
                        });
                        if let Some(send) = waiting {
                            send.waiters.push(reply);
                            return;
                        }
                        // Sent before without an ack seen: same id again.
                        id = Some(record.message_id);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = reply.send(Err(SendError::Store(e.to_string())));
                    return;
                }
            }
        }
        let id =
            id.unwrap_or_else(|| wamsg::new_message_id(now_ms / 1000, &own.user, &mut self.rng));
        let send = Outgoing {
            id,
            chat,
            message: wamsg::text_message(&text.text),
            idempotency_key: text.idempotency_key,
            waiters: vec![reply],
            deadline: now_ms + SEND_TIMEOUT_MS,
        };
        let users = [send.chat.clone(), own.to_non_ad()];
        let fresh = users.iter().all(|u| {
            self.devices
                .get(u)
                .is_some_and(|(_, at)| at + DEVICE_CACHE_MS > now_ms)
        });
        if fresh {
            if let Err(e) = self.route(send, conn, now_ms).await {
                warn!(session = %self.id, "send failed: {e}");
            }
            return;
        }
        let sid = format!("{:08x}", self.rng.next_u32());
        match conn.send_iq(usync::device_query(&users, &sid, false)) {
            Ok(iq) => {
                self.pending_iqs.insert(iq, PendingIq::Devices(send));
            }
            Err(_) => send.finish(Err(SendError::NotConnected)),
        }
    }

    /// Devices known: fetch bundles for those without a session, or encrypt.
    async fn route(
        &mut self,
        send: Outgoing,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        let Some(own) = conn.credentials().account.as_ref().map(|a| a.jid.clone()) else {
            send.finish(Err(SendError::NotConnected));
            return Ok(());
        };
        let peer_devices = self
            .devices
            .get(&send.chat)
            .map(|(d, _)| d.clone())
            .unwrap_or_default();
        if peer_devices.is_empty() {
            let who = send.chat.to_string();
            send.finish(Err(SendError::UnknownRecipient(who)));
            return Ok(());
        }
        let own_devices = self
            .devices
            .get(&own.to_non_ad())
            .map(|(d, _)| d.clone())
            .unwrap_or_else(|| vec![own.to_non_ad()]);
        let mut targets: Vec<Jid> = Vec::new();
        for device in peer_devices.into_iter().chain(own_devices) {
            let same_device = device.user == own.user && device.device == own.device;
            if !same_device && !targets.contains(&device) {
                targets.push(device);
            }
        }
        let mut missing = Vec::new();
        for target in &targets {
            let has = self
                .record(&address_of(target))
                .await?
                .is_some_and(|r| r.has_current_session());
            if !has {
                missing.push(target.clone());
            }
        }
        if missing.is_empty() {
            return self
                .encrypt_and_send(send, targets, HashMap::new(), conn, now_ms)
                .await;
        }
        match conn.send_iq(prekeys::bundle_query(&missing)) {
            Ok(iq) => {
                self.pending_iqs
                    .insert(iq, PendingIq::Bundles { send, targets });
            }
            Err(_) => send.finish(Err(SendError::NotConnected)),
        }
        Ok(())
    }

    /// Encrypts for every target with a session, commits the new states and
    /// the sent record, then hands the stanza to the connection.
    async fn encrypt_and_send(
        &mut self,
        send: Outgoing,
        targets: Vec<Jid>,
        mut fresh: HashMap<ProtocolAddress, SessionRecord>,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), String> {
        let creds = conn.credentials().clone();
        let Some(account) = creds.account.clone() else {
            send.finish(Err(SendError::NotConnected));
            return Ok(());
        };
        let own = account.jid.clone();
        let copy = wamsg::device_sent(&send.chat, &send.message);
        let for_peer = send.message.encode_to_vec();
        let for_own = copy.encode_to_vec();
        let mut batch = Batch::default();
        let mut encrypted = Vec::new();
        let mut updated = Vec::new();
        let mut peer_reached = false;
        for target in targets {
            let address = address_of(&target);
            let record = match fresh.remove(&address) {
                Some(r) => Some(r),
                None => self.record(&address).await?,
            };
            let Some(mut record) = record.filter(SessionRecord::has_current_session) else {
                debug!(session = %self.id, device = %target, "no session; device skipped");
                continue;
            };
            let plain = if target.user == own.user {
                &for_own
            } else {
                &for_peer
            };
            let padded = signal::pad(&mut self.rng, plain);
            match signal::encrypt(&mut record, &creds.identity_key, &padded) {
                Ok(ct) => {
                    Self::put_record(&mut batch, &address, &record);
                    updated.push((address, record));
                    peer_reached |= target.user != own.user;
                    encrypted.push((target, ct));
                }
                Err(e) => warn!(session = %self.id, device = %target, "cannot encrypt: {e}"),
            }
        }
        if !peer_reached {
            let why = format!("no device of {} could be reached", send.chat);
            send.finish(Err(SendError::Encryption(why)));
            return Ok(());
        }
        let sent = SentRecord {
            chat: send.chat.to_string(),
            message: for_peer,
            sent_at_ms: now_ms,
        };
        batch = batch.put_secret(format!("{}{}", keys::SENT, send.id), sent.encode_to_vec());
        if let Some(key) = &send.idempotency_key {
            let record = IdempotencyRecord {
                message_id: send.id.clone(),
                acked_at_s: 0,
            };
            batch = batch.put_secret(idempotency_key(key), record.encode_to_vec());
        }
        // Durability rule 2: the new chain state is stored before any
        // ciphertext made with it reaches the wire.
        if let Err(e) = self.commit(batch, Vec::new(), now_ms).await {
            send.finish(Err(SendError::Store(e.clone())));
            return Err(e);
        }
        for (address, record) in updated {
            self.cache_record(address, Some(record));
        }
        let stanza =
            wamsg::fanout_stanza(&send.id, &send.chat, &encrypted, &account.signed_identity);
        if conn.send_node(&stanza).is_err() {
            send.finish(Err(SendError::NotConnected));
            return Ok(());
        }
        debug!(session = %self.id, id = %send.id, devices = encrypted.len(), "message sent");
        self.pending_acks.insert(send.id.clone(), send);
        Ok(())
    }
}

/// Marker of a replayed message in decryption results.
const DUPLICATE: &str = "duplicate";

fn prekey_key(id: u32) -> String {
    format!("{}{id:06x}", keys::PREKEY)
}

fn idempotency_key(key: &str) -> String {
    format!("{}{key}", keys::IDEMPOTENCY)
}
