//! Group management refused, through the API against the simulator: each
//! RPC on a group that does not exist, on a group we are not in, and the
//! admin-only ones as a plain member, answer a gRPC status that says which.

mod common;

use common::*;
use tonic::Code;
use wagate::proto::gateway::{
    GroupInviteLinkRequest, GroupRequest, ParticipantAction, SendRequest, SetGroupSubjectRequest,
    UpdateParticipantsRequest,
};
use wagate::proto::sim::CreateGroupRequest;

const OWN: &str = "+15550009001";
const ANN: &str = "+15550009002";
const BEN: &str = "+15550009003";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_group_not_a_member_and_not_an_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "err", OWN).await;
    create_account(&mut sim.control, ANN, "Ann").await;
    create_account(&mut sim.control, BEN, "Ben").await;
    let create = |participants: Vec<String>| {
        let mut control = sim.control.clone();
        async move {
            control
                .create_group(CreateGroupRequest {
                    phone: ANN.into(),
                    subject: "Ann's".into(),
                    participants,
                    lid_addressed: false,
                })
                .await
                .expect("CreateGroup")
                .into_inner()
                .group_jid
        }
    };
    // We are a plain member of one group and not in the other.
    let member_of = create(vec![OWN.into(), BEN.into()]).await;
    let outside = create(vec![BEN.into()]).await;
    wait_for(&mut events, "the group's creation", |e| {
        group_of(e).is_some_and(|g| g.group == member_of)
    })
    .await;
    let unknown = "120363999999999998@g.us".to_owned();

    let session = || "err".to_owned();
    let c = client.clone();
    let calls = |group: String| {
        let mut c = c.clone();
        async move {
            let info = c
                .group_info(GroupRequest {
                    session_id: session(),
                    group: group.clone(),
                })
                .await
                .err();
            let send = c
                .send(SendRequest {
                    session_id: session(),
                    to: group.clone(),
                    text: "hello?".into(),
                    ..Default::default()
                })
                .await
                .err();
            let subject = c
                .set_group_subject(SetGroupSubjectRequest {
                    session_id: session(),
                    group: group.clone(),
                    subject: "mine".into(),
                })
                .await
                .err();
            let add = c
                .update_participants(UpdateParticipantsRequest {
                    session_id: session(),
                    group: group.clone(),
                    action: ParticipantAction::Add as i32,
                    participants: vec![BEN.into()],
                })
                .await
                .err();
            let promote = c
                .update_participants(UpdateParticipantsRequest {
                    session_id: session(),
                    group: group.clone(),
                    action: ParticipantAction::Promote as i32,
                    participants: vec![OWN.into()],
                })
                .await
                .err();
            let link = c
                .group_invite_link(GroupInviteLinkRequest {
                    session_id: session(),
                    group: group.clone(),
                    revoke: false,
                })
                .await
                .err();
            let leave = c
                .leave_group(GroupRequest {
                    session_id: session(),
                    group: group.clone(),
                })
                .await
                .err();
            [
                ("GroupInfo", info),
                ("Send", send),
                ("SetGroupSubject", subject),
                ("UpdateParticipants add", add),
                ("UpdateParticipants promote", promote),
                ("GroupInviteLink", link),
                ("LeaveGroup", leave),
            ]
            .map(|(rpc, status)| (rpc, status.map(|s| (s.code(), s.message().to_owned()))))
        }
    };
    // LeaveGroup is left out of the expectations: leaving a group one is
    // not in succeeds quietly (the server's answer simply lists no group).
    let not_found = Some(Code::NotFound);
    let denied = Some(Code::PermissionDenied);
    let expected = [
        (
            "unknown",
            unknown,
            [
                not_found, not_found, not_found, not_found, not_found, not_found,
            ],
            &["no such group", "does not exist"][..],
        ),
        (
            "outside",
            outside,
            [
                denied,
                Some(Code::FailedPrecondition),
                denied,
                denied,
                denied,
                denied,
            ],
            &["not a member"],
        ),
        (
            "member",
            member_of,
            [None, None, None, denied, denied, denied],
            &["not an admin"],
        ),
    ];
    for (what, group, codes, words) in expected {
        let outcomes = calls(group.clone()).await;
        for ((rpc, outcome), code) in outcomes.iter().zip(codes) {
            assert_eq!(
                outcome.as_ref().map(|(c, _)| *c),
                code,
                "{rpc} on the {what} group: {outcome:?}"
            );
            if let Some((_, message)) = outcome {
                assert!(
                    message.contains(&group) && words.iter().any(|w| message.contains(w)),
                    "{rpc} on the {what} group says which group and why: {message:?}"
                );
            }
        }
    }
    gateway.shutdown().await;
}
