//! The extension's frames: the identity extension's four (PROTOCOL.md,
//! "Extension: identity"), HELLO 8, HELLOACK 9, WHO 10, KICK 11, and the
//! rooms' five ("Extension: rooms and queues"), JOIN 12, LEAVE 13, ROOMS 14,
//! ROOMACK 15, ROOMLIST 16, and the waiting messages' two ("Waiting
//! messages"), TELL 17 and WAITING 18. Each is the 8-byte header, a length
//! L (u16) and L bytes of body:
//!
//! ```text
//!  HELLO    (8):  header | L | version (u8) | NL (u8) | name | SL (u16) | secret
//!  HELLOACK (9):  header | L | code (u8) | version (u8) | roles (u8) | NL (u8) | name
//!  WHO     (10):  header | L | id (u16) | roles (u8) | NL (u8) | name
//!  KICK    (11):  header | L = 0
//!  JOIN    (12):  header | L | flags (u8) | NL (u8) | name
//!  LEAVE   (13):  header | L | NL (u8) | name
//!  ROOMS   (14):  header | L = 0
//!  ROOMACK (15):  header | L | code (u8) | flags (u8) | room (u16) | members (u16) | NL (u8) | name
//!  ROOMLIST(16):  header | L | N (u16) | N × (room (u16) | flags (u8) | members (u16) | NL (u8) | name)
//!  TELL    (17):  header | L | NL (u8) | name | text (L - 1 - NL bytes)
//!  WAITING (18):  header | L = 8 | time_ms (u64)
//! ```
//!
//! They are kept apart from [`Kind`](super::Kind) on purpose: to the plain
//! codec ([`Frame::decode`](super::Frame::decode),
//! [`FrameView::parse`](super::FrameView::parse)) a type 8..=18 stays an
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

/// The ids rooms take (PROTOCOL.md, "Room ids"): a part of the destination
/// space no client id, the broadcast or the server uses.
pub const ROOM_IDS: std::ops::RangeInclusive<ClientId> = 0x4000..=0x7fff;

/// Whether `id` lies in the rooms' range: one mask and compare, the only
/// work a MSG to a client does for rooms.
#[inline]
pub fn is_room_id(id: ClientId) -> bool {
    id & 0xc000 == 0x4000
}

/// HELLO's type field.
pub const HELLO: u16 = 8;
/// HELLOACK's type field.
pub const HELLOACK: u16 = 9;
/// WHO's type field.
pub const WHO: u16 = 10;
/// KICK's type field.
pub const KICK: u16 = 11;
/// JOIN's type field.
pub const JOIN: u16 = 12;
/// LEAVE's type field.
pub const LEAVE: u16 = 13;
/// ROOMS' type field.
pub const ROOMS: u16 = 14;
/// ROOMACK's type field.
pub const ROOMACK: u16 = 15;
/// ROOMLIST's type field.
pub const ROOMLIST: u16 = 16;
/// TELL's type field: a message to a name, online or not.
pub const TELL: u16 = 17;
/// WAITING's type field: the MSG after it waited for its addressee.
pub const WAITING: u16 = 18;
/// JOIN's and ROOMACK's flag for a queue room.
pub const FLAG_QUEUE: u8 = 1;
/// JOIN's flag for "a prefetch byte follows the name" (queue rooms only;
/// never in a ROOMACK). No other flag is defined.
pub const FLAG_PREFETCH: u8 = 2;
/// The longest room name a JOIN or LEAVE may carry (judged by the name
/// rule within it, malformed beyond).
pub const MAX_ROOM_NAME_LEN: usize = 64;
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
pub const MAX_JOIN_BODY: usize = 3 + MAX_ROOM_NAME_LEN;
pub const MAX_LEAVE_BODY: usize = 1 + MAX_ROOM_NAME_LEN;
pub const MAX_ROOMACK_BODY: usize = 7 + MAX_SENT_NAME_LEN;
/// TELL's L is only bounded by its u16; its NL is at most
/// [`MAX_ROOM_NAME_LEN`], as a JOIN's.
pub const MAX_TELL_BODY: usize = u16::MAX as usize;
pub const WAITING_BODY: usize = 8;
/// What one room takes in a ROOMLIST at most.
pub const MAX_ROOMLIST_ENTRY: usize = 6 + MAX_SENT_NAME_LEN;
/// The largest extension frame on the wire (a ROOMLIST whose L is 65535).
pub const MAX_EXT_FRAME_LEN: usize = HEADER_LEN + 2 + u16::MAX as usize;

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

