//! What the clients (emitter, exhibitor, `evchat chat`) share: a blocking
//! frame reader, a frame writer that several threads may use, registration
//! with the server and its errors, the emitter's input syntax, line input
//! (a line editor on a terminal, bounded plain reads otherwise) with output
//! that does not garble it, and the escaping that keeps received text from
//! reaching a terminal raw. Clients are simple blocking programs; only the
//! server needs an event loop.

use crate::proto::{
    BROADCAST, ClientId, EXHIBITOR_IDS, Frame, Kind, MAX_TEXT_LEN, SERVER_ID, SeqCounter,
};
use bytes::BytesMut;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use unicode_width::UnicodeWidthStr;

/// How long a client waits for the server to answer its OI.
pub(crate) const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client waits for the OK to its own FLW.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads whole frames from a blocking socket.
pub struct FrameReader {
    stream: TcpStream,
    buf: BytesMut,
}

impl FrameReader {
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
    control: Option<TcpStream>,
}

struct WriterState {
    stream: TcpStream,
    seq: SeqCounter,
}

impl FrameWriter {
    pub(crate) fn new(stream: TcpStream) -> FrameWriter {
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

/// Why registration failed, worded for the one stderr line a client prints:
/// each names the cause, not the symptom.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("exhibitor {0} is not connected or is already paired with another emitter")]
    NotPairable(ClientId),
    #[error("the server refused the exhibitor: all exhibitor ids (4096-8191) are in use")]
    NoExhibitorId,
    #[error("the server refused the emitter: all emitter ids (1-4095) are in use")]
    NoEmitterId,
    #[error(
        "no answer to OI from {addr} within {} s — is an evchat server listening there?",
        REGISTRATION_TIMEOUT.as_secs()
    )]
    NoAnswer { addr: String },
    #[error("{addr} closed the connection without answering OI — is it an evchat server?")]
    Closed { addr: String },
    #[error("{addr} does not speak this protocol (it sent: `{sent}`)")]
    Foreign { addr: String, sent: String },
    #[error("registration with {addr} failed: {source}")]
    Io { addr: String, source: io::Error },
}

/// A client connected and identified.
pub struct Registered {
    pub id: ClientId,
    pub reader: FrameReader,
    pub writer: FrameWriter,
}

/// How many of a foreign peer's first bytes an error shows.
const SHOWN_PREFIX: usize = 24;

/// Connects to `addr` ("host:port", "1.2.3.4:port" or "[::1]:port") and
/// sends OI with `origin` (0: exhibitor; an exhibitor id: pair with it).
pub fn register(addr: &str, origin: ClientId) -> Result<Registered, RegisterError> {
    let stream = TcpStream::connect(addr).map_err(|e| RegisterError::Connect {
        addr: addr.to_string(),
        reason: connect_reason(&e),
    })?;
    let io_error = |source| RegisterError::Io {
        addr: addr.to_string(),
        source,
    };
    let _ = stream.set_nodelay(true);
    let mut read_half = stream.try_clone().map_err(io_error)?;
    let writer = FrameWriter::new(stream);
    let oi_seq = writer
        .send_numbered(|seq| Frame::bare(Kind::Oi, origin, SERVER_ID, seq), |_| {})
        .map_err(io_error)?;
    let (reply, raw, rest) = read_reply(&mut read_half, addr)?;
    read_half.set_read_timeout(None).map_err(io_error)?;
    let foreign = || RegisterError::Foreign {
        addr: addr.to_string(),
        sent: show_prefix(&raw),
    };
    match reply.kind {
        Kind::Ok if reply.seq == oi_seq && reply.origin == SERVER_ID => Ok(Registered {
            id: reply.dest,
            reader: FrameReader {
                stream: read_half,
                buf: rest,
            },
            writer,
        }),
        Kind::Erro if reply.origin == SERVER_ID => Err(match origin {
            BROADCAST => RegisterError::NoExhibitorId,
            o if EXHIBITOR_IDS.contains(&o) => RegisterError::NotPairable(o),
            _ => RegisterError::NoEmitterId,
        }),
        _ => Err(foreign()),
    }
}

