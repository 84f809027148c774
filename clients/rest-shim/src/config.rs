//! Flags and environment of `wagate-rest`, in the same style as `wagate
//! serve`: every flag has a `WAGATE_REST_*` variable. The seed gateways'
//! own variables (`API_KEY`, `PORT`, …) are read as aliases, below the
//! flags and the `WAGATE_REST_*` variables.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

/// The gateway whose shapes win where two gateways use the same path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Dialect {
    /// Venom multi-tenant service (`/sessions`, `/messages`, `X-API-Key`).
    Venom,
    /// whatsapp-web.js multi-session API and its production variant (`/api/...`).
    #[value(alias = "wwebjs-prod")]
    Wwebjs,
    /// Baileys "WhatsApp QR Service" (`/init`, `/qr-code`, `/send`, no auth).
    QrService,
    /// Baileys-WS multi-session (`/sessions/:id`, no auth).
    BaileysWs,
}

impl Dialect {
    pub fn family(self) -> Family {
        match self {
            Dialect::Venom => Family::Venom,
            Dialect::Wwebjs => Family::Wwebjs,
            Dialect::QrService => Family::QrService,
            Dialect::BaileysWs => Family::BaileysWs,
        }
    }
}

/// A group of endpoints documented by one gateway (the whatsapp-web.js API
/// and its production variant are one family: the variant only adds routes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Family {
    Venom,
    Wwebjs,
    QrService,
    BaileysWs,
}

impl Family {
    pub const ALL: [Family; 4] = [
        Family::Venom,
        Family::Wwebjs,
        Family::QrService,
        Family::BaileysWs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Venom => "venom",
            Family::Wwebjs => "wwebjs",
            Family::QrService => "qr-service",
            Family::BaileysWs => "baileys-ws",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Everything `wagate-rest` can be told.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "wagate-rest",
    version,
    about = "REST endpoints and webhooks of the Node WhatsApp gateways, served on top of wagate"
)]
pub struct Config {
    /// HTTP listen address.
    #[arg(long, env = "WAGATE_REST_LISTEN", default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// gRPC address of the wagate gateway.
    #[arg(
        long,
        env = "WAGATE_REST_GATEWAY",
        default_value = "http://127.0.0.1:50051"
    )]
    pub gateway: String,
    /// API key the shim presents to the gateway (`x-api-key`).
    #[arg(long, env = "WAGATE_REST_GATEWAY_API_KEY", hide_env_values = true)]
    pub gateway_api_key: Option<String>,
    /// Which gateway's shapes answer on paths two gateways share
    /// (`/sessions...`, `/health`).
    #[arg(long, env = "WAGATE_REST_DIALECT", default_value = "venom")]
    pub dialect: Dialect,
    /// Endpoint families to serve (default: all). Paths that do not clash
    /// are served for every family listed.
    #[arg(
        long,
        env = "WAGATE_REST_ROUTES",
        value_delimiter = ',',
        default_value = "venom,wwebjs,qr-service,baileys-ws"
    )]
    pub routes: Vec<Family>,
    /// API key clients must present where their gateway documents one
    /// (`X-API-Key` header, or `?apiKey=` on the whatsapp-web.js routes).
    /// Without it, no key is checked and only loopback addresses are allowed.
    #[arg(long, env = "WAGATE_REST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Where the shim keeps its state (webhook settings, delivery cursors).
    #[arg(
        long,
        env = "WAGATE_REST_DATA_DIR",
        default_value = "./wagate-rest-data"
    )]
    pub data_dir: PathBuf,
    /// whatsapp-web.js global webhook (its `WEBHOOK_URL`); `POST
    /// /webhook/config` replaces it at run time.
    #[arg(long, env = "WAGATE_REST_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// QR Service backend (its `BACKEND_URL`): events go to
    /// `BACKEND_URL/whatsapp-qr/webhook` and `/whatsapp-qr/incoming`.
    #[arg(long, env = "WAGATE_REST_BACKEND_URL")]
    pub backend_url: Option<String>,
    /// Baileys-WS backend (its `API_URL`): events are POSTed to this URL.
    #[arg(long, env = "WAGATE_REST_API_URL")]
    pub api_url: Option<String>,
    /// PEM file of extra CA certificates trusted for `https://` webhooks
    /// (private CAs), besides the webpki roots.
    #[arg(long, env = "WAGATE_REST_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Secret for the `X-Wagate-Signature-256` HMAC-SHA256 header on webhooks.
    #[arg(long, env = "WAGATE_REST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Timeout of one webhook attempt, in milliseconds.
    #[arg(long, env = "WAGATE_REST_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// First retry delay of a failed webhook, in milliseconds; doubles per
    /// attempt, with jitter.
    #[arg(
        long,
        env = "WAGATE_REST_WEBHOOK_RETRY_BASE_MS",
        default_value_t = 1_000
    )]
    pub webhook_retry_base_ms: u64,
    /// Longest delay between two attempts, in milliseconds.
    #[arg(
        long,
        env = "WAGATE_REST_WEBHOOK_RETRY_MAX_MS",
        default_value_t = 60_000
    )]
    pub webhook_retry_max_ms: u64,
    /// Attempts before a webhook is given up (0 = retry until it succeeds).
    #[arg(long, env = "WAGATE_REST_WEBHOOK_MAX_ATTEMPTS", default_value_t = 0)]
    pub webhook_max_attempts: u32,
    /// Events queued per session in memory before its worker reads them from
    /// the gateway's log instead (bounds memory when a receiver is down).
    #[arg(
        long,
        env = "WAGATE_REST_WEBHOOK_QUEUE",
        default_value_t = 64,
        hide = true
    )]
    pub webhook_queue: usize,
    /// Sessions the shim lets clients create (reported by the Baileys-WS
    /// `/health` as `max_sessions`).
    #[arg(long, env = "WAGATE_REST_MAX_SESSIONS", default_value_t = 1000)]
    pub max_sessions: usize,
    /// Requests per minute each client address may make (429 with
    /// `Retry-After` past it); 0 = no limit. Default: 100 with `--dialect
    /// venom` (its documented limit), no limit otherwise.
    #[arg(long, env = "WAGATE_REST_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Keep the rate limit's counts in this Redis
    /// (`redis://[[user]:password@]host[:port][/db]`), shared by every
    /// replica using it; default: in memory.
    #[arg(long, env = "WAGATE_REST_RATE_LIMIT_REDIS", hide_env_values = true)]
    pub rate_limit_redis: Option<String>,
    /// The shim is behind a reverse proxy: the rate limit counts per
    /// address the proxy appended to `X-Forwarded-For`, not per proxy.
    #[arg(long, env = "WAGATE_REST_TRUST_PROXY")]
    pub trust_proxy: bool,
    /// Origins whose browser pages may call the API (CORS), comma-separated;
    /// `*` for any. Default: none (same origin only).
    #[arg(long, env = "WAGATE_REST_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,
    /// How long a QR request for a session still connecting waits for its
    /// first QR before answering that there is none yet, in milliseconds
    /// (0 = answer at once).
    #[arg(long, env = "WAGATE_REST_QR_WAIT_MS", default_value_t = 5_000)]
    pub qr_wait_ms: u64,
    /// Timeout of one gRPC call to the gateway, in milliseconds.
    #[arg(long, env = "WAGATE_REST_GATEWAY_TIMEOUT_MS", default_value_t = 30_000)]
    pub gateway_timeout_ms: u64,
    /// Largest media file (bytes) `send-media` accepts and an incoming
    /// media webhook carries; larger uploads answer 413, larger incoming
    /// files are reported in `media.error`.
    #[arg(long, env = "WAGATE_REST_MAX_MEDIA_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_media_bytes: u64,
    /// Base URL the shim is reached at, for the `fileUrl` of incoming media
    /// (files served at `/uploads/...`). Default: `http://` and the address
    /// the shim listens on.
    #[arg(long, env = "WAGATE_REST_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Log output format.
    #[arg(long, env = "WAGATE_REST_LOG_FORMAT", default_value = "pretty")]
    pub log_format: LogFormat,
}

