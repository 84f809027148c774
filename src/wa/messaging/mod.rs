//! The message engine of one session, sans-IO: stanzas and send requests in,
//! typed outcomes out — state to persist, events to report, stanzas to send
//! once that state is durable, and answers to callers. Must not import
//! tokio, the store, the clock or `sim`; time and randomness come in.
//!
//! Every input returns a [`Step`]. Its owner must commit `changes` and
//! `events` atomically *before* it writes any of `transmit` to the wire
//! (DESIGN §8: nothing is receipted before it is committed, and a chain key
//! never reaches the wire before its state is stored). `replies` may go out
//! before the commit: they depend on nothing it carries; `committed_replies`
//! only after it.
//!
//! Keys are read through the synchronous [`KeyStore`] the owner implements
//! (over its store, with whatever cache it likes); writes never go there
//! directly but come back as [`Change`]s, so a failed commit leaves the
//! owner's view untouched.

mod app_state;
mod group;
mod inbound;
mod iq;
mod keys;
mod media;
mod outbound;
mod polls;
mod retry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::proto::wa::Message;
use crate::wa::binary::Node;
use crate::wa::creds::Credentials;
use crate::wa::jid::Jid;
use crate::wa::signal::ProtocolAddress;

pub use app_state::{ChatSettings, ContactUpdate, SnapshotJob};
pub use keys::{
    Change, ChatRecord, ContactRecord, DedupeKey, IdempotencyRecord, KeyError, KeyStore,
    MediaRecord, PendingHistory, PollRecord, SenderKeyMemory, SentRecord, Txn,
};

use crate::wa::media::{MediaConn, MediaRetry};

pub use media::{IdempotencyState, ReceivedMedia};

use iq::Awaiting;
use outbound::Outgoing;

/// Decryption failures answered with a retry receipt before the message is
/// reported as undecryptable.
pub const MAX_RETRIES: u32 = 5;
/// How long a Send may take from the request to the server's ack.
pub const SEND_TIMEOUT_MS: u64 = 20_000;
/// How long a device list from usync is trusted.
const DEVICE_CACHE_MS: u64 = 5 * 60_000;
/// Device lists kept in memory. A group send needs the list of every
/// member at once, and WhatsApp groups hold up to 1024 members: a smaller
/// cache emptied itself in the middle of a large group's fetch, and the
/// message went out with our key for only a few devices.
const MAX_CACHED_DEVICE_LISTS: usize = 1100;
/// Longest text reported in an event; WhatsApp's own limit is 65,536
/// characters, so anything longer is hostile or broken.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Longest text accepted for sending.
pub const MAX_SEND_TEXT_BYTES: usize = 65_536;

/// Identifies a caller waiting for a send; the owner maps it to its channel.
pub type ReplyTo = u64;

/// A message to send.
#[derive(Clone, Debug)]
pub struct SendRequest {
    pub to: Jid,
    pub message: Message,
    /// Makes retries of the same request safe: see [`outbound`].
    pub idempotency_key: Option<String>,
    /// What identifies the request behind `idempotency_key`, when the
    /// caller knows better than the message: a media message carries a
    /// fresh random media key each time it is built, so the owner
    /// fingerprints what the caller asked for (recipient, source, caption)
    /// instead. `None`: the recipient and the message.
    pub fingerprint: Option<Vec<u8>>,
}

/// A sent message, acknowledged by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub message_id: String,
    /// Server timestamp, unix seconds.
    pub timestamp_s: u64,
    /// A message to one person: the recipient's phone number and LID,
    /// when known (`None` for a group).
    pub recipient_phone: Option<String>,
    pub recipient_lid: Option<Jid>,
}

impl Sent {
    /// `message_id` sent to `to`, acknowledged at `timestamp_s`. A failed
    /// read of the mapping leaves the recipient's addresses out: the
    /// message went out all the same.
    fn to(message_id: String, timestamp_s: u64, to: &Jid, txn: &mut Txn<'_>) -> Self {
        let (recipient_phone, recipient_lid) = if to.is_group() {
            (None, None)
        } else {
            identities(to, None, txn).unwrap_or_default()
        };
        Self {
            message_id,
            timestamp_s,
            recipient_phone,
            recipient_lid,
        }
    }
}

