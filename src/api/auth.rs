//! API keys: `x-api-key: KEY` or `authorization: Bearer KEY`, compared in
//! constant time. Health checks never need a key.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The configured keys; empty means every call is allowed.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} configured)", self.keys.len())
    }
}

impl ApiKeys {
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            keys: Arc::new(
                keys.into_iter()
                    .map(|k| k.trim().as_bytes().to_vec())
                    .filter(|k| !k.is_empty())
                    .collect(),
            ),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn accepts(&self, presented: &[u8]) -> bool {
        // Check every key so timing does not reveal which one matched.
        self.keys.iter().fold(false, |ok, key| {
            ok | bool::from(key.as_slice().ct_eq(presented))
        })
    }

    /// Tonic interceptor body.
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.keys.is_empty() {
            return Ok(request);
        }
        let meta = request.metadata();
        let presented = meta
            .get("x-api-key")
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| {
                meta.get("authorization").and_then(|v| {
                    let v = v.as_bytes();
                    let prefix = b"Bearer ";
                    (v.len() > prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix))
                        .then(|| v[prefix.len()..].to_vec())
                })
            });
        match presented {
            None => Err(Status::unauthenticated(
                "missing API key: send `x-api-key: KEY` or `authorization: Bearer KEY`",
            )),
            Some(key) if self.accepts(&key) => Ok(request),
            Some(_) => Err(Status::unauthenticated("invalid API key")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(header: &'static str, value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert(header, value.parse().expect("ascii metadata"));
        r
    }

    #[test]
    fn accepts_both_header_forms_and_rejects_others() {
        let keys = ApiKeys::new(["k1".to_owned(), "secret-2".to_owned()]);
        assert!(keys.check(request("x-api-key", "k1")).is_ok());
        assert!(keys
            .check(request("authorization", "Bearer secret-2"))
            .is_ok());
        assert!(keys
            .check(request("authorization", "bearer secret-2"))
            .is_ok());
        let wrong = keys
            .check(request("x-api-key", "k2"))
            .expect_err("wrong key");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = keys.check(Request::new(())).expect_err("no key");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(keys.check(request("authorization", "Basic k1")).is_err());
    }

    #[test]
    fn no_keys_allows_all() {
        assert!(ApiKeys::new(Vec::new()).check(Request::new(())).is_ok());
    }
}
