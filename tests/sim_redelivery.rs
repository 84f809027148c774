//! The simulated server redelivers what a device never acknowledged: frames
//! to a gateway session are delayed past its keepalive deadline during a
//! stream of inbound texts, the connection dies and comes back, and every
//! text reaches the backend as exactly one message event.

mod common;

use std::collections::HashMap;

use common::*;
use wagate::proto::gateway::SessionState;
use wagate::proto::sim::{SendTextRequest, SendTextsRequest, SetDelayRequest};
use wagate::wa::conn::Timeouts;

const OWN: &str = "+15550003333";
const BOB: &str = "+15550004444";
const TEXTS: u32 = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_delayed_past_the_keepalive_deadline_arrive_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let mut opts = options(dir.path(), &sim.sim);
    // A short keepalive so the delay below kills the connection quickly.
    opts.timeouts = Timeouts {
        keepalive_min_ms: 200,
        keepalive_max_ms: 300,
        keepalive_deadline_ms: 600,
        ..Timeouts::default()
    };
    let gateway = start_gateway(opts).await;
    let mut client = client(gateway.addr).await;
    let (device, mut events) = pair_with(&mut sim.control, &mut client, "stream", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;
    // One text first, so the phone's Signal session is open and the stream
    // below is plain ratchet messages.
    let first = sim
        .control
        .send_text(SendTextRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            text: "hello".into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id;
    wait_for(&mut events, "the first text", |e| {
        message_of(e).is_some_and(|m| m.id == first)
    })
    .await;

    // Every frame to the session now waits well past its keepalive deadline.
    sim.control
        .set_delay(SetDelayRequest {
            jid: device.clone(),
            delay_ms: 1_500,
        })
        .await
        .expect("SetDelay");
    let mut control = sim.control.clone();
    let sending = tokio::spawn(async move {
        control
            .send_texts(SendTextsRequest {
                from_phone: BOB.into(),
                to: OWN.into(),
                count: TEXTS,
                text_prefix: "stream ".into(),
                per_second: 0,
            })
            .await
            .expect("SendTexts")
            .into_inner()
            .message_ids
    });
    let (_, seen) = wait_for(&mut events, "the connection to drop", |e| {
        connection(e).is_some_and(|c| c.state != SessionState::Connected as i32)
    })
    .await;
    sim.control
        .set_delay(SetDelayRequest {
            jid: device.clone(),
            delay_ms: 0,
        })
        .await
        .expect("SetDelay");
    let ids = sending.await.expect("sending task");
    assert_eq!(ids.len(), TEXTS as usize);

    // Everything up to a marker sent after the stream: the marker goes out
    // after every queued text was redelivered.
    let mut counts: HashMap<String, u32> = HashMap::new();
    let mut texts: HashMap<String, String> = HashMap::new();
    let mut offline = 0;
    for event in &seen {
        if let Some(m) = message_of(event) {
            *counts.entry(m.id.clone()).or_default() += 1;
            texts.insert(m.id.clone(), m.text.clone());
            offline += usize::from(m.offline);
        }
    }
    while ids.iter().any(|id| !counts.contains_key(id)) {
        let (event, _) = wait_for(&mut events, "the streamed texts", |e| {
            message_of(e).is_some()
        })
        .await;
        let m = message_of(&event).expect("message");
        *counts.entry(m.id.clone()).or_default() += 1;
        texts.insert(m.id.clone(), m.text.clone());
        offline += usize::from(m.offline);
    }
    let marker = sim
        .control
        .send_text(SendTextRequest {
            from_phone: BOB.into(),
            to: OWN.into(),
            text: "marker".into(),
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id;
    let (_, before) = wait_for(&mut events, "the marker", |e| {
        message_of(e).is_some_and(|m| m.id == marker)
    })
    .await;
    for event in &before {
        if let Some(m) = message_of(event) {
            *counts.entry(m.id.clone()).or_default() += 1;
        }
    }

    let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(missing.is_empty(), "never arrived: {missing:?}");
    let repeated: Vec<(&String, &u32)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "arrived more than once: {repeated:?}");
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(texts.get(id), Some(&format!("stream {n}")), "text of {id}");
    }
    assert_eq!(counts.len(), ids.len(), "only the streamed texts arrived");
    assert!(
        offline > 0,
        "the connection died with texts in flight, redelivered from the queue"
    );
    gateway.shutdown().await;
}
