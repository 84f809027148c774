//! Pairwise session state (one double ratchet) and the session record that
//! holds the current state plus archived ones, with the record's versioned
//! protobuf encoding. The caller stores records; must not import I/O.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use prost::Message;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::ratchet::{
    aes_cbc_decrypt, aes_cbc_encrypt, root_step, ChainKey, MessageKeys, RatchetKey,
};
use super::wire::SignalMessage;
use super::{SignalError, MAX_ARCHIVED_STATES, MAX_RECEIVING_CHAINS, MAX_SKIPPED_KEYS};

/// Format version written by [`SessionRecord::serialize`].
const RECORD_VERSION: u32 = 1;

/// What the initiator repeats in every message until the peer answers, so
/// that any of those messages can set up the session on the other side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PendingPreKey {
    pub(super) pre_key_id: Option<u32>,
    pub(super) signed_pre_key_id: u32,
    pub(super) base_key: [u8; 32],
}

/// The peer's chain for one of its ratchet keys, with the keys of messages
/// it skipped. A closed chain (`key` is `None`) only serves skipped keys.
#[derive(Clone)]
pub(super) struct ReceivingChain {
    pub(super) ratchet_key: [u8; 32],
    pub(super) index: u32,
    pub(super) key: Option<Zeroizing<[u8; 32]>>,
    pub(super) skipped: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl ReceivingChain {
    fn new(ratchet_key: [u8; 32], chain: ChainKey) -> Self {
        Self {
            ratchet_key,
            index: chain.index,
            key: Some(chain.key),
            skipped: BTreeMap::new(),
        }
    }

    /// The message key seed for `counter`: a kept skipped key, or the chain
    /// advanced to `counter`, keeping the keys it passes.
    fn message_key(&mut self, counter: u32) -> Result<Zeroizing<[u8; 32]>, SignalError> {
        if counter < self.index {
            return self
                .skipped
                .remove(&counter)
                .ok_or(SignalError::DuplicateMessage { counter });
        }
        let mut chain = self.advance_to(counter)?;
        let seed = chain.message_key_seed();
        match chain.next() {
            Some(next) => chain = next,
            // The last u32 position was used: nothing can follow on this chain.
            None => {
                self.key = None;
                self.index = u32::MAX;
                return Ok(seed);
            }
        }
        self.index = chain.index;
        self.key = Some(chain.key);
        Ok(seed)
    }

    /// Derives and keeps the keys from `self.index` up to (not including)
    /// `target`, returning the chain at `target`. libsignal-node refuses to
    /// derive more than 2000 keys for one message, counting the used one.
    fn advance_to(&mut self, target: u32) -> Result<ChainKey, SignalError> {
        let key = self.key.as_ref().ok_or(SignalError::ChainClosed)?;
        let skip = target - self.index;
        if skip >= MAX_SKIPPED_KEYS {
            return Err(SignalError::TooFarAhead { skip });
        }
        let mut chain = ChainKey {
            key: key.clone(),
            index: self.index,
        };
        while chain.index < target {
            self.keep_skipped(chain.index, chain.message_key_seed());
            chain = chain.next().ok_or(SignalError::ChainExhausted)?;
        }
        Ok(chain)
    }

    /// Keeps the keys up to and including `last` (the peer's previous
    /// counter) and closes the chain: the peer has moved to a new ratchet key.
    fn close(&mut self, last: u32) -> Result<(), SignalError> {
        if self.key.is_some() && last >= self.index {
            let chain = self.advance_to(last)?;
            self.keep_skipped(chain.index, chain.message_key_seed());
            self.index = last.saturating_add(1);
        }
        self.key = None;
        Ok(())
    }

    fn keep_skipped(&mut self, index: u32, seed: Zeroizing<[u8; 32]>) {
        self.skipped.insert(index, seed);
        while self.skipped.len() > MAX_SKIPPED_KEYS as usize {
            self.skipped.pop_first();
        }
    }
}

/// One double ratchet with one peer device, from one X3DH exchange.
#[derive(Clone)]
pub(super) struct SessionState {
    pub(super) local_registration_id: u32,
    pub(super) remote_registration_id: u32,
    pub(super) remote_identity: [u8; 32],
    /// The initiator's X3DH ephemeral key: identifies the session on both
    /// sides.
    pub(super) base_key: [u8; 32],
    /// Whether we built the session from a bundle (the base key is ours).
    pub(super) initiator: bool,
    pub(super) root_key: Zeroizing<[u8; 32]>,
    /// Our current ratchet key pair; the sending chain belongs to it.
    pub(super) ratchet: RatchetKey,
    /// The peer's latest ratchet key.
    pub(super) remote_ratchet: [u8; 32],
    /// Last counter used on our previous sending chain.
    pub(super) previous_counter: u32,
    pub(super) sending: Option<ChainKey>,
    /// Oldest first.
    pub(super) receiving: Vec<ReceivingChain>,
    pub(super) pending_pre_key: Option<PendingPreKey>,
}

impl SessionState {
    /// Encrypts one message on the sending chain and returns the encoded
    /// `SignalMessage`.
    pub(super) fn encrypt(
        &mut self,
        our_identity: &[u8; 32],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SignalError> {
        let chain = self.sending.as_ref().ok_or(SignalError::NoSession)?;
        let next = chain.next().ok_or(SignalError::ChainExhausted)?;
        let keys = MessageKeys::derive(&chain.message_key_seed());
        let ciphertext = aes_cbc_encrypt(&keys.cipher_key, &keys.iv, plaintext);
        let message = SignalMessage::encode(
            &self.ratchet.public,
            chain.index,
            self.previous_counter,
            ciphertext,
            &keys.mac_key,
            our_identity,
            &self.remote_identity,
        );
        self.sending = Some(next);
        Ok(message)
    }

    /// Decrypts one message, stepping the ratchet if it carries a new peer
    /// ratchet key. On error `self` may be half-updated: callers work on a
    /// copy.
    pub(super) fn decrypt(
        &mut self,
        our_identity: &[u8; 32],
        message: &SignalMessage,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>, SignalError> {
        let position = match self.receiving_position(&message.ratchet_key) {
            Some(position) => position,
            None => {
                self.step(&message.ratchet_key, message.previous_counter, rng)?;
                self.receiving.len() - 1
            }
        };
        let chain = self
            .receiving
            .get_mut(position)
            .expect("position was just found or pushed");
        let seed = chain.message_key(message.counter)?;
        let keys = MessageKeys::derive(&seed);
        if !message.verify_mac(&keys.mac_key, &self.remote_identity, our_identity) {
            return Err(SignalError::BadMac);
        }
        let plaintext = aes_cbc_decrypt(&keys.cipher_key, &keys.iv, &message.ciphertext)?;
        // The peer has our session: no need to repeat the setup fields.
        self.pending_pre_key = None;
        Ok(plaintext)
    }

    pub(super) fn receiving_position(&self, ratchet_key: &[u8; 32]) -> Option<usize> {
        self.receiving
            .iter()
            .position(|chain| chain.ratchet_key == *ratchet_key)
    }

    /// The DH ratchet step for a new peer ratchet key: close the peer's old
    /// chain after keeping its last keys, derive the new receiving chain,
    /// then a fresh key pair of ours and its sending chain.
    fn step(
        &mut self,
        their_ratchet: &[u8; 32],
        previous_counter: u32,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(), SignalError> {
        let old_remote = self.remote_ratchet;
        if let Some(old) = self
            .receiving
            .iter_mut()
            .find(|chain| chain.ratchet_key == old_remote)
        {
            old.close(previous_counter)?;
        }
        let (root, receiving) = root_step(&self.root_key, &self.ratchet, their_ratchet)?;
        let ratchet = RatchetKey::generate(rng);
        let (root, sending) = root_step(&root, &ratchet, their_ratchet)?;

        self.receiving
            .push(ReceivingChain::new(*their_ratchet, receiving));
        if self.receiving.len() > MAX_RECEIVING_CHAINS {
            self.receiving.remove(0);
        }
        self.previous_counter = self
            .sending
            .as_ref()
            .map_or(0, |chain| chain.index.saturating_sub(1));
        self.sending = Some(sending);
        self.ratchet = ratchet;
        self.root_key = root;
        self.remote_ratchet = *their_ratchet;
        Ok(())
    }
}

impl fmt::Debug for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionState")
            .field("base_key", &hex::encode(self.base_key))
            .field("initiator", &self.initiator)
            .field("remote_identity", &hex::encode(self.remote_identity))
            .field("remote_registration_id", &self.remote_registration_id)
            .field("pending_pre_key", &self.pending_pre_key.is_some())
            .finish_non_exhaustive()
    }
}

/// All sessions with one peer device: the current one, used to send, and up
/// to [`MAX_ARCHIVED_STATES`] replaced ones that may still receive late
/// messages. The caller loads and stores it whole with
/// [`serialize`](Self::serialize) / [`deserialize`](Self::deserialize); the
/// encoding contains private keys, so store it encrypted.
#[derive(Clone, Default)]
pub struct SessionRecord {
    pub(super) current: Option<SessionState>,
    /// Most recently archived first.
    pub(super) previous: VecDeque<SessionState>,
}

impl SessionRecord {
    /// A record with no session.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether there is a current session to encrypt with.
    pub fn has_current_session(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|state| state.sending.is_some())
    }

