//! Sending: device lists (usync), bundles for devices without a session,
//! per-device encryption with a DeviceSentMessage copy for our own devices,
//! the fanned-out stanza, and the server's ack.
//!
//! Exactly once with an idempotency key. The first attempt stores, in the
//! same commit as the advanced Signal chains and before a byte reaches the
//! wire, the encoded stanza itself with a fingerprint of the request. A
//! retry after any ambiguous outcome (deadline, dropped connection, crash,
//! shutdown) whose first attempt was not acknowledged writes that very
//! stanza again, byte for byte: same id, same ciphertexts. We do not
//! encrypt anew, because a second encryption is a second message to every
//! device that already got the first; and we cannot ask the server whether
//! it has the first (WhatsApp has no such query). The same bytes are safe
//! whatever happened to the first write: WhatsApp's server acknowledges a
//! repeated id from the same device without routing it again, and a device
//! that did receive the first copy drops the second — its ratchet already
//! consumed that message key, and clients deduplicate by message id.
//! Once acknowledged, the record keeps only id and time, and a retry is
//! answered from it without touching the wire. Until then the gateway does
//! not wait for a retry either: at each login the stanzas of records never
//! acknowledged are written again the same way (`resend_unacked`), so a
//! stored send is delivered and has its event even if its caller gave up.
//! A key reused for another request (other recipient or content) is
//! refused.

use std::collections::HashMap;

use prost::Message as _;

use crate::proto::wa::Message;
use crate::wa::binary::{self, Node};
use crate::wa::crypto::sha256;
use crate::wa::jid::Jid;
use crate::wa::message::{self as wamsg, ServerAck};
use crate::wa::signal::{self, ProtocolAddress, SessionRecord};

use super::iq::{
    Awaiting, Bundles, Devices, GroupMembers, IqError, IqSpec, MediaConnQuery, PrekeyCount,
    PrekeyUpload,
};
use super::keys::{IdempotencyRecord, KeyError, SentRecord};
use super::{
    address_of, learn_lid, Cx, Engine, Event, ReceivedMedia, ReceivedMessage, ReplyTo, SendError,
    SendRequest, Sent, DEVICE_CACHE_MS, MAX_SEND_TEXT_BYTES, SEND_TIMEOUT_MS,
};
use crate::wa::media::MediaInfo;

/// A send in progress.
pub(super) struct Outgoing {
    pub(super) id: String,
    pub(super) chat: Jid,
    pub(super) message: Message,
    pub(super) idempotency_key: Option<String>,
    pub(super) fingerprint: Vec<u8>,
    pub(super) waiters: Vec<ReplyTo>,
    pub(super) deadline: u64,
}

/// The message event of a send the server acknowledged: backends see
/// what this account sent through the gateway as they see what it sent
/// from its other devices. Committed with the ack's record, so a retry
/// answered from that record adds no second event.
fn own_send_event(
    send: &Outgoing,
    creds: &crate::wa::creds::Credentials,
    timestamp_s: u64,
    sent: &Sent,
    txn: &mut super::Txn<'_>,
) -> ReceivedMessage {
    let mut content = wamsg::Content::decode(&send.message.encode_to_vec()).ok();
    let own = creds.account.as_ref().map(|a| a.jid.clone());
    let refs = match (&own, content.as_mut()) {
        (Some(own), Some(content)) => {
            super::ReceivedRefs::of(content.refs.take(), own, &send.chat, own)
        }
        _ => None,
    };
    // The ack is not lost to a store that cannot be read now: the event
    // then goes without the vote's options.
    let rich = match (&own, content.as_mut().and_then(|c| c.rich.take())) {
        (Some(own), Some(rich)) => {
            match super::polls::received(*rich, &send.id, own, &send.chat, own, txn) {
                Ok(rich) => Some(Box::new(rich)),
                Err(e) => {
                    tracing::warn!(id = %send.id, "poll of an own message unreadable: {e}");
                    None
                }
            }
        }
        _ => None,
    };
    ReceivedMessage {
        id: send.id.clone(),
        chat: send.chat.clone(),
        sender_phone: own.as_ref().and_then(wamsg::phone_of),
        sender_lid: creds
            .account
            .as_ref()
            .and_then(|a| a.lid.as_ref())
            .map(Jid::to_non_ad),
        chat_phone: sent.recipient_phone.clone(),
        chat_lid: sent.recipient_lid.clone(),
        sender: own.unwrap_or_else(|| send.chat.clone()),
        push_name: Some(creds.push_name.clone()).filter(|n| !n.is_empty()),
        timestamp_s,
        from_me: true,
        text: content.as_ref().and_then(|c| c.text.clone()),
        kind: content.map_or_else(|| "unknown".to_owned(), |c| c.kind),
        offline: false,
        error: None,
        media: MediaInfo::from_message(&send.message)
            .and_then(Result::ok)
            .map(|info| Box::new(ReceivedMedia::of(&info))),
        refs,
        content: rich,
    }
}

