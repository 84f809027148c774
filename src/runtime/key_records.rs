//! Where the message engine's keys live in the store: the secret name of
//! each record, the names older versions used, the layout of the records
//! kept as raw bytes, and the store writes for the engine's changes. Pure:
//! no store calls and no caches (those are `keys`); imports no other
//! runtime module.
//!
//! Secret names carry no identifier in clear: phone numbers, LIDs, group
//! ids, idempotency keys and message keys become an HMAC under a key derived
//! from the device's identity key (the values are encrypted by the store).

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::store::{Batch, SecretOp};
use crate::wa::creds::Credentials;
use crate::wa::crypto::{hkdf_sha256, hmac_sha256, KeyPair};
use crate::wa::messaging::{Change, DedupeKey, PendingHistory};

use prost::Message as _;

/// Names of records that carry no identifier.
const PREKEY: &str = "signal/prekey/";
pub(super) const PREKEY_NEXT: &str = "signal/prekey-next";
pub(super) const SENT: &str = "sent/";
/// Hashed names: `k/<kind>/<hex>`.
pub(super) const SESSION: &str = "session";
pub(super) const SENDER_KEY: &str = "sender-key";
pub(super) const SEEN: &str = "seen";
pub(super) const IDEMPOTENCY: &str = "idem";
pub(super) const LID: &str = "lid";
/// The reverse: LID users by phone number.
pub(super) const PHONE_LID: &str = "phone-lid";
pub(super) const SENDER_KEY_MEMORY: &str = "sender-key-memory";
/// What downloading a received message's media needs, by message id.
pub(super) const MEDIA: &str = "media";
/// History chunks not yet committed, by their notification's dedupe key.
pub(super) const HISTORY: &str = "history";
/// App-state: sync keys by id, contacts by JID, chat settings by chat JID;
/// collections by their (public) names.
pub(super) const APP_STATE_KEY: &str = "appstate-key";
pub(super) const CONTACT: &str = "contact";
pub(super) const CHAT: &str = "chat";
pub(super) const COLLECTION: &str = "appstate/collection/";
/// Polls' secrets and options, by message id.
pub(super) const POLL: &str = "poll";

/// Present once a session's records of older versions were moved to
/// hashed names (its value: when, in ms).
pub(super) const NAMES_HASHED: &str = "names/hashed";

/// Where older versions kept records under identifiers in clear, and the
/// hashed kind each moves to.
pub(super) const LEGACY: [(&str, &str); 5] = [
    ("signal/session/", SESSION),
    ("signal/sender-key/", SENDER_KEY),
    ("seen/", SEEN),
    ("idem/", IDEMPOTENCY),
    ("lid/", LID),
];

/// The name of a secret of `kind` for identifier `ident`.
pub(super) struct Names(Zeroizing<[u8; 32]>);

impl Names {
    pub(super) fn new(identity: &KeyPair) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf_sha256(
            identity.private_bytes(),
            &[],
            b"wagate secret names",
            key.as_mut(),
        );
        Self(key)
    }

    pub(super) fn of(&self, kind: &str, ident: &str) -> String {
        let mac = hmac_sha256(self.0.as_ref(), &[kind.as_bytes(), &[0], ident.as_bytes()]);
        let mut name = prefix_of(kind);
        name.push_str(&hex::encode(mac.get(..16).unwrap_or_default()));
        name
    }
}

/// What every name of `kind` starts with (to list them all).
pub(super) fn prefix_of(kind: &str) -> String {
    format!("k/{kind}/")
}

