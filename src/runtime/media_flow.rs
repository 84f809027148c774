//! The media flows of a session, run by the caller's task (never the
//! session actor's): the actor is asked only quick things (media hosts,
//! the idempotency record, a received message's media record) and sends
//! the built message like a text, so a slow upload or download never holds
//! up the session.
//!
//! Sending: the idempotency record is checked first (an acknowledged
//! retry is answered from it and nothing is uploaded again), then the
//! source becomes an encrypted body, goes to a media host, and the media
//! message goes out through the engine with a fingerprint of what the
//! caller asked for (the message itself differs at each attempt: fresh
//! media key).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::store::SessionId;
use crate::wa::crypto::sha256;
use crate::wa::jid::Jid;
use crate::wa::media::{
    decrypt_retry_notification, MediaConn, MediaInfo, MediaKey, MediaRetryOutcome, MediaType,
    RetryResult, RetryTarget, UploadAnswer,
};
use crate::wa::messaging::{IdempotencyState, SendError, SendRequest, Sent};

use super::error::RuntimeError;
use super::manager::{ready_to_send, Manager};
use super::media::{stream_plaintext, BodyWriter, Download, EncryptedBody, MediaFailure};
use super::messaging::MediaCommand;
use super::session::{Command, SessionHandle};

/// Longest wait for a session actor's answer to a media request.
const ACTOR_WITHIN: Duration = Duration::from_secs(20);
/// Plaintext chunks buffered between the decryption and the caller.
const DOWNLOAD_QUEUE: usize = 4;

/// What a media message is, besides its bytes.
#[derive(Clone, Debug)]
pub struct MediaSpec {
    pub kind: MediaType,
    pub mimetype: String,
    pub caption: Option<String>,
    pub file_name: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub seconds: Option<u32>,
}

/// Where a media message's bytes come from.
#[derive(Clone)]
pub enum MediaSource {
    /// A handle from [`Manager::upload_media`].
    Handle(String),
    /// Fetched by the gateway.
    Url(String),
    /// Given inline.
    Data(Vec<u8>),
}

impl std::fmt::Debug for MediaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MediaSource::Handle(_) => f.write_str("Handle(..)"),
            MediaSource::Url(_) => f.write_str("Url(..)"),
            MediaSource::Data(d) => write!(f, "Data({} bytes)", d.len()),
        }
    }
}

/// A media message to send.
#[derive(Clone, Debug)]
pub struct OutgoingMedia {
    pub to: Jid,
    pub spec: MediaSpec,
    pub source: MediaSource,
    pub idempotency_key: Option<String>,
}

/// An upload in progress: bytes are encrypted as they arrive. Dropping it
/// removes what was written.
pub struct MediaUpload {
    session: SessionId,
    writer: BodyWriter,
}

/// A finished upload.
#[derive(Clone, Debug)]
pub struct UploadedMedia {
    pub handle: String,
    pub file_length: u64,
    pub file_sha256: [u8; 32],
    pub expires_in: Duration,
}

/// A verified download, streaming out.
pub struct MediaDownload {
    pub mimetype: String,
    pub file_name: Option<String>,
    pub file_length: u64,
    pub chunks: mpsc::Receiver<Result<Bytes, MediaFailure>>,
}

impl MediaUpload {
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        Ok(self.writer.write(bytes).await?)
    }
}

impl Manager {
    /// Starts an upload for session `id`; [`Manager::finish_upload`] turns
    /// it into a handle for `Send`.
    pub async fn start_upload(
        &self,
        id: &SessionId,
        kind: MediaType,
    ) -> Result<MediaUpload, RuntimeError> {
        self.open_handle(id)?;
        let media = &self.shared.media;
        let writer = BodyWriter::new(&media.settings.dir, kind, media.settings.max_bytes).await?;
        Ok(MediaUpload {
            session: id.clone(),
            writer,
        })
    }

    pub async fn finish_upload(
        &self,
        upload: MediaUpload,
        mimetype: String,
        file_name: Option<String>,
    ) -> Result<UploadedMedia, RuntimeError> {
        let body = upload.writer.finish().await?;
        let file_length = body.sums.file_length;
        let file_sha256 = body.sums.file_sha256;
        let media = &self.shared.media;
        let (handle, _) = media.keep(
            upload.session.as_str().to_owned(),
            body,
            mimetype,
            file_name,
        )?;
        Ok(UploadedMedia {
            handle,
            file_length,
            file_sha256,
            expires_in: media.settings.handle_ttl,
        })
    }

