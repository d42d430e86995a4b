//! The event-driven sign-in driver (`--signins T --signins-inflight N`): T
//! threads, each one mio poll keeping N whole sessions in flight (connect,
//! HELLO with `--sign-in`'s account, HELLOACK code 0, OI as an exhibitor,
//! its OK, FLW, its OK, close) and starting a new one the moment one ends.
//! It models many clients arriving at once, where the blocking driver
//! (`signin.rs`, one session after another per thread) makes every round
//! trip wake a sleeping thread on both sides and so measures the
//! generator's wake-ups as much as the server.
//!
//! Only sessions whose every reply was right are counted; a wrong reply, a
//! refused or reset connection ends the run with an error, as in the
//! blocking driver. Plain TCP only (a TLS handshake is blocking here).

use crate::evchat::{SignIn, hello_frame};
use ::evchat::proto::{Frame, HEADER_LEN, Header, Kind, SERVER_ID};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const HELLOACK: u16 = 9;

/// Where a session is: what it waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The TCP handshake (the first WRITABLE event).
    Connecting,
    HelloAck,
    OiOk,
    FlwOk,
}

struct Session {
    stream: TcpStream,
    step: Step,
    /// Bytes received and not yet parsed.
    input: Vec<u8>,
    /// The id the OK to OI assigned.
    id: u16,
}

/// Token: slot in the low 32 bits, the slot's generation above, so that an
/// event for a closed session never reaches the one started in its slot.
fn token(slot: usize, generation: u32) -> Token {
    Token(slot | (generation as usize) << 32)
}

/// One poll thread's sessions.
struct Flight {
    poll: Poll,
    addr: SocketAddr,
    hello: Vec<u8>,
    slots: Vec<Option<Session>>,
    generations: Vec<u32>,
}

impl Flight {
    fn start(&mut self, slot: usize) -> Result<(), String> {
        let mut stream = connect(self.addr)?;
        // On loopback the handshake has usually finished by the time
        // connect returns: sending the HELLO now saves the WRITABLE event,
        // its wake-up and the two calls that would confirm the connection.
        let (step, interest) = if send_hello(&mut stream, &self.hello)? {
            (Step::HelloAck, Interest::READABLE)
        } else {
            (Step::Connecting, Interest::READABLE | Interest::WRITABLE)
        };
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.poll
            .registry()
            .register(&mut stream, token(slot, self.generations[slot]), interest)
            .map_err(|e| format!("register: {e}"))?;
        self.slots[slot] = Some(Session {
            stream,
            step,
            input: Vec::with_capacity(64),
            id: 0,
        });
        Ok(())
    }

    /// Advances the session in `slot` after an event; Ok(true) once it has
    /// completed (the OK to FLW read), when the caller closes it.
    fn advance(&mut self, slot: usize) -> Result<bool, String> {
        let hello = &self.hello;
        let Some(session) = self.slots[slot].as_mut() else {
            return Ok(false);
        };
        if session.step == Step::Connecting {
            if !send_hello(&mut session.stream, hello)? {
                return Ok(false);
            }
            session.step = Step::HelloAck;
        }
        let mut chunk = [0u8; 256];
        loop {
            // Read only while the awaited reply is incomplete: the server
            // sends nothing unasked, so once it is whole a further read could
            // only say WouldBlock (the next reply raises a new edge).
            let wanted = reply_len(session.step, &session.input);
            if session.input.len() < wanted {
                match session.stream.read(&mut chunk) {
                    Ok(0) => return Err(format!("the server closed during {:?}", session.step)),
                    Ok(n) => session.input.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("read during {:?}: {e}", session.step)),
                }
                continue;
            }
            let input = &session.input;
            match session.step {
                Step::Connecting => unreachable!("left above"),
                Step::HelloAck => {
                    if u16::from_be_bytes([input[0], input[1]]) != HELLOACK {
                        return Err("HELLO answered with another frame than HELLOACK".into());
                    }
                    if input.get(10) != Some(&0) {
                        return Err(format!("HELLO refused with code {:?}", input.get(10)));
                    }
                    if input.len() != wanted {
                        return Err("bytes after HELLOACK before OI".into());
                    }
                    session.input.clear();
                    let oi = Frame::bare(Kind::Oi, 0, SERVER_ID, 0).to_bytes();
                    write_whole(&mut session.stream, &oi, "OI")?;
                    session.step = Step::OiOk;
                }
                Step::OiOk | Step::FlwOk => {
                    let reply = Header::peek(input).expect("8 bytes read");
                    if reply.kind != Kind::Ok as u16 || input.len() != HEADER_LEN {
                        return Err(format!(
                            "{:?}: answered with type {} ({} bytes)",
                            session.step,
                            reply.kind,
                            input.len()
                        ));
                    }
                    session.input.clear();
                    if session.step == Step::FlwOk {
                        if reply.seq != 1 {
                            return Err(format!("FLW answered with seq {}", reply.seq));
                        }
                        return Ok(true);
                    }
                    session.id = reply.dest;
                    let flw = Frame::bare(Kind::Flw, session.id, SERVER_ID, 1).to_bytes();
                    write_whole(&mut session.stream, &flw, "FLW")?;
                    session.step = Step::FlwOk;
                }
            }
        }
    }
}