impl Config {
    /// The process's configuration: flags, then `WAGATE_REST_*` variables,
    /// then the seed gateways' variables, then defaults. Exits with clap's
    /// message on a bad value, like `Config::parse`.
    pub fn load() -> Self {
        Self::try_load(std::env::args_os(), |name| std::env::var(name).ok())
            .unwrap_or_else(|e| e.exit())
    }

    /// As `load`, with the arguments and the seed variables given
    /// (`WAGATE_REST_*` variables are still read from the environment).
    pub fn try_load<I, T>(
        args: I,
        seed_env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Config::command().try_get_matches_from(args)?;
        let mut cfg = Config::from_arg_matches(&matches)?;
        cfg.apply_seed_env(&matches, &seed_env)?;
        Ok(cfg)
    }

    /// Fills the settings that neither a flag nor a `WAGATE_REST_*`
    /// variable gave from the seeds' variables (empty values are ignored,
    /// as a copied `.env` often leaves some blank).
    fn apply_seed_env(
        &mut self,
        matches: &ArgMatches,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), clap::Error> {
        let unset = |id: &str| {
            matches!(
                matches.value_source(id),
                None | Some(ValueSource::DefaultValue)
            )
        };
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let bad = |name: &str, value: &str, why: &str| {
            clap::Error::raw(
                ErrorKind::ValueValidation,
                format!("{name}={value:?}: {why}\n"),
            )
        };
        if unset("api_key") {
            if let Some(v) = var("API_KEY") {
                self.api_key = Some(v);
            }
        }
        if unset("listen") {
            // Baileys-WS calls its port WS_PORT, the others PORT.
            let order = if self.dialect == Dialect::BaileysWs {
                ["WS_PORT", "PORT"]
            } else {
                ["PORT", "WS_PORT"]
            };
            if let Some((name, v)) = order.iter().find_map(|n| var(n).map(|v| (*n, v))) {
                let port = v
                    .parse::<u16>()
                    .map_err(|_| bad(name, &v, "not a port number"))?;
                self.listen.set_port(port);
            }
        }
        for (id, name, slot) in [
            ("webhook_url", "WEBHOOK_URL", &mut self.webhook_url),
            ("backend_url", "BACKEND_URL", &mut self.backend_url),
            ("api_url", "API_URL", &mut self.api_url),
        ] {
            if unset(id) {
                if let Some(v) = var(name) {
                    *slot = Some(v);
                }
            }
        }
        if unset("max_sessions") {
            if let Some(v) = var("MAX_SESSIONS") {
                self.max_sessions = v
                    .parse()
                    .map_err(|_| bad("MAX_SESSIONS", &v, "not a number"))?;
            }
        }
        Ok(())
    }

