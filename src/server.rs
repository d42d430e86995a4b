//! The event loop: one thread, whose [`Server`] owns a mio `Poll`, the
//! listener, every `Connection` and the `Router`. It turns readiness
//! into frames for the router and the router's decisions into bytes on
//! sockets. It never blocks: reads and writes stop at `WouldBlock`, output
//! waits in bounded per-client queues, and each readiness event does a
//! bounded amount of work so a flooding client cannot starve the others.
//! What it holds of each connection between turns is `server/wire.rs`.

pub use crate::connection::WebConfig;
use crate::connection::{Accepts, Connection, HttpOutcome, ReadStatus, Stage, TransportStatus};
use crate::proto::FrameView;
use crate::router::{CloseReason, ConnId, Router};
pub use crate::router::{Limits, MAX_ROOMS_CEILING, ROOM_IDS, RoomLimits, TellLimits, is_room_id};
use crate::store::StoreError;
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

mod access;
mod announce;
pub(crate) mod cluster;
mod handshakes;
mod history;
mod identity;
mod metrics;
mod reports;
mod room_log;
mod spin;
mod tls;
mod wire;
use crate::cluster::redis::Polled;
pub use access::{BadCidr, Cidr};
use announce::Announcer;
use cluster::Cluster;
pub use cluster::ClusterConfig;
use handshakes::Handshakes;
pub use history::HistoryConfig;
pub use identity::AuthConfig;
use identity::{Auth, ExtStep};
use metrics::Metrics;
use spin::Spin;
pub use tls::TlsConfig;
use wire::{Closing, Departure, Slot, Wire};

// Tokens above any slab key (connections take the small numbers). The
// waker's event only ends the poll: the loop checks the shutdown flag every
// turn.
const LISTENER: Token = Token(0x4000_0000);
const WAKER: Token = Token(0x4000_0001);
/// The discovery socket (`--announce`).
const DISCOVERY: Token = Token(0x4000_0002);
/// The cluster engine's own connections to Redis (`--cluster`): the one
/// it publishes on, and its subscription.
const CLUSTER_PUBLISH: Token = Token(0x4000_0003);
const CLUSTER_SUBSCRIPTION: Token = Token(0x4000_0004);
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Reads one connection gets per turn before others are served.
const READS_PER_TURN: usize = 4;
/// Pending connections the kernel may queue (it caps this at somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// How often buffers of connections with nothing pending are released.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Everything the server can be told at start.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub limits: Limits,
    /// Unsent output per connection past which it is dropped as a slow consumer.
    pub max_queue: usize,
    /// How long shutdown waits for clients to acknowledge FLW.
    pub drain_timeout: Duration,
    /// The page and WebSocket on the same port (`None`: binary only).
    pub web: Option<WebConfig>,
    /// How long the loop polls without sleeping after a turn whose input
    /// came within this long, while it works at least half the time (zero:
    /// it always sleeps; at most 10 ms). See `server/spin.rs`.
    pub spin: Duration,
    /// The durable history, opened by [`Server::bind`] (`None`: none kept).
    pub history: Option<HistoryConfig>,
    /// Accounts for the identity extension, loaded by [`Server::bind`]
    /// (`None`: no accounts; a HELLO may still claim a name).
    pub auth: Option<AuthConfig>,
    /// Addresses that may read `/metrics` and `/stats` without a token
    /// (`--metrics-allow`; the rule is `server/access.rs`).
    pub metrics_allow: Vec<Cidr>,
    /// TLS on the same port, its identity loaded by [`Server::bind`]
    /// (`None`: plain only).
    pub tls: Option<TlsConfig>,
    /// Answer LAN discovery queries on UDP, same port, with this name
    /// (`--announce`; `None`: no UDP socket at all).
    pub announce: Option<String>,
    /// Bounds of rooms and work queues (PROTOCOL.md, "Extension: rooms
    /// and queues").
    pub rooms: RoomLimits,
    /// Several nodes over one Redis (`--cluster`, CLUSTER.md; `None`: this
    /// server is the whole system).
    pub cluster: Option<ClusterConfig>,
}

