//! The gRPC face of the gateway: `wagate.v1.Gateway`, health, reflection, API
//! key checks, and the mapping of internal errors to statuses. May import
//! `runtime`, `store` and `wa`; `sim` only to mount its control service in
//! sandbox mode.

mod auth;
mod convert;
mod errors;
mod gateway;
mod health;
pub mod qr_image;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;

pub use auth::ApiKeys;
pub use gateway::GatewayService;
pub use health::{health, Health, HealthWatches, GATEWAY_SERVICE};

use crate::proto::gateway::gateway_server::GatewayServer;
use crate::runtime::Manager;

/// Largest request accepted (a text message is far smaller; media arrives later).
const MAX_REQUEST: usize = 4 << 20;

/// Connections accepted on `listener`, with `TCP_NODELAY` set on each.
///
/// gRPC writes small frames (headers, one short message, trailers); with
/// Nagle's algorithm the last of them can wait for the peer's delayed ACK,
/// ~40 ms. tonic's own `tcp_nodelay` setting does not apply to an incoming
/// stream handed to `serve_with_incoming*`, so it is set here per socket.
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves the API on `listener` until `shutdown` resolves (new connections
/// are refused from then on; calls in flight finish).
pub async fn serve(
    listener: TcpListener,
    manager: Arc<Manager>,
    keys: ApiKeys,
    sim: Option<crate::sim::Simulator>,
    health_service: HealthServer<HealthWatches>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!("reflection: {e}");
            e
        });
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();

    let auth = move |k: ApiKeys| move |req| k.check(req);
    let gateway =
        GatewayServer::new(GatewayService::new(manager)).max_decoding_message_size(MAX_REQUEST);
    let mut router = Server::builder()
        .add_service(health_service)
        .add_service(InterceptedService::new(gateway, auth(keys.clone())));
    if let Ok(r) = reflection_v1 {
        router = router.add_service(InterceptedService::new(r, auth(keys.clone())));
    }
    if let Ok(r) = reflection_v1alpha {
        router = router.add_service(InterceptedService::new(r, auth(keys.clone())));
    }
    if let Some(sim) = sim {
        router = router.add_service(InterceptedService::new(sim.control(), auth(keys.clone())));
    }
    router
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let socket = tokio::time::timeout(std::time::Duration::from_secs(10), accepted.next())
            .await
            .expect("accepted in time")
            .expect("stream open")
            .expect("accept");
        assert!(socket.nodelay().expect("read TCP_NODELAY"));
    }
}
