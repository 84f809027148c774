//! Which sessions this gateway serves when several gateways share one store (Redis): a session
//! is served only under a lease claimed in the store, renewed while it is served, and given up
//! on a clean stop. The store fences the writes of a gateway whose lease another one took over
//! (see `Store::claim`); this module makes sure such a gateway also stops *connecting* the
//! session, so two gateways never fight over one device with `replaced` stream errors.
//!
//! The keeper task renews every held lease each third of the TTL and evicts the sessions whose
//! lease was lost, and looks for sessions that should be online but that nobody serves (their
//! owner died and its leases ran out), claiming them while this gateway is under its session
//! limit, by the placement rules of `placement`: failover spread over the gateways below their
//! share, a rolling update's sessions sent to the newest gateway, and rebalancing once the
//! group is calm. Each gateway announces itself (start time, sessions served) in the store at
//! every renewal; the announcements are how gateways see each other. With a store only one
//! process opens, none of this runs.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use rand::RngCore;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::store::{Claim, Member, SessionId, SessionRecord, Store, StoreError};
use crate::streak::FailureStreak;

use super::error::RuntimeError;
use super::placement::{self, View};

/// Lease settings of a gateway sharing its store.
#[derive(Clone, Debug)]
pub struct Leases {
    /// How long a lease lasts unless renewed: a dead gateway's sessions are taken over after
    /// at most this long (plus one scan).
    pub ttl: Duration,
    /// The address other gateways and clients reach this one at (its gRPC endpoint); carried
    /// in its owner id so a caller that reached another gateway learns where to go.
    pub advertise: String,
    /// How long the set of gateways must stay unchanged before sessions are rebalanced, and
    /// how long a newly started gateway counts as the newcomer of a rolling update.
    pub settle: Duration,
    /// Sessions handed to other gateways per second at most while rebalancing.
    pub rebalance_per_second: u32,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            ttl: Duration::from_secs(8),
            advertise: String::new(),
            settle: Duration::from_secs(60),
            rebalance_per_second: 20,
        }
    }
}

/// The leases this gateway holds.
pub(crate) struct Ownership {
    store: Arc<dyn Store>,
    owner: String,
    ttl: Duration,
    started_ms: u64,
    settle: Duration,
    rebalance_per_second: u32,
    /// Held leases, with when each was acquired.
    held: Mutex<HashMap<SessionId, Instant>>,
    group: Mutex<Group>,
    /// True while this gateway holds its place in the group: its last announcement and lease
    /// renewal went through (readiness).
    ready: watch::Sender<bool>,
    lost: mpsc::UnboundedSender<SessionId>,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<SessionId>>>,
}

