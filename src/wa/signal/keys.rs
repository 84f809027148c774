//! Signal key material: the 0x05-prefixed public key encoding, one-time and
//! signed prekeys, prekey bundles and registration ids. Pure computation;
//! must not import I/O.

use rand::{CryptoRng, RngCore};

use super::SignalError;
use crate::wa::crypto::{verify, KeyPair};

/// Type byte of a Curve25519 ("DJB") public key in Signal's encoding.
pub const KEY_TYPE_DJB: u8 = 0x05;

/// Largest prekey id: WhatsApp's `<key><id>` and `<skey><id>` nodes are 3
/// bytes.
pub const MAX_PRE_KEY_ID: u32 = 0xFF_FFFF;

/// The 33-byte form of a public key used inside Signal messages, MAC inputs
/// and the signed prekey signature: the type byte, then the key.
pub fn encode_public_key(public: &[u8; 32]) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = KEY_TYPE_DJB;
    out[1..].copy_from_slice(public);
    out
}

/// Parses the 33-byte form. The bare 32-byte form is refused: every
/// WhatsApp client sends the type byte, and go.mau.fi/libsignal requires it.
pub fn decode_public_key(bytes: &[u8]) -> Result<[u8; 32], SignalError> {
    match bytes.split_first() {
        Some((&KEY_TYPE_DJB, key)) => key.try_into().map_err(|_| SignalError::BadPublicKey),
        _ => Err(SignalError::BadPublicKey),
    }
}

/// A random registration id in 1..=0x3FFF, the 14-bit range libsignal and
/// Baileys draw from (0 is avoided: libsignal-node treats it as missing).
pub fn generate_registration_id(rng: &mut (impl RngCore + CryptoRng)) -> u32 {
    loop {
        let id = rng.next_u32() & 0x3FFF;
        if id != 0 {
            return id;
        }
    }
}

/// A one-time prekey: uploaded to the server, handed to one peer in a bundle,
/// deleted after its first use.
#[derive(Clone, Debug)]
pub struct PreKey {
    /// The 24-bit id announced with the key.
    pub id: u32,
    /// The key pair.
    pub key: KeyPair,
}

impl PreKey {
    /// Wraps a stored key pair, checking the id range.
    pub fn new(id: u32, key: KeyPair) -> Result<Self, SignalError> {
        check_id(id)?;
        Ok(Self { id, key })
    }

