//! Secrets a client is handed for a HELLO: typed at a prompt with echo
//! off, or one line read from standard input, a file or the environment.
//! Each is read bounded (never more than a little over the longest secret
//! a HELLO carries) and refused with one sentence when it is empty or too
//! long; none is ever shown.

use super::terminal::EchoOff;
use crate::auth::{Credential, MAX_PRESENTED_LEN};
use std::io::{self, BufRead, Read};
use std::path::Path;

/// Why a line did not give a secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretLineError {
    #[error("nothing there (end of input)")]
    Missing,
    #[error("longer than {MAX_PRESENTED_LEN} bytes")]
    TooLong,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One line of `input`, without its LF or CR LF. At most a little over the
/// longest secret is read: a longer line is refused, not buffered.
pub fn read_secret_line(input: &mut impl BufRead) -> Result<Credential, SecretLineError> {
    // The longest line kept, its CR LF, and one byte to tell it is longer.
    let cap = MAX_PRESENTED_LEN + 3;
    let mut line = Vec::with_capacity(cap);
    input.take(cap as u64).read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(SecretLineError::Missing);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let credential = Credential::new(line);
    if credential.as_bytes().len() > MAX_PRESENTED_LEN {
        return Err(SecretLineError::TooLong);
    }
    Ok(credential)
}

/// Prints `prompt` on stderr and reads one line from the terminal on stdin
/// with echo off. An error when stdin is not a terminal.
pub fn ask_secret(prompt: &str) -> Result<Credential, SecretLineError> {
    let echo_off = EchoOff::new()?;
    eprint!("{prompt}");
    let line = read_secret_line(&mut io::stdin().lock());
    // The Enter typed was not echoed either.
    eprintln!();
    drop(echo_off);
    line
}

/// Why a secret given to a client (`--token-file`, an environment
/// variable) is refused: one sentence, naming where it came from.
#[derive(Debug, thiserror::Error)]
pub enum GivenSecretError {
    #[error("{from}: {reason}")]
    Unreadable { from: String, reason: String },
    #[error("{from} is empty")]
    Empty { from: String },
    #[error("{from} is longer than {MAX_PRESENTED_LEN} bytes; a secret is at most that")]
    TooLong { from: String },
    #[error("{from} holds more than one line; put only the secret in it")]
    ManyLines { from: String },
}

/// The secret in a file: its one line (a final LF or CR LF is dropped).
/// The file must be private, as the server's accounts file must: a secret
/// that group or others can read is refused.
pub fn secret_from_file(path: &Path) -> Result<Credential, GivenSecretError> {
    let from = path.display().to_string();
    let bytes = match crate::auth::read_private(path) {
        Ok(bytes) => Credential::new(bytes),
        Err(crate::auth::AccountsError::Mode { mode, .. }) => {
            return Err(GivenSecretError::Unreadable {
                reason: format!(
                    "mode {mode:04o} lets group or others read or write it; a secret must stay \
                     private (chmod 600 {from})"
                ),
                from,
            });
        }
        Err(e) => {
            // The loader's sentences start with the path already.
            let shown = e.to_string();
            let reason = shown
                .strip_prefix(&format!("{from}: "))
                .unwrap_or(&shown)
                .to_string();
            return Err(GivenSecretError::Unreadable { from, reason });
        }
    };
    one_line(bytes.as_bytes(), from)
}

/// The secret in environment variable `var`; `None` when it is not set.
pub fn secret_from_env(var: &str) -> Result<Option<Credential>, GivenSecretError> {
    use std::os::unix::ffi::OsStringExt;
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    let value = Credential::new(value.into_vec());
    one_line(value.as_bytes(), format!("${var}")).map(Some)
}

/// `bytes` as one secret: a final line ending dropped, nothing else.
fn one_line(bytes: &[u8], from: String) -> Result<Credential, GivenSecretError> {
    let mut line = bytes;
    if let Some(rest) = line.strip_suffix(b"\n") {
        line = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    if line.is_empty() {
        return Err(GivenSecretError::Empty { from });
    }
    if line.contains(&b'\n') {
        return Err(GivenSecretError::ManyLines { from });
    }
    if line.len() > MAX_PRESENTED_LEN {
        return Err(GivenSecretError::TooLong { from });
    }
    Ok(Credential::new(line.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_loses_its_ending_and_is_held_to_the_longest_secret() {
        let read = |bytes: &[u8]| read_secret_line(&mut &bytes[..]);
        assert_eq!(read(b"pw\r\nnext\n").unwrap().as_bytes(), b"pw");
        assert_eq!(read(b"pw").unwrap().as_bytes(), b"pw");
        assert!(matches!(read(b""), Err(SecretLineError::Missing)));
        let longest = vec![b'x'; MAX_PRESENTED_LEN];
        assert_eq!(read(&longest).unwrap().as_bytes(), &longest[..]);
        let over = vec![b'x'; MAX_PRESENTED_LEN + 1];
        assert!(matches!(read(&over), Err(SecretLineError::TooLong)));
    }

    #[test]
    fn a_given_secret_is_one_non_empty_line() {
        let from = || "f".to_string();
        assert_eq!(one_line(b"evt_1\n", from()).unwrap().as_bytes(), b"evt_1");
        assert_eq!(one_line(b"evt_1\r\n", from()).unwrap().as_bytes(), b"evt_1");
        assert!(matches!(
            one_line(b"\n", from()),
            Err(GivenSecretError::Empty { .. })
        ));
        assert!(matches!(
            one_line(b"a\nb\n", from()),
            Err(GivenSecretError::ManyLines { .. })
        ));
        let over = vec![b'x'; MAX_PRESENTED_LEN + 1];
        assert!(matches!(
            one_line(&over, from()),
            Err(GivenSecretError::TooLong { .. })
        ));
    }
}
