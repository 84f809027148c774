//! Media in the whatsapp-web.js dialects: what kind of WhatsApp message a
//! file becomes, the mimetype of bytes that came without one, and the
//! `uploads/` directory where incoming files are kept for the production
//! variant's `fileUrl` webhooks (served at `/uploads/{name}`).

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rand::RngCore;
use tokio::io::AsyncReadExt;

use crate::error::ApiError;
use crate::proto::gateway::MediaKind;
use crate::routes::App;

/// Longest upload file name accepted on `/uploads/`.
const MAX_NAME: usize = 96;
/// Bytes read from disk per chunk of a served upload.
const SERVE_CHUNK: usize = 64 * 1024;

/// The message kind whatsapp-web.js sends a file as: images, videos and
/// audio by their mimetype, anything else as a document.
pub(crate) fn kind_of(mimetype: &str) -> MediaKind {
    let lower = mimetype.to_ascii_lowercase();
    if lower.starts_with("image/") {
        MediaKind::Image
    } else if lower.starts_with("video/") {
        MediaKind::Video
    } else if lower.starts_with("audio/") {
        MediaKind::Audio
    } else {
        MediaKind::Document
    }
}

/// (extension, mimetype) pairs, both ways.
const TYPES: [(&str, &str); 16] = [
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("png", "image/png"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("mp4", "video/mp4"),
    ("3gp", "video/3gpp"),
    ("mp3", "audio/mpeg"),
    ("ogg", "audio/ogg"),
    ("opus", "audio/ogg"),
    ("m4a", "audio/mp4"),
    ("aac", "audio/aac"),
    ("pdf", "application/pdf"),
    ("txt", "text/plain"),
    ("zip", "application/zip"),
    (
        "docx",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ),
];

/// The mimetype a file name or URL path suggests by its extension.
pub(crate) fn by_extension(name: &str) -> Option<&'static str> {
    let path = name.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    let (_, ext) = last.rsplit_once('.')?;
    TYPES
        .iter()
        .find(|(e, _)| e.eq_ignore_ascii_case(ext))
        .map(|(_, m)| *m)
}

/// The mimetype the first bytes of a file show (the formats WhatsApp
/// media usually come in).
pub(crate) fn sniff(bytes: &[u8]) -> Option<&'static str> {
    let starts = |magic: &[u8]| bytes.starts_with(magic);
    if starts(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if starts(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if starts(b"GIF8") {
        Some("image/gif")
    } else if starts(b"RIFF") && bytes.get(8..12) == Some(b"WEBP") {
        Some("image/webp")
    } else if bytes.get(4..8) == Some(b"ftyp") {
        Some("video/mp4")
    } else if starts(b"OggS") {
        Some("audio/ogg")
    } else if starts(b"ID3") || starts(&[0xff, 0xfb]) {
        Some("audio/mpeg")
    } else if starts(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// A file extension for `mimetype` (`bin` when unknown).
pub(crate) fn extension_of(mimetype: &str) -> &'static str {
    let essence = mimetype.split(';').next().unwrap_or_default().trim();
    TYPES
        .iter()
        .find(|(_, m)| m.eq_ignore_ascii_case(essence))
        .map_or("bin", |(e, _)| *e)
}

/// Where the production variant's incoming files are kept and served.
pub(crate) fn uploads_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("uploads")
}

/// Writes `data` as `{timestamp_ms}_{random}.{ext}` in the uploads
/// directory (through a temporary name, so a served file is always whole);
/// its name. The random part makes names unguessable: `/uploads/` is open
/// like the variant's static folder.
pub(crate) async fn save_upload(
    data_dir: &Path,
    now_ms: i64,
    mimetype: &str,
    data: &[u8],
) -> std::io::Result<String> {
    let dir = uploads_dir(data_dir);
    tokio::fs::create_dir_all(&dir).await?;
    let mut random = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut random);
    let name = format!(
        "{now_ms}_{}.{}",
        hex::encode(random),
        extension_of(mimetype)
    );
    let part = dir.join(format!(".{name}.part"));
    tokio::fs::write(&part, data).await?;
    if let Err(e) = tokio::fs::rename(&part, dir.join(&name)).await {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    Ok(name)
}

/// `GET /uploads/{name}`: a file saved by [`save_upload`].
pub(crate) async fn serve_upload(
    State(app): State<App>,
    UrlPath(name): UrlPath<String>,
) -> Result<Response, ApiError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    let missing = || ApiError::NotFound(format!("no upload named {name:?}"));
    if !valid {
        return Err(missing());
    }
    let path = uploads_dir(&app.config.data_dir).join(&name);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
        Err(e) => return Err(ApiError::Internal(format!("reading upload: {e}"))),
    };
    // Streamed a chunk at a time: a file may be as large as the media
    // limit, and several may be fetched at once.
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; SERVE_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(Bytes::from(buf))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mimetype = by_extension(&name).unwrap_or("application/octet-stream");
    Ok((
        [
            (CONTENT_TYPE, mimetype),
            (CACHE_CONTROL, "private, max-age=86400"),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_types() {
        assert_eq!(kind_of("image/jpeg"), MediaKind::Image);
        assert_eq!(kind_of("Video/MP4"), MediaKind::Video);
        assert_eq!(kind_of("audio/ogg; codecs=opus"), MediaKind::Audio);
        assert_eq!(kind_of("application/pdf"), MediaKind::Document);
        assert_eq!(by_extension("https://x/a/b.JPG?x=1"), Some("image/jpeg"));
        assert_eq!(by_extension("report.pdf"), Some("application/pdf"));
        assert_eq!(by_extension("https://x.example/file"), None);
        assert_eq!(sniff(b"%PDF-1.7 ..."), Some("application/pdf"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0JFIF"), Some("image/jpeg"));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff(b"hello"), None);
        assert_eq!(extension_of("audio/ogg; codecs=opus"), "ogg");
        assert_eq!(extension_of("application/x-unknown"), "bin");
    }

    #[tokio::test]
    async fn saved_uploads_are_whole_and_unguessable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = save_upload(dir.path(), 1_700_000_000_000, "image/png", b"png")
            .await
            .expect("saved");
        let b = save_upload(dir.path(), 1_700_000_000_000, "image/png", b"png")
            .await
            .expect("saved");
        assert_ne!(a, b);
        assert!(
            a.starts_with("1700000000000_") && a.ends_with(".png"),
            "{a}"
        );
        let names: Vec<String> = std::fs::read_dir(uploads_dir(dir.path()))
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }
}
