//! Texts from the peers' virtual phones to the sessions, read back as
//! `message` events on one `Events` stream: throughput with the CPU each
//! process used meanwhile, and delivery latency at a paced rate.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::Streaming;

use crate::clients::{own_phone, peer_phone, send_texts, Gateway, Sim};
use crate::error::LoadError;
use crate::procstat::{CpuMeter, DiskMeter};
use crate::proto::gateway::{event, events_request, Event, EventType, EventsRequest};
use crate::workers;

/// Virtual phones sending at once (one `SendTexts` call each).
const SENDERS: usize = 64;
/// Paced sends that may be in flight before the pacer waits.
const IN_FLIGHT: usize = 256;

/// Messages per second end to end, and what it cost.
#[derive(Debug, Clone)]
pub(crate) struct Throughput {
    pub(crate) messages: usize,
    pub(crate) seconds: f64,
    pub(crate) per_second: f64,
    pub(crate) gateway_cpu: f64,
    pub(crate) sim_cpu: f64,
    pub(crate) tool_cpu: f64,
    /// The redis-server's, when the gateway stores in Redis.
    pub(crate) redis_cpu: Option<f64>,
    /// Bytes the gateway caused to be written to storage meanwhile (see
    /// `procstat::DiskMeter`).
    pub(crate) gateway_disk_bytes: u64,
    /// The redis-server's, when the gateway stores in Redis.
    pub(crate) redis_disk_bytes: Option<u64>,
}

impl Throughput {
    /// Storage writes per message, KiB: the gateway's, and the
    /// redis-server's when it stores in Redis.
    pub(crate) fn disk_kib_per_message(&self) -> (f64, Option<f64>) {
        let per = |bytes: u64| bytes as f64 / 1024.0 / self.messages.max(1) as f64;
        (per(self.gateway_disk_bytes), self.redis_disk_bytes.map(per))
    }
}

/// Event delivery latency, send call to arrival on the stream.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    pub(crate) messages: usize,
    pub(crate) rate: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
}

/// Process ids whose CPU use is measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pids {
    pub(crate) gateway: u32,
    pub(crate) sim: u32,
    pub(crate) redis: Option<u32>,
}

/// CPU meters of every measured process, started together.
pub(crate) struct Meters {
    gateway: CpuMeter,
    sim: CpuMeter,
    tool: CpuMeter,
    redis: Option<CpuMeter>,
    gateway_disk: DiskMeter,
    redis_disk: Option<DiskMeter>,
}

impl Meters {
    pub(crate) fn start(pids: Pids) -> Result<Self, LoadError> {
        Ok(Meters {
            gateway: CpuMeter::start(pids.gateway)?,
            sim: CpuMeter::start(pids.sim)?,
            tool: CpuMeter::start(std::process::id())?,
            redis: pids.redis.map(CpuMeter::start).transpose()?,
            gateway_disk: DiskMeter::start(pids.gateway)?,
            redis_disk: pids.redis.map(DiskMeter::start).transpose()?,
        })
    }

    /// The figures for `messages` delivered in `seconds`.
    pub(crate) fn throughput(
        &self,
        messages: usize,
        seconds: f64,
    ) -> Result<Throughput, LoadError> {
        Ok(Throughput {
            messages,
            seconds,
            per_second: messages as f64 / seconds,
            gateway_cpu: self.gateway.percent()?,
            sim_cpu: self.sim.percent()?,
            tool_cpu: self.tool.percent()?,
            redis_cpu: self.redis.as_ref().map(CpuMeter::percent).transpose()?,
            gateway_disk_bytes: self.gateway_disk.bytes()?,
            redis_disk_bytes: self.redis_disk.as_ref().map(DiskMeter::bytes).transpose()?,
        })
    }
}

/// Every peer sends one text, which opens the Signal sessions (a prekey
/// message each) so the measured texts are ordinary ones.
pub(crate) async fn warm_up(
    gateway: &Gateway,
    sim: &Sim,
    sessions: usize,
    stall: Duration,
) -> Result<(), LoadError> {
    let mut stream = subscribe(gateway).await?;
    let senders = spawn_senders(sim, sessions, 1, "warm-");
    collect(&mut stream, "warm-", sessions, stall, |_| {}).await?;
    senders.await??;
    Ok(())
}

