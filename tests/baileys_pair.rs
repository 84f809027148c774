//! An unmodified Baileys client (from npm) pairs with the simulator: it shows
//! a QR code, a virtual phone scans it through the gRPC control API, Baileys
//! restarts on the server's 515 and logs in until the connection opens.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use baileys_output::Event;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::proto::sim::{ListAccountsRequest, ScanQrRequest};
use wagate::sim::{SimConfig, Simulator};

/// Pairing and login take a few seconds; this only bounds a broken run.
const DEADLINE: Duration = Duration::from_secs(90);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs the pinned npm packages if they are missing (needs node + npm).
fn ensure_node_modules() {
    let status = Command::new("sh")
        .arg(interop_dir().join("ensure.sh"))
        .status()
        .expect("run tests/interop/ensure.sh");
    assert!(status.success(), "tests/interop/ensure.sh failed: {status}");
}

/// A node process that is killed if the test ends early, with its stdout
/// lines forwarded by a reader thread (the channel closes at EOF).
struct NodeScript {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl NodeScript {
    fn spawn(script: &Path, args: &[&str]) -> Self {
        let mut child = Command::new("node")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed to run the Baileys interop test");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for the process to exit (its stdout closes first).
    async fn wait(&mut self) -> ExitStatus {
        while self.lines.recv().await.is_some() {}
        tokio::task::block_in_place(|| self.child.wait()).expect("wait for node")
    }
}

impl Drop for NodeScript {
    fn drop(&mut self) {
        // Already exited in a passing run; killing again is harmless.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baileys_pairs_through_qr_scan_and_logs_in() {
    ensure_node_modules();

    let sim = Simulator::start(SimConfig {
        listen: "127.0.0.1:0".parse().expect("valid address"),
        seed: Some(0x5EED),
    })
    .await
    .expect("simulator starts");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind control port");
    let control_addr = listener.local_addr().expect("control address");
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_server = tokio::spawn(
        Server::builder()
            .add_service(sim.control())
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                let _ = control_stopped.await;
            }),
    );
    let mut control = SimulatorClient::connect(format!("http://{control_addr}"))
        .await
        .expect("connect to the control service");

    let auth = tempfile::tempdir().expect("temp dir");
    let auth_dir = auth.path().to_str().expect("utf-8 temp path");
    let mut baileys = NodeScript::spawn(
        &interop_dir().join("baileys-pair.js"),
        &[&sim.ws_url(), auth_dir],
    );

    let run = async {
        let mut scanned = None;
        let mut closes = Vec::new();
        loop {
            let line = baileys
                .lines
                .recv()
                .await
                .expect("Baileys exited before the connection opened");
            eprintln!("baileys: {line}");
            match Event::parse(&line) {
                Event::Qr(qr) if scanned.is_none() => {
                    let reply = control
                        .scan_qr(ScanQrRequest {
                            phone: "+1 555 010 2030".into(),
                            qr,
                            push_name: "Alice".into(),
                        })
                        .await
                        .expect("ScanQr succeeds")
                        .into_inner();
                    scanned = Some(reply.device_jid);
                }
                Event::Qr(_) => {}
                Event::Close(code) => closes.push(code),
                Event::Open(jid) => return (scanned, closes, jid),
                Event::Other => panic!("unexpected output from Baileys: {line}"),
            }
        }
    };
    let (scanned, closes, opened_jid) = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("Baileys did not open a connection in time");

    let device_jid = scanned.expect("a QR code was shown and scanned");
    assert_eq!(device_jid, "15550102030:1@s.whatsapp.net");
    assert_eq!(
        opened_jid, device_jid,
        "Baileys logged in as the paired device"
    );
    assert_eq!(
        closes,
        vec![Some(515)],
        "exactly one restart, after pairing"
    );

    let status = tokio::time::timeout(DEADLINE, baileys.wait())
        .await
        .expect("Baileys exits after opening");
    assert!(status.success(), "Baileys exited with {status}");
    let creds = std::fs::read_to_string(auth.path().join("creds.json")).expect("creds saved");
    assert!(
        creds.contains("15550102030:1@s.whatsapp.net"),
        "creds name the device: {creds}"
    );

    let accounts = control
        .list_accounts(ListAccountsRequest {})
        .await
        .expect("ListAccounts")
        .into_inner()
        .accounts;
    assert_eq!(accounts.len(), 1);
    let account = &accounts[0];
    assert_eq!(account.phone, "+15550102030");
    assert_eq!(account.jid, "15550102030@s.whatsapp.net");
    assert_eq!(account.push_name, "Alice");
    let jids: Vec<&str> = account.devices.iter().map(|d| d.jid.as_str()).collect();
    assert_eq!(
        jids,
        vec!["15550102030@s.whatsapp.net", device_jid.as_str()]
    );
    assert_eq!(account.devices[1].platform, "CHROME (Ubuntu)");

    let _ = stop_control.send(());
    control_server
        .await
        .expect("control server task")
        .expect("control server ran");
    sim.shutdown().await;
}

/// The lines baileys-pair.js prints.
mod baileys_output {
    pub(crate) enum Event {
        Qr(String),
        Close(Option<u64>),
        Open(String),
        Other,
    }

    impl Event {
        pub(crate) fn parse(line: &str) -> Self {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                return Self::Other;
            };
            let text = |key: &str| value[key].as_str().map(str::to_owned);
            match value["event"].as_str() {
                Some("qr") => text("qr").map_or(Self::Other, Self::Qr),
                Some("open") => text("jid").map_or(Self::Other, Self::Open),
                Some("close") => Self::Close(value["code"].as_u64()),
                _ => Self::Other,
            }
        }
    }
}
