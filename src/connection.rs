//! One client socket, its transport and its two buffers: the protocol bytes
//! read but not yet decoded, and the bytes queued but not yet written. It
//! knows nothing of ids or rules, nor, on TCP, where frames begin and end in
//! its input (the event loop parses them in place; on a WebSocket it checks
//! that each message is exactly one frame); it encodes output frames and keeps
//! the unsent output within a cap so that a client that never reads cannot
//! grow the server's memory.
//!
//! The transport is the connection's own business: frames straight on the
//! socket, or (when the first bytes are an HTTP request) an HTTP answer or
//! a WebSocket whose binary messages carry one frame each. Either way the
//! input buffer holds protocol bytes only, so the event loop and the router
//! see one kind of client. What passes between the connection and the loop
//! is transport-neutral too: the web's settings, which the loop passes on
//! unread; read statuses, HTTP outcomes, failures the loop logs and hands
//! back when it closes; and the loop's [`Ending`], which each transport
//! says its own way. The web's own types stay below this module.
//!
//! TLS sits under all of that: a connection whose first byte is 0x16 (a
//! TLS handshake record) hands its bytes to a TLS session, and the
//! plaintext that comes out is sniffed and served exactly as a plain
//! connection's bytes are; its output is encrypted when it is flushed. So
//! nothing above knows a connection is encrypted, and a plain one pays for
//! TLS with nothing but the arm of a match it already made.
//!
//! Where the loop runs handshakes on worker threads
//! ([`Accepts::handshake_jobs`]), a handshaking connection keeps the bytes
//! it reads instead of feeding them, and hands them out with the session's
//! state as a job ([`Connection::handshake_job`]); until the step comes
//! back ([`Connection::take_back_handshake`]) it reads nothing more, so
//! what it holds is one read's worth.

use crate::proto::{Encode, HEADER_LEN};
use crate::tls::{
    HandshakeJob, HandshakeStep, MAX_HANDSHAKE_JOB, TlsAcceptor, TlsFailure, TlsSession, TlsStatus,
};
use crate::web::{self, Answer, CloseCause, HeadError, Sniff, WebSocket, WsFailure, WsStatus};
pub use crate::web::{Authorization, Report, ReportAnswer};
use bytes::{Buf, BytesMut};
use mio::net::TcpStream;
use std::io::{self, Read, Write};

/// Output buffers that grew past this are released as soon as they are
/// flushed; smaller ones are kept for the next turn's frames (a busy
/// connection would otherwise allocate every turn) until
/// [`Connection::release_idle_buffers`].
const KEEP_OUTPUT_CAPACITY: usize = 64 * 1024;

/// How a connection may speak HTTP and WebSocket besides the binary
/// protocol: the web transport's settings, which the event loop hands to
/// each connection without looking inside.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Origins whose pages may open a WebSocket besides the server's own
    /// (`https://chat.example`).
    pub allowed_origins: Vec<String>,
}

/// What a new connection may turn out to speak, chosen by the event loop
/// when it accepts the connection.
#[derive(Debug, Clone, Default)]
pub struct Accepts {
    /// HTTP and WebSocket besides the binary protocol.
    pub web: bool,
    /// TLS (a first byte of 0x16), served with this identity.
    pub tls: Option<TlsAcceptor>,
    /// Unencrypted connections are refused (`--require-tls`): the loop
    /// answers their first frame or request head with a refusal.
    pub plain_refused: bool,
    /// TLS handshakes are handed out as jobs for worker threads
    /// ([`Connection::handshake_job`]) instead of run as bytes arrive.
    pub handshake_jobs: bool,
}

/// What a read attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadStatus {
    /// Bytes were appended to the input buffer.
    Data(usize),
    /// Bytes were read for the TLS handshake and held for its next step,
    /// for the loop to hand out ([`Connection::handshake_job`]); nothing
    /// more is read until that step is back.
    Handshake(usize),
    /// Nothing more to read until the next readiness event.
    WouldBlock,
    /// The peer closed its side (or sent a WebSocket close).
    Closed,
    /// The transport broke its framing; the connection must close.
    Failed(TransportFailure),
    /// The transport's own answers (WebSocket pongs) no longer fit under the
    /// output cap: a slow consumer.
    Full,
}

/// How a transport stands after it took bytes: what an upgrade found in
/// the bytes that followed the request head.
#[derive(Debug, PartialEq, Eq)]
pub enum TransportStatus {
    /// Every whole message went into the protocol input.
    Open,
    /// The peer closed its session (the answer is queued) or is gone.
    Closed,
    /// The transport's own answers no longer fit under the output cap.
    Full,
    /// The connection must close with this failure.
    Failed(TransportFailure),
}

impl From<WsStatus> for TransportStatus {
    #[inline]
    fn from(status: WsStatus) -> TransportStatus {
        match status {
            WsStatus::Open => TransportStatus::Open,
            WsStatus::Closed => TransportStatus::Closed,
            WsStatus::Full => TransportStatus::Full,
            WsStatus::Failed(failure) => TransportStatus::Failed(failure.into()),
        }
    }
}

/// Why a transport broke (a WebSocket that broke its framing, a TLS session
/// that failed): for the log and for [`Ending::Failed`], which closes with
/// the transport's own word for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportFailure(Failure);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    WebSocket(WsFailure),
    Tls(TlsFailure),
}

impl std::fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Failure::WebSocket(failure) => failure.fmt(f),
            Failure::Tls(failure) => failure.fmt(f),
        }
    }
}

impl From<TlsFailure> for TransportFailure {
    fn from(failure: TlsFailure) -> TransportFailure {
        TransportFailure(Failure::Tls(failure))
    }
}

impl From<WsFailure> for TransportFailure {
    fn from(failure: WsFailure) -> TransportFailure {
        TransportFailure(Failure::WebSocket(failure))
    }
}

/// Why an HTTP request head cannot be served (too large, or malformed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRefusal(HeadError);

impl std::fmt::Display for HttpRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Why the server ends a connection, in words each transport says its own
/// way: a WebSocket as its close frame's code (chosen in the web code), the
/// binary protocol and HTTP not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending<'a> {
    /// Done as agreed (the client left, or was dismissed).
    Normal,
    /// The server is shutting down.
    GoingAway,
    /// The peer broke the protocol.
    ProtocolViolation,
    /// The peer broke a rule of the server's (refused, too slow to finish).
    PolicyViolation,
    /// The transport failed as [`ReadStatus::Failed`] reported.
    Failed(&'a TransportFailure),
}

