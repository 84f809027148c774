//! Key pairs, Diffie-Hellman and XEdDSA signatures, plus the hash, HMAC and
//! HKDF helpers the protocol core builds on. Pure computation: must not import
//! tokio, the store, the clock or `sim`.
//!
//! Signatures follow Signal's `calculateSignature` / `verifySignature`
//! (curve25519-js, libsignal): the Curve25519 private key is used directly as
//! an Ed25519 scalar, and the sign bit of the Edwards public key travels in the
//! top bit of the signature because a Montgomery public key does not carry it.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::Scalar;
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, Zeroizing};

/// An X25519 key pair. The private half is wiped from memory on drop and never
/// shown by `Debug`.
#[derive(Clone)]
pub struct KeyPair {
    /// The Montgomery-form public key, as sent on the wire.
    pub public: [u8; 32],
    private: Zeroizing<[u8; 32]>,
}

impl KeyPair {
    /// A fresh key pair; the private key is stored already clamped.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut private = [0u8; 32];
        rng.fill_bytes(&mut private);
        let pair = Self::from_private(clamp(private));
        private.zeroize();
        pair
    }

    /// Rebuilds a key pair from stored private bytes. The bytes are kept as
    /// given (clamping happens at use), so they round-trip through storage
    /// unchanged even when another implementation stored them unclamped.
    pub fn from_private(private: [u8; 32]) -> Self {
        let public = MontgomeryPoint::mul_base_clamped(private).to_bytes();
        Self {
            public,
            private: Zeroizing::new(private),
        }
    }

    /// A key pair whose public key was stored beside its private key by
    /// [`KeyPair::public`] of the same pair, read back from a record whose
    /// integrity the store guarantees (it is sealed). Skips the scalar
    /// multiplication of [`KeyPair::from_private`], which a restart would
    /// otherwise pay three times per session.
    pub fn from_stored(private: [u8; 32], public: [u8; 32]) -> Self {
        Self {
            public,
            private: Zeroizing::new(private),
        }
    }

    /// The private key bytes, for persistence.
    pub fn private_bytes(&self) -> &[u8; 32] {
        &self.private
    }

    /// X25519 agreement with `their_public`. An all-zero result means the peer
    /// sent a low-order point; protocol layers that care must reject it.
    pub fn dh(&self, their_public: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(
            MontgomeryPoint(*their_public)
                .mul_clamped(*self.private)
                .to_bytes(),
        )
    }

    /// XEdDSA signature of `message`, randomised with 64 bytes from `rng`
    /// (the hash-separated nonce of curve25519-js `sign(key, msg, random)`).
    pub fn sign(&self, message: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> [u8; 64] {
        self.signer().sign(message, rng)
    }

    /// The key in the form signing needs, for a key that signs many
    /// messages (a sender key signs every group message it encrypts).
    pub fn signer(&self) -> Signer {
        let clamped = Zeroizing::new(clamp(*self.private));
        let a = Scalar::from_bytes_mod_order(*clamped);
        let a_public = EdwardsPoint::mul_base(&a).compress();
        Signer {
            clamped,
            a: Zeroizing::new(a),
            a_public,
        }
    }
}

/// An XEdDSA signing key with its Edwards public key worked out once: that
/// base-point multiplication is a third of the cost of a signature.
#[derive(Clone)]
pub struct Signer {
    /// The clamped private key as bytes: the nonce hash covers these, not
    /// the reduced scalar.
    clamped: Zeroizing<[u8; 32]>,
    a: Zeroizing<Scalar>,
    a_public: CompressedEdwardsY,
}

