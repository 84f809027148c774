//! Venom multi-tenant service: `/sessions`, `/messages`, `X-API-Key` on
//! every route except `/health`.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::routing::{delete, get, post};
use axum::Json;
use serde_json::{json, Value};

use super::{qr_or_conflict, App, RouteSpec, Ty, F};
use crate::auth::Auth;
use crate::body::{self, JsonBody};
use crate::config::Family;
use crate::error::ApiError;
use crate::gateway::{is_online, state_of};
use crate::proto::gateway::{Session, SessionState};
use crate::time::{ms_of, secs_of};

pub(crate) fn routes() -> Vec<RouteSpec> {
    let r = |m, p, s, h| RouteSpec::new(Family::Venom, Auth::Header, m, p, s, h);
    vec![
        r(Method::POST, "/sessions", "Create a session", post(create))
            .body(&[
                F("sessionId", Ty::String, true),
                F("userId", Ty::String, false),
                F("webhookUrl", Ty::String, false),
                F("phoneNumber", Ty::String, false),
            ])
            .response(&[
                F("sessionId", Ty::String, true),
                F("status", Ty::String, true),
                F("userId", Ty::String, false),
            ]),
        r(
            Method::GET,
            "/sessions/{sessionId}/qr",
            "QR code (PNG data URL)",
            get(qr),
        )
        .response(&[F("qr", Ty::String, true), F("base64", Ty::String, true)]),
        r(
            Method::GET,
            "/sessions/{sessionId}/status",
            "Session status",
            get(status),
        )
        .response(&[
            F("status", Ty::String, true),
            F("connectionState", Ty::String, true),
            F("hostDevice", Ty::Object, false),
            F("qrAvailable", Ty::Boolean, true),
            F("inMemory", Ty::Boolean, true),
        ]),
        r(Method::POST, "/messages", "Send a text message", post(send))
            .body(&[
                F("sessionId", Ty::String, true),
                F("to", Ty::String, true),
                F("message", Ty::String, true),
                F("type", Ty::String, false),
            ])
            .response(&[
                F("success", Ty::Boolean, true),
                F("messageId", Ty::String, true),
                F("timestamp", Ty::Integer, true),
            ]),
        r(Method::GET, "/sessions", "List sessions", get(list)).response(&[
            F("count", Ty::Integer, true),
            F("sessions", Ty::Array, true),
        ]),
        r(
            Method::DELETE,
            "/sessions/{sessionId}",
            "Log out and delete a session",
            delete(remove),
        )
        .response(&[F("success", Ty::Boolean, true)]),
    ]
}

/// `status` values.
pub(crate) fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Connected => "connected",
        SessionState::Connecting => "connecting",
        SessionState::QrReady => "qr_ready",
        SessionState::LoggedOut => "logged_out",
        SessionState::Disconnected | SessionState::Unspecified => "disconnected",
    }
}

async fn create(State(app): State<App>, body: JsonBody) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &body.string("sessionId")?)?;
    let user_id = body.opt_string("userId")?;
    let webhook = body
        .opt_string("webhookUrl")?
        .map(|u| body::webhook_url("webhookUrl", &u))
        .transpose()?;
    let phone = body.opt_string("phoneNumber")?;
    if let Some(p) = &phone {
        body::recipient("phoneNumber", p)?;
    }
    let mut metadata = HashMap::new();
    if let Some(u) = &user_id {
        metadata.insert("user_id".to_owned(), u.clone());
    }
    if let Some(p) = &phone {
        metadata.insert("phone_number".to_owned(), p.clone());
    }
    let (u, w, p) = (user_id.clone(), webhook.clone(), phone.clone());
    let session = app
        .create(&id, metadata, move |s| {
            // Creating again changes what is given and keeps the rest.
            if u.is_some() {
                s.user_id = u;
            }
            if w.is_some() {
                s.webhook_url = w;
            }
            if p.is_some() {
                s.phone_number = p;
            }
        })
        .await?;
    Ok(Json(json!({
        "sessionId": id,
        "status": state_name(state_of(&session)),
        "userId": user_id,
    })))
}

async fn qr(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &id)?;
    let (_, png) = qr_or_conflict(&app, &id).await?;
    // Both fields carry the bare base64 PNG, as the service documents it.
    let b64 = crate::qr::bare_base64(&png);
    Ok(Json(json!({ "qr": b64, "base64": b64 })))
}

async fn status(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &id)?;
    let s = app.session(&id).await?;
    let state = state_of(&s);
    let host = if s.phone.is_empty() {
        Value::Null
    } else {
        json!({ "phone": s.phone, "platform": s.platform })
    };
    Ok(Json(json!({
        "status": state_name(state),
        "connectionState": state.as_str_name(),
        "hostDevice": host,
        "qrAvailable": state == SessionState::QrReady,
        "inMemory": is_online(state),
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
    let kind = body
        .opt_string("type")?
        .unwrap_or_else(|| "text".to_owned());
    if kind != "text" {
        app.session(&id).await?;
        return Err(ApiError::NotSupported(format!(
            "type: {kind:?} messages are not supported yet; only \"text\" can be sent"
        )));
    }
    let sent = app.send_text(&id, &to, &text, &headers).await?;
    Ok(Json(json!({
        "success": true,
        "messageId": sent.message_id,
        "timestamp": secs_of(sent.timestamp.as_ref()),
    })))
}

fn summary(app: &App, s: &Session) -> Value {
    let settings = app.store.settings(&s.session_id).unwrap_or_default();
    let user_id = settings
        .user_id
        .or_else(|| s.metadata.get("user_id").cloned());
    json!({
        "sessionId": s.session_id,
        "status": state_name(state_of(s)),
        "userId": user_id,
        "createdAt": ms_of(s.created_at.as_ref()),
        "webhookUrl": settings.webhook_url,
    })
}

async fn list(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let sessions = app.sessions().await?;
    let items: Vec<Value> = sessions.iter().map(|s| summary(&app, s)).collect();
    Ok(Json(json!({ "count": items.len(), "sessions": items })))
}

async fn remove(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = body::session_id("sessionId", &id)?;
    app.delete(&id).await?;
    Ok(Json(json!({ "success": true })))
}
