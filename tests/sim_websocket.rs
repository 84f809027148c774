//! The simulator's websocket endpoint: only `/ws/chat` upgrades, bad input
//! ends the connection, and shutdown stops the listener.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};
use wagate::sim::{SimConfig, Simulator};

async fn start() -> Simulator {
    Simulator::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        seed: Some(1),
        data_dir: None,
    })
    .await
    .expect("simulator starts")
}

/// Reads until the server ends the connection (close frame, EOF or reset).
async fn expect_closed(ws: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) {
    let ended = async {
        match ws.next().await {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {}
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the server closed the connection");
}

#[tokio::test]
async fn other_paths_are_not_found() {
    let sim = start().await;
    let url = format!("ws://{}/ws/other", sim.local_addr());
    match connect_async(url).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        Err(other) => panic!("expected HTTP 404, got {other}"),
        Ok(_) => panic!("a path other than /ws/chat was upgraded"),
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_bad_intro_ends_the_connection() {
    let sim = start().await;
    let (mut ws, _) = connect_async(sim.ws_url())
        .await
        .expect("chat path upgrades");
    ws.send(Message::Binary(
        b"XY\x06\x03\x00\x00\x01\x00".to_vec().into(),
    ))
    .await
    .expect("send");
    expect_closed(&mut ws).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn text_messages_end_the_connection() {
    let sim = start().await;
    let (mut ws, _) = connect_async(sim.ws_url())
        .await
        .expect("chat path upgrades");
    ws.send(Message::Text("hello".into())).await.expect("send");
    expect_closed(&mut ws).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_connections_and_the_listener() {
    let sim = start().await;
    let addr = sim.local_addr();
    let (mut ws, _) = connect_async(sim.ws_url())
        .await
        .expect("chat path upgrades");
    // Half an intro: the connection waits for the rest of its handshake.
    ws.send(Message::Binary(b"WA".to_vec().into()))
        .await
        .expect("send");
    sim.shutdown().await;
    expect_closed(&mut ws).await;
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn shutdown_does_not_wait_for_idle_sockets() {
    let sim = start().await;
    // A TCP connection that never asks for a websocket upgrade ...
    let _idle = TcpStream::connect(sim.local_addr()).await.expect("connect");
    // ... and one answered after it, so the idle one was accepted too.
    let refused = connect_async(format!("ws://{}/", sim.local_addr())).await;
    assert!(matches!(refused, Err(WsError::Http(_))));
    tokio::time::timeout(Duration::from_secs(5), sim.shutdown())
        .await
        .expect("shutdown finished without waiting for the upgrade timeout");
}
