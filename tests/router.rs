//! The routing rules without sockets: each test feeds frames to a
//! [`Router`] and asserts the frames and closes it emits. Test names carry the
//! rule number from PROTOCOL.md.

use evchat::proto::{Body, ClientId, Frame, Header, Kind, SERVER_ID};
use evchat::server::Limits;
use evchat::testing::{CloseReason, ConnId, Outbox, Router};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Sent(ConnId, Frame),
    Closed(ConnId, ClientId, CloseReason),
    Resumed(ConnId),
}

#[derive(Default)]
struct Recorder {
    events: Vec<Event>,
}

impl Outbox for Recorder {
    fn send(&mut self, to: ConnId, frame: &Frame) {
        self.events.push(Event::Sent(to, frame.clone()));
    }
    fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason) {
        self.events.push(Event::Closed(conn, id, reason));
    }
    fn resume_input(&mut self, conn: ConnId) {
        self.events.push(Event::Resumed(conn));
    }
}

/// A router with a fixed clock and a recorder, plus shorthand for frames.
struct Harness {
    router: Router,
    out: Recorder,
    now: Instant,
}

fn ok(origin: ClientId, dest: ClientId, seq: u16) -> Frame {
    Frame::bare(Kind::Ok, origin, dest, seq)
}
fn erro(origin: ClientId, dest: ClientId, seq: u16) -> Frame {
    Frame::bare(Kind::Erro, origin, dest, seq)
}
fn oi(origin: ClientId) -> Frame {
    Frame::bare(Kind::Oi, origin, SERVER_ID, 0)
}
fn msg(origin: ClientId, dest: ClientId, seq: u16, text: &str) -> Frame {
    Frame::msg(origin, dest, seq, text.as_bytes().to_vec()).unwrap()
}
fn sent(to: ConnId, frame: Frame) -> Event {
    Event::Sent(to, frame)
}

impl Harness {
    fn new() -> Harness {
        Harness::with(Limits::default())
    }

    fn with(limits: Limits) -> Harness {
        Harness {
            router: Router::new(limits),
            out: Recorder::default(),
            now: Instant::now(),
        }
    }

    /// Feeds one frame and returns what the router did.
    fn feed(&mut self, conn: ConnId, frame: Frame) -> Vec<Event> {
        self.router.on_frame(conn, frame, self.now, &mut self.out);
        std::mem::take(&mut self.out.events)
    }

    fn connect(&mut self, conn: ConnId) {
        self.router.connected(conn, self.now);
    }

    /// Connects `conn` as an exhibitor; returns its id.
    fn exhibitor(&mut self, conn: ConnId) -> ClientId {
        self.connect(conn);
        let events = self.feed(conn, oi(0));
        let [Event::Sent(c, reply)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!((*c, reply.kind), (conn, Kind::Ok));
        reply.dest
    }

    /// Connects `conn` as an emitter with OI origin `origin`; returns its id.
    fn emitter(&mut self, conn: ConnId, origin: ClientId) -> ClientId {
        self.connect(conn);
        let events = self.feed(conn, oi(origin));
        let [Event::Sent(c, reply)] = &events[..] else {
            panic!("{events:?}")
        };
        assert_eq!((*c, reply.kind), (conn, Kind::Ok));
        reply.dest
    }

    fn disconnect(&mut self, conn: ConnId) -> Vec<Event> {
        self.router.disconnected(conn, self.now, &mut self.out);
        std::mem::take(&mut self.out.events)
    }

    fn tick_after(&mut self, elapsed: Duration) -> Vec<Event> {
        self.now += elapsed;
        self.router.tick(self.now, &mut self.out);
        std::mem::take(&mut self.out.events)
    }
}

// ---- rule 1: OI ---------------------------------------------------------------

#[test]
fn rule1_exhibitor_gets_lowest_free_exhibitor_id_in_ok_dest() {
    let mut h = Harness::new();
    h.connect(0);
    assert_eq!(h.feed(0, oi(0)), vec![sent(0, ok(SERVER_ID, 4096, 0))]);
    assert_eq!(h.exhibitor(1), 4097);
    assert_eq!(h.router.client_id(0), Some(4096));
}

#[test]
fn rule1_ok_echoes_the_oi_sequence_number() {
    let mut h = Harness::new();
    h.connect(0);
    let events = h.feed(0, Frame::bare(Kind::Oi, 0, SERVER_ID, 77));
    assert_eq!(events, vec![sent(0, ok(SERVER_ID, 4096, 77))]);
}

#[test]
fn rule1_non_zero_origin_makes_an_emitter_paired_only_with_an_exhibitor_id() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    assert_eq!(h.emitter(1, 1), 1);
    assert_eq!(h.emitter(2, 9000), 2);
    assert_eq!(h.emitter(3, ex), 3);
    // Only the emitter that named the exhibitor reaches it through its id.
    assert_eq!(
        h.feed(1, msg(1, 1, 1, "x")),
        vec![sent(1, erro(SERVER_ID, 1, 1))]
    );
    let m = msg(3, 3, 1, "x");
    assert_eq!(h.feed(3, m.clone()), vec![sent(0, m)]);
}

#[test]
fn rule1_pairing_with_an_absent_exhibitor_is_refused_with_erro_and_close() {
    let mut h = Harness::new();
    h.connect(0);
    assert_eq!(
        h.feed(0, oi(4100)),
        vec![
            sent(0, erro(SERVER_ID, 0, 0)),
            Event::Closed(0, 0, CloseReason::Refused)
        ]
    );
    // The refused connection did not consume an id.
    assert_eq!(h.emitter(1, 1), 1);
}

#[test]
fn rule1_an_exhibitor_takes_at_most_one_emitter() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    h.emitter(1, ex);
    h.connect(2);
    assert_eq!(
        h.feed(2, oi(ex)),
        vec![
            sent(2, erro(SERVER_ID, 0, 0)),
            Event::Closed(2, 0, CloseReason::Refused)
        ]
    );
}

