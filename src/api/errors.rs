//! The one place internal errors become gRPC statuses, and the one place an
//! error message quotes what the caller sent.
//!
//! The codes are chosen for retry policies: UNAVAILABLE means the same call
//! can succeed later without anyone acting (standard gRPC retry policies
//! retry it); FAILED_PRECONDITION means the session will not get there by
//! itself (it must be paired, re-initialised or logged in again).

use tonic::Status;

use crate::runtime::{MediaFailure, RuntimeError, SendError};
use crate::store::StoreError;

/// Characters of caller input an error message quotes at most.
const QUOTE_MAX: usize = 64;
/// Longest explanation an INVALID_ARGUMENT carries, whatever produced it.
const WHY_MAX: usize = 512;

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Self {
        match &e {
            RuntimeError::NotFound(_) => Status::not_found(e.to_string()),
            RuntimeError::SessionLimit(_) => Status::resource_exhausted(e.to_string()),
            RuntimeError::AlreadyConnected(_)
            | RuntimeError::NoQrYet { .. }
            | RuntimeError::NotPaired(_)
            | RuntimeError::Stopped { .. }
            | RuntimeError::LoggedOut(_) => Status::failed_precondition(e.to_string()),
            RuntimeError::Reconnecting(_)
            | RuntimeError::Moving(_)
            | RuntimeError::ShuttingDown => Status::unavailable(e.to_string()),
            RuntimeError::OwnedElsewhere { address, .. } => {
                let mut status = Status::unavailable(e.to_string());
                if let Ok(value) = address.parse() {
                    status.metadata_mut().insert("wagate-owner", value);
                }
                status
            }
            RuntimeError::Store(inner) => store_status(inner),
            RuntimeError::Send(inner) => send_status(inner),
            RuntimeError::QueryTimeout => Status::deadline_exceeded(e.to_string()),
            RuntimeError::Media(inner) => media_status(inner),
        }
    }
}

fn media_status(e: &MediaFailure) -> Status {
    let message = e.to_string();
    match e {
        MediaFailure::TooLarge { .. } | MediaFailure::TooMany(_) => {
            Status::resource_exhausted(message)
        }
        MediaFailure::Invalid(_) => Status::invalid_argument(message),
        MediaFailure::NotFound(_) => Status::not_found(message),
        MediaFailure::DataLoss(_) => Status::data_loss(message),
        MediaFailure::Fetch(_) => Status::failed_precondition(message),
        MediaFailure::Hosts(_) => Status::unavailable(message),
        MediaFailure::Io(_) => {
            tracing::error!("media temporary file: {message}");
            Status::internal(message)
        }
    }
}

fn send_status(e: &SendError) -> Status {
    let message = e.to_string();
    match e {
        // The registry turns the actor's NotConnected into the session's
        // actual situation; one that still gets here raced a reconnect.
        SendError::NotConnected => Status::unavailable(message),
        SendError::UnknownRecipient(_) => Status::not_found(message),
        SendError::Unsupported(_) => Status::unimplemented(message),
        SendError::Timeout => Status::deadline_exceeded(message),
        SendError::ConnectionLost(_) => Status::unavailable(message),
        SendError::Refused(_) => Status::failed_precondition(message),
        SendError::UnknownGroup(_) => Status::not_found(message),
        SendError::NotAMember(_) => Status::failed_precondition(message),
        SendError::Encryption(_) => Status::failed_precondition(message),
        SendError::Store(_) => Status::unavailable(message),
        SendError::IdempotencyConflict(_) => Status::invalid_argument(message),
        SendError::UnknownPoll(_) => Status::failed_precondition(message),
        SendError::InvalidVote(_) => Status::invalid_argument(message),
    }
}

/// A store failure is never the caller's fault: UNAVAILABLE when trying
/// again can help, INTERNAL otherwise.
fn store_status(e: &StoreError) -> Status {
    tracing::error!("store error: {e}");
    if e.is_retryable() {
        Status::unavailable(format!("storage temporarily unavailable: {e}"))
    } else {
        Status::internal(format!("storage error: {e}"))
    }
}

/// Bad input from the caller. Quote the input with [`quote`]; the
/// explanation is capped here as well, so no message echoes a large input.
pub(crate) fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    let why = why.to_string();
    Status::invalid_argument(format!("{field}: {}", cap(&why, WHY_MAX)))
}

/// Caller input as an error message shows it: quoted, at most
/// [`QUOTE_MAX`] characters, an ellipsis when cut.
pub(crate) fn quote(raw: &str) -> String {
    format!("{:?}", cap(raw, QUOTE_MAX))
}

fn cap(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_capped() {
        assert_eq!(quote("+1 555"), "\"+1 555\"");
        let long = "9".repeat(1 << 20);
        let q = quote(&long);
        assert_eq!(q, format!("\"{}…\"", "9".repeat(QUOTE_MAX)));
        let wide = "ü".repeat(100);
        assert_eq!(quote(&wide).chars().count(), QUOTE_MAX + 3);
        let status = invalid("to", format!("{} is bad", long));
        assert!(
            status.message().len() < 2 * WHY_MAX,
            "{}",
            status.message().len()
        );
        assert!(status.message().starts_with("to: 999"));
    }

    #[test]
    fn transient_and_permanent_disconnects_differ() {
        let id: crate::store::SessionId = "s".parse().expect("id");
        let code = |e: RuntimeError| Status::from(e).code();
        assert_eq!(
            code(RuntimeError::Reconnecting(id.clone())),
            tonic::Code::Unavailable
        );
        assert_eq!(code(RuntimeError::ShuttingDown), tonic::Code::Unavailable);
        for permanent in [
            RuntimeError::NotPaired(id.clone()),
            RuntimeError::LoggedOut(id.clone()),
            RuntimeError::Stopped {
                id: id.clone(),
                reason: "replaced".into(),
            },
        ] {
            assert_eq!(code(permanent), tonic::Code::FailedPrecondition);
        }
        assert_eq!(
            code(RuntimeError::Store(StoreError::Unavailable("busy".into()))),
            tonic::Code::Unavailable
        );
    }
}
