//! The event log: every event is committed to the store (with whatever state
//! must change atomically with it) and then announced to the subscribers
//! whose filter it matches, who read it back from the store. A slow
//! subscriber never slows a session. This module writes, registers
//! subscribers and wakes them; following the log for one subscriber
//! ([`EventLog::follow`] and its follower) is `event_follower`, the stored
//! form of events `event_records`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use prost::Message;
use tokio::sync::Notify;

use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{self, EventType};
use crate::store::{
    Batch, EventFilter, EventRecord, NewEvent, Retention, SessionId, Store, StoreError,
};

use super::event_records::{to_api_event, EventKind};
use super::recent_events::{RecentEvents, RecentPage};

/// Events the tail of a shared store takes per read.
const TAIL_BATCH: usize = 1024;
/// How long one read of a shared store's tail waits for an event.
const TAIL_WAIT: Duration = Duration::from_secs(1);

/// Writes events and wakes the subscribers they concern.
#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
}

/// Counts a commit the store refused to a former owner of its session.
pub(super) fn count_fenced(e: &StoreError) {
    if matches!(e, StoreError::Fenced(_)) {
        crate::metrics::global()
            .fenced_writes
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Messages a commit records, for the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    pub(crate) received: u32,
    pub(crate) sent: u32,
}

impl Counts {
    fn add_to_metrics(self) {
        let metrics = crate::metrics::global();
        metrics
            .messages_in
            .fetch_add(u64::from(self.received), Ordering::Relaxed);
        metrics
            .messages_out
            .fetch_add(u64::from(self.sent), Ordering::Relaxed);
    }
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let last = store.last_cursor()?;
        // Other gateways' commits on a shared store are not seen here, so
        // recent events are kept only when this process writes them all.
        let recent = (!store.is_shared()).then(Mutex::default);
        Ok(Self {
            store,
            hub: Arc::new(Hub {
                last: AtomicU64::new(last),
                next_id: AtomicU64::new(0),
                registry: RwLock::default(),
                recent,
            }),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Commits `batch` plus `events` atomically (off the async runtime) and
    /// wakes the subscribers they match.
    pub async fn commit(
        &self,
        session: &SessionId,
        batch: Batch,
        events: Vec<Payload>,
        now_ms: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let log = self.clone();
        let id = session.clone();
        tokio::task::spawn_blocking(move || log.commit_blocking(&id, batch, events, now_ms))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// [`EventLog::commit`] for callers already on a blocking thread.
    pub fn commit_blocking(
        &self,
        session: &SessionId,
        batch: Batch,
        events: Vec<Payload>,
        now_ms: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let (batch, kinds) = with_events(batch, events, now_ms);
        let records = self
            .store
            .commit(session, batch)
            .inspect_err(count_fenced)?;
        self.announce(session, kinds, &records);
        Ok(records)
    }

    /// Several sessions' commits at once (one transaction where the store
    /// can), each woken subscribers as [`EventLog::commit_blocking`] does;
    /// one result per commit, in their order. The messages each records are
    /// counted before its events are announced, so whoever saw an event
    /// finds its message in the metrics.
    pub(crate) fn commit_many_blocking(
        &self,
        commits: Vec<(SessionId, Batch, Vec<Payload>, u64, Counts)>,
    ) -> Vec<Result<Vec<EventRecord>, StoreError>> {
        let mut kinds = Vec::with_capacity(commits.len());
        let batches = commits
            .into_iter()
            .map(|(id, batch, events, now_ms, counts)| {
                let (batch, k) = with_events(batch, events, now_ms);
                kinds.push((id.clone(), k, counts));
                (id, batch)
            })
            .collect();
        let results = self.store.commit_many(batches);
        for ((id, k, counts), result) in kinds.into_iter().zip(&results) {
            match result {
                Ok(records) => {
                    counts.add_to_metrics();
                    self.announce(&id, k, records);
                }
                Err(e) => count_fenced(e),
            }
        }
        results
    }

    fn announce(&self, session: &SessionId, kinds: KindSet, records: &[EventRecord]) {
        crate::metrics::global()
            .events_written
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        if let Some(last) = records.last() {
            // Kept before the wake-up, so a woken subscriber finds them.
            if let Some(recent) = &self.hub.recent {
                recent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(records);
            }
            self.hub.announce(session, kinds, last.cursor);
        }
    }

    /// The committed events after `cursor` that `filter` matches, from the
    /// recent ones kept in memory (see `recent_events`), if they reach back
    /// to it; `None` means read the store.
    pub(super) fn recent_after(
        &self,
        cursor: u64,
        filter: &EventFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Option<RecentPage> {
        self.hub
            .recent
            .as_ref()?
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .after(cursor, filter, limit, max_bytes)
    }

    /// With a store shared by several gateways, starts a thread that learns
    /// of the events the others commit (the store's blocking tail) and wakes
    /// the subscribers they match, as local commits do. It ends with the
    /// log. Nothing to do for a store only this process writes.
    pub fn follow_other_writers(&self) {
        if !self.store.is_shared() {
            return;
        }
        let store = Arc::clone(&self.store);
        let hub = Arc::downgrade(&self.hub);
        let mut after = self.last_cursor();
        let spawned = std::thread::Builder::new()
            .name("event-tail".into())
            .spawn(move || {
                let mut failures = 0u32;
                loop {
                    if hub.strong_count() == 0 {
                        return;
                    }
                    match store.event_heads(after, TAIL_BATCH, TAIL_WAIT) {
                        Ok(heads) => {
                            failures = 0;
                            let Some(hub) = hub.upgrade() else { return };
                            for head in heads {
                                after = after.max(head.cursor);
                                let mut kinds = KindSet::EMPTY;
                                kinds.insert(head.kind);
                                hub.announce(&head.session_id, kinds, head.cursor);
                            }
                        }
                        Err(e) => {
                            // Backs off while the store is unreachable (a
                            // background thread, not a wait for an event).
                            failures = failures.saturating_add(1);
                            if failures == 1 {
                                tracing::warn!("cannot follow other gateways' events: {e}");
                            }
                            std::thread::sleep(
                                TAIL_WAIT.min(Duration::from_millis(50).saturating_mul(failures)),
                            );
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the event tail: {e}");
        }
    }

    /// Registers a subscriber woken by commits that match `filter`. Register
    /// before the first read: a commit between the read and the wait then
    /// leaves a wake-up behind instead of being missed.
    pub fn subscribe(&self, filter: EventFilter) -> Subscription {
        let waiter = Arc::new(Waiter {
            id: self.hub.next_id.fetch_add(1, Ordering::Relaxed),
            kinds: KindSet::of(&filter.kinds),
            notify: Notify::new(),
        });
        let mut registry = self.hub.write();
        if filter.sessions.is_empty() {
            registry.any_session.push(Arc::clone(&waiter));
        } else {
            for session in &filter.sessions {
                let list = registry.by_session.entry(session.clone()).or_default();
                // A filter naming a session twice must not be woken twice.
                if !list.iter().any(|w| w.id == waiter.id) {
                    list.push(Arc::clone(&waiter));
                }
            }
        }
        drop(registry);
        Subscription {
            hub: Arc::clone(&self.hub),
            waiter,
            sessions: filter.sessions,
        }
    }

    /// Applies retention (age and count) and takes the payload out of every QR
    /// event whose code has expired: it carries the ADV secret, which must not
    /// outlive the code. `qr_lifetime_ms` is the longest a code lives (the
    /// first one's lifetime); a QR event stays in the log (cursor, seq, type,
    /// time) with an empty payload. Returns (events pruned, payloads redacted).
    pub async fn apply_retention(
        &self,
        retention: Retention,
        qr_lifetime_ms: u64,
        now_ms: i64,
    ) -> Result<(u64, u64), StoreError> {
        let store = self.store.clone();
        let expired_before =
            now_ms.saturating_sub(i64::try_from(qr_lifetime_ms).unwrap_or(i64::MAX));
        tokio::task::spawn_blocking(move || {
            let pruned = store.prune_events(&retention, now_ms)?;
            let redacted = store.redact_events(EventType::Qr as i32 as u8, expired_before)?;
            Ok((pruned, redacted))
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Highest cursor committed so far.
    pub fn last_cursor(&self) -> u64 {
        self.hub.last.load(Ordering::Acquire)
    }

    /// Reads committed events after `cursor`: at most `limit` events and
    /// about `max_bytes` of payload (see [`Store::events_page`]).
    pub async fn read_page(
        &self,
        cursor: u64,
        filter: EventFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.events_page(cursor, &filter, limit, max_bytes))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }

    /// Reads committed events after `cursor`.
    pub async fn read(
        &self,
        cursor: u64,
        filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<gateway::Event>, StoreError> {
        let records = self.read_page(cursor, filter, limit, usize::MAX).await?;
        Ok(records.into_iter().map(to_api_event).collect())
    }
}

/// A registered subscriber; unregisters when dropped.
pub struct Subscription {
    hub: Arc<Hub>,
    waiter: Arc<Waiter>,
    sessions: Vec<SessionId>,
}

impl Subscription {
    /// Resolves after a commit this subscriber's filter matches (at once if
    /// one happened since the last call).
    pub async fn changed(&self) {
        self.waiter.notify.notified().await;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let id = self.waiter.id;
        let mut registry = self.hub.write();
        if self.sessions.is_empty() {
            registry.any_session.retain(|w| w.id != id);
        }
        for session in &self.sessions {
            if let Some(list) = registry.by_session.get_mut(session) {
                list.retain(|w| w.id != id);
                if list.is_empty() {
                    registry.by_session.remove(session);
                }
            }
        }
    }
}

/// Subscribers by the sessions they follow, and the highest cursor.
struct Hub {
    last: AtomicU64,
    next_id: AtomicU64,
    registry: RwLock<Registry>,
    /// The latest events committed here, when this process is the only
    /// writer.
    recent: Option<Mutex<RecentEvents>>,
}

#[derive(Default)]
struct Registry {
    /// Subscribers that named sessions, under each session they named.
    by_session: HashMap<SessionId, Vec<Arc<Waiter>>>,
    /// Subscribers to every session.
    any_session: Vec<Arc<Waiter>>,
}

struct Waiter {
    id: u64,
    kinds: KindSet,
    notify: Notify,
}

impl Hub {
    /// Wakes the subscribers of `session` whose kinds meet `kinds`: work in
    /// proportion to the subscribers of that session and of all sessions,
    /// no allocation. A subscriber woken while it is not waiting keeps one
    /// wake-up for its next wait; repeated commits do not pile up.
    fn announce(&self, session: &SessionId, kinds: KindSet, cursor: u64) {
        self.last.fetch_max(cursor, Ordering::AcqRel);
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let named = registry.by_session.get(session).map(Vec::as_slice);
        for waiter in named
            .unwrap_or_default()
            .iter()
            .chain(&registry.any_session)
        {
            if waiter.kinds.meets(kinds) {
                waiter.notify.notify_one();
            }
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        // Registry updates are single pushes and retains: never left half done.
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A set of stored event kinds (`u8`), as a bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KindSet([u64; 4]);

impl KindSet {
    const EMPTY: KindSet = KindSet([0; 4]);
    const ALL: KindSet = KindSet([u64::MAX; 4]);

    /// The kinds of a filter: an empty list means every kind.
    fn of(kinds: &[u8]) -> KindSet {
        if kinds.is_empty() {
            return KindSet::ALL;
        }
        let mut set = KindSet::EMPTY;
        for kind in kinds {
            set.insert(*kind);
        }
        set
    }

    fn insert(&mut self, kind: u8) {
        let word = usize::from(kind >> 6);
        if let Some(w) = self.0.get_mut(word) {
            *w |= 1 << (kind & 0x3f);
        }
    }

    fn meets(&self, other: KindSet) -> bool {
        self.0.iter().zip(other.0).any(|(a, b)| a & b != 0)
    }
}

/// `batch` with `events` appended as stored events, and their kinds.
fn with_events(mut batch: Batch, events: Vec<Payload>, now_ms: u64) -> (Batch, KindSet) {
    let mut kinds = KindSet::EMPTY;
    for payload in events {
        let kind = EventKind::of(&payload) as i32 as u8;
        kinds.insert(kind);
        let event = gateway::Event {
            payload: Some(payload),
            ..Default::default()
        };
        batch.events.push(NewEvent {
            kind,
            timestamp_ms: i64::try_from(now_ms).unwrap_or(i64::MAX),
            payload: event.encode_to_vec(),
        });
    }
    (batch, kinds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gateway::{ConnectionEvent, QrEvent};
    use crate::store::MemoryStore;
    use std::time::Duration;

    fn sid(s: &str) -> SessionId {
        s.parse().expect("valid id")
    }

    fn qr() -> Payload {
        Payload::Qr(QrEvent {
            qr: "2@abc".into(),
            expires_at: None,
        })
    }

    fn connection() -> Payload {
        Payload::Connection(ConnectionEvent::default())
    }

    /// Whether the subscription has a wake-up waiting (without waiting).
    async fn woken(sub: &Subscription) -> bool {
        tokio::time::timeout(Duration::ZERO, sub.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn commits_wake_only_matching_subscribers() {
        let log = EventLog::new(Arc::new(MemoryStore::new())).expect("log");
        let (a, b) = (sid("a"), sid("b"));
        let only_a = log.subscribe(EventFilter {
            sessions: vec![a.clone(), a.clone()],
            kinds: vec![],
        });
        let only_b_qr = log.subscribe(EventFilter {
            sessions: vec![b.clone()],
            kinds: vec![EventType::Qr as u8],
        });
        let every_connection = log.subscribe(EventFilter {
            sessions: vec![],
            kinds: vec![EventType::Connection as u8],
        });
        let everything = log.subscribe(EventFilter::all());

        log.commit(&b, Batch::new(), vec![connection()], 1)
            .await
            .expect("commit");
        assert!(!woken(&only_a).await);
        assert!(!woken(&only_b_qr).await);
        assert!(woken(&every_connection).await);
        assert!(woken(&everything).await);

        log.commit(&a, Batch::new(), vec![qr(), qr()], 2)
            .await
            .expect("commit");
        log.commit(&a, Batch::new(), vec![qr()], 3)
            .await
            .expect("commit");
        // Two commits leave one wake-up, not two.
        assert!(woken(&only_a).await);
        assert!(!woken(&only_a).await);
        assert!(!woken(&only_b_qr).await);
        assert!(!woken(&every_connection).await);
        assert!(woken(&everything).await);

        // A commit without events wakes nobody.
        log.commit(&b, Batch::new(), vec![], 4)
            .await
            .expect("commit");
        assert!(!woken(&everything).await);
        assert_eq!(log.last_cursor(), 4);

        // Dropped subscriptions leave the registry.
        drop((only_a, only_b_qr, every_connection, everything));
        let registry = log.hub.registry.read().expect("registry");
        assert!(registry.by_session.is_empty());
        assert!(registry.any_session.is_empty());
    }

    #[tokio::test]
    async fn expired_qr_payloads_leave_the_log_and_the_events_stay() {
        let log = EventLog::new(Arc::new(MemoryStore::new())).expect("log");
        let a = sid("a");
        log.commit(&a, Batch::new(), vec![qr(), connection()], 1_000)
            .await
            .expect("commit");
        log.commit(&a, Batch::new(), vec![qr()], 50_000)
            .await
            .expect("commit");
        let done = log
            .apply_retention(Retention::default(), 60_000, 70_000)
            .await
            .expect("retention");
        assert_eq!(done, (0, 1));
        let events = log.read(0, EventFilter::all(), 10).await.expect("read");
        assert_eq!(events.len(), 3);
        assert_eq!(
            (events[0].seq, &events[0].payload),
            (1, &Some(Payload::Qr(QrEvent::default())))
        );
        assert!(matches!(events[1].payload, Some(Payload::Connection(_))));
        assert!(matches!(&events[2].payload, Some(Payload::Qr(q)) if q.qr == "2@abc"));
    }
}
