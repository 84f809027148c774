//! Crash safety: the gateway process is killed with SIGKILL while texts are
//! reaching it, then restarted on the same data directory. Every text must
//! appear in `Events` exactly once: what was committed is never replayed as
//! new, and what was not committed is redelivered by the server because no
//! receipt went out for it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;
use wagate::proto::sim::{CreateAccountRequest, SendTextRequest};

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
    sim.control
        .create_account(CreateAccountRequest {
            phone: PEER.into(),
            push_name: "Peer".into(),
        })
        .await
        .expect("CreateAccount");

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
