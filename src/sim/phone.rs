//! Virtual phones: device 0 of every simulated account, holding real Signal
//! keys (identity, signed prekey, a pool of one-time prekeys), the sessions
//! it opened or accepted, and an inbox of the texts it decrypted. Pure state
//! and crypto: no I/O, no clock, no locks; imports `wa` and the generated
//! protobufs only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use prost::Message as _;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::sender_keys::SenderKeys;
use super::snapshot::{
    key32, key_pair, InvalidState, SavedAppStateKey, SavedInbox, SavedInboxMedia, SavedPhone,
    SavedPreKey, SavedSession, SavedSignedPreKey,
};
use super::usync::BundleKeys;
use crate::proto::wa::message::{
    AppStateSyncKey, AppStateSyncKeyData, AppStateSyncKeyFingerprint, AppStateSyncKeyId,
    DeviceSentMessage,
};
use crate::proto::wa::Message;
use crate::wa::crypto::KeyPair;
use crate::wa::media::{MediaError, MediaInfo, MediaType};
use crate::wa::signal::{
    self, decrypt_message, decrypt_prekey_message, encrypt, generate_registration_id, pad,
    process_bundle, unpad, CiphertextMessage, LocalKeys, PreKey, PreKeyBundle, ProtocolAddress,
    SessionRecord, SignalError,
};

/// One-time prekeys a phone publishes when its account is created.
const PHONE_PREKEYS: u32 = 0x40;
/// Id of the phone's only signed prekey.
const SIGNED_PREKEY_ID: u32 = 0x01;
/// Most texts kept in an inbox; the oldest are dropped first.
const MAX_INBOX: usize = 10_000;
/// Length of an app-state sync key id, as phones make them.
const APP_STATE_KEY_ID_LEN: usize = 0x06;

#[derive(Debug, thiserror::Error)]
pub(crate) enum PhoneError {
    #[error("signal: {0}")]
    Signal(#[from] SignalError),
    #[error("enc type {0:?} is not pkmsg or msg")]
    UnknownEncType(String),
    #[error("no session with {0} and no bundle to start one")]
    NoSession(ProtocolAddress),
    #[error("decrypted payload is not a WhatsApp Message: {0}")]
    NotAMessage(#[from] prost::DecodeError),
}

/// A text (or media message) a phone received and decrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMessage {
    /// The sending device, e.g. `15550001111:1@s.whatsapp.net`.
    pub from: String,
    /// The chat: the sender's account for a 1:1 text, else the group JID.
    pub chat: String,
    pub id: String,
    /// The text, or a media message's caption (empty without one).
    pub text: String,
    /// The server timestamp of the message (unix seconds).
    pub timestamp: u64,
    /// What a media message carried, and whether it checked out.
    pub media: Option<InboxMedia>,
    /// A location, contact cards, a poll or a vote, decoded.
    pub content: Option<super::phone_content::InboxContent>,
}

/// A media file a phone received: what the message said, and whether the
/// download, decryption and hash checks succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxMedia {
    pub kind: MediaType,
    pub mimetype: String,
    pub caption: Option<String>,
    pub file_name: Option<String>,
    /// The length the message announced.
    pub file_length: u64,
    /// `Ok` once downloaded, decrypted and verified; why not otherwise.
    pub verified: Result<(), String>,
}

/// What a decrypted payload turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Content {
    /// A text for this account.
    Text(String),
    /// A copy of a text another device of this account sent to `destination`.
    SentByMe { destination: String, text: String },
    /// A media message for this account, or why its media is unreadable.
    Media {
        kind: MediaType,
        info: Result<Box<MediaInfo>, MediaError>,
    },
    /// A location, contact cards, a poll or a vote for this account.
    Rich(Box<crate::wa::content::Rich>),
    /// The same, as the inbox shows it (a poll's secret kept, a vote
    /// opened).
    Received(Box<super::phone_content::InboxContent>),
    /// Anything else (sender keys, protocol messages): no text.
    Other,
}

