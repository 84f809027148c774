//! Groups, client side: the `w:g2` queries and the group metadata they
//! answer with, the stanza of a message to a group, and the `w:gp2`
//! notifications of membership changes. Builders and parsers only.

use crate::wa::binary::Node;
use crate::wa::jid::Jid;
use crate::wa::signal::CiphertextMessage;

use super::message::{identity_for, participants_node, resend_children};

/// Why a group answer or notification could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum GroupError {
    #[error("group answer has no {0}")]
    Missing(&'static str),
    #[error("{0} is not a group JID")]
    NotAGroup(String),
    /// The server answered with `<error code text>`.
    #[error("the server refused: {code} {text}")]
    Refused { code: u16, text: String },
}

/// An `<iq type="error">` answer as a [`GroupError::Refused`]; `Ok` for
/// a result.
pub fn check_answer(answer: &Node) -> Result<(), GroupError> {
    if answer.attr_str("type") != Some("error") {
        return Ok(());
    }
    let error = answer.child("error");
    Err(GroupError::Refused {
        code: error
            .and_then(|e| e.attr_u64("code"))
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(0),
        text: error
            .and_then(|e| e.attr_string("text"))
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect(),
    })
}

/// What can be done to members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParticipantAction {
    Add,
    Remove,
    Promote,
    Demote,
}

impl ParticipantAction {
    fn tag(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Promote => "promote",
            Self::Demote => "demote",
        }
    }
}

/// One member's outcome of a [`participants_query`]: 0 for done, else
/// WhatsApp's code (403 not allowed, 404 not on WhatsApp or not a
/// member, 409 already a member, …).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantResult {
    pub jid: Jid,
    pub code: u16,
}

fn w_g2(kind: &'static str, to: Jid, child: Node) -> Node {
    Node::new("iq")
        .attr("xmlns", "w:g2")
        .attr("type", kind)
        .attr("to", to)
        .children(vec![child])
}

/// `@g.us` itself, where queries about no particular group go.
fn group_server() -> Jid {
    Jid::new("", "g.us")
}

fn participant_nodes(members: &[Jid]) -> Vec<Node> {
    members
        .iter()
        .map(|m| Node::new("participant").attr("jid", m.to_non_ad()))
        .collect()
}

/// The groups this account is in.
pub fn participating_query() -> Node {
    w_g2(
        "get",
        group_server(),
        Node::new("participating")
            .children(vec![Node::new("participants"), Node::new("description")]),
    )
}

/// Reads the answer to [`participating_query`].
pub fn parse_participating(answer: &Node) -> Result<Vec<GroupInfo>, GroupError> {
    check_answer(answer)?;
    let groups = answer
        .child("groups")
        .ok_or(GroupError::Missing("groups"))?;
    groups
        .children_by_tag("group")
        .map(GroupInfo::parse)
        .collect()
}

/// Creates a group; `key` makes a repeated request create it once.
pub fn create_query(subject: &str, members: &[Jid], key: &str) -> Node {
    w_g2(
        "set",
        group_server(),
        Node::new("create")
            .attr("subject", subject.to_owned())
            .attr("key", key.to_owned())
            .children(participant_nodes(members)),
    )
}

/// Reads the answer to [`create_query`] (the new group).
pub fn parse_created(answer: &Node) -> Result<GroupInfo, GroupError> {
    check_answer(answer)?;
    parse_info(answer)
}

/// Adds, removes, promotes or demotes members.
pub fn participants_query(group: &Jid, action: ParticipantAction, members: &[Jid]) -> Node {
    w_g2(
        "set",
        group.to_non_ad(),
        Node::new(action.tag()).children(participant_nodes(members)),
    )
}

