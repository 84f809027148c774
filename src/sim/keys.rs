//! The simulated server's long-term keys: a test root key, an intermediate
//! key, the Noise static key and the certificate chain that ties them
//! together, as WhatsApp's real servers present them. Imports `wa` only.

use rand::{CryptoRng, RngCore};

use super::snapshot::{key_pair, InvalidState, SavedKeys};
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

    /// The keys as the state file keeps them.
    pub(crate) fn saved(&self) -> SavedKeys {
        SavedKeys {
            root_private: self.root.private_bytes().to_vec(),
            static_private: self.static_key.private_bytes().to_vec(),
            cert_chain: self.cert_chain.clone(),
        }
    }

    /// The keys of an earlier run, so clients that trust its root key and
    /// know its static key still connect.
    pub(crate) fn restore(saved: &SavedKeys) -> Result<Self, InvalidState> {
        if saved.cert_chain.is_empty() {
            return Err(InvalidState::field("server keys: no certificate chain"));
        }
        Ok(Self {
            root: key_pair(&saved.root_private, "root key")?,
            static_key: key_pair(&saved.static_private, "static key")?,
            cert_chain: saved.cert_chain.clone(),
        })
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
    fn saved_keys_come_back_the_same() {
        let keys = ServerKeys::generate(&mut rand::rngs::StdRng::seed_from_u64(3), 0);
        let again = ServerKeys::restore(&keys.saved()).expect("restores");
        assert_eq!(again.root.public, keys.root.public);
        assert_eq!(again.static_key.public, keys.static_key.public);
        assert_eq!(again.cert_chain, keys.cert_chain);
        let mut bad = keys.saved();
        bad.root_private.pop();
        assert!(ServerKeys::restore(&bad).is_err());
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
