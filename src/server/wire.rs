//! The connections as the loop holds them between its reads and writes,
//! and the router's [`Outbox`]: the slab of [`Slot`]s, which of them have
//! output to write, input left to read or a close to settle, and why one is
//! closing ([`Departure`]). Frames the router sends are encoded into the
//! destination's output here, and written at once past [`WRITE_EARLY_AT`];
//! the loop (`server.rs`) does the rest of the reading, writing and removing.

use super::cluster::Outgoing;
use super::history::History;
use super::metrics::Metrics;
use crate::connection::{Connection, Ending, HttpRefusal, TransportFailure};
use crate::proto::ext::ExtFrame;
use crate::proto::{ClientId, Encode, Encoded, Frame, FrameView};
use crate::router::{
    CloseReason, ConnId, NodeRef, Outbox, PairNotice, RemoteLetter, RoomClaim, RoomEvent, Sender,
};
use bytes::BytesMut;
use slab::Slab;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// A destination's output is written as soon as this much is queued, not
/// only when the turn's output is flushed, so that its reader starts on the
/// first part of a large batch while the server routes the rest: the two
/// processes work as a pipeline instead of each waiting for the other's
/// whole batch (BENCHMARKS.md has the effect). Once per destination between
/// two flushes of its output: the rest waits for the next flush phase
/// (`flush_and_reap`: at the end of the turn, and again when the history
/// settles records in it), so a broadcast pays for at most one extra write
/// per exhibitor and phase, and small outputs for none.
pub(super) const WRITE_EARLY_AT: usize = 16_384;
/// Early writes allowed until the next flush phase begins, when the count
/// starts again (twice in a turn when the history settles records). A few
/// are enough to set readers going; past that, as when a broadcast fills a
/// thousand outputs in one turn, they would only double the writes.
pub(super) const EARLY_WRITES_PER_FLUSH: usize = 4;
/// How long a closing connection may take to take its last bytes.
const LINGER: Duration = Duration::from_secs(2);

/// Why the event loop closes a connection: a rule's decision, or something
/// the loop saw on the socket or its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Departure {
    Rule(CloseReason),
    /// The peer closed its side (or sent a WebSocket close).
    PeerClosed,
    /// Reading or writing the socket failed.
    IoError,
    /// Unsent output passed `--max-queue`.
    SlowConsumer,
    /// An HTTP request was answered with this status.
    Served(u16),
    /// An HTTP request head that cannot be served.
    BadRequest(HttpRefusal),
    /// A transport that broke its framing (a WebSocket, a TLS session).
    Transport(TransportFailure),
    /// An unencrypted connection on a server that requires TLS.
    TlsRequired,
}

impl Departure {
    /// Whether the output still queued is lost: a broken socket cannot take
    /// it, and a slow consumer is cut off because it does not read. Every
    /// other close writes what is queued first (the OK to a FLW, the ERRO
    /// that explains a refusal, an HTTP answer).
    fn discards_output(&self) -> bool {
        matches!(self, Departure::IoError | Departure::SlowConsumer)
    }

    /// What the connection's transport is told of this departure, if
    /// anything: not when the peer closed first or the output is discarded,
    /// nor after an HTTP answer, which is its own ending.
    fn ending(&self) -> Option<Ending<'_>> {
        Some(match self {
            Departure::Rule(CloseReason::Left | CloseReason::Dismissed) => Ending::Normal,
            Departure::Rule(CloseReason::Shutdown) => Ending::GoingAway,
            Departure::Rule(
                CloseReason::NotIdentified | CloseReason::Spoofed | CloseReason::BadFrame,
            ) => Ending::ProtocolViolation,
            Departure::Rule(
                CloseReason::Refused
                | CloseReason::HelloRefused
                | CloseReason::Revoked
                | CloseReason::HandshakeTimeout
                | CloseReason::Unresponsive,
            ) => Ending::PolicyViolation,
            Departure::Transport(failure) => Ending::Failed(failure),
            Departure::PeerClosed
            | Departure::IoError
            | Departure::SlowConsumer
            | Departure::Served(_)
            | Departure::BadRequest(_)
            | Departure::TlsRequired => return None,
        })
    }
}

impl fmt::Display for Departure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Departure::Rule(reason) => reason.fmt(f),
            Departure::PeerClosed => f.write_str("peer closed the connection"),
            Departure::IoError => f.write_str("socket error"),
            Departure::SlowConsumer => f.write_str("slow consumer: output queue over --max-queue"),
            Departure::Served(status) => write!(f, "HTTP request answered ({status})"),
            Departure::BadRequest(error) => write!(f, "HTTP {error}"),
            Departure::Transport(failure) => failure.fmt(f),
            Departure::TlsRequired => f.write_str("plain connection refused: TLS is required"),
        }
    }
}