#[test]
fn rule1_second_oi_gets_erro_and_the_connection_is_kept() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let again = Frame::bare(Kind::Oi, 0, SERVER_ID, 3);
    assert_eq!(h.feed(0, again), vec![sent(0, erro(SERVER_ID, ex, 3))]);
    let em = h.emitter(1, 1);
    let again = Frame::bare(Kind::Oi, em, SERVER_ID, 1);
    assert_eq!(h.feed(1, again), vec![sent(1, erro(SERVER_ID, em, 1))]);
    assert_eq!(h.router.client_id(0), Some(ex));
    assert_eq!(h.router.client_id(1), Some(em));
}

#[test]
fn rule1_any_frame_before_oi_gets_erro_and_close() {
    for kind in [
        Kind::Msg,
        Kind::Creq,
        Kind::Flw,
        Kind::Ok,
        Kind::Erro,
        Kind::Clist,
    ] {
        let mut h = Harness::new();
        h.connect(0);
        let frame = match kind {
            Kind::Msg => msg(1, 0, 5, "hi"),
            Kind::Clist => Frame::clist(1, 0, 5, vec![1]).unwrap(),
            k => Frame::bare(k, 1, SERVER_ID, 5),
        };
        assert_eq!(
            h.feed(0, frame),
            vec![
                sent(0, erro(SERVER_ID, 0, 5)),
                Event::Closed(0, 0, CloseReason::NotIdentified)
            ],
            "{kind}"
        );
    }
}

#[test]
fn rule1_when_ids_run_out_the_next_oi_is_refused_and_freed_ids_are_reused() {
    let mut h = Harness::new();
    for conn in 0..4095 {
        h.emitter(conn, 1);
    }
    for conn in 4095..8191 {
        h.exhibitor(conn);
    }
    assert_eq!(h.router.client_count(), 8191);
    for (conn, origin) in [(9000, 1), (9001, 0)] {
        h.connect(conn);
        assert_eq!(
            h.feed(conn, oi(origin)),
            vec![
                sent(conn, erro(SERVER_ID, 0, 0)),
                Event::Closed(conn, 0, CloseReason::Refused)
            ]
        );
    }
    h.disconnect(41); // emitter id 42
    h.disconnect(4095 + 7); // exhibitor id 4103
    assert_eq!(h.emitter(9002, 1), 42);
    assert_eq!(h.exhibitor(9003), 4103);
}

// ---- rule 2: anti-spoofing ------------------------------------------------------

#[test]
fn rule2_a_spoofed_origin_gets_erro_with_the_real_id_and_close_and_is_not_forwarded() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    let _other = h.emitter(2, 1);
    assert_eq!(
        h.feed(1, msg(2, ex, 1, "as someone else")),
        vec![
            sent(1, erro(SERVER_ID, em, 1)),
            Event::Closed(1, em, CloseReason::Spoofed)
        ]
    );
    // An exhibitor cannot ack under another id either.
    assert_eq!(
        h.feed(0, ok(4097, SERVER_ID, 0)),
        vec![
            sent(0, erro(SERVER_ID, ex, 0)),
            Event::Closed(0, ex, CloseReason::Spoofed)
        ]
    );
}

// ---- rule 3: MSG ------------------------------------------------------------------

#[test]
fn rule3_broadcast_goes_to_every_exhibitor_unchanged() {
    let mut h = Harness::new();
    h.exhibitor(0);
    h.exhibitor(1);
    let em = h.emitter(2, 1);
    let m = msg(em, 0, 1, "all");
    assert_eq!(h.feed(2, m.clone()), vec![sent(0, m.clone()), sent(1, m)]);
}

#[test]
fn rule3_unicast_goes_to_the_named_exhibitor_only() {
    let mut h = Harness::new();
    h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, 1);
    let m = msg(em, ex2, 1, "you");
    assert_eq!(h.feed(2, m.clone()), vec![sent(1, m)]);
}

#[test]
fn rule3_an_emitter_id_routes_to_its_paired_exhibitor() {
    let mut h = Harness::new();
    h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let paired = h.emitter(2, ex2);
    let other = h.emitter(3, 1);
    let m = msg(other, paired, 1, "via emitter");
    assert_eq!(h.feed(3, m.clone()), vec![sent(1, m)]);
}

#[test]
fn rule3_no_target_gets_erro_at_once() {
    let mut h = Harness::new();
    let em = h.emitter(0, 1);
    // Broadcast with no exhibitor connected.
    assert_eq!(
        h.feed(0, msg(em, 0, 1, "x")),
        vec![sent(0, erro(SERVER_ID, em, 1))]
    );
    h.exhibitor(1);
    let unpaired = h.emitter(2, 1);
    for (seq, dest) in [(2, 4200), (3, unpaired), (4, 77), (5, SERVER_ID), (6, 9000)] {
        assert_eq!(
            h.feed(0, msg(em, dest, seq, "x")),
            vec![sent(0, erro(SERVER_ID, em, seq))],
            "dest {dest}"
        );
    }
}

#[test]
fn rule3_msg_from_an_exhibitor_gets_erro_and_the_connection_is_kept() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    assert_eq!(
        h.feed(0, msg(ex, ex2, 1, "x")),
        vec![sent(0, erro(SERVER_ID, ex, 1))]
    );
    assert_eq!(h.router.client_id(0), Some(ex));
}

// ---- rule 4: end-to-end acknowledgement -----------------------------------------------

#[test]
fn rule4_the_emitter_reply_waits_for_every_target_and_is_ok_if_any_said_ok() {
    let mut h = Harness::new();
    let ex1 = h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, 1);
    h.feed(2, msg(em, 0, 1, "x"));
    assert_eq!(h.feed(0, erro(ex1, em, 1)), vec![]);
    assert_eq!(
        h.feed(1, ok(ex2, em, 1)),
        vec![sent(2, ok(SERVER_ID, em, 1))]
    );
}

