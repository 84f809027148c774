//! Media for the gateway: encrypted temporary bodies, upload handles, and
//! the HTTP legs — fetching a `Send`'s media by URL, uploading to
//! WhatsApp's media hosts, downloading and verifying a received file. The
//! flows that tie them to a session are in `media_flow`.
//!
//! Nothing is in clear at rest: a file is encrypted with its fresh media
//! key as it arrives (the temporary file is the body WhatsApp receives),
//! and a download is kept encrypted on disk until it verified, then
//! decrypted again as it streams out. Every temporary file is removed when
//! its owner drops it, on success and on every error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::wa::media::{
    self as wamedia, DecryptedMedia, Decryptor, EncryptedMedia, Encryptor, Expected, MediaConn,
    MediaError, MediaKey, MediaType, Scheme,
};

use super::fetch_policy::FetchPolicy;
use super::http::{quote, HttpClient, HttpError};

/// Bytes read or written at a time.
const CHUNK: usize = 64 * 1024;
/// How long an upload answer or a download may take to start.
const HOST_WITHIN: Duration = Duration::from_secs(30);
/// Slowest transfer rate tolerated to and from a media host, bytes/s: a
/// transfer may take `HOST_WITHIN` plus its size at this rate.
const MIN_RATE: u64 = 256 * 1024;

/// The deadline of a transfer of `len` bytes.
fn transfer_within(len: u64) -> Duration {
    HOST_WITHIN + Duration::from_secs(len / MIN_RATE)
}
/// Upload handles kept at once (each holds a temporary file).
const MAX_HANDLES: usize = 1024;

/// Media settings.
#[derive(Clone, Debug)]
pub struct MediaSettings {
    /// Largest file sent or downloaded.
    pub max_bytes: u64,
    /// Where encrypted temporary bodies live.
    pub dir: PathBuf,
    /// `https` for WhatsApp; `http` for a simulator on loopback.
    pub scheme: Scheme,
    /// Longest a fetch by URL may take, body included.
    pub fetch_timeout: Duration,
    /// How long an upload handle stays usable.
    pub handle_ttl: Duration,
    /// Which addresses a media URL may point to.
    pub fetch_policy: FetchPolicy,
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self {
            max_bytes: 100 * 1024 * 1024,
            dir: std::env::temp_dir().join("wagate-media"),
            scheme: Scheme::Https,
            fetch_timeout: Duration::from_secs(60),
            handle_ttl: Duration::from_secs(3600),
            fetch_policy: FetchPolicy::default(),
        }
    }
}

/// Why a media operation failed; `api::errors` maps each to a status.
#[derive(Debug, thiserror::Error)]
pub enum MediaFailure {
    #[error("the media is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    NotFound(String),
    /// Truncated, wrong MAC, wrong hash: the bytes are not the file.
    #[error("{0}")]
    DataLoss(String),
    /// The URL given could not be fetched.
    #[error("cannot fetch the media: {0}")]
    Fetch(String),
    /// No media host took or gave the file; trying later may work.
    #[error("media hosts unavailable: {0}")]
    Hosts(String),
    #[error("temporary media file: {0}")]
    Io(String),
}

impl From<std::io::Error> for MediaFailure {
    fn from(e: std::io::Error) -> Self {
        MediaFailure::Io(e.to_string())
    }
}

impl From<MediaError> for MediaFailure {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::TooLarge { limit } => MediaFailure::TooLarge { limit },
            other => MediaFailure::DataLoss(other.to_string()),
        }
    }
}

/// A temporary file, removed when dropped.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
}

