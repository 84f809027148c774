//! The figures of one run, printed as an aligned Markdown table (ready to
//! paste into the README) or as JSON.

use crate::groups::GroupFigures;
use crate::history::HistoryFigures;
use crate::inbound::{Latency, Throughput};
use crate::media::MediaFigures;
use crate::procstat::Memory;
use crate::release::Released;
use crate::sends::SendFigures;

/// Restart of the gateway on the same data dir.
#[derive(Debug, Clone)]
pub(crate) struct Restart {
    pub(crate) shutdown_seconds: f64,
    /// From starting the new process to `ListSessions` showing every
    /// session CONNECTED.
    pub(crate) connected_seconds: f64,
    pub(crate) cpu_ms_per_session: f64,
    pub(crate) threads: u64,
    /// The most threads seen from the start to all CONNECTED.
    pub(crate) peak_threads: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    /// Where the gateway stores: "SQLite" or "Redis".
    pub(crate) store: &'static str,
    pub(crate) binary: String,
    pub(crate) cores: usize,
    pub(crate) sessions: usize,
    pub(crate) pair_seconds: f64,
    pub(crate) gateway_zero: Memory,
    pub(crate) sim_zero: Memory,
    pub(crate) gateway_idle: Memory,
    pub(crate) sim_idle: Memory,
    pub(crate) idle_seconds: f64,
    pub(crate) gateway_idle_cpu: f64,
    pub(crate) sim_idle_cpu: f64,
    pub(crate) inbound: Throughput,
    pub(crate) group_inbound: Throughput,
    pub(crate) latency: Latency,
    pub(crate) sends: Vec<SendFigures>,
    pub(crate) media: Option<MediaFigures>,
    pub(crate) history: Option<HistoryFigures>,
    pub(crate) group: Option<GroupFigures>,
    pub(crate) restart: Restart,
    pub(crate) released: Released,
}

impl Report {
    /// What `sessions` idle sessions cost at the measured idle cost, KiB.
    fn needed_kib(&self, sessions: usize) -> u64 {
        let per = self
            .per_session_kib(self.gateway_zero, self.gateway_idle)
            .max(0.0);
        self.gateway_zero.anon_kib + (per * sessions as f64) as u64
    }

    fn per_session_kib(&self, zero: Memory, idle: Memory) -> f64 {
        (idle.anon_kib as f64 - zero.anon_kib as f64) / self.sessions.max(1) as f64
    }

