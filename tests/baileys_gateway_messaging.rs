//! Interop with an independent client: an unmodified Baileys (npm) paired on
//! the simulator and a wagate session exchange end-to-end encrypted texts in
//! both directions, each side decrypting the other's, with delivery
//! receipts both ways.

mod common;
mod sim_support;

use common::{message_of, pair_with, receipt_of, start_gateway, wait_for};
use sim_support::{path, Harness, NodeScript};
use wagate::proto::gateway::{ReceiptType, SendRequest};
use wagate::proto::sim::CreateAccountRequest;

/// `WebMessageInfo.Status.DELIVERY_ACK`.
const DELIVERY_ACK: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_and_wagate_exchange_texts() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let (baileys_device, _) = harness
        .pair("+1 555 030 0001", "Baileys User", auth.path())
        .await;
    assert_eq!(baileys_device, "15550300001:1@s.whatsapp.net");

    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = start_gateway(common::options(dir.path(), &harness.sim)).await;
    let mut client = common::client(gateway.addr).await;
    harness
        .control
        .create_account(CreateAccountRequest {
            phone: "+15550300002".into(),
            push_name: "Wagate User".into(),
        })
        .await
        .expect("CreateAccount");
    let (wagate_device, mut events) =
        pair_with(&mut harness.control, &mut client, "interop", "+15550300002").await;
    assert_eq!(wagate_device, "15550300002:1@s.whatsapp.net");

    let url = harness.sim.ws_url();
    let mut baileys = NodeScript::spawn("baileys-messaging.js", &[&url, path(auth.path())]);
    baileys.wait_for("open", |_| true).await;

    // wagate → Baileys: Baileys decrypts our pkmsg; its receipt reaches us.
    let sent = client
        .send(SendRequest {
            session_id: "interop".into(),
            to: "+15550300001".into(),
            text: "hello from wagate".into(),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner();
    let got = baileys
        .wait_for("message", |v| v["id"] == sent.message_id.as_str())
        .await;
    assert_eq!(got["text"], "hello from wagate");
    assert_eq!(got["from"], "15550300002@s.whatsapp.net");
    assert_eq!(got["fromMe"], false);
    wait_for(&mut events, "Baileys' delivery receipt", |e| {
        receipt_of(e).is_some_and(|r| {
            r.message_ids.contains(&sent.message_id)
                && r.r#type == ReceiptType::Delivered as i32
                && r.from.starts_with("15550300001")
        })
    })
    .await;

    // Baileys → wagate: we decrypt Baileys' message; our receipt reaches it.
    baileys.command("send 15550300002@s.whatsapp.net hello from baileys");
    // Sent, and our delivery receipt reached Baileys.
    let id = baileys.sent_with_status(DELIVERY_ACK).await;
    let (event, _) = wait_for(&mut events, "Baileys' text", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    let message = message_of(&event).expect("message");
    assert_eq!(message.text, "hello from baileys");
    assert_eq!(message.chat, "15550300001@s.whatsapp.net");
    assert_eq!(message.sender, baileys_device);
    assert_eq!(message.sender_phone, "15550300001");
    assert!(!message.from_me);

    // A second round uses the established sessions (msg, not pkmsg).
    let again = client
        .send(SendRequest {
            session_id: "interop".into(),
            to: "15550300001@s.whatsapp.net".into(),
            text: "second from wagate".into(),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner();
    let got = baileys
        .wait_for("message", |v| v["id"] == again.message_id.as_str())
        .await;
    assert_eq!(got["text"], "second from wagate");
    baileys.command("send 15550300002@s.whatsapp.net second from baileys");
    let sent = baileys.wait_for("sent", |_| true).await;
    let id = sent["id"].as_str().expect("message id").to_owned();
    let (event, _) = wait_for(&mut events, "Baileys' second text", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    assert_eq!(
        message_of(&event).expect("message").text,
        "second from baileys"
    );

    baileys.command("quit");
    assert!(baileys.wait().await.success());
    gateway.shutdown().await;
    harness.stop().await;
}