/// The connections and what must happen to them at the end of the turn; the
/// router's [`Outbox`].
pub(super) struct Wire {
    /// When this loop turn started: the one clock read that every decision
    /// of the turn uses (router deadlines, linger deadlines, the trim).
    pub(super) now: Instant,
    pub(super) conns: Slab<Slot>,
    /// Connections with output queued, written in the next flush phase (at
    /// the end of the turn, and again when the history settles records).
    pub(super) dirty: Vec<ConnId>,
    /// Connections the event loop dropped; the router must hear of each.
    pub(super) dropped: Vec<ConnId>,
    /// Connections with input left to process (flow control lifted or the
    /// per-turn read budget ran out).
    pub(super) ready: VecDeque<ConnId>,
    /// Connections on their way out (may hold stale entries; see `reap_overdue`).
    pub(super) closing: Vec<ConnId>,
    /// Early writes made since the last flush phase began (see
    /// [`EARLY_WRITES_PER_FLUSH`]).
    pub(super) early_writes: usize,
    /// The durable history, with `--history`.
    pub(super) history: Option<History>,
    /// What the loop has counted (here, so that the router's sends are
    /// counted where they are queued).
    pub(super) metrics: Metrics,
    /// What the router asked of other nodes this turn (`--cluster`).
    pub(super) cluster: Option<Box<Outgoing>>,
    /// A forwarded MSG's bytes, encoded once for all its targets.
    pub(super) encoded: BytesMut,
}

/// One connection in the slab, and whether it is on the turn's lists.
pub(super) struct Slot {
    pub(super) conn: Connection,
    pub(super) peer: SocketAddr,
    /// When it was accepted, in seconds since the Unix epoch (`/stats`).
    pub(super) since_unix: u64,
    /// Set once the connection is on its way out. A slot can be removed in
    /// the middle of a turn (its peer closed while it lingered) and its token
    /// reused by a connection accepted later in the same poll batch; an event
    /// still pending for the old token then only makes the loop read from or
    /// flush the new connection, which finds nothing to do, as with any
    /// spurious readiness (a test sets this scene).
    pub(super) closing: Option<Closing>,
    pub(super) dirty: bool,
    pub(super) ready: bool,
    /// Output was written early since the connection was last flushed (see
    /// [`WRITE_EARLY_AT`]).
    pub(super) wrote_early: bool,
    /// Counted against its address's `--max-unidentified` until it has an
    /// id or is gone (only with `--auth`).
    pub(super) unidentified: bool,
    /// The last read emptied the socket (a short read, or `WouldBlock`) and
    /// no readiness was reported since: with edge-triggered events, a read
    /// now could only say `WouldBlock`, so it is skipped (a verdict that
    /// lets input go on, and the close after FLW, each save one).
    pub(super) read_to_empty: bool,
}

/// A connection on its way out, and how far it got.
pub(super) struct Closing {
    pub(super) reason: Departure,
    /// The client's id, for the log line (0: never identified).
    pub(super) id: ClientId,
    /// Drop queued output instead of flushing it.
    pub(super) discard: bool,
    /// Our FIN is sent; what the peer still sends is read and discarded, so
    /// that closing does not reset the connection before the peer has read
    /// our last frames.
    pub(super) fin_sent: bool,
    /// Give up on the peer after this.
    pub(super) deadline: Instant,
}

impl Wire {
    pub(super) fn mark_dirty(&mut self, conn: ConnId) {
        if let Some(slot) = self.conns.get_mut(conn)
            && !slot.dirty
        {
            slot.dirty = true;
            self.dirty.push(conn);
        }
    }

    pub(super) fn mark_ready(&mut self, conn: ConnId) {
        if let Some(slot) = self.conns.get_mut(conn)
            && !slot.ready
        {
            slot.ready = true;
            self.ready.push_back(conn);
        }
    }

    /// Starts closing `conn`; false if it was already closing.
    pub(super) fn begin_close(&mut self, conn: ConnId, id: ClientId, reason: Departure) -> bool {
        let Some(slot) = self.conns.get_mut(conn) else {
            return false;
        };
        if slot.closing.is_some() {
            return false;
        }
        let discard = reason.discards_output();
        if let Some(ending) = reason.ending() {
            slot.conn.close_transport(ending, &reason.to_string());
        } else if !discard {
            slot.conn.close_tls();
        }
        slot.closing = Some(Closing {
            reason,
            id,
            discard,
            fin_sent: false,
            deadline: self.now + LINGER,
        });
        self.closing.push(conn);
        self.mark_dirty(conn);
        true
    }

    /// The event loop drops `conn`; the router is told before the turn ends.
    pub(super) fn drop_conn(&mut self, conn: ConnId, reason: Departure) {
        if self.begin_close(conn, 0, reason) {
            self.dropped.push(conn);
        }
    }
}

