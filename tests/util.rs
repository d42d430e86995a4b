//! Test harness: spawns the real binaries (found through `CARGO_BIN_EXE_*`),
//! reads their output lines with timeouts, talks to the server over raw
//! sockets and WebSocket (`evchat::testing::raw_client`, `ws_client.rs`),
//! gives each test that needs one a fresh directory, and reserves the ports
//! a test must keep (one where nothing listens, one a server restarts on)
//! so that no other process takes them. The waits the tests share are here,
//! once each, and every one has a deadline; where no read can see the
//! awaited state (a child's exit, a count in /proc) it is polled, never
//! slept for.

#![allow(dead_code)]

use evchat::proto::ClientId;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

#[path = "frames.rs"]
mod frames;
use evchat::testing::raw_client;
pub use frames::*;
pub use raw_client::{QUIET, Raw, TIMEOUT};
#[path = "ws_client.rs"]
mod ws_client;
pub use ws_client::*;

pub fn bin(name: &str) -> &'static str {
    match name {
        "server" => env!("CARGO_BIN_EXE_server"),
        "emitter" => env!("CARGO_BIN_EXE_emitter"),
        "exhibitor" => env!("CARGO_BIN_EXE_exhibitor"),
        "evchat" => env!("CARGO_BIN_EXE_evchat"),
        other => panic!("no binary {other}"),
    }
}

/// Where a test sends a tool's standard output to see how it takes a
/// write error.
pub enum BrokenOutput {
    /// A pipe whose reader is gone before the write (`| head -0`).
    ClosedPipe,
    /// `/dev/full`: every write fails with ENOSPC.
    FullDisk,
}

