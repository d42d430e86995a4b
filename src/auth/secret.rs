//! Secrets: what the accounts file stores (an argon2id PHC string for a
//! password, `sha256:<64 hex>` for a token) and what a client presents.
//! Nothing here ever formats a secret or a hash into a message: the
//! `Debug` impls are written by hand to say only which kind it is.
//!
//! A token is `evt_` and 64 hex digits (256 random bits); a presented
//! secret that starts `evt_` takes the token path (SHA-256, compared in
//! constant time), anything else the password path (argon2id), whatever
//! the account holds. So the work done depends only on what was sent,
//! never on whether the account exists or what kind of secret it has.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// What a presented token starts with.
pub const TOKEN_PREFIX: &str = "evt_";
/// The longest secret field in the file (a PHC string with the largest
/// parameters allowed is about 130 characters).
pub const MAX_SECRET_FIELD_LEN: usize = 256;
/// The longest secret a client may present, password or token.
pub const MAX_PRESENTED_LEN: usize = 256;
/// Bounds on argon2 parameters accepted from the file, so that one
/// verification can neither exhaust memory nor hold the worker for long:
/// memory in KiB (256 MiB), passes, lanes.
pub const MAX_M_COST: u32 = 256 * 1024;
pub const MAX_T_COST: u32 = 16;
pub const MAX_P_COST: u32 = 8;

const SHA256_PREFIX: &str = "sha256:";

/// A stored secret, as the accounts file holds it.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// A password's argon2id hash: the PHC string as written, and its parts.
    Password(Box<PasswordDigest>),
    /// A token's SHA-256.
    Token([u8; 32]),
}

/// An argon2id PHC string, checked and parsed once at load.
#[derive(Clone)]
pub struct PasswordDigest {
    text: String,
    parsed: PasswordHash,
}

impl PartialEq for PasswordDigest {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for PasswordDigest {}

/// Why a secret field is refused. Never carries the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadSecret {
    #[error("the secret is longer than {MAX_SECRET_FIELD_LEN} characters")]
    TooLong,
    #[error(
        "the secret is neither an argon2id PHC string ($argon2id$...) nor sha256: and 64 hex digits"
    )]
    Kind,
    #[error(
        "the password hash is not a valid argon2id PHC string (version 19, with salt and hash)"
    )]
    BadPhc,
    #[error(
        "the password hash's argon2 parameters are beyond this server's limits \
         (m ≤ {MAX_M_COST} KiB, t ≤ {MAX_T_COST}, p ≤ {MAX_P_COST})"
    )]
    Cost,
    #[error("the token digest is not sha256: and 64 hex digits (lower case)")]
    BadDigest,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<argon2id hash, not shown>)"),
            Secret::Token(_) => f.write_str("Token(<sha256 digest, not shown>)"),
        }
    }
}

impl fmt::Debug for PasswordDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordDigest(<not shown>)")
    }
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Checks a PHC string: argon2id, version 19, salt and hash present,
/// parameters within bounds.
fn parse_phc(text: &str) -> Result<PasswordDigest, BadSecret> {
    let parsed = PasswordHash::new(text).map_err(|_| BadSecret::BadPhc)?;
    if parsed.algorithm.as_str() != "argon2id"
        || parsed.version != Some(0x13)
        || parsed.salt.is_none()
        || parsed.hash.is_none()
    {
        return Err(BadSecret::BadPhc);
    }
    let params = Params::try_from(&parsed).map_err(|_| BadSecret::BadPhc)?;
    if params.m_cost() > MAX_M_COST || params.t_cost() > MAX_T_COST || params.p_cost() > MAX_P_COST
    {
        return Err(BadSecret::Cost);
    }
    Ok(PasswordDigest {
        text: text.to_string(),
        parsed,
    })
}

