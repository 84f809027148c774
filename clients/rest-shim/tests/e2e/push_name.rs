//! The account's push name, as its phone keeps it in app-state, shown by
//! gRPC `Status` and by the shim (whatsapp-web.js `info.pushname`, Baileys-WS `name`).

use serde_json::json;

use crate::common::*;
use wagate_rest::proto::gateway::{SessionState, StatusRequest};
use wagate_rest::Dialect;

const OWNER: &str = "5215550303030";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_push_name_reaches_status_and_every_dialect() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::BaileysWs;
    cfg.api_key = Some(KEY.into());
    let shim = start_shim(cfg).await;
    let mut events = gw.follow("named").await;
    let (st, body) = shim
        .post_key("/api/start-session", json!({"sessionId": "named"}))
        .await;
    assert_eq!(st, 200, "{body}");
    let qr = events.qr().await;
    // The phone's account is named "Owner" (see `Gateway::scan`).
    gw.scan(OWNER, &qr).await;
    events.state(SessionState::Connected).await;

    let (_, status) = shim
        .get_until(
            "/api/status/named",
            &[("x-api-key", KEY)],
            "the push name",
            |_, b| b["info"]["pushname"] == "Owner",
        )
        .await;
    assert_eq!(status["info"]["phone"], OWNER);
    let (_, ws) = shim
        .get_until("/sessions/named/status", &[], "the name", |_, b| {
            b["session"]["status"]["name"] == "Owner"
        })
        .await;
    assert_eq!(ws["session"]["status"]["number"], OWNER, "{ws}");
    let session = gw
        .grpc
        .clone()
        .status(StatusRequest {
            session_id: "named".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(session.push_name, "Owner");
    shim.stop().await;
    gw.stop().await;
}
