//! The emitter's input syntax: `(ID) text`, `(CREQ) ID`, `(FLW)`. Pure
//! parsing, no I/O; `evchat chat` accepts the same lines.

use crate::proto::{ClientId, MAX_TEXT_LEN};

/// One line of emitter input, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `(ID) text`: a MSG to ID (0: every exhibitor).
    Message { dest: ClientId, text: Vec<u8> },
    /// `(CREQ) ID`: ask for the client list to be sent to ID.
    ClientList { dest: ClientId },
    /// `(FLW)`: leave.
    Leave,
}

/// Why an input line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("expected '(ID) text', '(CREQ) ID' or '(FLW)'")]
    Unrecognised,
    #[error("'{0}' is not an id from 0 to 65535")]
    BadId(String),
    #[error("expected a space between ')' and the text")]
    MissingSpace,
    #[error("'(FLW)' takes nothing after it")]
    TrailingAfterLeave,
    #[error("text is {0} bytes; a message carries at most 65535")]
    TooLong(usize),
}

fn parse_id(word: &[u8]) -> Result<ClientId, SyntaxError> {
    let text = String::from_utf8_lossy(word).into_owned();
    if word.is_empty() || !word.iter().all(u8::is_ascii_digit) {
        return Err(SyntaxError::BadId(text));
    }
    text.parse().map_err(|_| SyntaxError::BadId(text))
}

/// Parses one line of emitter input (without its line ending).
///
/// The single space after `)` separates the keyword from what follows and is
/// not part of the text; any further spaces are. Keywords ignore case.
pub fn parse_command(line: &[u8]) -> Result<Command, SyntaxError> {
    let Some(rest) = line.strip_prefix(b"(") else {
        return Err(SyntaxError::Unrecognised);
    };
    let Some(close) = rest.iter().position(|&b| b == b')') else {
        return Err(SyntaxError::Unrecognised);
    };
    let (keyword, after) = (&rest[..close], &rest[close + 1..]);
    if keyword.eq_ignore_ascii_case(b"FLW") {
        return if after.trim_ascii().is_empty() {
            Ok(Command::Leave)
        } else {
            Err(SyntaxError::TrailingAfterLeave)
        };
    }
    if keyword.eq_ignore_ascii_case(b"CREQ") {
        let Some(arg) = after.strip_prefix(b" ") else {
            return Err(SyntaxError::Unrecognised);
        };
        return Ok(Command::ClientList {
            dest: parse_id(arg.trim_ascii())?,
        });
    }
    if keyword.is_empty() || !keyword.iter().all(u8::is_ascii_digit) {
        return Err(SyntaxError::Unrecognised);
    }
    let dest = parse_id(keyword)?;
    let text = match after {
        [] => &[][..],
        [b' ', text @ ..] => text,
        _ => return Err(SyntaxError::MissingSpace),
    };
    if text.len() > MAX_TEXT_LEN {
        return Err(SyntaxError::TooLong(text.len()));
    }
    Ok(Command::Message {
        dest,
        text: text.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_line_drops_exactly_one_space() {
        assert_eq!(
            parse_command(b"(4096)  two spaces"),
            Ok(Command::Message {
                dest: 4096,
                text: b" two spaces".to_vec()
            })
        );
        assert_eq!(
            parse_command(b"(0)"),
            Ok(Command::Message {
                dest: 0,
                text: vec![]
            })
        );
        assert_eq!(parse_command(b"(7)x"), Err(SyntaxError::MissingSpace));
    }

    #[test]
    fn keywords_ignore_case() {
        assert_eq!(parse_command(b"(flw)"), Ok(Command::Leave));
        assert_eq!(
            parse_command(b"(Creq) 4097"),
            Ok(Command::ClientList { dest: 4097 })
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        assert_eq!(parse_command(b""), Err(SyntaxError::Unrecognised));
        assert_eq!(parse_command(b"hello"), Err(SyntaxError::Unrecognised));
        assert_eq!(parse_command(b"(abc) hi"), Err(SyntaxError::Unrecognised));
        assert_eq!(
            parse_command(b"(65536) hi"),
            Err(SyntaxError::BadId("65536".into()))
        );
        assert_eq!(
            parse_command(b"(CREQ) x"),
            Err(SyntaxError::BadId("x".into()))
        );
        assert_eq!(
            parse_command(b"(FLW) now"),
            Err(SyntaxError::TrailingAfterLeave)
        );
        // A sign is not a digit, though u16's parser would take it.
        assert_eq!(
            parse_command(b"(CREQ) +5"),
            Err(SyntaxError::BadId("+5".into()))
        );
        let mut long = b"(1) ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 65536));
        assert_eq!(parse_command(&long), Err(SyntaxError::TooLong(65536)));
        // The longest text a MSG carries is taken.
        long.pop();
        assert_eq!(
            parse_command(&long),
            Ok(Command::Message {
                dest: 1,
                text: vec![b'a'; 65535]
            })
        );
    }
}