impl<'a> Ending<'a> {
    /// The WebSocket's close code for this ending; `None` when the
    /// WebSocket is not the transport that failed (its TLS session did, and
    /// nothing more can be sent).
    fn websocket_cause(self) -> Option<CloseCause<'a>> {
        Some(match self {
            Ending::Normal => CloseCause::Normal,
            Ending::GoingAway => CloseCause::GoingAway,
            Ending::ProtocolViolation => CloseCause::ProtocolError,
            Ending::PolicyViolation => CloseCause::PolicyViolation,
            Ending::Failed(TransportFailure(Failure::WebSocket(failure))) => {
                CloseCause::Failed(failure)
            }
            Ending::Failed(TransportFailure(Failure::Tls(_))) => return None,
        })
    }
}

/// How a connection's bytes carry frames.
enum Transport {
    /// Too few bytes yet to tell what the connection speaks; what it may.
    Sniffing(Accepts),
    /// Frames straight on the socket.
    Binary,
    /// An HTTP request head is arriving (or has been answered).
    Http,
    /// Each binary message carries one frame.
    WebSocket(Box<WebSocket>),
    /// Encrypted: the session, and the transport its plaintext carries
    /// (never TLS again).
    Tls(Box<Tls>),
    /// Unencrypted on a server that requires TLS: the bytes wait until the
    /// loop can refuse them ([`Connection::refuse_plain`]).
    PlainRefused { http: bool },
}

/// A TLS session and what its plaintext carries.
struct Tls {
    session: TlsSession,
    inner: Transport,
    /// The handshake runs as jobs for worker threads.
    jobs: bool,
    /// Handshake bytes read and not yet handed to a worker (at most one
    /// read's worth: nothing is read while any wait or the session is away).
    held: Vec<u8>,
}

/// What the event loop needs to know of a connection's transport (inside
/// TLS: of the transport the plaintext carries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Sniffing,
    Binary,
    Http,
    WebSocket,
    /// Unencrypted where TLS is required: to be refused.
    PlainRefused,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Sniffing => "unknown",
            Stage::Binary => "tcp",
            Stage::Http => "http",
            Stage::WebSocket => "websocket",
            Stage::PlainRefused => "plain (TLS required)",
        })
    }
}

/// What refusing a plain connection on a server that requires TLS came to.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainRefusal {
    /// Too few bytes yet to answer in the connection's own terms.
    Incomplete,
    /// The binary protocol: its first frame carried this sequence number,
    /// which the refusal (rule 1's ERRO) echoes.
    Binary { seq: u16 },
    /// An HTTP request: the 403 that says why is queued.
    Http,
    /// An HTTP request head that cannot be parsed (a 400 is queued if it
    /// was malformed).
    BadHttp(HttpRefusal),
}

/// What serving an HTTP request came to.
#[derive(Debug)]
pub enum HttpOutcome {
    /// The head is not complete yet.
    Incomplete,
    /// Answered with this status; the connection is to close.
    Answered {
        status: u16,
        method: String,
        path: String,
    },
    /// The 101 is queued and the connection speaks WebSocket; what followed
    /// the head has been fed to it, and left it so.
    Upgraded(TransportStatus),
    /// The head cannot be served (a malformed one is answered 400 first).
    Refused(HttpRefusal),
    /// A request for a report on the server's own state: the loop decides
    /// who may read it and answers with [`Connection::answer_report`].
    Report {
        report: Report,
        authorization: Option<Authorization>,
        path: String,
    },
}

/// A client connection as the event loop sees it. `S` is the socket: a mio
/// `TcpStream` in the server; anything that reads and writes bytes in the
/// fuzz target, which drives the same code without a network.
pub struct Connection<S = TcpStream> {
    pub socket: S,
    transport: Transport,
    /// Protocol bytes read and not yet decoded: a partial frame, or whole
    /// frames an emitter held back by flow control has not had routed yet
    /// (while sniffing or on HTTP: the bytes as they came).
    input: BytesMut,
    /// Encoded frames not yet written.
    output: BytesMut,
    /// Past this many unsent bytes the client is a slow consumer.
    max_output: usize,
    /// Frames go out inside WebSocket messages (the carrier, under TLS or
    /// not, is a WebSocket). Kept beside the output so that queueing a
    /// frame, once per delivery, need not read the transport to learn that
    /// frames go out as they are: on TLS that read reached into the
    /// session's allocation, a cache miss per delivery (callgrind's cache
    /// simulation at 1:100: 3.1 first-level misses a queued frame against
    /// 2.0 on plain TCP).
    websocket_framing: bool,
    /// WRITABLE interest is registered (only while output is pending).
    pub wants_write: bool,
}

impl<S: Read + Write> Connection<S> {
    /// A new connection that may speak what `accepts` allows; with only the
    /// binary protocol allowed, it is binary from the start.
    pub fn new(socket: S, max_output: usize, accepts: &Accepts) -> Connection<S> {
        Connection {
            socket,
            transport: if accepts.web || accepts.tls.is_some() || accepts.plain_refused {
                Transport::Sniffing(accepts.clone())
            } else {
                Transport::Binary
            },
            input: BytesMut::new(),
            output: BytesMut::new(),
            max_output,
            websocket_framing: false,
            wants_write: false,
        }
    }

