//! The most recent events, kept in memory after their commit so that the
//! subscribers following the log closely (nearly all of them, nearly all
//! the time) get a new event without reading the store: reading one event
//! back cost a blocking-pool hop, a query and an AES open each, per event
//! and per subscriber. Only a window of consecutive cursors is kept; a
//! subscriber behind it, or at a gap, reads the store as before, and the
//! store stays the record.
//!
//! What the window may hold: only committed events of this process's own
//! commits, each exactly as stored. QR events are never kept (their payload
//! carries the ADV secret and is taken out of the log when the code
//! expires), so the window starts over after one. Bounded in events and
//! bytes, whatever the events carry.

use std::collections::VecDeque;

use crate::proto::gateway::EventType;
use crate::store::{EventFilter, EventRecord};

/// Events kept at most: a subscriber that falls further behind reads pages
/// from the store until it has caught up.
const RECENT_EVENTS: usize = 1024;
/// Payload bytes kept at most.
const RECENT_BYTES: usize = 512 * 1024;

/// Committed events with consecutive cursors, oldest first.
#[derive(Default)]
pub(super) struct RecentEvents {
    records: VecDeque<EventRecord>,
    bytes: usize,
}

/// What the window answers for a position in the log.
#[derive(Debug, PartialEq)]
pub(super) struct RecentPage {
    /// The events after the position that the filter matches.
    pub(super) events: Vec<EventRecord>,
    /// The cursor examined up to (events in between did not match).
    pub(super) scanned: u64,
    /// Whether the page stopped at a bound, not at the window's end.
    pub(super) full: bool,
}

impl RecentEvents {
    /// Adds the events of a commit (in cursor order). An event that does
    /// not follow the newest one kept starts the window over (a commit
    /// announced out of order, or one whose events cannot be kept); one at
    /// or below it was announced late and is left to the store.
    pub(super) fn push(&mut self, records: &[EventRecord]) {
        for record in records {
            let newest = self.records.back().map(|r| r.cursor);
            if newest.is_some_and(|newest| record.cursor <= newest) {
                continue;
            }
            let follows = newest.is_none_or(|newest| newest + 1 == record.cursor);
            if !follows {
                self.clear();
            }
            if record.kind == EventType::Qr as i32 as u8 {
                self.clear();
                continue;
            }
            self.bytes += record.payload.len();
            self.records.push_back(record.clone());
            while self.records.len() > RECENT_EVENTS || self.bytes > RECENT_BYTES {
                let Some(oldest) = self.records.pop_front() else {
                    break;
                };
                self.bytes -= oldest.payload.len();
            }
        }
    }

    fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    /// The events after cursor `after` that `filter` matches, at most
    /// `limit` and about `max_bytes` of payload (the event crossing the
    /// bound included), if the window holds the event right after `after`
    /// or ends exactly at it; `None` sends the reader to the store.
    pub(super) fn after(
        &self,
        after: u64,
        filter: &EventFilter,
        limit: usize,
        max_bytes: usize,
    ) -> Option<RecentPage> {
        let oldest = self.records.front()?.cursor;
        let newest = self.records.back()?.cursor;
        // At the newest event the page is empty (`start` is the window's end).
        if after < oldest.checked_sub(1)? || after > newest {
            return None;
        }
        let start = usize::try_from(after + 1 - oldest).ok()?;
        let mut page = RecentPage {
            events: Vec::new(),
            scanned: after,
            full: false,
        };
        let mut bytes = 0;
        for record in self.records.range(start..) {
            if page.events.len() >= limit || bytes >= max_bytes {
                page.full = true;
                break;
            }
            page.scanned = record.cursor;
            if filter.matches(record) {
                bytes += record.payload.len();
                page.events.push(record.clone());
            }
        }
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SessionId;

    fn event(cursor: u64, session: &str, kind: EventType, bytes: usize) -> EventRecord {
        EventRecord {
            cursor,
            session_id: session.parse::<SessionId>().expect("id"),
            seq: cursor,
            timestamp_ms: 0,
            kind: kind as i32 as u8,
            payload: vec![7; bytes],
        }
    }

    fn cursors(page: &RecentPage) -> Vec<u64> {
        page.events.iter().map(|e| e.cursor).collect()
    }

    #[test]
    fn serves_consecutive_events_filtered_and_sends_the_rest_to_the_store() {
        let mut recent = RecentEvents::default();
        assert_eq!(recent.after(0, &EventFilter::all(), 10, 1000), None);
        recent.push(&[
            event(5, "a", EventType::Message, 10),
            event(6, "b", EventType::Message, 10),
            event(7, "a", EventType::Receipt, 10),
        ]);
        // Before the window (4 is not kept): the store.
        assert_eq!(recent.after(3, &EventFilter::all(), 10, 1000), None);
        let all = recent
            .after(4, &EventFilter::all(), 10, 1000)
            .expect("held");
        assert_eq!(
            (cursors(&all), all.scanned, all.full),
            (vec![5, 6, 7], 7, false)
        );
        let only_a = EventFilter {
            sessions: vec!["a".parse().expect("id")],
            kinds: vec![EventType::Message as i32 as u8],
        };
        let page = recent.after(5, &only_a, 10, 1000).expect("held");
        assert_eq!((cursors(&page), page.scanned), (vec![], 7));
        // At the newest: nothing yet, from memory.
        let none = recent
            .after(7, &EventFilter::all(), 10, 1000)
            .expect("held");
        assert_eq!(
            (cursors(&none), none.scanned, none.full),
            (vec![], 7, false)
        );
        // Beyond it (read from the store already): the store.
        assert_eq!(recent.after(8, &EventFilter::all(), 10, 1000), None);
        // Bounds: by count, and by bytes with the crossing event included.
        let two = recent.after(4, &EventFilter::all(), 2, 1000).expect("held");
        assert_eq!(
            (cursors(&two), two.scanned, two.full),
            (vec![5, 6], 6, true)
        );
        let bytes = recent.after(4, &EventFilter::all(), 10, 15).expect("held");
        assert_eq!((cursors(&bytes), bytes.full), (vec![5, 6], true));
    }

    #[test]
    fn gaps_late_commits_and_qr_codes_start_the_window_over() {
        let mut recent = RecentEvents::default();
        recent.push(&[event(1, "a", EventType::Message, 1)]);
        // Cursor 2 not announced yet: 3 starts over, 2 arriving late is left out.
        recent.push(&[event(3, "a", EventType::Message, 1)]);
        recent.push(&[event(2, "a", EventType::Message, 1)]);
        assert_eq!(recent.after(0, &EventFilter::all(), 10, 100), None);
        assert_eq!(recent.after(1, &EventFilter::all(), 10, 100), None);
        let page = recent.after(2, &EventFilter::all(), 10, 100).expect("held");
        assert_eq!(cursors(&page), vec![3]);
        // A QR event is never held: readers before it go to the store.
        recent.push(&[
            event(4, "a", EventType::Qr, 1),
            event(5, "a", EventType::Message, 1),
        ]);
        assert_eq!(recent.after(3, &EventFilter::all(), 10, 100), None);
        let page = recent.after(4, &EventFilter::all(), 10, 100).expect("held");
        assert_eq!(cursors(&page), vec![5]);
    }

    #[test]
    fn memory_stays_bounded() {
        let mut recent = RecentEvents::default();
        for cursor in 1..=(RECENT_EVENTS as u64 + 100) {
            recent.push(&[event(cursor, "a", EventType::Message, 1)]);
        }
        assert_eq!(recent.records.len(), RECENT_EVENTS);
        assert_eq!(recent.records.front().map(|r| r.cursor), Some(101));
        for cursor in 2000..2010 {
            recent.push(&[event(cursor, "a", EventType::Message, RECENT_BYTES / 4)]);
        }
        assert!(recent.bytes <= RECENT_BYTES);
        assert!(recent.records.len() <= 4);
    }
}
