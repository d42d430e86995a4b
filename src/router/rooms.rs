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
    ConnId, Delivery, Outbox, Purpose, REPLAY_FRAMING, RequestRef, Role, RoomEvent, Router, Sender,
    Session,
};
use crate::proto::ext::{
    ExtFrame, FLAG_QUEUE, ROLE_BROADCAST, ROLE_VIEW, RoomAck, RoomCode, RoomEntry, RoomList,
};
use crate::proto::{ClientId, Frame, FrameView, HEADER_LEN, Header, Kind, SERVER_ID};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

mod across;
pub use across::{RoomClaim, RoomFacts};

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

/// A queue message not yet acknowledged: its bytes as they arrived, the
/// request its emitter's reply settles (none for one recovered from
/// history: its emitter is gone), when it arrived (the wait bound runs from
/// then, redeliveries included), and the number a history records it by.
#[derive(Debug, Clone)]
struct Queued {
    wire: Vec<u8>,
    request: Option<RequestRef>,
    since: Instant,
    wait: u64,
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

/// A queue message a member session holds, under a ticket that its
/// delivery carries: a delivery whose ticket no longer matches (the message
/// was passed on) settles nothing.
#[derive(Debug)]
struct Held {
    ticket: u64,
    msg: Queued,
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
    /// Where the queue's next turn starts in `online`.
    cursor: usize,
    /// The messages each member session holds (queue rooms), oldest first,
    /// by the session's place in `online`: a turn scans no hash table.
    holding: Vec<VecDeque<Held>>,
    /// How many messages each member session may hold (its name's
    /// prefetch), by its place in `online`.
    capacity: Vec<u8>,
    /// How many messages `holding` holds in all.
    held: usize,
    /// How many member sessions hold their capacity: when all do, a new
    /// message only waits (no scan).
    full: usize,
    /// Member names that asked a prefetch other than 1 (queue rooms).
    prefetch: HashMap<Box<str>, u8>,
    /// Messages waiting for a member session, oldest first (queue rooms).
    waiting: VecDeque<Queued>,
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
    /// Buffers of settled queue messages, for the next ones to be copied
    /// into (at most `SPARE_WIRES`, each of at most `SPARE_WIRE_BYTES`).
    spare_wires: Vec<Vec<u8>>,
    /// On a node of several: the JOINs and LEAVEs the engine decides, and
    /// which other nodes have members of each room online.
    across: across::Across,
}

/// How many buffers of settled queue messages are kept for reuse, and the
/// largest kept: as many as an emitter's window of short messages (a turn
/// may read a whole window), together at most 256 KiB, so a burst of long
/// messages leaves no large buffers behind.
const SPARE_WIRES: usize = 1024;
const SPARE_WIRE_BYTES: usize = 256;

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
            spare_wires: Vec::new(),
            across: across::Across::default(),
        }
    }

    /// Keeps a settled queue message's buffer for the next one, if it is
    /// small and the spares are not all there.
    fn give_back(&mut self, mut wire: Vec<u8>) {
        if wire.capacity() <= SPARE_WIRE_BYTES && self.spare_wires.len() < SPARE_WIRES {
            wire.clear();
            self.spare_wires.push(wire);
        }
    }

    /// Whether `id` names a queue room.
    pub(super) fn is_queue(&self, id: ClientId) -> bool {
        self.by_id.get(&id).is_some_and(|r| r.queue)
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
            .filter_map(|r| r.waiting.front())
            .map(|q| q.since + self.limits.queue_wait)
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
            let msg = Frame::msg(origin, recalled.id, seq, Bytes::from(text))
                .expect("a recalled text fits a MSG");
            room.waiting.push_back(Queued {
                wire: msg.to_bytes().to_vec(),
                request: None,
                since: now,
                wait,
            });
        }
        if !room.waiting.is_empty() {
            self.note_deadline(now + self.rooms.limits.queue_wait);
        }
        info!(
            room = recalled.id,
            members = room.members.len(),
            kept = room.kept.len(),
            waiting = room.waiting.len(),
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
            let held = room.holding.iter().flatten().map(|h| &h.msg);
            for msg in held.chain(&room.waiting) {
                let Ok(Some((view, _))) = FrameView::parse(&msg.wire) else {
                    continue;
                };
                emit(&RoomEvent::Waiting {
                    wait: msg.wait,
                    origin: view.origin,
                    seq: view.seq,
                    room: id,
                    to: "",
                    sender: Sender {
                        name: None,
                        roles: 0,
                    },
                    text: view.text().unwrap_or_default(),
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

    fn try_join(
        &mut self,
        conn: ConnId,
        queue: bool,
        prefetch: u8,
        room: Option<&str>,
        out: &mut impl Outbox,
    ) -> Answer {
        let room = room.ok_or(RoomCode::BadName)?;
        let session = self.session(conn).expect("checked by the caller");
        let member: Box<str> = session
            .name()
            .ok_or(RoomCode::NoName)?
            .to_ascii_lowercase()
            .into();
        let roles = session.roles;
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
        entry.holding.extend(online.iter().map(|_| VecDeque::new()));
        entry.capacity.extend(online.iter().map(|_| prefetch));
        let is_online = !online.is_empty();
        entry.online.extend(online);
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
        let session = self.session(conn).expect("checked by the caller");
        let member: Box<str> = session
            .name()
            .ok_or(RoomCode::NoName)?
            .to_ascii_lowercase()
            .into();
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
        let held = room.holding.into_iter().flatten().map(|h| h.msg);
        for msg in held.chain(room.waiting) {
            out.room_event(&RoomEvent::Settled { wait: msg.wait });
            if let Some(request) = msg.request {
                self.settle(request, false, now, out);
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
                room.online.push(conn);
                room.holding.push(VecDeque::new());
                room.capacity
                    .push(room.prefetch.get(key.as_str()).copied().unwrap_or(1));
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
        let (keep, max_bytes) = (self.rooms.keep, self.rooms.keep_bytes);
        if keep == 0 {
            return;
        }
        let Router {
            rooms, sessions, ..
        } = self;
        let Some(room) = rooms.by_id.get_mut(&id) else {
            return;
        };
        let sender: Sender<'_> = super::sender(sessions, from);
        let text = frame.text().unwrap_or_default();
        let number = room.next_number;
        room.next_number += 1;
        room.kept_bytes += text.len() + REPLAY_FRAMING;
        room.kept.push_back((
            number,
            Said {
                origin: frame.origin,
                name: sender.name.map(Into::into),
                roles: sender.roles,
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
        let deadline = now + self.limits.ack_timeout;
        for (origin, name, roles, text) in &missed {
            self.tell_as_said(conn, *origin, name.as_deref(), *roles, deadline, out);
            let session = self.session_mut(conn).expect("caught up a live session");
            let seq = session.seq.next_seq();
            let msg = Frame::msg(*origin, id, seq, text.clone()).expect("a MSG's text fits");
            out.send(conn, &msg);
            session.awaiting_ack.push_back(Delivery {
                seq,
                deadline,
                purpose: Purpose::Replay,
            });
        }
        debug!(conn, room = id, messages = missed.len(), "room caught up");
        self.note_deadline(deadline);
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
        deadline: Instant,
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
        if room.cursor > at {
            room.cursor -= 1;
        }
        if room.is_full(at) {
            room.full -= 1;
        }
        room.capacity.remove(at);
        let held = room.holding.remove(at);
        if let Some(due) = room.pass_on(held, queue_wait) {
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
        let depth = self.rooms.limits.queue_depth;
        let room = frame.dest;
        let full = self
            .rooms
            .by_id
            .get(&room)
            .is_none_or(|r| r.waiting.len() >= depth);
        if full {
            debug!(conn, room, "queue full: refused");
            self.push_reply(conn, frame.seq, 0, false);
            self.flush_replies(conn, now, out);
            return;
        }
        let request = self.push_reply(conn, frame.seq, 1, false);
        let wait = self.next_wait;
        self.next_wait += 1;
        // The MSG as it arrived, in a buffer a settled message gave back
        // when there is one: a queue message costs no allocation then.
        let text = frame.text().unwrap_or_default();
        let mut wire = self.rooms.spare_wires.pop().unwrap_or_default();
        wire.reserve(HEADER_LEN + 2 + text.len());
        for field in [Kind::Msg as u16, frame.origin, frame.dest, frame.seq] {
            wire.extend_from_slice(&field.to_be_bytes());
        }
        wire.extend_from_slice(&(text.len() as u16).to_be_bytes());
        wire.extend_from_slice(text);
        out.room_event(&RoomEvent::Waiting {
            wait,
            origin: frame.origin,
            seq: frame.seq,
            room,
            to: "",
            sender: super::sender(&self.sessions, conn),
            text,
            stored_ms: None,
        });
        let msg = Queued {
            wire,
            request: Some(request),
            since: now,
            wait,
        };
        let entry = self.rooms.by_id.get_mut(&room).expect("checked above");
        entry.waiting.push_back(msg);
        self.note_deadline(now + self.rooms.limits.queue_wait);
        self.dispatch_queue(room, now, out);
    }

    /// Gives waiting messages of room `id` to free member sessions, in turn.
    fn dispatch_queue(&mut self, id: ClientId, now: Instant, out: &mut impl Outbox) {
        let mut deadline = None;
        loop {
            let Router {
                rooms,
                sessions,
                limits,
                ..
            } = self;
            let Some(room) = rooms.by_id.get_mut(&id) else {
                return;
            };
            if room.waiting.is_empty() || !room.queue {
                return;
            }
            let n = room.online.len();
            if room.full == n {
                return;
            }
            // The first free member session from the cursor on, round.
            let free = (room.cursor..n)
                .chain(0..room.cursor)
                .find(|&at| room.is_free(at, sessions));
            let Some(at) = free else {
                return;
            };
            let target = room.online[at];
            room.cursor = if at + 1 == n { 0 } else { at + 1 };
            let deadline = *deadline.get_or_insert_with(|| now + limits.ack_timeout);
            let ticket = rooms.next_ticket;
            rooms.next_ticket += 1;
            let msg = room.waiting.pop_front().expect("checked non-empty");
            let origin = u16::from_be_bytes([msg.wire[2], msg.wire[3]]);
            if self.tellers > 0 && !self.told_already(target, origin) {
                self.tell_names(&[target], &[origin], deadline, out);
            }
            // The message is held before it goes out, and goes out from
            // where it is held: no copy of it is made.
            let Router {
                rooms, sessions, ..
            } = self;
            let room = rooms.by_id.get_mut(&id).expect("found above");
            room.holding[at].push_back(Held { ticket, msg });
            room.held += 1;
            if room.is_full(at) {
                room.full += 1;
            }
            let held = room.holding[at].back().expect("pushed above");
            let (view, _) = FrameView::parse(&held.msg.wire)
                .ok()
                .flatten()
                .expect("a queued MSG was a whole frame");
            out.forward(&[target], &view);
            let seq = view.seq;
            let session = sessions
                .get_mut(target)
                .and_then(Option::as_mut)
                .expect("free sessions are live");
            session.awaiting_ack.push_back(Delivery {
                seq,
                deadline,
                purpose: Purpose::Queued { room: id, ticket },
            });
            self.note_deadline(deadline);
        }
    }

    /// `conn` acknowledged the queue message it was given under `ticket`:
    /// its emitter's reply settles and the session is free for the next.
    pub(super) fn queue_acked(
        &mut self,
        conn: ConnId,
        id: ClientId,
        ticket: u64,
        ok: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let Some(room) = self.rooms.by_id.get_mut(&id) else {
            return;
        };
        let Some(at) = room.online.iter().position(|&c| c == conn) else {
            return; // passed on already (the session left the room)
        };
        // Rule 4 settles the oldest delivery first, so the ticket is the
        // oldest held but one passed on and given to it again since.
        let Some(place) = room.holding[at].iter().position(|h| h.ticket == ticket) else {
            return; // passed on already, and given to it again since
        };
        let was_full = room.is_full(at);
        let held = if place == 0 {
            room.holding[at].pop_front()
        } else {
            room.holding[at].remove(place)
        };
        let held = held.expect("found above");
        room.held -= 1;
        if was_full && !room.is_full(at) {
            room.full -= 1;
        }
        out.room_event(&RoomEvent::Settled {
            wait: held.msg.wait,
        });
        self.rooms.give_back(held.msg.wire);
        if let Some(request) = held.msg.request {
            self.settle(request, ok, now, out);
        }
        self.dispatch_queue(id, now, out);
    }

    /// A delivery of room `id` under `ticket` failed with `conn`'s end:
    /// every message the session holds of the room goes back to wait for
    /// the next member session, in arrival order (the later deliveries of
    /// the same end then find nothing left to pass on).
    pub(super) fn queue_dropped(&mut self, conn: ConnId, id: ClientId, ticket: u64) {
        let queue_wait = self.rooms.limits.queue_wait;
        let Some(room) = self.rooms.by_id.get_mut(&id) else {
            return;
        };
        let Some(at) = room.online.iter().position(|&c| c == conn) else {
            return;
        };
        if room.holding[at].iter().any(|h| h.ticket == ticket) {
            if room.is_full(at) {
                room.full -= 1;
            }
            let held = std::mem::take(&mut room.holding[at]);
            if let Some(due) = room.pass_on(held, queue_wait) {
                self.note_deadline(due);
            }
        }
    }

    /// Gives up on queue messages that waited `--queue-wait`: ERRO to
    /// their emitters.
    pub(super) fn expire_queues(&mut self, now: Instant, out: &mut impl Outbox) {
        let wait = self.rooms.limits.queue_wait;
        let mut expired = Vec::new();
        for room in self.rooms.by_id.values_mut() {
            while room.waiting.front().is_some_and(|q| q.since + wait <= now) {
                let msg = room.waiting.pop_front().expect("checked");
                expired.push((msg.wait, msg.request));
            }
        }
        if !expired.is_empty() {
            info!(messages = expired.len(), "queue messages waited too long");
        }
        for (wait, request) in expired {
            out.room_event(&RoomEvent::Settled { wait });
            if let Some(request) = request {
                self.settle(request, false, now, out);
            }
        }
    }

    /// Room `id`'s queue load: messages waiting and messages held by member
    /// sessions (None: no such room). The fuzz target bounds their sum.
    #[cfg(feature = "testing")]
    pub fn queue_load(&self, id: ClientId) -> Option<(usize, usize)> {
        let room = self.rooms.by_id.get(&id)?;
        Some((room.waiting.len(), room.held))
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
            if room.holding.len() != room.online.len()
                || room.capacity.len() != room.online.len()
                || room.held != room.holding.iter().flatten().count()
                || room.full
                    != (0..room.online.len())
                        .filter(|&at| room.is_full(at))
                        .count()
            {
                return Err(format!("room {id}: held messages miscounted"));
            }
            if room.capacity.contains(&0) {
                return Err(format!("room {id}: a member session may hold nothing"));
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
            cursor: 0,
            holding: Vec::new(),
            capacity: Vec::new(),
            held: 0,
            full: 0,
            prefetch: HashMap::new(),
            waiting: VecDeque::new(),
            kept: VecDeque::new(),
            kept_bytes: 0,
            next_number: 0,
            seen: HashMap::new(),
        }
    }

    /// Whether the member session at `at` in `online` may be given a
    /// message: it holds fewer than it may, and is not leaving.
    #[inline(always)]
    fn is_free(&self, at: usize, sessions: &[Option<Session>]) -> bool {
        !self.is_full(at)
            && sessions
                .get(self.online[at])
                .and_then(Option::as_ref)
                .is_some_and(|s| !s.leaving)
    }

    /// Whether the member session at `at` in `online` holds as many
    /// messages as it may.
    fn is_full(&self, at: usize) -> bool {
        self.holding[at].len() >= usize::from(self.capacity[at])
    }

    /// Messages a member session held go back to the front of the waiting
    /// line, in the order they were given to it (at-least-once); returns
    /// the earliest wait bound among them.
    fn pass_on(&mut self, held: VecDeque<Held>, queue_wait: Duration) -> Option<Instant> {
        let due = held.iter().map(|h| h.msg.since + queue_wait).min();
        self.held -= held.len();
        for held in held.into_iter().rev() {
            self.waiting.push_front(held.msg);
        }
        due
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
                let was_full = self.is_full(at);
                self.capacity[at] = prefetch;
                match (was_full, self.is_full(at)) {
                    (true, false) => self.full -= 1,
                    (false, true) => self.full += 1,
                    _ => {}
                }
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
