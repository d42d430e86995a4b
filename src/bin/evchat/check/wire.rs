//! The checker's side of the wire: one blocking connection per simulated
//! client, where every connect, read and write has a deadline, so no server
//! can make a check hang. A connection remembers the frames it sent and the
//! bytes of the last frame it received, so that a failing check can show
//! both in hex with the frame decoded beside it.

use bytes::BytesMut;
use evchat::client::{Incoming, parse_incoming};
use evchat::proto::ext::{ExtFrame, is_ext_kind};
use evchat::proto::{
    ClientId, EXHIBITOR_IDS, Frame, FrameView, HEADER_LEN, Header, Kind, MAX_FRAME_LEN, SERVER_ID,
    SeqCounter, is_emitter_id, is_exhibitor_id,
};
use evchat::tls::ClientStream;
use evchat::tls::client::Endpoint;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What every check is given: where the server is and how long to wait.
pub struct Ctx {
    pub addr: SocketAddr,
    /// The deadline of every single read, write and connect.
    pub timeout: Duration,
    /// With TLS (`tls://HOST:PORT`, `--tls`): how to speak it.
    pub tls: Option<Endpoint>,
    /// The server's `--queue-wait`, when given (`--queue-wait`): the rooms
    /// level then waits that long for a queue message to be given up on.
    pub queue_wait: Option<Duration>,
    /// The server keeps history (`--history`): a TELL to an offline name
    /// is stored, so the rooms level checks it is.
    pub history: bool,
}

/// Frames a failure report shows from one connection's past (the latest).
const SENT_SHOWN: usize = 6;

/// How every text the checker sends begins: a server that keeps history
/// replays recent broadcasts to each new exhibitor, and this is how the
/// checker knows one of its own when it comes back.
const CHECK_TEXT: &str = "evchat check: ";

/// The text of a broadcast the checker sends: `what`, and against a server
/// that keeps history (`--history`) a mark of this run (process and clock),
/// so that a replay of another run's is told apart from it.
pub fn broadcast_text(ctx: &Ctx, what: &str) -> String {
    if !ctx.history {
        return format!("{CHECK_TEXT}{what}");
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    format!("{CHECK_TEXT}{what} ({}.{nanos})", std::process::id())
}

/// Whether `frame` is a broadcast the checker sent (this run or an earlier
/// one against the same server).
pub fn is_check_broadcast(frame: &Frame) -> bool {
    frame.kind == Kind::Msg
        && frame.dest == 0
        && frame
            .text()
            .is_some_and(|text| text.starts_with(CHECK_TEXT.as_bytes()))
}

/// The hint for a failure whose unexpected frame is a checker's broadcast
/// replayed by a server that keeps history (the check's own hint would
/// blame the rule it checks).
pub const REPLAY_HINT: &str = "this is a broadcast an earlier check sent, replayed: the server \
    keeps history and replays recent broadcasts to each new exhibitor; give --history to \
    evchat check (or start the server with --replay 0)";

impl Failure {
    /// The hint to show: the failure's own, a replay's, or the check's.
    pub fn hint_or<'a>(&'a self, check_hint: &'a str) -> &'a str {
        if let Some(hint) = self.hint.as_deref() {
            return hint;
        }
        let replayed = self
            .received_bytes
            .as_deref()
            .and_then(|bytes| FrameView::parse(bytes).ok().flatten())
            .is_some_and(|(view, _)| is_check_broadcast(&view.to_frame()));
        if replayed { REPLAY_HINT } else { check_hint }
    }
}

/// Why a check failed, as the report shows it.
#[derive(Debug, Clone)]
pub struct Failure {
    /// One line: what went wrong.
    pub summary: String,
    /// The frames that bear on the fault, each with its connection's label:
    /// the frame that should have caused what was awaited (when another
    /// connection awaited it), then the latest frames of the connection
    /// that saw the fault.
    pub sent: Vec<(String, Vec<u8>)>,
    pub expected: String,
    /// What arrived instead, in words ("nothing within 2s", a frame...).
    pub received: String,
    /// The bytes that arrived instead, when some did.
    pub received_bytes: Option<Vec<u8>>,
    /// Replaces the check's own hint when set.
    pub hint: Option<String>,
    /// The connection itself could not be made: why, in the clients'
    /// words (nothing at the address at all when no check ever got one).
    pub unreachable: Option<String>,
}

impl Failure {
    /// A failure with no frame to show (e.g. a connect that was refused):
    /// what was expected, and the error that came instead.
    pub fn plain(
        summary: impl Into<String>,
        expected: impl Into<String>,
        error: &std::io::Error,
    ) -> Failure {
        Failure {
            summary: summary.into(),
            sent: Vec::new(),
            expected: expected.into(),
            received: format!("error: {error}"),
            received_bytes: None,
            hint: None,
            unreachable: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }
}

/// What a read can end in besides a frame.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing (or only part of a frame, kept here) within the timeout.
    Timeout(Vec<u8>),
    /// The peer closed (EOF or reset); any incomplete frame is kept.
    Closed(Vec<u8>),
    /// The bytes start with a header of no known type.
    Undecodable(Vec<u8>),
    /// Any other socket error.
    Io(String),
}

/// What came back where a close or silence may itself be the answer.
#[derive(Debug)]
pub enum Answer {
    Frame(Frame),
    /// The server closed the connection between frames.
    Closed,
    /// Nothing at all within the timeout.
    Silence,
}

/// Bytes as `00 05 00 01 ...`, cut after 48 bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out: Vec<String> = bytes.iter().take(48).map(|b| format!("{b:02x}")).collect();
    if bytes.len() > 48 {
        out.push(format!("… ({} bytes)", bytes.len()));
    }
    out.join(" ")
}

