//! The messenger: a session actor's bridge to its message engine
//! (`wa::messaging`). Each input — the stanzas of one socket read, the
//! sends queued at once, a login — is one step: a job for the message
//! pipeline (a login's upkeep runs on the blocking pool), where the engine
//! runs against the store-backed keys and its changes and events are
//! committed together with other sessions' steps; back on the actor, the
//! stanzas the step produced go to the wire. Nothing reaches the wire before
//! its commit (DESIGN §8).
//!
//! Here: the messenger's commands and the hand-off of each step to the
//! pipeline or the blocking pool; the step itself is `step`.

use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::warn;

use crate::proto::gateway::event::Payload;
use crate::store::{Batch, SessionId};
use crate::wa::binary::Node;
use crate::wa::conn::Connection;
use crate::wa::creds::Credentials;
use crate::wa::jid::Jid;
use crate::wa::messaging::{HistoryJob, ReplyTo, SendRequest, SnapshotJob};

pub use crate::wa::messaging::{SendError, Sent};

use super::events::EventLog;
use super::keys::UPKEEP_EVERY_MS;
use super::pipeline::{Job, Lane};
use super::step::{Core, Input, Output, SessionStep, StepFailure};

pub use super::outgoing::OutgoingText;

pub(crate) use super::replies::{MediaCommand, QueryReply, SendReply, TransmitReply};

/// When a session online since `now_ms` next prunes: a day later, plus up
/// to a quarter of a day at random, so the sessions a restart logged in
/// together do not all prune in the same moment a day later.
fn next_upkeep(now_ms: u64) -> u64 {
    let spread = rand::Rng::gen_range(&mut rand::thread_rng(), 0..UPKEEP_EVERY_MS / 4);
    now_ms.saturating_add(UPKEEP_EVERY_MS + spread)
}

pub(crate) struct Messenger {
    id: SessionId,
    log: EventLog,
    pipeline: Lane,
    /// The engine and its caches, from the connection's credentials on;
    /// `None` while offline (an offline session keeps nothing of it) and
    /// while a step runs.
    core: Option<Box<Core>>,
    creds: Option<Arc<Credentials>>,
    next_reply: ReplyTo,
    /// The account's push name from its app-state, for the actor to keep.
    push_name: Option<String>,
    /// History chunks committed steps announced, for the actor to fetch.
    history: Vec<HistoryJob>,
    /// App-state snapshots committed steps asked for, for the actor to fetch.
    snapshots: Vec<SnapshotJob>,
    /// When the connection's bookkeeping is next pruned (`upkeep`).
    upkeep_at: Option<u64>,
}

impl Messenger {
    pub(crate) fn new(id: SessionId, log: EventLog, pipeline: Lane) -> Self {
        Self {
            id,
            log,
            pipeline,
            core: None,
            creds: None,
            next_reply: 0,
            push_name: None,
            history: Vec::new(),
            snapshots: Vec::new(),
            upkeep_at: None,
        }
    }

    /// The account's push name, once a step learned it (taken once).
    pub(crate) fn take_push_name(&mut self) -> Option<String> {
        self.push_name.take()
    }

    /// History chunks to fetch, announced by the steps since the last call.
    pub(crate) fn take_history(&mut self) -> Vec<HistoryJob> {
        std::mem::take(&mut self.history)
    }

    /// App-state snapshots to fetch, asked for since the last call.
    pub(crate) fn take_snapshots(&mut self) -> Vec<SnapshotJob> {
        std::mem::take(&mut self.snapshots)
    }

    /// A snapshot fetched (or why not): one step, one commit.
    pub(crate) async fn on_snapshot(
        &mut self,
        job: SnapshotJob,
        blob: Result<Vec<u8>, String>,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), StepFailure> {
        self.run(Input::Snapshot(Box::new(job), blob), conn, now_ms)
            .await
    }

    /// The credentials of the current connection.
    pub(crate) fn credentials(&self) -> Option<Arc<Credentials>> {
        self.creds.clone()
    }

    /// Forgets everything cached for the connection (the engine and its
    /// key caches); nothing of it is needed while offline.
    pub(crate) fn release(&mut self) {
        if let Some(core) = &mut self.core {
            core.fail_all("the session went offline");
        }
        self.core = None;
        self.creds = None;
        self.history.clear();
        self.snapshots.clear();
        self.upkeep_at = None;
    }

    /// The credentials of the current connection (after login or a change).
    /// The engine starts with them.
    pub(crate) fn set_credentials(&mut self, creds: &Credentials) {
        self.creds = Some(Arc::new(creds.clone()));
        self.core.get_or_insert_with(Core::new);
    }

