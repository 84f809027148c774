//! The simulator's media host: an HTTP/1.1 server on its own port with
//! WhatsApp's paths. `POST /mms/{type}/{token}?auth=…&token=…` stores an
//! encrypted body (auth from a `media_conn` answer, token = base64url of the
//! body's SHA-256) and answers `{"url","direct_path"}`; `GET {direct_path}`
//! serves it, 404 when unknown, 410 once expired. Blobs live on disk when
//! the simulator has a directory for them, in memory otherwise. Imports `wa`
//! only.
//!
//! Plain HTTP: the host is meant for loopback; what it advertises (its base
//! URL) is configurable so a TLS proxy can sit in front.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::lock;
use crate::wa::media::{
    upload_answer_json, MediaConn, MediaHost, MediaKey, MediaType, UploadAnswer,
};

/// Where the media host listens, what it advertises and what it keeps.
#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Address to bind (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Base URL the host advertises in upload answers, without a trailing
    /// slash; `http://ADDR` of the bound address when `None`. The
    /// `media_conn` host name is this URL's authority.
    pub public_url: Option<String>,
    /// Directory for blobs; in memory when `None`.
    pub dir: Option<PathBuf>,
    /// Largest body one upload may have.
    pub max_upload: u64,
    /// How long a `media_conn` auth token is accepted.
    pub auth_ttl: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            public_url: None,
            dir: None,
            max_upload: DEFAULT_MAX_UPLOAD,
            auth_ttl: Duration::from_secs(6 * 3600),
        }
    }
}

/// WhatsApp takes 100 MB videos and 2 GB documents; a simulator for tests
/// needs less, and memory-backed blobs must stay small.
pub const DEFAULT_MAX_UPLOAD: u64 = 128 * 1024 * 1024;

/// How long a client caches a `media_conn` answer (what WhatsApp says).
const MEDIA_CONN_TTL_S: u32 = 300;
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;
/// A request's headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Read size when serving a blob from disk.
const READ_CHUNK: usize = 64 * 1024;
/// Path prefix of direct paths, in WhatsApp's shape.
const BLOB_PREFIX: &str = "/v/t62.7118-24/";

/// Why the media host could not start.
#[derive(Debug, thiserror::Error)]
pub enum MediaHostError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("media directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("media public URL {0:?} is not http(s)://host[:port]")]
    PublicUrl(String),
}

/// The running media host; shared by the connections that answer
/// `media_conn` and by the control API.
pub(crate) struct MediaServer {
    state: Arc<State>,
    addr: SocketAddr,
    base_url: String,
    hostname: String,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct State {
    base_url: String,
    max_upload: u64,
    auth_ttl_s: u64,
    store: Store,
    /// Direct-path id → blob.
    blobs: Mutex<HashMap<String, Blob>>,
    /// Accepted auth tokens with the unix second they stop being accepted:
    /// the current one and the one before (clients cache answers).
    auths: Mutex<Vec<(String, u64)>>,
    rng: Mutex<StdRng>,
    sent: Mutex<SentMemory>,
}

/// Media the simulator's phones sent, by message id.
#[derive(Default)]
struct SentMemory {
    by_id: HashMap<String, SentMedia>,
    order: VecDeque<String>,
    bytes: usize,
}

/// Most sent media remembered for retries, by count and by bytes.
const MAX_SENT_MEDIA: usize = 1024;
const MAX_SENT_BYTES: usize = 256 * 1024 * 1024;

/// A file a phone sent: enough to upload it again and answer a retry.
#[derive(Clone)]
pub(crate) struct SentMedia {
    pub(crate) media_key: MediaKey,
    /// The encrypted body as first uploaded.
    pub(crate) body: Bytes,
}

/// Why a phone could not download a blob.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchError {
    #[error("404 not found")]
    NotFound,
    #[error("410 gone")]
    Gone,
}

enum Store {
    Memory,
    Disk(PathBuf),
}

enum Blob {
    Memory(Bytes),
    Disk {
        len: u64,
    },
    /// Gone: downloads answer 410 Gone, so clients ask for a media retry.
    Expired,
}