#[test]
fn rule4_erro_when_every_target_refused() {
    let mut h = Harness::new();
    let ex1 = h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, 1);
    h.feed(2, msg(em, 0, 1, "x"));
    assert_eq!(h.feed(0, erro(ex1, em, 1)), vec![]);
    assert_eq!(
        h.feed(1, erro(ex2, em, 1)),
        vec![sent(2, erro(SERVER_ID, em, 1))]
    );
}

#[test]
fn rule4_replies_to_one_emitter_go_out_in_request_order() {
    let mut h = Harness::new();
    let ex1 = h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, 1);
    h.feed(2, msg(em, ex1, 1, "slow"));
    h.feed(2, msg(em, ex2, 2, "fast"));
    // No target: settled at once, but queued behind #1 and #2.
    assert_eq!(h.feed(2, msg(em, 4500, 3, "nobody")), vec![]);
    assert_eq!(h.feed(1, ok(ex2, em, 2)), vec![]);
    assert_eq!(
        h.feed(0, ok(ex1, em, 1)),
        vec![
            sent(2, ok(SERVER_ID, em, 1)),
            sent(2, ok(SERVER_ID, em, 2)),
            sent(2, erro(SERVER_ID, em, 3))
        ]
    );
}

#[test]
fn rule4_each_ack_settles_the_oldest_delivery_even_with_a_wrong_seq_or_dest() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    h.feed(1, msg(em, ex, 1, "a"));
    h.feed(1, msg(em, ex, 2, "b"));
    assert_eq!(
        h.feed(0, ok(ex, 1234, 99)),
        vec![sent(1, ok(SERVER_ID, em, 1))]
    );
    assert_eq!(
        h.feed(0, erro(ex, 0, 2)),
        vec![sent(1, erro(SERVER_ID, em, 2))]
    );
    // An ack with nothing outstanding is ignored, the connection kept.
    assert_eq!(h.feed(0, ok(ex, em, 3)), vec![]);
    assert_eq!(h.router.client_id(0), Some(ex));
}

#[test]
fn rule4_a_target_that_disconnects_settles_as_failed() {
    let mut h = Harness::new();
    h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, 1);
    h.feed(2, msg(em, 0, 1, "x"));
    assert_eq!(h.disconnect(0), vec![]);
    assert_eq!(
        h.feed(1, ok(ex2, em, 1)),
        vec![sent(2, ok(SERVER_ID, em, 1))]
    );
    h.feed(2, msg(em, ex2, 2, "y"));
    assert_eq!(h.disconnect(1), vec![sent(2, erro(SERVER_ID, em, 2))]);
}

#[test]
fn rule4_an_exhibitor_silent_past_the_ack_timeout_is_dropped_and_the_request_fails() {
    let mut h = Harness::with(Limits {
        ack_timeout: Duration::from_secs(2),
        ..Limits::default()
    });
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    h.feed(1, msg(em, ex, 1, "x"));
    assert_eq!(h.tick_after(Duration::from_millis(1999)), vec![]);
    assert_eq!(
        h.tick_after(Duration::from_millis(1)),
        vec![
            sent(1, erro(SERVER_ID, em, 1)),
            Event::Closed(0, ex, CloseReason::Unresponsive)
        ]
    );
}

// One emitter's consecutive requests to a session, sent in the same
// millisecond, are kept as one run in its queue of deliveries (router
// `awaiting.rs`); each is acknowledged, timed out and settled as before.

#[test]
fn rule4_acks_in_the_middle_of_one_emitters_run_settle_its_requests_one_by_one() {
    let mut h = Harness::new();
    let ex1 = h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, 1);
    for seq in 1..=4 {
        h.feed(2, msg(em, 0, seq, "x"));
    }
    let view = h.router.session_view(0).unwrap();
    assert_eq!(view.awaiting_ack, 4, "counted per delivery, not per run");
    assert_eq!(h.feed(1, ok(ex2, em, 1)), vec![]);
    assert_eq!(h.feed(1, erro(ex2, em, 2)), vec![]);
    assert_eq!(
        h.feed(0, erro(ex1, em, 1)),
        vec![sent(2, ok(SERVER_ID, em, 1))]
    );
    assert_eq!(h.router.session_view(0).unwrap().awaiting_ack, 3);
    assert_eq!(
        h.feed(0, erro(ex1, em, 2)),
        vec![sent(2, erro(SERVER_ID, em, 2))]
    );
    // The run extends behind the acks taken from its front.
    h.feed(2, msg(em, 0, 5, "x"));
    for seq in 3..=5 {
        assert_eq!(h.feed(0, ok(ex1, em, seq)), vec![]);
    }
    assert_eq!(
        h.feed(1, ok(ex2, em, 3)),
        vec![sent(2, ok(SERVER_ID, em, 3))]
    );
    assert_eq!(
        h.disconnect(1),
        vec![sent(2, ok(SERVER_ID, em, 4)), sent(2, ok(SERVER_ID, em, 5))]
    );
    h.router.check_invariants().unwrap();
}

#[test]
fn rule4_an_ack_with_a_wrong_seq_inside_a_run_still_settles_the_oldest() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    for seq in 1..=3 {
        h.feed(1, msg(em, ex, seq, "x"));
    }
    assert_eq!(
        h.feed(0, ok(ex, em, 1)),
        vec![sent(1, ok(SERVER_ID, em, 1))]
    );
    assert_eq!(
        h.feed(0, erro(ex, em, 3)),
        vec![sent(1, erro(SERVER_ID, em, 2))]
    );
    assert_eq!(
        h.feed(0, ok(ex, em, 99)),
        vec![sent(1, ok(SERVER_ID, em, 3))]
    );
    assert_eq!(h.router.session_view(0).unwrap().awaiting_ack, 0);
}

