//! The channels a session actor answers its callers on, and the requests
//! media flows send it (answered quickly; the HTTP work stays with the
//! caller).

use tokio::sync::oneshot;

use crate::wa::binary::Node;
use crate::wa::media::{MediaConn, MediaKey, MediaRetry, RetryTarget};
use crate::wa::messaging::{IdempotencyState, MediaRecord, SendError, SendRequest, Sent};

/// The answer to a Send: the server's ack, or why not.
pub(crate) type SendReply = oneshot::Sender<Result<Sent, SendError>>;
/// The answer to a query: the server's `<iq>` answer (an error answer
/// too), or why there is none.
pub(crate) type QueryReply = oneshot::Sender<Result<Node, SendError>>;
/// The answer to stanzas sent without an answer of their own (receipts,
/// chat states, presence): written to the connection, or why not.
pub(crate) type TransmitReply = oneshot::Sender<Result<(), SendError>>;
pub(crate) type MediaConnReply = oneshot::Sender<Result<MediaConn, SendError>>;

/// What the media flows (`runtime::media`) ask of a session actor; each
/// answer is quick, the HTTP work stays with the caller.
pub(crate) enum MediaCommand {
    /// The media hosts and upload auth (`refresh` after a host refused it).
    Conn {
        refresh: bool,
        reply: MediaConnReply,
    },
    /// What the idempotency record says before anything is uploaded.
    Idempotency {
        key: String,
        fingerprint: Vec<u8>,
        /// The request's recipient (named in the answer).
        to: crate::wa::jid::Jid,
        reply: oneshot::Sender<Result<IdempotencyState, SendError>>,
    },
    /// The media record of a received message.
    Record {
        message_id: String,
        reply: oneshot::Sender<Result<Option<MediaRecord>, SendError>>,
    },
    /// A received file's new direct path (after a media retry), so later
    /// downloads need no retry.
    Remember {
        message_id: String,
        record: Box<MediaRecord>,
    },
    /// Asks our phone to upload a received file again; answered by the
    /// `mediaretry` notification.
    Retry {
        target: Box<RetryTarget>,
        media_key: MediaKey,
        reply: oneshot::Sender<Result<MediaRetry, SendError>>,
    },
    /// A message built by the caller (media), sent like a text.
    Send {
        request: Box<SendRequest>,
        reply: SendReply,
    },
}

impl MediaCommand {
    /// The session is not connected: the caller learns it at once.
    pub(crate) fn refuse(self) {
        let no = SendError::NotConnected;
        match self {
            MediaCommand::Conn { reply, .. } => drop(reply.send(Err(no))),
            MediaCommand::Idempotency { reply, .. } => drop(reply.send(Err(no))),
            MediaCommand::Record { reply, .. } => drop(reply.send(Err(no))),
            MediaCommand::Retry { reply, .. } => drop(reply.send(Err(no))),
            MediaCommand::Remember { .. } => {}
            MediaCommand::Send { reply, .. } => drop(reply.send(Err(no))),
        }
    }
}
