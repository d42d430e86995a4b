//! `exhibitor <host:port>`: shows the messages and client lists the server
//! sends, acknowledging each one after it is shown.

use clap::Parser;
use evchat::cli::{escape_text, print_line};
use evchat::client::{FAREWELL_TIMEOUT, FrameWriter, register};
use evchat::proto::{BROADCAST, Body, ClientId, Frame, Kind, SERVER_ID};
use evchat::tls::client::{Endpoint, TlsArgs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "evchat exhibitor: shows the messages sent to it",
    long_about = "\
evchat exhibitor: shows the messages sent to it.

It reads no input. First it prints 'exhibitor ID' (the id emitters pair with), then
one line per frame:
  Message from ORIG: text           a message to it (or to its emitter)
  Message from ORIG to all: text    a broadcast
  Clients (N): ID ID ...            a client list
  closed by server                  its emitter left or the server shut down (exit 0)

Control, bidirectional and invisible formatting characters and invalid UTF-8 are shown
escaped (\\n, \\x1b, \\u{202e}, \\xff).",
    after_help = "Examples:\n  \
exhibitor 127.0.0.1:5000\n  \
exhibitor localhost:5000 | tee messages.log"
)]
struct Args {
    /// Server address as host:port (IPv6: [addr]:port); tls://host:port
    /// for TLS
    // The doc is the --help text, so its brackets stay unescaped.
    #[allow(rustdoc::broken_intra_doc_links)]
    server: String,
    #[command(flatten)]
    tls: TlsArgs,
}

/// No FLW sent yet.
const NO_FAREWELL: u32 = u32::MAX;

struct Exhibitor {
    id: ClientId,
    writer: FrameWriter,
    leaving: AtomicBool,
    /// Sequence number of our FLW, or `NO_FAREWELL`.
    farewell: AtomicU32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match Endpoint::parse(&args.server, &args.tls) {
        Ok(target) => target,
        Err(e) => {
            eprintln!("exhibitor: {e}");
            return ExitCode::from(if e.is_usage() { 2 } else { 1 });
        }
    };
    let registered = match register(&target, BROADCAST) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("exhibitor: {e}");
            return ExitCode::FAILURE;
        }
    };
    let exhibitor = Arc::new(Exhibitor {
        id: registered.id,
        writer: registered.writer,
        leaving: AtomicBool::new(false),
        farewell: AtomicU32::new(NO_FAREWELL),
    });
    {
        let exhibitor = exhibitor.clone();
        let handler = move || {
            exhibitor.send_farewell();
            // The main loop exits as soon as the OK arrives.
            std::thread::sleep(FAREWELL_TIMEOUT);
            std::process::exit(0);
        };
        if let Err(e) = ctrlc::set_handler(handler) {
            eprintln!("exhibitor: cannot install the signal handler: {e}");
        }
    }
    let mut reader = registered.reader;
    if print_line(&format!("exhibitor {}", exhibitor.id)).is_err() {
        exhibitor.send_farewell();
    }
    loop {
        if exhibitor.leaving.load(Ordering::SeqCst) {
            // Bound the wait for the OK to our FLW.
            let _ = reader.set_timeout(Some(FAREWELL_TIMEOUT));
        }
        let frame = match reader.read_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) if exhibitor.leaving.load(Ordering::SeqCst) => std::process::exit(0),
            Ok(None) => {
                eprintln!("exhibitor: the server went away (connection closed without FLW)");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("exhibitor: connection to the server failed: {e}");
                return ExitCode::FAILURE;
            }
        };
        exhibitor.handle(frame);
    }
}

impl Exhibitor {
    fn handle(&self, frame: Frame) {
        let shown = match (&frame.kind, &frame.body) {
            (Kind::Msg, Body::Text(text)) if frame.dest == BROADCAST => Some(format!(
                "Message from {} to all: {}",
                frame.origin,
                escape_text(text)
            )),
            (Kind::Msg, Body::Text(text)) => Some(format!(
                "Message from {}: {}",
                frame.origin,
                escape_text(text)
            )),
            (Kind::Clist, Body::Clients(ids)) => {
                let mut line = format!("Clients ({}):", ids.len());
                for id in ids {
                    line.push(' ');
                    line.push_str(&id.to_string());
                }
                Some(line)
            }
            (Kind::Flw, _) => {
                let _ = self
                    .writer
                    .send_ack(Kind::Ok, self.id, frame.origin, frame.seq);
                let _ = print_line("closed by server");
                std::process::exit(0);
            }
            (Kind::Ok | Kind::Erro, _)
                if u32::from(frame.seq) == self.farewell.load(Ordering::SeqCst) =>
            {
                std::process::exit(0);
            }
            _ => {
                eprintln!("exhibitor: ignoring unexpected {frame}");
                None
            }
        };
        let Some(line) = shown else {
            return;
        };
        if print_line(&line).is_err() {
            // Nobody reads our output any more: leave the system.
            self.send_farewell();
        }
        if let Err(e) = self
            .writer
            .send_ack(Kind::Ok, self.id, frame.origin, frame.seq)
        {
            eprintln!("exhibitor: acknowledging: {e}");
            std::process::exit(1);
        }
    }

    /// Sends FLW, once; the main loop exits 0 on its OK.
    fn send_farewell(&self) {
        if self.leaving.swap(true, Ordering::SeqCst) {
            return;
        }
        let id = self.id;
        let sent = self.writer.send_numbered(
            |seq| Frame::bare(Kind::Flw, id, SERVER_ID, seq),
            |seq| self.farewell.store(u32::from(seq), Ordering::SeqCst),
        );
        if sent.is_err() {
            std::process::exit(0);
        }
    }
}
