//! The media RPCs and the media part of `Send`: what the caller sent is
//! checked and turned into runtime requests here (kinds, mimetypes, sizes,
//! sources); the runtime does the work.

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::{Stream, StreamExt};
use tonic::{Status, Streaming};

use crate::proto::gateway::media::Source;
use crate::proto::gateway::{
    DownloadMediaRequest, Media, MediaChunk, MediaHandle, MediaKind, UploadMediaChunk,
};
use crate::runtime::{Manager, MediaSource, MediaSpec, OutgoingMedia};
use crate::store::SessionId;
use crate::wa::jid::Jid;
use crate::wa::media::MediaType;

use super::errors::{invalid, quote};

/// Longest mimetype, caption (WhatsApp's own limit is far below), file
/// name, URL and handle accepted.
const MAX_MIMETYPE: usize = 128;
const MAX_CAPTION: usize = 65_536;
const MAX_FILE_NAME: usize = 255;
const MAX_URL: usize = 4096;
const MAX_HANDLE: usize = 64;
/// Longest message id accepted by DownloadMedia.
const MAX_MESSAGE_ID: usize = 128;

pub(crate) type ChunkStream = Pin<Box<dyn Stream<Item = Result<MediaChunk, Status>> + Send>>;

/// The media type of an API kind.
fn media_type(kind: i32) -> Result<MediaType, Status> {
    match MediaKind::try_from(kind) {
        Ok(MediaKind::Image) => Ok(MediaType::Image),
        Ok(MediaKind::Video) => Ok(MediaType::Video),
        Ok(MediaKind::Audio) => Ok(MediaType::Audio),
        Ok(MediaKind::VoiceNote) => Ok(MediaType::VoiceNote),
        Ok(MediaKind::Document) => Ok(MediaType::Document),
        Ok(MediaKind::Sticker) => Ok(MediaType::Sticker),
        Ok(MediaKind::Unspecified) => Err(invalid(
            "media.kind",
            "required: image, video, audio, voice note, document or sticker",
        )),
        Err(_) => Err(invalid("media.kind", format!("unknown kind {kind}"))),
    }
}

/// A mimetype must look like one and suit the kind (WhatsApp clients show
/// or play media by it).
fn mimetype(kind: MediaType, raw: &str, required: bool) -> Result<String, Status> {
    if raw.is_empty() && !required {
        return Ok(String::new());
    }
    let well_formed = raw.len() <= MAX_MIMETYPE
        && raw.split(';').next().is_some_and(|essence| {
            let mut parts = essence.trim().splitn(2, '/');
            let valid = |p: Option<&str>| {
                p.is_some_and(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
                })
            };
            valid(parts.next()) && valid(parts.next())
        })
        && raw.bytes().all(|b| (0x20..0x7f).contains(&b));
    if !well_formed {
        return Err(invalid(
            "media.mimetype",
            format!("{} is not a mimetype (type/subtype)", quote(raw)),
        ));
    }
    let lower = raw.to_ascii_lowercase();
    let fits = match kind {
        MediaType::Image => lower.starts_with("image/"),
        MediaType::Video => lower.starts_with("video/"),
        MediaType::Audio | MediaType::VoiceNote => lower.starts_with("audio/"),
        MediaType::Sticker => lower.starts_with("image/webp"),
        _ => true,
    };
    if !fits {
        return Err(invalid(
            "media.mimetype",
            format!("{} does not suit a {kind:?}", quote(raw)),
        ));
    }
    Ok(raw.to_owned())
}

fn bounded(field: &str, raw: String, max: usize) -> Result<Option<String>, Status> {
    if raw.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    Ok(Some(raw).filter(|s| !s.is_empty()))
}

fn dimension(n: u32) -> Option<u32> {
    Some(n).filter(|n| *n > 0)
}

