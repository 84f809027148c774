//! The runtime's side of a group of gateways sharing one store (Redis): where a session is
//! served (here, or at another gateway's address) for an API call, starting a session nobody
//! serves so the call can be answered here, readiness, and what the lease keeper needs of the
//! registry (`Host`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::store::{SessionId, SessionRecord};

use super::error::RuntimeError;
use super::manager::{blocking, Manager};
use super::ownership::{address_of, Host, HostFuture, Verdict};
use super::session::{Command, SessionActor};
use super::status::{SessionState, SessionStatus};

/// How long a hand-off waits for the session's connection to close.
const HAND_OFF_WITHIN: Duration = Duration::from_secs(5);

/// Where a session is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// By this gateway (or nowhere, and unknown: the call is answered here).
    Here,
    /// By the gateway reachable at this address.
    At(String),
}

impl Manager {
    /// Whether other gateways share this one's store.
    pub fn is_shared(&self) -> bool {
        self.shared.ownership.is_some()
    }

    /// Whether this gateway should receive traffic: alone, always; in a group, while its
    /// leases and its announcement in the store are renewed.
    pub fn readiness(&self) -> watch::Receiver<bool> {
        match &self.shared.ownership {
            Some(ownership) => ownership.readiness(),
            None => watch::channel(true).1,
        }
    }

    /// Where `id` is served. A stored session that no gateway serves is claimed here and its
    /// actor started (connecting if it should be online), so the call is answered here, as a
    /// gateway alone answers for every stored session.
    pub async fn locate(&self, id: &SessionId) -> Result<Location, RuntimeError> {
        let Some(ownership) = &self.shared.ownership else {
            return Ok(Location::Here);
        };
        if self.lock().slots.contains_key(id) {
            return Ok(Location::Here);
        }
        let elsewhere = |owner: &str| {
            let address = address_of(owner);
            if address == address_of(ownership.owner()) {
                Err(RuntimeError::Moving(id.clone()))
            } else {
                Ok(Location::At(address.to_owned()))
            }
        };
        if let Some(owner) = ownership.owner_of(id).await? {
            if owner != ownership.owner() {
                return elsewhere(&owner);
            }
        }
        if let Verdict::Elsewhere(owner) = ownership.claim(id).await? {
            return elsewhere(&owner);
        }
        let session = id.clone();
        let record = blocking(self.events.store(), move |s| s.session(&session)).await?;
        let Some(record) = record else {
            // Unknown: an Init creates it here, anything else answers NOT_FOUND.
            ownership.let_go(id.clone()).await;
            return Ok(Location::Here);
        };
        if record.desired_online && !record.logged_out {
            if self.room() == 0 {
                ownership.let_go(id.clone()).await;
                return Err(RuntimeError::SessionLimit(self.shared.config.max_sessions));
            }
            self.adopt(record).await;
        } else {
            self.attach_idle(record);
        }
        Ok(Location::Here)
    }

    /// Every stored session, sorted by id, with where it is served: the live status of those
    /// served here, the stored state of the others.
    pub async fn placements(&self) -> Result<Vec<(SessionStatus, Location)>, RuntimeError> {
        let records = blocking(self.events.store(), |s| s.sessions()).await?;
        let ids: Vec<SessionId> = records.iter().map(|r| r.id.clone()).collect();
        let (owners, me) = match &self.shared.ownership {
            Some(ownership) => (
                blocking(self.events.store(), move |s| s.lease_owners(&ids)).await?,
                ownership.owner().to_owned(),
            ),
            None => (vec![None; records.len()], String::new()),
        };
        let mut local: HashMap<SessionId, SessionStatus> =
            self.list().into_iter().map(|s| (s.id.clone(), s)).collect();
        let mut placed: Vec<(SessionStatus, Location)> = records
            .iter()
            .zip(owners)
            .map(|(record, owner)| match (local.remove(&record.id), owner) {
                (Some(live), _) => (live, Location::Here),
                (None, Some(owner)) if owner != me => (
                    SessionStatus::from_record(record),
                    Location::At(address_of(&owner).to_owned()),
                ),
                (None, _) => (SessionStatus::from_record(record), Location::Here),
            })
            .collect();
        placed.extend(local.into_values().map(|live| (live, Location::Here)));
        placed.sort_by(|a, b| a.0.id.as_str().cmp(b.0.id.as_str()));
        Ok(placed)
    }

    /// Starts the actor of a session that is not wanted online, in its stored state.
    fn attach_idle(&self, record: SessionRecord) {
        let mut reg = self.lock();
        if reg.closing || reg.slots.contains_key(&record.id) {
            return;
        }
        let (handle, actor) = SessionActor::spawn(self.shared.clone(), self.events.clone(), record);
        reg.start(Arc::downgrade(&self.registry), handle, actor, false);
    }
}

impl Host for Manager {
    fn room(&self) -> usize {
        let mut reg = self.lock();
        if reg.closing {
            return 0;
        }
        reg.sync_all();
        self.shared.config.max_sessions.saturating_sub(reg.claimed)
    }

    fn serves(&self, id: &SessionId) -> bool {
        self.lock().slots.contains_key(id)
    }

    fn serving(&self) -> usize {
        self.online_sessions()
    }

    fn hand_off<'a>(&'a self, id: &'a SessionId) -> HostFuture<'a, bool> {
        Box::pin(async move {
            let handle = {
                let mut reg = self.lock();
                if reg.closing {
                    return false;
                }
                match reg.running(id) {
                    Ok(handle) if handle.status.borrow().state == SessionState::Connected => {}
                    _ => return false,
                }
                reg.forget(id)
            };
            let Some(handle) = handle else { return false };
            // The connection closes cleanly before the lease goes, so the next owner never
            // meets this one on the server (no `replaced`); the session stays wanted online.
            let _ = handle.commands.send(Command::Shutdown).await;
            if tokio::time::timeout(HAND_OFF_WITHIN, handle.commands.closed())
                .await
                .is_err()
            {
                warn!(session = %id, "session slow to stop for a hand-off; its lease goes anyway (writes are fenced)");
            }
            true
        })
    }

    fn adopt(&self, record: SessionRecord) -> HostFuture<'_> {
        Box::pin(async move {
            let handle = {
                let mut reg = self.lock();
                if reg.closing || reg.slots.contains_key(&record.id) {
                    return;
                }
                let (handle, actor) =
                    SessionActor::spawn(self.shared.clone(), self.events.clone(), record);
                reg.start(Arc::downgrade(&self.registry), handle.clone(), actor, true);
                handle
            };
            let _ = handle
                .commands
                .send(Command::Connect {
                    pairing: None,
                    applied: None,
                })
                .await;
        })
    }

    fn evict<'a>(&'a self, id: &'a SessionId) -> HostFuture<'a> {
        Box::pin(async move {
            let handle = self.lock().forget(id);
            if let Some(handle) = handle {
                // Its socket closes; anything it still tries to write is
                // fenced off by the store.
                let _ = handle.commands.send(Command::Shutdown).await;
            }
        })
    }
}
