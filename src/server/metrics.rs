//! The event loop's counters: what it has done since it started, counted
//! where the loop already is (a read, a frame routed, a frame queued, a
//! flush, a turn, a removal), as plain integers — one thread owns them, so
//! no atomics, no hashing, no allocation. Figures that are a state rather
//! than a count (clients by kind, queued bytes, acks pending) are not kept
//! here: a scrape reads them from the slab and the router when asked
//! (`server/stats.rs`), so the hot path never maintains them.
//!
//! [`Metrics::render_prometheus`] writes these counters and such a
//! [`Snapshot`] in the Prometheus text exposition format (version 0.0.4).

use super::wire::Departure;
use crate::connection::Stage;
use crate::router::CloseReason;
use std::fmt::Write;
use std::time::Duration;

/// Frame types by their wire number: the plain protocol's 1..=7 and the
/// extension's 8..=18 (0 is no type; kept so the number indexes). A type
/// past the end would go uncounted: the test below holds it to the
/// extension's last.
pub(super) const FRAME_TYPES: [&str; 19] = [
    "", "OK", "ERRO", "OI", "FLW", "MSG", "CREQ", "CLIST", "HELLO", "HELLOACK", "WHO", "KICK",
    "JOIN", "LEAVE", "ROOMS", "ROOMACK", "ROOMLIST", "TELL", "WAITING",
];

/// Loop turn buckets: turns of at most 1 µs, 2 µs, 4 µs ... 2^(n-1) µs
/// (about 1 s), and the rest.
pub(super) const TURN_BUCKETS: usize = 21;

/// Why connections closed, as the `reason` label says it. Every
/// [`Departure`] maps to one (see [`close_reason_index`]).
pub(super) const CLOSE_REASONS: [&str; 19] = [
    "left",
    "dismissed",
    "oi_refused",
    "frame_before_oi",
    "spoofed_origin",
    "bad_frame",
    "handshake_timeout",
    "ack_timeout",
    "shutdown",
    "hello_refused",
    "revoked",
    "peer_closed",
    "io_error",
    "slow_consumer",
    "http_answered",
    "http_refused",
    "transport_failed",
    "tls_required",
    "other",
];

/// The index in [`CLOSE_REASONS`] of why a connection closed (`None`: it
/// was removed without a recorded reason).
pub(super) fn close_reason_index(reason: Option<&Departure>) -> usize {
    match reason {
        Some(Departure::Rule(rule)) => match rule {
            CloseReason::Left => 0,
            CloseReason::Dismissed => 1,
            CloseReason::Refused => 2,
            CloseReason::NotIdentified => 3,
            CloseReason::Spoofed => 4,
            CloseReason::BadFrame => 5,
            CloseReason::HandshakeTimeout => 6,
            CloseReason::Unresponsive => 7,
            CloseReason::Shutdown => 8,
            CloseReason::HelloRefused => 9,
            CloseReason::Revoked => 10,
        },
        Some(Departure::PeerClosed) => 11,
        Some(Departure::IoError) => 12,
        Some(Departure::SlowConsumer) => 13,
        Some(Departure::Served(_)) => 14,
        Some(Departure::BadRequest(_)) => 15,
        Some(Departure::Transport(_)) => 16,
        Some(Departure::TlsRequired) => 17,
        None => 18,
    }
}

/// Where [`CLOSE_REASONS`] counts ack timeouts and slow consumers.
pub(super) const ACK_TIMEOUT: usize = 7;
pub(super) const SLOW_CONSUMER: usize = 13;

