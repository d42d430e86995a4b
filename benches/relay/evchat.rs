//! evchat as its own clients speak it (PROTOCOL.md): OI to identify; the
//! emitter pipelines MSG frames and counts the server's in-order OK/ERRO
//! replies; the exhibitor answers every MSG with OK(own id, frame origin,
//! frame seq), exactly as `exhibitor` does after showing it. Over WebSocket
//! (`evchat-ws`) every frame is one binary message, both ways. With
//! `--sign-in NAME:SECRET` every connection opens with the identity
//! extension's HELLO (PROTOCOL.md, "Extension: identity") and its
//! exhibitors acknowledge the WHO frames that then come before messages.

use crate::conn::{Role, Session};
use crate::flow::Ctx;
use crate::setup::read_until;
use crate::ws::Sink;
use evchat::proto::{Frame, HEADER_LEN, Header, Kind, SERVER_ID};
use std::io::{Read, Write};

const MSG: u16 = Kind::Msg as u16;
const OK: u16 = Kind::Ok as u16;
const ERRO: u16 = Kind::Erro as u16;
const FLW: u16 = Kind::Flw as u16;
const HELLOACK: u16 = 9;
const WHO: u16 = 10;
const JOIN: u16 = 12;
const ROOMACK: u16 = 15;

/// An account (or, without `--auth`, a name) every connection signs in as.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub name: String,
    pub secret: String,
}

impl std::str::FromStr for SignIn {
    type Err = String;

    fn from_str(s: &str) -> Result<SignIn, String> {
        let (name, secret) = s
            .split_once(':')
            .ok_or("--sign-in takes NAME:SECRET (the secret may be empty)")?;
        Ok(SignIn {
            name: name.to_owned(),
            secret: secret.to_owned(),
        })
    }
}

/// A HELLO frame for `name` and `secret` (version 1).
pub fn hello_frame(name: &str, secret: &[u8]) -> Vec<u8> {
    let body_len = 4 + name.len() + secret.len();
    let mut f = header(8, 0, SERVER_ID, 0).to_vec();
    f.extend_from_slice(&(body_len as u16).to_be_bytes());
    f.push(1);
    f.push(name.len() as u8);
    f.extend_from_slice(name.as_bytes());
    f.extend_from_slice(&(secret.len() as u16).to_be_bytes());
    f.extend_from_slice(secret);
    f
}

/// Sends HELLO and reads HELLOACK; returns its code and the bytes after it.
pub fn hello(
    stream: &mut (impl Read + Write),
    name: &str,
    secret: &[u8],
) -> Result<(u8, Vec<u8>), String> {
    stream
        .write_all(&hello_frame(name, secret))
        .map_err(|e| format!("HELLO: {e}"))?;
    let mut buf = Vec::new();
    let len = read_until(stream, &mut buf, |b| {
        if b.len() >= HEADER_LEN && u16::from_be_bytes([b[0], b[1]]) != HELLOACK {
            return Err(format!(
                "HELLO answered with frame type {}: does this server speak the identity extension?",
                u16::from_be_bytes([b[0], b[1]])
            ));
        }
        Ok(b.get(8..10)
            .map(|l| 10 + u16::from_be_bytes([l[0], l[1]]) as usize)
            .filter(|&end| b.len() >= end))
    })?;
    let code = *buf.get(10).ok_or("HELLOACK without a body")?;
    Ok((code, buf.split_off(len)))
}

/// Sends OI with `origin` (0: exhibitor; an exhibitor id: paired emitter;
/// 1: unpaired emitter) and returns the assigned id and any bytes after the OK.
pub fn identify(
    stream: &mut (impl Read + Write),
    origin: u16,
    sign_in: Option<&SignIn>,
) -> Result<(u16, Vec<u8>), String> {
    if let Some(account) = sign_in {
        let (code, rest) = hello(stream, &account.name, account.secret.as_bytes())?;
        if code != 0 {
            return Err(format!(
                "HELLO as {:?} refused with code {code} (PROTOCOL.md, \"The hello and its answer\")",
                account.name
            ));
        }
        if !rest.is_empty() {
            return Err("bytes after HELLOACK before OI".into());
        }
    }
    let oi = Frame::bare(Kind::Oi, origin, SERVER_ID, 0).to_bytes();
    stream.write_all(&oi).map_err(|e| format!("OI: {e}"))?;
    let mut buf = Vec::new();
    read_until(stream, &mut buf, |b| {
        Ok((b.len() >= HEADER_LEN).then_some(HEADER_LEN))
    })?;
    let reply = Header::peek(&buf).expect("8 bytes read");
    if reply.kind != OK {
        return Err(format!(
            "OI with origin {origin} refused (reply type {}); is the server fresh and are ids left?",
            reply.kind
        ));
    }
    Ok((reply.dest, buf.split_off(HEADER_LEN)))
}

/// HELLO claiming `name` (no accounts), then OI as an exhibitor: a member
/// session for the room workloads.
pub fn identify_named(
    stream: &mut (impl Read + Write),
    name: &str,
) -> Result<(u16, Vec<u8>), String> {
    let (code, rest) = hello(stream, name, b"")?;
    if code != 0 || !rest.is_empty() {
        return Err(format!("HELLO claiming {name:?} answered code {code}"));
    }
    identify(stream, 0, None)
}

