//! One webhook POST until it is done: per-attempt timeout, HMAC-SHA256
//! signature, event id header, retries with exponential backoff and jitter
//! (none on a 4xx answer other than 408 and 429). `http://` and `https://`
//! targets alike (TLS in `tls`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, Request, StatusCode, Uri};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use sha2::Sha256;
use tokio::sync::watch;

use super::formats::Delivery;
use super::tls::Connector;

/// Signature header: `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub(crate) const SIGNATURE: &str = "x-wagate-signature-256";
/// Stable id of one webhook (same on every retry and after a restart).
pub(crate) const EVENT_ID: &str = "x-wagate-event-id";

#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    /// 0 = until it succeeds.
    pub(crate) max_attempts: u32,
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1` (attempt ≥ 1): base·2^(attempt-1)
    /// capped at max, then "equal jitter" (half fixed, half random) so that
    /// many failing deliveries do not retry in lockstep.
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let half = capped / 2;
        let jitter_ms = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// How one attempt failed.
#[derive(Debug)]
enum Failure {
    Status(StatusCode, Option<Duration>),
    Timeout,
    Transport(String),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Status(code, _) => {
                !code.is_client_error()
                    || *code == StatusCode::REQUEST_TIMEOUT
                    || *code == StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Timeout | Failure::Transport(_) => true,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(code, _) => write!(f, "answered {code}"),
            Failure::Timeout => write!(f, "no answer in time"),
            Failure::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// What became of a webhook.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    /// Refused for good (a 4xx answer, or the attempts ran out): logged and
    /// dropped so later events of the session are not held back forever.
    Dropped,
    /// The shim is stopping; the webhook is owed and will be sent again.
    Stopped,
}

/// Ids and names sent with a webhook.
pub(crate) struct Meta<'a> {
    pub(crate) event_id: &'a str,
    pub(crate) session: &'a str,
}

#[derive(Clone)]
pub(crate) struct Sender {
    client: Client<Connector, Full<Bytes>>,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    policy: RetryPolicy,
}

impl Sender {
    pub(crate) fn new(
        secret: Option<&str>,
        timeout: Duration,
        policy: RetryPolicy,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(timeout));
        tcp.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new()).build(Connector::new(tcp, tls)),
            secret: secret
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec()),
            timeout,
            policy,
        }
    }

    /// Sends `delivery` until it is delivered, refused for good, or `stop`
    /// turns true.
    pub(crate) async fn deliver(
        &self,
        delivery: &Delivery,
        meta: &Meta<'_>,
        stop: &mut watch::Receiver<bool>,
    ) -> Outcome {
        let body = match serde_json::to_vec(&delivery.body) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(session = meta.session, "cannot encode webhook: {e}");
                return Outcome::Dropped;
            }
        };
        let target = redacted(&delivery.url);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = tokio::select! {
                r = self.attempt(delivery, meta, body.clone(), attempt) => r,
                _ = stop.wait_for(|s| *s) => return Outcome::Stopped,
            };
            let failure = match result {
                Ok(()) => {
                    tracing::debug!(session = meta.session, event = delivery.name, attempt, %target, "webhook delivered");
                    return Outcome::Delivered;
                }
                Err(f) => f,
            };
            if !failure.retryable() {
                tracing::warn!(session = meta.session, event = delivery.name, event_id = meta.event_id, %target,
                    "webhook refused ({failure}); not retried");
                return Outcome::Dropped;
            }
            if self.policy.max_attempts > 0 && attempt >= self.policy.max_attempts {
                tracing::error!(session = meta.session, event = delivery.name, event_id = meta.event_id, %target,
                    attempt, "webhook failed ({failure}); giving up after the last attempt");
                return Outcome::Dropped;
            }
            let mut delay = self.policy.delay(attempt);
            if let Failure::Status(_, Some(after)) = failure {
                delay = delay.max(after).min(self.policy.max);
            }
            tracing::warn!(session = meta.session, event = delivery.name, %target, attempt,
                retry_in_ms = delay.as_millis() as u64, "webhook failed ({failure})");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|s| *s) => return Outcome::Stopped,
            }
        }
    }

    async fn attempt(
        &self,
        delivery: &Delivery,
        meta: &Meta<'_>,
        body: Bytes,
        attempt: u32,
    ) -> Result<(), Failure> {
        let uri: Uri = delivery
            .url
            .parse()
            .map_err(|e| Failure::Transport(format!("bad URL: {e}")))?;
        let mut builder = Request::post(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("wagate-rest/", env!("CARGO_PKG_VERSION")),
            )
            .header(EVENT_ID, meta.event_id)
            .header("x-wagate-event", delivery.name)
            .header("x-wagate-session", meta.session)
            .header("x-wagate-attempt", attempt.to_string());
        if let Some(secret) = &self.secret {
            builder = builder.header(SIGNATURE, sign(secret, &body));
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let response = tokio::time::timeout(self.timeout, self.client.request(request))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| Failure::Transport(transport_error(&e)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Failure::Status(status, retry_after))
    }
}

/// `sha256=<hex>` of HMAC-SHA256 over the exact body bytes.
pub(crate) fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn transport_error(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The URL without its query (which may carry tokens), for logs.
fn redacted(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules() {
        let retry = |code: u16| {
            Failure::Status(StatusCode::from_u16(code).expect("code"), None).retryable()
        };
        assert!(retry(500) && retry(503) && retry(408) && retry(429));
        assert!(!retry(400) && !retry(401) && !retry(404) && !retry(410));
        assert!(Failure::Timeout.retryable());
        assert!(Failure::Transport("refused".into()).retryable());
    }

    #[test]
    fn backoff_doubles_within_jitter_and_caps() {
        let policy = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            max_attempts: 0,
        };
        for _ in 0..50 {
            let d1 = policy.delay(1).as_millis();
            let d3 = policy.delay(3).as_millis();
            let d9 = policy.delay(9).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            assert!((200..=400).contains(&d3), "{d3}");
            assert!((500..=1000).contains(&d9), "{d9}");
        }
    }

    #[test]
    fn signature_matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
