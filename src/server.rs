//! The event loop: one thread, one mio `Poll` owning the listener, every
//! [`Connection`] and the [`Router`]. It turns readiness into frames for the
//! router and the router's decisions into bytes on sockets. It never blocks:
//! reads and writes stop at `WouldBlock`, output waits in bounded per-client
//! queues, and each readiness event does a bounded amount of work so a
//! flooding client cannot starve the others.

use crate::connection::{Connection, ReadStatus};
use crate::proto::{ClientId, Frame, FrameView};
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
/// A destination's output is written as soon as this much is queued, not
/// only at the end of the turn, so that its reader starts on the first part
/// of a large batch while the server routes the rest: the two processes
/// work as a pipeline instead of each waiting for the other's whole batch
/// (1:1 throughput rose by half with this). Once per destination per turn:
/// the rest is written at the end of the turn, so a broadcast pays for at
/// most one extra write per exhibitor, and small outputs for none.
const WRITE_EARLY_AT: usize = 16 * 1024;
/// A few early writes are enough to set readers going; past that, as when a
/// broadcast fills a thousand outputs in one turn, they would only double
/// the writes.
const EARLY_WRITES_PER_TURN: usize = 4;
/// Pending connections the kernel may queue (it caps this at somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// How often buffers of connections with nothing pending are released.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);
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
    /// Early writes made this turn (see [`EARLY_WRITES_PER_TURN`]).
    early_writes: usize,
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
    /// Output was written this turn before its end (see [`WRITE_EARLY_AT`]).
    wrote_early: bool,
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

impl Wire {
    /// Queues a frame for `to` with `queue`, which encodes it into the
    /// connection's output; past the output cap, `to` is dropped as a slow
    /// consumer.
    fn queue_for(&mut self, to: ConnId, queue: impl FnOnce(&mut Connection) -> bool) {
        let Some(slot) = self.conns.get_mut(to) else {
            return;
        };
        if slot.closing.as_ref().is_some_and(|c| c.discard) {
            return;
        }
        if queue(&mut slot.conn) {
            if slot.conn.queued_output() >= WRITE_EARLY_AT
                && self.early_writes < EARLY_WRITES_PER_TURN
                && !slot.conn.wants_write
                && !slot.wrote_early
                && slot.closing.is_none()
            {
                slot.wrote_early = true;
                self.early_writes += 1;
                if let Err(e) = slot.conn.flush() {
                    debug!(conn = to, error = %e, "write failed");
                    self.drop_conn(to, CloseReason::IoError, true);
                    return;
                }
            }
            // Whatever is left (or a socket that would block) is the end
            // of turn's business.
            self.mark_dirty(to);
        } else {
            warn!(conn = to, peer = %slot.peer, "slow consumer: output queue full, disconnecting");
            self.drop_conn(to, CloseReason::SlowConsumer, true);
        }
    }
}

