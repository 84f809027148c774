//! Encoding and decoding of the four Signal wire messages: `SignalMessage`
//! (`msg`), `PreKeySignalMessage` (`pkmsg`), `SenderKeyMessage` (`skmsg`)
//! and `SenderKeyDistributionMessage`. Each is the version byte 0x33, a
//! protobuf (field numbers of libsignal's WhisperTextProtocol.proto), and for
//! two of them a trailing MAC or signature. Decoders never panic and check
//! every key length. Must not import I/O.

use prost::Message;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;

use super::keys::{decode_public_key, encode_public_key};
use super::{SignalError, VERSION_BYTE};
use crate::wa::crypto::{hmac_sha256, Signer, Verifier};

/// Bytes of HMAC-SHA256 kept at the end of a `SignalMessage`.
const MAC_LEN: usize = 8;
/// Bytes of the XEdDSA signature at the end of a `SenderKeyMessage`.
const SIGNATURE_LEN: usize = 64;

/// Protobuf shapes of the wire messages (proto2, every field optional).
mod pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SignalMessage {
        #[prost(bytes = "vec", optional, tag = "1")]
        pub(super) ratchet_key: Option<Vec<u8>>,
        #[prost(uint32, optional, tag = "2")]
        pub(super) counter: Option<u32>,
        #[prost(uint32, optional, tag = "3")]
        pub(super) previous_counter: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub(super) ciphertext: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PreKeySignalMessage {
        #[prost(uint32, optional, tag = "5")]
        pub(super) registration_id: Option<u32>,
        #[prost(uint32, optional, tag = "1")]
        pub(super) pre_key_id: Option<u32>,
        #[prost(uint32, optional, tag = "6")]
        pub(super) signed_pre_key_id: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "2")]
        pub(super) base_key: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub(super) identity_key: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub(super) message: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SenderKeyMessage {
        #[prost(uint32, optional, tag = "1")]
        pub(super) id: Option<u32>,
        #[prost(uint32, optional, tag = "2")]
        pub(super) iteration: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub(super) ciphertext: Option<Vec<u8>>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SenderKeyDistributionMessage {
        #[prost(uint32, optional, tag = "1")]
        pub(super) id: Option<u32>,
        #[prost(uint32, optional, tag = "2")]
        pub(super) iteration: Option<u32>,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub(super) chain_key: Option<Vec<u8>>,
        #[prost(bytes = "vec", optional, tag = "4")]
        pub(super) signing_key: Option<Vec<u8>>,
    }
}

/// A decoded `msg`: one double-ratchet message. Its MAC is checked by the
/// session that decrypts it, since the MAC key comes from the ratchet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalMessage {
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Position of this message in the sender's chain.
    pub counter: u32,
    /// Last position the sender used on its previous chain.
    pub previous_counter: u32,
    /// AES-256-CBC ciphertext of the plaintext.
    pub ciphertext: Vec<u8>,
    /// Version byte and protobuf: the part the MAC covers.
    signed: Vec<u8>,
    mac: [u8; MAC_LEN],
}

impl SignalMessage {
    /// Decodes `0x33 ‖ protobuf ‖ mac[8]`. Absent counters read as 0, as
    /// protobufjs does.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        check_version(bytes)?;
        let split = bytes
            .len()
            .checked_sub(MAC_LEN)
            .filter(|&at| at >= 1)
            .ok_or(SignalError::Malformed("message shorter than its MAC"))?;
        let (signed, mac) = bytes.split_at(split);
        let body = signed.get(1..).unwrap_or_default();
        let message = pb::SignalMessage::decode(body)?;
        let ratchet_key = decode_public_key(
            message
                .ratchet_key
                .as_deref()
                .ok_or(SignalError::Malformed("message has no ratchet key"))?,
        )?;
        let ciphertext = message
            .ciphertext
            .ok_or(SignalError::Malformed("message has no ciphertext"))?;
        let mut mac_bytes = [0u8; MAC_LEN];
        mac_bytes.copy_from_slice(mac);
        Ok(Self {
            ratchet_key,
            counter: message.counter.unwrap_or(0),
            previous_counter: message.previous_counter.unwrap_or(0),
            ciphertext,
            signed: signed.to_vec(),
            mac: mac_bytes,
        })
    }

    /// Encodes a message and appends its MAC, computed over the sender's and
    /// receiver's 33-byte identity keys and the signed part.
    pub(super) fn encode(
        ratchet_key: &[u8; 32],
        counter: u32,
        previous_counter: u32,
        ciphertext: Vec<u8>,
        mac_key: &[u8; 32],
        sender_identity: &[u8; 32],
        receiver_identity: &[u8; 32],
    ) -> Vec<u8> {
        let body = pb::SignalMessage {
            ratchet_key: Some(encode_public_key(ratchet_key).to_vec()),
            counter: Some(counter),
            previous_counter: Some(previous_counter),
            ciphertext: Some(ciphertext),
        };
        let mut out = Vec::with_capacity(1 + body.encoded_len() + MAC_LEN);
        out.push(VERSION_BYTE);
        body.encode_raw(&mut out);
        let mac = mac(mac_key, sender_identity, receiver_identity, &out);
        out.extend_from_slice(&mac);
        out
    }

    /// Whether the MAC was made with `mac_key` by `sender_identity` for
    /// `receiver_identity`. Constant time.
    pub(super) fn verify_mac(
        &self,
        mac_key: &[u8; 32],
        sender_identity: &[u8; 32],
        receiver_identity: &[u8; 32],
    ) -> bool {
        let expected = mac(mac_key, sender_identity, receiver_identity, &self.signed);
        bool::from(expected.ct_eq(&self.mac))
    }
}

