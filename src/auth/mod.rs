//! Accounts and secrets for the identity extension (PROTOCOL.md,
//! "Extension: identity"): the accounts file ([`Accounts`], its format in
//! that type's documentation), checking a presented secret
//! ([`Accounts::verify`]), the worker thread that does it off the event
//! loop ([`Verifier`]) and the failure budget per source address
//! ([`FailureBudget`]).
//!
//! This part stands alone: it imports nothing of the router, the event
//! loop, the connections or the web transport, and the router never
//! imports it; what the router is handed is an [`Identity`]'s name and
//! [`Roles`], never a secret. No secret or hash reaches a log line, an
//! error message or a `Debug` output.

mod accounts;
mod budget;
mod expiry;
mod file;
mod name;
mod roles;
mod secret;
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
pub use verifier::{Busy, Outcome, Request, Verifier};
