//! What the history's records say about rooms, read back at start
//! (HISTORY.md, "Rooms and waiting messages"): the log's records, oldest
//! first, folded into the rooms, members, kept messages and waiting
//! messages a server had, then handed to the router. The router never sees
//! a record; this file never sees a socket.

use crate::proto::ClientId;
use crate::router::{Recalled, RecalledMessage, RecalledRoom, Router, is_room_id};
use crate::store::format::RecordView;
use crate::store::rooms::RoomRecord;
use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;
use tracing::{info, warn};

/// The rooms' state as the records so far leave it.
#[derive(Debug, Default)]
pub(super) struct RoomLog {
    /// Messages each ordinary room keeps (`--replay`).
    keep: usize,
    /// Records folded so far: a message's place in the log.
    position: u64,
    rooms: BTreeMap<ClientId, RoomState>,
    /// Waiting messages not settled, by their number (the order they came).
    waiting: BTreeMap<u64, Waiting>,
    /// Inside a checkpoint: the state before it, given back if the
    /// checkpoint never completes (the log ends inside it).
    before_checkpoint: Option<(BTreeMap<ClientId, RoomState>, BTreeMap<u64, Waiting>)>,
}

#[derive(Debug)]
struct RoomState {
    name: String,
    queue: bool,
    members: BTreeMap<String, Member>,
    /// The last `keep` messages to the room, numbered by their place.
    kept: VecDeque<RecalledMessage>,
    /// The place of the room's last message.
    last: Option<u64>,
}

#[derive(Debug)]
struct Member {
    /// The place of the last message it was sent.
    seen: Option<u64>,
    /// A session of it receives the room's messages as they come.
    online: bool,
}

#[derive(Debug)]
struct Waiting {
    origin: ClientId,
    seq: u16,
    room: ClientId,
    to: String,
    name: Option<String>,
    roles: u8,
    text: Vec<u8>,
    time_ms: u64,
}

impl RoomLog {
    pub(super) fn new(keep: usize) -> RoomLog {
        RoomLog {
            keep,
            ..RoomLog::default()
        }
    }

    /// The next record of the log.
    pub(super) fn fold(&mut self, record: &RecordView<'_>) {
        let place = self.position;
        self.position += 1;
        let room_record = RoomRecord::read(record);
        // Only these come between a checkpoint's two records: anything else
        // means it was cut short (a failed write), and it is dropped.
        let in_checkpoint = matches!(
            room_record,
            Some(
                RoomRecord::Joined { .. }
                    | RoomRecord::Kept { .. }
                    | RoomRecord::Seen { .. }
                    | RoomRecord::Waiting { .. }
                    | RoomRecord::Checkpoint { end: true }
            )
        );
        if !in_checkpoint {
            self.abandon_checkpoint();
        }
        match room_record {
            Some(room_record) => self.fold_room_record(room_record, place, record.time_ms),
            None if is_room_id(record.dest) => self.fold_room_message(place, record),
            None => {}
        }
    }

    fn fold_room_message(&mut self, place: u64, record: &RecordView<'_>) {
        let Some(room) = self.rooms.get_mut(&record.dest) else {
            return;
        };
        if room.queue {
            return;
        }
        room.last = Some(place);
        for member in room.members.values_mut().filter(|m| m.online) {
            member.seen = Some(place);
        }
        if self.keep == 0 {
            return;
        }
        let name = (!record.name.is_empty()).then(|| record.name.to_string());
        room.kept.push_back((
            place,
            record.origin,
            name,
            record.roles,
            record.text.to_vec(),
        ));
        if room.kept.len() > self.keep {
            room.kept.pop_front();
        }
    }

