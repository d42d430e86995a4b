//! One client socket and its two buffers: the bytes read but not yet decoded,
//! and the bytes queued but not yet written. It knows nothing of ids or rules;
//! it frames input with the codec and keeps output within a cap so that a
//! client that never reads cannot grow the server's memory.

use crate::proto::{Frame, ProtoError};
use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use std::io::{self, Read, Write};

/// Output buffers that grew past this are released once flushed, so an idle
/// connection holds no large allocation.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;

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