/// Reads the first frame within [`REGISTRATION_TIMEOUT`]; returns it, the
/// first bytes as received (for an error message) and what followed it.
fn read_reply(
    stream: &mut TcpStream,
    addr: &str,
) -> Result<(Frame, Vec<u8>, BytesMut), RegisterError> {
    let deadline = Instant::now() + REGISTRATION_TIMEOUT;
    let mut buf = BytesMut::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let mut probe = buf.clone();
        match Frame::decode(&mut probe) {
            Ok(Some(frame)) => {
                let raw = buf[..buf.len().min(SHOWN_PREFIX + 1)].to_vec();
                return Ok((frame, raw, probe));
            }
            Ok(None) => {}
            Err(_) => {
                return Err(RegisterError::Foreign {
                    addr: addr.to_string(),
                    sent: show_prefix(&buf),
                });
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let no_answer = || RegisterError::NoAnswer {
            addr: addr.to_string(),
        };
        if left.is_zero() {
            return Err(no_answer());
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => {
                return Err(RegisterError::Closed {
                    addr: addr.to_string(),
                });
            }
            // Part of something that is not a frame of ours, then EOF.
            Ok(0) => {
                return Err(RegisterError::Foreign {
                    addr: addr.to_string(),
                    sent: show_prefix(&buf),
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Err(no_answer()),
                _ => {
                    return Err(RegisterError::Io {
                        addr: addr.to_string(),
                        source: e,
                    });
                }
            },
        }
    }
}

/// The first bytes a peer sent, escaped, with `…` when there were more.
fn show_prefix(bytes: &[u8]) -> String {
    let mut shown = escape_text(&bytes[..bytes.len().min(SHOWN_PREFIX)]);
    if bytes.len() > SHOWN_PREFIX {
        shown.push('…');
    }
    shown
}

/// Why a connection attempt failed, in words a user can act on.
fn connect_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "nothing is listening there (connection refused) — is the server running?".into()
        }
        io::ErrorKind::InvalidInput => "expected HOST:PORT, for example 127.0.0.1:5000".into(),
        _ => e.to_string(),
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
    if text.len() > MAX_TEXT_LEN {
        return Err(SyntaxError::TooLong(text.len()));
    }
    Ok(Command::Message {
        dest,
        text: text.to_vec(),
    })
}

/// The longest input line kept: a message's text plus the longest `(ID) `
/// prefix. A longer line is counted and reported, never stored whole.
pub(crate) const MAX_LINE_LEN: usize = MAX_TEXT_LEN + "(65535) ".len();

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLine {
    /// A line, without its ending (LF or CR LF).
    Line(Vec<u8>),
    /// A line over the limit, with its length in bytes; it was discarded.
    TooLong(usize),
    /// End of input: the end of a pipe, or Ctrl-D in the line editor.
    End,
    /// Ctrl-C in the line editor.
    Interrupted,
}

/// Reads one line, keeping at most `limit` bytes of it: a longer line is
/// consumed to its end and reported with its length, so memory stays
/// bounded whatever arrives on stdin.
pub fn read_bounded_line(input: &mut impl BufRead, limit: usize) -> io::Result<InputLine> {
    let mut line = Vec::new();
    // Bytes consumed, line ending included.
    let mut consumed = 0usize;
    let mut last = 0u8;
    let mut ending = None;
    loop {
        let chunk = match input.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            },
        };
        if chunk.is_empty() {
            break;
        }
        let newline = chunk.iter().position(|&b| b == b'\n');
        let take = newline.map_or(chunk.len(), |i| i + 1);
        if let Some(i) = newline {
            let before = if i > 0 { chunk[i - 1] } else { last };
            ending = Some(if before == b'\r' { 2 } else { 1 });
        }
        // Room for the limit plus the line ending.
        let room = (limit + 2).saturating_sub(line.len());
        line.extend_from_slice(&chunk[..take.min(room)]);
        last = chunk[take - 1];
        consumed += take;
        input.consume(take);
        if newline.is_some() {
            break;
        }
    }
    if consumed == 0 {
        return Ok(InputLine::End);
    }
    let len = consumed - ending.unwrap_or(0);
    if len > limit {
        return Ok(InputLine::TooLong(len));
    }
    line.truncate(len);
    Ok(InputLine::Line(line))
}

