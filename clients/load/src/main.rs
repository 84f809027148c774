//! `wagate-load`: starts a separate `wagate sim` and `wagate serve` on
//! loopback, pairs N sessions and prints what they cost and how fast they
//! go: memory per idle session, idle CPU, inbound messages/s with CPU per
//! process, event delivery latency, Send latency and rate, sends to a large
//! group, restart time.

mod chaos;
mod clients;
mod error;
mod group_inbound;
mod groups;
mod history;
mod inbound;
mod media;
mod pairing;
mod procs;
mod procstat;
mod proto;
mod release;
mod report;
mod run;
mod sends;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::error::LoadError;
use crate::run::{Plan, Procs};

#[derive(Parser, Debug)]
#[command(
    name = "wagate-load",
    version,
    about = "Load tool: a separate wagate simulator and gateway, N paired sessions, a table of figures"
)]
struct Cli {
    /// Small and short: 20 sessions, few messages, short windows; checks
    /// that every step completes (about half a minute with debug binaries).
    #[arg(long)]
    quick: bool,
    /// The `wagate` binary [default: CARGO_TARGET_DIR/release/wagate; in
    /// quick mode the `wagate` beside this tool's binary when present].
    #[arg(long)]
    wagate_bin: Option<PathBuf>,
    /// Sessions to pair [default: 1000; quick: 20].
    #[arg(long)]
    sessions: Option<usize>,
    /// Pairings in progress at once.
    #[arg(long, default_value_t = 16)]
    pair_concurrency: usize,
    /// Chat ports of the simulator, the gateway's sessions spread over
    /// them (one loopback address pair holds about 28,000 connections)
    /// [default: one per 20,000 sessions; quick: 2].
    #[arg(long)]
    sim_ports: Option<usize>,
    /// The gateway's handshake pacer (also paces the restart).
    #[arg(long, default_value_t = 1000)]
    handshakes_per_second: u32,
    /// Idle window for CPU and memory, seconds [default: 10; quick: 1].
    #[arg(long)]
    idle_seconds: Option<f64>,
    /// Texts each peer sends for the inbound figure [default: 50; quick: 5].
    #[arg(long)]
    messages_per_session: Option<u32>,
    /// Paced rate of the latency measurement, texts per second in total
    /// [default: 1000; quick: 200, below what debug binaries sustain].
    #[arg(long)]
    latency_rate: Option<f64>,
    /// Texts of the latency measurement [default: 20000; quick: 100]: at
    /// 1,000/s a 20 s window, so that one stall of the disk (tens of ms,
    /// tens of texts late) does not decide the p99 alone.
    #[arg(long)]
    latency_messages: Option<usize>,
    /// Sends at each concurrency (1, 8, 64) [default: 10000; quick: 64]: at
    /// concurrency 64 about two seconds of Sends, long enough for the rate
    /// and the CPU and storage figures beside it to be steady ones.
    #[arg(long)]
    sends: Option<usize>,
    /// The concurrencies of the Send figures, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 8, 64])]
    send_concurrency: Vec<usize>,
    /// Size of the video sent through the gateway for the media memory
    /// figure, in MB (10^6 bytes) [default: 100; quick: 8]; 0 skips it.
    #[arg(long)]
    media_mb: Option<u64>,
    /// Messages of the seeded history a newly paired session receives for
    /// the history memory figure [default: 10000; quick: 1000]; 0 skips it.
    #[arg(long)]
    history_messages: Option<u32>,
    /// Virtual members (two devices each) of the group session 0 sends to;
    /// 0 skips the group step [default: 256; quick: 8].
    #[arg(long)]
    group_members: Option<usize>,
    /// Sends to the group after the first one (which distributes the key)
    /// [default: 200; quick: 10].
    #[arg(long)]
    group_sends: Option<usize>,
    /// Give up when a step makes no progress for this long, seconds.
    #[arg(long, default_value_t = 60)]
    stall_seconds: u64,
    /// Give up after this long in all, seconds [default: 3600; quick: 120].
    #[arg(long)]
    timeout_seconds: Option<u64>,
    /// Store in a redis-server this tool starts (loopback, append-only file
    /// with fsync on every write) instead of the gateway's SQLite.
    #[arg(long)]
    redis: bool,
    /// Chaos instead of figures: gateways on one Redis, traffic both ways,
    /// replicas killed and restarted, one stopped past its lease, Redis
    /// restarted; fails on any lost or doubled message [sessions default:
    /// 300; quick: 12].
    #[arg(long)]
    chaos: bool,
    /// Chaos: gateway replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Chaos: replicas killed (SIGKILL) and restarted, one after another
    /// [default: 20; quick: 2].
    #[arg(long)]
    kills: Option<usize>,
    /// Chaos: replicas stopped (SIGSTOP) past their lease, then resumed
    /// [default: 1].
    #[arg(long)]
    stops: Option<usize>,
    /// Chaos: Redis restarts [default: 5; quick: 1].
    #[arg(long)]
    redis_restarts: Option<usize>,
    /// Chaos: the gateways' lease, seconds [default: 4; quick: 3].
    #[arg(long)]
    lease_seconds: Option<u64>,
    /// Print the figures as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl Cli {
    fn plan(&self) -> Result<Plan, LoadError> {
        let q = self.quick;
        let bin = match &self.wagate_bin {
            Some(bin) => bin.clone(),
            None => default_bin(self.quick),
        };
        if !bin.is_file() {
            return Err(LoadError::Setup(format!(
                "no wagate binary at {} (build it with `cargo build {}-p wagate`, or pass --wagate-bin)",
                bin.display(),
                if self.quick { "" } else { "--release " }
            )));
        }
        let latency_rate = self.latency_rate.unwrap_or(pick(q, 200.0, 1000.0));
        if !latency_rate.is_finite() || latency_rate <= 0.0 {
            return Err(LoadError::Setup("--latency-rate must be above 0".into()));
        }
        let sessions = self.sessions.unwrap_or(pick(q, 20, 1000));
        if sessions == 0 {
            return Err(LoadError::Setup("--sessions must be at least 1".into()));
        }
        Ok(Plan {
            quick: self.quick,
            bin,
            sessions,
            pair_concurrency: self.pair_concurrency.max(1),
            sim_ports: self
                .sim_ports
                .unwrap_or(if q { 2 } else { procs::sim_ports_for(sessions) })
                .max(1),
            handshakes_per_second: self.handshakes_per_second.max(1),
            idle: Duration::from_secs_f64(self.idle_seconds.unwrap_or(pick(q, 1.0, 10.0)).max(0.0)),
            messages_per_session: self.messages_per_session.unwrap_or(pick(q, 5, 50)).max(1),
            latency_rate,
            latency_messages: self.latency_messages.unwrap_or(pick(q, 100, 20_000)).max(1),
            sends: self.sends.unwrap_or(pick(q, 64, 10_000)).max(1),
            send_concurrency: self.send_concurrency.iter().map(|c| (*c).max(1)).collect(),
            media_bytes: self.media_mb.unwrap_or(pick(q, 8, 100)) * 1_000_000,
            history_messages: self.history_messages.unwrap_or(pick(q, 1000, 10_000)),
            group_members: self.group_members.unwrap_or(pick(q, 8, 256)),
            group_sends: self.group_sends.unwrap_or(pick(q, 10, 200)),
            stall: Duration::from_secs(self.stall_seconds.max(1)),
            redis: self.redis,
        })
    }
}

