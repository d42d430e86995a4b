//! Room records: the records of formats 3 and 4 that keep rooms, memberships and
//! waiting messages across a restart (HISTORY.md, "Rooms and waiting
//! messages", draws them). A room record has a message record's layout with
//! the destination 65535, which no accepted message has; its origin field
//! names its kind, its name and roles fields are the kind's, and its text
//! holds the kind's fields. Reading and writing them is all this module
//! does: what they mean to a server is the loop's business.

use super::format::{BODY_FIXED_LEN, MAX_NAME_LEN, RECORD_HEADER_LEN, RecordView, keepable_name};
use crate::proto::MAX_TEXT_LEN;

/// The destination that marks a room record.
pub const ROOM_RECORD_DEST: u16 = 0xffff;
/// The most a waiting message's record holds before its text: wait id (8),
/// origin (2), seq (2), room (2), NL (1) and the addressee's name (24).
pub const MAX_WAITING_HEAD: usize = 15 + MAX_NAME_LEN;

const JOINED: u16 = 1;
const LEFT: u16 = 2;
const ONLINE: u16 = 3;
const OFFLINE: u16 = 4;
const WAITING: u16 = 5;
const SETTLED: u16 = 6;
const CHECKPOINT: u16 = 7;
const KEPT: u16 = 8;
const SEEN: u16 = 9;

/// A JOINED record's flags (its roles field).
const FLAG_QUEUE: u8 = 1;
const FLAG_ONLINE: u8 = 2;

