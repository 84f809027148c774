//! The gRPC face of the gateway: `wagate.v1.Gateway`, health, reflection, API
//! key checks, and the mapping of internal errors to statuses. May import
//! `runtime`, `store` and `wa`; `sim` only to mount its control service in
//! sandbox mode.

mod auth;
mod compose;
mod convert;
mod errors;
mod forward;
mod gateway;
mod groups;
mod health;
pub mod hygiene;
mod media;
mod presence;
pub mod qr_image;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;

pub use auth::ApiKeys;
pub use gateway::GatewayService;
pub use health::{health, Health, HealthWatches, GATEWAY_SERVICE};

use crate::proto::gateway::gateway_server::GatewayServer;
use crate::runtime::Manager;

/// HTTP/2 pings on an API connection: how often, and how long the answer
/// may take before the connection is closed.
const KEEPALIVE_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Largest request message accepted: inline media in a Send, one chunk of
/// an UploadMedia stream (whose total is limited by `--max-media-bytes`).
const MAX_REQUEST: usize = 4 << 20;

/// Serves the API on `listener` until `shutdown` resolves (new connections
/// are refused from then on; calls in flight finish).
pub async fn serve(
    listener: TcpListener,
    manager: Arc<Manager>,
    keys: ApiKeys,
    sim: Option<crate::sim::Simulator>,
    health_service: HealthServer<HealthWatches>,
    limits: hygiene::Hygiene,
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
    // Keepalive pings find connections whose peer vanished (half-open);
    // the call counter lets idle ones be closed (see `hygiene`).
    let mut router = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_EVERY))
        .http2_keepalive_timeout(Some(KEEPALIVE_WITHIN))
        .layer(hygiene::CallCounter)
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
        .serve_with_incoming_shutdown(hygiene::incoming(listener, limits), shutdown)
        .await
}
