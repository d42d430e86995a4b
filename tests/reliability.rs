//! The reliability suite: what the real `server` binary does when clients
//! are hostile, broken, slow or simply many. Each test is one item of
//! RELIABILITY.md; it asserts the item's pass criterion and prints one
//! `reliability[N]: ...` line with the figure it measured (visible with
//! `cargo test --test tests reliability -- --nocapture`).
//!
//! Timing is never a pass criterion except as a loose upper bound: every
//! wait is a read with a deadline, and where the only thing to wait for is a
//! state the server reaches on its own (its descriptor count, the bytes it
//! has not read yet) the state is polled from /proc, again with a deadline.
//! The few sleeps are traffic shaping (a slowloris's pace, a steady
//! sender's rate), never synchronisation.

use crate::util::*;
use bytes::BytesMut;
use evchat::proto::*;
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, Router};
use proptest::prelude::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The server's id, short.
const S: ClientId = SERVER_ID;

// ---- a client connection that never panics on its own -----------------------------

/// What a bounded read found.
#[derive(Debug)]
enum Got {
    Frame(Frame),
    /// The server closed the connection (EOF or reset).
    Closed,
    /// Nothing within the wait.
    Quiet,
}

/// A raw client connection. Unlike `util::Raw`, reads report a close or a
/// timeout instead of failing the test, so it can run in helper threads and
/// face a server that is entitled to hang up.
struct Peer {
    stream: TcpStream,
    buf: BytesMut,
}

impl Peer {
    fn connect(addr: SocketAddr) -> Peer {
        Peer::wrap(TcpStream::connect(addr).expect("connect"))
    }

    fn wrap(stream: TcpStream) -> Peer {
        stream.set_nodelay(true).unwrap();
        Peer {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Writes `bytes`; false if the connection is gone.
    fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// The next frame within `wait`, or why there is none.
    fn next(&mut self, wait: Duration) -> Got {
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            if let Some(frame) = Frame::decode(&mut self.buf).expect("the server sends known types")
            {
                return Got::Frame(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Quiet;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::TimedOut => return Got::Quiet,
                    ErrorKind::Interrupted => {}
                    ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe => return Got::Closed,
                    _ => panic!("read: {e}"),
                },
            }
        }
    }

    fn expect(&mut self) -> Frame {
        match self.next(TIMEOUT) {
            Got::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame must be exactly `want` (as bytes).
    fn expect_bytes(&mut self, want: &[u8]) {
        let got = self.expect().to_bytes();
        assert_eq!(&got[..], want, "unexpected frame");
    }

    fn expect_closed(&mut self) {
        match self.next(TIMEOUT) {
            Got::Closed => {}
            other => panic!("expected the server to close, got {other:?}"),
        }
    }

    /// OI with `origin`; the id from the OK.
    fn identify(&mut self, origin: ClientId) -> ClientId {
        assert!(self.send(&hdr(Kind::Oi, origin, S, 0)), "OI not sent");
        let ok = self.expect();
        assert_eq!((ok.kind, ok.origin, ok.seq), (Kind::Ok, S, 0), "{ok}");
        ok.dest
    }

    fn ack(&mut self, id: ClientId, to: ClientId, seq: u16) -> bool {
        self.send(&hdr(Kind::Ok, id, to, seq))
    }
}

fn exhibitor(addr: SocketAddr) -> (Peer, ClientId) {
    let mut peer = Peer::connect(addr);
    let id = peer.identify(0);
    assert!(is_exhibitor_id(id), "exhibitor got {id}");
    (peer, id)
}

/// An emitter; `origin` 1 for unpaired, or the exhibitor to pair with.
fn emitter(addr: SocketAddr, origin: ClientId) -> (Peer, ClientId) {
    let mut peer = Peer::connect(addr);
    let id = peer.identify(origin);
    assert!(is_emitter_id(id), "emitter got {id}");
    (peer, id)
}

/// What an acknowledging exhibitor thread saw.
#[derive(Debug, Default)]
struct Shown {
    msgs: u64,
    /// The server's FLW arrived (and was acknowledged).
    flw: bool,
    /// The connection ended (rather than the thread being stopped).
    closed: bool,
}

/// An exhibitor in a thread: every MSG goes through `check` and is
/// acknowledged, as is every CLIST; the server's FLW is answered with OK. It
/// returns when the server closes the connection or `stop` is set.
fn spawn_exhibitor(
    mut peer: Peer,
    id: ClientId,
    stop: Arc<AtomicBool>,
    mut check: impl FnMut(&Frame) + Send + 'static,
) -> JoinHandle<Shown> {
    thread::spawn(move || {
        let mut shown = Shown::default();
        while !stop.load(Ordering::Relaxed) {
            match peer.next(Duration::from_millis(50)) {
                Got::Quiet => {}
                Got::Closed => {
                    shown.closed = true;
                    break;
                }
                Got::Frame(f) => match f.kind {
                    Kind::Msg => {
                        check(&f);
                        shown.msgs += 1;
                        peer.ack(id, f.origin, f.seq);
                    }
                    Kind::Clist => {
                        peer.ack(id, f.origin, f.seq);
                    }
                    Kind::Flw => {
                        shown.flw = true;
                        peer.ack(id, S, f.seq);
                    }
                    // The server's answer to this exhibitor's own FLW.
                    Kind::Ok | Kind::Erro if f.origin == S => {}
                    _ => panic!("exhibitor {id}: unexpected {f}"),
                },
            }
        }
        shown
    })
}

// ---- sockets and processes, low level ---------------------------------------------

/// Closes `stream` with a reset instead of a FIN (SO_LINGER 0).
fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads one `linger` from a live local.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&stream),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
    drop(stream);
}

/// Raises this process's open-file soft limit to its hard limit; returns it.
fn raise_nofile() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit),
                0,
                "setrlimit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    limit.rlim_cur
}

/// A field of /proc/PID/status, in KiB (VmRSS, VmHWM).
fn status_kib(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn rss_kib(pid: i32) -> u64 {
    status_kib(pid, "VmRSS")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Open descriptors of a process.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .count()
}

/// Open descriptors of a process numbered below `limit`: those that count
/// against an open-file limit of `limit` (a process may have inherited
/// higher-numbered ones, such as a build tool's pipes).
fn fds_below(pid: i32, limit: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
        .filter(|&fd| fd < limit)
        .count()
}

/// User plus system CPU time a process has used (/proc/PID/stat).
fn cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the parenthesised command name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// The system calls in which a thread waits on an epoll set: any of them
/// may be what mio's `Poll::poll` makes, by architecture and libc.
const EPOLL_WAITS: &[libc::c_long] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
];

/// Whether the server's loop (its main thread) is asleep in the poll:
/// blocked (state S) inside an epoll wait, by /proc/PID/task/PID/stat and
/// /syscall (which names the call a blocked thread is in). A loop that
/// spins never is, however the scheduler treats it.
fn loop_asleep_in_poll(pid: i32) -> bool {
    let task = format!("/proc/{pid}/task/{pid}");
    let stat = std::fs::read_to_string(format!("{task}/stat")).expect("/proc task stat");
    let state = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next();
    let syscall = std::fs::read_to_string(format!("{task}/syscall")).expect("/proc syscall");
    // "running" while it runs, else the call's number and arguments.
    let call = syscall
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok());
    state == Some("S") && call.is_some_and(|n| EPOLL_WAITS.contains(&n))
}

