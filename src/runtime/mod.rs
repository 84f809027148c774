//! Session runtime: one task per session owning its websocket and driving the
//! protocol core; the registry that starts, limits, restores and stops them;
//! the event log writer. May import `wa` and `store`, never `api` or `sim`.

mod app_state;
mod backoff;
mod cluster;
mod config;
mod drive;
mod error;
mod event_follower;
mod event_records;
mod events;
mod fetch_policy;
mod history;
mod http;
mod key_records;
mod keys;
mod known_keys;
mod manager;
mod media;
mod media_flow;
mod messaging;
mod outgoing;
mod ownership;
mod payloads;
mod pipeline;
mod placement;
mod recent_events;
mod registry;
mod replies;
mod session;
mod socket;
mod status;
mod step;

pub use backoff::Backoff;
pub use cluster::Location;
pub use config::{HistorySettings, RuntimeConfig, WHATSAPP_URL};
pub use error::RuntimeError;
pub use event_records::{timestamp as timestamp_ms, EventKind};
pub use events::EventLog;
pub use fetch_policy::FetchPolicy;
pub use manager::{Manager, PairingCode};
pub use media::{MediaFailure, MediaSettings};
pub use media_flow::{
    MediaDownload, MediaSource, MediaSpec, MediaUpload, OutgoingMedia, UploadedMedia,
};
pub use messaging::{OutgoingText, SendError, Sent};
pub use ownership::Leases;
pub use status::{LinkCodeInfo, PairingMethod, QrInfo, SessionState, SessionStatus};

/// Milliseconds since the Unix epoch: the one place the runtime reads the clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