#[test]
fn rule4_a_target_that_disconnects_with_runs_outstanding_fails_each_request_once() {
    let mut h = Harness::new();
    let ex1 = h.exhibitor(0);
    h.exhibitor(1);
    let em = h.emitter(2, 1);
    let other = h.emitter(3, 2);
    // Two emitters interleaved: the other's request between breaks the run.
    h.feed(2, msg(em, 0, 1, "x"));
    h.feed(2, msg(em, 0, 2, "x"));
    h.feed(3, msg(other, 0, 1, "y"));
    h.feed(2, msg(em, 0, 3, "x"));
    // A request counted down twice would be answered before ex1 acks it.
    assert_eq!(h.disconnect(1), vec![]);
    assert_eq!(
        h.feed(0, ok(ex1, em, 1)),
        vec![sent(2, ok(SERVER_ID, em, 1))]
    );
    assert_eq!(
        h.feed(0, erro(ex1, em, 2)),
        vec![sent(2, erro(SERVER_ID, em, 2))]
    );
    assert_eq!(
        h.feed(0, ok(ex1, other, 1)),
        vec![sent(3, ok(SERVER_ID, other, 1))]
    );
    assert_eq!(h.disconnect(0), vec![sent(2, erro(SERVER_ID, em, 3))]);
    h.router.check_invariants().unwrap();
}

#[test]
fn rule4_deliveries_a_millisecond_apart_time_out_each_at_its_own_deadline() {
    let mut h = Harness::with(Limits {
        ack_timeout: Duration::from_secs(2),
        ..Limits::default()
    });
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    h.feed(1, msg(em, ex, 1, "x"));
    h.feed(1, msg(em, ex, 2, "x"));
    h.now += Duration::from_millis(5);
    h.feed(1, msg(em, ex, 3, "x"));
    h.feed(1, msg(em, ex, 4, "x"));
    assert_eq!(
        h.feed(0, ok(ex, em, 1)),
        vec![sent(1, ok(SERVER_ID, em, 1))]
    );
    assert_eq!(
        h.feed(0, ok(ex, em, 2)),
        vec![sent(1, ok(SERVER_ID, em, 2))]
    );
    // #1 and #2 were due at 2 s; #3 is due 5 ms later.
    assert_eq!(h.tick_after(Duration::from_millis(1999)), vec![]);
    assert_eq!(
        h.tick_after(Duration::from_millis(1)),
        vec![
            sent(1, erro(SERVER_ID, em, 3)),
            sent(1, erro(SERVER_ID, em, 4)),
            Event::Closed(0, ex, CloseReason::Unresponsive)
        ]
    );
}

/// Regression (mutation testing: the incarnation counter frozen at 0 let
/// this ack through): a connection slot reused by a new emitter shares the
/// old one's ConnId and first request number, and an exhibitor's late ack
/// for the old emitter's delivery must settle nothing of the new one's.
#[test]
fn rule4_an_ack_for_the_previous_occupant_of_a_reused_slot_settles_nothing() {
    let mut h = Harness::new();
    let x = h.exhibitor(0);
    let y = h.exhibitor(1);
    let e = h.emitter(2, 1);
    assert_eq!(
        h.feed(2, msg(e, x, 1, "for X")),
        vec![sent(0, msg(e, x, 1, "for X"))]
    );
    assert_eq!(h.disconnect(2), vec![]);
    let e2 = h.emitter(2, 1);
    assert_eq!(e2, e, "the new emitter takes the freed id too");
    assert_eq!(
        h.feed(2, msg(e2, y, 1, "for Y")),
        vec![sent(1, msg(e2, y, 1, "for Y"))]
    );
    assert_eq!(
        h.feed(0, ok(x, e, 1)),
        vec![],
        "the stale ack reached the new emitter"
    );
    assert_eq!(h.feed(1, ok(y, e2, 1)), vec![sent(2, ok(SERVER_ID, e2, 1))]);
}

// ---- rule 5: CREQ -------------------------------------------------------------------

#[test]
fn rule5_creq_sends_clist_of_every_client_ascending_with_the_server_seq() {
    let mut h = Harness::new();
    let ex1 = h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, ex2);
    let creq = Frame::bare(Kind::Creq, em, ex2, 1);
    let clist = |seq| Frame::clist(SERVER_ID, ex2, seq, vec![em, ex1, ex2]).unwrap();
    assert_eq!(h.feed(2, creq), vec![sent(1, clist(0))]);
    // The server numbers its own frames to each connection: 0, 1, ...
    h.feed(2, Frame::bare(Kind::Creq, em, ex2, 2));
    assert_eq!(h.out.events, vec![]);
    assert_eq!(
        h.feed(1, ok(ex2, SERVER_ID, 0)),
        vec![sent(2, ok(SERVER_ID, em, 1))]
    );
    // CREQ to the emitter's own id reaches its exhibitor, CLIST dest = that id.
    let events = h.feed(2, Frame::bare(Kind::Creq, em, em, 3));
    let [Event::Sent(1, list)] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!((list.kind, list.dest, list.seq), (Kind::Clist, em, 2));
    // Broadcast CREQ: one CLIST per exhibitor, dest 0.
    let events = h.feed(2, Frame::bare(Kind::Creq, em, 0, 4));
    let targets: Vec<_> = events
        .iter()
        .map(|e| match e {
            Event::Sent(to, f) => (*to, f.kind, f.dest, f.body.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    let all = Body::Clients(vec![em, ex1, ex2]);
    assert_eq!(
        targets,
        vec![(0, Kind::Clist, 0, all.clone()), (1, Kind::Clist, 0, all)]
    );
}

#[test]
fn rule5_creq_with_no_target_gets_erro() {
    let mut h = Harness::new();
    let em = h.emitter(0, 1);
    let creq = Frame::bare(Kind::Creq, em, 4096, 1);
    assert_eq!(h.feed(0, creq), vec![sent(0, erro(SERVER_ID, em, 1))]);
}

// ---- rule 6: FLW --------------------------------------------------------------------

#[test]
fn rule6_emitter_flw_gets_ok_and_close_and_its_exhibitor_gets_flw() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, ex);
    assert_eq!(
        h.feed(1, Frame::bare(Kind::Flw, em, SERVER_ID, 1)),
        vec![
            sent(1, ok(SERVER_ID, em, 1)),
            sent(0, Frame::bare(Kind::Flw, SERVER_ID, ex, 0)),
            Event::Closed(1, em, CloseReason::Left)
        ]
    );
    // The exhibitor is closed on its OK.
    assert_eq!(
        h.feed(0, ok(ex, SERVER_ID, 0)),
        vec![Event::Closed(0, ex, CloseReason::Dismissed)]
    );
    assert!(h.router.is_empty());
}

