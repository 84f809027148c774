//! The WhatsApp Noise_XX handshake, both roles. Each role is a type whose
//! methods consume it, so a handshake cannot be finished twice or out of
//! order. Must not import I/O or the clock.
//!
//! ```text
//! client                                   server
//!   -> e                                   (no payload hash, unlike Noise)
//!                                       <- e, ee, s, es, payload = cert chain
//!   -> s, se, payload = ClientPayload
//! ```

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use prost::Message;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::cert::verify_cert_chain;
use super::transport::Transport;
use super::{nonce, NoiseError, MAX_FRAME, NOISE_NAME, TAG_LEN, WA_HEADER};
use crate::proto::wa::handshake_message::{ClientFinish, ClientHello, ServerHello};
use crate::proto::wa::HandshakeMessage;
use crate::wa::crypto::{hkdf_sha256, sha256, KeyPair};

/// Noise's symmetric state: the transcript hash, the chaining key and the
/// current cipher. One counter serves both directions during the handshake,
/// as in every WhatsApp client.
struct SymmetricState {
    h: [u8; 32],
    ck: Zeroizing<[u8; 32]>,
    cipher: Aes256Gcm,
    counter: u32,
}

impl SymmetricState {
    fn new(prologue: &[u8; 4]) -> Self {
        // The name is exactly 32 bytes, so it is the initial hash itself. The
        // initial cipher key is never used before the first MixKey.
        let mut state = Self {
            h: *NOISE_NAME,
            ck: Zeroizing::new(*NOISE_NAME),
            cipher: Aes256Gcm::new(NOISE_NAME.into()),
            counter: 0,
        };
        state.mix_hash(prologue);
        state
    }

    fn mix_hash(&mut self, data: &[u8]) {
        self.h = sha256(&[&self.h, data]);
    }

    fn mix_key(&mut self, input: &[u8]) {
        let mut out = Zeroizing::new([0u8; 64]);
        hkdf_sha256(input, self.ck.as_ref(), &[], out.as_mut());
        self.ck.copy_from_slice(&out[..32]);
        self.cipher = Aes256Gcm::new(out[32..].into());
        self.counter = 0;
    }

    fn mix_dh(&mut self, own: &KeyPair, their_public: &[u8; 32]) -> Result<(), NoiseError> {
        let shared = own.dh(their_public);
        if bool::from(shared.ct_eq(&[0u8; 32])) {
            return Err(NoiseError::WeakKey);
        }
        self.mix_key(shared.as_ref());
        Ok(())
    }

    fn encrypt_and_hash(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        // Handshake messages are far below the frame limit; this guard keeps
        // an oversized caller payload from reaching the AEAD's length limit.
        if plaintext.len() > MAX_FRAME - TAG_LEN {
            return Err(NoiseError::FrameTooLarge {
                len: plaintext.len() + TAG_LEN,
                max: MAX_FRAME,
            });
        }
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce(self.counter).into(),
                Payload {
                    msg: plaintext,
                    aad: &self.h,
                },
            )
            .map_err(|_| NoiseError::FrameTooLarge {
                len: plaintext.len() + TAG_LEN,
                max: MAX_FRAME,
            })?;
        self.counter += 1;
        self.mix_hash(&ciphertext);
        Ok(ciphertext)
    }

    fn decrypt_and_hash(
        &mut self,
        ciphertext: &[u8],
        what: &'static str,
    ) -> Result<Vec<u8>, NoiseError> {
        let plaintext = self
            .cipher
            .decrypt(
                &nonce(self.counter).into(),
                Payload {
                    msg: ciphertext,
                    aad: &self.h,
                },
            )
            .map_err(|_| NoiseError::HandshakeDecrypt(what))?;
        self.counter += 1;
        self.mix_hash(ciphertext);
        Ok(plaintext)
    }

    /// The two transport keys: client→server first, server→client second.
    fn split(self) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        let mut out = Zeroizing::new([0u8; 64]);
        hkdf_sha256(&[], self.ck.as_ref(), &[], out.as_mut());
        let mut first = Zeroizing::new([0u8; 32]);
        let mut second = Zeroizing::new([0u8; 32]);
        first.copy_from_slice(&out[..32]);
        second.copy_from_slice(&out[32..]);
        (first, second)
    }
}

