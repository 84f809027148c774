//! Durable state of every session: session rows, encrypted secrets (credentials, Signal keys, ...)
//! and the event log, behind one object-safe, synchronous [`Store`] trait with SQLite and
//! in-memory backends. Must not import `runtime`, `api` or `sim`.
//!
//! The trait is synchronous on purpose: SQLite calls block, so async callers run them on
//! `tokio::task::spawn_blocking` or a dedicated writer thread. Every backend is `Send + Sync` and
//! shared as `Arc<dyn Store>`.

pub mod crypt;
mod error;
mod memory;
mod model;
mod paced_db;
mod profile;
mod redis;
mod sqlite;
mod wal_vfs;

#[cfg(test)]
mod conformance;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

pub use crypt::Keyring;
pub use error::StoreError;
pub use memory::MemoryStore;
pub use model::{
    Batch, EventFilter, EventRecord, NewEvent, QuarantineEntry, Retention, SecretOp, SessionId,
    SessionIdError, SessionRecord, MAX_SECRET_KEY_LEN, MAX_SESSION_ID_LEN,
};
pub use redis::{RedisOptions, RedisStore};
pub use sqlite::SqliteStore;

/// Storage of sessions, their secrets and the event log.
///
/// All methods are blocking. Implementations serialise writes so that `commit` is atomic and the
/// sequence numbers and cursors it hands out are gap-free and strictly increasing.
pub trait Store: Send + Sync {
    /// Inserts or updates the session row (secrets and events are untouched). Its personal
    /// fields (JID, push name, metadata) are sealed at rest like secrets; the session id is not,
    /// so it must not carry personal data.
    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError>;

    /// The session row, if the session exists. A personal part that fails to open is moved to
    /// quarantine under the key `session/profile` and the row reads back without it (no JID,
    /// push name or metadata), so the session itself stays usable.
    fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError>;

    /// Every session row, ordered by id.
    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError>;

    /// Removes the session row and all its secrets (events stay until retention drops them).
    fn delete_session(&self, id: &SessionId) -> Result<(), StoreError>;

