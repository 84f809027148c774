//! The endpoints, one module per gateway family, each a list of route specs
//! (method, path, auth, documentation, handler) that `server` assembles,
//! resolving paths two families share by the dialect, and that `openapi`
//! describes. Also the session operations the families have in common.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, Method};
use axum::routing::MethodRouter;
use serde_json::Value;

use crate::auth::Auth;
use crate::config::{Config, Family};
use crate::error::ApiError;
use crate::gateway::{is_online, state_of, Gateway};
use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{EventType, SendResponse, Session, SessionState};
use crate::state::{SessionSettings, Store};
use crate::time::{ms_of, now_ms, timestamp};

pub(crate) mod baileys_ws;
pub(crate) mod ops;
pub(crate) mod qr_service;
pub(crate) mod venom;
pub(crate) mod wwebjs;

/// What every handler gets.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) gateway: Gateway,
    pub(crate) store: Arc<Store>,
    pub(crate) config: Arc<Config>,
    pub(crate) started: Instant,
    pub(crate) openapi: Arc<Value>,
    /// Turns true when the shim stops: long-lived answers (the console's
    /// event feed) end so the HTTP server can finish.
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
}

/// JSON type of a documented field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    String,
    Integer,
    Boolean,
    Object,
    Array,
    Binary,
}

