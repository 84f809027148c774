//! Pairwise sessions end to end: X3DH from a prekey bundle (initiator) or
//! from a `pkmsg` (responder), and encrypting and decrypting `pkmsg`/`msg`
//! against a [`SessionRecord`]. Decryption never changes a record unless it
//! succeeds. Must not import I/O.

use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::keys::{encode_public_key, PreKey, PreKeyBundle, SignedPreKey};
use super::ratchet::{agree, derive_initial, root_step, RatchetKey};
use super::session::{PendingPreKey, SessionRecord, SessionState};
use super::wire::{PreKeySignalMessage, SignalMessage};
use super::SignalError;
use crate::wa::crypto::{verify, KeyPair};

/// An encrypted pairwise message, tagged as WhatsApp's `<enc type>` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CiphertextMessage {
    /// A `PreKeySignalMessage`: sent until the peer first answers.
    PreKey(Vec<u8>),
    /// A `SignalMessage`.
    Whisper(Vec<u8>),
}

impl CiphertextMessage {
    /// The `type` attribute of the `<enc>` node: `"pkmsg"` or `"msg"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PreKey(_) => "pkmsg",
            Self::Whisper(_) => "msg",
        }
    }

    /// The encoded message.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::PreKey(bytes) | Self::Whisper(bytes) => bytes,
        }
    }

    /// The encoded message, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::PreKey(bytes) | Self::Whisper(bytes) => bytes,
        }
    }
}

/// Our keys as a `pkmsg` receiver needs them. The caller loads the signed
/// prekey and one-time prekey the message names (see
/// [`PreKeySignalMessage::decode`]) or simply passes all it has.
#[derive(Clone, Copy, Debug)]
pub struct LocalKeys<'a> {
    /// Our identity key pair.
    pub identity: &'a KeyPair,
    /// Our registration id.
    pub registration_id: u32,
    /// Signed prekeys to choose from by id (the current one and any recently
    /// rotated out).
    pub signed_pre_keys: &'a [SignedPreKey],
    /// One-time prekeys to choose from by id.
    pub pre_keys: &'a [PreKey],
}

/// The result of decrypting a `pkmsg`: the plaintext and the record to
/// commit together with whatever the caller does with the plaintext.
pub struct Decrypted {
    /// The decrypted (still padded) plaintext.
    pub plaintext: Vec<u8>,
    /// The updated record to store.
    pub record: SessionRecord,
    /// The one-time prekey this message consumed: delete it once the record
    /// is stored. `None` when the session already existed or used no
    /// one-time prekey.
    pub used_prekey_id: Option<u32>,
    /// The sender's identity key.
    pub remote_identity: [u8; 32],
    /// The sender's identity differs from the one in the previous current
    /// session (a reinstall, or someone else). Trusted anyway, as WhatsApp
    /// does; the caller may tell the user.
    pub identity_changed: bool,
}

impl std::fmt::Debug for Decrypted {
    /// Shows the plaintext's length only: message text stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field("plaintext_len", &self.plaintext.len())
            .field("record", &self.record)
            .field("used_prekey_id", &self.used_prekey_id)
            .field("remote_identity", &hex::encode(self.remote_identity))
            .field("identity_changed", &self.identity_changed)
            .finish()
    }
}

