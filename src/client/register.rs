//! Connecting and registering: the HELLO of the identity extension when
//! the client opts in (PROTOCOL.md, "Extension: identity"), OI, the
//! server's answers, and an error for each way it can fail, worded for the
//! one line a client prints.

use super::wire::{FrameReader, FrameWriter, Incoming, parse_incoming};
use crate::auth::{Credential, Name};
use crate::cli::escape_text;
use crate::proto::ext::{Code, ExtFrame, HelloAck, ROLE_EMIT, ROLE_VIEW, SecretBytes, VERSION};
use crate::proto::{BROADCAST, ClientId, EXHIBITOR_IDS, Frame, Kind, SERVER_ID};
use crate::tls::ClientStream;
use crate::tls::client::{ConnectError, Endpoint};
use bytes::{Buf, BytesMut};
use std::io::{self, Read};
use std::time::{Duration, Instant};

/// How long a client waits for the server to answer its OI.
pub(crate) const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why registration failed, worded for the one stderr line a client prints:
/// each names the cause, not the symptom.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("exhibitor {0} is not connected or is already paired with another emitter")]
    NotPairable(ClientId),
    // ERRO to a new client's OI. The protocol's cause comes first; a server
    // that admits signed-in or TLS clients only answers a plain OI with the
    // same ERRO (PROTOCOL.md, rule 1), and a newcomer meets that far more
    // often than a full id range.
    #[error(
        "the server refused the exhibitor: all exhibitor ids (4096-8191) are in use{}",
        other_refusals(addr, *tls)
    )]
    NoExhibitorId { addr: String, tls: bool },
    #[error(
        "the server refused the emitter: all emitter ids (1-4095) are in use{}",
        other_refusals(addr, *tls)
    )]
    NoEmitterId { addr: String, tls: bool },
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
    // The answers to HELLO, one sentence each (PROTOCOL.md's codes).
    /// A server that admits TLS clients only answers a plain HELLO with
    /// the same ERRO (rule 1), so a plain connection names that cause too.
    #[error("{}", no_identity(addr, *tls))]
    NoIdentity { addr: String, tls: bool },
    #[error("this server requires an account: sign in with --user NAME")]
    AccountsRequired,
    /// Code 2: an unknown account, a wrong secret and an expired one get
    /// one answer from the server, and so one sentence here.
    #[error("sign-in refused: unknown user or wrong password")]
    Refused,
    #[error("name taken: pick another with --name")]
    NameTaken,
    #[error("bad name: a name is a letter, then up to 23 letters, digits, '_', '.' or '-'")]
    BadName,
    #[error("too many refused sign-ins from this address; try again later")]
    TooManyFailures,
    #[error("the server is busy checking other sign-ins; try again in a moment")]
    Busy,
    #[error("this server has no accounts: use --name NAME instead of --user")]
    NoAccounts,
    #[error("the server refused the HELLO as malformed or out of place (code 8)")]
    Malformed,
    #[error("the server speaks version {0} of the identity extension; this client speaks 1")]
    Version(u8),
    #[error("{addr} answered HELLO with code {code}, which this client does not know")]
    UnknownCode { addr: String, code: u8 },
    /// Signed in, but the session's roles do not allow the OI to come: the
    /// server would refuse it as it refuses a full id range, which would
    /// mislead.
    #[error("signed in, but the account lacks the role {0}, which this client needs")]
    LacksRole(&'static str),
}

impl RegisterError {
    /// Whether trying again cannot help: the server refuses who we are, or
    /// is not the server for us (name taken, too many failures and busy
    /// pass with time).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RegisterError::NoIdentity { .. }
                | RegisterError::AccountsRequired
                | RegisterError::Refused
                | RegisterError::BadName
                | RegisterError::NoAccounts
                | RegisterError::Malformed
                | RegisterError::Version(_)
                | RegisterError::UnknownCode { .. }
                | RegisterError::LacksRole(_)
        )
    }
}

