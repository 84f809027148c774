//! Fuzz entry points for the handshake parsers, the certificate verifier and
//! the frame decoder: arbitrary bytes in, no panic allowed, results ignored.
//! Called by the property tests below and by cargo-fuzz targets. Must not
//! import I/O.

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{issue_cert_chain, verify_cert_chain, ClientHandshake, FrameDecoder, ServerHandshake};
use crate::wa::crypto::KeyPair;

/// Fixed keys so a crash reproduces from the input bytes alone.
struct Keys {
    client_ephemeral: KeyPair,
    client_static: KeyPair,
    server_ephemeral: KeyPair,
    server_static: KeyPair,
    root: KeyPair,
}

fn keys() -> Keys {
    let key = |byte: u8| KeyPair::from_private([byte; 32]);
    Keys {
        client_ephemeral: key(0x01),
        client_static: key(0x02),
        server_ephemeral: key(0x03),
        server_static: key(0x04),
        root: key(0x05),
    }
}

/// Feeds `data` to every handshake entry point that parses peer bytes: as a
/// ClientHello, as a ServerHello, as a ClientFinish after a genuine exchange,
/// and as a certificate chain.
pub fn fuzz_handshake(data: &[u8]) {
    let keys = keys();
    let now = 0x6500_0000;
    let _ = ServerHandshake::respond(
        data,
        keys.server_ephemeral.clone(),
        &keys.server_static,
        data,
    );
    let (client, _hello) = ClientHandshake::start(keys.client_ephemeral.clone());
    let _ = client.finish(
        data,
        &keys.client_static,
        b"payload",
        &keys.root.public,
        now,
    );

    let (_client, hello) = ClientHandshake::start(keys.client_ephemeral.clone());
    if let Ok((server, _reply)) = ServerHandshake::respond(
        &hello,
        keys.server_ephemeral.clone(),
        &keys.server_static,
        b"",
    ) {
        let _ = server.finish(data);
    }
    let _ = verify_cert_chain(data, &keys.root.public, &keys.server_static.public, now);
}

/// Pushes `data` into client- and server-side decoders in chunks whose sizes
/// come from the data itself, draining frames after every push.
pub fn fuzz_frame_decoder(data: &[u8]) {
    for mut decoder in [FrameDecoder::new(), FrameDecoder::server()] {
        let mut rest = data;
        while let Some((&size, tail)) = rest.split_first() {
            let cut = usize::from(size).min(tail.len());
            let (chunk, tail) = tail.split_at(cut);
            rest = tail;
            decoder.push(chunk);
            while let Ok(Some(_)) = decoder.next_frame() {}
        }
        let _ = decoder.header();
        let _ = decoder.routing_info();
    }
}

/// A valid server hello for the fixed keys, so structured mutations start
/// from something that gets past the parser.
pub fn sample_server_hello() -> Vec<u8> {
    let keys = keys();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let chain = issue_cert_chain(
        &keys.root,
        &KeyPair::from_private([0x06; 32]),
        1,
        2,
        &keys.server_static.public,
        0,
        u64::MAX,
        &mut rng,
    );
    let (_client, hello) = ClientHandshake::start(keys.client_ephemeral.clone());
    ServerHandshake::respond(&hello, keys.server_ephemeral, &keys.server_static, &chain)
        .map(|(_, reply)| reply)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn handshake_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            fuzz_handshake(&data);
        }

        #[test]
        fn frame_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_frame_decoder(&data);
        }

        #[test]
        fn frame_decoder_never_panics_on_plausible_intros(
            routed in any::<bool>(),
            version in any::<u8>(),
            tail in proptest::collection::vec(any::<u8>(), 0..1024),
        ) {
            let mut data = vec![0x07];
            if routed {
                data.extend_from_slice(b"ED\x00\x01\x00\x00\x02rt");
            }
            data.extend_from_slice(&[b'W', b'A', 6, version]);
            data.extend_from_slice(&tail);
            fuzz_frame_decoder(&data);
        }

        #[test]
        fn every_single_byte_change_to_a_server_hello_is_rejected(
            index in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut hello = sample_server_hello();
            let at = index.index(hello.len());
            hello[at] ^= flip;
            let keys = keys();
            let (client, _) = ClientHandshake::start(keys.client_ephemeral.clone());
            let result = client.finish(&hello, &keys.client_static, b"p", &keys.root.public, 1);
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn sample_server_hello_is_accepted_unmodified() {
        let keys = keys();
        let (client, _) = ClientHandshake::start(keys.client_ephemeral.clone());
        let hello = sample_server_hello();
        assert!(client
            .finish(&hello, &keys.client_static, b"p", &keys.root.public, 1)
            .is_ok());
    }
}
