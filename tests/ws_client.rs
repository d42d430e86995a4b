//! A hand-driven WebSocket connection to the server's `/ws`, for byte-exact
//! tests: it writes the upgrade request and WebSocket frames itself (masked,
//! as a client must; fragments, pings, closes and broken frames at will) and
//! reads the server's frames with deadlines, so a test sees every byte the
//! server sends. Also plain HTTP exchanges read to the end of the stream.

#![allow(dead_code)]

use super::frames::{assert_bytes, hex};
use super::raw_client::{TIMEOUT, assigned_id, expect_silence_on};
use super::read_to_end_within;
use evchat::proto::{ClientId, Frame, Kind, SERVER_ID};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;

/// The sample key of RFC 6455 (section 1.3) and the accept value the RFC
/// gives for it: the answer is checked against the standard, not against
/// the server's own derivation.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// The masking key of every frame this client sends (RFC 6455's example).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The upgrade request for `/ws` on `addr`, with `extra` header lines
/// (each without its CRLF).
pub fn upgrade_request(addr: SocketAddr, extra: &[&str]) -> String {
    let mut head = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// The whole 101 answer the server must give to [`upgrade_request`].
pub fn switching_protocols() -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {WS_ACCEPT}\r\n\r\n"
    )
}

/// A client-to-server frame: masked with [`MASK`], `fin` and `opcode` as
/// given, the payload length in its shortest form.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    push_len(&mut out, 0x80, payload.len() as u64);
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// The bytes of a server-to-client frame (unmasked, final), written out by
/// hand from RFC 6455 section 5.2.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    push_len(&mut out, 0, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

fn push_len(out: &mut Vec<u8>, mask_bit: u8, len: u64) {
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as u64 {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// One frame the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl WsFrame {
    /// The status code of a close frame.
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "close frame without a code");
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }
}

