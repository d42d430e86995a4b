//! Loop scenes that need the server's insides, set by hand.
//!
//! A connection closed and its slot reused inside one poll batch: the new
//! connection must get none of the old one's traffic.
//! The scene is set by hand — loop turns driven from the test before
//! `run` — so that the first batch `run` polls holds, in this order, the
//! old connection's last event (its close, which frees its slot at once)
//! and the listener's (a new connection, which takes that slot).
//!
//! A batch past the early-write size: part of it must reach its readers
//! before the turn that routes it ends — one part each, and only for as
//! many readers as may be written to early before the turn's flush
//! (`EARLY_WRITES_PER_FLUSH`).
//!
//! TLS handshakes on workers: connections past the workers' queue wait in
//! line and are all served; a connection removed while its step is away
//! leaves nothing behind, and the step that comes back for its slot never
//! reaches the connection that took the slot next.
//!
//! Accepted sockets inherit TCP_NODELAY and delayed-ACK mode from the
//! listener.

use super::wire::{EARLY_WRITES_PER_FLUSH, WRITE_EARLY_AT};
use super::*;
use crate::captured_log;
use crate::proto::{ClientId, Encode, Frame, Kind, SERVER_ID};
use crate::router::Limits;
use crate::testing::raw_client::{Raw, TIMEOUT as WAIT};
use bytes::BytesMut;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard};

const S: ClientId = SERVER_ID;

/// The MSG `client` (exhibitor `id`) must get next, which must name `me`
/// (or everyone) in its text; it is acknowledged.
fn expect_msg_for(client: &mut Raw, id: ClientId, me: &str) -> Frame {
    let frame = client.expect_frame();
    assert_eq!(frame.kind, Kind::Msg, "{frame}");
    let text = frame.text().unwrap();
    assert!(
        text == format!("for {me}").as_bytes() || &text[..] == b"for all",
        "misrouted: {me} got {:?}",
        String::from_utf8_lossy(text)
    );
    client.send_frame(&Frame::bare(Kind::Ok, id, frame.origin, frame.seq));
    frame
}

/// One loop turn by hand, for setting the scene before `run`: every
/// connection is served as if `poll` had reported it readable, then the
/// loop's own end of turn runs.
fn turn(server: &mut Server) {
    server.wire.now = Instant::now();
    server.accept_all();
    let conns: Vec<ConnId> = server.wire.conns.iter().map(|(conn, _)| conn).collect();
    for conn in conns {
        server.wire.conns[conn].read_to_empty = false;
        server.service_input(conn, false);
    }
    assert_eq!(server.end_turn(), Next::Continue);
}

/// A server on a free loopback port with default limits, and the
/// guard that keeps it the only one (see `ONE_SERVER_AT_A_TIME`).
fn loopback_server() -> (MutexGuard<'static, ()>, Server) {
    loopback_server_with(None)
}

