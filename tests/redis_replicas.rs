//! Two gateways sharing one Redis store: one serves a session under its lease, the other
//! refuses it with the owner's address, follows its events from the shared log as they are
//! written, and takes the session over when the owner stops — with no `replaced` fight.

mod common;
mod redis_support;

use std::time::Duration;

use common::*;
use redis_support::Redis;
use tonic::transport::Channel;
use tonic::Streaming;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{Event, EventsRequest};
use wagate::proto::gateway::{
    InitRequest, ListSessionsRequest, QrCodeRequest, SendRequest, SessionState, StatusRequest,
};
use wagate::proto::sim::SendTextRequest;
use wagate::store::RedisOptions;

const ALICE: &str = "15550001111";
const BOB: &str = "15550002222";

fn on_redis(dir: &std::path::Path, sim: &Sim, redis: &Redis) -> wagate::app::ServeOptions {
    let mut opts = options(dir, &sim.sim);
    opts.redis = Some(RedisOptions::new(redis.url()));
    opts.lease_ttl = Duration::from_secs(2);
    opts
}

/// The sessions a gateway serves itself (a call marked as forwarded is answered locally).
async fn local_sessions(client: &mut GatewayClient<Channel>) -> Vec<String> {
    let mut request = tonic::Request::new(ListSessionsRequest {});
    request
        .metadata_mut()
        .insert("wagate-forwarded", "1".parse().expect("metadata"));
    client
        .list_sessions(request)
        .await
        .expect("ListSessions")
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.session_id)
        .collect()
}

