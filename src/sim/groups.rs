//! Groups on the simulated server: `<id>@g.us` chats with a subject, a
//! description, a creator and participants with admin roles, the `w:g2`
//! queries that read and change them (shapes as WhatsApp's server answers
//! them) and the `w:gp2` notifications a change sends to every member.
//! Groups are indexed by id,
//! members' groups by member and invite codes by code, so nothing scans all
//! groups. Pure state behind one short-held lock: no I/O, no `.await`, no
//! other lock taken while it is held; imports `wa` only.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use rand::RngCore;

use super::snapshot::{InvalidState, SavedDescription, SavedGroup, SavedParticipant};
use crate::wa::binary::Node;
use crate::wa::jid::{Jid, DEFAULT_USER_SERVER, GROUP_SERVER};

/// Group ids as WhatsApp makes them today: this prefix and 12 digits.
const GROUP_ID_PREFIX: &str = "120363";
/// Most members of one group (WhatsApp's limit).
pub(crate) const MAX_GROUP_SIZE: usize = 0x400;
/// Longest subject accepted, in characters (406 beyond).
const MAX_SUBJECT_CHARS: usize = 100;
/// Longest description accepted, in characters (406 beyond).
const MAX_DESCRIPTION_CHARS: usize = 2048;
/// Most `<participant>`s read from one query.
const MAX_LISTED: usize = MAX_GROUP_SIZE;
/// Length of an invite code (WhatsApp's are 22 base62 characters).
const INVITE_CODE_LEN: usize = 22;
/// Most revoked invite codes remembered (to answer them with 410 rather
/// than 406); the oldest are forgotten first.
const MAX_REVOKED_CODES: usize = 0x1000;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a group query or message is refused; each maps to the iq error
/// code and text WhatsApp answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("malformed group query: {0}")]
    BadRequest(&'static str),
    #[error("no such group")]
    NotFound,
    #[error("not a participant of the group")]
    NotParticipant,
    #[error("only admins may do this")]
    NotAdmin,
    #[error("only admins may see or reset the invite link")]
    NotAuthorized,
    #[error("not acceptable: {0}")]
    NotAcceptable(&'static str),
    #[error("the description changed since it was read")]
    Conflict,
    #[error("the invite link was revoked")]
    Revoked,
}

impl GroupError {
    /// The `<error code text>` of the iq reply.
    pub(crate) fn code(&self) -> (u16, &'static str) {
        match self {
            Self::BadRequest(_) => (400, "bad-request"),
            Self::NotFound => (404, "item-not-found"),
            Self::NotParticipant | Self::NotAdmin => (403, "forbidden"),
            Self::NotAuthorized => (401, "not-authorized"),
            Self::NotAcceptable(_) => (406, "not-acceptable"),
            Self::Conflict => (409, "conflict"),
            Self::Revoked => (410, "gone"),
        }
    }
}

/// A member's standing in a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Member,
    Admin,
    /// The creator: an admin nobody can demote or remove.
    SuperAdmin,
}

impl Role {
    fn is_admin(self) -> bool {
        !matches!(self, Self::Member)
    }

    /// The `type` attribute of a `<participant>`, absent for members.
    pub(crate) fn attr(self) -> Option<&'static str> {
        match self {
            Self::Member => None,
            Self::Admin => Some("admin"),
            Self::SuperAdmin => Some("superadmin"),
        }
    }
}

/// A participant change an admin asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Add,
    Remove,
    Promote,
    Demote,
}

impl Action {
    /// The query's tag: `add`, `remove`, `promote` or `demote`.
    pub fn tag(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Remove => "remove",
            Self::Promote => "promote",
            Self::Demote => "demote",
        }
    }

    /// The action a tag names.
    pub fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "add" => Some(Self::Add),
            "remove" => Some(Self::Remove),
            "promote" => Some(Self::Promote),
            "demote" => Some(Self::Demote),
            _ => None,
        }
    }
}

/// A group's description and who set it when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Description {
    pub(crate) id: String,
    pub(crate) body: String,
    pub(crate) setter: Jid,
    pub(crate) t: u64,
}

/// One group as the server keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Group {
    /// The user part of the group JID (`120363…`).
    pub(crate) id: String,
    pub(crate) subject: String,
    pub(crate) subject_owner: Jid,
    pub(crate) subject_time: u64,
    pub(crate) description: Option<Description>,
    pub(crate) creation: u64,
    pub(crate) creator: Jid,
    /// Members by phone number (the user part of their JID).
    pub(crate) participants: BTreeMap<String, Role>,
    invite: String,
    /// Members are named by LID on the wire (`addressing_mode="lid"`);
    /// see `super::lid`.
    pub(crate) lid_addressed: bool,
}

impl Group {
    pub(crate) fn jid(&self) -> Jid {
        Jid::new(self.id.clone(), GROUP_SERVER)
    }

    fn role(&self, user: &str) -> Option<Role> {
        self.participants.get(user).copied()
    }

    fn require_member(&self, user: &str) -> Result<Role, GroupError> {
        self.role(user).ok_or(GroupError::NotParticipant)
    }

    fn require_admin(&self, user: &str) -> Result<(), GroupError> {
        if self.require_member(user)?.is_admin() {
            Ok(())
        } else {
            Err(GroupError::NotAdmin)
        }
    }

    /// Member JIDs, for notifications' recipients.
    fn members(&self) -> Vec<String> {
        self.participants.keys().cloned().collect()
    }