/// A stanza says what it carries: a media message `type="media"` and the
/// type's `mediatype` on each `<enc>` (WhatsApp's clients set both; the
/// server uses them for notifications and limits); a reaction
/// `type="reaction"`; an edit or revoke its `edit` attribute.
pub(super) fn mark_stanza(mut stanza: Node, message: &Message) -> Node {
    let Some(mediatype) = MediaInfo::type_of(message).and_then(|t| t.enc_mediatype()) else {
        let (kind, edit) = crate::wa::compose::stanza_marks(message);
        stanza = stanza.attr("type", kind);
        if let Some(edit) = edit {
            stanza = stanza.attr("edit", edit);
        }
        if kind == "poll" {
            // As WhatsApp's clients say which poll stanza it is.
            let polltype = if message.poll_update_message.is_some() {
                "vote"
            } else {
                "creation"
            };
            if let binary::Content::Nodes(children) = &mut stanza.content {
                children.push(Node::new("meta").attr("polltype", polltype));
            }
        }
        return stanza;
    };
    fn mark(node: &mut Node, mediatype: &'static str) {
        if node.tag() == "enc" {
            node.set_attr("mediatype", mediatype);
        } else if let binary::Content::Nodes(children) = &mut node.content {
            children.iter_mut().for_each(|c| mark(c, mediatype));
        }
    }
    mark(&mut stanza, mediatype);
    stanza.attr("type", "media")
}

/// What identifies a request behind an idempotency key.
fn fingerprint(chat: &Jid, message: &Message) -> Vec<u8> {
    sha256(&[chat.to_string().as_bytes(), &[0], &message.encode_to_vec()]).to_vec()
}

