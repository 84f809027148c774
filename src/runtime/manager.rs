//! The session registry: creates, restores, limits and stops session actors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::store::{SessionId, SessionRecord, StoreError};
use crate::wa::conn::ClientConfig;

use super::backoff::{Backoff, Pacer};
use super::events::EventLog;
use super::messaging::{OutgoingText, SendError, Sent};
use super::now_ms;
use super::session::{Command, QrInfo, SessionActor, SessionHandle, SessionState, SessionStatus};

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Websocket URL of the chat server.
    pub wa_url: String,
    /// Protocol settings (root key, device info, timers).
    pub client: ClientConfig,
    /// Sessions that may be online at once.
    pub max_sessions: usize,
    /// Consecutive failed reconnects before a session gives up.
    pub max_reconnect_attempts: u32,
    pub backoff: Backoff,
    /// Handshakes per second across all sessions.
    pub handshakes_per_second: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            wa_url: "wss://web.whatsapp.com/ws/chat".to_owned(),
            client: ClientConfig::default(),
            max_sessions: 1000,
            max_reconnect_attempts: 10,
            backoff: Backoff::default(),
            handshakes_per_second: 50,
        }
    }
}

/// Errors of registry operations; the API maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("session {0} not found")]
    NotFound(String),
    #[error("session limit reached ({0} sessions online); disconnect one or raise --max-sessions")]
    SessionLimit(usize),
    #[error("{0}")]
    WrongState(String),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Send(#[from] SendError),
}

pub(crate) struct Shared {
    pub(crate) config: RuntimeConfig,
    pub(crate) pacer: Pacer,
}

/// Owns every session actor.
pub struct Manager {
    shared: Arc<Shared>,
    events: EventLog,
    sessions: Mutex<HashMap<SessionId, SessionHandle>>,
    closing: std::sync::atomic::AtomicBool,
    closing_signal: tokio::sync::watch::Sender<bool>,
}

impl Manager {
    pub fn new(config: RuntimeConfig, events: EventLog) -> Self {
        let pacer = Pacer::new(config.handshakes_per_second);
        Self {
            shared: Arc::new(Shared { config, pacer }),
            events,
            sessions: Mutex::new(HashMap::new()),
            closing: std::sync::atomic::AtomicBool::new(false),
            closing_signal: tokio::sync::watch::channel(false).0,
        }
    }

