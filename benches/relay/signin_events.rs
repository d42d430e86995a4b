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
        let mut stream = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.poll
            .registry()
            .register(
                &mut stream,
                token(slot, self.generations[slot]),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        self.slots[slot] = Some(Session {
            stream,
            step: Step::Connecting,
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
            if let Some(e) = session.stream.take_error().map_err(|e| e.to_string())? {
                return Err(format!("connect: {e}"));
            }
            match session.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::NotConnected => return Ok(false),
                Err(e) => return Err(format!("connect: {e}")),
            }
            // A request of under 100 bytes into an empty socket buffer: it
            // goes whole or the connection is broken.
            write_whole(&mut session.stream, hello, "HELLO")?;
            session.step = Step::HelloAck;
        }
        let mut chunk = [0u8; 256];
        // The server closes after its OK to FLW: the end of input is an
        // error only if what came before it does not finish the session.
        let mut closed = false;
        loop {
            match session.stream.read(&mut chunk) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => session.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read during {:?}: {e}", session.step)),
            }
        }
        let unfinished = |step: Step| {
            if closed {
                Err(format!("the server closed during {step:?}"))
            } else {
                Ok(false)
            }
        };
        loop {
            let input = &session.input;
            match session.step {
                Step::Connecting => unreachable!("left above"),
                Step::HelloAck => {
                    let Some(len) = input
                        .get(8..10)
                        .map(|l| 10 + usize::from(u16::from_be_bytes([l[0], l[1]])))
                    else {
                        return unfinished(session.step);
                    };
                    if u16::from_be_bytes([input[0], input[1]]) != HELLOACK {
                        return Err("HELLO answered with another frame than HELLOACK".into());
                    }
                    if input.len() < len {
                        return unfinished(session.step);
                    }
                    if input.get(10) != Some(&0) {
                        return Err(format!("HELLO refused with code {:?}", input.get(10)));
                    }
                    if input.len() != len {
                        return Err("bytes after HELLOACK before OI".into());
                    }
                    session.input.clear();
                    let oi = Frame::bare(Kind::Oi, 0, SERVER_ID, 0).to_bytes();
                    write_whole(&mut session.stream, &oi, "OI")?;
                    session.step = Step::OiOk;
                }
                Step::OiOk | Step::FlwOk => {
                    if input.len() < HEADER_LEN {
                        return unfinished(session.step);
                    }
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