impl Engine {
    pub(super) fn start_send(
        &mut self,
        request: SendRequest,
        reply: ReplyTo,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let creds = cx.creds;
        let now_ms = cx.now_ms;
        let Some(account) = creds.account.as_ref() else {
            cx.step.replies.push((reply, Err(SendError::NotConnected)));
            return Ok(());
        };
        let own = account.jid.clone();
        if !(request.to.is_group() || request.to.is_user() || request.to.is_lid()) {
            let why =
                "only users (phone numbers, user JIDs, LIDs) and groups (…@g.us) can be sent to";
            cx.step
                .replies
                .push((reply, Err(SendError::Unsupported(why.to_owned()))));
            return Ok(());
        }
        let text_len = request.message.conversation.as_ref().map_or(0, String::len);
        if text_len > MAX_SEND_TEXT_BYTES {
            let why = format!(
                "text of {text_len} bytes is longer than WhatsApp's limit of {MAX_SEND_TEXT_BYTES}"
            );
            cx.step
                .replies
                .push((reply, Err(SendError::Unsupported(why))));
            return Ok(());
        }
        let chat = request.to.to_non_ad();
        let fingerprint = request
            .fingerprint
            .unwrap_or_else(|| fingerprint(&chat, &request.message));
        let mut id = None;
        if let Some(key) = &request.idempotency_key {
            if let Some(send) = self.send_by_key(key) {
                if send.fingerprint != fingerprint {
                    cx.step
                        .replies
                        .push((reply, Err(SendError::IdempotencyConflict(key.clone()))));
                } else {
                    send.waiters.push(reply);
                }
                return Ok(());
            }
            if let Some(record) = cx.txn.idempotency(key)? {
                if !record.fingerprint.is_empty() && record.fingerprint != fingerprint {
                    cx.step
                        .replies
                        .push((reply, Err(SendError::IdempotencyConflict(key.clone()))));
                    return Ok(());
                }
                if record.acked_at_s > 0 {
                    cx.step.replies.push((
                        reply,
                        Ok(Sent::to(
                            record.message_id,
                            record.acked_at_s,
                            &chat,
                            &mut cx.txn,
                        )),
                    ));
                    return Ok(());
                }
                // Encrypted and perhaps written before: the same bytes again
                // (see the module documentation for why).
                if let Ok(stanza) = binary::decode(&record.stanza) {
                    let send = Outgoing {
                        id: record.message_id,
                        chat,
                        message: request.message,
                        idempotency_key: Some(key.clone()),
                        fingerprint,
                        waiters: vec![reply],
                        deadline: now_ms + SEND_TIMEOUT_MS,
                    };
                    return self.write_stored(stanza, send, cx);
                }
                // A record of an older version (no stanza kept): nothing of
                // it is known to have been written; send it anew, same id.
                id = Some(record.message_id);
            }
        }
        if request.message.encoded_len() == 0 {
            // Only a stored stanza may be sent without its message (above).
            let why = "the message is empty".to_owned();
            cx.step
                .replies
                .push((reply, Err(SendError::Unsupported(why))));
            return Ok(());
        }
        let id =
            id.unwrap_or_else(|| wamsg::new_message_id(now_ms / 1000, &own.user, &mut self.rng));
        let mut message = request.message;
        if let Err(e) =
            super::polls::prepare_send(&mut message, &id, &own, &mut self.rng, &mut cx.txn)?
        {
            cx.step.replies.push((reply, Err(e)));
            return Ok(());
        }
        let send = Outgoing {
            id,
            chat,
            message,
            idempotency_key: request.idempotency_key,
            fingerprint,
            waiters: vec![reply],
            deadline: now_ms + SEND_TIMEOUT_MS,
        };
        if send.chat.is_group() {
            return self.start_group_send(send, cx);
        }
        let users = vec![send.chat.clone(), own.to_non_ad()];
        let fresh = users.iter().all(|u| {
            self.devices
                .get(u)
                .is_some_and(|(_, at)| at + DEVICE_CACHE_MS > now_ms)
        });
        if fresh {
            return self.route(send, cx);
        }
        let sid = format!("{:08x}", rand::RngCore::next_u32(&mut self.rng));
        self.issue(
            Devices { users, sid },
            Awaiting::Devices(Box::new(send)),
            &mut cx.step,
        );
        Ok(())
    }

    /// Writes the stanza stored for `send` again and waits for its ack.
    /// The event of the ack reports the message as first sent (a media
    /// message built again for a retry differs in its keys), so it is taken
    /// from the sent record when there is one.
    fn write_stored(
        &mut self,
        stanza: Node,
        mut send: Outgoing,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        if let Some(message) = cx
            .txn
            .sent(&send.id)?
            .and_then(|sent| Message::decode(sent.message.as_slice()).ok())
        {
            send.message = message;
        }
        cx.step.transmit.push(stanza);
        self.in_flight.insert(send.id.clone(), send);
        Ok(())
    }

    /// At login: a send an earlier connection wrote (or was about to) and
    /// never saw acknowledged — the process ended, the connection dropped,
    /// or the ack's commit failed — is written again, the same bytes, with
    /// no caller waiting. Its delivery and its event then do not depend on
    /// the caller retrying, and a caller that does retry with its key
    /// waits for this write's ack (`send_by_key`). The server acknowledges
    /// a copy it already has without routing it again.
    pub(super) fn resend_unacked(
        &mut self,
        record: IdempotencyRecord,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        if !record.awaits_ack() || self.in_flight.contains_key(&record.message_id) {
            return Ok(());
        }
        let Ok(stanza) = binary::decode(&record.stanza) else {
            return Ok(());
        };
        let Some(chat) = stanza.attr_jid("to") else {
            return Ok(());
        };
        let send = Outgoing {
            id: record.message_id,
            chat,
            message: Message::default(),
            idempotency_key: Some(record.key),
            fingerprint: record.fingerprint,
            waiters: Vec::new(),
            deadline: cx.now_ms + SEND_TIMEOUT_MS,
        };
        self.write_stored(stanza, send, cx)
    }

