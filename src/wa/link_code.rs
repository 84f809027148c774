//! Pairing by phone number (a *link code*): the 8-character code, the
//! wrapping of ephemeral keys under it, the key bundle and ADV secret, and
//! the companion's side of the exchange (`companion_hello`, the phone's
//! `link_code_companion_reg` notification, `companion_finish`). Pure
//! functions and states over nodes, keys and randomness; must not import
//! tokio, the store, the clock or `sim`.
//!
//! The companion sends its ephemeral key wrapped under the code; the user
//! types the code on the phone, which sends its own ephemeral key wrapped
//! the same way. AES-CTR has no integrity, so a wrong code is only noticed
//! when the phone fails to open the AES-GCM key bundle keyed by the
//! ephemeral Diffie-Hellman. The ADV secret that the phone's `pair-success`
//! HMAC is keyed with is derived from both Diffie-Hellman results, not
//! shown in a QR code.

use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use ctr::cipher::{KeyIvInit, StreamCipher};
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::wa::binary::Node;
use crate::wa::creds::Credentials;
use crate::wa::crypto::{self, KeyPair};
use crate::wa::jid::{Jid, PhoneNumber};

/// The code's alphabet: base32 without 0, O, I and U (whatsmeow
/// `linkingBase32`, Baileys `bytesToCrockford`).
pub const ALPHABET: &[u8; 32] = b"123456789ABCDEFGHJKLMNPQRSTVWXYZ";
/// Characters in a code (5 random bytes, 8 base32 digits).
pub const CODE_LEN: usize = 8;
/// PBKDF2-SHA256 rounds deriving the wrapping key from the code (`2 << 16`).
pub const PBKDF2_ROUNDS: u32 = 0x2_0000;
/// salt (32) ‖ iv (16) ‖ AES-256-CTR(ephemeral public key) (32).
pub const WRAPPED_KEY_LEN: usize = 32 + 16 + 32;
/// companion identity ‖ primary identity ‖ random, each 32 bytes.
const BUNDLE_PLAIN_LEN: usize = 96;
/// salt (32) ‖ nonce (12) ‖ AES-256-GCM(bundle) with its 16-byte tag.
pub const WRAPPED_BUNDLE_LEN: usize = 32 + 12 + BUNDLE_PLAIN_LEN + 16;
const BUNDLE_INFO: &[u8] = b"link_code_pairing_key_bundle_encryption_key";
const ADV_SECRET_INFO: &[u8] = b"adv_secret";

/// Tag of the iq child and of the phone's notification.
pub const REG_TAG: &str = "link_code_companion_reg";
/// `type` of the notification that carries the phone's ephemeral key.
pub const NOTIFICATION_TYPE: &str = "link_code_companion_reg";

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// What went wrong in a link-code exchange.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum LinkCodeError {
    #[error("a link code is 8 characters of 123456789ABCDEFGHJKLMNPQRSTVWXYZ (a '-' after the fourth is allowed)")]
    Format,
    #[error("{what} is {len} bytes; expected {expected}")]
    Length {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("the link code pairing ref does not match the one the server issued")]
    RefMismatch,
    /// The key bundle does not open: the code typed on the phone was not
    /// the one shown.
    #[error("the key bundle does not decrypt (wrong link code)")]
    BundleDecrypt,
    #[error("the server refused the link code request: {0}")]
    Refused(String),
}

/// An 8-character link code, as typed on the phone (without the dash).
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode([u8; CODE_LEN]);

impl LinkCode {
    /// The code for 5 random bytes: their 40 bits, 5 at a time, most
    /// significant first.
    pub fn from_bytes(bytes: [u8; 5]) -> Self {
        let bits = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        Self(std::array::from_fn(|i| {
            let shift = 35 - 5 * i;
            ALPHABET[((bits >> shift) & 0x1f) as usize]
        }))
    }

    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; 5];
        rng.fill_bytes(&mut bytes);
        Self::from_bytes(bytes)
    }

    /// The 8 characters, as the wrapping key is derived from them.
    pub fn as_str(&self) -> &str {
        // Every byte comes from ALPHABET, which is ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// `ABCD-EFGH`, as WhatsApp shows it.
    pub fn display(&self) -> String {
        let s = self.as_str();
        format!("{}-{}", &s[..4], &s[4..])
    }
}

impl FromStr for LinkCode {
    type Err = LinkCodeError;

