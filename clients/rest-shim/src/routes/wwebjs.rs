//! whatsapp-web.js multi-session API (`/api/...`, `X-API-Key`) and its
//! production variant (also `?apiKey=`, per-session webhooks with event
//! filters). The variant only adds routes, so both are one family.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::routing::{delete, get, post};
use axum::Json;
use serde_json::{json, Value};

use super::{qr_or_conflict, App, RouteSpec, Ty, F};
use crate::auth::Auth;
use crate::body::{self, JsonBody, Media, MediaForm};
use crate::config::Family;
use crate::error::ApiError;
use crate::gateway::state_of;
use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{
    media, EventType, Media as GatewayMedia, MediaKind, MessageEvent, Session, SessionState,
};
use crate::state::SessionHook;
use crate::time::{ms_of, secs_of};
use crate::webhook::{c_us, sender_number, wwebjs_body, wwebjs_type};

/// Events a per-session webhook can filter on.
pub(crate) const HOOK_EVENTS: [&str; 4] = [
    "message-received",
    "message-delivered",
    "message-from-me",
    "all",
];
/// Largest `limit` of the message history.
const MAX_HISTORY: usize = 1000;

pub(crate) fn routes() -> Vec<RouteSpec> {
    let r = |m, p, s, h| RouteSpec::new(Family::Wwebjs, Auth::HeaderOrQuery, m, p, s, h);
    vec![
        r(
            Method::POST,
            "/api/start-session",
            "Create and start a session",
            post(start),
        )
        .body(&[F("sessionId", Ty::String, true)])
        .response(&[
            F("success", Ty::Boolean, true),
            F("sessionId", Ty::String, true),
            F("status", Ty::String, true),
            F("message", Ty::String, true),
        ]),
        r(Method::GET, "/api/qr/{sessionId}", "QR code", get(qr)).response(&[
            F("success", Ty::Boolean, true),
            F("sessionId", Ty::String, true),
            F("qr", Ty::String, true),
            F("qrCode", Ty::String, true),
        ]),
        r(
            Method::GET,
            "/api/status/{sessionId}",
            "Session status",
            get(status),
        )
        .response(&[
            F("success", Ty::Boolean, true),
            F("sessionId", Ty::String, true),
            F("status", Ty::String, true),
            F("connected", Ty::Boolean, true),
            F("info", Ty::Object, false),
        ]),
        r(Method::GET, "/api/sessions", "List sessions", get(list)).response(&[
            F("success", Ty::Boolean, true),
            F("count", Ty::Integer, true),
            F("sessions", Ty::Array, true),
        ]),
        r(
            Method::POST,
            "/api/send-message",
            "Send a text message",
            post(send),
        )
        .body(&[
            F("sessionId", Ty::String, true),
            F("number", Ty::String, true),
            F("message", Ty::String, true),
        ])
        .response(&[
            F("success", Ty::Boolean, true),
            F("messageId", Ty::String, true),
            F("timestamp", Ty::Integer, true),
        ]),
        r(
            Method::POST,
            "/api/send-media",
            "Send a media file (multipart file, URL or base64)",
            // MediaForm applies --max-media-bytes itself.
            post(send_media).layer(DefaultBodyLimit::disable()),
        )
        .media(&[
            F("sessionId", Ty::String, true),
            F("number", Ty::String, true),
            F("caption", Ty::String, false),
            F("media", Ty::Binary, false),
            F("mediaUrl", Ty::String, false),
            F("mediaBase64", Ty::String, false),
            F("mimetype", Ty::String, false),
            F("filename", Ty::String, false),
        ])
        .response(&[
            F("success", Ty::Boolean, true),
            F("messageId", Ty::String, true),
            F("timestamp", Ty::Integer, true),
        ]),
        r(
            Method::GET,
            "/uploads/{file}",
            "A received media file (the production variant's fileUrl)",
            get(crate::media::serve_upload),
        )
        .open(),
        r(
            Method::GET,
            "/api/messages/{sessionId}",
            "Recent messages",
            get(messages),
        )
        .query(&[F("limit", Ty::Integer, false)])
        .response(&[
            F("success", Ty::Boolean, true),
            F("sessionId", Ty::String, true),
            F("count", Ty::Integer, true),
            F("messages", Ty::Array, true),
        ]),
        r(
            Method::POST,
            "/api/logout/{sessionId}",
            "Log the session out",
            post(logout),
        )
        .response(&[
            F("success", Ty::Boolean, true),
            F("message", Ty::String, true),
        ]),
        r(
            Method::POST,
            "/webhook/config",
            "Set the global webhook",
            post(config_webhook),
        )
        .body(&[F("webhookUrl", Ty::String, true)])
        .response(&[
            F("success", Ty::Boolean, true),
            F("webhookUrl", Ty::String, true),
        ]),
        r(
            Method::POST,
            "/api/{sessionId}/webhook",
            "Set the session's webhook",
            post(set_hook),
        )
        .body(&[F("url", Ty::String, true), F("events", Ty::Array, false)])
        .response(&[
            F("success", Ty::Boolean, true),
            F("sessionId", Ty::String, true),
            F("webhook", Ty::Object, true),
        ]),
        r(
            Method::GET,
            "/api/{sessionId}/webhook",
            "The session's webhook",
            get(get_hook),
        )
        .response(&[
            F("success", Ty::Boolean, true),
            F("sessionId", Ty::String, true),
            F("webhook", Ty::Object, false),
        ]),
        r(
            Method::DELETE,
            "/api/{sessionId}/webhook",
            "Remove the session's webhook",
            delete(delete_hook),
        )
        .response(&[
            F("success", Ty::Boolean, true),
            F("message", Ty::String, true),
        ]),
    ]
}