/// Bytes on their way to the server on `port` that it has not read yet: the
/// receive queues of its sockets plus the send queues of the clients'
/// (/proc/net/tcp, both address families).
fn unread_by_server(port: u16) -> usize {
    let mut total = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 || f[3] == "0A" {
                continue; // short line, or a listening socket
            }
            let port_of = |addr: &str| {
                addr.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            let mut queues = f[4]
                .split(':')
                .map(|v| usize::from_str_radix(v, 16).unwrap_or(0));
            let (tx, rx) = (queues.next().unwrap_or(0), queues.next().unwrap_or(0));
            if port_of(f[1]) == Some(port) {
                total += rx;
            } else if port_of(f[2]) == Some(port) {
                total += tx;
            }
        }
    }
    total
}

// ---- 1. length fields ---------------------------------------------------------------

#[test]
fn length_fields_at_limits_and_mismatched() {
    let server = Server::start(&["--ack-timeout", "5", "--handshake-timeout", "1"]);
    let addr = server.addr;

    // Anonymous connections whose first frame never completes: nothing to
    // answer, so they are closed at the handshake timeout, silently.
    let mut long_clist = hdr(Kind::Clist, 0, S, 3);
    long_clist.extend_from_slice(&[0xff, 0xff]);
    let mut long_msg = hdr(Kind::Msg, 0, S, 1);
    long_msg.extend_from_slice(&[0xff, 0xff]);
    long_msg.extend_from_slice(&[b'a'; 100]);
    let stalled: Vec<(&str, Vec<u8>)> = vec![
        ("MSG C=65535 then 100 bytes", long_msg),
        ("MSG header then silence", hdr(Kind::Msg, 0, S, 2)),
        ("CLIST N=65535 then silence", long_clist),
        ("7 bytes of OI", hdr(Kind::Oi, 0, S, 0)[..7].to_vec()),
    ];
    let started = Instant::now();
    let mut anonymous: Vec<(&str, Peer)> = stalled
        .iter()
        .map(|(what, bytes)| {
            let mut peer = Peer::connect(addr);
            assert!(peer.send(bytes));
            (*what, peer)
        })
        .collect();

    // Garbage (unknown type) before OI: ERRO with the header's seq, then close.
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..8 {
        let mut garbage = rng.bytes(64);
        garbage[0] = 0x80; // type >= 0x8000: never a known type
        let seq = u16::from_be_bytes([garbage[6], garbage[7]]);
        let mut peer = Peer::connect(addr);
        assert!(peer.send(&garbage));
        peer.expect_bytes(&hdr(Kind::Erro, S, 0, seq));
        peer.expect_closed();
    }

    // Identified: C = 0 and C = 65535 are framed exactly.
    let (mut ex, ex_id) = exhibitor(addr);
    let (mut em, em_id) = emitter(addr, ex_id);
    let mut seq = 0;
    for text in [Vec::new(), vec![b'z'; MAX_TEXT_LEN]] {
        seq += 1;
        let m = msg(em_id, em_id, seq, &text);
        assert!(em.send(&m));
        ex.expect_bytes(&m);
        ex.ack(ex_id, em_id, seq);
        em.expect_bytes(&hdr(Kind::Ok, S, em_id, seq));
    }

    // C larger than what follows: the server waits for the rest, forwards
    // nothing meanwhile and keeps the connection; the rest completes it.
    seq += 1;
    let m = msg(em_id, 0, seq, &[b'p'; 1000]);
    assert!(em.send(&m[..500]));
    assert!(matches!(ex.next(QUIET), Got::Quiet));
    assert!(matches!(em.next(QUIET), Got::Quiet));
    assert!(em.send(&m[500..]));
    ex.expect_bytes(&m);
    ex.ack(ex_id, em_id, seq);
    em.expect_bytes(&hdr(Kind::Ok, S, em_id, seq));

    // CLIST with N = 65535, all 131,080 bytes, from an identified client:
    // ERRO and close once the frame is whole; nobody else sees anything.
    let (mut bad, bad_id) = emitter(addr, 1);
    let big = clist(bad_id, 0, 9, &[0x1234; 65535]);
    assert_eq!(big.len(), MAX_FRAME_LEN);
    assert!(bad.send(&big));
    bad.expect_bytes(&hdr(Kind::Erro, S, bad_id, 9));
    bad.expect_closed();

    for (what, peer) in &mut anonymous {
        match peer.next(TIMEOUT) {
            Got::Closed => {}
            other => panic!("{what}: expected a silent close, got {other:?}"),
        }
    }
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_secs(1),
        "closed before the handshake timeout"
    );
    // The identified pair outlived the handshake timeout and still works.
    seq += 1;
    let m = msg(em_id, ex_id, seq, b"still here");
    assert!(em.send(&m));
    ex.expect_bytes(&m);
    ex.ack(ex_id, em_id, seq);
    em.expect_bytes(&hdr(Kind::Ok, S, em_id, seq));
    assert!(matches!(ex.next(QUIET), Got::Quiet));
    println!(
        "reliability[1]: C=0 and C=65535 relayed exactly; CLIST N=65535 (131,080 B) -> ERRO+close; \
         8 garbage -> ERRO+close; 4 stalled anonymous frames closed silently after {:.2} s \
         (handshake timeout 1 s)",
        closed_after.as_secs_f64()
    );
}

#[test]
fn partial_frames_hold_bounded_memory() {
    const CONNS: usize = 200;
    let server = Server::start(&["--ack-timeout", "5", "--handshake-timeout", "1", "-q"]);
    let (addr, pid) = (server.addr, server.proc.pid());
    // Identified first, so that per-connection bookkeeping is in the baseline.
    let mut emitters: Vec<(Peer, ClientId)> = (0..CONNS).map(|_| emitter(addr, 1)).collect();
    wait_until("server reads the OIs", || {
        unread_by_server(addr.port()) == 0
    });
    let before = rss_kib(pid);

    // Each sends all but the last byte of the largest frame there is (a
    // CLIST with N = 65535) and goes silent.
    for (peer, id) in &mut emitters {
        let frame = clist(*id, 0, 1, &[7; 65535]);
        assert!(peer.send(&frame[..frame.len() - 1]));
    }
    wait_until("server reads every partial frame", || {
        unread_by_server(addr.port()) == 0
    });
    let held = rss_kib(pid);
    let peak = status_kib(pid, "VmHWM");
    let per_conn = (held.saturating_sub(before) * 1024) as f64 / CONNS as f64;
    // The bound: one maximal frame (131,080 bytes) per connection, plus
    // allocator slack.
    assert!(
        per_conn <= (MAX_FRAME_LEN + 32 * 1024) as f64,
        "{per_conn:.0} bytes per connection holding a partial frame"
    );

    // The connections outlived the handshake timeout (identified clients
    // have none) and their streams are intact: the last byte completes each
    // CLIST, which a client may not send: ERRO and close.
    for (peer, id) in &mut emitters {
        assert!(peer.send(&[7]));
        peer.expect_bytes(&hdr(Kind::Erro, S, *id, 1));
    }
    for (peer, _) in &mut emitters {
        peer.expect_closed();
    }
    let after = rss_kib(pid);
    println!(
        "reliability[1]: {CONNS} identified emitters each holding a 131,079-byte partial frame: \
         server RSS {:.1} -> {:.1} MB = {:.0} KB per connection (bound {} B + 32 KiB); \
         VmHWM {:.1} MB; {:.1} MB after the frames completed and the connections closed",
        mib(before),
        mib(held),
        per_conn / 1000.0,
        MAX_FRAME_LEN,
        mib(peak),
        mib(after)
    );
}

// ---- 2. garbage beside good traffic -----------------------------------------------

#[derive(Default)]
struct GarbageStats {
    connections: AtomicU64,
    erro: AtomicU64,
    closed: AtomicU64,
}

