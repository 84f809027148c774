//! The key derivations of the double ratchet and of sender keys, and the
//! AES-256-CBC message cipher they feed. Pure computation; must not import
//! I/O.

use aes::Aes256;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use curve25519_dalek::montgomery::MontgomeryPoint;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::SignalError;
use crate::wa::crypto::{hkdf_sha256, hmac_sha256, KeyPair};

const INFO_X3DH: &[u8] = b"WhisperText";
const INFO_RATCHET: &[u8] = b"WhisperRatchet";
const INFO_MESSAGE_KEYS: &[u8] = b"WhisperMessageKeys";
const INFO_GROUP: &[u8] = b"WhisperGroup";

/// HMAC input that derives a message key seed from a chain key.
const MESSAGE_KEY_SEED: [u8; 1] = [0x01];
/// HMAC input that derives the next chain key.
const CHAIN_KEY_SEED: [u8; 1] = [0x02];

/// A symmetric chain position: the key that derives message `index` and all
/// later ones. Used by session chains and sender key chains alike.
#[derive(Clone)]
pub(super) struct ChainKey {
    pub(super) key: Zeroizing<[u8; 32]>,
    pub(super) index: u32,
}

impl ChainKey {
    pub(super) fn new(key: [u8; 32], index: u32) -> Self {
        Self {
            key: Zeroizing::new(key),
            index,
        }
    }

    /// The seed of the message key for `self.index`.
    pub(super) fn message_key_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(hmac_sha256(self.key.as_ref(), &[&MESSAGE_KEY_SEED]))
    }

    /// The chain key for `index + 1`, or `None` once the u32 counter is used
    /// up.
    pub(super) fn next(&self) -> Option<Self> {
        Some(Self {
            key: Zeroizing::new(hmac_sha256(self.key.as_ref(), &[&CHAIN_KEY_SEED])),
            index: self.index.checked_add(1)?,
        })
    }
}

/// Keys for one pairwise message, from HKDF(seed, "WhisperMessageKeys").
pub(super) struct MessageKeys {
    pub(super) cipher_key: Zeroizing<[u8; 32]>,
    pub(super) mac_key: Zeroizing<[u8; 32]>,
    pub(super) iv: [u8; 16],
}

impl MessageKeys {
    pub(super) fn derive(seed: &[u8; 32]) -> Self {
        let mut okm = Zeroizing::new([0u8; 80]);
        // An empty salt is RFC 5869's 32 zero bytes, which libsignal passes.
        hkdf_sha256(seed, &[], INFO_MESSAGE_KEYS, okm.as_mut());
        Self {
            cipher_key: split32(&okm[..32]),
            mac_key: split32(&okm[32..64]),
            iv: array16(&okm[64..80]),
        }
    }
}

/// Keys for one sender key message, from HKDF(seed, "WhisperGroup"): the IV
/// comes first, then the cipher key.
pub(super) struct GroupMessageKeys {
    pub(super) iv: [u8; 16],
    pub(super) cipher_key: Zeroizing<[u8; 32]>,
}

impl GroupMessageKeys {
    pub(super) fn derive(seed: &[u8; 32]) -> Self {
        let mut okm = Zeroizing::new([0u8; 48]);
        hkdf_sha256(seed, &[], INFO_GROUP, okm.as_mut());
        Self {
            iv: array16(&okm[..16]),
            cipher_key: split32(&okm[16..48]),
        }
    }
}

/// Root key and first chain key from the X3DH shared secret (the 0xFF×32
/// prefix is part of `secret`).
pub(super) fn derive_initial(secret: &[u8]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf_sha256(secret, &[], INFO_X3DH, okm.as_mut());
    (split32(&okm[..32]), split32(&okm[32..]))
}

/// Our ratchet key pair with both halves stored, so that loading a session
/// costs no scalar multiplication (a [`KeyPair`] derives its public half).
/// Every session load pays this, so it matters more than the key's few uses.
#[derive(Clone)]
pub(super) struct RatchetKey {
    pub(super) public: [u8; 32],
    pub(super) private: Zeroizing<[u8; 32]>,
}

impl RatchetKey {
    pub(super) fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self::from(&KeyPair::generate(rng))
    }

    /// X25519 with `theirs`, refusing low-order points like [`agree`].
    fn agree(&self, theirs: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, SignalError> {
        let shared = Zeroizing::new(
            MontgomeryPoint(*theirs)
                .mul_clamped(*self.private)
                .to_bytes(),
        );
        if shared.iter().all(|&b| b == 0) {
            return Err(SignalError::WeakKey);
        }
        Ok(shared)
    }
}

impl From<&KeyPair> for RatchetKey {
    fn from(pair: &KeyPair) -> Self {
        Self {
            public: pair.public,
            private: Zeroizing::new(*pair.private_bytes()),
        }
    }
}

