//! Prekey stanzas, client side: asking the server how many one-time prekeys
//! it holds for us, uploading more, and fetching other devices' bundles.
//! Builders and parsers only; no I/O.

use crate::wa::binary::Node;
use crate::wa::creds::{Credentials, DJB_KEY_TYPE};
use crate::wa::jid::Jid;
use crate::wa::signal::{PreKey, PreKeyBundle};

/// Below this many keys on the server, the client uploads a new batch.
pub const MIN_SERVER_PREKEYS: u32 = 5;
/// Keys uploaded per batch.
pub const UPLOAD_BATCH: u32 = 50;

/// Why a prekey stanza could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PrekeyError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field} has {len} bytes, expected {expected}")]
    Length {
        field: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("key type {0:#04x} is not Curve25519")]
    KeyType(u8),
    #[error("count {0:?} is not a number")]
    Count(String),
    #[error("server refused the bundle: {code} {text}")]
    Server { code: String, text: String },
}

fn iq(kind: &'static str, children: Vec<Node>) -> Node {
    Node::new("iq")
        .attr("xmlns", "encrypt")
        .attr("type", kind)
        .attr("to", Jid::server_jid())
        .children(children)
}

/// `<iq xmlns=encrypt type=get><count/></iq>` (the caller adds the id).
pub fn count_query() -> Node {
    iq("get", vec![Node::new("count")])
}

/// Reads `<count value=N/>` from the answer to [`count_query`].
pub fn parse_count(result: &Node) -> Result<u32, PrekeyError> {
    let count = result.child("count").ok_or(PrekeyError::Missing("count"))?;
    let value = count
        .attr_string("value")
        .ok_or(PrekeyError::Missing("count value"))?;
    value.parse().map_err(|_| PrekeyError::Count(value))
}

fn id3(id: u32) -> Vec<u8> {
    id.to_be_bytes()[1..].to_vec()
}

fn key_node(tag: &'static str, id: u32, public: &[u8; 32], signature: Option<&[u8; 64]>) -> Node {
    let mut children = vec![
        Node::new("id").bytes(id3(id)),
        Node::new("value").bytes(public.to_vec()),
    ];
    if let Some(sig) = signature {
        children.push(Node::new("signature").bytes(sig.to_vec()));
    }
    Node::new(tag).children(children)
}

/// The upload of `prekeys` with our registration, identity and signed prekey.
pub fn upload(creds: &Credentials, prekeys: &[PreKey]) -> Node {
    let spk = &creds.signed_prekey;
    iq(
        "set",
        vec![
            Node::new("registration").bytes(creds.registration_id.to_be_bytes().to_vec()),
            Node::new("type").bytes(vec![DJB_KEY_TYPE]),
            Node::new("identity").bytes(creds.identity_key.public.to_vec()),
            Node::new("list").children(
                prekeys
                    .iter()
                    .map(|k| key_node("key", k.id, &k.key.public, None))
                    .collect(),
            ),
            key_node("skey", spk.id, &spk.key.public, Some(&spk.signature)),
        ],
    )
}

/// Asks for the bundles of `devices` (device JIDs, `user:device@server`).
pub fn bundle_query(devices: &[Jid]) -> Node {
    iq(
        "get",
        vec![Node::new("key").children(
            devices
                .iter()
                .map(|d| Node::new("user").attr("jid", d.clone()))
                .collect(),
        )],
    )
}

fn bytes_of<'a>(node: &'a Node, tag: &'static str) -> Result<&'a [u8], PrekeyError> {
    node.child(tag)
        .and_then(Node::content_bytes)
        .ok_or(PrekeyError::Missing(tag))
}

fn exact<const N: usize>(bytes: &[u8], field: &'static str) -> Result<[u8; N], PrekeyError> {
    bytes.try_into().map_err(|_| PrekeyError::Length {
        field,
        len: bytes.len(),
        expected: N,
    })
}

fn be_u32(bytes: &[u8], field: &'static str) -> Result<u32, PrekeyError> {
    if bytes.is_empty() || bytes.len() > 4 {
        return Err(PrekeyError::Length {
            field,
            len: bytes.len(),
            expected: 4,
        });
    }
    Ok(bytes.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)))
}

/// A key as it travels in `<key>` / `<skey>`.
struct WireKey {
    id: u32,
    public: [u8; 32],
    signature: Option<[u8; 64]>,
}