/// Each role's bit and the word an accounts file and a log write for it, in
/// the order they are written.
pub const ROLE_WORDS: [(u8, &str); 4] = [
    (ROLE_VIEW, "view"),
    (ROLE_EMIT, "emit"),
    (ROLE_BROADCAST, "broadcast"),
    (ROLE_ADMIN, "admin"),
];

/// A roles byte written as words (`view,emit`; `-` for none), so logs read as
/// the accounts file does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleWords(pub u8);

impl std::fmt::Display for RoleWords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (bit, word) in ROLE_WORDS {
            if self.0 & bit != 0 {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(word)?;
                first = false;
            }
        }
        if first {
            f.write_str("-")?;
        }
        Ok(())
    }
}

/// Whether a type field names one of the extension's frames.
pub fn is_ext_kind(kind: u16) -> bool {
    (HELLO..=WAITING).contains(&kind)
}

/// ROOMACK's codes (PROTOCOL.md, "Extension: rooms and queues").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RoomCode {
    Done = 0,
    BadName = 1,
    TooManyRooms = 2,
    RoomFull = 3,
    NotMember = 4,
    NoName = 5,
    NotAllowed = 6,
    ServerFull = 7,
    OtherKind = 8,
    Stored = 9,
    UnknownName = 10,
    TooManyWaiting = 11,
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

/// JOIN: an emitter's name joins a room, creating it if need be. The name
/// is bytes as sent (the server applies the rule: code 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    /// [`FLAG_QUEUE`]; [`FLAG_PREFETCH`] is set on the wire exactly when
    /// `prefetch` is Some, whatever this field says.
    pub flags: u8,
    pub name: Vec<u8>,
    /// How many unacknowledged messages of a queue room each session of
    /// the name may hold (1 ..= 255; None: 1, and the JOIN's bytes are the
    /// ones without the flag).
    pub prefetch: Option<u8>,
}

/// LEAVE: an emitter's name leaves a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leave {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    pub name: Vec<u8>,
}

/// ROOMACK: the answer to JOIN or LEAVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAck {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    /// The raw code byte (see [`RoomCode`]).
    pub code: u8,
    pub flags: u8,
    pub room: ClientId,
    pub members: u16,
    pub name: Vec<u8>,
}

/// One room in a ROOMLIST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEntry {
    pub room: ClientId,
    pub flags: u8,
    pub members: u16,
    pub name: Vec<u8>,
}

/// ROOMLIST: the answer to ROOMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomList {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    pub rooms: Vec<RoomEntry>,
}

/// TELL: a message to a name, delivered at once to its sessions online,
/// or (with history) kept until the name comes back. The name is bytes as
/// sent (the server applies the rule: ROOMACK code 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tell {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    pub name: Vec<u8>,
    pub text: bytes::Bytes,
}

/// WAITING: the MSG that follows it to this exhibitor waited for its name,
/// stored at `time_ms` (milliseconds since the Unix epoch, UTC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    pub origin: ClientId,
    pub dest: ClientId,
    pub seq: u16,
    pub time_ms: u64,
}

/// One extension frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtFrame {
    Hello(Hello),
    HelloAck(HelloAck),
    Who(Who),
    /// KICK: origin is the kicker, dest the id to close.
    Kick(Header),
    Join(Join),
    Leave(Leave),
    /// ROOMS: origin is the asker.
    Rooms(Header),
    RoomAck(RoomAck),
    RoomList(RoomList),
    Tell(Tell),
    Waiting(Waiting),
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

