//! Sends to a group through every dialect: wherever a Node gateway's
//! recipient field can name a group (`…@g.us`, or the bare group id), the
//! text goes to the group and a member's phone reads it there.

use serde_json::json;

use crate::common::*;
use wagate_rest::proto::gateway::{event, InitRequest, SessionState};
use wagate_rest::proto::sim::CreateGroupRequest;
use wagate_rest::Dialect;

const OWNER: &str = "+15551237001";
const MEMBER: &str = "+15551237002";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dialect_sends_to_a_group() {
    let gw = Gateway::start().await;
    gw.create_account(MEMBER, "Member").await;
    let id = "grp";
    let mut events = gw.follow(id).await;
    gw.grpc
        .clone()
        .init(InitRequest {
            session_id: id.into(),
            ..Default::default()
        })
        .await
        .expect("Init");
    let qr = events.qr().await;
    gw.scan(OWNER, &qr).await;
    events.state(SessionState::Connected).await;
    let group = gw
        .sim
        .clone()
        .create_group(CreateGroupRequest {
            phone: MEMBER.into(),
            subject: "Shim".into(),
            participants: vec![OWNER.into()],
            lid_addressed: false,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    let bare = group.trim_end_matches("@g.us").to_owned();
    assert!(bare.len() > 15, "a group id, not a phone number: {bare}");

    let cases = [
        (Dialect::Venom, "/messages", "to", group.clone()),
        (Dialect::Venom, "/messages", "to", bare.clone()),
        (
            Dialect::Wwebjs,
            "/api/send-message",
            "number",
            group.clone(),
        ),
        (Dialect::Wwebjs, "/api/send-message", "number", bare.clone()),
        (Dialect::QrService, "/send", "to", group.clone()),
        (Dialect::QrService, "/send", "to", bare.clone()),
        (
            Dialect::BaileysWs,
            "/sessions/grp/send",
            "number",
            group.clone(),
        ),
        (
            Dialect::BaileysWs,
            "/sessions/grp/send",
            "number",
            bare.clone(),
        ),
    ];
    for (n, (dialect, path, field, to)) in cases.into_iter().enumerate() {
        let mut cfg = gw.shim_config(&format!("shim-{n}"));
        cfg.dialect = dialect;
        cfg.api_key = Some(KEY.into());
        let shim = start_shim(cfg).await;
        let text = format!("to the group, case {n}");
        let mut body = json!({"sessionId": id, "message": text});
        body[field] = json!(to);
        let (st, sent) = shim.post_key(path, body).await;
        assert_eq!(st, 200, "{dialect:?} {field}={to}: {sent}");
        let message_id = sent["messageId"]
            .as_str()
            .or(sent["message_id"].as_str())
            .unwrap_or_else(|| panic!("no message id in {sent}"))
            .to_owned();
        let own = events
            .until(
                "our own message",
                |e| matches!(&e.payload, Some(event::Payload::Message(m)) if m.id == message_id),
            )
            .await;
        let Some(event::Payload::Message(own)) = own.payload else {
            unreachable!("matched a message")
        };
        assert_eq!(own.chat, group, "{dialect:?} {field}={to}");
        events.delivered(&message_id).await;
        let read = gw.inbox_message(MEMBER, &text).await;
        assert_eq!(read.chat, group, "{dialect:?} {field}={to}");
        shim.stop().await;
    }
    gw.stop().await;
}
