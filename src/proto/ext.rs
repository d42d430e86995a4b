//! The identity extension's four frames (PROTOCOL.md, "Extension: identity"):
//! HELLO 8, HELLOACK 9, WHO 10, KICK 11. Each is the 8-byte header, a
//! length L (u16) and L bytes of body:
//!
//! ```text
//!  HELLO    (8):  header | L | version (u8) | NL (u8) | name | SL (u16) | secret
//!  HELLOACK (9):  header | L | code (u8) | version (u8) | roles (u8) | NL (u8) | name
//!  WHO     (10):  header | L | id (u16) | roles (u8) | NL (u8) | name
//!  KICK    (11):  header | L = 0
//! ```
//!
//! They are kept apart from [`Kind`](super::Kind) on purpose: to the plain
//! codec ([`Frame::decode`](super::Frame::decode),
//! [`FrameView::parse`](super::FrameView::parse)) a type 8..=11 stays an
//! unknown type, which is what it is for a client that has not opted in
//! (rule 7). The server reads these frames with [`ExtFrame::parse`] only
//! where the extension allows them, so the per-MSG path is untouched.
//!
//! The whole length is known from the first 10 bytes; an L over the type's
//! limit is refused then, before the body arrives, and a body whose fields
//! do not add up to L is refused too. Like the plain codec, `Ok(None)` and
//! `Err` consume nothing.

use super::{ClientId, HEADER_LEN, Header};
use bytes::{BufMut, BytesMut};
use std::fmt;

/// HELLO's type field.
pub const HELLO: u16 = 8;
/// HELLOACK's type field.
pub const HELLOACK: u16 = 9;
/// WHO's type field.
pub const WHO: u16 = 10;
/// KICK's type field.
pub const KICK: u16 = 11;
/// The extension's version, carried in HELLO and HELLOACK.
pub const VERSION: u8 = 1;
/// The longest name a HELLO may carry (a longer one that is not a name is
/// refused as malformed; one within it is judged by the name rule).
pub const MAX_HELLO_NAME_LEN: usize = 64;
/// The longest secret a HELLO may carry.
pub const MAX_SECRET_LEN: usize = 256;
/// The longest name the server sends (the name rule's 24).
pub const MAX_SENT_NAME_LEN: usize = 24;
/// The largest L of each type.
pub const MAX_HELLO_BODY: usize = 4 + MAX_HELLO_NAME_LEN + MAX_SECRET_LEN;
pub const MAX_HELLOACK_BODY: usize = 4 + MAX_SENT_NAME_LEN;
pub const MAX_WHO_BODY: usize = 4 + MAX_SENT_NAME_LEN;
/// The largest extension frame on the wire.
pub const MAX_EXT_FRAME_LEN: usize = HEADER_LEN + 2 + MAX_HELLO_BODY;

/// The roles byte's bits (PROTOCOL.md, "Roles"): register an exhibitor.
pub const ROLE_VIEW: u8 = 1;
/// Register an emitter; MSG and CREQ to one client.
pub const ROLE_EMIT: u8 = 2;
/// MSG and CREQ to 0 (everyone).
pub const ROLE_BROADCAST: u8 = 4;
/// KICK.
pub const ROLE_ADMIN: u8 = 8;
/// What every session holds on a server without accounts: all but admin.
pub const PLAIN_ROLES: u8 = ROLE_VIEW | ROLE_EMIT | ROLE_BROADCAST;

/// Whether a type field names one of the extension's frames.
pub fn is_ext_kind(kind: u16) -> bool {
    (HELLO..=KICK).contains(&kind)
}

/// HELLOACK's codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Code {
    Accepted = 0,
    AccountsRequired = 1,
    Refused = 2,
    NameTaken = 3,
    BadName = 4,
    TooManyFailures = 5,
    Busy = 6,
    NoAccounts = 7,
    Malformed = 8,
    Version = 9,
}

impl Code {
    /// The code for a byte, if it is one of the ten.
    pub fn from_u8(value: u8) -> Option<Code> {
        Some(match value {
            0 => Code::Accepted,
            1 => Code::AccountsRequired,
            2 => Code::Refused,
            3 => Code::NameTaken,
            4 => Code::BadName,
            5 => Code::TooManyFailures,
            6 => Code::Busy,
            7 => Code::NoAccounts,
            8 => Code::Malformed,
            9 => Code::Version,
            _ => return None,
        })
    }

