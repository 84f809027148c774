//! Stanzas the simulated server sends, and parsers for the client stanzas
//! and registration data it reads. Pure functions over nodes and bytes; no
//! I/O, imports `wa` only.

use prost::Message as _;

use super::registry::{CompanionBundle, PairRefusal, SignedPreKey};
use crate::proto::wa::client_payload::DevicePairingRegistrationData;
use crate::proto::wa::SyncdPatch;
use crate::proto::wa::{device_props, AdvSignedDeviceIdentity, DeviceProps};
use crate::wa::adv::device_signature_message;
use crate::wa::appstate;
use crate::wa::binary::Node;
use crate::wa::crypto::verify;
use crate::wa::jid::Jid;

/// Signal's key type byte (Curve25519), prefixed to signed public keys.
pub(crate) const KEY_TYPE_DJB: u8 = 0x05;
/// Most one-time prekeys accepted in one upload.
const MAX_PREKEYS_PER_UPLOAD: usize = 2000;

/// Why a client stanza or registration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StanzaError {
    #[error("missing or malformed {0}")]
    Malformed(&'static str),
    #[error("signed prekey signature does not verify with the identity key")]
    BadSignedPreKey,
    #[error("identity key differs from the registered one")]
    IdentityChanged,
    #[error("more than {MAX_PREKEYS_PER_UPLOAD} prekeys in one upload")]
    TooManyPreKeys,
    #[error("device-identity details differ from the ones the phone signed")]
    DetailsChanged,
    #[error("key-index differs from the one the phone assigned")]
    KeyIndexChanged,
    #[error("device signature does not verify with the companion's identity key")]
    BadDeviceSignature,
}

/// `<iq from=s.whatsapp.net type="result" id=ID>children</iq>`.
pub(crate) fn iq_result(id: &str, children: Vec<Node>) -> Node {
    let iq = Node::new("iq")
        .attr("from", Jid::server_jid())
        .attr("type", "result")
        .attr("id", id);
    if children.is_empty() {
        iq
    } else {
        iq.children(children)
    }
}

/// Most collections one `w:sync:app:state` query may name (WhatsApp has
/// five); more are ignored.
const MAX_SYNC_COLLECTIONS: usize = 0x10;

/// The answer to `<iq xmlns="w:sync:app:state"><sync><collection name
/// version …/>…</sync></iq>`: for each collection named, `answer` gives
/// the collection's version, the encoded reference of its snapshot on the
/// media host if it comes with one, and its patches after the version asked
/// for (or after the snapshot). Neither: the collection comes back as it
/// was asked, so a client's sync of it ends.
pub(crate) fn app_state_sync_result(
    id: &str,
    iq: &Node,
    answer: impl Fn(&str, u64) -> (u64, Option<Vec<u8>>, Vec<SyncdPatch>),
) -> Node {
    let collections: Vec<Node> = iq
        .child("sync")
        .into_iter()
        .flat_map(|sync| sync.children_by_tag("collection"))
        .filter_map(|collection| {
            let name = collection.attr_string("name")?;
            let asked = collection.attr_u64("version").unwrap_or(0);
            let (version, snapshot, patches) = answer(&name, asked);
            Some(appstate::sync_answer_with_snapshot(
                &name, version, snapshot, &patches,
            ))
        })
        .take(MAX_SYNC_COLLECTIONS)
        .collect();
    iq_result(id, vec![Node::new("sync").children(collections)])
}

/// `<iq from=s.whatsapp.net type="error" id=ID><error code text/></iq>`.
pub(crate) fn iq_error(id: &str, code: u16, text: &str) -> Node {
    Node::new("iq")
        .attr("from", Jid::server_jid())
        .attr("type", "error")
        .attr("id", id)
        .children(vec![Node::new("error")
            .attr("code", code.to_string())
            .attr("text", text)])
}

