//! The session registry: creates, restores, limits and stops session actors.
//!
//! Every decision about the registry (is this id known, is there room under
//! the session limit) is taken in one acquisition of its lock, and nothing
//! awaits while holding it: a new session first takes a reservation, then its
//! record is written, then its actor starts, and the reservation is rolled
//! back if anything in between fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::store::{SessionId, SessionRecord, Store, StoreError};
use crate::wa::binary::Node;

use super::config::{RuntimeConfig, Shared};
use super::error::RuntimeError;
use super::events::EventLog;
use super::messaging::{OutgoingText, SendError, Sent};
use super::now_ms;
use super::ownership::{Host, Verdict};
use super::registry::{is_online, lock, Entry, InitStep, Registry, Reservation};
use super::session::{Command, SessionActor, SessionHandle};
use super::status::{LinkCodeInfo, QrInfo, SessionState, SessionStatus};
use crate::wa::conn::Pairing;

/// What the phone needs to pair a session.
#[derive(Clone, Debug)]
pub enum PairingCode {
    Qr(QrInfo),
    LinkCode(LinkCodeInfo),
}

/// How long shutdown waits for all sessions together to close cleanly.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// How long Init waits for the actor to report that it took the command.
const INIT_SETTLE: Duration = Duration::from_secs(1);
/// How long Init with a phone number waits for the link code: a handshake
/// and the server's answer to the request.
const LINK_CODE_SETTLE: Duration = Duration::from_secs(15);

/// Owns every session actor.
pub struct Manager {
    pub(super) shared: Arc<Shared>,
    pub(super) events: EventLog,
    pub(super) registry: Arc<Mutex<Registry>>,
    closing_signal: watch::Sender<bool>,
}

/// Runs a store call off the async runtime.
pub(super) async fn blocking<T: Send + 'static>(
    store: &Arc<dyn Store>,
    call: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

impl Manager {
    pub fn new(config: RuntimeConfig, events: EventLog) -> Self {
        Self {
            shared: Arc::new(Shared::new(config, &events)),
            events,
            registry: Arc::new(Mutex::new(Registry {
                slots: HashMap::new(),
                claimed: 0,
                actors: JoinSet::new(),
                closing: false,
            })),
            closing_signal: watch::channel(false).0,
        }
    }

    /// Becomes true when the gateway starts shutting down; long-lived streams
    /// end on it so the server can finish.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing_signal.subscribe()
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// The handle of a running session, unless the gateway is closing.
    pub(super) fn open_handle(&self, id: &SessionId) -> Result<SessionHandle, RuntimeError> {
        let reg = self.lock();
        if reg.closing {
            return Err(RuntimeError::ShuttingDown);
        }
        reg.running(id)
    }

    /// Session actors whose task has not ended (one per known session).
    pub fn running_actors(&self) -> usize {
        let mut reg = self.lock();
        while reg.actors.try_join_next().is_some() {}
        reg.actors.len()
    }

    /// Sessions counted against the session limit.
    pub fn online_sessions(&self) -> usize {
        let mut reg = self.lock();
        reg.sync_all();
        reg.claimed
    }

