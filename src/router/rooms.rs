//! Rooms and work queues (PROTOCOL.md, "Extension: rooms and queues"): which
//! room each id names, which names are its members, which member sessions
//! are online to receive it, and for a queue room the messages waiting and
//! those each member session holds (up to its name's prefetch, 1 unless
//! its JOIN asked for more). Membership belongs to a
//! name (lower case, as names are unique ignoring case), so it outlives the
//! sessions that show the name. Like the rest of the router: no sockets,
//! disk, clock or secrets; the room name it is handed was checked against
//! the name rule by the caller.

use super::{
    ConnId, Deadline, Outbox, Purpose, REPLAY_FRAMING, Role, RoomEvent, Router, Sender, Session,
};
use crate::proto::ext::{
    ExtFrame, FLAG_QUEUE, ROLE_BROADCAST, ROLE_VIEW, RoomAck, RoomCode, RoomEntry, RoomList,
};
use crate::proto::{ClientId, Frame, FrameView, Header, Kind, MAX_TEXT_LEN, SERVER_ID};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use work_queue::WorkQueue;

mod work_queue;

mod across;
pub use across::{RoomClaim, RoomFacts};

mod copies;
mod queue_home;

// The rooms' part of the id space is the wire's (clients read it too).
pub use crate::proto::ext::{ROOM_IDS, is_room_id};

/// The most rooms a server may be asked to hold: a ROOMLIST of them all
/// fits in one frame (2 + 2048 × 30 bytes).
pub const MAX_ROOMS_CEILING: usize = 2048;

/// The rooms' bounds (each a server flag; PROTOCOL.md, "Limits").
#[derive(Debug, Clone, Copy)]
pub struct RoomLimits {
    /// Rooms the server holds at most (`--max-rooms`, at most 2048).
    pub max_rooms: usize,
    /// Rooms one name may be a member of (`--rooms-per-name`).
    pub rooms_per_name: usize,
    /// Members (names) one room may have (`--room-members`).
    pub room_members: usize,
    /// Messages waiting in one queue room (`--queue-depth`).
    pub queue_depth: usize,
    /// How long a queue message may wait for a member (`--queue-wait`).
    pub queue_wait: Duration,
}

impl Default for RoomLimits {
    fn default() -> RoomLimits {
        RoomLimits {
            max_rooms: 1024,
            rooms_per_name: 64,
            room_members: 1024,
            queue_depth: 1024,
            queue_wait: Duration::from_secs(30),
        }
    }
}

/// A room message as a history recovered it: (number, origin, sender's
/// name, roles, text).
pub type RecalledMessage = (u64, ClientId, Option<String>, u8, Vec<u8>);

/// A room as a history recovered it, for [`Router::recall_room`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecalledRoom {
    pub id: ClientId,
    /// Its spelling.
    pub name: String,
    pub queue: bool,
    /// Member names (lower case), each with the number of the last kept
    /// message it was sent (None: none of `kept`).
    pub members: Vec<(String, Option<u64>)>,
    /// What it said lately, oldest first, numbered in ascending order.
    pub kept: Vec<RecalledMessage>,
    /// A queue room's waiting messages, oldest first: (wait, origin, seq,
    /// text).
    pub waiting: Vec<(u64, ClientId, u16, Vec<u8>)>,
}

#[derive(Debug)]
struct Room {
    /// The spelling of the JOIN that created it.
    name: Box<str>,
    queue: bool,
    /// Member names, lower case.
    members: BTreeSet<Box<str>>,
    /// Member sessions online (opted-in exhibitors showing a member name),
    /// in the order they came online: the queue's turn goes round them.
    online: Vec<ConnId>,
    /// A queue room's messages, waiting or held, and what each session of
    /// `online`, then of `away`, holds and may hold, by its place there
    /// (every room keeps the places; only a queue room has messages).
    work: WorkQueue,
    /// On a node of several, a queue room's member sessions on other
    /// nodes (node, exhibitor id), whose places come after `online`'s:
    /// this node gives them the messages it dispatches (CLUSTER.md,
    /// "Queues across nodes"). Empty on a single server.
    away: Vec<(super::NodeRef, ClientId)>,
    /// Member names that asked a prefetch other than 1 (queue rooms).
    prefetch: HashMap<Box<str>, u8>,
    /// What the room said lately, oldest first, numbered (ordinary rooms,
    /// with history only): a member back from away is sent what it missed.
    kept: VecDeque<(u64, Said)>,
    /// Output bytes `kept` takes, framing included.
    kept_bytes: usize,
    /// The number the next kept message gets.
    next_number: u64,
    /// The last kept message each member name was sent (or, at its JOIN,
    /// the last one before it): what it missed starts after.
    seen: HashMap<Box<str>, u64>,
}

/// A room message kept for members away: who sent it (as accepted) and
/// the MSG's fields.
#[derive(Debug)]
struct Said {
    origin: ClientId,
    name: Option<Box<str>>,
    roles: u8,
    text: Bytes,
}

/// Every room of one server.
#[derive(Debug)]
pub(super) struct Rooms {
    limits: RoomLimits,
    by_id: RoomTable,
    /// Room ids by lower-case name.
    by_key: HashMap<Box<str>, ClientId>,
    /// The rooms each member name is in.
    of_name: HashMap<Box<str>, Vec<ClientId>>,
    free_ids: BTreeSet<ClientId>,
    next_ticket: u64,
    /// Messages each ordinary room keeps for members away (0: none, the
    /// server keeps no history), and the output bytes they may take.
    keep: usize,
    keep_bytes: usize,
    /// On a node of several: the JOINs and LEAVEs the engine decides, and
    /// which other nodes have members of each room online.
    across: across::Across,
    /// On a node of several, with history: the other nodes each kept
    /// message is copied to.
    copies: copies::Keepers,
}

