//! The `wagate sim` and `wagate serve` child processes: started with
//! ephemeral loopback ports and their logs in the run's temporary
//! directory, read for the addresses they print, stopped with SIGTERM, and
//! killed whenever this tool stops first (drop, error, or its own death).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{ChildStdout, Command};

use crate::error::LoadError;

/// Encryption key of the throwaway store: given in the environment so the
/// gateway writes no key file and a restart reads the same store.
const STORE_KEY: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// How long a child may take to print where it listens.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running child; killed when dropped.
pub(crate) struct Child {
    what: &'static str,
    child: tokio::process::Child,
    pid: u32,
}

impl Child {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends SIGTERM and waits for the exit; kills the process if it has
    /// not exited `within`. Returns how long the shutdown took.
    pub(crate) async fn terminate(&mut self, within: Duration) -> Result<Duration, LoadError> {
        let started = Instant::now();
        // SAFETY: kill only sends a signal to our own child's pid, which
        // stays reserved until we reap it below.
        if unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) } != 0 {
            return Err(LoadError::Signal {
                pid: self.pid,
                source: std::io::Error::last_os_error(),
            });
        }
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(started.elapsed()),
            Ok(Ok(status)) => Err(LoadError::Setup(format!(
                "{} exited with {status} after SIGTERM",
                self.what
            ))),
            Ok(Err(source)) => Err(LoadError::Signal {
                pid: self.pid,
                source,
            }),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                Err(LoadError::Stalled {
                    what: format!("{} shutting down on SIGTERM (killed)", self.what),
                    after: within,
                })
            }
        }
    }

    /// Kills the process and waits until it is gone.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Where a simulator listens, as `wagate sim` prints it.
#[derive(Debug, Clone)]
pub(crate) struct SimInfo {
    /// Its chat URL, or URLs separated by commas (what `--wa-url` takes).
    pub(crate) ws_url: String,
    pub(crate) control: SocketAddr,
    pub(crate) root_key: String,
}

/// Sessions per chat port of the simulator: one loopback address pair
/// gives a client about 28,000 ephemeral ports.
const SESSIONS_PER_SIM_PORT: usize = 20_000;

/// Chat ports the simulator needs for `sessions`.
pub(crate) fn sim_ports_for(sessions: usize) -> usize {
    sessions.div_ceil(SESSIONS_PER_SIM_PORT).max(1)
}

/// Starts `wagate sim` on ephemeral loopback ports, its chat on `ports`
/// of them (the gateway spreads its sessions over them).
pub(crate) async fn start_sim(
    bin: &Path,
    dir: &Path,
    ports: usize,
) -> Result<(Child, SimInfo), LoadError> {
    let mut command = command(bin, &dir.join("sim.log"), "simulator")?;
    command.args([
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--control",
        "127.0.0.1:0",
        "--seed",
        "1",
    ]);
    for _ in 1..ports {
        command.args(["--also-listen", "127.0.0.1:0"]);
    }
    let (child, stdout) = spawn(command, bin, "simulator")?;
    let mut lines = BufReader::new(stdout).lines();
    let (mut ws_url, mut control, mut root_key) = (None, None, None);
    let ready = async {
        while ws_url.is_none() || control.is_none() || root_key.is_none() {
            let Ok(Some(line)) = lines.next_line().await else {
                return Err(LoadError::NotReady { what: "simulator" });
            };
            if let Some(v) = line.strip_prefix("ws_url=") {
                // `ws_urls=` (every port, printed next) replaces it.
                ws_url.get_or_insert_with(|| v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("ws_urls=") {
                ws_url = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("control=") {
                control = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("root_public_key=") {
                root_key = Some(v.trim().to_owned());
            }
        }
        Ok(())
    };
    within(READY_WITHIN, "the simulator printing its addresses", ready).await??;
    drain(lines);
    let info = SimInfo {
        ws_url: ws_url.unwrap_or_default(),
        control: control.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        root_key: root_key.unwrap_or_default(),
    };
    Ok((child, info))
}

/// Starts a `redis-server` on an ephemeral loopback port, keeping its data
/// in `dir` with an append-only file fsynced on every write (what the
/// gateway's durability rules require of it). Returns it and its URL.
pub(crate) async fn start_redis(dir: &Path, log: &Path) -> Result<(Child, String), LoadError> {
    let (child, url, _) = start_redis_on(dir, log, None).await?;
    Ok((child, url))
}

/// [`start_redis`] on `port` (a restart on the same files and address), or
/// an ephemeral one; also returns the port.
pub(crate) async fn start_redis_on(
    dir: &Path,
    log: &Path,
    port: Option<u16>,
) -> Result<(Child, String, u16), LoadError> {
    let bin = Path::new("redis-server");
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Spawn {
        what: "redis-server",
        bin: dir.to_owned(),
        source,
    })?;
    let port = match port {
        Some(port) => port,
        None => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|source| LoadError::Spawn {
                what: "redis-server",
                bin: bin.to_owned(),
                source,
            })?
            .port(),
    };
    let mut command = command(bin, log, "redis-server")?;
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ])
        .args(["--logfile", ""]);
    let (child, stdout) = spawn(command, bin, "redis-server")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        loop {
            match lines.next_line().await {
                Ok(Some(line)) if line.contains("Ready to accept connections") => return Ok(()),
                Ok(Some(_)) => {}
                _ => {
                    return Err(LoadError::NotReady {
                        what: "redis-server",
                    })
                }
            }
        }
    };
    within(READY_WITHIN, "redis-server getting ready", ready).await??;
    drain(lines);
    Ok((child, format!("redis://127.0.0.1:{port}"), port))
}