impl Wire {
    /// Queues a frame for `to`, encoded into the connection's output; past
    /// the output cap, `to` is dropped as a slow consumer.
    pub(super) fn queue_for(&mut self, to: ConnId, frame: &impl Encode) {
        let Some(slot) = self.conns.get_mut(to) else {
            return;
        };
        if slot.closing.as_ref().is_some_and(|c| c.discard) {
            return;
        }
        if slot.conn.queue(frame) {
            if slot.conn.queued_output() >= WRITE_EARLY_AT
                && self.early_writes < EARLY_WRITES_PER_FLUSH
                && !slot.conn.wants_write
                && !slot.wrote_early
                && slot.closing.is_none()
            {
                slot.wrote_early = true;
                self.early_writes += 1;
                let queued = slot.conn.queued_output();
                let flushed = slot.conn.flush();
                self.metrics.bytes_out += (queued - slot.conn.queued_output()) as u64;
                if let Err(e) = flushed {
                    debug!(conn = to, error = %e, "write failed");
                    self.drop_conn(to, Departure::IoError);
                    return;
                }
            }
            // Whatever is left (or a socket that would block) is the end
            // of turn's business.
            self.mark_dirty(to);
        } else {
            warn!(conn = to, peer = %slot.peer, "slow consumer: output queue full, disconnecting");
            self.drop_conn(to, Departure::SlowConsumer);
        }
    }
}

impl Wire {
    /// This node no longer holds `id` (`--cluster`).
    pub(super) fn cluster_release(&mut self, id: ClientId) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.release(id);
        }
    }
}

impl Outbox for Wire {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        self.metrics.frames_out[frame.kind as usize] += 1;
        self.queue_for(to, frame);
    }

    fn send_ext(&mut self, to: ConnId, frame: &ExtFrame) {
        let kind = usize::from(frame.header().kind);
        if let Some(count) = self.metrics.frames_out.get_mut(kind) {
            *count += 1;
        }
        self.queue_for(to, frame);
    }

    fn forward(&mut self, targets: &[ConnId], msg: &FrameView<'_>) {
        self.metrics.deliveries += targets.len() as u64;
        match targets {
            // A request whose only targets are on other nodes: nothing to
            // encode (it was, for nobody, on every relay; BENCHMARKS.md,
            // "Stalls on the way across").
            [] => return,
            [to] => return self.queue_for(*to, msg),
            _ => {}
        }
        // Encoded once and copied to each target: at 1:100 a delivery
        // took 467 instructions encoding each copy, 424 this way
        // (BENCHMARKS.md).
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        msg.encode_into(&mut encoded);
        for &to in targets {
            self.queue_for(to, &Encoded(&encoded));
        }
        self.encoded = encoded;
    }

    fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason) {
        self.begin_close(conn, id, Departure::Rule(reason));
    }

    fn resume_input(&mut self, conn: ConnId) {
        self.mark_ready(conn);
    }

    #[inline]
    fn accepted<'s>(
        &mut self,
        msg: &FrameView<'_>,
        sender: impl FnOnce() -> Sender<'s>,
    ) -> Option<u64> {
        self.keep(msg, sender)
    }

    fn room_event(&mut self, event: &RoomEvent<'_>) -> Option<u64> {
        self.keep_room_event(event)
    }

    fn claim_id(&mut self, conn: ConnId, exhibitor: bool) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.claim(conn, exhibitor);
        }
    }

    fn release_id(&mut self, id: ClientId) {
        self.cluster_release(id);
    }

    fn relay(&mut self, node: NodeRef, relay: u64, frame: &FrameView<'_>) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.relay(node, relay, frame);
        }
    }

    fn relay_ack(&mut self, node: NodeRef, relay: u64, ok: bool) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.relay_ack(node, relay, ok);
        }
    }

    fn relay_refused(&mut self, node: NodeRef, relay: u64) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.relay_refused(node, relay);
        }
    }

    fn pair_notice(&mut self, node: NodeRef, notice: PairNotice) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.pair_notice(node, notice);
        }
    }

    fn claim_name(&mut self, claim: u64, name: &str) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.claim_name(claim, name);
        }
    }

    fn release_name(&mut self, name: &str) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.release_name(name);
        }
    }

    fn show_id(&mut self, id: ClientId, roles: u8, name: Option<&str>) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.show(id, roles, name);
        }
    }

    fn room_claim(&mut self, claim: &RoomClaim) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.room_claim(claim);
        }
    }

    fn queued(&mut self, node: NodeRef, relay: u64, exhibitor: ClientId, frame: &FrameView<'_>) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.queued(node, relay, exhibitor, frame);
        }
    }

    fn waited(&mut self, node: NodeRef, relay: u64, letter: &RemoteLetter<'_>) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.waited(node, relay, letter);
        }
    }

    fn room_copy(&mut self, node: NodeRef, frame: &FrameView<'_>) {
        if let Some(outgoing) = self.cluster.as_deref_mut() {
            outgoing.room_copy(node, frame);
        }
    }
}