    /// Logged in: prune and load bookkeeping once, check the prekey stock,
    /// and commit that with `batch` and `event` (the session's row and its
    /// CONNECTED event) in one transaction.
    pub(crate) async fn on_connected(
        &mut self,
        conn: &mut Connection,
        now_ms: u64,
        batch: Batch,
        event: Payload,
    ) -> Result<(), StepFailure> {
        self.set_credentials(conn.credentials());
        self.upkeep_at = Some(next_upkeep(now_ms));
        self.run(Input::Connected(Box::new((batch, event))), conn, now_ms)
            .await
    }

    /// A session that stays online prunes its bookkeeping about every
    /// [`UPKEEP_EVERY_MS`] (see `next_upkeep`), as a login does: otherwise the deduplication
    /// keys, sent messages and idempotency keys of a connection that lasts
    /// for months would all stay. Runs when due (see `poll_timeout`), on
    /// the blocking pool like a login's upkeep.
    pub(crate) async fn upkeep(
        &mut self,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), StepFailure> {
        if self.upkeep_at.is_none_or(|at| at > now_ms) {
            return Ok(());
        }
        self.upkeep_at = Some(next_upkeep(now_ms));
        self.run(Input::Upkeep, conn, now_ms).await
    }

    /// Stanzas read from the socket at once: one step, one commit.
    pub(crate) async fn on_stanzas(
        &mut self,
        nodes: Vec<Node>,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), StepFailure> {
        self.run(Input::Stanzas(nodes), conn, now_ms).await
    }

    /// Sends queued at once; each reply is answered after the server's ack
    /// (or on failure).
    pub(crate) async fn send(
        &mut self,
        texts: Vec<(OutgoingText, SendReply)>,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), StepFailure> {
        let ready = conn.is_connected() && self.creds.is_some() && self.core.is_some();
        if !ready {
            for (_, reply) in texts {
                let _ = reply.send(Err(SendError::NotConnected));
            }
            return Ok(());
        };
        let own = self
            .creds
            .as_ref()
            .and_then(|c| c.account.as_ref().map(|a| a.jid.clone()))
            .unwrap_or_else(Jid::server_jid);
        let requests = texts
            .into_iter()
            .map(|(text, reply)| (text.request(&own, now_ms), reply))
            .collect();
        self.send_requests(requests, conn, now_ms).await
    }

    async fn send_requests(
        &mut self,
        sends: Vec<(SendRequest, SendReply)>,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), StepFailure> {
        let Some(core) = self.core.as_mut() else {
            return Err(StepFailure::Crashed("engine missing".into()));
        };
        let mut requests = Vec::with_capacity(sends.len());
        for (request, reply) in sends {
            self.next_reply += 1;
            core.replies.insert(self.next_reply, reply);
            requests.push((request, self.next_reply));
        }
        self.run(Input::Sends(requests), conn, now_ms).await
    }

    /// A query (`<iq>` built by the caller) goes out now; its answer
    /// reaches `reply` when the server's answer is processed.
    pub(crate) fn query(
        &mut self,
        iq: Node,
        reply: QueryReply,
        conn: &mut Connection,
        now_ms: u64,
    ) {
        let ready = conn.is_connected() && self.creds.is_some();
        let Some(core) = self.core.as_mut().filter(|_| ready) else {
            let _ = reply.send(Err(SendError::NotConnected));
            return;
        };
        self.next_reply += 1;
        core.queries.insert(self.next_reply, reply);
        let step = core.engine.handle_query(iq, self.next_reply, now_ms);
        for node in step.transmit {
            let _ = conn.send_node(&node);
        }
    }

    /// Stanzas the server answers nothing to (read receipts, chat states,
    /// presence) go out now; `reply` learns they were written.
    pub(crate) fn transmit(
        &mut self,
        nodes: Vec<Node>,
        reply: TransmitReply,
        conn: &mut Connection,
    ) {
        let ready = conn.is_connected() && self.creds.is_some();
        if !ready {
            let _ = reply.send(Err(SendError::NotConnected));
            return;
        }
        for node in &nodes {
            if conn.send_node(node).is_err() {
                let _ = reply.send(Err(SendError::NotConnected));
                return;
            }
        }
        let _ = reply.send(Ok(()));
    }