/// `status` values, in whatsapp-web.js's vocabulary (its `qr` and `ready`
/// events).
pub(crate) fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Connecting => "initializing",
        SessionState::QrReady => "qr",
        SessionState::Connected => "ready",
        SessionState::LoggedOut => "logged_out",
        SessionState::Disconnected | SessionState::Unspecified => "disconnected",
    }
}

fn path_id(id: &str) -> Result<String, ApiError> {
    body::session_id("sessionId", id)
}

async fn start(State(app): State<App>, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let id = path_id(&body.string("sessionId")?)?;
    let session = app.create(&id, HashMap::new(), |_| {}).await?;
    Ok(Json(json!({
        "success": true,
        "sessionId": id,
        "status": state_name(state_of(&session)),
        "message": "Session started",
    })))
}

async fn qr(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let (raw, png) = qr_or_conflict(&app, &id).await?;
    Ok(Json(
        json!({ "success": true, "sessionId": id, "qr": png, "qrCode": raw }),
    ))
}

fn info(s: &Session) -> Value {
    if s.jid.is_empty() {
        return Value::Null;
    }
    json!({
        "wid": c_us(&s.jid),
        "phone": s.phone,
        "pushname": s.push_name,
        "platform": s.platform,
    })
}

async fn status(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let s = app.session(&id).await?;
    let state = state_of(&s);
    Ok(Json(json!({
        "success": true,
        "sessionId": id,
        "status": state_name(state),
        "connected": state == SessionState::Connected,
        "info": info(&s),
    })))
}

async fn list(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let sessions = app.sessions().await?;
    let items: Vec<Value> = sessions
        .iter()
        .map(|s| {
            let state = state_of(s);
            json!({
                "sessionId": s.session_id,
                "status": state_name(state),
                "connected": state == SessionState::Connected,
                "phone": s.phone,
            })
        })
        .collect();
    Ok(Json(
        json!({ "success": true, "count": items.len(), "sessions": items }),
    ))
}

async fn send(
    State(app): State<App>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&body.string("sessionId")?)?;
    let to = body.recipient("number")?;
    let text = body.string("message")?;
    let sent = app.send_text(&id, &to, &text, &headers).await?;
    Ok(Json(json!({
        "success": true,
        "messageId": sent.message_id,
        "timestamp": secs_of(sent.timestamp.as_ref()),
    })))
}

