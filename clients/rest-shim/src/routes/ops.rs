//! Health and statistics endpoints as each gateway documents them, and the
//! OpenAPI document. A health check fails (503) when the gateway cannot be
//! reached, so a probe sees the whole path.

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use serde_json::{json, Value};

use super::{App, Counts, RouteSpec, Ty, F};
use crate::auth::Auth;
use crate::config::Family;
use crate::gateway::state_of;
use crate::memory;
use crate::proto::gateway::{Session, SessionState};
use crate::time::{iso, now_ms};

pub(crate) fn routes() -> Vec<RouteSpec> {
    let health = |family, summary, handler, response| {
        RouteSpec::new(family, Auth::None, Method::GET, "/health", summary, handler)
            .response(response)
    };
    vec![
        health(
            Family::Venom,
            "Health: session counts by state, memory, uptime",
            get(venom_health),
            &[
                F("status", Ty::String, true),
                F("uptime", Ty::Integer, true),
                F("sessions", Ty::Object, true),
                F("memory", Ty::Object, true),
            ],
        ),
        health(
            Family::QrService,
            "Health: active sessions, uptime",
            get(qr_service_health),
            &[
                F("status", Ty::String, true),
                F("activeSessions", Ty::Integer, true),
                F("sessions", Ty::Object, true),
                F("uptime", Ty::Integer, true),
            ],
        ),
        health(
            Family::BaileysWs,
            "Health: sessions, memory usage, uptime",
            get(baileys_health),
            &[
                F("status", Ty::String, true),
                F("service", Ty::String, true),
                F("timestamp", Ty::String, true),
                F("total_sessions", Ty::Integer, true),
                F("connected_sessions", Ty::Integer, true),
                F("disconnected_sessions", Ty::Integer, true),
                F("max_sessions", Ty::Integer, true),
                F("sessions_with_qr", Ty::Integer, true),
                F("memory_usage", Ty::Object, true),
                F("uptime", Ty::Integer, true),
            ],
        ),
        RouteSpec::new(
            Family::BaileysWs,
            Auth::None,
            Method::GET,
            "/status",
            "Statistics: health plus every session",
            get(baileys_stats),
        )
        .response(&[
            F("status", Ty::String, true),
            F("total_sessions", Ty::Integer, true),
            F("sessions", Ty::Array, true),
        ]),
        RouteSpec::new(
            Family::Wwebjs,
            Auth::None,
            Method::GET,
            "/info",
            "Service information",
            get(wwebjs_info),
        )
        .response(&[
            F("success", Ty::Boolean, true),
            F("service", Ty::String, true),
            F("version", Ty::String, true),
            F("uptime", Ty::Integer, true),
            F("sessions", Ty::Object, true),
        ]),
        RouteSpec::new(
            Family::Wwebjs,
            Auth::HeaderOrQuery,
            Method::GET,
            "/api/health",
            "Health (needs the key)",
            get(wwebjs_health),
        )
        .response(&[
            F("status", Ty::String, true),
            F("timestamp", Ty::String, true),
            F("uptime", Ty::Integer, true),
            F("sessions", Ty::Object, true),
            F("memory", Ty::Object, true),
        ]),
    ]
}

fn uptime(app: &App) -> u64 {
    app.started.elapsed().as_secs()
}

/// The visible sessions, or a 503 answer saying the gateway is unreachable.
async fn sessions_or_503(app: &App) -> Result<Vec<Session>, Response> {
    app.sessions().await.map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "error",
                "error": format!("the wagate gateway cannot be reached: {e}"),
                "timestamp": iso(now_ms()),
                "uptime": uptime(app),
            })),
        )
            .into_response()
    })
}

async fn venom_health(State(app): State<App>) -> Response {
    let sessions = match sessions_or_503(&app).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mem = memory::current();
    Json(json!({
        "status": "ok",
        "timestamp": iso(now_ms()),
        "uptime": uptime(&app),
        "sessions": Counts::of(&sessions).json(),
        "maxSessions": app.config.max_sessions,
        "memory": { "rss": mem.rss, "heapUsed": mem.anon },
    }))
    .into_response()
}

async fn qr_service_health(State(app): State<App>) -> Response {
    let sessions = match sessions_or_503(&app).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let counts = Counts::of(&sessions);
    Json(json!({
        "status": "ok",
        "service": "whatsapp-qr-service",
        "timestamp": iso(now_ms()),
        "activeSessions": counts.connected,
        "sessions": counts.json(),
        "uptime": uptime(&app),
    }))
    .into_response()
}

fn baileys_body(app: &App, sessions: &[Session]) -> Value {
    let counts = Counts::of(sessions);
    let mem = memory::current();
    json!({
        "status": "ok",
        "service": "baileys-ws",
        "timestamp": iso(now_ms()),
        "total_sessions": counts.total,
        "connected_sessions": counts.connected,
        "disconnected_sessions": counts.total - counts.connected,
        "max_sessions": app.config.max_sessions,
        "sessions_with_qr": counts.qr_ready,
        // A native process has no JavaScript heap: heapTotal is the data
        // segment, heapUsed the resident anonymous memory, external the
        // resident file mappings; there are no ArrayBuffers.
        "memory_usage": {
            "rss": mem.rss,
            "heapTotal": mem.data,
            "heapUsed": mem.anon,
            "external": mem.file,
            "arrayBuffers": 0,
        },
        "uptime": uptime(app),
    })
}

async fn baileys_health(State(app): State<App>) -> Response {
    match sessions_or_503(&app).await {
        Ok(sessions) => Json(baileys_body(&app, &sessions)).into_response(),
        Err(r) => r,
    }
}

async fn baileys_stats(State(app): State<App>) -> Response {
    let sessions = match sessions_or_503(&app).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut body = baileys_body(&app, &sessions);
    let items: Vec<Value> = sessions
        .iter()
        .map(|s| {
            let state = state_of(s);
            json!({
                "id": s.session_id,
                "connected": state == SessionState::Connected,
                "state": super::baileys_ws::state_name(state),
                "number": s.phone,
                "name": s.push_name,
                "has_qr": state == SessionState::QrReady,
                "reconnect_attempts": s.reconnect_attempts,
                "last_disconnect_reason": s.last_disconnect_reason,
                "last_activity": iso(super::baileys_ws::last_activity_ms(&app, s)),
            })
        })
        .collect();
    if let Some(map) = body.as_object_mut() {
        map.insert("sessions".into(), Value::Array(items));
    }
    Json(body).into_response()
}

async fn wwebjs_info(State(app): State<App>) -> Response {
    let sessions = match sessions_or_503(&app).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    Json(json!({
        "success": true,
        "service": "wagate-rest",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime": uptime(&app),
        "sessions": Counts::of(&sessions).json(),
    }))
    .into_response()
}

async fn wwebjs_health(State(app): State<App>) -> Response {
    let sessions = match sessions_or_503(&app).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mem = memory::current();
    Json(json!({
        "status": "ok",
        "timestamp": iso(now_ms()),
        "uptime": uptime(&app),
        "sessions": Counts::of(&sessions).json(),
        "memory": { "rss": mem.rss, "heapUsed": mem.anon },
    }))
    .into_response()
}

/// `GET /openapi.json`.
pub(crate) async fn openapi(State(app): State<App>) -> Json<Value> {
    Json((*app.openapi).clone())
}
