//! The one place runtime and engine outcomes become payloads of the public
//! `Event` (as they are stored in the event log).

use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{
    ChatSettingsEvent, ChatState, ChatStateEvent, ConnectionEvent, ContactCard, ContactEvent,
    Contacts, GroupChange, GroupEvent, HistoryChat, HistoryEvent, HistoryMessage, HistoryPushName,
    LinkCodeEvent, Location, MediaInfo, MediaKind, MessageEvent, Poll, PollVote, PresenceEvent,
    QrEvent, ReceiptEvent, ReceiptType,
};
use crate::wa::groups::{GroupChange as GroupChangeKindOf, GroupChangeKind};
use crate::wa::history::{HistoryNotice, HistoryPage};
use crate::wa::jid::Jid;
use crate::wa::media::MediaType;
use crate::wa::message::phone_of;
use crate::wa::messaging::{
    ChatSettings, ContactUpdate, Event, ReceiptKind, ReceivedContent, ReceivedMedia,
    ReceivedMessage, ReceivedReceipt,
};
use crate::wa::presence::{ChatState as ChatStateKind, IncomingChatState, IncomingPresence};

use super::event_records::timestamp;
use super::status::SessionState;

/// Unix seconds as a protobuf timestamp; times past what it can hold are
/// clamped rather than wrapped.
fn seconds(t_s: u64) -> prost_types::Timestamp {
    let ms = i64::try_from(t_s)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .unwrap_or(i64::MAX / 1000 * 1000);
    timestamp(ms)
}

/// Unix milliseconds as a protobuf timestamp, clamped.
pub(crate) fn millis(ms: u64) -> prost_types::Timestamp {
    timestamp(i64::try_from(ms).unwrap_or(i64::MAX / 1000 * 1000))
}

pub(crate) fn engine_event(event: &Event) -> Payload {
    match event {
        Event::Message(m) => message(m),
        Event::Receipt(r) => receipt(r),
        Event::Group(g) => group(g),
        Event::ChatState(c) => chat_state(c),
        Event::Presence(p) => presence(p),
        Event::Contact(c) => contact(c),
        Event::ChatSettings(c) => chat_settings(c),
    }
}

