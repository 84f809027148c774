//! History sync into the gateway: an account whose virtual phone holds a
//! seeded history of N messages (chats of 100, all inside what a phone
//! sends by default) links one more session; the phone sends it the
//! history in chunks and the gateway streams it out as HISTORY events while
//! its resident memory is sampled. The figure is the peak growth over the
//! moment before pairing (budget: 16 MiB for 10,000 messages).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clients::{Gateway, Sim};
use crate::error::LoadError;
use crate::procs::within;
use crate::procstat;
use crate::proto::gateway::{
    event, events_request, EventType, EventsRequest, InitRequest, QrCodeRequest,
};
use crate::proto::sim::{CreateAccountRequest, ScanQrRequest, SeedHistoryRequest};

/// How often resident memory is read while the history streams.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// Messages per seeded chat: a phone's default (recent) history holds the
/// newest 100 of each chat.
const PER_CHAT: u32 = 100;
const SESSION: &str = "load-history";
/// Its own range: the group step's members are 1777…, sessions 1555…, peers 1666….
const PHONE: &str = "18880000001";

/// What one history sync cost.
#[derive(Debug, Clone)]
pub(crate) struct HistoryFigures {
    pub(crate) messages: u64,
    pub(crate) pages: u64,
    /// Most messages in one page.
    pub(crate) largest_page: u64,
    /// From the phone's scan to the last page.
    pub(crate) seconds: f64,
    pub(crate) anon_before_kib: u64,
    pub(crate) anon_peak_kib: u64,
    pub(crate) rss_growth_kib: u64,
}

/// Seeds `messages` (rounded down to chats of 100), pairs the history
/// session and reads its HISTORY events until every message arrived.
pub(crate) async fn measure(
    gateway: &Gateway,
    sim: &Sim,
    gateway_pid: u32,
    messages: u32,
    stall: Duration,
) -> Result<HistoryFigures, LoadError> {
    let (mut gateway, mut sim) = (gateway.clone(), sim.clone());
    let per_chat = PER_CHAT.min(messages.max(1));
    let chats = (messages / per_chat).max(1);
    let expected = u64::from(chats) * u64::from(per_chat);
    sim.create_account(CreateAccountRequest {
        phone: PHONE.into(),
        push_name: "History".into(),
    })
    .await
    .map_err(LoadError::rpc("simulator CreateAccount"))?;
    sim.seed_history(SeedHistoryRequest {
        phone: PHONE.into(),
        chats,
        messages_per_chat: per_chat,
    })
    .await
    .map_err(LoadError::rpc("simulator SeedHistory"))?;
    let mut events = gateway
        .events(EventsRequest {
            session_ids: vec![SESSION.into()],
            types: vec![EventType::Qr as i32, EventType::History as i32],
            start: Some(events_request::Start::FromBeginning(true)),
        })
        .await
        .map_err(LoadError::rpc("gateway Events"))?
        .into_inner();

    let before = procstat::memory(gateway_pid)?;
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let (mut anon, mut rss) = (before.anon_kib, before.rss_kib);
            // A sampling window as long as the sync, not a wait for it.
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = procstat::memory(gateway_pid) {
                    anon = anon.max(m.anon_kib);
                    rss = rss.max(m.rss_kib);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            (anon, rss)
        })
    };
    gateway
        .init(InitRequest {
            session_id: SESSION.into(),
            ..Default::default()
        })
        .await
        .map_err(LoadError::rpc("gateway Init"))?;
    let mut started = Instant::now();
    let (mut received, mut pages, mut largest) = (0u64, 0u64, 0u64);
    let mut scanned = false;
    let result = async {
        while received < expected {
            let event = within(stall, "history pages", events.message())
                .await?
                .map_err(LoadError::rpc("gateway Events"))?
                .ok_or(LoadError::StreamEnded { what: "history" })?;
            match event.payload {
                Some(event::Payload::Qr(_)) if !scanned => {
                    let qr = gateway
                        .qr_code(QrCodeRequest {
                            session_id: SESSION.into(),
                        })
                        .await
                        .map_err(LoadError::rpc("gateway QrCode"))?
                        .into_inner()
                        .qr;
                    started = Instant::now();
                    sim.scan_qr(ScanQrRequest {
                        phone: PHONE.into(),
                        qr,
                        push_name: "History".into(),
                    })
                    .await
                    .map_err(LoadError::rpc("simulator ScanQr"))?;
                    scanned = true;
                }
                Some(event::Payload::History(h)) => {
                    if !h.error.is_empty() {
                        return Err(LoadError::Setup(format!(
                            "history chunk failed: {}",
                            h.error
                        )));
                    }
                    let n: u64 = h.chats.iter().map(|c| c.messages.len() as u64).sum();
                    received += n;
                    pages += 1;
                    largest = largest.max(n);
                }
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let (anon_peak, rss_peak) = sampler
        .await
        .map_err(|e| LoadError::Setup(format!("memory sampler: {e}")))?;
    result?;
    Ok(HistoryFigures {
        messages: received,
        pages,
        largest_page: largest,
        seconds,
        anon_before_kib: before.anon_kib,
        anon_peak_kib: anon_peak,
        rss_growth_kib: rss_peak.saturating_sub(before.rss_kib),
    })
}