/// `quick` in quick mode, else `full`.
fn pick<T>(quick_mode: bool, quick: T, full: T) -> T {
    if quick_mode {
        quick
    } else {
        full
    }
}

/// The release `wagate` of the target directory; in quick mode, the one
/// built with this tool (the same profile) when it exists.
fn default_bin(quick: bool) -> PathBuf {
    let exe = std::env::current_exe().ok();
    let beside = exe
        .as_ref()
        .and_then(|e| e.parent())
        .map(|dir| dir.join("wagate"));
    if quick {
        if let Some(bin) = beside.as_ref().filter(|b| b.is_file()) {
            return bin.clone();
        }
    }
    // This tool lives in TARGET/<profile>/ when cargo built it.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            exe.as_ref()
                .and_then(|e| e.parent()?.parent())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("release").join("wagate")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.chaos {
        return chaos_main(&cli);
    }
    let plan = match cli.plan() {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("wagate-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit =
        Duration::from_secs(
            cli.timeout_seconds
                .unwrap_or(if cli.quick { 120 } else { 3600 }),
        );
    match procstat::raise_open_files() {
        Ok(files) => eprintln!("wagate-load: open-file limit {files}"),
        Err(e) => eprintln!("wagate-load: keeping the open-file limit: {e}"),
    }
    // One thread: the tool stands for the backends and shares the cores
    // with the processes it measures, so it should take as little of them
    // as it can (no hand-offs between workers).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wagate-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let mut procs = match Procs::new() {
            Ok(procs) => procs,
            Err(e) => {
                eprintln!("wagate-load: {e}");
                return ExitCode::FAILURE;
            }
        };
        let outcome = tokio::select! {
            done = tokio::time::timeout(limit, run::run(&plan, &mut procs)) => {
                done.unwrap_or(Err(LoadError::Stalled { what: "the whole run".into(), after: limit }))
            }
            e = interrupted() => Err(e),
        };
        match outcome {
            Ok(report) => {
                procs.shutdown().await;
                if cli.json {
                    println!("{:#}", report.json());
                } else {
                    println!("{}", report.table());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wagate-load: {e}");
                procs.kill().await;
                eprint!("{}", procs.log_tails());
                ExitCode::FAILURE
            }
        }
    })
}