/// What the loop has counted since it started.
#[derive(Debug, Default)]
pub(super) struct Metrics {
    pub(super) connections_opened: u64,
    pub(super) connections_closed: [u64; CLOSE_REASONS.len()],
    /// Frames routed, by wire type (see [`FRAME_TYPES`]).
    pub(super) frames_in: [u64; FRAME_TYPES.len()],
    /// Frames queued, by wire type, except the MSGs forwarded to their
    /// targets, which are [`Metrics::deliveries`] (one count per forward,
    /// not per target).
    pub(super) frames_out: [u64; FRAME_TYPES.len()],
    /// Bytes read from sockets (transport framing included).
    pub(super) bytes_in: u64,
    /// Bytes written to sockets (transport framing included).
    pub(super) bytes_out: u64,
    /// MSGs forwarded to an exhibitor, one per target.
    pub(super) deliveries: u64,
    /// Loop turns by length (see [`TURN_BUCKETS`]), their count and total.
    pub(super) turns: [u64; TURN_BUCKETS],
    pub(super) turn_count: u64,
    pub(super) turn_nanos: u64,
    /// Time the poll spent polling without blocking (see `server/spin.rs`).
    pub(super) spin_nanos: u64,
    pub(super) sign_ins: u64,
    pub(super) sign_in_failures: u64,
    /// Time the loop spent writing the turn's records to the log.
    pub(super) history_write_nanos: u64,
    /// `/metrics` and `/stats` requests answered, and refused.
    pub(super) scrapes: u64,
    pub(super) scrapes_refused: u64,
    /// Discovery datagrams (`--announce`) by what became of them (see
    /// `Heard::LABELS`).
    pub(super) discovery: [u64; 3],
}

impl Metrics {
    /// A turn of the loop took `worked`.
    #[inline]
    pub(super) fn turn(&mut self, worked: Duration) {
        let nanos = worked.as_nanos() as u64;
        let micros = nanos.div_ceil(1000);
        // Bucket k holds turns of at most 2^k µs: k = ceil(log2(micros)).
        let bucket = (u64::BITS - micros.saturating_sub(1).leading_zeros()) as usize;
        self.turns[bucket.min(TURN_BUCKETS - 1)] += 1;
        self.turn_count += 1;
        self.turn_nanos += nanos;
    }

    /// A connection was removed, for this reason.
    pub(super) fn closed(&mut self, reason: Option<&Departure>) {
        self.connections_closed[close_reason_index(reason)] += 1;
    }