impl Rooms {
    pub(super) fn new(limits: RoomLimits) -> Rooms {
        let max = limits.max_rooms.min(MAX_ROOMS_CEILING);
        let first = *ROOM_IDS.start();
        Rooms {
            limits,
            by_id: RoomTable::default(),
            by_key: HashMap::new(),
            of_name: HashMap::new(),
            free_ids: (first..first + max as ClientId).collect(),
            next_ticket: 0,
            keep: 0,
            keep_bytes: 0,
            across: across::Across::default(),
            copies: copies::Keepers::default(),
        }
    }

    /// Whether `id` names a queue room.
    pub(super) fn is_queue(&self, id: ClientId) -> bool {
        self.by_id.get(&id).is_some_and(|r| r.queue)
    }

    /// Whether a message to the queue room `id` must be refused: the room
    /// is gone or holds `--queue-depth` messages waiting.
    pub(super) fn queue_is_full(&self, id: ClientId) -> bool {
        let depth = self.limits.queue_depth;
        self.by_id
            .get(&id)
            .is_none_or(|r| r.work.waiting_len() >= depth)
    }

    /// The member sessions online of an ordinary room (none for a queue).
    pub(super) fn online(&self, id: ClientId) -> &[ConnId] {
        match self.by_id.get(&id) {
            Some(room) if !room.queue => &room.online,
            _ => &[],
        }
    }

    /// Whether `key` (a lower-case name) is a member of some room: the only
    /// way the server knows a name that has no session.
    pub(super) fn knows_name(&self, key: &str) -> bool {
        self.of_name.contains_key(key)
    }

    /// When the oldest waiting queue message is given up on.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.by_id
            .values()
            .filter_map(|r| r.work.oldest_since())
            .map(|since| since + self.limits.queue_wait)
            .min()
    }
}

/// What a JOIN or LEAVE came to.
type Answer = Result<(ClientId, u8, u16, Box<str>), RoomCode>;

impl Router {
    /// The rooms' bounds (before any client connects).
    pub fn set_room_limits(&mut self, limits: RoomLimits) {
        let (keep, keep_bytes) = (self.rooms.keep, self.rooms.keep_bytes);
        self.rooms = Rooms::new(limits);
        self.keep_room_messages(keep, keep_bytes);
    }

    /// With history: each ordinary room keeps its last `len` messages that
    /// were shown, within `max_bytes` of output counted as for the
    /// broadcast replay, and a member session that comes online is sent
    /// those its name has not been sent (PROTOCOL.md, "With history").
    pub fn keep_room_messages(&mut self, len: usize, max_bytes: usize) {
        self.rooms.keep = len;
        self.rooms.keep_bytes = max_bytes;
    }

    /// A room from before this start, as a history recovered it (after
    /// [`Router::keep_room_messages`], before any client connects): its
    /// members, what it kept (within the same bounds as live) and what each
    /// member was sent, and a queue room's waiting messages, which wait
    /// afresh from `now`. A room whose id or name is taken, or past
    /// `--max-rooms`, is not recalled (false).
    pub fn recall_room(&mut self, recalled: RecalledRoom, now: Instant) -> bool {
        let key: Box<str> = recalled.name.to_ascii_lowercase().into();
        if recalled.members.is_empty()
            || self.rooms.by_key.contains_key(&key)
            || !self.rooms.free_ids.remove(&recalled.id)
        {
            return false;
        }
        let mut room = Room::empty(recalled.name.into(), recalled.queue);
        let (keep, max_bytes) = (self.rooms.keep, self.rooms.keep_bytes);
        if keep > 0 && !recalled.queue {
            for (number, origin, name, roles, text) in recalled.kept {
                room.kept_bytes += text.len() + REPLAY_FRAMING;
                room.next_number = number + 1;
                room.kept.push_back((
                    number,
                    Said {
                        origin,
                        name: name.map(String::into_boxed_str),
                        roles,
                        text: Bytes::from(text),
                    },
                ));
            }
            while room.kept.len() > keep || room.kept_bytes > max_bytes {
                let Some((_, dropped)) = room.kept.pop_front() else {
                    break;
                };
                room.kept_bytes -= dropped.text.len() + REPLAY_FRAMING;
            }
        }
        for (member, seen) in recalled.members {
            let member: Box<str> = member.into();
            if let Some(seen) = seen {
                room.seen.insert(member.clone(), seen);
            }
            let rooms_of = self.rooms.of_name.entry(member.clone()).or_default();
            rooms_of.push(recalled.id);
            room.members.insert(member);
        }
        for (wait, origin, seq, text) in recalled.waiting {
            self.next_wait = self.next_wait.max(wait + 1);
            // A history records what came in a MSG: a longer text would
            // fail later, at its turn, so it fails here.
            assert!(text.len() <= MAX_TEXT_LEN, "a recalled text fits a MSG");
            room.work.push_waiting(origin, seq, &text, None, now, wait);
        }
        if room.work.waiting_len() > 0 {
            self.note_deadline(now + self.rooms.limits.queue_wait);
        }
        info!(
            room = recalled.id,
            members = room.members.len(),
            kept = room.kept.len(),
            waiting = room.work.waiting_len(),
            "room recalled from history"
        );
        self.rooms.by_key.insert(key, recalled.id);
        self.rooms.by_id.insert(recalled.id, room);
        true
    }

