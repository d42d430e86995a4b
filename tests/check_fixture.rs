//! A deliberately breakable server for `evchat check`'s tests: a small
//! thread-per-connection implementation of the protocol (the way most
//! course servers are written), correct by default, with a [`Fault`] switch
//! that breaks exactly one rule. Each fault is a bug seen in real servers of
//! this protocol. It runs in-process on 127.0.0.1:0 and is torn down (every
//! socket shut, the listener closed) when dropped.
//!
//! By default it speaks the plain protocol only (a HELLO is an unknown
//! type), like most servers of the assignment; [`Fault::SpeaksIdentity`]
//! and the faults after it speak the identity extension too, without
//! accounts (names claimed by HELLO, WHO to exhibitors that opted in, KICK
//! refused since nobody has admin), each of the latter breaking one of its
//! rules. [`Fault::SpeaksRooms`] and the faults after it speak rooms and
//! work queues too (JOIN, LEAVE, ROOMS, MSG to a room id, a queue room
//! with prefetch 1 and a `--queue-wait` of [`QUEUE_WAIT`]), the latter each
//! breaking one of their rules.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const OK: u16 = 1;
const ERRO: u16 = 2;
const OI: u16 = 3;
const FLW: u16 = 4;
const MSG: u16 = 5;
const CREQ: u16 = 6;
const CLIST: u16 = 7;
const HELLO: u16 = 8;
const HELLOACK: u16 = 9;
const WHO: u16 = 10;
const KICK: u16 = 11;
const JOIN: u16 = 12;
const LEAVE: u16 = 13;
const ROOMS: u16 = 14;
const ROOMACK: u16 = 15;
const ROOMLIST: u16 = 16;
const TELL: u16 = 17;
const WAITING: u16 = 18;
const SERVER: u16 = 65535;
/// The room ids (PROTOCOL.md, "Room ids").
const ROOM_IDS: std::ops::RangeInclusive<u16> = 0x4000..=0x7fff;
/// How long a queue message waits for a member before its emitter gets
/// ERRO (the server's `--queue-wait`): `evchat check --queue-wait 2`.
pub const QUEUE_WAIT: Duration = Duration::from_secs(2);
/// Every session's roles without accounts: view, emit, broadcast.
const PLAIN_ROLES: u8 = 7;

/// The one rule a fixture breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A correct server.
    None,
    /// Reads and writes every u16 little-endian.
    LittleEndian,
    /// Gives exhibitors ids from 8192 up.
    ExhibitorIdsHigh,
    /// Gives emitters ids from 8192 up (above 4095).
    EmitterIdsHigh,
    /// Refuses every pairing OI.
    RefusePairing,
    /// Replies to requests with seq 0 instead of the request's.
    NoSeqEcho,
    /// Sends a unicast MSG (not CREQ) to the lowest exhibitor, whoever it was for.
    UnicastToLowest,
    /// Sends a broadcast to the first exhibitor only.
    BroadcastFirstOnly,
    /// Accepts a pairing OI but never records the pair.
    IgnorePairing,
    /// Forwards MSG with origin 65535 instead of the emitter's id.
    ForwardFromServer,
    /// Answers OK to a MSG nobody can receive.
    OkUnknownDest,
    /// Puts N + 1 in CLIST's count field.
    WrongClistCount,
    /// Closes on FLW without answering OK.
    FlwNoOk,
    /// Accepts an emitter that names an exhibitor that is not connected.
    PairUnknownAccepted,
    /// Never reuses an exhibitor id.
    SequentialIds,
    /// Answers a second OI with OK.
    SecondOiOk,
    /// Ignores a second OI: no answer at all.
    SecondOiIgnored,
    /// Sends CLIST with the requesting emitter as origin.
    ClistOriginEmitter,
    /// Lists CLIST ids in descending order.
    ClistDescending,
    /// Answers an emitter's MSG before the exhibitor acknowledges it.
    EarlyOk,
    /// Answers a frame before OI with OK.
    AcceptBeforeOi,
    /// Reads a header with one recv and a body with another, whatever came.
    SingleRecv,
    /// Handles the first frame of each recv and drops the rest.
    OneFramePerRead,
    /// Closes on an unknown type without ERRO.
    CloseOnUnknown,
    /// Stops entirely on an unknown type before OI (a dispatch table
    /// indexed by the type field, before the identification check).
    CrashOnEarlyGarbage,
    /// Forwards a MSG whose origin is another client's.
    ForwardSpoof,
    /// Stops entirely (listener and every connection) on a spoofed origin.
    CrashOnSpoof,
    /// Serves at most 64 connections; the 65th is closed at once.
    MaxClients64,
    /// After forwarding a MSG, waits for the exhibitor's ack, holding
    /// everyone else up.
    BlockOnAck,
    /// Writes to clients while holding the server's state, so a client
    /// that does not read holds everyone up.
    BlockingWrite,
    /// Stops entirely just after an exhibitor disconnects without FLW while
    /// a delivery to it is outstanding (the emitter still gets its ERRO; a
    /// freed client then used on the loop's next turn).
    CrashAfterVanish,
    /// Stops entirely whenever a client's connection ends, however it
    /// ends (like a real server of the assignment, whose loop then uses
    /// the freed client): for `evchat check --spawn`.
    CrashOnLeave,
    /// Forwards a MSG or CREQ but never answers the emitter (the
    /// exhibitor's OK taken as the end of it).
    NoReplyToEmitter,
    /// Has the values of OK and ERRO swapped (2 and 1), in what it writes
    /// and in what it reads.
    OkErroSwapped,
    /// Passes a paired emitter's FLW on to its exhibitor with the emitter,
    /// not 65535, as origin.
    FlwFromEmitter,
    /// Lists every client twice in CLIST (N counts both copies).
    ClistDuplicates,
    /// Answers a frame of unknown type with OK (a switch whose default case
    /// acknowledges), then closes.
    OkUnknownType,
    /// Closes a connection that sends anything but OI before OI, without
    /// ERRO.
    CloseBeforeOi,
    /// Forgets the deliveries of an exhibitor that disconnects without FLW:
    /// their emitters never get an answer.
    SilentOnVanish,
    /// Refuses a second OI with ERRO but forgets the client: its next
    /// frames are answered as before OI (ERRO, then a close).
    SecondOiForgets,
    /// Drops a MSG with a forged origin but answers it OK.
    SpoofOk,
    /// Answers FLW with OK and forgets the client, but never closes the
    /// connection.
    FlwOkNoClose,
    /// A correct server that also speaks the identity extension.
    SpeaksIdentity,
    /// Puts version 0 in HELLOACK.
    HelloAckVersion0,
    /// Takes any bytes as a name.
    BadNameAccepted,
    /// Compares names with their case: "ALICE" is not "alice".
    NameTakenCaseSensitive,
    /// Accepts a second HELLO (a new name) after code 0.
    SecondHelloAccepted,
    /// Answers a HELLO after OI with ERRO, then closes (as for an unknown type).
    HelloAfterOiCloses,
    /// Sends WHO after the MSG it should precede.
    WhoAfterMsg,
    /// Tells every exhibitor, opted in or not, the name of a named id.
    WhoToPlain,
    /// Answers KICK from an emitter without admin with OK (closing nobody).
    KickAccepted,
    /// A correct server that also speaks rooms and work queues.
    SpeaksRooms,
    /// Gives rooms ids from 256 up, inside the emitters' range.
    RoomIdsLow,
    /// Takes any bytes as a room name.
    RoomBadNameAccepted,
    /// Answers LEAVE of a room one is not in with code 0.
    LeaveNotMemberOk,
    /// Lists every room with 0 members.
    RoomListNoMembers,
    /// Sends a room's MSG to its first member session only.
    RoomMsgFirstMemberOnly,
    /// Answers a room's MSG as soon as one member settled it.
    RoomEarlyOk,
    /// Sends a room's MSG to every opted-in exhibitor with a name.
    RoomMsgToNamed,
    /// Sends a room's MSG to the plain exhibitors too.
    RoomToPlain,
    /// Refuses (ERRO) a MSG to an ordinary room from a session whose name
    /// is not a member.
    RoomNonMemberRefused,
    /// Answers OK to a MSG to a room id no room holds.
    RoomMissingOk,
    /// Copies a queue room's MSG to every member, like an ordinary room.
    QueueToAll,
    /// Hands queue messages to a member that still holds one.
    QueueNoPrefetch,
    /// Takes a JOIN's prefetch (flag 2) but holds every member to 1.
    QueuePrefetchIgnored,
    /// Answers ERRO for the message a queue member held when it left.
    QueueLostOnLeave,
    /// Answers ERRO at once to a queue message when no member is online.
    QueueNoWait,
    /// Never gives up on a waiting queue message.
    QueueNeverGivesUp,
    /// Stores a TELL to a name that is online instead of showing it.
    TellOnlineStored,
    /// Answers a TELL it stores with OK (which means "shown").
    TellStoredOk,
    /// Sends a stored TELL's MSG without the WAITING before it.
    TellNoWaiting,
    /// Stores a TELL to a name it has never seen (code 9, not 10).
    TellUnknownStored,
}

