//! One server-side TLS session below a connection: a rustls
//! `ServerConnection` fed the socket's bytes by the connection, handing
//! back plaintext chunk by chunk, and producing the encrypted bytes the
//! connection writes. Its buffers are bounded: rustls' own by
//! [`RUSTLS_BUFFER_LIMIT`], the encrypted output by taking plaintext only
//! while less than [`CIPHER_HIGH_WATER`] waits for the socket.

use super::TlsAcceptor;
use bytes::{Buf, BufMut, BytesMut};
use rustls::ServerConnection;
use std::fmt;
use std::io::{self, BufRead, Write};

/// What rustls may hold of unsent plaintext (before the handshake ends) and
/// of unsent records: the connection's own output buffer holds the rest,
/// under `--max-queue`.
const RUSTLS_BUFFER_LIMIT: usize = 32 * 1024;
/// Plaintext is encrypted only while fewer encrypted bytes than this wait
/// for the socket, so a peer that does not read holds at most this much
/// here (and a record's worth more).
const CIPHER_HIGH_WATER: usize = 32 * 1024;

/// Why a TLS session broke: the peer's bytes are not TLS, or TLS that
/// rustls refused (a bad handshake, an alert, a decryption failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFailure(String);

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

/// One TLS session and the encrypted bytes it has for the socket.
pub struct TlsSession {
    conn: ServerConnection,
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
            conn,
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
            match self.conn.read_tls(&mut bytes) {
                // No more is read after close_notify.
                Ok(0) => return Ok(TlsStatus::Closed),
                Ok(_) => {}
                // The plaintext is drained below after every read, so this
                // is rustls' own limit on records it could not yet process.
                Err(e) => return Ok(TlsStatus::Failed(TlsFailure(e.to_string()))),
            }
            let state = match self.conn.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // The alert that says why, if rustls queued one.
                    self.drain();
                    return Ok(TlsStatus::Failed(TlsFailure(e.to_string())));
                }
            };
            self.drain();
            let mut waiting = state.plaintext_bytes_to_read();
            let mut reader = self.conn.reader();
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
            if state.peer_has_closed() {
                return Ok(TlsStatus::Closed);
            }
        }
        Ok(TlsStatus::Open)
    }

    /// Moves what rustls has for the socket into the encrypted output.
    fn drain(&mut self) {
        let mut sink = (&mut self.cipher).writer();
        while self.conn.wants_write() {
            // Writing into memory cannot fail.
            if self.conn.write_tls(&mut sink).is_err() {
                break;
            }
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
    /// (its output comes with the handshake's end, which a read brings).
    pub fn flush(&mut self, plain: &mut BytesMut, socket: &mut impl Write) -> io::Result<bool> {
        loop {
            let mut progressed = false;
            if !plain.is_empty() && self.cipher.len() < CIPHER_HIGH_WATER {
                let taken = self.conn.writer().write(plain)?;
                plain.advance(taken);
                progressed = taken > 0;
            }
            if plain.is_empty() && self.notify_pending {
                self.notify_pending = false;
                self.conn.send_close_notify();
            }
            self.drain();
            if self.cipher.is_empty() {
                if plain.is_empty() || !progressed {
                    return Ok(true);
                }
                continue;
            }
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
