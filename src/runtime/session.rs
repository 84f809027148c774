//! One session: an actor task that owns its websocket and protocol
//! connection, persists what the core asks before sending, and reconnects or
//! stops according to how each connection ended.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::OsRng;
use rand::RngCore;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use crate::proto::gateway::event::Payload;
use crate::store::{Batch, SecretOp, SessionId, SessionRecord, StoreError};
use crate::streak::FailureStreak;
use crate::wa::binary::Node;
use crate::wa::conn::{CloseReason, Connection, Pairing, Recovery};
use crate::wa::creds::Credentials;

use super::config::Shared;
use super::events::EventLog;
use super::messaging::{
    MediaCommand, Messenger, OutgoingText, QueryReply, SendError, SendReply, TransmitReply,
};
use super::ownership::Confirmed;
use super::status::{PairingMethod, SessionState, SessionStatus};
use super::{now_ms, payloads, socket};

/// Secret key under which a session's credentials are stored.
pub(crate) const CREDS_KEY: &str = "creds";

/// Requests to a session actor. Kept to three words (boxing what is
/// larger): a command is one slot of the actor's channel, whose blocks hold
/// 32 slots each, the first allocated with the channel for every session.
pub(crate) enum Command {
    /// Start (or keep) connecting; with a pairing method (and an answer
    /// once the actor applied it), a device not paired yet pairs that way.
    Connect {
        pairing: Option<Box<Pairing>>,
        applied: Option<oneshot::Sender<()>>,
    },
    /// Close the connection; with `logout`, unlink the device and erase keys.
    Disconnect {
        logout: bool,
        done: oneshot::Sender<()>,
    },
    /// Send a text; answered after the server's ack.
    Send {
        text: Box<OutgoingText>,
        reply: SendReply,
    },
    /// An `<iq>` for the server (group management and the like), answered
    /// with the server's answer.
    Query { iq: Box<Node>, reply: QueryReply },
    /// Stanzas without an answer (read receipts, chat states, presence),
    /// answered once written to the connection.
    Transmit {
        // One word where a `Vec` would be three (see above).
        #[allow(clippy::box_collection)]
        nodes: Box<Vec<Node>>,
        reply: TransmitReply,
    },
    /// A media flow's request (hosts, lookups, a built message).
    Media(Box<MediaCommand>),
    /// Process shutdown: close cleanly and exit the task.
    Shutdown,
}

/// Handle kept in the registry.
#[derive(Clone)]
pub(crate) struct SessionHandle {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) status: watch::Receiver<SessionStatus>,
}

/// What ended a drive of one connection.
pub(super) enum Ended {
    Closed(CloseReason),
    /// Disconnect was requested (with logout or not).
    Requested {
        logout: bool,
        done: Option<oneshot::Sender<()>>,
        reason: CloseReason,
    },
    Shutdown,
    /// Another gateway serves the session now: stop without writing anything.
    Lost,
}

pub(crate) struct SessionActor {
    pub(super) id: SessionId,
    pub(super) shared: Arc<Shared>,
    pub(super) events: EventLog,
    pub(super) commands: mpsc::Receiver<Command>,
    pub(super) status: watch::Sender<SessionStatus>,
    pub(super) record: SessionRecord,
    /// When the current connection attempt opened its socket.
    pub(super) connect_started: Option<std::time::Instant>,
    pub(super) messenger: Messenger,
    /// A command taken while collecting queued sends, handled next.
    pub(super) deferred: Option<Command>,
    /// How the device pairs if it is not paired yet (kept in memory only:
    /// after a restart an unpaired session shows QR codes until an Init
    /// asks otherwise).
    pub(super) pairing: Pairing,
    /// Set when a connection logged in: the reconnect count starts over
    /// after it ends (the limit is for consecutive failures, not for a
    /// session's lifetime).
    pub(super) logged_in: bool,
    /// Connections in a row that ended because the store failed.
    pub(super) store_failures: FailureStreak,
}

impl SessionActor {
    /// Builds the actor; the caller runs the returned future (the registry
    /// keeps it in its `JoinSet` so shutdown can wait for every actor).
    pub(crate) fn spawn(
        shared: Arc<Shared>,
        events: EventLog,
        record: SessionRecord,
    ) -> (SessionHandle, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(16);
        let initial = SessionStatus::from_record(&record);
        crate::metrics::global().session_moved(None, initial.state.metric_index());
        let (status_tx, status_rx) = watch::channel(initial);
        let messenger = Messenger::new(
            record.id.clone(),
            events.clone(),
            shared.pipeline.lane(&record.id),
        );
        let actor = SessionActor {
            id: record.id.clone(),
            shared,
            events,
            commands: rx,
            status: status_tx,
            record,
            connect_started: None,
            messenger,
            deferred: None,
            pairing: Pairing::Qr,
            logged_in: false,
            store_failures: FailureStreak::default(),
        };
        let handle = SessionHandle {
            commands: tx,
            status: status_rx,
        };
        (handle, actor.run())
    }

