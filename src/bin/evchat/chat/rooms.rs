//! What `evchat chat` knows of the server's rooms (PROTOCOL.md, "Extension:
//! rooms and queues"): their names and kinds by id, from the ROOMACKs and
//! ROOMLISTs its emitter is sent, so a room's id can be shown as `#name`
//! and a `#name` typed can be sent to; the queue prefetch this chat's JOINs
//! asked, to ask it again at each sign-in; and the sentence each ROOMACK
//! code is shown as. Pure bookkeeping and wording, no I/O.

use evchat::cli::escape_text;
use evchat::proto::ClientId;
use evchat::proto::ext::{FLAG_QUEUE, RoomAck, RoomCode, RoomEntry};
use std::collections::BTreeMap;

/// One room as the server last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Room {
    /// The server's spelling, escaped for the terminal.
    name: String,
    queue: bool,
}

/// The rooms known by id. The server has at most 2048 rooms
/// (`--max-rooms`), so this holds at most that many names of 24 bytes.
#[derive(Debug, Default)]
pub struct RoomBook {
    by_id: BTreeMap<ClientId, Room>,
    /// Whether this session's first ROOMLIST has come: until then a room id
    /// not known may still be named by it.
    pub listed: bool,
}

/// What a JOIN or LEAVE asked, to word its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomRequest {
    /// JOIN, of a queue room or not, with the prefetch it asks (None: 1).
    Join {
        queue: bool,
        prefetch: Option<u8>,
    },
    Leave,
}

impl RoomBook {
    /// Forgets every room: a new session's server may number them anew.
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.listed = false;
    }

    /// Takes a ROOMLIST: the server's rooms, all of them.
    pub fn replace(&mut self, rooms: &[RoomEntry]) {
        self.by_id = rooms
            .iter()
            .map(|entry| {
                let room = Room {
                    name: escape_text(&entry.name),
                    queue: entry.flags & FLAG_QUEUE != 0,
                };
                (entry.room, room)
            })
            .collect();
        self.listed = true;
    }

    /// Takes a ROOMACK code 0: the room's id, spelling and kind.
    pub fn learn(&mut self, ack: &RoomAck) {
        if ack.code == RoomCode::Done as u8 && !ack.name.is_empty() {
            // An id given to a new room may have been another's.
            let room = Room {
                name: escape_text(&ack.name),
                queue: ack.flags & FLAG_QUEUE != 0,
            };
            self.by_id.insert(ack.room, room);
        }
    }

    /// The id of the room named `name` (any case), if known.
    pub fn find(&self, name: &str) -> Option<ClientId> {
        self.by_id
            .iter()
            .find(|(_, room)| room.name.eq_ignore_ascii_case(name))
            .map(|(&id, _)| id)
    }

    /// Whether `id` is a room this book knows.
    pub fn knows(&self, id: ClientId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// How a room id is shown: `#name`, or `room N` when not known.
    pub fn label(&self, id: ClientId) -> String {
        match self.by_id.get(&id) {
            Some(room) => format!("#{}", room.name),
            None => format!("room {id}"),
        }
    }
}

/// The queue rooms this chat joined with a prefetch, by lower-case name:
/// the name as typed and the prefetch. A server keeps memberships, not the
/// prefetch (PROTOCOL.md, "Prefetch"), so each is asked again after a
/// reconnection. At most `--rooms-per-name` (64 by default) rooms take a
/// JOIN's code 0, so this stays that small.
#[derive(Debug, Default)]
pub struct Prefetches {
    by_room: BTreeMap<String, (String, u8)>,
}

impl Prefetches {
    /// Takes the answer `ack` to `request` for the room `typed`: a JOIN with
    /// a prefetch done keeps it; one without, or a LEAVE done, forgets it
    /// (the server is back to 1 for that name).
    pub fn note(&mut self, request: RoomRequest, typed: &str, ack: &RoomAck) {
        if ack.code != RoomCode::Done as u8 {
            return;
        }
        let key = typed.to_ascii_lowercase();
        match request {
            RoomRequest::Join {
                queue: true,
                prefetch: Some(prefetch),
            } => {
                self.by_room.insert(key, (typed.to_string(), prefetch));
            }
            RoomRequest::Join { .. } | RoomRequest::Leave => {
                self.by_room.remove(&key);
            }
        }
    }

    /// The JOINs to send again: each room as typed and its prefetch.
    pub fn joins(&self) -> Vec<(String, u8)> {
        self.by_room.values().cloned().collect()
    }
}

fn members(n: u16) -> String {
    match n {
        1 => "1 member".to_string(),
        n => format!("{n} members"),
    }
}

/// The `/rooms` line: `rooms (2): #jobs (queue, 1 member), #ops (2 members)`.
pub fn room_list_line(rooms: &[RoomEntry]) -> String {
    let listed: Vec<String> = rooms
        .iter()
        .map(|entry| {
            let kind = if entry.flags & FLAG_QUEUE != 0 {
                "queue, "
            } else {
                ""
            };
            format!(
                "#{} ({kind}{})",
                escape_text(&entry.name),
                members(entry.members)
            )
        })
        .collect();
    if listed.is_empty() {
        "rooms (0): none; /join #room creates one".to_string()
    } else {
        format!("rooms ({}): {}", listed.len(), listed.join(", "))
    }
}

