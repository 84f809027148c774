//! Per-address request rate limit (429 with `Retry-After`) and CORS.

use std::net::IpAddr;

use axum::http::Method;

use crate::common::*;
use wagate_rest::Dialect;

const A: [u8; 4] = [127, 0, 0, 1];
const B: [u8; 4] = [127, 0, 0, 2];

fn header<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_limit_an_address_gets_429_with_retry_after() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    cfg.api_key = Some(KEY.into());
    cfg.rate_limit = Some(5);
    let shim = start_shim(cfg).await;
    let url = format!("{}/sessions", shim.base);
    let key = [("x-api-key", KEY)];
    for i in 0..5 {
        let (st, _, body) = call_from(IpAddr::from(A), Method::GET, &url, &key).await;
        assert_eq!(st, 200, "request {i}: {body}");
    }
    let (st, headers, body) = call_from(IpAddr::from(A), Method::GET, &url, &key).await;
    assert_eq!(st, 429, "{body}");
    assert_eq!(body["success"], false);
    let after: u64 = header(&headers, "retry-after")
        .parse()
        .expect("Retry-After");
    assert!((1..=12).contains(&after), "{after}");
    // Unauthenticated requests count too: the limit comes before the key.
    let (st, _, _) = call_from(IpAddr::from(A), Method::GET, &url, &[]).await;
    assert_eq!(st, 429);
    // Another address has its own allowance.
    let (st, _, body) = call_from(IpAddr::from(B), Method::GET, &url, &key).await;
    assert_eq!(st, 200, "{body}");
    // Not behind a trusted proxy: X-Forwarded-For changes nothing.
    let spoofed = [("x-api-key", KEY), ("x-forwarded-for", "198.51.100.1")];
    let (st, _, _) = call_from(IpAddr::from(A), Method::GET, &url, &spoofed).await;
    assert_eq!(st, 429);
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_clients_are_told_apart_by_forwarded_for() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::QrService;
    cfg.rate_limit = Some(2);
    cfg.trust_proxy = true;
    let shim = start_shim(cfg).await;
    let url = format!("{}/health", shim.base);
    let from = |client: &'static str| [("x-forwarded-for", client)];
    for _ in 0..2 {
        let (st, _, _) = call_from(IpAddr::from(A), Method::GET, &url, &from("198.51.100.1")).await;
        assert_eq!(st, 200);
    }
    let (st, _, _) = call_from(IpAddr::from(A), Method::GET, &url, &from("198.51.100.1")).await;
    assert_eq!(st, 429);
    let (st, _, _) = call_from(IpAddr::from(A), Method::GET, &url, &from("198.51.100.2")).await;
    assert_eq!(st, 200, "another client behind the same proxy");
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venom_limits_by_default_and_zero_turns_it_off() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    cfg.rate_limit = None;
    assert_eq!(cfg.rate_limit_per_minute(), 100);
    let shim = start_shim(cfg).await;
    let url = format!("{}/health", shim.base);
    let mut statuses = Vec::new();
    for _ in 0..101 {
        statuses.push(call_from(IpAddr::from(A), Method::GET, &url, &[]).await.0);
    }
    assert!(statuses[..100].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[100], 429);
    shim.stop().await;

    let mut cfg = gw.shim_config("shim2");
    cfg.dialect = Dialect::BaileysWs;
    cfg.rate_limit = None;
    assert_eq!(cfg.rate_limit_per_minute(), 0, "no limit documented");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_the_configured_origins_only() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    cfg.api_key = Some(KEY.into());
    cfg.cors_origins = vec!["https://panel.example".into()];
    let shim = start_shim(cfg).await;
    let url = format!("{}/sessions", shim.base);
    let ip = IpAddr::from(A);

    // Preflight: answered without a key.
    let (st, h, _) = call_from(
        ip,
        Method::OPTIONS,
        &url,
        &[
            ("origin", "https://panel.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-api-key"),
        ],
    )
    .await;
    assert_eq!(st, 204);
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        "https://panel.example"
    );
    assert!(header(&h, "access-control-allow-methods").contains("POST"));
    assert!(header(&h, "access-control-allow-headers").contains("x-api-key"));
    let (st, h, _) = call_from(
        ip,
        Method::OPTIONS,
        &url,
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(st, 403);
    assert!(h.get("access-control-allow-origin").is_none());

    // Actual requests: the header for allowed origins only.
    let (st, h, _) = call_from(
        ip,
        Method::GET,
        &url,
        &[("origin", "https://panel.example"), ("x-api-key", KEY)],
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        header(&h, "access-control-allow-origin"),
        "https://panel.example"
    );
    let (_, h, _) = call_from(
        ip,
        Method::GET,
        &url,
        &[("origin", "https://evil.example"), ("x-api-key", KEY)],
    )
    .await;
    assert!(h.get("access-control-allow-origin").is_none());
    shim.stop().await;

    // Default: no CORS headers at all.
    let shim = start_shim(gw.shim_config("shim2")).await;
    let (_, h, _) = call_from(
        ip,
        Method::GET,
        &format!("{}/health", shim.base),
        &[("origin", "https://panel.example")],
    )
    .await;
    assert!(h.get("access-control-allow-origin").is_none());
    shim.stop().await;
    gw.stop().await;
}