async fn bob_sends(sim: &mut Sim, text: &str) -> String {
    sim.control
        .send_text(SendTextRequest {
            from_phone: BOB.into(),
            to: ALICE.into(),
            text: text.into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_owner_at_a_time_and_a_takeover_on_stop() {
    let Some(redis) = Redis::start() else { return };
    let mut sim = start_sim().await;
    create_account(&mut sim.control, ALICE, "Alice").await;
    create_account(&mut sim.control, BOB, "Bob").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let a = start_gateway(on_redis(dir_a.path(), &sim, &redis)).await;
    let b = start_gateway(on_redis(dir_b.path(), &sim, &redis)).await;
    let mut client_a = client(a.addr).await;
    let mut client_b = client(b.addr).await;
    let (_, _events_a) = pair_with(&mut sim.control, &mut client_a, "s1", ALICE).await;

    // B follows the session's events from the shared log while A serves it.
    let mut on_b = events_after(&mut client_b, "s1", 0).await;
    wait_for(&mut on_b, "A's CONNECTED, seen through B", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    let one = bob_sends(&mut sim, "one").await;
    wait_for(&mut on_b, "text one, written by A, read on B", |e| {
        message_of(e).is_some_and(|m| m.id == one)
    })
    .await;

    // B answers for the session A serves: its calls go to A.
    let on_b_init = client_b
        .init(InitRequest {
            session_id: "s1".into(),
            ..Default::default()
        })
        .await
        .expect("Init through B")
        .into_inner();
    assert_eq!(on_b_init.state, SessionState::Connected as i32);
    let status = client_b
        .status(StatusRequest {
            session_id: "s1".into(),
        })
        .await
        .expect("Status through B")
        .into_inner();
    assert_eq!(status.state, SessionState::Connected as i32);
    let qr = client_b
        .qr_code(QrCodeRequest {
            session_id: "s1".into(),
        })
        .await
        .expect_err("A's answer: already paired");
    assert_eq!(qr.code(), tonic::Code::FailedPrecondition, "{qr:?}");
    let through_b = client_b
        .send(SendRequest {
            session_id: "s1".into(),
            to: BOB.into(),
            text: "through B".into(),
            idempotency_key: "via-b".into(),
            ..Default::default()
        })
        .await
        .expect("Send through B")
        .into_inner();
    delivered_to(&mut on_b, &through_b.message_id, &[BOB]).await;
    let listed = client_b
        .list_sessions(ListSessionsRequest {})
        .await
        .expect("ListSessions on B")
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].session_id, "s1");
    assert_eq!(listed[0].state, SessionState::Connected as i32);
    assert!(local_sessions(&mut client_b).await.is_empty());
    assert_eq!(local_sessions(&mut client_a).await, ["s1"]);
    let unknown = client_b
        .status(StatusRequest {
            session_id: "nobody".into(),
        })
        .await
        .expect_err("unknown everywhere");
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // A stops cleanly: its leases go at once, and B takes the session over.
    a.shutdown().await;
    let (_, seen) = wait_for(&mut on_b, "CONNECTED again, now through B", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    assert!(
        !seen
            .iter()
            .any(|e| connection(e).is_some_and(|c| c.reason.contains("replaced"))),
        "no replaced fight: {seen:#?}"
    );
    let two = bob_sends(&mut sim, "two").await;
    wait_for(&mut on_b, "text two, received by B", |e| {
        message_of(e).is_some_and(|m| m.id == two && m.text == "two")
    })
    .await;
    let sent = client_b
        .send(SendRequest {
            session_id: "s1".into(),
            to: BOB.into(),
            text: "from B".into(),
            idempotency_key: "b-1".into(),
            ..Default::default()
        })
        .await
        .expect("B sends for the session it took over")
        .into_inner();
    delivered_to(&mut on_b, &sent.message_id, &[BOB]).await;
    b.shutdown().await;
}

/// The cursor of the newest event, read from a stream of everything.
async fn all_events_after(client: &mut GatewayClient<Channel>, cursor: u64) -> Streaming<Event> {
    client
        .events(EventsRequest {
            session_ids: Vec::new(),
            types: Vec::new(),
            start: Some(wagate::proto::gateway::events_request::Start::AfterCursor(
                cursor,
            )),
        })
        .await
        .expect("events stream opens")
        .into_inner()
}

/// Reads connection events until `sessions` each connected once more; fails on `replaced`
/// and on a session connecting twice. Returns the cursor reached.
async fn each_reconnects_once(stream: &mut Streaming<Event>, sessions: &[&str]) -> u64 {
    let mut connected: Vec<&str> = Vec::new();
    let mut cursor = 0;
    while connected.len() < sessions.len() {
        let (event, seen) = wait_for(stream, "the moved sessions CONNECTED", |e| {
            is_state(e, SessionState::Connected)
        })
        .await;
        for e in seen.iter().chain([&event]) {
            if let Some(c) = connection(e) {
                assert!(!c.reason.contains("replaced"), "no replaced fight: {e:?}");
            }
        }
        assert!(
            sessions.contains(&event.session_id.as_str()),
            "only {sessions:?} move, not {}",
            event.session_id
        );
        assert!(
            !connected.contains(&event.session_id.as_str()),
            "{} connected twice",
            event.session_id
        );
        connected.push(
            sessions
                .iter()
                .find(|s| **s == event.session_id)
                .expect("listed"),
        );
        cursor = event.cursor;
    }
    cursor
}

fn settled(
    dir: &std::path::Path,
    sim: &Sim,
    redis: &Redis,
    settle: Duration,
) -> wagate::app::ServeOptions {
    let mut opts = on_redis(dir, sim, redis);
    opts.rebalance_settle = settle;
    opts.rebalance_per_second = 100;
    opts
}

/// Waits until the gateway at `client`'s address is ready: it announced itself in the group
/// (what a rolling update waits for before stopping an old gateway).
async fn ready(addr: std::net::SocketAddr) {
    let mut watch = health_watch(addr, "wagate.v1.Gateway").await;
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(status) = watch.message().await.expect("watch stream") {
            if status.status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            {
                return;
            }
        }
        panic!("health watch ended before SERVING");
    })
    .await
    .expect("ready in time");
}

async fn last_cursor(client: &mut GatewayClient<Channel>, session: &str) -> u64 {
    let mut events = events_after(client, session, 0).await;
    let (event, _) = wait_for(&mut events, "CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    event.cursor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_gateway_gets_its_share_once_the_group_is_calm() {
    let Some(redis) = Redis::start() else { return };
    let mut sim = start_sim().await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let settle = Duration::from_secs(1);
    let a = start_gateway(settled(dir_a.path(), &sim, &redis, settle)).await;
    let mut client_a = client(a.addr).await;
    let ids = ["r1", "r2", "r3", "r4"];
    for (n, id) in ids.iter().enumerate() {
        let phone = format!("1555000300{n}");
        pair_with(&mut sim.control, &mut client_a, id, &phone).await;
    }
    let mut cursor = 0;
    for id in ids {
        cursor = cursor.max(last_cursor(&mut client_a, id).await);
    }
    let mut moves = all_events_after(&mut client_a, cursor).await;

    let b = start_gateway(settled(dir_b.path(), &sim, &redis, settle)).await;
    let mut client_b = client(b.addr).await;
    // Two of A's four sessions move to B, each with one reconnect.
    let mut moved = Vec::new();
    let mut seen_connected = 0;
    while seen_connected < 2 {
        let (event, _) = wait_for(&mut moves, "a session moved to B", |e| {
            is_state(e, SessionState::Connected)
        })
        .await;
        assert!(!moved.contains(&event.session_id), "moved twice: {event:?}");
        moved.push(event.session_id.clone());
        seen_connected += 1;
    }
    moved.sort();
    let mut on_b = local_sessions(&mut client_b).await;
    on_b.sort();
    assert_eq!(on_b, moved);
    let on_a = local_sessions(&mut client_a).await;
    assert_eq!(on_a.len(), 2, "{on_a:?}");
    assert!(on_a.iter().all(|id| !moved.contains(id)));
    // Either gateway lists all four, connected.
    let listed = client_b
        .list_sessions(ListSessionsRequest {})
        .await
        .expect("ListSessions")
        .into_inner()
        .sessions;
    assert_eq!(listed.len(), 4);
    assert!(
        listed
            .iter()
            .all(|s| s.state == SessionState::Connected as i32),
        "{listed:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_moves_each_session_once() {
    let Some(redis) = Redis::start() else { return };
    let mut sim = start_sim().await;
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
    // A long settle: nothing is rebalanced during the update, and each new gateway is the
    // newcomer that receives what the stopping ones free.
    let settle = Duration::from_secs(60);
    let old_a = start_gateway(settled(dirs[0].path(), &sim, &redis, settle)).await;
    let old_b = start_gateway(settled(dirs[1].path(), &sim, &redis, settle)).await;
    let mut client_a = client(old_a.addr).await;
    let mut client_b = client(old_b.addr).await;
    pair_with(&mut sim.control, &mut client_a, "u1", "15550004001").await;
    pair_with(&mut sim.control, &mut client_a, "u2", "15550004002").await;
    pair_with(&mut sim.control, &mut client_b, "u3", "15550004003").await;
    pair_with(&mut sim.control, &mut client_b, "u4", "15550004004").await;
    let mut cursor = 0;
    for id in ["u1", "u2", "u3", "u4"] {
        cursor = cursor.max(last_cursor(&mut client_b, id).await);
    }

    // Surge: a new gateway starts, then an old one stops; its sessions go to the new one.
    let new_c = start_gateway(settled(dirs[2].path(), &sim, &redis, settle)).await;
    ready(new_c.addr).await;
    let mut client_c = client(new_c.addr).await;
    let mut moves = all_events_after(&mut client_c, cursor).await;
    old_a.shutdown().await;
    each_reconnects_once(&mut moves, &["u1", "u2"]).await;
    let mut on_c = local_sessions(&mut client_c).await;
    on_c.sort();
    assert_eq!(on_c, ["u1", "u2"]);

    let new_d = start_gateway(settled(dirs[3].path(), &sim, &redis, settle)).await;
    ready(new_d.addr).await;
    let mut client_d = client(new_d.addr).await;
    old_b.shutdown().await;
    each_reconnects_once(&mut moves, &["u3", "u4"]).await;
    let mut on_d = local_sessions(&mut client_d).await;
    on_d.sort();
    assert_eq!(on_d, ["u3", "u4"]);
    let mut on_c = local_sessions(&mut client_c).await;
    on_c.sort();
    assert_eq!(on_c, ["u1", "u2"], "C's sessions did not move again");
    new_c.shutdown().await;
    new_d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_leases() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Some(redis) = Redis::start() else { return };
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("dir");
    let gateway = start_gateway(on_redis(dir.path(), &sim, &redis)).await;
    ready(gateway.addr).await;
    let mut readiness = health_watch(gateway.addr, "wagate.v1.Gateway").await;
    // Redis goes away: renewals fail, and the gateway stops being ready.
    drop(redis);
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(status) = readiness.message().await.expect("watch stream") {
            if status.status == ServingStatus::NotServing as i32 {
                return;
            }
        }
        panic!("watch ended before NOT_SERVING");
    })
    .await
    .expect("NOT_SERVING once the leases cannot be renewed");
    // The process itself stays live.
    let channel = Channel::from_shared(format!("http://{}", gateway.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let live = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(live.status, ServingStatus::Serving as i32);
    gateway.shutdown().await;
}