/// The Signal side of a virtual phone.
pub(crate) struct Phone {
    identity: KeyPair,
    registration_id: u32,
    signed_prekey: signal::SignedPreKey,
    /// Private halves of every one-time prekey not used yet.
    prekeys: BTreeMap<u32, PreKey>,
    /// Ids the server may still hand out (popped when a bundle is fetched).
    unclaimed: BTreeSet<u32>,
    sessions: HashMap<ProtocolAddress, SessionRecord>,
    inbox: VecDeque<InboxMessage>,
    /// (sender device, message id) of every text in the inbox.
    received: HashSet<(String, String)>,
    /// Its own and other members' group sender keys.
    pub(crate) sender_keys: SenderKeys,
    /// The app-state sync key it shares with every companion it links,
    /// made when the first one is linked.
    app_state_key: Option<AppStateKey>,
    /// The app-state collections it keeps for the account's companions.
    pub(crate) app_state: super::app_state::PhoneAppState,
    /// The polls it sent or received (their secrets open the votes).
    pub(crate) polls: super::phone_content::PhonePolls,
}

/// An app-state sync key: the account's companions encrypt and decrypt
/// their app-state patches with it, and find it by its id.
#[derive(Clone)]
pub(crate) struct AppStateKey {
    pub(crate) id: [u8; APP_STATE_KEY_ID_LEN],
    pub(crate) data: Zeroizing<[u8; 32]>,
    /// `AppStateSyncKeyFingerprint.rawId`: random, as phones pick it.
    pub(crate) raw_id: u32,
    /// Unix milliseconds, as phones stamp their keys.
    pub(crate) timestamp_ms: i64,
}

impl AppStateKey {
    fn generate(now_ms: i64, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut id = [0u8; APP_STATE_KEY_ID_LEN];
        rng.fill_bytes(&mut id);
        let mut data = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(data.as_mut());
        Self {
            id,
            data,
            raw_id: rng.next_u32(),
            timestamp_ms: now_ms,
        }
    }

    /// The key as a `Message.AppStateSyncKey`.
    pub(crate) fn to_proto(&self) -> AppStateSyncKey {
        AppStateSyncKey {
            key_id: Some(AppStateSyncKeyId {
                key_id: Some(self.id.to_vec()),
            }),
            key_data: Some(AppStateSyncKeyData {
                key_data: Some(self.data.to_vec()),
                fingerprint: Some(AppStateSyncKeyFingerprint {
                    raw_id: Some(self.raw_id),
                    current_index: Some(0),
                    // The phone itself is device index 0.
                    device_indexes: vec![0],
                }),
                timestamp: Some(self.timestamp_ms),
            }),
        }
    }
}

impl Phone {
    /// A phone whose identity is the account's key (the one that signs its
    /// companions' device identities, as on a real phone).
    pub(crate) fn generate(identity: KeyPair, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let signed_prekey = signal::SignedPreKey::generate(SIGNED_PREKEY_ID, &identity, rng)
            .expect("the constant signed prekey id fits in 24 bits");
        let prekeys: BTreeMap<u32, PreKey> = (1..=PHONE_PREKEYS)
            .map(|id| {
                let key = PreKey::generate(id, rng).expect("small prekey ids fit in 24 bits");
                (id, key)
            })
            .collect();
        Self {
            registration_id: generate_registration_id(rng),
            unclaimed: prekeys.keys().copied().collect(),
            prekeys,
            signed_prekey,
            identity,
            sessions: HashMap::new(),
            inbox: VecDeque::new(),
            received: HashSet::new(),
            sender_keys: SenderKeys::default(),
            app_state_key: None,
            app_state: Default::default(),
            polls: Default::default(),
        }
    }

