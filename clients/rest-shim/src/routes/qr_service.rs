//! Baileys "WhatsApp QR Service": `/init`, `/qr-code`, `/status`, `/send`,
//! `/disconnect`; no auth (it is meant for an internal network).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::routing::{get, post};
use axum::Json;
use serde_json::{json, Value};

use super::{qr_or_conflict, App, RouteSpec, Ty, F};
use crate::auth::Auth;
use crate::body::{self, JsonBody};
use crate::config::Family;
use crate::error::ApiError;
use crate::gateway::state_of;
use crate::proto::gateway::SessionState;
use crate::time::iso_of;

pub(crate) fn routes() -> Vec<RouteSpec> {
    let r = |m, p, s, h| RouteSpec::new(Family::QrService, Auth::None, m, p, s, h);
    vec![
        r(Method::POST, "/init", "Start a session", post(init))
            .body(&[
                F("sessionId", Ty::String, true),
                F("chatbotId", Ty::String, false),
            ])
            .response(&[
                F("success", Ty::Boolean, true),
                F("sessionId", Ty::String, true),
                F("status", Ty::String, true),
            ]),
        r(
            Method::GET,
            "/qr-code/{sessionId}",
            "QR code (PNG data URL)",
            get(qr),
        )
        .response(&[F("qrCode", Ty::String, true), F("status", Ty::String, true)]),
        r(
            Method::GET,
            "/status/{sessionId}",
            "Connection status",
            get(status),
        )
        .response(&[
            F("sessionId", Ty::String, true),
            F("status", Ty::String, true),
            F("lastConnectedAt", Ty::String, false),
        ]),
        r(Method::POST, "/send", "Send a text message", post(send))
            .body(&[
                F("sessionId", Ty::String, true),
                F("to", Ty::String, true),
                F("message", Ty::String, true),
            ])
            .response(&[
                F("success", Ty::Boolean, true),
                F("messageId", Ty::String, true),
            ]),
        r(
            Method::POST,
            "/disconnect",
            "Log the session out",
            post(disconnect),
        )
        .body(&[F("sessionId", Ty::String, true)])
        .response(&[
            F("success", Ty::Boolean, true),
            F("message", Ty::String, true),
        ]),
    ]
}

/// `status` values: disconnected, connecting, qr_ready, connected.
pub(crate) fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Connected => "connected",
        SessionState::Connecting => "connecting",
        SessionState::QrReady => "qr_ready",
        SessionState::Disconnected | SessionState::LoggedOut | SessionState::Unspecified => {
            "disconnected"
        }
    }
}

async fn init(State(app): State<App>, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &body.string("sessionId")?)?;
    let chatbot = body.opt_string("chatbotId")?;
    let mut metadata = HashMap::new();
    if let Some(c) = &chatbot {
        metadata.insert("chatbot_id".to_owned(), c.clone());
    }
    let session = app
        .create(&id, metadata, move |s| {
            if chatbot.is_some() {
                s.chatbot_id = chatbot;
            }
        })
        .await?;
    Ok(Json(json!({
        "success": true,
        "sessionId": id,
        "status": state_name(state_of(&session)),
    })))
}

async fn qr(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &id)?;
    let (_, png) = qr_or_conflict(&app, &id).await?;
    Ok(Json(json!({ "qrCode": png, "status": "qr_ready" })))
}

async fn status(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &id)?;
    let s = app.session(&id).await?;
    Ok(Json(json!({
        "sessionId": id,
        "status": state_name(state_of(&s)),
        "lastConnectedAt": iso_of(s.last_connected_at.as_ref()),
    })))
}

async fn send(
    State(app): State<App>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &body.string("sessionId")?)?;
    let to = body.recipient("to")?;
    let text = body.string("message")?;
    let sent = app.send_text(&id, &to, &text, &headers).await?;
    Ok(Json(
        json!({ "success": true, "messageId": sent.message_id }),
    ))
}

async fn disconnect(State(app): State<App>, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &body.string("sessionId")?)?;
    app.session(&id).await?;
    app.gateway.disconnect(&id, true).await?;
    Ok(Json(
        json!({ "success": true, "message": "Session disconnected" }),
    ))
}
