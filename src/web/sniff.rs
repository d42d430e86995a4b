//! Telling HTTP, TLS and the binary protocol apart by a new connection's
//! first bytes, so that one port serves them all: the binary path judges
//! everything that is neither an HTTP request line nor a TLS record.

/// Longest method name taken for the start of an HTTP request line.
const MAX_METHOD_LEN: usize = 7;
/// The content type of a TLS handshake record, a TLS connection's first byte.
const TLS_HANDSHAKE: u8 = 0x16;

/// What the first bytes of a connection say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// The binary protocol (every frame starts with byte 0) or anything that
    /// is not an HTTP request line: the binary path judges it.
    Binary,
    /// An HTTP request line: a method in capitals, then a space.
    Http,
    /// A TLS record: its content type, 22 (handshake), comes first.
    Tls,
    /// Too few bytes to tell yet.
    Undecided,
}

/// Tells HTTP from the binary protocol by the first bytes. A protocol frame
/// begins with `00` (its type is a big-endian u16 below 256), so any
/// capital letter first means "not a valid frame"; only a capitalised word
/// followed by a space is taken for HTTP. A ClientHello's record begins
/// with 0x16, which no frame does either: that is TLS. Everything else
/// stays binary.
pub fn sniff(first: &[u8]) -> Sniff {
    if first.first() == Some(&TLS_HANDSHAKE) {
        return Sniff::Tls;
    }
    for (i, &b) in first.iter().enumerate().take(MAX_METHOD_LEN + 1) {
        match b {
            b'A'..=b'Z' => {}
            b' ' if i > 0 => return Sniff::Http,
            _ => return Sniff::Binary,
        }
    }
    if first.len() > MAX_METHOD_LEN {
        Sniff::Binary
    } else {
        Sniff::Undecided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffing_takes_only_a_capitalised_word_and_a_space_for_http() {
        assert_eq!(sniff(b""), Sniff::Undecided);
        assert_eq!(sniff(b"\x00"), Sniff::Binary);
        assert_eq!(sniff(b"G"), Sniff::Undecided);
        assert_eq!(sniff(b"GE"), Sniff::Undecided);
        assert_eq!(sniff(b"GET "), Sniff::Http);
        assert_eq!(sniff(b"POST /"), Sniff::Http);
        assert_eq!(sniff(b"OPTIONS "), Sniff::Http);
        assert_eq!(sniff(b"Get "), Sniff::Binary);
        assert_eq!(sniff(b" GET"), Sniff::Binary);
        assert_eq!(sniff(b"GETTINGS"), Sniff::Binary);
        // Seven capitals may still be a method; an eighth is too long.
        assert_eq!(sniff(b"OPTIONS"), Sniff::Undecided);
        assert_eq!(sniff(b"CONNECTS"), Sniff::Binary);
        assert_eq!(sniff(b"CONNECTS /"), Sniff::Binary);
        assert_eq!(sniff(b"GET\x00"), Sniff::Binary);
    }

    #[test]
    fn sniffing_takes_a_first_byte_of_0x16_for_tls() {
        assert_eq!(sniff(b"\x16"), Sniff::Tls);
        assert_eq!(sniff(b"\x16\x03\x01\x02\x00"), Sniff::Tls);
        assert_eq!(sniff(b"\x00\x16"), Sniff::Binary);
        assert_eq!(sniff(b"\x15"), Sniff::Binary);
    }
}
