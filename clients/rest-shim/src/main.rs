//! `wagate-rest`: flags and env, logs, then the shim until SIGINT/SIGTERM.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;
use wagate_rest::config::{Config, LogFormat};

fn main() -> ExitCode {
    let config = Config::load();
    // RUST_LOG, else the seeds' LOG_LEVEL (`info`, `debug`…), else info.
    let seed_level = std::env::var("LOG_LEVEL")
        .ok()
        .filter(|l| !l.trim().is_empty())
        .and_then(|l| EnvFilter::try_new(l.trim()).ok());
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or(seed_level)
        .unwrap_or_else(|| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Pretty => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wagate-rest: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match wagate_rest::start(config).await {
            Ok(running) => {
                println!("wagate-rest listening on {}", running.addr);
                running.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wagate-rest: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