impl Secret {
    /// Parses the file's secret field.
    pub fn parse(field: &str) -> Result<Secret, BadSecret> {
        if field.len() > MAX_SECRET_FIELD_LEN {
            return Err(BadSecret::TooLong);
        }
        if field.starts_with("$argon2id$") {
            return parse_phc(field).map(|p| Secret::Password(Box::new(p)));
        }
        if let Some(hex) = field.strip_prefix(SHA256_PREFIX) {
            let hex = hex.as_bytes();
            if hex.len() != 64 {
                return Err(BadSecret::BadDigest);
            }
            let mut digest = [0u8; 32];
            for (i, pair) in hex.chunks(2).enumerate() {
                let (Some(hi), Some(lo)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
                    return Err(BadSecret::BadDigest);
                };
                digest[i] = hi << 4 | lo;
            }
            return Ok(Secret::Token(digest));
        }
        Err(BadSecret::Kind)
    }

    /// The file's field for this secret: what [`Secret::parse`] reads.
    pub fn to_field(&self) -> String {
        match self {
            Secret::Password(p) => p.text.clone(),
            Secret::Token(digest) => format!("{SHA256_PREFIX}{}", to_hex(digest)),
        }
    }

    /// The stored form of a token.
    pub fn for_token(token: &Credential) -> Secret {
        Secret::Token(token_digest(token.as_bytes()))
    }

    /// Hashes a password with argon2id and the argon2 crate's default
    /// parameters (OWASP's minimum: 19 MiB, 2 passes, 1 lane) and a random
    /// salt from the operating system.
    pub fn for_password(password: &Credential) -> Result<Secret, argon2::password_hash::Error> {
        Self::for_password_with(password, Params::default())
    }

    /// As [`Secret::for_password`], with other parameters (the tests use
    /// cheap ones).
    pub fn for_password_with(
        password: &Credential,
        params: Params,
    ) -> Result<Secret, argon2::password_hash::Error> {
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let hash: PasswordHash = hasher.hash_password(password.as_bytes())?;
        let text = hash.to_string();
        parse_phc(&text)
            .map(|p| Secret::Password(Box::new(p)))
            .map_err(|_| argon2::password_hash::Error::Crypto)
    }

    /// "password" or "token", for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Password(_) => "password",
            Secret::Token(_) => "token",
        }
    }
}

/// The SHA-256 of a token as presented (prefix included).
pub fn token_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Whether a presented secret takes the token path.
pub fn looks_like_token(presented: &[u8]) -> bool {
    presented.starts_with(TOKEN_PREFIX.as_bytes())
}

/// Compares a presented token with a stored digest in constant time.
pub fn token_matches(presented: &[u8], stored: &[u8; 32]) -> bool {
    token_digest(presented).ct_eq(stored).into()
}

/// Runs argon2id on a presented password with the stored hash's own
/// parameters and salt.
pub fn password_matches(presented: &[u8], stored: &PasswordDigest) -> bool {
    Argon2::default()
        .verify_password(presented, &stored.parsed)
        .is_ok()
}

impl PasswordDigest {
    /// The argon2 parameters of this hash.
    pub fn params(&self) -> Params {
        // Checked at parse.
        Params::try_from(&self.parsed).unwrap_or_default()
    }

    /// A hash with these parameters that no password is expected to match
    /// (zero salt, zero output): verifying against it costs what a real
    /// verification with the same parameters costs. Used for unknown
    /// accounts and accounts that hold a token.
    pub fn dummy(params: &Params) -> PasswordDigest {
        let text = format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost(),
            "A".repeat(22),
            "A".repeat(43)
        );
        parse_phc(&text).unwrap_or_else(|_| {
            // Only reachable with parameters outside the bounds, which
            // callers take from checked hashes or the defaults.
            parse_phc(DEFAULT_DUMMY).expect("the default dummy hash parses")
        })
    }
}

const DEFAULT_DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// A secret as a client presents it (or as `evchat user` reads it): its
/// bytes are overwritten when it is dropped and never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(Vec<u8>);

impl Credential {
    /// Takes the bytes.
    pub fn new(bytes: Vec<u8>) -> Credential {
        Credential(bytes)
    }

    /// The bytes, for the one place that must read them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A new token: `evt_` and 64 hex digits of 256 bits from the
    /// operating system's random source.
    pub fn generate_token() -> Result<Credential, getrandom::Error> {
        let mut bits = [0u8; 32];
        getrandom::fill(&mut bits)?;
        let token = format!("{TOKEN_PREFIX}{}", to_hex(&bits));
        bits.fill(0);
        Ok(Credential(token.into_bytes()))
    }
}

