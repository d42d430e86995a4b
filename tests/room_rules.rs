//! The rooms' rules without sockets (PROTOCOL.md, "Extension: rooms and
//! queues"): a [`Router`] driven by arbitrary sequences of room messages,
//! acknowledgements, members leaving, rejoining, dropping and coming back,
//! and time passing. After every step the router's invariants hold; at the
//! end, once every member acknowledges what it holds and the queue's wait
//! bound has passed, every request has had exactly one reply, in order, an
//! OK only for a message a member acknowledged with OK. (Two members may
//! both acknowledge one message: one that left the room or dropped while
//! holding it, and the next. That is the at-least-once PROTOCOL.md states.)

use evchat::proto::ext::{ExtFrame, PLAIN_ROLES};
use evchat::proto::{ClientId, Frame, Header, Kind, SERVER_ID};
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, RoomLimits, Router};
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the router sent, in order (an extension frame as None: WHO to an
/// exhibitor, ROOMACK to an emitter), and what it closed.
#[derive(Default)]
struct Recorder {
    frames: Vec<(ConnId, Option<Frame>)>,
    closed: Vec<ConnId>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        self.frames.push((to, Some(frame.clone())));
    }
    fn send_ext(&mut self, to: ConnId, _frame: &ExtFrame) {
        self.frames.push((to, None));
    }
    fn close(&mut self, conn: ConnId, _id: ClientId, _reason: CloseReason) {
        self.closed.push(conn);
    }
    fn resume_input(&mut self, _conn: ConnId) {}
}

#[derive(Debug, Clone)]
enum Step {
    /// The writer sends a MSG to the queue room.
    Send,
    /// Member `n` acknowledges the oldest frame it holds (OK, or ERRO).
    Ack(u8, bool),
    /// Member `n`'s exhibitor drops, then a new one of the same name comes.
    Reconnect(u8),
    /// Member `n` leaves the room, then joins again.
    LeaveAndJoin(u8),
    /// Time passes (tenths of a second).
    Wait(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Send),
        6 => (0..3u8, any::<bool>()).prop_map(|(n, ok)| Step::Ack(n, ok)),
        1 => (0..3u8).prop_map(Step::Reconnect),
        1 => (0..3u8).prop_map(Step::LeaveAndJoin),
        1 => (0..40u8).prop_map(Step::Wait),
    ]
}

const WRITER: ConnId = 0;
const ROOM: ClientId = 0x4000;

struct World {
    router: Router,
    out: Recorder,
    now: Instant,
    next_conn: ConnId,
    /// Each member's exhibitor connection and id, and its emitter's.
    members: Vec<(ConnId, ClientId, ConnId, ClientId, u16)>,
    writer_id: ClientId,
    writer_seq: u16,
    /// Frames each exhibitor has not acknowledged yet, oldest first.
    unacked: HashMap<ConnId, Vec<Frame>>,
    /// Queue message texts acknowledged with OK, and by how many.
    shown: HashMap<String, u32>,
    /// The writer's replies, in the order they came: seq and OK or not.
    replies: Vec<(u16, bool)>,
}

impl World {
    fn new() -> World {
        let mut router = Router::new(Limits {
            ack_timeout: Duration::from_secs(3),
            ..Limits::default()
        });
        router.set_room_limits(RoomLimits {
            queue_depth: 5,
            queue_wait: Duration::from_secs(2),
            ..RoomLimits::default()
        });
        let mut w = World {
            router,
            out: Recorder::default(),
            now: Instant::now(),
            next_conn: 1,
            members: Vec::new(),
            writer_id: 0,
            writer_seq: 0,
            unacked: HashMap::new(),
            shown: HashMap::new(),
            replies: Vec::new(),
        };
        w.router.connected(WRITER, w.now);
        w.router.on_frame(
            WRITER,
            Frame::bare(Kind::Oi, 1, SERVER_ID, 0),
            w.now,
            &mut w.out,
        );
        w.writer_id = w.take_ok(WRITER);
        for n in 0..3 {
            let (ex, ex_id) = w.named_exhibitor(n);
            let em = w.next_conn;
            w.next_conn += 1;
            w.router.connected(em, w.now);
            w.router
                .hello_accepted(em, None, PLAIN_ROLES, true, &mut w.out)
                .unwrap();
            let frame = Frame::bare(Kind::Oi, ex_id, SERVER_ID, 0);
            w.router.on_frame(em, frame, w.now, &mut w.out);
            let em_id = w.take_ok(em);
            w.members.push((ex, ex_id, em, em_id, 1));
            w.join(n as usize);
        }
        w
    }

