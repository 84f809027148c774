//! Pairing by phone number (link code) end to end: Init with a phone number
//! gives the code (also from QrCode and as a LINK_CODE event), the
//! simulator's phone is given a wrong code, then the right one, and the
//! paired session exchanges texts; an expired code is refused, and a code
//! nobody enters ends the session's pairing.

mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use wagate::proto::gateway::{
    event, InitRequest, PairingMethod, QrCodeRequest, SendRequest, SessionState, StatusRequest,
};
use wagate::proto::sim::{EnterLinkCodeRequest, SendTextRequest};

const OWN: &str = "+15550004444";
const BOB: &str = "+15550005555";
const BOB_JID: &str = "15550005555@s.whatsapp.net";

fn link_code_of(event: &wagate::proto::gateway::Event) -> Option<&str> {
    match &event.payload {
        Some(event::Payload::LinkCode(c)) => Some(&c.code),
        _ => None,
    }
}

fn enter(phone: &str, code: &str) -> EnterLinkCodeRequest {
    EnterLinkCodeRequest {
        phone: phone.into(),
        code: code.into(),
        push_name: "Own Phone".into(),
    }
}

/// A well-formed code that is not `code`.
fn other_code(code: &str) -> String {
    let wrong = if code.starts_with('1') {
        "2222-2222"
    } else {
        "1111-1111"
    };
    assert_ne!(wrong, code);
    wrong.to_owned()
}

async fn init_link_code(
    client: &mut wagate::proto::gateway::gateway_client::GatewayClient<tonic::transport::Channel>,
    session: &str,
    phone: &str,
) -> wagate::proto::gateway::Session {
    client
        .init(InitRequest {
            session_id: session.into(),
            phone_number: phone.into(),
            ..Default::default()
        })
        .await
        .expect("Init with a phone number")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_by_link_code_then_chats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;

    let bad = client
        .init(InitRequest {
            session_id: "lc".into(),
            phone_number: "12ab".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad phone number is refused");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("phone_number"), "{}", bad.message());

    let mut events = events_after(&mut client, "lc", 0).await;
    let session = init_link_code(&mut client, "lc", OWN).await;
    assert_eq!(session.pairing, PairingMethod::LinkCode as i32);
    assert_eq!(session.state, SessionState::QrReady as i32);
    let code = session.link_code.clone();
    assert_eq!(code.len(), 9, "{code}");
    assert_eq!(code.as_bytes()[4], b'-');
    assert!(session.link_code_expires_at.is_some());

    // The same code from QrCode, Status, a repeated Init and the event.
    let qr = client
        .qr_code(QrCodeRequest {
            session_id: "lc".into(),
        })
        .await
        .expect("QrCode")
        .into_inner();
    assert_eq!(qr.pairing, PairingMethod::LinkCode as i32);
    assert_eq!(qr.link_code, code);
    assert!(qr.qr.is_empty() && qr.png_data_url.is_empty());
    assert_eq!(qr.expires_at, session.link_code_expires_at);
    let again = init_link_code(&mut client, "lc", OWN).await;
    assert_eq!(again.link_code, code, "Init is idempotent");
    let (event, before) = wait_for(&mut events, "a LINK_CODE event", |e| {
        link_code_of(e).is_some()
    })
    .await;
    assert_eq!(link_code_of(&event), Some(code.as_str()));
    assert!(before.iter().all(|e| qr_of(e).is_none()), "no QR codes");

    // Nobody waits for a code for another number.
    let err = sim
        .control
        .enter_link_code(enter(BOB, &code))
        .await
        .expect_err("no pending code");
    assert_eq!(err.code(), Code::NotFound);
    let err = sim
        .control
        .enter_link_code(enter(OWN, "ABC"))
        .await
        .expect_err("malformed code");
    assert_eq!(err.code(), Code::InvalidArgument);
    // A wrong code: the phone cannot open the companion's key bundle, and
    // nothing is paired; the session keeps waiting with the same code.
    let err = sim
        .control
        .enter_link_code(enter(OWN, &other_code(&code)))
        .await
        .expect_err("wrong code");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("wrong link code"),
        "{}",
        err.message()
    );
    let status = client
        .status(StatusRequest {
            session_id: "lc".into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(status.state, SessionState::QrReady as i32);
    assert_eq!(status.link_code, code);
    assert!(status.jid.is_empty());

    // The right code (typed without the dash, in lower case).
    let typed = code.replace('-', "").to_lowercase();
    let device = sim
        .control
        .enter_link_code(enter(OWN, &typed))
        .await
        .expect("EnterLinkCode")
        .into_inner()
        .device_jid;
    assert!(device.starts_with("15550004444:"), "{device}");
    let (connected, _) = wait_for(&mut events, "CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    assert_eq!(connection(&connected).expect("connection").jid, device);
    let status = client
        .status(StatusRequest {
            session_id: "lc".into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert_eq!(status.phone, "15550004444");
    assert!(status.link_code.is_empty());

    // Texts both ways.
    create_account(&mut sim.control, BOB, "Bob").await;
    let sent = client
        .send(SendRequest {
            session_id: "lc".into(),
            to: BOB.into(),
            text: "linked by code".into(),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner();
    assert!(!sent.message_id.is_empty());
    // The server's ack comes before the phone has read it: its delivery
    // receipt says it has.
    delivered_to(
        &mut events,
        &sent.message_id,
        &[BOB.trim_start_matches('+')],
    )
    .await;
    let own_jid = "15550004444@s.whatsapp.net";
    let texts = chat_texts(&mut sim.control, BOB, own_jid).await;
    assert_eq!(texts, vec!["linked by code".to_owned()]);
    let id = sim
        .control
        .send_text(SendTextRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            text: "hi there".into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id;
    let (incoming, _) = wait_for(&mut events, "the phone's text", |e| {
        message_of(e).is_some_and(|m| m.id == id)
    })
    .await;
    let incoming = message_of(&incoming).expect("message");
    assert_eq!(incoming.text, "hi there");
    assert_eq!(incoming.chat, BOB_JID);
    gateway.shutdown().await;
    sim.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_link_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    // The simulator's codes expire at once: entering one is refused.
    sim.sim.set_link_code_ttl(Duration::ZERO);
    let mut opts = options(dir.path(), &sim.sim);
    // The gateway's pairing window: 5 s + 5 × 0.1 s (long enough for the
    // code to reach the simulator in a debug build).
    opts.timeouts.qr_first_ms = 5_000;
    opts.timeouts.qr_next_ms = 100;
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let mut events = events_after(&mut client, "late", 0).await;
    let session = init_link_code(&mut client, "late", OWN).await;
    let code = session.link_code;
    assert_eq!(code.len(), 9, "{code}");
    let err = sim
        .control
        .enter_link_code(enter(OWN, &code))
        .await
        .expect_err("expired code");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("expired"), "{}", err.message());
    // Spent: entering it again finds nothing.
    let err = sim
        .control
        .enter_link_code(enter(OWN, &code))
        .await
        .expect_err("spent code");
    assert_eq!(err.code(), Code::NotFound);

    // The gateway's own window closes: the session stops, with the reason.
    let (stopped, _) = wait_for(&mut events, "DISCONNECTED", |e| {
        is_state(e, SessionState::Disconnected)
    })
    .await;
    assert_eq!(
        connection(&stopped).expect("connection").reason,
        "link code not entered in time"
    );
    let err = client
        .qr_code(QrCodeRequest {
            session_id: "late".into(),
        })
        .await
        .expect_err("no code after it expired");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("link code"), "{}", err.message());
    gateway.shutdown().await;
    sim.sim.shutdown().await;
}
