//! Messaging stanzas and payloads, sans-IO: reading an incoming `<message>`
//! (who sent it, in which chat, its `<enc>` payloads), reading the decrypted
//! `Message` protobuf, and building what a client sends: the fanned-out
//! `<message>`, delivery and retry receipts, acks. No I/O, no clock, no
//! store; time and randomness come in as arguments.

use prost::Message as _;
use rand::{CryptoRng, RngCore};

use crate::proto::wa::message::{DeviceSentMessage, ExtendedTextMessage};
use crate::proto::wa::Message;
use crate::wa::binary::Node;
use crate::wa::crypto::sha256;
use crate::wa::jid::Jid;
use crate::wa::signal::CiphertextMessage;

/// Message ids WhatsApp Web clients make start with this.
pub const MESSAGE_ID_PREFIX: &str = "3EB0";
/// Most `<enc>` payloads read from one incoming message.
const MAX_ENCS: usize = 4;
/// Most message ids one receipt confirms (its id plus `<list><item>`s).
const MAX_RECEIPT_IDS: usize = 0x100;

/// Why an incoming stanza could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("missing or malformed {0}")]
    Malformed(&'static str),
}

/// A message id as WhatsApp Web makes them: `3EB0` and the first 9 bytes of
/// SHA-256(unix seconds ‖ own user JID ‖ 16 random bytes), in uppercase hex.
pub fn new_message_id(now_s: u64, own_user: &str, rng: &mut (impl RngCore + CryptoRng)) -> String {
    let mut random = [0u8; 16];
    rng.fill_bytes(&mut random);
    let user = format!("{own_user}@c.us");
    let digest = sha256(&[&now_s.to_be_bytes(), user.as_bytes(), &random]);
    format!(
        "{MESSAGE_ID_PREFIX}{}",
        hex::encode_upper(digest.get(..9).unwrap_or_default())
    )
}

/// One `<enc>` payload of an incoming message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncPayload {
    /// `pkmsg`, `msg` or `skmsg`.
    pub kind: String,
    pub ciphertext: Vec<u8>,
}

/// An incoming `<message>` as the server delivered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingMessage {
    pub id: String,
    /// The `from` attribute as received (a device, or a group).
    pub from: Jid,
    /// The sending device in a group (`participant`).
    pub participant: Option<Jid>,
    /// The chat partner, on copies of our own messages (`recipient`).
    pub recipient: Option<Jid>,
    /// Server timestamp, unix seconds.
    pub t: u64,
    /// The sender's push name (`notify`).
    pub push_name: Option<String>,
    /// Delivered from the offline queue.
    pub offline: bool,
    /// The sender's alternate address: phone JID when it is addressed by LID
    /// and the other way round (`sender_pn`, `sender_lid`, `participant_pn`, …).
    pub sender_alt: Option<Jid>,
    /// The `type` attribute (`text`, `media`, …).
    pub kind: String,
    pub encs: Vec<EncPayload>,
}

impl IncomingMessage {
    /// Reads `<message from id t …><enc …/>…</message>`.
    pub fn parse(node: &Node) -> Result<Self, MessageError> {
        let id = node
            .attr_string("id")
            .filter(|id| !id.is_empty())
            .ok_or(MessageError::Malformed("message id"))?;
        let from = node
            .attr_jid("from")
            .filter(|jid| !jid.user.is_empty())
            .ok_or(MessageError::Malformed("message from"))?;
        let t = node
            .attr_u64("t")
            .ok_or(MessageError::Malformed("message t"))?;
        let participant = node.attr_jid("participant");
        if from.is_group() && participant.is_none() {
            return Err(MessageError::Malformed("group message participant"));
        }
        let sender_alt = [
            "sender_pn",
            "sender_lid",
            "participant_pn",
            "participant_lid",
        ]
        .iter()
        .find_map(|key| node.attr_jid(key));
        let encs = node
            .children_by_tag("enc")
            .take(MAX_ENCS)
            .filter_map(|enc| {
                Some(EncPayload {
                    kind: enc.attr_string("type")?,
                    ciphertext: enc.content_bytes()?.to_vec(),
                })
            })
            .collect();
        Ok(Self {
            id,
            participant,
            recipient: node.attr_jid("recipient"),
            t,
            push_name: node.attr_string("notify").filter(|n| !n.is_empty()),
            offline: node.attr_value("offline").is_some(),
            sender_alt,
            kind: node
                .attr_string("type")
                .unwrap_or_else(|| "text".to_owned()),
            from,
            encs,
        })
    }

