//! `wagate` command line: `serve` (the gateway) and `sim` (the simulator).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// jemalloc rather than glibc's malloc: the message pipeline allocates and
/// frees many small buffers on one thread and drops them on another
/// (stanzas, records, events); see the README's load notes for what it
/// saves and costs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the
/// environment overrides them). Pages freed are given back to the kernel
/// after about a second instead of ten (jemalloc's default), in one step
/// (no "muzzy" stage): after a wave of disconnects the gateway holds
/// 1.3–1.5× what its remaining sessions need instead of 2.2×.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: MallocConf = MallocConf(c"dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer jemalloc reads once (`const char *malloc_conf`).
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}

#[derive(Parser)]
#[command(
    name = "wagate",
    version,
    about = "gRPC gateway for WhatsApp Web multi-device sessions"
)]
struct Cli {
    /// Log output format.
    #[arg(
        long,
        global = true,
        env = "WAGATE_LOG_FORMAT",
        default_value = "pretty"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve(Box<ServeArgs>),
    /// Run the WhatsApp chat-server simulator alone.
    Sim(Box<wagate::sim::cli::SimArgs>),
}

#[derive(Args)]
struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "WAGATE_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory for the embedded store (SQLite) and the generated store key.
    #[arg(long, env = "WAGATE_DATA_DIR", default_value = "./wagate-data")]
    data_dir: PathBuf,
    /// Comma-separated API keys. Required unless listening on loopback.
    #[arg(
        long,
        env = "WAGATE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Sessions that may be online at once.
    #[arg(long, env = "WAGATE_MAX_SESSIONS", default_value_t = 1000)]
    max_sessions: usize,
    /// Consecutive failed reconnects before a session gives up (0 = never:
    /// it retries at the backoff's cap, 60 s, for as long as it takes).
    #[arg(long, env = "WAGATE_MAX_RECONNECT_ATTEMPTS", default_value_t = 0)]
    max_reconnect_attempts: u32,
    /// Handshakes per second across all sessions (reconnect storm guard).
    #[arg(long, env = "WAGATE_HANDSHAKES_PER_SECOND", default_value_t = 50)]
    handshakes_per_second: u32,
    /// Largest media file (bytes) sent, uploaded with UploadMedia, fetched
    /// by URL or downloaded.
    #[arg(long, env = "WAGATE_MAX_MEDIA_BYTES", default_value_t = 100 * 1024 * 1024)]
    max_media_bytes: u64,
    /// Ask the account's phone for its whole chat history when a device
    /// pairs (`requireFullSync`); by default the phone sends its recent
    /// history. Applies to devices paired afterwards.
    #[arg(long, env = "WAGATE_FULL_HISTORY")]
    full_history: bool,
    /// Largest history chunk (bytes, inflated) read; a larger one is
    /// reported as unreadable in its HISTORY event.
    #[arg(long, env = "WAGATE_MAX_HISTORY_CHUNK_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_history_chunk_bytes: usize,
    /// Let media URLs given to Send point to loopback, private and
    /// link-local addresses (refused by default: the URL comes from an API
    /// caller and would otherwise reach the gateway's own network).
    #[arg(long, env = "WAGATE_MEDIA_URL_ALLOW_PRIVATE")]
    media_url_allow_private: bool,
    /// Hosts that media URLs may point to whatever their addresses
    /// (comma-separated names or IP literals, e.g. an internal file server).
    #[arg(long, env = "WAGATE_MEDIA_URL_ALLOW_HOSTS", value_delimiter = ',')]
    media_url_allow_host: Vec<String>,
    /// Chat server websocket URL (default: WhatsApp; the sandbox with --sim).
    /// Several, comma-separated, spread the sessions over them by id (e.g.
    /// the ports of `wagate sim --also-listen`).
    #[arg(long, env = "WAGATE_WA_URL")]
    wa_url: Option<String>,
    /// Hex root public key the server certificates must chain to (default: WhatsApp's).
    #[arg(long, env = "WAGATE_WA_ROOT_KEY")]
    wa_root_key: Option<String>,
    /// Sandbox: run the simulator in-process, point sessions at it and serve
    /// wagate.sim.v1.Simulator on the same port; its accounts are kept in
    /// DATA_DIR/sim across restarts.
    #[arg(long, env = "WAGATE_SIM")]
    sim: bool,
    /// Key file for encryption at rest, used when WAGATE_STORE_KEY is unset
    /// (default: DATA_DIR/store.key, created if absent).
    #[arg(long, env = "WAGATE_STORE_KEY_FILE")]
    store_key_file: Option<PathBuf>,
    /// Keep sessions, secrets and events in Redis instead of SQLite in the
    /// data dir: redis://[[user]:password@]host[:port][/db]. Run Redis with
    /// `appendonly yes` and `appendfsync always`; every replica needs the
    /// same WAGATE_STORE_KEY.
    #[arg(long, env = "WAGATE_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key (deployments sharing one Redis use different ones).
    #[arg(long, env = "WAGATE_REDIS_PREFIX", default_value = "wagate")]
    redis_prefix: String,
    /// Redis replicas that must confirm each commit (WAIT) before it counts; 0 = the primary's
    /// AOF alone.
    #[arg(long, env = "WAGATE_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    redis_wait_replicas: u32,
    /// With Redis: seconds a session's lease lasts unless renewed; a dead
    /// gateway's sessions move to another one after at most this long.
    #[arg(long, env = "WAGATE_LEASE_SECONDS", default_value_t = 8)]
    lease_seconds: u64,
    /// With Redis: the gRPC address clients and other gateways reach this one
    /// at (e.g. the pod IP and port); told to callers that reach another
    /// gateway for a session this one serves [default: the listen address].
    #[arg(long, env = "WAGATE_ADVERTISE_ADDR")]
    advertise_addr: Option<String>,
    /// With Redis: seconds the set of gateways must stay unchanged before
    /// sessions are rebalanced; also how long a new gateway counts as the
    /// newcomer that receives the sessions of gateways stopping during a
    /// rolling update.
    #[arg(long, env = "WAGATE_REBALANCE_SETTLE_SECONDS", default_value_t = 60)]
    rebalance_settle_seconds: u64,
    /// With Redis: sessions per second a gateway hands to less loaded ones
    /// while rebalancing (0 = never rebalance).
    #[arg(long, env = "WAGATE_REBALANCE_RATE", default_value_t = 20)]
    rebalance_rate: u32,
    /// Event log retention: maximum age in hours (0 = keep forever).
    #[arg(long, env = "WAGATE_EVENT_RETENTION_HOURS", default_value_t = 168)]
    event_retention_hours: u64,
    /// Event log retention: maximum events kept per session (0 = unlimited).
    #[arg(long, env = "WAGATE_EVENT_RETENTION_COUNT", default_value_t = 100_000)]
    event_retention_count: u64,
    /// Prometheus scrape endpoint (GET /metrics), e.g. 0.0.0.0:9090; off when unset.
    #[arg(long, env = "WAGATE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Seconds between health turning NOT_SERVING and the listener closing on shutdown.
    #[arg(long, env = "WAGATE_DRAIN_SECONDS", default_value_t = 5)]
    drain_seconds: u64,
    /// API connections open at once; more are closed on accept.
    #[arg(long, env = "WAGATE_API_MAX_CONNECTIONS", default_value_t = 4096)]
    api_max_connections: usize,
    /// Seconds an API connection may stay open with no call in progress.
    #[arg(long, env = "WAGATE_API_IDLE_SECONDS", default_value_t = 300)]
    api_idle_seconds: u64,
    /// Seconds a new API connection has to start HTTP/2.
    #[arg(long, env = "WAGATE_API_PREFACE_SECONDS", default_value_t = 10)]
    api_preface_seconds: u64,
    /// Open-file descriptors kept for sessions: an API connection that would
    /// take one of the last N is refused.
    #[arg(long, env = "WAGATE_API_FD_RESERVE", default_value_t = 256)]
    api_fd_reserve: u64,
}

