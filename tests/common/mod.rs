//! Shared harness for end-to-end tests: a simulator with its control service,
//! gateways on loopback port 0 in temp dirs, and waiting on event streams.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::Streaming;

use wagate::app::{Running, ServeOptions};
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{event, ConnectionEvent, Event, EventsRequest, SessionState};
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::runtime::Backoff;
use wagate::sim::{SimConfig, Simulator};

/// How long any single expected thing may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Sim {
    pub sim: Simulator,
    pub control: SimulatorClient<Channel>,
    pub control_addr: SocketAddr,
}

/// A simulator on loopback with its control API served on another port.
pub async fn start_sim() -> Sim {
    start_sim_with(SimConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        seed: Some(7),
        data_dir: None,
    })
    .await
}

/// [`start_sim`] with the given configuration.
pub async fn start_sim_with(config: SimConfig) -> Sim {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let sim = Simulator::start(config).await.expect("simulator starts");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind control");
    let control_addr = listener.local_addr().expect("control addr");
    let service = sim.control();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
    });
    let control = SimulatorClient::connect(format!("http://{control_addr}"))
        .await
        .expect("control connects");
    Sim {
        sim,
        control,
        control_addr,
    }
}

/// Gateway options pointing at `sim`, storing in `dir`, fast reconnects.
pub fn options(dir: &Path, sim: &Simulator) -> ServeOptions {
    let mut opts = ServeOptions::local(dir.to_path_buf());
    opts.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.wa_url = Some(sim.ws_url());
    opts.wa_root_key = Some(sim.root_public_key());
    opts.store_key = Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
    opts.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    };
    opts.handshakes_per_second = 1000;
    opts
}

/// Options of a sandbox (`serve --sim`) storing in `dir`, fast reconnects.
pub fn sandbox_options(dir: &Path) -> ServeOptions {
    let mut opts = ServeOptions::local(dir.to_path_buf());
    opts.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    opts.sim = true;
    opts.store_key = Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned());
    opts.backoff = Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(500),
    };
    opts.handshakes_per_second = 1000;
    opts
}

pub async fn start_gateway(opts: ServeOptions) -> Running {
    wagate::app::start(opts).await.expect("gateway starts")
}

pub async fn client(addr: SocketAddr) -> GatewayClient<Channel> {
    GatewayClient::connect(format!("http://{addr}"))
        .await
        .expect("gateway connects")
}

/// Opens an event stream for one session from a cursor (0 = from the beginning).
pub async fn events_after(
    client: &mut GatewayClient<Channel>,
    session: &str,
    cursor: u64,
) -> Streaming<Event> {
    let start = if cursor == 0 {
        wagate::proto::gateway::events_request::Start::FromBeginning(true)
    } else {
        wagate::proto::gateway::events_request::Start::AfterCursor(cursor)
    };
    client
        .events(EventsRequest {
            session_ids: vec![session.to_owned()],
            types: Vec::new(),
            start: Some(start),
        })
        .await
        .expect("events stream opens")
        .into_inner()
}

/// Follows a session's events from the beginning, then calls Init on it.
pub async fn init_following(
    client: &mut GatewayClient<Channel>,
    session: &str,
) -> Streaming<Event> {
    let events = events_after(client, session, 0).await;
    client
        .init(wagate::proto::gateway::InitRequest {
            session_id: session.to_owned(),
            ..Default::default()
        })
        .await
        .expect("init");
    events
}

/// Reads events until one matches; returns it and everything seen before it.
pub async fn wait_for(
    stream: &mut Streaming<Event>,
    what: &str,
    mut matches: impl FnMut(&Event) -> bool,
) -> (Event, Vec<Event>) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let event = stream
                .message()
                .await
                .expect("event stream healthy")
                .expect("event stream open");
            if matches(&event) {
                return event;
            }
            seen.push(event);
        }
    })
    .await;
    match found {
        Ok(event) => (event, seen),
        Err(_) => panic!("timed out waiting for {what}; saw {seen:#?}"),
    }
}

pub fn connection(event: &Event) -> Option<&ConnectionEvent> {
    match &event.payload {
        Some(event::Payload::Connection(c)) => Some(c),
        _ => None,
    }
}

pub fn is_state(event: &Event, state: SessionState) -> bool {
    connection(event).is_some_and(|c| c.state == state as i32)
}

pub fn qr_of(event: &Event) -> Option<&str> {
    match &event.payload {
        Some(event::Payload::Qr(q)) => Some(&q.qr),
        _ => None,
    }
}

