//! An unmodified Baileys (from npm) paired on the simulator exchanges texts
//! with a virtual phone: Baileys' text lands in the phone's inbox and the
//! phone's delivery receipt reaches Baileys; the phone's text reaches
//! Baileys live (`notify`) and, sent while Baileys is away, after it
//! reconnects (`append`, from the offline queue). Baileys runs unmodified:
//! the phone's app-state key share after pairing is what lets it emit
//! incoming messages.

mod sim_support;

use sim_support::{path, Harness, NodeScript};
use wagate::proto::sim::{CreateAccountRequest, InboxRequest, SendTextRequest};

/// `WebMessageInfo.Status.DELIVERY_ACK`.
const DELIVERY_ACK: u64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_and_a_virtual_phone_exchange_texts() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let (device, _) = harness.pair("+1 555 020 0001", "Bob", auth.path()).await;
    assert_eq!(device, "15550200001:1@s.whatsapp.net");
    let created = harness
        .control
        .create_account(CreateAccountRequest {
            phone: "+1 555 020 0002".into(),
            push_name: "Alice".into(),
        })
        .await
        .expect("CreateAccount")
        .into_inner();
    assert_eq!(created.jid, "15550200002@s.whatsapp.net");
    let phone_jid = created.jid;

    let url = harness.sim.ws_url();
    let mut baileys = NodeScript::spawn("baileys-messaging.js", &[&url, path(auth.path())]);
    baileys.wait_for("open", |_| true).await;

    // Baileys → phone: the phone decrypts it and confirms delivery.
    baileys.command(&format!("send {phone_jid} hello phone"));
    let sent_id = baileys.sent_with_status(DELIVERY_ACK).await;
    let inbox = harness
        .control
        .inbox(InboxRequest {
            phone: "+15550200002".into(),
        })
        .await
        .expect("Inbox")
        .into_inner()
        .messages;
    assert_eq!(inbox.len(), 1, "{inbox:?}");
    assert_eq!(inbox[0].text, "hello phone");
    assert_eq!(inbox[0].id, sent_id);
    assert_eq!(inbox[0].from, device);

    // Phone → Baileys, live.
    let reply = harness
        .control
        .send_text(SendTextRequest {
            from_phone: "+15550200002".into(),
            to: "15550200001@s.whatsapp.net".into(),
            text: "hello baileys".into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner();
    assert!(reply.message_id.starts_with("3EB0") && reply.message_id.len() == 22);
    let got = baileys
        .wait_for("message", |v| v["id"] == reply.message_id.as_str())
        .await;
    assert_eq!(got["text"], "hello baileys");
    assert_eq!(got["type"], "notify");
    assert_eq!(got["from"], phone_jid.as_str());
    assert_eq!(got["fromMe"], false);

    // Phone → Baileys while Baileys is away: queued, then delivered offline.
    baileys.command("quit");
    assert!(baileys.wait().await.success());
    // What lets Baileys emit messages at all: the phone's app-state key
    // share was stored. (The app-state sync it starts runs on by itself;
    // whether it ended before "quit" is a matter of timing, not checked.)
    let creds: serde_json::Value =
        serde_json::from_slice(&std::fs::read(auth.path().join("creds.json")).expect("creds.json"))
            .expect("creds are JSON");
    let key_id = creds["myAppStateKeyId"].as_str().expect("an app-state key");
    assert_eq!(key_id.len(), 8, "6 bytes in base64: {key_id}");
    let queued = harness
        .control
        .send_text(SendTextRequest {
            from_phone: "+15550200002".into(),
            to: "+15550200001".into(),
            text: "while you were away".into(),
            from_lid: false,
        })
        .await
        .expect("SendText while offline")
        .into_inner();
    let mut baileys = NodeScript::spawn("baileys-messaging.js", &[&url, path(auth.path())]);
    let got = baileys
        .wait_for("message", |v| v["id"] == queued.message_id.as_str())
        .await;
    assert_eq!(got["text"], "while you were away");
    assert_eq!(got["type"], "append");
    baileys.command("quit");
    assert!(baileys.wait().await.success());

    harness.stop().await;
}