    /// The device that encrypted the message: `participant` in groups,
    /// `from` otherwise.
    pub fn sender(&self) -> &Jid {
        self.participant.as_ref().unwrap_or(&self.from)
    }

    /// Whether another device of our own account sent it.
    pub fn from_me(&self, own: &Jid) -> bool {
        let sender = self.sender();
        sender.user == own.user && sender.server == own.server
    }

    /// The chat this message belongs to: the group, the peer of our own
    /// message, or the sender's account.
    pub fn chat(&self, own: &Jid) -> Jid {
        if self.from.is_group() {
            return self.from.to_non_ad();
        }
        match (&self.recipient, self.from_me(own)) {
            (Some(recipient), true) => recipient.to_non_ad(),
            _ => self.from.to_non_ad(),
        }
    }

    /// The key deduplication uses: (chat, sender account, id).
    pub fn dedupe_key(&self, own: &Jid) -> String {
        format!(
            "{}/{}/{}",
            self.chat(own),
            self.sender().to_non_ad(),
            self.id
        )
    }

    /// The delivery receipt for this message: `type="sender"` for our own
    /// devices' messages, none (delivered) otherwise.
    pub fn receipt(&self, own: &Jid) -> Node {
        let mut node = self.reply_base("receipt");
        if self.from_me(own) {
            node = node.attr("type", "sender");
        }
        node
    }

    /// `<receipt type="retry">` asking the sender to encrypt again. `keys`
    /// (our bundle) is included from the second retry on.
    pub fn retry_receipt(&self, count: u32, registration_id: u32, keys: Option<Node>) -> Node {
        let mut children = vec![
            Node::new("retry")
                .attr("count", count.to_string())
                .attr("id", self.id.clone())
                .attr("t", self.t.to_string())
                .attr("v", "1"),
            Node::new("registration").bytes(registration_id.to_be_bytes().to_vec()),
        ];
        children.extend(keys);
        self.reply_base("receipt")
            .attr("type", "retry")
            .children(children)
    }

    /// A negative `<ack class="message" error>`: the message is given up.
    pub fn nack(&self, error: u32) -> Node {
        self.reply_base("ack")
            .attr("class", "message")
            .attr("error", error.to_string())
    }

    /// `<tag id to=FROM [participant] [recipient]>`: receipts and acks echo
    /// the addressing exactly as received.
    fn reply_base(&self, tag: &'static str) -> Node {
        let mut node = Node::new(tag)
            .attr("id", self.id.clone())
            .attr("to", self.from.clone());
        if let Some(participant) = &self.participant {
            node = node.attr("participant", participant.clone());
        }
        if let Some(recipient) = &self.recipient {
            node = node.attr("recipient", recipient.clone());
        }
        node
    }
}

/// What a decrypted `Message` carries, as events report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    /// `text`, or the name of the content field (`imageMessage`, …).
    pub kind: String,
    pub text: Option<String>,
    /// For a copy of our own message (`deviceSentMessage`): its chat.
    pub destination: Option<Jid>,
    /// A sender key distribution message riding along (groups).
    pub sender_key: Option<(String, Vec<u8>)>,
    /// The media it carries, if any; an error when the media fields are
    /// malformed.
    pub media: Option<Result<crate::wa::media::MediaInfo, crate::wa::media::MediaError>>,
    /// What it says about other messages (a quote, mentions, or the
    /// target of a reaction, edit or revoke).
    pub refs: Option<Box<crate::wa::compose::Refs>>,
    /// App-state sync keys the account's phone shared (`appStateSyncKeyShare`).
    pub app_state_keys: Vec<crate::wa::appstate::SharedKey>,
    /// A history chunk the account's phone announced
    /// (`historySyncNotification`), when its fields are usable.
    pub history: Option<Box<crate::wa::history::HistoryNotice>>,
    /// A location, contact cards, a poll or a vote.
    pub rich: Option<Box<crate::wa::content::Rich>>,
}