fn mac(
    mac_key: &[u8; 32],
    sender_identity: &[u8; 32],
    receiver_identity: &[u8; 32],
    signed: &[u8],
) -> [u8; MAC_LEN] {
    let full = hmac_sha256(
        mac_key,
        &[
            &encode_public_key(sender_identity),
            &encode_public_key(receiver_identity),
            signed,
        ],
    );
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// A decoded `pkmsg`: a [`SignalMessage`] plus what the receiver needs to
/// build the session first. It has no MAC of its own. Decode it before
/// decrypting to learn which prekeys to load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeySignalMessage {
    /// The sender's registration id.
    pub registration_id: Option<u32>,
    /// The receiver's one-time prekey used, if any.
    pub pre_key_id: Option<u32>,
    /// The receiver's signed prekey used.
    pub signed_pre_key_id: u32,
    /// The sender's X3DH ephemeral key; identifies the session.
    pub base_key: [u8; 32],
    /// The sender's identity key.
    pub identity_key: [u8; 32],
    /// The first message of the session.
    pub message: SignalMessage,
    /// The inner message as sent, kept so the message re-encodes verbatim.
    message_bytes: Vec<u8>,
}

impl PreKeySignalMessage {
    /// Decodes `0x33 ‖ protobuf`, including the inner message.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        check_version(bytes)?;
        let message = pb::PreKeySignalMessage::decode(bytes.get(1..).unwrap_or_default())?;
        let signed_pre_key_id = message.signed_pre_key_id.ok_or(SignalError::Malformed(
            "prekey message has no signed prekey id",
        ))?;
        let base_key = decode_public_key(
            message
                .base_key
                .as_deref()
                .ok_or(SignalError::Malformed("prekey message has no base key"))?,
        )?;
        let identity_key = decode_public_key(
            message
                .identity_key
                .as_deref()
                .ok_or(SignalError::Malformed("prekey message has no identity key"))?,
        )?;
        let message_bytes = message.message.ok_or(SignalError::Malformed(
            "prekey message has no inner message",
        ))?;
        Ok(Self {
            registration_id: message.registration_id,
            pre_key_id: message.pre_key_id,
            signed_pre_key_id,
            base_key,
            identity_key,
            message: SignalMessage::decode(&message_bytes)?,
            message_bytes,
        })
    }

    /// Wraps an encoded [`SignalMessage`] with the session setup fields.
    pub(super) fn encode(
        registration_id: u32,
        pre_key_id: Option<u32>,
        signed_pre_key_id: u32,
        base_key: &[u8; 32],
        identity_key: &[u8; 32],
        message: Vec<u8>,
    ) -> Vec<u8> {
        let body = pb::PreKeySignalMessage {
            registration_id: Some(registration_id),
            pre_key_id,
            signed_pre_key_id: Some(signed_pre_key_id),
            base_key: Some(encode_public_key(base_key).to_vec()),
            identity_key: Some(encode_public_key(identity_key).to_vec()),
            message: Some(message),
        };
        let mut out = Vec::with_capacity(1 + body.encoded_len());
        out.push(VERSION_BYTE);
        body.encode_raw(&mut out);
        out
    }

    /// The inner message exactly as received.
    pub fn message_bytes(&self) -> &[u8] {
        &self.message_bytes
    }
}

/// A decoded `skmsg`: one group message under a sender key. Its signature is
/// checked against the sender's signing key by the record that decrypts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderKeyMessage {
    /// Which of the sender's keys encrypted it.
    pub key_id: u32,
    /// Position in the sender key chain.
    pub iteration: u32,
    /// AES-256-CBC ciphertext.
    pub ciphertext: Vec<u8>,
    /// Version byte and protobuf: the part the signature covers.
    signed: Vec<u8>,
    signature: [u8; SIGNATURE_LEN],
}

