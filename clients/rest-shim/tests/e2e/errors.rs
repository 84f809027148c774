//! Bad input → 400 naming the field; unknown session → 404; a missing or
//! wrong key where the gateway documents one → 401; valid media for a
//! session that is not connected → 409.

use axum::http::Method;
use serde_json::json;

use crate::common::*;
use wagate_rest::Dialect;

async fn setup(dialect: Dialect) -> (Gateway, Shim) {
    let gw = Gateway::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = dialect;
    cfg.api_key = Some(KEY.into());
    let shim = start_shim(cfg).await;
    (gw, shim)
}

#[track_caller]
fn names(answer: &(u16, serde_json::Value), status: u16, field: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let msg = answer.1["error"].as_str().unwrap_or_default();
    assert!(msg.contains(field), "{field:?} not named in {msg:?}");
    assert_eq!(answer.1["success"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_and_missing_fields_are_400_naming_the_field() {
    let (gw, shim) = setup(Dialect::Venom).await;
    let key = [("x-api-key", KEY)];
    let bad = shim
        .raw(Method::POST, "/sessions", &key, Some(b"{\"sessionId\": "))
        .await;
    names(&bad, 400, "JSON");
    names(
        &shim.post_key("/sessions", json!({"userId": "u"})).await,
        400,
        "sessionId",
    );
    names(
        &shim.post_key("/sessions", json!({"sessionId": 42})).await,
        400,
        "sessionId",
    );
    names(
        &shim
            .post_key("/sessions", json!({"sessionId": "has space"}))
            .await,
        400,
        "sessionId",
    );
    names(
        &shim
            .post_key(
                "/sessions",
                json!({"sessionId": "a", "webhookUrl": "not a url"}),
            )
            .await,
        400,
        "webhookUrl",
    );
    names(
        &shim
            .post_key("/messages", json!({"sessionId": "a", "message": "x"}))
            .await,
        400,
        "to",
    );
    names(
        &shim
            .post_key("/messages", json!({"sessionId": "a", "to": "+15550001111"}))
            .await,
        400,
        "message",
    );
    names(
        &shim
            .post_key(
                "/messages",
                json!({"sessionId": "a", "to": "call me", "message": "x"}),
            )
            .await,
        400,
        "to",
    );
    names(
        &shim.post_key("/api/start-session", json!({})).await,
        400,
        "sessionId",
    );
    names(
        &shim
            .post_key(
                "/api/send-message",
                json!({"sessionId": "a", "message": "x"}),
            )
            .await,
        400,
        "number",
    );
    names(
        &shim
            .post_key("/webhook/config", json!({"webhookUrl": true}))
            .await,
        400,
        "webhookUrl",
    );
    names(
        &shim.post("/init", json!({"chatbotId": "c"})).await,
        400,
        "sessionId",
    );
    names(
        &shim
            .post("/send", json!({"sessionId": "a", "to": "56912345678"}))
            .await,
        400,
        "message",
    );
    names(
        &shim.post("/disconnect", json!([])).await,
        400,
        "JSON object",
    );
    names(
        &shim
            .post("/sessions/b1/send", json!({"message": "x"}))
            .await,
        400,
        "number",
    );
    names(&shim.get_key("/api/messages/a?limit=0").await, 400, "limit");
    names(
        &shim.get_key("/api/messages/a?limit=many").await,
        400,
        "limit",
    );

    // A known session for the checks that need one.
    let (st, _) = shim
        .post_key("/api/start-session", json!({"sessionId": "s1"}))
        .await;
    assert_eq!(st, 200);
    names(
        &shim
            .post_key("/api/s1/webhook", json!({"events": ["all"]}))
            .await,
        400,
        "url",
    );
    names(
        &shim
            .post_key(
                "/api/s1/webhook",
                json!({"url": "http://127.0.0.1:9/h", "events": ["message-seen"]}),
            )
            .await,
        400,
        "events",
    );
    names(
        &shim
            .post_key(
                "/api/s1/webhook",
                json!({"url": "http://127.0.0.1:9/h", "events": "all"}),
            )
            .await,
        400,
        "events",
    );
    names(
        &shim
            .post_key("/api/s1/webhook", json!({"url": "ftp://example.invalid/h"}))
            .await,
        400,
        "url",
    );
    // Media: no media at all, a bad URL, bad base64, an empty file; then
    // each valid form reaches the gateway, which refuses a session that is
    // not connected.
    let media = |body: serde_json::Value| shim.post_key("/api/send-media", body);
    names(
        &media(json!({"sessionId": "s1", "number": "5491123456789"})).await,
        400,
        "media",
    );
    names(
        &media(
            json!({"sessionId": "s1", "number": "5491123456789", "mediaUrl": "file:///etc/passwd"}),
        )
        .await,
        400,
        "mediaUrl",
    );
    names(
        &media(json!({"sessionId": "s1", "number": "5491123456789", "mediaBase64": "***"})).await,
        400,
        "mediaBase64",
    );
    names(&media(json!({"sessionId": "s1", "number": "5491123456789", "mediaBase64": "aGk=", "mediaUrl": "http://h/x"})).await, 400, "media");
    names(
        &media(json!({"sessionId": "s1", "number": "5491123456789", "mediaBase64": ""})).await,
        400,
        "media",
    );
    names(&media(json!({"sessionId": "s1", "number": "5491123456789", "mediaBase64": "data:image/png;base64,aGk="})).await, 409, "connected");
    let boundary = "XyZ";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"sessionId\"\r\n\r\ns1\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"number\"\r\n\r\n5491123456789\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"caption\"\r\n\r\nfoto\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nJFIFDATA\r\n\
         --{boundary}--\r\n"
    );
    let ct = format!("multipart/form-data; boundary={boundary}");
    let answer = shim
        .raw(
            Method::POST,
            "/api/send-media",
            &[("x-api-key", KEY), ("content-type", &ct)],
            Some(form.as_bytes()),
        )
        .await;
    names(&answer, 409, "connected");
    let no_number = form.replace("name=\"number\"", "name=\"phone\"");
    let answer = shim
        .raw(
            Method::POST,
            "/api/send-media",
            &[("x-api-key", KEY), ("content-type", &ct)],
            Some(no_number.as_bytes()),
        )
        .await;
    names(&answer, 400, "number");
    // Venom types other than text.
    names(
        &shim
            .post_key(
                "/messages",
                json!({"sessionId": "s1", "to": "+15550001111", "message": "x", "type": "image"}),
            )
            .await,
        501,
        "type",
    );
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sessions_are_404() {
    let (gw, shim) = setup(Dialect::Venom).await;
    let key = [("x-api-key", KEY)];
    names(&shim.get_key("/sessions/nope/status").await, 404, "nope");
    names(&shim.get_key("/sessions/nope/qr").await, 404, "nope");
    names(&shim.delete("/sessions/nope", &key).await, 404, "nope");
    names(
        &shim
            .post_key(
                "/messages",
                json!({"sessionId": "nope", "to": "+15550001111", "message": "x"}),
            )
            .await,
        404,
        "nope",
    );
    names(&shim.get_key("/api/status/nope").await, 404, "nope");
    names(&shim.get_key("/api/qr/nope").await, 404, "nope");
    names(&shim.get_key("/api/messages/nope").await, 404, "nope");
    names(
        &shim.post_key("/api/logout/nope", json!({})).await,
        404,
        "nope",
    );
    names(
        &shim
            .post_key(
                "/api/send-message",
                json!({"sessionId": "nope", "number": "5491123456789", "message": "x"}),
            )
            .await,
        404,
        "nope",
    );
    names(
        &shim
            .post_key(
                "/api/send-media",
                json!({"sessionId": "nope", "number": "5491123456789", "mediaBase64": "aGk="}),
            )
            .await,
        404,
        "nope",
    );
    names(
        &shim
            .post_key("/api/nope/webhook", json!({"url": "http://127.0.0.1:9/h"}))
            .await,
        404,
        "nope",
    );
    names(&shim.get_key("/api/nope/webhook").await, 404, "nope");
    names(&shim.delete("/api/nope/webhook", &key).await, 404, "nope");
    names(&shim.get("/qr-code/nope").await, 404, "nope");
    names(&shim.get("/status/nope").await, 404, "nope");
    names(
        &shim
            .post(
                "/send",
                json!({"sessionId": "nope", "to": "56912345678", "message": "x"}),
            )
            .await,
        404,
        "nope",
    );
    names(
        &shim.post("/disconnect", json!({"sessionId": "nope"})).await,
        404,
        "nope",
    );
    names(
        &shim
            .post(
                "/sessions/nope/send",
                json!({"number": "573001234567", "message": "x"}),
            )
            .await,
        404,
        "nope",
    );
    names(
        &shim.post("/sessions/nope/restart", json!(null)).await,
        404,
        "nope",
    );
    let (st, body) = shim.get("/no/such/route").await;
    assert_eq!(st, 404, "{body}");
    shim.stop().await;
    gw.stop().await;

    // Baileys-WS owns the shared /sessions paths in its dialect.
    let (gw, shim) = setup(Dialect::BaileysWs).await;
    names(&shim.get("/sessions/nope/status").await, 404, "nope");
    names(&shim.get("/sessions/nope/qr").await, 404, "nope");
    names(&shim.delete("/sessions/nope", &[]).await, 404, "nope");
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_where_documented() {
    let (gw, shim) = setup(Dialect::Venom).await;
    let wrong = [("x-api-key", "wrong")];
    // Venom: the header on every route but /health; the query does not count.
    for path in ["/sessions", "/sessions/a/status", "/sessions/a/qr"] {
        names(&shim.get(path).await, 401, "API key");
        names(
            &shim.raw(Method::GET, path, &wrong, None).await,
            401,
            "API key",
        );
        names(
            &shim.get(&format!("{path}?apiKey={KEY}")).await,
            401,
            "API key",
        );
    }
    names(
        &shim.post("/sessions", json!({"sessionId": "x"})).await,
        401,
        "API key",
    );
    names(&shim.post("/messages", json!({})).await, 401, "API key");
    names(&shim.delete("/sessions/x", &wrong).await, 401, "API key");
    assert_eq!(shim.get("/health").await.0, 200);
    assert_eq!(shim.get_key("/sessions").await.0, 200);
    // whatsapp-web.js: the header or ?apiKey=.
    for path in ["/api/sessions", "/api/health"] {
        names(&shim.get(path).await, 401, "API key");
        names(
            &shim.get(&format!("{path}?apiKey=wrong")).await,
            401,
            "API key",
        );
        assert_eq!(
            shim.get(&format!("{path}?apiKey={KEY}")).await.0,
            200,
            "{path}"
        );
        assert_eq!(shim.get_key(path).await.0, 200, "{path}");
    }
    names(
        &shim
            .post("/api/start-session", json!({"sessionId": "x"}))
            .await,
        401,
        "API key",
    );
    names(
        &shim
            .post(
                "/webhook/config",
                json!({"webhookUrl": "http://127.0.0.1:9/"}),
            )
            .await,
        401,
        "API key",
    );
    names(
        &shim.post("/api/x/webhook", json!({})).await,
        401,
        "API key",
    );
    assert_eq!(shim.get("/info").await.0, 200, "/info is open");
    // QR Service and Baileys-WS document no auth.
    assert_eq!(
        shim.post("/init", json!({"sessionId": "open-1"})).await.0,
        200
    );
    assert_eq!(shim.get("/status/open-1").await.0, 200);
    assert_eq!(shim.post("/sessions/open-2", json!(null)).await.0, 200);
    assert_eq!(shim.get("/status").await.0, 200);
    // The OpenAPI document is open.
    assert_eq!(shim.get("/openapi.json").await.0, 200);
    shim.stop().await;
    gw.stop().await;
}
