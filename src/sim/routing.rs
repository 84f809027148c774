//! Message routing stanzas: parses what a client sends (`<message>` with its
//! per-device `<enc>` payloads, `<receipt>`, `<ack>`) and builds what the
//! server delivers (the per-device `<message>`, forwarded receipts, server
//! acks). Pure functions over nodes; no I/O, imports `wa` only.

use rand::RngCore;

use crate::wa::binary::Node;
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER};

/// Most `<to>` devices accepted in one message.
const MAX_PARTICIPANTS: usize = 0x400;
/// Most `<enc>` payloads for one device (pairwise, sender key, and spares).
const MAX_ENC_PER_DEVICE: usize = 4;
/// Most ids one receipt may confirm (its id plus `<list><item>`s).
const MAX_RECEIPT_IDS: usize = 0x100;
/// Message ids WhatsApp Web clients make start with this.
const MESSAGE_ID_PREFIX: &str = "3EB0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RoutingError {
    #[error("missing or malformed {0}")]
    Malformed(&'static str),
    #[error("more than {MAX_PARTICIPANTS} participants")]
    TooManyParticipants,
    #[error("only user JIDs on {DEFAULT_USER_SERVER} are routed, not {0}")]
    Unroutable(String),
}

/// A 1:1 message a client sent, split per target device.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientMessage {
    pub(crate) id: String,
    /// The chat: the peer account (`to`).
    pub(crate) to: Jid,
    pub(crate) kind: String,
    /// Each target device with the `<enc>` nodes meant for it.
    pub(crate) targets: Vec<(Jid, Vec<Node>)>,
    /// The sender's `<device-identity>`, forwarded with pkmsgs.
    pub(crate) device_identity: Option<Node>,
    /// For a resend to one device after its retry receipt: that device and
    /// the retry count of its `<enc count>`.
    pub(crate) resend: Option<(Jid, String)>,
}

impl ClientMessage {
    /// What makes a message from one device the same message again.
    ///
    /// The server accepts a message id once per sending device: a sender
    /// that is unsure whether its first attempt arrived sends the stanza
    /// again, byte for byte, and must get the same ack without the
    /// recipients getting it twice. A resend to one device after that
    /// device's retry receipt reuses the message id on purpose, so it is
    /// told apart by the device and retry count it carries (and repeated
    /// copies of that resend are again accepted once).
    pub(crate) fn acceptance_key(&self) -> String {
        match &self.resend {
            None => self.id.clone(),
            Some((device, count)) => format!("{}\n{device}\n{count}", self.id),
        }
    }
}

fn user_jid(jid: Jid) -> Result<Jid, RoutingError> {
    if jid.server == DEFAULT_USER_SERVER && !jid.user.is_empty() {
        Ok(jid)
    } else {
        Err(RoutingError::Unroutable(jid.to_string()))
    }
}

/// Parses `<message id to type><participants><to jid><enc/>…</to>…`; a
/// message addressed to one device (a retry resend) carries its `<enc>`
/// directly.
pub(crate) fn parse_message(node: &Node) -> Result<ClientMessage, RoutingError> {
    let id = node
        .attr_string("id")
        .filter(|id| !id.is_empty())
        .ok_or(RoutingError::Malformed("message id"))?;
    let to = user_jid(
        node.attr_jid("to")
            .ok_or(RoutingError::Malformed("message to"))?,
    )?;
    let kind = node
        .attr_string("type")
        .unwrap_or_else(|| "text".to_owned());
    let encs = |parent: &Node| -> Vec<Node> {
        parent
            .children_by_tag("enc")
            .take(MAX_ENC_PER_DEVICE)
            .cloned()
            .collect()
    };
    let mut resend = None;
    let targets = match node.child("participants") {
        Some(participants) => {
            if participants.child_nodes().len() > MAX_PARTICIPANTS {
                return Err(RoutingError::TooManyParticipants);
            }
            participants
                .children_by_tag("to")
                .map(|to| {
                    let jid = to
                        .attr_jid("jid")
                        .ok_or(RoutingError::Malformed("to jid"))?;
                    Ok((user_jid(jid)?, encs(to)))
                })
                .collect::<Result<Vec<_>, RoutingError>>()?
        }
        None => {
            let direct = encs(node);
            if direct.is_empty() {
                return Err(RoutingError::Malformed("participants or enc"));
            }
            let count = direct
                .iter()
                .find_map(|enc| enc.attr_string("count"))
                .unwrap_or_default();
            resend = Some((to.clone(), count));
            vec![(to.clone(), direct)]
        }
    };
    Ok(ClientMessage {
        id,
        to: to.to_non_ad(),
        kind,
        targets,
        device_identity: node.child("device-identity").cloned(),
        resend,
    })
}

