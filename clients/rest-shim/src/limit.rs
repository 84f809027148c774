//! Per-IP request rate limit, in memory: each address may make `limit`
//! requests per minute, in a burst or spread out (GCRA: one "theoretical
//! arrival time" per address, so memory is one entry per recent caller).
//! Past the limit the answer is 429 with `Retry-After`. The address is the
//! TCP peer's, or, behind a trusted reverse proxy, the one that proxy put
//! last in `X-Forwarded-For`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

const WINDOW: Duration = Duration::from_secs(60);
/// Past this many tracked addresses, entries that are back to a full
/// allowance are dropped before a new one is added.
const SWEEP_AT: usize = 10_000;

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
    /// Theoretical arrival time of each address's next request.
    tat: Mutex<HashMap<IpAddr, Instant>>,
}

impl RateLimit {
    /// `per_minute` requests per minute and address; `None` for 0 (no limit).
    pub(crate) fn new(per_minute: u32, trust_proxy: bool) -> Option<Self> {
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
            }),
        })
    }

    /// Takes one request of `ip` at `now`: `Err(wait)` when over the limit.
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
    match limit.check(ip, Instant::now()) {
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
        let limit = RateLimit::new(100, false).expect("on");
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
        assert!(RateLimit::new(0, false).is_none());
    }

    #[test]
    fn idle_addresses_are_swept() {
        let limit = RateLimit::new(60, false).expect("on");
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
