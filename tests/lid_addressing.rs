//! LID addressing end to end, the gateway against the simulator: a peer
//! the server moves to LID addressing in the middle of a conversation (its
//! texts then come from its LID) is read with the session made under its
//! phone number, and events and `Send` answers carry both its phone number
//! and its LID; a LID-addressed group, where the server names every member
//! by LID, carries texts both ways to every member once.

mod common;

use common::*;
use wagate::proto::gateway::event::Payload;
use wagate::proto::gateway::{ReceiptType, SendRequest};
use wagate::proto::sim::{
    HideLidRequest, SendChatStateRequest, SendGroupTextRequest, SendTextRequest,
};
use wagate::wa::jid::PhoneNumber;

const OWN: &str = "+15550007001";
const BOB: &str = "+15550007002";
const ANN: &str = "+15550007003";
const BEN: &str = "+15550007004";

fn send(session: &str, to: &str, text: &str, key: &str) -> SendRequest {
    SendRequest {
        session_id: session.into(),
        to: to.into(),
        text: text.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

async fn phone_sends(sim: &mut Sim, from: &str, to: &str, text: &str, from_lid: bool) -> String {
    sim.control
        .send_text(SendTextRequest {
            from_phone: from.into(),
            to: to.into(),
            text: text.into(),
            from_lid,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id
}

/// The simulator's LID of `phone`'s account, as `…@lid`.
fn lid_of(sim: &Sim, phone: &str) -> String {
    let phone: PhoneNumber = phone.parse().expect("phone number");
    sim.sim.lid_of(&phone).expect("an account").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_moved_to_its_lid_is_read_with_the_same_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_device, mut events) = pair_with(&mut sim.control, &mut client, "lid", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;
    // Bob's account is not on LID addressing yet: the server keeps his
    // LID to itself, and the conversation starts under phone numbers.
    sim.control
        .hide_lid(HideLidRequest { phone: BOB.into() })
        .await
        .expect("HideLid");
    let bob_lid = lid_of(&sim, BOB);

    let one = phone_sends(&mut sim, BOB, OWN, "one", false).await;
    let (event, _) = wait_for(&mut events, "Bob's first text", |e| {
        message_of(e).is_some_and(|m| m.id == one)
    })
    .await;
    let message = message_of(&event).expect("message");
    assert_eq!(message.sender_phone, "15550007002");
    assert_eq!(message.sender_lid, "", "the LID is not known yet");
    let sent = client
        .send(send("lid", BOB, "two", "lid-2"))
        .await
        .expect("Send")
        .into_inner();
    assert_eq!(sent.recipient_phone, "15550007002");
    assert_eq!(sent.recipient_lid, "");
    delivered_to(&mut events, &sent.message_id, &["15550007002"]).await;

    // The server moves Bob to his LID: his next text comes from it, with
    // his number in `sender_pn`, encrypted with the session he has. Read
    // under the LID's address with no session there, it would never
    // decrypt (the gateway would only ask for resends).
    let three = phone_sends(&mut sim, BOB, OWN, "three", true).await;
    let (event, _) = wait_for(&mut events, "Bob's text from his LID", |e| {
        message_of(e).is_some_and(|m| m.id == three)
    })
    .await;
    let message = message_of(&event).expect("message");
    assert_eq!(message.text, "three");
    assert_eq!(message.error, "");
    assert_eq!(message.sender, bob_lid);
    assert_eq!(message.sender_phone, "15550007002");
    assert_eq!(message.sender_lid, bob_lid);
    assert_eq!(message.chat, bob_lid);
    assert_eq!(message.chat_phone, "15550007002");
    assert_eq!(message.chat_lid, bob_lid);

    // Our answer to his number goes through the same (moved) session; the
    // answer and the receipt name both addresses now.
    let sent = client
        .send(send("lid", BOB, "four", "lid-4"))
        .await
        .expect("Send")
        .into_inner();
    assert_eq!(sent.recipient_phone, "15550007002");
    assert_eq!(sent.recipient_lid, bob_lid);
    let (receipt, _) = wait_for(&mut events, "Bob's receipt of four", |e| {
        receipt_of(e).is_some_and(|r| {
            r.message_ids.contains(&sent.message_id) && r.r#type == ReceiptType::Delivered as i32
        })
    })
    .await;
    let receipt = receipt_of(&receipt).expect("receipt");
    assert_eq!(receipt.from_phone, "15550007002");
    assert_eq!(receipt.from_lid, bob_lid);
    let own_chat = "15550007001@s.whatsapp.net";
    assert_eq!(
        chat_texts(&mut sim.control, BOB, own_chat).await,
        vec!["two".to_owned(), "four".to_owned()]
    );
    let five = phone_sends(&mut sim, BOB, OWN, "five", true).await;
    let (event, _) = wait_for(&mut events, "Bob's second text from his LID", |e| {
        message_of(e).is_some_and(|m| m.id == five)
    })
    .await;
    assert_eq!(message_of(&event).expect("message").text, "five");

    // Other events name both addresses too: Bob typing.
    sim.control
        .send_chat_state(SendChatStateRequest {
            from_phone: BOB.into(),
            chat: OWN.into(),
            state: "composing".into(),
        })
        .await
        .expect("SendChatState");
    let (event, _) = wait_for(&mut events, "Bob typing", |e| {
        matches!(&e.payload, Some(Payload::ChatState(_)))
    })
    .await;
    let Some(Payload::ChatState(typing)) = &event.payload else {
        unreachable!("matched above");
    };
    assert_eq!(typing.sender_phone, "15550007002");
    assert_eq!(typing.sender_lid, bob_lid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lid_addressed_group_carries_texts_both_ways_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_device, mut events) = pair_with(&mut sim.control, &mut client, "lgrp", OWN).await;
    create_account(&mut sim.control, ANN, "Ann").await;
    create_account(&mut sim.control, BEN, "Ben").await;
    let ann_lid = lid_of(&sim, ANN);
    let ben_lid = lid_of(&sim, BEN);

    let (group, created) = phone_creates_group(
        &mut sim.control,
        &mut events,
        ANN,
        "By LID",
        &[OWN, BEN],
        true,
    )
    .await;
    assert_eq!(created.actor, ann_lid);
    assert_eq!(created.actor_phone, "15550007003");

    // The metadata names members by LID, with their numbers.
    let info = client
        .group_info(wagate::proto::gateway::GroupRequest {
            session_id: "lgrp".into(),
            group: group.clone(),
        })
        .await
        .expect("GroupInfo")
        .into_inner();
    let mut members: Vec<(String, String, String)> = info
        .participants
        .iter()
        .map(|p| (p.jid.clone(), p.phone.clone(), p.lid.clone()))
        .collect();
    members.sort();
    let own_lid = lid_of(&sim, OWN);
    // The account's own LID, from pairing and login.
    let status = client
        .status(wagate::proto::gateway::StatusRequest {
            session_id: "lgrp".into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(status.lid, own_lid);
    let mut expected = vec![
        (ann_lid.clone(), "15550007003".to_owned(), ann_lid.clone()),
        (ben_lid.clone(), "15550007004".to_owned(), ben_lid.clone()),
        (own_lid.clone(), "15550007001".to_owned(), own_lid.clone()),
    ];
    expected.sort();
    assert_eq!(members, expected);

    // We write: each phone reads it once, and both delivery receipts
    // name the reader's number.
    let sent = client
        .send(send("lgrp", &group, "hello by lid", "lg-1"))
        .await
        .expect("Send to the group")
        .into_inner();
    assert_eq!(sent.recipient_phone, "");
    delivered_to(
        &mut events,
        &sent.message_id,
        &["15550007003", "15550007004"],
    )
    .await;

    // Both phones write: each text arrives once, from the LID device
    // with the number alongside.
    let mut ids = Vec::new();
    for (phone, text) in [(ANN, "ann here"), (BEN, "ben here")] {
        let id = sim
            .control
            .send_group_text(SendGroupTextRequest {
                from_phone: phone.into(),
                group_jid: group.clone(),
                text: text.into(),
            })
            .await
            .expect("SendGroupText")
            .into_inner()
            .message_id;
        ids.push(id);
    }
    let mut got = Vec::new();
    for id in &ids {
        let (event, seen) = wait_for(&mut events, "a phone's group text", |e| {
            message_of(e).is_some_and(|m| m.id == *id)
        })
        .await;
        assert!(
            !seen.iter().chain(std::iter::once(&event)).any(|e| {
                message_of(e).is_some_and(|m| got.iter().any(|(g, _, _, _)| *g == m.id))
            }),
            "a text arrived twice"
        );
        let m = message_of(&event).expect("message");
        assert_eq!(m.chat, group);
        assert_eq!(m.chat_phone, "");
        got.push((
            m.id.clone(),
            m.sender.clone(),
            m.sender_phone.clone(),
            m.sender_lid.clone(),
        ));
    }
    assert_eq!(
        got.iter()
            .map(|(_, s, p, l)| (s.clone(), p.clone(), l.clone()))
            .collect::<Vec<_>>(),
        vec![
            (ann_lid.clone(), "15550007003".to_owned(), ann_lid.clone()),
            (ben_lid.clone(), "15550007004".to_owned(), ben_lid.clone()),
        ]
    );

    // And a second text from us still reaches both, once each.
    let sent = client
        .send(send("lgrp", &group, "again by lid", "lg-2"))
        .await
        .expect("Send to the group")
        .into_inner();
    delivered_to(
        &mut events,
        &sent.message_id,
        &["15550007003", "15550007004"],
    )
    .await;
    let texts = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        chat_texts(&mut sim.control, ANN, &group).await,
        texts(&["hello by lid", "ben here", "again by lid"])
    );
    assert_eq!(
        chat_texts(&mut sim.control, BEN, &group).await,
        texts(&["hello by lid", "ann here", "again by lid"])
    );
}
