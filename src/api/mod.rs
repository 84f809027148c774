//! The gRPC face of the gateway: `wagate.v1.Gateway`, health, reflection, API
//! key checks, and the mapping of internal errors to statuses. May import
//! `runtime`, `store` and `wa`; `sim` only to mount its control service in
//! sandbox mode.

mod auth;
mod errors;
mod gateway;
pub mod qr_image;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

pub use auth::ApiKeys;
pub use gateway::GatewayService;

use crate::proto::gateway::gateway_server::GatewayServer;
use crate::runtime::Manager;

/// Largest request accepted (a text message is far smaller; media arrives later).
const MAX_REQUEST: usize = 4 << 20;

/// Health of the gateway as probes see it (overall and `wagate.v1.Gateway`).
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter
            .set_service_status(GATEWAY_SERVICE, status)
            .await;
    }
}

/// Fully qualified name of the public service (for health checks).
pub const GATEWAY_SERVICE: &str = "wagate.v1.Gateway";

/// Creates the health service; it starts NOT_SERVING until [`Health::set`].
pub async fn health() -> (
    Health,
    HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, service) = tonic_health::server::health_reporter();
    let health = Health { reporter };
    health.set(false).await;
    (health, service)
}

/// Serves the API on `listener` until `shutdown` resolves (new connections
/// are refused from then on; calls in flight finish).
pub async fn serve(
    listener: TcpListener,
    manager: Arc<Manager>,
    keys: ApiKeys,
    sim: Option<crate::sim::Simulator>,
    health_service: HealthServer<impl tonic_health::pb::health_server::Health>,
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
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
