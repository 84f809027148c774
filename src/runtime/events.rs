//! The event log: every event is committed to the store (with whatever state
//! must change atomically with it) and then announced to subscribers, who read
//! it back from the store. A slow subscriber never slows a session.

use std::sync::Arc;

use prost::Message;
use tokio::sync::watch;

use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{self, EventType};
use crate::store::{Batch, EventFilter, EventRecord, NewEvent, SessionId, Store, StoreError};

/// Event kinds as stored (the `EventType` numbers of the public API).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Qr,
    Connection,
}

impl EventKind {
    pub fn of(payload: &Payload) -> EventType {
        match payload {
            Payload::Qr(_) => EventType::Qr,
            Payload::Connection(_) => EventType::Connection,
            Payload::Message(_) => EventType::Message,
            Payload::Receipt(_) => EventType::Receipt,
        }
    }
}

/// Writes events and wakes subscribers.
#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
    last: Arc<watch::Sender<u64>>,
}

impl EventLog {
    pub fn new(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let last = store.last_cursor()?;
        Ok(Self {
            store,
            last: Arc::new(watch::channel(last).0),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Commits `batch` plus `events` atomically (off the async runtime) and
    /// announces the new cursor.
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
        mut batch: Batch,
        events: Vec<Payload>,
        now_ms: u64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        for payload in events {
            let kind = EventKind::of(&payload) as i32 as u8;
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
        let records = self.store.commit(session, batch)?;
        crate::metrics::global()
            .events_written
            .fetch_add(records.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(last) = records.last() {
            self.last.send_if_modified(|c| {
                let changed = last.cursor > *c;
                *c = (*c).max(last.cursor);
                changed
            });
        }
        Ok(records)
    }

    /// A receiver that changes whenever new events are committed.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }

    /// Highest cursor committed so far.
    pub fn last_cursor(&self) -> u64 {
        *self.last.borrow()
    }

    /// Reads committed events after `cursor`.
    pub async fn read(
        &self,
        cursor: u64,
        filter: EventFilter,
        limit: usize,
    ) -> Result<Vec<gateway::Event>, StoreError> {
        let store = self.store.clone();
        let records =
            tokio::task::spawn_blocking(move || store.events_after(cursor, &filter, limit))
                .await
                .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))??;
        Ok(records.into_iter().map(to_api_event).collect())
    }
}

/// Rebuilds the public event from a stored record.
fn to_api_event(record: EventRecord) -> gateway::Event {
    // A record this build cannot parse still reaches the subscriber, with its
    // position, so nothing is silently skipped.
    let mut event = gateway::Event::decode(record.payload.as_slice()).unwrap_or_default();
    event.cursor = record.cursor;
    event.session_id = record.session_id.as_str().to_owned();
    event.seq = record.seq;
    event.timestamp = Some(timestamp(record.timestamp_ms));
    event
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}
