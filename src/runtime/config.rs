//! Runtime settings and the state every session actor shares (the settings
//! the handshake pacer, media). Kept apart from the registry so that the actors
//! and the registry both import it and never each other.

use crate::wa::conn::ClientConfig;
use crate::wa::history::DEFAULT_MAX_INFLATED;

use super::backoff::{Backoff, Pacer};
use super::events::EventLog;
use super::media::{Media, MediaSettings};
use super::ownership::{Leases, Ownership};
use super::pipeline::Pipeline;

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Websocket URL of the chat server.
    pub wa_url: String,
    /// Protocol settings (root key, device info, timers).
    pub client: ClientConfig,
    /// Sessions that may be online at once.
    pub max_sessions: usize,
    /// Consecutive failed reconnects before a session gives up.
    pub max_reconnect_attempts: u32,
    pub backoff: Backoff,
    /// Handshakes per second across all sessions.
    pub handshakes_per_second: u32,
    /// Media limits, temporary files, media host scheme.
    pub media: MediaSettings,
    /// History sync limits (whether the phone sends its whole history is
    /// `client.device.full_history`).
    pub history: HistorySettings,
    /// Leases, when the store is shared with other gateways.
    pub leases: Leases,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            wa_url: "wss://web.whatsapp.com/ws/chat".to_owned(),
            client: ClientConfig::default(),
            max_sessions: 1000,
            max_reconnect_attempts: 10,
            backoff: Backoff::default(),
            handshakes_per_second: 50,
            media: MediaSettings::default(),
            history: HistorySettings::default(),
            leases: Leases::default(),
        }
    }
}

/// History settings.
#[derive(Clone, Debug)]
pub struct HistorySettings {
    /// Largest inflated chunk accepted; a larger one is reported as
    /// unreadable (its last page carries the error) and receipted.
    pub max_inflated_bytes: usize,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            max_inflated_bytes: DEFAULT_MAX_INFLATED,
        }
    }
}

/// What every session actor reads: the settings, the global pacer and the
/// message pipeline.
pub(crate) struct Shared {
    pub(crate) config: RuntimeConfig,
    pub(crate) pacer: Pacer,
    pub(crate) pipeline: Pipeline,
    pub(crate) media: Media,
    /// Set when the store is shared: sessions are served under leases.
    pub(crate) ownership: Option<std::sync::Arc<Ownership>>,
}

impl Shared {
    pub(crate) fn new(config: RuntimeConfig, events: &EventLog) -> Self {
        let pacer = Pacer::new(config.handshakes_per_second);
        let pipeline = Pipeline::start(events);
        let media = Media::new(config.media.clone());
        let ownership = Ownership::for_store(events.store(), &config.leases);
        Self {
            config,
            pacer,
            pipeline,
            media,
            ownership,
        }
    }
}