/// The client (initiator) after sending its hello, waiting for the server's.
pub struct ClientHandshake {
    state: SymmetricState,
    ephemeral: KeyPair,
}

impl ClientHandshake {
    /// Starts the handshake; returns the serialized
    /// `HandshakeMessage{client_hello{ephemeral}}` to frame and send.
    pub fn start(ephemeral: KeyPair) -> (Self, Vec<u8>) {
        Self::start_with_header(ephemeral, WA_HEADER)
    }

    /// [`start`](Self::start) for a client that announces another intro
    /// header (it is the prologue, so both sides must use the same one).
    pub fn start_with_header(ephemeral: KeyPair, header: [u8; 4]) -> (Self, Vec<u8>) {
        let mut state = SymmetricState::new(&header);
        state.mix_hash(&ephemeral.public);
        let hello = HandshakeMessage {
            client_hello: Some(ClientHello {
                ephemeral: Some(ephemeral.public.to_vec()),
                r#static: None,
                payload: None,
            }),
            server_hello: None,
            client_finish: None,
        }
        .encode_to_vec();
        (Self { state, ephemeral }, hello)
    }

    /// Reads the serialized ServerHello `HandshakeMessage`, verifies the
    /// certificate chain against `root` at `now_unix`, and returns the
    /// serialized ClientFinish{static, payload} plus the transport.
    pub fn finish(
        self,
        server_hello: &[u8],
        static_key: &KeyPair,
        payload: &[u8],
        root: &[u8; 32],
        now_unix: u64,
    ) -> Result<(Vec<u8>, Transport), NoiseError> {
        let Self {
            mut state,
            ephemeral,
        } = self;
        let hello = HandshakeMessage::decode(server_hello)?
            .server_hello
            .ok_or(NoiseError::Malformed("no server hello"))?;
        let server_ephemeral = key32(
            hello.ephemeral.as_deref(),
            "server ephemeral key missing or not 32 bytes",
        )?;
        let static_ciphertext = hello
            .r#static
            .ok_or(NoiseError::Malformed("server hello without static key"))?;
        let cert_ciphertext = hello
            .payload
            .ok_or(NoiseError::Malformed("server hello without payload"))?;

        state.mix_hash(&server_ephemeral);
        state.mix_dh(&ephemeral, &server_ephemeral)?;
        let server_static = state.decrypt_and_hash(&static_ciphertext, "server static key")?;
        let server_static = key32(Some(&server_static), "server static key is not 32 bytes")?;
        state.mix_dh(&ephemeral, &server_static)?;
        let cert_chain = state.decrypt_and_hash(&cert_ciphertext, "certificate chain")?;
        verify_cert_chain(&cert_chain, root, &server_static, now_unix)?;

        let static_ciphertext = state.encrypt_and_hash(&static_key.public)?;
        state.mix_dh(static_key, &server_ephemeral)?;
        let payload_ciphertext = state.encrypt_and_hash(payload)?;
        let finish = HandshakeMessage {
            client_hello: None,
            server_hello: None,
            client_finish: Some(ClientFinish {
                r#static: Some(static_ciphertext),
                payload: Some(payload_ciphertext),
            }),
        }
        .encode_to_vec();
        let (send, recv) = state.split();
        Ok((finish, Transport::new(&send, &recv)))
    }
}

impl std::fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

/// The server (responder) after sending its hello, waiting for the client's
/// finish.
pub struct ServerHandshake {
    state: SymmetricState,
    ephemeral: KeyPair,
}

impl ServerHandshake {
    /// Reads ClientHello; returns `Self` (awaiting finish) and the serialized
    /// ServerHello to send. Assumes the client sent [`WA_HEADER`].
    pub fn respond(
        client_hello: &[u8],
        ephemeral: KeyPair,
        static_key: &KeyPair,
        cert_chain: &[u8],
    ) -> Result<(Self, Vec<u8>), NoiseError> {
        Self::respond_with_header(WA_HEADER, client_hello, ephemeral, static_key, cert_chain)
    }