    /// Defaults (as if no flag and no variable were given) for the gateway at
    /// `gateway`, keeping state in `data_dir`.
    pub fn new(gateway: impl Into<String>, data_dir: PathBuf) -> Self {
        // Built from the same defaults the parser uses, so they cannot drift.
        let mut cfg = Config::parse_from(["wagate-rest"]);
        cfg.gateway = gateway.into();
        cfg.data_dir = data_dir;
        cfg.api_key = None;
        cfg.gateway_api_key = None;
        cfg.webhook_url = None;
        cfg.backend_url = None;
        cfg.api_url = None;
        cfg.webhook_secret = None;
        cfg.webhook_ca_file = None;
        cfg.public_url = None;
        cfg
    }

    pub fn serves(&self, family: Family) -> bool {
        self.routes.contains(&family)
    }

    pub fn webhook_timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms.max(1))
    }

    /// Requests per minute and client address; 0 = no limit.
    pub fn rate_limit_per_minute(&self) -> u32 {
        self.rate_limit.unwrap_or(match self.dialect {
            Dialect::Venom => 100,
            Dialect::Wwebjs | Dialect::QrService | Dialect::BaileysWs => 0,
        })
    }

    pub fn qr_wait(&self) -> Duration {
        Duration::from_millis(self.qr_wait_ms)
    }

    pub fn gateway_timeout(&self) -> Duration {
        Duration::from_millis(self.gateway_timeout_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let cfg = Config::try_parse_from([
            "wagate-rest",
            "--dialect",
            "wwebjs-prod",
            "--routes",
            "wwebjs,qr-service",
            "--listen",
            "127.0.0.1:0",
        ])
        .expect("parses");
        assert_eq!(cfg.dialect, Dialect::Wwebjs);
        assert_eq!(cfg.routes, vec![Family::Wwebjs, Family::QrService]);
        assert!(cfg.serves(Family::QrService) && !cfg.serves(Family::Venom));
        assert!(Config::try_parse_from(["wagate-rest", "--dialect", "evolution"]).is_err());
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_seeds_variables_fill_what_is_not_set() {
        let env = env_of(&[
            ("API_KEY", "tu-api-key"),
            ("PORT", "3001"),
            ("WS_PORT", "3002"),
            ("WEBHOOK_URL", "https://h.example/wh"),
            ("BACKEND_URL", "http://localhost:3000"),
            ("API_URL", "http://api:8080"),
            ("MAX_SESSIONS", "15"),
        ]);
        let cfg = Config::try_load(["wagate-rest"], &env).expect("loads");
        assert_eq!(cfg.api_key.as_deref(), Some("tu-api-key"));
        assert_eq!(cfg.listen, "127.0.0.1:3001".parse().expect("addr"));
        assert_eq!(cfg.webhook_url.as_deref(), Some("https://h.example/wh"));
        assert_eq!(cfg.backend_url.as_deref(), Some("http://localhost:3000"));
        assert_eq!(cfg.api_url.as_deref(), Some("http://api:8080"));
        assert_eq!(cfg.max_sessions, 15);
        // Baileys-WS reads WS_PORT first.
        let cfg =
            Config::try_load(["wagate-rest", "--dialect", "baileys-ws"], &env).expect("loads");
        assert_eq!(cfg.listen.port(), 3002);
    }

    #[test]
    fn flags_win_over_the_seeds_variables() {
        let env = env_of(&[
            ("API_KEY", "seed"),
            ("PORT", "3001"),
            ("MAX_SESSIONS", "15"),
            ("API_URL", ""),
        ]);
        let cfg = Config::try_load(
            [
                "wagate-rest",
                "--api-key",
                "mine",
                "--listen",
                "127.0.0.1:4000",
                "--max-sessions",
                "3",
            ],
            &env,
        )
        .expect("loads");
        assert_eq!(cfg.api_key.as_deref(), Some("mine"));
        assert_eq!(cfg.listen.port(), 4000);
        assert_eq!(cfg.max_sessions, 3);
        assert_eq!(cfg.api_url, None, "blank values are ignored");
    }

    #[test]
    fn bad_seed_values_are_errors() {
        assert!(Config::try_load(["wagate-rest"], env_of(&[("PORT", "http")])).is_err());
        assert!(Config::try_load(["wagate-rest"], env_of(&[("MAX_SESSIONS", "ten")])).is_err());
    }
}
