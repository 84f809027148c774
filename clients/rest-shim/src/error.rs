//! The shim's one error type for HTTP handlers, and the one place where a
//! gRPC status from the gateway becomes an HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field is missing or has the wrong type or form.
    #[error("{field}: {why}")]
    Field { field: String, why: String },
    /// The body is not JSON (or not a JSON object), or not a readable form.
    #[error("invalid request body: {0}")]
    Body(String),
    #[error("session {0} not found")]
    UnknownSession(String),
    /// Something other than a session is not there (an upload).
    #[error("{0}")]
    NotFound(String),
    #[error("missing or invalid API key")]
    Unauthorized,
    /// A documented feature wagate cannot do.
    #[error("{0}")]
    NotSupported(String),
    /// A media file over the configured limit.
    #[error("media too large: {0}")]
    TooLarge(String),
    /// The session is in the wrong state for the request.
    #[error("{0}")]
    Conflict(String),
    #[error("session limit reached ({0} sessions); delete one or raise --max-sessions")]
    SessionLimit(usize),
    /// The caller's address is over the request rate limit.
    #[error("too many requests; retry in {} s", retry_after_secs(*.0))]
    RateLimited(std::time::Duration),
    /// The gateway answered with an error.
    #[error("{}", .0.message())]
    Gateway(tonic::Status),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: &str, why: impl std::fmt::Display) -> Self {
        ApiError::Field {
            field: field.to_owned(),
            why: why.to_string(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Field { .. } | ApiError::Body(_) => StatusCode::BAD_REQUEST,
            ApiError::UnknownSession(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotSupported(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::SessionLimit(_) | ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Gateway(status) => http_status(status.code()),
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// A gateway answer to a media send: RESOURCE_EXHAUSTED for a file
    /// over the gateway's size limit is 413; for too many uploads at once
    /// it stays 429.
    pub fn from_media_send(status: tonic::Status) -> Self {
        if status.code() == Code::ResourceExhausted
            && status.message().contains("larger than the limit")
        {
            ApiError::TooLarge(status.message().to_owned())
        } else {
            ApiError::Gateway(status)
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        ApiError::Gateway(status)
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1.
fn retry_after_secs(wait: std::time::Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

/// gRPC code of a gateway answer → HTTP status of the shim's answer.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        // The caller's key was already checked by the shim: a gateway that
        // refuses the shim is a misconfigured upstream, not the caller's fault.
        Code::Unauthenticated | Code::PermissionDenied => StatusCode::BAD_GATEWAY,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::BAD_GATEWAY,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "request failed: {self}");
        }
        // Every dialect's error body: the Node gateways answer
        // `{success:false, error}` (or `{error}`) on failure.
        let mut response = (
            status,
            Json(json!({ "success": false, "error": self.to_string() })),
        )
            .into_response();
        if let ApiError::RateLimited(wait) = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_codes_map_to_http() {
        let cases = [
            (Code::NotFound, 404),
            (Code::InvalidArgument, 400),
            (Code::FailedPrecondition, 409),
            (Code::Unauthenticated, 502),
            (Code::Unavailable, 503),
            (Code::ResourceExhausted, 429),
            (Code::Unimplemented, 501),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 502),
        ];
        for (code, want) in cases {
            let err = ApiError::from(tonic::Status::new(code, "x"));
            assert_eq!(err.status().as_u16(), want, "{code:?}");
        }
        assert_eq!(ApiError::field("sessionId", "missing").status(), 400);
        assert_eq!(ApiError::Unauthorized.status(), 401);
        assert_eq!(ApiError::UnknownSession("a".into()).status(), 404);
    }

    #[test]
    fn only_a_size_refusal_of_a_media_send_is_413() {
        let big =
            tonic::Status::resource_exhausted("the media is larger than the limit of 10 bytes");
        assert_eq!(ApiError::from_media_send(big).status(), 413);
        let busy = tonic::Status::resource_exhausted("too many uploads in progress");
        assert_eq!(ApiError::from_media_send(busy).status(), 429);
        let gone = tonic::Status::not_found("session s1 not found");
        assert_eq!(ApiError::from_media_send(gone).status(), 404);
    }

    #[test]
    fn field_errors_name_the_field() {
        let err = ApiError::field("sessionId", "required field is missing");
        assert_eq!(err.to_string(), "sessionId: required field is missing");
    }
}
