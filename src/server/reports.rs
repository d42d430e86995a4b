//! The server's reports on its own state, served on its port over HTTP:
//! `GET /metrics` (the Prometheus text format, `server/metrics.rs`) and
//! `GET /stats` (JSON: the same totals, and one entry per client). Who may
//! read them is `server/access.rs`. A report is built on the loop, from
//! the counters and one walk over the connections; `/stats` lists at most
//! [`MAX_LISTED_CLIENTS`] clients, busiest first, so its size stays bounded
//! (a few hundred bytes an entry) whatever the number connected.

use super::Server;
use super::access::{self, Access};
use super::metrics::{
    ACK_TIMEOUT, CLIENT_KINDS, CLOSE_REASONS, FRAME_TYPES, MSG, SLOW_CONSUMER, Snapshot,
    TRANSPORTS, transport_index,
};
use crate::cli::json_string;
use crate::connection::{Authorization, Report, ReportAnswer, Stage};
use crate::router::{ConnId, SessionKind};
use std::fmt::Write;
use std::time::SystemTime;

/// Clients `/stats` lists at most (the busiest first): every id at once,
/// at a few hundred bytes each.
pub const MAX_LISTED_CLIENTS: usize = 8192;

/// One client as `/stats` lists it.
struct Entry<'a> {
    conn: ConnId,
    id: u16,
    name: Option<&'a str>,
    kind: SessionKind,
    /// Index in [`TRANSPORTS`].
    transport: usize,
    peer: std::net::SocketAddr,
    since_unix: u64,
    queue_bytes: usize,
    pending_acks: usize,
}

impl Server {
    /// Answers a report request on `conn`: checks access, builds the
    /// report, queues the answer. Returns the answer's status.
    pub(super) fn serve_report(
        &mut self,
        conn: ConnId,
        report: Report,
        authorization: Option<&Authorization>,
    ) -> u16 {
        let Some(peer) = self.wire.conns.get(conn).map(|slot| slot.peer.ip()) else {
            return 0;
        };
        let accounts = self.auth.as_ref().map(|auth| auth.accounts());
        let access = access::decide(
            peer,
            &self.config.metrics_allow,
            accounts.as_deref(),
            authorization.and_then(Authorization::bearer),
            SystemTime::now(),
        );
        let answer = match access {
            Access::Allowed => {
                let answer = match report {
                    Report::Metrics => ReportAnswer::Body {
                        content_type: "text/plain; version=0.0.4; charset=utf-8",
                        body: self
                            .wire
                            .metrics
                            .render_prometheus(&self.snapshot())
                            .into_bytes(),
                    },
                    Report::Stats => ReportAnswer::Body {
                        content_type: "application/json",
                        body: self.render_stats().into_bytes(),
                    },
                };
                self.wire.metrics.scrapes += 1;
                answer
            }
            Access::Unauthorized => {
                self.wire.metrics.scrapes_refused += 1;
                ReportAnswer::Unauthorized
            }
            Access::Forbidden => {
                self.wire.metrics.scrapes_refused += 1;
                ReportAnswer::Forbidden
            }
        };
        match self.wire.conns.get_mut(conn) {
            Some(slot) => slot.conn.answer_report(answer),
            None => 0,
        }
    }

