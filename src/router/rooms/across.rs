//! Rooms on a node of several (CLUSTER.md, "Rooms across nodes"). A JOIN or
//! LEAVE is decided by the engine, so that a room name has one id in the
//! whole system and its membership (by name) is the same on every node,
//! within one node's bounds held system-wide; what any node's members did
//! reaches this node's rooms as plain data (the replica); and a room's
//! message goes, beside this node's member sessions, to each other node
//! where one of its members is online, one target per node. The engine is
//! never seen: a claim goes out through the [`Outbox`], its answer and the
//! other nodes' changes come in as plain data. A single server builds none
//! of this.

use super::{Answer, MAX_ROOMS_CEILING, ROOM_IDS, Room, room_answer};
use crate::proto::ClientId;
use crate::proto::ext::{FLAG_QUEUE, ROLE_BROADCAST, ROLE_VIEW, RoomCode};
use crate::router::{ConnId, NodeRef, Outbox, ReplyForm, RequestRef, Role, Router};
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tracing::{info, warn};

/// A JOIN or LEAVE for the engine to decide; the loop carries it. Names
/// are lower case but `spelling`, the room's name as a creating JOIN
/// spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomClaim {
    Join {
        claim: u64,
        key: Box<str>,
        spelling: Box<str>,
        queue: bool,
        member: Box<str>,
        /// The member may create the room (PROTOCOL.md, "Roles").
        may_create: bool,
        /// This node's bounds, which the engine holds system-wide.
        max_rooms: u16,
        room_members: u32,
        rooms_per_name: u32,
        /// The prefetch the JOIN asked (CLUSTER.md, "Queues across nodes").
        prefetch: u8,
    },
    Leave {
        claim: u64,
        key: Box<str>,
        member: Box<str>,
    },
}

/// A room as the engine has it, after a JOIN or a LEAVE (`members`: how
/// many it has now, system-wide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomFacts {
    pub id: ClientId,
    pub queue: bool,
    pub spelling: String,
    pub members: u32,
}

/// A JOIN or LEAVE waiting for the engine: the reply it fills.
#[derive(Debug)]
struct RoomWait {
    conn: ConnId,
    seq: u16,
    request: RequestRef,
    member: Box<str>,
    /// Some for a JOIN: the prefetch it asked.
    prefetch: Option<u8>,
}

/// The rooms' cluster state of one router (empty on a single server).
#[derive(Debug, Default)]
pub(in crate::router) struct Across {
    next_claim: u64,
    waits: HashMap<u64, RoomWait>,
    /// Moves on at every membership change here, so that `nodes` is
    /// computed again.
    pub(in crate::router) generation: u64,
    /// Per room: the other nodes with a member online, as computed at the
    /// id table's epoch and membership generation noted beside them.
    nodes: HashMap<ClientId, (u64, u64, Vec<NodeRef>)>,
    /// The queue rooms' part: their homes and member sessions elsewhere.
    pub(in crate::router) homes: super::queue_home::Homes,
}

impl Across {
    pub(in crate::router) fn membership_changed(&mut self) {
        self.generation += 1;
    }
}

