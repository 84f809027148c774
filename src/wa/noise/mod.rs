//! WhatsApp's Noise_XX handshake (client and server side), the transport
//! frame cipher, the 3-byte length framing with its connection intro, and the
//! server certificate chain. Sans-IO: bytes, keys and the current time come in
//! as arguments; must not import tokio, sockets, the clock, the store or `sim`.
//!
//! WhatsApp's XX differs from the Noise specification in one place: the empty
//! payload of the first message is not hashed. That, and 16 MiB frames, is why
//! this is written here rather than taken from a generic Noise crate.

mod cert;
mod framing;
pub mod fuzzing;
mod handshake;
mod transport;

pub use cert::{issue_cert_chain, verify_cert_chain, CertError, CertRole};
pub use framing::{client_intro, encode_frame, FrameDecoder};
pub use handshake::{ClientHandshake, ServerHandshake};
pub use transport::{RecvCipher, SendCipher, Transport};

/// Connection intro sent before the first frame: "WA", magic 6, dictionary
/// version 3. Also the Noise prologue.
pub const WA_HEADER: [u8; 4] = [b'W', b'A', 0x06, 0x03];

/// Dictionary versions a server accepts in the intro. Baileys 6 announces 2,
/// whatsmeow and this crate 3; the intro is the prologue either way, so the
/// server must echo whichever the client sent.
pub const ACCEPTED_DICT_VERSIONS: [u8; 2] = [0x02, 0x03];

/// The 32-byte protocol name, used directly as the initial handshake hash.
pub const NOISE_NAME: &[u8; 32] = b"Noise_XX_25519_AESGCM_SHA256\0\0\0\0";

/// Largest payload a frame can carry (its length field is 3 bytes).
pub const MAX_FRAME: usize = 0xFF_FFFF;

/// WhatsApp's root certificate key, which signs the intermediate certificate.
pub const WA_ROOT_PUBLIC_KEY: [u8; 32] = [
    0x14, 0x23, 0x75, 0x57, 0x4d, 0x0a, 0x58, 0x71, 0x66, 0xaa, 0xe7, 0x1e, 0xbe, 0x51, 0x64, 0x37,
    0xc4, 0xa2, 0x8b, 0x73, 0xe3, 0x69, 0x5c, 0x6c, 0xe1, 0xf7, 0xf9, 0x54, 0x5d, 0xa8, 0xee, 0x6b,
];

/// AES-GCM tag length: every ciphertext is this much longer than its plaintext.
const TAG_LEN: usize = 16;

/// Everything that can go wrong in the handshake, the frame cipher or framing.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    /// A handshake message decoded but lacks a part or has a part of the wrong
    /// size.
    #[error("malformed handshake message: {0}")]
    Malformed(&'static str),
    /// A handshake message is not valid protobuf.
    #[error("handshake message does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A handshake ciphertext failed authentication: wrong keys, a tampered
    /// message or a prologue mismatch.
    #[error("handshake decryption failed: {0}")]
    HandshakeDecrypt(&'static str),
    /// A transport frame failed authentication.
    #[error("frame decryption failed")]
    Decrypt,
    /// The server's certificate chain was rejected.
    #[error("certificate chain rejected: {0}")]
    Certificate(#[from] CertError),
    /// The peer's public key yields an all-zero shared secret (a low-order
    /// point), which would make the session keys predictable.
    #[error("peer public key is a low-order point")]
    WeakKey,
    /// 2^32 frames were sent or received with one key; the nonce would repeat.
    #[error("nonce counter exhausted")]
    CounterExhausted,
    /// A frame (or the routing info in the intro) is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Length that was asked for or announced.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The connection did not start with a valid intro.
    #[error("invalid connection intro")]
    BadIntro,
}

/// The 12-byte AES-GCM nonce for `counter`: 8 zero bytes, then the counter as
/// a big-endian u32 (equal to Noise's 4 zero bytes + u64 for these values).
fn nonce(counter: u32) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[8..].copy_from_slice(&counter.to_be_bytes());
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_is_eight_zero_bytes_then_big_endian_counter() {
        assert_eq!(nonce(0), [0; 12]);
        assert_eq!(nonce(0x0102_0304), [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]);
        assert_eq!(nonce(u32::MAX)[8..], [0xFF; 4]);
    }

    #[test]
    fn constants_have_the_documented_bytes() {
        assert_eq!(&WA_HEADER, b"WA\x06\x03");
        assert_eq!(NOISE_NAME.len(), 32);
        assert_eq!(
            hex::encode(WA_ROOT_PUBLIC_KEY),
            "142375574d0a587166aae71ebe516437c4a28b73e3695c6ce1f7f9545da8ee6b"
        );
        assert_eq!(MAX_FRAME, (1 << 24) - 1);
    }
}