impl Outbox for Wire {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        self.queue_for(to, |conn| conn.queue(frame));
    }

    fn forward(&mut self, targets: &[ConnId], msg: &FrameView<'_>) {
        for &to in targets {
            self.queue_for(to, |conn| conn.queue_view(msg));
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
    /// When idle connections' buffers are next released.
    next_trim: Instant,
}

impl Server {
    /// Binds the listening socket.
    pub fn bind(config: Config) -> io::Result<Server> {
        let poll = Poll::new()?;
        let mut listener = listen(config.addr)?;
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
                early_writes: 0,
            },
            spare_fd: File::open("/dev/null").ok(),
            scratch: vec![0; READ_CHUNK],
            now: Instant::now(),
            next_trim: Instant::now() + TRIM_INTERVAL,
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
                        if event.is_read_closed() || event.is_error() {
                            self.service_input(conn, false);
                        } else if event.is_readable() {
                            self.service_input(conn, true);
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
                    self.service_input(conn, false);
                }
            }
            let now = Instant::now();
            self.router.tick(now, &mut self.wire);
            if drain_deadline.is_none() && self.shutdown_requested.load(Ordering::SeqCst) {
                drain_deadline = Some(self.begin_shutdown(now));
            }
            self.settle_dropped();
            self.flush_and_reap();
            if now >= self.next_trim {
                self.release_idle_buffers();
                self.next_trim = now + TRIM_INTERVAL;
            }
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
            Some(self.next_trim),
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
                    let took_one = match listener.accept() {
                        Ok((socket, peer)) => {
                            warn!(%peer, "out of file descriptors; connection refused");
                            drop(socket);
                            true
                        }
                        // EMFILE comes whether or not a connection waits;
                        // with none to take, stop here or the loop spins
                        // (regression: reliability item 4).
                        Err(_) => false,
                    };
                    self.spare_fd = File::open("/dev/null").ok();
                    if !took_one {
                        return;
                    }
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
            wrote_early: false,
        });
        self.router.connected(conn, self.now);
        info!(conn, %peer, "connected");
    }

    /// Decodes and routes what `conn` has sent, reading more while its budget
    /// lasts; leftover work puts it on the ready queue.
    ///
    /// `short_read_drains`: the readiness event did not report the peer's
    /// close, so a read that returns less than asked for has emptied the
    /// socket and the next read would only say `WouldBlock` — skip it (one
    /// syscall per event). With a close pending, read on until it shows.
    fn service_input(&mut self, conn: ConnId, short_read_drains: bool) {
        let mut reads = 0;
        let mut drained = false;
        loop {
            if !self.route_buffered(conn) {
                return;
            }
            if drained {
                return;
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
                Ok(ReadStatus::Data(n)) => drained = short_read_drains && n < self.scratch.len(),
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

    /// Routes every whole frame buffered for `conn`, parsed in place.
    /// Returns whether `conn` may be read further: false once it is
    /// closing, held back by flow control, or its stream is lost.
    fn route_buffered(&mut self, conn: ConnId) -> bool {
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return false;
        };
        // Lent out, so the router can write to other connections while
        // frames borrow from it.
        let input = slot.conn.take_input();
        let mut consumed = 0;
        let readable = loop {
            let Some(slot) = self.wire.conns.get(conn) else {
                break false;
            };
            if slot.closing.is_some() || !self.router.accepts_input(conn) {
                break false;
            }
            match FrameView::parse(&input[consumed..]) {
                Ok(Some((frame, len))) => {
                    consumed += len;
                    debug!(conn, %frame, "received");
                    self.router
                        .on_frame_view(conn, &frame, self.now, &mut self.wire);
                    self.settle_dropped();
                }
                Ok(None) => break true,
                Err(e) => {
                    self.router
                        .on_undecodable(conn, e.header(), self.now, &mut self.wire);
                    self.settle_dropped();
                    break false;
                }
            }
        };
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return false;
        };
        slot.conn.return_input(input, consumed);
        if slot.closing.as_ref().is_some_and(|c| c.fin_sent) {
            self.discard_input(conn);
        }
        readable
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
        self.wire.early_writes = 0;
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
        slot.wrote_early = false;
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

    /// Frees the buffers that connections with nothing pending still hold
    /// from earlier traffic: an idle connection costs no buffer memory.
    fn release_idle_buffers(&mut self) {
        let released: usize = self
            .wire
            .conns
            .iter_mut()
            .map(|(_, slot)| slot.conn.release_idle_buffers())
            .sum();
        if released > 0 {
            debug!(bytes = released, "released idle connection buffers");
        }
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

/// The listening socket, with a backlog deep enough for a burst of
/// connections (the std/mio default of 128 overflows when hundreds of
/// clients connect at once, and the kernel then makes them retry after 1 s).
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests {
    //! Loop scenes that need the server's insides, set by hand.
    //!
    //! A connection closed and its slot reused inside one poll batch (STYLE.md,
    //! habit 6): the new connection must get none of the old one's traffic.
    //! The scene is set by hand — loop turns driven from the test before
    //! `run` — so that the first batch `run` polls holds, in this order, the
    //! old connection's last event (its close, which frees its slot at once)
    //! and the listener's (a new connection, which takes that slot).
    //!
    //! A batch past the early-write size: part of it must reach its readers
    //! before the turn that routes it ends — one part each, and only for as
    //! many readers as a turn may write to early.

    use super::*;
    use crate::proto::{Kind, SERVER_ID};
    use crate::router::Limits;
    use bytes::BytesMut;
    use std::io::{Read, Write};
    use std::net::TcpStream as StdStream;
    use std::os::fd::AsRawFd;
    use std::sync::{Mutex, MutexGuard};

    const S: ClientId = SERVER_ID;
    const WAIT: Duration = Duration::from_secs(10);

    /// A blocking test client.
    struct Client {
        stream: StdStream,
        buf: BytesMut,
    }

    impl Client {
        fn connect(addr: SocketAddr) -> Client {
            let stream = StdStream::connect(addr).unwrap();
            stream.set_nodelay(true).unwrap();
            Client {
                stream,
                buf: BytesMut::new(),
            }
        }

        fn send(&mut self, frame: &Frame) {
            self.stream.write_all(&frame.to_bytes()).unwrap();
        }

        /// A frame (`Some(Some)`) or the close (`Some(None)`) if either has
        /// arrived; `None` if nothing has yet. Never blocks.
        fn try_next(&mut self) -> Option<Option<Frame>> {
            if let Some(frame) = Frame::decode(&mut self.buf).unwrap() {
                return Some(Some(frame));
            }
            self.stream.set_nonblocking(true).unwrap();
            let mut chunk = [0u8; 4096];
            let got = match self.stream.read(&mut chunk) {
                Ok(0) => Some(None),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    Frame::decode(&mut self.buf).unwrap().map(Some)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("read: {e}"),
            };
            self.stream.set_nonblocking(false).unwrap();
            got
        }

        /// The next frame, or None once the server has closed; fails after WAIT.
        fn next(&mut self) -> Option<Frame> {
            let deadline = Instant::now() + WAIT;
            loop {
                if let Some(frame) = Frame::decode(&mut self.buf).unwrap() {
                    return Some(frame);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(!left.is_zero(), "nothing from the server within {WAIT:?}");
                self.stream.set_read_timeout(Some(left)).unwrap();
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk) {
                    Ok(0) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) => panic!("read: {e}"),
                }
            }
        }

        /// The next MSG, which must name `me` (or everyone) in its text; it
        /// is acknowledged.
        fn expect_msg_for(&mut self, id: ClientId, me: &str) -> Frame {
            let frame = self.next().expect("a MSG, not a close");
            assert_eq!(frame.kind, Kind::Msg, "{frame}");
            let text = frame.text().unwrap();
            assert!(
                text == format!("for {me}").as_bytes() || &text[..] == b"for all",
                "misrouted: {me} got {:?}",
                String::from_utf8_lossy(text)
            );
            self.send(&Frame::bare(Kind::Ok, id, frame.origin, frame.seq));
            frame
        }
    }

    /// One loop turn by hand, for setting the scene before `run`: the same
    /// steps in the same order, with every connection served instead of
    /// those `poll` reports.
    fn turn(server: &mut Server) {
        server.now = Instant::now();
        server.accept_all();
        let conns: Vec<ConnId> = server.wire.conns.iter().map(|(conn, _)| conn).collect();
        for conn in conns {
            server.service_input(conn, false);
        }
        server.router.tick(Instant::now(), &mut server.wire);
        server.settle_dropped();
        server.flush_and_reap();
    }

    /// A server on a free loopback port with default limits, and the
    /// guard that keeps it the only one (see `ONE_SERVER_AT_A_TIME`).
    fn loopback_server() -> (MutexGuard<'static, ()>, Server) {
        let serial = ONE_SERVER_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let server = Server::bind(Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            limits: Limits::default(),
            max_queue: 1 << 20,
            drain_timeout: Duration::from_secs(2),
        })
        .unwrap();
        (serial, server)
    }

    /// Turns the loop by hand until `done` has an answer (bounded by WAIT).
    fn drive_until<T>(server: &mut Server, mut done: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            turn(server);
            if let Some(answer) = done() {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "the scene did not set within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Polls `done` (bounded by WAIT): for kernel state no socket read shows.
    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Connections waiting in the listener's accept queue (TCP_INFO's
    /// `tcpi_unacked` on a listening socket).
    fn accept_queue(listener: &TcpListener) -> u32 {
        // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes.
        unsafe {
            let mut info: libc::tcp_info = std::mem::zeroed();
            let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
            let rc = libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            );
            assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
            info.tcpi_unacked
        }
    }

    /// The server's log, captured.
    #[derive(Clone)]
    struct LogWriter(Arc<Mutex<Vec<u8>>>);

    impl Write for LogWriter {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Held by every test here that runs a server. The slot test reads the
    /// server's log through a subscriber scoped to its thread; tracing caches
    /// each log site's interest process-wide, and a site first reached by
    /// another test's thread, with no subscriber, at the moment the scoped
    /// one is installed can keep a stale "not interested" and drop the
    /// lines the test looks for.
    static ONE_SERVER_AT_A_TIME: Mutex<()> = Mutex::new(());

    #[test]
    fn slot_closed_and_reused_in_one_poll_batch_misroutes_nothing() {
        let (_serial, mut server) = loopback_server();
        let addr = server.local_addr();
        let oi = |origin| Frame::bare(Kind::Oi, origin, S, 0);

        // A: exhibitor 4096, paired with emitter E (1). C: exhibitor 4097.
        let mut a = Client::connect(addr);
        a.send(&oi(0));
        let ok = drive_until(&mut server, || a.try_next()).unwrap();
        assert_eq!(ok, Frame::bare(Kind::Ok, S, 4096, 0));
        let a_addr = a.stream.local_addr().unwrap();
        let (a_conn, _) = server
            .wire
            .conns
            .iter()
            .find(|(_, slot)| slot.peer == a_addr)
            .unwrap();
        let mut e = Client::connect(addr);
        e.send(&oi(4096));
        let ok = drive_until(&mut server, || e.try_next()).unwrap();
        assert_eq!(ok, Frame::bare(Kind::Ok, S, 1, 0));
        let mut c = Client::connect(addr);
        c.send(&oi(0));
        let ok = drive_until(&mut server, || c.try_next()).unwrap();
        assert_eq!(ok, Frame::bare(Kind::Ok, S, 4097, 0));

        // A leaves: its OK, then the server's FIN. A's slot now waits for A
        // to close its side.
        a.send(&Frame::bare(Kind::Flw, 4096, S, 1));
        let ok = drive_until(&mut server, || a.try_next());
        assert_eq!(ok, Some(Frame::bare(Kind::Ok, S, 4096, 1)));
        assert_eq!(drive_until(&mut server, || a.try_next()), None);
        let closing = server.wire.conns[a_conn].closing.as_ref();
        assert!(
            closing.is_some_and(|c| c.fin_sent),
            "A's slot is not lingering"
        );

        // Forget the readiness reported so far: every event was handled by
        // the turns above. From here on the ready list fills in order.
        let mut events = Events::with_capacity(1024);
        server.poll.poll(&mut events, Some(Duration::ZERO)).unwrap();

        // A closes; once its FIN is in, B connects. Both wait for the first
        // poll of `run`, A's event first.
        drop(a);
        wait_for("A's FIN reaches the server", || {
            let mut byte = [0u8; 1];
            matches!(server.wire.conns[a_conn].conn.socket.peek(&mut byte), Ok(0))
        });
        let mut b = Client::connect(addr);
        let b_addr = b.stream.local_addr().unwrap();
        let listener = server.listener.as_ref().unwrap();
        wait_for("B is in the accept queue", || accept_queue(listener) >= 1);

        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = LogWriter(log.clone());
        let shutdown = server.shutdown_handle();
        let running = std::thread::spawn(move || {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .without_time()
                .with_max_level(tracing::Level::INFO)
                .finish();
            tracing::subscriber::with_default(subscriber, || server.run())
        });

        // B is an exhibitor and gets A's old id, the lowest free one.
        b.send(&oi(0));
        assert_eq!(b.next(), Some(Frame::bare(Kind::Ok, S, 4096, 0)));
        // E lost its pairing with A: its own id is no target now, and B,
        // in A's slot and with A's id, gets nothing of it.
        let m = |dest, seq, text: &'static str| Frame::msg(1, dest, seq, text.as_bytes()).unwrap();
        e.send(&m(1, 1, "for A"));
        assert_eq!(e.next(), Some(Frame::bare(Kind::Erro, S, 1, 1)));
        // To everyone: B's first MSG must be this one, as must C's.
        e.send(&m(0, 2, "for all"));
        assert_eq!(b.expect_msg_for(4096, "B"), m(0, 2, "for all"));
        assert_eq!(c.expect_msg_for(4097, "C"), m(0, 2, "for all"));
        assert_eq!(e.next(), Some(Frame::bare(Kind::Ok, S, 1, 2)));
        // By id, 4096 is B now.
        e.send(&m(4096, 3, "for B"));
        assert_eq!(b.expect_msg_for(4096, "B"), m(4096, 3, "for B"));
        assert_eq!(e.next(), Some(Frame::bare(Kind::Ok, S, 1, 3)));

        shutdown.trigger();
        for (client, id) in [(&mut b, 4096), (&mut c, 4097), (&mut e, 1)] {
            let flw = client.next().expect("FLW");
            assert_eq!((flw.kind, flw.dest), (Kind::Flw, id), "{flw}");
            client.send(&Frame::bare(Kind::Ok, id, S, flw.seq));
            assert_eq!(client.next(), None, "{id} not closed after FLW");
            client.stream.shutdown(std::net::Shutdown::Both).unwrap();
        }
        running.join().unwrap().unwrap();

        // The scene happened as built: A's slot was freed, then B took it,
        // both in the first poll batch of `run`.
        let log = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        let freed = lines
            .iter()
            .position(|l| l.contains(": disconnected ") && l.contains(&format!("peer={a_addr} ")))
            .unwrap_or_else(|| panic!("no disconnect line for A in {log}"));
        let taken = lines
            .iter()
            .position(|l| l.contains(": connected ") && l.contains(&format!("peer={b_addr}")))
            .unwrap_or_else(|| panic!("no connect line for B in {log}"));
        assert!(freed < taken, "{log}");
        assert!(
            lines[taken].contains(&format!("conn={a_conn} ")),
            "B did not take A's slot {a_conn}: {}",
            lines[taken]
        );
    }

    #[test]
    fn early_writes_go_once_to_each_of_the_first_few_destinations_the_rest_at_turn_end() {
        let (_serial, mut server) = loopback_server();
        let addr = server.local_addr();
        let oi = |origin| Frame::bare(Kind::Oi, origin, S, 0);
        // One exhibitor more than a turn may write early to.
        let mut exhibitors = Vec::new();
        for n in 0..=EARLY_WRITES_PER_TURN as u16 {
            let mut x = Client::connect(addr);
            x.send(&oi(0));
            assert_eq!(
                drive_until(&mut server, || x.try_next()),
                Some(Frame::bare(Kind::Ok, S, 4096 + n, 0))
            );
            exhibitors.push(x);
        }
        let mut e = Client::connect(addr);
        e.send(&oi(4096));
        assert_eq!(
            drive_until(&mut server, || e.try_next()),
            Some(Frame::bare(Kind::Ok, S, 1, 0))
        );
        let e_addr = e.stream.local_addr().unwrap();
        let (e_conn, _) = server
            .wire
            .conns
            .iter()
            .find(|(_, slot)| slot.peer == e_addr)
            .unwrap();

        // Three times the early-write size, to everyone, in one write.
        let text: &'static [u8] = &[b'x'; 90];
        let frame_len = Frame::msg(1, 0, 0, text).unwrap().encoded_len();
        let count = 3 * WRITE_EARLY_AT / frame_len;
        let mut batch = BytesMut::new();
        for seq in 1..=count as u16 {
            Frame::msg(1, 0, seq, text).unwrap().encode(&mut batch);
        }
        e.stream.write_all(&batch).unwrap();
        wait_for("the batch reaches the server", || {
            let mut peek = vec![0u8; batch.len()];
            let slot = &server.wire.conns[e_conn];
            slot.conn.socket.peek(&mut peek).unwrap_or(0) == batch.len()
        });

        // Routing it, before the turn ends: each of the first exhibitors
        // already has the frames that reached the early-write size, and no
        // more; the last one has nothing yet.
        server.now = Instant::now();
        server.service_input(e_conn, false);
        let early = WRITE_EARLY_AT.div_ceil(frame_len);
        let (last, first) = exhibitors.split_last_mut().unwrap();
        for x in first.iter_mut() {
            for seq in 1..=early as u16 {
                let frame = x.next().expect("an early MSG");
                assert_eq!((frame.kind, frame.seq), (Kind::Msg, seq), "{frame}");
            }
            assert_eq!(x.try_next(), None, "more than one early write");
        }
        assert_eq!(
            last.try_next(),
            None,
            "more early writes than a turn allows"
        );
        // The end of the turn writes the rest, in order.
        server.flush_and_reap();
        for (n, x) in exhibitors.iter_mut().enumerate() {
            let from = if n < EARLY_WRITES_PER_TURN {
                early + 1
            } else {
                1
            };
            for seq in from as u16..=count as u16 {
                let frame = x.next().expect("a MSG written at the end of the turn");
                assert_eq!((frame.kind, frame.seq), (Kind::Msg, seq), "{frame}");
            }
        }
    }
}