    /// [`respond`](Self::respond) for the intro header the client actually
    /// sent ([`FrameDecoder::header`](super::FrameDecoder::header)); Baileys 6
    /// sends dictionary version 2.
    pub fn respond_with_header(
        header: [u8; 4],
        client_hello: &[u8],
        ephemeral: KeyPair,
        static_key: &KeyPair,
        cert_chain: &[u8],
    ) -> Result<(Self, Vec<u8>), NoiseError> {
        let hello = HandshakeMessage::decode(client_hello)?
            .client_hello
            .ok_or(NoiseError::Malformed("no client hello"))?;
        // A static key or payload here would mean a resumed (IK) handshake,
        // which this server does not offer.
        if hello.r#static.is_some() || hello.payload.is_some() {
            return Err(NoiseError::Malformed(
                "client hello carries a static key or payload",
            ));
        }
        let client_ephemeral = key32(
            hello.ephemeral.as_deref(),
            "client ephemeral key missing or not 32 bytes",
        )?;

        let mut state = SymmetricState::new(&header);
        state.mix_hash(&client_ephemeral);
        state.mix_hash(&ephemeral.public);
        state.mix_dh(&ephemeral, &client_ephemeral)?;
        let static_ciphertext = state.encrypt_and_hash(&static_key.public)?;
        state.mix_dh(static_key, &client_ephemeral)?;
        let cert_ciphertext = state.encrypt_and_hash(cert_chain)?;
        let reply = HandshakeMessage {
            client_hello: None,
            server_hello: Some(ServerHello {
                ephemeral: Some(ephemeral.public.to_vec()),
                r#static: Some(static_ciphertext),
                payload: Some(cert_ciphertext),
            }),
            client_finish: None,
        }
        .encode_to_vec();
        Ok((Self { state, ephemeral }, reply))
    }

    /// Reads ClientFinish; returns the client's static public key, the
    /// decrypted ClientPayload bytes, and the transport.
    pub fn finish(
        self,
        client_finish: &[u8],
    ) -> Result<([u8; 32], Vec<u8>, Transport), NoiseError> {
        let Self {
            mut state,
            ephemeral,
        } = self;
        let finish = HandshakeMessage::decode(client_finish)?
            .client_finish
            .ok_or(NoiseError::Malformed("no client finish"))?;
        let static_ciphertext = finish
            .r#static
            .ok_or(NoiseError::Malformed("client finish without static key"))?;
        let payload_ciphertext = finish
            .payload
            .ok_or(NoiseError::Malformed("client finish without payload"))?;

        let client_static = state.decrypt_and_hash(&static_ciphertext, "client static key")?;
        let client_static = key32(Some(&client_static), "client static key is not 32 bytes")?;
        state.mix_dh(&ephemeral, &client_static)?;
        let payload = state.decrypt_and_hash(&payload_ciphertext, "client payload")?;
        let (recv, send) = state.split();
        Ok((client_static, payload, Transport::new(&send, &recv)))
    }
}

impl std::fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("ephemeral", &self.ephemeral)
            .finish_non_exhaustive()
    }
}