    /// `<group id subject s_t s_o creation creator addressing_mode>` with
    /// `<participant jid [type]/>`s, the description and the add mode, as
    /// the info query, the participating list and the create answer carry it.
    pub(crate) fn node(&self) -> Node {
        let mut children: Vec<Node> = self
            .participants
            .iter()
            .map(|(user, role)| {
                let node = Node::new("participant").attr("jid", user_jid(user));
                match role.attr() {
                    Some(kind) => node.attr("type", kind),
                    None => node,
                }
            })
            .collect();
        if let Some(description) = &self.description {
            children.push(
                Node::new("description")
                    .attr("id", description.id.clone())
                    .attr("participant", description.setter.clone())
                    .attr("t", description.t.to_string())
                    .children(vec![Node::new("body").bytes(description.body.as_bytes())]),
            );
        }
        children.push(Node::new("member_add_mode").bytes(b"admin_add".to_vec()));
        Node::new("group")
            .attr("id", self.id.clone())
            .attr("subject", self.subject.clone())
            .attr("s_t", self.subject_time.to_string())
            .attr("s_o", self.subject_owner.clone())
            .attr("creation", self.creation.to_string())
            .attr("creator", self.creator.clone())
            .attr(
                "addressing_mode",
                if self.lid_addressed { "lid" } else { "pn" },
            )
            .children(children)
    }
}

/// `phone@s.whatsapp.net`.
fn user_jid(user: &str) -> Jid {
    Jid::new(user, DEFAULT_USER_SERVER)
}

/// A `w:g2` query, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GroupQuery {
    /// `<query request="interactive"/>` to the group.
    Info,
    /// `<participating>` to `@g.us`: every group of the asker.
    Participating,
    /// `<create subject key><participant jid/>…</create>` to `@g.us`.
    Create {
        subject: String,
        key: Option<String>,
        participants: Vec<String>,
    },
    /// `<add|remove|promote|demote><participant jid/>…</…>` to the group.
    Change {
        action: Action,
        participants: Vec<String>,
    },
    /// `<leave><group id/>…</leave>` to `@g.us`.
    Leave { groups: Vec<String> },
    /// `<subject>text</subject>` to the group.
    Subject(String),
    /// `<description id [prev] [delete]><body>text</body></description>`.
    Description {
        id: Option<String>,
        prev: Option<String>,
        body: Option<String>,
    },
    /// `<invite/>` to the group: get (or, with `revoke`, reset) the code.
    Invite { revoke: bool },
    /// `<invite code/>` to `@g.us`: look up (`join` false) or join.
    InviteCode { code: String, join: bool },
}

/// Parses a `w:g2` iq: what it asks and of which group (`None` for
/// queries to `@g.us` itself).
pub(crate) fn parse_query(iq: &Node) -> Result<(Option<String>, GroupQuery), GroupError> {
    let to = iq.attr_jid("to").ok_or(GroupError::BadRequest("iq to"))?;
    if to.server != GROUP_SERVER {
        return Err(GroupError::BadRequest("iq to is not on g.us"));
    }
    let group = (!to.user.is_empty()).then(|| to.user.clone());
    let set = match iq.attr_str("type") {
        Some("set") => true,
        Some("get") => false,
        _ => return Err(GroupError::BadRequest("iq type")),
    };
    let first = iq
        .child_nodes()
        .first()
        .ok_or(GroupError::BadRequest("empty query"))?;
    let needs_group = |query: GroupQuery| match &group {
        Some(_) => Ok(query),
        None => Err(GroupError::BadRequest("query needs a group")),
    };
    let query = match (first.tag(), set) {
        ("query", false) => needs_group(GroupQuery::Info)?,
        ("participating", false) => GroupQuery::Participating,
        ("create", true) => GroupQuery::Create {
            subject: first
                .attr_string("subject")
                .ok_or(GroupError::BadRequest("create subject"))?,
            key: first.attr_string("key"),
            participants: participant_users(first)?,
        },
        (tag, true) if Action::from_tag(tag).is_some() => {
            let action = Action::from_tag(tag).ok_or(GroupError::BadRequest("action"))?;
            needs_group(GroupQuery::Change {
                action,
                participants: participant_users(first)?,
            })?
        }
        ("leave", true) => GroupQuery::Leave {
            groups: first
                .children_by_tag("group")
                .take(MAX_LISTED)
                .map(|g| {
                    g.attr_jid("id")
                        .filter(|jid| jid.server == GROUP_SERVER || jid.server.is_empty())
                        .map(|jid| jid.user)
                        .or_else(|| g.attr_string("id"))
                        .ok_or(GroupError::BadRequest("leave group id"))
                })
                .collect::<Result<_, _>>()?,
        },
        ("subject", true) => needs_group(GroupQuery::Subject(
            first
                .content_str()
                .ok_or(GroupError::BadRequest("subject text"))?
                .to_owned(),
        ))?,
        ("description", true) => {
            let delete = first.attr_str("delete") == Some("true");
            let body = match first.child("body") {
                Some(body) if !delete => Some(
                    body.content_str()
                        .ok_or(GroupError::BadRequest("description body"))?
                        .to_owned(),
                ),
                _ => None,
            };
            needs_group(GroupQuery::Description {
                id: first.attr_string("id"),
                prev: first.attr_string("prev"),
                body,
            })?
        }
        ("invite", _) => match (first.attr_string("code"), &group) {
            (Some(code), None) => GroupQuery::InviteCode { code, join: set },
            (None, Some(_)) => GroupQuery::Invite { revoke: set },
            _ => return Err(GroupError::BadRequest("invite")),
        },
        _ => return Err(GroupError::BadRequest("unknown group query")),
    };
    Ok((group, query))
}