    /// Everything a history needs to rebuild the rooms and the waiting
    /// messages from nothing (a checkpoint, HISTORY.md): each membership
    /// (online or not), each ordinary room's kept messages and how many of
    /// them each member was sent, each queue message not acknowledged and
    /// each message waiting for a name.
    pub fn room_snapshot(&self, emit: &mut impl FnMut(&RoomEvent<'_>)) {
        for (id, room) in self.rooms.by_id.iter() {
            for member in &room.members {
                let online = room
                    .online
                    .iter()
                    .any(|&c| self.session(c).and_then(member_key) == Some(&**member));
                emit(&RoomEvent::Joined {
                    room: id,
                    room_name: &room.name,
                    queue: room.queue,
                    online,
                    member,
                });
            }
            for (_, said) in &room.kept {
                emit(&RoomEvent::Kept {
                    room: id,
                    origin: said.origin,
                    sender: Sender {
                        name: said.name.as_deref(),
                        roles: said.roles,
                    },
                    text: &said.text,
                });
            }
            if !room.kept.is_empty() {
                for member in &room.members {
                    let seen = room.seen.get(member);
                    let count = room
                        .kept
                        .iter()
                        .filter(|(n, _)| seen.is_some_and(|s| n <= s))
                        .count();
                    emit(&RoomEvent::Seen {
                        room: id,
                        member,
                        count: count as u32,
                    });
                }
            }
            for (wait, origin, seq, text) in room.work.messages() {
                emit(&RoomEvent::Waiting {
                    wait,
                    origin,
                    seq,
                    room: id,
                    to: "",
                    sender: Sender {
                        name: None,
                        roles: 0,
                    },
                    text,
                    stored_ms: None,
                });
            }
        }
        self.waiting_snapshot(emit);
    }

    /// Whether there are rooms or messages waiting for names: what a
    /// checkpoint would hold.
    pub fn has_room_state(&self) -> bool {
        !self.rooms.by_id.is_empty() || !self.waiting.is_empty()
    }

    /// JOIN from `conn` (PROTOCOL.md, "Membership and messages"). `room`
    /// is the room name if it follows the name rule (None: code 1);
    /// `prefetch` is how many unacknowledged messages of a queue room each
    /// session of the name may hold (1 when the JOIN carried none; the
    /// codec refuses 0 and a prefetch on an ordinary JOIN).
    #[allow(clippy::too_many_arguments)] // one per field of the request
    pub fn join(
        &mut self,
        conn: ConnId,
        header: Header,
        queue: bool,
        prefetch: u8,
        room: Option<&str>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if !self.room_request_from(conn, header, now, out) {
            return;
        }
        if self.remote.enabled {
            return self.join_across(conn, header.seq, queue, prefetch.max(1), room, now, out);
        }
        let answer = self.try_join(conn, queue, prefetch.max(1), room, out);
        let joined = answer.as_ref().ok().map(|&(id, ..)| id);
        self.answer_room_request(conn, header.seq, answer, now, out);
        // Sessions online for the name may take waiting messages now.
        if let Some(id) = joined {
            self.dispatch_queue(id, now, out);
        }
    }

    /// LEAVE from `conn`; `room` as for [`Router::join`].
    pub fn leave(
        &mut self,
        conn: ConnId,
        header: Header,
        room: Option<&str>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if !self.room_request_from(conn, header, now, out) {
            return;
        }
        if self.remote.enabled {
            return self.leave_across(conn, header.seq, room, now, out);
        }
        let answer = self.try_leave(conn, room, now, out);
        self.answer_room_request(conn, header.seq, answer, now, out);
    }

    /// ROOMS from `conn`: every room, ascending, with its member count.
    pub fn list_rooms(
        &mut self,
        conn: ConnId,
        header: Header,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if !self.room_request_from(conn, header, now, out) {
            return;
        }
        let rooms = self
            .rooms
            .by_id
            .iter()
            .map(|(id, room)| RoomEntry {
                room: id,
                flags: if room.queue { FLAG_QUEUE } else { 0 },
                members: room.members.len().min(u16::MAX as usize) as u16,
                name: room.name.as_bytes().to_vec(),
            })
            .collect();
        let id = self.session(conn).map_or(0, |s| s.id);
        let list = ExtFrame::RoomList(RoomList {
            origin: SERVER_ID,
            dest: id,
            seq: header.seq,
            rooms,
        });
        self.reply_ext(conn, header.seq, list, now, out);
    }

    /// Whether a room request from `conn` is to be answered: from an emitter
    /// that has not left, with its own id as origin (rule 2: else ERRO and
    /// close). From an exhibitor: ERRO, kept, as for a MSG.
    pub(super) fn room_request_from(
        &mut self,
        conn: ConnId,
        header: Header,
        now: Instant,
        out: &mut impl Outbox,
    ) -> bool {
        let Some(session) = self.session(conn) else {
            return false;
        };
        let id = session.id;
        if header.origin != id {
            warn!(
                conn,
                id,
                claimed = header.origin,
                "spoofed origin in a room request"
            );
            out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, id, header.seq));
            self.close(conn, super::CloseReason::Spoofed, now, out);
            return false;
        }
        match &session.role {
            Role::Emitter {
                finished: false, ..
            } => true,
            Role::Emitter { .. } | Role::Anonymous => false,
            Role::Exhibitor { .. } => {
                debug!(conn, id, "room request from an exhibitor refused");
                out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, id, header.seq));
                false
            }
        }
    }

    /// The name `conn`'s session is a member by (lower case), or code 5:
    /// membership belongs to a name.
    fn name_key(&self, conn: ConnId) -> Result<Box<str>, RoomCode> {
        let session = self.session(conn).expect("checked by the caller");
        let name = session.name().ok_or(RoomCode::NoName)?;
        Ok(name.to_ascii_lowercase().into())
    }

    fn try_join(
        &mut self,
        conn: ConnId,
        queue: bool,
        prefetch: u8,
        room: Option<&str>,
        out: &mut impl Outbox,
    ) -> Answer {
        let room = room.ok_or(RoomCode::BadName)?;
        let member = self.name_key(conn)?;
        let roles = self.session(conn).expect("checked by the caller").roles;
        let limits = self.rooms.limits;
        let key: Box<str> = room.to_ascii_lowercase().into();
        let rooms_of_member = self.rooms.of_name.get(&member).map_or(0, Vec::len);
        let id = match self.rooms.by_key.get(&key) {
            Some(&id) => {
                let existing = &self.rooms.by_id[&id];
                if existing.queue != queue {
                    return Err(RoomCode::OtherKind);
                }
                if existing.members.contains(&member) {
                    // A JOIN again sets the name's prefetch afresh.
                    let room = self.rooms.by_id.get_mut(&id).expect("found above");
                    room.set_prefetch(&member, prefetch, &self.sessions);
                    return Ok(room_answer(id, room));
                }
                if roles & ROLE_VIEW == 0 {
                    return Err(RoomCode::NotAllowed);
                }
                if existing.members.len() >= limits.room_members {
                    return Err(RoomCode::RoomFull);
                }
                if rooms_of_member >= limits.rooms_per_name {
                    return Err(RoomCode::TooManyRooms);
                }
                id
            }
            None => {
                if roles & (ROLE_VIEW | ROLE_BROADCAST) != ROLE_VIEW | ROLE_BROADCAST {
                    return Err(RoomCode::NotAllowed);
                }
                if rooms_of_member >= limits.rooms_per_name {
                    return Err(RoomCode::TooManyRooms);
                }
                let id = self
                    .rooms
                    .free_ids
                    .pop_first()
                    .ok_or(RoomCode::ServerFull)?;
                self.rooms.by_key.insert(key, id);
                self.rooms.by_id.insert(id, Room::empty(room.into(), queue));
                info!(room = id, name = room, queue, "room created");
                id
            }
        };
        self.add_member(id, member, prefetch, true, out);
        info!(conn, room = id, "joined");
        Ok(room_answer(id, &self.rooms.by_id[&id]))
    }

    /// Makes `member` (lower case, not yet one) a member of room `id` with
    /// this prefetch: its sessions online here receive the room from now on,
    /// and it misses nothing said before. `logged`: a history records it
    /// (a membership made through this node).
    fn add_member(
        &mut self,
        id: ClientId,
        member: Box<str>,
        prefetch: u8,
        logged: bool,
        out: &mut impl Outbox,
    ) {
        let online: Vec<ConnId> = self
            .ids
            .exhibitors
            .iter()
            .map(|&(_, c)| c)
            .filter(|&c| self.session(c).and_then(member_key) == Some(&*member))
            .collect();
        let entry = self.rooms.by_id.get_mut(&id).expect("an existing room");
        // A new member misses nothing said before it joined.
        let last = entry.next_number.checked_sub(1);
        if let Some(last) = last {
            entry.seen.insert(member.clone(), last);
        }
        entry.members.insert(member.clone());
        if prefetch != 1 {
            entry.prefetch.insert(member.clone(), prefetch);
        }
        let is_online = !online.is_empty();
        for conn in online {
            entry.add_online(conn, prefetch);
        }
        if logged {
            out.room_event(&RoomEvent::Joined {
                room: id,
                room_name: &entry.name,
                queue: entry.queue,
                online: is_online,
                member: &member,
            });
        }
        self.rooms.of_name.entry(member).or_default().push(id);
        self.rooms.across.membership_changed();
    }

    fn try_leave(
        &mut self,
        conn: ConnId,
        room: Option<&str>,
        now: Instant,
        out: &mut impl Outbox,
    ) -> Answer {
        let room = room.ok_or(RoomCode::BadName)?;
        let member = self.name_key(conn)?;
        let key = room.to_ascii_lowercase();
        let id = *self.rooms.by_key.get(&*key).ok_or(RoomCode::NotMember)?;
        let answer = self
            .remove_member(id, &member, true, now, out)
            .ok_or(RoomCode::NotMember)?;
        info!(conn, room = id, "left");
        Ok(answer)
    }

    /// `member` (lower case) is a member of room `id` no more: its sessions
    /// here stop receiving it (what they held goes on), and a room left
    /// with no member is removed. Returns the ROOMACK's fields as the room
    /// stood once the member left (None: it was not a member). `logged` as
    /// for [`Router::add_member`].
    fn remove_member(
        &mut self,
        id: ClientId,
        member: &str,
        logged: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) -> Option<(ClientId, u8, u16, Box<str>)> {
        let entry = self.rooms.by_id.get_mut(&id)?;
        if !entry.members.remove(member) {
            return None;
        }
        entry.seen.remove(member);
        entry.prefetch.remove(member);
        if logged {
            out.room_event(&RoomEvent::Left { room: id, member });
        }
        self.rooms.across.membership_changed();
        if let Some(list) = self.rooms.of_name.get_mut(member) {
            list.retain(|&r| r != id);
            if list.is_empty() {
                self.rooms.of_name.remove(member);
            }
        }
        // The name's sessions stop receiving; what they held goes on.
        let sessions = &self.sessions;
        let gone: Vec<ConnId> = entry
            .online
            .iter()
            .copied()
            .filter(|&c| {
                sessions
                    .get(c)
                    .and_then(Option::as_ref)
                    .and_then(member_key)
                    == Some(member)
            })
            .collect();
        for conn in gone {
            // A member no more: LEFT says it all, no OFFLINE.
            self.room_session_gone(id, conn, None, out);
        }
        let answer = room_answer(id, &self.rooms.by_id[&id]);
        if self.rooms.by_id[&id].members.is_empty() {
            self.remove_room(id, now, out);
        } else {
            self.dispatch_queue(id, now, out);
        }
        Some(answer)
    }

    /// Removes room `id`, which has no member left: its waiting messages
    /// are answered ERRO, its id is free again.
    fn remove_room(&mut self, id: ClientId, now: Instant, out: &mut impl Outbox) {
        let Some(room) = self.rooms.by_id.remove(&id) else {
            return;
        };
        self.rooms.by_key.remove(&*room.name.to_ascii_lowercase());
        self.rooms.free_ids.insert(id);
        info!(room = id, "room gone: no member left");
        for (wait, request) in room.work.into_answers() {
            out.room_event(&RoomEvent::Settled { wait });
            if let Some(request) = request {
                self.settle(request, false, now, out);
            } else {
                self.queue_answered_home(wait, false, out);
            }
        }
    }

    /// The ROOMACK for `answer`, in its place among `conn`'s replies.
    pub(super) fn answer_room_request(
        &mut self,
        conn: ConnId,
        seq: u16,
        answer: Answer,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let ack = self.room_ack(conn, seq, answer);
        self.reply_ext(conn, seq, ack, now, out);
    }

    /// The ROOMACK that tells `conn` `answer`.
    fn room_ack(&self, conn: ConnId, seq: u16, answer: Answer) -> ExtFrame {
        let id = self.session(conn).map_or(0, |s| s.id);
        let (code, (room, flags, members, name)) = match answer {
            Ok(fields) => (RoomCode::Done, fields),
            Err(code) => (code, (0, 0, 0, "".into())),
        };
        if code != RoomCode::Done {
            debug!(conn, id, code = code as u8, "room request refused");
        }
        ExtFrame::RoomAck(RoomAck {
            origin: SERVER_ID,
            dest: id,
            seq,
            code: code as u8,
            flags,
            room,
            members,
            name: name.as_bytes().to_vec(),
        })
    }

    // ---- sessions coming and going ----------------------------------------

    /// An opted-in exhibitor showing a name identified: it receives the
    /// rooms the name is a member of.
    pub(super) fn room_session_online(
        &mut self,
        conn: ConnId,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if self.rooms.of_name.is_empty() {
            return;
        }
        let Some(key) = self.session(conn).and_then(member_key).map(String::from) else {
            return;
        };
        let Some(ids) = self.rooms.of_name.get(key.as_str()).cloned() else {
            return;
        };
        for id in ids {
            let Router {
                rooms, sessions, ..
            } = &mut *self;
            if let Some(room) = rooms.by_id.get_mut(&id) {
                let first = !room.online.iter().any(|&c| {
                    sessions
                        .get(c)
                        .and_then(Option::as_ref)
                        .and_then(member_key)
                        == Some(key.as_str())
                });
                let prefetch = room.prefetch.get(key.as_str()).copied().unwrap_or(1);
                room.add_online(conn, prefetch);
                self.catch_up(id, conn, now, out);
                if first {
                    out.room_event(&RoomEvent::Online {
                        room: id,
                        member: &key,
                    });
                }
            }
            self.dispatch_queue(id, now, out);
        }
    }

    /// A shown MSG to the ordinary room `id`, from `from`, reached
    /// `targets`: kept for the members away, and noted as sent to the
    /// names of those who got it.
    pub(super) fn room_said(
        &mut self,
        id: ClientId,
        frame: &FrameView<'_>,
        from: ConnId,
        targets: &[ConnId],
    ) {
        if self.rooms.keep == 0 {
            return;
        }
        let sender: Sender<'_> = super::sender(&self.sessions, from);
        let sender = (sender.name.map(Box::<str>::from), sender.roles);
        self.room_keep(id, frame, sender, targets);
    }

    /// Keeps `frame`, a MSG to the ordinary room `id` from `sender` (name
    /// and roles), for the members away, and notes the names of the
    /// sessions here it reached (`targets`) as sent it. With history only.
    fn room_keep(
        &mut self,
        id: ClientId,
        frame: &FrameView<'_>,
        sender: (Option<Box<str>>, u8),
        targets: &[ConnId],
    ) {
        let (keep, max_bytes) = (self.rooms.keep, self.rooms.keep_bytes);
        let Router {
            rooms, sessions, ..
        } = self;
        let Some(room) = rooms.by_id.get_mut(&id) else {
            return;
        };
        let text = frame.text().unwrap_or_default();
        let number = room.next_number;
        room.next_number += 1;
        room.kept_bytes += text.len() + REPLAY_FRAMING;
        room.kept.push_back((
            number,
            Said {
                origin: frame.origin,
                name: sender.0,
                roles: sender.1,
                text: Bytes::copy_from_slice(text),
            },
        ));
        while room.kept.len() > keep || room.kept_bytes > max_bytes {
            let Some((_, dropped)) = room.kept.pop_front() else {
                break;
            };
            room.kept_bytes -= dropped.text.len() + REPLAY_FRAMING;
        }
        for &conn in targets {
            let key = sessions
                .get(conn)
                .and_then(Option::as_ref)
                .and_then(member_key);
            if let Some(key) = key
                && let Some(seen) = room.seen.get_mut(key)
            {
                *seen = number;
            } else if let Some(key) = key {
                room.seen.insert(key.into(), number);
            }
        }
    }

    /// Sends the member session `conn`, just online, what room `id` said
    /// that its name has not been sent, oldest first, each once (the name
    /// is noted as sent at once): MSG(original origin, room id, the
    /// server's seq), acknowledged like the broadcast replay.
    fn catch_up(&mut self, id: ClientId, conn: ConnId, now: Instant, out: &mut impl Outbox) {
        let Some(key) = self
            .session(conn)
            .and_then(member_key)
            .map(Box::<str>::from)
        else {
            return;
        };
        let Some(room) = self.rooms.by_id.get(&id) else {
            return;
        };
        if room.queue || room.kept.is_empty() {
            return;
        }
        let after = room.seen.get(&key).copied();
        let missed: Vec<(ClientId, Option<Box<str>>, u8, Bytes)> = room
            .kept
            .iter()
            .filter(|(n, _)| after.is_none_or(|a| *n > a))
            .map(|(_, s)| (s.origin, s.name.clone(), s.roles, s.text.clone()))
            .collect();
        let last = room.kept.back().map(|(n, _)| *n);
        if let (Some(last), Some(room)) = (last, self.rooms.by_id.get_mut(&id)) {
            room.seen.insert(key, last);
        }
        if missed.is_empty() {
            return;
        }
        let deadline = self.timeline.after(now);
        for (origin, name, roles, text) in &missed {
            self.tell_as_said(conn, *origin, name.as_deref(), *roles, deadline, out);
            let session = self.session_mut(conn).expect("caught up a live session");
            let seq = session.seq.next_seq();
            let msg = Frame::msg(*origin, id, seq, text.clone()).expect("a MSG's text fits");
            out.send(conn, &msg);
            session
                .awaiting_ack
                .push(seq, deadline.due, Purpose::Replay);
        }
        debug!(conn, room = id, messages = missed.len(), "room caught up");
        self.note_deadline(deadline.at);
    }

    /// Before a kept room message to `conn`: a WHO when what it should show
    /// for `origin` differs from what it was told, as for the broadcast
    /// replay (the holder of the id now when it has the recorded name, the
    /// recorded name and roles otherwise).
    pub(super) fn tell_as_said(
        &mut self,
        conn: ConnId,
        origin: ClientId,
        name: Option<&str>,
        roles: u8,
        deadline: Deadline,
        out: &mut impl Outbox,
    ) {
        let holder = self.ids.get(origin).and_then(|c| self.session(c));
        let (name, roles) = match holder {
            Some(holder) if holder.name() == name => (holder.name(), holder.roles),
            _ => (name, roles),
        };
        let told = self
            .session(conn)
            .and_then(|s| s.told.as_ref()?.get(&origin));
        if told.is_some_and(|(n, r)| n.as_deref() == name && *r == roles) {
            return;
        }
        let name = name.map(Into::into);
        self.tell(conn, origin, name, roles, deadline, out);
    }

    /// The exhibitor `conn`, showing the member name `key`, is gone: it
    /// leaves its rooms' online lists, and what it held is passed on.
    pub(super) fn room_session_offline(
        &mut self,
        conn: ConnId,
        key: &str,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let Some(ids) = self.rooms.of_name.get(key).cloned() else {
            return;
        };
        for id in ids {
            self.room_session_gone(id, conn, Some(key), out);
            self.dispatch_queue(id, now, out);
        }
    }

    /// `conn` no longer receives room `id`; a message it held goes back to
    /// the front of the room's waiting line (at-least-once). `member`: the
    /// member name it showed, still a member: when it was the name's last
    /// session there, a history notes the name offline.
    fn room_session_gone(
        &mut self,
        id: ClientId,
        conn: ConnId,
        member: Option<&str>,
        out: &mut impl Outbox,
    ) {
        let queue_wait = self.rooms.limits.queue_wait;
        let Router {
            rooms, sessions, ..
        } = &mut *self;
        let Some(room) = rooms.by_id.get_mut(&id) else {
            return;
        };
        let Some(at) = room.online.iter().position(|&c| c == conn) else {
            return;
        };
        room.online.remove(at);
        if let Some(member) = member {
            let others = room.online.iter().any(|&c| {
                sessions
                    .get(c)
                    .and_then(Option::as_ref)
                    .and_then(member_key)
                    == Some(member)
            });
            if !others {
                out.room_event(&RoomEvent::Offline { room: id, member });
            }
        }
        if let Some(since) = room.work.remove_place(at) {
            let due = since + queue_wait;
            debug!(conn, room = id, "queue messages passed on");
            // Regression (tests/room_rules.rs): without it a message passed
            // on by a session closed at a tick waited past its bound, since
            // that tick had already taken the rooms' earliest deadline.
            self.note_deadline(due);
        }
    }

    // ---- work queues --------------------------------------------------------

    /// A MSG to the queue room `frame.dest` (PROTOCOL.md, "Work queues"):
    /// it waits in the room until a member session is free, unless the room
    /// is full (ERRO at once).
    pub(super) fn queue_request(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if self.remote.enabled && self.queue_sent_home(conn, frame, now, out) {
            return;
        }
        let room = frame.dest;
        if self.rooms.queue_is_full(room) {
            debug!(conn, room, "queue full: refused");
            self.push_reply(conn, frame.seq, 0, false);
            self.flush_replies(conn, now, out);
            return;
        }
        let request = self.push_reply(conn, frame.seq, 1, false);
        let wait = self.next_wait;
        self.next_wait += 1;
        let text = frame.text().unwrap_or_default();
        let Router {
            rooms, sessions, ..
        } = &mut *self;
        out.room_event(&RoomEvent::Waiting {
            wait,
            origin: frame.origin,
            seq: frame.seq,
            room,
            to: "",
            sender: super::sender(sessions, conn),
            text,
            stored_ms: None,
        });
        let entry = rooms.by_id.get_mut(&room).expect("checked above");
        entry
            .work
            .push_waiting(frame.origin, frame.seq, text, Some(request), now, wait);
        let turn = entry.work.next_turn();
        self.note_deadline(now + self.rooms.limits.queue_wait);
        if let Some(at) = turn {
            self.dispatch_turns(room, at, now, out);
        }
    }

    /// Gives waiting messages of room `id` to free member sessions, in turn.
    /// Every arrival and every acknowledgement asks, and often no session
    /// is free or nothing waits: that answer costs no call.
    #[inline(always)]
    fn dispatch_queue(&mut self, id: ClientId, now: Instant, out: &mut impl Outbox) {
        let room = self.rooms.by_id.get(&id).filter(|r| r.queue);
        if let Some(at) = room.and_then(|r| r.work.next_turn()) {
            self.dispatch_turns(id, at, now, out);
        }
    }

    /// The body of [`Router::dispatch_queue`], from the turn of the member
    /// session at `at` in queue room `id`.
    #[inline(never)]
    fn dispatch_turns(&mut self, id: ClientId, at: usize, now: Instant, out: &mut impl Outbox) {
        let deadline = self.timeline.after(now);
        let mut given = false;
        // Set once a message went to a member session on another node.
        let mut away = false;
        // Set once the session of this turn was told the sender's name.
        let mut told = false;
        let mut turn = Some(at);
        while let Some(at) = turn {
            let Router {
                rooms,
                sessions,
                ids,
                tellers,
                remote,
                limits,
                ..
            } = self;
            let room = rooms.by_id.get_mut(&id).expect("a queue room's turn");
            // Past the sessions here: a member session on another node.
            let target = room.online.get(at).copied().unwrap_or(ConnId::MAX);
            let live = sessions.get_mut(target).and_then(Option::as_mut);
            let Some(session) = live.filter(|s| !s.leaving) else {
                if at < room.online.len() {
                    // Leaving or gone: passed over until it settles a
                    // message (or leaves the room, which it is about to).
                    room.work.skip(at);
                } else {
                    let ticket = rooms.next_ticket;
                    rooms.next_ticket += 1;
                    let deadline = now + (limits.ack_timeout + super::remote::RELAY_GRACE);
                    room.give_away(id, at, ticket, remote, deadline, out);
                    away = true;
                }
                turn = room.work.next_turn();
                told = false;
                continue;
            };
            let origin = room.work.next_origin();
            if *tellers > 0 && !told && !session.told_of(origin, ids.epoch) {
                // Rare (a sender this session was not found told about):
                // the WHO goes first, then the same turn again.
                self.tell_names(&[target], &[origin], deadline, out);
                told = true;
                continue;
            }
            told = false;
            let ticket = rooms.next_ticket;
            rooms.next_ticket += 1;
            // The message is held before it goes out, and goes out from
            // where it is held: no copy of it is made.
            let slot = room.work.give(at, ticket);
            let view = room.work.view(slot, id);
            out.forward(&[target], &view);
            session.awaiting_ack.push(
                view.seq,
                deadline.due,
                Purpose::Queued {
                    room: id,
                    slot,
                    ticket,
                },
            );
            given = true;
            turn = room.work.next_turn();
        }
        if given {
            self.note_deadline(deadline.at);
        }
        if away {
            self.note_away_deadline(now);
        }
    }

    /// `conn` acknowledged the queue message in `slot` it was given under
    /// `ticket`: its emitter's reply settles and the session is free for
    /// the next.
    #[allow(clippy::too_many_arguments)] // the delivery's three fields
    pub(super) fn queue_acked(
        &mut self,
        conn: ConnId,
        id: ClientId,
        slot: u32,
        ticket: u64,
        ok: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let Some(room) = self.rooms.by_id.get_mut(&id) else {
            return;
        };
        let Some((wait, request)) = room.work.settle(slot, ticket) else {
            debug!(
                conn,
                room = id,
                "acknowledged a queue message passed on already"
            );
            return;
        };
        out.room_event(&RoomEvent::Settled { wait });
        if let Some(request) = request {
            self.settle(request, ok, now, out);
        } else {
            self.queue_answered_home(wait, ok, out);
        }
        self.dispatch_queue(id, now, out);
    }

    /// A delivery of room `id` in `slot` under `ticket` failed with `conn`'s
    /// end: every message the session holds of the room goes back to wait
    /// for the next member session, in the order it was given them (the
    /// later deliveries of the same end then find nothing left to pass on).
    pub(super) fn queue_dropped(&mut self, conn: ConnId, id: ClientId, slot: u32, ticket: u64) {
        let queue_wait = self.rooms.limits.queue_wait;
        let Some(room) = self.rooms.by_id.get_mut(&id) else {
            return;
        };
        if let Some(since) = room.work.drop_holder_of(slot, ticket) {
            debug!(conn, room = id, "queue messages passed on");
            self.note_deadline(since + queue_wait);
        }
    }

    /// Gives up on queue messages that waited `--queue-wait`: ERRO to
    /// their emitters.
    pub(super) fn expire_queues(&mut self, now: Instant, out: &mut impl Outbox) {
        let wait = self.rooms.limits.queue_wait;
        let mut expired = Vec::new();
        if let Some(before) = now.checked_sub(wait) {
            for room in self.rooms.by_id.values_mut() {
                room.work.expire(before, &mut expired);
            }
        }
        if !expired.is_empty() {
            info!(messages = expired.len(), "queue messages waited too long");
        }
        for (wait, request) in expired {
            out.room_event(&RoomEvent::Settled { wait });
            if let Some(request) = request {
                self.settle(request, false, now, out);
            } else {
                self.queue_answered_home(wait, false, out);
            }
        }
    }

    /// Room `id`'s queue load: messages waiting and messages held by member
    /// sessions (None: no such room). The fuzz target bounds their sum.
    #[cfg(feature = "testing")]
    pub fn queue_load(&self, id: ClientId) -> Option<(usize, usize)> {
        let room = self.rooms.by_id.get(&id)?;
        Some((room.work.waiting_len(), room.work.held()))
    }

    /// The rooms' part of [`Router::check_invariants`].
    #[cfg(feature = "testing")]
    pub(super) fn check_room_invariants(&self) -> Result<(), String> {
        let rooms = &self.rooms;
        if rooms.by_id.len() != rooms.by_key.len() {
            return Err("rooms by id and by name disagree".into());
        }
        for (id, room) in rooms.by_id.iter() {
            if room.members.is_empty() {
                return Err(format!("room {id} has no member but exists"));
            }
            if rooms.free_ids.contains(&id) {
                return Err(format!("room {id} is both held and free"));
            }
            for member in &room.members {
                if !rooms.of_name.get(member).is_some_and(|l| l.contains(&id)) {
                    return Err(format!("room {id}'s member {member} does not list it"));
                }
            }
            for &c in &room.online {
                let key = self.session(c).and_then(member_key);
                if !key.is_some_and(|k| room.members.contains(k)) {
                    return Err(format!("room {id} lists conn {c}, no member session"));
                }
            }
            room.work
                .check(room.online.len() + room.away.len())
                .map_err(|e| format!("room {id}: {e}"))?;
            // Only a leaving or gone session is passed over with room left.
            for (at, &c) in room.online.iter().enumerate() {
                let live = self.session(c).is_some_and(|s| !s.leaving);
                if room.queue && live && room.work.has_room(at) && !room.work.is_free(at) {
                    return Err(format!("room {id}: conn {c} has room but is passed over"));
                }
            }
        }
        for (name, ids) in &rooms.of_name {
            if ids.is_empty() || ids.len() > rooms.limits.rooms_per_name {
                return Err(format!("name {name} is in {} rooms", ids.len()));
            }
        }
        Ok(())
    }
}

