//! Account and session names: the rule `[A-Za-z][A-Za-z0-9_.-]{0,23}`
//! (ASCII only, so no bidirectional override, invisible character or
//! look-alike letter can make two names read alike) and the
//! case-insensitive key under which a name is unique.

use std::fmt;

/// The longest name, in bytes (the rule's 1 + 23).
pub const MAX_NAME_LEN: usize = 24;

/// A name that follows the rule. Names compare as written; [`Name::key`]
/// is what uniqueness is decided on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Name(String);

/// Why a string is not a name (the message never repeats the string: it
/// may be a secret typed in the wrong place).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error("the name is empty")]
    Empty,
    #[error("the name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("the name must start with a letter A-Z or a-z")]
    FirstNotLetter,
    #[error("the name may only hold letters A-Z and a-z, digits, '_', '.' and '-'")]
    BadCharacter,
}

impl Name {
    /// Checks `s` against the rule.
    pub fn new(s: &str) -> Result<Name, BadName> {
        let bytes = s.as_bytes();
        let Some(&first) = bytes.first() else {
            return Err(BadName::Empty);
        };
        if bytes.len() > MAX_NAME_LEN {
            return Err(BadName::TooLong);
        }
        if !first.is_ascii_alphabetic() {
            return Err(BadName::FirstNotLetter);
        }
        if !bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(BadName::BadCharacter);
        }
        Ok(Name(s.to_string()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which names are unique: `Alice` and `alice` are one
    /// name. ASCII lower case is enough, since the rule allows ASCII only.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_follow_the_rule() {
        for ok in [
            "a",
            "Z",
            "alice",
            "bob_2",
            "a.b-c",
            "x23456789012345678901234",
        ] {
            assert_eq!(Name::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn names_that_break_the_rule() {
        assert_eq!(Name::new(""), Err(BadName::Empty));
        assert_eq!(
            Name::new("x234567890123456789012345"),
            Err(BadName::TooLong)
        );
        assert_eq!(Name::new("1abc"), Err(BadName::FirstNotLetter));
        assert_eq!(Name::new("_abc"), Err(BadName::FirstNotLetter));
        assert_eq!(Name::new("al ice"), Err(BadName::BadCharacter));
        assert_eq!(Name::new("alice:"), Err(BadName::BadCharacter));
        assert_eq!(Name::new("élodie"), Err(BadName::FirstNotLetter));
        assert_eq!(Name::new("zoé"), Err(BadName::BadCharacter));
    }

    #[test]
    fn bidi_and_invisible_characters_are_refused() {
        // RIGHT-TO-LEFT OVERRIDE makes "alice\u{202e}txt" display reversed;
        // a zero-width space makes two names look alike.
        assert_eq!(Name::new("alice\u{202e}txt"), Err(BadName::BadCharacter));
        assert_eq!(Name::new("al\u{200b}ice"), Err(BadName::BadCharacter));
        assert_eq!(Name::new("\u{2066}alice"), Err(BadName::FirstNotLetter));
    }

    #[test]
    fn names_differing_in_case_share_a_key() {
        let a = Name::new("Alice").unwrap();
        let b = Name::new("aLICE").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.key(), b.key());
    }
}
