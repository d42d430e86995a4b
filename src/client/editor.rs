//! The line editor: keys typed into a terminal in raw mode become lines,
//! with the editing keys of a shell (arrows, Home, End, Ctrl-W, Ctrl-U,
//! Ctrl-K) and the up arrow through this session's lines. The terminal stays
//! in raw mode from the start to the end of input, and what is read past
//! one Enter is kept for the next line: every key typed is taken, in order,
//! however fast it comes.

use super::keys::{Key, first_key};
use super::printer::Screen;
use super::terminal::{enter_raw_mode, read_typed, restore_terminal, typed_within};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Lines the up arrow can bring back.
const HISTORY_LINES: usize = 1000;

/// How long an ESC alone waits for the rest of a sequence: the bytes of
/// one key arrive together, a person's next key far later.
const ESCAPE_WAIT: Duration = Duration::from_millis(50);

/// What the editor gives back.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Edited {
    Line(String),
    /// Ctrl-D on an empty line, or the terminal gone.
    End,
    /// Ctrl-C.
    Interrupted,
}

/// Whether an entered line stays on the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entered {
    /// It stays, as in a shell.
    Kept,
    /// It is erased at once: the client shows it again in its own form.
    Erased,
}

pub(super) struct Editor {
    screen: Arc<Screen>,
    entered: Entered,
    /// Bytes read from the terminal and not yet taken as keys.
    typed: Vec<u8>,
    /// Inside a bracketed paste.
    pasting: bool,
    /// Lines entered, oldest first (blank ones and repeats left out).
    history: Vec<String>,
    /// Input has ended; the terminal is back in its own mode.
    ended: bool,
}

/// The line being edited.
#[derive(Default)]
struct Line {
    text: Vec<char>,
    /// Characters before the cursor.
    cursor: usize,
    /// The history entry shown, counted from the oldest.
    recalled: Option<usize>,
    /// What was typed before the history was browsed.
    draft: Vec<char>,
}

impl Editor {
    /// An editor on the terminal at stdin, which it puts in raw mode; None
    /// when it cannot.
    pub(super) fn start(screen: Arc<Screen>, entered: Entered) -> Option<Editor> {
        if !enter_raw_mode() {
            return None;
        }
        Some(Editor {
            screen,
            entered,
            typed: Vec::new(),
            pasting: false,
            history: Vec::new(),
            ended: false,
        })
    }

    /// Reads one line after showing `prompt`.
    pub(super) fn read_line(&mut self, prompt: &str) -> io::Result<Edited> {
        if self.ended {
            return Ok(Edited::End);
        }
        let mut line = Line::default();
        self.screen.lock().show(prompt, &line.text, line.cursor)?;
        // Whether the screen shows `line` as it is.
        let mut drawn = true;
        loop {
            let Some(key) = self.take_key() else {
                // Every key read is applied before the line is drawn again.
                if !drawn {
                    self.screen.lock().show(prompt, &line.text, line.cursor)?;
                    drawn = true;
                }
                if self.read_more()? {
                    continue;
                }
                return self.end(Edited::End);
            };
            drawn = false;
            match key {
                Key::Enter => {
                    let text: String = line.text.iter().collect();
                    self.remember(&text);
                    let erase = self.entered == Entered::Erased;
                    self.screen.lock().enter(prompt, &line.text, erase)?;
                    return Ok(Edited::Line(text));
                }
                Key::EndOfInput if line.text.is_empty() => return self.end(Edited::End),
                Key::Interrupt => return self.end(Edited::Interrupted),
                Key::ClearScreen => self.screen.lock().clear_screen()?,
                Key::Suspend => suspend(&self.screen)?,
                key => line.edit(key, &self.history),
            }
        }
    }

    /// Input is over: the line being typed is erased and the terminal given
    /// back, so that Ctrl-C is a signal again while the client winds down.
    fn end(&mut self, how: Edited) -> io::Result<Edited> {
        self.ended = true;
        let closed = self.screen.lock().close();
        restore_terminal();
        closed.map(|()| how)
    }

    /// The next key in the bytes already read, if they hold a whole one.
    fn take_key(&mut self) -> Option<Key> {
        loop {
            let Some((key, used)) = first_key(&self.typed, self.pasting) else {
                // The Escape key alone, or a sequence still arriving?
                if self.typed == [0x1b] && !typed_within(ESCAPE_WAIT) {
                    self.typed.clear();
                }
                return None;
            };
            self.typed.drain(..used);
            match key {
                Key::PasteStart => self.pasting = true,
                Key::PasteEnd => self.pasting = false,
                key => return Some(key),
            }
        }
    }

    /// Waits for more typed bytes; false when the terminal is gone.
    fn read_more(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = read_typed(&mut chunk)?;
        self.typed.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    fn remember(&mut self, text: &str) {
        if text.trim().is_empty() || self.history.last().is_some_and(|last| last == text) {
            return;
        }
        if self.history.len() == HISTORY_LINES {
            self.history.remove(0);
        }
        self.history.push(text.to_string());
    }
}

impl Line {
    /// Applies an editing key.
    fn edit(&mut self, key: Key, history: &[String]) {
        match key {
            Key::Char(c) => {
                self.text.insert(self.cursor, c);
                self.cursor += 1;
            }
            Key::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.text.remove(self.cursor);
            }
            Key::Delete | Key::EndOfInput if self.cursor < self.text.len() => {
                self.text.remove(self.cursor);
            }
            Key::Left => self.cursor = self.cursor.saturating_sub(1),
            Key::Right => self.cursor = (self.cursor + 1).min(self.text.len()),
            Key::WordLeft => self.cursor = self.word_start(),
            Key::WordRight => {
                let after = &self.text[self.cursor..];
                let spaces = after.iter().take_while(|c| c.is_whitespace()).count();
                let word = after[spaces..]
                    .iter()
                    .take_while(|c| !c.is_whitespace())
                    .count();
                self.cursor += spaces + word;
            }
            Key::Home => self.cursor = 0,
            Key::End => self.cursor = self.text.len(),
            Key::DeleteWordBack => {
                let start = self.word_start();
                self.text.drain(start..self.cursor);
                self.cursor = start;
            }
            Key::KillToStart => {
                self.text.drain(..self.cursor);
                self.cursor = 0;
            }
            Key::KillToEnd => self.text.truncate(self.cursor),
            Key::Up => self.recall_older(history),
            Key::Down => self.recall_newer(history),
            _ => {}
        }
    }

