//! Assembles the shim: picks the routes (the dialect decides paths two
//! families share), builds the OpenAPI document, serves HTTP, runs the
//! webhook dispatcher, and stops both cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, ApiKey};
use crate::body;
use crate::config::{Config, Family};
use crate::console;
use crate::cors::{self, Cors};
use crate::gateway::{Gateway, GatewayError};
use crate::limit::{self, RateLimit};
use crate::routes::{self, App, RouteSpec};
use crate::state::{StateError, Store};
use crate::webhook::{self, RetryPolicy, Sender};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("refusing to listen on {0} without an API key: set WAGATE_REST_API_KEY (or listen on 127.0.0.1)")]
    NoKeyOnPublicAddress(SocketAddr),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}")]
    Gateway(#[from] GatewayError),
    #[error("{0}")]
    Config(String),
}

/// A running shim.
pub struct Running {
    /// Address the HTTP server listens on.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    store: Arc<Store>,
}

impl Running {
    /// Stops accepting requests, finishes those in flight, stops the webhook
    /// workers (an unfinished webhook is sent again at the next start) and
    /// saves the state.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.http.await;
        let _ = self.dispatcher.await;
        if let Err(e) = self.store.flush().await {
            tracing::error!("state not saved at shutdown: {e}");
        }
        tracing::info!("wagate-rest stopped");
    }

    /// Runs until SIGINT or SIGTERM, then shuts down.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        self.shutdown().await;
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The routes this configuration serves: every listed family's, and where
/// two share a method and path, the dialect's (else the first listed).
pub(crate) fn resolve(config: &Config) -> Vec<RouteSpec> {
    let preferred = config.dialect.family();
    let mut chosen: Vec<RouteSpec> = Vec::new();
    for spec in routes::all()
        .into_iter()
        .filter(|s| config.serves(s.family))
    {
        match chosen
            .iter_mut()
            .find(|c| c.method == spec.method && c.path == spec.path)
        {
            Some(existing) => {
                if spec.family == preferred && existing.family != preferred {
                    *existing = spec;
                }
            }
            None => chosen.push(spec),
        }
    }
    chosen
}

fn check_config(config: &Config) -> Result<(), StartError> {
    if !config.serves(config.dialect.family()) {
        return Err(StartError::Config(format!(
            "--dialect {} is not among --routes",
            config.dialect.family().name()
        )));
    }
    for (flag, url) in [
        ("--webhook-url", &config.webhook_url),
        ("--backend-url", &config.backend_url),
        ("--api-url", &config.api_url),
    ] {
        if let Some(url) = url {
            body::webhook_url(flag, url).map_err(|e| StartError::Config(e.to_string()))?;
        }
    }
    Ok(())
}

/// Logs every request: method, path, status, time taken.
async fn access_log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

async fn no_route(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "success": false,
            "error": format!("no endpoint {} {}", req.method(), req.uri().path()),
        })),
    )
        .into_response()
}

