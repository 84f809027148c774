//! How results are printed: human-readable text by default, or one JSON
//! object per line for scripts.

use serde_json::{json, Map, Value};

use crate::proto::gateway::{
    event::Payload, ChatState, Event, GroupChange, ReceiptType, SendResponse, Session, SessionState,
};

/// `CONNECTED`, `QR_READY`, ... as the API documents the states.
pub fn state_name(state: i32) -> &'static str {
    SessionState::try_from(state).map_or("UNKNOWN", |s| s.as_str_name())
}

/// RFC 3339 in UTC with millisecond precision, e.g. `2024-05-01T12:00:00.000Z`.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    let secs = ts.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let millis = ts.nanos.clamp(0, 999_999_999) / 1_000_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`), so no date library is needed for printing.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn opt_ts(ts: Option<&prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

fn labels(map: &std::collections::HashMap<String, String>) -> Value {
    let mut sorted: Vec<_> = map.iter().collect();
    sorted.sort();
    Value::Object(
        sorted
            .into_iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

pub fn session_json(s: &Session) -> Value {
    json!({
        "session_id": s.session_id,
        "state": state_name(s.state),
        "jid": s.jid,
        "phone": s.phone,
        "push_name": s.push_name,
        "platform": s.platform,
        "created_at": opt_ts(s.created_at.as_ref()),
        "last_connected_at": opt_ts(s.last_connected_at.as_ref()),
        "reconnect_attempts": s.reconnect_attempts,
        "last_disconnect_reason": s.last_disconnect_reason,
        "metadata": labels(&s.metadata),
    })
}

/// `key: value` lines, skipping what is unset.
pub fn session_text(s: &Session) -> String {
    let mut out = format!(
        "session:  {}\nstate:    {}\n",
        s.session_id,
        state_name(s.state)
    );
    let mut field = |name: &str, value: &str| {
        if !value.is_empty() {
            out.push_str(&format!("{name:<9} {value}\n"));
        }
    };
    field("jid:", &s.jid);
    field("phone:", &s.phone);
    field("name:", &s.push_name);
    field("platform:", &s.platform);
    let created = s.created_at.as_ref().map(rfc3339).unwrap_or_default();
    field("created:", &created);
    let connected = s
        .last_connected_at
        .as_ref()
        .map(rfc3339)
        .unwrap_or_default();
    field("last up:", &connected);
    if s.reconnect_attempts > 0 {
        field("retries:", &s.reconnect_attempts.to_string());
    }
    field("reason:", &s.last_disconnect_reason);
    let mut meta: Vec<_> = s.metadata.iter().collect();
    meta.sort();
    for (k, v) in meta {
        field("meta:", &format!("{k}={v}"));
    }
    out
}

/// One row per session: id, state, JID.
pub fn session_table(sessions: &[Session]) -> String {
    let width = sessions
        .iter()
        .map(|s| s.session_id.len())
        .max()
        .unwrap_or(0)
        .max("SESSION".len());
    let mut out = format!("{:<width$}  {:<12}  JID\n", "SESSION", "STATE");
    for s in sessions {
        out.push_str(&format!(
            "{:<width$}  {:<12}  {}\n",
            s.session_id,
            state_name(s.state),
            s.jid
        ));
    }
    out
}

pub fn send_json(r: &SendResponse) -> Value {
    json!({ "message_id": r.message_id, "timestamp": opt_ts(r.timestamp.as_ref()) })
}

pub fn event_json(e: &Event) -> Value {
    let mut v = json!({
        "cursor": e.cursor,
        "session_id": e.session_id,
        "seq": e.seq,
        "timestamp": opt_ts(e.timestamp.as_ref()),
    });
    let (kind, body) = match &e.payload {
        Some(Payload::Qr(q)) => (
            "qr",
            json!({ "qr": q.qr, "expires_at": opt_ts(q.expires_at.as_ref()) }),
        ),
        Some(Payload::LinkCode(c)) => (
            "link_code",
            json!({ "code": c.code, "expires_at": opt_ts(c.expires_at.as_ref()) }),
        ),
        Some(Payload::Connection(c)) => (
            "connection",
            json!({ "state": state_name(c.state), "reason": c.reason, "jid": c.jid }),
        ),
        Some(Payload::Message(m)) => (
            "message",
            json!({
                "id": m.id,
                "chat": m.chat,
                "sender": m.sender,
                "sender_phone": m.sender_phone,
                "push_name": m.push_name,
                "timestamp": opt_ts(m.timestamp.as_ref()),
                "from_me": m.from_me,
                "text": m.text,
                "type": m.r#type,
                "offline": m.offline,
                "error": m.error,
            }),
        ),
        Some(Payload::Receipt(r)) => (
            "receipt",
            json!({
                "message_ids": r.message_ids,
                "type": receipt_name(r.r#type),
                "chat": r.chat,
                "from": r.from,
                "from_phone": r.from_phone,
                "timestamp": opt_ts(r.timestamp.as_ref()),
            }),
        ),
        Some(Payload::Group(g)) => (
            "group",
            json!({
                "group": g.group,
                "change": group_change_name(g.change),
                "actor": g.actor,
                "actor_phone": g.actor_phone,
                "participants": g.participants,
                "text": g.text,
                "timestamp": opt_ts(g.timestamp.as_ref()),
            }),
        ),
        Some(Payload::ChatState(c)) => (
            "chat_state",
            json!({
                "chat": c.chat,
                "sender": c.sender,
                "sender_phone": c.sender_phone,
                "state": chat_state_name(c.state),
            }),
        ),
        Some(Payload::Presence(p)) => (
            "presence",
            json!({
                "from": p.from,
                "from_phone": p.from_phone,
                "available": p.available,
                "last_seen": opt_ts(p.last_seen.as_ref()),
            }),
        ),
        Some(Payload::History(h)) => (
            "history",
            json!({
                "sync_type": h.sync_type,
                "chunk_order": h.chunk_order,
                "progress": h.progress,
                "page": h.page,
                "last_page": h.last_page,
                "chats": h.chats.iter().map(|c| json!({
                    "chat": c.chat,
                    "name": c.name,
                    "messages": c.messages.iter().map(|m| json!({
                        "id": m.id,
                        "sender": m.sender,
                        "timestamp": opt_ts(m.timestamp.as_ref()),
                        "from_me": m.from_me,
                        "text": m.text,
                        "type": m.r#type,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "push_names": h.push_names.iter().map(|p| json!({
                    "jid": p.jid,
                    "push_name": p.push_name,
                })).collect::<Vec<_>>(),
                "error": h.error,
            }),
        ),
        Some(Payload::Contact(c)) => (
            "contact",
            json!({
                "jid": c.jid,
                "phone": c.phone,
                "full_name": c.full_name,
                "first_name": c.first_name,
                "push_name": c.push_name,
            }),
        ),
        Some(Payload::ChatSettings(c)) => (
            "chat_settings",
            json!({
                "chat": c.chat,
                "archived": c.archived,
                "pinned": c.pinned,
                "muted": c.muted,
                "muted_until": opt_ts(c.muted_until.as_ref()),
                "unread": c.unread,
            }),
        ),
        None => ("unknown", Value::Null),
    };
    if let Value::Object(map) = &mut v {
        map.insert("type".into(), Value::String(kind.into()));
        map.insert(kind.into(), body);
    }
    v
}

fn group_change_name(change: i32) -> &'static str {
    match GroupChange::try_from(change) {
        Ok(GroupChange::GroupCreated) => "created",
        Ok(GroupChange::GroupParticipantsAdded) => "added",
        Ok(GroupChange::GroupParticipantsRemoved) => "removed",
        Ok(GroupChange::GroupParticipantsLeft) => "left",
        Ok(GroupChange::GroupParticipantsPromoted) => "promoted",
        Ok(GroupChange::GroupParticipantsDemoted) => "demoted",
        Ok(GroupChange::GroupSubjectChanged) => "subject",
        Ok(GroupChange::GroupDescriptionChanged) => "description",
        Ok(GroupChange::GroupOther) => "other",
        Ok(GroupChange::Unspecified) | Err(_) => "unknown",
    }
}

fn chat_state_name(state: i32) -> &'static str {
    match ChatState::try_from(state) {
        Ok(ChatState::Composing) => "composing",
        Ok(ChatState::Recording) => "recording",
        Ok(ChatState::Paused) => "paused",
        Ok(ChatState::Unspecified) | Err(_) => "unknown",
    }
}

fn receipt_name(kind: i32) -> &'static str {
    match ReceiptType::try_from(kind) {
        Ok(ReceiptType::Delivered) => "delivered",
        Ok(ReceiptType::Read) => "read",
        Ok(ReceiptType::Played) => "played",
        Ok(ReceiptType::Unspecified) | Err(_) => "unknown",
    }
}

/// `CURSOR TIME SESSION#SEQ TYPE details`.
pub fn event_text(e: &Event) -> String {
    let time = e.timestamp.as_ref().map(rfc3339).unwrap_or_default();
    let detail = match &e.payload {
        Some(Payload::Qr(q)) => format!("qr {}", q.qr),
        Some(Payload::LinkCode(c)) => format!("link code {}", c.code),
        Some(Payload::Connection(c)) => {
            let mut d = format!("connection {}", state_name(c.state));
            if !c.jid.is_empty() {
                d.push_str(&format!(" jid={}", c.jid));
            }
            if !c.reason.is_empty() {
                d.push_str(&format!(" reason={:?}", c.reason));
            }
            d
        }
        Some(Payload::Message(m)) => {
            let who = if m.from_me { "me" } else { m.sender.as_str() };
            let mut d = format!("message {} {} in {} from {who}", m.r#type, m.id, m.chat);
            if !m.text.is_empty() {
                d.push_str(&format!(": {:?}", m.text));
            }
            d
        }
        Some(Payload::Receipt(r)) => format!(
            "receipt {} {} from {}",
            receipt_name(r.r#type),
            r.message_ids.join(","),
            r.from
        ),
        Some(Payload::ChatState(c)) => format!(
            "chat_state {} in {} from {}",
            chat_state_name(c.state),
            c.chat,
            c.sender
        ),
        Some(Payload::Contact(c)) => format!("contact {} {:?}", c.jid, c.full_name),
        Some(Payload::ChatSettings(c)) => {
            let flags: Vec<&str> = [
                (c.archived, "archived"),
                (c.pinned, "pinned"),
                (c.muted, "muted"),
                (c.unread, "unread"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            format!("chat_settings {} [{}]", c.chat, flags.join(" "))
        }
        Some(Payload::Presence(p)) => {
            let state = if p.available {
                "available"
            } else {
                "unavailable"
            };
            format!("presence {} {state}", p.from)
        }
        Some(Payload::History(h)) => {
            let messages: usize = h.chats.iter().map(|c| c.messages.len()).sum();
            let mut d = format!(
                "history {} chunk {} page {} ({} chats, {messages} messages, {}%)",
                h.sync_type,
                h.chunk_order,
                h.page,
                h.chats.len(),
                h.progress
            );
            if !h.error.is_empty() {
                d.push_str(&format!(": {}", h.error));
            }
            d
        }
        Some(Payload::Group(g)) => {
            let mut d = format!("group {} {}", group_change_name(g.change), g.group);
            if !g.participants.is_empty() {
                d.push_str(&format!(" {}", g.participants.join(",")));
            }
            if !g.text.is_empty() {
                d.push_str(&format!(": {:?}", g.text));
            }
            d
        }
        None => "unknown event".to_owned(),
    };
    format!("{} {time} {}#{} {detail}", e.cursor, e.session_id, e.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gateway::ConnectionEvent;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(rfc3339(&ts(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(&ts(951_782_400, 5_000_000)),
            "2000-02-29T00:00:00.005Z"
        );
        assert_eq!(rfc3339(&ts(1_714_564_800, 0)), "2024-05-01T12:00:00.000Z");
        assert_eq!(rfc3339(&ts(-1, 0)), "1969-12-31T23:59:59.000Z");
    }

    #[test]
    fn events_carry_their_type_and_payload() {
        let e = Event {
            cursor: 7,
            session_id: "a".into(),
            seq: 2,
            timestamp: None,
            payload: Some(Payload::Connection(ConnectionEvent {
                state: SessionState::Connected as i32,
                reason: String::new(),
                jid: "1:2@s.whatsapp.net".into(),
            })),
        };
        let v = event_json(&e);
        assert_eq!(v["type"], "connection");
        assert_eq!(v["connection"]["state"], "CONNECTED");
        assert_eq!(v["cursor"], 7);
        assert_eq!(
            event_text(&e),
            "7  a#2 connection CONNECTED jid=1:2@s.whatsapp.net"
        );
    }
}
