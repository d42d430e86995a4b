//! Opening and identifying connections before the clock starts.
//!
//! Handshakes are done one connection at a time on blocking sockets (a
//! round trip each; 1,000 subscribers take a fraction of a second), then each
//! socket turns non-blocking and moves to the mio loop with whatever bytes
//! followed its handshake reply. Subscribers go first, so that nothing a
//! publisher sends can miss them. On a `*-ws` target the WebSocket upgrade
//! comes first and the protocol's handshake runs inside it.

use crate::conn::{Conn, Role, Session};
use crate::tls::TlsStream;
use crate::ws::{self, Masker, WsConn, WsStream};
use crate::{Args, Mode, Target, evchat, mqtt, nats, raw, redis, streams};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a server may take to start listening, and a handshake to finish.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The workload, as the command line gave it.
#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub addr: SocketAddr,
    /// Where the subscribers connect: `addr`, or another node of the same
    /// evchat cluster (`--exhibitor-addr`), so every delivery crosses nodes.
    pub exhibitor_addr: SocketAddr,
    pub mode: Mode,
    pub emitters: usize,
    pub exhibitors: usize,
    pub size: usize,
    pub sign_in: Option<evchat::SignIn>,
    /// Queue mode: each member's prefetch (1: the JOIN carries none).
    pub prefetch: u8,
}

impl Plan {
    pub fn new(target: Target, addr: SocketAddr, args: &Args) -> Plan {
        Plan {
            target,
            addr,
            exhibitor_addr: args.exhibitor_addr.unwrap_or(addr),
            mode: args.mode,
            emitters: args.emitters,
            exhibitors: args.exhibitors,
            size: args.size,
            sign_in: args.sign_in.clone(),
            prefetch: args.prefetch,
        }
    }

    /// Subscribers each publisher's message reaches.
    pub fn fanout(&self) -> u32 {
        match self.mode {
            Mode::Unicast | Mode::Queue => 1,
            Mode::Broadcast | Mode::Room => self.exhibitors as u32,
        }
    }

    /// Channel / subject / topic of pair `i` (or the one broadcast channel).
    fn channel(&self, i: usize) -> String {
        match self.mode {
            Mode::Unicast => format!("u{i}"),
            Mode::Broadcast | Mode::Room => "b".to_owned(),
            // NATS: subject `q`, queue group `relay` (SUB q relay 1).
            Mode::Queue => "q relay".to_owned(),
        }
    }
}

/// Connects, retrying while the server is still coming up.
pub fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        match TcpStream::connect(addr) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                stream
                    .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
                    .map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("cannot connect to {addr}: {e}")),
        }
    }
}

/// Reads until `done` recognises a complete reply at the start of `buf`;
/// returns its length. Bytes after it stay in `buf`.
pub fn read_until(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    mut done: impl FnMut(&[u8]) -> Result<Option<usize>, String>,
) -> Result<usize, String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(n) = done(buf)? {
            return Ok(n);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("server closed the connection during the handshake".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("handshake: {e}")),
        }
    }
}

/// A connection during its handshakes: plain TCP, WebSocket over it, or TLS.
pub enum Link {
    Tcp(TcpStream),
    Ws(WsStream),
    Tls(Box<TlsStream>),
}

/// WebSocket upgrades requested at once before their answers are read.
const UPGRADE_BATCH: usize = 128;

/// Opens a plan's connections one after the other. Plain TCP connects when
/// asked; WebSocket connections are upgraded in batches (see
/// [`ws::request_upgrade`]), so a server that takes upgrades only now and
/// then costs one wait per batch instead of one per connection.
pub struct Opener {
    target: Target,
    addr: SocketAddr,
    /// Connections not yet opened, and those opened and not yet handed out.
    remaining: usize,
    ready: VecDeque<Link>,
    opened: usize,
}

impl Opener {
    pub fn new(target: Target, addr: SocketAddr, total: usize) -> Opener {
        Opener {
            target,
            addr,
            remaining: total,
            ready: VecDeque::new(),
            opened: 0,
        }
    }

