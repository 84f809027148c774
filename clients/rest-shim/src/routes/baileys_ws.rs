//! Baileys-WS multi-session: `/sessions/:sessionId` CRUD, send, restart;
//! no auth. Its messages are Spanish, as documented.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method};
use axum::routing::{delete, get, post};
use axum::Json;
use serde_json::{json, Value};

use super::{baileys_qr, App, RouteSpec, Ty, F};
use crate::auth::Auth;
use crate::body::{self, JsonBody};
use crate::config::Family;
use crate::error::ApiError;
use crate::gateway::state_of;
use crate::proto::gateway::{Session, SessionState};
use crate::time::{iso, ms_of};

pub(crate) fn routes() -> Vec<RouteSpec> {
    let r = |m, p, s, h| RouteSpec::new(Family::BaileysWs, Auth::None, m, p, s, h);
    let session = &[
        F("success", Ty::Boolean, true),
        F("message", Ty::String, true),
        F("session", Ty::Object, true),
    ];
    vec![
        r(
            Method::POST,
            "/sessions/{sessionId}",
            "Create a session",
            post(create),
        )
        .response(session),
        r(
            Method::GET,
            "/sessions/{sessionId}/qr",
            "QR code, or the connected session",
            get(qr),
        )
        .response(&[
            F("status", Ty::String, true),
            F("message", Ty::String, true),
            F("connected", Ty::Boolean, true),
            F("qr_code", Ty::String, false),
            F("qr_image", Ty::String, false),
            F("session_id", Ty::String, false),
            F("session_info", Ty::Object, false),
        ]),
        r(
            Method::GET,
            "/sessions/{sessionId}/status",
            "Full session status",
            get(status),
        )
        .response(&[
            F("success", Ty::Boolean, true),
            F("session", Ty::Object, true),
        ]),
        r(Method::GET, "/sessions", "List sessions", get(list)).response(&[
            F("total", Ty::Integer, true),
            F("sessions", Ty::Array, true),
        ]),
        r(
            Method::POST,
            "/sessions/{sessionId}/send",
            "Send a text message",
            post(send),
        )
        .body(&[
            F("number", Ty::String, true),
            F("message", Ty::String, true),
        ])
        .response(&[
            F("success", Ty::Boolean, true),
            F("message", Ty::String, true),
            F("message_id", Ty::String, true),
            F("timestamp", Ty::String, true),
        ]),
        r(
            Method::POST,
            "/sessions/{sessionId}/restart",
            "Reconnect a session",
            post(restart),
        )
        .response(session),
        r(
            Method::DELETE,
            "/sessions/{sessionId}",
            "Log out and delete a session",
            delete(remove),
        )
        .response(&[
            F("success", Ty::Boolean, true),
            F("message", Ty::String, true),
        ]),
    ]
}

/// `status` of the Baileys-WS webhook connection events.
pub(crate) fn state_name(state: SessionState) -> &'static str {
    match state {
        SessionState::Connected => "connected",
        SessionState::Connecting => "connecting",
        SessionState::QrReady => "waiting_for_scan",
        SessionState::LoggedOut => "logged_out",
        SessionState::Disconnected | SessionState::Unspecified => "disconnected",
    }
}

/// The last activity: the session's last event the shim saw, else its last
/// connection, else its creation.
pub(crate) fn last_activity_ms(app: &App, s: &Session) -> i64 {
    let seen = app
        .store
        .progress(&s.session_id)
        .map_or(0, |p| p.last_activity_ms);
    seen.max(ms_of(s.last_connected_at.as_ref()))
        .max(ms_of(s.created_at.as_ref()))
}

async fn full_status(app: &App, s: &Session) -> Value {
    let (qr_code, qr_image) = app.qr_now(s).await.map(baileys_qr).unwrap_or_default();
    json!({
        "connected": state_of(s) == SessionState::Connected,
        "number": s.phone,
        "name": s.push_name,
        "qr_code": qr_code,
        "qr_image": qr_image,
        "last_disconnect_reason": s.last_disconnect_reason,
        "reconnect_attempts": s.reconnect_attempts,
        "created_at": iso(ms_of(s.created_at.as_ref())),
        "last_activity": iso(last_activity_ms(app, s)),
    })
}

fn path_id(id: &str) -> Result<String, ApiError> {
    body::session_id("sessionId", id)
}

async fn create(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let session = app.create(&id, HashMap::new(), |_| {}).await?;
    Ok(Json(json!({
        "success": true,
        "message": "Sesión creada correctamente",
        "session": { "id": id, "status": full_status(&app, &session).await },
    })))
}

async fn qr(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let s = app.session(&id).await?;
    if state_of(&s) == SessionState::Connected {
        return Ok(Json(json!({
            "status": "connected",
            "message": "WhatsApp ya está conectado",
            "connected": true,
            "session_info": {
                "id": id,
                "number": s.phone,
                "name": s.push_name,
                "last_activity": iso(last_activity_ms(&app, &s)),
            },
        })));
    }
    let (s, qr) = app.qr_waiting(s).await;
    match qr.map(baileys_qr) {
        Some((raw, png)) => Ok(Json(json!({
            "status": "waiting_for_scan",
            "message": "Escanea el código QR en WhatsApp",
            "qr_code": raw,
            "qr_image": png,
            "connected": false,
            "session_id": id,
        }))),
        None => Err(ApiError::Conflict(format!(
            "la sesión {id} no tiene código QR ahora (estado {}); reintenta en unos segundos",
            state_of(&s).as_str_name()
        ))),
    }
}

async fn status(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let s = app.session(&id).await?;
    Ok(Json(json!({
        "success": true,
        "session": { "id": id, "status": full_status(&app, &s).await },
    })))
}

async fn list(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let sessions = app.sessions().await?;
    let items: Vec<Value> = sessions
        .iter()
        .map(|s| {
            json!({
                "id": s.session_id,
                "status": {
                    "connected": state_of(s) == SessionState::Connected,
                    "number": s.phone,
                    "name": s.push_name,
                },
                "has_qr": state_of(s) == SessionState::QrReady,
            })
        })
        .collect();
    Ok(Json(json!({ "total": items.len(), "sessions": items })))
}

async fn send(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    let to = body.recipient("number")?;
    let text = body.string("message")?;
    let sent = app.send_text(&id, &to, &text, &headers).await?;
    Ok(Json(json!({
        "success": true,
        "message": "Mensaje enviado",
        "message_id": sent.message_id,
        "timestamp": iso(ms_of(sent.timestamp.as_ref())),
    })))
}

async fn restart(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    app.session(&id).await?;
    app.gateway.disconnect(&id, false).await?;
    let session = app.gateway.init(&id, HashMap::new()).await?;
    Ok(Json(json!({
        "success": true,
        "message": "Sesión reiniciada",
        "session": { "id": id, "status": full_status(&app, &session).await },
    })))
}

async fn remove(State(app): State<App>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = path_id(&id)?;
    app.delete(&id).await?;
    Ok(Json(
        json!({ "success": true, "message": "Sesión eliminada" }),
    ))
}