    /// The state behind the gauges, read from the slab and the router.
    fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            start_unix: self.start_unix,
            ..Snapshot::default()
        };
        if let Some(history) = &self.wire.history {
            let (rounds, time) = history.sync_totals();
            snapshot.history_syncs = rounds;
            (snapshot.history_appends, snapshot.history_bytes) = history.appended();
            snapshot.history_sync_nanos = time.as_nanos() as u64;
        }
        for (conn, slot) in &self.wire.conns {
            let view = self.router.session_view(conn);
            let kind = view.map_or(SessionKind::Unidentified, |v| v.kind);
            let transport = transport_index(slot.conn.stage(), slot.conn.encrypted());
            snapshot.clients[kind_index(kind)][transport] += 1;
            snapshot.acks_pending += view.map_or(0, |v| v.awaiting_ack) as u64;
            snapshot.queued_bytes += slot.conn.queued_output() as u64;
        }
        snapshot
    }

    /// `/stats`: the totals, then the clients, busiest first.
    fn render_stats(&self) -> String {
        let now = self.snapshot();
        let m = &self.wire.metrics;
        let mut entries: Vec<Entry<'_>> = self
            .wire
            .conns
            .iter()
            // An HTTP request (this one, say) is no client.
            .filter(|(_, slot)| slot.conn.stage() != Stage::Http)
            .map(|(conn, slot)| {
                let view = self.router.session_view(conn);
                Entry {
                    conn,
                    id: view.map_or(0, |v| v.id),
                    name: self.router.name(conn),
                    kind: view.map_or(SessionKind::Unidentified, |v| v.kind),
                    transport: transport_index(slot.conn.stage(), slot.conn.encrypted()),
                    peer: slot.peer,
                    since_unix: slot.since_unix,
                    queue_bytes: slot.conn.queued_output(),
                    pending_acks: view.map_or(0, |v| v.awaiting_ack + v.unsettled),
                }
            })
            .collect();
        let total = entries.len();
        if total > MAX_LISTED_CLIENTS {
            entries.select_nth_unstable_by_key(MAX_LISTED_CLIENTS, busiest_first);
            entries.truncate(MAX_LISTED_CLIENTS);
        }
        entries.sort_unstable_by_key(busiest_first);

        let mut out = String::with_capacity(2048 + entries.len() * 200);
        let w = &mut out;
        let _ = write!(
            w,
            "{{\"version\":\"{}\",\"start_time\":{},\"time\":{},\"totals\":{{",
            env!("CARGO_PKG_VERSION"),
            self.start_unix,
            super::unix_now()
        );
        let _ = write!(
            w,
            "\"connections_opened\":{},\"connections_closed\":{{",
            m.connections_opened
        );
        list(w, CLOSE_REASONS.iter().zip(m.connections_closed));
        let _ = write!(w, "}},\"clients\":{{");
        // Clients by kind: HTTP requests (this one, say) are no clients.
        let (http, https) = (
            transport_index(Stage::Http, false),
            transport_index(Stage::Http, true),
        );
        let by_kind = CLIENT_KINDS
            .iter()
            .zip(now.clients.iter().map(|by_transport| {
                let all: u64 = by_transport.iter().sum();
                all - by_transport[http] - by_transport[https]
            }));
        list(w, by_kind);
        let _ = write!(w, "}},\"transports\":{{");
        let by_transport = TRANSPORTS
            .iter()
            .enumerate()
            .map(|(t, name)| (name, now.clients.iter().map(|k| k[t]).sum::<u64>()));
        list(w, by_transport);
        let _ = write!(w, "}},\"frames_received\":{{");
        list(w, FRAME_TYPES.iter().zip(m.frames_in).skip(1));
        let _ = write!(w, "}},\"frames_sent\":{{");
        let sent = FRAME_TYPES.iter().zip(m.frames_out).enumerate().skip(1);
        list(
            w,
            sent.map(|(i, (name, n))| (name, if i == MSG { n + m.deliveries } else { n })),
        );
        let _ = write!(
            w,
            "}},\"deliveries\":{},\"received_bytes\":{},\"sent_bytes\":{},\
             \"acks_pending\":{},\"output_queue_bytes\":{},\"slow_consumer_disconnects\":{},\
             \"ack_timeouts\":{},\"sign_ins\":{},\"sign_in_failures\":{},\
             \"history_appends\":{},\"history_appended_bytes\":{},\"history_fsyncs\":{},\
             \"history_fsync_seconds\":{:.6},\"loop_turns\":{},\
             \"loop_seconds\":{:.6},\"spin_seconds\":{:.6}}}",
            m.deliveries,
            m.bytes_in,
            m.bytes_out,
            now.acks_pending,
            now.queued_bytes,
            m.connections_closed[SLOW_CONSUMER],
            m.connections_closed[ACK_TIMEOUT],
            m.sign_ins,
            m.sign_in_failures,
            now.history_appends,
            now.history_bytes,
            now.history_syncs,
            now.history_sync_nanos as f64 / 1e9,
            m.turn_count,
            m.turn_nanos as f64 / 1e9,
            m.spin_nanos as f64 / 1e9,
        );
        let _ = write!(
            w,
            ",\"clients_total\":{total},\"clients_listed\":{},\"clients\":[",
            entries.len()
        );
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                w.push(',');
            }
            let _ = write!(w, "{{\"conn\":{},\"id\":{},\"name\":", e.conn, e.id);
            match e.name {
                Some(name) => json_string(w, name),
                None => w.push_str("null"),
            }
            let _ = write!(
                w,
                ",\"kind\":\"{}\",\"transport\":\"{}\",\"peer\":\"{}\",\"since\":{},\
                 \"queue_bytes\":{},\"pending_acks\":{}}}",
                CLIENT_KINDS[kind_index(e.kind)],
                TRANSPORTS[e.transport],
                e.peer,
                e.since_unix,
                e.queue_bytes,
                e.pending_acks
            );
        }
        w.push_str("]}\n");
        out
    }
}

/// The busiest first: most queued, then most pending, then oldest conn.
fn busiest_first(e: &Entry<'_>) -> (std::cmp::Reverse<(usize, usize)>, ConnId) {
    (std::cmp::Reverse((e.queue_bytes, e.pending_acks)), e.conn)
}

fn kind_index(kind: SessionKind) -> usize {
    match kind {
        SessionKind::Unidentified => 0,
        SessionKind::Emitter => 1,
        SessionKind::Exhibitor => 2,
    }
}

/// `"name":count` pairs, comma-separated.
fn list<'a>(out: &mut String, pairs: impl Iterator<Item = (&'a &'a str, u64)>) {
    for (i, (name, count)) in pairs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "\"{name}\":{count}");
    }
}