impl MediaServer {
    /// Binds the host and starts serving until `shutdown` turns true.
    pub(crate) async fn start(
        config: MediaConfig,
        seed: u64,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Self, MediaHostError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| MediaHostError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| MediaHostError::Bind {
                addr: config.listen,
                source,
            })?;
        let base_url = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{addr}"),
        };
        let hostname = base_url
            .strip_prefix("http://")
            .or_else(|| base_url.strip_prefix("https://"))
            .filter(|host| !host.is_empty() && !host.contains('/'))
            .ok_or_else(|| MediaHostError::PublicUrl(base_url.clone()))?
            .to_owned();
        let mut blobs = HashMap::new();
        let store = match &config.dir {
            None => Store::Memory,
            Some(dir) => {
                blobs = index_dir(dir).map_err(|source| MediaHostError::Dir {
                    dir: dir.clone(),
                    source,
                })?;
                Store::Disk(dir.clone())
            }
        };
        let state = Arc::new(State {
            base_url: base_url.clone(),
            max_upload: config.max_upload,
            auth_ttl_s: config.auth_ttl.as_secs().max(1),
            store,
            blobs: Mutex::new(blobs),
            auths: Mutex::new(Vec::new()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            sent: Mutex::new(SentMemory::default()),
        });
        let task = tokio::spawn(accept_loop(Arc::clone(&state), listener, shutdown));
        info!(%base_url, "media host started");
        Ok(Self {
            state,
            addr,
            base_url,
            hostname,
            task: Mutex::new(Some(task)),
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The advertised base URL, e.g. `http://127.0.0.1:PORT`.
    pub(crate) fn base_url(&self) -> &str {
        &self.base_url
    }

    /// What a `media_conn` iq is answered with at unix second `now`.
    pub(crate) fn media_conn(&self, now: u64) -> MediaConn {
        let auth = self.state.current_auth(now);
        MediaConn {
            auth,
            ttl_s: MEDIA_CONN_TTL_S,
            auth_ttl_s: u32::try_from(self.state.auth_ttl_s).unwrap_or(u32::MAX),
            max_buckets: 12,
            hosts: vec![MediaHost {
                hostname: self.hostname.clone(),
                max_content_length: Some(self.state.max_upload),
            }],
        }
    }

    /// Expires the blob of a direct path (or full URL): later downloads get
    /// 410 Gone. Returns whether there was such a blob still live.
    pub(crate) async fn expire(&self, path_or_url: &str) -> bool {
        let path = path_or_url
            .strip_prefix(self.base_url.as_str())
            .unwrap_or(path_or_url);
        let Some(id) = blob_id(path) else {
            return false;
        };
        let previous = match lock(&self.state.blobs).get_mut(id) {
            Some(blob) => std::mem::replace(blob, Blob::Expired),
            None => return false,
        };
        match previous {
            Blob::Disk { .. } => {
                if let Store::Disk(dir) = &self.state.store {
                    if let Err(err) = tokio::fs::remove_file(blob_file(dir, id)).await {
                        warn!(%err, "expired blob not removed");
                    }
                }
                true
            }
            Blob::Memory(_) => true,
            Blob::Expired => false,
        }
    }

    /// Stores a body as if uploaded (the simulator's phones use it) and
    /// returns what an upload answers.
    pub(crate) async fn put(&self, body: Bytes) -> io::Result<UploadAnswer> {
        let id = self.state.new_id();
        let blob = match &self.state.store {
            Store::Memory => Blob::Memory(body),
            Store::Disk(dir) => {
                let part = dir.join(format!("{id}.part"));
                tokio::fs::write(&part, &body).await?;
                tokio::fs::rename(&part, blob_file(dir, &id)).await?;
                Blob::Disk {
                    len: body.len() as u64,
                }
            }
        };
        lock(&self.state.blobs).insert(id.clone(), blob);
        Ok(self.state.answer(&id))
    }

    /// A blob's body, as a phone of the simulator downloads it.
    pub(crate) async fn fetch(&self, direct_path: &str) -> Result<Bytes, FetchError> {
        let id = blob_id(direct_path).ok_or(FetchError::NotFound)?;
        let len = match lock(&self.state.blobs).get(id) {
            None => return Err(FetchError::NotFound),
            Some(Blob::Expired) => return Err(FetchError::Gone),
            Some(Blob::Memory(bytes)) => return Ok(bytes.clone()),
            Some(Blob::Disk { len }) => *len,
        };
        let Store::Disk(dir) = &self.state.store else {
            return Err(FetchError::NotFound);
        };
        if len > self.state.max_upload {
            return Err(FetchError::NotFound);
        }
        tokio::fs::read(blob_file(dir, id))
            .await
            .map(Bytes::from)
            .map_err(|_| FetchError::Gone)
    }

    /// Keeps what a phone sent, so it can upload it again when a device
    /// asks (media retry). The oldest are forgotten past the bounds.
    pub(crate) fn remember_sent(&self, message_id: &str, sent: SentMedia) {
        let mut memory = lock(&self.state.sent);
        memory.bytes += sent.body.len();
        memory.order.push_back(message_id.to_owned());
        if let Some(old) = memory.by_id.insert(message_id.to_owned(), sent) {
            memory.bytes -= old.body.len();
        }
        while memory.order.len() > MAX_SENT_MEDIA || memory.bytes > MAX_SENT_BYTES {
            let Some(oldest) = memory.order.pop_front() else {
                break;
            };
            if let Some(old) = memory.by_id.remove(&oldest) {
                memory.bytes -= old.body.len();
            }
        }
    }

    /// What a phone sent under `message_id`, if still remembered.
    pub(crate) fn sent(&self, message_id: &str) -> Option<SentMedia> {
        lock(&self.state.sent).by_id.get(message_id).cloned()
    }

    /// Waits for the accept loop to end (after the shutdown signal).
    pub(crate) async fn stopped(&self) {
        let task = lock(&self.task).take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                warn!(%err, "media host accept loop failed");
            }
        }
    }
}