/// Why a send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("session is not connected")]
    NotConnected,
    #[error("{0} is not on WhatsApp")]
    UnknownRecipient(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "the server did not acknowledge the message in time; retry with the same idempotency key"
    )]
    Timeout,
    #[error("the connection closed before the server acknowledged the message ({0}); retry with the same idempotency key")]
    ConnectionLost(String),
    #[error("the server refused the message (error {0})")]
    Refused(String),
    #[error("group {0} does not exist or this account cannot see it")]
    UnknownGroup(String),
    #[error("this account is not a member of group {0}")]
    NotAMember(String),
    #[error("cannot encrypt for the recipient: {0}")]
    Encryption(String),
    #[error("idempotency key {0:?} was already used for a different message (other recipient or content); use a new key")]
    IdempotencyConflict(String),
    #[error("store: {0}")]
    Store(String),
    #[error("poll {0} is unknown to this session (it neither made nor received it): a vote needs the poll's secret")]
    UnknownPoll(String),
    #[error("{0}")]
    InvalidVote(String),
}

/// Something to report to the session's backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Message(ReceivedMessage),
    Receipt(ReceivedReceipt),
    Group(crate::wa::groups::GroupChange),
    ChatState(crate::wa::presence::IncomingChatState),
    Presence(crate::wa::presence::IncomingPresence),
    /// A contact's names changed (app-state `contact`).
    Contact(ContactUpdate),
    /// A chat's archive, pin, mute or read mark changed (app-state).
    ChatSettings(ChatSettings),
}

/// A message that arrived (or could not be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: String,
    pub chat: Jid,
    pub sender: Jid,
    /// The sender's phone number (digits), when known.
    pub sender_phone: Option<String>,
    /// The sender's LID (`…@lid`, without device), when known.
    pub sender_lid: Option<Jid>,
    /// A chat with one person: its phone number and LID, when known
    /// (`None` in groups).
    pub chat_phone: Option<String>,
    pub chat_lid: Option<Jid>,
    pub push_name: Option<String>,
    /// Server timestamp, unix seconds.
    pub timestamp_s: u64,
    pub from_me: bool,
    pub text: Option<String>,
    /// The content's WhatsApp field name (`conversation`, `imageMessage`,
    /// …), or `undecryptable` / `unavailable` when `error` is set.
    pub kind: String,
    pub offline: bool,
    pub error: Option<String>,
    /// The media it carries, if any (without its keys).
    pub media: Option<Box<ReceivedMedia>>,
    /// What it says about other messages, if anything.
    pub refs: Option<Box<ReceivedRefs>>,
    /// A location, contact cards, a poll or a vote.
    pub content: Option<Box<ReceivedContent>>,
}

/// Locations, contact cards, polls and votes, from this account's point of
/// view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceivedContent {
    Location(crate::wa::content::Location),
    Contacts(crate::wa::content::Contacts),
    Poll(crate::wa::content::Poll),
    /// A vote on `poll`: the options chosen, by name (none: the vote taken
    /// back), or why they cannot be known.
    Vote {
        poll: crate::wa::compose::MessageRef,
        options: Result<Vec<String>, String>,
    },
}

/// A reply's quote, mentions, or a reaction's, edit's or revoke's target,
/// from this account's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedRefs {
    /// The message quoted (a reply) or acted on.
    pub target: Option<crate::wa::compose::MessageRef>,
    pub quoted_text: Option<String>,
    pub mentions: Vec<String>,
}

impl ReceivedRefs {
    /// `refs` of a message `sender` sent in `chat`, seen by `own`.
    pub(crate) fn of(
        refs: Option<Box<crate::wa::compose::Refs>>,
        sender: &Jid,
        chat: &Jid,
        own: &Jid,
    ) -> Option<Box<Self>> {
        let refs = refs?;
        let action = refs.action.is_some();
        Some(Box::new(Self {
            target: refs
                .target
                .as_ref()
                .map(|t| crate::wa::compose::as_seen_by(t, sender, chat, own, action)),
            quoted_text: refs.quoted_text,
            mentions: refs.mentions,
        }))
    }
}

/// Kinds of receipts reported to the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiptKind {
    Delivered,
    Read,
    Played,
}

/// A receipt for messages we sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedReceipt {
    pub message_ids: Vec<String>,
    pub kind: ReceiptKind,
    pub chat: Jid,
    pub from: Jid,
    pub from_phone: Option<String>,
    /// `from`'s LID (without device), when known.
    pub from_lid: Option<Jid>,
    /// Unix seconds, when the server said.
    pub timestamp_s: Option<u64>,
}

