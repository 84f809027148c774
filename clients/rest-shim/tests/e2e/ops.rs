//! Operations: the OpenAPI document matches what is served, health answers
//! per dialect (and fails when the gateway is unreachable), and the real
//! binary takes its configuration from the environment, logs JSON and stops
//! on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use axum::http::Method;
use serde_json::json;

use crate::common::*;
use wagate_rest::{Config, Dialect, Family};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_served_routes() {
    let gw = Gateway::start().await;
    for dialect in [
        Dialect::Venom,
        Dialect::Wwebjs,
        Dialect::QrService,
        Dialect::BaileysWs,
    ] {
        let mut cfg = gw.shim_config(&format!("shim-{dialect:?}"));
        cfg.dialect = dialect;
        cfg.api_key = Some(KEY.into());
        let shim = start_shim(cfg).await;
        let (st, doc) = shim.get("/openapi.json").await;
        assert_eq!(st, 200);
        assert_eq!(doc["openapi"], "3.0.3");
        let paths = doc["paths"].as_object().expect("paths");
        let mut operations = 0;
        for (path, ops) in paths {
            for (method, op) in ops.as_object().expect("operations") {
                operations += 1;
                let url = path.replace("{sessionId}", "probe");
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let (st, body) = shim
                    .raw(method.clone(), &url, &[("x-api-key", KEY)], Some(b"{}"))
                    .await;
                let unrouted = st == 405
                    || body["error"]
                        .as_str()
                        .is_some_and(|e| e.starts_with("no endpoint"));
                assert!(
                    !unrouted,
                    "{method} {path} is documented but not served: {st} {body}"
                );
                assert!(op["responses"]["200"].is_object(), "{method} {path}");
            }
        }
        assert!(operations > 30, "{operations} operations for {dialect:?}");
        // The dialect decides the shared paths, and the document says so.
        let list_fields = &doc["paths"]["/sessions"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["properties"];
        let health = &doc["paths"]["/health"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"]["properties"];
        match dialect {
            Dialect::BaileysWs => {
                assert!(list_fields.get("total").is_some(), "{list_fields}");
                assert!(health.get("memory_usage").is_some());
            }
            Dialect::QrService => assert!(health.get("activeSessions").is_some()),
            Dialect::Venom | Dialect::Wwebjs => {
                assert!(list_fields.get("count").is_some(), "{list_fields}");
                assert!(health.get("memory").is_some());
            }
        }
        let venom_security = &doc["paths"]["/messages"]["post"]["security"];
        assert_eq!(venom_security, &json!([{ "apiKeyHeader": [] }]));
        assert!(
            doc["paths"]["/init"]["post"].get("security").is_none(),
            "the QR Service has no auth"
        );
        shim.stop().await;
    }
    // Only the families asked for.
    let mut cfg = gw.shim_config("shim-qr-only");
    cfg.dialect = Dialect::QrService;
    cfg.routes = vec![Family::QrService];
    let shim = start_shim(cfg).await;
    let (_, doc) = shim.get("/openapi.json").await;
    let mut paths: Vec<&String> = doc["paths"].as_object().expect("paths").keys().collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/disconnect",
            "/health",
            "/init",
            "/openapi.json",
            "/qr-code/{sessionId}",
            "/send",
            "/status/{sessionId}"
        ]
    );
    assert_eq!(shim.get("/sessions").await.0, 404);
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_counts_sessions_and_fails_without_the_gateway() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    let shim = start_shim(cfg).await;
    let mut events = gw.follow("h1").await;
    assert_eq!(
        shim.post("/sessions", json!({"sessionId": "h1"})).await.0,
        200
    );
    events.qr().await;
    let (st, health) = shim
        .get_until("/health", &[], "one session showing a QR", |_, b| {
            b["sessions"]["qr_ready"] == 1
        })
        .await;
    assert_eq!(st, 200, "{health}");
    fields(
        &health,
        &[
            ("status", K::Str),
            ("uptime", K::Int),
            ("sessions", K::Obj),
            ("memory", K::Obj),
        ],
    );
    assert_eq!(health["sessions"]["total"], 1);
    assert_eq!(health["sessions"]["qr_ready"], 1);
    assert!(health["memory"]["rss"].as_u64().unwrap_or(0) > 0);
    let (st, info) = shim.get("/info").await;
    assert_eq!(st, 200);
    fields(
        &info,
        &[
            ("service", K::Str),
            ("version", K::Str),
            ("uptime", K::Int),
            ("sessions", K::Obj),
        ],
    );
    shim.stop().await;

    // A shim whose gateway is gone still answers, with 503.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let mut cfg = Config::new(
        format!("http://{dead_addr}"),
        gw.dir.path().join("shim-dead"),
    );
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.gateway_timeout_ms = 2000;
    let shim = start_shim(cfg).await;
    let (st, health) = shim.get("/health").await;
    assert_eq!(st, 503, "{health}");
    assert_eq!(health["status"], "error");
    let (st, body) = shim.get("/sessions/x/status").await;
    assert_eq!(st, 503, "{body}");
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_env_logs_json_and_stops_on_sigterm() {
    let gw = Gateway::start().await;
    let data = gw.dir.path().join("shim-bin");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wagate-rest"))
        .env("WAGATE_REST_LISTEN", "127.0.0.1:0")
        .env("WAGATE_REST_GATEWAY", gw.url())
        .env("WAGATE_REST_DATA_DIR", &data)
        .env("WAGATE_REST_DIALECT", "baileys-ws")
        .env("WAGATE_REST_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wagate-rest starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let line = rx.recv_timeout(WAIT).expect("listening line");
    let addr = line
        .strip_prefix("wagate-rest listening on ")
        .expect("address line")
        .to_owned();
    let (st, health) = call(Method::GET, &format!("http://{addr}/health"), &[], None).await;
    assert_eq!(st, 200, "{health}");
    assert_eq!(
        health["service"], "baileys-ws",
        "the dialect came from the environment"
    );
    let (st, body) = call(
        Method::POST,
        &format!("http://{addr}/sessions/bin1"),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let exit = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("exits after SIGTERM")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    let logs = logs.join().expect("log reader");
    assert!(!logs.is_empty());
    for l in &logs {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    assert!(
        logs.iter().any(|l| l.contains("\"path\":\"/health\"")),
        "access log of the request"
    );
    assert!(
        data.join("state.json").exists(),
        "the session's settings were saved"
    );
    gw.stop().await;
}

/// A child process that is killed if the test ends before it exits.
struct Child(Option<std::process::Child>);

impl Child {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, std::process::Child::id)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The binary, its environment cleared of the seeds' variables and then
/// given `env`; its stdout lines and the handle.
fn spawn_shim(env: &[(&str, String)]) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wagate-rest"));
    for name in [
        "API_KEY",
        "PORT",
        "WS_PORT",
        "WEBHOOK_URL",
        "BACKEND_URL",
        "API_URL",
        "MAX_SESSIONS",
        "WAGATE_REST_API_KEY",
        "WAGATE_REST_LISTEN",
    ] {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("wagate-rest starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let child = Child(Some(child));
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_exit(mut child: Child) -> std::process::ExitStatus {
    let mut inner = child.0.take().expect("a running child");
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(inner.wait());
    });
    done_rx
        .recv_timeout(WAIT)
        .expect("exits in time")
        .expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_env_files_configure_the_binary() {
    let gw = Gateway::start().await;
    let ca = TestCa::new();
    let mut backend = Receiver::start_https(&ca).await;
    // A Venom `.env` plus the QR Service's BACKEND_URL.
    let (child, lines) = spawn_shim(&[
        ("WAGATE_REST_GATEWAY", gw.url()),
        (
            "WAGATE_REST_DATA_DIR",
            gw.dir.path().join("seed-env").display().to_string(),
        ),
        (
            "WAGATE_REST_WEBHOOK_CA_FILE",
            ca.pem_file.display().to_string(),
        ),
        ("API_KEY", "tu-api-key-segura-aqui".into()),
        ("PORT", "0".into()),
        ("MAX_SESSIONS", "1".into()),
        ("BACKEND_URL", backend.url("")),
        ("LOG_LEVEL", "info".into()),
    ]);
    let line = lines.recv_timeout(WAIT).expect("listening line");
    let addr = line
        .strip_prefix("wagate-rest listening on ")
        .expect("address line")
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let base = format!("http://{addr}");

    let (st, _) = call(Method::GET, &format!("{base}/sessions"), &[], None).await;
    assert_eq!(st, 401, "API_KEY is required");
    let key = [("x-api-key", "tu-api-key-segura-aqui")];
    let (st, body) = call(Method::GET, &format!("{base}/sessions"), &key, None).await;
    assert_eq!(st, 200, "{body}");
    let create = |id: &'static str| {
        let body = json!({ "sessionId": id }).to_string();
        let url = format!("{base}/sessions");
        async move { call(Method::POST, &url, &key, Some(body.as_bytes())).await }
    };
    let (st, body) = create("env-1").await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = create("env-2").await;
    assert_eq!(st, 429, "MAX_SESSIONS=1: {body}");
    let hook = backend
        .until("the QR webhook at BACKEND_URL", |h| {
            h.path == "/whatsapp-qr/webhook" && h.body["type"] == "qr"
        })
        .await;
    assert_eq!(hook.body["sessionId"], "env-1");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(wait_exit(child).success());

    // Still no key on a public address: PORT does not open the shim up.
    let (child, _) = spawn_shim(&[
        ("WAGATE_REST_GATEWAY", gw.url()),
        ("WAGATE_REST_LISTEN", "0.0.0.0:0".into()),
        ("PORT", "0".into()),
    ]);
    assert!(!wait_exit(child).success(), "refused without a key");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baileys_ws_env_file_configures_the_binary() {
    let gw = Gateway::start().await;
    let ca = TestCa::new();
    let mut api = Receiver::start_https(&ca).await;
    // Baileys-WS's `.env` (its API_URL behind TLS here), and the PORT of
    // another seed that WS_PORT wins over in this dialect.
    let (child, lines) = spawn_shim(&[
        ("WAGATE_REST_GATEWAY", gw.url()),
        ("WAGATE_REST_DIALECT", "baileys-ws".into()),
        (
            "WAGATE_REST_DATA_DIR",
            gw.dir.path().join("seed-env").display().to_string(),
        ),
        (
            "WAGATE_REST_WEBHOOK_CA_FILE",
            ca.pem_file.display().to_string(),
        ),
        ("WS_PORT", "0".into()),
        ("PORT", "1".into()),
        ("API_URL", api.url("/ws-events")),
        ("BOT_NAME", "DocuBot".into()),
        ("MAX_SESSIONS", "10".into()),
        ("MAX_RECONNECT_ATTEMPTS", "5".into()),
        ("SESSION_TIMEOUT", "1800000".into()),
        ("CLEANUP_INTERVAL", "300000".into()),
    ]);
    let line = lines.recv_timeout(WAIT).expect("listening line");
    let addr = line
        .strip_prefix("wagate-rest listening on ")
        .expect("address line")
        .to_owned();
    assert_ne!(addr, "127.0.0.1:1", "WS_PORT wins for Baileys-WS");
    let base = format!("http://{addr}");
    let (st, health) = call(Method::GET, &format!("{base}/health"), &[], None).await;
    assert_eq!(st, 200, "{health}");
    assert_eq!(health["max_sessions"], 10);
    let (st, body) = call(
        Method::POST,
        &format!("{base}/sessions/cliente1"),
        &[],
        None,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let hook = api
        .until("the qr event at API_URL", |h| h.body["event"] == "qr")
        .await;
    assert_eq!(hook.path, "/ws-events");
    assert!(
        hook.body["data"]["qr_code"]
            .as_str()
            .is_some_and(|q| q.starts_with("2@")),
        "{}",
        hook.body
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(wait_exit(child).success());
    gw.stop().await;
}