    /// Reads once from the socket via `scratch`, so that the input buffer
    /// grows only by what arrived: as it is, or, on a WebSocket, by the
    /// frames its whole messages carry; on TLS, by what the records
    /// decrypt to, taken the same way.
    ///
    /// While a handshake step is away on a worker, or bytes wait for one,
    /// nothing is read: `WouldBlock` until the loop takes the step back.
    pub fn read_once(&mut self, scratch: &mut [u8]) -> io::Result<ReadStatus> {
        if self.handshake_paused() {
            return Ok(ReadStatus::WouldBlock);
        }
        let status = self.read_socket(scratch)?;
        let ReadStatus::Data(n) = status else {
            return Ok(status);
        };
        let bytes = &scratch[..n];
        match &mut self.transport {
            Transport::WebSocket(ws) => {
                match ws.feed(bytes, &mut self.input, &mut self.output, self.max_output) {
                    WsStatus::Open => {}
                    WsStatus::Closed => return Ok(ReadStatus::Closed),
                    WsStatus::Full => return Ok(ReadStatus::Full),
                    WsStatus::Failed(failure) => {
                        return Ok(ReadStatus::Failed(failure.into()));
                    }
                }
            }
            Transport::Tls(tls) if tls.jobs && tls.session.is_handshaking() => {
                tls.held.extend_from_slice(bytes);
                return Ok(ReadStatus::Handshake(n));
            }
            Transport::Tls(tls) => {
                let fed = feed_tls(
                    tls,
                    bytes,
                    &mut self.input,
                    &mut self.output,
                    self.max_output,
                );
                return Ok(fed.unwrap_or(status));
            }
            Transport::Sniffing(accepts) => {
                self.input.extend_from_slice(bytes);
                match sniffed(accepts, &self.input) {
                    Ok(None) => {}
                    Ok(Some(Transport::Tls(mut tls))) if tls.jobs => {
                        // The start of the handshake, for a worker.
                        tls.held = std::mem::take(&mut self.input).to_vec();
                        self.transport = Transport::Tls(tls);
                        return Ok(ReadStatus::Handshake(n));
                    }
                    Ok(Some(Transport::Tls(mut tls))) => {
                        // What came so far is the start of the handshake.
                        let early = std::mem::take(&mut self.input);
                        let fed = feed_tls(
                            &mut tls,
                            &early,
                            &mut self.input,
                            &mut self.output,
                            self.max_output,
                        );
                        self.transport = Transport::Tls(tls);
                        if let Some(end) = fed {
                            return Ok(end);
                        }
                    }
                    Ok(Some(transport)) => self.transport = transport,
                    Err(failure) => return Ok(ReadStatus::Failed(failure)),
                }
            }
            Transport::Binary | Transport::Http | Transport::PlainRefused { .. } => {
                self.input.extend_from_slice(bytes)
            }
        }
        Ok(status)
    }

    /// The transport, as far as the event loop needs it: inside TLS, the
    /// one its plaintext carries.
    pub fn stage(&self) -> Stage {
        match &self.transport {
            Transport::Tls(tls) => stage_of(&tls.inner),
            transport => stage_of(transport),
        }
    }

    /// Whether the connection is encrypted (for the log).
    pub fn encrypted(&self) -> bool {
        matches!(self.transport, Transport::Tls(_))
    }

    /// Whether reading waits for a handshake step: one is away on a worker,
    /// or bytes read for the next one wait to be handed out.
    #[inline]
    pub fn handshake_paused(&self) -> bool {
        match &self.transport {
            Transport::Tls(tls) => tls.session.is_away() || !tls.held.is_empty(),
            _ => false,
        }
    }

    /// The handshake's next step for a worker: the session's state and up
    /// to [`MAX_HANDSHAKE_JOB`] of the bytes read for it (`None` when none
    /// wait, or a step is away already).
    pub fn handshake_job(&mut self) -> Option<HandshakeJob> {
        let Transport::Tls(tls) = &mut self.transport else {
            return None;
        };
        if tls.held.is_empty() || tls.session.is_away() {
            return None;
        }
        let bytes = if tls.held.len() <= MAX_HANDSHAKE_JOB {
            std::mem::take(&mut tls.held)
        } else {
            let rest = tls.held.split_off(MAX_HANDSHAKE_JOB);
            std::mem::replace(&mut tls.held, rest)
        };
        tls.session.lend(bytes)
    }

    /// Takes a handshake step back from a worker: its records are queued
    /// for the socket, and once the handshake is done what came after it
    /// (in the step's bytes and in any still held) is fed as any read is.
    /// `None` while the connection stays open; reading may resume unless
    /// [`handshake_paused`](Connection::handshake_paused) (bytes held for
    /// the next step).
    pub fn take_back_handshake(&mut self, step: HandshakeStep) -> Option<ReadStatus> {
        let Transport::Tls(tls) = &mut self.transport else {
            return None;
        };
        let Tls {
            session,
            inner,
            held,
            ..
        } = &mut **tls;
        let (input, output, max_output) = (&mut self.input, &mut self.output, self.max_output);
        let fed = session.take_back(step, |plain| {
            match take_plain(inner, plain, input, output, max_output) {
                TransportStatus::Open => Ok(()),
                stop => Err(stop),
            }
        });
        if let Some(end) = settle(fed) {
            return Some(end);
        }
        if session.is_handshaking() || held.is_empty() {
            return None;
        }
        let rest = std::mem::take(held);
        feed_tls(
            tls,
            &rest,
            &mut self.input,
            &mut self.output,
            self.max_output,
        )
    }

    /// The transport that carries frames: inside TLS, the inner one.
    fn carrier(&mut self) -> &mut Transport {
        match &mut self.transport {
            Transport::Tls(tls) => &mut tls.inner,
            transport => transport,
        }
    }

    /// The WebSocket that carries frames, if one does.
    #[inline]
    fn websocket(&self) -> Option<&WebSocket> {
        if !self.websocket_framing {
            return None;
        }
        match &self.transport {
            Transport::WebSocket(ws) => Some(ws),
            Transport::Tls(tls) => match &tls.inner {
                Transport::WebSocket(ws) => Some(ws),
                _ => None,
            },
            _ => None,
        }
    }