/// Blobs left in `dir` by an earlier run are served again; half-written
/// ones are removed.
fn index_dir(dir: &Path) -> io::Result<HashMap<String, Blob>> {
    std::fs::create_dir_all(dir)?;
    let mut blobs = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name.strip_suffix(".enc").filter(|id| is_id(id)) {
            let len = entry.metadata()?.len();
            blobs.insert(id.to_owned(), Blob::Disk { len });
        } else if name.strip_suffix(".part").is_some_and(is_id) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(blobs)
}

fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn blob_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.enc"))
}

/// The blob id of a direct path: `/v/t62.7118-24/{id}.enc[?…]`.
fn blob_id(path: &str) -> Option<&str> {
    let path = path.split('?').next()?;
    path.strip_prefix(BLOB_PREFIX)?
        .strip_suffix(".enc")
        .filter(|id| is_id(id))
}

impl State {
    fn new_id(&self) -> String {
        let mut id = [0u8; 16];
        lock(&self.rng).fill_bytes(&mut id);
        hex::encode(id)
    }

    fn answer(&self, id: &str) -> UploadAnswer {
        // The query mimics WhatsApp's (clients append their own
        // parameters with `&`); only the path names the blob.
        let direct_path = format!("{BLOB_PREFIX}{id}.enc?ccb=11-4&_nc_sid=5e03e0");
        UploadAnswer {
            url: Some(format!("{}{direct_path}", self.base_url)),
            direct_path,
        }
    }

    /// The newest auth token, minted when none is valid for another half
    /// ttl; the previous one stays accepted until it expires.
    fn current_auth(&self, now: u64) -> String {
        let mut auths = lock(&self.auths);
        auths.retain(|(_, until)| *until > now);
        if let Some((auth, until)) = auths.last() {
            if *until > now + self.auth_ttl_s / 2 {
                return auth.clone();
            }
        }
        let mut raw = [0u8; 24];
        lock(&self.rng).fill_bytes(&mut raw);
        // Standard base64 on purpose: `+`, `/` and `=` must survive the
        // client's URL encoding, as WhatsApp's tokens must.
        let auth = STANDARD.encode(raw);
        auths.push((auth.clone(), now + self.auth_ttl_s));
        if auths.len() > 2 {
            auths.remove(0);
        }
        auth
    }

    fn auth_ok(&self, auth: &str, now: u64) -> bool {
        lock(&self.auths)
            .iter()
            .any(|(known, until)| known == auth && *until > now)
    }
}

type Body = BoxBody<Bytes, io::Error>;

async fn accept_loop(
    state: Arc<State>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = JoinSet::new();
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let state = Arc::clone(&state);
                    connections.spawn(async move {
                        let service = service_fn(move |req| {
                            let state = Arc::clone(&state);
                            async move { Ok::<_, Infallible>(handle(&state, req).await) }
                        });
                        let served = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_TIMEOUT)
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                        if let Err(err) = served {
                            debug!(%err, "media connection ended");
                        }
                        drop(slot);
                    });
                }
                Err(err) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!(%err, "media host accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    // Transfers in flight are cut: the simulator is going away.
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<Body> {
    let now = super::unix_now();
    let path = req.uri().path().to_owned();
    match *req.method() {
        Method::POST if path.starts_with("/mms/") => upload(state, req, now).await,
        Method::GET | Method::HEAD => download(state, &path, req.method() == Method::HEAD).await,
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    }
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let body = Full::new(Bytes::from_static(text.as_bytes()))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response
}

/// Percent-decodes a query value (`+` stays `+`: clients encode it).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| percent_decode(value))
}