impl Router {
    /// JOIN on a node of several: refused here when this node can tell
    /// (bad name, no name, the other kind, no role), answered here when
    /// the name is a member already (the prefetch set afresh, and a new
    /// one told to every node through the engine, unanswered), else asked
    /// of the engine; its ROOMACK keeps its place among the replies.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::router) fn join_across(
        &mut self,
        conn: ConnId,
        seq: u16,
        queue: bool,
        prefetch: u8,
        room: Option<&str>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let renewed = self.prefetch_renewed(conn, queue, prefetch, room);
        let (key, spelling, member, may_create) = match self.join_here(conn, queue, prefetch, room)
        {
            Ok(asked) => asked,
            Err(answer) => {
                if let Some((key, spelling, member)) = renewed {
                    // The queue's home may be another node: the engine
                    // says the new prefetch to every node (the `j` line).
                    // Its answer waits for no one; without the engine the
                    // JOIN is still answered here, as before.
                    let claim = self.rooms.across.next_claim;
                    self.rooms.across.next_claim += 1;
                    self.send_join_claim(claim, key, spelling, true, member, false, prefetch, out);
                }
                return self.answer_room_request(conn, seq, answer, now, out);
            }
        };
        let claim = self.room_claim_wait(conn, seq, member.clone(), Some(prefetch));
        self.send_join_claim(
            claim, key, spelling, queue, member, may_create, prefetch, out,
        );
    }

    /// A JOIN claim to the engine, with this node's bounds.
    #[allow(clippy::too_many_arguments)]
    fn send_join_claim(
        &self,
        claim: u64,
        key: Box<str>,
        spelling: Box<str>,
        queue: bool,
        member: Box<str>,
        may_create: bool,
        prefetch: u8,
        out: &mut impl Outbox,
    ) {
        let limits = self.rooms.limits;
        out.room_claim(&RoomClaim::Join {
            claim,
            key,
            spelling,
            queue,
            member,
            may_create,
            max_rooms: limits.max_rooms.min(MAX_ROOMS_CEILING) as u16,
            room_members: limits.room_members.min(u32::MAX as usize) as u32,
            rooms_per_name: limits.rooms_per_name.min(u32::MAX as usize) as u32,
            prefetch,
        });
    }

    /// A queue JOIN by a member already, asking a prefetch other than the
    /// one this node holds for the name: the room's key and spelling and
    /// the member, for the engine to tell every node.
    fn prefetch_renewed(
        &self,
        conn: ConnId,
        queue: bool,
        prefetch: u8,
        room: Option<&str>,
    ) -> Option<(Box<str>, Box<str>, Box<str>)> {
        let key: Box<str> = room?.to_ascii_lowercase().into();
        let existing = &self.rooms.by_id[self.rooms.by_key.get(&key)?];
        let member = self.name_key(conn).ok()?;
        let known = existing.prefetch.get(&member).copied().unwrap_or(1);
        (queue && existing.queue && existing.members.contains(&member) && known != prefetch)
            .then(|| (key, existing.name.clone(), member))
    }

    /// What this node decides of a JOIN by itself (Err: the answer), or
    /// what to ask the engine: the room's key and spelling, the member,
    /// whether it may create the room.
    #[allow(clippy::type_complexity)]
    fn join_here(
        &mut self,
        conn: ConnId,
        queue: bool,
        prefetch: u8,
        room: Option<&str>,
    ) -> Result<(Box<str>, Box<str>, Box<str>, bool), Answer> {
        let room = room.ok_or(Err(RoomCode::BadName))?;
        let member = self.name_key(conn).map_err(Err)?;
        let roles = self.session(conn).expect("checked by the caller").roles;
        let key: Box<str> = room.to_ascii_lowercase().into();
        if let Some(&id) = self.rooms.by_key.get(&key) {
            let existing = &self.rooms.by_id[&id];
            if existing.queue != queue {
                return Err(Err(RoomCode::OtherKind));
            }
            if existing.members.contains(&member) {
                let room = self.rooms.by_id.get_mut(&id).expect("found above");
                room.set_prefetch(&member, prefetch, &self.sessions);
                return Err(Ok(room_answer(id, room)));
            }
        }
        if roles & ROLE_VIEW == 0 {
            return Err(Err(RoomCode::NotAllowed));
        }
        Ok((key, room.into(), member, roles & ROLE_BROADCAST != 0))
    }

    /// LEAVE on a node of several: refused here when this node can tell,
    /// else asked of the engine.
    pub(in crate::router) fn leave_across(
        &mut self,
        conn: ConnId,
        seq: u16,
        room: Option<&str>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let asked = room.ok_or(RoomCode::BadName).and_then(|room| {
            let member = self.name_key(conn)?;
            Ok((Box::<str>::from(room.to_ascii_lowercase()), member))
        });
        let (key, member) = match asked {
            Ok(asked) => asked,
            Err(code) => return self.answer_room_request(conn, seq, Err(code), now, out),
        };
        let claim = self.room_claim_wait(conn, seq, member.clone(), None);
        out.room_claim(&RoomClaim::Leave { claim, key, member });
    }

    /// Takes `conn`'s next reply place for a ROOMACK the engine's answer
    /// fills; returns the claim's number.
    fn room_claim_wait(
        &mut self,
        conn: ConnId,
        seq: u16,
        member: Box<str>,
        prefetch: Option<u8>,
    ) -> u64 {
        let request = self.push_reply(conn, seq, 1, false);
        if let Some(Role::Emitter { replies, .. }) = self.session_mut(conn).map(|s| &mut s.role)
            && let Some(last) = replies.back_mut()
        {
            last.form = ReplyForm::Answer;
        }
        let across = &mut self.rooms.across;
        let claim = across.next_claim;
        across.next_claim += 1;
        let wait = RoomWait {
            conn,
            seq,
            request,
            member,
            prefetch,
        };
        across.waits.insert(claim, wait);
        claim
    }

    /// The engine answered room claim `claim` (None: it could not be
    /// asked, answered as a full table is: code 7). A JOIN or LEAVE done
    /// is applied here at once (the change channel brings it too, and
    /// applying it twice changes nothing), then its ROOMACK takes its place.
    pub fn room_answered(
        &mut self,
        claim: u64,
        outcome: Option<Result<RoomFacts, RoomCode>>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let Some(wait) = self.rooms.across.waits.remove(&claim) else {
            return;
        };
        let answer: Answer = match outcome {
            None => {
                warn!(
                    conn = wait.conn,
                    "room request refused: the engine could not be asked"
                );
                Err(RoomCode::ServerFull)
            }
            Some(Err(code)) => Err(code),
            Some(Ok(facts)) => {
                match wait.prefetch {
                    Some(prefetch) => {
                        let (id, queue) = (facts.id, facts.queue);
                        self.replica_join(id, queue, &facts.spelling, &wait.member, true, now, out);
                        if let Some(room) = self.rooms.by_id.get_mut(&id) {
                            room.set_prefetch(&wait.member, prefetch, &self.sessions);
                        }
                        self.dispatch_queue(id, now, out);
                        info!(conn = wait.conn, room = id, "joined, system-wide");
                    }
                    None => {
                        self.remove_member(facts.id, &wait.member, true, now, out);
                        info!(conn = wait.conn, room = facts.id, "left, system-wide");
                    }
                }
                let flags = if facts.queue { FLAG_QUEUE } else { 0 };
                let members = facts.members.min(u32::from(u16::MAX)) as u16;
                Ok((facts.id, flags, members, facts.spelling.into()))
            }
        };
        let current = self
            .session(wait.conn)
            .is_some_and(|s| s.incarnation == wait.request.incarnation);
        if current {
            let ack = self.room_ack(wait.conn, wait.seq, answer);
            self.answers.insert((wait.conn, wait.request.request), ack);
            self.settle(wait.request, true, now, out);
        }
    }

    /// This node is fenced: what it asked of its old incarnation may never
    /// be answered, so every JOIN and LEAVE still waiting is answered now
    /// as if the engine could not be asked (code 7; the replica is read
    /// afresh at the next join, whatever the engine did).
    pub(in crate::router) fn room_claims_failed(&mut self, now: Instant, out: &mut impl Outbox) {
        let mut claims: Vec<u64> = self.rooms.across.waits.keys().copied().collect();
        claims.sort_unstable();
        for claim in claims {
            self.room_answered(claim, None, now, out);
        }
    }

    /// `member` joined room `id` on some node, or joined it again, asking
    /// `prefetch` (None: the line did not say) (the change channel).
    #[allow(clippy::too_many_arguments)]
    pub fn remote_room_joined(
        &mut self,
        id: ClientId,
        queue: bool,
        spelling: &str,
        member: &str,
        prefetch: Option<u8>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let member = member.to_ascii_lowercase();
        self.replica_join(id, queue, spelling, &member, false, now, out);
        if let Some(prefetch) = prefetch
            && let Some(room) = self.rooms.by_id.get_mut(&id)
            && room.queue
            && room.members.contains(member.as_str())
            && room.prefetch.get(member.as_str()).copied().unwrap_or(1) != prefetch
        {
            room.set_prefetch(&member, prefetch, &self.sessions);
            // Its sessions on other nodes are listed again with it.
            self.rooms.across.membership_changed();
        }
        self.dispatch_queue(id, now, out);
    }

    /// `member` left room `id` on some node (the change channel).
    pub fn remote_room_left(
        &mut self,
        id: ClientId,
        member: &str,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let member = member.to_ascii_lowercase();
        self.remove_member(id, &member, false, now, out);
    }

    /// Every room and its members as the engine has them (at join, and
    /// again after a lost subscription): the replica is made the same,
    /// rooms it knows that the engine does not are gone.
    pub fn rooms_read(
        &mut self,
        rooms: &[(RoomFacts, Vec<String>)],
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let known: HashSet<ClientId> = rooms.iter().map(|(facts, _)| facts.id).collect();
        let stale: Vec<ClientId> = self
            .rooms
            .by_id
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !known.contains(id))
            .collect();
        for id in stale {
            self.forget_room(id, now, out);
        }
        for (facts, members) in rooms {
            if !self.ensure_room(facts.id, facts.queue, &facts.spelling, now, out) {
                continue;
            }
            let wanted: HashSet<String> = members.iter().map(|m| m.to_ascii_lowercase()).collect();
            let gone: Vec<Box<str>> = self.rooms.by_id[&facts.id]
                .members
                .iter()
                .filter(|m| !wanted.contains(&***m))
                .cloned()
                .collect();
            for member in gone {
                self.remove_member(facts.id, &member, false, now, out);
            }
            for member in &wanted {
                self.replica_join(
                    facts.id,
                    facts.queue,
                    &facts.spelling,
                    member,
                    false,
                    now,
                    out,
                );
            }
            self.dispatch_queue(facts.id, now, out);
        }
    }

    /// Makes `member` (lower case) a member of room `id` here, the room
    /// made first if this node does not know it; nothing if it is one
    /// already, or past this node's bounds (a node that says otherwise is
    /// not believed past them: the replica stays bounded).
    #[allow(clippy::too_many_arguments)]
    fn replica_join(
        &mut self,
        id: ClientId,
        queue: bool,
        spelling: &str,
        member: &str,
        logged: bool,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if !self.ensure_room(id, queue, spelling, now, out) {
            return;
        }
        let limits = self.rooms.limits;
        let room = &self.rooms.by_id[&id];
        if room.members.contains(member) {
            return;
        }
        let rooms_of = self.rooms.of_name.get(member).map_or(0, Vec::len);
        if room.members.len() >= limits.room_members || rooms_of >= limits.rooms_per_name {
            warn!(room = id, "a membership past this node's bounds ignored");
            return;
        }
        self.add_member(id, member.into(), 1, logged, out);
    }

    /// Makes sure room `id` is here as `spelling` of kind `queue`: a room
    /// this node has under that id or name otherwise is out of date (the
    /// engine freed it unheard) and goes. False for an id past the rooms a
    /// node may hold.
    fn ensure_room(
        &mut self,
        id: ClientId,
        queue: bool,
        spelling: &str,
        now: Instant,
        out: &mut impl Outbox,
    ) -> bool {
        let first = *ROOM_IDS.start();
        if id < first || usize::from(id - first) >= MAX_ROOMS_CEILING {
            warn!(room = id, "a room past the ids a node may hold ignored");
            return false;
        }
        if let Some(room) = self.rooms.by_id.get(&id) {
            if room.queue == queue && room.name.eq_ignore_ascii_case(spelling) {
                return true;
            }
            self.forget_room(id, now, out);
        }
        let key: Box<str> = spelling.to_ascii_lowercase().into();
        if let Some(&other) = self.rooms.by_key.get(&key) {
            self.forget_room(other, now, out);
        }
        self.rooms.free_ids.remove(&id);
        self.rooms.by_key.insert(key, id);
        self.rooms
            .by_id
            .insert(id, Room::empty(spelling.into(), queue));
        self.rooms.across.membership_changed();
        info!(room = id, name = spelling, queue, "room known system-wide");
        true
    }

    /// Room `id` is no more: every member leaves it here, and it goes.
    fn forget_room(&mut self, id: ClientId, now: Instant, out: &mut impl Outbox) {
        let Some(room) = self.rooms.by_id.get(&id) else {
            return;
        };
        let members: Vec<Box<str>> = room.members.iter().cloned().collect();
        for member in members {
            self.remove_member(id, &member, false, now, out);
        }
        self.remove_room(id, now, out);
        self.rooms.across.membership_changed();
    }

    /// A message to room `id` just kept here went to other nodes too: the
    /// members online there are noted as sent it, as those here are, so
    /// that one signing in here later is not sent it again.
    pub(in crate::router) fn room_said_across(&mut self, id: ClientId) {
        let Router { rooms, remote, .. } = self;
        let Some(room) = rooms.by_id.get_mut(&id) else {
            return;
        };
        let Some(last) = room.next_number.checked_sub(1) else {
            return; // nothing is kept (no history)
        };
        for (_, _, name) in remote.named_exhibitors() {
            let key = name.to_ascii_lowercase();
            if room.members.contains(key.as_str()) {
                room.seen.insert(key.into(), last);
            }
        }
    }

    /// Adds to `into` the other nodes where a member of room `id` is
    /// online (an exhibitor there shows a member's name): each is one
    /// target of a message to the room. Computed again only when the id
    /// table or a membership changed since.
    pub(in crate::router) fn room_nodes(&mut self, id: ClientId, into: &mut Vec<NodeRef>) {
        let (epoch, generation) = (self.ids.epoch, self.rooms.across.generation);
        if let Some((e, g, nodes)) = self.rooms.across.nodes.get(&id)
            && (*e, *g) == (epoch, generation)
        {
            into.extend_from_slice(nodes);
            return;
        }
        let Some(room) = self.rooms.by_id.get(&id) else {
            return;
        };
        let mut nodes: Vec<NodeRef> = Vec::new();
        for (_, node, name) in self.remote.named_exhibitors() {
            if !nodes.contains(&node) && room.members.contains(&*name.to_ascii_lowercase()) {
                nodes.push(node);
            }
        }
        nodes.sort_unstable();
        into.extend_from_slice(&nodes);
        self.rooms
            .across
            .nodes
            .insert(id, (epoch, generation, nodes));
    }
}
