//! Connection hygiene on the gRPC port, on a gateway process with a low
//! open-file limit: idle connections fill the API's share of descriptors,
//! a session still reconnects (descriptors are kept for sessions), and the
//! idle connections are closed by the gateway after its idle timeout.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wagate::proto::gateway::{SessionState, StatusRequest};
use wagate::proto::sim::KickRequest;

const OWN: &str = "+15550007777";
/// Soft and hard open-file limit of the gateway process.
const NOFILE: u64 = 192;
/// Connections attempted: more than the API's share of descriptors.
const FLOOD: usize = 300;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

struct Gateway {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_gateway_process(data: &std::path::Path, sim: &Sim) -> Gateway {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wagate"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .args(["--api-idle-seconds", "12", "--api-preface-seconds", "2"])
        .args(["--api-fd-reserve", "64", "--handshakes-per-second", "1000"])
        .env("WAGATE_WA_URL", sim.sim.ws_url())
        .env("WAGATE_WA_ROOT_KEY", hex::encode(sim.sim.root_public_key()))
        .env(
            "WAGATE_STORE_KEY",
            "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .env_remove("WAGATE_API_KEYS")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: between fork and exec only setrlimit runs, which is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().expect("start wagate");
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
    std::thread::spawn(move || for _ in lines {});
    Gateway { child, addr }
}

/// Whether the gateway closes `socket` within `within` (EOF or reset).
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let read_to_end = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_to_end).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_starve_sessions_and_are_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = start_sim().await;
    let gateway = start_gateway_process(dir.path(), &sim);
    let mut client = client(gateway.addr).await;
    let (device, mut events) = pair_with(&mut sim.control, &mut client, "fd", OWN).await;

    // Flood the API port with connections that start HTTP/2 and then say
    // nothing. The gateway takes them until only its reserve of
    // descriptors is left, and closes the rest at once.
    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        match TcpStream::connect(gateway.addr).await {
            Ok(mut socket) => {
                let _ = socket.write_all(PREFACE).await;
                idle.push(socket);
            }
            Err(_) => break,
        }
    }
    assert!(idle.len() > NOFILE as usize, "flooded: {}", idle.len());

    // The session loses its connection and must reconnect: it needs a
    // descriptor while the API port is saturated.
    sim.control
        .kick(KickRequest {
            jid: device.clone(),
            code: 0,
        })
        .await
        .expect("kick");
    // Well before the flood's connections time out (12 s): the reconnect
    // must not depend on them going away.
    let reconnected = tokio::time::timeout(
        Duration::from_secs(6),
        wait_for(&mut events, "CONNECTED after the kick", |e| {
            is_state(e, SessionState::Connected)
        }),
    )
    .await;
    assert!(
        reconnected.is_ok(),
        "no reconnect while the API port is flooded"
    );

    // Every idle connection is closed: the refused ones at once, the
    // accepted ones after the idle timeout. The Events stream above
    // has a call in progress and stays.
    let mut open = 0;
    for socket in &mut idle {
        if !closed_within(socket, Duration::from_secs(30)).await {
            open += 1;
        }
    }
    assert_eq!(open, 0, "idle connections left open");
    drop(idle);

    // The API answers again on a fresh connection, and the session is up.
    let mut fresh = common::client(gateway.addr).await;
    let status = fresh
        .status(StatusRequest {
            session_id: "fd".into(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, SessionState::Connected as i32);
    // The stream opened before the flood survived it.
    let status = client
        .status(StatusRequest {
            session_id: "fd".into(),
        })
        .await
        .expect("status on the old channel");
    assert_eq!(status.into_inner().jid, device);
}
