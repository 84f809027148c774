//! `wagatectl` end to end against a real `wagate serve --sim` process on
//! loopback: init, the QR read off the terminal drawing and scanned by the
//! simulator's phone, status, events, disconnect, and the exit codes.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use wagatectl::proto::sim::simulator_client::SimulatorClient;
use wagatectl::proto::sim::ScanQrRequest;
use wagatectl::qr::{modules_of, Ink};

/// Upper bound for any single step; a healthy run takes well under a second.
const STEP: Duration = Duration::from_secs(60);

/// Builds the server binary once per test process, into the same target
/// directory as this test, and returns its path.
fn wagate_binary() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/e2e-HASH
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test runs from target/<profile>/deps");
        let target_dir = profile_dir.parent().expect("target dir");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut build = Command::new(cargo);
        build
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "wagate", "--bin", "wagate"])
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p wagate failed");
        profile_dir.join("wagate")
    })
}

/// Lines of a child's stdout, read on a thread so the test can wait with a
/// bound.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// A `wagate serve --sim` process on an ephemeral loopback port.
struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(api_keys: &str) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("wagate.log")).expect("log file");
        let mut child = Command::new(wagate_binary())
            .args(["serve", "--sim", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .env("WAGATE_API_KEYS", api_keys)
            .env_remove("WAGATE_STORE_KEY")
            .env_remove("WAGATE_WA_URL")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start wagate");
        let lines = lines_of(&mut child);
        let addr = loop {
            let line = lines
                .recv_timeout(STEP)
                .expect("wagate announces its address");
            if let Some(a) = line.strip_prefix("wagate listening on ") {
                break format!("http://{a}");
            }
        };
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    fn ctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wagatectl"));
        cmd.env("WAGATE_ADDR", &self.addr)
            .env_remove("WAGATE_API_KEY")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ctl().args(args).output().expect("run wagatectl")
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "wagatectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8 output");
        serde_json::from_str(text.trim()).expect("one JSON object")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed")
}

/// Reads the first complete QR drawing off `qr`'s output and decodes it.
fn read_drawn_qr(lines: &mpsc::Receiver<String>) -> String {
    let mut block = Vec::new();
    loop {
        let line = lines.recv_timeout(STEP).expect("a QR drawing");
        if line.starts_with("Scan with WhatsApp") {
            break;
        }
        if !line.is_empty() {
            block.push(line);
        }
    }
    let refs: Vec<&str> = block.iter().map(String::as_str).collect();
    let rows = modules_of(&refs, Ink::Light).expect("only half-block characters");
    const SCALE: usize = 4;
    let (h, w) = (rows.len() * SCALE, rows[0].len() * SCALE);
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| {
        if rows[y / SCALE][x / SCALE] {
            0
        } else {
            255
        }
    });
    let grids = img.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code in the drawing");
    grids[0].decode().expect("the drawing decodes").1
}

