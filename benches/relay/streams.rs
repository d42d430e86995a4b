//! Redis Streams over RESP2: the durable counterpart of `redis.rs`. Each
//! publisher appends with pipelined XADD; each consumer reads with one
//! blocking XREAD at a time, from the id of the last entry it read.
//!
//! ```text
//! publisher → *5\r\n$4\r\nXADD\r\n$<n>\r\n<stream>\r\n$1\r\n*\r\n$1\r\nf\r\n$<S>\r\n<payload>\r\n
//! publisher ← $<k>\r\n<entry id>\r\n                (or -ERR ...\r\n)
//! consumer  → XREVRANGE <stream> + - COUNT 1        (setup: where the stream ends now)
//! consumer  → *6\r\n$5\r\nXREAD\r\n$5\r\nBLOCK\r\n$1\r\n0\r\n$7\r\nSTREAMS\r\n$<n>\r\n<stream>\r\n$<k>\r\n<last id>\r\n
//! consumer  ← *1\r\n*2\r\n$<n>\r\n<stream>\r\n*<N>\r\n, then N entries, each
//!             *2\r\n$<k>\r\n<id>\r\n*2\r\n$1\r\nf\r\n$<S>\r\n<payload>\r\n
//! ```
//!
//! A consumer parses a reply entry by entry (a reply holds up to a window of
//! entries per publisher), counts each entry as one delivery, and sends its
//! next XREAD as soon as the reply's last entry is in.

use crate::conn::{Role, Session};
use crate::flow::Ctx;
use crate::redis::{item, line_end, number};
use crate::setup::read_until;
use std::io::{Read, Write};
use std::ops::Range;

/// The one field name every entry carries its payload under.
const FIELD: &str = "f";
/// An entry id is two u64 joined by `-`: at most 41 bytes.
const MAX_ID: usize = 48;

/// Everything an XADD of `size` payload bytes to `stream` puts before the payload.
pub fn xadd_prefix(stream: &str, size: usize) -> Vec<u8> {
    format!(
        "*5\r\n$4\r\nXADD\r\n${}\r\n{stream}\r\n$1\r\n*\r\n${}\r\n{FIELD}\r\n${size}\r\n",
        stream.len(),
        FIELD.len()
    )
    .into_bytes()
}

/// An array header at `pos`: its count (-1 for a nil array) and where its
/// first item starts; `None` while incomplete.
#[inline]
fn array(buf: &[u8], pos: usize) -> Result<Option<(i64, usize)>, String> {
    let Some(end) = line_end(buf, pos) else {
        return Ok(None);
    };
    match buf[pos] {
        b'*' => Ok(Some((number(&buf[pos + 1..end])?, end + 2))),
        b'-' => Err(format!(
            "Redis error: {}",
            String::from_utf8_lossy(&buf[pos + 1..end])
        )),
        _ => Err(format!(
            "expected a RESP array, got {:?}",
            String::from_utf8_lossy(&buf[pos..end])
        )),
    }
}

/// An array header at `pos` that must count `want` items.
#[inline]
fn array_of(buf: &[u8], pos: usize, want: i64) -> Result<Option<usize>, String> {
    match array(buf, pos)? {
        None => Ok(None),
        Some((n, next)) if n == want => Ok(Some(next)),
        Some((n, _)) => Err(format!("RESP array of {n} items where {want} belong")),
    }
}

/// A stream entry's id, its one field's value, and where the next item starts.
type Entry = (Range<usize>, Range<usize>, usize);

/// One stream entry with a single field at `pos`; `None` while incomplete.
#[inline]
fn entry(buf: &[u8], pos: usize) -> Result<Option<Entry>, String> {
    let Some(pos) = array_of(buf, pos, 2)? else {
        return Ok(None);
    };
    let Some((id, pos)) = item(buf, pos)? else {
        return Ok(None);
    };
    let Some(pos) = array_of(buf, pos, 2)? else {
        return Ok(None);
    };
    let Some((_field, pos)) = item(buf, pos)? else {
        return Ok(None);
    };
    let Some((value, next)) = item(buf, pos)? else {
        return Ok(None);
    };
    if id.len() > MAX_ID {
        return Err(format!("stream entry id of {} bytes", id.len()));
    }
    Ok(Some((id, value, next)))
}

/// The head of an XREAD reply for one stream at `pos`: the number of
/// entries that follow (0 for the nil reply of a timed-out read) and where
/// the first starts; `None` while incomplete.
#[inline]
fn reply_head(buf: &[u8], pos: usize) -> Result<Option<(u32, usize)>, String> {
    let Some((streams, pos)) = array(buf, pos)? else {
        return Ok(None);
    };
    match streams {
        -1 => return Ok(Some((0, pos))),
        1 => {}
        n => return Err(format!("XREAD answered for {n} streams, not 1")),
    }
    let Some(pos) = array_of(buf, pos, 2)? else {
        return Ok(None);
    };
    let Some((_name, pos)) = item(buf, pos)? else {
        return Ok(None);
    };
    let Some((entries, next)) = array(buf, pos)? else {
        return Ok(None);
    };
    let entries =
        u32::try_from(entries).map_err(|_| format!("XREAD reply of {entries} entries"))?;
    Ok(Some((entries, next)))
}