/// What the server delivers to one device.
pub(crate) struct Delivery<'a> {
    pub(crate) id: &'a str,
    pub(crate) kind: &'a str,
    /// The sending device.
    pub(crate) from: &'a Jid,
    pub(crate) t: u64,
    pub(crate) notify: Option<&'a str>,
    /// The chat, set when delivering to the sender's own other devices.
    pub(crate) recipient: Option<&'a Jid>,
    pub(crate) encs: Vec<Node>,
    pub(crate) device_identity: Option<Node>,
}

/// `<message from id t type [notify] [recipient]><enc/>…[<device-identity>]`.
pub(crate) fn delivered_message(delivery: Delivery<'_>) -> Node {
    let mut node = Node::new("message")
        .attr("from", delivery.from.clone())
        .attr("id", delivery.id.to_owned())
        .attr("t", delivery.t.to_string())
        .attr("type", delivery.kind.to_owned());
    if let Some(notify) = delivery.notify.filter(|n| !n.is_empty()) {
        node = node.attr("notify", notify.to_owned());
    }
    if let Some(recipient) = delivery.recipient {
        node = node.attr("recipient", recipient.clone());
    }
    let mut children = delivery.encs;
    let has_pkmsg = children
        .iter()
        .any(|enc| enc.attr_str("type") == Some("pkmsg"));
    if has_pkmsg {
        children.extend(delivery.device_identity);
    }
    node.children(children)
}

/// `<enc v="2" type>ciphertext</enc>`.
pub(crate) fn enc(kind: &str, ciphertext: Vec<u8>) -> Node {
    Node::new("enc")
        .attr("v", "2")
        .attr("type", kind.to_owned())
        .bytes(ciphertext)
}

/// The server's `<ack class="message" id from=TO t/>` to the sender.
pub(crate) fn message_ack(id: &str, to: &Jid, t: u64) -> Node {
    Node::new("ack")
        .attr("class", "message")
        .attr("id", id.to_owned())
        .attr("from", to.clone())
        .attr("t", t.to_string())
}

/// The server's `<ack class="receipt" id from [type]/>` for a receipt.
pub(crate) fn receipt_ack(receipt: &ClientReceipt) -> Node {
    let ack = Node::new("ack")
        .attr("class", "receipt")
        .attr("id", receipt.id.clone())
        .attr("from", receipt.to.clone());
    match &receipt.kind {
        Some(kind) => ack.attr("type", kind.clone()),
        None => ack,
    }
}

/// A receipt a client sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientReceipt {
    pub(crate) id: String,
    /// Every message id it confirms: `id` and the `<list><item id>`s.
    pub(crate) ids: Vec<String>,
    pub(crate) to: Jid,
    pub(crate) kind: Option<String>,
    pub(crate) participant: Option<Jid>,
    pub(crate) recipient: Option<Jid>,
    /// Children kept for forwarding (`<list>`, and a retry's keys).
    pub(crate) children: Vec<Node>,
}

/// Parses `<receipt id to [type] [participant] [recipient]>[<list>…]`.
pub(crate) fn parse_receipt(node: &Node) -> Result<ClientReceipt, RoutingError> {
    let id = node
        .attr_string("id")
        .filter(|id| !id.is_empty())
        .ok_or(RoutingError::Malformed("receipt id"))?;
    let to = node
        .attr_jid("to")
        .ok_or(RoutingError::Malformed("receipt to"))?;
    // A receipt for a group message names the group and its author.
    let to = if to.is_group() && node.attr_jid("participant").is_some() {
        to
    } else {
        user_jid(to)?
    };
    let mut ids = vec![id.clone()];
    if let Some(list) = node.child("list") {
        ids.extend(
            list.children_by_tag("item")
                .filter_map(|item| item.attr_string("id"))
                .take(MAX_RECEIPT_IDS - 1),
        );
    }
    Ok(ClientReceipt {
        id,
        ids,
        to,
        kind: node.attr_string("type"),
        participant: node.attr_jid("participant"),
        recipient: node.attr_jid("recipient"),
        children: node.child_nodes().to_vec(),
    })
}

