//! The group RPCs: requests checked here, sent as `w:g2` queries on the
//! session's connection, answers read by `wa::groups` and converted.

use tonic::{Response, Status};

use crate::proto::gateway::{
    CreateGroupRequest, Group, GroupInviteLinkRequest, GroupInviteLinkResponse, GroupParticipant,
    GroupRequest, JoinGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    ParticipantAction, ParticipantOutcome, ParticipantRole, SetGroupSubjectRequest,
    SetGroupSubjectResponse, UpdateParticipantsRequest, UpdateParticipantsResponse,
};
use crate::runtime::Manager;
use crate::store::SessionId;
use crate::wa::binary::Node;
use crate::wa::groups::{self, GroupError, GroupInfo};
use crate::wa::jid::Jid;
use crate::wa::message::phone_of;

use super::errors::invalid;
use super::gateway::{recipient, session_id};

/// Longest subject WhatsApp accepts, in characters.
const MAX_SUBJECT: usize = 100;
/// Members named in one request.
const MAX_MEMBERS: usize = 1024;

fn group_jid(raw: &str) -> Result<Jid, Status> {
    groups::group_jid(raw.trim()).map_err(|e| invalid("group", e))
}

fn subject(raw: &str) -> Result<String, Status> {
    let subject = raw.trim();
    let chars = subject.chars().count();
    if chars == 0 || chars > MAX_SUBJECT {
        return Err(invalid(
            "subject",
            format!("must be 1 to {MAX_SUBJECT} characters (got {chars})"),
        ));
    }
    Ok(subject.to_owned())
}

fn members(raw: &[String]) -> Result<Vec<Jid>, Status> {
    if raw.is_empty() {
        return Err(invalid("participants", "name at least one member"));
    }
    if raw.len() > MAX_MEMBERS {
        return Err(invalid(
            "participants",
            format!("at most {MAX_MEMBERS} per request"),
        ));
    }
    raw.iter()
        .map(|m| {
            let jid = recipient(m).map_err(|s| invalid("participants", s.message()))?;
            if jid.is_group() {
                return Err(invalid("participants", "a group cannot be a member"));
            }
            Ok(jid.to_non_ad())
        })
        .collect()
}

/// A refused query as a status the caller can act on.
fn refused(e: GroupError, group: Option<&Jid>) -> Status {
    let what = group.map_or_else(String::new, |g| format!("group {g}: "));
    match e {
        GroupError::Refused { code: 404, .. } => Status::not_found(format!(
            "{what}no such group (or not visible to this account)"
        )),
        GroupError::Refused {
            code: 401 | 403, ..
        } => Status::permission_denied(format!(
            "{what}not allowed: this account is not a member or not an admin"
        )),
        GroupError::Refused { code: 406, .. } => {
            Status::invalid_argument(format!("{what}not acceptable (bad invite code or request)"))
        }
        GroupError::Refused { code: 410, .. } => {
            Status::failed_precondition(format!("{what}the invite link was revoked"))
        }
        GroupError::Refused { code, text } => {
            Status::failed_precondition(format!("{what}refused by the server: {code} {text}"))
        }
        other => Status::internal(format!("{what}unreadable answer: {other}")),
    }
}

async fn ask(manager: &Manager, id: &SessionId, iq: Node) -> Result<Node, Status> {
    manager.query(id, iq).await.map_err(Status::from)
}

fn timestamp(s: u64) -> Option<prost_types::Timestamp> {
    (s > 0).then(|| prost_types::Timestamp {
        seconds: i64::try_from(s).unwrap_or(i64::MAX),
        nanos: 0,
    })
}

fn group_message(info: GroupInfo) -> Group {
    Group {
        jid: info.id.to_string(),
        subject: info.subject,
        subject_owner: info
            .subject_owner
            .map(|j| j.to_string())
            .unwrap_or_default(),
        subject_time: timestamp(info.subject_time_s),
        creator: info.creator.map(|j| j.to_string()).unwrap_or_default(),
        created_at: timestamp(info.creation_s),
        description: info.description.unwrap_or_default(),
        participants: info
            .participants
            .into_iter()
            .map(|p| {
                let role = if p.superadmin {
                    ParticipantRole::Superadmin
                } else if p.admin {
                    ParticipantRole::Admin
                } else {
                    ParticipantRole::Member
                };
                let addresses = [Some(&p.jid), p.alt.as_ref()];
                GroupParticipant {
                    phone: addresses
                        .iter()
                        .flatten()
                        .find_map(|j| phone_of(j))
                        .unwrap_or_default(),
                    lid: addresses
                        .iter()
                        .flatten()
                        .find(|j| j.is_lid())
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    jid: p.jid.to_string(),
                    role: role as i32,
                }
            })
            .collect(),
    }
}