/// One garbage sender: connects again and again until `stop`, each time
/// sending a kind of rubbish (by `kind`) until the server hangs up.
fn garbage_sender(
    addr: SocketAddr,
    kind: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
    stats: Arc<GarbageStats>,
) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let mut peer = Peer::connect(addr);
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let mut first = match kind {
            // Random bytes from the first byte on (an unknown type first).
            0 => {
                let mut bytes = rng.chunk(600);
                bytes[0] |= 0x80;
                bytes
            }
            // Identified first, then random bytes.
            1 => {
                peer.identify(1);
                rng.chunk(600)
            }
            2 => {
                peer.identify(0);
                rng.chunk(600)
            }
            // A MSG announcing 65535 bytes, then a trickle of random ones:
            // the frame never completes; the handshake timeout ends it.
            3 => {
                let mut bytes = hdr(Kind::Msg, 0, 0, 0);
                bytes.extend_from_slice(&[0xff, 0xff]);
                bytes
            }
            // Three bytes, a moment's wait (nothing comes), hang up.
            _ => {
                peer.send(&rng.bytes(3));
                assert!(matches!(peer.next(Duration::from_millis(20)), Got::Quiet));
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) || !peer.send(&first) {
                break;
            }
            match peer.next(Duration::from_millis(20)) {
                Got::Frame(f) if f.kind == Kind::Erro => {
                    stats.erro.fetch_add(1, Ordering::Relaxed);
                }
                Got::Frame(f) => panic!("garbage sender got {f}"),
                Got::Closed => {
                    stats.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Got::Quiet => {}
            }
            first = rng.chunk(64);
        }
    }
}

#[test]
fn garbage_senders_beside_good_traffic() {
    const PAIRS: usize = 20;
    const MESSAGES: u16 = 100;
    const GARBAGE: usize = 50;
    let server = Server::start(&["--ack-timeout", "10", "--handshake-timeout", "1", "-q"]);
    let addr = server.addr;
    let pairs: Vec<((Peer, ClientId), (Peer, ClientId))> = (0..PAIRS)
        .map(|_| {
            let ex = exhibitor(addr);
            let em = emitter(addr, ex.1);
            (ex, em)
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(GarbageStats::default());
    let garbage: Vec<JoinHandle<()>> = (0..GARBAGE)
        .map(|i| {
            let (stop, stats) = (stop.clone(), stats.clone());
            thread::spawn(move || garbage_sender(addr, i % 5, 0x9e37 + i as u64, stop, stats))
        })
        .collect();
    wait_until("garbage flows", || {
        stats.connections.load(Ordering::Relaxed) >= 2 * GARBAGE as u64
    });

    // Each pair: the emitter pipelines its messages in bursts of ten; the
    // exhibitor must get exactly them, in order, byte for byte.
    let started = Instant::now();
    let workers: Vec<JoinHandle<(u64, u64)>> = pairs
        .into_iter()
        .map(|((mut ex, ex_id), (mut em, em_id))| {
            let texts: Vec<Vec<u8>> = (1..=MESSAGES)
                .map(|seq| {
                    let dest = if seq % 2 == 0 { ex_id } else { em_id };
                    msg(
                        em_id,
                        dest,
                        seq,
                        format!("good {em_id}->{ex_id} #{seq}").as_bytes(),
                    )
                })
                .collect();
            let expected = texts.clone();
            let shown = thread::spawn(move || {
                for m in &expected {
                    ex.expect_bytes(m);
                    let h = Header::peek(m).unwrap();
                    ex.ack(ex_id, h.origin, h.seq);
                }
                assert!(matches!(ex.next(QUIET), Got::Quiet), "an extra frame");
                expected.len() as u64
            });
            thread::spawn(move || {
                for burst in texts.chunks(10) {
                    assert!(em.send(&burst.concat()));
                }
                for seq in 1..=MESSAGES {
                    em.expect_bytes(&hdr(Kind::Ok, S, em_id, seq));
                }
                (shown.join().expect("exhibitor"), MESSAGES as u64)
            })
        })
        .collect();
    let (mut delivered, mut acked) = (0, 0);
    for w in workers {
        let (d, a) = w.join().expect("pair");
        delivered += d;
        acked += a;
    }
    let good_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for g in garbage {
        g.join().expect("garbage sender");
    }
    let total = PAIRS as u64 * MESSAGES as u64;
    assert_eq!((delivered, acked), (total, total));
    // Still serving.
    let (mut ex, ex_id) = exhibitor(addr);
    let (mut em, em_id) = emitter(addr, ex_id);
    let m = msg(em_id, ex_id, 1, b"after");
    assert!(em.send(&m));
    ex.expect_bytes(&m);
    println!(
        "reliability[2]: {delivered}/{total} good messages delivered exactly and {acked}/{total} \
         OKs \
         in {:.2} s beside {GARBAGE} garbage senders ({} garbage connections, {} ERRO, {} closed \
         by the server)",
        good_time.as_secs_f64(),
        stats.connections.load(Ordering::Relaxed),
        stats.erro.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed)
    );
}

// ---- 3. slow consumer ----------------------------------------------------------------

#[test]
fn slow_consumer_is_cut_off_and_memory_stays_bounded() {
    const CAP: usize = 2 * 1024 * 1024;
    const READERS: usize = 3;
    const TEXT: usize = 60_000;
    const MAX_MESSAGES: u16 = 1000;
    let cap = CAP.to_string();
    let server = Server::start(&["--ack-timeout", "60", "--max-queue", &cap]);
    let (addr, pid) = (server.addr, server.proc.pid());

    // The exhibitor that never reads, with a 4 KB receive buffer.
    let mut slow = connect_with_small_rcvbuf(addr, 4096);
    slow.write_all(&hdr(Kind::Oi, 0, S, 0)).unwrap();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut ok = [0u8; 8];
    slow.read_exact(&mut ok).unwrap();
    let slow_id = Header::peek(&ok).unwrap().dest;

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<JoinHandle<Shown>> = (0..READERS)
        .map(|_| {
            let (peer, id) = exhibitor(addr);
            spawn_exhibitor(peer, id, stop.clone(), |_| {})
        })
        .collect();
    let (mut em, em_id) = emitter(addr, 1);
    server.proc.stderr.drain();
    let before = rss_kib(pid);

    // Broadcasts until the server reports the slow consumer.
    let text = vec![b'x'; TEXT];
    let mut sent = 0u16;
    let mut dropped = false;
    while !dropped {
        assert!(
            sent < MAX_MESSAGES,
            "no slow-consumer disconnect after {sent} broadcasts of {TEXT} bytes"
        );
        sent += 1;
        assert!(em.send(&msg(em_id, 0, sent, &text)));
        dropped = server
            .proc
            .stderr
            .drain()
            .iter()
            .any(|l| l.contains("slow consumer"));
    }
    let peak = status_kib(pid, "VmHWM");
    // Every broadcast reached the readers, so every reply is OK, in order.
    for seq in 1..=sent {
        em.expect_bytes(&hdr(Kind::Ok, S, em_id, seq));
    }
    // The others keep receiving: three more, now without the slow one.
    for seq in sent + 1..=sent + 3 {
        assert!(em.send(&msg(em_id, 0, seq, b"after the slow one")));
        em.expect_bytes(&hdr(Kind::Ok, S, em_id, seq));
    }
    // The slow exhibitor's connection ends (after what was in flight).
    let drained = read_to_end_within(&mut slow, TIMEOUT).len();
    eprintln!("slow exhibitor {slow_id} closed after {drained} more bytes");
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let shown = r.join().expect("reader");
        assert_eq!(shown.msgs, sent as u64 + 3, "a reader missed messages");
    }
    let growth = peak.saturating_sub(before);
    // The slow consumer's queue is capped at CAP; the rest is the readers'
    // queues, the emitter's input and allocator slack.
    let slack_kib = 8 * 1024;
    assert!(
        growth <= (CAP / 1024) as u64 + slack_kib,
        "server memory grew {growth} KiB with a {CAP}-byte queue cap"
    );
    println!(
        "reliability[3]: slow consumer (4 KB rcvbuf, never reads) cut off at its {:.1} MB queue \
         cap, having taken {:.1} MB into its socket buffers ({sent} broadcasts of {TEXT} B sent \
         when the cut-off was logged); server RSS {:.1} MB before, VmHWM {:.1} MB (+{:.1} MB, \
         bound cap + {} MB); {READERS} other exhibitors got all {} messages",
        CAP as f64 / 1e6,
        drained as f64 / 1e6,
        mib(before),
        mib(peak),
        mib(growth),
        slack_kib / 1024,
        sent + 3
    );
}

