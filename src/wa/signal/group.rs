//! Sender keys for groups: one symmetric chain per (group, sender device),
//! handed to members in a `SenderKeyDistributionMessage` and used for
//! `skmsg`s signed with the sender's signing key. Records are values for the
//! caller to persist; must not import I/O.

use std::collections::BTreeMap;
use std::fmt;

use prost::Message;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::ratchet::{aes_cbc_decrypt, aes_cbc_encrypt, ChainKey, GroupMessageKeys};
use super::wire::{SenderKeyDistributionMessage, SenderKeyMessage};
use super::{ProtocolAddress, SignalError, MAX_SENDER_KEY_STATES, MAX_SKIPPED_KEYS};
use crate::wa::crypto::{KeyPair, Signer, Verifier};

/// Format version written by [`SenderKeyRecord::serialize`].
const RECORD_VERSION: u32 = 1;

/// Which sender key record: a group and a sender device. Formats as Baileys'
/// key `"group::name::device"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SenderKeyName {
    /// The group JID, e.g. `"120363000000000000@g.us"`.
    pub group_id: String,
    /// The sending device.
    pub sender: ProtocolAddress,
}

impl fmt::Display for SenderKeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}::{}::{}",
            self.group_id, self.sender.name, self.sender.device
        )
    }
}

/// One sender key: its chain, the signing key that authenticates its
/// messages (with the private half only for our own), and keys kept for
/// messages that arrived out of order.
#[derive(Clone)]
struct SenderKeyState {
    key_id: u32,
    chain: ChainKey,
    signing_public: [u8; 32],
    signing_private: Option<KeyPair>,
    skipped: BTreeMap<u32, Zeroizing<[u8; 32]>>,
    /// Forms of the signing key worked out at first use and kept for the
    /// chain's next messages (never stored: derived from the fields above).
    signer: Option<Signer>,
    verifier: Option<Verifier>,
}

impl SenderKeyState {
    /// The message key seed for `iteration`: a kept one, or the chain moved
    /// past `iteration`, keeping the keys it skips. Baileys refuses more than
    /// 2000 iterations ahead.
    fn message_key(&mut self, iteration: u32) -> Result<Zeroizing<[u8; 32]>, SignalError> {
        if iteration < self.chain.index {
            return self
                .skipped
                .remove(&iteration)
                .ok_or(SignalError::DuplicateMessage { counter: iteration });
        }
        let skip = iteration - self.chain.index;
        if skip > MAX_SKIPPED_KEYS {
            return Err(SignalError::TooFarAhead { skip });
        }
        while self.chain.index < iteration {
            self.skipped
                .insert(self.chain.index, self.chain.message_key_seed());
            self.chain = self.chain.next().ok_or(SignalError::ChainExhausted)?;
        }
        while self.skipped.len() > MAX_SKIPPED_KEYS as usize {
            self.skipped.pop_first();
        }
        let seed = self.chain.message_key_seed();
        self.chain = self.chain.next().ok_or(SignalError::ChainExhausted)?;
        Ok(seed)
    }
}

/// The sender keys of one (group, sender device): the newest last, at most
/// [`MAX_SENDER_KEY_STATES`]. For our own sending key the record holds one
/// state with the private signing key.
#[derive(Clone, Default)]
pub struct SenderKeyRecord {
    states: Vec<SenderKeyState>,
}

