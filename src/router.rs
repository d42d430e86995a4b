//! The server's rules, with no sockets: who holds which id, which emitter is
//! paired with which exhibitor, which deliveries await an acknowledgement and
//! which replies each emitter is owed. The event loop feeds it decoded frames,
//! disconnections and clock ticks; it answers through an [`Outbox`] with the
//! frames to send and the connections to close. It reads no clock: every
//! entry point that needs the time takes it as `now`. Tests drive it the same
//! way, with a recording outbox and a clock of their own.
//!
//! Every rule here is numbered as in PROTOCOL.md.

use crate::proto::ext::{
    ExtFrame, MAX_WHO_BODY, PLAIN_ROLES, ROLE_ADMIN, ROLE_BROADCAST, ROLE_EMIT, ROLE_VIEW,
    RoleWords, Who,
};
use crate::proto::{
    ClientId, EMITTER_IDS, EXHIBITOR_IDS, Frame, FrameView, HEADER_LEN, Header, Kind, SERVER_ID,
    SeqCounter, is_emitter_id, is_exhibitor_id,
};
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

mod awaiting;
mod deadline;
mod names;
mod pair_reconcile;
mod pair_retry;
mod remote;
mod rooms;
mod sequence_map;
mod waiting;
use awaiting::AwaitingAck;
use deadline::{Deadline, Due, Timeline};
pub use remote::{NameAnswer, NodeRef, PairNotice};
pub use rooms::{
    MAX_ROOMS_CEILING, ROOM_IDS, RecalledMessage, RecalledRoom, RoomClaim, RoomFacts, RoomLimits,
    is_room_id,
};
pub use waiting::{Recalled, RemoteLetter, TellLimits};

/// The roles a sender needs for every request it may make.
const SENDS: u8 = ROLE_EMIT | ROLE_BROADCAST;

/// The event loop's handle for one connection. It must not be reused for a
/// new connection until the router has forgotten the old one (after
/// [`Outbox::close`] or [`Router::disconnected`]).
pub type ConnId = usize;

/// Tells connections that held the same [`ConnId`] apart: numbered as they
/// connect, modulo 2^32 (a [`Delivery`] keeps it in 32 bits). A stale
/// delivery could settle a newer connection's request only if its
/// `ConnId` went to exactly the 2^32nd connection after its own before
/// its ack or timeout.
type Incarnation = u32;

/// Where the router's decisions go.
pub trait Outbox {
    /// Queue `frame` for `to`.
    fn send(&mut self, to: ConnId, frame: &Frame);
    /// Queue an identity-extension frame (WHO) for `to`, a client that
    /// opted in. An outbox that only records the plain protocol may
    /// ignore these.
    fn send_ext(&mut self, _to: ConnId, _frame: &ExtFrame) {}
    /// Queue a client's MSG, as it arrived, for each of `targets`. The
    /// default sends one owned copy to each; the server's outbox encodes
    /// straight from the view into each target's output.
    fn forward(&mut self, targets: &[ConnId], msg: &FrameView<'_>) {
        let frame = msg.to_frame();
        for &to in targets {
            self.send(to, &frame);
        }
    }
    /// Close `conn` once what was queued for it has been written. The router
    /// has already forgotten it.
    fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason);
    /// `conn` was held back by flow control and may be read again.
    fn resume_input(&mut self, conn: ConnId);
    /// A MSG was accepted for delivery (it has at least one target), from
    /// the sender `sender` tells: a server keeping history appends it. A
    /// number returned holds the emitter's reply until [`Router::durable`]
    /// passes it. The sender is looked up only when asked: without history,
    /// never.
    fn accepted<'s>(
        &mut self,
        _msg: &FrameView<'_>,
        _sender: impl FnOnce() -> Sender<'s>,
    ) -> Option<u64> {
        None
    }
    /// A change to the rooms or the waiting messages that a server keeping
    /// history records (HISTORY.md, "Rooms and waiting messages"). A number
    /// returned is handled as for [`Outbox::accepted`] where a reply waits
    /// for the record (a stored TELL's ROOMACK code 9).
    fn room_event(&mut self, _event: &RoomEvent<'_>) -> Option<u64> {
        None
    }
    /// Several nodes (CLUSTER.md): ask the engine for the lowest free id
    /// for `conn`'s OI (in the exhibitor range or the emitter range); the
    /// answer comes back through [`Router::id_claimed`].
    fn claim_id(&mut self, _conn: ConnId, _exhibitor: bool) {}
    /// Several nodes: this node no longer holds `id`.
    fn release_id(&mut self, _id: ClientId) {}
    /// Several nodes: `frame` goes to node `node` as relay number `relay`,
    /// answered through [`Router::relay_acked`].
    fn relay(&mut self, _node: NodeRef, _relay: u64, _frame: &FrameView<'_>) {}
    /// Several nodes: the outcome of relay `relay` from node `node`.
    fn relay_ack(&mut self, _node: NodeRef, _relay: u64, _ok: bool) {}
    /// Several nodes: relay `relay` from node `node` (a queue message for
    /// a member session here, or a waiting message for its addressee) was
    /// answered ERRO by its target; heard through [`Router::relay_refused`].
    fn relay_refused(&mut self, _node: NodeRef, _relay: u64) {}
    /// Several nodes: a notice for the other half of a pair, on `node`.
    fn pair_notice(&mut self, _node: NodeRef, _notice: PairNotice) {}
    /// Several nodes: ask the engine for the name `name` (lower case) as
    /// claim number `claim`; the answer comes back through
    /// [`Router::name_claimed`].
    fn claim_name(&mut self, _claim: u64, _name: &str) {}
    /// Several nodes: this node no longer holds the name `name` (lower case).
    fn release_name(&mut self, _name: &str) {}
    /// Several nodes: the id `id` this node holds shows `name` and `roles`
    /// (what the other nodes' WHO tell of it).
    fn show_id(&mut self, _id: ClientId, _roles: u8, _name: Option<&str>) {}
    /// Several nodes: a JOIN or LEAVE for the engine to decide; the answer
    /// comes back through [`Router::room_answered`].
    fn room_claim(&mut self, _claim: &RoomClaim) {}
    /// Several nodes: a message waiting here for a name, for the node
    /// `node` where it is online, as relay number `relay`.
    fn waited(&mut self, _node: NodeRef, _relay: u64, _letter: &RemoteLetter<'_>) {}
    /// Several nodes, with history: a copy of `frame`, a message said in
    /// an ordinary room here, for node `node` to keep for the room's
    /// members away (CLUSTER.md, "History"); nothing answers it.
    fn room_copy(&mut self, _node: NodeRef, _frame: &FrameView<'_>) {}
    /// Several nodes: a queue room's message `frame`, dispatched here (its
    /// home), for the member session `exhibitor` on node `node`, as relay
    /// number `relay`.
    fn queued(
        &mut self,
        _node: NodeRef,
        _relay: u64,
        _exhibitor: ClientId,
        _frame: &FrameView<'_>,
    ) {
    }
}

/// What changed in the rooms or the waiting messages, for a history to
/// record. Member and addressee names are lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomEvent<'a> {
    /// `member` joined room `room` (spelt `room_name`); `online`: a session
    /// of it receives the room from now on.
    Joined {
        room: ClientId,
        room_name: &'a str,
        queue: bool,
        online: bool,
        member: &'a str,
    },
    /// `member` left room `room`.
    Left { room: ClientId, member: &'a str },
    /// The first session of `member` in room `room` came online and was
    /// sent what it missed.
    Online { room: ClientId, member: &'a str },
    /// The last session of `member` in room `room` went.
    Offline { room: ClientId, member: &'a str },
    /// A message now waits: in the queue room `room`, or (room 0) for the
    /// name `to`. `stored_ms`: when it was stored, if not now (a
    /// checkpoint's copy).
    Waiting {
        wait: u64,
        origin: ClientId,
        seq: u16,
        room: ClientId,
        to: &'a str,
        sender: Sender<'a>,
        text: &'a [u8],
        stored_ms: Option<u64>,
    },
    /// The waiting message `wait` is gone.
    Settled { wait: u64 },
    /// In a snapshot ([`Router::room_snapshot`]): a message room `room`
    /// keeps, oldest first.
    Kept {
        room: ClientId,
        origin: ClientId,
        sender: Sender<'a>,
        text: &'a [u8],
    },
    /// In a snapshot, after room `room`'s kept messages: `member` was sent
    /// the first `count` of them.
    Seen {
        room: ClientId,
        member: &'a str,
        count: u32,
    },
}

/// Who sent a message, as a history keeps it (PROTOCOL.md, "Names"): the
/// session's name and roles when the message was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender<'a> {
    /// None: the session has no name (a plain client, or NL = 0).
    pub name: Option<&'a str>,
    /// The roles byte's bits the session held.
    pub roles: u8,
}

/// Why the rules close a connection; shown in the disconnect log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent FLW and got its OK.
    Left,
    /// The client acknowledged the server's FLW.
    Dismissed,
    /// The client's OI was refused.
    Refused,
    /// A frame arrived before OI.
    NotIdentified,
    /// A frame carried an origin that is not the connection's id.
    Spoofed,
    /// A CLIST or a frame of unknown type arrived from a client.
    BadFrame,
    /// No OI within the handshake timeout.
    HandshakeTimeout,
    /// An acknowledgement did not arrive within the ack timeout.
    Unresponsive,
    /// The server is shutting down and the client had not identified.
    Shutdown,
    /// A HELLO was refused with a code that closes (identity extension).
    HelloRefused,
    /// Signed in, not yet identified, when its account was revoked.
    Revoked,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloseReason::Left => "left (FLW)",
            CloseReason::Dismissed => "acknowledged the server's FLW",
            CloseReason::Refused => "identification refused",
            CloseReason::NotIdentified => "frame before OI",
            CloseReason::Spoofed => "spoofed origin",
            CloseReason::BadFrame => "frame a client may not send",
            CloseReason::HandshakeTimeout => "no OI within the handshake timeout",
            CloseReason::Unresponsive => "no acknowledgement within the ack timeout",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::HelloRefused => "HELLO refused",
            CloseReason::Revoked => "account revoked before OI",
        })
    }
}

/// The router's tunables (each is a server flag).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a delivered frame may wait for its OK before the exhibitor is
    /// dropped as unresponsive; at most about 12 days (longer counts as that:
    /// deadlines are kept in 32 bits, `router/deadline.rs`).
    pub ack_timeout: Duration,
    /// How long a connection may stay without OI.
    pub handshake_timeout: Duration,
    /// Unsettled requests an emitter may have before its input is paused.
    pub max_inflight: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            ack_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_inflight: 1024,
        }
    }
}

