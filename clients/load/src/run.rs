//! One load run, step by step: start the simulator and the gateway, pair
//! the sessions, measure idle memory and CPU, inbound throughput, event
//! latency and Send, sends to a large group, then restart the gateway and
//! time its recovery.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::clients;
use crate::error::LoadError;
use crate::group_inbound;
use crate::groups;
use crate::history;
use crate::inbound::{self, Pids};
use crate::media;
use crate::pairing;
use crate::procs::{self, Child, GatewayOptions, SimInfo};
use crate::procstat::{self, CpuMeter};
use crate::proto::gateway::ListSessionsRequest;
use crate::proto::sim::ListAccountsRequest;
use crate::release;
use crate::report::{Report, Restart};
use crate::sends;

/// What to run, resolved from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) quick: bool,
    pub(crate) bin: PathBuf,
    pub(crate) sessions: usize,
    pub(crate) pair_concurrency: usize,
    /// Chat ports of the simulator, the sessions spread over them.
    pub(crate) sim_ports: usize,
    pub(crate) handshakes_per_second: u32,
    pub(crate) idle: Duration,
    pub(crate) messages_per_session: u32,
    pub(crate) latency_rate: f64,
    pub(crate) latency_messages: usize,
    pub(crate) sends: usize,
    /// Concurrencies of the Send figures.
    pub(crate) send_concurrency: Vec<usize>,
    /// Size of the video of the media step; 0 = no media step.
    pub(crate) media_bytes: u64,
    pub(crate) history_messages: u32,
    pub(crate) group_members: usize,
    pub(crate) group_sends: usize,
    pub(crate) stall: Duration,
    /// Store in a redis-server started for the run.
    pub(crate) redis: bool,
}

/// The child processes and files of a run. Dropping it kills the children
/// and removes the temporary directory.
pub(crate) struct Procs {
    pub(crate) dir: tempfile::TempDir,
    sim: Option<Child>,
    gateway: Option<Child>,
    redis: Option<(Child, String)>,
    logs: Vec<PathBuf>,
}

impl Procs {
    pub(crate) fn new() -> Result<Self, LoadError> {
        Ok(Self {
            dir: tempfile::Builder::new()
                .prefix("wagate-load-")
                .tempdir()
                .map_err(LoadError::TempDir)?,
            sim: None,
            gateway: None,
            redis: None,
            logs: Vec::new(),
        })
    }

    /// The end of every child's log, to explain a failed run.
    pub(crate) fn log_tails(&self) -> String {
        self.logs
            .iter()
            .map(|log| {
                let name = log.file_name().unwrap_or_default().to_string_lossy();
                format!(
                    "--- last lines of {name} ---\n{}\n",
                    procs::log_tail(log, 15)
                )
            })
            .collect()
    }

    /// Stops the children with SIGTERM (the drop kills whatever remains).
    pub(crate) async fn shutdown(&mut self) {
        let redis = self.redis.take().map(|(child, _)| child);
        for child in [self.gateway.take(), self.sim.take(), redis]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            if let Err(e) = child.terminate(Duration::from_secs(30)).await {
                eprintln!("wagate-load: {e}");
            }
        }
    }

    /// Kills the children and reaps them, for a run that failed.
    pub(crate) async fn kill(&mut self) {
        let redis = self.redis.take().map(|(child, _)| child);
        for child in [self.gateway.take(), self.sim.take(), redis]
            .into_iter()
            .flatten()
        {
            child.kill().await;
        }
    }

    async fn start_gateway(
        &mut self,
        plan: &Plan,
        sim: &SimInfo,
    ) -> Result<(u32, std::net::SocketAddr), LoadError> {
        let data_dir = self.dir.path().join("data");
        let log = self
            .dir
            .path()
            .join(format!("gateway-{}.log", self.logs.len()));
        self.logs.push(log.clone());
        let procs::StartedGateway { child, addr, .. } = procs::start_gateway(
            &plan.bin,
            GatewayOptions {
                data_dir: &data_dir,
                log,
                sim,
                max_sessions: plan.sessions + 16,
                handshakes_per_second: plan.handshakes_per_second,
                redis_url: self.redis.as_ref().map(|(_, url)| url.as_str()),
                extra: Vec::new(),
            },
        )
        .await?;
        let pid = child.pid();
        self.gateway = Some(child);
        Ok((pid, addr))
    }
}

