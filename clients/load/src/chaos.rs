//! `wagate-load --chaos`: a cluster of gateways on one Redis, a separate simulator, paired
//! sessions with traffic both ways, and faults while it flows: replicas killed with SIGKILL and
//! restarted, one stopped (SIGSTOP) past its lease and resumed, Redis restarted. Then it counts
//! what a backend would have seen: inbound texts lost or delivered twice on `Events` (followed
//! on one replica after another, resumed from its cursor each time), per-session sequence
//! numbers out of step, texts sent through `Send` (retried with their idempotency keys on any
//! replica) missing or doubled at the recipient, `replaced` fights, and how long each fault
//! left sessions offline. Any loss or duplicate fails the run.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::clients::{self, own_phone, peer_phone, session_id, Gateway, Sim};
use crate::error::LoadError;
use crate::procs::{self, Child, GatewayOptions, SimInfo};
use crate::proto::gateway::{
    event, events_request, EventsRequest, ListSessionsRequest, SendRequest, SessionState,
};
use crate::proto::sim::InboxRequest;

/// What a chaos run does.
#[derive(Debug, Clone)]
pub(crate) struct ChaosPlan {
    pub(crate) bin: PathBuf,
    pub(crate) sessions: usize,
    pub(crate) replicas: usize,
    pub(crate) kills: usize,
    pub(crate) stops: usize,
    pub(crate) redis_restarts: usize,
    pub(crate) lease_seconds: u64,
    pub(crate) pair_concurrency: usize,
    pub(crate) stall: Duration,
}

/// What a chaos run counted.
#[derive(Debug, Default)]
pub(crate) struct ChaosReport {
    sessions: usize,
    replicas: usize,
    faults: Vec<(String, Duration)>,
    inbound_sent: usize,
    inbound_lost: usize,
    inbound_duplicates: usize,
    seq_breaks: usize,
    sends_ok: usize,
    sends_lost: usize,
    sends_duplicated: usize,
    replaced: usize,
    stream_resumes: usize,
    /// Commits the store refused to a former owner, read from each
    /// gateway's metrics before it is killed and at the end. None of them
    /// was written: the check is inside the store's commit script.
    fenced_refused: u64,
}

impl ChaosReport {
    /// Whether anything was lost, doubled or fought over.
    pub(crate) fn clean(&self) -> bool {
        self.inbound_lost == 0
            && self.inbound_duplicates == 0
            && self.seq_breaks == 0
            && self.sends_lost == 0
            && self.sends_duplicated == 0
            && self.replaced == 0
    }

    pub(crate) fn table(&self) -> String {
        let worst = self
            .faults
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        let mut rows = vec![
            (
                "Cluster".to_owned(),
                format!(
                    "{} gateways on one Redis, {} sessions",
                    self.replicas, self.sessions
                ),
            ),
            (
                "Faults".to_owned(),
                self.faults
                    .iter()
                    .map(|(what, _)| what.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "All sessions CONNECTED again after a fault: worst".to_owned(),
                format!("{:.1} s", worst.as_secs_f64()),
            ),
            (
                "Inbound texts: sent / lost / delivered twice".to_owned(),
                format!(
                    "{} / {} / {}",
                    self.inbound_sent, self.inbound_lost, self.inbound_duplicates
                ),
            ),
            (
                "Events: sequence numbers out of step".to_owned(),
                self.seq_breaks.to_string(),
            ),
            (
                "Events stream resumed on another gateway".to_owned(),
                format!("{} times", self.stream_resumes),
            ),
            (
                "Sends confirmed / missing / doubled at the recipient".to_owned(),
                format!(
                    "{} / {} / {}",
                    self.sends_ok, self.sends_lost, self.sends_duplicated
                ),
            ),
            (
                "`replaced` disconnects (two gateways on one device)".to_owned(),
                self.replaced.to_string(),
            ),
            (
                "Commits of a former owner refused by fencing".to_owned(),
                self.fenced_refused.to_string(),
            ),
        ];
        for (what, took) in &self.faults {
            rows.push((
                format!("  {what}: all CONNECTED after"),
                format!("{:.1} s", took.as_secs_f64()),
            ));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::from("wagate-load, chaos\n\n");
        for (k, v) in rows {
            out.push_str(&format!("{k:<width$}  {v}\n"));
        }
        out
    }
}

/// One gateway of the cluster.
struct Replica {
    child: Option<Child>,
    addr: SocketAddr,
    /// Its Prometheus endpoint, read for the commits fencing refused.
    metrics: Option<SocketAddr>,
    data_dir: PathBuf,
    log: usize,
}

/// The processes of a chaos run.
pub(crate) struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    sim_info: Option<SimInfo>,
    sim: Option<Child>,
    redis: Option<Child>,
    redis_port: u16,
    redis_url: String,
    replicas: Vec<Replica>,
    lease_seconds: u64,
    max_sessions: usize,
    logs: usize,
}

impl Cluster {
    pub(crate) fn new(dir: &Path, bin: &Path) -> Self {
        Cluster {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            sim_info: None,
            sim: None,
            redis: None,
            redis_port: 0,
            redis_url: String::new(),
            replicas: Vec::new(),
            lease_seconds: 4,
            max_sessions: 0,
            logs: 0,
        }
    }

