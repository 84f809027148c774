//! `wagate.v1.Gateway`: the public RPCs, translated to runtime calls.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::proto::gateway::events_request::Start;
use crate::proto::gateway::gateway_server::Gateway;
use crate::proto::gateway::{
    DisconnectRequest, Event, EventType, EventsRequest, InitRequest, ListSessionsRequest,
    ListSessionsResponse, QrCodeRequest, QrCodeResponse, SendRequest, SendResponse, Session,
    StatusRequest,
};
use crate::runtime::{timestamp_ms, Manager, OutgoingText, SessionState, SessionStatus};
use crate::store::{EventFilter, SessionId};
use crate::wa::jid::{Jid, PhoneNumber};

use super::errors::invalid;
use super::qr_image;

pub struct GatewayService {
    manager: Arc<Manager>,
}

impl GatewayService {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self { manager }
    }
}

fn session_id(raw: &str) -> Result<SessionId, Status> {
    raw.parse::<SessionId>()
        .map_err(|e| invalid("session_id", e))
}

/// A recipient given as an E.164 number or a JID.
pub(crate) fn recipient(raw: &str) -> Result<Jid, Status> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(invalid("to", "recipient is empty"));
    }
    if raw.contains('@') {
        return raw
            .parse::<Jid>()
            .map_err(|e| invalid("to", format!("{raw:?} is not a valid JID: {e}")));
    }
    raw.parse::<PhoneNumber>()
        .map(|p| p.to_jid())
        .map_err(|e| invalid("to", format!("{raw:?} is not a valid phone number: {e}")))
}

