//! MQTT 3.1.1, client side, as much as the workload needs.
//!
//! ```text
//! → CONNECT    10 <len> 00 04 "MQTT" 04 02 <keepalive u16> <client id u16+bytes>
//! ← CONNACK    20 02 00 <rc>
//! → SUBSCRIBE  82 <len> <packet id> <topic u16+bytes> <qos>
//! ← SUBACK     90 03 <packet id> <granted qos | 80>
//! ↔ PUBLISH    3q <len> <topic u16+bytes> [<packet id> if qos 1] <payload>
//! ↔ PUBACK     40 02 <packet id>        (QoS 1: the broker to the publisher,
//!                                        each subscriber to the broker)
//! ```
//!
//! `<len>` is the variable-length "remaining length" (7 bits a byte).
//!
//! Over WebSocket (`mqtt0-ws`, `mqtt1-ws`: Mosquitto's `websockets`
//! listener, subprotocol `mqtt`) each packet this client sends is one binary
//! message; what the broker sends is read as a byte stream, since MQTT
//! allows a packet to span messages.

use crate::conn::{Role, Session};
use crate::flow::Ctx;
use crate::setup::read_until;
use crate::ws::Sink;
use std::io::{Read, Write};

/// Keep-alive announced in CONNECT, long enough that no run needs PINGREQ.
const KEEPALIVE_SECS: u16 = 3600;

fn put_remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

/// The remaining length after the first byte of `packet` and how many bytes
/// encode it; `None` while incomplete.
#[inline]
fn remaining_length(packet: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut n = 0usize;
    for i in 0..4 {
        let Some(&byte) = packet.get(1 + i) else {
            return Ok(None);
        };
        n |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((n, i + 1)));
        }
    }
    Err("MQTT remaining length longer than 4 bytes".into())
}

/// The length of the whole packet at the start of `buf`, once it is there.
fn whole_packet(buf: &[u8]) -> Result<Option<usize>, String> {
    Ok(remaining_length(buf)?
        .map(|(len, width)| 1 + width + len)
        .filter(|&total| buf.len() >= total))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// CONNECT with a clean session; returns the bytes after CONNACK.
pub fn connect(stream: &mut (impl Read + Write), client_id: &str) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    put_string(&mut body, "MQTT");
    body.push(4); // protocol level 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&KEEPALIVE_SECS.to_be_bytes());
    put_string(&mut body, client_id);
    let mut packet = vec![0x10];
    put_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    stream
        .write_all(&packet)
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut buf = Vec::new();
    let n = read_until(stream, &mut buf, whole_packet)?;
    if n != 4 || buf[0] != 0x20 || buf[3] != 0 {
        return Err(format!("MQTT CONNECT refused: {:02x?}", &buf[..n]));
    }
    Ok(buf.split_off(n))
}

/// SUBSCRIBE to `topic` at `qos`; returns the bytes after SUBACK.
pub fn subscribe(
    stream: &mut (impl Read + Write),
    topic: &str,
    qos: u8,
) -> Result<Vec<u8>, String> {
    let mut body = vec![0, 1]; // packet id 1
    put_string(&mut body, topic);
    body.push(qos);
    let mut packet = vec![0x82];
    put_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    stream
        .write_all(&packet)
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
    let mut buf = Vec::new();
    let n = read_until(stream, &mut buf, whole_packet)?;
    if n != 5 || buf[0] != 0x90 || buf[4] & 0x80 != 0 {
        return Err(format!("MQTT SUBSCRIBE refused: {:02x?}", &buf[..n]));
    }
    Ok(buf.split_off(n))
}

/// Everything a PUBLISH of `size` payload bytes on `topic` at `qos` puts
/// before the packet id (QoS 1) or the payload (QoS 0).
pub fn publish_prefix(topic: &str, qos: u8, size: usize) -> Vec<u8> {
    let mut prefix = vec![0x30 | (qos << 1)];
    let packet_id = if qos > 0 { 2 } else { 0 };
    put_remaining_length(&mut prefix, 2 + topic.len() + packet_id + size);
    put_string(&mut prefix, topic);
    prefix
}

/// Appends one PUBLISH.
#[inline]
pub fn encode(s: &mut Session, head: &[u8], pad: &[u8], out: &mut impl Sink) {
    if s.prefix[0] & 0x06 != 0 {
        // Packet ids are 1..=65535; the window (≤ 65535) keeps them unique.
        s.seq = s.seq.checked_add(1).unwrap_or(1);
        out.message(&[&s.prefix, &s.seq.to_be_bytes(), head, pad]);
    } else {
        out.message(&[&s.prefix, head, pad]);
    }
}

/// Consumes the whole packets at the start of `input`; returns their length.
pub fn parse(
    s: &Session,
    input: &[u8],
    out: &mut impl Sink,
    ctx: &mut Ctx,
) -> Result<usize, String> {
    let mut pos = 0;
    while input.len() - pos >= 2 {
        let packet = &input[pos..];
        let Some((len, width)) = remaining_length(packet)? else {
            break;
        };
        let total = 1 + width + len;
        if packet.len() < total {
            break;
        }
        let body = &packet[1 + width..total];
        match packet[0] >> 4 {
            3 => {
                let qos = (packet[0] >> 1) & 3;
                let topic_len = body
                    .get(..2)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                    .ok_or("short PUBLISH")?;
                let mut start = 2 + topic_len;
                if qos > 0 {
                    let id = body.get(start..start + 2).ok_or("short PUBLISH")?;
                    if qos > 1 {
                        return Err("QoS 2 PUBLISH not expected".into());
                    }
                    out.message(&[&[0x40, 0x02, id[0], id[1]]]);
                    start += 2;
                }
                ctx.delivered(body.get(start..).ok_or("short PUBLISH")?);
            }
            4 => {
                if let Role::Pub(p) = s.role {
                    ctx.replied(p, true);
                }
            }
            9 | 13 => {} // SUBACK, PINGRESP
            kind => return Err(format!("unexpected MQTT packet type {kind}")),
        }
        pos += total;
    }
    Ok(pos)
}
