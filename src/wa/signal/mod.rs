//! The Signal protocol as WhatsApp uses it: X3DH session setup from prekey
//! bundles, the double ratchet with `pkmsg`/`msg` wire messages, sender keys
//! for groups (`skmsg`), and WhatsApp's plaintext padding. Sans-IO: records
//! come in and go out as values for the caller to persist, randomness is
//! passed in; must not import tokio, the clock, the store or `sim`.
//!
//! Wire compatibility target is libsignal-node (used by Baileys) and
//! go.mau.fi/libsignal (whatsmeow). Where they differ this module takes the
//! stricter reading: signed prekey signatures are verified, public keys must
//! carry the 0x05 type byte, and a message that fails to decrypt leaves no
//! trace in the session record.

mod cipher;
pub mod fuzzing;
mod group;
mod keys;
mod padding;
mod ratchet;
mod session;
mod wire;

use std::fmt;
use std::str::FromStr;

pub use cipher::{
    decrypt_message, decrypt_prekey_message, encrypt, process_bundle, CiphertextMessage, Decrypted,
    LocalKeys,
};
pub use group::{
    create_distribution_message, group_decrypt, group_encrypt, process_distribution_message,
    SenderKeyName, SenderKeyRecord,
};
pub use keys::{
    decode_public_key, encode_public_key, generate_registration_id, PreKey, PreKeyBundle,
    SignedPreKey, KEY_TYPE_DJB, MAX_PRE_KEY_ID,
};
pub use padding::{pad, unpad};
pub use session::SessionRecord;
pub use wire::{
    PreKeySignalMessage, SenderKeyDistributionMessage, SenderKeyMessage, SignalMessage,
};

/// Version byte of every Signal wire message: message version 3 in the high
/// nibble, highest supported version 3 in the low nibble.
pub const VERSION_BYTE: u8 = 0x33;

/// How far ahead of its chain a message may be. Pairwise, as libsignal-node:
/// at most 2000 keys derived for one message (so at most 1999 skipped);
/// sender keys, as Baileys: at most 2000 iterations skipped. A message
/// further ahead is rejected. Also the most skipped keys kept per chain,
/// oldest dropped first.
pub const MAX_SKIPPED_KEYS: u32 = 2000;

/// Receiving chains kept per session state; older ones are dropped with their
/// skipped keys (as libsignal does).
pub const MAX_RECEIVING_CHAINS: usize = 5;

/// Previous session states kept in a record besides the current one, so late
/// messages of a replaced session still decrypt (libsignal keeps 40).
pub const MAX_ARCHIVED_STATES: usize = 40;

/// Sender key states kept per (group, sender): a sender that rotates its key
/// may still have messages in flight under the previous one.
pub const MAX_SENDER_KEY_STATES: usize = 5;

/// Where a session leads: a user and one of their devices. Formats as
/// libsignal-node's `ProtocolAddress`, `"name.device"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolAddress {
    /// The user part of the JID (phone number or LID, with any `_1` domain
    /// suffix already applied by the caller).
    pub name: String,
    /// The device number, 0 for the primary phone.
    pub device: u32,
}

impl ProtocolAddress {
    /// An address for `device` of `name`.
    pub fn new(name: impl Into<String>, device: u32) -> Self {
        Self {
            name: name.into(),
            device,
        }
    }
}

impl fmt::Display for ProtocolAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.device)
    }
}

impl FromStr for ProtocolAddress {
    type Err = SignalError;

    /// Parses `"name.device"`; the name may not contain a dot, as in
    /// libsignal-node.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, device) = s
            .split_once('.')
            .ok_or(SignalError::Malformed("address has no device part"))?;
        if name.is_empty() || device.is_empty() || !device.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignalError::Malformed("address is not name.device"));
        }
        let device = device
            .parse()
            .map_err(|_| SignalError::Malformed("address device out of range"))?;
        Ok(Self::new(name, device))
    }
}

