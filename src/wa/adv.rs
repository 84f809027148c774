//! ADV (account/device verification) messages signed and checked while a
//! companion device is linked. Pure functions over bytes; must not import
//! tokio, the store, the clock or `sim`.
//!
//! The phone signs `ADVDeviceIdentity` details together with the companion's
//! identity key (the *account signature*); the companion countersigns them
//! together with the phone's key (the *device signature*); the whole signed
//! identity travels inside an HMAC keyed with the secret shown in the QR code,
//! which proves that the phone really scanned this companion's code.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Prefix of the message the phone signs for an end-to-end account.
pub const ACCOUNT_SIGNATURE_PREFIX: [u8; 2] = [0x06, 0x00];
/// Prefix of the message the companion signs for an end-to-end account.
pub const DEVICE_SIGNATURE_PREFIX: [u8; 2] = [0x06, 0x01];
/// Prefix of the account signature (and of the HMAC input) for a hosted account.
pub const HOSTED_ACCOUNT_SIGNATURE_PREFIX: [u8; 2] = [0x06, 0x05];
/// Prefix of the device signature for a hosted account.
pub const HOSTED_DEVICE_SIGNATURE_PREFIX: [u8; 2] = [0x06, 0x06];

/// The bytes the phone signs with its identity key: prefix ‖ details ‖
/// companion identity public key.
pub fn account_signature_message(
    details: &[u8],
    companion_identity: &[u8; 32],
    hosted: bool,
) -> Vec<u8> {
    let prefix = if hosted {
        HOSTED_ACCOUNT_SIGNATURE_PREFIX
    } else {
        ACCOUNT_SIGNATURE_PREFIX
    };
    let mut message = Vec::with_capacity(prefix.len() + details.len() + 32);
    message.extend_from_slice(&prefix);
    message.extend_from_slice(details);
    message.extend_from_slice(companion_identity);
    message
}

/// The bytes the companion signs with its identity key: prefix ‖ details ‖
/// companion identity public key ‖ the phone's account signature key.
pub fn device_signature_message(
    details: &[u8],
    companion_identity: &[u8; 32],
    account_signature_key: &[u8; 32],
    hosted: bool,
) -> Vec<u8> {
    let prefix = if hosted {
        HOSTED_DEVICE_SIGNATURE_PREFIX
    } else {
        DEVICE_SIGNATURE_PREFIX
    };
    let mut message = Vec::with_capacity(prefix.len() + details.len() + 64);
    message.extend_from_slice(&prefix);
    message.extend_from_slice(details);
    message.extend_from_slice(companion_identity);
    message.extend_from_slice(account_signature_key);
    message
}

/// HMAC-SHA256 keyed with the QR code's ADV secret over the serialized
/// `ADVSignedDeviceIdentity` (prefixed with `[6, 5]` for hosted accounts).
pub fn details_hmac(adv_secret: &[u8], details: &[u8], hosted: bool) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(adv_secret)
        .expect("HMAC-SHA256 accepts keys of every length");
    if hosted {
        mac.update(&HOSTED_ACCOUNT_SIGNATURE_PREFIX);
    }
    mac.update(details);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn account_message_layout() {
        let identity = [0xAB; 32];
        let message = account_signature_message(b"details", &identity, false);
        assert_eq!(&message[..2], &[6, 0]);
        assert_eq!(&message[2..9], b"details");
        assert_eq!(&message[9..], &identity);
        let hosted = account_signature_message(b"details", &identity, true);
        assert_eq!(&hosted[..2], &[6, 5]);
        assert_eq!(&hosted[2..], &message[2..]);
    }

    #[test]
    fn device_message_layout() {
        let identity = [0x11; 32];
        let account = [0x22; 32];
        let message = device_signature_message(b"abc", &identity, &account, false);
        assert_eq!(message.len(), 2 + 3 + 64);
        assert_eq!(&message[..2], &[6, 1]);
        assert_eq!(&message[2..5], b"abc");
        assert_eq!(&message[5..37], &identity);
        assert_eq!(&message[37..], &account);
        let hosted = device_signature_message(b"abc", &identity, &account, true);
        assert_eq!(&hosted[..2], &[6, 6]);
    }

    // Expected values computed independently with Node's crypto.createHmac.
    #[test]
    fn hmac_matches_reference() {
        let details = hex::decode("0801100218022003").expect("valid hex literal");
        assert_eq!(
            hex::encode(details_hmac(&key(), &details, false)),
            "865d4274a00a7fbb0525ffb65731ff8ff9bcfb838311f494e69577833bf4bdbb"
        );
        assert_eq!(
            hex::encode(details_hmac(&key(), &details, true)),
            "42c9b2954ea71972931a73cdfb2c353501496d9790d2d28a43a2b795fdaa5bd9"
        );
    }

    #[test]
    fn hmac_depends_on_secret() {
        let mut other = key();
        other[0] ^= 1;
        assert_ne!(
            details_hmac(&key(), b"x", false),
            details_hmac(&other, b"x", false)
        );
    }
}
