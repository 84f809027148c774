//! The one error type of the load tool: every failure names the step and
//! the process it concerns, so a broken run says where it broke.

use std::path::PathBuf;
use std::time::Duration;

/// Why a load run stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot start {what} ({bin}): {source}")]
    Spawn {
        what: &'static str,
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} stopped before it was ready")]
    NotReady { what: &'static str },
    #[error("cannot connect to {what} at {url}: {source}")]
    Connect {
        what: &'static str,
        url: String,
        source: tonic::transport::Error,
    },
    #[error("{what}: {status}")]
    Rpc {
        what: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("the {what} Events stream ended")]
    StreamEnded { what: &'static str },
    #[error("{what}: nothing happened for {after:?}")]
    Stalled { what: String, after: Duration },
    #[error("cannot read {path}: {source}")]
    Proc {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("cannot signal process {pid}: {source}")]
    Signal { pid: u32, source: std::io::Error },
    #[error("{0}")]
    Setup(String),
    #[error("a worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl LoadError {
    /// Wraps a gRPC status with the call that returned it.
    pub(crate) fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Rpc {
            what,
            status: Box::new(status),
        }
    }
}
