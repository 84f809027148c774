//! Replies, mentions, reactions, edits and revokes between two wagate
//! sessions (two accounts) through the simulator: each arrives as such on
//! the other side, with its target from the receiver's point of view, and
//! the sender's own copy says the same.

mod common;

use common::*;
use wagate::proto::gateway::send_request::Action;
use wagate::proto::gateway::{MessageEvent, MessageRef, Reaction, SendRequest};

const ANN: &str = "+15550001001";
const BOB: &str = "+15550001002";
const BOB_JID: &str = "15550001002@s.whatsapp.net";
const ANN_JID: &str = "15550001001@s.whatsapp.net";

fn to(session: &str, peer: &str) -> SendRequest {
    SendRequest {
        session_id: session.into(),
        to: peer.into(),
        ..Default::default()
    }
}

fn target(id: &str, from_me: bool) -> MessageRef {
    MessageRef {
        id: id.into(),
        from_me,
        sender: String::new(),
    }
}

/// The next message event of `events` (skipping receipts and the like).
async fn next_message(
    events: &mut tonic::Streaming<wagate::proto::gateway::Event>,
    what: &str,
    from_me: bool,
) -> MessageEvent {
    let (event, _) = wait_for(events, what, |e| {
        message_of(e).is_some_and(|m| m.from_me == from_me)
    })
    .await;
    message_of(&event).expect("message").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_reactions_edits_and_revokes_arrive_as_such() {
    let mut sim = start_sim().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let running = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(running.addr).await;
    let (_, mut ann) = pair_with(&mut sim.control, &mut client, "ann", ANN).await;
    let (_, mut bob) = pair_with(&mut sim.control, &mut client, "bob", BOB).await;

    // Ann writes; Bob answers quoting it and mentioning Ann.
    let first = client
        .send(SendRequest {
            text: "lunch at noon?".into(),
            ..to("ann", BOB)
        })
        .await
        .expect("send")
        .into_inner()
        .message_id;
    let got = next_message(&mut bob, "Ann's text", false).await;
    assert_eq!(
        (got.id.as_str(), got.text.as_str()),
        (first.as_str(), "lunch at noon?")
    );

    let reply = client
        .send(SendRequest {
            text: "yes @15550001001".into(),
            reply_to: Some(target(&first, false)),
            quoted_text: "lunch at noon?".into(),
            mentions: vec![ANN.into()],
            ..to("bob", ANN)
        })
        .await
        .expect("reply")
        .into_inner()
        .message_id;
    let own = next_message(&mut bob, "Bob's own reply", true).await;
    assert_eq!(own.r#type, "text");
    assert_eq!(
        own.target.as_ref().map(|t| (t.id.as_str(), t.from_me)),
        Some((first.as_str(), false))
    );
    let got = next_message(&mut ann, "Bob's reply", false).await;
    assert_eq!(got.id, reply);
    assert_eq!(got.r#type, "text");
    assert_eq!(got.text, "yes @15550001001");
    assert_eq!(got.quoted_text, "lunch at noon?");
    assert_eq!(got.mentions, vec![ANN_JID.to_owned()]);
    let quoted = got.target.expect("the quoted message");
    assert_eq!(quoted.id, first);
    assert!(quoted.from_me, "Ann's own message was quoted");
    assert_eq!(quoted.sender, ANN_JID);

    // Ann reacts to the reply, then takes the reaction back.
    for emoji in ["👍", ""] {
        client
            .send(SendRequest {
                action: Some(Action::Reaction(Reaction {
                    target: Some(target(&reply, false)),
                    emoji: emoji.into(),
                })),
                ..to("ann", BOB)
            })
            .await
            .expect("reaction");
        let got = next_message(&mut bob, "Ann's reaction", false).await;
        assert_eq!(
            (got.r#type.as_str(), got.text.as_str()),
            ("reaction", emoji)
        );
        let on = got.target.expect("reaction target");
        assert_eq!(on.id, reply);
        assert!(on.from_me, "the reaction is on Bob's message");
        assert_eq!(on.sender, BOB_JID);
    }

    // Ann edits her first message, then revokes it.
    client
        .send(SendRequest {
            text: "lunch at one?".into(),
            action: Some(Action::Edit(target(&first, true))),
            ..to("ann", BOB)
        })
        .await
        .expect("edit");
    let got = next_message(&mut bob, "Ann's edit", false).await;
    assert_eq!(
        (got.r#type.as_str(), got.text.as_str()),
        ("edit", "lunch at one?")
    );
    let edited = got.target.expect("edit target");
    assert_eq!(
        (edited.id.as_str(), edited.from_me),
        (first.as_str(), false)
    );
    assert_eq!(edited.sender, ANN_JID);

    client
        .send(SendRequest {
            action: Some(Action::Revoke(target(&first, true))),
            ..to("ann", BOB)
        })
        .await
        .expect("revoke");
    let got = next_message(&mut bob, "Ann's revoke", false).await;
    assert_eq!(got.r#type, "revoke");
    assert_eq!(got.target.map(|t| t.id), Some(first.clone()));

    // A retried reaction with its idempotency key is sent once.
    let react = SendRequest {
        action: Some(Action::Reaction(Reaction {
            target: Some(target(&reply, false)),
            emoji: "🎉".into(),
        })),
        idempotency_key: "react-once".into(),
        ..to("ann", BOB)
    };
    let a = client
        .send(react.clone())
        .await
        .expect("reaction")
        .into_inner();
    let b = client
        .send(react)
        .await
        .expect("retried reaction")
        .into_inner();
    assert_eq!(a.message_id, b.message_id);
    let got = next_message(&mut bob, "the party reaction", false).await;
    assert_eq!(
        (got.id.as_str(), got.text.as_str()),
        (a.message_id.as_str(), "🎉")
    );
    // Nothing more from Ann: a text sent now is the very next message.
    let last = client
        .send(SendRequest {
            text: "done".into(),
            ..to("ann", BOB)
        })
        .await
        .expect("send")
        .into_inner()
        .message_id;
    let got = next_message(&mut bob, "Ann's last text", false).await;
    assert_eq!(got.id, last, "the retried reaction was not delivered twice");

    // Bad requests are refused with the field named.
    let e = client
        .send(SendRequest {
            text: "x".into(),
            action: Some(Action::Edit(target(&reply, false))),
            ..to("ann", BOB)
        })
        .await
        .expect_err("editing another's message");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("edit.from_me:"), "{}", e.message());

    running.shutdown().await;
}
