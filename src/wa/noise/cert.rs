//! The server certificate chain carried in the ServerHello payload: issuing
//! one (for the simulator) and verifying one (for the client). Verification
//! makes exactly whatsmeow's checks, in its order. Must not import the clock:
//! the current time is an argument.
//!
//! Every session of a process meets the same chain at every connect, and its
//! two signature checks were a tenth of the gateway's CPU while thousands of
//! sessions reconnect. A signature that verified once verifies again (the
//! check is a pure function of key, message and signature), so the few
//! recently verified ones are remembered by a digest of all three; the
//! decoding, serials, validity window and server key are checked every
//! time.

use prost::Message;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;

use crate::proto::wa::cert_chain::noise_certificate::Details;
use crate::proto::wa::cert_chain::NoiseCertificate;
use crate::proto::wa::CertChain;
use crate::wa::crypto::{sha256, verify, KeyPair};

/// Signatures remembered as verified: a chain has two, and a process meets
/// one chain at a time (two around a rotation).
const VERIFIED_KEPT: usize = 8;

/// Digests of (key, message, signature) that verified, newest last.
static VERIFIED: std::sync::Mutex<Vec<[u8; 32]>> = std::sync::Mutex::new(Vec::new());

/// [`verify`], remembering signatures that verified.
fn verify_remembered(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let len = u64::try_from(message.len())
        .unwrap_or(u64::MAX)
        .to_be_bytes();
    let digest = sha256(&[key, &len, message, signature]);
    let known = |kept: &Vec<[u8; 32]>| kept.iter().any(|d| d == &digest);
    if VERIFIED.lock().is_ok_and(|kept| known(&kept)) {
        return true;
    }
    if !verify(key, message, signature) {
        return false;
    }
    if let Ok(mut kept) = VERIFIED.lock() {
        if !known(&kept) {
            if kept.len() == VERIFIED_KEPT {
                kept.remove(0);
            }
            kept.push(digest);
        }
    }
    true
}

/// The issuer serial every intermediate certificate must name: the root.
const ROOT_SERIAL: u32 = 0x0;

/// Which certificate of the chain a [`CertError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// Signed by the root key; its key signs the leaf.
    Intermediate,
    /// Signed by the intermediate; its key is the server's static key.
    Leaf,
}

impl std::fmt::Display for CertRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Intermediate => "intermediate",
            Self::Leaf => "leaf",
        })
    }
}

/// Why a certificate chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// The chain or a certificate's details are not valid protobuf.
    #[error("{what} does not decode: {source}")]
    Decode {
        /// `"certificate chain"`, `"intermediate details"` or `"leaf details"`.
        what: &'static str,
        /// The protobuf error.
        source: prost::DecodeError,
    },
    /// The chain lacks a certificate, its details or its signature.
    #[error("missing parts of the certificate chain")]
    Missing,
    /// A signature is not 64 bytes.
    #[error("{role} signature is {len} bytes, expected 64")]
    SignatureLength {
        /// Certificate concerned.
        role: CertRole,
        /// Actual length.
        len: usize,
    },
    /// A signature does not verify under its issuer's key.
    #[error("{0} signature does not verify")]
    BadSignature(CertRole),
    /// The intermediate does not name the root as its issuer.
    #[error("intermediate issuer serial is {0}, expected 0")]
    IntermediateIssuer(u32),
    /// The intermediate's key is not 32 bytes.
    #[error("intermediate key is {0} bytes, expected 32")]
    KeyLength(usize),
    /// The leaf names a different issuer than the intermediate's serial.
    #[error("leaf issuer serial is {found}, intermediate serial is {expected}")]
    LeafIssuer {
        /// The intermediate's serial.
        expected: u32,
        /// The leaf's issuer serial.
        found: u32,
    },
    /// The leaf certifies a different key than the server's static key.
    #[error("leaf key does not match the server static key")]
    KeyMismatch,
    /// `now` is before the certificate's not-before time.
    #[error("{role} certificate not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Certificate concerned.
        role: CertRole,
        /// Start of validity, unix seconds.
        not_before: u64,
        /// The time checked, unix seconds.
        now: u64,
    },
    /// `now` is after the certificate's not-after time.
    #[error("{role} certificate expired at {not_after} (now {now})")]
    Expired {
        /// Certificate concerned.
        role: CertRole,
        /// End of validity, unix seconds.
        not_after: u64,
        /// The time checked, unix seconds.
        now: u64,
    },
}

