//! The Prometheus endpoint after an end-to-end flow shows every metric with a
//! plausible value.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wagate::proto::gateway::{SendRequest, SessionState};
use wagate::proto::sim::{CreateAccountRequest, KickRequest, ScanQrRequest, SendTextRequest};

async fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut body = String::new();
    socket.read_to_string(&mut body).await.expect("read");
    body
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_after_a_session_flow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let gateway = start_gateway(opts).await;
    let metrics = gateway.metrics_addr.expect("metrics endpoint");
    let mut client = client(gateway.addr).await;

    let mut events = init_following(&mut client, "m1").await;
    let (qr, _) = wait_for(&mut events, "QR", |e| qr_of(e).is_some()).await;
    let device = sim
        .control
        .scan_qr(ScanQrRequest {
            phone: "+15550006666".into(),
            qr: qr_of(&qr).expect("qr").into(),
            push_name: String::new(),
        })
        .await
        .expect("scan")
        .into_inner()
        .device_jid;
    wait_for(&mut events, "CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    sim.control
        .kick(KickRequest {
            jid: device,
            code: 503,
        })
        .await
        .expect("kick");
    wait_for(&mut events, "reconnected", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    // One text each way.
    sim.control
        .create_account(CreateAccountRequest {
            phone: "+15550007777".into(),
            push_name: "Peer".into(),
        })
        .await
        .expect("CreateAccount");
    let sent = client
        .send(SendRequest {
            session_id: "m1".into(),
            to: "+15550007777".into(),
            text: "counted".into(),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner();
    wait_for(&mut events, "the delivery receipt", |e| {
        receipt_of(e).is_some_and(|r| r.message_ids.contains(&sent.message_id))
    })
    .await;
    let incoming = sim
        .control
        .send_text(SendTextRequest {
            from_phone: "+15550007777".into(),
            to: "+15550006666".into(),
            text: "counted too".into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id;
    wait_for(&mut events, "the phone's text", |e| {
        message_of(e).is_some_and(|m| m.id == incoming)
    })
    .await;

    // A commit's messages are counted before its events are announced: the
    // text is counted by the time its event reached this subscriber.
    let text = scrape(metrics, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert_eq!(value(&text, "wagate_sessions{state=\"connected\"}"), 1.0);
    assert_eq!(value(&text, "wagate_sessions{state=\"qr_ready\"}"), 0.0);
    // QR, CONNECTING (515 after pairing), CONNECTED, CONNECTING (kick), CONNECTED.
    assert!(value(&text, "wagate_events_written_total") >= 5.0, "{text}");
    assert!(
        value(&text, "wagate_events_streamed_total") >= 5.0,
        "{text}"
    );
    // The restart after pairing and the kick.
    assert!(value(&text, "wagate_reconnects_total") >= 2.0, "{text}");
    assert_eq!(value(&text, "wagate_messages_received_total"), 1.0);
    assert_eq!(value(&text, "wagate_messages_sent_total"), 1.0);
    let logins = value(&text, "wagate_handshake_seconds_count");
    assert!(logins >= 2.0, "{text}");
    let mean = value(&text, "wagate_handshake_seconds_sum") / logins;
    assert!(mean > 0.0 && mean < 5.0, "mean login time {mean}s");
    assert!(
        value(&text, "wagate_event_lag_seconds_count") >= 5.0,
        "{text}"
    );
    let not_found = scrape(metrics, "/other").await;
    assert!(not_found.starts_with("HTTP/1.1 404"), "{not_found}");
    gateway.shutdown().await;
}
