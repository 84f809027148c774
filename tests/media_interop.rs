//! Media crypto against an independent implementation: Baileys' own
//! `getMediaKeys`, `encryptedStream`, `downloadContentFromMessage` and media
//! retry functions, driven through tests/interop/media-vectors.js. Files
//! Baileys encrypts decrypt and verify in our code, files we encrypt decrypt
//! in Baileys, for every media type, odd sizes and a multi-megabyte file.
//! Node.js is required; without it these tests fail.

mod node_script;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use wagate::wa::binary::Node;
use wagate::wa::jid::Jid;
use wagate::wa::media::{
    decrypt_retry_receipt, encrypt_retry_notification, parse_retry_receipt, Decryptor, Encryptor,
    Expected, MediaKey, MediaType, RetryResult, RetryTarget,
};

const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Our types with Baileys' names for them.
const TYPES: [(MediaType, &str); 9] = [
    (MediaType::Image, "image"),
    (MediaType::Video, "video"),
    (MediaType::Audio, "audio"),
    (MediaType::VoiceNote, "ptt"),
    (MediaType::Document, "document"),
    (MediaType::Sticker, "sticker"),
    (MediaType::History, "md-msg-hist"),
    (MediaType::AppState, "md-app-state"),
    (MediaType::LinkThumbnail, "thumbnail-link"),
];

const ODD_SIZES: [usize; 6] = [0, 1, 15, 16, 17, 1000];
/// Not a multiple of the block size, nor of the read chunk.
const LARGE: usize = 5 * 1024 * 1024 + 3;
/// Read size when streaming a body through our decryptor: not a multiple
/// of 16, so blocks straddle chunks.
const CHUNK: usize = 64 * 1024 + 5;

struct Baileys {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Baileys {
    fn spawn() -> Self {
        let (child, stdin, lines) = node_script::spawn("media-vectors.js");
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn call(&mut self, request: Value) -> Value {
        writeln!(self.stdin, "{request}").expect("node reads stdin");
        self.stdin.flush().expect("node reads stdin");
        let line = self
            .lines
            .recv_timeout(ANSWER_TIMEOUT)
            .expect("node answers in time");
        let answer: Value = serde_json::from_str(&line).expect("node answers JSON");
        if let Some(error) = answer.get("error") {
            panic!("Baileys failed {request}: {error}");
        }
        answer
    }
}

impl Drop for Baileys {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn b64(value: &Value) -> Vec<u8> {
    STANDARD
        .decode(value.as_str().expect("base64 string"))
        .expect("valid base64")
}

fn hash(value: &Value) -> [u8; 32] {
    b64(value).try_into().expect("32-byte hash")
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    StdRng::seed_from_u64(seed).fill_bytes(&mut out);
    out
}

/// Streams `body` from a file through our decryptor, `CHUNK` bytes a read.
fn decrypt_file(
    path: &Path,
    key: &MediaKey,
    ty: MediaType,
    expected: Expected,
) -> Result<Vec<u8>, wagate::wa::media::MediaError> {
    let mut file = std::fs::File::open(path).expect("body file");
    let mut decryptor = Decryptor::new(&key.keys(ty), expected);
    let mut plain = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).expect("read body");
        if n == 0 {
            break;
        }
        decryptor.update(&buf[..n], &mut plain)?;
    }
    decryptor.finish(&mut plain)?;
    Ok(plain)
}

#[test]
fn keys_match_baileys_for_every_type() {
    let mut baileys = Baileys::spawn();
    let key = MediaKey::from_bytes(random(32, 1).try_into().expect("32 bytes"));
    for (ty, name) in TYPES {
        let answer = baileys.call(json!({
            "op": "keys", "type": name, "mediaKey": STANDARD.encode(key.as_bytes()),
        }));
        let keys = key.keys(ty);
        assert_eq!(b64(&answer["iv"]), keys.iv(), "{name}");
        assert_eq!(b64(&answer["cipherKey"]), keys.cipher_key(), "{name}");
        assert_eq!(b64(&answer["macKey"]), keys.mac_key(), "{name}");
    }
}

#[test]
fn media_encrypted_by_baileys_decrypts_and_verifies_here() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut baileys = Baileys::spawn();
    let mut cases: Vec<(MediaType, &str, usize)> = TYPES
        .iter()
        .flat_map(|&(ty, name)| ODD_SIZES.iter().map(move |&len| (ty, name, len)))
        .collect();
    cases.push((MediaType::Video, "video", LARGE));
    cases.push((MediaType::Document, "document", LARGE));
    for (n, (ty, name, len)) in cases.into_iter().enumerate() {
        let plain = random(len, n as u64);
        let input = dir.path().join(format!("plain-{n}"));
        let output = dir.path().join(format!("body-{n}"));
        std::fs::write(&input, &plain).expect("write plaintext");
        let answer = baileys.call(json!({
            "op": "encrypt", "type": name, "input": input, "output": output,
        }));
        let key = MediaKey::try_from(b64(&answer["mediaKey"]).as_slice()).expect("media key");
        let expected = Expected {
            file_enc_sha256: Some(hash(&answer["fileEncSha256"])),
            file_sha256: Some(hash(&answer["fileSha256"])),
            file_length: answer["fileLength"].as_u64(),
            max_file_length: Some(len as u64),
        };
        assert_eq!(expected.file_length, Some(len as u64));
        let got = decrypt_file(&output, &key, ty, expected)
            .unwrap_or_else(|err| panic!("{name}, {len} bytes: {err}"));
        assert!(got == plain, "{name}, {len} bytes: plaintext differs");

        // And our encryptor, given the same key, writes the same body.
        let body = std::fs::read(&output).expect("body");
        let mut ours = Vec::new();
        let mut encryptor = Encryptor::new(&key.keys(ty));
        for part in plain.chunks(CHUNK) {
            encryptor.update(part, &mut ours);
        }
        let meta = encryptor.finish(&mut ours);
        assert!(ours == body, "{name}, {len} bytes: bodies differ");
        assert_eq!(meta.file_enc_sha256, hash(&answer["fileEncSha256"]));
    }
}