/// The terminal settings found before the line editor started, restored by
/// [`exit_process`] when a client exits from another thread mid-edit.
static SAVED_TERMINAL: OnceLock<libc::termios> = OnceLock::new();

/// Exits the process, first giving the terminal back in the state the line
/// editor found it (cooked mode, bracketed paste off).
pub fn exit_process(code: i32) -> ! {
    if let Some(saved) = SAVED_TERMINAL.get() {
        // SAFETY: tcsetattr reads the struct passed; fd 0 is our stdin.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
        }
        let mut out = io::stdout().lock();
        let _ = out.write_all(b"\x1b[?2004l");
        let _ = out.flush();
    }
    std::process::exit(code)
}

type Screen = Arc<Mutex<Box<dyn rustyline::ExternalPrinter + Send>>>;

/// Where a client's output lines go: above the input line of the line
/// editor (never through it), or plainly to stdout and stderr. Cheap to
/// clone; every thread of a client prints through one.
#[derive(Clone)]
pub struct Printer {
    screen: Option<Screen>,
}

impl Printer {
    /// Plain output: lines to stdout, errors to stderr.
    pub(crate) fn plain() -> Printer {
        Printer { screen: None }
    }

    /// Prints one output line; an error means nobody can see it any more.
    pub fn line(&self, text: &str) -> io::Result<()> {
        match &self.screen {
            None => crate::cli::print_line(text),
            Some(screen) => lock(screen)
                .print(format!("{text}\n"))
                .map_err(io::Error::other),
        }
    }

    /// Prints a last line (to stderr if `error`) and exits through
    /// [`exit_process`]. On a terminal the line is written at once over the
    /// input line: the line editor will not run again to show it.
    pub fn exit_with(&self, line: &str, error: bool, code: i32) -> ! {
        match &self.screen {
            None if error => eprintln!("{line}"),
            None => {
                let _ = crate::cli::print_line(line);
            }
            Some(screen) => {
                // Held so that no other output lands in the middle.
                let _quiet = lock(screen);
                let mut out = io::stdout().lock();
                // The line editor keeps output processing on: LF becomes CR LF.
                let _ = write!(out, "\r\x1b[2K{line}\n");
                let _ = out.flush();
            }
        }
        exit_process(code)
    }

    /// Prints an error line: to stderr plainly, above the input line otherwise.
    pub fn error(&self, text: &str) {
        match &self.screen {
            None => eprintln!("{text}"),
            Some(_) => {
                let _ = self.line(text);
            }
        }
    }
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where input lines come from: a line editor (editing, in-memory history)
/// when stdin and stdout are terminals, bounded plain reads otherwise.
pub struct LineInput {
    source: Source,
    printer: Printer,
    /// The further lines of a multi-line paste, each taken as if typed.
    queued: VecDeque<Vec<u8>>,
    /// Terminal rows the last entry from the editor occupies (0: none, or erased).
    rows_on_screen: usize,
}

enum Source {
    Plain(io::StdinLock<'static>),
    Editor(Box<rustyline::DefaultEditor>),
}

/// Input lines the line editor remembers for the up arrow.
const HISTORY_LINES: usize = 1000;

impl LineInput {
    /// The line editor on a terminal, plain reading otherwise.
    pub fn stdin() -> LineInput {
        let terminal = io::stdin().is_terminal() && io::stdout().is_terminal();
        if terminal && let Some(input) = LineInput::editor() {
            return input;
        }
        LineInput {
            source: Source::Plain(io::stdin().lock()),
            printer: Printer::plain(),
            queued: VecDeque::new(),
            rows_on_screen: 0,
        }
    }