#[test]
fn pairing_from_the_terminal_then_status_events_and_disconnect() {
    let server = Server::start("");

    let init = server.json(&["init", "demo", "--meta", "user=42", "--json"]);
    assert_eq!(init["session_id"], "demo");
    assert_eq!(init["metadata"]["user"], "42");
    let state = init["state"].as_str().expect("state");
    assert!(["CONNECTING", "QR_READY"].contains(&state), "{state}");

    let mut qr = server
        .ctl()
        .args(["qr", "demo"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wagatectl qr");
    let qr_lines = lines_of(&mut qr);
    let code_text = read_drawn_qr(&qr_lines);
    assert!(
        code_text.starts_with("https://wa.me/settings/linked_devices#"),
        "{code_text}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let device = runtime.block_on(async {
        let mut sim = SimulatorClient::connect(server.addr.clone())
            .await
            .expect("connect to the simulator control API");
        sim.scan_qr(ScanQrRequest {
            phone: "+15551234567".into(),
            qr: code_text.clone(),
            push_name: "Test Phone".into(),
        })
        .await
        .expect("ScanQr")
        .into_inner()
        .device_jid
    });
    assert!(device.starts_with("15551234567:"), "{device}");

    // `qr` notices the pairing, prints the JID and exits 0.
    let connected = loop {
        let line = qr_lines.recv_timeout(STEP).expect("qr reports the link");
        if let Some(jid) = line.strip_prefix("connected ") {
            break jid.to_owned();
        }
    };
    assert_eq!(connected, device);
    assert_eq!(qr.wait().expect("qr exits").code(), Some(0));

    let status = server.json(&["status", "demo", "--json"]);
    assert_eq!(status["state"], "CONNECTED");
    assert_eq!(status["jid"], device.as_str());
    assert_eq!(status["phone"], "15551234567");

    let listed = server.run(&["list"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("demo") && l.contains("CONNECTED")),
        "{table}"
    );

    // events follows; read the replay up to CONNECTED, then stop it.
    let mut events = server
        .ctl()
        .args(["events", "--session", "demo", "--from-beginning", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wagatectl events");
    let event_lines = lines_of(&mut events);
    let mut seen = Vec::new();
    loop {
        let line = event_lines.recv_timeout(STEP).expect("an event");
        let e: Value = serde_json::from_str(&line).expect("one JSON object per line");
        let done = e["type"] == "connection" && e["connection"]["state"] == "CONNECTED";
        seen.push(e);
        if done {
            break;
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(seen.iter().all(|e| e["session_id"] == "demo"));
    assert!(
        seen.iter()
            .any(|e| e["type"] == "qr" && e["qr"]["qr"] == code_text.as_str()),
        "the scanned QR is in the log: {seen:?}"
    );
    let cursors: Vec<u64> = seen.iter().filter_map(|e| e["cursor"].as_u64()).collect();
    assert_eq!(cursors.len(), seen.len());
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "{cursors:?}");
    let last = seen.last().expect("events");
    assert_eq!(last["connection"]["jid"], device.as_str());

    // Resuming after the last cursor replays nothing older.
    let after = cursors.last().expect("cursor").to_string();
    let disconnected = server.json(&["disconnect", "demo", "--json"]);
    assert_eq!(disconnected["state"], "DISCONNECTED");
    let mut resumed = server
        .ctl()
        .args(["events", "--after", &after])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wagatectl events --after");
    let resumed_lines = lines_of(&mut resumed);
    // The phone's history for the new device may come before it.
    let first = loop {
        let line = resumed_lines
            .recv_timeout(STEP)
            .expect("the disconnect event");
        if !line.contains(" history ") {
            break line;
        }
    };
    let _ = resumed.kill();
    let _ = resumed.wait();
    assert!(
        first.contains("demo#") && first.contains("connection DISCONNECTED"),
        "{first}"
    );
    let first_cursor: u64 = first
        .split(' ')
        .next()
        .and_then(|c| c.parse().ok())
        .expect("line starts with the cursor");
    assert!(first_cursor > cursors[cursors.len() - 1]);

    // A stopped session has no QR to show: wrong state.
    let out = server.run(&["qr", "demo"]);
    assert_eq!(code(&out), 4, "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn exit_codes_tell_failures_apart() {
    let server = Server::start("k1,k2");

    // No key, wrong key: unauthenticated.
    let out = server.run(&["list"]);
    assert_eq!(code(&out), 5, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));
    assert_eq!(code(&server.run(&["--api-key", "nope", "list"])), 5);

    // Key by flag or environment.
    let out = server.run(&["--api-key", "k2", "list", "--json"]);
    assert_eq!(code(&out), 0);
    assert!(out.stdout.is_empty(), "no sessions yet");
    let mut with_env = server.ctl();
    with_env
        .env("WAGATE_API_KEY", "k1")
        .args(["status", "nope"]);
    let out = with_env.output().expect("run");
    assert_eq!(code(&out), 3, "unknown session");

    // Arguments the gateway refuses, and flags clap refuses.
    assert_eq!(
        code(&server.run(&["--api-key", "k1", "init", "bad id!"])),
        2
    );
    assert_eq!(
        code(&server.run(&["--api-key", "k1", "events", "--type", "bogus"])),
        2
    );

    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let out = server.run(&["--addr", &format!("http://127.0.0.1:{port}"), "list"]);
    assert_eq!(code(&out), 6, "{}", String::from_utf8_lossy(&out.stderr));
}
