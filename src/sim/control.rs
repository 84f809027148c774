//! The simulator's gRPC control service (`wagate.sim.v1.Simulator`): thin
//! adapters from requests to [`Simulator`] calls, and the one place where a
//! [`SimError`] becomes a gRPC status. Imports `wa` and the generated
//! protobuf code only.

use tonic::{Request, Response, Status};

use super::groups::GroupError;
use super::{GroupAction, GroupInfo, MediaSend, SimError, Simulator, MAX_ACCOUNTS_PAGE};
use crate::proto::sim::simulator_server::Simulator as SimulatorService;
use crate::proto::sim::{
    Account, CreateAccountRequest, CreateAccountResponse, Device, EnterLinkCodeRequest,
    EnterLinkCodeResponse, InboxMessage, InboxRequest, InboxResponse, InfoRequest, InfoResponse,
    KickRequest, KickResponse, ListAccountsRequest, ListAccountsResponse, RemoveDeviceRequest,
    RemoveDeviceResponse, ScanQrRequest, ScanQrResponse, SendTextRequest, SendTextResponse,
    SendTextsRequest, SendTextsResponse, SetDelayRequest, SetDelayResponse,
};
use crate::proto::sim::{
    AddVirtualDeviceRequest, AddVirtualDeviceResponse, CreateGroupRequest, CreateGroupResponse,
    ExpireMediaRequest, ExpireMediaResponse, Group, GroupInfoRequest, GroupInviteCodeRequest,
    GroupInviteCodeResponse, GroupMember, InboxMedia, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, MediaKind, ParticipantResult, SendGroupTextRequest,
    SendGroupTextResponse, SendMediaRequest, SendMediaResponse, UpdateGroupParticipantsRequest,
    UpdateGroupParticipantsResponse,
};
use crate::proto::sim::{HideLidRequest, HideLidResponse};
use crate::proto::sim::{
    SeedHistoryRequest, SeedHistoryResponse, SendChatStateRequest, SendChatStateResponse,
    SendGroupTextsRequest, SendGroupTextsResponse, SetChatSettingsRequest, SetChatSettingsResponse,
    SetContactRequest, SetContactResponse, SetPresenceRequest, SetPresenceResponse,
    SetReadReceiptsRequest, SetReadReceiptsResponse,
};
use crate::proto::sim::{
    SendContactsRequest, SendContentResponse, SendLocationRequest, SendPollRequest,
    SendPollVoteRequest,
};
use crate::wa::jid::{Jid, PhoneNumber, DEFAULT_USER_SERVER};
use crate::wa::media::MediaType;
use crate::wa::presence::ChatState;

/// Implementation of the control service over a running [`Simulator`].
#[derive(Clone)]
pub struct Control {
    sim: Simulator,
}

impl Control {
    pub fn new(sim: Simulator) -> Self {
        Self { sim }
    }

    /// A request's target: a device or account JID, or a phone number.
    /// A phone's location, cards, poll or vote to `to`.
    async fn send_content(
        &self,
        from_phone: &str,
        to: &str,
        content: super::PhoneContent,
    ) -> Result<Response<SendContentResponse>, Status> {
        let from = parse_phone(from_phone)?;
        let to = self.target(to)?;
        let message_id = self
            .sim
            .send_content(&from, &to.to_non_ad(), content)
            .await?;
        Ok(Response::new(SendContentResponse { message_id }))
    }

    fn target(&self, text: &str) -> Result<Jid, SimError> {
        let jid = parse_target(text)?;
        if self.sim.knows(&jid) {
            Ok(jid)
        } else if jid.device == 0 {
            Err(SimError::NotFound(format!("no account {}", jid.user)))
        } else {
            Err(SimError::NotFound(format!("no device {jid}")))
        }
    }
}

/// Parses `120363…@g.us`.
fn parse_group(text: &str) -> Result<Jid, SimError> {
    let jid: Jid = text
        .trim()
        .parse()
        .map_err(|err| SimError::InvalidJid(format!("{text:?}: {err}")))?;
    if !jid.is_group() || jid.user.is_empty() {
        return Err(SimError::InvalidJid(format!(
            "{text:?}: expected a group JID on g.us"
        )));
    }
    Ok(jid)
}

