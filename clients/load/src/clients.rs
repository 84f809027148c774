//! gRPC connections to the gateway and the simulator, the names every
//! session, own phone and peer phone get, and the one way virtual phones
//! send texts.

use std::net::SocketAddr;

use tonic::transport::{Channel, Endpoint};

use crate::error::LoadError;
use crate::proto::gateway::gateway_client::GatewayClient;
use crate::proto::sim::simulator_client::SimulatorClient;
use crate::proto::sim::SendTextsRequest;

pub(crate) type Gateway = GatewayClient<Channel>;
pub(crate) type Sim = SimulatorClient<Channel>;

pub(crate) async fn gateway(addr: SocketAddr) -> Result<Gateway, LoadError> {
    Ok(GatewayClient::new(channel("gateway", addr).await?))
}

pub(crate) async fn sim(addr: SocketAddr) -> Result<Sim, LoadError> {
    Ok(SimulatorClient::new(channel("simulator", addr).await?))
}

async fn channel(what: &'static str, addr: SocketAddr) -> Result<Channel, LoadError> {
    let url = format!("http://{addr}");
    Endpoint::from_shared(url.clone())
        .map_err(|source| LoadError::Connect {
            what,
            url: url.clone(),
            source,
        })?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|source| LoadError::Connect { what, url, source })
}

/// Session `n` of the run.
pub(crate) fn session_id(n: usize) -> String {
    format!("load-{n}")
}

/// The account session `n` is linked to (digits, no '+'). Eleven digits
/// leave room for ten million sessions.
pub(crate) fn own_phone(n: usize) -> String {
    format!("1555{n:07}")
}

/// The account that chats with session `n`.
pub(crate) fn peer_phone(n: usize) -> String {
    format!("1666{n:07}")
}

/// The virtual phone of `from` sends `count` texts `<prefix><i>` (i from 0)
/// to the account `to`, as fast as the simulator routes them, in one call.
pub(crate) async fn send_texts(
    sim: &mut Sim,
    from: &str,
    to: &str,
    count: u32,
    prefix: &str,
) -> Result<(), LoadError> {
    sim.send_texts(SendTextsRequest {
        from_phone: from.to_owned(),
        to: to.to_owned(),
        count,
        text_prefix: prefix.to_owned(),
        per_second: 0,
    })
    .await
    .map_err(LoadError::rpc("simulator SendTexts"))?;
    Ok(())
}
