//! Webhook connections: plain TCP for `http://` targets, TLS (rustls, ring)
//! for `https://` ones, verified against the webpki roots plus an optional
//! PEM bundle of private CAs. Plugs into hyper's pooled client as its
//! connector, so both kinds of connection are kept alive and reused.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why the TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error("webhook CA file {0}: {1}")]
    CaFile(PathBuf, String),
    #[error("webhook CA file {0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Client TLS settings for webhooks: the webpki roots, plus the CAs of
/// `ca_file` (PEM, any number of certificates) when given. HTTP/1.1 only,
/// as the sender speaks nothing else.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let mut added = 0usize;
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| TlsError::CaFile(path.to_path_buf(), e.to_string()))?;
        for cert in certs {
            let cert = cert.map_err(|e| TlsError::CaFile(path.to_path_buf(), e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| TlsError::CaFile(path.to_path_buf(), e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(TlsError::NoCertificate(path.to_path_buf()));
        }
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// hyper's connector for webhook targets: TCP, then TLS for `https`.
#[derive(Clone)]
pub(crate) struct Connector {
    tcp: HttpConnector,
    tls: TlsConnector,
}

impl Connector {
    pub(crate) fn new(mut tcp: HttpConnector, tls: Arc<ClientConfig>) -> Self {
        // The scheme decides below whether TLS follows; the TCP part must
        // not refuse https URIs itself.
        tcp.enforce_http(false);
        Self {
            tcp,
            tls: TlsConnector::from(tls),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = uri.scheme_str() == Some("https");
        let host = uri.host().unwrap_or_default().to_owned();
        let tcp = self.tcp.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?.into_inner();
            if !https {
                return Ok(Conn(TokioIo::new(Stream::Plain(tcp))));
            }
            // IP literals come bracketed in URIs (`[::1]`); the certificate
            // names the bare address.
            let name = host.trim_start_matches('[').trim_end_matches(']');
            let server_name = ServerName::try_from(name.to_owned())
                .map_err(|_| format!("{name:?} is not a valid TLS server name"))?;
            let stream = tls.connect(server_name, tcp).await?;
            Ok(Conn(TokioIo::new(Stream::Tls(Box::new(stream)))))
        })
    }
}

/// A webhook connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The connection as hyper sees it.
pub(crate) struct Conn(TokioIo<Stream>);

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use tokio::io::AsyncWriteExt;

    /// A CA in a PEM file and a TLS listener on 127.0.0.1 with a
    /// certificate it issued, answering every connection with one 204.
    async fn tls_server(dir: &Path) -> (PathBuf, std::net::SocketAddr) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("key");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, ca.pem()).expect("write");

        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 4096];
                        let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await;
                        let _ = tls
                            .write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
                            .await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        (pem, addr)
    }

    async fn post(config: ClientConfig, url: &str) -> Result<u16, String> {
        let client: Client<Connector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .build(Connector::new(HttpConnector::new(), Arc::new(config)));
        let request = axum::http::Request::post(url)
            .body(Full::new(Bytes::from_static(b"{}")))
            .map_err(|e| e.to_string())?;
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
                .await
                .map_err(|_| "timeout".to_owned())?
                .map_err(|e| format!("{e:?}"))?;
        Ok(response.status().as_u16())
    }

    #[tokio::test]
    async fn https_needs_a_trusted_ca() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (pem, addr) = tls_server(dir.path()).await;
        let url = format!("https://{addr}/hook");
        let trusted = client_config(Some(&pem)).expect("config");
        assert_eq!(post(trusted, &url).await, Ok(204));
        let untrusted = client_config(None).expect("config");
        let err = post(untrusted, &url).await.expect_err("untrusted CA");
        assert!(err.contains("UnknownIssuer"), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").expect("write");
        assert!(matches!(
            client_config(Some(&empty)),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(matches!(
            client_config(Some(&dir.path().join("missing.pem"))),
            Err(TlsError::CaFile(..))
        ));
        assert!(client_config(None).is_ok());
    }
}
