//! `wagate sim`: runs the simulator with its gRPC control service (plus
//! health and reflection) until SIGINT or SIGTERM.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use super::{SimConfig, SimError, Simulator};
use crate::proto::sim::simulator_server::SimulatorServer;
use crate::proto::FILE_DESCRIPTOR_SET;

/// Options of `wagate sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address of the chat websocket (clients connect to ws://ADDR/ws/chat).
    #[arg(long, default_value = "127.0.0.1:5290", env = "WAGATE_SIM_LISTEN")]
    pub listen: SocketAddr,
    /// Address of the gRPC control API (plaintext; health and reflection too).
    #[arg(long, default_value = "127.0.0.1:5291", env = "WAGATE_SIM_CONTROL")]
    pub control: SocketAddr,
    /// Seed for every key the simulator makes, for a stable root key.
    #[arg(long, env = "WAGATE_SIM_SEED")]
    pub seed: Option<u64>,
}

/// Why `wagate sim` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("cannot listen on {addr}: {source}")]
    Control {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("control server: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("cannot watch for termination signals: {0}")]
    Signal(std::io::Error),
}

/// Starts the simulator and its control server, prints where they listen,
/// and serves until SIGINT or SIGTERM.
pub async fn run(args: SimArgs) -> Result<(), CliError> {
    let sim = Simulator::start(SimConfig {
        listen: args.listen,
        seed: args.seed,
    })
    .await?;
    let listener = TcpListener::bind(args.control)
        .await
        .map_err(|source| CliError::Control {
            addr: args.control,
            source,
        })?;
    let control_addr = listener.local_addr().map_err(|source| CliError::Control {
        addr: args.control,
        source,
    })?;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SimulatorServer<super::Control>>()
        .await;

    println!("ws_url={}", sim.ws_url());
    println!("control={control_addr}");
    println!("root_public_key={}", hex::encode(sim.root_public_key()));

    let signal = termination()?;
    let served = tonic::transport::Server::builder()
        .add_service(sim.control())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), signal)
        .await;
    sim.shutdown().await;
    served?;
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM.
fn termination() -> Result<impl std::future::Future<Output = ()>, CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt()).map_err(CliError::Signal)?;
        let mut terminate = signal(SignalKind::terminate()).map_err(CliError::Signal)?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            // Without Ctrl-C support there is nothing to wait for but exit.
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
