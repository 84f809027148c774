//! Two gateways sharing one Redis store: one serves a session under its lease, the other
//! refuses it with the owner's address, follows its events from the shared log as they are
//! written, and takes the session over when the owner stops — with no `replaced` fight.

mod common;
mod redis_support;

use std::time::Duration;

use common::*;
use redis_support::Redis;
use wagate::proto::gateway::{InitRequest, SendRequest, SessionState};
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

    // B will not serve what A serves: it says where the session is.
    let refused = client_b
        .init(InitRequest {
            session_id: "s1".into(),
            ..Default::default()
        })
        .await
        .expect_err("owned by A");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(
        refused
            .metadata()
            .get("wagate-owner")
            .and_then(|v| v.to_str().ok()),
        Some(a.addr.to_string().as_str())
    );

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