async fn send_media(
    State(app): State<App>,
    headers: HeaderMap,
    form: MediaForm,
) -> Result<Json<Value>, ApiError> {
    app.session(&form.session_id).await?;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty());
    // The mimetype: given, else declared with the bytes, else guessed from
    // the name or URL, else from the bytes themselves.
    let (declared, named, sniffed) = match &form.media {
        Media::File {
            name,
            mimetype,
            bytes,
        } => (
            mimetype.clone(),
            crate::media::by_extension(name),
            crate::media::sniff(bytes),
        ),
        Media::Base64 { mimetype, bytes } => (
            mimetype.clone(),
            form.file_name
                .as_deref()
                .and_then(crate::media::by_extension),
            crate::media::sniff(bytes),
        ),
        Media::Url(url) => (None, crate::media::by_extension(url), None),
    };
    let mimetype = form
        .mimetype
        .clone()
        .or(declared)
        .filter(|m| m != "application/octet-stream")
        .or(named.map(str::to_owned))
        .or(sniffed.map(str::to_owned))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let kind = crate::media::kind_of(&mimetype);
    let file_name = form.file_name.clone().or_else(|| match &form.media {
        Media::File { name, .. } => Some(name.clone()),
        Media::Url(url) => url
            .split(['?', '#'])
            .next()
            .and_then(|p| p.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        Media::Base64 { .. } => None,
    });
    // Captions show under images, videos and documents only.
    let caption = match kind {
        MediaKind::Image | MediaKind::Video | MediaKind::Document => {
            form.caption.clone().unwrap_or_default()
        }
        _ => String::new(),
    };
    let document_name = if kind == MediaKind::Document {
        file_name
            .clone()
            .unwrap_or_else(|| format!("file.{}", crate::media::extension_of(&mimetype)))
    } else {
        String::new()
    };
    let source = match form.media {
        Media::Url(url) => media::Source::Url(url),
        Media::File { bytes, .. } | Media::Base64 { bytes, .. } => {
            let handle = app
                .gateway
                .upload_media(&form.session_id, kind, &mimetype, &document_name, bytes)
                .await
                .map_err(ApiError::from_media_send)?;
            media::Source::Handle(handle)
        }
    };
    let sent = app
        .gateway
        .send_media(
            &form.session_id,
            &form.to,
            GatewayMedia {
                kind: kind as i32,
                source: Some(source),
                mimetype,
                caption,
                file_name: document_name,
                ..Default::default()
            },
            key,
        )
        .await
        .map_err(ApiError::from_media_send)?;
    Ok(Json(json!({
        "success": true,
        "messageId": sent.message_id,
        "timestamp": secs_of(sent.timestamp.as_ref()),
    })))
}

pub(crate) fn message_json(msg: &MessageEvent) -> Value {
    let from = if msg.from_me && !msg.sender_phone.is_empty() {
        format!("{}@c.us", msg.sender_phone)
    } else {
        c_us(&msg.chat)
    };
    json!({
        "id": msg.id,
        "chat": c_us(&msg.chat),
        "from": from,
        "fromMe": msg.from_me,
        "body": wwebjs_body(msg),
        "type": wwebjs_type(&msg.r#type),
        "timestamp": secs_of(msg.timestamp.as_ref()),
        "contact": { "name": msg.push_name, "number": sender_number(msg) },
    })
}

async fn messages(
    State(app): State<App>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let Query(query) = query.map_err(|e| ApiError::field("limit", e.body_text()))?;
    let limit = match query.get("limit") {
        None => 50,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_HISTORY).contains(&n) => n,
            _ => {
                return Err(ApiError::field(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_HISTORY}"),
                ))
            }
        },
    };
    app.session(&id).await?;
    // Read the session's messages from the gateway's log up to the last one
    // the shim's reader has seen: the stream itself never ends.
    let last = app.store.progress(&id).map_or(0, |p| p.last_message);
    // A session deleted and created again has no history from before.
    let since_ms = app
        .store
        .settings(&id)
        .and_then(|s| s.recreated_ms)
        .unwrap_or(0);
    let mut recent: VecDeque<Value> = VecDeque::with_capacity(limit);
    if last > 0 {
        let mut stream = app
            .gateway
            .events(vec![id.clone()], vec![EventType::Message as i32], Some(0))
            .await?;
        let read = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(event) = stream.message().await? {
                let current = ms_of(event.timestamp.as_ref()) >= since_ms;
                if let (Some(Payload::Message(msg)), true) = (&event.payload, current) {
                    if recent.len() == limit {
                        recent.pop_front();
                    }
                    recent.push_back(message_json(msg));
                }
                if event.cursor >= last {
                    break;
                }
            }
            Ok::<(), tonic::Status>(())
        })
        .await;
        match read {
            Ok(result) => result?,
            Err(_) => {
                return Err(ApiError::Gateway(tonic::Status::deadline_exceeded(
                    "reading the message history took too long",
                )))
            }
        }
    }
    let messages: Vec<Value> = recent.into_iter().collect();
    Ok(Json(json!({
        "success": true,
        "sessionId": id,
        "count": messages.len(),
        "messages": messages,
    })))
}

