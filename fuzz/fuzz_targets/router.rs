//! Fuzz target for the routing layer (`evchat::testing::Router`), with no sockets.
//!
//! The input is a set of limits and a sequence of events on up to eight fake
//! connections: connect, a frame of any kind (origins biased toward the
//! connection's own id, destinations toward live ids, 0 and 65535, sequence
//! numbers toward the client's own counter or the one an ack should echo),
//! shorthands for OI and for a well-formed ack, an undecodable header, a
//! disconnect, a clock tick after some time, time passing without a tick, and
//! shutdown. Connection ids are reused after a connection is gone, so slot
//! reuse is exercised. As the event loop does, a frame is not fed to an
//! emitter whose input is paused (`accepts_input` false) unless it has sent
//! FLW (the router ignores such frames, which is checked).
//!
//! After every event `Router::check_invariants` must hold, and the router's
//! public view (`connection_count`, `client_id`, `accepts_input`) must match
//! a model of PROTOCOL.md kept here. What the router sent through the
//! `Outbox` during the event is checked against that model:
//!
//! * nothing is sent to, closed on or resumed for a connection that is not
//!   connected: after `close` or `disconnected` a connection gets nothing
//!   until the harness connects that id again; each is closed at most once,
//!   with the id it held (0 before OI);
//! * rule 1: OI gets OK with the lowest free id of the right range, or ERRO
//!   and close when pairing is impossible; a second OI gets ERRO, kept;
//!   anything else before OI gets ERRO and close;
//! * rule 2: a spoofed origin gets ERRO with the real id at once (not in
//!   request order: the connection is closed right after and owes nothing
//!   more) and the frame is not forwarded;
//! * rules 3 and 5: a MSG goes, byte for byte as received, to exactly the
//!   targets PROTOCOL.md names (broadcast: every exhibitor not being
//!   dismissed; an exhibitor id; an emitter id: its paired exhibitor); a CREQ
//!   sends those targets a CLIST of every identified id, ascending, with the
//!   CREQ's destination and the target's server sequence number;
//! * rule 4: every OK/ERRO to an emitter answers its oldest unanswered
//!   request (MSG, CREQ, FLW or second OI) with that request's sequence
//!   number, only once every target has settled (an ack from the target, its
//!   departure, or its ack timeout), OK iff a target said OK (OK for FLW,
//!   ERRO for a second OI); and a reply that is due is not held back;
//! * rule 6: FLW from an exhibitor gets OK and close; the OK to an emitter's
//!   FLW is followed by its close; an emitter's departure sends FLW (server
//!   sequence number) to its paired exhibitor unless already dismissed, and
//!   an acknowledged server FLW closes the connection;
//! * rule 7: CLIST or an unknown type from a client gets ERRO and close;
//! * rule 8: shutdown sends FLW to every identified client not yet dismissed
//!   and closes the ones that never identified;
//! * rule 9: a tick closes exactly the connections whose OI or oldest ack is
//!   overdue; an emitter whose input was paused is resumed (`resume_input`)
//!   when its replies drain below `max_inflight`, and only emitters are.
#![no_main]

use arbitrary::Arbitrary;
use evchat::proto::{
    ClientId, EMITTER_IDS, EXHIBITOR_IDS, Frame, Header, Kind, SERVER_ID, is_emitter_id,
    is_exhibitor_id,
};
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, Router};
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

/// Fake connections the harness drives.
const CONNS: usize = 8;

// ---- the input ------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct Input {
    /// Ack timeout in tenths of a second (mod 41: 0 ..= 4 s).
    ack_timeout: u8,
    /// Handshake timeout in tenths of a second (mod 41).
    handshake_timeout: u8,
    /// `max_inflight` is 1 + this mod 4, so pausing happens often.
    max_inflight: u8,
    events: Vec<Event>,
}