impl Signer {
    /// As [`KeyPair::sign`].
    pub fn sign(&self, message: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> [u8; 64] {
        let mut random = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(random.as_mut());
        self.sign_with_random(message, &random)
    }

    /// The deterministic core of [`sign`](Self::sign): given the 64 random
    /// bytes it reproduces curve25519-js `sign(private, message, random)`
    /// bit for bit.
    fn sign_with_random(&self, message: &[u8], random: &[u8; 64]) -> [u8; 64] {
        let sign_bit = self.a_public.as_bytes()[31] & 0x80;
        // The 0xFE 0xFF… prefix separates this nonce hash from any Ed25519
        // hash of the same key (XEdDSA's hash_1).
        let mut prefix = [0xFFu8; 32];
        prefix[0] = 0xFE;
        let mut r = Scalar::from_hash(
            Sha512::new()
                .chain_update(prefix)
                .chain_update(self.clamped.as_ref())
                .chain_update(message)
                .chain_update(random),
        );
        let r_point = EdwardsPoint::mul_base(&r).compress();
        let h = Scalar::from_hash(
            Sha512::new()
                .chain_update(r_point.as_bytes())
                .chain_update(self.a_public.as_bytes())
                .chain_update(message),
        );
        let s = r + h * *self.a;
        r.zeroize();

        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(r_point.as_bytes());
        signature[32..].copy_from_slice(s.as_bytes());
        // s < 2^253, so the top bit is free to carry the public key's sign.
        signature[63] |= sign_bit;
        signature
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public", &hex::encode(self.a_public.as_bytes()))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

/// Verifies an XEdDSA signature made by the holder of the Curve25519 key
/// `public`. Rejects non-canonical scalars, as libsignal and Go's ed25519 do.
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    Verifier::new(public, signature[63] >> 7).is_some_and(|v| v.verify(message, signature))
}

/// A Curve25519 public key converted for XEdDSA verification, for one sign
/// bit (the top bit of a signature). The conversion and compression are two
/// field exponentiations; a member checks every message of a sender key
/// against the same key, so it keeps this instead of redoing them.
#[derive(Clone)]
pub struct Verifier {
    sign_bit: u8,
    minus_a: EdwardsPoint,
    a_compressed: CompressedEdwardsY,
}

impl Verifier {
    /// `None` when `public` has no Edwards form (not a curve point).
    pub fn new(public: &[u8; 32], sign_bit: u8) -> Option<Self> {
        let a_point = MontgomeryPoint(*public).to_edwards(sign_bit)?;
        Some(Self {
            sign_bit,
            minus_a: -a_point,
            a_compressed: a_point.compress(),
        })
    }

    /// The sign bit this verifier was made for.
    pub fn sign_bit(&self) -> u8 {
        self.sign_bit
    }

    /// As [`verify`]; a signature carrying the other sign bit fails.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        if signature[63] >> 7 != self.sign_bit {
            return false;
        }
        let (r_bytes, s_part) = signature.split_at(32);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(s_part);
        s_bytes[31] &= 0x7F;
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let h = Scalar::from_hash(
            Sha512::new()
                .chain_update(r_bytes)
                .chain_update(self.a_compressed.as_bytes())
                .chain_update(message),
        );
        // R' = s·B − h·A must reproduce the R the signer committed to.
        let r_check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&h, &self.minus_a, &s);
        r_check.compress().as_bytes()[..] == *r_bytes
    }
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .expect("HMAC is defined for keys of every length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// HKDF-SHA256 (RFC 5869) filling `out`. An empty `salt` means "no salt",
/// which RFC 5869 defines as 32 zero bytes.
///
/// # Panics
/// If `out` is longer than 255 × 32 = 8160 bytes, which RFC 5869 forbids;
/// every caller in this crate asks for a fixed size of at most 112 bytes.
pub fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8], out: &mut [u8]) {
    let salt = if salt.is_empty() { None } else { Some(salt) };
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, out)
        .expect("HKDF output length is a constant no larger than 8160 bytes");
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Clears the low 3 bits and the top bit and sets bit 254, as X25519 does.
fn clamp(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 0xF8;
    key[31] &= 0x7F;
    key[31] |= 0x40;
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(0x5eed)
    }

    #[test]
    fn generated_private_key_is_clamped_and_public_matches() {
        let pair = KeyPair::generate(&mut rng());
        let private = pair.private_bytes();
        assert_eq!(private[0] & 0x07, 0);
        assert_eq!(private[31] & 0xC0, 0x40);
        assert_eq!(KeyPair::from_private(*private).public, pair.public);
    }

    #[test]
    fn dh_agrees_both_ways() {
        let mut rng = rng();
        let alice = KeyPair::generate(&mut rng);
        let bob = KeyPair::generate(&mut rng);
        assert_eq!(*alice.dh(&bob.public), *bob.dh(&alice.public));
        assert_ne!(*alice.dh(&bob.public), [0u8; 32]);
    }

    #[test]
    fn rfc7748_x25519_vector() {
        // RFC 7748 §6.1.
        let alice = KeyPair::from_private(
            hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .expect("hex literal")
                .try_into()
                .expect("32 bytes"),
        );
        let bob_public: [u8; 32] =
            hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
                .expect("hex literal")
                .try_into()
                .expect("32 bytes");
        assert_eq!(
            hex::encode(alice.public),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        assert_eq!(
            hex::encode(*alice.dh(&bob_public)),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
    }

    #[test]
    fn sign_then_verify_and_reject_tampering() {
        let mut rng = rng();
        let pair = KeyPair::generate(&mut rng);
        let other = KeyPair::generate(&mut rng);
        for len in [0usize, 1, 32, 33, 1000] {
            let message: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let signature = pair.sign(&message, &mut rng);
            assert!(verify(&pair.public, &message, &signature));
            assert!(!verify(&other.public, &message, &signature));
            let mut bad = signature;
            bad[5] ^= 0x01;
            assert!(!verify(&pair.public, &message, &bad));
            let mut flipped_sign = signature;
            flipped_sign[63] ^= 0x80;
            assert!(!verify(&pair.public, &message, &flipped_sign));
            let mut longer = message.clone();
            longer.push(0);
            assert!(!verify(&pair.public, &longer, &signature));
        }
    }

    #[test]
    fn kept_signer_and_verifier_act_as_the_one_shot_functions() {
        let mut rng = rng();
        let pair = KeyPair::generate(&mut rng);
        let signer = pair.signer();
        let message = b"group message";
        let signature = signer.sign(message, &mut rng);
        let bit = signature[63] >> 7;
        let verifier = Verifier::new(&pair.public, bit).expect("a curve point");
        assert!(verify(&pair.public, message, &signature));
        assert!(verifier.verify(message, &signature));
        assert!(!verifier.verify(b"another message", &signature));
        let mut flipped_sign = signature;
        flipped_sign[63] ^= 0x80;
        assert!(!verifier.verify(message, &flipped_sign));
        let other_bit = Verifier::new(&pair.public, bit ^ 1).expect("a curve point");
        assert!(!other_bit.verify(message, &signature));
        assert!(!other_bit.verify(message, &flipped_sign));
        assert!(!format!("{signer:?}").contains(&hex::encode(pair.private_bytes())));
    }

    #[test]
    fn both_sign_bits_occur_and_verify() {
        // Half of all keys have a negative Edwards public key; make sure both
        // kinds are exercised.
        let mut rng = rng();
        let mut seen = [false; 2];
        for _ in 0..64 {
            let pair = KeyPair::generate(&mut rng);
            let signature = pair.sign(b"sign bit", &mut rng);
            seen[usize::from(signature[63] >> 7)] = true;
            assert!(verify(&pair.public, b"sign bit", &signature));
        }
        assert_eq!(seen, [true, true]);
    }

    #[test]
    fn non_canonical_scalar_is_rejected() {
        let mut rng = rng();
        let pair = KeyPair::generate(&mut rng);
        let signature = pair.sign(b"m", &mut rng);
        // Adding the group order L to s yields the same point equation but a
        // non-canonical encoding.
        let l = Scalar::ZERO - Scalar::ONE;
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&signature[32..]);
        s_bytes[31] &= 0x7F;
        let s = Scalar::from_canonical_bytes(s_bytes).expect("signer emits canonical s");
        let mut wide = [0u8; 33];
        // s + L as a little-endian integer (L = (L − 1) + 1).
        let mut carry = 1u16;
        for (i, (x, y)) in s.as_bytes().iter().zip(l.as_bytes()).enumerate() {
            let sum = u16::from(*x) + u16::from(*y) + carry;
            wide[i] = sum as u8;
            carry = sum >> 8;
        }
        wide[32] = carry as u8;
        // s + L < 2^253, so it still fits beside the sign bit.
        assert_eq!((wide[32], wide[31] & 0xE0), (0, 0));
        let mut forged = signature;
        forged[32..].copy_from_slice(&wide[..32]);
        forged[63] |= signature[63] & 0x80;
        assert!(!verify(&pair.public, b"m", &forged));
    }

    #[test]
    fn debug_hides_private_key() {
        let pair = KeyPair::from_private([0x11; 32]);
        let shown = format!("{pair:?}");
        assert!(shown.contains(&hex::encode(pair.public)));
        assert!(!shown.contains("1111"));
    }

    #[test]
    fn hkdf_rfc5869_case_1_and_no_salt_case_3() {
        let ikm = [0x0b; 22];
        let salt = hex::decode("000102030405060708090a0b0c").expect("hex literal");
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").expect("hex literal");
        let mut okm = [0u8; 42];
        hkdf_sha256(&ikm, &salt, &info, &mut okm);
        assert_eq!(
            hex::encode(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
        hkdf_sha256(&ikm, &[], &[], &mut okm);
        assert_eq!(
            hex::encode(okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    #[test]
    fn hmac_and_sha256_concatenate_parts() {
        assert_eq!(
            hex::encode(sha256(&[b"ab", b"c"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(
                b"Jefe",
                &[b"what do ya want ", b"for nothing?"]
            )),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// Vectors made by libsignal / curve25519-js
    /// (`tests/interop/noise-gen-vectors.js`).
    mod libsignal_vectors {
        use super::*;

        const VECTORS: &str = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/noise/xeddsa.json"
        ));

        fn vectors() -> serde_json::Value {
            serde_json::from_str(VECTORS).expect("vector file is valid JSON")
        }

        fn bytes(value: &serde_json::Value, field: &str) -> Vec<u8> {
            hex::decode(value[field].as_str().expect("hex string field")).expect("valid hex")
        }

        fn array<const N: usize>(value: &serde_json::Value, field: &str) -> [u8; N] {
            bytes(value, field)
                .try_into()
                .expect("field has the documented length")
        }

        fn list(name: &str) -> Vec<serde_json::Value> {
            let list = vectors()[name].as_array().expect("vector list").clone();
            assert!(list.len() >= 5, "{name} has too few vectors");
            list
        }

        #[test]
        fn public_keys_match() {
            for v in list("keys") {
                let pair = KeyPair::from_private(array(&v, "private"));
                assert_eq!(pair.public, array::<32>(&v, "public"));
                assert_eq!(pair.private_bytes(), &array::<32>(&v, "private"));
            }
        }

        #[test]
        fn agreements_match() {
            for v in list("agreements") {
                let pair = KeyPair::from_private(array(&v, "private"));
                assert_eq!(
                    *pair.dh(&array(&v, "their_public")),
                    array::<32>(&v, "shared")
                );
            }
        }

        #[test]
        fn libsignal_signatures_verify() {
            for v in list("signatures") {
                let public = array(&v, "public");
                let message = bytes(&v, "message");
                let signature = array(&v, "signature");
                assert!(verify(&public, &message, &signature));
                let mut tampered = message.clone();
                tampered.push(1);
                assert!(!verify(&public, &tampered, &signature));
            }
        }

        #[test]
        fn randomized_signatures_are_bit_identical() {
            for v in list("randomized_signatures") {
                let private = array(&v, "private");
                let message = bytes(&v, "message");
                let signature: [u8; 64] = array(&v, "signature");
                assert_eq!(
                    hex::encode(
                        KeyPair::from_private(private)
                            .signer()
                            .sign_with_random(&message, &array(&v, "random"))
                    ),
                    hex::encode(signature)
                );
                assert!(verify(
                    &KeyPair::from_private(private).public,
                    &message,
                    &signature
                ));
            }
        }
    }
}
