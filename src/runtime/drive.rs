//! One connection of a session actor: the loop that reads the socket,
//! hands what it reads to the protocol core and the messenger (stanzas
//! read together go to the messenger together), writes what they queue,
//! and takes commands meanwhile; and what the actor does with each event
//! of the connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, info, warn};

use crate::store::Batch;
use crate::wa::conn::{CloseReason, Connection, Event, Recovery};

use super::app_state::SnapshotQueue;
use super::history::{HistoryContext, HistoryQueue};
use super::messaging::MediaCommand;
use super::payloads;
use super::session::{next_or_deferred, Command, Ended, SessionActor};
use super::status::{phone_of, LinkCodeInfo, QrInfo, SessionState};
use super::{now_ms, socket};

/// Websocket messages taken in one go before their stanzas are processed.
const MAX_READS_PER_STEP: usize = 64;
/// Queued sends processed in one step.
const MAX_SENDS_PER_STEP: usize = 64;

impl SessionActor {
    /// `socket` and `conn` are boxed: an async fn keeps its arguments
    /// besides its locals, and every session's task is sized for them.
    pub(super) async fn drive(
        &mut self,
        socket: Box<socket::Socket>,
        mut conn: Box<Connection>,
    ) -> Ended {
        let (mut sink, mut stream) = socket.split();
        let mut pending_disconnect: Option<(bool, oneshot::Sender<()>)> = None;
        let mut shutting_down = false;
        let mut history = HistoryQueue::default();
        let mut snapshots = SnapshotQueue::default();
        // A Send or media step that failed (e.g. the store was unreachable):
        // the connection closes and the session reconnects, as for a failed
        // inbound step; it is not a stop the caller asked for.
        let mut step_failed: Option<CloseReason> = None;
        let ended = loop {
            if let Some(reason) = step_failed.take() {
                break reason;
            }
            // Events first: persistence must precede the frames queued with
            // them. Consecutive stanzas go to the messenger together, so
            // everything read at once is committed at once.
            let mut failed = None;
            let mut stanzas = Vec::new();
            loop {
                let event = conn.poll_event();
                let flush = !matches!(event, Some(Event::Stanza(_)));
                if flush && !stanzas.is_empty() {
                    let nodes = std::mem::take(&mut stanzas);
                    if let Err(e) = self.messenger.on_stanzas(nodes, &mut conn, now_ms()).await {
                        failed = Some(e.close_reason(""));
                        break;
                    }
                    history.extend(self.messenger.take_history());
                    snapshots.extend(self.messenger.take_snapshots());
                    if let Some(name) = self.messenger.take_push_name() {
                        if let Err(e) = self.save_push_name(name).await {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match event {
                    Some(Event::Stanza(node)) => stanzas.push(node),
                    Some(event) => {
                        if let Err(e) = self.handle_event(event, &mut conn).await {
                            failed = Some(e);
                            break;
                        }
                    }
                    None => break,
                }
            }
            if let Some(reason) = failed {
                break self.closing(&mut conn, reason);
            }
            // A failure here ends the connection with its own reason (not
            // as closed by us, which would stop the session).
            if let Err(e) = self.start_history(&mut history, &mut conn).await {
                break self.closing(&mut conn, e);
            }
            if let Err(e) = self.start_snapshot(&mut snapshots, &mut conn).await {
                break self.closing(&mut conn, e);
            }
            // Every frame of this turn is queued, then written with one
            // flush: a step's receipts and acks leave in one system call.
            let mut socket_error = None;
            let mut queued = false;
            while let Some(frame) = conn.poll_transmit() {
                if let Err(e) = sink.feed(WsMessage::Binary(frame.into())).await {
                    socket_error = Some(e.to_string());
                    break;
                }
                queued = true;
            }
            if queued && socket_error.is_none() {
                if let Err(e) = sink.flush().await {
                    socket_error = Some(e.to_string());
                }
            }
            if let Some(e) = socket_error {
                conn.handle_socket_closed(&e);
            }
            if let Some(reason) = closed_reason(&mut conn) {
                break reason;
            }
            let deadline = match (conn.poll_timeout(), self.messenger.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match deadline {
                    Some(at) => {
                        let wait = at.saturating_sub(now_ms());
                        tokio::time::sleep(Duration::from_millis(wait)).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = stream.next() => {
                    // Take whatever else the socket already holds, so one
                    // step (and one commit) covers it all.
                    let mut next = Some(msg);
                    let mut taken = 0;
                    while let Some(msg) = next.take() {
                        taken += 1;
                        match msg {
                            Some(Ok(WsMessage::Binary(data))) => conn.handle_data(&data, now_ms()),
                            Some(Ok(WsMessage::Close(_))) | None => {
                                conn.handle_socket_closed("closed by server");
                                break;
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                conn.handle_socket_closed(&e.to_string());
                                break;
                            }
                        }
                        if taken < MAX_READS_PER_STEP {
                            next = stream.next().now_or_never();
                        }
                    }
                }
                done = history.finished() => match done {
                    // Its pages are committed: the notification may be receipted.
                    Ok(receipt) => {
                        let _ = conn.send_node(&receipt);
                    }
                    Err(e) => warn!(session = %self.id, "{e}"),
                },
                (job, blob) = snapshots.finished() => {
                    if let Err(e) = self.messenger.on_snapshot(job, blob, &mut conn, now_ms()).await {
                        step_failed = Some(self.closing(&mut conn, e.close_reason("")));
                    }
                    history.extend(self.messenger.take_history());
                    snapshots.extend(self.messenger.take_snapshots());
                },
                _ = sleep => {
                    let now = now_ms();
                    self.messenger.handle_timeout(now);
                    conn.handle_timeout(now);
                    if let Err(e) = self.messenger.upkeep(&mut conn, now).await {
                        step_failed = Some(self.closing(&mut conn, e.close_reason("")));
                    }
                }
                cmd = next_or_deferred(&mut self.deferred, &mut self.commands), if pending_disconnect.is_none() && !shutting_down => match cmd {
                    None | Some(Command::Shutdown) => {
                        shutting_down = true;
                        conn.shutdown();
                    }
                    Some(Command::Connect { pairing, applied }) => {
                        if self.apply_pairing(pairing, applied) {
                            conn.set_pairing(self.pairing.clone(), now_ms());
                        }
                    }
                    Some(Command::Send { text, reply }) => {
                        // Sends already queued go along: one step, one commit.
                        let mut texts = vec![(*text, reply)];
                        while texts.len() < MAX_SENDS_PER_STEP {
                            match self.commands.try_recv() {
                                Ok(Command::Send { text, reply }) => texts.push((*text, reply)),
                                Ok(other) => {
                                    self.deferred = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = self.messenger.send(texts, &mut conn, now_ms()).await {
                            step_failed = Some(self.closing(&mut conn, e.close_reason("")));
                        }
                    }
                    Some(Command::Query { iq, reply }) => {
                        self.messenger.query(*iq, reply, &mut conn, now_ms());
                    }
                    Some(Command::Transmit { nodes, reply }) => {
                        self.messenger.transmit(*nodes, reply, &mut conn);
                    }
                    Some(Command::Media(command)) => {
                        if let Err(e) = self.messenger.media(*command, &mut conn, now_ms()).await {
                            step_failed = Some(self.closing(&mut conn, e.close_reason("")));
                        }
                    }
                    Some(Command::Disconnect { logout, done }) => {
                        if logout && conn.logout(now_ms()).is_ok() {
                            pending_disconnect = Some((true, done));
                        } else {
                            pending_disconnect = Some((logout, done));
                            conn.shutdown();
                        }
                    }
                },
            }
        };
        history.stop();
        snapshots.stop();
        self.messenger.connection_lost(&ended.to_string());
        // Close the websocket cleanly; the server may already be gone.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = sink.send(WsMessage::Close(None)).await;
            let _ = sink.close().await;
        })
        .await;
        if shutting_down {
            self.set_state(SessionState::Disconnected, |s| {
                s.last_disconnect_reason = Some("gateway shutting down".into())
            });
            return Ended::Shutdown;
        }
        match pending_disconnect {
            Some((logout, done)) => Ended::Requested {
                logout: logout || matches!(ended, CloseReason::LoggedOut(_)),
                done: Some(done),
                reason: ended,
            },
            None => Ended::Closed(ended),
        }
    }

    /// Starts the next history chunk, when none is being fetched: its
    /// media hosts are asked for now, the rest runs on its own task.
    async fn start_history(
        &mut self,
        history: &mut HistoryQueue,
        conn: &mut Connection,
    ) -> Result<(), CloseReason> {
        let Some(creds) = self.messenger.credentials() else {
            return Ok(());
        };
        let Some(job) = history.next_job() else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        let command = MediaCommand::Conn {
            refresh: false,
            reply,
        };
        self.messenger
            .media(command, conn, now_ms())
            .await
            .map_err(|e| e.close_reason(""))?;
        let ctx = HistoryContext {
            shared: Arc::clone(&self.shared),
            log: self.events.clone(),
            id: self.id.clone(),
            creds,
        };
        history.start(job, answer, ctx);
        Ok(())
    }

    /// Starts fetching the next app-state snapshot, when none is being
    /// fetched: its media hosts are asked for now, the download runs on
    /// its own task.
    async fn start_snapshot(
        &mut self,
        snapshots: &mut SnapshotQueue,
        conn: &mut Connection,
    ) -> Result<(), CloseReason> {
        let Some(job) = snapshots.next_job() else {
            return Ok(());
        };
        let (reply, answer) = oneshot::channel();
        let command = MediaCommand::Conn {
            refresh: false,
            reply,
        };
        self.messenger
            .media(command, conn, now_ms())
            .await
            .map_err(|e| e.close_reason(""))?;
        snapshots.start(job, answer, Arc::clone(&self.shared));
        Ok(())
    }

    /// The account's push name, as its app-state says: kept in the
    /// session's record (sealed at rest with its other personal fields)
    /// and shown by `Status`.
    async fn save_push_name(&mut self, name: String) -> Result<(), CloseReason> {
        if self.record.push_name.as_deref() == Some(name.as_str()) {
            return Ok(());
        }
        self.record.push_name = Some(name.clone());
        let batch = Batch {
            session: Some(self.record.clone()),
            ..Batch::default()
        };
        self.events
            .commit(&self.id, batch, Vec::new(), now_ms())
            .await
            .map_err(|e| CloseReason::StoreFailed(format!("cannot record the push name: {e}")))?;
        self.status.send_modify(|s| s.push_name = Some(name));
        Ok(())
    }

    async fn handle_event(
        &mut self,
        event: Event,
        conn: &mut Connection,
    ) -> Result<(), CloseReason> {
        match event {
            Event::Qr {
                code,
                expires_at_ms,
            } => {
                let qr = QrInfo {
                    code: code.clone(),
                    expires_at_ms,
                };
                self.commit_events(vec![payloads::qr(code, expires_at_ms)])
                    .await
                    .map_err(CloseReason::StoreFailed)?;
                self.set_state(SessionState::QrReady, |s| {
                    s.qr = Some(qr);
                    s.link_code = None;
                });
            }
            Event::LinkCode {
                code,
                expires_at_ms,
            } => {
                let info = LinkCodeInfo {
                    code: code.clone(),
                    expires_at_ms,
                };
                self.commit_events(vec![payloads::link_code(code, expires_at_ms)])
                    .await
                    .map_err(CloseReason::StoreFailed)?;
                self.set_state(SessionState::QrReady, |s| {
                    s.qr = None;
                    s.link_code = Some(info);
                });
            }
            Event::CredentialsChanged => {
                self.messenger.set_credentials(conn.credentials());
                let creds = conn.credentials().clone();
                self.persist_credentials(&creds, Vec::new())
                    .await
                    .map_err(|e| {
                        CloseReason::StoreFailed(format!("cannot persist credentials: {e}"))
                    })?;
            }
            Event::Paired { jid, platform, .. } => {
                info!(session = %self.id, "paired");
                let jid = jid.to_string();
                self.set_state(SessionState::Connecting, |s| {
                    s.qr = None;
                    s.phone = phone_of(&jid);
                    s.jid = Some(jid);
                    s.platform = Some(platform).filter(|p| !p.is_empty());
                });
            }
            Event::PairError(e) => warn!(session = %self.id, "pairing refused: {e}"),
            Event::Connected { jid, lid, .. } => {
                if let Some(started) = self.connect_started.take() {
                    crate::metrics::global()
                        .handshake
                        .observe(started.elapsed());
                }
                let now = now_ms() as i64;
                let jid = jid.to_string();
                self.record.desired_online = true;
                self.record.logged_out = false;
                // Replaced only when changed, here and in the status: the
                // strings of a restored session stay where the restore put
                // them, not among this connection's memory, where after it
                // ends they would keep pages from going back to the system.
                if self.record.jid.as_deref() != Some(jid.as_str()) {
                    self.record.jid = Some(jid.clone());
                }
                self.record.last_connected_at_ms = Some(now);
                let record = self.record.clone();
                let batch = Batch {
                    session: Some(record),
                    ..Batch::default()
                };
                // The live status first: a backend that sees the CONNECTED
                // event and asks Status at once must not read CONNECTING.
                // (Should the commit fail, the connection closes and the
                // status follows.)
                self.set_state(SessionState::Connected, |s| {
                    s.qr = None;
                    if s.jid.as_deref() != Some(jid.as_str()) {
                        s.phone = phone_of(&jid);
                        s.jid = Some(jid.clone());
                    }
                    let lid = lid.map(|l| l.to_non_ad().to_string());
                    if s.lid != lid {
                        s.lid = lid;
                    }
                    s.last_connected_at_ms = Some(now);
                    s.reconnect_attempts = 0;
                });
                // The session row and the CONNECTED event commit with the
                // login's first step (its keys' upkeep): one transaction.
                let event = payloads::connection(SessionState::Connected, String::new(), jid);
                self.messenger
                    .on_connected(conn, now as u64, batch, event)
                    .await
                    .map_err(|e| e.close_reason("cannot record connection"))?;
                // Only now does the connection count as a login that starts
                // the reconnect attempts over (see `online_loop`).
                self.logged_in = true;
                if let Some(failures) = self.store_failures.recovered() {
                    info!(session = %self.id, failures, "the store works again");
                }
                info!(session = %self.id, "connected");
            }
            Event::Stanza(node) => {
                self.messenger
                    .on_stanzas(vec![node], conn, now_ms())
                    .await
                    .map_err(|e| e.close_reason(""))?;
            }
            Event::Closed(_) => {}
        }
        Ok(())
    }
}

impl SessionActor {
    /// Closes `conn` for `reason`, logged (see [`Self::log_closing`]);
    /// gives the reason back.
    fn closing(&mut self, conn: &mut Connection, reason: CloseReason) -> CloseReason {
        self.log_closing(&reason);
        conn.shutdown();
        reason
    }

    /// Logs why the connection closes. A failure of the store is a warning
    /// once per outage; its repeats (one at every reconnect of every session
    /// until the store works again) are debug lines.
    pub(super) fn log_closing(&mut self, reason: &CloseReason) {
        if matches!(reason, CloseReason::StoreFailed(_)) && !self.store_failures.failed() {
            debug!(session = %self.id, "closing: {reason}");
        } else {
            warn!(session = %self.id, "closing: {reason}");
        }
    }

    /// Logs how a connection ended and what follows; like
    /// [`Self::log_closing`], a failing store's repeats are debug lines.
    pub(super) fn log_ended(&self, reason: &CloseReason, recovery: Recovery) {
        let store_failed = matches!(reason, CloseReason::StoreFailed(_));
        if store_failed && self.store_failures.repeated() {
            debug!(session = %self.id, %reason, ?recovery, "connection ended");
        } else {
            info!(session = %self.id, %reason, ?recovery, "connection ended");
        }
    }
}

fn closed_reason(conn: &mut Connection) -> Option<CloseReason> {
    if !conn.is_closed() {
        return None;
    }
    // The Closed event was already drained by the caller; recover its reason.
    conn.close_reason().cloned()
}
