//! The event loop of a load run: one mio `Poll` over every connection (and a
//! pacing timer with `--rate`), a shared scratch buffer for reads, and a
//! publisher "pump" that tops each window up with one batch and one write.
//!
//! With `--rate` the load is open loop, as wrk2 makes it: each publisher's
//! k-th message is due at a fixed time, the pacing timer and every turn send
//! whatever is due (the window permitting), and the payload head carries the
//! due time, so latency counts from the schedule, not from the actual send.
//!
//! A turn: wait for readiness; read every readable socket until a short read
//! (on a stream socket that means drained, so no extra `EAGAIN` read), parse
//! in place, queue the acks subscribers owe; then pump every publisher whose
//! window opened and flush every connection with queued output. On a `*-ws`
//! target, `ws.rs` unwraps the frames around the protocol's own parser and
//! frames what it sends.

use crate::conn::{Conn, Role, Session};
use crate::flow::{Counters, Ctx};
use crate::report::{Latency, Outcome, SlowDelivery};
use crate::setup::Plan;
use crate::sys::{self, Ticker};
use crate::tail;
use crate::ws::{self, WsConn};
use crate::{Args, HEAD_LEN, Target, evchat, mqtt, nats, raw, redis, streams};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::time::{Duration, Instant};

/// Bytes read at once; also the least free space offered to each read.
const SCRATCH: usize = 256 * 1024;
const MIN_READ: usize = 64 * 1024;
/// A publisher stops filling its output buffer at this much unsent data, so
/// that send timestamps are never older than one socket buffer's worth.
const OUT_CAP: usize = 256 * 1024;
/// Shortest pacing tick with `--rate`.
const MIN_TICK: Duration = Duration::from_micros(20);
const TICKER: Token = Token(usize::MAX);

/// Values taken when counting starts and when it stops.
struct Snapshot {
    at: Instant,
    counters: Counters,
    server_cpu: Option<f64>,
    own_cpu: f64,
    server_wait: Option<f64>,
    own_wait: Option<f64>,
    /// Idle and stolen seconds of each side's core.
    server_core: Option<(f64, f64)>,
    own_core: Option<(f64, f64)>,
}

pub struct Driver {
    plan: Plan,
    window: u32,
    rate: Option<f64>,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
    poll: Poll,
    conns: Vec<Conn>,
    ctx: Ctx,
    /// Where every read lands; a partial frame is copied back to its
    /// connection's `pending`.
    scratch: Vec<u8>,
    /// Connections with output queued this turn.
    flush_list: Vec<usize>,
    /// The clock payload timestamps count from, and where it stood on
    /// `CLOCK_MONOTONIC` (which `Instant` reads on Linux).
    base: Instant,
    base_mono_ns: u64,
    /// Zeros that pad each payload from its head to `--size`.
    pad: Vec<u8>,
    /// Messages per nanosecond per publisher with `--rate`, and the start of
    /// pacing: message k of a publisher is due at start + k / rate.
    pace: Option<(f64, u64)>,
    ticker: Option<Ticker>,
    /// The CPUs the server and this process are pinned to, if one each.
    server_core: Option<usize>,
    own_core: Option<usize>,
}

