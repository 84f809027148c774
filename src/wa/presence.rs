//! Read receipts we send, chat states (typing, recording) and presence:
//! builders for the stanzas a session sends and readers for the ones it
//! receives. Sans-IO like the rest of `wa`: no tokio, store, clock or `sim`.

use crate::wa::binary::Node;
use crate::wa::jid::Jid;

/// Message ids one `<receipt>` carries (the id attribute and the list):
/// the most WhatsApp clients put in one, and the most readers accept.
pub const MAX_IDS_PER_RECEIPT: usize = 0x100;

/// Why an incoming presence or chat state stanza was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("{0} missing or malformed")]
    Malformed(&'static str),
    #[error("unknown chat state {0:?}")]
    UnknownState(String),
}

/// The read receipts for `ids` of `chat` (whose sender is `participant` in
/// a group): `<receipt id to type t [participant]><list><item id/>…</list>`,
/// one per [`MAX_IDS_PER_RECEIPT`] ids. With `self_only` (the account
/// keeps its read receipts private) the type is `read-self`: the account's
/// other devices mark the messages read, the sender learns nothing.
pub fn read_receipts(
    chat: &Jid,
    participant: Option<&Jid>,
    ids: &[String],
    self_only: bool,
    now_s: u64,
) -> Vec<Node> {
    let kind = if self_only { "read-self" } else { "read" };
    ids.chunks(MAX_IDS_PER_RECEIPT)
        .filter_map(|chunk| {
            let (first, rest) = chunk.split_first()?;
            let mut node = Node::new("receipt")
                .attr("id", first.clone())
                .attr("to", chat.clone())
                .attr("type", kind)
                .attr("t", now_s.to_string());
            if let Some(participant) = participant {
                node = node.attr("participant", participant.clone());
            }
            if !rest.is_empty() {
                let items = rest
                    .iter()
                    .map(|id| Node::new("item").attr("id", id.clone()))
                    .collect();
                node = node.children(vec![Node::new("list").children(items)]);
            }
            Some(node)
        })
        .collect()
}

/// Whether the account's privacy settings (the answer to
/// `<iq xmlns="privacy" type="get"><privacy/></iq>`) keep read receipts
/// private. Anything unreadable counts as the default: receipts on.
pub fn read_receipts_disabled(privacy_answer: &Node) -> bool {
    privacy_answer
        .child("privacy")
        .into_iter()
        .flat_map(|p| p.children_by_tag("category"))
        .any(|c| c.attr_str("name") == Some("readreceipts") && c.attr_str("value") == Some("none"))
}

/// The privacy settings query.
pub fn privacy_query() -> Node {
    Node::new("iq")
        .attr("xmlns", "privacy")
        .attr("type", "get")
        .attr("to", Jid::server_jid())
        .children(vec![Node::new("privacy")])
}

/// What a user is doing in a chat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatState {
    /// Typing.
    Composing,
    /// Recording a voice note (`<composing media="audio"/>`).
    Recording,
    /// Stopped typing or recording.
    Paused,
}

/// `<chatstate to><composing [media="audio"]/>|<paused/></chatstate>`.
pub fn chat_state(to: &Jid, state: ChatState) -> Node {
    let child = match state {
        ChatState::Composing => Node::new("composing"),
        ChatState::Recording => Node::new("composing").attr("media", "audio"),
        ChatState::Paused => Node::new("paused"),
    };
    Node::new("chatstate")
        .attr("to", to.clone())
        .children(vec![child])
}

/// `<presence type="available|unavailable" [name]/>`: whether the account
/// is online. WhatsApp shows the push name with it, so it goes along when
/// known.
pub fn presence(available: bool, push_name: Option<&str>) -> Node {
    let kind = if available {
        "available"
    } else {
        "unavailable"
    };
    let node = Node::new("presence").attr("type", kind);
    match push_name.filter(|n| !n.is_empty()) {
        Some(name) => node.attr("name", name.to_owned()),
        None => node,
    }
}

/// `<presence type="subscribe" to/>`: asks the server for `to`'s presence
/// now and whenever it changes.
pub fn subscribe(to: &Jid) -> Node {
    Node::new("presence")
        .attr("type", "subscribe")
        .attr("to", to.clone())
}