    /// Accepts `ABCDEFGH` or `ABCD-EFGH`, any case, surrounding spaces.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bytes = s.as_bytes();
        let digits: Vec<u8> = match bytes.len() {
            CODE_LEN => bytes.to_vec(),
            9 if bytes.get(4) == Some(&b'-') => bytes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 4)
                .map(|(_, b)| *b)
                .collect(),
            _ => return Err(LinkCodeError::Format),
        };
        let mut code = [0u8; CODE_LEN];
        for (slot, b) in code.iter_mut().zip(digits) {
            let upper = b.to_ascii_uppercase();
            if !ALPHABET.contains(&upper) {
                return Err(LinkCodeError::Format);
            }
            *slot = upper;
        }
        Ok(Self(code))
    }
}

// Hand-written: whoever holds the code can answer the pairing.
impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkCode(<redacted>)")
    }
}

/// PBKDF2-SHA256 of the code with `salt`: the AES-CTR key of a wrapped
/// ephemeral key.
pub fn code_key(code: &LinkCode, salt: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<Sha256>(code.0.as_slice(), salt, PBKDF2_ROUNDS, key.as_mut());
    key
}

/// salt ‖ iv ‖ AES-256-CTR(key = [`code_key`], iv, `public`).
pub fn wrap_ephemeral(
    code: &LinkCode,
    public: &[u8; 32],
    salt: &[u8; 32],
    iv: &[u8; 16],
) -> [u8; WRAPPED_KEY_LEN] {
    let key = code_key(code, salt);
    let mut out = [0u8; WRAPPED_KEY_LEN];
    out[..32].copy_from_slice(salt);
    out[32..48].copy_from_slice(iv);
    out[48..].copy_from_slice(public);
    Aes256Ctr::new(key.as_ref().into(), iv.into()).apply_keystream(&mut out[48..]);
    out
}

/// [`wrap_ephemeral`] with fresh salt and iv.
pub fn wrap_ephemeral_random(
    code: &LinkCode,
    public: &[u8; 32],
    rng: &mut (impl RngCore + CryptoRng),
) -> [u8; WRAPPED_KEY_LEN] {
    let mut salt = [0u8; 32];
    let mut iv = [0u8; 16];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut iv);
    wrap_ephemeral(code, public, &salt, &iv)
}

/// The public key inside [`wrap_ephemeral`]'s output. A wrong code gives a
/// wrong key, not an error: CTR mode has no integrity.
pub fn unwrap_ephemeral(code: &LinkCode, wrapped: &[u8]) -> Result<[u8; 32], LinkCodeError> {
    let wrapped: &[u8; WRAPPED_KEY_LEN] =
        wrapped.try_into().map_err(|_| LinkCodeError::Length {
            what: "wrapped ephemeral key",
            len: wrapped.len(),
            expected: WRAPPED_KEY_LEN,
        })?;
    let (salt, rest) = wrapped.split_at(32);
    let (iv, ciphertext) = rest.split_at(16);
    let key = code_key(code, salt);
    let mut public = [0u8; 32];
    public.copy_from_slice(ciphertext);
    let iv: &[u8; 16] = iv.try_into().map_err(|_| LinkCodeError::Format)?;
    Aes256Ctr::new(key.as_ref().into(), iv.into()).apply_keystream(&mut public);
    Ok(public)
}

/// What the companion hands the phone in `companion_finish`.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBundle {
    pub companion_identity: [u8; 32],
    pub primary_identity: [u8; 32],
    /// Randomness mixed into the ADV secret.
    pub adv_random: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for KeyBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyBundle").finish_non_exhaustive()
    }
}

fn bundle_cipher(ephemeral_shared: &[u8; 32], salt: &[u8]) -> Aes256Gcm {
    let mut key = Zeroizing::new([0u8; 32]);
    crypto::hkdf_sha256(ephemeral_shared, salt, BUNDLE_INFO, key.as_mut());
    Aes256Gcm::new(key.as_ref().into())
}

