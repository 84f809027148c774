//! Webhook delivery guarantees: a receiver down for a while gets every
//! event once it is back, in order; one receiver down does not hold back
//! another session's; 4xx answers are not retried (except 408 and 429);
//! a restarted shim resumes from its stored cursor with nothing lost and
//! nothing delivered twice.
//!
//! Events come from QR rotation with short QR lifetimes: each pairing
//! attempt shows six QR codes, then the session gives up (DISCONNECTED).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;

use crate::common::*;
use wagate_rest::proto::gateway::event::Payload;
use wagate_rest::proto::gateway::{Event, SessionState};
use wagate_rest::Dialect;

async fn fast_qr_gateway() -> Gateway {
    Gateway::start_with(|o| {
        o.timeouts.qr_first_ms = 300;
        o.timeouts.qr_next_ms = 80;
    })
    .await
}

/// Event ids (`cursor-part`) the Venom webhooks of these gateway events
/// must carry: the first QR of a pairing also announces `qr_ready`.
fn venom_ids(events: &[Event]) -> Vec<String> {
    let mut ids = Vec::new();
    let mut announced = false;
    for e in events {
        match &e.payload {
            Some(Payload::Qr(_)) => {
                let parts = if announced { 1 } else { 2 };
                announced = true;
                ids.extend((0..parts).map(|p| format!("{}-{p}", e.cursor)));
            }
            Some(Payload::Connection(_)) => {
                announced = false;
                ids.push(format!("{}-0", e.cursor));
            }
            _ => {}
        }
    }
    ids
}

