//! The rooms' rules without sockets (PROTOCOL.md, "Extension: rooms and
//! queues", and "Waiting messages"): a [`Router`] driven by arbitrary
//! sequences of room messages (one or several in a read), TELLs to the
//! members' names, acknowledgements (one, or all a member holds in a read),
//! members leaving, rejoining, going away, dropping and coming back, and time
//! passing. After every step the router's invariants hold; at the end, once
//! every member is back and acknowledges what it holds and the queue's wait
//! bound has passed, every request has had exactly one reply, in order, an
//! OK only for a message a member acknowledged with OK, and every TELL
//! answered "stored" (code 9) answered by its name at least once; no session
//! is sent one waiting message twice, and none once a session answered it.
//! (Two members, or two sessions of a name, may both acknowledge one
//! message: one that left the room or dropped while holding it, and the
//! next. That is the at-least-once PROTOCOL.md states.)

use evchat::proto::ext::{ExtFrame, PLAIN_ROLES, RoomCode};
use evchat::proto::{ClientId, Frame, FrameView, Header, Kind, SERVER_ID};
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, RoomLimits, Router, TellLimits};
use proptest::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What the router sent, in order (WHO and WAITING to an exhibitor,
/// ROOMACK to an emitter as extension frames), and what it closed.
#[derive(Default)]
struct Recorder {
    frames: Vec<(ConnId, Sent)>,
    closed: Vec<ConnId>,
}

enum Sent {
    Plain(Frame),
    Ext(ExtFrame),
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        self.frames.push((to, Sent::Plain(frame.clone())));
    }
    fn send_ext(&mut self, to: ConnId, frame: &ExtFrame) {
        self.frames.push((to, Sent::Ext(frame.clone())));
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
    /// Member `n` acknowledges everything it holds with OK, in one read:
    /// the places it frees are given their turn at the batch's end.
    AckAll(u8),
    /// The writer sends this many MSGs to the queue room in one read.
    SendMany(u8),
    /// The writer sends a TELL to member `n`'s name.
    Tell(u8),
    /// Member `n`'s exhibitor drops, then a new one of the same name comes.
    Reconnect(u8),
    /// Member `n` goes away (both its connections drop), or comes back.
    Away(u8),
    Back(u8),
    /// Member `n` leaves the room, then joins again.
    LeaveAndJoin(u8),
    /// Time passes (tenths of a second).
    Wait(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Send),
        3 => (0..3u8).prop_map(Step::Tell),
        6 => (0..3u8, any::<bool>()).prop_map(|(n, ok)| Step::Ack(n, ok)),
        2 => (0..3u8).prop_map(Step::AckAll),
        1 => (2..6u8).prop_map(Step::SendMany),
        1 => (0..3u8).prop_map(Step::Reconnect),
        1 => (0..3u8).prop_map(Step::Away),
        1 => (0..3u8).prop_map(Step::Back),
        1 => (0..3u8).prop_map(Step::LeaveAndJoin),
        1 => (0..40u8).prop_map(Step::Wait),
    ]
}

const WRITER: ConnId = 0;
/// Each member's prefetch: one holds a message at a time, the others
/// several, so a read of acks can free several places at once.
const PREFETCH: [u8; 3] = [1, 2, 3];
const ROOM: ClientId = 0x4000;

