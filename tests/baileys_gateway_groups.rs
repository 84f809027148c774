//! Groups with an independent client: a wagate session, an unmodified
//! Baileys and two virtual phones in one group on the simulator. Texts from
//! each member reach the others once; a removal re-keys (the removed phone
//! reads nothing new); a gateway restart in the middle changes nothing.

mod common;
mod sim_support;

use common::{create_account, delivered_to, message_of, pair_with, start_gateway, wait_for};
use sim_support::{path, Harness, NodeScript};
use wagate::proto::gateway::{
    CreateGroupRequest, ParticipantAction, SendRequest, UpdateParticipantsRequest,
};
use wagate::proto::sim::SendGroupTextRequest;

const BAILEYS: &str = "+15550400001";
const WAGATE: &str = "+15550400002";
const PHONE_A: &str = "+15550400003";
const PHONE_B: &str = "+15550400004";

fn send(group: &str, text: &str) -> SendRequest {
    SendRequest {
        session_id: "g".into(),
        to: group.into(),
        text: text.into(),
        idempotency_key: String::new(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wagate_baileys_and_phones_share_a_group() {
    let mut harness = Harness::start().await;
    let auth = tempfile::tempdir().expect("temp dir");
    let (baileys_device, _) = harness.pair(BAILEYS, "Baileys User", auth.path()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = start_gateway(common::options(dir.path(), &harness.sim)).await;
    let mut client = common::client(gateway.addr).await;
    create_account(&mut harness.control, WAGATE, "Wagate User").await;
    create_account(&mut harness.control, PHONE_A, "Ann").await;
    create_account(&mut harness.control, PHONE_B, "Ben").await;
    let (_, mut events) = pair_with(&mut harness.control, &mut client, "g", WAGATE).await;
    let url = harness.sim.ws_url();
    let mut baileys = NodeScript::spawn("baileys-groups.js", &[&url, path(auth.path())]);
    baileys.wait_for("open", |_| true).await;

    // wagate creates the group with everyone in it.
    let group = client
        .create_group(CreateGroupRequest {
            session_id: "g".into(),
            subject: "Mixed".into(),
            participants: vec![BAILEYS.into(), PHONE_A.into(), PHONE_B.into()],
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .jid;

    // wagate → everyone.
    let sent = client
        .send(send(&group, "hello from wagate"))
        .await
        .expect("Send")
        .into_inner();
    let got = baileys
        .wait_for("message", |v| v["id"] == sent.message_id.as_str())
        .await;
    assert_eq!(got["from"], group.as_str());
    assert_eq!(got["text"], "hello from wagate");
    delivered_to(
        &mut events,
        &sent.message_id,
        &["15550400001", "15550400003", "15550400004"],
    )
    .await;

    // Baileys → everyone: wagate decrypts Baileys' sender key message.
    baileys.command(&format!("send {group} hello from baileys"));
    let id = baileys.wait_for("sent", |_| true).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (event, _) = wait_for(&mut events, "Baileys' group text", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    let message = message_of(&event).expect("message");
    assert_eq!(message.chat, group);
    assert_eq!(message.text, "hello from baileys");
    assert_eq!(message.sender, baileys_device);

    // A phone → everyone.
    let id = harness
        .control
        .send_group_text(SendGroupTextRequest {
            from_phone: PHONE_A.into(),
            group_jid: group.clone(),
            text: "hello from ann".into(),
        })
        .await
        .expect("SendGroupText")
        .into_inner()
        .message_id;
    wait_for(&mut events, "Ann's group text", |e| {
        message_of(e).is_some_and(|m| m.id == id && m.text == "hello from ann")
    })
    .await;
    let got = baileys
        .wait_for("message", |v| v["id"] == id.as_str())
        .await;
    assert_eq!(got["text"], "hello from ann");

    // wagate removes Ben: what follows, Ben cannot read; the others can.
    client
        .update_participants(UpdateParticipantsRequest {
            session_id: "g".into(),
            group: group.clone(),
            action: ParticipantAction::Remove as i32,
            participants: vec![PHONE_B.into()],
        })
        .await
        .expect("remove Ben");
    let sent = client
        .send(send(&group, "after ben left"))
        .await
        .expect("Send")
        .into_inner();
    baileys
        .wait_for("message", |v| v["id"] == sent.message_id.as_str())
        .await;
    delivered_to(&mut events, &sent.message_id, &["15550400003"]).await;

    // A restart of the gateway in the middle of the conversation.
    let before = gateway.manager.events().last_cursor();
    gateway.shutdown().await;
    let gateway = start_gateway(common::options(dir.path(), &harness.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = common::events_after(&mut client, "g", before).await;
    wait_for(&mut events, "CONNECTED after the restart", |e| {
        common::is_state(e, wagate::proto::gateway::SessionState::Connected)
    })
    .await;
    let sent = client
        .send(send(&group, "after the restart"))
        .await
        .expect("Send")
        .into_inner();
    let got = baileys
        .wait_for("message", |v| v["id"] == sent.message_id.as_str())
        .await;
    assert_eq!(got["text"], "after the restart");
    delivered_to(
        &mut events,
        &sent.message_id,
        &["15550400001", "15550400003"],
    )
    .await;

    // Ben read what was sent while he was a member, and nothing after.
    assert_eq!(
        common::chat_texts(&mut harness.control, PHONE_B, &group).await,
        vec![
            "hello from wagate".to_owned(),
            "hello from baileys".to_owned(),
            "hello from ann".to_owned()
        ]
    );
    assert_eq!(
        common::chat_texts(&mut harness.control, PHONE_A, &group).await,
        vec![
            "hello from wagate".to_owned(),
            "hello from baileys".to_owned(),
            "after ben left".to_owned(),
            "after the restart".to_owned()
        ]
    );

    baileys.command("quit");
    assert!(baileys.wait().await.success());
    gateway.shutdown().await;
    harness.stop().await;
}
