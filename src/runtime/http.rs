//! A small HTTP/1.1 client for media: uploads to and downloads from
//! WhatsApp's media hosts, and fetching a `Send`'s media by URL. Bodies
//! stream in both directions (a 100 MB video is never held whole), every
//! request has a deadline, and redirects are followed only when asked, a
//! bounded number of times. `https` uses rustls with the web PKI roots;
//! plain `http` is for the simulator's media host on loopback.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::fetch_policy::FetchPolicy;

/// Longest wait for a TCP connection and TLS handshake.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);
/// Redirects followed when a request allows them.
pub(crate) const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error("bad URL {0}")]
    BadUrl(String),
    #[error("unsupported URL scheme {0} (http or https)")]
    Scheme(String),
    #[error("connect to {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("{0}")]
    Protocol(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The fetch policy keeps the gateway off this address.
    #[error("{host} is {addr}, a loopback, private or special address: media URLs must point to public hosts (allow one with --media-url-allow-host, or all with --media-url-allow-private)")]
    Forbidden {
        host: String,
        addr: std::net::IpAddr,
    },
}

/// An answer whose body has not been read yet.
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) headers: hyper::HeaderMap,
    body: Incoming,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The next piece of the body; `None` at its end.
    pub(crate) async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(HttpError::Protocol(format!("body: {e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The whole body, refused past `limit` bytes.
    pub(crate) async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if out.len() + chunk.len() > limit {
                return Err(HttpError::Protocol(format!(
                    "answer larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The declared body length, if any.
    pub(crate) fn content_length(&self) -> Option<u64> {
        self.headers
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

/// The client; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpClient {
    tls: Arc<rustls::ClientConfig>,
    user_agent: &'static str,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub(crate) fn new() -> Self {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // The ring provider supports rustls' default protocol versions.
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            tls: Arc::new(tls),
            user_agent: concat!("wagate/", env!("CARGO_PKG_VERSION")),
        }
    }

    /// `GET url`, following up to [`MAX_REDIRECTS`] redirects when
    /// `follow` is set, answered (status and headers) within `within`.
    pub(crate) async fn get(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        follow: bool,
        within: Duration,
    ) -> Result<Response, HttpError> {
        self.get_within(url, headers, follow, within, None).await
    }

    /// `GET url` for a URL an API caller gave: redirects followed, and
    /// every hop only to addresses `policy` permits.
    pub(crate) async fn get_guarded(
        &self,
        url: &str,
        policy: &FetchPolicy,
        within: Duration,
    ) -> Result<Response, HttpError> {
        self.get_within(url, &[], true, within, Some(policy)).await
    }

    async fn get_within(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        follow: bool,
        within: Duration,
        policy: Option<&FetchPolicy>,
    ) -> Result<Response, HttpError> {
        let mut url = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let response = self
                .send(
                    Method::GET,
                    &url,
                    headers,
                    http_body_util::Empty::<Bytes>::new(),
                    within,
                    policy,
                )
                .await?;
            if !(follow && response.status.is_redirection()) {
                return Ok(response);
            }
            let Some(next) = response
                .headers
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
            else {
                return Ok(response);
            };
            url = resolve(&url, next)?;
        }
        Err(HttpError::TooManyRedirects)
    }

    /// `POST url` with a streamed body.
    pub(crate) async fn post<B>(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: B,
        within: Duration,
    ) -> Result<Response, HttpError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.send(Method::POST, url, headers, body, within, None)
            .await
    }

    async fn send<B>(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: B,
        within: Duration,
        policy: Option<&FetchPolicy>,
    ) -> Result<Response, HttpError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let uri: Uri = url.parse().map_err(|_| HttpError::BadUrl(quote(url)))?;
        let target = Target::of(&uri)?;
        let exchange = async {
            let tcp = tokio::time::timeout(CONNECT_WITHIN, target.connect(policy))
                .await
                .map_err(|_| target.connect_error("timed out"))??;
            let _ = tcp.set_nodelay(true);
            let mut request = Request::builder()
                .method(method)
                .uri(target.path_and_query(&uri))
                .header(hyper::header::HOST, target.authority())
                .header(hyper::header::USER_AGENT, self.user_agent);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let request = request
                .body(body)
                .map_err(|e| HttpError::Protocol(format!("request: {e}")))?;
            if target.tls {
                let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                    .map_err(|_| HttpError::BadUrl(quote(url)))?;
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.tls));
                let stream = tokio::time::timeout(CONNECT_WITHIN, connector.connect(name, tcp))
                    .await
                    .map_err(|_| target.connect_error("TLS handshake timed out"))?
                    .map_err(|e| target.connect_error(&format!("TLS: {e}")))?;
                exchange(TokioIo::new(stream), request).await
            } else {
                exchange(TokioIo::new(tcp), request).await
            }
        };
        tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| HttpError::Timeout(within))?
    }
}

/// One request on a fresh HTTP/1.1 connection; the connection is driven by
/// a task that ends with the body.
async fn exchange<S, B>(io: TokioIo<S>, request: Request<B>) -> Result<Response, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| HttpError::Protocol(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| HttpError::Protocol(e.to_string()))?;
    let (parts, body) = response.into_parts();
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Where a URL points.
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