/// A `Send` with media, checked.
pub(crate) fn outgoing(
    to: Jid,
    text: &str,
    media: Media,
    idempotency_key: Option<String>,
) -> Result<OutgoingMedia, Status> {
    if !text.is_empty() {
        return Err(invalid(
            "text",
            "must be empty with media; put the caption in media.caption",
        ));
    }
    let kind = media_type(media.kind)?;
    let source = match media.source {
        Some(Source::Handle(h)) if !h.is_empty() && h.len() <= MAX_HANDLE => MediaSource::Handle(h),
        Some(Source::Handle(h)) => {
            return Err(invalid(
                "media.handle",
                format!("{} is not a handle", quote(&h)),
            ))
        }
        Some(Source::Url(url)) => {
            let lower = url.to_ascii_lowercase();
            if url.len() > MAX_URL
                || !(lower.starts_with("http://") || lower.starts_with("https://"))
            {
                return Err(invalid(
                    "media.url",
                    format!("{} is not an http(s) URL", quote(&url)),
                ));
            }
            MediaSource::Url(url)
        }
        Some(Source::Data(data)) if !data.is_empty() => MediaSource::Data(data),
        Some(Source::Data(_)) => return Err(invalid("media.data", "empty")),
        None => {
            return Err(invalid(
                "media",
                "a source is required: handle (UploadMedia), url or data",
            ))
        }
    };
    let required = !matches!(source, MediaSource::Handle(_));
    Ok(OutgoingMedia {
        to,
        spec: MediaSpec {
            kind,
            mimetype: mimetype(kind, &media.mimetype, required)?,
            caption: bounded("media.caption", media.caption, MAX_CAPTION)?,
            file_name: bounded("media.file_name", media.file_name, MAX_FILE_NAME)?,
            width: dimension(media.width),
            height: dimension(media.height),
            seconds: dimension(media.duration_seconds),
        },
        source,
        idempotency_key,
    })
}

/// `UploadMedia`: the first chunk says what and for whom; the bytes are
/// encrypted as they come. A failed or abandoned upload leaves nothing.
pub(crate) async fn upload(
    manager: &Arc<Manager>,
    first: UploadMediaChunk,
    mut chunks: Streaming<UploadMediaChunk>,
) -> Result<MediaHandle, Status> {
    let id = first
        .session_id
        .parse::<SessionId>()
        .map_err(|e| invalid("session_id", e))?;
    let kind = media_type(first.kind)?;
    let mimetype = mimetype(kind, &first.mimetype, true)?;
    let file_name = bounded("file_name", first.file_name, MAX_FILE_NAME)?;
    let mut upload = manager.start_upload(&id, kind).await?;
    upload.write(&first.data).await?;
    while let Some(chunk) = chunks.message().await? {
        upload.write(&chunk.data).await?;
    }
    let done = manager.finish_upload(upload, mimetype, file_name).await?;
    let expires_ms = crate::runtime::now_ms() + done.expires_in.as_millis() as u64;
    Ok(MediaHandle {
        handle: done.handle,
        file_length: done.file_length,
        file_sha256: done.file_sha256.to_vec(),
        expires_at: Some(crate::runtime::timestamp_ms(expires_ms as i64)),
    })
}

/// `DownloadMedia`: verified before the first chunk; the first chunk
/// carries what the file is.
pub(crate) async fn download(
    manager: &Arc<Manager>,
    request: DownloadMediaRequest,
) -> Result<ChunkStream, Status> {
    let id = request
        .session_id
        .parse::<SessionId>()
        .map_err(|e| invalid("session_id", e))?;
    if request.message_id.is_empty() || request.message_id.len() > MAX_MESSAGE_ID {
        return Err(invalid("message_id", "a message id is 1 to 128 characters"));
    }
    let download = manager.download_media(&id, &request.message_id).await?;
    let mut head = Some(MediaChunk {
        data: Vec::new(),
        mimetype: download.mimetype,
        file_name: download.file_name.unwrap_or_default(),
        file_length: download.file_length,
    });
    let chunks = tokio_stream::wrappers::ReceiverStream::new(download.chunks).map(move |chunk| {
        let mut out = head.take().unwrap_or_default();
        match chunk {
            Ok(bytes) => {
                out.data = bytes.to_vec();
                Ok(out)
            }
            Err(e) => Err(Status::from(crate::runtime::RuntimeError::Media(e))),
        }
    });
    Ok(Box::pin(chunks))
}