/// The sentence a ROOMACK to `request` for `typed` (the room as typed,
/// without `#`) is shown as.
pub fn room_answer(request: RoomRequest, typed: &str, ack: &RoomAck) -> String {
    let typed = escape_text(typed.as_bytes());
    let room = || format!("#{}", escape_text(&ack.name));
    match ack.code {
        0 => match request {
            RoomRequest::Join { .. } => {
                let kind = if ack.flags & FLAG_QUEUE != 0 {
                    "queue "
                } else {
                    ""
                };
                format!("joined {kind}{} ({})", room(), members(ack.members))
            }
            RoomRequest::Leave => format!("left {}", room()),
        },
        1 => format!(
            "'#{typed}' is not a room name: a letter, then up to 23 letters, digits, \
             '.', '_' or '-'"
        ),
        2 => format!(
            "cannot join #{typed}: you are in as many rooms as the server allows; \
             /leave one first"
        ),
        3 => format!("cannot join #{typed}: it has as many members as the server allows"),
        4 => format!("you are not in #{typed} (or it does not exist)"),
        5 => "rooms need a name, and this session has none".to_string(),
        6 => format!(
            "you may not join #{typed}: joining needs the view role, creating a room \
             broadcast too"
        ),
        7 => format!("cannot create #{typed}: the server has as many rooms as it allows"),
        8 => match request {
            RoomRequest::Join { queue: true, .. } => {
                format!("#{typed} is an ordinary room, not a queue: /join #{typed} without --queue")
            }
            _ => format!("#{typed} is a queue room: /join #{typed} --queue"),
        },
        code => format!("the server answered for #{typed} with unknown ROOMACK code {code}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(code: u8, flags: u8, room: ClientId, members: u16, name: &str) -> RoomAck {
        RoomAck {
            origin: u16::MAX,
            dest: 1,
            seq: 1,
            code,
            flags,
            room,
            members,
            name: name.as_bytes().to_vec(),
        }
    }

    fn entry(room: ClientId, flags: u8, members: u16, name: &str) -> RoomEntry {
        RoomEntry {
            room,
            flags,
            members,
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn rooms_are_known_by_id_and_found_by_name_in_any_case() {
        let mut book = RoomBook::default();
        assert_eq!(book.label(16384), "room 16384");
        book.learn(&ack(0, 0, 16384, 1, "Ops"));
        assert_eq!(book.label(16384), "#Ops");
        assert_eq!(book.find("ops"), Some(16384));
        // A refusal teaches nothing.
        book.learn(&ack(3, 0, 0, 0, ""));
        assert!(!book.knows(0));
        // A list replaces all: rooms gone are forgotten.
        book.replace(&[entry(16385, FLAG_QUEUE, 2, "jobs")]);
        assert!(book.listed);
        assert_eq!(book.find("ops"), None);
        assert_eq!(book.label(16385), "#jobs");
        book.clear();
        assert!(!book.listed && !book.knows(16385));
    }

    #[test]
    fn the_room_list_is_one_line() {
        assert_eq!(
            room_list_line(&[entry(16384, 0, 2, "ops"), entry(16385, 1, 1, "jobs")]),
            "rooms (2): #ops (2 members), #jobs (queue, 1 member)"
        );
        assert_eq!(
            room_list_line(&[]),
            "rooms (0): none; /join #room creates one"
        );
    }

    #[test]
    fn every_roomack_code_is_a_sentence() {
        let join = RoomRequest::Join {
            queue: false,
            prefetch: None,
        };
        let said = |code, request| room_answer(request, "ops", &ack(code, 0, 0, 0, ""));
        assert_eq!(
            room_answer(join, "ops", &ack(0, 0, 16384, 2, "Ops")),
            "joined #Ops (2 members)"
        );
        assert_eq!(
            room_answer(join, "jobs", &ack(0, 1, 16385, 1, "jobs")),
            "joined queue #jobs (1 member)"
        );
        assert_eq!(
            room_answer(RoomRequest::Leave, "ops", &ack(0, 0, 16384, 1, "Ops")),
            "left #Ops"
        );
        assert_eq!(
            said(4, RoomRequest::Leave),
            "you are not in #ops (or it does not exist)"
        );
        assert_eq!(
            said(
                8,
                RoomRequest::Join {
                    queue: true,
                    prefetch: None
                }
            ),
            "#ops is an ordinary room, not a queue: /join #ops without --queue"
        );
        assert_eq!(said(8, join), "#ops is a queue room: /join #ops --queue");
        for code in 1..=8 {
            assert!(!said(code, join).contains("unknown"), "code {code}");
        }
        assert_eq!(
            said(200, join),
            "the server answered for #ops with unknown ROOMACK code 200"
        );
        // What was typed reaches the terminal escaped.
        assert_eq!(
            room_answer(join, "a\x1b[2J", &ack(1, 0, 0, 0, "")),
            r"'#a\x1b[2J' is not a room name: a letter, then up to 23 letters, digits, '.', '_' or '-'"
        );
    }

    #[test]
    fn a_prefetch_is_kept_by_a_join_done_and_forgotten_by_a_plain_join_or_a_leave() {
        let mut prefetches = Prefetches::default();
        let with = |prefetch| RoomRequest::Join {
            queue: true,
            prefetch,
        };
        let done = ack(0, FLAG_QUEUE, 16384, 1, "jobs");
        prefetches.note(with(Some(64)), "Jobs", &ack(3, 0, 0, 0, ""));
        assert_eq!(prefetches.joins(), vec![], "a refused JOIN keeps nothing");
        prefetches.note(with(Some(64)), "Jobs", &done);
        prefetches.note(with(Some(8)), "work", &done);
        assert_eq!(
            prefetches.joins(),
            vec![("Jobs".to_string(), 64), ("work".to_string(), 8)]
        );
        prefetches.note(with(None), "JOBS", &done);
        assert_eq!(prefetches.joins(), vec![("work".to_string(), 8)]);
        prefetches.note(RoomRequest::Leave, "Work", &done);
        assert_eq!(prefetches.joins(), vec![]);
    }
}