/// Every peer sends `per_session` texts as fast as the simulator takes them;
/// the clock runs from the first send to the last event.
pub(crate) async fn throughput(
    gateway: &Gateway,
    sim: &Sim,
    sessions: usize,
    per_session: u32,
    pids: Pids,
    stall: Duration,
) -> Result<Throughput, LoadError> {
    let total = sessions * per_session as usize;
    let mut stream = subscribe(gateway).await?;
    let meters = Meters::start(pids)?;
    let started = Instant::now();
    let senders = spawn_senders(sim, sessions, per_session, "in-");
    collect(&mut stream, "in-", total, stall, |_| {}).await?;
    let figures = meters.throughput(total, started.elapsed().as_secs_f64())?;
    senders.await??;
    Ok(figures)
}

/// Sends `count` texts at `rate` per second in total, round robin over the
/// sessions, each carrying its send time; latency is its arrival time on
/// the `Events` stream minus that.
pub(crate) async fn latency(
    gateway: &Gateway,
    sim: &Sim,
    sessions: usize,
    rate: f64,
    count: usize,
    stall: Duration,
) -> Result<Latency, LoadError> {
    let mut stream = subscribe(gateway).await?;
    let sim = sim.clone();
    let pacer = tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut sends = JoinSet::new();
        let start = tokio::time::Instant::now();
        for i in 0..count {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut sim = sim.clone();
            let n = i % sessions;
            sends.spawn(async move {
                let prefix = format!("t{}-", unix_nanos());
                let sent = send_texts(&mut sim, &peer_phone(n), &own_phone(n), 1, &prefix).await;
                drop(slot);
                sent
            });
            // Report a failed send now rather than after the whole run.
            while let Some(done) = sends.try_join_next() {
                done??;
            }
        }
        while let Some(done) = sends.join_next().await {
            done??;
        }
        Ok::<_, LoadError>(())
    });
    let mut millis = Vec::with_capacity(count);
    collect(&mut stream, "t", count, stall, |text| {
        let sent = text
            .strip_prefix('t')
            .and_then(|t| t.split_once('-'))
            .and_then(|(nanos, _)| nanos.parse::<u128>().ok());
        if let Some(sent) = sent {
            millis.push(unix_nanos().saturating_sub(sent) as f64 / 1e6);
        }
    })
    .await?;
    pacer.await??;
    millis.sort_by(f64::total_cmp);
    Ok(Latency {
        messages: count,
        rate,
        p50_ms: workers::percentile(&millis, 50.0).unwrap_or(0.0),
        p99_ms: workers::percentile(&millis, 99.0).unwrap_or(0.0),
        p999_ms: workers::percentile(&millis, 99.9).unwrap_or(0.0),
        max_ms: millis.last().copied().unwrap_or(0.0),
    })
}

/// One stream of every session's `message` events, from now on.
pub(crate) async fn subscribe(gateway: &Gateway) -> Result<Streaming<Event>, LoadError> {
    Ok(gateway
        .clone()
        .events(EventsRequest {
            session_ids: Vec::new(),
            types: vec![EventType::Message as i32],
            start: Some(events_request::Start::FromNow(true)),
        })
        .await
        .map_err(LoadError::rpc("gateway Events"))?
        .into_inner())
}

/// Each session's peer sends `count` texts `<prefix><i>` to it, `SENDERS`
/// peers at a time, on a task of its own.
fn spawn_senders(
    sim: &Sim,
    sessions: usize,
    count: u32,
    prefix: &'static str,
) -> tokio::task::JoinHandle<Result<Vec<()>, LoadError>> {
    let sim = sim.clone();
    tokio::spawn(workers::run(sessions, SENDERS, move |n| {
        let mut sim = sim.clone();
        async move { send_texts(&mut sim, &peer_phone(n), &own_phone(n), count, prefix).await }
    }))
}

/// Reads the stream until `count` received texts starting with `prefix`
/// have arrived, handing each text to `seen` as it arrives.
pub(crate) async fn collect(
    stream: &mut Streaming<Event>,
    prefix: &str,
    count: usize,
    stall: Duration,
    mut seen: impl FnMut(&str),
) -> Result<(), LoadError> {
    let mut received = 0;
    while received < count {
        let event = tokio::time::timeout(stall, stream.message())
            .await
            .map_err(|_| LoadError::Stalled {
                what: format!("{received} of {count} messages ({prefix}…) arrived"),
                after: stall,
            })?
            .map_err(LoadError::rpc("gateway Events"))?
            .ok_or(LoadError::StreamEnded { what: "message" })?;
        if let Some(event::Payload::Message(m)) = event.payload {
            if !m.from_me && m.text.starts_with(prefix) {
                seen(&m.text);
                received += 1;
            }
        }
    }
    Ok(())
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
