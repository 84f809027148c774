//! Message routing between devices: client messages fanned out per device,
//! receipts forwarded to senders, virtual phones that decrypt what they are
//! sent and send texts of their own, and per-device queues that hold every
//! stanza until the device acknowledges it (replayed as `offline` at the
//! next login). Runs on the control side and on each connection's router
//! task; never holds a registry lock across an `.await`. Imports `wa` only.

use std::sync::Arc;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::debug;

use super::phone::{device_sent_message, text_message, Content, InboxMessage};
use super::registry::QueueClass;
use super::routing::{self, ClientMessage, ClientReceipt, Delivery, ReceiptAudience};
use super::{unix_now, Inner, SimError};
use crate::proto::wa::Message;
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER, LID_SERVER};
use crate::wa::signal::ProtocolAddress;

/// The Signal address of a device JID.
pub(crate) fn address(jid: &Jid) -> ProtocolAddress {
    ProtocolAddress::new(jid.user.clone(), u32::from(jid.device))
}

impl Inner {
    /// A generator for work done under a phone's lock (the locks
    /// never nest, so it is drawn first).
    pub(super) fn fork_rng(&self) -> StdRng {
        self.with_rng(|rng| StdRng::from_rng(rng).unwrap_or_else(|_| StdRng::seed_from_u64(0)))
    }

    /// Hands a stanza to one device: a virtual phone processes it at once;
    /// a companion gets it queued until acknowledged, and live now if it is
    /// connected.
    pub(crate) async fn deliver_to(&self, device: &Jid, class: QueueClass, id: &str, node: Node) {
        if device.device == 0 {
            if node.tag() == "message" {
                self.phone_receive(device, node).await;
            }
            // Receipts for a phone's own texts need no action.
            return;
        }
        self.to_companion(device, class, id, node).await;
    }

    /// Queues a stanza for a companion and sends it to its live connections.
    pub(crate) async fn to_companion(&self, device: &Jid, class: QueueClass, id: &str, node: Node) {
        let node = Arc::new(node);
        for conn in self.registry.enqueue(device, class, id, Arc::clone(&node)) {
            // A connection that just ended has the stanza in its queue still.
            let _ = conn
                .send(super::registry::Command::Deliver(Arc::clone(&node)))
                .await;
        }
    }

    /// Routes a message a companion sent: one delivery per target device.
    pub(crate) async fn route_message(&self, sender: &Jid, message: ClientMessage) {
        let t = unix_now();
        let notify = self.registry.push_name(&sender.user);
        for (target, encs) in message.targets {
            if target == *sender || encs.is_empty() {
                continue;
            }
            let own = target.user == sender.user;
            let node = routing::delivered_message(Delivery {
                id: &message.id,
                kind: &message.kind,
                from: sender,
                t,
                notify: notify.as_deref(),
                recipient: own.then_some(&message.to),
                encs,
                device_identity: message.device_identity.clone(),
            });
            let node = self.with_sender_lid(node, sender);
            self.deliver_to(&target, QueueClass::Message, &message.id, node)
                .await;
        }
    }

    /// A message from a phone number's device names the sender's LID too
    /// (`sender_lid`), as WhatsApp's server does.
    fn with_sender_lid(&self, node: Node, sender: &Jid) -> Node {
        match self.registry.revealed_lid_of(&sender.user) {
            Some(lid) if sender.server == DEFAULT_USER_SERVER => {
                node.attr("sender_lid", Jid::new(lid, LID_SERVER))
            }
            _ => node,
        }
    }

    /// Routes a receipt: the recipient's confirmation goes to the original
    /// sender's devices (a retry only to the device that sent the message,
    /// a private `read-self` only to the reader's own other devices).
    pub(crate) async fn route_receipt(&self, sender: &Jid, receipt: ClientReceipt) {
        if receipt.kind.as_deref() == Some("server-error") {
            // A media retry request: answered by the phone that sent the
            // media, not forwarded.
            self.answer_media_retry(sender, &receipt).await;
            return;
        }
        let mut forwarded = routing::forwarded_receipt(&receipt, sender, unix_now());
        let targets: Vec<Jid> = match routing::receipt_audience(&receipt, sender) {
            None => return,
            Some(ReceiptAudience::Device(device)) => vec![device],
            Some(ReceiptAudience::Account(user)) => {
                if user == sender.user && receipt.recipient.is_none() {
                    // The reader's own devices learn which chat it was.
                    forwarded.set_attr("recipient", receipt.to.clone());
                }
                self.registry
                    .user_devices(&user)
                    .into_iter()
                    .map(|(device, _)| Jid::with_device(user.clone(), device, DEFAULT_USER_SERVER))
                    .filter(|jid| jid != sender)
                    .collect()
            }
        };
        for target in targets {
            self.deliver_to(&target, QueueClass::Receipt, &receipt.id, forwarded.clone())
                .await;
        }
    }