/// A frame the server sent that awaits the receiver's OK or ERRO. One is
/// written per target of every fan-out (unless it extends a run, see
/// [`AwaitingAck`]) and kept until its ack, so it is kept to 32 bytes (a
/// test holds it there): the deadline in 32 bits, the request's connection
/// and incarnation in 32 each.
#[derive(Debug, Clone, Copy)]
struct Delivery {
    purpose: Purpose,
    due: Due,
    /// The sequence number the ack should echo (a mismatch is only logged).
    seq: u16,
    /// Kept in a session's queue, the number of deliveries that follow
    /// this one in its run: the same emitter's next requests, with the
    /// next sequence numbers and the same deadline ([`AwaitingAck`]). It
    /// fills what was padding.
    repeats: u16,
}

// The tag in 64 bits, so that the payload starts 8-aligned: with a 16-bit
// tag, moving a Purpose copied bytes 2..24 as two overlapping loads, which
// the store just made cannot forward (a stall on every ack; BENCHMARKS.md,
// "Stalls on the way across").
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
enum Purpose {
    /// One target of an emitter's MSG or CREQ.
    Request(RequestRef),
    /// The server's FLW: the connection closes when it is acknowledged.
    Farewell,
    /// A past broadcast replayed to a new exhibitor: the ack is absorbed.
    Replay,
    /// WHO to an opted-in exhibitor: the ack is absorbed.
    Who,
    /// A queue room's message, in its slot there, given to this member
    /// session under a ticket (a slot given again has another).
    Queued {
        room: ClientId,
        slot: u32,
        ticket: u64,
    },
    /// A message that waited for this session's name: its answer settles
    /// it (PROTOCOL.md, "Waiting messages").
    Waited { wait: u64 },
    /// One target of a request relayed from another node (CLUSTER.md).
    Relayed { key: u64 },
}

/// Names one request of one emitter connection.
#[derive(Debug, Clone, Copy)]
struct RequestRef {
    /// The emitter's [`ConnId`], in 32 bits (see [`RequestRef::emitter`]).
    emitter: u32,
    /// Which connection held `emitter` when the request was made.
    incarnation: Incarnation,
    /// The request's number in that emitter's reply queue.
    request: u64,
}

impl RequestRef {
    fn new(emitter: ConnId, incarnation: Incarnation, request: u64) -> RequestRef {
        RequestRef {
            // A slab key below the descriptor limit.
            emitter: u32::try_from(emitter).expect("a connection number fits in 32 bits"),
            incarnation,
            request,
        }
    }

    /// The emitter's connection.
    fn emitter(self) -> ConnId {
        self.emitter as ConnId
    }
}

/// Replies held for history records: `count` consecutive requests of one
/// emitter connection from `request` on, each waiting for one record, from
/// `first_record` on. A turn's MSGs from one emitter make one run.
#[derive(Debug, Clone, Copy)]
struct HeldRun {
    first_record: u64,
    request: RequestRef,
    count: u64,
}

impl HeldRun {
    /// No run: [`Router::hold_for_record`] extends it to no record.
    const NONE: HeldRun = HeldRun {
        first_record: u64::MAX,
        request: RequestRef {
            emitter: u32::MAX,
            incarnation: 0,
            request: 0,
        },
        count: 0,
    };
}

/// A reply an emitter is owed, kept in request order (rule 4).
#[derive(Debug)]
struct PendingReply {
    /// Numbered per emitter, consecutively: the queue is indexed by it.
    request: u64,
    /// The request's sequence number, echoed in the reply.
    seq: u16,
    /// Targets that have not settled yet.
    outstanding: u32,
    /// At least one target answered OK.
    any_ok: bool,
    /// What is sent when it settles.
    form: ReplyForm,
}

/// What a settled reply is sent as. One byte, so that a pending reply stays
/// as small as before rooms (it is pushed and popped once a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ReplyForm {
    /// OK, or ERRO when no target answered OK.
    Ack,
    /// The OK to FLW: the emitter is closed once it is sent.
    Farewell,
    /// An extension answer (ROOMACK, ROOMLIST), kept in [`Router::answers`].
    Answer,
}

#[derive(Debug)]
// An explicit tag: the niche layout the compiler picks otherwise costs a
// few instructions on every `match` of the role, once per frame or more.
#[repr(u8)]
enum Role {
    /// Connected, no OI yet.
    Anonymous,
    Emitter {
        exhibitor: Option<ConnId>,
        replies: VecDeque<PendingReply>,
        /// The number the next request gets (replies are numbered consecutively).
        next_request: u64,
        /// Input is paused because `replies` reached `max_inflight`.
        paused: bool,
        /// FLW received: nothing more is read from it.
        finished: bool,
    },
    Exhibitor {
        emitter: Option<ConnId>,
    },
}

/// What a session said of itself with HELLO (PROTOCOL.md, "Extension:
/// identity"). The router is told the outcome, never how it was decided.
#[derive(Debug, Default)]
enum Hello {
    /// No HELLO accepted: a plain client (or one whose HELLO got a code
    /// that lets it try again).
    #[default]
    Plain,
    /// A HELLO is being checked: nothing more is read until the verdict.
    Checking,
    /// Opted in, with this name (none: NL = 0).
    Accepted { name: Option<Box<str>> },
}

/// Where a HELLO on a connection stands, for the event loop to answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloPlace {
    /// Before OI, no HELLO accepted: a HELLO opts in.
    Open,
    /// Before OI, a HELLO accepted already: another is out of place.
    Accepted,
    /// After OI, by a client that opted in.
    AfterOi,
    /// After OI, by a plain client: extension frames are unknown to it.
    Plain,
}

/// What a connection is to the rules, as the server's statistics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionView {
    /// Its id (0 before OI).
    pub id: ClientId,
    pub kind: SessionKind,
    /// Frames sent to it that await its OK or ERRO.
    pub awaiting_ack: usize,
    /// An emitter's requests not yet answered.
    pub unsettled: usize,
}

/// What a connection identified as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    Unidentified,
    Emitter,
    Exhibitor,
}

/// A HELLO's name is held by another session (ignoring case).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameTaken;

/// What an opted-in exhibitor was last told of each id: name and roles.
type Told = HashMap<ClientId, (Option<Box<str>>, u8)>;

#[derive(Debug)]
struct Session {
    id: ClientId,
    role: Role,
    /// The roles byte's bits this session holds.
    roles: u8,
    hello: Hello,
    /// An opted-in exhibitor: it is told names (WHO).
    teller: bool,
    /// What a teller was told of each id; allocated at its first WHO, so
    /// that an idle signed-in session costs no table.
    told: Option<Box<Told>>,
    /// A teller whose name has upper-case letters: that name in lower case.
    /// A teller receives the rooms its name is a member of under the name
    /// in lower case ([`Session::member_key`]); an all lower-case name is
    /// its own key, and costs an idle session no copy.
    member: Option<Box<str>>,
    /// A teller: the id it was last found told about, and the directory's
    /// epoch then. While both match, a MSG from that id needs no look-up
    /// in `told` (a room's or a broadcast's many targets, message after
    /// message from one sender).
    checked: (ClientId, u64),
    connected_at: Instant,
    /// The server's own numbering of the frames it originates to this client.
    seq: SeqCounter,
    /// Frames sent to this client that await its OK, oldest first.
    awaiting_ack: AwaitingAck,
    /// The server has sent FLW; no new deliveries are targeted here.
    leaving: bool,
    /// Unique per connection ever made, so that a delivery made for an
    /// earlier connection with the same `ConnId` never settles a newer one's.
    incarnation: Incarnation,
}

/// Which connection holds each id: a direct table (ids are below 8192, so a
/// lookup is one index) plus the exhibitors in id order, which broadcasts walk.
struct Directory {
    by_id: Vec<Option<ConnId>>,
    exhibitors: Vec<(ClientId, ConnId)>,
    len: usize,
    /// Changes whenever an id is taken or freed: while it stands, what
    /// each id shows (its holder's name and roles) stands too.
    epoch: u64,
}

impl Session {
    /// Whether this session needs no WHO about `id` in the directory's
    /// `epoch`: it is no teller, or was found told of `id` then already
    /// ([`Router::tell_names`]'s own first test, for a caller with one
    /// target and one sender).
    #[inline(always)]
    fn told_of(&self, id: ClientId, epoch: u64) -> bool {
        !self.teller || self.checked == (id, epoch)
    }

    /// The name the session shows (its HELLO's, or its exhibitor's).
    fn name(&self) -> Option<&str> {
        match &self.hello {
            Hello::Accepted { name } => name.as_deref(),
            _ => None,
        }
    }

    /// A teller with a name: the name in lower case, under which it
    /// receives the rooms the name is a member of.
    fn member_key(&self) -> Option<&str> {
        if !self.teller {
            return None;
        }
        self.member.as_deref().or_else(|| self.name())
    }
}

/// The sender of a MSG from `conn`, whose session holds `roles`. A free
/// function over the sessions alone, so that it can be used while another
/// field of the router is borrowed mutably.
fn sender(sessions: &[Option<Session>], conn: ConnId) -> Sender<'_> {
    let session = sessions[conn].as_ref();
    Sender {
        name: session.and_then(Session::name),
        roles: session.map_or(0, |s| s.roles),
    }
}

impl Directory {
    fn new() -> Directory {
        Directory {
            by_id: vec![None; *EXHIBITOR_IDS.end() as usize + 1],
            exhibitors: Vec::new(),
            len: 0,
            epoch: 0,
        }
    }

    fn get(&self, id: ClientId) -> Option<ConnId> {
        self.by_id.get(id as usize).copied().flatten()
    }

    fn insert(&mut self, id: ClientId, conn: ConnId) {
        let slot = &mut self.by_id[id as usize];
        debug_assert!(slot.is_none(), "id {id} assigned twice");
        *slot = Some(conn);
        self.len += 1;
        self.epoch += 1;
        if is_exhibitor_id(id) {
            let at = self.exhibitors.partition_point(|(other, _)| *other < id);
            self.exhibitors.insert(at, (id, conn));
        }
    }

    fn remove(&mut self, id: ClientId) {
        if self.by_id[id as usize].take().is_some() {
            self.len -= 1;
            self.epoch += 1;
            if let Ok(at) = self
                .exhibitors
                .binary_search_by_key(&id, |(other, _)| *other)
            {
                self.exhibitors.remove(at);
            }
        }
    }