/// salt ‖ nonce ‖ AES-256-GCM(key = HKDF(ephemeral DH, salt,
/// "link_code_pairing_key_bundle_encryption_key"), bundle).
pub fn wrap_key_bundle(
    ephemeral_shared: &[u8; 32],
    bundle: &KeyBundle,
    salt: &[u8; 32],
    nonce: &[u8; 12],
) -> Vec<u8> {
    let mut plain = Zeroizing::new([0u8; BUNDLE_PLAIN_LEN]);
    plain[..32].copy_from_slice(&bundle.companion_identity);
    plain[32..64].copy_from_slice(&bundle.primary_identity);
    plain[64..].copy_from_slice(bundle.adv_random.as_ref());
    let sealed = bundle_cipher(ephemeral_shared, salt)
        .encrypt(
            nonce.into(),
            Payload {
                msg: plain.as_ref(),
                aad: &[],
            },
        )
        // AES-GCM fails only past 64 GiB of plaintext; this is 96 bytes.
        .unwrap_or_default();
    let mut out = Vec::with_capacity(WRAPPED_BUNDLE_LEN);
    out.extend_from_slice(salt);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens [`wrap_key_bundle`]'s output (the phone's side).
pub fn unwrap_key_bundle(
    ephemeral_shared: &[u8; 32],
    wrapped: &[u8],
) -> Result<KeyBundle, LinkCodeError> {
    if wrapped.len() != WRAPPED_BUNDLE_LEN {
        return Err(LinkCodeError::Length {
            what: "wrapped key bundle",
            len: wrapped.len(),
            expected: WRAPPED_BUNDLE_LEN,
        });
    }
    let (salt, rest) = wrapped.split_at(32);
    let (nonce, sealed) = rest.split_at(12);
    let plain = bundle_cipher(ephemeral_shared, salt)
        .decrypt(
            nonce.into(),
            Payload {
                msg: sealed,
                aad: &[],
            },
        )
        .map_err(|_| LinkCodeError::BundleDecrypt)?;
    let plain = Zeroizing::new(plain);
    let part = |range: std::ops::Range<usize>| -> Result<[u8; 32], LinkCodeError> {
        plain
            .get(range)
            .and_then(|p| p.try_into().ok())
            .ok_or(LinkCodeError::BundleDecrypt)
    };
    Ok(KeyBundle {
        companion_identity: part(0..32)?,
        primary_identity: part(32..64)?,
        adv_random: Zeroizing::new(part(64..96)?),
    })
}

/// HKDF(ephemeral DH ‖ identity DH ‖ random, no salt, "adv_secret"): the
/// key of the `pair-success` HMAC in place of the QR code's secret.
pub fn adv_secret(
    ephemeral_shared: &[u8; 32],
    identity_shared: &[u8; 32],
    adv_random: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 96]);
    ikm[..32].copy_from_slice(ephemeral_shared);
    ikm[32..64].copy_from_slice(identity_shared);
    ikm[64..].copy_from_slice(adv_random);
    let mut out = Zeroizing::new([0u8; 32]);
    crypto::hkdf_sha256(ikm.as_ref(), &[], ADV_SECRET_INFO, out.as_mut());
    out
}

/// How the companion describes itself in `companion_hello`.
#[derive(Clone, Debug)]
pub struct CompanionPlatform {
    /// Client type number (`1` = Chrome … `9` = other web client).
    pub id: String,
    /// `Browser (OS)`; the server accepts only common ones.
    pub display: String,
}

/// A link code asked for: the code, the ephemeral key wrapped under it, and
/// the `companion_hello` iq (without id) that registers it.
pub struct LinkCodeRequest {
    phone: Jid,
    code: LinkCode,
    ephemeral: KeyPair,
}