/// The QR request: six refs the companion shows one after another.
pub(crate) fn pair_device(id: &str, refs: &[String]) -> Node {
    let refs = refs
        .iter()
        .map(|r| Node::new("ref").bytes(r.as_bytes().to_vec()))
        .collect();
    Node::new("iq")
        .attr("from", Jid::server_jid())
        .attr("type", "set")
        .attr("id", id)
        .attr("xmlns", "md")
        .children(vec![Node::new("pair-device").children(refs)])
}

/// The phone accepted the companion: its signed device identity, its JID
/// and, as WhatsApp's server does, the same device under the account's LID
/// (`lid`, when the account has one).
pub(crate) fn pair_success(
    id: &str,
    now: u64,
    key_index: u32,
    device_identity: Vec<u8>,
    device: &Jid,
    lid: Option<&Jid>,
) -> Node {
    let mut device_node = Node::new("device").attr("jid", device.clone());
    if let Some(lid) = lid {
        device_node = device_node.attr("lid", lid.clone());
    }
    Node::new("iq")
        .attr("from", Jid::server_jid())
        .attr("type", "set")
        .attr("id", id)
        .attr("xmlns", "md")
        .attr("t", now.to_string())
        .children(vec![Node::new("pair-success").children(vec![
            Node::new("device-identity")
                .attr("key-index", key_index.to_string())
                .bytes(device_identity),
            Node::new("platform").attr("name", "android"),
            device_node,
        ])])
}

/// Login accepted; `lid` is the account's LID (user JID).
pub(crate) fn success(now: u64, creation: u64, lid: Option<&Jid>) -> Node {
    let node = Node::new("success")
        .attr("t", now.to_string())
        .attr("creation", creation.to_string());
    match lid {
        Some(lid) => node.attr("lid", lid.clone()),
        None => node,
    }
}

/// Login refused (`reason` as in WhatsApp's ConnectFailureReason).
pub(crate) fn failure(reason: u16) -> Node {
    Node::new("failure").attr("reason", reason.to_string())
}

/// End of the offline queue.
pub(crate) fn offline_marker(count: usize) -> Node {
    Node::new("ib")
        .attr("from", Jid::server_jid())
        .children(vec![Node::new("offline").attr("count", count.to_string())])
}

/// `<stream:error code=N/>`.
pub(crate) fn stream_error(code: u32) -> Node {
    Node::new("stream:error").attr("code", code.to_string())
}

/// Another connection of the same device took over.
pub(crate) fn stream_replaced() -> Node {
    Node::new("stream:error").children(vec![Node::new("conflict").attr("type", "replaced")])
}

/// The device was unlinked.
pub(crate) fn stream_device_removed() -> Node {
    Node::new("stream:error")
        .attr("code", "401")
        .children(vec![Node::new("conflict").attr("type", "device_removed")])
}

/// The node that closes the XML stream, sent after a stream error.
pub(crate) fn stream_end() -> Node {
    Node::new("xmlstreamend")
}

/// Minimal privacy settings: everything visible to everyone, but read
/// receipts when the account keeps them to itself.
pub(crate) fn privacy_settings(receipts_hidden: bool) -> Node {
    let read_receipts = if receipts_hidden { "none" } else { "all" };
    let categories = [
        ("last", "all"),
        ("online", "all"),
        ("profile", "all"),
        ("status", "all"),
        ("groupadd", "all"),
        ("readreceipts", read_receipts),
        ("calladd", "all"),
    ];
    Node::new("privacy").children(
        categories
            .iter()
            .map(|(name, value)| {
                Node::new("category")
                    .attr("name", *name)
                    .attr("value", *value)
            })
            .collect(),
    )
}