/// The largest L a frame of type `kind` may announce (0 for a type that
/// is not the extension's).
pub fn max_body(kind: u16) -> usize {
    match kind {
        HELLO => MAX_HELLO_BODY,
        HELLOACK => MAX_HELLOACK_BODY,
        WHO => MAX_WHO_BODY,
        JOIN => MAX_JOIN_BODY,
        LEAVE => MAX_LEAVE_BODY,
        ROOMACK => MAX_ROOMACK_BODY,
        ROOMLIST => u16::MAX as usize,
        TELL => MAX_TELL_BODY,
        WAITING => WAITING_BODY,
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
            JOIN => {
                let [flags, nl, rest @ ..] = body else {
                    return Err(bad());
                };
                let (flags, nl) = (*flags, *nl as usize);
                let with_prefetch = flags & FLAG_PREFETCH != 0;
                // A prefetch is a queue's; 0 would hold nothing.
                if flags & !(FLAG_QUEUE | FLAG_PREFETCH) != 0
                    || (with_prefetch && flags & FLAG_QUEUE == 0)
                    || nl > MAX_ROOM_NAME_LEN
                    || rest.len() != nl + usize::from(with_prefetch)
                {
                    return Err(bad());
                }
                let (name, tail) = rest.split_at(nl);
                let prefetch = tail.first().copied();
                if prefetch == Some(0) {
                    return Err(bad());
                }
                ExtFrame::Join(Join {
                    origin,
                    dest,
                    seq,
                    flags,
                    name: name.to_vec(),
                    prefetch,
                })
            }
            LEAVE => {
                let [nl, name @ ..] = body else {
                    return Err(bad());
                };
                if name.len() != *nl as usize {
                    return Err(bad());
                }
                ExtFrame::Leave(Leave {
                    origin,
                    dest,
                    seq,
                    name: name.to_vec(),
                })
            }
            ROOMACK => {
                let [code, flags, r0, r1, m0, m1, nl, name @ ..] = body else {
                    return Err(bad());
                };
                if name.len() != *nl as usize {
                    return Err(bad());
                }
                ExtFrame::RoomAck(RoomAck {
                    origin,
                    dest,
                    seq,
                    code: *code,
                    flags: *flags,
                    room: u16::from_be_bytes([*r0, *r1]),
                    members: u16::from_be_bytes([*m0, *m1]),
                    name: name.to_vec(),
                })
            }
            ROOMLIST => ExtFrame::RoomList(RoomList {
                origin,
                dest,
                seq,
                rooms: parse_room_entries(body).ok_or_else(bad)?,
            }),
            TELL => {
                let [nl, rest @ ..] = body else {
                    return Err(bad());
                };
                let nl = *nl as usize;
                if nl > MAX_ROOM_NAME_LEN || rest.len() < nl {
                    return Err(bad());
                }
                let (name, text) = rest.split_at(nl);
                ExtFrame::Tell(Tell {
                    origin,
                    dest,
                    seq,
                    name: name.to_vec(),
                    text: bytes::Bytes::copy_from_slice(text),
                })
            }
            WAITING => {
                let Ok(time) = <[u8; 8]>::try_from(body) else {
                    return Err(bad());
                };
                ExtFrame::Waiting(Waiting {
                    origin,
                    dest,
                    seq,
                    time_ms: u64::from_be_bytes(time),
                })
            }
            ROOMS => ExtFrame::Rooms(header),
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
            ExtFrame::Join(j) => (JOIN, j.origin, j.dest, j.seq),
            ExtFrame::Leave(l) => (LEAVE, l.origin, l.dest, l.seq),
            ExtFrame::RoomAck(a) => (ROOMACK, a.origin, a.dest, a.seq),
            ExtFrame::RoomList(l) => (ROOMLIST, l.origin, l.dest, l.seq),
            ExtFrame::Tell(t) => (TELL, t.origin, t.dest, t.seq),
            ExtFrame::Waiting(w) => (WAITING, w.origin, w.dest, w.seq),
            ExtFrame::Kick(h) | ExtFrame::Rooms(h) => return *h,
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
            ExtFrame::Kick(_) | ExtFrame::Rooms(_) => 0,
            ExtFrame::Join(j) => {
                2 + j.name.len().min(MAX_ROOM_NAME_LEN) + usize::from(j.prefetch.is_some())
            }
            ExtFrame::Leave(l) => 1 + l.name.len().min(MAX_ROOM_NAME_LEN),
            ExtFrame::RoomAck(a) => 7 + a.name.len().min(MAX_SENT_NAME_LEN),
            ExtFrame::RoomList(l) => 2 + listed(&l.rooms).map(|e| 6 + e.name.len()).sum::<usize>(),
            ExtFrame::Tell(t) => {
                let (name, text) = tell_fields(t);
                1 + name.len() + text.len()
            }
            ExtFrame::Waiting(_) => WAITING_BODY,
        }
    }
}

