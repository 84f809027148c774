//! Incoming messages and receipts: deduplicate, decrypt (pairwise and
//! sender-key), turn into events, and queue the receipt that may only go
//! out once the step is committed; ask for a resend when decryption fails.

use crate::wa::binary::Node;
use crate::wa::creds::Credentials;
use crate::wa::jid::Jid;
use crate::wa::message::{self as wamsg, Content, EncPayload, IncomingMessage, IncomingReceipt};
use crate::wa::signal::{
    self, LocalKeys, PreKeySignalMessage, ProtocolAddress, SenderKeyName, SignalError,
};

use super::keys::{DedupeKey, KeyError, MediaRecord, PendingHistory, Txn};
use super::{
    address_of, identities, learn_lid, Cx, Engine, Event, HistoryJob, ReceiptKind, ReceivedMedia,
    ReceivedMessage, ReceivedReceipt, MAX_RETRIES, MAX_TEXT_BYTES,
};

/// Why one payload of a message gave nothing.
enum Undecrypted {
    /// Already decrypted once (a redelivery): nothing to report.
    Duplicate,
    Failed(String),
}

impl From<SignalError> for Undecrypted {
    fn from(e: SignalError) -> Self {
        if e.is_duplicate() {
            Undecrypted::Duplicate
        } else {
            Undecrypted::Failed(e.to_string())
        }
    }
}

