//! The web transport, below the connection: telling HTTP from the binary
//! protocol on a new connection, the HTTP request head (parsed with
//! `httparse`) and the answer to it, and WebSocket framing (tungstenite's
//! `WebSocketContext`, driven from the connection's own buffers). Each binary
//! WebSocket message carries exactly one protocol frame; this module turns
//! messages into protocol bytes and frames into messages, and knows nothing
//! of ids or rules. PROTOCOL.md ("WebSocket transport") is the contract.

pub mod page;

use crate::proto::{FrameView, MAX_FRAME_LEN};
use bytes::BytesMut;
use std::fmt;
use std::io::{self, Read, Write};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

/// A request head larger than this is refused (the connection is closed).
pub const MAX_HEAD_LEN: usize = 8 * 1024;
/// Longest method name taken for the start of an HTTP request line.
const MAX_METHOD_LEN: usize = 7;
/// Headers parsed per request; a browser's upgrade sends about a dozen.
const MAX_HEADERS: usize = 32;
/// tungstenite's read buffer per WebSocket connection: small, so an idle
/// browser costs little; larger messages grow it while they arrive.
const WS_READ_BUFFER: usize = 1024;
/// tungstenite queues only its own control frames (pong, close); data frames
/// go straight into the connection's output.
const WS_MAX_WRITE_BUFFER: usize = 1024;

/// What the first bytes of a connection say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// The binary protocol (every frame starts with byte 0) or anything that
    /// is not an HTTP request line: the binary path judges it.
    Binary,
    /// An HTTP request line: a method in capitals, then a space.
    Http,
    /// Too few bytes to tell yet.
    Undecided,
}

/// Tells HTTP from the binary protocol by the first bytes. A protocol frame
/// begins with `00` (its type is a big-endian u16 below 256), so any
/// capital letter first means "not a valid frame"; only a capitalised word
/// followed by a space is taken for HTTP, everything else stays binary.
pub fn sniff(first: &[u8]) -> Sniff {
    for (i, &b) in first.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        match b {
            b'A'..=b'Z' if i < MAX_METHOD_LEN => {}
            b' ' if i > 0 => return Sniff::Http,
            _ => return Sniff::Binary,
        }
    }
    if first.len() > MAX_METHOD_LEN {
        Sniff::Binary
    } else {
        Sniff::Undecided
    }
}

/// Why a request head could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head over {MAX_HEAD_LEN} bytes")]
    TooLarge,
    #[error("malformed request head: {0}")]
    Malformed(String),
}

/// The parts of an HTTP request the server acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, without its query string.
    pub path: String,
    /// `HTTP/1.x`: the minor version.
    pub version: u8,
    pub host: Option<String>,
    pub origin: Option<String>,
    pub upgrade: Option<String>,
    pub connection: Option<String>,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
}

/// The request head at the start of `buf`, and the bytes it takes;
/// `Ok(None)` while it is incomplete and still within [`MAX_HEAD_LEN`].
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_LEN => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > MAX_HEAD_LEN {
        return Err(HeadError::TooLarge);
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let target = req.path.unwrap_or("/");
    let request = Request {
        method: req.method.unwrap_or("").to_string(),
        path: target.split('?').next().unwrap_or("/").to_string(),
        version: req.version.unwrap_or(0),
        host: header("host"),
        origin: header("origin"),
        upgrade: header("upgrade"),
        connection: header("connection"),
        ws_key: header("sec-websocket-key"),
        ws_version: header("sec-websocket-version"),
    };
    Ok(Some((request, len)))
}

/// Who may open a WebSocket from a browser page.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Origins allowed besides the server's own (`https://chat.example`).
    pub allowed_origins: Vec<String>,
}

/// What the server does with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Send these bytes, then close.
    Close { status: u16, bytes: Vec<u8> },
    /// Send these bytes (the 101), then speak WebSocket.
    Upgrade { bytes: Vec<u8> },
}

impl Answer {
    /// The bytes that go on the wire.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Answer::Close { bytes, .. } | Answer::Upgrade { bytes } => bytes,
        }
    }
}

/// Decides the answer to `req`: the page's files, the WebSocket upgrade on
/// `/ws`, or an error status.
pub fn answer(req: &Request, config: &WebConfig) -> Answer {
    if req.method != "GET" {
        return status(405, "only GET is served\n", &[("Allow", "GET")]);
    }
    if req.path == "/ws" {
        return upgrade(req, config);
    }
    match page::asset(&req.path) {
        Some(asset) => reply(200, asset.content_type, asset.body, &[]),
        None => status(404, "not found\n", &[]),
    }
}

