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
    let ours_first = sent.message_id.clone();
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
    let baileys_first = id.clone();
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

    actions_both_ways(
        &mut client,
        &mut events,
        &mut baileys,
        &ours_first,
        &baileys_first,
    )
    .await;

    baileys.command("quit");
    assert!(baileys.wait().await.success());
    gateway.shutdown().await;
    harness.stop().await;
}

/// Replies with mentions, reactions, edits and revokes: Baileys reads
/// wagate's as such, and wagate reads Baileys'. `ours` is a text wagate
/// sent Baileys, `theirs` one Baileys sent wagate.
async fn actions_both_ways(
    client: &mut wagate::proto::gateway::gateway_client::GatewayClient<tonic::transport::Channel>,
    events: &mut tonic::Streaming<wagate::proto::gateway::Event>,
    baileys: &mut NodeScript,
    ours: &str,
    theirs: &str,
) {
    use wagate::proto::gateway::send_request::Action;
    use wagate::proto::gateway::{MessageRef, Reaction};
    const BAILEYS: &str = "15550300001@s.whatsapp.net";
    const WAGATE: &str = "15550300002@s.whatsapp.net";
    let at = |id: &str, from_me: bool| MessageRef {
        id: id.into(),
        from_me,
        sender: String::new(),
    };
    let base = SendRequest {
        session_id: "interop".into(),
        to: BAILEYS.into(),
        ..Default::default()
    };
    let send = |request: SendRequest| {
        let mut client = client.clone();
        async move {
            client
                .send(request)
                .await
                .expect("Send")
                .into_inner()
                .message_id
        }
    };

    // wagate → Baileys.
    let reply = send(SendRequest {
        text: "answer @15550300001".into(),
        reply_to: Some(at(theirs, false)),
        quoted_text: "hello from baileys".into(),
        mentions: vec![BAILEYS.into()],
        ..base.clone()
    })
    .await;
    let got = baileys
        .wait_for("message", |v| v["id"] == reply.as_str())
        .await;
    assert_eq!(got["text"], "answer @15550300001");
    assert_eq!(got["context"]["stanzaId"], theirs);
    assert_eq!(got["context"]["participant"], BAILEYS);
    assert_eq!(got["context"]["quoted"], "hello from baileys");
    assert_eq!(got["context"]["mentions"][0], BAILEYS);

    let reaction = send(SendRequest {
        action: Some(Action::Reaction(Reaction {
            target: Some(at(theirs, false)),
            emoji: "👍".into(),
        })),
        ..base.clone()
    })
    .await;
    let got = baileys
        .wait_for("message", |v| v["id"] == reaction.as_str())
        .await;
    assert_eq!(got["kind"], "reactionMessage");
    assert_eq!(got["reaction"]["id"], theirs);
    assert_eq!(got["reaction"]["text"], "👍");

    let edit = send(SendRequest {
        text: "edited from wagate".into(),
        action: Some(Action::Edit(at(ours, true))),
        ..base.clone()
    })
    .await;
    let got = baileys
        .wait_for("message", |v| v["id"] == edit.as_str())
        .await;
    assert_eq!(got["protocol"]["type"], 14, "MESSAGE_EDIT: {got}");
    assert_eq!(got["protocol"]["id"], ours);
    assert_eq!(got["protocol"]["text"], "edited from wagate");

    let revoke = send(SendRequest {
        action: Some(Action::Revoke(at(ours, true))),
        ..base.clone()
    })
    .await;
    let got = baileys
        .wait_for("message", |v| v["id"] == revoke.as_str())
        .await;
    assert_eq!(got["protocol"]["type"], 0, "REVOKE: {got}");
    assert_eq!(got["protocol"]["id"], ours);

    // Baileys → wagate.
    let got = from_baileys(baileys, events, &format!("react {WAGATE} {ours} 0 ❤️")).await;
    assert_eq!((got.r#type.as_str(), got.text.as_str()), ("reaction", "❤️"));
    let target = got.target.expect("reaction target");
    assert_eq!((target.id.as_str(), target.from_me), (ours, true));

    let command = format!("reply {WAGATE} {ours} 0 hello from wagate|sure");
    let got = from_baileys(baileys, events, &command).await;
    assert_eq!(
        (got.r#type.as_str(), got.text.as_str()),
        ("text", "sure @15550300002")
    );
    assert_eq!(got.quoted_text, "hello from wagate");
    assert_eq!(got.mentions, vec![WAGATE.to_owned()]);
    let target = got.target.expect("quoted message");
    assert_eq!((target.id.as_str(), target.from_me), (ours, true));

    let got = from_baileys(
        baileys,
        events,
        &format!("edit {WAGATE} {theirs} hello again"),
    )
    .await;
    assert_eq!(
        (got.r#type.as_str(), got.text.as_str()),
        ("edit", "hello again")
    );
    let target = got.target.expect("edited message");
    assert_eq!((target.id.as_str(), target.from_me), (theirs, false));
    assert_eq!(target.sender, BAILEYS);

    let got = from_baileys(baileys, events, &format!("revoke {WAGATE} {theirs}")).await;
    assert_eq!(got.r#type, "revoke");
    let target = got.target.expect("revoked message");
    assert_eq!((target.id.as_str(), target.from_me), (theirs, false));
}

/// Has Baileys run `command` and returns the message event it caused.
async fn from_baileys(
    baileys: &mut NodeScript,
    events: &mut tonic::Streaming<wagate::proto::gateway::Event>,
    command: &str,
) -> wagate::proto::gateway::MessageEvent {
    baileys.command(command);
    let sent = baileys.wait_for("sent", |_| true).await;
    let id = sent["id"].as_str().expect("message id").to_owned();
    let (event, _) = wait_for(events, command, |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    message_of(&event).expect("message").clone()
}
