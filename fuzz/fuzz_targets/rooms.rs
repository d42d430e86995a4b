//! Fuzz target for the router's rooms and work queues (PROTOCOL.md,
//! "Extension: rooms and queues"), with no sockets.
//!
//! The input is a set of limits (the ack timeout, `--max-inflight`, every
//! room limit, `--queue-wait`, kept room messages, accounts or not) and a
//! sequence of events on up to eight fake connections: a session opening
//! (a HELLO accepted with one of a few names, some differing only in case,
//! or none, or no HELLO at all; then OI as an exhibitor or as an emitter,
//! paired or not), JOIN (ordinary or queue, a queue's with or without a
//! prefetch of 1 to 4, of a few room names, one breaking the name rule), LEAVE, ROOMS, a MSG to a room, to a room id no room
//! holds, to everyone or to an exhibitor, an exhibitor acknowledging the
//! oldest frame it holds (OK or ERRO), FLW, a disconnect, and time passing
//! with or without a tick. A frame is fed to an emitter only while it
//! accepts input, as the event loop does.
//!
//! After every event `Router::check_invariants` holds, and what the router
//! sent is checked against a model of the rooms kept here from its answers:
//!
//! * every request of an emitter (MSG, FLW, JOIN, LEAVE, ROOMS) gets exactly
//!   one reply, in request order, with its seq and of its kind (OK or ERRO;
//!   ROOMACK; ROOMLIST); nothing answers a request that was not made; once
//!   every exhibitor acknowledged everything and the ack timeout and the
//!   queue wait have passed, no live emitter waits for a reply;
//! * each ROOMACK has the code, room id and member count (names, not
//!   sessions) that the model predicts from PROTOCOL.md's codes and limits
//!   when the JOIN or LEAVE is made (its effect is immediate, its answer
//!   may wait behind the emitter's earlier replies), and ROOMLIST lists
//!   exactly the model's rooms with their counts as they were when asked;
//! * a MSG with a room's id goes only to an opted-in exhibitor whose name is
//!   a member; nothing of the extension goes to a client that did not opt
//!   in;
//! * a queue message is held by at most one member session at a time (held
//!   from its delivery until that session acknowledges it, closes, or its
//!   name leaves the room), and a session is given a message of a queue
//!   room only while it holds fewer than its name's prefetch there (the
//!   last JOIN's, 1 without one);
//! * memory stays bounded by the limits: rooms ≤ `max_rooms`, members ≤
//!   `room_members`, and a queue room's waiting plus held messages ≤
//!   `queue_depth` + the connections × the largest prefetch (what they may
//!   pass back).
#![no_main]

use arbitrary::Arbitrary;
use evchat::proto::ext::{ExtFrame, PLAIN_ROLES, ROLE_BROADCAST, ROLE_VIEW};
use evchat::proto::{ClientId, Frame, Header, Kind, SERVER_ID};
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, ROOM_IDS, RoomLimits, Router};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Fake connections the harness drives.
const CONNS: usize = 8;
/// Session names; two differ only in case (one name ignoring case).
const NAMES: [&str; 4] = ["ann", "bob", "cy", "ANN"];
/// Room names; the last breaks the name rule (the caller passes None).
const ROOM_NAMES: [&str; 5] = ["ops", "OPS", "jobs", "q", "1bad"];
/// The largest prefetch a JOIN asks for here (small, so it is reached).
const MAX_PREFETCH: u8 = 4;

// ---- the input ------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct Input {
    /// Ack timeout in tenths of a second (1 + this mod 40).
    ack_timeout: u8,
    /// `max_inflight` is 1 + this mod 4, so pausing happens often.
    max_inflight: u8,
    /// Each room limit is 1 + its value mod 4: every limit is reached.
    max_rooms: u8,
    rooms_per_name: u8,
    room_members: u8,
    queue_depth: u8,
    /// `--queue-wait` in tenths of a second (1 + this mod 40).
    queue_wait: u8,
    /// Room messages kept for members away (this mod 4; 0: none).
    keep: u8,
    /// Accounts: names are shared by sessions and roles vary; otherwise a
    /// name is claimed by one session and every session has the plain roles.
    accounts: bool,
    events: Vec<Event>,
}