#[derive(Arbitrary, Debug, Clone)]
enum Event {
    Connect(u8),
    /// Any frame.
    Frame {
        conn: u8,
        kind: KindSel,
        origin: IdSel,
        dest: IdSel,
        seq: SeqSel,
        body: Vec<u8>,
    },
    /// Connect if needed, then OI: as an exhibitor, or as an emitter paired
    /// with a live exhibitor (or unpaired).
    Hello {
        conn: u8,
        exhibitor: bool,
        pair: u8,
    },
    /// OK or ERRO from the connection's own id echoing what it should echo.
    Ack {
        conn: u8,
        ok: bool,
    },
    /// A header naming no known type.
    Undecodable {
        conn: u8,
        kind: u16,
        origin: IdSel,
        seq: SeqSel,
    },
    Disconnect(u8),
    /// Time passes (milliseconds, mod 5000), then `tick`.
    Tick(u16),
    /// Time passes with no tick.
    Sleep(u16),
    Shutdown,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum KindSel {
    Ok,
    Erro,
    Oi,
    Flw,
    Msg,
    Creq,
    Clist,
}

impl KindSel {
    fn kind(self) -> Kind {
        match self {
            KindSel::Ok => Kind::Ok,
            KindSel::Erro => Kind::Erro,
            KindSel::Oi => Kind::Oi,
            KindSel::Flw => Kind::Flw,
            KindSel::Msg => Kind::Msg,
            KindSel::Creq => Kind::Creq,
            KindSel::Clist => Kind::Clist,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IdSel {
    /// The connection's own id (`client_id`, 0 before OI).
    Own,
    Zero,
    Server,
    /// One of the ids held now.
    Live(u8),
    /// A held exhibitor id.
    Exhibitor(u8),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SeqSel {
    /// The client's own counter (acks: what the oldest delivery expects).
    Next,
    /// What an ack to the oldest delivery should echo.
    Ack,
    Raw(u16),
}

// ---- the recording outbox -------------------------------------------------

#[derive(Debug, Clone)]
enum Call {
    Send(ConnId, Frame),
    Close(ConnId, ClientId, CloseReason),
    Resume(ConnId),
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
    fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason) {
        assert!(conn < CONNS, "close of unknown conn {conn}");
        self.calls.push(Call::Close(conn, id, reason));
    }
    fn resume_input(&mut self, conn: ConnId) {
        assert!(conn < CONNS, "resume of unknown conn {conn}");
        self.calls.push(Call::Resume(conn));
    }
}

// ---- the model --------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Anonymous,
    Emitter,
    Exhibitor,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Request { emitter: usize, req: u64 },
    Farewell,
}

/// A frame the server sent that awaits the client's OK or ERRO.
#[derive(Debug)]
struct Delivery {
    seq: u16,
    deadline: Instant,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// MSG or CREQ: OK iff a target said OK.
    Request,
    /// A second OI: ERRO.
    SecondOi,
    /// FLW: OK, then close.
    Farewell,
}

/// A reply an emitter is owed.
#[derive(Debug)]
struct Owed {
    req: u64,
    seq: u16,
    outstanding: u32,
    any_ok: bool,
    answer: Answer,
}

#[derive(Debug)]
struct Conn {
    live: bool,
    role: Role,
    id: ClientId,
    connected_at: Instant,
    paired: Option<usize>,
    /// Emitter sent FLW.
    finished: bool,
    /// Server sent FLW.
    leaving: bool,
    server_seq: u16,
    client_seq: u16,
    awaiting: VecDeque<Delivery>,
    owed: VecDeque<Owed>,
}

impl Conn {
    fn new(live: bool, now: Instant) -> Conn {
        Conn {
            live,
            role: Role::Anonymous,
            id: 0,
            connected_at: now,
            paired: None,
            finished: false,
            leaving: false,
            server_seq: 0,
            client_seq: 0,
            awaiting: VecDeque::new(),
            owed: VecDeque::new(),
        }
    }
    fn identified(&self) -> bool {
        self.live && self.role != Role::Anonymous
    }
}

/// What the router must do during one event.
#[derive(Default, Debug)]
struct Expect {
    /// Frames sent at once in answer to the input (not queued replies).
    direct: Vec<(usize, Frame)>,
    /// Per target, the MSG copy or CLIST it must get.
    forwards: BTreeMap<usize, Frame>,
    /// Per connection, the server FLW it must get.
    farewells: BTreeMap<usize, Frame>,
    /// Connections the router must close, and the acceptable reasons (more
    /// than one when two causes meet in one event, e.g. an emitter whose ack
    /// timed out and whose FLW reply became due in the same tick).
    closes: BTreeMap<usize, Vec<CloseReason>>,
}

impl Expect {
    fn close(&mut self, conn: usize, reason: CloseReason) {
        self.closes.entry(conn).or_default().push(reason);
    }
}

struct Model {
    conns: Vec<Conn>,
    now: Instant,
    /// The `now` of the last router call that was given one.
    router_now: Instant,
    /// The time the router computes deadlines from in the call being checked.
    clock: Instant,
    limits: Limits,
    next_req: u64,
    shut_down: bool,
}

fn bare(kind: Kind, dest: ClientId, seq: u16) -> Frame {
    Frame::bare(kind, SERVER_ID, dest, seq)
}

impl Model {
    fn holder(&self, id: ClientId) -> Option<usize> {
        self.conns.iter().position(|c| c.identified() && c.id == id)
    }

    fn held_ids(&self) -> Vec<ClientId> {
        let ids: BTreeSet<ClientId> = self
            .conns
            .iter()
            .filter(|c| c.identified())
            .map(|c| c.id)
            .collect();
        ids.into_iter().collect()
    }

    fn lowest_free(&self, range: RangeInclusive<ClientId>) -> ClientId {
        let held = self.held_ids();
        range
            .into_iter()
            .find(|id| !held.contains(id))
            .expect("8 connections cannot exhaust an id range")
    }

    fn live_exhibitor(&self, conn: usize) -> bool {
        let c = &self.conns[conn];
        c.live && c.role == Role::Exhibitor && !c.leaving
    }

    /// Rule 3: the exhibitors a MSG or CREQ to `dest` goes to.
    fn targets(&self, dest: ClientId) -> Vec<usize> {
        if dest == 0 {
            return (0..CONNS).filter(|&c| self.live_exhibitor(c)).collect();
        }
        let Some(holder) = self.holder(dest) else {
            return Vec::new();
        };
        let target = if is_emitter_id(dest) {
            match self.conns[holder].paired {
                Some(ex) => ex,
                None => return Vec::new(),
            }
        } else {
            holder
        };
        if self.live_exhibitor(target) {
            vec![target]
        } else {
            Vec::new()
        }
    }

    fn settle(&mut self, emitter: usize, req: u64, ok: bool) {
        let e = &mut self.conns[emitter];
        if !e.live || e.role != Role::Emitter {
            return;
        }
        if let Some(owed) = e.owed.iter_mut().find(|o| o.req == req) {
            assert!(owed.outstanding > 0, "model settles a settled request");
            owed.outstanding -= 1;
            owed.any_ok |= ok;
        }
    }

    fn dismiss(&mut self, conn: usize, exp: &mut Expect) {
        let deadline = self.clock + self.limits.ack_timeout;
        let c = &mut self.conns[conn];
        let seq = c.server_seq;
        c.server_seq = c.server_seq.wrapping_add(1);
        c.leaving = true;
        c.awaiting.push_back(Delivery {
            seq,
            deadline,
            purpose: Purpose::Farewell,
        });
        let previous = exp.farewells.insert(conn, bare(Kind::Flw, c.id, seq));
        assert!(previous.is_none(), "model dismisses conn {conn} twice");
    }

    /// What a connection's departure does to the others (rule 4 and 6).
    fn departure_effects(&mut self, conn: usize, exp: &mut Expect) {
        match self.conns[conn].role {
            Role::Anonymous => {}
            Role::Emitter => {
                if let Some(ex) = self.conns[conn].paired.take()
                    && self.conns[ex].live
                    && self.conns[ex].paired == Some(conn)
                {
                    self.conns[ex].paired = None;
                    if !self.conns[ex].leaving {
                        self.dismiss(ex, exp);
                    }
                }
            }
            Role::Exhibitor => {
                if let Some(em) = self.conns[conn].paired.take()
                    && self.conns[em].paired == Some(conn)
                {
                    self.conns[em].paired = None;
                }
                let deliveries = std::mem::take(&mut self.conns[conn].awaiting);
                for d in deliveries {
                    if let Purpose::Request { emitter, req } = d.purpose {
                        self.settle(emitter, req, false);
                    }
                }
            }
        }
    }

    fn remove(&mut self, conn: usize) {
        self.conns[conn] = Conn::new(false, self.now);
    }

    /// An OK or ERRO from `conn` settles its oldest delivery.
    fn ack(&mut self, conn: usize, ok: bool, exp: &mut Expect) {
        match self.conns[conn].awaiting.pop_front().map(|d| d.purpose) {
            None => {}
            Some(Purpose::Farewell) => exp.close(conn, CloseReason::Dismissed),
            Some(Purpose::Request { emitter, req }) => self.settle(emitter, req, ok),
        }
    }

    fn owe(&mut self, conn: usize, seq: u16, outstanding: u32, answer: Answer) -> u64 {
        let req = self.next_req;
        self.next_req += 1;
        self.conns[conn].owed.push_back(Owed {
            req,
            seq,
            outstanding,
            any_ok: false,
            answer,
        });
        req
    }

    /// Rules 3–5.
    fn request(&mut self, conn: usize, frame: &Frame, exp: &mut Expect) {
        let targets = self.targets(frame.dest);
        let req = self.owe(conn, frame.seq, targets.len() as u32, Answer::Request);
        let ids = self.held_ids();
        let deadline = self.clock + self.limits.ack_timeout;
        for t in targets {
            let target = &mut self.conns[t];
            let sent = if frame.kind == Kind::Msg {
                frame.clone()
            } else {
                let seq = target.server_seq;
                target.server_seq = seq.wrapping_add(1);
                Frame::clist(SERVER_ID, frame.dest, seq, ids.clone()).unwrap()
            };
            target.awaiting.push_back(Delivery {
                seq: sent.seq,
                deadline,
                purpose: Purpose::Request { emitter: conn, req },
            });
            exp.forwards.insert(t, sent);
        }
    }

    /// What a frame from `conn` must cause (rules 1–7); updates the model.
    fn frame(&mut self, conn: usize, frame: &Frame) -> Expect {
        let mut exp = Expect::default();
        let c = &self.conns[conn];
        let id = c.id;
        let seq = frame.seq;
        match c.role {
            Role::Anonymous if frame.kind == Kind::Oi => self.identify(conn, frame, &mut exp),
            Role::Anonymous => {
                exp.direct.push((conn, bare(Kind::Erro, 0, seq)));
                exp.close(conn, CloseReason::NotIdentified);
            }
            Role::Emitter if c.finished => {} // ignored after FLW
            _ if frame.kind == Kind::Oi => {
                if c.role == Role::Emitter {
                    self.owe(conn, seq, 0, Answer::SecondOi);
                } else {
                    exp.direct.push((conn, bare(Kind::Erro, id, seq)));
                }
            }
            _ if frame.origin != id => {
                exp.direct.push((conn, bare(Kind::Erro, id, seq)));
                exp.close(conn, CloseReason::Spoofed);
            }
            role => match frame.kind {
                Kind::Ok | Kind::Erro => self.ack(conn, frame.kind == Kind::Ok, &mut exp),
                Kind::Clist => {
                    exp.direct.push((conn, bare(Kind::Erro, id, seq)));
                    exp.close(conn, CloseReason::BadFrame);
                }
                Kind::Msg | Kind::Creq if role == Role::Emitter => {
                    self.request(conn, frame, &mut exp)
                }
                Kind::Msg | Kind::Creq => exp.direct.push((conn, bare(Kind::Erro, id, seq))),
                Kind::Flw if role == Role::Emitter => {
                    self.owe(conn, seq, 0, Answer::Farewell);
                    self.conns[conn].finished = true;
                }
                Kind::Flw => {
                    exp.direct.push((conn, bare(Kind::Ok, id, seq)));
                    exp.close(conn, CloseReason::Left);
                }
                Kind::Oi => unreachable!(),
            },
        }
        exp
    }

    /// Rule 1.
    fn identify(&mut self, conn: usize, oi: &Frame, exp: &mut Expect) {
        let wanted = oi.origin;
        let assigned = if wanted == 0 {
            Some((self.lowest_free(EXHIBITOR_IDS), Role::Exhibitor, None))
        } else {
            let pairing = if is_exhibitor_id(wanted) {
                match self.holder(wanted) {
                    Some(ex)
                        if self.conns[ex].role == Role::Exhibitor
                            && self.conns[ex].paired.is_none()
                            && !self.conns[ex].leaving =>
                    {
                        Some(Some(ex))
                    }
                    _ => None,
                }
            } else {
                Some(None)
            };
            pairing.map(|pair| (self.lowest_free(EMITTER_IDS), Role::Emitter, pair))
        };
        match assigned {
            Some((id, role, pair)) => {
                let c = &mut self.conns[conn];
                c.id = id;
                c.role = role;
                c.paired = pair;
                if let Some(ex) = pair {
                    self.conns[ex].paired = Some(conn);
                }
                exp.direct.push((conn, bare(Kind::Ok, id, oi.seq)));
            }
            None => {
                exp.direct.push((conn, bare(Kind::Erro, 0, oi.seq)));
                exp.close(conn, CloseReason::Refused);
            }
        }
    }

    fn undecodable(&mut self, conn: usize, header: Header) -> Expect {
        let mut exp = Expect::default();
        let id = self.conns[conn].id;
        exp.direct.push((conn, bare(Kind::Erro, id, header.seq)));
        exp.close(conn, CloseReason::BadFrame);
        exp
    }

    /// Rule 9: who a tick at `self.now` must close.
    fn tick(&mut self) -> Expect {
        let mut exp = Expect::default();
        for (i, c) in self.conns.iter().enumerate() {
            if !c.live {
                continue;
            }
            if c.role == Role::Anonymous {
                if c.connected_at + self.limits.handshake_timeout <= self.now {
                    exp.close(i, CloseReason::HandshakeTimeout);
                }
            } else if c.awaiting.front().is_some_and(|d| d.deadline <= self.now) {
                exp.close(i, CloseReason::Unresponsive);
            }
        }
        exp
    }

    /// Rule 8.
    fn shutdown(&mut self) -> Expect {
        let mut exp = Expect::default();
        self.shut_down = true;
        for i in 0..CONNS {
            let c = &self.conns[i];
            if !c.live {
                continue;
            }
            if c.role == Role::Anonymous {
                exp.close(i, CloseReason::Shutdown);
            } else if !c.leaving {
                self.dismiss(i, &mut exp);
            }
        }
        exp
    }

    fn accepts_input(&self, conn: usize) -> bool {
        let c = &self.conns[conn];
        c.live
            && !(c.role == Role::Emitter
                && (c.finished || c.owed.len() >= self.limits.max_inflight))
    }
}

// ---- the harness ----------------------------------------------------------

struct Harness {
    router: Router,
    model: Model,
    out: Recorder,
    /// For failure messages: the events so far.
    step: usize,
    /// Per connection, at the start of the router call being checked: an
    /// emitter held back by flow control.
    paused_before: Vec<bool>,
}

impl Harness {
    fn new(limits: Limits) -> Harness {
        let now = Instant::now();
        Harness {
            router: Router::new(limits),
            model: Model {
                conns: (0..CONNS).map(|_| Conn::new(false, now)).collect(),
                now,
                router_now: now,
                clock: now,
                limits,
                next_req: 0,
                shut_down: false,
            },
            out: Recorder::default(),
            step: 0,
            paused_before: vec![false; CONNS],
        }
    }

    /// Called before the model is updated for a router call; `given_now`:
    /// the call takes the current time.
    fn begin(&mut self, given_now: bool) {
        let model = &mut self.model;
        if given_now {
            model.router_now = model.now;
        }
        model.clock = if given_now {
            model.now
        } else {
            model.router_now
        };
        for c in 0..CONNS {
            let m = &self.model.conns[c];
            self.paused_before[c] =
                m.live && m.role == Role::Emitter && !m.finished && !self.router.accepts_input(c);
        }
    }

    fn fail(&self, what: String, calls: &[Call]) -> ! {
        panic!(
            "event #{}: {what}\n  router calls this event: {calls:?}\n  model: {:#?}",
            self.step, self.model.conns
        );
    }

    fn id_of(&self, conn: usize) -> ClientId {
        self.router.client_id(conn).unwrap_or(0)
    }

    fn pick_id(&self, conn: usize, sel: IdSel) -> ClientId {
        let held = |exhibitors_only: bool| -> Vec<ClientId> {
            (0..CONNS)
                .filter_map(|c| self.router.client_id(c))
                .filter(|&id| !exhibitors_only || is_exhibitor_id(id))
                .collect()
        };
        let pick = |ids: Vec<ClientId>, i: u8| {
            if ids.is_empty() {
                0
            } else {
                ids[i as usize % ids.len()]
            }
        };
        match sel {
            IdSel::Own => self.id_of(conn),
            IdSel::Zero => 0,
            IdSel::Server => SERVER_ID,
            IdSel::Live(i) => pick(held(false), i),
            IdSel::Exhibitor(i) => pick(held(true), i),
            IdSel::Raw(id) => id,
        }
    }

    fn ack_seq(&self, conn: usize) -> u16 {
        self.model.conns[conn].awaiting.front().map_or(0, |d| d.seq)
    }

    fn pick_seq(&mut self, conn: usize, kind: Kind, sel: SeqSel) -> u16 {
        match sel {
            SeqSel::Next if matches!(kind, Kind::Ok | Kind::Erro) => self.ack_seq(conn),
            SeqSel::Next => {
                let c = &mut self.model.conns[conn];
                let seq = c.client_seq;
                c.client_seq = seq.wrapping_add(1);
                seq
            }
            SeqSel::Ack => self.ack_seq(conn),
            SeqSel::Raw(seq) => seq,
        }
    }

    fn run(&mut self, event: &Event) {
        let conn = |c: &u8| *c as usize % CONNS;
        match *event {
            Event::Connect(c) => self.connect(conn(&c)),
            Event::Frame {
                conn: c,
                kind,
                origin,
                dest,
                seq,
                ref body,
            } => {
                let c = conn(&c);
                let kind = kind.kind();
                let origin = self.pick_id(c, origin);
                let dest = self.pick_id(c, dest);
                let seq = self.pick_seq(c, kind, seq);
                let frame = match kind {
                    Kind::Msg => Frame::msg(origin, dest, seq, body.clone()).unwrap(),
                    Kind::Clist => {
                        let ids = body
                            .chunks_exact(2)
                            .map(|p| u16::from_be_bytes([p[0], p[1]]))
                            .collect();
                        Frame::clist(origin, dest, seq, ids).unwrap()
                    }
                    kind => Frame::bare(kind, origin, dest, seq),
                };
                self.frame(c, frame);
            }
            Event::Hello {
                conn: c,
                exhibitor,
                pair,
            } => {
                let c = conn(&c);
                if !self.model.conns[c].live {
                    self.connect(c);
                }
                let origin = if exhibitor {
                    0
                } else {
                    match self.pick_id(c, IdSel::Exhibitor(pair)) {
                        0 => 1,
                        id => id,
                    }
                };
                let seq = self.pick_seq(c, Kind::Oi, SeqSel::Next);
                self.frame(c, Frame::bare(Kind::Oi, origin, SERVER_ID, seq));
            }
            Event::Ack { conn: c, ok } => {
                let c = conn(&c);
                let kind = if ok { Kind::Ok } else { Kind::Erro };
                let seq = self.ack_seq(c);
                self.frame(c, Frame::bare(kind, self.id_of(c), SERVER_ID, seq));
            }
            Event::Undecodable {
                conn: c,
                kind,
                origin,
                seq,
            } => {
                let c = conn(&c);
                let kind = if Kind::from_u16(kind).is_some() {
                    kind + 8
                } else {
                    kind
                };
                let header = Header {
                    kind,
                    origin: self.pick_id(c, origin),
                    dest: SERVER_ID,
                    seq: self.pick_seq(c, Kind::Oi, seq),
                };
                self.undecodable(c, header);
            }
            Event::Disconnect(c) => self.disconnect(conn(&c)),
            Event::Tick(ms) => {
                self.model.now += Duration::from_millis(ms as u64 % 5000);
                self.begin(true);
                let exp = self.model.tick();
                let now = self.model.now;
                self.router.tick(now, &mut self.out);
                self.verify(exp, None);
            }
            Event::Sleep(ms) => {
                self.model.now += Duration::from_millis(ms as u64 % 5000);
            }
            Event::Shutdown => {
                if self.model.shut_down {
                    return; // a second signal exits the server at once
                }
                self.begin(true);
                let exp = self.model.shutdown();
                let now = self.model.now;
                self.router.shutdown(now, &mut self.out);
                self.verify(exp, None);
            }
        }
        self.step += 1;
    }

    fn connect(&mut self, conn: usize) {
        if self.model.conns[conn].live || self.model.shut_down {
            return; // ids are not reused while in use; no accepting after shutdown
        }
        self.begin(true);
        self.model.conns[conn] = Conn::new(true, self.model.now);
        self.router.connected(conn, self.model.now);
        self.verify(Expect::default(), None);
    }

    fn frame(&mut self, conn: usize, frame: Frame) {
        let model = &self.model.conns[conn];
        let ignored = !model.live || (model.role == Role::Emitter && model.finished);
        if !ignored && !self.router.accepts_input(conn) {
            return; // the event loop reads nothing from a paused emitter
        }
        self.begin(true);
        let exp = if ignored {
            Expect::default() // not connected, or an emitter after FLW: ignored
        } else {
            self.model.frame(conn, &frame)
        };
        let input = (frame.kind == Kind::Msg).then(|| frame.to_bytes());
        let now = self.model.now;
        self.router.on_frame(conn, frame, now, &mut self.out);
        self.verify(exp, input);
    }

    fn undecodable(&mut self, conn: usize, header: Header) {
        let live = self.model.conns[conn].live;
        if live && !self.router.accepts_input(conn) {
            return; // the event loop does not decode a paused or finished emitter
        }
        self.begin(true);
        let exp = if live {
            self.model.undecodable(conn, header)
        } else {
            Expect::default()
        };
        let now = self.model.now;
        self.router.on_undecodable(conn, header, now, &mut self.out);
        self.verify(exp, None);
    }

    fn disconnect(&mut self, conn: usize) {
        self.begin(true);
        let mut exp = Expect::default();
        if self.model.conns[conn].live {
            self.model.departure_effects(conn, &mut exp);
            self.model.remove(conn);
        }
        let now = self.model.now;
        self.router.disconnected(conn, now, &mut self.out);
        self.verify(exp, None);
    }

    /// Checks what the router did during one event against `exp`, then the
    /// router's state against the model. `msg_bytes`: the wire form of a MSG
    /// fed in this event.
    fn verify(&mut self, mut exp: Expect, msg_bytes: Option<bytes::Bytes>) {
        let calls = std::mem::take(&mut self.out.calls);

        // Departures first: the router settles what depended on a closed
        // connection before it reports the close, and nested closes report
        // in reverse order, so the model applies every departure of this
        // event up front. A FLW to a connection that is itself closed in
        // this event may or may not be sent, depending on that order.
        let closed_now: BTreeSet<usize> = calls
            .iter()
            .filter_map(|call| match call {
                Call::Close(c, ..) => Some(*c),
                _ => None,
            })
            .collect();
        let mut alive: BTreeSet<usize> = (0..CONNS).filter(|&c| self.model.conns[c].live).collect();
        let mut seen_closed = BTreeSet::new();
        for call in &calls {
            if let Call::Close(c, ..) = call
                && alive.contains(c)
                && seen_closed.insert(*c)
            {
                self.model.departure_effects(*c, &mut exp);
            }
        }

        let mut resumed = BTreeSet::new();
        for call in &calls {
            match call {
                Call::Send(to, frame) => {
                    let to = *to;
                    if !alive.contains(&to) {
                        self.fail(
                            format!("{frame} sent to conn {to}, which is not connected"),
                            &calls,
                        );
                    }
                    if let Some(i) = exp.direct.iter().position(|(c, f)| *c == to && f == frame) {
                        exp.direct.remove(i);
                        continue;
                    }
                    match frame.kind {
                        Kind::Msg | Kind::Clist => {
                            if exp.forwards.remove(&to).as_ref() != Some(frame) {
                                self.fail(
                                    format!("unexpected {frame} to conn {to}: {frame:?}"),
                                    &calls,
                                );
                            }
                            if frame.kind == Kind::Msg
                                && msg_bytes.as_deref() != Some(&frame.to_bytes()[..])
                            {
                                self.fail(
                                    format!("forwarded MSG to {to} is not byte-identical"),
                                    &calls,
                                );
                            }
                        }
                        Kind::Flw => {
                            if exp.farewells.remove(&to).as_ref() != Some(frame) {
                                self.fail(format!("unexpected {frame} to conn {to}"), &calls);
                            }
                        }
                        Kind::Ok | Kind::Erro => {
                            let m = &self.model.conns[to];
                            if m.role != Role::Emitter {
                                self.fail(
                                    format!("unexpected {frame} to non-emitter conn {to}"),
                                    &calls,
                                );
                            }
                            let Some(owed) = m.owed.front() else {
                                self.fail(
                                    format!("{frame} to emitter conn {to}, which is owed nothing"),
                                    &calls,
                                );
                            };
                            let kind = match owed.answer {
                                Answer::Request if owed.any_ok => Kind::Ok,
                                Answer::Request | Answer::SecondOi => Kind::Erro,
                                Answer::Farewell => Kind::Ok,
                            };
                            let wanted = bare(kind, m.id, owed.seq);
                            if owed.outstanding > 0 || *frame != wanted {
                                self.fail(
                                    format!("{frame} to emitter conn {to}, but its oldest unanswered request is {owed:?} (reply due: {wanted})"),
                                    &calls,
                                );
                            }
                            let owed = self.model.conns[to].owed.pop_front().unwrap();
                            if owed.answer == Answer::Farewell {
                                exp.close(to, CloseReason::Left);
                            }
                        }
                        Kind::Oi | Kind::Creq => self.fail(format!("server sent {frame}"), &calls),
                    }
                }
                Call::Close(c, id, reason) => {
                    let c = *c;
                    if !alive.remove(&c) {
                        self.fail(format!("close of conn {c}, which is not connected"), &calls);
                    }
                    if *id != self.model.conns[c].id {
                        self.fail(
                            format!(
                                "conn {c} closed with id {id}, holds {}",
                                self.model.conns[c].id
                            ),
                            &calls,
                        );
                    }
                    match exp.closes.remove(&c) {
                        Some(reasons) if reasons.contains(reason) => {}
                        other => self.fail(
                            format!("conn {c} closed ({reason:?}), expected {other:?}"),
                            &calls,
                        ),
                    }
                    self.model.remove(c);
                }
                Call::Resume(c) => {
                    if !alive.contains(c) || self.model.conns[*c].role != Role::Emitter {
                        self.fail(
                            format!("resume_input for conn {c}, not a connected emitter"),
                            &calls,
                        );
                    }
                    resumed.insert(*c);
                }
            }
        }
        exp.farewells.retain(|c, _| !closed_now.contains(c));
        if !exp.direct.is_empty()
            || !exp.forwards.is_empty()
            || !exp.farewells.is_empty()
            || !exp.closes.is_empty()
        {
            self.fail(
                format!("the router did not do all it must: {exp:?}"),
                &calls,
            );
        }

        // Rule 4: a reply that is due goes out now.
        for (i, c) in self.model.conns.iter().enumerate() {
            if c.live
                && let Some(owed) = c.owed.front()
                && owed.outstanding == 0
            {
                self.fail(
                    format!("conn {i}: reply due but not sent: {owed:?}"),
                    &calls,
                );
            }
        }

        // The router's own view.
        if let Err(e) = self.router.check_invariants() {
            self.fail(format!("check_invariants: {e}"), &calls);
        }
        let live = self.model.conns.iter().filter(|c| c.live).count();
        if self.router.connection_count() != live {
            self.fail(
                format!(
                    "router has {} connections, model {live}",
                    self.router.connection_count()
                ),
                &calls,
            );
        }
        for i in 0..CONNS {
            let m = &self.model.conns[i];
            let wanted = m.identified().then_some(m.id);
            if self.router.client_id(i) != wanted {
                self.fail(
                    format!(
                        "client_id({i}) = {:?}, model {wanted:?}",
                        self.router.client_id(i)
                    ),
                    &calls,
                );
            }
            let accepts = self.model.accepts_input(i);
            if self.router.accepts_input(i) != accepts {
                self.fail(
                    format!("accepts_input({i}) = {}, model {accepts}", !accepts),
                    &calls,
                );
            }
            if self.paused_before[i] && accepts && !resumed.contains(&i) {
                self.fail(
                    format!("emitter conn {i} unpaused without resume_input"),
                    &calls,
                );
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let limits = Limits {
        ack_timeout: Duration::from_millis(100 * (input.ack_timeout % 41) as u64),
        handshake_timeout: Duration::from_millis(100 * (input.handshake_timeout % 41) as u64),
        max_inflight: 1 + (input.max_inflight % 4) as usize,
    };
    let mut harness = Harness::new(limits);
    for event in &input.events {
        harness.run(event);
    }
});
