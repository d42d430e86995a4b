//! Command-line helpers every binary shares: duration flags given in seconds
//! and line-at-a-time output to stdout. Nothing here knows the protocol.

use std::io::{self, Write};
use std::time::Duration;

/// Writes one line to stdout and flushes it; an error means stdout is gone.
pub fn print_line(line: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Parses a duration given in seconds, fractions allowed ("0.5").
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("'{text}' is not a valid duration"))
}