/// Parses a list of accounts (phone numbers or account JIDs).
fn parse_accounts(texts: &[String]) -> Result<Vec<Jid>, SimError> {
    texts
        .iter()
        .map(|text| parse_target(text).map(|jid| jid.to_non_ad()))
        .collect()
}

fn group_message(group: GroupInfo) -> Group {
    Group {
        jid: group.jid.to_string(),
        subject: group.subject,
        creator: group.creator.to_string(),
        creation: group.creation,
        description: group.description,
        participants: group
            .participants
            .into_iter()
            .map(|m| GroupMember {
                jid: m.jid.to_string(),
                admin: m.admin,
                superadmin: m.superadmin,
            })
            .collect(),
        last_message_bytes: 0,
    }
}

fn parse_phone(text: &str) -> Result<PhoneNumber, SimError> {
    text.parse()
        .map_err(|err| SimError::InvalidPhone(format!("{text:?}: {err}")))
}

/// Parses a chat: a phone number, an account JID or a group JID.
fn parse_chat(text: &str) -> Result<Jid, SimError> {
    let text = text.trim();
    if text.ends_with("@g.us") {
        return text
            .parse()
            .map_err(|err| SimError::InvalidJid(format!("{text:?}: {err}")));
    }
    Ok(parse_target(text)?.to_non_ad())
}

/// Parses `phone`, `phone@s.whatsapp.net` or `phone:device@s.whatsapp.net`.
fn parse_target(text: &str) -> Result<Jid, SimError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SimError::InvalidJid(
            "empty; give a device JID, account JID or phone number".into(),
        ));
    }
    if !text.contains('@') {
        let phone: PhoneNumber = text
            .parse()
            .map_err(|err| SimError::InvalidPhone(format!("{text:?}: {err}")))?;
        return Ok(phone.to_jid());
    }
    let jid: Jid = text
        .parse()
        .map_err(|err| SimError::InvalidJid(format!("{text:?}: {err}")))?;
    if jid.server != DEFAULT_USER_SERVER || jid.user.is_empty() {
        return Err(SimError::InvalidJid(format!(
            "{text:?}: expected a phone-number JID on {DEFAULT_USER_SERVER}"
        )));
    }
    Ok(Jid::with_device(jid.user, jid.device, DEFAULT_USER_SERVER))
}

impl From<SimError> for Status {
    fn from(err: SimError) -> Self {
        let message = err.to_string();
        match err {
            SimError::InvalidQr(_)
            | SimError::InvalidLinkCode(_)
            | SimError::WrongLinkCode
            | SimError::InvalidPhone(_)
            | SimError::InvalidJid(_)
            | SimError::TooManyTexts(_)
            | SimError::InvalidHistorySeed(_)
            | SimError::InvalidPageToken
            | SimError::InvalidMedia(_)
            | SimError::InvalidContent(_) => Status::invalid_argument(message),
            SimError::NoPendingPairing
            | SimError::NoPendingLinkCode
            | SimError::UnknownRef
            | SimError::NotFound(_) => Status::not_found(message),
            SimError::IdentityMismatch
            | SimError::AppState(_)
            | SimError::LinkCodeExpired
            | SimError::PairRefused { .. }
            | SimError::InvalidPairConfirmation(_) => Status::failed_precondition(message),
            SimError::DevicesExhausted => Status::resource_exhausted(message),
            SimError::AccountExists(_) => Status::already_exists(message),
            SimError::Encryption(_) => Status::internal(message),
            SimError::CompanionGone => Status::unavailable(message),
            SimError::PairTimeout(_) => Status::deadline_exceeded(message),

            SimError::Group(err) => match err {
                GroupError::BadRequest(_) | GroupError::NotAcceptable(_) => {
                    Status::invalid_argument(message)
                }
                GroupError::NotFound => Status::not_found(message),
                GroupError::NotParticipant | GroupError::NotAdmin | GroupError::NotAuthorized => {
                    Status::permission_denied(message)
                }
                GroupError::Conflict => Status::aborted(message),
                GroupError::Revoked => Status::failed_precondition(message),
            },
            SimError::Bind { .. }
            | SimError::MediaHost(_)
            | SimError::MediaStore(_)
            | SimError::State(_) => Status::internal(message),
        }
    }
}

