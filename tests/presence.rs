//! Read receipts, chat states and presence between two wagate sessions
//! (two accounts) through the simulator: `MarkRead` reaches the sender as a
//! READ receipt (in one-to-one chats and groups) unless the reader keeps
//! its receipts private, `SendChatState` reaches the peer's online devices,
//! and `SetPresence` reaches whoever called `SubscribePresence`. Bad
//! requests are refused with the field named.

mod common;

use common::*;
use tonic::transport::Channel;
use tonic::Code;
use wagate::proto::gateway::{
    event, ChatState, ChatStateEvent, Event, MarkReadRequest, PresenceEvent, ReceiptType,
    SendChatStateRequest, SendRequest, SetPresenceRequest, SubscribePresenceRequest,
};
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::proto::sim::{CreateGroupRequest, SetReadReceiptsRequest};

const ANN: &str = "+15550003001";
const BOB: &str = "+15550003002";
const CAT: &str = "+15550003003";
const ANN_JID: &str = "15550003001@s.whatsapp.net";
const BOB_JID: &str = "15550003002@s.whatsapp.net";
const CAT_JID: &str = "15550003003@s.whatsapp.net";

type Events = tonic::Streaming<Event>;

fn text(session: &str, to: &str, body: &str) -> SendRequest {
    SendRequest {
        session_id: session.into(),
        to: to.into(),
        text: body.into(),
        ..Default::default()
    }
}

fn mark_read(session: &str, chat: &str, ids: &[&str], sender: &str) -> MarkReadRequest {
    MarkReadRequest {
        session_id: session.into(),
        chat: chat.into(),
        message_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
        sender: sender.into(),
    }
}

fn chat_state(session: &str, chat: &str, state: ChatState) -> SendChatStateRequest {
    SendChatStateRequest {
        session_id: session.into(),
        chat: chat.into(),
        state: state as i32,
    }
}

fn chat_state_of(event: &Event) -> Option<&ChatStateEvent> {
    match &event.payload {
        Some(event::Payload::ChatState(c)) => Some(c),
        _ => None,
    }
}

fn presence_of(event: &Event) -> Option<&PresenceEvent> {
    match &event.payload {
        Some(event::Payload::Presence(p)) => Some(p),
        _ => None,
    }
}

fn is_read_of(event: &Event, id: &str) -> bool {
    receipt_of(event).is_some_and(|r| {
        r.r#type == ReceiptType::Read as i32 && r.message_ids.iter().any(|m| m == id)
    })
}

/// `from` sends `body` to `to`; waits until `to_events` has it.
async fn send_and_receive(
    client: &mut wagate::proto::gateway::gateway_client::GatewayClient<Channel>,
    from: &str,
    to: &str,
    body: &str,
    to_events: &mut Events,
) -> String {
    let id = client
        .send(text(from, to, body))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    wait_for(to_events, "the text", |e| {
        message_of(e).is_some_and(|m| m.id == id && !m.from_me)
    })
    .await;
    id
}