    /// These counters and `now` in the Prometheus text format.
    pub(super) fn render_prometheus(&self, now: &Snapshot) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let w = &mut out;
        single(
            w,
            "evchat_start_time_seconds",
            "gauge",
            "When the server started, in seconds since the Unix epoch.",
            now.start_unix as f64,
        );
        metric(
            w,
            "evchat_connections_opened_total",
            "counter",
            "Connections accepted.",
        );
        sample(
            w,
            "evchat_connections_opened_total",
            "",
            self.connections_opened,
        );
        metric(
            w,
            "evchat_connections_closed_total",
            "counter",
            "Connections closed, by why (PROTOCOL.md and the log's disconnect line).",
        );
        for (reason, count) in CLOSE_REASONS.iter().zip(self.connections_closed) {
            let labels = format!("reason=\"{reason}\"");
            sample(w, "evchat_connections_closed_total", &labels, count);
        }
        single(
            w,
            "evchat_slow_consumer_disconnects_total",
            "counter",
            "Connections cut off because their unsent output passed --max-queue.",
            self.connections_closed[SLOW_CONSUMER],
        );
        single(
            w,
            "evchat_ack_timeouts_total",
            "counter",
            "Exhibitors dropped because an acknowledgement did not come within --ack-timeout.",
            self.connections_closed[ACK_TIMEOUT],
        );
        metric(
            w,
            "evchat_clients",
            "gauge",
            "Connections open, by what they identified as and how they speak.",
        );
        for (kind, by_transport) in CLIENT_KINDS.iter().zip(&now.clients) {
            for (transport, count) in TRANSPORTS.iter().zip(by_transport) {
                let labels = format!("kind=\"{kind}\",transport=\"{transport}\"");
                sample(w, "evchat_clients", &labels, *count);
            }
        }
        metric(
            w,
            "evchat_frames_received_total",
            "counter",
            "Protocol frames received and routed, by type.",
        );
        for (kind, count) in FRAME_TYPES.iter().zip(self.frames_in).skip(1) {
            let labels = format!("type=\"{kind}\"");
            sample(w, "evchat_frames_received_total", &labels, count);
        }
        metric(
            w,
            "evchat_frames_sent_total",
            "counter",
            "Protocol frames queued for clients, by type (MSG: deliveries and replays).",
        );
        for (index, (kind, count)) in FRAME_TYPES.iter().zip(self.frames_out).enumerate().skip(1) {
            let count = if index == MSG {
                count + self.deliveries
            } else {
                count
            };
            let labels = format!("type=\"{kind}\"");
            sample(w, "evchat_frames_sent_total", &labels, count);
        }
        single(
            w,
            "evchat_deliveries_total",
            "counter",
            "MSGs forwarded to an exhibitor, one per target.",
            self.deliveries,
        );
        single(
            w,
            "evchat_received_bytes_total",
            "counter",
            "Bytes read from client sockets, transport framing included.",
            self.bytes_in,
        );
        single(
            w,
            "evchat_sent_bytes_total",
            "counter",
            "Bytes written to client sockets, transport framing included.",
            self.bytes_out,
        );
        single(
            w,
            "evchat_acks_pending",
            "gauge",
            "Frames sent to clients that await their OK or ERRO.",
            now.acks_pending,
        );
        single(
            w,
            "evchat_output_queue_bytes",
            "gauge",
            "Bytes queued for clients and not yet written.",
            now.queued_bytes,
        );
        metric(
            w,
            "evchat_loop_turn_seconds",
            "histogram",
            "How long each turn of the event loop worked (from the end of a poll to the next).",
        );
        let mut cumulative = 0;
        for (k, count) in self.turns.iter().enumerate().take(TURN_BUCKETS - 1) {
            cumulative += count;
            let le = format!("le=\"{}\"", seconds((1u64 << k) * 1000));
            sample(w, "evchat_loop_turn_seconds_bucket", &le, cumulative);
        }
        sample(
            w,
            "evchat_loop_turn_seconds_bucket",
            "le=\"+Inf\"",
            self.turn_count,
        );
        sample(
            w,
            "evchat_loop_turn_seconds_sum",
            "",
            seconds(self.turn_nanos),
        );
        sample(w, "evchat_loop_turn_seconds_count", "", self.turn_count);
        single(
            w,
            "evchat_spin_seconds_total",
            "counter",
            "Time the loop polled without sleeping (--spin-us).",
            seconds(self.spin_nanos),
        );
        single(
            w,
            "evchat_sign_ins_total",
            "counter",
            "Sign-ins (HELLO with a secret, --auth) accepted.",
            self.sign_ins,
        );
        metric(
            w,
            "evchat_sign_in_failures_total",
            "counter",
            "Sign-ins refused: wrong name or secret, expired, or too many failures.",
        );
        sample(
            w,
            "evchat_sign_in_failures_total",
            "",
            self.sign_in_failures,
        );
        single(
            w,
            "evchat_history_appends_total",
            "counter",
            "MSGs appended to the history (--history).",
            now.history_appends,
        );
        metric(
            w,
            "evchat_history_appended_bytes_total",
            "counter",
            "Text bytes of the MSGs appended to the history.",
        );
        sample(
            w,
            "evchat_history_appended_bytes_total",
            "",
            now.history_bytes,
        );
        metric(
            w,
            "evchat_history_write_seconds_total",
            "counter",
            "Time the loop spent writing the history's records to the kernel.",
        );
        let written = seconds(self.history_write_nanos);
        sample(w, "evchat_history_write_seconds_total", "", written);
        single(
            w,
            "evchat_history_fsyncs_total",
            "counter",
            "Rounds of fsync of the history's written records, on its sync thread (--fsync).",
            now.history_syncs,
        );
        metric(
            w,
            "evchat_history_fsync_seconds_total",
            "counter",
            "Time those fsync rounds took (the loop never waits for them).",
        );
        let synced = seconds(now.history_sync_nanos);
        sample(w, "evchat_history_fsync_seconds_total", "", synced);
        single(
            w,
            "evchat_scrapes_total",
            "counter",
            "Requests for /metrics and /stats answered (this one excluded).",
            self.scrapes,
        );
        single(
            w,
            "evchat_scrapes_refused_total",
            "counter",
            "Requests for /metrics and /stats refused (401 or 403).",
            self.scrapes_refused,
        );
        metric(
            w,
            "evchat_discovery_queries_total",
            "counter",
            "Discovery datagrams on UDP (--announce): answered, rate_limited, or ignored (not a \
             query, or from a source that is not answered).",
        );
        for (outcome, count) in super::announce::Heard::LABELS.iter().zip(self.discovery) {
            let labels = format!("outcome=\"{outcome}\"");
            sample(w, "evchat_discovery_queries_total", &labels, count);
        }
        out
    }
}