/// Builds a session to a peer from its prekey bundle (X3DH as initiator).
/// The returned record holds the new session as current, with `previous`'s
/// sessions archived; every message sent on it is a `pkmsg` until the peer
/// answers. The bundle's signed prekey signature is verified.
pub fn process_bundle(
    bundle: &PreKeyBundle,
    our_identity: &KeyPair,
    our_registration_id: u32,
    previous: Option<SessionRecord>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<SessionRecord, SignalError> {
    let (signed_pre_key_id, signed_pre_key, signature) = &bundle.signed_pre_key;
    if !verify(
        &bundle.identity_key,
        &encode_public_key(signed_pre_key),
        signature,
    ) {
        return Err(SignalError::BadSignature);
    }
    let base = KeyPair::generate(rng);

    // 32 0xFF bytes first (Signal's separator from any Ed25519 use of the
    // keys), then DH(IKa, SPKb) ‖ DH(EKa, IKb) ‖ DH(EKa, SPKb) [‖ DH(EKa, OPKb)].
    let mut secret = Zeroizing::new(Vec::with_capacity(32 * 5));
    secret.extend_from_slice(&[0xFF; 32]);
    secret.extend_from_slice(agree(our_identity, signed_pre_key)?.as_ref());
    secret.extend_from_slice(agree(&base, &bundle.identity_key)?.as_ref());
    secret.extend_from_slice(agree(&base, signed_pre_key)?.as_ref());
    if let Some((_, one_time)) = &bundle.pre_key {
        secret.extend_from_slice(agree(&base, one_time)?.as_ref());
    }
    // libsignal-node starts both sides' chains from a ratchet step off the
    // root key and leaves the X3DH chain key unused; so does this.
    let (root, _) = derive_initial(&secret);

    let ratchet = RatchetKey::generate(rng);
    let (root, sending) = root_step(&root, &ratchet, signed_pre_key)?;
    let state = SessionState {
        local_registration_id: our_registration_id,
        remote_registration_id: bundle.registration_id,
        remote_identity: bundle.identity_key,
        base_key: base.public,
        initiator: true,
        root_key: root,
        ratchet,
        remote_ratchet: *signed_pre_key,
        previous_counter: 0,
        sending: Some(sending),
        receiving: Vec::new(),
        pending_pre_key: Some(PendingPreKey {
            pre_key_id: bundle.pre_key.map(|(id, _)| id),
            signed_pre_key_id: *signed_pre_key_id,
            base_key: base.public,
        }),
    };
    let mut record = previous.unwrap_or_default();
    record.promote(state);
    Ok(record)
}

/// Encrypts `plaintext` (already padded) with the current session, advancing
/// its sending chain. Store the record before the ciphertext goes out, so a
/// message key is never used twice.
pub fn encrypt(
    record: &mut SessionRecord,
    our_identity: &KeyPair,
    plaintext: &[u8],
) -> Result<CiphertextMessage, SignalError> {
    let state = record.current.as_mut().ok_or(SignalError::NoSession)?;
    let message = state.encrypt(&our_identity.public, plaintext)?;
    Ok(match &state.pending_pre_key {
        Some(pending) => CiphertextMessage::PreKey(PreKeySignalMessage::encode(
            state.local_registration_id,
            pending.pre_key_id,
            pending.signed_pre_key_id,
            &pending.base_key,
            &our_identity.public,
            message,
        )),
        None => CiphertextMessage::Whisper(message),
    })
}

/// Decrypts a `pkmsg`, building the session from our prekeys unless a
/// session with its base key exists already (the peer repeats the setup
/// until we answer). `record` is not modified; the updated one is returned.
pub fn decrypt_prekey_message(
    record: Option<&SessionRecord>,
    our: &LocalKeys<'_>,
    message: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Decrypted, SignalError> {
    let message = PreKeySignalMessage::decode(message)?;
    let mut record = record.cloned().unwrap_or_default();
    let identity_changed = record
        .current
        .as_ref()
        .is_some_and(|state| state.remote_identity != message.identity_key);

    let known = std::iter::once(record.current.as_ref())
        .chain(record.previous.iter().map(Some))
        .position(|state| {
            state.is_some_and(|state| !state.initiator && state.base_key == message.base_key)
        });
    let (plaintext, used_prekey_id) = match known {
        Some(slot) => {
            let mut state = slot_state(&record, slot)
                .cloned()
                .expect("slot was found among the record's states");
            let plaintext = state.decrypt(&our.identity.public, &message.message, rng)?;
            put_back(&mut record, slot, state);
            (plaintext, None)
        }
        None => {
            let mut state = respond(our, &message)?;
            let plaintext = state.decrypt(&our.identity.public, &message.message, rng)?;
            record.promote(state);
            (plaintext, message.pre_key_id)
        }
    };
    Ok(Decrypted {
        plaintext,
        record,
        used_prekey_id,
        remote_identity: message.identity_key,
        identity_changed,
    })
}

/// Decrypts a `msg` with the current session or, failing that, an archived
/// one (which stays archived). `record` changes only on success. The error reported is the one from the session that knows the
/// message's ratchet key, else the current session's.
pub fn decrypt_message(
    record: &mut SessionRecord,
    our_identity: &[u8; 32],
    message: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, SignalError> {
    let message = SignalMessage::decode(message)?;
    let mut owner_error = None;
    let mut first_error = None;
    for slot in 0..=record.previous.len() {
        let Some(original) = slot_state(record, slot) else {
            continue;
        };
        let owns_chain = original.receiving_position(&message.ratchet_key).is_some();
        let mut state = original.clone();
        match state.decrypt(our_identity, &message, rng) {
            Ok(plaintext) => {
                put_back(record, slot, state);
                return Ok(plaintext);
            }
            Err(error) if owns_chain && owner_error.is_none() => owner_error = Some(error),
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(owner_error
        .or(first_error)
        .unwrap_or(SignalError::NoSession))
}

/// Responder side of X3DH for a `pkmsg` that opens a new session.
fn respond(
    our: &LocalKeys<'_>,
    message: &PreKeySignalMessage,
) -> Result<SessionState, SignalError> {
    let signed = our
        .signed_pre_keys
        .iter()
        .find(|key| key.id == message.signed_pre_key_id)
        .ok_or(SignalError::MissingSignedPreKey(message.signed_pre_key_id))?;
    let one_time = message
        .pre_key_id
        .map(|id| {
            our.pre_keys
                .iter()
                .find(|key| key.id == id)
                .ok_or(SignalError::MissingPreKey(id))
        })
        .transpose()?;
    let registration_id = message.registration_id.ok_or(SignalError::Malformed(
        "prekey message has no registration id",
    ))?;

    // The initiator's order, seen from this side.
    let mut secret = Zeroizing::new(Vec::with_capacity(32 * 5));
    secret.extend_from_slice(&[0xFF; 32]);
    secret.extend_from_slice(agree(&signed.key, &message.identity_key)?.as_ref());
    secret.extend_from_slice(agree(our.identity, &message.base_key)?.as_ref());
    secret.extend_from_slice(agree(&signed.key, &message.base_key)?.as_ref());
    if let Some(one_time) = one_time {
        secret.extend_from_slice(agree(&one_time.key, &message.base_key)?.as_ref());
    }
    let (root, _) = derive_initial(&secret);

    // Our signed prekey acts as our first ratchet key and the peer's base key
    // as its; the first message's ratchet key then steps both chains.
    Ok(SessionState {
        local_registration_id: our.registration_id,
        remote_registration_id: registration_id,
        remote_identity: message.identity_key,
        base_key: message.base_key,
        initiator: false,
        root_key: root,
        ratchet: RatchetKey::from(&signed.key),
        remote_ratchet: message.base_key,
        previous_counter: 0,
        sending: None,
        receiving: Vec::new(),
        pending_pre_key: None,
    })
}

/// Slot 0 is the current state, slot `i + 1` the `i`-th archived one.
fn slot_state(record: &SessionRecord, slot: usize) -> Option<&SessionState> {
    match slot.checked_sub(1) {
        None => record.current.as_ref(),
        Some(archived) => record.previous.get(archived),
    }
}

/// Stores an updated state back in its slot. An archived state stays
/// archived, as in libsignal-node: the peer has moved on to the current
/// session, and answering on an old one makes libsignal-node try (and, on
/// failure, corrupt) its open session first.
fn put_back(record: &mut SessionRecord, slot: usize, state: SessionState) {
    match slot.checked_sub(1) {
        None => record.current = Some(state),
        Some(archived) => {
            if let Some(entry) = record.previous.get_mut(archived) {
                *entry = state;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    struct Party {
        identity: KeyPair,
        registration_id: u32,
        signed: SignedPreKey,
        pre_keys: Vec<PreKey>,
    }

    impl Party {
        fn new(rng: &mut StdRng, registration_id: u32) -> Self {
            let identity = KeyPair::generate(rng);
            let signed = SignedPreKey::generate(1, &identity, rng).expect("id in range");
            let pre_keys = (1..=3)
                .map(|id| PreKey::generate(id, rng).expect("id in range"))
                .collect();
            Self {
                identity,
                registration_id,
                signed,
                pre_keys,
            }
        }

        fn bundle(&self, pre_key: Option<usize>) -> PreKeyBundle {
            PreKeyBundle::new(
                self.registration_id,
                0,
                &self.identity.public,
                &self.signed,
                pre_key.map(|i| &self.pre_keys[i]),
            )
        }

        fn keys(&self) -> LocalKeys<'_> {
            LocalKeys {
                identity: &self.identity,
                registration_id: self.registration_id,
                signed_pre_keys: std::slice::from_ref(&self.signed),
                pre_keys: &self.pre_keys,
            }
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x5167)
    }

    /// Alice builds a session to Bob, Bob receives one pkmsg and answers,
    /// Alice reads the answer.
    fn established(rng: &mut StdRng) -> (Party, Party, SessionRecord, SessionRecord) {
        let alice = Party::new(rng, 111);
        let bob = Party::new(rng, 222);
        let mut alice_record =
            process_bundle(&bob.bundle(Some(0)), &alice.identity, 111, None, rng).expect("bundle");
        let first = encrypt(&mut alice_record, &alice.identity, b"hello").expect("encrypt");
        let decrypted =
            decrypt_prekey_message(None, &bob.keys(), first.bytes(), rng).expect("pkmsg");
        let mut bob_record = decrypted.record;
        let reply = encrypt(&mut bob_record, &bob.identity, b"hi").expect("encrypt");
        assert_eq!(reply.kind(), "msg");
        assert_eq!(
            decrypt_message(
                &mut alice_record,
                &alice.identity.public,
                reply.bytes(),
                rng
            )
            .expect("reply"),
            b"hi"
        );
        (alice, bob, alice_record, bob_record)
    }

    #[test]
    fn prekey_messages_until_the_first_reply_then_messages() {
        let mut rng = rng();
        let alice = Party::new(&mut rng, 111);
        let bob = Party::new(&mut rng, 222);
        let mut alice_record =
            process_bundle(&bob.bundle(Some(1)), &alice.identity, 111, None, &mut rng)
                .expect("bundle");
        assert!(alice_record.has_unacknowledged_pre_key());

        let sent: Vec<_> = (0..3)
            .map(|i| encrypt(&mut alice_record, &alice.identity, &[i; 5]).expect("encrypt"))
            .collect();
        assert!(sent.iter().all(|m| m.kind() == "pkmsg"));
        let header = PreKeySignalMessage::decode(sent[0].bytes()).expect("decodes");
        assert_eq!(header.registration_id, Some(111));
        assert_eq!(header.pre_key_id, Some(2));
        assert_eq!(header.signed_pre_key_id, 1);
        assert_eq!(header.identity_key, alice.identity.public);

        let first = decrypt_prekey_message(None, &bob.keys(), sent[0].bytes(), &mut rng)
            .expect("first pkmsg");
        assert_eq!(first.plaintext, [0; 5]);
        assert_eq!(first.used_prekey_id, Some(2));
        assert_eq!(first.remote_identity, alice.identity.public);
        assert!(!first.identity_changed);
        assert_eq!(first.record.remote_registration_id(), Some(111));

        // Later pkmsgs of the same session reuse it and consume no prekey,
        // even in another order.
        let third =
            decrypt_prekey_message(Some(&first.record), &bob.keys(), sent[2].bytes(), &mut rng)
                .expect("third pkmsg");
        assert_eq!(third.plaintext, [2; 5]);
        assert_eq!(third.used_prekey_id, None);
        let second =
            decrypt_prekey_message(Some(&third.record), &bob.keys(), sent[1].bytes(), &mut rng)
                .expect("second pkmsg");
        assert_eq!(second.plaintext, [1; 5]);
        let mut bob_record = second.record;
        assert_eq!(bob_record.archived_count(), 0);

        let reply = encrypt(&mut bob_record, &bob.identity, b"ok").expect("encrypt");
        assert_eq!(reply.kind(), "msg");
        decrypt_message(
            &mut alice_record,
            &alice.identity.public,
            reply.bytes(),
            &mut rng,
        )
        .expect("reply");
        assert!(!alice_record.has_unacknowledged_pre_key());
        let next = encrypt(&mut alice_record, &alice.identity, b"now msg").expect("encrypt");
        assert_eq!(next.kind(), "msg");
        assert_eq!(
            decrypt_message(
                &mut bob_record,
                &bob.identity.public,
                next.bytes(),
                &mut rng
            )
            .expect("msg"),
            b"now msg"
        );
    }

    #[test]
    fn session_without_one_time_prekey() {
        let mut rng = rng();
        let alice = Party::new(&mut rng, 1);
        let bob = Party::new(&mut rng, 2);
        let mut record =
            process_bundle(&bob.bundle(None), &alice.identity, 1, None, &mut rng).expect("bundle");
        let message = encrypt(&mut record, &alice.identity, b"x").expect("encrypt");
        assert_eq!(
            PreKeySignalMessage::decode(message.bytes())
                .expect("decodes")
                .pre_key_id,
            None
        );
        let keys = LocalKeys {
            pre_keys: &[],
            ..bob.keys()
        };
        let decrypted =
            decrypt_prekey_message(None, &keys, message.bytes(), &mut rng).expect("decrypts");
        assert_eq!(decrypted.plaintext, b"x");
        assert_eq!(decrypted.used_prekey_id, None);
    }

    #[test]
    fn many_round_trips_with_ratchet_steps() {
        let mut rng = rng();
        let (alice, bob, mut alice_record, mut bob_record) = established(&mut rng);
        let mut last_ratchet = None;
        for round in 0..20u8 {
            for i in 0..(round % 3 + 1) {
                let text = [round, i, 0xA];
                let message = encrypt(&mut alice_record, &alice.identity, &text).expect("encrypt");
                let ratchet = SignalMessage::decode(message.bytes())
                    .expect("decodes")
                    .ratchet_key;
                if i == 0 {
                    assert_ne!(Some(ratchet), last_ratchet, "alice did not step");
                }
                last_ratchet = Some(ratchet);
                assert_eq!(
                    decrypt_message(
                        &mut bob_record,
                        &bob.identity.public,
                        message.bytes(),
                        &mut rng
                    )
                    .expect("bob decrypts"),
                    text
                );
            }
            let text = [round, 0xB];
            let message = encrypt(&mut bob_record, &bob.identity, &text).expect("encrypt");
            assert_eq!(
                decrypt_message(
                    &mut alice_record,
                    &alice.identity.public,
                    message.bytes(),
                    &mut rng
                )
                .expect("alice decrypts"),
                text
            );
        }
        // Only the last few receiving chains are kept.
        let state = alice_record.current.as_ref().expect("current");
        assert!(state.receiving.len() <= crate::wa::signal::MAX_RECEIVING_CHAINS);
    }

    #[test]
    fn out_of_order_within_a_chain_and_across_ratchet_steps() {
        let mut rng = rng();
        let (alice, bob, mut alice_record, mut bob_record) = established(&mut rng);
        let chain1: Vec<_> = (0..6u8)
            .map(|i| encrypt(&mut alice_record, &alice.identity, &[1, i]).expect("encrypt"))
            .collect();
        // Bob sees message 4 first, then 1.
        for i in [4usize, 1] {
            assert_eq!(
                decrypt_message(
                    &mut bob_record,
                    &bob.identity.public,
                    chain1[i].bytes(),
                    &mut rng
                )
                .expect("out of order"),
                [1, i as u8]
            );
        }
        // Bob answers; Alice steps and starts a new chain.
        let reply = encrypt(&mut bob_record, &bob.identity, b"r").expect("encrypt");
        decrypt_message(
            &mut alice_record,
            &alice.identity.public,
            reply.bytes(),
            &mut rng,
        )
        .expect("reply");
        let chain2: Vec<_> = (0..2u8)
            .map(|i| encrypt(&mut alice_record, &alice.identity, &[2, i]).expect("encrypt"))
            .collect();
        assert_eq!(
            SignalMessage::decode(chain2[0].bytes())
                .expect("decodes")
                .previous_counter,
            5
        );
        // The new chain first; its previous counter lets Bob keep message 5's
        // key although he never saw it.
        for (message, text) in [
            (&chain2[1], [2, 1]),
            (&chain1[5], [1, 5]),
            (&chain1[0], [1, 0]),
            (&chain2[0], [2, 0]),
            (&chain1[3], [1, 3]),
            (&chain1[2], [1, 2]),
        ] {
            assert_eq!(
                decrypt_message(
                    &mut bob_record,
                    &bob.identity.public,
                    message.bytes(),
                    &mut rng
                )
                .expect("late message"),
                text
            );
        }
        // Every key was used once.
        for message in chain1.iter().chain(&chain2) {
            let error = decrypt_message(
                &mut bob_record,
                &bob.identity.public,
                message.bytes(),
                &mut rng,
            )
            .expect_err("replay");
            assert!(error.is_duplicate(), "{error}");
        }
    }

    #[test]
    fn skipped_key_limit() {
        let mut rng = rng();
        let (alice, bob, mut alice_record, bob_record) = established(&mut rng);
        let messages: Vec<_> = (0..=2000u32)
            .map(|i| {
                encrypt(&mut alice_record, &alice.identity, &i.to_be_bytes()).expect("encrypt")
            })
            .collect();
        let before = bob_record.serialize();
        let mut record = bob_record.clone();
        assert!(matches!(
            decrypt_message(
                &mut record,
                &bob.identity.public,
                messages[2000].bytes(),
                &mut rng
            ),
            Err(SignalError::TooFarAhead { skip: 2000 })
        ));
        assert_eq!(record.serialize(), before);
        assert_eq!(
            decrypt_message(
                &mut record,
                &bob.identity.public,
                messages[1999].bytes(),
                &mut rng
            )
            .expect("within the limit"),
            1999u32.to_be_bytes()
        );
        assert_eq!(
            decrypt_message(
                &mut record,
                &bob.identity.public,
                messages[7].bytes(),
                &mut rng
            )
            .expect("kept key"),
            7u32.to_be_bytes()
        );
        assert_eq!(
            decrypt_message(
                &mut record,
                &bob.identity.public,
                messages[2000].bytes(),
                &mut rng
            )
            .expect("now in range"),
            2000u32.to_be_bytes()
        );
    }

    #[test]
    fn tampering_is_rejected_without_touching_the_record() {
        let mut rng = rng();
        let (alice, bob, mut alice_record, mut bob_record) = established(&mut rng);
        let message = encrypt(&mut alice_record, &alice.identity, b"secret").expect("encrypt");
        let bytes = message.bytes().to_vec();
        let before = bob_record.serialize();
        for at in [bytes.len() - 1, bytes.len() - 20, 5] {
            let mut tampered = bytes.clone();
            tampered[at] ^= 0x01;
            let result =
                decrypt_message(&mut bob_record, &bob.identity.public, &tampered, &mut rng);
            assert!(result.is_err(), "flipping byte {at} went unnoticed");
            assert_eq!(
                bob_record.serialize(),
                before,
                "record changed by byte {at}"
            );
        }
        // The MAC binds the identities: the wrong receiver identity fails.
        assert!(matches!(
            decrypt_message(
                &mut bob_record,
                &bob.identity.public.map(|b| b ^ 1),
                &bytes,
                &mut rng
            ),
            Err(SignalError::BadMac)
        ));
        assert_eq!(
            decrypt_message(&mut bob_record, &bob.identity.public, &bytes, &mut rng)
                .expect("original still decrypts"),
            b"secret"
        );
    }

    #[test]
    fn tampered_first_message_leaves_no_session() {
        let mut rng = rng();
        let alice = Party::new(&mut rng, 1);
        let bob = Party::new(&mut rng, 2);
        let mut record = process_bundle(&bob.bundle(Some(0)), &alice.identity, 1, None, &mut rng)
            .expect("bundle");
        let message = encrypt(&mut record, &alice.identity, b"x").expect("encrypt");
        let header = PreKeySignalMessage::decode(message.bytes()).expect("decodes");
        let mut inner = header.message_bytes().to_vec();
        let last = inner.len() - 1;
        inner[last] ^= 0x80;
        let tampered = PreKeySignalMessage::encode(
            1,
            header.pre_key_id,
            header.signed_pre_key_id,
            &header.base_key,
            &header.identity_key,
            inner,
        );
        assert!(matches!(
            decrypt_prekey_message(None, &bob.keys(), &tampered, &mut rng),
            Err(SignalError::BadMac)
        ));
    }

    #[test]
    fn missing_prekeys_and_bad_bundles() {
        let mut rng = rng();
        let alice = Party::new(&mut rng, 1);
        let bob = Party::new(&mut rng, 2);
        let mut record = process_bundle(&bob.bundle(Some(2)), &alice.identity, 1, None, &mut rng)
            .expect("bundle");
        let message = encrypt(&mut record, &alice.identity, b"x").expect("encrypt");
        let no_pre_keys = LocalKeys {
            pre_keys: &bob.pre_keys[..2],
            ..bob.keys()
        };
        assert!(matches!(
            decrypt_prekey_message(None, &no_pre_keys, message.bytes(), &mut rng),
            Err(SignalError::MissingPreKey(3))
        ));
        let no_signed = LocalKeys {
            signed_pre_keys: &[],
            ..bob.keys()
        };
        assert!(matches!(
            decrypt_prekey_message(None, &no_signed, message.bytes(), &mut rng),
            Err(SignalError::MissingSignedPreKey(1))
        ));

        let mut bad = bob.bundle(None);
        bad.signed_pre_key.2[0] ^= 1;
        assert!(matches!(
            process_bundle(&bad, &alice.identity, 1, None, &mut rng),
            Err(SignalError::BadSignature)
        ));
        let mut weak = bob.bundle(None);
        weak.pre_key = Some((5, [0; 32]));
        assert!(matches!(
            process_bundle(&weak, &alice.identity, 1, None, &mut rng),
            Err(SignalError::WeakKey)
        ));
        assert!(matches!(
            encrypt(&mut SessionRecord::new(), &alice.identity, b"x"),
            Err(SignalError::NoSession)
        ));
        assert!(matches!(
            decrypt_message(
                &mut SessionRecord::new(),
                &alice.identity.public,
                message.bytes(),
                &mut rng
            ),
            Err(SignalError::UnsupportedVersion(_))
                | Err(SignalError::Decode(_))
                | Err(SignalError::Malformed(_))
        ));
    }

    #[test]
    fn records_survive_serialization_mid_conversation() {
        let mut rng = rng();
        let (alice, bob, mut alice_record, mut bob_record) = established(&mut rng);
        let held: Vec<_> = (0..4u8)
            .map(|i| encrypt(&mut alice_record, &alice.identity, &[i]).expect("encrypt"))
            .collect();
        decrypt_message(
            &mut bob_record,
            &bob.identity.public,
            held[3].bytes(),
            &mut rng,
        )
        .expect("skips three");

        let alice_bytes = alice_record.serialize();
        let bob_bytes = bob_record.serialize();
        let mut alice_record = SessionRecord::deserialize(&alice_bytes).expect("alice record");
        let mut bob_record = SessionRecord::deserialize(&bob_bytes).expect("bob record");
        assert_eq!(alice_record.serialize(), alice_bytes);
        assert_eq!(bob_record.serialize(), bob_bytes);

        // Skipped keys survived.
        assert_eq!(
            decrypt_message(
                &mut bob_record,
                &bob.identity.public,
                held[1].bytes(),
                &mut rng
            )
            .expect("skipped key restored"),
            [1]
        );
        let reply = encrypt(&mut bob_record, &bob.identity, b"after restore").expect("encrypt");
        assert_eq!(
            decrypt_message(
                &mut alice_record,
                &alice.identity.public,
                reply.bytes(),
                &mut rng
            )
            .expect("decrypts"),
            b"after restore"
        );
        // A pending prekey survives too.
        let carol = Party::new(&mut rng, 3);
        let pending = process_bundle(&carol.bundle(Some(0)), &alice.identity, 111, None, &mut rng)
            .expect("bundle");
        let mut restored = SessionRecord::deserialize(&pending.serialize()).expect("restores");
        assert!(restored.has_unacknowledged_pre_key());
        let message = encrypt(&mut restored, &alice.identity, b"p").expect("encrypt");
        assert_eq!(message.kind(), "pkmsg");
        decrypt_prekey_message(None, &carol.keys(), message.bytes(), &mut rng).expect("decrypts");
    }

    #[test]
    fn replaced_session_still_receives_late_messages() {
        let mut rng = rng();
        let (alice, bob, mut alice_record, mut bob_record) = established(&mut rng);
        let late = encrypt(&mut alice_record, &alice.identity, b"late").expect("encrypt");

        // Alice starts over (say, after a retry receipt) with a new bundle.
        let mut alice_record = process_bundle(
            &bob.bundle(Some(1)),
            &alice.identity,
            111,
            Some(alice_record),
            &mut rng,
        )
        .expect("bundle");
        assert_eq!(alice_record.archived_count(), 1);
        let fresh = encrypt(&mut alice_record, &alice.identity, b"fresh").expect("encrypt");
        assert_eq!(fresh.kind(), "pkmsg");
        let decrypted =
            decrypt_prekey_message(Some(&bob_record), &bob.keys(), fresh.bytes(), &mut rng)
                .expect("new session");
        assert!(!decrypted.identity_changed);
        bob_record = decrypted.record;
        assert_eq!(bob_record.archived_count(), 1);

        assert_eq!(
            decrypt_message(
                &mut bob_record,
                &bob.identity.public,
                late.bytes(),
                &mut rng
            )
            .expect("archived session decrypts"),
            b"late"
        );
        // The new session stays current on both sides.
        assert_eq!(bob_record.archived_count(), 1);
        let reply = encrypt(&mut bob_record, &bob.identity, b"on new").expect("encrypt");
        assert_eq!(
            decrypt_message(
                &mut alice_record,
                &alice.identity.public,
                reply.bytes(),
                &mut rng
            )
            .expect("current session"),
            b"on new"
        );
        assert!(!alice_record.has_unacknowledged_pre_key());
    }

    #[test]
    fn identity_change_is_flagged_not_refused() {
        let mut rng = rng();
        let (_alice, bob, _alice_record, bob_record) = established(&mut rng);
        let mallory = Party::new(&mut rng, 9);
        let mut record = process_bundle(&bob.bundle(Some(2)), &mallory.identity, 9, None, &mut rng)
            .expect("bundle");
        let message = encrypt(&mut record, &mallory.identity, b"new phone").expect("encrypt");
        let decrypted =
            decrypt_prekey_message(Some(&bob_record), &bob.keys(), message.bytes(), &mut rng)
                .expect("trusted on first use");
        assert!(decrypted.identity_changed);
        assert_eq!(decrypted.remote_identity, mallory.identity.public);
        assert_eq!(
            decrypted.record.remote_identity(),
            Some(mallory.identity.public)
        );
    }

    #[test]
    fn ciphertext_message_kinds() {
        assert_eq!(CiphertextMessage::PreKey(vec![1]).kind(), "pkmsg");
        assert_eq!(CiphertextMessage::Whisper(vec![2]).kind(), "msg");
        assert_eq!(CiphertextMessage::Whisper(vec![2]).into_bytes(), vec![2]);
    }
}
