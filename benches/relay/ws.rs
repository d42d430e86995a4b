//! WebSocket (RFC 6455) as a client speaks it, for the `*-ws` targets: the
//! HTTP upgrade, masked client frames, and unwrapping the server's frames.
//!
//! Each target's own protocol code runs unchanged inside: what it reads is
//! the payload of the server's binary frames, concatenated (NATS and MQTT
//! treat WebSocket as a byte stream, and a message may span frames); what it
//! writes goes through a [`Sink`], one WebSocket message per protocol
//! message (evchat requires exactly that: one frame per message).
//!
//! The hot path allocates nothing: a frame's payload is parsed in place when
//! it arrived whole; only the tail of a protocol message cut by a read or by
//! a frame boundary is copied to the connection's `inner` buffer, which keeps
//! its capacity. Client frames are masked with a key that changes every
//! frame (a xorshift sequence: unpredictable enough for a benchmark on
//! loopback, and the server does the same unmasking work as for any key).

use crate::flow::Ctx;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const FIN: u8 = 0x80;
const MASKED: u8 = 0x80;
/// Longest control-frame payload (RFC 6455, 5.5).
const MAX_CONTROL: usize = 125;
/// Longest data frame this client accepts from a server; far above anything
/// the workloads produce, it only keeps a corrupt length from being trusted.
const MAX_FRAME: u64 = 1 << 30;

/// Where protocol code puts what it sends: whole messages, given in parts.
pub trait Sink {
    fn message(&mut self, parts: &[&[u8]]);
}

/// Plain TCP: the parts go straight into the output.
impl Sink for Vec<u8> {
    #[inline(always)]
    fn message(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.extend_from_slice(part);
        }
    }
}

/// The masking keys of one connection.
#[derive(Debug, Clone)]
pub struct Masker(u32);

impl Masker {
    pub fn new(seed: u32) -> Masker {
        // xorshift32 must not start at zero.
        Masker(seed | 1)
    }

    #[inline]
    fn next_key(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_ne_bytes()
    }
}

/// Appends one final binary frame carrying `parts`, masked with `key`.
#[inline]
pub fn put_message(out: &mut Vec<u8>, key: [u8; 4], parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len <= MAX_CONTROL {
        out.extend_from_slice(&[FIN | OP_BINARY, MASKED | len as u8]);
    } else if len <= u16::MAX as usize {
        out.extend_from_slice(&[FIN | OP_BINARY, MASKED | 126]);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.extend_from_slice(&[FIN | OP_BINARY, MASKED | 127]);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    put_masked(out, key, parts);
}

/// Appends the masking key, then `parts` masked with it.
#[inline]
fn put_masked(out: &mut Vec<u8>, key: [u8; 4], parts: &[&[u8]]) {
    out.extend_from_slice(&key);
    let start = out.len();
    for part in parts {
        out.extend_from_slice(part);
    }
    apply_mask(&mut out[start..], key);
}

/// XORs `buf` with `key` repeated (masking and unmasking are the same).
#[inline]
fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = buf.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(key) {
        *b ^= k;
    }
}

/// The output of a WebSocket connection: one masked frame per message.
pub struct WsSink<'a> {
    out: &'a mut Vec<u8>,
    masker: &'a mut Masker,
}

impl Sink for WsSink<'_> {
    #[inline]
    fn message(&mut self, parts: &[&[u8]]) {
        put_message(self.out, self.masker.next_key(), parts);
    }
}

/// A frame header from the server.
#[derive(Debug, Clone, Copy)]
struct FrameHead {
    fin: bool,
    opcode: u8,
    len: usize,
    /// Bytes of the header itself (2, 4 or 10: servers do not mask).
    head_len: usize,
}

/// The frame header at the start of `buf`; `None` until it is all there.
#[inline]
fn frame_head(buf: &[u8]) -> Result<Option<FrameHead>, String> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(format!(
            "WebSocket frame with RSV bits {:#x} (no extension was negotiated)",
            b0 & 0x70
        ));
    }
    if b1 & MASKED != 0 {
        return Err("masked WebSocket frame from the server".into());
    }
    let (len, head_len) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    if len > MAX_FRAME {
        return Err(format!("WebSocket frame of {len} bytes"));
    }
    Ok(Some(FrameHead {
        fin: b0 & FIN != 0,
        opcode: b0 & 0x0f,
        len: len as usize,
        head_len,
    }))
}

/// Why a control frame ends the run, or nothing (a ping is answered with
/// `pong`; a pong is ignored).
fn control(opcode: u8, payload: &[u8], pong: &mut dyn FnMut(&[u8])) -> Result<(), String> {
    match opcode {
        OP_PING => {
            pong(payload);
            Ok(())
        }
        OP_PONG => Ok(()),
        OP_CLOSE => {
            let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
            let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
            Err(match code {
                Some(code) => format!("the server closed the WebSocket ({code} {reason})"),
                None => "the server closed the WebSocket".into(),
            })
        }
        op => Err(format!("unknown WebSocket opcode {op:#x}")),
    }
}