/// A WebSocket connection driven by hand.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Ws {
    /// Connects and upgrades; the answer must be exactly the 101.
    pub fn connect(addr: SocketAddr) -> Ws {
        Ws::connect_with(addr, &[])
    }

    /// Connects and upgrades with `extra` request header lines.
    pub fn connect_with(addr: SocketAddr, extra: &[&str]) -> Ws {
        let mut ws = Ws::over(TcpStream::connect(addr).unwrap());
        ws.send_raw(upgrade_request(addr, extra).as_bytes());
        ws.expect_upgraded();
        ws
    }

    /// Wraps a connected stream that has not upgraded yet.
    pub fn over(stream: TcpStream) -> Ws {
        stream.set_nodelay(true).unwrap();
        Ws {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads the answer head and asserts it is exactly the 101.
    pub fn expect_upgraded(&mut self) {
        let want = switching_protocols();
        let head = self.read_head();
        assert_eq!(head, want, "upgrade answer");
    }

    /// The HTTP answer head (through the blank line); what follows stays
    /// buffered.
    fn read_head(&mut self) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                return String::from_utf8(head).expect("answer head is text");
            }
            assert!(
                self.fill(deadline),
                "closed before the answer head ended: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    /// Reads more into the buffer; false on end of stream (or reset).
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "nothing from the server within {TIMEOUT:?}"
        );
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "nothing from the server within {TIMEOUT:?} (have {} bytes)",
                    self.buf.len()
                )
            }
            Err(e) => panic!("read: {e}"),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Sends one frame (masked).
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_raw(&client_frame(fin, opcode, payload));
    }

    /// Sends one final binary frame: one whole message.
    pub fn send_binary(&mut self, payload: &[u8]) {
        self.send_frame(true, OP_BINARY, payload);
    }

    /// Sends a protocol frame as one binary message.
    pub fn send_proto(&mut self, frame: &Frame) {
        self.send_binary(&frame.to_bytes());
    }

    /// The next frame the server sent, or None when it closed the stream.
    pub fn next_frame(&mut self) -> Option<WsFrame> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(frame) = self.parse_buffered() {
                return Some(frame);
            }
            if !self.fill(deadline) {
                assert!(
                    self.buf.is_empty(),
                    "closed mid-frame with {} bytes",
                    self.buf.len()
                );
                return None;
            }
        }
    }

    fn parse_buffered(&mut self) -> Option<WsFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        assert_eq!(b[0] & 0x70, 0, "reserved bits set by the server");
        assert_eq!(b[1] & 0x80, 0, "the server masked a frame");
        let (len, at) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if b.len() < at + len {
            return None;
        }
        let frame = WsFrame {
            fin: b[0] & 0x80 != 0,
            opcode: b[0] & 0x0f,
            payload: b[at..at + len].to_vec(),
        };
        self.buf.drain(..at + len);
        Some(frame)
    }

    /// The next frame; fails the test if the server closed the stream.
    pub fn expect_frame(&mut self) -> WsFrame {
        self.next_frame()
            .expect("stream closed, WebSocket frame expected")
    }

    /// The next `n` bytes exactly as the server sent them.
    pub fn expect_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        while self.buf.len() < n {
            assert!(
                self.fill(deadline),
                "closed after {} of {n} bytes",
                self.buf.len()
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Asserts the next bytes on the wire are exactly one final binary
    /// message carrying `payload`.
    pub fn expect_binary_exact(&mut self, payload: &[u8]) {
        let want = server_frame(OP_BINARY, payload);
        assert_bytes(&want, &self.expect_bytes(want.len()));
    }

    /// The protocol frame carried by the next message (which must be one
    /// final binary frame).
    pub fn expect_proto(&mut self) -> Frame {
        let frame = self.expect_frame();
        assert!(
            frame.fin && frame.opcode == OP_BINARY,
            "expected a binary message, got {frame:?}"
        );
        let mut bytes = bytes::BytesMut::from(&frame.payload[..]);
        let decoded = Frame::decode(&mut bytes)
            .unwrap()
            .expect("a whole protocol frame");
        assert!(bytes.is_empty(), "more than one frame in a message");
        decoded
    }

    /// Asserts the server's next frame is a close with `code`, followed by
    /// the end of the stream.
    pub fn expect_close(&mut self, code: u16) {
        let frame = self.expect_frame();
        assert_eq!(
            (frame.opcode, frame.close_code()),
            (OP_CLOSE, code),
            "close frame: {frame:?} reason {:?}",
            String::from_utf8_lossy(frame.payload.get(2..).unwrap_or_default())
        );
        self.expect_end();
    }

    /// Asserts the server's next frame is a close with `code` and the
    /// human-readable `reason` (the page shows it), then the end of the stream.
    pub fn expect_close_saying(&mut self, code: u16, reason: &str) {
        let frame = self.expect_frame();
        assert_eq!(
            (frame.opcode, frame.close_code()),
            (OP_CLOSE, code),
            "close frame: {frame:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&frame.payload[2..]),
            reason,
            "close reason"
        );
        self.expect_end();
    }

    /// The close code the server sends next, then the end of the stream.
    pub fn expect_any_close(&mut self) -> u16 {
        let frame = self.expect_frame();
        let code = frame.close_code();
        self.expect_end();
        code
    }

    /// Asserts the stream ends with nothing more.
    pub fn expect_end(&mut self) {
        if let Some(frame) = self.next_frame() {
            panic!("expected the end of the stream, got {frame:?}");
        }
    }

    /// Asserts nothing arrives for [`QUIET`] and the stream stays open.
    pub fn expect_silence(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unread bytes pending: {}",
            hex(&self.buf)
        );
        expect_silence_on(&self.stream);
    }

    /// OI with `origin` (0: exhibitor); returns the id from the OK, which
    /// must come as exactly one binary message.
    pub fn identify(&mut self, origin: ClientId) -> ClientId {
        self.send_proto(&Frame::bare(Kind::Oi, origin, SERVER_ID, 0));
        assigned_id(&self.expect_proto())
    }
}

/// One HTTP answer, read to the end of the stream.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// The value of header `name` (case-insensitive); fails if absent or
    /// repeated.
    pub fn header(&self, name: &str) -> &str {
        let mut found = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let (_, value) = found
            .next()
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers));
        assert!(found.next().is_none(), "{name} repeated");
        value
    }
}

/// Sends `request` on a new connection and reads until the server closes
/// the stream: the answer must be one HTTP response whose body is exactly
/// `Content-Length` bytes, with nothing after it.
pub fn http_exchange(addr: SocketAddr, request: &[u8]) -> HttpAnswer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    let all = read_to_end_within(&mut stream, TIMEOUT);
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer head in {:?}", String::from_utf8_lossy(&all)));
    let head = std::str::from_utf8(&all[..end]).expect("head is text");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.to_string(), value.to_string())
        })
        .collect();
    let answer = HttpAnswer {
        status_line,
        headers,
        body: all[end + 4..].to_vec(),
    };
    let length: usize = answer.header("Content-Length").parse().unwrap();
    assert_eq!(length, answer.body.len(), "Content-Length vs body");
    answer
}
