//! Interop of the Noise layer with independent code: Baileys' own
//! `makeNoiseHandler` does the client side of the handshake and frame cipher
//! against our responder, and libsignal checks our XEdDSA signatures and
//! agreements. Node.js is required; without it these tests fail.

mod node_script;

use std::io::Write;
use std::process::{Child, ChildStdin};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wagate::proto::wa::HandshakeMessage;
use wagate::wa::crypto::{verify, KeyPair};
use wagate::wa::noise::{encode_frame, issue_cert_chain, FrameDecoder, ServerHandshake};

/// Generous: the slowest step decrypts a few MiB in an unoptimised build.
const LINE_TIMEOUT: Duration = Duration::from_secs(120);

/// A node script speaking a line protocol on stdin/stdout; killed on drop so
/// a failing test never leaves it behind.
struct Script {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Script {
    fn spawn(name: &str) -> Self {
        let (child, stdin, lines) = node_script::spawn(name);
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("script reads stdin");
        self.stdin.flush().expect("script reads stdin");
    }

    fn line(&mut self) -> String {
        let line = self
            .lines
            .recv_timeout(LINE_TIMEOUT)
            .expect("script answers in time");
        if let Some(error) = line.strip_prefix("error ") {
            let text = hex::decode(error)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|_| error.to_owned());
            panic!("script failed: {text}");
        }
        line
    }

    /// Reads a "<tag> <hex>..." line and returns the hex fields decoded.
    fn tagged(&mut self, tag: &str) -> Vec<Vec<u8>> {
        let line = self.line();
        let mut fields = line.split(' ');
        assert_eq!(fields.next(), Some(tag), "line: {line:.200}");
        fields
            .map(|f| hex::decode(f).expect("script writes hex"))
            .collect()
    }