    fn fold_room_record(&mut self, record: RoomRecord<'_>, place: u64, time_ms: u64) {
        match record {
            RoomRecord::Checkpoint { end: false } => {
                self.before_checkpoint = Some((
                    std::mem::take(&mut self.rooms),
                    std::mem::take(&mut self.waiting),
                ));
            }
            RoomRecord::Checkpoint { end: true } => self.before_checkpoint = None,
            RoomRecord::Kept {
                room,
                origin,
                sender,
                roles,
                text,
            } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    let name = (!sender.is_empty()).then(|| sender.to_string());
                    state
                        .kept
                        .push_back((place, origin, name, roles, text.to_vec()));
                    state.last = Some(place);
                }
            }
            RoomRecord::Seen {
                room,
                member,
                count,
            } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    let seen = match count as usize {
                        0 => None,
                        n => state.kept.get(n - 1).or(state.kept.back()).map(|k| k.0),
                    };
                    if let Some(m) = state.members.get_mut(member) {
                        m.seen = seen;
                    }
                }
            }
            RoomRecord::Joined {
                room,
                room_name,
                queue,
                online,
                member,
            } => {
                let state = self.rooms.entry(room).or_insert_with(|| RoomState {
                    name: room_name.to_string(),
                    queue,
                    members: BTreeMap::new(),
                    kept: VecDeque::new(),
                    last: None,
                });
                let seen = state.last;
                state
                    .members
                    .insert(member.to_string(), Member { seen, online });
            }
            RoomRecord::Left { room, member } => {
                if let Some(state) = self.rooms.get_mut(&room) {
                    state.members.remove(member);
                    if state.members.is_empty() {
                        self.rooms.remove(&room);
                    }
                }
            }
            RoomRecord::Online { room, member } | RoomRecord::Offline { room, member } => {
                let online = matches!(record, RoomRecord::Online { .. });
                if let Some(state) = self.rooms.get_mut(&room)
                    && let Some(m) = state.members.get_mut(member)
                {
                    if online {
                        m.seen = state.last;
                    }
                    m.online = online;
                }
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
                self.waiting.insert(
                    wait,
                    Waiting {
                        origin,
                        seq,
                        room,
                        to: to.to_string(),
                        name: (!sender.is_empty()).then(|| sender.to_string()),
                        roles,
                        text: text.to_vec(),
                        time_ms,
                    },
                );
            }
            RoomRecord::Settled { wait } => {
                self.waiting.remove(&wait);
            }
        }
    }

    /// A checkpoint that did not complete: the state before it stands.
    fn abandon_checkpoint(&mut self) {
        if let Some((rooms, waiting)) = self.before_checkpoint.take() {
            warn!("history: a checkpoint of the rooms was cut short: the state before it is kept");
            (self.rooms, self.waiting) = (rooms, waiting);
        }
    }

    /// Hands what the records left to `router` (its bounds set): every
    /// room with its members, kept messages and waiting queue messages,
    /// and every message waiting for a name. A member online when the log
    /// ends (the server stopped without noting it offline) was sent every
    /// message up to there.
    pub(super) fn recall(self, router: &mut Router, now: Instant) {
        let mut log = self;
        log.abandon_checkpoint();
        let RoomLog {
            rooms, mut waiting, ..
        } = log;
        let (mut recalled_rooms, mut queued, mut letters) = (0, 0, 0);
        for (id, state) in rooms {
            let members = state
                .members
                .into_iter()
                .map(|(name, m)| (name, if m.online { state.last } else { m.seen }))
                .collect();
            let mut in_room = Vec::new();
            if state.queue {
                let waits: Vec<u64> = waiting
                    .iter()
                    .filter(|(_, w)| w.room == id)
                    .map(|(&wait, _)| wait)
                    .collect();
                for wait in waits {
                    let w = waiting.remove(&wait).expect("listed above");
                    in_room.push((wait, w.origin, w.seq, w.text));
                }
            }
            queued += in_room.len();
            let room = RecalledRoom {
                id,
                name: state.name,
                queue: state.queue,
                members,
                kept: state.kept.into_iter().collect(),
                waiting: in_room,
            };
            if router.recall_room(room, now) {
                recalled_rooms += 1;
            } else {
                warn!(
                    room = id,
                    "history: a room recovered does not fit the server's limits: not kept"
                );
            }
        }
        for (wait, w) in waiting {
            if w.room != 0 {
                warn!(
                    wait,
                    room = w.room,
                    "history: a queue message for a room that is gone: dropped"
                );
                continue;
            }
            letters += 1;
            router.recall_waiting(Recalled {
                wait,
                origin: w.origin,
                to: w.to,
                name: w.name,
                roles: w.roles,
                text: w.text,
                time_ms: w.time_ms,
            });
        }
        if recalled_rooms + letters > 0 {
            info!(
                rooms = recalled_rooms,
                queued, letters, "history: rooms and waiting messages recovered"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::{Cursor, SEGMENT_MAGIC_V3 as SEGMENT_MAGIC, Step, seal_records};

    /// Folds `records`, encoded and read back as the log would hand them.
    fn folded(records: &[RoomRecord<'_>]) -> RoomLog {
        let mut batch = Vec::new();
        for r in records {
            r.encode_unsealed(1, &mut batch);
        }
        seal_records(&mut batch);
        let mut bytes = SEGMENT_MAGIC.to_vec();
        bytes.extend_from_slice(&batch);
        let mut log = RoomLog::new(5);
        let mut cursor = Cursor::new();
        while let Ok(Step::Record { record, .. }) =
            cursor.next(&bytes[..], bytes.len() as u64, true)
        {
            log.fold(&record);
        }
        log
    }

    fn joined(member: &str) -> RoomRecord<'_> {
        RoomRecord::Joined {
            room: 0x4000,
            room_name: "ops",
            queue: false,
            online: false,
            member,
        }
    }

    fn members(log: &RoomLog) -> Vec<&str> {
        log.rooms[&0x4000]
            .members
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn a_complete_checkpoint_replaces_what_came_before() {
        let begin = RoomRecord::Checkpoint { end: false };
        let end = RoomRecord::Checkpoint { end: true };
        let log = folded(&[joined("alice"), begin, joined("bob"), end]);
        assert_eq!(members(&log), ["bob"]);
    }

    #[test]
    fn a_checkpoint_cut_short_leaves_the_state_before_it() {
        let begin = RoomRecord::Checkpoint { end: false };
        // Another kind of record before its end: a write that failed.
        let online = RoomRecord::Online {
            room: 0x4000,
            member: "alice",
        };
        let log = folded(&[joined("alice"), begin, joined("bob"), online]);
        assert_eq!(members(&log), ["alice"]);
        assert!(log.rooms[&0x4000].members["alice"].online);
        // The log ends inside it.
        let mut log = folded(&[joined("alice"), begin, joined("bob")]);
        log.abandon_checkpoint();
        assert_eq!(members(&log), ["alice"]);
    }

    #[test]
    fn seen_in_a_checkpoint_points_at_its_kept_copies() {
        let kept = |text: &'static [u8]| RoomRecord::Kept {
            room: 0x4000,
            origin: 1,
            sender: "",
            roles: 7,
            text,
        };
        let log = folded(&[
            RoomRecord::Checkpoint { end: false },
            joined("alice"),
            joined("bob"),
            kept(b"one"),
            kept(b"two"),
            RoomRecord::Seen {
                room: 0x4000,
                member: "alice",
                count: 1,
            },
            RoomRecord::Seen {
                room: 0x4000,
                member: "bob",
                count: 0,
            },
            RoomRecord::Checkpoint { end: true },
        ]);
        let room = &log.rooms[&0x4000];
        let places: Vec<u64> = room.kept.iter().map(|k| k.0).collect();
        assert_eq!(places, [3, 4]);
        assert_eq!(room.members["alice"].seen, Some(3));
        assert_eq!(room.members["bob"].seen, None);
    }
}
