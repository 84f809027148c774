//! Nothing personal at rest: after a real chat through the gateway (pairing
//! by QR, texts both ways with a virtual phone, a location and a poll from
//! it with the gateway's vote (the poll's options and secret are kept for
//! the votes), a QR left showing on a
//! second session), every file in the data dir is scanned for the texts,
//! both phone numbers, the push names, the caller's metadata and the QR
//! strings — while the gateway runs (database, WAL and shared memory as they
//! are mid-flight), after a clean shutdown and after a restart that reads
//! the sealed rows back. None may be found; the session ids, kept in clear
//! by design, must be (the scan works).

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use wagate::proto::gateway::{InitRequest, QrCodeRequest, ReceiptType, SendRequest, SessionState};
use wagate::proto::sim::{ScanQrRequest, SendTextRequest};

/// Session ids carry no personal data (callers are told so), and are the
/// positive control of the scan.
const CHAT: &str = "atrest-chat";
const WAITING: &str = "atrest-waiting";
const OWN: &str = "15550004444";
const BOB: &str = "15550005555";
const OWN_NAME: &str = "Ownerina Quixote";
const BOB_NAME: &str = "Bobrik Zanzibar";
const USER_ID: &str = "user-label-8d1f3c";
const TEXT_OUT: &str = "outbound words about the harbour";
const TEXT_IN: &str = "inbound words about the lighthouse";
const TEXT_COPY: &str = "own phone words about the orchard";
const PLACE: &str = "Quayside Bakery Marisol";
const QUESTION: &str = "Which ferry to Wyvernholm?";
const OPTIONS: [&str; 2] = ["dawn ferry Petrichor", "dusk ferry Sorrelwick"];

/// Names of the files under `dir` (recursively) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list data dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            // A file may vanish between listing and reading (a WAL
            // truncated by a checkpoint): nothing to scan then.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits.sort();
    hits
}

