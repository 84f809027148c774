//! Which sessions this gateway serves when several gateways share one store (Redis): a session
//! is served only under a lease claimed in the store, renewed while it is served, and given up
//! on a clean stop. The store fences the writes of a gateway whose lease another one took over
//! (see `Store::claim`); this module makes sure such a gateway also stops *connecting* the
//! session, so two gateways never fight over one device with `replaced` stream errors.
//!
//! The keeper task renews every held lease each third of the TTL and evicts the sessions whose
//! lease was lost, and looks for sessions that should be online but that nobody serves (their
//! owner died and its leases ran out), claiming them while this gateway is under its session
//! limit. With a store only one process opens, none of this runs.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use rand::RngCore;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::store::{Claim, SessionId, SessionRecord, Store, StoreError};

use super::error::RuntimeError;

/// Lease settings of a gateway sharing its store.
#[derive(Clone, Debug)]
pub struct Leases {
    /// How long a lease lasts unless renewed: a dead gateway's sessions are taken over after
    /// at most this long (plus one scan).
    pub ttl: Duration,
    /// The address other gateways and clients reach this one at (its gRPC endpoint); carried
    /// in its owner id so a caller that reached another gateway learns where to go.
    pub advertise: String,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            ttl: Duration::from_secs(8),
            advertise: String::new(),
        }
    }
}

/// The leases this gateway holds.
pub(crate) struct Ownership {
    store: Arc<dyn Store>,
    owner: String,
    ttl: Duration,
    held: Mutex<HashSet<SessionId>>,
    lost: mpsc::UnboundedSender<SessionId>,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<SessionId>>>,
}

/// Whether this gateway may serve a session.
pub(crate) enum Verdict {
    Serve,
    /// Another gateway does; its owner id (address first).
    Elsewhere(String),
}

/// What [`Ownership::confirm`] found.
pub(crate) enum Confirmed {
    Owned,
    /// Another gateway serves it: stop for good.
    Lost,
    /// The store could not say: try again later.
    Unknown(String),
}

impl Ownership {
    /// `None` unless the store is shared.
    pub(crate) fn for_store(store: &Arc<dyn Store>, leases: &Leases) -> Option<Arc<Self>> {
        if !store.is_shared() {
            return None;
        }
        let mut nonce = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let owner = format!("{}#{}", leases.advertise, hex::encode(nonce));
        let (lost, lost_rx) = mpsc::unbounded_channel();
        info!(%owner, ttl = ?leases.ttl, "sessions are served under leases in the shared store");
        Some(Arc::new(Ownership {
            store: Arc::clone(store),
            owner,
            ttl: leases.ttl,
            held: Mutex::default(),
            lost,
            lost_rx: Mutex::new(Some(lost_rx)),
        }))
    }

