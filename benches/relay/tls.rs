//! TLS under the `evchat-tls` and `nats-tls` targets: rustls, as a client,
//! fed from the same non-blocking sockets as the plain targets.
//!
//! Handshakes happen during setup on blocking sockets (`rustls::StreamOwned`);
//! then each connection keeps its `ClientConnection` and the driver moves
//! bytes through it: what arrives is read into rustls and decrypted into the
//! scratch buffer, what is queued is encrypted into the socket. nats-server
//! 2.9 sends its INFO line in clear before the handshake, so that line is
//! read first and handed back ahead of the decrypted bytes.

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::{Arc, OnceLock};

static CONFIG: OnceLock<(Arc<ClientConfig>, ServerName<'static>)> = OnceLock::new();

/// Trusts the CA in `ca` (PEM) and expects `name` in the server's certificate.
pub fn configure(ca: &Path, name: &str) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).map_err(|e| format!("--ca {}: {e}", ca.display()))?
    {
        let cert = cert.map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(name.to_owned()).map_err(|e| format!("--tls-name: {e}"))?;
    let _ = CONFIG.set((Arc::new(config), name));
    Ok(())
}

fn client() -> Result<ClientConnection, String> {
    let (config, name) = CONFIG.get().ok_or("TLS is not configured (--ca)")?;
    ClientConnection::new(config.clone(), name.clone()).map_err(|e| e.to_string())
}

/// The first flight a client sends (its ClientHello, in TLS records), for
/// the handshake storm to send again and again: the server does its whole
/// half of a handshake for each copy, the sender none of its own.
pub fn client_hello() -> Result<Vec<u8>, String> {
    let mut conn = client()?;
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).map_err(|e| e.to_string())?;
    }
    Ok(hello)
}

/// A TLS connection during setup, blocking; `clear` is what was read in
/// clear before the handshake and is read back first.
pub struct TlsStream {
    stream: StreamOwned<ClientConnection, TcpStream>,
    clear: Vec<u8>,
}

impl TlsStream {
    /// Completes the handshake on `sock` (after `clear` was read from it).
    pub fn handshake(sock: TcpStream, clear: Vec<u8>) -> Result<TlsStream, String> {
        let mut stream = StreamOwned::new(client()?, sock);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        Ok(TlsStream { stream, clear })
    }

    /// The socket and the session, for the driver; the bytes already
    /// decrypted stay in the session's reader.
    pub fn into_parts(self) -> (TcpStream, Box<ClientConnection>, Vec<u8>) {
        let StreamOwned { conn, sock } = self.stream;
        (sock, Box::new(conn), self.clear)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.clear.is_empty() {
            let n = buf.len().min(self.clear.len());
            buf[..n].copy_from_slice(&self.clear[..n]);
            self.clear.drain(..n);
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// Reads decrypted bytes into `buf` from a non-blocking socket: what rustls
/// holds first, then records from the socket until some plaintext comes
/// out, the socket would block (`WouldBlock`) or it closed (`Ok(0)`).
pub fn read(tls: &mut ClientConnection, sock: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) if n > 0 => return Ok(n),
            Ok(_) => return Ok(0), // close_notify: the server closed
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        match tls.read_tls(sock) {
            Ok(0) => return Ok(0),
            Ok(_) => {
                tls.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Encrypts as much of `plain` as rustls takes and writes records to the
/// socket until it would block. Returns (plaintext taken, bytes written to
/// the socket, whether the socket blocked).
pub fn write(
    tls: &mut ClientConnection,
    sock: &mut impl Write,
    plain: &[u8],
) -> io::Result<(usize, usize, bool)> {
    let taken = if plain.is_empty() {
        0
    } else {
        tls.writer().write(plain)?
    };
    let mut wire = 0;
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => wire += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((taken, wire, true)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((taken, wire, false))
}