    /// Every held id, ascending.
    fn ids(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.by_id
            .iter()
            .enumerate()
            .filter(|(_, conn)| conn.is_some())
            .map(|(id, _)| id as ClientId)
    }
}

/// What a replayed MSG takes in an exhibitor's output besides its text:
/// the header and count, and up to 10 bytes of transport framing. Regression
/// (review): counted as text alone, thousands of short broadcasts passed the
/// replay cap and got every new exhibitor cut off as a slow consumer.
pub const REPLAY_FRAMING: usize = HEADER_LEN + 2 + 10;

/// What a WHO before a replayed MSG takes at most in an opted-in
/// exhibitor's output: the header, L, the longest body, and up to 10 bytes
/// of transport framing.
const REPLAY_WHO: usize = HEADER_LEN + 2 + MAX_WHO_BODY + 10;

/// The last broadcasts a new exhibitor is sent: at most `len` of them, and
/// as many as fit in `max_bytes` of output, each counted as its text plus
/// [`REPLAY_FRAMING`] (plus [`REPLAY_WHO`] for an opted-in exhibitor, which
/// may be told a name before each); the oldest go first. The one place that
/// bound is kept: live broadcasts and a history's recovered ones pass
/// through it alike.
struct ReplayWindow {
    len: usize,
    max_bytes: usize,
    /// Oldest first.
    kept: VecDeque<Replayed>,
    /// Output bytes `kept` takes, framing included (WHO not included).
    bytes: usize,
}

/// A broadcast kept for replay, with its sender as it was when the message
/// was accepted.
struct Replayed {
    origin: ClientId,
    /// The sender's name then (None: none, or not recorded).
    name: Option<Box<str>>,
    roles: u8,
    text: Bytes,
}

impl ReplayWindow {
    fn new(len: usize, max_bytes: usize) -> ReplayWindow {
        ReplayWindow {
            len,
            max_bytes,
            kept: VecDeque::new(),
            bytes: 0,
        }
    }

    fn remember(&mut self, origin: ClientId, sender: Sender<'_>, text: &[u8]) {
        // Without replay a broadcast costs nothing here, not even the copy.
        if self.len == 0 {
            return;
        }
        self.bytes += text.len() + REPLAY_FRAMING;
        self.kept.push_back(Replayed {
            origin,
            name: sender.name.map(Into::into),
            roles: sender.roles,
            text: Bytes::copy_from_slice(text),
        });
        while self.kept.len() > self.len || self.bytes > self.max_bytes {
            let Some(dropped) = self.kept.pop_front() else {
                break;
            };
            self.bytes -= dropped.text.len() + REPLAY_FRAMING;
        }
    }

    /// The index of the first kept broadcast an exhibitor is replayed:
    /// 0 for a plain one; for an opted-in one, the oldest after which the
    /// rest fit in `max_bytes` with a WHO counted before each.
    fn first_for(&self, opted_in: bool) -> usize {
        if !opted_in {
            return 0;
        }
        let mut bytes = 0;
        let mut first = self.kept.len();
        for (at, kept) in self.kept.iter().enumerate().rev() {
            bytes += kept.text.len() + REPLAY_FRAMING + REPLAY_WHO;
            if bytes > self.max_bytes {
                break;
            }
            first = at;
        }
        first
    }
}

/// The routing state of one server.
pub struct Router {
    limits: Limits,
    sessions: Vec<Option<Session>>,
    /// Identified clients by id.
    ids: Directory,
    /// Reused for each request's targets, so routing allocates nothing.
    targets: Vec<ConnId>,
    free_emitter_ids: BTreeSet<ClientId>,
    free_exhibitor_ids: BTreeSet<ClientId>,
    next_incarnation: Incarnation,
    /// The millisecond count acknowledgement deadlines are kept on.
    timeline: Timeline,
    /// No deadline falls before this; `tick` does nothing until then.
    earliest_deadline: Option<Instant>,
    /// The broadcasts a new exhibitor is sent first.
    replay: ReplayWindow,
    /// Requests whose reply waits for their history record to be durable,
    /// by the number [`Outbox::accepted`] gave, ascending, in runs.
    awaiting_durable: VecDeque<HeldRun>,
    /// The newest run, while it grows: after every run in
    /// `awaiting_durable`. Kept apart so that a held MSG extends it by a
    /// few compares on a field rather than through the deque's wrapped
    /// back index (issue 26); `count` 0: none.
    growing_run: HeldRun,
    /// `--auth`: an OI without an accepted HELLO is refused.
    accounts_required: bool,
    /// Names claimed by HELLO without accounts, by their lower-case key.
    claimed: HashMap<Box<str>, ConnId>,
    /// Opted-in exhibitors connected: while 0, routing tells no names.
    tellers: usize,
    /// Bumped whenever what some teller was told may have changed (a WHO
    /// sent, a teller added), so that `everyone_told` can be trusted.
    tellers_changed: u64,
    /// The id every teller was last found told about, with the directory's
    /// epoch and `tellers_changed` then: while all three stand, a MSG from
    /// that id needs no per-target check at all (a broadcast from one
    /// sender to many opted-in exhibitors).
    everyone_told: (ClientId, u64, u64),
    /// Rooms and work queues (PROTOCOL.md, "Extension: rooms and queues").
    rooms: rooms::Rooms,
    /// The extension answers owed, by emitter and request number: sent in
    /// the reply's place when it reaches the head of the queue.
    answers: HashMap<(ConnId, u64), ExtFrame>,
    /// Messages waiting for names (TELL to an offline name).
    waiting: waiting::Waiting,
    /// The names a TELL to an offline name may be stored for.
    known: names::KnownNames,
    /// The number the next waiting message (queue or name) gets.
    next_wait: u64,
    /// Other nodes, with a cluster (CLUSTER.md); off and empty without.
    remote: remote::Remote,
}

impl Router {
    pub fn new(limits: Limits) -> Router {
        Router {
            limits,
            sessions: Vec::new(),
            ids: Directory::new(),
            targets: Vec::new(),
            free_emitter_ids: EMITTER_IDS.collect(),
            free_exhibitor_ids: EXHIBITOR_IDS.collect(),
            next_incarnation: 0,
            timeline: Timeline::new(limits.ack_timeout),
            earliest_deadline: None,
            replay: ReplayWindow::new(0, 0),
            awaiting_durable: VecDeque::new(),
            growing_run: HeldRun::NONE,
            accounts_required: false,
            claimed: HashMap::new(),
            tellers: 0,
            tellers_changed: 0,
            everyone_told: (0, u64::MAX, u64::MAX),
            rooms: rooms::Rooms::new(RoomLimits::default()),
            answers: HashMap::new(),
            waiting: waiting::Waiting::new(),
            known: names::KnownNames::default(),
            next_wait: 0,
            remote: remote::Remote::default(),
        }
    }

    /// With accounts (`--auth`), a client must sign in with HELLO before
    /// its OI; a plain OI gets the rule-1 refusal.
    pub fn require_accounts(&mut self, required: bool) {
        self.accounts_required = required;
    }

    /// Where a HELLO from `conn` would stand now (None: no such session).
    pub fn hello_place(&self, conn: ConnId) -> Option<HelloPlace> {
        let session = self.session(conn)?;
        Some(match (&session.role, &session.hello) {
            (Role::Anonymous, Hello::Accepted { .. } | Hello::Checking) => HelloPlace::Accepted,
            (Role::Anonymous, Hello::Plain) => HelloPlace::Open,
            (_, Hello::Accepted { .. }) => HelloPlace::AfterOi,
            _ => HelloPlace::Plain,
        })
    }

    /// A HELLO from `conn` is being checked: its input waits for the verdict.
    pub fn hello_checking(&mut self, conn: ConnId) {
        if let Some(session) = self.session_mut(conn) {
            session.hello = Hello::Checking;
        }
    }

    /// `conn`'s HELLO is accepted with this name and these roles. `claim`:
    /// the name is claimed for the session and must be free (no accounts);
    /// otherwise sessions may share it (one account, several sessions).
    pub fn hello_accepted(
        &mut self,
        conn: ConnId,
        name: Option<&str>,
        roles: u8,
        claim: bool,
        out: &mut impl Outbox,
    ) -> Result<(), NameTaken> {
        if self.session(conn).is_none() {
            return Ok(());
        }
        if claim && let Some(name) = name {
            let key: Box<str> = name.to_ascii_lowercase().into();
            match self.claimed.get(&key) {
                Some(&holder) if holder != conn => return Err(NameTaken),
                _ => {
                    self.claimed.insert(key, conn);
                }
            }
        }
        let session = self.session_mut(conn).expect("checked above");
        let was_checking = matches!(session.hello, Hello::Checking);
        session.hello = Hello::Accepted {
            name: name.map(Into::into),
        };
        session.roles = roles;
        info!(conn, name = name.unwrap_or(""), roles = %RoleWords(roles), "HELLO accepted");
        if let Some(name) = name {
            self.saw_name(name);
        }
        if was_checking {
            out.resume_input(conn);
        }
        Ok(())
    }

    /// A frame from `conn` is refused with ERRO(65535, own id, seq), the
    /// connection kept: in its place among an emitter's replies.
    pub fn refuse(&mut self, conn: ConnId, seq: u16, now: Instant, out: &mut impl Outbox) {
        self.reply(conn, seq, false, now, out);
    }