    fn held(&self) -> MutexGuard<'_, HashSet<SessionId>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn holds(&self, id: &SessionId) -> bool {
        self.held().contains(id)
    }

    /// Claims `id` (idempotent while held).
    pub(crate) async fn claim(&self, id: &SessionId) -> Result<Verdict, StoreError> {
        let store = Arc::clone(&self.store);
        let owner = self.owner.clone();
        let ttl = self.ttl;
        let session = id.clone();
        let claim = tokio::task::spawn_blocking(move || store.claim(&session, &owner, ttl))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))??;
        Ok(match claim {
            Claim::Granted { .. } => {
                self.held().insert(id.clone());
                Verdict::Serve
            }
            Claim::Held { owner, .. } => {
                self.held().remove(id);
                Verdict::Elsewhere(owner)
            }
        })
    }

    /// Claims `id` for an API call that is about to serve it here.
    pub(crate) async fn claim_for_call(&self, id: &SessionId) -> Result<(), RuntimeError> {
        match self.claim(id).await? {
            Verdict::Serve => Ok(()),
            Verdict::Elsewhere(owner) => Err(RuntimeError::OwnedElsewhere {
                id: id.clone(),
                address: address_of(&owner).to_owned(),
            }),
        }
    }

    /// Before (re)connecting a session: true while this gateway still owns it. A session found
    /// owned elsewhere is reported to the keeper, which evicts it.
    pub(crate) async fn confirm(&self, id: &SessionId) -> Confirmed {
        match self.claim(id).await {
            Ok(Verdict::Serve) => Confirmed::Owned,
            Ok(Verdict::Elsewhere(owner)) => {
                warn!(session = %id, %owner, "another gateway serves this session now; stopping here");
                let _ = self.lost.send(id.clone());
                Confirmed::Lost
            }
            // The store is unreachable: connecting would risk two owners; the connect is
            // retried with the session's backoff.
            Err(e) => Confirmed::Unknown(format!("cannot confirm the session's lease: {e}")),
        }
    }

    /// Gives up every lease (clean shutdown), so other gateways take the sessions at once.
    pub(crate) async fn release_all(&self) {
        let ids: Vec<SessionId> = self.held().drain().collect();
        let store = Arc::clone(&self.store);
        let owner = self.owner.clone();
        let count = ids.len();
        let released = tokio::task::spawn_blocking(move || {
            ids.iter()
                .filter_map(|id| store.release(id, &owner).err())
                .count()
        })
        .await
        .unwrap_or(count);
        if released > 0 {
            warn!(
                failed = released,
                "some leases could not be released; they lapse by themselves"
            );
        } else {
            info!(count, "leases released");
        }
    }

    /// Renews every held lease; returns the sessions whose lease was lost.
    async fn renew(&self) -> Result<Vec<SessionId>, StoreError> {
        let ids: Vec<SessionId> = self.held().iter().cloned().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let store = Arc::clone(&self.store);
        let owner = self.owner.clone();
        let ttl = self.ttl;
        let (ids, kept) = tokio::task::spawn_blocking(move || {
            let kept = store.renew(&ids, &owner, ttl);
            (ids, kept)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?;
        let kept = kept?;
        let lost: Vec<SessionId> = ids
            .into_iter()
            .zip(kept)
            .filter(|(_, kept)| !kept)
            .map(|(id, _)| id)
            .collect();
        let mut held = self.held();
        for id in &lost {
            held.remove(id);
        }
        Ok(lost)
    }

    /// Runs the keeper until `host` is gone: renewals, evictions, takeovers.
    pub(crate) async fn keep(self: Arc<Self>, host: Weak<dyn Host>) {
        let Some(mut lost_rx) = self
            .lost_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let renew_every = self.ttl / 3;
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scan = tokio::time::interval(self.ttl / 4);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    match self.renew().await {
                        Ok(lost) => {
                            let Some(host) = host.upgrade() else { return };
                            for id in lost {
                                warn!(session = %id, "lease lost; the session stops here");
                                host.evict(&id).await;
                            }
                        }
                        // Unreachable store: the sessions keep running on their leases; if
                        // they lapse, the next renewal reports them lost.
                        Err(e) => warn!("cannot renew leases: {e}"),
                    }
                }
                Some(id) = lost_rx.recv() => {
                    self.held().remove(&id);
                    let Some(host) = host.upgrade() else { return };
                    host.evict(&id).await;
                }
                _ = scan.tick() => {
                    let Some(host) = host.upgrade() else { return };
                    if let Err(e) = self.take_over(host.as_ref()).await {
                        warn!("cannot look for sessions to take over: {e}");
                    }
                }
            }
        }
    }

    /// Claims sessions that should be online and that no gateway serves, while there is room.
    async fn take_over(&self, host: &dyn Host) -> Result<(), StoreError> {
        let mut room = host.room();
        if room == 0 {
            return Ok(());
        }
        let store = Arc::clone(&self.store);
        let unserved = tokio::task::spawn_blocking(move || store.unserved())
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))??;
        for id in unserved {
            if room == 0 {
                break;
            }
            if self.holds(&id) || host.serves(&id) {
                continue;
            }
            if let Verdict::Serve = self.claim(&id).await? {
                let store = Arc::clone(&self.store);
                let session = id.clone();
                let record = tokio::task::spawn_blocking(move || store.session(&session))
                    .await
                    .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))??;
                match record {
                    Some(record) if record.desired_online && !record.logged_out => {
                        info!(session = %id, "taking over a session no gateway serves");
                        host.adopt(record).await;
                        room -= 1;
                    }
                    // Changed or deleted meanwhile: not ours to serve.
                    _ => {
                        let store = Arc::clone(&self.store);
                        let owner = self.owner.clone();
                        self.held().remove(&id);
                        let _ =
                            tokio::task::spawn_blocking(move || store.release(&id, &owner)).await;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The address part of an owner id.
pub(crate) fn address_of(owner: &str) -> &str {
    owner.rsplit_once('#').map_or(owner, |(address, _)| address)
}

/// A future the keeper awaits on the registry.
pub(crate) type HostFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the keeper needs of the session registry.
pub(crate) trait Host: Send + Sync {
    /// Places left under the session limit.
    fn room(&self) -> usize;
    /// Whether a session actor runs here for `id`.
    fn serves(&self, id: &SessionId) -> bool;
    /// Starts serving a claimed session.
    fn adopt(&self, record: SessionRecord) -> HostFuture<'_>;
    /// Stops serving a session whose lease was lost, without writing anything.
    fn evict<'a>(&'a self, id: &'a SessionId) -> HostFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_ids_carry_the_address() {
        assert_eq!(address_of("10.0.0.7:50051#a1b2c3"), "10.0.0.7:50051");
        assert_eq!(address_of("no-nonce"), "no-nonce");
        assert_eq!(address_of("[::1]:50051#00"), "[::1]:50051");
    }
}