/// How many bytes the reply awaited at `step` has, as far as `input` tells:
/// HELLOACK's length is in its header, an OK is the bare header.
fn reply_len(step: Step, input: &[u8]) -> usize {
    match step {
        Step::HelloAck => input
            .get(8..10)
            .map_or(10, |l| 10 + usize::from(u16::from_be_bytes([l[0], l[1]]))),
        _ => HEADER_LEN,
    }
}

/// A non-blocking connection to `addr`, in delayed-ACK mode (TCP_QUICKACK
/// off) from its first segment, as HAProxy opens its connections: the
/// handshake's last ACK then rides on the HELLO written right after. Linux
/// leaves the mode on the SYN-ACK and enters it again when the socket sends
/// within 40 ms of receiving (the HELLO, each request after its reply), so
/// each reply's ACK rides on the next request too. Two segments a session
/// fewer, each of which loopback makes both sides pay for.
/// No TCP_NODELAY: each request is written only once the reply to the one
/// before has acknowledged it, so Nagle never has a write to hold back.
fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .set_tcp_quickack(false)
        .map_err(|e| format!("TCP_QUICKACK: {e}"))?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        // Finished by the first WRITABLE event, or by the time the HELLO is
        // written (`send_hello`).
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(format!("connect: {e}")),
    }
    Ok(TcpStream::from_std(socket.into()))
}

/// Sends the HELLO if the connection is up: Ok(false) while the handshake
/// is still going (the WRITABLE event will say when), an error if it failed.
fn send_hello(stream: &mut TcpStream, hello: &[u8]) -> Result<bool, String> {
    match stream.write(hello) {
        // Under 100 bytes into an empty socket buffer: whole, or broken.
        Ok(n) if n == hello.len() => Ok(true),
        Ok(n) => Err(format!("HELLO: only {n} of {} bytes written", hello.len())),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected) => Ok(false),
        Err(e) => Err(format!("connect: {e}")),
    }
}

fn write_whole(stream: &mut TcpStream, bytes: &[u8], what: &str) -> Result<(), String> {
    match stream.write(bytes) {
        Ok(n) if n == bytes.len() => Ok(()),
        Ok(n) => Err(format!("{what}: only {n} of {} bytes written", bytes.len())),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// One poll thread: `inflight` sessions, each replaced when it completes,
/// until `stop`; completed sessions are added to `done` while `counting`.
pub fn run_thread(
    addr: SocketAddr,
    account: SignIn,
    inflight: usize,
    counting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut flight = Flight {
        poll: Poll::new().map_err(|e| format!("poll: {e}"))?,
        addr,
        hello: hello_frame(&account.name, account.secret.as_bytes()),
        slots: (0..inflight).map(|_| None).collect(),
        generations: vec![0; inflight],
    };
    for slot in 0..inflight {
        flight.start(slot)?;
    }
    let mut events = Events::with_capacity(inflight.max(16));
    while !stop.load(Ordering::Relaxed) {
        match flight
            .poll
            .poll(&mut events, Some(Duration::from_millis(100)))
        {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("poll: {e}")),
        }
        for event in events.iter() {
            let slot = event.token().0 & 0xffff_ffff;
            let generation = (event.token().0 >> 32) as u32;
            if slot >= inflight || flight.generations[slot] != generation {
                continue;
            }
            if flight.advance(slot)? {
                // Dropping the stream closes it, as the blocking driver does.
                flight.slots[slot] = None;
                if counting.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                flight.start(slot)?;
            }
        }
    }
    Ok(())
}
