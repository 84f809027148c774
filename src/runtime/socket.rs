//! Websocket connection to the chat server.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest websocket message accepted: a whole 16 MiB frame plus header.
const MAX_MESSAGE: usize = (1 << 24) + 16;
/// The websocket's read buffer. tungstenite's default (128 KiB) is
/// zero-filled before every read and stays resident per session; WhatsApp
/// frames are mostly far smaller, and larger ones grow the message buffer.
const READ_BUFFER: usize = 0x2000;

/// Opens the websocket with the headers WhatsApp Web sends.
/// Boxed: a session keeps the socket for as long as it is connected, and
/// its task's future is not sized for one held inline.
pub(crate) async fn connect(url: &str) -> Result<Box<Socket>, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad chat server URL {url}: {e}"))?;
    let headers = request.headers_mut();
    headers.insert(
        "Origin",
        HeaderValue::from_static("https://web.whatsapp.com"),
    );
    headers.insert("Cache-Control", HeaderValue::from_static("no-cache"));
    headers.insert("Pragma", HeaderValue::from_static("no-cache"));
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|e| format!("connect: {e}"))?;
    Ok(Box::new(socket))
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    /// `wss://` URLs speak TLS: the first byte on the wire is a TLS
    /// handshake record (0x16), not an HTTP request.
    #[tokio::test]
    async fn wss_starts_a_tls_handshake() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut first = [0u8; 1];
            socket.read_exact(&mut first).await.expect("read");
            first[0]
        });
        let client = tokio::spawn(async move {
            let _ = super::connect(&format!("wss://127.0.0.1:{}/ws/chat", addr.port())).await;
        });
        let first = server.await.expect("server task");
        client.abort();
        assert_eq!(first, 0x16);
    }
}
