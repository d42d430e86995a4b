//! NATS core, client side, as much as the workload needs.
//!
//! ```text
//! ← INFO {...}\r\n                       on connect
//! → CONNECT {"verbose":false,...}\r\n    then SUB <subject> 1\r\n, PING\r\n
//! ← PONG\r\n                             (after +OK lines in verbose mode)
//! → PUB <subject> <S>\r\n<payload>\r\n   ← +OK\r\n in verbose mode
//! ← MSG <subject> <sid> [reply] <S>\r\n<payload>\r\n
//! ← PING\r\n  → PONG\r\n                 the server's keep-alive
//! ```
//!
//! JetStream (`jetstream`) is the same protocol plus a reply subject: a
//! publisher subscribes to an inbox of its own, creates the stream over its
//! subject with a request to `$JS.API.STREAM.CREATE.<name>`, and publishes
//! `PUB <subject> <inbox> <S>`; the stream stores each message and answers
//! on the inbox with a PubAck, `{"stream":..,"seq":..}` (or `{"error":..}`),
//! so a MSG on a publisher's connection is always an acknowledgement.
//! Subscribers keep a core subscription to the subject.
//!
//! Over WebSocket (`nats-ws`, nats-server's `websocket` listener) the same
//! text travels in binary messages; the server treats them as a byte stream
//! and packs several protocol lines into one message (or splits one), so
//! the parser sees the messages' payloads concatenated.

use crate::conn::{Role, Session};
use crate::flow::Ctx;
use crate::redis::line_end;
use crate::setup::read_until;
use crate::ws::Sink;
use std::io::{Read, Write};

/// Sends CONNECT (and SUB when `subject` is given), then waits for the PONG
/// that proves both were processed. Returns the bytes after it.
pub fn connect(
    stream: &mut (impl Read + Write),
    verbose: bool,
    subject: Option<&str>,
) -> Result<Vec<u8>, String> {
    let mut buf = Vec::new();
    let n = read_until(stream, &mut buf, |b| Ok(line_end(b, 0).map(|end| end + 2)))?;
    if !buf.starts_with(b"INFO ") {
        return Err(format!(
            "expected NATS INFO, got {:?}",
            String::from_utf8_lossy(&buf[..n])
        ));
    }
    buf.drain(..n);
    let mut hello = format!(
        "CONNECT {{\"verbose\":{verbose},\"pedantic\":false,\"tls_required\":false,\
         \"name\":\"relay-bench\",\"lang\":\"rust\",\"version\":\"0.1\",\"protocol\":1,\
         \"echo\":false}}\r\n"
    );
    if let Some(subject) = subject {
        hello.push_str(&format!("SUB {subject} 1\r\n"));
    }
    hello.push_str("PING\r\n");
    stream
        .write_all(hello.as_bytes())
        .map_err(|e| format!("CONNECT: {e}"))?;
    loop {
        let n = read_until(stream, &mut buf, |b| Ok(line_end(b, 0).map(|end| end + 2)))?;
        let line = buf.drain(..n).collect::<Vec<u8>>();
        if line.starts_with(b"PONG") {
            return Ok(buf);
        }
        if line.starts_with(b"-ERR") {
            return Err(format!(
                "NATS refused: {}",
                String::from_utf8_lossy(&line).trim_end()
            ));
        }
        // +OK (verbose), INFO updates: nothing to do.
    }
}

/// Everything a PUB of `size` payload bytes on `subject` puts before the payload.
pub fn publish_prefix(subject: &str, size: usize) -> Vec<u8> {
    format!("PUB {subject} {size}\r\n").into_bytes()
}

/// Everything a JetStream publish (a PUB whose reply subject is `inbox`,
/// where the PubAck comes back) of `size` payload bytes puts before the payload.
pub fn publish_prefix_acked(subject: &str, inbox: &str, size: usize) -> Vec<u8> {
    format!("PUB {subject} {inbox} {size}\r\n").into_bytes()
}

