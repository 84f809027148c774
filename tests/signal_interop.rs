//! Interop of the Signal layer with independent code: libsignal-node (npm
//! `libsignal`, what Baileys uses) for pairwise sessions in both directions,
//! and Baileys' own sender key code for group messages, driven through
//! tests/interop/signal-peer.js. Node.js is required; without it these tests
//! fail.

mod node_script;

use std::io::Write;
use std::process::{Child, ChildStdin};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};
use wagate::wa::crypto::KeyPair;
use wagate::wa::signal::{
    create_distribution_message, decrypt_message, decrypt_prekey_message, encrypt,
    generate_registration_id, group_decrypt, group_encrypt, pad, process_bundle,
    process_distribution_message, unpad, CiphertextMessage, LocalKeys, PreKey, PreKeyBundle,
    SenderKeyMessage, SenderKeyRecord, SessionRecord, SignalError, SignalMessage, SignedPreKey,
};

/// Generous: a step may encrypt a few thousand messages in node.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
const GROUP: &str = "120363000000000001@g.us";

/// The node peer; killed on drop so a failing test never leaves it behind.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Peer {
    fn spawn() -> Self {
        let (child, stdin, lines) = node_script::spawn("signal-peer.js");
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// Sends one request and returns the answer, or the peer's error text.
    fn call(&mut self, request: Value) -> Result<Value, String> {
        writeln!(self.stdin, "{request}").expect("peer reads stdin");
        self.stdin.flush().expect("peer reads stdin");
        let line = self
            .lines
            .recv_timeout(ANSWER_TIMEOUT)
            .expect("peer answers in time");
        let answer: Value = serde_json::from_str(&line).expect("peer answers JSON");
        match answer.get("error") {
            Some(error) => Err(error.as_str().unwrap_or("?").to_owned()),
            None => Ok(answer),
        }
    }

    fn ok(&mut self, request: Value) -> Value {
        let op = request["op"].clone();
        self.call(request)
            .unwrap_or_else(|error| panic!("peer op {op} failed: {error}"))
    }

    fn encrypt(&mut self, addr: &str, plaintext: &[u8]) -> (String, Vec<u8>) {
        let answer =
            self.ok(json!({"op": "encrypt", "addr": addr, "plaintext": hex::encode(plaintext)}));
        (
            answer["type"].as_str().expect("type").to_owned(),
            bytes(&answer["body"]),
        )
    }

    fn decrypt(&mut self, addr: &str, message: &CiphertextMessage) -> Result<Vec<u8>, String> {
        self.decrypt_raw(addr, message.kind(), message.bytes())
    }

    fn decrypt_raw(&mut self, addr: &str, kind: &str, body: &[u8]) -> Result<Vec<u8>, String> {
        self.call(json!({"op": "decrypt", "addr": addr, "type": kind, "body": hex::encode(body)}))
            .map(|answer| bytes(&answer["plaintext"]))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bytes(value: &Value) -> Vec<u8> {
    hex::decode(value.as_str().expect("hex string")).expect("valid hex")
}

fn key32(value: &Value) -> [u8; 32] {
    bytes(value).try_into().expect("32 bytes")
}

/// The peer's published keys, as a bundle for us.
struct PeerKeys {
    identity: [u8; 32],
    bundle_without_pre_key: PreKeyBundle,
    pre_keys: Vec<(u32, [u8; 32])>,
}

impl PeerKeys {
    fn fetch(peer: &mut Peer) -> Self {
        let init = peer.ok(json!({"op": "init"}));
        let signed = &init["signedPreKey"];
        let identity = key32(&init["identity"]);
        Self {
            identity,
            bundle_without_pre_key: PreKeyBundle {
                registration_id: init["registrationId"].as_u64().expect("number") as u32,
                device_id: 0,
                pre_key: None,
                signed_pre_key: (
                    signed["id"].as_u64().expect("number") as u32,
                    key32(&signed["public"]),
                    bytes(&signed["signature"]).try_into().expect("64 bytes"),
                ),
                identity_key: identity,
            },
            pre_keys: init["preKeys"]
                .as_array()
                .expect("list")
                .iter()
                .map(|key| {
                    (
                        key["id"].as_u64().expect("number") as u32,
                        key32(&key["public"]),
                    )
                })
                .collect(),
        }
    }

    fn bundle(&self, pre_key: usize) -> PreKeyBundle {
        PreKeyBundle {
            pre_key: Some(self.pre_keys[pre_key]),
            ..self.bundle_without_pre_key.clone()
        }
    }
}

/// Our side: identity, registration id and prekeys.
struct Us {
    identity: KeyPair,
    registration_id: u32,
    signed: SignedPreKey,
    pre_keys: Vec<PreKey>,
}

impl Us {
    fn new(rng: &mut StdRng) -> Self {
        let identity = KeyPair::generate(rng);
        Self {
            registration_id: generate_registration_id(rng),
            signed: SignedPreKey::generate(5, &identity, rng).expect("id in range"),
            pre_keys: (10..13)
                .map(|id| PreKey::generate(id, rng).expect("id in range"))
                .collect(),
            identity,
        }
    }

    fn keys(&self) -> LocalKeys<'_> {
        LocalKeys {
            identity: &self.identity,
            registration_id: self.registration_id,
            signed_pre_keys: std::slice::from_ref(&self.signed),
            pre_keys: &self.pre_keys,
        }
    }

    /// Our bundle in the peer's JSON shape.
    fn bundle_json(&self, pre_key: Option<usize>) -> Value {
        let mut bundle = json!({
            "registrationId": self.registration_id,
            "identity": hex::encode(self.identity.public),
            "signedPreKey": {
                "id": self.signed.id,
                "public": hex::encode(self.signed.key.public),
                "signature": hex::encode(self.signed.signature),
            },
        });
        if let Some(i) = pre_key {
            let key = &self.pre_keys[i];
            bundle["preKey"] = json!({"id": key.id, "public": hex::encode(key.key.public)});
        }
        bundle
    }
}

/// Our address as the peer keys it, and the peer's as we would.
const OUR_ADDR: &str = "15550001111.3";

fn text(label: &str, i: usize) -> Vec<u8> {
    format!("{label} #{i}").into_bytes()
}

/// Sends `count` messages each way, checking every plaintext; the first
/// message of each turn carries a new ratchet key.
fn round_trips(
    peer: &mut Peer,
    us: &Us,
    record: &mut SessionRecord,
    rounds: usize,
    rng: &mut StdRng,
) {
    for round in 0..rounds {
        let mut ratchets = Vec::new();
        for i in 0..=(round % 3) {
            let plaintext = text(&format!("us r{round}"), i);
            let message = encrypt(record, &us.identity, &plaintext).expect("encrypt");
            assert_eq!(message.kind(), "msg");
            ratchets.push(
                SignalMessage::decode(message.bytes())
                    .expect("decodes")
                    .ratchet_key,
            );
            assert_eq!(
                peer.decrypt(OUR_ADDR, &message).expect("peer decrypts"),
                plaintext
            );
        }
        assert!(
            ratchets.windows(2).all(|w| w[0] == w[1]),
            "one chain per turn"
        );
        let mut peer_ratchets = Vec::new();
        for i in 0..=((round + 1) % 3) {
            let plaintext = text(&format!("peer r{round}"), i);
            let (kind, body) = peer.encrypt(OUR_ADDR, &plaintext);
            assert_eq!(kind, "msg");
            peer_ratchets.push(SignalMessage::decode(&body).expect("decodes").ratchet_key);
            assert_eq!(
                decrypt_message(record, &us.identity.public, &body, rng).expect("we decrypt"),
                plaintext
            );
        }
        assert!(!ratchets.contains(&peer_ratchets[0]));
    }
}

/// Out-of-order delivery both ways, within a chain and across a ratchet
/// step, including a jump of 1500 keys.
fn out_of_order(peer: &mut Peer, us: &Us, record: &mut SessionRecord, rng: &mut StdRng) {
    // Peer → us, one chain, shuffled.
    let sent: Vec<_> = (0..5)
        .map(|i| peer.encrypt(OUR_ADDR, &text("peer ooo", i)).1)
        .collect();
    for i in [3, 0, 4, 2, 1] {
        assert_eq!(
            decrypt_message(record, &us.identity.public, &sent[i], rng).expect("we decrypt"),
            text("peer ooo", i)
        );
    }
    // Us → peer, one chain, shuffled.
    let sent: Vec<_> = (0..5)
        .map(|i| encrypt(record, &us.identity, &text("us ooo", i)).expect("encrypt"))
        .collect();
    for i in [4, 1, 0, 3, 2] {
        assert_eq!(
            peer.decrypt(OUR_ADDR, &sent[i]).expect("peer decrypts"),
            text("us ooo", i)
        );
    }
    // Us → peer across a ratchet step: the peer sees only the last message
    // of our old chain, answers, we start a new chain, and then the rest of
    // the old chain arrives.
    let old: Vec<_> = (0..3)
        .map(|i| encrypt(record, &us.identity, &text("old", i)).expect("encrypt"))
        .collect();
    assert_eq!(
        peer.decrypt(OUR_ADDR, &old[2]).expect("peer decrypts"),
        text("old", 2)
    );
    let (_, reply) = peer.encrypt(OUR_ADDR, b"step");
    decrypt_message(record, &us.identity.public, &reply, rng).expect("we decrypt");
    let new = encrypt(record, &us.identity, b"new chain").expect("encrypt");
    assert_eq!(
        peer.decrypt(OUR_ADDR, &new).expect("peer decrypts"),
        b"new chain"
    );
    for i in [0, 1] {
        assert_eq!(
            peer.decrypt(OUR_ADDR, &old[i]).expect("old chain"),
            text("old", i)
        );
    }
    // Peer → us across a ratchet step, mirrored.
    let old: Vec<_> = (0..3)
        .map(|i| peer.encrypt(OUR_ADDR, &text("peer old", i)).1)
        .collect();
    decrypt_message(record, &us.identity.public, &old[1], rng).expect("we decrypt");
    let ours = encrypt(record, &us.identity, b"step").expect("encrypt");
    peer.decrypt(OUR_ADDR, &ours).expect("peer decrypts");
    let (_, new) = peer.encrypt(OUR_ADDR, b"peer new chain");
    assert_eq!(
        decrypt_message(record, &us.identity.public, &new, rng).expect("new chain"),
        b"peer new chain"
    );
    for i in [2, 0] {
        assert_eq!(
            decrypt_message(record, &us.identity.public, &old[i], rng).expect("old chain"),
            text("peer old", i)
        );
    }
    // A long jump both ways, within the 2000-key limit.
    let far: Vec<_> = (0..1500)
        .map(|i| peer.encrypt(OUR_ADDR, &text("far", i)).1)
        .collect();
    for i in [1499, 0, 750] {
        assert_eq!(
            decrypt_message(record, &us.identity.public, &far[i], rng).expect("far"),
            text("far", i)
        );
    }
    let far: Vec<_> = (0..1500)
        .map(|i| encrypt(record, &us.identity, &text("far us", i)).expect("encrypt"))
        .collect();
    for i in [1499, 3, 1000] {
        assert_eq!(
            peer.decrypt(OUR_ADDR, &far[i]).expect("far"),
            text("far us", i)
        );
    }
}

/// Each side rejects the other's tampered messages and still accepts the
/// genuine one afterwards.
fn tampering(peer: &mut Peer, us: &Us, record: &mut SessionRecord, rng: &mut StdRng) {
    let message = encrypt(record, &us.identity, b"authentic").expect("encrypt");
    let body = message.bytes().to_vec();
    for at in [body.len() - 1, body.len() - 12, 4] {
        let mut tampered = body.clone();
        tampered[at] ^= 0x20;
        let error = peer
            .decrypt_raw(OUR_ADDR, "msg", &tampered)
            .expect_err("peer accepted a tampered message");
        assert!(!error.is_empty());
    }
    assert_eq!(
        peer.decrypt(OUR_ADDR, &message).expect("genuine"),
        b"authentic"
    );

    let (_, body) = peer.encrypt(OUR_ADDR, b"from peer");
    let before = record.serialize();
    for at in [body.len() - 1, body.len() - 12] {
        let mut tampered = body.clone();
        tampered[at] ^= 0x20;
        assert!(matches!(
            decrypt_message(record, &us.identity.public, &tampered, rng),
            Err(SignalError::BadMac)
        ));
        assert_eq!(
            record.serialize(),
            before,
            "a rejected message changed the record"
        );
    }
    assert_eq!(
        decrypt_message(record, &us.identity.public, &body, rng).expect("genuine"),
        b"from peer"
    );
    // A replay is a duplicate, not a decryption failure.
    let error = decrypt_message(record, &us.identity.public, &body, rng).expect_err("replay");
    assert!(error.is_duplicate(), "{error}");
}

#[test]
fn we_initiate_to_libsignal() {
    let mut rng = StdRng::seed_from_u64(0x1001);
    let mut peer = Peer::spawn();
    let them = PeerKeys::fetch(&mut peer);
    let us = Us::new(&mut rng);

    let mut record = process_bundle(
        &them.bundle(2),
        &us.identity,
        us.registration_id,
        None,
        &mut rng,
    )
    .expect("libsignal's bundle verifies");
    let pre_key_id = them.pre_keys[2].0;

    // Until the peer answers every message is a pkmsg; the peer consumes its
    // one-time prekey with the first and reuses the session for the rest.
    let first: Vec<_> = (0..3)
        .map(|i| encrypt(&mut record, &us.identity, &text("pk", i)).expect("encrypt"))
        .collect();
    assert!(first.iter().all(|m| m.kind() == "pkmsg"));
    assert_eq!(
        peer.decrypt(OUR_ADDR, &first[0]).expect("pkmsg"),
        text("pk", 0)
    );
    let present = peer.ok(json!({"op": "has_prekey", "id": pre_key_id}));
    assert_eq!(
        present["present"],
        json!(false),
        "peer kept its used prekey"
    );
    assert_eq!(
        peer.decrypt(OUR_ADDR, &first[2]).expect("pkmsg"),
        text("pk", 2)
    );
    assert_eq!(
        peer.decrypt(OUR_ADDR, &first[1]).expect("pkmsg"),
        text("pk", 1)
    );

    let (kind, reply) = peer.encrypt(OUR_ADDR, b"first reply");
    assert_eq!(kind, "msg");
    assert!(record.has_unacknowledged_pre_key());
    assert_eq!(
        decrypt_message(&mut record, &us.identity.public, &reply, &mut rng).expect("reply"),
        b"first reply"
    );
    assert!(!record.has_unacknowledged_pre_key());
    assert_eq!(record.remote_identity(), Some(them.identity));

    // Records go through storage between steps, as in the gateway.
    let mut record = SessionRecord::deserialize(&record.serialize()).expect("round trip");
    round_trips(&mut peer, &us, &mut record, 8, &mut rng);
    out_of_order(&mut peer, &us, &mut record, &mut rng);
    let mut record = SessionRecord::deserialize(&record.serialize()).expect("round trip");
    tampering(&mut peer, &us, &mut record, &mut rng);
    round_trips(&mut peer, &us, &mut record, 3, &mut rng);
}

#[test]
fn libsignal_initiates_to_us() {
    let mut rng = StdRng::seed_from_u64(0x1002);
    let mut peer = Peer::spawn();
    let them = PeerKeys::fetch(&mut peer);
    let us = Us::new(&mut rng);
    peer.ok(json!({"op": "process_bundle", "addr": OUR_ADDR, "bundle": us.bundle_json(Some(1))}));

    let sent: Vec<_> = (0..3)
        .map(|i| peer.encrypt(OUR_ADDR, &text("pk", i)))
        .collect();
    assert!(sent.iter().all(|(kind, _)| kind == "pkmsg"));
    // The second pkmsg arrives first: it sets up the session by itself.
    let first = decrypt_prekey_message(None, &us.keys(), &sent[1].1, &mut rng).expect("pkmsg");
    assert_eq!(first.plaintext, text("pk", 1));
    assert_eq!(first.used_prekey_id, Some(us.pre_keys[1].id));
    assert_eq!(first.remote_identity, them.identity);
    assert!(!first.identity_changed);
    assert_eq!(
        first.record.remote_registration_id(),
        Some(them.bundle_without_pre_key.registration_id)
    );
    let mut record = first.record;
    for i in [0, 2] {
        let next = decrypt_prekey_message(Some(&record), &us.keys(), &sent[i].1, &mut rng)
            .expect("same session");
        assert_eq!(next.plaintext, text("pk", i));
        assert_eq!(next.used_prekey_id, None);
        record = next.record;
    }

    // As responder we never send a pkmsg.
    let reply = encrypt(&mut record, &us.identity, b"hello libsignal").expect("encrypt");
    assert_eq!(reply.kind(), "msg");
    assert_eq!(
        peer.decrypt(OUR_ADDR, &reply).expect("msg"),
        b"hello libsignal"
    );
    let (kind, body) = peer.encrypt(OUR_ADDR, b"now plain msg");
    assert_eq!(kind, "msg", "the peer keeps sending pkmsg after our reply");
    assert_eq!(
        decrypt_message(&mut record, &us.identity.public, &body, &mut rng).expect("msg"),
        b"now plain msg"
    );

    let mut record = SessionRecord::deserialize(&record.serialize()).expect("round trip");
    round_trips(&mut peer, &us, &mut record, 8, &mut rng);
    out_of_order(&mut peer, &us, &mut record, &mut rng);
    tampering(&mut peer, &us, &mut record, &mut rng);
}

#[test]
fn sessions_without_one_time_prekey_and_replaced_sessions() {
    let mut rng = StdRng::seed_from_u64(0x1003);
    let mut peer = Peer::spawn();
    let them = PeerKeys::fetch(&mut peer);
    let us = Us::new(&mut rng);

    // Peer → us with only the signed prekey.
    peer.ok(json!({"op": "process_bundle", "addr": OUR_ADDR, "bundle": us.bundle_json(None)}));
    let (kind, body) = peer.encrypt(OUR_ADDR, b"no one-time key");
    assert_eq!(kind, "pkmsg");
    let decrypted = decrypt_prekey_message(None, &us.keys(), &body, &mut rng).expect("pkmsg");
    assert_eq!(decrypted.plaintext, b"no one-time key");
    assert_eq!(decrypted.used_prekey_id, None);
    let mut record = decrypted.record;
    let reply = encrypt(&mut record, &us.identity, b"ack").expect("encrypt");
    assert_eq!(peer.decrypt(OUR_ADDR, &reply).expect("msg"), b"ack");

    // We replace the session from a bundle without a one-time prekey; the
    // peer switches to it, and its late message on the old session still
    // decrypts here. (The mirror case is not exercised: libsignal-node tries
    // a late message on its open session first and keeps the ratchet step
    // that trial made, breaking that session.)
    let (_, late_theirs) = peer.encrypt(OUR_ADDR, b"late from old peer");
    let mut record = process_bundle(
        &them.bundle_without_pre_key,
        &us.identity,
        us.registration_id,
        Some(record),
        &mut rng,
    )
    .expect("bundle");
    let fresh = encrypt(&mut record, &us.identity, b"fresh session").expect("encrypt");
    assert_eq!(fresh.kind(), "pkmsg");
    assert_eq!(
        peer.decrypt(OUR_ADDR, &fresh).expect("pkmsg"),
        b"fresh session"
    );
    let (kind, body) = peer.encrypt(OUR_ADDR, b"on the new session");
    assert_eq!(kind, "msg");
    assert_eq!(
        decrypt_message(&mut record, &us.identity.public, &body, &mut rng).expect("msg"),
        b"on the new session"
    );
    assert_eq!(
        decrypt_message(&mut record, &us.identity.public, &late_theirs, &mut rng)
            .expect("archived session"),
        b"late from old peer"
    );
    // Both sides carry on with the new session.
    assert_eq!(record.archived_count(), 1);
    round_trips(&mut peer, &us, &mut record, 3, &mut rng);
}

#[test]
fn sender_keys_with_baileys_both_ways() {
    let mut rng = StdRng::seed_from_u64(0x1004);
    let mut peer = Peer::spawn();
    const PEER_SENDER: &str = "15550002222.0";

    // Baileys → us.
    let answer = peer.ok(json!({"op": "sk_create", "group": GROUP, "sender": PEER_SENDER}));
    let mut theirs = SenderKeyRecord::new();
    process_distribution_message(&mut theirs, &bytes(&answer["skdm"])).expect("Baileys' SKDM");
    let sent: Vec<_> = (0..6)
        .map(|i| {
            let answer = peer.ok(
                json!({"op": "sk_encrypt", "group": GROUP, "sender": PEER_SENDER,
                "plaintext": hex::encode(text("baileys group", i))}),
            );
            bytes(&answer["body"])
        })
        .collect();
    // Baileys skips an iteration after each message (0, 2, 4, ...): the
    // gaps must not matter.
    let iterations: Vec<_> = sent
        .iter()
        .map(|m| SenderKeyMessage::decode(m).expect("decodes").iteration)
        .collect();
    assert_eq!(iterations[0], 0);
    for i in [0, 3, 1, 5, 4, 2] {
        assert_eq!(
            group_decrypt(&mut theirs, &sent[i]).expect("we decrypt skmsg"),
            text("baileys group", i)
        );
    }
    let before = theirs.serialize();
    let mut tampered = sent[5].clone();
    tampered[6] ^= 1;
    assert!(group_decrypt(&mut theirs, &tampered).is_err());
    let mut bad_signature = sent[5].clone();
    let last = bad_signature.len() - 1;
    bad_signature[last] ^= 1;
    assert!(matches!(
        group_decrypt(&mut theirs, &bad_signature),
        Err(SignalError::BadSignature)
    ));
    assert_eq!(theirs.serialize(), before);
    let mut theirs = SenderKeyRecord::deserialize(&theirs.serialize()).expect("round trip");
    let answer = peer.ok(
        json!({"op": "sk_encrypt", "group": GROUP, "sender": PEER_SENDER,
        "plaintext": hex::encode(b"after restore")}),
    );
    assert_eq!(
        group_decrypt(&mut theirs, &bytes(&answer["body"])).expect("decrypts"),
        b"after restore"
    );

    // Us → Baileys.
    let mut ours = SenderKeyRecord::new();
    let distribution = create_distribution_message(&mut ours, &mut rng);
    peer.ok(
        json!({"op": "sk_process", "group": GROUP, "sender": OUR_ADDR,
        "skdm": hex::encode(&distribution)}),
    );
    let sent: Vec<_> = (0..6)
        .map(|i| group_encrypt(&mut ours, &text("our group", i), &mut rng).expect("encrypt"))
        .collect();
    let decrypt = |peer: &mut Peer, body: &[u8]| {
        peer.call(
            json!({"op": "sk_decrypt", "group": GROUP, "sender": OUR_ADDR,
            "body": hex::encode(body)}),
        )
        .map(|answer| bytes(&answer["plaintext"]))
    };
    // Forward only, with gaps: Baileys persists skipped sender keys through
    // a protobuf type that drops them (`senderMessageKeys: [{}]`), so it
    // cannot decrypt an earlier message after a later one, even its own.
    for i in [0, 2, 3, 5] {
        assert_eq!(
            decrypt(&mut peer, &sent[i]).expect("Baileys decrypts"),
            text("our group", i)
        );
    }
    assert!(
        decrypt(&mut peer, &sent[5]).is_err(),
        "Baileys accepted a replay"
    );
    let mut ours = SenderKeyRecord::deserialize(&ours.serialize()).expect("round trip");
    let next = group_encrypt(&mut ours, b"restored sender", &mut rng).expect("encrypt");
    let mut forged = next.clone();
    forged[5] ^= 1;
    assert!(
        decrypt(&mut peer, &forged).is_err(),
        "Baileys accepted a tampered skmsg"
    );
    assert_eq!(
        decrypt(&mut peer, &next).expect("genuine"),
        b"restored sender"
    );
}

#[test]
fn padding_matches_baileys() {
    let mut rng = StdRng::seed_from_u64(0x1005);
    let mut peer = Peer::spawn();
    for len in [0usize, 1, 15, 16, 17, 200] {
        let message: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let answer = peer.ok(json!({"op": "pad", "plaintext": hex::encode(&message)}));
        let padded = bytes(&answer["padded"]);
        assert_eq!(unpad(&padded).expect("Baileys' padding"), &message[..]);
        for _ in 0..4 {
            let ours = pad(&mut rng, &message);
            let answer = peer.ok(json!({"op": "unpad", "padded": hex::encode(&ours)}));
            assert_eq!(bytes(&answer["plaintext"]), message);
        }
    }
}