/// Appends a masked control frame (`opcode` with `payload`, ≤ 125 bytes).
fn put_control(out: &mut Vec<u8>, key: [u8; 4], opcode: u8, payload: &[u8]) {
    out.extend_from_slice(&[FIN | opcode, MASKED | payload.len() as u8]);
    put_masked(out, key, &[payload]);
}

/// One WebSocket connection's state between reads in the load loop.
#[derive(Debug, Clone)]
pub struct WsConn {
    /// Payload bytes of the current data frame still to arrive (0: the next
    /// byte starts a frame header).
    left: usize,
    /// The current data frame is the last of its message.
    fin: bool,
    /// Unwrapped bytes that start a protocol message not yet whole.
    inner: Vec<u8>,
    /// `inner` holds bytes the protocol code has not seen yet (those that
    /// followed the handshake).
    unparsed: bool,
    /// Every message must end where a protocol message ends (evchat).
    aligned: bool,
    masker: Masker,
}

impl WsConn {
    pub fn new(masker: Masker) -> WsConn {
        WsConn {
            left: 0,
            fin: true,
            inner: Vec::new(),
            unparsed: false,
            aligned: false,
            masker,
        }
    }

    /// Whether bytes already unwrapped wait to be parsed.
    pub fn has_unparsed(&self) -> bool {
        self.unparsed
    }
}

/// Unwraps the whole frame headers and the payload bytes at the start of
/// `input` and passes the payload stream to `parse` (the target's own
/// parser, which answers through the sink it is given and returns the bytes
/// it consumed). Returns the bytes of `input` consumed; what is left is the
/// start of a frame header.
#[inline]
pub fn parse<F>(
    ws: &mut WsConn,
    input: &[u8],
    out: &mut Vec<u8>,
    ctx: &mut Ctx,
    mut parse: F,
) -> Result<usize, String>
where
    F: FnMut(&[u8], &mut WsSink, &mut Ctx) -> Result<usize, String>,
{
    let WsConn {
        left,
        fin,
        inner,
        unparsed,
        aligned,
        masker,
    } = ws;
    let mut sink = WsSink { out, masker };
    if *unparsed {
        *unparsed = false;
        let used = parse(inner, &mut sink, ctx)?;
        inner.drain(..used);
    }
    let mut pos = 0;
    loop {
        if *left == 0 {
            let Some(head) = frame_head(&input[pos..])? else {
                break;
            };
            if head.opcode >= OP_CLOSE {
                if head.len > MAX_CONTROL || !head.fin {
                    return Err("malformed WebSocket control frame".into());
                }
                let end = pos + head.head_len + head.len;
                if input.len() < end {
                    break;
                }
                let payload = &input[pos + head.head_len..end];
                let sink = &mut sink;
                control(head.opcode, payload, &mut |data| {
                    let key = sink.masker.next_key();
                    put_control(sink.out, key, OP_PONG, data);
                })?;
                pos = end;
                continue;
            }
            match head.opcode {
                OP_BINARY | OP_CONTINUATION => {}
                OP_TEXT => return Err("WebSocket text message (expected binary)".into()),
                op => return Err(format!("unknown WebSocket opcode {op:#x}")),
            }
            pos += head.head_len;
            *left = head.len;
            *fin = head.fin;
            if head.len == 0 {
                check_aligned(*aligned, *fin, inner)?;
                continue;
            }
        }
        let take = (*left).min(input.len() - pos);
        if take == 0 {
            break;
        }
        let payload = &input[pos..pos + take];
        pos += take;
        *left -= take;
        if inner.is_empty() {
            let used = parse(payload, &mut sink, ctx)?;
            inner.extend_from_slice(&payload[used..]);
        } else {
            inner.extend_from_slice(payload);
            let used = parse(inner, &mut sink, ctx)?;
            inner.drain(..used);
        }
        if *left == 0 {
            check_aligned(*aligned, *fin, inner)?;
        }
    }
    Ok(pos)
}

/// At the end of a message on an aligned connection nothing may be left over.
#[inline]
fn check_aligned(aligned: bool, fin: bool, inner: &[u8]) -> Result<(), String> {
    if aligned && fin && !inner.is_empty() {
        return Err(format!(
            "a WebSocket message ended inside a protocol frame ({} bytes left over)",
            inner.len()
        ));
    }
    Ok(())
}

/// Lets the target's encoder write one message into `out`, framed.
#[inline]
pub fn encode(ws: &mut WsConn, out: &mut Vec<u8>, encode: impl FnOnce(&mut WsSink)) {
    encode(&mut WsSink {
        out,
        masker: &mut ws.masker,
    });
}

