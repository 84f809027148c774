//! Events as the log stores them and as subscribers read them: the stored
//! kind of a payload, and the public event rebuilt from a stored record.
//! Pure conversions: imports no other runtime module.

use prost::Message;

use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{self, EventType};
use crate::store::EventRecord;

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
            Payload::Group(_) => EventType::Group,
            Payload::ChatState(_) => EventType::ChatState,
            Payload::Presence(_) => EventType::Presence,
            Payload::LinkCode(_) => EventType::LinkCode,
            Payload::History(_) => EventType::History,
            Payload::Contact(_) => EventType::Contact,
            Payload::ChatSettings(_) => EventType::ChatSettings,
        }
    }
}

/// Rebuilds the public event from a stored record.
pub(super) fn to_api_event(record: EventRecord) -> gateway::Event {
    // A record this build cannot parse still reaches the subscriber, with its
    // position, so nothing is silently skipped. A withheld payload (an expired
    // QR code, or a record that failed authentication and was quarantined)
    // reads back empty: the subscriber gets an empty payload of the event's
    // type at its place.
    let mut event = if record.payload.is_empty() {
        gateway::Event {
            payload: empty_payload(record.kind),
            ..Default::default()
        }
    } else {
        gateway::Event::decode(record.payload.as_slice()).unwrap_or_default()
    };
    event.cursor = record.cursor;
    event.session_id = record.session_id.as_str().to_owned();
    event.seq = record.seq;
    event.timestamp = Some(timestamp(record.timestamp_ms));
    event
}

/// An empty payload of the stored kind, if it is one this build knows.
fn empty_payload(kind: u8) -> Option<Payload> {
    match EventType::try_from(i32::from(kind)).ok()? {
        EventType::Qr => Some(Payload::Qr(Default::default())),
        EventType::Connection => Some(Payload::Connection(Default::default())),
        EventType::Message => Some(Payload::Message(Default::default())),
        EventType::Receipt => Some(Payload::Receipt(Default::default())),
        EventType::Group => Some(Payload::Group(Default::default())),
        EventType::ChatState => Some(Payload::ChatState(Default::default())),
        EventType::Presence => Some(Payload::Presence(Default::default())),
        EventType::LinkCode => Some(Payload::LinkCode(Default::default())),
        EventType::History => Some(Payload::History(Default::default())),
        EventType::Contact => Some(Payload::Contact(Default::default())),
        EventType::ChatSettings => Some(Payload::ChatSettings(Default::default())),
        EventType::Unspecified => None,
    }
}

/// Milliseconds since the epoch as a protobuf timestamp.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}