impl Room {
    /// A room with no members, messages or holds yet: made by a first JOIN
    /// or rebuilt from the log.
    fn empty(name: Box<str>, queue: bool) -> Room {
        Room {
            name,
            queue,
            members: BTreeSet::new(),
            online: Vec::new(),
            work: WorkQueue::default(),
            away: Vec::new(),
            prefetch: HashMap::new(),
            kept: VecDeque::new(),
            kept_bytes: 0,
            next_number: 0,
            seen: HashMap::new(),
        }
    }

    /// The member session `conn` comes online here, able to hold
    /// `prefetch`: its place is after the others here, before those on
    /// other nodes.
    fn add_online(&mut self, conn: ConnId, prefetch: u8) {
        self.online.push(conn);
        if self.away.is_empty() {
            self.work.add_place(prefetch);
        } else {
            self.work.insert_place(self.online.len() - 1, prefetch);
        }
    }

    /// Sets the prefetch of the member name `member` (1: the default) and
    /// of its sessions online here.
    fn set_prefetch(&mut self, member: &str, prefetch: u8, sessions: &[Option<Session>]) {
        if prefetch == 1 {
            self.prefetch.remove(member);
        } else {
            self.prefetch.insert(member.into(), prefetch);
        }
        for at in 0..self.online.len() {
            let of_member = sessions
                .get(self.online[at])
                .and_then(Option::as_ref)
                .and_then(member_key)
                == Some(member);
            if of_member {
                self.work.set_capacity(at, prefetch);
            }
        }
    }
}