    /// The peer's identity key in the current session.
    pub fn remote_identity(&self) -> Option<[u8; 32]> {
        self.current.as_ref().map(|state| state.remote_identity)
    }

    /// The peer's registration id in the current session.
    pub fn remote_registration_id(&self) -> Option<u32> {
        self.current
            .as_ref()
            .map(|state| state.remote_registration_id)
    }

    /// Whether the next message will be a `pkmsg` because the peer has not
    /// answered yet (WhatsApp then adds the `device-identity` node).
    pub fn has_unacknowledged_pre_key(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|state| state.pending_pre_key.is_some())
    }

    /// Moves the current session to the archive, so the next message needs a
    /// new session (after a retry receipt or an identity change).
    pub fn archive_current(&mut self) {
        if let Some(state) = self.current.take() {
            self.previous.push_front(state);
            self.previous.truncate(MAX_ARCHIVED_STATES);
        }
    }

    /// Makes `state` current, archiving the one it replaces.
    pub(super) fn promote(&mut self, state: SessionState) {
        self.archive_current();
        self.current = Some(state);
    }

    /// Number of archived sessions.
    pub fn archived_count(&self) -> usize {
        self.previous.len()
    }

    /// The versioned protobuf encoding of the whole record, wiped from
    /// memory when dropped.
    pub fn serialize(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(
            pb::Record {
                version: RECORD_VERSION,
                current: self.current.as_ref().map(state_to_pb),
                previous: self.previous.iter().map(state_to_pb).collect(),
            }
            .encode_to_vec(),
        )
    }