// ---- 4. descriptor flood -------------------------------------------------------------

/// A `server` whose open-file limit, soft and hard, is `nofile` (what
/// `prlimit --nofile=N:N server ...` does; the server can raise soft to hard
/// only, so this is its ceiling).
struct LimitedServer {
    child: Child,
    addr: SocketAddr,
    _stderr: Lines,
}

impl LimitedServer {
    fn start(nofile: u64, extra: &[&str]) -> LimitedServer {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(bin("server"));
        command
            .args(["0", "--bind", "127.0.0.1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let limit = libc::rlimit {
            rlim_cur: nofile as libc::rlim_t,
            rlim_max: nofile as libc::rlim_t,
        };
        // SAFETY: between fork and exec the hook only calls setrlimit, which
        // is async-signal-safe, on a struct it owns.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn server");
        let stdout = Lines::new(child.stdout.take().unwrap(), "limited server stdout");
        let stderr = Lines::new(child.stderr.take().unwrap(), "limited server stderr");
        let addr = listening_addr(&stdout);
        LimitedServer {
            child,
            addr,
            _stderr: stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for LimitedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the server closed `stream` ("eof" or "reset"), checked without
/// waiting; None while it is open.
fn closed_now(stream: &TcpStream) -> Option<&'static str> {
    stream.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let state = match stream.peek(&mut byte) {
        Ok(0) => Some("eof"),
        Ok(_) => panic!("the server sent bytes to a connection that never identified"),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => Some("reset"),
        Err(e) => panic!("peek: {e}"),
    };
    stream.set_nonblocking(false).unwrap();
    state
}

/// Regression: out of descriptors, `accept` reports EMFILE even with no
/// connection waiting; the accept loop freed its spare descriptor, got
/// WouldBlock, reopened it and went round forever at 100% CPU.
#[test]
fn descriptor_flood_is_refused_without_spinning() {
    const NOFILE: u64 = 64;
    const FLOOD: usize = 400;
    const TRICKLE: usize = 100;
    let server = LimitedServer::start(NOFILE, &["--handshake-timeout", "30", "-q"]);
    let (addr, pid) = (server.addr, server.pid());
    let base_fds = fds_below(pid, NOFILE as usize);
    let (mut ex, ex_id) = exhibitor(addr);
    let (mut em, em_id) = emitter(addr, ex_id);
    let room = NOFILE as usize - (base_fds + 2);

    let flood: Vec<TcpStream> = (0..FLOOD)
        .map(|_| TcpStream::connect(addr).expect("connect (the kernel accepts)"))
        .collect();
    // Every connection past the descriptor limit is closed at once; the
    // others are held (anonymous, within the handshake timeout).
    let mut refused = Vec::new();
    wait_until("server closes the connections it has no room for", || {
        refused = flood.iter().filter_map(closed_now).collect();
        refused.len() >= FLOOD - room
    });
    assert_eq!(refused.len(), FLOOD - room, "too many refused");
    assert_eq!(
        fds_below(pid, NOFILE as usize),
        NOFILE as usize,
        "server at its limit"
    );
    let eofs = refused.iter().filter(|s| **s == "eof").count();

    // More of the flood, one connection at a time: each is refused at once,
    // and after each the loop goes back to sleep in the poll. The regression
    // never slept again, so it fails this on any machine; a share of CPU
    // time (the criterion before, now a printed figure) depends on the
    // scheduler and on the loop's spinning while busy.
    let cpu_before = cpu_time(pid);
    let window = Instant::now();
    for _ in 0..TRICKLE {
        let mut late = Peer::connect(addr);
        match late.next(TIMEOUT) {
            Got::Closed => {}
            other => panic!("connection past the limit not refused: {other:?}"),
        }
        wait_until("the loop asleep in the poll after a refusal", || {
            loop_asleep_in_poll(pid)
        });
    }
    let wall = window.elapsed();
    let cpu = cpu_time(pid) - cpu_before;
    // The identified pair is served throughout.
    let m = msg(em_id, em_id, 1, b"during the flood");
    assert!(em.send(&m));
    ex.expect_bytes(&m);
    ex.ack(ex_id, em_id, 1);
    em.expect_bytes(&hdr(Kind::Ok, S, em_id, 1));

    // Service resumes once descriptors are free.
    drop(flood);
    wait_until("server closes the flood", || {
        fds_below(pid, NOFILE as usize) <= base_fds + 2
    });
    let (mut ex2, ex2_id) = exhibitor(addr);
    let (mut em2, em2_id) = emitter(addr, ex2_id);
    assert_eq!((ex2_id, em2_id), (ex_id + 1, em_id + 1));
    let m = msg(em2_id, ex2_id, 1, b"after the flood");
    assert!(em2.send(&m));
    ex2.expect_bytes(&m);
    ex2.ack(ex2_id, em2_id, 1);
    em2.expect_bytes(&hdr(Kind::Ok, S, em2_id, 1));
    println!(
        "reliability[4]: nofile {NOFILE}: {FLOOD} connections -> {room} held, {} closed at once \
         ({eofs} EOF, {} reset); then {TRICKLE} more one at a time, each refused and the loop \
         asleep after it, over {:.2} s with server CPU {:.0} ms ({:.1}% of a core); a new pair \
         was served after the flood closed",
        refused.len(),
        refused.len() - eofs,
        wall.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0,
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
}

// ---- 5. mid-frame disconnects -------------------------------------------------------

#[test]
fn ten_thousand_mid_frame_disconnects_leave_no_trace() {
    const TOTAL: usize = 10_000;
    const WORKERS: usize = 16;
    const KINDS: usize = 8;
    raise_nofile();
    let server = Server::start(&["--ack-timeout", "5", "--handshake-timeout", "10", "-q"]);
    let (addr, pid) = (server.addr, server.proc.pid());
    let base_fds = fd_count(pid);
    let started = Instant::now();
    let workers: Vec<JoinHandle<[u64; KINDS]>> = (0..WORKERS)
        .map(|w| {
            thread::spawn(move || {
                let mut done = [0u64; KINDS];
                for i in 0..TOTAL / WORKERS {
                    let kind = (w + i) % KINDS;
                    let mut peer = Peer::connect(addr);
                    let mut partial_msg = hdr(Kind::Msg, 0, 0, 1);
                    partial_msg.extend_from_slice(&[0, 10, b'a', b'b']);
                    match kind {
                        // Anonymous: 3 bytes, then close.
                        0 => {
                            peer.send(b"\x00\x05\x00");
                        }
                        // Anonymous: a MSG's header and part of its text, close.
                        1 => {
                            peer.send(&partial_msg);
                        }
                        // Anonymous: 3 bytes, then a reset.
                        2 => {
                            peer.send(b"\x00\x03\x00");
                            reset(peer.stream);
                            done[kind] += 1;
                            continue;
                        }
                        // Anonymous: a header, then half-close; the server
                        // must close its side too.
                        3 => {
                            peer.send(&hdr(Kind::Msg, 0, 0, 1));
                            peer.stream.shutdown(Shutdown::Write).unwrap();
                            peer.expect_closed();
                        }
                        // Exhibitor: 3 bytes of an OK, then close.
                        4 => {
                            peer.identify(0);
                            peer.send(b"\x00\x01\x10");
                        }
                        // Unpaired emitter: part of a MSG, then a reset.
                        5 => {
                            let id = peer.identify(1);
                            let mut m = hdr(Kind::Msg, id, 0, 1);
                            m.extend_from_slice(&[0, 10, b'a']);
                            peer.send(&m);
                            reset(peer.stream);
                            done[kind] += 1;
                            continue;
                        }
                        // A pair: the emitter half-closes mid-MSG; the
                        // exhibitor gets FLW and resets without acking.
                        6 => {
                            let ex_id = peer.identify(0);
                            let (mut em, em_id) = emitter(addr, ex_id);
                            let mut m = hdr(Kind::Msg, em_id, em_id, 1);
                            m.extend_from_slice(&[0, 10, b'a']);
                            em.send(&m);
                            em.stream.shutdown(Shutdown::Write).unwrap();
                            em.expect_closed();
                            let flw = peer.expect();
                            assert_eq!((flw.kind, flw.dest), (Kind::Flw, ex_id), "{flw}");
                            reset(peer.stream);
                            done[kind] += 1;
                            continue;
                        }
                        // Exhibitor: a MSG header, then half-close.
                        _ => {
                            let id = peer.identify(0);
                            peer.send(&hdr(Kind::Msg, id, 0, 1));
                            peer.stream.shutdown(Shutdown::Write).unwrap();
                            peer.expect_closed();
                        }
                    }
                    drop(peer);
                    done[kind] += 1;
                }
                done
            })
        })
        .collect();
    let mut per_kind = [0u64; KINDS];
    for w in workers {
        for (total, n) in per_kind.iter_mut().zip(w.join().expect("worker")) {
            *total += n;
        }
    }
    let churn_time = started.elapsed();
    assert_eq!(per_kind.iter().sum::<u64>(), TOTAL as u64);
    wait_until("server descriptors back to the start", || {
        fd_count(pid) == base_fds
    });
    let fds_after = fd_count(pid);
    // The id tables are back to the start: the lowest ids are handed out
    // again, and the client list holds exactly the two new clients.
    let (mut ex, ex_id) = exhibitor(addr);
    let (mut em, em_id) = emitter(addr, ex_id);
    assert_eq!((ex_id, em_id), (4096, 1));
    assert!(em.send(&hdr(Kind::Creq, em_id, em_id, 1)));
    let list = ex.expect();
    assert_eq!(list.body, Body::Clients(vec![1, 4096]), "{list}");
    ex.ack(ex_id, S, list.seq);
    em.expect_bytes(&hdr(Kind::Ok, S, em_id, 1));
    let log = server.proc.stderr.drain();
    assert!(
        !log.iter().any(|l| l.contains("panicked")),
        "server log: {log:?}"
    );
    println!(
        "reliability[5]: {TOTAL} mid-frame disconnects ({KINDS} kinds x {}, {WORKERS} at a time: \
         after 3 bytes, after a header, reset, half-close, identified or not) in {:.2} s; \
         server fds {base_fds} before, {} after; ids 4096 and 1 handed out again, CLIST [1, 4096]",
        TOTAL / KINDS,
        churn_time.as_secs_f64(),
        fds_after
    );
}

// ---- 6. churn under traffic ----------------------------------------------------------

/// A MSG checker for an exhibitor whose texts must start with `for <token> `
/// or `for all `: anything else counts as misrouted.
fn names_me(token: u64, misrouted: Arc<AtomicU64>) -> impl FnMut(&Frame) + Send + 'static {
    let mine = format!("for {token} ");
    move |frame: &Frame| {
        let text = frame.text().expect("MSG has text");
        if !(text.starts_with(mine.as_bytes()) || text.starts_with(b"for all ")) {
            misrouted.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "misrouted: {frame} {:?} reached token {token}",
                String::from_utf8_lossy(text)
            );
        }
    }
}

/// A churning pair's emitter: each text names its exhibitor's token.
struct ChurnEmitter {
    peer: Peer,
    id: ClientId,
    token: u64,
    seq: u16,
}

impl ChurnEmitter {
    fn send(&mut self, dest: ClientId) {
        self.seq += 1;
        let text = format!("for {} from {} #{}", self.token, self.id, self.seq);
        assert!(
            self.peer
                .send(&msg(self.id, dest, self.seq, text.as_bytes()))
        );
    }

    /// The reply to the last request: OK or ERRO.
    fn reply(&mut self) -> Kind {
        let reply = self.peer.expect();
        assert_eq!(
            (reply.origin, reply.dest, reply.seq),
            (S, self.id, self.seq),
            "{reply}"
        );
        assert!(matches!(reply.kind, Kind::Ok | Kind::Erro), "{reply}");
        reply.kind
    }
}

#[test]
fn churn_under_traffic_misroutes_nothing() {
    const STABLE: usize = 6;
    const CHURNERS: usize = 4;
    const CYCLES: usize = 40;
    let server = Server::start(&["--ack-timeout", "10", "-q"]);
    let addr = server.addr;
    let misrouted = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(1));
    let stop_emitters = Arc::new(AtomicBool::new(false));
    let stop_exhibitors = Arc::new(AtomicBool::new(false));

    // Stable pairs: each emitter sends to its exhibitor (by the exhibitor's
    // id or its own) and every tenth message to everyone, one at a time.
    let mut stable_ex = Vec::new();
    let mut stable_em = Vec::new();
    for _ in 0..STABLE {
        let token = tokens.fetch_add(1, Ordering::Relaxed);
        let (ex, ex_id) = exhibitor(addr);
        stable_ex.push(spawn_exhibitor(
            ex,
            ex_id,
            stop_exhibitors.clone(),
            names_me(token, misrouted.clone()),
        ));
        let (mut em, em_id) = emitter(addr, ex_id);
        let stop = stop_emitters.clone();
        stable_em.push(thread::spawn(move || {
            let mut n = 0u16;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (dest, text) = match n % 10 {
                    0 => (0, format!("for all from {em_id} #{n}")),
                    k if k % 2 == 1 => (em_id, format!("for {token} from {em_id} #{n}")),
                    _ => (ex_id, format!("for {token} from {em_id} #{n}")),
                };
                assert!(em.send(&msg(em_id, dest, n, text.as_bytes())));
                // Every target of a stable emitter acknowledges: always OK.
                em.expect_bytes(&hdr(Kind::Ok, S, em_id, n));
            }
            n as u64
        }));
    }

