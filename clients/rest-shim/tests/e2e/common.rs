//! Test harness: a wagate gateway with its in-process simulator (as `wagate
//! serve --sim` runs it) on loopback port 0 in a temp dir, the shim in front
//! of it, an HTTP client, and a local webhook receiver on port 0.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use wagate_rest::proto::gateway::gateway_client::GatewayClient;
use wagate_rest::proto::gateway::{event, events_request, Event, EventsRequest, SessionState};
use wagate_rest::proto::sim::simulator_client::SimulatorClient;
use wagate_rest::proto::sim::{CreateAccountRequest, InboxMessage, InboxRequest, ScanQrRequest};
use wagate_rest::Config;

/// Upper bound for any single expected thing.
pub const WAIT: Duration = Duration::from_secs(20);
pub const KEY: &str = "test-key-1";

/// A gateway with the simulator in-process, like `wagate serve --sim`.
pub struct Gateway {
    pub running: Option<wagate::app::Running>,
    pub addr: SocketAddr,
    pub grpc: GatewayClient<Channel>,
    pub sim: SimulatorClient<Channel>,
    pub dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start() -> Gateway {
        Gateway::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut wagate::app::ServeOptions)) -> Gateway {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut opts = wagate::app::ServeOptions::local(dir.path().join("gateway"));
        opts.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        opts.sim = true;
        opts.store_key = Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
        opts.backoff = wagate::runtime::Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_millis(500),
        };
        opts.handshakes_per_second = 1000;
        opts.shutdown_grace = Duration::from_secs(2);
        tweak(&mut opts);
        let running = wagate::app::start(opts).await.expect("gateway starts");
        let addr = running.addr;
        let grpc = GatewayClient::connect(format!("http://{addr}"))
            .await
            .expect("gateway connects");
        let sim = SimulatorClient::connect(format!("http://{addr}"))
            .await
            .expect("simulator connects");
        Gateway {
            running: Some(running),
            addr,
            grpc,
            sim,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shim configuration for this gateway, state in `name` under the temp
    /// dir, fast retries.
    pub fn shim_config(&self, name: &str) -> Config {
        let mut cfg = Config::new(self.url(), self.dir.path().join(name));
        cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        cfg.webhook_retry_base_ms = 20;
        cfg.webhook_retry_max_ms = 200;
        cfg.webhook_timeout_ms = 5_000;
        // Tests poll quickly; the rate limit has tests of its own.
        cfg.rate_limit = Some(0);
        cfg
    }

    /// Follows a session's events from the beginning (open it before the
    /// session is created).
    pub async fn follow(&self, session: &str) -> Follower {
        let stream = self
            .grpc
            .clone()
            .events(EventsRequest {
                session_ids: vec![session.to_owned()],
                types: Vec::new(),
                start: Some(events_request::Start::FromBeginning(true)),
            })
            .await
            .expect("events open")
            .into_inner();
        Follower {
            stream,
            seen: Vec::new(),
        }
    }

    pub async fn create_account(&self, phone: &str, name: &str) {
        self.sim
            .clone()
            .create_account(CreateAccountRequest {
                phone: phone.to_owned(),
                push_name: name.to_owned(),
            })
            .await
            .expect("account created");
    }

    pub async fn scan(&self, phone: &str, qr: &str) {
        self.sim
            .clone()
            .scan_qr(ScanQrRequest {
                phone: phone.to_owned(),
                qr: qr.to_owned(),
                push_name: "Owner".to_owned(),
            })
            .await
            .expect("QR scanned");
    }

    pub async fn send_from_phone(&self, from: &str, to: &str, text: &str) -> String {
        self.sim
            .clone()
            .send_text(wagate_rest::proto::sim::SendTextRequest {
                from_phone: from.to_owned(),
                to: to.to_owned(),
                text: text.to_owned(),
                from_lid: false,
            })
            .await
            .expect("phone sends")
            .into_inner()
            .message_id
    }

    pub async fn inbox(&self, phone: &str) -> Vec<InboxMessage> {
        self.sim
            .clone()
            .inbox(InboxRequest {
                phone: phone.to_owned(),
            })
            .await
            .expect("inbox")
            .into_inner()
            .messages
    }

    /// The message with `text` in `phone`'s inbox (call it once the
    /// gateway reported the message delivered).
    pub async fn inbox_message(&self, phone: &str, text: &str) -> InboxMessage {
        let inbox = self.inbox(phone).await;
        inbox
            .iter()
            .find(|m| m.text == text)
            .cloned()
            .unwrap_or_else(|| panic!("{phone}'s inbox has no {text:?}: {inbox:?}"))
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// One session's gateway events, read as they come.
pub struct Follower {
    stream: tonic::Streaming<Event>,
    pub seen: Vec<Event>,
}

impl Follower {
    /// Reads until an event matches; returns it (all are kept in `seen`).
    pub async fn until(&mut self, what: &str, mut matches: impl FnMut(&Event) -> bool) -> Event {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let event = self
                    .stream
                    .message()
                    .await
                    .expect("event stream healthy")
                    .expect("event stream open");
                self.seen.push(event.clone());
                if matches(&event) {
                    return event;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {:#?}", self.seen))
    }

    pub async fn qr(&mut self) -> String {
        let ev = self.until("a QR event", |e| qr_of(e).is_some()).await;
        qr_of(&ev).unwrap_or_default().to_owned()
    }

    /// Waits for the delivery receipt of `message_id` (the phone decrypted it).
    pub async fn delivered(&mut self, message_id: &str) -> Event {
        self.until(&format!("delivery receipt of {message_id}"), |e| {
            matches!(&e.payload, Some(event::Payload::Receipt(r))
                if r.message_ids.iter().any(|m| m == message_id))
        })
        .await
    }

    pub async fn state(&mut self, state: SessionState) -> Event {
        self.until(&format!("{state:?}"), |e| is_state(e, state))
            .await
    }
}

pub fn qr_of(event: &Event) -> Option<&str> {
    match &event.payload {
        Some(event::Payload::Qr(q)) => Some(&q.qr),
        _ => None,
    }
}

pub fn is_state(event: &Event, state: SessionState) -> bool {
    matches!(&event.payload, Some(event::Payload::Connection(c)) if c.state == state as i32)
}

pub async fn start_shim(cfg: Config) -> Shim {
    let running = wagate_rest::start(cfg).await.expect("shim starts");
    Shim {
        base: format!("http://{}", running.addr),
        running: Some(running),
    }
}

pub struct Shim {
    pub base: String,
    running: Option<wagate_rest::Running>,
}

impl Shim {
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        call(Method::GET, &format!("{}{path}", self.base), &[], None).await
    }

    pub async fn get_key(&self, path: &str) -> (u16, Value) {
        call(
            Method::GET,
            &format!("{}{path}", self.base),
            &[("x-api-key", KEY)],
            None,
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let raw = body.to_string();
        call(
            Method::POST,
            &format!("{}{path}", self.base),
            &[],
            Some(raw.as_bytes()),
        )
        .await
    }

    pub async fn post_key(&self, path: &str, body: Value) -> (u16, Value) {
        let raw = body.to_string();
        call(
            Method::POST,
            &format!("{}{path}", self.base),
            &[("x-api-key", KEY)],
            Some(raw.as_bytes()),
        )
        .await
    }

    pub async fn delete(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        call(
            Method::DELETE,
            &format!("{}{path}", self.base),
            headers,
            None,
        )
        .await
    }

    /// GETs `path` until the answer satisfies `pred`. The gateway commits an
    /// event just before its session's status shows the new state, so a
    /// status read right after a webhook may still show the previous one.
    pub async fn get_until(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        what: &str,
        pred: impl Fn(u16, &Value) -> bool,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut last = (0, Value::Null);
        let done = tokio::time::timeout(WAIT, async {
            loop {
                last = call(Method::GET, &url, headers, None).await;
                if pred(last.0, &last.1) {
                    return;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        if done.is_err() {
            panic!("GET {path} never showed {what}; last answer {last:?}");
        }
        last
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> (u16, Value) {
        call(method, &format!("{}{path}", self.base), headers, body).await
    }
}

/// One HTTP request from the local address `from`; the answer's status,
/// headers and JSON body (Null if not JSON).
pub async fn call_from(
    from: std::net::IpAddr,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(from));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut req = axum::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("answer in time")
        .expect("request succeeds");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// One HTTP request; the answer's status and JSON body (Null if not JSON).
pub async fn call(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, Value) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut req = axum::http::Request::builder().method(method).uri(url);
    let mut has_type = false;
    for (k, v) in headers {
        has_type |= k.eq_ignore_ascii_case("content-type");
        req = req.header(*k, *v);
    }
    if body.is_some() && !has_type {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, client.request(req))
        .await
        .expect("answer in time")
        .expect("request succeeds");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// A webhook as the receiver got it.
#[derive(Clone, Debug)]
pub struct Hook {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
    pub raw: Bytes,
    /// What the receiver answered.
    pub status: u16,
}

impl Hook {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn event_id(&self) -> String {
        self.header("x-wagate-event-id").to_owned()
    }
}

struct RecvState {
    status: AtomicU16,
    attempts: AtomicUsize,
    tx: mpsc::UnboundedSender<Hook>,
}

/// A local HTTP server that records every webhook attempt and answers with
/// a settable status (200 by default). It closes each connection after the
/// answer, so it can be taken down and brought back on the same port.
pub struct Receiver {
    pub addr: SocketAddr,
    /// Serves https with this TLS setup when set.
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<RecvState>,
    rx: mpsc::UnboundedReceiver<Hook>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Every attempt received so far, in order.
    pub log: Vec<Hook>,
}

async fn record(State(state): State<Arc<RecvState>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let raw = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = state.status.load(Ordering::SeqCst);
    state.attempts.fetch_add(1, Ordering::SeqCst);
    let _ = state.tx.send(Hook {
        path,
        headers,
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw,
        status,
    });
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        [("connection", "close")],
        "ok",
    )
        .into_response()
}

impl Receiver {
    pub async fn start() -> Receiver {
        Receiver::start_inner(None).await
    }

    /// A receiver serving https with a certificate of `ca` for 127.0.0.1
    /// and localhost.
    pub async fn start_https(ca: &TestCa) -> Receiver {
        Receiver::start_inner(Some(ca.acceptor())).await
    }

    async fn start_inner(tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(RecvState {
            status: AtomicU16::new(200),
            attempts: AtomicUsize::new(0),
            tx,
        });
        let mut r = Receiver {
            addr: listener.local_addr().expect("addr"),
            tls,
            state,
            rx,
            task: None,
            log: Vec::new(),
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let router = axum::Router::new()
            .fallback(record)
            .with_state(self.state.clone());
        let Some(tls) = self.tls.clone() else {
            self.task = Some(tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            }));
            return;
        };
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let tls = tls.clone();
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                conns.spawn(async move {
                    // A failed handshake (e.g. a client that does not trust
                    // the CA) just ends this connection.
                    let Ok(stream) = tls.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Stops listening: connections are refused until `up`.
    pub async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind receiver");
        self.serve(listener);
    }

    /// The next attempt.
    pub async fn next(&mut self, what: &str) -> Hook {
        let hook = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}; got {:#?}", self.log))
            .expect("receiver open");
        self.log.push(hook.clone());
        hook
    }

    /// The next accepted (2xx) attempt matching `pred`.
    pub async fn until(&mut self, what: &str, mut pred: impl FnMut(&Hook) -> bool) -> Hook {
        loop {
            let hook = self.next(what).await;
            if hook.status < 300 && pred(&hook) {
                return hook;
            }
        }
    }

    /// Accepted attempts so far.
    pub fn accepted(&self) -> Vec<&Hook> {
        self.log.iter().filter(|h| h.status < 300).collect()
    }
}

/// Decodes a `data:image/png;base64,` QR image back to its text.
pub fn decode_qr(data_url: &str) -> String {
    let b64 = data_url
        .strip_prefix("data:image/png;base64,")
        .unwrap_or_else(|| panic!("not a PNG data URL: {data_url:.40}"));
    decode_qr_base64(b64)
}

/// Decodes a bare base64 PNG QR image back to its text.
pub fn decode_qr_base64(b64: &str) -> String {
    assert!(!b64.starts_with("data:"), "a data URL, not bare base64");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "exactly one QR code in the image");
    grids[0].decode().expect("QR decodes").1
}

/// JSON kinds for field checks.
#[derive(Clone, Copy, Debug)]
pub enum K {
    Str,
    Int,
    Bool,
    Obj,
    Arr,
    /// null or a string.
    OptStr,
    /// null or an object.
    OptObj,
}

/// Asserts that `value` has each field with its kind.
#[track_caller]
pub fn fields(value: &Value, expected: &[(&str, K)]) {
    for (name, kind) in expected {
        let v = value
            .get(name)
            .unwrap_or_else(|| panic!("field {name:?} missing in {value:#}"));
        let ok = match kind {
            K::Str => v.is_string(),
            K::Int => v.is_i64() || v.is_u64(),
            K::Bool => v.is_boolean(),
            K::Obj => v.is_object(),
            K::Arr => v.is_array(),
            K::OptStr => v.is_null() || v.is_string(),
            K::OptObj => v.is_null() || v.is_object(),
        };
        assert!(ok, "field {name:?} should be {kind:?}, is {v} in {value:#}");
    }
}

/// `YYYY-MM-DDTHH:MM:SS(.mmm)Z`.
#[track_caller]
pub fn assert_iso(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let b = s.as_bytes();
    let ok = s.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && s.ends_with('Z');
    assert!(ok, "not an ISO-8601 UTC time: {s}");
}

/// The QR text in Baileys' form (`2@ref,noise,identity,adv`).
pub fn baileys_form(qr: &str) -> String {
    let rest = qr
        .strip_prefix("https://wa.me/settings/linked_devices#")
        .unwrap_or(qr);
    rest.split(',').take(4).collect::<Vec<_>>().join(",")
}

/// Checks `X-Wagate-Signature-256` against `secret`.
pub fn signature_ok(hook: &Hook, secret: &str) -> bool {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(&hook.raw);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    hook.header("x-wagate-signature-256") == want
}

/// Parsed `cursor-part` event id.
pub fn id_parts(id: &str) -> (u64, u32) {
    let (c, p) = id.split_once('-').expect("cursor-part");
    (c.parse().expect("cursor"), p.parse().expect("part"))
}

pub fn query_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A private CA made for one test: its PEM file (for
/// `--webhook-ca-file`) and server certificates for 127.0.0.1/localhost.
pub struct TestCa {
    pub pem_file: std::path::PathBuf,
    server_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    server_key: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wagate-rest test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("server cert");

        let dir = tempfile::tempdir().expect("temp dir");
        let pem_file = dir.path().join("ca.pem");
        std::fs::write(&pem_file, ca_cert.pem()).expect("write CA");
        TestCa {
            pem_file,
            server_chain: vec![cert.der().clone()],
            server_key: key.serialize_der(),
            _dir: dir,
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.server_key.clone().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(self.server_chain.clone(), key)
        .expect("server TLS config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}
