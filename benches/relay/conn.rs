//! One client connection during the load phase: the socket, the bytes of a
//! partial frame carried between reads, the output not yet written, and (on
//! the `*-ws` targets) the WebSocket framing state, or (on the `*-tls`
//! targets) the TLS session the bytes pass through.

use crate::flow::Counters;
use crate::ws::WsConn;
use mio::net::TcpStream;
use rustls::ClientConnection;
use std::io::{self, Read, Write};

/// What a connection plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publisher (evchat emitter) number `p`: index into `Ctx::flows`.
    Pub(usize),
    /// Subscriber (evchat exhibitor).
    Sub,
}

/// Protocol state a connection keeps between frames.
#[derive(Debug, Clone)]
pub struct Session {
    pub role: Role,
    /// evchat: the id the server assigned (origin of everything we send).
    pub own_id: u16,
    /// evchat: MSG destination (0 or the paired exhibitor).
    pub dest: u16,
    /// evchat: sequence number of the last frame sent; MQTT QoS 1: last packet id.
    pub seq: u16,
    /// Redis/NATS/MQTT: the bytes that precede every payload this publisher
    /// sends; a Redis Streams consumer: its XREAD up to the id argument.
    pub prefix: Vec<u8>,
    /// Redis Streams consumer: entries of the current XREAD reply still to
    /// parse (0: between replies).
    pub left: u32,
    /// Redis Streams consumer: the id of the last entry read, where the next
    /// XREAD starts (capacity kept, so updating it never allocates).
    pub last_id: Vec<u8>,
    /// raw subscriber: the fixed payload size its stream is split by.
    pub frame: usize,
}

impl Session {
    pub fn new(role: Role) -> Session {
        Session {
            role,
            own_id: 0,
            dest: 0,
            seq: 0,
            prefix: Vec::new(),
            left: 0,
            last_id: Vec::new(),
            frame: 0,
        }
    }
}

pub struct Conn {
    pub sock: TcpStream,
    /// Start of a frame that has not fully arrived.
    pub pending: Vec<u8>,
    /// Bytes to write; `out[out_pos..]` is what is left.
    pub out: Vec<u8>,
    pub out_pos: usize,
    /// The last write was short: wait for a writable event.
    pub blocked: bool,
    /// In the driver's flush list this turn.
    pub queued: bool,
    pub session: Session,
    /// WebSocket framing; unused on plain TCP targets.
    pub ws: WsConn,
    /// The TLS session on `*-tls` targets: `out` is plaintext, encrypted
    /// into it as it is flushed.
    pub tls: Option<Box<ClientConnection>>,
}

/// Output above this is compacted away once written.
const COMPACT_AT: usize = 1 << 20;

impl Conn {
    pub fn new(
        sock: TcpStream,
        leftover: Vec<u8>,
        session: Session,
        ws: WsConn,
        tls: Option<Box<ClientConnection>>,
    ) -> Conn {
        Conn {
            sock,
            pending: leftover,
            out: Vec::with_capacity(4096),
            out_pos: 0,
            blocked: false,
            queued: false,
            session,
            ws,
            tls,
        }
    }

    /// Reads what arrived: bytes from the socket, or on TLS the plaintext
    /// of the records that arrived. `Ok(0)`: the server closed.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.sock.read(buf),
            Some(tls) => crate::tls::read(tls, &mut self.sock, buf),
        }
    }

    /// Bytes queued and not yet written (on TLS, plus one while records
    /// wait in the session: their size is rustls's to know).
    pub fn unsent(&self) -> usize {
        let sealed = self.tls.as_ref().is_some_and(|t| t.wants_write());
        self.out.len() - self.out_pos + usize::from(sealed)
    }

    /// Writes what it can. A short write means the socket buffer is full
    /// (an edge-triggered writable event follows when it drains).
    pub fn flush(&mut self, counters: &mut Counters) -> io::Result<()> {
        if let Some(tls) = &mut self.tls {
            if !self.blocked {
                let (taken, wire, blocked) =
                    crate::tls::write(tls, &mut self.sock, &self.out[self.out_pos..])?;
                self.out_pos += taken;
                counters.wire_out += wire as u64;
                self.blocked = blocked;
            }
            if self.out_pos == self.out.len() {
                self.out.clear();
                self.out_pos = 0;
            }
            return Ok(());
        }
        while self.out_pos < self.out.len() && !self.blocked {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.out_pos += n;
                    counters.wire_out += n as u64;
                    if self.out_pos < self.out.len() {
                        self.blocked = true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.blocked = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos >= COMPACT_AT {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(())
    }
}