    /// Where the word before the cursor starts (spaces after it included).
    fn word_start(&self) -> usize {
        let before = &self.text[..self.cursor];
        let spaces = before
            .iter()
            .rev()
            .take_while(|c| c.is_whitespace())
            .count();
        let word = before[..before.len() - spaces]
            .iter()
            .rev()
            .take_while(|c| !c.is_whitespace())
            .count();
        self.cursor - spaces - word
    }

    fn recall_older(&mut self, history: &[String]) {
        let index = match self.recalled {
            None if history.is_empty() => return,
            None => {
                self.draft = std::mem::take(&mut self.text);
                history.len() - 1
            }
            Some(0) => return,
            Some(i) => i - 1,
        };
        self.show_recalled(index, history);
    }

    fn recall_newer(&mut self, history: &[String]) {
        match self.recalled {
            None => {}
            Some(i) if i + 1 < history.len() => self.show_recalled(i + 1, history),
            Some(_) => {
                self.recalled = None;
                self.text = std::mem::take(&mut self.draft);
                self.cursor = self.text.len();
            }
        }
    }

    fn show_recalled(&mut self, index: usize, history: &[String]) {
        self.recalled = Some(index);
        self.text = history[index].chars().collect();
        self.cursor = self.text.len();
    }
}

/// Stops the program as Ctrl-Z does with the terminal in its own mode:
/// the line being typed is erased and the terminal given back; once
/// continued, raw mode is on again (and the line drawn again after).
fn suspend(screen: &Screen) -> io::Result<()> {
    screen.lock().close()?;
    restore_terminal();
    // SAFETY: raise has no preconditions; SIGTSTP stops the process here.
    unsafe {
        libc::raise(libc::SIGTSTP);
    }
    enter_raw_mode();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(keys: &[Key], history: &[String]) -> (String, usize) {
        let mut line = Line::default();
        for &key in keys {
            line.edit(key, history);
        }
        (line.text.iter().collect(), line.cursor)
    }

    fn chars(text: &str) -> Vec<Key> {
        text.chars().map(Key::Char).collect()
    }

    #[test]
    fn corrections_land_where_the_cursor_is() {
        let mut keys = chars("hello wrld");
        keys.extend([Key::Left, Key::Left, Key::Left, Key::Char('o'), Key::End]);
        keys.extend(chars("!!"));
        keys.push(Key::Backspace);
        assert_eq!(typed(&keys, &[]), ("hello world!".into(), 12));
        let mut keys = chars("abc");
        keys.extend([Key::Home, Key::Delete, Key::Right, Key::EndOfInput]);
        assert_eq!(typed(&keys, &[]), ("b".into(), 1));
    }

    #[test]
    fn ctrl_w_removes_the_word_before_the_cursor_and_the_spaces_after_it() {
        let mut keys = chars("one two  ");
        keys.push(Key::DeleteWordBack);
        assert_eq!(typed(&keys, &[]), ("one ".into(), 4));
        keys.push(Key::DeleteWordBack);
        assert_eq!(typed(&keys, &[]), ("".into(), 0));
        // Nothing before the cursor: nothing removed.
        assert_eq!(
            typed(&[Key::Char('x'), Key::Home, Key::DeleteWordBack], &[]),
            ("x".into(), 0)
        );
    }

    #[test]
    fn word_moves_stop_at_the_starts_and_ends_of_words() {
        let mut keys = chars("one  two three");
        keys.push(Key::WordLeft);
        assert_eq!(typed(&keys, &[]), ("one  two three".into(), 9));
        for want in [5, 0, 0] {
            keys.push(Key::WordLeft);
            assert_eq!(typed(&keys, &[]).1, want);
        }
        for want in [3, 8, 14, 14] {
            keys.push(Key::WordRight);
            assert_eq!(typed(&keys, &[]).1, want);
        }
    }

    #[test]
    fn kills_cut_before_or_after_the_cursor() {
        let mut keys = chars("abcd");
        keys.extend([Key::Left, Key::Left, Key::KillToEnd]);
        assert_eq!(typed(&keys, &[]), ("ab".into(), 2));
        keys.extend([Key::Left, Key::KillToStart]);
        assert_eq!(typed(&keys, &[]), ("b".into(), 0));
    }

    #[test]
    fn the_arrows_walk_the_history_and_come_back_to_the_draft() {
        let history = ["first".to_string(), "second".to_string()];
        let mut keys = chars("dra");
        keys.push(Key::Up);
        assert_eq!(typed(&keys, &history), ("second".into(), 6));
        keys.extend([Key::Up, Key::Up]);
        assert_eq!(typed(&keys, &history), ("first".into(), 5));
        keys.push(Key::Down);
        assert_eq!(typed(&keys, &history), ("second".into(), 6));
        keys.push(Key::Down);
        assert_eq!(typed(&keys, &history), ("dra".into(), 3));
        assert_eq!(typed(&[Key::Up], &[]), ("".into(), 0));
    }
}
