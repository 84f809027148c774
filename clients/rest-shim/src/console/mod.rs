//! The web console of the whatsapp-web.js APIs (their "panel de control",
//! served at the root as they document it): one static page, its script and
//! style embedded in the binary, that drives the `/api/...` routes, and a
//! Server-Sent Events feed of the gateway's `Events` stream that pushes
//! QR codes, state changes and messages to the browser as they happen.
//!
//! Server-Sent Events rather than Socket.IO: the seeds name no Socket.IO
//! events to be compatible with, and `EventSource` needs no client library.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::header;
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::auth::{self, ApiKey, Auth};
use crate::error::ApiError;
use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{Event, GroupChange, ReceiptType, SessionState};
use crate::routes::wwebjs::{message_json, state_name};
use crate::routes::App;
use crate::time::{iso, ms_of};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Only the page's own files, no inline code, images from data URLs (the
/// QR): a message text can never become markup or script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";
/// Events buffered per browser before the oldest reader is cut off (it
/// reconnects and reloads what it shows).
const FEED_BUFFER: usize = 256;
/// How soon a browser reconnects after the feed ended.
const RETRY: Duration = Duration::from_secs(2);

/// The console's routes: the page and its files are open (they hold no
/// data), the event feed needs the key like every `/api` route (`?apiKey=`,
/// as `EventSource` cannot send headers).
pub(crate) fn routes(key: &ApiKey) -> Router<App> {
    let feed = get(feed).route_layer(middleware::from_fn_with_state(
        (key.clone(), Auth::HeaderOrQuery),
        auth::check,
    ));
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console.js",
            get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/events", feed)
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/events[?sessionId=…]`: the gateway's events from now on, one
/// SSE event each (`qr`, `connection`, `message`, `receipt`, `group`) with
/// a JSON body. Ends when the gateway's stream ends or the shim stops; the
/// browser then reconnects by itself.
async fn feed(
    State(app): State<App>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let sessions: Vec<String> = query
        .get("sessionId")
        .filter(|s| !s.is_empty())
        .map(|s| vec![s.clone()])
        .unwrap_or_default();
    let mut events = app.gateway.events(sessions, Vec::new(), None).await?;
    let mut stop = app.stop.clone();
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(FEED_BUFFER);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = events.message() => next,
                _ = tx.closed() => return,
                _ = stop.wait_for(|s| *s) => return,
            };
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => return,
                Err(status) => {
                    tracing::warn!(
                        "console feed: the gateway's event stream failed: {}",
                        status.message()
                    );
                    let _ = tx
                        .send(Ok(SseEvent::default()
                            .event("error")
                            .data(json!({ "error": status.message() }).to_string())))
                        .await;
                    return;
                }
            };
            let Some((name, body)) = event_json(&event) else {
                continue;
            };
            let sse = SseEvent::default()
                .event(name)
                .id(event.cursor.to_string())
                .data(body.to_string());
            // A browser that does not keep up is dropped; it reconnects and
            // reloads its view, which is cheaper than an unbounded buffer.
            if tx.try_send(Ok(sse)).is_err() {
                return;
            }
        }
    });
    let stream = ReceiverStream::new(rx);
    let first = SseEvent::default()
        .retry(RETRY)
        .comment("wagate console feed");
    let stream =
        tokio_stream::StreamExt::merge(tokio_stream::once(Ok::<_, Infallible>(first)), stream);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The SSE event name and JSON body of a gateway event (`None` for payloads
/// the console does not show).
pub(crate) fn event_json(event: &Event) -> Option<(&'static str, Value)> {
    let at = iso(ms_of(event.timestamp.as_ref()));
    let id = &event.session_id;
    let (name, mut body) = match event.payload.as_ref()? {
        Payload::Qr(qr) => (
            "qr",
            json!({
                "qr": qr.qr,
                // Drawn here so the page needs no QR library.
                "image": crate::qr::png_data_url(&qr.qr).unwrap_or_default(),
            }),
        ),
        Payload::Connection(c) => {
            let state = SessionState::try_from(c.state).unwrap_or(SessionState::Unspecified);
            (
                "connection",
                json!({
                    "state": state.as_str_name(),
                    "status": state_name(state),
                    "reason": c.reason,
                    "jid": c.jid,
                }),
            )
        }
        Payload::Message(m) => ("message", message_json(m)),
        Payload::Receipt(r) => (
            "receipt",
            json!({
                "ids": r.message_ids,
                "type": ReceiptType::try_from(r.r#type)
                    .unwrap_or(ReceiptType::Unspecified)
                    .as_str_name(),
                "chat": r.chat,
            }),
        ),
        Payload::LinkCode(c) => ("link_code", json!({ "code": c.code })),
        Payload::ChatState(_)
        | Payload::Presence(_)
        | Payload::History(_)
        | Payload::Contact(_)
        | Payload::ChatSettings(_) => return None,
        Payload::Group(g) => (
            "group",
            json!({
                "group": g.group,
                "change": GroupChange::try_from(g.change)
                    .unwrap_or(GroupChange::Unspecified)
                    .as_str_name(),
            }),
        ),
    };
    if let Some(obj) = body.as_object_mut() {
        obj.insert("sessionId".into(), json!(id));
        obj.insert("cursor".into(), json!(event.cursor));
        obj.insert("at".into(), json!(at));
    }
    Some((name, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gateway::{ConnectionEvent, QrEvent};

    #[test]
    fn events_become_named_json_bodies() {
        let qr = Event {
            cursor: 7,
            session_id: "s1".into(),
            seq: 1,
            timestamp: None,
            payload: Some(Payload::Qr(QrEvent {
                qr: "2@abc,def,ghi,jkl".into(),
                expires_at: None,
            })),
        };
        let (name, body) = event_json(&qr).expect("shown");
        assert_eq!(name, "qr");
        assert_eq!(body["sessionId"], "s1");
        assert_eq!(body["cursor"], 7);
        assert!(body["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("data:image/png;base64,")));
        let up = Event {
            payload: Some(Payload::Connection(ConnectionEvent {
                state: SessionState::Connected as i32,
                reason: String::new(),
                jid: "15551234567:3@s.whatsapp.net".into(),
            })),
            ..qr.clone()
        };
        let (name, body) = event_json(&up).expect("shown");
        assert_eq!(
            (name, &body["state"], &body["status"]),
            ("connection", &json!("CONNECTED"), &json!("ready"))
        );
        assert!(event_json(&Event {
            payload: None,
            ..qr
        })
        .is_none());
    }
}
