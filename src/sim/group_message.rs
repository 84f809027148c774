//! Group messages on the simulated server: a device's `<message to=…@g.us>`
//! split for fan-out, the stanza each member device gets (its pairwise
//! `<enc>` first, then the `skmsg`), the server's ack, and the participant
//! list hash it carries. Pure functions over nodes; imports `wa` only.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::groups::{GroupError, MAX_GROUP_SIZE};
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER, GROUP_SERVER};

/// Most `<enc>` payloads kept for one device of a group message.
const MAX_ENC_PER_DEVICE: usize = 4;

/// A message a device sent to a group, split for fan-out.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GroupMessage {
    pub(crate) id: String,
    /// The group's id (user part of its JID).
    pub(crate) group: String,
    pub(crate) kind: String,
    /// The pairwise `<enc>`s (sender key distribution) for some devices.
    pub(crate) pairwise: HashMap<Jid, Vec<Node>>,
    /// The `<enc type="skmsg">` every member device gets.
    pub(crate) skmsg: Option<Node>,
    /// The sender's `<device-identity>`, forwarded with pkmsgs.
    pub(crate) device_identity: Option<Node>,
    /// A resend to one device after its retry receipt (`participant`).
    pub(crate) only: Option<Jid>,
}

impl GroupMessage {
    /// What makes a message from one device the same message again (see
    /// `ClientMessage::acceptance_key`).
    pub(crate) fn acceptance_key(&self) -> String {
        match &self.only {
            None => self.id.clone(),
            Some(device) => {
                let count = self
                    .pairwise
                    .values()
                    .flatten()
                    .chain(&self.skmsg)
                    .find_map(|enc| enc.attr_string("count"))
                    .unwrap_or_default();
                format!("{}\n{device}\n{count}", self.id)
            }
        }
    }
}

/// Whether a client `<message>` is addressed to a group.
pub(crate) fn is_group_message(node: &Node) -> bool {
    node.attr_jid("to").is_some_and(|to| to.is_group())
}

/// Parses `<message to=G@g.us id type [participant]><participants><to jid>
/// <enc/></to>…</participants><enc type="skmsg"/>[<device-identity/>]`.
pub(crate) fn parse_message(node: &Node) -> Result<GroupMessage, GroupError> {
    let id = node
        .attr_string("id")
        .filter(|id| !id.is_empty())
        .ok_or(GroupError::BadRequest("message id"))?;
    let to = node
        .attr_jid("to")
        .filter(|to| to.is_group() && !to.user.is_empty())
        .ok_or(GroupError::BadRequest("message to"))?;
    let mut pairwise = HashMap::new();
    if let Some(participants) = node.child("participants") {
        if participants.child_nodes().len() > MAX_GROUP_SIZE * 4 {
            return Err(GroupError::BadRequest("too many participants"));
        }
        for to in participants.children_by_tag("to") {
            let jid = to
                .attr_jid("jid")
                .filter(|jid| jid.server == DEFAULT_USER_SERVER && !jid.user.is_empty())
                .ok_or(GroupError::BadRequest("to jid"))?;
            let encs: Vec<Node> = to
                .children_by_tag("enc")
                .take(MAX_ENC_PER_DEVICE)
                .cloned()
                .collect();
            pairwise.insert(jid, encs);
        }
    }
    let skmsg = node
        .children_by_tag("enc")
        .find(|enc| enc.attr_str("type") == Some("skmsg"))
        .cloned();
    if skmsg.is_none() && pairwise.is_empty() {
        return Err(GroupError::BadRequest("no enc"));
    }
    Ok(GroupMessage {
        id,
        group: to.user,
        kind: node
            .attr_string("type")
            .unwrap_or_else(|| "text".to_owned()),
        pairwise,
        skmsg,
        device_identity: node.child("device-identity").cloned(),
        only: node
            .attr_jid("participant")
            .filter(|jid| jid.server == DEFAULT_USER_SERVER),
    })
}