    /// The next connection, upgraded to WebSocket on a `*-ws` target.
    pub fn next_link(&mut self) -> Result<Link, String> {
        if self.target.tls() {
            let mut sock = connect(self.addr)?;
            // nats-server 2.9 speaks first, in clear; the handshake follows.
            let mut clear = Vec::new();
            if self.target == Target::NatsTls {
                read_until(&mut sock, &mut clear, |b| {
                    Ok(b.windows(2).position(|w| w == b"\r\n").map(|at| at + 2))
                })?;
            }
            return Ok(Link::Tls(Box::new(TlsStream::handshake(sock, clear)?)));
        }
        let Some(endpoint) = self.target.websocket() else {
            return Ok(Link::Tcp(connect(self.addr)?));
        };
        if self.ready.is_empty() {
            let n = self.remaining.clamp(1, UPGRADE_BATCH);
            self.remaining = self.remaining.saturating_sub(n);
            let mut requested = Vec::with_capacity(n);
            for _ in 0..n {
                requested.push(ws::request_upgrade(
                    connect(self.addr)?,
                    self.addr,
                    endpoint,
                )?);
            }
            for upgrading in requested {
                self.ready
                    .push_back(Link::Ws(upgrading.finish(seed(self.opened))?));
                self.opened += 1;
            }
        }
        Ok(self.ready.pop_front().expect("a batch was just opened"))
    }
}

/// A different start for each connection's masking keys.
fn seed(k: usize) -> u32 {
    (k as u32).wrapping_mul(0x9e37_79b9) ^ std::process::id()
}

impl Link {
    /// Hands a handshaken connection to mio; `leftover` is what its
    /// handshake read past the reply.
    pub fn into_conn(self, leftover: Vec<u8>, session: Session) -> Result<Conn, String> {
        let (stream, pending, ws, tls) = match self {
            Link::Tcp(tcp) => (tcp, leftover, WsConn::new(Masker::new(0)), None),
            Link::Ws(ws) => {
                let (stream, pending, ws) = ws.into_parts(leftover);
                (stream, pending, ws, None)
            }
            Link::Tls(tls) => {
                let (stream, session, _) = tls.into_parts();
                let plain = WsConn::new(Masker::new(0));
                (stream, leftover, plain, Some(session))
            }
        };
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Conn::new(
            mio::net::TcpStream::from_std(stream),
            pending,
            session,
            ws,
            tls,
        ))
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Link::Tcp(s) => s.read(buf),
            Link::Ws(s) => s.read(buf),
            Link::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Link::Tcp(s) => s.write(buf),
            Link::Ws(s) => s.write(buf),
            Link::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Link::Tcp(s) => s.flush(),
            Link::Ws(s) => s.flush(),
            Link::Tls(s) => s.flush(),
        }
    }
}

/// An emitter's OI on one node naming an exhibitor on another: that node
/// learns of the exhibitor's id a moment after its OK, and until then the
/// OI is refused and the connection closed, so it is tried again on a new
/// connection (`stream` is replaced), for as long as a handshake may take.
fn identify_across(stream: &mut Link, plan: &Plan, origin: u16) -> Result<(u16, Vec<u8>), String> {
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        match evchat::identify(stream, origin, plan.sign_in.as_ref()) {
            Ok(done) => return Ok(done),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                *stream = Link::Tcp(connect(plan.addr)?);
            }
        }
    }
}