#[test]
fn media_encrypted_here_decrypts_in_baileys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut baileys = Baileys::spawn();
    let mut rng = StdRng::seed_from_u64(7);
    let mut cases: Vec<(MediaType, &str, usize)> = TYPES
        .iter()
        .flat_map(|&(ty, name)| ODD_SIZES.iter().map(move |&len| (ty, name, len)))
        .collect();
    cases.push((MediaType::Image, "image", LARGE));
    cases.push((MediaType::Audio, "audio", LARGE));
    for (n, (ty, name, len)) in cases.into_iter().enumerate() {
        let plain = random(len, 1000 + n as u64);
        let key = MediaKey::generate(&mut rng);
        let mut encryptor = Encryptor::new(&key.keys(ty));
        let mut body = Vec::new();
        for part in plain.chunks(CHUNK) {
            encryptor.update(part, &mut body);
        }
        encryptor.finish(&mut body);
        let input = dir.path().join(format!("body-{n}"));
        let output = dir.path().join(format!("plain-{n}"));
        std::fs::write(&input, &body).expect("write body");
        baileys.call(json!({
            "op": "decrypt", "type": name, "mediaKey": STANDARD.encode(key.as_bytes()),
            "input": input, "output": output,
        }));
        let got = std::fs::read(&output).expect("Baileys wrote the plaintext");
        assert!(
            got == plain,
            "{name}, {len} bytes: Baileys decrypted something else"
        );
    }
}

#[test]
fn media_retry_interoperates_both_ways() {
    let mut baileys = Baileys::spawn();
    let key = MediaKey::from_bytes(random(32, 3).try_into().expect("32 bytes"));
    let id = "3EB0C0FFEE0123456789AB";
    let chat = "15550001111@s.whatsapp.net";
    let answer = baileys.call(json!({
        "op": "retry_request", "id": id, "mediaKey": STANDARD.encode(key.as_bytes()),
        "remoteJid": chat, "fromMe": false, "me": "15550002222:4@s.whatsapp.net",
    }));
    assert_eq!(answer["attrs"]["type"], "server-error");
    // The receipt as Baileys built it, rebuilt as a node.
    let attr = |v: &Value| v.as_str().expect("string attribute").to_owned();
    let receipt = Node::new("receipt")
        .attr("id", attr(&answer["attrs"]["id"]))
        .attr("to", attr(&answer["attrs"]["to"]))
        .attr("type", "server-error")
        .children(vec![
            Node::new("encrypt").children(vec![
                Node::new("enc_p").bytes(b64(&answer["ciphertext"])),
                Node::new("enc_iv").bytes(b64(&answer["iv"])),
            ]),
            Node::new("rmr")
                .attr("jid", attr(&answer["rmr"]["jid"]))
                .attr("from_me", attr(&answer["rmr"]["from_me"])),
        ]);
    let request = parse_retry_receipt(&receipt).expect("our parser reads Baileys' receipt");
    let chat: Jid = chat.parse().expect("jid");
    assert_eq!(
        request.target,
        RetryTarget {
            message_id: id.to_owned(),
            chat: chat.clone(),
            from_me: false,
            participant: None,
        }
    );
    assert_eq!(
        request.to,
        Some("15550002222@s.whatsapp.net".parse().expect("jid"))
    );
    decrypt_retry_receipt(&request, &key).expect("Baileys' request decrypts here");

    for (result, code, path) in [
        (
            RetryResult::Success {
                direct_path: "/v/t62.7118-24/again.enc?ccb=11-4".into(),
            },
            1,
            "/v/t62.7118-24/again.enc?ccb=11-4",
        ),
        (RetryResult::NotFound, 2, ""),
    ] {
        let iv = [5u8; 12];
        let sealed = encrypt_retry_notification(&key, id, &result, &iv);
        let answer = baileys.call(json!({
            "op": "retry_decrypt", "id": id, "mediaKey": STANDARD.encode(key.as_bytes()),
            "ciphertext": STANDARD.encode(&sealed), "iv": STANDARD.encode(iv),
        }));
        assert_eq!(answer["stanzaId"], id);
        assert_eq!(answer["result"], code);
        assert_eq!(answer["directPath"], path);
    }
}
