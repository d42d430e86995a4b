//! The accounts file in memory: parsing it (every line checked, errors
//! naming the line and what is wrong, never a field's content), writing it
//! back (comments and blank lines kept, in place), editing it for
//! `evchat user`, and [`Accounts::verify`], the one question the server
//! asks of it.

use super::expiry::{BadExpiry, Expiry, MAX_EXPIRY_LEN};
use super::name::{BadName, Name};
use super::roles::{BadRoles, Roles};
use super::secret::{
    BadSecret, PasswordDigest, Secret, looks_like_token, password_matches, token_matches,
};
use std::collections::HashMap;
use std::time::SystemTime;

/// The largest accounts file read, in bytes.
pub const MAX_FILE_LEN: usize = 4 * 1024 * 1024;
/// The longest line, in bytes, its end of line excluded.
pub const MAX_LINE_LEN: usize = 1024;

/// One account: who, what they may do, how they prove it, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: Name,
    pub roles: Roles,
    /// Its `Debug` shows only the kind.
    pub secret: Secret,
    pub expires: Option<Expiry>,
}

impl Account {
    /// The account's line, without its end of line.
    pub fn to_line(&self) -> String {
        let mut line = format!("{} {} {}", self.name, self.roles, self.secret.to_field());
        if let Some(expires) = self.expires {
            line.push(' ');
            line.push_str(&expires.to_string());
        }
        line
    }
}

/// Who a verified secret belongs to: what the server hands the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The account's name as the file writes it.
    pub name: Name,
    pub roles: Roles,
    /// When the session must end because its secret expires.
    pub expires: Option<Expiry>,
}

/// A refused sign-in. The client gets one answer whatever the cause, and
/// so does this type's message; the cause is for the server's log, read
/// from the field on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("wrong name or secret")]
pub struct Refusal {
    pub cause: Cause,
}

/// Why a sign-in was refused (for the log only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Cause {
    #[error("no such account")]
    UnknownAccount,
    #[error("the secret does not match")]
    WrongSecret,
    #[error("the account's secret has expired")]
    Expired,
    #[error("the secret is longer than any accepted")]
    TooLong,
}

/// What is wrong with one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    #[error("the line is longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    #[error("the line is not UTF-8 text")]
    NotUtf8,
    #[error("the line has {0} fields; an account is NAME ROLES SECRET [EXPIRES]")]
    FieldCount(usize),
    #[error("{0}")]
    Name(BadName),
    #[error("{0}")]
    Roles(BadRoles),
    #[error("{0}")]
    Secret(BadSecret),
    #[error("{0}")]
    Expiry(BadExpiry),
    #[error("the expiry is longer than {MAX_EXPIRY_LEN} characters")]
    ExpiryTooLong,
    #[error("the name is already the account of line {0} (names are unique, ignoring case)")]
    Duplicate(usize),
}

/// Why an accounts file is refused. Plain sentences; none repeats a
/// field of the file.
#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: a symbolic link; give the file itself")]
    Symlink { path: String },
    #[error("{path}: not a regular file")]
    NotRegular { path: String },
    #[error(
        "{path}: mode {mode:04o} lets group or others read or write it; \
         the secrets' hashes must stay private (chmod 600 {path})"
    )]
    Mode { path: String, mode: u32 },
    #[error("{path}: larger than {MAX_FILE_LEN} bytes")]
    TooLarge { path: String },
    #[error("{path}: reading: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: writing: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {problem}")]
    Line { line: usize, problem: LineProblem },
    #[error("{path}: line {line}: {problem}")]
    FileLine {
        path: String,
        line: usize,
        problem: LineProblem,
    },
}

impl AccountsError {
    /// Names the file in a line error from [`Accounts::parse`].
    pub fn in_file(self, path: &str) -> AccountsError {
        match self {
            AccountsError::Line { line, problem } => AccountsError::FileLine {
                path: path.to_string(),
                line,
                problem,
            },
            other => other,
        }
    }
}