    /// Stops everything (the drop of each child kills what remains).
    pub(crate) async fn kill(&mut self) {
        for replica in &mut self.replicas {
            if let Some(child) = replica.child.take() {
                child.kill().await;
            }
        }
        for child in [self.sim.take(), self.redis.take()].into_iter().flatten() {
            child.kill().await;
        }
    }

    async fn start_redis(&mut self) -> Result<(), LoadError> {
        let log = self.dir.join(format!("redis-{}.log", self.logs));
        self.logs += 1;
        let port = (self.redis_port != 0).then_some(self.redis_port);
        let (child, url, port) = procs::start_redis_on(&self.dir.join("redis"), &log, port).await?;
        self.redis = Some(child);
        self.redis_url = url;
        self.redis_port = port;
        Ok(())
    }

    async fn start_replica(&mut self, i: usize) -> Result<(), LoadError> {
        let sim = self
            .sim_info
            .as_ref()
            .ok_or_else(|| LoadError::Setup("no simulator".into()))?;
        let replica = &mut self.replicas[i];
        let log = self.dir.join(format!("gateway-{i}-{}.log", replica.log));
        replica.log += 1;
        let started = procs::start_gateway(
            &self.bin,
            GatewayOptions {
                data_dir: &replica.data_dir,
                log,
                sim,
                max_sessions: self.max_sessions,
                handshakes_per_second: 1000,
                redis_url: Some(&self.redis_url),
                extra: vec![
                    "--lease-seconds".into(),
                    self.lease_seconds.to_string(),
                    "--metrics-listen".into(),
                    "127.0.0.1:0".into(),
                ],
            },
        )
        .await?;
        replica.child = Some(started.child);
        replica.addr = started.addr;
        replica.metrics = started.metrics;
        Ok(())
    }

    /// Commits refused by fencing on replica `i` since it started (0 when
    /// its endpoint does not answer).
    async fn fenced_writes(&self, i: usize) -> u64 {
        match self.replicas.get(i).and_then(|r| r.metrics) {
            Some(metrics) => procs::scrape_counter(metrics, "wagate_fenced_writes_total")
                .await
                .unwrap_or(0),
            None => 0,
        }
    }

