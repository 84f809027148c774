//! A store that refuses writes (a full disk, a broken database) is the
//! gateway's failure, not the server's: the connection ends with a "store
//! failure" reason, nothing is acknowledged, the session backs off with
//! growing attempts instead of reconnecting at once forever (and, with no
//! limit set, never gives up), and once the store works again every
//! message arrives exactly once.

mod common;

use std::time::Duration;

use common::*;
use wagate::proto::gateway::{EventType, SessionState, StatusRequest};
use wagate::proto::sim::SendTextRequest;

const OWN: &str = "+15550007777";
const BOB: &str = "+15550008888";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_backs_off_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "disk", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;

    // Every commit of a message event now fails, as on a full disk.
    let db = rusqlite::Connection::open(dir.path().join("wagate.db")).expect("open the store");
    db.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let kind = EventType::Message as i32;
    db.execute_batch(&format!(
        "CREATE TRIGGER refuse_messages BEFORE INSERT ON events WHEN NEW.kind = {kind} \
         BEGIN SELECT RAISE(ABORT, 'injected store failure'); END;"
    ))
    .expect("create the trigger");

    let send = |text: &str| SendTextRequest {
        from_phone: BOB.into(),
        to: OWN.into(),
        text: text.into(),
        from_lid: false,
    };
    let kept = sim
        .control
        .send_text(send("kept"))
        .await
        .expect("SendText")
        .into_inner()
        .message_id;

    // Each connection logs in, fails to commit the text and ends; the
    // server delivers it again to the next one.
    let store_ended = |e: &wagate::proto::gateway::Event| {
        connection(e)
            .is_some_and(|c| c.state == SessionState::Connecting as i32 && !c.reason.is_empty())
    };
    // Past the 10 attempts an earlier default gave up after: with no limit
    // set, the session never stops by itself.
    for _ in 0..12 {
        let (ended, _) =
            wait_for(&mut events, "a connection ended by the store", store_ended).await;
        let reason = &connection(&ended).expect("connection").reason;
        assert!(
            reason.starts_with("store failure: "),
            "a store failure is reported as one: {reason}"
        );
    }
    // The attempts grow: a login whose commit fails does not start them
    // over (the backoff would stay at its first step forever). The status
    // follows the last event at once; the one before is certain.
    let status = client
        .status(StatusRequest {
            session_id: "disk".into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert!(
        status.reconnect_attempts >= 11,
        "attempts: {} ({})",
        status.reconnect_attempts,
        status.last_disconnect_reason
    );

    // The store works again: the text arrives, once, with the next one.
    db.execute_batch("DROP TRIGGER refuse_messages;")
        .expect("drop the trigger");
    let (_, _) = wait_for(&mut events, "the kept text", |e| {
        message_of(e).is_some_and(|m| m.id == kept)
    })
    .await;
    let after = sim
        .control
        .send_text(send("after"))
        .await
        .expect("SendText")
        .into_inner()
        .message_id;
    let (_, between) = wait_for(&mut events, "the text after", |e| {
        message_of(e).is_some_and(|m| m.id == after)
    })
    .await;
    assert!(
        !between
            .iter()
            .any(|e| message_of(e).is_some_and(|m| m.id == kept)),
        "the kept text is reported once"
    );
    gateway.shutdown().await;
}

/// Credentials that cannot be decoded do not heal by reconnecting: the
/// session stops at once with a reason that says what to do, instead of
/// retrying for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_credentials_stop_the_session_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, _) = pair_with(&mut sim.control, &mut client, "garbled", OWN).await;
    let store = gateway.manager.events().store().clone();
    let id = "garbled".parse().expect("id");
    gateway.shutdown().await;
    // Sealed as any record (so the store reads it), but not credentials.
    store
        .commit(
            &id,
            wagate::store::Batch::new().put_secret("creds", vec![0xff; 16]),
        )
        .expect("commit");
    drop(store);

    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "garbled", 0).await;
    let (stopped, _) = wait_for(&mut events, "the session stopped", |e| {
        connection(e).is_some_and(|c| {
            c.state == SessionState::Disconnected as i32 && c.reason.contains("unreadable")
        })
    })
    .await;
    let reason = &connection(&stopped).expect("connection").reason;
    assert!(reason.contains("quarantine them or log out"), "{reason}");
    let status = client
        .status(StatusRequest {
            session_id: "garbled".into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(status.state, SessionState::Disconnected as i32);
    assert_eq!(status.reconnect_attempts, 0, "{status:?}");
    gateway.shutdown().await;
}