/// Opens every connection of the plan: subscribers `0..M`, then publishers.
pub fn connect_all(plan: &Plan) -> Result<Vec<Conn>, String> {
    let mut conns = Vec::with_capacity(plan.exhibitors + plan.emitters);
    let mut exhibitor_ids = Vec::with_capacity(plan.exhibitors);
    let target = plan.target.plain();
    let in_room = matches!(plan.mode, Mode::Room | Mode::Queue) && target == Target::Evchat;
    let mut opener = Opener::new(plan.target, plan.exhibitor_addr, plan.exhibitors);
    let mut room = 0;
    for i in 0..plan.exhibitors {
        let mut stream = opener.next_link()?;
        let mut session = Session::new(Role::Sub);
        let leftover = match target {
            Target::Evchat if in_room => {
                let name = format!("relay{i}");
                let (id, rest) = evchat::identify_named(&mut stream, &name)?;
                session.own_id = id;
                exhibitor_ids.push(id);
                rest
            }
            Target::Evchat => {
                let (id, rest) = evchat::identify(&mut stream, 0, plan.sign_in.as_ref())?;
                session.own_id = id;
                exhibitor_ids.push(id);
                rest
            }
            Target::Redis => redis::subscribe(&mut stream, &plan.channel(i))?,
            Target::RedisStreams => streams::consume(&mut stream, &plan.channel(i), &mut session)?,
            Target::Nats | Target::NatsVerbose | Target::JetStream => {
                nats::connect(&mut stream, false, Some(&plan.channel(i)))?
            }
            Target::Mqtt0 | Target::Mqtt1 => {
                let qos = u8::from(target == Target::Mqtt1);
                mqtt::connect(&mut stream, &format!("relay-s{i}-{}", std::process::id()))?;
                mqtt::subscribe(&mut stream, &plan.channel(i), qos)?
            }
            Target::Raw => {
                session.frame = plan.size;
                raw::hello(&mut stream, raw::SUBSCRIBER, plan.size)?
            }
            t => unreachable!("{t:?} is not a plain target"),
        };
        conns.push(stream.into_conn(leftover, session)?);
    }
    // The members' joining emitters (kept open for the run) come after all
    // the members, as a broadcast's publishers come after its subscribers:
    // opened between them, each idle emitter sat between two members in
    // the server's memory, and a room of 100 spent about 8 ns a delivery
    // more than the broadcast on that layout alone (BENCHMARKS.md, "Ninth
    // round").
    // A member joins through its own node: with `--exhibitor-addr` the
    // exhibitors are on another node than the emitters, and the room's
    // membership reaches the emitters' node over the cluster.
    if in_room {
        let queue = (plan.mode == Mode::Queue).then_some(plan.prefetch);
        for &id in &exhibitor_ids {
            room = evchat::join_room(plan.exhibitor_addr, id, queue)?;
        }
    }
    let mut opener = Opener::new(plan.target, plan.addr, plan.emitters);
    for i in 0..plan.emitters {
        let mut stream = opener.next_link()?;
        let mut session = Session::new(Role::Pub(i));
        let channel = plan.channel(i);
        let leftover = match target {
            Target::Evchat => {
                let (origin, dest) = match (plan.mode, exhibitor_ids.get(i)) {
                    (Mode::Unicast, Some(&id)) => (id, id),
                    (Mode::Unicast, None) => return Err(format!("no exhibitor for emitter {i}")),
                    (Mode::Broadcast, _) => (1, 0),
                    (Mode::Room | Mode::Queue, _) => (1, room),
                };
                let (id, rest) = if plan.exhibitor_addr == plan.addr {
                    evchat::identify(&mut stream, origin, plan.sign_in.as_ref())?
                } else {
                    identify_across(&mut stream, plan, origin)?
                };
                session.own_id = id;
                session.dest = dest;
                rest
            }
            Target::Redis => {
                session.prefix = redis::publish_prefix(&channel, plan.size);
                Vec::new()
            }
            Target::RedisStreams => {
                session.prefix = streams::xadd_prefix(&channel, plan.size);
                Vec::new()
            }
            Target::Nats | Target::NatsVerbose => {
                session.prefix = nats::publish_prefix(&channel, plan.size);
                nats::connect(&mut stream, target == Target::NatsVerbose, None)?
            }
            Target::JetStream => {
                let inbox = format!("_INBOX.relay.p{i}");
                session.prefix = nats::publish_prefix_acked(&channel, &inbox, plan.size);
                let rest = nats::connect(&mut stream, false, Some(&inbox))?;
                // One stream per subject: each pair's, or the one broadcast subject.
                if plan.mode == Mode::Unicast || i == 0 {
                    let name = format!("relay_{channel}");
                    nats::create_stream(&mut stream, &name, &channel, &inbox, rest)?
                } else {
                    rest
                }
            }
            Target::Mqtt0 | Target::Mqtt1 => {
                let qos = u8::from(target == Target::Mqtt1);
                session.prefix = mqtt::publish_prefix(&channel, qos, plan.size);
                mqtt::connect(&mut stream, &format!("relay-p{i}-{}", std::process::id()))?
            }
            Target::Raw => raw::hello(&mut stream, raw::PUBLISHER, plan.size)?,
            t => unreachable!("{t:?} is not a plain target"),
        };
        conns.push(stream.into_conn(leftover, session)?);
    }
    Ok(conns)
}
