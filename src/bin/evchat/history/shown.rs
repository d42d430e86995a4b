//! Which records `evchat history` shows, and as what (HISTORY.md, "Rooms
//! and waiting messages"): a message record as it is; a room record only
//! when it holds a message (a waiting one: a TELL stored for a name, or a
//! message to a queue room) outside a checkpoint (whose copies were shown
//! where they were first written), the rest (memberships, presence,
//! settlements, checkpoints) only teaching it the rooms' names, by id, as
//! the log goes.

use evchat::store::Entry;
use evchat::store::rooms::RoomRecord;
use std::collections::HashMap;

/// A message as printed.
pub struct Shown<'a> {
    pub origin: u16,
    /// The sender's name then (empty: none).
    pub name: &'a str,
    /// The destination id (a room's for a room message).
    pub dest: u16,
    /// The destination room's name, when the log named it.
    pub room: Option<&'a str>,
    /// A TELL stored for this name (lower case).
    pub to_name: Option<&'a str>,
    /// It waited: stored for a name, or queued in a queue room.
    pub waiting: bool,
    pub text: &'a [u8],
}

/// The room names the log has given so far, by id.
#[derive(Default)]
pub struct RoomNames {
    by_id: HashMap<u16, String>,
    /// Between a checkpoint's two records: its copies are not shown.
    in_checkpoint: bool,
}

impl RoomNames {
    /// What `entry` shows, if it is a message; learns room names from the
    /// records that are not.
    pub fn read<'a>(&'a mut self, entry: &'a Entry) -> Option<Shown<'a>> {
        let record = entry.record.view();
        match RoomRecord::read(&record) {
            Some(RoomRecord::Joined {
                room, room_name, ..
            }) => {
                self.by_id.insert(room, room_name.to_string());
                None
            }
            Some(RoomRecord::Checkpoint { end }) => {
                self.in_checkpoint = !end;
                None
            }
            Some(RoomRecord::Waiting { .. }) if self.in_checkpoint => None,
            Some(RoomRecord::Waiting {
                origin,
                room,
                to,
                sender,
                text,
                ..
            }) => Some(Shown {
                origin,
                name: sender,
                dest: if room == 0 { u16::MAX } else { room },
                room: self.by_id.get(&room).map(String::as_str),
                to_name: (room == 0).then_some(to),
                waiting: true,
                text,
            }),
            Some(_) => None,
            None => Some(Shown {
                origin: record.origin,
                name: record.name,
                dest: record.dest,
                room: self.by_id.get(&record.dest).map(String::as_str),
                to_name: None,
                waiting: false,
                text: record.text,
            }),
        }
    }
}
