//! The gRPC client of the wagate gateway: the only way the shim reaches it.
//! Adds the shim's API key and a deadline to every call.

use std::collections::HashMap;
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::proto::gateway::gateway_client::GatewayClient;
use crate::proto::gateway::{
    events_request, DisconnectRequest, DownloadMediaRequest, Event, EventsRequest, InitRequest,
    ListSessionsRequest, Media, MediaKind, QrCodeRequest, QrCodeResponse, SendRequest,
    SendResponse, Session, SessionState, StatusRequest, UploadMediaChunk,
};

/// Bytes per UploadMedia chunk: well under gRPC's 4 MB message limit.
const UPLOAD_CHUNK: usize = 1024 * 1024;

/// A file downloaded with DownloadMedia.
#[derive(Debug)]
pub struct Downloaded {
    pub data: Vec<u8>,
    pub mimetype: String,
    pub file_name: String,
}

/// Why the gateway client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway address {0:?}: {1}")]
    Address(String, tonic::transport::Error),
    #[error("the gateway API key must be printable ASCII")]
    ApiKey,
}

#[derive(Clone)]
struct AddKey(Option<AsciiMetadataValue>);

impl tonic::service::Interceptor for AddKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(key) = &self.0 {
            request.metadata_mut().insert("x-api-key", key.clone());
        }
        Ok(request)
    }
}

/// A cheap-to-clone handle on the gateway.
#[derive(Clone)]
pub struct Gateway {
    client: GatewayClient<InterceptedService<Channel, AddKey>>,
    timeout: Duration,
}