/// Issues a chain `root → intermediate → leaf(server_static_public)` with the
/// same validity window for both certificates, encoded as a `CertChain`.
#[allow(clippy::too_many_arguments)] // mirrors the fields of the two certificates
pub fn issue_cert_chain(
    root: &KeyPair,
    intermediate: &KeyPair,
    intermediate_serial: u32,
    leaf_serial: u32,
    server_static_public: &[u8; 32],
    not_before: u64,
    not_after: u64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Vec<u8> {
    let intermediate_details = Details {
        serial: Some(intermediate_serial),
        issuer_serial: Some(ROOT_SERIAL),
        key: Some(intermediate.public.to_vec()),
        not_before: Some(not_before),
        not_after: Some(not_after),
    }
    .encode_to_vec();
    let leaf_details = Details {
        serial: Some(leaf_serial),
        issuer_serial: Some(intermediate_serial),
        key: Some(server_static_public.to_vec()),
        not_before: Some(not_before),
        not_after: Some(not_after),
    }
    .encode_to_vec();
    let intermediate_signature = root.sign(&intermediate_details, rng);
    let leaf_signature = intermediate.sign(&leaf_details, rng);
    CertChain {
        leaf: Some(NoiseCertificate {
            details: Some(leaf_details),
            signature: Some(leaf_signature.to_vec()),
        }),
        intermediate: Some(NoiseCertificate {
            details: Some(intermediate_details),
            signature: Some(intermediate_signature.to_vec()),
        }),
    }
    .encode_to_vec()
}

/// Verifies an encoded `CertChain` against `root` for the server whose
/// decrypted static key is `server_static_public`, at `now_unix` seconds.
pub fn verify_cert_chain(
    chain: &[u8],
    root: &[u8; 32],
    server_static_public: &[u8; 32],
    now_unix: u64,
) -> Result<(), CertError> {
    let chain = CertChain::decode(chain).map_err(|source| CertError::Decode {
        what: "certificate chain",
        source,
    })?;
    let (intermediate, leaf) = match (chain.intermediate, chain.leaf) {
        (
            Some(NoiseCertificate {
                details: Some(i_details),
                signature: Some(i_signature),
            }),
            Some(NoiseCertificate {
                details: Some(l_details),
                signature: Some(l_signature),
            }),
        ) => ((i_details, i_signature), (l_details, l_signature)),
        _ => return Err(CertError::Missing),
    };
    let intermediate_signature = signature(&intermediate.1, CertRole::Intermediate)?;
    let leaf_signature = signature(&leaf.1, CertRole::Leaf)?;

    if !verify_remembered(root, &intermediate.0, &intermediate_signature) {
        return Err(CertError::BadSignature(CertRole::Intermediate));
    }
    let intermediate_details =
        Details::decode(intermediate.0.as_slice()).map_err(|source| CertError::Decode {
            what: "intermediate details",
            source,
        })?;
    if intermediate_details.issuer_serial() != ROOT_SERIAL {
        return Err(CertError::IntermediateIssuer(
            intermediate_details.issuer_serial(),
        ));
    }
    let intermediate_key: [u8; 32] = intermediate_details
        .key()
        .try_into()
        .map_err(|_| CertError::KeyLength(intermediate_details.key().len()))?;
    if !verify_remembered(&intermediate_key, &leaf.0, &leaf_signature) {
        return Err(CertError::BadSignature(CertRole::Leaf));
    }
    check_validity(&intermediate_details, CertRole::Intermediate, now_unix)?;

    let leaf_details = Details::decode(leaf.0.as_slice()).map_err(|source| CertError::Decode {
        what: "leaf details",
        source,
    })?;
    if leaf_details.issuer_serial() != intermediate_details.serial() {
        return Err(CertError::LeafIssuer {
            expected: intermediate_details.serial(),
            found: leaf_details.issuer_serial(),
        });
    }
    // Keys of different lengths compare unequal without a length leak that
    // matters; equal lengths compare in constant time.
    if !bool::from(leaf_details.key().ct_eq(server_static_public)) {
        return Err(CertError::KeyMismatch);
    }
    check_validity(&leaf_details, CertRole::Leaf, now_unix)
}

fn signature(bytes: &[u8], role: CertRole) -> Result<[u8; 64], CertError> {
    bytes.try_into().map_err(|_| CertError::SignatureLength {
        role,
        len: bytes.len(),
    })
}

/// Absent times count as 0, as in whatsmeow, so a certificate without
/// `not_after` has always expired.
fn check_validity(details: &Details, role: CertRole, now: u64) -> Result<(), CertError> {
    if now < details.not_before() {
        Err(CertError::NotYetValid {
            role,
            not_before: details.not_before(),
            now,
        })
    } else if now > details.not_after() {
        Err(CertError::Expired {
            role,
            not_after: details.not_after(),
            now,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const NOT_BEFORE: u64 = 1_700_000_000;
    const NOT_AFTER: u64 = 1_800_000_000;
    const NOW: u64 = 1_750_000_000;

    struct Fixture {
        rng: StdRng,
        root: KeyPair,
        intermediate: KeyPair,
        server: KeyPair,
    }

    fn fixture() -> Fixture {
        let mut rng = StdRng::seed_from_u64(7);
        let root = KeyPair::generate(&mut rng);
        let intermediate = KeyPair::generate(&mut rng);
        let server = KeyPair::generate(&mut rng);
        Fixture {
            rng,
            root,
            intermediate,
            server,
        }
    }

    impl Fixture {
        fn chain(&mut self) -> Vec<u8> {
            issue_cert_chain(
                &self.root,
                &self.intermediate,
                0x1234,
                0x5678,
                &self.server.public,
                NOT_BEFORE,
                NOT_AFTER,
                &mut self.rng,
            )
        }

        fn verify(&self, chain: &[u8], now: u64) -> Result<(), CertError> {
            verify_cert_chain(chain, &self.root.public, &self.server.public, now)
        }

        /// Re-signs a chain after `edit` changed the decoded details.
        fn forge(&mut self, edit: impl FnOnce(&mut Details, &mut Details)) -> Vec<u8> {
            let chain = CertChain::decode(self.chain().as_slice()).expect("own chain decodes");
            let mut intermediate = Details::decode(
                chain
                    .intermediate
                    .and_then(|c| c.details)
                    .expect("own chain has intermediate details")
                    .as_slice(),
            )
            .expect("own details decode");
            let mut leaf = Details::decode(
                chain
                    .leaf
                    .and_then(|c| c.details)
                    .expect("own chain has leaf details")
                    .as_slice(),
            )
            .expect("own details decode");
            edit(&mut intermediate, &mut leaf);
            let intermediate = intermediate.encode_to_vec();
            let leaf = leaf.encode_to_vec();
            CertChain {
                intermediate: Some(NoiseCertificate {
                    signature: Some(self.root.sign(&intermediate, &mut self.rng).to_vec()),
                    details: Some(intermediate),
                }),
                leaf: Some(NoiseCertificate {
                    signature: Some(self.intermediate.sign(&leaf, &mut self.rng).to_vec()),
                    details: Some(leaf),
                }),
            }
            .encode_to_vec()
        }
    }

    #[test]
    fn issued_chain_verifies_within_window_inclusive() {
        let mut f = fixture();
        let chain = f.chain();
        assert_eq!(f.verify(&chain, NOW), Ok(()));
        assert_eq!(f.verify(&chain, NOT_BEFORE), Ok(()));
        assert_eq!(f.verify(&chain, NOT_AFTER), Ok(()));
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let mut f = fixture();
        let chain = f.chain();
        assert_eq!(
            f.verify(&chain, NOT_AFTER + 1),
            Err(CertError::Expired {
                role: CertRole::Intermediate,
                not_after: NOT_AFTER,
                now: NOT_AFTER + 1
            })
        );
        assert_eq!(
            f.verify(&chain, NOT_BEFORE - 1),
            Err(CertError::NotYetValid {
                role: CertRole::Intermediate,
                not_before: NOT_BEFORE,
                now: NOT_BEFORE - 1
            })
        );
        let leaf_expired = f.forge(|_, leaf| leaf.not_after = Some(NOW - 1));
        assert!(matches!(
            f.verify(&leaf_expired, NOW),
            Err(CertError::Expired {
                role: CertRole::Leaf,
                ..
            })
        ));
        let no_not_after = f.forge(|_, leaf| leaf.not_after = None);
        assert!(matches!(
            f.verify(&no_not_after, NOW),
            Err(CertError::Expired {
                role: CertRole::Leaf,
                not_after: 0,
                ..
            })
        ));
    }

    #[test]
    fn wrong_root_rejects_intermediate_signature() {
        let mut f = fixture();
        let chain = f.chain();
        let other_root = KeyPair::generate(&mut f.rng);
        assert_eq!(
            verify_cert_chain(&chain, &other_root.public, &f.server.public, NOW),
            Err(CertError::BadSignature(CertRole::Intermediate))
        );
        assert_eq!(
            verify_cert_chain(
                &chain,
                &super::super::WA_ROOT_PUBLIC_KEY,
                &f.server.public,
                NOW
            ),
            Err(CertError::BadSignature(CertRole::Intermediate))
        );
    }

    #[test]
    fn a_remembered_signature_vouches_for_nothing_else() {
        let mut f = fixture();
        let chain = f.chain();
        assert_eq!(f.verify(&chain, NOW), Ok(()));
        // Once more from memory: the same answer, and the window and the
        // server key are still checked.
        assert_eq!(f.verify(&chain, NOW), Ok(()));
        assert!(matches!(
            f.verify(&chain, NOT_AFTER + 1),
            Err(CertError::Expired { .. })
        ));
        let other_server = KeyPair::generate(&mut f.rng);
        assert!(verify_cert_chain(&chain, &f.root.public, &other_server.public, NOW).is_err());
        // The same details under a signature with one bit flipped, and the
        // same signature under another key, verify afresh and fail.
        let mut tampered = CertChain::decode(chain.as_slice()).expect("own chain decodes");
        if let Some(sig) = tampered
            .leaf
            .as_mut()
            .and_then(|leaf| leaf.signature.as_mut())
        {
            sig[5] ^= 1;
        }
        assert_eq!(
            f.verify(&tampered.encode_to_vec(), NOW),
            Err(CertError::BadSignature(CertRole::Leaf))
        );
        let other_root = KeyPair::generate(&mut f.rng);
        assert_eq!(
            verify_cert_chain(&chain, &other_root.public, &f.server.public, NOW),
            Err(CertError::BadSignature(CertRole::Intermediate))
        );
    }

    #[test]
    fn leaf_signed_by_someone_else_is_rejected() {
        let mut f = fixture();
        f.intermediate = KeyPair::generate(&mut f.rng);
        let mut chain = CertChain::decode(f.chain().as_slice()).expect("own chain decodes");
        let mut g = fixture();
        let genuine = CertChain::decode(g.chain().as_slice()).expect("own chain decodes");
        // Genuine intermediate, leaf signed by an unrelated key.
        chain.intermediate = genuine.intermediate;
        assert_eq!(
            g.verify(&chain.encode_to_vec(), NOW),
            Err(CertError::BadSignature(CertRole::Leaf))
        );
    }

    #[test]
    fn serial_and_key_checks() {
        let mut f = fixture();
        let issuer = f.forge(|i, _| i.issuer_serial = Some(1));
        assert_eq!(
            f.verify(&issuer, NOW),
            Err(CertError::IntermediateIssuer(1))
        );

        let leaf_issuer = f.forge(|_, l| l.issuer_serial = Some(0x9999));
        assert_eq!(
            f.verify(&leaf_issuer, NOW),
            Err(CertError::LeafIssuer {
                expected: 0x1234,
                found: 0x9999
            })
        );

        let other_key = f.forge(|_, l| l.key = Some(vec![7; 32]));
        assert_eq!(f.verify(&other_key, NOW), Err(CertError::KeyMismatch));
        let short_key = f.forge(|_, l| l.key = Some(vec![7; 31]));
        assert_eq!(f.verify(&short_key, NOW), Err(CertError::KeyMismatch));

        let chain = f.chain();
        let other_server = KeyPair::generate(&mut f.rng);
        assert_eq!(
            verify_cert_chain(&chain, &f.root.public, &other_server.public, NOW),
            Err(CertError::KeyMismatch)
        );
    }

    #[test]
    fn intermediate_key_length_is_checked() {
        let mut f = fixture();
        let chain = f.forge(|i, _| i.key = Some(vec![1; 33]));
        assert_eq!(f.verify(&chain, NOW), Err(CertError::KeyLength(33)));
    }

    #[test]
    fn missing_parts_and_bad_signature_lengths() {
        let mut f = fixture();
        let full = CertChain::decode(f.chain().as_slice()).expect("own chain decodes");
        let mut no_leaf = full.clone();
        no_leaf.leaf = None;
        assert_eq!(
            f.verify(&no_leaf.encode_to_vec(), NOW),
            Err(CertError::Missing)
        );
        let mut no_sig = full.clone();
        if let Some(c) = no_sig.intermediate.as_mut() {
            c.signature = None;
        }
        assert_eq!(
            f.verify(&no_sig.encode_to_vec(), NOW),
            Err(CertError::Missing)
        );
        let mut short_sig = full.clone();
        if let Some(c) = short_sig.leaf.as_mut() {
            c.signature = Some(vec![0; 63]);
        }
        assert_eq!(
            f.verify(&short_sig.encode_to_vec(), NOW),
            Err(CertError::SignatureLength {
                role: CertRole::Leaf,
                len: 63
            })
        );
        assert_eq!(f.verify(&[], NOW), Err(CertError::Missing));
        assert!(matches!(
            f.verify(&[0x0a, 0x05, 0x01], NOW),
            Err(CertError::Decode { .. })
        ));
    }
}