#[test]
fn rule6_emitter_flw_ok_waits_behind_earlier_replies() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    h.feed(1, msg(em, ex, 1, "x"));
    assert_eq!(h.feed(1, Frame::bare(Kind::Flw, em, SERVER_ID, 2)), vec![]);
    assert!(!h.router.accepts_input(1), "nothing is read after FLW");
    assert_eq!(
        h.feed(0, ok(ex, em, 1)),
        vec![
            sent(1, ok(SERVER_ID, em, 1)),
            sent(1, ok(SERVER_ID, em, 2)),
            Event::Closed(1, em, CloseReason::Left)
        ]
    );
}

/// Regression (mutation testing: without the arm that ignores an emitter
/// after its FLW, what a client still sends — frames the event loop already
/// had in hand — was routed). Nothing after FLW is forwarded or answered;
/// the replies owed before it still go out, FLW's OK last.
#[test]
fn rule6_frames_an_emitter_sends_after_its_flw_are_ignored() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    h.feed(1, msg(em, ex, 1, "before"));
    assert_eq!(h.feed(1, Frame::bare(Kind::Flw, em, SERVER_ID, 2)), vec![]);
    assert_eq!(h.feed(1, msg(em, ex, 3, "after")), vec![]);
    assert_eq!(h.feed(1, oi(0)), vec![]);
    assert_eq!(h.feed(1, msg(em + 1, ex, 4, "spoofed")), vec![]);
    assert_eq!(
        h.feed(0, ok(ex, em, 1)),
        vec![
            sent(1, ok(SERVER_ID, em, 1)),
            sent(1, ok(SERVER_ID, em, 2)),
            Event::Closed(1, em, CloseReason::Left)
        ]
    );
}

#[test]
fn rule6_an_emitter_that_disconnects_without_flw_still_dismisses_its_exhibitor() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    h.emitter(1, ex);
    assert_eq!(
        h.disconnect(1),
        vec![sent(0, Frame::bare(Kind::Flw, SERVER_ID, ex, 0))]
    );
    // Leaving exhibitors take no new deliveries.
    let em2 = h.emitter(2, 1);
    assert_eq!(
        h.feed(2, msg(em2, 0, 1, "x")),
        vec![sent(2, erro(SERVER_ID, em2, 1))]
    );
}

#[test]
fn rule6_a_dismissed_exhibitor_that_never_acks_is_closed_at_the_ack_timeout() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    h.emitter(1, ex);
    h.disconnect(1);
    assert_eq!(
        h.tick_after(Limits::default().ack_timeout),
        vec![Event::Closed(0, ex, CloseReason::Unresponsive)]
    );
}

#[test]
fn rule6_exhibitor_flw_gets_ok_and_close_unpairs_its_emitter_and_fails_its_deliveries() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, ex);
    h.feed(1, msg(em, ex, 1, "x"));
    assert_eq!(
        h.feed(0, Frame::bare(Kind::Flw, ex, SERVER_ID, 1)),
        vec![
            sent(0, ok(SERVER_ID, ex, 1)),
            sent(1, erro(SERVER_ID, em, 1)),
            Event::Closed(0, ex, CloseReason::Left)
        ]
    );
    // Unpaired now: its own id has no target.
    assert_eq!(
        h.feed(1, msg(em, em, 2, "x")),
        vec![sent(1, erro(SERVER_ID, em, 2))]
    );
    // And the exhibitor id is free for a new pairing.
    let ex_again = h.exhibitor(2);
    assert_eq!(ex_again, ex);
    assert_eq!(h.emitter(3, ex), 2);
}

// ---- rule 7: other input ---------------------------------------------------------------

#[test]
fn rule7_clist_from_a_client_gets_erro_and_close() {
    let mut h = Harness::new();
    let em = h.emitter(0, 1);
    let clist = Frame::clist(em, SERVER_ID, 1, vec![1, 2]).unwrap();
    assert_eq!(
        h.feed(0, clist),
        vec![
            sent(0, erro(SERVER_ID, em, 1)),
            Event::Closed(0, em, CloseReason::BadFrame)
        ]
    );
}

#[test]
fn rule7_an_unknown_type_gets_erro_and_close() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let header = Header {
        kind: 9,
        origin: ex,
        dest: SERVER_ID,
        seq: 4,
    };
    h.router.on_undecodable(0, header, h.now, &mut h.out);
    assert_eq!(
        h.out.events,
        vec![
            sent(0, erro(SERVER_ID, ex, 4)),
            Event::Closed(0, ex, CloseReason::BadFrame)
        ]
    );
}

#[test]
fn rule7_ok_and_erro_from_an_emitter_are_accepted_silently() {
    let mut h = Harness::new();
    let em = h.emitter(0, 1);
    assert_eq!(h.feed(0, ok(em, SERVER_ID, 5)), vec![]);
    assert_eq!(h.feed(0, erro(em, SERVER_ID, 6)), vec![]);
    assert_eq!(h.router.client_id(0), Some(em));
}

// ---- rule 8: shutdown --------------------------------------------------------------------

#[test]
fn rule8_shutdown_sends_flw_to_every_client_and_closes_each_on_its_ok() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    h.connect(2);
    h.router.shutdown(h.now, &mut h.out);
    assert_eq!(
        std::mem::take(&mut h.out.events),
        vec![
            sent(0, Frame::bare(Kind::Flw, SERVER_ID, ex, 0)),
            sent(1, Frame::bare(Kind::Flw, SERVER_ID, em, 0)),
            Event::Closed(2, 0, CloseReason::Shutdown)
        ]
    );
    assert!(!h.router.is_empty(), "both wait for their OK");
    assert_eq!(
        h.feed(1, ok(em, SERVER_ID, 0)),
        vec![Event::Closed(1, em, CloseReason::Dismissed)]
    );
    assert_eq!(
        h.feed(0, ok(ex, SERVER_ID, 0)),
        vec![Event::Closed(0, ex, CloseReason::Dismissed)]
    );
    assert!(h.router.is_empty());
}

