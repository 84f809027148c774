//! Signal benchmarks: encrypt+decrypt pairs on an established session (one
//! way, no ratchet step), round trips with a ratchet step each way, session
//! setup from a prekey bundle to the first decrypted `pkmsg`, and the same
//! pairs with the records stored and reloaded around every operation as the
//! gateway does, and group messages: sender-key encryption and decryption
//! on their own and as pairs. Divan prints operations per second (item/s).
//! Run with `cargo bench --bench signal`.

use std::cell::RefCell;

use divan::counter::ItemsCount;
use divan::Bencher;
use rand::rngs::StdRng;
use rand::SeedableRng;
use wagate::wa::crypto::KeyPair;
use wagate::wa::signal::{
    create_distribution_message, decrypt_message, decrypt_prekey_message, encrypt, group_decrypt,
    group_encrypt, process_bundle, process_distribution_message, LocalKeys, PreKey, PreKeyBundle,
    SenderKeyRecord, SessionRecord, SignedPreKey,
};

fn main() {
    // Measured with libsignal-node 6.0.0 (Baileys' Signal) on this machine.
    println!("libsignal 6.0.0 reference on this machine:");
    println!("  encrypt+decrypt pairs, one way:       14.5 Kitem/s");
    println!("  round trips with a ratchet step each:  393 item/s");
    println!("  session setup (bundle to first pkmsg): 16 ms");
    divan::main();
}

/// A typical padded text message.
const PLAINTEXT: &[u8] = &[0x42; 64];

struct Party {
    identity: KeyPair,
    signed: SignedPreKey,
    pre_key: PreKey,
}

impl Party {
    fn new(rng: &mut StdRng) -> Self {
        let identity = KeyPair::generate(rng);
        Self {
            signed: SignedPreKey::generate(1, &identity, rng).expect("id in range"),
            pre_key: PreKey::generate(1, rng).expect("id in range"),
            identity,
        }
    }

    fn bundle(&self) -> PreKeyBundle {
        PreKeyBundle::new(
            2,
            0,
            &self.identity.public,
            &self.signed,
            Some(&self.pre_key),
        )
    }

    fn keys(&self) -> LocalKeys<'_> {
        LocalKeys {
            identity: &self.identity,
            registration_id: 2,
            signed_pre_keys: std::slice::from_ref(&self.signed),
            pre_keys: std::slice::from_ref(&self.pre_key),
        }
    }
}

struct Conversation {
    alice: Party,
    bob: Party,
    alice_record: SessionRecord,
    bob_record: SessionRecord,
    rng: StdRng,
}

/// Alice opened a session to Bob and Bob answered once.
fn conversation() -> Conversation {
    let mut rng = StdRng::seed_from_u64(0xBE7C);
    let alice = Party::new(&mut rng);
    let bob = Party::new(&mut rng);
    let mut alice_record =
        process_bundle(&bob.bundle(), &alice.identity, 1, None, &mut rng).expect("bundle");
    let first = encrypt(&mut alice_record, &alice.identity, PLAINTEXT).expect("encrypt");
    let mut bob_record = decrypt_prekey_message(None, &bob.keys(), first.bytes(), &mut rng)
        .expect("pkmsg")
        .record;
    let reply = encrypt(&mut bob_record, &bob.identity, PLAINTEXT).expect("encrypt");
    decrypt_message(
        &mut alice_record,
        &alice.identity.public,
        reply.bytes(),
        &mut rng,
    )
    .expect("reply");
    Conversation {
        alice,
        bob,
        alice_record,
        bob_record,
        rng,
    }
}

/// Alice sends, Bob decrypts: one pair per iteration, all on one chain.
#[divan::bench]
fn encrypt_decrypt_pair_one_way(bencher: Bencher) {
    let state = RefCell::new(conversation());
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let c = &mut *state.borrow_mut();
        let message = encrypt(&mut c.alice_record, &c.alice.identity, PLAINTEXT).expect("encrypt");
        decrypt_message(
            &mut c.bob_record,
            &c.bob.identity.public,
            message.bytes(),
            &mut c.rng,
        )
        .expect("decrypt")
    });
}

