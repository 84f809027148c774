//! API keys as each gateway documents them: the `X-API-Key` header (Venom,
//! whatsapp-web.js), also `?apiKey=` (the whatsapp-web.js production
//! variant), or none (the QR Service and Baileys-WS). Compared in constant
//! time.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// Where a route looks for the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    Header,
    HeaderOrQuery,
}

/// The configured key; `None` means no key is checked (loopback only).
#[derive(Clone)]
pub(crate) struct ApiKey(Option<Arc<[u8]>>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = if self.0.is_some() { "set" } else { "none" };
        write!(f, "ApiKey({set})")
    }
}

impl ApiKey {
    pub(crate) fn new(key: Option<&str>) -> Self {
        ApiKey(
            key.map(str::trim)
                .filter(|k| !k.is_empty())
                .map(|k| Arc::from(k.as_bytes())),
        )
    }

    pub(crate) fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn accepts(&self, presented: Option<&[u8]>) -> bool {
        match (&self.0, presented) {
            (None, _) => true,
            (Some(key), Some(p)) => bool::from(key.as_ref().ct_eq(p)),
            (Some(_), None) => false,
        }
    }

    /// Whether `req` carries the key where `auth` says.
    fn admits(&self, auth: Auth, req: &Request) -> bool {
        if auth == Auth::None || self.0.is_none() {
            return true;
        }
        let header = req
            .headers()
            .get("x-api-key")
            .map(|v| v.as_bytes().to_vec());
        if self.accepts(header.as_deref()) {
            return true;
        }
        if auth == Auth::HeaderOrQuery {
            let query = Query::<HashMap<String, String>>::try_from_uri(req.uri())
                .ok()
                .and_then(|q| q.0.get("apiKey").cloned());
            return self.accepts(query.as_deref().map(str::as_bytes));
        }
        false
    }
}

/// Middleware: 401 unless the request carries the key where `auth` says.
pub(crate) async fn check(
    State((key, auth)): State<(ApiKey, Auth)>,
    req: Request,
    next: Next,
) -> Response {
    if key.admits(auth, &req) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, header: Option<&str>) -> Request {
        let mut b = axum::http::Request::builder().uri(uri);
        if let Some(h) = header {
            b = b.header("x-api-key", h);
        }
        b.body(axum::body::Body::empty()).expect("request")
    }

    #[test]
    fn keys_where_documented() {
        let key = ApiKey::new(Some("k1"));
        assert!(key.admits(Auth::Header, &req("/sessions", Some("k1"))));
        assert!(!key.admits(Auth::Header, &req("/sessions", Some("k2"))));
        assert!(!key.admits(Auth::Header, &req("/sessions", None)));
        assert!(!key.admits(Auth::Header, &req("/sessions?apiKey=k1", None)));
        assert!(key.admits(Auth::HeaderOrQuery, &req("/api/x?apiKey=k1", None)));
        assert!(!key.admits(Auth::HeaderOrQuery, &req("/api/x?apiKey=no", None)));
        assert!(key.admits(Auth::None, &req("/init", None)));
        assert!(ApiKey::new(None).admits(Auth::Header, &req("/sessions", None)));
        assert!(!ApiKey::new(Some("  ")).is_set());
    }
}
