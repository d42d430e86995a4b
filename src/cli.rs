//! Command-line helpers every binary shares: duration flags given in seconds,
//! line-at-a-time output to stdout, the `NO_COLOR` convention, received text
//! escaped for a terminal and JSON strings for `--json` output. Nothing here
//! knows the protocol.

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

/// The NO_COLOR convention (no-color.org): set and not empty means no colour.
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Renders received text for a terminal: printable characters as they are,
/// backslash doubled, control characters, bidirectional and invisible
/// formatting characters and invalid UTF-8 as escapes, so no sender can move
/// the cursor, clear the screen, forge an extra line or reorder what is shown.
pub fn escape_text(bytes: &[u8]) -> String {
    let mut shown = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => shown.push_str("\\\\"),
                '\n' => shown.push_str("\\n"),
                '\r' => shown.push_str("\\r"),
                '\t' => shown.push_str("\\t"),
                c if c.is_control() || is_bidi_or_invisible(c) => {
                    let code = c as u32;
                    if code <= 0xff {
                        let _ = write!(shown, "\\x{code:02x}");
                    } else {
                        let _ = write!(shown, "\\u{{{code:x}}}");
                    }
                }
                c => shown.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(shown, "\\x{b:02x}");
        }
    }
    shown
}

/// The formatting characters that change how the rest of a line is drawn
/// (left-to-right/right-to-left marks, embeddings, overrides, isolates).
fn is_bidi_or_invisible(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
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
    use super::{escape_text, json_string, parse_secs};
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

    #[test]
    fn escape_keeps_text_and_neutralises_controls() {
        assert_eq!(
            escape_text("Oi, tudo bem? ção".as_bytes()),
            "Oi, tudo bem? ção"
        );
        assert_eq!(escape_text(b"a\x1b[2Jb\nc\\"), "a\\x1b[2Jb\\nc\\\\");
        assert_eq!(escape_text(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(escape_text("\u{85}".as_bytes()), "\\x85");
    }

    #[test]
    fn escape_neutralises_bidi_and_invisible_formatting() {
        let all = concat!(
            "\u{200e}\u{200f}\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}",
            "\u{2066}\u{2067}\u{2068}\u{2069}"
        );
        assert_eq!(
            escape_text(all.as_bytes()),
            concat!(
                "\\u{200e}\\u{200f}\\u{202a}\\u{202b}\\u{202c}\\u{202d}\\u{202e}",
                "\\u{2066}\\u{2067}\\u{2068}\\u{2069}"
            )
        );
        // Neighbours of those ranges are ordinary text.
        assert_eq!(
            escape_text("\u{200d}\u{2070}".as_bytes()),
            "\u{200d}\u{2070}"
        );
    }
}
