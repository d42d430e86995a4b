//! Redis pub/sub over RESP2, as much of it as the workload needs.
//!
//! ```text
//! publisher → *3\r\n$7\r\nPUBLISH\r\n$<n>\r\n<channel>\r\n$<S>\r\n<payload>\r\n
//! publisher ← :<receivers>\r\n                     (or -ERR ...\r\n)
//! subscriber → *2\r\n$9\r\nSUBSCRIBE\r\n$<n>\r\n<channel>\r\n
//! subscriber ← *3\r\n$9\r\nsubscribe\r\n$<n>\r\n<channel>\r\n:1\r\n
//! subscriber ← *3\r\n$7\r\nmessage\r\n$<n>\r\n<channel>\r\n$<S>\r\n<payload>\r\n
//! ```

use crate::conn::{Role, Session};
use crate::flow::Ctx;
use crate::setup::read_until;
use std::io::{Read, Write};
use std::ops::Range;

/// Everything a PUBLISH of `size` payload bytes on `channel` puts before the payload.
pub fn publish_prefix(channel: &str, size: usize) -> Vec<u8> {
    format!(
        "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{channel}\r\n${size}\r\n",
        channel.len()
    )
    .into_bytes()
}

/// Appends one PUBLISH (with `streams::xadd_prefix`, one XADD).
#[inline]
pub fn encode(s: &Session, head: &[u8], pad: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&s.prefix);
    out.extend_from_slice(head);
    out.extend_from_slice(pad);
    out.extend_from_slice(b"\r\n");
}

/// Subscribes to `channel`; returns the bytes after the confirmation.
pub fn subscribe(stream: &mut (impl Read + Write), channel: &str) -> Result<Vec<u8>, String> {
    let cmd = format!(
        "*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n",
        channel.len()
    );
    stream
        .write_all(cmd.as_bytes())
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
    let mut buf = Vec::new();
    let n = read_until(stream, &mut buf, |b| Ok(push(b, 0)?.map(|(_, next)| next)))?;
    if !buf.starts_with(b"*3\r\n$9\r\nsubscribe\r\n") {
        return Err(format!(
            "SUBSCRIBE answered {:?}",
            String::from_utf8_lossy(&buf[..n])
        ));
    }
    Ok(buf.split_off(n))
}

/// Position of the `\r\n` ending the line that starts at `from`.
#[inline]
pub fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i + 1 < buf.len() {
        if buf[i] == b'\r' {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The decimal number in `digits` (an optional minus sign first).
#[inline]
pub fn number(digits: &[u8]) -> Result<i64, String> {
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || digits.len() > 18 {
        return Err(format!("bad RESP length {digits:?}"));
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(format!("bad RESP length {digits:?}"));
        }
        n = n * 10 + (d - b'0') as i64;
    }
    Ok(if neg { -n } else { n })
}

/// One bulk string or integer at `pos`: its bytes' range and where the next
/// item starts; `None` while incomplete.
#[inline]
pub fn item(buf: &[u8], pos: usize) -> Result<Option<(Range<usize>, usize)>, String> {
    let Some(end) = line_end(buf, pos) else {
        return Ok(None);
    };
    match buf[pos] {
        b'$' => {
            let len = number(&buf[pos + 1..end])?;
            let start = end + 2;
            let stop = start + len.max(0) as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            Ok(Some((start..stop, stop + 2)))
        }
        b':' | b'+' => Ok(Some((pos + 1..end, end + 2))),
        b'-' => Err(format!(
            "Redis error: {}",
            String::from_utf8_lossy(&buf[pos + 1..end])
        )),
        other => Err(format!("unexpected RESP item type {:?}", other as char)),
    }
}

/// The three items of a push message and where the next message starts.
type Push = ([Range<usize>; 3], usize);

/// A push message (array of 3 items) at `pos`: the items' ranges and
/// where the next message starts; `None` while incomplete.
#[inline]
fn push(buf: &[u8], pos: usize) -> Result<Option<Push>, String> {
    let Some(end) = line_end(buf, pos) else {
        return Ok(None);
    };
    if buf[pos] != b'*' {
        return Err(format!(
            "expected a RESP array, got {:?}",
            String::from_utf8_lossy(&buf[pos..end])
        ));
    }
    let count = number(&buf[pos + 1..end])?;
    if count != 3 {
        return Err(format!("unexpected RESP array of {count} items"));
    }
    let mut items = [0..0, 0..0, 0..0];
    let mut next = end + 2;
    for slot in &mut items {
        let Some((range, after)) = item(buf, next)? else {
            return Ok(None);
        };
        *slot = range;
        next = after;
    }
    Ok(Some((items, next)))
}

/// Consumes the whole replies at the start of `input`; returns their length.
pub fn parse(s: &Session, input: &[u8], ctx: &mut Ctx) -> Result<usize, String> {
    let mut pos = 0;
    match s.role {
        Role::Pub(p) => {
            while pos < input.len() {
                let Some(end) = line_end(input, pos) else {
                    break;
                };
                match input[pos] {
                    b':' => ctx.replied(p, true),
                    b'-' => ctx.replied(p, false),
                    _ => {
                        return Err(format!(
                            "unexpected reply to PUBLISH: {:?}",
                            String::from_utf8_lossy(&input[pos..end])
                        ));
                    }
                }
                pos = end + 2;
            }
        }
        Role::Sub => {
            while pos < input.len() {
                let Some((items, next)) = push(input, pos)? else {
                    break;
                };
                if &input[items[0].clone()] == b"message" {
                    ctx.delivered(&input[items[2].clone()]);
                }
                pos = next;
            }
        }
    }
    Ok(pos)
}
