//! LIDs of the simulated server: every account has one (a number in the
//! `lid` domain that stands for it without revealing its phone number),
//! given at creation and kept for good. Inside, the simulator addresses
//! everyone by phone number; LIDs exist at its edge: what a client writes
//! to a LID is read as written to the phone number ([`phone_view`]), and
//! what LID-addressed groups deliver names members by LID with their
//! number alongside ([`lid_view`]), as WhatsApp's server does. Functions
//! over nodes, fed by the registry's LIDs; imports `wa` only.

use sha2::{Digest, Sha256};

use crate::wa::binary::{AttrValue, Content, Node};
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER, LID_SERVER};

use super::Inner;

impl Inner {
    /// A client's stanza with every LID it names read as the phone
    /// number's JID (most stanzas name none and are left alone).
    pub(crate) fn read_lids(&self, node: Node) -> Node {
        if !mentions_lid(&node) {
            return node;
        }
        let mut node = node;
        phone_view(&mut node, &|lid: &str| self.registry.phone_of_lid(lid));
        node
    }

    /// A device JID by phone number, whichever address it was given by.
    pub(crate) fn phone_jid(&self, jid: &Jid) -> Jid {
        to_phone(jid, &|lid: &str| self.registry.phone_of_lid(lid))
    }

    /// A stanza of group `group` as its members get it: by LID when the
    /// group is LID-addressed.
    pub(crate) fn group_view(&self, group: &str, node: Node) -> Node {
        if self.groups.is_lid_addressed(group) {
            self.by_lid(node)
        } else {
            node
        }
    }

    /// A stanza of a LID-addressed group as its members get it.
    pub(crate) fn by_lid(&self, mut node: Node) -> Node {
        lid_view(&mut node, &|user: &str| self.registry.lid_of(user));
        node
    }

    /// Every `<group addressing_mode="lid">` under `node` with its
    /// `<participant>`s by LID.
    pub(crate) fn groups_by_lid(&self, node: &mut Node) {
        if node.tag() == "group" && node.attr_str("addressing_mode") == Some("lid") {
            lid_participants(node, &|user: &str| self.registry.lid_of(user));
            return;
        }
        if let Content::Nodes(children) = &mut node.content {
            for child in children {
                self.groups_by_lid(child);
            }
        }
    }
}

/// The smallest LID given (LIDs have 15 digits, like WhatsApp's).
const LID_FLOOR: u64 = 100_000_000_000_000;
/// Attributes that name a party of a stanza.
const ADDRESS_ATTRS: [&str; 4] = ["to", "participant", "recipient", "jid"];

/// The LID an account with this phone number is given: drawn from the
/// number, so that a snapshot written before accounts had LIDs gives each
/// account the same LID on every start.
pub(crate) fn new_lid(phone: &PhoneNumber) -> String {
    let digest = Sha256::digest([b"wagate-sim lid\0", phone.as_str().as_bytes()].concat());
    let mut first = [0u8; 8];
    first.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
    let span = 9 * LID_FLOOR;
    (LID_FLOOR + u64::from_be_bytes(first) % span).to_string()
}

/// Whether `text` can be a LID user (digits only).
pub(crate) fn is_lid_user(text: &str) -> bool {
    !text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit())
}

/// `jid` with a LID user replaced by the phone number it stands for
/// (device kept); any other JID unchanged. A LID of no account stays.
pub(crate) fn to_phone(jid: &Jid, phone_of_lid: &dyn Fn(&str) -> Option<String>) -> Jid {
    if !jid.is_lid() {
        return jid.clone();
    }
    match phone_of_lid(&jid.user) {
        Some(phone) => Jid::with_device(phone, jid.device, DEFAULT_USER_SERVER),
        None => jid.clone(),
    }
}

/// `jid` with a phone number replaced by its account's LID (device kept);
/// `None` when it is no account's number.
pub(crate) fn to_lid(jid: &Jid, lid_of: &dyn Fn(&str) -> Option<String>) -> Option<Jid> {
    if jid.server != DEFAULT_USER_SERVER {
        return None;
    }
    let lid = lid_of(&jid.user)?;
    Some(Jid::with_device(lid, jid.device, LID_SERVER))
}

/// A client's stanza as the server reads it: every party written as a LID
/// (`to`, `participant`, `recipient`, a `<participant jid>` or `<to jid>`,
/// at any depth) becomes the phone number's JID.
pub(crate) fn phone_view(node: &mut Node, phone_of_lid: &dyn Fn(&str) -> Option<String>) {
    for (key, value) in node.attrs.iter_mut() {
        if !ADDRESS_ATTRS.contains(&key.as_ref()) {
            continue;
        }
        let jid = match value {
            AttrValue::Jid(jid) => jid.clone(),
            AttrValue::Str(text) => match text.parse::<Jid>() {
                Ok(jid) => jid,
                Err(_) => continue,
            },
        };
        if jid.is_lid() {
            *value = to_phone(&jid, phone_of_lid).into();
        }
    }
    if let Content::Nodes(children) = &mut node.content {
        for child in children {
            phone_view(child, phone_of_lid);
        }
    }
}

