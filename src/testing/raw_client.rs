//! A hand-driven connection to the server for byte-exact tests: send frames
//! or raw bytes, read frames with deadlines. Shared by the integration tests
//! (through `util`) and the server's unit tests, so there is one such client.

use crate::proto::{ClientId, Frame, Kind, SERVER_ID};
use bytes::BytesMut;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long any single expected event may take before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long to watch for something that must *not* happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A hand-driven connection to the server, for byte-exact tests.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::over(TcpStream::connect(addr).unwrap())
    }

    /// Wraps a stream already connected to the server.
    pub fn over(stream: TcpStream) -> Raw {
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
                // A signal to the test process (a child's exit, a profiler)
                // ends the read early: read again, with what is left.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
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

    /// A frame (`Some(Some)`) or the close (`Some(None)`) if either has
    /// arrived already; `None` if nothing has yet. Never blocks.
    pub fn try_frame(&mut self) -> Option<Option<Frame>> {
        if let Some(frame) = Frame::decode(&mut self.buf).unwrap() {
            return Some(Some(frame));
        }
        self.stream.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 65536];
        let got = match self.stream.read(&mut chunk) {
            Ok(0) => Some(None),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Frame::decode(&mut self.buf).unwrap().map(Some)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                None
            }
            Err(e) => panic!("read: {e}"),
        };
        self.stream.set_nonblocking(false).unwrap();
        got
    }

    /// Whether any bytes have arrived (of any frame, extension frames
    /// included) and not yet been read. Never blocks.
    pub fn bytes_ready(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        self.stream.set_nonblocking(true).unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => panic!("read: {e}"),
        }
        self.stream.set_nonblocking(false).unwrap();
        !self.buf.is_empty()
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
            let got = match self.stream.read(&mut chunk) {
                Ok(got) => got,
                // A signal meant for another test's child: read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // The read timeout (the deadline's rest) ran out: the
                // assertion above says so, with the count.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue;
                }
                Err(e) => panic!("read: {e}"),
            };
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
        expect_silence_on(&self.stream);
    }

    /// OI as an exhibitor; returns the id from the OK.
    pub fn identify_exhibitor(&mut self) -> ClientId {
        self.identify(0)
    }

    /// OI as an emitter (`origin`: 1, or an exhibitor id to pair with).
    pub fn identify_emitter(&mut self, origin: ClientId) -> ClientId {
        self.identify(origin)
    }

    fn identify(&mut self, origin: ClientId) -> ClientId {
        self.send_frame(&Frame::bare(Kind::Oi, origin, SERVER_ID, 0));
        assigned_id(&self.expect_frame())
    }
}

/// The id `ok` assigns (its destination), failing the test unless it is the
/// server's OK to an OI. The WebSocket test client checks its OK here too.
pub fn assigned_id(ok: &Frame) -> ClientId {
    assert_eq!(
        (ok.kind, ok.origin, ok.seq),
        (Kind::Ok, SERVER_ID, 0),
        "{ok}"
    );
    ok.dest
}

/// Asserts nothing arrives on `stream` for [`QUIET`] and it stays open.
/// The WebSocket test client, on the same kind of stream, waits here too.
pub fn expect_silence_on(mut stream: &TcpStream) {
    let deadline = Instant::now() + QUIET;
    let mut chunk = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => panic!("connection closed"),
            Ok(n) => panic!("unexpected {n} bytes: {:02x?}", &chunk[..n]),
            // A signal meant for another test's child: wait out the rest.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "read error {e}"
                );
                return;
            }
        }
    }
}