/// A frame's bytes in words: `MSG(origin 1, dest 0, seq 1) "hi"`. Bytes
/// that do not decode are described by their header, big- and little-endian.
pub fn describe(bytes: &[u8]) -> String {
    let Some(header) = Header::peek(bytes) else {
        return format!("{} bytes, less than a header", bytes.len());
    };
    if is_ext_kind(header.kind) {
        return match ExtFrame::parse(bytes) {
            Ok(Some((frame, _))) => frame.to_string(),
            Ok(None) => format!(
                "an incomplete frame of type {} (the identity extension's), {} bytes",
                header.kind,
                bytes.len()
            ),
            Err(e) => e.to_string(),
        };
    }
    let Some(kind) = Kind::from_u16(header.kind) else {
        let swapped = header.kind.swap_bytes();
        let as_le = match Kind::from_u16(swapped) {
            Some(kind) => format!(
                "; read little-endian it would be {kind}(origin {}, dest {}, seq {})",
                header.origin.swap_bytes(),
                header.dest.swap_bytes(),
                header.seq.swap_bytes()
            ),
            None => String::new(),
        };
        return format!("unknown type {}{as_le}", header.kind);
    };
    let mut buf = BytesMut::from(bytes);
    match Frame::decode(&mut buf) {
        Ok(Some(frame)) => describe_frame(&frame),
        _ => {
            let count = bytes
                .get(HEADER_LEN..HEADER_LEN + 2)
                .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]) as usize);
            format!(
                "{kind}(origin {}, dest {}, seq {}) incomplete: count {count}, {} bytes in all",
                header.origin,
                header.dest,
                header.seq,
                bytes.len()
            )
        }
    }
}

/// A decoded frame in words, with a MSG's text (escaped, cut) or a CLIST's ids.
pub fn describe_frame(frame: &Frame) -> String {
    let head = format!(
        "{}(origin {}, dest {}, seq {})",
        frame.kind, frame.origin, frame.dest, frame.seq
    );
    match &frame.body {
        evchat::proto::Body::Empty => head,
        evchat::proto::Body::Text(text) => {
            let shown: String = text
                .iter()
                .take(40)
                .flat_map(|b| b.escape_ascii())
                .map(char::from)
                .collect();
            let more = if text.len() > 40 { "…" } else { "" };
            format!("{head} \"{shown}{more}\"")
        }
        evchat::proto::Body::Clients(ids) => {
            let shown: Vec<String> = ids.iter().take(12).map(u16::to_string).collect();
            let more = if ids.len() > 12 { " …" } else { "" };
            format!("{head} N={} [{}{more}]", ids.len(), shown.join(" "))
        }
    }
}

/// What a failed read means to [`Conn::recv`].
#[derive(Debug, PartialEq)]
enum ReadFailure {
    /// The deadline passed.
    Timeout,
    /// Read again: a stop and continue (^Z, fg) interrupts a read that has
    /// a timeout even without a signal handler (man 7 signal).
    Retry,
    /// The peer reset the connection: a close, as far as a check goes.
    Closed,
    Other,
}

fn read_failure(kind: ErrorKind) -> ReadFailure {
    match kind {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => ReadFailure::Timeout,
        ErrorKind::Interrupted => ReadFailure::Retry,
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => ReadFailure::Closed,
        _ => ReadFailure::Other,
    }
}

/// One connection to the server under test, acting as one client.
pub struct Conn {
    /// "exhibitor 4096", "emitter 1", or "connection" before OI.
    label: String,
    stream: ClientStream,
    /// Received bytes not yet taken as frames; never more than one frame
    /// plus one read, since frames are taken as soon as they are whole.
    buf: BytesMut,
    timeout: Duration,
    /// The latest frames sent, oldest first, for failure reports.
    sent: Vec<Vec<u8>>,
    /// The bytes of the frame `recv` returned last.
    last: Vec<u8>,
    /// The id the server gave, once identified.
    pub id: Option<ClientId>,
    seq: SeqCounter,
    /// The peer closed, or this side gave up: nothing more is sent on drop.
    done: bool,
    /// The server keeps history (`--history`): the checker's broadcasts it
    /// replays are passed over, all but `awaited_broadcast`.
    skip_replays: bool,
    awaited_broadcast: Option<Vec<u8>>,
    /// The server's frames passed over as replays, each of which took one
    /// of the server's sequence numbers to this connection.
    passed_over: u16,
}

impl Conn {
    /// Connects within the timeout.
    pub fn open(ctx: &Ctx) -> Result<Conn, Failure> {
        let stream = TcpStream::connect_timeout(&ctx.addr, ctx.timeout).map_err(|e| {
            let mut failure = Failure::plain(
                format!("cannot connect to {}: {e}", ctx.addr),
                "the server accepts the connection",
                &e,
            )
            .with_hint("is the server running, and is HOST:PORT its address?");
            failure.unreachable = Some(evchat::client::connect_reason(&e));
            failure
        })?;
        Ok(Conn::from_stream(encrypted(stream, ctx)?, ctx))
    }

    fn from_stream(stream: ClientStream, ctx: &Ctx) -> Conn {
        let _ = stream.set_write_timeout(Some(ctx.timeout));
        Conn {
            label: "connection".to_string(),
            stream,
            buf: BytesMut::new(),
            timeout: ctx.timeout,
            sent: Vec::new(),
            last: Vec::new(),
            id: None,
            seq: SeqCounter::new(),
            done: false,
            skip_replays: ctx.history,
            awaited_broadcast: None,
            passed_over: 0,
        }
    }

    /// The sequence number of the server's first frame to this connection
    /// that the checker sees: 0, but for the replays passed over.
    pub fn server_seq_start(&self) -> u16 {
        self.passed_over
    }

