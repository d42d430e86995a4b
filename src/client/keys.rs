//! Keys from the bytes a terminal sends in raw mode: text, the control keys
//! the line editor knows, and the escape sequences of the arrows, Home, End,
//! Delete and bracketed paste. Pure decoding, no I/O.

/// One key, as the line editor acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    /// Text to insert.
    Char(char),
    /// CR, LF or CR LF: the line is entered.
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    /// Alt-B, Ctrl-Left or Alt-Left: to the start of the word before.
    WordLeft,
    /// Alt-F, Ctrl-Right or Alt-Right: past the end of the word after.
    WordRight,
    /// Up arrow or Ctrl-P: the history's previous entry.
    Up,
    /// Down arrow or Ctrl-N: the history's next entry.
    Down,
    /// Home or Ctrl-A.
    Home,
    /// End or Ctrl-E.
    End,
    /// Ctrl-W: the word before the cursor, and the spaces after it.
    DeleteWordBack,
    /// Ctrl-U: everything before the cursor.
    KillToStart,
    /// Ctrl-K: everything from the cursor on.
    KillToEnd,
    /// Ctrl-D: end of input on an empty line, Delete otherwise.
    EndOfInput,
    /// Ctrl-C.
    Interrupt,
    /// Ctrl-L.
    ClearScreen,
    /// Ctrl-Z: stop the program, as the terminal would.
    Suspend,
    /// The terminal starts a bracketed paste (`ESC [ 200 ~`).
    PasteStart,
    /// The terminal ends a bracketed paste (`ESC [ 201 ~`).
    PasteEnd,
    /// A key or sequence the editor has no use for; its bytes are consumed.
    Ignored,
}

const ESC: u8 = 0x1b;

/// The first key in `bytes` and how many bytes it took; `None` when the
/// bytes end inside a key (an escape sequence or a UTF-8 character) and
/// more must be read. Inside a bracketed paste (`pasting`) a tab is text.
pub(super) fn first_key(bytes: &[u8], pasting: bool) -> Option<(Key, usize)> {
    let &first = bytes.first()?;
    let key = match first {
        b'\r' if bytes.get(1) == Some(&b'\n') => return Some((Key::Enter, 2)),
        b'\r' | b'\n' => Key::Enter,
        b'\t' if pasting => Key::Char('\t'),
        0x01 => Key::Home,
        0x02 => Key::Left,
        0x03 => Key::Interrupt,
        0x04 => Key::EndOfInput,
        0x05 => Key::End,
        0x06 => Key::Right,
        0x08 | 0x7f => Key::Backspace,
        0x0b => Key::KillToEnd,
        0x0c => Key::ClearScreen,
        0x0e => Key::Down,
        0x10 => Key::Up,
        0x15 => Key::KillToStart,
        0x17 => Key::DeleteWordBack,
        0x1a => Key::Suspend,
        ESC => return escape_sequence(bytes),
        0x00..0x20 => Key::Ignored,
        0x20..0x7f => Key::Char(char::from(first)),
        _ => return utf8_char(bytes),
    };
    Some((key, 1))
}

/// A key that starts with ESC: CSI (`ESC [`) and SS3 (`ESC O`) sequences,
/// Alt-B and Alt-F; ESC before anything else (Alt and another key) is
/// ignored with that key.
fn escape_sequence(bytes: &[u8]) -> Option<(Key, usize)> {
    match bytes.get(1)? {
        b'[' => control_sequence(bytes),
        b'O' => {
            let key = match bytes.get(2)? {
                b'A' => Key::Up,
                b'B' => Key::Down,
                b'C' => Key::Right,
                b'D' => Key::Left,
                b'H' => Key::Home,
                b'F' => Key::End,
                _ => Key::Ignored,
            };
            Some((key, 3))
        }
        // A second ESC starts a key of its own.
        &ESC => Some((Key::Ignored, 1)),
        b'b' => Some((Key::WordLeft, 2)),
        b'f' => Some((Key::WordRight, 2)),
        _ => Some((Key::Ignored, 2)),
    }
}

/// `ESC [`, parameter bytes, intermediate bytes, one final byte (ECMA-48).
/// With Ctrl or Alt (`ESC [ 1 ; 5 C`, `ESC [ 1 ; 3 C`) the arrows left and
/// right move by words; other modifiers are ignored: the plain key.
fn control_sequence(bytes: &[u8]) -> Option<(Key, usize)> {
    let mut end = 2;
    while matches!(bytes.get(end)?, 0x30..=0x3f) {
        end += 1;
    }
    let params = &bytes[2..end];
    while matches!(bytes.get(end)?, 0x20..=0x2f) {
        end += 1;
    }
    let last = *bytes.get(end)?;
    if !(0x40..=0x7e).contains(&last) {
        // Not a well-formed sequence: drop what was read of it.
        return Some((Key::Ignored, end));
    }
    let mut fields = params.split(|&b| b == b';');
    let first_param = fields.next().unwrap_or(&[]);
    let by_word = matches!(fields.next(), Some(b"3" | b"5"));
    let key = match (last, first_param) {
        (b'A', _) => Key::Up,
        (b'B', _) => Key::Down,
        (b'C', _) if by_word => Key::WordRight,
        (b'D', _) if by_word => Key::WordLeft,
        (b'C', _) => Key::Right,
        (b'D', _) => Key::Left,
        (b'H', _) => Key::Home,
        (b'F', _) => Key::End,
        (b'~', b"1" | b"7") => Key::Home,
        (b'~', b"4" | b"8") => Key::End,
        (b'~', b"3") => Key::Delete,
        (b'~', b"200") => Key::PasteStart,
        (b'~', b"201") => Key::PasteEnd,
        _ => Key::Ignored,
    };
    Some((key, end + 1))
}

