//! How fast the simulator feeds texts to connected clients: N bare clients
//! (the protocol core over websockets, in their own runtime) are paired and
//! logged in; N virtual phones each send texts to one of them with
//! `send_texts` (real Signal encryption per text, for the recipient's phone
//! and its companion, the phone decrypting its copy), while the clients
//! count the stanzas the simulator writes to their sockets. The simulator
//! runs in its own runtime; its threads' CPU time is read from /proc.
//!
//! A second phase measures messages clients send: `SIM_FEED_SENDERS` more
//! clients each send texts to one of the first ones, one at a time, each
//! waiting for the server's ack (the path a gateway's Send takes).
//!
//! Run with `cargo bench --bench sim_feed`; `SIM_FEED_CLIENTS` (default
//! 1000), `SIM_FEED_TEXTS` (texts per client and per sender, default 50),
//! `SIM_FEED_SENDERS` (default 64) and `SIM_FEED_THREADS` (simulator worker
//! threads, default 2) size the run.

#[path = "../tests/sim_client/mod.rs"]
mod sim_client;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::runtime::{Builder, Runtime};
use tokio_tungstenite::tungstenite::Message;

use sim_client::Client;
use wagate::sim::{SimConfig, Simulator};
use wagate::wa::jid::{Jid, PhoneNumber};

