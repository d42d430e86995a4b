//! A room's history replayed on any node (CLUSTER.md, "History"): real
//! `server` processes with `--cluster` and `--history` over a real
//! `redis-server`, byte for byte over raw TCP. Every node keeps every room
//! message it hears (relayed to it, or copied to it as a SAID record), so a
//! member back on a third node is sent what two other nodes' writers said
//! while it was away, once, oldest first as that node heard them, before
//! anything new; back again on another node it is sent nothing twice; a
//! node killed takes nothing from what the others kept; a copy the engine
//! could not carry is lost to that node only; without `--history` nothing
//! is kept; a malformed SAID record is dropped with a warning and counted.

use crate::cluster::{Redis, acknowledge};
use crate::cluster_rooms::{send_until_delivered, wait_members};
use crate::rooms::{Member, PLAIN, ROOM, S, msg, next_frame, next_msg, ok, roomack, who};
use crate::util::*;
use evchat::proto::{Body, ClientId, Frame, Kind, SERVER_ID};
use std::time::{Duration, Instant};

/// A plain pair on one node: a CREQ from its emitter to its exhibitor
/// shows which ids that node's replica has.
struct Prober {
    em: Raw,
    e: ClientId,
    ex: Raw,
    x: ClientId,
    seq: u16,
}

impl Prober {
    fn new(node: &Server) -> Prober {
        let mut ex = node.raw();
        let x = ex.identify_exhibitor();
        let mut em = node.raw();
        let e = em.identify_emitter(1);
        Prober {
            em,
            e,
            ex,
            x,
            seq: 0,
        }
    }

    /// The ids the node's CLIST lists now.
    fn ids(&mut self) -> Vec<ClientId> {
        self.seq += 1;
        self.em
            .send_frame(&Frame::bare(Kind::Creq, self.e, self.x, self.seq));
        let list = acknowledge(&mut self.ex);
        assert_eq!(
            self.em.expect_frame(),
            Frame::bare(Kind::Ok, SERVER_ID, self.e, self.seq)
        );
        match list.body {
            Body::Clients(ids) => ids,
            other => panic!("not a CLIST: {other:?}"),
        }
    }