fn parse_key(node: &Node, with_signature: bool) -> Result<WireKey, PrekeyError> {
    let id = be_u32(bytes_of(node, "id")?, "key id")?;
    let public = exact::<32>(bytes_of(node, "value")?, "key value")?;
    let signature = if with_signature {
        Some(exact::<64>(bytes_of(node, "signature")?, "signature")?)
    } else {
        None
    };
    Ok(WireKey {
        id,
        public,
        signature,
    })
}

/// `<keys>` of a retry receipt: our bundle with one fresh one-time prekey
/// and our device identity, so the sender can start a new session.
pub fn retry_keys(creds: &Credentials, prekey: &PreKey, device_identity: &[u8]) -> Node {
    let spk = &creds.signed_prekey;
    Node::new("keys").children(vec![
        Node::new("type").bytes(vec![DJB_KEY_TYPE]),
        Node::new("identity").bytes(creds.identity_key.public.to_vec()),
        key_node("key", prekey.id, &prekey.key.public, None),
        key_node("skey", spk.id, &spk.key.public, Some(&spk.signature)),
        Node::new("device-identity").bytes(device_identity.to_vec()),
    ])
}

/// The bundle in a retry receipt from `device`: `<registration>` beside
/// `<keys>`; `None` when the receipt carries no keys.
pub fn parse_retry_keys(receipt: &Node, device: u16) -> Option<Result<PreKeyBundle, PrekeyError>> {
    let keys = receipt.child("keys")?;
    let mut children = keys.child_nodes().to_vec();
    children.extend(receipt.child("registration").cloned());
    Some(parse_user(&Node::new("keys").children(children), device))
}

/// One `<user>` of a bundle answer.
fn parse_user(user: &Node, device: u16) -> Result<PreKeyBundle, PrekeyError> {
    // whatsmeow also accepts the keys wrapped in <keys>.
    let src = user.child("keys").unwrap_or(user);
    if let Some(error) = src.child("error") {
        let text = error.attr_string("text").unwrap_or_default();
        let code = error.attr_string("code").unwrap_or_default();
        return Err(PrekeyError::Server { code, text });
    }
    let registration_id = be_u32(bytes_of(src, "registration")?, "registration")?;
    if let Some(kind) = src.child("type").and_then(Node::content_bytes) {
        match kind {
            [DJB_KEY_TYPE] => {}
            [other, ..] => return Err(PrekeyError::KeyType(*other)),
            [] => return Err(PrekeyError::Missing("type")),
        }
    }
    let identity_key = exact::<32>(bytes_of(src, "identity")?, "identity")?;
    let skey = src.child("skey").ok_or(PrekeyError::Missing("skey"))?;
    let spk = parse_key(skey, true)?;
    let signature = spk.signature.ok_or(PrekeyError::Missing("signature"))?;
    let pre_key = match src.child("key") {
        Some(k) => {
            let key = parse_key(k, false)?;
            Some((key.id, key.public))
        }
        None => None,
    };
    Ok(PreKeyBundle {
        registration_id,
        device_id: u32::from(device),
        pre_key,
        signed_pre_key: (spk.id, spk.public, signature),
        identity_key,
    })
}

/// One device's entry in a bundle answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceBundle {
    pub device: Jid,
    /// The bundle, or why this device's entry is unusable.
    pub bundle: Result<PreKeyBundle, PrekeyError>,
}

