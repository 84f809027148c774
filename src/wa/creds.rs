//! A linked device's long-lived credentials: the keys created before pairing
//! and the account identity learned from it. Pure data plus its storage
//! encoding; never imports the store or the runtime.

use prost::Message;
use rand::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::wa::crypto::KeyPair;
use crate::wa::jid::Jid;

pub use crate::wa::signal::SignedPreKey;

/// What pairing taught us about the account this device belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Own device JID, `phone:device@s.whatsapp.net`.
    pub jid: Jid,
    /// Own LID, when the server told us.
    pub lid: Option<Jid>,
    /// Platform of the primary device (e.g. `android`).
    pub platform: String,
    /// Business name, for business accounts.
    pub business_name: Option<String>,
    /// Serialized `ADVSignedDeviceIdentity` including the account signature key,
    /// sent as `<device-identity>` alongside prekey messages.
    pub signed_identity: Vec<u8>,
    /// `ADVDeviceIdentity.key_index`.
    pub key_index: u32,
    /// Identity key of the primary device (the account signature key).
    pub primary_identity: [u8; 32],
}

/// Everything a device needs to log in again. Private keys are zeroized on drop
/// and never printed.
#[derive(Clone)]
pub struct Credentials {
    pub noise_key: KeyPair,
    pub identity_key: KeyPair,
    pub signed_prekey: SignedPreKey,
    pub registration_id: u32,
    pub adv_secret: Zeroizing<[u8; 32]>,
    pub push_name: String,
    /// `None` until the device is paired.
    pub account: Option<Account>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("registration_id", &self.registration_id)
            .field("account", &self.account.as_ref().map(|a| a.jid.to_string()))
            .finish_non_exhaustive()
    }
}

/// The prefix Signal puts before a Curve25519 public key in signed material.
pub const DJB_KEY_TYPE: u8 = 0x05;

impl Credentials {
    /// Fresh keys for a device that has not been paired yet.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let noise_key = KeyPair::generate(rng);
        let identity_key = KeyPair::generate(rng);
        let signed_prekey = SignedPreKey::generate(1, &identity_key, rng)
            .expect("1 is a valid 24-bit signed prekey id");
        let mut adv_secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(adv_secret.as_mut());
        let registration_id = crate::wa::signal::generate_registration_id(rng);
        Self {
            noise_key,
            identity_key,
            signed_prekey,
            registration_id,
            adv_secret,
            push_name: String::new(),
            account: None,
        }
    }

    /// The storage encoding (a private protobuf). Contains private keys: the
    /// caller must encrypt it at rest.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let stored = StoredCredentials {
            version: 1,
            noise_private: self.noise_key.private_bytes().to_vec(),
            identity_private: self.identity_key.private_bytes().to_vec(),
            signed_prekey_id: self.signed_prekey.id,
            signed_prekey_private: self.signed_prekey.key.private_bytes().to_vec(),
            signed_prekey_signature: self.signed_prekey.signature.to_vec(),
            registration_id: self.registration_id,
            adv_secret: self.adv_secret.to_vec(),
            push_name: self.push_name.clone(),
            noise_public: self.noise_key.public.to_vec(),
            identity_public: self.identity_key.public.to_vec(),
            signed_prekey_public: self.signed_prekey.key.public.to_vec(),
            account: self.account.as_ref().map(|a| StoredAccount {
                jid: a.jid.to_string(),
                lid: a.lid.as_ref().map(ToString::to_string).unwrap_or_default(),
                platform: a.platform.clone(),
                business_name: a.business_name.clone().unwrap_or_default(),
                signed_identity: a.signed_identity.clone(),
                key_index: a.key_index,
                primary_identity: a.primary_identity.to_vec(),
            }),
        };
        let out = Zeroizing::new(stored.encode_to_vec());
        // The intermediate struct holds private key copies too.
        zeroize_stored(stored);
        out
    }

    /// Parses [`Credentials::encode`] output.
    pub fn decode(data: &[u8]) -> Result<Self, CredentialsError> {
        let stored = StoredCredentials::decode(data).map_err(|_| CredentialsError::Malformed)?;
        if stored.version != 1 {
            return Err(CredentialsError::Version(stored.version));
        }
        let key = |bytes: &[u8], what: &'static str| -> Result<[u8; 32], CredentialsError> {
            bytes.try_into().map_err(|_| CredentialsError::Field(what))
        };
        let account = match &stored.account {
            None => None,
            Some(a) => Some(Account {
                jid: a.jid.parse().map_err(|_| CredentialsError::Field("jid"))?,
                lid: if a.lid.is_empty() {
                    None
                } else {
                    Some(a.lid.parse().map_err(|_| CredentialsError::Field("lid"))?)
                },
                platform: a.platform.clone(),
                business_name: (!a.business_name.is_empty()).then(|| a.business_name.clone()),
                signed_identity: a.signed_identity.clone(),
                key_index: a.key_index,
                primary_identity: key(&a.primary_identity, "primary_identity")?,
            }),
        };
        let signature: [u8; 64] = stored
            .signed_prekey_signature
            .as_slice()
            .try_into()
            .map_err(|_| CredentialsError::Field("signed_prekey_signature"))?;
        // Records written before the public keys were kept derive them.
        let pair = |private: &[u8], public: &[u8], what| -> Result<KeyPair, CredentialsError> {
            let private = key(private, what)?;
            Ok(match <[u8; 32]>::try_from(public) {
                Ok(public) => KeyPair::from_stored(private, public),
                Err(_) => KeyPair::from_private(private),
            })
        };
        let creds = Self {
            noise_key: pair(&stored.noise_private, &stored.noise_public, "noise_private")?,
            identity_key: pair(
                &stored.identity_private,
                &stored.identity_public,
                "identity_private",
            )?,
            signed_prekey: SignedPreKey {
                id: stored.signed_prekey_id,
                key: pair(
                    &stored.signed_prekey_private,
                    &stored.signed_prekey_public,
                    "signed_prekey_private",
                )?,
                signature,
            },
            registration_id: stored.registration_id,
            adv_secret: Zeroizing::new(key(&stored.adv_secret, "adv_secret")?),
            push_name: stored.push_name.clone(),
            account,
        };
        zeroize_stored(stored);
        Ok(creds)
    }
}