/// An incoming `<chatstate from [participant]>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingChatState {
    /// The chat: the user, or the group.
    pub chat: Jid,
    /// Who is typing (the user, or the group member).
    pub sender: Jid,
    /// The sender's phone number and LID, each when known (filled in by
    /// the message engine from the mappings it learned).
    pub sender_phone: Option<String>,
    pub sender_lid: Option<Jid>,
    pub state: ChatState,
}

impl IncomingChatState {
    pub fn parse(node: &Node) -> Result<Self, PresenceError> {
        let from = node
            .attr_jid("from")
            .ok_or(PresenceError::Malformed("chatstate from"))?;
        let sender = match node.attr_jid("participant") {
            Some(participant) => participant,
            None if from.is_group() => {
                return Err(PresenceError::Malformed("chatstate participant"))
            }
            None => from.clone(),
        };
        let child = node
            .child_nodes()
            .first()
            .ok_or(PresenceError::Malformed("chatstate state"))?;
        let state = match child.tag() {
            "composing" if child.attr_str("media") == Some("audio") => ChatState::Recording,
            "composing" => ChatState::Composing,
            "paused" => ChatState::Paused,
            other => return Err(PresenceError::UnknownState(other.to_owned())),
        };
        let sender = sender.to_non_ad();
        Ok(Self {
            chat: from.to_non_ad(),
            sender_phone: crate::wa::message::phone_of(&sender),
            sender_lid: sender.is_lid().then(|| sender.clone()),
            sender,
            state,
        })
    }
}

/// An incoming `<presence from [type] [last]>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncomingPresence {
    pub from: Jid,
    /// `from`'s phone number and LID, each when known (see
    /// [`IncomingChatState::sender_phone`]).
    pub from_phone: Option<String>,
    pub from_lid: Option<Jid>,
    pub available: bool,
    /// Last seen, unix seconds, when the user shares it.
    pub last_seen_s: Option<u64>,
}

