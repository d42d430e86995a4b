//! A client's connection, plain or TLS, as blocking reads and writes that
//! two threads can share: the clients read frames on one thread and write
//! on others. A TLS session is one state for both directions, so it sits
//! behind a lock that is never held while the socket blocks a read: the
//! reader waits on the socket alone, then decrypts under the lock. Records
//! leave in the order they were made: every write to the socket, whichever
//! thread makes the record, goes through one more lock, taken first.

use rustls::ClientConnection;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Ciphertext read from the socket at a time: decrypted, it always fits in
/// rustls' plaintext buffer, which is empty whenever the socket is read.
const CIPHER_CHUNK: usize = 8 * 1024;

/// One handle on a client connection; [`ClientStream::try_clone`] makes
/// another on the same connection for another thread.
pub struct ClientStream {
    socket: TcpStream,
    tls: Option<Arc<Shared>>,
}

struct Shared {
    /// Taken before `session` by whoever writes records to the socket.
    sending: Mutex<()>,
    session: Mutex<ClientConnection>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl ClientStream {
    /// A plain connection.
    pub fn plain(socket: TcpStream) -> ClientStream {
        ClientStream { socket, tls: None }
    }

    pub(super) fn tls(socket: TcpStream, session: ClientConnection) -> ClientStream {
        ClientStream {
            socket,
            tls: Some(Arc::new(Shared {
                sending: Mutex::new(()),
                session: Mutex::new(session),
            })),
        }
    }

    /// Another handle on the same connection.
    pub fn try_clone(&self) -> io::Result<ClientStream> {
        Ok(ClientStream {
            socket: self.socket.try_clone()?,
            tls: self.tls.clone(),
        })
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_write_timeout(timeout)
    }

    /// Non-blocking from now on (a last write that must not wait).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.socket.set_nonblocking(nonblocking)
    }

    /// Shuts the socket down: a thread blocked reading it sees the end.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.socket.shutdown(how)
    }

    /// Writes what the session has for the socket, in order. The caller
    /// holds `sending`; the session's lock is not held while writing.
    fn send_records(shared: &Shared, mut socket: &TcpStream) -> io::Result<()> {
        loop {
            let mut records = Vec::new();
            {
                let mut session = lock(&shared.session);
                while session.wants_write() {
                    session.write_tls(&mut records)?;
                }
            }
            if records.is_empty() {
                return Ok(());
            }
            socket.write_all(&records)?;
        }
    }
}

impl Read for ClientStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(shared) = &self.tls else {
            return self.socket.read(buf);
        };
        let mut chunk = [0u8; CIPHER_CHUNK];
        loop {
            {
                let mut session = lock(&shared.session);
                match session.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The server closed without close_notify: an end all the same.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
            }
            let n = self.socket.read(&mut chunk)?;
            let replies = {
                let mut session = lock(&shared.session);
                let mut rest = &chunk[..n];
                if n == 0 {
                    session.read_tls(&mut rest)?;
                }
                // Nothing more is read after close_notify (read_tls: 0).
                while !rest.is_empty() && session.read_tls(&mut rest)? > 0 {
                    session
                        .process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                }
                session.wants_write()
            };
            if replies {
                let _order = lock(&shared.sending);
                ClientStream::send_records(shared, &self.socket)?;
            }
        }
    }
}

impl Write for ClientStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(shared) = &self.tls else {
            return self.socket.write(buf);
        };
        let _order = lock(&shared.sending);
        let taken = lock(&shared.session).writer().write(buf)?;
        ClientStream::send_records(shared, &self.socket)?;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &self.tls {
            None => self.socket.flush(),
            Some(_) => Ok(()),
        }
    }
}