impl Target {
    fn of(uri: &Uri) -> Result<Self, HttpError> {
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => return Err(HttpError::Scheme(other.unwrap_or("(none)").to_owned())),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| HttpError::BadUrl(quote(&uri.to_string())))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }

    /// A TCP connection to the target; with a policy, only to a resolved
    /// address it permits (the check and the connection use the same
    /// address).
    async fn connect(&self, policy: Option<&FetchPolicy>) -> Result<TcpStream, HttpError> {
        let policy = match policy {
            Some(p) if !p.trusts_host(&self.host) => p,
            _ => {
                return TcpStream::connect((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| self.connect_error(&e.to_string()))
            }
        };
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.connect_error(&e.to_string()))?;
        let mut failure = self.connect_error("the name has no address");
        for addr in addrs {
            if !policy.permits(&self.host, addr.ip()) {
                failure = HttpError::Forbidden {
                    host: self.host.clone(),
                    addr: addr.ip(),
                };
                continue;
            }
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => failure = self.connect_error(&e.to_string()),
            }
        }
        Err(failure)
    }

    fn authority(&self) -> String {
        let default = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn path_and_query(&self, uri: &Uri) -> String {
        uri.path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned())
    }

    fn connect_error(&self, reason: &str) -> HttpError {
        HttpError::Connect {
            host: format!("{}:{}", self.host, self.port),
            reason: reason.to_owned(),
        }
    }
}

/// `location` relative to `base` (absolute URLs, absolute paths and
/// protocol-relative `//host/…`; other relative forms are resolved against
/// the base's directory).
fn resolve(base: &str, location: &str) -> Result<String, HttpError> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return Ok(location.to_owned());
    }
    let uri: Uri = base.parse().map_err(|_| HttpError::BadUrl(quote(base)))?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| HttpError::BadUrl(quote(base)))?;
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
    Ok(format!("{scheme}://{authority}{dir}/{location}"))
}

/// A URL as errors quote it: at most 200 characters, no query (it may carry
/// tokens).
pub(crate) fn quote(url: &str) -> String {
    let url = url.split('?').next().unwrap_or(url);
    let mut quoted: String = url.chars().take(200).collect();
    if quoted.len() < url.len() {
        quoted.push('…');
    }
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server: reads one request head (and `body_len` bytes),
    /// answers with `answer`, and hands back what it read.
    async fn serve_once(answer: &'static str) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.expect("read");
                seen.extend_from_slice(&buf[..n]);
                if n == 0 || request_complete(&seen) {
                    break;
                }
            }
            socket.write_all(answer.as_bytes()).await.expect("write");
            socket.shutdown().await.ok();
            seen
        });
        (format!("http://{addr}"), task)
    }

    /// Whether `seen` holds a whole request (head, and body by its length).
    fn request_complete(seen: &[u8]) -> bool {
        let text = String::from_utf8_lossy(seen);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        body.len() >= length
    }

    #[tokio::test]
    async fn posts_a_body_and_reads_the_answer() {
        let (base, server) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello").await;
        let client = HttpClient::new();
        let body = http_body_util::Full::new(Bytes::from_static(b"payload!"));
        let response = client
            .post(
                &format!("{base}/mms/image/tok?auth=a"),
                &[("content-type", "application/octet-stream")],
                body,
                Duration::from_secs(10),
            )
            .await
            .expect("post");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.content_length(), Some(5));
        assert_eq!(response.bytes(100).await.expect("body"), b"hello");
        let seen = String::from_utf8(server.await.expect("server")).expect("utf8");
        assert!(
            seen.starts_with("POST /mms/image/tok?auth=a HTTP/1.1\r\n"),
            "{seen}"
        );
        assert!(seen.ends_with("payload!"), "{seen}");
    }

    #[tokio::test]
    async fn body_limit_is_enforced() {
        let (base, _server) =
            serve_once("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
        let response = HttpClient::new()
            .get(&base, &[], false, Duration::from_secs(10))
            .await
            .expect("get");
        assert!(response.bytes(4).await.is_err());
    }

    #[tokio::test]
    async fn redirects_are_followed_only_when_asked() {
        let (target, _t) = serve_once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let answer: &'static str = Box::leak(
            format!("HTTP/1.1 302 Found\r\nlocation: {target}/file\r\ncontent-length: 0\r\n\r\n")
                .into_boxed_str(),
        );
        let (first, _f) = serve_once(answer).await;
        let client = HttpClient::new();
        let response = client
            .get(&first, &[], true, Duration::from_secs(10))
            .await
            .expect("get");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.bytes(10).await.expect("body"), b"ok");

        let (again, _a) = serve_once(answer).await;
        let response = client
            .get(&again, &[], false, Duration::from_secs(10))
            .await
            .expect("get");
        assert_eq!(response.status, StatusCode::FOUND);
    }

    #[tokio::test]
    async fn bad_urls_and_schemes_are_refused() {
        let client = HttpClient::new();
        let within = Duration::from_secs(5);
        assert!(matches!(
            client.get("ftp://example.com/x", &[], false, within).await,
            Err(HttpError::Scheme(_))
        ));
        assert!(matches!(
            client.get("not a url", &[], false, within).await,
            Err(HttpError::BadUrl(_))
        ));
    }

    #[test]
    fn relative_locations_resolve() {
        let base = "http://h:1/a/b?q=1";
        assert_eq!(
            resolve(base, "https://x/y").expect("resolves"),
            "https://x/y"
        );
        assert_eq!(resolve(base, "/c").expect("resolves"), "http://h:1/c");
        assert_eq!(resolve(base, "//o/p").expect("resolves"), "http://o/p");
        assert_eq!(resolve(base, "c").expect("resolves"), "http://h:1/a/c");
    }

    #[test]
    fn quoted_urls_drop_the_query_and_are_capped() {
        assert_eq!(quote("https://h/p?auth=secret"), "https://h/p");
        assert_eq!(quote(&"a".repeat(500)).chars().count(), 201);
    }
}