/// What a client says in its HELLO (PROTOCOL.md, "The hello and its
/// answer"): nothing but that it opts in, a name to claim on a server
/// without accounts, or an account and its secret.
#[derive(Debug, Clone)]
pub enum Hello {
    OptIn,
    Claim(Name),
    SignIn { account: Name, secret: Credential },
}

impl Hello {
    /// The HELLO a paired emitter sends: the same account (it must be the
    /// exhibitor's), or no name at all (it takes the exhibitor's at OI).
    pub fn for_paired_emitter(&self) -> Hello {
        match self {
            Hello::SignIn { .. } => self.clone(),
            Hello::OptIn | Hello::Claim(_) => Hello::OptIn,
        }
    }

    fn frame(&self) -> ExtFrame {
        let (name, secret) = match self {
            Hello::OptIn => (Vec::new(), Vec::new()),
            Hello::Claim(name) => (name.as_str().as_bytes().to_vec(), Vec::new()),
            Hello::SignIn { account, secret } => (
                account.as_str().as_bytes().to_vec(),
                secret.as_bytes().to_vec(),
            ),
        };
        ExtFrame::Hello(crate::proto::ext::Hello {
            origin: BROADCAST,
            dest: SERVER_ID,
            seq: 0,
            version: VERSION,
            name,
            secret: SecretBytes::new(secret),
        })
    }
}

/// The session HELLOACK code 0 granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The session's name (an account's own spelling); None when it has none.
    pub name: Option<String>,
    /// The roles byte.
    pub roles: u8,
}

/// A client connected and identified.
pub struct Registered {
    pub id: ClientId,
    pub reader: FrameReader,
    pub writer: FrameWriter,
    /// What HELLO granted, when the client opted in.
    pub welcome: Option<Welcome>,
}

/// How many of a foreign peer's first bytes an error shows.
const SHOWN_PREFIX: usize = 24;

/// Connects to `target` (`host:port`, `1.2.3.4:port` or `[::1]:port`, with
/// TLS or without) and sends OI with `origin` (0: exhibitor; an exhibitor
/// id: pair with it).
pub fn register(target: &Endpoint, origin: ClientId) -> Result<Registered, RegisterError> {
    register_with(target, origin, None)
}

/// As [`register`], first sending `hello` when there is one: OI follows
/// only once HELLOACK code 0 has come.
pub fn register_with(
    target: &Endpoint,
    origin: ClientId,
    hello: Option<&Hello>,
) -> Result<Registered, RegisterError> {
    open_with(target, hello, origin == BROADCAST)?.identify(origin)
}

/// A connection that has said HELLO (when there was one) and been
/// welcomed, not yet identified: a client opening two connections says
/// both HELLOs before either OI (`evchat chat`), so that nothing slow (a
/// TLS handshake, a password's hash) lies between its two OIs.
pub struct Opened {
    answers: Answers,
    writer: FrameWriter,
    welcome: Option<Welcome>,
    tls: bool,
}

/// Connects to `target` and sends `hello`, when there is one, for an
/// exhibitor (`exhibitor`: it needs the view role) or an emitter (emit).
pub fn open_with(
    target: &Endpoint,
    hello: Option<&Hello>,
    exhibitor: bool,
) -> Result<Opened, RegisterError> {
    let addr = target.to_string();
    let stream = target.connect(REGISTRATION_TIMEOUT).map_err(|e| match e {
        ConnectError::Io(e) => RegisterError::Connect {
            addr: addr.clone(),
            reason: connect_reason(&e),
        },
        ConnectError::Tls(reason) => RegisterError::Connect {
            addr: addr.clone(),
            reason,
        },
    })?;
    let io_error = |source| RegisterError::Io {
        addr: addr.clone(),
        source,
    };
    let read_half = stream.try_clone().map_err(io_error)?;
    let writer = FrameWriter::new(stream);
    let mut answers = Answers {
        stream: read_half,
        buf: BytesMut::with_capacity(4096),
        addr,
        tls: target.is_tls(),
    };
    let welcome = match hello {
        Some(hello) => {
            writer
                .send_unnumbered(&hello.frame())
                .map_err(|source| RegisterError::Io {
                    addr: answers.addr.clone(),
                    source,
                })?;
            let welcome = answers.welcome()?;
            let (role, bit) = if exhibitor {
                ("view (receiving messages)", ROLE_VIEW)
            } else {
                ("emit (sending messages)", ROLE_EMIT)
            };
            if welcome.roles & bit == 0 {
                return Err(RegisterError::LacksRole(role));
            }
            Some(welcome)
        }
        None => None,
    };
    Ok(Opened {
        answers,
        writer,
        welcome,
        tls: target.is_tls(),
    })
}