/// A ROOMACK's fields for room `id`.
fn room_answer(id: ClientId, room: &Room) -> (ClientId, u8, u16, Box<str>) {
    let flags = if room.queue { FLAG_QUEUE } else { 0 };
    let members = room.members.len().min(u16::MAX as usize) as u16;
    (id, flags, members, room.name.clone())
}

/// The member name (lower case) an opted-in exhibitor receives rooms for.
fn member_key(session: &Session) -> Option<&str> {
    session.member_key()
}

/// Rooms by id: a slot per id of `ROOM_IDS` up to the highest in use, so a
/// message to a room finds it by an index instead of a tree search. Room
/// ids are handed out lowest first, so the slots stay dense, and there are
/// at most `MAX_ROOMS_CEILING` of them.
#[derive(Debug, Default)]
struct RoomTable {
    slots: Vec<Option<Box<Room>>>,
    len: usize,
}

impl RoomTable {
    fn slot(id: ClientId) -> Option<usize> {
        id.checked_sub(*ROOM_IDS.start()).map(usize::from)
    }

    fn get(&self, id: &ClientId) -> Option<&Room> {
        self.slots.get(Self::slot(*id)?)?.as_deref()
    }

    fn get_mut(&mut self, id: &ClientId) -> Option<&mut Room> {
        self.slots.get_mut(Self::slot(*id)?)?.as_deref_mut()
    }

    fn insert(&mut self, id: ClientId, room: Room) {
        let at = Self::slot(id).expect("a room id");
        if at >= self.slots.len() {
            self.slots.resize_with(at + 1, || None);
        }
        if self.slots[at].replace(Box::new(room)).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, id: &ClientId) -> Option<Room> {
        let room = self.slots.get_mut(Self::slot(*id)?)?.take()?;
        self.len -= 1;
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        Some(*room)
    }

    #[cfg(feature = "testing")]
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rooms in ascending order of id.
    fn iter(&self) -> impl Iterator<Item = (ClientId, &Room)> {
        let first = *ROOM_IDS.start();
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(at, room)| Some((first + at as ClientId, room.as_deref()?)))
    }

    fn values(&self) -> impl Iterator<Item = &Room> {
        self.slots.iter().filter_map(Option::as_deref)
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Room> {
        self.slots.iter_mut().filter_map(Option::as_deref_mut)
    }
}

impl std::ops::Index<&ClientId> for RoomTable {
    type Output = Room;

    fn index(&self, id: &ClientId) -> &Room {
        self.get(id).expect("a room in the table")
    }
}
