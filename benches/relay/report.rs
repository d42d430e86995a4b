//! A run's figures, printed for a person or as one JSON line for the script.

use crate::{Mode, Target};
use std::fmt::Write;

/// Delivery latency over the measured window, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub count: u64,
}

/// One of the slowest deliveries (`tail.rs`): when it was due, and its
/// latency split into the generator's lateness in sending it and the rest.
#[derive(Debug, Clone, Copy)]
pub struct SlowDelivery {
    /// Due time on `CLOCK_MONOTONIC`, in seconds (as `perf sched timehist
    /// -k CLOCK_MONOTONIC` prints its timestamps).
    pub due_mono_s: f64,
    /// Due time from the start of counting.
    pub since_start_s: f64,
    pub latency_us: f64,
    /// From due to written (zero unless paced).
    pub late_us: f64,
    /// From written to read by its subscriber.
    pub flight_us: f64,
}

/// The memory workload's figures.
#[derive(Debug, Clone, Copy)]
pub struct IdleFigures {
    pub conns: usize,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// CPU seconds the server used while the connections were held: an
    /// idle server should use none (it must not spin or tick per client).
    pub hold_server_cpu_secs: Option<f64>,
}

impl IdleFigures {
    pub fn bytes_per_conn(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        Some((after as f64 - before as f64) * 1024.0 / self.conns as f64)
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: Target,
    pub mode: Mode,
    pub emitters: usize,
    pub exhibitors: usize,
    pub size: usize,
    pub window: u32,
    pub rate: Option<f64>,
    /// Length of the measured window.
    pub secs: f64,
    pub sent: u64,
    pub delivered: u64,
    pub acked: u64,
    pub refused: u64,
    pub garbled: u64,
    pub wire_bytes: u64,
    pub latency: Option<Latency>,
    /// The slowest deliveries of the measured window, by due time.
    pub slowest: Vec<SlowDelivery>,
    /// CPU time over wall time in the window (1.0 = one core busy).
    pub server_cpu: Option<f64>,
    pub client_cpu: Option<f64>,
    /// Time runnable but not running over wall time: competition for the core.
    pub server_wait: Option<f64>,
    pub client_wait: Option<f64>,
    /// Idle share of the core each side is pinned to.
    pub server_core_idle: Option<f64>,
    pub client_core_idle: Option<f64>,
    /// Share of each core the hypervisor gave to someone else (steal time).
    pub server_core_steal: Option<f64>,
    pub client_core_steal: Option<f64>,
    pub idle: Option<IdleFigures>,
}

/// Share of wall time running or runnable above which a process is saturated.
const SATURATED: f64 = 0.9;
/// Share of a core's time stolen by the hypervisor above which a run is
/// marked as disturbed (`/proc/stat` counts in 10 ms ticks).
const STOLEN: f64 = 0.005;

/// Escapes `s` for a JSON string literal.
pub fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn opt(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "null".to_owned(),
    }
}

impl Outcome {
    fn per_s(&self, n: u64) -> f64 {
        if self.secs > 0.0 {
            n as f64 / self.secs
        } else {
            0.0
        }
    }

