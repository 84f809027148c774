//! Companion side of QR pairing: checks the phone's `pair-success` (ADV HMAC
//! and account signature), signs the device identity, and builds the
//! `pair-device-sign` reply. Pure functions over nodes and keys.

use prost::Message;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;

use crate::proto::wa::{
    AdvDeviceIdentity, AdvEncryptionType, AdvSignedDeviceIdentity, AdvSignedDeviceIdentityHmac,
};
use crate::wa::adv::{account_signature_message, details_hmac, device_signature_message};
use crate::wa::binary::Node;
use crate::wa::creds::{Account, Credentials};
use crate::wa::crypto;
use crate::wa::jid::Jid;

/// Why a `pair-success` was refused. Each maps to the iq error WhatsApp Web
/// answers with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PairError {
    #[error("pair-success is missing {0}")]
    Missing(&'static str),
    #[error("device identity HMAC does not match the adv secret")]
    HmacMismatch,
    #[error("account signature does not verify")]
    SignatureMismatch,
    #[error("device identity is malformed: {0}")]
    Malformed(&'static str),
    #[error("link code pairing: {0}")]
    LinkCode(#[from] crate::wa::link_code::LinkCodeError),
}

impl PairError {
    /// `(code, text)` of the iq error sent back to the server.
    pub fn iq_error(&self) -> (u16, &'static str) {
        match self {
            PairError::HmacMismatch => (401, "hmac-mismatch"),
            PairError::SignatureMismatch => (401, "signature-mismatch"),
            PairError::Missing(_) | PairError::Malformed(_) | PairError::LinkCode(_) => {
                (500, "internal-error")
            }
        }
    }
}

/// Result of a verified pairing: the reply to send and what to store.
#[derive(Debug)]
pub struct Paired {
    pub reply: Node,
    pub account: Account,
}

/// Verifies `<iq><pair-success>…</pair-success></iq>` against our keys and
/// builds the `pair-device-sign` reply.
pub fn handle_pair_success(
    iq_id: &str,
    pair_success: &Node,
    creds: &Credentials,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Paired, PairError> {
    let identity_node = pair_success
        .child("device-identity")
        .ok_or(PairError::Missing("device-identity"))?;
    let container_bytes = identity_node
        .content_bytes()
        .ok_or(PairError::Missing("device-identity content"))?;
    let device_jid = pair_success
        .child("device")
        .and_then(|d| d.attr_jid("jid"))
        .ok_or(PairError::Missing("device jid"))?;
    let lid = pair_success.child("device").and_then(|d| d.attr_jid("lid"));
    let platform = pair_success
        .child("platform")
        .and_then(|p| p.attr_string("name"))
        .unwrap_or_default();
    let business_name = pair_success
        .child("biz")
        .and_then(|b| b.attr_string("name"))
        .filter(|n| !n.is_empty());

    let container = AdvSignedDeviceIdentityHmac::decode(container_bytes)
        .map_err(|_| PairError::Malformed("ADVSignedDeviceIdentityHMAC"))?;
    let hosted = container.account_type == Some(AdvEncryptionType::Hosted as i32);
    let details = container
        .details
        .as_deref()
        .ok_or(PairError::Missing("hmac details"))?;
    let mac = container
        .hmac
        .as_deref()
        .ok_or(PairError::Missing("hmac"))?;
    let expected = details_hmac(creds.adv_secret.as_ref(), details, hosted);
    if !bool::from(expected.as_slice().ct_eq(mac)) {
        return Err(PairError::HmacMismatch);
    }

    let mut signed = AdvSignedDeviceIdentity::decode(details)
        .map_err(|_| PairError::Malformed("ADVSignedDeviceIdentity"))?;
    let identity_details = signed
        .details
        .clone()
        .ok_or(PairError::Missing("identity details"))?;
    let account_key: [u8; 32] = signed
        .account_signature_key
        .as_deref()
        .and_then(|k| k.try_into().ok())
        .ok_or(PairError::Malformed("account signature key"))?;
    let account_sig: [u8; 64] = signed
        .account_signature
        .as_deref()
        .and_then(|s| s.try_into().ok())
        .ok_or(PairError::Malformed("account signature"))?;
    let own_identity = creds.identity_key.public;
    let message = account_signature_message(&identity_details, &own_identity, hosted);
    if !crypto::verify(&account_key, &message, &account_sig) {
        return Err(PairError::SignatureMismatch);
    }
    let device_message =
        device_signature_message(&identity_details, &own_identity, &account_key, hosted);
    let device_sig = creds.identity_key.sign(&device_message, rng);
    signed.device_signature = Some(device_sig.to_vec());

    let device_identity = AdvDeviceIdentity::decode(identity_details.as_slice())
        .map_err(|_| PairError::Malformed("ADVDeviceIdentity"))?;
    let key_index = device_identity.key_index.unwrap_or(0);

    let stored_identity = signed.encode_to_vec();
    // The reply carries the identity without the account key: the server
    // already has it.
    signed.account_signature_key = None;
    let reply = Node::new("iq")
        .attr("to", Jid::server_jid())
        .attr("type", "result")
        .attr("id", iq_id)
        .children(vec![Node::new("pair-device-sign").children(vec![
            Node::new("device-identity")
                .attr("key-index", key_index.to_string())
                .bytes(signed.encode_to_vec()),
        ])]);
    Ok(Paired {
        reply,
        account: Account {
            jid: device_jid,
            lid,
            platform,
            business_name,
            signed_identity: stored_identity,
            key_index,
            primary_identity: account_key,
        },
    })
}

/// The iq error reply for a refused pairing.
pub fn pair_error_reply(iq_id: &str, err: &PairError) -> Node {
    let (code, text) = err.iq_error();
    Node::new("iq")
        .attr("to", Jid::server_jid())
        .attr("type", "error")
        .attr("id", iq_id)
        .children(vec![Node::new("error")
            .attr("code", code.to_string())
            .attr("text", text)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::crypto::KeyPair;
    use rand::SeedableRng;

    /// Builds what a phone sends, signed with `phone` for `creds`.
    fn pair_success(
        creds: &Credentials,
        phone: &KeyPair,
        adv_secret: &[u8],
        rng: &mut rand::rngs::StdRng,
    ) -> Node {
        let details = AdvDeviceIdentity {
            raw_id: Some(77),
            timestamp: Some(1_700_000_000),
            key_index: Some(3),
            ..Default::default()
        }
        .encode_to_vec();
        let msg = account_signature_message(&details, &creds.identity_key.public, false);
        let sig = phone.sign(&msg, rng);
        let signed = AdvSignedDeviceIdentity {
            details: Some(details),
            account_signature_key: Some(phone.public.to_vec()),
            account_signature: Some(sig.to_vec()),
            device_signature: None,
        }
        .encode_to_vec();
        let hmac = details_hmac(adv_secret, &signed, false);
        let container = AdvSignedDeviceIdentityHmac {
            details: Some(signed),
            hmac: Some(hmac.to_vec()),
            account_type: None,
        }
        .encode_to_vec();
        Node::new("pair-success").children(vec![
            Node::new("device-identity")
                .attr("key-index", "3")
                .bytes(container),
            Node::new("platform").attr("name", "android"),
            Node::new("device").attr(
                "jid",
                Jid::with_device("15551234567", 4, crate::wa::jid::DEFAULT_USER_SERVER),
            ),
        ])
    }

    #[test]
    fn accepts_valid_and_signs_device() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let creds = Credentials::generate(&mut rng);
        let phone = KeyPair::generate(&mut rng);
        let node = pair_success(&creds, &phone, creds.adv_secret.as_ref(), &mut rng);
        let paired = handle_pair_success("42", &node, &creds, &mut rng).expect("pairs");
        assert_eq!(
            paired.account.jid.to_string(),
            "15551234567:4@s.whatsapp.net"
        );
        assert_eq!(paired.account.key_index, 3);
        assert_eq!(paired.account.platform, "android");
        let sign = paired.reply.child("pair-device-sign").expect("sign node");
        let ident = sign.child("device-identity").expect("identity");
        assert_eq!(ident.attr_str("key-index"), Some("3"));
        let sent = AdvSignedDeviceIdentity::decode(ident.content_bytes().expect("bytes"))
            .expect("decodes");
        assert!(sent.account_signature_key.is_none());
        let dsig: [u8; 64] = sent
            .device_signature
            .as_deref()
            .expect("sig")
            .try_into()
            .expect("64");
        let msg = device_signature_message(
            sent.details.as_deref().expect("details"),
            &creds.identity_key.public,
            &phone.public,
            false,
        );
        assert!(crypto::verify(&creds.identity_key.public, &msg, &dsig));
    }

    #[test]
    fn rejects_wrong_adv_secret() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let creds = Credentials::generate(&mut rng);
        let phone = KeyPair::generate(&mut rng);
        let node = pair_success(&creds, &phone, &[1u8; 32], &mut rng);
        let err = handle_pair_success("1", &node, &creds, &mut rng).expect_err("must fail");
        assert_eq!(err, PairError::HmacMismatch);
        let reply = pair_error_reply("1", &err);
        let e = reply.child("error").expect("error child");
        assert_eq!(e.attr_str("code"), Some("401"));
        assert_eq!(e.attr_str("text"), Some("hmac-mismatch"));
    }

    #[test]
    fn rejects_signature_for_another_device() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let creds = Credentials::generate(&mut rng);
        let other = Credentials::generate(&mut rng);
        let phone = KeyPair::generate(&mut rng);
        // Signed for `other`'s identity, HMAC'd with our secret.
        let node = pair_success(&other, &phone, creds.adv_secret.as_ref(), &mut rng);
        let err = handle_pair_success("1", &node, &creds, &mut rng).expect_err("must fail");
        assert_eq!(err, PairError::SignatureMismatch);
    }
}
