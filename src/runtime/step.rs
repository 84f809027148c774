//! One step of a session's message engine, as the messenger hands it on:
//! what goes in ([`Input`]), the engine with its keys and waiting callers
//! ([`Core`]) running the step against the store-backed keys, the batch and
//! events it must commit, what goes back to the actor ([`Output`]), and the
//! pipeline job that carries it ([`SessionStep`]). Nothing here touches the
//! socket: the messenger (`messaging`) writes a step's stanzas after its
//! commit, and this module never imports it.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;
use tokio::sync::oneshot;

use crate::proto::gateway::event::Payload;
use crate::store::{Batch, EventRecord, SessionId, StoreError};
use crate::wa::binary::Node;
use crate::wa::conn::CloseReason;
use crate::wa::creds::Credentials;
use crate::wa::media::MediaRetry;
use crate::wa::messaging::{
    Engine, HistoryJob, KeyError, ReplyTo, SendError, SendRequest, SnapshotJob, Step,
};

use super::events::{Counts, EventLog};
use super::keys::StoreKeys;
use super::payloads;
use super::pipeline::{Commit, Job};
use super::replies::{MediaCommand, MediaConnReply, QueryReply, SendReply};

/// Why a step could not complete. The connection then closes without
/// acknowledging anything of it; the server delivers it again.
#[derive(Debug, thiserror::Error)]
pub(super) enum StepFailure {
    #[error("cannot commit message state: {0}")]
    Store(#[from] StoreError),
    #[error("cannot read keys: {0}")]
    Keys(#[from] KeyError),
    #[error("the message engine failed: {0}")]
    Crashed(String),
}

impl StepFailure {
    /// Why the connection ends, with `context` (what was being done) in
    /// front: a store failure is not the server's doing (see
    /// [`CloseReason::StoreFailed`]).
    pub(super) fn close_reason(&self, context: &str) -> CloseReason {
        let why = if context.is_empty() {
            self.to_string()
        } else {
            format!("{context}: {self}")
        };
        match self {
            StepFailure::Store(_) | StepFailure::Keys(_) => CloseReason::StoreFailed(why),
            StepFailure::Crashed(_) => CloseReason::Protocol(why),
        }
    }
}

pub(super) enum Input {
    /// A login, with what must commit with its first step: the session's
    /// row and its CONNECTED event.
    Connected(Box<(Batch, Payload)>),
    Stanzas(Vec<Node>),
    Sends(Vec<(SendRequest, ReplyTo)>),
    /// Lookups that read the store and change nothing.
    Lookup(MediaCommand),
    /// An app-state snapshot fetched (or why not).
    Snapshot(Box<SnapshotJob>, Result<Vec<u8>, String>),
    /// A session online for a day: bookkeeping past its retention goes.
    Upkeep,
}

/// What goes back to the actor after a step.
pub(super) struct Output {
    pub(super) transmit: Vec<Node>,
    pub(super) push_name: Option<String>,
    pub(super) history: Vec<HistoryJob>,
    pub(super) snapshots: Vec<SnapshotJob>,
}

/// The engine with its keys and waiting callers: moved into each step's job
/// and back.
pub(super) struct Core {
    pub(super) engine: Engine,
    keys: Option<StoreKeys>,
    pub(super) replies: HashMap<ReplyTo, SendReply>,
    pub(super) queries: HashMap<ReplyTo, QueryReply>,
    pub(super) media_conns: HashMap<ReplyTo, MediaConnReply>,
    /// Downloads waiting for a `mediaretry` notification, by message id.
    pub(super) media_retries: HashMap<String, oneshot::Sender<Result<MediaRetry, SendError>>>,
}

impl Core {
    pub(super) fn new() -> Box<Self> {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        Box::new(Self {
            engine: Engine::new(seed),
            keys: None,
            replies: HashMap::new(),
            queries: HashMap::new(),
            media_conns: HashMap::new(),
            media_retries: HashMap::new(),
        })
    }

    pub(super) fn deliver(&mut self, step: &mut Step) {
        let replies = std::mem::take(&mut step.replies);
        self.reply(replies);
        for (to, result) in step.answers.drain(..) {
            if let Some(reply) = self.queries.remove(&to) {
                let _ = reply.send(result);
            }
        }
        for (to, result) in step.media_conns.drain(..) {
            if let Some(reply) = self.media_conns.remove(&to) {
                let _ = reply.send(result);
            }
        }
        for retry in step.media_retries.drain(..) {
            if let Some(reply) = self.media_retries.remove(&retry.target.message_id) {
                let _ = reply.send(Ok(retry));
            }
        }
    }

    /// Answers the callers of `replies` still waiting.
    fn reply(&mut self, replies: Vec<(ReplyTo, Result<crate::wa::messaging::Sent, SendError>)>) {
        for (to, result) in replies {
            if let Some(reply) = self.replies.remove(&to) {
                let _ = reply.send(result);
            }
        }
    }

    /// Every waiting caller learns the connection is going away.
    pub(super) fn fail_all(&mut self, why: &str) {
        for (_, reply) in self.replies.drain() {
            let _ = reply.send(Err(SendError::ConnectionLost(why.to_owned())));
        }
        for (_, reply) in self.queries.drain() {
            let _ = reply.send(Err(SendError::ConnectionLost(why.to_owned())));
        }
        for (_, reply) in self.media_conns.drain() {
            let _ = reply.send(Err(SendError::ConnectionLost(why.to_owned())));
        }
        for (_, reply) in self.media_retries.drain() {
            let _ = reply.send(Err(SendError::ConnectionLost(why.to_owned())));
        }
    }

    /// The engine's part of a step: its replies are delivered; what it
    /// must commit is handed back.
    pub(super) fn prepare(
        &mut self,
        input: Input,
        creds: &Credentials,
        log: &EventLog,
        id: &SessionId,
        now_ms: u64,
    ) -> Result<Prepared, StepFailure> {
        let keys = self
            .keys
            .get_or_insert_with(|| StoreKeys::new(id.clone(), log.store().clone(), creds));
        let mut login = None;
        let mut step = match input {
            Input::Connected(with) => {
                login = Some(*with);
                let unacked = keys.load(now_ms)?;
                self.engine
                    .handle_connected(unacked, keys, creds, now_ms)
                    .map_err(|e| e.0)?
            }
            Input::Stanzas(nodes) => self
                .engine
                .handle_stanzas(nodes, keys, creds, now_ms)
                .map_err(|e| e.0)?,
            Input::Sends(requests) => self
                .engine
                .handle_sends(requests, keys, creds, now_ms)
                .map_err(|e| e.0)?,
            Input::Snapshot(job, blob) => self
                .engine
                .handle_app_state_snapshot(*job, blob, keys, creds, now_ms)
                .map_err(|e| e.0)?,
            Input::Upkeep => {
                // Sends not yet acknowledged are this connection's own, in
                // flight: nothing to write again.
                keys.prune(now_ms)?;
                Step::default()
            }
            Input::Lookup(command) => {
                // A failed read fails the lookup, not the connection.
                let store = |e: KeyError| SendError::Store(e.message);
                let mut step = Step::default();
                match command {
                    MediaCommand::Idempotency {
                        key,
                        fingerprint,
                        to,
                        reply,
                    } => {
                        let answer = self.engine.idempotency_of(&key, &fingerprint, &to, keys);
                        let _ = reply.send(answer.unwrap_or_else(|e| Err(store(e.0))));
                    }
                    MediaCommand::Record { message_id, reply } => {
                        let _ = reply.send(keys.media(&message_id).map_err(store));
                    }
                    MediaCommand::Remember { message_id, record } => {
                        let change = crate::wa::messaging::Change::Media(message_id, *record);
                        step.changes.push(change);
                    }
                    other => other.refuse(),
                }
                step
            }
        };
        let commit = (step.needs_commit() || login.is_some()).then(|| {
            let mut batch = keys.batch(&step.changes);
            let mut events = Vec::with_capacity(step.events.len() + 1);
            if let Some((session, event)) = login {
                batch.secrets.extend(session.secrets);
                batch.events.extend(session.events);
                batch.session = session.session;
                events.push(event);
            }
            events.extend(step.events.iter().map(payloads::engine_event));
            let counts = Counts {
                received: step.messages_in,
                sent: step.messages_out,
            };
            (batch, events, counts)
        });
        self.deliver(&mut step);
        Ok(Prepared {
            changes: std::mem::take(&mut step.changes),
            committed_replies: std::mem::take(&mut step.committed_replies),
            commit,
            output: Output {
                transmit: step.transmit,
                push_name: step.push_name,
                history: step.history,
                snapshots: step.app_state_snapshots,
            },
        })
    }

    /// After the commit (if the step had one): the caches follow it, or
    /// everything of the step is abandoned.
    pub(super) fn finish(
        &mut self,
        prepared: Prepared,
        committed: Option<Result<Vec<EventRecord>, StoreError>>,
    ) -> Result<Output, StepFailure> {
        if let Some(Err(e)) = committed {
            let failure = StepFailure::Store(e);
            self.abandon(&failure);
            return Err(failure);
        }
        if let Some(keys) = &mut self.keys {
            keys.apply(prepared.changes);
        }
        self.reply(prepared.committed_replies);
        Ok(prepared.output)
    }

    /// A step failed: cached keys may be ahead of the store, and every
    /// waiting caller learns the connection is going away.
    pub(super) fn abandon(&mut self, failure: &StepFailure) {
        if let Some(keys) = &mut self.keys {
            keys.forget();
        }
        self.fail_all(&failure.to_string());
    }
}

/// A step whose engine part ran, waiting for its commit.
pub(super) struct Prepared {
    changes: Vec<crate::wa::messaging::Change>,
    /// Answered once the commit landed (a failed one fails their callers
    /// with the rest, see [`Core::abandon`]).
    committed_replies: Vec<(ReplyTo, Result<crate::wa::messaging::Sent, SendError>)>,
    /// The batch and events to commit, if any, and the messages they record.
    pub(super) commit: Option<(Batch, Vec<Payload>, Counts)>,
    output: Output,
}

/// A session's step as the pipeline runs it.
pub(super) struct SessionStep {
    core: Option<Box<Core>>,
    input: Option<Input>,
    creds: Arc<Credentials>,
    id: SessionId,
    now_ms: u64,
    prepared: Option<Result<Prepared, StepFailure>>,
    done: oneshot::Sender<(Box<Core>, Result<Output, StepFailure>)>,
}

impl SessionStep {
    /// The step of session `id` for `input`; the engine and the outcome go
    /// back on `done`.
    pub(super) fn new(
        core: Box<Core>,
        input: Input,
        creds: Arc<Credentials>,
        id: SessionId,
        now_ms: u64,
        done: oneshot::Sender<(Box<Core>, Result<Output, StepFailure>)>,
    ) -> Box<Self> {
        Box::new(Self {
            core: Some(core),
            input: Some(input),
            creds,
            id,
            now_ms,
            prepared: None,
            done,
        })
    }
}

impl Job for SessionStep {
    fn prepare(&mut self, log: &EventLog) -> Option<Commit> {
        let (Some(core), Some(input)) = (self.core.as_mut(), self.input.take()) else {
            return None;
        };
        let _span = tracing::info_span!("session", id = %self.id).entered();
        let mut prepared = core.prepare(input, &self.creds, log, &self.id, self.now_ms);
        let commit = match &mut prepared {
            Ok(p) => p.commit.take().map(|(batch, events, counts)| {
                (self.id.clone(), batch, events, self.now_ms, counts)
            }),
            Err(_) => None,
        };
        self.prepared = Some(prepared);
        commit
    }

    fn finish(self: Box<Self>, committed: Option<Result<Vec<EventRecord>, StoreError>>) {
        let SessionStep {
            core,
            prepared,
            done,
            ..
        } = *self;
        let (Some(mut core), Some(prepared)) = (core, prepared) else {
            return;
        };
        let output = match prepared {
            Ok(prepared) => core.finish(prepared, committed),
            Err(e) => {
                core.abandon(&e);
                Err(e)
            }
        };
        let _ = done.send((core, output));
    }
}
