//! In-memory backend with the same semantics as SQLite — sealed secrets, event payloads and
//! session profiles, quarantine, atomic commits, gap-free seqs — but no durability; for tests of the layers above. Must not import
//! `runtime`, `api` or `sim`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::crypt::{EventPlace, Keyring, Opened, Unreadable};
use super::profile::{self, PROFILE_KEY};
use super::{
    event_key, now_ms, Batch, EventFilter, EventRecord, QuarantineEntry, Retention, SecretOp,
    SessionId, SessionRecord, Store, StoreError,
};

/// A [`Store`] held in process memory. Secrets are still sealed with a keyring (a random one by
/// default) so that quarantine and key rotation behave exactly as in the durable backend.
pub struct MemoryStore {
    keys: Keyring,
    // Shared so a test can "reopen" the same data under another keyring.
    state: Arc<Mutex<State>>,
}

/// A session row as kept: personal fields stripped, and sealed in `profile`.
#[derive(Clone)]
struct StoredRow {
    record: SessionRecord,
    profile: Option<Vec<u8>>,
}

#[derive(Default)]
struct State {
    sessions: BTreeMap<SessionId, StoredRow>,
    secrets: HashMap<SessionId, BTreeMap<String, Vec<u8>>>,
    /// Payloads sealed; an empty payload is withheld (redacted or quarantined).
    events: BTreeMap<u64, EventRecord>,
    last_seq: HashMap<SessionId, u64>,
    last_cursor: u64,
    quarantine: Vec<(QuarantineEntry, Vec<u8>)>,
    fail_event_kind: Option<u8>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with a fresh random keyring.
    pub fn new() -> Self {
        Self::with_keyring(Keyring::generate(&mut OsRng))
    }

    /// An empty store sealing secrets with `keys`.
    pub fn with_keyring(keys: Keyring) -> Self {
        MemoryStore {
            keys,
            state: Arc::default(),
        }
    }