    /// Answers the HTTP request in the input once its head is whole: the
    /// page, an error status, or the switch to WebSocket.
    pub fn serve_http(&mut self, config: &WebConfig) -> HttpOutcome {
        let (request, head_len) = match web::parse_head(&self.input) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return HttpOutcome::Incomplete,
            Err(error) => {
                if matches!(error, HeadError::Malformed(_)) {
                    self.queue_raw(web::bad_request().bytes());
                }
                return HttpOutcome::Refused(HttpRefusal(error));
            }
        };
        self.input.advance(head_len);
        match web::answer(&request, &config.allowed_origins) {
            Answer::Close { status, bytes } => {
                self.input.clear();
                self.queue_raw(&bytes);
                HttpOutcome::Answered {
                    status,
                    method: request.method,
                    path: request.path,
                }
            }
            Answer::Report(report) => {
                self.input.clear();
                HttpOutcome::Report {
                    report,
                    authorization: request.authorization,
                    path: request.path,
                }
            }
            Answer::Upgrade { bytes } => {
                self.queue_raw(&bytes);
                let early = std::mem::take(&mut self.input);
                let mut ws = Box::new(WebSocket::new());
                let status = ws.feed(&early, &mut self.input, &mut self.output, self.max_output);
                *self.carrier() = Transport::WebSocket(ws);
                self.websocket_framing = true;
                HttpOutcome::Upgraded(status.into())
            }
        }
    }

    /// Queues the answer to an [`HttpOutcome::Report`] request (the whole
    /// HTTP response); the connection is then closed like any answer.
    /// Returns its status.
    pub fn answer_report(&mut self, answer: ReportAnswer) -> u16 {
        let (status, bytes) = web::report_answer(answer);
        self.queue_raw(&bytes);
        status
    }

    /// Refuses an unencrypted connection on a server that requires TLS,
    /// once its first bytes say how: an HTTP request gets a 403 that says
    /// why (queued here); the binary protocol's first frame header gives
    /// the sequence number the loop's ERRO echoes.
    pub fn refuse_plain(&mut self) -> PlainRefusal {
        let Transport::PlainRefused { http } = self.transport else {
            return PlainRefusal::Incomplete;
        };
        if !http {
            let Some(&[hi, lo]) = self.input.get(HEADER_LEN - 2..HEADER_LEN) else {
                return PlainRefusal::Incomplete;
            };
            self.input.clear();
            return PlainRefusal::Binary {
                seq: u16::from_be_bytes([hi, lo]),
            };
        }
        match web::parse_head(&self.input) {
            Ok(None) => PlainRefusal::Incomplete,
            Ok(Some((request, _))) => {
                self.input.clear();
                self.queue_raw(web::tls_required(request.host.as_deref()).bytes());
                PlainRefusal::Http
            }
            Err(error) => {
                if matches!(error, HeadError::Malformed(_)) {
                    self.queue_raw(web::bad_request().bytes());
                }
                PlainRefusal::BadHttp(HttpRefusal(error))
            }
        }
    }

    /// Queues bytes as they are (an HTTP answer). Not held to the cap: an
    /// answer is sent once, on an output still empty, and is at most the
    /// largest embedded file or a bounded report (`/stats` lists at most
    /// 8192 clients); refusing it would send nothing at all.
    fn queue_raw(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Ends the transport's own session before the socket closes: on a
    /// WebSocket, the close frame with the code `ending` picks and `reason`
    /// (nothing elsewhere).
    /// On TLS, close_notify follows (unless TLS itself failed).
    pub fn close_transport(&mut self, ending: Ending<'_>, reason: &str) {
        let (carrier, session) = match &mut self.transport {
            Transport::Tls(tls) => (&mut tls.inner, Some(&mut tls.session)),
            transport => (transport, None),
        };
        if let Transport::WebSocket(ws) = carrier
            && let Some(cause) = ending.websocket_cause()
        {
            ws.close(cause, reason, &mut self.output, self.max_output);
        }
        if let Some(session) = session
            && !matches!(ending, Ending::Failed(TransportFailure(Failure::Tls(_))))
        {
            session.close();
        }
    }

    /// Ends a TLS session with close_notify after what is queued, where no
    /// transport ending is said otherwise (after an HTTP answer); nothing
    /// on a plain connection.
    pub fn close_tls(&mut self) {
        if let Transport::Tls(tls) = &mut self.transport {
            tls.session.close();
        }
    }

    /// Reads once from the socket into `scratch`, and no further: the input
    /// takes the bytes in [`Connection::read_once`]; a closing connection
    /// leaves them there to be overwritten.
    pub fn read_socket(&mut self, scratch: &mut [u8]) -> io::Result<ReadStatus> {
        loop {
            return match self.socket.read(scratch) {
                Ok(0) => Ok(ReadStatus::Closed),
                Ok(n) => Ok(ReadStatus::Data(n)),
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(ReadStatus::WouldBlock),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                },
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
    // Inlined into the loop's queueing, as it was before TLS added an arm
    // to its match: out of line, the plain server ran 1,260 instructions a
    // message at 1:1 (callgrind) against 1,223 before TLS; inlined, 1,227.
    #[inline]
    pub fn queue(&mut self, frame: &impl Encode) -> bool {
        let len = frame.encoded_len();
        match self.websocket() {
            Some(ws) => {
                // After a close frame nothing more may be sent; the
                // connection is on its way out.
                if !ws.can_send() {
                    return true;
                }
                self.fits(web::binary_header_len(len) + len) && {
                    web::put_binary_header(len, &mut self.output);
                    frame.encode_into(&mut self.output);
                    true
                }
            }
            None => {
                self.fits(len) && {
                    frame.encode_into(&mut self.output);
                    true
                }
            }
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
        if let Transport::Tls(tls) = &mut self.transport {
            released += tls.session.release_idle_buffer();
        }
        if let Transport::WebSocket(ws) = self.carrier() {
            released += ws.release_idle_buffer();
        }
        released
    }

    /// Bytes allocated for this connection's buffers.
    #[cfg(test)]
    fn buffer_capacity(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    /// Bytes queued and not yet written (on TLS: not yet encrypted), which
    /// the output cap counts.
    pub fn queued_output(&self) -> usize {
        self.output.len()
    }

    /// Everything waiting for the socket: the queued output and, on TLS,
    /// the records already encrypted (handshake messages among them).
    pub fn unsent_output(&self) -> usize {
        self.output.len()
            + match &self.transport {
                Transport::Tls(tls) => tls.session.pending(),
                _ => 0,
            }
    }

    /// Writes queued output until it is all written or the socket would
    /// block. Returns whether everything was written.
    pub fn flush(&mut self) -> io::Result<bool> {
        if let Transport::Tls(tls) = &mut self.transport {
            let result = tls.session.flush(&mut self.output, &mut self.socket);
            if self.output.is_empty() && self.output.capacity() > KEEP_OUTPUT_CAPACITY {
                self.output = BytesMut::new();
            }
            return result;
        }
        // Written bytes leave the front of the buffer only when some remain
        // unwritten: a buffer written whole is cleared whole, so that its
        // capacity still counts the bytes it holds. Regression (mutation
        // testing): advanced past, they no longer counted, and a buffer a
        // burst had grown was kept.
        write_out(&mut self.output, |bytes| self.socket.write(bytes))
    }
}

impl Connection<TcpStream> {
    /// [`flush`](Connection::flush) for a connection whose FIN follows at
    /// once (`shutdown` when this returns true). On Linux a plain
    /// connection's bytes go with MSG_MORE, which holds their last partial
    /// segment back, and the shutdown tacks its FIN onto that segment and
    /// sends it: one packet instead of two for both kernels to process, a
    /// tenth of a short session's server CPU. Nothing waits on it: the
    /// shutdown comes in the same turn, and should it not (a write that
    /// blocks), the next flush or the close sends what is held.
    pub fn flush_before_fin(&mut self) -> io::Result<bool> {
        if matches!(self.transport, Transport::Tls(_)) {
            return self.flush();
        }
        write_out(&mut self.output, |bytes| send_more(&self.socket, bytes))
    }
}

/// One `send` with MSG_MORE (Linux: more follows, hold a partial segment).
#[cfg(target_os = "linux")]
fn send_more(socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `bytes` is valid for reads of its length, and the descriptor
    // is the stream's own, open while `socket` is borrowed.
    let sent = unsafe {
        libc::send(
            socket.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL | libc::MSG_MORE,
        )
    };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

#[cfg(not(target_os = "linux"))]
fn send_more(mut socket: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    socket.write(bytes)
}

/// Writes `output` with `write` until it is all written or the socket would
/// block; returns whether everything was written.
fn write_out(
    output: &mut BytesMut,
    mut write: impl FnMut(&[u8]) -> io::Result<usize>,
) -> io::Result<bool> {
    let mut written = 0;
    let result = loop {
        if written == output.len() {
            break Ok(true);
        }
        match write(&output[written..]) {
            Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => break Ok(false),
                io::ErrorKind::Interrupted => {}
                _ => break Err(e),
            },
        }
    };
    if !matches!(result, Ok(true)) {
        output.advance(written);
        return result;
    }
    if output.capacity() > KEEP_OUTPUT_CAPACITY {
        *output = BytesMut::new();
    } else {
        output.clear();
    }
    Ok(true)
}

/// What a sniffing connection turns out to speak, once its first bytes
/// tell (`None` until then). A TLS session starts with the server's
/// current identity; its plaintext is sniffed again, for HTTP only.
fn sniffed(accepts: &Accepts, first: &[u8]) -> Result<Option<Transport>, TransportFailure> {
    let sniff = web::sniff(first);
    Ok(Some(match (sniff, &accepts.tls) {
        (Sniff::Undecided, _) => return Ok(None),
        (Sniff::Tls, Some(acceptor)) => {
            let session =
                TlsSession::new(acceptor).map_err(|e| TransportFailure(Failure::Tls(e)))?;
            Transport::Tls(Box::new(Tls {
                session,
                inner: Transport::Sniffing(Accepts {
                    web: accepts.web,
                    ..Accepts::default()
                }),
                jobs: accepts.handshake_jobs,
                held: Vec::new(),
            }))
        }
        _ if accepts.plain_refused => Transport::PlainRefused {
            http: accepts.web && sniff == Sniff::Http,
        },
        (Sniff::Http, _) if accepts.web => Transport::Http,
        _ => Transport::Binary,
    }))
}

fn stage_of(transport: &Transport) -> Stage {
    match transport {
        // Inside TLS while the handshake is under way.
        Transport::Sniffing(_) | Transport::Tls(_) => Stage::Sniffing,
        Transport::Binary => Stage::Binary,
        Transport::Http => Stage::Http,
        Transport::WebSocket(_) => Stage::WebSocket,
        Transport::PlainRefused { .. } => Stage::PlainRefused,
    }
}

/// Hands a TLS session bytes from the socket, and what they decrypt to to
/// the transport inside it, as a plain connection's bytes go to its own.
/// `None` while the connection stays open.
fn feed_tls(
    tls: &mut Tls,
    bytes: &[u8],
    input: &mut BytesMut,
    output: &mut BytesMut,
    max_output: usize,
) -> Option<ReadStatus> {
    let Tls { session, inner, .. } = tls;
    let fed = session.feed(bytes, |plain| {
        match take_plain(inner, plain, input, output, max_output) {
            TransportStatus::Open => Ok(()),
            stop => Err(stop),
        }
    });
    settle(fed)
}

/// What a TLS session's feed came to, as a read reports it: `None` while
/// the connection stays open.
fn settle(fed: Result<TlsStatus, TransportStatus>) -> Option<ReadStatus> {
    match fed {
        Ok(TlsStatus::Open) | Err(TransportStatus::Open) => None,
        Ok(TlsStatus::Closed) | Err(TransportStatus::Closed) => Some(ReadStatus::Closed),
        Ok(TlsStatus::Failed(failure)) => {
            Some(ReadStatus::Failed(TransportFailure(Failure::Tls(failure))))
        }
        Err(TransportStatus::Full) => Some(ReadStatus::Full),
        Err(TransportStatus::Failed(failure)) => Some(ReadStatus::Failed(failure)),
    }
}

/// Plaintext from a TLS session, taken by the transport it carries.
fn take_plain(
    transport: &mut Transport,
    bytes: &[u8],
    input: &mut BytesMut,
    output: &mut BytesMut,
    max_output: usize,
) -> TransportStatus {
    match transport {
        Transport::WebSocket(ws) => ws.feed(bytes, input, output, max_output).into(),
        Transport::Sniffing(accepts) => {
            input.extend_from_slice(bytes);
            match sniffed(accepts, input) {
                Ok(Some(next)) => *transport = next,
                Ok(None) => {}
                Err(failure) => return TransportStatus::Failed(failure),
            }
            TransportStatus::Open
        }
        Transport::Binary
        | Transport::Http
        | Transport::PlainRefused { .. }
        | Transport::Tls(_) => {
            input.extend_from_slice(bytes);
            TransportStatus::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Frame, FrameView, Kind, SERVER_ID};
    use std::net::TcpListener;
    use std::time::Duration;

    fn pair() -> (Connection, std::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        server_side.set_nonblocking(true).unwrap();
        (
            Connection::new(TcpStream::from_std(server_side), 1024, &Accepts::default()),
            peer,
        )
    }

    /// The kinds of the whole frames buffered, consumed as the server does.
    fn decode_all<S: Read + Write>(conn: &mut Connection<S>) -> Vec<Kind> {
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
        assert_eq!(conn.buffered_input(), 3, "the partial frame waits");
        conn.release_idle_buffers();
        assert!(conn.buffer_capacity() >= 3, "pending input is kept");
        peer.write_all(&ok[3..]).unwrap();
        while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(5) {}
        assert_eq!(decode_all(&mut conn), vec![Kind::Ok]);
        let held = conn.buffer_capacity();
        assert_eq!(conn.release_idle_buffers(), held);
        assert_eq!(conn.buffer_capacity(), 0);
    }

    /// The last bytes before a FIN go with MSG_MORE (held for the FIN to
    /// ride on): the peer still reads them whole, then the end of the
    /// stream, whether the shutdown follows or the connection is dropped.
    #[test]
    fn bytes_flushed_before_fin_arrive_whole_then_the_end() {
        for shutdown in [true, false] {
            let (mut conn, mut peer) = pair();
            peer.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let frames = [
                Frame::bare(Kind::Ok, SERVER_ID, 1, 0),
                Frame::msg(1, 2, 7, b"last words".to_vec()).unwrap(),
            ];
            let mut expected = Vec::new();
            for frame in &frames {
                assert!(conn.queue(frame));
                expected.extend(frame.to_bytes());
            }
            assert!(conn.flush_before_fin().unwrap());
            assert_eq!(conn.queued_output(), 0);
            if shutdown {
                conn.socket.shutdown(std::net::Shutdown::Write).unwrap();
            } else {
                drop(conn);
            }
            let mut received = Vec::new();
            peer.read_to_end(&mut received).unwrap();
            assert_eq!(received, expected, "shutdown: {shutdown}");
        }
    }

    /// Regression (mutation testing: any threshold passed every test). A
    /// busy connection keeps an output buffer of a few kilobytes from turn
    /// to turn; one a burst grew past 64 KiB is released once flushed.
    #[test]
    fn flushed_output_keeps_a_modest_buffer_and_releases_a_large_one() {
        let (mut conn, mut peer) = pair();
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.max_output = 1 << 20;
        let msg = |len: usize| Frame::msg(1, 4096, 0, vec![b'x'; len]).unwrap();
        let mut wire = Vec::new();
        let total = 8 * 1024 + 2 * 35 * 1024 + 3 * 10;
        // A MSG's text is at most 65535 bytes: the burst is two of them.
        for (texts, kept) in [(vec![8 * 1024], true), (vec![35 * 1024; 2], false)] {
            for &len in &texts {
                assert!(conn.queue(&msg(len)));
            }
            let queued = conn.queued_output();
            let capacity = conn.buffer_capacity();
            assert!(capacity >= queued);
            // Loopback takes a few hundred kilobytes unread; the peer
            // reads between attempts in case it takes less.
            while !conn.flush().unwrap() {
                wire.extend(read_some(&mut peer));
                assert!(wire.len() <= total, "bytes written twice");
            }
            assert_eq!(conn.queued_output(), 0);
            let after = conn.buffer_capacity();
            let held = if kept { capacity } else { 0 };
            assert_eq!(after, held, "{queued} bytes flushed");
        }
        while wire.len() < total {
            wire.extend(read_some(&mut peer));
        }
        assert_eq!(wire.len(), total, "every byte was written once");
    }

    /// Regression (mutation testing: the only other test of the count
    /// compared 0 with 0). Both empty buffers are freed and counted; a
    /// buffer holding output is not touched.
    #[test]
    fn releasing_idle_buffers_frees_and_counts_only_the_empty_ones() {
        let (mut conn, _peer) = pair();
        let frame = Frame::bare(Kind::Ok, SERVER_ID, 1, 0);
        assert!(conn.queue(&frame));
        assert!(conn.flush().unwrap());
        let output = conn.buffer_capacity();
        assert!(output >= 8, "a flushed buffer is kept for the next turn");
        // What an answered HTTP request leaves: input cleared, not freed.
        conn.input.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        conn.input.clear();
        let held = conn.buffer_capacity();
        assert!(held > output);
        assert_eq!(conn.release_idle_buffers(), held);
        assert_eq!(conn.buffer_capacity(), 0);
        assert!(conn.queue(&frame));
        let pending = conn.buffer_capacity();
        assert_eq!(conn.release_idle_buffers(), 0);
        assert_eq!(conn.buffer_capacity(), pending);
        assert_eq!(conn.queued_output(), 8, "queued output was dropped");
    }

    /// The WebSocket's buffer for a frame split across reads is freed and
    /// counted with the others once the frame is whole.
    #[test]
    fn releasing_idle_buffers_counts_the_websockets_split_frame_buffer() {
        let (mut conn, mut peer) = pair();
        conn.transport = Transport::WebSocket(Box::default());
        conn.websocket_framing = true;
        let frame = Frame::bare(Kind::Ok, 1, SERVER_ID, 0).to_bytes();
        let mask = [1u8, 2, 3, 4];
        let mut message = vec![0x82, 0x80 | frame.len() as u8];
        message.extend_from_slice(&mask);
        message.extend(frame.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut scratch = [0u8; 64];
        for part in [&message[..9], &message[9..]] {
            peer.write_all(part).unwrap();
            while conn.read_once(&mut scratch).unwrap() != ReadStatus::Data(part.len()) {}
        }
        assert_eq!(decode_all(&mut conn), vec![Kind::Ok]);
        assert_eq!(conn.buffer_capacity(), 0, "input and output hold nothing");
        assert!(conn.release_idle_buffers() > 0, "the split frame's buffer");
        assert_eq!(conn.release_idle_buffers(), 0);
    }

    /// Regression (mutation testing: with the answer never queued, only the
    /// web tests' deadlines noticed, past the per-mutant timeout).
    #[test]
    fn an_answered_http_request_queues_the_answer_and_forgets_the_request() {
        let (mut conn, _peer) = pair();
        conn.transport = Transport::Http;
        conn.input
            .extend_from_slice(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n");
        let config = WebConfig {
            allowed_origins: Vec::new(),
        };
        let HttpOutcome::Answered { status, .. } = conn.serve_http(&config) else {
            panic!("not answered");
        };
        assert_eq!(status, 404);
        assert_eq!(conn.buffered_input(), 0);
        let answer = String::from_utf8_lossy(&conn.output);
        assert!(answer.starts_with("HTTP/1.1 404 "), "{answer}");
    }

    /// Regression (mutation testing: the cap check on a WebSocket ran only
    /// in the web tests, which never come near the cap). The binary
    /// message header counts, once per frame.
    #[test]
    fn websocket_output_past_the_cap_is_refused_whole_header_included() {
        let (mut conn, _peer) = pair();
        conn.transport = Transport::WebSocket(Box::default());
        conn.websocket_framing = true;
        let msg = |len: usize| Frame::msg(1, 4096, 0, vec![b'x'; len]).unwrap();
        // 1000 bytes and a 4-byte header, then 18 and a 2-byte one: 1024.
        assert!(conn.queue(&msg(990)));
        assert_eq!(conn.queued_output(), 1004);
        assert!(!conn.queue(&msg(9)), "1025 bytes passed the cap");
        assert_eq!(conn.queued_output(), 1004);
        assert!(conn.queue(&msg(8)));
        assert_eq!(conn.queued_output(), 1024);
    }

    /// Regression (mutation testing: with `can_send` always true, frames
    /// went out after the close frame and no test looked). After its close
    /// frame a WebSocket takes nothing more, and says the frame is dealt with.
    #[test]
    fn nothing_is_queued_after_a_websockets_close_frame() {
        let (mut conn, _peer) = pair();
        conn.transport = Transport::WebSocket(Box::default());
        conn.websocket_framing = true;
        conn.close_transport(Ending::ProtocolViolation, "bad");
        let closed = conn.output.clone();
        assert_eq!(closed[..2], [0x88, 5], "a close frame: code and reason");
        assert!(conn.queue(&Frame::bare(Kind::Ok, SERVER_ID, 1, 0)));
        assert_eq!(conn.output, closed);
    }

    /// A socket in memory: reads take what the test put in (WouldBlock
    /// when there is none), writes pile up for the test to take.
    #[derive(Default)]
    struct MemorySocket {
        incoming: std::collections::VecDeque<u8>,
        outgoing: Vec<u8>,
        /// Writes would block: a peer that does not read.
        full: bool,
    }

    impl Read for MemorySocket {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.incoming.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.incoming.len());
            for (slot, byte) in buf.iter_mut().zip(self.incoming.drain(..n)) {
                *slot = byte;
            }
            Ok(n)
        }
    }

    impl Write for MemorySocket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.outgoing.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The server's identity and a client configuration that trusts it.
    fn tls_pair() -> (TlsAcceptor, std::sync::Arc<rustls::ClientConfig>) {
        use rustls_pki_types::pem::PemObject;
        let now = std::time::SystemTime::now();
        let day = Duration::from_secs(86_400);
        let made =
            crate::tls::generate::throwaway(&["localhost".into()], now - day, now + day).unwrap();
        // One directory per call: the tests run in parallel in one process,
        // and a shared one was removed under another test's feet.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("evchat-conn-tls-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), &made.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &made.key_pem).unwrap();
        let acceptor = TlsAcceptor::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from_pem_slice(made.ca_pem.as_bytes()).unwrap())
            .unwrap();
        #[allow(deprecated)]
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (acceptor, std::sync::Arc::new(client))
    }

    fn handshaken() -> (Connection<MemorySocket>, rustls::ClientConnection) {
        handshaken_with(false)
    }

    /// A TLS connection whose handshake (and an OI) went through a
    /// one-byte scratch buffer, so that the session took every record a
    /// byte per read (with `jobs`: each byte a handshake job, run here as
    /// a worker runs it); and the client at the other end.
    fn handshaken_with(jobs: bool) -> (Connection<MemorySocket>, rustls::ClientConnection) {
        let (acceptor, client_config) = tls_pair();
        let accepts = Accepts {
            web: true,
            tls: Some(acceptor),
            plain_refused: false,
            handshake_jobs: jobs,
        };
        let mut conn = Connection::new(MemorySocket::default(), 1 << 20, &accepts);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
        let mut one_byte = [0u8; 1];
        let oi = Frame::bare(Kind::Oi, 0, 0, 5).to_bytes();
        let mut sent_oi = false;
        for _ in 0..64 {
            if !client.is_handshaking() && !sent_oi {
                client.writer().write_all(&oi).unwrap();
                sent_oi = true;
            }
            let mut records = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut records).unwrap();
            }
            conn.socket.incoming.extend(records);
            while !conn.socket.incoming.is_empty() {
                let status = conn.read_once(&mut one_byte).unwrap();
                let paused = conn.handshake_paused();
                match conn.handshake_job() {
                    Some(job) => {
                        assert!(jobs && paused);
                        assert_eq!(status, ReadStatus::Handshake(1));
                        assert_eq!(job.len(), 1);
                        assert_eq!(conn.take_back_handshake(job.run()), None);
                    }
                    None => {
                        assert!(!paused);
                        assert_eq!(status, ReadStatus::Data(1));
                    }
                }
            }
            assert!(conn.flush().unwrap());
            let answer = std::mem::take(&mut conn.socket.outgoing);
            if !answer.is_empty() {
                client.read_tls(&mut &answer[..]).unwrap();
                client.process_new_packets().unwrap();
            }
            if sent_oi && conn.buffered_input() == oi.len() {
                break;
            }
        }
        assert!(!client.is_handshaking(), "the handshake completed");
        (conn, client)
    }

    /// Regression of the brief's "split at every byte": a real ClientHello
    /// (and every later client record) reaches the session one byte per
    /// read, and the handshake completes and carries an OI whose frame
    /// comes out whole.
    #[test]
    fn a_tls_handshake_fed_one_byte_per_read_completes_and_carries_frames() {
        let (mut conn, mut client) = handshaken();
        assert!(conn.encrypted());
        assert_eq!(conn.stage(), Stage::Binary);
        assert_eq!(decode_all(&mut conn), vec![Kind::Oi]);
        answer_goes_back_encrypted(&mut conn, &mut client);
    }

    /// The same with every handshake step handed out as a job: the
    /// handshake completes, and the OI that followed it comes out whole.
    #[test]
    fn a_tls_handshake_run_as_one_byte_jobs_completes_and_carries_frames() {
        let (mut conn, mut client) = handshaken_with(true);
        assert!(!conn.handshake_paused());
        assert_eq!(conn.stage(), Stage::Binary);
        assert_eq!(decode_all(&mut conn), vec![Kind::Oi]);
        answer_goes_back_encrypted(&mut conn, &mut client);
    }

    /// An OK queued on `conn` reaches `client` encrypted, and whole.
    fn answer_goes_back_encrypted(
        conn: &mut Connection<MemorySocket>,
        client: &mut rustls::ClientConnection,
    ) {
        assert!(conn.queue(&Frame::bare(Kind::Ok, SERVER_ID, 4096, 5)));
        assert!(conn.flush().unwrap());
        let records = std::mem::take(&mut conn.socket.outgoing);
        client.read_tls(&mut &records[..]).unwrap();
        client.process_new_packets().unwrap();
        let mut ok = [0u8; 8];
        client.reader().read_exact(&mut ok).unwrap();
        assert_eq!(
            ok[..],
            Frame::bare(Kind::Ok, SERVER_ID, 4096, 5).to_bytes()[..]
        );
    }

    /// A connection whose handshake step is away reads nothing (its bytes
    /// wait in the socket), hands out no second step, and writes nothing
    /// until the step is back; then the server's flight goes out.
    #[test]
    fn a_handshaking_connection_reads_nothing_while_its_step_is_away() {
        let (acceptor, client_config) = tls_pair();
        let accepts = Accepts {
            tls: Some(acceptor),
            handshake_jobs: true,
            ..Accepts::default()
        };
        let mut conn = Connection::new(MemorySocket::default(), 1 << 20, &accepts);
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        conn.socket.incoming.extend(&hello);
        let mut scratch = [0u8; 4096];
        assert_eq!(
            conn.read_once(&mut scratch).unwrap(),
            ReadStatus::Handshake(hello.len())
        );
        assert!(conn.handshake_paused());
        let job = conn.handshake_job().expect("the ClientHello, as a job");
        assert_eq!(job.len(), hello.len());
        conn.socket.incoming.extend(b"later");
        assert_eq!(
            conn.read_once(&mut scratch).unwrap(),
            ReadStatus::WouldBlock
        );
        assert_eq!(conn.socket.incoming.len(), 5, "nothing was read");
        assert!(conn.handshake_job().is_none(), "one step away at a time");
        assert!(conn.flush().unwrap());
        assert!(conn.socket.outgoing.is_empty());
        assert_eq!(conn.take_back_handshake(job.run()), None);
        assert!(!conn.handshake_paused());
        assert!(conn.flush().unwrap());
        let flight = std::mem::take(&mut conn.socket.outgoing);
        assert_eq!(flight[0], 0x16, "a handshake record: the ServerHello");
        client.read_tls(&mut &flight[..]).unwrap();
        client.process_new_packets().unwrap();
        assert!(!client.is_handshaking(), "the server's whole flight came");
    }

    /// A job carries at most one TLS record's worth of the bytes read; the
    /// rest waits for the next job. Garbage after 0x16 fails the step,
    /// and the read that follows it says so.
    #[test]
    fn a_handshake_job_is_bounded_and_a_failed_step_fails_the_connection() {
        let (acceptor, _) = tls_pair();
        let accepts = Accepts {
            tls: Some(acceptor),
            handshake_jobs: true,
            ..Accepts::default()
        };
        let mut conn = Connection::new(MemorySocket::default(), 1 << 20, &accepts);
        let mut bytes = vec![0x16];
        bytes.extend(std::iter::repeat_n(0xee, 40 * 1024));
        conn.socket.incoming.extend(&bytes);
        let mut scratch = vec![0u8; 64 * 1024];
        assert_eq!(
            conn.read_once(&mut scratch).unwrap(),
            ReadStatus::Handshake(bytes.len())
        );
        let job = conn.handshake_job().unwrap();
        assert_eq!(job.len(), MAX_HANDSHAKE_JOB);
        let status = conn.take_back_handshake(job.run());
        assert!(
            matches!(&status, Some(ReadStatus::Failed(failure)) if failure.to_string().starts_with("TLS: ")),
            "{status:?}"
        );
    }

    /// To a peer that does not read, a TLS connection encrypts no more than
    /// rustls' buffer limit ahead: the rest of its output stays plaintext,
    /// under the output cap, where the slow-consumer rule sees it.
    #[test]
    fn tls_encrypts_ahead_of_a_peer_that_does_not_read_only_to_its_bound() {
        let (mut conn, _client) = handshaken();
        decode_all(&mut conn);
        conn.socket.full = true;
        let msg = Frame::msg(1, 4096, 0, vec![b'x'; 1000]).unwrap();
        for _ in 0..500 {
            assert!(conn.queue(&msg));
        }
        let queued = conn.queued_output();
        assert!(!conn.flush().unwrap(), "nothing could be written");
        let encrypted = queued - conn.queued_output();
        // The limit, and a TLS record's worth past it.
        assert!(
            encrypted <= 64 * 1024 + 16 * 1024,
            "{encrypted} bytes encrypted"
        );
        assert!(encrypted >= 64 * 1024, "{encrypted} bytes encrypted");
        // A second flush, still blocked, takes nothing more.
        assert!(!conn.flush().unwrap(), "nothing could be written");
        assert_eq!(queued - conn.queued_output(), encrypted);
    }

    fn read_some(peer: &mut std::net::TcpStream) -> Vec<u8> {
        let mut chunk = vec![0u8; 64 * 1024];
        let n = peer.read(&mut chunk).unwrap();
        chunk.truncate(n);
        chunk
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
