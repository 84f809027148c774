//! The gateway end to end against the simulator, over gRPC on loopback:
//! pairing by QR, restart from stored credentials, kicks and reconnects,
//! disconnect, logout, replaced connections, unlinking by the phone, and a
//! server whose certificate chain does not verify.

mod common;

use base64::Engine;
use common::*;
use wagate::proto::gateway::{
    DisconnectRequest, InitRequest, QrCodeRequest, SessionState, StatusRequest,
};
use wagate::proto::sim::{KickRequest, ListAccountsRequest, RemoveDeviceRequest, ScanQrRequest};

/// Decodes a `data:image/png;base64,` QR image back to its text.
fn decode_qr_png(data_url: &str) -> String {
    let b64 = data_url
        .strip_prefix("data:image/png;base64,")
        .expect("png data url");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("png frame");
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (w, h) = (info.width as usize, info.height as usize);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "exactly one QR code in the image");
    let (_meta, text) = grids[0].decode().expect("QR decodes");
    text
}

async fn pair(
    sim: &mut Sim,
    client: &mut wagate::proto::gateway::gateway_client::GatewayClient<tonic::transport::Channel>,
    session: &str,
    phone: &str,
) -> (String, u64) {
    let mut events = init_following(client, session).await;
    let (qr_event, _) = wait_for(&mut events, "a QR event", |e| qr_of(e).is_some()).await;
    let qr = qr_of(&qr_event).expect("qr").to_owned();
    assert!(
        qr.starts_with("https://wa.me/settings/linked_devices#"),
        "{qr}"
    );
    let reply = client
        .qr_code(QrCodeRequest {
            session_id: session.into(),
        })
        .await
        .expect("QrCode")
        .into_inner();
    assert_eq!(reply.qr, qr);
    assert_eq!(decode_qr_png(&reply.png_data_url), qr);
    assert!(reply.expires_at.is_some());
    let device = sim
        .control
        .scan_qr(ScanQrRequest {
            phone: phone.into(),
            qr,
            push_name: "Test Phone".into(),
        })
        .await
        .expect("ScanQr")
        .into_inner()
        .device_jid;
    let (connected, _) = wait_for(&mut events, "CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    assert_eq!(connection(&connected).expect("connection").jid, device);
    (device, connected.cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_several_chat_urls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    sim.sim
        .listen_also(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("a second chat port");
    let urls = sim.sim.ws_urls();
    assert_eq!(urls.len(), 2);
    assert_ne!(urls[0], urls[1]);
    let mut opts = options(dir.path(), &sim.sim);
    opts.wa_url = Some(urls.join(", "));
    // One session whose id picks each port: each connects only if the
    // port it picked serves the chat.
    let spread = wagate::runtime::RuntimeConfig {
        wa_urls: urls.clone(),
        ..wagate::runtime::RuntimeConfig::default()
    };
    let on = |url: &str| {
        (0..)
            .map(|i| format!("spread{i}"))
            .find(|id| spread.wa_url_for(id) == url)
            .expect("an id")
    };
    let (first, second) = (on(&urls[0]), on(&urls[1]));
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    pair(&mut sim, &mut client, &first, "+1 555 000 2001").await;
    pair(&mut sim, &mut client, &second, "+1 555 000 2002").await;
    gateway.shutdown().await;
    sim.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_restart_kick_disconnect_logout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;

    let (device, cursor) = pair(&mut sim, &mut client, "alice", "+1 555 000 1111").await;
    assert!(device.starts_with("15550001111:"), "{device}");
    let status = client
        .status(StatusRequest {
            session_id: "alice".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, SessionState::Connected as i32);
    assert_eq!(status.phone, "15550001111");
    assert_eq!(status.jid, device);
    assert!(status.last_connected_at.is_some());

    // QrCode once connected is a precondition failure.
    let err = client
        .qr_code(QrCodeRequest {
            session_id: "alice".into(),
        })
        .await
        .expect_err("no QR when connected");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);

    // A stream error 503 and a silent drop: both reconnect on their own.
    let mut events = events_after(&mut client, "alice", cursor).await;
    for code in [503, 0] {
        let kicked = sim
            .control
            .kick(KickRequest {
                jid: device.clone(),
                code,
            })
            .await
            .expect("kick")
            .into_inner();
        assert_eq!(kicked.connections, 1);
        let (_, before) = wait_for(&mut events, "reconnected", |e| {
            is_state(e, SessionState::Connected)
        })
        .await;
        assert!(
            before.iter().any(|e| is_state(e, SessionState::Connecting)),
            "a CONNECTING event with the reason precedes the reconnect: {before:#?}"
        );
        assert!(before.iter().all(|e| qr_of(e).is_none()), "no new QR");
    }

    // Restart the gateway on the same data dir: the session comes back
    // connected without a QR.
    let before_restart = gateway.manager.events().last_cursor();
    gateway.shutdown().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "alice", before_restart).await;
    let (last_before_restart, between) = wait_for(&mut events, "a post-restart CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    assert!(
        between.iter().all(|e| qr_of(e).is_none()),
        "no QR: {between:#?}"
    );
    assert_eq!(
        connection(&last_before_restart).expect("connection").jid,
        device
    );
    let status = client
        .status(StatusRequest {
            session_id: "alice".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, SessionState::Connected as i32);

    // Disconnect keeps credentials; Init reconnects without a QR.
    let after = client
        .disconnect(DisconnectRequest {
            session_id: "alice".into(),
            logout: false,
        })
        .await
        .expect("disconnect")
        .into_inner();
    assert_eq!(after.state, SessionState::Disconnected as i32);
    client
        .init(InitRequest {
            session_id: "alice".into(),
            ..Default::default()
        })
        .await
        .expect("init again");
    let (_, between) = wait_for(&mut events, "CONNECTED after Init", |e| {
        is_state(e, SessionState::Connected) && e.cursor > last_before_restart.cursor
    })
    .await;
    assert!(
        between.iter().all(|e| qr_of(e).is_none()),
        "no QR: {between:#?}"
    );

    // Logout: LOGGED_OUT, keys erased, device gone from the account.
    let after = client
        .disconnect(DisconnectRequest {
            session_id: "alice".into(),
            logout: true,
        })
        .await
        .expect("logout")
        .into_inner();
    assert_eq!(after.state, SessionState::LoggedOut as i32);
    let accounts = sim
        .control
        .list_accounts(ListAccountsRequest::default())
        .await
        .expect("accounts")
        .into_inner()
        .accounts;
    let account = accounts
        .iter()
        .find(|a| a.phone.trim_start_matches('+') == "15550001111")
        .expect("account exists");
    assert!(
        account.devices.iter().all(|d| d.jid != device),
        "device removed: {account:#?}"
    );
    let store = gateway.manager.events().store().clone();
    let id = "alice".parse().expect("id");
    assert!(store
        .secret(&id, "creds")
        .expect("store readable")
        .is_none());
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_stops_and_removed_device_logs_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;

    let (bob, bob_cursor) = pair(&mut sim, &mut client, "bob", "+15550002222").await;
    let mut events = events_after(&mut client, "bob", bob_cursor).await;
    sim.control
        .replace(KickRequest {
            jid: bob.clone(),
            code: 0,
        })
        .await
        .expect("replace");
    let (ev, before) = wait_for(&mut events, "DISCONNECTED (replaced)", |e| {
        is_state(e, SessionState::Disconnected)
    })
    .await;
    assert!(
        connection(&ev).expect("conn").reason.contains("replaced"),
        "{ev:?}"
    );
    assert!(
        before
            .iter()
            .all(|e| !is_state(e, SessionState::Connecting)),
        "no reconnect: {before:#?}"
    );

    let (carol, carol_cursor) = pair(&mut sim, &mut client, "carol", "+15550003333").await;
    let mut events = events_after(&mut client, "carol", carol_cursor).await;
    sim.control
        .remove_device(RemoveDeviceRequest { jid: carol })
        .await
        .expect("remove device");
    wait_for(&mut events, "LOGGED_OUT (device removed)", |e| {
        is_state(e, SessionState::LoggedOut)
    })
    .await;

    let (dave, dave_cursor) = pair(&mut sim, &mut client, "dave", "+15550004444").await;
    let mut events = events_after(&mut client, "dave", dave_cursor).await;
    sim.control
        .kick(KickRequest {
            jid: dave,
            code: 401,
        })
        .await
        .expect("kick 401");
    wait_for(&mut events, "LOGGED_OUT (401)", |e| {
        is_state(e, SessionState::LoggedOut)
    })
    .await;
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_server_with_untrusted_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    // Any other root: the simulator's chain does not verify against it.
    opts.wa_root_key = Some(wagate::wa::noise::WA_ROOT_PUBLIC_KEY);
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let mut events = init_following(&mut client, "eve").await;
    let (ev, before) = wait_for(&mut events, "DISCONNECTED (certificate)", |e| {
        is_state(e, SessionState::Disconnected)
    })
    .await;
    assert!(
        connection(&ev)
            .expect("conn")
            .reason
            .contains("certificate"),
        "{ev:?}"
    );
    assert!(
        before.iter().all(|e| qr_of(e).is_none()),
        "never got to pairing"
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qr_codes_rotate_then_time_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    // The real schedule is 60 s then 20 s per code; shortened, same shape.
    opts.timeouts.qr_first_ms = 600;
    opts.timeouts.qr_next_ms = 200;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let mut events = init_following(&mut client, "rot").await;
    let (ev, before) = wait_for(&mut events, "DISCONNECTED (QR timeout)", |e| {
        is_state(e, SessionState::Disconnected)
    })
    .await;
    assert!(
        connection(&ev).expect("conn").reason.contains("QR"),
        "{ev:?}"
    );
    let qrs: Vec<(String, prost_types::Timestamp)> = before
        .iter()
        .filter_map(|e| match &e.payload {
            Some(wagate::proto::gateway::event::Payload::Qr(q)) => {
                Some((q.qr.clone(), q.expires_at.expect("expiry")))
            }
            _ => None,
        })
        .collect();
    // One code per ref the server sent (six), each different, each expiring
    // after the previous one: the first lives 600 ms, the others 200 ms.
    assert_eq!(qrs.len(), 6, "{qrs:#?}");
    let distinct: std::collections::BTreeSet<_> = qrs.iter().map(|(q, _)| q.clone()).collect();
    assert_eq!(distinct.len(), 6);
    let ms = |t: &prost_types::Timestamp| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000;
    let first_event = before
        .iter()
        .find(|e| qr_of(e).is_some())
        .expect("first qr");
    let first_lifetime = ms(&qrs[0].1) - ms(first_event.timestamp.as_ref().expect("ts"));
    assert!(
        (550..=700).contains(&first_lifetime),
        "first QR lives {first_lifetime} ms"
    );
    for pair in qrs.windows(2) {
        let gap = ms(&pair[1].1) - ms(&pair[0].1);
        assert!(
            (150..=400).contains(&gap),
            "later QRs live ~200 ms, got {gap}"
        );
    }
    let status = client
        .status(StatusRequest {
            session_id: "rot".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, SessionState::Disconnected as i32);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_keepalive_reconnects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.timeouts.keepalive_min_ms = 100;
    opts.timeouts.keepalive_max_ms = 150;
    opts.timeouts.keepalive_deadline_ms = 300;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let (device, cursor) = pair(&mut sim, &mut client, "ka", "+15550005555").await;
    let mut events = events_after(&mut client, "ka", cursor).await;
    // The server goes quiet: every frame to the device is held back 2 s.
    sim.control
        .set_delay(wagate::proto::sim::SetDelayRequest {
            jid: device.clone(),
            delay_ms: 2000,
        })
        .await
        .expect("set delay");
    let (ev, _) = wait_for(&mut events, "keepalive timeout", |e| {
        is_state(e, SessionState::Connecting)
    })
    .await;
    assert!(
        connection(&ev).expect("conn").reason.contains("keepalive"),
        "{ev:?}"
    );
    sim.control
        .set_delay(wagate::proto::sim::SetDelayRequest {
            jid: device,
            delay_ms: 0,
        })
        .await
        .expect("clear delay");
    wait_for(&mut events, "reconnected", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    gateway.shutdown().await;
}

/// The reconnect limit counts consecutive failures: a session that logs in
/// again after each drop keeps reconnecting however many drops it lives
/// through.
#[tokio::test]
async fn reconnect_limit_counts_consecutive_failures_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.max_reconnect_attempts = 2;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let (device, mut events) = pair_with(&mut sim.control, &mut client, "s", "15550001111").await;
    for drop in 0..6 {
        let kicked = sim
            .control
            .kick(KickRequest {
                jid: device.clone(),
                code: 0,
            })
            .await
            .expect("kick")
            .into_inner();
        assert_eq!(kicked.connections, 1, "drop {drop}: still connected");
        let (_, before) = wait_for(&mut events, "reconnected", |e| {
            is_state(e, SessionState::Connected)
        })
        .await;
        assert!(
            !before
                .iter()
                .any(|e| is_state(e, SessionState::Disconnected)),
            "drop {drop}: gave up: {before:#?}"
        );
    }
    gateway.shutdown().await;
}