fn to_api(status: SessionStatus) -> Session {
    Session {
        session_id: status.id.to_string(),
        state: status.state.to_api() as i32,
        jid: status.jid.unwrap_or_default(),
        phone: status.phone.unwrap_or_default(),
        push_name: status.push_name.unwrap_or_default(),
        platform: status.platform.unwrap_or_default(),
        created_at: Some(timestamp_ms(status.created_at_ms)),
        last_connected_at: status.last_connected_at_ms.map(timestamp_ms),
        reconnect_attempts: status.reconnect_attempts,
        last_disconnect_reason: status.last_disconnect_reason.unwrap_or_default(),
        metadata: status.metadata.into_iter().collect(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;

/// Records how long `event` took from commit to its subscriber.
fn delivered(event: &Event) {
    let written_ms = event
        .timestamp
        .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
    let lag_ms = (crate::runtime::now_ms() as i64 - written_ms).max(0);
    crate::metrics::global().event_delivered(std::time::Duration::from_millis(lag_ms as u64));
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn init(&self, request: Request<InitRequest>) -> Result<Response<Session>, Status> {
        let req = request.into_inner();
        let id = session_id(&req.session_id)?;
        if !req.phone_number.is_empty() {
            req.phone_number
                .parse::<PhoneNumber>()
                .map_err(|e| invalid("phone_number", e))?;
            return Err(Status::unimplemented(
                "pairing with a phone number (link code) is not available yet; omit phone_number and pair by QR",
            ));
        }
        for (k, v) in &req.metadata {
            if k.len() > 128 || v.len() > 1024 {
                return Err(invalid(
                    "metadata",
                    "keys are limited to 128 bytes and values to 1024 bytes",
                ));
            }
        }
        if req.metadata.len() > 64 {
            return Err(invalid("metadata", "at most 64 entries"));
        }
        let metadata: BTreeMap<String, String> = req.metadata.into_iter().collect();
        let status = self.manager.init(id, metadata).await?;
        Ok(Response::new(to_api(status)))
    }

    async fn qr_code(
        &self,
        request: Request<QrCodeRequest>,
    ) -> Result<Response<QrCodeResponse>, Status> {
        let id = session_id(&request.into_inner().session_id)?;
        let qr = self.manager.qr(&id)?;
        let png = qr_image::png_data_url(&qr.code).map_err(Status::internal)?;
        Ok(Response::new(QrCodeResponse {
            qr: qr.code,
            png_data_url: png,
            expires_at: Some(timestamp_ms(qr.expires_at_ms as i64)),
        }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<Session>, Status> {
        let id = session_id(&request.into_inner().session_id)?;
        Ok(Response::new(to_api(self.manager.status(&id)?)))
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let req = request.into_inner();
        let id = session_id(&req.session_id)?;
        let to = recipient(&req.to)?;
        if req.text.is_empty() {
            return Err(invalid("text", "message text is empty"));
        }
        if req.text.len() > 65_536 {
            return Err(invalid("text", "message text is longer than 65536 bytes"));
        }
        if req.idempotency_key.len() > 128 {
            return Err(invalid("idempotency_key", "longer than 128 characters"));
        }
        let status = self.manager.status(&id)?;
        if status.state != SessionState::Connected {
            return Err(Status::failed_precondition(format!(
                "session {id} is not connected (state {:?})",
                status.state
            )));
        }
        let idempotency_key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
        let sent = self
            .manager
            .send(
                &id,
                OutgoingText {
                    to,
                    text: req.text,
                    idempotency_key,
                },
            )
            .await?;
        Ok(Response::new(SendResponse {
            message_id: sent.message_id,
            timestamp: Some(timestamp_ms(sent.timestamp_s as i64 * 1000)),
        }))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<Session>, Status> {
        let req = request.into_inner();
        let id = session_id(&req.session_id)?;
        let status = self.manager.disconnect(&id, req.logout).await?;
        Ok(Response::new(to_api(status)))
    }

    async fn list_sessions(
        &self,
        _request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let sessions = self.manager.list().into_iter().map(to_api).collect();
        Ok(Response::new(ListSessionsResponse { sessions }))
    }

    type EventsStream = EventStream;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let req = request.into_inner();
        let mut sessions = Vec::with_capacity(req.session_ids.len());
        for raw in &req.session_ids {
            sessions.push(session_id(raw)?);
        }
        let mut kinds = Vec::with_capacity(req.types.len());
        for t in &req.types {
            match EventType::try_from(*t) {
                Ok(EventType::Unspecified) | Err(_) => {
                    return Err(invalid("types", format!("unknown event type {t}")))
                }
                Ok(kind) => kinds.push(kind as i32 as u8),
            }
        }
        let log = self.manager.events().clone();
        let start = match req.start {
            Some(Start::AfterCursor(c)) => {
                if c > log.last_cursor() {
                    return Err(invalid(
                        "after_cursor",
                        format!(
                            "cursor {c} is beyond the end of the log ({})",
                            log.last_cursor()
                        ),
                    ));
                }
                c
            }
            Some(Start::FromBeginning(true)) => 0,
            Some(Start::FromNow(_)) | Some(Start::FromBeginning(false)) | None => log.last_cursor(),
        };
        let filter = EventFilter { sessions, kinds };
        // Driven by the transport: the next event is read from the log only
        // when HTTP/2 flow control lets the previous one go, so a client that
        // stops reading holds at most the follower's page (see
        // `runtime::events`), never a queue that grows.
        let follower = log.follow(start, filter);
        let stream = futures_util::stream::unfold(
            Some((follower, self.manager.closing())),
            |state| async move {
                let (mut follower, mut closing) = state?;
                let next = tokio::select! {
                    biased;
                    _ = closing.wait_for(|closing| *closing) => Err(Status::unavailable(
                        "the gateway is shutting down; resume from your last cursor",
                    )),
                    next = follower.next() => {
                        next.map_err(|e| Status::unavailable(format!("event log: {e}")))
                    }
                };
                match next {
                    Ok(event) => {
                        delivered(&event);
                        Some((Ok(event), Some((follower, closing))))
                    }
                    // The error ends the stream: the client resumes from its cursor.
                    Err(status) => Some((Err(status), None)),
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients() {
        assert_eq!(
            recipient("+1 555 123 4567").expect("phone").to_string(),
            "15551234567@s.whatsapp.net"
        );
        assert_eq!(
            recipient("123-456@g.us").expect("group").to_string(),
            "123-456@g.us"
        );
        for bad in ["", "abc", "+12", "12@"] {
            let e = recipient(bad).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }
}