pub(super) async fn list(
    manager: &Manager,
    req: ListGroupsRequest,
) -> Result<Response<ListGroupsResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let answer = ask(manager, &id, groups::participating_query()).await?;
    let list = groups::parse_participating(&answer).map_err(|e| refused(e, None))?;
    Ok(Response::new(ListGroupsResponse {
        groups: list.into_iter().map(group_message).collect(),
    }))
}

pub(super) async fn info(manager: &Manager, req: GroupRequest) -> Result<Response<Group>, Status> {
    let id = session_id(&req.session_id)?;
    let group = group_jid(&req.group)?;
    let answer = ask(manager, &id, groups::info_query(&group)).await?;
    let info = groups::parse_info(&answer).map_err(|e| refused(e, Some(&group)))?;
    Ok(Response::new(group_message(info)))
}

pub(super) async fn create(
    manager: &Manager,
    req: CreateGroupRequest,
) -> Result<Response<Group>, Status> {
    let id = session_id(&req.session_id)?;
    let subject = subject(&req.subject)?;
    let members = members(&req.participants)?;
    let key = format!("{:016X}", rand::random::<u64>());
    let answer = ask(manager, &id, groups::create_query(&subject, &members, &key)).await?;
    let info = groups::parse_created(&answer).map_err(|e| refused(e, None))?;
    Ok(Response::new(group_message(info)))
}

pub(super) async fn update_participants(
    manager: &Manager,
    req: UpdateParticipantsRequest,
) -> Result<Response<UpdateParticipantsResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let group = group_jid(&req.group)?;
    let action = match ParticipantAction::try_from(req.action) {
        Ok(ParticipantAction::Add) => groups::ParticipantAction::Add,
        Ok(ParticipantAction::Remove) => groups::ParticipantAction::Remove,
        Ok(ParticipantAction::Promote) => groups::ParticipantAction::Promote,
        Ok(ParticipantAction::Demote) => groups::ParticipantAction::Demote,
        Ok(ParticipantAction::Unspecified) | Err(_) => {
            return Err(invalid("action", "one of ADD, REMOVE, PROMOTE, DEMOTE"))
        }
    };
    let members = members(&req.participants)?;
    let answer = ask(
        manager,
        &id,
        groups::participants_query(&group, action, &members),
    )
    .await?;
    let results =
        groups::parse_participants(&answer, action).map_err(|e| refused(e, Some(&group)))?;
    Ok(Response::new(UpdateParticipantsResponse {
        outcomes: results
            .into_iter()
            .map(|r| ParticipantOutcome {
                jid: r.jid.to_string(),
                ok: r.code == 0,
                error_code: u32::from(r.code),
            })
            .collect(),
    }))
}

pub(super) async fn leave(
    manager: &Manager,
    req: GroupRequest,
) -> Result<Response<LeaveGroupResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let group = group_jid(&req.group)?;
    let answer = ask(manager, &id, groups::leave_query(&group)).await?;
    groups::check_answer(&answer).map_err(|e| refused(e, Some(&group)))?;
    Ok(Response::new(LeaveGroupResponse {}))
}

pub(super) async fn set_subject(
    manager: &Manager,
    req: SetGroupSubjectRequest,
) -> Result<Response<SetGroupSubjectResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let group = group_jid(&req.group)?;
    let subject = subject(&req.subject)?;
    let answer = ask(manager, &id, groups::subject_query(&group, &subject)).await?;
    groups::check_answer(&answer).map_err(|e| refused(e, Some(&group)))?;
    Ok(Response::new(SetGroupSubjectResponse {}))
}

pub(super) async fn invite_link(
    manager: &Manager,
    req: GroupInviteLinkRequest,
) -> Result<Response<GroupInviteLinkResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let group = group_jid(&req.group)?;
    let answer = ask(manager, &id, groups::invite_query(&group, req.revoke)).await?;
    let code = groups::parse_invite(&answer).map_err(|e| refused(e, Some(&group)))?;
    Ok(Response::new(GroupInviteLinkResponse {
        link: format!("https://chat.whatsapp.com/{code}"),
        code,
    }))
}

pub(super) async fn join(
    manager: &Manager,
    req: JoinGroupRequest,
) -> Result<Response<Group>, Status> {
    let id = session_id(&req.session_id)?;
    let code = groups::invite_code(&req.invite);
    if code.is_empty() || code.len() > 64 || !code.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(invalid("invite", "an invite link or code"));
    }
    let answer = ask(manager, &id, groups::join_query(code)).await?;
    let group = groups::parse_joined(&answer).map_err(|e| refused(e, None))?;
    let answer = ask(manager, &id, groups::info_query(&group)).await?;
    let info = groups::parse_info(&answer).map_err(|e| refused(e, Some(&group)))?;
    Ok(Response::new(group_message(info)))
}