impl SenderKeyRecord {
    /// An empty record.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the record holds no key.
    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    /// The versioned protobuf encoding, wiped from memory when dropped.
    /// Contains the chain keys (and our signing private key): store it
    /// encrypted.
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        let record = pb::Record {
            version: RECORD_VERSION,
            states: self
                .states
                .iter()
                .map(|state| pb::State {
                    key_id: state.key_id,
                    iteration: state.chain.index,
                    chain_key: state.chain.key.to_vec(),
                    signing_public: state.signing_public.to_vec(),
                    signing_private: state
                        .signing_private
                        .as_ref()
                        .map(|key| key.private_bytes().to_vec()),
                    skipped: state
                        .skipped
                        .iter()
                        .map(|(&iteration, seed)| pb::Skipped {
                            iteration,
                            seed: seed.to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        };
        Zeroizing::new(record.encode_to_vec())
    }

    /// Reads a record written by [`serialize`](Self::serialize).
    pub fn deserialize(bytes: &[u8]) -> Result<Self, SignalError> {
        let record = pb::Record::decode(bytes)
            .map_err(|_| SignalError::CorruptRecord("sender key record does not decode"))?;
        if record.version != RECORD_VERSION {
            return Err(SignalError::RecordVersion(record.version));
        }
        if record.states.len() > MAX_SENDER_KEY_STATES {
            return Err(SignalError::CorruptRecord("too many sender key states"));
        }
        let states = record
            .states
            .iter()
            .map(|state| {
                if state.skipped.len() > MAX_SKIPPED_KEYS as usize {
                    return Err(SignalError::CorruptRecord("too many skipped sender keys"));
                }
                let signing_private = state
                    .signing_private
                    .as_deref()
                    .map(|private| key32(private).map(KeyPair::from_private))
                    .transpose()?;
                let signing_public = key32(&state.signing_public)?;
                if signing_private
                    .as_ref()
                    .is_some_and(|pair| pair.public != signing_public)
                {
                    return Err(SignalError::CorruptRecord("signing key halves differ"));
                }
                Ok(SenderKeyState {
                    key_id: state.key_id,
                    chain: ChainKey::new(key32(&state.chain_key)?, state.iteration),
                    signing_public,
                    signing_private,
                    skipped: state
                        .skipped
                        .iter()
                        .map(|skipped| {
                            Ok((skipped.iteration, Zeroizing::new(key32(&skipped.seed)?)))
                        })
                        .collect::<Result<_, SignalError>>()?,
                    signer: None,
                    verifier: None,
                })
            })
            .collect::<Result<_, SignalError>>()?;
        Ok(Self { states })
    }

    /// Whether the newest state is ours: we can encrypt with this record.
    pub fn has_own_key(&self) -> bool {
        self.states
            .last()
            .is_some_and(|state| state.signing_private.is_some())
    }

    /// The newest state, if it is ours (has the signing private key).
    fn own_state(&mut self) -> Option<&mut SenderKeyState> {
        self.states
            .last_mut()
            .filter(|state| state.signing_private.is_some())
    }
}

impl fmt::Debug for SenderKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.states.iter().map(|state| {
                (
                    state.key_id,
                    state.chain.index,
                    state.signing_private.is_some(),
                )
            }))
            .finish()
    }
}