impl Opened {
    /// Sends OI with `origin` (0: exhibitor; an exhibitor id: pair with
    /// it) and waits for its answer.
    pub fn identify(self, origin: ClientId) -> Result<Registered, RegisterError> {
        let Opened {
            mut answers,
            writer,
            welcome,
            tls,
        } = self;
        let addr = answers.addr.clone();
        let io_error = |source| RegisterError::Io {
            addr: addr.clone(),
            source,
        };
        let oi_seq = writer
            .send_numbered(|seq| Frame::bare(Kind::Oi, origin, SERVER_ID, seq), |_| {})
            .map_err(io_error)?;
        let (reply, raw) = answers.next()?;
        answers.stream.set_read_timeout(None).map_err(io_error)?;
        let foreign = || RegisterError::Foreign {
            addr: addr.clone(),
            sent: show_prefix(&raw),
        };
        let Incoming::Plain(reply) = reply else {
            return Err(foreign());
        };
        match reply.kind {
            Kind::Ok if reply.seq == oi_seq && reply.origin == SERVER_ID => Ok(Registered {
                id: reply.dest,
                reader: FrameReader::new(answers.stream, answers.buf),
                writer,
                welcome,
            }),
            Kind::Erro if reply.origin == SERVER_ID => {
                let addr = addr.clone();
                Err(match origin {
                    BROADCAST => RegisterError::NoExhibitorId { addr, tls },
                    id if EXHIBITOR_IDS.contains(&id) => RegisterError::NotPairable(id),
                    _ => RegisterError::NoEmitterId { addr, tls },
                })
            }
            _ => Err(foreign()),
        }
    }

    /// Closes the connection, unidentified.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }
}

/// The server's answers during registration, each within
/// [`REGISTRATION_TIMEOUT`].
struct Answers {
    stream: ClientStream,
    /// Bytes read and not yet taken: what follows the OK is the reader's.
    buf: BytesMut,
    addr: String,
    /// Whether the connection speaks TLS: a plain one's refusals may mean
    /// the server wants TLS.
    tls: bool,
}

impl Answers {
    /// The answer to HELLO: code 0, or the refusal as an error.
    fn welcome(&mut self) -> Result<Welcome, RegisterError> {
        let addr = self.addr.to_string();
        let (answer, raw) = self.next()?;
        let foreign = || RegisterError::Foreign {
            addr: addr.clone(),
            sent: show_prefix(&raw),
        };
        let ack = match answer {
            Incoming::Ext(ExtFrame::HelloAck(ack)) if ack.origin == SERVER_ID && ack.seq == 0 => {
                ack
            }
            // A server without the extension: an unknown type (rule 7).
            Incoming::Plain(Frame {
                kind: Kind::Erro,
                origin: SERVER_ID,
                seq: 0,
                ..
            }) => {
                return Err(RegisterError::NoIdentity {
                    addr,
                    tls: self.tls,
                });
            }
            _ => return Err(foreign()),
        };
        welcome_or_refusal(&ack, &addr)
    }

