//! Where input lines come from: a line editor on a terminal, bounded plain
//! reads otherwise, with every line held to the longest a message can use.

use super::printer::{Printer, Screen, lock};
use super::terminal::{SAVED_TERMINAL, terminal_columns};
use crate::proto::MAX_TEXT_LEN;
use std::collections::VecDeque;
use std::io::{self, BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex};
use unicode_width::UnicodeWidthStr;

/// The longest input line kept: a message's text plus the longest `(ID) `
/// prefix. A longer line is counted and reported, never stored whole.
pub(crate) const MAX_LINE_LEN: usize = MAX_TEXT_LEN + "(65535) ".len();

/// One line of input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLine {
    /// A line, without its ending (LF or CR LF).
    Line(Vec<u8>),
    /// A line over the limit, with its length in bytes; it was discarded.
    TooLong(usize),
    /// End of input: the end of a pipe, or Ctrl-D in the line editor.
    End,
    /// Ctrl-C in the line editor.
    Interrupted,
}

/// Reads one line, keeping at most `limit` bytes of it: a longer line is
/// consumed to its end and reported with its length, so memory stays
/// bounded whatever arrives on stdin.
pub fn read_bounded_line(input: &mut impl BufRead, limit: usize) -> io::Result<InputLine> {
    let mut line = Vec::new();
    // Bytes consumed, line ending included.
    let mut consumed = 0usize;
    let mut last = 0u8;
    let mut ending = None;
    loop {
        let chunk = match input.fill_buf() {
            Ok(chunk) => chunk,
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            },
        };
        if chunk.is_empty() {
            break;
        }
        let newline = chunk.iter().position(|&b| b == b'\n');
        let take = newline.map_or(chunk.len(), |i| i + 1);
        if let Some(i) = newline {
            let before = if i > 0 { chunk[i - 1] } else { last };
            ending = Some(if before == b'\r' { 2 } else { 1 });
        }
        // Room for the limit plus the line ending.
        let room = (limit + 2).saturating_sub(line.len());
        line.extend_from_slice(&chunk[..take.min(room)]);
        last = chunk[take - 1];
        consumed += take;
        input.consume(take);
        if newline.is_some() {
            break;
        }
    }
    if consumed == 0 {
        return Ok(InputLine::End);
    }
    let len = consumed - ending.unwrap_or(0);
    if len > limit {
        return Ok(InputLine::TooLong(len));
    }
    line.truncate(len);
    Ok(InputLine::Line(line))
}

/// Where input lines come from: a line editor (editing, in-memory history)
/// when stdin and stdout are terminals, bounded plain reads otherwise.
pub struct LineInput {
    source: Source,
    printer: Printer,
    /// The further lines of a multi-line paste, each taken as if typed.
    queued: VecDeque<Vec<u8>>,
    /// Terminal rows the last entry from the editor occupies (0: none, or erased).
    rows_on_screen: usize,
}

enum Source {
    Plain(io::StdinLock<'static>),
    Editor(Box<rustyline::DefaultEditor>),
}

/// Input lines the line editor remembers for the up arrow.
const HISTORY_LINES: usize = 1000;

impl LineInput {
    /// The line editor on a terminal, plain reading otherwise.
    pub fn stdin() -> LineInput {
        let terminal = io::stdin().is_terminal() && io::stdout().is_terminal();
        if terminal && let Some(input) = LineInput::editor() {
            return input;
        }
        LineInput {
            source: Source::Plain(io::stdin().lock()),
            printer: Printer::plain(),
            queued: VecDeque::new(),
            rows_on_screen: 0,
        }
    }

    fn editor() -> Option<LineInput> {
        let mut saved = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the struct on success, checked below.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, saved.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: initialised by the successful tcgetattr above.
        let _ = SAVED_TERMINAL.set(unsafe { saved.assume_init() });
        let config = rustyline::Config::builder()
            .max_history_size(HISTORY_LINES)
            .ok()?
            .auto_add_history(false)
            .build();
        let mut editor = rustyline::DefaultEditor::with_config(config).ok()?;
        let printer = editor.create_external_printer().ok()?;
        let screen: Screen = Arc::new(Mutex::new(Box::new(printer)));
        Some(LineInput {
            source: Source::Editor(Box::new(editor)),
            printer: Printer {
                screen: Some(screen),
            },
            queued: VecDeque::new(),
            rows_on_screen: 0,
        })
    }

    /// The printer that keeps output off the line being typed.
    pub fn printer(&self) -> Printer {
        self.printer.clone()
    }

