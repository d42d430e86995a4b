//! Where a client's output lines go: above the line being typed on a
//! terminal, so that they never garble it, or plainly to stdout and stderr.
//! On a terminal the line being typed (prompt, text, cursor) is drawn here
//! too, for the line editor: one lock orders every write to the screen.

use super::terminal::terminal_columns;
use std::io::{self, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use unicode_width::UnicodeWidthChar;

/// Where a client's output lines go: above the input line of the line
/// editor (never through it), or plainly to stdout and stderr. Cheap to
/// clone; every thread of a client prints through one.
#[derive(Clone)]
pub struct Printer {
    screen: Option<Arc<Screen>>,
}

impl Printer {
    /// Plain output: lines to stdout, errors to stderr.
    pub(crate) fn plain() -> Printer {
        Printer { screen: None }
    }

    /// Output above the line editor's input line, on `screen`.
    pub(super) fn above(screen: Arc<Screen>) -> Printer {
        Printer {
            screen: Some(screen),
        }
    }

    /// Prints one output line; an error means nobody can see it any more.
    pub fn line(&self, text: &str) -> io::Result<()> {
        match &self.screen {
            None => crate::cli::print_line(text),
            Some(screen) => {
                let mut screen = screen.lock();
                let mut out = screen.area.clear();
                out.push_str(text);
                out.push('\n');
                out.push_str(&screen.area.draw());
                write_out(&out)
            }
        }
    }

    /// Prints a last line (to stderr if `error`) and exits through
    /// [`exit_process`](super::exit_process). On a terminal the line takes
    /// the place of the input line: the line editor will not draw it again.
    pub fn exit_with(&self, line: &str, error: bool, code: i32) -> ! {
        match &self.screen {
            None if error => eprintln!("{line}"),
            None => {
                let _ = crate::cli::print_line(line);
            }
            Some(screen) => {
                // Held until the exit, so that no other output lands after it.
                let screen = screen.lock();
                let _ = write_out(&format!("{}{line}\n", screen.area.clear()));
                super::terminal::exit_process(code)
            }
        }
        super::terminal::exit_process(code)
    }

    /// Whether lines print above a line editor's input line (a terminal),
    /// rather than plainly.
    pub fn has_screen(&self) -> bool {
        self.screen.is_some()
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

/// The terminal's screen as the line editor and the printers share it.
pub(super) struct Screen {
    area: Mutex<InputArea>,
}

impl Screen {
    pub(super) fn new() -> Screen {
        Screen {
            area: Mutex::new(InputArea::default()),
        }
    }

    pub(super) fn lock(&self) -> ScreenLock<'_> {
        let mut area = self.area.lock().unwrap_or_else(|e| e.into_inner());
        // Read at each drawing: the terminal may have been resized.
        area.columns = terminal_columns().max(1);
        ScreenLock { area }
    }
}

/// The screen, held: nothing else is written to it meanwhile.
pub(super) struct ScreenLock<'a> {
    area: MutexGuard<'a, InputArea>,
}

impl ScreenLock<'_> {
    /// Shows `prompt` and `text` with the cursor `cursor` characters into
    /// the text, in place of what the input area held.
    pub(super) fn show(&mut self, prompt: &str, text: &[char], cursor: usize) -> io::Result<()> {
        let mut out = self.area.clear();
        self.area.edit(prompt, text, cursor);
        out.push_str(&self.area.draw());
        write_out(&out)
    }

    /// Clears the whole screen; the input area is drawn again at its top
    /// by the next [`show`](Self::show).
    pub(super) fn clear_screen(&mut self) -> io::Result<()> {
        (self.area.rows, self.area.cursor_row) = (0, 0);
        write_out("\x1b[H\x1b[2J")
    }

    /// Ends the line being typed, `prompt` and `text`: it stays on the
    /// screen above a new row, or with `erase`, is erased.
    pub(super) fn enter(&mut self, prompt: &str, text: &[char], erase: bool) -> io::Result<()> {
        let out = self.area.enter(prompt, text, erase);
        write_out(&out)
    }

    /// Erases the line being typed: no line is typed any more.
    pub(super) fn close(&mut self) -> io::Result<()> {
        let out = self.area.clear();
        self.area.editing = None;
        self.area.draw();
        write_out(&out)
    }
}

/// The rows at the bottom of the screen where a line is being typed.
#[derive(Default)]
struct InputArea {
    /// The line being typed, while the line editor reads one.
    editing: Option<Editing>,
    /// The terminal's width.
    columns: usize,
    /// Rows from the area's first row to the cursor's, as last drawn.
    cursor_row: usize,
    /// Rows the area takes, as last drawn (0: nothing drawn).
    rows: usize,
}

struct Editing {
    /// The prompt and the text, as drawn.
    shown: String,
    /// Their width in columns.
    width: usize,
    /// Columns from the start of the prompt to the cursor.
    cursor: usize,
}

impl InputArea {
    /// Takes `prompt`, `text` and a cursor `cursor` characters into the
    /// text as the line being typed (not drawn yet).
    fn edit(&mut self, prompt: &str, text: &[char], cursor: usize) {
        let mut shown = String::from(prompt);
        let mut width = width_of(prompt.chars());
        let mut cursor_width = width;
        for (i, &c) in text.iter().enumerate() {
            if i == cursor {
                cursor_width = width;
            }
            // A pasted tab or other control character is drawn as a space,
            // so that the columns counted are the columns used.
            let c = if c.is_control() { ' ' } else { c };
            shown.push(c);
            width += width_of([c]);
        }
        if cursor >= text.len() {
            cursor_width = width;
        }
        self.editing = Some(Editing {
            shown,
            width,
            cursor: cursor_width,
        });
    }