    /// Polls until the node's replica no longer has `id`.
    fn wait_gone(&mut self, id: ClientId) {
        let deadline = Instant::now() + TIMEOUT;
        while self.ids().contains(&id) {
            assert!(Instant::now() < deadline, "{id} never forgotten");
            // Polling, bounded by the deadline above.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Polls, by CREQs from `member`'s emitter to its own (opted-in)
/// exhibitor, until its node has heard that `id` shows `name`: the WHO
/// that comes with a CLIST listing it names it. A WHO is sent once per
/// id and name to an exhibitor, so `member` is new each time.
fn wait_shown(member: &mut Member, id: ClientId, name: &[u8]) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seq = member.next_seq();
        let creq = Frame::bare(Kind::Creq, member.em_id, member.ex_id, seq);
        member.em.send(&creq.to_bytes());
        let mut named = false;
        loop {
            let frame = next_frame(&mut member.ex);
            let frame_seq = u16::from_be_bytes([frame[6], frame[7]]);
            match u16::from_be_bytes([frame[0], frame[1]]) {
                10 => {
                    named |= frame[10..12] == id.to_be_bytes() && frame[14..] == *name;
                    member.ex.send(&ok(member.ex_id, S, frame_seq));
                }
                7 => {
                    member.ex.send(&ok(member.ex_id, S, frame_seq));
                    break;
                }
                other => panic!("unexpected frame type {other}: {frame:?}"),
            }
        }
        expect_exact(&mut member.em, &ok(S, member.em_id, seq));
        if named {
            return;
        }
        assert!(Instant::now() < deadline, "{id} never shown as {name:?}");
        // Polling, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `writer` says `texts` in the room, each shown by `carol` (who
/// acknowledges it) and answered OK; the first is sent again until
/// `writer`'s node knows where carol is. Returns the seqs.
fn said_while_away(writer: &mut Member, carol: &mut Member, texts: &[&[u8]]) -> Vec<u16> {
    let mut seqs = Vec::new();
    for (at, text) in texts.iter().enumerate() {
        let seq = if at == 0 {
            send_until_delivered(writer, carol, |id, seq| msg(id, ROOM, seq, text))
        } else {
            let seq = writer.next_seq();
            writer.em.send(&msg(writer.em_id, ROOM, seq, text));
            seq
        };
        assert_eq!(
            next_msg(&mut carol.ex, carol.ex_id),
            msg(writer.em_id, ROOM, seq, text)
        );
        carol.ex.send(&ok(carol.ex_id, writer.em_id, seq));
        expect_exact(&mut writer.em, &ok(S, writer.em_id, seq));
        seqs.push(seq);
    }
    seqs
}

fn history(dir: &TempDir) -> [&str; 2] {
    ["--history", dir.arg()]
}

#[test]
fn a_member_back_on_a_third_node_gets_what_two_nodes_said_while_away_once_in_order() {
    let redis = Redis::start("creplay-three");
    let dirs = ["a", "b", "c"].map(|n| TempDir::new(&format!("creplay-three-{n}")));
    let a = redis.node_with("a", &history(&dirs[0]));
    let b = redis.node_with("b", &history(&dirs[1]));
    let c = redis.node_with("c", &history(&dirs[2]));
    // carol stays online on c; al joins on a, then goes away.
    let mut carol = Member::new(&c, "carol");
    carol.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut al = Member::new(&a, "al");
    al.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let mut walt = Member::new(&a, "walt");
    let mut will = Member::new(&b, "will");
    wait_members(&mut walt, b"ops", 2);
    wait_members(&mut will, b"ops", 2);
    // Made first, so that their exhibitors do not take al's id once free.
    let mut probe = Prober::new(&c);
    let mut probe_b = Prober::new(&b);
    let gone = al.ex_id;
    drop(al);
    // Node c has heard al is gone (else it notes al as sent what comes).
    probe.wait_gone(gone);
    // Two through node a, then two through node b, each shown by carol.
    let by_walt = said_while_away(&mut walt, &mut carol, &[b"one", b"two"]);
    let by_will = said_while_away(&mut will, &mut carol, &[b"three", b"four"]);
    // al is back on node c: what both nodes' writers said comes first,
    // oldest first as c heard them, numbered by c, before anything new.
    let mut al = Member::reclaim(&c, "al");
    let seq = walt.next_seq();
    walt.em.send(&msg(walt.em_id, ROOM, seq, b"five"));
    expect_exact(&mut al.ex, &who(al.ex_id, 0, walt.em_id, PLAIN, b"walt"));
    expect_exact(&mut al.ex, &msg(walt.em_id, ROOM, 1, b"one"));
    expect_exact(&mut al.ex, &msg(walt.em_id, ROOM, 2, b"two"));
    expect_exact(&mut al.ex, &who(al.ex_id, 3, will.em_id, PLAIN, b"will"));
    expect_exact(&mut al.ex, &msg(will.em_id, ROOM, 4, b"three"));
    expect_exact(&mut al.ex, &msg(will.em_id, ROOM, 5, b"four"));
    expect_exact(&mut al.ex, &msg(walt.em_id, ROOM, seq, b"five"));
    for (to, seq) in [(S, 0), (walt.em_id, 1), (walt.em_id, 2), (S, 3)] {
        al.ex.send(&ok(al.ex_id, to, seq));
    }
    for seq in [4, 5] {
        al.ex.send(&ok(al.ex_id, will.em_id, seq));
    }
    al.ex.send(&ok(al.ex_id, walt.em_id, seq));
    assert_eq!(
        next_msg(&mut carol.ex, carol.ex_id),
        msg(walt.em_id, ROOM, seq, b"five")
    );
    carol.ex.send(&ok(carol.ex_id, walt.em_id, seq));
    expect_exact(&mut walt.em, &ok(S, walt.em_id, seq));
    al.ex.expect_silence();
    assert_eq!(by_walt.len() + by_will.len(), 4);
    // Nodes b and a have heard al online on c (and so noted al as sent
    // all they keep); al back again, now on b: nothing is sent twice.
    wait_shown(&mut Member::new(&b, "lookb"), al.ex_id, b"al");
    wait_shown(&mut Member::new(&a, "looka"), al.ex_id, b"al");
    drop(al);
    let mut al = Member::reclaim(&b, "al");
    al.ex.expect_silence();
    // ... nor back on a, where walt said the first two.
    drop(al);
    let mut al = Member::reclaim(&a, "al");
    al.ex.expect_silence();
    // Away once more (b and c have heard), walt says one more; al back on
    // c is sent it there, and nothing else comes that would note al as
    // sent it on b: b does so on hearing al online on c, so back on b
    // al is sent nothing.
    let gone = al.ex_id;
    drop(al);
    probe.wait_gone(gone);
    probe_b.wait_gone(gone);
    said_while_away(&mut walt, &mut carol, &[b"six"]);
    let mut al = Member::reclaim(&c, "al");
    expect_exact(&mut al.ex, &who(al.ex_id, 0, walt.em_id, PLAIN, b"walt"));
    expect_exact(&mut al.ex, &msg(walt.em_id, ROOM, 1, b"six"));
    al.ex.send(&ok(al.ex_id, S, 0));
    al.ex.send(&ok(al.ex_id, walt.em_id, 1));
    al.ex.expect_silence();
    wait_shown(&mut Member::new(&b, "lookbb"), al.ex_id, b"al");
    drop(al);
    let mut al = Member::reclaim(&b, "al");
    al.ex.expect_silence();
}

#[test]
fn a_killed_node_s_room_messages_are_still_replayed_from_the_copies_others_kept() {
    let redis = Redis::start("creplay-kill");
    let dirs = ["a", "b", "c"].map(|n| TempDir::new(&format!("creplay-kill-{n}")));
    let mut a = redis.node_with("a", &history(&dirs[0]));
    let b = redis.node_with("b", &history(&dirs[1]));
    let c = redis.node_with("c", &history(&dirs[2]));
    let mut carol = Member::new(&c, "carol");
    carol.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut al = Member::new(&b, "al");
    al.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    // Node b keeps serving someone while al is away (a node holding no
    // client is copied nothing: CLUSTER.md).
    let mut will = Member::new(&b, "will");
    let mut walt = Member::new(&a, "walt");
    wait_members(&mut walt, b"ops", 2);
    drop(al);
    // Node a knows will is on b (so it copies to b).
    let mut probe = Prober::new(&a);
    let deadline = Instant::now() + TIMEOUT;
    while !probe.ids().contains(&will.ex_id) {
        assert!(Instant::now() < deadline, "node a never heard of will");
        // Polling, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(20));
    }
    said_while_away(&mut walt, &mut carol, &[b"one", b"two"]);
    // Node a, where they were said, dies.
    a.proc.signal(libc::SIGKILL);
    a.proc.wait();
    // al back on b gets them from b's copies, told walt's name as kept.
    let mut al = Member::reclaim(&b, "al");
    expect_exact(&mut al.ex, &who(al.ex_id, 0, walt.em_id, PLAIN, b"walt"));
    expect_exact(&mut al.ex, &msg(walt.em_id, ROOM, 1, b"one"));
    expect_exact(&mut al.ex, &msg(walt.em_id, ROOM, 2, b"two"));
    al.ex.send(&ok(al.ex_id, S, 0));
    al.ex.send(&ok(al.ex_id, walt.em_id, 1));
    al.ex.send(&ok(al.ex_id, walt.em_id, 2));
    al.ex.expect_silence();
    will.ex.expect_silence();
}

#[test]
fn a_copy_the_engine_could_not_carry_is_lost_to_that_node_only() {
    let mut redis = Redis::start_durable("creplay-down");
    let dirs = ["a", "b"].map(|n| TempDir::new(&format!("creplay-down-{n}")));
    let a = redis.node_with("a", &history(&dirs[0]));
    let b = redis.node_with("b", &history(&dirs[1]));
    // carol online on a, where walt writes: the room is shown there alone.
    let mut carol = Member::new(&a, "carol");
    carol.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut al = Member::new(&b, "al");
    al.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let mut bo = Member::new(&b, "bo");
    bo.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 3, b"ops")));
    let will = Member::new(&b, "will");
    let mut walt = Member::new(&a, "walt");
    wait_members(&mut walt, b"ops", 3);
    let gone_ids = [al.ex_id, al.em_id, bo.ex_id, bo.em_id];
    drop(al);
    drop(bo);
    // Node a knows b holds a client (will): it would copy to b.
    let mut probe = Prober::new(&a);
    let deadline = Instant::now() + TIMEOUT;
    while !probe.ids().contains(&will.ex_id) {
        assert!(Instant::now() < deadline, "node a never heard of will");
        // Polling, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(20));
    }
    // Their names are free in Redis, and node b holds none of their ids
    // (else held until b's incarnation ends, a release being refused while
    // Redis is down). The ids too: node b submits a session's name release
    // before its ids' (and may see the two connections close in two
    // turns), so a name free does not mean its ids are; an exhibitor id
    // still showing "al" on b when Redis dies is read again by node a at
    // its new subscription, which then takes al as online on b and notes
    // al as sent "one". Not held by b, rather than not held at all: the
    // prober on a may have claimed one of them since (the lowest free id).
    let mut con = redis.client();
    let mut hget = |key: &str, field: String| {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query::<Option<String>>(&mut con)
            .unwrap()
    };
    let node_b = hget("evchat:owner", will.ex_id.to_string()).expect("will's id held by b");
    wait_until("al's and bo's names and ids released on b", || {
        ["al", "bo"]
            .iter()
            .all(|name| hget("evchat:names", name.to_string()).is_none())
            && gone_ids
                .iter()
                .all(|id| hget("evchat:owner", id.to_string()).as_ref() != Some(&node_b))
    });
    drop(con);
    // Redis dies; walt's message is shown on a, and its copy for b fails.
    redis.kill();
    said_while_away(&mut walt, &mut carol, &[b"one"]);
    a.proc
        .stderr
        .skip_until("the failed publish", TIMEOUT, |line| {
            line.contains("cluster: engine call failed")
        });
    // Back within the lease: both nodes subscribe again, no fence.
    redis.restart();
    for node in [&a, &b] {
        node.proc
            .stderr
            .skip_until("the new subscription", TIMEOUT, |line| {
                line.contains("cluster: resubscribed")
            });
    }
    // bo back on b: the copy never came, nothing is sent (node a, hearing
    // bo online on b, notes bo as sent it: CLUSTER.md, "History").
    let mut bo = Member::reclaim(&b, "bo");
    bo.ex.expect_silence();
    // al back on a, where it was said, is sent it there.
    let mut al = Member::reclaim(&a, "al");
    expect_exact(&mut al.ex, &who(al.ex_id, 0, walt.em_id, PLAIN, b"walt"));
    expect_exact(&mut al.ex, &msg(walt.em_id, ROOM, 1, b"one"));
}