/// One DH ratchet step: the agreement of `ours` with `theirs`, salted with
/// the current root key, gives the next root key and a chain key.
pub(super) fn root_step(
    root: &[u8; 32],
    ours: &RatchetKey,
    theirs: &[u8; 32],
) -> Result<(Zeroizing<[u8; 32]>, ChainKey), SignalError> {
    let shared = ours.agree(theirs)?;
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf_sha256(shared.as_ref(), root, INFO_RATCHET, okm.as_mut());
    let chain = ChainKey {
        key: split32(&okm[32..]),
        index: 0,
    };
    Ok((split32(&okm[..32]), chain))
}

/// X25519 with a low-order point check: an all-zero result would make every
/// derived key predictable.
pub(super) fn agree(ours: &KeyPair, theirs: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, SignalError> {
    let shared = ours.dh(theirs);
    if shared.iter().all(|&b| b == 0) {
        return Err(SignalError::WeakKey);
    }
    Ok(shared)
}

pub(super) fn aes_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    cbc::Encryptor::<Aes256>::new(key.into(), iv.into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext)
}

pub(super) fn aes_cbc_decrypt(
    key: &[u8; 32],
    iv: &[u8; 16],
    ciphertext: &[u8],
) -> Result<Vec<u8>, SignalError> {
    if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
        return Err(SignalError::BadCiphertext);
    }
    cbc::Decryptor::<Aes256>::new(key.into(), iv.into())
        .decrypt_padded_vec_mut::<Pkcs7>(ciphertext)
        .map_err(|_| SignalError::BadCiphertext)
}

fn split32(bytes: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(bytes);
    out
}

fn array16(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_step_is_hmac_with_one_and_two() {
        let chain = ChainKey::new([0x42; 32], 5);
        assert_eq!(*chain.message_key_seed(), hmac_sha256(&[0x42; 32], &[&[1]]));
        let next = chain.next().expect("index below u32::MAX");
        assert_eq!(*next.key, hmac_sha256(&[0x42; 32], &[&[2]]));
        assert_eq!(next.index, 6);
        assert!(ChainKey::new([0; 32], u32::MAX).next().is_none());
    }

    #[test]
    fn message_keys_split_80_bytes_of_hkdf() {
        let seed = [7u8; 32];
        let keys = MessageKeys::derive(&seed);
        let mut okm = [0u8; 80];
        // Explicit 32-zero-byte salt must equal the empty salt.
        hkdf_sha256(&seed, &[0u8; 32], b"WhisperMessageKeys", &mut okm);
        assert_eq!(keys.cipher_key[..], okm[..32]);
        assert_eq!(keys.mac_key[..], okm[32..64]);
        assert_eq!(keys.iv[..], okm[64..]);
    }

    #[test]
    fn group_keys_put_iv_first() {
        let seed = [9u8; 32];
        let keys = GroupMessageKeys::derive(&seed);
        let mut okm = [0u8; 48];
        hkdf_sha256(&seed, &[0u8; 32], b"WhisperGroup", &mut okm);
        assert_eq!(keys.iv[..], okm[..16]);
        assert_eq!(keys.cipher_key[..], okm[16..]);
    }

    #[test]
    fn cbc_round_trips_and_rejects_bad_lengths_and_padding() {
        let key = [1u8; 32];
        let iv = [2u8; 16];
        for len in [0usize, 1, 15, 16, 17, 100] {
            let plaintext = vec![0x5A; len];
            let ciphertext = aes_cbc_encrypt(&key, &iv, &plaintext);
            assert_eq!(ciphertext.len(), (len / 16 + 1) * 16);
            assert_eq!(
                aes_cbc_decrypt(&key, &iv, &ciphertext).expect("round trip"),
                plaintext
            );
        }
        assert!(aes_cbc_decrypt(&key, &iv, &[]).is_err());
        assert!(aes_cbc_decrypt(&key, &iv, &[0; 15]).is_err());
        // A wrong key almost surely leaves invalid PKCS7 padding.
        let ciphertext = aes_cbc_encrypt(&key, &iv, b"hello");
        assert!(aes_cbc_decrypt(&[3u8; 32], &iv, &ciphertext).is_err());
    }

    #[test]
    fn low_order_points_are_refused() {
        let ours = KeyPair::from_private([0x11; 32]);
        assert!(matches!(
            agree(&ours, &[0u8; 32]),
            Err(SignalError::WeakKey)
        ));
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(matches!(agree(&ours, &one), Err(SignalError::WeakKey)));
        assert!(agree(&ours, &KeyPair::from_private([0x22; 32]).public).is_ok());
        assert!(matches!(
            RatchetKey::from(&ours).agree(&one),
            Err(SignalError::WeakKey)
        ));
    }

    #[test]
    fn ratchet_key_agrees_like_the_key_pair() {
        let ours = KeyPair::from_private([0x33; 32]);
        let theirs = KeyPair::from_private([0x44; 32]).public;
        let ratchet = RatchetKey::from(&ours);
        assert_eq!(ratchet.public, ours.public);
        assert_eq!(
            *ratchet.agree(&theirs).expect("valid point"),
            *ours.dh(&theirs)
        );
    }
}
