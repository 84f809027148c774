//! The registry's state and its bookkeeping: which sessions exist, which
//! count against the session limit, and the task set their actors run in.
//! Everything here runs under the registry's lock and never awaits; the
//! manager takes one decision per acquisition.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, Weak};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::store::SessionId;

use super::error::RuntimeError;
use super::session::SessionHandle;
use super::status::{SessionState, SessionStatus};

/// Everything the lock guards.
pub(super) struct Registry {
    pub(super) slots: HashMap<SessionId, Slot>,
    /// Slots with `claimed` set: what the session limit counts.
    pub(super) claimed: usize,
    /// One task per session actor.
    pub(super) actors: JoinSet<()>,
    pub(super) closing: bool,
}

pub(super) struct Slot {
    pub(super) entry: Entry,
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

pub(super) enum Entry {
    /// A new session whose record is being written. Waiters are woken when
    /// the creator drops the sender, whether it succeeded or not.
    Creating(watch::Receiver<()>),
    Running(SessionHandle),
}

/// What Init does after its one decision under the lock.
pub(super) enum InitStep {
    /// Already online: report it.
    Online(SessionHandle),
    /// Another caller is creating this session: wait, then decide again.
    Wait(watch::Receiver<()>),
    /// Counted against the limit: tell the actor to connect.
    Connect(SessionHandle),
    /// A place is reserved for a new session: write it, start it.
    Create(watch::Sender<()>),
}

pub(super) fn is_online(state: SessionState) -> bool {
    match state {
        SessionState::Connecting | SessionState::QrReady | SessionState::Connected => true,
        SessionState::Disconnected | SessionState::LoggedOut => false,
    }
}

pub(super) fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // Every critical section leaves the registry consistent before anything
    // that can panic, so a poisoned lock still guards valid data.
    registry.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub(super) fn running(&self, id: &SessionId) -> Result<SessionHandle, RuntimeError> {
        match self.slots.get(id).map(|s| &s.entry) {
            Some(Entry::Running(handle)) => Ok(handle.clone()),
            Some(Entry::Creating(_)) | None => Err(RuntimeError::NotFound(id.clone())),
        }
    }

    /// Brings the limit accounting up to date with the session's last
    /// published state, and returns that state (`None` while it is created).
    pub(super) fn sync(&mut self, id: &SessionId) -> Option<SessionState> {
        let slot = self.slots.get_mut(id)?;
        let (state, delta) = slot.observe()?;
        self.claimed = self.claimed.saturating_add_signed(delta);
        Some(state)
    }

    pub(super) fn sync_all(&mut self) {
        let delta: isize = self
            .slots
            .values_mut()
            .filter_map(|slot| slot.observe().map(|(_, d)| d))
            .sum();
        self.claimed = self.claimed.saturating_add_signed(delta);
    }

    pub(super) fn release(&mut self, id: &SessionId) {
        if let Some(slot) = self.slots.get_mut(id) {
            if slot.claimed {
                slot.claimed = false;
                self.claimed -= 1;
            }
        }
    }

    /// Removes a session's slot (its actor is told to stop by the caller).
    pub(super) fn forget(&mut self, id: &SessionId) -> Option<SessionHandle> {
        let slot = self.slots.remove(id)?;
        if slot.claimed {
            self.claimed -= 1;
        }
        match slot.entry {
            Entry::Running(handle) => Some(handle),
            Entry::Creating(_) => None,
        }
    }

    /// The one decision of Init.
    pub(super) fn init_step(
        &mut self,
        id: &SessionId,
        max: usize,
    ) -> Result<InitStep, RuntimeError> {
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
    pub(super) fn start(
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
        // Boxed: an async fn's argument and the `join!` it moves into would
        // each hold the whole actor future.
        self.actors
            .spawn(run_actor(registry, id, Box::pin(actor), wake));
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
pub(super) struct Reservation<'a> {
    registry: &'a Mutex<Registry>,
    id: SessionId,
    committed: bool,
    /// Dropped last: waiters wake after the registry was updated.
    _ready: watch::Sender<()>,
}

impl<'a> Reservation<'a> {
    /// Holds the place `init_step` reserved for `id`; `ready` is the sender
    /// it handed out with [`InitStep::Create`].
    pub(super) fn new(
        registry: &'a Mutex<Registry>,
        id: SessionId,
        ready: watch::Sender<()>,
    ) -> Self {
        Self {
            registry,
            id,
            committed: false,
            _ready: ready,
        }
    }

    pub(super) fn id(&self) -> &SessionId {
        &self.id
    }

    /// The session started: its place is no longer a reservation.
    pub(super) fn commit(&mut self) {
        self.committed = true;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Mutex<Registry> {
        Mutex::new(Registry {
            slots: HashMap::new(),
            claimed: 0,
            actors: JoinSet::new(),
            closing: false,
        })
    }

    fn id(s: &str) -> SessionId {
        s.parse().expect("session id")
    }

    #[test]
    fn reservations_count_against_the_limit_and_roll_back() {
        let reg = registry();
        let mut reserved = Vec::new();
        for name in ["a", "b"] {
            match lock(&reg).init_step(&id(name), 2) {
                Ok(InitStep::Create(ready)) => {
                    reserved.push(Reservation::new(&reg, id(name), ready))
                }
                _ => panic!("{name}: a new id under the limit is reserved"),
            }
        }
        assert!(matches!(
            lock(&reg).init_step(&id("c"), 2),
            Err(RuntimeError::SessionLimit(2))
        ));
        // A second caller for a reserved id waits for the creator.
        let waiter = match lock(&reg).init_step(&id("a"), 2) {
            Ok(InitStep::Wait(ready)) => ready,
            _ => panic!("a reserved id makes other callers wait"),
        };
        // The creator gives up (its store write failed, or its caller left).
        drop(reserved.remove(0));
        assert!(waiter.has_changed().is_err(), "the waiter is woken");
        assert_eq!(lock(&reg).claimed, 1);
        assert!(!lock(&reg).slots.contains_key(&id("a")));
        assert!(matches!(
            lock(&reg).init_step(&id("c"), 2),
            Ok(InitStep::Create(_))
        ));
    }

    #[test]
    fn nothing_starts_once_closing() {
        let reg = registry();
        lock(&reg).closing = true;
        assert!(matches!(
            lock(&reg).init_step(&id("a"), 5),
            Err(RuntimeError::ShuttingDown)
        ));
    }
}
