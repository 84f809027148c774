//! The receipt and presence RPCs: `MarkRead`, `SendChatState`,
//! `SetPresence`, `SubscribePresence`. Requests are checked here, stanzas
//! built by `wa::presence` and written on the session's connection.

use tonic::{Response, Status};

use crate::proto::gateway::{
    ChatState, MarkReadRequest, MarkReadResponse, SendChatStateRequest, SendChatStateResponse,
    SetPresenceRequest, SetPresenceResponse, SubscribePresenceRequest, SubscribePresenceResponse,
};
use crate::runtime::Manager;
use crate::wa::jid::Jid;
use crate::wa::presence;

use super::errors::{invalid, quote};
use super::gateway::{recipient, session_id};

/// Message ids one MarkRead names: a chat screen's worth many times over;
/// they go out in receipts of [`presence::MAX_IDS_PER_RECEIPT`].
pub(crate) const MAX_READ_IDS: usize = 1000;
/// Longest message id accepted; WhatsApp's are 16 to 32 characters.
const MAX_ID_BYTES: usize = 128;

/// `raw` as a JID for `field`, with that field named in the error.
fn jid(field: &'static str, raw: &str) -> Result<Jid, Status> {
    recipient(raw).map_err(|s| invalid(field, s.message()))
}

fn user(field: &'static str, raw: &str) -> Result<Jid, Status> {
    let jid = jid(field, raw)?;
    if !jid.is_user() && !jid.is_lid() {
        return Err(invalid(field, format!("{} is not a user", quote(raw))));
    }
    Ok(jid.to_non_ad())
}

/// `raw` as the `chat` of a request: a user (phone number, user or LID
/// JID) or a group, without device.
fn chat(raw: &str) -> Result<Jid, Status> {
    let chat = jid("chat", raw)?;
    if !chat.is_group() && !chat.is_user() && !chat.is_lid() {
        return Err(invalid(
            "chat",
            format!("{} is not a user or group", quote(raw)),
        ));
    }
    Ok(chat.to_non_ad())
}

fn message_ids(raw: Vec<String>) -> Result<Vec<String>, Status> {
    if raw.is_empty() {
        return Err(invalid("message_ids", "name at least one message id"));
    }
    if raw.len() > MAX_READ_IDS {
        return Err(invalid(
            "message_ids",
            format!("at most {MAX_READ_IDS} per call (got {})", raw.len()),
        ));
    }
    raw.into_iter()
        .map(|id| {
            let id = id.trim().to_owned();
            let printable = id.bytes().all(|b| b.is_ascii_graphic());
            if id.is_empty() || id.len() > MAX_ID_BYTES || !printable {
                return Err(invalid(
                    "message_ids",
                    format!("{} is not a message id", quote(&id)),
                ));
            }
            Ok(id)
        })
        .collect()
}

pub(super) async fn mark_read(
    manager: &Manager,
    req: MarkReadRequest,
) -> Result<Response<MarkReadResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let chat = chat(&req.chat)?;
    let sender = match (chat.is_group(), req.sender.trim()) {
        (true, "") => {
            return Err(invalid(
                "sender",
                "required in a group: who sent the messages",
            ))
        }
        (true, raw) => Some(user("sender", raw)?),
        (false, "") => None,
        // In a one-to-one chat the sender is the chat; a different one is
        // a mistake worth telling.
        (false, raw) => {
            let sender = user("sender", raw)?;
            if sender != chat {
                return Err(invalid(
                    "sender",
                    "in a one-to-one chat the sender is the chat; leave it empty",
                ));
            }
            None
        }
    };
    let ids = message_ids(req.message_ids)?;
    // The account's privacy setting decides whether senders hear of it:
    // asked each time, since the phone may change it at any moment.
    let answer = manager
        .query(&id, presence::privacy_query())
        .await
        .map_err(Status::from)?;
    let private = presence::read_receipts_disabled(&answer);
    let now_s = crate::runtime::now_ms() / 1000;
    let receipts = presence::read_receipts(&chat, sender.as_ref(), &ids, private, now_s);
    manager
        .transmit(&id, receipts)
        .await
        .map_err(Status::from)?;
    Ok(Response::new(MarkReadResponse {
        receipts_sent: !private,
    }))
}

pub(super) async fn send_chat_state(
    manager: &Manager,
    req: SendChatStateRequest,
) -> Result<Response<SendChatStateResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let chat = chat(&req.chat)?;
    let state = match ChatState::try_from(req.state) {
        Ok(ChatState::Composing) => presence::ChatState::Composing,
        Ok(ChatState::Recording) => presence::ChatState::Recording,
        Ok(ChatState::Paused) => presence::ChatState::Paused,
        Ok(ChatState::Unspecified) | Err(_) => {
            return Err(invalid("state", "COMPOSING, RECORDING or PAUSED"));
        }
    };
    manager
        .transmit(&id, vec![presence::chat_state(&chat, state)])
        .await
        .map_err(Status::from)?;
    Ok(Response::new(SendChatStateResponse {}))
}

pub(super) async fn set_presence(
    manager: &Manager,
    req: SetPresenceRequest,
) -> Result<Response<SetPresenceResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let push_name = manager.status(&id).map_err(Status::from)?.push_name;
    let node = presence::presence(req.available, push_name.as_deref());
    manager
        .transmit(&id, vec![node])
        .await
        .map_err(Status::from)?;
    Ok(Response::new(SetPresenceResponse {}))
}

pub(super) async fn subscribe_presence(
    manager: &Manager,
    req: SubscribePresenceRequest,
) -> Result<Response<SubscribePresenceResponse>, Status> {
    let id = session_id(&req.session_id)?;
    let who = user("jid", &req.jid)?;
    manager
        .transmit(&id, vec![presence::subscribe(&who)])
        .await
        .map_err(Status::from)?;
    Ok(Response::new(SubscribePresenceResponse {}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_checked() {
        let code = |ids: Vec<String>| message_ids(ids).map(|_| ()).map_err(|e| e.code());
        assert_eq!(code(vec![]), Err(tonic::Code::InvalidArgument));
        assert_eq!(
            code(vec!["A".into(); MAX_READ_IDS + 1]),
            Err(tonic::Code::InvalidArgument)
        );
        assert_eq!(code(vec!["A".into(); MAX_READ_IDS]), Ok(()));
        for bad in ["", " ", "a b", &"x".repeat(MAX_ID_BYTES + 1)] {
            assert_eq!(code(vec![bad.into()]), Err(tonic::Code::InvalidArgument));
        }
        let e = message_ids(vec!["x".repeat(1 << 20)]).expect_err("too long");
        assert!(e.message().len() < 200, "{}", e.message());
    }

    #[test]
    fn users_are_users() {
        assert!(user("jid", "+15551234567").is_ok());
        assert!(user("jid", "15551234567:2@s.whatsapp.net").is_ok());
        assert!(user("jid", "120363000000000001@g.us").is_err());
        assert!(user("jid", "nonsense").is_err());
    }
}
