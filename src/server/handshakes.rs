//! TLS handshakes off the event loop: the [`Workers`] that run each
//! handshake step (`server --tls-workers`, at a lower priority than the
//! loop), and what the loop keeps of the connections whose step is away.
//! The connection owns its session and hands out a step as a job
//! (`Connection::handshake_job`); this module passes it to the workers,
//! whose notify callback wakes the loop's `mio::Waker`, and hands each
//! finished step back to its connection at the end of the turn. The router
//! never knows: a connection in its handshake is one that has sent nothing.
//!
//! With the workers' queue full, a connection waits in line with its
//! input paused (it reads nothing more; the kernel's socket buffer holds
//! what its peer sends) and is handed out as soon as a step comes back:
//! a burst of handshakes is served late rather than refused, and the
//! handshake timeout still ends one that waits too long. Memory stays
//! bounded: a job is at most one read of the connection's bytes, and at
//! most the queue's capacity of sessions is away at once.

use super::Server;
use super::wire::Departure;
use crate::connection::ReadStatus;
use crate::router::ConnId;
use crate::tls::{HandshakeJob, HandshakeStep, TlsFailure, Workers};
use mio::Waker;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use tracing::{debug, warn};

/// What the loop holds for handshakes run off it.
pub(super) struct Handshakes {
    workers: Workers<HandshakeJob, HandshakeStep>,
    /// Steps handed out so far: the low half of each job's tag.
    serial: u32,
    /// The tag of the step each connection has away. A step that comes
    /// back for a connection since removed (its slot perhaps taken by a
    /// later one) finds no entry, or another tag, and is dropped.
    away: HashMap<ConnId, u64>,
    /// Connections whose bytes wait for room on the workers, first come
    /// first served (an entry may be stale: see `serve_waiting`).
    waiting: VecDeque<ConnId>,
}

impl Handshakes {
    /// Starts `workers` threads taking at most `queue` steps at once, which
    /// wake the loop after each step.
    pub(super) fn start(
        workers: usize,
        queue: usize,
        waker: Arc<Waker>,
    ) -> std::io::Result<Handshakes> {
        let workers = Workers::new(workers, queue, HandshakeJob::run, move || {
            if let Err(e) = waker.wake() {
                warn!(error = %e, "could not wake the event loop");
            }
        })?;
        Ok(Handshakes {
            workers,
            serial: 0,
            away: HashMap::new(),
            waiting: VecDeque::new(),
        })
    }

    /// Steps away on the workers now.
    #[cfg(test)]
    pub(super) fn away(&self) -> usize {
        self.away.len()
    }

    /// Connections in line for the workers now (stale entries included).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Steps submitted and not yet drained.
    #[cfg(test)]
    pub(super) fn on_workers(&self) -> usize {
        self.workers.pending()
    }
}

/// A job's tag: the connection in the high half, so that a step that comes
/// back names its connection, and a serial in the low half, so that it is
/// told from a step of an earlier connection in the same slot.
fn tag(conn: ConnId, serial: u32) -> u64 {
    ((conn as u64) << 32) | u64::from(serial)
}

fn conn_of(tag: u64) -> ConnId {
    (tag >> 32) as ConnId
}

impl Server {
    /// Hands `conn`'s next handshake step to a worker, or puts it in line
    /// when the workers' queue is full. Without workers, or with nothing
    /// to hand out, nothing happens.
    pub(super) fn hand_out_handshake(&mut self, conn: ConnId) {
        let Some(handshakes) = self.handshakes.as_mut() else {
            return;
        };
        if !handshakes.workers.has_room() {
            debug!(conn, "TLS handshake waits: the workers' queue is full");
            handshakes.waiting.push_back(conn);
            return;
        }
        let Some(job) = self
            .wire
            .conns
            .get_mut(conn)
            .and_then(|slot| slot.conn.handshake_job())
        else {
            return;
        };
        handshakes.serial = handshakes.serial.wrapping_add(1);
        let tag = tag(conn, handshakes.serial);
        match handshakes.workers.submit(tag, job) {
            Ok(()) => {
                handshakes.away.insert(conn, tag);
            }
            Err(job) => {
                // Room was checked, so every worker is gone: the loop runs
                // the step itself rather than leave the connection waiting.
                warn!(
                    conn,
                    "no TLS handshake worker left: the event loop runs the handshake"
                );
                self.take_back_handshake(conn, Ok(job.run()));
            }
        }
    }

    /// Hands each finished step back to its connection, then as many of
    /// the connections in line as the workers now have room for.
    pub(super) fn drain_handshakes(&mut self) {
        let Some(handshakes) = self.handshakes.as_mut() else {
            return;
        };
        let done: Vec<_> = handshakes.workers.drain().collect();
        for (tag, step) in done {
            let Some(handshakes) = self.handshakes.as_mut() else {
                return;
            };
            let conn = conn_of(tag);
            if handshakes.away.get(&conn) != Some(&tag) {
                debug!(
                    conn,
                    "TLS handshake step back for a connection gone: dropped"
                );
                continue;
            }
            handshakes.away.remove(&conn);
            self.take_back_handshake(conn, step.map_err(|_| TlsFailure::lost_on_worker()));
        }
        self.serve_waiting();
        self.settle_dropped();
    }

    /// Hands out the steps of connections in line while there is room. An
    /// entry whose connection has gone (or whose slot a later connection
    /// took, which then has nothing held or a step of its own) hands out
    /// nothing, or that later connection's step, which is no harm.
    fn serve_waiting(&mut self) {
        loop {
            let Some(handshakes) = self.handshakes.as_mut() else {
                return;
            };
            if !handshakes.workers.has_room() {
                return;
            }
            let Some(conn) = handshakes.waiting.pop_front() else {
                return;
            };
            self.hand_out_handshake(conn);
        }
    }

    /// Gives `conn` its step back (or the failure that lost it), and goes
    /// on as the step leaves the connection: its records to write, its
    /// next step to hand out, its socket to read again, or its close.
    fn take_back_handshake(&mut self, conn: ConnId, step: Result<HandshakeStep, TlsFailure>) {
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return;
        };
        let status = match step {
            Ok(step) => slot.conn.take_back_handshake(step),
            Err(failure) => Some(ReadStatus::Failed(failure.into())),
        };
        let paused = slot.conn.handshake_paused();
        // The step's records, and any output that waited for the session.
        self.wire.mark_dirty(conn);
        let end = match status {
            None
            | Some(ReadStatus::Data(_) | ReadStatus::Handshake(_) | ReadStatus::WouldBlock) => {
                if paused {
                    self.hand_out_handshake(conn);
                } else {
                    // Nothing was read while the step was away, and
                    // readiness is edge-triggered: read (and route what
                    // came with the handshake's end) this turn.
                    self.wire.mark_ready(conn);
                }
                return;
            }
            Some(end) => end,
        };
        // What came before the end is routed first, as after a read.
        self.route_buffered(conn);
        let departure = match end {
            ReadStatus::Full => Departure::SlowConsumer,
            ReadStatus::Failed(failure) => {
                warn!(conn, %failure, "closing");
                Departure::Transport(failure)
            }
            _ => Departure::PeerClosed,
        };
        self.wire.drop_conn(conn, departure);
        self.settle_dropped();
    }

    /// Forgets the step `conn` has away (it is being removed): when it
    /// comes back it is dropped.
    pub(super) fn forget_handshake(&mut self, conn: ConnId) {
        if let Some(handshakes) = self.handshakes.as_mut() {
            handshakes.away.remove(&conn);
        }
    }
}