    /// The send (waiting or in flight) made with idempotency key `key`.
    pub(super) fn send_by_key(&mut self, key: &str) -> Option<&mut Outgoing> {
        let matches = |s: &Outgoing| s.idempotency_key.as_deref() == Some(key);
        if let Some(send) = self.in_flight.values_mut().find(|s| matches(s)) {
            return Some(send);
        }
        self.awaiting
            .values_mut()
            .filter_map(Awaiting::send_mut)
            .find(|s| matches(s))
    }

    /// Devices known: fetch bundles for those without a session, or encrypt.
    fn route(&mut self, send: Outgoing, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        if send.chat.is_group() {
            return self.route_group(send, cx);
        }
        let creds = cx.creds;
        let Some(own) = creds.account.as_ref().map(|a| a.jid.clone()) else {
            cx.step.fail(send, SendError::NotConnected);
            return Ok(());
        };
        let peer_devices = self
            .devices
            .get(&send.chat)
            .map(|(d, _)| d.clone())
            .unwrap_or_default();
        if peer_devices.is_empty() {
            let who = send.chat.to_string();
            cx.step.fail(send, SendError::UnknownRecipient(who));
            return Ok(());
        }
        let own_devices = self
            .devices
            .get(&own.to_non_ad())
            .map(|(d, _)| d.clone())
            .unwrap_or_else(|| vec![own.to_non_ad()]);
        let mut targets: Vec<Jid> = Vec::new();
        for device in peer_devices.into_iter().chain(own_devices) {
            let same_device = device.user == own.user && device.device == own.device;
            if !same_device && !targets.contains(&device) {
                targets.push(device);
            }
        }
        let all = targets.clone();
        self.encrypt_or_fetch_bundles(send, targets, &all, cx)
    }

    /// Encrypts for `targets` when every device in `pairwise` has a
    /// session; otherwise first asks for the bundles of those without.
    pub(super) fn encrypt_or_fetch_bundles(
        &mut self,
        send: Outgoing,
        targets: Vec<Jid>,
        pairwise: &[Jid],
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        let mut missing = Vec::new();
        // The sessions found are handed on, so encrypting does not look
        // them up (and copy them) a second time.
        let mut found = HashMap::with_capacity(pairwise.len());
        for target in pairwise {
            let address = address_of(target);
            match cx.txn.session(&address)? {
                Some(record) if record.has_current_session() => {
                    found.insert(address, record);
                }
                _ => missing.push(target.clone()),
            }
        }
        if missing.is_empty() {
            return self.encrypt_and_send(send, targets, found, cx);
        }
        self.issue(
            Bundles(missing),
            Awaiting::Bundles {
                send: Box::new(send),
                targets,
            },
            &mut cx.step,
        );
        Ok(())
    }

