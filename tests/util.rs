//! Test harness: spawns the real binaries (found through `CARGO_BIN_EXE_*`),
//! reads their output lines with timeouts, and talks to the server over raw
//! sockets. Every wait here is a read with a deadline, never a sleep.

#![allow(dead_code)]

use bytes::BytesMut;
use evchat::proto::{ClientId, Frame, Kind, SERVER_ID};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long any single expected event may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long to watch for something that must *not* happen.
pub const QUIET: Duration = Duration::from_millis(300);

pub fn bin(name: &str) -> &'static str {
    match name {
        "server" => env!("CARGO_BIN_EXE_server"),
        "emitter" => env!("CARGO_BIN_EXE_emitter"),
        "exhibitor" => env!("CARGO_BIN_EXE_exhibitor"),
        "evchat" => env!("CARGO_BIN_EXE_evchat"),
        other => panic!("no binary {other}"),
    }
}

/// Lines of a child's output, collected by a thread.
pub struct Lines {
    rx: Receiver<String>,
    name: String,
}

impl Lines {
    pub fn new(source: impl Read + Send + 'static, name: &str) -> Lines {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(source).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            name: name.to_string(),
        }
    }

    /// The next line, failing the test if none comes within [`TIMEOUT`].
    pub fn expect(&self) -> String {
        match self.rx.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("{}: no line within {TIMEOUT:?}", self.name),
            Err(RecvTimeoutError::Disconnected) => panic!("{}: output ended", self.name),
        }
    }

    /// Asserts the next line is exactly `want`.
    pub fn expect_line(&self, want: &str) {
        assert_eq!(self.expect(), want, "{}", self.name);
    }

    /// The next line if one arrives within `wait`; None on timeout or end.
    pub fn next_within(&self, wait: Duration) -> Option<String> {
        self.rx.recv_timeout(wait).ok()
    }

    /// Collects lines until the output ends (the process exited).
    pub fn rest(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(RecvTimeoutError::Disconnected) => return lines,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: output did not end: {lines:?}", self.name)
                }
            }
        }
    }
}

/// A spawned binary with its output lines; killed when dropped.
pub struct Proc {
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    pub stdin: Option<ChildStdin>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(bin(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = Lines::new(child.stdout.take().unwrap(), &format!("{name} stdout"));
        let stderr = Lines::new(child.stderr.take().unwrap(), &format!("{name} stderr"));
        let stdin = child.stdin.take();
        Proc {
            child,
            stdout,
            stderr,
            stdin,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. `libc::SIGINT`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill {} failed", self.name);
    }

    /// Writes to the child's stdin.
    pub fn input(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes the child's stdin (end of input).
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit; fails the test after [`TIMEOUT`].
    /// The wait ends as soon as stdout closes, then reaps the child.
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {TIMEOUT:?}",
                self.name
            );
            // Polling the exit status, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `server` on a free port.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `server 0 --bind 127.0.0.1 EXTRA...` and reads its port.
    pub fn start(extra: &[&str]) -> Server {
        let mut args = vec!["0", "--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        let proc = Proc::spawn("server", &args);
        let line = proc.stdout.expect();
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Server { proc, addr }
    }

    /// "127.0.0.1:port", as the clients take it.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn exhibitor(&self) -> (Proc, ClientId) {
        let p = Proc::spawn("exhibitor", &[&self.target()]);
        let line = p.stdout.expect();
        let id = line
            .strip_prefix("exhibitor ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        (p, id)
    }

    /// An emitter, paired with `pair` when given; returns its id.
    pub fn emitter(&self, pair: Option<ClientId>) -> (Proc, ClientId) {
        let target = self.target();
        let pair_arg = pair.map(|p| p.to_string());
        let mut args = vec![target.as_str()];
        if let Some(p) = &pair_arg {
            args.push(p);
        }
        let p = Proc::spawn("emitter", &args);
        let line = p.stdout.expect();
        let rest = line
            .strip_prefix("emitter ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let id = rest.split(' ').next().unwrap().parse().unwrap();
        if let Some(p) = pair {
            assert_eq!(line, format!("emitter {id} paired with exhibitor {p}"));
        }
        (p, id)
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }
}

/// A TCP connection whose receive buffer is set small before connecting, so
/// that a peer that never reads fills up quickly.
pub fn connect_with_small_rcvbuf(addr: SocketAddr, size: usize) -> TcpStream {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    socket.set_recv_buffer_size(size).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// A hand-driven connection to the server, for byte-exact tests.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn send_frame(&mut self, frame: &Frame) {
        self.send(&frame.to_bytes());
    }

    /// The next frame, or None if the server closed the connection; fails
    /// the test if nothing comes within `wait`.
    pub fn frame_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(frame) = Frame::decode(&mut self.buf).unwrap() {
                return Some(frame);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no frame within {wait:?}");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("no frame within {wait:?}")
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next frame; fails the test on close or timeout.
    pub fn expect_frame(&mut self) -> Frame {
        self.frame_within(TIMEOUT)
            .expect("connection closed, frame expected")
    }

    /// The next `n` raw bytes exactly as the server sent them.
    pub fn expect_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        while self.buf.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "fewer than {n} bytes within {TIMEOUT:?}");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            let got = self.stream.read(&mut chunk).unwrap();
            assert!(got > 0, "closed after {} of {n} bytes", self.buf.len());
            self.buf.extend_from_slice(&chunk[..got]);
        }
        self.buf.split_to(n).to_vec()
    }

    /// Asserts the server closes the connection (EOF or reset) with no
    /// further frame, within [`TIMEOUT`].
    pub fn expect_closed(&mut self) {
        if let Some(frame) = self.frame_within(TIMEOUT) {
            panic!("expected close, got {frame}");
        }
    }

    /// Asserts nothing arrives for [`QUIET`] (and the connection stays open).
    pub fn expect_silence(&mut self) {
        assert!(self.buf.is_empty(), "unread bytes pending");
        self.stream.set_read_timeout(Some(QUIET)).unwrap();
        let mut chunk = [0u8; 64];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed"),
            Ok(n) => panic!("unexpected {n} bytes: {:?}", &chunk[..n]),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "read error {e}"
            ),
        }
    }

    /// OI as an exhibitor; returns the id from the OK.
    pub fn identify_exhibitor(&mut self) -> ClientId {
        self.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
        let ok = self.expect_frame();
        assert_eq!(
            (ok.kind, ok.origin, ok.seq),
            (Kind::Ok, SERVER_ID, 0),
            "{ok}"
        );
        ok.dest
    }

    /// OI as an emitter (`origin`: 1, or an exhibitor id to pair with).
    pub fn identify_emitter(&mut self, origin: ClientId) -> ClientId {
        self.send_frame(&Frame::bare(Kind::Oi, origin, SERVER_ID, 0));
        let ok = self.expect_frame();
        assert_eq!(
            (ok.kind, ok.origin, ok.seq),
            (Kind::Ok, SERVER_ID, 0),
            "{ok}"
        );
        ok.dest
    }
}

/// A deterministic byte generator (xorshift64*), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// 1 to `max` random bytes.
    pub fn chunk(&mut self, max: usize) -> Vec<u8> {
        let n = 1 + (self.next() % max as u64) as usize;
        self.bytes(n)
    }
}