/// The phone numbers of `<participant jid>` children (devices and
/// duplicates folded into accounts; non-phone JIDs refused).
fn participant_users(node: &Node) -> Result<Vec<String>, GroupError> {
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    for participant in node.children_by_tag("participant").take(MAX_LISTED) {
        let jid = participant
            .attr_jid("jid")
            .filter(|jid| jid.server == DEFAULT_USER_SERVER && !jid.user.is_empty())
            .ok_or(GroupError::BadRequest("participant jid"))?;
        if seen.insert(jid.user.clone()) {
            users.push(jid.user);
        }
    }
    Ok(users)
}

/// A `w:gp2` notification to deliver: who gets it (every device of these
/// accounts) and the stanza, to which the sender adds an id.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Notice {
    pub(crate) recipients: Vec<String>,
    pub(crate) node: Node,
}

/// What a query did: the children of the iq result, the notifications to
/// deliver, and the group it created or joined (for the control API).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) reply: Vec<Node>,
    pub(crate) notices: Vec<Notice>,
    pub(crate) group: Option<String>,
    /// Per-participant results of a change: (phone, error code or 0).
    pub(crate) results: Vec<(String, u16)>,
}

/// `<notification from=G type="w:gp2" participant=ACTOR t>child</notification>`.
fn notification(group: &str, actor: &Jid, t: u64, child: Node) -> Node {
    Node::new("notification")
        .attr("from", Jid::new(group, GROUP_SERVER))
        .attr("type", "w:gp2")
        .attr("participant", actor.to_non_ad())
        .attr("t", t.to_string())
        .children(vec![child])
}

fn participants_node(tag: &'static str, users: &[String]) -> Node {
    Node::new(tag).children(
        users
            .iter()
            .map(|user| Node::new("participant").attr("jid", user_jid(user)))
            .collect(),
    )
}

#[derive(Default)]
struct State {
    groups: HashMap<String, Group>,
    /// Each account's groups.
    by_member: HashMap<String, BTreeSet<String>>,
    /// Group ids by their current invite code.
    invites: HashMap<String, String>,
    /// Codes replaced by a revoke, oldest first.
    revoked: VecDeque<String>,
    revoked_set: HashSet<String>,
}

impl State {
    fn join(&mut self, group: &str, user: &str) {
        self.by_member
            .entry(user.to_owned())
            .or_default()
            .insert(group.to_owned());
    }

    fn part(&mut self, group: &str, user: &str) {
        if let Some(groups) = self.by_member.get_mut(user) {
            groups.remove(group);
            if groups.is_empty() {
                self.by_member.remove(user);
            }
        }
    }

    fn group(&self, id: &str) -> Result<&Group, GroupError> {
        self.groups.get(id).ok_or(GroupError::NotFound)
    }

    fn group_mut(&mut self, id: &str) -> Result<&mut Group, GroupError> {
        self.groups.get_mut(id).ok_or(GroupError::NotFound)
    }
}

/// Every group of the simulator.
#[derive(Default)]
pub(crate) struct Groups {
    state: Mutex<State>,
}

impl Groups {
    /// Every group (by id) and the revoked invite codes, as the state file
    /// keeps them.
    pub(crate) fn saved(&self) -> (Vec<SavedGroup>, Vec<String>) {
        let state = self.state();
        let mut groups: Vec<SavedGroup> = state.groups.values().map(saved_group).collect();
        groups.sort_by(|a, b| a.id.cmp(&b.id));
        (groups, state.revoked.iter().cloned().collect())
    }

    /// Groups from the state file; the member and invite indexes are
    /// rebuilt from them.
    pub(crate) fn restore(groups: &[SavedGroup], revoked: &[String]) -> Result<Self, InvalidState> {
        let mut state = State::default();
        for saved in groups {
            let group = restored_group(saved)?;
            for user in group.participants.keys() {
                state.join(&group.id, user);
            }
            state.invites.insert(group.invite.clone(), group.id.clone());
            state.groups.insert(group.id.clone(), group);
        }
        let skip = revoked.len().saturating_sub(MAX_REVOKED_CODES);
        for code in revoked.iter().skip(skip) {
            if state.revoked_set.insert(code.clone()) {
                state.revoked.push_back(code.clone());
            }
        }
        Ok(Self {
            state: Mutex::new(state),
        })
    }
}

fn saved_group(group: &Group) -> SavedGroup {
    SavedGroup {
        id: group.id.clone(),
        subject: group.subject.clone(),
        subject_owner: group.subject_owner.to_string(),
        subject_time: group.subject_time,
        description: group.description.as_ref().map(|d| SavedDescription {
            id: d.id.clone(),
            body: d.body.clone(),
            setter: d.setter.to_string(),
            t: d.t,
        }),
        creation: group.creation,
        creator: group.creator.to_string(),
        participants: group
            .participants
            .iter()
            .map(|(user, role)| SavedParticipant {
                user: user.clone(),
                role: match role {
                    Role::Member => 0,
                    Role::Admin => 1,
                    Role::SuperAdmin => 2,
                },
            })
            .collect(),
        invite: group.invite.clone(),
        lid_addressed: group.lid_addressed,
    }
}

