//! Where input lines come from: a line editor on a terminal, bounded plain
//! reads otherwise, with every line held to the longest a message can use.

use super::editor::{Edited, Editor, Entered};
use super::printer::{Printer, Screen};
use crate::proto::MAX_TEXT_LEN;
use std::io::{self, BufRead, IsTerminal};
use std::sync::Arc;

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

/// Where input lines come from: the line editor when stdin and stdout are
/// terminals, bounded plain reads otherwise.
pub struct LineInput {
    source: Source,
    printer: Printer,
}

enum Source {
    Plain(io::StdinLock<'static>),
    Editor(Editor),
}

impl LineInput {
    /// The line editor on a terminal (`entered` says whether an entered
    /// line stays on the screen), plain reading otherwise.
    pub fn stdin(entered: Entered) -> LineInput {
        let terminal = io::stdin().is_terminal() && io::stdout().is_terminal();
        let screen = Arc::new(Screen::new());
        if terminal && let Some(editor) = Editor::start(screen.clone(), entered) {
            return LineInput {
                source: Source::Editor(editor),
                printer: Printer::above(screen),
            };
        }
        LineInput {
            source: Source::Plain(io::stdin().lock()),
            printer: Printer::plain(),
        }
    }

    /// The printer that keeps output off the line being typed.
    pub fn printer(&self) -> Printer {
        self.printer.clone()
    }

    /// Whether input comes from the line editor.
    pub fn is_terminal(&self) -> bool {
        matches!(self.source, Source::Editor(_))
    }

    /// The next line, at most `MAX_LINE_LEN` bytes kept (the longest
    /// message line); `prompt` is shown by the line editor only.
    pub fn read(&mut self, prompt: &str) -> io::Result<InputLine> {
        let editor = match &mut self.source {
            Source::Plain(stdin) => return read_bounded_line(stdin, MAX_LINE_LEN),
            Source::Editor(editor) => editor,
        };
        Ok(match editor.read_line(prompt)? {
            Edited::Line(line) if line.len() > MAX_LINE_LEN => InputLine::TooLong(line.len()),
            Edited::Line(line) => InputLine::Line(line.into_bytes()),
            Edited::End => InputLine::End,
            Edited::Interrupted => InputLine::Interrupted,
        })
    }
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
}