    /// The checker's broadcast of `text` is awaited here: a replay is any
    /// other (see [`broadcast_text`]).
    pub fn await_broadcast(&mut self, text: &str) {
        self.awaited_broadcast = Some(text.as_bytes().to_vec());
    }

    /// Whether `frame` is a replay to pass over (see `skip_replays`).
    fn is_replay(&self, frame: &Frame) -> bool {
        self.skip_replays
            && is_check_broadcast(frame)
            && frame.text().map(|t| &t[..]) != self.awaited_broadcast.as_deref()
    }

    /// Connects and identifies as an exhibitor (OI with origin 0).
    pub fn exhibitor(ctx: &Ctx) -> Result<Conn, Failure> {
        let mut conn = Conn::open(ctx)?;
        conn.identify(0, "exhibitor")?;
        Ok(conn)
    }

    /// Connects and identifies as an emitter; `origin` 1 for an unpaired
    /// one, or the exhibitor id to pair with.
    pub fn emitter(ctx: &Ctx, origin: ClientId) -> Result<Conn, Failure> {
        let mut conn = Conn::open(ctx)?;
        conn.identify(origin, "emitter")?;
        Ok(conn)
    }

    /// Connects and sends an exhibitor's OI: Ok if anything at all comes
    /// back. An OK's id is kept, so that dropping the probe leaves with FLW.
    pub fn probe(ctx: &Ctx) -> Result<(), Failure> {
        let mut conn = Conn::open(ctx)?;
        let seq = conn.next_seq();
        conn.send(&Frame::bare(Kind::Oi, 0, SERVER_ID, seq))?;
        match conn.recv() {
            Ok(frame) => {
                if frame.kind == Kind::Ok {
                    conn.id = Some(frame.dest);
                }
                Ok(())
            }
            Err(RecvError::Undecodable(_)) => Ok(()),
            Err(RecvError::Timeout(partial) | RecvError::Closed(partial))
                if !partial.is_empty() =>
            {
                Ok(())
            }
            Err(e) => Err(conn.recv_failure(e, "any answer to OI")),
        }
    }

    /// Sends OI and takes the id from the OK, which must be in the role's range.
    pub fn identify(&mut self, origin: ClientId, role: &str) -> Result<ClientId, Failure> {
        let seq = self.next_seq();
        self.send(&Frame::bare(Kind::Oi, origin, SERVER_ID, seq))?;
        let want = if origin == 0 {
            "OK(origin 65535, dest = an exhibitor id 4096..=8191)"
        } else {
            "OK(origin 65535, dest = an emitter id 1..=4095)"
        };
        let ok = self.expect(want)?;
        let in_range = if origin == 0 {
            is_exhibitor_id(ok.dest)
        } else {
            is_emitter_id(ok.dest)
        };
        if ok.kind != Kind::Ok || ok.origin != SERVER_ID || !in_range {
            return Err(self.unexpected(format!("OI as {role} was not accepted as expected"), want));
        }
        self.id = Some(ok.dest);
        self.label = format!("{role} {}", ok.dest);
        if origin == 0 && self.skip_replays {
            self.pass_over_replays()?;
        }
        Ok(ok.dest)
    }

