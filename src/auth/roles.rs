//! Roles: what an account may do, as a bit set the router will be handed
//! (it never sees a secret). The same bits travel on the wire
//! (PROTOCOL.md, "Extension: identity").

use crate::proto::ext::{ROLE_WORDS, RoleWords};
use std::fmt;

/// A set of roles. The bits are the wire's: view 1, emit 2, broadcast 4,
/// admin 8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

/// The longest roles field: every role once, with commas.
pub const MAX_ROLES_LEN: usize = 64;

/// Why a roles list does not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRoles {
    #[error("the roles are empty (write one or more of view,emit,broadcast,admin, or - for none)")]
    Empty,
    #[error("the roles list is longer than {MAX_ROLES_LEN} characters")]
    TooLong,
    #[error("the roles list has an empty item (two commas, or a comma at an end)")]
    EmptyItem,
    #[error("the roles list has a role other than view, emit, broadcast and admin")]
    Unknown,
}

impl Roles {
    /// Register an exhibitor (see messages).
    pub const VIEW: Roles = Roles(1);
    /// Register an emitter and send to one client.
    pub const EMIT: Roles = Roles(2);
    /// Send to everyone (destination 0).
    pub const BROADCAST: Roles = Roles(4);
    /// Close another client's session.
    pub const ADMIN: Roles = Roles(8);
    /// No role.
    pub const NONE: Roles = Roles(0);
    /// Every role: what a session holds on a server without accounts.
    pub const ALL: Roles = Roles(15);

    /// The wire's byte.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set with these bits; bits beyond the four roles are dropped.
    pub fn from_bits(bits: u8) -> Roles {
        Roles(bits & Roles::ALL.0)
    }

    /// Whether every role of `other` is in this set.
    pub fn contains(self, other: Roles) -> bool {
        self.0 & other.0 == other.0
    }

    /// This set and `other`'s roles.
    pub fn union(self, other: Roles) -> Roles {
        Roles(self.0 | other.0)
    }

    /// Parses `view,emit,...`: one or more role names, comma separated, no
    /// spaces; a role written twice counts once. `-` is no role (an
    /// account kept but allowed nothing), as [`Display`](fmt::Display)
    /// writes it.
    pub fn parse(s: &str) -> Result<Roles, BadRoles> {
        if s.is_empty() {
            return Err(BadRoles::Empty);
        }
        if s == "-" {
            return Ok(Roles::NONE);
        }
        if s.len() > MAX_ROLES_LEN {
            return Err(BadRoles::TooLong);
        }
        let mut roles = Roles::NONE;
        for item in s.split(',') {
            if item.is_empty() {
                return Err(BadRoles::EmptyItem);
            }
            let (bit, _) = ROLE_WORDS
                .iter()
                .find(|(_, word)| *word == item)
                .ok_or(BadRoles::Unknown)?;
            roles = roles.union(Roles(*bit));
        }
        Ok(roles)
    }
}

impl fmt::Display for Roles {
    /// `view,emit`, in the canonical order; `-` for no role.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        RoleWords(self.0).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_print_in_canonical_order() {
        let roles = Roles::parse("admin,view,emit,view").unwrap();
        assert_eq!(roles.bits(), 1 | 2 | 8);
        assert_eq!(roles.to_string(), "view,emit,admin");
        assert_eq!(Roles::parse("view,emit,broadcast,admin"), Ok(Roles::ALL));
        assert_eq!(Roles::NONE.to_string(), "-");
        assert_eq!(Roles::parse("-"), Ok(Roles::NONE));
    }

    #[test]
    fn bad_roles_lists() {
        assert_eq!(Roles::parse(""), Err(BadRoles::Empty));
        assert_eq!(Roles::parse("view,"), Err(BadRoles::EmptyItem));
        assert_eq!(Roles::parse("view,,emit"), Err(BadRoles::EmptyItem));
        assert_eq!(Roles::parse("View"), Err(BadRoles::Unknown));
        assert_eq!(Roles::parse("view, emit"), Err(BadRoles::Unknown));
        assert_eq!(Roles::parse("root"), Err(BadRoles::Unknown));
        assert_eq!(Roles::parse(&"view,".repeat(13)), Err(BadRoles::TooLong));
    }

    #[test]
    fn contains_and_from_bits() {
        let roles = Roles::VIEW.union(Roles::EMIT);
        assert!(roles.contains(Roles::VIEW));
        assert!(!roles.contains(Roles::VIEW.union(Roles::ADMIN)));
        assert_eq!(Roles::from_bits(0xff), Roles::ALL);
    }
}