/// What one input produced. See the module documentation for the order in
/// which the owner must act on it.
#[derive(Debug, Default)]
pub struct Step {
    /// State to commit (with `events`, atomically).
    pub changes: Vec<Change>,
    pub events: Vec<Event>,
    /// Stanzas to write once the commit succeeded.
    pub transmit: Vec<Node>,
    /// Answers to callers that do not depend on what the commit carries
    /// (see [`outbound`] for acknowledged sends with a key), so they may
    /// go out at once.
    pub replies: Vec<(ReplyTo, Result<Sent, SendError>)>,
    /// Answers that may go out only once the commit landed: a send without
    /// an idempotency key the server acknowledged. Nothing writes such a
    /// send again, so should its ack's commit be lost its `from_me` event
    /// would never be logged; its caller learns of the success with the
    /// event in the log, or of a lost connection (outcome unknown).
    pub committed_replies: Vec<(ReplyTo, Result<Sent, SendError>)>,
    /// Answers to callers' queries (the `<iq>` answer as received, also
    /// an error answer); like `replies`, not bound to the commit.
    pub answers: Vec<(ReplyTo, Result<Node, SendError>)>,
    /// Answers to callers of [`Engine::handle_media_conn`].
    pub media_conns: Vec<(ReplyTo, Result<MediaConn, SendError>)>,
    /// `mediaretry` notifications: answers to [`Engine::media_retry_receipt`]
    /// (the owner matches them to its waiters by message id).
    pub media_retries: Vec<MediaRetry>,
    /// Incoming messages reported among the stanzas (decrypted or not;
    /// not redeliveries, not bookkeeping without content), for metrics.
    pub messages_in: u32,
    /// Sends the server acknowledged, for metrics.
    pub messages_out: u32,
    /// The account's push name, when its app-state just told it.
    pub push_name: Option<String>,
    /// History chunks to fetch once the step is committed; each carries
    /// the receipt that may go out only after its pages are committed.
    pub history: Vec<HistoryJob>,
    /// App-state snapshots to fetch once the step is committed, each to
    /// hand back to [`Engine::handle_app_state_snapshot`].
    pub app_state_snapshots: Vec<SnapshotJob>,
}

impl Step {
    /// Whether anything must be committed before the rest.
    pub fn needs_commit(&self) -> bool {
        !self.changes.is_empty() || !self.events.is_empty()
    }

    /// Fails every caller of `send`.
    fn fail(&mut self, send: Outgoing, error: SendError) {
        for waiter in send.waiters {
            self.replies.push((waiter, Err(error.clone())));
        }
    }

    /// A store read failed: the input cannot be processed and nothing of
    /// what it produced so far may be used. The owner closes the connection
    /// (unreceipted stanzas come back later).
    fn abandoned(error: KeyError) -> StepError {
        StepError(error)
    }
}

/// A history chunk for the owner to fetch, page and commit (see
/// [`crate::wa::history`]); then it commits [`HistoryJob::progress`] with its
/// last page and sends `receipt`.
#[derive(Debug, Clone)]
pub struct HistoryJob {
    /// The notification's dedupe key: its pending record's key.
    pub key: DedupeKey,
    pub notice: crate::wa::history::HistoryNotice,
    /// Pages committed before (a resumed chunk skips them).
    pub pages_done: u32,
    /// The notification's receipt.
    pub receipt: Node,
}

impl HistoryJob {
    /// A chunk left pending by an earlier connection.
    fn resume(key: DedupeKey, pending: &PendingHistory, receipt: Node) -> Option<Self> {
        let notification =
            <crate::proto::wa::message::HistorySyncNotification as prost::Message>::decode(
                pending.notification.as_slice(),
            )
            .ok()?;
        let notice = crate::wa::history::HistoryNotice::from_proto(&notification).ok()?;
        Some(Self {
            key,
            notice,
            pages_done: pending.pages_done,
            receipt,
        })
    }

    /// The change that records `pages` committed pages of this chunk, or
    /// (`complete`) that it needs nothing more.
    pub fn progress(&self, pages: u32, complete: bool) -> Change {
        let record = (!complete).then(|| PendingHistory {
            notification: prost::Message::encode_to_vec(&self.notice.to_proto()),
            pages_done: pages,
        });
        Change::History(self.key.clone(), record)
    }
}

/// Processing an input needed a key the store could not deliver. Nothing
/// may be sent; the owner closes the connection without acknowledging.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StepError(pub KeyError);