// ---- rule 9: limits ------------------------------------------------------------------------

#[test]
fn rule9_handshake_timeout_closes_a_connection_without_oi() {
    let mut h = Harness::with(Limits {
        handshake_timeout: Duration::from_millis(500),
        ..Limits::default()
    });
    h.connect(0);
    h.exhibitor(1);
    assert_eq!(h.tick_after(Duration::from_millis(499)), vec![]);
    assert_eq!(
        h.tick_after(Duration::from_millis(1)),
        vec![Event::Closed(0, 0, CloseReason::HandshakeTimeout)]
    );
    assert_eq!(h.router.connection_count(), 1);
}

/// Regression (mutation testing: a deadline counted backwards from the
/// connection's start passed every test, which ticked only past it).
#[test]
fn rule9_each_connection_gets_the_whole_handshake_timeout_from_its_own_start() {
    let mut h = Harness::with(Limits {
        handshake_timeout: Duration::from_secs(10),
        ..Limits::default()
    });
    h.connect(0);
    h.now += Duration::from_secs(6);
    h.connect(1);
    assert_eq!(
        h.tick_after(Duration::from_secs(4)),
        vec![Event::Closed(0, 0, CloseReason::HandshakeTimeout)],
        "conn 1 has 4 s of its 10 left"
    );
    assert_eq!(h.tick_after(Duration::from_millis(5999)), vec![]);
    assert_eq!(
        h.tick_after(Duration::from_millis(1)),
        vec![Event::Closed(1, 0, CloseReason::HandshakeTimeout)]
    );
    assert!(h.router.is_empty());
}

#[test]
fn rule9_connection_count_counts_identified_and_anonymous_connections() {
    let mut h = Harness::new();
    assert_eq!(h.router.connection_count(), 0);
    h.connect(0);
    h.exhibitor(1);
    h.emitter(2, 1);
    assert_eq!(h.router.connection_count(), 3);
    h.disconnect(1);
    assert_eq!(h.router.connection_count(), 2);
}

#[test]
fn rule9_max_inflight_pauses_an_emitter_until_replies_drain() {
    let mut h = Harness::with(Limits {
        max_inflight: 2,
        ..Limits::default()
    });
    let ex = h.exhibitor(0);
    let em = h.emitter(1, 1);
    h.feed(1, msg(em, ex, 1, "a"));
    assert!(h.router.accepts_input(1));
    h.feed(1, msg(em, ex, 2, "b"));
    assert!(!h.router.accepts_input(1));
    assert_eq!(
        h.feed(0, ok(ex, em, 1)),
        vec![sent(1, ok(SERVER_ID, em, 1)), Event::Resumed(1)]
    );
    assert!(h.router.accepts_input(1));
}

#[test]
fn next_deadline_tracks_the_earliest_timeout() {
    let mut h = Harness::new();
    assert_eq!(h.router.next_deadline(), None);
    h.connect(0);
    assert_eq!(
        h.router.next_deadline(),
        Some(h.now + Limits::default().handshake_timeout)
    );
}

#[test]
fn invariants_hold_through_a_session_with_every_rule() {
    let mut h = Harness::with(Limits {
        max_inflight: 3,
        ..Limits::default()
    });
    let check = |h: &Harness| h.router.check_invariants().unwrap();
    let ex = h.exhibitor(0);
    let ex2 = h.exhibitor(1);
    let em = h.emitter(2, ex);
    check(&h);
    h.feed(2, msg(em, 0, 1, "a"));
    h.feed(2, Frame::bare(Kind::Creq, em, em, 2));
    check(&h);
    h.feed(1, ok(ex2, em, 1));
    h.disconnect(0);
    check(&h);
    // Slot 0 reused by a new emitter while deliveries for the old one exist.
    h.emitter(0, 1);
    check(&h);
    h.feed(2, Frame::bare(Kind::Flw, em, SERVER_ID, 3));
    check(&h);
    h.tick_after(Limits::default().ack_timeout);
    check(&h);
    h.router.shutdown(h.now, &mut h.out);
    check(&h);
}

/// Regression, found by the router fuzz target: `on_undecodable` took no
/// time, so after an idle spell longer than the ack timeout the FLW sent to
/// the exhibitor of an emitter closed for an unknown frame was born overdue
/// and the same turn's tick dropped the exhibitor as unresponsive.
#[test]
fn rule6_an_emitter_closed_for_an_unknown_frame_dismisses_its_exhibitor_with_a_fresh_deadline() {
    let mut h = Harness::new();
    let ex = h.exhibitor(0);
    let em = h.emitter(1, ex);
    h.now += Duration::from_secs(60);
    let header = Header {
        kind: 42,
        origin: em,
        dest: SERVER_ID,
        seq: 1,
    };
    h.router.on_undecodable(1, header, h.now, &mut h.out);
    assert_eq!(
        std::mem::take(&mut h.out.events),
        vec![
            sent(1, erro(SERVER_ID, em, 1)),
            sent(0, Frame::bare(Kind::Flw, SERVER_ID, ex, 0)),
            Event::Closed(1, em, CloseReason::BadFrame)
        ]
    );
    assert_eq!(h.tick_after(Duration::ZERO), vec![]);
    assert_eq!(
        h.router.next_deadline(),
        Some(h.now + Limits::default().ack_timeout)
    );
}

/// The router's side of the history: replies held until their record is
/// durable, and the replay window.
mod history {
    use super::{msg, ok};
    use evchat::proto::{ClientId, Frame, FrameView, Kind, MAX_TEXT_LEN, SERVER_ID};
    use evchat::server::Limits;
    use evchat::testing::{CloseReason, ConnId, Outbox, REPLAY_FRAMING, Router, Sender};
    use std::time::Instant;