/// What this gateway knows of the others.
struct Group {
    members: Vec<Member>,
    /// The owners of `members`, and since when that set has not changed.
    owners: BTreeSet<String>,
    since: Instant,
    /// Sessions the last scan found unserved, with how many scans in a row did.
    waited: HashMap<SessionId, u32>,
    /// Sessions this gateway handed to others, and when: not taken back for a while.
    shed: HashMap<SessionId, Instant>,
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
            started_ms: super::now_ms(),
            settle: leases.settle,
            rebalance_per_second: leases.rebalance_per_second,
            held: Mutex::default(),
            group: Mutex::new(Group {
                members: Vec::new(),
                owners: BTreeSet::new(),
                since: Instant::now(),
                waited: HashMap::new(),
                shed: HashMap::new(),
            }),
            ready: watch::channel(false).0,
            lost,
            lost_rx: Mutex::new(Some(lost_rx)),
        }))
    }

    fn held(&self) -> MutexGuard<'_, HashMap<SessionId, Instant>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn group(&self) -> MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn holds(&self, id: &SessionId) -> bool {
        self.held().contains_key(id)
    }

    /// This gateway's owner id.
    pub(crate) fn owner(&self) -> &str {
        &self.owner
    }

    /// Follows whether this gateway holds its place in the group (see `ready`).
    pub(crate) fn readiness(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The owner id of the gateway serving `id` now, if any gateway does.
    pub(crate) async fn owner_of(&self, id: &SessionId) -> Result<Option<String>, StoreError> {
        let store = Arc::clone(&self.store);
        let ids = vec![id.clone()];
        blocking(move || store.lease_owners(&ids))
            .await
            .map(|mut owners| owners.pop().flatten())
    }

    /// Claims `id` (idempotent while held).
    pub(crate) async fn claim(&self, id: &SessionId) -> Result<Verdict, StoreError> {
        let store = Arc::clone(&self.store);
        let owner = self.owner.clone();
        let ttl = self.ttl;
        let session = id.clone();
        let claim = blocking(move || store.claim(&session, &owner, ttl)).await?;
        Ok(match claim {
            Claim::Granted { .. } => {
                self.held().entry(id.clone()).or_insert_with(Instant::now);
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
        let ids: Vec<SessionId> = self.held().drain().map(|(id, _)| id).collect();
        let store = Arc::clone(&self.store);
        let owner = self.owner.clone();
        let count = ids.len();
        self.ready.send_replace(false);
        let released = tokio::task::spawn_blocking(move || {
            if let Err(e) = store.withdraw(&owner) {
                warn!("cannot withdraw this gateway's announcement (it lapses by itself): {e}");
            }
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
        let ids: Vec<SessionId> = self.held().keys().cloned().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let store = Arc::clone(&self.store);
        let owner = self.owner.clone();
        let ttl = self.ttl;
        let (ids, kept) = blocking(move || {
            let kept = store.renew(&ids, &owner, ttl)?;
            Ok((ids, kept))
        })
        .await?;
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

    /// Announces this gateway with what it serves; keeps what the others announced.
    async fn announce(&self, serving: usize) -> Result<(), StoreError> {
        let me = Member {
            owner: self.owner.clone(),
            started_ms: self.started_ms,
            serving: serving as u64,
        };
        let store = Arc::clone(&self.store);
        let ttl = self.ttl;
        let members = blocking(move || store.announce(&me, ttl)).await?;
        let owners: BTreeSet<String> = members.iter().map(|m| m.owner.clone()).collect();
        let mut group = self.group();
        if owners != group.owners {
            info!(gateways = owners.len(), "the group of gateways changed");
            group.owners = owners;
            group.since = Instant::now();
        }
        group.members = members;
        Ok(())
    }

    /// Runs the keeper until `host` is gone: renewals and announcements, evictions, takeovers
    /// and rebalancing.
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
        let scan_every = self.ttl / 4;
        let mut scan = tokio::time::interval(scan_every);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // An unreachable store fails every round (every few seconds): the
        // first failure of a streak is a warning, the rest are not logged
        // until the store answers again.
        let mut renewals = FailureStreak::default();
        let mut scans = FailureStreak::default();
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    let renewed = self.renew().await;
                    let Some(host) = host.upgrade() else { return };
                    let announced = self.announce(host.serving()).await;
                    self.ready.send_replace(renewed.is_ok() && announced.is_ok());
                    match (&renewed, &announced) {
                        (Err(e), _) => failed(&mut renewals, "cannot renew leases", e),
                        (Ok(_), Err(e)) => failed(&mut renewals, "cannot announce this gateway", e),
                        (Ok(_), Ok(())) => recovered(&mut renewals, "lease renewals"),
                    }
                    // Unreachable store: the sessions keep running on their leases; if
                    // they lapse, the next renewal reports them lost.
                    if let Ok(lost) = renewed {
                        for id in lost {
                            warn!(session = %id, "lease lost; the session stops here");
                            host.evict(&id).await;
                        }
                    }
                }
                Some(id) = lost_rx.recv() => {
                    self.held().remove(&id);
                    let Some(host) = host.upgrade() else { return };
                    host.evict(&id).await;
                }
                _ = scan.tick() => {
                    let Some(host) = host.upgrade() else { return };
                    match self.take_over(host.as_ref()).await {
                        Ok(()) => recovered(&mut scans, "scans for sessions to take over"),
                        Err(e) => failed(&mut scans, "cannot look for sessions to take over", &e),
                    }
                    if let Err(e) = self.rebalance(host.as_ref(), scan_every).await {
                        warn!("cannot hand sessions over: {e}");
                    }
                }
            }
        }
    }

    /// Claims sessions that should be online and that no gateway serves, as many as the
    /// placement rules give this gateway; those that waited longer, while it has room.
    async fn take_over(&self, host: &dyn Host) -> Result<(), StoreError> {
        let room = host.room();
        let store = Arc::clone(&self.store);
        let unserved = blocking(move || store.unserved()).await?;
        if !unserved.is_empty() {
            // Placement decides on what every gateway serves now, not at the last renewal
            // (a gateway that just stopped must not count).
            if let Err(e) = self.announce(host.serving()).await {
                warn!("cannot announce this gateway: {e}");
            }
        }
        let (waited, fresh) = {
            let mut group = self.group();
            let before = std::mem::take(&mut group.waited);
            group.waited = unserved
                .iter()
                .map(|id| (id.clone(), before.get(id).map_or(1, |n| n + 1)))
                .collect();
            let hold_back = self.ttl * 2;
            group.shed.retain(|_, at| at.elapsed() < hold_back);
            let mut waited = Vec::new();
            let mut fresh = Vec::new();
            for id in unserved {
                if group.shed.contains_key(&id) || self.holds(&id) || host.serves(&id) {
                    continue;
                }
                // Left for two scans by the gateways the rules chose: anyone takes it.
                if group.waited.get(&id).is_some_and(|n| *n > LEFT_FOR) {
                    waited.push(id);
                } else {
                    fresh.push(id);
                }
            }
            let view = View {
                me: &self.owner,
                members: &group.members,
                serving: host.serving(),
                now_ms: super::now_ms(),
            };
            let quota = placement::intake(
                &view,
                room.saturating_sub(waited.len()),
                fresh.len(),
                self.settle,
            );
            fresh.truncate(quota);
            (waited, fresh)
        };
        let mut room = room;
        let mut adopted = 0;
        for id in waited.into_iter().chain(fresh) {
            if room == 0 {
                break;
            }
            if self.adopt(host, id).await? {
                room -= 1;
                adopted += 1;
            }
        }
        if adopted > 0 {
            // The others decide on this gateway's new load at once, not a renewal later.
            if let Err(e) = self.announce(host.serving()).await {
                warn!("cannot announce this gateway: {e}");
            }
        }
        Ok(())
    }

    /// Claims `id` and starts serving it if it still should be online; whether it did.
    async fn adopt(&self, host: &dyn Host, id: SessionId) -> Result<bool, StoreError> {
        if let Verdict::Elsewhere(_) = self.claim(&id).await? {
            return Ok(false);
        }
        let store = Arc::clone(&self.store);
        let session = id.clone();
        let record = blocking(move || store.session(&session)).await?;
        match record {
            Some(record) if record.desired_online && !record.logged_out => {
                info!(session = %id, "taking over a session no gateway serves");
                host.adopt(record).await;
                Ok(true)
            }
            // Changed or deleted meanwhile: not ours to serve.
            _ => {
                self.let_go(id).await;
                Ok(false)
            }
        }
    }

    /// Gives up the lease of a session this gateway does not serve.
    pub(crate) async fn let_go(&self, id: SessionId) {
        let store = Arc::clone(&self.store);
        let owner = self.owner.clone();
        self.held().remove(&id);
        let _ = tokio::task::spawn_blocking(move || store.release(&id, &owner)).await;
    }

    /// Hands sessions to less loaded gateways, once the group has been calm for the settle
    /// period, at the configured pace.
    async fn rebalance(&self, host: &dyn Host, scan_every: Duration) -> Result<(), StoreError> {
        let candidates: Vec<SessionId> = {
            let group = self.group();
            // Calm: the same gateways for the settle period, nothing waiting to be taken, and
            // the last hand-off a lease TTL ago (so every count seen is newer than it).
            let handed_off_lately = group.shed.values().any(|at| at.elapsed() < self.ttl);
            if group.since.elapsed() < self.settle || !group.waited.is_empty() || handed_off_lately
            {
                return Ok(());
            }
            let pace = (f64::from(self.rebalance_per_second) * scan_every.as_secs_f64()).ceil();
            let view = View {
                me: &self.owner,
                members: &group.members,
                serving: host.serving(),
                now_ms: super::now_ms(),
            };
            let count = placement::surplus(&view, pace as usize);
            if count == 0 {
                return Ok(());
            }
            // The sessions held longest first: the newest may just have moved here.
            let mut held: Vec<(SessionId, Instant)> = self
                .held()
                .iter()
                .filter(|(_, at)| at.elapsed() >= self.settle)
                .map(|(id, at)| (id.clone(), *at))
                .collect();
            held.sort_by_key(|(_, at)| *at);
            held.into_iter().map(|(id, _)| id).take(count).collect()
        };
        let mut moved = 0usize;
        for id in candidates {
            if host.hand_off(&id).await {
                self.group().shed.insert(id.clone(), Instant::now());
                self.let_go(id).await;
                moved += 1;
            }
        }
        if moved > 0 {
            info!(moved, "sessions handed to less loaded gateways");
        }
        Ok(())
    }
}

/// Scans in a row a session may stay unserved, left to the gateways the placement rules
/// choose, before any gateway with room takes it.
const LEFT_FOR: u32 = 2;

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
}

/// The address part of an owner id.
pub(crate) fn address_of(owner: &str) -> &str {
    owner.rsplit_once('#').map_or(owner, |(address, _)| address)
}

/// A future the keeper awaits on the registry.
pub(crate) type HostFuture<'a, T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the keeper needs of the session registry.
pub(crate) trait Host: Send + Sync {
    /// Places left under the session limit.
    fn room(&self) -> usize;
    /// Whether a session actor runs here for `id`.
    fn serves(&self, id: &SessionId) -> bool;
    /// Sessions served online here.
    fn serving(&self) -> usize;
    /// Stops serving an online session so another gateway can take it: its connection is
    /// closed cleanly and it stays wanted online. False when it is not online here.
    fn hand_off<'a>(&'a self, id: &'a SessionId) -> HostFuture<'a, bool>;
    /// Starts serving a claimed session.
    fn adopt(&self, record: SessionRecord) -> HostFuture<'_>;
    /// Stops serving a session whose lease was lost, without writing anything.
    fn evict<'a>(&'a self, id: &'a SessionId) -> HostFuture<'a>;
}

/// Logs a failure of `streak`: a warning when it starts one.
fn failed(streak: &mut FailureStreak, what: &str, e: &StoreError) {
    if streak.failed() {
        warn!("{what}: {e} (repeats are not logged until it works again)");
    } else {
        tracing::debug!("{what}: {e}");
    }
}

/// Logs the end of `streak`'s failures, if it had any.
fn recovered(streak: &mut FailureStreak, what: &str) {
    if let Some(failures) = streak.recovered() {
        info!(failures, "{what} work again");
    }
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
