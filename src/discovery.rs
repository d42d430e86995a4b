//! LAN discovery's datagrams (PROTOCOL.md, "Discovery"): the query that
//! `evchat find` broadcasts and the answer a `server --announce` sends
//! back, as bytes and values. No sockets here: the server's side is
//! `server/announce.rs`, the finder's `client/find.rs`.
//!
//! ```text
//! query (exactly 128 bytes):
//!   0..4   magic "EVCD"
//!   4      version 1
//!   5      kind 1 (query)
//!   6..8   0
//!   8..12  nonce (u32, big-endian; the answer carries it back)
//!   12..128 0
//! answer (14 + N bytes, at most 77):
//!   0..4   magic "EVCD"
//!   4      version 1
//!   5      kind 2 (answer)
//!   6      flags: bit 0 TLS wanted, bit 1 accounts required; others 0
//!   7      N, the name's length (1..=63)
//!   8..12  nonce of the query answered
//!   12..14 TCP port (u16, big-endian)
//!   14..   the name, N bytes of UTF-8 without control characters
//! ```
//!
//! The query is padded to more than any answer, so that a forged source
//! address can never make the server send more bytes than were sent to it.

/// The first four bytes of every discovery datagram.
pub const MAGIC: [u8; 4] = *b"EVCD";
/// The only version there is.
pub const VERSION: u8 = 1;
const KIND_QUERY: u8 = 1;
const KIND_ANSWER: u8 = 2;
/// A query's exact length.
pub const QUERY_LEN: usize = 128;
/// The longest name an answer carries.
pub const MAX_NAME: usize = 63;
/// An answer's fixed part, before the name.
const ANSWER_HEAD: usize = 14;
/// The longest answer.
pub const MAX_ANSWER_LEN: usize = ANSWER_HEAD + MAX_NAME;
// No answer is larger than the query it answers (no amplification).
const _: () = assert!(MAX_ANSWER_LEN < QUERY_LEN);
const FLAG_TLS: u8 = 1;
const FLAG_ACCOUNTS: u8 = 2;

/// Why a datagram is not a discovery query or answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    #[error("{0} bytes: not the length of a discovery datagram")]
    Length(usize),
    #[error("no discovery magic")]
    Magic,
    #[error("discovery version {0}, not 1")]
    Version(u8),
    #[error("kind {0}, not the one expected")]
    Kind(u8),
    #[error("a byte that must be 0 is not")]
    NotZero,
    #[error("a name of {0} bytes (1..=63)")]
    NameLength(usize),
    #[error("the name is not UTF-8 without control characters")]
    Name,
}

/// `evchat find`'s question: which servers are there?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    /// Chosen by the asker, carried back by each answer.
    pub nonce: u32,
}

impl Query {
    pub fn encode(&self) -> [u8; QUERY_LEN] {
        let mut bytes = [0u8; QUERY_LEN];
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[4] = VERSION;
        bytes[5] = KIND_QUERY;
        bytes[8..12].copy_from_slice(&self.nonce.to_be_bytes());
        bytes
    }

    /// A query, or why `bytes` is none (the server then stays silent).
    pub fn decode(bytes: &[u8]) -> Result<Query, DiscoveryError> {
        if bytes.len() != QUERY_LEN {
            return Err(DiscoveryError::Length(bytes.len()));
        }
        head(bytes, KIND_QUERY)?;
        if bytes[6..8] != [0, 0] || bytes[12..].iter().any(|&b| b != 0) {
            return Err(DiscoveryError::NotZero);
        }
        Ok(Query {
            nonce: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
        })
    }
}

/// A server's answer: what a client needs to connect, and to decide to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub nonce: u32,
    /// The TCP port the server listens on.
    pub port: u16,
    /// The server wants TLS on that port.
    pub tls: bool,
    /// The server requires an account (`--auth`).
    pub accounts: bool,
    /// Its `--name`, or its host name (see [`server_name`]).
    pub name: String,
}