impl Driver {
    pub fn new(plan: Plan, conns: Vec<Conn>, args: &Args) -> Result<Driver, String> {
        let publishers: Vec<usize> = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.session.role, Role::Pub(_)))
            .map(|(i, _)| i)
            .collect();
        let (gate_delivery, gate_replies) = match plan.target.plain() {
            Target::Evchat => (false, true),
            Target::Redis
            | Target::NatsVerbose
            | Target::Mqtt1
            | Target::RedisStreams
            | Target::JetStream => (true, true),
            Target::Nats | Target::Mqtt0 | Target::Raw => (true, false),
            t => unreachable!("{t:?} is not a plain target"),
        };
        let ctx = Ctx::new(
            &publishers,
            args.window,
            plan.fanout(),
            gate_delivery,
            gate_replies,
            args.rate.is_some(),
            args.slowest,
        );
        let pad = vec![0u8; plan.size - HEAD_LEN];
        Ok(Driver {
            window: args.window,
            rate: args.rate,
            warmup: Duration::from_secs_f64(args.warmup),
            duration: Duration::from_secs_f64(args.duration),
            server_pid: args.server_pid,
            poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
            conns,
            ctx,
            scratch: vec![0; SCRATCH],
            flush_list: Vec::new(),
            base: Instant::now(),
            base_mono_ns: tail::monotonic_ns(),
            pad,
            pace: None,
            ticker: None,
            server_core: args.server_pid.and_then(|pid| sys::pinned_cpu(Some(pid))),
            own_core: sys::pinned_cpu(None),
            plan,
        })
    }

    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            counters: self.ctx.counters,
            server_cpu: self.server_pid.and_then(sys::process_cpu_secs),
            own_cpu: sys::own_cpu_secs(),
            server_wait: self
                .server_pid
                .and_then(|pid| sys::run_queue_wait_secs(Some(pid))),
            own_wait: sys::run_queue_wait_secs(None),
            server_core: self.server_core.and_then(sys::cpu_idle_and_steal_secs),
            own_core: self.own_core.and_then(sys::cpu_idle_and_steal_secs),
        }
    }

    pub fn run(mut self) -> Result<Outcome, String> {
        for (i, conn) in self.conns.iter_mut().enumerate() {
            self.poll
                .registry()
                .register(
                    &mut conn.sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .map_err(|e| format!("register: {e}"))?;
        }
        if let Some(rate) = self.rate {
            let per_pub = rate / self.ctx.flows.len() as f64;
            // The schedule starts before the timer is armed, so that tick k
            // never fires before the messages due at it: one that did would
            // find them not yet due, and they would wait for the next tick
            // with that wait counted as latency.
            self.pace = Some((per_pub * 1e-9, self.now_ns()));
            let tick = Duration::from_secs_f64(1.0 / rate).max(MIN_TICK);
            let ticker = Ticker::new(tick).map_err(|e| format!("timerfd: {e}"))?;
            self.poll
                .registry()
                .register(&mut SourceFd(&ticker.raw_fd()), TICKER, Interest::READABLE)
                .map_err(|e| format!("register timer: {e}"))?;
            self.ticker = Some(ticker);
        }
        // Bytes that followed a handshake reply are parsed before anything else.
        for i in 0..self.conns.len() {
            if !self.conns[i].pending.is_empty() || self.conns[i].ws.has_unparsed() {
                self.consume(i, 0)?;
            }
        }
        let start = Instant::now();
        let warm_end = start + self.warmup;
        let end = warm_end + self.duration;
        let mut first: Option<Snapshot> = None;
        let mut events = Events::with_capacity(4096);
        for p in 0..self.ctx.flows.len() {
            self.ctx.flows[p].dirty = true;
            self.ctx.dirty.push(p);
        }
        self.service()?;
        loop {
            let now = Instant::now();
            if first.is_none() && now >= warm_end {
                self.ctx.hist.reset();
                self.ctx.slowest.reset();
                first = Some(self.snapshot());
            }
            if now >= end {
                break;
            }
            let boundary = if first.is_some() { end } else { warm_end };
            match self.poll.poll(&mut events, Some(boundary - now)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("poll: {e}")),
            }
            for event in events.iter() {
                let token = event.token();
                if token == TICKER {
                    if let Some(ticker) = &self.ticker {
                        ticker.drain();
                    }
                    for p in 0..self.ctx.flows.len() {
                        self.mark(p);
                    }
                    continue;
                }
                let i = token.0;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(i)?;
                }
                if event.is_writable() {
                    let conn = &mut self.conns[i];
                    conn.blocked = false;
                    match conn.session.role {
                        Role::Pub(p) => self.mark(p),
                        Role::Sub => self.queue_flush(i),
                    }
                }
            }
            self.service()?;
        }
        let last = self.snapshot();
        let first = first.expect("the loop runs past warm-up");
        Ok(self.outcome(&first, &last))
    }

    fn mark(&mut self, p: usize) {
        let flow = &mut self.ctx.flows[p];
        if !flow.dirty {
            flow.dirty = true;
            self.ctx.dirty.push(p);
        }
    }

    fn queue_flush(&mut self, i: usize) {
        let conn = &mut self.conns[i];
        if !conn.queued && conn.unsent() > 0 {
            conn.queued = true;
            self.flush_list.push(i);
        }
    }

    /// End of a turn: refill open windows, write queued output.
    fn service(&mut self) -> Result<(), String> {
        while let Some(p) = self.ctx.dirty.pop() {
            self.ctx.flows[p].dirty = false;
            self.pump(p)?;
        }
        while let Some(i) = self.flush_list.pop() {
            let conn = &mut self.conns[i];
            conn.queued = false;
            conn.flush(&mut self.ctx.counters)
                .map_err(|e| self.lost(i, &e.to_string()))?;
        }
        Ok(())
    }

    fn lost(&self, i: usize, why: &str) -> String {
        let s = &self.conns[i].session;
        let what = match s.role {
            Role::Pub(p) => format!("publisher {p}"),
            Role::Sub => format!("subscriber on connection {i}"),
        };
        format!("{} {what}: {why}", self.plan.target.name())
    }

    /// Reads connection `i` until drained and parses what arrived.
    fn read(&mut self, i: usize) -> Result<(), String> {
        loop {
            let conn = &mut self.conns[i];
            let carried = conn.pending.len();
            if self.scratch.len() < carried + MIN_READ {
                self.scratch.resize(carried + SCRATCH, 0);
            }
            self.scratch[..carried].copy_from_slice(&conn.pending);
            let space = self.scratch.len() - carried;
            let tls = conn.tls.is_some();
            match conn.read(&mut self.scratch[carried..]) {
                Ok(0) => return Err(self.lost(i, "the server closed the connection")),
                Ok(n) => {
                    self.ctx.counters.wire_in += n as u64;
                    self.consume(i, n)?;
                    // A short read drained the socket; on TLS it only means
                    // one record's plaintext ended (edge-triggered: read on).
                    if n < space && !tls {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.lost(i, &e.to_string())),
            }
        }
        self.queue_flush(i);
        Ok(())
    }

    /// Parses `pending` (already copied to the scratch start) plus `fresh`
    /// new bytes after it; keeps the incomplete tail in `pending`.
    fn consume(&mut self, i: usize, fresh: usize) -> Result<(), String> {
        let conn = &mut self.conns[i];
        let carried = conn.pending.len();
        if fresh == 0 {
            self.scratch[..carried].copy_from_slice(&conn.pending);
        }
        let filled = carried + fresh;
        self.ctx.now_ns = self.base.elapsed().as_nanos() as u64;
        let input = &self.scratch[..filled];
        let used = match parse(
            self.plan.target,
            &mut conn.session,
            &mut conn.ws,
            input,
            &mut conn.out,
            &mut self.ctx,
        ) {
            Ok(used) => used,
            Err(e) => return Err(self.lost(i, &e)),
        };
        conn.pending.clear();
        conn.pending.extend_from_slice(&input[used..]);
        Ok(())
    }

    /// Tops publisher `p`'s window up, one batch per write, until the window
    /// is full, the pace says wait, or the socket is.
    fn pump(&mut self, p: usize) -> Result<(), String> {
        let i = self.ctx.flows[p].conn;
        let frame_len = self.plan.size + 64;
        loop {
            let conn = &mut self.conns[i];
            if !conn.blocked && conn.unsent() > 0 {
                // Output left from a short write, now writable again.
                conn.flush(&mut self.ctx.counters)
                    .map_err(|e| self.lost(i, &e.to_string()))?;
            }
            let conn = &self.conns[i];
            let unsent = conn.unsent();
            if conn.blocked || unsent >= OUT_CAP {
                return Ok(());
            }
            let mut n = self.ctx.room(p);
            let now = self.now_ns();
            if let Some((per_ns, since)) = self.pace {
                let allowed = ((now - since) as f64 * per_ns) as u64 + 1;
                n = n.min(allowed.saturating_sub(self.ctx.flows[p].sent));
            }
            n = n.min(((OUT_CAP - unsent) / frame_len).max(1) as u64);
            if n == 0 {
                return Ok(());
            }
            let sent = self.ctx.flows[p].sent;
            let mut head = [0u8; HEAD_LEN];
            head[0..8].copy_from_slice(&now.to_le_bytes());
            head[8..12].copy_from_slice(&(p as u32).to_le_bytes());
            let conn = &mut self.conns[i];
            let flow = &mut self.ctx.flows[p];
            for k in 0..n {
                // Open loop (wrk2): at a fixed rate a message carries the time
                // it was due, so a send delayed by a full window or a late
                // generator counts the delay; otherwise, the time it leaves.
                if let Some((per_ns, since)) = self.pace {
                    let due = since + ((sent + k) as f64 / per_ns) as u64;
                    head[0..8].copy_from_slice(&due.to_le_bytes());
                    if let Some(left) = &mut flow.left {
                        left.record(sent + k, now);
                    }
                }
                head[12..16].copy_from_slice(&((sent + k) as u32).to_le_bytes());
                encode(
                    self.plan.target,
                    &mut conn.session,
                    &mut conn.ws,
                    &head,
                    &self.pad,
                    &mut conn.out,
                );
            }
            flow.sent += n;
            self.ctx.counters.sent += n;
            conn.flush(&mut self.ctx.counters)
                .map_err(|e| self.lost(i, &e.to_string()))?;
        }
    }

    fn outcome(&self, first: &Snapshot, last: &Snapshot) -> Outcome {
        let secs = (last.at - first.at).as_secs_f64();
        let d = |f: fn(&Counters) -> u64| f(&last.counters) - f(&first.counters);
        let rate_of = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs);
        let hist = &self.ctx.hist;
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Outcome {
            target: self.plan.target,
            mode: self.plan.mode,
            emitters: self.plan.emitters,
            exhibitors: self.plan.exhibitors,
            size: self.plan.size,
            window: self.window,
            rate: self.rate,
            secs,
            sent: d(|c| c.sent),
            delivered: d(|c| c.delivered),
            acked: d(|c| c.acked),
            refused: d(|c| c.refused),
            garbled: d(|c| c.garbled),
            wire_bytes: d(|c| c.wire_in) + d(|c| c.wire_out),
            latency: (!hist.is_empty()).then(|| Latency {
                p50_us: us(0.5),
                p99_us: us(0.99),
                p999_us: us(0.999),
                max_us: hist.max() as f64 / 1000.0,
                count: hist.len(),
            }),
            slowest: self
                .ctx
                .slowest
                .by_due_time()
                .iter()
                .map(|s| SlowDelivery {
                    due_mono_s: (self.base_mono_ns + s.due_ns) as f64 / 1e9,
                    since_start_s: (s.due_ns as f64 - (first.at - self.base).as_nanos() as f64)
                        / 1e9,
                    latency_us: s.latency_ns() as f64 / 1e3,
                    late_us: (s.left_ns - s.due_ns) as f64 / 1e3,
                    flight_us: s.arrived_ns.saturating_sub(s.left_ns) as f64 / 1e3,
                })
                .collect(),
            server_cpu: rate_of(first.server_cpu, last.server_cpu),
            client_cpu: Some((last.own_cpu - first.own_cpu) / secs),
            server_wait: rate_of(first.server_wait, last.server_wait),
            client_wait: rate_of(first.own_wait, last.own_wait),
            server_core_idle: rate_of(
                first.server_core.map(|c| c.0),
                last.server_core.map(|c| c.0),
            ),
            client_core_idle: rate_of(first.own_core.map(|c| c.0), last.own_core.map(|c| c.0)),
            server_core_steal: rate_of(
                first.server_core.map(|c| c.1),
                last.server_core.map(|c| c.1),
            ),
            client_core_steal: rate_of(first.own_core.map(|c| c.1), last.own_core.map(|c| c.1)),
            idle: None,
        }
    }
}

