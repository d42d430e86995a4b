//! The event loop: one thread, one mio `Poll` owning the listener, every
//! [`Connection`] and the [`Router`]. It turns readiness into frames for the
//! router and the router's decisions into bytes on sockets. It never blocks:
//! reads and writes stop at `WouldBlock`, output waits in bounded per-client
//! queues, and each readiness event does a bounded amount of work so a
//! flooding client cannot starve the others.

use crate::connection::{Connection, ReadStatus};
use crate::proto::{ClientId, Frame};
use crate::router::{CloseReason, ConnId, Limits, Outbox, Router};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

const LISTENER: Token = Token(1 << 30);
const WAKER: Token = Token((1 << 30) + 1);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Reads one connection gets per turn before others are served.
const READS_PER_TURN: usize = 4;
/// How long a closing connection may take to take its last bytes.
const LINGER: Duration = Duration::from_secs(2);

/// Everything the server can be told at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub limits: Limits,
    /// Unsent output per connection past which it is dropped as a slow consumer.
    pub max_queue: usize,
    /// How long shutdown waits for clients to acknowledge FLW.
    pub drain_timeout: Duration,
}

/// Asks a running server to shut down (rule 8) from another thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!(error = %e, "could not wake the event loop");
        }
    }
}

/// The connections and what must happen to them at the end of the turn; the
/// router's [`Outbox`].
struct Wire {
    conns: Slab<Slot>,
    /// Connections with output queued this turn, flushed once at its end.
    dirty: Vec<ConnId>,
    /// Connections the event loop dropped; the router must hear of each.
    dropped: Vec<ConnId>,
    /// Connections with input left to process (flow control lifted or the
    /// per-turn read budget ran out).
    ready: VecDeque<ConnId>,
    /// Connections on their way out (may hold stale entries; see `reap_overdue`).
    closing: Vec<ConnId>,
}

struct Slot {
    conn: Connection,
    peer: SocketAddr,
    /// Set once the connection is on its way out; it is removed at the end of
    /// a turn, never in the middle of one, so its token is not reused while
    /// events for it may still be pending.
    closing: Option<Closing>,
    dirty: bool,
    ready: bool,
}

struct Closing {
    reason: CloseReason,
    /// The client's id, for the log line (0: never identified).
    id: ClientId,
    /// Drop queued output instead of flushing it.
    discard: bool,
    /// Our FIN is sent; what the peer still sends is read and discarded, so
    /// that closing does not reset the connection before the peer has read
    /// our last frames.
    fin_sent: bool,
    /// Give up on the peer after this.
    deadline: Instant,
}

impl Wire {
    fn mark_dirty(&mut self, conn: ConnId) {
        if let Some(slot) = self.conns.get_mut(conn)
            && !slot.dirty
        {
            slot.dirty = true;
            self.dirty.push(conn);
        }
    }

    fn mark_ready(&mut self, conn: ConnId) {
        if let Some(slot) = self.conns.get_mut(conn)
            && !slot.ready
        {
            slot.ready = true;
            self.ready.push_back(conn);
        }
    }

    /// Starts closing `conn`; false if it was already closing.
    fn begin_close(
        &mut self,
        conn: ConnId,
        id: ClientId,
        reason: CloseReason,
        discard: bool,
    ) -> bool {
        let Some(slot) = self.conns.get_mut(conn) else {
            return false;
        };
        if slot.closing.is_some() {
            return false;
        }
        slot.closing = Some(Closing {
            reason,
            id,
            discard,
            fin_sent: false,
            deadline: Instant::now() + LINGER,
        });
        self.closing.push(conn);
        self.mark_dirty(conn);
        true
    }

    /// The event loop drops `conn`; the router is told before the turn ends.
    fn drop_conn(&mut self, conn: ConnId, reason: CloseReason, discard: bool) {
        if self.begin_close(conn, 0, reason, discard) {
            self.dropped.push(conn);
        }
    }
}

