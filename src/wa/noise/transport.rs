//! The frame cipher after the handshake: AES-256-GCM with empty associated
//! data and a per-direction counter nonce. Must not import I/O.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::Aes256Gcm;

use super::{nonce, NoiseError, MAX_FRAME, TAG_LEN};

/// Both directions of an established session. Split it to hand the halves to
/// a reader task and a writer task.
#[derive(Debug)]
pub struct Transport {
    send: SendCipher,
    recv: RecvCipher,
}

impl Transport {
    pub(super) fn new(send_key: &[u8; 32], recv_key: &[u8; 32]) -> Self {
        Self {
            send: SendCipher(Direction::new(send_key)),
            recv: RecvCipher(Direction::new(recv_key)),
        }
    }

    /// Encrypts one outgoing frame payload. Fails without using up a nonce if
    /// the ciphertext would not fit in a frame.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        self.send.encrypt(plaintext)
    }

    /// Decrypts one incoming frame payload.
    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        self.recv.decrypt(ciphertext)
    }

    /// Separates the two directions.
    pub fn split(self) -> (SendCipher, RecvCipher) {
        (self.send, self.recv)
    }
}

/// The outgoing half of a [`Transport`].
#[derive(Debug)]
pub struct SendCipher(Direction);

impl SendCipher {
    /// See [`Transport::encrypt`].
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        if plaintext.len() > MAX_FRAME - TAG_LEN {
            return Err(NoiseError::FrameTooLarge {
                len: plaintext.len() + TAG_LEN,
                max: MAX_FRAME,
            });
        }
        let counter = self.0.counter()?;
        let ciphertext = self
            .0
            .cipher
            .encrypt(&nonce(counter).into(), plaintext)
            .map_err(|_| NoiseError::FrameTooLarge {
                len: plaintext.len() + TAG_LEN,
                max: MAX_FRAME,
            })?;
        self.0.next += 1;
        Ok(ciphertext)
    }
}

/// The incoming half of a [`Transport`].
#[derive(Debug)]
pub struct RecvCipher(Direction);

impl RecvCipher {
    /// See [`Transport::decrypt`]. A frame that fails authentication does not
    /// advance the counter; the session should be dropped anyway.
    pub fn decrypt(&mut self, ciphertext: &[u8]) -> Result<Vec<u8>, NoiseError> {
        let counter = self.0.counter()?;
        let plaintext = self
            .0
            .cipher
            .decrypt(&nonce(counter).into(), ciphertext)
            .map_err(|_| NoiseError::Decrypt)?;
        self.0.next += 1;
        Ok(plaintext)
    }
}

/// One direction's key and the counter of the next frame. The counter is
/// wider than the nonce field so that "all 2^32 nonces used" is representable.
struct Direction {
    cipher: Aes256Gcm,
    next: u64,
}

impl Direction {
    fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(key.into()),
            next: 0,
        }
    }

    fn counter(&self) -> Result<u32, NoiseError> {
        u32::try_from(self.next).map_err(|_| NoiseError::CounterExhausted)
    }
}

impl std::fmt::Debug for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direction")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::Payload;

    const KEY_A: [u8; 32] = [0xA1; 32];
    const KEY_B: [u8; 32] = [0xB2; 32];

    fn pair() -> (Transport, Transport) {
        (
            Transport::new(&KEY_A, &KEY_B),
            Transport::new(&KEY_B, &KEY_A),
        )
    }

    #[test]
    fn nonce_layout_is_zero_prefix_and_big_endian_counter() {
        let (mut a, _) = pair();
        let reference = Aes256Gcm::new(&KEY_A.into());
        for counter in 0u32..3 {
            let mut iv = [0u8; 12];
            iv[8..].copy_from_slice(&counter.to_be_bytes());
            let expected = reference
                .encrypt(
                    &iv.into(),
                    Payload {
                        msg: b"frame",
                        aad: &[],
                    },
                )
                .expect("small plaintext encrypts");
            assert_eq!(a.encrypt(b"frame").expect("encrypts"), expected);
        }
        // Counter 0x01020304 goes to bytes 8..12 most significant first.
        a.send.0.next = 0x0102_0304;
        let expected = reference
            .encrypt(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4].into(), &b"x"[..])
            .expect("small plaintext encrypts");
        assert_eq!(a.encrypt(b"x").expect("encrypts"), expected);
    }

    #[test]
    fn directions_are_independent_and_ordered() {
        let (mut a, mut b) = pair();
        let one = a.encrypt(b"one").expect("encrypts");
        let two = a.encrypt(b"two").expect("encrypts");
        let back = b.encrypt(b"back").expect("encrypts");
        assert_eq!(a.decrypt(&back).expect("decrypts"), b"back");
        // Out of order fails: the receiver expects counter 0.
        assert!(matches!(b.decrypt(&two), Err(NoiseError::Decrypt)));
        assert_eq!(b.decrypt(&one).expect("decrypts"), b"one");
        assert_eq!(b.decrypt(&two).expect("decrypts"), b"two");
        // Identical plaintexts never give identical ciphertexts.
        assert_ne!(a.encrypt(b"same").ok(), a.encrypt(b"same").ok());
    }

    #[test]
    fn tampered_and_short_ciphertexts_fail() {
        let (mut a, mut b) = pair();
        let mut frame = a.encrypt(b"payload").expect("encrypts");
        frame[0] ^= 1;
        assert!(matches!(b.decrypt(&frame), Err(NoiseError::Decrypt)));
        assert!(matches!(b.decrypt(&[0; 15]), Err(NoiseError::Decrypt)));
        assert!(matches!(b.decrypt(&[]), Err(NoiseError::Decrypt)));
    }

    #[test]
    fn counter_exhaustion_is_an_error() {
        let (mut a, mut b) = pair();
        a.send.0.next = u64::from(u32::MAX);
        b.recv.0.next = u64::from(u32::MAX);
        let last = a.encrypt(b"last").expect("nonce 2^32-1 is still usable");
        assert!(matches!(
            a.encrypt(b"more"),
            Err(NoiseError::CounterExhausted)
        ));
        assert_eq!(b.decrypt(&last).expect("decrypts"), b"last");
        assert!(matches!(
            b.decrypt(&last),
            Err(NoiseError::CounterExhausted)
        ));
    }

    #[test]
    fn oversized_plaintext_is_refused_without_using_a_nonce() {
        let (mut a, mut b) = pair();
        let big = vec![0u8; MAX_FRAME - TAG_LEN + 1];
        assert!(matches!(
            a.encrypt(&big),
            Err(NoiseError::FrameTooLarge { len, max: MAX_FRAME }) if len == MAX_FRAME + 1
        ));
        let next = a.encrypt(b"after").expect("encrypts");
        assert_eq!(
            b.decrypt(&next).expect("counter 0 still expected"),
            b"after"
        );
    }

    #[test]
    fn split_halves_keep_counters() {
        let (mut a, b) = pair();
        let first = a.encrypt(b"first").expect("encrypts");
        let (mut send, _) = a.split();
        let (_, mut recv) = b.split();
        let second = send.encrypt(b"second").expect("encrypts");
        assert_eq!(recv.decrypt(&first).expect("decrypts"), b"first");
        assert_eq!(recv.decrypt(&second).expect("decrypts"), b"second");
        assert!(!format!("{send:?}").contains("a1a1"));
    }
}
