//! Messages about other messages: replies (a quote), mentions, reactions,
//! edits and revokes — built for sending, and read on arrival into the
//! receiver's point of view. Facts from WhatsApp's `Message` protobuf: a
//! reply is an `extendedTextMessage` whose `contextInfo` names the quoted
//! message (`stanzaId`, `participant`, `quotedMessage`); a reaction is a
//! `reactionMessage` with the target's `MessageKey`; a revoke is a
//! `protocolMessage` of type REVOKE; an edit is a `protocolMessage` of type
//! MESSAGE_EDIT with the new content, wrapped in `editedMessage`. The
//! stanza marks them too: `type="reaction"`, `edit="1"` for an edit, `"7"`
//! for the sender's revoke (or a reaction taken back), `"8"` for an admin's.

use crate::proto::wa::message::protocol_message::Type as ProtocolType;
use crate::proto::wa::message::{
    ExtendedTextMessage, FutureProofMessage, ProtocolMessage, ReactionMessage,
};
use crate::proto::wa::{ContextInfo, Message, MessageKey};
use crate::wa::jid::Jid;

/// Longest text kept from a quoted message or an edit (bytes).
const MAX_QUOTED_BYTES: usize = 4_096;
/// Most mentions kept from one message.
const MAX_MENTIONS: usize = 1_024;

/// A message another one points at, as the account sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRef {
    pub id: String,
    /// Sent by this account.
    pub from_me: bool,
    /// Who sent it: needed in groups for others' messages; `None` when
    /// unknown (1:1 chats make it clear from `from_me`).
    pub sender: Option<Jid>,
}

/// What to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compose {
    /// A text, perhaps quoting another message and mentioning users.
    Text {
        text: String,
        quote: Option<(MessageRef, Option<String>)>,
        mentions: Vec<Jid>,
    },
    /// A reaction; an empty emoji takes an earlier one back.
    Reaction { target: MessageRef, emoji: String },
    /// New text for one of this account's messages.
    Edit { target: MessageRef, text: String },
    /// Delete for everyone: this account's message, or as a group admin
    /// another member's.
    Revoke { target: MessageRef },
    /// A place on the map.
    Location(crate::wa::content::Location),
    /// One contact card or several.
    Contacts(crate::wa::content::Contacts),
    /// A poll. The message built here has no secret yet: the engine adds a
    /// fresh one when it sends it, and keeps it for the votes.
    Poll(crate::wa::content::Poll),
    /// A vote on a poll: the options chosen (none takes the vote back).
    /// Built unsealed; the engine seals it with the poll's secret.
    PollVote {
        poll: MessageRef,
        options: Vec<String>,
    },
}

impl Compose {
    /// The `Message` for `chat`, sent by `own`, at `now_ms`.
    pub fn message(&self, chat: &Jid, own: &Jid, now_ms: u64) -> Message {
        let now_ms = i64::try_from(now_ms).unwrap_or(i64::MAX);
        match self {
            Self::Text {
                text,
                quote: None,
                mentions,
            } if mentions.is_empty() => super::message::text_message(text),
            Self::Text {
                text,
                quote,
                mentions,
            } => {
                let mut context = ContextInfo {
                    mentioned_jid: mentions.iter().map(|j| j.to_non_ad().to_string()).collect(),
                    ..Default::default()
                };
                if let Some((target, quoted_text)) = quote {
                    context.stanza_id = Some(target.id.clone());
                    context.participant = Some(author(target, chat, own).to_non_ad().to_string());
                    context.quoted_message = Some(Box::new(super::message::text_message(
                        quoted_text.as_deref().unwrap_or_default(),
                    )));
                }
                Message {
                    extended_text_message: Some(Box::new(ExtendedTextMessage {
                        text: Some(text.clone()),
                        context_info: Some(Box::new(context)),
                    })),
                    ..Default::default()
                }
            }
            Self::Reaction { target, emoji } => Message {
                reaction_message: Some(ReactionMessage {
                    key: Some(key(target, chat)),
                    text: Some(emoji.clone()),
                    grouping_key: Some(emoji.clone()),
                    sender_timestamp_ms: Some(now_ms),
                }),
                ..Default::default()
            },
            Self::Revoke { target } => Message {
                protocol_message: Some(Box::new(ProtocolMessage {
                    key: Some(key(target, chat)),
                    r#type: Some(ProtocolType::Revoke.into()),
                    ..Default::default()
                })),
                ..Default::default()
            },
            Self::Location(location) => crate::wa::content::location_message(location),
            Self::Contacts(contacts) => crate::wa::content::contacts_message(contacts),
            Self::Poll(poll) => crate::wa::content::poll_message(poll, None),
            Self::PollVote { poll, options } => {
                crate::wa::content::unsealed_vote(key(poll, chat), options, now_ms)
            }
            Self::Edit { target, text } => {
                let edit = Message {
                    protocol_message: Some(Box::new(ProtocolMessage {
                        key: Some(key(target, chat)),
                        r#type: Some(ProtocolType::MessageEdit.into()),
                        edited_message: Some(Box::new(super::message::text_message(text))),
                        timestamp_ms: Some(now_ms),
                        ..Default::default()
                    })),
                    ..Default::default()
                };
                Message {
                    edited_message: Some(Box::new(FutureProofMessage {
                        message: Some(Box::new(edit)),
                    })),
                    ..Default::default()
                }
            }
        }
    }
}

