//! Webhooks to `https://` receivers: accepted wherever a webhook URL is
//! (session creation, webhook configuration, flags) and delivered over TLS,
//! signed as over http, to a receiver whose certificate a test CA issued
//! (`--webhook-ca-file`).

use serde_json::json;

use crate::common::*;
use wagate_rest::Dialect;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_to_https_receivers_of_a_private_ca() {
    let gw = Gateway::start().await;
    let ca = TestCa::new();
    let mut venom = Receiver::start_https(&ca).await;
    let mut backend = Receiver::start_https(&ca).await;
    let global = Receiver::start_https(&ca).await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    cfg.api_key = Some(KEY.into());
    cfg.webhook_secret = Some("s3cret".into());
    cfg.webhook_ca_file = Some(ca.pem_file.clone());
    // Flags take https URLs too.
    cfg.backend_url = Some(backend.url(""));
    cfg.webhook_url = Some(global.url("/global"));
    let shim = start_shim(cfg).await;

    // Venom: the session's own webhookUrl.
    let (st, body) = shim
        .post_key(
            "/sessions",
            json!({"sessionId": "tls-1", "userId": "u", "webhookUrl": venom.url("/endpoint")}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let qr = venom
        .until("QR_CODE over https", |h| h.body["event"] == "QR_CODE")
        .await;
    assert_eq!(qr.path, "/endpoint");
    assert_eq!(qr.body["instance"], "tls-1");
    assert!(signature_ok(&qr, "s3cret"), "signature of {:?}", qr.headers);

    // QR Service: BACKEND_URL over https.
    let hook = backend
        .until("QR Service qr over https", |h| {
            h.path == "/whatsapp-qr/webhook" && h.body["type"] == "qr"
        })
        .await;
    assert_eq!(hook.body["sessionId"], "tls-1");

    // whatsapp-web.js: the global webhook and the production variant's
    // per-session webhook are configured with https URLs.
    let (st, body) = shim
        .post_key(
            "/webhook/config",
            json!({"webhookUrl": global.url("/other")}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = shim
        .post_key(
            "/api/tls-1/webhook",
            json!({"url": venom.url("/per-session"), "events": ["all"]}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["webhook"]["url"], venom.url("/per-session"));

    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ca_file_stops_the_start() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.webhook_ca_file = Some(gw.dir.path().join("missing.pem"));
    let err = wagate_rest::start(cfg)
        .await
        .err()
        .expect("refuses to start");
    assert!(err.to_string().contains("missing.pem"), "{err}");
    gw.stop().await;
}