impl Engine {
    pub(super) fn on_message(&mut self, node: &Node, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        let creds = cx.creds;
        let now_ms = cx.now_ms;
        let Some(own) = creds.account.as_ref().map(|a| a.jid.clone()) else {
            return Ok(());
        };
        let msg = match IncomingMessage::parse(node) {
            Ok(msg) => msg,
            Err(_) => {
                // Unreadable: refuse it so the server stops redelivering.
                if let Some(ack) = wamsg::stanza_ack(node) {
                    cx.step.transmit.push(ack.attr("error", "487"));
                }
                return Ok(());
            }
        };
        let dedupe = DedupeKey(msg.dedupe_key(&own));
        if cx.txn.seen(&dedupe, msg.t)? {
            // A history notification whose pages are not all committed:
            // its chunk resumes, and the receipt waits for it again.
            if msg.from_me(&own) {
                if let Some(pending) = cx.txn.pending_history(&dedupe)? {
                    if let Some(job) = HistoryJob::resume(dedupe, &pending, msg.receipt(&own)) {
                        cx.step.history.push(job);
                        return Ok(());
                    }
                }
            }
            cx.step.transmit.push(msg.receipt(&own));
            return Ok(());
        }

        let sender = msg.sender().clone();
        // Learned before decrypting: a peer that moved to its LID sends
        // from the LID with the session made under its phone number (see
        // `Txn::session`).
        if let Some(alt) = &msg.sender_alt {
            learn_lid(&sender.to_non_ad(), &alt.to_non_ad(), &mut cx.txn)?;
        }
        let address = address_of(&sender);
        let mut content: Option<Content> = None;
        let mut failure: Option<String> = None;
        let mut duplicate = false;
        for enc in &msg.encs {
            let plaintext = match enc.kind.as_str() {
                "pkmsg" | "msg" => self.decrypt_pairwise(&address, enc, creds, &mut cx.txn)?,
                "skmsg" => decrypt_group(&msg, &address, enc, &mut cx.txn)?,
                other => Err(Undecrypted::Failed(format!(
                    "unsupported payload type {:?}",
                    other.get(..16).unwrap_or(other)
                ))),
            };
            let plaintext = match plaintext {
                Ok(p) => p,
                Err(Undecrypted::Duplicate) => {
                    duplicate = true;
                    continue;
                }
                Err(Undecrypted::Failed(e)) => {
                    failure.get_or_insert(e);
                    continue;
                }
            };
            let decoded = signal::unpad(&plaintext)
                .map_err(|e| e.to_string())
                .and_then(|p| Content::decode(p).map_err(|e| format!("not a Message: {e}")));
            match decoded {
                Ok(c) => {
                    if let Some((group, distribution)) = &c.sender_key {
                        let name = SenderKeyName {
                            group_id: group.clone(),
                            sender: address.clone(),
                        };
                        let mut record = cx.txn.sender_key(&name)?.unwrap_or_default();
                        // A bad distribution leaves the old key; the group
                        // message that needs it will ask for a resend.
                        if signal::process_distribution_message(&mut record, distribution).is_ok() {
                            cx.txn.put_sender_key(name, record);
                        }
                    }
                    // A text beats key-only payloads of the same stanza.
                    if content.as_ref().is_none_or(Content::is_key_only) {
                        content = Some(c);
                    }
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }

        let mut history = None;
        let event = match (content, failure) {
            (Some(content), _) => {
                // Only the account's own phone shares app-state keys.
                if msg.from_me(&own) && !content.app_state_keys.is_empty() {
                    self.on_app_state_keys(&content.app_state_keys, cx)?;
                }
                // ... and history: kept pending with this step, fetched by
                // the owner, receipted once its pages are committed.
                if let Some(notice) = content.history.as_deref().filter(|_| msg.from_me(&own)) {
                    let pending = PendingHistory {
                        notification: prost::Message::encode_to_vec(&notice.to_proto()),
                        pages_done: 0,
                    };
                    cx.txn.put_pending_history(dedupe.clone(), pending);
                    history = Some(HistoryJob {
                        key: dedupe.clone(),
                        notice: notice.clone(),
                        pages_done: 0,
                        receipt: msg.receipt(&own),
                    });
                }
                self.message_event(&msg, &own, content, &mut cx.txn)?
            }
            (None, None) if duplicate => {
                cx.step.transmit.push(msg.receipt(&own));
                return Ok(());
            }
            (None, None) => Some(failed_event(
                &msg,
                &own,
                "unavailable",
                "message carried no encrypted payload".to_owned(),
                &mut cx.txn,
            )?),
            (None, Some(error)) => {
                let count = self.retries.entry(dedupe.clone()).or_insert(0);
                *count += 1;
                let count = *count;
                if count <= MAX_RETRIES {
                    tracing::info!(id = %msg.id, count, "cannot decrypt, asking for a resend: {error}");
                    let keys = if count >= 2 {
                        Some(self.retry_keys(creds, &mut cx.txn)?)
                    } else {
                        None
                    };
                    cx.step
                        .transmit
                        .push(msg.retry_receipt(count, creds.registration_id, keys));
                    return Ok(());
                }
                tracing::warn!(id = %msg.id, "giving up decrypting: {error}");
                Some(failed_event(
                    &msg,
                    &own,
                    "undecryptable",
                    error,
                    &mut cx.txn,
                )?)
            }
        };
        self.retries.remove(&dedupe);
        cx.txn.mark_seen(dedupe, msg.t, now_ms);
        // Counted once each, and only what someone sent: redeliveries and
        // the phone's own bookkeeping (key shares, history notices) are not.
        if event.is_some() {
            cx.step.messages_in += 1;
        }
        let named = event
            .as_ref()
            .filter(|m| !m.from_me)
            .and_then(|m| Some((m.sender.to_non_ad(), m.push_name.clone()?)));
        cx.step.events.extend(event.map(Event::Message));
        if let Some((sender, name)) = named {
            super::app_state::learn_push_name(sender, name, cx)?;
        }
        match history {
            Some(job) => cx.step.history.push(job),
            // Durability rule 1: the receipt leaves after the commit.
            None => cx.step.transmit.push(msg.receipt(&own)),
        }
        Ok(())
    }

    /// Decrypts a `pkmsg`/`msg`; the new record goes into `txn`.
    fn decrypt_pairwise(
        &mut self,
        address: &ProtocolAddress,
        enc: &EncPayload,
        creds: &Credentials,
        txn: &mut Txn<'_>,
    ) -> Result<Result<Vec<u8>, Undecrypted>, KeyError> {
        let existing = txn.session(address)?;
        let result = if enc.kind == "pkmsg" {
            let header = match PreKeySignalMessage::decode(&enc.ciphertext) {
                Ok(h) => h,
                Err(e) => return Ok(Err(Undecrypted::Failed(e.to_string()))),
            };
            let mut one_time = Vec::new();
            if let Some(id) = header.pre_key_id {
                one_time.extend(txn.prekey(id)?);
            }
            let local = LocalKeys {
                identity: &creds.identity_key,
                registration_id: creds.registration_id,
                signed_pre_keys: std::slice::from_ref(&creds.signed_prekey),
                pre_keys: &one_time,
            };
            signal::decrypt_prekey_message(
                existing.as_ref(),
                &local,
                &enc.ciphertext,
                &mut self.rng,
            )
            .map(|decrypted| {
                if let Some(used) = decrypted.used_prekey_id {
                    txn.use_prekey(used);
                }
                (decrypted.plaintext, decrypted.record)
            })
        } else {
            match existing {
                Some(mut record) => signal::decrypt_message(
                    &mut record,
                    &creds.identity_key.public,
                    &enc.ciphertext,
                    &mut self.rng,
                )
                .map(|plain| (plain, record)),
                None => Err(SignalError::NoSession),
            }
        };
        Ok(match result {
            Ok((plaintext, record)) => {
                txn.put_session(address.clone(), record);
                Ok(plaintext)
            }
            Err(e) => Err(e.into()),
        })
    }

    fn message_event(
        &mut self,
        msg: &IncomingMessage,
        own: &Jid,
        content: Content,
        txn: &mut Txn<'_>,
    ) -> Result<Option<ReceivedMessage>, KeyError> {
        if content.is_key_only() || content.is_phone_sync() {
            return Ok(None);
        }
        let from_me = msg.from_me(own);
        let chat = match (&content.destination, from_me) {
            (Some(destination), true) => destination.to_non_ad(),
            _ => msg.chat(own),
        };
        let sender = msg.sender().clone();
        let (sender_phone, sender_lid) = identities(&sender, msg.sender_alt.as_ref(), txn)?;
        let (chat_phone, chat_lid) = if chat.is_group() {
            (None, None)
        } else {
            identities(&chat, None, txn)?
        };
        let (media, media_error) = match content.media {
            Some(Ok(info)) => {
                txn.put_media(
                    msg.id.clone(),
                    MediaRecord {
                        media_type: info.ty.enc_mediatype().unwrap_or_default().to_owned(),
                        direct_path: info.direct_path.clone(),
                        media_key: info.media_key.as_bytes().to_vec(),
                        file_sha256: info.file_sha256.to_vec(),
                        file_enc_sha256: info.file_enc_sha256.to_vec(),
                        file_length: info.file_length,
                        mimetype: info.mimetype.clone(),
                        chat: chat.to_string(),
                        sender: sender.to_string(),
                        from_me,
                        file_name: info.file_name.clone().unwrap_or_default(),
                    },
                );
                (Some(Box::new(ReceivedMedia::of(&info))), None)
            }
            Some(Err(e)) => (None, Some(format!("media cannot be downloaded: {e}"))),
            None => (None, None),
        };
        // A caption is the text of a media message.
        let text = content
            .text
            .or_else(|| media.as_ref().and_then(|m| m.caption.clone()));
        let (text, error) = match text {
            Some(text) if text.len() > MAX_TEXT_BYTES => {
                let error = format!(
                    "text of {} bytes cut to the first {MAX_TEXT_BYTES}",
                    text.len()
                );
                (Some(cut(text, MAX_TEXT_BYTES)), Some(error))
            }
            text => (text, media_error),
        };
        let refs = super::ReceivedRefs::of(content.refs, &sender, &chat, own);
        let rich = match content.rich {
            Some(rich) => Some(Box::new(super::polls::received(
                *rich, &msg.id, &sender, &chat, own, txn,
            )?)),
            None => None,
        };
        Ok(Some(ReceivedMessage {
            id: msg.id.clone(),
            chat,
            sender,
            sender_phone,
            sender_lid,
            chat_phone,
            chat_lid,
            push_name: msg.push_name.clone(),
            timestamp_s: msg.t,
            from_me,
            text,
            kind: content.kind,
            offline: msg.offline,
            error,
            media,
            refs,
            content: rich,
        }))
    }

    pub(super) fn on_receipt(&mut self, node: &Node, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        let Ok(receipt) = IncomingReceipt::parse(node) else {
            return Ok(());
        };
        let kind = match receipt.kind {
            wamsg::ReceiptKind::Delivered => Some(ReceiptKind::Delivered),
            wamsg::ReceiptKind::Read => Some(ReceiptKind::Read),
            wamsg::ReceiptKind::Played => Some(ReceiptKind::Played),
            wamsg::ReceiptKind::Retry => {
                self.on_retry_request(node, &receipt, cx)?;
                None
            }
            wamsg::ReceiptKind::Other => None,
        };
        if let Some(kind) = kind {
            let from = receipt.sender().clone();
            let chat = if receipt.from.is_group() {
                receipt.from.to_non_ad()
            } else {
                receipt
                    .recipient
                    .as_ref()
                    .unwrap_or(&receipt.from)
                    .to_non_ad()
            };
            let (from_phone, from_lid) = identities(&from, None, &mut cx.txn)?;
            cx.step.events.push(Event::Receipt(ReceivedReceipt {
                message_ids: receipt.message_ids.clone(),
                kind,
                chat,
                from,
                from_phone,
                from_lid,
                timestamp_s: receipt.t,
            }));
        }
        cx.step.transmit.push(receipt.ack());
        Ok(())
    }
}

fn decrypt_group(
    msg: &IncomingMessage,
    address: &ProtocolAddress,
    enc: &EncPayload,
    txn: &mut Txn<'_>,
) -> Result<Result<Vec<u8>, Undecrypted>, KeyError> {
    let name = SenderKeyName {
        group_id: msg.from.to_non_ad().to_string(),
        sender: address.clone(),
    };
    let mut record = txn.sender_key(&name)?.unwrap_or_default();
    Ok(match signal::group_decrypt(&mut record, &enc.ciphertext) {
        Ok(plain) => {
            txn.put_sender_key(name, record);
            Ok(plain)
        }
        Err(e) => Err(e.into()),
    })
}

fn failed_event(
    msg: &IncomingMessage,
    own: &Jid,
    kind: &str,
    error: String,
    txn: &mut Txn<'_>,
) -> Result<ReceivedMessage, KeyError> {
    let sender = msg.sender().clone();
    let (sender_phone, sender_lid) = identities(&sender, msg.sender_alt.as_ref(), txn)?;
    let chat = msg.chat(own);
    let (chat_phone, chat_lid) = if chat.is_group() {
        (None, None)
    } else {
        identities(&chat, None, txn)?
    };
    Ok(ReceivedMessage {
        id: msg.id.clone(),
        chat,
        sender,
        sender_phone,
        sender_lid,
        chat_phone,
        chat_lid,
        push_name: msg.push_name.clone(),
        timestamp_s: msg.t,
        from_me: msg.from_me(own),
        text: None,
        kind: kind.to_owned(),
        offline: msg.offline,
        error: Some(error),
        media: None,
        refs: None,
        content: None,
    })
}

/// `text` cut to at most `max` bytes at a character boundary.
fn cut(mut text: String, max: usize) -> String {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}