impl SenderKeyMessage {
    /// Decodes `0x33 ‖ protobuf ‖ signature[64]`.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        check_version(bytes)?;
        let split = bytes
            .len()
            .checked_sub(SIGNATURE_LEN)
            .filter(|&at| at >= 1)
            .ok_or(SignalError::Malformed(
                "sender key message shorter than its signature",
            ))?;
        let (signed, signature) = bytes.split_at(split);
        let message = pb::SenderKeyMessage::decode(signed.get(1..).unwrap_or_default())?;
        let ciphertext = message.ciphertext.ok_or(SignalError::Malformed(
            "sender key message has no ciphertext",
        ))?;
        let mut signature_bytes = [0u8; SIGNATURE_LEN];
        signature_bytes.copy_from_slice(signature);
        Ok(Self {
            key_id: message.id.unwrap_or(0),
            iteration: message.iteration.unwrap_or(0),
            ciphertext,
            signed: signed.to_vec(),
            signature: signature_bytes,
        })
    }

    /// Encodes and signs a message with the sender's signing key.
    pub(super) fn encode(
        key_id: u32,
        iteration: u32,
        ciphertext: Vec<u8>,
        signing_key: &Signer,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Vec<u8> {
        let body = pb::SenderKeyMessage {
            id: Some(key_id),
            iteration: Some(iteration),
            ciphertext: Some(ciphertext),
        };
        let mut out = Vec::with_capacity(1 + body.encoded_len() + SIGNATURE_LEN);
        out.push(VERSION_BYTE);
        body.encode_raw(&mut out);
        let signature = signing_key.sign(&out, rng);
        out.extend_from_slice(&signature);
        out
    }

    /// Whether the signature is by `signing_public`.
    #[cfg(test)]
    pub(super) fn verify_signature(&self, signing_public: &[u8; 32]) -> bool {
        crate::wa::crypto::verify(signing_public, &self.signed, &self.signature)
    }

    /// The sign bit of the signer's Edwards key, carried in the signature.
    pub(super) fn sign_bit(&self) -> u8 {
        self.signature[63] >> 7
    }

    /// Whether the signature is by the key `verifier` was prepared from.
    pub(super) fn verify_with(&self, verifier: &Verifier) -> bool {
        verifier.verify(&self.signed, &self.signature)
    }
}

/// A sender key distribution message: what a group member needs to decrypt
/// a sender's `skmsg`s from `iteration` on. Travels inside a pairwise
/// encrypted `Message`, never on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderKeyDistributionMessage {
    /// The sender key id.
    pub key_id: u32,
    /// The chain position `chain_key` is at.
    pub iteration: u32,
    /// The chain key at `iteration`.
    pub chain_key: [u8; 32],
    /// The sender's signing public key.
    pub signing_key: [u8; 32],
}

impl SenderKeyDistributionMessage {
    /// Decodes `0x33 ‖ protobuf`. Every field is required.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        check_version(bytes)?;
        let message = pb::SenderKeyDistributionMessage::decode(bytes.get(1..).unwrap_or_default())?;
        let chain_key = message
            .chain_key
            .as_deref()
            .and_then(|key| <[u8; 32]>::try_from(key).ok())
            .ok_or(SignalError::Malformed(
                "distribution message chain key is not 32 bytes",
            ))?;
        let signing_key = decode_public_key(message.signing_key.as_deref().ok_or(
            SignalError::Malformed("distribution message has no signing key"),
        )?)?;
        Ok(Self {
            key_id: message
                .id
                .ok_or(SignalError::Malformed("distribution message has no key id"))?,
            iteration: message.iteration.ok_or(SignalError::Malformed(
                "distribution message has no iteration",
            ))?,
            chain_key,
            signing_key,
        })
    }

    /// Encodes `0x33 ‖ protobuf`.
    pub fn encode(&self) -> Vec<u8> {
        let body = pb::SenderKeyDistributionMessage {
            id: Some(self.key_id),
            iteration: Some(self.iteration),
            chain_key: Some(self.chain_key.to_vec()),
            signing_key: Some(encode_public_key(&self.signing_key).to_vec()),
        };
        let mut out = Vec::with_capacity(1 + body.encoded_len());
        out.push(VERSION_BYTE);
        body.encode_raw(&mut out);
        out
    }
}

