//! Where a client's output lines go: above the line being typed on a
//! terminal, so that they never garble it, or plainly to stdout and stderr.
//! On a terminal the line being typed (prompt, text, cursor) is drawn here
//! too, for the line editor: one lock orders every write to the screen.

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
                let area = screen.lock();
                let mut out = area.clear();
                out.push_str(text);
                out.push('\n');
                out.push_str(&area.draw());
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
                let area = screen.lock();
                let _ = write_out(&format!("{}{line}\n", area.clear()));
                super::terminal::exit_process(code)
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

/// The terminal's screen as the line editor and the printers share it.
pub(super) struct Screen {
    area: Mutex<InputArea>,
    /// The terminal's width, read at each drawing (it may be resized).
    columns: fn() -> usize,
}

/// The rows at the bottom of the screen where a line is being typed.
#[derive(Default)]
pub(super) struct InputArea {
    /// The line being typed, while the line editor reads one.
    editing: Option<Editing>,
    /// The width the area was last drawn for.
    columns: usize,
    /// Rows from the area's first row to the cursor's.
    cursor_row: usize,
    /// Rows the area takes (0: none drawn).
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

impl Screen {
    pub(super) fn new(columns: fn() -> usize) -> Screen {
        Screen {
            area: Mutex::new(InputArea::default()),
            columns,
        }
    }

    pub(super) fn lock(&self) -> ScreenLock<'_> {
        let mut area = self.area.lock().unwrap_or_else(|e| e.into_inner());
        area.columns = (self.columns)().max(1);
        ScreenLock { area }
    }
}

/// The screen, held: nothing else is written to it meanwhile.
pub(super) struct ScreenLock<'a> {
    area: MutexGuard<'a, InputArea>,
}

impl ScreenLock<'_> {
    /// The bytes that erase the input area and leave the cursor at its
    /// start (the start of the current row when nothing is drawn).
    fn clear(&self) -> String {
        let area = &self.area;
        let mut out = String::from("\r");
        if area.cursor_row > 0 {
            out.push_str(&format!("\x1b[{}A", area.cursor_row));
        }
        // One row: clear it; more: everything from the first one down.
        out.push_str(if area.rows > 1 { "\x1b[J" } else { "\x1b[2K" });
        out
    }

    /// The bytes that draw the line being typed from the cursor's place
    /// (the start of an empty row) and put the cursor where it is editing;
    /// nothing when no line is being typed. Notes the rows drawn.
    fn draw(&self) -> String {
        let mut out = String::new();
        let Some(editing) = &self.area.editing else {
            return out;
        };
        let columns = self.area.columns;
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
        out
    }

    /// Notes where `draw` left the cursor.
    fn drawn(&mut self) {
        let columns = self.area.columns;
        let (rows, cursor_row) = match &self.area.editing {
            Some(e) => (e.width / columns + 1, e.cursor / columns),
            None => (0, 0),
        };
        self.area.rows = rows;
        self.area.cursor_row = cursor_row;
    }

    /// Shows `prompt` and `text` with the cursor `cursor` characters into
    /// the text, in place of what the input area held.
    pub(super) fn show(&mut self, prompt: &str, text: &[char], cursor: usize) -> io::Result<()> {
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
        let mut out = self.clear();
        self.area.editing = Some(Editing {
            shown,
            width,
            cursor: cursor_width,
        });
        out.push_str(&self.draw());
        self.drawn();
        write_out(&out)
    }

    /// Clears the whole screen, then draws the input area at its top.
    pub(super) fn clear_screen(&mut self) -> io::Result<()> {
        let out = format!("\x1b[H\x1b[2J{}", self.draw());
        self.drawn();
        write_out(&out)
    }

    /// Ends the line being typed (shown with the cursor at its end): it
    /// stays on the screen above a new row, or with `erase`, is erased.
    pub(super) fn enter(&mut self, erase: bool) -> io::Result<()> {
        let mut out = self.clear();
        let Some(editing) = &mut self.area.editing else {
            return Ok(());
        };
        editing.cursor = editing.width;
        let rows = editing.width / self.area.columns + 1;
        out.push_str(&self.draw());
        out.push('\n');
        if erase {
            for _ in 0..rows {
                out.push_str("\x1b[1A\x1b[2K");
            }
            out.push('\r');
        }
        self.area.editing = None;
        self.drawn();
        write_out(&out)
    }

    /// Erases the line being typed: no line is typed any more.
    pub(super) fn close(&mut self) -> io::Result<()> {
        let out = self.clear();
        self.area.editing = None;
        self.drawn();
        write_out(&out)
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
