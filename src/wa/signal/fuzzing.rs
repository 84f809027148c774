//! Fuzz entry points for every Signal decoder and decrypt path: arbitrary
//! bytes in, no panic allowed, and a failed decrypt must leave the record as
//! it was. Called by the property tests below and by cargo-fuzz targets.
//! Must not import I/O.

use std::str::FromStr;
use std::sync::OnceLock;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{
    create_distribution_message, decrypt_message, decrypt_prekey_message, encrypt, group_decrypt,
    group_encrypt, process_bundle, process_distribution_message, unpad, LocalKeys, PreKey,
    PreKeyBundle, PreKeySignalMessage, ProtocolAddress, SenderKeyDistributionMessage,
    SenderKeyMessage, SenderKeyRecord, SessionRecord, SignalMessage, SignedPreKey,
};
use crate::wa::crypto::KeyPair;

/// Two parties with an established session (one round trip done) and a
/// sender key, built from a fixed seed so a crash reproduces from the input
/// bytes alone.
struct Fixture {
    alice_identity: KeyPair,
    bob_identity: KeyPair,
    bob_signed: SignedPreKey,
    bob_pre_key: PreKey,
    /// Alice's record after Bob answered.
    alice: SessionRecord,
    /// Bob's record after Alice's first message.
    bob: SessionRecord,
    /// A group receiver's record for Alice's sender key, and Alice's own.
    receiver: SenderKeyRecord,
    sender: SenderKeyRecord,
    /// Genuine messages, for the mutation-based property tests.
    samples: Vec<Vec<u8>>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| build().expect("a fixed-seed session always builds"))
}

fn build() -> Result<Fixture, super::SignalError> {
    let mut rng = StdRng::seed_from_u64(0xF022);
    let alice_identity = KeyPair::generate(&mut rng);
    let bob_identity = KeyPair::generate(&mut rng);
    let bob_signed = SignedPreKey::generate(1, &bob_identity, &mut rng)?;
    let bob_pre_key = PreKey::generate(2, &mut rng)?;
    let bundle = PreKeyBundle::new(
        1000,
        0,
        &bob_identity.public,
        &bob_signed,
        Some(&bob_pre_key),
    );
    let mut alice = process_bundle(&bundle, &alice_identity, 2000, None, &mut rng)?;
    let first = encrypt(&mut alice, &alice_identity, b"first")?;
    let keys = LocalKeys {
        identity: &bob_identity,
        registration_id: 1000,
        signed_pre_keys: std::slice::from_ref(&bob_signed),
        pre_keys: std::slice::from_ref(&bob_pre_key),
    };
    let mut bob = decrypt_prekey_message(None, &keys, first.bytes(), &mut rng)?.record;
    let reply = encrypt(&mut bob, &bob_identity, b"reply")?;
    decrypt_message(&mut alice, &alice_identity.public, reply.bytes(), &mut rng)?;
    let next = encrypt(&mut alice, &alice_identity, b"next")?;

    let mut sender = SenderKeyRecord::new();
    let distribution = create_distribution_message(&mut sender, &mut rng);
    let mut receiver = SenderKeyRecord::new();
    process_distribution_message(&mut receiver, &distribution)?;
    let group = group_encrypt(&mut sender, b"group", &mut rng)?;

    let samples = vec![
        first.into_bytes(),
        reply.into_bytes(),
        next.into_bytes(),
        distribution,
        group,
        alice.serialize().to_vec(),
        receiver.serialize().to_vec(),
    ];
    Ok(Fixture {
        alice_identity,
        bob_identity,
        bob_signed,
        bob_pre_key,
        alice,
        bob,
        receiver,
        sender,
        samples,
    })
}

/// Genuine messages and records: seeds for mutation.
pub fn samples() -> &'static [Vec<u8>] {
    &fixture().samples
}

/// Feeds `data` to the pairwise decoders and decrypt paths, as a `pkmsg`
/// for a fresh and an existing receiver and as a `msg` for both parties.
pub fn fuzz_session(data: &[u8]) {
    let fx = fixture();
    let mut rng = StdRng::seed_from_u64(1);
    let _ = SignalMessage::decode(data);
    let _ = PreKeySignalMessage::decode(data);
    let keys = LocalKeys {
        identity: &fx.bob_identity,
        registration_id: 1000,
        signed_pre_keys: std::slice::from_ref(&fx.bob_signed),
        pre_keys: std::slice::from_ref(&fx.bob_pre_key),
    };
    let _ = decrypt_prekey_message(None, &keys, data, &mut rng);
    let _ = decrypt_prekey_message(Some(&fx.bob), &keys, data, &mut rng);
    for (record, our) in [(&fx.alice, &fx.alice_identity), (&fx.bob, &fx.bob_identity)] {
        let mut copy = record.clone();
        if decrypt_message(&mut copy, &our.public, data, &mut rng).is_err() {
            assert_eq!(
                copy.serialize(),
                record.serialize(),
                "a failed decrypt changed the record"
            );
        }
    }
}

/// Feeds `data` to the sender key decoders, distribution processing and
/// group decryption.
pub fn fuzz_group(data: &[u8]) {
    let fx = fixture();
    let _ = SenderKeyMessage::decode(data);
    let _ = SenderKeyDistributionMessage::decode(data);
    let mut receiver = fx.receiver.clone();
    let _ = process_distribution_message(&mut receiver, data);
    let mut receiver = fx.receiver.clone();
    if group_decrypt(&mut receiver, data).is_err() {
        assert_eq!(
            receiver.serialize(),
            fx.receiver.serialize(),
            "a failed group decrypt changed the record"
        );
    }
    let mut sender = fx.sender.clone();
    let _ = group_decrypt(&mut sender, data);
}

/// Feeds `data` to the stored-record readers, `unpad` and the address parser.
pub fn fuzz_records(data: &[u8]) {
    if let Ok(record) = SessionRecord::deserialize(data) {
        // Whatever decodes must encode and decode again to the same record.
        let again = SessionRecord::deserialize(&record.serialize());
        assert!(again.is_ok(), "a decoded session record did not re-decode");
    }
    if let Ok(record) = SenderKeyRecord::deserialize(data) {
        assert!(SenderKeyRecord::deserialize(&record.serialize()).is_ok());
    }
    let _ = unpad(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ProtocolAddress::from_str(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A genuine message with a few bytes changed, cut or extended.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            0..samples().len(),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<Option<prop::sample::Index>>(),
            proptest::collection::vec(any::<u8>(), 0..3),
        )
            .prop_map(|(which, edits, cut, tail)| {
                let mut bytes = samples()[which].clone();
                for (at, value) in edits {
                    if !bytes.is_empty() {
                        let i = at.index(bytes.len());
                        bytes[i] ^= value;
                    }
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                bytes.extend(tail);
                bytes
            })
    }

    #[test]
    fn genuine_samples_pass_through_without_panic() {
        for sample in samples() {
            fuzz_session(sample);
            fuzz_group(sample);
            fuzz_records(sample);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            fuzz_session(&data);
            fuzz_group(&data);
            fuzz_records(&data);
        }

        #[test]
        fn arbitrary_bytes_after_version_byte_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut message = vec![0x33];
            message.extend(data);
            fuzz_session(&message);
            fuzz_group(&message);
        }

        #[test]
        fn mutated_messages_never_panic(data in mutated()) {
            fuzz_session(&data);
            fuzz_group(&data);
            fuzz_records(&data);
        }
    }
}
