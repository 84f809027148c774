//! Presence, chat states and the read-receipt privacy setting of the
//! simulated server: `<chatstate>` relayed to the chat's online devices
//! (never queued, as WhatsApp's server does), `<presence>` kept per account
//! and told to the connections that subscribed to it, and each account's
//! `readreceipts` privacy category. State is indexed by account and by
//! subscribing connection: no stanza scans every account. No I/O; imports
//! `wa` only.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use super::registry::ConnId;
use super::routing::RoutingError;
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER};

/// Most accounts one connection may follow; WhatsApp clients subscribe to
/// the chats on screen, a handful at a time.
const MAX_SUBSCRIPTIONS_PER_CONN: usize = 0x400;

/// A `<chatstate to>` a client sent.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClientChatState {
    /// The chat: an account, or a group.
    pub(crate) to: Jid,
    /// `<composing/>`, `<composing media="audio"/>` or `<paused/>`, rebuilt
    /// so that nothing else the client put there is relayed.
    pub(crate) state: Node,
}

/// Parses `<chatstate to><composing [media="audio"]/>|<paused/></chatstate>`.
pub(crate) fn parse_chat_state(node: &Node) -> Result<ClientChatState, RoutingError> {
    let to = node
        .attr_jid("to")
        .ok_or(RoutingError::Malformed("chatstate to"))?;
    let routable = !to.user.is_empty() && (to.is_group() || to.server == DEFAULT_USER_SERVER);
    if !routable {
        return Err(RoutingError::Unroutable(to.to_string()));
    }
    let child = node
        .child_nodes()
        .first()
        .ok_or(RoutingError::Malformed("chatstate state"))?;
    let state = match child.tag() {
        "composing" if child.attr_str("media") == Some("audio") => {
            Node::new("composing").attr("media", "audio")
        }
        "composing" => Node::new("composing"),
        "paused" => Node::new("paused"),
        _ => return Err(RoutingError::Malformed("chatstate state")),
    };
    Ok(ClientChatState {
        to: to.to_non_ad(),
        state,
    })
}

/// The chat state as the chat's other side gets it: `<chatstate from=SENDER>`
/// in a one-to-one chat, `<chatstate from=GROUP participant=SENDER>` in a
/// group.
pub(crate) fn delivered_chat_state(state: &ClientChatState, sender: &Jid) -> Node {
    let sender = sender.to_non_ad();
    let node = if state.to.is_group() {
        Node::new("chatstate")
            .attr("from", state.to.clone())
            .attr("participant", sender)
    } else {
        Node::new("chatstate").attr("from", sender)
    };
    node.children(vec![state.state.clone()])
}

/// A `<presence>` a client sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ClientPresence {
    /// `type="available"` (or no type): the account is online.
    Available,
    /// `type="unavailable"`: the account went offline.
    Unavailable,
    /// `type="subscribe" to`: the connection follows `to`'s presence.
    Subscribe(Jid),
}

/// Parses `<presence type="available|unavailable|subscribe" [to]>`.
pub(crate) fn parse_presence(node: &Node) -> Result<ClientPresence, RoutingError> {
    match node.attr_str("type") {
        None | Some("available") => Ok(ClientPresence::Available),
        Some("unavailable") => Ok(ClientPresence::Unavailable),
        Some("subscribe") => {
            let to = node
                .attr_jid("to")
                .ok_or(RoutingError::Malformed("presence to"))?;
            if to.server != DEFAULT_USER_SERVER || to.user.is_empty() {
                return Err(RoutingError::Unroutable(to.to_string()));
            }
            Ok(ClientPresence::Subscribe(to.to_non_ad()))
        }
        Some(_) => Err(RoutingError::Malformed("presence type")),
    }
}

/// Whether an account is online, as its subscribers are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Availability {
    Available,
    /// Offline; `last_seen` (unix seconds) once it has been online.
    Unavailable {
        last_seen: Option<u64>,
    },
}

