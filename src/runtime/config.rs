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

/// WhatsApp's chat websocket, where sessions connect unless told otherwise.
pub const WHATSAPP_URL: &str = "wss://web.whatsapp.com/ws/chat";

/// Runtime settings.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Websocket URLs of the chat server; each session uses one of them,
    /// chosen by its id (see [`RuntimeConfig::wa_url_for`]). Never empty.
    pub wa_urls: Vec<String>,
    /// Protocol settings (root key, device info, timers).
    pub client: ClientConfig,
    /// Sessions that may be online at once.
    pub max_sessions: usize,
    /// Consecutive failed reconnects before a session gives up; 0 = never.
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
            wa_urls: vec![WHATSAPP_URL.to_owned()],
            client: ClientConfig::default(),
            max_sessions: 1000,
            max_reconnect_attempts: 0,
            backoff: Backoff::default(),
            handshakes_per_second: 50,
            media: MediaSettings::default(),
            history: HistorySettings::default(),
            leases: Leases::default(),
        }
    }
}

impl RuntimeConfig {
    /// The chat server URL session `id` connects to: always the same one
    /// for a session, the sessions spread evenly over the list (FNV-1a of
    /// the id, stable across builds and restarts).
    pub fn wa_url_for(&self, id: &str) -> &str {
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let n = self.wa_urls.len().max(1) as u64;
        self.wa_urls
            .get((hash % n) as usize)
            .map_or(WHATSAPP_URL, String::as_str)
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

#[cfg(test)]
mod tests {
    use super::{RuntimeConfig, WHATSAPP_URL};

    #[test]
    fn sessions_spread_evenly_and_stay_on_their_url() {
        let config = RuntimeConfig {
            wa_urls: vec!["ws://a".into(), "ws://b".into(), "ws://c".into()],
            ..RuntimeConfig::default()
        };
        let mut counts = [0usize; 3];
        for i in 0..3_000 {
            let id = format!("session-{i}");
            let url = config.wa_url_for(&id);
            assert_eq!(url, config.wa_url_for(&id), "always the same URL");
            let k = config
                .wa_urls
                .iter()
                .position(|u| u == url)
                .expect("one of them");
            counts[k] += 1;
        }
        for count in counts {
            assert!((800..=1_200).contains(&count), "{counts:?}");
        }
        let one = RuntimeConfig::default();
        assert_eq!(one.wa_url_for("x"), WHATSAPP_URL);
        let none = RuntimeConfig {
            wa_urls: Vec::new(),
            ..RuntimeConfig::default()
        };
        assert_eq!(none.wa_url_for("x"), WHATSAPP_URL);
    }
}