impl IncomingPresence {
    pub fn parse(node: &Node) -> Result<Self, PresenceError> {
        let from = node
            .attr_jid("from")
            .ok_or(PresenceError::Malformed("presence from"))?;
        // No type means available; `unavailable` is the only other state
        // a server reports (`last` is "deny" or absent when hidden).
        let available = match node.attr_str("type") {
            None | Some("available") => true,
            Some("unavailable") => false,
            Some(_) => return Err(PresenceError::Malformed("presence type")),
        };
        let last_seen_s = node.attr_u64("last").filter(|t| *t > 0);
        let from = from.to_non_ad();
        Ok(Self {
            from_phone: crate::wa::message::phone_of(&from),
            from_lid: from.is_lid().then(|| from.clone()),
            from,
            available,
            last_seen_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::binary;

    fn jid(s: &str) -> Jid {
        s.parse().expect("valid jid")
    }

    /// Through the codec and back, as the wire carries it.
    fn wire(node: &Node) -> Node {
        let bytes = binary::encode(node);
        binary::decode(&bytes).expect("decodes")
    }

    #[test]
    fn read_receipts_name_every_id_and_split_long_lists() {
        let chat = jid("15550001111@s.whatsapp.net");
        let ids: Vec<String> = (0..300).map(|i| format!("3EB0{i:04}")).collect();
        let nodes = read_receipts(&chat, None, &ids, false, 7);
        assert_eq!(nodes.len(), 2);
        let mut seen = Vec::new();
        for node in &nodes {
            let parsed = crate::wa::message::IncomingReceipt::parse(
                &wire(node).clone().attr("from", chat.clone()),
            )
            .expect("a receipt reader takes it");
            assert_eq!(parsed.kind, crate::wa::message::ReceiptKind::Read);
            assert_eq!(node.attr_str("type"), Some("read"));
            assert_eq!(node.attr_u64("t"), Some(7));
            seen.extend(parsed.message_ids);
        }
        assert_eq!(seen, ids);
    }

    #[test]
    fn group_read_receipts_name_the_sender_and_private_ones_are_read_self() {
        let group = jid("120363000000000001@g.us");
        let sender = jid("15550002222@s.whatsapp.net");
        let ids = vec!["A".to_owned()];
        let node = &read_receipts(&group, Some(&sender), &ids, true, 1)[0];
        assert_eq!(node.attr_str("type"), Some("read-self"));
        assert_eq!(node.attr_jid("participant"), Some(sender));
        assert!(node.child("list").is_none());
        assert!(read_receipts(&group, None, &[], false, 1).is_empty());
    }

    #[test]
    fn privacy_answer_says_whether_receipts_are_private() {
        let answer = |value: &str| {
            Node::new("iq").children(vec![Node::new("privacy").children(vec![
                Node::new("category")
                    .attr("name", "last")
                    .attr("value", "none"),
                Node::new("category")
                    .attr("name", "readreceipts")
                    .attr("value", value.to_owned()),
            ])])
        };
        assert!(read_receipts_disabled(&answer("none")));
        assert!(!read_receipts_disabled(&answer("all")));
        assert!(!read_receipts_disabled(&Node::new("iq")));
    }

    #[test]
    fn chat_states_round_trip() {
        let peer = jid("15550002222@s.whatsapp.net");
        for state in [
            ChatState::Composing,
            ChatState::Recording,
            ChatState::Paused,
        ] {
            let mut node = wire(&chat_state(&peer, state));
            assert_eq!(node.attr_jid("to"), Some(peer.clone()));
            node.set_attr("from", jid("15550002222:3@s.whatsapp.net"));
            let got = IncomingChatState::parse(&node).expect("parses");
            assert_eq!(
                (got.chat.clone(), got.sender, got.state),
                (peer.clone(), peer.clone(), state)
            );
        }
        let group = Node::new("chatstate")
            .attr("from", jid("120363000000000001@g.us"))
            .attr("participant", peer.clone())
            .children(vec![Node::new("paused")]);
        let got = IncomingChatState::parse(&group).expect("group chat state");
        assert!(got.chat.is_group());
        assert_eq!(got.sender, peer);
    }

    #[test]
    fn bad_chat_states_and_presences_are_refused() {
        let peer = jid("15550002222@s.whatsapp.net");
        let bare = Node::new("chatstate").attr("from", peer.clone());
        assert!(IncomingChatState::parse(&bare).is_err());
        let odd = bare.clone().children(vec![Node::new("dancing")]);
        assert!(matches!(
            IncomingChatState::parse(&odd),
            Err(PresenceError::UnknownState(_))
        ));
        let group = Node::new("chatstate")
            .attr("from", jid("120363000000000001@g.us"))
            .children(vec![Node::new("paused")]);
        assert!(IncomingChatState::parse(&group).is_err());
        assert!(IncomingPresence::parse(&Node::new("presence")).is_err());
        let odd = Node::new("presence")
            .attr("from", peer)
            .attr("type", "subscribe");
        assert!(IncomingPresence::parse(&odd).is_err());
    }

    #[test]
    fn presences_read_state_and_last_seen() {
        let from = jid("15550002222:1@s.whatsapp.net");
        let online = Node::new("presence").attr("from", from.clone());
        let got = IncomingPresence::parse(&online).expect("parses");
        assert!(got.available);
        assert_eq!(got.from, jid("15550002222@s.whatsapp.net"));
        let gone = Node::new("presence")
            .attr("from", from.clone())
            .attr("type", "unavailable")
            .attr("last", "1700000000");
        let got = IncomingPresence::parse(&wire(&gone)).expect("parses");
        assert_eq!(
            (got.available, got.last_seen_s),
            (false, Some(1_700_000_000))
        );
        let hidden = gone.clone().attr("last", "deny");
        assert_eq!(
            IncomingPresence::parse(&hidden)
                .expect("parses")
                .last_seen_s,
            None
        );
        let built = presence(true, Some("Ann"));
        assert_eq!(built.attr_str("name"), Some("Ann"));
        assert!(presence(false, Some("")).attr_str("name").is_none());
        assert_eq!(subscribe(&from).attr_str("type"), Some("subscribe"));
    }

    proptest::proptest! {
        #[test]
        fn readers_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            if let Ok(node) = binary::decode(&bytes) {
                let _ = IncomingChatState::parse(&node);
                let _ = IncomingPresence::parse(&node);
                let _ = read_receipts_disabled(&node);
            }
        }
    }
}