    // Churning pairs: connect, exchange a few messages, leave one of four ways.
    let churners: Vec<JoinHandle<(u64, u64)>> = (0..CHURNERS)
        .map(|w| {
            let (misrouted, tokens) = (misrouted.clone(), tokens.clone());
            thread::spawn(move || {
                let (mut ok, mut erro) = (0u64, 0u64);
                for cycle in 0..CYCLES {
                    let token = tokens.fetch_add(1, Ordering::Relaxed);
                    let (ex, ex_id) = exhibitor(addr);
                    let control = ex.stream.try_clone().unwrap();
                    let own_stop = Arc::new(AtomicBool::new(false));
                    let shown =
                        spawn_exhibitor(ex, ex_id, own_stop, names_me(token, misrouted.clone()));
                    let (peer, em_id) = emitter(addr, ex_id);
                    let mut em = ChurnEmitter {
                        peer,
                        id: em_id,
                        token,
                        seq: 0,
                    };
                    for j in 0..1 + cycle % 4 {
                        let dest = if j % 2 == 0 { em_id } else { ex_id };
                        em.send(dest);
                        assert_eq!(em.reply(), Kind::Ok);
                        ok += 1;
                    }
                    match (w + cycle) % 4 {
                        // The emitter leaves with FLW; its exhibitor is dismissed.
                        0 => {
                            assert!(em.peer.send(&hdr(Kind::Flw, em_id, S, 99)));
                            em.peer.expect_bytes(&hdr(Kind::Ok, S, em_id, 99));
                            em.peer.expect_closed();
                            assert!(shown.join().unwrap().flw);
                        }
                        // The exhibitor leaves with FLW; the emitter is unpaired.
                        1 => {
                            (&control).write_all(&hdr(Kind::Flw, ex_id, S, 1)).unwrap();
                            assert!(shown.join().unwrap().closed);
                            em.send(em_id);
                            assert_eq!(em.reply(), Kind::Erro);
                            erro += 1;
                        }
                        // The emitter resets mid-MSG; its exhibitor is dismissed.
                        2 => {
                            let m = msg(em_id, em_id, 77, format!("for {token} cut").as_bytes());
                            em.peer.send(&m[..12]);
                            reset(em.peer.stream);
                            assert!(shown.join().unwrap().flw);
                        }
                        // The exhibitor resets with a message in flight: that
                        // one is OK or ERRO, the next one (unpaired) ERRO.
                        _ => {
                            em.send(em_id);
                            control.shutdown(Shutdown::Read).unwrap();
                            shown.join().unwrap();
                            reset(control);
                            match em.reply() {
                                Kind::Ok => ok += 1,
                                _ => erro += 1,
                            }
                            em.send(em_id);
                            assert_eq!(em.reply(), Kind::Erro);
                            erro += 1;
                        }
                    }
                }
                (ok, erro)
            })
        })
        .collect();
    let (mut churn_ok, mut churn_erro) = (0, 0);
    for c in churners {
        let (ok, erro) = c.join().expect("churner");
        churn_ok += ok;
        churn_erro += erro;
    }
    stop_emitters.store(true, Ordering::Relaxed);
    let stable_sent: u64 = stable_em
        .into_iter()
        .map(|t| t.join().expect("stable emitter"))
        .sum();
    stop_exhibitors.store(true, Ordering::Relaxed);
    let stable_shown: u64 = stable_ex
        .into_iter()
        .map(|t| t.join().expect("stable exhibitor").msgs)
        .sum();
    let misrouted = misrouted.load(Ordering::Relaxed);
    assert_eq!(
        misrouted, 0,
        "messages reached an exhibitor they did not name"
    );
    println!(
        "reliability[6]: {} churn cycles ({CHURNERS} at a time, 4 ways to leave) beside {STABLE} \
         stable pairs: {stable_sent} stable requests all OK, {stable_shown} stable deliveries, \
         churn replies {churn_ok} OK / {churn_erro} ERRO (expected after a departure); 0 misrouted",
        CHURNERS * CYCLES
    );
}

