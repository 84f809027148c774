//! One gateway event → the webhooks each configured target expects, in its
//! gateway's documented payload format.

use serde_json::{json, Value};

use crate::proto::gateway::event::Payload;
use crate::proto::gateway::{
    ConnectionEvent, Event, MessageEvent, ReceiptEvent, ReceiptType, SessionState,
};
use crate::qr::{baileys_form, bare_base64, png_data_url};
use crate::state::SessionHook;
use crate::time::{iso, ms_of, secs_of};

/// Where one session's events go.
#[derive(Clone, Debug, Default)]
pub(crate) struct Targets {
    /// Venom: the session's `webhookUrl`.
    pub(crate) venom: Option<String>,
    /// whatsapp-web.js: the global webhook.
    pub(crate) wwebjs: Option<String>,
    /// whatsapp-web.js production variant: the session's webhook and filter.
    pub(crate) wwebjs_hook: Option<SessionHook>,
    /// QR Service: `BACKEND_URL`.
    pub(crate) qr_backend: Option<String>,
    /// Baileys-WS: `API_URL`.
    pub(crate) baileys: Option<String>,
}

/// One HTTP POST to make.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Delivery {
    pub(crate) url: String,
    /// The event's name in its dialect (sent as `X-Wagate-Event`).
    pub(crate) name: &'static str,
    pub(crate) body: Value,
}

/// The `media` of a message's whatsapp-web.js webhooks, fetched before
/// they are built (null for messages without media or when no target
/// wants it).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct WwebjsMedia {
    /// `{mimetype, data (base64), filename}` for the global webhook.
    pub(crate) inline: Value,
    /// `{fileUrl, fileName, originalName, mimetype, fileSize}` for the
    /// production variant's session webhook.
    pub(crate) file: Value,
}

/// The webhooks for `event`. `qr_announced` carries the Venom `qr_ready`
/// state between events of one session.
pub(crate) fn deliveries(
    event: &Event,
    targets: &Targets,
    media: &WwebjsMedia,
    qr_announced: &mut bool,
) -> Vec<Delivery> {
    let mut out = Vec::new();
    let session = event.session_id.as_str();
    match &event.payload {
        Some(Payload::Qr(qr)) => {
            let png = match png_data_url(&qr.qr) {
                Ok(png) => png,
                Err(e) => {
                    tracing::warn!(session, "cannot draw the QR code: {e}");
                    String::new()
                }
            };
            if let Some(url) = &targets.venom {
                if !*qr_announced {
                    out.push(venom(
                        url,
                        "CONNECTION_UPDATE",
                        session,
                        json!({"state": "qr_ready"}),
                    ));
                }
                out.push(venom(
                    url,
                    "QR_CODE",
                    session,
                    json!({ "qr": bare_base64(&png) }),
                ));
            }
            *qr_announced = true;
            if let Some(base) = &targets.qr_backend {
                out.push(qr_webhook(base, "qr", session, json!({ "qrCode": png })));
            }
            if let Some(url) = &targets.baileys {
                let raw = baileys_form(&qr.qr);
                let image = if raw == qr.qr {
                    png
                } else {
                    png_data_url(raw).unwrap_or(png)
                };
                out.push(baileys(
                    url,
                    "qr",
                    event,
                    json!({ "qr_code": raw, "qr_image": image }),
                ));
            }
        }
        Some(Payload::Connection(conn)) => {
            *qr_announced = false;
            connection(event, conn, targets, &mut out);
        }
        Some(Payload::Message(msg)) => message(event, msg, targets, media, &mut out),
        Some(Payload::Receipt(receipt)) => receipts(event, receipt, targets, &mut out),
        // None of the seed gateways documents a group webhook.
        // The peers' webhook documents have no place for a link code,
        // nor for contacts or chat settings synced from the phone.
        Some(
            Payload::Group(_)
            | Payload::ChatState(_)
            | Payload::Presence(_)
            | Payload::LinkCode(_)
            | Payload::History(_)
            | Payload::Contact(_)
            | Payload::ChatSettings(_),
        )
        | None => {}
    }
    out
}

fn state_of(conn: &ConnectionEvent) -> SessionState {
    SessionState::try_from(conn.state).unwrap_or(SessionState::Unspecified)
}