fn upgrade(req: &Request, config: &WebConfig) -> Answer {
    if req.version != 1 {
        return status(400, "WebSocket needs HTTP/1.1\n", &[]);
    }
    let has_token = |value: &Option<String>, token: &str| {
        value.as_deref().is_some_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    };
    if !has_token(&req.upgrade, "websocket") || !has_token(&req.connection, "upgrade") {
        return status(
            426,
            "this path speaks WebSocket only\n",
            &[("Upgrade", "websocket")],
        );
    }
    match req.ws_version.as_deref() {
        None => return status(400, "missing Sec-WebSocket-Version\n", &[]),
        Some("13") => {}
        Some(_) => {
            return status(
                426,
                "unsupported WebSocket version\n",
                &[("Sec-WebSocket-Version", "13")],
            );
        }
    }
    let Some(key) = req.ws_key.as_deref().filter(|k| is_valid_ws_key(k)) else {
        return status(400, "missing or malformed Sec-WebSocket-Key\n", &[]);
    };
    if let Some(origin) = &req.origin
        && !origin_allowed(origin, req.host.as_deref(), config)
    {
        return status(403, "cross-origin WebSocket refused\n", &[]);
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let bytes = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Answer::Upgrade {
        bytes: bytes.into_bytes(),
    }
}

/// A key is the base64 form of 16 bytes: 22 characters and `==`.
fn is_valid_ws_key(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.len() == 24
        && bytes.ends_with(b"==")
        && bytes[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        // The last character before the padding carries 2 bits: the
        // other 4 must be zero.
        && b"AQgw".contains(&bytes[21])
}

/// An `Origin` passes when its host (and port) is the request's `Host`, or
/// when it is listed in `--allow-origin`.
fn origin_allowed(origin: &str, host: Option<&str>, config: &WebConfig) -> bool {
    let origin = origin.trim_end_matches('/');
    if config
        .allowed_origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    match (authority, host) {
        (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// The headers every answer carries: no caching, no sniffing, and a
/// content policy that allows the page's own origin only (no inline code).
const COMMON_HEADERS: &str = "Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
     Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'\r\nConnection: close\r\n";

/// The answer to a head that cannot be parsed.
pub fn bad_request() -> Answer {
    status(400, "malformed request\n", &[])
}

fn status(code: u16, body: &str, extra: &[(&str, &str)]) -> Answer {
    reply(code, "text/plain; charset=utf-8", body.as_bytes(), extra)
}

fn reply(code: u16, content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> Answer {
    let mut head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{COMMON_HEADERS}",
        reason_phrase(code),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    Answer::Close {
        status: code,
        bytes,
    }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        _ => "Error",
    }
}

/// Why a WebSocket connection must close from the server's side while
/// reading; each maps to the close code sent (RFC 6455, 7.4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFailure {
    /// A binary message that is not exactly one protocol frame, or a
    /// breach of WebSocket framing (unmasked frame, bad opcode, ...).
    Protocol(String),
    /// A text message: the protocol is binary.
    Text,
    /// A frame or message over the largest protocol frame.
    TooBig,
}

impl WsFailure {
    pub fn close_code(&self) -> u16 {
        match self {
            WsFailure::Protocol(_) => 1002,
            WsFailure::Text => 1003,
            WsFailure::TooBig => 1009,
        }
    }
}

impl fmt::Display for WsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsFailure::Protocol(why) => write!(f, "WebSocket protocol error: {why}"),
            WsFailure::Text => f.write_str("WebSocket text message (the protocol is binary)"),
            WsFailure::TooBig => f.write_str("WebSocket message over the largest protocol frame"),
        }
    }
}

/// What feeding bytes to a WebSocket found.
#[derive(Debug, PartialEq, Eq)]
pub enum WsStatus {
    /// Every whole message went into the protocol input.
    Open,
    /// The peer sent its close frame (the answer is queued) or is gone.
    Closed,
    /// An answer of the WebSocket's own (a pong) found the output at its
    /// cap: the client does not read what it is sent.
    Full,
    /// The connection must close with this failure.
    Failed(WsFailure),
}

/// One WebSocket connection's framing state.
pub struct WebSocket {
    context: WebSocketContext,
}

impl Default for WebSocket {
    fn default() -> WebSocket {
        WebSocket::new()
    }
}

impl WebSocket {
    pub fn new() -> WebSocket {
        let config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(0)
            .max_write_buffer_size(WS_MAX_WRITE_BUFFER)
            .max_frame_size(Some(MAX_FRAME_LEN))
            .max_message_size(Some(MAX_FRAME_LEN))
            .accept_unmasked_frames(false);
        WebSocket {
            context: WebSocketContext::new(Role::Server, Some(config)),
        }
    }

    /// Takes `bytes` from the socket: each whole binary message, checked to
    /// be exactly one protocol frame, is appended to `frames`; answers to
    /// pings and closes go to `output` while it stays within `max_output`.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        frames: &mut BytesMut,
        output: &mut BytesMut,
        max_output: usize,
    ) -> WsStatus {
        let mut pipe = Pipe {
            input: bytes,
            output,
            max_output,
        };
        let status = loop {
            match self.context.read(&mut pipe) {
                Ok(Message::Binary(payload)) => {
                    if let Err(failure) = take_frame(&payload, frames) {
                        break WsStatus::Failed(failure);
                    }
                }
                Ok(Message::Text(_)) => break WsStatus::Failed(WsFailure::Text),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Ok(Message::Close(_)) => break WsStatus::Closed,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    break WsStatus::Open;
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => break WsStatus::Closed,
                Err(WsError::Capacity(_)) => break WsStatus::Failed(WsFailure::TooBig),
                Err(WsError::Utf8(_)) => break WsStatus::Failed(WsFailure::Text),
                Err(e) => break WsStatus::Failed(WsFailure::Protocol(e.to_string())),
            }
        };
        // Pongs and the answer to a close wait in tungstenite until flushed;
        // a pong that cannot go out is a client that sends pings and never
        // reads, cut off like any slow consumer.
        match self.context.flush(&mut pipe) {
            Err(WsError::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock && status == WsStatus::Open =>
            {
                WsStatus::Full
            }
            _ => status,
        }
    }

    /// Queues the close frame with `code` (tungstenite's state then refuses
    /// to send more), within `max_output`.
    pub fn close(&mut self, code: u16, reason: &str, output: &mut BytesMut, max_output: usize) {
        let mut pipe = Pipe {
            input: &[],
            output,
            max_output,
        };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.chars().take(60).collect::<String>().into(),
        };
        let _ = self.context.close(&mut pipe, Some(frame));
    }

    /// Whether data frames may still be sent (no close sent or received).
    pub fn can_send(&self) -> bool {
        self.context.can_write()
    }
}