fn accepted_ids(r: &Receiver, session: &str) -> Vec<String> {
    r.accepted()
        .into_iter()
        .filter(|h| h.header("x-wagate-session") == session)
        .map(Hook::event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_every_event_in_order() {
    let gw = fast_qr_gateway().await;
    let mut down = Receiver::start().await;
    let mut up = Receiver::start().await;
    down.down().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    // A short queue: the session whose receiver is down must catch up from
    // the gateway's log.
    cfg.webhook_queue = 2;
    let shim = start_shim(cfg).await;
    let mut ev1 = gw.follow("tenant-1").await;
    let mut ev2 = gw.follow("tenant-2").await;
    for (id, url) in [("tenant-1", down.url("/a")), ("tenant-2", up.url("/b"))] {
        let (st, body) = shim
            .post("/sessions", json!({"sessionId": id, "webhookUrl": url}))
            .await;
        assert_eq!(st, 200, "{body}");
    }
    ev1.state(SessionState::Disconnected).await;
    ev2.state(SessionState::Disconnected).await;

    // The other tenant's webhooks all arrive while the first receiver is down.
    up.until("tenant-2 close", |h| h.body["data"]["state"] == "close")
        .await;
    assert_eq!(accepted_ids(&up, "tenant-2"), venom_ids(&ev2.seen));
    assert_eq!(up.accepted().len(), 8, "qr_ready, six QR codes, close");

    down.up().await;
    down.until("tenant-1 close", |h| h.body["data"]["state"] == "close")
        .await;
    let got = accepted_ids(&down, "tenant-1");
    assert_eq!(got, venom_ids(&ev1.seen), "every event, in order, once");
    let names: Vec<String> = down
        .accepted()
        .iter()
        .map(|h| {
            format!(
                "{}:{}",
                h.body["event"].as_str().unwrap_or(""),
                h.body["data"]["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        names.first().map(String::as_str),
        Some("CONNECTION_UPDATE:qr_ready")
    );
    assert_eq!(names.iter().filter(|n| n.starts_with("QR_CODE")).count(), 6);
    assert_eq!(
        names.last().map(String::as_str),
        Some("CONNECTION_UPDATE:close")
    );
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_not_retried_but_408_and_429_are() {
    let gw = fast_qr_gateway().await;
    let mut hooks = Receiver::start().await;
    hooks.set_status(404);
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::QrService;
    cfg.backend_url = Some(hooks.url("/backend"));
    let shim = start_shim(cfg).await;
    let mut events = gw.follow("qs").await;
    let (st, _) = shim.post("/init", json!({"sessionId": "qs"})).await;
    assert_eq!(st, 200);
    events.state(SessionState::Disconnected).await;
    // Six QR webhooks and a disconnected one, each tried once: the worker
    // moves to the next only when the previous is finished.
    loop {
        let h = hooks.next("the disconnected webhook").await;
        if h.body["type"] == "disconnected" {
            break;
        }
    }
    let ids: Vec<String> = hooks.log.iter().map(Hook::event_id).collect();
    assert_eq!(ids.len(), 7, "{ids:?}");
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        7,
        "no retries on 404: {ids:?}"
    );
    assert!(
        hooks
            .log
            .iter()
            .all(|h| h.header("x-wagate-signature-256").is_empty()),
        "no secret, no signature"
    );

    // A new pairing attempt: its first webhook is retried through 429, 408
    // and 503, then delivered, and the rest follow in order.
    hooks.log.clear();
    hooks.set_status(429);
    let (st, _) = shim.post("/init", json!({"sessionId": "qs"})).await;
    assert_eq!(st, 200);
    let first = hooks.next("first attempt").await;
    let again = hooks.next("retry after 429").await;
    assert_eq!(again.event_id(), first.event_id());
    hooks.set_status(408);
    let again = hooks.next("retry after 408").await;
    assert_eq!(again.event_id(), first.event_id());
    hooks.set_status(503);
    let again = hooks.next("retry after 503").await;
    assert_eq!(again.event_id(), first.event_id());
    let attempts: Vec<u32> = hooks
        .log
        .iter()
        .map(|h| h.header("x-wagate-attempt").parse().unwrap_or(0))
        .collect();
    assert!(
        attempts.windows(2).all(|w| w[1] > w[0]),
        "attempt numbers grow: {attempts:?}"
    );
    hooks.set_status(200);
    hooks
        .until("second disconnected", |h| h.body["type"] == "disconnected")
        .await;
    let delivered: Vec<String> = hooks.accepted().into_iter().map(Hook::event_id).collect();
    assert_eq!(delivered.len(), 7, "{delivered:?}");
    assert_eq!(delivered[0], first.event_id());
    let cursors: Vec<u64> = delivered.iter().map(|id| id_parts(id).0).collect();
    assert!(
        cursors.windows(2).all(|w| w[1] > w[0]),
        "in order: {cursors:?}"
    );
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_shim_resumes_from_its_stored_cursor() {
    let gw = fast_qr_gateway().await;
    let mut hooks = Receiver::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Venom;
    cfg.webhook_secret = Some("k".into());
    let shim = start_shim(cfg.clone()).await;
    let mut events = gw.follow("s1").await;
    let (st, _) = shim
        .post(
            "/sessions",
            json!({"sessionId": "s1", "webhookUrl": hooks.url("/hook")}),
        )
        .await;
    assert_eq!(st, 200);
    hooks
        .until("the first QR", |h| h.body["event"] == "QR_CODE")
        .await;
    // The receiver starts failing; the shim stops in the middle of retrying.
    hooks.set_status(503);
    hooks.next("a failing attempt").await;
    shim.stop().await;
    let before = hooks.accepted().len();
    assert!(before >= 2, "qr_ready and the first QR were delivered");

    // The gateway goes on while the shim is down.
    events.state(SessionState::Disconnected).await;
    hooks.set_status(200);
    let shim = start_shim(cfg).await;
    hooks
        .until("close", |h| h.body["data"]["state"] == "close")
        .await;
    let got = accepted_ids(&hooks, "s1");
    assert_eq!(
        got,
        venom_ids(&events.seen),
        "nothing lost, nothing twice, in order"
    );
    assert!(hooks.accepted().iter().all(|h| signature_ok(h, "k")));

    // Nothing more is owed: a session created now is the next thing sent.
    let (st, _) = shim
        .post(
            "/sessions",
            json!({"sessionId": "s2", "webhookUrl": hooks.url("/hook")}),
        )
        .await;
    assert_eq!(st, 200);
    let next = hooks.until("s2's first webhook", |_| true).await;
    assert_eq!(next.header("x-wagate-session"), "s2");
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_hangs_is_cut_by_the_attempt_timeout_and_retried() {
    use tokio::io::AsyncReadExt;
    let gw = fast_qr_gateway().await;
    // A receiver that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let (tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = silent.accept().await else {
                return;
            };
            let _ = tx.send(());
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::QrService;
    cfg.backend_url = Some(format!("http://{silent_addr}"));
    cfg.webhook_timeout_ms = 100;
    let shim = start_shim(cfg).await;
    let (st, _) = shim.post("/init", json!({"sessionId": "t1"})).await;
    assert_eq!(st, 200);
    // Three connections: the first attempt and two retries after timeouts.
    for n in 1..=3 {
        tokio::time::timeout(Duration::from_secs(10), accepted.recv())
            .await
            .unwrap_or_else(|_| panic!("attempt {n} never came"))
            .expect("listener alive");
    }
    shim.stop().await;
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_received_while_the_receiver_is_down_arrive_in_order() {
    let gw = Gateway::start().await;
    let mut hooks = Receiver::start().await;
    let mut cfg = gw.shim_config("shim");
    cfg.dialect = Dialect::Wwebjs;
    cfg.webhook_url = Some(hooks.url("/global"));
    cfg.webhook_queue = 4;
    let shim = start_shim(cfg).await;
    gw.create_account("+15550001111", "Peer").await;
    let mut events = gw.follow("inbox").await;
    let (st, _) = shim
        .post("/api/start-session", json!({"sessionId": "inbox"}))
        .await;
    assert_eq!(st, 200);
    let qr = events.qr().await;
    gw.scan("+15551234567", &qr).await;
    events.state(SessionState::Connected).await;

    hooks.down().await;
    let mut sent = Vec::new();
    for n in 0..10 {
        sent.push(
            gw.send_from_phone("+15550001111", "+15551234567", &format!("text {n}"))
                .await,
        );
    }
    for id in &sent {
        events
            .until(
                "the text at the gateway",
                |e| matches!(&e.payload, Some(Payload::Message(m)) if &m.id == id),
            )
            .await;
    }
    hooks.up().await;
    for (n, id) in sent.iter().enumerate() {
        let h = hooks.until("a text webhook", |h| h.path == "/global").await;
        assert_eq!(h.body["id"], id.as_str(), "webhook {n} out of order");
        assert_eq!(h.body["body"], format!("text {n}"));
    }
    let ids: Vec<String> = hooks.accepted().into_iter().map(Hook::event_id).collect();
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        ids.len(),
        "none twice: {ids:?}"
    );
    shim.stop().await;
    gw.stop().await;
}