    /// Whether the server closes the connection after this answer.
    pub fn closes(self) -> bool {
        matches!(
            self,
            Code::AccountsRequired
                | Code::Refused
                | Code::TooManyFailures
                | Code::Busy
                | Code::Malformed
                | Code::Version
        )
    }
}

/// A presented secret: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> SecretBytes {
        SecretBytes(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<secret, {} bytes>", self.0.len())
    }
}

/// HELLO: a client opts in, signs in or claims a name. The name is bytes
/// as sent (the name rule is the server's to apply: code 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    pub version: u8,
    pub name: Vec<u8>,
    pub secret: SecretBytes,
}

/// HELLOACK: the answer to a HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAck {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    /// The raw code byte (see [`Code`]).
    pub code: u8,
    pub version: u8,
    pub roles: u8,
    pub name: Vec<u8>,
}

/// WHO: the name behind an id, to an opted-in exhibitor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    pub id: ClientId,
    pub roles: u8,
    pub name: Vec<u8>,
}

/// One extension frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtFrame {
    Hello(Hello),
    HelloAck(HelloAck),
    Who(Who),
    /// KICK: origin is the kicker, dest the id to close.
    Kick(Header),
}

/// Why bytes are not an extension frame. Each carries the header, so the
/// peer can be answered with its seq.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtError {
    /// The type is not one of the extension's.
    #[error("frame type {} is not an extension frame", .0.kind)]
    NotExtension(Header),
    /// L over the type's limit, a field over its limit, or fields that do
    /// not add up to L.
    #[error("malformed extension frame of type {}", .0.kind)]
    Malformed(Header),
}

impl ExtError {
    pub fn header(&self) -> Header {
        match self {
            ExtError::NotExtension(h) | ExtError::Malformed(h) => *h,
        }
    }
}

fn max_body(kind: u16) -> usize {
    match kind {
        HELLO => MAX_HELLO_BODY,
        HELLOACK => MAX_HELLOACK_BODY,
        WHO => MAX_WHO_BODY,
        _ => 0,
    }
}

impl ExtFrame {
    /// The whole extension frame at the start of `buf`, and the bytes it
    /// takes. `Ok(None)`: not enough bytes yet (and none of what is there
    /// is wrong). `Err`: not an extension type, or malformed; decided from
    /// the first 10 bytes when L is over the limit. Consumes nothing.
    pub fn parse(buf: &[u8]) -> Result<Option<(ExtFrame, usize)>, ExtError> {
        let Some(header) = Header::peek(buf) else {
            return Ok(None);
        };
        if !is_ext_kind(header.kind) {
            return Err(ExtError::NotExtension(header));
        }
        let Some(l) = buf.get(HEADER_LEN..HEADER_LEN + 2) else {
            return Ok(None);
        };
        let l = u16::from_be_bytes([l[0], l[1]]) as usize;
        if l > max_body(header.kind) {
            return Err(ExtError::Malformed(header));
        }
        let len = HEADER_LEN + 2 + l;
        let Some(body) = buf.get(HEADER_LEN + 2..len) else {
            return Ok(None);
        };
        let bad = || ExtError::Malformed(header);
        let (origin, dest, seq) = (header.origin, header.dest, header.seq);
        let frame = match header.kind {
            HELLO => {
                let [version, nl, rest @ ..] = body else {
                    return Err(bad());
                };
                let nl = *nl as usize;
                if nl > MAX_HELLO_NAME_LEN || rest.len() < nl + 2 {
                    return Err(bad());
                }
                let (name, rest) = rest.split_at(nl);
                let sl = u16::from_be_bytes([rest[0], rest[1]]) as usize;
                let secret = &rest[2..];
                if sl > MAX_SECRET_LEN || secret.len() != sl {
                    return Err(bad());
                }
                ExtFrame::Hello(Hello {
                    origin,
                    dest,
                    seq,
                    version: *version,
                    name: name.to_vec(),
                    secret: SecretBytes::new(secret.to_vec()),
                })
            }
            HELLOACK => {
                let [code, version, roles, nl, name @ ..] = body else {
                    return Err(bad());
                };
                if name.len() != *nl as usize {
                    return Err(bad());
                }
                ExtFrame::HelloAck(HelloAck {
                    origin,
                    dest,
                    seq,
                    code: *code,
                    version: *version,
                    roles: *roles,
                    name: name.to_vec(),
                })
            }
            WHO => {
                let [id_hi, id_lo, roles, nl, name @ ..] = body else {
                    return Err(bad());
                };
                if name.len() != *nl as usize {
                    return Err(bad());
                }
                ExtFrame::Who(Who {
                    origin,
                    dest,
                    seq,
                    id: u16::from_be_bytes([*id_hi, *id_lo]),
                    roles: *roles,
                    name: name.to_vec(),
                })
            }
            // KICK: L = 0 was checked against its limit above.
            _ => ExtFrame::Kick(header),
        };
        Ok(Some((frame, len)))
    }

