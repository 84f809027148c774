//! Following the event log for one subscriber: a [`Follower`] reads the log
//! page by page from its cursor and, once caught up, waits for a commit its
//! filter matches. Built on the writer's reads and wake-ups (`events`),
//! which never import this module.
//!
//! What a subscriber costs the gateway: one [`Subscription`] in the registry
//! (a `Notify` and its kind set, under 200 bytes) and, while it follows, one
//! page of stored events (at most [`PAGE_BYTES`] of payload plus the event
//! that crosses it, and at most [`PAGE_EVENTS`] events). Nothing is buffered
//! for it elsewhere: a [`Follower`] reads the next page only when the
//! previous one is handed on, and the gRPC stream pulls the next event only
//! when HTTP/2 flow control lets it send, so a subscriber that stops reading
//! stops costing more (the transport adds its own send buffer, bounded by
//! the client's window). When it reads again it goes on from its cursor in
//! the log, gap-free.

use std::collections::VecDeque;

use crate::proto::gateway;
use crate::store::{EventFilter, EventRecord, StoreError};

use super::event_records::to_api_event;
use super::events::{EventLog, Subscription};

/// Events read from the log per page while following.
const PAGE_EVENTS: usize = 256;
/// Payload bytes read from the log per page while following.
const PAGE_BYTES: usize = 64 * 1024;

impl EventLog {
    /// Follows the log after `cursor` for the events `filter` matches.
    pub fn follow(&self, cursor: u64, filter: EventFilter) -> Follower {
        Follower {
            log: self.clone(),
            subscription: self.subscribe(filter.clone()),
            filter,
            cursor,
            scanned: cursor,
            page: VecDeque::new(),
            caught_up: false,
        }
    }
}

/// Reads the log for one subscriber, page by page, waiting for a matching
/// commit when it has caught up.
pub struct Follower {
    log: EventLog,
    subscription: Subscription,
    filter: EventFilter,
    /// The last event handed on.
    cursor: u64,
    /// How far the log has been read (never behind `cursor`): the last
    /// event handed on or queued, or beyond it past events the filter does
    /// not match.
    scanned: u64,
    page: VecDeque<EventRecord>,
    /// The last read returned every matching event the log had (a page
    /// under both bounds): the next read waits for a matching commit.
    caught_up: bool,
}

impl Follower {
    /// The next event after the cursor, waiting for one if the log has none
    /// yet. Cancel-safe: an event counts as handed on only once returned.
    pub async fn next(&mut self) -> Result<gateway::Event, StoreError> {
        loop {
            if let Some(record) = self.page.pop_front() {
                self.cursor = record.cursor;
                return Ok(to_api_event(record));
            }
            if self.caught_up {
                // Nothing matched after the last read's snapshot then; a
                // commit since has left a wake-up (it announces after it is
                // visible, and the subscription was registered before the
                // first read), so this does not miss one. Without it every
                // event would cost a second read that finds nothing.
                self.subscription.changed().await;
            }
            let after = self.scanned;
            if let Some(recent) =
                self.log
                    .recent_after(after, &self.filter, PAGE_EVENTS, PAGE_BYTES)
            {
                // Caught up if memory held everything announced so far; a
                // commit announced since read `last` after keeping its
                // events, and its wake-up comes after that.
                self.caught_up = !recent.full && recent.scanned >= self.log.last_cursor();
                self.scanned = recent.scanned;
                self.page = recent.events.into();
                continue;
            }
            let page = self
                .log
                .read_page(after, self.filter.clone(), PAGE_EVENTS, PAGE_BYTES)
                .await?;
            let bytes: usize = page.iter().map(|e| e.payload.len()).sum();
            self.caught_up = page.len() < PAGE_EVENTS && bytes < PAGE_BYTES;
            if let Some(last) = page.last() {
                self.scanned = last.cursor;
            }
            self.page = page.into();
        }
    }

    /// The cursor of the last event handed on.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gateway::event::Payload;
    use crate::proto::gateway::{ConnectionEvent, QrEvent};
    use crate::store::{Batch, MemoryStore, SessionId};
    use std::sync::Arc;
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

    /// A log with `backlog` events of session `a`, and a follower of `a`
    /// from its start.
    async fn follower_of_a_after(backlog: usize) -> (EventLog, Follower) {
        let log = EventLog::new(Arc::new(MemoryStore::new())).expect("log");
        let events: Vec<Payload> = (0..backlog).map(|_| connection()).collect();
        log.commit(&sid("a"), Batch::new(), events, 1)
            .await
            .expect("commit");
        let follower = log.follow(
            0,
            EventFilter {
                sessions: vec![sid("a")],
                kinds: vec![],
            },
        );
        (log, follower)
    }

    #[tokio::test]
    async fn a_follower_reads_pages_then_waits_for_its_sessions() {
        let (a, b) = (sid("a"), sid("b"));
        // More than a page of backlog.
        let (log, mut follower) = follower_of_a_after(PAGE_EVENTS + 10).await;
        for seq in 1..=(PAGE_EVENTS + 10) as u64 {
            let event = follower.next().await.expect("event");
            assert_eq!(event.seq, seq);
            assert_eq!(event.session_id, "a");
        }
        assert!(follower.page.len() <= PAGE_EVENTS);

        // Caught up: it waits, and a commit for another session does not
        // end the wait.
        let pending = tokio::time::timeout(Duration::from_millis(20), follower.next()).await;
        assert!(pending.is_err(), "nothing to read yet");
        log.commit(&b, Batch::new(), vec![qr()], 2)
            .await
            .expect("commit");
        let log2 = log.clone();
        let a2 = a.clone();
        let writer = tokio::spawn(async move {
            log2.commit(&a2, Batch::new(), vec![qr()], 3)
                .await
                .expect("commit")
        });
        let event = follower.next().await.expect("event");
        assert_eq!((event.session_id.as_str(), event.seq), ("a", 267));
        assert!(matches!(event.payload, Some(Payload::Qr(_))));
        assert_eq!(follower.cursor(), event.cursor);
        writer.await.expect("writer");
    }

    #[tokio::test]
    async fn a_follower_goes_from_the_store_to_recent_events_and_back_gap_free() {
        let (a, b) = (sid("a"), sid("b"));
        // More events than memory keeps: the first ones come from the store.
        let (log, mut follower) = follower_of_a_after(1500).await;
        for seq in 1..=1500 {
            assert_eq!(follower.next().await.expect("event").seq, seq);
        }
        // Other sessions' events in between are skipped, in memory or not;
        // a QR event (never kept in memory) still arrives.
        let commits = [
            (&b, connection()),
            (&a, qr()),
            (&b, connection()),
            (&a, connection()),
        ];
        for (n, (session, payload)) in commits.into_iter().enumerate() {
            log.commit(session, Batch::new(), vec![payload], 2 + n as u64)
                .await
                .expect("commit");
        }
        let qr_event = follower.next().await.expect("event");
        assert_eq!(qr_event.seq, 1501);
        assert!(matches!(qr_event.payload, Some(Payload::Qr(_))));
        let next = follower.next().await.expect("event");
        assert_eq!((next.session_id.as_str(), next.seq), ("a", 1502));
        assert_eq!(next.cursor, 1504);
        let pending = tokio::time::timeout(Duration::from_millis(20), follower.next()).await;
        assert!(pending.is_err(), "nothing more for a");
    }
}