    fn live(&self) -> Vec<SocketAddr> {
        self.replicas
            .iter()
            .filter(|r| r.child.is_some())
            .map(|r| r.addr)
            .collect()
    }
}

/// Sessions CONNECTED on the gateways that answer within a second.
async fn connected(addrs: &[SocketAddr]) -> HashSet<String> {
    let mut up = HashSet::new();
    for addr in addrs {
        let listed = tokio::time::timeout(Duration::from_secs(1), async {
            let mut gateway = clients::gateway(*addr).await.ok()?;
            gateway
                .list_sessions(ListSessionsRequest {})
                .await
                .ok()
                .map(|r| r.into_inner().sessions)
        })
        .await;
        if let Ok(Some(sessions)) = listed {
            up.extend(
                sessions
                    .into_iter()
                    .filter(|s| s.state == SessionState::Connected as i32)
                    .map(|s| s.session_id),
            );
        }
    }
    up
}

/// Waits until every session is CONNECTED on some live gateway; how long that took.
async fn all_connected(
    cluster: &Cluster,
    sessions: usize,
    stall: Duration,
) -> Result<Duration, LoadError> {
    let started = Instant::now();
    loop {
        if connected(&cluster.live()).await.len() >= sessions {
            return Ok(started.elapsed());
        }
        if started.elapsed() > stall {
            return Err(LoadError::Stalled {
                what: "sessions CONNECTED again after a fault".into(),
                after: stall,
            });
        }
        // A measuring poll of the cluster's state, not a wait for one event.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the Events follower saw.
#[derive(Default)]
struct Seen {
    /// Inbound texts by text, with how many times each arrived.
    texts: HashMap<String, usize>,
    /// The last seq per session, and breaks of the +1 step.
    seqs: HashMap<String, u64>,
    seq_breaks: usize,
    replaced: usize,
    resumes: usize,
}

/// Follows every session's events on one live gateway after another, resuming from the last
/// cursor whenever a stream breaks.
async fn follow(
    addrs: watch::Receiver<Vec<SocketAddr>>,
    seen: Arc<Mutex<Seen>>,
    reading: Arc<Mutex<Option<SocketAddr>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut cursor = 0u64;
    let mut turn = 0usize;
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        let live = addrs.borrow().clone();
        let Some(addr) = live.get(turn % live.len().max(1)).copied() else {
            return;
        };
        turn += 1;
        let stream = async {
            let mut gateway = clients::gateway(addr).await.ok()?;
            let start = if cursor == 0 {
                events_request::Start::FromBeginning(true)
            } else {
                events_request::Start::AfterCursor(cursor)
            };
            gateway
                .events(EventsRequest {
                    session_ids: Vec::new(),
                    types: Vec::new(),
                    start: Some(start),
                })
                .await
                .ok()
                .map(tonic::Response::into_inner)
        };
        let Some(mut stream) = stream.await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        *reading.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
        if !first {
            seen.lock().unwrap_or_else(|e| e.into_inner()).resumes += 1;
        }
        first = false;
        loop {
            let next = tokio::select! {
                m = stream.message() => m,
                _ = stop.changed() => return,
            };
            let Ok(Some(event)) = next else { break };
            cursor = event.cursor;
            let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            let last = seen.seqs.insert(event.session_id.clone(), event.seq);
            if last.is_some_and(|l| l + 1 != event.seq) || (last.is_none() && event.seq != 1) {
                seen.seq_breaks += 1;
            }
            match &event.payload {
                Some(event::Payload::Message(m)) if !m.from_me => {
                    *seen.texts.entry(m.text.clone()).or_default() += 1;
                }
                Some(event::Payload::Connection(c)) if c.reason.contains("replaced") => {
                    seen.replaced += 1;
                }
                _ => {}
            }
        }
    }
}

/// Inbound: every peer sends one text per round until stopped; returns the texts sent.
async fn inbound(sim: Sim, sessions: usize, mut stop: watch::Receiver<bool>) -> Vec<String> {
    let mut sent = Vec::new();
    let mut round = 0usize;
    while !*stop.borrow() {
        for n in 0..sessions {
            let prefix = format!("c{round}-{n}-");
            let mut sim = sim.clone();
            if clients::send_texts(&mut sim, &peer_phone(n), &own_phone(n), 1, &prefix)
                .await
                .is_ok()
            {
                sent.push(format!("{prefix}0"));
            }
        }
        round += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
    sent
}

/// Outbound: Sends through any live gateway, each retried with its idempotency key (on the
/// owner the refusal names, or the next gateway) until it is confirmed; returns the texts
/// confirmed, with their session.
async fn outbound(
    addrs: watch::Receiver<Vec<SocketAddr>>,
    sessions: usize,
    mut stop: watch::Receiver<bool>,
) -> Vec<(usize, String)> {
    let mut confirmed = Vec::new();
    let mut k = 0usize;
    while !*stop.borrow() {
        let n = k % sessions;
        let text = format!("o-{k}");
        let started = Instant::now();
        let mut target: Option<SocketAddr> = None;
        let mut turn = k;
        while started.elapsed() < Duration::from_secs(60) {
            let live = addrs.borrow().clone();
            let addr = target
                .take()
                .or_else(|| live.get(turn % live.len().max(1)).copied());
            turn += 1;
            let Some(addr) = addr else { break };
            let attempt = tokio::time::timeout(Duration::from_secs(10), async {
                let mut gateway: Gateway = clients::gateway(addr).await.ok()?;
                Some(
                    gateway
                        .send(SendRequest {
                            session_id: session_id(n),
                            to: peer_phone(n),
                            text: text.clone(),
                            idempotency_key: text.clone(),
                            ..Default::default()
                        })
                        .await,
                )
            })
            .await;
            match attempt {
                Ok(Some(Ok(_))) => {
                    confirmed.push((n, text.clone()));
                    break;
                }
                Ok(Some(Err(status))) => {
                    target = status
                        .metadata()
                        .get("wagate-owner")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    if target.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        k += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = stop.changed() => {}
        }
    }
    confirmed
}

fn signal(child: &Child, sig: libc::c_int) -> Result<(), LoadError> {
    // SAFETY: signals our own child, whose pid stays reserved until reaped.
    if unsafe { libc::kill(child.pid() as libc::pid_t, sig) } != 0 {
        return Err(LoadError::Signal {
            pid: child.pid(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Runs the chaos plan in `cluster`.
pub(crate) async fn run(plan: &ChaosPlan, cluster: &mut Cluster) -> Result<ChaosReport, LoadError> {
    let clock = Instant::now();
    let step = |what: &str| eprintln!("[{:>7.1} s] {what}", clock.elapsed().as_secs_f64());
    cluster.lease_seconds = plan.lease_seconds;
    cluster.max_sessions = plan.sessions + 16;
    step("starting redis-server, the simulator and the gateways");
    cluster.start_redis().await?;
    let (sim_child, info) =
        procs::start_sim(&plan.bin, &cluster.dir, procs::sim_ports_for(plan.sessions)).await?;
    cluster.sim = Some(sim_child);
    let sim = clients::sim(info.control).await?;
    cluster.sim_info = Some(info);
    for i in 0..plan.replicas {
        cluster.replicas.push(Replica {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: None,
            data_dir: cluster.dir.join(format!("data-{i}")),
            log: 0,
        });
        cluster.start_replica(i).await?;
    }
    step(&format!("pairing {} sessions", plan.sessions));
    let first = clients::gateway(cluster.replicas[0].addr).await?;
    crate::pairing::pair_all(&first, &sim, plan.sessions, plan.pair_concurrency).await?;
    all_connected(cluster, plan.sessions, plan.stall).await?;

    step("traffic both ways, Events followed across gateways");
    let (addrs_tx, addrs_rx) = watch::channel(cluster.live());
    let (stop_tx, stop_rx) = watch::channel(false);
    // The follower runs until everything sent has arrived, after the traffic stopped.
    let (unfollow_tx, unfollow_rx) = watch::channel(false);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reading = Arc::new(Mutex::new(None));
    let follower = tokio::spawn(follow(
        addrs_rx.clone(),
        Arc::clone(&seen),
        Arc::clone(&reading),
        unfollow_rx,
    ));
    let ins = tokio::spawn(inbound(sim.clone(), plan.sessions, stop_rx.clone()));
    let outs = tokio::spawn(outbound(addrs_rx.clone(), plan.sessions, stop_rx.clone()));

    // The reader is attached before the first fault.
    let attached = Instant::now();
    while reading.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
        if attached.elapsed() > plan.stall {
            return Err(LoadError::Stalled {
                what: "the Events reader attaching".into(),
                after: plan.stall,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut report = ChaosReport {
        sessions: plan.sessions,
        replicas: plan.replicas,
        ..ChaosReport::default()
    };
    for k in 0..plan.kills {
        // Every other kill takes the gateway the Events reader is on, which
        // must then resume elsewhere from its cursor.
        let followed = *reading.lock().unwrap_or_else(|e| e.into_inner());
        let i = followed
            .filter(|_| k % 2 == 0)
            .and_then(|addr| cluster.replicas.iter().position(|r| r.addr == addr))
            .unwrap_or(k % plan.replicas);
        step(&format!(
            "SIGKILL gateway {i} ({} of {})",
            k + 1,
            plan.kills
        ));
        report.fenced_refused += cluster.fenced_writes(i).await;
        if let Some(child) = cluster.replicas[i].child.take() {
            signal(&child, libc::SIGKILL)?;
            child.kill().await;
        }
        addrs_tx.send_replace(cluster.live());
        let took = all_connected(cluster, plan.sessions, plan.stall).await?;
        report.faults.push((format!("kill {}", k + 1), took));
        cluster.start_replica(i).await?;
        addrs_tx.send_replace(cluster.live());
    }
    for s in 0..plan.stops {
        // The gateway serving the most sessions freezes: its leases lapse,
        // the others take its sessions over; then it wakes up as a former
        // owner whose writes are fenced off and who must not reconnect.
        let mut busiest = (0, 0);
        for (i, replica) in cluster.replicas.iter().enumerate() {
            let serving = connected(&[replica.addr]).await.len();
            if serving > busiest.1 {
                busiest = (i, serving);
            }
        }
        let i = busiest.0;
        step(&format!(
            "SIGSTOP gateway {i} (serving {}) past its lease ({} of {})",
            busiest.1,
            s + 1,
            plan.stops
        ));
        let Some(child) = cluster.replicas[i].child.take() else {
            continue;
        };
        signal(&child, libc::SIGSTOP)?;
        let took = all_connected(cluster, plan.sessions, plan.stall).await;
        // Resumed whatever happened, so a failure leaves no frozen process.
        signal(&child, libc::SIGCONT)?;
        cluster.replicas[i].child = Some(child);
        report.faults.push((format!("stop {}", s + 1), took?));
        step("SIGCONT: the former owner wakes up");
        // Long enough for its keepalives to fail and its renewals to report
        // the leases lost: any reconnect it tried would show as `replaced`.
        tokio::time::sleep(Duration::from_secs(plan.lease_seconds)).await;
        all_connected(cluster, plan.sessions, plan.stall).await?;
    }
    for r in 0..plan.redis_restarts {
        step(&format!(
            "restarting Redis ({} of {})",
            r + 1,
            plan.redis_restarts
        ));
        if let Some(mut redis) = cluster.redis.take() {
            redis.terminate(Duration::from_secs(30)).await?;
        }
        cluster.start_redis().await?;
        let took = all_connected(cluster, plan.sessions, plan.stall).await?;
        report
            .faults
            .push((format!("redis restart {}", r + 1), took));
    }

    step("stopping the traffic and counting");
    stop_tx.send_replace(true);
    let sent_in = ins.await?;
    let confirmed = outs.await?;
    let started = Instant::now();
    loop {
        let missing = {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            sent_in
                .iter()
                .filter(|t| !seen.texts.contains_key(*t))
                .count()
        };
        if missing == 0 || started.elapsed() > plan.stall {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    unfollow_tx.send_replace(true);
    let _ = follower.await;
    for i in 0..cluster.replicas.len() {
        report.fenced_refused += cluster.fenced_writes(i).await;
    }
    {
        let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        report.inbound_sent = sent_in.len();
        report.inbound_lost = sent_in
            .iter()
            .filter(|t| !seen.texts.contains_key(*t))
            .count();
        report.inbound_duplicates = seen.texts.values().filter(|c| **c > 1).count();
        report.seq_breaks = seen.seq_breaks;
        report.replaced = seen.replaced;
        report.stream_resumes = seen.resumes;
    }
    report.sends_ok = confirmed.len();
    let mut inboxes: HashMap<usize, HashMap<String, usize>> = HashMap::new();
    let mut sim = sim;
    for n in confirmed.iter().map(|(n, _)| *n).collect::<HashSet<_>>() {
        let inbox = sim
            .inbox(InboxRequest {
                phone: peer_phone(n),
            })
            .await
            .map_err(LoadError::rpc("simulator Inbox"))?
            .into_inner();
        let counts = inboxes.entry(n).or_default();
        for m in inbox.messages {
            *counts.entry(m.text).or_default() += 1;
        }
    }
    for (n, text) in &confirmed {
        match inboxes
            .get(n)
            .and_then(|c| c.get(text))
            .copied()
            .unwrap_or(0)
        {
            0 => report.sends_lost += 1,
            1 => {}
            _ => report.sends_duplicated += 1,
        }
    }
    Ok(report)
}