fn connection(event: &Event, conn: &ConnectionEvent, targets: &Targets, out: &mut Vec<Delivery>) {
    let session = event.session_id.as_str();
    let state = state_of(conn);
    if let Some(url) = &targets.venom {
        let name = match state {
            SessionState::Connected => Some("open"),
            SessionState::Connecting => Some("connecting"),
            SessionState::QrReady => Some("qr_ready"),
            SessionState::Disconnected | SessionState::LoggedOut => Some("close"),
            SessionState::Unspecified => None,
        };
        if let Some(name) = name {
            out.push(venom(
                url,
                "CONNECTION_UPDATE",
                session,
                json!({ "state": name }),
            ));
        }
    }
    if let Some(base) = &targets.qr_backend {
        match state {
            SessionState::Connected => out.push(qr_webhook(
                base,
                "connected",
                session,
                json!({ "connectedAt": iso(ms_of(event.timestamp.as_ref())) }),
            )),
            SessionState::Disconnected | SessionState::LoggedOut => {
                let reason = if state == SessionState::LoggedOut {
                    "logout".to_owned()
                } else if conn.reason.is_empty() {
                    "disconnected".to_owned()
                } else {
                    conn.reason.clone()
                };
                out.push(qr_webhook(
                    base,
                    "disconnected",
                    session,
                    json!({ "reason": reason }),
                ));
            }
            // A dropped connection being retried is not reported: the
            // service documents only qr / connected / disconnected.
            SessionState::Connecting | SessionState::QrReady | SessionState::Unspecified => {}
        }
    }
    if let Some(url) = &targets.baileys {
        out.push(baileys(
            url,
            "connection",
            event,
            json!({
                "connected": state == SessionState::Connected,
                "status": crate::routes::baileys_ws::state_name(state),
                "number": phone_of_jid(&conn.jid),
                "last_disconnect_reason": conn.reason,
            }),
        ));
    }
}