/// Opens an emitter paired with the named exhibitor `exhibitor` and sends
/// JOIN for the room `relay` (a queue room when `queue` is Some, with that
/// prefetch: a JOIN of prefetch 1 carries none); returns the room
/// id from the ROOMACK. The emitter must outlive the run (its FLW or close
/// would dismiss its exhibitor), so it is leaked: the process's exit
/// closes it.
pub fn join_room(
    addr: std::net::SocketAddr,
    exhibitor: u16,
    queue: Option<u8>,
) -> Result<u16, String> {
    let mut stream = crate::setup::connect(addr)?;
    let (code, _) = hello(&mut stream, "", b"")?;
    if code != 0 {
        return Err(format!("HELLO of a joining emitter answered code {code}"));
    }
    let (id, _) = identify(&mut stream, exhibitor, None)?;
    let name = b"relay";
    // PROTOCOL.md, JOIN: flag 1 a queue, flag 2 a prefetch byte after the name.
    let prefetch = queue.filter(|&p| p != 1);
    let flags = u8::from(queue.is_some()) | if prefetch.is_some() { 2 } else { 0 };
    let mut join = header(JOIN, id, SERVER_ID, 1).to_vec();
    let len = 2 + name.len() + usize::from(prefetch.is_some());
    join.extend_from_slice(&(len as u16).to_be_bytes());
    join.extend_from_slice(&[flags, name.len() as u8]);
    join.extend_from_slice(name);
    join.extend(prefetch);
    stream.write_all(&join).map_err(|e| format!("JOIN: {e}"))?;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |b| {
        Ok(b.get(8..10)
            .map(|l| 10 + u16::from_be_bytes([l[0], l[1]]) as usize)
            .filter(|&end| b.len() >= end))
    })?;
    if u16::from_be_bytes([buf[0], buf[1]]) != ROOMACK || buf.get(10) != Some(&0) {
        return Err(format!(
            "JOIN answered {:?}: does the server speak rooms?",
            &buf[..]
        ));
    }
    let room = u16::from_be_bytes([buf[12], buf[13]]);
    Box::leak(Box::new(stream));
    Ok(room)
}

fn header(kind: u16, origin: u16, dest: u16, seq: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&kind.to_be_bytes());
    h[2..4].copy_from_slice(&origin.to_be_bytes());
    h[4..6].copy_from_slice(&dest.to_be_bytes());
    h[6..8].copy_from_slice(&seq.to_be_bytes());
    h
}

/// Appends one MSG carrying `head` padded with `pad`.
#[inline]
pub fn encode(s: &mut Session, head: &[u8], pad: &[u8], out: &mut impl Sink) {
    // OI was frame 0; every MSG takes the next number.
    s.seq = s.seq.wrapping_add(1);
    let len = (head.len() + pad.len()) as u16;
    out.message(&[
        &header(MSG, s.own_id, s.dest, s.seq),
        &len.to_be_bytes(),
        head,
        pad,
    ]);
}

/// Consumes the whole frames at the start of `input`; returns their length.
pub fn parse(
    s: &mut Session,
    input: &[u8],
    out: &mut impl Sink,
    ctx: &mut Ctx,
) -> Result<usize, String> {
    let mut pos = 0;
    while input.len() - pos >= HEADER_LEN {
        let frame = &input[pos..];
        let kind = u16::from_be_bytes([frame[0], frame[1]]);
        match kind {
            MSG => {
                let Some(len) = frame.get(8..10) else { break };
                let end = 10 + u16::from_be_bytes([len[0], len[1]]) as usize;
                if frame.len() < end {
                    break;
                }
                ctx.delivered(&frame[10..end]);
                let origin = u16::from_be_bytes([frame[2], frame[3]]);
                let seq = u16::from_be_bytes([frame[6], frame[7]]);
                out.message(&[&header(OK, s.own_id, origin, seq)]);
                pos += end;
            }
            OK | ERRO => {
                if let Role::Pub(p) = s.role {
                    ctx.replied(p, kind == OK);
                }
                pos += HEADER_LEN;
            }
            WHO => {
                // A name for an id, numbered like CLIST: acknowledged, not shown.
                let Some(len) = frame.get(8..10) else { break };
                let end = 10 + u16::from_be_bytes([len[0], len[1]]) as usize;
                if frame.len() < end {
                    break;
                }
                let seq = u16::from_be_bytes([frame[6], frame[7]]);
                out.message(&[&header(OK, s.own_id, SERVER_ID, seq)]);
                pos += end;
            }
            FLW => {
                let seq = u16::from_be_bytes([frame[6], frame[7]]);
                out.message(&[&header(OK, s.own_id, SERVER_ID, seq)]);
                return Err("the evchat server sent FLW (it is shutting down)".into());
            }
            _ => {
                return Err(format!(
                    "unexpected evchat frame type {kind} for {:?} {}",
                    s.role, s.own_id
                ));
            }
        }
    }
    Ok(pos)
}