    /// A fresh prekey with the given id.
    pub fn generate(id: u32, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self, SignalError> {
        Self::new(id, KeyPair::generate(rng))
    }
}

/// A medium-term prekey signed by the identity key; kept after use.
#[derive(Clone, Debug)]
pub struct SignedPreKey {
    /// The 24-bit id announced with the key.
    pub id: u32,
    /// The key pair.
    pub key: KeyPair,
    /// XEdDSA signature by the identity key over the 33-byte public key.
    pub signature: [u8; 64],
}

impl SignedPreKey {
    /// A fresh signed prekey with the given id, signed by `identity`.
    pub fn generate(
        id: u32,
        identity: &KeyPair,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self, SignalError> {
        check_id(id)?;
        let key = KeyPair::generate(rng);
        let signature = identity.sign(&encode_public_key(&key.public), rng);
        Ok(Self { id, key, signature })
    }

    /// Whether the signature is by `identity_public`.
    pub fn verify(&self, identity_public: &[u8; 32]) -> bool {
        verify(
            identity_public,
            &encode_public_key(&self.key.public),
            &self.signature,
        )
    }
}

/// What a peer publishes so others can open a session with it without a
/// round trip: the public halves only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKeyBundle {
    /// The peer's registration id.
    pub registration_id: u32,
    /// The peer's device number (informational: the session address carries
    /// it).
    pub device_id: u32,
    /// An optional one-time prekey: id and public key.
    pub pre_key: Option<(u32, [u8; 32])>,
    /// The signed prekey: id, public key, signature.
    pub signed_pre_key: (u32, [u8; 32], [u8; 64]),
    /// The peer's identity public key.
    pub identity_key: [u8; 32],
}

impl PreKeyBundle {
    /// The bundle a device with these keys publishes.
    pub fn new(
        registration_id: u32,
        device_id: u32,
        identity: &[u8; 32],
        signed_pre_key: &SignedPreKey,
        pre_key: Option<&PreKey>,
    ) -> Self {
        Self {
            registration_id,
            device_id,
            pre_key: pre_key.map(|p| (p.id, p.key.public)),
            signed_pre_key: (
                signed_pre_key.id,
                signed_pre_key.key.public,
                signed_pre_key.signature,
            ),
            identity_key: *identity,
        }
    }
}

fn check_id(id: u32) -> Result<(), SignalError> {
    if id > MAX_PRE_KEY_ID {
        return Err(SignalError::PreKeyIdOutOfRange(id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn public_key_encoding_round_trips_and_rejects_other_forms() {
        let key = [0xAB; 32];
        let encoded = encode_public_key(&key);
        assert_eq!(encoded[0], 0x05);
        assert_eq!(decode_public_key(&encoded).ok(), Some(key));
        assert!(decode_public_key(&key).is_err());
        assert!(decode_public_key(&encoded[..32]).is_err());
        assert!(decode_public_key(&[]).is_err());
        let mut wrong_type = encoded;
        wrong_type[0] = 0x06;
        assert!(decode_public_key(&wrong_type).is_err());
        let mut long = encoded.to_vec();
        long.push(0);
        assert!(decode_public_key(&long).is_err());
    }

    #[test]
    fn signed_prekey_signature_covers_the_prefixed_key() {
        let mut rng = StdRng::seed_from_u64(1);
        let identity = KeyPair::generate(&mut rng);
        let signed = SignedPreKey::generate(7, &identity, &mut rng).expect("id in range");
        assert!(signed.verify(&identity.public));
        assert!(verify(
            &identity.public,
            &encode_public_key(&signed.key.public),
            &signed.signature
        ));
        assert!(!verify(
            &identity.public,
            &signed.key.public,
            &signed.signature
        ));
        let other = KeyPair::generate(&mut rng);
        assert!(!signed.verify(&other.public));
    }

    #[test]
    fn prekey_ids_are_24_bit() {
        let mut rng = StdRng::seed_from_u64(2);
        assert!(PreKey::generate(MAX_PRE_KEY_ID, &mut rng).is_ok());
        assert!(matches!(
            PreKey::generate(MAX_PRE_KEY_ID + 1, &mut rng),
            Err(SignalError::PreKeyIdOutOfRange(0x100_0000))
        ));
        let identity = KeyPair::generate(&mut rng);
        assert!(SignedPreKey::generate(1 << 24, &identity, &mut rng).is_err());
    }

    #[test]
    fn registration_ids_are_nonzero_14_bit() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1000 {
            let id = generate_registration_id(&mut rng);
            assert!((1..=0x3FFF).contains(&id));
        }
    }

    #[test]
    fn bundle_carries_public_halves() {
        let mut rng = StdRng::seed_from_u64(4);
        let identity = KeyPair::generate(&mut rng);
        let signed = SignedPreKey::generate(1, &identity, &mut rng).expect("id in range");
        let one_time = PreKey::generate(9, &mut rng).expect("id in range");
        let bundle = PreKeyBundle::new(77, 2, &identity.public, &signed, Some(&one_time));
        assert_eq!(bundle.pre_key, Some((9, one_time.key.public)));
        assert_eq!(bundle.signed_pre_key.0, 1);
        assert_eq!(bundle.signed_pre_key.1, signed.key.public);
        assert_eq!(bundle.identity_key, identity.public);
        assert_eq!((bundle.registration_id, bundle.device_id), (77, 2));
    }
}