/// Runs `evchat ARGS` to its end with stdout to `output`; returns its exit
/// code and its stderr.
pub fn evchat_into(output: BrokenOutput, args: &[&str]) -> (Option<i32>, String) {
    let stdout = match output {
        BrokenOutput::ClosedPipe => {
            let (reader, writer) = std::io::pipe().unwrap();
            drop(reader);
            Stdio::from(writer)
        }
        BrokenOutput::FullDisk => Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        ),
    };
    let done = Command::new(bin("evchat"))
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr).into_owned();
    (done.status.code(), stderr)
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

    /// The next line, which must start with `prefix`; returns the rest.
    pub fn expect_prefixed(&self, prefix: &str) -> String {
        let line = self.expect();
        match line.strip_prefix(prefix) {
            Some(rest) => rest.to_string(),
            None => panic!("{}: {line:?} does not start with {prefix:?}", self.name),
        }
    }

    /// Skips lines until one for which `wanted` holds (described by
    /// `what`), all within `within`; returns the lines skipped and that one.
    pub fn skip_until(
        &self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> (Vec<String>, String) {
        let deadline = Instant::now() + within;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if wanted(&line) => return (skipped, line),
                Ok(line) => skipped.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "{}: no {what} within {within:?}; saw {skipped:?}",
                        self.name
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: output ended before {what}; saw {skipped:?}", self.name)
                }
            }
        }
    }

    /// Takes the lines that have arrived so far, without waiting for more.
    pub fn drain(&self) -> Vec<String> {
        self.rx.try_iter().collect()
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
        Proc::spawn_program(bin(name), name, args)
    }

    /// Spawns another program (e.g. `sh` around one of ours).
    pub fn spawn_with(program: &str, args: &[&str]) -> Proc {
        Proc::spawn_program(program, program, args)
    }

    fn spawn_program(program: &str, name: &str, args: &[&str]) -> Proc {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::piped());
        Proc::spawn_command(command, name)
    }

    /// Spawns a `command` the test set up itself (a `pre_exec`, a limit)
    /// with its output read into [`Lines`]; its stdin is as the command
    /// says (piped, from the other constructors).
    pub fn spawn_command(mut command: Command, name: &str) -> Proc {
        let mut child = command
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

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits for the process to exit; fails the test after [`TIMEOUT`].
    pub fn wait(&mut self) -> ExitStatus {
        wait_for_exit(&mut self.child, &self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `done` every 10 ms until it holds; fails the test after
/// [`TIMEOUT`]. For states no read can observe: a child's exit, a count the
/// server keeps in /proc.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    assert!(holds_within_timeout(done), "{what}: not within {TIMEOUT:?}");
}

/// Waits for `child` to exit; after [`TIMEOUT`] kills it and fails the test.
pub fn wait_for_exit(child: &mut Child, name: &str) -> ExitStatus {
    let mut status = None;
    holds_within_timeout(|| {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    match status {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{name} did not exit within {TIMEOUT:?}");
        }
    }
}

fn holds_within_timeout(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        // Polling, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A fresh directory for one test (a server's `--history`, a log the store
/// tests write), emptied first in case an earlier run left it, and removed
/// when dropped: declared before the processes that use it, it outlives them.
/// `name` must be unique among the tests, which run in one process.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("evchat-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary directory")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port held for one test: bound, never listening. Connections
/// to it are refused, and it stays the test's: the kernel hands a bound port
/// to no `bind(port 0)` and no outgoing connection, so no other process can
/// take it in the meantime, as one could between closing a listener and
/// using its port again. Both sockets set SO_REUSEADDR and this one never
/// listens, which is what lets a `server` (it sets SO_REUSEADDR too) listen
/// on the port, stop, and listen on it again ([`Server::start_on`]).
pub struct ReservedPort {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket
            .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        ReservedPort {
            _socket: socket,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "127.0.0.1:port", as the clients take it.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }
}

/// The address a starting `server` prints on its first line.
pub fn listening_addr(stdout: &Lines) -> SocketAddr {
    stdout.expect_prefixed("listening on ").parse().unwrap()
}

/// A running `server`.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Server {
    /// Starts `server 0 --bind 127.0.0.1 EXTRA...` on a port the kernel
    /// picks, and reads that port.
    pub fn start(extra: &[&str]) -> Server {
        Server::listen("0", extra)
    }

    /// Starts `server PORT --bind 127.0.0.1 EXTRA...` on the reserved
    /// port, for a test that stops the server and starts it again where its
    /// clients will look for it.
    pub fn start_on(port: &ReservedPort, extra: &[&str]) -> Server {
        let server = Server::listen(&port.addr().port().to_string(), extra);
        assert_eq!(server.addr, port.addr(), "server not on the reserved port");
        server
    }

    fn listen(port: &str, extra: &[&str]) -> Server {
        let mut args = vec![port, "--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        let proc = Proc::spawn("server", &args);
        let addr = listening_addr(&proc.stdout);
        Server { proc, addr }
    }

    /// "127.0.0.1:port", as the clients take it.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    pub fn exhibitor(&self) -> (Proc, ClientId) {
        let p = Proc::spawn("exhibitor", &[&self.target()]);
        let id = p.stdout.expect_prefixed("exhibitor ").parse().unwrap();
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
        let rest = p.stdout.expect_prefixed("emitter ");
        let id = rest.split(' ').next().unwrap().parse().unwrap();
        if let Some(p) = pair {
            assert_eq!(rest, format!("{id} paired with exhibitor {p}"));
        }
        (p, id)
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.addr)
    }
}

/// Reads exactly `want.len()` bytes from `raw` and asserts they are `want`.
pub fn expect_exact(raw: &mut Raw, want: &[u8]) {
    assert_bytes(want, &raw.expect_bytes(want.len()));
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

/// Reads until the peer closes (EOF or reset); fails after `wait`.
pub fn read_to_end_within(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut all = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "not closed within {wait:?} ({} bytes read)",
            all.len()
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("not closed within {wait:?} ({} bytes read)", all.len())
            }
            Err(e) => panic!("read: {e}"),
        }
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