    /// A virtual phone decrypts a message; a text lands in its inbox and
    /// the sender's devices get a delivery receipt.
    async fn phone_receive(&self, phone: &Jid, node: Node) {
        let Some(from) = node.attr_jid("from") else {
            return;
        };
        if from.is_group() {
            return self.phone_receive_group(phone, node).await;
        }
        let id = node.attr_string("id").unwrap_or_default();
        let t = node.attr_u64("t").unwrap_or_else(unix_now);
        let mut rng = self.fork_rng();
        let sender = address(&from);
        let decrypted = self.registry.with_handset(&phone.user, |handset| {
            // A phone keeps each (sender, id) once, as real phones do: a
            // message sent again under the same id is not a new message.
            if handset.has_received(&from.to_string(), &id) {
                return None;
            }
            let mut found = None;
            for enc in node.children_by_tag("enc") {
                let kind = enc.attr_str("type").unwrap_or_default();
                let Some(bytes) = enc.content_bytes() else {
                    continue;
                };
                match handset.decrypt(&sender, kind, bytes, &mut rng) {
                    Ok(content @ (Content::Text(_) | Content::Media { .. })) => {
                        found = Some(content)
                    }
                    Ok(Content::Rich(rich)) => {
                        let content = handset.receive_rich(*rich, &id, &from.to_non_ad());
                        found = Some(Content::Received(Box::new(content)));
                    }
                    Ok(Content::SentByMe { .. } | Content::Received(_) | Content::Other) => {}
                    Err(err) => debug!(%from, %err, "phone cannot decrypt"),
                }
            }
            found
        });
        let mut rich = None;
        let (text, media) = match decrypted.flatten() {
            Some(Content::Text(text)) => (text, None),
            Some(Content::Received(content)) => {
                rich = Some(*content);
                (String::new(), None)
            }
            // Downloaded and checked outside the registry lock.
            Some(Content::Media { kind, info }) => self.receive_media(kind, info).await,
            _ => return,
        };
        self.registry.with_handset(&phone.user, |handset| {
            handset.record(InboxMessage {
                from: from.to_string(),
                chat: from.to_non_ad().to_string(),
                id: id.clone(),
                text,
                timestamp: t,
                media,
                content: rich,
            })
        });
        if from.user == phone.user {
            return;
        }
        let receipt = routing::phone_receipt(&id, &phone.to_non_ad(), unix_now());
        for (device, _) in self.registry.user_devices(&from.user) {
            if device != 0 {
                let target = Jid::with_device(from.user.clone(), device, DEFAULT_USER_SERVER);
                self.to_companion(&target, QueueClass::Receipt, &id, receipt.clone())
                    .await;
            }
        }
    }

    /// The phone of `from_user` sends `text` to the account `to_user`: to
    /// every device of the recipient, and a sent copy to its own companions.
    pub(crate) async fn phone_send(
        &self,
        from_user: &str,
        to_user: &str,
        text: &str,
    ) -> Result<String, SimError> {
        let plan = self.phone_plan(from_user, to_user)?;
        self.phone_send_planned(&plan, text).await
    }

    /// Like [`Inner::phone_send`], with the text delivered to the
    /// recipient from the sender's LID (`from="LID@lid"`, its number in
    /// `sender_pn`), as the server addresses an account that moved to LID
    /// addressing. The sender's Signal sessions are the same ones.
    pub(crate) async fn phone_send_from_lid(
        &self,
        from_user: &str,
        to_user: &str,
        text: &str,
    ) -> Result<String, SimError> {
        let mut plan = self.phone_plan(from_user, to_user)?;
        let lid = self
            .registry
            .lid_of(from_user)
            .ok_or_else(|| SimError::NotFound(format!("no account {from_user}")))?;
        // Sent from it, the LID is no secret any more.
        self.registry.set_lid_hidden(from_user, false);
        plan.from_lid = Some(Jid::new(lid, LID_SERVER));
        self.phone_send_planned(&plan, text).await
    }

    /// The phone of `from_user` sends `count` texts `<prefix><n>` to
    /// `to_user`, one after another through the same path as
    /// [`Inner::phone_send`] (each encrypted on its own), at most
    /// `per_second` a second when non-zero. The devices are looked up once:
    /// a device linked during the run gets the texts sent after the next call.
    pub(crate) async fn phone_send_many(
        &self,
        from_user: &str,
        to_user: &str,
        count: u32,
        prefix: &str,
        per_second: u32,
    ) -> Result<Vec<String>, SimError> {
        let plan = self.phone_plan(from_user, to_user)?;
        let start = tokio::time::Instant::now();
        let mut ids = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        for n in 0..count {
            if per_second > 0 {
                // Paced from the start, not from the previous text, so a
                // slow text does not lower the rate asked for.
                let due = start + std::time::Duration::from_secs(u64::from(n)) / per_second;
                tokio::time::sleep_until(due).await;
            }
            ids.push(
                self.phone_send_planned(&plan, &format!("{prefix}{n}"))
                    .await?,
            );
        }
        Ok(ids)
    }