/// Bounds every wait of the run.
const LIMIT: Duration = Duration::from_secs(600);
/// Clients paired at once during setup.
const SETUP_CONCURRENCY: usize = 32;
/// Name of the simulator's worker threads, to find their CPU time.
const SIM_THREAD: &str = "sim-worker";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime(name: &str, threads: usize) -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// CPU seconds used so far by this process's threads named `name`.
fn thread_cpu_seconds(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state …`: the fields after the comm are space-separated.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(name) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the full line.
        let used: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        ticks += used;
    }
    // Linux reports thread times in USER_HZ, 100 per second.
    ticks as f64 / 100.0
}

async fn wait_for_count(counter: &AtomicU64, target: u64) {
    let waited = tokio::time::timeout(LIMIT, async {
        while counter.load(Ordering::Relaxed) < target {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    if waited.is_err() {
        panic!(
            "only {} of {target} stanzas arrived",
            counter.load(Ordering::Relaxed)
        );
    }
}

fn main() {
    let clients = env_usize("SIM_FEED_CLIENTS", 1000);
    let texts = u32::try_from(env_usize("SIM_FEED_TEXTS", 50)).expect("texts fit u32");
    let threads = env_usize("SIM_FEED_THREADS", 2);
    let sim_rt = runtime(SIM_THREAD, threads);
    let client_rt = runtime("feed-client", 1);

    let sim = sim_rt
        .block_on(Simulator::start(SimConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            seed: Some(11),
            data_dir: None,
        }))
        .expect("simulator starts");

    // Setup: pair and log in every client, then keep only a counting reader.
    let setup = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    client_rt.block_on(async {
        let mut next = 0;
        while next < clients {
            let batch: Vec<_> = (next..clients.min(next + SETUP_CONCURRENCY))
                .map(|n| {
                    let sim = sim.clone();
                    let received = Arc::clone(&received);
                    tokio::spawn(async move {
                        let phone = format!("+1555{n:07}");
                        let creds = Client::pair(&sim, &phone, n as u64).await;
                        let client = Client::login(&sim, creds, n as u64).await;
                        let mut socket = client.into_socket();
                        tokio::spawn(async move {
                            while let Some(Ok(message)) = socket.next().await {
                                if let Message::Binary(_) = message {
                                    received.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        });
                    })
                })
                .collect();
            for task in batch {
                task.await.expect("client setup");
            }
            next += SETUP_CONCURRENCY;
        }
    });
    for n in 0..clients {
        let phone: PhoneNumber = format!("+1777{n:07}").parse().expect("phone");
        sim.create_account(&phone, "Sender")
            .expect("sender account");
    }
    println!(
        "setup: {clients} clients paired and online in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    let listed = Instant::now();
    let accounts = sim.accounts();
    let online = accounts
        .iter()
        .flat_map(|a| &a.devices)
        .filter(|d| d.connected && d.jid.device != 0)
        .count();
    println!(
        "listing: {} accounts ({online} companions online) in {:.1} ms",
        accounts.len(),
        listed.elapsed().as_secs_f64() * 1e3
    );

    let send_round = |count: u32, prefix: &'static str| {
        let sim = sim.clone();
        sim_rt.spawn(async move {
            let sends: Vec<_> = (0..clients)
                .map(|n| {
                    let sim = sim.clone();
                    tokio::spawn(async move {
                        let from: PhoneNumber = format!("+1777{n:07}").parse().expect("phone");
                        let to: Jid = format!("1555{n:07}@s.whatsapp.net").parse().expect("jid");
                        sim.send_texts(&from, &to, count, prefix, 0)
                            .await
                            .expect("send_texts");
                    })
                })
                .collect();
            for send in sends {
                send.await.expect("send task");
            }
        })
    };

    // Warm-up: one text per pair opens every Signal session (pkmsg).
    let before = received.load(Ordering::Relaxed);
    let warm = send_round(1, "warm-");
    client_rt.block_on(wait_for_count(&received, before + clients as u64));
    client_rt.block_on(warm).expect("warm-up");

    let before = received.load(Ordering::Relaxed);
    let target = before + clients as u64 * u64::from(texts);
    let cpu_before = thread_cpu_seconds(SIM_THREAD);
    let started = Instant::now();
    let round = send_round(texts, "text-");
    client_rt.block_on(wait_for_count(&received, target));
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds(SIM_THREAD) - cpu_before;
    client_rt.block_on(round).expect("sends");
    let delivered = target - before;
    println!(
        "send_texts: {delivered} texts to {clients} clients in {elapsed:.2} s = {:.0} messages/s; \
         simulator threads {cpu:.2} CPU s ({:.0} % of one core, {:.1} µs per message)",
        delivered as f64 / elapsed,
        100.0 * cpu / elapsed,
        1e6 * cpu / delivered as f64,
    );

    // Client → server → client: senders (one stanza in flight each, as a
    // session sending at concurrency 1) each await the server's ack before
    // the next message; every message is checked against the ids the
    // sender already used, routed, and written to one recipient's socket.
    let senders = env_usize("SIM_FEED_SENDERS", 64).min(clients);
    let per_sender = texts;
    let mut sending: Vec<Client> = client_rt.block_on(async {
        let setups: Vec<_> = (0..senders)
            .map(|n| {
                let sim = sim.clone();
                tokio::spawn(async move {
                    let seed = 1_000_000 + n as u64;
                    let creds = Client::pair(&sim, &format!("+1888{n:07}"), seed).await;
                    Client::login(&sim, creds, seed).await
                })
            })
            .collect();
        let mut out = Vec::new();
        for setup in setups {
            out.push(setup.await.expect("sender setup"));
        }
        out
    });
    let before = received.load(Ordering::Relaxed);
    let target = before + senders as u64 * u64::from(per_sender);
    let cpu_before = thread_cpu_seconds(SIM_THREAD);
    let started = Instant::now();
    client_rt.block_on(async {
        let tasks: Vec<_> = sending
            .drain(..)
            .enumerate()
            .map(|(n, mut client)| {
                tokio::spawn(async move {
                    let to = format!("1555{n:07}@s.whatsapp.net");
                    let device = format!("1555{n:07}:1@s.whatsapp.net");
                    for m in 0..per_sender {
                        let id = format!("3EB0{n:08X}{m:010X}");
                        client.send(&routed_message(&id, &to, &device)).await;
                        client
                            .stanza("the server's ack", |node| {
                                node.tag() == "ack" && node.attr_str("id") == Some(id.as_str())
                            })
                            .await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("sender");
        }
        wait_for_count(&received, target).await;
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = thread_cpu_seconds(SIM_THREAD) - cpu_before;
    let routed = target - before;
    println!(
        "client messages: {routed} from {senders} senders (each awaiting its ack) in {elapsed:.2} s \
         = {:.0} messages/s; simulator threads {cpu:.2} CPU s ({:.0} % of one core, \
         {:.1} µs per message)",
        routed as f64 / elapsed,
        100.0 * cpu / elapsed,
        1e6 * cpu / routed as f64,
    );

    sim_rt.block_on(sim.shutdown());
}

/// A message a companion sends to one device of another account. The
/// server routes it without reading the payload, so it is not real Signal.
fn routed_message(id: &str, to: &str, device: &str) -> wagate::wa::binary::Node {
    use wagate::wa::binary::Node;
    let to: Jid = to.parse().expect("jid");
    let device: Jid = device.parse().expect("jid");
    Node::new("message")
        .attr("id", id.to_owned())
        .attr("to", to)
        .attr("type", "text")
        .children(vec![Node::new("participants").children(vec![Node::new(
            "to",
        )
        .attr("jid", device)
        .children(vec![Node::new("enc")
            .attr("v", "2")
            .attr("type", "msg")
            .bytes(vec![0x33; 64])])])])
}