    /// The header fields of this frame.
    pub fn header(&self) -> Header {
        let (kind, origin, dest, seq) = match self {
            ExtFrame::Hello(h) => (HELLO, h.origin, h.dest, h.seq),
            ExtFrame::HelloAck(a) => (HELLOACK, a.origin, a.dest, a.seq),
            ExtFrame::Who(w) => (WHO, w.origin, w.dest, w.seq),
            ExtFrame::Kick(h) => return *h,
        };
        Header {
            kind,
            origin,
            dest,
            seq,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            ExtFrame::Hello(h) => {
                4 + h.name.len().min(MAX_HELLO_NAME_LEN)
                    + h.secret.as_bytes().len().min(MAX_SECRET_LEN)
            }
            ExtFrame::HelloAck(a) => 4 + a.name.len().min(MAX_SENT_NAME_LEN),
            ExtFrame::Who(w) => 4 + w.name.len().min(MAX_SENT_NAME_LEN),
            ExtFrame::Kick(_) => 0,
        }
    }
}

impl super::Encode for ExtFrame {
    fn encoded_len(&self) -> usize {
        HEADER_LEN + 2 + self.body_len()
    }

    /// The wire form. A field longer than its limit (built by hand) is cut
    /// to the limit, so that what goes out always parses.
    fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_len());
        let header = self.header();
        // KICK keeps its own type field; the others are fixed by the variant.
        out.put_u16(match self {
            ExtFrame::Kick(_) => KICK,
            _ => header.kind,
        });
        out.put_u16(header.origin);
        out.put_u16(header.dest);
        out.put_u16(header.seq);
        out.put_u16(self.body_len() as u16);
        match self {
            ExtFrame::Hello(h) => {
                let name = &h.name[..h.name.len().min(MAX_HELLO_NAME_LEN)];
                let secret = h.secret.as_bytes();
                let secret = &secret[..secret.len().min(MAX_SECRET_LEN)];
                out.put_u8(h.version);
                out.put_u8(name.len() as u8);
                out.put_slice(name);
                out.put_u16(secret.len() as u16);
                out.put_slice(secret);
            }
            ExtFrame::HelloAck(a) => {
                let name = &a.name[..a.name.len().min(MAX_SENT_NAME_LEN)];
                out.put_slice(&[a.code, a.version, a.roles, name.len() as u8]);
                out.put_slice(name);
            }
            ExtFrame::Who(w) => {
                let name = &w.name[..w.name.len().min(MAX_SENT_NAME_LEN)];
                out.put_u16(w.id);
                out.put_slice(&[w.roles, name.len() as u8]);
                out.put_slice(name);
            }
            ExtFrame::Kick(_) => {}
        }
    }
}

impl ExtFrame {
    /// The wire form as a fresh buffer.
    pub fn to_bytes(&self) -> bytes::Bytes {
        use super::Encode;
        let mut out = BytesMut::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out.freeze()
    }
}

