//! Pairs the sessions of a run: `Init`, wait for the QR, `QrCode`, the
//! simulator's phone `ScanQr`, wait for CONNECTED; and gives each session a
//! peer account to chat with. Also waits for every session to be CONNECTED
//! according to `ListSessions`.

use std::time::{Duration, Instant};

use crate::clients::{own_phone, peer_phone, session_id, Gateway, Sim};
use crate::error::LoadError;
use crate::procs::within;
use crate::proto::gateway::{
    event, events_request, EventType, EventsRequest, InitRequest, ListSessionsRequest,
    QrCodeRequest, SessionState,
};
use crate::proto::sim::{CreateAccountRequest, ScanQrRequest};
use crate::workers;

/// How long one pairing may wait for its next event.
const STEP_WITHIN: Duration = Duration::from_secs(60);

/// Pairs sessions `0..sessions`, `concurrency` at a time.
pub(crate) async fn pair_all(
    gateway: &Gateway,
    sim: &Sim,
    sessions: usize,
    concurrency: usize,
) -> Result<Duration, LoadError> {
    let started = Instant::now();
    let (gateway, sim) = (gateway.clone(), sim.clone());
    workers::run(sessions, concurrency, move |n| {
        let (gateway, sim) = (gateway.clone(), sim.clone());
        async move { pair_one(gateway, sim, n).await }
    })
    .await?;
    Ok(started.elapsed())
}

async fn pair_one(mut gateway: Gateway, mut sim: Sim, n: usize) -> Result<(), LoadError> {
    let id = session_id(n);
    // Subscribed before Init so the first QR cannot be missed.
    let mut events = gateway
        .events(EventsRequest {
            session_ids: vec![id.clone()],
            types: vec![EventType::Qr as i32, EventType::Connection as i32],
            start: Some(events_request::Start::FromBeginning(true)),
        })
        .await
        .map_err(LoadError::rpc("gateway Events"))?
        .into_inner();
    gateway
        .init(InitRequest {
            session_id: id.clone(),
            ..Default::default()
        })
        .await
        .map_err(LoadError::rpc("gateway Init"))?;
    let mut scanned = false;
    loop {
        let what = format!("pairing session {id}");
        let event = within(STEP_WITHIN, &what, events.message())
            .await?
            .map_err(LoadError::rpc("gateway Events"))?
            .ok_or(LoadError::StreamEnded { what: "pairing" })?;
        match event.payload {
            Some(event::Payload::Qr(_)) if !scanned => {
                let qr = gateway
                    .qr_code(QrCodeRequest {
                        session_id: id.clone(),
                    })
                    .await
                    .map_err(LoadError::rpc("gateway QrCode"))?
                    .into_inner()
                    .qr;
                sim.scan_qr(ScanQrRequest {
                    phone: own_phone(n),
                    qr,
                    push_name: format!("Load {n}"),
                })
                .await
                .map_err(LoadError::rpc("simulator ScanQr"))?;
                scanned = true;
            }
            Some(event::Payload::Connection(c)) if c.state == SessionState::Connected as i32 => {
                break;
            }
            Some(event::Payload::Connection(c)) if c.state == SessionState::LoggedOut as i32 => {
                return Err(LoadError::Setup(format!(
                    "session {id} was logged out while pairing: {}",
                    c.reason
                )));
            }
            _ => {}
        }
    }
    sim.create_account(CreateAccountRequest {
        phone: peer_phone(n),
        push_name: format!("Peer {n}"),
    })
    .await
    .map_err(LoadError::rpc("simulator CreateAccount"))?;
    Ok(())
}

/// Waits until `ListSessions` shows at least `sessions` CONNECTED; returns
/// when it first did, measured from `since`. Gives up when the count has
/// not grown for `stall`.
pub(crate) async fn wait_all_connected(
    gateway: &Gateway,
    sessions: usize,
    since: Instant,
    stall: Duration,
) -> Result<Duration, LoadError> {
    // ListSessions is the documented way to see every session's state; a
    // short poll keeps the figure within a tenth of a second.
    const POLL: Duration = Duration::from_millis(100);
    let mut gateway = gateway.clone();
    let (mut best, mut progressed) = (0, Instant::now());
    loop {
        let listed = gateway
            .list_sessions(ListSessionsRequest {})
            .await
            .map_err(LoadError::rpc("gateway ListSessions"))?
            .into_inner()
            .sessions;
        let connected = listed
            .iter()
            .filter(|s| s.state == SessionState::Connected as i32)
            .count();
        if connected >= sessions {
            return Ok(since.elapsed());
        }
        if connected > best {
            (best, progressed) = (connected, Instant::now());
        } else if progressed.elapsed() > stall {
            return Err(LoadError::Stalled {
                what: format!("{connected} of {sessions} sessions CONNECTED"),
                after: stall,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}