impl Fault {
    /// Whether this server speaks rooms and work queues.
    fn speaks_rooms(self) -> bool {
        matches!(
            self,
            Fault::SpeaksRooms
                | Fault::RoomIdsLow
                | Fault::RoomBadNameAccepted
                | Fault::LeaveNotMemberOk
                | Fault::RoomListNoMembers
                | Fault::RoomMsgFirstMemberOnly
                | Fault::RoomEarlyOk
                | Fault::RoomMsgToNamed
                | Fault::RoomToPlain
                | Fault::RoomNonMemberRefused
                | Fault::RoomMissingOk
                | Fault::QueueToAll
                | Fault::QueueNoPrefetch
                | Fault::QueuePrefetchIgnored
                | Fault::QueueLostOnLeave
                | Fault::QueueNoWait
                | Fault::QueueNeverGivesUp
                | Fault::TellOnlineStored
                | Fault::TellStoredOk
                | Fault::TellNoWaiting
                | Fault::TellUnknownStored
        )
    }

    /// Whether this server speaks the identity extension.
    fn speaks_identity(self) -> bool {
        self.speaks_rooms()
            || matches!(
                self,
                Fault::SpeaksIdentity
                    | Fault::HelloAckVersion0
                    | Fault::BadNameAccepted
                    | Fault::NameTakenCaseSensitive
                    | Fault::SecondHelloAccepted
                    | Fault::HelloAfterOiCloses
                    | Fault::WhoAfterMsg
                    | Fault::WhoToPlain
                    | Fault::KickAccepted
            )
    }
}

/// A running fixture server.
pub struct Fixture {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Fixture {
    pub fn start(fault: Fault) -> Fixture {
        Fixture::start_on(fault, 0)
    }

    /// On 127.0.0.1:`port` (0: one the kernel picks).
    pub fn start_on(fault: Fault, port: u16) -> Fixture {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            fault,
            addr,
            state: Mutex::new(State::default()),
            stopped: AtomicBool::new(false),
            down: AtomicBool::new(false),
            state_changed: Condvar::new(),
            sockets: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || accept_loop(&accepting, listener));
        if fault.speaks_rooms() && fault != Fault::QueueNeverGivesUp {
            let ticking = shared.clone();
            std::thread::spawn(move || give_up_loop(&ticking));
        }
        Fixture { addr, shared }
    }

    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Returns once the fixture has stopped (crashed, for the faults that
    /// stop it) and what it wrote before is out.
    pub fn wait_stopped(&self) {
        let mut state = lock(&self.shared.state);
        while !self.shared.down.load(Ordering::SeqCst) {
            // `stop` signals without the lock when a crash holds it: the
            // flag is read again at least every 100 ms.
            state = self
                .shared
                .state_changed
                .wait_timeout(state, std::time::Duration::from_millis(100))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

struct Shared {
    fault: Fault,
    addr: SocketAddr,
    state: Mutex<State>,
    stopped: AtomicBool,
    /// Set once `stop` has shut every socket: what a crash writes first
    /// (CrashAfterVanish's ERRO) is out by then.
    down: AtomicBool,
    /// Signalled after every change to `state` (BlockOnAck waits on it).
    state_changed: Condvar,
    /// Every open socket, so that stopping can shut them all.
    sockets: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Stops like a crashed process: no listener, every connection shut.
    fn stop(&self) {
        self.stop_accepting();
        for socket in lock(&self.sockets).values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        self.down.store(true, Ordering::SeqCst);
        // Under the lock when free, so no waiter misses it; a crash comes
        // from inside `handle`, which holds it already.
        let _guard = self.state.try_lock();
        self.state_changed.notify_all();
    }

    /// Refuses every connection from now on: the accept loop takes the
    /// wake-up connection made here before any later one, and drops the
    /// listener (those still queued behind it are reset).
    fn stop_accepting(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }

    /// The state, once no BlockOnAck stall holds it for another connection:
    /// while the server "waits in recv" for one exhibitor's ack, only that
    /// exhibitor is served.
    fn state_for(&self, conn: u64) -> MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        while state.stalled_on.is_some_and(|c| c != conn) && !self.stopped.load(Ordering::SeqCst) {
            state = self
                .state_changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state
    }

    fn wire(&self) -> Wire {
        Wire {
            le: self.fault == Fault::LittleEndian,
            swapped: self.fault == Fault::OkErroSwapped,
        }
    }
}

/// Every 50 ms, answers ERRO to the queue messages that waited
/// [`QUEUE_WAIT`], until the fixture stops.
fn give_up_loop(shared: &Shared) {
    while !shared.stopped.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        let mut acts = Vec::new();
        let mut state = lock(&shared.state);
        for room in state.rooms.values_mut() {
            while room
                .waiting
                .front()
                .is_some_and(|q| q.since.elapsed() >= QUEUE_WAIT)
            {
                let queued = room.waiting.pop_front().expect("front");
                answer(shared, &queued.request, false, &mut acts);
            }
        }
        drop(state);
        perform(acts);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    for stream in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let conn = shared.next_conn.fetch_add(1, Ordering::SeqCst);
        {
            let mut state = lock(&shared.state);
            if shared.fault == Fault::MaxClients64 && state.open >= 64 {
                let _ = stream.shutdown(Shutdown::Both);
                continue;
            }
            state.open += 1;
        }
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.sockets).insert(conn, clone);
        }
        let shared = shared.clone();
        std::thread::spawn(move || serve(&shared, conn, stream));
    }
}

/// How the fixture's frames look on the wire.
#[derive(Clone, Copy)]
struct Wire {
    /// Every u16 little-endian.
    le: bool,
    /// OK and ERRO have each other's value.
    swapped: bool,
}

impl Wire {
    /// A type as this server writes it, or (the swap is its own inverse)
    /// what a type it reads means to it.
    fn kind(self, kind: u16) -> u16 {
        match kind {
            OK if self.swapped => ERRO,
            ERRO if self.swapped => OK,
            _ => kind,
        }
    }
}

/// One frame as the fixture reads it: the raw type, and the body's bytes
/// after the count field.
struct In {
    kind: u16,
    origin: u16,
    dest: u16,
    seq: u16,
    body: Vec<u8>,
}

/// The writing half of a connection, and what its reader must know of it.
struct Out {
    conn: u64,
    stream: Mutex<TcpStream>,
    closed: AtomicBool,
    /// Sent OI (and was given an id).
    identified: AtomicBool,
    /// Had a HELLO accepted: after OI, HELLO and KICK are frames it may send.
    opted_in: AtomicBool,
}

impl Out {
    fn write(&self, bytes: &[u8]) {
        let _ = lock(&self.stream).write_all(bytes);
    }