struct World {
    router: Router,
    out: Recorder,
    now: Instant,
    next_conn: ConnId,
    /// Each member's exhibitor connection and id, and its emitter's.
    members: Vec<(ConnId, ClientId, ConnId, ClientId, u16)>,
    /// Whether each member has a session (not away, not closed).
    online: Vec<bool>,
    writer_id: ClientId,
    writer_seq: u16,
    /// Frames each exhibitor has not acknowledged yet, oldest first.
    unacked: HashMap<ConnId, Vec<Frame>>,
    /// Message texts acknowledged with OK, and by how many.
    shown: HashMap<String, u32>,
    /// Message texts a member answered, OK or ERRO: a waiting message
    /// is settled by either.
    answered: HashMap<String, u32>,
    /// How many times each exhibitor was sent each TELL's text.
    told: HashMap<(ConnId, String), u32>,
    /// TELL texts sent again after a member had answered them.
    resent: Vec<String>,
    /// The writer's replies, in the order they came: seq and answer.
    replies: Vec<(u16, Answer)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    Erro,
    /// A TELL's ROOMACK code.
    Code(u8),
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
        // As with --history; a low bound, so that code 11 comes too.
        router.keep_waiting(TellLimits {
            max: 3,
            ..TellLimits::default()
        });
        let mut w = World {
            router,
            out: Recorder::default(),
            now: Instant::now(),
            next_conn: 1,
            members: Vec::new(),
            online: vec![true; 3],
            writer_id: 0,
            writer_seq: 0,
            unacked: HashMap::new(),
            shown: HashMap::new(),
            answered: HashMap::new(),
            told: HashMap::new(),
            resent: Vec::new(),
            replies: Vec::new(),
        };
        w.router.connected(WRITER, w.now);
        // Opted in, without a name: TELL is the extension's.
        w.router
            .hello_accepted(WRITER, None, PLAIN_ROLES, true, &mut w.out)
            .unwrap();
        w.router.on_frame(
            WRITER,
            Frame::bare(Kind::Oi, 1, SERVER_ID, 0),
            w.now,
            &mut w.out,
        );
        w.writer_id = w.take_ok(WRITER);
        for n in 0..3 {
            let member = w.named_session(n);
            w.members.push(member);
            w.join(n as usize);
        }
        w
    }

    /// A new session of member `n`'s name: an exhibitor, then its emitter.
    fn named_session(&mut self, n: u8) -> (ConnId, ClientId, ConnId, ClientId, u16) {
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
        (ex, ex_id, em, em_id, 1)
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
            .position(|(to, f)| *to == conn && matches!(f, Sent::Plain(f) if f.kind == Kind::Ok))
            .expect("an OK to the OI");
        match self.out.frames.remove(at).1 {
            Sent::Plain(ok) => ok.dest,
            Sent::Ext(_) => unreachable!("found as a plain OK"),
        }
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
        self.router.join(
            em,
            header,
            true,
            PREFETCH[n],
            Some("jobs"),
            self.now,
            &mut self.out,
        );
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

    /// Routes `input`, several frames read at once on `conn`, as the server
    /// does: each in place.
    fn route_batch(&mut self, conn: ConnId, input: &[u8]) {
        let mut consumed = 0;
        while let Some((frame, len)) = FrameView::parse(&input[consumed..]).unwrap() {
            consumed += len;
            self.router
                .on_frame_view(conn, &frame, self.now, &mut self.out);
        }
    }

    /// Files what the router sent to exhibitors as unacknowledged.
    fn collect(&mut self) {
        for (to, frame) in self.out.frames.drain(..) {
            match frame {
                Sent::Plain(frame) if to == WRITER => {
                    let answer = if frame.kind == Kind::Ok {
                        Answer::Ok
                    } else {
                        Answer::Erro
                    };
                    self.replies.push((frame.seq, answer));
                }
                Sent::Ext(ExtFrame::RoomAck(ack)) if to == WRITER => {
                    self.replies.push((ack.seq, Answer::Code(ack.code)));
                }
                Sent::Plain(frame) if matches!(frame.kind, Kind::Msg | Kind::Flw) => {
                    if let Some(text) = frame.text().filter(|t| t.starts_with(b"t")) {
                        let text = String::from_utf8(text.to_vec()).unwrap();
                        if self.answered.contains_key(&text) {
                            self.resent.push(text.clone());
                        }
                        *self.told.entry((to, text)).or_default() += 1;
                    }
                    self.unacked.entry(to).or_default().push(frame);
                }
                Sent::Plain(_) => {}
                // WHO and WAITING to an exhibitor await an OK like a MSG
                // (any seq: a mismatch is only logged); a ROOMACK to an
                // emitter does not.
                Sent::Ext(_) if self.members.iter().any(|m| m.0 == to) => {
                    let ext = Frame::bare(Kind::Ok, 0, 0, u16::MAX); // stands for it
                    self.unacked.entry(to).or_default().push(ext);
                }
                Sent::Ext(_) => {}
            }
        }
        for conn in self.out.closed.drain(..) {
            self.unacked.remove(&conn);
            // Cut off (the ack timeout): that name has no session now.
            if let Some(n) = self.members.iter().position(|m| m.0 == conn) {
                self.online[n] = false;
            }
        }
    }

    fn go_away(&mut self, n: usize) {
        let (ex, _, em, ..) = self.members[n];
        self.router.disconnected(ex, self.now, &mut self.out);
        self.unacked.remove(&ex);
        // Its emitter is dismissed with FLW, then goes too.
        self.router.disconnected(em, self.now, &mut self.out);
        self.online[n] = false;
    }

    fn come_back(&mut self, n: usize) {
        self.members[n] = self.named_session(n as u8);
        self.online[n] = true;
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
                if frame.kind == Kind::Msg {
                    let text = String::from_utf8(frame.text().unwrap().to_vec()).unwrap();
                    if ok {
                        *self.shown.entry(text.clone()).or_default() += 1;
                    }
                    *self.answered.entry(text).or_default() += 1;
                }
                let ack = Frame::bare(kind, ex_id, frame.origin, frame.seq);
                self.router.on_frame(ex, ack, self.now, &mut self.out);
            }
            Step::AckAll(n) => {
                let (ex, ex_id, ..) = self.members[n as usize];
                let held = self.unacked.remove(&ex).unwrap_or_default();
                let mut input = Vec::new();
                for frame in held {
                    if frame.kind == Kind::Msg {
                        let text = String::from_utf8(frame.text().unwrap().to_vec()).unwrap();
                        *self.shown.entry(text.clone()).or_default() += 1;
                        *self.answered.entry(text).or_default() += 1;
                    }
                    input.extend_from_slice(
                        &Frame::bare(Kind::Ok, ex_id, frame.origin, frame.seq).to_bytes(),
                    );
                }
                self.route_batch(ex, &input);
            }
            Step::SendMany(count) => {
                let mut input = Vec::new();
                for _ in 0..count {
                    self.writer_seq += 1;
                    let text = bytes::Bytes::from(format!("m{}", self.writer_seq));
                    let frame = Frame::msg(self.writer_id, ROOM, self.writer_seq, text).unwrap();
                    input.extend_from_slice(&frame.to_bytes());
                }
                self.route_batch(WRITER, &input);
            }
            Step::Tell(n) => {
                self.writer_seq += 1;
                let seq = self.writer_seq;
                let header = Header {
                    kind: 17,
                    origin: self.writer_id,
                    dest: SERVER_ID,
                    seq,
                };
                let text = bytes::Bytes::from(format!("t{seq}"));
                let name = format!("W{n}"); // any case is the name
                // The wall clock a stored message is stamped with.
                let now_ms = 1_764_596_702_123 + u64::from(seq);
                self.router.tell_request(
                    WRITER,
                    header,
                    Some(&name),
                    text,
                    now_ms,
                    self.now,
                    &mut self.out,
                );
            }
            Step::Reconnect(n) => {
                if self.online[n as usize] {
                    self.go_away(n as usize);
                }
                self.come_back(n as usize);
            }
            Step::Away(n) if self.online[n as usize] => self.go_away(n as usize),
            Step::Back(n) if !self.online[n as usize] => self.come_back(n as usize),
            Step::Away(_) | Step::Back(_) => {}
            Step::LeaveAndJoin(n) if !self.online[n as usize] => {}
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

/// A queue message given at its arrival goes out before a MSG its emitter
/// sent next, in the same read, to that member's exhibitor directly: the
/// turns a read owes are deferred to its end only for a member's acks.
/// (Found by `evchat check`'s queue-prefetch-asked when its frames came in
/// one read.)
#[test]
fn a_queue_message_goes_out_before_the_next_msg_its_emitter_sent_in_the_same_read() {
    let mut w = World::new();
    w.collect();
    // The members came online in order: the turn starts at member 0.
    let (ex, ex_id, ..) = w.members[0];
    let mut input = Vec::new();
    for (seq, dest, text) in [(1, ROOM, "m1"), (2, ex_id, "direct")] {
        let msg = Frame::msg(w.writer_id, dest, seq, bytes::Bytes::from(text)).unwrap();
        input.extend_from_slice(&msg.to_bytes());
    }
    w.route_batch(WRITER, &input);
    let shown: Vec<&[u8]> = w
        .out
        .frames
        .iter()
        .filter_map(|(to, f)| match f {
            Sent::Plain(f) if *to == ex && f.kind == Kind::Msg => f.text().map(|t| &t[..]),
            _ => None,
        })
        .collect();
    assert_eq!(shown, [&b"m1"[..], &b"direct"[..]]);
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
        // Everyone comes back and acknowledges everything until nothing is
        // left, then the wait bound passes.
        for n in 0..3u8 {
            w.apply(&Step::Back(n));
        }
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
        prop_assert!(w.online.iter().all(|&on| on), "a member cut off at the end");
        // The writer got exactly one reply to each MSG and TELL, in order;
        // an OK only for a message some member acknowledged with OK.
        let seqs: Vec<u16> = w.replies.iter().map(|r| r.0).collect();
        prop_assert_eq!(seqs, (1..=w.writer_seq).collect::<Vec<_>>());
        // Whether each request, by seq from 1, was a TELL (else a MSG).
        let tells: Vec<bool> = steps.iter().flat_map(|s| match *s {
            Step::Send => vec![false],
            Step::SendMany(count) => vec![false; usize::from(count)],
            Step::Tell(_) => vec![true],
            _ => vec![],
        }).collect();
        let is_tell = |seq: u16| tells[usize::from(seq) - 1];
        for &(seq, answer) in &w.replies {
            let text = format!("{}{seq}", if is_tell(seq) { "t" } else { "m" });
            match answer {
                Answer::Ok => prop_assert!(w.shown.contains_key(&text), "OK to {}", text),
                Answer::Erro => {}
                // Stored: answered by a session of the name by the end
                // (at-least-once; an ERRO settles it too).
                Answer::Code(code) if code == RoomCode::Stored as u8 => {
                    prop_assert!(is_tell(seq), "code 9 to a MSG");
                    prop_assert!(w.answered.contains_key(&text), "{} stored, never answered", text);
                }
                Answer::Code(code) => {
                    prop_assert_eq!(code, RoomCode::TooManyWaiting as u8, "to {}", text);
                    prop_assert!(!w.shown.contains_key(&text), "{} refused, yet shown", text);
                }
            }
        }
        // Settled is gone for good: none is sent again once answered.
        prop_assert!(w.resent.is_empty(), "sent again after an answer: {:?}", w.resent);
        // At most once per session: a session is sent a message once.
        for ((conn, text), &times) in &w.told {
            prop_assert_eq!(times, 1, "{} sent {} times to conn {}", text, times, conn);
        }
    }
}
