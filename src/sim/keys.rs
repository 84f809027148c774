//! The simulated server's long-term keys: a test root key, an intermediate
//! key, the Noise static key and the certificate chain that ties them
//! together, as WhatsApp's real servers present them. Imports `wa` only.

use rand::{CryptoRng, RngCore};

use crate::wa::crypto::KeyPair;
use crate::wa::noise::issue_cert_chain;

/// Serial of the intermediate certificate; its issuer (the root) is serial 0.
const INTERMEDIATE_SERIAL: u32 = 0x01;
/// Serial of the leaf certificate, issued by the intermediate.
const LEAF_SERIAL: u32 = 0x02;
/// Certificates are valid from a day before start-up (tolerates clients whose
/// clocks lag) ...
const VALID_BEFORE_SECS: u64 = 24 * 3600;
/// ... to a year after it.
const VALID_AFTER_SECS: u64 = 365 * 24 * 3600;

pub(crate) struct ServerKeys {
    pub(crate) root: KeyPair,
    pub(crate) static_key: KeyPair,
    /// Encoded `CertChain`, sent encrypted in every ServerHello.
    pub(crate) cert_chain: Vec<u8>,
}

impl ServerKeys {
    /// Creates fresh keys (the root first, so a seeded generator gives a
    /// stable root key) and a chain valid around `now`.
    pub(crate) fn generate(rng: &mut (impl RngCore + CryptoRng), now: u64) -> Self {
        let root = KeyPair::generate(rng);
        let intermediate = KeyPair::generate(rng);
        let static_key = KeyPair::generate(rng);
        let cert_chain = issue_cert_chain(
            &root,
            &intermediate,
            INTERMEDIATE_SERIAL,
            LEAF_SERIAL,
            &static_key.public,
            now.saturating_sub(VALID_BEFORE_SECS),
            now.saturating_add(VALID_AFTER_SECS),
            rng,
        );
        Self {
            root,
            static_key,
            cert_chain,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::noise::verify_cert_chain;
    use rand::SeedableRng;

    #[test]
    fn chain_verifies_against_root_and_static_key() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let now = 1_700_000_000;
        let keys = ServerKeys::generate(&mut rng, now);
        let root = keys.root.public;
        let leaf = keys.static_key.public;
        assert!(verify_cert_chain(&keys.cert_chain, &root, &leaf, now).is_ok());
        assert!(verify_cert_chain(&keys.cert_chain, &root, &leaf, now + 300 * 24 * 3600).is_ok());
        assert!(verify_cert_chain(&keys.cert_chain, &leaf, &leaf, now).is_err());
        assert!(verify_cert_chain(&keys.cert_chain, &root, &root, now).is_err());
        assert!(
            verify_cert_chain(&keys.cert_chain, &root, &leaf, now + 2 * 365 * 24 * 3600).is_err()
        );
    }

    #[test]
    fn seed_fixes_the_root_key() {
        let a = ServerKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(1), 0);
        let b = ServerKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(1), 99);
        let c = ServerKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(2), 0);
        assert_eq!(a.root.public, b.root.public);
        assert_ne!(a.root.public, c.root.public);
    }
}
