//! One client socket and its two buffers: the bytes read but not yet decoded,
//! and the bytes queued but not yet written. It knows nothing of ids or rules;
//! it frames input with the codec and keeps output within a cap so that a
//! client that never reads cannot grow the server's memory.

use crate::proto::{Frame, ProtoError};
use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use std::io::{self, Read, Write};

/// Output buffers that grew past this are released as soon as they are
/// flushed; smaller ones are kept for the next turn's frames (a busy
/// connection would otherwise allocate every turn) until
/// [`Connection::release_idle_buffers`].
const KEEP_OUTPUT_CAPACITY: usize = 64 * 1024;

/// What a read attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Bytes were appended to the input buffer.
    Data(usize),
    /// Nothing more to read until the next readiness event.
    WouldBlock,
    /// The peer closed its side.
    Closed,
}

/// A client connection as the event loop sees it.
pub struct Connection {
    pub socket: TcpStream,
    /// Bytes read and not yet decoded (at most one partial frame between turns).
    input: BytesMut,
    /// Encoded frames not yet written.
    output: BytesMut,
    /// Past this many unsent bytes the client is a slow consumer.
    max_output: usize,
    /// WRITABLE interest is registered (only while output is pending).
    pub wants_write: bool,
}

impl Connection {
    pub fn new(socket: TcpStream, max_output: usize) -> Connection {
        Connection {
            socket,
            input: BytesMut::new(),
            output: BytesMut::new(),
            max_output,
            wants_write: false,
        }
    }

    /// Reads once from the socket into the input buffer via `scratch`, so
    /// that the buffer grows only by what arrived.
    pub fn read_once(&mut self, scratch: &mut [u8]) -> io::Result<ReadStatus> {
        loop {
            return match self.socket.read(scratch) {
                Ok(0) => Ok(ReadStatus::Closed),
                Ok(n) => {
                    self.input.extend_from_slice(&scratch[..n]);
                    Ok(ReadStatus::Data(n))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadStatus::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Reads once and throws the bytes away (a closing connection).
    pub fn read_discard(&mut self, scratch: &mut [u8]) -> io::Result<ReadStatus> {
        loop {
            return match self.socket.read(scratch) {
                Ok(0) => Ok(ReadStatus::Closed),
                Ok(n) => Ok(ReadStatus::Data(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadStatus::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// The next whole frame in the input buffer, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ProtoError> {
        let frame = Frame::decode(&mut self.input);
        if self.input.is_empty() {
            // Drop the spent allocation; an idle connection keeps none.
            self.input = BytesMut::new();
        }
        frame
    }

    /// Bytes waiting in the input buffer.
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    /// Queues an encoded frame for writing; false (and nothing queued) when
    /// it would take the unsent output past the cap.
    pub fn queue(&mut self, encoded: &[u8]) -> bool {
        if self.output.len() + encoded.len() > self.max_output {
            return false;
        }
        self.output.extend_from_slice(encoded);
        true
    }

    /// Frees the buffers of a connection with nothing pending, so an idle
    /// connection costs no buffer memory. Returns the bytes released.
    pub fn release_idle_buffers(&mut self) -> usize {
        let mut released = 0;
        if self.output.is_empty() && self.output.capacity() > 0 {
            released += self.output.capacity();
            self.output = BytesMut::new();
        }
        if self.input.is_empty() && self.input.capacity() > 0 {
            released += self.input.capacity();
            self.input = BytesMut::new();
        }
        released
    }

    /// Bytes allocated for this connection's buffers.
    pub fn buffer_capacity(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    /// Bytes queued and not yet written.
    pub fn queued_output(&self) -> usize {
        self.output.len()
    }

    /// True while queued bytes remain unwritten.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// Writes queued output until it is all written or the socket would
    /// block. Returns whether everything was written.
    pub fn flush(&mut self) -> io::Result<bool> {
        while !self.output.is_empty() {
            match self.socket.write(&self.output) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.output.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.output.capacity() > KEEP_OUTPUT_CAPACITY {
            self.output = BytesMut::new();
        } else {
            self.output.clear();
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Kind, SERVER_ID};
    use std::net::TcpListener;

    fn pair() -> (Connection, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        (
            Connection::new(TcpStream::from_std(server_side), 1024),
            peer,
        )
    }

    #[test]
    fn an_idle_connection_releases_the_buffers_its_traffic_left() {
        let (mut conn, mut peer) = pair();
        let ok = Frame::bare(Kind::Ok, SERVER_ID, 1, 0).to_bytes();
        assert!(conn.queue(&ok));
        assert!(conn.flush().unwrap());
        peer.write_all(&ok).unwrap();
        let mut scratch = [0u8; 64];
        while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(8) {}
        // A partial frame waits in the input buffer: it is kept.
        peer.write_all(&ok[..3]).unwrap();
        while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(3) {}
        assert_eq!(conn.next_frame().unwrap().map(|f| f.kind), Some(Kind::Ok));
        assert_eq!(conn.next_frame().unwrap(), None);
        conn.release_idle_buffers();
        assert!(conn.buffer_capacity() >= 3, "pending input is kept");
        peer.write_all(&ok[3..]).unwrap();
        while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(5) {}
        assert_eq!(conn.next_frame().unwrap().map(|f| f.kind), Some(Kind::Ok));
        let held = conn.buffer_capacity();
        assert_eq!(conn.release_idle_buffers(), held);
        assert_eq!(conn.buffer_capacity(), 0);
    }

    #[test]
    fn output_past_the_cap_is_refused_whole() {
        let (mut conn, _peer) = pair();
        assert!(conn.queue(&[0; 1000]));
        assert!(!conn.queue(&[0; 25]));
        assert!(conn.queue(&[0; 24]));
    }
}
