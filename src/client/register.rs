//! Connecting and registering: OI, the server's answer, and an error for
//! each way it can fail, worded for the one line a client prints.

use super::wire::{FrameReader, FrameWriter};
use crate::cli::escape_text;
use crate::proto::{BROADCAST, ClientId, EXHIBITOR_IDS, Frame, Kind, SERVER_ID};
use crate::tls::ClientStream;
use crate::tls::client::{ConnectError, Endpoint};
use bytes::BytesMut;
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// How long a client waits for the server to answer its OI.
pub(crate) const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why registration failed, worded for the one stderr line a client prints:
/// each names the cause, not the symptom.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("exhibitor {0} is not connected or is already paired with another emitter")]
    NotPairable(ClientId),
    #[error("the server refused the exhibitor: all exhibitor ids (4096-8191) are in use")]
    NoExhibitorId,
    #[error("the server refused the emitter: all emitter ids (1-4095) are in use")]
    NoEmitterId,
    #[error(
        "no answer to OI from {addr} within {} s — is an evchat server listening there?",
        REGISTRATION_TIMEOUT.as_secs()
    )]
    NoAnswer { addr: String },
    #[error("{addr} closed the connection without answering OI — is it an evchat server?")]
    Closed { addr: String },
    #[error("{addr} does not speak this protocol (it sent: `{sent}`)")]
    Foreign { addr: String, sent: String },
    #[error("registration with {addr} failed: {source}")]
    Io { addr: String, source: io::Error },
}

/// A client connected and identified.
pub struct Registered {
    pub id: ClientId,
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

/// How many of a foreign peer's first bytes an error shows.
const SHOWN_PREFIX: usize = 24;

/// Connects to `target` (`host:port`, `1.2.3.4:port` or `[::1]:port`, with
/// TLS or without) and sends OI with `origin` (0: exhibitor; an exhibitor
/// id: pair with it).
pub fn register(target: &Endpoint, origin: ClientId) -> Result<Registered, RegisterError> {
    let addr = &target.to_string();
    let stream = target.connect(REGISTRATION_TIMEOUT).map_err(|e| match e {
        ConnectError::Io(e) => RegisterError::Connect {
            addr: addr.to_string(),
            reason: connect_reason(&e),
        },
        ConnectError::Tls(reason) => RegisterError::Connect {
            addr: addr.to_string(),
            reason,
        },
    })?;
    let io_error = |source| RegisterError::Io {
        addr: addr.to_string(),
        source,
    };
    let mut read_half = stream.try_clone().map_err(io_error)?;
    let writer = FrameWriter::new(stream);
    let oi_seq = writer
        .send_numbered(|seq| Frame::bare(Kind::Oi, origin, SERVER_ID, seq), |_| {})
        .map_err(io_error)?;
    let (reply, raw, rest) = read_reply(&mut read_half, addr)?;
    read_half.set_read_timeout(None).map_err(io_error)?;
    let foreign = || RegisterError::Foreign {
        addr: addr.to_string(),
        sent: show_prefix(&raw),
    };
    match reply.kind {
        Kind::Ok if reply.seq == oi_seq && reply.origin == SERVER_ID => Ok(Registered {
            id: reply.dest,
            reader: FrameReader::new(read_half, rest),
            writer,
        }),
        Kind::Erro if reply.origin == SERVER_ID => Err(match origin {
            BROADCAST => RegisterError::NoExhibitorId,
            o if EXHIBITOR_IDS.contains(&o) => RegisterError::NotPairable(o),
            _ => RegisterError::NoEmitterId,
        }),
        _ => Err(foreign()),
    }
}

/// Reads the first frame within [`REGISTRATION_TIMEOUT`]; returns it, the
/// first bytes as received (for an error message) and what followed it.
fn read_reply(
    stream: &mut ClientStream,
    addr: &str,
) -> Result<(Frame, Vec<u8>, BytesMut), RegisterError> {
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let mut probe = buf.clone();
        match Frame::decode(&mut probe) {
            Ok(Some(frame)) => {
                let raw = buf[..buf.len().min(SHOWN_PREFIX + 1)].to_vec();
                return Ok((frame, raw, probe));
            }
            Ok(None) => {}
            Err(_) => {
                return Err(RegisterError::Foreign {
                    addr: addr.to_string(),
                    sent: show_prefix(&buf),
                });
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let no_answer = || RegisterError::NoAnswer {
            addr: addr.to_string(),
        };
        if left.is_zero() {
            return Err(no_answer());
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => {
                return Err(RegisterError::Closed {
                    addr: addr.to_string(),
                });
            }
            // Part of something that is not a frame of ours, then EOF.
            Ok(0) => {
                return Err(RegisterError::Foreign {
                    addr: addr.to_string(),
                    sent: show_prefix(&buf),
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Err(no_answer()),
                _ => {
                    return Err(RegisterError::Io {
                        addr: addr.to_string(),
                        source: e,
                    });
                }
            },
        }
    }
}

/// The first bytes a peer sent, escaped, with `…` when there were more.
fn show_prefix(bytes: &[u8]) -> String {
    let mut shown = escape_text(&bytes[..bytes.len().min(SHOWN_PREFIX)]);
    if bytes.len() > SHOWN_PREFIX {
        shown.push('…');
    }
    shown
}

/// Why a connection attempt failed, in words a user can act on.
fn connect_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "nothing is listening there (connection refused) — is the server running?".into()
        }
        io::ErrorKind::InvalidInput => "expected HOST:PORT, for example 127.0.0.1:5000".into(),
        _ => e.to_string(),
    }
}