/// Every message starts with 0x33; libsignal builds its MAC input with that
/// constant, so no other version byte could ever authenticate.
fn check_version(bytes: &[u8]) -> Result<(), SignalError> {
    match bytes.first() {
        Some(&VERSION_BYTE) => Ok(()),
        Some(&other) => Err(SignalError::UnsupportedVersion(other)),
        None => Err(SignalError::Malformed("empty message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::crypto::KeyPair;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn signal_message_round_trips_with_mac() {
        let bytes =
            SignalMessage::encode(&[1; 32], 7, 3, vec![9; 32], &[2; 32], &[3; 32], &[4; 32]);
        assert_eq!(bytes[0], 0x33);
        let message = SignalMessage::decode(&bytes).expect("decodes");
        assert_eq!(message.ratchet_key, [1; 32]);
        assert_eq!((message.counter, message.previous_counter), (7, 3));
        assert_eq!(message.ciphertext, vec![9; 32]);
        assert!(message.verify_mac(&[2; 32], &[3; 32], &[4; 32]));
        // The MAC binds the direction: swapped identities fail.
        assert!(!message.verify_mac(&[2; 32], &[4; 32], &[3; 32]));
        assert!(!message.verify_mac(&[5; 32], &[3; 32], &[4; 32]));
        let mut tampered = bytes.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let tampered = SignalMessage::decode(&tampered).expect("still decodes");
        assert!(!tampered.verify_mac(&[2; 32], &[3; 32], &[4; 32]));
    }

    #[test]
    fn signal_message_layout_matches_libsignal() {
        // 0x33, field 1 (33 bytes), field 2, field 3, field 4, then 8 MAC bytes.
        let bytes =
            SignalMessage::encode(&[1; 32], 0, 0, vec![9; 16], &[2; 32], &[3; 32], &[4; 32]);
        assert_eq!(&bytes[..3], &[0x33, 0x0A, 33]);
        assert_eq!(bytes[3], 0x05);
        assert_eq!(&bytes[36..40], &[0x10, 0, 0x18, 0]);
        assert_eq!(&bytes[40..42], &[0x22, 16]);
        assert_eq!(bytes.len(), 42 + 16 + 8);
    }

    #[test]
    fn prekey_message_round_trips() {
        let inner =
            SignalMessage::encode(&[1; 32], 0, 0, vec![9; 16], &[2; 32], &[3; 32], &[4; 32]);
        let bytes =
            PreKeySignalMessage::encode(1234, Some(5), 6, &[7; 32], &[8; 32], inner.clone());
        let message = PreKeySignalMessage::decode(&bytes).expect("decodes");
        assert_eq!(message.registration_id, Some(1234));
        assert_eq!(message.pre_key_id, Some(5));
        assert_eq!(message.signed_pre_key_id, 6);
        assert_eq!(message.base_key, [7; 32]);
        assert_eq!(message.identity_key, [8; 32]);
        assert_eq!(message.message_bytes(), &inner[..]);
        assert_eq!(message.message.counter, 0);

        let without = PreKeySignalMessage::encode(1, None, 6, &[7; 32], &[8; 32], inner);
        assert_eq!(
            PreKeySignalMessage::decode(&without)
                .expect("decodes")
                .pre_key_id,
            None
        );
    }

    #[test]
    fn sender_key_messages_round_trip_and_verify() {
        let mut rng = StdRng::seed_from_u64(5);
        let signing = KeyPair::generate(&mut rng);
        let bytes = SenderKeyMessage::encode(42, 3, vec![1; 16], &signing.signer(), &mut rng);
        let message = SenderKeyMessage::decode(&bytes).expect("decodes");
        assert_eq!((message.key_id, message.iteration), (42, 3));
        assert!(message.verify_signature(&signing.public));
        assert!(!message.verify_signature(&KeyPair::generate(&mut rng).public));
        let mut tampered = bytes;
        tampered[3] ^= 1;
        if let Ok(message) = SenderKeyMessage::decode(&tampered) {
            assert!(!message.verify_signature(&signing.public));
        }

        let distribution = SenderKeyDistributionMessage {
            key_id: 42,
            iteration: 0,
            chain_key: [6; 32],
            signing_key: signing.public,
        };
        let encoded = distribution.encode();
        assert_eq!(
            SenderKeyDistributionMessage::decode(&encoded).expect("decodes"),
            distribution
        );
    }

    #[test]
    fn decoders_reject_wrong_versions_and_truncation() {
        let good = SignalMessage::encode(&[1; 32], 0, 0, vec![9; 16], &[2; 32], &[3; 32], &[4; 32]);
        let mut wrong = good.clone();
        wrong[0] = 0x23;
        assert!(matches!(
            SignalMessage::decode(&wrong),
            Err(SignalError::UnsupportedVersion(0x23))
        ));
        assert!(SignalMessage::decode(&[]).is_err());
        assert!(SignalMessage::decode(&good[..8]).is_err());
        assert!(SignalMessage::decode(&[0x33; 9]).is_err());
        assert!(PreKeySignalMessage::decode(&[0x33]).is_err());
        assert!(SenderKeyMessage::decode(&[0x33; 64]).is_err());
        assert!(SenderKeyDistributionMessage::decode(&[0x33]).is_err());
    }
}
