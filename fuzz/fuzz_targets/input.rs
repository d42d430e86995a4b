//! Fuzz target for what people and pipes type into the clients, and for
//! what the clients show of received text.
//!
//! Input: the first byte picks the line limit (1 to 64, so that long lines
//! are common), the second the size of the reader's buffer (1 to 64, so that
//! lines and their CR LF endings straddle reads); the rest is stdin.
//!
//! * `read_bounded_line` must give exactly what an independent split of the
//!   bytes at LF gives: each line without its LF and the one CR before it,
//!   `TooLong(len)` for one over the limit, a last line without LF as it is,
//!   then `End`; it never keeps more than the limit.
//! * Every line through the emitter's `parse_command` and `evchat chat`'s
//!   `parse_chat_line`: no panic, and a message never exceeds 65535 bytes.
//! * `escape_text` of every line: no control, bidirectional or invisible
//!   formatting character survives, and text without `\` or any of those
//!   is shown unchanged.
#![no_main]

use evchat::cli::escape_text;
use evchat::client::{Command, InputLine, parse_command};
use evchat::proto::MAX_TEXT_LEN;
use evchat::testing::read_bounded_line;
use libfuzzer_sys::fuzz_target;
use std::io::BufReader;

#[path = "../../src/bin/evchat/chat/input.rs"]
#[allow(dead_code)]
mod chat_input;

fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// What `read_bounded_line` must return for `stdin`, read independently.
fn expected_lines(stdin: &[u8], limit: usize) -> Vec<InputLine> {
    let mut pieces: Vec<&[u8]> = stdin.split(|&b| b == b'\n').collect();
    let last = pieces.pop().unwrap_or(&[]);
    let mut lines: Vec<InputLine> = pieces
        .into_iter()
        .map(|piece| piece.strip_suffix(b"\r").unwrap_or(piece))
        .map(|line| judge(line, limit))
        .collect();
    if !last.is_empty() {
        lines.push(judge(last, limit));
    }
    lines
}

fn judge(line: &[u8], limit: usize) -> InputLine {
    if line.len() > limit {
        InputLine::TooLong(line.len())
    } else {
        InputLine::Line(line.to_vec())
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, capacity, stdin @ ..] = data else {
        return;
    };
    let limit = usize::from(limit % 64) + 1;
    let capacity = usize::from(capacity % 64) + 1;

    let mut reader = BufReader::with_capacity(capacity, stdin);
    let mut got = Vec::new();
    loop {
        match read_bounded_line(&mut reader, limit).expect("reading a slice cannot fail") {
            InputLine::End => break,
            line => got.push(line),
        }
    }
    assert_eq!(got, expected_lines(stdin, limit));

    for line in got {
        let InputLine::Line(line) = line else {
            continue;
        };
        assert!(line.len() <= limit);
        if let Ok(Command::Message { text, .. }) = parse_command(&line) {
            assert!(text.len() <= MAX_TEXT_LEN);
        }
        if let Ok(chat_input::ChatLine::Send { text, .. }) = chat_input::parse_chat_line(&line) {
            assert!(text.len() <= MAX_TEXT_LEN);
        }
        let shown = escape_text(&line);
        assert!(!shown.chars().any(is_hidden), "{shown:?}");
        if let Ok(text) = std::str::from_utf8(&line)
            && !text.chars().any(|c| c == '\\' || is_hidden(c))
        {
            assert_eq!(shown, text);
        }
    }
});