/// Reads the answer to [`participants_query`]: each member's outcome.
pub fn parse_participants(
    answer: &Node,
    action: ParticipantAction,
) -> Result<Vec<ParticipantResult>, GroupError> {
    check_answer(answer)?;
    let list = answer
        .child(action.tag())
        .ok_or(GroupError::Missing("participant results"))?;
    Ok(list
        .children_by_tag("participant")
        .filter_map(|p| {
            Some(ParticipantResult {
                jid: p.attr_jid("jid")?.to_non_ad(),
                code: p
                    .attr_u64("error")
                    .and_then(|c| u16::try_from(c).ok())
                    .unwrap_or(0),
            })
        })
        .collect())
}

/// Leaves a group.
pub fn leave_query(group: &Jid) -> Node {
    w_g2(
        "set",
        group_server(),
        Node::new("leave").children(vec![Node::new("group").attr("id", group.to_non_ad())]),
    )
}

/// Sets a group's subject.
pub fn subject_query(group: &Jid, subject: &str) -> Node {
    w_g2(
        "set",
        group.to_non_ad(),
        Node::new("subject").text(subject.to_owned()),
    )
}

/// The group's invite code; with `revoke`, a new one replaces it.
pub fn invite_query(group: &Jid, revoke: bool) -> Node {
    w_g2(
        if revoke { "set" } else { "get" },
        group.to_non_ad(),
        Node::new("invite"),
    )
}

/// Reads the answer to [`invite_query`].
pub fn parse_invite(answer: &Node) -> Result<String, GroupError> {
    check_answer(answer)?;
    answer
        .child("invite")
        .and_then(|i| i.attr_string("code"))
        .ok_or(GroupError::Missing("invite code"))
}

/// Joins the group of an invite code.
pub fn join_query(code: &str) -> Node {
    w_g2(
        "set",
        group_server(),
        Node::new("invite").attr("code", code.to_owned()),
    )
}

/// Reads the answer to [`join_query`]: the group joined.
pub fn parse_joined(answer: &Node) -> Result<Jid, GroupError> {
    check_answer(answer)?;
    answer
        .child("group")
        .and_then(|g| g.attr_jid("jid"))
        .filter(Jid::is_group)
        .ok_or(GroupError::Missing("group jid"))
}

/// The invite code in a `https://chat.whatsapp.com/<code>` link, or the
/// code itself.
pub fn invite_code(link_or_code: &str) -> &str {
    let trimmed = link_or_code.trim().trim_end_matches('/');
    trimmed.rsplit('/').next().unwrap_or(trimmed)
}

/// A member and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// The member's user JID (no device).
    pub jid: Jid,
    /// The member's other address, when the server names it: its phone
    /// number JID in a LID-addressed group (`phone_number`), its LID in a
    /// phone-number one (`lid`).
    pub alt: Option<Jid>,
    pub admin: bool,
    pub superadmin: bool,
}

/// A group's metadata, as `<group>` carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: Jid,
    pub subject: String,
    pub subject_owner: Option<Jid>,
    pub subject_time_s: u64,
    pub creator: Option<Jid>,
    pub creation_s: u64,
    pub description: Option<String>,
    pub participants: Vec<Participant>,
}

impl GroupInfo {
    /// Reads `<group id subject s_o s_t creation creator>` with its
    /// `<participant jid [type]>` and optional `<description><body>`.
    pub fn parse(group: &Node) -> Result<Self, GroupError> {
        let id = group
            .attr_string("id")
            .ok_or(GroupError::Missing("group id"))?;
        let id = group_jid(&id)?;
        let participants = group
            .children_by_tag("participant")
            .filter_map(|p| {
                let jid = p.attr_jid("jid")?.to_non_ad();
                let role = p.attr_str("type").unwrap_or_default();
                let alt = p
                    .attr_jid("phone_number")
                    .or_else(|| p.attr_jid("lid"))
                    .map(|j| j.to_non_ad());
                Some(Participant {
                    jid,
                    alt,
                    admin: role == "admin" || role == "superadmin",
                    superadmin: role == "superadmin",
                })
            })
            .collect();
        let description = group
            .child("description")
            .and_then(|d| d.child("body"))
            .and_then(Node::content_bytes)
            .map(|b| String::from_utf8_lossy(b).into_owned());
        Ok(Self {
            id,
            subject: group.attr_string("subject").unwrap_or_default(),
            subject_owner: group.attr_jid("s_o"),
            subject_time_s: group.attr_u64("s_t").unwrap_or(0),
            creator: group.attr_jid("creator"),
            creation_s: group.attr_u64("creation").unwrap_or(0),
            description,
            participants,
        })
    }