/// Tokens compare without base64 padding: whatsmeow pads, Baileys not.
fn unpadded(token: &str) -> &str {
    token.trim_end_matches('=')
}

async fn upload(state: &State, req: Request<Incoming>, now: u64) -> Response<Body> {
    match check_upload(state, &req, now) {
        Ok(path_token) => store_upload(state, req, &path_token).await,
        Err(refusal) => {
            // Read (a bounded part of) what the client sends before
            // answering: closing on unread bytes resets the connection,
            // and the client may never see the answer.
            let mut body = req.into_body();
            let mut drained = 0usize;
            while drained < DRAIN_LIMIT {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        drained += frame.data_ref().map_or(0, Bytes::len);
                    }
                    _ => break,
                }
            }
            refusal
        }
    }
}

/// What is read of a refused upload's body before answering.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// The path, auth, token and announced length of an upload; the path's
/// token when they are acceptable.
#[allow(clippy::result_large_err)] // the refusal is the response itself
fn check_upload(
    state: &State,
    req: &Request<Incoming>,
    now: u64,
) -> Result<String, Response<Body>> {
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let mut segments = path.trim_start_matches("/mms/").splitn(2, '/');
    let (Some(kind), Some(path_token)) = (segments.next(), segments.next()) else {
        return Err(status(StatusCode::NOT_FOUND, "no such upload path"));
    };
    if !MediaType::is_mms_type(kind) {
        return Err(status(StatusCode::NOT_FOUND, "unknown media type"));
    }
    let Some(path_token) = percent_decode(path_token) else {
        return Err(status(StatusCode::BAD_REQUEST, "bad token"));
    };
    let auth = query_param(query, "auth").unwrap_or_default();
    if !state.auth_ok(&auth, now) {
        return Err(status(StatusCode::UNAUTHORIZED, "unknown or expired auth"));
    }
    let token = query_param(query, "token").unwrap_or_default();
    if unpadded(&token) != unpadded(&path_token) {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "token differs from the path's",
        ));
    }
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|len| len > state.max_upload) {
        return Err(status(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body larger than the upload limit",
        ));
    }
    Ok(path_token)
}

/// Streams an accepted upload into the store, checking its hash.
async fn store_upload(state: &State, req: Request<Incoming>, path_token: &str) -> Response<Body> {
    let id = state.new_id();
    // Checked against the limit already: room for the whole body up front,
    // so a memory blob is never copied while it grows.
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .min(state.max_upload);
    let mut sink = match Sink::open(&state.store, &id, announced).await {
        Ok(sink) => sink,
        Err(err) => {
            warn!(%err, "cannot store upload");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the upload");
        }
    };
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut body = req.into_body();
    let failure = loop {
        let frame = match body.frame().await {
            None => break None,
            Some(Err(err)) => {
                debug!(%err, "upload body failed");
                break Some(status(StatusCode::BAD_REQUEST, "upload body failed"));
            }
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len > state.max_upload {
            break Some(status(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body larger than the upload limit",
            ));
        }
        hasher.update(&data);
        if let Err(err) = sink.write(data).await {
            warn!(%err, "cannot store upload");
            break Some(status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot store the upload",
            ));
        }
    };
    if let Some(response) = failure {
        sink.discard().await;
        return response;
    }
    let digest: [u8; 32] = hasher.finalize().into();
    if URL_SAFE_NO_PAD.encode(digest) != unpadded(path_token) {
        sink.discard().await;
        return status(StatusCode::BAD_REQUEST, "token is not the body's SHA-256");
    }
    let blob = match sink.commit().await {
        Ok(blob) => blob,
        Err(err) => {
            warn!(%err, "cannot store upload");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "cannot store the upload");
        }
    };
    lock(&state.blobs).insert(id.clone(), blob);
    debug!(len, "media uploaded");
    let json = upload_answer_json(&state.answer(&id));
    let mut response = Response::new(Full::new(Bytes::from(json)).map_err(|n| match n {}).boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// Where an upload's bytes go as they arrive: one copy, in memory or in a
/// `.part` file renamed into place only once the token checked out.
enum Sink {
    Memory(Vec<u8>),
    Disk {
        file: tokio::fs::File,
        part: PathBuf,
        done: PathBuf,
        len: u64,
    },
}

impl Sink {
    async fn open(store: &Store, id: &str, announced: u64) -> io::Result<Self> {
        Ok(match store {
            Store::Memory => {
                Sink::Memory(Vec::with_capacity(usize::try_from(announced).unwrap_or(0)))
            }
            Store::Disk(dir) => {
                let part = dir.join(format!("{id}.part"));
                Sink::Disk {
                    file: tokio::fs::File::create(&part).await?,
                    part,
                    done: blob_file(dir, id),
                    len: 0,
                }
            }
        })
    }

    async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Sink::Memory(buf) => buf.extend_from_slice(&data),
            Sink::Disk { file, len, .. } => {
                file.write_all(&data).await?;
                *len += data.len() as u64;
            }
        }
        Ok(())
    }

    async fn commit(self) -> io::Result<Blob> {
        match self {
            Sink::Memory(buf) => Ok(Blob::Memory(Bytes::from(buf))),
            Sink::Disk {
                mut file,
                part,
                done,
                len,
            } => {
                file.flush().await?;
                drop(file);
                tokio::fs::rename(&part, &done).await?;
                Ok(Blob::Disk { len })
            }
        }
    }

    async fn discard(self) {
        if let Sink::Disk { file, part, .. } = self {
            drop(file);
            if let Err(err) = tokio::fs::remove_file(&part).await {
                warn!(%err, "partial upload not removed");
            }
        }
    }
}

