//! Assembles the gateway process: store, keys, optional in-process simulator,
//! session runtime and the gRPC server; runs it until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::{self, ApiKeys};
use crate::runtime::{Backoff, EventLog, Manager, RuntimeConfig};
use crate::sim::{SimConfig, Simulator};
use crate::store::{Keyring, RedisOptions, RedisStore, Retention, SqliteStore, Store};
use crate::wa::conn::{ClientConfig, Timeouts};

/// Everything `wagate serve` can be told.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_keys: Vec<String>,
    pub max_sessions: usize,
    pub max_reconnect_attempts: u32,
    pub handshakes_per_second: u32,
    /// Chat server websocket URL; `None` = WhatsApp (or the sandbox with `sim`).
    pub wa_url: Option<String>,
    /// Root key the server certificates must chain to; `None` = WhatsApp's.
    pub wa_root_key: Option<[u8; 32]>,
    /// Run the simulator in-process and point sessions at it; it keeps its
    /// accounts in `data_dir/sim`, so paired sessions survive a restart.
    pub sim: bool,
    /// `WAGATE_STORE_KEY` value, if set.
    pub store_key: Option<String>,
    /// Key file used when `store_key` is unset (created if absent).
    pub store_key_file: Option<PathBuf>,
    /// Keep sessions, secrets and events in this Redis instead of SQLite in the data dir.
    pub redis: Option<RedisOptions>,
    /// With a shared store: how long a session's lease lasts unless renewed.
    pub lease_ttl: Duration,
    /// With a shared store: the address other gateways and clients reach this one at
    /// (default: the listen address).
    pub advertise: Option<String>,
    /// With a shared store: calm needed before rebalancing (and the newcomer window).
    pub rebalance_settle: Duration,
    /// With a shared store: sessions handed over per second while rebalancing (0 = never).
    pub rebalance_per_second: u32,
    pub retention: Retention,
    /// Time between health turning NOT_SERVING and the listener closing.
    pub drain_delay: Duration,
    /// How long calls still in flight (e.g. health watches) may run after
    /// the listener closed before they are cut.
    pub shutdown_grace: Duration,
    pub backoff: Backoff,
    /// Protocol timers (handshake, keepalive, QR lifetimes).
    pub timeouts: Timeouts,
    /// Address of the Prometheus scrape endpoint (`GET /metrics`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// What API clients may hold open (connections, idle time, descriptors).
    pub api_limits: api::hygiene::Hygiene,
    /// Largest media file sent, uploaded or downloaded.
    pub max_media_bytes: u64,
    /// Ask the phone for its whole history when a device pairs (instead of
    /// the recent part it sends by default).
    pub full_history: bool,
    /// Largest inflated history chunk accepted.
    pub max_history_chunk_bytes: usize,
    /// Which addresses media URLs given to Send may point to.
    pub media_fetch_policy: crate::runtime::FetchPolicy,
}

impl ServeOptions {
    /// Defaults suited to tests and local use, with the given data dir.
    pub fn local(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir,
            api_keys: Vec::new(),
            max_sessions: 1000,
            max_reconnect_attempts: 0,
            handshakes_per_second: 50,
            wa_url: None,
            wa_root_key: None,
            sim: false,
            store_key: None,
            store_key_file: None,
            redis: None,
            lease_ttl: Duration::from_secs(8),
            advertise: None,
            rebalance_settle: Duration::from_secs(60),
            rebalance_per_second: 20,
            retention: Retention {
                max_age_ms: Some(7 * 24 * 3600 * 1000),
                max_per_session: Some(100_000),
            },
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(10),
            backoff: Backoff::default(),
            timeouts: Timeouts::default(),
            metrics_listen: None,
            api_limits: api::hygiene::Hygiene::default(),
            max_media_bytes: 100 * 1024 * 1024,
            full_history: false,
            max_history_chunk_bytes: crate::wa::history::DEFAULT_MAX_INFLATED,
            media_fetch_policy: crate::runtime::FetchPolicy::default(),
        }
    }
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "refusing to listen on {0} without API keys: set WAGATE_API_KEYS (or listen on 127.0.0.1)"
    )]
    NoKeysOnPublicAddress(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("cannot open the store {}: {source}{}", path.display(), file_hint(source))]
    OpenStore {
        path: PathBuf,
        source: crate::store::StoreError,
    },
    #[error(
        "a Redis store is shared by every replica, so they must share its key: set \
         WAGATE_STORE_KEY or --store-key-file (a key generated in one pod's data dir would \
         differ from the next pod's)"
    )]
    RedisNeedsSharedKey,
    #[error("simulator: {0}")]
    Sim(String),
    #[error("--wa-url: {0}")]
    WaUrl(String),
    #[error("runtime: {0}")]
    Runtime(#[from] crate::runtime::RuntimeError),
}