fn key32(bytes: Option<&[u8]>, what: &'static str) -> Result<[u8; 32], NoiseError> {
    bytes
        .ok_or(NoiseError::Malformed(what))?
        .try_into()
        .map_err(|_| NoiseError::Malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::noise::{
        client_intro, encode_frame, issue_cert_chain, CertError, CertRole, FrameDecoder,
        WA_ROOT_PUBLIC_KEY,
    };
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const NOW: u64 = 1_750_000_000;

    struct Setup {
        rng: StdRng,
        root: KeyPair,
        server_static: KeyPair,
        client_static: KeyPair,
        chain: Vec<u8>,
    }

    fn setup() -> Setup {
        let mut rng = StdRng::seed_from_u64(42);
        let root = KeyPair::generate(&mut rng);
        let intermediate = KeyPair::generate(&mut rng);
        let server_static = KeyPair::generate(&mut rng);
        let client_static = KeyPair::generate(&mut rng);
        let chain = issue_cert_chain(
            &root,
            &intermediate,
            1,
            2,
            &server_static.public,
            NOW - 1000,
            NOW + 1000,
            &mut rng,
        );
        Setup {
            rng,
            root,
            server_static,
            client_static,
            chain,
        }
    }

    /// Runs the exchange up to the server hello.
    fn hello(s: &mut Setup) -> (ClientHandshake, ServerHandshake, Vec<u8>) {
        let (client, client_hello) = ClientHandshake::start(KeyPair::generate(&mut s.rng));
        let (server, server_hello) = ServerHandshake::respond(
            &client_hello,
            KeyPair::generate(&mut s.rng),
            &s.server_static,
            &s.chain,
        )
        .expect("server accepts a genuine client hello");
        (client, server, server_hello)
    }

    fn complete(s: &mut Setup) -> (Transport, Transport) {
        let (client, server, server_hello) = hello(s);
        let (finish, client_transport) = client
            .finish(
                &server_hello,
                &s.client_static,
                b"client payload",
                &s.root.public,
                NOW,
            )
            .expect("client accepts a genuine server hello");
        let (client_static, payload, server_transport) = server
            .finish(&finish)
            .expect("server accepts a genuine finish");
        assert_eq!(client_static, s.client_static.public);
        assert_eq!(payload, b"client payload");
        (client_transport, server_transport)
    }

    #[test]
    fn handshake_completes_and_frames_flow_both_ways() {
        let mut s = setup();
        let (mut client, mut server) = complete(&mut s);
        for i in 0..5u8 {
            let up = client.encrypt(&[i; 40]).expect("encrypts");
            assert_eq!(server.decrypt(&up).expect("server decrypts"), [i; 40]);
            let down = server.encrypt(&[i; 7]).expect("encrypts");
            assert_eq!(client.decrypt(&down).expect("client decrypts"), [i; 7]);
        }
        // A frame sent by the client is not accepted back by the client.
        let up = client.encrypt(b"own").expect("encrypts");
        assert!(matches!(client.decrypt(&up), Err(NoiseError::Decrypt)));
    }

    #[test]
    fn handshake_messages_have_the_wire_shape() {
        let mut s = setup();
        let ephemeral = KeyPair::generate(&mut s.rng);
        let (_, client_hello) = ClientHandshake::start(ephemeral.clone());
        let decoded = HandshakeMessage::decode(client_hello.as_slice()).expect("decodes");
        let sent = decoded.client_hello.expect("client hello set");
        assert_eq!(sent.ephemeral.as_deref(), Some(&ephemeral.public[..]));
        assert!(sent.r#static.is_none() && sent.payload.is_none());

        let (client, _server, server_hello) = hello(&mut s);
        let reply = HandshakeMessage::decode(server_hello.as_slice())
            .expect("decodes")
            .server_hello
            .expect("server hello set");
        assert_eq!(reply.ephemeral.map(|e| e.len()), Some(32));
        assert_eq!(reply.r#static.map(|e| e.len()), Some(32 + TAG_LEN));
        assert_eq!(
            reply.payload.map(|p| p.len()),
            Some(s.chain.len() + TAG_LEN)
        );
        let (finish, _) = client
            .finish(&server_hello, &s.client_static, b"xyz", &s.root.public, NOW)
            .expect("finishes");
        let finish = HandshakeMessage::decode(finish.as_slice())
            .expect("decodes")
            .client_finish
            .expect("client finish set");
        assert_eq!(finish.r#static.map(|e| e.len()), Some(32 + TAG_LEN));
        assert_eq!(finish.payload.map(|p| p.len()), Some(3 + TAG_LEN));
    }

    #[test]
    fn wrong_root_key_rejects_the_chain() {
        let mut s = setup();
        let (client, _, server_hello) = hello(&mut s);
        let result = client.finish(
            &server_hello,
            &s.client_static,
            b"p",
            &WA_ROOT_PUBLIC_KEY,
            NOW,
        );
        assert!(matches!(
            result,
            Err(NoiseError::Certificate(CertError::BadSignature(
                CertRole::Intermediate
            )))
        ));
    }

    #[test]
    fn expired_and_early_certificates_are_rejected() {
        let mut s = setup();
        for (now, expired) in [(NOW + 1001, true), (NOW - 1001, false)] {
            let (client, _, server_hello) = hello(&mut s);
            let result = client.finish(&server_hello, &s.client_static, b"p", &s.root.public, now);
            match result {
                Err(NoiseError::Certificate(CertError::Expired { .. })) => assert!(expired),
                Err(NoiseError::Certificate(CertError::NotYetValid { .. })) => assert!(!expired),
                other => panic!("unexpected result {other:?}"),
            }
        }
    }

    #[test]
    fn chain_for_another_server_key_is_rejected() {
        let mut s = setup();
        s.server_static = KeyPair::generate(&mut s.rng);
        let (client, _, server_hello) = hello(&mut s);
        let result = client.finish(&server_hello, &s.client_static, b"p", &s.root.public, NOW);
        assert!(matches!(
            result,
            Err(NoiseError::Certificate(CertError::KeyMismatch))
        ));
    }

    #[test]
    fn tampered_server_hello_is_rejected() {
        let mut s = setup();
        let (_, _, genuine) = hello(&mut s);
        let reply = HandshakeMessage::decode(genuine.as_slice())
            .expect("decodes")
            .server_hello
            .expect("server hello set");
        type Edit = fn(&mut ServerHello);
        let edits: [(Edit, &str); 6] = [
            (|h| flip(&mut h.ephemeral), "ephemeral"),
            (|h| flip(&mut h.r#static), "static"),
            (|h| flip(&mut h.payload), "payload"),
            (|h| h.payload = None, "no payload"),
            (|h| h.ephemeral = Some(vec![1; 31]), "short ephemeral"),
            (|h| h.ephemeral = Some(vec![0; 32]), "zero ephemeral"),
        ];
        for (edit, what) in edits {
            let mut reply = reply.clone();
            edit(&mut reply);
            let message = HandshakeMessage {
                server_hello: Some(reply),
                ..Default::default()
            }
            .encode_to_vec();
            let (client, _, _) = hello(&mut s);
            let result = client.finish(&message, &s.client_static, b"p", &s.root.public, NOW);
            let ok = match what {
                "no payload" | "short ephemeral" => matches!(result, Err(NoiseError::Malformed(_))),
                "zero ephemeral" => matches!(result, Err(NoiseError::WeakKey)),
                _ => matches!(result, Err(NoiseError::HandshakeDecrypt(_))),
            };
            assert!(ok, "{what}: {result:?}");
        }
        let (client, _, _) = hello(&mut s);
        assert!(matches!(
            client.finish(&[0xFF, 0xFF], &s.client_static, b"p", &s.root.public, NOW),
            Err(NoiseError::Decode(_))
        ));
    }

    fn flip(field: &mut Option<Vec<u8>>) {
        if let Some(byte) = field.as_mut().and_then(|f| f.last_mut()) {
            *byte ^= 0x80;
        }
    }

    #[test]
    fn tampered_client_finish_is_rejected() {
        let mut s = setup();
        let (client, server, server_hello) = hello(&mut s);
        let (finish, _) = client
            .finish(&server_hello, &s.client_static, b"p", &s.root.public, NOW)
            .expect("finishes");
        let mut tampered = finish.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            server.finish(&tampered),
            Err(NoiseError::HandshakeDecrypt("client payload"))
        ));
    }

    #[test]
    fn client_hello_must_be_plain_xx() {
        let mut s = setup();
        let with_static = HandshakeMessage {
            client_hello: Some(ClientHello {
                ephemeral: Some(vec![9; 32]),
                r#static: Some(vec![1; 48]),
                payload: None,
            }),
            ..Default::default()
        }
        .encode_to_vec();
        let server_ephemeral = KeyPair::generate(&mut s.rng);
        for hello in [with_static.as_slice(), &[], &[0x12, 0x00]] {
            let result = ServerHandshake::respond(
                hello,
                server_ephemeral.clone(),
                &s.server_static,
                &s.chain,
            );
            assert!(
                matches!(result, Err(NoiseError::Malformed(_))),
                "{result:?}"
            );
        }
    }

    #[test]
    fn prologue_must_match() {
        let mut s = setup();
        // Baileys 6 announces dictionary version 2; the server echoes it.
        let header = [b'W', b'A', 6, 2];
        let (client, client_hello) =
            ClientHandshake::start_with_header(KeyPair::generate(&mut s.rng), header);
        let (server, server_hello) = ServerHandshake::respond_with_header(
            header,
            &client_hello,
            KeyPair::generate(&mut s.rng),
            &s.server_static,
            &s.chain,
        )
        .expect("responds");
        let (finish, _) = client
            .finish(&server_hello, &s.client_static, b"p", &s.root.public, NOW)
            .expect("same prologue on both sides");
        assert!(server.finish(&finish).is_ok());

        let (client, client_hello) =
            ClientHandshake::start_with_header(KeyPair::generate(&mut s.rng), header);
        let (_, server_hello) = ServerHandshake::respond(
            &client_hello,
            KeyPair::generate(&mut s.rng),
            &s.server_static,
            &s.chain,
        )
        .expect("responds");
        assert!(matches!(
            client.finish(&server_hello, &s.client_static, b"p", &s.root.public, NOW),
            Err(NoiseError::HandshakeDecrypt("server static key"))
        ));
    }

    /// The largest frame (16 MiB − 1 bytes of ciphertext) between small
    /// ones, framed after the intro, cut into random chunks, reassembled and
    /// decrypted; then the same bytes coalesced into one push. (AES-GCM is
    /// slow in unoptimised builds, so the big frame is encrypted only once.)
    #[test]
    fn max_size_frame_survives_chunking_and_coalescing() {
        let mut s = setup();
        let (mut client_t, mut server_t) = complete(&mut s);

        let mut big = vec![0u8; MAX_FRAME - TAG_LEN];
        let mut pattern = s.rng.gen::<u64>();
        for chunk in big.chunks_mut(8) {
            pattern = pattern.rotate_left(7) ^ 0x9E37_79B9_7F4A_7C15;
            chunk.copy_from_slice(&pattern.to_le_bytes()[..chunk.len()]);
        }
        let plaintexts: Vec<Vec<u8>> = vec![b"before".to_vec(), big, Vec::new(), b"after".to_vec()];
        let mut wire = client_intro(Some(b"edge"));
        for p in &plaintexts {
            let ciphertext = client_t.encrypt(p).expect("fits in a frame");
            encode_frame(&ciphertext, &mut wire).expect("at most MAX_FRAME");
        }
        assert_eq!(plaintexts[1].len() + TAG_LEN, MAX_FRAME);
        let intro_len = 4 + 3 + b"edge".len() + WA_HEADER.len();
        let small = [6, 0, 5].map(|len| 3 + len + TAG_LEN).iter().sum::<usize>();
        assert_eq!(wire.len(), intro_len + small + 3 + MAX_FRAME);

        let mut decoder = FrameDecoder::server();
        let mut frames = Vec::new();
        let mut rest = wire.as_slice();
        let mut pushes = 0;
        while !rest.is_empty() {
            // Mostly small pieces with the odd large one, as websockets deliver.
            let limit = if s.rng.gen_ratio(1, 8) {
                4_000_000
            } else {
                70_000
            };
            let take = s.rng.gen_range(1..=rest.len().min(limit));
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            decoder.push(chunk);
            pushes += 1;
            while let Some(frame) = decoder.next_frame().expect("valid stream") {
                frames.push(frame);
            }
        }
        assert!(pushes > 10);
        assert_eq!(decoder.routing_info(), Some(&b"edge"[..]));
        assert_eq!(decoder.header(), Some(&WA_HEADER));
        assert_eq!(frames.len(), plaintexts.len());
        assert_eq!(frames[1].len(), MAX_FRAME);
        for (frame, expected) in frames.iter().zip(&plaintexts) {
            let plaintext = server_t.decrypt(frame).expect("decrypts");
            assert!(plaintext == *expected);
        }

        let mut decoder = FrameDecoder::server();
        decoder.push(&wire);
        let mut coalesced = Vec::new();
        while let Some(frame) = decoder.next_frame().expect("valid stream") {
            coalesced.push(frame);
        }
        assert!(coalesced == frames);

        // The reply direction, two frames coalesced into one push.
        let mut down = Vec::new();
        for p in [&b"reply one"[..], b"reply two"] {
            let ciphertext = server_t.encrypt(p).expect("fits");
            encode_frame(&ciphertext, &mut down).expect("fits");
        }
        let mut decoder = FrameDecoder::new();
        decoder.push(&down);
        for expected in [&b"reply one"[..], b"reply two"] {
            let frame = decoder.next_frame().expect("valid").expect("complete");
            assert_eq!(client_t.decrypt(&frame).expect("decrypts"), expected);
        }
        assert!(decoder.next_frame().expect("valid").is_none());
    }
}