/// A documented field: name, type, required.
#[derive(Clone, Copy, Debug)]
pub(crate) struct F(pub(crate) &'static str, pub(crate) Ty, pub(crate) bool);

#[derive(Clone, Copy, Debug)]
pub(crate) enum BodyDoc {
    None,
    Json(&'static [F]),
    /// multipart/form-data or JSON.
    Media(&'static [F]),
}

/// One endpoint.
pub(crate) struct RouteSpec {
    pub(crate) method: Method,
    /// axum and OpenAPI syntax alike: `/sessions/{sessionId}`.
    pub(crate) path: &'static str,
    pub(crate) family: Family,
    pub(crate) auth: Auth,
    pub(crate) summary: &'static str,
    pub(crate) body: BodyDoc,
    pub(crate) query: &'static [F],
    pub(crate) response: &'static [F],
    pub(crate) handler: MethodRouter<App>,
}

impl RouteSpec {
    pub(crate) fn new(
        family: Family,
        auth: Auth,
        method: Method,
        path: &'static str,
        summary: &'static str,
        handler: MethodRouter<App>,
    ) -> Self {
        Self {
            method,
            path,
            family,
            auth,
            summary,
            body: BodyDoc::None,
            query: &[],
            response: &[],
            handler,
        }
    }

    pub(crate) fn body(mut self, fields: &'static [F]) -> Self {
        self.body = BodyDoc::Json(fields);
        self
    }

    pub(crate) fn media(mut self, fields: &'static [F]) -> Self {
        self.body = BodyDoc::Media(fields);
        self
    }

    pub(crate) fn query(mut self, fields: &'static [F]) -> Self {
        self.query = fields;
        self
    }

    pub(crate) fn response(mut self, fields: &'static [F]) -> Self {
        self.response = fields;
        self
    }

    /// Served without an API key.
    pub(crate) fn open(mut self) -> Self {
        self.auth = Auth::None;
        self
    }
}

/// Every family's routes (clashes included; `server` picks).
pub(crate) fn all() -> Vec<RouteSpec> {
    let mut all = venom::routes();
    all.extend(wwebjs::routes());
    all.extend(qr_service::routes());
    all.extend(baileys_ws::routes());
    all.extend(ops::routes());
    all
}

/// Sessions per state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) total: usize,
    pub(crate) connecting: usize,
    pub(crate) qr_ready: usize,
    pub(crate) connected: usize,
    pub(crate) disconnected: usize,
    pub(crate) logged_out: usize,
}

impl Counts {
    pub(crate) fn of(sessions: &[Session]) -> Self {
        let mut c = Counts {
            total: sessions.len(),
            ..Counts::default()
        };
        for s in sessions {
            match state_of(s) {
                SessionState::Connecting => c.connecting += 1,
                SessionState::QrReady => c.qr_ready += 1,
                SessionState::Connected => c.connected += 1,
                SessionState::Disconnected | SessionState::Unspecified => c.disconnected += 1,
                SessionState::LoggedOut => c.logged_out += 1,
            }
        }
        c
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::json!({
            "total": self.total,
            "connecting": self.connecting,
            "qr_ready": self.qr_ready,
            "connected": self.connected,
            "disconnected": self.disconnected,
            "logged_out": self.logged_out,
        })
    }
}

impl App {
    /// A session the REST clients can see (not deleted through the shim).
    pub(crate) async fn session(&self, id: &str) -> Result<Session, ApiError> {
        if self.store.is_deleted(id) {
            return Err(ApiError::UnknownSession(id.to_owned()));
        }
        let session = self
            .gateway
            .status(id)
            .await
            .map_err(|s| not_found(id, s))?;
        Ok(self.present(session))
    }

    /// Every visible session.
    pub(crate) async fn sessions(&self) -> Result<Vec<Session>, ApiError> {
        let all = self.gateway.list().await?;
        Ok(all
            .into_iter()
            .filter(|s| !self.store.is_deleted(&s.session_id))
            .map(|s| self.present(s))
            .collect())
    }

    /// The session as its REST clients must see it. A session deleted and
    /// created again keeps its record in the gateway (a logged-out session
    /// resumes with a new pairing), so until it pairs again the gateway
    /// still reports the old phone, creation time and disconnect reason:
    /// those belong to the deleted session and are not shown.
    fn present(&self, mut s: Session) -> Session {
        let Some(recreated) = self
            .store
            .settings(&s.session_id)
            .and_then(|x| x.recreated_ms)
        else {
            return s;
        };
        if ms_of(s.created_at.as_ref()) >= recreated {
            return s;
        }
        s.created_at = Some(timestamp(recreated));
        if ms_of(s.last_connected_at.as_ref()) < recreated {
            s.jid.clear();
            s.phone.clear();
            s.push_name.clear();
            s.platform.clear();
            s.last_connected_at = None;
            s.reconnect_attempts = 0;
            if is_online(state_of(&s)) {
                s.last_disconnect_reason.clear();
            }
        }
        s
    }

    /// Creates (or resumes) a session: the settings are saved first, so the
    /// webhooks of its very first events already know where to go.
    pub(crate) async fn create(
        &self,
        id: &str,
        metadata: HashMap<String, String>,
        settings: impl FnOnce(&mut SessionSettings),
    ) -> Result<Session, ApiError> {
        let sessions = self.sessions().await?;
        let exists = sessions.iter().any(|s| s.session_id == id);
        let online = sessions
            .iter()
            .filter(|s| s.session_id != id && is_online(state_of(s)))
            .count();
        if !exists && online >= self.config.max_sessions {
            return Err(ApiError::SessionLimit(self.config.max_sessions));
        }
        let deleted = self.store.is_deleted(id);
        if deleted {
            self.store.forget_activity(id);
        }
        self.store
            .update_settings(id, |s| {
                if deleted {
                    // A new session under an old name: nothing of the
                    // deleted one's settings carries over.
                    *s = SessionSettings {
                        recreated_ms: Some(now_ms()),
                        ..SessionSettings::default()
                    };
                }
                settings(s);
                s.deleted = false;
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let session = self.gateway.init(id, metadata).await?;
        Ok(self.present(session))
    }

    pub(crate) async fn send_text(
        &self,
        id: &str,
        to: &str,
        text: &str,
        headers: &HeaderMap,
    ) -> Result<SendResponse, ApiError> {
        self.session(id).await?;
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty());
        self.gateway
            .send(id, to, text, key)
            .await
            .map_err(|s| not_found(id, s))
    }

    /// Logs the device out and hides the session until it is created again.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), ApiError> {
        self.session(id).await?;
        self.gateway
            .disconnect(id, true)
            .await
            .map_err(|s| not_found(id, s))?;
        self.store
            .update_settings(id, |s| s.deleted = true)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// The QR as `(raw, png data URL)`; for a session still on its way to
    /// its first QR (connecting), waits up to `--qr-wait-ms` for it, as
    /// clients ask right after creating a session. Returns the session as
    /// last read.
    pub(crate) async fn qr_waiting(&self, session: Session) -> (Session, Option<(String, String)>) {
        if let Some(qr) = self.qr_now(&session).await {
            return (session, Some(qr));
        }
        let waits = |s: &Session| {
            matches!(
                state_of(s),
                SessionState::Connecting | SessionState::QrReady
            )
        };
        let wait = self.config.qr_wait();
        if wait.is_zero() || !waits(&session) {
            return (session, None);
        }
        let deadline = tokio::time::Instant::now() + wait;
        let id = session.session_id.clone();
        let types = vec![EventType::Qr as i32, EventType::Connection as i32];
        let opened =
            tokio::time::timeout_at(deadline, self.gateway.events(vec![id.clone()], types, None))
                .await;
        let Ok(Ok(mut stream)) = opened else {
            return (session, None);
        };
        // Read again now that the stream is open: a QR shown in between
        // is in this answer, a later one comes on the stream.
        let mut session = match self.gateway.status(&id).await {
            Ok(s) => self.present(s),
            Err(_) => return (session, None),
        };
        loop {
            if let Some(qr) = self.qr_now(&session).await {
                return (session, Some(qr));
            }
            if !waits(&session) {
                return (session, None);
            }
            let event = match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(event))) => event,
                _ => return (session, None),
            };
            if let Some(Payload::Qr(qr)) = event.payload {
                // The event is committed just before the status shows the
                // QR; its own text is the QR to show.
                let png = crate::qr::png_data_url(&qr.qr).unwrap_or_default();
                return (session, Some((qr.qr, png)));
            }
            session = match self.gateway.status(&id).await {
                Ok(s) => self.present(s),
                Err(_) => return (session, None),
            };
        }
    }

    /// The QR as `(raw, png data URL)` when the session shows one now.
    pub(crate) async fn qr_now(&self, session: &Session) -> Option<(String, String)> {
        if state_of(session) != SessionState::QrReady {
            return None;
        }
        // The QR may have been scanned in between: then there is none.
        let qr = self.gateway.qr(&session.session_id).await.ok()?;
        Some((qr.qr, qr.png_data_url))
    }
}

/// A QR as Baileys shows it: `(2@…, PNG data URL of it)`.
pub(crate) fn baileys_qr((raw, png): (String, String)) -> (String, String) {
    let bare = crate::qr::baileys_form(&raw);
    if bare == raw {
        return (raw, png);
    }
    let png = crate::qr::png_data_url(bare).unwrap_or(png);
    (bare.to_owned(), png)
}

fn not_found(id: &str, status: tonic::Status) -> ApiError {
    if status.code() == tonic::Code::NotFound {
        ApiError::UnknownSession(id.to_owned())
    } else {
        ApiError::Gateway(status)
    }
}

/// The QR of a session, or 409 naming its state.
pub(crate) async fn qr_or_conflict(app: &App, id: &str) -> Result<(String, String), ApiError> {
    let session = app.session(id).await?;
    let (session, qr) = app.qr_waiting(session).await;
    if let Some(qr) = qr {
        return Ok(qr);
    }
    let state = state_of(&session);
    Err(ApiError::Conflict(match state {
        SessionState::Connected => {
            format!("session {id} is already connected; no QR code is needed")
        }
        _ => format!(
            "session {id} has no QR code now (state {}); wait for the QR webhook or retry",
            state.as_str_name()
        ),
    }))
}
