//! `emitter <host:port> [exhibitor_id]`: reads lines (through the line
//! editor on a terminal, plainly from a pipe) and sends them as MSG, CREQ or
//! FLW; a reader thread reports each reply as it arrives (`delivered #<seq>`
//! / `not delivered #<seq>`).

use clap::Parser;
use evchat::cli::parse_secs;
use evchat::client::{
    Command, Entered, Farewell, FrameReader, FrameWriter, InputLine, LineInput, Printer, Replies,
    Settled, exit_process, parse_command, register,
};
use evchat::proto::{ClientId, EXHIBITOR_IDS, Frame, Kind};
use evchat::tls::client::{Endpoint, TlsArgs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The ids an emitter may pair with, as clap's range takes them.
const EXHIBITOR_ID_RANGE: std::ops::RangeInclusive<i64> =
    *EXHIBITOR_IDS.start() as i64..=*EXHIBITOR_IDS.end() as i64;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "evchat emitter: sends the lines you type as messages",
    long_about = "\
evchat emitter: sends the lines you type as messages.

Input, one command per line:
  (ID) text    a message to exhibitor ID, to the exhibitor paired with emitter ID,
               or to everyone if ID is 0
  (CREQ) ID    ask for the client list, shown by exhibitor ID (0: all)
  (FLW)        leave

The one space after ')' is not part of the text; '(4096)' alone sends an empty message.
A blank line, any other line, or a text over 65535 bytes is rejected on stderr and
nothing is sent. Each reply prints 'delivered #N' or 'not delivered #N'; your first
request is #1. On a terminal, lines are typed in a line editor (arrows, history).",
    after_help = "Examples:\n  \
emitter 127.0.0.1:5000 4096          pair with exhibitor 4096 and type lines\n  \
printf '(0) hello\\n' | emitter localhost:5000\n  \
emitter '[::1]:5000' --wait 2 < lines.txt"
)]
struct Args {
    /// Server address as host:port (IPv6: [addr]:port); tls://host:port
    /// for TLS
    // The doc is the --help text, so its brackets stay unescaped.
    #[allow(rustdoc::broken_intra_doc_links)]
    server: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Exhibitor to pair with (4096-8191), as printed by `exhibitor`
    #[arg(value_parser = clap::value_parser!(u16).range(EXHIBITOR_ID_RANGE))]
    exhibitor_id: Option<u16>,
    /// Seconds to wait at end of input for outstanding replies
    #[arg(long, value_name = "SECS", default_value = "15", value_parser = parse_secs)]
    wait: Duration,
}

struct Emitter {
    id: ClientId,
    writer: FrameWriter,
    /// Where replies and errors go: above the line being typed, on a terminal.
    printer: Printer,
    /// Requests awaiting replies (only their numbers are kept) and our FLW.
    replies: Replies<()>,
    /// FLW has been (or is being) sent.
    leaving: AtomicBool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let origin = args.exhibitor_id.unwrap_or(1);
    let target = match Endpoint::parse(&args.server, &args.tls) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("emitter: {e}");
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    let registered = match register(&target, origin) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("emitter: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut input = LineInput::stdin(Entered::Kept);
    let emitter = Arc::new(Emitter {
        id: registered.id,
        writer: registered.writer,
        printer: input.printer(),
        replies: Replies::new(()),
        leaving: AtomicBool::new(false),
    });
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
    // signal at once and must get a clean FLW. And before the replies are
    // read: a server that closes at once would otherwise end the process
    // ("went away") before it said which id it had.
    let _ = emitter.printer.line(&banner);
    {
        let emitter = emitter.clone();
        std::thread::spawn(move || emitter.read_replies(registered.reader));
    }
    emitter.read_input(&mut input, args.wait);
    emitter.leave()
}

impl Emitter {
    /// Sends one frame per valid line until end of input or `(FLW)`, then
    /// waits (at most `wait`) for the replies still owed. Ctrl-C in the line
    /// editor leaves at once, as SIGINT does.
    fn read_input(&self, input: &mut LineInput, wait: Duration) {
        let mut number = 0u64;
        loop {
            number += 1;
            let line = match input.read("") {
                Ok(InputLine::Line(line)) => line,
                Ok(InputLine::TooLong(len)) => {
                    self.printer.error(&format!(
                        "emitter: line {number}: line is {len} bytes; \
                         a message carries at most 65535 bytes of text; nothing sent"
                    ));
                    continue;
                }
                Ok(InputLine::End) => break,
                Ok(InputLine::Interrupted) => self.leave(),
                Err(e) => {
                    self.printer.error(&format!("emitter: reading input: {e}"));
                    break;
                }
            };
            let command = match parse_command(&line) {
                Ok(command) => command,
                Err(e) => {
                    self.printer
                        .error(&format!("emitter: line {number}: {e}; nothing sent"));
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
            if let Err(e) = self.replies.send(&self.writer, build, ()) {
                self.printer
                    .exit_with(&format!("emitter: sending to the server: {e}"), true, 1);
            }
        }
        let (book, settled) = self.replies.wait_until(wait, |book| book.pending() == 0);
        if !settled {
            self.printer.error(&format!(
                "emitter: giving up on {} outstanding replies",
                book.pending()
            ));
        }
    }

    /// Sends FLW (once), waits briefly for its OK and exits 0.
    fn leave(&self) -> ! {
        // Ctrl-C may arrive while input is ending: only one FLW is sent. The
        // writer lock is taken before the books' lock, as on every path.
        if !self.leaving.swap(true, Ordering::SeqCst)
            && self.replies.send_farewell(&self.writer, self.id).is_err()
        {
            exit_process(0);
        }
        if !self.replies.wait_for_farewell(|_| true) {
            self.printer.error("emitter: no OK to FLW from the server");
        }
        exit_process(0)
    }

    /// Reports each reply; answers the server's FLW.
    fn read_replies(&self, mut reader: FrameReader) {
        loop {
            let frame = match reader.read_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) | Err(_) if self.farewell() == Farewell::Answered => return,
                Ok(None) => {
                    if self.farewell() != Farewell::NotSent {
                        return self.replies.update(|book| book.farewell_answered());
                    }
                    self.printer.exit_with(
                        "emitter: the server went away (connection closed without FLW)",
                        true,
                        1,
                    );
                }
                Err(e) => {
                    self.printer.exit_with(
                        &format!("emitter: connection to the server failed: {e}"),
                        true,
                        1,
                    );
                }
            };
            match frame.kind {
                Kind::Ok | Kind::Erro => self.settled(frame.seq, frame.kind == Kind::Ok),
                Kind::Flw => {
                    let _ = self
                        .writer
                        .send_ack(Kind::Ok, self.id, frame.origin, frame.seq);
                    self.printer.exit_with("closed by server", false, 0);
                }
                _ => self
                    .printer
                    .error(&format!("emitter: ignoring unexpected {frame}")),
            }
        }
    }

    fn farewell(&self) -> Farewell {
        self.replies.lock().farewell()
    }

    fn settled(&self, seq: u16, ok: bool) {
        // Printed before the waiting input thread is woken: it may exit.
        self.replies.update(|book| match book.settle(seq) {
            Settled::Farewell => {}
            Settled::Request(()) if ok => {
                let _ = self.printer.line(&format!("delivered #{seq}"));
            }
            Settled::Request(()) => {
                let _ = self.printer.line(&format!("not delivered #{seq}"));
            }
            Settled::Unknown => self
                .printer
                .error(&format!("emitter: reply for unknown request #{seq}")),
        })
    }
}