/// Asserts that every control is found and no needle is.
fn scan(dir: &Path, when: &str, needles: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .expect("list data dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    for control in [CHAT, WAITING] {
        assert!(
            !files_containing(dir, control.as_bytes()).is_empty(),
            "{when}: the scan does not see session id {control} in {files:?}"
        );
    }
    let mut found = Vec::new();
    for (what, needle) in needles {
        let hits = files_containing(dir, needle);
        if !hits.is_empty() {
            found.push(format!("{what} in {hits:?}"));
        }
    }
    assert!(found.is_empty(), "{when}: found in clear: {found:#?}");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_leaves_nothing_personal_in_clear_in_the_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;

    // Pair by QR, with caller metadata on the session.
    let mut events = events_after(&mut client, CHAT, 0).await;
    client
        .init(InitRequest {
            session_id: CHAT.into(),
            metadata: HashMap::from([("user_id".to_owned(), USER_ID.to_owned())]),
            ..Default::default()
        })
        .await
        .expect("Init");
    let (qr_event, _) = wait_for(&mut events, "a QR event", |e| qr_of(e).is_some()).await;
    let mut qrs = vec![qr_of(&qr_event).expect("qr").to_owned()];
    let device = sim
        .control
        .scan_qr(ScanQrRequest {
            phone: OWN.into(),
            qr: qrs[0].clone(),
            push_name: OWN_NAME.into(),
        })
        .await
        .expect("ScanQr")
        .into_inner()
        .device_jid;
    wait_for(&mut events, "CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    let status = client
        .status(wagate::proto::gateway::StatusRequest {
            session_id: CHAT.into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert!(status.jid.contains(OWN), "{status:?}");

    // Texts both ways, and a copy of one sent from our own phone.
    create_account(&mut sim.control, BOB, BOB_NAME).await;
    let sent = client
        .send(SendRequest {
            session_id: CHAT.into(),
            to: format!("+{BOB}"),
            text: TEXT_OUT.into(),
            idempotency_key: "atrest-key-1".into(),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner();
    wait_for(&mut events, "the delivery receipt", |e| {
        receipt_of(e).is_some_and(|r| {
            r.message_ids.contains(&sent.message_id) && r.r#type == ReceiptType::Delivered as i32
        })
    })
    .await;
    for (from, to, text) in [(BOB, OWN, TEXT_IN), (OWN, BOB, TEXT_COPY)] {
        let id = sim
            .control
            .send_text(SendTextRequest {
                from_phone: from.into(),
                to: to.into(),
                text: text.into(),
                from_lid: false,
            })
            .await
            .expect("SendText")
            .into_inner()
            .message_id;
        let (event, _) = wait_for(&mut events, "the message event", |e| {
            message_of(e).is_some_and(|m| m.id == id)
        })
        .await;
        assert_eq!(message_of(&event).expect("message").text, text);
    }
    let place = sim
        .control
        .send_location(wagate::proto::sim::SendLocationRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            location: Some(wagate::proto::sim::Location {
                latitude: 12.5,
                longitude: -7.25,
                name: PLACE.into(),
                ..Default::default()
            }),
        })
        .await
        .expect("SendLocation")
        .into_inner()
        .message_id;
    wait_for(&mut events, "the location", |e| {
        message_of(e).is_some_and(|m| m.id == place)
    })
    .await;
    let poll = sim
        .control
        .send_poll(wagate::proto::sim::SendPollRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            poll: Some(wagate::proto::sim::Poll {
                name: QUESTION.into(),
                options: OPTIONS.iter().map(|o| (*o).to_owned()).collect(),
                selectable_count: 1,
            }),
        })
        .await
        .expect("SendPoll")
        .into_inner()
        .message_id;
    wait_for(&mut events, "the poll", |e| {
        message_of(e).is_some_and(|m| m.id == poll)
    })
    .await;
    let vote = client
        .send(SendRequest {
            session_id: CHAT.into(),
            to: format!("+{BOB}"),
            action: Some(wagate::proto::gateway::send_request::Action::PollVote(
                wagate::proto::gateway::PollVote {
                    poll: Some(wagate::proto::gateway::MessageRef {
                        id: poll.clone(),
                        from_me: false,
                        sender: String::new(),
                    }),
                    options: vec![OPTIONS[1].into()],
                },
            )),
            ..Default::default()
        })
        .await
        .expect("vote")
        .into_inner()
        .message_id;
    let (event, _) = wait_for(&mut events, "the own vote", |e| {
        message_of(e).is_some_and(|m| m.id == vote)
    })
    .await;
    let cursor = event.cursor;

    // A second session shows a QR nobody scans.
    let mut waiting = events_after(&mut client, WAITING, 0).await;
    client
        .init(InitRequest {
            session_id: WAITING.into(),
            ..Default::default()
        })
        .await
        .expect("Init");
    let (qr_event, _) = wait_for(&mut waiting, "a QR event", |e| qr_of(e).is_some()).await;
    qrs.push(qr_of(&qr_event).expect("qr").to_owned());
    let shown = client
        .qr_code(QrCodeRequest {
            session_id: WAITING.into(),
        })
        .await
        .expect("QrCode")
        .into_inner();
    qrs.push(shown.qr);

    let mut needles: Vec<(String, Vec<u8>)> = vec![
        ("own phone number".into(), OWN.into()),
        ("contact phone number".into(), BOB.into()),
        ("own device JID".into(), device.clone().into()),
        ("own push name".into(), OWN_NAME.into()),
        ("contact push name".into(), BOB_NAME.into()),
        ("metadata value".into(), USER_ID.into()),
        ("idempotency key".into(), b"atrest-key-1".to_vec()),
        ("outbound text".into(), TEXT_OUT.into()),
        ("inbound text".into(), TEXT_IN.into()),
        ("own phone's text".into(), TEXT_COPY.into()),
        ("location name".into(), PLACE.into()),
        ("poll question".into(), QUESTION.into()),
        ("poll option".into(), OPTIONS[0].into()),
        ("voted option".into(), OPTIONS[1].into()),
    ];
    for qr in &qrs {
        needles.push((format!("QR {qr}"), qr.clone().into()));
        // Each part alone (ref, noise key, identity key, ADV secret).
        for part in qr.split(',').filter(|p| p.len() >= 16) {
            needles.push((format!("QR part {part}"), part.into()));
        }
    }

    let running = scan(dir.path(), "while running", &needles);
    assert!(
        running.iter().any(|f| f.ends_with("-wal")),
        "the WAL is scanned while running: {running:?}"
    );

    drop((events, waiting));
    gateway.shutdown().await;
    scan(dir.path(), "after shutdown", &needles);

    // What is sealed reads back: a restarted gateway resumes the session
    // with its JID and metadata, and writes nothing personal in clear.
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, CHAT, cursor).await;
    wait_for(&mut events, "CONNECTED after restart", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    let status = client
        .status(wagate::proto::gateway::StatusRequest {
            session_id: CHAT.into(),
        })
        .await
        .expect("Status")
        .into_inner();
    assert!(status.jid.contains(OWN), "{status:?}");
    assert_eq!(
        status.metadata.get("user_id").map(String::as_str),
        Some(USER_ID)
    );
    scan(dir.path(), "after a restart", &needles);
    drop(events);
    gateway.shutdown().await;
}