    async fn run(mut self) {
        loop {
            // Idle: wait for a reason to connect.
            match self.next_command().await {
                None | Some(Command::Shutdown) => return,
                Some(Command::Disconnect { done, .. }) => {
                    let _ = done.send(());
                    continue;
                }
                Some(Command::Send { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                    continue;
                }
                Some(Command::Query { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                    continue;
                }
                Some(Command::Transmit { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                    continue;
                }
                Some(Command::Media(command)) => {
                    command.refuse();
                    continue;
                }
                Some(Command::Connect { pairing, applied }) => {
                    self.apply_pairing(pairing, applied);
                }
            }
            // Boxed: the online loop's future (connect, drive, steps) is
            // most of the actor's; inline, every offline session's task
            // would keep room for it.
            let shutdown = Box::pin(self.online_loop()).await;
            // Offline until told otherwise: the engine's caches (sessions,
            // sender keys, device lists) are dropped, and come back from
            // the store at the next connect.
            self.messenger.release();
            if shutdown {
                return;
            }
        }
    }

    /// Connects and reconnects until told to stop. Returns true on shutdown.
    async fn online_loop(&mut self) -> bool {
        let mut attempts: u32 = 0;
        loop {
            self.set_state(SessionState::Connecting, |_| {});
            let ended = self.connect_once().await;
            // A login starts the attempts over, unless the connection then
            // ended because the store failed: with a full disk every login
            // succeeds and its first commit fails, and the session must
            // back off (and, with a limit, give up) instead of reconnecting
            // at the first step of the backoff forever.
            let store_failed = matches!(ended, Ended::Closed(CloseReason::StoreFailed(_)));
            if std::mem::take(&mut self.logged_in) && !store_failed {
                attempts = 0;
            }
            match ended {
                Ended::Shutdown | Ended::Lost => return true,
                Ended::Requested {
                    logout,
                    done,
                    reason,
                } => {
                    if logout {
                        self.logged_out(&reason).await;
                    } else {
                        self.stopped(&reason, false).await;
                    }
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return false;
                }
                Ended::Closed(reason) => {
                    let recovery = reason.recovery();
                    self.log_ended(&reason, recovery);
                    match recovery {
                        Recovery::LoggedOut => {
                            self.logged_out(&reason).await;
                            return false;
                        }
                        Recovery::Stop => {
                            self.stopped(&reason, false).await;
                            return false;
                        }
                        Recovery::ReconnectNow => {
                            crate::metrics::global()
                                .reconnects
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.note_disconnect(&reason, attempts).await;
                        }
                        Recovery::Reconnect => {
                            crate::metrics::global()
                                .reconnects
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            attempts = attempts.saturating_add(1);
                            let max = self.shared.config.max_reconnect_attempts;
                            if max > 0 && attempts > max {
                                let reason = CloseReason::SocketClosed(format!(
                                    "{reason}; gave up after {} reconnect attempts",
                                    attempts - 1
                                ));
                                self.stopped(&reason, true).await;
                                return false;
                            }
                            self.note_disconnect(&reason, attempts).await;
                            let delay = self.shared.config.backoff.delay(attempts - 1, &mut OsRng);
                            if let Some(stop) = self.wait_or_command(delay).await {
                                return stop;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Sleeps for the backoff while still answering commands. `Some(shutdown)`
    /// when a command ended the online loop.
    async fn wait_or_command(&mut self, delay: Duration) -> Option<bool> {
        tokio::select! {
            _ = tokio::time::sleep(delay) => None,
            cmd = self.next_command() => match cmd {
                None | Some(Command::Shutdown) => Some(true),
                Some(Command::Connect { pairing, applied }) => {
                    self.apply_pairing(pairing, applied);
                    None
                }
                Some(Command::Send { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                    None
                }
                Some(Command::Query { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                    None
                }
                Some(Command::Transmit { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                    None
                }
                Some(Command::Media(command)) => {
                    command.refuse();
                    None
                }
                Some(Command::Disconnect { logout, done }) => {
                    if logout {
                        // Offline: the server cannot be told; keys are erased locally.
                        let reason = CloseReason::LoggedOut("logout requested while offline".into());
                        self.logged_out(&reason).await;
                    } else {
                        self.stopped(&CloseReason::ClientClosed, false).await;
                    }
                    let _ = done.send(());
                    Some(false)
                }
            }
        }
    }

    /// The session's credentials (new ones for a session never paired).
    /// Unreadable ones stop the session; a store failure is retried.
    async fn load_credentials(&mut self) -> Result<Credentials, CloseReason> {
        let store = self.events.store().clone();
        let id = self.id.clone();
        let loaded = tokio::task::spawn_blocking(move || store.secret(&id, CREDS_KEY))
            .await
            .map_err(|e| CloseReason::StoreFailed(format!("store task: {e}")))?;
        match loaded {
            Ok(Some(bytes)) => Credentials::decode(&bytes)
                .map_err(|e| CloseReason::CredentialsUnreadable(e.to_string())),
            Ok(None) => {
                let mut creds = Credentials::generate(&mut OsRng);
                creds.push_name = self.record.push_name.clone().unwrap_or_default();
                self.persist_credentials(&creds, Vec::new())
                    .await
                    .map_err(|e| {
                        CloseReason::StoreFailed(format!("cannot store new credentials: {e}"))
                    })?;
                Ok(creds)
            }
            Err(e) => Err(CloseReason::StoreFailed(format!("credentials: {e}"))),
        }
    }

    pub(super) async fn persist_credentials(
        &mut self,
        creds: &Credentials,
        events: Vec<Payload>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.secrets.push(SecretOp::Put {
            key: CREDS_KEY.to_owned(),
            value: creds.encode(),
        });
        if let Some(account) = &creds.account {
            self.record.jid = Some(account.jid.to_string());
            self.record.platform = Some(account.platform.clone()).filter(|p| !p.is_empty());
        }
        batch.session = Some(self.record.clone());
        self.events
            .commit(&self.id, batch, events, now_ms())
            .await?;
        Ok(())
    }

    async fn connect_once(&mut self) -> Ended {
        // Global pacing of handshakes, before anything is read from the store: a restart of
        // thousands of sessions reads their credentials at the handshake rate instead of all
        // at once. Commands still get through.
        let shared = Arc::clone(&self.shared);
        tokio::select! {
            _ = shared.pacer.acquire() => {}
            cmd = self.next_command() => return self.command_while_offline(cmd),
        }
        let creds = match self.load_credentials().await {
            Ok(c) => c,
            Err(why) => {
                self.log_closing(&why);
                return Ended::Closed(why);
            }
        };
        // With gateways sharing the store, only the lease holder connects: a
        // former owner connecting would kick the new one off (`replaced`).
        if let Some(ownership) = self.shared.ownership.clone() {
            match ownership.confirm(&self.id).await {
                Confirmed::Owned => {}
                Confirmed::Lost => return Ended::Lost,
                Confirmed::Unknown(why) => {
                    return Ended::Closed(CloseReason::SocketClosed(why));
                }
            }
        }
        let url = self.shared.config.wa_url_for(self.id.as_str()).to_owned();
        self.connect_started = Some(std::time::Instant::now());
        // Boxed: the connect future (TLS, websocket handshake) is large and
        // lives only until the socket is open; inline it would size every
        // session's task for good.
        let socket = tokio::select! {
            s = tokio::time::timeout(Duration::from_secs(20), Box::pin(socket::connect(&url))) => s,
            cmd = self.next_command() => return self.command_while_offline(cmd),
        };
        let socket = match socket {
            Ok(Ok(s)) => s,
            Ok(Err(why)) => return Ended::Closed(CloseReason::SocketClosed(why)),
            Err(_) => return Ended::Closed(CloseReason::Timeout("websocket connect")),
        };
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let conn = Connection::new(self.shared.config.client.clone(), creds, seed, now_ms())
            .with_pairing(self.pairing.clone());
        self.drive(socket, Box::new(conn)).await
    }

    /// The next command that needs the actor's state; sends are refused
    /// at once while there is no logged-in connection.
    async fn next_command(&mut self) -> Option<Command> {
        loop {
            match next_or_deferred(&mut self.deferred, &mut self.commands).await {
                Some(Command::Send { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                }
                Some(Command::Query { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                }
                Some(Command::Transmit { reply, .. }) => {
                    let _ = reply.send(Err(SendError::NotConnected));
                }
                Some(Command::Media(command)) => command.refuse(),
                other => return other,
            }
        }
    }

    fn command_while_offline(&mut self, cmd: Option<Command>) -> Ended {
        match cmd {
            None | Some(Command::Shutdown) => Ended::Shutdown,
            Some(Command::Send { reply, .. }) => {
                let _ = reply.send(Err(SendError::NotConnected));
                Ended::Closed(CloseReason::SocketClosed("send while offline".into()))
            }
            Some(Command::Query { reply, .. }) => {
                let _ = reply.send(Err(SendError::NotConnected));
                Ended::Closed(CloseReason::SocketClosed("query while offline".into()))
            }
            Some(Command::Transmit { reply, .. }) => {
                let _ = reply.send(Err(SendError::NotConnected));
                Ended::Closed(CloseReason::SocketClosed("stanza while offline".into()))
            }
            Some(Command::Media(command)) => {
                command.refuse();
                Ended::Closed(CloseReason::SocketClosed(
                    "media request while offline".into(),
                ))
            }
            Some(Command::Connect { pairing, applied }) => {
                self.apply_pairing(pairing, applied);
                Ended::Closed(CloseReason::SocketClosed("reconnect requested".into()))
            }
            Some(Command::Disconnect { logout, done }) => Ended::Requested {
                logout,
                done: Some(done),
                reason: if logout {
                    CloseReason::LoggedOut("logout requested while offline".into())
                } else {
                    CloseReason::ClientClosed
                },
            },
        }
    }

    pub(super) async fn commit_events(&mut self, events: Vec<Payload>) -> Result<(), String> {
        self.events
            .commit(&self.id, Batch::default(), events, now_ms())
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot record event: {e}"))
    }

    /// A retryable end: report it and keep the session online.
    pub(super) async fn note_disconnect(&mut self, reason: &CloseReason, attempts: u32) {
        let text = reason.text();
        let _ = self
            .commit_events(vec![payloads::connection(
                SessionState::Connecting,
                text.to_string(),
                self.record.jid.clone().unwrap_or_default(),
            )])
            .await;
        self.set_state(SessionState::Connecting, |s| {
            s.qr = None;
            s.reconnect_attempts = attempts;
            s.last_disconnect_reason = Some(text);
        });
    }

    /// The session stops trying; credentials are kept. `keep_online` leaves
    /// it marked for restoration at the next boot.
    async fn stopped(&mut self, reason: &CloseReason, keep_online: bool) {
        self.record.desired_online = keep_online;
        self.settle(SessionState::Disconnected, reason, Vec::new())
            .await;
    }

    /// The device is unlinked: erase every secret and report it.
    async fn logged_out(&mut self, reason: &CloseReason) {
        self.record.desired_online = false;
        self.record.logged_out = true;
        self.settle(SessionState::LoggedOut, reason, vec![SecretOp::DeleteAll])
            .await;
        info!(session = %self.id, "logged out: {reason}");
    }

    /// Records a final state (session row, secret changes and the connection
    /// event in one commit) and publishes it.
    async fn settle(&mut self, state: SessionState, reason: &CloseReason, secrets: Vec<SecretOp>) {
        let text = reason.text();
        let batch = Batch {
            secrets,
            session: Some(self.record.clone()),
            ..Batch::default()
        };
        let event = payloads::connection(
            state,
            text.to_string(),
            self.record.jid.clone().unwrap_or_default(),
        );
        // The live status first: a backend that sees the event and asks
        // Status at once must read the same state.
        self.set_state(state, |s| {
            s.qr = None;
            s.last_disconnect_reason = Some(text);
        });
        if let Err(e) = self
            .events
            .commit(&self.id, batch, vec![event], now_ms())
            .await
        {
            warn!(session = %self.id, ?state, "cannot record the session's state: {e}");
        }
    }

    /// Takes the pairing method an Init asked for; a code shown for
    /// another method or number is withdrawn at once.
    pub(super) fn apply_pairing(
        &mut self,
        pairing: Option<Box<Pairing>>,
        applied: Option<oneshot::Sender<()>>,
    ) -> bool {
        let changed = match pairing.map(|p| *p) {
            Some(pairing) if pairing != self.pairing => {
                let method = match &pairing {
                    Pairing::Qr => PairingMethod::Qr,
                    Pairing::LinkCode(_) => PairingMethod::LinkCode,
                };
                self.pairing = pairing;
                self.status.send_modify(|s| {
                    s.pairing = method;
                    s.link_code = None;
                });
                true
            }
            _ => false,
        };
        if let Some(applied) = applied {
            let _ = applied.send(());
        }
        changed
    }

    pub(super) fn set_state(&self, state: SessionState, update: impl FnOnce(&mut SessionStatus)) {
        self.status.send_modify(|s| {
            if state != SessionState::QrReady {
                s.link_code = None;
            }
            crate::metrics::global()
                .session_moved(Some(s.state.metric_index()), state.metric_index());
            s.state = state;
            update(s);
        });
    }
}

/// The deferred command if there is one, else the next from the channel.
pub(super) async fn next_or_deferred(
    deferred: &mut Option<Command>,
    commands: &mut mpsc::Receiver<Command>,
) -> Option<Command> {
    match deferred.take() {
        Some(cmd) => Some(cmd),
        None => commands.recv().await,
    }
}

#[cfg(test)]
mod tests {
    use super::Command;

    #[test]
    fn a_command_is_three_words() {
        // Every session's channel allocates a block of 32 commands at once.
        assert!(size_of::<Command>() <= 3 * size_of::<usize>());
    }
}
