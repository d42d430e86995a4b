//! One server-side TLS session below a connection: a rustls
//! `ServerConnection` fed the socket's bytes by the connection, handing
//! back plaintext chunk by chunk, and producing the encrypted bytes the
//! connection writes. Its buffers are bounded by [`RUSTLS_BUFFER_LIMIT`]:
//! rustls' own records go straight to the socket, and the encrypted bytes
//! kept here are only what reading made (a handshake flight, an alert, or
//! records rustls held when a read came), written before anything newer.
//!
//! While the handshake runs, its steps can be done elsewhere: the session
//! [`lend`](TlsSession::lend)s its rustls state with the bytes read as a
//! [`HandshakeJob`], which a worker thread [`run`](HandshakeJob::run)s,
//! and [`take_back`](TlsSession::take_back) puts the state back with the
//! records the step produced (the event loop then never signs or
//! exchanges keys; see `tls/workers.rs`). Meanwhile the session is
//! *away*: it writes the records it already has and nothing else.

use super::TlsAcceptor;
use bytes::{Buf, BufMut, BytesMut};
use rustls::{IoState, ServerConnection};
use std::fmt;
use std::io::{self, BufRead, Write};

/// What rustls may hold of unsent plaintext (before the handshake ends) and
/// of unsent records: the connection's own output buffer holds the rest,
/// under `--max-queue`. 64 KiB, so that a loop turn's output for one
/// connection (about 50 KB at 1:100) is sealed whole and leaves in one
/// `writev`: at 32 KiB it took two (BENCHMARKS.md, "TLS at 1:100, round
/// two").
const RUSTLS_BUFFER_LIMIT: usize = 64 * 1024;

/// Why a TLS session broke: the peer's bytes are not TLS, or TLS that
/// rustls refused (a bad handshake, an alert, a decryption failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure(String);

impl TlsFailure {
    /// The handshake worker running the session's step failed, and the
    /// session with it.
    pub fn lost_on_worker() -> TlsFailure {
        TlsFailure("the handshake worker failed on this session".into())
    }
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TLS: {}", self.0)
    }
}

/// How a session stands after it took bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum TlsStatus {
    /// Every plaintext chunk was taken (or none came: still handshaking).
    Open,
    /// The peer sent close_notify.
    Closed,
    /// The session broke; an alert may be queued for the peer.
    Failed(TlsFailure),
}

/// Handshake bytes a worker takes per job at most: a whole TLS record
/// (16 KiB of payload, its header and the largest expansion rustls
/// allows), so that each step makes progress and a job's memory is
/// bounded.
pub const MAX_HANDSHAKE_JOB: usize = 16 * 1024 + 5 + 2048;

/// One TLS session and the encrypted bytes it has for the socket.
pub struct TlsSession {
    /// The rustls state; `None` while it is away on a handshake worker.
    conn: Option<ServerConnection>,
    /// Records for the socket, in order: handshake, alerts, data.
    cipher: BytesMut,
    /// close_notify goes out once the plaintext queued before it has.
    notify_pending: bool,
}

impl TlsSession {
    /// A session that starts its handshake with `acceptor`'s identity.
    pub fn new(acceptor: &TlsAcceptor) -> Result<TlsSession, TlsFailure> {
        let mut conn = ServerConnection::new(acceptor.config.clone())
            .map_err(|e| TlsFailure(e.to_string()))?;
        conn.set_buffer_limit(Some(RUSTLS_BUFFER_LIMIT));
        Ok(TlsSession {
            conn: Some(conn),
            cipher: BytesMut::new(),
            notify_pending: false,
        })
    }

