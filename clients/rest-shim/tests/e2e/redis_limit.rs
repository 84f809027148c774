//! The rate limit kept in Redis: a real `redis-server` started by the test
//! on a free loopback port in a temp dir, shared by two shims.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;

use axum::http::Method;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::browser::is_root;
use crate::common::*;
use wagate_rest::Dialect;

const A: [u8; 4] = [127, 0, 0, 1];
const B: [u8; 4] = [127, 0, 0, 2];

/// A `redis-server` of the test's own; stopped when dropped.
struct Redis {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

fn redis_server() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|dir| dir.join("redis-server"))
            .find(|p| p.is_file())
    })
}

impl Redis {
    async fn start(binary: &PathBuf) -> Redis {
        let dir = tempfile::tempdir().expect("redis dir");
        // Redis cannot pick a port itself: take a free one from the kernel.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("redis output") {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server exited before it was ready");
        })
        .await
        .expect("redis-server ready in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Redis {
            child,
            url: format!("redis://127.0.0.1:{port}/0"),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn retry_after(headers: &axum::http::HeaderMap) -> u64 {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_allowance_per_address_in_redis() {
    let Some(binary) = redis_server() else {
        assert!(
            !is_root(),
            "redis-server is not installed: run scripts/setup.sh (apt-get install -y redis-server)"
        );
        eprintln!("SKIPPED: redis-server is not installed and cannot be as non-root; run scripts/setup.sh as root");
        return;
    };
    let redis = Redis::start(&binary).await;
    let gw = Gateway::start().await;
    let shim_with = |name: &str| {
        let mut cfg = gw.shim_config(name);
        cfg.dialect = Dialect::Venom;
        cfg.api_key = Some(KEY.into());
        cfg.rate_limit = Some(5);
        cfg.rate_limit_redis = Some(redis.url.clone());
        cfg
    };
    let one = start_shim(shim_with("one")).await;
    let two = start_shim(shim_with("two")).await;
    let key = [("x-api-key", KEY)];
    let url = |shim: &Shim| format!("{}/sessions", shim.base);
    // Five requests of one address, spread over both replicas.
    for (i, shim) in [&one, &two, &one, &two, &one].into_iter().enumerate() {
        let (st, _, body) = call_from(IpAddr::from(A), Method::GET, &url(shim), &key).await;
        assert_eq!(st, 200, "request {i}: {body}");
    }
    for shim in [&one, &two] {
        let (st, headers, body) = call_from(IpAddr::from(A), Method::GET, &url(shim), &key).await;
        assert_eq!(st, 429, "the sixth, on either replica: {body}");
        assert_eq!(body["success"], false);
        let after = retry_after(&headers);
        assert!((1..=12).contains(&after), "Retry-After {after}");
    }
    // Unauthenticated requests count too; another address has its own.
    let (st, _, _) = call_from(IpAddr::from(A), Method::GET, &url(&two), &[]).await;
    assert_eq!(st, 429);
    let (st, _, body) = call_from(IpAddr::from(B), Method::GET, &url(&two), &key).await;
    assert_eq!(st, 200, "{body}");

    // Without Redis the API keeps answering (the limit is not applied).
    redis.stop().await;
    let (st, _, body) = call_from(IpAddr::from(A), Method::GET, &url(&one), &key).await;
    assert_eq!(st, 200, "Redis down lets requests through: {body}");

    one.stop().await;
    two.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_redis_url_stops_the_start() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.rate_limit = Some(5);
    cfg.rate_limit_redis = Some("rediss://127.0.0.1:6379".into());
    let err = wagate_rest::start(cfg).await.err().expect("refused");
    assert!(err.to_string().contains("--rate-limit-redis"), "{err}");
    gw.stop().await;
}
