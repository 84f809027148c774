//! `Send` from the sessions to their peers: latency per call and sends per
//! second at a given concurrency, every call with its own idempotency key.

use std::time::{Duration, Instant};

use crate::clients::{peer_phone, session_id, Gateway};
use crate::error::LoadError;
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
}

/// One Send per session, unmeasured: it fetches the devices and keys the
/// measured Sends then find ready (own companions, the peer's phone).
pub(crate) async fn warm_up(
    gateway: &Gateway,
    sessions: usize,
    run: &str,
) -> Result<(), LoadError> {
    measure(gateway, sessions, 64, sessions, &format!("{run}-warm")).await?;
    Ok(())
}

/// `count` Sends, round robin over the sessions, `concurrency` at a time.
pub(crate) async fn measure(
    gateway: &Gateway,
    sessions: usize,
    concurrency: usize,
    count: usize,
    run: &str,
) -> Result<SendFigures, LoadError> {
    let gateway = gateway.clone();
    let run = format!("{run}-c{concurrency}");
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
    millis.sort_by(f64::total_cmp);
    Ok(SendFigures {
        concurrency,
        sends: count,
        p50_ms: workers::percentile(&millis, 50.0).unwrap_or(0.0),
        p99_ms: workers::percentile(&millis, 99.0).unwrap_or(0.0),
        per_second: count as f64 / seconds,
    })
}