/// Whose devices a client's receipt goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReceiptAudience {
    /// Only the device that sent the message (a retry request).
    Device(Jid),
    /// Every device of this account but the one that sent the receipt.
    Account(String),
}

/// Where `receipt`, sent by the device `reader`, goes: a retry to the
/// message's sending device; `read-self` and `played-self` (the reader
/// keeps its read receipts private) only to the reader's own other
/// devices; any other receipt to every device of the message's sender (the
/// chat, or in a group the `participant`).
pub(crate) fn receipt_audience(receipt: &ClientReceipt, reader: &Jid) -> Option<ReceiptAudience> {
    let author = if receipt.to.is_group() {
        receipt.participant.as_ref()?
    } else {
        &receipt.to
    };
    Some(match receipt.kind.as_deref() {
        Some("retry") => ReceiptAudience::Device(author.clone()),
        Some("read-self" | "played-self") => ReceiptAudience::Account(reader.user.clone()),
        _ => ReceiptAudience::Account(author.user.clone()),
    })
}

/// The receipt as the server hands it to the original sender:
/// `<receipt from=RECIPIENT:dev id t [type] [recipient]>children</receipt>`.
pub(crate) fn forwarded_receipt(receipt: &ClientReceipt, from: &Jid, t: u64) -> Node {
    let mut node = Node::new("receipt")
        .attr("from", from.clone())
        .attr("id", receipt.id.clone())
        .attr("t", t.to_string());
    if let Some(kind) = &receipt.kind {
        node = node.attr("type", kind.clone());
    }
    if let Some(recipient) = &receipt.recipient {
        node = node.attr("recipient", recipient.clone());
    }
    if receipt.children.is_empty() {
        node
    } else {
        node.children(receipt.children.clone())
    }
}

/// A delivery receipt a virtual phone sends for a message it decrypted.
pub(crate) fn phone_receipt(id: &str, phone: &Jid, t: u64) -> Node {
    Node::new("receipt")
        .attr("from", phone.clone())
        .attr("id", id.to_owned())
        .attr("t", t.to_string())
}

/// A client's `<ack class id>`: what it confirms receiving.
pub(crate) fn parse_ack(node: &Node) -> Option<(String, String)> {
    Some((node.attr_string("class")?, node.attr_string("id")?))
}