// ---- 7. id exhaustion ------------------------------------------------------------------

#[test]
fn every_id_held_at_once_then_refused_then_reused() {
    let exhibitors_n = EXHIBITOR_IDS.len();
    let emitters_n = EMITTER_IDS.len();
    let limit = raise_nofile();
    assert!(
        limit >= (exhibitors_n + emitters_n + 512) as libc::rlim_t,
        "this test needs an open-file hard limit of at least {} (have {limit})",
        exhibitors_n + emitters_n + 512
    );
    let server = Server::start(&["--ack-timeout", "10", "-q"]);
    let addr = server.addr;
    let started = Instant::now();

    // Pipelined in batches: connect and send OI on each of a batch, then
    // read the batch's OKs. (A batch stays below the listen backlog of 128:
    // a longer burst of connects overflows it and costs 1 s SYN retries.)
    let identify_all = |n: usize, origin: ClientId| -> Vec<(Peer, ClientId)> {
        let mut all = Vec::with_capacity(n);
        while all.len() < n {
            let batch = (n - all.len()).min(64);
            let mut peers: Vec<Peer> = (0..batch)
                .map(|_| {
                    let mut peer = Peer::connect(addr);
                    assert!(peer.send(&hdr(Kind::Oi, origin, S, 0)));
                    peer
                })
                .collect();
            let ids: Vec<ClientId> = peers
                .iter_mut()
                .map(|peer| {
                    let ok = peer.expect();
                    assert_eq!((ok.kind, ok.origin), (Kind::Ok, S), "{ok}");
                    ok.dest
                })
                .collect();
            all.extend(peers.into_iter().zip(ids));
        }
        all
    };
    let mut exhibitors = identify_all(exhibitors_n, 0);
    let mut emitters = identify_all(emitters_n, 1);
    let held = started.elapsed();
    let mut ex_ids: Vec<ClientId> = exhibitors.iter().map(|(_, id)| *id).collect();
    let mut em_ids: Vec<ClientId> = emitters.iter().map(|(_, id)| *id).collect();
    ex_ids.sort_unstable();
    em_ids.sort_unstable();
    assert_eq!(ex_ids, EXHIBITOR_IDS.collect::<Vec<_>>());
    assert_eq!(em_ids, EMITTER_IDS.collect::<Vec<_>>());

    // Full: the next OI of either kind is refused with ERRO and closed.
    for origin in [0, 1, 4096] {
        let mut late = Peer::connect(addr);
        assert!(late.send(&hdr(Kind::Oi, origin, S, 5)));
        late.expect_bytes(&hdr(Kind::Erro, S, 0, 5));
        late.expect_closed();
    }
    // Still relaying at full occupancy, and the list names all 8191.
    let (last_ex, last_ex_id) = exhibitors
        .iter_mut()
        .find(|(_, id)| *id == *EXHIBITOR_IDS.end())
        .unwrap();
    let last_ex_id = *last_ex_id;
    let (first_em, first_em_id) = &mut emitters[0];
    let first_em_id = *first_em_id;
    let m = msg(first_em_id, last_ex_id, 1, b"to the last exhibitor");
    assert!(first_em.send(&m));
    last_ex.expect_bytes(&m);
    last_ex.ack(last_ex_id, first_em_id, 1);
    first_em.expect_bytes(&hdr(Kind::Ok, S, first_em_id, 1));
    assert!(first_em.send(&hdr(Kind::Creq, first_em_id, last_ex_id, 2)));
    let list = last_ex.expect();
    let Body::Clients(ids) = &list.body else {
        panic!("{list}")
    };
    assert_eq!(ids.len(), exhibitors_n + emitters_n);
    last_ex.ack(last_ex_id, S, list.seq);
    first_em.expect_bytes(&hdr(Kind::Ok, S, first_em_id, 2));

    // Released ids (by FLW, whose OK proves the server let go) are reused.
    for (want, pool) in [(4100u16, &mut exhibitors), (77, &mut emitters)] {
        let at = pool.iter().position(|(_, id)| *id == want).unwrap();
        let (mut peer, id) = pool.swap_remove(at);
        assert!(peer.send(&hdr(Kind::Flw, id, S, 1)));
        peer.expect_bytes(&hdr(Kind::Ok, S, id, 1));
        peer.expect_closed();
    }
    let (_ex, reused_ex) = exhibitor(addr);
    let (_em, reused_em) = emitter(addr, 1);
    assert_eq!((reused_ex, reused_em), (4100, 77));
    println!(
        "reliability[7]: all {exhibitors_n} exhibitor and {emitters_n} emitter ids held over {} \
         sockets (identified in {:.2} s); next OI refused with ERRO+close; CLIST of {} ids; \
         released ids 4100 and 77 reused",
        exhibitors_n + emitters_n,
        held.as_secs_f64(),
        exhibitors_n + emitters_n
    );
}

// ---- 8. spoofing --------------------------------------------------------------------

