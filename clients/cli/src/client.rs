//! Connection to the gateway: the channel, and the API key sent as
//! `x-api-key` metadata on every call.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;
use crate::proto::gateway::gateway_client::GatewayClient;

/// Default gateway address (the server's default listen address).
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// How long to wait for the TCP connection before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Adds the API key, when there is one, to each request.
#[derive(Clone)]
pub struct ApiKey(Option<MetadataValue<Ascii>>);

impl ApiKey {
    /// An empty key means none (so `WAGATE_API_KEY=` disables it).
    pub fn new(key: Option<&str>) -> Result<Self, CliError> {
        match key.filter(|k| !k.is_empty()) {
            None => Ok(ApiKey(None)),
            // Header values may carry more than this, but a key that is not
            // printable ASCII is a mistake (a stray newline, a wrong file).
            Some(k) if !k.bytes().all(|b| b.is_ascii_graphic()) => Err(CliError::ApiKey),
            Some(k) => k
                .parse()
                .map(|v| ApiKey(Some(v)))
                .map_err(|_| CliError::ApiKey),
        }
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(key) = &self.0 {
            req.metadata_mut().insert("x-api-key", key.clone());
        }
        Ok(req)
    }
}

pub type Gateway = GatewayClient<InterceptedService<Channel, ApiKey>>;

/// Opens the channel now, so an unreachable gateway is reported as such
/// before any command runs.
pub async fn connect(addr: &str, key: ApiKey) -> Result<Gateway, CliError> {
    let channel = channel(addr).await?;
    Ok(GatewayClient::with_interceptor(channel, key))
}

/// A connected channel to `addr` (`http://host:port`; a bare `host:port`
/// is taken as plaintext HTTP/2).
pub async fn channel(addr: &str) -> Result<Channel, CliError> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(uri).map_err(|source| CliError::Address {
        addr: addr.to_owned(),
        source,
    })?;
    endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|source| CliError::Connect {
            addr: addr.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_goes_into_x_api_key() {
        let mut key = ApiKey::new(Some("s3cret")).expect("ascii key");
        let req = key.call(tonic::Request::new(())).expect("intercept");
        assert_eq!(
            req.metadata()
                .get("x-api-key")
                .and_then(|v| v.to_str().ok()),
            Some("s3cret")
        );
        let mut none = ApiKey::new(Some("")).expect("empty key");
        let req = none.call(tonic::Request::new(())).expect("intercept");
        assert!(req.metadata().get("x-api-key").is_none());
        for bad in ["k\u{e9}y", "key\n", "a key"] {
            assert!(
                matches!(ApiKey::new(Some(bad)), Err(CliError::ApiKey)),
                "{bad:?}"
            );
        }
    }
}
