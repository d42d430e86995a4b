//! What the emitter and the exhibitor share: a blocking frame reader, a
//! frame writer that several threads may use, registration with the server,
//! the emitter's input syntax, and the escaping that keeps received text from
//! reaching a terminal raw. Clients are simple blocking programs; only the
//! server needs an event loop.

use crate::proto::{ClientId, Frame, Kind, SERVER_ID, SeqCounter};
use bytes::BytesMut;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

/// How long a client waits for the server to answer its OI.
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the OK to its own FLW.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads whole frames from a blocking socket.
pub struct FrameReader {
    stream: TcpStream,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(stream: TcpStream) -> FrameReader {
        FrameReader {
            stream,
            buf: BytesMut::with_capacity(4096),
        }
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
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
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
}

struct WriterState {
    stream: TcpStream,
    seq: SeqCounter,
}

impl FrameWriter {
    pub fn new(stream: TcpStream) -> FrameWriter {
        FrameWriter {
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

/// Why registration failed, worded for the one stderr line a client prints.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("registration refused by the server")]
    Refused,
    #[error("the server closed the connection during registration")]
    Closed,
    #[error("unexpected reply to OI: {0}")]
    Unexpected(Frame),
    #[error("registration failed: {0}")]
    Io(#[from] io::Error),
}

/// A client connected and identified.
pub struct Registered {
    pub id: ClientId,
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

/// Connects to `addr` ("host:port", "1.2.3.4:port" or "[::1]:port") and
/// sends OI with `origin` (0: exhibitor; an exhibitor id: pair with it).
pub fn register(addr: &str, origin: ClientId) -> Result<Registered, RegisterError> {
    let stream = TcpStream::connect(addr).map_err(|source| RegisterError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    let _ = stream.set_nodelay(true);
    let mut reader = FrameReader::new(stream.try_clone()?);
    let writer = FrameWriter::new(stream);
    let oi_seq =
        writer.send_numbered(|seq| Frame::bare(Kind::Oi, origin, SERVER_ID, seq), |_| {})?;
    reader.set_timeout(Some(REGISTRATION_TIMEOUT))?;
    let reply = reader.read_frame()?.ok_or(RegisterError::Closed)?;
    reader.set_timeout(None)?;
    match reply.kind {
        Kind::Ok if reply.seq == oi_seq => Ok(Registered {
            id: reply.dest,
            reader,
            writer,
        }),
        Kind::Erro => Err(RegisterError::Refused),
        _ => Err(RegisterError::Unexpected(reply)),
    }
}

/// One line of emitter input, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `(ID) text`: a MSG to ID (0: every exhibitor).
    Message { dest: ClientId, text: Vec<u8> },
    /// `(CREQ) ID`: ask for the client list to be sent to ID.
    ClientList { dest: ClientId },
    /// `(FLW)`: leave.
    Leave,
}

/// Why an input line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("expected '(ID) text', '(CREQ) ID' or '(FLW)'")]
    Unrecognised,
    #[error("'{0}' is not an id from 0 to 65535")]
    BadId(String),
    #[error("expected a space between ')' and the text")]
    MissingSpace,
    #[error("'(FLW)' takes nothing after it")]
    TrailingAfterLeave,
    #[error("text is {0} bytes; a message carries at most 65535")]
    TooLong(usize),
}

fn parse_id(word: &[u8]) -> Result<ClientId, SyntaxError> {
    let text = String::from_utf8_lossy(word).into_owned();
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return Err(SyntaxError::BadId(text));
    }
    text.parse().map_err(|_| SyntaxError::BadId(text))
}

/// Parses one line of emitter input (without its line ending).
///
/// The single space after `)` separates the keyword from what follows and is
/// not part of the text; any further spaces are. Keywords ignore case.
pub fn parse_command(line: &[u8]) -> Result<Command, SyntaxError> {
    let Some(rest) = line.strip_prefix(b"(") else {
        return Err(SyntaxError::Unrecognised);
    };
    let Some(close) = rest.iter().position(|&b| b == b')') else {
        return Err(SyntaxError::Unrecognised);
    };
    let (keyword, after) = (&rest[..close], &rest[close + 1..]);
    if keyword.eq_ignore_ascii_case(b"FLW") {
        return if after.trim_ascii().is_empty() {
            Ok(Command::Leave)
        } else {
            Err(SyntaxError::TrailingAfterLeave)
        };
    }
    if keyword.eq_ignore_ascii_case(b"CREQ") {
        let Some(arg) = after.strip_prefix(b" ") else {
            return Err(SyntaxError::Unrecognised);
        };
        return Ok(Command::ClientList {
            dest: parse_id(arg.trim_ascii())?,
        });
    }
    if keyword.is_empty() || !keyword.iter().all(u8::is_ascii_digit) {
        return Err(SyntaxError::Unrecognised);
    }
    let dest = parse_id(keyword)?;
    let text = match after {
        [] => &[][..],
        [b' ', text @ ..] => text,
        _ => return Err(SyntaxError::MissingSpace),
    };
    if text.len() > crate::proto::MAX_TEXT_LEN {
        return Err(SyntaxError::TooLong(text.len()));
    }
    Ok(Command::Message {
        dest,
        text: text.to_vec(),
    })
}

/// Renders received text for a terminal: printable characters as they are,
/// backslash doubled, control characters and invalid UTF-8 as escapes, so no
/// sender can move the cursor, clear the screen or forge an extra line.
pub fn escape_text(bytes: &[u8]) -> String {
    let mut shown = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => shown.push_str("\\\\"),
                '\n' => shown.push_str("\\n"),
                '\r' => shown.push_str("\\r"),
                '\t' => shown.push_str("\\t"),
                c if c.is_control() => {
                    let code = c as u32;
                    if code <= 0xff {
                        let _ = write!(shown, "\\x{code:02x}");
                    } else {
                        let _ = write!(shown, "\\u{{{code:x}}}");
                    }
                }
                c => shown.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(shown, "\\x{b:02x}");
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_line_drops_exactly_one_space() {
        assert_eq!(
            parse_command(b"(4096)  two spaces"),
            Ok(Command::Message {
                dest: 4096,
                text: b" two spaces".to_vec()
            })
        );
        assert_eq!(
            parse_command(b"(0)"),
            Ok(Command::Message {
                dest: 0,
                text: vec![]
            })
        );
        assert_eq!(parse_command(b"(7)x"), Err(SyntaxError::MissingSpace));
    }

    #[test]
    fn keywords_ignore_case() {
        assert_eq!(parse_command(b"(flw)"), Ok(Command::Leave));
        assert_eq!(
            parse_command(b"(Creq) 4097"),
            Ok(Command::ClientList { dest: 4097 })
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(parse_command(b""), Err(SyntaxError::Unrecognised));
        assert_eq!(parse_command(b"hello"), Err(SyntaxError::Unrecognised));
        assert_eq!(parse_command(b"(abc) hi"), Err(SyntaxError::Unrecognised));
        assert_eq!(
            parse_command(b"(65536) hi"),
            Err(SyntaxError::BadId("65536".into()))
        );
        assert_eq!(
            parse_command(b"(CREQ) x"),
            Err(SyntaxError::BadId("x".into()))
        );
        assert_eq!(
            parse_command(b"(FLW) now"),
            Err(SyntaxError::TrailingAfterLeave)
        );
        let mut long = b"(1) ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 65536));
        assert_eq!(parse_command(&long), Err(SyntaxError::TooLong(65536)));
    }

    #[test]
    fn escape_keeps_text_and_neutralises_controls() {
        assert_eq!(
            escape_text("Oi, tudo bem? ção".as_bytes()),
            "Oi, tudo bem? ção"
        );
        assert_eq!(escape_text(b"a\x1b[2Jb\nc\\"), "a\\x1b[2Jb\\nc\\\\");
        assert_eq!(escape_text(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape_text("\u{85}".as_bytes()), "\\x85");
    }
}
