//! For unit tests: a `tracing` writer that keeps what is logged, so that a
//! test can read the lines a component wrote.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Log output kept in memory; clones share it.
#[derive(Clone, Default)]
pub struct LogWriter(pub Arc<Mutex<Vec<u8>>>);

impl LogWriter {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs `f` on this thread with its log (INFO and up, no time, no colour)
/// going to the returned writer.
pub fn capture<R>(f: impl FnOnce() -> R) -> (R, LogWriter) {
    let log = LogWriter::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    (result, log)
}
