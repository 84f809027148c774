//! Event subscribers that stop reading: while texts flow through a session,
//! a subscriber that follows it keeps receiving everything, the stalled ones
//! hold a bounded amount of gateway memory (printed, from the process's
//! RssAnon), and when they read again they get every event, gap-free.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Instant;

use common::*;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;
use wagate::proto::gateway::events_request::Start;
use wagate::proto::gateway::gateway_client::GatewayClient;
use wagate::proto::gateway::{Event, EventsRequest};
use wagate::proto::sim::SendTextRequest;

const OWN: &str = "+15550003333";
const BOB: &str = "+15550004444";
/// Subscribers that stop reading.
const STALLED: usize = 4;
/// Texts sent while they are stalled.
const TEXTS: usize = 800;
/// Size of each text: large enough that buffering events shows in RSS.
const TEXT_LEN: usize = 8 * 1024;
/// Memory a stalled subscriber may cost the gateway (the budget), plus room
/// for noise between two rounds of the same traffic (allocator, caches).
const BUDGET_PER_STALLED: u64 = 1024 * 1024;
const SLACK: u64 = 2 * 1024 * 1024;

/// A count from the environment, for longer manual runs.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Anonymous resident memory of this process, in bytes.
fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("RssAnon:"))
        .expect("RssAnon line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("RssAnon value");
    kib * 1024
}

/// A client on its own connection whose receive windows are the HTTP/2
/// minimum, so what the test process holds on the client side of a stalled
/// stream stays small and the growth measured is the gateway's.
async fn small_window_client(addr: SocketAddr) -> GatewayClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    GatewayClient::new(channel)
}

async fn follow(
    client: &mut GatewayClient<Channel>,
    session: &str,
    after: u64,
) -> Streaming<Event> {
    client
        .events(EventsRequest {
            session_ids: vec![session.to_owned()],
            types: Vec::new(),
            start: Some(Start::AfterCursor(after)),
        })
        .await
        .expect("events stream opens")
        .into_inner()
}

/// Reads `stream` until every id in `ids` arrived as a message event; checks
/// that seqs and cursors advance without a gap or a repeat on the way.
async fn read_all(stream: &mut Streaming<Event>, ids: &BTreeSet<String>, what: &str) {
    let mut missing = ids.clone();
    let mut last: Option<(u64, u64)> = None;
    tokio::time::timeout(WAIT * 3, async {
        while !missing.is_empty() {
            let event = stream
                .message()
                .await
                .expect("stream healthy")
                .expect("stream open");
            if let Some((seq, cursor)) = last {
                assert_eq!(event.seq, seq + 1, "{what}: seq gap after {seq}");
                assert!(event.cursor > cursor, "{what}: cursor went back");
            }
            last = Some((event.seq, event.cursor));
            if let Some(m) = message_of(&event) {
                missing.remove(&m.id);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {} texts never arrived", missing.len()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_costs_little_and_resumes_gap_free() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway(options(dir.path(), &sim.sim)).await;
    let mut client = client(gateway.addr).await;
    let (_, mut live) = pair_with(&mut sim.control, &mut client, "scale", OWN).await;
    create_account(&mut sim.control, BOB, "Bob").await;
    let padding = "x".repeat(TEXT_LEN);
    let texts = knob("EVENTS_SCALE_TEXTS", TEXTS);
    let nstalled = knob("EVENTS_SCALE_STALLED", STALLED);
    let control = sim.control.clone();
    let send_batch = |label: &'static str| {
        let padding = padding.clone();
        let mut control = control.clone();
        async move {
            let mut ids = BTreeSet::new();
            for n in 0..texts {
                let id = control
                    .send_text(SendTextRequest {
                        from_phone: BOB.into(),
                        to: OWN.into(),
                        text: format!("{label} {n} {padding}"),
                        from_lid: false,
                    })
                    .await
                    .expect("SendText")
                    .into_inner()
                    .message_id;
                ids.insert(id);
            }
            ids
        }
    };

    // Warm-up, then the same traffic again with nobody stalled: caches and
    // the allocator reach their working size, and the growth of that second
    // round is what the traffic alone costs (printed for comparison).
    let ids = send_batch("warm-up").await;
    read_all(&mut live, &ids, "live subscriber, warm-up").await;
    let before = rss_anon();
    let ids = send_batch("control").await;
    read_all(&mut live, &ids, "live subscriber, control round").await;
    let control_growth = rss_anon().saturating_sub(before);

    let start = gateway.manager.events().last_cursor();
    let before = rss_anon();
    let mut stalled = Vec::new();
    for _ in 0..nstalled {
        let mut c = small_window_client(gateway.addr).await;
        let stream = follow(&mut c, "scale", start).await;
        stalled.push((c, stream));
    }
    let began = Instant::now();
    let ids = send_batch("during").await;
    read_all(&mut live, &ids, "live subscriber").await;
    let elapsed = began.elapsed();
    let after = rss_anon();
    let growth = after.saturating_sub(before);
    // What the stalled subscribers added over the same round without them.
    let stall_cost = growth.saturating_sub(control_growth);
    println!(
        "events_scale: {texts} texts of {TEXT_LEN} B in {elapsed:?} while {nstalled} subscribers \
         stalled; RssAnon {} KiB -> {} KiB, growth {} KiB; the same round with nobody stalled \
         grew it by {} KiB; stalled subscribers cost {} KiB, {} KiB each",
        before / 1024,
        after / 1024,
        growth / 1024,
        control_growth / 1024,
        stall_cost / 1024,
        stall_cost / 1024 / nstalled.max(1) as u64,
    );

    // Each stalled subscriber resumes and gets everything, in order.
    for (i, (_, stream)) in stalled.iter_mut().enumerate() {
        read_all(stream, &ids, &format!("stalled subscriber {i}")).await;
    }
    assert!(
        stall_cost <= BUDGET_PER_STALLED * nstalled as u64 + SLACK,
        "{nstalled} stalled subscribers cost the process {} KiB",
        stall_cost / 1024
    );
    drop(stalled);
    drop(control);
    gateway.shutdown().await;

    // The texts went through the event log, sealed: none is in the data dir.
    for entry in std::fs::read_dir(dir.path()).expect("list data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            let bytes = std::fs::read(&path).expect("read");
            let needle = b"during 17 xxxx";
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a message text in clear in {}",
                path.display()
            );
        }
    }
}