impl Answer {
    /// The answer's bytes. The name must be one [`server_name`] made.
    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(valid_name(self.name.as_bytes()));
        let mut bytes = Vec::with_capacity(ANSWER_HEAD + self.name.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VERSION);
        bytes.push(KIND_ANSWER);
        bytes.push((u8::from(self.tls) * FLAG_TLS) | (u8::from(self.accounts) * FLAG_ACCOUNTS));
        bytes.push(self.name.len() as u8);
        bytes.extend_from_slice(&self.nonce.to_be_bytes());
        bytes.extend_from_slice(&self.port.to_be_bytes());
        bytes.extend_from_slice(self.name.as_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Answer, DiscoveryError> {
        if !(ANSWER_HEAD + 1..=MAX_ANSWER_LEN).contains(&bytes.len()) {
            return Err(DiscoveryError::Length(bytes.len()));
        }
        head(bytes, KIND_ANSWER)?;
        let flags = bytes[6];
        if flags & !(FLAG_TLS | FLAG_ACCOUNTS) != 0 {
            return Err(DiscoveryError::NotZero);
        }
        let len = usize::from(bytes[7]);
        if !(1..=MAX_NAME).contains(&len) {
            return Err(DiscoveryError::NameLength(len));
        }
        if bytes.len() != ANSWER_HEAD + len {
            return Err(DiscoveryError::Length(bytes.len()));
        }
        let name = &bytes[ANSWER_HEAD..];
        if !valid_name(name) {
            return Err(DiscoveryError::Name);
        }
        Ok(Answer {
            nonce: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            port: u16::from_be_bytes([bytes[12], bytes[13]]),
            tls: flags & FLAG_TLS != 0,
            accounts: flags & FLAG_ACCOUNTS != 0,
            name: String::from_utf8_lossy(name).into_owned(),
        })
    }
}

/// Magic, version and kind.
fn head(bytes: &[u8], kind: u8) -> Result<(), DiscoveryError> {
    if bytes[..4] != MAGIC {
        return Err(DiscoveryError::Magic);
    }
    if bytes[4] != VERSION {
        return Err(DiscoveryError::Version(bytes[4]));
    }
    if bytes[5] != kind {
        return Err(DiscoveryError::Kind(bytes[5]));
    }
    Ok(())
}

fn valid_name(name: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && std::str::from_utf8(name).is_ok_and(|s| !s.chars().any(char::is_control))
}

/// The name a server announces: `wanted` without control characters, cut
/// to [`MAX_NAME`] bytes at a character's boundary; `None` if nothing is
/// left.
pub fn server_name(wanted: &str) -> Option<String> {
    let mut name = String::new();
    for c in wanted.trim().chars().filter(|c| !c.is_control()) {
        if name.len() + c.len_utf8() > MAX_NAME {
            break;
        }
        name.push(c);
    }
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_128_bytes_with_its_nonce_at_8() {
        let bytes = Query { nonce: 0x0102_0304 }.encode();
        assert_eq!(bytes[..12], *b"EVCD\x01\x01\x00\x00\x01\x02\x03\x04");
        assert!(bytes[12..].iter().all(|&b| b == 0));
        assert_eq!(Query::decode(&bytes), Ok(Query { nonce: 0x0102_0304 }));
    }

    #[test]
    fn a_truncated_or_padded_query_is_refused() {
        let bytes = Query { nonce: 7 }.encode();
        assert_eq!(
            Query::decode(&bytes[..127]),
            Err(DiscoveryError::Length(127))
        );
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert_eq!(Query::decode(&longer), Err(DiscoveryError::Length(129)));
        assert_eq!(Query::decode(&[]), Err(DiscoveryError::Length(0)));
    }

    #[test]
    fn a_forged_query_is_refused_field_by_field() {
        let good = Query { nonce: 7 }.encode();
        let forged = |at: usize, value: u8| {
            let mut bytes = good;
            bytes[at] = value;
            Query::decode(&bytes)
        };
        assert_eq!(forged(0, b'X'), Err(DiscoveryError::Magic));
        assert_eq!(forged(4, 2), Err(DiscoveryError::Version(2)));
        assert_eq!(forged(5, 2), Err(DiscoveryError::Kind(2)));
        assert_eq!(forged(6, 1), Err(DiscoveryError::NotZero));
        assert_eq!(forged(127, 1), Err(DiscoveryError::NotZero));
    }

    #[test]
    fn an_answer_round_trips_and_is_never_longer_than_a_query() {
        let answer = Answer {
            nonce: 9,
            port: 5000,
            tls: false,
            accounts: true,
            name: "lab-pc".to_string(),
        };
        let bytes = answer.encode();
        assert_eq!(bytes, b"EVCD\x01\x02\x02\x06\x00\x00\x00\x09\x13\x88lab-pc");
        assert_eq!(Answer::decode(&bytes), Ok(answer));
    }

    #[test]
    fn a_bad_answer_is_refused() {
        let good = b"EVCD\x01\x02\x01\x01\x00\x00\x00\x01\x13\x88a".to_vec();
        assert!(Answer::decode(&good).is_ok());
        let with = |at: usize, value: u8| {
            let mut bytes = good.clone();
            bytes[at] = value;
            Answer::decode(&bytes)
        };
        assert_eq!(with(6, 4), Err(DiscoveryError::NotZero));
        assert_eq!(with(7, 2), Err(DiscoveryError::Length(15)));
        assert_eq!(with(7, 0), Err(DiscoveryError::NameLength(0)));
        assert_eq!(with(14, b'\n'), Err(DiscoveryError::Name));
        assert_eq!(with(14, 0xff), Err(DiscoveryError::Name));
        assert_eq!(Answer::decode(&good[..14]), Err(DiscoveryError::Length(14)));
    }

    #[test]
    fn a_name_is_cut_at_63_bytes_on_a_character_boundary() {
        assert_eq!(server_name("  lab\tpc \n").as_deref(), Some("labpc"));
        assert_eq!(server_name("\n\t"), None);
        let long = "é".repeat(40);
        let cut = server_name(&long).unwrap();
        assert_eq!(cut.len(), 62);
        assert_eq!(server_name(&"x".repeat(70)).unwrap().len(), 63);
    }
}
