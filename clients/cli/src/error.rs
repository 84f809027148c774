//! Errors of the command line and the exit code each one ends the process
//! with, so scripts can tell the failures apart.

use tonic::Code;

/// Exit codes, documented in `wagatectl --help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const OTHER: u8 = 1;
    /// Bad command line (clap's own code), or arguments the gateway refuses.
    pub const USAGE: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    /// The session is in the wrong state for the command.
    pub const PRECONDITION: u8 = 4;
    pub const UNAUTHENTICATED: u8 = 5;
    /// The gateway cannot be reached or is not serving.
    pub const UNAVAILABLE: u8 = 6;
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[from] tonic::Status),
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid address {addr:?}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the API key must be printable ASCII")]
    ApiKey,
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    WrongState(String),
    #[error("the gateway ended the stream")]
    StreamEnded,
    #[error("{0}")]
    Qr(#[from] crate::qr::QrError),
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The message with its causes, `outer: inner: innermost`.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(&format!(": {c}"));
            cause = c.source();
        }
        text
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Rpc(status) => match status.code() {
                Code::NotFound => exit::NOT_FOUND,
                Code::FailedPrecondition => exit::PRECONDITION,
                Code::Unauthenticated => exit::UNAUTHENTICATED,
                Code::Unavailable => exit::UNAVAILABLE,
                Code::InvalidArgument => exit::USAGE,
                _ => exit::OTHER,
            },
            CliError::Connect { .. } | CliError::StreamEnded => exit::UNAVAILABLE,
            CliError::Address { .. } | CliError::ApiKey | CliError::Usage(_) => exit::USAGE,
            CliError::WrongState(_) => exit::PRECONDITION,
            CliError::Qr(_) | CliError::Io(_) => exit::OTHER,
        }
    }
}

/// gRPC code names as the specification spells them (`NOT_FOUND`), which is
/// what the gateway's documentation uses.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        let cases = [
            (Code::NotFound, 3),
            (Code::FailedPrecondition, 4),
            (Code::Unauthenticated, 5),
            (Code::Unavailable, 6),
            (Code::InvalidArgument, 2),
            (Code::Unimplemented, 1),
            (Code::Internal, 1),
        ];
        for (code, want) in cases {
            let err = CliError::Rpc(tonic::Status::new(code, "x"));
            assert_eq!(err.exit_code(), want, "{code:?}");
        }
        assert_eq!(CliError::WrongState("x".into()).exit_code(), 4);
        assert_eq!(CliError::StreamEnded.exit_code(), 6);
    }

    #[test]
    fn messages_name_the_status() {
        let err = CliError::Rpc(tonic::Status::not_found("no session \"a\""));
        assert_eq!(err.to_string(), "NOT_FOUND: no session \"a\"");
    }
}
