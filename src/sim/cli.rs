//! `wagate sim`: runs the simulator with its gRPC control service (plus
//! health and reflection) until SIGINT or SIGTERM. Imports `sim` and the
//! generated protobuf code only.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use super::{MediaConfig, SimConfig, SimError, Simulator, DEFAULT_MAX_UPLOAD};
use crate::proto::sim::simulator_server::SimulatorServer;
use crate::proto::FILE_DESCRIPTOR_SET;

/// Options of `wagate sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address of the chat websocket (clients connect to ws://ADDR/ws/chat).
    #[arg(long, default_value = "127.0.0.1:5290", env = "WAGATE_SIM_LISTEN")]
    pub listen: SocketAddr,
    /// Another address of the chat websocket (repeatable): one loopback
    /// address pair gives clients about 28,000 connections, so tens of
    /// thousands of sessions need several. Printed as `ws_urls=`.
    #[arg(long, value_name = "ADDR")]
    pub also_listen: Vec<SocketAddr>,
    /// Address of the gRPC control API (plaintext; health and reflection too).
    #[arg(long, default_value = "127.0.0.1:5291", env = "WAGATE_SIM_CONTROL")]
    pub control: SocketAddr,
    /// Seed for every key the simulator makes, for a stable root key.
    #[arg(long, env = "WAGATE_SIM_SEED")]
    pub seed: Option<u64>,
    /// Address of the media host (plain HTTP: uploads and downloads);
    /// a free port on the chat address's host when unset (printed as
    /// `media_url=` and returned by `Info`).
    #[arg(long, env = "WAGATE_SIM_MEDIA_LISTEN")]
    pub media_listen: Option<SocketAddr>,
    /// Base URL the media host advertises, e.g. `https://media.test` behind a
    /// TLS proxy (default: http://MEDIA_LISTEN as bound).
    #[arg(long, env = "WAGATE_SIM_MEDIA_URL")]
    pub media_url: Option<String>,
    /// Directory for accounts, devices, groups and undelivered stanzas, kept
    /// across restarts (private keys in plain: this is a test server); in
    /// memory when unset.
    #[arg(long, env = "WAGATE_SIM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory for media blobs (kept across restarts); DATA_DIR/media with
    /// a data dir, in memory otherwise.
    #[arg(long, env = "WAGATE_SIM_MEDIA_DIR")]
    pub media_dir: Option<PathBuf>,
    /// Largest media upload, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_UPLOAD, env = "WAGATE_SIM_MEDIA_MAX_UPLOAD")]
    pub media_max_upload: u64,
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
    let media = MediaConfig {
        listen: args
            .media_listen
            .unwrap_or_else(|| SocketAddr::new(args.listen.ip(), 0)),
        public_url: args.media_url,
        dir: args
            .media_dir
            .or_else(|| args.data_dir.as_ref().map(|dir| dir.join("media"))),
        max_upload: args.media_max_upload,
        ..MediaConfig::default()
    };
    let sim = Simulator::start_with_media(
        SimConfig {
            listen: args.listen,
            seed: args.seed,
            data_dir: args.data_dir,
        },
        media,
    )
    .await?;
    for addr in &args.also_listen {
        sim.listen_also(*addr).await?;
    }
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

    println!("ws_url={}", sim.ws_url());
    if !args.also_listen.is_empty() {
        // All of them, for `wagate serve --wa-url`.
        println!("ws_urls={}", sim.ws_urls().join(","));
    }
    println!("control={control_addr}");
    println!("media_url={}", sim.media_url());
    println!("root_public_key={}", hex::encode(sim.root_public_key()));

    let served = serve_control(&sim, listener, termination()?).await;
    sim.shutdown().await;
    served
}

/// Serves the control API with health and reflection (v1 and v1alpha) on
/// `listener` until `shutdown` resolves.
pub async fn serve_control(
    sim: &Simulator,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CliError> {
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SimulatorServer<super::Control>>()
        .await;
    tonic::transport::Server::builder()
        .add_service(sim.control())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        // Set per accepted socket: the server builder's `tcp_nodelay` does
        // not reach connections from an incoming stream, and without it
        // small answers wait on Nagle's algorithm for the peer's delayed
        // ACK (tens of milliseconds on some calls).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// Reflection over exactly the services served here (the descriptor set
/// also describes the gateway API, which `wagate sim` does not serve).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name(crate::proto::sim::simulator_server::SERVICE_NAME)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection")
}

/// Resolves on the first SIGINT or SIGTERM.
fn termination() -> Result<impl Future<Output = ()>, CliError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::{v1, v1alpha};

    const EXPECTED: [&str; 4] = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "wagate.sim.v1.Simulator",
    ];

    #[tokio::test]
    async fn control_server_offers_health_and_both_reflection_versions() {
        let sim = Simulator::start(SimConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            seed: None,
            data_dir: None,
        })
        .await
        .expect("simulator starts");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server_sim = sim.clone();
        let server = tokio::spawn(async move {
            serve_control(&server_sim, listener, async {
                let _ = stopped.await;
            })
            .await
        });

        let channel = tonic::transport::Channel::from_shared(url)
            .expect("valid url")
            .connect()
            .await
            .expect("connect");
        let mut v1_client =
            v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut replies = v1_client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("v1 reflection")
            .into_inner();
        let reply = replies
            .message()
            .await
            .expect("v1 reply")
            .expect("one reply");
        let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
            reply.message_response
        else {
            panic!("v1 reflection did not list services: {reply:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, EXPECTED);

        let mut alpha_client =
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "wagate.sim.v1.Simulator".into(),
                ),
            ),
        };
        let mut replies = alpha_client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("v1alpha reflection")
            .into_inner();
        let reply = replies
            .message()
            .await
            .expect("v1alpha reply")
            .expect("one reply");
        assert!(
            matches!(
                reply.message_response,
                Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
                    if !f.file_descriptor_proto.is_empty()
            ),
            "v1alpha reflection describes the simulator: {reply:?}"
        );

        let mut health = HealthClient::new(channel);
        let status = health
            .check(HealthCheckRequest {
                service: "wagate.sim.v1.Simulator".into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32);

        let _ = stop.send(());
        server.await.expect("server task").expect("server ran");
        sim.shutdown().await;
    }
}