    /// Loads every stored session and reconnects those that were online.
    /// Runs before the API serves, so no Init can race it; sessions restored
    /// online count against the limit even if it was lowered since.
    pub async fn restore(&self) -> Result<usize, RuntimeError> {
        let mut records = blocking(self.events.store(), |s| s.sessions()).await?;
        if let Some(ownership) = &self.shared.ownership {
            // Gateways share the store: only what this one claims is served
            // here (the keeper takes over more as leases of dead gateways
            // lapse), and sessions nobody wants online wait for an Init.
            let mut mine = Vec::new();
            for record in records {
                if !record.desired_online || record.logged_out {
                    continue;
                }
                if self.lock().claimed >= self.shared.config.max_sessions {
                    break;
                }
                if let Verdict::Serve = ownership.claim(&record.id).await? {
                    mine.push(record);
                }
            }
            records = mine;
        }
        let mut connect = Vec::new();
        {
            let mut reg = self.lock();
            if reg.closing {
                return Err(RuntimeError::ShuttingDown);
            }
            for record in records {
                if reg.slots.contains_key(&record.id) {
                    continue;
                }
                let online = record.desired_online && !record.logged_out;
                let (handle, actor) =
                    SessionActor::spawn(self.shared.clone(), self.events.clone(), record);
                if online {
                    connect.push(handle.clone());
                }
                reg.start(Arc::downgrade(&self.registry), handle, actor, online);
            }
            let max = self.shared.config.max_sessions;
            if reg.claimed > max {
                warn!(
                    online = reg.claimed,
                    max, "more sessions were online than the session limit allows"
                );
            }
        }
        let restored = connect.len();
        join_all(connect.iter().map(|h| {
            h.commands.send(Command::Connect {
                pairing: None,
                applied: None,
            })
        }))
        .await;
        info!(restored, "sessions restored");
        Ok(restored)
    }