fn message(
    event: &Event,
    msg: &MessageEvent,
    targets: &Targets,
    media: &WwebjsMedia,
    out: &mut Vec<Delivery>,
) {
    let session = event.session_id.as_str();
    let secs = secs_of(msg.timestamp.as_ref());
    let is_text = msg.r#type == "text";
    if let Some(url) = &targets.venom {
        let (message, kind) = if is_text {
            (
                json!({ "conversation": msg.text }),
                "conversation".to_owned(),
            )
        } else {
            baileys_content(msg).unwrap_or_else(|| (json!({}), msg.r#type.clone()))
        };
        out.push(venom(
            url,
            "MESSAGES_UPSERT",
            session,
            json!({
                "key": { "remoteJid": msg.chat, "id": msg.id, "fromMe": msg.from_me },
                "message": message,
                "messageType": kind,
                "pushName": msg.push_name,
                "messageTimestamp": secs,
            }),
        ));
    }
    if !msg.from_me {
        if let Some(url) = &targets.wwebjs {
            out.push(Delivery {
                url: url.clone(),
                name: "message",
                body: wwebjs_message(session, msg, &media.inline),
            });
        }
    }
    if let Some(hook) = &targets.wwebjs_hook {
        let name = if msg.from_me {
            "message-from-me"
        } else {
            "message-received"
        };
        if wants(hook, name) {
            let mut body = wwebjs_message(session, msg, &media.file);
            if let Some(map) = body.as_object_mut() {
                map.insert("event".into(), json!(name));
                map.insert("fromMe".into(), json!(msg.from_me));
                if msg.from_me {
                    map.insert(
                        "from".into(),
                        json!(c_us(&user_jid_of_phone(&msg.sender_phone, &msg.sender))),
                    );
                    map.insert("to".into(), json!(c_us(&msg.chat)));
                }
            }
            out.push(Delivery {
                url: hook.url.clone(),
                name,
                body,
            });
        }
    }
    if let Some(base) = &targets.qr_backend {
        if !msg.from_me && is_text {
            out.push(Delivery {
                url: format!("{}/whatsapp-qr/incoming", base.trim_end_matches('/')),
                name: "incoming",
                body: json!({
                    "sessionId": session,
                    "from": sender_number(msg),
                    "message": msg.text,
                    "timestamp": iso(ms_of(msg.timestamp.as_ref())),
                    "messageId": msg.id,
                }),
            });
        }
    }
    if let Some(url) = &targets.baileys {
        out.push(baileys(
            url,
            "message",
            event,
            json!({
                "id": msg.id,
                "from": sender_number(msg),
                "chat": msg.chat,
                "name": msg.push_name,
                "message": msg.text,
                "type": msg.r#type,
                "from_me": msg.from_me,
                "timestamp": iso(ms_of(msg.timestamp.as_ref())),
            }),
        ));
    }
}

fn receipts(event: &Event, receipt: &ReceiptEvent, targets: &Targets, out: &mut Vec<Delivery>) {
    let kind = ReceiptType::try_from(receipt.r#type).unwrap_or(ReceiptType::Unspecified);
    if let Some(hook) = &targets.wwebjs_hook {
        // The variant documents only `message-delivered`.
        if kind == ReceiptType::Delivered && wants(hook, "message-delivered") {
            for id in &receipt.message_ids {
                out.push(Delivery {
                    url: hook.url.clone(),
                    name: "message-delivered",
                    body: json!({
                        "event": "message-delivered",
                        "sessionId": event.session_id,
                        "id": id,
                        "to": c_us(&receipt.chat),
                        // whatsapp-web.js ack levels: 2 = reached the device.
                        "ack": 2,
                        "timestamp": secs_of(receipt.timestamp.as_ref()),
                    }),
                });
            }
        }
    }
    if let Some(url) = &targets.baileys {
        let name = match kind {
            ReceiptType::Delivered => "delivered",
            ReceiptType::Read => "read",
            ReceiptType::Played => "played",
            ReceiptType::Unspecified => "unknown",
        };
        out.push(baileys(
            url,
            "receipt",
            event,
            json!({
                "message_ids": receipt.message_ids,
                "type": name,
                "chat": receipt.chat,
                "from": receipt.from_phone,
                "timestamp": iso(ms_of(receipt.timestamp.as_ref())),
            }),
        ));
    }
}

pub(crate) fn wants(hook: &SessionHook, name: &str) -> bool {
    hook.events.iter().any(|e| e == "all" || e == name)
}

fn venom(url: &str, name: &'static str, session: &str, data: Value) -> Delivery {
    Delivery {
        url: url.to_owned(),
        name,
        body: json!({ "event": name, "instance": session, "data": data }),
    }
}

fn qr_webhook(base: &str, kind: &'static str, session: &str, data: Value) -> Delivery {
    Delivery {
        url: format!("{}/whatsapp-qr/webhook", base.trim_end_matches('/')),
        name: kind,
        body: json!({ "type": kind, "sessionId": session, "data": data }),
    }
}

fn baileys(url: &str, name: &'static str, event: &Event, data: Value) -> Delivery {
    Delivery {
        url: url.to_owned(),
        name,
        body: json!({
            "event": name,
            "session_id": event.session_id,
            "timestamp": iso(ms_of(event.timestamp.as_ref())),
            "data": data,
        }),
    }
}

/// A location, contact cards or poll as Baileys' `message` object holds it
/// (WhatsApp's field names, as S1's `message.conversation` is), and the
/// field's name; `None` for other messages.
fn baileys_content(msg: &MessageEvent) -> Option<(Value, String)> {
    if let Some(l) = &msg.location {
        let field = if msg.r#type == "liveLocationMessage" {
            "liveLocationMessage"
        } else {
            "locationMessage"
        };
        let mut body = json!({
            "degreesLatitude": l.latitude,
            "degreesLongitude": l.longitude,
        });
        if let Some(map) = body.as_object_mut() {
            for (key, value) in [
                ("name", &l.name),
                ("address", &l.address),
                ("url", &l.url),
                ("comment", &l.caption),
            ] {
                if !value.is_empty() {
                    map.insert(key.into(), json!(value));
                }
            }
        }
        return Some((json!({ field: body }), field.to_owned()));
    }
    if let Some(c) = &msg.contacts {
        let card = |card: &crate::proto::gateway::ContactCard| json!({ "displayName": card.display_name, "vcard": card.vcard });
        if msg.r#type == "contactMessage" {
            let first = c.cards.first().map(card).unwrap_or_else(|| json!({}));
            return Some((json!({ "contactMessage": first }), "contactMessage".into()));
        }
        let array = json!({
            "displayName": c.display_name,
            "contacts": c.cards.iter().map(card).collect::<Vec<_>>(),
        });
        return Some((
            json!({ "contactsArrayMessage": array }),
            "contactsArrayMessage".into(),
        ));
    }
    if let Some(p) = &msg.poll {
        // Baileys sends a single-choice poll as V3.
        let field = if p.selectable_count == 1 {
            "pollCreationMessageV3"
        } else {
            "pollCreationMessage"
        };
        let poll = json!({
            "name": p.name,
            "options": p.options.iter().map(|o| json!({ "optionName": o })).collect::<Vec<_>>(),
            "selectableOptionsCount": p.selectable_count,
        });
        return Some((json!({ field: poll }), field.to_owned()));
    }
    None
}

/// The whatsapp-web.js `body` of a message: its text; a contact card's
/// vCard and a poll's question, as whatsapp-web.js puts them there.
pub(crate) fn wwebjs_body(msg: &MessageEvent) -> String {
    match (&msg.contacts, &msg.poll) {
        (Some(c), _) if msg.r#type == "contactMessage" => {
            c.cards.first().map(|c| c.vcard.clone()).unwrap_or_default()
        }
        (_, Some(p)) => p.name.clone(),
        _ => msg.text.clone(),
    }
}