#[derive(Arbitrary, Debug, Clone)]
enum Event {
    /// Connect, HELLO (if `opt_in`; `name` mod 5, 4 for none), then OI.
    Open {
        conn: u8,
        opt_in: bool,
        name: u8,
        roles: u8,
        exhibitor: bool,
        /// The exhibitor to pair with (a connection), if it is one.
        pair: u8,
    },
    Join {
        conn: u8,
        room: u8,
        queue: bool,
        /// A queue JOIN's prefetch: 0 none (1), else 1 + this mod 4.
        prefetch: u8,
    },
    Leave {
        conn: u8,
        room: u8,
    },
    Rooms(u8),
    Msg {
        conn: u8,
        dest: DestSel,
        len: u8,
    },
    /// The exhibitor's oldest unacknowledged frame, acknowledged.
    Ack {
        conn: u8,
        ok: bool,
    },
    Flw(u8),
    Disconnect(u8),
    /// Time passes (milliseconds, mod 5000), then `tick`.
    Tick(u16),
    /// Time passes with no tick.
    Sleep(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum DestSel {
    /// One of the rooms the model knows.
    Room(u8),
    /// Any id in the rooms' range.
    RoomRange(u16),
    Broadcast,
    /// The exhibitor id a connection holds.
    Exhibitor(u8),
}

// ---- the recording outbox -------------------------------------------------

#[derive(Debug)]
enum Call {
    Send(ConnId, Frame),
    Ext(ConnId, ExtFrame),
    Close(ConnId),
}

#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        assert!(to < CONNS, "send to unknown conn {to}");
        self.calls.push(Call::Send(to, frame.clone()));
    }
    fn send_ext(&mut self, to: ConnId, frame: &ExtFrame) {
        assert!(to < CONNS, "extension frame to unknown conn {to}");
        self.calls.push(Call::Ext(to, frame.clone()));
    }
    fn close(&mut self, conn: ConnId, _id: ClientId, _reason: CloseReason) {
        assert!(conn < CONNS, "close of unknown conn {conn}");
        self.calls.push(Call::Close(conn));
    }
    fn resume_input(&mut self, _conn: ConnId) {}
}

// ---- the model --------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Anonymous,
    Emitter,
    Exhibitor,
}

/// What an emitter asked, awaiting its one reply.
#[derive(Debug, Clone)]
enum Request {
    Msg,
    Flw,
    /// JOIN or LEAVE, and the answer the model predicts: code, room id,
    /// member count (id and count 0 unless the code is 0).
    Join(u8, ClientId, u16),
    Leave(u8, ClientId, u16),
    /// ROOMS, and the rooms (id, member count) when it was asked.
    Rooms(Vec<(ClientId, u16)>),
}

/// A frame an exhibitor holds until it acknowledges it.
#[derive(Debug, Clone)]
struct Unacked {
    origin: ClientId,
    seq: u16,
    /// A queue message: its room and text.
    queued: Option<(ClientId, Vec<u8>)>,
}

#[derive(Debug)]
struct Conn {
    live: bool,
    role: Role,
    id: ClientId,
    opted_in: bool,
    /// The roles its HELLO was accepted with.
    roles: u8,
    /// The name it shows (lower case), taken from the router at its OI: a
    /// session's name never changes, and the router forgets it before the
    /// batch that closes it is checked.
    name: Option<String>,
    /// Sent FLW: it asks nothing more.
    finished: bool,
    seq: u16,
    requests: VecDeque<(u16, Request)>,
    unacked: VecDeque<Unacked>,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            live: false,
            role: Role::Anonymous,
            id: 0,
            opted_in: false,
            roles: 0,
            name: None,
            finished: false,
            seq: 0,
            requests: VecDeque::new(),
            unacked: VecDeque::new(),
        }
    }

    fn next_seq(&mut self) -> u16 {
        let seq = self.seq;
        self.seq = seq.wrapping_add(1);
        seq
    }
}

#[derive(Debug)]
struct ModelRoom {
    /// Its name, lower case.
    key: String,
    queue: bool,
    members: BTreeSet<String>,
    /// Each member name's prefetch (queue rooms; absent: 1).
    prefetch: HashMap<String, u8>,
}

