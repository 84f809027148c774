//! The session registry: creates, restores, limits and stops session actors.
//!
//! Every decision about the registry (is this id known, is there room under
//! the session limit) is taken in one acquisition of its lock, and nothing
//! awaits while holding it: a new session first takes a reservation, then its
//! record is written, then its actor starts, and the reservation is rolled
//! back if anything in between fails.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::store::{SessionId, SessionRecord, Store, StoreError};

use super::config::{RuntimeConfig, Shared};
use super::error::RuntimeError;
use super::events::EventLog;
use super::messaging::{OutgoingText, SendError, Sent};
use super::now_ms;
use super::session::{Command, QrInfo, SessionActor, SessionHandle, SessionState, SessionStatus};

/// How long shutdown waits for all sessions together to close cleanly.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// How long Init waits for the actor to report that it took the command.
const INIT_SETTLE: Duration = Duration::from_secs(1);

/// Owns every session actor.
pub struct Manager {
    shared: Arc<Shared>,
    events: EventLog,
    registry: Arc<Mutex<Registry>>,
    closing_signal: watch::Sender<bool>,
}

/// Everything the lock guards.
struct Registry {
    slots: HashMap<SessionId, Slot>,
    /// Slots with `claimed` set: what the session limit counts.
    claimed: usize,
    /// One task per session actor.
    actors: JoinSet<()>,
    closing: bool,
}

struct Slot {
    entry: Entry,
    /// Counted against the limit. Set when the registry asks the session to
    /// connect (before the actor even sees the command, so two callers cannot
    /// both take the last place); afterwards it mirrors whether the session's
    /// last published state is online.
    claimed: bool,
    /// The accounting's view of the actor's status: marked seen under the
    /// lock, so a publication is taken into account exactly once.
    seen: Option<watch::Receiver<SessionStatus>>,
}

impl Slot {
    /// Takes the actor's last published state into account: returns it and
    /// how the count of claimed places changes.
    fn observe(&mut self) -> Option<(SessionState, isize)> {
        let seen = self.seen.as_mut()?;
        // Reading and marking seen in one step: a state published meanwhile
        // is either this one or counted at the next look, never skipped.
        let (state, changed) = {
            let current = seen.borrow_and_update();
            (current.state, current.has_changed())
        };
        // Only a new publication moves the count: a place claimed for a
        // Connect the actor has not taken yet must survive until it does.
        if !changed || is_online(state) == self.claimed {
            return Some((state, 0));
        }
        self.claimed = is_online(state);
        Some((state, if self.claimed { 1 } else { -1 }))
    }
}

enum Entry {
    /// A new session whose record is being written. Waiters are woken when
    /// the creator drops the sender, whether it succeeded or not.
    Creating(watch::Receiver<()>),
    Running(SessionHandle),
}

/// What Init does after its one decision under the lock.
enum InitStep {
    /// Already online: report it.
    Online(SessionHandle),
    /// Another caller is creating this session: wait, then decide again.
    Wait(watch::Receiver<()>),
    /// Counted against the limit: tell the actor to connect.
    Connect(SessionHandle),
    /// A place is reserved for a new session: write it, start it.
    Create(watch::Sender<()>),
}