fn media_type(kind: MediaKind) -> Result<MediaType, SimError> {
    Ok(match kind {
        MediaKind::Image => MediaType::Image,
        MediaKind::Video => MediaType::Video,
        MediaKind::Audio => MediaType::Audio,
        MediaKind::VoiceNote => MediaType::VoiceNote,
        MediaKind::Document => MediaType::Document,
        MediaKind::Sticker => MediaType::Sticker,
        MediaKind::Unspecified => {
            return Err(SimError::InvalidMedia("kind is required".into()));
        }
    })
}

fn inbox_media(media: super::InboxMedia) -> InboxMedia {
    let kind = match media.kind {
        MediaType::Image => MediaKind::Image,
        MediaType::Video => MediaKind::Video,
        MediaType::Audio => MediaKind::Audio,
        MediaType::VoiceNote => MediaKind::VoiceNote,
        MediaType::Document => MediaKind::Document,
        MediaType::Sticker => MediaKind::Sticker,
        MediaType::History | MediaType::AppState | MediaType::LinkThumbnail => {
            MediaKind::Unspecified
        }
    };
    InboxMedia {
        kind: kind as i32,
        mimetype: media.mimetype,
        caption: media.caption.unwrap_or_default(),
        file_name: media.file_name.unwrap_or_default(),
        file_length: media.file_length,
        verified: media.verified.is_ok(),
        error: media.verified.err().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl SimulatorService for Control {
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            ws_url: self.sim.ws_url(),
            root_public_key: hex::encode(self.sim.root_public_key()),
            media_url: self.sim.media_url().to_owned(),
        }))
    }

    async fn scan_qr(
        &self,
        request: Request<ScanQrRequest>,
    ) -> Result<Response<ScanQrResponse>, Status> {
        let request = request.into_inner();
        let phone: PhoneNumber = request
            .phone
            .parse()
            .map_err(|err| SimError::InvalidPhone(format!("{:?}: {err}", request.phone)))?;
        let jid = self
            .sim
            .scan_qr(&phone, &request.qr, &request.push_name)
            .await?;
        Ok(Response::new(ScanQrResponse {
            device_jid: jid.to_string(),
        }))
    }

    async fn enter_link_code(
        &self,
        request: Request<EnterLinkCodeRequest>,
    ) -> Result<Response<EnterLinkCodeResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let jid = self
            .sim
            .enter_link_code(&phone, &request.code, &request.push_name)
            .await?;
        Ok(Response::new(EnterLinkCodeResponse {
            device_jid: jid.to_string(),
        }))
    }

    async fn list_accounts(
        &self,
        request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsResponse>, Status> {
        let request = request.into_inner();
        let size = match usize::try_from(request.page_size) {
            Ok(0) | Err(_) => MAX_ACCOUNTS_PAGE,
            Ok(size) => size.min(MAX_ACCOUNTS_PAGE),
        };
        // The token is the last phone number of the previous page.
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(
                token
                    .parse::<PhoneNumber>()
                    .map_err(|_| SimError::InvalidPageToken)?,
            ),
        };
        // One more than asked tells whether another page follows.
        let mut page = self.sim.accounts_page(after.as_ref(), size + 1);
        let next_page_token = if page.len() > size {
            page.truncate(size);
            page.last()
                .map(|a| a.phone.as_str().to_owned())
                .unwrap_or_default()
        } else {
            String::new()
        };
        let accounts = page
            .into_iter()
            .map(|a| Account {
                phone: a.phone.to_string(),
                jid: a.jid.to_string(),
                lid: a.lid.to_string(),
                push_name: a.push_name,
                devices: a
                    .devices
                    .into_iter()
                    .map(|d| Device {
                        jid: d.jid.to_string(),
                        platform: d.platform,
                        connected: d.connected,
                        prekeys: u32::try_from(d.prekeys).unwrap_or(u32::MAX),
                        group_key_distributions: d.group_key_distributions,
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListAccountsResponse {
            accounts,
            next_page_token,
        }))
    }

    async fn kick(&self, request: Request<KickRequest>) -> Result<Response<KickResponse>, Status> {
        let request = request.into_inner();
        let jid = self.target(&request.jid)?;
        let ended = self.sim.kick(&jid, request.code).await;
        Ok(Response::new(KickResponse {
            connections: u32::try_from(ended).unwrap_or(u32::MAX),
        }))
    }

    async fn replace(
        &self,
        request: Request<KickRequest>,
    ) -> Result<Response<KickResponse>, Status> {
        let jid = self.target(&request.into_inner().jid)?;
        let ended = self.sim.replace(&jid).await;
        Ok(Response::new(KickResponse {
            connections: u32::try_from(ended).unwrap_or(u32::MAX),
        }))
    }

    async fn remove_device(
        &self,
        request: Request<RemoveDeviceRequest>,
    ) -> Result<Response<RemoveDeviceResponse>, Status> {
        let jid = parse_target(&request.into_inner().jid)?;
        if jid.device == 0 {
            return Err(SimError::InvalidJid(format!(
                "{jid} is an account (device 0 is the phone); give a companion device JID"
            ))
            .into());
        }
        self.sim.remove_device(&jid).await?;
        Ok(Response::new(RemoveDeviceResponse {}))
    }

    async fn set_delay(
        &self,
        request: Request<SetDelayRequest>,
    ) -> Result<Response<SetDelayResponse>, Status> {
        let request = request.into_inner();
        if request.jid.trim().is_empty() {
            self.sim.set_delay(None, request.delay_ms);
        } else {
            let jid = self.target(&request.jid)?;
            self.sim.set_delay(Some(&jid), request.delay_ms);
        }
        Ok(Response::new(SetDelayResponse {}))
    }

    async fn add_virtual_device(
        &self,
        request: Request<AddVirtualDeviceRequest>,
    ) -> Result<Response<AddVirtualDeviceResponse>, Status> {
        let phone = parse_phone(&request.into_inner().phone)?;
        let jid = self.sim.add_virtual_device(&phone)?;
        Ok(Response::new(AddVirtualDeviceResponse {
            device_jid: jid.to_string(),
        }))
    }

    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<CreateAccountResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let jid = self.sim.create_account(&phone, &request.push_name)?;
        Ok(Response::new(CreateAccountResponse {
            jid: jid.to_string(),
        }))
    }

    async fn send_text(
        &self,
        request: Request<SendTextRequest>,
    ) -> Result<Response<SendTextResponse>, Status> {
        let request = request.into_inner();
        let from = parse_phone(&request.from_phone)?;
        let to = self.target(&request.to)?;
        let message_id = if request.from_lid {
            self.sim
                .send_text_from_lid(&from, &to.to_non_ad(), &request.text)
                .await?
        } else {
            self.sim
                .send_text(&from, &to.to_non_ad(), &request.text)
                .await?
        };
        Ok(Response::new(SendTextResponse { message_id }))
    }

    async fn send_texts(
        &self,
        request: Request<SendTextsRequest>,
    ) -> Result<Response<SendTextsResponse>, Status> {
        let request = request.into_inner();
        let from = parse_phone(&request.from_phone)?;
        let to = self.target(&request.to)?;
        let message_ids = self
            .sim
            .send_texts(
                &from,
                &to.to_non_ad(),
                request.count,
                &request.text_prefix,
                request.per_second,
            )
            .await?;
        Ok(Response::new(SendTextsResponse { message_ids }))
    }

    async fn inbox(
        &self,
        request: Request<InboxRequest>,
    ) -> Result<Response<InboxResponse>, Status> {
        let phone = parse_phone(&request.into_inner().phone)?;
        let messages = self
            .sim
            .inbox(&phone)?
            .into_iter()
            .map(|m| InboxMessage {
                from: m.from,
                chat: m.chat,
                id: m.id,
                text: m.text,
                timestamp: m.timestamp,
                media: m.media.map(inbox_media),
                content: m.content.map(super::control_content::inbox),
            })
            .collect();
        Ok(Response::new(InboxResponse { messages }))
    }

    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<CreateGroupResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let participants = parse_accounts(&request.participants)?;
        let group = self
            .sim
            .create_group_addressed(
                &phone,
                &request.subject,
                &participants,
                request.lid_addressed,
            )
            .await?;
        Ok(Response::new(CreateGroupResponse {
            group_jid: group.to_string(),
        }))
    }

    async fn update_group_participants(
        &self,
        request: Request<UpdateGroupParticipantsRequest>,
    ) -> Result<Response<UpdateGroupParticipantsResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let group = parse_group(&request.group_jid)?;
        let action = GroupAction::from_tag(&request.action).ok_or_else(|| {
            Status::invalid_argument(format!(
                "action {:?}: expected add, remove, promote or demote",
                request.action
            ))
        })?;
        let participants = parse_accounts(&request.participants)?;
        let results = self
            .sim
            .update_group_participants(&phone, &group, action, &participants)
            .await?
            .into_iter()
            .map(|(jid, code)| ParticipantResult {
                jid: jid.to_string(),
                error: u32::from(code),
            })
            .collect();
        Ok(Response::new(UpdateGroupParticipantsResponse { results }))
    }

    async fn leave_group(
        &self,
        request: Request<LeaveGroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let group = parse_group(&request.group_jid)?;
        self.sim.leave_group(&phone, &group).await?;
        Ok(Response::new(LeaveGroupResponse {}))
    }

    async fn group_invite_code(
        &self,
        request: Request<GroupInviteCodeRequest>,
    ) -> Result<Response<GroupInviteCodeResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let group = parse_group(&request.group_jid)?;
        let code = self
            .sim
            .group_invite_code(&phone, &group, request.revoke)
            .await?;
        Ok(Response::new(GroupInviteCodeResponse { code }))
    }

    async fn send_group_text(
        &self,
        request: Request<SendGroupTextRequest>,
    ) -> Result<Response<SendGroupTextResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.from_phone)?;
        let group = parse_group(&request.group_jid)?;
        let message_id = self
            .sim
            .send_group_text(&phone, &group, &request.text)
            .await?;
        Ok(Response::new(SendGroupTextResponse { message_id }))
    }

    async fn send_group_texts(
        &self,
        request: Request<SendGroupTextsRequest>,
    ) -> Result<Response<SendGroupTextsResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.from_phone)?;
        let group = parse_group(&request.group_jid)?;
        let message_ids = self
            .sim
            .send_group_texts(&phone, &group, request.count, &request.text_prefix)
            .await?;
        Ok(Response::new(SendGroupTextsResponse { message_ids }))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let request = request.into_inner();
        let phone = match request.phone.trim() {
            "" => None,
            text => Some(parse_phone(text)?),
        };
        let groups = self
            .sim
            .groups(phone.as_ref())
            .into_iter()
            .map(group_message)
            .collect();
        Ok(Response::new(ListGroupsResponse { groups }))
    }

    async fn group_info(
        &self,
        request: Request<GroupInfoRequest>,
    ) -> Result<Response<Group>, Status> {
        let group = parse_group(&request.into_inner().group_jid)?;
        let mut info = group_message(self.sim.group_info(&group)?);
        info.last_message_bytes = self.sim.group_message_bytes(&group);
        Ok(Response::new(info))
    }

    async fn send_media(
        &self,
        request: Request<SendMediaRequest>,
    ) -> Result<Response<SendMediaResponse>, Status> {
        let request = request.into_inner();
        let from = parse_phone(&request.from_phone)?;
        let to = self.target(&request.to)?;
        let kind = media_type(request.kind())?;
        let (message_id, info) = self
            .sim
            .send_media(
                &from,
                &to,
                MediaSend {
                    kind,
                    data: request.data,
                    mimetype: request.mimetype,
                    caption: Some(request.caption).filter(|c| !c.is_empty()),
                    file_name: Some(request.file_name).filter(|f| !f.is_empty()),
                },
            )
            .await?;
        Ok(Response::new(SendMediaResponse {
            message_id,
            direct_path: info.direct_path,
        }))
    }

    async fn expire_media(
        &self,
        request: Request<ExpireMediaRequest>,
    ) -> Result<Response<ExpireMediaResponse>, Status> {
        let path = request.into_inner().direct_path;
        if path.is_empty() {
            return Err(Status::invalid_argument("direct_path is empty"));
        }
        let expired = self.sim.expire_media(&path).await;
        Ok(Response::new(ExpireMediaResponse { expired }))
    }

    async fn set_presence(
        &self,
        request: Request<SetPresenceRequest>,
    ) -> Result<Response<SetPresenceResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        self.sim.set_presence(&phone, request.available).await?;
        Ok(Response::new(SetPresenceResponse {}))
    }

    async fn set_chat_settings(
        &self,
        request: Request<SetChatSettingsRequest>,
    ) -> Result<Response<SetChatSettingsResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let chat = parse_chat(&request.chat)?;
        let change = super::ChatSettingsChange {
            archived: request.archived,
            pinned: request.pinned,
            muted_until_ms: request
                .muted_until_ms
                .map(|ms| Some(ms).filter(|ms| *ms != 0)),
            unread: request.unread,
        };
        self.sim.set_chat_settings(&phone, &chat, change).await?;
        Ok(Response::new(SetChatSettingsResponse {}))
    }

    async fn send_location(
        &self,
        request: Request<SendLocationRequest>,
    ) -> Result<Response<SendContentResponse>, Status> {
        let request = request.into_inner();
        let content = super::control_content::location(request.location)?;
        self.send_content(&request.from_phone, &request.to, content)
            .await
    }

    async fn send_contacts(
        &self,
        request: Request<SendContactsRequest>,
    ) -> Result<Response<SendContentResponse>, Status> {
        let request = request.into_inner();
        let content = super::control_content::contacts(request.contacts)?;
        self.send_content(&request.from_phone, &request.to, content)
            .await
    }

    async fn send_poll(
        &self,
        request: Request<SendPollRequest>,
    ) -> Result<Response<SendContentResponse>, Status> {
        let request = request.into_inner();
        let content = super::control_content::poll(request.poll)?;
        self.send_content(&request.from_phone, &request.to, content)
            .await
    }

    async fn send_poll_vote(
        &self,
        request: Request<SendPollVoteRequest>,
    ) -> Result<Response<SendContentResponse>, Status> {
        let request = request.into_inner();
        let content = super::control_content::vote(request.vote)?;
        self.send_content(&request.from_phone, &request.to, content)
            .await
    }

    async fn set_contact(
        &self,
        request: Request<SetContactRequest>,
    ) -> Result<Response<SetContactResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let contact = parse_target(&request.contact)?;
        self.sim
            .set_contact(&phone, &contact, &request.full_name, &request.first_name)
            .await?;
        Ok(Response::new(SetContactResponse {}))
    }

    async fn hide_lid(
        &self,
        request: Request<HideLidRequest>,
    ) -> Result<Response<HideLidResponse>, Status> {
        let phone = parse_phone(&request.into_inner().phone)?;
        self.sim.hide_lid(&phone)?;
        Ok(Response::new(HideLidResponse {}))
    }

    async fn set_read_receipts(
        &self,
        request: Request<SetReadReceiptsRequest>,
    ) -> Result<Response<SetReadReceiptsResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        self.sim.set_read_receipts(&phone, request.shared)?;
        Ok(Response::new(SetReadReceiptsResponse {}))
    }

    async fn send_chat_state(
        &self,
        request: Request<SendChatStateRequest>,
    ) -> Result<Response<SendChatStateResponse>, Status> {
        let request = request.into_inner();
        let from = parse_phone(&request.from_phone)?;
        let state = match request.state.trim() {
            "composing" => ChatState::Composing,
            "recording" => ChatState::Recording,
            "paused" => ChatState::Paused,
            other => {
                return Err(Status::invalid_argument(format!(
                    "state {:?}: composing, recording or paused",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        let chat = if request.chat.contains("@g.us") {
            parse_group(&request.chat)?
        } else {
            self.target(&request.chat)?.to_non_ad()
        };
        self.sim.send_chat_state(&from, &chat, state).await?;
        Ok(Response::new(SendChatStateResponse {}))
    }

    async fn seed_history(
        &self,
        request: Request<SeedHistoryRequest>,
    ) -> Result<Response<SeedHistoryResponse>, Status> {
        let request = request.into_inner();
        let phone = parse_phone(&request.phone)?;
        let base_time = self
            .sim
            .seed_history(&phone, request.chats, request.messages_per_chat)?;
        Ok(Response::new(SeedHistoryResponse { base_time }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimConfig;
    use tonic::Code;

    #[test]
    fn targets_parse() {
        let jid = parse_target("+1 555 123 4567").expect("phone");
        assert_eq!(jid.to_string(), "15551234567@s.whatsapp.net");
        let jid = parse_target("15551234567:3@s.whatsapp.net").expect("device jid");
        assert_eq!(jid.device, 3);
        assert!(matches!(parse_target(""), Err(SimError::InvalidJid(_))));
        assert!(matches!(
            parse_target("12ab"),
            Err(SimError::InvalidPhone(_))
        ));
        assert!(matches!(
            parse_target("123@g.us"),
            Err(SimError::InvalidJid(_))
        ));
    }

    async fn control() -> (Simulator, Control) {
        let sim = Simulator::start(SimConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            seed: Some(5),
            data_dir: None,
        })
        .await
        .expect("simulator starts");
        let control = Control::new(sim.clone());
        (sim, control)
    }

    fn code_and_message<T>(result: Result<Response<T>, Status>) -> (Code, String) {
        match result {
            Ok(_) => (Code::Ok, String::new()),
            Err(status) => (status.code(), status.message().to_owned()),
        }
    }

    #[tokio::test]
    async fn scan_qr_errors() {
        let (sim, control) = control().await;
        let scan = |phone: &str, qr: &str| {
            Request::new(ScanQrRequest {
                phone: phone.into(),
                qr: qr.into(),
                push_name: "Alice".into(),
            })
        };
        let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
        let good_qr = format!("2@x,{key},{key},{key}");

        let (code, message) = code_and_message(control.scan_qr(scan("12ab", &good_qr)).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.starts_with("invalid phone number"), "{message}");

        let (code, message) = code_and_message(control.scan_qr(scan("+15551234567", "a,b")).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("2 comma-separated parts"), "{message}");

        let (code, message) =
            code_and_message(control.scan_qr(scan("+15551234567", &good_qr)).await);
        assert_eq!(code, Code::NotFound);
        assert!(message.contains("no companion is waiting"), "{message}");
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn unknown_targets_are_not_found() {
        let (sim, control) = control().await;
        let kick = |jid: &str| {
            Request::new(KickRequest {
                jid: jid.into(),
                code: 503,
            })
        };

        let (code, message) = code_and_message(control.kick(kick("15551234567")).await);
        assert_eq!(code, Code::NotFound);
        assert_eq!(message, "not found: no account 15551234567");

        let (code, message) =
            code_and_message(control.replace(kick("15551234567:2@s.whatsapp.net")).await);
        assert_eq!(code, Code::NotFound);
        assert_eq!(message, "not found: no device 15551234567:2@s.whatsapp.net");

        let (code, _) = code_and_message(control.kick(kick("not a jid@")).await);
        assert_eq!(code, Code::InvalidArgument);

        let remove = |jid: &str| Request::new(RemoveDeviceRequest { jid: jid.into() });
        let (code, message) = code_and_message(control.remove_device(remove("15551234567")).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.contains("device 0 is the phone"), "{message}");
        let (code, message) = code_and_message(
            control
                .remove_device(remove("15551234567:1@s.whatsapp.net"))
                .await,
        );
        assert_eq!(code, Code::NotFound);
        assert!(message.contains("no companion device"), "{message}");

        let delay = |jid: &str| {
            Request::new(SetDelayRequest {
                jid: jid.into(),
                delay_ms: 10,
            })
        };
        assert_eq!(
            code_and_message(control.set_delay(delay("")).await).0,
            Code::Ok
        );
        assert_eq!(
            code_and_message(control.set_delay(delay("+15551234567")).await).0,
            Code::NotFound
        );
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn accounts_are_listed_page_by_page() {
        let (sim, control) = control().await;
        for n in 0..5 {
            let phone = format!("+1555000010{n}").parse().expect("valid phone");
            sim.create_account(&phone, "P").expect("created");
        }
        let list = |page_size: u32, page_token: &str| {
            Request::new(ListAccountsRequest {
                page_size,
                page_token: page_token.into(),
            })
        };
        let all = control
            .list_accounts(list(0, ""))
            .await
            .expect("list")
            .into_inner();
        assert_eq!(all.accounts.len(), 5);
        assert!(all.next_page_token.is_empty());

        let mut token = String::new();
        let mut seen = Vec::new();
        loop {
            let page = control
                .list_accounts(list(2, &token))
                .await
                .expect("page")
                .into_inner();
            assert!(page.accounts.len() <= 2);
            seen.extend(page.accounts.into_iter().map(|a| a.phone));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let phones: Vec<String> = all.accounts.into_iter().map(|a| a.phone).collect();
        assert_eq!(seen, phones, "every account once, in order");

        let (code, _) = code_and_message(control.list_accounts(list(2, "not a token")).await);
        assert_eq!(code, Code::InvalidArgument);
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn info_reports_url_and_root_key() {
        let (sim, control) = control().await;
        let info = control
            .info(Request::new(InfoRequest {}))
            .await
            .expect("info")
            .into_inner();
        assert_eq!(info.ws_url, sim.ws_url());
        assert!(info.ws_url.starts_with("ws://127.0.0.1:") && info.ws_url.ends_with("/ws/chat"));
        assert_eq!(info.root_public_key, hex::encode(sim.root_public_key()));
        sim.shutdown().await;
    }

    #[tokio::test]
    async fn presence_calls_check_their_phone_and_state() {
        let (sim, control) = control().await;
        let phone: PhoneNumber = "15550009001".parse().expect("phone");
        let absent = control
            .set_read_receipts(Request::new(SetReadReceiptsRequest {
                phone: phone.as_str().into(),
                shared: false,
            }))
            .await;
        assert_eq!(code_and_message(absent).0, Code::NotFound);
        let absent = control
            .set_presence(Request::new(SetPresenceRequest {
                phone: phone.as_str().into(),
                available: true,
            }))
            .await;
        assert_eq!(code_and_message(absent).0, Code::NotFound);

        sim.create_account(&phone, "P").expect("created");
        let chat_state = |state: &str| {
            Request::new(SendChatStateRequest {
                from_phone: phone.as_str().into(),
                chat: "15550009002".into(),
                state: state.into(),
            })
        };
        let (code, message) = code_and_message(control.send_chat_state(chat_state("x")).await);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        let (code, _) = code_and_message(control.send_chat_state(chat_state("paused")).await);
        assert_eq!(code, Code::NotFound, "the chat's account does not exist");
        sim.create_account(&"15550009002".parse().expect("phone"), "Q")
            .expect("created");
        for state in ["composing", "recording", "paused"] {
            let (code, message) =
                code_and_message(control.send_chat_state(chat_state(state)).await);
            assert_eq!(code, Code::Ok, "{state}: {message}");
        }
        let (code, _) = code_and_message(
            control
                .set_read_receipts(Request::new(SetReadReceiptsRequest {
                    phone: phone.as_str().into(),
                    shared: false,
                }))
                .await,
        );
        assert_eq!(code, Code::Ok);
        assert!(sim.inner.presence.receipts_hidden(phone.as_str()));
        sim.shutdown().await;
    }
}