    /// Fault injection for tests of the callers' durability rules: while set, every `commit`
    /// whose batch appends an event of this kind fails with [`StoreError::Unavailable`] after
    /// applying part of the batch, and is rolled back like a failed transaction.
    pub fn fail_commits_with_event_kind(&self, kind: Option<u8>) {
        self.lock().fail_event_kind = kind;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic cannot leave a half-applied batch behind (commit rolls back on error and
        // nothing in it panics), so the data behind a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn quarantine(state: &mut State, id: &SessionId, key: &str, reason: String) -> StoreError {
        let record = state
            .secrets
            .get_mut(id)
            .and_then(|m| m.remove(key))
            .unwrap_or_default();
        let entry = QuarantineEntry {
            session_id: id.clone(),
            key: key.to_owned(),
            reason: reason.clone(),
            quarantined_at_ms: now_ms(),
        };
        state.quarantine.push((entry, record));
        StoreError::Quarantined {
            session: id.clone(),
            key: key.to_owned(),
            reason,
        }
    }

    fn apply(
        &self,
        state: &mut State,
        id: &SessionId,
        batch: Batch,
        undo: &mut Undo,
    ) -> Result<Vec<EventRecord>, StoreError> {
        if let Some(record) = batch.session {
            let row = self.stored_row(&record)?;
            undo.session = Some(state.sessions.insert(id.clone(), row));
        }
        let has_row = state.sessions.contains_key(id);
        let secrets = state.secrets.entry(id.clone()).or_default();
        for op in batch.secrets {
            match op {
                SecretOp::Put { key, value } => {
                    if !has_row {
                        return Err(StoreError::UnknownSession(id.clone()));
                    }
                    let sealed = self.keys.seal(&mut OsRng, id, &key, &value)?;
                    let previous = secrets.insert(key.clone(), sealed);
                    undo.secrets.push((key, previous));
                }
                SecretOp::Delete { key } => {
                    if let Some(previous) = secrets.remove(&key) {
                        undo.secrets.push((key, Some(previous)));
                    }
                }
                SecretOp::DeletePrefix { prefix } => {
                    let doomed: Vec<String> = secrets
                        .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                        .map(|(k, _)| k)
                        .take_while(|k| k.starts_with(&prefix))
                        .cloned()
                        .collect();
                    for key in doomed {
                        let previous = secrets.remove(&key);
                        undo.secrets.push((key, previous));
                    }
                }
                SecretOp::DeleteAll => {
                    for (key, previous) in std::mem::take(secrets) {
                        undo.secrets.push((key, Some(previous)));
                    }
                }
            }
        }

        let mut appended = Vec::with_capacity(batch.events.len());
        let mut seq = state.last_seq.get(id).copied().unwrap_or(0);
        for event in batch.events {
            if state.fail_event_kind == Some(event.kind) {
                return Err(StoreError::Unavailable(format!(
                    "injected fault on event kind {}",
                    event.kind
                )));
            }
            seq = seq
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt(format!("seq of {id} overflows")))?;
            let cursor = state
                .last_cursor
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt("cursor overflows".into()))?;
            let place = EventPlace {
                cursor,
                seq,
                kind: event.kind,
                timestamp_ms: event.timestamp_ms,
            };
            let sealed = self
                .keys
                .seal_event(&mut OsRng, id, &place, &event.payload)?;
            let record = EventRecord {
                cursor,
                session_id: id.clone(),
                seq,
                timestamp_ms: event.timestamp_ms,
                kind: event.kind,
                payload: event.payload,
            };
            state.events.insert(
                cursor,
                EventRecord {
                    payload: sealed,
                    ..record.clone()
                },
            );
            state.last_cursor = cursor;
            state.last_seq.insert(id.clone(), seq);
            undo.appended.push(cursor);
            appended.push(record);
        }
        Ok(appended)
    }

    /// `record` as kept: its personal fields sealed apart.
    fn stored_row(&self, record: &SessionRecord) -> Result<StoredRow, StoreError> {
        Ok(StoredRow {
            record: profile::stripped(record),
            profile: profile::seal(&self.keys, &mut OsRng, record)?,
        })
    }

    /// The session row of `id` with its profile opened; an unreadable profile is quarantined
    /// and the row returned without it.
    fn read_row(&self, state: &mut State, id: &SessionId) -> Option<SessionRecord> {
        let row = state.sessions.get_mut(id)?;
        let mut record = row.record.clone();
        if let Some(sealed) = &row.profile {
            if let Err(why) = profile::open_into(&self.keys, &mut record, sealed) {
                let sealed = row.profile.take().unwrap_or_default();
                let entry = QuarantineEntry {
                    session_id: id.clone(),
                    key: PROFILE_KEY.to_owned(),
                    reason: why.to_string(),
                    quarantined_at_ms: now_ms(),
                };
                state.quarantine.push((entry, sealed));
                record = row.record.clone();
            }
        }
        Some(record)
    }

    /// The sealed profile of a session row, as stored.
    #[cfg(test)]
    pub(super) fn raw_profile(&self, id: &SessionId) -> Option<Vec<u8>> {
        self.lock().sessions.get(id)?.profile.clone()
    }

    /// Overwrites the sealed profile of a session row, bypassing encryption.
    #[cfg(test)]
    pub(super) fn set_raw_profile(&self, id: &SessionId, record: Vec<u8>) {
        if let Some(row) = self.lock().sessions.get_mut(id) {
            row.profile = Some(record);
        }
    }

    /// The plaintext of a stored event: an empty record is a withheld payload.
    fn open_event(&self, record: &EventRecord) -> Result<Opened, Unreadable> {
        if record.payload.is_empty() {
            return Ok(Opened {
                plaintext: Zeroizing::new(Vec::new()),
                stale: false,
            });
        }
        self.keys
            .open_event(&record.session_id, &place(record), &record.payload)
    }

    /// Sets an unreadable event payload aside, keeping the event's place in the log.
    fn quarantine_event(state: &mut State, cursor: u64, reason: String) {
        let Some(event) = state.events.get_mut(&cursor) else {
            return;
        };
        let record = std::mem::take(&mut event.payload);
        let entry = QuarantineEntry {
            session_id: event.session_id.clone(),
            key: event_key(cursor),
            reason,
            quarantined_at_ms: now_ms(),
        };
        state.quarantine.push((entry, record));
    }

    /// The same data seen through another keyring, as if the store were reopened with it.
    #[cfg(test)]
    pub(super) fn reopened(&self, keys: Keyring) -> Self {
        MemoryStore {
            keys,
            state: Arc::clone(&self.state),
        }
    }

    /// The sealed record of a secret, as stored.
    #[cfg(test)]
    pub(super) fn raw_secret(&self, id: &SessionId, key: &str) -> Option<Vec<u8>> {
        self.lock().secrets.get(id)?.get(key).cloned()
    }

    /// The sealed payload of an event, as stored.
    #[cfg(test)]
    pub(super) fn raw_event(&self, cursor: u64) -> Option<Vec<u8>> {
        Some(self.lock().events.get(&cursor)?.payload.clone())
    }

    /// Overwrites the sealed payload of an event, bypassing encryption.
    #[cfg(test)]
    pub(super) fn set_raw_event(&self, cursor: u64, record: Vec<u8>) {
        if let Some(event) = self.lock().events.get_mut(&cursor) {
            event.payload = record;
        }
    }

    /// Whether `needle` occurs in anything the store holds (rows, sealed records, quarantine).
    #[cfg(test)]
    pub(super) fn holds(&self, needle: &[u8]) -> bool {
        let state = self.lock();
        let found = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        state.events.values().any(|e| found(&e.payload))
            || state
                .secrets
                .values()
                .flat_map(|m| m.values())
                .any(|r| found(r))
            || state.quarantine.iter().any(|(_, r)| found(r))
            || state.sessions.values().any(|s| {
                found(format!("{:?}", s.record).as_bytes())
                    || s.profile.as_deref().is_some_and(found)
            })
    }

    /// Overwrites the sealed record of a secret, bypassing encryption.
    #[cfg(test)]
    pub(super) fn set_raw_secret(&self, id: &SessionId, key: &str, record: Vec<u8>) {
        self.lock()
            .secrets
            .entry(id.clone())
            .or_default()
            .insert(key.to_owned(), record);
    }
}