fn is_online(state: SessionState) -> bool {
    match state {
        SessionState::Connecting | SessionState::QrReady | SessionState::Connected => true,
        SessionState::Disconnected | SessionState::LoggedOut => false,
    }
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // Every critical section leaves the registry consistent before anything
    // that can panic, so a poisoned lock still guards valid data.
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    fn running(&self, id: &SessionId) -> Result<SessionHandle, RuntimeError> {
        match self.slots.get(id).map(|s| &s.entry) {
            Some(Entry::Running(handle)) => Ok(handle.clone()),
            Some(Entry::Creating(_)) | None => Err(RuntimeError::NotFound(id.clone())),
        }
    }

    /// Brings the limit accounting up to date with the session's last
    /// published state, and returns that state (`None` while it is created).
    fn sync(&mut self, id: &SessionId) -> Option<SessionState> {
        let slot = self.slots.get_mut(id)?;
        let (state, delta) = slot.observe()?;
        self.claimed = self.claimed.saturating_add_signed(delta);
        Some(state)
    }

    fn sync_all(&mut self) {
        let delta: isize = self
            .slots
            .values_mut()
            .filter_map(|slot| slot.observe().map(|(_, d)| d))
            .sum();
        self.claimed = self.claimed.saturating_add_signed(delta);
    }

    fn release(&mut self, id: &SessionId) {
        if let Some(slot) = self.slots.get_mut(id) {
            if slot.claimed {
                slot.claimed = false;
                self.claimed -= 1;
            }
        }
    }

    /// The one decision of Init.
    fn init_step(&mut self, id: &SessionId, max: usize) -> Result<InitStep, RuntimeError> {
        if self.closing {
            return Err(RuntimeError::ShuttingDown);
        }
        let state = self.sync(id);
        let full = self.claimed >= max && {
            // The actors' tasks may not have accounted for their latest
            // states yet (a session that just stopped); look before refusing.
            self.sync_all();
            self.claimed >= max
        };
        match self.slots.get_mut(id) {
            Some(slot) => match &slot.entry {
                Entry::Creating(ready) => Ok(InitStep::Wait(ready.clone())),
                Entry::Running(handle) => {
                    let handle = handle.clone();
                    if state.is_some_and(is_online) {
                        return Ok(InitStep::Online(handle));
                    }
                    if !slot.claimed {
                        if full {
                            return Err(RuntimeError::SessionLimit(max));
                        }
                        slot.claimed = true;
                        self.claimed += 1;
                    }
                    Ok(InitStep::Connect(handle))
                }
            },
            None => {
                if full {
                    return Err(RuntimeError::SessionLimit(max));
                }
                let (ready_tx, ready_rx) = watch::channel(());
                self.slots.insert(
                    id.clone(),
                    Slot {
                        entry: Entry::Creating(ready_rx),
                        claimed: true,
                        seen: None,
                    },
                );
                self.claimed += 1;
                Ok(InitStep::Create(ready_tx))
            }
        }
    }

    /// Registers a started actor and runs it in the registry's task set.
    fn start(
        &mut self,
        registry: Weak<Mutex<Registry>>,
        handle: SessionHandle,
        actor: impl Future<Output = ()> + Send + 'static,
        claimed: bool,
    ) {
        let id = handle.status.borrow().id.clone();
        let mut seen = handle.status.clone();
        seen.mark_unchanged();
        let wake = handle.status.clone();
        match self.slots.get_mut(&id) {
            Some(slot) => {
                slot.entry = Entry::Running(handle);
                slot.seen = Some(seen);
                if claimed && !slot.claimed {
                    slot.claimed = true;
                    self.claimed += 1;
                }
            }
            None => {
                self.slots.insert(
                    id.clone(),
                    Slot {
                        entry: Entry::Running(handle),
                        claimed,
                        seen: Some(seen),
                    },
                );
                if claimed {
                    self.claimed += 1;
                }
            }
        }
        self.actors.spawn(run_actor(registry, id, actor, wake));
    }
}

/// Runs one actor and keeps the limit accounting in step with the states it
/// publishes. Both run in the actor's own task, so watching costs no task.
async fn run_actor(
    registry: Weak<Mutex<Registry>>,
    id: SessionId,
    actor: impl Future<Output = ()>,
    mut wake: watch::Receiver<SessionStatus>,
) {
    let account = async {
        // Ends when the actor drops its status sender, i.e. when it exits.
        while wake.changed().await.is_ok() {
            let Some(registry) = registry.upgrade() else {
                return;
            };
            lock(&registry).sync(&id);
        }
    };
    tokio::join!(actor, account);
    if let Some(registry) = registry.upgrade() {
        lock(&registry).release(&id);
    }
}

