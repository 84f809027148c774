//! Device discovery and prekey bundles: parses the client's usync device
//! queries (`iq xmlns="usync"`) and bundle requests (`iq xmlns="encrypt"
//! <key>`), and builds the server's answers. Pure functions over nodes; no
//! I/O, imports `wa` only.

use super::registry::SignedPreKey;
use super::stanza::{be_bytes, KEY_TYPE_DJB};
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER};

/// Most users answered in one usync query or bundle request.
const MAX_USERS: usize = 0x200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UsyncError {
    #[error("missing or malformed {0}")]
    Malformed(&'static str),
    #[error("more than {MAX_USERS} users in one query")]
    TooManyUsers,
}

/// A parsed usync query: the accounts asked about and what about them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UsyncQuery {
    /// Account JIDs (device 0), by phone number or LID, in the order asked.
    pub(crate) users: Vec<Jid>,
    pub(crate) devices: bool,
    pub(crate) contact: bool,
    /// The `<lid/>` protocol: each phone number's LID.
    pub(crate) lid: bool,
}

/// What the server knows of one queried account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UserDevices {
    pub(crate) user: Jid,
    /// `(device id, key index)`, device 0 (key index 0) first; empty for
    /// an unregistered number.
    pub(crate) devices: Vec<(u16, u32)>,
    /// The account's LID (user JID), for a user asked by phone number.
    pub(crate) lid: Option<Jid>,
}

/// A device's published keys with at most one one-time prekey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BundleKeys {
    pub(crate) registration_id: u32,
    pub(crate) identity: [u8; 32],
    pub(crate) signed_prekey: SignedPreKey,
    pub(crate) one_time: Option<(u32, [u8; 32])>,
}

/// Parses `<iq xmlns="usync"><usync><query>…</query><list><user jid/>…`.
/// Users given only by phone number (contact lookups) are skipped.
pub(crate) fn parse_query(iq: &Node) -> Result<UsyncQuery, UsyncError> {
    let usync = iq.child("usync").ok_or(UsyncError::Malformed("usync"))?;
    let query = usync.child("query").ok_or(UsyncError::Malformed("query"))?;
    let list = usync.child("list").ok_or(UsyncError::Malformed("list"))?;
    if list.child_nodes().len() > MAX_USERS {
        return Err(UsyncError::TooManyUsers);
    }
    let users = list
        .children_by_tag("user")
        .filter_map(|user| user.attr_jid("jid"))
        .filter(|jid| (jid.server == DEFAULT_USER_SERVER || jid.is_lid()) && !jid.user.is_empty())
        .map(|jid| jid.to_non_ad())
        .collect();
    Ok(UsyncQuery {
        users,
        devices: query.child("devices").is_some(),
        contact: query.child("contact").is_some(),
        lid: query.child("lid").is_some(),
    })
}

/// The usync result: each user with the protocols that were asked.
pub(crate) fn query_result(id: &str, query: &UsyncQuery, answers: &[UserDevices]) -> Node {
    let users = answers
        .iter()
        .map(|answer| {
            let mut children = Vec::new();
            if query.devices {
                let list = answer
                    .devices
                    .iter()
                    .map(|(device, key_index)| {
                        let node = Node::new("device").attr("id", device.to_string());
                        if *device == 0 {
                            node
                        } else {
                            node.attr("key-index", key_index.to_string())
                        }
                    })
                    .collect();
                children.push(
                    Node::new("devices").children(vec![Node::new("device-list").children(list)]),
                );
            }
            if query.contact {
                let kind = if answer.devices.is_empty() {
                    "out"
                } else {
                    "in"
                };
                children.push(Node::new("contact").attr("type", kind));
            }
            if let Some(lid) = answer.lid.as_ref().filter(|_| query.lid) {
                children.push(Node::new("lid").attr("val", lid.clone()));
            }
            let user = Node::new("user").attr("jid", answer.user.clone());
            if children.is_empty() {
                user
            } else {
                user.children(children)
            }
        })
        .collect();
    super::stanza::iq_result(
        id,
        vec![Node::new("usync").children(vec![Node::new("list").children(users)])],
    )
}

/// Parses `<iq xmlns="encrypt" type="get"><key><user jid/>…</key></iq>`:
/// the device JIDs whose bundles are wanted, exactly as written.
pub(crate) fn parse_key_request(iq: &Node) -> Result<Vec<Jid>, UsyncError> {
    let key = iq.child("key").ok_or(UsyncError::Malformed("key"))?;
    if key.child_nodes().len() > MAX_USERS {
        return Err(UsyncError::TooManyUsers);
    }
    key.children_by_tag("user")
        .map(|user| {
            user.attr_jid("jid")
                .ok_or(UsyncError::Malformed("user jid"))
        })
        .collect()
}