    /// The members' user JIDs.
    pub fn member_jids(&self) -> Vec<Jid> {
        self.participants.iter().map(|p| p.jid.clone()).collect()
    }
}

/// `id` as a group JID: `123-456@g.us` or a bare `123…` id.
pub fn group_jid(id: &str) -> Result<Jid, GroupError> {
    let full = if id.contains('@') {
        id.to_owned()
    } else {
        format!("{id}@g.us")
    };
    match full.parse::<Jid>() {
        Ok(jid) if jid.is_group() => Ok(jid),
        _ => Err(GroupError::NotAGroup(id.chars().take(64).collect())),
    }
}

/// `<iq xmlns="w:g2" type="get" to=G><query request="interactive"/></iq>`.
pub fn info_query(group: &Jid) -> Node {
    Node::new("iq")
        .attr("xmlns", "w:g2")
        .attr("type", "get")
        .attr("to", group.to_non_ad())
        .children(vec![Node::new("query").attr("request", "interactive")])
}

/// Reads the answer to [`info_query`].
pub fn parse_info(answer: &Node) -> Result<GroupInfo, GroupError> {
    check_answer(answer)?;
    let group = answer.child("group").ok_or(GroupError::Missing("group"))?;
    GroupInfo::parse(group)
}

/// `<message to=G id type="text"><participants>…</participants>
/// <enc type="skmsg"/>[<device-identity/>]</message>`: the sender-key
/// message for everyone, and pairwise payloads (the sender key
/// distribution) for the devices that lack our key. The device identity
/// goes along whenever any pairwise payload is a `pkmsg`.
pub fn group_stanza(
    id: &str,
    group: &Jid,
    pairwise: &[(Jid, CiphertextMessage)],
    skmsg: Vec<u8>,
    device_identity: &[u8],
) -> Node {
    let mut children = Vec::with_capacity(3);
    if !pairwise.is_empty() {
        children.push(participants_node(pairwise));
    }
    children.push(
        Node::new("enc")
            .attr("v", "2")
            .attr("type", "skmsg")
            .bytes(skmsg),
    );
    children.extend(identity_for(pairwise, device_identity));
    Node::new("message")
        .attr("id", id.to_owned())
        .attr("to", group.to_non_ad())
        .attr("type", "text")
        .children(children)
}

/// A resend of a group message to one device after its retry receipt:
/// `<message to=G participant=DEVICE id type><enc count/>…</message>`; the
/// pairwise payload carries the message and our sender key together.
pub fn group_resend_stanza(
    id: &str,
    group: &Jid,
    device: &Jid,
    ciphertext: &CiphertextMessage,
    retry_count: u32,
    device_identity: &[u8],
) -> Node {
    Node::new("message")
        .attr("id", id.to_owned())
        .attr("to", group.to_non_ad())
        .attr("participant", device.clone())
        .attr("type", "text")
        .children(resend_children(ciphertext, retry_count, device_identity))
}

/// A membership change announced by `<notification type="w:gp2">`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupChange {
    pub group: Jid,
    /// Who made the change.
    pub actor: Option<Jid>,
    /// The actor's phone number and LID, each when known: from the
    /// notification (`participant_pn` / `participant_lid`) and, in the
    /// message engine, the mappings it learned.
    pub actor_phone: Option<String>,
    pub actor_lid: Option<Jid>,
    pub timestamp_s: u64,
    pub kind: GroupChangeKind,
    /// The members it concerns (added, removed, promoted, …).
    pub participants: Vec<Jid>,
    /// The new subject or description, for those changes.
    pub text: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupChangeKind {
    Created,
    Added,
    Removed,
    Left,
    Promoted,
    Demoted,
    Subject,
    Description,
    /// Something this client does not model (settings, invite changes…).
    Other,
}