    /// Takes bytes from the socket and hands each plaintext chunk they
    /// decrypt to to `inner`, whose `Err` (its transport closed or failed)
    /// stops the feed and is returned.
    pub fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut inner: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<TlsStatus, E> {
        while !bytes.is_empty() {
            let Some(conn) = self.conn.as_mut() else {
                // The connection reads nothing while the session is away.
                return Ok(TlsStatus::Failed(TlsFailure(
                    "bytes fed while the handshake is on a worker".into(),
                )));
            };
            match conn.read_tls(&mut bytes) {
                // No more is read after close_notify.
                Ok(0) => return Ok(TlsStatus::Closed),
                Ok(_) => {}
                // The plaintext is drained below after every read, so this
                // is rustls' own limit on records it could not yet process.
                Err(e) => return Ok(TlsStatus::Failed(TlsFailure(e.to_string()))),
            }
            let state = match conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // The alert that says why, if rustls queued one.
                    self.drain();
                    return Ok(TlsStatus::Failed(TlsFailure(e.to_string())));
                }
            };
            self.drain();
            if self.deliver(state, &mut inner)? == TlsStatus::Closed {
                return Ok(TlsStatus::Closed);
            }
        }
        Ok(TlsStatus::Open)
    }

    /// Hands the plaintext rustls has decrypted (`state` says how much) to
    /// `inner`, chunk by chunk; `Closed` once the peer sent close_notify.
    fn deliver<E>(
        &mut self,
        state: IoState,
        inner: &mut impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<TlsStatus, E> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(TlsStatus::Open);
        };
        let mut waiting = state.plaintext_bytes_to_read();
        let mut reader = conn.reader();
        while waiting > 0 {
            let chunk = match reader.fill_buf() {
                Ok(chunk) if !chunk.is_empty() => chunk,
                _ => break,
            };
            let len = chunk.len();
            inner(chunk)?;
            reader.consume(len);
            waiting = waiting.saturating_sub(len);
        }
        Ok(if state.peer_has_closed() {
            TlsStatus::Closed
        } else {
            TlsStatus::Open
        })
    }

    /// Whether the handshake is still under way (also while it is away).
    pub fn is_handshaking(&self) -> bool {
        self.conn.as_ref().is_none_or(|conn| conn.is_handshaking())
    }

    /// Whether the rustls state is away on a handshake worker.
    pub fn is_away(&self) -> bool {
        self.conn.is_none()
    }

    /// Lends the rustls state, with `bytes` read from the socket (at most
    /// [`MAX_HANDSHAKE_JOB`]), for a worker to run the handshake's next
    /// step; `None` if it is away already. Until
    /// [`take_back`](TlsSession::take_back) the session writes only the
    /// records it has.
    pub fn lend(&mut self, bytes: Vec<u8>) -> Option<HandshakeJob> {
        let conn = self.conn.take()?;
        Some(HandshakeJob { conn, bytes })
    }

    /// Takes the rustls state back from a worker, queues the records its
    /// step produced, and hands `inner` the plaintext that came with the
    /// handshake's last flight and what followed it in the job's bytes,
    /// as [`feed`](TlsSession::feed) would have.
    pub fn take_back<E>(
        &mut self,
        step: HandshakeStep,
        mut inner: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<TlsStatus, E> {
        let HandshakeStep {
            conn,
            records,
            unread,
            status,
        } = step;
        self.conn = Some(conn);
        self.cipher.extend_from_slice(&records);
        if status != TlsStatus::Open {
            return Ok(status);
        }
        if let Some(conn) = self.conn.as_mut()
            && !conn.is_handshaking()
        {
            // Processing what is buffered already costs nothing new: it
            // says how much plaintext the step left for the reader.
            let state = match conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    self.drain();
                    return Ok(TlsStatus::Failed(TlsFailure(e.to_string())));
                }
            };
            if self.deliver(state, &mut inner)? == TlsStatus::Closed {
                return Ok(TlsStatus::Closed);
            }
        }
        self.feed(&unread, inner)
    }

    /// Moves what rustls has for the socket into the encrypted output.
    fn drain(&mut self) {
        if let Some(conn) = self.conn.as_mut() {
            drain_records(conn, &mut self.cipher);
        }
    }

    /// Encrypted bytes waiting for the socket.
    pub fn pending(&self) -> usize {
        self.cipher.len()
    }

    /// Sends close_notify once everything queued before it has gone into
    /// the session (see [`TlsSession::flush`]).
    pub fn close(&mut self) {
        self.notify_pending = true;
    }

    /// Encrypts `plain` (taking it from the front as it goes) and writes the
    /// records to `socket` until both are empty or the socket would block.
    /// Returns whether everything was written: true also while the
    /// handshake is not done and rustls holds what it cannot yet encrypt
    /// (its output comes with the handshake's end, which a read brings),
    /// and while the session is away, when `plain` waits for its return.
    pub fn flush(&mut self, plain: &mut BytesMut, socket: &mut impl Write) -> io::Result<bool> {
        // Records made while reading (a handshake flight, an alert) are
        // older than anything encrypted below: they go first.
        while !self.cipher.is_empty() {
            match socket.write(&self.cipher) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.cipher.advance(n),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(false),
                    io::ErrorKind::Interrupted => {}
                    _ => return Err(e),
                },
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(true);
        };
        loop {
            let mut progressed = false;
            if !plain.is_empty() {
                // rustls takes no more than its buffer limit holds.
                let taken = conn.writer().write(plain)?;
                plain.advance(taken);
                progressed = taken > 0;
            }
            if plain.is_empty() && self.notify_pending {
                self.notify_pending = false;
                conn.send_close_notify();
            }
            // From rustls' records straight to the socket (one vectored
            // write): copying them into a buffer of our own first cost a
            // copy and that buffer's growth for every byte sent.
            while conn.wants_write() {
                match conn.write_tls(socket) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock => return Ok(false),
                        io::ErrorKind::Interrupted => {}
                        _ => return Err(e),
                    },
                }
            }
            if plain.is_empty() || !progressed {
                return Ok(true);
            }
        }
    }

    /// Frees the encrypted output's buffer when it is empty; returns the
    /// bytes released.
    pub fn release_idle_buffer(&mut self) -> usize {
        if !self.cipher.is_empty() || self.cipher.capacity() == 0 {
            return 0;
        }
        let released = self.cipher.capacity();
        self.cipher = BytesMut::new();
        released
    }
}