    fn editor() -> Option<LineInput> {
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the struct on success, checked below.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, saved.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: initialised by the successful tcgetattr above.
        let _ = SAVED_TERMINAL.set(unsafe { saved.assume_init() });
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_LINES)
            .ok()?
            .auto_add_history(false)
            .build();
        let mut editor = rustyline::DefaultEditor::with_config(config).ok()?;
        let printer = editor.create_external_printer().ok()?;
        let screen: Screen = Arc::new(Mutex::new(Box::new(printer)));
        Some(LineInput {
            source: Source::Editor(Box::new(editor)),
            printer: Printer {
                screen: Some(screen),
            },
            queued: VecDeque::new(),
            rows_on_screen: 0,
        })
    }

    /// The printer that keeps output off the line being typed.
    pub fn printer(&self) -> Printer {
        self.printer.clone()
    }

    /// Whether input comes from the line editor.
    pub fn is_terminal(&self) -> bool {
        matches!(self.source, Source::Editor(_))
    }

    /// The next line, at most 65543 bytes kept (the longest message line); `prompt` is shown
    /// by the line editor only. A paste of several lines gives them one by
    /// one, as a pipe would.
    pub fn read(&mut self, prompt: &str) -> io::Result<InputLine> {
        if let Some(line) = self.queued.pop_front() {
            return Ok(bounded(line));
        }
        let editor = match &mut self.source {
            Source::Plain(stdin) => return read_bounded_line(stdin, MAX_LINE_LEN),
            Source::Editor(editor) => editor,
        };
        match editor.readline(prompt) {
            Ok(entry) => {
                if !entry.trim().is_empty() {
                    let _ = editor.add_history_entry(entry.as_str());
                }
                self.rows_on_screen = rows_taken(prompt, &entry, terminal_columns());
                self.queued = entry
                    .split('\n')
                    .map(|line| line.strip_suffix('\r').unwrap_or(line).as_bytes().to_vec())
                    .collect();
                let first = self.queued.pop_front().unwrap_or_default();
                Ok(bounded(first))
            }
            Err(rustyline::error::ReadlineError::Interrupted) => Ok(InputLine::Interrupted),
            Err(rustyline::error::ReadlineError::Eof) => Ok(InputLine::End),
            Err(rustyline::error::ReadlineError::Io(e)) => Err(e),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Removes the last entry (prompt and text) from the screen, for a
    /// client that shows each line again in its own form once answered.
    pub fn erase_entered(&mut self) {
        let Some(screen) = &self.printer.screen else {
            return;
        };
        if self.rows_on_screen == 0 {
            return;
        }
        // Held so that no output line lands between the moves.
        let _quiet = lock(screen);
        let mut out = io::stdout().lock();
        for _ in 0..self.rows_on_screen {
            let _ = out.write_all(b"\x1b[1A\x1b[2K");
        }
        let _ = out.write_all(b"\r");
        let _ = out.flush();
        self.rows_on_screen = 0;
    }
}

fn bounded(line: Vec<u8>) -> InputLine {
    if line.len() > MAX_LINE_LEN {
        InputLine::TooLong(line.len())
    } else {
        InputLine::Line(line)
    }
}

/// The terminal rows a prompt and an entry take on a screen `columns` wide:
/// each line of the entry wraps on its own, the first after the prompt.
fn rows_taken(prompt: &str, entry: &str, columns: usize) -> usize {
    let columns = columns.max(1);
    entry
        .split('\n')
        .enumerate()
        .map(|(i, line)| {
            let lead = if i == 0 { prompt.width() } else { 0 };
            (lead + line.width()).div_ceil(columns).max(1)
        })
        .sum()
}

/// The terminal's width in columns (80 when it cannot be read).
fn terminal_columns() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct passed.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if rc == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

/// Renders received text for a terminal: printable characters as they are,
/// backslash doubled, control characters, bidirectional and invisible
/// formatting characters and invalid UTF-8 as escapes, so no sender can move
/// the cursor, clear the screen, forge an extra line or reorder what is shown.
pub fn escape_text(bytes: &[u8]) -> String {
    let mut shown = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => shown.push_str("\\\\"),
                '\n' => shown.push_str("\\n"),
                '\r' => shown.push_str("\\r"),
                '\t' => shown.push_str("\\t"),
                c if c.is_control() || is_bidi_or_invisible(c) => {
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

/// The formatting characters that change how the rest of a line is drawn
/// (left-to-right/right-to-left marks, embeddings, overrides, isolates).
fn is_bidi_or_invisible(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
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
        // A sign is not a digit, though u16's parser would take it.
        assert_eq!(
            parse_command(b"(CREQ) +5"),
            Err(SyntaxError::BadId("+5".into()))
        );
        let mut long = b"(1) ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 65536));
        assert_eq!(parse_command(&long), Err(SyntaxError::TooLong(65536)));
        // The longest text a MSG carries is taken.
        long.pop();
        assert_eq!(
            parse_command(&long),
            Ok(Command::Message {
                dest: 1,
                text: vec![b'a'; 65535]
            })
        );
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

    fn read_all(input: &[u8], limit: usize) -> Vec<InputLine> {
        let mut reader = io::BufReader::with_capacity(4, input);
        let mut lines = Vec::new();
        loop {
            match read_bounded_line(&mut reader, limit).unwrap() {
                InputLine::End => return lines,
                line => lines.push(line),
            }
        }
    }

    #[test]
    fn bounded_lines_strip_endings_and_report_long_lines_with_their_size() {
        let line = |s: &str| InputLine::Line(s.as_bytes().to_vec());
        assert_eq!(
            read_all(b"ab\r\n\ncdef\nghijklmnop\r\nlast", 8),
            vec![
                line("ab"),
                line(""),
                line("cdef"),
                InputLine::TooLong(10),
                line("last")
            ]
        );
        // Exactly at the limit is kept; one over is not, with or without CR.
        assert_eq!(
            read_all(b"12345678\r\n123456789\r\n123456789", 8),
            vec![
                line("12345678"),
                InputLine::TooLong(9),
                InputLine::TooLong(9)
            ]
        );
        // A CR alone in the middle of a chunk boundary is text.
        assert_eq!(read_all(b"a\rb\n", 8), vec![line("a\rb")]);
    }

    #[test]
    fn rows_taken_counts_wrapping_wide_characters_and_pasted_lines() {
        assert_eq!(rows_taken("all> ", "", 80), 1);
        assert_eq!(rows_taken("all> ", &"x".repeat(75), 80), 1);
        assert_eq!(rows_taken("all> ", &"x".repeat(76), 80), 2);
        // Two columns per character.
        assert_eq!(rows_taken("all> ", &"語".repeat(38), 80), 2);
        assert_eq!(rows_taken("all> ", "one\ntwo\n", 80), 3);
    }

    #[test]
    fn escape_neutralises_bidi_and_invisible_formatting() {
        let all = "\u{200e}\u{200f}\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}\u{2066}\u{2067}\u{2068}\u{2069}";
        assert_eq!(
            escape_text(all.as_bytes()),
            "\\u{200e}\\u{200f}\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{202e}\\u{2066}\\u{2067}\\u{2068}\\u{2069}"
        );
        // Neighbours of those ranges are ordinary text.
        assert_eq!(
            escape_text("\u{200d}\u{2070}".as_bytes()),
            "\u{200d}\u{2070}"
        );
    }
}