    /// Sends a media message and waits for the server's ack.
    pub async fn send_media(
        &self,
        id: &SessionId,
        request: OutgoingMedia,
    ) -> Result<Sent, RuntimeError> {
        let handle = self.open_handle(id)?;
        ready_to_send(&handle.status.borrow())?;
        let media = &self.shared.media;
        let mut spec = request.spec;
        let uploaded = match &request.source {
            MediaSource::Handle(h) => {
                let (body, mimetype, file_name) = media.handle(id.as_str(), h)?;
                if body.ty != spec.kind && !compatible(body.ty, spec.kind) {
                    return Err(MediaFailure::Invalid(format!(
                        "the handle was uploaded as {:?}, not {:?}",
                        body.ty, spec.kind
                    ))
                    .into());
                }
                if spec.mimetype.is_empty() {
                    spec.mimetype = mimetype;
                }
                if spec.file_name.is_none() {
                    spec.file_name = file_name;
                }
                Some(body)
            }
            MediaSource::Url(_) | MediaSource::Data(_) => None,
        };
        if spec.mimetype.is_empty() {
            return Err(MediaFailure::Invalid("media.mimetype: required".into()).into());
        }
        let fingerprint = fingerprint(&request.to, &spec, &request.source, uploaded.as_deref());
        let mut pending = false;
        if let Some(key) = &request.idempotency_key {
            let state = self
                .ask(&handle, |reply| MediaCommand::Idempotency {
                    key: key.clone(),
                    fingerprint: fingerprint.clone(),
                    to: request.to.clone(),
                    reply,
                })
                .await?;
            match state {
                IdempotencyState::Sent(sent) => return Ok(sent),
                IdempotencyState::Pending => pending = true,
                IdempotencyState::Unused => {}
            }
        }
        let message = if pending {
            // Encrypted before: the engine writes the stored stanza again,
            // whatever message comes with it; nothing is uploaded.
            crate::proto::wa::Message::default()
        } else {
            let body = match (uploaded, &request.source) {
                (Some(body), _) => body,
                (None, MediaSource::Url(url)) => {
                    std::sync::Arc::new(media.fetch(url, spec.kind).await?)
                }
                (None, MediaSource::Data(data)) => {
                    let mut writer =
                        BodyWriter::new(&media.settings.dir, spec.kind, media.settings.max_bytes)
                            .await?;
                    writer.write(data).await?;
                    std::sync::Arc::new(writer.finish().await?)
                }
                (None, MediaSource::Handle(_)) => {
                    return Err(MediaFailure::Invalid("media handle missing".into()).into())
                }
            };
            let uploaded = self.upload(&handle, &body).await?;
            media_info(&spec, &body, uploaded).to_message()
        };
        let (reply, answer) = oneshot::channel();
        let send = SendRequest {
            to: request.to,
            message,
            idempotency_key: request.idempotency_key,
            fingerprint: Some(fingerprint),
        };
        handle
            .commands
            .send(Command::Media(Box::new(MediaCommand::Send {
                request: Box::new(send),
                reply,
            })))
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        let answer = answer.await.map_err(|_| RuntimeError::ShuttingDown)?;
        answer.map_err(|e| self.send_failed(&handle, e))
    }

    /// Uploads a body to the session's media hosts, fetching fresh upload
    /// auth once if a host refuses it.
    async fn upload(
        &self,
        handle: &SessionHandle,
        body: &EncryptedBody,
    ) -> Result<UploadAnswer, RuntimeError> {
        let media = &self.shared.media;
        let conn = self.media_conn(handle, false).await?;
        match media.upload(&conn, body).await {
            Ok(path) => return Ok(path),
            Err(Some(failure)) => return Err(failure.into()),
            Err(None) => {}
        }
        let conn = self.media_conn(handle, true).await?;
        match media.upload(&conn, body).await {
            Ok(path) => Ok(path),
            Err(failure) => Err(failure
                .unwrap_or_else(|| {
                    MediaFailure::Hosts("the media hosts refused the upload auth".into())
                })
                .into()),
        }
    }

    async fn media_conn(
        &self,
        handle: &SessionHandle,
        refresh: bool,
    ) -> Result<MediaConn, RuntimeError> {
        self.ask(handle, |reply| MediaCommand::Conn { refresh, reply })
            .await
    }

