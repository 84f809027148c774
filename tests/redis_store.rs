//! The gateway on the Redis store, end to end against the simulator: a session paired by one
//! gateway process is served by another with its own, empty data dir — everything it needs is in
//! Redis — and an Events reader resumes there from the cursor it had, with no gap.

mod common;
mod redis_support;

use common::*;
use redis_support::Redis;
use wagate::proto::gateway::{SendRequest, SessionState, StatusRequest};
use wagate::proto::sim::SendTextRequest;
use wagate::store::RedisOptions;

async fn phone_sends(sim: &mut Sim, from: &str, to: &str, text: &str) -> String {
    sim.control
        .send_text(SendTextRequest {
            from_phone: from.into(),
            to: to.into(),
            text: text.into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_between_gateways_through_redis() {
    let Some(redis) = Redis::start() else { return };
    let mut sim = start_sim().await;
    create_account(&mut sim.control, "15550001111", "Alice").await;
    create_account(&mut sim.control, "15550002222", "Bob").await;
    let on_redis = |dir: &std::path::Path, sim: &Sim| {
        let mut opts = options(dir, &sim.sim);
        opts.redis = Some(RedisOptions::new(redis.url()));
        opts
    };

    // First gateway: pair, receive two texts, note the cursor after the first.
    let first_dir = tempfile::tempdir().expect("dir");
    let first = start_gateway(on_redis(first_dir.path(), &sim)).await;
    let mut client = client(first.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "s1", "15550001111").await;
    let one = phone_sends(&mut sim, "15550002222", "15550001111", "one").await;
    let (event, _) = wait_for(&mut events, "text one", |e| {
        message_of(e).is_some_and(|m| m.id == one)
    })
    .await;
    let cursor = event.cursor;
    let two = phone_sends(&mut sim, "15550002222", "15550001111", "two").await;
    wait_for(&mut events, "text two", |e| {
        message_of(e).is_some_and(|m| m.id == two)
    })
    .await;
    drop(events);
    first.shutdown().await;
    // Nothing of the session is in the first gateway's data dir.
    assert!(!first_dir.path().join("wagate.db").exists());

    // A second gateway with an empty data dir of its own serves the same session.
    let second_dir = tempfile::tempdir().expect("dir");
    let second = start_gateway(on_redis(second_dir.path(), &sim)).await;
    let mut client = common::client(second.addr).await;
    let mut resumed = events_after(&mut client, "s1", cursor).await;
    // The reader resumes right after the cursor it had: text two first, no gap.
    let (event, skipped) =
        wait_for(&mut resumed, "text two again", |e| message_of(e).is_some()).await;
    assert!(
        skipped.iter().all(|e| message_of(e).is_none()),
        "{skipped:#?}"
    );
    assert_eq!(message_of(&event).expect("message").id, two);
    wait_for(&mut resumed, "CONNECTED on the second gateway", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    let status = client
        .status(StatusRequest {
            session_id: "s1".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, SessionState::Connected as i32);

    // It chats on both ways with the Signal sessions it found in Redis.
    let three = phone_sends(&mut sim, "15550002222", "15550001111", "three").await;
    wait_for(&mut resumed, "text three", |e| {
        message_of(e).is_some_and(|m| m.id == three && m.text == "three")
    })
    .await;
    let sent = client
        .send(SendRequest {
            session_id: "s1".into(),
            to: "15550002222".into(),
            text: "from the second gateway".into(),
            idempotency_key: "k1".into(),
            ..Default::default()
        })
        .await
        .expect("send")
        .into_inner();
    delivered_to(&mut resumed, &sent.message_id, &["15550002222"]).await;
    let got: Vec<(String, String)> = inbox(&mut sim.control, "15550002222")
        .await
        .into_iter()
        .map(|m| (m.id, m.text))
        .collect();
    assert!(
        got.contains(&(
            sent.message_id.clone(),
            "from the second gateway".to_owned()
        )),
        "{got:?}"
    );
    second.shutdown().await;
}
