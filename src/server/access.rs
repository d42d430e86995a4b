//! Who may read the server's reports (`GET /metrics`, `GET /stats`): the
//! rule, and the address ranges (`--metrics-allow CIDR`) it names.
//!
//! - An address inside a `--metrics-allow` range may read them, with or
//!   without accounts.
//! - With accounts (`--auth`), anyone else needs an admin account's token
//!   in `Authorization: Bearer evt_...`; without one the answer is 401.
//!   A password is not taken there: checking one runs argon2, which must
//!   not run on the event loop. The token is checked here, on the loop, as
//!   the sign-in path checks tokens: its SHA-256 compared in constant time
//!   with every admin token's digest (all of them, whichever matches).
//! - Without accounts there is nothing to check a token against: with no
//!   `--metrics-allow`, loopback addresses may read them; with some, only
//!   those ranges may. Anyone else gets 403.

use crate::auth::{Accounts, MAX_PRESENTED_LEN, Roles, Secret, looks_like_token, token_digest};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::SystemTime;
use subtle::ConstantTimeEq;

/// An address range: an address and how many of its leading bits count
/// (`10.0.0.0/8`, `fd00::/8`; a bare address is a range of one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `--metrics-allow` value is not a range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCidr {
    #[error("'{0}' is not an IP address (want ADDR or ADDR/BITS, e.g. 10.0.0.0/8)")]
    Address(String),
    #[error("'{0}' is not a prefix length of 0..={1} bits")]
    Prefix(String, u8),
    #[error("{0} has bits set past its /{1}: write the network address")]
    HostBits(IpAddr, u8),
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(text: &str) -> Result<Cidr, BadCidr> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| BadCidr::Address(addr_text.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            // Digits only, no leading zero: `/08` or `/+8` are refused.
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max && n.to_string() == p)
                .ok_or_else(|| BadCidr::Prefix(p.to_string(), max))?,
        };
        let cidr = Cidr { addr, prefix };
        if cidr.network_bits(addr) != bits(addr) {
            return Err(BadCidr::HostBits(addr, prefix));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An address as a 128-bit number (IPv4 in the low 32 bits).
fn bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Cidr {
    /// `addr` with the bits past the prefix cleared.
    fn network_bits(&self, addr: IpAddr) -> u128 {
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let host = width - u32::from(self.prefix);
        if host == 128 {
            0
        } else {
            (bits(addr) >> host) << host
        }
    }

    /// Whether `ip` is inside the range. An IPv4 peer seen as an
    /// IPv4-mapped IPv6 address (a listener on `::`) counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && self.network_bits(ip) == bits(self.addr)
    }
}

/// What a report request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Allowed,
    /// 401: a token is needed (or the one given is not an admin's).
    Unauthorized,
    /// 403: this address may not read reports.
    Forbidden,
}

/// Decides whether `peer`, which presented `bearer` (the credentials of
/// an `Authorization: Bearer` header), may read reports; `accounts` with
/// `--auth`.
pub(super) fn decide(
    peer: IpAddr,
    allow: &[Cidr],
    accounts: Option<&Accounts>,
    bearer: Option<&str>,
    now: SystemTime,
) -> Access {
    if allow.iter().any(|range| range.contains(peer)) {
        return Access::Allowed;
    }
    match accounts {
        Some(accounts) => match bearer {
            Some(token) if is_admin_token(accounts, token.as_bytes(), now) => Access::Allowed,
            _ => Access::Unauthorized,
        },
        None if allow.is_empty() && peer.to_canonical().is_loopback() => Access::Allowed,
        None => Access::Forbidden,
    }
}

/// Whether `presented` is the token of an admin account whose secret has
/// not expired. Its digest is compared with every admin token's, in
/// constant time, whichever matches.
fn is_admin_token(accounts: &Accounts, presented: &[u8], now: SystemTime) -> bool {
    if presented.len() > MAX_PRESENTED_LEN || !looks_like_token(presented) {
        return false;
    }
    let digest = token_digest(presented);
    let mut matched = subtle::Choice::from(0);
    for account in accounts.iter() {
        let Secret::Token(stored) = &account.secret else {
            continue;
        };
        if !account.roles.contains(Roles::ADMIN)
            || account.expires.is_some_and(|e| e.has_passed(now))
        {
            continue;
        }
        matched |= digest.ct_eq(stored);
    }
    matched.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_hold_the_addresses_under_their_prefix() {
        let ten: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(!ten.contains(ip("11.0.0.1")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!ten.contains(ip("::1")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")));
        assert!(!v6.contains(ip("fe80::1")));
        let every6: Cidr = "::/0".parse().unwrap();
        assert!(every6.contains(ip("2001:db8::1")));
        assert!(!every6.contains(ip("127.0.0.1")));
    }

    #[test]
    fn a_range_that_is_not_one_is_refused_with_why() {
        for (text, want) in [
            ("10.0.0.0/33", "is not a prefix length of 0..=32 bits"),
            ("::/129", "is not a prefix length of 0..=128 bits"),
            ("10.0.0.0/", "is not a prefix length"),
            ("10.0.0.0/08", "is not a prefix length"),
            ("10.0.0.0/+8", "is not a prefix length"),
            ("10.0.0.1/8", "has bits set past its /8"),
            ("ten/8", "is not an IP address"),
            ("", "is not an IP address"),
        ] {
            let error = text.parse::<Cidr>().unwrap_err().to_string();
            assert!(error.contains(want), "{text}: {error}");
        }
    }

    #[test]
    fn without_accounts_loopback_reads_unless_ranges_are_named() {
        let now = SystemTime::now();
        let lo = ip("127.0.0.1");
        let far = ip("192.0.2.1");
        assert_eq!(decide(lo, &[], None, None, now), Access::Allowed);
        assert_eq!(decide(ip("::1"), &[], None, None, now), Access::Allowed);
        assert_eq!(decide(far, &[], None, None, now), Access::Forbidden);
        let allow = ["192.0.2.0/24".parse().unwrap()];
        assert_eq!(decide(far, &allow, None, None, now), Access::Allowed);
        assert_eq!(decide(lo, &allow, None, None, now), Access::Forbidden);
    }
}
