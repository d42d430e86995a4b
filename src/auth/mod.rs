//! Accounts and secrets for the identity extension (PROTOCOL.md,
//! "Extension: identity"): the accounts file ([`Accounts`], its format
//! below), checking a presented secret
//! ([`Accounts::verify`]), the worker thread that does it off the event
//! loop ([`Verifier`]), the failure budget per source address
//! ([`FailureBudget`]) and the delay before a refusal is answered
//! ([`Tarpit`]).
//!
//! This part stands alone: it imports nothing of the router, the event
//! loop, the connections or the web transport, and the router never
//! imports it; what the router is handed is an [`Identity`]'s name and
//! [`Roles`], never a secret. No secret or hash reaches a log line, an
//! error message or a `Debug` output.
//!
//! # The accounts file
//!
//! UTF-8 text, one account a line:
//!
//! ```text
//! # NAME  ROLES               SECRET                                          [EXPIRES]
//! alice   view,emit,broadcast $argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//! bot     emit,broadcast      sha256:<64 hex digits>                          2027-01-04T09:00:00Z
//! ```
//!
//! - Fields are separated by spaces or tabs; a line may end in CR LF.
//! - NAME follows the name rule `[A-Za-z][A-Za-z0-9_.-]{0,23}` and is
//!   unique ignoring case.
//! - ROLES is a comma list, without spaces, of `view`, `emit`,
//!   `broadcast`, `admin` (or `-` for none).
//! - SECRET is a password's argon2id PHC string (version 19, at most
//!   `m=262144,t=16,p=8`), or `sha256:` and the lower-case hex SHA-256 of a
//!   token (`evt_` and 64 hex digits, the prefix included in the hash).
//! - EXPIRES, optional, is a UTC time `YYYY-MM-DDTHH:MM:SSZ` from which the
//!   secret is refused.
//! - Lines starting with `#` (after blanks) and blank lines are comments,
//!   kept when the file is rewritten.
//! - At most [`MAX_LINE_LEN`] bytes a line and [`MAX_FILE_LEN`] in all.
//! - The file must be a regular file, not a symbolic link, with no
//!   permission for group or others (`chmod 600`); it is written
//!   atomically with mode 0600.
//!
//! A bad file is refused whole, with the first bad line's number and what
//! is wrong with it, never the content of a field.

mod accounts;
mod budget;
mod expiry;
mod file;
mod name;
mod roles;
mod secret;
mod tarpit;
mod verifier;

pub use accounts::{
    Account, Accounts, AccountsError, Cause, Identity, LineProblem, MAX_FILE_LEN, MAX_LINE_LEN,
    Refusal,
};
pub use budget::{FailureBudget, Source};
pub use expiry::{BadExpiry, Expiry, parse_age};
pub use file::{read_private, write_private};
pub use name::{BadName, MAX_NAME_LEN, Name};
pub use roles::{BadRoles, Roles};
pub use secret::{
    BadSecret, Credential, MAX_PRESENTED_LEN, Secret, TOKEN_PREFIX, looks_like_token, token_digest,
};
pub use tarpit::Tarpit;
pub use verifier::{Busy, Outcome, Request, Verifier};