/// A UTF-8 character; an invalid byte is U+FFFD, so nothing typed vanishes.
fn utf8_char(bytes: &[u8]) -> Option<(Key, usize)> {
    let invalid = Some((Key::Char(char::REPLACEMENT_CHARACTER), 1));
    let len = match bytes[0] {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return invalid,
    };
    let available = &bytes[..len.min(bytes.len())];
    if !available[1..].iter().all(|b| (0x80..=0xbf).contains(b)) {
        return invalid;
    }
    if available.len() < len {
        return None;
    }
    match std::str::from_utf8(available) {
        Ok(text) => text.chars().next().map(|c| (Key::Char(c), len)),
        Err(_) => invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key in `bytes`, and the bytes left undecoded.
    fn keys(mut bytes: &[u8], pasting: bool) -> (Vec<Key>, &[u8]) {
        let mut keys = Vec::new();
        while let Some((key, used)) = first_key(bytes, pasting) {
            keys.push(key);
            bytes = &bytes[used..];
        }
        (keys, bytes)
    }

    #[test]
    fn lines_typed_together_are_each_their_own_keys() {
        use Key::*;
        let (got, rest) = keys(b"p1\rp2\r\nx\n", false);
        assert_eq!(
            got,
            [
                Char('p'),
                Char('1'),
                Enter,
                Char('p'),
                Char('2'),
                Enter,
                Char('x'),
                Enter
            ]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn escape_sequences_of_the_editing_keys() {
        use Key::*;
        let typed = concat!(
            "\x1b[A\x1b[B\x1b[C\x1b[D\x1b[H\x1b[F\x1bOH\x1bOF",
            "\x1b[1~\x1b[4~\x1b[7~\x1b[8~\x1b[3~\x1b[1;2C\x1b[200~\x1b[201~",
            "\x1b[1;5D\x1b[1;5C\x1b[1;3D\x1b[1;3C\x1bb\x1bf"
        );
        let (got, rest) = keys(typed.as_bytes(), false);
        assert_eq!(
            got,
            [
                Up, Down, Right, Left, Home, End, Home, End, Home, End, Home, End, Delete, Right,
                PasteStart, PasteEnd, WordLeft, WordRight, WordLeft, WordRight, WordLeft,
                WordRight
            ]
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn control_keys() {
        use Key::*;
        let (got, _) = keys(
            b"\x01\x02\x03\x04\x05\x06\x08\x0b\x0c\x0e\x10\x15\x17\x7f\x1a\x1c",
            false,
        );
        assert_eq!(
            got,
            [
                Home,
                Left,
                Interrupt,
                EndOfInput,
                End,
                Right,
                Backspace,
                KillToEnd,
                ClearScreen,
                Down,
                Up,
                KillToStart,
                DeleteWordBack,
                Backspace,
                Suspend,
                Ignored
            ]
        );
        // A tab is a key outside a paste, text inside one.
        assert_eq!(first_key(b"\t", false), Some((Ignored, 1)));
        assert_eq!(first_key(b"\t", true), Some((Char('\t'), 1)));
    }

    #[test]
    fn a_key_cut_short_waits_for_its_remaining_bytes() {
        for partial in [
            &b"\x1b"[..],
            b"\x1b[",
            b"\x1b[20",
            b"\x1bO",
            b"\xc3",
            b"\xe8\xaa",
        ] {
            assert_eq!(first_key(partial, false), None, "{partial:x?}");
        }
        assert_eq!(
            first_key("語".as_bytes(), false),
            Some((Key::Char('語'), 3))
        );
    }

    #[test]
    fn invalid_bytes_are_replacement_characters_and_alt_keys_are_ignored() {
        let r = Key::Char(char::REPLACEMENT_CHARACTER);
        assert_eq!(first_key(b"\xff", false), Some((r, 1)));
        assert_eq!(first_key(b"\xc3(", false), Some((r, 1)));
        assert_eq!(first_key(b"\x1bx", false), Some((Key::Ignored, 2)));
        assert_eq!(first_key(b"\x1b\x1b[A", false), Some((Key::Ignored, 1)));
        // A malformed sequence is dropped up to the byte that broke it.
        assert_eq!(first_key(b"\x1b[1\x01", false), Some((Key::Ignored, 3)));
    }
}