/// What the handlers of one step share: the keys with the step's own
/// writes on top, our credentials, the time, and the step being built.
struct Cx<'c, 'k> {
    txn: Txn<'k>,
    creds: &'c Credentials,
    now_ms: u64,
    step: Step,
}

impl<'c, 'k> Cx<'c, 'k> {
    fn new(keys: &'k mut dyn KeyStore, creds: &'c Credentials, now_ms: u64) -> Self {
        Self {
            txn: Txn::new(keys),
            creds,
            now_ms,
            step: Step::default(),
        }
    }

    fn into_step(self) -> Step {
        let mut step = self.step;
        step.changes = self.txn.into_changes();
        step
    }
}

/// The message engine of one session.
pub struct Engine {
    rng: StdRng,
    /// Prefix and counter of the iq ids this engine issues.
    iq_prefix: String,
    iq_counter: u64,
    awaiting: HashMap<String, Awaiting>,
    /// Sends after encryption, waiting for the server's ack, by message id.
    in_flight: HashMap<String, Outgoing>,
    /// usync device lists by bare user JID, with when they were fetched.
    devices: HashMap<Jid, (Vec<Jid>, u64)>,
    /// Group member lists (user JIDs), with when they were fetched.
    groups: HashMap<Jid, (Vec<Jid>, u64)>,
    /// Decryption failures per message (dedupe key).
    retries: HashMap<DedupeKey, u32>,
    /// The last `media_conn` answer and the unix second it expires.
    media_conn: Option<(MediaConn, u64)>,
    /// When the `media_conn` iq now out was sent.
    media_conn_asked_ms: Option<u64>,
    app_state: app_state::AppState,
}