/// A message id in WhatsApp Web's format: `3EB0` and 18 uppercase hex digits.
pub(crate) fn new_message_id(rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 9];
    rng.fill_bytes(&mut bytes);
    format!("{MESSAGE_ID_PREFIX}{}", hex::encode_upper(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn jid(text: &str) -> Jid {
        text.parse().expect("valid jid")
    }

    fn baileys_message() -> Node {
        Node::new("message")
            .attr("id", "3EB0ABC")
            .attr("to", jid("222@s.whatsapp.net"))
            .attr("type", "text")
            .children(vec![
                Node::new("participants").children(vec![
                    Node::new("to")
                        .attr("jid", jid("222@s.whatsapp.net"))
                        .children(vec![enc("pkmsg", vec![1, 2])]),
                    Node::new("to")
                        .attr("jid", jid("111@s.whatsapp.net"))
                        .children(vec![enc("msg", vec![3])]),
                ]),
                Node::new("device-identity").bytes(vec![9]),
            ])
    }

    #[test]
    fn client_messages_split_per_device() {
        let message = parse_message(&baileys_message()).expect("valid message");
        assert_eq!(message.id, "3EB0ABC");
        assert_eq!(message.to, jid("222@s.whatsapp.net"));
        assert_eq!(message.kind, "text");
        assert_eq!(message.targets.len(), 2);
        assert_eq!(message.targets[1].0, jid("111@s.whatsapp.net"));
        assert_eq!(message.targets[1].1[0].content_bytes(), Some(&[3][..]));
        assert!(message.device_identity.is_some());

        let direct = Node::new("message")
            .attr("id", "R1")
            .attr("to", jid("222:3@s.whatsapp.net"))
            .children(vec![enc("msg", vec![5])]);
        let retry = parse_message(&direct).expect("direct message");
        assert_eq!(retry.to, jid("222@s.whatsapp.net"));
        assert_eq!(retry.targets[0].0, jid("222:3@s.whatsapp.net"));
        assert_eq!(message.acceptance_key(), "3EB0ABC");
        let again = parse_message(&direct.clone()).expect("direct message");
        assert_eq!(retry.acceptance_key(), again.acceptance_key());
        assert_ne!(
            retry.acceptance_key(),
            "R1",
            "a resend is not the first send"
        );
        let second_retry = Node::new("message")
            .attr("id", "R1")
            .attr("to", jid("222:3@s.whatsapp.net"))
            .children(vec![enc("msg", vec![6]).attr("count", "2")]);
        let second_retry = parse_message(&second_retry).expect("direct message");
        assert_ne!(retry.acceptance_key(), second_retry.acceptance_key());
    }

    #[test]
    fn bad_client_messages_are_refused() {
        let no_id = Node::new("message").attr("to", jid("1@s.whatsapp.net"));
        assert_eq!(
            parse_message(&no_id),
            Err(RoutingError::Malformed("message id"))
        );
        let group = Node::new("message")
            .attr("id", "x")
            .attr("to", jid("1-2@g.us"))
            .children(vec![enc("skmsg", vec![1])]);
        assert!(matches!(
            parse_message(&group),
            Err(RoutingError::Unroutable(_))
        ));
        let empty = Node::new("message")
            .attr("id", "x")
            .attr("to", jid("1@s.whatsapp.net"));
        assert_eq!(
            parse_message(&empty),
            Err(RoutingError::Malformed("participants or enc"))
        );
        let no_to_jid = Node::new("message")
            .attr("id", "x")
            .attr("to", jid("1@s.whatsapp.net"))
            .children(vec![
                Node::new("participants").children(vec![Node::new("to")])
            ]);
        assert_eq!(
            parse_message(&no_to_jid),
            Err(RoutingError::Malformed("to jid"))
        );
        let many = (0..=MAX_PARTICIPANTS).map(|_| Node::new("to")).collect();
        let crowded = Node::new("message")
            .attr("id", "x")
            .attr("to", jid("1@s.whatsapp.net"))
            .children(vec![Node::new("participants").children(many)]);
        assert_eq!(
            parse_message(&crowded),
            Err(RoutingError::TooManyParticipants)
        );
    }

    #[test]
    fn deliveries_carry_sender_and_identity_only_with_pkmsg() {
        let from = jid("111:2@s.whatsapp.net");
        let peer = jid("222@s.whatsapp.net");
        let node = delivered_message(Delivery {
            id: "M1",
            kind: "text",
            from: &from,
            t: 1_700_000_000,
            notify: Some("Alice"),
            recipient: Some(&peer),
            encs: vec![enc("pkmsg", vec![1])],
            device_identity: Some(Node::new("device-identity").bytes(vec![9])),
        });
        assert_eq!(
            node.attr_string("from").as_deref(),
            Some("111:2@s.whatsapp.net")
        );
        assert_eq!(node.attr_str("t"), Some("1700000000"));
        assert_eq!(node.attr_str("notify"), Some("Alice"));
        assert_eq!(
            node.attr_string("recipient").as_deref(),
            Some("222@s.whatsapp.net")
        );
        assert!(node.attr_str("offline").is_none());
        assert!(node.child("device-identity").is_some());

        let plain = delivered_message(Delivery {
            id: "M2",
            kind: "text",
            from: &from,
            t: 1,
            notify: None,
            recipient: None,
            encs: vec![enc("msg", vec![1])],
            device_identity: Some(Node::new("device-identity")),
        });
        assert!(plain.child("device-identity").is_none());
        assert!(plain.attr_str("notify").is_none() && plain.attr_str("recipient").is_none());

        let ack = message_ack("M1", &peer, 5);
        assert_eq!(ack.attr_str("class"), Some("message"));
        assert_eq!(
            ack.attr_string("from").as_deref(),
            Some("222@s.whatsapp.net")
        );
    }

    #[test]
    fn receipts_parse_and_forward() {
        let node = Node::new("receipt")
            .attr("id", "M1")
            .attr("to", jid("111:2@s.whatsapp.net"))
            .attr("type", "read")
            .children(vec![Node::new("list").children(vec![
                Node::new("item").attr("id", "M2"),
                Node::new("item").attr("id", "M3"),
            ])]);
        let receipt = parse_receipt(&node).expect("valid receipt");
        assert_eq!(receipt.ids, vec!["M1", "M2", "M3"]);
        assert_eq!(receipt.to, jid("111:2@s.whatsapp.net"));
        let forwarded = forwarded_receipt(&receipt, &jid("222:1@s.whatsapp.net"), 7);
        assert_eq!(
            forwarded.attr_string("from").as_deref(),
            Some("222:1@s.whatsapp.net")
        );
        assert_eq!(forwarded.attr_str("type"), Some("read"));
        assert_eq!(forwarded.attr_str("t"), Some("7"));
        assert!(forwarded.child("list").is_some());
        let ack = receipt_ack(&receipt);
        assert_eq!(ack.attr_str("class"), Some("receipt"));
        assert_eq!(ack.attr_str("type"), Some("read"));

        assert_eq!(
            parse_receipt(&Node::new("receipt").attr("id", "x")),
            Err(RoutingError::Malformed("receipt to"))
        );
        assert_eq!(
            parse_receipt(&Node::new("receipt")),
            Err(RoutingError::Malformed("receipt id"))
        );
        assert_eq!(parse_ack(&Node::new("ack").attr("id", "x")), None);
        assert_eq!(
            parse_ack(&Node::new("ack").attr("id", "x").attr("class", "receipt")),
            Some(("receipt".into(), "x".into()))
        );
    }

    #[test]
    fn receipts_go_to_the_author_or_stay_with_the_reader() {
        let reader = jid("222:1@s.whatsapp.net");
        let receipt = |to: &str, kind: Option<&str>, participant: Option<&str>| {
            let mut node = Node::new("receipt").attr("id", "M1").attr("to", jid(to));
            if let Some(kind) = kind {
                node = node.attr("type", kind.to_owned());
            }
            if let Some(participant) = participant {
                node = node.attr("participant", jid(participant));
            }
            parse_receipt(&node).expect("valid receipt")
        };
        let account = |user: &str| Some(ReceiptAudience::Account(user.into()));
        let peer = "111@s.whatsapp.net";
        assert_eq!(
            receipt_audience(&receipt(peer, Some("read"), None), &reader),
            account("111")
        );
        assert_eq!(
            receipt_audience(&receipt(peer, None, None), &reader),
            account("111")
        );
        assert_eq!(
            receipt_audience(&receipt(peer, Some("read-self"), None), &reader),
            account("222")
        );
        assert_eq!(
            receipt_audience(
                &receipt("111:4@s.whatsapp.net", Some("retry"), None),
                &reader
            ),
            Some(ReceiptAudience::Device(jid("111:4@s.whatsapp.net")))
        );
        let group = "120363000000000001@g.us";
        let author = Some("333@s.whatsapp.net");
        assert_eq!(
            receipt_audience(&receipt(group, Some("read"), author), &reader),
            account("333")
        );
        assert_eq!(
            receipt_audience(&receipt(group, Some("read-self"), author), &reader),
            account("222")
        );
        assert_eq!(
            receipt_audience(&receipt(group, Some("played-self"), author), &reader),
            account("222")
        );
    }

    #[test]
    fn message_ids_look_like_whatsapp_web() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let id = new_message_id(&mut rng);
        assert_eq!(id.len(), 22);
        assert!(id.starts_with("3EB0"));
        assert!(id[4..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('A'..='F').contains(&c)));
        assert_ne!(id, new_message_id(&mut rng));
    }
}
