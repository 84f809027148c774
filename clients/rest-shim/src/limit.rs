//! Per-IP request rate limit: each address may make `limit` requests per
//! minute, in a burst or spread out (GCRA: one "theoretical arrival time"
//! per address, so state is one entry per recent caller). Past the limit
//! the answer is 429 with `Retry-After`. The address is the TCP peer's, or,
//! behind a trusted reverse proxy, the one that proxy put last in
//! `X-Forwarded-For`.
//!
//! The arrival times are kept in memory (one process), or in Redis so that
//! replicas share one allowance per address: there one Lua script reads the
//! time from Redis's clock, checks and moves the address's arrival time in
//! one atomic step, and lets the key expire when the allowance is full
//! again. When Redis cannot be reached, requests are let through (and a
//! warning logged): the limit protects the API, it must not take it down.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::redis::{self, Reply, Target};

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many tracked addresses, entries that are back to a full
/// allowance are dropped before a new one is added.
const SWEEP_AT: usize = 10_000;
/// How long a request may wait for Redis before it is let through.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// At most one "Redis unreachable" warning per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Prefix of the keys in Redis (one per address).
const KEY_PREFIX: &str = "wagate-rest:rate:";
/// GCRA in one atomic step. KEYS[1]: the address's key; ARGV: interval and
/// burst tolerance in µs. Returns 0 when the request is allowed, else the
/// wait in µs. Numbers are written with `%.0f`: Lua's own formatting of
/// large numbers loses digits.
const GCRA_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then return math.ceil(ahead - tolerance) end
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval),
  'PX', string.format('%.0f', math.ceil((ahead + interval) / 1000)))
return 0
"#;

/// The limiter shared by every request.
#[derive(Clone)]
pub(crate) struct RateLimit {
    inner: Arc<Inner>,
}

struct Inner {
    /// Take the client's address from `X-Forwarded-For`.
    trust_proxy: bool,
    /// Time between two requests at the steady rate.
    interval: Duration,
    /// How far ahead of now an address's arrival time may run (the burst).
    tolerance: Duration,
    /// Theoretical arrival time of each address's next request (memory
    /// backend; unused with Redis).
    tat: Mutex<HashMap<IpAddr, Instant>>,
    redis: Option<Shared>,
}

/// The Redis backend.
struct Shared {
    client: redis::Client,
    last_warning: Mutex<Option<Instant>>,
}

impl RateLimit {
    /// `per_minute` requests per minute and address, kept in memory or in
    /// `redis`; `None` for 0 (no limit).
    pub(crate) fn new(per_minute: u32, trust_proxy: bool, redis: Option<Target>) -> Option<Self> {
        if per_minute == 0 {
            return None;
        }
        let interval = WINDOW / per_minute;
        Some(Self {
            inner: Arc::new(Inner {
                trust_proxy,
                interval,
                tolerance: WINDOW.saturating_sub(interval),
                tat: Mutex::new(HashMap::new()),
                redis: redis.map(|target| Shared {
                    client: redis::Client::new(target, REDIS_TIMEOUT),
                    last_warning: Mutex::new(None),
                }),
            }),
        })
    }