/// Everything that can go wrong in sessions, sender keys and padding.
/// Untrusted identities are not errors: WhatsApp trusts on first use, and an
/// identity change is reported by [`Decrypted::identity_changed`].
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// A wire message or stored value decoded but is structurally wrong.
    #[error("malformed message: {0}")]
    Malformed(&'static str),
    /// A wire message is not valid protobuf.
    #[error("message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A wire message carries a version byte other than 0x33.
    #[error("unsupported message version {0:#04x}")]
    UnsupportedVersion(u8),
    /// A public key is not 33 bytes starting with the 0x05 type byte.
    #[error("public key is not a 0x05-prefixed Curve25519 key")]
    BadPublicKey,
    /// A peer's public key gives an all-zero agreement (a low-order point).
    #[error("public key is a low-order point")]
    WeakKey,
    /// A signed prekey or sender key message signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// A message MAC does not match: tampering, or not this session's message.
    #[error("message authentication failed")]
    BadMac,
    /// The ciphertext is not a whole number of AES blocks or its padding is
    /// wrong.
    #[error("ciphertext does not decrypt")]
    BadCiphertext,
    /// There is no session (or no usable one) for this peer.
    #[error("no session")]
    NoSession,
    /// A prekey message names a signed prekey the caller did not supply.
    #[error("signed prekey {0} not available")]
    MissingSignedPreKey(u32),
    /// A prekey message names a one-time prekey the caller did not supply
    /// (already used, or never issued).
    #[error("one-time prekey {0} not available")]
    MissingPreKey(u32),
    /// Prekey ids travel as 3 bytes in WhatsApp's key nodes.
    #[error("prekey id {0:#x} does not fit in 24 bits")]
    PreKeyIdOutOfRange(u32),
    /// The message key for this counter was used already or was dropped: the
    /// message is a replay or a duplicate delivery.
    #[error("message {counter} already decrypted or its key was dropped")]
    DuplicateMessage {
        /// The message's counter (or sender key iteration).
        counter: u32,
    },
    /// The message is further ahead of its chain than
    /// [`MAX_SKIPPED_KEYS`] allows.
    #[error("message is {skip} keys ahead of its chain, beyond the limit")]
    TooFarAhead {
        /// How many keys would be skipped.
        skip: u32,
    },
    /// The message belongs to a receiving chain that was closed by a later
    /// ratchet step and its key was never kept.
    #[error("receiving chain is closed")]
    ChainClosed,
    /// A chain counter reached 2^32; the session must be replaced.
    #[error("chain counter exhausted")]
    ChainExhausted,
    /// No sender key state with this id for this (group, sender).
    #[error("no sender key with id {0}")]
    NoSenderKey(u32),
    /// Our own sender key record has no state we can sign with.
    #[error("no own sender key to encrypt with")]
    NoOwnSenderKey,
    /// WhatsApp plaintext padding is missing or inconsistent.
    #[error("invalid plaintext padding")]
    BadPadding,
    /// A stored record does not decode or breaks an invariant.
    #[error("stored record is corrupt: {0}")]
    CorruptRecord(&'static str),
    /// A stored record has a format version this build does not know.
    #[error("stored record version {0} is not supported")]
    RecordVersion(u32),
}

impl SignalError {
    /// True when the message was already processed (a duplicate delivery or
    /// replay): the caller should acknowledge it without a retry receipt.
    /// Every other error is a decryption failure worth a retry receipt, or a
    /// local fault.
    pub fn is_duplicate(&self) -> bool {
        match self {
            Self::DuplicateMessage { .. } => true,
            Self::Malformed(_)
            | Self::Decode(_)
            | Self::UnsupportedVersion(_)
            | Self::BadPublicKey
            | Self::WeakKey
            | Self::BadSignature
            | Self::BadMac
            | Self::BadCiphertext
            | Self::NoSession
            | Self::MissingSignedPreKey(_)
            | Self::MissingPreKey(_)
            | Self::PreKeyIdOutOfRange(_)
            | Self::TooFarAhead { .. }
            | Self::ChainClosed
            | Self::ChainExhausted
            | Self::NoSenderKey(_)
            | Self::NoOwnSenderKey
            | Self::BadPadding
            | Self::CorruptRecord(_)
            | Self::RecordVersion(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_formats_and_parses_like_libsignal_node() {
        let address = ProtocolAddress::new("5511999990000", 3);
        assert_eq!(address.to_string(), "5511999990000.3");
        assert_eq!(
            "5511999990000.3".parse::<ProtocolAddress>().ok(),
            Some(address)
        );
        assert_eq!(
            "123_1.0".parse::<ProtocolAddress>().ok(),
            Some(ProtocolAddress::new("123_1", 0))
        );
        for bad in [
            "",
            "abc",
            ".1",
            "a.",
            "a.b",
            "a.1.2",
            "a.-1",
            "a.99999999999",
            "a.+1",
        ] {
            assert!(bad.parse::<ProtocolAddress>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn version_byte_is_three_three() {
        assert_eq!(VERSION_BYTE, (3 << 4) | 3);
    }

    /// Messages made by libsignal-node and Baileys' sender key code for a
    /// receiver with fixed keys (`tests/interop/signal-gen-vectors.js`).
    mod libsignal_vectors {
        use super::*;
        use crate::wa::crypto::KeyPair;
        use rand::rngs::StdRng;
        use rand::SeedableRng;
        use serde_json::Value;

        const VECTORS: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/signal/libsignal.json"
        ));

        fn vectors() -> Value {
            serde_json::from_str(VECTORS).expect("vector file is valid JSON")
        }

        fn bytes(value: &Value) -> Vec<u8> {
            hex::decode(value.as_str().expect("hex string")).expect("valid hex")
        }

        fn key(value: &Value) -> KeyPair {
            KeyPair::from_private(bytes(value).try_into().expect("32 bytes"))
        }

        fn number(value: &Value) -> u32 {
            value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .expect("u32")
        }

        struct Receiver {
            identity: KeyPair,
            registration_id: u32,
            signed: SignedPreKey,
            pre_key: PreKey,
        }

        fn receiver(v: &Value) -> Receiver {
            let r = &v["receiver"];
            Receiver {
                identity: key(&r["identity_private"]),
                registration_id: number(&r["registration_id"]),
                signed: SignedPreKey {
                    id: number(&r["signed_pre_key"]["id"]),
                    key: key(&r["signed_pre_key"]["private"]),
                    // libsignal-node does not check it; neither does the receiver.
                    signature: [0; 64],
                },
                pre_key: PreKey::new(number(&r["pre_key"]["id"]), key(&r["pre_key"]["private"]))
                    .expect("24-bit id"),
            }
        }

        /// Decrypts a vector session's pkmsgs in the order given, returning
        /// the prekey ids each consumed.
        fn decrypt_session(v: &Value, name: &str, order: &[usize]) -> Vec<Option<u32>> {
            let us = receiver(v);
            let keys = LocalKeys {
                identity: &us.identity,
                registration_id: us.registration_id,
                signed_pre_keys: std::slice::from_ref(&us.signed),
                pre_keys: std::slice::from_ref(&us.pre_key),
            };
            let session = &v[name];
            let messages = session["messages"].as_array().expect("list");
            let mut rng = StdRng::seed_from_u64(0x7EC);
            let mut record: Option<SessionRecord> = None;
            let mut used = Vec::new();
            for &i in order {
                let body = bytes(&messages[i]["body"]);
                let decrypted = decrypt_prekey_message(record.as_ref(), &keys, &body, &mut rng)
                    .expect("libsignal's pkmsg decrypts");
                assert_eq!(decrypted.plaintext, bytes(&messages[i]["plaintext"]));
                assert_eq!(
                    decrypted.remote_identity[..],
                    bytes(&session["sender_identity"])[..]
                );
                assert_eq!(
                    decrypted.record.remote_registration_id(),
                    Some(number(&session["sender_registration_id"]))
                );
                // Every prefix is also a valid record to store.
                let stored = decrypted.record.serialize();
                record = Some(SessionRecord::deserialize(&stored).expect("round trip"));
                used.push(decrypted.used_prekey_id);
            }
            used
        }

        #[test]
        fn pkmsgs_with_one_time_prekey() {
            let v = vectors();
            assert_eq!(
                decrypt_session(&v, "with_pre_key", &[0, 2, 1]),
                vec![Some(300), None, None]
            );
            assert_eq!(
                decrypt_session(&v, "with_pre_key", &[1, 0]),
                vec![Some(300), None]
            );
        }

        #[test]
        fn pkmsgs_without_one_time_prekey() {
            let v = vectors();
            let header =
                PreKeySignalMessage::decode(&bytes(&v["without_pre_key"]["messages"][0]["body"]))
                    .expect("decodes");
            assert_eq!(header.pre_key_id, None);
            assert_eq!(header.signed_pre_key_id, 7);
            assert_eq!(
                decrypt_session(&v, "without_pre_key", &[0, 1]),
                vec![None, None]
            );
        }

        #[test]
        fn tampered_vector_is_rejected() {
            let v = vectors();
            let us = receiver(&v);
            let keys = LocalKeys {
                identity: &us.identity,
                registration_id: us.registration_id,
                signed_pre_keys: std::slice::from_ref(&us.signed),
                pre_keys: std::slice::from_ref(&us.pre_key),
            };
            let body = bytes(&v["with_pre_key"]["messages"][0]["body"]);
            let mut rng = StdRng::seed_from_u64(1);
            // Its last bytes are the signed prekey id: a wrong one is missing.
            let mut wrong_id = body.clone();
            let last = wrong_id.len() - 1;
            wrong_id[last] ^= 1;
            assert!(matches!(
                decrypt_prekey_message(None, &keys, &wrong_id, &mut rng),
                Err(SignalError::MissingSignedPreKey(6))
            ));
            // A flipped MAC bit in the inner message.
            let header = PreKeySignalMessage::decode(&body).expect("decodes");
            let mut inner = header.message_bytes().to_vec();
            let last = inner.len() - 1;
            inner[last] ^= 1;
            let tampered = PreKeySignalMessage::encode(
                header.registration_id.unwrap_or_default(),
                header.pre_key_id,
                header.signed_pre_key_id,
                &header.base_key,
                &header.identity_key,
                inner,
            );
            assert!(matches!(
                decrypt_prekey_message(None, &keys, &tampered, &mut rng),
                Err(SignalError::BadMac)
            ));
        }

        #[test]
        fn baileys_sender_key_messages() {
            let v = vectors();
            let group = &v["group"];
            let mut record = SenderKeyRecord::new();
            process_distribution_message(&mut record, &bytes(&group["distribution"]))
                .expect("Baileys' distribution message");
            let messages = group["messages"].as_array().expect("list");
            // Baileys advances its chain by two per message.
            let iterations: Vec<u32> = messages
                .iter()
                .map(|m| {
                    SenderKeyMessage::decode(&bytes(&m["body"]))
                        .expect("decodes")
                        .iteration
                })
                .collect();
            assert_eq!(iterations, vec![0, 2, 4, 6]);
            for i in [1, 0, 3, 2] {
                assert_eq!(
                    group_decrypt(&mut record, &bytes(&messages[i]["body"])).expect("decrypts"),
                    bytes(&messages[i]["plaintext"])
                );
            }
        }
    }

    #[test]
    fn only_duplicates_are_duplicates() {
        assert!(SignalError::DuplicateMessage { counter: 4 }.is_duplicate());
        assert!(!SignalError::BadMac.is_duplicate());
        assert!(!SignalError::TooFarAhead { skip: 2001 }.is_duplicate());
    }
}
