//! Crash safety: the gateway process is killed with SIGKILL while texts are
//! reaching it, then restarted on the same data directory. Every text must
//! appear in `Events` exactly once: what was committed is never replayed as
//! new, and what was not committed is redelivered by the server because no
//! receipt went out for it. And Sends cut off by a kill, retried with their
//! idempotency keys, reach the recipient exactly once; those never retried
//! reach it at most once, and whatever reached it has its one event.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{SendRequest, SessionState};
use wagate::proto::sim::{InboxRequest, SendTextRequest};

const OWN: &str = "+15550003333";
const PEER: &str = "+15550004444";
const TEXTS: usize = 20;

struct Gateway {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Gateway {
    fn start(data: &std::path::Path, sim: &Sim) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wagate"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("WAGATE_WA_URL", sim.sim.ws_url())
            .env("WAGATE_WA_ROOT_KEY", hex::encode(sim.sim.root_public_key()))
            .env(
                "WAGATE_STORE_KEY",
                "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            )
            .env_remove("WAGATE_API_KEYS")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start wagate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("wagate announces its address")
                .expect("readable stdout");
            if let Some(addr) = line.strip_prefix("wagate listening on ") {
                break addr.parse().expect("socket address");
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Gateway { child, addr }
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown path runs.
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The peer's phone sends `text` to our account; returns its id.
async fn peer_sends(sim: &mut Sim, text: String) -> String {
    sim.control
        .send_text(SendTextRequest {
            from_phone: PEER.into(),
            to: OWN.into(),
            text,
            from_lid: false,
        })
        .await
        .expect("SendText")
        .into_inner()
        .message_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_messages_arrive_loses_nothing_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = Gateway::start(dir.path(), &sim);
    let mut client = client(gateway.addr).await;
    let (_, mut events) = pair_with(&mut sim.control, &mut client, "crash", OWN).await;
    create_account(&mut sim.control, PEER, "Peer").await;

    let mut ids = Vec::new();
    for n in 0..TEXTS {
        ids.push(peer_sends(&mut sim, format!("text {n}")).await);
        if n == 0 {
            // The first text has reached the gateway and is committed:
            // kill it while the others are still arriving.
            wait_for(&mut events, "the first message", |e| {
                message_of(e).is_some()
            })
            .await;
        }
        if n == 2 {
            drop(events);
            gateway.kill();
            break;
        }
    }
    // The rest are sent while the gateway is down.
    for n in ids.len()..TEXTS {
        ids.push(peer_sends(&mut sim, format!("text {n}")).await);
    }

    let gateway = Gateway::start(dir.path(), &sim);
    let mut client = common::client(gateway.addr).await;
    let mut events = events_after(&mut client, "crash", 0).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut texts: HashMap<String, String> = HashMap::new();
    let last = ids.last().cloned().expect("ids");
    wait_for(&mut events, "every text after the restart", |e| {
        if let Some(m) = message_of(e) {
            *counts.entry(m.id.clone()).or_default() += 1;
            texts.insert(m.id.clone(), m.text.clone());
        }
        ids.iter().all(|id| counts.contains_key(id))
    })
    .await;
    // A marker sent after everything: any late duplicate would precede it.
    let marker = peer_sends(&mut sim, "marker".to_owned()).await;
    wait_for(&mut events, "the marker", |e| {
        if let Some(m) = message_of(e) {
            *counts.entry(m.id.clone()).or_default() += 1;
            return m.id == marker;
        }
        false
    })
    .await;
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "text {n} ({id}) seen {:?} times",
            counts.get(id)
        );
        assert_eq!(texts.get(id), Some(&format!("text {n}")));
    }
    assert!(counts.contains_key(&last));
    drop(gateway);
}

/// Kill cycles of the loop test.
const KILLS: usize = 20;
/// Texts each way per cycle.
const PER_CYCLE: usize = 3;

/// Waits until the session's log holds `count` CONNECTED events.
async fn connected_times(client: &mut GatewayClient<tonic::transport::Channel>, count: usize) {
    let mut events = events_after(client, "loop", 0).await;
    let mut seen = 0;
    wait_for(&mut events, "CONNECTED after the restart", |e| {
        if is_state(e, SessionState::Connected) {
            seen += 1;
        }
        seen >= count
    })
    .await;
}

fn send_request(key: &str) -> SendRequest {
    SendRequest {
        session_id: "loop".into(),
        to: PEER.into(),
        text: format!("out {key}"),
        idempotency_key: key.to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twenty_times_during_texts_and_retried_sends_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = Gateway::start(dir.path(), &sim);
    let mut client = client(gateway.addr).await;
    let (_, events) = pair_with(&mut sim.control, &mut client, "loop", OWN).await;
    drop(events);
    create_account(&mut sim.control, PEER, "Peer").await;

    let mut inbound: Vec<String> = Vec::new();
    // Idempotency key → message id, once a Send answered.
    let mut confirmed: HashMap<String, String> = HashMap::new();
    let mut keys: Vec<String> = Vec::new();
    // Keys sent once and never retried: left to the gateway's own resend.
    let mut once: Vec<String> = Vec::new();
    let mut gateway = Some(gateway);
    // Sends whose answer a kill cut off: the ambiguous outcomes under test.
    let mut cut_off = 0;
    for cycle in 0..KILLS {
        let gw = match gateway.take() {
            Some(gw) => gw,
            None => Gateway::start(dir.path(), &sim),
        };
        let mut client = common::client(gw.addr).await;
        connected_times(&mut client, cycle + 1).await;
        // Inbound: the peer's phone sends while we work.
        for n in 0..PER_CYCLE {
            inbound.push(peer_sends(&mut sim, format!("in {cycle}.{n}")).await);
        }
        // Outbound: new keys, plus every key not yet confirmed.
        for n in 0..PER_CYCLE {
            keys.push(format!("k{cycle}.{n}"));
        }
        let mut pending: Vec<String> = keys
            .iter()
            .filter(|k| !confirmed.contains_key(*k))
            .cloned()
            .collect();
        once.push(format!("o{cycle}"));
        pending.extend(once.last().cloned());
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        for key in pending {
            let mut client = client.clone();
            let done = done_tx.clone();
            tokio::spawn(async move {
                let result = client.send(send_request(&key)).await;
                let _ = done.send((key, result.map(|r| r.into_inner().message_id)));
            });
        }
        drop(done_tx);
        // Kill as soon as the first Send answers: the others are in flight.
        if let Some((key, Ok(id))) = done_rx.recv().await {
            confirmed.insert(key, id);
        }
        gw.kill();
        while let Some((key, result)) = done_rx.recv().await {
            match result {
                Ok(id) => {
                    let first = confirmed.entry(key.clone()).or_insert_with(|| id.clone());
                    assert_eq!(first, &id, "{key} answered two ids");
                }
                Err(_) => cut_off += 1,
            }
        }
    }
    assert!(cut_off > 0, "no Send was cut off by a kill");
    eprintln!("{cut_off} Sends cut off by {KILLS} kills");

    // The last start: every Send retried until it answers.
    let gw = Gateway::start(dir.path(), &sim);
    let mut client = common::client(gw.addr).await;
    connected_times(&mut client, KILLS + 1).await;
    for key in &keys {
        let id = client
            .send(send_request(key))
            .await
            .expect("the retried Send succeeds")
            .into_inner()
            .message_id;
        let first = confirmed.entry(key.clone()).or_insert_with(|| id.clone());
        assert_eq!(first, &id, "{key} answered two ids");
    }
    // Every inbound text exactly once in the log, then a marker. (The
    // never-retried Sends written again at login went out before the
    // retried ones, so their acks are in the log before the marker.)
    let marker = peer_sends(&mut sim, "marker".to_owned()).await;
    let mut events = events_after(&mut client, "loop", 0).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut own: HashMap<String, usize> = HashMap::new();
    wait_for(&mut events, "the marker", |e| {
        if let Some(m) = message_of(e) {
            *counts.entry(m.id.clone()).or_default() += 1;
            if m.from_me {
                *own.entry(m.text.clone()).or_default() += 1;
            }
            return m.id == marker;
        }
        false
    })
    .await;
    for id in &inbound {
        assert_eq!(counts.get(id), Some(&1), "inbound {id}");
    }
    assert!(
        counts.values().all(|c| *c == 1),
        "a duplicate event: {counts:?}"
    );
    // Every Send exactly once at the recipient, under the id it answered.
    let inbox = sim
        .control
        .inbox(InboxRequest { phone: PEER.into() })
        .await
        .expect("Inbox")
        .into_inner()
        .messages;
    for key in &keys {
        let text = format!("out {key}");
        let copies: Vec<_> = inbox.iter().filter(|m| m.text == text).collect();
        assert_eq!(
            copies.len(),
            1,
            "{text} reached the peer {} times",
            copies.len()
        );
        assert_eq!(Some(&copies[0].id), confirmed.get(key), "{text}");
        assert_eq!(own.get(&text), Some(&1), "the event of {text}");
    }
    // Never retried: at most once, and once whenever a Send answered; each
    // delivery has its event, though no caller waited for its ack.
    let mut delivered = 0;
    for key in &once {
        let text = format!("out {key}");
        let copies = inbox.iter().filter(|m| m.text == text).count();
        assert!(copies <= 1, "{text} reached the peer {copies} times");
        if confirmed.contains_key(key) {
            assert_eq!(copies, 1, "{text} answered but not delivered");
        }
        assert_eq!(
            own.get(&text).copied().unwrap_or(0),
            copies,
            "the event of {text}"
        );
        delivered += copies;
    }
    eprintln!(
        "{delivered} of {} never-retried Sends delivered",
        once.len()
    );
    drop(gw);
}