    fn one(&mut self, tag: &str) -> Vec<u8> {
        self.tagged(tag).remove(0)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn key32(bytes: &[u8]) -> [u8; 32] {
    bytes.try_into().expect("a 32-byte key")
}

#[test]
fn baileys_client_handshakes_with_our_responder() {
    let mut rng = StdRng::seed_from_u64(0x1a7e);
    let root = KeyPair::generate(&mut rng);
    let intermediate = KeyPair::generate(&mut rng);
    let server_static = KeyPair::generate(&mut rng);
    let chain = issue_cert_chain(
        &root,
        &intermediate,
        0x2a,
        0x2b,
        &server_static.public,
        1_000_000_000,
        4_000_000_000,
        &mut rng,
    );

    let mut node = Script::spawn("noise-client.js");
    node.send(&format!("root {}", hex::encode(root.public)));
    let ephemeral = node.tagged("ephemeral");
    let noise_key = node.tagged("noise-key");
    let routing = node.one("routing");
    let hello = node.one("hello");

    // The keys Baileys derived from the fixed private keys match ours.
    assert_eq!(
        KeyPair::from_private(key32(&ephemeral[0])).public[..],
        ephemeral[1]
    );
    assert_eq!(
        KeyPair::from_private(key32(&noise_key[0])).public[..],
        noise_key[1]
    );

    let mut decoder = FrameDecoder::server();
    decoder.push(&hello);
    let client_hello = decoder
        .next_frame()
        .expect("Baileys' intro is valid")
        .expect("the hello frame is complete");
    assert!(decoder.next_frame().expect("valid").is_none());
    // Baileys 6 announces dictionary version 2 and sends its routing info.
    let header = *decoder.header().expect("intro read");
    assert_eq!(header, [b'W', b'A', 6, 2]);
    assert_eq!(decoder.routing_info(), Some(routing.as_slice()));
    let sent_ephemeral = HandshakeMessage::decode(client_hello.as_slice())
        .expect("ClientHello decodes")
        .client_hello
        .and_then(|h| h.ephemeral);
    assert_eq!(sent_ephemeral.as_deref(), Some(ephemeral[1].as_slice()));

    let (server, server_hello) = ServerHandshake::respond_with_header(
        header,
        &client_hello,
        KeyPair::generate(&mut rng),
        &server_static,
        &chain,
    )
    .expect("our responder accepts Baileys' hello");
    let mut out = Vec::new();
    encode_frame(&server_hello, &mut out).expect("fits");
    node.send(&hex::encode(&out));

    let payload = node.one("payload");
    let finish = node.one("finish");
    decoder.push(&finish);
    let client_finish = decoder.next_frame().expect("valid").expect("complete");
    let (client_static, got_payload, transport) = server
        .finish(&client_finish)
        .expect("our responder decrypts Baileys' ClientFinish");
    assert_eq!(client_static[..], noise_key[1]);
    assert_eq!(got_payload, payload);
    let (mut send, mut recv) = transport.split();

    // Client -> server frames, coalesced by Baileys into one message; we feed
    // them back in three uneven pieces.
    let plaintexts: Vec<Vec<u8>> = (0..3).map(|_| node.one("c2s-plain")).collect();
    let c2s = node.one("c2s");
    let mut frames = Vec::new();
    for piece in [&c2s[..5], &c2s[5..70_000], &c2s[70_000..]] {
        decoder.push(piece);
        while let Some(frame) = decoder.next_frame().expect("valid") {
            frames.push(frame);
        }
    }
    assert_eq!(frames.len(), plaintexts.len());
    for (frame, expected) in frames.iter().zip(&plaintexts) {
        assert!(recv.decrypt(frame).expect("Baileys' frame decrypts") == *expected);
    }

    // Server -> client: binary nodes Baileys asked for, encrypted by us,
    // decrypted and decoded by Baileys.
    let nodes: Vec<Vec<u8>> = (0..4).map(|_| node.one("s2c-node")).collect();
    let mut down = Vec::new();
    for n in &nodes {
        let ciphertext = send.encrypt(n).expect("fits");
        encode_frame(&ciphertext, &mut down).expect("fits");
    }
    let mut rest = down.as_slice();
    while !rest.is_empty() {
        let take = rng.gen_range(1..=rest.len().min(1 << 20));
        let (piece, tail) = rest.split_at(take);
        node.send(&hex::encode(piece));
        rest = tail;
    }
    node.send("");
    assert_eq!(node.line(), format!("s2c-ok {}", nodes.len()));

    node.send(&format!("chain {}", hex::encode(&chain)));
    node.send(&format!(
        "server-static {}",
        hex::encode(server_static.public)
    ));
    assert_eq!(
        node.line(),
        "chain-ok 1",
        "libsignal accepts our certificate chain"
    );
    assert_eq!(node.line(), "done ");
}

#[test]
fn xeddsa_and_x25519_agree_with_libsignal_live() {
    let mut rng = StdRng::seed_from_u64(0x51);
    let mut node = Script::spawn("noise-xeddsa.js");
    let mut ask = |request: String| {
        node.send(&request);
        node.line()
    };
    let msg_hex = |m: &[u8]| {
        if m.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(m)
        }
    };
    for round in 0..24 {
        // Raw random private keys, as node's X25519 generator makes them;
        // our own generator clamps.
        let mut private = [0u8; 32];
        rng.fill(&mut private);
        let pair = if round % 2 == 0 {
            KeyPair::from_private(private)
        } else {
            KeyPair::generate(&mut rng)
        };
        let peer = KeyPair::generate(&mut rng);
        let private_hex = hex::encode(pair.private_bytes());
        let len = [0, 1, 33, 64, 500][round % 5];
        let message: Vec<u8> = (0..len).map(|_| rng.gen()).collect();

        assert_eq!(
            ask(format!("public {private_hex}")),
            hex::encode(pair.public)
        );
        assert_eq!(
            ask(format!("dh {private_hex} {}", hex::encode(peer.public))),
            hex::encode(*pair.dh(&peer.public))
        );

        // Ours verified by libsignal; a flipped bit is rejected by both.
        let ours = pair.sign(&message, &mut rng);
        let public_hex = hex::encode(pair.public);
        assert_eq!(
            ask(format!(
                "verify {public_hex} {} {}",
                msg_hex(&message),
                hex::encode(ours)
            )),
            "1"
        );
        let mut bad = ours;
        bad[rng.gen_range(0..64)] ^= 1 << rng.gen_range(0..8);
        assert!(!verify(&pair.public, &message, &bad));
        assert_eq!(
            ask(format!(
                "verify {public_hex} {} {}",
                msg_hex(&message),
                hex::encode(bad)
            )),
            "0"
        );

        // libsignal's verified by ours.
        let theirs = hex::decode(ask(format!("sign {private_hex} {}", msg_hex(&message))))
            .expect("hex signature");
        let theirs: [u8; 64] = theirs.try_into().expect("64-byte signature");
        assert!(verify(&pair.public, &message, &theirs));
        assert!(!verify(&peer.public, &message, &theirs));
    }
}