/// The distribution message for our own sender key in `record`, creating
/// the key (random 31-bit id, chain key and signing key) if there is none.
/// Send it pairwise to every member device that lacks it.
pub fn create_distribution_message(
    record: &mut SenderKeyRecord,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<u8> {
    if record.own_state().is_none() {
        let mut chain_key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(chain_key.as_mut());
        let signing = KeyPair::generate(rng);
        // 1..=2^31-1: JavaScript peers treat id 0 as "no id".
        let key_id = (rng.next_u32() & 0x7FFF_FFFF).max(1);
        record.states = vec![SenderKeyState {
            key_id,
            chain: ChainKey::new(*chain_key, 0),
            signing_public: signing.public,
            signing_private: Some(signing),
            skipped: BTreeMap::new(),
            signer: None,
            verifier: None,
        }];
    }
    let state = record
        .own_state()
        .expect("an own state exists or was just created");
    SenderKeyDistributionMessage {
        key_id: state.key_id,
        iteration: state.chain.index,
        chain_key: *state.chain.key,
        signing_key: state.signing_public,
    }
    .encode()
}

/// Adds the sender key in a distribution message to the sender's record.
/// A repeat of a key we hold already is ignored (as Baileys, which keeps
/// decrypting with the first copy): restarting the chain at an earlier
/// iteration would let old messages decrypt a second time.
pub fn process_distribution_message(
    record: &mut SenderKeyRecord,
    message: &[u8],
) -> Result<(), SignalError> {
    let message = SenderKeyDistributionMessage::decode(message)?;
    if let Some(existing) = record
        .states
        .iter()
        .position(|state| state.key_id == message.key_id)
    {
        if record.states[existing].signing_public == message.signing_key {
            return Ok(());
        }
        // Same id, different key: the sender was reinstalled; the new key wins.
        record.states.remove(existing);
    }
    record.states.push(SenderKeyState {
        key_id: message.key_id,
        chain: ChainKey::new(message.chain_key, message.iteration),
        signing_public: message.signing_key,
        signing_private: None,
        skipped: BTreeMap::new(),
        signer: None,
        verifier: None,
    });
    if record.states.len() > MAX_SENDER_KEY_STATES {
        record.states.remove(0);
    }
    Ok(())
}

/// Encrypts `plaintext` (already padded) as an `skmsg` with our sender key,
/// advancing its chain. Store the record before sending.
pub fn group_encrypt(
    record: &mut SenderKeyRecord,
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, SignalError> {
    let state = record.own_state().ok_or(SignalError::NoOwnSenderKey)?;
    let next = state.chain.next().ok_or(SignalError::ChainExhausted)?;
    let keys = GroupMessageKeys::derive(&state.chain.message_key_seed());
    let ciphertext = aes_cbc_encrypt(&keys.cipher_key, &keys.iv, plaintext);
    let signing = state
        .signing_private
        .as_ref()
        .expect("own_state only returns states with a signing key");
    let signer = state.signer.get_or_insert_with(|| signing.signer());
    let message =
        SenderKeyMessage::encode(state.key_id, state.chain.index, ciphertext, signer, rng);
    state.chain = next;
    Ok(message)
}

/// Decrypts an `skmsg` from the sender whose record this is. The signature
/// is checked before any key is derived; `record` changes only on success.
pub fn group_decrypt(record: &mut SenderKeyRecord, message: &[u8]) -> Result<Vec<u8>, SignalError> {
    let message = SenderKeyMessage::decode(message)?;
    let position = record
        .states
        .iter()
        .rposition(|state| state.key_id == message.key_id)
        .ok_or(SignalError::NoSenderKey(message.key_id))?;
    let original = &mut record.states[position];
    let sign_bit = message.sign_bit();
    if original
        .verifier
        .as_ref()
        .is_none_or(|v| v.sign_bit() != sign_bit)
    {
        original.verifier = Verifier::new(&original.signing_public, sign_bit);
    }
    let verified = original
        .verifier
        .as_ref()
        .is_some_and(|verifier| message.verify_with(verifier));
    if !verified {
        return Err(SignalError::BadSignature);
    }
    let mut state = original.clone();
    let keys = GroupMessageKeys::derive(&*state.message_key(message.iteration)?);
    let plaintext = aes_cbc_decrypt(&keys.cipher_key, &keys.iv, &message.ciphertext)?;
    record.states[position] = state;
    Ok(plaintext)
}

/// Storage shapes of the record; only this crate reads them. Types holding
/// secrets wipe them on drop.
mod pb {
    use zeroize::Zeroize;

    impl Drop for State {
        fn drop(&mut self) {
            self.chain_key.zeroize();
            self.signing_private.zeroize();
        }
    }

    impl Drop for Skipped {
        fn drop(&mut self) {
            self.seed.zeroize();
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Record {
        #[prost(uint32, tag = "1")]
        pub(super) version: u32,
        #[prost(message, repeated, tag = "2")]
        pub(super) states: Vec<State>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct State {
        #[prost(uint32, tag = "1")]
        pub(super) key_id: u32,
        #[prost(uint32, tag = "2")]
        pub(super) iteration: u32,
        #[prost(bytes = "vec", tag = "3")]
        pub(super) chain_key: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub(super) signing_public: Vec<u8>,
        #[prost(bytes = "vec", optional, tag = "5")]
        pub(super) signing_private: Option<Vec<u8>>,
        #[prost(message, repeated, tag = "6")]
        pub(super) skipped: Vec<Skipped>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Skipped {
        #[prost(uint32, tag = "1")]
        pub(super) iteration: u32,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) seed: Vec<u8>,
    }
}

fn key32(bytes: &[u8]) -> Result<[u8; 32], SignalError> {
    bytes
        .try_into()
        .map_err(|_| SignalError::CorruptRecord("key is not 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn pair(rng: &mut StdRng) -> (SenderKeyRecord, SenderKeyRecord) {
        let mut sender = SenderKeyRecord::new();
        let distribution = create_distribution_message(&mut sender, rng);
        let mut receiver = SenderKeyRecord::new();
        process_distribution_message(&mut receiver, &distribution).expect("processes");
        (sender, receiver)
    }

    #[test]
    fn name_formats_like_baileys() {
        let name = SenderKeyName {
            group_id: "123@g.us".into(),
            sender: ProtocolAddress::new("5511", 2),
        };
        assert_eq!(name.to_string(), "123@g.us::5511::2");
    }

    #[test]
    fn encrypt_decrypt_in_and_out_of_order() {
        let mut rng = StdRng::seed_from_u64(7);
        let (mut sender, mut receiver) = pair(&mut rng);
        let messages: Vec<_> = (0..6u8)
            .map(|i| group_encrypt(&mut sender, &[i; 3], &mut rng).expect("encrypt"))
            .collect();
        for (i, message) in messages.iter().enumerate() {
            assert_eq!(
                SenderKeyMessage::decode(message)
                    .expect("decodes")
                    .iteration,
                i as u32
            );
        }
        for i in [0usize, 3, 1, 5, 2, 4] {
            assert_eq!(
                group_decrypt(&mut receiver, &messages[i]).expect("decrypts"),
                [i as u8; 3]
            );
        }
        let replay = group_decrypt(&mut receiver, &messages[2]).expect_err("replay");
        assert!(replay.is_duplicate());
    }

    #[test]
    fn distribution_message_mid_chain_starts_there() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut sender = SenderKeyRecord::new();
        create_distribution_message(&mut sender, &mut rng);
        let early = group_encrypt(&mut sender, b"before", &mut rng).expect("encrypt");
        let distribution = create_distribution_message(&mut sender, &mut rng);
        assert_eq!(
            SenderKeyDistributionMessage::decode(&distribution)
                .expect("decodes")
                .iteration,
            1
        );
        let later = group_encrypt(&mut sender, b"after", &mut rng).expect("encrypt");
        let mut receiver = SenderKeyRecord::new();
        process_distribution_message(&mut receiver, &distribution).expect("processes");
        assert_eq!(
            group_decrypt(&mut receiver, &later).expect("decrypts"),
            b"after"
        );
        assert!(group_decrypt(&mut receiver, &early).is_err());
    }

    #[test]
    fn forgery_and_tampering_are_rejected_without_change() {
        let mut rng = StdRng::seed_from_u64(9);
        let (mut sender, mut receiver) = pair(&mut rng);
        let message = group_encrypt(&mut sender, b"group text", &mut rng).expect("encrypt");
        let before = receiver.serialize();
        for at in [3, message.len() - 40, message.len() - 1] {
            let mut tampered = message.clone();
            tampered[at] ^= 0x04;
            assert!(
                group_decrypt(&mut receiver, &tampered).is_err(),
                "byte {at}"
            );
            assert_eq!(receiver.serialize(), before);
        }
        // Same key id, someone else's signing key: refused.
        let (mut other, _) = pair(&mut rng);
        other.states[0].key_id = sender.states[0].key_id;
        let forged = group_encrypt(&mut other, b"forged", &mut rng).expect("encrypt");
        assert!(matches!(
            group_decrypt(&mut receiver, &forged),
            Err(SignalError::BadSignature)
        ));
        assert_eq!(
            group_decrypt(&mut receiver, &message).expect("genuine"),
            b"group text"
        );
        // Unknown key id.
        let (mut stranger, _) = pair(&mut rng);
        let unknown = group_encrypt(&mut stranger, b"?", &mut rng).expect("encrypt");
        assert!(matches!(
            group_decrypt(&mut receiver, &unknown),
            Err(SignalError::NoSenderKey(_))
        ));
        // A receiver cannot encrypt with someone else's key.
        assert!(matches!(
            group_encrypt(&mut receiver, b"x", &mut rng),
            Err(SignalError::NoOwnSenderKey)
        ));
    }

    #[test]
    fn skip_limit_is_2000_iterations() {
        let mut rng = StdRng::seed_from_u64(10);
        let (mut sender, receiver) = pair(&mut rng);
        let messages: Vec<_> = (0..=2001u32)
            .map(|i| group_encrypt(&mut sender, &i.to_be_bytes(), &mut rng).expect("encrypt"))
            .collect();
        let mut far = receiver.clone();
        assert!(matches!(
            group_decrypt(&mut far, &messages[2001]),
            Err(SignalError::TooFarAhead { skip: 2001 })
        ));
        let mut edge = receiver.clone();
        assert_eq!(
            group_decrypt(&mut edge, &messages[2000]).expect("2000 ahead is allowed"),
            2000u32.to_be_bytes()
        );
        assert_eq!(
            group_decrypt(&mut edge, &messages[0]).expect("kept"),
            0u32.to_be_bytes()
        );
    }

    #[test]
    fn records_round_trip_and_keep_at_most_five_states() {
        let mut rng = StdRng::seed_from_u64(11);
        let (mut sender, mut receiver) = pair(&mut rng);
        let skipped = group_encrypt(&mut sender, b"skipped", &mut rng).expect("encrypt");
        let ahead = group_encrypt(&mut sender, b"ahead", &mut rng).expect("encrypt");
        group_decrypt(&mut receiver, &ahead).expect("decrypts");

        let mut sender = SenderKeyRecord::deserialize(&sender.serialize()).expect("sender");
        let bytes = receiver.serialize();
        let mut receiver = SenderKeyRecord::deserialize(&bytes).expect("receiver");
        assert_eq!(receiver.serialize(), bytes);
        assert_eq!(
            group_decrypt(&mut receiver, &skipped).expect("kept key"),
            b"skipped"
        );
        let next = group_encrypt(&mut sender, b"next", &mut rng).expect("restored sender");
        assert_eq!(
            group_decrypt(&mut receiver, &next).expect("decrypts"),
            b"next"
        );

        // A repeated distribution message does not rewind the chain.
        let mut again = SenderKeyRecord::new();
        let first = create_distribution_message(&mut sender, &mut rng);
        process_distribution_message(&mut again, &first).expect("processes");
        let message = group_encrypt(&mut sender, b"once", &mut rng).expect("encrypt");
        group_decrypt(&mut again, &message).expect("decrypts");
        process_distribution_message(&mut again, &first).expect("processes");
        assert!(group_decrypt(&mut again, &message)
            .expect_err("replay")
            .is_duplicate());

        for _ in 0..7 {
            let (_, other) = pair(&mut rng);
            let mut fresh = SenderKeyRecord::new();
            let distribution = create_distribution_message(&mut fresh, &mut rng);
            drop(other);
            process_distribution_message(&mut receiver, &distribution).expect("processes");
        }
        assert_eq!(receiver.states.len(), MAX_SENDER_KEY_STATES);
        assert!(SenderKeyRecord::deserialize(&receiver.serialize()).is_ok());
        assert!(SenderKeyRecord::deserialize(&[0x08, 0x02]).is_err());
    }
}