/// The bundles answer: one `<user jid>` per requested device, with the keys
/// directly inside, or an `<error>` for devices the server does not know.
pub(crate) fn key_result(id: &str, bundles: &[(Jid, Option<BundleKeys>)]) -> Node {
    let users = bundles
        .iter()
        .map(|(jid, bundle)| {
            let user = Node::new("user").attr("jid", jid.clone());
            match bundle {
                Some(bundle) => user.children(bundle_children(bundle)),
                None => user.children(vec![Node::new("error")
                    .attr("code", "404")
                    .attr("text", "item-not-found")]),
            }
        })
        .collect();
    super::stanza::iq_result(id, vec![Node::new("list").children(users)])
}

fn bundle_children(bundle: &BundleKeys) -> Vec<Node> {
    let skey = &bundle.signed_prekey;
    let mut children = vec![
        Node::new("registration").bytes(bundle.registration_id.to_be_bytes().to_vec()),
        Node::new("type").bytes(vec![KEY_TYPE_DJB]),
        Node::new("identity").bytes(bundle.identity.to_vec()),
        Node::new("skey").children(vec![
            Node::new("id").bytes(be_bytes(skey.id, 3)),
            Node::new("value").bytes(skey.public.to_vec()),
            Node::new("signature").bytes(skey.signature.to_vec()),
        ]),
    ];
    if let Some((id, public)) = bundle.one_time {
        children.push(Node::new("key").children(vec![
            Node::new("id").bytes(be_bytes(id, 3)),
            Node::new("value").bytes(public.to_vec()),
        ]));
    }
    children
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(text: &str) -> Jid {
        text.parse().expect("valid jid")
    }

    fn usync_iq(query: Vec<Node>, users: Vec<Node>) -> Node {
        Node::new("iq")
            .attr("xmlns", "usync")
            .attr("type", "get")
            .children(vec![Node::new("usync")
                .attr("context", "message")
                .children(vec![
                    Node::new("query").children(query),
                    Node::new("list").children(users),
                ])])
    }

    #[test]
    fn usync_query_parses_and_answers() {
        let iq = usync_iq(
            vec![Node::new("devices").attr("version", "2")],
            vec![
                Node::new("user").attr("jid", jid("111@s.whatsapp.net")),
                Node::new("user").attr("jid", jid("222:3@s.whatsapp.net")),
                Node::new("user").children(vec![Node::new("contact").text("+333")]),
                Node::new("user").attr("jid", jid("g1@g.us")),
            ],
        );
        let query = parse_query(&iq).expect("valid query");
        assert_eq!(
            query.users,
            vec![jid("111@s.whatsapp.net"), jid("222@s.whatsapp.net")]
        );
        assert!(query.devices && !query.contact);

        let answers = vec![
            UserDevices {
                user: jid("111@s.whatsapp.net"),
                devices: vec![(0, 0), (2, 1)],
                lid: Some(jid("100000000000111@lid")),
            },
            UserDevices {
                user: jid("222@s.whatsapp.net"),
                devices: Vec::new(),
                lid: None,
            },
        ];
        let result = query_result("q1", &query, &answers);
        assert_eq!(result.attr_str("type"), Some("result"));
        assert_eq!(result.attr_str("id"), Some("q1"));
        let list = result
            .child("usync")
            .and_then(|u| u.child("list"))
            .expect("usync/list");
        let users: Vec<&Node> = list.children_by_tag("user").collect();
        assert_eq!(users.len(), 2);
        let devices: Vec<(Option<&str>, Option<&str>)> = users[0]
            .child("devices")
            .and_then(|d| d.child("device-list"))
            .expect("device-list")
            .children_by_tag("device")
            .map(|d| (d.attr_str("id"), d.attr_str("key-index")))
            .collect();
        assert_eq!(devices, vec![(Some("0"), None), (Some("2"), Some("1"))]);
        let empty = users[1]
            .child("devices")
            .and_then(|d| d.child("device-list"))
            .expect("device-list for unknown user");
        assert!(empty.child_nodes().is_empty());
        // Not asked for: no LID revealed (Baileys 6 does not ask).
        assert!(users[0].child("lid").is_none());
    }

    #[test]
    fn usync_lid_protocol_and_users_asked_by_lid() {
        let iq = usync_iq(
            vec![Node::new("devices").attr("version", "2"), Node::new("lid")],
            vec![
                Node::new("user").attr("jid", jid("111@s.whatsapp.net")),
                Node::new("user").attr("jid", jid("100000000000222@lid")),
            ],
        );
        let query = parse_query(&iq).expect("valid");
        assert!(query.lid && query.devices);
        assert_eq!(
            query.users,
            vec![jid("111@s.whatsapp.net"), jid("100000000000222@lid")]
        );
        let answers = [
            UserDevices {
                user: jid("111@s.whatsapp.net"),
                devices: vec![(0, 0)],
                lid: Some(jid("100000000000111@lid")),
            },
            UserDevices {
                user: jid("100000000000222@lid"),
                devices: vec![(0, 0)],
                lid: None,
            },
        ];
        let result = query_result("q", &query, &answers);
        let users: Vec<Node> = result
            .child("usync")
            .and_then(|u| u.child("list"))
            .expect("list")
            .children_by_tag("user")
            .cloned()
            .collect();
        assert_eq!(
            users[0].child("lid").and_then(|l| l.attr_jid("val")),
            Some(jid("100000000000111@lid"))
        );
        // A user asked by LID is answered under the JID asked.
        assert_eq!(users[1].attr_jid("jid"), Some(jid("100000000000222@lid")));
        assert!(users[1].child("lid").is_none());
    }

    #[test]
    fn usync_contact_protocol() {
        let iq = usync_iq(
            vec![Node::new("contact")],
            vec![Node::new("user").attr("jid", jid("111@s.whatsapp.net"))],
        );
        let query = parse_query(&iq).expect("valid");
        let result = query_result(
            "q",
            &query,
            &[UserDevices {
                user: jid("111@s.whatsapp.net"),
                devices: Vec::new(),
                lid: None,
            }],
        );
        let user = result
            .child("usync")
            .and_then(|u| u.child("list"))
            .and_then(|l| l.child("user"))
            .expect("user");
        assert_eq!(
            user.child("contact").and_then(|c| c.attr_str("type")),
            Some("out")
        );
        assert!(user.child("devices").is_none());
    }

    #[test]
    fn bad_usync_queries_are_refused() {
        assert_eq!(
            parse_query(&Node::new("iq")),
            Err(UsyncError::Malformed("usync"))
        );
        let no_list =
            Node::new("iq").children(vec![Node::new("usync").children(vec![Node::new("query")])]);
        assert_eq!(parse_query(&no_list), Err(UsyncError::Malformed("list")));
        let many = (0..=MAX_USERS)
            .map(|i| Node::new("user").attr("jid", jid(&format!("{i}@s.whatsapp.net"))))
            .collect();
        assert_eq!(
            parse_query(&usync_iq(vec![], many)),
            Err(UsyncError::TooManyUsers)
        );
    }

    #[test]
    fn key_requests_echo_jids_and_carry_bundles() {
        let iq = Node::new("iq").children(vec![Node::new("key").children(vec![
            Node::new("user").attr("jid", jid("111@s.whatsapp.net")),
            Node::new("user").attr("jid", jid("111:4@s.whatsapp.net")),
        ])]);
        let wanted = parse_key_request(&iq).expect("valid request");
        assert_eq!(
            wanted,
            vec![jid("111@s.whatsapp.net"), jid("111:4@s.whatsapp.net")]
        );
        let bundle = BundleKeys {
            registration_id: 0x0102_0304,
            identity: [7; 32],
            signed_prekey: SignedPreKey {
                id: 0x010203,
                public: [8; 32],
                signature: [9; 64],
            },
            one_time: Some((0x20, [6; 32])),
        };
        let result = key_result(
            "k",
            &[(wanted[0].clone(), Some(bundle)), (wanted[1].clone(), None)],
        );
        let users: Vec<&Node> = result
            .child("list")
            .expect("list")
            .children_by_tag("user")
            .collect();
        assert_eq!(
            users[0].attr_string("jid").as_deref(),
            Some("111@s.whatsapp.net")
        );
        assert_eq!(
            users[0].child("registration").and_then(Node::content_bytes),
            Some(&[1, 2, 3, 4][..])
        );
        assert_eq!(
            users[0].child("type").and_then(Node::content_bytes),
            Some(&[5][..])
        );
        let skey = users[0].child("skey").expect("skey");
        assert_eq!(
            skey.child("id").and_then(Node::content_bytes),
            Some(&[1, 2, 3][..])
        );
        let key = users[0].child("key").expect("one-time key");
        assert_eq!(
            key.child("id").and_then(Node::content_bytes),
            Some(&[0, 0, 0x20][..])
        );
        assert_eq!(
            users[1].attr_string("jid").as_deref(),
            Some("111:4@s.whatsapp.net")
        );
        assert!(users[1].child("error").is_some());

        assert_eq!(
            parse_key_request(&Node::new("iq")),
            Err(UsyncError::Malformed("key"))
        );
        let no_jid =
            Node::new("iq").children(vec![Node::new("key").children(vec![Node::new("user")])]);
        assert_eq!(
            parse_key_request(&no_jid),
            Err(UsyncError::Malformed("user jid"))
        );
    }
}