impl GroupChangeKind {
    /// Whether members may have left: our sender key must change so they
    /// cannot read what follows.
    pub fn removes_members(self) -> bool {
        matches!(self, Self::Removed | Self::Left)
    }

    /// Whether members may have joined.
    pub fn adds_members(self) -> bool {
        matches!(self, Self::Added | Self::Created)
    }
}

/// Reads a `w:gp2` notification; `None` for other notifications. One
/// notification may carry several changes.
pub fn parse_notification(node: &Node) -> Option<Vec<GroupChange>> {
    if node.tag() != "notification" || node.attr_str("type") != Some("w:gp2") {
        return None;
    }
    let group = node.attr_jid("from").filter(Jid::is_group)?;
    let actor = node.attr_jid("participant").map(|j| j.to_non_ad());
    let actor_alt = node
        .attr_jid("participant_pn")
        .or_else(|| node.attr_jid("participant_lid"))
        .map(|j| j.to_non_ad());
    let identities = [actor.as_ref(), actor_alt.as_ref()];
    let actor_phone = identities
        .iter()
        .flatten()
        .find_map(|j| super::message::phone_of(j));
    let actor_lid = identities
        .iter()
        .flatten()
        .find(|j| j.is_lid())
        .map(|j| (*j).clone());
    let timestamp_s = node.attr_u64("t").unwrap_or(0);
    let changes = node
        .child_nodes()
        .iter()
        .map(|child| {
            let kind = match child.tag() {
                "create" => GroupChangeKind::Created,
                "add" => GroupChangeKind::Added,
                "remove" => GroupChangeKind::Removed,
                "leave" => GroupChangeKind::Left,
                "promote" => GroupChangeKind::Promoted,
                "demote" => GroupChangeKind::Demoted,
                "subject" => GroupChangeKind::Subject,
                "description" => GroupChangeKind::Description,
                _ => GroupChangeKind::Other,
            };
            let mut participants: Vec<Jid> = child
                .children_by_tag("participant")
                .filter_map(|p| p.attr_jid("jid"))
                .map(|j| j.to_non_ad())
                .collect();
            if let Some(group) = child.child("group") {
                participants.extend(
                    group
                        .children_by_tag("participant")
                        .filter_map(|p| p.attr_jid("jid"))
                        .map(|j| j.to_non_ad()),
                );
            }
            let text = match kind {
                GroupChangeKind::Subject => child.attr_string("subject"),
                GroupChangeKind::Description => child
                    .child("body")
                    .and_then(Node::content_bytes)
                    .map(|b| String::from_utf8_lossy(b).into_owned()),
                GroupChangeKind::Created => {
                    child.child("group").and_then(|g| g.attr_string("subject"))
                }
                _ => None,
            };
            GroupChange {
                group: group.to_non_ad(),
                actor: actor.clone(),
                actor_phone: actor_phone.clone(),
                actor_lid: actor_lid.clone(),
                timestamp_s,
                kind,
                participants,
                text,
            }
        })
        .collect();
    Some(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wa::binary;

    fn jid(s: &str) -> Jid {
        s.parse().expect("jid")
    }

    #[test]
    fn group_info_is_read() {
        let answer = Node::new("iq")
            .attr("type", "result")
            .children(vec![Node::new("group")
                .attr("id", "120363000000000001")
                .attr("subject", "Team")
                .attr("s_t", "1700000000")
                .attr("s_o", jid("15550000001@s.whatsapp.net"))
                .attr("creation", "1690000000")
                .attr("creator", jid("15550000001@s.whatsapp.net"))
                .children(vec![
                    Node::new("description").children(vec![Node::new("body").text("about")]),
                    Node::new("participant")
                        .attr("jid", jid("15550000001@s.whatsapp.net"))
                        .attr("type", "superadmin"),
                    Node::new("participant").attr("jid", jid("15550000002@s.whatsapp.net")),
                ])]);
        let decoded = binary::decode(&binary::encode(&answer)).expect("codec");
        let info = parse_info(&decoded).expect("info");
        assert_eq!(info.id, jid("120363000000000001@g.us"));
        assert_eq!(info.subject, "Team");
        assert_eq!(info.description.as_deref(), Some("about"));
        assert_eq!(info.creation_s, 1_690_000_000);
        assert_eq!(info.participants.len(), 2);
        assert!(info.participants[0].admin && info.participants[0].superadmin);
        assert!(!info.participants[1].admin);
        assert!(parse_info(&Node::new("iq")).is_err());
    }

    #[test]
    fn management_queries_and_answers() {
        let group = jid("120363000000000001@g.us");
        let member = jid("15550000002@s.whatsapp.net");
        let iq = participants_query(
            &group,
            ParticipantAction::Add,
            std::slice::from_ref(&member),
        );
        assert_eq!(iq.attr_str("xmlns"), Some("w:g2"));
        assert_eq!(iq.child_nodes()[0].tag(), "add");
        let answer = Node::new("iq")
            .attr("type", "result")
            .children(vec![Node::new("add").children(vec![
                Node::new("participant").attr("jid", member.clone()),
                Node::new("participant")
                    .attr("jid", jid("15550000003@s.whatsapp.net"))
                    .attr("error", "409"),
            ])]);
        let results = parse_participants(&answer, ParticipantAction::Add).expect("results");
        assert_eq!(results[0].code, 0);
        assert_eq!(results[1].code, 409);
        let refused = Node::new("iq")
            .attr("type", "error")
            .children(vec![Node::new("error")
                .attr("code", "403")
                .attr("text", "forbidden")]);
        assert_eq!(
            parse_participants(&refused, ParticipantAction::Add),
            Err(GroupError::Refused {
                code: 403,
                text: "forbidden".into()
            })
        );
        let invite = Node::new("iq")
            .attr("type", "result")
            .children(vec![Node::new("invite").attr("code", "AbC123")]);
        assert_eq!(parse_invite(&invite).expect("code"), "AbC123");
        assert_eq!(invite_code("https://chat.whatsapp.com/AbC123"), "AbC123");
        assert_eq!(invite_code("AbC123"), "AbC123");
        let joined = Node::new("iq")
            .attr("type", "result")
            .children(vec![Node::new("group").attr("jid", group.clone())]);
        assert_eq!(parse_joined(&joined).expect("group"), group);
        assert_eq!(
            leave_query(&group).attr_string("to").as_deref(),
            Some("g.us")
        );
    }

    #[test]
    fn group_jids_are_checked() {
        assert!(group_jid("120363000000000001").is_ok());
        assert!(group_jid("120363000000000001@g.us").is_ok());
        assert!(group_jid("15550000001@s.whatsapp.net").is_err());
    }

    #[test]
    fn notifications_are_read() {
        let node = Node::new("notification")
            .attr("type", "w:gp2")
            .attr("from", jid("120363000000000001@g.us"))
            .attr("participant", jid("15550000001@s.whatsapp.net"))
            .attr("t", "1700000001")
            .children(vec![
                Node::new("remove").children(vec![
                    Node::new("participant").attr("jid", jid("15550000003@s.whatsapp.net"))
                ]),
                Node::new("subject").attr("subject", "New name"),
            ]);
        let changes = parse_notification(&node).expect("w:gp2");
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].kind, GroupChangeKind::Removed);
        assert!(changes[0].kind.removes_members());
        assert_eq!(
            changes[0].participants,
            vec![jid("15550000003@s.whatsapp.net")]
        );
        assert_eq!(changes[1].text.as_deref(), Some("New name"));
        assert!(parse_notification(&Node::new("notification").attr("type", "devices")).is_none());
    }
}