    /// Encrypts for every target with a session and queues the stanza; the
    /// new chain states, the copy kept for retry receipts and the
    /// idempotency record go into the same commit, ahead of the wire.
    fn encrypt_and_send(
        &mut self,
        send: Outgoing,
        targets: Vec<Jid>,
        mut fresh: HashMap<ProtocolAddress, SessionRecord>,
        cx: &mut Cx<'_, '_>,
    ) -> Result<(), KeyError> {
        if send.chat.is_group() {
            return self.encrypt_for_group(send, targets, fresh, cx);
        }
        let creds = cx.creds;
        let now_ms = cx.now_ms;
        let Some(account) = creds.account.as_ref() else {
            cx.step.fail(send, SendError::NotConnected);
            return Ok(());
        };
        let own = &account.jid;
        let copy = wamsg::device_sent(&send.chat, &send.message);
        let for_peer = send.message.encode_to_vec();
        let for_own = copy.encode_to_vec();
        let mut encrypted = Vec::with_capacity(targets.len());
        let mut peer_reached = false;
        for target in targets {
            let address = address_of(&target);
            let record = match fresh.remove(&address) {
                Some(r) => Some(r),
                None => cx.txn.session(&address)?,
            };
            let Some(mut record) = record.filter(SessionRecord::has_current_session) else {
                continue;
            };
            let plain = if target.user == own.user {
                &for_own
            } else {
                &for_peer
            };
            let padded = signal::pad(&mut self.rng, plain);
            // A device whose session cannot encrypt is skipped; the others
            // still get the message.
            if let Ok(ct) = signal::encrypt(&mut record, &creds.identity_key, &padded) {
                cx.txn.put_session(address, record);
                peer_reached |= target.user != own.user;
                encrypted.push((target, ct));
            }
        }
        if !peer_reached {
            let why = format!("no device of {} could be reached", send.chat);
            cx.step.fail(send, SendError::Encryption(why));
            return Ok(());
        }
        let stanza = mark_stanza(
            wamsg::fanout_stanza(&send.id, &send.chat, &encrypted, &account.signed_identity),
            &send.message,
        );
        cx.txn.put_sent(
            send.id.clone(),
            SentRecord {
                chat: send.chat.to_string(),
                message: for_peer,
                sent_at_ms: now_ms,
            },
        );
        if let Some(key) = &send.idempotency_key {
            cx.txn.put_idempotency(
                key.clone(),
                IdempotencyRecord {
                    message_id: send.id.clone(),
                    acked_at_s: 0,
                    fingerprint: send.fingerprint.clone(),
                    stanza: binary::encode(&stanza),
                    created_at_ms: cx.now_ms,
                    key: key.clone(),
                },
            );
        }
        cx.step.transmit.push(stanza);
        self.in_flight.insert(send.id.clone(), send);
        Ok(())
    }

    pub(super) fn on_ack(&mut self, node: &Node, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        let now_ms = cx.now_ms;
        let Some(ack) = ServerAck::parse(node) else {
            return Ok(());
        };
        let Some(send) = self.in_flight.remove(&ack.id) else {
            return Ok(());
        };
        if let Some(error) = ack.error {
            tracing::warn!(id = %ack.id, %error, "the server refused a message");
            if let Some(key) = &send.idempotency_key {
                // The server does not have it and the callers learn so: the
                // record no longer awaits an ack, or every login would
                // write it again and might deliver, days later, a message
                // its callers were told failed. It keeps its stanza: a
                // caller retrying with the key tries the same bytes again.
                if let Some(mut record) = cx.txn.idempotency(key)? {
                    if record.awaits_ack() && record.message_id == send.id {
                        record.key.clear();
                        cx.txn.put_idempotency(key.clone(), record);
                    }
                }
            }
            cx.step.fail(send, SendError::Refused(error));
            return Ok(());
        }
        let timestamp_s = ack.t.unwrap_or(now_ms / 1000);
        if let Some(key) = &send.idempotency_key {
            // Until this commit lands, the record says "not acknowledged":
            // should it be lost, the next login (or a retry) writes the
            // stored stanza again, which the server acknowledges without
            // delivering twice, and that ack brings the event. So the
            // callers need not wait for this commit.
            cx.txn.put_idempotency(
                key.clone(),
                IdempotencyRecord {
                    message_id: send.id.clone(),
                    acked_at_s: timestamp_s,
                    fingerprint: send.fingerprint.clone(),
                    stanza: Vec::new(),
                    created_at_ms: 0,
                    key: String::new(),
                },
            );
        }
        cx.step.messages_out += 1;
        let sent = Sent::to(send.id.clone(), timestamp_s, &send.chat, &mut cx.txn);
        cx.step.events.push(Event::Message(own_send_event(
            &send,
            cx.creds,
            timestamp_s,
            &sent,
            &mut cx.txn,
        )));
        let replies = if send.idempotency_key.is_some() {
            &mut cx.step.replies
        } else {
            &mut cx.step.committed_replies
        };
        for waiter in send.waiters {
            replies.push((waiter, Ok(sent.clone())));
        }
        Ok(())
    }

