//! The iqs the engine issues. Each is a typed spec pairing the request it
//! builds with the parser of its answer; [`Awaiting`] is what waits on the
//! answer (and carries the send that needs it, if any).

use crate::wa::appstate;
use crate::wa::binary::Node;
use crate::wa::groups;
use crate::wa::jid::Jid;
use crate::wa::media;
use crate::wa::prekeys::{self, DeviceBundle, PrekeyError};
use crate::wa::usync::{self, UserDevices, UsyncError};

use super::outbound::Outgoing;
use super::ReplyTo;

/// Why an iq's answer is of no use.
#[derive(Debug, thiserror::Error)]
pub(super) enum IqError {
    #[error("the server answered with an error{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Refused { code: Option<String> },
    #[error(transparent)]
    Usync(#[from] UsyncError),
    #[error(transparent)]
    Prekeys(#[from] PrekeyError),
    #[error(transparent)]
    Group(#[from] groups::GroupError),
    #[error(transparent)]
    Media(#[from] media::MediaConnError),
    #[error(transparent)]
    AppState(#[from] appstate::AppStateError),
}

/// A request and the reading of its answer.
pub(super) trait IqSpec {
    type Answer;
    /// The `<iq>` with `id` (and `to`) set.
    fn request(&self, id: &str) -> Node;
    /// Reads a `type="result"` answer.
    fn parse(node: &Node) -> Result<Self::Answer, IqError>;

    /// Reads any answer: an error answer is [`IqError::Refused`].
    fn answer(node: &Node) -> Result<Self::Answer, IqError> {
        if node.attr_str("type") == Some("error") {
            let code = node.child("error").and_then(|e| e.attr_string("code"));
            return Err(IqError::Refused { code });
        }
        Self::parse(node)
    }
}

fn addressed(node: Node, id: &str) -> Node {
    let node = node.attr("id", id.to_owned());
    if node.attr_value("to").is_some() {
        node
    } else {
        node.attr("to", Jid::server_jid())
    }
}

/// How many one-time prekeys the server still holds for us.
pub(super) struct PrekeyCount;

impl IqSpec for PrekeyCount {
    type Answer = u32;
    fn request(&self, id: &str) -> Node {
        addressed(prekeys::count_query(), id)
    }
    fn parse(node: &Node) -> Result<u32, IqError> {
        Ok(prekeys::parse_count(node)?)
    }
}

/// Uploads prekeys (the node is built by the caller, who generated them).
pub(super) struct PrekeyUpload(pub(super) Node);

impl IqSpec for PrekeyUpload {
    type Answer = ();
    fn request(&self, id: &str) -> Node {
        addressed(self.0.clone(), id)
    }
    fn parse(_: &Node) -> Result<(), IqError> {
        Ok(())
    }
}

/// The device lists of users (usync).
pub(super) struct Devices {
    pub(super) users: Vec<Jid>,
    pub(super) sid: String,
}

impl IqSpec for Devices {
    type Answer = Vec<UserDevices>;
    fn request(&self, id: &str) -> Node {
        addressed(usync::device_query(&self.users, &self.sid, true), id)
    }
    fn parse(node: &Node) -> Result<Vec<UserDevices>, IqError> {
        Ok(usync::parse_devices(node)?)
    }
}

/// Prekey bundles of devices we have no session with.
pub(super) struct Bundles(pub(super) Vec<Jid>);

impl IqSpec for Bundles {
    type Answer = Vec<DeviceBundle>;
    fn request(&self, id: &str) -> Node {
        addressed(prekeys::bundle_query(&self.0), id)
    }
    fn parse(node: &Node) -> Result<Vec<DeviceBundle>, IqError> {
        Ok(prekeys::parse_bundles(node)?)
    }
}

/// A group's metadata (`w:g2`), for its member list.
pub(super) struct GroupMembers(pub(super) Jid);

impl IqSpec for GroupMembers {
    type Answer = groups::GroupInfo;
    fn request(&self, id: &str) -> Node {
        addressed(groups::info_query(&self.0), id)
    }
    fn parse(node: &Node) -> Result<groups::GroupInfo, IqError> {
        Ok(groups::parse_info(node)?)
    }
}

/// A query built by the caller (group management and the like): the
/// answer goes back whole, for the caller's own typed parser in `wa`.
pub(super) struct Raw(pub(super) Node);

impl IqSpec for Raw {
    type Answer = Node;
    fn request(&self, id: &str) -> Node {
        addressed(self.0.clone(), id)
    }
    fn parse(node: &Node) -> Result<Node, IqError> {
        Ok(node.clone())
    }
}

/// Media upload auth and hosts (`w:m`).
pub(super) struct MediaConnQuery;

impl IqSpec for MediaConnQuery {
    type Answer = media::MediaConn;
    fn request(&self, id: &str) -> Node {
        addressed(media::media_conn_query(), id)
    }
    fn parse(node: &Node) -> Result<media::MediaConn, IqError> {
        Ok(media::parse_media_conn(node)?)
    }
}

/// Patches of an app-state collection after a version.
pub(super) struct AppStateQuery {
    /// Each collection and the version it is at.
    pub(super) collections: Vec<(&'static str, u64)>,
}

impl IqSpec for AppStateQuery {
    type Answer = Vec<appstate::CollectionPatches>;
    fn request(&self, id: &str) -> Node {
        addressed(appstate::sync_query_many(&self.collections), id)
    }
    fn parse(node: &Node) -> Result<Vec<appstate::CollectionPatches>, IqError> {
        Ok(appstate::parse_sync(node)?)
    }
}

/// What waits on an iq's answer.
pub(super) enum Awaiting {
    /// A caller's query, answered by `deadline` (ms).
    Query {
        reply: ReplyTo,
        deadline: u64,
    },
    PrekeyCount,
    PrekeyUpload,
    /// A send to a group waiting for its member list.
    GroupMembers(Box<Outgoing>),
    Devices(Box<Outgoing>),
    Bundles {
        send: Box<Outgoing>,
        targets: Vec<Jid>,
    },
    /// A peer asked for a resend and we had no session with it.
    RetryBundle(RetryTarget),
    /// Callers waiting for the media hosts.
    MediaConn(Vec<ReplyTo>),
    /// The account's app-state collections.
    AppState,
}

/// A resend waiting for the peer's bundle.
pub(super) struct RetryTarget {
    pub(super) message_id: String,
    pub(super) device: Jid,
    pub(super) count: u32,
}

impl Awaiting {
    /// The send waiting on this iq, if any.
    pub(super) fn send(&self) -> Option<&Outgoing> {
        match self {
            Awaiting::GroupMembers(send)
            | Awaiting::Devices(send)
            | Awaiting::Bundles { send, .. } => Some(send.as_ref()),
            Awaiting::PrekeyCount
            | Awaiting::PrekeyUpload
            | Awaiting::RetryBundle(_)
            | Awaiting::Query { .. }
            | Awaiting::MediaConn(_)
            | Awaiting::AppState => None,
        }
    }

    pub(super) fn send_mut(&mut self) -> Option<&mut Outgoing> {
        match self {
            Awaiting::GroupMembers(send)
            | Awaiting::Devices(send)
            | Awaiting::Bundles { send, .. } => Some(send.as_mut()),
            Awaiting::PrekeyCount
            | Awaiting::PrekeyUpload
            | Awaiting::RetryBundle(_)
            | Awaiting::Query { .. }
            | Awaiting::MediaConn(_)
            | Awaiting::AppState => None,
        }
    }

    pub(super) fn into_send(self) -> Option<Outgoing> {
        match self {
            Awaiting::GroupMembers(send)
            | Awaiting::Devices(send)
            | Awaiting::Bundles { send, .. } => Some(*send),
            Awaiting::PrekeyCount
            | Awaiting::PrekeyUpload
            | Awaiting::RetryBundle(_)
            | Awaiting::Query { .. }
            | Awaiting::MediaConn(_)
            | Awaiting::AppState => None,
        }
    }
}