/// Reads a big-endian unsigned integer of 1..=4 bytes.
pub(crate) fn be_uint(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    Some(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// Big-endian bytes of `value`, `len` bytes long (the low-order bytes).
pub(crate) fn be_bytes(value: u32, len: usize) -> Vec<u8> {
    let full = value.to_be_bytes();
    full[full.len().saturating_sub(len)..].to_vec()
}

fn key32(bytes: Option<&[u8]>, what: &'static str) -> Result<[u8; 32], StanzaError> {
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(StanzaError::Malformed(what))
}

fn sig64(bytes: Option<&[u8]>, what: &'static str) -> Result<[u8; 64], StanzaError> {
    bytes
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or(StanzaError::Malformed(what))
}

/// Checks a signed prekey's signature: XEdDSA by the identity key over
/// `0x05 ‖ public`.
fn check_signed_prekey(identity: &[u8; 32], key: &SignedPreKey) -> Result<(), StanzaError> {
    let mut message = [0u8; 33];
    message[0] = KEY_TYPE_DJB;
    message[1..].copy_from_slice(&key.public);
    if verify(identity, &message, &key.signature) {
        Ok(())
    } else {
        Err(StanzaError::BadSignedPreKey)
    }
}

/// The companion's keys from its registration payload, signature checked.
pub(crate) fn registration_bundle(
    data: &DevicePairingRegistrationData,
) -> Result<CompanionBundle, StanzaError> {
    let registration_id = data
        .e_regid
        .as_deref()
        .and_then(be_uint)
        .ok_or(StanzaError::Malformed("registration id"))?;
    if data.e_keytype.as_deref() != Some(&[KEY_TYPE_DJB][..]) {
        return Err(StanzaError::Malformed("key type"));
    }
    let identity = key32(data.e_ident.as_deref(), "identity key")?;
    let signed_prekey = SignedPreKey {
        id: data
            .e_skey_id
            .as_deref()
            .filter(|b| b.len() == 3)
            .and_then(be_uint)
            .ok_or(StanzaError::Malformed("signed prekey id"))?,
        public: key32(data.e_skey_val.as_deref(), "signed prekey")?,
        signature: sig64(data.e_skey_sig.as_deref(), "signed prekey signature")?,
    };
    check_signed_prekey(&identity, &signed_prekey)?;
    Ok(CompanionBundle {
        registration_id,
        identity,
        signed_prekey,
    })
}

/// A human-readable platform from the registration's DeviceProps, e.g.
/// `CHROME (Ubuntu)`.
pub(crate) fn platform_name(data: &DevicePairingRegistrationData) -> String {
    let Some(props) = data
        .device_props
        .as_deref()
        .and_then(|b| DeviceProps::decode(b).ok())
    else {
        return "UNKNOWN".to_owned();
    };
    let kind = device_props::PlatformType::try_from(props.platform_type.unwrap_or_default())
        .map_or("UNKNOWN", |p| p.as_str_name());
    match props.os.as_deref() {
        Some(os) if !os.is_empty() => format!("{kind} ({os})"),
        _ => kind.to_owned(),
    }
}

/// Whether the companion asked for the whole history at registration
/// (`DeviceProps.requireFullSync`).
pub(crate) fn requires_full_sync(data: &DevicePairingRegistrationData) -> bool {
    data.device_props
        .as_deref()
        .and_then(|b| DeviceProps::decode(b).ok())
        .and_then(|props| props.require_full_sync)
        .unwrap_or(false)
}

/// A prekey upload (`<iq xmlns="encrypt" type="set">`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct PreKeyUpload {
    pub(crate) keys: Vec<(u32, [u8; 32])>,
    pub(crate) signed: SignedPreKey,
}

/// Parses a prekey upload and checks it against the registered identity.
pub(crate) fn prekey_upload(iq: &Node, identity: &[u8; 32]) -> Result<PreKeyUpload, StanzaError> {
    let uploaded_identity = key32(
        iq.child("identity").and_then(Node::content_bytes),
        "identity",
    )?;
    if uploaded_identity != *identity {
        return Err(StanzaError::IdentityChanged);
    }
    let list = iq.child("list").ok_or(StanzaError::Malformed("list"))?;
    if list.child_nodes().len() > MAX_PREKEYS_PER_UPLOAD {
        return Err(StanzaError::TooManyPreKeys);
    }
    let keys = list
        .child_nodes()
        .iter()
        .filter(|n| n.tag() == "key")
        .map(|key| {
            let id = key
                .child("id")
                .and_then(Node::content_bytes)
                .and_then(be_uint)
                .ok_or(StanzaError::Malformed("prekey id"))?;
            let value = key32(key.child("value").and_then(Node::content_bytes), "prekey")?;
            Ok((id, value))
        })
        .collect::<Result<Vec<_>, StanzaError>>()?;
    let skey = iq.child("skey").ok_or(StanzaError::Malformed("skey"))?;
    let signed = SignedPreKey {
        id: skey
            .child("id")
            .and_then(Node::content_bytes)
            .and_then(be_uint)
            .ok_or(StanzaError::Malformed("signed prekey id"))?,
        public: key32(
            skey.child("value").and_then(Node::content_bytes),
            "signed prekey",
        )?,
        signature: sig64(
            skey.child("signature").and_then(Node::content_bytes),
            "signed prekey signature",
        )?,
    };
    check_signed_prekey(identity, &signed)?;
    Ok(PreKeyUpload { keys, signed })
}

/// The `<digest>` answer to `encrypt get <digest/>`: what the server holds
/// for the device (newer clients only check that it is present).
pub(crate) fn prekey_digest(bundle: &CompanionBundle, prekey_ids: &[u32]) -> Node {
    let skey = &bundle.signed_prekey;
    Node::new("digest").children(vec![
        Node::new("registration").bytes(bundle.registration_id.to_be_bytes().to_vec()),
        Node::new("type").bytes(vec![KEY_TYPE_DJB]),
        Node::new("identity").bytes(bundle.identity.to_vec()),
        Node::new("skey").children(vec![
            Node::new("id").bytes(be_bytes(skey.id, 3)),
            Node::new("value").bytes(skey.public.to_vec()),
            Node::new("signature").bytes(skey.signature.to_vec()),
        ]),
        Node::new("list").children(
            prekey_ids
                .iter()
                .map(|id| Node::new("id").bytes(be_bytes(*id, 3)))
                .collect(),
        ),
    ])
}

/// The error a client answered an iq with.
pub(crate) fn refusal(iq: &Node) -> PairRefusal {
    let error = iq.child("error");
    PairRefusal {
        code: error
            .and_then(|e| e.attr_string("code"))
            .unwrap_or_default(),
        text: error
            .and_then(|e| e.attr_string("text"))
            .unwrap_or_default(),
    }
}

/// What the phone expects back in `<pair-device-sign>`.
pub(crate) struct PairExpectation<'a> {
    pub(crate) details: &'a [u8],
    pub(crate) key_index: u32,
    pub(crate) companion_identity: &'a [u8; 32],
    pub(crate) account_signature_key: &'a [u8; 32],
}

