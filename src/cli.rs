//! Command-line helpers every binary shares: duration flags given in seconds,
//! line-at-a-time output to stdout and JSON strings for `--json` output.
//! Nothing here knows the protocol.

use std::fmt::Write as _;
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

/// Appends `text` to `out` as a JSON string literal: quotes, backslashes and
/// control characters escaped, everything else as it is.
pub fn json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::{json_string, parse_secs};
    use std::time::Duration;

    #[test]
    fn json_strings_escape_what_json_requires() {
        let mut out = String::new();
        json_string(&mut out, "a\"b\\c\nd\u{1}é\u{7f}");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é\u{7f}\"");
    }

    /// Regression (mutation testing: escaping the space too passed).
    #[test]
    fn json_strings_escape_every_control_character_and_nothing_from_the_space_up() {
        let mut out = String::new();
        json_string(&mut out, "\u{0}\u{1f} !~");
        assert_eq!(out, "\"\\u0000\\u001f !~\"");
    }

    #[test]
    fn durations_are_seconds_with_fractions_and_bad_ones_are_named() {
        assert_eq!(parse_secs("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("2"), Ok(Duration::from_secs(2)));
        assert_eq!(
            parse_secs("soon"),
            Err("'soon' is not a number of seconds".into())
        );
        assert_eq!(parse_secs("-1"), Err("'-1' is not a valid duration".into()));
    }
}