/// Who sent `target`, as a quote names them.
fn author(target: &MessageRef, chat: &Jid, own: &Jid) -> Jid {
    match (&target.sender, target.from_me) {
        (Some(sender), _) => sender.clone(),
        (None, true) => own.clone(),
        (None, false) => chat.clone(),
    }
}

/// The target's key as the sender writes it.
fn key(target: &MessageRef, chat: &Jid) -> MessageKey {
    let participant = (chat.is_group() && !target.from_me)
        .then(|| target.sender.as_ref().map(|s| s.to_non_ad().to_string()))
        .flatten();
    MessageKey {
        remote_jid: Some(chat.to_non_ad().to_string()),
        from_me: Some(target.from_me),
        id: Some(target.id.clone()),
        participant,
    }
}

/// How a stanza carrying `message` is marked: its `type`, and its `edit`
/// attribute if any.
pub fn stanza_marks(message: &Message) -> (&'static str, Option<&'static str>) {
    if let Some(reaction) = &message.reaction_message {
        let taken_back = reaction.text.as_deref().unwrap_or_default().is_empty();
        return ("reaction", taken_back.then_some("7"));
    }
    let poll = message.poll_creation_message.is_some()
        || message.poll_creation_message_v2.is_some()
        || message.poll_creation_message_v3.is_some()
        || message.poll_creation_message_v5.is_some()
        || message.poll_creation_message_v6.is_some()
        || message.poll_update_message.is_some();
    if poll {
        return ("poll", None);
    }
    let protocol = message.protocol_message.as_deref().or_else(|| {
        message
            .edited_message
            .as_ref()?
            .message
            .as_ref()?
            .protocol_message
            .as_deref()
    });
    let edit = protocol.and_then(
        |p| match p.r#type.and_then(|t| ProtocolType::try_from(t).ok()) {
            Some(ProtocolType::MessageEdit) => Some("1"),
            Some(ProtocolType::Revoke) => Some(match p.key.as_ref().and_then(|k| k.from_me) {
                Some(false) => "8",
                _ => "7",
            }),
            _ => None,
        },
    );
    ("text", edit)
}

/// What an arriving message says about other messages, from the sender's
/// point of view (as its keys are written).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    /// `reaction`, `edit` or `revoke` when the message is one; its `text`
    /// is the emoji or the new text.
    pub action: Option<(&'static str, Option<String>)>,
    /// The message acted on or quoted.
    pub target: Option<SenderKey>,
    /// The quoted message's text.
    pub quoted_text: Option<String>,
    pub mentions: Vec<String>,
}

/// A `MessageKey` as the sender wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SenderKey {
    pub id: String,
    /// From the sender's point of view: the sender wrote it.
    pub from_me: Option<bool>,
    /// The author, when the key or quote names one.
    pub participant: Option<Jid>,
}