impl Content {
    /// Reads an unpadded `Message` protobuf.
    pub fn decode(plaintext: &[u8]) -> Result<Self, prost::DecodeError> {
        let message = Message::decode(plaintext)?;
        let sender_key = message
            .sender_key_distribution_message
            .as_ref()
            .and_then(|skdm| {
                Some((
                    skdm.group_id.clone()?,
                    skdm.axolotl_sender_key_distribution_message.clone()?,
                ))
            });
        if let Some(sent) = &message.device_sent_message {
            let destination = sent
                .destination_jid
                .as_deref()
                .and_then(|d| d.parse::<Jid>().ok());
            let inner = sent.message.as_deref().map(Message::encode_to_vec);
            let mut content = match inner {
                Some(bytes) => Self::decode(&bytes)?,
                None => Self::named("deviceSentMessage"),
            };
            content.destination = destination;
            content.sender_key = content.sender_key.or(sender_key);
            return Ok(content);
        }
        let text = message.conversation.clone().or_else(|| {
            message
                .extended_text_message
                .as_ref()
                .and_then(|m| m.text.clone())
        });
        let mut content = match (text, phone_sync_kind(&message)) {
            (Some(text), _) => Self {
                kind: "text".to_owned(),
                text: Some(text),
                destination: None,
                sender_key: None,
                media: None,
                refs: None,
                app_state_keys: Vec::new(),
                history: None,
                rich: None,
            },
            (None, Some(kind)) => Self::named(kind),
            (None, None) => Self::named(&content_field_name(plaintext)),
        };
        content.sender_key = sender_key;
        content.media = crate::wa::media::MediaInfo::from_message(&message);
        let refs = crate::wa::compose::Refs::read(&message);
        if let Some((kind, text)) = &refs.action {
            content.kind = (*kind).to_owned();
            content.text = text.clone();
        }
        content.refs = (!refs.is_empty()).then(|| Box::new(refs));
        if let Some(rich) = crate::wa::content::Rich::read(&message) {
            content.kind = rich.kind(&message).to_owned();
            content.rich = Some(Box::new(rich));
        }
        content.app_state_keys = message
            .protocol_message
            .as_ref()
            .and_then(|p| p.app_state_sync_key_share.as_ref())
            .map(crate::wa::appstate::shared_keys)
            .unwrap_or_default();
        content.history = message
            .protocol_message
            .as_ref()
            .and_then(|p| p.history_sync_notification.as_ref())
            .and_then(|n| crate::wa::history::HistoryNotice::from_proto(n).ok())
            .map(Box::new);
        Ok(content)
    }

    /// What a primary phone sends its companions for their own bookkeeping
    /// (app-state keys, history notifications): nothing to report to the
    /// user.
    pub fn is_phone_sync(&self) -> bool {
        self.text.is_none() && [KEY_SHARE, HISTORY_NOTIFICATION].contains(&self.kind.as_str())
    }

    fn named(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            text: None,
            destination: None,
            sender_key: None,
            media: None,
            refs: None,
            app_state_keys: Vec::new(),
            history: None,
            rich: None,
        }
    }

    /// Only a sender key distribution (no content of its own): nothing to
    /// report to the user.
    pub fn is_key_only(&self) -> bool {
        self.sender_key.is_some() && self.kind == "senderKeyDistributionMessage"
    }
}

/// Kind of an app-state key share from the account's phone.
const KEY_SHARE: &str = "appStateSyncKeyShare";
/// Kind of a history-sync notification from the account's phone.
const HISTORY_NOTIFICATION: &str = "historySyncNotification";

/// The kind of a protocol message a phone sends its companions to keep them
/// in step, if it is one.
fn phone_sync_kind(message: &Message) -> Option<&'static str> {
    use crate::proto::wa::message::protocol_message::Type;
    let protocol = message.protocol_message.as_ref()?;
    match protocol.r#type.and_then(|t| Type::try_from(t).ok())? {
        Type::AppStateSyncKeyShare => Some(KEY_SHARE),
        Type::HistorySyncNotification => Some(HISTORY_NOTIFICATION),
        Type::Revoke | Type::MessageEdit => None,
    }
}