impl Gateway {
    /// Connects lazily: the shim starts (and reports the gateway unreachable
    /// in its health answers) even while the gateway is down.
    pub fn new(addr: &str, api_key: Option<&str>, timeout: Duration) -> Result<Self, GatewayError> {
        let endpoint = Endpoint::from_shared(addr.to_owned())
            .map_err(|e| GatewayError::Address(addr.to_owned(), e))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let key = api_key
            .filter(|k| !k.is_empty())
            .map(|k| k.parse::<AsciiMetadataValue>())
            .transpose()
            .map_err(|_| GatewayError::ApiKey)?;
        let channel = endpoint.connect_lazy();
        Ok(Self {
            client: GatewayClient::with_interceptor(channel, AddKey(key)),
            timeout,
        })
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    pub async fn init(
        &self,
        session_id: &str,
        metadata: HashMap<String, String>,
    ) -> Result<Session, Status> {
        let req = self.request(InitRequest {
            session_id: session_id.to_owned(),
            metadata,
            phone_number: String::new(),
        });
        Ok(self.client.clone().init(req).await?.into_inner())
    }

    pub async fn qr(&self, session_id: &str) -> Result<QrCodeResponse, Status> {
        let req = self.request(QrCodeRequest {
            session_id: session_id.to_owned(),
        });
        Ok(self.client.clone().qr_code(req).await?.into_inner())
    }

    pub async fn status(&self, session_id: &str) -> Result<Session, Status> {
        let req = self.request(StatusRequest {
            session_id: session_id.to_owned(),
        });
        Ok(self.client.clone().status(req).await?.into_inner())
    }

    pub async fn send(
        &self,
        session_id: &str,
        to: &str,
        text: &str,
        idempotency_key: Option<&str>,
    ) -> Result<SendResponse, Status> {
        let req = self.request(SendRequest {
            session_id: session_id.to_owned(),
            to: to.to_owned(),
            text: text.to_owned(),
            idempotency_key: idempotency_key.unwrap_or_default().to_owned(),
            ..Default::default()
        });
        Ok(self.client.clone().send(req).await?.into_inner())
    }

    /// Sends `media` (its source set) to `to`.
    pub async fn send_media(
        &self,
        session_id: &str,
        to: &str,
        media: Media,
        idempotency_key: Option<&str>,
    ) -> Result<SendResponse, Status> {
        let req = self.request(SendRequest {
            session_id: session_id.to_owned(),
            to: to.to_owned(),
            media: Some(media),
            idempotency_key: idempotency_key.unwrap_or_default().to_owned(),
            ..Default::default()
        });
        Ok(self.client.clone().send(req).await?.into_inner())
    }

    /// Streams `data` to UploadMedia; the handle for a media Send.
    pub async fn upload_media(
        &self,
        session_id: &str,
        kind: MediaKind,
        mimetype: &str,
        file_name: &str,
        data: bytes::Bytes,
    ) -> Result<String, Status> {
        let mut chunks = Vec::with_capacity(data.len() / UPLOAD_CHUNK + 1);
        let mut start = 0;
        loop {
            let end = (start + UPLOAD_CHUNK).min(data.len());
            chunks.push(UploadMediaChunk {
                data: data.slice(start..end).to_vec(),
                ..Default::default()
            });
            start = end;
            if start >= data.len() {
                break;
            }
        }
        if let Some(first) = chunks.first_mut() {
            first.session_id = session_id.to_owned();
            first.kind = kind as i32;
            first.mimetype = mimetype.to_owned();
            first.file_name = file_name.to_owned();
        }
        let mut req = Request::new(tokio_stream::iter(chunks));
        req.set_timeout(self.timeout);
        Ok(self
            .client
            .clone()
            .upload_media(req)
            .await?
            .into_inner()
            .handle)
    }

    /// The decrypted bytes of a received message's media, refused past
    /// `max` bytes (checked as the chunks arrive).
    pub async fn download_media(
        &self,
        session_id: &str,
        message_id: &str,
        max: u64,
    ) -> Result<Downloaded, Status> {
        let req = self.request(DownloadMediaRequest {
            session_id: session_id.to_owned(),
            message_id: message_id.to_owned(),
        });
        let mut stream = self.client.clone().download_media(req).await?.into_inner();
        let mut out = Downloaded {
            data: Vec::new(),
            mimetype: String::new(),
            file_name: String::new(),
        };
        let mut first = true;
        while let Some(chunk) = stream.message().await? {
            if first {
                first = false;
                if chunk.file_length > max {
                    return Err(Status::resource_exhausted(format!(
                        "the file has {} bytes, more than the limit of {max}",
                        chunk.file_length
                    )));
                }
                out.mimetype = chunk.mimetype;
                out.file_name = chunk.file_name;
            }
            if (out.data.len() + chunk.data.len()) as u64 > max {
                return Err(Status::resource_exhausted(format!(
                    "the file is larger than the limit of {max} bytes"
                )));
            }
            out.data.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }

    pub async fn disconnect(&self, session_id: &str, logout: bool) -> Result<Session, Status> {
        let req = self.request(DisconnectRequest {
            session_id: session_id.to_owned(),
            logout,
        });
        Ok(self.client.clone().disconnect(req).await?.into_inner())
    }

    pub async fn list(&self) -> Result<Vec<Session>, Status> {
        let req = self.request(ListSessionsRequest {});
        Ok(self
            .client
            .clone()
            .list_sessions(req)
            .await?
            .into_inner()
            .sessions)
    }

    /// Events of `sessions` (all when empty) of `types` (all when empty),
    /// after `cursor` (`None`: from now on; `Some(0)`: from the beginning).
    /// No deadline: the stream follows the log live.
    pub async fn events(
        &self,
        sessions: Vec<String>,
        types: Vec<i32>,
        cursor: Option<u64>,
    ) -> Result<Streaming<Event>, Status> {
        let start = match cursor {
            None => events_request::Start::FromNow(true),
            Some(0) => events_request::Start::FromBeginning(true),
            Some(c) => events_request::Start::AfterCursor(c),
        };
        let req = Request::new(EventsRequest {
            session_ids: sessions,
            types,
            start: Some(start),
        });
        Ok(self.client.clone().events(req).await?.into_inner())
    }
}

/// The session's state as the enum (UNSPECIFIED for unknown numbers).
pub fn state_of(session: &Session) -> SessionState {
    SessionState::try_from(session.state).unwrap_or(SessionState::Unspecified)
}

/// Whether the gateway runs the session now (connecting, showing a QR, or
/// connected).
pub fn is_online(state: SessionState) -> bool {
    matches!(
        state,
        SessionState::Connecting | SessionState::QrReady | SessionState::Connected
    )
}