/// Where a target listens for WebSocket clients, and what it expects.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub path: &'static str,
    /// `Sec-WebSocket-Protocol` to ask for (Mosquitto wants `mqtt`).
    pub protocol: Option<&'static str>,
    /// One protocol message per WebSocket message, both ways (evchat).
    pub aligned: bool,
}

/// A WebSocket connection during the handshakes, on a blocking socket:
/// `read` gives the payload stream, each `write` sends one message.
pub struct WsStream {
    tcp: TcpStream,
    /// Bytes read and not yet unwrapped; `raw[..]` starts a frame header
    /// when `left` is 0, else the rest of a data frame's payload.
    raw: Vec<u8>,
    left: usize,
    fin: bool,
    aligned: bool,
    masker: Masker,
}

/// A connection whose upgrade request is sent and not yet answered.
pub struct Upgrading {
    tcp: TcpStream,
    key: String,
    endpoint: Endpoint,
}

/// Sends the upgrade request for `endpoint`. Requests can be sent on many
/// connections before their answers are read: Mosquitto takes a new
/// WebSocket connection only every 100 ms or so, but all that are waiting.
pub fn request_upgrade(
    mut tcp: TcpStream,
    addr: SocketAddr,
    endpoint: Endpoint,
) -> Result<Upgrading, String> {
    let key = tungstenite::handshake::client::generate_key();
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        endpoint.path
    );
    if let Some(protocol) = endpoint.protocol {
        request.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes())
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    Ok(Upgrading { tcp, key, endpoint })
}

impl Upgrading {
    /// Reads and checks the 101 answer; `seed` starts the masking keys.
    pub fn finish(mut self, seed: u32) -> Result<WsStream, String> {
        let mut raw = Vec::new();
        let n = crate::setup::read_until(&mut self.tcp, &mut raw, |b| {
            if b.len() > 16 * 1024 {
                return Err("WebSocket upgrade answer over 16 KiB".into());
            }
            Ok(b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4))
        })?;
        let head = String::from_utf8_lossy(&raw[..n]).into_owned();
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!(
                "WebSocket upgrade on {} refused: {status:?}",
                self.endpoint.path
            ));
        }
        let want = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let accept = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-accept")
                .then(|| value.trim().to_owned())
        });
        if accept.as_deref() != Some(want.as_str()) {
            return Err(format!(
                "WebSocket upgrade answered Sec-WebSocket-Accept {accept:?}, expected {want:?}"
            ));
        }
        raw.drain(..n);
        Ok(WsStream {
            tcp: self.tcp,
            raw,
            left: 0,
            fin: true,
            aligned: self.endpoint.aligned,
            masker: Masker::new(seed),
        })
    }
}

impl WsStream {
    /// The socket, the bytes read but not unwrapped, and the state the load
    /// loop continues from; `leftover` is what the handshake code read past
    /// its reply (already unwrapped).
    pub fn into_parts(self, leftover: Vec<u8>) -> (TcpStream, Vec<u8>, WsConn) {
        let conn = WsConn {
            left: self.left,
            fin: self.fin,
            unparsed: !leftover.is_empty(),
            inner: leftover,
            aligned: self.aligned,
            masker: self.masker,
        };
        (self.tcp, self.raw, conn)
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = self.tcp.read(&mut chunk)?;
        self.raw.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

impl Read for WsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.left > 0 && !self.raw.is_empty() {
                let n = self.left.min(self.raw.len()).min(buf.len());
                buf[..n].copy_from_slice(&self.raw[..n]);
                self.raw.drain(..n);
                self.left -= n;
                return Ok(n);
            }
            if self.left == 0
                && let Some(head) = frame_head(&self.raw).map_err(invalid)?
            {
                let end = head.head_len + head.len;
                if head.opcode >= OP_CLOSE {
                    if self.raw.len() < end {
                        if self.fill()? == 0 {
                            return Ok(0);
                        }
                        continue;
                    }
                    let payload: Vec<u8> = self.raw[head.head_len..end].to_vec();
                    self.raw.drain(..end);
                    let mut pong = Vec::new();
                    let key = self.masker.next_key();
                    control(head.opcode, &payload, &mut |data| {
                        put_control(&mut pong, key, OP_PONG, data)
                    })
                    .map_err(invalid)?;
                    self.tcp.write_all(&pong)?;
                    continue;
                }
                if head.opcode == OP_TEXT {
                    return Err(invalid("WebSocket text message (expected binary)".into()));
                }
                self.raw.drain(..head.head_len);
                self.left = head.len;
                self.fin = head.fin;
                continue;
            }
            if self.fill()? == 0 {
                return Ok(0);
            }
        }
    }
}

impl Write for WsStream {
    /// Sends all of `buf` as one message.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut frame = Vec::with_capacity(buf.len() + 14);
        put_message(&mut frame, self.masker.next_key(), &[buf]);
        self.tcp.write_all(&frame)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}
