//! Groups end to end through the gateway and the simulator: a wagate
//! session and virtual phones in one group. Texts both ways, membership
//! changes as events, a new sender key after a removal (the removed member
//! reads nothing new), and a gateway restart in the middle.

mod common;

use common::*;
use wagate::proto::gateway::{GroupChange, SendRequest};
use wagate::proto::sim::{SendGroupTextRequest, UpdateGroupParticipantsRequest};

const OWN: &str = "+15550005001";
const ANN: &str = "+15550005002";
const BEN: &str = "+15550005003";

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
    let (group, created) = phone_creates_group(
        &mut sim.control,
        &mut events,
        ANN,
        "Team",
        &[OWN, BEN],
        false,
    )
    .await;
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
    let ben = chat_texts(&mut sim.control, BEN, &group).await;
    assert_eq!(ben, vec!["hello team".to_owned()], "Ben read: {ben:?}");

    // We are no admin here: changing members is refused.
    let status = client
        .update_participants(wagate::proto::gateway::UpdateParticipantsRequest {
            session_id: "grp".into(),
            group: group.clone(),
            action: wagate::proto::gateway::ParticipantAction::Add as i32,
            participants: vec![BEN.into()],
        })
        .await
        .expect_err("not an admin");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");

    // Ann adds Ben back: he gets our current key with the next message.
    sim.control
        .update_group_participants(UpdateGroupParticipantsRequest {
            phone: ANN.into(),
            group_jid: group.clone(),
            action: "add".into(),
            participants: vec![BEN.into()],
        })
        .await
        .expect("add Ben");
    wait_for(&mut events, "Ben's return", |e| {
        group_of(e).is_some_and(|g| g.change == GroupChange::GroupParticipantsAdded as i32)
    })
    .await;
    let sent = client
        .send(send(&group, "welcome back", "g-4"))
        .await
        .expect("Send after the add")
        .into_inner();
    delivered_to(
        &mut events,
        &sent.message_id,
        &["15550005002", "15550005003"],
    )
    .await;
    let ben = chat_texts(&mut sim.control, BEN, &group).await;
    assert_eq!(
        ben,
        vec!["hello team".to_owned(), "welcome back".to_owned()],
        "Ben read: {ben:?}"
    );
    let ann = chat_texts(&mut sim.control, ANN, &group).await;
    assert_eq!(
        ann,
        vec![
            "hello team".to_owned(),
            "hi from ben".to_owned(),
            "after ben left".to_owned(),
            "after the restart".to_owned(),
            "welcome back".to_owned()
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_management_through_the_api() {
    use wagate::proto::gateway::{
        CreateGroupRequest, GroupInviteLinkRequest, GroupRequest, JoinGroupRequest,
        ListGroupsRequest, ParticipantAction, ParticipantRole, SetGroupSubjectRequest,
        UpdateParticipantsRequest,
    };
    const OWN2: &str = "+15550006001";
    const CAT: &str = "+15550006002";
    const DAN: &str = "+15550006003";
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_device, mut events) = pair_with(&mut sim.control, &mut client, "adm", OWN2).await;
    create_account(&mut sim.control, CAT, "Cat").await;
    create_account(&mut sim.control, DAN, "Dan").await;

    // Create: we are the superadmin, Cat a member; numbers without an
    // account are left out.
    let group = client
        .create_group(CreateGroupRequest {
            session_id: "adm".into(),
            subject: "Plans".into(),
            participants: vec![CAT.into(), "+15550006999".into()],
        })
        .await
        .expect("CreateGroup")
        .into_inner();
    assert_eq!(group.subject, "Plans");
    let roles: Vec<(String, i32)> = group
        .participants
        .iter()
        .map(|p| (p.phone.clone(), p.role))
        .collect();
    assert!(roles.contains(&("15550006001".into(), ParticipantRole::Superadmin as i32)));
    assert!(roles.contains(&("15550006002".into(), ParticipantRole::Member as i32)));
    assert_eq!(roles.len(), 2, "{roles:?}");

    // Add Dan (and Cat again: 409), promote Cat.
    let outcomes = client
        .update_participants(UpdateParticipantsRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
            action: ParticipantAction::Add as i32,
            participants: vec![DAN.into(), CAT.into()],
        })
        .await
        .expect("add")
        .into_inner()
        .outcomes;
    assert!(outcomes
        .iter()
        .any(|o| o.jid.starts_with("15550006003") && o.ok));
    assert!(outcomes
        .iter()
        .any(|o| o.jid.starts_with("15550006002") && !o.ok && o.error_code == 409));
    client
        .update_participants(UpdateParticipantsRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
            action: ParticipantAction::Promote as i32,
            participants: vec![CAT.into()],
        })
        .await
        .expect("promote");
    client
        .set_group_subject(SetGroupSubjectRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
            subject: "Plans 2".into(),
        })
        .await
        .expect("subject");
    wait_for(&mut events, "the subject change", |e| {
        group_of(e).is_some_and(|g| {
            g.change == GroupChange::GroupSubjectChanged as i32 && g.text == "Plans 2"
        })
    })
    .await;
    let info = client
        .group_info(GroupRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
        })
        .await
        .expect("GroupInfo")
        .into_inner();
    assert_eq!(info.subject, "Plans 2");
    assert_eq!(info.participants.len(), 3);
    assert!(info
        .participants
        .iter()
        .any(|p| p.phone == "15550006002" && p.role == ParticipantRole::Admin as i32));

    // Invite links: get, revoke (a new code), and the listing.
    let link = client
        .group_invite_link(GroupInviteLinkRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
            revoke: false,
        })
        .await
        .expect("invite")
        .into_inner();
    assert!(link.link.starts_with("https://chat.whatsapp.com/"));
    let revoked = client
        .group_invite_link(GroupInviteLinkRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
            revoke: true,
        })
        .await
        .expect("revoke")
        .into_inner();
    assert_ne!(revoked.code, link.code);
    let listed = client
        .list_groups(ListGroupsRequest {
            session_id: "adm".into(),
        })
        .await
        .expect("ListGroups")
        .into_inner()
        .groups;
    assert!(listed.iter().any(|g| g.jid == group.jid));

    // Errors: an unknown group, a bad action, a revoked link.
    let status = client
        .group_info(GroupRequest {
            session_id: "adm".into(),
            group: "120363999999999999@g.us".into(),
        })
        .await
        .expect_err("unknown group");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    let status = client
        .update_participants(UpdateParticipantsRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
            action: 0,
            participants: vec![DAN.into()],
        })
        .await
        .expect_err("no action");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let status = client
        .join_group(JoinGroupRequest {
            session_id: "adm".into(),
            invite: link.link.clone(),
        })
        .await
        .expect_err("revoked link");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    // Leave; then we are no longer allowed to change it.
    client
        .leave_group(GroupRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
        })
        .await
        .expect("leave");
    let status = client
        .set_group_subject(SetGroupSubjectRequest {
            session_id: "adm".into(),
            group: group.jid.clone(),
            subject: "not ours".into(),
        })
        .await
        .expect_err("not a member any more");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let status = client
        .send(SendRequest {
            session_id: "adm".into(),
            to: group.jid.clone(),
            text: "after leaving".into(),
            idempotency_key: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("not a member");
    assert!(
        matches!(
            status.code(),
            tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
        ),
        "{status:?}"
    );
}
