//! Each gateway's documented flow against the shim and a `wagate serve
//! --sim` gateway: create → QR → the phone scans → connected → send a text
//! (the peer phone's inbox has it) → a text from the peer phone arrives as
//! that gateway's webhook → disconnect or delete; every documented field is
//! checked by name and type. The `*_messaging` tests are the same flows
//! with the two messaging steps.

use serde_json::json;

use crate::common::*;
use wagate_rest::proto::gateway::SessionState;
use wagate_rest::Dialect;

/// The account that links the session (its virtual phone scans the QR).
const OWNER: &str = "+15551234567";
const OWNER_DIGITS: &str = "15551234567";
/// Another account whose virtual phone chats with the session.
const PEER: &str = "+15550001111";
const PEER_DIGITS: &str = "15550001111";

async fn venom_flow(messaging: bool) {
    let gw = Gateway::start().await;
    // The README's webhook is `https://tu-webhook.com/endpoint`: a TLS
    // receiver whose certificate a private CA issued.
    let ca = TestCa::new();
    let mut hooks = Receiver::start_https(&ca).await;
    let mut cfg = gw.shim_config("shim");
    cfg.webhook_ca_file = Some(ca.pem_file.clone());
    cfg.dialect = Dialect::Venom;
    cfg.api_key = Some(KEY.into());
    cfg.webhook_secret = Some("s3cret".into());
    let shim = start_shim(cfg).await;
    gw.create_account(PEER, "Peer").await;
    let id = "user-ABC123";
    let mut events = gw.follow(id).await;

    let (st, body) = shim
        .post_key(
            "/sessions",
            json!({"sessionId": id, "userId": "uuid-1", "webhookUrl": hooks.url("/venom"), "phoneNumber": OWNER}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    fields(
        &body,
        &[
            ("sessionId", K::Str),
            ("status", K::Str),
            ("userId", K::Str),
        ],
    );
    assert_eq!(
        (body["sessionId"].as_str(), body["userId"].as_str()),
        (Some(id), Some("uuid-1"))
    );
    assert!(
        matches!(body["status"].as_str(), Some("connecting" | "qr_ready")),
        "{body}"
    );

    let ready = hooks
        .until("qr_ready", |h| h.body["event"] == "CONNECTION_UPDATE")
        .await;
    assert_eq!(ready.path, "/venom");
    assert_eq!(
        ready.body,
        json!({"event": "CONNECTION_UPDATE", "instance": id, "data": {"state": "qr_ready"}})
    );
    assert!(
        signature_ok(&ready, "s3cret"),
        "signature of {:?}",
        ready.headers
    );
    assert!(!ready.event_id().is_empty());
    let qr_hook = hooks
        .until("QR_CODE", |h| h.body["event"] == "QR_CODE")
        .await;
    fields(
        &qr_hook.body,
        &[("event", K::Str), ("instance", K::Str), ("data", K::Obj)],
    );
    fields(&qr_hook.body["data"], &[("qr", K::Str)]);
    let raw = events.qr().await;
    assert_eq!(
        decode_qr_base64(qr_hook.body["data"]["qr"].as_str().unwrap_or_default()),
        raw
    );

    let (st, qr) = shim
        .get_until(
            &format!("/sessions/{id}/qr"),
            &[("x-api-key", KEY)],
            "a QR",
            |st, _| st == 200,
        )
        .await;
    assert_eq!(st, 200, "{qr}");
    fields(&qr, &[("qr", K::Str), ("base64", K::Str)]);
    assert_eq!(qr["qr"], qr["base64"]);
    assert_eq!(decode_qr_base64(qr["qr"].as_str().unwrap_or_default()), raw);
    let (_, pending) = shim
        .get_until(
            &format!("/sessions/{id}/status"),
            &[("x-api-key", KEY)],
            "qr_ready",
            |_, b| b["status"] == "qr_ready",
        )
        .await;
    assert_eq!(pending["status"], "qr_ready");
    assert_eq!(pending["qrAvailable"], true);

    gw.scan(OWNER, &raw).await;
    let open = hooks
        .until("open", |h| h.body["data"]["state"] == "open")
        .await;
    assert_eq!(open.body["instance"], id);
    events.state(SessionState::Connected).await;

    let (st, status) = shim
        .get_until(
            &format!("/sessions/{id}/status"),
            &[("x-api-key", KEY)],
            "connected",
            |_, b| b["status"] == "connected",
        )
        .await;
    assert_eq!(st, 200, "{status}");
    fields(
        &status,
        &[
            ("status", K::Str),
            ("connectionState", K::Str),
            ("hostDevice", K::Obj),
            ("qrAvailable", K::Bool),
            ("inMemory", K::Bool),
        ],
    );
    assert_eq!(status["status"], "connected");
    assert_eq!(status["connectionState"], "CONNECTED");
    fields(
        &status["hostDevice"],
        &[("phone", K::Str), ("platform", K::Str)],
    );
    assert_eq!(status["hostDevice"]["phone"], OWNER_DIGITS);
    assert_eq!(
        (&status["qrAvailable"], &status["inMemory"]),
        (&json!(false), &json!(true))
    );
    let (st, _) = shim.get_key(&format!("/sessions/{id}/qr")).await;
    assert_eq!(st, 409, "no QR once connected");

    let (st, list) = shim.get_key("/sessions").await;
    assert_eq!(st, 200);
    fields(&list, &[("count", K::Int), ("sessions", K::Arr)]);
    assert_eq!(list["count"], 1);
    let item = &list["sessions"][0];
    fields(
        item,
        &[
            ("sessionId", K::Str),
            ("status", K::Str),
            ("userId", K::Str),
            ("createdAt", K::Int),
            ("webhookUrl", K::Str),
        ],
    );
    assert_eq!(item["webhookUrl"], hooks.url("/venom").as_str());
    assert!(
        item["createdAt"].as_i64().unwrap_or(0) > 1_600_000_000_000,
        "ms: {item}"
    );

    if messaging {
        let (st, sent) = shim
            .post_key(
                "/messages",
                json!({"sessionId": id, "to": PEER, "message": "Hola desde Venom!", "type": "text"}),
            )
            .await;
        assert_eq!(st, 200, "{sent}");
        fields(
            &sent,
            &[
                ("success", K::Bool),
                ("messageId", K::Str),
                ("timestamp", K::Int),
            ],
        );
        assert!(
            sent["timestamp"].as_i64().unwrap_or(0) < 10_000_000_000,
            "seconds"
        );
        let mid = sent["messageId"].as_str().unwrap_or_default().to_owned();
        events.delivered(&mid).await;
        assert_eq!(gw.inbox_message(PEER, "Hola desde Venom!").await.id, mid);

        let incoming = gw.send_from_phone(PEER, OWNER, "Texto del mensaje").await;
        let up = hooks
            .until("MESSAGES_UPSERT", |h| {
                h.body["event"] == "MESSAGES_UPSERT"
                    && h.body["data"]["key"]["id"] == incoming.as_str()
            })
            .await;
        assert_eq!(up.body["instance"], id);
        let data = &up.body["data"];
        fields(
            data,
            &[
                ("key", K::Obj),
                ("message", K::Obj),
                ("pushName", K::Str),
                ("messageTimestamp", K::Int),
            ],
        );
        fields(
            &data["key"],
            &[("remoteJid", K::Str), ("id", K::Str), ("fromMe", K::Bool)],
        );
        assert_eq!(
            data["key"]["remoteJid"],
            format!("{PEER_DIGITS}@s.whatsapp.net")
        );
        assert_eq!(data["key"]["fromMe"], false);
        assert_eq!(data["message"]["conversation"], "Texto del mensaje");
        assert_eq!(data["pushName"], "Peer");
    }

    let (st, del) = shim
        .delete(&format!("/sessions/{id}"), &[("x-api-key", KEY)])
        .await;
    assert_eq!((st, del), (200, json!({"success": true})));
    hooks
        .until("close", |h| h.body["data"]["state"] == "close")
        .await;
    let (st, _) = shim.get_key(&format!("/sessions/{id}/status")).await;
    assert_eq!(st, 404, "a deleted session is gone");
    let (_, list) = shim.get_key("/sessions").await;
    assert_eq!(list["count"], 0);
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venom_pairing_and_lifecycle() {
    venom_flow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn venom_messaging() {
    venom_flow(true).await;
}

/// The whatsapp-web.js API (`prod` = its production variant: `?apiKey=`
/// and a per-session webhook with an event filter).
async fn wwebjs_flow(prod: bool, messaging: bool) {
    let gw = Gateway::start().await;
    // The production variant's webhook is an https (Supabase) function.
    let ca = TestCa::new();
    let mut hooks = if prod {
        Receiver::start_https(&ca).await
    } else {
        Receiver::start().await
    };
    let mut cfg = gw.shim_config("shim");
    cfg.webhook_ca_file = Some(ca.pem_file.clone());
    cfg.dialect = Dialect::Wwebjs;
    cfg.api_key = Some(KEY.into());
    let shim = start_shim(cfg).await;
    gw.create_account(PEER, "Peer").await;
    let id = "mi-sesion-01";
    let mut events = gw.follow(id).await;
    // The variant takes the key in the query; the original in the header.
    let q = |path: &str| {
        if prod {
            let sep = if path.contains('?') { '&' } else { '?' };
            format!("{path}{sep}apiKey={KEY}")
        } else {
            path.to_owned()
        }
    };
    let hdr: &[(&str, &str)] = if prod { &[] } else { &[("x-api-key", KEY)] };
    let post = |path: &str, body: serde_json::Value| {
        let path = q(path);
        let shim = &shim;
        async move {
            if prod {
                shim.post(&path, body).await
            } else {
                shim.post_key(&path, body).await
            }
        }
    };
    let get = |path: &str| {
        let path = q(path);
        let shim = &shim;
        async move {
            if prod {
                shim.get(&path).await
            } else {
                shim.get_key(&path).await
            }
        }
    };

    if !prod {
        let (st, body) = post(
            "/webhook/config",
            json!({"webhookUrl": hooks.url("/global")}),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        fields(&body, &[("success", K::Bool), ("webhookUrl", K::Str)]);
    }
    let (st, body) = post("/api/start-session", json!({"sessionId": id})).await;
    assert_eq!(st, 200, "{body}");
    fields(
        &body,
        &[
            ("success", K::Bool),
            ("sessionId", K::Str),
            ("status", K::Str),
            ("message", K::Str),
        ],
    );
    let raw = events.qr().await;
    let (st, qr) = shim
        .get_until(&q(&format!("/api/qr/{id}")), hdr, "a QR", |st, _| st == 200)
        .await;
    assert_eq!(st, 200, "{qr}");
    fields(
        &qr,
        &[
            ("success", K::Bool),
            ("sessionId", K::Str),
            ("qr", K::Str),
            ("qrCode", K::Str),
        ],
    );
    assert_eq!(decode_qr(qr["qr"].as_str().unwrap_or_default()), raw);
    let (_, status) = shim
        .get_until(&q(&format!("/api/status/{id}")), hdr, "qr", |_, b| {
            b["status"] == "qr"
        })
        .await;
    assert_eq!(
        (&status["status"], &status["connected"]),
        (&json!("qr"), &json!(false))
    );

    gw.scan(OWNER, qr["qrCode"].as_str().unwrap_or_default())
        .await;
    events.state(SessionState::Connected).await;
    let (st, status) = shim
        .get_until(&q(&format!("/api/status/{id}")), hdr, "ready", |_, b| {
            b["status"] == "ready"
        })
        .await;
    assert_eq!(st, 200, "{status}");
    fields(
        &status,
        &[
            ("success", K::Bool),
            ("sessionId", K::Str),
            ("status", K::Str),
            ("connected", K::Bool),
            ("info", K::Obj),
        ],
    );
    assert_eq!(
        (&status["status"], &status["connected"]),
        (&json!("ready"), &json!(true))
    );
    fields(
        &status["info"],
        &[
            ("wid", K::Str),
            ("phone", K::Str),
            ("pushname", K::Str),
            ("platform", K::Str),
        ],
    );
    assert_eq!(status["info"]["wid"], format!("{OWNER_DIGITS}@c.us"));
    let (st, list) = get("/api/sessions").await;
    assert_eq!(st, 200);
    fields(
        &list,
        &[
            ("success", K::Bool),
            ("count", K::Int),
            ("sessions", K::Arr),
        ],
    );
    fields(
        &list["sessions"][0],
        &[
            ("sessionId", K::Str),
            ("status", K::Str),
            ("connected", K::Bool),
            ("phone", K::Str),
        ],
    );

    if prod {
        let hook = json!({"url": hooks.url("/session-hook"), "events": ["message-received", "message-delivered"]});
        let (st, body) = post(&format!("/api/{id}/webhook"), hook).await;
        assert_eq!(st, 200, "{body}");
        fields(
            &body,
            &[
                ("success", K::Bool),
                ("sessionId", K::Str),
                ("webhook", K::Obj),
            ],
        );
        let (st, body) = get(&format!("/api/{id}/webhook")).await;
        assert_eq!(st, 200);
        assert_eq!(
            body["webhook"]["events"],
            json!(["message-received", "message-delivered"])
        );
        assert_eq!(body["webhook"]["url"], hooks.url("/session-hook").as_str());
    }

    // A media URL to a loopback address is refused by the gateway's fetch
    // policy, named (tests/e2e/media.rs sends media in every form).
    let (st, body) = post("/api/send-media", json!({"sessionId": id, "number": PEER_DIGITS, "caption": "c", "mediaUrl": "http://127.0.0.1:9/a.jpg"})).await;
    assert_eq!(st, 400, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap_or_default()
        .contains("media.url"));

    if messaging {
        let (st, sent) = post(
            "/api/send-message",
            json!({"sessionId": id, "number": PEER_DIGITS, "message": "¡Hola desde la API!"}),
        )
        .await;
        assert_eq!(st, 200, "{sent}");
        fields(
            &sent,
            &[
                ("success", K::Bool),
                ("messageId", K::Str),
                ("timestamp", K::Int),
            ],
        );
        let mid = sent["messageId"].as_str().unwrap_or_default().to_owned();
        events.delivered(&mid).await;
        assert_eq!(gw.inbox_message(PEER, "¡Hola desde la API!").await.id, mid);
        if prod {
            let d = hooks
                .until("message-delivered", |h| {
                    h.body["event"] == "message-delivered"
                })
                .await;
            assert_eq!(d.path, "/session-hook");
            fields(
                &d.body,
                &[
                    ("event", K::Str),
                    ("sessionId", K::Str),
                    ("id", K::Str),
                    ("to", K::Str),
                    ("ack", K::Int),
                    ("timestamp", K::Int),
                ],
            );
            assert_eq!(d.body["id"], mid.as_str());
        }

        let incoming = gw.send_from_phone(PEER, OWNER, "Texto del mensaje").await;
        let path = if prod { "/session-hook" } else { "/global" };
        let m = hooks
            .until("message webhook", |h| {
                h.path == path && h.body["id"] == incoming.as_str()
            })
            .await;
        fields(
            &m.body,
            &[
                ("id", K::Str),
                ("sessionId", K::Str),
                ("from", K::Str),
                ("body", K::Str),
                ("type", K::Str),
                ("timestamp", K::Int),
                ("contact", K::Obj),
                ("media", K::OptObj),
            ],
        );
        assert_eq!(m.body["from"], format!("{PEER_DIGITS}@c.us"));
        assert_eq!(
            (&m.body["body"], &m.body["type"]),
            (&json!("Texto del mensaje"), &json!("chat"))
        );
        fields(&m.body["contact"], &[("name", K::Str), ("number", K::Str)]);
        assert_eq!(m.body["contact"]["number"], PEER_DIGITS);
        if prod {
            assert_eq!(m.body["event"], "message-received");
        }
        let (st, history) = get(&format!("/api/messages/{id}?limit=50")).await;
        assert_eq!(st, 200, "{history}");
        fields(
            &history,
            &[
                ("success", K::Bool),
                ("count", K::Int),
                ("messages", K::Arr),
            ],
        );
        let found = history["messages"].as_array().is_some_and(|ms| {
            ms.iter()
                .any(|x| x["id"] == incoming.as_str() && x["body"] == "Texto del mensaje")
        });
        assert!(found, "{history}");
    }

    if prod {
        let (st, _) = shim.delete(&q(&format!("/api/{id}/webhook")), &[]).await;
        assert_eq!(st, 200);
        let (_, body) = get(&format!("/api/{id}/webhook")).await;
        assert_eq!(body["webhook"], serde_json::Value::Null);
    }
    let (st, body) = post(&format!("/api/logout/{id}"), json!({})).await;
    assert_eq!(st, 200, "{body}");
    fields(&body, &[("success", K::Bool), ("message", K::Str)]);
    events.state(SessionState::LoggedOut).await;
    let (_, status) = shim
        .get_until(
            &q(&format!("/api/status/{id}")),
            hdr,
            "logged_out",
            |_, b| b["status"] == "logged_out",
        )
        .await;
    assert_eq!(
        (&status["status"], &status["connected"]),
        (&json!("logged_out"), &json!(false))
    );
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wwebjs_pairing_and_lifecycle() {
    wwebjs_flow(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wwebjs_messaging() {
    wwebjs_flow(false, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wwebjs_prod_pairing_and_lifecycle() {
    wwebjs_flow(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wwebjs_prod_messaging() {
    wwebjs_flow(true, true).await;
}

async fn qr_service_flow(messaging: bool) {
    let gw = Gateway::start().await;
    let mut hooks = Receiver::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::QrService;
    cfg.backend_url = Some(hooks.url(""));
    let shim = start_shim(cfg).await;
    gw.create_account(PEER, "Peer").await;
    let id = "unique-session-id";

    let (st, body) = shim
        .post(
            "/init",
            json!({"sessionId": id, "chatbotId": "chatbot-uuid"}),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    fields(
        &body,
        &[
            ("success", K::Bool),
            ("sessionId", K::Str),
            ("status", K::Str),
        ],
    );
    assert_eq!(body["success"], true);

    let qr_hook = hooks.until("qr webhook", |h| h.body["type"] == "qr").await;
    assert_eq!(qr_hook.path, "/whatsapp-qr/webhook");
    fields(
        &qr_hook.body,
        &[("type", K::Str), ("sessionId", K::Str), ("data", K::Obj)],
    );
    fields(&qr_hook.body["data"], &[("qrCode", K::Str)]);
    let (st, qr) = shim
        .get_until(&format!("/qr-code/{id}"), &[], "a QR", |st, _| st == 200)
        .await;
    assert_eq!(st, 200, "{qr}");
    fields(&qr, &[("qrCode", K::Str), ("status", K::Str)]);
    assert_eq!(qr["status"], "qr_ready");
    let raw = decode_qr(qr["qrCode"].as_str().unwrap_or_default());
    assert_eq!(
        decode_qr(qr_hook.body["data"]["qrCode"].as_str().unwrap_or_default()),
        raw
    );
    let (_, status) = shim
        .get_until(&format!("/status/{id}"), &[], "qr_ready", |_, b| {
            b["status"] == "qr_ready"
        })
        .await;
    assert_eq!(status["status"], "qr_ready");

    gw.scan(OWNER, &raw).await;
    let connected = hooks
        .until("connected webhook", |h| h.body["type"] == "connected")
        .await;
    assert_eq!(connected.body["sessionId"], id);
    assert_iso(&connected.body["data"]["connectedAt"]);
    let (st, status) = shim
        .get_until(&format!("/status/{id}"), &[], "connected", |_, b| {
            b["status"] == "connected"
        })
        .await;
    assert_eq!(st, 200);
    fields(
        &status,
        &[
            ("sessionId", K::Str),
            ("status", K::Str),
            ("lastConnectedAt", K::Str),
        ],
    );
    assert_eq!(status["status"], "connected");
    assert_iso(&status["lastConnectedAt"]);

    if messaging {
        let mut events = gw.follow(id).await;
        let (st, sent) = shim
            .post(
                "/send",
                json!({"sessionId": id, "to": PEER_DIGITS, "message": "Hola, ¿cómo estás?"}),
            )
            .await;
        assert_eq!(st, 200, "{sent}");
        fields(&sent, &[("success", K::Bool), ("messageId", K::Str)]);
        let mid = sent["messageId"].as_str().unwrap_or_default().to_owned();
        events.delivered(&mid).await;
        assert_eq!(gw.inbox_message(PEER, "Hola, ¿cómo estás?").await.id, mid);

        let incoming = gw.send_from_phone(PEER, OWNER, "Hola").await;
        let m = hooks
            .until("incoming", |h| h.path == "/whatsapp-qr/incoming")
            .await;
        fields(
            &m.body,
            &[
                ("sessionId", K::Str),
                ("from", K::Str),
                ("message", K::Str),
                ("timestamp", K::Str),
                ("messageId", K::Str),
            ],
        );
        assert_eq!(
            (&m.body["from"], &m.body["message"]),
            (&json!(PEER_DIGITS), &json!("Hola"))
        );
        assert_eq!(m.body["messageId"], incoming.as_str());
        assert_iso(&m.body["timestamp"]);
    }

    let (st, body) = shim.post("/disconnect", json!({"sessionId": id})).await;
    assert_eq!(
        (st, body),
        (
            200,
            json!({"success": true, "message": "Session disconnected"})
        )
    );
    let gone = hooks
        .until("disconnected webhook", |h| h.body["type"] == "disconnected")
        .await;
    assert_eq!(
        gone.body,
        json!({"type": "disconnected", "sessionId": id, "data": {"reason": "logout"}})
    );
    let (_, status) = shim
        .get_until(&format!("/status/{id}"), &[], "disconnected", |_, b| {
            b["status"] == "disconnected"
        })
        .await;
    assert_eq!(status["status"], "disconnected");
    let (st, health) = shim.get("/health").await;
    assert_eq!(st, 200, "{health}");
    fields(
        &health,
        &[
            ("status", K::Str),
            ("activeSessions", K::Int),
            ("sessions", K::Obj),
            ("uptime", K::Int),
        ],
    );
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_service_pairing_and_lifecycle() {
    qr_service_flow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_service_messaging() {
    qr_service_flow(true).await;
}

async fn baileys_ws_flow(messaging: bool) {
    let gw = Gateway::start().await;
    let mut hooks = Receiver::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::BaileysWs;
    cfg.api_url = Some(hooks.url("/events"));
    cfg.max_sessions = 10;
    let shim = start_shim(cfg).await;
    gw.create_account(PEER, "Peer").await;
    let id = "cliente1";
    let mut events = gw.follow(id).await;

    let (st, body) = shim.post(&format!("/sessions/{id}"), json!(null)).await;
    assert_eq!(st, 200, "{body}");
    fields(
        &body,
        &[
            ("success", K::Bool),
            ("message", K::Str),
            ("session", K::Obj),
        ],
    );
    assert_eq!(body["session"]["id"], id);
    let full = [
        ("connected", K::Bool),
        ("number", K::Str),
        ("name", K::Str),
        ("qr_code", K::Str),
        ("qr_image", K::Str),
        ("last_disconnect_reason", K::Str),
        ("reconnect_attempts", K::Int),
        ("created_at", K::Str),
        ("last_activity", K::Str),
    ];
    fields(&body["session"]["status"], &full);
    assert_iso(&body["session"]["status"]["created_at"]);

    let qr_hook = hooks.until("qr event", |h| h.body["event"] == "qr").await;
    assert_eq!(qr_hook.path, "/events");
    fields(
        &qr_hook.body,
        &[
            ("event", K::Str),
            ("session_id", K::Str),
            ("timestamp", K::Str),
            ("data", K::Obj),
        ],
    );
    let raw = events.qr().await;
    let bare = baileys_form(&raw);
    assert!(bare.starts_with("2@"), "{bare}");
    assert_eq!(qr_hook.body["data"]["qr_code"], bare.as_str());
    assert_eq!(
        decode_qr(
            qr_hook.body["data"]["qr_image"]
                .as_str()
                .unwrap_or_default()
        ),
        bare
    );
    let (st, qr) = shim
        .get_until(&format!("/sessions/{id}/qr"), &[], "a QR", |st, _| {
            st == 200
        })
        .await;
    assert_eq!(st, 200, "{qr}");
    fields(
        &qr,
        &[
            ("status", K::Str),
            ("message", K::Str),
            ("qr_code", K::Str),
            ("qr_image", K::Str),
            ("connected", K::Bool),
            ("session_id", K::Str),
        ],
    );
    assert_eq!(
        (&qr["status"], &qr["connected"]),
        (&json!("waiting_for_scan"), &json!(false))
    );
    assert_eq!(
        decode_qr(qr["qr_image"].as_str().unwrap_or_default()),
        qr["qr_code"].as_str().unwrap_or_default()
    );
    assert!(
        qr["qr_code"].as_str().unwrap_or_default().starts_with("2@"),
        "{qr}"
    );
    let (_, list) = shim.get("/sessions").await;
    assert_eq!(list["sessions"][0]["has_qr"], true);

    gw.scan(OWNER, qr["qr_code"].as_str().unwrap_or_default())
        .await;
    let conn = hooks
        .until("connected", |h| {
            h.body["event"] == "connection" && h.body["data"]["connected"] == true
        })
        .await;
    assert_eq!(conn.body["data"]["number"], OWNER_DIGITS);
    events.state(SessionState::Connected).await;
    let (st, qr) = shim
        .get_until(&format!("/sessions/{id}/qr"), &[], "connected", |_, b| {
            b["connected"] == true
        })
        .await;
    assert_eq!(st, 200, "{qr}");
    fields(
        &qr,
        &[
            ("status", K::Str),
            ("message", K::Str),
            ("connected", K::Bool),
            ("session_info", K::Obj),
        ],
    );
    fields(
        &qr["session_info"],
        &[
            ("id", K::Str),
            ("number", K::Str),
            ("name", K::Str),
            ("last_activity", K::Str),
        ],
    );
    assert_eq!(
        (&qr["status"], &qr["session_info"]["number"]),
        (&json!("connected"), &json!(OWNER_DIGITS))
    );
    let (st, status) = shim.get(&format!("/sessions/{id}/status")).await;
    assert_eq!(st, 200);
    fields(&status["session"]["status"], &full);
    assert_eq!(status["session"]["status"]["connected"], true);
    let (st, list) = shim.get("/sessions").await;
    assert_eq!(st, 200);
    fields(&list, &[("total", K::Int), ("sessions", K::Arr)]);
    fields(
        &list["sessions"][0],
        &[("id", K::Str), ("status", K::Obj), ("has_qr", K::Bool)],
    );
    fields(
        &list["sessions"][0]["status"],
        &[("connected", K::Bool), ("number", K::Str), ("name", K::Str)],
    );
    let (st, health) = shim.get("/health").await;
    assert_eq!(st, 200);
    fields(
        &health,
        &[
            ("status", K::Str),
            ("service", K::Str),
            ("timestamp", K::Str),
            ("total_sessions", K::Int),
            ("connected_sessions", K::Int),
            ("disconnected_sessions", K::Int),
            ("max_sessions", K::Int),
            ("sessions_with_qr", K::Int),
            ("memory_usage", K::Obj),
            ("uptime", K::Int),
        ],
    );
    assert_eq!(
        (
            &health["service"],
            &health["connected_sessions"],
            &health["max_sessions"]
        ),
        (&json!("baileys-ws"), &json!(1), &json!(10))
    );
    fields(
        &health["memory_usage"],
        &[
            ("rss", K::Int),
            ("heapTotal", K::Int),
            ("heapUsed", K::Int),
            ("external", K::Int),
            ("arrayBuffers", K::Int),
        ],
    );
    assert!(health["memory_usage"]["rss"].as_u64().unwrap_or(0) > 0);

    if messaging {
        let (st, sent) = shim
            .post(
                &format!("/sessions/{id}/send"),
                json!({"number": PEER_DIGITS, "message": "Hola desde la sesión cliente1"}),
            )
            .await;
        assert_eq!(st, 200, "{sent}");
        fields(
            &sent,
            &[
                ("success", K::Bool),
                ("message", K::Str),
                ("message_id", K::Str),
                ("timestamp", K::Str),
            ],
        );
        let mid = sent["message_id"].as_str().unwrap_or_default().to_owned();
        events.delivered(&mid).await;
        assert_eq!(
            gw.inbox_message(PEER, "Hola desde la sesión cliente1")
                .await
                .id,
            mid
        );
        let incoming = gw.send_from_phone(PEER, OWNER, "Hola").await;
        let m = hooks
            .until("message event", |h| {
                h.body["event"] == "message" && h.body["data"]["id"] == incoming.as_str()
            })
            .await;
        fields(
            &m.body["data"],
            &[
                ("id", K::Str),
                ("from", K::Str),
                ("name", K::Str),
                ("message", K::Str),
                ("from_me", K::Bool),
                ("timestamp", K::Str),
            ],
        );
        assert_eq!(
            (&m.body["data"]["from"], &m.body["data"]["message"]),
            (&json!(PEER_DIGITS), &json!("Hola"))
        );
    }

    let (st, body) = shim
        .post(&format!("/sessions/{id}/restart"), json!(null))
        .await;
    assert_eq!(st, 200, "{body}");
    fields(
        &body,
        &[
            ("success", K::Bool),
            ("message", K::Str),
            ("session", K::Obj),
        ],
    );
    hooks
        .until("reconnected", |h| {
            h.body["event"] == "connection" && h.body["data"]["status"] == "disconnected"
        })
        .await;
    hooks
        .until("reconnected", |h| {
            h.body["event"] == "connection" && h.body["data"]["connected"] == true
        })
        .await;

    let (st, body) = shim.delete(&format!("/sessions/{id}"), &[]).await;
    assert_eq!(st, 200, "{body}");
    fields(&body, &[("success", K::Bool), ("message", K::Str)]);
    hooks
        .until("logged out", |h| h.body["data"]["status"] == "logged_out")
        .await;
    let (st, _) = shim.get(&format!("/sessions/{id}/status")).await;
    assert_eq!(st, 404);
    let (_, list) = shim.get("/sessions").await;
    assert_eq!(list["total"], 0);
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_ws_pairing_and_lifecycle() {
    baileys_ws_flow(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_ws_messaging() {
    baileys_ws_flow(true).await;
}
