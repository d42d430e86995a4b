//! Fuzz target for the accounts file parser (`evchat::auth::Accounts`):
//! the bytes are a whole accounts file.
//!
//! * Parsing never panics, whatever the bytes.
//! * A file that parses writes back (`to_bytes`) to bytes that parse to the
//!   same accounts and write back unchanged: comments and blank lines kept,
//!   accounts in canonical form.
//! * The accounts are exactly the lines that are neither blank nor a
//!   comment, in file order; each name follows the rule and no two share a
//!   name ignoring case; `get` finds each by its name in any case.
//! * A refused file names a line that exists, and the lines before it
//!   parse: the error is the first bad line. Its message and `Debug` hold
//!   no 12-byte run of that line's fields (a secret typed in the wrong
//!   place must not reach a log), beyond the messages' own wording.
//! * Checking a token-shaped secret (the cheap path; a password check runs
//!   argon2 with the file's parameters, too slow for fuzzing) against every
//!   account and an unknown one is refused, since no fuzzed digest is the
//!   SHA-256 of that token.
#![no_main]

use evchat::auth::{
    Accounts, AccountsError, BadExpiry, BadName, BadRoles, BadSecret, LineProblem, MAX_FILE_LEN,
};
use libfuzzer_sys::fuzz_target;
use std::time::SystemTime;

/// The lines as the format defines them: split at LF, one CR cut.
fn lines(data: &[u8]) -> Vec<&[u8]> {
    if data.is_empty() {
        return Vec::new();
    }
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// Neither blank nor a comment: spaces, tabs and CRs at either end do not
/// count, and a comment starts with `#`.
fn is_account_line(line: &[u8]) -> bool {
    let blank = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    match line.iter().find(|b| !blank(b)) {
        None => false,
        Some(&first) => first != b'#',
    }
}

fn check_parsed(data: &[u8], accounts: &Accounts) {
    let expected = lines(data)
        .into_iter()
        .filter(|l| is_account_line(l))
        .count();
    assert_eq!(
        accounts.len(),
        expected,
        "every non-comment line is an account"
    );
    assert_eq!(accounts.iter().count(), expected);
    let mut keys = std::collections::HashSet::new();
    for account in accounts.iter() {
        let name = account.name.as_str();
        assert!(keys.insert(name.to_ascii_lowercase()), "a duplicate name");
        assert!(name.len() <= 24 && name.as_bytes()[0].is_ascii_alphabetic());
        assert_eq!(accounts.get(&name.to_ascii_uppercase()), Some(account));
    }
    let written = accounts.to_bytes();
    let again = Accounts::parse(&written).expect("what was written parses");
    assert!(
        again.iter().eq(accounts.iter()),
        "the same accounts after writing"
    );
    assert_eq!(again.to_bytes(), written, "writing is stable");
    let now = SystemTime::now();
    for account in accounts.iter() {
        assert!(
            accounts
                .verify(account.name.as_str(), b"evt_fuzz", now)
                .is_err()
        );
    }
    assert!(accounts.verify("nobody.at.all", b"evt_fuzz", now).is_err());
}

/// Every problem's own wording, in text and `Debug`: a run of a field that
/// also occurs here may be the message's, not the field's.
fn vocabulary() -> String {
    use LineProblem as P;
    let problems = [
        P::TooLong,
        P::NotUtf8,
        P::FieldCount(5),
        P::Name(BadName::Empty),
        P::Name(BadName::TooLong),
        P::Name(BadName::FirstNotLetter),
        P::Name(BadName::BadCharacter),
        P::Roles(BadRoles::Empty),
        P::Roles(BadRoles::TooLong),
        P::Roles(BadRoles::EmptyItem),
        P::Roles(BadRoles::Unknown),
        P::Secret(BadSecret::TooLong),
        P::Secret(BadSecret::Kind),
        P::Secret(BadSecret::BadPhc),
        P::Secret(BadSecret::Cost),
        P::Secret(BadSecret::BadDigest),
        P::Expiry(BadExpiry::Format),
        P::Expiry(BadExpiry::OutOfRange),
        P::Expiry(BadExpiry::Age),
        P::ExpiryTooLong,
        P::Duplicate(1),
    ];
    problems.iter().map(|p| format!("{p} {p:?}\n")).collect()
}

fn check_refused(data: &[u8], error: &AccountsError) {
    let shown = format!("{error} {error:?}");
    match error {
        AccountsError::TooLarge { .. } => assert!(data.len() > MAX_FILE_LEN),
        AccountsError::Line { line, .. } => {
            let all = lines(data);
            assert!(
                (1..=all.len()).contains(line),
                "line {line} of {}",
                all.len()
            );
            let before = all[..line - 1].join(&b'\n');
            Accounts::parse(&before).expect("the lines before the bad one parse");
            let bad = all[line - 1];
            for field in bad.split(|&b| b == b' ' || b == b'\t') {
                for run in field.windows(12) {
                    if let Ok(run) = std::str::from_utf8(run) {
                        assert!(
                            !shown.contains(run) || vocabulary().contains(run),
                            "{shown:?} repeats {run:?}"
                        );
                    }
                }
            }
        }
        other => panic!("parsing bytes cannot fail with {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    match Accounts::parse(data) {
        Ok(accounts) => check_parsed(data, &accounts),
        Err(error) => check_refused(data, &error),
    }
});
