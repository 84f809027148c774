//! `wagate.v1.Gateway`: the public RPCs, translated to runtime calls.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::proto::gateway::events_request::Start;
use crate::proto::gateway::gateway_server::Gateway;
use crate::proto::gateway::{
    CreateGroupRequest, DisconnectRequest, DownloadMediaRequest, Event, EventType, EventsRequest,
    Group, GroupInviteLinkRequest, GroupInviteLinkResponse, GroupRequest, InitRequest,
    JoinGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    ListSessionsRequest, ListSessionsResponse, MarkReadRequest, MarkReadResponse, MediaHandle,
    QrCodeRequest, QrCodeResponse, SendChatStateRequest, SendChatStateResponse, SendRequest,
    SendResponse, Session, SetGroupSubjectRequest, SetGroupSubjectResponse, SetPresenceRequest,
    SetPresenceResponse, StatusRequest, SubscribePresenceRequest, SubscribePresenceResponse,
    UpdateParticipantsRequest, UpdateParticipantsResponse, UploadMediaChunk,
};
use crate::runtime::{Manager, OutgoingText, PairingCode};
use crate::store::{EventFilter, SessionId};
use crate::wa::conn::Pairing;
use crate::wa::jid::{Jid, PhoneNumber};

use super::compose;
use super::convert;
use super::errors::{invalid, quote};
use super::forward::{self, Peers, Route};
use super::groups;
use super::media;
use super::presence;
use super::qr_image;

pub struct GatewayService {
    manager: Arc<Manager>,
    peers: Peers,
}

impl GatewayService {
    pub fn new(manager: Arc<Manager>) -> Self {
        Self {
            manager,
            peers: Peers::default(),
        }
    }
}

/// Answers the call at the gateway serving its session when that is another one (see
/// `forward`); otherwise the handler goes on here.
macro_rules! served_elsewhere {
    ($self:ident, $request:ident, $method:ident) => {
        if let Route::Peer(mut peer) = $self
            .peers
            .route(
                &$self.manager,
                &$request.get_ref().session_id,
                $request.metadata(),
            )
            .await?
        {
            return peer.$method(forward::forwarded($request)).await;
        }
    };
}

pub(crate) fn session_id(raw: &str) -> Result<SessionId, Status> {
    raw.parse::<SessionId>()
        .map_err(|e| invalid("session_id", e))
}

/// Longest recipient accepted: an E.164 number with punctuation, or a JID
/// (group and LID users included), is far shorter.
const MAX_RECIPIENT: usize = 64;

/// A recipient given as an E.164 number or a JID.
pub(crate) fn recipient(raw: &str) -> Result<Jid, Status> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(invalid("to", "recipient is empty"));
    }
    if raw.len() > MAX_RECIPIENT {
        return Err(invalid(
            "to",
            format!(
                "{} is {} bytes long; a phone number or JID has at most {MAX_RECIPIENT}",
                quote(raw),
                raw.len()
            ),
        ));
    }
    // Both errors name the (bounded) input themselves.
    if raw.contains('@') {
        return raw.parse::<Jid>().map_err(|e| invalid("to", e));
    }
    raw.parse::<PhoneNumber>()
        .map(|p| p.to_jid())
        .map_err(|e| invalid("to", e))
}