    /// A media flow's request: the media hosts are answered here (from the
    /// engine's cache or by an iq), lookups and sends go through a step.
    pub(crate) async fn media(
        &mut self,
        command: MediaCommand,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), StepFailure> {
        let ready = conn.is_connected() && self.creds.is_some();
        let Some(core) = self.core.as_mut().filter(|_| ready) else {
            command.refuse();
            return Ok(());
        };
        match command {
            MediaCommand::Conn { refresh, reply } => {
                self.next_reply += 1;
                core.media_conns.insert(self.next_reply, reply);
                let mut step = core
                    .engine
                    .handle_media_conn(refresh, self.next_reply, now_ms);
                core.deliver(&mut step);
                for node in step.transmit {
                    let _ = conn.send_node(&node);
                }
                Ok(())
            }
            MediaCommand::Retry {
                target,
                media_key,
                reply,
            } => {
                let Some(creds) = self.creds.clone() else {
                    return Ok(());
                };
                let Some(receipt) = core.engine.media_retry_receipt(&target, &media_key, &creds)
                else {
                    let _ = reply.send(Err(SendError::NotConnected));
                    return Ok(());
                };
                core.media_retries.insert(target.message_id.clone(), reply);
                let _ = conn.send_node(&receipt);
                Ok(())
            }
            MediaCommand::Send { request, reply } => {
                self.send_requests(vec![(*request, reply)], conn, now_ms)
                    .await
            }
            lookup => self.run(Input::Lookup(lookup), conn, now_ms).await,
        }
    }

    /// The connection ended: sends in flight fail (the caller may retry
    /// with its idempotency key).
    pub(crate) fn connection_lost(&mut self, why: &str) {
        if let Some(core) = &mut self.core {
            let mut step = core.engine.handle_disconnected(why);
            core.deliver(&mut step);
            for (_, reply) in core.media_retries.drain() {
                let _ = reply.send(Err(SendError::ConnectionLost(why.to_owned())));
            }
        }
    }

    /// The earliest send deadline, or the next upkeep.
    pub(crate) fn poll_timeout(&self) -> Option<u64> {
        let deadline = self.core.as_ref().and_then(|c| c.engine.poll_timeout());
        match (deadline, self.upkeep_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now_ms: u64) {
        if let Some(core) = &mut self.core {
            let mut step = core.engine.handle_timeout(now_ms);
            core.deliver(&mut step);
        }
    }

    async fn run(
        &mut self,
        input: Input,
        conn: &mut Connection,
        now_ms: u64,
    ) -> Result<(), StepFailure> {
        let Some(creds) = self.creds.clone() else {
            // Not logged in yet: nothing of ours can be in these stanzas.
            return Ok(());
        };
        let Some(core) = self.core.take() else {
            return Err(StepFailure::Crashed("engine missing".into()));
        };
        // Messages and sends go through the shared pipeline (one commit for
        // many sessions); a login's upkeep (and the daily one) reads and
        // prunes at length, so it runs on the blocking pool instead. Either
        // way the step is the same job and answers on the same channel.
        let on_pipeline =
            !matches!(input, Input::Connected(_) | Input::Upkeep) && self.pipeline.is_running();
        let (done, answer) = oneshot::channel();
        let mut job = SessionStep::new(core, input, creds, self.id.clone(), now_ms, done);
        if on_pipeline {
            // The pipeline thread catches the panics of its rounds, so a
            // refused job (the engine with it) does not happen in practice.
            if self.pipeline.submit(job).is_err() {
                return self.after(Err("the message pipeline stopped".into()), conn);
            }
        } else {
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || {
                // One commit, one result.
                let committed = job
                    .prepare(&log)
                    .and_then(|commit| log.commit_many_blocking(vec![commit]).pop());
                job.finish(committed);
            });
        }
        let answered = answer.await;
        self.after(answered.map_err(|e| e.to_string()), conn)
    }

    /// Takes the engine back from a step and writes what it produced.
    fn after(
        &mut self,
        answered: Result<(Box<Core>, Result<Output, StepFailure>), String>,
        conn: &mut Connection,
    ) -> Result<(), StepFailure> {
        let output = match answered {
            Ok((core, result)) => {
                self.core = Some(core);
                result?
            }
            Err(e) => {
                // The engine is lost with its step (its callers' channels
                // close); a fresh one continues from the store.
                warn!(session = %self.id, "message engine step failed: {e}");
                self.core = Some(Core::new());
                return Err(StepFailure::Crashed(e));
            }
        };
        if output.push_name.is_some() {
            self.push_name = output.push_name;
        }
        self.history.extend(output.history);
        self.snapshots.extend(output.snapshots);
        for node in output.transmit {
            // A closed connection loses these; the server redelivers what
            // was not receipted and callers retry what was not acked.
            let _ = conn.send_node(&node);
        }
        Ok(())
    }
}