impl Engine {
    /// An engine whose randomness (ids, padding, ephemeral keys) comes from
    /// `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        let mut rng = StdRng::from_seed(seed);
        let iq_prefix = format!("m{:04x}.", rand::RngCore::next_u32(&mut rng) & 0xffff);
        Self {
            rng,
            iq_prefix,
            iq_counter: 0,
            awaiting: HashMap::new(),
            in_flight: HashMap::new(),
            devices: HashMap::new(),
            groups: HashMap::new(),
            retries: HashMap::new(),
            media_conn: None,
            media_conn_asked_ms: None,
            app_state: app_state::AppState::default(),
        }
    }

    /// Logged in: check the server's stock of our prekeys.
    ///
    /// `unacked` are the sends an earlier connection wrote (or was about
    /// to) and never saw acknowledged, as `KeyStore` implementations list
    /// them at login: they are written again, byte for byte (see
    /// `outbound`), so their delivery and their event do not depend on the
    /// caller retrying.
    pub fn handle_connected(
        &mut self,
        unacked: Vec<IdempotencyRecord>,
        keys: &mut dyn KeyStore,
        creds: &Credentials,
        now_ms: u64,
    ) -> Result<Step, StepError> {
        let mut cx = Cx::new(keys, creds, now_ms);
        self.issue(iq::PrekeyCount, Awaiting::PrekeyCount, &mut cx.step);
        if !unacked.is_empty() {
            tracing::info!(
                sends = unacked.len(),
                "sends an earlier connection left unacknowledged are written again"
            );
        }
        for record in unacked {
            self.resend_unacked(record, &mut cx)
                .map_err(Step::abandoned)?;
        }
        Ok(cx.into_step())
    }

    /// A caller's query (`iq` without id; `to` defaults to the server):
    /// the answer comes back in a later step's `answers`, or a timeout.
    pub fn handle_query(&mut self, iq: Node, reply: ReplyTo, now_ms: u64) -> Step {
        let mut step = Step::default();
        let deadline = now_ms + SEND_TIMEOUT_MS;
        self.issue(iq::Raw(iq), Awaiting::Query { reply, deadline }, &mut step);
        step
    }

    /// The connection ended: every send waiting for an answer fails (the
    /// caller may retry with its idempotency key), and so does every iq.
    pub fn handle_disconnected(&mut self, why: &str) -> Step {
        let mut step = Step::default();
        let error = SendError::ConnectionLost(why.to_owned());
        for (_, awaiting) in self.awaiting.drain() {
            if let Awaiting::Query { reply, .. } = awaiting {
                step.answers.push((reply, Err(error.clone())));
            } else if let Awaiting::MediaConn(waiters) = awaiting {
                for waiter in waiters {
                    step.media_conns.push((waiter, Err(error.clone())));
                }
            } else if let Some(send) = awaiting.into_send() {
                step.fail(send, error.clone());
            }
        }
        for (_, send) in self.in_flight.drain() {
            step.fail(send, error.clone());
        }
        // The app-state answer awaited is gone with its iq.
        self.app_state.disconnected();
        step
    }

    /// The earliest deadline of a send, in ms.
    pub fn poll_timeout(&self) -> Option<u64> {
        let waiting = self.awaiting.values().filter_map(Awaiting::send);
        let queries = self.awaiting.values().filter_map(|a| match a {
            Awaiting::Query { deadline, .. } => Some(*deadline),
            _ => None,
        });
        waiting
            .chain(self.in_flight.values())
            .map(|s| s.deadline)
            .chain(queries)
            .min()
    }

    /// Fails the sends whose deadline passed.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Step {
        let mut step = Step::default();
        let expired: Vec<String> = self
            .awaiting
            .iter()
            .filter(|(_, a)| match a {
                Awaiting::Query { deadline, .. } => *deadline <= now_ms,
                other => other.send().is_some_and(|s| s.deadline <= now_ms),
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            match self.awaiting.remove(&id) {
                Some(Awaiting::Query { reply, .. }) => {
                    step.answers.push((reply, Err(SendError::Timeout)));
                }
                Some(awaiting) => {
                    if let Some(send) = awaiting.into_send() {
                        step.fail(send, SendError::Timeout);
                    }
                }
                None => {}
            }
        }
        let expired: Vec<String> = self
            .in_flight
            .iter()
            .filter(|(_, s)| s.deadline <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(send) = self.in_flight.remove(&id) {
                step.fail(send, SendError::Timeout);
            }
        }
        step
    }

    /// Stanzas the connection passed up (messages, receipts, acks, answers
    /// to our iqs, notifications, calls), all read from the socket at once:
    /// one step, so their state is committed together.
    pub fn handle_stanzas(
        &mut self,
        nodes: Vec<Node>,
        keys: &mut dyn KeyStore,
        creds: &Credentials,
        now_ms: u64,
    ) -> Result<Step, StepError> {
        let mut cx = Cx::new(keys, creds, now_ms);
        // The account's own LID (from pair-success or success).
        if let Some((jid, Some(lid))) = creds.account.as_ref().map(|a| (&a.jid, &a.lid)) {
            learn_lid(&jid.to_non_ad(), &lid.to_non_ad(), &mut cx.txn).map_err(Step::abandoned)?;
        }
        for node in nodes {
            self.handle_stanza(node, &mut cx).map_err(Step::abandoned)?;
        }
        Ok(cx.into_step())
    }

    fn handle_stanza(&mut self, node: Node, cx: &mut Cx<'_, '_>) -> Result<(), KeyError> {
        match node.tag() {
            "message" => self.on_message(&node, cx),
            "receipt" => self.on_receipt(&node, cx),
            "ack" => self.on_ack(&node, cx),
            "iq" => self.on_iq_answer(node, cx),
            "notification" => self.on_notification(&node, cx),
            // Ephemeral: reported, never acknowledged (the server does not
            // ask for it) and never redelivered.
            "chatstate" => {
                if let Ok(mut state) = crate::wa::presence::IncomingChatState::parse(&node) {
                    (state.sender_phone, state.sender_lid) =
                        identities(&state.sender, None, &mut cx.txn)?;
                    cx.step.events.push(Event::ChatState(state));
                }
                Ok(())
            }
            "presence" => {
                if let Ok(mut presence) = crate::wa::presence::IncomingPresence::parse(&node) {
                    (presence.from_phone, presence.from_lid) =
                        identities(&presence.from, None, &mut cx.txn)?;
                    cx.step.events.push(Event::Presence(presence));
                }
                Ok(())
            }
            "call" => {
                cx.step
                    .transmit
                    .extend(crate::wa::message::stanza_ack(&node));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Sends requested together (each waits on its own reply).
    /// An app-state snapshot fetched for a [`SnapshotJob`] of an earlier
    /// step, or why it could not be: checked and applied, then the patches
    /// after it (the step's changes and events to commit as any other).
    pub fn handle_app_state_snapshot(
        &mut self,
        job: SnapshotJob,
        blob: Result<Vec<u8>, String>,
        keys: &mut dyn KeyStore,
        creds: &Credentials,
        now_ms: u64,
    ) -> Result<Step, StepError> {
        let mut cx = Cx::new(keys, creds, now_ms);
        self.on_app_state_snapshot(job, blob, &mut cx)
            .map_err(Step::abandoned)?;
        Ok(cx.into_step())
    }

    pub fn handle_sends(
        &mut self,
        requests: Vec<(SendRequest, ReplyTo)>,
        keys: &mut dyn KeyStore,
        creds: &Credentials,
        now_ms: u64,
    ) -> Result<Step, StepError> {
        let mut cx = Cx::new(keys, creds, now_ms);
        for (request, reply) in requests {
            self.start_send(request, reply, &mut cx)
                .map_err(Step::abandoned)?;
        }
        Ok(cx.into_step())
    }

    /// A fresh iq id, distinct from the connection's own.
    fn next_iq_id(&mut self) -> String {
        self.iq_counter += 1;
        format!("{}{}", self.iq_prefix, self.iq_counter)
    }

    /// Sends `spec`'s request and remembers what waits on its answer.
    fn issue(&mut self, spec: impl iq::IqSpec, awaiting: Awaiting, step: &mut Step) {
        let id = self.next_iq_id();
        step.transmit.push(spec.request(&id));
        self.awaiting.insert(id, awaiting);
    }

    fn remember_devices(&mut self, user: Jid, devices: Vec<Jid>, now_ms: u64) {
        if self.devices.len() >= MAX_CACHED_DEVICE_LISTS && !self.devices.contains_key(&user) {
            self.devices
                .retain(|_, (_, at)| *at + DEVICE_CACHE_MS > now_ms);
            if self.devices.len() >= MAX_CACHED_DEVICE_LISTS {
                self.devices.clear();
            }
        }
        self.devices.insert(user, (devices, now_ms));
    }
}

/// The Signal address of a device JID, keyed as WhatsApp clients key it:
/// LID users get the `_1` domain suffix.
pub fn address_of(jid: &Jid) -> ProtocolAddress {
    let name = if jid.is_lid() {
        format!("{}_1", jid.user)
    } else {
        jid.user.clone()
    };
    ProtocolAddress::new(name, u32::from(jid.device))
}

/// The phone number of a user, directly or through the LID mapping.
fn phone_for(jid: &Jid, txn: &mut Txn<'_>) -> Result<Option<String>, KeyError> {
    if let Some(phone) = crate::wa::message::phone_of(jid) {
        return Ok(Some(phone));
    }
    if !jid.is_lid() {
        return Ok(None);
    }
    txn.phone_of_lid(&jid.user)
}

/// The LID (user JID) of a user, directly or through the LID mapping.
fn lid_for(jid: &Jid, txn: &mut Txn<'_>) -> Result<Option<Jid>, KeyError> {
    if jid.is_lid() {
        return Ok(Some(jid.to_non_ad()));
    }
    if crate::wa::message::phone_of(jid).is_none() {
        return Ok(None);
    }
    Ok(txn
        .lid_of_phone(&jid.user)?
        .map(|lid| Jid::new(lid, crate::wa::jid::LID_SERVER)))
}

/// The phone number and LID of `jid` (a device or user), each when known:
/// from the JID itself, its alternate address on the wire (`alt`), or the
/// mapping learned before.
fn identities(
    jid: &Jid,
    alt: Option<&Jid>,
    txn: &mut Txn<'_>,
) -> Result<(Option<String>, Option<Jid>), KeyError> {
    let phone = match phone_for(jid, txn)? {
        Some(phone) => Some(phone),
        None => match alt {
            Some(alt) => phone_for(alt, txn)?,
            None => None,
        },
    };
    let lid = match lid_for(jid, txn)? {
        Some(lid) => Some(lid),
        None => match alt {
            Some(alt) => lid_for(alt, txn)?,
            None => None,
        },
    };
    Ok((phone, lid))
}

/// Records a LID↔phone pair learned from the wire.
fn learn_lid(a: &Jid, b: &Jid, txn: &mut Txn<'_>) -> Result<(), KeyError> {
    let (lid, pn) = match (a.is_lid(), b.is_lid()) {
        (true, false) => (a, b),
        (false, true) => (b, a),
        _ => return Ok(()),
    };
    let Some(phone) = crate::wa::message::phone_of(pn) else {
        return Ok(());
    };
    // Both directions known already (mappings of older versions were
    // kept one way only: they are written again).
    if txn.phone_of_lid(&lid.user)?.as_deref() == Some(phone.as_str())
        && txn.lid_of_phone(&phone)?.as_deref() == Some(lid.user.as_str())
    {
        return Ok(());
    }
    txn.put_lid(lid.user.clone(), phone);
    Ok(())
}