/// Takes a new session's reservation back unless it was turned into a
/// running session (also when the caller's future is dropped mid-way).
struct Reservation<'a> {
    registry: &'a Mutex<Registry>,
    id: SessionId,
    committed: bool,
    /// Dropped last: waiters wake after the registry was updated.
    _ready: watch::Sender<()>,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let mut reg = lock(self.registry);
        if let Some(slot) = reg.slots.get(&self.id) {
            if matches!(slot.entry, Entry::Creating(_)) {
                reg.release(&self.id);
                reg.slots.remove(&self.id);
            }
        }
    }
}

/// Runs a store call off the async runtime.
async fn blocking<T: Send + 'static>(
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
            shared: Arc::new(Shared::new(config)),
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

    fn lock(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    /// The handle of a running session, unless the gateway is closing.
    fn open_handle(&self, id: &SessionId) -> Result<SessionHandle, RuntimeError> {
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
        let records = blocking(self.events.store(), |s| s.sessions()).await?;
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
        join_all(connect.iter().map(|h| h.commands.send(Command::Connect))).await;
        info!(restored, "sessions restored");
        Ok(restored)
    }

    /// Creates the session if new and starts connecting it; idempotent.
    pub async fn init(
        &self,
        id: SessionId,
        metadata: BTreeMap<String, String>,
    ) -> Result<SessionStatus, RuntimeError> {
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
                    let reservation = Reservation {
                        registry: &self.registry,
                        id: id.clone(),
                        committed: false,
                        _ready: ready,
                    };
                    break self.create(reservation, metadata).await?;
                }
            }
        };
        let mut status = handle.status.clone();
        handle
            .commands
            .send(Command::Connect)
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
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
        let mut record = SessionRecord::new(reservation.id.clone(), now_ms() as i64);
        record.metadata = metadata;
        let row = record.clone();
        blocking(self.events.store(), move |s| s.put_session(&row)).await?;
        {
            let mut reg = self.lock();
            if !reg.closing {
                let (handle, actor) =
                    SessionActor::spawn(self.shared.clone(), self.events.clone(), record);
                reg.start(Arc::downgrade(&self.registry), handle.clone(), actor, true);
                reservation.committed = true;
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
    pub async fn qr(&self, id: &SessionId) -> Result<QrInfo, RuntimeError> {
        let mut watch = self.lock().running(id)?.status;
        let _ = tokio::time::timeout(
            INIT_SETTLE,
            watch.wait_for(|s| s.state != SessionState::Connecting || s.jid.is_some()),
        )
        .await;
        let status = watch.borrow().clone();
        match (status.state, status.qr) {
            (SessionState::QrReady, Some(qr)) => Ok(qr),
            (SessionState::Connected, _) => Err(RuntimeError::AlreadyConnected(id.clone())),
            (state, _) => Err(RuntimeError::NoQrYet {
                id: id.clone(),
                state,
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
            .send(Command::Send { text, reply })
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        // The actor answers every send; a dropped reply means it stopped.
        match answer.await.map_err(|_| RuntimeError::ShuttingDown)? {
            Ok(sent) => Ok(sent),
            // The state moved between the check above and the actor: decide
            // again from the state it is in now.
            Err(SendError::NotConnected) => {
                if self.lock().closing {
                    return Err(RuntimeError::ShuttingDown);
                }
                let status = handle.status.borrow().clone();
                Err(ready_to_send(&status)
                    .err()
                    .unwrap_or_else(|| RuntimeError::Reconnecting(status.id.clone())))
            }
            Err(other) => Err(other.into()),
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
    }
}

/// Whether a session can take a Send now and, if not, whether it comes back
/// by itself (a retry policy may retry UNAVAILABLE) or needs someone to act
/// (FAILED_PRECONDITION).
fn ready_to_send(status: &SessionStatus) -> Result<(), RuntimeError> {
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
                .clone()
                .unwrap_or_else(|| "disconnected".to_owned()),
        }),
        SessionState::LoggedOut => Err(RuntimeError::LoggedOut(id)),
    }
}