/// The name of a `Message`'s content: its first field that is not
/// bookkeeping, by WhatsApp's field numbers; `unknown` when there is none.
fn content_field_name(encoded: &[u8]) -> String {
    let mut rest = encoded;
    let mut first_bookkeeping = None;
    while let Some((field, wire_type)) = read_varint(&mut rest).map(|k| (k >> 3, k & 7)) {
        let skipped = match wire_type {
            0 => read_varint(&mut rest).is_some(),
            1 => skip(&mut rest, 8),
            2 => read_varint(&mut rest)
                .and_then(|len| usize::try_from(len).ok())
                .is_some_and(|len| skip(&mut rest, len)),
            5 => skip(&mut rest, 4),
            _ => false,
        };
        if !skipped {
            break;
        }
        match field {
            // senderKeyDistributionMessage, messageContextInfo
            2 | 35 => {
                first_bookkeeping.get_or_insert(field);
            }
            other => return field_name(other),
        }
    }
    first_bookkeeping.map_or_else(|| "unknown".to_owned(), field_name)
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = input.split_first()?;
        *input = rest;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn skip(input: &mut &[u8], len: usize) -> bool {
    match input.get(len..) {
        Some(rest) => {
            *input = rest;
            true
        }
        None => false,
    }
}

/// WhatsApp's names of the `Message` content fields.
fn field_name(field: u64) -> String {
    let name = match field {
        1 => "conversation",
        2 => "senderKeyDistributionMessage",
        3 => "imageMessage",
        4 => "contactMessage",
        5 => "locationMessage",
        6 => "extendedTextMessage",
        7 => "documentMessage",
        8 => "audioMessage",
        9 => "videoMessage",
        10 => "call",
        11 => "chat",
        12 => "protocolMessage",
        13 => "contactsArrayMessage",
        14 => "highlyStructuredMessage",
        15 => "fastRatchetKeySenderKeyDistributionMessage",
        16 => "sendPaymentMessage",
        18 => "liveLocationMessage",
        22 => "requestPaymentMessage",
        23 => "declinePaymentRequestMessage",
        24 => "cancelPaymentRequestMessage",
        25 => "templateMessage",
        26 => "stickerMessage",
        28 => "groupInviteMessage",
        29 => "templateButtonReplyMessage",
        30 => "productMessage",
        31 => "deviceSentMessage",
        35 => "messageContextInfo",
        37 => "viewOnceMessage",
        40 => "ephemeralMessage",
        46 => "reactionMessage",
        49 => "pollCreationMessage",
        50 => "pollUpdateMessage",
        58 => "editedMessage",
        60 => "pollCreationMessageV2",
        64 => "pollCreationMessageV3",
        111 => "pollCreationMessageV5",
        119 => "pollCreationMessageV6",
        other => return format!("unknown:{other}"),
    };
    name.to_owned()
}

/// A plain text as WhatsApp Web sends it.
pub fn text_message(text: &str) -> Message {
    Message {
        conversation: Some(text.to_owned()),
        ..Default::default()
    }
}

/// An extended text (Baileys' choice for plain texts too).
pub fn extended_text_message(text: &str) -> Message {
    Message {
        extended_text_message: Some(Box::new(ExtendedTextMessage {
            text: Some(text.to_owned()),
            context_info: None,
        })),
        ..Default::default()
    }
}

/// The copy of `message` for our own other devices.
pub fn device_sent(destination: &Jid, message: &Message) -> Message {
    Message {
        device_sent_message: Some(Box::new(DeviceSentMessage {
            destination_jid: Some(destination.to_string()),
            message: Some(Box::new(message.clone())),
            phash: None,
        })),
        ..Default::default()
    }
}

/// `<enc v="2" type>ciphertext</enc>`.
pub fn enc_node(ciphertext: &CiphertextMessage) -> Node {
    Node::new("enc")
        .attr("v", "2")
        .attr("type", ciphertext.kind())
        .bytes(ciphertext.bytes().to_vec())
}

/// `<message id to type="text"><participants><to jid><enc/></to>…</participants>
/// [<device-identity>]</message>`; the device identity goes along whenever
/// any payload is a `pkmsg`.
pub fn fanout_stanza(
    id: &str,
    to: &Jid,
    devices: &[(Jid, CiphertextMessage)],
    device_identity: &[u8],
) -> Node {
    let mut children = vec![participants_node(devices)];
    children.extend(identity_for(devices, device_identity));
    Node::new("message")
        .attr("id", id.to_owned())
        .attr("to", to.to_non_ad())
        .attr("type", "text")
        .children(children)
}

/// `<participants><to jid><enc/></to>…</participants>`: one pairwise
/// payload per device.
pub fn participants_node(devices: &[(Jid, CiphertextMessage)]) -> Node {
    let participants = devices
        .iter()
        .map(|(jid, ct)| {
            Node::new("to")
                .attr("jid", jid.clone())
                .children(vec![enc_node(ct)])
        })
        .collect();
    Node::new("participants").children(participants)
}

/// `<device-identity>` when any pairwise payload is a `pkmsg` (the
/// recipient must learn who we are to accept the new session).
pub fn identity_for(devices: &[(Jid, CiphertextMessage)], device_identity: &[u8]) -> Option<Node> {
    devices
        .iter()
        .any(|(_, ct)| matches!(ct, CiphertextMessage::PreKey(_)))
        .then(|| Node::new("device-identity").bytes(device_identity.to_vec()))
}

/// A resend to one device after its retry receipt:
/// `<message id to=DEVICE type device_fanout="false"><enc count/>…`.
pub fn resend_stanza(
    id: &str,
    device: &Jid,
    ciphertext: &CiphertextMessage,
    retry_count: u32,
    device_identity: &[u8],
) -> Node {
    Node::new("message")
        .attr("id", id.to_owned())
        .attr("to", device.clone())
        .attr("type", "text")
        .attr("device_fanout", "false")
        .children(resend_children(ciphertext, retry_count, device_identity))
}

/// A resend's payload: the `<enc count>` and, for a `pkmsg`, our device
/// identity.
pub fn resend_children(
    ciphertext: &CiphertextMessage,
    retry_count: u32,
    device_identity: &[u8],
) -> Vec<Node> {
    let mut children = vec![enc_node(ciphertext).attr("count", retry_count.to_string())];
    if matches!(ciphertext, CiphertextMessage::PreKey(_)) {
        children.push(Node::new("device-identity").bytes(device_identity.to_vec()));
    }
    children
}

/// The server's answer to a message we sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAck {
    pub id: String,
    /// Server timestamp, unix seconds.
    pub t: Option<u64>,
    /// Set when the server refused the message.
    pub error: Option<String>,
}