    /// Who a phone's text to `to_user` goes to.
    pub(super) fn phone_plan(&self, from_user: &str, to_user: &str) -> Result<PhonePlan, SimError> {
        let recipients = self.registry.user_devices(to_user);
        if recipients.is_empty() {
            return Err(SimError::NotFound(format!("no account {to_user}")));
        }
        let own = self.registry.user_devices(from_user);
        if own.is_empty() {
            return Err(SimError::NotFound(format!("no account {from_user}")));
        }
        let targets: Vec<Jid> = recipients
            .iter()
            .map(|(device, _)| Jid::with_device(to_user, *device, DEFAULT_USER_SERVER))
            .chain(
                own.iter()
                    .filter(|(device, _)| *device != 0)
                    .map(|(device, _)| Jid::with_device(from_user, *device, DEFAULT_USER_SERVER)),
            )
            .filter(|jid| !(jid.user == from_user && jid.device == 0))
            .collect();
        Ok(PhonePlan {
            from_user: from_user.to_owned(),
            from: Jid::new(from_user, DEFAULT_USER_SERVER),
            chat: Jid::new(to_user, DEFAULT_USER_SERVER),
            notify: self.registry.push_name(from_user),
            targets,
            peer: false,
            from_lid: None,
        })
    }

    /// A phone's message to one of its own companions (key shares, history
    /// notifications): a `peer` message, with no chat of its own.
    pub(super) fn phone_plan_own(&self, companion: &Jid) -> PhonePlan {
        PhonePlan {
            from_user: companion.user.clone(),
            from: Jid::new(companion.user.clone(), DEFAULT_USER_SERVER),
            chat: Jid::new(companion.user.clone(), DEFAULT_USER_SERVER),
            notify: self.registry.push_name(&companion.user),
            targets: vec![companion.clone()],
            peer: true,
            from_lid: None,
        }
    }

    /// Encrypts one text for every device of a plan and routes it.
    async fn phone_send_planned(&self, plan: &PhonePlan, text: &str) -> Result<String, SimError> {
        let for_peer = text_message(text);
        let for_self = device_sent_message(&plan.chat.to_string(), text);
        self.phone_send_message(plan, &for_peer, &for_self, None)
            .await
    }

    /// Encrypts one message for every device of a plan (`for_self` to the
    /// sender's companions) and routes it; a media message names its
    /// `mediatype` on every `<enc>`.
    pub(super) async fn phone_send_message(
        &self,
        plan: &PhonePlan,
        for_peer: &Message,
        for_self: &Message,
        mediatype: Option<&'static str>,
    ) -> Result<String, SimError> {
        let from_user = plan.from_user.as_str();
        let targets = &plan.targets;
        let mut rng = self.fork_rng();
        let id = routing::new_message_id(&mut rng);
        let encrypted = self
            .registry
            .with_handset_and_bundles(from_user, targets, |handset, bundles| {
                targets
                    .iter()
                    .zip(bundles)
                    .map(|(target, bundle)| {
                        let message = if target.user == from_user {
                            for_self
                        } else {
                            for_peer
                        };
                        handset
                            .encrypt(&address(target), bundle.as_ref(), message, &mut rng)
                            .map(|ciphertext| (target.clone(), ciphertext))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .ok_or_else(|| SimError::NotFound(format!("no account {from_user}")))?
            .map_err(|err| SimError::Encryption(err.to_string()))?;
        let t = unix_now();
        for (target, ciphertext) in encrypted {
            let own_device = target.user == from_user;
            let mut enc = routing::enc(ciphertext.kind(), ciphertext.into_bytes());
            if let Some(mediatype) = mediatype {
                enc = enc.attr("mediatype", mediatype);
            }
            let from_lid = plan.from_lid.as_ref().filter(|_| !own_device);
            let node = routing::delivered_message(Delivery {
                id: &id,
                kind: if mediatype.is_some() { "media" } else { "text" },
                from: from_lid.unwrap_or(&plan.from),
                t,
                notify: plan.notify.as_deref(),
                recipient: (own_device && !plan.peer).then_some(&plan.chat),
                encs: vec![enc],
                device_identity: None,
            });
            let node = if plan.peer {
                node.attr("category", "peer")
            } else if from_lid.is_some() {
                node.attr("sender_pn", plan.from.clone())
            } else {
                self.with_sender_lid(node, &plan.from)
            };
            self.deliver_to(&target, QueueClass::Message, &id, node)
                .await;
        }
        Ok(id)
    }
}

/// The devices a phone's text reaches, resolved once per send.
pub(super) struct PhonePlan {
    from_user: String,
    /// The sending phone's account JID.
    from: Jid,
    /// The recipient account (the chat).
    pub(super) chat: Jid,
    notify: Option<String>,
    /// Every device of the recipient, and the sender's own companions.
    targets: Vec<Jid>,
    /// A message between the account's own devices (`category="peer"`).
    peer: bool,
    /// Deliver to the recipient from this LID instead of `from`.
    from_lid: Option<Jid>,
}