    /// A recorded sender with no name (a plain client, or a log from
    /// before names were kept).
    const NO_NAME: Sender<'static> = Sender {
        name: None,
        roles: 0,
    };

    /// An outbox that numbers the MSGs the router accepts, as the server's does
    /// with history on.
    #[derive(Default)]
    struct Keeper {
        sent: Vec<(ConnId, Frame)>,
        accepted: Vec<Frame>,
    }

    impl Outbox for Keeper {
        fn send(&mut self, to: ConnId, frame: &Frame) {
            self.sent.push((to, frame.clone()));
        }
        fn close(&mut self, _: ConnId, _: ClientId, _: CloseReason) {}
        fn resume_input(&mut self, _: ConnId) {}
        fn accepted<'s>(
            &mut self,
            msg: &FrameView<'_>,
            _: impl FnOnce() -> Sender<'s>,
        ) -> Option<u64> {
            self.accepted.push(msg.to_frame());
            Some(self.accepted.len() as u64 - 1)
        }
    }

    struct Scene {
        router: Router,
        out: Keeper,
        now: Instant,
    }

    impl Scene {
        fn new() -> Scene {
            Scene {
                router: Router::new(Limits::default()),
                out: Keeper::default(),
                now: Instant::now(),
            }
        }

        /// Feeds a frame; returns what was sent.
        fn feed(&mut self, conn: ConnId, frame: Frame) -> Vec<(ConnId, Frame)> {
            self.router.on_frame(conn, frame, self.now, &mut self.out);
            std::mem::take(&mut self.out.sent)
        }

        fn join(&mut self, conn: ConnId, origin: ClientId) -> Vec<(ConnId, Frame)> {
            self.router.connected(conn, self.now);
            self.feed(conn, Frame::bare(Kind::Oi, origin, SERVER_ID, 0))
        }

        fn durable(&mut self, settled: u64) -> Vec<(ConnId, Frame)> {
            self.router.durable(settled, self.now, &mut self.out);
            std::mem::take(&mut self.out.sent)
        }
    }

    #[test]
    fn router_holds_a_msg_reply_until_its_record_is_settled() {
        let mut s = Scene::new();
        s.join(0, 0); // exhibitor 4096
        s.join(1, 1); // emitter 1
        assert_eq!(s.feed(1, msg(1, 0, 1, "hi")), [(0, msg(1, 0, 1, "hi"))]);
        assert_eq!(s.out.accepted, [msg(1, 0, 1, "hi")]);
        assert_eq!(s.feed(0, ok(4096, 1, 1)), [], "the record is not settled");
        assert_eq!(s.durable(1), [(1, ok(SERVER_ID, 1, 1))]);
        // Nothing to deliver, or a CREQ: not accepted, answered at once.
        assert_eq!(
            s.feed(1, msg(1, 4999, 2, "nobody")),
            [(1, Frame::bare(Kind::Erro, SERVER_ID, 1, 2))]
        );
        s.feed(1, Frame::bare(Kind::Creq, 1, 0, 3));
        assert_eq!(s.out.accepted.len(), 1);
    }

    #[test]
    fn router_releases_held_replies_in_request_order() {
        let mut s = Scene::new();
        s.join(0, 0);
        s.join(1, 1);
        s.feed(1, msg(1, 4096, 1, "one"));
        s.feed(1, msg(1, 0, 2, "two"));
        s.feed(0, ok(4096, 1, 1));
        s.feed(0, Frame::bare(Kind::Erro, 4096, 1, 2));
        assert_eq!(s.durable(1), [(1, ok(SERVER_ID, 1, 1))]);
        assert_eq!(s.durable(1), []);
        assert_eq!(
            s.durable(2),
            [(1, Frame::bare(Kind::Erro, SERVER_ID, 1, 2))]
        );
    }

    /// The held replies of a turn are released in runs of one emitter's
    /// (issue #26): a run stops at another emitter's and may be settled
    /// part way, a reply that still
    /// waits for its exhibitor holds the ones behind it, and a held
    /// request of a connection that left never settles the next
    /// connection's on the same ConnId.
    #[test]
    fn router_releases_runs_of_held_replies_per_emitter_and_connection() {
        let mut s = Scene::new();
        s.join(0, 0); // exhibitor 4096
        s.join(1, 1);
        s.join(2, 2);
        s.feed(1, msg(1, 4096, 1, "a")); // record 0
        s.feed(1, msg(1, 4096, 2, "b")); // record 1
        s.feed(2, msg(2, 4096, 1, "c")); // record 2
        s.feed(1, msg(1, 4096, 3, "d")); // record 3
        s.feed(0, ok(4096, 1, 1));
        assert_eq!(s.durable(4), [(1, ok(SERVER_ID, 1, 1))]);
        assert_eq!(s.feed(0, ok(4096, 1, 2)), [(1, ok(SERVER_ID, 1, 2))]);
        assert_eq!(s.feed(0, ok(4096, 2, 1)), [(2, ok(SERVER_ID, 2, 1))]);
        assert_eq!(s.feed(0, ok(4096, 1, 3)), [(1, ok(SERVER_ID, 1, 3))]);
        assert_eq!(s.durable(4), []);

        // A run settled part way: the rest of it stays held.
        for seq in 5..=7 {
            s.feed(1, msg(1, 4096, seq, "run")); // records 4, 5, 6
            s.feed(0, ok(4096, 1, seq));
        }
        assert_eq!(
            s.durable(6),
            [(1, ok(SERVER_ID, 1, 5)), (1, ok(SERVER_ID, 1, 6))]
        );
        assert_eq!(s.durable(7), [(1, ok(SERVER_ID, 1, 7))]);

        // Each connection's first request: the same place in its queue.
        s.join(3, 3);
        s.feed(3, msg(3, 4096, 1, "gone")); // record 7
        s.feed(0, ok(4096, 3, 1));
        s.router.disconnected(3, s.now, &mut s.out);
        s.join(3, 3);
        s.feed(3, msg(3, 4096, 1, "again")); // record 8
        s.feed(1, msg(1, 4096, 8, "e")); // record 9
        s.feed(0, ok(4096, 3, 1));
        s.feed(0, ok(4096, 1, 8));
        s.out.sent.clear();
        assert_eq!(s.durable(8), [], "record 7's connection is gone");
        assert_eq!(
            s.durable(10),
            [(3, ok(SERVER_ID, 3, 1)), (1, ok(SERVER_ID, 1, 8))]
        );
    }

    #[test]
    fn router_replay_keeps_only_what_fits_its_byte_cap() {
        let mut s = Scene::new();
        let f = REPLAY_FRAMING;
        let old = |text: &str| (1, bytes::Bytes::from(text.to_string()));
        // Room for "678" and "abc" with their framing, not one byte more.
        let cap = 3 + 3 + 2 * f;
        let too_long = "x".repeat(cap);
        s.router.set_replay(10, cap);
        for (origin, text) in [old("12345"), old("6789"), old("abcde"), old(&too_long)] {
            s.router.recall_broadcast(origin, NO_NAME, &text);
        }
        assert_eq!(s.join(0, 0).len(), 1, "nothing fits after the too-long one");
        s.join(1, 1);
        s.feed(1, msg(1, 0, 1, "12345"));
        s.feed(0, ok(4096, 1, 1));
        s.feed(1, msg(1, 0, 2, "678"));
        s.feed(0, ok(4096, 1, 2));
        s.feed(1, msg(1, 0, 3, "abc"));
        let late = s.join(2, 0);
        assert_eq!(
            late[1..],
            [(2, msg(1, 0, 0, "678")), (2, msg(1, 0, 1, "abc"))],
            "5 + 3 + 3 bytes and three frames pass the cap: the oldest goes"
        );
    }

    /// Regression (review): the cap counted text only, so many empty
    /// broadcasts passed any cap, and a replay queued more than a new
    /// exhibitor's output may hold.
    #[test]
    fn router_replay_counts_each_messages_framing_against_its_cap() {
        let mut s = Scene::new();
        let empty = || (1, bytes::Bytes::new());
        s.router.set_replay(1000, 3 * REPLAY_FRAMING);
        for (origin, text) in std::iter::repeat_with(empty).take(100) {
            s.router.recall_broadcast(origin, NO_NAME, &text);
        }
        let joined = s.join(0, 0);
        assert_eq!(joined.len(), 1 + 3, "the OK and three replays: {joined:?}");
    }

    /// Regression (mutation testing: a larger framing passed every test,
    /// which use the constant itself). What a replay is charged per message is
    /// what the longest MSG adds to its text in an exhibitor's output: header,
    /// text length and, on a WebSocket, the largest binary message header.
    #[test]
    fn router_replay_framing_is_what_the_longest_msg_adds_on_any_transport() {
        let text = vec![b'x'; MAX_TEXT_LEN];
        let wire = Frame::msg(1, 0, 0, text).unwrap().to_bytes().len();
        let added = wire - MAX_TEXT_LEN;
        assert_eq!(
            added + evchat::testing::binary_header_len(wire),
            REPLAY_FRAMING
        );
    }

    /// Regression (mutation testing: a replay's deadline set in the past
    /// passed every test, which acked at once): a replayed message waits for
    /// its ack as long as a live one, and no longer.
    #[test]
    fn router_a_replayed_message_waits_the_ack_timeout_for_its_ack() {
        let mut s = Scene::new();
        s.router.set_replay(2, 1000);
        s.router.recall_broadcast(7, NO_NAME, b"from before");
        assert_eq!(s.join(0, 0).len(), 2, "the OK and the replay");
        let ack_timeout = Limits::default().ack_timeout;
        let just_before = s.now + ack_timeout - std::time::Duration::from_millis(1);
        s.router.tick(just_before, &mut s.out);
        assert_eq!(s.router.client_count(), 1, "dropped before the ack timeout");
        s.router.tick(s.now + ack_timeout, &mut s.out);
        assert_eq!(s.router.client_count(), 0, "kept past the ack timeout");
    }

    #[test]
    fn router_replays_the_last_broadcasts_and_absorbs_their_acks() {
        let mut s = Scene::new();
        s.router.set_replay(2, 1000);
        s.router.recall_broadcast(7, NO_NAME, b"from before");
        let joined = s.join(0, 0);
        assert_eq!(
            joined,
            [
                (0, ok(SERVER_ID, 4096, 0)),
                (0, msg(7, 0, 0, "from before"))
            ]
        );
        s.feed(0, ok(4096, 7, 0));
        s.join(1, 1);
        for (seq, dest, text) in [(1, 0, "b1"), (2, 4096, "private"), (3, 0, "b2")] {
            s.feed(1, msg(1, dest, seq, text));
            s.feed(0, ok(4096, 1, seq));
        }
        // Two kept (the oldest fell out), the unicast never.
        let late = s.join(2, 0);
        assert_eq!(
            late,
            [
                (2, ok(SERVER_ID, 4097, 0)),
                (2, msg(1, 0, 0, "b1")),
                (2, msg(1, 0, 1, "b2"))
            ]
        );
        // A live broadcast before the replays are acknowledged: the first two
        // acks are the replays', absorbed; the third settles the live one.
        s.feed(1, msg(1, 0, 4, "live"));
        s.feed(0, ok(4096, 1, 4));
        let earlier: Vec<_> = (1..=3).map(|seq| (1, ok(SERVER_ID, 1, seq))).collect();
        assert_eq!(s.durable(4), earlier);
        assert_eq!(s.feed(2, ok(4097, 1, 0)), []);
        assert_eq!(s.feed(2, ok(4097, 1, 1)), []);
        assert_eq!(s.feed(2, ok(4097, 1, 4)), [(1, ok(SERVER_ID, 1, 4))]);
        s.router.check_invariants().unwrap();
    }
}