/// What a failing commit must restore.
struct Undo {
    /// `Some(previous row)` once the batch replaced the row.
    session: Option<Option<StoredRow>>,
    /// Previous sealed values, in the order they were overwritten.
    secrets: Vec<(String, Option<Vec<u8>>)>,
    last_seq: Option<u64>,
    last_cursor: u64,
    appended: Vec<u64>,
}

impl Undo {
    fn new(state: &State, id: &SessionId) -> Self {
        Undo {
            session: None,
            secrets: Vec::new(),
            last_seq: state.last_seq.get(id).copied(),
            last_cursor: state.last_cursor,
            appended: Vec::new(),
        }
    }

    fn rollback(self, state: &mut State, id: &SessionId) {
        match self.session {
            Some(Some(previous)) => {
                state.sessions.insert(id.clone(), previous);
            }
            Some(None) => {
                state.sessions.remove(id);
            }
            None => {}
        }
        let secrets = state.secrets.entry(id.clone()).or_default();
        for (key, previous) in self.secrets.into_iter().rev() {
            match previous {
                Some(value) => secrets.insert(key, value),
                None => secrets.remove(&key),
            };
        }
        for cursor in self.appended {
            state.events.remove(&cursor);
        }
        match self.last_seq {
            Some(seq) => state.last_seq.insert(id.clone(), seq),
            None => state.last_seq.remove(id),
        };
        state.last_cursor = self.last_cursor;
    }
}

impl Store for MemoryStore {
    fn put_session(&self, record: &SessionRecord) -> Result<(), StoreError> {
        let row = self.stored_row(record)?;
        self.lock().sessions.insert(record.id.clone(), row);
        Ok(())
    }