/// Options of one `wagate serve`.
pub(crate) struct GatewayOptions<'a> {
    pub(crate) data_dir: &'a Path,
    pub(crate) log: PathBuf,
    pub(crate) sim: &'a SimInfo,
    pub(crate) max_sessions: usize,
    pub(crate) handshakes_per_second: u32,
    /// Store in this Redis instead of SQLite in `data_dir`.
    pub(crate) redis_url: Option<&'a str>,
    /// More `wagate serve` arguments.
    pub(crate) extra: Vec<String>,
}

/// A started `wagate serve`: the process, its API address, and its
/// Prometheus endpoint when `--metrics-listen` was among the arguments.
pub(crate) struct StartedGateway {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: Option<SocketAddr>,
}

/// Starts `wagate serve` on an ephemeral loopback port with an SQLite store
/// (the default, with fsync) in `data_dir`, or storing in the given Redis.
pub(crate) async fn start_gateway(
    bin: &Path,
    opts: GatewayOptions<'_>,
) -> Result<StartedGateway, LoadError> {
    let wants_metrics = opts.extra.iter().any(|a| a == "--metrics-listen");
    let mut command = command(bin, &opts.log, "gateway")?;
    command
        .env("WAGATE_STORE_KEY", STORE_KEY)
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(opts.data_dir)
        .args(["--wa-url", &opts.sim.ws_url])
        .args(["--wa-root-key", &opts.sim.root_key])
        .args(["--max-sessions", &opts.max_sessions.to_string()])
        .args([
            "--handshakes-per-second",
            &opts.handshakes_per_second.to_string(),
        ])
        // No load balancer waits for the health check here.
        .args(["--drain-seconds", "0"]);
    if let Some(url) = opts.redis_url {
        command.args(["--redis-url", url]);
    }
    command.args(&opts.extra);
    let (child, stdout) = spawn(command, bin, "gateway")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        let (mut addr, mut metrics) = (None, None);
        while addr.is_none() || (wants_metrics && metrics.is_none()) {
            let Ok(Some(line)) = lines.next_line().await else {
                return Err(LoadError::NotReady { what: "gateway" });
            };
            if let Some(a) = line
                .strip_prefix("wagate listening on ")
                .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            {
                addr = Some(a);
            } else if let Some(a) = line
                .strip_prefix("metrics at http://")
                .and_then(|a| a.trim().strip_suffix("/metrics"))
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                metrics = Some(a);
            }
        }
        Ok((addr, metrics))
    };
    let (addr, metrics) = within(READY_WITHIN, "the gateway printing its address", ready).await??;
    drain(lines);
    Ok(StartedGateway {
        child,
        addr: addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        metrics,
    })
}

/// The value of counter `name` on a gateway's Prometheus endpoint; `None`
/// when the endpoint does not answer within a second or lacks it.
pub(crate) async fn scrape_counter(metrics: SocketAddr, name: &str) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let scrape = async {
        let mut socket = tokio::net::TcpStream::connect(metrics).await.ok()?;
        socket
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        socket.read_to_string(&mut text).await.ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_secs(1), scrape)
        .await
        .ok()
        .flatten()
}

/// The last `n` lines of a child's log, for an error report.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn command(bin: &Path, log: &Path, what: &'static str) -> Result<Command, LoadError> {
    let log = std::fs::File::create(log).map_err(|source| LoadError::Spawn {
        what,
        bin: log.to_owned(),
        source,
    })?;
    let mut command = Command::new(bin);
    // The children read their configuration from WAGATE_* variables too: a
    // stray API key or data dir in this shell must not change the run.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WAGATE_") {
            command.env_remove(name);
        }
    }
    // Plain text in the log files that an error report quotes.
    command.env("NO_COLOR", "1");
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it runs in the forked child
    // before exec and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            // Die with this tool, even when it is killed without a chance
            // to clean up. The signal follows the thread that spawned the
            // child: the children are spawned from the future `main`
            // blocks on, so that thread is the main thread.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

fn spawn(
    mut command: Command,
    bin: &Path,
    what: &'static str,
) -> Result<(Child, ChildStdout), LoadError> {
    let mut child = command.spawn().map_err(|source| LoadError::Spawn {
        what,
        bin: bin.to_owned(),
        source,
    })?;
    let stdout = child.stdout.take().ok_or(LoadError::NotReady { what })?;
    let pid = child.id().ok_or(LoadError::NotReady { what })?;
    Ok((Child { what, child, pid }, stdout))
}

/// Keeps reading a child's stdout so it never blocks on a full pipe.
fn drain(mut lines: tokio::io::Lines<BufReader<ChildStdout>>) {
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
}

/// `future`, or a stall error naming `what` after `limit`.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> Result<T, LoadError> {
    tokio::time::timeout(limit, future)
        .await
        .map_err(|_| LoadError::Stalled {
            what: what.to_owned(),
            after: limit,
        })
}
