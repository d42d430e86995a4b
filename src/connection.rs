//! One client socket and its two buffers: the bytes read but not yet decoded,
//! and the bytes queued but not yet written. It knows nothing of ids or rules,
//! nor where frames begin and end in its input (the event loop parses them
//! in place); it encodes output frames and keeps the unsent output within a
//! cap so that a client that never reads cannot grow the server's memory.

use crate::proto::Encode;
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
    /// Bytes read and not yet decoded: a partial frame, or whole frames an
    /// emitter held back by flow control has not had routed yet.
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
        let status = self.read_discard(scratch)?;
        if let ReadStatus::Data(n) = status {
            self.input.extend_from_slice(&scratch[..n]);
        }
        Ok(status)
    }

    /// Reads once into `scratch` only: the bytes are thrown away (a closing
    /// connection).
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

    /// Lends out the bytes read and not yet decoded, so that frames can be
    /// parsed in place while the caller holds other connections mutably;
    /// [`Connection::return_input`] gives them back.
    pub fn take_input(&mut self) -> BytesMut {
        std::mem::take(&mut self.input)
    }

    /// Takes back the input lent by [`Connection::take_input`], of which the
    /// first `consumed` bytes were decoded.
    pub fn return_input(&mut self, mut input: BytesMut, consumed: usize) {
        input.advance(consumed);
        // A drained buffer is dropped: an idle connection keeps none.
        self.input = if input.is_empty() {
            BytesMut::new()
        } else {
            input
        };
    }

    /// Bytes waiting in the input buffer.
    pub fn buffered_input(&self) -> usize {
        self.input.len()
    }

    /// Queues a frame for writing, encoded straight into the output buffer;
    /// false (and nothing queued) when it would take the unsent output past
    /// the cap.
    pub fn queue(&mut self, frame: &impl Encode) -> bool {
        self.fits(frame.encoded_len()) && {
            frame.encode_into(&mut self.output);
            true
        }
    }

    fn fits(&self, len: usize) -> bool {
        self.output.len() + len <= self.max_output
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
    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    /// Bytes queued and not yet written.
    pub fn queued_output(&self) -> usize {
        self.output.len()
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
    use crate::proto::{Frame, FrameView, Kind, SERVER_ID};
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

    /// The kinds of the whole frames buffered, consumed as the server does.
    fn decode_all(conn: &mut Connection) -> Vec<Kind> {
        let input = conn.take_input();
        let mut consumed = 0;
        let mut kinds = Vec::new();
        while let Some((frame, len)) = FrameView::parse(&input[consumed..]).unwrap() {
            kinds.push(frame.kind);
            consumed += len;
        }
        conn.return_input(input, consumed);
        kinds
    }

    #[test]
    fn an_idle_connection_releases_the_buffers_its_traffic_left() {
        let (mut conn, mut peer) = pair();
        let frame = Frame::bare(Kind::Ok, SERVER_ID, 1, 0);
        let ok = frame.to_bytes();
        assert!(conn.queue(&frame));
        assert!(conn.flush().unwrap());
        peer.write_all(&ok).unwrap();
        let mut scratch = [0u8; 64];
        while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(8) {}
        // A partial frame waits in the input buffer: it is kept.
        peer.write_all(&ok[..3]).unwrap();
        while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(3) {}
        assert_eq!(decode_all(&mut conn), vec![Kind::Ok]);
        conn.release_idle_buffers();
        assert!(conn.buffer_capacity() >= 3, "pending input is kept");
        peer.write_all(&ok[3..]).unwrap();
        while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(5) {}
        assert_eq!(decode_all(&mut conn), vec![Kind::Ok]);
        let held = conn.buffer_capacity();
        assert_eq!(conn.release_idle_buffers(), held);
        assert_eq!(conn.buffer_capacity(), 0);
    }

    #[test]
    fn output_past_the_cap_is_refused_whole() {
        let (mut conn, _peer) = pair();
        // A MSG takes 10 bytes more than its text.
        let msg = |len: usize| Frame::msg(1, 4096, 0, vec![b'x'; len]).unwrap();
        assert!(conn.queue(&msg(990)));
        assert!(!conn.queue(&msg(15)));
        let wire = msg(15).to_bytes();
        let (view, _) = FrameView::parse(&wire).unwrap().unwrap();
        assert!(!conn.queue(&view));
        assert!(conn.queue(&msg(14)));
    }
}