impl ServerAck {
    /// Reads `<ack class="message" id [t] [error]/>`; `None` for other acks.
    pub fn parse(node: &Node) -> Option<Self> {
        if node.tag() != "ack" || node.attr_str("class") != Some("message") {
            return None;
        }
        Some(Self {
            id: node.attr_string("id")?,
            t: node.attr_u64("t"),
            error: node.attr_string("error").filter(|e| !e.is_empty()),
        })
    }
}

/// What a receipt says about messages we sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Read,
    Played,
    /// The peer could not decrypt and asks for a resend.
    Retry,
    /// Our own other device confirmed a message (`sender`), history sync
    /// and other bookkeeping receipts: acknowledged, not reported.
    Other,
}

/// An incoming `<receipt>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingReceipt {
    /// The receipt's own id (the first message id).
    pub id: String,
    /// Every message id it confirms.
    pub message_ids: Vec<String>,
    /// The confirming device (or group).
    pub from: Jid,
    pub participant: Option<Jid>,
    pub recipient: Option<Jid>,
    pub kind: ReceiptKind,
    /// The `type` attribute as received, echoed in the ack.
    pub raw_type: Option<String>,
    pub t: Option<u64>,
    /// For a retry: the count the peer is at.
    pub retry_count: u32,
}

impl IncomingReceipt {
    pub fn parse(node: &Node) -> Result<Self, MessageError> {
        let id = node
            .attr_string("id")
            .filter(|id| !id.is_empty())
            .ok_or(MessageError::Malformed("receipt id"))?;
        let from = node
            .attr_jid("from")
            .ok_or(MessageError::Malformed("receipt from"))?;
        let raw_type = node.attr_string("type").filter(|t| !t.is_empty());
        let kind = match raw_type.as_deref() {
            None | Some("inactive") => ReceiptKind::Delivered,
            Some("read") | Some("read-self") => ReceiptKind::Read,
            Some("played") | Some("played-self") => ReceiptKind::Played,
            Some("retry") => ReceiptKind::Retry,
            Some(_) => ReceiptKind::Other,
        };
        let mut message_ids = vec![id.clone()];
        if let Some(list) = node.child("list") {
            message_ids.extend(
                list.children_by_tag("item")
                    .filter_map(|item| item.attr_string("id"))
                    .take(MAX_RECEIPT_IDS - 1),
            );
        }
        let retry_count = node
            .child("retry")
            .and_then(|r| r.attr_u64("count"))
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(1);
        Ok(Self {
            id,
            message_ids,
            participant: node.attr_jid("participant"),
            recipient: node.attr_jid("recipient"),
            t: node.attr_u64("t"),
            from,
            kind,
            raw_type,
            retry_count,
        })
    }