/// Takes one binary message's payload, which must be exactly one frame. A
/// frame of unknown type is passed on whole: the router answers it as on
/// TCP (ERRO, then close).
fn take_frame(payload: &[u8], frames: &mut BytesMut) -> Result<(), WsFailure> {
    match FrameView::parse(payload) {
        Ok(Some((_, len))) if len == payload.len() => {}
        Ok(Some((_, len))) => {
            return Err(WsFailure::Protocol(format!(
                "message of {} bytes carries a {len}-byte frame and more",
                payload.len()
            )));
        }
        Ok(None) => {
            return Err(WsFailure::Protocol(format!(
                "message of {} bytes is not a whole frame",
                payload.len()
            )));
        }
        Err(_) => {}
    }
    frames.extend_from_slice(payload);
    Ok(())
}

/// The WebSocket header of a server-to-client binary message of `len`
/// bytes (unmasked, final, opcode 2), appended to `out`. Data frames are
/// framed here rather than through tungstenite, so that a forwarded frame
/// is encoded straight into the output as on TCP, with no copy in between.
pub fn put_binary_header(len: usize, out: &mut BytesMut) {
    const FIN_BINARY: u8 = 0x82;
    if len < 126 {
        out.extend_from_slice(&[FIN_BINARY, len as u8]);
    } else if len <= u16::MAX as usize {
        out.extend_from_slice(&[FIN_BINARY, 126]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[FIN_BINARY, 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Bytes [`put_binary_header`] writes for a message of `len` bytes.
pub fn binary_header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// The stream tungstenite reads from and writes to: what the socket gave
/// this turn, and the connection's output, which never grows past its cap
/// (a write that would is refused as "would block", and tungstenite keeps
/// the frame in its own bounded buffer).
struct Pipe<'a> {
    input: &'a [u8],
    output: &'a mut BytesMut,
    max_output: usize,
}

impl Read for Pipe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Pipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.output.len() + buf.len() > self.max_output {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_takes_only_a_capitalised_word_and_a_space_for_http() {
        assert_eq!(sniff(b""), Sniff::Undecided);
        assert_eq!(sniff(b"\x00"), Sniff::Binary);
        assert_eq!(sniff(b"G"), Sniff::Undecided);
        assert_eq!(sniff(b"GE"), Sniff::Undecided);
        assert_eq!(sniff(b"GET "), Sniff::Http);
        assert_eq!(sniff(b"POST /"), Sniff::Http);
        assert_eq!(sniff(b"OPTIONS "), Sniff::Http);
        assert_eq!(sniff(b"Get "), Sniff::Binary);
        assert_eq!(sniff(b" GET"), Sniff::Binary);
        assert_eq!(sniff(b"GETTINGS"), Sniff::Binary);
        assert_eq!(sniff(b"GET\x00"), Sniff::Binary);
    }

    #[test]
    fn ws_keys_are_sixteen_bytes_in_base64() {
        assert!(is_valid_ws_key("dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_valid_ws_key("dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_ws_key("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_valid_ws_key("dGhlIHNhbXBsZSBub25j*Q=="));
        assert!(!is_valid_ws_key(""));
    }

    #[test]
    fn binary_headers_use_the_shortest_length_form() {
        for (len, want) in [
            (0, vec![0x82, 0]),
            (125, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 0xff, 0xff]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = BytesMut::new();
            put_binary_header(len, &mut out);
            assert_eq!(&out[..], &want[..], "{len}");
            assert_eq!(binary_header_len(len), want.len());
        }
    }
}