fn restored_group(saved: &SavedGroup) -> Result<Group, InvalidState> {
    let jid = |text: &str| {
        text.parse::<Jid>().map_err(|err| {
            InvalidState::field(format_args!("group {}: JID {text:?}: {err}", saved.id))
        })
    };
    let participants = saved
        .participants
        .iter()
        .map(|p| {
            let role = match p.role {
                0 => Role::Member,
                1 => Role::Admin,
                2 => Role::SuperAdmin,
                other => {
                    return Err(InvalidState::field(format_args!(
                        "group {}: role {other}",
                        saved.id
                    )))
                }
            };
            Ok((p.user.clone(), role))
        })
        .collect::<Result<BTreeMap<String, Role>, InvalidState>>()?;
    let description = match &saved.description {
        None => None,
        Some(d) => Some(Description {
            id: d.id.clone(),
            body: d.body.clone(),
            setter: jid(&d.setter)?,
            t: d.t,
        }),
    };
    Ok(Group {
        id: saved.id.clone(),
        subject: saved.subject.clone(),
        subject_owner: jid(&saved.subject_owner)?,
        subject_time: saved.subject_time,
        description,
        creation: saved.creation,
        creator: jid(&saved.creator)?,
        participants,
        invite: saved.invite.clone(),
        lid_addressed: saved.lid_addressed,
    })
}

impl Groups {
    fn state(&self) -> MutexGuard<'_, State> {
        // Plain maps stay consistent enough to serve after a panic elsewhere.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The members of a group, or `None` if there is no such group.
    pub(crate) fn members(&self, group: &str) -> Option<Vec<String>> {
        self.state().groups.get(group).map(Group::members)
    }

    /// Whether `user` may send to `group` now.
    pub(crate) fn check_sender(&self, group: &str, user: &str) -> Result<(), GroupError> {
        self.state().group(group)?.require_member(user).map(|_| ())
    }

    /// A copy of one group.
    /// Makes members of `group` be named by LID from now on; false when
    /// there is no such group.
    pub(crate) fn address_by_lid(&self, group: &str) -> bool {
        match self.state().groups.get_mut(group) {
            Some(group) => {
                group.lid_addressed = true;
                true
            }
            None => false,
        }
    }

    /// Whether `group` names its members by LID.
    pub(crate) fn is_lid_addressed(&self, group: &str) -> bool {
        self.state()
            .groups
            .get(group)
            .is_some_and(|group| group.lid_addressed)
    }

    pub(crate) fn get(&self, group: &str) -> Option<Group> {
        self.state().groups.get(group).cloned()
    }

    /// Copies of `user`'s groups, or of every group with `None`.
    pub(crate) fn list(&self, user: Option<&str>) -> Vec<Group> {
        let state = self.state();
        match user {
            Some(user) => state
                .by_member
                .get(user)
                .into_iter()
                .flatten()
                .filter_map(|id| state.groups.get(id).cloned())
                .collect(),
            None => {
                let mut all: Vec<Group> = state.groups.values().cloned().collect();
                all.sort_by(|a, b| a.id.cmp(&b.id));
                all
            }
        }
    }