    /// KICK from `conn` (PROTOCOL.md, "KICK"): from an emitter with admin,
    /// the session of `kick.dest` and the other half of its pair get FLW
    /// and close as in rule 6, and the kicker gets OK in its place among
    /// its replies. ERRO, kept, when the destination is not an identified
    /// client, is the kicker or its own exhibitor, or the kicker lacks
    /// admin; from an exhibitor, ERRO, kept (as MSG). The origin must be
    /// the kicker's id (rule 2).
    pub fn kick(&mut self, conn: ConnId, kick: Header, now: Instant, out: &mut impl Outbox) {
        let Some(session) = self.session(conn) else {
            return;
        };
        let id = session.id;
        if kick.origin != id {
            warn!(conn, id, claimed = kick.origin, "spoofed origin in KICK");
            out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, id, kick.seq));
            self.close(conn, CloseReason::Spoofed, now, out);
            return;
        }
        let own_exhibitor = match &session.role {
            Role::Emitter {
                finished: false,
                exhibitor,
                ..
            } => *exhibitor,
            Role::Emitter { .. } | Role::Anonymous => return,
            Role::Exhibitor { .. } => {
                debug!(conn, id, "KICK from an exhibitor refused");
                out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, id, kick.seq));
                return;
            }
        };
        let target = self.ids.get(kick.dest);
        let refused = if session.roles & ROLE_ADMIN == 0 {
            Some("the kicker lacks admin")
        } else {
            match target {
                None => Some("no such client"),
                Some(t) if t == conn || Some(t) == own_exhibitor => {
                    Some("the kicker's own session")
                }
                Some(_) => None,
            }
        };
        if let Some(why) = refused {
            info!(conn, id, dest = kick.dest, why, "KICK refused");
            self.reply(conn, kick.seq, false, now, out);
            return;
        }
        let target = target.expect("refused above when None");
        let partner = match self.session(target).map(|s| &s.role) {
            Some(Role::Emitter { exhibitor, .. }) => *exhibitor,
            Some(Role::Exhibitor { emitter }) => *emitter,
            _ => None,
        };
        info!(
            kicker = id,
            kicker_name = self.name(conn).unwrap_or(""),
            kicked = kick.dest,
            kicked_name = self.name(target).unwrap_or(""),
            "KICK"
        );
        for victim in std::iter::once(target).chain(partner) {
            if self.session(victim).is_some_and(|s| !s.leaving) {
                self.dismiss(victim, now, out);
            }
        }
        self.reply(conn, kick.seq, true, now, out);
    }

    /// Ends every session signed in to the account `key` (lower case): an
    /// identified one gets FLW and closes as by KICK, one not yet
    /// identified is closed. Returns how many were ended.
    pub fn revoke(&mut self, key: &str, now: Instant, out: &mut impl Outbox) -> usize {
        let mut ended = 0;
        for conn in 0..self.sessions.len() {
            let Some(session) = self.session(conn) else {
                continue;
            };
            let Hello::Accepted { name: Some(name) } = &session.hello else {
                continue;
            };
            if !name.eq_ignore_ascii_case(key) || session.leaving {
                continue;
            }
            ended += 1;
            if matches!(session.role, Role::Anonymous) {
                self.close(conn, CloseReason::Revoked, now, out);
            } else {
                self.dismiss(conn, now, out);
            }
        }
        ended
    }

    /// `conn`'s HELLO was answered with a code that closes the connection.
    pub fn hello_refused(&mut self, conn: ConnId, now: Instant, out: &mut impl Outbox) {
        self.close(conn, CloseReason::HelloRefused, now, out);
    }

    /// The name `conn`'s session shows (its HELLO's, or its exhibitor's).
    pub fn name(&self, conn: ConnId) -> Option<&str> {
        self.session(conn)?.name()
    }

    /// What `conn` is, for statistics (read only; not on the routing path).
    pub fn session_view(&self, conn: ConnId) -> Option<SessionView> {
        let session = self.session(conn)?;
        let (kind, unsettled) = match &session.role {
            Role::Anonymous => (SessionKind::Unidentified, 0),
            Role::Emitter { replies, .. } => (SessionKind::Emitter, replies.len()),
            Role::Exhibitor { .. } => (SessionKind::Exhibitor, 0),
        };
        Some(SessionView {
            id: session.id,
            kind,
            awaiting_ack: session.awaiting_ack.len(),
            unsettled,
        })
    }

    /// Replays the last `len` broadcasts to each exhibitor as it identifies,
    /// as many as fit in `max_bytes` of output, each counted as its text plus
    /// [`REPLAY_FRAMING`] (so that a replay stays inside an exhibitor's output
    /// cap however short the texts). Forgets what was remembered before.
    pub fn set_replay(&mut self, len: usize, max_bytes: usize) {
        self.replay = ReplayWindow::new(len, max_bytes);
    }

    /// A broadcast from before this start (a history's, oldest first, after
    /// [`Router::set_replay`]), with its sender as recorded: kept for replay
    /// as if it had just been accepted, within the same bound.
    pub fn recall_broadcast(&mut self, origin: ClientId, sender: Sender<'_>, text: &[u8]) {
        self.replay.remember(origin, sender, text);
    }

    /// The history is done with every record numbered below `settled`
    /// (written, synced if the server was asked to, or given up on after a
    /// disk error): the replies held for them go out, in request order
    /// (rule 4).
    ///
    /// Held replies are kept in runs (see [`HeldRun`]): at 1:1 a turn's
    /// are one run, counted down with one look-up of the emitter and a
    /// walk over its queue, rather than settled one by one (issue #26:
    /// this second count-down was a held reply's largest cost in the
    /// router). What is sent is the same.
    pub fn durable(&mut self, settled: u64, now: Instant, out: &mut impl Outbox) {
        if self.growing_run.count > 0 {
            let run = std::mem::replace(&mut self.growing_run, HeldRun::NONE);
            self.awaiting_durable.push_back(run);
        }
        while let Some(run) = self.awaiting_durable.front_mut() {
            if run.first_record >= settled {
                break;
            }
            let count = run.count.min(settled - run.first_record);
            let first = run.request;
            if count == run.count {
                self.awaiting_durable.pop_front();
            } else {
                run.first_record += count;
                run.request.request += count;
                run.count -= count;
            }
            if self.release_held(first, count) {
                self.flush_replies(first.emitter(), now, out);
            }
        }
    }

    /// Holds `request`'s reply until history record `number` is settled
    /// (one more count on its outstanding targets, made by the caller).
    #[inline]
    fn hold_for_record(&mut self, number: u64, request: RequestRef) {
        let run = &mut self.growing_run;
        // No record is numbered u64::MAX: the empty run extends nothing.
        if run.first_record.wrapping_add(run.count) == number
            && run.request.request + run.count == request.request
            && run.request.emitter == request.emitter
            && run.request.incarnation == request.incarnation
        {
            run.count += 1;
            return;
        }
        self.start_run(number, request);
    }

    /// Starts a new growing run at `number`, the old one queued.
    #[inline(never)]
    fn start_run(&mut self, number: u64, request: RequestRef) {
        let run = HeldRun {
            first_record: number,
            request,
            count: 1,
        };
        let old = std::mem::replace(&mut self.growing_run, run);
        if old.count > 0 {
            self.awaiting_durable.push_back(old);
        }
    }

    /// Counts down the `count` requests from `first` on, one connection's:
    /// their records are settled. Whether the emitter's oldest reply is
    /// then due.
    fn release_held(&mut self, first: RequestRef, count: u64) -> bool {
        let Some(session) = self.session_mut(first.emitter()) else {
            return false; // the emitter left; its replies went with it
        };
        if session.incarnation != first.incarnation {
            return false; // ... and its ConnId now names another connection
        }
        let Role::Emitter { replies, .. } = &mut session.role else {
            return false;
        };
        let Some(head) = replies.front().map(|r| r.request) else {
            return false;
        };
        // Requests before the head were answered already (none is while
        // its record is held); those past the end do not exist.
        let from = first.request.max(head);
        let to = (first.request + count).min(head + replies.len() as u64);
        if from < to {
            for reply in replies.range_mut((from - head) as usize..(to - head) as usize) {
                reply.outstanding = reply.outstanding.saturating_sub(1);
            }
        }
        replies.front().is_some_and(|r| r.outstanding == 0)
    }

    /// A new connection `conn` was accepted at `now`.
    pub fn connected(&mut self, conn: ConnId, now: Instant) {
        if self.sessions.len() <= conn {
            self.sessions.resize_with(conn + 1, || None);
        }
        self.sessions[conn] = Some(Session {
            id: 0,
            role: Role::Anonymous,
            roles: PLAIN_ROLES,
            hello: Hello::Plain,
            teller: false,
            told: None,
            member: None,
            checked: (0, u64::MAX),
            connected_at: now,
            seq: SeqCounter::new(),
            awaiting_ack: AwaitingAck::default(),
            leaving: false,
            incarnation: self.next_incarnation,
        });
        self.next_incarnation = self.next_incarnation.wrapping_add(1);
        self.note_deadline(now + self.limits.handshake_timeout);
    }

    /// The client's id, once it has identified.
    pub fn client_id(&self, conn: ConnId) -> Option<ClientId> {
        let session = self.session(conn)?;
        (!matches!(session.role, Role::Anonymous)).then_some(session.id)
    }

    /// Whether the event loop should decode more frames from `conn` now
    /// (false while flow control holds an emitter back, or after its FLW).
    pub fn accepts_input(&self, conn: ConnId) -> bool {
        // Asked before every frame read: one lookup, one match.
        let Some(session) = self.session(conn) else {
            return false;
        };
        match &session.role {
            Role::Emitter {
                paused, finished, ..
            } => !paused && !finished,
            // A HELLO being checked, or an OI's id being claimed, holds
            // what follows it.
            Role::Anonymous => {
                !matches!(session.hello, Hello::Checking) && !self.remote.is_claiming(conn)
            }
            Role::Exhibitor { .. } => true,
        }
    }

    /// Number of connections the router knows (identified or not).
    #[cfg(feature = "testing")]
    pub fn connection_count(&self) -> usize {
        self.sessions.iter().filter(|s| s.is_some()).count()
    }

    /// Number of identified clients.
    pub fn client_count(&self) -> usize {
        self.ids.len
    }

    /// When `tick` next has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.earliest_deadline
    }

    /// One frame arrived on `conn`, as an owned [`Frame`] (tests, fuzzing):
    /// routed exactly as its wire bytes would be.
    #[cfg(feature = "testing")]
    pub fn on_frame(&mut self, conn: ConnId, frame: Frame, now: Instant, out: &mut impl Outbox) {
        let wire = frame.to_bytes();
        let (view, _) = FrameView::parse(&wire)
            .expect("an encoded frame has a known type")
            .expect("an encoded frame is whole");
        self.on_frame_view(conn, &view, now, out);
    }

    /// One frame arrived on `conn`, read in place from its input.
    pub fn on_frame_view(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let Some(session) = self.session(conn) else {
            return;
        };
        let id = session.id;
        match &session.role {
            Role::Anonymous if frame.kind == Kind::Oi => {
                self.identify(conn, frame.origin, frame.seq, None, now, out)
            }
            Role::Anonymous => {
                // Rule 1: nothing but OI before identification.
                warn!(conn, kind = %frame.kind, "frame before OI");
                out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, 0, frame.seq));
                self.close(conn, CloseReason::NotIdentified, now, out);
            }
            Role::Emitter { finished: true, .. } => {
                debug!(conn, id, "ignoring a frame after FLW");
            }
            // Rule 1: a second OI is refused but the client keeps its id.
            _ if frame.kind == Kind::Oi => {
                debug!(conn, id, "second OI");
                self.reply(conn, frame.seq, false, now, out);
            }
            // Rule 2: the origin must be the connection's own id.
            _ if frame.origin != id => {
                warn!(conn, id, claimed = frame.origin, kind = %frame.kind, "spoofed origin");
                out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, id, frame.seq));
                self.close(conn, CloseReason::Spoofed, now, out);
            }
            // Rule-free for a sender that may both emit and broadcast (every
            // session without accounts): one test, and the request path
            // below never looks at roles.
            Role::Emitter { .. }
                if session.roles & SENDS != SENDS && !may_request(session.roles, frame) =>
            {
                self.refuse_request(conn, frame, now, out)
            }
            Role::Emitter { .. } => self.on_emitter_frame(conn, frame, now, out),
            Role::Exhibitor { .. } => self.on_exhibitor_frame(conn, frame, now, out),
        }
    }

    /// Bytes on `conn` named no known frame type (rule 7): ERRO and close,
    /// since the stream can no longer be framed.
    pub fn on_undecodable(
        &mut self,
        conn: ConnId,
        header: Header,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        // Regression (found by the router fuzz target): when the router kept
        // the time of the previous call, the FLW this close sends a paired
        // exhibitor took its deadline from that call and could already be
        // overdue. Every entry point now takes the caller's `now`.
        if self.session(conn).is_none() {
            return;
        }
        let id = self.client_id(conn).unwrap_or(0);
        warn!(conn, id, kind = header.kind, "unknown frame type");
        out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, id, header.seq));
        self.close(conn, CloseReason::BadFrame, now, out);
    }

    /// `conn` is gone (peer closed, I/O error, or dropped by the event loop);
    /// everything that depended on it is settled.
    pub fn disconnected(&mut self, conn: ConnId, now: Instant, out: &mut impl Outbox) {
        self.forget(conn, now, out);
    }

    /// Enforces the handshake and ack timeouts that have passed by `now`.
    pub fn tick(&mut self, now: Instant, out: &mut impl Outbox) {
        match self.earliest_deadline {
            Some(deadline) if deadline <= now => {}
            _ => return,
        }
        let mut expired = Vec::new();
        let mut earliest: Option<Instant> = None;
        for (conn, session) in self.sessions.iter().enumerate() {
            let Some(session) = session else { continue };
            let deadline = match session.role {
                Role::Anonymous => Some(session.connected_at + self.limits.handshake_timeout),
                _ => (session.awaiting_ack.front_due()).map(|due| self.timeline.instant(due, now)),
            };
            match deadline {
                Some(d) if d <= now => expired.push(conn),
                Some(d) => earliest = Some(earliest.map_or(d, |e| e.min(d))),
                None => {}
            }
        }
        if let Some(d) = self.rooms.next_deadline() {
            earliest = Some(earliest.map_or(d, |e| e.min(d)));
        }
        if self.remote.enabled {
            self.expire_relays(now, out);
            if let Some(d) = self.remote.next_deadline() {
                earliest = Some(earliest.map_or(d, |e| e.min(d)));
            }
        }
        self.earliest_deadline = earliest;
        self.expire_queues(now, out);
        if let Some(d) = self.rooms.next_deadline() {
            self.note_deadline(d);
        }
        for conn in expired {
            let Some(session) = self.session(conn) else {
                continue;
            };
            let reason = if matches!(session.role, Role::Anonymous) {
                CloseReason::HandshakeTimeout
            } else {
                CloseReason::Unresponsive
            };
            warn!(conn, id = session.id, %reason, "timed out");
            self.close(conn, reason, now, out);
        }
    }

    /// Rule 8: FLW to every identified client (each closes on its OK);
    /// connections that never identified are closed at once.
    pub fn shutdown(&mut self, now: Instant, out: &mut impl Outbox) {
        for conn in 0..self.sessions.len() {
            let Some(session) = self.session(conn) else {
                continue;
            };
            if matches!(session.role, Role::Anonymous) {
                self.close(conn, CloseReason::Shutdown, now, out);
            } else if !session.leaving {
                self.dismiss(conn, now, out);
            }
        }
    }

    /// True once no connection is left.
    #[cfg(feature = "testing")]
    pub fn is_empty(&self) -> bool {
        self.sessions.iter().all(Option::is_none)
    }

    /// Checks the router's internal consistency; for tests and fuzzing.
    /// Every identified session holds exactly one id and that id maps back to
    /// it; free lists and the id map are disjoint and together cover every
    /// id; pairing is symmetric; every pending delivery points at a live
    /// emitter's pending reply, or is a farewell or a replay; replies are in
    /// request order.
    #[cfg(feature = "testing")]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut identified = 0;
        for (conn, session) in self.sessions.iter().enumerate() {
            let Some(session) = session else { continue };
            match &session.role {
                Role::Anonymous => {
                    if !session.awaiting_ack.is_empty() {
                        return Err(format!("anonymous conn {conn} awaits acks"));
                    }
                    continue;
                }
                Role::Emitter {
                    exhibitor,
                    replies,
                    next_request,
                    ..
                } => {
                    if !is_emitter_id(session.id) {
                        return Err(format!("emitter conn {conn} has id {}", session.id));
                    }
                    if let Some(ex) = exhibitor {
                        match self.session(*ex).map(|s| &s.role) {
                            Some(Role::Exhibitor {
                                emitter: Some(back),
                            }) if *back == conn => {}
                            _ => return Err(format!("emitter conn {conn} pairing not mirrored")),
                        }
                    }
                    if !replies
                        .iter()
                        .zip(replies.iter().skip(1))
                        .all(|(a, b)| a.request + 1 == b.request)
                    {
                        return Err(format!("emitter conn {conn} replies not consecutive"));
                    }
                    if replies.back().is_some_and(|r| r.request >= *next_request) {
                        return Err(format!("emitter conn {conn} reply from the future"));
                    }
                }
                Role::Exhibitor { emitter } => {
                    if !is_exhibitor_id(session.id) {
                        return Err(format!("exhibitor conn {conn} has id {}", session.id));
                    }
                    if let Some(em) = emitter {
                        match self.session(*em).map(|s| &s.role) {
                            Some(Role::Emitter {
                                exhibitor: Some(back),
                                ..
                            }) if *back == conn => {}
                            _ => return Err(format!("exhibitor conn {conn} pairing not mirrored")),
                        }
                    }
                }
            }
            identified += 1;
            if self.ids.get(session.id) != Some(conn) {
                return Err(format!("conn {conn} id {} not mapped back", session.id));
            }
            for delivery in session.awaiting_ack.iter() {
                if let Purpose::Request(r) = delivery.purpose {
                    // A delivery may outlive its emitter (then it settles to
                    // nothing), but a live emitter must still owe that reply.
                    if let Some(em) = self.session(r.emitter())
                        && em.incarnation == r.incarnation
                        && Router::pending_index(&em.role, r.request).is_none()
                    {
                        return Err(format!(
                            "conn {conn} awaits an ack for a reply emitter conn {} no longer owes",
                            r.emitter
                        ));
                    }
                }
            }
        }
        if identified != self.ids.len || self.ids.ids().count() != identified {
            return Err(format!(
                "{} ids mapped, {identified} identified sessions",
                self.ids.len
            ));
        }
        let total = self.ids.len + self.free_emitter_ids.len() + self.free_exhibitor_ids.len();
        if total != EMITTER_IDS.len() + EXHIBITOR_IDS.len() {
            return Err(format!("ids leaked or duplicated: {total} accounted for"));
        }
        if self
            .ids
            .ids()
            .any(|id| self.free_emitter_ids.contains(&id) || self.free_exhibitor_ids.contains(&id))
        {
            return Err("an id is both held and free".into());
        }
        self.check_identity_invariants()
    }

    /// The identity extension's part of [`Router::check_invariants`].
    #[cfg(feature = "testing")]
    fn check_identity_invariants(&self) -> Result<(), String> {
        let mut tellers = 0;
        for (conn, session) in self.sessions.iter().enumerate() {
            let Some(session) = session else { continue };
            if session.told.is_some() && !session.teller {
                return Err(format!("conn {conn} has names told but is no teller"));
            }
            if session.teller {
                tellers += 1;
                if !matches!(session.role, Role::Exhibitor { .. })
                    || !matches!(session.hello, Hello::Accepted { .. })
                {
                    return Err(format!(
                        "conn {conn} is told names but is no opted-in exhibitor"
                    ));
                }
            }
            if matches!(session.hello, Hello::Checking) && !matches!(session.role, Role::Anonymous)
            {
                return Err(format!("conn {conn} identified while its HELLO is checked"));
            }
        }
        if tellers != self.tellers {
            return Err(format!(
                "{} tellers counted, {tellers} sessions told",
                self.tellers
            ));
        }
        self.check_room_invariants()?;
        for (key, &conn) in &self.claimed {
            if self.name(conn).map(str::to_ascii_lowercase).as_deref() != Some(&**key) {
                return Err(format!(
                    "name {key:?} claimed by conn {conn}, which does not show it"
                ));
            }
        }
        Ok(())
    }

    // ---- identification -------------------------------------------------

    /// Rule 1.
    // Once per connection: kept out of line so that `on_frame_view`, which
    // every frame passes through, stays small (callgrind at 1:1: 14
    // instructions a message fewer than with the identity checks inlined).
    #[inline(never)]
    fn identify(
        &mut self,
        conn: ConnId,
        wanted_exhibitor: ClientId,
        seq: u16,
        claimed: Option<ClientId>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if let Err(why) = self.may_identify(conn, wanted_exhibitor) {
            warn!(conn, requested = wanted_exhibitor, why, "OI refused");
            out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, 0, seq));
            self.close(conn, CloseReason::Refused, now, out);
            return;
        }
        if self.remote.enabled
            && is_exhibitor_id(wanted_exhibitor)
            && self.ids.get(wanted_exhibitor).is_none()
            && let Some(node) = self.remote_owner(wanted_exhibitor)
        {
            return self.pair_across(conn, wanted_exhibitor, seq, claimed, node, now, out);
        }
        let pairing = if is_exhibitor_id(wanted_exhibitor) {
            match self.ids.get(wanted_exhibitor) {
                None => Err("no such exhibitor"),
                Some(ex) => match self.sessions[ex].as_ref().map(|s| (&s.role, s.leaving)) {
                    Some((Role::Exhibitor { emitter: None }, false))
                        if !self.remote.is_paired_in(ex) =>
                    {
                        Ok(Some(ex))
                    }
                    Some((_, true)) => Err("exhibitor is leaving"),
                    _ => Err("exhibitor already paired"),
                },
            }
        } else {
            Ok(None)
        };
        // With several nodes the engine picks the id: the OI waits for it
        // (checked again when it comes, as the exhibitor may have left).
        if self.remote.enabled && claimed.is_none() && pairing.is_ok() {
            return self.claim_for(conn, wanted_exhibitor, seq, out);
        }
        let assigned = pairing.and_then(|pair| {
            let free = if wanted_exhibitor == 0 {
                &mut self.free_exhibitor_ids
            } else {
                &mut self.free_emitter_ids
            };
            let id = match claimed {
                Some(id) => free.take(&id).unwrap_or(id),
                None if wanted_exhibitor == 0 => free.pop_first().ok_or("no exhibitor id free")?,
                None => free.pop_first().ok_or("no emitter id free")?,
            };
            if wanted_exhibitor != 0 {
                self.pair_emitter(conn, id, pair, out);
            }
            Ok(id)
        });
        match assigned {
            Ok(id) => {
                self.ids.insert(id, conn);
                let session = self.session_mut(conn).expect("identify on a live session");
                session.id = id;
                if is_exhibitor_id(id) {
                    session.role = Role::Exhibitor { emitter: None };
                    if let Hello::Accepted { name } = &session.hello {
                        session.member = name
                            .as_deref()
                            .filter(|n| n.bytes().any(|b| b.is_ascii_uppercase()))
                            .map(|n| n.to_ascii_lowercase().into());
                        session.teller = true;
                        self.tellers += 1;
                        self.tellers_changed += 1;
                    }
                }
                let session = self.session_mut(conn).expect("identify on a live session");
                match &session.role {
                    Role::Emitter {
                        exhibitor: Some(_), ..
                    } => info!(
                        conn,
                        id,
                        exhibitor = wanted_exhibitor,
                        "emitter identified, paired"
                    ),
                    Role::Emitter { .. } => info!(conn, id, "emitter identified"),
                    _ => info!(conn, id, "exhibitor identified"),
                }
                out.send(conn, &Frame::bare(Kind::Ok, SERVER_ID, id, seq));
                if is_exhibitor_id(id) {
                    self.replay_to(conn, now, out);
                    self.room_session_online(conn, now, out);
                    self.deliver_waiting(conn, now, out);
                }
            }
            Err(why) => {
                warn!(conn, requested = wanted_exhibitor, why, "OI refused");
                out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, 0, seq));
                self.close(conn, CloseReason::Refused, now, out);
            }
        }
    }

    /// Sends a new exhibitor the remembered broadcasts, oldest first, as
    /// MSGs numbered by the server; each awaits its ack like a live one. An
    /// opted-in exhibitor is told the sender's name before each as for a
    /// live MSG, and the recorded one when the origin id is now held by a
    /// session with another name, or by none (PROTOCOL.md, "WHO").
    fn replay_to(&mut self, conn: ConnId, now: Instant, out: &mut impl Outbox) {
        if self.replay.kept.is_empty() {
            return;
        }
        let deadline = self.timeline.after(now);
        let opted_in = self.session(conn).is_some_and(|s| s.teller);
        let first = self.replay.first_for(opted_in);
        for at in first..self.replay.kept.len() {
            let kept = &self.replay.kept[at];
            let (origin, text) = (kept.origin, kept.text.clone());
            if opted_in {
                self.tell_replayed(conn, at, deadline, out);
            }
            let session = self.sessions[conn]
                .as_mut()
                .expect("replay to a live session");
            let seq = session.seq.next_seq();
            let msg = Frame::msg(origin, 0, seq, text).expect("a MSG's text fits");
            out.send(conn, &msg);
            session
                .awaiting_ack
                .push(seq, deadline.due, Purpose::Replay);
        }
        debug!(
            conn,
            messages = self.replay.kept.len() - first,
            "replayed recent broadcasts"
        );
        self.note_deadline(deadline.at);
    }

    /// Before the replay of kept broadcast `at` to the opted-in exhibitor
    /// `conn`: a WHO when what it should show for the origin id differs
    /// from what it was last told. It should show the session holding the
    /// id now when that session has the recorded name (as for a live MSG),
    /// the recorded name and roles otherwise.
    fn tell_replayed(
        &mut self,
        conn: ConnId,
        at: usize,
        deadline: Deadline,
        out: &mut impl Outbox,
    ) {
        let kept = &self.replay.kept[at];
        let holder = self.ids.get(kept.origin).and_then(|c| self.session(c));
        let (name, roles) = match holder {
            Some(holder) if holder.name() == kept.name.as_deref() => (holder.name(), holder.roles),
            _ => (kept.name.as_deref(), kept.roles),
        };
        let told = self
            .session(conn)
            .and_then(|s| s.told.as_ref()?.get(&kept.origin));
        if told.is_some_and(|(n, r)| n.as_deref() == name && *r == roles) {
            return;
        }
        let (id, name) = (kept.origin, name.map(Into::into));
        self.tell(conn, id, name, roles, deadline, out);
    }

    /// The identity extension's part of rule 1: with accounts, an OI needs
    /// an accepted HELLO; the role for what it asks (view: an exhibitor,
    /// emit: an emitter); and an emitter signed in pairs only with an
    /// exhibitor of its own account.
    fn may_identify(&self, conn: ConnId, wanted_exhibitor: ClientId) -> Result<(), &'static str> {
        let Some(session) = self.session(conn) else {
            return Ok(());
        };
        let Hello::Accepted { name } = &session.hello else {
            return if self.accounts_required {
                Err("no HELLO: this server runs with --auth (accounts required)")
            } else {
                Ok(())
            };
        };
        let needed = if wanted_exhibitor == 0 {
            ROLE_VIEW
        } else {
            ROLE_EMIT
        };
        if session.roles & needed != needed {
            return Err("the account lacks the role");
        }
        if self.accounts_required && is_exhibitor_id(wanted_exhibitor) {
            // Held here, or on another node that said whose it is (one it
            // has not said of yet is refused: the account is not known).
            let theirs = match self.ids.get(wanted_exhibitor) {
                Some(ex) => self.name(ex),
                None if self.remote_owner(wanted_exhibitor).is_some() => self
                    .remote
                    .shown(wanted_exhibitor)
                    .and_then(|(name, _)| name),
                None => return Ok(()), // no such exhibitor: refused below
            };
            let theirs = theirs.map(str::to_ascii_lowercase);
            if theirs != name.as_deref().map(str::to_ascii_lowercase) {
                return Err("the exhibitor belongs to another account");
            }
        }
        Ok(())
    }

    fn pair_emitter(
        &mut self,
        conn: ConnId,
        id: ClientId,
        exhibitor: Option<ConnId>,
        out: &mut impl Outbox,
    ) {
        // The pair shares one name: the emitter takes its exhibitor's.
        if let Some(ex) = exhibitor {
            let name: Option<Box<str>> = self.name(ex).map(Into::into);
            if name.is_some() {
                self.release_name(conn, out);
                if let Some(session) = self.session_mut(conn) {
                    session.hello = Hello::Accepted { name };
                }
            }
        }
        let session = self.session_mut(conn).expect("pairing a live session");
        session.id = id;
        session.role = Role::Emitter {
            exhibitor,
            replies: VecDeque::new(),
            next_request: 0,
            paused: false,
            finished: false,
        };
        if let Some(ex) = exhibitor
            && let Some(Role::Exhibitor { emitter }) = self.session_mut(ex).map(|s| &mut s.role)
        {
            *emitter = Some(conn);
        }
    }

    // ---- frames from identified clients ----------------------------------

    fn on_emitter_frame(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        match frame.kind {
            Kind::Msg | Kind::Creq => self.request(conn, frame, now, out),
            Kind::Flw => {
                // Rule 6: the OK goes out after every earlier reply, then the close.
                self.push_reply(conn, frame.seq, 0, true);
                if let Some(Role::Emitter { finished, .. }) =
                    self.session_mut(conn).map(|s| &mut s.role)
                {
                    *finished = true;
                }
                self.flush_replies(conn, now, out);
            }
            // Rule 7: acks from an emitter only matter for the server's FLW.
            Kind::Ok | Kind::Erro => self.acknowledged(conn, frame, now, out),
            Kind::Clist => self.bad_frame(conn, frame, now, out),
            Kind::Oi => unreachable!("OI is handled before dispatch"),
        }
    }

    fn on_exhibitor_frame(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let id = frame.origin;
        match frame.kind {
            Kind::Ok | Kind::Erro => self.acknowledged(conn, frame, now, out),
            Kind::Flw => {
                // Rule 6: OK, close; its emitter becomes unpaired.
                out.send(conn, &Frame::bare(Kind::Ok, SERVER_ID, id, frame.seq));
                self.close(conn, CloseReason::Left, now, out);
            }
            // Rule 3 and 5: only emitters send MSG and CREQ.
            Kind::Msg | Kind::Creq => {
                debug!(conn, id, kind = %frame.kind, "request from an exhibitor refused");
                out.send(conn, &Frame::bare(Kind::Erro, SERVER_ID, id, frame.seq));
            }
            Kind::Clist => self.bad_frame(conn, frame, now, out),
            Kind::Oi => unreachable!("OI is handled before dispatch"),
        }
    }

    fn bad_frame(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        warn!(conn, id = frame.origin, kind = %frame.kind, "frame a client may not send");
        out.send(
            conn,
            &Frame::bare(Kind::Erro, SERVER_ID, frame.origin, frame.seq),
        );
        self.close(conn, CloseReason::BadFrame, now, out);
    }

    /// A MSG or CREQ without the role it needs has no target: ERRO, in its
    /// place among the replies, nothing forwarded.
    #[inline(never)]
    fn refuse_request(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        log_role_refusal(conn, frame);
        self.push_reply(conn, frame.seq, 0, false);
        self.flush_replies(conn, now, out);
    }

    /// Rules 3–5: forward a MSG, or answer a CREQ with CLISTs, to every target.
    /// A room's destination costs the plain path one range check: the rest
    /// is out of line.
    fn request(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if is_room_id(frame.dest) {
            return self.room_request(conn, frame, now, out);
        }
        if self.remote.enabled {
            return self.cluster_request(conn, frame, now, out);
        }
        self.request_to::<false, false>(conn, frame, now, out);
    }

    /// A MSG or CREQ on a node of several: routed here and to the other
    /// nodes concerned (CLUSTER.md). Out of line, so that a single server
    /// pays one test for clusters on each request.
    #[inline(never)]
    fn cluster_request(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        self.request_to::<false, true>(conn, frame, now, out);
    }

    /// A MSG or CREQ to a room id: a queue room's MSG waits its turn, the
    /// rest is routed as any request, and a shown message is kept.
    #[inline(never)]
    fn room_request(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        if frame.kind == Kind::Msg && self.rooms.is_queue(frame.dest) {
            return self.queue_request(conn, frame, now, out);
        }
        if self.remote.enabled {
            // Members may be online on other nodes (CLUSTER.md).
            return self.request_to::<true, true>(conn, frame, now, out);
        }
        self.request_to::<true, false>(conn, frame, now, out);
    }

    /// The body of [`Router::request`], compiled for clients'
    /// destinations and rooms', each alone or on a node of several.
    #[inline(always)]
    fn request_to<const ROOM: bool, const CLUSTER: bool>(
        &mut self,
        conn: ConnId,
        frame: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let mut targets = std::mem::take(&mut self.targets);
        self.find_targets(frame.dest, &mut targets);
        // Other nodes holding targets: each counts as one (CLUSTER.md).
        let nodes = if CLUSTER {
            self.remote_targets(frame.dest)
        } else {
            0
        };
        let accepted = frame.kind == Kind::Msg && (!targets.is_empty() || nodes > 0);
        let held = if accepted {
            out.accepted(frame, || sender(&self.sessions, conn))
        } else {
            None
        };
        let waits = (targets.len() + nodes) as u32 + u32::from(held.is_some());
        let request = self.push_reply(conn, frame.seq, waits, false);
        if let Some(number) = held {
            self.hold_for_record(number, request);
        }
        if accepted && frame.dest == 0 {
            let text = frame.text().unwrap_or_default();
            let sender = sender(&self.sessions, conn);
            self.replay.remember(frame.origin, sender, text);
        }
        if ROOM && accepted {
            self.room_said(frame.dest, frame, conn, &targets);
            if CLUSTER && nodes > 0 {
                self.room_said_across(frame.dest);
            }
            if CLUSTER {
                self.room_copies_out(frame, out);
            }
        }
        if targets.is_empty() && nodes == 0 {
            debug!(conn, dest = frame.dest, kind = %frame.kind, "no target");
        }
        if nodes > 0 {
            self.relay_out(request, frame, now, out);
        }
        self.deliver(&targets, frame, now, Purpose::Request(request), out);
        targets.clear();
        self.targets = targets;
        self.flush_replies(conn, now, out);
    }

    /// Hands `frame` to `targets`, each to acknowledge it under `purpose`:
    /// WHO first where an opted-in target needs it, then the MSG, or for a
    /// CREQ a CLIST the server numbers for each target (rules 4 and 5).
    /// Local requests and those relayed from another node share it.
    #[inline(always)]
    fn deliver(
        &mut self,
        targets: &[ConnId],
        frame: &FrameView<'_>,
        now: Instant,
        purpose: Purpose,
        out: &mut impl Outbox,
    ) {
        let clist = (frame.kind == Kind::Creq).then(|| self.all_ids());
        let deadline = self.timeline.after(now);
        if self.tellers > 0 && !targets.is_empty() {
            let about = clist
                .as_deref()
                .unwrap_or(std::slice::from_ref(&frame.origin));
            self.tell_names(targets, about, deadline, out);
        }
        if clist.is_none() {
            out.forward(targets, frame);
        }
        let mut forgot = false;
        for &target in targets {
            let session = self.session_mut(target).expect("targets are live");
            let seq = match &clist {
                None => frame.seq,
                Some(ids) => {
                    let seq = session.seq.next_seq();
                    let list = Frame::clist(SERVER_ID, frame.dest, seq, ids.clone())
                        .expect("at most 8191 clients");
                    out.send(target, &list);
                    forgot |= forget_unlisted(session, ids);
                    seq
                }
            };
            session.awaiting_ack.push(seq, deadline.due, purpose);
        }
        if forgot {
            // What every teller was found told of may have changed.
            self.tellers_changed += 1;
        }
        if !targets.is_empty() {
            self.note_deadline(deadline.at);
        }
    }

    /// Fills `targets` with the exhibitors a MSG or CREQ to `dest` goes to.
    fn find_targets(&self, dest: ClientId, targets: &mut Vec<ConnId>) {
        let live_exhibitor = |conn: ConnId| {
            self.session(conn)
                .is_some_and(|s| !s.leaving && matches!(s.role, Role::Exhibitor { .. }))
        };
        if dest == 0 {
            let live = self.ids.exhibitors.iter().map(|&(_, conn)| conn);
            targets.extend(live.filter(|&conn| live_exhibitor(conn)));
            return;
        }
        let Some(conn) = self.ids.get(dest) else {
            if is_room_id(dest) {
                let online = self.rooms.online(dest).iter().copied();
                targets.extend(online.filter(|&conn| live_exhibitor(conn)));
            } else if self.remote.enabled
                && let Some(ex) = self.remote.exhibitor_of(dest)
                && live_exhibitor(ex)
            {
                // Another node's emitter, paired with an exhibitor here.
                targets.push(ex);
            }
            return;
        };
        let target = if is_emitter_id(dest) {
            match self.session(conn).map(|s| &s.role) {
                Some(Role::Emitter {
                    exhibitor: Some(ex),
                    ..
                }) => *ex,
                _ => return,
            }
        } else {
            conn
        };
        if live_exhibitor(target) {
            targets.push(target);
        }
    }

    /// An OK or ERRO from `conn` settles the oldest frame it was sent (rule 4).
    fn acknowledged(
        &mut self,
        conn: ConnId,
        ack: &FrameView<'_>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let session = self.session_mut(conn).expect("ack on a live session");
        let Some(delivery) = session.awaiting_ack.pop_front() else {
            debug!(
                conn,
                id = session.id,
                seq = ack.seq,
                "ack with nothing outstanding ignored"
            );
            return;
        };
        if delivery.seq != ack.seq {
            warn!(
                conn,
                id = session.id,
                expected = delivery.seq,
                got = ack.seq,
                "ack sequence mismatch"
            );
        }
        match delivery.purpose {
            Purpose::Farewell => self.close(conn, CloseReason::Dismissed, now, out),
            Purpose::Request(request) => self.settle(request, ack.kind == Kind::Ok, now, out),
            Purpose::Queued { room, slot, ticket } => {
                self.queue_acked(conn, room, slot, ticket, ack.kind == Kind::Ok, now, out)
            }
            Purpose::Waited { wait } => self.waited_answered(conn, wait, out),
            Purpose::Relayed { key } => self.relay_answered(key, ack.kind == Kind::Ok, out),
            Purpose::Replay | Purpose::Who => {}
        }
    }

    // ---- emitter replies --------------------------------------------------

    /// Queues the reply owed for request `seq`; pauses input at the limit.
    fn push_reply(&mut self, conn: ConnId, seq: u16, outstanding: u32, closes: bool) -> RequestRef {
        let max_inflight = self.limits.max_inflight;
        let session = self
            .session_mut(conn)
            .expect("requests come from live sessions");
        let incarnation = session.incarnation;
        let Role::Emitter {
            replies,
            next_request,
            paused,
            ..
        } = &mut session.role
        else {
            unreachable!("only emitters are owed ordered replies");
        };
        let request = *next_request;
        *next_request += 1;
        replies.push_back(PendingReply {
            request,
            seq,
            outstanding,
            any_ok: false,
            form: if closes {
                ReplyForm::Farewell
            } else {
                ReplyForm::Ack
            },
        });
        if replies.len() >= max_inflight {
            *paused = true;
        }
        RequestRef::new(conn, incarnation, request)
    }

    /// Where request number `request` sits in an emitter's reply queue.
    fn pending_index(role: &Role, request: u64) -> Option<usize> {
        let Role::Emitter { replies, .. } = role else {
            return None;
        };
        let index = request.checked_sub(replies.front()?.request)? as usize;
        (index < replies.len()).then_some(index)
    }

    /// An extension answer to emitter `conn`'s request `seq`, in its place
    /// among its replies (rule 4's order).
    fn reply_ext(
        &mut self,
        conn: ConnId,
        seq: u16,
        answer: ExtFrame,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        self.reply_ext_after(conn, seq, answer, None, now, out);
    }

    /// [`Router::reply_ext`] for an answer that waits for history record
    /// `held` too (when there is one), as a MSG's OK does.
    fn reply_ext_after(
        &mut self,
        conn: ConnId,
        seq: u16,
        answer: ExtFrame,
        held: Option<u64>,
        now: Instant,
        out: &mut impl Outbox,
    ) {
        let request = self.push_reply(conn, seq, u32::from(held.is_some()), false);
        if let Some(number) = held {
            self.hold_for_record(number, request);
        }
        if let Some(Role::Emitter { replies, .. }) = self.session_mut(conn).map(|s| &mut s.role)
            && let Some(last) = replies.back_mut()
        {
            last.form = ReplyForm::Answer;
            self.answers.insert((conn, request.request), answer);
        }
        self.flush_replies(conn, now, out);
    }

    /// A reply to a client that has no requests in flight goes out at once;
    /// an emitter's waits its turn behind earlier requests.
    fn reply(&mut self, conn: ConnId, seq: u16, ok: bool, now: Instant, out: &mut impl Outbox) {
        let Some(session) = self.session(conn) else {
            return;
        };
        if matches!(session.role, Role::Emitter { .. }) {
            let request = self.push_reply(conn, seq, 1, false);
            self.settle(request, ok, now, out);
        } else {
            let kind = if ok { Kind::Ok } else { Kind::Erro };
            out.send(conn, &Frame::bare(kind, SERVER_ID, session.id, seq));
        }
    }

    /// One target of `request` answered (or failed).
    fn settle(&mut self, request: RequestRef, ok: bool, now: Instant, out: &mut impl Outbox) {
        let Some(session) = self.session_mut(request.emitter()) else {
            return; // the emitter left; its replies went with it
        };
        if session.incarnation != request.incarnation {
            return; // ... and its ConnId now names another connection
        }
        let Some(index) = Router::pending_index(&session.role, request.request) else {
            return;
        };
        let Role::Emitter { replies, .. } = &mut session.role else {
            return;
        };
        let reply = &mut replies[index];
        reply.outstanding = reply.outstanding.saturating_sub(1);
        reply.any_ok |= ok;
        if index == 0 && reply.outstanding == 0 {
            self.flush_replies(request.emitter(), now, out);
        }
    }

    /// Sends every settled reply at the head of the emitter's queue.
    fn flush_replies(&mut self, emitter: ConnId, now: Instant, out: &mut impl Outbox) {
        let max_inflight = self.limits.max_inflight;
        let Router {
            sessions, answers, ..
        } = self;
        let Some(session) = sessions.get_mut(emitter).and_then(Option::as_mut) else {
            return;
        };
        let id = session.id;
        let Role::Emitter {
            replies,
            paused,
            finished,
            ..
        } = &mut session.role
        else {
            return;
        };
        let mut closes = false;
        while replies.front().is_some_and(|r| r.outstanding == 0) {
            let reply = replies.pop_front().expect("front checked");
            if reply.form == ReplyForm::Answer {
                if let Some(answer) = answers.remove(&(emitter, reply.request)) {
                    out.send_ext(emitter, &answer);
                }
                continue;
            }
            let farewell = reply.form == ReplyForm::Farewell;
            let kind = if reply.any_ok || farewell {
                Kind::Ok
            } else {
                Kind::Erro
            };
            out.send(emitter, &Frame::bare(kind, SERVER_ID, id, reply.seq));
            if farewell {
                closes = true;
                break;
            }
        }
        if *paused && replies.len() < max_inflight && !*finished {
            *paused = false;
            out.resume_input(emitter);
        }
        if closes {
            self.close(emitter, CloseReason::Left, now, out);
        }
    }

    // ---- departures -------------------------------------------------------

    /// Sends the server's FLW to `conn`; it is closed on its OK (or at the
    /// ack timeout).
    fn dismiss(&mut self, conn: ConnId, now: Instant, out: &mut impl Outbox) {
        let deadline = self.timeline.after(now);
        let Some(session) = self.session_mut(conn) else {
            return;
        };
        let seq = session.seq.next_seq();
        session.leaving = true;
        session
            .awaiting_ack
            .push(seq, deadline.due, Purpose::Farewell);
        out.send(conn, &Frame::bare(Kind::Flw, SERVER_ID, session.id, seq));
        self.note_deadline(deadline.at);
    }

    /// Closes `conn` from the router's side.
    fn close(&mut self, conn: ConnId, reason: CloseReason, now: Instant, out: &mut impl Outbox) {
        if let Some(id) = self.forget(conn, now, out) {
            out.close(conn, id, reason);
        }
    }

    /// Drops `conn` and settles everything that depended on it. Returns its
    /// id (0 if it never identified), or None if it was already gone.
    fn forget(&mut self, conn: ConnId, now: Instant, out: &mut impl Outbox) -> Option<ClientId> {
        self.release_name(conn, out);
        let session = self.sessions.get_mut(conn).and_then(Option::take)?;
        if session.teller {
            self.tellers -= 1;
        }
        let id = session.id;
        let member: Option<Box<str>> = session.member_key().map(Into::into);
        if self.remote.enabled {
            self.remote.forget(conn, &session, out);
        }
        match session.role {
            Role::Anonymous => {}
            Role::Emitter { exhibitor, .. } => {
                self.ids.remove(session.id);
                self.free_emitter_ids.insert(session.id);
                if !self.answers.is_empty() {
                    self.answers.retain(|&(owner, _), _| owner != conn);
                }
                // Rule 6: the paired exhibitor is told to leave too.
                if let Some(ex) = exhibitor {
                    if let Some(Role::Exhibitor { emitter }) =
                        self.session_mut(ex).map(|s| &mut s.role)
                    {
                        *emitter = None;
                    }
                    if self.session(ex).is_some_and(|s| !s.leaving) {
                        self.dismiss(ex, now, out);
                    }
                }
            }
            Role::Exhibitor { emitter } => {
                self.ids.remove(session.id);
                self.free_exhibitor_ids.insert(session.id);
                if let Some(em) = emitter
                    && let Some(Role::Emitter { exhibitor, .. }) =
                        self.session_mut(em).map(|s| &mut s.role)
                {
                    *exhibitor = None;
                }
                // Rule 6: its unsettled deliveries fail; a queue message
                // it held goes to the next member session.
                for delivery in session.awaiting_ack.into_deliveries() {
                    match delivery.purpose {
                        Purpose::Request(request) => self.settle(request, false, now, out),
                        Purpose::Queued { room, slot, ticket } => {
                            self.queue_dropped(conn, room, slot, ticket)
                        }
                        Purpose::Relayed { key } => self.relay_settled(key, false, out),
                        _ => {}
                    }
                }
                if let Some(key) = member {
                    self.waiting_dropped(conn, &key);
                    self.room_session_offline(conn, &key, now, out);
                }
            }
        }
        Some(id)
    }

    // ---- helpers ------------------------------------------------------------

    /// Sends each opted-in target a WHO for each id in `about` whose name
    /// or roles differ from what it was last told (PROTOCOL.md, "WHO"):
    /// before the MSG or CLIST that carries them. Numbered and acknowledged
    /// like a CLIST.
    fn tell_names(
        &mut self,
        targets: &[ConnId],
        about: &[ClientId],
        deadline: Deadline,
        out: &mut impl Outbox,
    ) {
        let epoch = self.ids.epoch;
        let single = match about {
            [id] => Some(*id),
            _ => None,
        };
        if single.is_some_and(|id| self.everyone_told == (id, epoch, self.tellers_changed)) {
            return;
        }
        let mut tellers_seen = 0;
        for &target in targets {
            let Some(session) = self.session(target) else {
                continue;
            };
            if !session.teller {
                continue;
            }
            tellers_seen += 1;
            if single.is_some_and(|id| session.checked == (id, epoch)) {
                continue;
            }
            for &id in about {
                // Held here, or by another node that said what it shows.
                let holder = self.ids.get(id).and_then(|c| self.session(c));
                let Some((shown, roles)) = holder
                    .map(|h| (h.name(), h.roles))
                    .or_else(|| self.remote.shown(id))
                else {
                    continue;
                };
                // Compared in place: what was told already costs no copy.
                let known = self.session(target).and_then(|s| s.told.as_ref()?.get(&id));
                if known.is_some_and(|(name, r)| name.as_deref() == shown && *r == roles) {
                    continue;
                }
                let name: Option<Box<str>> = shown.map(Into::into);
                self.tell(target, id, name, roles, deadline, out);
            }
            if let Some(id) = single
                && let Some(session) = self.session_mut(target)
            {
                session.checked = (id, epoch);
            }
        }
        // Every teller was among the targets (they are distinct sessions)
        // and is now told of the one sender.
        if let Some(id) = single
            && tellers_seen == self.tellers
        {
            self.everyone_told = (id, epoch, self.tellers_changed);
        }
    }

    /// Sends the opted-in exhibitor `target` WHO(id, roles, name), numbered
    /// and acknowledged like a CLIST, and notes it as told.
    fn tell(
        &mut self,
        target: ConnId,
        id: ClientId,
        name: Option<Box<str>>,
        roles: u8,
        deadline: Deadline,
        out: &mut impl Outbox,
    ) {
        self.tellers_changed += 1;
        let session = self.session_mut(target).expect("told a live session");
        // What was found told may change here (a replay tells recorded names).
        session.checked = (0, u64::MAX);
        let told = session.told.get_or_insert_with(Box::default);
        let seq = session.seq.next_seq();
        let who = ExtFrame::Who(Who {
            origin: SERVER_ID,
            dest: session.id,
            seq,
            id,
            roles,
            name: name.as_deref().unwrap_or("").as_bytes().to_vec(),
        });
        told.insert(id, (name, roles));
        session.awaiting_ack.push(seq, deadline.due, Purpose::Who);
        out.send_ext(target, &who);
        self.note_deadline(deadline.at);
    }

    /// Frees the name `conn` claimed, if it claimed one (with several
    /// nodes, in the engine too).
    fn release_name(&mut self, conn: ConnId, out: &mut impl Outbox) {
        if self.claimed.is_empty() {
            return;
        }
        if let Some(name) = self.name(conn) {
            let key: Box<str> = name.to_ascii_lowercase().into();
            if self.claimed.get(&key) == Some(&conn) {
                self.claimed.remove(&key);
                if self.remote.enabled {
                    out.release_name(&key);
                }
            }
        }
    }

    fn note_deadline(&mut self, deadline: Instant) {
        self.earliest_deadline = Some(self.earliest_deadline.map_or(deadline, |e| e.min(deadline)));
    }

    fn session(&self, conn: ConnId) -> Option<&Session> {
        self.sessions.get(conn)?.as_ref()
    }

    fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        self.sessions.get_mut(conn)?.as_mut()
    }
}