impl fmt::Display for ExtFrame {
    /// The header and the sizes; never a name's bytes or a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = self.header();
        let what = match self {
            ExtFrame::Hello(_) => "HELLO",
            ExtFrame::HelloAck(_) => "HELLOACK",
            ExtFrame::Who(_) => "WHO",
            ExtFrame::Kick(_) => "KICK",
        };
        write!(
            f,
            "{what}(origin {}, dest {}, seq {})",
            h.origin, h.dest, h.seq
        )?;
        match self {
            ExtFrame::HelloAck(a) => write!(f, " code {}", a.code),
            ExtFrame::Who(w) => write!(f, " id {}", w.id),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Encode;
    use super::*;

    /// PROTOCOL.md's HELLO example: version 1, name "alice", secret "pw".
    const HELLO_ALICE: &[u8] = b"\
        \x00\x08\x00\x00\xff\xff\x00\x00\
        \x00\x0b\
        \x01\
        \x05alice\
        \x00\x02pw";

    fn hello_alice() -> ExtFrame {
        ExtFrame::Hello(Hello {
            origin: 0,
            dest: 0xffff,
            seq: 0,
            version: 1,
            name: b"alice".to_vec(),
            secret: SecretBytes::new(b"pw".to_vec()),
        })
    }

    fn examples() -> Vec<(&'static [u8], ExtFrame)> {
        vec![
            (HELLO_ALICE, hello_alice()),
            (
                // HELLOACK: accepted, version 1, roles view+emit, "alice".
                b"\x00\x09\xff\xff\x00\x00\x00\x00\
                  \x00\x09\
                  \x00\x01\x03\
                  \x05alice",
                ExtFrame::HelloAck(HelloAck {
                    origin: 0xffff,
                    dest: 0,
                    seq: 0,
                    code: 0,
                    version: 1,
                    roles: 3,
                    name: b"alice".to_vec(),
                }),
            ),
            (
                // HELLOACK: code 2, no name.
                b"\x00\x09\xff\xff\x00\x00\x00\x00\x00\x04\x02\x01\x00\x00",
                ExtFrame::HelloAck(HelloAck {
                    origin: 0xffff,
                    dest: 0,
                    seq: 0,
                    code: 2,
                    version: 1,
                    roles: 0,
                    name: vec![],
                }),
            ),
            (
                // WHO to 4096, seq 3: id 1 is "alice", view+emit.
                b"\x00\x0a\xff\xff\x10\x00\x00\x03\
                  \x00\x09\
                  \x00\x01\x03\
                  \x05alice",
                ExtFrame::Who(Who {
                    origin: 0xffff,
                    dest: 0x1000,
                    seq: 3,
                    id: 1,
                    roles: 3,
                    name: b"alice".to_vec(),
                }),
            ),
            (
                // KICK from 1, seq 5: close 2.
                b"\x00\x0b\x00\x01\x00\x02\x00\x05\x00\x00",
                ExtFrame::Kick(Header {
                    kind: KICK,
                    origin: 1,
                    dest: 2,
                    seq: 5,
                }),
            ),
        ]
    }

    #[test]
    fn the_specs_examples_decode_and_encode() {
        for (wire, frame) in examples() {
            assert_eq!(ExtFrame::parse(wire), Ok(Some((frame.clone(), wire.len()))));
            assert_eq!(&frame.to_bytes()[..], wire, "{frame}");
            assert_eq!(frame.encoded_len(), wire.len());
        }
    }

    #[test]
    fn every_prefix_waits_and_trailing_bytes_are_left() {
        for (wire, frame) in examples() {
            for end in 0..wire.len() {
                assert_eq!(
                    ExtFrame::parse(&wire[..end]),
                    Ok(None),
                    "{frame} cut at {end}"
                );
            }
            let mut longer = wire.to_vec();
            longer.extend_from_slice(b"\x00\x01rest");
            assert_eq!(
                ExtFrame::parse(&longer),
                Ok(Some((frame.clone(), wire.len())))
            );
        }
    }

    fn malformed(wire: &[u8]) -> bool {
        matches!(ExtFrame::parse(wire), Err(ExtError::Malformed(_)))
    }

    #[test]
    fn an_over_long_l_is_refused_from_the_first_ten_bytes() {
        // HELLO announcing L = 325 (one over 4 + 64 + 256): refused with no body.
        assert!(malformed(b"\x00\x08\x00\x00\xff\xff\x00\x00\x01\x45"));
        // L = 324 waits for its body.
        assert_eq!(
            ExtFrame::parse(b"\x00\x08\x00\x00\xff\xff\x00\x00\x01\x44"),
            Ok(None)
        );
        // HELLOACK and WHO: L = 29 refused; KICK: any L but 0.
        assert!(malformed(b"\x00\x09\xff\xff\x00\x00\x00\x00\x00\x1d"));
        assert!(malformed(b"\x00\x0a\xff\xff\x00\x00\x00\x00\x00\x1d"));
        assert!(malformed(b"\x00\x0b\x00\x01\x00\x02\x00\x05\x00\x01"));
        assert!(malformed(b"\x00\x08\x00\x00\xff\xff\x00\x00\xff\xff"));
    }

    #[test]
    fn fields_that_do_not_add_up_to_l_are_malformed() {
        // HELLO, L = 11 but NL = 6: the secret's length runs past the body.
        assert!(malformed(
            b"\x00\x08\x00\x00\xff\xff\x00\x00\x00\x0b\x01\x06alice\x00\x02pw"
        ));
        // HELLO, L = 12 with a one-byte surplus after the secret.
        assert!(malformed(
            b"\x00\x08\x00\x00\xff\xff\x00\x00\x00\x0c\x01\x05alice\x00\x02pwX"
        ));
        // HELLO shorter than its fixed fields (L = 3).
        assert!(malformed(
            b"\x00\x08\x00\x00\xff\xff\x00\x00\x00\x03\x01\x00\x00"
        ));
        // HELLO with NL = 65, over its limit though L would allow it.
        let mut long_name = b"\x00\x08\x00\x00\xff\xff\x00\x00\x00\x45\x01\x41".to_vec();
        long_name.extend_from_slice(&[b'a'; 65]);
        long_name.extend_from_slice(b"\x00\x00");
        assert!(malformed(&long_name));
        // HELLO with SL = 257.
        let mut long_secret = b"\x00\x08\x00\x00\xff\xff\x00\x00\x01\x05\x01\x00\x01\x01".to_vec();
        long_secret.extend_from_slice(&[b'x'; 257]);
        assert!(malformed(&long_secret));
        // HELLOACK and WHO whose NL disagrees with L.
        assert!(malformed(
            b"\x00\x09\xff\xff\x00\x00\x00\x00\x00\x05\x00\x01\x03\x00X"
        ));
        assert!(malformed(
            b"\x00\x0a\xff\xff\x10\x00\x00\x03\x00\x04\x00\x01\x03\x01"
        ));
    }

    #[test]
    fn limits_are_reached_exactly() {
        // A 64-byte name and a 256-byte secret: L = 324, accepted.
        let frame = ExtFrame::Hello(Hello {
            origin: 0,
            dest: 0xffff,
            seq: 0,
            version: 1,
            name: vec![b'n'; 64],
            secret: SecretBytes::new(vec![b's'; 256]),
        });
        let wire = frame.to_bytes();
        assert_eq!(wire.len(), MAX_EXT_FRAME_LEN);
        assert_eq!(&wire[8..10], b"\x01\x44");
        assert_eq!(ExtFrame::parse(&wire), Ok(Some((frame, wire.len()))));
    }

    #[test]
    fn other_types_are_not_extension_frames() {
        for kind in [1u16, 7, 12, 0xffff] {
            let mut wire = kind.to_be_bytes().to_vec();
            wire.extend_from_slice(b"\x00\x01\x00\x00\x00\x07\x00\x00");
            assert!(matches!(
                ExtFrame::parse(&wire),
                Err(ExtError::NotExtension(h)) if h.kind == kind && h.seq == 7
            ));
        }
        // To the plain codec an extension type is still unknown.
        assert!(super::super::FrameView::parse(HELLO_ALICE).is_err());
    }

    #[test]
    fn a_secret_never_shows() {
        let shown = format!("{:?} {}", hello_alice(), hello_alice());
        assert!(!shown.contains("pw"), "{shown}");
    }

    #[test]
    fn codes_round_trip_and_say_which_close() {
        for byte in 0..=9u8 {
            assert_eq!(Code::from_u8(byte).map(|c| c as u8), Some(byte));
        }
        assert_eq!(Code::from_u8(10), None);
        let closing: Vec<u8> = (0..=9)
            .filter(|b| Code::from_u8(*b).unwrap().closes())
            .collect();
        assert_eq!(closing, [1, 2, 5, 6, 8, 9]);
    }
}
