//! Group traffic of the simulated server: `w:g2` queries answered and their
//! `w:gp2` notifications delivered to every member device, group messages
//! fanned out to every device of every member (each with its own pairwise
//! `<enc>` first, then the `skmsg`), group receipts sent back to the
//! author, and virtual phones that send and read group texts with sender
//! keys. Never holds a lock across an `.await`; imports `wa` only.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::debug;

use super::group_message::{self, GroupMessage};
use super::groups::{self, GroupError, GroupQuery, Notice, Outcome};
use super::messaging::address;
use super::phone::{content, text_message, Content, InboxMessage};
use super::registry::QueueClass;
use super::routing::{self, ClientReceipt, ReceiptAudience};
use super::{unix_now, Inner, SimError};
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER, GROUP_SERVER};
use crate::wa::signal::{pad, unpad};

/// What a phone made of a group message.
enum Read {
    Text,
    /// Nothing decrypted: ask for retry `count`.
    Failed {
        count: u32,
        registration: u32,
    },
    Nothing,
}

impl Inner {
    fn group_rng(&self) -> StdRng {
        self.with_rng(|rng| StdRng::from_rng(rng).unwrap_or_else(|_| StdRng::seed_from_u64(0)))
    }

    /// Every device of an account, as JIDs (the phone first).
    fn account_devices(&self, user: &str) -> Vec<Jid> {
        self.registry
            .user_devices(user)
            .into_iter()
            .map(|(device, _)| Jid::with_device(user, device, DEFAULT_USER_SERVER))
            .collect()
    }

    /// Runs a group query for the account `actor`; the notifications it
    /// causes are returned for the caller to deliver after its answer.
    pub(crate) fn group_query(
        &self,
        actor: &Jid,
        group: Option<&str>,
        query: GroupQuery,
    ) -> Result<Outcome, GroupError> {
        // Which of the named participants have an account, looked up before
        // the groups' lock is taken (locks never nest).
        let named: &[String] = match &query {
            GroupQuery::Create { participants, .. } => participants,
            GroupQuery::Change { participants, .. } => participants,
            _ => &[],
        };
        let known: HashSet<String> = named
            .iter()
            .filter(|user| !self.registry.user_devices(user).is_empty())
            .cloned()
            .collect();
        let mut rng = self.group_rng();
        self.groups
            .apply(actor, group, query, &known, unix_now(), &mut rng)
    }

    /// Answers a `w:g2` iq from a device: the reply, and the notifications
    /// to deliver once it is sent.
    pub(crate) fn group_iq(&self, device: &Jid, iq: &Node) -> (Node, Vec<Notice>) {
        let outcome = groups::parse_query(iq)
            .and_then(|(group, query)| self.group_query(device, group.as_deref(), query));
        match outcome {
            Ok(outcome) => (groups::iq_result(iq, outcome.reply), outcome.notices),
            Err(err) => {
                debug!(%err, "group query refused");
                (groups::iq_error(iq, &err), Vec::new())
            }
        }
    }

    /// Delivers `w:gp2` notifications to every device of their recipients
    /// (companions; a virtual phone needs none). Each is queued until the
    /// device acks it, like a message.
    pub(crate) async fn deliver_notices(&self, notices: Vec<Notice>) {
        for notice in notices {
            let id = self.new_iq_id();
            let mut node = notice.node;
            node.set_attr("id", id.clone());
            let actor = node.attr_jid("participant");
            if let Some(name) = actor.and_then(|a| self.registry.push_name(&a.user)) {
                node.set_attr("notify", name);
            }
            if let Some(group) = node.attr_jid("from") {
                node = self.group_view(&group.user, node);
            }
            for user in &notice.recipients {
                for device in self.account_devices(user) {
                    if device.device != 0 {
                        self.to_companion(&device, QueueClass::Notification, &id, node.clone())
                            .await;
                    }
                }
            }
        }
    }

    /// The `phash` of a group's current member devices, if it exists.
    pub(crate) fn group_phash(&self, group: &str) -> Option<String> {
        let members = self.groups.members(group)?;
        let devices: Vec<Jid> = members
            .iter()
            .flat_map(|user| self.account_devices(user))
            .collect();
        Some(group_message::participant_hash(&devices))
    }