fn zeroize_stored(mut stored: StoredCredentials) {
    use zeroize::Zeroize;
    stored.noise_private.zeroize();
    stored.identity_private.zeroize();
    stored.signed_prekey_private.zeroize();
    stored.adv_secret.zeroize();
}

/// Why stored credentials could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialsError {
    #[error("credentials record is not valid protobuf")]
    Malformed,
    #[error("credentials record has unsupported version {0}")]
    Version(u32),
    #[error("credentials field {0} is invalid")]
    Field(&'static str),
}

#[derive(Clone, PartialEq, Message)]
struct StoredCredentials {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    noise_private: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    identity_private: Vec<u8>,
    #[prost(uint32, tag = "4")]
    signed_prekey_id: u32,
    #[prost(bytes = "vec", tag = "5")]
    signed_prekey_private: Vec<u8>,
    #[prost(bytes = "vec", tag = "6")]
    signed_prekey_signature: Vec<u8>,
    #[prost(uint32, tag = "7")]
    registration_id: u32,
    #[prost(bytes = "vec", tag = "8")]
    adv_secret: Vec<u8>,
    #[prost(string, tag = "9")]
    push_name: String,
    #[prost(message, optional, tag = "10")]
    account: Option<StoredAccount>,
    /// The public halves of the three key pairs, so reading credentials
    /// needs no scalar multiplication (empty in older records).
    #[prost(bytes = "vec", tag = "11")]
    noise_public: Vec<u8>,
    #[prost(bytes = "vec", tag = "12")]
    identity_public: Vec<u8>,
    #[prost(bytes = "vec", tag = "13")]
    signed_prekey_public: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct StoredAccount {
    #[prost(string, tag = "1")]
    jid: String,
    #[prost(string, tag = "2")]
    lid: String,
    #[prost(string, tag = "3")]
    platform: String,
    #[prost(string, tag = "4")]
    business_name: String,
    #[prost(bytes = "vec", tag = "5")]
    signed_identity: Vec<u8>,
    #[prost(uint32, tag = "6")]
    key_index: u32,
    #[prost(bytes = "vec", tag = "7")]
    primary_identity: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn round_trip_unpaired_and_paired() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut creds = Credentials::generate(&mut rng);
        let back = Credentials::decode(&creds.encode()).expect("decodes");
        assert_eq!(back.noise_key.public, creds.noise_key.public);
        assert_eq!(back.identity_key.public, creds.identity_key.public);
        assert_eq!(back.signed_prekey.signature, creds.signed_prekey.signature);
        assert_eq!(back.registration_id, creds.registration_id);
        assert!(back.account.is_none());

        creds.account = Some(Account {
            jid: "15551234567:3@s.whatsapp.net".parse().expect("jid"),
            lid: None,
            platform: "android".into(),
            business_name: None,
            signed_identity: vec![1, 2, 3],
            key_index: 2,
            primary_identity: [9; 32],
        });
        let back = Credentials::decode(&creds.encode()).expect("decodes");
        assert_eq!(back.account, creds.account);
    }

    #[test]
    fn records_without_public_keys_derive_them() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let creds = Credentials::generate(&mut rng);
        let mut older = StoredCredentials::decode(creds.encode().as_slice()).expect("decodes");
        assert_eq!(older.identity_public, creds.identity_key.public.to_vec());
        older.noise_public.clear();
        older.identity_public.clear();
        older.signed_prekey_public.clear();
        let back = Credentials::decode(&older.encode_to_vec()).expect("decodes");
        assert_eq!(back.noise_key.public, creds.noise_key.public);
        assert_eq!(back.identity_key.public, creds.identity_key.public);
        assert_eq!(
            back.signed_prekey.key.public,
            creds.signed_prekey.key.public
        );
    }

    #[test]
    fn signed_prekey_signature_verifies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let creds = Credentials::generate(&mut rng);
        let mut msg = vec![DJB_KEY_TYPE];
        msg.extend_from_slice(&creds.signed_prekey.key.public);
        assert!(crate::wa::crypto::verify(
            &creds.identity_key.public,
            &msg,
            &creds.signed_prekey.signature
        ));
    }

    #[test]
    fn rejects_garbage_and_short_keys() {
        assert_eq!(
            Credentials::decode(&[0x12, 0x05, 0x01]).err(),
            Some(CredentialsError::Malformed)
        );
        let bad = StoredCredentials {
            version: 1,
            noise_private: vec![1; 5],
            signed_prekey_signature: vec![0; 64],
            ..Default::default()
        };
        assert_eq!(
            Credentials::decode(&bad.encode_to_vec()).err(),
            Some(CredentialsError::Field("noise_private"))
        );
    }
}