/// Appends the consumer's next XREAD, from the last id it read.
#[inline]
fn request_next(s: &Session, out: &mut Vec<u8>) {
    out.extend_from_slice(&s.prefix);
    out.push(b'$');
    let mut digits = [0u8; 2];
    let len = s.last_id.len();
    let digits = if len >= 10 {
        digits[0] = b'0' + (len / 10) as u8;
        digits[1] = b'0' + (len % 10) as u8;
        &digits[..]
    } else {
        digits[0] = b'0' + len as u8;
        &digits[..1]
    };
    out.extend_from_slice(digits);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&s.last_id);
    out.extend_from_slice(b"\r\n");
}

/// The id in an XREVRANGE COUNT 1 reply (`None`: no entry), and the reply's length.
type LastEntry = (Option<Range<usize>>, usize);

/// An XREVRANGE COUNT 1 reply at the start of `buf`; `None` while incomplete.
fn last_entry(buf: &[u8]) -> Result<Option<LastEntry>, String> {
    match array(buf, 0)? {
        None => Ok(None),
        Some((0, next)) => Ok(Some((None, next))),
        Some((1, next)) => Ok(entry(buf, next)?.map(|(id, _, end)| (Some(id), end))),
        Some((n, _)) => Err(format!("XREVRANGE COUNT 1 answered {n} entries")),
    }
}

/// Makes a consumer of `key`: finds the id the stream ends at now (`0-0`
/// when it does not exist yet) and sends the first XREAD from there, so an
/// entry added after this call is read however the server orders the
/// consumer's and the publishers' commands. Returns the bytes read past the
/// XREVRANGE reply.
pub fn consume(
    stream: &mut (impl Read + Write),
    key: &str,
    s: &mut Session,
) -> Result<Vec<u8>, String> {
    let cmd = format!(
        "*6\r\n$9\r\nXREVRANGE\r\n${}\r\n{key}\r\n$1\r\n+\r\n$1\r\n-\r\n$5\r\nCOUNT\r\n$1\r\n1\r\n",
        key.len()
    );
    stream
        .write_all(cmd.as_bytes())
        .map_err(|e| format!("XREVRANGE: {e}"))?;
    let mut buf = Vec::new();
    let n = read_until(stream, &mut buf, |b| Ok(last_entry(b)?.map(|(_, end)| end)))?;
    let (id, _) = last_entry(&buf[..n])?.expect("a whole reply was read");
    s.last_id = Vec::with_capacity(MAX_ID);
    match id {
        Some(id) => s.last_id.extend_from_slice(&buf[id]),
        None => s.last_id.extend_from_slice(b"0-0"),
    }
    s.prefix = format!(
        "*6\r\n$5\r\nXREAD\r\n$5\r\nBLOCK\r\n$1\r\n0\r\n$7\r\nSTREAMS\r\n${}\r\n{key}\r\n",
        key.len()
    )
    .into_bytes();
    s.left = 0;
    let mut first = Vec::new();
    request_next(s, &mut first);
    stream
        .write_all(&first)
        .map_err(|e| format!("XREAD: {e}"))?;
    Ok(buf.split_off(n))
}

/// Consumes the whole replies (a publisher's) or entries (a consumer's) at
/// the start of `input`; returns their length.
pub fn parse(
    s: &mut Session,
    input: &[u8],
    out: &mut Vec<u8>,
    ctx: &mut Ctx,
) -> Result<usize, String> {
    let mut pos = 0;
    match s.role {
        Role::Pub(p) => {
            while pos < input.len() {
                match input[pos] {
                    b'$' => {
                        let Some((_id, next)) = item(input, pos)? else {
                            break;
                        };
                        ctx.replied(p, true);
                        pos = next;
                    }
                    b'-' => {
                        let Some(end) = line_end(input, pos) else {
                            break;
                        };
                        ctx.replied(p, false);
                        pos = end + 2;
                    }
                    other => {
                        return Err(format!(
                            "unexpected reply to XADD starting {:?}",
                            other as char
                        ));
                    }
                }
            }
        }
        Role::Sub => {
            while pos < input.len() {
                if s.left == 0 {
                    let Some((entries, next)) = reply_head(input, pos)? else {
                        break;
                    };
                    pos = next;
                    s.left = entries;
                    if entries == 0 {
                        request_next(s, out);
                    }
                    continue;
                }
                let Some((id, value, next)) = entry(input, pos)? else {
                    break;
                };
                ctx.delivered(&input[value]);
                s.last_id.clear();
                s.last_id.extend_from_slice(&input[id]);
                pos = next;
                s.left -= 1;
                if s.left == 0 {
                    request_next(s, out);
                }
            }
        }
    }
    Ok(pos)
}