/// What to check when SQLite could not use the store's files.
fn file_hint(e: &crate::store::StoreError) -> &'static str {
    use rusqlite::ErrorCode;
    match e {
        crate::store::StoreError::Sqlite(e) => match e.sqlite_error_code() {
            Some(ErrorCode::SystemIoFailure | ErrorCode::DiskFull) => {
                " (is the disk full? SQLite needs room for its WAL files beside it)"
            }
            Some(ErrorCode::ReadOnly | ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => {
                " (can this process write to the data dir?)"
            }
            _ => "",
        },
        _ => "",
    }
}

/// A running gateway.
pub struct Running {
    /// Address the gRPC server listens on.
    pub addr: SocketAddr,
    /// Address of the Prometheus endpoint, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The in-process simulator (sandbox mode).
    pub sim: Option<Simulator>,
    pub manager: Arc<Manager>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Graceful stop: health NOT_SERVING, stop accepting, close every session
    /// cleanly, flush, return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.task.await;
    }

    /// Runs until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        info!("shutdown requested");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn open_keyring(opts: &ServeOptions) -> Result<Keyring, StartError> {
    if let Some(value) = &opts.store_key {
        return Ok(Keyring::from_env_value(value)?);
    }
    let path = opts
        .store_key_file
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("store.key"));
    let (keyring, created) = Keyring::load_or_create_file(&path)?;
    if created {
        warn!(
            path = %path.display(),
            "no WAGATE_STORE_KEY set: generated a store key file; back it up, or the stored sessions cannot be read"
        );
    }
    Ok(keyring)
}

