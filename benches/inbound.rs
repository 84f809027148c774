//! Inbound messages end to end: virtual phones of the simulator send texts
//! to gateway sessions; each text is decrypted from the websocket, its
//! ratchet state and `message` event committed to the SQLite store, the
//! receipt sent, and the event read back through the `Events` gRPC stream.
//! Prints messages per second, beside Baileys' floor on this machine.
//!
//! Run with `cargo bench --bench inbound`; `INBOUND_MESSAGES` (default
//! 2000) and `INBOUND_SESSIONS` (default 2) size the run.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wagate::app::ServeOptions;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{event, events_request, EventsRequest, InitRequest, SessionState};
use wagate::runtime::Backoff;
use wagate::sim::{SimConfig, Simulator};
use wagate::wa::jid::PhoneNumber;

/// Baileys' codec and Signal cost per inbound text on this machine (the
/// floor before any I/O), messages per second.
const BAILEYS_FLOOR_PER_SECOND: f64 = 27_000.0;
/// Bounds the whole run.
const LIMIT: Duration = Duration::from_secs(300);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let messages = env_usize("INBOUND_MESSAGES", 2000);
    let sessions = env_usize("INBOUND_SESSIONS", 2).max(1);
    let sim = Simulator::start(SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        seed: Some(1),
        data_dir: None,
    })
    .await
    .expect("simulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut opts = ServeOptions::local(dir.path().to_path_buf());
    opts.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.wa_url = Some(sim.ws_url());
    opts.wa_root_key = Some(sim.root_public_key());
    opts.store_key = Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
    opts.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    };
    opts.handshakes_per_second = 1000;
    let gateway = wagate::app::start(opts).await.expect("gateway starts");
    let mut client = GatewayClient::connect(format!("http://{}", gateway.addr))
        .await
        .expect("connect");

    let mut pairs = Vec::new();
    for n in 0..sessions {
        let own: PhoneNumber = format!("+1555100{n:04}").parse().expect("phone");
        let peer: PhoneNumber = format!("+1555200{n:04}").parse().expect("phone");
        let session = format!("bench-{n}");
        pair(&mut client, &sim, &session, &own).await;
        sim.create_account(&peer, "Peer").expect("peer account");
        pairs.push((session, own, peer));
    }

    let per_session = messages / sessions;
    let total = per_session * sessions;
    let mut stream = client
        .events(EventsRequest {
            session_ids: Vec::new(),
            types: vec![wagate::proto::gateway::EventType::Message as i32],
            start: Some(events_request::Start::FromNow(true)),
        })
        .await
        .expect("events")
        .into_inner();
    // Warm-up: one text per session opens the Signal sessions (pkmsg).
    for (_, own, peer) in &pairs {
        sim.send_text(peer, &own.to_jid(), "warm-up")
            .await
            .expect("send");
    }
    for _ in 0..pairs.len() {
        stream.message().await.expect("stream").expect("event");
    }

    let started = Instant::now();
    let mut senders = Vec::new();
    for (_, own, peer) in pairs.clone() {
        let sim = sim.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..per_session {
                sim.send_text(&peer, &own.to_jid(), &format!("message number {i}"))
                    .await
                    .expect("send");
            }
        }));
    }
    let mut received = 0usize;
    let outcome = tokio::time::timeout(LIMIT, async {
        while received < total {
            let event = stream.message().await.expect("stream").expect("event");
            if matches!(event.payload, Some(event::Payload::Message(_))) {
                received += 1;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    for sender in senders {
        let _ = sender.await;
    }
    assert!(
        outcome.is_ok(),
        "only {received} of {total} messages within {LIMIT:?}"
    );
    let rate = total as f64 / elapsed.as_secs_f64();
    println!("inbound end to end: {total} texts over {sessions} sessions in {elapsed:.2?}");
    println!(
        "  {rate:.0} messages/s (simulator and gateway sharing this machine's {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  Baileys' codec + Signal floor on this machine: {BAILEYS_FLOOR_PER_SECOND:.0}/s before any I/O ({:.2}x)",
        rate / BAILEYS_FLOOR_PER_SECOND
    );
    drop(stream);
    gateway.shutdown().await;
    sim.shutdown().await;
}

async fn pair(
    client: &mut GatewayClient<tonic::transport::Channel>,
    sim: &Simulator,
    session: &str,
    phone: &PhoneNumber,
) {
    let mut events = client
        .events(EventsRequest {
            session_ids: vec![session.to_owned()],
            types: Vec::new(),
            start: Some(events_request::Start::FromBeginning(true)),
        })
        .await
        .expect("events")
        .into_inner();
    client
        .init(InitRequest {
            session_id: session.to_owned(),
            ..Default::default()
        })
        .await
        .expect("init");
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), events.message())
            .await
            .expect("pairing in time")
            .expect("stream")
            .expect("event");
        match event.payload {
            Some(event::Payload::Qr(qr)) => {
                sim.scan_qr(phone, &qr.qr, "Bench").await.expect("scan");
            }
            Some(event::Payload::Connection(c)) if c.state == SessionState::Connected as i32 => {
                return;
            }
            _ => {}
        }
    }
}
