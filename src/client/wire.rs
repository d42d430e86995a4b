//! Frames over a blocking connection (plain or TLS, see
//! [`ClientStream`]): a reader that yields whole frames, and a writer that
//! several threads may share, drawing the client's sequence numbers in the
//! order its frames leave.

use crate::proto::{ClientId, Frame, Kind, SeqCounter};
use crate::tls::ClientStream;
use bytes::BytesMut;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

/// Reads whole frames from a blocking socket.
pub struct FrameReader {
    stream: ClientStream,
    buf: BytesMut,
}

impl FrameReader {
    /// A reader of `stream` that first decodes `buf`, bytes already read.
    pub(super) fn new(stream: ClientStream, buf: BytesMut) -> FrameReader {
        FrameReader { stream, buf }
    }

    /// The next frame; `Ok(None)` when the server closed the connection.
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        let mut chunk = [0u8; 4096];
        loop {
            match Frame::decode(&mut self.buf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                },
            };
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }
}

/// The sending half of a client: one lock around the socket and the
/// client's sequence counter, so frames from different threads never
/// interleave and numbers are drawn in the order frames are written.
pub struct FrameWriter {
    inner: Mutex<WriterState>,
    /// A second handle on the socket, outside the lock, so that a shutdown
    /// never waits behind a write blocked on a dead peer.
    control: Option<ClientStream>,
}

struct WriterState {
    stream: ClientStream,
    seq: SeqCounter,
}

impl FrameWriter {
    pub(crate) fn new(stream: ClientStream) -> FrameWriter {
        FrameWriter {
            control: stream.try_clone().ok(),
            inner: Mutex::new(WriterState {
                stream,
                seq: SeqCounter::new(),
            }),
        }
    }

    /// Sends a frame the client originates: `build` gets its sequence number.
    /// `before_write` runs under the lock with the number, before the bytes
    /// leave, so a reply can never arrive before the caller has noted it.
    pub fn send_numbered(
        &self,
        build: impl FnOnce(u16) -> Frame,
        before_write: impl FnOnce(u16),
    ) -> io::Result<u16> {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let seq = state.seq.next_seq();
        let frame = build(seq);
        before_write(seq);
        state.stream.write_all(&frame.to_bytes())?;
        Ok(seq)
    }

    /// Shuts the connection down both ways, so that a thread blocked reading
    /// it sees the end of the stream.
    pub fn shutdown(&self) {
        if let Some(stream) = &self.control {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Sends an acknowledgement (OK/ERRO), which draws no number.
    pub fn send_ack(
        &self,
        kind: Kind,
        origin: ClientId,
        dest: ClientId,
        seq: u16,
    ) -> io::Result<()> {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state
            .stream
            .write_all(&Frame::bare(kind, origin, dest, seq).to_bytes())
    }
}
