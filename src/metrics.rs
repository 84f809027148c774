//! Process metrics: one set of atomic counters and gauges, read by two
//! exporters — a Prometheus scrape endpoint (`--metrics-listen`) and
//! OpenTelemetry over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! Imports no other layer; the runtime and the API update it.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Session states as labels, in the API's order.
pub const STATES: [&str; 5] = [
    "disconnected",
    "connecting",
    "qr_ready",
    "connected",
    "logged_out",
];

/// Upper bounds (seconds) of the handshake latency histogram.
const HANDSHAKE_BUCKETS: [f64; 8] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// A latency histogram with fixed buckets, in microseconds internally.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; HANDSHAKE_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, bucket) in HANDSHAKE_BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }
}

/// Everything the gateway counts.
#[derive(Default)]
pub struct Metrics {
    sessions: [AtomicI64; 5],
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub events_written: AtomicU64,
    pub events_streamed: AtomicU64,
    /// Sum (ms) and count of commit-to-delivery delays of streamed events.
    pub event_lag_ms_sum: AtomicU64,
    pub event_lag_count: AtomicU64,
    pub reconnects: AtomicU64,
    /// Commits the store refused because another gateway had claimed the
    /// session since (its fencing token moved on): writes of a former
    /// owner, none of which reached the store.
    pub fenced_writes: AtomicU64,
    pub handshake: Histogram,
}

static GLOBAL: OnceLock<Arc<Metrics>> = OnceLock::new();

/// The process-wide metrics.
pub fn global() -> &'static Arc<Metrics> {
    GLOBAL.get_or_init(|| Arc::new(Metrics::default()))
}

