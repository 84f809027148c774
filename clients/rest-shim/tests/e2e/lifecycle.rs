//! Delete and create again: nothing of the deleted session (phone,
//! creation time, disconnect reason, settings) shows in the new one; and a
//! QR asked for right after creation waits for the first QR.

use serde_json::json;

use crate::common::*;
use wagate_rest::proto::gateway::SessionState;
use wagate_rest::Dialect;

const OWNER: &str = "+15551234567";
const OWNER_DIGITS: &str = "15551234567";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_ws_delete_and_create_again_starts_afresh() {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::BaileysWs;
    let shim = start_shim(cfg).await;
    let id = "cliente1";
    let mut events = gw.follow(id).await;

    let (st, first) = shim.post(&format!("/sessions/{id}"), json!(null)).await;
    assert_eq!(st, 200, "{first}");
    // Right after creation, as the README's flow does: no polling.
    let (st, qr) = shim.get(&format!("/sessions/{id}/qr")).await;
    assert_eq!(st, 200, "the QR request waits for the first QR: {qr}");
    let code = qr["qr_code"].as_str().unwrap_or_default().to_owned();
    assert!(code.starts_with("2@"), "{qr}");
    gw.scan(OWNER, &code).await;
    events.state(SessionState::Connected).await;
    let (_, status) = shim
        .get_until(
            &format!("/sessions/{id}/status"),
            &[],
            "connected",
            |_, b| b["session"]["status"]["connected"] == true,
        )
        .await;
    assert_eq!(status["session"]["status"]["number"], OWNER_DIGITS);

    let (st, body) = shim.delete(&format!("/sessions/{id}"), &[]).await;
    assert_eq!(st, 200, "{body}");
    events.state(SessionState::LoggedOut).await;

    let (st, again) = shim.post(&format!("/sessions/{id}"), json!(null)).await;
    assert_eq!(st, 200, "{again}");
    let s = &again["session"]["status"];
    assert_eq!(
        (
            &s["connected"],
            &s["number"],
            &s["name"],
            &s["last_disconnect_reason"]
        ),
        (&json!(false), &json!(""), &json!(""), &json!("")),
        "{again}"
    );
    let old = first["session"]["status"]["created_at"]
        .as_str()
        .unwrap_or_default();
    let new = s["created_at"].as_str().unwrap_or_default();
    assert!(new > old, "created_at {new} is after the first one {old}");
    let (st, qr) = shim.get(&format!("/sessions/{id}/qr")).await;
    assert_eq!(st, 200, "a new QR right after creating again: {qr}");
    assert_eq!(qr["status"], "waiting_for_scan");
    let (_, list) = shim.get("/sessions").await;
    assert_eq!(list["sessions"][0]["status"]["number"], "", "{list}");
    let (_, status) = shim.get(&format!("/sessions/{id}/status")).await;
    assert_eq!(status["session"]["status"]["number"], "", "{status}");
    assert_eq!(status["session"]["status"]["last_disconnect_reason"], "");

    // Pairing again shows the account again.
    gw.scan(OWNER, qr["qr_code"].as_str().unwrap_or_default())
        .await;
    shim.get_until(
        &format!("/sessions/{id}/status"),
        &[],
        "connected again",
        |_, b| {
            b["session"]["status"]["connected"] == true
                && b["session"]["status"]["number"] == OWNER_DIGITS
        },
    )
    .await;
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venom_restart_recipe_forgets_the_deleted_session() {
    let gw = Gateway::start().await;
    let mut hooks = Receiver::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    cfg.api_key = Some(KEY.into());
    let shim = start_shim(cfg).await;
    let id = "user-ABC123";
    let mut events = gw.follow(id).await;
    let (st, body) = shim
        .post_key(
            "/sessions",
            json!({"sessionId": id, "userId": "uuid-1", "webhookUrl": hooks.url("/old")}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, qr) = shim.get_key(&format!("/sessions/{id}/qr")).await;
    assert_eq!(st, 200, "waits for the first QR: {qr}");
    gw.scan(
        OWNER,
        &decode_qr_base64(qr["qr"].as_str().unwrap_or_default()),
    )
    .await;
    events.state(SessionState::Connected).await;
    let (_, list) = shim.get_key("/sessions").await;
    let created_before = list["sessions"][0]["createdAt"]
        .as_i64()
        .unwrap_or_default();

    // The README's recipe: DELETE /sessions/:id → POST /sessions.
    let (st, _) = shim
        .delete(&format!("/sessions/{id}"), &[("x-api-key", KEY)])
        .await;
    assert_eq!(st, 200);
    hooks
        .until("close", |h| h.body["data"]["state"] == "close")
        .await;
    let (st, body) = shim
        .post_key("/sessions", json!({"sessionId": id, "userId": "uuid-2"}))
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["userId"], "uuid-2");
    let (st, status) = shim.get_key(&format!("/sessions/{id}/status")).await;
    assert_eq!(st, 200);
    assert_eq!(status["hostDevice"], json!(null), "{status}");
    let (_, list) = shim.get_key("/sessions").await;
    let s = &list["sessions"][0];
    assert_eq!(
        (&s["userId"], &s["webhookUrl"]),
        (&json!("uuid-2"), &json!(null)),
        "{list}"
    );
    assert!(
        s["createdAt"].as_i64().unwrap_or_default() > created_before,
        "{list}"
    );
    let (st, qr) = shim.get_key(&format!("/sessions/{id}/qr")).await;
    assert_eq!(st, 200, "{qr}");
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qr_wait_is_bounded() {
    // The server's frames are held back, so the session stays connecting
    // with no QR: the request gives up after the configured wait.
    let gw = Gateway::start().await;
    gw.sim
        .clone()
        .set_delay(wagate_rest::proto::sim::SetDelayRequest {
            jid: String::new(),
            delay_ms: 3_000,
        })
        .await
        .expect("delay set");
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::BaileysWs;
    cfg.qr_wait_ms = 100;
    let shim = start_shim(cfg).await;
    let (st, body) = shim.post("/sessions/slow", json!(null)).await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = shim.get("/sessions/slow/qr").await;
    assert_eq!(st, 409, "{body}");
    shim.stop().await;
    gw.stop().await;
}