impl TempFile {
    async fn create(dir: &Path) -> Result<(Self, tokio::fs::File), MediaFailure> {
        tokio::fs::create_dir_all(dir).await?;
        let mut name = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut name);
        let path = dir.join(format!("{}.part", hex::encode(name)));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?;
        Ok((Self { path }, file))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A file encrypted for upload: the body on disk and what the message
/// must say about it.
pub(crate) struct EncryptedBody {
    pub(crate) file: TempFile,
    pub(crate) key: MediaKey,
    pub(crate) ty: MediaType,
    pub(crate) sums: EncryptedMedia,
}

/// Encrypts bytes as they come into a temporary body, refusing more than
/// `max` bytes of plaintext.
pub(crate) struct BodyWriter {
    file: TempFile,
    out: tokio::io::BufWriter<tokio::fs::File>,
    encryptor: Encryptor,
    key: MediaKey,
    ty: MediaType,
    written: u64,
    max: u64,
    buf: Vec<u8>,
}

impl BodyWriter {
    pub(crate) async fn new(dir: &Path, ty: MediaType, max: u64) -> Result<Self, MediaFailure> {
        let key = MediaKey::generate(&mut rand::rngs::OsRng);
        let (file, out) = TempFile::create(dir).await?;
        Ok(Self {
            encryptor: Encryptor::new(&key.keys(ty)),
            file,
            out: tokio::io::BufWriter::with_capacity(CHUNK, out),
            key,
            ty,
            written: 0,
            max,
            buf: Vec::with_capacity(CHUNK + 32),
        })
    }

    pub(crate) async fn write(&mut self, plain: &[u8]) -> Result<(), MediaFailure> {
        self.written += plain.len() as u64;
        if self.written > self.max {
            return Err(MediaFailure::TooLarge { limit: self.max });
        }
        for piece in plain.chunks(CHUNK) {
            self.buf.clear();
            self.encryptor.update(piece, &mut self.buf);
            self.out.write_all(&self.buf).await?;
        }
        Ok(())
    }