    /// Fans a group message out: every device of every current member but
    /// the sending device gets its pairwise `<enc>` (if the sender made one
    /// for it) and the `skmsg`. A member device the sender did not cover
    /// still gets the `skmsg`; without the sender key it asks for a retry,
    /// as with WhatsApp's server.
    pub(crate) async fn route_group_message(&self, sender: &Jid, mut message: GroupMessage) {
        let Some(members) = self.groups.members(&message.group) else {
            return;
        };
        let t = unix_now();
        let notify = self.registry.push_name(&sender.user);
        let by_lid = self.groups.is_lid_addressed(&message.group);
        let targets: Vec<Jid> = match message.only.take() {
            Some(device) if members.contains(&device.user) => vec![device],
            Some(_) => Vec::new(),
            None => members
                .iter()
                .flat_map(|user| self.account_devices(user))
                .filter(|device| device != sender)
                .collect(),
        };
        for target in targets {
            let pairwise = message.pairwise.remove(&target).unwrap_or_default();
            if pairwise.is_empty() && message.skmsg.is_none() {
                continue;
            }
            let mut node =
                group_message::delivered_message(&message, sender, t, notify.as_deref(), pairwise);
            if by_lid {
                node = self.by_lid(node);
            }
            self.deliver_to(&target, QueueClass::Message, &message.id, node)
                .await;
        }
    }

    /// A receipt for a group message goes to the author's devices (the
    /// receipt's `participant`), a private one (`read-self`) to the
    /// reader's own other devices, as `<receipt from=G participant=READER>`.
    pub(crate) async fn route_group_receipt(&self, reader: &Jid, receipt: ClientReceipt) {
        let mut forwarded = routing::forwarded_receipt(&receipt, &receipt.to, unix_now());
        forwarded.set_attr("participant", reader.clone());
        let forwarded = self.group_view(&receipt.to.user, forwarded);
        let targets: Vec<Jid> = match routing::receipt_audience(&receipt, reader) {
            None => return,
            Some(ReceiptAudience::Device(device)) => vec![device],
            Some(ReceiptAudience::Account(user)) => self
                .account_devices(&user)
                .into_iter()
                .filter(|device| device != reader)
                .collect(),
        };
        for target in targets {
            self.deliver_to(&target, QueueClass::Receipt, &receipt.id, forwarded.clone())
                .await;
        }
    }

    /// A virtual phone reads a group message: the sender key distribution
    /// in its pairwise `<enc>` first, then the `skmsg`; a text (or a
    /// location, cards, a poll or a vote, decoded) lands in its inbox with
    /// the group as chat, and the author's companions get a delivery
    /// receipt.
    pub(crate) async fn phone_receive_group(&self, phone: &Jid, node: Node) {
        let (Some(group), Some(author)) = (node.attr_jid("from"), node.attr_jid("participant"))
        else {
            return;
        };
        // The phone keeps its sessions and sender keys by phone number,
        // whichever address the group uses.
        let author = self.phone_jid(&author);
        let group_id = group.to_string();
        let id = node.attr_string("id").unwrap_or_default();
        let t = node.attr_u64("t").unwrap_or_else(unix_now);
        let sender = address(&author);
        let mut rng = self.group_rng();
        let outcome = self.registry.with_handset(&phone.user, |handset| {
            if handset.has_received(&author.to_string(), &id) {
                return Read::Nothing;
            }
            let mut text = None;
            let mut rich = None;
            let mut failed = false;
            for enc in node.children_by_tag("enc") {
                let Some(bytes) = enc.content_bytes() else {
                    continue;
                };
                let outcome = match enc.attr_str("type").unwrap_or_default() {
                    "skmsg" => handset
                        .sender_keys
                        .decrypt(&group_id, &sender, bytes)
                        .map_err(|err| err.to_string())
                        .and_then(|padded| {
                            let plain = unpad(&padded).map_err(|err| err.to_string())?;
                            content(plain).map_err(|err| err.to_string())
                        }),
                    kind => handset
                        .decrypt_message(&sender, kind, bytes, &mut rng)
                        .map_err(|err| err.to_string())
                        .and_then(|message| {
                            if let Some(distribution) = message
                                .sender_key_distribution_message
                                .as_ref()
                                .and_then(|d| d.axolotl_sender_key_distribution_message.as_ref())
                            {
                                handset
                                    .sender_keys
                                    .process(&group_id, &sender, distribution)
                                    .map_err(|err| err.to_string())?;
                            }
                            Ok(Content::Other)
                        }),
                };
                match outcome {
                    Ok(Content::Text(received)) => text = Some(received),
                    Ok(Content::Rich(content)) if author.user != phone.user => {
                        rich = Some(handset.receive_rich(*content, &id, &author.to_non_ad()));
                        text = Some(String::new());
                    }
                    Ok(_) => {}
                    Err(err) => {
                        failed = true;
                        debug!(%author, %err, "phone cannot decrypt a group message");
                    }
                }
            }
            if text.is_none() && failed {
                return match handset.sender_keys.next_retry(&author.to_string(), &id) {
                    Some(count) => Read::Failed {
                        count,
                        registration: handset.registration_id(),
                    },
                    None => Read::Nothing,
                };
            }
            // A text from another device of the same account is the
            // phone's own message, not one it received.
            if let Some(text) = text.filter(|_| author.user != phone.user) {
                handset.record(InboxMessage {
                    from: author.to_string(),
                    chat: group_id.clone(),
                    id: id.clone(),
                    text,
                    timestamp: t,
                    media: None,
                    content: rich,
                });
                Read::Text
            } else {
                Read::Nothing
            }
        });
        match outcome {
            Some(Read::Text) if author.user != phone.user => {}
            Some(Read::Failed {
                count,
                registration,
            }) if author.device != 0 => {
                // Like any WhatsApp client, the phone asks the author's
                // device to send the message again (with its sender key).
                let retry = routing::phone_receipt(&id, &group, unix_now())
                    .attr("participant", phone.to_non_ad())
                    .attr("type", "retry")
                    .children(vec![
                        Node::new("retry")
                            .attr("count", count.to_string())
                            .attr("id", id.clone())
                            .attr("t", t.to_string())
                            .attr("v", "1"),
                        Node::new("registration").bytes(registration.to_be_bytes().to_vec()),
                    ]);
                let retry = self.group_view(&group.user, retry);
                self.to_companion(&author, QueueClass::Receipt, &id, retry)
                    .await;
                return;
            }
            _ => return,
        }
        let receipt =
            routing::phone_receipt(&id, &group, unix_now()).attr("participant", phone.to_non_ad());
        let receipt = self.group_view(&group.user, receipt);
        for device in self.account_devices(&author.user) {
            if device.device != 0 {
                self.to_companion(&device, QueueClass::Receipt, &id, receipt.clone())
                    .await;
            }
        }
    }