    fn named_exhibitor(&mut self, n: u8) -> (ConnId, ClientId) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.router.connected(conn, self.now);
        let name = format!("w{n}");
        self.router
            .hello_accepted(conn, Some(&name), PLAIN_ROLES, true, &mut self.out)
            .unwrap();
        let frame = Frame::bare(Kind::Oi, 0, SERVER_ID, 0);
        self.router.on_frame(conn, frame, self.now, &mut self.out);
        (conn, self.take_ok(conn))
    }

    /// The OK to an OI just sent on `conn`: its id.
    fn take_ok(&mut self, conn: ConnId) -> ClientId {
        let at = self
            .out
            .frames
            .iter()
            .position(|(to, f)| *to == conn && f.as_ref().is_some_and(|f| f.kind == Kind::Ok))
            .expect("an OK to the OI");
        self.out.frames.remove(at).1.expect("a plain frame").dest
    }

    fn join(&mut self, n: usize) {
        let (_, _, em, em_id, seq) = self.members[n];
        self.members[n].4 += 1;
        let header = Header {
            kind: 12,
            origin: em_id,
            dest: SERVER_ID,
            seq,
        };
        self.router
            .join(em, header, true, 1, Some("jobs"), self.now, &mut self.out);
    }

    fn leave(&mut self, n: usize) {
        let (_, _, em, em_id, seq) = self.members[n];
        self.members[n].4 += 1;
        let header = Header {
            kind: 13,
            origin: em_id,
            dest: SERVER_ID,
            seq,
        };
        self.router
            .leave(em, header, Some("jobs"), self.now, &mut self.out);
    }

    /// Files what the router sent to exhibitors as unacknowledged.
    fn collect(&mut self) {
        for (to, frame) in self.out.frames.drain(..) {
            match frame {
                Some(frame) if to == WRITER => {
                    self.replies.push((frame.seq, frame.kind == Kind::Ok));
                }
                Some(frame) if matches!(frame.kind, Kind::Msg | Kind::Flw) => {
                    self.unacked.entry(to).or_default().push(frame);
                }
                Some(_) => {}
                // WHO to an exhibitor awaits an OK like a MSG (any seq: a
                // mismatch is only logged); a ROOMACK to an emitter does not.
                None if self.members.iter().any(|m| m.0 == to) => {
                    let who = Frame::bare(Kind::Ok, 0, 0, u16::MAX); // stands for the WHO
                    self.unacked.entry(to).or_default().push(who);
                }
                None => {}
            }
        }
        for conn in self.out.closed.drain(..) {
            self.unacked.remove(&conn);
        }
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Send => {
                self.writer_seq += 1;
                let text = format!("m{}", self.writer_seq);
                let frame = Frame::msg(
                    self.writer_id,
                    ROOM,
                    self.writer_seq,
                    bytes::Bytes::from(text),
                )
                .unwrap();
                self.router.on_frame(WRITER, frame, self.now, &mut self.out);
            }
            Step::Ack(n, ok) => {
                let (ex, ex_id, ..) = self.members[n as usize];
                let Some(frame) = self
                    .unacked
                    .get_mut(&ex)
                    .and_then(|q| (!q.is_empty()).then(|| q.remove(0)))
                else {
                    return;
                };
                let kind = if ok { Kind::Ok } else { Kind::Erro };
                if ok && frame.kind == Kind::Msg {
                    let text = String::from_utf8(frame.text().unwrap().to_vec()).unwrap();
                    *self.shown.entry(text).or_default() += 1;
                }
                let ack = Frame::bare(kind, ex_id, frame.origin, frame.seq);
                self.router.on_frame(ex, ack, self.now, &mut self.out);
            }
            Step::Reconnect(n) => {
                let (ex, ..) = self.members[n as usize];
                self.router.disconnected(ex, self.now, &mut self.out);
                self.unacked.remove(&ex);
                // Its emitter is dismissed with FLW; a new pair comes.
                let (_, _, em, ..) = self.members[n as usize];
                self.router.disconnected(em, self.now, &mut self.out);
                let (ex, ex_id) = self.named_exhibitor(n);
                let em = self.next_conn;
                self.next_conn += 1;
                self.router.connected(em, self.now);
                self.router
                    .hello_accepted(em, None, PLAIN_ROLES, true, &mut self.out)
                    .unwrap();
                let frame = Frame::bare(Kind::Oi, ex_id, SERVER_ID, 0);
                self.router.on_frame(em, frame, self.now, &mut self.out);
                let em_id = self.take_ok(em);
                self.members[n as usize] = (ex, ex_id, em, em_id, 1);
            }
            Step::LeaveAndJoin(n) => {
                self.leave(n as usize);
                self.join(n as usize);
            }
            Step::Wait(tenths) => {
                self.now += Duration::from_millis(100 * u64::from(tenths));
                self.router.tick(self.now, &mut self.out);
            }
        }
        self.collect();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_queue_room_keeps_its_promises(steps in prop::collection::vec(step(), 1..120)) {
        let mut w = World::new();
        w.collect();
        for s in &steps {
            w.apply(s);
            if let Err(e) = w.router.check_invariants() {
                panic!("after {s:?}: {e}");
            }
        }
        // Everyone acknowledges everything until nothing is left, then the
        // wait bound passes.
        for _ in 0..10_000 {
            let pending: Vec<u8> = (0..3u8)
                .filter(|&n| w.unacked.get(&w.members[n as usize].0).is_some_and(|q| !q.is_empty()))
                .collect();
            if pending.is_empty() {
                break;
            }
            for n in pending {
                w.apply(&Step::Ack(n, true));
            }
        }
        w.apply(&Step::Wait(30));
        w.router.check_invariants().unwrap();
        // The writer got exactly one reply to each MSG, in order; an OK
        // only for a message some member acknowledged with OK.
        let seqs: Vec<u16> = w.replies.iter().map(|r| r.0).collect();
        prop_assert_eq!(seqs, (1..=w.writer_seq).collect::<Vec<_>>());
        for &(seq, ok) in &w.replies {
            prop_assert!(!ok || w.shown.contains_key(&format!("m{seq}")), "OK to m{}", seq);
        }
    }
}