async fn logout(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    app.session(&id).await?;
    app.gateway.disconnect(&id, true).await?;
    Ok(Json(
        json!({ "success": true, "message": "Session logged out" }),
    ))
}

async fn config_webhook(State(app): State<App>, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let url = body::webhook_url("webhookUrl", &body.string("webhookUrl")?)?;
    app.store
        .set_global_webhook(Some(url.clone()))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({ "success": true, "webhookUrl": url })))
}

fn hook_json(hook: Option<&SessionHook>) -> Value {
    hook.map_or(Value::Null, |h| json!({ "url": h.url, "events": h.events }))
}

async fn set_hook(
    State(app): State<App>,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let url = body::webhook_url("url", &body.string("url")?)?;
    let mut events = body.opt_strings("events")?.unwrap_or_default();
    if let Some(bad) = events.iter().find(|e| !HOOK_EVENTS.contains(&e.as_str())) {
        return Err(ApiError::field(
            "events",
            format!(
                "unknown event {bad:?} (expected {})",
                HOOK_EVENTS.join(", ")
            ),
        ));
    }
    if events.is_empty() {
        events.push("all".to_owned());
    }
    app.session(&id).await?;
    let hook = SessionHook { url, events };
    let saved = hook.clone();
    app.store
        .update_settings(&id, move |s| s.hook = Some(saved))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        json!({ "success": true, "sessionId": id, "webhook": hook_json(Some(&hook)) }),
    ))
}

async fn get_hook(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    app.session(&id).await?;
    let hook = app.store.settings(&id).and_then(|s| s.hook);
    Ok(Json(
        json!({ "success": true, "sessionId": id, "webhook": hook_json(hook.as_ref()) }),
    ))
}

async fn delete_hook(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    app.session(&id).await?;
    app.store
        .update_settings(&id, |s| s.hook = None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(
        json!({ "success": true, "sessionId": id, "message": "Webhook removed" }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_sent_through_the_api_is_in_the_history_as_from_me() {
        let msg = MessageEvent {
            id: "3EB0BB".into(),
            chat: "5219876543210@s.whatsapp.net".into(),
            sender: "15551234567:3@s.whatsapp.net".into(),
            sender_phone: "15551234567".into(),
            push_name: "Owner".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_705_314_660,
                nanos: 0,
            }),
            from_me: true,
            text: "Hola desde la API".into(),
            r#type: "text".into(),
            offline: false,
            error: String::new(),
            ..Default::default()
        };
        assert_eq!(
            message_json(&msg),
            json!({"id":"3EB0BB","chat":"5219876543210@c.us","from":"15551234567@c.us",
                "fromMe":true,"body":"Hola desde la API","type":"chat",
                "timestamp":1_705_314_660,
                "contact":{"name":"Owner","number":"15551234567"}})
        );
    }
}