/// Where [`FRAME_TYPES`] has MSG.
pub(super) const MSG: usize = 5;

/// Client kinds, as [`Snapshot::clients`] indexes them.
pub(super) const CLIENT_KINDS: [&str; 3] = ["unidentified", "emitter", "exhibitor"];
/// Transports, as [`Snapshot::clients`] indexes them.
pub(super) const TRANSPORTS: [&str; 7] = ["unknown", "tcp", "http", "ws", "tls", "https", "wss"];

/// The index in [`TRANSPORTS`] of a connection's transport: what it
/// speaks, and whether under TLS (a plain connection about to be refused
/// for want of TLS is still "unknown").
pub(super) fn transport_index(stage: Stage, encrypted: bool) -> usize {
    let plain = match stage {
        Stage::Sniffing | Stage::PlainRefused => return 0,
        Stage::Binary => 1,
        Stage::Http => 2,
        Stage::WebSocket => 3,
    };
    if encrypted { plain + 3 } else { plain }
}

/// What a scrape reads from the slab and the router: the state behind the
/// gauges.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) start_unix: u64,
    /// Connections by kind, then transport (see [`CLIENT_KINDS`],
    /// [`TRANSPORTS`]).
    pub(super) clients: [[u64; TRANSPORTS.len()]; CLIENT_KINDS.len()],
    pub(super) acks_pending: u64,
    pub(super) queued_bytes: u64,
    /// MSGs appended to the history and their text bytes (`--history`).
    pub(super) history_appends: u64,
    pub(super) history_bytes: u64,
    /// The history's sync rounds and their time (`--history`).
    pub(super) history_syncs: u64,
    pub(super) history_sync_nanos: u64,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric of one unlabelled sample: its HELP and TYPE lines, then it.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    metric(out, name, kind, help);
    sample(out, name, "", value);
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// Nanoseconds as seconds, exactly (Prometheus takes a float).
fn seconds(nanos: u64) -> String {
    let whole = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let frac = format!("{frac:09}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_type_has_its_name_at_its_wire_number() {
        use crate::proto::ext::{self, is_ext_kind};
        assert_eq!(FRAME_TYPES.len(), usize::from(ext::WAITING) + 1);
        assert!(!is_ext_kind(ext::WAITING + 1));
        for (kind, name) in [
            (ext::HELLO, "HELLO"),
            (ext::ROOMLIST, "ROOMLIST"),
            (ext::TELL, "TELL"),
            (ext::WAITING, "WAITING"),
        ] {
            assert_eq!(FRAME_TYPES[usize::from(kind)], name);
        }
    }

    #[test]
    fn turns_fall_in_the_smallest_power_of_two_bucket_that_holds_them() {
        let mut m = Metrics::default();
        for micros in [0, 1, 2, 3, 4, 5, 1 << 19, (1 << 19) + 1, 10_000_000] {
            m.turn(Duration::from_micros(micros));
        }
        assert_eq!(m.turns[0], 2, "0 and 1 µs");
        assert_eq!(m.turns[1], 1, "2 µs");
        assert_eq!(m.turns[2], 2, "3 and 4 µs");
        assert_eq!(m.turns[3], 1, "5 µs");
        assert_eq!(m.turns[19], 1, "2^19 µs");
        assert_eq!(m.turns[20], 2, "past 2^19 µs: the last bucket");
        assert_eq!(m.turn_count, 9);
    }

    #[test]
    fn seconds_are_written_exactly() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(1000), "0.000001");
        assert_eq!(seconds(1_500_000_000), "1.5");
        assert_eq!(seconds(524_288_000_000), "524.288");
    }
}