    /// Decrypted secret (credentials, Signal keys, ...). Unreadable record → it is moved to
    /// quarantine and `Err(StoreError::Quarantined{..})` is returned; it is never silently
    /// replaced or dropped.
    fn secret(&self, id: &SessionId, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError>;

    /// Secrets whose key starts with `prefix` as `(key, value)`, ordered by key. Unreadable
    /// records in the range are all quarantined and the first one is reported as
    /// `Err(StoreError::Quarantined{..})`; a retry then returns the readable rest.
    #[expect(
        clippy::type_complexity,
        reason = "the (key, value) pairs are the contract callers code against"
    )]
    fn secrets_with_prefix(
        &self,
        id: &SessionId,
        prefix: &str,
    ) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>, StoreError>;

    /// Applies everything in one atomic transaction: the session row upsert first, then the
    /// secret ops in order, then the event appends. Events get the next per-session seq
    /// (gap-free, starting at 1, never reused even after pruning or deletion) and a global cursor
    /// (strictly increasing across all sessions). Returns the appended events in order.
    ///
    /// Putting a secret requires the session row (already stored or carried by the batch).
    fn commit(&self, id: &SessionId, batch: Batch) -> Result<Vec<EventRecord>, StoreError>;

    /// Commits the batches of several sessions, each as [`Store::commit`]
    /// would (one failing does not fail the others); backends that can
    /// write them in one transaction do.
    fn commit_many(
        &self,
        batches: Vec<(SessionId, Batch)>,
    ) -> Vec<Result<Vec<EventRecord>, StoreError>> {
        batches
            .into_iter()
            .map(|(id, batch)| self.commit(&id, batch))
            .collect()
    }

    /// Events with cursor > `after`, in cursor order, matching `filter`, at most `limit`.
    fn events_after(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.events_page(after, filter, limit, usize::MAX)
    }

    /// Like [`Store::events_after`], but stops once the payloads read add up to `max_bytes`
    /// (the event that crosses the bound is included, so a page is never empty while events
    /// remain): what a reader holds in memory stays bounded whatever the events carry.
    ///
    /// Payloads are sealed at rest like secrets. A payload that fails to open (altered, or
    /// sealed with a key the keyring lacks) is moved to quarantine under the key
    /// `event/<cursor>` and the event stays in the log with an empty payload: readers still
    /// see its cursor, seq, kind and time, so a gap is never silent. Redacted payloads read
    /// back empty too.
    fn events_page(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError>;

    /// The highest cursor ever assigned (0 if none) — survives restarts and pruning.
    fn last_cursor(&self) -> Result<u64, StoreError>;

    /// Deletes events with `timestamp_ms` older than `now_ms - max_age_ms` and, per session, all
    /// but the newest `max_per_session`; returns how many were deleted.
    fn prune_events(&self, retention: &Retention, now_ms: i64) -> Result<u64, StoreError>;

    /// Blanks the payload of every event of `kind` older than `before_ms` (by `timestamp_ms`),
    /// e.g. QR codes once expired: each keeps its cursor, seq, kind and time and reads back with
    /// an empty payload. Returns how many payloads were blanked.
    fn redact_events(&self, kind: u8, before_ms: i64) -> Result<u64, StoreError>;

    /// Re-seals every secret, event payload and session row not sealed with the current key (quarantining
    /// unreadable ones), so older keys can leave the keyring. Returns how many records were
    /// re-sealed.
    fn reseal_all(&self) -> Result<u64, StoreError>;

    /// Records moved to quarantine (session, key, reason, when), oldest first, for operators.
    fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError>;

    /// Whether other gateway processes share this store, so a session must be claimed
    /// ([`Store::claim`]) before it is served. A store only one process opens (SQLite, memory)
    /// is not shared and grants every claim.
    fn is_shared(&self) -> bool {
        false
    }

    /// Claims `id` for `owner` (an id unique to this process, which may carry its address) for
    /// `ttl`: granted when nobody holds it or `owner` already does. A grant gives a fencing
    /// token, larger than any before it for the session; once granted, the store refuses with
    /// [`StoreError::Fenced`] every commit of a process whose token is no longer the latest.
    fn claim(&self, id: &SessionId, owner: &str, ttl: Duration) -> Result<Claim, StoreError> {
        let _ = (id, owner, ttl);
        Ok(Claim::Granted { token: 0 })
    }

    /// Extends the leases of `ids` held by `owner`; per session, whether it is still held (a
    /// lost one must stop being served at once).
    fn renew(
        &self,
        ids: &[SessionId],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let _ = (owner, ttl);
        Ok(vec![true; ids.len()])
    }

    /// The events after `after` without their payloads (cursor, session, seq, kind, time),
    /// at most `limit`, waiting up to `wait` for one when there is none yet: how a gateway
    /// learns of events other gateways sharing the store committed. A store only one process
    /// opens has no such events and answers at once.
    fn event_heads(
        &self,
        after: u64,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let _ = wait;
        let mut page = self.events_page(after, &EventFilter::all(), limit, 0)?;
        page.truncate(limit);
        for event in &mut page {
            event.payload = Vec::new();
        }
        Ok(page)
    }

    /// Of the sessions that should be online (desired online, not logged out), those no
    /// process holds a lease on: what a gateway sharing the store may take over. Cheap enough
    /// to ask every few seconds (no profile is opened). A store only one process opens has
    /// nothing to take over.
    fn unserved(&self) -> Result<Vec<SessionId>, StoreError> {
        Ok(Vec::new())
    }

    /// Gives up `owner`'s lease of `id` (a clean stop), so another gateway can take the session
    /// without waiting for it to lapse.
    fn release(&self, id: &SessionId, owner: &str) -> Result<(), StoreError> {
        let _ = (id, owner);
        Ok(())
    }

    /// Who serves each of `ids` now: the owner id holding its lease, `None` where nobody does.
    /// A store only one process opens knows no owners.
    fn lease_owners(&self, ids: &[SessionId]) -> Result<Vec<Option<String>>, StoreError> {
        Ok(vec![None; ids.len()])
    }

    /// Announces `me` among the processes sharing the store for `ttl` (renewed by announcing
    /// again) and returns every announcement that has not lapsed, `me` included, in no
    /// particular order: how gateways learn of each other and of each other's load.
    fn announce(&self, me: &Member, ttl: Duration) -> Result<Vec<Member>, StoreError> {
        let _ = ttl;
        Ok(vec![me.clone()])
    }

    /// Takes `owner`'s announcement back (a clean stop).
    fn withdraw(&self, owner: &str) -> Result<(), StoreError> {
        let _ = owner;
        Ok(())
    }

    /// Drops what the store caches in memory and can read again (SQLite's page caches), after
    /// a wave of disconnects left it sized for sessions that are gone. A store that caches
    /// nothing of the kind does nothing.
    fn release_memory(&self) {}
}

/// A gateway process sharing the store, as it announces itself ([`Store::announce`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its owner id (the one its leases carry).
    pub owner: String,
    /// When it started (Unix ms): the youngest gateway receives the sessions of one that
    /// stops during a rolling update.
    pub started_ms: u64,
    /// How many sessions it serves online.
    pub serving: u64,
}

/// The outcome of [`Store::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This process serves the session; `token` fences its writes.
    Granted { token: u64 },
    /// Another process does, for at least `ttl_ms` more unless it lets go.
    Held { owner: String, ttl_ms: u64 },
}

/// The quarantine key of the payload of the event at `cursor`.
fn event_key(cursor: u64) -> String {
    format!("event/{cursor}")
}

/// Wall-clock milliseconds for bookkeeping stamps (quarantine time). A clock before 1970 yields 0:
/// the stamp is informational and must not make a read fail.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