    /// Runs a query for `actor` (an account JID) at time `now`. `known`
    /// holds the phone numbers among the query's participants that have an
    /// account (looked up by the caller before, as locks never nest).
    pub(crate) fn apply(
        &self,
        actor: &Jid,
        group: Option<&str>,
        query: GroupQuery,
        known: &HashSet<String>,
        now: u64,
        rng: &mut impl RngCore,
    ) -> Result<Outcome, GroupError> {
        let actor = actor.to_non_ad();
        let me = actor.user.as_str();
        let mut state = self.state();
        let group_id = || group.ok_or(GroupError::BadRequest("query needs a group"));
        match query {
            GroupQuery::Info => {
                let group = state.group(group_id()?)?;
                group.require_member(me)?;
                Ok(Outcome {
                    reply: vec![group.node()],
                    ..Outcome::default()
                })
            }
            GroupQuery::Participating => {
                let nodes = state
                    .by_member
                    .get(me)
                    .into_iter()
                    .flatten()
                    .filter_map(|id| state.groups.get(id).map(Group::node))
                    .collect();
                Ok(Outcome {
                    reply: vec![Node::new("groups").children(nodes)],
                    ..Outcome::default()
                })
            }
            GroupQuery::Create {
                subject,
                key,
                participants,
            } => {
                check_subject(&subject)?;
                let id = loop {
                    let id = new_group_id(rng);
                    if !state.groups.contains_key(&id) {
                        break id;
                    }
                };
                let mut members = BTreeMap::new();
                members.insert(me.to_owned(), Role::SuperAdmin);
                for user in participants.iter().filter(|u| known.contains(*u)) {
                    if members.len() >= MAX_GROUP_SIZE {
                        break;
                    }
                    members.entry(user.clone()).or_insert(Role::Member);
                }
                let group = Group {
                    id: id.clone(),
                    subject,
                    subject_owner: actor.clone(),
                    subject_time: now,
                    description: None,
                    creation: now,
                    creator: actor.clone(),
                    participants: members,
                    invite: new_invite_code(rng),
                    lid_addressed: false,
                };
                let node = group.node();
                let mut create = Node::new("create").attr("type", "new");
                if let Some(key) = key {
                    create = create.attr("key", key);
                }
                let notice = Notice {
                    recipients: group.members(),
                    node: notification(&id, &actor, now, create.children(vec![node.clone()])),
                };
                for user in group.participants.keys() {
                    state.join(&id, user);
                }
                state.invites.insert(group.invite.clone(), id.clone());
                state.groups.insert(id.clone(), group);
                Ok(Outcome {
                    reply: vec![node],
                    notices: vec![notice],
                    group: Some(id),
                    results: Vec::new(),
                })
            }
            GroupQuery::Change {
                action,
                participants,
            } => {
                let id = group_id()?.to_owned();
                let outcome = change(
                    state.group_mut(&id)?,
                    &actor,
                    action,
                    &participants,
                    known,
                    now,
                )?;
                for (user, code) in &outcome.results {
                    match (action, code) {
                        (Action::Add, 0) => state.join(&id, user),
                        (Action::Remove, 0) => state.part(&id, user),
                        _ => {}
                    }
                }
                Ok(outcome)
            }
            GroupQuery::Leave { groups } => {
                let mut outcome = Outcome::default();
                let mut left = Vec::new();
                for id in groups {
                    let Ok(group) = state.group_mut(&id) else {
                        continue;
                    };
                    if group.participants.remove(me).is_none() {
                        continue;
                    }
                    let mut recipients = group.members();
                    recipients.push(me.to_owned());
                    let remove = participants_node("remove", &[me.to_owned()]);
                    outcome.notices.push(Notice {
                        recipients,
                        node: notification(&id, &actor, now, remove),
                    });
                    state.part(&id, me);
                    left.push(Node::new("group").attr("id", Jid::new(id, GROUP_SERVER)));
                }
                outcome.reply = vec![Node::new("leave").children(left)];
                Ok(outcome)
            }
            GroupQuery::Subject(subject) => {
                check_subject(&subject)?;
                let group = state.group_mut(group_id()?)?;
                group.require_member(me)?;
                group.subject = subject.clone();
                group.subject_owner = actor.clone();
                group.subject_time = now;
                let child = Node::new("subject")
                    .attr("subject", subject)
                    .attr("s_o", actor.clone())
                    .attr("s_t", now.to_string());
                Ok(Outcome {
                    notices: vec![Notice {
                        recipients: group.members(),
                        node: notification(&group.id, &actor, now, child),
                    }],
                    ..Outcome::default()
                })
            }
            GroupQuery::Description { id, prev, body } => {
                let group = state.group_mut(group_id()?)?;
                group.require_member(me)?;
                let current = group.description.as_ref().map(|d| d.id.as_str());
                if current.is_some() && prev.as_deref() != current {
                    return Err(GroupError::Conflict);
                }
                let mut child = Node::new("description");
                match body {
                    Some(body) => {
                        if body.chars().count() > MAX_DESCRIPTION_CHARS {
                            return Err(GroupError::NotAcceptable("description too long"));
                        }
                        let id = id.ok_or(GroupError::BadRequest("description id"))?;
                        child = child
                            .attr("id", id.clone())
                            .children(vec![Node::new("body").bytes(body.as_bytes())]);
                        group.description = Some(Description {
                            id,
                            body,
                            setter: actor.clone(),
                            t: now,
                        });
                    }
                    None => {
                        let id = id.unwrap_or_else(|| {
                            current.map(str::to_owned).unwrap_or_else(|| "0".to_owned())
                        });
                        child = child.attr("id", id).children(vec![Node::new("delete")]);
                        group.description = None;
                    }
                }
                Ok(Outcome {
                    notices: vec![Notice {
                        recipients: group.members(),
                        node: notification(&group.id, &actor, now, child),
                    }],
                    ..Outcome::default()
                })
            }
            GroupQuery::Invite { revoke } => {
                let id = group_id()?.to_owned();
                let group = state.group(&id)?;
                group.require_member(me)?;
                if !group.role(me).is_some_and(Role::is_admin) {
                    // WhatsApp answers a member's link request with 401.
                    return Err(GroupError::NotAuthorized);
                }
                let code = if revoke {
                    let old = group.invite.clone();
                    let code = new_invite_code(rng);
                    state.invites.remove(&old);
                    if state.revoked.len() >= MAX_REVOKED_CODES {
                        if let Some(forgotten) = state.revoked.pop_front() {
                            state.revoked_set.remove(&forgotten);
                        }
                    }
                    state.revoked_set.insert(old.clone());
                    state.revoked.push_back(old);
                    state.invites.insert(code.clone(), id.clone());
                    state.group_mut(&id)?.invite = code.clone();
                    code
                } else {
                    group.invite.clone()
                };
                Ok(Outcome {
                    reply: vec![Node::new("invite").attr("code", code)],
                    ..Outcome::default()
                })
            }
            GroupQuery::InviteCode { code, join } => {
                let id = match state.invites.get(&code) {
                    Some(id) => id.clone(),
                    None if state.revoked_set.contains(&code) => return Err(GroupError::Revoked),
                    None => return Err(GroupError::NotAcceptable("unknown invite code")),
                };
                let group = state.group_mut(&id)?;
                if !join {
                    return Ok(Outcome {
                        reply: vec![group.node()],
                        ..Outcome::default()
                    });
                }
                let mut notices = Vec::new();
                if group.role(me).is_none() {
                    if group.participants.len() >= MAX_GROUP_SIZE {
                        return Err(GroupError::NotAcceptable("group full"));
                    }
                    group.participants.insert(me.to_owned(), Role::Member);
                    let add = participants_node("add", &[me.to_owned()]).attr("reason", "invite");
                    notices.push(Notice {
                        recipients: group.members(),
                        node: notification(&id, &actor, now, add),
                    });
                    state.join(&id, me);
                }
                Ok(Outcome {
                    reply: vec![Node::new("group").attr("jid", Jid::new(id.clone(), GROUP_SERVER))],
                    notices,
                    group: Some(id),
                    results: Vec::new(),
                })
            }
        }
    }
}