    /// The next whole frame, and its first bytes as received (for an error
    /// message).
    fn next(&mut self) -> Result<(Incoming, Vec<u8>), RegisterError> {
        let deadline = Instant::now() + REGISTRATION_TIMEOUT;
        let addr = || self.addr.to_string();
        let mut chunk = [0u8; 4096];
        loop {
            match parse_incoming(&self.buf) {
                Ok(Some((frame, len))) => {
                    let raw = self.buf[..len.min(SHOWN_PREFIX + 1)].to_vec();
                    self.buf.advance(len);
                    return Ok((frame, raw));
                }
                Ok(None) => {}
                Err(_) => {
                    return Err(RegisterError::Foreign {
                        addr: addr(),
                        sent: show_prefix(&self.buf),
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let no_answer = || RegisterError::NoAnswer { addr: addr() };
            if left.is_zero() {
                return Err(no_answer());
            }
            let _ = self.stream.set_read_timeout(Some(left));
            match self.stream.read(&mut chunk) {
                Ok(0) if self.buf.is_empty() => return Err(RegisterError::Closed { addr: addr() }),
                // Part of something that is not a frame of ours, then EOF.
                Ok(0) => {
                    return Err(RegisterError::Foreign {
                        addr: addr(),
                        sent: show_prefix(&self.buf),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => return Err(no_answer()),
                    _ => {
                        return Err(RegisterError::Io {
                            addr: addr(),
                            source: e,
                        });
                    }
                },
            }
        }
    }
}

/// HELLOACK's code as the session it grants or the sentence refusing it.
fn welcome_or_refusal(ack: &HelloAck, addr: &str) -> Result<Welcome, RegisterError> {
    let Some(code) = Code::from_u8(ack.code) else {
        return Err(RegisterError::UnknownCode {
            addr: addr.to_string(),
            code: ack.code,
        });
    };
    Err(match code {
        Code::Accepted if ack.version == VERSION => {
            return Ok(Welcome {
                // The server sends names by the name rule; shown escaped anyway.
                name: (!ack.name.is_empty()).then(|| escape_text(&ack.name)),
                roles: ack.roles,
            });
        }
        Code::Accepted | Code::Version => RegisterError::Version(ack.version),
        Code::AccountsRequired => RegisterError::AccountsRequired,
        Code::Refused => RegisterError::Refused,
        Code::NameTaken => RegisterError::NameTaken,
        Code::BadName => RegisterError::BadName,
        Code::TooManyFailures => RegisterError::TooManyFailures,
        Code::Busy => RegisterError::Busy,
        Code::NoAccounts => RegisterError::NoAccounts,
        Code::Malformed => RegisterError::Malformed,
    })
}

/// The causes of an ERRO to OI beside the protocol's: a server that admits
/// signed-in clients only (`--auth`), or over a plain connection, TLS
/// clients only (`--require-tls`).
fn other_refusals(addr: &str, tls: bool) -> String {
    let sign_in = "signed-in clients only (server --auth: evchat chat --user NAME signs in)";
    if tls {
        format!(", or the server admits {sign_in}")
    } else {
        format!(", or the server admits {sign_in} or TLS ones only (try tls://{addr})")
    }
}

/// What an ERRO to HELLO means, as [`RegisterError::NoIdentity`] says it.
fn no_identity(addr: &str, tls: bool) -> String {
    if tls {
        format!(
            "{addr} does not speak the identity extension (it answered HELLO with ERRO); \
             --user and --name need a server that does"
        )
    } else {
        format!(
            "{addr} answered HELLO with ERRO: it does not speak the identity extension, \
             which --user and --name need, or it takes TLS only (try tls://{addr})"
        )
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

/// Why a connection attempt failed, in words a user can act on (the
/// clients' and `evchat stats`' one wording).
pub fn connect_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "nothing is listening there (connection refused) — is the server running?".into()
        }
        io::ErrorKind::InvalidInput => "expected HOST:PORT, for example 127.0.0.1:5000".into(),
        _ => e.to_string(),
    }
}