/// Starts the gateway.
pub async fn start(opts: ServeOptions) -> Result<Running, StartError> {
    let keys = ApiKeys::new(opts.api_keys.clone());
    if keys.is_empty() {
        if !opts.listen.ip().is_loopback() {
            return Err(StartError::NoKeysOnPublicAddress(opts.listen));
        }
        warn!("no API keys configured: every caller on this host is allowed");
    }
    std::fs::create_dir_all(&opts.data_dir)
        .map_err(|e| StartError::DataDir(opts.data_dir.clone(), e))?;
    let store: Arc<dyn Store> = match &opts.redis {
        Some(redis) => {
            if opts.store_key.is_none() && opts.store_key_file.is_none() {
                return Err(StartError::RedisNeedsSharedKey);
            }
            let keyring = open_keyring(&opts)?;
            let redis = redis.clone();
            let store = tokio::task::spawn_blocking(move || RedisStore::open(&redis, keyring))
                .await
                .map_err(|e| {
                    crate::store::StoreError::Unavailable(format!("opening the redis store: {e}"))
                })??;
            info!(store = ?store, "using the redis store");
            Arc::new(store)
        }
        None => {
            let path = opts.data_dir.join("wagate.db");
            let keys = open_keyring(&opts)?;
            Arc::new(
                SqliteStore::open(&path, keys)
                    .map_err(|source| StartError::OpenStore { path, source })?,
            )
        }
    };

    let sim = if opts.sim {
        let media = crate::sim::MediaConfig {
            dir: Some(opts.data_dir.join("sim-media")),
            ..crate::sim::MediaConfig::default()
        };
        let sim = Simulator::start_with_media(
            SimConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                seed: None,
                data_dir: Some(opts.data_dir.join("sim")),
            },
            media,
        )
        .await
        .map_err(|e| StartError::Sim(e.to_string()))?;
        info!(ws_url = %sim.ws_url(), media_url = %sim.media_url(), "sandbox simulator started");
        Some(sim)
    } else {
        None
    };

    let mut client = ClientConfig {
        timeouts: opts.timeouts.clone(),
        ..ClientConfig::default()
    };
    client.device.full_history = opts.full_history;
    let mut wa_urls = vec![crate::runtime::WHATSAPP_URL.to_owned()];
    if let Some(sim) = &sim {
        wa_urls = vec![sim.ws_url()];
        client.root_key = sim.root_public_key();
    }
    if let Some(urls) = &opts.wa_url {
        wa_urls = parse_wa_urls(urls)?;
    }
    if let Some(root) = opts.wa_root_key {
        client.root_key = root;
    }
    let plain_media = wa_urls.iter().all(|url| url.starts_with("ws://"));
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| StartError::Bind(opts.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(opts.listen, e))?;
    let config = RuntimeConfig {
        wa_urls,
        client,
        max_sessions: opts.max_sessions,
        max_reconnect_attempts: opts.max_reconnect_attempts,
        backoff: opts.backoff,
        handshakes_per_second: opts.handshakes_per_second,
        media: crate::runtime::MediaSettings {
            max_bytes: opts.max_media_bytes,
            dir: opts.data_dir.join("media-tmp"),
            fetch_policy: opts.media_fetch_policy.clone(),
            // Plain HTTP only for a chat server reached over plain ws://
            // (a simulator on loopback); WhatsApp's media hosts are HTTPS.
            scheme: if plain_media {
                crate::wa::media::Scheme::Http
            } else {
                crate::wa::media::Scheme::Https
            },
            ..Default::default()
        },
        history: crate::runtime::HistorySettings {
            max_inflated_bytes: opts.max_history_chunk_bytes,
        },
        leases: crate::runtime::Leases {
            ttl: opts.lease_ttl,
            advertise: opts.advertise.clone().unwrap_or_else(|| addr.to_string()),
            settle: opts.rebalance_settle,
            rebalance_per_second: opts.rebalance_per_second,
        },
    };
    let events = EventLog::new(store.clone())?;
    events.follow_other_writers();
    let manager = Arc::new(Manager::new(config, events));
    manager.keep_leases();

    let metrics_addr = match opts.metrics_listen {
        Some(addr) => Some(
            crate::metrics::start_prometheus(addr)
                .await
                .map_err(|e| StartError::Bind(addr, e))?,
        ),
        None => None,
    };

    let (health, health_service) = api::health().await;
    // Before the API serves: an Init cannot race the restore and create a
    // second actor (or a fresh record) for a stored session.
    manager.restore().await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (close_tx, close_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(api::serve(
        listener,
        manager.clone(),
        keys,
        sim.clone(),
        health_service,
        opts.api_limits,
        async move {
            let _ = close_rx.await;
        },
    ));
    health.set(true).await;
    info!(%addr, "gateway listening");
    // Gateways sharing a store are ready while they hold their leases and their place in the
    // group; the process stays live either way.
    let mut ready = manager.readiness();
    let for_readiness = health.clone();
    let readiness = tokio::spawn(async move {
        loop {
            let now = *ready.borrow_and_update();
            for_readiness.set_ready(now).await;
            if ready.changed().await.is_err() {
                break;
            }
        }
    });

    let events_log = manager.events().clone();
    let retention = opts.retention;
    // QR payloads carry the ADV secret: blanked in the log once expired.
    let qr_lifetime_ms = opts.timeouts.qr_first_ms.max(opts.timeouts.qr_next_ms);
    let pruner = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let now = i64::try_from(crate::runtime::now_ms()).unwrap_or(i64::MAX);
            match events_log
                .apply_retention(retention, qr_lifetime_ms, now)
                .await
            {
                Ok((0, 0)) => {}
                Ok((pruned, redacted)) => {
                    info!(pruned, redacted, "event log retention applied")
                }
                Err(e) => warn!("event retention: {e}"),
            }
        }
    });

    // Freed heap goes back to the system after waves of disconnects.
    let for_memory = manager.clone();
    let store = manager.events().store().clone();
    let releaser = tokio::spawn(async move {
        let mut releaser = crate::memory::Releaser::default();
        let mut tick = tokio::time::interval(crate::memory::CHECK_EVERY);
        loop {
            tick.tick().await;
            let online = for_memory.online_sessions();
            if releaser.check(online, crate::memory::CHECK_EVERY) {
                let store = store.clone();
                // The store's caches first: what they free is then returned too.
                let released = tokio::task::spawn_blocking(move || {
                    store.release_memory();
                    crate::memory::release_free_memory()
                })
                .await;
                tracing::debug!(
                    online,
                    released = released.unwrap_or(false),
                    "freed heap returned"
                );
            }
        }
    });

    let mgr = manager.clone();
    let sim_for_stop = sim.clone();
    let drain_delay = opts.drain_delay;
    let grace = opts.shutdown_grace;
    let task = tokio::spawn(async move {
        let _ = stop_rx.await;
        // Probes see NOT_SERVING and open health watches end now, so they
        // do not hold the server open past the drain.
        readiness.abort();
        health.drain().await;
        if !drain_delay.is_zero() {
            tokio::time::sleep(drain_delay).await;
        }
        let _ = close_tx.send(());
        mgr.shutdown().await;
        pruner.abort();
        releaser.abort();
        let mut server = server;
        match tokio::time::timeout(grace, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!("server: {e}"),
            Ok(Err(e)) => warn!("server task: {e}"),
            Err(_) => {
                warn!("calls still open after {grace:?}; cutting them");
                server.abort();
            }
        }
        if let Some(sim) = sim_for_stop {
            sim.shutdown().await;
        }
        info!("gateway stopped");
    });
    Ok(Running {
        addr,
        metrics_addr,
        sim,
        manager,
        stop: Some(stop_tx),
        task,
    })
}