/// The store writes for `changes`; `looked_up` holds the secret names of
/// the dedupe keys looked up in the current step.
pub(super) fn batch(
    names: &Names,
    looked_up: &HashMap<DedupeKey, String>,
    changes: &[Change],
) -> Batch {
    let mut batch = Batch::default();
    for change in changes {
        let (key, value) = match change {
            Change::Session(address, record) => {
                (names.of(SESSION, &address.to_string()), record.serialize())
            }
            Change::Prekey(key) => (
                prekey_name(key.id),
                Zeroizing::new(key.key.private_bytes().to_vec()),
            ),
            Change::PrekeyUsed(id) => {
                batch.secrets.push(SecretOp::Delete {
                    key: prekey_name(*id),
                });
                continue;
            }
            Change::NextPrekeyId(next) => (
                PREKEY_NEXT.to_owned(),
                Zeroizing::new(next.to_be_bytes().to_vec()),
            ),
            Change::SenderKey(name, record) => {
                (names.of(SENDER_KEY, &name.to_string()), record.serialize())
            }
            Change::Seen { key, t_s, at_ms } => {
                (seen_name(names, looked_up, key), seen_bytes(*at_ms, *t_s))
            }
            Change::Sent(id, record) => (
                format!("{SENT}{id}"),
                Zeroizing::new(record.encode_to_vec()),
            ),
            Change::Idempotency(key, record) => (
                names.of(IDEMPOTENCY, key),
                Zeroizing::new(record.encode_to_vec()),
            ),
            Change::Lid { lid_user, phone } => {
                batch.secrets.push(SecretOp::Put {
                    key: names.of(PHONE_LID, phone),
                    value: Zeroizing::new(lid_user.clone().into_bytes()),
                });
                (
                    names.of(LID, lid_user),
                    Zeroizing::new(phone.clone().into_bytes()),
                )
            }
            Change::SenderKeyMemory(group, record) => (
                names.of(SENDER_KEY_MEMORY, group),
                Zeroizing::new(record.encode_to_vec()),
            ),
            Change::Media(message_id, record) => (
                names.of(MEDIA, message_id),
                Zeroizing::new(record.encode_to_vec()),
            ),
            Change::History(key, record) => {
                batch.secrets.push(history_op(names, key, record.as_ref()));
                continue;
            }
            Change::AppStateKey(key) => (
                names.of(APP_STATE_KEY, &hex::encode(&key.id)),
                key.data.clone(),
            ),
            Change::AppStateCollection(name, record) => (
                format!("{COLLECTION}{name}"),
                Zeroizing::new(record.encode_to_vec()),
            ),
            Change::Contact(jid, record) => (
                names.of(CONTACT, jid),
                Zeroizing::new(record.encode_to_vec()),
            ),
            Change::ChatSettings(chat, record) => {
                (names.of(CHAT, chat), Zeroizing::new(record.encode_to_vec()))
            }
            Change::Poll(id, record) => {
                (names.of(POLL, id), Zeroizing::new(record.encode_to_vec()))
            }
        };
        batch.secrets.push(SecretOp::Put { key, value });
    }
    batch
}

/// The secret name of a dedupe key, from this step's lookups if it was
/// looked up.
fn seen_name(names: &Names, looked_up: &HashMap<DedupeKey, String>, key: &DedupeKey) -> String {
    match looked_up.get(key) {
        Some(name) => name.clone(),
        None => names.of(SEEN, &key.0),
    }
}

/// The write recording a history chunk's progress (its deletion once
/// complete).
fn history_op(names: &Names, key: &DedupeKey, record: Option<&PendingHistory>) -> SecretOp {
    let name = names.of(HISTORY, &key.0);
    match record {
        Some(record) => SecretOp::Put {
            key: name,
            value: Zeroizing::new(record.encode_to_vec()),
        },
        None => SecretOp::Delete { key: name },
    }
}

/// The store write of a history chunk's progress, committed with one of
/// its pages outside a message step (`change` is a [`Change::History`];
/// anything else gives an empty batch).
pub(crate) fn history_batch(creds: &Credentials, change: &Change) -> Batch {
    let mut batch = Batch::default();
    if let Change::History(key, record) = change {
        let names = Names::new(&creds.identity_key);
        batch.secrets.push(history_op(&names, key, record.as_ref()));
    }
    batch
}

pub(super) fn prekey_name(id: u32) -> String {
    format!("{PREKEY}{id:06x}")
}

/// A seen record: when it was committed (ms) and the message's server
/// time (s).
pub(super) fn seen_bytes(at_ms: u64, t_s: u64) -> Zeroizing<Vec<u8>> {
    let mut out = Vec::with_capacity(16);
    out.extend_from_slice(&at_ms.to_be_bytes());
    out.extend_from_slice(&t_s.to_be_bytes());
    Zeroizing::new(out)
}

pub(super) fn seen_value(value: &[u8]) -> (u64, u64) {
    let read = |range: std::ops::Range<usize>| {
        value
            .get(range)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    let at_ms = read(0..8).unwrap_or(0);
    (at_ms, read(8..16).unwrap_or(at_ms / 1000))
}