async fn download(state: &State, path: &str, head_only: bool) -> Response<Body> {
    let Some(id) = blob_id(path) else {
        return status(StatusCode::NOT_FOUND, "no such media");
    };
    let found = match lock(&state.blobs).get(id) {
        None => None,
        Some(Blob::Expired) => return status(StatusCode::GONE, "media expired"),
        Some(Blob::Memory(bytes)) => Some(Ok(bytes.clone())),
        Some(Blob::Disk { len }) => Some(Err(*len)),
    };
    let (len, body) = match found {
        None => return status(StatusCode::NOT_FOUND, "no such media"),
        Some(Ok(bytes)) => (
            bytes.len() as u64,
            Full::new(bytes).map_err(|never| match never {}).boxed(),
        ),
        Some(Err(len)) => {
            let Store::Disk(dir) = &state.store else {
                return status(StatusCode::NOT_FOUND, "no such media");
            };
            match tokio::fs::File::open(blob_file(dir, id)).await {
                Ok(file) => (len, file_body(file)),
                // Expired between the lookup and the open.
                Err(_) => return status(StatusCode::GONE, "media expired"),
            }
        }
    };
    let body = if head_only {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    } else {
        body
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, len.into());
    headers.insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Streams a file a chunk at a time (never the whole blob in memory).
fn file_body(mut file: tokio::fs::File) -> Body {
    let (tx, rx) = mpsc::channel::<io::Result<Frame<Bytes>>>(2);
    tokio::spawn(async move {
        loop {
            let mut buf = vec![0u8; READ_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(Ok(Frame::data(Bytes::from(buf)))).await.is_err() {
                        break;
                    }
                }
                Err(err) => {
                    let _ = tx.send(Err(err)).await;
                    break;
                }
            }
        }
    });
    StreamBody::new(ReceiverStream::new(rx)).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_paths_name_blobs() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            blob_id(&format!("{BLOB_PREFIX}{id}.enc?ccb=11-4")),
            Some(id)
        );
        assert_eq!(blob_id(&format!("{BLOB_PREFIX}{id}.enc")), Some(id));
        assert_eq!(blob_id(&format!("{BLOB_PREFIX}../{id}.enc")), None);
        assert_eq!(blob_id("/v/t62.7118-24/short.enc"), None);
        assert_eq!(blob_id("/mms/image/x"), None);
    }

    #[test]
    fn query_values_decode() {
        assert_eq!(
            query_param("auth=a%2Bb%2F%3D&token=x", "auth").as_deref(),
            Some("a+b/=")
        );
        assert_eq!(query_param("token=x", "auth"), None);
        assert_eq!(query_param("auth=%zz", "auth"), None);
        assert_eq!(percent_decode("%"), None);
    }
}