    /// The bytes that erase the area and leave the cursor at its start
    /// (the start of the current row when nothing is drawn).
    fn clear(&self) -> String {
        let mut out = String::from("\r");
        if self.cursor_row > 0 {
            out.push_str(&format!("\x1b[{}A", self.cursor_row));
        }
        // One row: clear it; more: everything from the first one down.
        out.push_str(if self.rows > 1 { "\x1b[J" } else { "\x1b[2K" });
        out
    }

    /// The bytes that draw the line being typed from the start of an empty
    /// row and put the cursor where it edits; notes the rows they take.
    fn draw(&mut self) -> String {
        let mut out = String::new();
        let Some(editing) = &self.editing else {
            (self.rows, self.cursor_row) = (0, 0);
            return out;
        };
        let columns = self.columns.max(1);
        out.push_str(&editing.shown);
        let end_row = editing.width / columns;
        if editing.width > 0 && editing.width % columns == 0 {
            // The cursor waits at the last column: move it to the next row
            // as the arithmetic below has it.
            out.push('\n');
        }
        let (cursor_row, cursor_col) = (editing.cursor / columns, editing.cursor % columns);
        if end_row > cursor_row {
            out.push_str(&format!("\x1b[{}A", end_row - cursor_row));
        }
        out.push('\r');
        if cursor_col > 0 {
            out.push_str(&format!("\x1b[{cursor_col}C"));
        }
        (self.rows, self.cursor_row) = (end_row + 1, cursor_row);
        out
    }

    /// The bytes that end the line being typed, `prompt` and `text`: drawn
    /// with the cursor at its end, then a new row; with `erase`, its rows
    /// erased again.
    fn enter(&mut self, prompt: &str, text: &[char], erase: bool) -> String {
        let mut out = self.clear();
        self.edit(prompt, text, text.len());
        out.push_str(&self.draw());
        out.push('\n');
        if erase {
            for _ in 0..self.rows {
                out.push_str("\x1b[1A\x1b[2K");
            }
            out.push('\r');
        }
        self.editing = None;
        self.draw();
        out
    }
}

fn width_of(chars: impl IntoIterator<Item = char>) -> usize {
    chars.into_iter().map(|c| c.width().unwrap_or(0)).sum()
}

fn write_out(bytes: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes.as_bytes())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(columns: usize) -> InputArea {
        InputArea {
            columns,
            ..InputArea::default()
        }
    }

    fn chars(text: &str) -> Vec<char> {
        text.chars().collect()
    }

    #[test]
    fn one_row_is_drawn_and_cleared_in_place() {
        let mut area = area(80);
        area.edit("all> ", &chars("hello"), 2);
        assert_eq!(area.draw(), "all> hello\r\x1b[7C");
        assert_eq!(area.clear(), "\r\x1b[2K");
        // Nothing drawn: the current row is cleared.
        assert_eq!(super::InputArea::default().clear(), "\r\x1b[2K");
    }

    #[test]
    fn a_wrapped_line_puts_the_cursor_on_its_row_and_clears_from_the_first() {
        let mut area = area(10);
        // 5 + 12 columns: two rows; the cursor after "0123" is on the first.
        area.edit("all> ", &chars("0123456789ab"), 4);
        assert_eq!(area.draw(), "all> 0123456789ab\x1b[1A\r\x1b[9C");
        assert_eq!((area.rows, area.cursor_row), (2, 0));
        assert_eq!(area.clear(), "\r\x1b[J");
        // At the end: the second row.
        area.edit("all> ", &chars("0123456789ab"), 12);
        assert_eq!(area.draw(), "all> 0123456789ab\r\x1b[7C");
        assert_eq!(area.clear(), "\r\x1b[1A\x1b[J");
    }

    #[test]
    fn a_line_that_fills_its_last_row_moves_the_cursor_to_the_next() {
        let mut area = area(10);
        area.edit("> ", &chars("12345678"), 8);
        assert_eq!(area.draw(), "> 12345678\n\r");
        assert_eq!((area.rows, area.cursor_row), (2, 1));
    }

    #[test]
    fn wide_characters_take_two_columns_and_controls_are_drawn_as_spaces() {
        let mut area = area(80);
        area.edit("> ", &chars("語\tx"), 1);
        assert_eq!(area.draw(), "> 語 x\r\x1b[4C");
    }

    #[test]
    fn an_entered_line_is_erased_row_by_row_when_asked() {
        let mut area = area(10);
        area.edit("all> ", &chars("0123456789ab"), 0);
        area.draw();
        assert_eq!(
            area.enter("all> ", &chars("0123456789ab"), true),
            "\r\x1b[J".to_string()
                + "all> 0123456789ab\r\x1b[7C\n"
                + "\x1b[1A\x1b[2K\x1b[1A\x1b[2K\r"
        );
        assert!(area.editing.is_none() && area.rows == 0);
        area.edit("all> ", &chars("h"), 0);
        area.draw();
        assert_eq!(
            area.enter("all> ", &chars("hi"), false),
            "\r\x1b[2Kall> hi\r\x1b[7C\n"
        );
    }
}