/// A phone number for link-code pairing.
fn phone_number(raw: &str) -> Result<PhoneNumber, Status> {
    if raw.len() > MAX_RECIPIENT {
        return Err(invalid(
            "phone_number",
            format!(
                "{} is {} bytes long; not a phone number",
                quote(raw),
                raw.len()
            ),
        ));
    }
    raw.parse::<PhoneNumber>()
        .map_err(|e| invalid("phone_number", e))
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
        served_elsewhere!(self, request, init);
        let req = request.into_inner();
        let id = session_id(&req.session_id)?;
        let pairing = if req.phone_number.is_empty() {
            Pairing::Qr
        } else {
            Pairing::LinkCode(phone_number(&req.phone_number)?)
        };
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
        let status = self.manager.init(id, metadata, pairing).await?;
        Ok(Response::new(convert::session(status)))
    }

    async fn qr_code(
        &self,
        request: Request<QrCodeRequest>,
    ) -> Result<Response<QrCodeResponse>, Status> {
        served_elsewhere!(self, request, qr_code);
        let id = session_id(&request.into_inner().session_id)?;
        match self.manager.qr(&id).await? {
            PairingCode::Qr(qr) => {
                let png = qr_image::png_data_url(&qr.code).map_err(Status::internal)?;
                Ok(Response::new(convert::qr_code(qr, png)))
            }
            PairingCode::LinkCode(code) => Ok(Response::new(convert::link_code(code))),
        }
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<Session>, Status> {
        served_elsewhere!(self, request, status);
        let id = session_id(&request.into_inner().session_id)?;
        Ok(Response::new(convert::session(self.manager.status(&id)?)))
    }

    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        served_elsewhere!(self, request, send);
        let mut req = request.into_inner();
        let id = session_id(&req.session_id)?;
        let to = recipient(&req.to)?;
        if req.idempotency_key.len() > 128 {
            return Err(invalid("idempotency_key", "longer than 128 characters"));
        }
        if let Some(m) = req.media.take() {
            if compose::has_extras(&req) {
                return Err(invalid(
                    "media",
                    "a media message is sent alone: no reply_to, mentions or action",
                ));
            }
            let idempotency_key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
            let outgoing = media::outgoing(to, &req.text, m, idempotency_key)?;
            let sent = self.manager.send_media(&id, outgoing).await?;
            return Ok(Response::new(convert::sent(sent)));
        }
        let content = compose::compose(&mut req, &to)?;
        let idempotency_key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
        let sent = self
            .manager
            .send(
                &id,
                OutgoingText {
                    to,
                    content,
                    idempotency_key,
                },
            )
            .await?;
        Ok(Response::new(convert::sent(sent)))
    }

    async fn disconnect(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<Session>, Status> {
        served_elsewhere!(self, request, disconnect);
        let req = request.into_inner();
        let id = session_id(&req.session_id)?;
        let status = self.manager.disconnect(&id, req.logout).await?;
        Ok(Response::new(convert::session(status)))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        // Gateways sharing a store: every session, wherever it is served (a forwarded call
        // asks for this gateway's own).
        if self.manager.is_shared() && !request.metadata().contains_key(forward::FORWARDED) {
            let sessions = self
                .peers
                .list_everywhere(&self.manager, request.metadata())
                .await?;
            return Ok(Response::new(ListSessionsResponse { sessions }));
        }
        let sessions = self
            .manager
            .list()
            .into_iter()
            .map(convert::session)
            .collect();
        Ok(Response::new(ListSessionsResponse { sessions }))
    }

    async fn upload_media(
        &self,
        request: Request<tonic::Streaming<UploadMediaChunk>>,
    ) -> Result<Response<MediaHandle>, Status> {
        let (metadata, _, mut chunks) = request.into_parts();
        let first = chunks
            .message()
            .await?
            .ok_or_else(|| invalid("chunks", "the upload is empty"))?;
        if let Route::Peer(peer) = self
            .peers
            .route(&self.manager, &first.session_id, &metadata)
            .await?
        {
            return Peers::upload_elsewhere(peer, metadata, first, chunks).await;
        }
        let handle = media::upload(&self.manager, first, chunks).await?;
        Ok(Response::new(handle))
    }

    type DownloadMediaStream = media::ChunkStream;

    async fn download_media(
        &self,
        request: Request<DownloadMediaRequest>,
    ) -> Result<Response<Self::DownloadMediaStream>, Status> {
        if let Route::Peer(mut peer) = self
            .peers
            .route(
                &self.manager,
                &request.get_ref().session_id,
                request.metadata(),
            )
            .await?
        {
            let stream = peer
                .download_media(forward::forwarded(request))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let stream = media::download(&self.manager, request.into_inner()).await?;
        Ok(Response::new(stream))
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

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        served_elsewhere!(self, request, list_groups);
        groups::list(&self.manager, request.into_inner()).await
    }

    async fn group_info(&self, request: Request<GroupRequest>) -> Result<Response<Group>, Status> {
        served_elsewhere!(self, request, group_info);
        groups::info(&self.manager, request.into_inner()).await
    }

    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        served_elsewhere!(self, request, create_group);
        groups::create(&self.manager, request.into_inner()).await
    }

    async fn update_participants(
        &self,
        request: Request<UpdateParticipantsRequest>,
    ) -> Result<Response<UpdateParticipantsResponse>, Status> {
        served_elsewhere!(self, request, update_participants);
        groups::update_participants(&self.manager, request.into_inner()).await
    }

    async fn leave_group(
        &self,
        request: Request<GroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        served_elsewhere!(self, request, leave_group);
        groups::leave(&self.manager, request.into_inner()).await
    }

    async fn set_group_subject(
        &self,
        request: Request<SetGroupSubjectRequest>,
    ) -> Result<Response<SetGroupSubjectResponse>, Status> {
        served_elsewhere!(self, request, set_group_subject);
        groups::set_subject(&self.manager, request.into_inner()).await
    }

    async fn group_invite_link(
        &self,
        request: Request<GroupInviteLinkRequest>,
    ) -> Result<Response<GroupInviteLinkResponse>, Status> {
        served_elsewhere!(self, request, group_invite_link);
        groups::invite_link(&self.manager, request.into_inner()).await
    }

    async fn join_group(
        &self,
        request: Request<JoinGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        served_elsewhere!(self, request, join_group);
        groups::join(&self.manager, request.into_inner()).await
    }

    async fn mark_read(
        &self,
        request: Request<MarkReadRequest>,
    ) -> Result<Response<MarkReadResponse>, Status> {
        served_elsewhere!(self, request, mark_read);
        presence::mark_read(&self.manager, request.into_inner()).await
    }

    async fn send_chat_state(
        &self,
        request: Request<SendChatStateRequest>,
    ) -> Result<Response<SendChatStateResponse>, Status> {
        served_elsewhere!(self, request, send_chat_state);
        presence::send_chat_state(&self.manager, request.into_inner()).await
    }

    async fn set_presence(
        &self,
        request: Request<SetPresenceRequest>,
    ) -> Result<Response<SetPresenceResponse>, Status> {
        served_elsewhere!(self, request, set_presence);
        presence::set_presence(&self.manager, request.into_inner()).await
    }

    async fn subscribe_presence(
        &self,
        request: Request<SubscribePresenceRequest>,
    ) -> Result<Response<SubscribePresenceResponse>, Status> {
        served_elsewhere!(self, request, subscribe_presence);
        presence::subscribe_presence(&self.manager, request.into_inner()).await
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
        // A huge input is refused without being echoed whole.
        for huge in [
            "1".repeat(1 << 20),
            format!("{}@s.whatsapp.net", "1".repeat(1 << 20)),
        ] {
            let e = recipient(&huge).expect_err("too long");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().len() < 200, "{}", e.message());
            assert!(e.message().contains('…'), "{}", e.message());
        }
        let e = phone_number(&"5".repeat(1 << 20)).expect_err("too long");
        assert!(e.message().len() < 200, "{}", e.message());
    }
}