impl Drop for Credential {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // A volatile write, so that the compiler keeps it although
            // the memory is freed right after.
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential(<{} bytes, not shown>)", self.0.len())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Cheap argon2 parameters for tests: 8 KiB, one pass.
    pub(crate) fn cheap() -> Params {
        Params::new(8, 1, 1, None).unwrap()
    }

    fn cred(s: &str) -> Credential {
        Credential::new(s.as_bytes().to_vec())
    }

    #[test]
    fn token_digests_round_trip_through_the_field() {
        let field = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let secret = Secret::parse(&field).unwrap();
        assert_eq!(secret.to_field(), field);
        assert_eq!(secret.kind(), "token");
    }

    #[test]
    fn bad_secret_fields() {
        assert_eq!(Secret::parse("hunter2"), Err(BadSecret::Kind));
        assert_eq!(
            Secret::parse("$argon2i$v=19$m=8,t=1,p=1$AAAA$AAAA"),
            Err(BadSecret::Kind)
        );
        assert_eq!(Secret::parse("sha256:abc"), Err(BadSecret::BadDigest));
        let upper = format!("sha256:{}", "ABCDEF0123456789".repeat(4));
        assert_eq!(Secret::parse(&upper), Err(BadSecret::BadDigest));
        assert_eq!(Secret::parse("$argon2id$nonsense"), Err(BadSecret::BadPhc));
        let v16 = "$argon2id$v=16$m=8,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(Secret::parse(v16), Err(BadSecret::BadPhc));
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert_eq!(Secret::parse(huge), Err(BadSecret::Cost));
        assert_eq!(Secret::parse(&"x".repeat(257)), Err(BadSecret::TooLong));
    }

    #[test]
    fn passwords_verify_against_their_hash_only() {
        let Secret::Password(stored) =
            Secret::for_password_with(&cred("correct horse"), cheap()).unwrap()
        else {
            panic!("a password hash")
        };
        assert!(password_matches(b"correct horse", &stored));
        assert!(!password_matches(b"correct hors", &stored));
        assert!(!password_matches(b"", &stored));
        let reparsed = Secret::parse(&Secret::Password(stored.clone()).to_field()).unwrap();
        assert_eq!(reparsed, Secret::Password(stored));
    }

    #[test]
    fn tokens_verify_against_their_digest_only() {
        let token = Credential::generate_token().unwrap();
        let text = std::str::from_utf8(token.as_bytes()).unwrap().to_string();
        assert_eq!(text.len(), 4 + 64);
        assert!(text.starts_with("evt_"));
        assert!(
            text[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        let Secret::Token(digest) = Secret::for_token(&token) else {
            panic!("a token digest")
        };
        assert!(token_matches(token.as_bytes(), &digest));
        let mut wrong = token.as_bytes().to_vec();
        wrong[10] ^= 1;
        assert!(!token_matches(&wrong, &digest));
        assert_ne!(Credential::generate_token().unwrap(), token);
    }

    #[test]
    fn the_dummy_has_the_parameters_it_was_given() {
        let dummy = PasswordDigest::dummy(&cheap());
        assert_eq!(dummy.params().m_cost(), 8);
        assert_eq!(dummy.params().t_cost(), 1);
        assert!(!password_matches(b"", &dummy));
        let default = PasswordDigest::dummy(&Params::default());
        assert_eq!(default.params().m_cost(), Params::DEFAULT_M_COST);
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let token = cred("evt_00112233");
        assert_eq!(format!("{token:?}"), "Credential(<12 bytes, not shown>)");
        let field = format!("sha256:{}", "ab".repeat(32));
        let shown = format!("{:?}", Secret::parse(&field).unwrap());
        assert!(!shown.contains("abab"), "{shown}");
        let password = Secret::for_password_with(&cred("pw"), cheap()).unwrap();
        let shown = format!("{password:?}");
        assert!(!shown.contains("argon2id$"), "{shown}");
    }
}