/// What the server delivers to one member device:
/// `<message from=G participant=SENDER[:dev] id t type [notify]>` with the
/// device's own pairwise `<enc>` first, then the `skmsg`, then the sender's
/// device identity when a pkmsg is included.
pub(crate) fn delivered_message(
    message: &GroupMessage,
    sender: &Jid,
    t: u64,
    notify: Option<&str>,
    mut encs: Vec<Node>,
) -> Node {
    let mut node = Node::new("message")
        .attr("from", Jid::new(message.group.clone(), GROUP_SERVER))
        .attr("participant", sender.clone())
        .attr("id", message.id.clone())
        .attr("t", t.to_string())
        .attr("type", message.kind.clone());
    if let Some(notify) = notify.filter(|n| !n.is_empty()) {
        node = node.attr("notify", notify.to_owned());
    }
    let has_pkmsg = encs.iter().any(|e| e.attr_str("type") == Some("pkmsg"));
    encs.extend(message.skmsg.iter().cloned());
    if has_pkmsg {
        encs.extend(message.device_identity.iter().cloned());
    }
    node.children(encs)
}

/// The server's ack of a group message; `error` when refused.
pub(crate) fn message_ack(id: &str, group: &str, t: u64, error: Option<u16>) -> Node {
    let ack = Node::new("ack")
        .attr("class", "message")
        .attr("id", id.to_owned())
        .attr("from", Jid::new(group, GROUP_SERVER))
        .attr("t", t.to_string());
    match error {
        Some(code) => ack.attr("error", code.to_string()),
        None => ack,
    }
}

/// The participant list hash (`phash`, version 2) of a group's devices:
/// `2:` and the unpadded base64 of the first 6 bytes of SHA-256 over the
/// sorted `user.agent:device@server` forms, concatenated. A sender puts its
/// own in the message and the server answers with its own in the ack, so
/// the sender learns that its device list is stale.
pub(crate) fn participant_hash(devices: &[Jid]) -> String {
    let mut forms: Vec<String> = devices
        .iter()
        .map(|jid| format!("{}.{}:{}@{}", jid.user, jid.agent, jid.device, jid.server))
        .collect();
    forms.sort_unstable();
    let mut hasher = Sha256::new();
    for form in &forms {
        hasher.update(form.as_bytes());
    }
    let digest = hasher.finalize();
    format!("2:{}", STANDARD_NO_PAD.encode(&digest[..6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(text: &str) -> Jid {
        text.parse().expect("valid jid")
    }

    #[test]
    fn group_messages_parse_and_deliver_pairwise_before_skmsg() {
        let node = Node::new("message")
            .attr("id", "M1")
            .attr("to", jid("120363000000000001@g.us"))
            .attr("type", "text")
            .children(vec![
                Node::new("participants").children(vec![Node::new("to")
                    .attr("jid", jid("222:1@s.whatsapp.net"))
                    .children(vec![crate::sim::routing::enc("pkmsg", vec![1])])]),
                crate::sim::routing::enc("skmsg", vec![2]),
                Node::new("device-identity").bytes(vec![9]),
            ]);
        assert!(is_group_message(&node));
        let message = parse_message(&node).expect("parses");
        assert_eq!(message.group, "120363000000000001");
        assert_eq!(message.acceptance_key(), "M1");
        let sender = jid("111:2@s.whatsapp.net");
        let pairwise = message.pairwise[&jid("222:1@s.whatsapp.net")].clone();
        let out = delivered_message(&message, &sender, 5, Some("Al"), pairwise);
        let tags: Vec<(&str, Option<&str>)> = out
            .child_nodes()
            .iter()
            .map(|n| (n.tag(), n.attr_str("type")))
            .collect();
        assert_eq!(
            tags,
            [
                ("enc", Some("pkmsg")),
                ("enc", Some("skmsg")),
                ("device-identity", None)
            ]
        );
        assert_eq!(
            out.attr_string("participant").as_deref(),
            Some("111:2@s.whatsapp.net")
        );
        let plain = delivered_message(&message, &sender, 5, None, Vec::new());
        assert_eq!(plain.child_nodes().len(), 1, "skmsg only, no identity");

        let bad = Node::new("message")
            .attr("id", "M2")
            .attr("to", jid("120363000000000001@g.us"));
        assert_eq!(parse_message(&bad), Err(GroupError::BadRequest("no enc")));
    }

    #[test]
    fn participant_hashes_ignore_order_and_see_devices() {
        let a = jid("111@s.whatsapp.net");
        let b = jid("222:3@s.whatsapp.net");
        let hash = participant_hash(&[a.clone(), b.clone()]);
        assert!(hash.starts_with("2:") && hash.len() == 10, "{hash}");
        assert_eq!(hash, participant_hash(&[b, a.clone()]));
        assert_ne!(hash, participant_hash(&[a]));
        // Computed independently (Python hashlib) over the two AD forms.
        assert_eq!(hash, "2:60I/lmIh");
    }
}
