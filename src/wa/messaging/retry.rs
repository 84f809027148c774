//! Retry receipts both ways and prekey upkeep: answering a peer that could
//! not decrypt one of our messages (from the stored copy, with a new
//! session when it sent its keys), generating the prekeys our own retry
//! receipts and uploads carry, and topping up the server's stock.

use prost::Message as _;

use crate::proto::wa::Message;
use crate::wa::binary::Node;
use crate::wa::creds::Credentials;
use crate::wa::jid::Jid;
use crate::wa::message::{self as wamsg, IncomingReceipt};
use crate::wa::prekeys::{self, MIN_SERVER_PREKEYS, UPLOAD_BATCH};
use crate::wa::signal::{self, PreKey, SessionRecord, MAX_PRE_KEY_ID};

use super::iq::{Awaiting, Bundles, PrekeyUpload, RetryTarget};
use super::keys::{KeyError, Txn};
use super::{address_of, Cx, Engine, MAX_RETRIES};

impl Engine {
    /// A peer could not decrypt one of our messages: encrypt it again for
    /// that device, from a new session when the peer sent its keys.
    pub(super) fn on_retry_request(
        &mut self,
        node: &Node,
        receipt: &IncomingReceipt,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let creds = cx.creds;
        let device = receipt.sender().clone();
        if receipt.retry_count > MAX_RETRIES {
            return Ok(());
        }
        let address = address_of(&device);
        let record = match prekeys::parse_retry_keys(node, device.device) {
            Some(Ok(bundle)) => {
                let previous = cx.txn.session(&address)?;
                match signal::process_bundle(
                    &bundle,
                    &creds.identity_key,
                    creds.registration_id,
                    previous,
                    &mut self.rng,
                ) {
                    Ok(record) => Some(record),
                    Err(_) => return Ok(()),
                }
            }
            Some(Err(_)) => return Ok(()),
            None => cx.txn.session(&address)?,
        };
        let Some(record) = record else {
            // No session and no keys: fetch the bundle first.
            self.issue(
                Bundles(vec![device.clone()]),
                Awaiting::RetryBundle(RetryTarget {
                    message_id: receipt.id.clone(),
                    device,
                    count: receipt.retry_count,
                }),
                &mut cx.step,
            );
            return Ok(());
        };
        self.resend(&receipt.id, &device, record, receipt.retry_count, cx)
    }

    /// Encrypts the stored copy of `message_id` again for one device.
    pub(super) fn resend(
        &mut self,
        message_id: &str,
        device: &Jid,
        mut record: SessionRecord,
        count: u32,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let creds = cx.creds;
        let Some(sent) = cx.txn.sent(message_id)? else {
            return Ok(());
        };
        let (Ok(chat), Ok(message), Some(account)) = (
            sent.chat.parse::<Jid>(),
            Message::decode(sent.message.as_slice()),
            creds.account.as_ref(),
        ) else {
            return Ok(());
        };
        if chat.is_group() {
            // The device may lack our sender key: the key rides along with
            // the message, pairwise.
            let mut payload = message;
            payload.sender_key_distribution_message = super::group::key_share_for_resend(
                &sent.chat,
                &account.jid,
                &mut cx.txn,
                &mut self.rng,
            )?;
            let padded = signal::pad(&mut self.rng, &payload.encode_to_vec());
            let Ok(ciphertext) = signal::encrypt(&mut record, &creds.identity_key, &padded) else {
                return Ok(());
            };
            cx.txn.put_session(address_of(device), record);
            tracing::info!(
                id = message_id,
                count,
                "resending to a group member after a retry receipt"
            );
            cx.step
                .transmit
                .push(crate::wa::groups::group_resend_stanza(
                    message_id,
                    &chat,
                    device,
                    &ciphertext,
                    count,
                    &account.signed_identity,
                ));
            return Ok(());
        }
        let payload = if device.user == account.jid.user {
            wamsg::device_sent(&chat, &message)
        } else {
            message
        };
        let padded = signal::pad(&mut self.rng, &payload.encode_to_vec());
        let Ok(ciphertext) = signal::encrypt(&mut record, &creds.identity_key, &padded) else {
            return Ok(());
        };
        cx.txn.put_session(address_of(device), record);
        tracing::info!(id = message_id, count, "resending after a retry receipt");
        cx.step.transmit.push(wamsg::resend_stanza(
            message_id,
            device,
            &ciphertext,
            count,
            &account.signed_identity,
        ));
        Ok(())
    }