/// Adds, removes, promotes or demotes members of `group` on `actor`'s
/// request; each participant gets its own result, as WhatsApp answers.
fn change(
    group: &mut Group,
    actor: &Jid,
    action: Action,
    participants: &[String],
    known: &HashSet<String>,
    now: u64,
) -> Result<Outcome, GroupError> {
    group.require_admin(&actor.user)?;
    let mut results = Vec::with_capacity(participants.len());
    let mut changed = Vec::new();
    let mut recipients_extra = Vec::new();
    for user in participants {
        let role = group.role(user);
        let code = match (action, role) {
            (Action::Add, Some(_)) => 409,
            (Action::Add, None) if !known.contains(user) => 404,
            (Action::Add, None) if group.participants.len() >= MAX_GROUP_SIZE => 500,
            (Action::Add, None) => {
                group.participants.insert(user.clone(), Role::Member);
                0
            }
            (_, None) => 404,
            // Nobody can remove or demote the creator.
            (Action::Remove | Action::Demote, Some(Role::SuperAdmin)) => 406,
            (Action::Remove, Some(_)) => {
                group.participants.remove(user);
                recipients_extra.push(user.clone());
                0
            }
            (Action::Promote, Some(_)) => {
                if let Some(role @ Role::Member) = group.participants.get_mut(user) {
                    *role = Role::Admin;
                }
                0
            }
            (Action::Demote, Some(_)) => {
                if let Some(role @ Role::Admin) = group.participants.get_mut(user) {
                    *role = Role::Member;
                }
                0
            }
        };
        if code == 0 {
            changed.push(user.clone());
        }
        results.push((user.clone(), code));
    }
    let reply = Node::new(action.tag()).children(
        results
            .iter()
            .map(|(user, code)| {
                let node = Node::new("participant").attr("jid", user_jid(user));
                if *code == 0 {
                    node
                } else {
                    node.attr("error", code.to_string())
                }
            })
            .collect(),
    );
    let mut notices = Vec::new();
    if !changed.is_empty() {
        let mut recipients = group.members();
        recipients.extend(recipients_extra);
        notices.push(Notice {
            recipients,
            node: notification(
                &group.id,
                actor,
                now,
                participants_node(action.tag(), &changed),
            ),
        });
    }
    Ok(Outcome {
        reply: vec![reply],
        notices,
        group: Some(group.id.clone()),
        results,
    })
}

fn check_subject(subject: &str) -> Result<(), GroupError> {
    let chars = subject.chars().count();
    if chars == 0 || chars > MAX_SUBJECT_CHARS {
        Err(GroupError::NotAcceptable("subject empty or too long"))
    } else {
        Ok(())
    }
}

fn new_group_id(rng: &mut impl RngCore) -> String {
    let n = rng.next_u64() % 1_000_000_000_000;
    format!("{GROUP_ID_PREFIX}{n:012}")
}

fn new_invite_code(rng: &mut impl RngCore) -> String {
    (0..INVITE_CODE_LEN)
        .map(|_| {
            let i = usize::try_from(rng.next_u32() % BASE62.len() as u32).unwrap_or(0);
            char::from(BASE62.get(i).copied().unwrap_or(b'0'))
        })
        .collect()
}

/// A group as the control API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// `120363…@g.us`.
    pub jid: Jid,
    pub subject: String,
    pub creator: Jid,
    /// Unix seconds.
    pub creation: u64,
    /// Empty when there is none.
    pub description: String,
    /// In phone-number order.
    pub participants: Vec<GroupMember>,
}

/// A member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// `phone@s.whatsapp.net`.
    pub jid: Jid,
    pub admin: bool,
    /// The creator.
    pub superadmin: bool,
}

impl From<&Group> for GroupInfo {
    fn from(group: &Group) -> Self {
        Self {
            jid: group.jid(),
            subject: group.subject.clone(),
            creator: group.creator.clone(),
            creation: group.creation,
            description: group
                .description
                .as_ref()
                .map(|d| d.body.clone())
                .unwrap_or_default(),
            participants: group
                .participants
                .iter()
                .map(|(user, role)| GroupMember {
                    jid: user_jid(user),
                    admin: role.is_admin(),
                    superadmin: *role == Role::SuperAdmin,
                })
                .collect(),
        }
    }
}

/// The iq result of a `w:g2` query: from the JID it was sent to.
pub(crate) fn iq_result(iq: &Node, children: Vec<Node>) -> Node {
    let id = iq.attr_string("id").unwrap_or_default();
    let from = iq
        .attr_jid("to")
        .unwrap_or_else(|| Jid::new("", GROUP_SERVER));
    let node = Node::new("iq")
        .attr("from", from)
        .attr("type", "result")
        .attr("id", id);
    if children.is_empty() {
        node
    } else {
        node.children(children)
    }
}