    fn session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self.read_row(&mut self.lock(), id))
    }

    fn sessions(&self) -> Result<Vec<SessionRecord>, StoreError> {
        let mut state = self.lock();
        let ids: Vec<SessionId> = state.sessions.keys().cloned().collect();
        Ok(ids
            .iter()
            .filter_map(|id| self.read_row(&mut state, id))
            .collect())
    }

    fn delete_session(&self, id: &SessionId) -> Result<(), StoreError> {
        let mut state = self.lock();
        state.sessions.remove(id);
        state.secrets.remove(id);
        Ok(())
    }

    fn secret(&self, id: &SessionId, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        let mut state = self.lock();
        let Some(record) = state.secrets.get(id).and_then(|m| m.get(key)) else {
            return Ok(None);
        };
        match self.keys.open(id, key, record) {
            Ok(opened) => {
                if opened.stale {
                    let fresh = self.keys.seal(&mut OsRng, id, key, &opened.plaintext)?;
                    if let Some(slot) = state.secrets.get_mut(id).and_then(|m| m.get_mut(key)) {
                        *slot = fresh;
                    }
                }
                Ok(Some(opened.plaintext))
            }
            Err(why) => Err(Self::quarantine(&mut state, id, key, why.to_string())),
        }
    }

    fn secrets_with_prefix(
        &self,
        id: &SessionId,
        prefix: &str,
    ) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>, StoreError> {
        let mut state = self.lock();
        let mut found = Vec::new();
        let mut unreadable = Vec::new();
        let mut stale = Vec::new();
        if let Some(secrets) = state.secrets.get(id) {
            for (key, record) in secrets
                .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                match self.keys.open(id, key, record) {
                    Ok(opened) => {
                        if opened.stale {
                            stale.push(found.len());
                        }
                        found.push((key.clone(), opened.plaintext));
                    }
                    Err(why) => unreadable.push((key.clone(), why.to_string())),
                }
            }
        }
        let mut first_error = None;
        for (key, reason) in unreadable {
            let err = Self::quarantine(&mut state, id, &key, reason);
            first_error.get_or_insert(err);
        }
        if let Some(err) = first_error {
            return Err(err);
        }
        for (key, value) in stale.into_iter().filter_map(|i| found.get(i)) {
            let fresh = self.keys.seal(&mut OsRng, id, key, value)?;
            if let Some(slot) = state.secrets.get_mut(id).and_then(|m| m.get_mut(key)) {
                *slot = fresh;
            }
        }
        Ok(found)
    }

    fn commit(&self, id: &SessionId, batch: Batch) -> Result<Vec<EventRecord>, StoreError> {
        batch.validate(id)?;
        let mut state = self.lock();
        let mut undo = Undo::new(&state, id);
        match self.apply(&mut state, id, batch, &mut undo) {
            Ok(events) => Ok(events),
            Err(e) => {
                undo.rollback(&mut state, id);
                Err(e)
            }
        }
    }

    fn events_page(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        let mut state = self.lock();
        let mut page = Vec::new();
        let mut unreadable = Vec::new();
        let mut bytes = 0usize;
        for event in state
            .events
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, e)| e)
            .filter(|e| filter.matches(e))
            .take(limit)
        {
            if bytes >= max_bytes {
                break;
            }
            let payload = match self.open_event(event) {
                Ok(opened) => opened.plaintext.to_vec(),
                Err(why) => {
                    unreadable.push((event.cursor, why.to_string()));
                    Vec::new()
                }
            };
            bytes = bytes.saturating_add(payload.len());
            page.push(EventRecord {
                payload,
                ..event.clone()
            });
        }
        for (cursor, reason) in unreadable {
            Self::quarantine_event(&mut state, cursor, reason);
        }
        Ok(page)
    }

    fn last_cursor(&self) -> Result<u64, StoreError> {
        Ok(self.lock().last_cursor)
    }

    fn prune_events(&self, retention: &Retention, now_ms: i64) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let before = state.events.len();
        if let Some(cutoff) = retention.cutoff_ms(now_ms) {
            state.events.retain(|_, e| e.timestamp_ms >= cutoff);
        }
        if let Some(max) = retention.max_per_session {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            let mut per_session: HashMap<&SessionId, Vec<u64>> = HashMap::new();
            for (cursor, event) in &state.events {
                per_session
                    .entry(&event.session_id)
                    .or_default()
                    .push(*cursor);
            }
            let doomed: Vec<u64> = per_session
                .into_values()
                .flat_map(|cursors| {
                    let excess = cursors.len().saturating_sub(max);
                    cursors.into_iter().take(excess)
                })
                .collect();
            for cursor in doomed {
                state.events.remove(&cursor);
            }
        }
        Ok(u64::try_from(before - state.events.len()).unwrap_or(u64::MAX))
    }

    fn redact_events(&self, kind: u8, before_ms: i64) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut redacted = 0u64;
        for event in state.events.values_mut() {
            if event.kind == kind && event.timestamp_ms < before_ms && !event.payload.is_empty() {
                event.payload = Vec::new();
                redacted += 1;
            }
        }
        Ok(redacted)
    }

    fn reseal_all(&self) -> Result<u64, StoreError> {
        let mut state = self.lock();
        let mut resealed = 0u64;
        let mut unreadable = Vec::new();
        for (id, secrets) in &mut state.secrets {
            for (key, record) in secrets.iter_mut() {
                match self.keys.open(id, key, record) {
                    Ok(opened) if opened.stale => {
                        *record = self.keys.seal(&mut OsRng, id, key, &opened.plaintext)?;
                        resealed += 1;
                    }
                    Ok(_) => {}
                    Err(why) => unreadable.push((id.clone(), key.clone(), why.to_string())),
                }
            }
        }
        for (id, key, reason) in unreadable {
            Self::quarantine(&mut state, &id, &key, reason);
        }
        let mut unreadable = Vec::new();
        for event in state.events.values_mut() {
            match self.open_event(event) {
                Ok(opened) if opened.stale => {
                    event.payload = self.keys.seal_event(
                        &mut OsRng,
                        &event.session_id,
                        &place(event),
                        &opened.plaintext,
                    )?;
                    resealed += 1;
                }
                Ok(_) => {}
                Err(why) => unreadable.push((event.cursor, why.to_string())),
            }
        }
        for (cursor, reason) in unreadable {
            Self::quarantine_event(&mut state, cursor, reason);
        }
        let mut stale = Vec::new();
        for (id, row) in &state.sessions {
            if let Some(sealed) = &row.profile {
                if let Ok(Some(fresh)) = profile::reseal(&self.keys, &mut OsRng, id, sealed)? {
                    stale.push((id.clone(), fresh));
                }
            }
        }
        for (id, fresh) in stale {
            if let Some(row) = state.sessions.get_mut(&id) {
                row.profile = Some(fresh);
                resealed += 1;
            }
        }
        // Reading every row quarantines the unreadable profiles, as SQLite's pass does.
        let ids: Vec<SessionId> = state.sessions.keys().cloned().collect();
        for id in &ids {
            self.read_row(&mut state, id);
        }
        Ok(resealed)
    }

    fn quarantined(&self) -> Result<Vec<QuarantineEntry>, StoreError> {
        Ok(self
            .lock()
            .quarantine
            .iter()
            .map(|(entry, _)| entry.clone())
            .collect())
    }
}