    /// The virtual phone of `from_user` sends `text` to a group it is in:
    /// its sender key goes pairwise to every member device that lacks it,
    /// then one `skmsg` goes to all. Returns the message id.
    pub(crate) async fn phone_send_group(
        &self,
        from_user: &str,
        group: &str,
        text: &str,
    ) -> Result<String, SimError> {
        self.groups
            .check_sender(group, from_user)
            .map_err(SimError::Group)?;
        let members = self
            .groups
            .members(group)
            .ok_or(SimError::Group(GroupError::NotFound))?;
        let phone = Jid::new(from_user, DEFAULT_USER_SERVER);
        let devices: Vec<Jid> = members
            .iter()
            .flat_map(|user| self.account_devices(user))
            .filter(|device| *device != phone)
            .collect();
        let group_jid = Jid::new(group, GROUP_SERVER).to_string();
        let lacking = self
            .registry
            .with_handset(from_user, |handset| {
                handset.sender_keys.lacking(&group_jid, &devices)
            })
            .ok_or_else(|| SimError::NotFound(format!("no account {from_user}")))?;
        let mut rng = self.group_rng();
        let id = routing::new_message_id(&mut rng);
        let (pairwise, skmsg) = self
            .registry
            .with_handset_and_bundles(from_user, &lacking, |handset, bundles| {
                let distribution = handset.sender_keys.distribution(&group_jid, &mut rng);
                let mut pairwise = HashMap::new();
                for (target, bundle) in lacking.iter().zip(bundles) {
                    // One device without keys does not fail the send: it
                    // gets the skmsg alone and can ask for a retry.
                    match handset.encrypt(
                        &address(target),
                        bundle.as_ref(),
                        &distribution,
                        &mut rng,
                    ) {
                        Ok(ciphertext) => {
                            let enc = routing::enc(ciphertext.kind(), ciphertext.into_bytes());
                            pairwise.insert(target.clone(), vec![enc]);
                        }
                        Err(err) => debug!(%target, %err, "no sender key for this device"),
                    }
                }
                handset
                    .sender_keys
                    .shared(&group_jid, pairwise.keys().cloned());
                let padded = pad(
                    &mut rng,
                    &prost::Message::encode_to_vec(&text_message(text)),
                );
                let skmsg = handset.sender_keys.encrypt(&group_jid, &padded, &mut rng);
                skmsg.map(|skmsg| (pairwise, skmsg))
            })
            .ok_or_else(|| SimError::NotFound(format!("no account {from_user}")))?
            .map_err(|err| SimError::Encryption(err.to_string()))?;
        let message = GroupMessage {
            id: id.clone(),
            group: group.to_owned(),
            kind: "text".to_owned(),
            pairwise,
            skmsg: Some(routing::enc("skmsg", skmsg)),
            device_identity: None,
            only: None,
        };
        self.route_group_message(&phone, message).await;
        Ok(id)
    }
}