/// A TELL's name and text as they go out: the name cut to
/// [`MAX_ROOM_NAME_LEN`], the text to what fits in L after it (built by
/// hand past that), so that what goes out always parses.
fn tell_fields(t: &Tell) -> (&[u8], &[u8]) {
    let name = &t.name[..t.name.len().min(MAX_ROOM_NAME_LEN)];
    let room = MAX_TELL_BODY - 1 - name.len();
    (name, &t.text[..t.text.len().min(room)])
}

/// The entries of a ROOMLIST that fit in one frame (a list built by hand
/// past 65535 bytes is cut, so that what goes out always parses), each name
/// cut to the sent limit.
fn listed(rooms: &[RoomEntry]) -> impl Iterator<Item = RoomEntry> + '_ {
    let mut len = 2;
    rooms
        .iter()
        .map(|e| RoomEntry {
            name: e.name[..e.name.len().min(MAX_SENT_NAME_LEN)].to_vec(),
            ..*e
        })
        .take_while(move |e| {
            len += 6 + e.name.len();
            len <= u16::MAX as usize
        })
}

/// A ROOMLIST's body: N, then N entries that fill it exactly.
fn parse_room_entries(body: &[u8]) -> Option<Vec<RoomEntry>> {
    let (n, mut rest) = body.split_first_chunk::<2>()?;
    let n = u16::from_be_bytes(*n) as usize;
    // Each entry takes at least 6 bytes: an N the body cannot hold is
    // refused before anything is allocated for it.
    if n * 6 > rest.len() {
        return None;
    }
    let mut rooms = Vec::with_capacity(n);
    for _ in 0..n {
        let [r0, r1, flags, m0, m1, nl, tail @ ..] = rest else {
            return None;
        };
        let name = tail.get(..*nl as usize)?;
        rooms.push(RoomEntry {
            room: u16::from_be_bytes([*r0, *r1]),
            flags: *flags,
            members: u16::from_be_bytes([*m0, *m1]),
            name: name.to_vec(),
        });
        rest = &tail[*nl as usize..];
    }
    rest.is_empty().then_some(rooms)
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
        // KICK and ROOMS keep their own type field; the others are fixed by
        // the variant.
        out.put_u16(match self {
            ExtFrame::Kick(_) => KICK,
            ExtFrame::Rooms(_) => ROOMS,
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
            ExtFrame::Kick(_) | ExtFrame::Rooms(_) => {}
            ExtFrame::Join(j) => {
                let name = &j.name[..j.name.len().min(MAX_ROOM_NAME_LEN)];
                let flags = match j.prefetch {
                    Some(_) => j.flags | FLAG_PREFETCH,
                    None => j.flags & !FLAG_PREFETCH,
                };
                out.put_slice(&[flags, name.len() as u8]);
                out.put_slice(name);
                if let Some(prefetch) = j.prefetch {
                    out.put_u8(prefetch);
                }
            }
            ExtFrame::Leave(l) => {
                let name = &l.name[..l.name.len().min(MAX_ROOM_NAME_LEN)];
                out.put_u8(name.len() as u8);
                out.put_slice(name);
            }
            ExtFrame::RoomAck(a) => {
                let name = &a.name[..a.name.len().min(MAX_SENT_NAME_LEN)];
                out.put_slice(&[a.code, a.flags]);
                out.put_u16(a.room);
                out.put_u16(a.members);
                out.put_u8(name.len() as u8);
                out.put_slice(name);
            }
            ExtFrame::RoomList(l) => {
                let entries: Vec<RoomEntry> = listed(&l.rooms).collect();
                out.put_u16(entries.len() as u16);
                for e in entries {
                    out.put_u16(e.room);
                    out.put_u8(e.flags);
                    out.put_u16(e.members);
                    out.put_u8(e.name.len() as u8);
                    out.put_slice(&e.name);
                }
            }
            ExtFrame::Tell(t) => {
                let (name, text) = tell_fields(t);
                out.put_u8(name.len() as u8);
                out.put_slice(name);
                out.put_slice(text);
            }
            ExtFrame::Waiting(w) => out.put_u64(w.time_ms),
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
            ExtFrame::Join(_) => "JOIN",
            ExtFrame::Leave(_) => "LEAVE",
            ExtFrame::Rooms(_) => "ROOMS",
            ExtFrame::RoomAck(_) => "ROOMACK",
            ExtFrame::RoomList(_) => "ROOMLIST",
            ExtFrame::Tell(_) => "TELL",
            ExtFrame::Waiting(_) => "WAITING",
        };
        write!(
            f,
            "{what}(origin {}, dest {}, seq {})",
            h.origin, h.dest, h.seq
        )?;
        match self {
            ExtFrame::HelloAck(a) => write!(f, " code {}", a.code),
            ExtFrame::Who(w) => write!(f, " id {}", w.id),
            ExtFrame::RoomAck(a) => write!(f, " code {} room {}", a.code, a.room),
            ExtFrame::RoomList(l) => write!(f, " {} rooms", l.rooms.len()),
            ExtFrame::Tell(t) => write!(f, " {} bytes", t.text.len()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Encode;
    use super::*;

    #[test]
    fn a_roles_byte_is_written_as_the_accounts_file_writes_it() {
        assert_eq!(RoleWords(PLAIN_ROLES).to_string(), "view,emit,broadcast");
        assert_eq!(RoleWords(ROLE_VIEW | ROLE_ADMIN).to_string(), "view,admin");
        assert_eq!(RoleWords(0).to_string(), "-");
        // Bits beyond the four roles are not words.
        assert_eq!(RoleWords(0xf0 | ROLE_EMIT).to_string(), "emit");
    }

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
            (
                // JOIN from 1, seq 4: room "ops", not a queue.
                b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x05\x00\x03ops",
                ExtFrame::Join(Join {
                    origin: 1,
                    dest: 0xffff,
                    seq: 4,
                    flags: 0,
                    name: b"ops".to_vec(),
                    prefetch: None,
                }),
            ),
            (
                // JOIN from 1, seq 5: queue room "jobs", prefetch 64.
                b"\x00\x0c\x00\x01\xff\xff\x00\x05\x00\x07\x03\x04jobs\x40",
                ExtFrame::Join(Join {
                    origin: 1,
                    dest: 0xffff,
                    seq: 5,
                    flags: FLAG_QUEUE | FLAG_PREFETCH,
                    name: b"jobs".to_vec(),
                    prefetch: Some(64),
                }),
            ),
            (
                // LEAVE from 1, seq 7: room "ops".
                b"\x00\x0d\x00\x01\xff\xff\x00\x07\x00\x04\x03ops",
                ExtFrame::Leave(Leave {
                    origin: 1,
                    dest: 0xffff,
                    seq: 7,
                    name: b"ops".to_vec(),
                }),
            ),
            (
                // ROOMACK: code 0, room 16384 "ops", 1 member.
                b"\x00\x0f\xff\xff\x00\x01\x00\x04\x00\x0a\x00\x00\x40\x00\x00\x01\x03ops",
                ExtFrame::RoomAck(RoomAck {
                    origin: 0xffff,
                    dest: 1,
                    seq: 4,
                    code: 0,
                    flags: 0,
                    room: 0x4000,
                    members: 1,
                    name: b"ops".to_vec(),
                }),
            ),
            (
                // ROOMS from 1, seq 6.
                b"\x00\x0e\x00\x01\xff\xff\x00\x06\x00\x00",
                ExtFrame::Rooms(Header {
                    kind: ROOMS,
                    origin: 1,
                    dest: 0xffff,
                    seq: 6,
                }),
            ),
            (
                // ROOMLIST: 16384 "ops" (1 member) and queue 16385 "jobs" (2).
                b"\x00\x10\xff\xff\x00\x01\x00\x06\x00\x15\x00\x02\
                  \x40\x00\x00\x00\x01\x03ops\
                  \x40\x01\x01\x00\x02\x04jobs",
                ExtFrame::RoomList(RoomList {
                    origin: 0xffff,
                    dest: 1,
                    seq: 6,
                    rooms: vec![
                        RoomEntry {
                            room: 0x4000,
                            flags: 0,
                            members: 1,
                            name: b"ops".to_vec(),
                        },
                        RoomEntry {
                            room: 0x4001,
                            flags: FLAG_QUEUE,
                            members: 2,
                            name: b"jobs".to_vec(),
                        },
                    ],
                }),
            ),
            (
                // TELL from emitter 1, seq 7: to "bob", "hi" (L = 6).
                b"\x00\x11\x00\x01\xff\xff\x00\x07\x00\x06\x03bobhi",
                ExtFrame::Tell(Tell {
                    origin: 1,
                    dest: 0xffff,
                    seq: 7,
                    name: b"bob".to_vec(),
                    text: bytes::Bytes::from_static(b"hi"),
                }),
            ),
            (
                // WAITING to exhibitor 4096, seq 3: stored at
                // 2025-12-01T13:45:02.123Z.
                b"\x00\x12\xff\xff\x10\x00\x00\x03\x00\x08\
                  \x00\x00\x01\x9a\xda\x28\xdb\xab",
                ExtFrame::Waiting(Waiting {
                    origin: 0xffff,
                    dest: 0x1000,
                    seq: 3,
                    time_ms: 1_764_596_702_123,
                }),
            ),
        ]
    }

    #[test]
    fn malformed_waiting_message_frames_are_refused() {
        // TELL with L = 0 (no NL); NL over 64 (65, with the bytes there);
        // NL past the body.
        assert!(malformed(b"\x00\x11\x00\x01\xff\xff\x00\x07\x00\x00"));
        let mut long = b"\x00\x11\x00\x01\xff\xff\x00\x07\x00\x42\x41".to_vec();
        long.extend_from_slice(&[b'a'; 65]);
        assert!(malformed(&long));
        assert!(malformed(b"\x00\x11\x00\x01\xff\xff\x00\x07\x00\x03\x05bo"));
        // WAITING with L = 9 is refused from the first ten bytes; L = 7 once
        // its body is there.
        assert!(malformed(b"\x00\x12\xff\xff\x10\x00\x00\x03\x00\x09"));
        assert!(malformed(
            b"\x00\x12\xff\xff\x10\x00\x00\x03\x00\x07\x00\x00\x00\x00\x00\x00\x00"
        ));
    }

    #[test]
    fn a_tell_carries_a_64_byte_name_and_fills_l_with_text() {
        // NL = 64 is readable (the name rule judges it); the text takes the
        // rest of a full L.
        let tell = ExtFrame::Tell(Tell {
            origin: 1,
            dest: 0xffff,
            seq: 0,
            name: vec![b'n'; MAX_ROOM_NAME_LEN],
            text: bytes::Bytes::from(vec![b't'; u16::MAX as usize]),
        });
        let wire = tell.to_bytes();
        assert_eq!(wire.len(), MAX_EXT_FRAME_LEN);
        let Ok(Some((ExtFrame::Tell(back), len))) = ExtFrame::parse(&wire) else {
            panic!("a full TELL parses");
        };
        assert_eq!(len, wire.len());
        assert_eq!(back.name.len(), MAX_ROOM_NAME_LEN);
        assert_eq!(back.text.len(), u16::MAX as usize - 1 - MAX_ROOM_NAME_LEN);
    }

    #[test]
    fn malformed_room_frames_are_refused() {
        // JOIN announcing L = 68 (3 + 64 + 1): refused from the first ten bytes.
        assert!(malformed(b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x44"));
        // JOIN with L = 67 waits for its body (a 64-byte name and a prefetch).
        assert_eq!(
            ExtFrame::parse(b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x43"),
            Ok(None)
        );
        // L = 67 without the prefetch flag: a 65-byte name, over the limit.
        let mut long = b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x43\x01\x41".to_vec();
        long.extend([b'a'; 65]);
        assert!(malformed(&long));
        // Prefetch 0; the prefetch flag without its byte; the prefetch flag
        // on an ordinary room; a byte after the name without the flag.
        assert!(malformed(
            b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x06\x03\x03ops\x00"
        ));
        assert!(malformed(
            b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x05\x03\x03ops"
        ));
        assert!(malformed(
            b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x06\x02\x03ops\x05"
        ));
        assert!(malformed(
            b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x06\x01\x03ops\x05"
        ));
        // JOIN whose NL disagrees with L, and one with an unknown flag.
        assert!(malformed(
            b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x05\x00\x04ops"
        ));
        assert!(malformed(
            b"\x00\x0c\x00\x01\xff\xff\x00\x04\x00\x05\x02\x03ops"
        ));
        // LEAVE over its limit; LEAVE with L = 0 (no NL).
        assert!(malformed(b"\x00\x0d\x00\x01\xff\xff\x00\x04\x00\x42"));
        assert!(malformed(b"\x00\x0d\x00\x01\xff\xff\x00\x04\x00\x00"));
        // ROOMS with a body.
        assert!(malformed(b"\x00\x0e\x00\x01\xff\xff\x00\x04\x00\x01\x00"));
        // ROOMACK over its limit (7 + 24 + 1).
        assert!(malformed(b"\x00\x0f\xff\xff\x00\x01\x00\x04\x00\x20"));
        // ROOMLIST: N larger than the body holds; an entry past the body;
        // bytes left after N entries.
        assert!(malformed(
            b"\x00\x10\xff\xff\x00\x01\x00\x06\x00\x02\xff\xff"
        ));
        assert!(malformed(
            b"\x00\x10\xff\xff\x00\x01\x00\x06\x00\x08\x00\x01\x40\x00\x00\x00\x01\x03"
        ));
        assert!(malformed(
            b"\x00\x10\xff\xff\x00\x01\x00\x06\x00\x09\x00\x01\x40\x00\x00\x00\x01\x00X"
        ));
    }

    #[test]
    fn a_roomlist_built_past_one_frame_is_cut_to_what_fits() {
        let entry = RoomEntry {
            room: 0x4000,
            flags: 0,
            members: 1,
            name: vec![b'r'; 30],
        };
        let list = ExtFrame::RoomList(RoomList {
            origin: 0xffff,
            dest: 1,
            seq: 0,
            rooms: vec![entry; 3000],
        });
        let wire = list.to_bytes();
        assert!(wire.len() <= MAX_EXT_FRAME_LEN);
        let Ok(Some((ExtFrame::RoomList(back), len))) = ExtFrame::parse(&wire) else {
            panic!("a cut ROOMLIST parses");
        };
        assert_eq!(len, wire.len());
        // Each entry is cut to a 24-byte name: 30 bytes; 2 + 2184 × 30 = 65522.
        assert_eq!(back.rooms.len(), 2184);
        assert!(back.rooms.iter().all(|e| e.name.len() == MAX_SENT_NAME_LEN));
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
        assert_eq!(wire.len(), HEADER_LEN + 2 + MAX_HELLO_BODY);
        assert_eq!(&wire[8..10], b"\x01\x44");
        assert_eq!(ExtFrame::parse(&wire), Ok(Some((frame, wire.len()))));
    }

    #[test]
    fn other_types_are_not_extension_frames() {
        for kind in [1u16, 7, 19, 0xffff] {
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
