//! The `raw` target: `benches/raw_forwarder.rs`, a bare forwarder that
//! copies a publisher's bytes to every subscriber, with no protocol at all.
//!
//! ```text
//! → p <size:u16 BE>     a publisher's hello      ← +
//! → s <size:u16 BE>     a subscriber's hello     ← +
//! → <payload><payload>...                         publishers, `--size` bytes each
//! ← <payload><payload>...                         subscribers, split by `--size`
//! ```
//!
//! Messages have no frame: every payload is `--size` bytes, so a subscriber
//! splits the stream by that size (a payload cut by a read waits in the
//! connection's `pending` for its rest, as any partial frame does). Nothing
//! acknowledges anything; a message is settled by delivery to every
//! subscriber, as on `nats`. The forwarder copies every publisher's bytes to
//! every subscriber, so `unicast` is only meaningful with one pair.

use crate::conn::{Role, Session};
use crate::flow::Ctx;
use crate::setup::read_until;
use std::io::{Read, Write};

pub const PUBLISHER: u8 = b'p';
pub const SUBSCRIBER: u8 = b's';

/// Sends the hello for `role` with messages of `size` bytes and waits for the
/// forwarder's `+`; returns any bytes after it.
pub fn hello(stream: &mut (impl Read + Write), role: u8, size: usize) -> Result<Vec<u8>, String> {
    let size = u16::try_from(size).map_err(|_| format!("raw message size {size} above 65535"))?;
    let [hi, lo] = size.to_be_bytes();
    stream
        .write_all(&[role, hi, lo])
        .map_err(|e| format!("raw hello: {e}"))?;
    let mut buf = Vec::new();
    read_until(stream, &mut buf, |b| Ok((!b.is_empty()).then_some(1)))?;
    if buf[0] != b'+' {
        return Err(format!(
            "the raw forwarder answered {:?} to a hello",
            buf[0]
        ));
    }
    Ok(buf.split_off(1))
}

/// Appends one message: the payload alone.
#[inline]
pub fn encode(head: &[u8], pad: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(head);
    out.extend_from_slice(pad);
}

/// Consumes the whole payloads at the start of `input`; returns their length.
#[inline]
pub fn parse(s: &Session, input: &[u8], ctx: &mut Ctx) -> Result<usize, String> {
    let Role::Sub = s.role else {
        if input.is_empty() {
            return Ok(0);
        }
        return Err("the raw forwarder sent bytes to a publisher".into());
    };
    let size = s.frame;
    let whole = input.len() - input.len() % size;
    for payload in input[..whole].chunks_exact(size) {
        ctx.delivered(payload);
    }
    Ok(whole)
}