    /// Asks the session actor something quick.
    async fn ask<T>(
        &self,
        handle: &SessionHandle,
        make: impl FnOnce(oneshot::Sender<Result<T, SendError>>) -> MediaCommand,
    ) -> Result<T, RuntimeError> {
        let (reply, answer) = oneshot::channel();
        handle
            .commands
            .send(Command::Media(Box::new(make(reply))))
            .await
            .map_err(|_| RuntimeError::ShuttingDown)?;
        let answer = tokio::time::timeout(ACTOR_WITHIN, answer)
            .await
            .map_err(|_| RuntimeError::Send(SendError::Timeout))?;
        match answer {
            Ok(result) => result.map_err(|e| self.send_failed(handle, e)),
            // The actor dropped the request: its connection went away.
            Err(_) => Err(self.send_failed(handle, SendError::NotConnected)),
        }
    }

    /// The media of received message `message_id`, downloaded from the
    /// media hosts and verified before the first byte is handed out.
    pub async fn download_media(
        &self,
        id: &SessionId,
        message_id: &str,
    ) -> Result<MediaDownload, RuntimeError> {
        let handle = self.open_handle(id)?;
        ready_to_send(&handle.status.borrow())?;
        let record = self
            .ask(&handle, |reply| MediaCommand::Record {
                message_id: message_id.to_owned(),
                reply,
            })
            .await?
            .ok_or_else(|| {
                MediaFailure::NotFound(format!(
                    "no media is known for message {}",
                    super::http::quote(message_id)
                ))
            })?;
        let bad = |field: &str| MediaFailure::DataLoss(format!("stored media record: bad {field}"));
        let ty = MediaType::ALL
            .into_iter()
            .find(|t| t.enc_mediatype() == Some(record.media_type.as_str()))
            .ok_or_else(|| bad("type"))?;
        let key = MediaKey::try_from(record.media_key.as_slice()).map_err(|_| bad("key"))?;
        let sum = |v: &[u8], f| <[u8; 32]>::try_from(v).map_err(|_| bad(f));
        // The MAC authenticates the body; its SHA-256 is not checked again
        // (one hashing pass less per download).
        let expected = crate::wa::media::Expected {
            file_enc_sha256: None,
            file_sha256: Some(sum(&record.file_sha256, "sha256")?),
            file_length: Some(record.file_length),
            max_file_length: Some(self.shared.media.settings.max_bytes),
        };
        let keys = key.keys(ty);
        let conn = self.media_conn(&handle, false).await?;
        let media = &self.shared.media;
        let mut downloaded = media
            .download(&conn, &record.direct_path, &keys, &expected)
            .await;
        if matches!(downloaded, Err(Download::Gone)) {
            // Expired on the hosts: the sender's phone may upload it again.
            let direct_path = self.media_retry(&handle, message_id, &record, &key).await?;
            downloaded = media.download(&conn, &direct_path, &keys, &expected).await;
            if downloaded.is_ok() {
                // Later downloads go straight to the new path.
                let record = crate::wa::messaging::MediaRecord {
                    direct_path,
                    ..record.clone()
                };
                let _ = handle
                    .commands
                    .send(Command::Media(Box::new(MediaCommand::Remember {
                        message_id: message_id.to_owned(),
                        record: Box::new(record),
                    })))
                    .await;
            }
        }
        let (file, verified) = match downloaded {
            Ok(done) => done,
            Err(Download::Gone) => {
                return Err(MediaFailure::NotFound(
                    "the media hosts no longer have this file (expired)".into(),
                )
                .into())
            }
            Err(Download::Corrupt(e)) => return Err(MediaFailure::from(e).into()),
            Err(Download::Failed(failure)) => return Err(failure.into()),
        };
        let (tx, chunks) = mpsc::channel(DOWNLOAD_QUEUE);
        tokio::spawn(stream_plaintext(file, keys, expected, tx));
        Ok(MediaDownload {
            mimetype: record.mimetype,
            file_name: Some(record.file_name).filter(|n| !n.is_empty()),
            file_length: verified.file_length,
            chunks,
        })
    }
}