/// `<presence from [type="unavailable" [last]]/>` for `user`.
pub(crate) fn presence_node(user: &str, availability: Availability) -> Node {
    let node = Node::new("presence").attr("from", Jid::new(user, DEFAULT_USER_SERVER));
    match availability {
        Availability::Available => node,
        Availability::Unavailable { last_seen } => {
            let node = node.attr("type", "unavailable");
            match last_seen {
                Some(t) => node.attr("last", t.to_string()),
                None => node,
            }
        }
    }
}

/// What one account shows others.
struct AccountState {
    availability: Availability,
    /// The `readreceipts` privacy category is `none`: senders are not told.
    receipts_hidden: bool,
    /// The connections following this account's presence, with the device
    /// each belongs to.
    subscribers: HashMap<ConnId, Jid>,
}

impl Default for AccountState {
    fn default() -> Self {
        Self {
            availability: Availability::Unavailable { last_seen: None },
            receipts_hidden: false,
            subscribers: HashMap::new(),
        }
    }
}

#[derive(Default)]
struct State {
    accounts: HashMap<String, AccountState>,
    /// The accounts each connection follows, so its subscriptions end with it.
    by_conn: HashMap<ConnId, HashSet<String>>,
}

/// A presence change to tell: the stanza and the devices that follow it.
pub(crate) struct PresenceNotice {
    pub(crate) node: Node,
    pub(crate) devices: Vec<Jid>,
}

/// Presence and privacy of every account that has any.
#[derive(Default)]
pub(crate) struct Presences {
    state: Mutex<State>,
}

impl Presences {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain maps stay consistent enough to serve after a panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `user` went online or offline at `now` and returns what
    /// its subscribers are told (nothing when nothing changed).
    pub(crate) fn set_available(
        &self,
        user: &str,
        available: bool,
        now: u64,
    ) -> Option<PresenceNotice> {
        let mut state = self.state();
        let account = state.accounts.entry(user.to_owned()).or_default();
        let next = if available {
            Availability::Available
        } else {
            match account.availability {
                Availability::Available => Availability::Unavailable {
                    last_seen: Some(now),
                },
                unchanged @ Availability::Unavailable { .. } => unchanged,
            }
        };
        if next == account.availability {
            return None;
        }
        account.availability = next;
        let mut devices: Vec<Jid> = account.subscribers.values().cloned().collect();
        devices.sort_by(|a, b| (&a.user, a.device).cmp(&(&b.user, b.device)));
        devices.dedup();
        Some(PresenceNotice {
            node: presence_node(user, next),
            devices,
        })
    }

    /// The connection `conn` of `device` follows `user` from now on, until
    /// it ends; returns `user`'s presence now, or `None` when the
    /// connection already follows too many accounts.
    pub(crate) fn subscribe(&self, conn: ConnId, device: &Jid, user: &str) -> Option<Node> {
        let mut state = self.state();
        let follows = state.by_conn.entry(conn).or_default();
        if !follows.contains(user) && follows.len() >= MAX_SUBSCRIPTIONS_PER_CONN {
            return None;
        }
        follows.insert(user.to_owned());
        let account = state.accounts.entry(user.to_owned()).or_default();
        account.subscribers.insert(conn, device.clone());
        Some(presence_node(user, account.availability))
    }

    /// A connection ended: its subscriptions end with it.
    pub(crate) fn forget_connection(&self, conn: ConnId) {
        let mut state = self.state();
        let Some(follows) = state.by_conn.remove(&conn) else {
            return;
        };
        for user in follows {
            if let Some(account) = state.accounts.get_mut(&user) {
                account.subscribers.remove(&conn);
            }
        }
    }

    /// Whether `user` keeps its read receipts to itself.
    pub(crate) fn receipts_hidden(&self, user: &str) -> bool {
        self.state()
            .accounts
            .get(user)
            .is_some_and(|a| a.receipts_hidden)
    }

    /// Sets `user`'s `readreceipts` privacy category.
    pub(crate) fn set_receipts_hidden(&self, user: &str, hidden: bool) {
        self.state()
            .accounts
            .entry(user.to_owned())
            .or_default()
            .receipts_hidden = hidden;
    }
}