/// The next chat state event of `events`.
/// Cat's virtual phone makes a group of Cat, Ann and Bob; its JID.
async fn cats_group(control: &mut SimulatorClient<Channel>, subject: &str) -> String {
    create_account(control, CAT, "Cat").await;
    control
        .create_group(CreateGroupRequest {
            phone: CAT.into(),
            subject: subject.into(),
            participants: vec![ANN.into(), BOB.into()],
            lid_addressed: false,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid
}

async fn next_chat_state(events: &mut Events, what: &str) -> ChatStateEvent {
    let (event, _) = wait_for(events, what, |e| chat_state_of(e).is_some()).await;
    chat_state_of(&event).expect("chat state").clone()
}

/// The next presence event of `events` from `from`.
async fn next_presence(events: &mut Events, what: &str, from: &str) -> PresenceEvent {
    let (event, _) = wait_for(events, what, |e| {
        presence_of(e).is_some_and(|p| p.from == from)
    })
    .await;
    presence_of(&event).expect("presence").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_reach_the_sender_unless_kept_private() {
    let mut sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(running.addr).await;
    let (_, mut ann) = pair_with(&mut sim.control, &mut client, "ann", ANN).await;
    let (_, mut bob) = pair_with(&mut sim.control, &mut client, "bob", BOB).await;

    // One-to-one: Bob reads Ann's text, Ann sees it read.
    let first = send_and_receive(&mut client, "ann", BOB, "seen?", &mut bob).await;
    let answer = client
        .mark_read(mark_read("bob", ANN, &[&first], ""))
        .await
        .expect("MarkRead")
        .into_inner();
    assert!(answer.receipts_sent);
    let (read, _) = wait_for(&mut ann, "Bob's read receipt", |e| is_read_of(e, &first)).await;
    let read = receipt_of(&read).expect("receipt");
    assert_eq!(read.chat, BOB_JID);
    assert_eq!(read.from_phone, "15550003002");
    assert_eq!(read.message_ids, vec![first.clone()]);

    // Bob keeps his read receipts private: MarkRead says so and Ann is not
    // told. Once he shares them again, the next read reaches Ann, and the
    // private one never did before it.
    let share = |shared: bool| SetReadReceiptsRequest {
        phone: BOB.into(),
        shared,
    };
    sim.control
        .set_read_receipts(share(false))
        .await
        .expect("SetReadReceipts");
    let private = send_and_receive(&mut client, "ann", BOB, "private", &mut bob).await;
    let answer = client
        .mark_read(mark_read("bob", ANN_JID, &[&private], ANN))
        .await
        .expect("MarkRead")
        .into_inner();
    assert!(!answer.receipts_sent);
    sim.control
        .set_read_receipts(share(true))
        .await
        .expect("SetReadReceipts");
    let second = send_and_receive(&mut client, "ann", BOB, "and now?", &mut bob).await;
    let third = send_and_receive(&mut client, "ann", BOB, "and this?", &mut bob).await;
    let answer = client
        .mark_read(mark_read("bob", ANN, &[&second, &third], ""))
        .await
        .expect("MarkRead")
        .into_inner();
    assert!(answer.receipts_sent);
    let (read, before) = wait_for(&mut ann, "the read of two texts", |e| {
        is_read_of(e, &second)
    })
    .await;
    assert_eq!(
        receipt_of(&read).expect("receipt").message_ids,
        vec![second.clone(), third.clone()],
        "one receipt names both"
    );
    assert!(
        !before.iter().any(|e| is_read_of(e, &private)),
        "a private read reached the sender: {before:#?}"
    );

    // A group: Bob reads Ann's group text, naming her as its sender.
    let group = cats_group(&mut sim.control, "Readers").await;
    for events in [&mut ann, &mut bob] {
        wait_for(events, "the group's creation", |e| {
            group_of(e).is_some_and(|g| g.group == group)
        })
        .await;
    }
    let in_group = send_and_receive(&mut client, "ann", &group, "hi all", &mut bob).await;
    let answer = client
        .mark_read(mark_read("bob", &group, &[&in_group], ANN))
        .await
        .expect("MarkRead in a group")
        .into_inner();
    assert!(answer.receipts_sent);
    let (read, _) = wait_for(&mut ann, "Bob's group read", |e| is_read_of(e, &in_group)).await;
    let read = receipt_of(&read).expect("receipt");
    assert_eq!(read.chat, group);
    assert_eq!(read.from_phone, "15550003002");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_states_and_presence_reach_online_devices() {
    let mut sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(running.addr).await;
    let (_, mut ann) = pair_with(&mut sim.control, &mut client, "ann", ANN).await;
    let (_, mut bob) = pair_with(&mut sim.control, &mut client, "bob", BOB).await;

    // Ann types, records, then stops: Bob sees each from her.
    for state in [
        ChatState::Composing,
        ChatState::Recording,
        ChatState::Paused,
    ] {
        client
            .send_chat_state(chat_state("ann", BOB, state))
            .await
            .expect("SendChatState");
        let got = next_chat_state(&mut bob, "Ann's chat state").await;
        assert_eq!(got.state, state as i32);
        assert_eq!((got.chat.as_str(), got.sender.as_str()), (ANN_JID, ANN_JID));
        assert_eq!(got.sender_phone, "15550003001");
    }

    // Bob follows Ann: he hears her state at once (never online yet), then
    // each change, with when she was last seen once she leaves.
    client
        .subscribe_presence(SubscribePresenceRequest {
            session_id: "bob".into(),
            jid: ANN.into(),
        })
        .await
        .expect("SubscribePresence");
    let now = next_presence(&mut bob, "Ann's presence now", ANN_JID).await;
    assert!(!now.available);
    assert!(now.last_seen.is_none());
    for available in [true, false] {
        client
            .set_presence(SetPresenceRequest {
                session_id: "ann".into(),
                available,
            })
            .await
            .expect("SetPresence");
        let got = next_presence(&mut bob, "Ann's presence change", ANN_JID).await;
        assert_eq!(got.available, available);
        assert_eq!(got.from_phone, "15550003001");
        assert_eq!(got.last_seen.is_some_and(|t| t.seconds > 0), !available);
    }

    // A group: Bob types there, Ann sees it with the group as chat. Cat's
    // virtual phone types and goes online too.
    let group = cats_group(&mut sim.control, "Typists").await;
    wait_for(&mut ann, "the group's creation", |e| {
        group_of(e).is_some_and(|g| g.group == group)
    })
    .await;
    client
        .send_chat_state(chat_state("bob", &group, ChatState::Composing))
        .await
        .expect("SendChatState to a group");
    let got = next_chat_state(&mut ann, "Bob typing in the group").await;
    assert_eq!(
        (got.chat.as_str(), got.sender.as_str(), got.state),
        (group.as_str(), BOB_JID, ChatState::Composing as i32)
    );

    sim.control
        .send_chat_state(wagate::proto::sim::SendChatStateRequest {
            from_phone: CAT.into(),
            chat: group.clone(),
            state: "paused".into(),
        })
        .await
        .expect("Cat's chat state");
    let got = next_chat_state(&mut ann, "Cat pausing in the group").await;
    assert_eq!(
        (got.chat.as_str(), got.sender.as_str(), got.state),
        (group.as_str(), CAT_JID, ChatState::Paused as i32)
    );
    client
        .subscribe_presence(SubscribePresenceRequest {
            session_id: "ann".into(),
            jid: CAT_JID.into(),
        })
        .await
        .expect("SubscribePresence");
    next_presence(&mut ann, "Cat's presence now", CAT_JID).await;
    sim.control
        .set_presence(wagate::proto::sim::SetPresenceRequest {
            phone: CAT.into(),
            available: true,
        })
        .await
        .expect("Cat online");
    let got = next_presence(&mut ann, "Cat online", CAT_JID).await;
    assert!(got.available);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused() {
    let sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(running.addr).await;
    let group = "120363000000000001@g.us";
    let many: Vec<String> = (0..1001).map(|n| format!("3EB0{n:06}")).collect();

    let invalid = [
        mark_read("s", ANN, &[], ""),
        MarkReadRequest {
            message_ids: many,
            ..mark_read("s", ANN, &[], "")
        },
        mark_read("s", group, &["3EB0A"], ""),
        mark_read("s", ANN, &["3EB0A"], BOB),
        mark_read("s", "not a chat", &["3EB0A"], ""),
    ];
    for request in invalid {
        let e = client.mark_read(request).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = client
        .mark_read(mark_read("s", group, &["3EB0A"], ""))
        .await
        .expect_err("refused");
    assert!(e.message().contains("sender"), "{}", e.message());

    for state in [ChatState::Unspecified as i32, 42] {
        let e = client
            .send_chat_state(SendChatStateRequest {
                state,
                ..chat_state("s", BOB, ChatState::Composing)
            })
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let e = client
        .subscribe_presence(SubscribePresenceRequest {
            session_id: "s".into(),
            jid: group.into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // Well-formed requests for a session that does not exist.
    let missing = [
        client
            .mark_read(mark_read("nobody", ANN, &["3EB0A"], ""))
            .await
            .map(|_| ()),
        client
            .send_chat_state(chat_state("nobody", BOB, ChatState::Paused))
            .await
            .map(|_| ()),
        client
            .set_presence(SetPresenceRequest {
                session_id: "nobody".into(),
                available: true,
            })
            .await
            .map(|_| ()),
        client
            .subscribe_presence(SubscribePresenceRequest {
                session_id: "nobody".into(),
                jid: ANN.into(),
            })
            .await
            .map(|_| ()),
    ];
    for outcome in missing {
        assert_eq!(outcome.expect_err("no such session").code(), Code::NotFound);
    }
}