    /// Closes after what was written: FIN; the reader drains to EOF.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = lock(&self.stream).shutdown(Shutdown::Write);
    }
}

enum Act {
    Send(Arc<Out>, Vec<u8>),
    Close(Arc<Out>),
}

fn perform(acts: Vec<Act>) {
    for act in acts {
        match act {
            Act::Send(out, bytes) => out.write(&bytes),
            Act::Close(out) => out.close(),
        }
    }
}

fn serve(shared: &Arc<Shared>, conn: u64, stream: TcpStream) {
    let Ok(writer) = stream.try_clone() else {
        lock(&shared.state).open -= 1;
        return;
    };
    let out = Arc::new(Out {
        conn,
        stream: Mutex::new(writer),
        closed: AtomicBool::new(false),
        identified: AtomicBool::new(false),
        opted_in: AtomicBool::new(false),
    });
    let mut reader = Reader {
        stream,
        buf: Vec::new(),
        wire: shared.wire(),
        mode: shared.fault,
        out: out.clone(),
    };
    while let Some(frame) = reader.next() {
        if out.closed.load(Ordering::SeqCst) {
            continue;
        }
        handle(shared, &out, frame);
    }
    let mut state = shared.state_for(conn);
    let mut acts = Vec::new();
    let crash = (shared.fault == Fault::CrashAfterVanish && state.owes_delivery(conn))
        || shared.fault == Fault::CrashOnLeave;
    if shared.fault == Fault::SilentOnVanish
        && let Some(id) = state.ids.get(&conn).copied()
        && let Some(client) = state.clients.get_mut(&id)
    {
        client.pending.clear();
    }
    state.remove(shared, conn, &mut acts);
    state.open -= 1;
    drop(state);
    shared.state_changed.notify_all();
    lock(&shared.sockets).remove(&conn);
    if crash {
        // Gone before anyone can connect again, yet the ERRO goes out.
        shared.stop_accepting();
        perform(acts);
        return shared.stop();
    }
    perform(acts);
}

struct Reader {
    stream: TcpStream,
    buf: Vec<u8>,
    wire: Wire,
    mode: Fault,
    out: Arc<Out>,
}

impl Reader {
    fn field(&self, bytes: &[u8], at: usize) -> u16 {
        let pair = [bytes[at], bytes[at + 1]];
        if self.wire.le {
            u16::from_le_bytes(pair)
        } else {
            u16::from_be_bytes(pair)
        }
    }