impl Refs {
    /// Reads `message` (already unwrapped from a device-sent copy).
    pub fn read(message: &Message) -> Self {
        let mut refs = Self::default();
        if let Some(reaction) = &message.reaction_message {
            refs.action = Some(("reaction", Some(reaction.text.clone().unwrap_or_default())));
            refs.target = reaction.key.as_ref().and_then(sender_key);
            return refs;
        }
        let protocol = message.protocol_message.as_deref().or_else(|| {
            message
                .edited_message
                .as_ref()?
                .message
                .as_ref()?
                .protocol_message
                .as_deref()
        });
        if let Some(p) = protocol {
            match p.r#type.and_then(|t| ProtocolType::try_from(t).ok()) {
                Some(ProtocolType::Revoke) if p.key.is_some() => {
                    refs.action = Some(("revoke", None));
                    refs.target = p.key.as_ref().and_then(sender_key);
                }
                Some(ProtocolType::MessageEdit) => {
                    let text = p.edited_message.as_deref().and_then(text_of);
                    refs.action = Some(("edit", Some(cut(text.unwrap_or_default()))));
                    refs.target = p.key.as_ref().and_then(sender_key);
                }
                _ => {}
            }
            return refs;
        }
        let context = message
            .extended_text_message
            .as_ref()
            .and_then(|m| m.context_info.as_deref());
        if let Some(context) = context {
            refs.mentions = context
                .mentioned_jid
                .iter()
                .take(MAX_MENTIONS)
                .filter(|j| j.parse::<Jid>().is_ok())
                .cloned()
                .collect();
            if let Some(id) = context.stanza_id.clone().filter(|id| !id.is_empty()) {
                refs.target = Some(SenderKey {
                    id,
                    from_me: None,
                    participant: context.participant.as_deref().and_then(|p| p.parse().ok()),
                });
                refs.quoted_text = context.quoted_message.as_deref().and_then(text_of).map(cut);
            }
        }
        refs
    }

    /// Whether the message says anything about others.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

fn sender_key(key: &MessageKey) -> Option<SenderKey> {
    Some(SenderKey {
        id: key.id.clone().filter(|id| !id.is_empty())?,
        from_me: key.from_me,
        participant: key.participant.as_deref().and_then(|p| p.parse().ok()),
    })
}

/// The text of a plain or extended text.
fn text_of(message: &Message) -> Option<String> {
    message.conversation.clone().or_else(|| {
        message
            .extended_text_message
            .as_ref()
            .and_then(|m| m.text.clone())
    })
}