    /// Reads a record written by [`serialize`](Self::serialize), checking
    /// every key length and bound.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, SignalError> {
        let record = pb::Record::decode(bytes)
            .map_err(|_| SignalError::CorruptRecord("session record does not decode"))?;
        if record.version != RECORD_VERSION {
            return Err(SignalError::RecordVersion(record.version));
        }
        if record.previous.len() > MAX_ARCHIVED_STATES {
            return Err(SignalError::CorruptRecord("too many archived sessions"));
        }
        Ok(Self {
            current: record.current.as_ref().map(state_from_pb).transpose()?,
            previous: record
                .previous
                .iter()
                .map(state_from_pb)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("current", &self.current)
            .field("archived", &self.previous.len())
            .finish()
    }
}

/// Storage shapes of the record (not a wire format: only this crate reads
/// them, through the version check). Types holding secrets wipe them on drop.
mod pb {
    use zeroize::Zeroize;

    impl Drop for State {
        fn drop(&mut self) {
            self.root_key.zeroize();
            self.ratchet_private.zeroize();
        }
    }

    impl Drop for Chain {
        fn drop(&mut self) {
            self.key.zeroize();
        }
    }

    impl Drop for Receiving {
        fn drop(&mut self) {
            self.key.zeroize();
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Record {
        #[prost(uint32, tag = "1")]
        pub(super) version: u32,
        #[prost(message, optional, tag = "2")]
        pub(super) current: Option<State>,
        #[prost(message, repeated, tag = "3")]
        pub(super) previous: Vec<State>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct State {
        #[prost(uint32, tag = "1")]
        pub(super) local_registration_id: u32,
        #[prost(uint32, tag = "2")]
        pub(super) remote_registration_id: u32,
        #[prost(bytes = "vec", tag = "3")]
        pub(super) remote_identity: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub(super) base_key: Vec<u8>,
        #[prost(bool, tag = "5")]
        pub(super) initiator: bool,
        #[prost(bytes = "vec", tag = "6")]
        pub(super) root_key: Vec<u8>,
        #[prost(bytes = "vec", tag = "7")]
        pub(super) ratchet_private: Vec<u8>,
        #[prost(bytes = "vec", tag = "8")]
        pub(super) remote_ratchet: Vec<u8>,
        #[prost(uint32, tag = "9")]
        pub(super) previous_counter: u32,
        #[prost(message, optional, tag = "10")]
        pub(super) sending: Option<Chain>,
        #[prost(message, repeated, tag = "11")]
        pub(super) receiving: Vec<Receiving>,
        #[prost(message, optional, tag = "12")]
        pub(super) pending: Option<Pending>,
        #[prost(bytes = "vec", tag = "13")]
        pub(super) ratchet_public: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Chain {
        #[prost(uint32, tag = "1")]
        pub(super) index: u32,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) key: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Receiving {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) ratchet_key: Vec<u8>,
        #[prost(uint32, tag = "2")]
        pub(super) index: u32,
        #[prost(bytes = "vec", optional, tag = "3")]
        pub(super) key: Option<Vec<u8>>,
        #[prost(message, repeated, tag = "4")]
        pub(super) skipped: Vec<Chain>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Pending {
        #[prost(uint32, optional, tag = "1")]
        pub(super) pre_key_id: Option<u32>,
        #[prost(uint32, tag = "2")]
        pub(super) signed_pre_key_id: u32,
        #[prost(bytes = "vec", tag = "3")]
        pub(super) base_key: Vec<u8>,
    }
}

fn state_to_pb(state: &SessionState) -> pb::State {
    pb::State {
        local_registration_id: state.local_registration_id,
        remote_registration_id: state.remote_registration_id,
        remote_identity: state.remote_identity.to_vec(),
        base_key: state.base_key.to_vec(),
        initiator: state.initiator,
        root_key: state.root_key.to_vec(),
        ratchet_private: state.ratchet.private.to_vec(),
        ratchet_public: state.ratchet.public.to_vec(),
        remote_ratchet: state.remote_ratchet.to_vec(),
        previous_counter: state.previous_counter,
        sending: state.sending.as_ref().map(|chain| pb::Chain {
            index: chain.index,
            key: chain.key.to_vec(),
        }),
        receiving: state
            .receiving
            .iter()
            .map(|chain| pb::Receiving {
                ratchet_key: chain.ratchet_key.to_vec(),
                index: chain.index,
                key: chain.key.as_ref().map(|key| key.to_vec()),
                skipped: chain
                    .skipped
                    .iter()
                    .map(|(&index, seed)| pb::Chain {
                        index,
                        key: seed.to_vec(),
                    })
                    .collect(),
            })
            .collect(),
        pending: state.pending_pre_key.as_ref().map(|pending| pb::Pending {
            pre_key_id: pending.pre_key_id,
            signed_pre_key_id: pending.signed_pre_key_id,
            base_key: pending.base_key.to_vec(),
        }),
    }
}

fn state_from_pb(state: &pb::State) -> Result<SessionState, SignalError> {
    if state.receiving.len() > MAX_RECEIVING_CHAINS {
        return Err(SignalError::CorruptRecord("too many receiving chains"));
    }
    let receiving = state
        .receiving
        .iter()
        .map(|chain| {
            if chain.skipped.len() > MAX_SKIPPED_KEYS as usize {
                return Err(SignalError::CorruptRecord("too many skipped keys"));
            }
            Ok(ReceivingChain {
                ratchet_key: key32(&chain.ratchet_key)?,
                index: chain.index,
                key: chain
                    .key
                    .as_deref()
                    .map(|key| key32(key).map(Zeroizing::new))
                    .transpose()?,
                skipped: chain
                    .skipped
                    .iter()
                    .map(|skipped| Ok((skipped.index, Zeroizing::new(key32(&skipped.key)?))))
                    .collect::<Result<_, SignalError>>()?,
            })
        })
        .collect::<Result<_, SignalError>>()?;
    Ok(SessionState {
        local_registration_id: state.local_registration_id,
        remote_registration_id: state.remote_registration_id,
        remote_identity: key32(&state.remote_identity)?,
        base_key: key32(&state.base_key)?,
        initiator: state.initiator,
        root_key: Zeroizing::new(key32(&state.root_key)?),
        ratchet: RatchetKey {
            public: key32(&state.ratchet_public)?,
            private: Zeroizing::new(key32(&state.ratchet_private)?),
        },
        remote_ratchet: key32(&state.remote_ratchet)?,
        previous_counter: state.previous_counter,
        sending: state
            .sending
            .as_ref()
            .map(|chain| Ok::<_, SignalError>(ChainKey::new(key32(&chain.key)?, chain.index)))
            .transpose()?,
        receiving,
        pending_pre_key: state
            .pending
            .as_ref()
            .map(|pending| {
                Ok::<_, SignalError>(PendingPreKey {
                    pre_key_id: pending.pre_key_id,
                    signed_pre_key_id: pending.signed_pre_key_id,
                    base_key: key32(&pending.base_key)?,
                })
            })
            .transpose()?,
    })
}

fn key32(bytes: &[u8]) -> Result<[u8; 32], SignalError> {
    bytes
        .try_into()
        .map_err(|_| SignalError::CorruptRecord("key is not 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(index: u32) -> ReceivingChain {
        ReceivingChain::new([1; 32], ChainKey::new([2; 32], index))
    }

    /// The seed at `index` of the chain starting with key [2; 32] at 0.
    fn seed_at(index: u32) -> [u8; 32] {
        let mut chain = ChainKey::new([2; 32], 0);
        while chain.index < index {
            chain = chain.next().expect("small index");
        }
        *chain.message_key_seed()
    }

    #[test]
    fn in_order_keys_follow_the_chain() {
        let mut receiving = chain(0);
        for counter in 0..5 {
            assert_eq!(
                *receiving.message_key(counter).expect("next key"),
                seed_at(counter)
            );
        }
        assert!(receiving.skipped.is_empty());
        assert!(matches!(
            receiving.message_key(3),
            Err(SignalError::DuplicateMessage { counter: 3 })
        ));
    }

    #[test]
    fn skipped_keys_are_kept_once() {
        let mut receiving = chain(0);
        assert_eq!(*receiving.message_key(4).expect("ahead"), seed_at(4));
        assert_eq!(receiving.skipped.len(), 4);
        assert_eq!(*receiving.message_key(2).expect("skipped"), seed_at(2));
        assert!(matches!(
            receiving.message_key(2),
            Err(SignalError::DuplicateMessage { counter: 2 })
        ));
        assert_eq!(receiving.skipped.len(), 3);
    }

    #[test]
    fn jump_limit_matches_libsignal_node() {
        // From a fresh chain, counter 1999 derives 2000 keys: allowed.
        let mut receiving = chain(0);
        assert!(receiving.message_key(MAX_SKIPPED_KEYS - 1).is_ok());
        assert_eq!(receiving.skipped.len(), MAX_SKIPPED_KEYS as usize - 1);
        // One more is refused, and leaves the chain untouched.
        let mut receiving = chain(0);
        assert!(matches!(
            receiving.message_key(MAX_SKIPPED_KEYS),
            Err(SignalError::TooFarAhead { skip: 2000 })
        ));
        assert_eq!(receiving.index, 0);
        assert!(receiving.skipped.is_empty());
    }

    #[test]
    fn skipped_keys_are_capped_oldest_first() {
        let mut receiving = chain(0);
        receiving.message_key(1500).expect("within limit");
        receiving.message_key(3000).expect("within limit");
        assert_eq!(receiving.skipped.len(), MAX_SKIPPED_KEYS as usize);
        assert!(matches!(
            receiving.message_key(0),
            Err(SignalError::DuplicateMessage { counter: 0 })
        ));
        assert_eq!(*receiving.message_key(2999).expect("kept"), seed_at(2999));
    }

    #[test]
    fn closing_keeps_keys_through_previous_counter() {
        let mut receiving = chain(0);
        receiving.message_key(0).expect("first");
        receiving.close(3).expect("close");
        assert!(receiving.key.is_none());
        assert_eq!(
            receiving.skipped.keys().copied().collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(*receiving.message_key(3).expect("kept"), seed_at(3));
        assert!(matches!(
            receiving.message_key(4),
            Err(SignalError::ChainClosed)
        ));
        let mut far = chain(0);
        assert!(matches!(
            far.close(2000),
            Err(SignalError::TooFarAhead { .. })
        ));
    }

    #[test]
    fn empty_record_round_trips_and_versions_are_checked() {
        let record = SessionRecord::new();
        let bytes = record.serialize();
        let back = SessionRecord::deserialize(&bytes).expect("round trip");
        assert!(!back.has_current_session());
        let wrong = pb::Record {
            version: 2,
            current: None,
            previous: vec![],
        }
        .encode_to_vec();
        assert!(matches!(
            SessionRecord::deserialize(&wrong),
            Err(SignalError::RecordVersion(2))
        ));
        assert!(SessionRecord::deserialize(&[0xFF, 0xFF]).is_err());
    }
}
