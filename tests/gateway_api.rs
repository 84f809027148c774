//! Black-box checks of the gateway API over gRPC on loopback: API keys,
//! input validation and status codes, resumable events (across a restart
//! too), and that no private key reaches the disk in plaintext.

mod common;

use std::collections::BTreeSet;

use common::*;
use tonic::Code;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{
    DisconnectRequest, Event, EventsRequest, InitRequest, ListSessionsRequest, QrCodeRequest,
    SendRequest, SessionState, StatusRequest,
};
use wagate::proto::sim::{KickRequest, ScanQrRequest};
use wagate::wa::creds::Credentials;

async fn pair_session(
    sim: &mut Sim,
    client: &mut GatewayClient<tonic::transport::Channel>,
    id: &str,
    phone: &str,
) -> String {
    let mut events = init_following(client, id).await;
    let (qr, _) = wait_for(&mut events, "QR", |e| qr_of(e).is_some()).await;
    let device = sim
        .control
        .scan_qr(ScanQrRequest {
            phone: phone.into(),
            qr: qr_of(&qr).expect("qr").to_owned(),
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
    device
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_every_rpc_but_health() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.api_keys = vec!["s3cret-key".into(), "other-key".into()];
    let gateway = start_gateway(opts).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");

    // Health answers without a key.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "wagate.v1.Gateway"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health without key")
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    for key in [None, Some("wrong"), Some("s3cret-key ")] {
        let mut client =
            GatewayClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
                if let Some(k) = key {
                    req.metadata_mut()
                        .insert("x-api-key", k.parse().expect("ascii"));
                }
                Ok(req)
            });
        let id = || "s1".to_owned();
        let codes = vec![
            client
                .init(InitRequest {
                    session_id: id(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            client
                .qr_code(QrCodeRequest { session_id: id() })
                .await
                .map(|_| ()),
            client
                .status(StatusRequest { session_id: id() })
                .await
                .map(|_| ()),
            client
                .send(SendRequest {
                    session_id: id(),
                    to: "+15550001234".into(),
                    text: "x".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            client
                .disconnect(DisconnectRequest {
                    session_id: id(),
                    logout: false,
                })
                .await
                .map(|_| ()),
            client
                .list_sessions(ListSessionsRequest {})
                .await
                .map(|_| ()),
            client.events(EventsRequest::default()).await.map(|_| ()),
        ];
        for (i, result) in codes.into_iter().enumerate() {
            let err = result.expect_err("must be refused");
            assert_eq!(
                err.code(),
                Code::Unauthenticated,
                "rpc #{i} with key {key:?}: {err}"
            );
        }
    }

    // Both header forms work with a valid key.
    for (header, value) in [
        ("x-api-key", "s3cret-key"),
        ("authorization", "Bearer other-key"),
    ] {
        let mut client =
            GatewayClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert(header, value.parse().expect("ascii"));
                Ok(req)
            });
        client
            .list_sessions(ListSessionsRequest {})
            .await
            .expect("allowed");
    }
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_statuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.max_sessions = 1;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;

    let long = "x".repeat(65);
    for (bad, needle) in [
        ("", "empty"),
        (long.as_str(), "64"),
        ("a b", "' '"),
        ("ünï", "'ü'"),
        ("a/b", "'/'"),
    ] {
        let err = client
            .status(StatusRequest {
                session_id: bad.into(),
            })
            .await
            .expect_err("invalid id");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("session_id"), "{}", err.message());
        assert!(err.message().contains(needle), "{bad:?}: {}", err.message());
        let err = client
            .init(InitRequest {
                session_id: bad.into(),
                ..Default::default()
            })
            .await
            .expect_err("invalid id");
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let max = "a".repeat(64);
    let err = client
        .status(StatusRequest { session_id: max })
        .await
        .expect_err("unknown");
    assert_eq!(
        err.code(),
        Code::NotFound,
        "64 chars is valid, just unknown"
    );

    for rpc in ["status", "qr", "send", "disconnect"] {
        let id = "nobody".to_owned();
        let err = match rpc {
            "status" => client
                .status(StatusRequest { session_id: id })
                .await
                .map(|_| ()),
            "qr" => client
                .qr_code(QrCodeRequest { session_id: id })
                .await
                .map(|_| ()),
            "send" => client
                .send(SendRequest {
                    session_id: id,
                    to: "+15550001234".into(),
                    text: "hi".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            _ => client
                .disconnect(DisconnectRequest {
                    session_id: id,
                    logout: false,
                })
                .await
                .map(|_| ()),
        }
        .expect_err("unknown session");
        assert_eq!(err.code(), Code::NotFound, "{rpc}: {err}");
        assert!(err.message().contains("nobody"), "{}", err.message());
    }

    // A session waiting for its QR: not connected.
    let mut events = init_following(&mut client, "first").await;
    wait_for(&mut events, "QR", |e| qr_of(e).is_some()).await;
    for to in ["", "12", "+0123456789", "abc", "1555@@x"] {
        let err = client
            .send(SendRequest {
                session_id: "first".into(),
                to: to.into(),
                text: "hi".into(),
                ..Default::default()
            })
            .await
            .expect_err("bad recipient");
        assert_eq!(err.code(), Code::InvalidArgument, "{to:?}: {err}");
        assert!(err.message().starts_with("to:"), "{}", err.message());
    }
    let huge = "5".repeat(1 << 20);
    let err = client
        .send(SendRequest {
            session_id: "first".into(),
            to: huge,
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .expect_err("huge recipient");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 200, "{}", err.message().len());
    let err = client
        .send(SendRequest {
            session_id: "first".into(),
            to: "+15550001234".into(),
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .expect_err("not connected");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not connected"), "{}", err.message());

    // Session limit (1): a second online session is refused.
    let err = client
        .init(InitRequest {
            session_id: "second".into(),
            ..Default::default()
        })
        .await
        .expect_err("over the limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    // Init of the existing one stays idempotent.
    let again = client
        .init(InitRequest {
            session_id: "first".into(),
            ..Default::default()
        })
        .await
        .expect("idempotent")
        .into_inner();
    assert_eq!(again.state, SessionState::QrReady as i32);
    gateway.shutdown().await;
}

fn key_of(e: &Event) -> (u64, String, u64) {
    (e.cursor, e.session_id.clone(), e.seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_resume_exactly_once_across_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let device = pair_session(&mut sim, &mut client, "res", "+15550009999").await;

    // Generate more events: each kick adds CONNECTING and CONNECTED.
    let mut follow = events_after(&mut client, "res", gateway.manager.events().last_cursor()).await;
    for _ in 0..3 {
        sim.control
            .kick(KickRequest {
                jid: device.clone(),
                code: 503,
            })
            .await
            .expect("kick");
        wait_for(&mut follow, "reconnect", |e| {
            is_state(e, SessionState::Connected)
        })
        .await;
    }
    let end = gateway.manager.events().last_cursor();

    // Reference: everything from the beginning.
    let mut all = Vec::new();
    let mut stream = events_after(&mut client, "res", 0).await;
    while all.last().map(|e: &Event| e.cursor) != Some(end) {
        all.push(
            tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("in time")
                .expect("ok")
                .expect("open"),
        );
    }
    drop(stream);
    assert!(all.len() >= 8, "{}", all.len());
    for pair in all.windows(2) {
        assert!(pair[0].cursor < pair[1].cursor, "cursor order");
        assert_eq!(pair[0].seq + 1, pair[1].seq, "seq is gap-free");
    }

    // A subscriber reading in pieces, dropping and resuming from its cursor.
    let mut got = Vec::new();
    let mut cursor = 0;
    while cursor != end {
        let mut s = events_after(&mut client, "res", cursor).await;
        for _ in 0..3 {
            if cursor == end {
                break;
            }
            let e = tokio::time::timeout(WAIT, s.message())
                .await
                .expect("in time")
                .expect("ok")
                .expect("open");
            cursor = e.cursor;
            got.push(e);
        }
    }
    assert_eq!(
        got.iter().map(key_of).collect::<Vec<_>>(),
        all.iter().map(key_of).collect::<Vec<_>>()
    );

    // Across a restart: resume from the middle; the restart's own events follow.
    let middle = all[all.len() / 2].cursor;
    gateway.shutdown().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut s = events_after(&mut client, "res", middle).await;
    let (_, before) = wait_for(&mut s, "post-restart CONNECTED", |e| {
        e.cursor > end && is_state(e, SessionState::Connected)
    })
    .await;
    let replayed: Vec<_> = before
        .iter()
        .filter(|e| e.cursor <= end)
        .map(key_of)
        .collect();
    let expected: Vec<_> = all
        .iter()
        .filter(|e| e.cursor > middle)
        .map(key_of)
        .collect();
    assert_eq!(replayed, expected);
    let unique: BTreeSet<u64> = before.iter().map(|e| e.cursor).collect();
    assert_eq!(unique.len(), before.len(), "no duplicates");
    gateway.shutdown().await;
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_private_key_in_plaintext_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    pair_session(&mut sim, &mut client, "vault", "+15550007777").await;
    let store = gateway.manager.events().store().clone();
    let creds = store
        .secret(&"vault".parse().expect("id"), "creds")
        .expect("readable")
        .expect("stored");
    let creds = Credentials::decode(&creds).expect("decodes");
    gateway.shutdown().await;

    let secrets: Vec<(&str, Vec<u8>)> = vec![
        (
            "noise private key",
            creds.noise_key.private_bytes().to_vec(),
        ),
        (
            "identity private key",
            creds.identity_key.private_bytes().to_vec(),
        ),
        (
            "signed prekey private key",
            creds.signed_prekey.key.private_bytes().to_vec(),
        ),
        ("adv secret", creds.adv_secret.to_vec()),
    ];
    let files = files_under(dir.path());
    assert!(files.iter().any(|f| f.ends_with("wagate.db")), "{files:?}");
    for file in files {
        let bytes = std::fs::read(&file).expect("read");
        for (what, secret) in &secrets {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
                "{what} found in plaintext in {}",
                file.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_before_the_listener_closes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.drain_delay = std::time::Duration::from_millis(500);
    let gateway = start_gateway(opts).await;
    let mut watch = health_watch(gateway.addr, "wagate.v1.Gateway").await;
    use tonic_health::pb::health_check_response::ServingStatus;
    let first = watch.message().await.expect("ok").expect("status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    let stopping = tokio::spawn(gateway.shutdown());
    let next = tokio::time::timeout(WAIT, watch.message())
        .await
        .expect("in time")
        .expect("ok")
        .expect("status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    drop(watch);
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("shutdown completes")
        .expect("join");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_health_watch_does_not_hold_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.drain_delay = std::time::Duration::from_millis(200);
    // Far beyond WAIT: a watch holding the server open would fail the test.
    opts.shutdown_grace = std::time::Duration::from_secs(600);
    let gateway = start_gateway(opts).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gateway.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watches = Vec::new();
    for service in ["", "wagate.v1.Gateway"] {
        let mut watch = health
            .watch(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        watch.message().await.expect("ok").expect("status");
        watches.push(watch);
    }
    // The watches stay open (held, not read) while the gateway stops.
    tokio::time::timeout(WAIT, gateway.shutdown())
        .await
        .expect("shutdown is not held by open health watches");
    use tonic_health::pb::health_check_response::ServingStatus;
    for mut watch in watches {
        let last = watch.message().await.expect("ok").expect("a last status");
        assert_eq!(last.status, ServingStatus::NotServing as i32);
        assert!(
            watch.message().await.expect("ends cleanly").is_none(),
            "the watch ended"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_while_reconnecting_is_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.max_reconnect_attempts = 1_000;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let _ = pair_session(&mut sim, &mut client, "blip", "+15550007777").await;
    let mut events =
        events_after(&mut client, "blip", gateway.manager.events().last_cursor()).await;

    // The chat server goes away: the session reconnects by itself.
    sim.sim.shutdown().await;
    wait_for(&mut events, "CONNECTING (reconnect)", |e| {
        is_state(e, SessionState::Connecting)
    })
    .await;
    let err = client
        .send(SendRequest {
            session_id: "blip".into(),
            to: "+15550001234".into(),
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .expect_err("not connected");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(err.message().contains("reconnecting"), "{}", err.message());

    // Stopped by Disconnect: it will not come back by itself.
    client
        .disconnect(DisconnectRequest {
            session_id: "blip".into(),
            logout: false,
        })
        .await
        .expect("Disconnect");
    let err = client
        .send(SendRequest {
            session_id: "blip".into(),
            to: "+15550001234".into(),
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_a_public_address_without_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    opts.listen = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    match wagate::app::start(opts).await {
        Err(e @ wagate::app::StartError::NoKeysOnPublicAddress(_)) => {
            assert!(e.to_string().contains("WAGATE_API_KEYS"), "{e}")
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("must refuse 0.0.0.0 without API keys"),
    }
}