/// One page of a history chunk.
pub(crate) fn history_page(page: HistoryPage) -> Payload {
    Payload::History(HistoryEvent {
        sync_type: page.sync_type.as_str_name().to_owned(),
        chunk_order: page.chunk_order,
        progress: page.progress,
        page: page.index,
        last_page: page.last,
        chats: page
            .chats
            .into_iter()
            .map(|c| HistoryChat {
                chat: c.chat,
                name: c.name.unwrap_or_default(),
                unread_count: c.unread_count,
                messages: c
                    .messages
                    .into_iter()
                    .map(|m| HistoryMessage {
                        id: m.id,
                        sender: m.sender,
                        timestamp: Some(seconds(m.timestamp_s)),
                        from_me: m.from_me,
                        text: m.text.unwrap_or_default(),
                        r#type: m.kind,
                        push_name: m.push_name.unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
        push_names: page
            .push_names
            .into_iter()
            .map(|(jid, push_name)| HistoryPushName { jid, push_name })
            .collect(),
        error: String::new(),
    })
}

/// A chunk that could not be read: its last page says why.
pub(crate) fn history_failed(notice: &HistoryNotice, page: u32, error: String) -> Payload {
    Payload::History(HistoryEvent {
        sync_type: notice.sync_type.as_str_name().to_owned(),
        chunk_order: notice.chunk_order,
        progress: notice.progress,
        page,
        last_page: true,
        error,
        ..Default::default()
    })
}

fn contact(c: &ContactUpdate) -> Payload {
    Payload::Contact(ContactEvent {
        jid: c.jid.to_string(),
        phone: phone_of(&c.jid).unwrap_or_default(),
        full_name: c.full_name.clone().unwrap_or_default(),
        first_name: c.first_name.clone().unwrap_or_default(),
        push_name: c.push_name.clone().unwrap_or_default(),
    })
}

fn chat_settings(c: &ChatSettings) -> Payload {
    Payload::ChatSettings(ChatSettingsEvent {
        chat: c.chat.to_string(),
        archived: c.archived,
        pinned: c.pinned,
        muted: c.muted_until_ms.is_some(),
        muted_until: c
            .muted_until_ms
            .filter(|ms| *ms >= 0)
            .map(|ms| millis(ms.unsigned_abs())),
        unread: c.unread,
    })
}

fn chat_state(c: &IncomingChatState) -> Payload {
    let state = match c.state {
        ChatStateKind::Composing => ChatState::Composing,
        ChatStateKind::Recording => ChatState::Recording,
        ChatStateKind::Paused => ChatState::Paused,
    };
    Payload::ChatState(ChatStateEvent {
        chat: c.chat.to_string(),
        sender: c.sender.to_string(),
        sender_phone: c.sender_phone.clone().unwrap_or_default(),
        state: state as i32,
        sender_lid: jid_text(c.sender_lid.as_ref()),
    })
}

fn presence(p: &IncomingPresence) -> Payload {
    Payload::Presence(PresenceEvent {
        from: p.from.to_string(),
        from_phone: p.from_phone.clone().unwrap_or_default(),
        available: p.available,
        from_lid: jid_text(p.from_lid.as_ref()),
        last_seen: p.last_seen_s.map(seconds),
    })
}

fn group(g: &GroupChangeKindOf) -> Payload {
    let change = match g.kind {
        GroupChangeKind::Created => GroupChange::GroupCreated,
        GroupChangeKind::Added => GroupChange::GroupParticipantsAdded,
        GroupChangeKind::Removed => GroupChange::GroupParticipantsRemoved,
        GroupChangeKind::Left => GroupChange::GroupParticipantsLeft,
        GroupChangeKind::Promoted => GroupChange::GroupParticipantsPromoted,
        GroupChangeKind::Demoted => GroupChange::GroupParticipantsDemoted,
        GroupChangeKind::Subject => GroupChange::GroupSubjectChanged,
        GroupChangeKind::Description => GroupChange::GroupDescriptionChanged,
        GroupChangeKind::Other => GroupChange::GroupOther,
    };
    Payload::Group(GroupEvent {
        group: g.group.to_string(),
        change: change as i32,
        actor: g
            .actor
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        actor_phone: g.actor_phone.clone().unwrap_or_default(),
        actor_lid: jid_text(g.actor_lid.as_ref()),
        participants: g.participants.iter().map(ToString::to_string).collect(),
        text: g.text.clone().unwrap_or_default(),
        timestamp: Some(seconds(g.timestamp_s)),
    })
}

fn message(m: &ReceivedMessage) -> Payload {
    Payload::Message(MessageEvent {
        id: m.id.clone(),
        chat: m.chat.to_string(),
        sender: m.sender.to_string(),
        sender_phone: m.sender_phone.clone().unwrap_or_default(),
        sender_lid: jid_text(m.sender_lid.as_ref()),
        chat_phone: m.chat_phone.clone().unwrap_or_default(),
        chat_lid: jid_text(m.chat_lid.as_ref()),
        push_name: m.push_name.clone().unwrap_or_default(),
        timestamp: Some(seconds(m.timestamp_s)),
        from_me: m.from_me,
        text: m.text.clone().unwrap_or_default(),
        r#type: m.kind.clone(),
        offline: m.offline,
        error: message_error(m),
        media: m.media.as_deref().map(media_info),
        target: m
            .refs
            .as_ref()
            .and_then(|r| r.target.as_ref())
            .or(match m.content.as_deref() {
                Some(ReceivedContent::Vote { poll, .. }) => Some(poll),
                _ => None,
            })
            .map(message_ref),
        quoted_text: m
            .refs
            .as_ref()
            .and_then(|r| r.quoted_text.clone())
            .unwrap_or_default(),
        mentions: m
            .refs
            .as_ref()
            .map(|r| r.mentions.clone())
            .unwrap_or_default(),
        location: match m.content.as_deref() {
            Some(ReceivedContent::Location(l)) => Some(location(l)),
            _ => None,
        },
        contacts: match m.content.as_deref() {
            Some(ReceivedContent::Contacts(c)) => Some(contacts(c)),
            _ => None,
        },
        poll: match m.content.as_deref() {
            Some(ReceivedContent::Poll(p)) => Some(Poll {
                name: p.name.clone(),
                options: p.options.clone(),
                selectable_count: p.selectable,
            }),
            _ => None,
        },
        poll_vote: match m.content.as_deref() {
            Some(ReceivedContent::Vote { poll, options }) => Some(PollVote {
                poll: Some(message_ref(poll)),
                options: options.clone().unwrap_or_default(),
            }),
            _ => None,
        },
    })
}

/// A message error, or why a vote cannot be read.
fn message_error(m: &ReceivedMessage) -> String {
    match (&m.error, m.content.as_deref()) {
        (Some(error), _) => error.clone(),
        (
            None,
            Some(ReceivedContent::Vote {
                options: Err(e), ..
            }),
        ) => e.clone(),
        (None, _) => String::new(),
    }
}

fn message_ref(t: &crate::wa::compose::MessageRef) -> crate::proto::gateway::MessageRef {
    crate::proto::gateway::MessageRef {
        id: t.id.clone(),
        from_me: t.from_me,
        sender: t
            .sender
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
    }
}

fn location(l: &crate::wa::content::Location) -> Location {
    Location {
        latitude: l.latitude,
        longitude: l.longitude,
        name: l.name.clone().unwrap_or_default(),
        address: l.address.clone().unwrap_or_default(),
        url: l.url.clone().unwrap_or_default(),
        live: l.live,
        caption: l.caption.clone().unwrap_or_default(),
        accuracy_meters: l.accuracy_meters.unwrap_or_default(),
    }
}

fn contacts(c: &crate::wa::content::Contacts) -> Contacts {
    Contacts {
        display_name: c.display_name.clone().unwrap_or_default(),
        cards: c
            .cards
            .iter()
            .map(|card| ContactCard {
                display_name: card.display_name.clone(),
                vcard: card.vcard.clone(),
            })
            .collect(),
    }
}

fn media_info(m: &ReceivedMedia) -> MediaInfo {
    MediaInfo {
        kind: media_kind(m.ty) as i32,
        mimetype: m.mimetype.clone(),
        file_length: m.file_length,
        caption: m.caption.clone().unwrap_or_default(),
        file_name: m.file_name.clone().unwrap_or_default(),
        file_sha256: m.file_sha256.to_vec(),
        width: m.width.unwrap_or_default(),
        height: m.height.unwrap_or_default(),
        duration_seconds: m.seconds.unwrap_or_default(),
    }
}

/// The API's name for a media type.
pub(crate) fn media_kind(ty: MediaType) -> MediaKind {
    match ty {
        MediaType::Image => MediaKind::Image,
        MediaType::Video => MediaKind::Video,
        MediaType::Audio => MediaKind::Audio,
        MediaType::VoiceNote => MediaKind::VoiceNote,
        MediaType::Document => MediaKind::Document,
        MediaType::Sticker => MediaKind::Sticker,
        MediaType::History | MediaType::AppState | MediaType::LinkThumbnail => {
            MediaKind::Unspecified
        }
    }
}

fn receipt(r: &ReceivedReceipt) -> Payload {
    let kind = match r.kind {
        ReceiptKind::Delivered => ReceiptType::Delivered,
        ReceiptKind::Read => ReceiptType::Read,
        ReceiptKind::Played => ReceiptType::Played,
    };
    Payload::Receipt(ReceiptEvent {
        message_ids: r.message_ids.clone(),
        r#type: kind as i32,
        chat: r.chat.to_string(),
        from: r.from.to_string(),
        from_phone: r.from_phone.clone().unwrap_or_default(),
        from_lid: jid_text(r.from_lid.as_ref()),
        timestamp: r.timestamp_s.map(seconds),
    })
}

pub(crate) fn qr(code: String, expires_at_ms: u64) -> Payload {
    Payload::Qr(QrEvent {
        qr: code,
        expires_at: Some(millis(expires_at_ms)),
    })
}

pub(crate) fn link_code(code: String, expires_at_ms: u64) -> Payload {
    Payload::LinkCode(LinkCodeEvent {
        code,
        expires_at: Some(millis(expires_at_ms)),
    })
}

pub(crate) fn connection(state: SessionState, reason: String, jid: String) -> Payload {
    Payload::Connection(ConnectionEvent {
        state: state.to_api() as i32,
        reason,
        jid,
    })
}

/// A JID as text, empty when absent.
fn jid_text(jid: Option<&Jid>) -> String {
    jid.map(ToString::to_string).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_times_are_clamped_not_wrapped() {
        assert!(seconds(u64::MAX).seconds > 0);
        assert_eq!(seconds(1_700_000_000).seconds, 1_700_000_000);
        assert!(millis(u64::MAX).seconds > 0);
    }
}
