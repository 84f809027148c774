//! Shared harness for the simulator's interop tests: the simulator with its
//! gRPC control service on loopback, and Baileys scripts run under node.

#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use wagate::proto::sim::simulator_client::SimulatorClient;
use wagate::proto::sim::{Account, ListAccountsRequest, ScanQrRequest};
use wagate::sim::{SimConfig, Simulator};

/// Bounds one step of a scenario (a pairing, a reconnect); a healthy step
/// takes a second or two.
pub(crate) const STEP: Duration = Duration::from_secs(60);

pub(crate) fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Installs the pinned npm packages if they are missing (needs node + npm).
pub(crate) fn ensure_node_modules() {
    let status = Command::new("sh")
        .arg(interop_dir().join("ensure.sh"))
        .status()
        .expect("run tests/interop/ensure.sh");
    assert!(status.success(), "tests/interop/ensure.sh failed: {status}");
}

/// The simulator plus its control service on another loopback port.
pub(crate) struct Harness {
    pub(crate) sim: Simulator,
    pub(crate) control: SimulatorClient<Channel>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl Harness {
    pub(crate) async fn start() -> Self {
        ensure_node_modules();
        let sim = Simulator::start(SimConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            seed: Some(0x5EED),
            data_dir: None,
        })
        .await
        .expect("simulator starts");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind control port");
        let addr = listener.local_addr().expect("control address");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            Server::builder()
                .add_service(sim.control())
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                }),
        );
        let control = SimulatorClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to the control service");
        Self {
            sim,
            control,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Runs baileys-pair.js with a fresh `auth_dir`, scans its first QR code
    /// as `phone`, and waits for it to log in. Returns the device JID and the
    /// close codes seen on the way.
    pub(crate) async fn pair(
        &mut self,
        phone: &str,
        push_name: &str,
        auth_dir: &Path,
    ) -> (String, Vec<Option<u64>>) {
        let mut baileys =
            NodeScript::spawn("baileys-pair.js", &[&self.sim.ws_url(), path(auth_dir)]);
        let mut scanned = None;
        let mut closes = Vec::new();
        let opened = loop {
            match baileys.next_event().await {
                Event::Qr(qr) if scanned.is_none() => {
                    let reply = self
                        .control
                        .scan_qr(ScanQrRequest {
                            phone: phone.into(),
                            qr,
                            push_name: push_name.into(),
                        })
                        .await
                        .expect("ScanQr succeeds")
                        .into_inner();
                    scanned = Some(reply.device_jid);
                }
                Event::Qr(_) => {}
                Event::Close(code) => closes.push(code),
                Event::Open(jid) => break jid,
            }
        };
        let device = scanned.expect("a QR code was shown and scanned");
        assert_eq!(opened, device, "Baileys logged in as the paired device");
        let status = baileys.wait().await;
        assert!(status.success(), "baileys-pair.js exited with {status}");
        (device, closes)
    }

    pub(crate) async fn accounts(&mut self) -> Vec<Account> {
        self.control
            .list_accounts(ListAccountsRequest::default())
            .await
            .expect("ListAccounts")
            .into_inner()
            .accounts
    }

    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("control server task")
                .expect("control server ran");
        }
        self.sim.shutdown().await;
    }
}

pub(crate) fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// What the Baileys scripts print, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Qr(String),
    Close(Option<u64>),
    Open(String),
}

impl Event {
    fn parse(line: &str) -> Option<Self> {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let text = |key: &str| value[key].as_str().map(str::to_owned);
        match value["event"].as_str()? {
            "qr" => text("qr").map(Self::Qr),
            "open" => text("jid").map(Self::Open),
            "close" => Some(Self::Close(value["code"].as_u64())),
            _ => None,
        }
    }
}

/// A node script from tests/interop that is killed if the test ends early;
/// a reader thread forwards its stdout lines (the channel closes at EOF).
pub(crate) struct NodeScript {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl NodeScript {
    pub(crate) fn spawn(name: &'static str, args: &[&str]) -> Self {
        let mut child = Command::new("node")
            .arg(interop_dir().join(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed to run the Baileys interop tests");
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            name,
            child,
            stdin,
            lines,
        }
    }

    /// The next event the script prints, within [`STEP`].
    pub(crate) async fn next_event(&mut self) -> Event {
        let name = self.name;
        let line = tokio::time::timeout(STEP, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}: no output within {STEP:?}"))
            .unwrap_or_else(|| panic!("{name} exited unexpectedly"));
        eprintln!("{name}: {line}");
        Event::parse(&line).unwrap_or_else(|| panic!("{name}: unexpected output {line}"))
    }

    /// The next line the script prints, as JSON, within [`STEP`].
    pub(crate) async fn next_json(&mut self) -> serde_json::Value {
        let name = self.name;
        let line = tokio::time::timeout(STEP, self.lines.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}: no output within {STEP:?}"))
            .unwrap_or_else(|| panic!("{name} exited unexpectedly"));
        eprintln!("{name}: {line}");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("{name}: not JSON: {line}"))
    }

    /// Reads lines until one has `"event": event` and `pred` holds for it.
    pub(crate) async fn wait_for(
        &mut self,
        event: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        loop {
            let value = self.next_json().await;
            if value["event"] == event && pred(&value) {
                return value;
            }
        }
    }

    /// After a `send` command: reads lines until the script reported the
    /// sent message and a status of at least `status` for it, in either
    /// order (the receipt can overtake Baileys' own send promise). Returns
    /// the message id.
    pub(crate) async fn sent_with_status(&mut self, status: u64) -> String {
        let mut sent: Option<String> = None;
        let mut reached: Vec<String> = Vec::new();
        loop {
            let value = self.next_json().await;
            match value["event"].as_str() {
                Some("sent") => sent = value["id"].as_str().map(str::to_owned),
                Some("status") if value["status"].as_u64().is_some_and(|s| s >= status) => {
                    if let Some(id) = value["id"].as_str() {
                        reached.push(id.to_owned());
                    }
                }
                _ => {}
            }
            if let Some(id) = &sent {
                if reached.contains(id) {
                    return id.clone();
                }
            }
        }
    }

    /// Sends one command line to the script.
    pub(crate) fn command(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").expect("write to the script");
        stdin.flush().expect("flush to the script");
    }

    /// Waits for the script to exit (its stdout closes first).
    pub(crate) async fn wait(&mut self) -> ExitStatus {
        let name = self.name;
        let drained = async {
            while let Some(line) = self.lines.recv().await {
                eprintln!("{name}: {line}");
            }
        };
        tokio::time::timeout(STEP, drained)
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit within {STEP:?}"));
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