impl Metrics {
    /// A session moved from `from` (None when new) to `to` (indexes into [`STATES`]).
    pub fn session_moved(&self, from: Option<usize>, to: usize) {
        if from == Some(to) {
            return;
        }
        if let Some(slot) = from.and_then(|i| self.sessions.get(i)) {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(slot) = self.sessions.get(to) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn sessions_in(&self, state: usize) -> i64 {
        self.sessions
            .get(state)
            .map_or(0, |s| s.load(Ordering::Relaxed))
    }

    pub fn event_delivered(&self, lag: Duration) {
        self.events_streamed.fetch_add(1, Ordering::Relaxed);
        self.event_lag_ms_sum
            .fetch_add(lag.as_millis() as u64, Ordering::Relaxed);
        self.event_lag_count.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        out.push_str("# HELP wagate_sessions Sessions by state.\n# TYPE wagate_sessions gauge\n");
        for (i, state) in STATES.iter().enumerate() {
            let _ = writeln!(
                out,
                "wagate_sessions{{state=\"{state}\"}} {}",
                self.sessions_in(i)
            );
        }
        let counters: [(&str, &str, u64); 6] = [
            (
                "wagate_messages_received_total",
                "Messages received from WhatsApp.",
                get(&self.messages_in),
            ),
            (
                "wagate_messages_sent_total",
                "Messages sent to WhatsApp.",
                get(&self.messages_out),
            ),
            (
                "wagate_events_written_total",
                "Events committed to the event log.",
                get(&self.events_written),
            ),
            (
                "wagate_events_streamed_total",
                "Events delivered to Events subscribers.",
                get(&self.events_streamed),
            ),
            (
                "wagate_reconnects_total",
                "Reconnects after a connection ended.",
                get(&self.reconnects),
            ),
            (
                "wagate_fenced_writes_total",
                "Commits refused because another gateway owns the session now.",
                get(&self.fenced_writes),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP wagate_event_lag_seconds Delay from commit to delivery of streamed events.\n# TYPE wagate_event_lag_seconds summary\nwagate_event_lag_seconds_sum {}\nwagate_event_lag_seconds_count {}",
            get(&self.event_lag_ms_sum) as f64 / 1000.0,
            get(&self.event_lag_count)
        );
        out.push_str("# HELP wagate_handshake_seconds Time from opening the socket to logged in.\n# TYPE wagate_handshake_seconds histogram\n");
        for (bound, bucket) in HANDSHAKE_BUCKETS.iter().zip(&self.handshake.buckets) {
            let _ = writeln!(
                out,
                "wagate_handshake_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "wagate_handshake_seconds_bucket{{le=\"+Inf\"}} {}\nwagate_handshake_seconds_sum {}\nwagate_handshake_seconds_count {}",
            self.handshake.count(),
            self.handshake.sum_seconds(),
            self.handshake.count()
        );
        out
    }
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until the
/// process ends. Anything else gets 404.
pub async fn serve_prometheus(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        // The reply is one small write; do not let it wait for a delayed ACK.
        let _ = socket.set_nodelay(true);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let read = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf)).await;
            let Ok(Ok(n)) = read else { return };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if request.starts_with("GET ")
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                ("200 OK", metrics.render_prometheus())
            } else {
                ("404 Not Found", "not found; try /metrics\n".to_owned())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Binds the Prometheus endpoint.
pub async fn start_prometheus(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve_prometheus(listener, global().clone()));
    Ok(local)
}

/// Registers OpenTelemetry instruments that read the same counters, for
/// export over OTLP.
pub fn register_otel(meter: &opentelemetry::metrics::Meter) {
    let m = global().clone();
    let s = m.clone();
    meter
        .i64_observable_gauge("wagate.sessions")
        .with_description("Sessions by state")
        .with_callback(move |obs| {
            for (i, state) in STATES.iter().enumerate() {
                obs.observe(
                    s.sessions_in(i),
                    &[opentelemetry::KeyValue::new("state", *state)],
                );
            }
        })
        .build();
    let counter = |name: &'static str, desc: &'static str, read: fn(&Metrics) -> u64| {
        let m = m.clone();
        meter
            .u64_observable_counter(name)
            .with_description(desc)
            .with_callback(move |obs| obs.observe(read(&m), &[]))
            .build();
    };
    counter("wagate.messages.received", "Messages received", |m| {
        m.messages_in.load(Ordering::Relaxed)
    });
    counter("wagate.messages.sent", "Messages sent", |m| {
        m.messages_out.load(Ordering::Relaxed)
    });
    counter("wagate.events.written", "Events committed", |m| {
        m.events_written.load(Ordering::Relaxed)
    });
    counter("wagate.events.streamed", "Events streamed", |m| {
        m.events_streamed.load(Ordering::Relaxed)
    });
    counter("wagate.reconnects", "Reconnects", |m| {
        m.reconnects.load(Ordering::Relaxed)
    });
    counter(
        "wagate.store.fenced_writes",
        "Commits refused to a former owner",
        |m| m.fenced_writes.load(Ordering::Relaxed),
    );
    counter("wagate.handshakes", "Completed logins", |m| {
        m.handshake.count()
    });
    let lag = m.clone();
    meter
        .f64_observable_gauge("wagate.event.lag.mean")
        .with_description("Mean commit-to-delivery delay of streamed events, seconds")
        .with_unit("s")
        .with_callback(move |obs| {
            let n = lag.event_lag_count.load(Ordering::Relaxed);
            if n > 0 {
                obs.observe(
                    lag.event_lag_ms_sum.load(Ordering::Relaxed) as f64 / 1000.0 / n as f64,
                    &[],
                );
            }
        })
        .build();
    let hs = m;
    meter
        .f64_observable_gauge("wagate.handshake.mean")
        .with_description("Mean time from socket open to logged in, seconds")
        .with_unit("s")
        .with_callback(move |obs| {
            let n = hs.handshake.count();
            if n > 0 {
                obs.observe(hs.handshake.sum_seconds() / n as f64, &[]);
            }
        })
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric() {
        let m = Metrics::default();
        m.session_moved(None, 1);
        m.session_moved(Some(1), 3);
        m.handshake.observe(Duration::from_millis(30));
        m.event_delivered(Duration::from_millis(4));
        let text = m.render_prometheus();
        assert!(
            text.contains("wagate_sessions{state=\"connected\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wagate_sessions{state=\"connecting\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("wagate_handshake_seconds_bucket{le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wagate_handshake_seconds_bucket{le=\"0.025\"} 0"),
            "{text}"
        );
        assert!(text.contains("wagate_events_streamed_total 1"), "{text}");
        assert!(text.contains("wagate_fenced_writes_total 0"), "{text}");
        assert!(
            text.contains("wagate_event_lag_seconds_sum 0.004"),
            "{text}"
        );
    }
}