#[derive(Default)]
struct Recorder {
    sent: Vec<(ConnId, Frame)>,
    closed: Vec<(ConnId, ClientId, CloseReason)>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        self.sent.push((to, frame.clone()));
    }
    fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason) {
        self.closed.push((conn, id, reason));
    }
    fn resume_input(&mut self, _conn: ConnId) {}
}

/// Any frame type a client might send after OI (OI itself has its own rule).
fn spoof_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Ok),
        Just(Kind::Erro),
        Just(Kind::Flw),
        Just(Kind::Msg),
        Just(Kind::Creq),
        Just(Kind::Clist),
    ]
}

/// Ids worth claiming: the other clients', the special ones, or any.
fn claimed_id() -> impl Strategy<Value = ClientId> {
    prop_oneof![
        Just(0u16),
        Just(1),
        Just(2),
        Just(4096),
        Just(4097),
        Just(S),
        any::<u16>(),
    ]
}

fn spoofed_frame(kind: Kind, origin: ClientId, dest: ClientId, seq: u16) -> Frame {
    match kind {
        Kind::Msg => Frame::msg(origin, dest, seq, &b"spoofed"[..]).unwrap(),
        Kind::Clist => Frame::clist(origin, dest, seq, vec![1, 4096]).unwrap(),
        _ => Frame::bare(kind, origin, dest, seq),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Against the router: exhibitors 4096 (conn 0) and 4097 (conn 1),
    /// emitter 1 paired with 4096 (conn 2), unpaired emitter 2 (conn 3).
    #[test]
    fn spoofing_is_never_forwarded_router(
        sender in 0usize..4,
        kind in spoof_kind(),
        origin in claimed_id(),
        dest in claimed_id(),
        seq in any::<u16>(),
    ) {
        let now = Instant::now();
        let mut router = Router::new(Limits::default());
        let mut out = Recorder::default();
        for (conn, oi_origin) in [(0, 0), (1, 0), (2, 4096), (3, 1)] {
            router.connected(conn, now);
            router.on_frame(conn, Frame::bare(Kind::Oi, oi_origin, S, 0), now, &mut out);
        }
        let ids = [4096, 4097, 1, 2];
        prop_assert_eq!(out.sent.len(), 4);
        out.sent.clear();
        let real = ids[sender];
        prop_assume!(origin != real);

        let frame = spoofed_frame(kind, origin, dest, seq);
        router.on_frame(sender, frame.clone(), now, &mut out);

        // ERRO to the sender with its real id, then its close as a spoofer.
        prop_assert_eq!(&out.sent[0], &(sender, Frame::bare(Kind::Erro, S, real, seq)));
        prop_assert_eq!(&out.closed, &vec![(sender, real, CloseReason::Spoofed)]);
        // Nothing else but the FLW that a departing paired emitter owes its
        // exhibitor; the frame itself reaches no one.
        for (to, sent) in &out.sent[1..] {
            prop_assert!(sender == 2 && *to == 0 && sent.kind == Kind::Flw && sent.origin == S,
                "unexpected {} to conn {}", sent, to);
        }
        prop_assert!(out.sent[1..].iter().all(|(_, f)| *f != frame));
        prop_assert_eq!(router.client_id(sender), None);
        prop_assert_eq!(router.check_invariants(), Ok(()));
    }
}

#[test]
fn spoofing_is_never_forwarded_binary() {
    use proptest::test_runner::{Config, TestRunner};
    const CASES: u32 = 48;
    let server = Server::start(&["--ack-timeout", "10", "-q"]);
    let addr = server.addr;
    // The watcher would see any forwarded frame before the next sentinel
    // from its own emitter: the server handles each connection's frames in
    // order, and the spoofer's ERRO arrives before the sentinel is sent.
    let (watcher, watcher_id) = exhibitor(addr);
    let (guard, guard_id) = emitter(addr, watcher_id);
    let pair = Mutex::new((watcher, guard, 0u16));
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        any::<bool>(),
        spoof_kind(),
        prop_oneof![Just(watcher_id), Just(guard_id), claimed_id()],
        prop_oneof![Just(watcher_id), Just(guard_id), claimed_id()],
        any::<u16>(),
    );
    runner
        .run(&strategy, |(as_exhibitor, kind, origin, dest, seq)| {
            let (mut spoofer, real) = if as_exhibitor {
                exhibitor(addr)
            } else {
                emitter(addr, 1)
            };
            if origin == real {
                return Ok(());
            }
            let frame = spoofed_frame(kind, origin, dest, seq);
            assert!(spoofer.send(&frame.to_bytes()));
            prop_assert_eq!(spoofer.expect(), Frame::bare(Kind::Erro, S, real, seq));
            prop_assert!(matches!(spoofer.next(TIMEOUT), Got::Closed));
            let mut pair = pair.lock().unwrap();
            let (watcher, guard, n) = &mut *pair;
            *n += 1;
            let sentinel = msg(guard_id, watcher_id, *n, b"sentinel");
            assert!(guard.send(&sentinel));
            prop_assert_eq!(&watcher.expect().to_bytes()[..], &sentinel[..]);
            watcher.ack(watcher_id, guard_id, *n);
            prop_assert_eq!(guard.expect(), Frame::bare(Kind::Ok, S, guard_id, *n));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let sentinels = pair.lock().unwrap().2;
    println!(
        "reliability[8]: {CASES} spoofed frames over real sockets ({sentinels} with an origin not \
         the sender's): each got ERRO(65535, real id, seq) + close, none reached the watcher; \
         router property: 512 cases"
    );
}

// ---- 9. slowloris ------------------------------------------------------------------------

#[test]
fn slowloris_is_closed_at_the_handshake_timeout() {
    const LORISES: usize = 20;
    let server = Server::start(&["--ack-timeout", "5", "--handshake-timeout", "1.5", "-q"]);
    let addr = server.addr;
    let lorises: Vec<JoinHandle<Duration>> = (0..LORISES)
        .map(|_| {
            thread::spawn(move || {
                let oi = hdr(Kind::Oi, 0, S, 0);
                let started = Instant::now();
                let mut peer = Peer::connect(addr);
                for byte in oi.iter().cycle() {
                    // One byte, then half a second of reading: the read is
                    // the pacing (traffic shaping) and the close detector.
                    let _ = peer.send(&[*byte]);
                    match peer.next(Duration::from_millis(500)) {
                        Got::Quiet => {}
                        Got::Closed => return started.elapsed(),
                        Got::Frame(f) => panic!("slowloris got {f}: served, not closed"),
                    }
                    assert!(started.elapsed() < TIMEOUT, "slowloris never closed");
                }
                unreachable!()
            })
        })
        .collect();
    // An honest pair is served meanwhile.
    let (mut ex, ex_id) = exhibitor(addr);
    let (mut em, em_id) = emitter(addr, ex_id);
    let m = msg(em_id, ex_id, 1, b"beside the slowlorises");
    assert!(em.send(&m));
    ex.expect_bytes(&m);
    ex.ack(ex_id, em_id, 1);
    em.expect_bytes(&hdr(Kind::Ok, S, em_id, 1));
    let times: Vec<f64> = lorises
        .into_iter()
        .map(|t| t.join().expect("slowloris").as_secs_f64())
        .collect();
    let (min, max) = times
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    assert!(
        min >= 1.5,
        "closed before the handshake timeout: {min:.2} s"
    );
    assert!(max < 1.5 + 4.0, "closed long after the timeout: {max:.2} s");
    println!(
        "reliability[9]: {LORISES} slowloris connections (1 byte / 0.5 s before OI) closed after \
         {min:.2}..{max:.2} s (handshake timeout 1.5 s); an honest pair served meanwhile"
    );
}

// ---- 10. SIGTERM under load ----------------------------------------------------------------

/// An emitter under load until the server's FLW: requests one at a time to
/// `dest`, answers FLW with OK and returns once the server closes.
/// Returns (replies, FLW seen).
fn loaded_emitter(
    mut em: Peer,
    em_id: ClientId,
    dest: ClientId,
    progress: Arc<AtomicU64>,
) -> (u64, bool) {
    let mut seq = 0u16;
    let mut replies = 0u64;
    loop {
        seq += 1;
        if !em.send(&msg(em_id, dest, seq, b"load")) {
            return (replies, false);
        }
        match em.next(TIMEOUT) {
            Got::Frame(f) if f.kind == Kind::Flw => {
                em.ack(em_id, S, f.seq);
                // Whatever else comes, the server closes next.
                while let Got::Frame(_) = em.next(TIMEOUT) {}
                return (replies, true);
            }
            Got::Frame(f) if f.seq == seq && matches!(f.kind, Kind::Ok | Kind::Erro) => {
                replies += 1;
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Got::Frame(f) => panic!("emitter {em_id}: unexpected {f}"),
            other => panic!("emitter {em_id}: {other:?} before FLW"),
        }
    }
}

#[test]
fn sigterm_under_load_drains_and_exits_zero() {
    const PAIRS: usize = 10;
    let drain = Duration::from_secs(1);
    let mut server = Server::start(&["--ack-timeout", "30", "--drain-timeout", "1", "-q"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));

    // The exhibitor that never reads, and an emitter paired with it that
    // leaves it some messages it will never acknowledge.
    let mut mute = connect_with_small_rcvbuf(addr, 4096);
    mute.write_all(&hdr(Kind::Oi, 0, S, 0)).unwrap();
    mute.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut ok = [0u8; 8];
    mute.read_exact(&mut ok).unwrap();
    let mute_id = Header::peek(&ok).unwrap().dest;
    let (mut mute_em, mute_em_id) = emitter(addr, mute_id);
    for seq in 1..=5 {
        assert!(mute_em.send(&msg(mute_em_id, mute_id, seq, b"never acked")));
    }
    let mute_em = thread::spawn(move || {
        // Its replies are pending; the first frame it gets is the FLW.
        let flw = mute_em.expect();
        assert_eq!((flw.kind, flw.dest), (Kind::Flw, mute_em_id), "{flw}");
        mute_em.ack(mute_em_id, S, flw.seq);
        while let Got::Frame(_) = mute_em.next(TIMEOUT) {}
        true
    });

    let progress = Arc::new(AtomicU64::new(0));
    let mut exhibitors = Vec::new();
    let mut emitters = Vec::new();
    for _ in 0..PAIRS {
        let (ex, ex_id) = exhibitor(addr);
        exhibitors.push(spawn_exhibitor(ex, ex_id, stop.clone(), |_| {}));
        let (em, em_id) = emitter(addr, ex_id);
        let progress = progress.clone();
        emitters.push(thread::spawn(move || {
            loaded_emitter(em, em_id, em_id, progress)
        }));
    }
    wait_until("the load is flowing", || {
        progress.load(Ordering::Relaxed) >= 500
    });

    let signalled = Instant::now();
    server.proc.signal(libc::SIGTERM);
    let status = server.proc.wait();
    let exit_after = signalled.elapsed();
    assert!(status.success(), "server exited with {status}");
    assert!(
        exit_after < drain + Duration::from_secs(2),
        "exit took {exit_after:?} with a drain timeout of {drain:?}"
    );

    let mut requests = 0;
    let mut flw = 0;
    for e in emitters {
        let (replies, got_flw) = e.join().expect("emitter");
        requests += replies;
        flw += got_flw as usize;
    }
    for e in exhibitors {
        let shown = e.join().expect("exhibitor");
        flw += (shown.flw && shown.closed) as usize;
    }
    flw += mute_em.join().expect("mute's emitter") as usize;
    stop.store(true, Ordering::Relaxed);
    let responsive = 2 * PAIRS + 1;
    assert_eq!(flw, responsive, "responsive clients without FLW");
    println!(
        "reliability[10]: SIGTERM after {requests} requests under load: {flw}/{responsive} \
         responsive clients got FLW and were closed; with one exhibitor that never reads, the \
         server exited 0 after {:.2} s (drain timeout {:.0} s)",
        exit_after.as_secs_f64(),
        drain.as_secs_f64()
    );
}

// ---- fairness ------------------------------------------------------------------------------

#[test]
fn flooding_emitter_does_not_starve_another() {
    const STEADY: u16 = 50;
    let server = Server::start(&["--ack-timeout", "30", "-q"]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));

    // The flood: pipelined 1 KB messages to its own exhibitor, which acks.
    let (flood_ex, flood_ex_id) = exhibitor(addr);
    let flood_ex_ctl = flood_ex.stream.try_clone().unwrap();
    let flood_shown = spawn_exhibitor(flood_ex, flood_ex_id, stop.clone(), |_| {});
    let (flood_em, flood_em_id) = emitter(addr, flood_ex_id);
    let mut flood_writer = flood_em.stream.try_clone().unwrap();
    let flood_ctl = flood_em.stream.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut seq = 0u16;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            for _ in 0..64 {
                seq = seq.wrapping_add(1);
                batch.extend_from_slice(&msg(flood_em_id, flood_em_id, seq, &[b'f'; 1000]));
            }
            if flood_writer.write_all(&batch).is_err() {
                return;
            }
        }
    });
    let flood_replies = Arc::new(AtomicU64::new(0));
    let replies = flood_replies.clone();
    let reply_reader = thread::spawn(move || {
        let mut em = flood_em;
        while let Got::Frame(f) = em.next(TIMEOUT) {
            assert_eq!(f.kind, Kind::Ok, "flood reply {f}");
            replies.fetch_add(1, Ordering::Relaxed);
        }
    });
    wait_until("the flood is flowing", || {
        flood_replies.load(Ordering::Relaxed) >= 2000
    });

    // The steady emitter: one message every 20 ms, each waited for.
    let (steady_ex, steady_ex_id) = exhibitor(addr);
    let steady_shown = spawn_exhibitor(steady_ex, steady_ex_id, stop.clone(), |_| {});
    let (mut em, em_id) = emitter(addr, steady_ex_id);
    let flood_before = flood_replies.load(Ordering::Relaxed);
    let started = Instant::now();
    let mut latencies = Vec::new();
    for seq in 1..=STEADY {
        let sent = Instant::now();
        assert!(em.send(&msg(em_id, em_id, seq, b"steady")));
        em.expect_bytes(&hdr(Kind::Ok, S, em_id, seq));
        latencies.push(sent.elapsed());
        // Traffic shaping: a steady rate.
        thread::sleep(Duration::from_millis(20));
    }
    let window = started.elapsed();
    let flood_during = flood_replies.load(Ordering::Relaxed) - flood_before;

    stop.store(true, Ordering::Relaxed);
    flood_ctl.shutdown(Shutdown::Both).unwrap();
    flood_ex_ctl.shutdown(Shutdown::Both).unwrap();
    writer.join().unwrap();
    reply_reader.join().unwrap();
    flood_shown.join().unwrap();
    assert_eq!(steady_shown.join().unwrap().msgs, STEADY as u64);
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let max = *latencies.last().unwrap();
    assert!(
        max < Duration::from_secs(5),
        "a steady message took {max:?}"
    );
    println!(
        "reliability[fairness]: beside a flood of {:.0} msg/s (1 KB, pipelined), all {STEADY} \
         steady messages delivered and OK: latency p50 {:.2} ms, max {:.2} ms",
        flood_during as f64 / window.as_secs_f64(),
        p50.as_secs_f64() * 1000.0,
        max.as_secs_f64() * 1000.0
    );
}
