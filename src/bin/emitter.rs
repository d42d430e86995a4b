//! `emitter <host:port> [exhibitor_id]`: reads lines from stdin and sends
//! them as MSG, CREQ or FLW; a reader thread reports each reply as it
//! arrives (`delivered #<seq>` / `not delivered #<seq>`).

use clap::Parser;
use evchat::cli::{parse_secs, print_line};
use evchat::client::{
    Command, FAREWELL_TIMEOUT, FrameReader, FrameWriter, parse_command, register,
};
use evchat::proto::{ClientId, EXHIBITOR_IDS, Frame, Kind, SERVER_ID};
use std::collections::BTreeSet;
use std::io::{self, BufRead};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "evchat emitter: sends the lines you type as messages"
)]
struct Args {
    /// Server address as host:port (IPv6: [addr]:port)
    server: String,
    /// Exhibitor to pair with (4096-8191), as printed by `exhibitor`
    #[arg(value_parser = clap::value_parser!(u16).range(*EXHIBITOR_IDS.start() as i64..=*EXHIBITOR_IDS.end() as i64))]
    exhibitor_id: Option<u16>,
    /// Seconds to wait at end of input for outstanding replies
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_secs)]
    wait: Duration,
}

/// What the input side and the reply side share.
#[derive(Default)]
struct Pending {
    /// Requests sent whose OK/ERRO has not arrived.
    outstanding: BTreeSet<u16>,
    /// Sequence number of our FLW, once sent.
    farewell: Option<u16>,
    /// The server acknowledged our FLW.
    farewell_acked: bool,
}

struct Emitter {
    id: ClientId,
    writer: FrameWriter,
    pending: Mutex<Pending>,
    changed: Condvar,
    /// FLW has been (or is being) sent.
    leaving: AtomicBool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let origin = args.exhibitor_id.unwrap_or(1);
    let registered = match register(&args.server, origin) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("emitter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let emitter = Arc::new(Emitter {
        id: registered.id,
        writer: registered.writer,
        pending: Mutex::new(Pending::default()),
        changed: Condvar::new(),
        leaving: AtomicBool::new(false),
    });
    {
        let emitter = emitter.clone();
        std::thread::spawn(move || emitter.read_replies(registered.reader));
    }
    {
        let emitter = emitter.clone();
        if let Err(e) = ctrlc::set_handler(move || emitter.leave()) {
            eprintln!("emitter: cannot install the signal handler: {e}");
        }
    }
    let banner = match args.exhibitor_id {
        Some(ex) => format!("emitter {} paired with exhibitor {ex}", registered.id),
        None => format!("emitter {}", registered.id),
    };
    // Printed only once Ctrl-C is handled: whoever reads the banner may
    // signal at once and must get a clean FLW.
    let _ = print_line(&banner);
    emitter.read_input(args.wait);
    emitter.leave()
}

impl Emitter {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one frame per valid line until end of input or `(FLW)`, then
    /// waits (at most `wait`) for the replies still owed.
    fn read_input(&self, wait: Duration) {
        let stdin = io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            number += 1;
            match input.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("emitter: reading input: {e}");
                    break;
                }
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            let command = match parse_command(text) {
                Ok(command) => command,
                Err(e) => {
                    eprintln!("emitter: line {number}: {e}; nothing sent");
                    continue;
                }
            };
            let id = self.id;
            let build: Box<dyn FnOnce(u16) -> Frame> = match command {
                Command::Leave => break,
                Command::Message { dest, text } => Box::new(move |seq| {
                    Frame::msg(id, dest, seq, text).expect("the parser bounds the text")
                }),
                Command::ClientList { dest } => {
                    Box::new(move |seq| Frame::bare(Kind::Creq, id, dest, seq))
                }
            };
            let sent = self.writer.send_numbered(build, |seq| {
                self.lock().outstanding.insert(seq);
            });
            if let Err(e) = sent {
                eprintln!("emitter: sending to the server: {e}");
                std::process::exit(1);
            }
        }
        let deadline = Instant::now() + wait;
        let mut pending = self.lock();
        while !pending.outstanding.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                eprintln!(
                    "emitter: giving up on {} outstanding replies",
                    pending.outstanding.len()
                );
                break;
            }
            pending = self
                .changed
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Sends FLW (once), waits briefly for its OK and exits 0.
    fn leave(&self) -> ! {
        // Ctrl-C may arrive while input is ending: only one FLW is sent. The
        // writer lock is taken before the pending lock, as on every path.
        if !self.leaving.swap(true, Ordering::SeqCst) {
            let id = self.id;
            let sent = self.writer.send_numbered(
                |seq| Frame::bare(Kind::Flw, id, SERVER_ID, seq),
                |seq| self.lock().farewell = Some(seq),
            );
            if sent.is_err() {
                std::process::exit(0);
            }
        }
        let mut pending = self.lock();
        let deadline = Instant::now() + FAREWELL_TIMEOUT;
        while !pending.farewell_acked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                eprintln!("emitter: no OK to FLW from the server");
                break;
            }
            pending = self
                .changed
                .wait_timeout(pending, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::process::exit(0)
    }

    /// Reports each reply; answers the server's FLW.
    fn read_replies(&self, mut reader: FrameReader) {
        loop {
            let frame = match reader.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(_) if self.lock().farewell_acked => return,
                Ok(None) => {
                    if self.lock().farewell.is_some() {
                        return self.farewell_done();
                    }
                    eprintln!("emitter: the server closed the connection");
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("emitter: connection to the server failed: {e}");
                    std::process::exit(1);
                }
            };
            match frame.kind {
                Kind::Ok | Kind::Erro => self.settled(frame.seq, frame.kind == Kind::Ok),
                Kind::Flw => {
                    let _ = self
                        .writer
                        .send_ack(Kind::Ok, self.id, frame.origin, frame.seq);
                    let _ = print_line("closed by server");
                    std::process::exit(0);
                }
                _ => eprintln!("emitter: ignoring unexpected {frame}"),
            }
        }
    }

    fn settled(&self, seq: u16, ok: bool) {
        let mut pending = self.lock();
        if pending.farewell == Some(seq) {
            drop(pending);
            return self.farewell_done();
        }
        if pending.outstanding.remove(&seq) {
            let _ = print_line(&if ok {
                format!("delivered #{seq}")
            } else {
                format!("not delivered #{seq}")
            });
        } else {
            eprintln!("emitter: reply for unknown request #{seq}");
        }
        self.changed.notify_all();
    }

    fn farewell_done(&self) {
        self.lock().farewell_acked = true;
        self.changed.notify_all();
    }
}