/// The flat message body of the whatsapp-web.js API.
fn wwebjs_message(session: &str, msg: &MessageEvent, media: &Value) -> Value {
    json!({
        "id": msg.id,
        "sessionId": session,
        "from": c_us(&msg.chat),
        "body": wwebjs_body(msg),
        "type": wwebjs_type(&msg.r#type),
        "timestamp": secs_of(msg.timestamp.as_ref()),
        "contact": { "name": msg.push_name, "number": sender_number(msg) },
        "media": media,
    })
}

/// whatsapp-web.js message type names.
pub(crate) fn wwebjs_type(kind: &str) -> String {
    match kind {
        "text" => "chat",
        "imageMessage" => "image",
        "videoMessage" => "video",
        "audioMessage" => "audio",
        "documentMessage" => "document",
        "stickerMessage" => "sticker",
        "locationMessage" | "liveLocationMessage" => "location",
        "contactMessage" => "vcard",
        "contactsArrayMessage" => "multi_vcard",
        "poll" => "poll_creation",
        "undecryptable" => "ciphertext",
        other => other,
    }
    .to_owned()
}

/// `15551234567@s.whatsapp.net` (or `15551234567:3@...`) → `15551234567@c.us`.
pub(crate) fn c_us(jid: &str) -> String {
    match jid.split_once('@') {
        Some((user, "s.whatsapp.net")) => {
            let user = user.split(':').next().unwrap_or(user);
            format!("{user}@c.us")
        }
        _ => jid.to_owned(),
    }
}

/// Digits of a user or device JID on the phone-number server, else "".
pub(crate) fn phone_of_jid(jid: &str) -> String {
    match jid.split_once('@') {
        Some((user, "s.whatsapp.net")) => user.split(':').next().unwrap_or(user).to_owned(),
        _ => String::new(),
    }
}

fn user_jid_of_phone(phone: &str, fallback_jid: &str) -> String {
    if phone.is_empty() {
        fallback_jid.to_owned()
    } else {
        format!("{phone}@s.whatsapp.net")
    }
}

/// The sender's phone digits, from the event or its JID.
pub(crate) fn sender_number(msg: &MessageEvent) -> String {
    if !msg.sender_phone.is_empty() {
        return msg.sender_phone.clone();
    }
    let from_sender = phone_of_jid(&msg.sender);
    if from_sender.is_empty() {
        phone_of_jid(&msg.chat)
    } else {
        from_sender
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::gateway::QrEvent;

    fn ts(s: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp {
            seconds: s,
            nanos: 0,
        })
    }

    fn all_targets() -> Targets {
        Targets {
            venom: Some("http://h/venom".into()),
            wwebjs: Some("http://h/wweb".into()),
            wwebjs_hook: Some(SessionHook {
                url: "http://h/hook".into(),
                events: vec!["message-from-me".into()],
            }),
            qr_backend: Some("http://h/be/".into()),
            baileys: Some("http://h/bws".into()),
        }
    }

    fn incoming() -> Event {
        Event {
            cursor: 9,
            session_id: "s1".into(),
            seq: 3,
            timestamp: ts(1_705_314_600),
            payload: Some(Payload::Message(MessageEvent {
                id: "3EB0AA".into(),
                chat: "5219876543210@s.whatsapp.net".into(),
                sender: "5219876543210:0@s.whatsapp.net".into(),
                sender_phone: "5219876543210".into(),
                push_name: "Ana".into(),
                timestamp: ts(1_705_314_600),
                from_me: false,
                text: "Hola".into(),
                r#type: "text".into(),
                offline: false,
                error: String::new(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn an_incoming_text_in_every_format() {
        let mut flag = false;
        let out = deliveries(
            &incoming(),
            &all_targets(),
            &WwebjsMedia::default(),
            &mut flag,
        );
        let urls: Vec<&str> = out.iter().map(|d| d.url.as_str()).collect();
        // The hook filters on message-from-me only: no delivery there.
        assert_eq!(
            urls,
            [
                "http://h/venom",
                "http://h/wweb",
                "http://h/be/whatsapp-qr/incoming",
                "http://h/bws"
            ]
        );
        assert_eq!(
            out[0].body,
            json!({"event":"MESSAGES_UPSERT","instance":"s1","data":{
                "key":{"remoteJid":"5219876543210@s.whatsapp.net","id":"3EB0AA","fromMe":false},
                "message":{"conversation":"Hola"},"messageType":"conversation",
                "pushName":"Ana","messageTimestamp":1_705_314_600}})
        );
        assert_eq!(
            out[1].body,
            json!({"id":"3EB0AA","sessionId":"s1","from":"5219876543210@c.us","body":"Hola",
                "type":"chat","timestamp":1_705_314_600,
                "contact":{"name":"Ana","number":"5219876543210"},"media":null})
        );
        assert_eq!(
            out[2].body,
            json!({"sessionId":"s1","from":"5219876543210","message":"Hola",
                "timestamp":"2024-01-15T10:30:00.000Z","messageId":"3EB0AA"})
        );
        assert_eq!(out[3].body["event"], "message");
        assert_eq!(out[3].body["data"]["from"], "5219876543210");
    }

    /// What the gateway emits after the server acked a text sent through
    /// `Send`: the same shape as an incoming message, `from_me` set, the
    /// chat being the recipient and the sender this account's device.
    fn sent_through_the_api() -> Event {
        Event {
            cursor: 12,
            session_id: "s1".into(),
            seq: 5,
            timestamp: ts(1_705_314_660),
            payload: Some(Payload::Message(MessageEvent {
                id: "3EB0BB".into(),
                chat: "5219876543210@s.whatsapp.net".into(),
                sender: "15551234567:3@s.whatsapp.net".into(),
                sender_phone: "15551234567".into(),
                push_name: "Owner".into(),
                timestamp: ts(1_705_314_660),
                from_me: true,
                text: "Hola desde la API".into(),
                r#type: "text".into(),
                offline: false,
                error: String::new(),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_text_sent_through_the_api_in_every_format() {
        let mut flag = false;
        let out = deliveries(
            &sent_through_the_api(),
            &all_targets(),
            &WwebjsMedia::default(),
            &mut flag,
        );
        let urls: Vec<&str> = out.iter().map(|d| d.url.as_str()).collect();
        // The global whatsapp-web.js webhook and the QR Service's /incoming
        // carry received messages only.
        assert_eq!(urls, ["http://h/venom", "http://h/hook", "http://h/bws"]);
        assert_eq!(
            out[0].body["data"]["key"],
            json!({"remoteJid":"5219876543210@s.whatsapp.net","id":"3EB0BB","fromMe":true})
        );
        assert_eq!(out[1].name, "message-from-me");
        assert_eq!(
            out[1].body,
            json!({"event":"message-from-me","id":"3EB0BB","sessionId":"s1",
                "from":"15551234567@c.us","to":"5219876543210@c.us","fromMe":true,
                "body":"Hola desde la API","type":"chat","timestamp":1_705_314_660,
                "contact":{"name":"Owner","number":"15551234567"},"media":null})
        );
        assert_eq!(out[2].body["data"]["from_me"], true);
        assert_eq!(out[2].body["data"]["chat"], "5219876543210@s.whatsapp.net");

        // A hook that asked for received messages only gets nothing.
        let mut targets = all_targets();
        targets.wwebjs_hook = Some(SessionHook {
            url: "http://h/hook".into(),
            events: vec!["message-received".into()],
        });
        let out = deliveries(
            &sent_through_the_api(),
            &targets,
            &WwebjsMedia::default(),
            &mut flag,
        );
        assert!(out.iter().all(|d| d.url != "http://h/hook"));
        // `all` (the default) includes it.
        targets.wwebjs_hook = Some(SessionHook {
            url: "http://h/hook".into(),
            events: vec!["all".into()],
        });
        let out = deliveries(
            &sent_through_the_api(),
            &targets,
            &WwebjsMedia::default(),
            &mut flag,
        );
        assert!(out.iter().any(|d| d.name == "message-from-me"));
    }

    #[test]
    fn venom_announces_qr_ready_once_per_pairing() {
        let qr = |cursor| Event {
            cursor,
            session_id: "s1".into(),
            payload: Some(Payload::Qr(QrEvent {
                qr: "2@ref,a,b,c".into(),
                expires_at: None,
            })),
            ..Event::default()
        };
        let targets = Targets {
            venom: Some("http://h/v".into()),
            ..Targets::default()
        };
        let mut flag = false;
        let first: Vec<&str> = deliveries(&qr(1), &targets, &WwebjsMedia::default(), &mut flag)
            .iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(first, ["CONNECTION_UPDATE", "QR_CODE"]);
        let second = deliveries(&qr(2), &targets, &WwebjsMedia::default(), &mut flag);
        assert_eq!(second.len(), 1);
        assert!(
            second[0].body["data"]["qr"]
                .as_str()
                .is_some_and(|q| q.starts_with("iVBOR")),
            "bare base64 of a PNG"
        );
        let open = Event {
            cursor: 3,
            session_id: "s1".into(),
            payload: Some(Payload::Connection(ConnectionEvent {
                state: SessionState::Connected as i32,
                ..ConnectionEvent::default()
            })),
            ..Event::default()
        };
        let out = deliveries(&open, &targets, &WwebjsMedia::default(), &mut flag);
        assert_eq!(out[0].body["data"], json!({"state": "open"}));
        assert!(!flag);
    }

    #[test]
    fn locations_cards_and_polls_in_the_documented_places() {
        use crate::proto::gateway::{ContactCard, Contacts, Location, Poll};
        let with = |kind: &str, fill: &dyn Fn(&mut MessageEvent)| {
            let mut event = incoming();
            if let Some(Payload::Message(m)) = event.payload.as_mut() {
                m.r#type = kind.into();
                m.text = String::new();
                fill(m);
            }
            let mut flag = false;
            deliveries(&event, &all_targets(), &WwebjsMedia::default(), &mut flag)
        };
        let out = with("locationMessage", &|m| {
            m.location = Some(Location {
                latitude: 19.43,
                longitude: -99.13,
                name: "Zócalo".into(),
                ..Default::default()
            });
        });
        assert_eq!(out[0].body["data"]["messageType"], "locationMessage");
        assert_eq!(
            out[0].body["data"]["message"],
            json!({"locationMessage":{"degreesLatitude":19.43,"degreesLongitude":-99.13,"name":"Zócalo"}})
        );
        assert_eq!(
            (&out[1].body["type"], &out[1].body["body"]),
            (&json!("location"), &json!(""))
        );
        let vcard = "BEGIN:VCARD\nVERSION:3.0\nFN:Ana\nEND:VCARD";
        let out = with("contactMessage", &|m| {
            m.contacts = Some(Contacts {
                display_name: String::new(),
                cards: vec![ContactCard {
                    display_name: "Ana".into(),
                    vcard: vcard.into(),
                }],
            });
        });
        assert_eq!(
            out[0].body["data"]["message"],
            json!({"contactMessage":{"displayName":"Ana","vcard":vcard}})
        );
        assert_eq!(
            (&out[1].body["type"], &out[1].body["body"]),
            (&json!("vcard"), &json!(vcard))
        );
        let out = with("poll", &|m| {
            m.poll = Some(Poll {
                name: "¿Comida?".into(),
                options: vec!["tacos".into(), "sopa".into()],
                selectable_count: 1,
            });
        });
        assert_eq!(out[0].body["data"]["messageType"], "pollCreationMessageV3");
        assert_eq!(
            out[0].body["data"]["message"]["pollCreationMessageV3"]["options"][1],
            json!({"optionName":"sopa"})
        );
        assert_eq!(
            (&out[1].body["type"], &out[1].body["body"]),
            (&json!("poll_creation"), &json!("¿Comida?"))
        );
        // The QR Service's /incoming carries texts only.
        assert!(out.iter().all(|d| !d.url.ends_with("/incoming")));
    }

    #[test]
    fn jids() {
        assert_eq!(c_us("15551234567:3@s.whatsapp.net"), "15551234567@c.us");
        assert_eq!(c_us("123-456@g.us"), "123-456@g.us");
        assert_eq!(phone_of_jid("15551234567:3@s.whatsapp.net"), "15551234567");
        assert_eq!(phone_of_jid("abc@lid"), "");
    }
}