impl Config {
    /// The server's defaults, listening on `addr`: the one place they are
    /// written (the server's flags take theirs from here).
    pub fn new(addr: SocketAddr) -> Config {
        Config {
            addr,
            limits: Limits::default(),
            max_queue: 4 << 20,
            drain_timeout: Duration::from_secs(3),
            web: Some(WebConfig::default()),
            spin: Duration::from_micros(100),
            history: None,
            auth: None,
            metrics_allow: Vec::new(),
            tls: None,
            announce: None,
            rooms: RoomLimits::default(),
            cluster: None,
        }
    }
}

/// Why [`Server::bind`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listening socket (or the poll around it) could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// The history could not be opened.
    #[error("history: {0}")]
    History(#[from] StoreError),
    /// The discovery socket could not be set up (`--announce`).
    #[error("--announce: cannot listen on UDP {addr}: {source}")]
    Announce { addr: SocketAddr, source: io::Error },
    /// The accounts file could not be loaded (`--auth`).
    #[error("--auth: {0}")]
    Auth(#[from] crate::auth::AccountsError),
    /// The TLS certificate or key cannot serve (`--tls-cert`, `--tls-key`).
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::IdentityError),
    /// The engine cannot be used (`--cluster`).
    #[error("--cluster: {0}")]
    Cluster(#[from] redis::RedisError),
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

/// Asks a running server to reload its accounts file (`--auth`) and its
/// TLS certificate and key (SIGHUP) from another thread.
#[derive(Clone)]
pub struct ReloadHandle {
    requested: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ReloadHandle {
    pub fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.waker.wake() {
            warn!(error = %e, "could not wake the event loop");
        }
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
    reload_requested: Arc<AtomicBool>,
    router: Router,
    wire: Wire,
    /// Held open so that, out of descriptors, a pending connection can still
    /// be accepted and closed instead of waking the loop forever.
    spare_fd: Option<File>,
    scratch: Vec<u8>,
    /// When idle connections' buffers are next released.
    next_trim: Instant,
    /// Set once shutdown has begun: the loop ends when every client is gone
    /// or at this time, whichever comes first.
    drain_deadline: Option<Instant>,
    spin: Spin,
    /// Sign-ins with accounts (`--auth`).
    auth: Option<Auth>,
    /// TLS handshakes run on worker threads (`--tls-workers`, with TLS).
    handshakes: Option<Handshakes>,
    /// When the server started, in seconds since the Unix epoch.
    start_unix: u64,
    /// What new connections may speak; its TLS identity is replaced on
    /// reload.
    accepts: Accepts,
    /// The discovery socket (`--announce`), until shutdown begins.
    announcer: Option<Announcer>,
    /// The engine bridge (`--cluster`).
    cluster: Option<Box<Cluster>>,
}

/// What the end of a loop turn decided.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Exit,
}

impl Server {
    /// Binds the listening socket, then opens the history if the config
    /// keeps one.
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let addr = config.addr;
        let accepts = Accepts {
            web: config.web.is_some(),
            tls: config.tls.as_ref().map(TlsConfig::load).transpose()?,
            plain_refused: false,
            handshake_jobs: config.tls.as_ref().is_some_and(|tls| tls.workers > 0),
        };
        let listening = |source| StartError::Listen { addr, source };
        let poll = Poll::new().map_err(listening)?;
        let mut listener = listen(config.addr).map_err(listening)?;
        let local_addr = listener.local_addr().map_err(listening)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(listening)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(listening)?);
        let now = Instant::now();
        let history = config.history.clone();
        let mut router = Router::new(config.limits);
        router.set_room_limits(config.rooms);
        let mut server = Server {
            router,
            spin: Spin::new(config.spin),
            config,
            poll,
            listener: Some(listener),
            local_addr,
            waker,
            shutdown_requested: Arc::new(AtomicBool::new(false)),
            reload_requested: Arc::new(AtomicBool::new(false)),
            wire: Wire {
                now,
                conns: Slab::new(),
                dirty: Vec::new(),
                dropped: Vec::new(),
                ready: VecDeque::new(),
                closing: Vec::new(),
                early_writes: 0,
                history: None,
                metrics: Metrics::default(),
                cluster: None,
                encoded: bytes::BytesMut::new(),
            },
            spare_fd: File::open("/dev/null").ok(),
            scratch: vec![0; READ_CHUNK],
            // Nothing to trim at start: the first trim may as well be due.
            next_trim: now,
            drain_deadline: None,
            auth: None,
            handshakes: None,
            start_unix: unix_now(),
            accepts,
            announcer: None,
            cluster: None,
        };
        if let Some(cluster) = &server.config.cluster {
            let registry = server.poll.registry().try_clone().map_err(listening)?;
            let polled = Polled {
                registry,
                publisher: CLUSTER_PUBLISH,
                subscription: CLUSTER_SUBSCRIPTION,
            };
            server.cluster = Some(Box::new(Cluster::start(
                cluster,
                server.waker.clone(),
                polled,
            )?));
            server.wire.cluster = Some(Box::default());
            server.router.enable_cluster();
        }
        if let Some(name) = &server.config.announce {
            server.announcer = Some(server.announce(name.clone())?);
        }
        if let Some(auth) = &server.config.auth {
            server.auth = Some(Auth::start(auth, server.waker.clone())?);
            server.router.require_accounts(true);
            server.hand_account_names();
        }
        if let Some(tls) = &server.config.tls
            && tls.workers > 0
        {
            let started = Handshakes::start(tls.workers, tls.queue, server.waker.clone());
            server.handshakes =
                Some(started.map_err(|source| StartError::Listen { addr, source })?);
        }
        if let Some(history) = &history {
            server.open_history(history)?;
        }
        Ok(server)
    }

    /// Binds the discovery socket on the TCP listener's address and port.
    fn announce(&self, name: String) -> Result<Announcer, StartError> {
        let addr = self.local_addr;
        let failed = |source| StartError::Announce { addr, source };
        let answer = crate::discovery::Answer {
            nonce: 0,
            port: addr.port(),
            // Set when the port speaks TLS: the clients that discover it
            // then connect with TLS.
            tls: self.config.tls.is_some(),
            accounts: self.config.auth.is_some(),
            name,
        };
        let mut announcer = Announcer::bind(addr, answer).map_err(failed)?;
        self.poll
            .registry()
            .register(&mut announcer.socket, DISCOVERY, Interest::READABLE)
            .map_err(failed)?;
        Ok(announcer)
    }

    /// Reads (a bounded number of) discovery queries and answers them.
    fn serve_discovery(&mut self) {
        let Some(announcer) = &mut self.announcer else {
            return;
        };
        let metrics = &mut self.wire.metrics;
        announcer.serve(self.wire.now, |heard| {
            metrics.discovery[heard.index()] += 1;
        });
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

    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            requested: self.reload_requested.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs until a shutdown has drained (or its drain timeout passed).
    /// Each turn: wait for readiness, dispatch it, then the end of the turn.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            self.poll(&mut events)?;
            self.dispatch(&events);
            if self.end_turn() == Next::Exit {
                return Ok(());
            }
        }
    }

    /// Waits for readiness or the next deadline, then reads the clock once
    /// for the turn. While the spin policy allows, it polls without
    /// blocking first (yielding the core between polls), and stops
    /// spinning as soon as a deadline is due.
    fn poll(&mut self, events: &mut Events) -> io::Result<()> {
        let start = Instant::now();
        // The last turn's work ended here: the clock read the spin policy
        // needs anyway times it.
        let worked = start.saturating_duration_since(self.wire.now);
        self.wire.metrics.turn(worked);
        self.spin.start(start, worked);
        let mut spun = false;
        loop {
            let mut timeout = self.poll_timeout();
            let spinning = self.spin.keeps_spinning(Instant::now, timeout);
            if spinning {
                timeout = Some(Duration::ZERO);
            }
            match self.poll.poll(events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(()) if spinning && events.is_empty() => {
                    spun = true;
                    std::thread::yield_now();
                }
                result => {
                    let now = Instant::now();
                    if spinning || spun {
                        // Spinning ended at this poll, or (when the poll
                        // that ended it blocked) where its window closed.
                        let until = if spinning { now } else { self.spin.until(now) };
                        let nanos = until.saturating_duration_since(start).as_nanos();
                        self.wire.metrics.spin_nanos += nanos as u64;
                    }
                    self.spin
                        .record(now.saturating_duration_since(start), events.is_empty());
                    self.wire.now = now;
                    return result;
                }
            }
        }
    }

    /// Serves what the poll reported: accepts, reads and routes input,
    /// notes sockets that can take more output.
    fn dispatch(&mut self, events: &Events) {
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(),
                WAKER => {}
                DISCOVERY => self.serve_discovery(),
                token @ (CLUSTER_PUBLISH | CLUSTER_SUBSCRIPTION) => self.cluster_io(token),
                Token(conn) => {
                    if event.is_writable() {
                        self.wire.mark_dirty(conn);
                    }
                    if (event.is_readable() || event.is_read_closed() || event.is_error())
                        && let Some(slot) = self.wire.conns.get_mut(conn)
                    {
                        slot.read_to_empty = false;
                    }
                    if event.is_read_closed() || event.is_error() {
                        self.service_input(conn, false);
                    } else if event.is_readable() {
                        self.service_input(conn, true);
                    }
                }
            }
        }
    }

    /// The end of every turn, whatever started it: connections with work
    /// left get a turn each, timeouts fire, a requested shutdown begins,
    /// output is written, finished connections are removed, idle buffers
    /// are trimmed on schedule, and a drained shutdown ends the loop.
    fn end_turn(&mut self) -> Next {
        let now = self.wire.now;
        if self.reload_requested.swap(false, Ordering::SeqCst) {
            if self.config.tls.is_none() || self.config.auth.is_some() {
                self.reload_accounts();
            }
            self.reload_tls();
        }
        self.end_expired_sessions();
        self.answer_held_refusals();
        // First, so that a connection a verdict (or a handshake step back)
        // lets go on is read this turn.
        self.drain_sign_ins();
        self.drain_handshakes();
        for _ in 0..self.wire.ready.len() {
            let Some(conn) = self.wire.ready.pop_front() else {
                break;
            };
            if let Some(slot) = self.wire.conns.get_mut(conn) {
                slot.ready = false;
                self.service_input(conn, false);
            }
        }
        if self.announcer.as_ref().is_some_and(|a| a.backlog) {
            self.serve_discovery();
        }
        self.router.tick(now, &mut self.wire);
        if self.cluster.is_some() {
            self.cluster_turn();
        }
        if self.drain_deadline.is_none() && self.shutdown_requested.load(Ordering::SeqCst) {
            self.drain_deadline = Some(self.begin_shutdown(now));
        }
        self.hand_off_sign_ins();
        self.settle_dropped();
        self.flush_and_reap();
        // The turn's records are written after its output went out: the
        // router holds every reply that waits for the log until told here,
        // so deliveries need not wait for the disk, and the exhibitors'
        // acks are on their way while the loop writes.
        let wire = &mut self.wire;
        if let Some(durable) = wire
            .history
            .as_mut()
            .and_then(|h| h.end_turn(&mut wire.metrics))
        {
            self.router.durable(durable, now, &mut self.wire);
            self.flush_and_reap();
        }
        if let Some(history) = self.wire.history.as_mut()
            && history.rolled()
        {
            history.checkpoint_after_roll(&self.router);
        }
        self.trim_idle_buffers();
        let Some(deadline) = self.drain_deadline else {
            return Next::Continue;
        };
        if self.wire.conns.is_empty() {
            info!("all clients gone; exiting");
            return Next::Exit;
        }
        if now >= deadline {
            warn!(
                remaining = self.wire.conns.len(),
                "drain timeout passed; exiting"
            );
            return Next::Exit;
        }
        Next::Continue
    }

    /// How long the next poll may wait: not at all while connections have
    /// work left, else until the earliest deadline. Measured from a fresh
    /// clock read, since the turn's own work took time.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.wire.ready.is_empty() || self.announcer.as_ref().is_some_and(|a| a.backlog) {
            return Some(Duration::ZERO);
        }
        [
            self.router.next_deadline(),
            self.next_linger_deadline(),
            self.drain_deadline,
            Some(self.next_trim),
            self.next_expiry(),
            self.next_held_refusal(),
            self.cluster.as_ref().and_then(|c| c.retry_at()),
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
        // A server on its way out is not offered to anyone.
        if let Some(mut announcer) = self.announcer.take() {
            let _ = self.poll.registry().deregister(&mut announcer.socket);
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
        // Linux copies TCP_NODELAY from the listener to what it accepts
        // (`listen`): one system call a connection saved.
        #[cfg(not(target_os = "linux"))]
        if let Err(e) = socket.set_nodelay(true) {
            debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let Some(unidentified) = self.admit_unidentified(peer) else {
            // Dropping the socket closes it: nothing was read or sent.
            return;
        };
        let accepts = self.accepts_from(peer);
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
            conn: Connection::new(socket, self.config.max_queue, &accepts),
            peer,
            since_unix: unix_now(),
            closing: None,
            dirty: false,
            ready: false,
            wrote_early: false,
            unidentified,
            read_to_empty: false,
        });
        self.router.connected(conn, self.wire.now);
        self.wire.metrics.connections_opened += 1;
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
            if slot.read_to_empty {
                return;
            }
            let queued = slot.conn.unsent_output();
            let status = slot.conn.read_once(&mut self.scratch);
            // A WebSocket answers pings while it reads, a TLS session its
            // handshake: output that nothing else would flush.
            if slot.conn.unsent_output() > queued {
                self.wire.mark_dirty(conn);
            }
            match status {
                Ok(ReadStatus::Data(n)) => {
                    self.wire.metrics.bytes_in += n as u64;
                    drained = short_read_drains && n < self.scratch.len();
                    if drained && let Some(slot) = self.wire.conns.get_mut(conn) {
                        slot.read_to_empty = true;
                    }
                }
                // Reading waits for the handshake step these bytes make.
                Ok(ReadStatus::Handshake(n)) => {
                    self.wire.metrics.bytes_in += n as u64;
                    self.hand_out_handshake(conn);
                    return;
                }
                Ok(ReadStatus::WouldBlock) => return,
                // Frames that came before the end are routed first (on a
                // WebSocket one read can hold both).
                Ok(ReadStatus::Closed) => {
                    self.route_buffered(conn);
                    if let Some(slot) = self.wire.conns.get(conn)
                        && let bytes @ 1.. = slot.conn.buffered_input()
                    {
                        debug!(conn, bytes, "closed mid-frame");
                    }
                    self.wire.drop_conn(conn, Departure::PeerClosed);
                    self.settle_dropped();
                    return;
                }
                Ok(ReadStatus::Failed(failure)) => {
                    self.route_buffered(conn);
                    warn!(conn, %failure, "closing");
                    self.wire.drop_conn(conn, Departure::Transport(failure));
                    self.settle_dropped();
                    return;
                }
                Ok(ReadStatus::Full) => {
                    self.route_buffered(conn);
                    warn!(conn, "slow consumer: pongs over --max-queue, disconnecting");
                    self.wire.drop_conn(conn, Departure::SlowConsumer);
                    self.settle_dropped();
                    return;
                }
                Err(e) => {
                    debug!(conn, error = %e, "read failed");
                    self.wire.drop_conn(conn, Departure::IoError);
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
        // Still sniffing, the input is at most seven capitals, shorter than
        // a frame header: the parse below waits for more, as it should.
        let stage = slot.conn.stage();
        if slot.closing.is_none() && stage == Stage::PlainRefused {
            return self.refuse_plain(conn);
        }
        if slot.closing.is_none() && stage == Stage::Http {
            if !self.serve_http(conn) {
                return false;
            }
            // A head not yet whole waits for more bytes; only an upgrade
            // leaves protocol frames in the input.
            if self.wire.conns.get(conn).map(|s| s.conn.stage()) == Some(Stage::Http) {
                return true;
            }
        }
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
                    self.wire.metrics.frames_in[frame.kind as usize] += 1;
                    debug!(conn, %frame, "received");
                    self.router
                        .on_frame_view(conn, &frame, self.wire.now, &mut self.wire);
                    self.settle_dropped();
                }
                Ok(None) => break true,
                Err(e) if crate::proto::ext::is_ext_kind(e.header().kind) => {
                    let step = self.on_extension(conn, e.header(), &input[consumed..]);
                    self.settle_dropped();
                    match step {
                        ExtStep::Took(len) => {
                            consumed += len;
                            let kind = usize::from(e.header().kind);
                            if let Some(count) = self.wire.metrics.frames_in.get_mut(kind) {
                                *count += 1;
                            }
                        }
                        ExtStep::Wait => break true,
                        ExtStep::Stop => break false,
                    }
                }
                Err(e) => {
                    self.router
                        .on_undecodable(conn, e.header(), self.wire.now, &mut self.wire);
                    self.settle_dropped();
                    break false;
                }
            }
        };
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return false;
        };
        slot.conn.return_input(input, consumed);
        let unidentified = slot.unidentified;
        if slot.closing.as_ref().is_some_and(|c| c.fin_sent) {
            self.discard_input(conn);
        }
        // Once per read, not per frame, and only until it identifies.
        if unidentified && self.router.client_id(conn).is_some() {
            self.identified(conn);
        }
        readable
    }

    /// Serves `conn`'s HTTP request once its head is whole. Returns whether
    /// protocol frames may follow (an upgrade to WebSocket).
    fn serve_http(&mut self, conn: ConnId) -> bool {
        let Some(web) = self.config.web.as_ref() else {
            return false;
        };
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return false;
        };
        let peer = slot.peer;
        let departure = match slot.conn.serve_http(web) {
            HttpOutcome::Incomplete => return true,
            HttpOutcome::Upgraded(TransportStatus::Open) => {
                info!(conn, %peer, "WebSocket opened");
                self.wire.mark_dirty(conn);
                return true;
            }
            HttpOutcome::Upgraded(TransportStatus::Closed) => Departure::PeerClosed,
            HttpOutcome::Upgraded(TransportStatus::Full) => Departure::SlowConsumer,
            HttpOutcome::Upgraded(TransportStatus::Failed(failure)) => {
                Departure::Transport(failure)
            }
            HttpOutcome::Answered {
                status,
                method,
                path,
            } => {
                info!(conn, %peer, status, method, path, "HTTP request");
                Departure::Served(status)
            }
            HttpOutcome::Report {
                report,
                authorization,
                path,
            } => {
                // The time the loop spends on it (BENCHMARKS.md measures it
                // with 8,000 clients).
                let start = Instant::now();
                let status = self.serve_report(conn, report, authorization.as_ref());
                let micros = start.elapsed().as_micros() as u64;
                info!(conn, %peer, status, method = "GET", path, micros, "HTTP request");
                Departure::Served(status)
            }
            HttpOutcome::Refused(error) => {
                warn!(conn, %peer, %error, "HTTP request refused");
                Departure::BadRequest(error)
            }
        };
        self.wire.drop_conn(conn, departure);
        self.settle_dropped();
        false
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
            self.router
                .disconnected(conn, self.wire.now, &mut self.wire);
        }
    }

    /// A flush phase, at the end of the turn (and a second one when the
    /// history settles records): writes what each connection has queued,
    /// and removes the connections that are closing and done.
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
        let queued = slot.conn.queued_output();
        let written = match &slot.closing {
            _ if discard => Ok(true),
            // The FIN follows in `finish_close`: it can ride on the last bytes.
            Some(_) => slot.conn.flush_before_fin(),
            None => slot.conn.flush(),
        };
        if !discard {
            self.wire.metrics.bytes_out += (queued - slot.conn.queued_output()) as u64;
        }
        match written {
            Ok(true) if slot.closing.is_some() => self.finish_close(conn),
            Ok(true) => self.set_write_interest(conn, false),
            Ok(false) => self.set_write_interest(conn, true),
            Err(e) => {
                debug!(conn, error = %e, "write failed");
                self.wire.drop_conn(conn, Departure::IoError);
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
            if slot.read_to_empty {
                return;
            }
            // The bytes stay in the scratch buffer, which the next read
            // overwrites.
            match slot.conn.read_socket(&mut self.scratch) {
                Ok(ReadStatus::Data(_) | ReadStatus::Handshake(_)) => {}
                Ok(ReadStatus::WouldBlock) => {
                    slot.read_to_empty = true;
                    return;
                }
                Ok(ReadStatus::Closed | ReadStatus::Failed(_) | ReadStatus::Full) | Err(_) => {
                    self.remove(conn);
                    return;
                }
            }
        }
        self.wire.mark_ready(conn);
    }

    /// Every [`TRIM_INTERVAL`], frees the buffers that connections with
    /// nothing pending still hold from earlier traffic: an idle connection
    /// costs no buffer memory.
    fn trim_idle_buffers(&mut self) {
        let now = self.wire.now;
        if now < self.next_trim {
            return;
        }
        self.next_trim = now + TRIM_INTERVAL;
        // On the same schedule: sources whose failure window has passed.
        if let Some(auth) = self.auth.as_mut() {
            auth.forget_expired_failures(now);
        }
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
        let now = self.wire.now;
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
                self.wire.drop_conn(conn, Departure::IoError);
            }
        }
    }

    fn remove(&mut self, conn: ConnId) {
        if !self.wire.conns.contains(conn) {
            return;
        }
        self.forget_sign_in(conn);
        self.forget_handshake(conn);
        if self.wire.conns.get(conn).is_some_and(|s| s.unidentified) {
            self.identified(conn);
        }
        // No deregister: closing the socket (its only descriptor) when
        // `slot` drops takes it out of the epoll set, one system call less.
        let slot = self.wire.conns.remove(conn);
        self.wire
            .metrics
            .closed(slot.closing.as_ref().map(|c| &c.reason));
        let transport = TransportName(slot.conn.stage(), slot.conn.encrypted());
        match slot.closing {
            // An HTTP connection the handshake timeout closed never sent a
            // whole request head.
            Some(Closing {
                reason: Departure::Rule(CloseReason::HandshakeTimeout),
                ..
            }) if transport.0 == Stage::Http => info!(
                conn,
                peer = %slot.peer,
                %transport,
                reason = "HTTP request head not complete within the handshake timeout",
                "disconnected"
            ),
            Some(Closing { reason, id: 0, .. }) => {
                info!(conn, peer = %slot.peer, %transport, %reason, "disconnected")
            }
            Some(Closing { reason, id, .. }) => {
                info!(conn, id, peer = %slot.peer, %transport, %reason, "disconnected")
            }
            None => info!(conn, peer = %slot.peer, %transport, "disconnected"),
        }
    }
}