    /// The table: one line of context, then `| Measure | Value |` rows.
    pub(crate) fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                format!("Sessions paired ({} store, fsync)", self.store),
                format!("{} in {:.1} s", self.sessions, self.pair_seconds),
            ),
            (
                "Gateway RSS with 0 sessions".into(),
                format!(
                    "{} (RssAnon {})",
                    mib(self.gateway_zero.rss_kib),
                    mib(self.gateway_zero.anon_kib)
                ),
            ),
            (
                "Gateway RssAnon per idle session".into(),
                format!(
                    "{:.1} KiB",
                    self.per_session_kib(self.gateway_zero, self.gateway_idle)
                ),
            ),
            (
                "Simulator RssAnon per session (with its peer)".into(),
                format!(
                    "{:.1} KiB",
                    self.per_session_kib(self.sim_zero, self.sim_idle)
                ),
            ),
            (
                "Gateway threads, idle".into(),
                self.gateway_idle.threads.to_string(),
            ),
            (
                format!(
                    "Idle CPU over {:.0} s: gateway / simulator",
                    self.idle_seconds
                ),
                format!(
                    "{:.2} % / {:.2} % of a core",
                    self.gateway_idle_cpu, self.sim_idle_cpu
                ),
            ),
            (
                format!("Inbound end to end ({} texts)", self.inbound.messages),
                format!(
                    "{:.0} messages/s ({:.2} s)",
                    self.inbound.per_second, self.inbound.seconds
                ),
            ),
            (
                cpu_label("inbound", &self.inbound),
                cpu_figures(&self.inbound),
            ),
            disk_row("text", &self.inbound),
            (
                format!(
                    "Inbound group texts (skmsg), end to end ({} texts)",
                    self.group_inbound.messages
                ),
                format!(
                    "{:.0} messages/s ({:.2} s)",
                    self.group_inbound.per_second, self.group_inbound.seconds
                ),
            ),
            (
                cpu_label("group inbound", &self.group_inbound),
                cpu_figures(&self.group_inbound),
            ),
            (
                format!(
                    "Event delivery at {:.0}/s ({} texts): p50 / p99 / p99.9 / max",
                    self.latency.rate, self.latency.messages
                ),
                format!(
                    "{:.2} ms / {:.2} ms / {:.2} ms / {:.2} ms",
                    self.latency.p50_ms,
                    self.latency.p99_ms,
                    self.latency.p999_ms,
                    self.latency.max_ms
                ),
            ),
        ];
        for s in &self.sends {
            rows.push((
                format!(
                    "Send at concurrency {} ({} sends): p50 / p99 / rate",
                    s.concurrency, s.sends
                ),
                format!(
                    "{:.2} ms / {:.2} ms / {:.0} sends/s",
                    s.p50_ms, s.p99_ms, s.per_second
                ),
            ));
        }
        if let Some(s) = self.sends.last() {
            let (gateway, sim, tool) = s.micros_per_send();
            rows.push((
                cpu_label(&format!("sends at concurrency {}", s.concurrency), &s.cpu),
                cpu_figures(&s.cpu),
            ));
            rows.push((
                "CPU per Send: gateway / simulator / tool".to_owned(),
                format!("{gateway:.0} µs / {sim:.0} µs / {tool:.0} µs"),
            ));
            rows.push(disk_row("Send", &s.cpu));
        }
        if let Some(m) = &self.media {
            rows.push((
                format!(
                    "Media: {} MB video out (UploadMedia + Send): time / gateway RssAnon growth / VmRSS growth",
                    m.bytes / 1_000_000
                ),
                format!(
                    "{:.1} s / {} / {}",
                    m.seconds,
                    mib(m.anon_peak_kib.saturating_sub(m.anon_before_kib)),
                    mib(m.rss_growth_kib)
                ),
            ));
        }
        if let Some(h) = &self.history {
            rows.push((
                format!(
                    "History sync: {} messages in (HISTORY events): time / pages (largest) / gateway RssAnon growth / VmRSS growth",
                    h.messages
                ),
                format!(
                    "{:.1} s / {} ({} messages) / {} / {}",
                    h.seconds,
                    h.pages,
                    h.largest_page,
                    mib(h.anon_peak_kib.saturating_sub(h.anon_before_kib)),
                    mib(h.rss_growth_kib)
                ),
            ));
        }
        if let Some(g) = &self.group {
            rows.extend([
                (
                    format!(
                        "Group of {} (×2 devices): first send, key to {} devices",
                        g.members, g.devices
                    ),
                    format!("{:.2} ms, stanza {}", g.first_ms, kib(g.first_bytes)),
                ),
                (
                    format!("Group: next {} sends, p50 / p99", g.steady_sends),
                    format!(
                        "{:.2} ms / {:.2} ms, stanza {}",
                        g.steady_p50_ms,
                        g.steady_p99_ms,
                        kib(g.steady_bytes)
                    ),
                ),
            ]);
        }
        rows.extend([
            (
                "Gateway shutdown on SIGTERM".into(),
                format!("{:.2} s", self.restart.shutdown_seconds),
            ),
            (
                format!("Restart to all {} CONNECTED", self.sessions),
                format!("{:.2} s", self.restart.connected_seconds),
            ),
            (
                "Gateway CPU per session during restart".into(),
                format!("{:.2} ms", self.restart.cpu_ms_per_session),
            ),
            (
                "Gateway threads during restart: peak / after".into(),
                format!("{} / {}", self.restart.peak_threads, self.restart.threads),
            ),
            (
                format!(
                    "RssAnon, {} → {} sessions online (need, at the idle cost)",
                    self.released.sessions_before, self.released.sessions_after
                ),
                format!(
                    "{} → {} ({})",
                    mib(self.released.before.anon_kib),
                    mib(self.released.after.anon_kib),
                    mib(self.needed_kib(self.released.sessions_after))
                ),
            ),
            (
                format!(
                    "RssAnon of a new gateway with those sessions ({} online)",
                    self.released.sessions_after
                ),
                match self.released.fresh {
                    Some(fresh) => format!(
                        "{} (after the wave: {:.2}×)",
                        mib(fresh.anon_kib),
                        self.released.after.anon_kib as f64 / fresh.anon_kib.max(1) as f64
                    ),
                    None => "not measured".to_string(),
                },
            ),
        ]);
        let left = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(7);
        let right = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(5);
        let mut out = format!(
            "wagate-load, {} mode: {} sessions, {} cores, {}\n\n",
            self.mode, self.sessions, self.cores, self.binary
        );
        out.push_str(&format!("| {:left$} | {:right$} |\n", "Measure", "Value"));
        out.push_str(&format!(
            "|{}|{}|\n",
            "-".repeat(left + 2),
            "-".repeat(right + 2)
        ));
        for (k, v) in rows {
            out.push_str(&format!("| {k:left$} | {v:right$} |\n"));
        }
        out
    }

    /// The same figures for machines; sizes in KiB, times in ms or s as named.
    pub(crate) fn json(&self) -> serde_json::Value {
        let (inbound_disk, inbound_redis_disk) = self.inbound.disk_kib_per_message();
        let memory = |m: Memory| serde_json::json!({ "rss_kib": m.rss_kib, "rss_anon_kib": m.anon_kib, "threads": m.threads });
        serde_json::json!({
            "mode": self.mode,
            "store": self.store,
            "binary": self.binary,
            "cores": self.cores,
            "sessions": self.sessions,
            "pair_seconds": self.pair_seconds,
            "gateway": { "zero_sessions": memory(self.gateway_zero), "idle": memory(self.gateway_idle),
                         "rss_anon_per_session_kib": self.per_session_kib(self.gateway_zero, self.gateway_idle) },
            "simulator": { "zero_sessions": memory(self.sim_zero), "idle": memory(self.sim_idle),
                           "rss_anon_per_session_kib": self.per_session_kib(self.sim_zero, self.sim_idle) },
            "idle": { "seconds": self.idle_seconds, "gateway_cpu_percent": self.gateway_idle_cpu,
                      "simulator_cpu_percent": self.sim_idle_cpu },
            "inbound": { "messages": self.inbound.messages, "seconds": self.inbound.seconds,
                         "messages_per_second": self.inbound.per_second,
                         "gateway_cpu_percent": self.inbound.gateway_cpu,
                         "simulator_cpu_percent": self.inbound.sim_cpu,
                         "tool_cpu_percent": self.inbound.tool_cpu,
                         "redis_cpu_percent": self.inbound.redis_cpu,
                         "gateway_disk_kib_per_message": inbound_disk,
                         "redis_disk_kib_per_message": inbound_redis_disk },
            "group_inbound": { "messages": self.group_inbound.messages,
                               "seconds": self.group_inbound.seconds,
                               "messages_per_second": self.group_inbound.per_second,
                               "gateway_cpu_percent": self.group_inbound.gateway_cpu,
                               "simulator_cpu_percent": self.group_inbound.sim_cpu,
                               "tool_cpu_percent": self.group_inbound.tool_cpu,
                               "redis_cpu_percent": self.group_inbound.redis_cpu },
            "event_latency": { "messages": self.latency.messages, "rate_per_second": self.latency.rate,
                               "p50_ms": self.latency.p50_ms, "p99_ms": self.latency.p99_ms,
                               "p999_ms": self.latency.p999_ms, "max_ms": self.latency.max_ms },
            "send": self.sends.iter().map(|s| {
                let (disk, redis_disk) = s.cpu.disk_kib_per_message();
                serde_json::json!({
                "concurrency": s.concurrency, "sends": s.sends, "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms, "sends_per_second": s.per_second,
                "gateway_cpu_percent": s.cpu.gateway_cpu, "sim_cpu_percent": s.cpu.sim_cpu,
                "tool_cpu_percent": s.cpu.tool_cpu,
                "gateway_cpu_us_per_send": s.micros_per_send().0,
                "gateway_disk_kib_per_send": disk,
                "redis_disk_kib_per_send": redis_disk })}).collect::<Vec<_>>(),
            "media": self.media.as_ref().map(|m| serde_json::json!({
                "bytes": m.bytes, "seconds": m.seconds,
                "gateway_rss_anon_before_kib": m.anon_before_kib,
                "gateway_rss_anon_peak_kib": m.anon_peak_kib,
                "gateway_rss_anon_growth_kib": m.anon_peak_kib.saturating_sub(m.anon_before_kib),
                "gateway_rss_growth_kib": m.rss_growth_kib })),
            "history": self.history.as_ref().map(|h| serde_json::json!({
                "messages": h.messages, "pages": h.pages, "largest_page": h.largest_page,
                "seconds": h.seconds,
                "gateway_rss_anon_before_kib": h.anon_before_kib,
                "gateway_rss_anon_peak_kib": h.anon_peak_kib,
                "gateway_rss_anon_growth_kib": h.anon_peak_kib.saturating_sub(h.anon_before_kib),
                "gateway_rss_growth_kib": h.rss_growth_kib })),
            "group": self.group.as_ref().map(|g| serde_json::json!({
                "members": g.members, "devices": g.devices, "first_send_ms": g.first_ms,
                "first_stanza_bytes": g.first_bytes, "steady_sends": g.steady_sends,
                "steady_p50_ms": g.steady_p50_ms, "steady_p99_ms": g.steady_p99_ms,
                "steady_stanza_bytes": g.steady_bytes })),
            "restart": { "shutdown_seconds": self.restart.shutdown_seconds,
                         "all_connected_seconds": self.restart.connected_seconds,
                         "gateway_cpu_ms_per_session": self.restart.cpu_ms_per_session,
                         "gateway_threads": self.restart.threads,
                         "gateway_peak_threads": self.restart.peak_threads },
            "released": { "sessions_before": self.released.sessions_before,
                          "sessions_after": self.released.sessions_after,
                          "rss_anon_before_kib": self.released.before.anon_kib,
                          "rss_anon_after_kib": self.released.after.anon_kib,
                          "rss_anon_needed_kib": self.needed_kib(self.released.sessions_after) },
        })
    }
}

fn kib(bytes: u64) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The row label of a throughput's CPU figures.
fn cpu_label(what: &str, t: &Throughput) -> String {
    let redis = if t.redis_cpu.is_some() {
        " / redis"
    } else {
        ""
    };
    format!("CPU during {what}: gateway / simulator / tool{redis}")
}

/// What a throughput's messages cost in writes to storage, per message.
fn disk_row(what: &str, t: &Throughput) -> (String, String) {
    let (gateway, redis) = t.disk_kib_per_message();
    match redis {
        Some(redis) => (
            format!("Storage writes per {what}: gateway / redis"),
            format!("{gateway:.1} KiB / {redis:.1} KiB"),
        ),
        None => (
            format!("Storage writes per {what}: gateway"),
            format!("{gateway:.1} KiB"),
        ),
    }
}

/// A throughput's CPU figures, per process.
fn cpu_figures(t: &Throughput) -> String {
    let mut out = format!(
        "{:.0} % / {:.0} % / {:.0} %",
        t.gateway_cpu, t.sim_cpu, t.tool_cpu
    );
    if let Some(redis) = t.redis_cpu {
        out.push_str(&format!(" / {redis:.0} %"));
    }
    out.push_str(" of a core");
    out
}