/// The iq error answering a refused `w:g2` query.
pub(crate) fn iq_error(iq: &Node, err: &GroupError) -> Node {
    let (code, text) = err.code();
    let id = iq.attr_string("id").unwrap_or_default();
    let from = iq
        .attr_jid("to")
        .unwrap_or_else(|| Jid::new("", GROUP_SERVER));
    Node::new("iq")
        .attr("from", from)
        .attr("type", "error")
        .attr("id", id)
        .children(vec![Node::new("error")
            .attr("code", code.to_string())
            .attr("text", text)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn jid(text: &str) -> Jid {
        text.parse().expect("valid jid")
    }

    fn known(users: &[&str]) -> HashSet<String> {
        users.iter().map(|u| (*u).to_owned()).collect()
    }

    fn iq(to: &str, kind: &str, child: Node) -> Node {
        Node::new("iq")
            .attr("id", "q1")
            .attr("xmlns", "w:g2")
            .attr("to", jid(to))
            .attr("type", kind)
            .children(vec![child])
    }

    fn participants(tag: &'static str, users: &[&str]) -> Node {
        Node::new(tag).children(
            users
                .iter()
                .map(|u| Node::new("participant").attr("jid", user_jid(u)))
                .collect(),
        )
    }

    fn run(
        groups: &Groups,
        actor: &str,
        node: &Node,
        rng: &mut StdRng,
    ) -> Result<Outcome, GroupError> {
        let (group, query) = parse_query(node)?;
        groups.apply(
            &user_jid(actor),
            group.as_deref(),
            query,
            &known(&["111", "222", "333", "444"]),
            100,
            rng,
        )
    }

    fn create(groups: &Groups, rng: &mut StdRng) -> String {
        let node = iq(
            "@g.us",
            "set",
            participants("create", &["222", "333", "999"])
                .attr("subject", "Team")
                .attr("key", "K1"),
        );
        let outcome = run(groups, "111", &node, rng).expect("created");
        outcome.group.expect("group id")
    }

    #[test]
    fn saved_groups_come_back_with_their_indexes() {
        let groups = Groups::default();
        let mut rng = StdRng::seed_from_u64(4);
        let id = create(&groups, &mut rng);
        let (saved, revoked) = groups.saved();
        let again = Groups::restore(&saved, &revoked).expect("restores");
        assert_eq!(again.get(&id), groups.get(&id));
        assert_eq!(again.list(Some("222")).len(), 1, "members are indexed");
        assert_eq!(again.saved(), (saved.clone(), revoked.clone()));
        let mut bad = saved;
        bad[0].participants[0].role = 7;
        assert!(Groups::restore(&bad, &revoked).is_err());
    }

    #[test]
    fn create_answers_the_group_and_notifies_members() {
        let groups = Groups::default();
        let mut rng = StdRng::seed_from_u64(1);
        let node = iq(
            "@g.us",
            "set",
            participants("create", &["222", "333", "999"])
                .attr("subject", "Team")
                .attr("key", "K1"),
        );
        let outcome = run(&groups, "111", &node, &mut rng).expect("created");
        let id = outcome.group.clone().expect("id");
        assert!(id.starts_with(GROUP_ID_PREFIX) && id.len() == 18, "{id}");
        let group = &outcome.reply[0];
        assert_eq!(group.attr_str("id"), Some(id.as_str()));
        assert_eq!(group.attr_str("subject"), Some("Team"));
        assert_eq!(
            group.attr_string("creator").as_deref(),
            Some("111@s.whatsapp.net")
        );
        let roles: Vec<(String, Option<&str>)> = group
            .children_by_tag("participant")
            .map(|p| (p.attr_string("jid").unwrap_or_default(), p.attr_str("type")))
            .collect();
        assert_eq!(
            roles,
            [
                ("111@s.whatsapp.net".to_owned(), Some("superadmin")),
                ("222@s.whatsapp.net".to_owned(), None),
                ("333@s.whatsapp.net".to_owned(), None),
            ],
            "an unknown number is left out"
        );
        let notice = &outcome.notices[0];
        assert_eq!(notice.recipients, ["111", "222", "333"]);
        assert_eq!(notice.node.attr_str("type"), Some("w:gp2"));
        let create = notice.node.child("create").expect("create child");
        assert_eq!(create.attr_str("key"), Some("K1"));
        assert!(create.child("group").is_some());
        assert_eq!(groups.members(&id).expect("exists"), ["111", "222", "333"]);
        assert_eq!(groups.list(Some("222")).len(), 1);
        assert!(groups.list(Some("444")).is_empty());
    }

    #[test]
    fn only_admins_change_participants_and_each_gets_a_result() {
        let groups = Groups::default();
        let mut rng = StdRng::seed_from_u64(2);
        let id = create(&groups, &mut rng);
        let to = format!("{id}@g.us");
        let add = iq(&to, "set", participants("add", &["444"]));
        assert_eq!(
            run(&groups, "222", &add, &mut rng),
            Err(GroupError::NotAdmin)
        );
        assert_eq!(
            run(&groups, "444", &add, &mut rng),
            Err(GroupError::NotParticipant)
        );
        let add = iq(&to, "set", participants("add", &["444", "222", "999"]));
        let outcome = run(&groups, "111", &add, &mut rng).expect("admin adds");
        assert_eq!(
            outcome.results,
            [
                ("444".to_owned(), 0),
                ("222".to_owned(), 409),
                ("999".to_owned(), 404)
            ]
        );
        let reply = outcome.reply[0].child_nodes();
        assert_eq!(reply[1].attr_str("error"), Some("409"));
        assert!(reply[0].attr_str("error").is_none());
        let notice = &outcome.notices[0];
        let added: Vec<String> = notice
            .node
            .child("add")
            .expect("add")
            .children_by_tag("participant")
            .filter_map(|p| p.attr_string("jid"))
            .collect();
        assert_eq!(added, ["444@s.whatsapp.net"]);
        assert!(notice.recipients.contains(&"444".to_owned()));

        let promote = iq(&to, "set", participants("promote", &["222"]));
        run(&groups, "111", &promote, &mut rng).expect("promoted");
        let remove = iq(&to, "set", participants("remove", &["333", "111"]));
        let outcome = run(&groups, "222", &remove, &mut rng).expect("new admin removes");
        assert_eq!(
            outcome.results,
            [("333".to_owned(), 0), ("111".to_owned(), 406)]
        );
        assert!(
            outcome.notices[0].recipients.contains(&"333".to_owned()),
            "the removed member is told"
        );
        assert!(groups.list(Some("333")).is_empty());
        assert_eq!(
            groups.check_sender(&id, "333"),
            Err(GroupError::NotParticipant)
        );
        let info = iq(
            &to,
            "get",
            Node::new("query").attr("request", "interactive"),
        );
        assert_eq!(
            run(&groups, "333", &info, &mut rng),
            Err(GroupError::NotParticipant)
        );
        let unknown = iq("120363000000000001@g.us", "get", Node::new("query"));
        assert_eq!(
            run(&groups, "111", &unknown, &mut rng),
            Err(GroupError::NotFound)
        );
    }

    #[test]
    fn subject_description_leave_and_invites() {
        let groups = Groups::default();
        let mut rng = StdRng::seed_from_u64(3);
        let id = create(&groups, &mut rng);
        let to = format!("{id}@g.us");
        let subject = iq(&to, "set", Node::new("subject").bytes(b"New name".to_vec()));
        let outcome = run(&groups, "222", &subject, &mut rng).expect("member renames");
        let child = outcome.notices[0].node.child("subject").expect("subject");
        assert_eq!(child.attr_str("subject"), Some("New name"));
        assert_eq!(child.attr_str("s_t"), Some("100"));
        let description = |id: &str, prev: Option<&str>| {
            let mut node = Node::new("description")
                .attr("id", id.to_owned())
                .children(vec![Node::new("body").bytes(b"About".to_vec())]);
            if let Some(prev) = prev {
                node = node.attr("prev", prev.to_owned());
            }
            iq(&to, "set", node)
        };
        run(&groups, "111", &description("D1", None), &mut rng).expect("first description");
        assert_eq!(
            run(&groups, "111", &description("D2", None), &mut rng),
            Err(GroupError::Conflict)
        );
        run(&groups, "111", &description("D2", Some("D1")), &mut rng).expect("with prev");
        let info = iq(
            &to,
            "get",
            Node::new("query").attr("request", "interactive"),
        );
        let group = run(&groups, "333", &info, &mut rng).expect("info").reply;
        let desc = group[0].child("description").expect("description");
        assert_eq!(desc.attr_str("id"), Some("D2"));
        assert_eq!(
            desc.child("body").and_then(Node::content_str),
            Some("About")
        );
        assert_eq!(group[0].attr_str("subject"), Some("New name"));

        let invite = iq(&to, "get", Node::new("invite"));
        assert_eq!(
            run(&groups, "222", &invite, &mut rng),
            Err(GroupError::NotAuthorized)
        );
        let code = run(&groups, "111", &invite, &mut rng).expect("code").reply[0]
            .attr_string("code")
            .expect("code attr");
        assert_eq!(code.len(), INVITE_CODE_LEN);
        let join = iq(
            "@g.us",
            "set",
            Node::new("invite").attr("code", code.clone()),
        );
        let joined = run(&groups, "444", &join, &mut rng).expect("joined");
        assert_eq!(
            joined.reply[0].attr_string("jid").as_deref(),
            Some(to.as_str())
        );
        assert_eq!(joined.notices.len(), 1);
        let revoke = iq(&to, "set", Node::new("invite"));
        let new_code = run(&groups, "111", &revoke, &mut rng)
            .expect("revoked")
            .reply[0]
            .attr_string("code")
            .expect("code");
        assert_ne!(new_code, code);
        assert_eq!(
            run(&groups, "333", &join, &mut rng),
            Err(GroupError::Revoked)
        );

        let leave = iq(
            "@g.us",
            "set",
            Node::new("leave").children(vec![Node::new("group").attr("id", jid(&to))]),
        );
        let outcome = run(&groups, "444", &leave, &mut rng).expect("left");
        assert_eq!(
            outcome.notices[0].recipients.last().map(String::as_str),
            Some("444")
        );
        assert!(groups.list(Some("444")).is_empty());
        let participating = iq(
            "@g.us",
            "get",
            Node::new("participating")
                .children(vec![Node::new("participants"), Node::new("description")]),
        );
        let listed = run(&groups, "222", &participating, &mut rng).expect("listed");
        assert_eq!(listed.reply[0].children_by_tag("group").count(), 1);
    }

    #[test]
    fn bad_queries_are_refused() {
        let no_child = Node::new("iq").attr("to", jid("@g.us")).attr("type", "get");
        assert!(parse_query(&no_child).is_err());
        let info_without_group = iq("@g.us", "get", Node::new("query"));
        assert!(parse_query(&info_without_group).is_err());
        let bad_participant = iq(
            "1-2@g.us",
            "set",
            Node::new("add").children(vec![Node::new("participant")]),
        );
        assert_eq!(
            parse_query(&bad_participant),
            Err(GroupError::BadRequest("participant jid"))
        );
        let err = iq_error(&info_without_group, &GroupError::NotFound);
        let error = err.child("error").expect("error child");
        assert_eq!(error.attr_str("code"), Some("404"));
    }
}