#[test]
fn without_history_no_node_keeps_a_room_message_for_a_member_away() {
    let redis = Redis::start("creplay-none");
    let (a, c) = (redis.node("a"), redis.node("c"));
    let mut carol = Member::new(&c, "carol");
    carol.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut al = Member::new(&a, "al");
    al.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let mut walt = Member::new(&a, "walt");
    wait_members(&mut walt, b"ops", 2);
    drop(al);
    said_while_away(&mut walt, &mut carol, &[b"one"]);
    for node in [&c, &a] {
        let mut al = Member::reclaim(node, "al");
        al.ex.expect_silence();
    }
}

#[test]
fn a_malformed_said_record_is_dropped_with_a_warning_and_counted() {
    let redis = Redis::start("creplay-bad");
    let dir = TempDir::new("creplay-bad-a");
    let a = redis.node_with("a", &history(&dir));
    let mut al = Member::new(&a, "al");
    al.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut con = redis.client();
    let channels = redis.node_channels(&mut con);
    assert_eq!(channels.len(), 1, "{channels:?}");
    // SAID (16) records from a node "99": a MSG to a client id, not a
    // room; then a MSG to the room cut one byte short.
    let to_client = msg(1, 4096, 1, b"hi");
    let to_room = msg(1, ROOM, 1, b"hi");
    for (frame, error) in [
        (&to_client[..], "not to a room id"),
        (&to_room[..to_room.len() - 1], "not one whole MSG"),
    ] {
        let mut batch = b"E\x01".to_vec();
        batch.extend_from_slice(&99u64.to_be_bytes());
        batch.push(16);
        batch.extend_from_slice(&(frame.len() as u32).to_be_bytes());
        batch.extend_from_slice(frame);
        let heard: i64 = redis::cmd("PUBLISH")
            .arg(&channels[0])
            .arg(batch)
            .query(&mut con)
            .unwrap();
        assert_eq!(heard, 1);
        let (_, line) = a
            .proc
            .stderr
            .skip_until("the dropped batch", TIMEOUT, |line| {
                line.contains("malformed batch dropped")
            });
        assert!(line.contains(error), "{line}");
    }
    // Nothing reached the member; nothing was kept for it: back again,
    // it is sent nothing.
    al.ex.expect_silence();
    drop(al);
    let mut al = Member::reclaim(&a, "al");
    al.ex.expect_silence();
    // Counted: the node says so when it stops.
    a.proc.signal(libc::SIGTERM);
    let (_, line) = a
        .proc
        .stderr
        .skip_until("the traffic count", TIMEOUT, |line| {
            line.contains("cluster: traffic between nodes")
        });
    assert!(line.contains("batches_dropped=2"), "{line}");
    assert!(line.contains("said_in=0"), "{line}");
}
