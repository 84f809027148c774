//! Interop with an independent client: an unmodified Baileys (npm) paired on
//! the simulator and a wagate session exchange end-to-end encrypted texts in
//! both directions, each side decrypting the other's, with delivery
//! receipts both ways; then replies, reactions, edits, revokes, locations,
//! contact cards, polls and votes, each way.

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
    content_both_ways(&mut client, &mut events, &mut baileys).await;

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

/// Locations, contact cards and polls each way, and votes: Baileys reads
/// wagate's (and decrypts wagate's vote on its poll itself); wagate reads
/// Baileys' and opens Baileys' vote on a wagate poll.
async fn content_both_ways(
    client: &mut wagate::proto::gateway::gateway_client::GatewayClient<tonic::transport::Channel>,
    events: &mut tonic::Streaming<wagate::proto::gateway::Event>,
    baileys: &mut NodeScript,
) {
    use wagate::proto::gateway::send_request::{Action, Content};
    use wagate::proto::gateway::{ContactCard, Contacts, Location, MessageRef, Poll, PollVote};
    const WAGATE: &str = "15550300002@s.whatsapp.net";
    let send = |content: Option<Content>, action: Option<Action>| SendRequest {
        session_id: "interop".into(),
        to: "+15550300001".into(),
        content,
        action,
        ..Default::default()
    };
    let hash = |o: &str| hex::encode(wagate::wa::content::option_hash(o));

    // wagate → Baileys.
    let place = Location {
        latitude: 40.689_247,
        longitude: -74.044_502,
        name: "Liberty Island".into(),
        address: "New York".into(),
        ..Default::default()
    };
    let id = client
        .send(send(Some(Content::Location(place)), None))
        .await
        .expect("location")
        .into_inner()
        .message_id;
    let got = baileys
        .wait_for("message", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(got["kind"], "locationMessage");
    assert_eq!(got["location"]["lat"], 40.689_247);
    assert_eq!(got["location"]["long"], -74.044_502);
    assert_eq!(got["location"]["name"], "Liberty Island");
    assert_eq!(got["location"]["address"], "New York");

    let card = |name: &str| ContactCard {
        display_name: name.into(),
        vcard: format!("BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nEND:VCARD"),
    };
    let id = client
        .send(send(
            Some(Content::Contacts(Contacts {
                display_name: "Two".into(),
                cards: vec![card("Ada"), card("Bo")],
            })),
            None,
        ))
        .await
        .expect("contacts")
        .into_inner()
        .message_id;
    let got = baileys
        .wait_for("message", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(got["kind"], "contactsArrayMessage");
    assert_eq!(got["contacts"]["displayName"], "Two");
    assert_eq!(got["contacts"]["cards"][1]["displayName"], "Bo");
    assert_eq!(
        got["contacts"]["cards"][1]["vcard"],
        card("Bo").vcard.as_str()
    );

    let poll = Poll {
        name: "Tea or coffee?".into(),
        options: vec!["tea".into(), "coffee".into(), "both".into()],
        selectable_count: 0,
    };
    let our_poll = client
        .send(send(Some(Content::Poll(poll)), None))
        .await
        .expect("poll")
        .into_inner()
        .message_id;
    let got = baileys
        .wait_for("message", |v| v["id"] == our_poll.as_str())
        .await;
    assert_eq!(got["poll"]["name"], "Tea or coffee?");
    assert_eq!(got["poll"]["options"][2], "both");
    assert_eq!(got["poll"]["secret"], true, "the message secret travels");

    // Baileys votes on it; wagate opens the vote.
    let got = from_baileys(
        baileys,
        events,
        &format!("vote {WAGATE} {our_poll} 0 coffee|tea"),
    )
    .await;
    assert_eq!(got.r#type, "poll_vote");
    assert_eq!(got.error, "");
    let vote = got.poll_vote.expect("vote");
    assert_eq!(vote.options, vec!["tea", "coffee"]);
    assert_eq!(
        vote.poll.map(|p| (p.id, p.from_me)),
        Some((our_poll.clone(), true))
    );

    // Baileys → wagate.
    let got = from_baileys(
        baileys,
        events,
        &format!("location {WAGATE} -22.951916 -43.210487 Cristo Redentor"),
    )
    .await;
    assert_eq!(got.r#type, "locationMessage");
    let l = got.location.expect("location");
    assert_eq!(
        (l.latitude, l.longitude, l.name.as_str()),
        (-22.951_916, -43.210_487, "Cristo Redentor")
    );
    // Baileys sends one card as a contactMessage, several as an array.
    let got = from_baileys(baileys, events, &format!("contacts {WAGATE} Cleo")).await;
    assert_eq!(got.r#type, "contactMessage");
    let cards = got.contacts.expect("cards").cards;
    assert_eq!(cards.len(), 1);
    assert!(cards[0].vcard.contains("FN:Cleo"), "{:?}", cards[0].vcard);
    let got = from_baileys(baileys, events, &format!("contacts {WAGATE} Dan|Eli")).await;
    assert_eq!(got.r#type, "contactsArrayMessage");
    let cards = got.contacts.expect("cards");
    assert_eq!(cards.display_name, "2 contacts");
    assert_eq!(cards.cards.len(), 2);
    assert!(cards.cards[0].vcard.contains("FN:Dan"), "{cards:?}");
    assert!(cards.cards[1].vcard.contains("FN:Eli"), "{cards:?}");
    let got = from_baileys(
        baileys,
        events,
        &format!("poll {WAGATE} 1 Which day?|Mon|Tue|Wed"),
    )
    .await;
    assert_eq!(got.r#type, "poll");
    let their_poll = got.id.clone();
    assert_eq!(
        got.poll,
        Some(Poll {
            name: "Which day?".into(),
            options: vec!["Mon".into(), "Tue".into(), "Wed".into()],
            selectable_count: 1,
        })
    );

    // wagate votes on Baileys' poll; Baileys decrypts the vote itself.
    client
        .send(send(
            None,
            Some(Action::PollVote(PollVote {
                poll: Some(MessageRef {
                    id: their_poll.clone(),
                    from_me: false,
                    sender: String::new(),
                }),
                options: vec!["Tue".into()],
            })),
        ))
        .await
        .expect("vote");
    let got = baileys
        .wait_for("vote", |v| v["pollId"] == their_poll.as_str())
        .await;
    assert_eq!(got["options"], serde_json::json!([hash("Tue")]), "{got}");
}