struct Harness {
    router: Router,
    out: Recorder,
    now: Instant,
    conns: Vec<Conn>,
    rooms: BTreeMap<ClientId, ModelRoom>,
    /// Which session holds each queue message (by text), and what each
    /// session holds, by room, in the order it was given them.
    holder: HashMap<Vec<u8>, ConnId>,
    holding: HashMap<(ConnId, ClientId), Vec<Vec<u8>>>,
    /// The connections the batch being checked closes.
    closing: BTreeSet<ConnId>,
    limits: RoomLimits,
    accounts: bool,
    /// Makes each MSG's text unique.
    next_text: u64,
}

impl Harness {
    fn new(input: &Input) -> Harness {
        let limits = RoomLimits {
            max_rooms: 1 + usize::from(input.max_rooms % 4),
            rooms_per_name: 1 + usize::from(input.rooms_per_name % 4),
            room_members: 1 + usize::from(input.room_members % 4),
            queue_depth: 1 + usize::from(input.queue_depth % 4),
            queue_wait: Duration::from_millis(100 * (1 + u64::from(input.queue_wait % 40))),
        };
        let mut router = Router::new(Limits {
            ack_timeout: Duration::from_millis(100 * (1 + u64::from(input.ack_timeout % 40))),
            max_inflight: 1 + usize::from(input.max_inflight % 4),
            ..Limits::default()
        });
        router.set_room_limits(limits);
        let keep = usize::from(input.keep % 4);
        if keep > 0 {
            router.keep_room_messages(keep, 1 << 16);
        }
        router.require_accounts(input.accounts);
        Harness {
            router,
            out: Recorder::default(),
            now: Instant::now(),
            conns: (0..CONNS).map(|_| Conn::new()).collect(),
            rooms: BTreeMap::new(),
            holder: HashMap::new(),
            holding: HashMap::new(),
            closing: BTreeSet::new(),
            limits,
            accounts: input.accounts,
            next_text: 0,
        }
    }

    /// A live emitter that may send now (the loop reads it).
    fn sender(&self, conn: u8) -> Option<ConnId> {
        let c = usize::from(conn) % CONNS;
        let ok = self.conns[c].live
            && self.conns[c].role == Role::Emitter
            && !self.conns[c].finished
            && self.router.accepts_input(c);
        ok.then_some(c)
    }

    fn request_header(&mut self, c: ConnId, kind: u16, request: Request) -> Header {
        let conn = &mut self.conns[c];
        let seq = conn.next_seq();
        conn.requests.push_back((seq, request));
        Header {
            kind,
            origin: conn.id,
            dest: SERVER_ID,
            seq,
        }
    }