/// One room record, read in place or to be written. Member and addressee
/// names are lower case (membership ignores case); all names are at most
/// 24 bytes of printable ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomRecord<'a> {
    /// `member` joined room `room` (created by this JOIN when it had no
    /// member), spelt `room_name`; `online`: a session showing the name was
    /// online then, so it receives the room's messages from here.
    Joined {
        room: u16,
        room_name: &'a str,
        queue: bool,
        online: bool,
        member: &'a str,
    },
    /// `member` left room `room` (the room is gone with its last member).
    Left { room: u16, member: &'a str },
    /// The first session of `member` came online in room `room` and was
    /// sent what it missed: every later message of the room is sent to it.
    Online { room: u16, member: &'a str },
    /// The last session of `member` in room `room` went: it misses what
    /// the room says from here.
    Offline { room: u16, member: &'a str },
    /// A message waiting: for a member of the queue room `room`, or (room
    /// 0) for the name `to`. `wait` names it for [`RoomRecord::Settled`];
    /// `origin` and `seq` are its MSG's (or TELL's) as it arrived.
    Waiting {
        wait: u64,
        origin: u16,
        seq: u16,
        room: u16,
        to: &'a str,
        sender: &'a str,
        roles: u8,
        text: &'a [u8],
    },
    /// The waiting message `wait` is gone: delivered and acknowledged,
    /// refused, or given up on.
    Settled { wait: u64 },
    /// A checkpoint begins (`end` false) or is complete (`end` true): the
    /// room records between the two are the whole live state then, and
    /// replace what the records before said.
    Checkpoint { end: bool },
    /// In a checkpoint: a message room `room` keeps, oldest first, as the
    /// room said it.
    Kept {
        room: u16,
        origin: u16,
        sender: &'a str,
        roles: u8,
        text: &'a [u8],
    },
    /// In a checkpoint, after room `room`'s KEPT records: `member` was sent
    /// the first `count` of them.
    Seen {
        room: u16,
        member: &'a str,
        count: u32,
    },
}

impl<'a> RoomRecord<'a> {
    /// The room record `record` is, if it is one (its destination is
    /// 65535) and its fields add up; None otherwise.
    pub fn read(record: &RecordView<'a>) -> Option<RoomRecord<'a>> {
        if record.dest != ROOM_RECORD_DEST {
            return None;
        }
        let text = record.text;
        let room_only = || -> Option<u16> {
            let room: [u8; 2] = text.try_into().ok()?;
            (record.roles == 0).then_some(u16::from_be_bytes(room))
        };
        let member = record.name;
        Some(match record.origin {
            JOINED => {
                let (room, name) = text.split_first_chunk::<2>()?;
                let room_name = std::str::from_utf8(name).ok()?;
                let ok = !member.is_empty()
                    && !room_name.is_empty()
                    && keepable_name(room_name)
                    && record.roles & !(FLAG_QUEUE | FLAG_ONLINE) == 0;
                if !ok {
                    return None;
                }
                RoomRecord::Joined {
                    room: u16::from_be_bytes(*room),
                    room_name,
                    queue: record.roles & FLAG_QUEUE != 0,
                    online: record.roles & FLAG_ONLINE != 0,
                    member,
                }
            }
            LEFT | ONLINE | OFFLINE if !member.is_empty() => {
                let room = room_only()?;
                match record.origin {
                    LEFT => RoomRecord::Left { room, member },
                    ONLINE => RoomRecord::Online { room, member },
                    _ => RoomRecord::Offline { room, member },
                }
            }
            WAITING => {
                let (wait, rest) = text.split_first_chunk::<8>()?;
                let (origin, rest) = rest.split_first_chunk::<2>()?;
                let (seq, rest) = rest.split_first_chunk::<2>()?;
                let (room, rest) = rest.split_first_chunk::<2>()?;
                let (nl, rest) = rest.split_first()?;
                let nl = usize::from(*nl);
                if nl > MAX_NAME_LEN || rest.len() < nl {
                    return None;
                }
                let (to, text) = rest.split_at(nl);
                let to = std::str::from_utf8(to).ok()?;
                let room = u16::from_be_bytes(*room);
                // Exactly one addressee: a room or a name.
                if text.len() > MAX_TEXT_LEN || !keepable_name(to) || (room == 0) == to.is_empty() {
                    return None;
                }
                RoomRecord::Waiting {
                    wait: u64::from_be_bytes(*wait),
                    origin: u16::from_be_bytes(*origin),
                    seq: u16::from_be_bytes(*seq),
                    room,
                    to,
                    sender: record.name,
                    roles: record.roles,
                    text,
                }
            }
            SETTLED if member.is_empty() && record.roles == 0 => {
                let wait: [u8; 8] = text.try_into().ok()?;
                RoomRecord::Settled {
                    wait: u64::from_be_bytes(wait),
                }
            }
            CHECKPOINT if member.is_empty() && record.roles == 0 => match text {
                [0] => RoomRecord::Checkpoint { end: false },
                [1] => RoomRecord::Checkpoint { end: true },
                _ => return None,
            },
            KEPT => {
                let (room, rest) = text.split_first_chunk::<2>()?;
                let (origin, text) = rest.split_first_chunk::<2>()?;
                if text.len() > MAX_TEXT_LEN {
                    return None;
                }
                RoomRecord::Kept {
                    room: u16::from_be_bytes(*room),
                    origin: u16::from_be_bytes(*origin),
                    sender: member,
                    roles: record.roles,
                    text,
                }
            }
            SEEN if !member.is_empty() && record.roles == 0 => {
                let fields: [u8; 6] = text.try_into().ok()?;
                RoomRecord::Seen {
                    room: u16::from_be_bytes([fields[0], fields[1]]),
                    member,
                    count: u32::from_be_bytes([fields[2], fields[3], fields[4], fields[5]]),
                }
            }
            _ => return None,
        })
    }

    /// Appends the record as version 3 wrote it, stamped `time_ms`, to
    /// `out` with its checksum left zero for
    /// [`super::format::seal_records`] (tests and the fuzz target build
    /// version 3 logs with it).
    #[cfg(any(test, feature = "testing"))]
    pub fn encode_unsealed(&self, time_ms: u64, out: &mut Vec<u8>) {
        self.encode_as(Layout::Record { time_ms }, out);
    }

    /// Appends the record as a record of a version 4 batch (its time is the
    /// batch's) to `out`. Names that the format cannot keep are a caller's
    /// bug (the server's names follow the name rule).
    pub(crate) fn encode_in_batch(&self, out: &mut Vec<u8>) {
        self.encode_as(Layout::InBatch, out);
    }

    fn encode_as(&self, layout: Layout, out: &mut Vec<u8>) {
        let mut fields = [0u8; 15];
        let (kind, roles, name, head, tail): (u16, u8, &str, &[u8], &[u8]) = match *self {
            RoomRecord::Joined {
                room,
                room_name,
                queue,
                online,
                member,
            } => {
                let flags =
                    if queue { FLAG_QUEUE } else { 0 } | if online { FLAG_ONLINE } else { 0 };
                fields[..2].copy_from_slice(&room.to_be_bytes());
                (JOINED, flags, member, &fields[..2], room_name.as_bytes())
            }
            RoomRecord::Left { room, member }
            | RoomRecord::Online { room, member }
            | RoomRecord::Offline { room, member } => {
                fields[..2].copy_from_slice(&room.to_be_bytes());
                let kind = match self {
                    RoomRecord::Left { .. } => LEFT,
                    RoomRecord::Online { .. } => ONLINE,
                    _ => OFFLINE,
                };
                (kind, 0, member, &fields[..2], &[][..])
            }
            RoomRecord::Waiting {
                wait,
                origin,
                seq,
                room,
                to,
                sender,
                roles,
                text,
            } => {
                fields[..8].copy_from_slice(&wait.to_be_bytes());
                fields[8..10].copy_from_slice(&origin.to_be_bytes());
                fields[10..12].copy_from_slice(&seq.to_be_bytes());
                fields[12..14].copy_from_slice(&room.to_be_bytes());
                fields[14] = to.len() as u8;
                out.reserve(RECORD_HEADER_LEN + BODY_FIXED_LEN + MAX_WAITING_HEAD + text.len());
                encode(
                    out,
                    layout,
                    WAITING,
                    roles,
                    sender,
                    &[&fields, to.as_bytes(), text],
                );
                return;
            }
            RoomRecord::Settled { wait } => {
                fields[..8].copy_from_slice(&wait.to_be_bytes());
                (SETTLED, 0, "", &fields[..8], &[][..])
            }
            RoomRecord::Checkpoint { end } => {
                fields[0] = u8::from(end);
                (CHECKPOINT, 0, "", &fields[..1], &[][..])
            }
            RoomRecord::Kept {
                room,
                origin,
                sender,
                roles,
                text,
            } => {
                fields[..2].copy_from_slice(&room.to_be_bytes());
                fields[2..4].copy_from_slice(&origin.to_be_bytes());
                (KEPT, roles, sender, &fields[..4], text)
            }
            RoomRecord::Seen {
                room,
                member,
                count,
            } => {
                fields[..2].copy_from_slice(&room.to_be_bytes());
                fields[2..6].copy_from_slice(&count.to_be_bytes());
                (SEEN, 0, member, &fields[..6], &[][..])
            }
        };
        encode(out, layout, kind, roles, name, &[head, tail]);
    }
}

/// Whether a version 3 or 4 record's fields are ones some record has: a room
/// record [`RoomRecord::read`] takes, or a message record whose text is at
/// most 65535 bytes.
pub(super) fn fields_ok(record: &RecordView<'_>) -> bool {
    if record.dest == ROOM_RECORD_DEST {
        RoomRecord::read(record).is_some()
    } else {
        record.text.len() <= MAX_TEXT_LEN
    }
}

/// Where a room record goes: a record of its own (version 3), or a batch.
#[derive(Clone, Copy)]
enum Layout {
    #[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
    Record {
        time_ms: u64,
    },
    InBatch,
}

/// One record in the message layout, its text made of `parts`.
fn encode(out: &mut Vec<u8>, layout: Layout, kind: u16, roles: u8, name: &str, parts: &[&[u8]]) {
    assert!(name.len() <= MAX_NAME_LEN, "room record name over 24 bytes");
    let text_len: usize = parts.iter().map(|p| p.len()).sum();
    match layout {
        Layout::Record { time_ms } => {
            let body_len = (BODY_FIXED_LEN + name.len() + text_len) as u32;
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&body_len.to_be_bytes());
            out.extend_from_slice(&time_ms.to_be_bytes());
        }
        Layout::InBatch => {
            // Origin, destination, roles and NL: the version 3 body less
            // its time.
            let body_len = (BODY_FIXED_LEN - 8 + name.len() + text_len) as u32;
            out.extend_from_slice(&body_len.to_be_bytes());
        }
    }
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&ROOM_RECORD_DEST.to_be_bytes());
    out.extend_from_slice(&[roles, name.len() as u8]);
    out.extend_from_slice(name.as_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{
        Cursor, Damage, SEGMENT_MAGIC_V3 as SEGMENT_MAGIC, Step, seal_records,
    };
    use super::*;

    fn all_kinds() -> Vec<RoomRecord<'static>> {
        vec![
            RoomRecord::Joined {
                room: 0x4000,
                room_name: "Ops",
                queue: false,
                online: true,
                member: "alice",
            },
            RoomRecord::Joined {
                room: 0x4001,
                room_name: "jobs",
                queue: true,
                online: false,
                member: "bob",
            },
            RoomRecord::Left {
                room: 0x4000,
                member: "alice",
            },
            RoomRecord::Online {
                room: 0x4000,
                member: "carol",
            },
            RoomRecord::Offline {
                room: 0x4000,
                member: "carol",
            },
            RoomRecord::Waiting {
                wait: 7,
                origin: 1,
                seq: 9,
                room: 0,
                to: "bob",
                sender: "alice",
                roles: 7,
                text: b"hi",
            },
            RoomRecord::Waiting {
                wait: 8,
                origin: 2,
                seq: 0xffff,
                room: 0x4001,
                to: "",
                sender: "",
                roles: 0,
                text: &[b'x'; MAX_TEXT_LEN],
            },
            RoomRecord::Settled { wait: 7 },
            RoomRecord::Checkpoint { end: false },
            RoomRecord::Kept {
                room: 0x4000,
                origin: 3,
                sender: "alice",
                roles: 7,
                text: b"kept",
            },
            RoomRecord::Seen {
                room: 0x4000,
                member: "bob",
                count: 1,
            },
            RoomRecord::Checkpoint { end: true },
        ]
    }

    fn segment(records: &[RoomRecord<'_>]) -> Vec<u8> {
        let mut bytes = SEGMENT_MAGIC.to_vec();
        let mut batch = Vec::new();
        for r in records {
            r.encode_unsealed(1_764_596_702_123, &mut batch);
        }
        seal_records(&mut batch);
        bytes.extend_from_slice(&batch);
        bytes
    }

    #[test]
    fn every_kind_reads_back_through_the_cursor() {
        let kinds = all_kinds();
        let bytes = segment(&kinds);
        let mut cursor = Cursor::with_read_ahead(100);
        for expected in &kinds {
            let Ok(Step::Record { record, .. }) = cursor.next(&bytes[..], bytes.len() as u64, true)
            else {
                panic!("a room record reads back");
            };
            assert_eq!(record.time_ms, 1_764_596_702_123);
            assert_eq!(RoomRecord::read(&record).as_ref(), Some(expected));
        }
        assert_eq!(
            cursor.next(&bytes[..], bytes.len() as u64, true).unwrap(),
            Step::End
        );
    }

    #[test]
    fn a_joined_record_is_laid_out_as_history_md_draws_it() {
        let mut out = Vec::new();
        RoomRecord::Joined {
            room: 0x4000,
            room_name: "ops",
            queue: true,
            online: true,
            member: "al",
        }
        .encode_unsealed(1, &mut out);
        let expected: &[u8] = b"\0\0\0\0\0\0\0\x15\
            \0\0\0\0\0\0\0\x01\
            \x00\x01\xff\xff\x03\x02al\
            \x40\x00ops";
        assert_eq!(out, expected);
    }

    /// A whole record (right checksum) to 65535 whose fields are wrong is
    /// corruption, even last in the last segment: no torn write makes one.
    #[test]
    fn a_room_record_with_wrong_fields_is_corruption_wherever_it_is() {
        let bad: Vec<(u16, u8, &str, Vec<u8>)> = vec![
            (0, 0, "a", vec![0x40, 0]),                                  // kind 0
            (10, 0, "a", vec![0x40, 0]),                                 // kind 10
            (1, 0, "a", vec![0x40]),                                     // JOINED without a room id
            (1, 0, "a", vec![0x40, 0]),                                  // JOINED with no room name
            (1, 4, "a", b"\x40\x00ops".to_vec()), // JOINED with an unknown flag
            (1, 0, "", b"\x40\x00ops".to_vec()),  // JOINED with no member
            (1, 0, "a", b"\x40\x00o\x01s".to_vec()), // unprintable room name
            (2, 0, "a", vec![0x40, 0, 0]),        // LEFT with a byte more
            (3, 1, "a", vec![0x40, 0]),           // ONLINE with roles
            (4, 0, "", vec![0x40, 0]),            // OFFLINE with no member
            (5, 0, "", vec![0; 14]),              // WAITING short of NL
            (5, 0, "", [vec![0; 14], vec![3], b"bo".to_vec()].concat()), // NL past text
            (5, 0, "", [vec![0; 14], vec![0]].concat()), // neither room nor name
            (6, 0, "", vec![0; 7]),               // SETTLED short
            (6, 0, "a", vec![0; 8]),              // SETTLED with a name
            (7, 0, "", vec![2]),                  // CHECKPOINT of no phase
            (7, 0, "", vec![0, 0]),               // CHECKPOINT with a byte more
            (8, 0, "", vec![0x40, 0, 0]),         // KEPT short of its origin
            (9, 0, "b", vec![0x40, 0, 0, 0, 1]),  // SEEN short of its count
            (9, 0, "", vec![0x40, 0, 0, 0, 0, 1]), // SEEN with no member
        ];
        for (kind, roles, name, text) in bad {
            let mut batch = Vec::new();
            encode(
                &mut batch,
                Layout::Record { time_ms: 0 },
                kind,
                roles,
                name,
                &[&text],
            );
            seal_records(&mut batch);
            let mut bytes = SEGMENT_MAGIC.to_vec();
            bytes.extend_from_slice(&batch);
            for last in [false, true] {
                let mut cursor = Cursor::new();
                let step = cursor.next(&bytes[..], bytes.len() as u64, last).unwrap();
                assert_eq!(
                    step,
                    Step::Corrupt {
                        offset: SEGMENT_MAGIC.len() as u64,
                        damage: Damage::BadRoomRecord
                    },
                    "kind {kind} roles {roles} name {name:?} text {text:?}"
                );
            }
        }
    }

    #[test]
    fn a_message_record_over_65535_bytes_of_text_is_corruption_in_version_3() {
        let text = vec![b'x'; MAX_TEXT_LEN + 1];
        let mut batch = Vec::new();
        encode(
            &mut batch,
            Layout::Record { time_ms: 0 },
            1,
            0,
            "",
            &[&text],
        );
        // To 0, not 65535: a message record.
        batch[18..20].copy_from_slice(&[0, 0]);
        seal_records(&mut batch);
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&batch);
        let mut cursor = Cursor::new();
        let step = cursor.next(&bytes[..], bytes.len() as u64, true).unwrap();
        assert!(matches!(
            step,
            Step::Corrupt {
                damage: Damage::BadRoomRecord,
                ..
            }
        ));
    }
}