    pub(crate) async fn finish(mut self) -> Result<EncryptedBody, MediaFailure> {
        if self.written == 0 {
            return Err(MediaFailure::Invalid("the media is empty".into()));
        }
        self.buf.clear();
        let sums = self.encryptor.finish(&mut self.buf);
        self.out.write_all(&self.buf).await?;
        self.out.flush().await?;
        self.out.get_ref().sync_data().await?;
        Ok(EncryptedBody {
            file: self.file,
            key: self.key,
            ty: self.ty,
            sums,
        })
    }
}

/// A file uploaded by `UploadMedia`, waiting to be sent.
pub(crate) struct Handle {
    pub(crate) session: String,
    pub(crate) body: Arc<EncryptedBody>,
    pub(crate) mimetype: String,
    pub(crate) file_name: Option<String>,
    expires: Instant,
}

/// The gateway's media state: settings, HTTP client, upload handles.
pub(crate) struct Media {
    pub(crate) settings: MediaSettings,
    pub(crate) http: HttpClient,
    handles: Mutex<HashMap<String, Handle>>,
}

impl Media {
    pub(crate) fn new(settings: MediaSettings) -> Self {
        // Bodies left by a process that died are of no use to anyone.
        if let Ok(entries) = std::fs::read_dir(&settings.dir) {
            for entry in entries.flatten() {
                if entry.path().extension().is_some_and(|e| e == "part") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Self {
            settings,
            http: HttpClient::new(),
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps an uploaded body under a fresh handle id.
    pub(crate) fn keep(
        &self,
        session: String,
        body: EncryptedBody,
        mimetype: String,
        file_name: Option<String>,
    ) -> Result<(String, Instant), MediaFailure> {
        let now = Instant::now();
        let mut handles = self.lock();
        handles.retain(|_, h| h.expires > now);
        if handles.len() >= MAX_HANDLES {
            return Err(MediaFailure::TooMany(format!(
                "{MAX_HANDLES} uploaded files are waiting to be sent; send them or let them expire first"
            )));
        }
        let mut id = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let id = hex::encode(id);
        let expires = now + self.settings.handle_ttl;
        handles.insert(
            id.clone(),
            Handle {
                session,
                body: Arc::new(body),
                mimetype,
                file_name,
                expires,
            },
        );
        Ok((id, expires))
    }

    /// The body of handle `id`, if it is the session's and still valid.
    pub(crate) fn handle(
        &self,
        session: &str,
        id: &str,
    ) -> Result<(Arc<EncryptedBody>, String, Option<String>), MediaFailure> {
        let now = Instant::now();
        let mut handles = self.lock();
        handles.retain(|_, h| h.expires > now);
        match handles.get(id) {
            Some(h) if h.session == session => {
                Ok((h.body.clone(), h.mimetype.clone(), h.file_name.clone()))
            }
            _ => Err(MediaFailure::NotFound(format!(
                "media handle {:?} is unknown, expired or of another session; upload the file again",
                quote(id)
            ))),
        }
    }

    /// Fetches `url` into an encrypted body, within the size and time
    /// limits, following a bounded number of redirects.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        ty: MediaType,
    ) -> Result<EncryptedBody, MediaFailure> {
        let max = self.settings.max_bytes;
        let within = self.settings.fetch_timeout;
        let fetch = async {
            let mut response = self
                .http
                .get_guarded(url, &self.settings.fetch_policy, within)
                .await
                .map_err(|e| match e {
                    HttpError::Forbidden { .. } => MediaFailure::Invalid(format!("media.url: {e}")),
                    other => MediaFailure::Fetch(other.to_string()),
                })?;
            if !response.status.is_success() {
                return Err(MediaFailure::Fetch(format!(
                    "{} answered {}",
                    quote(url),
                    response.status
                )));
            }
            if response.content_length().is_some_and(|n| n > max) {
                return Err(MediaFailure::TooLarge { limit: max });
            }
            let mut writer = BodyWriter::new(&self.settings.dir, ty, max).await?;
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| MediaFailure::Fetch(e.to_string()))?
            {
                writer.write(&chunk).await?;
            }
            writer.finish().await
        };
        tokio::time::timeout(within, fetch).await.map_err(|_| {
            MediaFailure::Fetch(format!("{} took longer than {within:?}", quote(url)))
        })?
    }

    /// Uploads `body` to the first host that takes it; the direct path to
    /// put in the message. `Err(None)` when a host refused the auth (the
    /// caller fetches fresh media_conn and tries once more).
    pub(crate) async fn upload(
        &self,
        conn: &MediaConn,
        body: &EncryptedBody,
    ) -> Result<wamedia::UploadAnswer, Option<MediaFailure>> {
        let mut last = String::from("no media host");
        let mut auth_refused = false;
        let length = wamedia::body_len(body.sums.file_length);
        for host in &conn.hosts {
            if host.max_content_length.is_some_and(|m| length > m) {
                last = format!(
                    "{} takes at most {:?} bytes",
                    host.hostname, host.max_content_length
                );
                continue;
            }
            let url = wamedia::upload_url(
                self.settings.scheme,
                host,
                body.ty,
                &conn.auth,
                &body.sums.file_enc_sha256,
            )
            .map_err(|e| Some(MediaFailure::Hosts(e.to_string())))?;
            let file = tokio::fs::File::open(body.file.path())
                .await
                .map_err(|e| Some(MediaFailure::from(e)))?;
            let length_header = length.to_string();
            let headers = [
                ("content-type", "application/octet-stream"),
                ("content-length", length_header.as_str()),
                ("origin", "https://web.whatsapp.com"),
            ];
            let sent = self
                .http
                .post(&url, &headers, file_body(file), transfer_within(length))
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = response.status;
            let answer = response.bytes(64 * 1024).await;
            match (status.as_u16(), answer) {
                (200..=299, Ok(body)) => match wamedia::parse_upload_answer(&body) {
                    Ok(answer) => return Ok(answer),
                    Err(e) => last = e.to_string(),
                },
                (401 | 403, _) => auth_refused = true,
                (code, _) => last = format!("{} answered {code}", host.hostname),
            }
        }
        if auth_refused {
            return Err(None);
        }
        Err(Some(MediaFailure::Hosts(last)))
    }

    /// Downloads `direct_path` from the hosts in turn into a temporary
    /// file, verifying it as it comes (MAC, hashes, length). `Gone` when
    /// the hosts no longer have it.
    pub(crate) async fn download(
        &self,
        conn: &MediaConn,
        direct_path: &str,
        keys: &wamedia::MediaKeys,
        expected: &Expected,
    ) -> Result<(TempFile, DecryptedMedia), Download> {
        let mut last = Download::Failed(MediaFailure::Hosts("no media host".into()));
        for host in &conn.hosts {
            let url = wamedia::download_url(self.settings.scheme, host, direct_path)
                .map_err(|e| Download::Failed(MediaFailure::DataLoss(e.to_string())))?;
            let within = transfer_within(expected.file_length.map_or(0, wamedia::body_len));
            let attempt = tokio::time::timeout(within, self.download_from(&url, keys, expected))
                .await
                .unwrap_or_else(|_| {
                    Err(Download::Failed(MediaFailure::Hosts(format!(
                        "{} did not send the file within {within:?}",
                        host.hostname
                    ))))
                });
            match attempt {
                Ok(done) => return Ok(done),
                // The file or its message is at fault, not the transfer:
                // another host has the same bytes.
                Err(Download::Corrupt(e)) if !e.is_retryable() => {
                    return Err(Download::Failed(e.into()))
                }
                Err(Download::Corrupt(e)) => last = Download::Failed(e.into()),
                Err(other) => last = other,
            }
        }
        Err(last)
    }

    async fn download_from(
        &self,
        url: &str,
        keys: &wamedia::MediaKeys,
        expected: &Expected,
    ) -> Result<(TempFile, DecryptedMedia), Download> {
        let hosts = |e: HttpError| Download::Failed(MediaFailure::Hosts(e.to_string()));
        let headers = [("origin", "https://web.whatsapp.com")];
        let mut response = self
            .http
            .get(url, &headers, false, HOST_WITHIN)
            .await
            .map_err(hosts)?;
        match response.status.as_u16() {
            200..=299 => {}
            404 | 410 => return Err(Download::Gone),
            code => {
                return Err(Download::Failed(MediaFailure::Hosts(format!(
                    "{} answered {code}",
                    quote(url)
                ))))
            }
        }
        let (file, out) = TempFile::create(&self.settings.dir)
            .await
            .map_err(Download::Failed)?;
        let mut out = tokio::io::BufWriter::with_capacity(CHUNK, out);
        let mut decryptor = Decryptor::new(keys, expected.clone());
        let mut plain = Vec::with_capacity(CHUNK + 32);
        let io = |e: std::io::Error| Download::Failed(e.into());
        // The plaintext is only checked here, never kept: what stays on
        // disk is the encrypted body, decrypted again as it streams out.
        while let Some(chunk) = response.chunk().await.map_err(hosts)? {
            plain.clear();
            decryptor
                .update(&chunk, &mut plain)
                .map_err(Download::Corrupt)?;
            out.write_all(&chunk).await.map_err(io)?;
        }
        plain.clear();
        let verified = decryptor.finish(&mut plain).map_err(Download::Corrupt)?;
        out.flush().await.map_err(io)?;
        Ok((file, verified))
    }
}

/// How a download ended without the file.
#[derive(Debug)]
pub(crate) enum Download {
    /// 404 or 410: the hosts dropped it (a media retry may bring it back).
    Gone,
    /// The bytes are not the file the message announced.
    Corrupt(MediaError),
    Failed(MediaFailure),
}

/// A file as a streamed request body.
fn file_body(
    file: tokio::fs::File,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, std::io::Error>> + Send,
> {
    let chunks = futures_util::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    http_body_util::StreamBody::new(chunks)
}

/// Streams the verified body in `file` as plaintext chunks into `tx`; a
/// failure (the file changed on disk) ends the stream with an error.
pub(crate) async fn stream_plaintext(
    file: TempFile,
    keys: wamedia::MediaKeys,
    expected: Expected,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, MediaFailure>>,
) {
    let result = async {
        let mut input = tokio::fs::File::open(file.path()).await?;
        let mut decryptor = Decryptor::new(&keys, expected);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            let mut plain = Vec::with_capacity(n + 32);
            decryptor.update(&buf[..n], &mut plain)?;
            if !plain.is_empty() && tx.send(Ok(Bytes::from(plain))).await.is_err() {
                return Ok(());
            }
        }
        let mut plain = Vec::new();
        decryptor.finish(&mut plain)?;
        if !plain.is_empty() {
            let _ = tx.send(Ok(Bytes::from(plain))).await;
        }
        Ok::<(), MediaFailure>(())
    }
    .await;
    if let Err(e) = result {
        let _ = tx.send(Err(e)).await;
    }
    drop(file);
}

#[cfg(test)]
#[path = "media_tests.rs"]
mod tests;
