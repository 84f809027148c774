//! Websocket connection to the chat server.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Largest websocket message accepted: a whole 16 MiB frame plus header.
const MAX_MESSAGE: usize = (1 << 24) + 16;

/// Opens the websocket with the headers WhatsApp Web sends.
pub(crate) async fn connect(url: &str) -> Result<Socket, String> {
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
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let (socket, _response) =
        tokio_tungstenite::connect_async_with_config(request, Some(config), true)
            .await
            .map_err(|e| format!("connect: {e}"))?;
    Ok(socket)
}