/// The bundles in an answer to [`bundle_query`], per device; a device whose
/// entry is malformed or carries an error gets its own error.
pub fn parse_bundles(result: &Node) -> Result<Vec<DeviceBundle>, PrekeyError> {
    let list = result.child("list").ok_or(PrekeyError::Missing("list"))?;
    let mut out = Vec::new();
    for user in list.child_nodes().iter().filter(|n| n.tag() == "user") {
        let Some(jid) = user.attr_jid("jid") else {
            continue;
        };
        let bundle = parse_user(user, jid.device);
        out.push(DeviceBundle {
            device: jid,
            bundle,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::binary::{self, Content};
    use rand::SeedableRng;

    /// Prekey values are binary, never strings.
    fn has_bytes(node: &Node) -> bool {
        matches!(node.content, Content::Bytes(_))
    }

    #[test]
    fn upload_round_trips_through_the_bundle_parser_shape() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let creds = Credentials::generate(&mut rng);
        let keys: Vec<PreKey> = (1..=3)
            .map(|id| PreKey::generate(id, &mut rng).expect("valid id"))
            .collect();
        let node = upload(&creds, &keys);
        // Through the codec, as the server sees it.
        let node = binary::decode(&binary::encode(&node)).expect("decodes");
        assert_eq!(node.attr_str("xmlns"), Some("encrypt"));
        let list = node.child("list").expect("list");
        assert_eq!(list.child_nodes().len(), 3);
        assert!(list
            .child_nodes()
            .iter()
            .all(|k| k.child("id").is_some_and(has_bytes)));
        let first = &list.child_nodes()[0];
        assert_eq!(
            first.child("id").and_then(Node::content_bytes),
            Some(&[0u8, 0, 1][..])
        );

        // A server answer built from the same material parses back to a bundle.
        let device = Jid::with_device("15550001111", 2, crate::wa::jid::DEFAULT_USER_SERVER);
        let mut user = Node::new("user").attr("jid", device.clone());
        let mut children: Vec<Node> = node
            .child_nodes()
            .iter()
            .filter(|c| matches!(c.tag(), "registration" | "type" | "identity" | "skey"))
            .cloned()
            .collect();
        children.push(first.clone());
        user = user.children(children);
        let answer = Node::new("iq").children(vec![Node::new("list").children(vec![user])]);
        let answer = binary::decode(&binary::encode(&answer)).expect("decodes");
        let bundles = parse_bundles(&answer).expect("parses");
        assert_eq!(bundles.len(), 1);
        assert_eq!(bundles[0].device, device);
        let b = bundles[0].bundle.as_ref().expect("bundle");
        assert_eq!(b.registration_id, creds.registration_id);
        assert_eq!(b.identity_key, creds.identity_key.public);
        assert_eq!(b.signed_pre_key.0, 1);
        assert_eq!(b.signed_pre_key.2, creds.signed_prekey.signature);
        assert_eq!(b.pre_key, Some((1, keys[0].key.public)));
        assert_eq!(b.device_id, 2);
    }

    #[test]
    fn bad_bundles_are_per_device_errors() {
        let good_user = |jid: &str| {
            Node::new("user")
                .attr("jid", jid.parse::<Jid>().expect("jid"))
                .children(vec![
                    Node::new("registration").bytes(vec![0, 0, 1, 2]),
                    Node::new("type").bytes(vec![5]),
                    Node::new("identity").bytes(vec![7; 32]),
                    Node::new("skey").children(vec![
                        Node::new("id").bytes(vec![0, 0, 1]),
                        Node::new("value").bytes(vec![8; 32]),
                        Node::new("signature").bytes(vec![9; 64]),
                    ]),
                ])
        };
        let short_identity = Node::new("user")
            .attr("jid", "1@s.whatsapp.net".parse::<Jid>().expect("jid"))
            .children(vec![
                Node::new("registration").bytes(vec![1]),
                Node::new("identity").bytes(vec![7; 31]),
            ]);
        let errored = Node::new("user")
            .attr("jid", "2@s.whatsapp.net".parse::<Jid>().expect("jid"))
            .children(vec![Node::new("error")
                .attr("code", "404")
                .attr("text", "item-not-found")]);
        let answer = Node::new("iq").children(vec![Node::new("list").children(vec![
            good_user("3:4@s.whatsapp.net"),
            short_identity,
            errored,
        ])]);
        let parsed = parse_bundles(&answer).expect("list parses");
        assert_eq!(parsed.len(), 3);
        let ok = parsed[0].bundle.as_ref().expect("good");
        assert_eq!(
            (ok.registration_id, ok.device_id, ok.pre_key),
            (258, 4, None)
        );
        assert_eq!(
            parsed[1].bundle,
            Err(PrekeyError::Length {
                field: "identity",
                len: 31,
                expected: 32
            })
        );
        assert_eq!(
            parsed[2].bundle,
            Err(PrekeyError::Server {
                code: "404".into(),
                text: "item-not-found".into()
            })
        );
        assert_eq!(
            parse_bundles(&Node::new("iq")),
            Err(PrekeyError::Missing("list"))
        );
    }

    #[test]
    fn count_answers() {
        let ok = Node::new("iq").children(vec![Node::new("count").attr("value", "42")]);
        assert_eq!(parse_count(&ok), Ok(42));
        let bad = Node::new("iq").children(vec![Node::new("count").attr("value", "x")]);
        assert_eq!(parse_count(&bad), Err(PrekeyError::Count("x".into())));
        assert_eq!(
            parse_count(&Node::new("iq")),
            Err(PrekeyError::Missing("count"))
        );
        assert_eq!(count_query().child("count").map(Node::tag), Some("count"));
    }
}