/// As above, with both records loaded from and stored to bytes around each
/// operation, as a store-backed session does.
#[divan::bench]
fn encrypt_decrypt_pair_one_way_persisted(bencher: Bencher) {
    let c = conversation();
    let stored = RefCell::new((c.alice_record.serialize(), c.bob_record.serialize(), c.rng));
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (alice_bytes, bob_bytes, rng) = &mut *stored.borrow_mut();
        let mut alice = SessionRecord::deserialize(alice_bytes).expect("alice record");
        let message = encrypt(&mut alice, &c.alice.identity, PLAINTEXT).expect("encrypt");
        *alice_bytes = alice.serialize();
        let mut bob = SessionRecord::deserialize(bob_bytes).expect("bob record");
        let plaintext = decrypt_message(&mut bob, &c.bob.identity.public, message.bytes(), rng)
            .expect("decrypt");
        *bob_bytes = bob.serialize();
        plaintext
    });
}

/// Alice → Bob → Alice; each message carries a new ratchet key, so each
/// decryption does a DH ratchet step (two per round trip).
#[divan::bench]
fn round_trip_with_ratchet_steps(bencher: Bencher) {
    let state = RefCell::new(conversation());
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let c = &mut *state.borrow_mut();
        let message = encrypt(&mut c.alice_record, &c.alice.identity, PLAINTEXT).expect("encrypt");
        decrypt_message(
            &mut c.bob_record,
            &c.bob.identity.public,
            message.bytes(),
            &mut c.rng,
        )
        .expect("bob decrypts");
        let reply = encrypt(&mut c.bob_record, &c.bob.identity, PLAINTEXT).expect("encrypt");
        decrypt_message(
            &mut c.alice_record,
            &c.alice.identity.public,
            reply.bytes(),
            &mut c.rng,
        )
        .expect("alice decrypts")
    });
}

/// From Bob's bundle to Bob holding Alice's first message in clear: X3DH on
/// both sides, Alice's first chain, Bob's first ratchet step.
#[divan::bench]
fn session_setup(bencher: Bencher) {
    let mut rng = StdRng::seed_from_u64(0x5E7);
    let alice = Party::new(&mut rng);
    let bob = Party::new(&mut rng);
    let bundle = bob.bundle();
    let rng = RefCell::new(rng);
    bencher.bench_local(|| {
        let rng = &mut *rng.borrow_mut();
        let mut record = process_bundle(&bundle, &alice.identity, 1, None, rng).expect("bundle");
        let first = encrypt(&mut record, &alice.identity, PLAINTEXT).expect("encrypt");
        decrypt_prekey_message(None, &bob.keys(), first.bytes(), rng).expect("pkmsg")
    });
}

/// Group message: sign and encrypt, then verify and decrypt.
#[divan::bench]
fn group_encrypt_decrypt_pair(bencher: Bencher) {
    let mut rng = StdRng::seed_from_u64(0x6A0);
    let mut sender = SenderKeyRecord::new();
    let distribution = create_distribution_message(&mut sender, &mut rng);
    let mut receiver = SenderKeyRecord::new();
    process_distribution_message(&mut receiver, &distribution).expect("distribution");
    let state = RefCell::new((sender, receiver, rng));
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (sender, receiver, rng) = &mut *state.borrow_mut();
        let message = group_encrypt(sender, PLAINTEXT, rng).expect("encrypt");
        group_decrypt(receiver, &message).expect("decrypt")
    });
}

/// A sender's record with a key, and a member's record holding that key.
fn sender_and_member(seed: u64) -> (SenderKeyRecord, SenderKeyRecord, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sender = SenderKeyRecord::new();
    let distribution = create_distribution_message(&mut sender, &mut rng);
    let mut member = SenderKeyRecord::new();
    process_distribution_message(&mut member, &distribution).expect("distribution");
    (sender, member, rng)
}

/// Group message, sending side only: one chain step, AES and a signature.
#[divan::bench]
fn group_encrypt_only(bencher: Bencher) {
    let (sender, _, rng) = sender_and_member(0x6A1);
    let state = RefCell::new((sender, rng));
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (sender, rng) = &mut *state.borrow_mut();
        group_encrypt(sender, PLAINTEXT, rng).expect("encrypt")
    });
}

/// Group message, receiving side only: signature check, chain step, AES.
/// The messages are made outside the timed part, in chain order.
#[divan::bench]
fn group_decrypt_only(bencher: Bencher) {
    let (sender, member, rng) = sender_and_member(0x6A2);
    let sending = RefCell::new((sender, rng));
    let member = RefCell::new(member);
    bencher
        .counter(ItemsCount::new(1usize))
        .with_inputs(|| {
            let (sender, rng) = &mut *sending.borrow_mut();
            group_encrypt(sender, PLAINTEXT, rng).expect("encrypt")
        })
        .bench_local_refs(|message| {
            group_decrypt(&mut member.borrow_mut(), message).expect("decrypt")
        });
}
