//! The one place internal errors become gRPC statuses.

use tonic::Status;

use crate::runtime::{RuntimeError, SendError};
use crate::store::StoreError;

impl From<RuntimeError> for Status {
    fn from(e: RuntimeError) -> Self {
        match &e {
            RuntimeError::NotFound(_) => Status::not_found(e.to_string()),
            RuntimeError::SessionLimit(_) => Status::resource_exhausted(e.to_string()),
            RuntimeError::WrongState(_) => Status::failed_precondition(e.to_string()),
            RuntimeError::ShuttingDown => Status::unavailable(e.to_string()),
            RuntimeError::Store(inner) => store_status(inner),
            RuntimeError::Send(inner) => send_status(inner),
        }
    }
}

fn send_status(e: &SendError) -> Status {
    let message = e.to_string();
    match e {
        SendError::NotConnected => Status::failed_precondition(message),
        SendError::UnknownRecipient(_) => Status::not_found(message),
        SendError::Unsupported(_) => Status::unimplemented(message),
        SendError::Timeout => Status::deadline_exceeded(message),
        SendError::ConnectionLost(_) => Status::unavailable(message),
        SendError::Refused(_) => Status::failed_precondition(message),
        SendError::Encryption(_) => Status::failed_precondition(message),
        SendError::Store(_) => Status::unavailable(message),
        SendError::IdempotencyConflict(_) => Status::invalid_argument(message),
    }
}

fn store_status(e: &StoreError) -> Status {
    tracing::error!("store error: {e}");
    if e.is_retryable() {
        Status::unavailable(format!("storage temporarily unavailable: {e}"))
    } else {
        Status::internal(format!("storage error: {e}"))
    }
}

/// Bad input from the caller.
pub(crate) fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {why}"))
}