/// Creates JetStream stream `name` over `subject` in file storage, with the
/// answer sent to `inbox` (which this connection must already subscribe
/// to). Its byte limit matches evchat's default `--history-max-bytes` (the
/// oldest messages go first past it). Returns the bytes after the answer.
pub fn create_stream(
    stream: &mut (impl Read + Write),
    name: &str,
    subject: &str,
    inbox: &str,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let config = format!(
        "{{\"name\":\"{name}\",\"subjects\":[\"{subject}\"],\"storage\":\"file\",\
         \"retention\":\"limits\",\"discard\":\"old\",\"max_bytes\":1073741824,\
         \"num_replicas\":1}}"
    );
    let request = format!(
        "PUB $JS.API.STREAM.CREATE.{name} {inbox} {}\r\n{config}\r\n",
        config.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("JetStream stream create: {e}"))?;
    loop {
        let n = read_until(stream, &mut buf, |b| Ok(line_end(b, 0).map(|end| end + 2)))?;
        let line = buf[..n - 2].to_vec();
        if line.starts_with(b"MSG ") {
            let size = msg_size(&line)?;
            read_until(stream, &mut buf, |b| {
                Ok((b.len() >= n + size + 2).then_some(n + size + 2))
            })?;
            let answer = String::from_utf8_lossy(&buf[n..n + size]).into_owned();
            buf.drain(..n + size + 2);
            if answer.contains("\"error\"") {
                return Err(format!(
                    "JetStream refused to create stream {name}: {answer}"
                ));
            }
            return Ok(buf);
        }
        buf.drain(..n);
        if line.starts_with(b"-ERR") {
            return Err(format!("NATS: {}", String::from_utf8_lossy(&line)));
        }
        if line == b"PING" {
            stream
                .write_all(b"PONG\r\n")
                .map_err(|e| format!("PONG: {e}"))?;
        }
        // +OK, PONG, INFO updates: nothing to do.
    }
}

/// Whether a PubAck reports a failure.
#[inline]
fn refused(ack: &[u8]) -> bool {
    ack.windows(7).any(|w| w == b"\"error\"")
}

/// Appends one PUB.
#[inline]
pub fn encode(s: &Session, head: &[u8], pad: &[u8], out: &mut impl Sink) {
    out.message(&[&s.prefix, head, pad, b"\r\n"]);
}

/// The byte count that ends a MSG line (`line` without its `\r\n`).
#[inline]
fn msg_size(line: &[u8]) -> Result<usize, String> {
    let start = line
        .iter()
        .rposition(|&b| b == b' ')
        .ok_or("MSG line without a size")?
        + 1;
    let digits = &line[start..];
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("bad MSG line {:?}", String::from_utf8_lossy(line)));
    }
    Ok(digits
        .iter()
        .fold(0usize, |n, &d| n * 10 + (d - b'0') as usize))
}

/// Consumes the whole messages at the start of `input`; returns their length.
pub fn parse(
    s: &Session,
    input: &[u8],
    out: &mut impl Sink,
    ctx: &mut Ctx,
) -> Result<usize, String> {
    let mut pos = 0;
    while pos < input.len() {
        let Some(end) = line_end(input, pos) else {
            break;
        };
        let line = &input[pos..end];
        if line.starts_with(b"MSG ") {
            let start = end + 2;
            let stop = start + msg_size(line)?;
            if input.len() < stop + 2 {
                break;
            }
            match s.role {
                // Publishers subscribe to nothing but their JetStream inbox.
                Role::Pub(p) => ctx.replied(p, !refused(&input[start..stop])),
                Role::Sub => ctx.delivered(&input[start..stop]),
            }
            pos = stop + 2;
            continue;
        }
        if line == b"+OK" {
            if let Role::Pub(p) = s.role {
                ctx.replied(p, true);
            }
        } else if line == b"PING" {
            out.message(&[b"PONG\r\n"]);
        } else if line.starts_with(b"-ERR") {
            return Err(format!("NATS: {}", String::from_utf8_lossy(line)));
        } else if !(line == b"PONG" || line.starts_with(b"INFO ")) {
            return Err(format!(
                "unexpected NATS line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        pos = end + 2;
    }
    Ok(pos)
}