/// Moves what rustls has for the socket into `cipher`.
fn drain_records(conn: &mut ServerConnection, cipher: &mut BytesMut) {
    let mut sink = cipher.writer();
    while conn.wants_write() {
        // Writing into memory cannot fail.
        if conn.write_tls(&mut sink).is_err() {
            break;
        }
    }
}

/// A handshake step for a worker: a session's rustls state and the bytes
/// read for it. `Send`, as rustls' state is.
pub struct HandshakeJob {
    conn: ServerConnection,
    bytes: Vec<u8>,
}

/// What a worker's step came to, for [`TlsSession::take_back`].
pub struct HandshakeStep {
    conn: ServerConnection,
    /// The records the step produced (the server's flight, an alert).
    records: BytesMut,
    /// The job's bytes not read because the handshake ended before them
    /// (the client's first application data): the loop feeds them, so
    /// that its plaintext goes where plaintext goes.
    unread: Vec<u8>,
    /// `Open` while the session lives (handshaking or done).
    status: TlsStatus,
}

impl HandshakeJob {
    /// Bytes this job carries.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it carries none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Runs the handshake on the job's bytes (the expensive part of TLS:
    /// the certificate's signature, the key exchange), stopping where the
    /// handshake ends: what follows is the loop's to read.
    pub fn run(self) -> HandshakeStep {
        let HandshakeJob { mut conn, bytes } = self;
        let mut records = BytesMut::new();
        let mut rest = &bytes[..];
        let status = loop {
            if rest.is_empty() || !conn.is_handshaking() {
                break TlsStatus::Open;
            }
            match conn.read_tls(&mut rest) {
                Ok(0) => break TlsStatus::Closed,
                Ok(_) => {}
                Err(e) => break TlsStatus::Failed(TlsFailure(e.to_string())),
            }
            match conn.process_new_packets() {
                Ok(state) if state.peer_has_closed() => break TlsStatus::Closed,
                Ok(_) => drain_records(&mut conn, &mut records),
                Err(e) => break TlsStatus::Failed(TlsFailure(e.to_string())),
            }
        };
        // The alert that says why, if rustls queued one.
        drain_records(&mut conn, &mut records);
        HandshakeStep {
            conn,
            records,
            unread: rest.to_vec(),
            status,
        }
    }
}