fn cut(mut text: String) -> String {
    let mut end = MAX_QUOTED_BYTES.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

/// The target of `refs` from the receiver's point of view: `sender` sent
/// the message in `chat`; `own` is this account.
pub fn as_seen_by(
    target: &SenderKey,
    sender: &Jid,
    chat: &Jid,
    own: &Jid,
    action: bool,
) -> MessageRef {
    let sent_by_us = sender.user == own.user;
    let author = match (&target.participant, target.from_me) {
        // A quote or a group key names the author.
        (Some(p), _) => Some(p.to_non_ad()),
        // The key says the sender wrote the target.
        (None, Some(true)) => Some(sender.to_non_ad()),
        // In a 1:1 chat the other one wrote it: the chat's peer or us.
        (None, Some(false)) if !chat.is_group() => Some(if sent_by_us {
            chat.clone()
        } else {
            own.to_non_ad()
        }),
        _ => None,
    };
    let from_me = match &author {
        Some(a) => a.user == own.user,
        None => action && sent_by_us && target.from_me == Some(true),
    };
    MessageRef {
        id: target.id.clone(),
        from_me,
        sender: author,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    fn round_trip(compose: &Compose, chat: &Jid, own: &Jid) -> (Message, Refs) {
        let message = compose.message(chat, own, 1_700_000_000_000);
        let decoded = Message::decode(message.encode_to_vec().as_slice()).expect("decodes");
        let refs = Refs::read(&decoded);
        (decoded, refs)
    }

    #[test]
    fn a_reply_quotes_and_mentions() {
        let own = jid("15550001111@s.whatsapp.net");
        let peer = jid("15550002222@s.whatsapp.net");
        let compose = Compose::Text {
            text: "yes @15550003333".into(),
            quote: Some((
                MessageRef {
                    id: "3EB0AA".into(),
                    from_me: false,
                    sender: None,
                },
                Some("are you coming?".into()),
            )),
            mentions: vec![jid("15550003333@s.whatsapp.net")],
        };
        let (message, refs) = round_trip(&compose, &peer, &own);
        assert_eq!(stanza_marks(&message), ("text", None));
        assert_eq!(refs.action, None);
        assert_eq!(refs.quoted_text.as_deref(), Some("are you coming?"));
        assert_eq!(refs.mentions, vec!["15550003333@s.whatsapp.net".to_owned()]);
        let target = refs.target.expect("quote");
        // The peer receives it: the quoted message was its own.
        let seen = as_seen_by(&target, &own, &own, &peer, false);
        assert_eq!(seen.id, "3EB0AA");
        assert!(seen.from_me);
    }

    #[test]
    fn a_plain_text_stays_a_conversation() {
        let own = jid("15550001111@s.whatsapp.net");
        let compose = Compose::Text {
            text: "hi".into(),
            quote: None,
            mentions: vec![],
        };
        let (message, refs) = round_trip(&compose, &own, &own);
        assert_eq!(message.conversation.as_deref(), Some("hi"));
        assert!(refs.is_empty());
    }

    #[test]
    fn reactions_edits_and_revokes_read_back_from_the_other_side() {
        let own = jid("15550001111@s.whatsapp.net");
        let peer = jid("15550002222@s.whatsapp.net");
        let theirs = MessageRef {
            id: "THEIRS".into(),
            from_me: false,
            sender: None,
        };
        let mine = MessageRef {
            id: "MINE".into(),
            from_me: true,
            sender: None,
        };
        let cases = [
            (
                Compose::Reaction {
                    target: theirs.clone(),
                    emoji: "👍".into(),
                },
                ("reaction", None),
                ("reaction", Some("👍")),
                true,
            ),
            (
                Compose::Reaction {
                    target: theirs,
                    emoji: String::new(),
                },
                ("reaction", Some("7")),
                ("reaction", Some("")),
                true,
            ),
            (
                Compose::Edit {
                    target: mine.clone(),
                    text: "fixed".into(),
                },
                ("text", Some("1")),
                ("edit", Some("fixed")),
                false,
            ),
            (
                Compose::Revoke { target: mine },
                ("text", Some("7")),
                ("revoke", None),
                false,
            ),
        ];
        for (compose, marks, action, peer_wrote_target) in cases {
            let (message, refs) = round_trip(&compose, &peer, &own);
            assert_eq!(stanza_marks(&message), marks, "{compose:?}");
            let (kind, text) = refs.action.clone().expect("an action");
            assert_eq!((kind, text.as_deref()), action, "{compose:?}");
            // The peer's view: `own` sent it in the peer's chat with `own`.
            let seen = as_seen_by(&refs.target.expect("target"), &own, &own, &peer, true);
            assert_eq!(seen.from_me, peer_wrote_target, "{compose:?}");
        }
    }

    #[test]
    fn group_keys_name_the_author() {
        let own = jid("15550001111@s.whatsapp.net");
        let group = jid("120363000000000001@g.us");
        let author = jid("15550004444@s.whatsapp.net");
        let compose = Compose::Revoke {
            target: MessageRef {
                id: "X".into(),
                from_me: false,
                sender: Some(author.clone()),
            },
        };
        let (message, refs) = round_trip(&compose, &group, &own);
        assert_eq!(
            stanza_marks(&message),
            ("text", Some("8")),
            "an admin's revoke"
        );
        let target = refs.target.expect("target");
        assert_eq!(target.participant.as_ref(), Some(&author));
        let seen = as_seen_by(&target, &own, &group, &author, true);
        assert!(seen.from_me, "the author sees its own message revoked");
    }

    #[test]
    fn odd_content_reads_as_nothing() {
        let empty_key = Message {
            reaction_message: Some(ReactionMessage {
                key: Some(MessageKey::default()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let refs = Refs::read(&empty_key);
        assert_eq!(refs.target, None);
        let bare_protocol = Message {
            protocol_message: Some(Box::new(ProtocolMessage {
                r#type: Some(ProtocolType::Revoke.into()),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(Refs::read(&bare_protocol).action, None);
    }
}