    /// The answer to a bundle query made for a retry receipt.
    pub(super) fn resend_with_bundles(
        &mut self,
        answer: Result<Vec<prekeys::DeviceBundle>, super::iq::IqError>,
        target: RetryTarget,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let creds = cx.creds;
        let bundle = answer
            .ok()
            .and_then(|b| b.into_iter().find(|e| e.device == target.device))
            .and_then(|e| e.bundle.ok());
        let Some(bundle) = bundle else {
            return Ok(());
        };
        let Ok(record) = signal::process_bundle(
            &bundle,
            &creds.identity_key,
            creds.registration_id,
            None,
            &mut self.rng,
        ) else {
            return Ok(());
        };
        self.resend(&target.message_id, &target.device, record, target.count, cx)
    }

    /// A fresh one-time prekey for a retry receipt's `<keys>`, stored in the
    /// same commit that precedes the receipt.
    pub(super) fn retry_keys(
        &mut self,
        creds: &Credentials,
        txn: &mut Txn<'_>,
    ) -> Result<Node, KeyError> {
        let mut keys = self.generate_prekeys(1, txn)?;
        let identity = creds
            .account
            .as_ref()
            .map(|a| a.signed_identity.clone())
            .unwrap_or_default();
        match keys.pop() {
            Some(key) => Ok(prekeys::retry_keys(creds, &key, &identity)),
            None => Err(KeyError {
                message: "no prekey could be generated".into(),
                retryable: false,
            }),
        }
    }

    /// `count` one-time prekeys with the next ids.
    fn generate_prekeys(&mut self, count: u32, txn: &mut Txn<'_>) -> Result<Vec<PreKey>, KeyError> {
        let mut id = txn.next_prekey_id()?;
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            if id == 0 || id > MAX_PRE_KEY_ID {
                id = 1;
            }
            let key = PreKey::generate(id, &mut self.rng).map_err(|e| KeyError {
                message: format!("cannot generate a prekey: {e}"),
                retryable: false,
            })?;
            id += 1;
            txn.put_prekey(key.clone(), id);
            out.push(key);
        }
        Ok(out)
    }

    /// Generates a batch of prekeys (committed with the step) and uploads them.
    pub(super) fn upload_prekeys(&mut self, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        let creds = cx.creds;
        let keys = self.generate_prekeys(UPLOAD_BATCH, &mut cx.txn)?;
        let node = prekeys::upload(creds, &keys);
        self.issue(PrekeyUpload(node), Awaiting::PrekeyUpload, &mut cx.step);
        Ok(())
    }

    pub(super) fn on_prekey_count(
        &mut self,
        count: u32,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        if count < MIN_SERVER_PREKEYS {
            self.upload_prekeys(cx)?;
        }
        Ok(())
    }

    pub(super) fn on_notification(
        &mut self,
        node: &Node,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        if node.attr_str("type") == Some("encrypt") {
            let low = node
                .child("count")
                .and_then(|c| c.attr_u64("value"))
                .is_some_and(|n| n < u64::from(MIN_SERVER_PREKEYS));
            if low {
                self.upload_prekeys(cx)?;
            }
        }
        if node.attr_str("type") == Some("mediaretry") {
            // A malformed one is acked and dropped: its waiter times out.
            if let Ok(retry) = crate::wa::media::parse_retry_notification(node) {
                cx.step.media_retries.push(retry);
            }
        }
        if node.attr_str("type") == Some("server_sync") {
            self.on_server_sync(node, cx)?;
        }
        if let Some(changes) = crate::wa::groups::parse_notification(node) {
            // Members named by LID come with their numbers (a LID-addressed
            // group): learned for the sessions and events that follow.
            for participant in node.child_nodes().iter().flat_map(|c| {
                c.children_by_tag("participant").chain(
                    c.child("group")
                        .into_iter()
                        .flat_map(|g| g.children_by_tag("participant")),
                )
            }) {
                if let (Some(jid), Some(phone)) = (
                    participant.attr_jid("jid"),
                    participant.attr_jid("phone_number"),
                ) {
                    super::learn_lid(&jid.to_non_ad(), &phone.to_non_ad(), &mut cx.txn)?;
                }
            }
            for mut change in changes {
                if let (Some(lid), Some(phone)) = (&change.actor_lid, &change.actor_phone) {
                    let pn = Jid::new(phone.clone(), crate::wa::jid::DEFAULT_USER_SERVER);
                    super::learn_lid(lid, &pn, &mut cx.txn)?;
                }
                if let Some(actor) = change.actor.clone() {
                    let (phone, lid) = super::identities(&actor, None, &mut cx.txn)?;
                    change.actor_phone = change.actor_phone.or(phone);
                    change.actor_lid = change.actor_lid.or(lid);
                }
                self.on_group_change(&change, cx);
                cx.step.events.push(super::Event::Group(change));
            }
        }
        cx.step.transmit.extend(wamsg::stanza_ack(node));
        Ok(())
    }
}