/// Resolves on SIGINT or SIGTERM, so the children are stopped with us.
async fn interrupted() -> LoadError {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            LoadError::Setup("interrupted".into())
        }
        (Err(e), _) | (_, Err(e)) => LoadError::Setup(format!("cannot watch for signals: {e}")),
    }
}

/// `--chaos`: runs the chaos plan and prints what it counted.
fn chaos_main(cli: &Cli) -> ExitCode {
    let q = cli.quick;
    let bin = match &cli.wagate_bin {
        Some(bin) => bin.clone(),
        None => default_bin(q),
    };
    if !bin.is_file() {
        eprintln!("wagate-load: no wagate binary at {}", bin.display());
        return ExitCode::FAILURE;
    }
    let plan = chaos::ChaosPlan {
        bin,
        sessions: cli.sessions.unwrap_or(pick(q, 12, 300)).max(1),
        replicas: cli.replicas.max(2),
        kills: cli.kills.unwrap_or(pick(q, 2, 20)),
        stops: cli.stops.unwrap_or(1),
        redis_restarts: cli.redis_restarts.unwrap_or(pick(q, 1, 5)),
        lease_seconds: cli.lease_seconds.unwrap_or(pick(q, 3, 4)).max(2),
        pair_concurrency: cli.pair_concurrency.max(1),
        stall: Duration::from_secs(cli.stall_seconds.max(1)),
    };
    let limit = Duration::from_secs(cli.timeout_seconds.unwrap_or(if q { 240 } else { 3600 }));
    if let Err(e) = procstat::raise_open_files() {
        eprintln!("wagate-load: keeping the open-file limit: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wagate-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let procs = match Procs::new() {
            Ok(procs) => procs,
            Err(e) => {
                eprintln!("wagate-load: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut cluster = chaos::Cluster::new(procs.dir.path(), &plan.bin);
        let outcome = tokio::select! {
            done = tokio::time::timeout(limit, chaos::run(&plan, &mut cluster)) => {
                done.unwrap_or(Err(LoadError::Stalled { what: "the whole run".into(), after: limit }))
            }
            e = interrupted() => Err(e),
        };
        cluster.kill().await;
        match outcome {
            Ok(report) => {
                println!("{}", report.table());
                if report.clean() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!("wagate-load: chaos: messages were lost, doubled or fought over");
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("wagate-load: {e}");
                eprintln!("(logs in {})", procs.dir.path().display());
                // Kept for a look: the logs explain the failure.
                let _ = procs.dir.keep();
                ExitCode::FAILURE
            }
        }
    })
}
