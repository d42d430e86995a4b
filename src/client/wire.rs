//! Frames over a blocking connection (plain or TLS, see [`ClientStream`]): a reader that yields whole frames (the
//! identity extension's too, for a client that opted in), and a writer that
//! several threads may share, drawing the client's sequence numbers in the
//! order its frames leave.

use crate::proto::ext::{ExtError, ExtFrame, is_ext_kind};
use crate::proto::{ClientId, Encode, Frame, FrameView, Header, Kind, ProtoError, SeqCounter};
use crate::tls::ClientStream;
use bytes::{Buf, BytesMut};
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
    /// An extension frame is an error here, as for a client that never
    /// opted in.
    pub fn read_frame(&mut self) -> io::Result<Option<Frame>> {
        self.read_with(|buf| Frame::decode(buf).map_err(invalid))
    }

    /// The next frame, the extension's included (for a client that sent
    /// HELLO); `Ok(None)` when the server closed the connection.
    pub fn read_incoming(&mut self) -> io::Result<Option<Incoming>> {
        self.read_with(|buf| {
            let parsed = parse_incoming(buf).map_err(invalid)?;
            Ok(parsed.map(|(frame, len)| {
                buf.advance(len);
                frame
            }))
        })
    }

    fn read_with<T>(
        &mut self,
        mut decode: impl FnMut(&mut BytesMut) -> io::Result<Option<T>>,
    ) -> io::Result<Option<T>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(frame) = decode(&mut self.buf)? {
                return Ok(Some(frame));
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

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A frame from the server to a client that opted in: the plain protocol's
/// or the extension's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Plain(Frame),
    Ext(ExtFrame),
}

/// Why bytes are no frame at all.
#[derive(Debug, thiserror::Error)]
pub enum IncomingError {
    #[error(transparent)]
    Plain(#[from] ProtoError),
    #[error(transparent)]
    Ext(#[from] ExtError),
}

/// The whole frame at the start of `buf` and the bytes it takes, of either
/// kind; consumes nothing. Both codecs bound a frame's length from its
/// first 10 bytes, so nothing over the largest frame is ever buffered.
pub fn parse_incoming(buf: &[u8]) -> Result<Option<(Incoming, usize)>, IncomingError> {
    match Header::peek(buf) {
        None => Ok(None),
        Some(h) if is_ext_kind(h.kind) => {
            Ok(ExtFrame::parse(buf)?.map(|(frame, len)| (Incoming::Ext(frame), len)))
        }
        Some(_) => {
            Ok(FrameView::parse(buf)?.map(|(view, len)| (Incoming::Plain(view.to_frame()), len)))
        }
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

    /// Sends a frame the client originates (a plain one, or an extension
    /// request such as JOIN): `build` gets its sequence number.
    /// `before_write` runs under the lock with the number, before the bytes
    /// leave, so a reply can never arrive before the caller has noted it.
    pub fn send_numbered<F: Encode>(
        &self,
        build: impl FnOnce(u16) -> F,
        before_write: impl FnOnce(u16),
    ) -> io::Result<u16> {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let seq = state.seq.next_seq();
        let frame = build(seq);
        before_write(seq);
        let mut bytes = BytesMut::with_capacity(frame.encoded_len());
        frame.encode_into(&mut bytes);
        state.stream.write_all(&bytes)?;
        Ok(seq)
    }

    /// Sends an extension frame that draws no number (HELLO is not counted).
    pub fn send_unnumbered(&self, frame: &ExtFrame) -> io::Result<()> {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        state.stream.write_all(&frame.to_bytes())
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
