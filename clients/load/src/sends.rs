//! `Send` from the sessions to their peers: latency per call, sends per
//! second at a given concurrency, every call with its own idempotency key,
//! and what each process spent on a Send meanwhile.

use std::time::{Duration, Instant};

use crate::clients::{peer_phone, session_id, Gateway};
use crate::error::LoadError;
use crate::inbound::{Meters, Pids, Throughput};
use crate::procs::within;
use crate::proto::gateway::SendRequest;
use crate::workers;

/// A Send that takes longer than this stops the run.
const SEND_WITHIN: Duration = Duration::from_secs(60);

/// Send figures at one concurrency.
#[derive(Debug, Clone)]
pub(crate) struct SendFigures {
    pub(crate) concurrency: usize,
    pub(crate) sends: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) per_second: f64,
    /// Each process's CPU over the run.
    pub(crate) cpu: Throughput,
}

impl SendFigures {
    /// CPU time per Send, microseconds: gateway, simulator, tool.
    pub(crate) fn micros_per_send(&self) -> (f64, f64, f64) {
        // A percentage of a core over the run, spread over its Sends.
        let per = |percent: f64| percent / 100.0 * self.cpu.seconds * 1e6 / self.sends as f64;
        (
            per(self.cpu.gateway_cpu),
            per(self.cpu.sim_cpu),
            per(self.cpu.tool_cpu),
        )
    }
}

/// One Send per session, unmeasured: it fetches the devices and keys the
/// measured Sends then find ready (own companions, the peer's phone).
pub(crate) async fn warm_up(
    gateway: &Gateway,
    sessions: usize,
    pids: Pids,
    run: &str,
) -> Result<(), LoadError> {
    measure(
        gateway,
        sessions,
        pids,
        64,
        sessions,
        &format!("{run}-warm"),
    )
    .await?;
    Ok(())
}

/// `count` Sends, round robin over the sessions, `concurrency` at a time.
pub(crate) async fn measure(
    gateway: &Gateway,
    sessions: usize,
    pids: Pids,
    concurrency: usize,
    count: usize,
    run: &str,
) -> Result<SendFigures, LoadError> {
    let gateway = gateway.clone();
    let run = format!("{run}-c{concurrency}");
    let meters = Meters::start(pids)?;
    let started = Instant::now();
    let mut millis = workers::run(count, concurrency, move |i| {
        let mut gateway = gateway.clone();
        let n = i % sessions;
        let request = SendRequest {
            session_id: session_id(n),
            to: format!("+{}", peer_phone(n)),
            text: format!("s{i}"),
            idempotency_key: format!("{run}-{i}"),
            ..Default::default()
        };
        async move {
            let sent = Instant::now();
            within(SEND_WITHIN, "a Send", gateway.send(request))
                .await?
                .map_err(LoadError::rpc("gateway Send"))?;
            Ok(sent.elapsed().as_secs_f64() * 1e3)
        }
    })
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = meters.throughput(count, seconds)?;
    millis.sort_by(f64::total_cmp);
    Ok(SendFigures {
        concurrency,
        sends: count,
        p50_ms: workers::percentile(&millis, 50.0).unwrap_or(0.0),
        p99_ms: workers::percentile(&millis, 99.0).unwrap_or(0.0),
        per_second: count as f64 / seconds,
        cpu,
    })
}