/// What a sealed event payload is bound to.
fn place(record: &EventRecord) -> EventPlace {
    EventPlace {
        cursor: record.cursor,
        seq: record.seq,
        kind: record.kind,
        timestamp_ms: record.timestamp_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::{self, Backend};
    use crate::store::model::check_secret_key;

    struct Memory;

    impl Backend for Memory {
        type S = MemoryStore;

        fn open(&mut self, keys: Keyring, previous: Option<Self::S>) -> MemoryStore {
            match previous {
                Some(store) => store.reopened(keys),
                None => MemoryStore::with_keyring(keys),
            }
        }

        fn raw_secret(&self, store: &MemoryStore, id: &SessionId, key: &str) -> Option<Vec<u8>> {
            store.raw_secret(id, key)
        }

        fn set_raw_secret(&self, store: &MemoryStore, id: &SessionId, key: &str, record: Vec<u8>) {
            store.set_raw_secret(id, key, record);
        }

        fn raw_event(&self, store: &MemoryStore, cursor: u64) -> Option<Vec<u8>> {
            store.raw_event(cursor)
        }

        fn set_raw_event(&self, store: &MemoryStore, cursor: u64, record: Vec<u8>) {
            store.set_raw_event(cursor, record);
        }

        fn at_rest_contains(&self, store: &MemoryStore, needle: &[u8]) -> bool {
            store.holds(needle)
        }

        fn fail_event_kind(&self, store: &MemoryStore, kind: u8) {
            store.fail_commits_with_event_kind(Some(kind));
        }

        fn raw_profile(&self, store: &MemoryStore, id: &SessionId) -> Option<Vec<u8>> {
            store.raw_profile(id)
        }

        fn set_raw_profile(&self, store: &MemoryStore, id: &SessionId, record: Vec<u8>) {
            store.set_raw_profile(id, record);
        }
    }

    conformance::behaviour_tests!(Memory);

    #[test]
    fn check_secret_key_is_enforced_by_commit() {
        let store = MemoryStore::new();
        let id: SessionId = "a".parse().expect("valid id");
        store
            .put_session(&SessionRecord::new(id.clone(), 1))
            .expect("put");
        assert!(check_secret_key("").is_err());
        let err = store
            .commit(&id, Batch::new().put_secret("", vec![1]))
            .expect_err("empty key");
        assert!(matches!(err, StoreError::InvalidSecretKey(_)), "{err}");
    }
}