/// Runs every step and returns the figures.
pub(crate) async fn run(plan: &Plan, procs: &mut Procs) -> Result<Report, LoadError> {
    let clock = Instant::now();
    let step = |what: &str| eprintln!("[{:>7.1} s] {what}", clock.elapsed().as_secs_f64());
    let n = plan.sessions;

    step("starting the simulator and the gateway");
    procs.logs.push(procs.dir.path().join("sim.log"));
    let (sim_child, info) = procs::start_sim(&plan.bin, procs.dir.path(), plan.sim_ports).await?;
    let sim_pid = sim_child.pid();
    procs.sim = Some(sim_child);
    let redis_pid = if plan.redis {
        let log = procs.dir.path().join("redis.log");
        procs.logs.push(log.clone());
        let (child, url) = procs::start_redis(&procs.dir.path().join("redis"), &log).await?;
        let pid = child.pid();
        procs.redis = Some((child, url));
        Some(pid)
    } else {
        None
    };
    let (gateway_pid, addr) = procs.start_gateway(plan, &info).await?;
    let gateway = clients::gateway(addr).await?;
    let sim = clients::sim(info.control).await?;
    // One call each, so the baseline includes a served connection.
    gateway
        .clone()
        .list_sessions(ListSessionsRequest {})
        .await
        .map_err(LoadError::rpc("gateway ListSessions"))?;
    sim.clone()
        .list_accounts(ListAccountsRequest::default())
        .await
        .map_err(LoadError::rpc("simulator ListAccounts"))?;
    let gateway_zero = procstat::memory(gateway_pid)?;
    let sim_zero = procstat::memory(sim_pid)?;

    step(&format!(
        "pairing {n} sessions, {} at a time",
        plan.pair_concurrency
    ));
    let paired = pairing::pair_all(&gateway, &sim, n, plan.pair_concurrency).await?;
    pairing::wait_all_connected(&gateway, n, Instant::now(), plan.stall).await?;

    step(&format!(
        "idle for {:.0} s: CPU and memory",
        plan.idle.as_secs_f64()
    ));
    let gateway_cpu = CpuMeter::start(gateway_pid)?;
    let sim_cpu = CpuMeter::start(sim_pid)?;
    // A measuring window, not a wait for something to happen.
    tokio::time::sleep(plan.idle).await;
    let gateway_idle_cpu = gateway_cpu.percent()?;
    let sim_idle_cpu = sim_cpu.percent()?;
    let gateway_idle = procstat::memory(gateway_pid)?;
    let sim_idle = procstat::memory(sim_pid)?;

    step("inbound: warm-up, one text per session");
    inbound::warm_up(&gateway, &sim, n, plan.stall).await?;
    step(&format!(
        "inbound: {} texts per session",
        plan.messages_per_session
    ));
    let pids = Pids {
        gateway: gateway_pid,
        sim: sim_pid,
        redis: redis_pid,
    };
    let throughput = inbound::throughput(
        &gateway,
        &sim,
        n,
        plan.messages_per_session,
        pids,
        plan.stall,
    )
    .await?;
    step(&format!(
        "event latency: {} texts at {:.0}/s",
        plan.latency_messages, plan.latency_rate
    ));
    let latency = inbound::latency(
        &gateway,
        &sim,
        n,
        plan.latency_rate,
        plan.latency_messages,
        plan.stall,
    )
    .await?;

    step("group inbound: one group per session, warm-up text each");
    let groups_in = group_inbound::prepare(&gateway, &sim, n, plan.stall).await?;
    step(&format!(
        "group inbound: {} group texts per session",
        plan.messages_per_session
    ));
    let group_throughput = group_inbound::throughput(
        &gateway,
        &sim,
        &groups_in,
        plan.messages_per_session,
        pids,
        plan.stall,
    )
    .await?;

    let run_id = format!("{}", std::process::id());
    step("send: warm-up, one per session");
    sends::warm_up(&gateway, n, pids, &run_id).await?;
    let mut send_figures = Vec::new();
    for (k, &concurrency) in plan.send_concurrency.iter().enumerate() {
        step(&format!(
            "send: {} at concurrency {concurrency}",
            plan.sends
        ));
        // Keys of their own per step: a concurrency listed twice must send
        // again, not be answered from the first step's records.
        let keys = format!("{run_id}-{k}");
        send_figures.push(sends::measure(&gateway, n, pids, concurrency, plan.sends, &keys).await?);
    }

    let media = if plan.media_bytes > 0 {
        step(&format!(
            "media: a {} MB video out through UploadMedia and Send",
            plan.media_bytes / 1_000_000
        ));
        Some(media::send_video(&gateway, gateway_pid, plan.media_bytes).await?)
    } else {
        None
    };

    let history = if plan.history_messages > 0 {
        step(&format!(
            "history: a session paired to a phone with {} messages of history",
            plan.history_messages
        ));
        Some(
            history::measure(
                &gateway,
                &sim,
                gateway_pid,
                plan.history_messages,
                plan.stall,
            )
            .await?,
        )
    } else {
        None
    };

    let group = if plan.group_members > 0 {
        step(&format!(
            "group: {} members with two devices each, 1 + {} sends",
            plan.group_members, plan.group_sends
        ));
        Some(
            groups::measure(
                &gateway,
                &sim,
                plan.group_members,
                plan.group_sends,
                plan.stall,
            )
            .await?,
        )
    } else {
        None
    };

    step("restart: SIGTERM, start again on the same data dir");
    drop(gateway);
    let shutdown = match procs.gateway.take() {
        Some(mut child) => child.terminate(plan.stall).await?,
        None => Duration::ZERO,
    };
    let restarted = Instant::now();
    let (gateway_pid, addr) = procs.start_gateway(plan, &info).await?;
    // Threads sampled until every session is back: the peak of the restart.
    let (stop_sampling, mut sampling_stopped) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut peak = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Ok(now) = procstat::memory(gateway_pid) {
                        peak = peak.max(now.threads);
                    }
                }
                _ = &mut sampling_stopped => return peak,
            }
        }
    });
    let gateway = clients::gateway(addr).await?;
    let connected = pairing::wait_all_connected(&gateway, n, restarted, plan.stall).await?;
    let _ = stop_sampling.send(());
    let threads = procstat::memory(gateway_pid)?.threads;
    let restart = Restart {
        shutdown_seconds: shutdown.as_secs_f64(),
        connected_seconds: connected.as_secs_f64(),
        cpu_ms_per_session: procstat::cpu_seconds(gateway_pid)? * 1e3 / n.max(1) as f64,
        threads,
        peak_threads: sampler.await.unwrap_or(0).max(threads),
    };
    step("memory: 90 % of the sessions disconnect");
    let mut released = release::disconnect_most(&gateway, n, gateway_pid, plan.stall).await?;
    step("memory: a new gateway process with the sessions as they are now");
    drop(gateway);
    if let Some(mut child) = procs.gateway.take() {
        child.terminate(plan.stall).await?;
    }
    let restarted = Instant::now();
    let (gateway_pid, addr) = procs.start_gateway(plan, &info).await?;
    let gateway = clients::gateway(addr).await?;
    pairing::wait_all_connected(&gateway, released.sessions_after, restarted, plan.stall).await?;
    released.fresh = Some(release::watch(gateway_pid).await?);
    drop(gateway);
    step("done");

    Ok(Report {
        store: if plan.redis { "Redis" } else { "SQLite" },
        mode: if plan.quick { "quick" } else { "full" },
        binary: plan.bin.display().to_string(),
        cores: std::thread::available_parallelism().map_or(0, |c| c.get()),
        sessions: n,
        pair_seconds: paired.as_secs_f64(),
        gateway_zero,
        sim_zero,
        gateway_idle,
        sim_idle,
        idle_seconds: plan.idle.as_secs_f64(),
        gateway_idle_cpu,
        sim_idle_cpu,
        inbound: throughput,
        group_inbound: group_throughput,
        latency,
        sends: send_figures,
        media,
        history,
        group,
        restart,
        released,
    })
}