    /// Which side ran out of CPU: the comparison is valid when it is the
    /// server. A side is saturated when it was running or waiting to run at
    /// least 90% of the time: CPU time plus run-queue wait over wall time
    /// (for a single thread, the share of time it had work; when another
    /// process holds the core, waiting still means this side was the limit).
    /// "neither" means the window, i.e. the round trip, limited the run.
    pub fn bottleneck(&self) -> &'static str {
        let saturated =
            |cpu: Option<f64>, wait: Option<f64>| Some(cpu? + wait.unwrap_or(0.0) >= SATURATED);
        match (
            saturated(self.server_cpu, self.server_wait),
            saturated(self.client_cpu, self.client_wait),
        ) {
            (Some(true), Some(false)) => "server",
            (Some(false), Some(true)) => "client",
            (Some(true), Some(true)) => "both",
            (Some(false), Some(false)) => "neither",
            _ => "unknown",
        }
    }

    /// Whether other processes took a noticeable share of either core.
    pub fn contended(&self) -> bool {
        self.server_wait.unwrap_or(0.0) >= 0.05 || self.client_wait.unwrap_or(0.0) >= 0.05
    }

    /// Whether the hypervisor took a noticeable share of either core: on a
    /// virtual machine this, not the servers, sets the latency tail (here,
    /// 40 ms stolen over 5 s took a 10k msg/s run's p99 from ~250 µs to
    /// ~700 µs, whichever server ran).
    pub fn stolen(&self) -> bool {
        self.server_core_steal.unwrap_or(0.0) >= STOLEN
            || self.client_core_steal.unwrap_or(0.0) >= STOLEN
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.to_text());
        }
    }

    pub fn to_json(&self) -> String {
        let mut j = String::new();
        let _ = write!(
            j,
            "{{\"target\":\"{}\",\"mode\":\"{}\",\"emitters\":{},\"exhibitors\":{},\
             \"size\":{},\"window\":{},\"rate\":{},\"secs\":{:.4}",
            self.target.name(),
            match self.mode {
                Mode::Unicast => "unicast",
                Mode::Broadcast => "broadcast",
                Mode::Room => "room",
                Mode::Queue => "queue",
            },
            self.emitters,
            self.exhibitors,
            self.size,
            self.window,
            opt(self.rate),
            self.secs,
        );
        if let Some(idle) = &self.idle {
            let _ = write!(
                j,
                ",\"idle\":{},\"rss_before_kib\":{},\"rss_after_kib\":{},\"rss_per_conn_bytes\":{},\"hold_server_cpu_s\":{}",
                idle.conns,
                idle.rss_before_kib
                    .map_or("null".to_owned(), |v| v.to_string()),
                idle.rss_after_kib
                    .map_or("null".to_owned(), |v| v.to_string()),
                opt(idle.bytes_per_conn()),
                opt(idle.hold_server_cpu_secs),
            );
        } else {
            let _ = write!(
                j,
                ",\"sent\":{},\"delivered\":{},\"acked\":{},\"refused\":{},\"garbled\":{},\
                 \"sent_per_s\":{:.1},\"delivered_per_s\":{:.1},\"acked_per_s\":{:.1},\
                 \"bytes_per_s\":{:.1},\"wire_bytes_per_s\":{:.1}",
                self.sent,
                self.delivered,
                self.acked,
                self.refused,
                self.garbled,
                self.per_s(self.sent),
                self.per_s(self.delivered),
                self.per_s(self.acked),
                self.per_s(self.delivered) * self.size as f64,
                self.per_s(self.wire_bytes),
            );
            let l = self.latency;
            let _ = write!(
                j,
                ",\"lat_p50_us\":{},\"lat_p99_us\":{},\"lat_p999_us\":{},\"lat_max_us\":{},\
                 \"lat_count\":{}",
                opt(l.map(|l| l.p50_us)),
                opt(l.map(|l| l.p99_us)),
                opt(l.map(|l| l.p999_us)),
                opt(l.map(|l| l.max_us)),
                l.map_or(0, |l| l.count),
            );
            j.push_str(",\"slowest\":[");
            for (k, s) in self.slowest.iter().enumerate() {
                let _ = write!(
                    j,
                    "{}{{\"due_mono_s\":{:.6},\"since_start_s\":{:.6},\"lat_us\":{:.1},\
                     \"late_us\":{:.1},\"flight_us\":{:.1}}}",
                    if k == 0 { "" } else { "," },
                    s.due_mono_s,
                    s.since_start_s,
                    s.latency_us,
                    s.late_us,
                    s.flight_us,
                );
            }
            j.push(']');
        }
        let _ = write!(
            j,
            ",\"server_cpu\":{},\"client_cpu\":{},\"server_wait\":{},\"client_wait\":{},\
             \"server_core_idle\":{},\"client_core_idle\":{},\"server_core_steal\":{},\
             \"client_core_steal\":{},\"contended\":{},\"stolen\":{},\"bottleneck\":\"{}\",\
             \"generator_pid\":{}}}",
            opt(self.server_cpu),
            opt(self.client_cpu),
            opt(self.server_wait),
            opt(self.client_wait),
            opt(self.server_core_idle),
            opt(self.client_core_idle),
            opt(self.server_core_steal),
            opt(self.client_core_steal),
            self.contended(),
            self.stolen(),
            self.bottleneck(),
            std::process::id(),
        );
        j
    }

    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "{} {:?}: {} emitter(s) → {} exhibitor(s), {} B, window {}{}, {:.2} s measured",
            self.target.name(),
            self.mode,
            self.emitters,
            self.exhibitors,
            self.size,
            self.window,
            self.rate
                .map_or(String::new(), |r| format!(", offered {r:.0} msg/s")),
            self.secs,
        );
        if let Some(idle) = &self.idle {
            let kib = |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{v} KiB"));
            let _ = writeln!(
                t,
                "  idle       {} connections; server RSS {} → {}; {} per connection; \
                 server CPU while held {}",
                idle.conns,
                kib(idle.rss_before_kib),
                kib(idle.rss_after_kib),
                idle.bytes_per_conn()
                    .map_or("?".to_owned(), |b| format!("{b:.0} B")),
                idle.hold_server_cpu_secs
                    .map_or("?".to_owned(), |s| format!("{:.0} ms", s * 1e3)),
            );
        } else {
            let _ = writeln!(t, "  sent       {:>14.0} msg/s", self.per_s(self.sent));
            let _ = writeln!(
                t,
                "  delivered  {:>14.0} msg/s  ({:.1} MB/s payload, {:.1} MB/s on the wire)",
                self.per_s(self.delivered),
                self.per_s(self.delivered) * self.size as f64 / 1e6,
                self.per_s(self.wire_bytes) / 1e6,
            );
            let _ = writeln!(
                t,
                "  acked      {:>14.0} msg/s  ({} refused, {} garbled)",
                self.per_s(self.acked),
                self.refused,
                self.garbled
            );
            if let Some(l) = self.latency {
                let _ = writeln!(
                    t,
                    "  latency    p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs  ({} samples)",
                    l.p50_us, l.p99_us, l.p999_us, l.max_us, l.count
                );
            }
            if !self.slowest.is_empty() {
                let _ = writeln!(
                    t,
                    "  slowest    {} deliveries, by due time: due at (s from counting start, \
                     CLOCK_MONOTONIC s) latency = sent late + flight",
                    self.slowest.len()
                );
                for s in &self.slowest {
                    let _ = writeln!(
                        t,
                        "             +{:.6} s ({:.6}) {:.1} µs = {:.1} + {:.1}",
                        s.since_start_s, s.due_mono_s, s.latency_us, s.late_us, s.flight_us
                    );
                }
            }
        }
        let pct = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{:.0}%", v * 100.0));
        let _ = writeln!(
            t,
            "  cpu        server {}  load generator {}  → bottleneck: {}",
            pct(self.server_cpu),
            pct(self.client_cpu),
            self.bottleneck()
        );
        if self.server_wait.is_some() || self.client_wait.is_some() {
            let _ = writeln!(
                t,
                "  run queue  server waited {}  load generator waited {} (of wall time); \
                 their cores idle {} / {}, stolen by the host {} / {}",
                pct(self.server_wait),
                pct(self.client_wait),
                pct(self.server_core_idle),
                pct(self.client_core_idle),
                pct(self.server_core_steal),
                pct(self.client_core_steal),
            );
        }
        t
    }
}