/// `--wa-url`: one websocket URL, or several separated by commas (sessions
/// spread over them by id).
fn parse_wa_urls(list: &str) -> Result<Vec<String>, StartError> {
    let urls: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err(StartError::WaUrl("no URL given".into()));
    }
    if let Some(bad) = urls
        .iter()
        .find(|url| !(url.starts_with("ws://") || url.starts_with("wss://")))
    {
        let shown: String = bad.chars().take(80).collect();
        return Err(StartError::WaUrl(format!(
            "{shown:?} is not a ws:// or wss:// URL"
        )));
    }
    Ok(urls)
}

#[cfg(test)]
mod wa_url_tests {
    use super::parse_wa_urls;

    #[test]
    fn one_or_several_websocket_urls() {
        assert_eq!(
            parse_wa_urls("ws://127.0.0.1:1/ws/chat").expect("one"),
            ["ws://127.0.0.1:1/ws/chat"]
        );
        assert_eq!(
            parse_wa_urls(" ws://a/ws/chat, wss://b/ws/chat ,").expect("two"),
            ["ws://a/ws/chat", "wss://b/ws/chat"]
        );
        assert!(parse_wa_urls(" , ").is_err());
        let long = format!("http://{}", "x".repeat(10_000));
        let err = parse_wa_urls(&long)
            .expect_err("not a websocket URL")
            .to_string();
        assert!(err.len() < 200, "{err}");
    }
}