fn parse_root_key(hex_key: &str) -> Result<[u8; 32], String> {
    let bytes =
        hex::decode(hex_key.trim()).map_err(|e| format!("WAGATE_WA_ROOT_KEY is not hex: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| "WAGATE_WA_ROOT_KEY must be 32 bytes (64 hex digits)".to_owned())
}

/// Every session holds a socket (in the gateway and in the simulator).
fn raise_open_files() {
    match wagate::limits::raise_open_files() {
        Ok(files) => tracing::info!(
            before = files.before,
            now = files.now,
            "open-file limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut opts = wagate::app::ServeOptions::local(args.data_dir);
    opts.listen = args.listen;
    opts.api_keys = args.api_keys;
    opts.max_sessions = args.max_sessions;
    opts.max_reconnect_attempts = args.max_reconnect_attempts;
    opts.handshakes_per_second = args.handshakes_per_second;
    opts.max_media_bytes = args.max_media_bytes;
    opts.full_history = args.full_history;
    opts.max_history_chunk_bytes = args.max_history_chunk_bytes;
    opts.media_fetch_policy = wagate::runtime::FetchPolicy {
        allow_private: args.media_url_allow_private,
        allow_hosts: args
            .media_url_allow_host
            .into_iter()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect(),
    };
    opts.wa_url = args.wa_url;
    opts.wa_root_key = args
        .wa_root_key
        .as_deref()
        .map(parse_root_key)
        .transpose()?;
    opts.sim = args.sim;
    opts.store_key = std::env::var("WAGATE_STORE_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    opts.store_key_file = args.store_key_file;
    opts.lease_ttl = Duration::from_secs(args.lease_seconds.max(2));
    opts.advertise = args.advertise_addr;
    opts.rebalance_settle = Duration::from_secs(args.rebalance_settle_seconds);
    opts.rebalance_per_second = args.rebalance_rate;
    opts.redis = args.redis_url.map(|url| {
        let mut redis = wagate::store::RedisOptions::new(url);
        redis.prefix = args.redis_prefix;
        redis.wait_replicas = args.redis_wait_replicas;
        redis
    });
    opts.retention.max_age_ms =
        (args.event_retention_hours > 0).then(|| args.event_retention_hours as i64 * 3_600_000);
    opts.retention.max_per_session =
        (args.event_retention_count > 0).then_some(args.event_retention_count);
    opts.drain_delay = Duration::from_secs(args.drain_seconds);
    opts.metrics_listen = args.metrics_listen;
    opts.api_limits = wagate::api::hygiene::Hygiene {
        max_connections: args.api_max_connections.max(1),
        preface_timeout: Duration::from_secs(args.api_preface_seconds.max(1)),
        idle_timeout: Duration::from_secs(args.api_idle_seconds.max(1)),
        fd_reserve: args.api_fd_reserve,
    };
    let running = wagate::app::start(opts).await.map_err(|e| e.to_string())?;
    println!("wagate listening on {}", running.addr);
    if let Some(addr) = running.metrics_addr {
        println!("metrics at http://{addr}/metrics");
    }
    if let Some(sim) = &running.sim {
        println!(
            "sandbox simulator at {} (control: wagate.sim.v1.Simulator on {})",
            sim.ws_url(),
            running.addr
        );
    }
    running.run_until_signal().await;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking work is store calls, which the store serialises anyway,
        // and file I/O: a few threads serve them, and a restart of thousands
        // of sessions queues instead of starting hundreds of threads.
        .max_blocking_threads(16)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wagate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let format = match cli.log_format {
        LogFormat::Pretty => wagate::telemetry::LogFormat::Pretty,
        LogFormat::Json => wagate::telemetry::LogFormat::Json,
    };
    let result = runtime.block_on(async {
        let _telemetry = wagate::telemetry::init(format, "wagate");
        raise_open_files();
        match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Sim(args) => wagate::sim::cli::run(*args)
                .await
                .map_err(|e| e.to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wagate: {e}");
            ExitCode::FAILURE
        }
    }
}