/// A teller sent a client list forgets what it was told of the ids the
/// list does not carry (`listed`, in order), as the clients do (they have
/// left: `Names::keep_only`), so that an id back with the same name is told
/// again. Before, a chat that had listed the clients showed such a name as
/// a number. Returns whether anything was forgotten.
fn forget_unlisted(session: &mut Session, listed: &[ClientId]) -> bool {
    let Some(told) = session.told.as_mut() else {
        return false;
    };
    let before = told.len();
    told.retain(|id, _| listed.binary_search(id).is_ok());
    let forgot = told.len() != before;
    if forgot {
        session.checked = (0, u64::MAX);
    }
    forgot
}

/// The log line of a MSG or CREQ refused for a missing role: out of line, so
/// that the per-message path it sits in stays as small as it was before roles.
#[cold]
#[inline(never)]
/// Whether `roles` allow `frame`: MSG and CREQ need emit, or broadcast when
/// sent to 0; nothing else an emitter sends needs a role.
fn may_request(roles: u8, frame: &FrameView<'_>) -> bool {
    let needed = match (frame.kind, frame.dest) {
        (Kind::Msg | Kind::Creq, 0) => ROLE_BROADCAST,
        (Kind::Msg | Kind::Creq, _) => ROLE_EMIT,
        _ => return true,
    };
    roles & needed == needed
}

fn log_role_refusal(conn: ConnId, frame: &FrameView<'_>) {
    info!(
        conn,
        id = frame.origin,
        kind = %frame.kind,
        dest = frame.dest,
        "refused: the session lacks the role"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One is written per target of every fan-out and kept until the ack
    /// (BENCHMARKS.md, "Tenth round": at 56 bytes, a window to 100 targets
    /// kept 5.7 MB of them live).
    #[test]
    fn a_delivery_is_kept_to_32_bytes() {
        assert_eq!(std::mem::size_of::<Delivery>(), 32);
        assert_eq!(std::mem::size_of::<Purpose>(), 24);
    }
}