    /// Creates the session if new and starts connecting it; idempotent.
    /// A device that is not paired yet pairs by `pairing`; for a link
    /// code, the answer waits (a while) for the code.
    pub async fn init(
        &self,
        id: SessionId,
        metadata: BTreeMap<String, String>,
        pairing: Pairing,
    ) -> Result<SessionStatus, RuntimeError> {
        if let Some(ownership) = &self.shared.ownership {
            ownership.claim_for_call(&id).await?;
        }
        let max = self.shared.config.max_sessions;
        let handle = loop {
            let step = self.lock().init_step(&id, max)?;
            match step {
                InitStep::Online(handle) => return Ok(handle.status.borrow().clone()),
                InitStep::Wait(mut ready) => {
                    // Err once the creator is done either way; then decide again.
                    let _ = ready.changed().await;
                }
                InitStep::Connect(handle) => break handle,
                InitStep::Create(ready) => {
                    let reservation = Reservation::new(&self.registry, id.clone(), ready);
                    break self.create(reservation, metadata).await?;
                }
            }
        };
        let mut status = handle.status.clone();
        let link_code = matches!(pairing, Pairing::LinkCode(_));
        let (applied, applied_rx) = oneshot::channel();
        handle
            .commands
            .send(Command::Connect {
                pairing: Some(Box::new(pairing)),
                applied: Some(applied),
            })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        if link_code {
            // Once the actor withdrew any code shown before, the next one
            // is this Init's. A paired session never shows one.
            let _ = tokio::time::timeout(LINK_CODE_SETTLE, async {
                let _ = applied_rx.await;
                let _ = tokio::time::timeout(INIT_SETTLE, status.wait_for(|s| is_online(s.state)))
                    .await;
                let _ = status
                    .wait_for(|s| {
                        s.link_code.is_some()
                            || s.state == SessionState::Connected
                            || !is_online(s.state)
                    })
                    .await;
            })
            .await;
            return Ok(status.borrow().clone());
        }
        // Report the state after the actor took the command.
        let _ = tokio::time::timeout(INIT_SETTLE, async {
            while !is_online(status.borrow_and_update().state) {
                if status.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let current = status.borrow().clone();
        Ok(current)
    }

    /// Writes a new session's record, then starts its actor in the reserved
    /// place; the reservation rolls back on any failure.
    async fn create(
        &self,
        mut reservation: Reservation<'_>,
        metadata: BTreeMap<String, String>,
    ) -> Result<SessionHandle, RuntimeError> {
        let mut record = SessionRecord::new(reservation.id().clone(), now_ms() as i64);
        record.metadata = metadata;
        let row = record.clone();
        blocking(self.events.store(), move |s| s.put_session(&row)).await?;
        {
            let mut reg = self.lock();
            if !reg.closing {
                let (handle, actor) =
                    SessionActor::spawn(self.shared.clone(), self.events.clone(), record);
                reg.start(Arc::downgrade(&self.registry), handle.clone(), actor, true);
                reservation.commit();
                return Ok(handle);
            }
        }
        // The lock is released before the reservation rolls back (it locks).
        drop(reservation);
        Err(RuntimeError::ShuttingDown)
    }

    pub fn status(&self, id: &SessionId) -> Result<SessionStatus, RuntimeError> {
        Ok(self.lock().running(id)?.status.borrow().clone())
    }

    /// The QR currently shown, or why there is none. A session that is
    /// connecting for its first pairing is about to show one: wait for it
    /// (briefly), so Init followed by QrCode, or QrCode on the QR event,
    /// finds it.
    /// What the phone needs to pair the session: its QR code or link code.
    pub async fn qr(&self, id: &SessionId) -> Result<PairingCode, RuntimeError> {
        let mut watch = self.lock().running(id)?.status;
        let _ = tokio::time::timeout(
            INIT_SETTLE,
            watch.wait_for(|s| s.state != SessionState::Connecting || s.jid.is_some()),
        )
        .await;
        let status = watch.borrow().clone();
        match (status.state, status.qr, status.link_code) {
            (SessionState::QrReady, Some(qr), _) => Ok(PairingCode::Qr(qr)),
            (SessionState::QrReady, None, Some(code)) => Ok(PairingCode::LinkCode(code)),
            (SessionState::Connected, ..) => Err(RuntimeError::AlreadyConnected(id.clone())),
            (state, ..) => Err(RuntimeError::NoQrYet {
                id: id.clone(),
                state,
                pairing: status.pairing,
            }),
        }
    }

    pub fn list(&self) -> Vec<SessionStatus> {
        let mut all: Vec<SessionStatus> = self
            .lock()
            .slots
            .values()
            .filter_map(|slot| match &slot.entry {
                Entry::Running(h) => Some(h.status.borrow().clone()),
                Entry::Creating(_) => None,
            })
            .collect();
        all.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        all
    }

    /// Sends a text and waits for the server's ack.
    pub async fn send(&self, id: &SessionId, text: OutgoingText) -> Result<Sent, RuntimeError> {
        let handle = self.open_handle(id)?;
        ready_to_send(&handle.status.borrow())?;
        let (reply, answer) = oneshot::channel();
        handle
            .commands
            .send(Command::Send {
                text: Box::new(text),
                reply,
            })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        // The actor answers every send; a dropped reply means it stopped.
        let answer = answer.await.map_err(|_| RuntimeError::ShuttingDown)?;
        answer.map_err(|e| self.send_failed(&handle, e))
    }

    /// Sends `iq` (built by a `wa` builder, without id) on the session's
    /// connection and answers with the server's answer, an error answer
    /// included: the caller's parser decides what it means.
    pub async fn query(&self, id: &SessionId, iq: Node) -> Result<Node, RuntimeError> {
        let handle = self.open_handle(id)?;
        ready_to_send(&handle.status.borrow())?;
        let (reply, answer) = oneshot::channel();
        handle
            .commands
            .send(Command::Query {
                iq: Box::new(iq),
                reply,
            })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        match answer.await.map_err(|_| RuntimeError::ShuttingDown)? {
            Ok(node) => Ok(node),
            Err(SendError::Timeout) => Err(RuntimeError::QueryTimeout),
            Err(SendError::ConnectionLost(_)) => {
                Err(self.send_failed(&handle, SendError::NotConnected))
            }
            Err(e) => Err(self.send_failed(&handle, e)),
        }
    }

    /// Writes `nodes` (stanzas the server answers nothing to: read
    /// receipts, chat states, presence) on the session's connection.
    pub async fn transmit(&self, id: &SessionId, nodes: Vec<Node>) -> Result<(), RuntimeError> {
        let handle = self.open_handle(id)?;
        ready_to_send(&handle.status.borrow())?;
        let (reply, answer) = oneshot::channel();
        handle
            .commands
            .send(Command::Transmit {
                nodes: Box::new(nodes),
                reply,
            })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        answer
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?
            .map_err(|e| self.send_failed(&handle, e))
    }

    /// What a session's refusal means to the caller. NotConnected: the
    /// state moved between the check before the request and the actor, so
    /// decide again from the state it is in now.
    pub(super) fn send_failed(&self, handle: &SessionHandle, e: SendError) -> RuntimeError {
        match e {
            SendError::NotConnected => {
                if self.lock().closing {
                    return RuntimeError::ShuttingDown;
                }
                let status = handle.status.borrow().clone();
                ready_to_send(&status)
                    .err()
                    .unwrap_or_else(|| RuntimeError::Reconnecting(status.id.clone()))
            }
            other => other.into(),
        }
    }

    /// Closes the connection (keeping credentials) or logs out.
    pub async fn disconnect(
        &self,
        id: &SessionId,
        logout: bool,
    ) -> Result<SessionStatus, RuntimeError> {
        let handle = self.open_handle(id)?;
        let state = handle.status.borrow().state;
        if state == SessionState::LoggedOut && logout {
            return Ok(handle.status.borrow().clone());
        }
        let (done, wait) = oneshot::channel();
        handle
            .commands
            .send(Command::Disconnect { logout, done })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        let _ = wait.await;
        // The actor published its final state before answering: free its
        // place now rather than when its task gets to it.
        self.lock().sync(id);
        let status = handle.status.borrow().clone();
        Ok(status)
    }

    /// Stops every session cleanly (sockets closed, state flushed), all at
    /// once, within one overall budget; actors still running after it are
    /// cut.
    pub async fn shutdown(&self) {
        let (handles, mut actors) = {
            let mut reg = self.lock();
            reg.closing = true;
            let handles: Vec<SessionHandle> = reg
                .slots
                .values()
                .filter_map(|slot| match &slot.entry {
                    Entry::Running(h) => Some(h.clone()),
                    Entry::Creating(_) => None,
                })
                .collect();
            (handles, std::mem::take(&mut reg.actors))
        };
        self.closing_signal.send_replace(true);
        let stop_all = async {
            join_all(handles.iter().map(|h| h.commands.send(Command::Shutdown))).await;
            while actors.join_next().await.is_some() {}
        };
        if tokio::time::timeout(SHUTDOWN_BUDGET, stop_all)
            .await
            .is_err()
        {
            warn!(
                sessions = actors.len(),
                "sessions did not stop within {SHUTDOWN_BUDGET:?}; cutting them"
            );
            actors.shutdown().await;
        }
        // Every session is closed: other gateways may take them at once.
        if let Some(ownership) = &self.shared.ownership {
            ownership.release_all().await;
        }
    }

    /// With a shared store, keeps this gateway's leases (renewals, eviction
    /// of sessions another gateway took, takeover of sessions nobody
    /// serves) until the manager is dropped; nothing otherwise.
    pub fn keep_leases(self: &Arc<Self>) {
        if let Some(ownership) = self.shared.ownership.clone() {
            let weak = Arc::downgrade(self);
            let host: std::sync::Weak<dyn Host> = weak;
            tokio::spawn(ownership.keep(host));
        }
    }
}

/// Whether a session can take a Send now and, if not, whether it comes back
/// by itself (a retry policy may retry UNAVAILABLE) or needs someone to act
/// (FAILED_PRECONDITION).
pub(super) fn ready_to_send(status: &SessionStatus) -> Result<(), RuntimeError> {
    let id = status.id.clone();
    let paired = status.jid.is_some();
    match status.state {
        SessionState::Connected => Ok(()),
        SessionState::Connecting if paired => Err(RuntimeError::Reconnecting(id)),
        SessionState::Connecting | SessionState::QrReady => Err(RuntimeError::NotPaired(id)),
        SessionState::Disconnected if !paired => Err(RuntimeError::NotPaired(id)),
        SessionState::Disconnected => Err(RuntimeError::Stopped {
            id,
            reason: status
                .last_disconnect_reason
                .as_deref()
                .unwrap_or("disconnected")
                .to_owned(),
        }),
        SessionState::LoggedOut => Err(RuntimeError::LoggedOut(id)),
    }
}