    /// A server that keeps history replays recent broadcasts right behind
    /// an exhibitor's OK, in the same write: each with the WHO that tells
    /// an opted-in exhibitor its sender. The replays of the checker's own
    /// broadcasts already read are acknowledged and passed over, WHOs
    /// included, so that a check sees only what it caused.
    fn pass_over_replays(&mut self) -> Result<(), Failure> {
        let mut at = 0;
        let mut whos = Vec::new();
        while let Ok(Some((incoming, len))) = parse_incoming(&self.buf[at..]) {
            at += len;
            match incoming {
                Incoming::Ext(ExtFrame::Who(who)) => whos.push(who.seq),
                Incoming::Plain(frame) if self.is_replay(&frame) => {
                    let _ = self.buf.split_to(at);
                    at = 0;
                    for seq in whos.drain(..) {
                        self.send(&Frame::bare(Kind::Ok, self.me(), SERVER_ID, seq))?;
                        self.passed_over = self.passed_over.wrapping_add(1);
                    }
                    self.send(&Frame::bare(Kind::Ok, self.me(), frame.origin, frame.seq))?;
                    self.passed_over = self.passed_over.wrapping_add(1);
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// The id from OI; only called on identified connections.
    pub fn me(&self) -> ClientId {
        self.id.unwrap_or(0)
    }

    /// Every later read waits at most `timeout` (a wait the server sets,
    /// such as `--queue-wait`, plus the usual deadline).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The sequence number for this client's next frame.
    pub fn next_seq(&mut self) -> u16 {
        self.seq.next_seq()
    }

    /// Builds a MSG from this client with its next sequence number.
    pub fn msg(&mut self, dest: ClientId, text: &str) -> Frame {
        let seq = self.next_seq();
        Frame::msg(self.me(), dest, seq, text.as_bytes().to_vec()).expect("short text")
    }

    pub fn send(&mut self, frame: &Frame) -> Result<(), Failure> {
        self.send_bytes(&frame.to_bytes())
    }

    /// Writes raw bytes (several frames, or a part of one) within the timeout.
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.remember(bytes);
        self.stream.write_all(bytes).map_err(|e| Failure {
            summary: format!("{}: sending failed: {e}", self.label),
            sent: self.sent_shown(),
            expected: "the server reads what is sent".to_string(),
            received: format!("write error: {e}"),
            received_bytes: None,
            hint: None,
            unreachable: None,
        })
    }

    /// Writes without recording (for the later parts of a split frame).
    pub fn send_part(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream.write_all(bytes).map_err(|e| {
            Failure::plain(
                format!("{}: sending failed: {e}", self.label),
                "the server reads what is sent",
                &e,
            )
        })
    }

    /// Records `bytes` as sent without sending them (a frame sent in parts).
    pub fn remember(&mut self, bytes: &[u8]) {
        if self.sent.len() == SENT_SHOWN {
            self.sent.remove(0);
        }
        self.sent
            .push(bytes[..bytes.len().min(MAX_FRAME_LEN)].to_vec());
    }

    /// The next frame, within the timeout. A frame of the identity
    /// extension is not a frame here (a client that never sent HELLO must
    /// never receive one): it is undecodable.
    pub fn recv(&mut self) -> Result<Frame, RecvError> {
        if self.skip_replays {
            // Replays (and an opted-in exhibitor's WHOs before them) are
            // passed over first; any other extension frame is no frame here.
            return match self.recv_any()? {
                Incoming::Plain(frame) => Ok(frame),
                Incoming::Ext(_) => {
                    self.done = true;
                    Err(RecvError::Undecodable(self.last.clone()))
                }
            };
        }
        self.recv_with(|buf| {
            FrameView::parse(buf)
                .map(|found| found.map(|(view, len)| (view.to_frame(), len)))
                .map_err(|_| ())
        })
    }

    /// Answers a replayed broadcast as an exhibitor must (rule 4), so that
    /// the server's order of acknowledgements holds for what follows.
    fn ack_replay(&mut self, frame: &Frame) -> Result<(), RecvError> {
        self.send_passing_over(&Frame::bare(Kind::Ok, self.me(), frame.origin, frame.seq))
    }

    /// Sends an acknowledgement of something passed over, failing as a
    /// read does (it is sent from within one).
    fn send_passing_over(&mut self, ok: &Frame) -> Result<(), RecvError> {
        let bytes = ok.to_bytes();
        self.remember(&bytes);
        self.stream.write_all(&bytes).map_err(|e| {
            self.done = true;
            RecvError::Io(e.to_string())
        })
    }

    /// The next frame of either kind, the identity extension's included
    /// (for a client that sent HELLO), within the timeout.
    pub fn recv_any(&mut self) -> Result<Incoming, RecvError> {
        loop {
            let incoming = self.recv_with(|buf| parse_incoming(buf).map_err(|_| ()))?;
            match incoming {
                Incoming::Plain(frame) if self.is_replay(&frame) => {
                    self.ack_replay(&frame)?;
                    self.passed_over = self.passed_over.wrapping_add(1);
                }
                Incoming::Ext(ExtFrame::Who(who)) if self.skip_replays => {
                    // A replay's WHO comes right before the replay, which may
                    // come in a later read than the OI's OK: look at what
                    // follows, and pass over both if it is one.
                    let next = self.peek_with(|buf| parse_incoming(buf).map_err(|_| ()));
                    let Ok((Incoming::Plain(frame), len)) = next else {
                        return Ok(Incoming::Ext(ExtFrame::Who(who)));
                    };
                    if !self.is_replay(&frame) {
                        return Ok(Incoming::Ext(ExtFrame::Who(who)));
                    }
                    let _ = self.buf.split_to(len);
                    let ok = Frame::bare(Kind::Ok, self.me(), SERVER_ID, who.seq);
                    self.send_passing_over(&ok)?;
                    self.ack_replay(&frame)?;
                    self.passed_over = self.passed_over.wrapping_add(2);
                }
                other => return Ok(other),
            }
        }
    }

    /// The next whole frame, taken from the buffer (see [`Conn::peek_with`]).
    fn recv_with<T>(
        &mut self,
        parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, ()>,
    ) -> Result<T, RecvError> {
        let (frame, len) = self.peek_with(parse)?;
        self.last = self.buf.split_to(len).to_vec();
        Ok(frame)
    }

    /// The read loop: `parse` finds a whole frame at the start of the
    /// buffer (and its length) without taking it, says there is none yet,
    /// or that the bytes are no frame. The frame stays in the buffer.
    fn peek_with<T>(
        &mut self,
        mut parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, ()>,
    ) -> Result<(T, usize), RecvError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match parse(&self.buf) {
                Err(()) => {
                    self.done = true;
                    return Err(RecvError::Undecodable(self.buf.to_vec()));
                }
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout(self.buf.to_vec()));
            }
            let _ = self.stream.set_read_timeout(Some(left));
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.done = true;
                    return Err(RecvError::Closed(self.buf.to_vec()));
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => match read_failure(e.kind()) {
                    ReadFailure::Timeout => return Err(RecvError::Timeout(self.buf.to_vec())),
                    ReadFailure::Retry => {}
                    ReadFailure::Closed => {
                        self.done = true;
                        return Err(RecvError::Closed(self.buf.to_vec()));
                    }
                    ReadFailure::Other => {
                        self.done = true;
                        return Err(RecvError::Io(e.to_string()));
                    }
                },
            }
        }
    }

    /// The next frame; anything else (timeout, close, garbage) is a failure
    /// that says `expected`.
    pub fn expect(&mut self, expected: &str) -> Result<Frame, Failure> {
        self.recv().map_err(|e| self.recv_failure(e, expected))
    }

    /// The next frame, a close between frames, or silence. Part of a frame
    /// before a close or the timeout, or bytes that are not a frame, are
    /// never an answer: they are a failure that says `expected`.
    pub fn answer(&mut self, expected: &str) -> Result<Answer, Failure> {
        match self.recv() {
            Ok(frame) => Ok(Answer::Frame(frame)),
            Err(RecvError::Closed(partial)) if partial.is_empty() => Ok(Answer::Closed),
            Err(RecvError::Timeout(partial)) if partial.is_empty() => Ok(Answer::Silence),
            Err(e) => Err(self.recv_failure(e, expected)),
        }
    }

    /// The failure for [`Answer::Silence`] where silence is no answer.
    pub fn silence_failure(&self, expected: &str) -> Failure {
        self.recv_failure(RecvError::Timeout(Vec::new()), expected)
    }

    /// The failure for [`Answer::Closed`] where a close is no answer.
    pub fn closed_failure(&self, expected: &str) -> Failure {
        self.recv_failure(RecvError::Closed(Vec::new()), expected)
    }

    /// The failure for a read that ended without a frame.
    pub fn recv_failure(&self, error: RecvError, expected: &str) -> Failure {
        let wait = self.timeout;
        let (summary, received, bytes) = match error {
            RecvError::Timeout(partial) if partial.is_empty() => (
                format!("{}: nothing arrived within {wait:?}", self.label),
                format!("nothing within {wait:?}"),
                None,
            ),
            RecvError::Timeout(partial) => (
                format!(
                    "{}: an incomplete frame, and nothing more within {wait:?}",
                    self.label
                ),
                format!("{} (waited {wait:?} for the rest)", describe(&partial)),
                Some(partial),
            ),
            RecvError::Closed(partial) if partial.is_empty() => (
                format!("{}: the server closed the connection", self.label),
                "connection closed".to_string(),
                None,
            ),
            RecvError::Closed(partial) => (
                format!(
                    "{}: the server closed the connection inside a frame",
                    self.label
                ),
                format!("{}, then the connection closed", describe(&partial)),
                Some(partial),
            ),
            RecvError::Undecodable(bytes) => (
                format!("{}: received bytes that are not a frame", self.label),
                describe(&bytes),
                Some(bytes),
            ),
            RecvError::Io(e) => (
                format!("{}: reading failed: {e}", self.label),
                format!("read error: {e}"),
                None,
            ),
        };
        Failure {
            summary,
            sent: self.sent_shown(),
            expected: expected.to_string(),
            received,
            received_bytes: bytes,
            hint: None,
            unreachable: None,
        }
    }

    /// The failure for the frame `recv` returned last, which was not `expected`.
    pub fn unexpected(&self, summary: impl Into<String>, expected: &str) -> Failure {
        Failure {
            summary: format!("{}: {}", self.label, summary.into()),
            sent: self.sent_shown(),
            expected: expected.to_string(),
            received: describe(&self.last),
            received_bytes: Some(self.last.clone()),
            hint: None,
            unreachable: None,
        }
    }

    /// `failure`, seen on another connection, with the frame this one sent
    /// last shown first: the frame that should have caused what was awaited.
    pub fn blame(&self, mut failure: Failure) -> Failure {
        if let Some(last) = self.sent.last() {
            failure.sent.insert(0, (self.label.clone(), last.clone()));
        }
        failure
    }

    fn sent_shown(&self) -> Vec<(String, Vec<u8>)> {
        self.sent
            .iter()
            .map(|bytes| (self.label.clone(), bytes.clone()))
            .collect()
    }

    /// Expects a frame of `kind`; `what` says which in the report.
    pub fn expect_kind(&mut self, kind: Kind, what: &str) -> Result<Frame, Failure> {
        let frame = self.expect(what)?;
        if frame.kind != kind {
            return Err(self.unexpected(format!("expected {kind}, got {}", frame.kind), what));
        }
        Ok(frame)
    }

    /// Expects the server's reply (OK or ERRO) to a request.
    pub fn expect_reply(&mut self, what: &str) -> Result<Frame, Failure> {
        let frame = self.expect(what)?;
        if !matches!(frame.kind, Kind::Ok | Kind::Erro) {
            return Err(self.unexpected(format!("expected OK or ERRO, got {}", frame.kind), what));
        }
        Ok(frame)
    }

    /// Expects the very frame `sent` (a forwarded MSG): with `exact`, byte
    /// for byte; otherwise a MSG with the same text.
    pub fn expect_forward(&mut self, sent: &Frame, exact: bool) -> Result<(), Failure> {
        let want = if exact {
            format!(
                "{} unchanged: {}",
                describe_frame(sent),
                hex(&sent.to_bytes())
            )
        } else {
            format!("MSG with the text of {}", describe_frame(sent))
        };
        let got = self.expect(&want)?;
        let same = if exact {
            got == *sent
        } else {
            got.kind == Kind::Msg && got.text() == sent.text()
        };
        if !same {
            return Err(self.unexpected("did not receive the message sent to it", &want));
        }
        self.ack(&got)
    }

    /// Acknowledges a received MSG, CLIST or FLW as a client does.
    pub fn ack(&mut self, frame: &Frame) -> Result<(), Failure> {
        let ok = Frame::bare(Kind::Ok, self.me(), frame.origin, frame.seq);
        self.send(&ok)
    }

    /// Expects the server to close the connection (EOF or reset).
    pub fn expect_close(&mut self, expected: &str) -> Result<(), Failure> {
        match self.recv() {
            Err(RecvError::Closed(partial)) if partial.is_empty() => Ok(()),
            Ok(frame) => Err(self.unexpected(
                format!("expected the connection to close, got {}", frame.kind),
                expected,
            )),
            Err(e) => Err(self.recv_failure(e, expected)),
        }
    }

    /// Hangs up (end of stream, no FLW) and reads until the server closes
    /// its side, discarding what arrives. When this returns, the server has
    /// handled every byte this client sent: nothing of it can reach whoever
    /// holds an id next. Bounded by the timeout between frames; a server
    /// that never closes is waited for once, not failed here.
    pub fn hang_up_and_wait(mut self) {
        self.done = true;
        if self.stream.shutdown(Shutdown::Write).is_err() {
            return;
        }
        let skip = |buf: &[u8]| match parse_incoming(buf) {
            Ok(found) => Ok(found.map(|(_, len)| ((), len))),
            Err(_) => Err(()),
        };
        while self.recv_with(skip).is_ok() {}
    }

    /// Closes this side at once, without FLW (a client that vanishes).
    pub fn vanish(mut self) {
        self.done = true;
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

impl Drop for Conn {
    /// An identified client says goodbye with FLW (not waiting for the OK),
    /// as the protocol wants; the socket then closes.
    fn drop(&mut self) {
        if self.done || self.id.is_none() {
            return;
        }
        let flw = Frame::bare(Kind::Flw, self.me(), SERVER_ID, self.seq.next_seq());
        // Never wait here: a server that stopped reading must not hold us up.
        if self.stream.set_nonblocking(true).is_ok() {
            let _ = self.stream.write(&flw.to_bytes());
        }
    }
}

/// The connection as the checks speak on it: with TLS, once its handshake
/// is done.
fn encrypted(stream: TcpStream, ctx: &Ctx) -> Result<ClientStream, Failure> {
    let _ = stream.set_nodelay(true);
    let Some(endpoint) = &ctx.tls else {
        return Ok(ClientStream::plain(stream));
    };
    endpoint.handshake(stream, ctx.timeout).map_err(|e| {
        Failure::plain(
            format!("cannot connect to {endpoint}: {e}"),
            "the TLS handshake completes",
            &std::io::Error::other(e.to_string()),
        )
    })
}

/// The highest exhibitor id, used as "an id nobody holds" on a server the
/// checker has to itself.
pub const UNUSED_EXHIBITOR: ClientId = *EXHIBITOR_IDS.end();

impl Conn {
    /// An exhibitor whose receive buffer is set small before connecting and
    /// which never reads after its OK: a client that does not keep up.
    pub fn open_small_rcvbuf(ctx: &Ctx) -> Result<Conn, Failure> {
        let refused = |e: std::io::Error| {
            Failure::plain(
                format!("cannot connect to {}: {e}", ctx.addr),
                "the server accepts the connection",
                &e,
            )
        };
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(ctx.addr),
            socket2::Type::STREAM,
            None,
        )
        .map_err(refused)?;
        let _ = socket.set_recv_buffer_size(4096);
        socket
            .connect_timeout(&ctx.addr.into(), ctx.timeout)
            .map_err(refused)?;
        let mut conn = Conn::from_stream(encrypted(socket.into(), ctx)?, ctx);
        conn.identify(0, "exhibitor")?;
        Ok(conn)
    }

    /// A second handle on the socket, for a bulk write outside the frame
    /// bookkeeping; it has the same write deadline.
    pub fn try_clone_stream(&self) -> Result<ClientStream, Failure> {
        self.stream.try_clone().map_err(|e| {
            Failure::plain(
                format!("{}: cannot clone the socket: {e}", self.label),
                "a second handle on the connection",
                &e,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use std::net::TcpListener;

    /// A connection whose peer sends `bytes` and closes.
    fn reading(bytes: &[u8]) -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ctx = Ctx {
            addr: listener.local_addr().unwrap(),
            timeout: Duration::from_secs(10),
            tls: None,
            queue_wait: None,
            history: false,
        };
        let conn = Conn::open(&ctx).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(bytes).unwrap();
        conn
    }

    /// A connection with a 100 ms timeout whose peer sends `bytes` and
    /// stays (the peer is returned) or closes.
    fn answering(bytes: &[u8]) -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ctx = Ctx {
            addr: listener.local_addr().unwrap(),
            timeout: Duration::from_millis(100),
            tls: None,
            queue_wait: None,
            history: false,
        };
        let conn = Conn::open(&ctx).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(bytes).unwrap();
        (conn, peer)
    }

    const OK: &[u8] = b"\x00\x01\xff\xff\x10\x00\x00\x07";

    #[test]
    fn a_close_after_a_whole_frame_is_an_answer() {
        let (mut conn, peer) = answering(OK);
        drop(peer);
        let Ok(Answer::Frame(frame)) = conn.answer("OK") else {
            panic!("the OK first");
        };
        assert_eq!(frame, Frame::bare(Kind::Ok, SERVER_ID, 4096, 7));
        assert!(matches!(conn.answer("a close"), Ok(Answer::Closed)));
        let failure = conn.closed_failure("ERRO");
        assert_eq!(
            failure.summary,
            "connection: the server closed the connection"
        );
        assert_eq!(failure.received, "connection closed");
    }

    #[test]
    fn a_close_inside_a_frame_is_a_failure() {
        let (mut conn, peer) = answering(&OK[..6]);
        drop(peer);
        let failure = conn.answer("ERRO or a close").unwrap_err();
        assert_eq!(
            failure.summary,
            "connection: the server closed the connection inside a frame"
        );
        assert_eq!(
            failure.received,
            "6 bytes, less than a header, then the connection closed"
        );
        assert_eq!(failure.expected, "ERRO or a close");
    }

    #[test]
    fn silence_is_an_answer() {
        let (mut conn, _peer) = answering(b"");
        assert!(matches!(conn.answer("anything"), Ok(Answer::Silence)));
        let failure = conn.silence_failure("ERRO");
        assert_eq!(failure.summary, "connection: nothing arrived within 100ms");
        assert_eq!(failure.received, "nothing within 100ms");
    }

    #[test]
    fn part_of_a_frame_then_silence_is_a_failure() {
        let (mut conn, _peer) = answering(&OK[..3]);
        let failure = conn.answer("ERRO").unwrap_err();
        assert_eq!(
            failure.summary,
            "connection: an incomplete frame, and nothing more within 100ms"
        );
        assert_eq!(failure.received_bytes, Some(OK[..3].to_vec()));
    }

    proptest! {
        /// Whatever a server sends, the checker takes whole frames exactly
        /// as sent, then ends in a close or "not a frame" holding the rest;
        /// it never panics and never buffers more than a frame and a read.
        #[test]
        fn any_server_bytes_end_in_frames_then_an_error(
            frames in vec((1u16..=7, any::<[u16; 3]>(), vec(any::<u8>(), 0..40)), 0..6),
            tail in vec(any::<u8>(), 0..30),
        ) {
            // Well-formed frames of every type, then anything at all.
            let mut bytes = Vec::new();
            for (kind, [origin, dest, seq], body) in frames {
                for field in [kind, origin, dest, seq] {
                    bytes.extend_from_slice(&field.to_be_bytes());
                }
                let body = match kind {
                    5 => &body[..],
                    7 => &body[..body.len() / 2 * 2],
                    _ => continue,
                };
                let count = if kind == 5 { body.len() } else { body.len() / 2 };
                bytes.extend_from_slice(&(count as u16).to_be_bytes());
                bytes.extend_from_slice(body);
            }
            bytes.extend_from_slice(&tail);
            let mut conn = reading(&bytes);
            let mut taken = 0;
            loop {
                match conn.recv() {
                    Ok(frame) => {
                        let wire = frame.to_bytes();
                        prop_assert_eq!(&bytes[taken..taken + wire.len()], &wire[..]);
                        taken += wire.len();
                    }
                    Err(RecvError::Closed(rest)) => {
                        prop_assert_eq!(&bytes[taken..], &rest[..]);
                        break;
                    }
                    Err(RecvError::Undecodable(rest)) => {
                        prop_assert!(bytes[taken..].starts_with(&rest));
                        prop_assert!(rest.len() >= HEADER_LEN);
                        break;
                    }
                    Err(other) => prop_assert!(false, "{:?}", other),
                }
                prop_assert!(conn.buf.len() <= MAX_FRAME_LEN + 16 * 1024);
            }
            describe(&bytes);
            hex(&bytes);
        }
    }

    #[test]
    fn a_clist_shorter_than_its_count_is_described_as_incomplete() {
        let bytes = b"\x00\x07\xff\xff\x10\x00\x00\x00\x00\x03\x00\x01\x10\x00";
        assert_eq!(
            describe(bytes),
            "CLIST(origin 65535, dest 4096, seq 0) incomplete: count 3, 14 bytes in all"
        );
    }

    #[test]
    fn a_msg_is_described_with_its_text_escaped() {
        let msg = Frame::msg(1, 0, 2, &b"hi\n\xff"[..]).unwrap();
        assert_eq!(
            describe(&msg.to_bytes()),
            "MSG(origin 1, dest 0, seq 2) \"hi\\n\\xff\""
        );
    }

    #[test]
    fn a_msg_text_is_shown_up_to_40_bytes() {
        let text = "0123456789".repeat(4);
        let whole = Frame::msg(1, 0, 2, text.clone()).unwrap();
        assert_eq!(
            describe_frame(&whole),
            format!("MSG(origin 1, dest 0, seq 2) \"{text}\"")
        );
        let longer = Frame::msg(1, 0, 2, format!("{text}X")).unwrap();
        assert_eq!(
            describe_frame(&longer),
            format!("MSG(origin 1, dest 0, seq 2) \"{text}…\"")
        );
    }

    #[test]
    fn a_clist_is_shown_up_to_12_ids() {
        let ids: Vec<ClientId> = (1..=12).collect();
        let twelve = Frame::clist(SERVER_ID, 4096, 0, ids.clone()).unwrap();
        assert_eq!(
            describe_frame(&twelve),
            "CLIST(origin 65535, dest 4096, seq 0) N=12 [1 2 3 4 5 6 7 8 9 10 11 12]"
        );
        let thirteen = Frame::clist(SERVER_ID, 4096, 0, (1..=13).collect()).unwrap();
        assert_eq!(
            describe_frame(&thirteen),
            "CLIST(origin 65535, dest 4096, seq 0) N=13 [1 2 3 4 5 6 7 8 9 10 11 12 …]"
        );
        let one = Frame::clist(SERVER_ID, 4096, 0, vec![4096]).unwrap();
        assert_eq!(
            describe_frame(&one),
            "CLIST(origin 65535, dest 4096, seq 0) N=1 [4096]"
        );
    }

    #[test]
    fn hex_is_cut_after_48_bytes() {
        let shown = hex(&[0xab; 50]);
        assert!(shown.ends_with("ab … (50 bytes)"), "{shown}");
        assert_eq!(shown.matches("ab").count(), 48);
        assert_eq!(hex(&[0xab; 48]), ["ab"; 48].join(" "));
    }

    /// A server that reads the client's first frame (8 bytes), writes
    /// `reply`, then closes at once (`close`) or reads until the client
    /// closes; the thread returns what it read after the first frame.
    fn one_reply(reply: &[u8], close: bool) -> (Ctx, std::thread::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ctx = Ctx {
            addr: listener.local_addr().unwrap(),
            timeout: Duration::from_millis(100),
            tls: None,
            queue_wait: None,
            history: false,
        };
        let reply = reply.to_vec();
        let server = std::thread::spawn(move || {
            let (mut peer, _) = listener.accept().unwrap();
            let mut first = [0u8; HEADER_LEN];
            peer.read_exact(&mut first).unwrap();
            peer.write_all(&reply).unwrap();
            let mut rest = Vec::new();
            if !close {
                let _ = peer.read_to_end(&mut rest);
            }
            rest
        });
        (ctx, server)
    }

    #[test]
    fn a_probe_answered_ok_leaves_with_flw_and_one_answered_erro_just_closes() {
        let ok = Frame::bare(Kind::Ok, SERVER_ID, 4100, 0);
        let (ctx, server) = one_reply(&ok.to_bytes(), false);
        assert!(Conn::probe(&ctx).is_ok());
        let flw = Frame::bare(Kind::Flw, 4100, SERVER_ID, 1);
        assert_eq!(server.join().unwrap(), flw.to_bytes());
        let erro = Frame::bare(Kind::Erro, SERVER_ID, 0, 0);
        let (ctx, server) = one_reply(&erro.to_bytes(), false);
        assert!(Conn::probe(&ctx).is_ok());
        assert_eq!(server.join().unwrap(), b"");
    }

    #[test]
    fn a_probe_takes_any_byte_as_an_answer_but_not_a_close_or_silence() {
        for (reply, close, alive) in [
            (&b"\x00\x01\xff"[..], true, true),
            (&b"\x00\x01\xff"[..], false, true),
            (&b"\xde\xad\x00\x00\x00\x00\x00\x00"[..], false, true),
            (&b""[..], true, false),
            (&b""[..], false, false),
        ] {
            let (ctx, server) = one_reply(reply, close);
            let probed = Conn::probe(&ctx);
            assert_eq!(probed.is_ok(), alive, "{reply:?} close {close}");
            if let Err(failure) = probed {
                assert_eq!(failure.expected, "any answer to OI");
            }
            server.join().unwrap();
        }
    }

    #[test]
    fn identify_wants_ok_from_65535_with_an_id_of_the_role() {
        let exhibitor = "OK(origin 65535, dest = an exhibitor id 4096..=8191)";
        let emitter = "OK(origin 65535, dest = an emitter id 1..=4095)";
        for (reply, origin, role, want) in [
            (
                Frame::bare(Kind::Erro, SERVER_ID, 4096, 0),
                0,
                "exhibitor",
                exhibitor,
            ),
            (Frame::bare(Kind::Ok, 1, 4096, 0), 0, "exhibitor", exhibitor),
            (
                Frame::bare(Kind::Ok, SERVER_ID, 1, 0),
                0,
                "exhibitor",
                exhibitor,
            ),
            (
                Frame::bare(Kind::Ok, SERVER_ID, 4096, 0),
                1,
                "emitter",
                emitter,
            ),
        ] {
            let (ctx, server) = one_reply(&reply.to_bytes(), false);
            let mut conn = Conn::open(&ctx).unwrap();
            let failure = conn.identify(origin, role).unwrap_err();
            assert_eq!(
                failure.summary,
                format!("connection: OI as {role} was not accepted as expected")
            );
            assert_eq!(failure.expected, want);
            assert_eq!(failure.received_bytes, Some(reply.to_bytes().to_vec()));
            drop(conn);
            server.join().unwrap();
        }
        let (ctx, _server) = one_reply(&Frame::bare(Kind::Ok, SERVER_ID, 7, 0).to_bytes(), false);
        let mut conn = Conn::open(&ctx).unwrap();
        assert_eq!(conn.identify(4096, "emitter").unwrap(), 7);
        assert_eq!(conn.me(), 7);
    }

    #[test]
    fn an_expected_close_comes_between_frames() {
        let (ctx, server) = one_reply(b"", true);
        let mut conn = Conn::open(&ctx).unwrap();
        conn.send(&Frame::bare(Kind::Flw, 1, SERVER_ID, 0)).unwrap();
        assert!(conn.expect_close("a close").is_ok());
        server.join().unwrap();
        let (ctx, server) = one_reply(&OK[..3], true);
        let mut conn = Conn::open(&ctx).unwrap();
        conn.send(&Frame::bare(Kind::Flw, 1, SERVER_ID, 0)).unwrap();
        let failure = conn.expect_close("a close").unwrap_err();
        assert_eq!(
            failure.summary,
            "connection: the server closed the connection inside a frame"
        );
        server.join().unwrap();
    }

    #[test]
    fn a_forward_is_a_msg_with_the_text_sent() {
        let sent = Frame::msg(1, 4096, 1, &b"the text sent"[..]).unwrap();
        for (got, forwarded) in [
            (sent.clone(), true),
            (Frame::msg(2, 4096, 9, &b"the text sent"[..]).unwrap(), true),
            (Frame::msg(1, 4096, 1, &b"another text"[..]).unwrap(), false),
        ] {
            let (ctx, server) = one_reply(&got.to_bytes(), false);
            let mut conn = Conn::open(&ctx).unwrap();
            conn.send(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0)).unwrap();
            let result = conn.expect_forward(&sent, false);
            assert_eq!(result.is_ok(), forwarded, "{got:?}");
            if let Err(failure) = result {
                assert_eq!(
                    failure.summary,
                    "connection: did not receive the message sent to it"
                );
            }
            drop(conn);
            server.join().unwrap();
        }
    }

    #[test]
    fn a_read_error_is_a_timeout_a_retry_a_close_or_a_failure() {
        use ErrorKind::*;
        for (kind, want) in [
            (WouldBlock, ReadFailure::Timeout),
            (TimedOut, ReadFailure::Timeout),
            (Interrupted, ReadFailure::Retry),
            (ConnectionReset, ReadFailure::Closed),
            (ConnectionAborted, ReadFailure::Closed),
            (HostUnreachable, ReadFailure::Other),
            (NotConnected, ReadFailure::Other),
        ] {
            assert_eq!(read_failure(kind), want, "{kind:?}");
        }
    }

    #[test]
    fn a_reset_connection_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ctx = Ctx {
            addr: listener.local_addr().unwrap(),
            timeout: Duration::from_secs(10),
            tls: None,
            queue_wait: None,
            history: false,
        };
        let mut conn = Conn::open(&ctx).unwrap();
        let (peer, _) = listener.accept().unwrap();
        // Closing with a zero linger sends RST, not FIN.
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(peer);
        assert!(matches!(conn.recv(), Err(RecvError::Closed(bytes)) if bytes.is_empty()));
    }
}