/// Whether a client's stanza names any party by LID (see [`phone_view`]).
pub(crate) fn mentions_lid(node: &Node) -> bool {
    let lid_attr = node.attrs.iter().any(|(key, value)| {
        ADDRESS_ATTRS.contains(&key.as_ref())
            && match value {
                AttrValue::Jid(jid) => jid.is_lid(),
                AttrValue::Str(text) => text.ends_with("@lid"),
            }
    });
    lid_attr || node.child_nodes().iter().any(mentions_lid)
}

/// A stanza of a LID-addressed group as its members get it: each
/// `<participant jid>` (at any depth) names the member's LID with
/// `phone_number`, and the stanza's own `participant` (the author or
/// actor) its LID with `participant_pn`.
pub(crate) fn lid_view(node: &mut Node, lid_of: &dyn Fn(&str) -> Option<String>) {
    if let Some(author) = node.attr_jid("participant") {
        if let Some(lid) = to_lid(&author, lid_of) {
            node.set_attr("participant", lid);
            node.set_attr("participant_pn", author.to_non_ad());
        }
    }
    lid_participants(node, lid_of);
}

/// `<participant jid>` elements under `node` (and `node` itself) by LID.
pub(crate) fn lid_participants(node: &mut Node, lid_of: &dyn Fn(&str) -> Option<String>) {
    if node.tag() == "participant" {
        if let Some(member) = node.attr_jid("jid") {
            if let Some(lid) = to_lid(&member, lid_of) {
                node.set_attr("jid", lid);
                node.set_attr("phone_number", member.to_non_ad());
            }
        }
    }
    if let Content::Nodes(children) = &mut node.content {
        for child in children {
            lid_participants(child, lid_of);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(text: &str) -> Jid {
        text.parse().expect("valid jid")
    }

    fn lid_of(user: &str) -> Option<String> {
        (user == "15550001111").then(|| "123456789012345".to_owned())
    }

    fn phone_of(lid: &str) -> Option<String> {
        (lid == "123456789012345").then(|| "15550001111".to_owned())
    }

    #[test]
    fn lids_are_stable_distinct_fifteen_digit_numbers() {
        let a: PhoneNumber = "+15550001111".parse().expect("phone");
        let b: PhoneNumber = "+15550001112".parse().expect("phone");
        assert_eq!(new_lid(&a), new_lid(&a));
        assert_ne!(new_lid(&a), new_lid(&b));
        assert_eq!(new_lid(&a).len(), 15);
        assert!(is_lid_user(&new_lid(&a)));
        assert!(!is_lid_user(""));
        assert!(!is_lid_user("12a"));
    }

    #[test]
    fn lids_written_by_clients_are_read_as_phone_numbers() {
        assert!(!mentions_lid(
            &Node::new("message").attr("to", jid("15550001111@s.whatsapp.net"))
        ));
        let mut node = Node::new("message")
            .attr("to", jid("120363000000000001@g.us"))
            .attr("participant", jid("123456789012345:3@lid"))
            .children(vec![Node::new("participants").children(vec![
                Node::new("to").attr("jid", jid("123456789012345:2@lid")),
                Node::new("to").attr("jid", jid("999@lid")),
                Node::new("to").attr("jid", jid("15550002222@s.whatsapp.net")),
            ])]);
        assert!(mentions_lid(&node));
        phone_view(&mut node, &phone_of);
        assert_eq!(
            node.attr_jid("participant"),
            Some(jid("15550001111:3@s.whatsapp.net"))
        );
        let targets: Vec<String> = node
            .child("participants")
            .expect("participants")
            .children_by_tag("to")
            .filter_map(|t| t.attr_jid("jid"))
            .map(|j| j.to_string())
            .collect();
        // A LID of no account stays as written.
        assert_eq!(
            targets,
            vec![
                "15550001111:2@s.whatsapp.net",
                "999@lid",
                "15550002222@s.whatsapp.net"
            ]
        );
        assert_eq!(node.attr_jid("to"), Some(jid("120363000000000001@g.us")));
    }

    #[test]
    fn lid_groups_name_members_by_lid_with_their_numbers() {
        let mut node = Node::new("notification")
            .attr("participant", jid("15550001111:0@s.whatsapp.net"))
            .children(vec![Node::new("add").children(vec![
                Node::new("participant").attr("jid", jid("15550001111@s.whatsapp.net")),
                Node::new("participant").attr("jid", jid("15550009999@s.whatsapp.net")),
            ])]);
        lid_view(&mut node, &lid_of);
        assert_eq!(
            node.attr_jid("participant"),
            Some(jid("123456789012345@lid"))
        );
        assert_eq!(
            node.attr_jid("participant_pn"),
            Some(jid("15550001111@s.whatsapp.net"))
        );
        let add = node.child("add").expect("add");
        let members: Vec<(String, Option<String>)> = add
            .children_by_tag("participant")
            .map(|p| {
                (
                    p.attr_string("jid").unwrap_or_default(),
                    p.attr_string("phone_number"),
                )
            })
            .collect();
        assert_eq!(
            members,
            vec![
                (
                    "123456789012345@lid".to_owned(),
                    Some("15550001111@s.whatsapp.net".to_owned())
                ),
                // No account, no LID: left as it was.
                ("15550009999@s.whatsapp.net".to_owned(), None),
            ]
        );
    }
}