    /// The next frame; None at EOF or error.
    fn next(&mut self) -> Option<In> {
        if self.mode == Fault::SingleRecv {
            return self.next_single_recv();
        }
        loop {
            if let Some((frame, len)) = self.parse() {
                if self.mode == Fault::OneFramePerRead {
                    self.buf.clear();
                } else {
                    self.buf.drain(..len);
                }
                return Some(frame);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn parse(&self) -> Option<(In, usize)> {
        let b = &self.buf;
        if b.len() < 8 {
            return None;
        }
        let kind = self.field(b, 0);
        // An extension frame has a body of L bytes where the extension
        // allows it: HELLO before OI, HELLO and KICK after OI once opted in.
        // Anywhere else its type is unknown and the header is all there is.
        let identified = self.out.identified.load(Ordering::SeqCst);
        let opted_in = identified && self.out.opted_in.load(Ordering::SeqCst);
        let ext = (self.mode.speaks_identity()
            && ((kind == HELLO && !identified) || (opted_in && (kind == HELLO || kind == KICK))))
            || (self.mode.speaks_rooms()
                && opted_in
                && ((JOIN..=ROOMS).contains(&kind) || kind == TELL));
        let (len, body) = if kind == MSG || kind == CLIST || ext {
            if b.len() < 10 {
                return None;
            }
            let count = self.field(b, 8) as usize;
            let len = 10 + if kind == CLIST { 2 * count } else { count };
            if b.len() < len {
                return None;
            }
            (len, b[10..len].to_vec())
        } else {
            (8, Vec::new())
        };
        let frame = In {
            kind: self.wire.kind(kind),
            origin: self.field(b, 2),
            dest: self.field(b, 4),
            seq: self.field(b, 6),
            body,
        };
        Some((frame, len))
    }

    /// The classic bug: one recv for the header, one for the count, one for
    /// the body, each taken as complete whatever it returned.
    fn next_single_recv(&mut self) -> Option<In> {
        let mut header = [0u8; 8];
        match self.stream.read(&mut header) {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let kind = self.field(&header, 0);
        let mut body = Vec::new();
        if kind == MSG || kind == CLIST {
            let mut count = [0u8; 2];
            if let Ok(0) | Err(_) = self.stream.read(&mut count) {
                return None;
            }
            let count = self.field(&count, 0) as usize;
            body = vec![0u8; if kind == MSG { count } else { 2 * count }];
            if !body.is_empty() && matches!(self.stream.read(&mut body), Ok(0) | Err(_)) {
                return None;
            }
        }
        Some(In {
            kind,
            origin: self.field(&header, 2),
            dest: self.field(&header, 4),
            seq: self.field(&header, 6),
            body,
        })
    }
}

/// Encodes a frame: the four header fields, then (MSG, CLIST) a count and
/// the body, every u16 in the fixture's byte order.
fn encode(wire: Wire, fields: [u16; 4], count: Option<u16>, body: &[u8]) -> Vec<u8> {
    let put = |out: &mut Vec<u8>, v: u16| {
        out.extend_from_slice(&if wire.le {
            v.to_le_bytes()
        } else {
            v.to_be_bytes()
        })
    };
    let [kind, origin, dest, seq] = fields;
    let mut out = Vec::with_capacity(10 + body.len());
    for field in [wire.kind(kind), origin, dest, seq] {
        put(&mut out, field);
    }
    if let Some(count) = count {
        put(&mut out, count);
    }
    out.extend_from_slice(body);
    out
}

#[derive(Debug)]
enum Role {
    Emitter { exhibitor: Option<u16> },
    Exhibitor { emitter: Option<u16> },
}

struct Client {
    out: Arc<Out>,
    role: Role,
    /// Frames sent to this client awaiting its OK, oldest first.
    pending: VecDeque<Pending>,
    /// The server's numbering of the frames it originates to this client.
    seq: u16,
    /// The session's name ("" for none).
    name: String,
    /// Sent HELLO before OI: an exhibitor that did is told names by WHO.
    opted_in: bool,
    /// The name this exhibitor was last told for each id.
    told: HashMap<u16, String>,
    /// When it came online, in the order of OIs: a queue's turn order.
    online: u64,
}

enum Pending {
    Request(Arc<Mutex<Request>>),
    Farewell,
    /// A WHO: its OK settles nothing else.
    Who,
    /// A queue room's message this member session holds.
    Queued(u16, Queued),
}

/// A MSG to a queue room, waiting or held by a member session.
struct Queued {
    request: Arc<Mutex<Request>>,
    /// The MSG as it arrived.
    bytes: Vec<u8>,
    origin: u16,
    since: Instant,
}

/// A TELL kept for a name that was offline.
struct Letter {
    origin: u16,
    /// The teller's name, for the WHO before it.
    sender: String,
    text: Vec<u8>,
    time_ms: u64,
}

struct Room {
    /// As the first JOIN spelt it.
    name: String,
    queue: bool,
    /// The member names, as each JOIN spelt it.
    members: Vec<String>,
    /// The prefetch a member name's JOIN asked (lower case; 1 when absent).
    prefetch: HashMap<String, u8>,
    /// Queue messages no member session holds yet, oldest first.
    waiting: VecDeque<Queued>,
    /// The `online` stamp of the member session served last.
    last_served: u64,
}

impl Room {
    fn has_member(&self, name: &str) -> bool {
        !name.is_empty() && self.members.iter().any(|m| m.eq_ignore_ascii_case(name))
    }
}

/// The name rule (user names and room names alike).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 24
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// An emitter's MSG or CREQ, answered once every target has settled.
struct Request {
    emitter: Arc<Out>,
    emitter_id: u16,
    seq: u16,
    outstanding: usize,
    any_ok: bool,
    answered: bool,
    /// RoomEarlyOk: answered at the first target's answer.
    first_settles: bool,
}

#[derive(Default)]
struct State {
    clients: BTreeMap<u16, Client>,
    ids: HashMap<u64, u16>,
    /// SequentialIds: the next exhibitor id, never reused.
    next_exhibitor: u16,
    open: usize,
    /// BlockOnAck: the connection whose ack the server is stuck waiting for.
    stalled_on: Option<u64>,
    /// BlockOnAck: deliveries just made, to wait for before serving anyone else.
    to_await: Vec<(u64, Arc<Mutex<Request>>)>,
    /// The name each connection claimed with an accepted HELLO ("" for
    /// none), held until it ends.
    claimed: HashMap<u64, String>,
    rooms: BTreeMap<u16, Room>,
    /// Messages told to offline names (lower case), oldest first.
    letters: HashMap<String, VecDeque<Letter>>,
    /// The `online` stamp of the last client to send OI.
    onlines: u64,
}

fn handle(shared: &Shared, out: &Arc<Out>, frame: In) {
    let mut state = shared.state_for(out.conn);
    let mut acts = Vec::new();
    state.handle(shared, out, frame, &mut acts);
    match shared.fault {
        Fault::BlockingWrite => perform(acts),
        Fault::BlockOnAck => {
            perform(acts);
            // The bug: the whole server waits for each exhibitor's OK.
            for (conn, request) in std::mem::take(&mut state.to_await) {
                state.stalled_on = Some(conn);
                // Whoever waits at the gate for this connection may pass now.
                shared.state_changed.notify_all();
                while state.awaits(conn, &request) && !shared.stopped.load(Ordering::SeqCst) {
                    state = shared
                        .state_changed
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                state.stalled_on = None;
            }
        }
        _ => {
            drop(state);
            perform(acts);
            shared.state_changed.notify_all();
            return;
        }
    }
    drop(state);
    shared.state_changed.notify_all();
}

impl State {
    /// Whether connection `conn` still owes an ack for some emitter's MSG.
    fn owes_delivery(&self, conn: u64) -> bool {
        self.ids.get(&conn).is_some_and(|id| {
            self.clients[id]
                .pending
                .iter()
                .any(|p| matches!(p, Pending::Request(_)))
        })
    }

    /// Whether connection `conn` still owes an ack for `request`.
    fn awaits(&self, conn: u64, request: &Arc<Mutex<Request>>) -> bool {
        let Some(id) = self.ids.get(&conn) else {
            return false;
        };
        self.clients[id].pending.iter().any(|p| match p {
            Pending::Request(r) => Arc::ptr_eq(r, request),
            Pending::Farewell | Pending::Who | Pending::Queued(..) => false,
        })
    }

    fn handle(&mut self, shared: &Shared, out: &Arc<Out>, f: In, acts: &mut Vec<Act>) {
        let fault = shared.fault;
        let wire = shared.wire();
        let reply_seq = |seq: u16| if fault == Fault::NoSeqEcho { 0 } else { seq };
        let reply = |kind: u16, dest: u16, seq: u16| {
            Act::Send(
                out.clone(),
                encode(wire, [kind, SERVER, dest, reply_seq(seq)], None, &[]),
            )
        };
        let Some(&id) = self.ids.get(&out.conn) else {
            if fault == Fault::CrashOnEarlyGarbage && !(OK..=CLIST).contains(&f.kind) {
                return shared.stop();
            }
            if f.kind == OI {
                return self.identify(shared, out, &f, acts);
            }
            if f.kind == HELLO && fault.speaks_identity() {
                return self.hello(shared, out, &f, acts);
            }
            match fault {
                Fault::AcceptBeforeOi => return acts.push(reply(OK, 0, f.seq)),
                Fault::CloseBeforeOi => {}
                _ => acts.push(reply(ERRO, 0, f.seq)),
            }
            return acts.push(Act::Close(out.clone()));
        };
        if out.opted_in.load(Ordering::SeqCst) && (f.kind == HELLO || f.kind == KICK) {
            // Like a second OI (HELLO), or a request the client's roles do
            // not allow (KICK: nobody has admin without accounts).
            let kind = if f.kind == KICK && fault == Fault::KickAccepted {
                OK
            } else {
                ERRO
            };
            acts.push(reply(kind, id, f.seq));
            if f.kind == HELLO && fault == Fault::HelloAfterOiCloses {
                acts.push(Act::Close(out.clone()));
                self.remove(shared, out.conn, acts);
            }
            return;
        }
        if out.opted_in.load(Ordering::SeqCst)
            && fault.speaks_rooms()
            && ((JOIN..=ROOMS).contains(&f.kind) || f.kind == TELL)
        {
            let is_emitter = matches!(
                self.clients.get(&id).map(|c| &c.role),
                Some(Role::Emitter { .. })
            );
            if is_emitter && f.kind == TELL {
                return self.tell(shared, out, id, &f, acts);
            }
            if is_emitter {
                return self.room_request(shared, out, id, &f, acts);
            }
            // As a MSG from an exhibitor: ERRO, kept.
            return acts.push(reply(ERRO, id, f.seq));
        }
        if !(OK..=CLIST).contains(&f.kind) || f.kind == CLIST {
            let unknown = f.kind != CLIST;
            match fault {
                Fault::CloseOnUnknown if unknown => {}
                Fault::OkUnknownType if unknown => acts.push(reply(OK, id, f.seq)),
                _ => acts.push(reply(ERRO, id, f.seq)),
            }
            acts.push(Act::Close(out.clone()));
            return self.remove(shared, out.conn, acts);
        }
        if f.kind == OI {
            if fault == Fault::SecondOiIgnored {
                return;
            }
            let kind = if fault == Fault::SecondOiOk { OK } else { ERRO };
            acts.push(reply(kind, id, f.seq));
            if fault == Fault::SecondOiForgets {
                self.remove(shared, out.conn, acts);
            }
            return;
        }
        if f.origin != id {
            match fault {
                Fault::ForwardSpoof => {}
                Fault::CrashOnSpoof => return shared.stop(),
                Fault::SpoofOk => return acts.push(reply(OK, id, f.seq)),
                _ => {
                    acts.push(reply(ERRO, id, f.seq));
                    acts.push(Act::Close(out.clone()));
                    return self.remove(shared, out.conn, acts);
                }
            }
        }
        let is_emitter = matches!(
            self.clients.get(&id).map(|c| &c.role),
            Some(Role::Emitter { .. })
        );
        match f.kind {
            MSG | CREQ if is_emitter => self.route(shared, out, id, &f, acts),
            MSG | CREQ => acts.push(reply(ERRO, id, f.seq)),
            FLW => {
                if fault != Fault::FlwNoOk {
                    acts.push(reply(OK, id, f.seq));
                }
                if fault != Fault::FlwOkNoClose {
                    acts.push(Act::Close(out.clone()));
                }
                self.remove(shared, out.conn, acts);
            }
            _ => self.settle(shared, id, f.kind == OK, acts),
        }
    }

    fn lowest_free(&self, range: std::ops::RangeInclusive<u16>) -> Option<u16> {
        range.into_iter().find(|id| !self.clients.contains_key(id))
    }

    fn identify(&mut self, shared: &Shared, out: &Arc<Out>, f: &In, acts: &mut Vec<Act>) {
        let fault = shared.fault;
        let wire = shared.wire();
        let refuse = |acts: &mut Vec<Act>| {
            acts.push(Act::Send(
                out.clone(),
                encode(wire, [ERRO, SERVER, 0, f.seq], None, &[]),
            ));
            acts.push(Act::Close(out.clone()));
        };
        let emitter_ids = if fault == Fault::EmitterIdsHigh {
            8192..=65534
        } else {
            1..=4095
        };
        let (id, role) = if f.origin == 0 {
            let id = match fault {
                Fault::ExhibitorIdsHigh => self.lowest_free(8192..=65534),
                Fault::SequentialIds => {
                    let id = self.next_exhibitor.max(4096);
                    self.next_exhibitor = id + 1;
                    Some(id)
                }
                _ => self.lowest_free(4096..=8191),
            };
            (id, Role::Exhibitor { emitter: None })
        } else if (4096..=8191).contains(&f.origin) {
            let free_exhibitor = matches!(
                self.clients.get(&f.origin).map(|c| &c.role),
                Some(Role::Exhibitor { emitter: None })
            );
            let exhibitor = match fault {
                Fault::RefusePairing => return refuse(acts),
                Fault::IgnorePairing => None,
                _ if free_exhibitor => Some(f.origin),
                Fault::PairUnknownAccepted if !self.clients.contains_key(&f.origin) => None,
                _ => return refuse(acts),
            };
            (self.lowest_free(emitter_ids), Role::Emitter { exhibitor })
        } else {
            (
                self.lowest_free(emitter_ids),
                Role::Emitter { exhibitor: None },
            )
        };
        let Some(id) = id else { return refuse(acts) };
        if let Role::Emitter { exhibitor: Some(x) } = role
            && let Some(Client {
                role: Role::Exhibitor { emitter },
                ..
            }) = self.clients.get_mut(&x)
        {
            *emitter = Some(id);
        }
        let seq = if fault == Fault::NoSeqEcho { 0 } else { f.seq };
        acts.push(Act::Send(
            out.clone(),
            encode(wire, [OK, SERVER, id, seq], None, &[]),
        ));
        // A paired emitter takes its exhibitor's name.
        let name = match &role {
            Role::Emitter { exhibitor: Some(x) } => self.clients[x].name.clone(),
            _ => self.claimed.get(&out.conn).cloned().unwrap_or_default(),
        };
        self.ids.insert(out.conn, id);
        out.identified.store(true, Ordering::SeqCst);
        self.clients.insert(
            id,
            Client {
                out: out.clone(),
                role,
                pending: VecDeque::new(),
                seq: 0,
                name,
                opted_in: out.opted_in.load(Ordering::SeqCst),
                told: HashMap::new(),
                online: self.onlines + 1,
            },
        );
        self.onlines += 1;
        // A member session came online: queue messages may wait for it.
        let queues: Vec<u16> = self.rooms.keys().copied().collect();
        for room in queues {
            self.dispatch(shared, room, acts);
        }
        self.deliver_letters(shared, id, acts);
    }

    /// What was told to the name of exhibitor `id`, now online: each as
    /// WAITING, WHO when needed, and the MSG, all acknowledged like a WHO.
    fn deliver_letters(&mut self, shared: &Shared, id: u16, acts: &mut Vec<Act>) {
        let wire = shared.wire();
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        if !client.opted_in || !matches!(client.role, Role::Exhibitor { .. }) {
            return;
        }
        let Some(letters) = self.letters.remove(&client.name.to_ascii_lowercase()) else {
            return;
        };
        for letter in letters {
            if shared.fault != Fault::TellNoWaiting {
                let seq = client.seq;
                client.seq = seq.wrapping_add(1);
                let time = letter.time_ms.to_be_bytes();
                let bytes = encode(wire, [WAITING, SERVER, id, seq], Some(8), &time);
                acts.push(Act::Send(client.out.clone(), bytes));
                client.pending.push_back(Pending::Who);
            }
            acts.extend(Self::who(
                shared.fault,
                wire,
                (id, client),
                letter.origin,
                &letter.sender,
            ));
            let seq = client.seq;
            client.seq = seq.wrapping_add(1);
            let count = letter.text.len() as u16;
            let fields = [MSG, letter.origin, id, seq];
            acts.push(Act::Send(
                client.out.clone(),
                encode(wire, fields, Some(count), &letter.text),
            ));
            client.pending.push_back(Pending::Who);
        }
    }

    /// TELL from opted-in emitter `me`: a MSG to the name's exhibitors when
    /// online, else kept for it when it is known (a room's member).
    fn tell(&mut self, shared: &Shared, out: &Arc<Out>, me: u16, f: &In, acts: &mut Vec<Act>) {
        let fault = shared.fault;
        let wire = shared.wire();
        let reply = |kind: u16| {
            Act::Send(
                out.clone(),
                encode(wire, [kind, SERVER, me, f.seq], None, &[]),
            )
        };
        let b = &f.body;
        let Some(nl) = b
            .first()
            .map(|&nl| nl as usize)
            .filter(|&nl| nl <= 64 && b.len() > nl)
        else {
            acts.push(reply(ERRO));
            acts.push(Act::Close(out.clone()));
            return self.remove(shared, out.conn, acts);
        };
        let name = String::from_utf8_lossy(&b[1..1 + nl]).into_owned();
        let text = b[1 + nl..].to_vec();
        let roomack = |code: u8, name: &str| {
            let mut body = vec![code, 0, 0, 0, 0, 0, name.len() as u8];
            body.extend_from_slice(name.as_bytes());
            let fields = [ROOMACK, SERVER, me, f.seq];
            Act::Send(
                out.clone(),
                encode(wire, fields, Some(body.len() as u16), &body),
            )
        };
        if !valid_name(&name) {
            return acts.push(roomack(1, ""));
        }
        let teller = self
            .clients
            .get(&me)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let targets: Vec<u16> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.role, Role::Exhibitor { .. }))
            .filter(|(_, c)| c.opted_in && c.name.eq_ignore_ascii_case(&name))
            .map(|(id, _)| *id)
            .collect();
        if !targets.is_empty() && fault != Fault::TellOnlineStored {
            let request = Arc::new(Mutex::new(Request {
                emitter: out.clone(),
                emitter_id: me,
                seq: f.seq,
                outstanding: targets.len(),
                any_ok: false,
                answered: false,
                first_settles: false,
            }));
            for target in targets {
                let client = self.clients.get_mut(&target).expect("a target");
                acts.extend(Self::who(fault, wire, (target, client), f.origin, &teller));
                let fields = [MSG, f.origin, target, f.seq];
                let bytes = encode(wire, fields, Some(text.len() as u16), &text);
                client.pending.push_back(Pending::Request(request.clone()));
                acts.push(Act::Send(client.out.clone(), bytes));
            }
            return;
        }
        let key = name.to_ascii_lowercase();
        let known = !targets.is_empty()
            || self.letters.contains_key(&key)
            || self.rooms.values().any(|r| r.has_member(&name));
        if !known && fault != Fault::TellUnknownStored {
            return acts.push(roomack(10, ""));
        }
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.letters.entry(key).or_default().push_back(Letter {
            origin: f.origin,
            sender: teller,
            text,
            time_ms,
        });
        if fault == Fault::TellStoredOk {
            return acts.push(reply(OK));
        }
        acts.push(roomack(9, &name));
    }

    /// A HELLO before OI: a name claimed (or none), without accounts.
    fn hello(&mut self, shared: &Shared, out: &Arc<Out>, f: &In, acts: &mut Vec<Act>) {
        let fault = shared.fault;
        let answer = |code: u8, name: &str| {
            let version = if fault == Fault::HelloAckVersion0 {
                0
            } else {
                1
            };
            let roles = if code == 0 { PLAIN_ROLES } else { 0 };
            let mut body = vec![code, version, roles, name.len() as u8];
            body.extend_from_slice(name.as_bytes());
            let fields = [HELLOACK, SERVER, 0, f.seq];
            Act::Send(
                out.clone(),
                encode(shared.wire(), fields, Some(body.len() as u16), &body),
            )
        };
        let close = |acts: &mut Vec<Act>, code: u8| {
            acts.push(answer(code, ""));
            acts.push(Act::Close(out.clone()));
        };
        // version, NL, name, SL (u16), secret.
        let b = &f.body;
        let Some(&nl) = b.get(1) else {
            return close(acts, 8);
        };
        let nl = nl as usize;
        let Some(sl) = b.get(2 + nl..4 + nl) else {
            return close(acts, 8);
        };
        let sl = u16::from_be_bytes([sl[0], sl[1]]) as usize;
        if nl > 64 || sl > 256 || b.len() != 4 + nl + sl {
            return close(acts, 8);
        }
        let greeted = self.claimed.contains_key(&out.conn);
        if greeted && fault != Fault::SecondHelloAccepted {
            return close(acts, 8);
        }
        if b[0] != 1 {
            return close(acts, 9);
        }
        if sl > 0 {
            return acts.push(answer(7, ""));
        }
        let name = String::from_utf8_lossy(&b[2..2 + nl]).into_owned();
        if !name.is_empty() && !valid_name(&name) && fault != Fault::BadNameAccepted {
            return acts.push(answer(4, ""));
        }
        let same = |held: &String| {
            if fault == Fault::NameTakenCaseSensitive {
                *held == name
            } else {
                held.eq_ignore_ascii_case(&name)
            }
        };
        let taken = self
            .claimed
            .iter()
            .any(|(conn, held)| *conn != out.conn && !name.is_empty() && same(held));
        if taken {
            return acts.push(answer(3, ""));
        }
        acts.push(answer(0, &name));
        self.claimed.insert(out.conn, name);
        out.opted_in.store(true, Ordering::SeqCst);
    }

    /// WHO(id) to `client` if it opted in (or, WhoToPlain, to anyone of a named id) and
    /// was not told that name for `id` yet.
    fn who(
        fault: Fault,
        wire: Wire,
        (to, client): (u16, &mut Client),
        id: u16,
        name: &str,
    ) -> Option<Act> {
        let to_plain = fault == Fault::WhoToPlain && !name.is_empty();
        if !(client.opted_in || to_plain) || client.told.get(&id).is_some_and(|told| told == name) {
            return None;
        }
        client.told.insert(id, name.to_string());
        let seq = client.seq;
        client.seq = client.seq.wrapping_add(1);
        let mut body = id.to_be_bytes().to_vec();
        body.extend_from_slice(&[PLAIN_ROLES, name.len() as u8]);
        body.extend_from_slice(name.as_bytes());
        client.pending.push_back(Pending::Who);
        let bytes = encode(wire, [WHO, SERVER, to, seq], Some(body.len() as u16), &body);
        Some(Act::Send(client.out.clone(), bytes))
    }

    /// The exhibitors a MSG or CREQ (`kind`) to `dest` goes to.
    fn targets(&self, fault: Fault, kind: u16, dest: u16) -> Vec<u16> {
        let exhibitors = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.role, Role::Exhibitor { .. }))
            .map(|(id, _)| *id);
        match dest {
            0 if fault == Fault::BroadcastFirstOnly => exhibitors.take(1).collect(),
            0 => exhibitors.collect(),
            _ => match self.clients.get(&dest).map(|c| &c.role) {
                Some(Role::Exhibitor { .. }) if fault == Fault::UnicastToLowest && kind == MSG => {
                    exhibitors.take(1).collect()
                }
                Some(Role::Exhibitor { .. }) => vec![dest],
                Some(Role::Emitter { exhibitor }) => exhibitor.iter().copied().collect(),
                None => Vec::new(),
            },
        }
    }

    fn route(&mut self, shared: &Shared, out: &Arc<Out>, me: u16, f: &In, acts: &mut Vec<Act>) {
        let fault = shared.fault;
        let wire = shared.wire();
        let room_id = self.rooms.contains_key(&f.dest) || ROOM_IDS.contains(&f.dest);
        if fault.speaks_rooms() && f.kind == MSG && room_id {
            return self.route_room(shared, out, me, f, acts);
        }
        let reply_seq = if fault == Fault::NoSeqEcho { 0 } else { f.seq };
        let targets = self.targets(fault, f.kind, f.dest);
        if targets.is_empty() {
            let kind = if fault == Fault::OkUnknownDest {
                OK
            } else {
                ERRO
            };
            let bytes = encode(wire, [kind, SERVER, me, reply_seq], None, &[]);
            return acts.push(Act::Send(out.clone(), bytes));
        }
        let request = Arc::new(Mutex::new(Request {
            emitter: out.clone(),
            emitter_id: me,
            seq: f.seq,
            outstanding: targets.len(),
            any_ok: false,
            answered: fault == Fault::EarlyOk,
            first_settles: false,
        }));
        if fault == Fault::EarlyOk {
            let bytes = encode(wire, [OK, SERVER, me, reply_seq], None, &[]);
            acts.push(Act::Send(out.clone(), bytes));
        }
        let mut ids: Vec<u16> = self.clients.keys().copied().collect();
        if fault == Fault::ClistDescending {
            ids.reverse();
        }
        if fault == Fault::ClistDuplicates {
            ids = ids.iter().flat_map(|&id| [id, id]).collect();
        }
        let ids_bytes: Vec<u8> = ids
            .iter()
            .flat_map(|id| {
                if wire.le {
                    id.to_le_bytes()
                } else {
                    id.to_be_bytes()
                }
            })
            .collect();
        let names: HashMap<u16, String> = self
            .clients
            .iter()
            .map(|(id, c)| (*id, c.name.clone()))
            .collect();
        let told_of: Vec<u16> = if f.kind == MSG {
            vec![f.origin]
        } else {
            ids.clone()
        };
        for target in targets {
            let Some(client) = self.clients.get_mut(&target) else {
                continue;
            };
            // WHO for each id the frame carries that this exhibitor was
            // not told, numbered before the frame (WhoAfterMsg: after).
            if fault != Fault::WhoAfterMsg {
                for id in &told_of {
                    let name = names.get(id).map_or("", String::as_str);
                    acts.extend(Self::who(fault, wire, (target, client), *id, name));
                }
            }
            let bytes = if f.kind == MSG {
                let origin = if fault == Fault::ForwardFromServer {
                    SERVER
                } else {
                    f.origin
                };
                let count = f.body.len() as u16;
                encode(wire, [MSG, origin, f.dest, f.seq], Some(count), &f.body)
            } else {
                let origin = if fault == Fault::ClistOriginEmitter {
                    me
                } else {
                    SERVER
                };
                let extra = u16::from(fault == Fault::WrongClistCount);
                let count = ids.len() as u16 + extra;
                let seq = client.seq;
                client.seq = client.seq.wrapping_add(1);
                encode(wire, [CLIST, origin, f.dest, seq], Some(count), &ids_bytes)
            };
            client.pending.push_back(Pending::Request(request.clone()));
            if fault == Fault::BlockOnAck {
                self.to_await.push((client.out.conn, request.clone()));
            }
            acts.push(Act::Send(client.out.clone(), bytes));
            if fault == Fault::WhoAfterMsg {
                for id in &told_of {
                    let name = names.get(id).map_or("", String::as_str);
                    acts.extend(Self::who(fault, wire, (target, client), *id, name));
                }
            }
        }
    }

    /// The sessions a room's messages go to: opted-in exhibitors whose name
    /// is a member, in the order they came online.
    fn member_sessions(&self, room: u16) -> Vec<(u64, u16)> {
        let Some(room) = self.rooms.get(&room) else {
            return Vec::new();
        };
        let mut sessions: Vec<(u64, u16)> = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.role, Role::Exhibitor { .. }))
            .filter(|(_, c)| c.opted_in && room.has_member(&c.name))
            .map(|(id, c)| (c.online, *id))
            .collect();
        sessions.sort_unstable();
        sessions
    }

    /// The exhibitors an ordinary room's MSG goes to.
    fn room_targets(&self, fault: Fault, room: u16) -> Vec<u16> {
        let mut targets: Vec<u16> = self
            .member_sessions(room)
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        let exhibitors = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.role, Role::Exhibitor { .. }));
        match fault {
            Fault::RoomMsgFirstMemberOnly => targets.truncate(1),
            Fault::RoomMsgToNamed => {
                targets = exhibitors
                    .filter(|(_, c)| c.opted_in && !c.name.is_empty())
                    .map(|(id, _)| *id)
                    .collect()
            }
            Fault::RoomToPlain => {
                targets.extend(exhibitors.filter(|(_, c)| !c.opted_in).map(|(id, _)| *id))
            }
            _ => {}
        }
        targets
    }

    /// A MSG to a room id: to every member session, or (a queue room) to
    /// one in turn once one is free.
    fn route_room(
        &mut self,
        shared: &Shared,
        out: &Arc<Out>,
        me: u16,
        f: &In,
        acts: &mut Vec<Act>,
    ) {
        let fault = shared.fault;
        let wire = shared.wire();
        let reply = |kind: u16| {
            Act::Send(
                out.clone(),
                encode(wire, [kind, SERVER, me, f.seq], None, &[]),
            )
        };
        let sender = self
            .clients
            .get(&me)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let Some(room) = self.rooms.get_mut(&f.dest) else {
            let kind = if fault == Fault::RoomMissingOk {
                OK
            } else {
                ERRO
            };
            return acts.push(reply(kind));
        };
        let request = Arc::new(Mutex::new(Request {
            emitter: out.clone(),
            emitter_id: me,
            seq: f.seq,
            outstanding: 1,
            any_ok: false,
            answered: false,
            first_settles: fault == Fault::RoomEarlyOk,
        }));
        let count = f.body.len() as u16;
        let bytes = encode(wire, [MSG, f.origin, f.dest, f.seq], Some(count), &f.body);
        if room.queue && fault != Fault::QueueToAll {
            let queued = Queued {
                request,
                bytes,
                origin: f.origin,
                since: Instant::now(),
            };
            let room = f.dest;
            if fault == Fault::QueueNoWait && self.member_sessions(room).is_empty() {
                return acts.push(reply(ERRO));
            }
            self.rooms
                .get_mut(&room)
                .expect("the room")
                .waiting
                .push_back(queued);
            return self.dispatch(shared, room, acts);
        }
        if fault == Fault::RoomNonMemberRefused && !room.has_member(&sender) {
            return acts.push(reply(ERRO));
        }
        let targets = self.room_targets(fault, f.dest);
        if targets.is_empty() {
            return acts.push(reply(ERRO));
        }
        lock(&request).outstanding = targets.len();
        for target in targets {
            let Some(client) = self.clients.get_mut(&target) else {
                continue;
            };
            acts.extend(Self::who(fault, wire, (target, client), f.origin, &sender));
            client.pending.push_back(Pending::Request(request.clone()));
            acts.push(Act::Send(client.out.clone(), bytes.clone()));
        }
    }

    /// Hands a queue room's waiting messages to free member sessions, in
    /// turn after the one served last.
    fn dispatch(&mut self, shared: &Shared, room_id: u16, acts: &mut Vec<Act>) {
        let fault = shared.fault;
        loop {
            let Some(room) = self.rooms.get(&room_id) else {
                return;
            };
            if !room.queue || room.waiting.is_empty() {
                return;
            }
            let has_room = |id: &u16| {
                let client = &self.clients[id];
                let held = client
                    .pending
                    .iter()
                    .filter(|p| matches!(p, Pending::Queued(r, _) if *r == room_id))
                    .count();
                let asked = room.prefetch.get(&client.name.to_ascii_lowercase());
                let prefetch = match fault {
                    Fault::QueuePrefetchIgnored => 1,
                    _ => asked.copied().unwrap_or(1),
                };
                held < usize::from(prefetch)
            };
            let free: Vec<(u64, u16)> = self
                .member_sessions(room_id)
                .into_iter()
                .filter(|(_, id)| fault == Fault::QueueNoPrefetch || has_room(id))
                .collect();
            let next = free
                .iter()
                .find(|(online, _)| *online > room.last_served)
                .or(free.first());
            let Some(&(online, target)) = next else {
                return;
            };
            let room = self.rooms.get_mut(&room_id).expect("the room");
            room.last_served = online;
            let queued = room.waiting.pop_front().expect("a waiting message");
            let name = self
                .clients
                .get(&queued.origin)
                .map(|c| c.name.clone())
                .unwrap_or_default();
            let client = self.clients.get_mut(&target).expect("a member session");
            acts.extend(Self::who(
                fault,
                shared.wire(),
                (target, client),
                queued.origin,
                &name,
            ));
            acts.push(Act::Send(client.out.clone(), queued.bytes.clone()));
            client.pending.push_back(Pending::Queued(room_id, queued));
        }
    }

    /// JOIN, LEAVE or ROOMS from opted-in emitter `me`.
    fn room_request(
        &mut self,
        shared: &Shared,
        out: &Arc<Out>,
        me: u16,
        f: &In,
        acts: &mut Vec<Act>,
    ) {
        let fault = shared.fault;
        let wire = shared.wire();
        let roomack = |code: u8, room: Option<(u16, &Room)>| {
            let mut body = vec![code];
            match room {
                Some((id, room)) => {
                    body.push(u8::from(room.queue));
                    body.extend_from_slice(&id.to_be_bytes());
                    body.extend_from_slice(&(room.members.len() as u16).to_be_bytes());
                    body.push(room.name.len() as u8);
                    body.extend_from_slice(room.name.as_bytes());
                }
                None => body.extend_from_slice(&[0; 6]),
            }
            let fields = [ROOMACK, SERVER, me, f.seq];
            Act::Send(
                out.clone(),
                encode(wire, fields, Some(body.len() as u16), &body),
            )
        };
        let b = &f.body;
        // JOIN: flags, NL, name; LEAVE: NL, name; ROOMS: nothing.
        let name_at = match f.kind {
            JOIN => 1,
            LEAVE => 0,
            _ => usize::MAX,
        };
        let parsed = match f.kind {
            ROOMS => b.is_empty().then(String::new),
            _ => b.get(name_at).and_then(|&nl| {
                let nl = nl as usize;
                // Flag 2 (a queue's only): a prefetch byte, 1..=255, follows.
                let prefetched = f.kind == JOIN && b[0] == 3;
                let flags_ok = f.kind == LEAVE || b[0] <= 1 || prefetched;
                let tail = usize::from(prefetched);
                let end = name_at + 1 + nl;
                (nl <= 64 && b.len() == end + tail && flags_ok && (!prefetched || b[end] > 0))
                    .then(|| String::from_utf8_lossy(&b[name_at + 1..end]).into_owned())
            }),
        };
        let Some(name) = parsed else {
            acts.push(Act::Send(
                out.clone(),
                encode(wire, [ERRO, SERVER, me, f.seq], None, &[]),
            ));
            acts.push(Act::Close(out.clone()));
            return self.remove(shared, out.conn, acts);
        };
        let member = self
            .clients
            .get(&me)
            .map(|c| c.name.clone())
            .unwrap_or_default();
        let found = self
            .rooms
            .iter()
            .find(|(_, r)| r.name.eq_ignore_ascii_case(&name))
            .map(|(id, _)| *id);
        match f.kind {
            ROOMS => {
                let mut body = (self.rooms.len() as u16).to_be_bytes().to_vec();
                for (id, room) in &self.rooms {
                    let members = if fault == Fault::RoomListNoMembers {
                        0
                    } else {
                        room.members.len() as u16
                    };
                    body.extend_from_slice(&id.to_be_bytes());
                    body.push(u8::from(room.queue));
                    body.extend_from_slice(&members.to_be_bytes());
                    body.push(room.name.len() as u8);
                    body.extend_from_slice(room.name.as_bytes());
                }
                let fields = [ROOMLIST, SERVER, me, f.seq];
                acts.push(Act::Send(
                    out.clone(),
                    encode(wire, fields, Some(body.len() as u16), &body),
                ));
            }
            JOIN if !valid_name(&name) && fault != Fault::RoomBadNameAccepted => {
                acts.push(roomack(1, None))
            }
            JOIN if member.is_empty() => acts.push(roomack(5, None)),
            JOIN => {
                let queue = b[0] & 1 == 1;
                let prefetch = (b[0] == 3).then(|| b[b.len() - 1]);
                let id = match found {
                    Some(id) => id,
                    None => {
                        let ids = if fault == Fault::RoomIdsLow {
                            0x100..=0x3fff
                        } else {
                            ROOM_IDS
                        };
                        let Some(id) = ids.into_iter().find(|id| !self.rooms.contains_key(id))
                        else {
                            return acts.push(roomack(7, None));
                        };
                        let room = Room {
                            name,
                            queue,
                            members: Vec::new(),
                            prefetch: HashMap::new(),
                            waiting: VecDeque::new(),
                            last_served: 0,
                        };
                        self.rooms.insert(id, room);
                        id
                    }
                };
                let room = self.rooms.get_mut(&id).expect("the room");
                if room.queue != queue {
                    return acts.push(roomack(8, None));
                }
                // A JOIN again sets the prefetch afresh (none: back to 1).
                let key = member.to_ascii_lowercase();
                match prefetch {
                    Some(prefetch) => room.prefetch.insert(key, prefetch),
                    None => room.prefetch.remove(&key),
                };
                if !room.has_member(&member) {
                    room.members.push(member);
                }
                acts.push(roomack(0, Some((id, room))));
                // A new member's sessions may take waiting messages.
                self.dispatch(shared, id, acts);
            }
            _ => {
                let left = found.filter(|id| self.rooms[id].has_member(&member));
                let Some(id) = left else {
                    let code = if fault == Fault::LeaveNotMemberOk {
                        0
                    } else {
                        4
                    };
                    return acts.push(roomack(code, None));
                };
                let room = self.rooms.get_mut(&id).expect("the room");
                room.members.retain(|m| !m.eq_ignore_ascii_case(&member));
                room.prefetch.remove(&member.to_ascii_lowercase());
                acts.push(roomack(0, Some((id, room))));
                if room.members.is_empty() {
                    let room = self.rooms.remove(&id).expect("the room");
                    for queued in room.waiting {
                        answer(shared, &queued.request, false, acts);
                    }
                }
            }
        }
    }

    /// Exhibitor `id` acknowledged (OK or ERRO) its oldest pending frame.
    fn settle(&mut self, shared: &Shared, id: u16, ok: bool, acts: &mut Vec<Act>) {
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        match client.pending.pop_front() {
            Some(Pending::Request(request)) => answer(shared, &request, ok, acts),
            Some(Pending::Queued(room, queued)) => {
                answer(shared, &queued.request, ok, acts);
                self.dispatch(shared, room, acts);
            }
            Some(Pending::Farewell) => {
                acts.push(Act::Close(client.out.clone()));
                let conn = client.out.conn;
                self.remove(shared, conn, acts);
            }
            Some(Pending::Who) | None => {}
        }
    }

    /// Forgets connection `conn`: its deliveries fail, its exhibitor (if it
    /// was a paired emitter) gets FLW.
    fn remove(&mut self, shared: &Shared, conn: u64, acts: &mut Vec<Act>) {
        // Its name is free again, whether or not it sent OI.
        self.claimed.remove(&conn);
        let Some(id) = self.ids.remove(&conn) else {
            return;
        };
        let Some(client) = self.clients.remove(&id) else {
            return;
        };
        let mut passed_back: Vec<(u16, Queued)> = Vec::new();
        for pending in client.pending {
            match pending {
                Pending::Request(request) => answer(shared, &request, false, acts),
                Pending::Queued(_, queued) if shared.fault == Fault::QueueLostOnLeave => {
                    answer(shared, &queued.request, false, acts)
                }
                Pending::Queued(room, queued) => passed_back.push((room, queued)),
                Pending::Farewell | Pending::Who => {}
            }
        }
        // Back to the front of their queues, in the order they were held.
        for (room, queued) in passed_back.into_iter().rev() {
            match self.rooms.get_mut(&room) {
                Some(held_by) => {
                    held_by.waiting.push_front(queued);
                    self.dispatch(shared, room, acts);
                }
                None => answer(shared, &queued.request, false, acts),
            }
        }
        match client.role {
            Role::Emitter { exhibitor: Some(x) } => {
                if let Some(exhibitor) = self.clients.get_mut(&x) {
                    exhibitor.role = Role::Exhibitor { emitter: None };
                    let seq = exhibitor.seq;
                    exhibitor.seq = seq.wrapping_add(1);
                    let origin = if shared.fault == Fault::FlwFromEmitter {
                        id
                    } else {
                        SERVER
                    };
                    let bytes = encode(shared.wire(), [FLW, origin, x, seq], None, &[]);
                    acts.push(Act::Send(exhibitor.out.clone(), bytes));
                    exhibitor.pending.push_back(Pending::Farewell);
                }
            }
            Role::Exhibitor { emitter: Some(e) } => {
                if let Some(Client {
                    role: Role::Emitter { exhibitor },
                    ..
                }) = self.clients.get_mut(&e)
                {
                    *exhibitor = None;
                }
            }
            _ => {}
        }
    }
}

/// One target of `request` settled; the emitter is answered after the last.
fn answer(shared: &Shared, request: &Mutex<Request>, ok: bool, acts: &mut Vec<Act>) {
    let mut request = lock(request);
    request.outstanding = request.outstanding.saturating_sub(1);
    request.any_ok |= ok;
    let settled = request.outstanding == 0 || request.first_settles;
    if !settled || request.answered {
        return;
    }
    request.answered = true;
    if shared.fault == Fault::NoReplyToEmitter {
        return;
    }
    let kind = if request.any_ok { OK } else { ERRO };
    let seq = if shared.fault == Fault::NoSeqEcho {
        0
    } else {
        request.seq
    };
    let bytes = encode(
        shared.wire(),
        [kind, SERVER, request.emitter_id, seq],
        None,
        &[],
    );
    acts.push(Act::Send(request.emitter.clone(), bytes));
}