/// One line of the file: an account, or text kept as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Line {
    Account(Account),
    /// A comment or a blank line, written back unchanged.
    Text(String),
}

/// A parsed accounts file (its format: the [`auth`](super) module's
/// documentation).
#[derive(Clone, Debug)]
pub struct Accounts {
    lines: Vec<Line>,
    /// Lower-case name → index in `lines`.
    index: HashMap<String, usize>,
    /// What an unknown account's password is checked against, with the
    /// parameters of the file's first password (the defaults when it has
    /// none), so that it costs what a real check costs.
    dummy: PasswordDigest,
}

impl Default for Accounts {
    fn default() -> Accounts {
        Accounts::from_lines(Vec::new())
    }
}

fn parse_account(text: &str) -> Result<Option<Account>, LineProblem> {
    // A stray CR at either end (a file edited with CR CR LF) is a blank.
    let trimmed = text.trim_matches([' ', '\t', '\r']);
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = trimmed
        .split([' ', '\t'])
        .filter(|f| !f.is_empty())
        .collect();
    if !(3..=4).contains(&fields.len()) {
        return Err(LineProblem::FieldCount(fields.len()));
    }
    let name = Name::new(fields[0]).map_err(LineProblem::Name)?;
    let roles = Roles::parse(fields[1]).map_err(LineProblem::Roles)?;
    let secret = Secret::parse(fields[2]).map_err(LineProblem::Secret)?;
    let expires = match fields.get(3) {
        None => None,
        Some(f) if f.len() > MAX_EXPIRY_LEN => return Err(LineProblem::ExpiryTooLong),
        Some(f) => Some(Expiry::parse(f).map_err(LineProblem::Expiry)?),
    };
    Ok(Some(Account {
        name,
        roles,
        secret,
        expires,
    }))
}

impl Accounts {
    fn from_lines(lines: Vec<Line>) -> Accounts {
        let mut index = HashMap::new();
        let mut params = None;
        for (i, line) in lines.iter().enumerate() {
            if let Line::Account(account) = line {
                index.insert(account.name.key(), i);
                if let (None, Secret::Password(p)) = (&params, &account.secret) {
                    params = Some(p.params());
                }
            }
        }
        let dummy = PasswordDigest::dummy(&params.unwrap_or_default());
        Accounts {
            lines,
            index,
            dummy,
        }
    }

