//! Groups end to end through the gateway and the simulator: a wagate
//! session and virtual phones in one group. Texts both ways, membership
//! changes as events, a new sender key after a removal (the removed member
//! reads nothing new), and a gateway restart in the middle.

mod common;

use common::*;
use wagate::proto::gateway::{Event, GroupChange, SendRequest};
use wagate::proto::sim::{
    CreateGroupRequest, InboxRequest, SendGroupTextRequest, UpdateGroupParticipantsRequest,
};

const OWN: &str = "+15550005001";
const ANN: &str = "+15550005002";
const BEN: &str = "+15550005003";

fn group_of(event: &Event) -> Option<&wagate::proto::gateway::GroupEvent> {
    match &event.payload {
        Some(wagate::proto::gateway::event::Payload::Group(g)) => Some(g),
        _ => None,
    }
}

/// Texts in `phone`'s inbox for `group`, in order.
async fn group_texts(sim: &mut Sim, phone: &str, group: &str) -> Vec<String> {
    sim.control
        .inbox(InboxRequest {
            phone: phone.into(),
        })
        .await
        .expect("Inbox")
        .into_inner()
        .messages
        .into_iter()
        .filter(|m| m.chat == group)
        .map(|m| m.text)
        .collect()
}

/// Waits for the delivery receipts of `id` from each of `phones` (digits).
async fn delivered_to(events: &mut tonic::Streaming<Event>, id: &str, phones: &[&str]) {
    let mut waiting: Vec<&str> = phones.to_vec();
    while !waiting.is_empty() {
        let (event, _) = wait_for(events, "a delivery receipt", |e| {
            receipt_of(e).is_some_and(|r| r.message_ids.iter().any(|m| m == id))
        })
        .await;
        let from = receipt_of(&event).expect("receipt").from_phone.clone();
        waiting.retain(|p| *p != from);
    }
}

fn send(to: &str, text: &str, key: &str) -> SendRequest {
    SendRequest {
        session_id: "grp".into(),
        to: to.into(),
        text: text.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_texts_membership_and_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_device, mut events) = pair_with(&mut sim.control, &mut client, "grp", OWN).await;
    create_account(&mut sim.control, ANN, "Ann").await;
    create_account(&mut sim.control, BEN, "Ben").await;

    // Ann creates a group with us and Ben: we see it created.
    let group = sim
        .control
        .create_group(CreateGroupRequest {
            phone: ANN.into(),
            subject: "Team".into(),
            participants: vec![OWN.into(), BEN.into()],
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    let (created, _) = wait_for(&mut events, "the group's creation", |e| {
        group_of(e).is_some_and(|g| g.group == group)
    })
    .await;
    let created = group_of(&created).expect("group event");
    assert_eq!(created.change, GroupChange::GroupCreated as i32);
    assert_eq!(created.text, "Team");

    // We send to the group: both phones read it once.
    let sent = client
        .send(send(&group, "hello team", "g-1"))
        .await
        .expect("Send to group")
        .into_inner();
    let (own, _) = wait_for(&mut events, "our own group message", |e| {
        message_of(e).is_some_and(|m| m.id == sent.message_id)
    })
    .await;
    assert_eq!(message_of(&own).expect("message").chat, group);
    delivered_to(
        &mut events,
        &sent.message_id,
        &["15550005002", "15550005003"],
    )
    .await;

    // A phone writes to the group: it arrives with the group as chat and
    // the phone as sender.
    let id = sim
        .control
        .send_group_text(SendGroupTextRequest {
            from_phone: BEN.into(),
            group_jid: group.clone(),
            text: "hi from ben".into(),
        })
        .await
        .expect("SendGroupText")
        .into_inner()
        .message_id;
    let (event, _) = wait_for(&mut events, "Ben's group text", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    let message = message_of(&event).expect("message");
    assert_eq!(message.chat, group);
    assert_eq!(message.text, "hi from ben");
    assert_eq!(message.sender_phone, "15550005003");
    assert!(!message.from_me);

    // Ann removes Ben: we see it, and what we send next Ben cannot read.
    sim.control
        .update_group_participants(UpdateGroupParticipantsRequest {
            phone: ANN.into(),
            group_jid: group.clone(),
            action: "remove".into(),
            participants: vec![BEN.into()],
        })
        .await
        .expect("remove Ben");
    let (removed, _) = wait_for(&mut events, "Ben's removal", |e| {
        group_of(e).is_some_and(|g| g.change == GroupChange::GroupParticipantsRemoved as i32)
    })
    .await;
    assert_eq!(
        group_of(&removed).expect("group").participants,
        vec!["15550005003@s.whatsapp.net".to_owned()]
    );
    let sent = client
        .send(send(&group, "after ben left", "g-2"))
        .await
        .expect("Send after the removal")
        .into_inner();
    delivered_to(&mut events, &sent.message_id, &["15550005002"]).await;

    // A restart in the middle of the conversation: sends go on.
    let before = gateway.manager.events().last_cursor();
    gateway.shutdown().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "grp", before).await;
    wait_for(&mut events, "CONNECTED after the restart", |e| {
        is_state(e, wagate::proto::gateway::SessionState::Connected)
    })
    .await;
    let sent = client
        .send(send(&group, "after the restart", "g-3"))
        .await
        .expect("Send after the restart")
        .into_inner();
    delivered_to(&mut events, &sent.message_id, &["15550005002"]).await;
    // Ben, removed, got none of it.
    let ben = group_texts(&mut sim, BEN, &group).await;
    assert_eq!(ben, vec!["hello team".to_owned()], "Ben read: {ben:?}");
    let ann = group_texts(&mut sim, ANN, &group).await;
    assert_eq!(
        ann,
        vec![
            "hello team".to_owned(),
            "hi from ben".to_owned(),
            "after ben left".to_owned(),
            "after the restart".to_owned()
        ]
    );
}