/// The same, with TLS.
fn loopback_server_with(tls: Option<TlsConfig>) -> (MutexGuard<'static, ()>, Server) {
    let serial = ONE_SERVER_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let server = Server::bind(Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        limits: Limits::default(),
        max_queue: 1 << 20,
        drain_timeout: Duration::from_secs(2),
        web: Some(WebConfig::default()),
        spin: Duration::from_micros(50),
        history: None,
        auth: None,
        metrics_allow: Vec::new(),
        tls,
        announce: None,
        rooms: crate::router::RoomLimits::default(),
        cluster: None,
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
    let mut a = Raw::connect(addr);
    a.send_frame(&oi(0));
    let ok = drive_until(&mut server, || a.try_frame()).unwrap();
    assert_eq!(ok, Frame::bare(Kind::Ok, S, 4096, 0));
    let a_addr = a.stream.local_addr().unwrap();
    let (a_conn, _) = server
        .wire
        .conns
        .iter()
        .find(|(_, slot)| slot.peer == a_addr)
        .unwrap();
    let mut e = Raw::connect(addr);
    e.send_frame(&oi(4096));
    let ok = drive_until(&mut server, || e.try_frame()).unwrap();
    assert_eq!(ok, Frame::bare(Kind::Ok, S, 1, 0));
    let mut c = Raw::connect(addr);
    c.send_frame(&oi(0));
    let ok = drive_until(&mut server, || c.try_frame()).unwrap();
    assert_eq!(ok, Frame::bare(Kind::Ok, S, 4097, 0));

    // A leaves: its OK, then the server's FIN. A's slot now waits for A
    // to close its side.
    a.send_frame(&Frame::bare(Kind::Flw, 4096, S, 1));
    let ok = drive_until(&mut server, || a.try_frame());
    assert_eq!(ok, Some(Frame::bare(Kind::Ok, S, 4096, 1)));
    assert_eq!(drive_until(&mut server, || a.try_frame()), None);
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
    let mut b = Raw::connect(addr);
    let b_addr = b.stream.local_addr().unwrap();
    let listener = server.listener.as_ref().unwrap();
    wait_for("B is in the accept queue", || accept_queue(listener) >= 1);

    let shutdown = server.shutdown_handle();
    let running = std::thread::spawn(move || captured_log::capture(|| server.run()));

    // B is an exhibitor and gets A's old id, the lowest free one.
    b.send_frame(&oi(0));
    assert_eq!(
        b.frame_within(WAIT),
        Some(Frame::bare(Kind::Ok, S, 4096, 0))
    );
    // E lost its pairing with A: its own id is no target now, and B,
    // in A's slot and with A's id, gets nothing of it.
    let m = |dest, seq, text: &'static str| Frame::msg(1, dest, seq, text.as_bytes()).unwrap();
    e.send_frame(&m(1, 1, "for A"));
    assert_eq!(e.frame_within(WAIT), Some(Frame::bare(Kind::Erro, S, 1, 1)));
    // To everyone: B's first MSG must be this one, as must C's.
    e.send_frame(&m(0, 2, "for all"));
    assert_eq!(expect_msg_for(&mut b, 4096, "B"), m(0, 2, "for all"));
    assert_eq!(expect_msg_for(&mut c, 4097, "C"), m(0, 2, "for all"));
    assert_eq!(e.frame_within(WAIT), Some(Frame::bare(Kind::Ok, S, 1, 2)));
    // By id, 4096 is B now.
    e.send_frame(&m(4096, 3, "for B"));
    assert_eq!(expect_msg_for(&mut b, 4096, "B"), m(4096, 3, "for B"));
    assert_eq!(e.frame_within(WAIT), Some(Frame::bare(Kind::Ok, S, 1, 3)));

    shutdown.trigger();
    for (client, id) in [(&mut b, 4096), (&mut c, 4097), (&mut e, 1)] {
        let flw = client.frame_within(WAIT).expect("FLW");
        assert_eq!((flw.kind, flw.dest), (Kind::Flw, id), "{flw}");
        client.send_frame(&Frame::bare(Kind::Ok, id, S, flw.seq));
        assert_eq!(client.frame_within(WAIT), None, "{id} not closed after FLW");
        client.stream.shutdown(std::net::Shutdown::Both).unwrap();
    }
    let (ran, log) = running.join().unwrap();
    ran.unwrap();

    // The scene happened as built: A's slot was freed, then B took it,
    // both in the first poll batch of `run`.
    let log = log.text();
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
    // One exhibitor more than may be written to early before a flush.
    let mut exhibitors = Vec::new();
    for n in 0..=EARLY_WRITES_PER_FLUSH as u16 {
        let mut x = Raw::connect(addr);
        x.send_frame(&oi(0));
        assert_eq!(
            drive_until(&mut server, || x.try_frame()),
            Some(Frame::bare(Kind::Ok, S, 4096 + n, 0))
        );
        exhibitors.push(x);
    }
    let mut e = Raw::connect(addr);
    e.send_frame(&oi(4096));
    assert_eq!(
        drive_until(&mut server, || e.try_frame()),
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
        Frame::msg(1, 0, seq, text).unwrap().encode_into(&mut batch);
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
    server.wire.now = Instant::now();
    server.service_input(e_conn, false);
    let early = WRITE_EARLY_AT.div_ceil(frame_len);
    let (last, first) = exhibitors.split_last_mut().unwrap();
    for x in first.iter_mut() {
        for seq in 1..=early as u16 {
            let frame = x.frame_within(WAIT).expect("an early MSG");
            assert_eq!((frame.kind, frame.seq), (Kind::Msg, seq), "{frame}");
        }
        assert_eq!(x.try_frame(), None, "more than one early write");
    }
    assert_eq!(
        last.try_frame(),
        None,
        "more early writes than a turn allows"
    );
    // The end of the turn writes the rest, in order.
    assert_eq!(server.end_turn(), Next::Continue);
    for (n, x) in exhibitors.iter_mut().enumerate() {
        let from = if n < EARLY_WRITES_PER_FLUSH {
            early + 1
        } else {
            1
        };
        for seq in from as u16..=count as u16 {
            let frame = x
                .frame_within(WAIT)
                .expect("a MSG written at the end of the turn");
            assert_eq!((frame.kind, frame.seq), (Kind::Msg, seq), "{frame}");
        }
    }
}

/// A throwaway certificate for localhost in `dir` (kept by the caller
/// while the server runs), the server's TLS with `workers` threads taking
/// `queue` steps at once, and a client configuration that trusts it.
fn tls_setup(
    dir: &std::path::Path,
    workers: usize,
    queue: usize,
) -> (TlsConfig, Arc<rustls::ClientConfig>) {
    use rustls_pki_types::pem::PemObject;
    let now = std::time::SystemTime::now();
    let day = Duration::from_secs(86_400);
    let made =
        crate::tls::generate::throwaway(&["localhost".into()], now - day, now + day).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cert.pem"), &made.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &made.key_pem).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(made.ca_pem.as_bytes()).unwrap())
        .unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = TlsConfig {
        workers,
        queue,
        ..TlsConfig::new(dir.join("cert.pem"), dir.join("key.pem"))
    };
    (tls, Arc::new(client))
}

/// A TLS client on its own thread: it connects, sends OI (which drives
/// the handshake first) and sends back the OK's bytes, or its error.
fn tls_client_thread(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    done: std::sync::mpsc::Sender<Result<Vec<u8>, String>>,
) {
    std::thread::spawn(move || {
        let run = || -> io::Result<Vec<u8>> {
            use std::io::Read;
            let tcp = std::net::TcpStream::connect(addr)?;
            tcp.set_read_timeout(Some(WAIT))?;
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            stream.write_all(&Frame::bare(Kind::Oi, 0, 0, 1).to_bytes())?;
            let mut ok = vec![0u8; 8];
            stream.read_exact(&mut ok)?;
            Ok(ok)
        };
        let _ = done.send(run().map_err(|e| e.to_string()));
    });
}

/// Accepts and reads every connection (no end of turn, so that no step
/// comes back) until `done` holds, bounded by WAIT.
fn serve_without_end_of_turn(server: &mut Server, mut done: impl FnMut(&Server) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done(server) {
        assert!(
            Instant::now() < deadline,
            "the scene did not set within {WAIT:?}"
        );
        server.wire.now = Instant::now();
        server.accept_all();
        let conns: Vec<ConnId> = server.wire.conns.iter().map(|(conn, _)| conn).collect();
        for conn in conns {
            server.wire.conns[conn].read_to_empty = false;
            server.service_input(conn, false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Each answer is an OK with an exhibitor's id for the OI's seq.
fn assert_all_identified(answers: Vec<Result<Vec<u8>, String>>) {
    for answer in answers {
        let ok = answer.expect("a TLS client identified");
        assert_eq!(ok[..4], Frame::bare(Kind::Ok, S, 0, 1).to_bytes()[..4]);
        assert_eq!(ok[6..], [0, 1], "the OI's seq");
    }
}

#[test]
fn handshakes_past_the_workers_queue_wait_in_line_and_are_all_served() {
    let dir = std::env::temp_dir().join(format!("evchat-hs-queue-{}", std::process::id()));
    let (tls, client) = tls_setup(&dir, 1, 1);
    let (_serial, mut server) = loopback_server_with(Some(tls));
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..3 {
        tls_client_thread(server.local_addr(), client.clone(), tx.clone());
    }
    // One step on the only place the queue has; the other two in line,
    // their input paused.
    serve_without_end_of_turn(&mut server, |s| {
        let h = s.handshakes.as_ref().unwrap();
        h.away() == 1 && h.waiting() == 2
    });
    let paused = server
        .wire
        .conns
        .iter()
        .filter(|(_, s)| s.conn.handshake_paused());
    assert_eq!(paused.count(), 3);
    let mut answers = Vec::new();
    drive_until(&mut server, || {
        answers.extend(rx.try_iter());
        (answers.len() == 3).then_some(())
    });
    assert_all_identified(answers);
    let h = server.handshakes.as_ref().unwrap();
    assert_eq!((h.away(), h.waiting(), h.on_workers()), (0, 0, 0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_connection_removed_while_its_step_is_away_leaves_nothing_and_misroutes_nothing() {
    let dir = std::env::temp_dir().join(format!("evchat-hs-gone-{}", std::process::id()));
    let (tls, client) = tls_setup(&dir, 1, 4);
    let (_serial, mut server) = loopback_server_with(Some(tls));
    // A ClientHello, then the peer is gone while its step is away.
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut hello_client = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut hello = Vec::new();
    hello_client.write_tls(&mut hello).unwrap();
    let mut gone = std::net::TcpStream::connect(server.local_addr()).unwrap();
    gone.write_all(&hello).unwrap();
    serve_without_end_of_turn(&mut server, |s| s.handshakes.as_ref().unwrap().away() == 1);
    let (old, _) = server.wire.conns.iter().next().unwrap();
    drop(gone);
    // Removed as the handshake timeout or a shutdown's drain removes it.
    server.wire.drop_conn(old, Departure::PeerClosed);
    server.settle_dropped();
    server.remove(old);
    assert_eq!(server.handshakes.as_ref().unwrap().away(), 0);
    assert!(server.wire.conns.is_empty());
    // The next connection takes the same slot; the old step, back at the
    // end of a turn, must not reach it.
    assert_eq!(server.wire.conns.vacant_key(), old, "the slot is reused");
    let (tx, rx) = std::sync::mpsc::channel();
    tls_client_thread(server.local_addr(), client, tx);
    let answer = drive_until(&mut server, || rx.try_recv().ok());
    assert_all_identified(vec![answer]);
    let h = server.handshakes.as_ref().unwrap();
    assert_eq!(
        (h.away(), h.on_workers()),
        (0, 0),
        "the old step was dropped"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The next connection `listener` (non-blocking) has, waited for up to WAIT.
#[cfg(target_os = "linux")]
fn accept_one(listener: &TcpListener) -> mio::net::TcpStream {
    let deadline = Instant::now() + WAIT;
    loop {
        match listener.accept() {
            Ok((socket, _)) => return socket,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Linux copies TCP_NODELAY from the listening socket to each accepted one,
/// so `admit` spends no system call on it: a reply still leaves at once.
#[cfg(target_os = "linux")]
#[test]
fn accepted_connections_inherit_tcp_nodelay_from_the_listener() {
    let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let accepted = accept_one(&listener);
    assert!(accepted.nodelay().unwrap());
}

/// Accepted sockets start in delayed-ACK mode, copied from the listener
/// (`listen` clears it, so it is set after): the first request's ACK rides
/// on its reply instead of a segment of its own.
#[cfg(target_os = "linux")]
#[test]
fn accepted_connections_start_with_delayed_acks_from_the_listener() {
    let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
    assert!(!socket2::SockRef::from(&listener).tcp_quickack().unwrap());
    let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let accepted = accept_one(&listener);
    assert!(!socket2::SockRef::from(&accepted).tcp_quickack().unwrap());
}