    /// Becomes true when the gateway starts shutting down; long-lived streams
    /// end on it so the server can finish.
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing_signal.subscribe()
    }

    pub fn events(&self) -> &EventLog {
        &self.events
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, SessionHandle>> {
        // A panic while holding this lock leaves the map itself consistent.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, id: &SessionId) -> Result<SessionHandle, RuntimeError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    fn online_count(&self) -> usize {
        self.lock()
            .values()
            .filter(|h| {
                matches!(
                    h.status.borrow().state,
                    SessionState::Connecting | SessionState::QrReady | SessionState::Connected
                )
            })
            .count()
    }

    fn check_open(&self) -> Result<(), RuntimeError> {
        if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(RuntimeError::ShuttingDown);
        }
        Ok(())
    }

    /// Loads every stored session and reconnects those that were online.
    pub async fn restore(&self) -> Result<usize, RuntimeError> {
        let store = self.events.store().clone();
        let records = tokio::task::spawn_blocking(move || store.sessions())
            .await
            .map_err(|e| RuntimeError::WrongState(format!("store task: {e}")))??;
        let mut restored = 0;
        for record in records {
            let online = record.desired_online && !record.logged_out;
            let handle = self.spawn(record);
            if online {
                let _ = handle.commands.send(Command::Connect).await;
                restored += 1;
            }
        }
        info!(restored, "sessions restored");
        Ok(restored)
    }

    fn spawn(&self, record: SessionRecord) -> SessionHandle {
        let id = record.id.clone();
        let handle = SessionActor::spawn(self.shared.clone(), self.events.clone(), record);
        self.lock().insert(id, handle.clone());
        handle
    }

    /// Creates the session if new and starts connecting it; idempotent.
    pub async fn init(
        &self,
        id: SessionId,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<SessionStatus, RuntimeError> {
        self.check_open()?;
        let existing = self.lock().get(&id).cloned();
        let handle = match existing {
            Some(handle) => {
                let state = handle.status.borrow().state;
                let online = matches!(
                    state,
                    SessionState::Connecting | SessionState::QrReady | SessionState::Connected
                );
                if online {
                    return Ok(handle.status.borrow().clone());
                }
                if self.online_count() >= self.shared.config.max_sessions {
                    return Err(RuntimeError::SessionLimit(self.shared.config.max_sessions));
                }
                handle
            }
            None => {
                if self.online_count() >= self.shared.config.max_sessions {
                    return Err(RuntimeError::SessionLimit(self.shared.config.max_sessions));
                }
                let mut record = SessionRecord::new(id.clone(), now_ms() as i64);
                record.metadata = metadata;
                let store = self.events.store().clone();
                let rec = record.clone();
                tokio::task::spawn_blocking(move || store.put_session(&rec))
                    .await
                    .map_err(|e| RuntimeError::WrongState(format!("store task: {e}")))??;
                self.spawn(record)
            }
        };
        let mut status = handle.status.clone();
        handle
            .commands
            .send(Command::Connect)
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        // Report the state after the actor took the command.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while !matches!(
                status.borrow_and_update().state,
                SessionState::Connecting | SessionState::QrReady | SessionState::Connected
            ) {
                if status.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        let current = status.borrow().clone();
        Ok(current)
    }

    pub fn status(&self, id: &SessionId) -> Result<SessionStatus, RuntimeError> {
        Ok(self.handle(id)?.status.borrow().clone())
    }

    /// The QR currently shown, or why there is none.
    pub fn qr(&self, id: &SessionId) -> Result<QrInfo, RuntimeError> {
        let status = self.status(id)?;
        match (status.state, status.qr) {
            (SessionState::QrReady, Some(qr)) => Ok(qr),
            (SessionState::Connected, _) => Err(RuntimeError::WrongState(format!(
                "session {id} is already connected; no QR code is needed"
            ))),
            (state, _) => Err(RuntimeError::WrongState(format!(
                "session {id} has no QR code now (state {state:?}); call Init and wait for a QR event"
            ))),
        }
    }

    pub fn list(&self) -> Vec<SessionStatus> {
        let mut all: Vec<SessionStatus> = self
            .lock()
            .values()
            .map(|h| h.status.borrow().clone())
            .collect();
        all.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        all
    }

    /// Sends a text and waits for the server's ack.
    pub async fn send(&self, id: &SessionId, text: OutgoingText) -> Result<Sent, RuntimeError> {
        self.check_open()?;
        let handle = self.handle(id)?;
        let (reply, answer) = oneshot::channel();
        handle
            .commands
            .send(Command::Send { text, reply })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        // The actor answers every send; a dropped reply means it stopped.
        let sent = answer.await.map_err(|_| RuntimeError::ShuttingDown)??;
        Ok(sent)
    }

    /// Closes the connection (keeping credentials) or logs out.
    pub async fn disconnect(
        &self,
        id: &SessionId,
        logout: bool,
    ) -> Result<SessionStatus, RuntimeError> {
        self.check_open()?;
        let handle = self.handle(id)?;
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
        let status = handle.status.borrow().clone();
        Ok(status)
    }

    /// Stops every session cleanly (sockets closed, state flushed).
    pub async fn shutdown(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.closing_signal.send_replace(true);
        let handles: Vec<SessionHandle> = self.lock().values().cloned().collect();
        for h in &handles {
            let _ = h.commands.send(Command::Shutdown).await;
        }
        for h in handles {
            // The actor drops its sender when it exits.
            let mut status = h.status.clone();
            if tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while status.changed().await.is_ok() {}
            })
            .await
            .is_err()
            {
                warn!(session = %status.borrow().id, "session did not stop in time");
            }
        }
    }
}