    pub(super) fn on_iq_answer(&mut self, node: Node, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        let creds = cx.creds;
        let now_ms = cx.now_ms;
        let Some(awaiting) = node.attr_str("id").and_then(|id| self.awaiting.remove(id)) else {
            return Ok(());
        };
        match awaiting {
            Awaiting::Query { reply, .. } => cx.step.answers.push((reply, Ok(node))),
            Awaiting::PrekeyCount => {
                if let Ok(count) = PrekeyCount::answer(&node) {
                    self.on_prekey_count(count, cx)?;
                }
            }
            Awaiting::MediaConn(waiters) => {
                let answer = MediaConnQuery::answer(&node).map_err(|e| match e {
                    IqError::Refused { code } => {
                        SendError::Refused(code.unwrap_or_else(|| "unknown".to_owned()))
                    }
                    other => SendError::Unsupported(format!("media_conn answer: {other}")),
                });
                if let Ok(conn) = &answer {
                    self.media_conn = Some((conn.clone(), conn.expires_at(now_ms / 1000)));
                }
                for waiter in waiters {
                    cx.step.media_conns.push((waiter, answer.clone()));
                }
            }
            Awaiting::AppState => self.on_app_state_answer(&node, cx)?,
            Awaiting::PrekeyUpload => {
                // A refused upload is retried at the next login or low-count
                // notification.
                let _ = PrekeyUpload::answer(&node);
            }
            Awaiting::GroupMembers(send) => match GroupMembers::answer(&node) {
                Ok(info) => {
                    for participant in &info.participants {
                        if let Some(alt) = &participant.alt {
                            learn_lid(&participant.jid, alt, &mut cx.txn)?;
                        }
                    }
                    let members = info.member_jids();
                    self.remember_group(send.chat.clone(), members.clone(), now_ms);
                    self.group_devices(*send, members, cx)?;
                }
                Err(e) => {
                    let group = send.chat.to_string();
                    let error = match e {
                        IqError::Refused { code } => match code.as_deref() {
                            Some("404") => SendError::UnknownGroup(group),
                            Some("401" | "403") => SendError::NotAMember(group),
                            other => SendError::Refused(other.unwrap_or("unknown").to_owned()),
                        },
                        other => SendError::Encryption(format!("group info: {other}")),
                    };
                    cx.step.fail(*send, error);
                }
            },
            Awaiting::Devices(send) => match Devices::answer(&node) {
                Ok(users) => {
                    for user in users {
                        if let Some(lid) = &user.lid {
                            learn_lid(lid, &user.user, &mut cx.txn)?;
                        }
                        let jids = user.device_jids();
                        self.remember_devices(user.user, jids, now_ms);
                    }
                    self.route(*send, cx)?;
                }
                Err(e) => cx
                    .step
                    .fail(*send, SendError::Encryption(format!("device list: {e}"))),
            },
            Awaiting::Bundles { send, targets } => match Bundles::answer(&node) {
                Ok(bundles) => {
                    let mut fresh = HashMap::new();
                    for entry in bundles {
                        let Ok(bundle) = entry.bundle else { continue };
                        if let Ok(record) = signal::process_bundle(
                            &bundle,
                            &creds.identity_key,
                            creds.registration_id,
                            None,
                            &mut self.rng,
                        ) {
                            fresh.insert(address_of(&entry.device), record);
                        }
                    }
                    self.encrypt_and_send(*send, targets, fresh, cx)?;
                }
                Err(e) => cx
                    .step
                    .fail(*send, SendError::Encryption(format!("prekey bundles: {e}"))),
            },
            Awaiting::RetryBundle(target) => {
                let answer = Bundles::answer(&node);
                self.resend_with_bundles(answer, target, cx)?;
            }
        }
        Ok(())
    }
}