    /// The device that sent the receipt.
    pub fn sender(&self) -> &Jid {
        self.participant.as_ref().unwrap_or(&self.from)
    }

    /// `<ack class="receipt" id to [type] [participant]>`.
    pub fn ack(&self) -> Node {
        let mut node = Node::new("ack")
            .attr("class", "receipt")
            .attr("id", self.id.clone())
            .attr("to", self.from.clone());
        if let Some(kind) = &self.raw_type {
            node = node.attr("type", kind.clone());
        }
        if let Some(participant) = &self.participant {
            node = node.attr("participant", participant.clone());
        }
        node
    }
}

/// `<ack class=TAG id to=FROM [type] [participant]>` for a notification,
/// call or any other stanza the server wants confirmed.
pub fn stanza_ack(node: &Node) -> Option<Node> {
    let id = node.attr_string("id")?;
    let from = node.attr_jid("from")?;
    let mut ack = Node::new("ack")
        .attr("class", node.tag().to_owned())
        .attr("id", id)
        .attr("to", from);
    if let Some(kind) = node.attr_string("type") {
        ack = ack.attr("type", kind);
    }
    if let Some(participant) = node.attr_jid("participant") {
        ack = ack.attr("participant", participant);
    }
    Some(ack)
}

/// The phone number of a JID when it is a phone-number address.
pub fn phone_of(jid: &Jid) -> Option<String> {
    (jid.is_user() && !jid.user.is_empty() && jid.user.bytes().all(|b| b.is_ascii_digit()))
        .then(|| jid.user.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::binary;
    use rand::SeedableRng;

    fn jid(s: &str) -> Jid {
        s.parse().expect("valid jid")
    }

    #[test]
    fn message_ids_have_whatsapp_web_shape() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = new_message_id(1_700_000_000, "15550001111", &mut rng);
        let b = new_message_id(1_700_000_000, "15550001111", &mut rng);
        assert_eq!(a.len(), 22);
        assert!(a.starts_with("3EB0"));
        assert!(a[4..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c)));
        assert_ne!(a, b);
    }

    fn incoming() -> Node {
        Node::new("message")
            .attr("from", jid("15550002222@s.whatsapp.net"))
            .attr("id", "ABC")
            .attr("t", "1700000000")
            .attr("type", "text")
            .attr("notify", "Bob")
            .attr("sender_lid", jid("99887766@lid"))
            .children(vec![
                Node::new("enc")
                    .attr("v", "2")
                    .attr("type", "pkmsg")
                    .bytes(vec![1, 2]),
                Node::new("device-identity").bytes(vec![9]),
            ])
    }

    #[test]
    fn incoming_messages_parse_through_the_codec() {
        let node = binary::decode(&binary::encode(&incoming())).expect("codec");
        let own = jid("15550001111:3@s.whatsapp.net");
        let msg = IncomingMessage::parse(&node).expect("parses");
        assert_eq!(msg.id, "ABC");
        assert_eq!(msg.t, 1_700_000_000);
        assert_eq!(msg.push_name.as_deref(), Some("Bob"));
        assert!(!msg.offline);
        assert!(!msg.from_me(&own));
        assert_eq!(msg.chat(&own), jid("15550002222@s.whatsapp.net"));
        assert_eq!(msg.sender_alt, Some(jid("99887766@lid")));
        assert_eq!(
            msg.encs,
            vec![EncPayload {
                kind: "pkmsg".into(),
                ciphertext: vec![1, 2]
            }]
        );
        let receipt = msg.receipt(&own);
        assert_eq!(receipt.attr_str("id"), Some("ABC"));
        assert_eq!(
            receipt.attr_jid("to"),
            Some(jid("15550002222@s.whatsapp.net"))
        );
        assert_eq!(receipt.attr_str("type"), None);
        let retry = msg.retry_receipt(2, 0x01020304, None);
        assert_eq!(retry.attr_str("type"), Some("retry"));
        assert_eq!(
            retry.child("retry").and_then(|r| r.attr_str("count")),
            Some("2")
        );
        assert_eq!(
            retry.child("registration").and_then(Node::content_bytes),
            Some(&[1, 2, 3, 4][..])
        );
    }

    #[test]
    fn own_device_copies_belong_to_the_recipient_chat() {
        let node = Node::new("message")
            .attr("from", jid("15550001111:5@s.whatsapp.net"))
            .attr("recipient", jid("15550002222@s.whatsapp.net"))
            .attr("id", "X")
            .attr("t", "5")
            .attr("offline", "1");
        let own = jid("15550001111:3@s.whatsapp.net");
        let msg = IncomingMessage::parse(&node).expect("parses");
        assert!(msg.from_me(&own));
        assert!(msg.offline);
        assert_eq!(msg.chat(&own), jid("15550002222@s.whatsapp.net"));
        let receipt = msg.receipt(&own);
        assert_eq!(receipt.attr_str("type"), Some("sender"));
        assert_eq!(
            receipt.attr_jid("recipient"),
            Some(jid("15550002222@s.whatsapp.net"))
        );
        assert_eq!(
            msg.dedupe_key(&own),
            "15550002222@s.whatsapp.net/15550001111@s.whatsapp.net/X"
        );
    }

    #[test]
    fn malformed_messages_are_refused() {
        for (node, what) in [
            (Node::new("message"), "message id"),
            (Node::new("message").attr("id", "A"), "message from"),
            (
                Node::new("message")
                    .attr("id", "A")
                    .attr("from", jid("1@s.whatsapp.net")),
                "message t",
            ),
            (
                Node::new("message")
                    .attr("id", "A")
                    .attr("from", jid("1-2@g.us"))
                    .attr("t", "1"),
                "group message participant",
            ),
        ] {
            assert_eq!(
                IncomingMessage::parse(&node),
                Err(MessageError::Malformed(what))
            );
        }
    }

    #[test]
    fn content_reads_texts_copies_and_names_everything_else() {
        let text = Content::decode(&text_message("hi").encode_to_vec()).expect("decodes");
        assert_eq!(text.kind, "text");
        assert_eq!(text.text.as_deref(), Some("hi"));
        let ext = Content::decode(&extended_text_message("yo").encode_to_vec()).expect("decodes");
        assert_eq!(ext.text.as_deref(), Some("yo"));
        let peer = jid("15550002222@s.whatsapp.net");
        let copy = Content::decode(&device_sent(&peer, &text_message("mine")).encode_to_vec())
            .expect("decodes");
        assert_eq!(copy.text.as_deref(), Some("mine"));
        assert_eq!(copy.destination, Some(peer));
        // imageMessage (3) with a caption field inside, then messageContextInfo.
        let image = [0x1A, 0x03, 0x1A, 0x01, b'x', 0x9A, 0x02, 0x00];
        assert_eq!(
            Content::decode(&image).expect("decodes").kind,
            "imageMessage"
        );
        let unknown = [0xF2, 0x07, 0x00];
        assert_eq!(
            Content::decode(&unknown).expect("decodes").kind,
            "unknown:126"
        );
        assert_eq!(content_field_name(&[]), "unknown");
        assert!(Content::decode(&[0xFF, 0xFF]).is_err());
    }

    #[test]
    fn phone_key_shares_and_history_notices_are_not_reported() {
        use crate::proto::wa::message::protocol_message::Type;
        use crate::proto::wa::message::ProtocolMessage;
        let protocol = |kind: Type| {
            let message = Message {
                protocol_message: Some(Box::new(ProtocolMessage {
                    r#type: Some(kind.into()),
                    ..Default::default()
                })),
                ..Default::default()
            };
            Content::decode(&message.encode_to_vec()).expect("decodes")
        };
        let share = protocol(Type::AppStateSyncKeyShare);
        assert_eq!(share.kind, "appStateSyncKeyShare");
        assert!(share.is_phone_sync());
        assert!(protocol(Type::HistorySyncNotification).is_phone_sync());
        let revoke = protocol(Type::Revoke);
        assert_eq!(revoke.kind, "protocolMessage");
        assert!(!revoke.is_phone_sync());
        let text = Content::decode(&text_message("hi").encode_to_vec()).expect("decodes");
        assert!(!text.is_phone_sync());
    }

    #[test]
    fn field_scan_survives_garbage() {
        for garbage in [
            &[0x0A][..],
            &[0x0A, 0xFF],
            &[0x0B],
            &[
                0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
            ],
            &[0x09, 1, 2],
        ] {
            let _ = content_field_name(garbage);
        }
    }

    proptest::proptest! {
        #[test]
        fn content_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Content::decode(&bytes);
            let _ = content_field_name(&bytes);
        }

        #[test]
        fn stanza_readers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(node) = binary::decode(&bytes) {
                if let Ok(message) = IncomingMessage::parse(&node) {
                    let own = message.sender().clone();
                    let _ = message.receipt(&own);
                }
                let _ = IncomingReceipt::parse(&node).map(|r| r.ack());
                let _ = ServerAck::parse(&node);
            }
        }
    }

    #[test]
    fn receipts_and_acks() {
        let node = Node::new("receipt")
            .attr("from", jid("15550002222@s.whatsapp.net"))
            .attr("id", "M1")
            .attr("t", "7")
            .attr("type", "read")
            .children(vec![Node::new("list").children(vec![
                Node::new("item").attr("id", "M2"),
                Node::new("item").attr("id", "M3"),
            ])]);
        let receipt = IncomingReceipt::parse(&node).expect("parses");
        assert_eq!(receipt.kind, ReceiptKind::Read);
        assert_eq!(receipt.message_ids, vec!["M1", "M2", "M3"]);
        let ack = receipt.ack();
        assert_eq!(ack.attr_str("class"), Some("receipt"));
        assert_eq!(ack.attr_str("type"), Some("read"));
        let plain = Node::new("receipt")
            .attr("from", jid("1@s.whatsapp.net"))
            .attr("id", "M");
        assert_eq!(
            IncomingReceipt::parse(&plain).expect("parses").kind,
            ReceiptKind::Delivered
        );
        let server = Node::new("ack")
            .attr("class", "message")
            .attr("id", "M")
            .attr("t", "9")
            .attr("error", "479");
        assert_eq!(
            ServerAck::parse(&server),
            Some(ServerAck {
                id: "M".into(),
                t: Some(9),
                error: Some("479".into())
            })
        );
        assert_eq!(
            ServerAck::parse(&Node::new("ack").attr("class", "receipt")),
            None
        );
        let notification = Node::new("notification")
            .attr("from", Jid::server_jid())
            .attr("id", "N")
            .attr("type", "encrypt");
        let ack = stanza_ack(&notification).expect("ack");
        assert_eq!(ack.attr_str("class"), Some("notification"));
        assert_eq!(ack.attr_str("type"), Some("encrypt"));
    }

    #[test]
    fn fanout_carries_identity_only_with_prekey_messages() {
        let peer = jid("15550002222@s.whatsapp.net");
        let node = fanout_stanza(
            "ID",
            &peer,
            &[(peer.clone(), CiphertextMessage::Whisper(vec![1]))],
            &[7],
        );
        assert!(node.child("device-identity").is_none());
        let node = fanout_stanza(
            "ID",
            &peer,
            &[
                (peer.clone(), CiphertextMessage::Whisper(vec![1])),
                (
                    jid("15550001111@s.whatsapp.net"),
                    CiphertextMessage::PreKey(vec![2]),
                ),
            ],
            &[7],
        );
        assert_eq!(
            node.child("device-identity").and_then(Node::content_bytes),
            Some(&[7][..])
        );
        let node = binary::decode(&binary::encode(&node)).expect("codec");
        assert_eq!(
            node.child("participants").map(|p| p.child_nodes().len()),
            Some(2)
        );
    }
}