impl Outbox for Wire {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        let Some(slot) = self.conns.get_mut(to) else {
            return;
        };
        if slot.closing.as_ref().is_some_and(|c| c.discard) {
            return;
        }
        if slot.conn.queue(frame) {
            self.mark_dirty(to);
        } else {
            warn!(conn = to, peer = %slot.peer, "slow consumer: output queue full, disconnecting");
            self.drop_conn(to, CloseReason::SlowConsumer, true);
        }
    }

    fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason) {
        self.begin_close(conn, id, reason, false);
    }

    fn resume_input(&mut self, conn: ConnId) {
        self.mark_ready(conn);
    }
}

/// A bound server, ready to [`run`](Server::run).
pub struct Server {
    config: Config,
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    waker: Arc<Waker>,
    shutdown_requested: Arc<AtomicBool>,
    router: Router,
    wire: Wire,
    /// Held open so that, out of descriptors, a pending connection can still
    /// be accepted and closed instead of waking the loop forever.
    spare_fd: Option<File>,
    scratch: Vec<u8>,
    /// The time this loop turn started; one clock read serves the whole turn.
    now: Instant,
}

impl Server {
    /// Binds the listening socket.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(config.addr)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        Ok(Server {
            router: Router::new(config.limits),
            config,
            poll,
            listener: Some(listener),
            local_addr,
            waker,
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            wire: Wire {
                conns: Slab::new(),
                dirty: Vec::new(),
                dropped: Vec::new(),
                ready: VecDeque::new(),
                closing: Vec::new(),
            },
            spare_fd: File::open("/dev/null").ok(),
            scratch: vec![0; READ_CHUNK],
            now: Instant::now(),
        })
    }

    /// The address actually bound (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            requested: self.shutdown_requested.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs until a shutdown has drained (or its drain timeout passed).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let timeout = self.poll_timeout(drain_deadline);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(conn) => {
                        if event.is_writable() {
                            self.wire.mark_dirty(conn);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.service_input(conn);
                        }
                    }
                }
            }
            // Connections that still have work get a turn each, in order.
            for _ in 0..self.wire.ready.len() {
                let Some(conn) = self.wire.ready.pop_front() else {
                    break;
                };
                if let Some(slot) = self.wire.conns.get_mut(conn) {
                    slot.ready = false;
                    self.service_input(conn);
                }
            }
            let now = Instant::now();
            self.router.tick(now, &mut self.wire);
            if drain_deadline.is_none() && self.shutdown_requested.load(Ordering::SeqCst) {
                drain_deadline = Some(self.begin_shutdown(now));
            }
            self.settle_dropped();
            self.flush_and_reap();
            if let Some(deadline) = drain_deadline {
                if self.wire.conns.is_empty() {
                    info!("all clients gone; exiting");
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    warn!(
                        remaining = self.wire.conns.len(),
                        "drain timeout passed; exiting"
                    );
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self, drain_deadline: Option<Instant>) -> Option<Duration> {
        if !self.wire.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        [
            self.router.next_deadline(),
            self.next_linger_deadline(),
            drain_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|deadline| deadline.saturating_duration_since(Instant::now()))
    }

    fn begin_shutdown(&mut self, now: Instant) -> Instant {
        info!(
            clients = self.router.client_count(),
            "shutting down: sending FLW to every client"
        );
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.router.shutdown(now, &mut self.wire);
        now + self.config.drain_timeout
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((socket, peer)) => self.admit(socket, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_descriptors(&e) => {
                    // Free the spare descriptor, take the pending connection
                    // and close it at once; the client sees the refusal.
                    self.spare_fd = None;
                    if let Ok((socket, peer)) = listener.accept() {
                        warn!(%peer, "out of file descriptors; connection refused");
                        drop(socket);
                    }
                    self.spare_fd = File::open("/dev/null").ok();
                    if self.spare_fd.is_none() {
                        warn!("out of file descriptors; cannot accept until some are freed");
                        return;
                    }
                }
                Err(e) => {
                    debug!(error = %e, "accept failed");
                }
            }
        }
    }

    fn admit(&mut self, mut socket: TcpStream, peer: SocketAddr) {
        if let Err(e) = socket.set_nodelay(true) {
            debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let entry = self.wire.conns.vacant_entry();
        let conn = entry.key();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut socket, Token(conn), Interest::READABLE)
        {
            warn!(%peer, error = %e, "could not register connection");
            return;
        }
        entry.insert(Slot {
            conn: Connection::new(socket, self.config.max_queue),
            peer,
            closing: None,
            dirty: false,
            ready: false,
        });
        self.router.connected(conn, self.now);
        info!(conn, %peer, "connected");
    }

    /// Decodes and routes what `conn` has sent, reading more while its budget
    /// lasts; leftover work puts it on the ready queue.
    fn service_input(&mut self, conn: ConnId) {
        let mut reads = 0;
        loop {
            // Route every whole frame already buffered.
            loop {
                let Some(slot) = self.wire.conns.get_mut(conn) else {
                    return;
                };
                if let Some(closing) = &slot.closing {
                    if closing.fin_sent {
                        self.discard_input(conn);
                    }
                    return;
                }
                if !self.router.accepts_input(conn) {
                    return;
                }
                match slot.conn.next_frame() {
                    Ok(Some(frame)) => {
                        debug!(conn, %frame, "received");
                        self.router.on_frame(conn, frame, self.now, &mut self.wire);
                        self.settle_dropped();
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.router.on_undecodable(conn, e.header(), &mut self.wire);
                        self.settle_dropped();
                        return;
                    }
                }
            }
            if reads == READS_PER_TURN {
                self.wire.mark_ready(conn);
                return;
            }
            reads += 1;
            let Some(slot) = self.wire.conns.get_mut(conn) else {
                return;
            };
            match slot.conn.read_once(&mut self.scratch) {
                Ok(ReadStatus::Data(_)) => {}
                Ok(ReadStatus::WouldBlock) => return,
                Ok(ReadStatus::Closed) => {
                    if slot.conn.buffered_input() > 0 {
                        debug!(conn, bytes = slot.conn.buffered_input(), "closed mid-frame");
                    }
                    self.wire.drop_conn(conn, CloseReason::PeerClosed, false);
                    self.settle_dropped();
                    return;
                }
                Err(e) => {
                    debug!(conn, error = %e, "read failed");
                    self.wire.drop_conn(conn, CloseReason::IoError, true);
                    self.settle_dropped();
                    return;
                }
            }
        }
    }

    /// Tells the router about every connection the event loop dropped; its
    /// answers may drop more (a slow consumer among a broadcast's targets).
    fn settle_dropped(&mut self) {
        while let Some(conn) = self.wire.dropped.pop() {
            if let (Some(id), Some(slot)) =
                (self.router.client_id(conn), self.wire.conns.get_mut(conn))
                && let Some(closing) = slot.closing.as_mut()
            {
                closing.id = id;
            }
            self.router.disconnected(conn, self.now, &mut self.wire);
        }
    }

    /// End of turn: writes what each connection has queued, and removes the
    /// connections that are closing and done.
    fn flush_and_reap(&mut self) {
        // Dropping a connection may queue frames for others: repeat until quiet.
        while !self.wire.dirty.is_empty() {
            for conn in std::mem::take(&mut self.wire.dirty) {
                self.flush(conn);
            }
            self.settle_dropped();
        }
        self.reap_overdue();
    }

    fn flush(&mut self, conn: ConnId) {
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return;
        };
        slot.dirty = false;
        let discard = slot.closing.as_ref().is_some_and(|c| c.discard);
        let written = if discard { Ok(true) } else { slot.conn.flush() };
        match written {
            Ok(true) if slot.closing.is_some() => self.finish_close(conn),
            Ok(true) => self.set_write_interest(conn, false),
            Ok(false) => self.set_write_interest(conn, true),
            Err(e) => {
                debug!(conn, error = %e, "write failed");
                self.wire.drop_conn(conn, CloseReason::IoError, true);
                self.settle_dropped();
                self.remove(conn);
            }
        }
    }

    /// Everything for a closing connection is written: send FIN and wait
    /// (bounded by the linger deadline) for the peer to close its side.
    fn finish_close(&mut self, conn: ConnId) {
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return;
        };
        let Some(closing) = slot.closing.as_mut() else {
            return;
        };
        if closing.discard {
            self.remove(conn);
            return;
        }
        if !closing.fin_sent {
            closing.fin_sent = true;
            if slot
                .conn
                .socket
                .shutdown(std::net::Shutdown::Write)
                .is_err()
            {
                self.remove(conn);
                return;
            }
        }
        self.set_write_interest(conn, false);
        self.discard_input(conn);
    }

    /// Reads and drops what a closing peer still sends, removing the
    /// connection once it has closed its side.
    fn discard_input(&mut self, conn: ConnId) {
        for _ in 0..READS_PER_TURN {
            let Some(slot) = self.wire.conns.get_mut(conn) else {
                return;
            };
            match slot.conn.read_discard(&mut self.scratch) {
                Ok(ReadStatus::Data(_)) => {}
                Ok(ReadStatus::WouldBlock) => return,
                Ok(ReadStatus::Closed) | Err(_) => {
                    self.remove(conn);
                    return;
                }
            }
        }
        self.wire.mark_ready(conn);
    }

    /// Removes closing connections whose peer did not finish in time.
    fn reap_overdue(&mut self) {
        if self.wire.closing.is_empty() {
            return;
        }
        let now = Instant::now();
        let conns = &self.wire.conns;
        self.wire
            .closing
            .retain(|&conn| conns.get(conn).is_some_and(|s| s.closing.is_some()));
        self.wire.closing.dedup();
        let overdue: Vec<ConnId> = self
            .wire
            .closing
            .iter()
            .copied()
            .filter(|&conn| {
                self.wire.conns[conn]
                    .closing
                    .as_ref()
                    .is_some_and(|c| c.deadline <= now)
            })
            .collect();
        for conn in overdue {
            self.remove(conn);
        }
    }

    /// The earliest linger deadline of a closing connection.
    fn next_linger_deadline(&self) -> Option<Instant> {
        self.wire
            .closing
            .iter()
            .filter_map(|&conn| {
                self.wire
                    .conns
                    .get(conn)?
                    .closing
                    .as_ref()
                    .map(|c| c.deadline)
            })
            .min()
    }

    fn set_write_interest(&mut self, conn: ConnId, wanted: bool) {
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return;
        };
        if slot.conn.wants_write == wanted {
            return;
        }
        let interest = if wanted {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match self
            .poll
            .registry()
            .reregister(&mut slot.conn.socket, Token(conn), interest)
        {
            Ok(()) => slot.conn.wants_write = wanted,
            Err(e) => {
                debug!(conn, error = %e, "reregister failed");
                self.wire.drop_conn(conn, CloseReason::IoError, true);
            }
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if !self.wire.conns.contains(conn) {
            return;
        }
        let mut slot = self.wire.conns.remove(conn);
        let _ = self.poll.registry().deregister(&mut slot.conn.socket);
        match slot.closing {
            Some(Closing { reason, id: 0, .. }) => {
                info!(conn, peer = %slot.peer, %reason, "disconnected")
            }
            Some(Closing { reason, id, .. }) => {
                info!(conn, id, peer = %slot.peer, %reason, "disconnected")
            }
            None => info!(conn, peer = %slot.peer, "disconnected"),
        }
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}