/// The `readreceipts` value of a client's
/// `<iq xmlns="privacy" type="set"><privacy><category name value/>`: `Some`
/// (hidden or not) when the iq sets it to `none` or `all`.
pub(crate) fn receipts_hidden_setting(iq: &Node) -> Option<bool> {
    iq.child("privacy")?
        .children_by_tag("category")
        .filter(|c| c.attr_str("name") == Some("readreceipts"))
        .find_map(|c| match c.attr_str("value") {
            Some("none") => Some(true),
            Some("all") => Some(false),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::presence::{ChatState, IncomingChatState, IncomingPresence};

    fn jid(text: &str) -> Jid {
        text.parse().expect("valid jid")
    }

    #[test]
    fn chat_states_reach_the_peer_from_the_sender() {
        let sender = jid("111:3@s.whatsapp.net");
        for (state, want) in [
            (ChatState::Composing, ChatState::Composing),
            (ChatState::Recording, ChatState::Recording),
            (ChatState::Paused, ChatState::Paused),
        ] {
            let sent = crate::wa::presence::chat_state(&jid("222:1@s.whatsapp.net"), state);
            let parsed = parse_chat_state(&sent).expect("valid chat state");
            assert_eq!(parsed.to, jid("222@s.whatsapp.net"));
            let delivered = delivered_chat_state(&parsed, &sender);
            assert_eq!(delivered.attr_jid("from"), Some(jid("111@s.whatsapp.net")));
            let read = IncomingChatState::parse(&delivered).expect("the peer reads it");
            assert_eq!(read.state, want);
            assert_eq!(read.sender, jid("111@s.whatsapp.net"));
        }
    }

    #[test]
    fn group_chat_states_name_the_group_and_the_sender() {
        let group = jid("120363000000000001@g.us");
        let sent = crate::wa::presence::chat_state(&group, ChatState::Composing);
        let parsed = parse_chat_state(&sent).expect("valid chat state");
        let delivered = delivered_chat_state(&parsed, &jid("111:3@s.whatsapp.net"));
        assert_eq!(delivered.attr_jid("from"), Some(group.clone()));
        assert_eq!(
            delivered.attr_jid("participant"),
            Some(jid("111@s.whatsapp.net"))
        );
        let read = IncomingChatState::parse(&delivered).expect("members read it");
        assert_eq!((read.chat, read.state), (group, ChatState::Composing));
    }

    #[test]
    fn bad_chat_states_are_refused() {
        let to = jid("222@s.whatsapp.net");
        let bare = Node::new("chatstate").attr("to", to.clone());
        assert_eq!(
            parse_chat_state(&bare),
            Err(RoutingError::Malformed("chatstate state"))
        );
        let odd = bare.clone().children(vec![Node::new("dancing")]);
        assert!(parse_chat_state(&odd).is_err());
        let nowhere = Node::new("chatstate").children(vec![Node::new("paused")]);
        assert_eq!(
            parse_chat_state(&nowhere),
            Err(RoutingError::Malformed("chatstate to"))
        );
        let server = Node::new("chatstate")
            .attr("to", Jid::server_jid())
            .children(vec![Node::new("paused")]);
        assert!(matches!(
            parse_chat_state(&server),
            Err(RoutingError::Unroutable(_))
        ));
        // Anything else the client adds is not relayed.
        let extra = bare.children(vec![Node::new("paused")
            .attr("secret", "x")
            .children(vec![Node::new("junk")])]);
        let parsed = parse_chat_state(&extra).expect("valid chat state");
        assert_eq!(parsed.state, Node::new("paused"));
    }

    #[test]
    fn presences_parse() {
        let online = crate::wa::presence::presence(true, Some("Ann"));
        assert_eq!(parse_presence(&online), Ok(ClientPresence::Available));
        let offline = crate::wa::presence::presence(false, None);
        assert_eq!(parse_presence(&offline), Ok(ClientPresence::Unavailable));
        let follow = crate::wa::presence::subscribe(&jid("222:4@s.whatsapp.net"));
        assert_eq!(
            parse_presence(&follow),
            Ok(ClientPresence::Subscribe(jid("222@s.whatsapp.net")))
        );
        let group = crate::wa::presence::subscribe(&jid("120363000000000001@g.us"));
        assert!(matches!(
            parse_presence(&group),
            Err(RoutingError::Unroutable(_))
        ));
        let nobody = Node::new("presence").attr("type", "subscribe");
        assert_eq!(
            parse_presence(&nobody),
            Err(RoutingError::Malformed("presence to"))
        );
        let odd = Node::new("presence").attr("type", "probe");
        assert_eq!(
            parse_presence(&odd),
            Err(RoutingError::Malformed("presence type"))
        );
    }

    #[test]
    fn subscribers_hear_of_changes_with_last_seen() {
        let presences = Presences::default();
        let bob = jid("222:1@s.whatsapp.net");
        let now = presences
            .subscribe(ConnId(7), &bob, "111")
            .expect("subscribed");
        let read = IncomingPresence::parse(&now).expect("reads");
        assert_eq!((read.available, read.last_seen_s), (false, None));

        let notice = presences.set_available("111", true, 100).expect("a change");
        assert_eq!(notice.devices, vec![bob.clone()]);
        let read = IncomingPresence::parse(&notice.node).expect("reads");
        assert_eq!(read.from, jid("111@s.whatsapp.net"));
        assert!(read.available);
        assert!(
            presences.set_available("111", true, 101).is_none(),
            "no change, nothing told"
        );

        let notice = presences
            .set_available("111", false, 150)
            .expect("a change");
        let read = IncomingPresence::parse(&notice.node).expect("reads");
        assert_eq!((read.available, read.last_seen_s), (false, Some(150)));
        let again = presences.subscribe(ConnId(8), &bob, "111").expect("again");
        assert_eq!(again, notice.node, "a new subscriber hears the last seen");

        presences.forget_connection(ConnId(7));
        presences.forget_connection(ConnId(8));
        let notice = presences.set_available("111", true, 200).expect("a change");
        assert!(
            notice.devices.is_empty(),
            "subscriptions end with the connection"
        );
    }

    #[test]
    fn subscriptions_per_connection_are_bounded() {
        let presences = Presences::default();
        let bob = jid("222:1@s.whatsapp.net");
        for n in 0..MAX_SUBSCRIPTIONS_PER_CONN {
            assert!(presences
                .subscribe(ConnId(1), &bob, &n.to_string())
                .is_some());
        }
        assert!(presences.subscribe(ConnId(1), &bob, "extra").is_none());
        assert!(
            presences.subscribe(ConnId(1), &bob, "0").is_some(),
            "following again is no new subscription"
        );
        assert!(presences.subscribe(ConnId(2), &bob, "extra").is_some());
    }

    #[test]
    fn read_receipt_privacy_is_per_account() {
        let presences = Presences::default();
        assert!(!presences.receipts_hidden("111"));
        presences.set_receipts_hidden("111", true);
        assert!(presences.receipts_hidden("111"));
        assert!(!presences.receipts_hidden("222"));
        let set = |value: &str| {
            Node::new("iq")
                .attr("xmlns", "privacy")
                .attr("type", "set")
                .children(vec![Node::new("privacy").children(vec![
                    Node::new("category")
                        .attr("name", "last")
                        .attr("value", "none"),
                    Node::new("category")
                        .attr("name", "readreceipts")
                        .attr("value", value.to_owned()),
                ])])
        };
        assert_eq!(receipts_hidden_setting(&set("none")), Some(true));
        assert_eq!(receipts_hidden_setting(&set("all")), Some(false));
        assert_eq!(receipts_hidden_setting(&set("contacts")), None);
        assert_eq!(receipts_hidden_setting(&Node::new("iq")), None);
    }
}