/// Starts the shim.
pub async fn start(config: Config) -> Result<Running, StartError> {
    check_config(&config)?;
    let tls = Arc::new(
        webhook::client_config(config.webhook_ca_file.as_deref())
            .map_err(|e| StartError::Config(e.to_string()))?,
    );
    let key = ApiKey::new(config.api_key.as_deref());
    if !key.is_set() {
        if !config.listen.ip().is_loopback() {
            return Err(StartError::NoKeyOnPublicAddress(config.listen));
        }
        tracing::warn!("no API key configured: every caller on this host is allowed");
    }
    let store = Store::open(&config.data_dir)?;
    let gateway = Gateway::new(
        &config.gateway,
        config.gateway_api_key.as_deref(),
        config.gateway_timeout(),
    )?;
    let specs = resolve(&config);
    let openapi = crate::openapi::document(
        &specs.iter().collect::<Vec<_>>(),
        key.is_set(),
        config.dialect.family().name(),
    );
    let config = Arc::new(config);
    let (stop, stop_rx) = watch::channel(false);
    let app = App {
        gateway: gateway.clone(),
        store: store.clone(),
        config: config.clone(),
        started: Instant::now(),
        openapi: Arc::new(openapi),
        stop: stop_rx.clone(),
    };
    let mut router = Router::new();
    for spec in specs {
        let guarded = spec.handler.route_layer(middleware::from_fn_with_state(
            (key.clone(), spec.auth),
            auth::check,
        ));
        router = router.route(spec.path, guarded);
    }
    let mut router = router.route("/openapi.json", get(routes::ops::openapi));
    if config.serves(Family::Wwebjs) {
        router = router.merge(console::routes(&key));
    }
    let mut router = router.fallback(no_route);
    // Layers run outermost last-added: the access log sees every request,
    // CORS answers preflights before the rate limit and the keys.
    let per_minute = config.rate_limit_per_minute();
    let redis = config
        .rate_limit_redis
        .as_deref()
        .filter(|u| !u.trim().is_empty())
        .map(|u| u.trim().parse::<crate::redis::Target>())
        .transpose()
        .map_err(|e| StartError::Config(format!("--rate-limit-redis: {e}")))?;
    let backend = if redis.is_some() { "redis" } else { "memory" };
    if let Some(limit) = RateLimit::new(per_minute, config.trust_proxy, redis) {
        router = router.layer(middleware::from_fn_with_state(limit, limit::middleware));
        tracing::info!(per_minute, backend, "request rate limit per client address");
    }
    if let Some(cors) = Cors::new(&config.cors_origins) {
        router = router.layer(middleware::from_fn_with_state(cors, cors::middleware));
    }
    let router = router
        .layer(middleware::from_fn(access_log))
        .with_state(app);

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError::Bind(config.listen, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::Bind(config.listen, e))?;

    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.wait_for(|s| *s).await;
        })
        .await;
        if let Err(e) = served {
            tracing::error!("HTTP server: {e}");
        }
    });

    let sender = Sender::new(
        config.webhook_secret.as_deref(),
        config.webhook_timeout(),
        RetryPolicy {
            base: Duration::from_millis(config.webhook_retry_base_ms.max(1)),
            max: Duration::from_millis(config.webhook_retry_max_ms.max(1)),
            max_attempts: config.webhook_max_attempts,
        },
        tls,
    );
    let (ready, mut ready_rx) = watch::channel(false);
    let public_url = config.public_url.as_deref().map_or_else(
        || format!("http://{addr}"),
        |u| u.trim_end_matches('/').to_owned(),
    );
    let dispatcher = tokio::spawn(webhook::run(
        gateway,
        store.clone(),
        config.clone(),
        sender,
        public_url,
        stop_rx,
        ready,
    ));
    // Pin where webhooks start before answering requests, so the events of
    // a session created right away are not missed; a gateway that is down
    // does not keep the shim from starting.
    if tokio::time::timeout(Duration::from_secs(5), ready_rx.wait_for(|r| *r))
        .await
        .is_err()
    {
        tracing::warn!(gateway = %config.gateway, "the gateway's event stream is not open yet; webhooks start once it is");
    }
    tracing::info!(%addr, dialect = config.dialect.family().name(), "wagate-rest listening");
    Ok(Running {
        addr,
        stop,
        http,
        dispatcher,
        store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dialect;
    use axum::http::Method;

    fn owner(config: &Config, method: Method, path: &str) -> Option<Family> {
        resolve(config)
            .into_iter()
            .find(|s| s.method == method && s.path == path)
            .map(|s| s.family)
    }

    #[test]
    fn the_dialect_decides_shared_paths() {
        let mut cfg = Config::new("http://127.0.0.1:1", "/tmp/x".into());
        cfg.dialect = Dialect::Venom;
        assert_eq!(owner(&cfg, Method::GET, "/sessions"), Some(Family::Venom));
        assert_eq!(owner(&cfg, Method::GET, "/health"), Some(Family::Venom));
        // Paths that do not clash are served for every family.
        assert_eq!(
            owner(&cfg, Method::POST, "/sessions/{sessionId}"),
            Some(Family::BaileysWs)
        );
        assert_eq!(owner(&cfg, Method::POST, "/init"), Some(Family::QrService));
        cfg.dialect = Dialect::BaileysWs;
        assert_eq!(
            owner(&cfg, Method::GET, "/sessions"),
            Some(Family::BaileysWs)
        );
        assert_eq!(
            owner(&cfg, Method::DELETE, "/sessions/{sessionId}"),
            Some(Family::BaileysWs)
        );
        assert_eq!(owner(&cfg, Method::GET, "/health"), Some(Family::BaileysWs));
        assert_eq!(owner(&cfg, Method::POST, "/sessions"), Some(Family::Venom));
        cfg.dialect = Dialect::QrService;
        assert_eq!(owner(&cfg, Method::GET, "/health"), Some(Family::QrService));
        assert_eq!(
            owner(&cfg, Method::GET, "/sessions/{sessionId}/qr"),
            Some(Family::Venom)
        );
        cfg.routes = vec![Family::QrService];
        assert_eq!(owner(&cfg, Method::GET, "/sessions"), None);
        let paths: Vec<_> = resolve(&cfg).iter().map(|s| s.path).collect();
        assert!(
            paths.iter().all(|p| [
                "/init",
                "/qr-code/{sessionId}",
                "/status/{sessionId}",
                "/send",
                "/disconnect",
                "/health"
            ]
            .contains(p)),
            "{paths:?}"
        );
    }

    #[test]
    fn every_route_is_unique_after_resolution() {
        let cfg = Config::new("http://127.0.0.1:1", "/tmp/x".into());
        let specs = resolve(&cfg);
        for (i, a) in specs.iter().enumerate() {
            for b in &specs[i + 1..] {
                assert!(
                    !(a.method == b.method && a.path == b.path),
                    "{} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
