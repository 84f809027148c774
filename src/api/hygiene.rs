//! Connection hygiene on the gRPC port: what a client may hold open.
//!
//! - A connection that has not sent the HTTP/2 preface within
//!   `preface_timeout` is closed (a port scanner or a stuck client holds a
//!   descriptor otherwise forever).
//! - A connection with no call in progress for `idle_timeout` is closed;
//!   one with a call in progress (an `Events` stream waiting for events)
//!   never is. Half-open connections (the peer vanished) are found by
//!   HTTP/2 keepalive pings, set on the server.
//! - At most `max_connections` at once; more are closed on accept.
//! - Descriptors: sessions need one each to reconnect, so an API
//!   connection is refused when its descriptor lands within `fd_reserve` of
//!   the open-file limit (Linux hands out the lowest free descriptor, so
//!   the number says how many are in use). When the limit is reached
//!   anyway, accepting pauses briefly instead of spinning.
//!
//! Calls are counted per connection by [`CallCounter`], a layer that sees
//! every request and the end of its response body.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Bytes of the HTTP/2 client preface (`PRI * HTTP/2.0…`).
const PREFACE: usize = 24;
/// Pause after an accept failed for want of descriptors.
const EMFILE_PAUSE: Duration = Duration::from_millis(100);

/// The limits; see the module documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hygiene {
    pub max_connections: usize,
    pub preface_timeout: Duration,
    pub idle_timeout: Duration,
    pub fd_reserve: u64,
}

impl Default for Hygiene {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            preface_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            fd_reserve: 256,
        }
    }
}

/// Accepts connections on `listener` within the limits of `hygiene`. The
/// listener closes when the stream is dropped (the server stopped).
pub fn incoming(
    listener: TcpListener,
    hygiene: Hygiene,
) -> impl tokio_stream::Stream<Item = io::Result<Guarded>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        tokio::select! {
            () = accept_loop(&listener, hygiene, &tx) => {}
            () = tx.closed() => {}
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: &TcpListener,
    hygiene: Hygiene,
    tx: &tokio::sync::mpsc::Sender<io::Result<Guarded>>,
) {
    let slots = Arc::new(Semaphore::new(hygiene.max_connections.max(1)));
    let fd_limit = open_file_limit();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_out_of_descriptors(&e) => {
                warn!("API connection not accepted: {e}; pausing accepts");
                tokio::time::sleep(EMFILE_PAUSE).await;
                continue;
            }
            Err(e) => {
                debug!("accept: {e}");
                continue;
            }
        };
        let fd = u64::try_from(stream.as_raw_fd()).unwrap_or(u64::MAX);
        if fd_limit.is_some_and(|limit| fd.saturating_add(hygiene.fd_reserve) >= limit) {
            warn!(%peer, "API connection refused: descriptors are kept for sessions");
            continue;
        }
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            warn!(
                %peer,
                max = hygiene.max_connections,
                "API connection refused: too many connections"
            );
            continue;
        };
        let _ = stream.set_nodelay(true);
        if tx
            .send(Ok(Guarded::new(stream, hygiene, permit)))
            .await
            .is_err()
        {
            return;
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The soft open-file limit, if known.
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives on this
    // stack frame for the duration of the call.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// What a connection's calls and its timers share.
#[derive(Debug)]
pub struct ConnState {
    /// Calls whose response has not ended.
    calls: AtomicUsize,
    /// When the last call ended, in ms since `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// What tonic hands the services about a connection: the usual TCP info,
/// and the call counter the [`CallCounter`] layer updates.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    state: Arc<ConnState>,
}

/// An accepted API connection under the limits.
pub struct Guarded {
    stream: TcpStream,
    state: Arc<ConnState>,
    hygiene: Hygiene,
    /// Preface bytes still expected.
    preface_left: usize,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
}

impl Guarded {
    fn new(stream: TcpStream, hygiene: Hygiene, slot: OwnedSemaphorePermit) -> Self {
        let epoch = Instant::now();
        Self {
            stream,
            state: Arc::new(ConnState {
                calls: AtomicUsize::new(0),
                idle_since_ms: AtomicU64::new(0),
                epoch,
            }),
            hygiene,
            preface_left: PREFACE,
            timer: Box::pin(tokio::time::sleep_until(epoch + hygiene.preface_timeout)),
            _slot: slot,
        }
    }

    /// Whether the connection has outlived its welcome; re-arms the timer
    /// otherwise (and registers it with the task).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            if self.preface_left > 0 {
                return Some(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no HTTP/2 preface in time",
                ));
            }
            let idle_for = self
                .state
                .now_ms()
                .saturating_sub(self.state.idle_since_ms.load(Ordering::Acquire));
            let idle = Duration::from_millis(idle_for);
            if self.state.calls.load(Ordering::Acquire) == 0 && idle >= self.hygiene.idle_timeout {
                return Some(io::Error::new(io::ErrorKind::TimedOut, "idle connection"));
            }
            // A call is running, or one ended recently: look again when the
            // idle time could next run out.
            let wait = self
                .hygiene
                .idle_timeout
                .saturating_sub(idle)
                .max(Duration::from_millis(10));
            self.timer.as_mut().reset(Instant::now() + wait);
        }
    }
}