impl Manager {
    /// Asks the phone that sent `message_id` to upload its media again
    /// (a `server-error` receipt, answered by a `mediaretry` notification);
    /// the new direct path.
    async fn media_retry(
        &self,
        handle: &SessionHandle,
        message_id: &str,
        record: &crate::wa::messaging::MediaRecord,
        key: &MediaKey,
    ) -> Result<String, RuntimeError> {
        let gone = |why: &str| {
            RuntimeError::from(MediaFailure::NotFound(format!(
                "the media hosts no longer have this file (expired) and {why}"
            )))
        };
        let chat: Jid = record
            .chat
            .parse()
            .map_err(|_| gone("its chat is unknown"))?;
        let participant = if chat.is_group() {
            record.sender.parse::<Jid>().ok().map(|s| s.to_non_ad())
        } else {
            None
        };
        let target = RetryTarget {
            message_id: message_id.to_owned(),
            chat,
            from_me: record.from_me,
            participant,
        };
        let answer = self
            .ask(handle, |reply| MediaCommand::Retry {
                target: Box::new(target),
                media_key: key.clone(),
                reply,
            })
            .await
            .map_err(|e| gone(&format!("the phone did not upload it again ({e})")))?;
        let MediaRetryOutcome::Encrypted { ciphertext, iv } = answer.outcome else {
            return Err(gone("the phone no longer has it"));
        };
        match decrypt_retry_notification(key, message_id, &ciphertext, &iv) {
            Ok(RetryResult::Success { direct_path }) => Ok(direct_path),
            Ok(_) => Err(gone("the phone no longer has it")),
            Err(e) => Err(gone(&format!("the phone's answer is unusable ({e})"))),
        }
    }
}

/// Types that share keys and upload paths may use each other's uploads
/// (an image uploaded, sent as a sticker is not: different keys).
fn compatible(uploaded: MediaType, sent: MediaType) -> bool {
    uploaded.hkdf_info() == sent.hkdf_info() && uploaded.mms_type() == sent.mms_type()
}

/// The media message's content. The host's full URL goes in too: Baileys
/// downloads from `url` when a message has one and falls back to a fixed
/// host (mmg.whatsapp.net) with the direct path otherwise.
fn media_info(spec: &MediaSpec, body: &EncryptedBody, uploaded: UploadAnswer) -> MediaInfo {
    MediaInfo {
        ty: spec.kind,
        mimetype: spec.mimetype.clone(),
        caption: spec.caption.clone(),
        file_name: spec.file_name.clone(),
        url: uploaded.url,
        direct_path: uploaded.direct_path,
        media_key: body.key.clone(),
        media_key_timestamp: Some((super::now_ms() / 1000) as i64),
        file_sha256: body.sums.file_sha256,
        file_enc_sha256: body.sums.file_enc_sha256,
        file_length: body.sums.file_length,
        width: spec.width,
        height: spec.height,
        seconds: spec.seconds,
        thumbnail: None,
    }
}

/// What identifies a media Send behind its idempotency key: recipient,
/// the source (the file's hash when the bytes are at hand, the URL
/// otherwise) and what the message says about the file.
fn fingerprint(
    to: &Jid,
    spec: &MediaSpec,
    source: &MediaSource,
    uploaded: Option<&EncryptedBody>,
) -> Vec<u8> {
    let source_id: Vec<u8> = match (source, uploaded) {
        (_, Some(body)) => [b"sha256:".as_slice(), &body.sums.file_sha256].concat(),
        (MediaSource::Data(data), None) => [b"sha256:".as_slice(), &sha256(&[data])].concat(),
        (MediaSource::Url(url), None) => [b"url:".as_slice(), url.as_bytes()].concat(),
        (MediaSource::Handle(h), None) => [b"handle:".as_slice(), h.as_bytes()].concat(),
    };
    let number = |n: Option<u32>| n.map_or_else(String::new, |n| n.to_string());
    let parts: [Vec<u8>; 10] = [
        b"media".to_vec(),
        to.to_non_ad().to_string().into_bytes(),
        format!("{:?}", spec.kind).into_bytes(),
        source_id,
        spec.mimetype.clone().into_bytes(),
        spec.caption.clone().unwrap_or_default().into_bytes(),
        spec.file_name.clone().unwrap_or_default().into_bytes(),
        number(spec.width).into_bytes(),
        number(spec.height).into_bytes(),
        number(spec.seconds).into_bytes(),
    ];
    let mut joined = Vec::new();
    for part in &parts {
        joined.extend_from_slice(&(part.len() as u64).to_be_bytes());
        joined.extend_from_slice(part);
    }
    sha256(&[&joined]).to_vec()
}
