//! CORS: browsers on the configured origins may call the API (the Venom
//! README's "restrict CORS to your domains"). With no origin configured no
//! CORS header is sent, so browsers keep to the same origin. Preflight
//! `OPTIONS` requests are answered here, before keys are checked (browsers
//! send no credentials on a preflight).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Methods the shim's routes use.
const METHODS: &str = "GET, POST, DELETE, OPTIONS";
/// Request headers the documented clients send.
const HEADERS: &str = "content-type, x-api-key, authorization, idempotency-key";
/// How long browsers may cache a preflight answer, in seconds.
const MAX_AGE: &str = "600";

/// The allowed origins.
#[derive(Clone, Debug)]
pub(crate) struct Cors {
    origins: Arc<Vec<String>>,
}

impl Cors {
    /// `origins` as configured (`*` = any); `None` when empty.
    pub(crate) fn new(origins: &[String]) -> Option<Self> {
        let origins: Vec<String> = origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        (!origins.is_empty()).then(|| Self {
            origins: Arc::new(origins),
        })
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, if allowed.
    fn allow(&self, origin: &str) -> Option<HeaderValue> {
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        self.origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(origin))
            .then(|| HeaderValue::from_str(origin).ok())
            .flatten()
    }
}

fn origin_of(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

pub(crate) async fn middleware(State(cors): State<Cors>, req: Request, next: Next) -> Response {
    let Some(origin) = origin_of(req.headers()).map(str::to_owned) else {
        return next.run(req).await;
    };
    let allowed = cors.allow(&origin);
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let Some(allow) = allowed else {
            return (
                StatusCode::FORBIDDEN,
                Json(
                    json!({ "success": false, "error": format!("origin {origin} is not allowed") }),
                ),
            )
                .into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return response;
    }
    let mut response = next.run(req).await;
    if let Some(allow) = allowed {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("retry-after"),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_exactly_or_any() {
        let cors = Cors::new(&["https://app.example/".into(), " ".into()]).expect("on");
        assert!(cors.allow("https://app.example").is_some());
        assert!(cors.allow("https://APP.example").is_some());
        assert!(cors.allow("https://evil.example").is_none());
        assert!(cors.allow("http://app.example").is_none());
        let any = Cors::new(&["*".into()]).expect("on");
        assert_eq!(
            any.allow("https://x.example"),
            Some(HeaderValue::from_static("*"))
        );
        assert!(Cors::new(&[]).is_none());
        assert!(Cors::new(&[String::new()]).is_none());
    }
}
