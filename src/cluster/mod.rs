//! The engine bridge (CLUSTER.md): what a node asks of the engine that
//! several evchat nodes share (claim and release ids, publish a batch to
//! another node) and what the engine tells it back (its incarnation, the
//! id table's changes, batches from other nodes, a fence). The loop only
//! ever calls [`Engine::submit`], [`Engine::drain`] and
//! [`Engine::io_ready`], none of which blocks; an engine that talks to a
//! server does so on threads of its own, which wake the loop's
//! `mio::Waker`, and on sockets registered with the loop's poll, read and
//! written without blocking. The router never sees this module: the loop
//! hands it remote routes and acknowledgements as plain data.

pub mod batch;
pub mod memory;
pub mod publisher;
pub mod redis;
mod scripts;
pub mod subscription;

use crate::proto::ClientId;

/// A node incarnation: unique across the system and forever (the engine
/// numbers every join), so it names both the node and which life of it.
pub type NodeId = u64;

/// What the loop asks of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Claim the lowest id no live node holds, in the exhibitor range or
    /// the emitter range; answered by [`Event::Claimed`] with `claim`.
    Claim { claim: u64, exhibitor: bool },
    /// This node no longer holds `id`.
    Release { id: ClientId },
    /// Claim the name `name` (lower case) for a session of this node;
    /// answered by [`Event::NameClaimed`] with `claim`.
    ClaimName { claim: u64, name: String },
    /// This node no longer holds the name `name` (lower case).
    ReleaseName { name: String },
    /// The id `id` this node holds shows `name` (empty: none) and `roles`
    /// (what other nodes' WHO tell of it).
    Show {
        id: ClientId,
        roles: u8,
        name: String,
    },
    /// One batch (see [`batch`]) for node `to`; `relays` are the relay
    /// numbers it carries, failed by [`Event::Unreachable`] if it cannot go.
    Publish {
        to: NodeId,
        batch: Vec<u8>,
        relays: Vec<u64>,
    },
    /// Make `member` (lower case) a member of the room `key` (its name in
    /// lower case), creating it as `spelling` of kind `queue` if no room
    /// has the name and `may_create`; answered by [`Event::RoomAnswered`]
    /// with `claim`.
    JoinRoom { claim: u64, join: RoomJoin },
    /// `member` (lower case) leaves the room `key`; answered by
    /// [`Event::RoomAnswered`] with `claim`.
    LeaveRoom {
        claim: u64,
        key: String,
        member: String,
    },
}

/// A JOIN that asks the engine (CLUSTER.md, "Rooms across nodes"), with
/// the bounds of the asking node, which hold system-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomJoin {
    pub key: String,
    pub spelling: String,
    pub queue: bool,
    pub member: String,
    pub may_create: bool,
    /// Room ids are handed out among the first `max_rooms` of the range.
    pub max_rooms: u16,
    pub room_members: u32,
    pub rooms_per_name: u32,
    /// The prefetch the JOIN asked (1 unless a queue JOIN asked more):
    /// the change line carries it to every node, so that a queue's home
    /// lets the member's sessions elsewhere hold as many.
    pub prefetch: u8,
}

/// What the engine made of a JOIN or LEAVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomOutcome {
    /// The member is in (or was already in) the room, which has `members`
    /// members now.
    Joined {
        id: ClientId,
        queue: bool,
        spelling: String,
        members: u32,
    },
    /// The member left; `members` remain (0: the room is gone, its id free).
    Left {
        id: ClientId,
        queue: bool,
        spelling: String,
        members: u32,
    },
    /// The room exists with the other kind.
    OtherKind,
    /// The room has the most members it may have.
    RoomFull,
    /// The member is in the most rooms it may be in.
    TooManyRooms,
    /// Every room id the asking node may hand out is taken.
    NoRoomId,
    /// No room of that name (JOIN: and the member may not create one).
    NotAllowed,
    /// LEAVE: not a member, or no such room.
    NotMember,
}

/// A room as the engine holds it, for a node's replica at join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomState {
    pub id: ClientId,
    pub queue: bool,
    pub spelling: String,
    /// Member names, lower case.
    pub members: Vec<String>,
    /// A queue's members with the prefetch their last JOIN asked (lower
    /// case; a member missing here counts 1, as one that never said).
    pub prefetch: Vec<(String, u8)>,
}

/// What the engine tells the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node joined as incarnation `node`; `held` is every id another
    /// node holds, with its holder, as read after subscribing.
    Joined {
        node: NodeId,
        held: Vec<(ClientId, NodeId)>,
    },
    /// The answer to [`Request::Claim`] (None: the range is full, or the
    /// engine could not be asked).
    Claimed { claim: u64, id: Option<ClientId> },
    /// The answer to [`Request::ClaimName`]: `Some(true)` won, `Some(false)`
    /// held by another session, `None` the engine could not be asked.
    NameClaimed { claim: u64, won: Option<bool> },
    /// `node` now holds `id`.
    Held { id: ClientId, node: NodeId },
    /// `node`'s id `id` shows `name` (empty: none) and `roles`.
    Shown {
        id: ClientId,
        node: NodeId,
        roles: u8,
        name: String,
    },
    /// `node` no longer holds `id`.
    Freed { id: ClientId, node: NodeId },
    /// `node`'s lease expired and its ids were freed.
    Down { node: NodeId },
    /// A batch another node published to this one, still to be checked.
    Batch { bytes: Vec<u8> },
    /// A batch for `node` could not be delivered: these relays fail, and
    /// the pair notices in `batch` are sent again (CLUSTER.md).
    Unreachable {
        node: NodeId,
        relays: Vec<u64>,
        batch: Vec<u8>,
    },
    /// The answer to [`Request::JoinRoom`] or [`Request::LeaveRoom`]
    /// (None: the engine could not be asked).
    RoomAnswered {
        claim: u64,
        outcome: Option<RoomOutcome>,
    },
    /// `member` joined the room `id` (of kind `queue`, spelled `spelling`),
    /// on whichever node, or joined again; `prefetch`: the prefetch its
    /// JOIN asked (None from a line that does not carry one).
    RoomJoined {
        id: ClientId,
        queue: bool,
        spelling: String,
        member: String,
        prefetch: Option<u8>,
    },
    /// `member` left the room `id`, on whichever node.
    RoomLeft { id: ClientId, member: String },
    /// Every room and its members, as read at join (after [`Event::Joined`]).
    Rooms { rooms: Vec<RoomState> },
    /// This incarnation lost its lease: stop serving, then expect a new
    /// [`Event::Joined`].
    Fenced,
}

/// The engine's side of the bridge, as the loop sees it.
pub trait Engine {
    /// Queues `request` without blocking; gives it back if the queue is full.
    fn submit(&mut self, request: Request) -> Result<(), Request>;
    /// Moves every event that has arrived into `into`, without blocking.
    fn drain(&mut self, into: &mut Vec<Event>);
    /// The loop's poll reported one of the engine's own sockets (registered
    /// under `token`, one the engine was given): read and write what it
    /// can, without blocking.
    fn io_ready(&mut self, _token: mio::Token) {}
}
