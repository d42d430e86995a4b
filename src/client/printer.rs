//! Where a client's output lines go: above the line being typed on a
//! terminal, so that they never garble it, or plainly to stdout and stderr.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

pub(super) type Screen = Arc<Mutex<Box<dyn rustyline::ExternalPrinter + Send>>>;

/// Where a client's output lines go: above the input line of the line
/// editor (never through it), or plainly to stdout and stderr. Cheap to
/// clone; every thread of a client prints through one.
#[derive(Clone)]
pub struct Printer {
    pub(super) screen: Option<Screen>,
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
    /// [`exit_process`](super::exit_process). On a terminal the line is written at once over the
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
        super::terminal::exit_process(code)
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

pub(super) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
