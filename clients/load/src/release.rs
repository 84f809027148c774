//! Memory given back: 90 % of the sessions disconnect, and the gateway's
//! RssAnon is watched until it stops falling (the gateway releases freed
//! heap after a wave of disconnects). What the remaining sessions need is
//! then measured, not only computed: a new gateway process started on the
//! same data dir holds exactly them (the disconnected ones restored
//! offline), without the history of the departed ones.

use std::time::{Duration, Instant};

use crate::clients::{session_id, Gateway};
use crate::error::LoadError;
use crate::procs::within;
use crate::procstat::{self, Memory};
use crate::proto::gateway::DisconnectRequest;
use crate::workers;

/// How long RssAnon is watched after the disconnects.
const WATCH: Duration = Duration::from_secs(15);
/// Between two looks at it (a measuring window, not a wait for an event).
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Memory before and after.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Released {
    pub(crate) sessions_before: usize,
    pub(crate) sessions_after: usize,
    pub(crate) before: Memory,
    /// The lowest RssAnon seen while watching.
    pub(crate) after: Memory,
    /// A new gateway process with the same sessions, once the online ones
    /// are CONNECTED (the lowest RssAnon seen while watching it).
    pub(crate) fresh: Option<Memory>,
}

/// Disconnects sessions `0..n*9/10`, then watches the gateway's memory.
pub(crate) async fn disconnect_most(
    gateway: &Gateway,
    n: usize,
    gateway_pid: u32,
    stall: Duration,
) -> Result<Released, LoadError> {
    let before = procstat::memory(gateway_pid)?;
    let leaving = n * 9 / 10;
    let client = gateway.clone();
    workers::run(leaving, 32, move |i| {
        let mut client = client.clone();
        async move {
            within(
                stall,
                "a Disconnect",
                client.disconnect(DisconnectRequest {
                    session_id: session_id(i),
                    logout: false,
                }),
            )
            .await?
            .map_err(LoadError::rpc("gateway Disconnect"))?;
            Ok(())
        }
    })
    .await?;
    let after = watch(gateway_pid).await?;
    Ok(Released {
        sessions_before: n,
        sessions_after: n - leaving,
        before,
        after,
        fresh: None,
    })
}

/// The lowest RssAnon of the gateway over the watching window.
pub(crate) async fn watch(gateway_pid: u32) -> Result<Memory, LoadError> {
    let started = Instant::now();
    let mut lowest = procstat::memory(gateway_pid)?;
    while started.elapsed() < WATCH {
        tokio::time::sleep(LOOK_EVERY).await;
        let now = procstat::memory(gateway_pid)?;
        if now.anon_kib < lowest.anon_kib {
            lowest = now;
        }
    }
    Ok(lowest)
}