    /// The account's app-state sync key, made on first use: every companion
    /// of the account gets the same one.
    pub(crate) fn app_state_key(
        &mut self,
        now_ms: i64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> AppStateKey {
        self.app_state_key
            .get_or_insert_with(|| AppStateKey::generate(now_ms, rng))
            .clone()
    }

    /// The account's app-state sync key, if the phone made one already.
    pub(crate) fn shared_app_state_key(&self) -> Option<AppStateKey> {
        self.app_state_key.clone()
    }

    /// The phone's bundle as the server hands it out: one unclaimed
    /// one-time prekey is popped with it (none once the pool is empty).
    pub(crate) fn take_bundle(&mut self) -> BundleKeys {
        let one_time = self
            .unclaimed
            .pop_first()
            .and_then(|id| self.prekeys.get(&id).map(|key| (key.id, key.key.public)));
        BundleKeys {
            registration_id: self.registration_id,
            identity: self.identity.public,
            signed_prekey: super::registry::SignedPreKey {
                id: self.signed_prekey.id,
                public: self.signed_prekey.key.public,
                signature: self.signed_prekey.signature,
            },
            one_time,
        }
    }

    /// The registration id a retry receipt carries.
    pub(crate) fn registration_id(&self) -> u32 {
        self.registration_id
    }

    /// One-time prekeys the server can still hand out.
    pub(crate) fn unclaimed_prekeys(&self) -> usize {
        self.unclaimed.len()
    }

    pub(crate) fn has_session(&self, with: &ProtocolAddress) -> bool {
        self.sessions
            .get(with)
            .is_some_and(SessionRecord::has_current_session)
    }

    /// Decrypts an `<enc>` payload from `from` (type `pkmsg` or `msg`),
    /// strips WhatsApp's padding and reads the `Message` inside.
    pub(crate) fn decrypt(
        &mut self,
        from: &ProtocolAddress,
        enc_type: &str,
        ciphertext: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Content, PhoneError> {
        let padded = self.decrypt_padded(from, enc_type, ciphertext, rng)?;
        Ok(content(unpad(&padded)?)?)
    }

    /// As [`Phone::decrypt`], returning the whole `Message` (a group's
    /// sender key distribution travels this way).
    pub(crate) fn decrypt_message(
        &mut self,
        from: &ProtocolAddress,
        enc_type: &str,
        ciphertext: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Message, PhoneError> {
        let padded = self.decrypt_padded(from, enc_type, ciphertext, rng)?;
        Ok(Message::decode(unpad(&padded)?)?)
    }

    fn decrypt_padded(
        &mut self,
        from: &ProtocolAddress,
        enc_type: &str,
        ciphertext: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>, PhoneError> {
        let padded = match enc_type {
            "pkmsg" => {
                let keys: Vec<PreKey> = self.prekeys.values().cloned().collect();
                let local = LocalKeys {
                    identity: &self.identity,
                    registration_id: self.registration_id,
                    signed_pre_keys: std::slice::from_ref(&self.signed_prekey),
                    pre_keys: &keys,
                };
                let decrypted =
                    decrypt_prekey_message(self.sessions.get(from), &local, ciphertext, rng)?;
                if let Some(used) = decrypted.used_prekey_id {
                    self.prekeys.remove(&used);
                    self.unclaimed.remove(&used);
                }
                self.sessions.insert(from.clone(), decrypted.record);
                decrypted.plaintext
            }
            "msg" => {
                let record = self
                    .sessions
                    .get_mut(from)
                    .ok_or_else(|| PhoneError::NoSession(from.clone()))?;
                decrypt_message(record, &self.identity.public, ciphertext, rng)?
            }
            other => return Err(PhoneError::UnknownEncType(other.to_owned())),
        };
        Ok(padded)
    }

    /// Encrypts `message` (padded here) for `to`, opening the session from
    /// `bundle` when there is none yet.
    pub(crate) fn encrypt(
        &mut self,
        to: &ProtocolAddress,
        bundle: Option<&BundleKeys>,
        message: &Message,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<CiphertextMessage, PhoneError> {
        if !self.has_session(to) {
            let bundle = bundle.ok_or_else(|| PhoneError::NoSession(to.clone()))?;
            let bundle = PreKeyBundle {
                registration_id: bundle.registration_id,
                device_id: to.device,
                pre_key: bundle.one_time,
                signed_pre_key: (
                    bundle.signed_prekey.id,
                    bundle.signed_prekey.public,
                    bundle.signed_prekey.signature,
                ),
                identity_key: bundle.identity,
            };
            let previous = self.sessions.remove(to);
            let record =
                process_bundle(&bundle, &self.identity, self.registration_id, previous, rng)?;
            self.sessions.insert(to.clone(), record);
        }
        let record = self
            .sessions
            .get_mut(to)
            .ok_or_else(|| PhoneError::NoSession(to.clone()))?;
        let padded = pad(rng, &message.encode_to_vec());
        Ok(encrypt(record, &self.identity, &padded)?)
    }

    /// Adds a text to the inbox, unless one from the same sender device with
    /// the same id is already there.
    pub(crate) fn record(&mut self, message: InboxMessage) {
        if !self
            .received
            .insert((message.from.clone(), message.id.clone()))
        {
            return;
        }
        if self.inbox.len() >= MAX_INBOX {
            if let Some(old) = self.inbox.pop_front() {
                self.received.remove(&(old.from, old.id));
            }
        }
        self.inbox.push_back(message);
    }

    /// Whether the inbox holds a text from `from` (a device JID) with `id`.
    pub(crate) fn has_received(&self, from: &str, id: &str) -> bool {
        self.received.contains(&(from.to_owned(), id.to_owned()))
    }

    /// The inbox, oldest first.
    pub(crate) fn inbox(&self) -> impl Iterator<Item = &InboxMessage> {
        self.inbox.iter()
    }
}

impl Phone {
    /// The phone's state as the state file keeps it (sorted, so an
    /// unchanged phone encodes the same). Its identity is the account's,
    /// kept with the account.
    pub(crate) fn saved(&self) -> SavedPhone {
        let mut sessions: Vec<SavedSession> = self
            .sessions
            .iter()
            .map(|(address, record)| SavedSession {
                name: address.name.clone(),
                device: address.device,
                record: record.serialize().to_vec(),
            })
            .collect();
        sessions.sort_by(|a, b| (&a.name, a.device).cmp(&(&b.name, b.device)));
        let (own_sender_keys, received_sender_keys) = self.sender_keys.saved();
        SavedPhone {
            registration_id: self.registration_id,
            signed_prekey: Some(SavedSignedPreKey {
                id: self.signed_prekey.id,
                key: self.signed_prekey.key.private_bytes().to_vec(),
                signature: self.signed_prekey.signature.to_vec(),
            }),
            prekeys: self
                .prekeys
                .values()
                .map(|key| SavedPreKey {
                    id: key.id,
                    key: key.key.private_bytes().to_vec(),
                })
                .collect(),
            unclaimed: self.unclaimed.iter().copied().collect(),
            sessions,
            inbox: self.inbox.iter().map(saved_inbox).collect(),
            own_sender_keys,
            received_sender_keys,
            app_state_key: self.app_state_key.as_ref().map(|key| SavedAppStateKey {
                id: key.id.to_vec(),
                data: key.data.to_vec(),
                raw_id: key.raw_id,
                timestamp_ms: key.timestamp_ms,
            }),
            app_state: self.app_state.saved(),
            polls: self.polls.saved(),
        }
    }

    /// A phone from the state file, with the account's identity key.
    pub(crate) fn restore(identity: KeyPair, saved: &SavedPhone) -> Result<Self, InvalidState> {
        let signed = saved
            .signed_prekey
            .as_ref()
            .ok_or_else(|| InvalidState::field("phone without a signed prekey"))?;
        let signed_prekey = signal::SignedPreKey {
            id: signed.id,
            key: key_pair(&signed.key, "phone signed prekey")?,
            signature: signed.signature.as_slice().try_into().map_err(|_| {
                InvalidState::field(format_args!(
                    "phone signed prekey signature: {} bytes, not 64",
                    signed.signature.len()
                ))
            })?,
        };
        let prekeys = saved
            .prekeys
            .iter()
            .map(|saved| {
                let key = PreKey::new(saved.id, key_pair(&saved.key, "phone prekey")?)
                    .map_err(|err| InvalidState::field(format_args!("phone prekey: {err}")))?;
                Ok((saved.id, key))
            })
            .collect::<Result<BTreeMap<u32, PreKey>, InvalidState>>()?;
        let sessions = saved
            .sessions
            .iter()
            .map(|saved| {
                let record = SessionRecord::deserialize(&saved.record).map_err(|err| {
                    InvalidState::field(format_args!(
                        "phone session with {}.{}: {err}",
                        saved.name, saved.device
                    ))
                })?;
                Ok((
                    ProtocolAddress::new(saved.name.clone(), saved.device),
                    record,
                ))
            })
            .collect::<Result<HashMap<_, _>, InvalidState>>()?;
        let inbox = saved
            .inbox
            .iter()
            .map(restored_inbox)
            .collect::<Result<VecDeque<_>, InvalidState>>()?;
        let received = inbox
            .iter()
            .map(|m: &InboxMessage| (m.from.clone(), m.id.clone()))
            .collect();
        let app_state_key = match &saved.app_state_key {
            None => None,
            Some(key) => Some(AppStateKey {
                id: key.id.as_slice().try_into().map_err(|_| {
                    InvalidState::field(format_args!(
                        "app state key id: {} bytes, not {APP_STATE_KEY_ID_LEN}",
                        key.id.len()
                    ))
                })?,
                data: Zeroizing::new(key32(&key.data, "app state key")?),
                raw_id: key.raw_id,
                timestamp_ms: key.timestamp_ms,
            }),
        };
        Ok(Self {
            identity,
            registration_id: saved.registration_id,
            signed_prekey,
            // Only ids whose private key is kept can be handed out.
            unclaimed: saved
                .unclaimed
                .iter()
                .copied()
                .filter(|id| prekeys.contains_key(id))
                .collect(),
            prekeys,
            sessions,
            inbox,
            received,
            sender_keys: SenderKeys::restore(&saved.own_sender_keys, &saved.received_sender_keys)?,
            app_state_key,
            app_state: super::app_state::PhoneAppState::restore(&saved.app_state)?,
            polls: super::phone_content::PhonePolls::restore(&saved.polls),
        })
    }
}

fn saved_inbox(message: &InboxMessage) -> SavedInbox {
    SavedInbox {
        from: message.from.clone(),
        chat: message.chat.clone(),
        id: message.id.clone(),
        text: message.text.clone(),
        timestamp: message.timestamp,
        media: message.media.as_ref().map(|media| SavedInboxMedia {
            kind: media_kind_name(media.kind).to_owned(),
            mimetype: media.mimetype.clone(),
            caption: media.caption.clone(),
            file_name: media.file_name.clone(),
            file_length: media.file_length,
            error: media.verified.clone().err(),
        }),
        content: message
            .content
            .as_ref()
            .map(super::phone_content::saved_content),
    }
}

fn restored_inbox(saved: &SavedInbox) -> Result<InboxMessage, InvalidState> {
    let media = match &saved.media {
        None => None,
        Some(media) => Some(InboxMedia {
            kind: media_kind(&media.kind)
                .ok_or_else(|| InvalidState::field(format_args!("media kind {:?}", media.kind)))?,
            mimetype: media.mimetype.clone(),
            caption: media.caption.clone(),
            file_name: media.file_name.clone(),
            file_length: media.file_length,
            verified: media.error.clone().map_or(Ok(()), Err),
        }),
    };
    Ok(InboxMessage {
        from: saved.from.clone(),
        chat: saved.chat.clone(),
        id: saved.id.clone(),
        text: saved.text.clone(),
        timestamp: saved.timestamp,
        media,
        content: saved
            .content
            .as_ref()
            .and_then(super::phone_content::restored_content),
    })
}

/// A media kind's name in the state file.
fn media_kind_name(kind: MediaType) -> &'static str {
    match kind {
        MediaType::Image => "image",
        MediaType::Video => "video",
        MediaType::Audio => "audio",
        MediaType::VoiceNote => "ptt",
        MediaType::Document => "document",
        MediaType::Sticker => "sticker",
        MediaType::History => "history",
        MediaType::AppState => "app-state",
        MediaType::LinkThumbnail => "link-thumbnail",
    }
}

fn media_kind(name: &str) -> Option<MediaType> {
    [
        MediaType::Image,
        MediaType::Video,
        MediaType::Audio,
        MediaType::VoiceNote,
        MediaType::Document,
        MediaType::Sticker,
        MediaType::History,
        MediaType::AppState,
        MediaType::LinkThumbnail,
    ]
    .into_iter()
    .find(|kind| media_kind_name(*kind) == name)
}

/// A text as a `Message{conversation}`.
pub(crate) fn text_message(text: &str) -> Message {
    Message {
        conversation: Some(text.to_owned()),
        ..Default::default()
    }
}

/// The copy of a text for the sender's other devices.
pub(crate) fn device_sent_message(destination: &str, text: &str) -> Message {
    device_sent_copy(destination, text_message(text))
}

/// The copy of any message for the sender's other devices.
pub(crate) fn device_sent_copy(destination: &str, message: Message) -> Message {
    Message {
        device_sent_message: Some(Box::new(DeviceSentMessage {
            destination_jid: Some(destination.to_owned()),
            message: Some(Box::new(message)),
            phash: None,
        })),
        ..Default::default()
    }
}

/// Reads the text out of a decrypted, unpadded `Message`.
pub(crate) fn content(bytes: &[u8]) -> Result<Content, prost::DecodeError> {
    let message = Message::decode(bytes)?;
    if let Some(sent) = message.device_sent_message {
        let text = sent.message.as_deref().and_then(text_of);
        return Ok(match text {
            Some(text) => Content::SentByMe {
                destination: sent.destination_jid.unwrap_or_default(),
                text,
            },
            None => Content::Other,
        });
    }
    if let (Some(kind), Some(info)) = (
        MediaInfo::type_of(&message),
        MediaInfo::from_message(&message),
    ) {
        return Ok(Content::Media {
            kind,
            info: info.map(Box::new),
        });
    }
    if let Some(rich) = crate::wa::content::Rich::read(&message) {
        return Ok(Content::Rich(Box::new(rich)));
    }
    Ok(text_of(&message).map_or(Content::Other, Content::Text))
}

fn text_of(message: &Message) -> Option<String> {
    message.conversation.clone().or_else(|| {
        message
            .extended_text_message
            .as_ref()
            .and_then(|m| m.text.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::wa::message::ExtendedTextMessage;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn phone(seed: u64) -> Phone {
        let mut rng = StdRng::seed_from_u64(seed);
        let identity = KeyPair::generate(&mut rng);
        Phone::generate(identity, &mut rng)
    }

    #[test]
    fn bundles_pop_one_time_prekeys() {
        let mut alice = phone(1);
        let first = alice.take_bundle();
        let second = alice.take_bundle();
        assert_eq!(first.one_time.map(|k| k.0), Some(1));
        assert_eq!(second.one_time.map(|k| k.0), Some(2));
        assert_eq!(alice.unclaimed_prekeys(), PHONE_PREKEYS as usize - 2);
        for _ in 2..PHONE_PREKEYS {
            alice.take_bundle();
        }
        assert_eq!(alice.take_bundle().one_time, None, "pool exhausted");
    }

    #[test]
    fn phones_exchange_texts_both_ways() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut alice = phone(2);
        let mut bob = phone(3);
        let to_bob = ProtocolAddress::new("bob", 0);
        let to_alice = ProtocolAddress::new("alice", 0);
        let bundle = bob.take_bundle();
        let used = bundle.one_time.map(|k| k.0);
        let first = alice
            .encrypt(&to_bob, Some(&bundle), &text_message("hi bob"), &mut rng)
            .expect("encrypts");
        assert_eq!(first.kind(), "pkmsg");
        let got = bob
            .decrypt(&to_alice, first.kind(), first.bytes(), &mut rng)
            .expect("decrypts");
        assert_eq!(got, Content::Text("hi bob".into()));
        assert!(!bob.prekeys.contains_key(&used.expect("one-time key")));

        let reply = Message {
            extended_text_message: Some(Box::new(ExtendedTextMessage {
                text: Some("hi alice".into()),
                context_info: None,
            })),
            ..Default::default()
        };
        let answer = bob
            .encrypt(&to_alice, None, &reply, &mut rng)
            .expect("session exists");
        assert_eq!(answer.kind(), "msg");
        let got = alice
            .decrypt(&to_bob, "msg", answer.bytes(), &mut rng)
            .expect("decrypts");
        assert_eq!(got, Content::Text("hi alice".into()));

        // Replays and garbage are refused without panicking.
        assert!(alice
            .decrypt(&to_bob, "msg", answer.bytes(), &mut rng)
            .is_err());
        assert!(alice.decrypt(&to_bob, "skmsg", b"x", &mut rng).is_err());
        assert!(alice.decrypt(&to_bob, "pkmsg", &[], &mut rng).is_err());
        assert!(matches!(
            alice.encrypt(&ProtocolAddress::new("carol", 0), None, &reply, &mut rng),
            Err(PhoneError::NoSession(_))
        ));
    }

    #[test]
    fn a_restored_phone_goes_on_decrypting_and_encrypting() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut alice = phone(12);
        let mut bob = phone(13);
        let to_bob = ProtocolAddress::new("bob", 0);
        let to_alice = ProtocolAddress::new("alice", 0);
        let bundle = bob.take_bundle();
        let first = alice
            .encrypt(&to_bob, Some(&bundle), &text_message("one"), &mut rng)
            .expect("encrypts");
        bob.decrypt(&to_alice, first.kind(), first.bytes(), &mut rng)
            .expect("decrypts");
        bob.record(InboxMessage {
            from: "alice".into(),
            chat: "alice".into(),
            id: "M1".into(),
            text: "one".into(),
            timestamp: 1,
            media: None,
            content: None,
        });
        bob.app_state_key(5, &mut rng);

        let saved = bob.saved();
        let mut bob = Phone::restore(bob.identity.clone(), &saved).expect("restores");
        assert_eq!(bob.saved(), saved, "the same state encodes the same");
        assert!(bob.has_received("alice", "M1"));
        let second = alice
            .encrypt(&to_bob, None, &text_message("two"), &mut rng)
            .expect("encrypts");
        assert_eq!(
            bob.decrypt(&to_alice, second.kind(), second.bytes(), &mut rng)
                .expect("the restored session decrypts"),
            Content::Text("two".into())
        );
        let answer = bob
            .encrypt(&to_alice, None, &text_message("three"), &mut rng)
            .expect("encrypts");
        assert_eq!(
            alice
                .decrypt(&to_bob, answer.kind(), answer.bytes(), &mut rng)
                .expect("decrypts"),
            Content::Text("three".into())
        );

        let mut bad = saved.clone();
        bad.sessions[0].record = vec![0xFF; 3];
        assert!(Phone::restore(bob.identity.clone(), &bad).is_err());
        let mut bad = saved;
        bad.signed_prekey = None;
        assert!(Phone::restore(bob.identity.clone(), &bad).is_err());
    }

    #[test]
    fn the_inbox_keeps_each_sender_and_id_once() {
        let mut alice = phone(4);
        let text = |from: &str, id: &str, text: &str| InboxMessage {
            media: None,
            content: None,
            from: from.into(),
            chat: "1@s.whatsapp.net".into(),
            id: id.into(),
            text: text.into(),
            timestamp: 1,
        };
        alice.record(text("1:1@s.whatsapp.net", "M1", "first"));
        alice.record(text("1:1@s.whatsapp.net", "M1", "again"));
        alice.record(text("1:2@s.whatsapp.net", "M1", "other device"));
        let texts: Vec<&str> = alice.inbox().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["first", "other device"]);
        assert!(alice.has_received("1:1@s.whatsapp.net", "M1"));
        assert!(!alice.has_received("1:1@s.whatsapp.net", "M2"));
    }

    #[test]
    fn every_companion_gets_the_same_app_state_key() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut alice = phone(6);
        let first = alice.app_state_key(1_000, &mut rng);
        let again = alice.app_state_key(2_000, &mut rng);
        assert_eq!(first.id, again.id);
        assert_eq!(*first.data, *again.data);
        assert_eq!(again.timestamp_ms, 1_000, "made once, when first linked");
        let proto = first.to_proto();
        let id = proto.key_id.and_then(|k| k.key_id).expect("key id");
        assert_eq!(id.len(), APP_STATE_KEY_ID_LEN);
        let data = proto.key_data.expect("key data");
        assert_eq!(data.key_data.map(|d| d.len()), Some(32));
        assert_eq!(data.timestamp, Some(1_000));
        assert!(data.fingerprint.is_some());
        let other = phone(7).app_state_key(1_000, &mut rng);
        assert_ne!(first.id, other.id, "accounts have their own keys");
    }

    #[test]
    fn device_sent_copies_are_recognised() {
        let bytes = device_sent_message("bob@s.whatsapp.net", "hello").encode_to_vec();
        assert_eq!(
            content(&bytes).expect("decodes"),
            Content::SentByMe {
                destination: "bob@s.whatsapp.net".into(),
                text: "hello".into()
            }
        );
        let other = Message {
            message_context_info: Some(crate::proto::wa::MessageContextInfo::default()),
            ..Default::default()
        };
        assert_eq!(
            content(&other.encode_to_vec()).expect("decodes"),
            Content::Other
        );
        assert!(content(&[0xFF, 0xFF]).is_err());
    }
}