impl LinkCodeRequest {
    /// A fresh code and ephemeral key for `phone`, and the iq to send.
    pub fn start(
        phone: &PhoneNumber,
        creds: &Credentials,
        platform: &CompanionPlatform,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> (Self, Node) {
        let code = LinkCode::generate(rng);
        let ephemeral = KeyPair::generate(rng);
        let wrapped = wrap_ephemeral_random(&code, &ephemeral.public, rng);
        let phone = phone.to_jid();
        let iq = Node::new("iq")
            .attr("xmlns", "md")
            .attr("type", "set")
            .children(vec![Node::new(REG_TAG)
                .attr("jid", &phone)
                .attr("stage", "companion_hello")
                .attr("should_show_push_notification", "true")
                .children(vec![
                    Node::new("link_code_pairing_wrapped_companion_ephemeral_pub")
                        .bytes(wrapped.to_vec()),
                    Node::new("companion_server_auth_key_pub")
                        .bytes(creds.noise_key.public.to_vec()),
                    Node::new("companion_platform_id").text(platform.id.clone()),
                    Node::new("companion_platform_display").text(platform.display.clone()),
                    Node::new("link_code_pairing_nonce").bytes(vec![0]),
                ])]);
        (
            Self {
                phone,
                code,
                ephemeral,
            },
            iq,
        )
    }

    pub fn code(&self) -> &LinkCode {
        &self.code
    }

    /// The server's answer to `companion_hello`: its pairing ref, or why
    /// it refused.
    pub fn handle_reply(&self, reply: &Node) -> Result<AwaitingPhone, LinkCodeError> {
        if reply.attr_str("type") == Some("error") {
            let why = reply
                .child("error")
                .map(|e| {
                    format!(
                        "{} {}",
                        e.attr_str("code").unwrap_or("?"),
                        e.attr_str("text").unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "iq error".to_owned());
            return Err(LinkCodeError::Refused(why.trim().to_owned()));
        }
        let reference = reply
            .child(REG_TAG)
            .and_then(|r| r.child("link_code_pairing_ref"))
            .and_then(Node::content_bytes)
            .filter(|r| !r.is_empty())
            .ok_or(LinkCodeError::Missing("link_code_pairing_ref"))?
            .to_vec();
        Ok(AwaitingPhone {
            request: Self {
                phone: self.phone.clone(),
                code: self.code.clone(),
                ephemeral: self.ephemeral.clone(),
            },
            reference,
        })
    }
}

/// The code is registered; waiting for the phone's notification.
pub struct AwaitingPhone {
    request: LinkCodeRequest,
    reference: Vec<u8>,
}

/// The companion's answer to the phone: the `companion_finish` iq (without
/// id) and the ADV secret its `pair-success` will be keyed with.
pub struct Finish {
    pub iq: Node,
    pub adv_secret: Zeroizing<[u8; 32]>,
}

impl AwaitingPhone {
    pub fn code(&self) -> &LinkCode {
        &self.request.code
    }

    /// The `<link_code_companion_reg>` child of the phone's notification:
    /// unwraps the phone's ephemeral key with our code and builds
    /// `companion_finish`. Does not consume `self`: if the phone typed a
    /// wrong code, it may try again with a new notification.
    pub fn handle_notification(
        &self,
        reg: &Node,
        creds: &Credentials,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Finish, LinkCodeError> {
        let field = |tag: &'static str| {
            reg.child(tag)
                .and_then(Node::content_bytes)
                .ok_or(LinkCodeError::Missing(tag))
        };
        let reference = field("link_code_pairing_ref")?;
        if reference != self.reference.as_slice() {
            return Err(LinkCodeError::RefMismatch);
        }
        let wrapped = field("link_code_pairing_wrapped_primary_ephemeral_pub")?;
        let primary_identity = field("primary_identity_pub")?;
        let primary_identity: [u8; 32] =
            primary_identity
                .try_into()
                .map_err(|_| LinkCodeError::Length {
                    what: "primary identity key",
                    len: primary_identity.len(),
                    expected: 32,
                })?;
        let primary_ephemeral = unwrap_ephemeral(&self.request.code, wrapped)?;
        let ephemeral_shared = self.request.ephemeral.dh(&primary_ephemeral);
        let identity_shared = creds.identity_key.dh(&primary_identity);
        let mut adv_random = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(adv_random.as_mut());
        let mut salt = [0u8; 32];
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut salt);
        rng.fill_bytes(&mut nonce);
        let bundle = KeyBundle {
            companion_identity: creds.identity_key.public,
            primary_identity,
            adv_random,
        };
        let wrapped_bundle = wrap_key_bundle(&ephemeral_shared, &bundle, &salt, &nonce);
        let adv_secret = adv_secret(&ephemeral_shared, &identity_shared, &bundle.adv_random);
        let iq = Node::new("iq")
            .attr("xmlns", "md")
            .attr("type", "set")
            .children(vec![Node::new(REG_TAG)
                .attr("jid", &self.request.phone)
                .attr("stage", "companion_finish")
                .children(vec![
                    Node::new("link_code_pairing_wrapped_key_bundle").bytes(wrapped_bundle),
                    Node::new("companion_identity_public")
                        .bytes(creds.identity_key.public.to_vec()),
                    Node::new("link_code_pairing_ref").bytes(self.reference.clone()),
                ])]);
        Ok(Finish { iq, adv_secret })
    }
}

#[cfg(test)]
#[path = "link_code_tests.rs"]
mod tests;