impl Connected for Guarded {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.stream.connect_info(),
            state: Arc::clone(&self.state),
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(e) = self.expired(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if self.preface_left > 0 {
            let read = buf.filled().len() - before;
            self.preface_left = self.preface_left.saturating_sub(read);
            if self.preface_left == 0 {
                let until = Instant::now() + self.hygiene.idle_timeout;
                self.state
                    .idle_since_ms
                    .store(self.state.now_ms(), Ordering::Release);
                self.timer.as_mut().reset(until);
            }
        }
        polled
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Counts a connection's calls: one more when a request arrives, one fewer
/// when its response body is dropped (finished or cancelled).
#[derive(Clone, Debug, Default)]
pub struct CallCounter;

impl<S> tower_layer::Layer<S> for CallCounter {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner }
    }
}

#[derive(Clone, Debug)]
pub struct Counted<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Counted<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: http_body::Body + Send + 'static,
{
    type Response = http::Response<CountedBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let call = request
            .extensions()
            .get::<ConnInfo>()
            .map(|info| Call::start(Arc::clone(&info.state)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| CountedBody { body, _call: call }))
        })
    }
}

/// One call in progress on a connection.
struct Call(Arc<ConnState>);

impl Call {
    fn start(state: Arc<ConnState>) -> Self {
        state.calls.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.0
            .idle_since_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that ends its call when dropped.
pub struct CountedBody<B> {
    body: B,
    _call: Option<Call>,
}

impl<B: http_body::Body + Unpin> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio_stream::StreamExt;

    fn quick() -> Hygiene {
        Hygiene {
            max_connections: 2,
            preface_timeout: Duration::from_millis(200),
            idle_timeout: Duration::from_millis(300),
            fd_reserve: 0,
        }
    }

    async fn accept_next(
        accepted: &mut (impl tokio_stream::Stream<Item = io::Result<Guarded>> + Unpin),
    ) -> Guarded {
        tokio::time::timeout(Duration::from_secs(10), accepted.next())
            .await
            .expect("accepted in time")
            .expect("stream open")
            .expect("accept")
    }

    /// Reads from the guarded side until it errors or ends.
    async fn read_until_closed(mut conn: Guarded) -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        loop {
            if conn.read(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener, Hygiene::default()));
        let _client = TcpStream::connect(addr).await.expect("connect");
        let conn = accept_next(&mut accepted).await;
        assert!(conn.stream.nodelay().expect("read TCP_NODELAY"));
    }

    #[tokio::test]
    async fn no_preface_in_time_closes_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener, quick()));
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client.write_all(b"PRI * HTTP/2.0").await.expect("part");
        let conn = accept_next(&mut accepted).await;
        let err = read_until_closed(conn).await.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// On tokio's paused clock: time moves only when every task waits.
    #[tokio::test(start_paused = true)]
    async fn idle_closes_only_without_calls() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener, quick()));
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("preface");
        let conn = accept_next(&mut accepted).await;
        // A call in progress keeps the connection open past the idle
        // timeout; once it ended, the idle time runs out and it closes.
        let call = Call::start(Arc::clone(&conn.state));
        let reader = tokio::spawn(read_until_closed(conn));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!reader.is_finished(), "closed during a call");
        drop(call);
        let result = reader.await.expect("reader");
        assert_eq!(result.expect_err("idle").kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = Box::pin(incoming(listener, quick()));
        let _a = TcpStream::connect(addr).await.expect("connect");
        let _b = TcpStream::connect(addr).await.expect("connect");
        let first = accept_next(&mut accepted).await;
        let _second = accept_next(&mut accepted).await;
        let mut third = TcpStream::connect(addr).await.expect("connect");
        // Refused: closed by the server without a byte.
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(&mut third, &mut buf),
        )
        .await
        .expect("closed in time")
        .unwrap_or(0);
        assert_eq!(n, 0);
        // A slot freed lets the next one in.
        drop(first);
        let _c = TcpStream::connect(addr).await.expect("connect");
        let _fourth = accept_next(&mut accepted).await;
    }
}