/// Checks the companion's `<pair-device-sign>` reply and returns its signed
/// device identity bytes (as the companion will present them to peers).
pub(crate) fn check_pair_sign(
    reply: &Node,
    expected: &PairExpectation<'_>,
) -> Result<Vec<u8>, StanzaError> {
    let identity_node = reply
        .child("pair-device-sign")
        .and_then(|n| n.child("device-identity"))
        .ok_or(StanzaError::Malformed("pair-device-sign/device-identity"))?;
    if identity_node.attr_u64("key-index") != Some(u64::from(expected.key_index)) {
        return Err(StanzaError::KeyIndexChanged);
    }
    let bytes = identity_node
        .content_bytes()
        .ok_or(StanzaError::Malformed("device-identity bytes"))?;
    let signed = AdvSignedDeviceIdentity::decode(bytes)
        .map_err(|_| StanzaError::Malformed("ADVSignedDeviceIdentity"))?;
    if signed.details.as_deref() != Some(expected.details) {
        return Err(StanzaError::DetailsChanged);
    }
    let signature = sig64(signed.device_signature.as_deref(), "device signature")?;
    let message = device_signature_message(
        expected.details,
        expected.companion_identity,
        expected.account_signature_key,
        false,
    );
    if !verify(expected.companion_identity, &message, &signature) {
        return Err(StanzaError::BadDeviceSignature);
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::crypto::KeyPair;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(3)
    }

    fn signed_prekey(identity: &KeyPair, rng: &mut rand::rngs::StdRng) -> SignedPreKey {
        let key = KeyPair::generate(rng);
        let mut message = vec![KEY_TYPE_DJB];
        message.extend_from_slice(&key.public);
        SignedPreKey {
            id: 1,
            public: key.public,
            signature: identity.sign(&message, rng),
        }
    }

    #[test]
    fn big_endian_helpers() {
        assert_eq!(be_uint(&[0x01, 0x02, 0x03]), Some(0x010203));
        assert_eq!(be_uint(&[]), None);
        assert_eq!(be_uint(&[1, 2, 3, 4, 5]), None);
        assert_eq!(be_bytes(0x010203, 3), vec![1, 2, 3]);
        assert_eq!(be_bytes(7, 4), vec![0, 0, 0, 7]);
    }

    #[test]
    fn registration_bundle_checks_signature() {
        let mut rng = rng();
        let identity = KeyPair::generate(&mut rng);
        let skey = signed_prekey(&identity, &mut rng);
        let mut data = DevicePairingRegistrationData {
            e_regid: Some(vec![0, 0, 0x30, 0x39]),
            e_keytype: Some(vec![5]),
            e_ident: Some(identity.public.to_vec()),
            e_skey_id: Some(vec![0, 0, 1]),
            e_skey_val: Some(skey.public.to_vec()),
            e_skey_sig: Some(skey.signature.to_vec()),
            build_hash: None,
            device_props: Some(
                DeviceProps {
                    os: Some("Ubuntu".into()),
                    platform_type: Some(device_props::PlatformType::Chrome as i32),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        };
        let bundle = registration_bundle(&data).expect("valid registration");
        assert_eq!(bundle.registration_id, 12345);
        assert_eq!(bundle.identity, identity.public);
        assert_eq!(bundle.signed_prekey, skey);
        assert_eq!(platform_name(&data), "CHROME (Ubuntu)");

        let mut bad = skey.signature;
        bad[0] ^= 1;
        data.e_skey_sig = Some(bad.to_vec());
        assert_eq!(
            registration_bundle(&data),
            Err(StanzaError::BadSignedPreKey)
        );
        data.e_ident = Some(vec![1; 31]);
        assert_eq!(
            registration_bundle(&data),
            Err(StanzaError::Malformed("identity key"))
        );
        data.device_props = None;
        assert_eq!(platform_name(&data), "UNKNOWN");
    }

    #[test]
    fn prekey_upload_parses_and_checks_identity() {
        let mut rng = rng();
        let identity = KeyPair::generate(&mut rng);
        let skey = signed_prekey(&identity, &mut rng);
        let key = |id: u32, fill: u8| {
            Node::new("key").children(vec![
                Node::new("id").bytes(be_bytes(id, 3)),
                Node::new("value").bytes(vec![fill; 32]),
            ])
        };
        let iq = Node::new("iq").children(vec![
            Node::new("registration").bytes(vec![0, 0, 0, 1]),
            Node::new("type").bytes(vec![5]),
            Node::new("identity").bytes(identity.public.to_vec()),
            Node::new("list").children(vec![key(1, 0xA1), key(2, 0xA2)]),
            Node::new("skey").children(vec![
                Node::new("id").bytes(be_bytes(skey.id, 3)),
                Node::new("value").bytes(skey.public.to_vec()),
                Node::new("signature").bytes(skey.signature.to_vec()),
            ]),
        ]);
        let upload = prekey_upload(&iq, &identity.public).expect("valid upload");
        assert_eq!(upload.keys, vec![(1, [0xA1; 32]), (2, [0xA2; 32])]);
        assert_eq!(upload.signed, skey);
        assert_eq!(
            prekey_upload(&iq, &[0; 32]),
            Err(StanzaError::IdentityChanged)
        );
        assert_eq!(
            prekey_upload(&Node::new("iq"), &identity.public),
            Err(StanzaError::Malformed("identity"))
        );
    }

    #[test]
    fn app_state_queries_get_each_collection_back_empty() {
        let iq = Node::new("iq")
            .attr("xmlns", "w:sync:app:state")
            .attr("type", "set")
            .children(vec![Node::new("sync").children(vec![
                Node::new("collection")
                    .attr("name", "regular_high")
                    .attr("version", "0")
                    .attr("return_snapshot", "true"),
                Node::new("collection")
                    .attr("name", "critical_block")
                    .attr("version", "7")
                    .attr("return_snapshot", "false"),
                // No name: nothing to answer for it.
                Node::new("collection").attr("version", "1"),
            ])]);
        let answer = app_state_sync_result("q1", &iq, |_, v| (v, None, Vec::new()));
        assert_eq!(answer.attr_str("type"), Some("result"));
        assert_eq!(answer.attr_str("id"), Some("q1"));
        let sync = answer.child("sync").expect("sync");
        let got: Vec<(Option<&str>, Option<&str>, usize)> = sync
            .children_by_tag("collection")
            .map(|c| {
                (
                    c.attr_str("name"),
                    c.attr_str("version"),
                    c.child_nodes().len(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (Some("regular_high"), Some("0"), 0),
                (Some("critical_block"), Some("7"), 0)
            ]
        );
        assert!(sync
            .children_by_tag("collection")
            .all(|c| c.attr_str("has_more_patches").is_none()));
        // A query without <sync> gets an empty <sync>, not an error.
        let bare = app_state_sync_result("q2", &Node::new("iq"), |_, v| (v, None, Vec::new()));
        assert_eq!(bare.child("sync").map(|s| s.child_nodes().len()), Some(0));
    }

    #[test]
    fn pair_sign_is_verified() {
        let mut rng = rng();
        let companion = KeyPair::generate(&mut rng);
        let phone = KeyPair::generate(&mut rng);
        let details = b"\x08\x2a\x10\x01\x18\x03".to_vec();
        let message = device_signature_message(&details, &companion.public, &phone.public, false);
        let signed = AdvSignedDeviceIdentity {
            details: Some(details.clone()),
            account_signature_key: None,
            account_signature: Some(vec![0; 64]),
            device_signature: Some(companion.sign(&message, &mut rng).to_vec()),
        };
        let reply = |key_index: &str, signed: &AdvSignedDeviceIdentity| {
            iq_result(
                "1",
                vec![
                    Node::new("pair-device-sign").children(vec![Node::new("device-identity")
                        .attr("key-index", key_index)
                        .bytes(signed.encode_to_vec())]),
                ],
            )
        };
        let expected = PairExpectation {
            details: &details,
            key_index: 3,
            companion_identity: &companion.public,
            account_signature_key: &phone.public,
        };
        let bytes = check_pair_sign(&reply("3", &signed), &expected).expect("valid reply");
        assert_eq!(bytes, signed.encode_to_vec());
        assert_eq!(
            check_pair_sign(&reply("4", &signed), &expected),
            Err(StanzaError::KeyIndexChanged)
        );
        let mut forged = signed.clone();
        forged.device_signature = Some(phone.sign(&message, &mut rng).to_vec());
        assert_eq!(
            check_pair_sign(&reply("3", &forged), &expected),
            Err(StanzaError::BadDeviceSignature)
        );
        let mut altered = signed;
        altered.details = Some(b"other".to_vec());
        assert_eq!(
            check_pair_sign(&reply("3", &altered), &expected),
            Err(StanzaError::DetailsChanged)
        );
    }
}