/// Parses input for one connection; returns the bytes consumed.
#[inline]
fn parse(
    target: Target,
    session: &mut Session,
    ws: &mut WsConn,
    input: &[u8],
    out: &mut Vec<u8>,
    ctx: &mut Ctx,
) -> Result<usize, String> {
    match target {
        Target::Evchat | Target::EvchatTls => evchat::parse(session, input, out, ctx),
        Target::Redis => redis::parse(session, input, ctx),
        Target::RedisStreams => streams::parse(session, input, out, ctx),
        Target::Nats | Target::NatsVerbose | Target::JetStream | Target::NatsTls => {
            nats::parse(session, input, out, ctx)
        }
        Target::Mqtt0 | Target::Mqtt1 => mqtt::parse(session, input, out, ctx),
        Target::Raw => raw::parse(session, input, ctx),
        Target::EvchatWs => ws::parse(ws, input, out, ctx, |inner, sink, ctx| {
            evchat::parse(session, inner, sink, ctx)
        }),
        Target::NatsWs | Target::NatsVerboseWs => {
            ws::parse(ws, input, out, ctx, |inner, sink, ctx| {
                nats::parse(session, inner, sink, ctx)
            })
        }
        Target::Mqtt0Ws | Target::Mqtt1Ws => ws::parse(ws, input, out, ctx, |inner, sink, ctx| {
            mqtt::parse(session, inner, sink, ctx)
        }),
    }
}

/// Appends one message carrying `head` and `pad`.
#[inline]
fn encode(
    target: Target,
    session: &mut Session,
    ws: &mut WsConn,
    head: &[u8],
    pad: &[u8],
    out: &mut Vec<u8>,
) {
    match target {
        Target::Evchat | Target::EvchatTls => evchat::encode(session, head, pad, out),
        Target::Redis | Target::RedisStreams => redis::encode(session, head, pad, out),
        Target::Nats | Target::NatsVerbose | Target::JetStream | Target::NatsTls => {
            nats::encode(session, head, pad, out)
        }
        Target::Mqtt0 | Target::Mqtt1 => mqtt::encode(session, head, pad, out),
        Target::Raw => raw::encode(head, pad, out),
        Target::EvchatWs => ws::encode(ws, out, |sink| evchat::encode(session, head, pad, sink)),
        Target::NatsWs | Target::NatsVerboseWs => {
            ws::encode(ws, out, |sink| nats::encode(session, head, pad, sink))
        }
        Target::Mqtt0Ws | Target::Mqtt1Ws => {
            ws::encode(ws, out, |sink| mqtt::encode(session, head, pad, sink))
        }
    }
}