/// A connection's transport as the log names it: `tls+` before it when
/// encrypted.
struct TransportName(Stage, bool);

impl std::fmt::Display for TransportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.1 {
            f.write_str("tls+")?;
        }
        self.0.fmt(f)
    }
}

/// The listening socket, with a backlog deep enough for a burst of
/// connections (the std/mio default of 128 overflows when hundreds of
/// clients connect at once, and the kernel then makes them retry after 1 s).
/// TCP_NODELAY is set here: accepted sockets inherit it on Linux.
///
/// So is delayed-ACK ("pingpong") mode, on Linux: a new connection would
/// otherwise ACK its first request (a HELLO, OI, ClientHello or GET) at once
/// in a segment of its own, microseconds before the reply that could carry
/// the ACK; the kernel itself switches to delayed ACKs after the first reply.
/// A reply slower than the delayed-ACK timer (40 ms; an argon2 HELLO) gets
/// its pure ACK then, as before, well inside the peer's 200 ms minimum RTO
/// (a peer with a second request in flight behind it may send a tail-loss
/// probe first, which is ACKed at once: as many segments as before).
/// `listen` clears the mode, so it is set after it.
fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // Only a saving: a kernel that refuses it costs a segment, not the port.
    #[cfg(target_os = "linux")]
    let _ = socket.set_tcp_quickack(false);
    socket.set_nonblocking(true)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod tests;