    /// Whether input comes from the line editor.
    pub fn is_terminal(&self) -> bool {
        matches!(self.source, Source::Editor(_))
    }

    /// The next line, at most 65543 bytes kept (the longest message line); `prompt` is shown
    /// by the line editor only. A paste of several lines gives them one by
    /// one, as a pipe would.
    pub fn read(&mut self, prompt: &str) -> io::Result<InputLine> {
        if let Some(line) = self.queued.pop_front() {
            return Ok(bounded(line));
        }
        let editor = match &mut self.source {
            Source::Plain(stdin) => return read_bounded_line(stdin, MAX_LINE_LEN),
            Source::Editor(editor) => editor,
        };
        match editor.readline(prompt) {
            Ok(entry) => {
                if !entry.trim().is_empty() {
                    let _ = editor.add_history_entry(entry.as_str());
                }
                self.rows_on_screen = rows_taken(prompt, &entry, terminal_columns());
                self.queued = entry
                    .split('\n')
                    .map(|line| line.strip_suffix('\r').unwrap_or(line).as_bytes().to_vec())
                    .collect();
                let first = self.queued.pop_front().unwrap_or_default();
                Ok(bounded(first))
            }
            Err(rustyline::error::ReadlineError::Interrupted) => Ok(InputLine::Interrupted),
            Err(rustyline::error::ReadlineError::Eof) => Ok(InputLine::End),
            Err(rustyline::error::ReadlineError::Io(e)) => Err(e),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Removes the last entry (prompt and text) from the screen, for a
    /// client that shows each line again in its own form once answered.
    pub fn erase_entered(&mut self) {
        let Some(screen) = &self.printer.screen else {
            return;
        };
        if self.rows_on_screen == 0 {
            return;
        }
        // Held so that no output line lands between the moves.
        let _quiet = lock(screen);
        let mut out = io::stdout().lock();
        for _ in 0..self.rows_on_screen {
            let _ = out.write_all(b"\x1b[1A\x1b[2K");
        }
        let _ = out.write_all(b"\r");
        let _ = out.flush();
        self.rows_on_screen = 0;
    }
}

fn bounded(line: Vec<u8>) -> InputLine {
    if line.len() > MAX_LINE_LEN {
        InputLine::TooLong(line.len())
    } else {
        InputLine::Line(line)
    }
}

/// The terminal rows a prompt and an entry take on a screen `columns` wide:
/// each line of the entry wraps on its own, the first after the prompt.
fn rows_taken(prompt: &str, entry: &str, columns: usize) -> usize {
    let columns = columns.max(1);
    entry
        .split('\n')
        .enumerate()
        .map(|(i, line)| {
            let lead = if i == 0 { prompt.width() } else { 0 };
            (lead + line.width()).div_ceil(columns).max(1)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(input: &[u8], limit: usize) -> Vec<InputLine> {
        let mut reader = io::BufReader::with_capacity(4, input);
        let mut lines = Vec::new();
        loop {
            match read_bounded_line(&mut reader, limit).unwrap() {
                InputLine::End => return lines,
                line => lines.push(line),
            }
        }
    }

    #[test]
    fn bounded_lines_strip_endings_and_report_long_lines_with_their_size() {
        let line = |s: &str| InputLine::Line(s.as_bytes().to_vec());
        assert_eq!(
            read_all(b"ab\r\n\ncdef\nghijklmnop\r\nlast", 8),
            vec![
                line("ab"),
                line(""),
                line("cdef"),
                InputLine::TooLong(10),
                line("last")
            ]
        );
        // Exactly at the limit is kept; one over is not, with or without CR.
        assert_eq!(
            read_all(b"12345678\r\n123456789\r\n123456789", 8),
            vec![
                line("12345678"),
                InputLine::TooLong(9),
                InputLine::TooLong(9)
            ]
        );
        // A CR alone in the middle of a chunk boundary is text.
        assert_eq!(read_all(b"a\rb\n", 8), vec![line("a\rb")]);
    }

    #[test]
    fn rows_taken_counts_wrapping_wide_characters_and_pasted_lines() {
        assert_eq!(rows_taken("all> ", "", 80), 1);
        assert_eq!(rows_taken("all> ", &"x".repeat(75), 80), 1);
        assert_eq!(rows_taken("all> ", &"x".repeat(76), 80), 2);
        // Two columns per character.
        assert_eq!(rows_taken("all> ", &"語".repeat(38), 80), 2);
        assert_eq!(rows_taken("all> ", "one\ntwo\n", 80), 3);
    }
}
