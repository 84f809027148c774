//! End-to-end encrypted messaging through the gateway against the
//! simulator's virtual phones, over gRPC on loopback: Send → the phone's
//! inbox, the phone's texts → `message` events, delivery receipts, copies
//! of our own sends from the phone, idempotent Send, the offline queue after
//! a disconnect, and a conversation that survives a gateway restart.

mod common;

use common::*;
use wagate::proto::gateway::{
    DisconnectRequest, Event, InitRequest, ReceiptType, SendRequest, SessionState,
};
use wagate::proto::sim::{InboxRequest, SendTextRequest};

const OWN: &str = "+15550001111";
const BOB: &str = "+15550002222";
const BOB_JID: &str = "15550002222@s.whatsapp.net";

fn send(session: &str, to: &str, text: &str, key: &str) -> SendRequest {
    SendRequest {
        session_id: session.into(),
        to: to.into(),
        text: text.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

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

async fn inbox_texts(sim: &mut Sim, phone: &str) -> Vec<(String, String)> {
    inbox(&mut sim.control, phone)
        .await
        .into_iter()
        .map(|m| (m.id, m.text))
        .collect()
}

/// Waits for the delivered receipt of `id`.
async fn delivered(events: &mut tonic::Streaming<Event>, id: &str) -> Event {
    let (event, _) = wait_for(events, "a delivery receipt", |e| {
        receipt_of(e).is_some_and(|r| {
            r.message_ids.iter().any(|m| m == id) && r.r#type == ReceiptType::Delivered as i32
        })
    })
    .await;
    event
}

/// Waits for the message event with `id`; returns it and the message
/// events seen before it.
async fn message_with_id(events: &mut tonic::Streaming<Event>, id: &str) -> (Event, Vec<Event>) {
    let (event, before) = wait_for(events, "a message event", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    let messages = before
        .into_iter()
        .filter(|e| message_of(e).is_some())
        .collect();
    (event, messages)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_both_ways_receipts_offline_queue_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (device, mut events) = pair_with(&mut sim.control, &mut client, "chat", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;

    // Out: Send returns after the server ack; the phone decrypts it and
    // confirms delivery.
    let sent = client
        .send(send("chat", BOB, "hello bob", ""))
        .await
        .expect("Send")
        .into_inner();
    assert!(sent.message_id.starts_with("3EB0"), "{}", sent.message_id);
    assert!(sent.timestamp.is_some_and(|t| t.seconds > 0));
    // What was sent shows as this account's own message event (after the
    // server's ack, so before the phone's receipt).
    let (own, _) = message_with_id(&mut events, &sent.message_id).await;
    let own = message_of(&own).expect("message");
    assert!(own.from_me);
    assert_eq!(own.chat, BOB_JID);
    assert_eq!(own.text, "hello bob");
    assert_eq!(own.r#type, "text");
    assert_eq!(own.sender, device);
    assert_eq!(own.timestamp, sent.timestamp);
    let receipt = delivered(&mut events, &sent.message_id).await;
    let receipt = receipt_of(&receipt).expect("receipt");
    assert_eq!(receipt.chat, BOB_JID);
    assert_eq!(receipt.from_phone, "15550002222");
    let inbox = inbox_texts(&mut sim, BOB).await;
    assert_eq!(
        inbox,
        vec![(sent.message_id.clone(), "hello bob".to_owned())]
    );
    let bob_inbox = sim
        .control
        .inbox(InboxRequest { phone: BOB.into() })
        .await
        .expect("Inbox")
        .into_inner();
    assert_eq!(bob_inbox.messages[0].from, device, "sent by our device");

    // In: the phone's text arrives as a message event.
    let id = phone_sends(&mut sim, BOB, OWN, "hi there").await;
    let (event, _) = message_with_id(&mut events, &id).await;
    let message = message_of(&event).expect("message");
    assert_eq!(message.text, "hi there");
    assert_eq!(message.r#type, "text");
    assert_eq!(message.chat, BOB_JID);
    assert_eq!(message.sender_phone, "15550002222");
    assert_eq!(message.push_name, "Bob");
    assert!(!message.from_me);
    assert!(!message.offline);
    assert!(message.timestamp.is_some_and(|t| t.seconds > 0));

    // Our own phone writes to Bob: the copy reaches us as from_me.
    let id = phone_sends(&mut sim, OWN, BOB, "sent from the phone").await;
    let (event, _) = message_with_id(&mut events, &id).await;
    let copy = message_of(&event).expect("message");
    assert!(copy.from_me);
    assert_eq!(copy.chat, BOB_JID);
    assert_eq!(copy.text, "sent from the phone");

    // A retried Send with the same key returns the first result and sends
    // nothing twice.
    let first = client
        .send(send("chat", BOB, "exactly once", "order-42"))
        .await
        .expect("Send")
        .into_inner();
    let again = client
        .send(send("chat", BOB_JID, "exactly once", "order-42"))
        .await
        .expect("Send again")
        .into_inner();
    assert_eq!(first.message_id, again.message_id);
    assert_eq!(first.timestamp, again.timestamp);
    // A later message is routed after any duplicate would have been.
    let marker = client
        .send(send("chat", BOB, "marker", ""))
        .await
        .expect("Send")
        .into_inner();
    let (_, between) = message_with_id(&mut events, &marker.message_id).await;
    // One own-message event for the key, not one per call.
    assert_eq!(
        between
            .iter()
            .filter(|e| message_of(e).is_some_and(|m| m.id == first.message_id))
            .count(),
        1
    );
    delivered(&mut events, &marker.message_id).await;
    let inbox = inbox_texts(&mut sim, BOB).await;
    assert_eq!(
        inbox.iter().filter(|(_, t)| t == "exactly once").count(),
        1,
        "{inbox:?}"
    );

    // Offline: texts sent while the session is disconnected arrive after it
    // reconnects, each exactly once.
    client
        .disconnect(DisconnectRequest {
            session_id: "chat".into(),
            logout: false,
        })
        .await
        .expect("Disconnect");
    let mut queued = Vec::new();
    for n in 0..3 {
        queued.push(phone_sends(&mut sim, BOB, OWN, &format!("while away {n}")).await);
    }
    client
        .init(InitRequest {
            session_id: "chat".into(),
            ..Default::default()
        })
        .await
        .expect("Init");
    let mut got = Vec::new();
    for id in &queued {
        let (event, before) = message_with_id(&mut events, id).await;
        assert!(before.is_empty(), "unexpected messages {before:?}");
        let m = message_of(&event).expect("message");
        assert!(m.offline, "queued messages are marked offline");
        got.push(m.text.clone());
    }
    assert_eq!(got, ["while away 0", "while away 1", "while away 2"]);
    let live = phone_sends(&mut sim, BOB, OWN, "back online").await;
    let (live_event, before) = message_with_id(&mut events, &live).await;
    assert!(before.is_empty(), "duplicates after the queue: {before:?}");

    // Restart: the conversation goes on with the stored Signal sessions.
    let cursor = live_event.cursor;
    drop(events);
    gateway.shutdown().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "chat", cursor).await;
    wait_for(&mut events, "CONNECTED after restart", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    let id = phone_sends(&mut sim, BOB, OWN, "after restart").await;
    let (event, before) = message_with_id(&mut events, &id).await;
    assert!(before.is_empty(), "replayed messages: {before:?}");
    assert_eq!(message_of(&event).expect("message").text, "after restart");
    let sent = client
        .send(send("chat", BOB, "reply after restart", ""))
        .await
        .expect("Send after restart")
        .into_inner();
    delivered(&mut events, &sent.message_id).await;
    let inbox = inbox_texts(&mut sim, BOB).await;
    assert_eq!(
        inbox.last(),
        Some(&(sent.message_id.clone(), "reply after restart".to_owned()))
    );
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, _events) = pair_with(&mut sim.control, &mut client, "errs", OWN).await;
    let status = client
        .send(send("errs", "+15559990000", "anyone?", ""))
        .await
        .expect_err("no such account");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(status.message().contains("not on WhatsApp"), "{status:?}");
    let status = client
        .send(send("errs", "120363000000000000@g.us", "group", ""))
        .await
        .expect_err("no such group");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(status.message().contains("does not exist"), "{status:?}");
    let status = client
        .send(send("nobody", BOB, "x", ""))
        .await
        .expect_err("unknown session");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    client
        .disconnect(DisconnectRequest {
            session_id: "errs".into(),
            logout: false,
        })
        .await
        .expect("Disconnect");
    let status = client
        .send(send("errs", BOB, "x", ""))
        .await
        .expect_err("disconnected");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    gateway.shutdown().await;
}