    /// Takes one request of `ip`: `Err(wait)` when over the limit.
    async fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        let Some(shared) = &self.inner.redis else {
            return self.check(ip, Instant::now());
        };
        let key = format!("{KEY_PREFIX}{ip}");
        let interval = self.inner.interval.as_micros().to_string();
        let tolerance = self.inner.tolerance.as_micros().to_string();
        let reply = shared
            .client
            .command(&[
                b"EVAL",
                GCRA_SCRIPT.as_bytes(),
                b"1",
                key.as_bytes(),
                interval.as_bytes(),
                tolerance.as_bytes(),
            ])
            .await;
        match reply {
            Ok(Reply::Int(0)) => Ok(()),
            Ok(Reply::Int(wait_us)) if wait_us > 0 => {
                Err(Duration::from_micros(wait_us.unsigned_abs()))
            }
            Ok(other) => {
                shared.warn(&format!("unexpected reply {other:?}"));
                Ok(())
            }
            Err(e) => {
                shared.warn(&e.to_string());
                Ok(())
            }
        }
    }

    /// Takes one request of `ip` at `now` from the memory backend:
    /// `Err(wait)` when over the limit.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let inner = &self.inner;
        // Plain map updates: a panic cannot leave an entry torn.
        let mut map = inner.tat.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= SWEEP_AT && !map.contains_key(&ip) {
            map.retain(|_, tat| *tat > now);
        }
        let tat = map.get(&ip).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > inner.tolerance {
            return Err(ahead - inner.tolerance);
        }
        map.insert(ip, tat + inner.interval);
        Ok(())
    }
}

impl Shared {
    fn warn(&self, why: &str) {
        let now = Instant::now();
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            return;
        }
        *last = Some(now);
        drop(last);
        tracing::warn!(redis = ?self.client.target(), "rate limit not applied, requests let through: {why}");
    }
}

/// The middleware: the caller's address is the connection's peer.
pub(crate) async fn middleware(
    State(limit): State<RateLimit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let ip = if limit.inner.trust_proxy {
        forwarded_for(req.headers()).unwrap_or(peer.ip())
    } else {
        peer.ip()
    };
    match limit.take(ip).await {
        Ok(()) => next.run(req).await,
        Err(wait) => ApiError::RateLimited(wait).into_response(),
    }
}

/// The address the nearest proxy appended to `X-Forwarded-For` (the last
/// one: what comes before it was sent by the client and proves nothing).
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|v| !v.is_empty())?;
    last.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_the_limit_then_one_per_interval() {
        let limit = RateLimit::new(100, false, None).expect("on");
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let t0 = Instant::now();
        for i in 0..100 {
            assert!(limit.check(a, t0).is_ok(), "request {i}");
        }
        let wait = limit.check(a, t0).expect_err("101st refused");
        assert_eq!(wait, Duration::from_millis(600));
        assert!(
            limit.check(b, t0).is_ok(),
            "another address has its own allowance"
        );
        assert!(limit.check(a, t0 + Duration::from_millis(599)).is_err());
        assert!(limit.check(a, t0 + Duration::from_millis(600)).is_ok());
        // A minute later the full burst is back.
        let later = t0 + Duration::from_secs(61);
        for _ in 0..100 {
            assert!(limit.check(a, later).is_ok());
        }
        assert!(limit.check(a, later).is_err());
    }

    #[test]
    fn the_proxy_appends_the_client_address_last() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers), None);
        headers.append(
            "x-forwarded-for",
            "1.1.1.1, 2.2.2.2".parse().expect("value"),
        );
        headers.append("x-forwarded-for", " 203.0.113.7 ".parse().expect("value"));
        assert_eq!(forwarded_for(&headers), Some([203, 0, 113, 7].into()));
        headers.insert("x-forwarded-for", "not-an-ip".parse().expect("value"));
        assert_eq!(forwarded_for(&headers), None);
    }

    #[test]
    fn zero_means_no_limit() {
        assert!(RateLimit::new(0, false, None).is_none());
    }

    #[test]
    fn idle_addresses_are_swept() {
        let limit = RateLimit::new(60, false, None).expect("on");
        let t0 = Instant::now();
        for i in 0..SWEEP_AT as u32 {
            assert!(limit.check(IpAddr::from(i.to_be_bytes()), t0).is_ok());
        }
        let later = t0 + Duration::from_secs(2);
        assert!(limit.check([1, 2, 3, 4].into(), later).is_ok());
        let tracked = limit.inner.tat.lock().expect("lock").len();
        assert_eq!(tracked, 1, "entries back to a full allowance were dropped");
    }
}