    fn apply(&mut self, event: &Event) {
        match *event {
            Event::Open {
                conn,
                opt_in,
                name,
                roles,
                exhibitor,
                pair,
            } => self.open(conn, opt_in, name, roles, exhibitor, pair),
            Event::Join {
                conn,
                room,
                queue,
                prefetch,
            } => {
                let Some(c) = self.opted_in_sender(conn) else {
                    return;
                };
                let name = ROOM_NAMES[usize::from(room) % ROOM_NAMES.len()];
                let room = (name != "1bad").then_some(name);
                // The codec lets a prefetch through on a queue JOIN only.
                let prefetch = match prefetch {
                    0 => 1,
                    p if queue => 1 + p % MAX_PREFETCH,
                    _ => 1,
                };
                let (code, id, members) = self.predict_join(c, queue, prefetch, room);
                let header = self.request_header(c, 12, Request::Join(code, id, members));
                self.router
                    .join(c, header, queue, prefetch, room, self.now, &mut self.out);
            }
            Event::Leave { conn, room } => {
                let Some(c) = self.opted_in_sender(conn) else {
                    return;
                };
                let name = ROOM_NAMES[usize::from(room) % ROOM_NAMES.len()];
                let room = (name != "1bad").then_some(name);
                let (code, id, members) = self.predict_leave(c, room);
                let header = self.request_header(c, 13, Request::Leave(code, id, members));
                self.router.leave(c, header, room, self.now, &mut self.out);
            }
            Event::Rooms(conn) => {
                let Some(c) = self.opted_in_sender(conn) else {
                    return;
                };
                let listed = self
                    .rooms
                    .iter()
                    .map(|(id, r)| (*id, r.members.len() as u16))
                    .collect();
                let header = self.request_header(c, 14, Request::Rooms(listed));
                self.router.list_rooms(c, header, self.now, &mut self.out);
            }
            Event::Msg { conn, dest, len } => {
                let Some(c) = self.sender(conn) else { return };
                let dest = match dest {
                    DestSel::Room(n) if !self.rooms.is_empty() => {
                        let at = usize::from(n) % self.rooms.len();
                        *self.rooms.keys().nth(at).expect("in range")
                    }
                    DestSel::Room(_) | DestSel::Broadcast => 0,
                    DestSel::RoomRange(id) => ROOM_IDS.start() | (id & 0x3fff),
                    DestSel::Exhibitor(n) => self.conns[usize::from(n) % CONNS].id,
                };
                self.next_text += 1;
                let mut text = format!("t{}", self.next_text).into_bytes();
                text.resize(text.len().max(usize::from(len % 40)), b'.');
                let header = self.request_header(c, 5, Request::Msg);
                let frame = Frame::msg(header.origin, dest, header.seq, bytes::Bytes::from(text))
                    .expect("a short text");
                self.router.on_frame(c, frame, self.now, &mut self.out);
            }
            Event::Ack { conn, ok } => {
                let c = usize::from(conn) % CONNS;
                self.ack(c, ok);
            }
            Event::Flw(conn) => {
                let Some(c) = self.sender(conn) else { return };
                self.conns[c].finished = true;
                let header = self.request_header(c, 4, Request::Flw);
                let frame = Frame::bare(Kind::Flw, header.origin, SERVER_ID, header.seq);
                self.router.on_frame(c, frame, self.now, &mut self.out);
            }
            Event::Disconnect(conn) => {
                let c = usize::from(conn) % CONNS;
                if self.conns[c].live {
                    self.gone(c);
                    self.router.disconnected(c, self.now, &mut self.out);
                }
            }
            Event::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(ms % 5000));
                self.router.tick(self.now, &mut self.out);
            }
            Event::Sleep(ms) => self.now += Duration::from_millis(u64::from(ms % 5000)),
        }
        self.absorb();
    }

    fn opted_in_sender(&self, conn: u8) -> Option<ConnId> {
        self.sender(conn).filter(|&c| self.conns[c].opted_in)
    }

    fn open(&mut self, conn: u8, opt_in: bool, name: u8, roles: u8, exhibitor: bool, pair: u8) {
        let c = usize::from(conn) % CONNS;
        if self.conns[c].live {
            return;
        }
        self.conns[c] = Conn::new();
        self.conns[c].live = true;
        self.router.connected(c, self.now);
        if opt_in {
            let name = NAMES.get(usize::from(name) % 5).copied();
            let roles = if self.accounts {
                roles & 7
            } else {
                PLAIN_ROLES
            };
            let claim = !self.accounts;
            // Code 3 (the name is taken) keeps the connection, which then
            // speaks the plain protocol.
            self.conns[c].opted_in = self
                .router
                .hello_accepted(c, name, roles, claim, &mut self.out)
                .is_ok();
            self.conns[c].roles = roles;
        }
        let origin = if exhibitor {
            0
        } else {
            let p = usize::from(pair) % CONNS;
            let paired = self.conns[p].live && self.conns[p].role == Role::Exhibitor;
            if paired { self.conns[p].id } else { 1 }
        };
        let seq = self.conns[c].next_seq();
        let oi = Frame::bare(Kind::Oi, origin, SERVER_ID, seq);
        self.router.on_frame(c, oi, self.now, &mut self.out);
        // The OI's answer, taken before anything else is checked.
        let at = self.out.calls.iter().position(|call| {
            matches!(call, Call::Send(to, f) if *to == c && matches!(f.kind, Kind::Ok | Kind::Erro))
        });
        if let Some(at) = at
            && let Call::Send(_, ok) = self.out.calls.remove(at)
            && ok.kind == Kind::Ok
        {
            self.conns[c].id = ok.dest;
            self.conns[c].name = self.router.name(c).map(str::to_ascii_lowercase);
            self.conns[c].role = if exhibitor {
                Role::Exhibitor
            } else {
                Role::Emitter
            };
        }
    }

    /// Acknowledges `c`'s oldest unacknowledged frame, if it has one.
    fn ack(&mut self, c: ConnId, ok: bool) {
        let conn = &mut self.conns[c];
        if !conn.live || conn.role != Role::Exhibitor {
            return;
        }
        let Some(held) = conn.unacked.pop_front() else {
            return;
        };
        if let Some((room, text)) = &held.queued
            && self.holder.get(text) == Some(&c)
        {
            self.holder.remove(text);
            self.unhold(c, *room, text);
        }
        let kind = if ok { Kind::Ok } else { Kind::Erro };
        let frame = Frame::bare(kind, self.conns[c].id, held.origin, held.seq);
        self.router.on_frame(c, frame, self.now, &mut self.out);
    }

    /// `c` is gone (closed by the router, or disconnected): it holds nothing.
    fn gone(&mut self, c: ConnId) {
        self.conns[c].live = false;
        self.conns[c].requests.clear();
        self.conns[c].unacked.clear();
        self.holding.retain(|(conn, _), texts| {
            if *conn == c {
                for text in texts.iter() {
                    self.holder.remove(text);
                }
            }
            *conn != c
        });
    }

    /// `c` no longer holds `text` of `room`.
    fn unhold(&mut self, c: ConnId, room: ClientId, text: &[u8]) {
        if let Some(texts) = self.holding.get_mut(&(c, room)) {
            texts.retain(|t| t != text);
            if texts.is_empty() {
                self.holding.remove(&(c, room));
            }
        }
    }

    /// Checks what the router sent and files it.
    fn absorb(&mut self) {
        let calls = std::mem::take(&mut self.out.calls);
        // The router forgets a connection (passing on what it held) before
        // it asks for the close: those it closes in this batch hold nothing.
        self.closing = calls
            .iter()
            .filter_map(|call| match call {
                Call::Close(c) => Some(*c),
                _ => None,
            })
            .collect();
        for call in calls {
            match call {
                Call::Send(to, frame) => self.sent(to, frame),
                Call::Ext(to, frame) => self.sent_ext(to, frame),
                Call::Close(c) => {
                    assert!(self.conns[c].live, "close of conn {c}, not connected");
                    self.gone(c);
                }
            }
        }
        self.check_bounds();
    }

    /// The reply to `c`'s oldest request: it must exist and have `seq`.
    fn reply(&mut self, c: ConnId, seq: u16, what: &str) -> Request {
        let (want, request) = self.conns[c]
            .requests
            .pop_front()
            .unwrap_or_else(|| panic!("{what} to conn {c}, which asked nothing"));
        assert_eq!(seq, want, "{what} to conn {c} with the wrong seq");
        request
    }

    fn sent(&mut self, to: ConnId, frame: Frame) {
        let conn = &self.conns[to];
        assert!(conn.live, "{} to conn {to}, not connected", frame.kind);
        match conn.role {
            Role::Emitter => {
                assert!(
                    matches!(frame.kind, Kind::Ok | Kind::Erro) && frame.origin == SERVER_ID,
                    "an emitter got {frame:?}"
                );
                let request = self.reply(to, frame.seq, "OK/ERRO");
                assert!(
                    matches!(request, Request::Msg | Request::Flw),
                    "OK/ERRO answers {request:?}"
                );
            }
            Role::Exhibitor => {
                if !matches!(frame.kind, Kind::Msg | Kind::Clist | Kind::Flw) {
                    return; // the answer to an exhibitor's own FLW
                }
                let mut queued = None;
                if frame.kind == Kind::Msg && ROOM_IDS.contains(&frame.dest) {
                    queued = self.room_delivery(to, &frame);
                }
                self.conns[to].unacked.push_back(Unacked {
                    origin: frame.origin,
                    seq: frame.seq,
                    queued,
                });
            }
            Role::Anonymous => panic!("{frame:?} to conn {to} before its OI"),
        }
    }

    /// A room's MSG reached exhibitor `to`: it must be a member session; a
    /// queue message must be free and `to` hold fewer of its room than its
    /// name's prefetch.
    fn room_delivery(&mut self, to: ConnId, frame: &Frame) -> Option<(ClientId, Vec<u8>)> {
        let room = frame.dest;
        assert!(
            self.conns[to].opted_in,
            "room {room}'s MSG to plain conn {to}"
        );
        let key = self.conns[to].name.clone();
        let model = self
            .rooms
            .get(&room)
            .unwrap_or_else(|| panic!("MSG of room {room}, which the model has not"));
        assert!(
            key.as_ref().is_some_and(|k| model.members.contains(k)),
            "room {room}'s MSG to conn {to} ({key:?}), no member"
        );
        if !model.queue {
            return None;
        }
        let prefetch = key
            .as_ref()
            .and_then(|k| model.prefetch.get(k))
            .copied()
            .unwrap_or(1);
        let text = frame.text().expect("a MSG").to_vec();
        if let Some(&other) = self.holder.get(&text) {
            assert!(
                self.closing.contains(&other),
                "queue message {text:?} to conn {to} while conn {other} holds it"
            );
            self.unhold(other, room, &text);
        }
        let held = self.holding.entry((to, room)).or_default();
        assert!(
            held.len() < usize::from(prefetch),
            "conn {to} given {text:?} while holding {held:?} of room {room} (prefetch {prefetch})"
        );
        held.push(text.clone());
        self.holder.insert(text.clone(), to);
        Some((room, text))
    }

    fn sent_ext(&mut self, to: ConnId, frame: ExtFrame) {
        let conn = &self.conns[to];
        assert!(conn.live, "{frame:?} to conn {to}, not connected");
        assert!(
            conn.opted_in,
            "{frame:?} to conn {to}, which did not opt in"
        );
        match frame {
            ExtFrame::Who(who) => {
                assert_eq!(conn.role, Role::Exhibitor, "WHO to a non-exhibitor");
                self.conns[to].unacked.push_back(Unacked {
                    origin: SERVER_ID,
                    seq: who.seq,
                    queued: None,
                });
            }
            ExtFrame::RoomAck(ack) => {
                let got = (ack.code, ack.room, ack.members);
                match self.reply(to, ack.seq, "ROOMACK") {
                    Request::Join(code, id, members) | Request::Leave(code, id, members) => {
                        assert_eq!(got, (code, id, members), "ROOMACK (code, room, members)");
                    }
                    other => panic!("ROOMACK answers {other:?}"),
                }
            }
            ExtFrame::RoomList(list) => {
                let listed: Vec<(ClientId, u16)> =
                    list.rooms.iter().map(|r| (r.room, r.members)).collect();
                match self.reply(to, list.seq, "ROOMLIST") {
                    Request::Rooms(model) => assert_eq!(listed, model, "ROOMLIST"),
                    other => panic!("ROOMLIST answers {other:?}"),
                }
            }
            other => panic!("unexpected extension frame {other:?}"),
        }
    }

    /// What the router answers `c`'s JOIN (PROTOCOL.md's codes, checked in
    /// the router's order), applied to the model at once: the answer may
    /// wait behind the emitter's earlier replies, its effect does not.
    fn predict_join(
        &mut self,
        c: ConnId,
        queue: bool,
        prefetch: u8,
        room: Option<&str>,
    ) -> (u8, ClientId, u16) {
        let Some(room) = room else { return (1, 0, 0) };
        let Some(member) = self.conns[c].name.clone() else {
            return (5, 0, 0);
        };
        let roles = self.conns[c].roles;
        let key = room.to_ascii_lowercase();
        let rooms_of_member = self
            .rooms
            .values()
            .filter(|r| r.members.contains(&member))
            .count();
        let found = self
            .rooms
            .iter()
            .find(|(_, r)| r.key == key)
            .map(|(id, _)| *id);
        let id = match found {
            Some(id) => {
                let existing = &self.rooms[&id];
                if existing.queue != queue {
                    return (8, 0, 0);
                }
                if existing.members.contains(&member) {
                    let count = existing.members.len() as u16;
                    // A JOIN again sets the prefetch afresh.
                    let room = self.rooms.get_mut(&id).expect("found");
                    room.prefetch.insert(member, prefetch);
                    return (0, id, count);
                }
                if roles & ROLE_VIEW == 0 {
                    return (6, 0, 0);
                }
                if existing.members.len() >= self.limits.room_members {
                    return (3, 0, 0);
                }
                if rooms_of_member >= self.limits.rooms_per_name {
                    return (2, 0, 0);
                }
                id
            }
            None => {
                if roles & (ROLE_VIEW | ROLE_BROADCAST) != ROLE_VIEW | ROLE_BROADCAST {
                    return (6, 0, 0);
                }
                if rooms_of_member >= self.limits.rooms_per_name {
                    return (2, 0, 0);
                }
                if self.rooms.len() >= self.limits.max_rooms {
                    return (7, 0, 0);
                }
                let id = ROOM_IDS
                    .clone()
                    .find(|id| !self.rooms.contains_key(id))
                    .expect("fewer rooms than ids");
                let room = ModelRoom {
                    key,
                    queue,
                    members: BTreeSet::new(),
                    prefetch: HashMap::new(),
                };
                self.rooms.insert(id, room);
                id
            }
        };
        let room = self.rooms.get_mut(&id).expect("found or made");
        room.prefetch.insert(member.clone(), prefetch);
        room.members.insert(member);
        (0, id, room.members.len() as u16)
    }

    /// What the router answers `c`'s LEAVE, applied to the model at once;
    /// what the name's sessions held of the room is passed on.
    fn predict_leave(&mut self, c: ConnId, room: Option<&str>) -> (u8, ClientId, u16) {
        let Some(room) = room else { return (1, 0, 0) };
        let Some(member) = self.conns[c].name.clone() else {
            return (5, 0, 0);
        };
        let key = room.to_ascii_lowercase();
        let found = self
            .rooms
            .iter()
            .find(|(_, r)| r.key == key)
            .map(|(id, _)| *id);
        let Some(id) = found.filter(|id| self.rooms[id].members.contains(&member)) else {
            return (4, 0, 0);
        };
        let entry = self.rooms.get_mut(&id).expect("found");
        entry.members.remove(&member);
        entry.prefetch.remove(&member);
        let left = entry.members.len() as u16;
        if left == 0 {
            self.rooms.remove(&id);
        }
        let sessions: Vec<ConnId> = (0..CONNS)
            .filter(|&s| {
                self.conns[s].live && self.conns[s].name.as_deref() == Some(member.as_str())
            })
            .collect();
        for s in sessions {
            for text in self.holding.remove(&(s, id)).unwrap_or_default() {
                self.holder.remove(&text);
            }
        }
        (0, id, left)
    }

    fn check_bounds(&self) {
        assert!(
            self.rooms.len() <= self.limits.max_rooms,
            "more rooms than max_rooms"
        );
        for (id, room) in &self.rooms {
            assert!(
                room.members.len() <= self.limits.room_members,
                "room {id} overfull"
            );
            if room.queue {
                let (waiting, held) = self
                    .router
                    .queue_load(*id)
                    .unwrap_or_else(|| panic!("room {id} is gone from the router"));
                assert!(
                    waiting + held <= self.limits.queue_depth + CONNS * usize::from(MAX_PREFETCH),
                    "queue room {id}: {waiting} waiting + {held} held"
                );
            }
        }
    }

    /// Every exhibitor acknowledges everything, the ack timeout and queue
    /// wait pass: no live emitter waits for a reply.
    fn drain(&mut self) {
        for _ in 0..3 {
            for _ in 0..1000 {
                let pending: Vec<ConnId> = (0..CONNS)
                    .filter(|&c| self.conns[c].live && !self.conns[c].unacked.is_empty())
                    .collect();
                if pending.is_empty() {
                    break;
                }
                for c in pending {
                    self.ack(c, true);
                    self.absorb();
                }
            }
            self.now += Duration::from_secs(10);
            self.router.tick(self.now, &mut self.out);
            self.absorb();
        }
        for (c, conn) in self.conns.iter().enumerate() {
            if conn.live {
                assert!(
                    conn.requests.is_empty(),
                    "conn {c} never got a reply to {:?}",
                    conn.requests
                );
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input);
    for event in &input.events {
        h.apply(event);
        if let Err(e) = h.router.check_invariants() {
            panic!("after {event:?}: {e}");
        }
    }
    h.drain();
    if let Err(e) = h.router.check_invariants() {
        panic!("after draining: {e}");
    }
});