    /// Parses a whole file. The first bad line is the error.
    pub fn parse(bytes: &[u8]) -> Result<Accounts, AccountsError> {
        if bytes.len() > MAX_FILE_LEN {
            return Err(AccountsError::TooLarge {
                path: "the accounts".to_string(),
            });
        }
        let mut lines = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        if bytes.is_empty() {
            return Ok(Accounts::default());
        }
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let number = i + 1;
            let fail = |problem| AccountsError::Line {
                line: number,
                problem,
            };
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            if raw.len() > MAX_LINE_LEN {
                return Err(fail(LineProblem::TooLong));
            }
            let text = std::str::from_utf8(raw).map_err(|_| fail(LineProblem::NotUtf8))?;
            match parse_account(text).map_err(fail)? {
                // Written back with LF alone, a comment ending in CR would
                // lose that CR to the next reading (as CR LF): drop them now.
                None => lines.push(Line::Text(text.trim_end_matches('\r').to_string())),
                Some(account) => {
                    if let Some(&first) = seen.get(&account.name.key()) {
                        return Err(fail(LineProblem::Duplicate(first)));
                    }
                    seen.insert(account.name.key(), number);
                    lines.push(Line::Account(account));
                }
            }
        }
        Ok(Accounts::from_lines(lines))
    }

    /// The file's bytes: every line as read (accounts in canonical form),
    /// each ending in LF.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Account(a) => out.push_str(&a.to_line()),
                Line::Text(t) => out.push_str(t),
            }
            out.push('\n');
        }
        out.into_bytes()
    }

    /// The accounts, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Account> {
        self.lines.iter().filter_map(|line| match line {
            Line::Account(a) => Some(a),
            Line::Text(_) => None,
        })
    }

    /// How many accounts.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there is no account.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The account of this name, ignoring case.
    pub fn get(&self, name: &str) -> Option<&Account> {
        let i = *self.index.get(&name.to_ascii_lowercase())?;
        match &self.lines[i] {
            Line::Account(a) => Some(a),
            Line::Text(_) => None,
        }
    }

    /// Adds an account, or replaces the one of the same name (ignoring
    /// case) on its line; returns whether one was replaced.
    pub fn upsert(&mut self, account: Account) -> bool {
        let mut lines = std::mem::take(&mut self.lines);
        let replaced = match self.index.get(&account.name.key()) {
            Some(&i) => {
                lines[i] = Line::Account(account);
                true
            }
            None => {
                lines.push(Line::Account(account));
                false
            }
        };
        *self = Accounts::from_lines(lines);
        replaced
    }

    /// Removes the account of this name, ignoring case; returns it.
    pub fn remove(&mut self, name: &str) -> Option<Account> {
        let i = *self.index.get(&name.to_ascii_lowercase())?;
        let mut lines = std::mem::take(&mut self.lines);
        let removed = lines.remove(i);
        *self = Accounts::from_lines(lines);
        match removed {
            Line::Account(a) => Some(a),
            Line::Text(_) => None,
        }
    }

    /// After a reload (`self` the new accounts), the names in `old` whose
    /// sessions must end: the account is gone, its roles lost a bit, or its
    /// secret changed (replacing a leaked token revokes it). Names as `old`
    /// wrote them; match sessions by [`Name::key`]. An account whose
    /// expiry alone changed is not listed: its sessions take the new expiry
    /// from [`Accounts::get`].
    pub fn revoked_since(&self, old: &Accounts) -> Vec<Name> {
        old.iter()
            .filter(|before| match self.get(before.name.as_str()) {
                None => true,
                Some(now) => !now.roles.contains(before.roles) || now.secret != before.secret,
            })
            .map(|before| before.name.clone())
            .collect()
    }

    /// Checks a presented secret for an account at `now`.
    ///
    /// The work depends only on the presented secret: one starting `evt_`
    /// is hashed with SHA-256 and compared in constant time, anything else
    /// is run through argon2id, against the account's stored secret when it
    /// has one of that kind and against a stand-in otherwise. An unknown
    /// account, a wrong secret and an expired one are all a [`Refusal`]
    /// (the client gets one answer; the cause is for the log). Run it off
    /// the event loop: a password check takes tens of milliseconds.
    pub fn verify(
        &self,
        name: &str,
        presented: &[u8],
        now: SystemTime,
    ) -> Result<Identity, Refusal> {
        let refuse = |cause| Err(Refusal { cause });
        if presented.len() > super::secret::MAX_PRESENTED_LEN {
            return refuse(Cause::TooLong);
        }
        let account = self.get(name);
        let matched = if looks_like_token(presented) {
            match account.map(|a| &a.secret) {
                Some(Secret::Token(digest)) => token_matches(presented, digest),
                _ => {
                    // The same hash and comparison, against nothing.
                    let _ = token_matches(presented, &[0; 32]);
                    false
                }
            }
        } else {
            match account.map(|a| &a.secret) {
                Some(Secret::Password(stored)) => password_matches(presented, stored),
                _ => {
                    let _ = password_matches(presented, &self.dummy);
                    false
                }
            }
        };
        let Some(account) = account else {
            return refuse(Cause::UnknownAccount);
        };
        if !matched {
            return refuse(Cause::WrongSecret);
        }
        if account.expires.is_some_and(|e| e.has_passed(now)) {
            return refuse(Cause::Expired);
        }
        Ok(Identity {
            name: account.name.clone(),
            roles: account.roles,
            expires: account.expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::secret::Credential;
    use super::super::secret::tests::cheap;
    use super::*;
    use argon2::Params;
    use std::time::{Duration, UNIX_EPOCH};

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const PHC: &str =
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0$QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY";

    fn line_error(text: &str) -> (usize, LineProblem) {
        match Accounts::parse(text.as_bytes()) {
            Err(AccountsError::Line { line, problem }) => (line, problem),
            other => panic!("{text:?}: {other:?}"),
        }
    }

    #[test]
    fn a_file_with_comments_blanks_and_both_kinds() {
        let text = format!(
            "# accounts\n\nalice view,emit {PHC}\n  bob\temit,broadcast  {DIGEST} 2027-01-04T09:00:00Z\r\n"
        );
        let accounts = Accounts::parse(text.as_bytes()).unwrap();
        assert_eq!(accounts.len(), 2);
        let bob = accounts.get("BOB").unwrap();
        assert_eq!(bob.name.as_str(), "bob");
        assert_eq!(bob.roles, Roles::EMIT.union(Roles::BROADCAST));
        assert_eq!(bob.secret.kind(), "token");
        assert_eq!(bob.expires.unwrap().to_string(), "2027-01-04T09:00:00Z");
        assert_eq!(accounts.get("alice").unwrap().secret.kind(), "password");
        assert!(accounts.get("carol").is_none());
        // Written back: comments and blanks kept, accounts canonical.
        let written = String::from_utf8(accounts.to_bytes()).unwrap();
        assert_eq!(
            written,
            format!(
                "# accounts\n\nalice view,emit {PHC}\nbob emit,broadcast {DIGEST} 2027-01-04T09:00:00Z\n"
            )
        );
        assert_eq!(
            Accounts::parse(written.as_bytes()).unwrap().to_bytes(),
            written.as_bytes()
        );
    }

    #[test]
    fn comments_ending_in_cr_write_back_stably() {
        // Found by the fuzz target: "# c\r\r\n" read as "# c\r", written
        // "# c\r\n", read again as "# c": each rewrite lost a CR.
        let accounts = Accounts::parse(b"# c\r\r\r\n\r\r\n").unwrap();
        assert_eq!(accounts.to_bytes(), b"# c\n\n");
        let again = Accounts::parse(&accounts.to_bytes()).unwrap();
        assert_eq!(again.to_bytes(), accounts.to_bytes());
    }

    #[test]
    fn an_empty_file_has_no_account() {
        assert!(Accounts::parse(b"").unwrap().is_empty());
        assert!(Accounts::parse(b"\n# none\n").unwrap().is_empty());
    }

    #[test]
    fn each_bad_line_names_its_number_and_problem() {
        let ok = format!("alice view {DIGEST}\n");
        let cases: Vec<(String, LineProblem)> = vec![
            ("alice view\n".to_string(), LineProblem::FieldCount(2)),
            (
                format!("alice view {DIGEST} 2027-01-04T09:00:00Z extra\n"),
                LineProblem::FieldCount(5),
            ),
            (
                format!("1alice view {DIGEST}\n"),
                LineProblem::Name(BadName::FirstNotLetter),
            ),
            (
                format!("alice view,root {DIGEST}\n"),
                LineProblem::Roles(BadRoles::Unknown),
            ),
            (
                "alice view hunter2\n".to_string(),
                LineProblem::Secret(BadSecret::Kind),
            ),
            (
                format!("alice view {DIGEST} tomorrow-at-nine-oclock\n"),
                LineProblem::ExpiryTooLong,
            ),
            (
                format!("alice view {DIGEST} 2027-1-4\n"),
                LineProblem::Expiry(BadExpiry::Format),
            ),
            (
                format!("{}\n", "a".repeat(MAX_LINE_LEN + 1)),
                LineProblem::TooLong,
            ),
            (
                format!("{} view {DIGEST}\n", "a".repeat(25)),
                LineProblem::Name(BadName::TooLong),
            ),
            (
                format!("alice view sha256:{}\n", "0".repeat(300)),
                LineProblem::Secret(BadSecret::TooLong),
            ),
        ];
        for (bad, problem) in cases {
            let text = format!("# first\n{ok}{bad}");
            assert_eq!(line_error(&text), (3, problem), "{bad:?}");
        }
    }

    #[test]
    fn bad_utf8_is_a_line_error() {
        let mut text = format!("alice view {DIGEST}\n").into_bytes();
        text.extend_from_slice(b"b\xffob view ");
        text.extend_from_slice(DIGEST.as_bytes());
        match Accounts::parse(&text) {
            Err(AccountsError::Line {
                line: 2,
                problem: LineProblem::NotUtf8,
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bidi_override_in_a_name_is_refused() {
        let text = format!("ali\u{202e}ce view {DIGEST}\n");
        assert_eq!(
            line_error(&text),
            (1, LineProblem::Name(BadName::BadCharacter))
        );
    }

    #[test]
    fn names_differing_only_in_case_are_duplicates() {
        let text = format!("alice view {DIGEST}\n#\nbob view {DIGEST}\nALICE emit {DIGEST}\n");
        assert_eq!(line_error(&text), (4, LineProblem::Duplicate(1)));
    }

    #[test]
    fn a_file_over_the_limit_is_refused_whole() {
        let big = vec![b'#'; MAX_FILE_LEN + 1];
        assert!(matches!(
            Accounts::parse(&big),
            Err(AccountsError::TooLarge { .. })
        ));
    }

    #[test]
    fn errors_never_repeat_a_secret_or_a_field() {
        let secret_like = "Sup3rS3cretPassw0rdTypedInTheWrongPlace";
        for text in [
            format!("alice view {secret_like}\n"),
            format!("{secret_like} view {DIGEST}\n"),
            format!("alice {secret_like} {DIGEST}\n"),
            format!("alice view {DIGEST} {secret_like}\n"),
            format!("alice view {DIGEST} {secret_like} x\n"),
            format!("alice view $argon2id${secret_like}\n"),
            format!("alice view sha256:{secret_like}\n"),
        ] {
            let err = Accounts::parse(text.as_bytes()).unwrap_err();
            let shown = format!("{err} {err:?}");
            let shown = format!("{shown} {}", err.in_file("/etc/evchat/accounts"));
            assert!(!shown.contains("S3cret"), "{shown}");
        }
    }

    #[test]
    fn upsert_and_remove_keep_other_lines_in_place() {
        let text = format!("# head\nalice view {DIGEST}\n# mid\nbob emit {DIGEST}\n");
        let mut accounts = Accounts::parse(text.as_bytes()).unwrap();
        let mut carol = accounts.get("alice").unwrap().clone();
        carol.name = Name::new("carol").unwrap();
        assert!(!accounts.upsert(carol));
        let mut alice = accounts.get("alice").unwrap().clone();
        alice.name = Name::new("Alice").unwrap();
        alice.roles = Roles::ALL;
        assert!(accounts.upsert(alice));
        assert_eq!(accounts.remove("BOB").unwrap().name.as_str(), "bob");
        assert!(accounts.remove("bob").is_none());
        assert_eq!(
            String::from_utf8(accounts.to_bytes()).unwrap(),
            format!(
                "# head\nAlice view,emit,broadcast,admin {DIGEST}\n# mid\ncarol view {DIGEST}\n"
            )
        );
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// Accounts with a cheap password (alice), a token (bot) and an
    /// expiring token (old, until 1000 s after the epoch).
    fn sample() -> (Accounts, Credential, Credential) {
        let password = Credential::new(b"correct horse".to_vec());
        let token = Credential::generate_token().unwrap();
        let old = Credential::generate_token().unwrap();
        let mut accounts = Accounts::default();
        for (name, roles, secret, expires) in [
            (
                "alice",
                Roles::ALL,
                Secret::for_password_with(&password, cheap()).unwrap(),
                None,
            ),
            ("bot", Roles::EMIT, Secret::for_token(&token), None),
            (
                "old",
                Roles::VIEW,
                Secret::for_token(&old),
                Some(Expiry::from_unix(1000)),
            ),
        ] {
            accounts.upsert(Account {
                name: Name::new(name).unwrap(),
                roles,
                secret,
                expires,
            });
        }
        (accounts, token, old)
    }

    #[test]
    fn a_right_password_or_token_gives_the_identity() {
        let (accounts, token, old) = sample();
        let alice = accounts.verify("ALICE", b"correct horse", at(0)).unwrap();
        assert_eq!((alice.name.as_str(), alice.roles), ("alice", Roles::ALL));
        let bot = accounts.verify("bot", token.as_bytes(), at(0)).unwrap();
        assert_eq!(
            (bot.name.as_str(), bot.roles, bot.expires),
            ("bot", Roles::EMIT, None)
        );
        let old = accounts.verify("old", old.as_bytes(), at(999)).unwrap();
        assert_eq!(old.expires, Some(Expiry::from_unix(1000)));
    }

    #[test]
    fn wrong_unknown_and_expired_are_all_refused() {
        let (accounts, token, old) = sample();
        let cause =
            |name: &str, secret: &[u8], now| accounts.verify(name, secret, now).unwrap_err().cause;
        assert_eq!(cause("alice", b"correct horsE", at(0)), Cause::WrongSecret);
        assert_eq!(cause("alice", token.as_bytes(), at(0)), Cause::WrongSecret);
        assert_eq!(cause("bot", b"correct horse", at(0)), Cause::WrongSecret);
        assert_eq!(cause("bot", old.as_bytes(), at(0)), Cause::WrongSecret);
        assert_eq!(
            cause("carol", b"correct horse", at(0)),
            Cause::UnknownAccount
        );
        assert_eq!(
            cause("carol", token.as_bytes(), at(0)),
            Cause::UnknownAccount
        );
        assert_eq!(cause("old", old.as_bytes(), at(1000)), Cause::Expired);
        assert_eq!(cause("alice", &[b'x'; 257], at(0)), Cause::TooLong);
        // One message whatever the cause: it cannot tell an unknown
        // account from a wrong or expired secret by accident.
        for (name, secret, now) in [
            ("carol", &b"x"[..], at(0)),
            ("alice", b"x", at(0)),
            ("old", old.as_bytes(), at(1000)),
        ] {
            let refusal = accounts.verify(name, secret, now).unwrap_err();
            assert_eq!(refusal.to_string(), "wrong name or secret");
        }
    }

    #[test]
    fn a_reload_revokes_removed_accounts_lost_roles_and_changed_secrets() {
        let other = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";
        let old = Accounts::parse(
            format!(
                "gone view {DIGEST}\nshrunk view,emit {DIGEST}\nrekeyed view {DIGEST}\n\
                 grown view {DIGEST}\nrenewed view {DIGEST} 2027-01-01T00:00:00Z\nsame view {DIGEST}\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let new = Accounts::parse(
            format!(
                "SHRUNK emit {DIGEST}\nrekeyed view {other}\ngrown view,admin {DIGEST}\n\
                 renewed view {DIGEST} 2028-01-01T00:00:00Z\nsame view {DIGEST}\nnew view {DIGEST}\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let revoked: Vec<String> = new
            .revoked_since(&old)
            .iter()
            .map(Name::to_string)
            .collect();
        assert_eq!(revoked, ["gone", "shrunk", "rekeyed"]);
        assert!(new.revoked_since(&new).is_empty());
    }

    #[test]
    fn the_stand_in_hash_has_the_files_password_parameters() {
        let (accounts, _, _) = sample();
        assert_eq!(accounts.dummy.params().m_cost(), cheap().m_cost());
        assert_eq!(
            Accounts::default().dummy.params().m_cost(),
            Params::DEFAULT_M_COST
        );
    }
}