/// Inits `session` and pairs it by QR with the account of `phone` (created
/// if new); returns the device JID and the stream, positioned after the
/// CONNECTED event.
pub async fn pair_with(
    control: &mut SimulatorClient<Channel>,
    client: &mut GatewayClient<Channel>,
    session: &str,
    phone: &str,
) -> (String, Streaming<Event>) {
    let mut events = init_following(client, session).await;
    let (qr_event, _) = wait_for(&mut events, "a QR event", |e| qr_of(e).is_some()).await;
    let qr = qr_of(&qr_event).expect("qr").to_owned();
    let device = control
        .scan_qr(wagate::proto::sim::ScanQrRequest {
            phone: phone.into(),
            qr,
            push_name: "Own Phone".into(),
        })
        .await
        .expect("ScanQr")
        .into_inner()
        .device_jid;
    wait_for(&mut events, "CONNECTED", |e| {
        is_state(e, SessionState::Connected)
    })
    .await;
    (device, events)
}

pub fn message_of(event: &Event) -> Option<&wagate::proto::gateway::MessageEvent> {
    match &event.payload {
        Some(event::Payload::Message(m)) => Some(m),
        _ => None,
    }
}

pub fn receipt_of(event: &Event) -> Option<&wagate::proto::gateway::ReceiptEvent> {
    match &event.payload {
        Some(event::Payload::Receipt(r)) => Some(r),
        _ => None,
    }
}

/// Creates a simulated account (its virtual phone) for `phone`.
pub async fn create_account(control: &mut SimulatorClient<Channel>, phone: &str, push_name: &str) {
    control
        .create_account(wagate::proto::sim::CreateAccountRequest {
            phone: phone.into(),
            push_name: push_name.into(),
        })
        .await
        .expect("CreateAccount");
}

pub fn group_of(event: &Event) -> Option<&wagate::proto::gateway::GroupEvent> {
    match &event.payload {
        Some(event::Payload::Group(g)) => Some(g),
        _ => None,
    }
}

/// The virtual phone of `phone` creates a group of `participants` (phone
/// numbers); returns its JID and the `group` event that reported its
/// creation on `events`.
pub async fn phone_creates_group(
    control: &mut SimulatorClient<Channel>,
    events: &mut Streaming<Event>,
    phone: &str,
    subject: &str,
    participants: &[&str],
    lid_addressed: bool,
) -> (String, wagate::proto::gateway::GroupEvent) {
    let group = control
        .create_group(wagate::proto::sim::CreateGroupRequest {
            phone: phone.into(),
            subject: subject.into(),
            participants: participants.iter().map(|p| (*p).to_owned()).collect(),
            lid_addressed,
        })
        .await
        .expect("CreateGroup")
        .into_inner()
        .group_jid;
    let (created, _) = wait_for(events, "the group's creation", |e| {
        group_of(e).is_some_and(|g| g.group == group)
    })
    .await;
    let created = group_of(&created).expect("group event").clone();
    (group, created)
}

/// A `Watch` of the health of `service` on the gateway at `addr`.
pub async fn health_watch(
    addr: SocketAddr,
    service: &str,
) -> Streaming<tonic_health::pb::HealthCheckResponse> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .watch(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("watch")
        .into_inner()
}

/// What the virtual phone of `phone` received, in order.
pub async fn inbox(
    control: &mut SimulatorClient<Channel>,
    phone: &str,
) -> Vec<wagate::proto::sim::InboxMessage> {
    control
        .inbox(wagate::proto::sim::InboxRequest {
            phone: phone.into(),
        })
        .await
        .expect("Inbox")
        .into_inner()
        .messages
}

/// The texts `phone` received in `chat`, in order.
pub async fn chat_texts(
    control: &mut SimulatorClient<Channel>,
    phone: &str,
    chat: &str,
) -> Vec<String> {
    inbox(control, phone)
        .await
        .into_iter()
        .filter(|m| m.chat == chat)
        .map(|m| m.text)
        .collect()
}

/// Waits for delivery receipts of message `id` from each phone number
/// (digits) in `from`.
pub async fn delivered_to(events: &mut Streaming<Event>, id: &str, from: &[&str]) {
    let mut waiting: Vec<&str> = from.to_vec();
    while !waiting.is_empty() {
        let (event, _) = wait_for(events, "a delivery receipt", |e| {
            receipt_of(e).is_some_and(|r| r.message_ids.iter().any(|m| m == id))
        })
        .await;
        let phone = receipt_of(&event).expect("receipt").from_phone.clone();
        waiting.retain(|p| *p != phone);
    }
}
