//! Rooms across nodes (CLUSTER.md, "Rooms across nodes"): real `server`
//! processes with `--cluster` over a real `redis-server`, byte for byte
//! over raw TCP. One room name has one id on every node, even joined on
//! two at once (and of a room and a queue raced, one wins); membership
//! belongs to the name system-wide, so a member signed in on any node
//! receives the room; a room MSG reaches members on three nodes with the
//! emitter's OK after all three acknowledged, and a member's node killed
//! during a delivery gives ERRO, never OK; with Redis gone a JOIN is
//! refused as a full table is; a TELL reaches its addressee online on
//! another node.

use crate::cluster::Redis;
use crate::rooms::{
    Member, PLAIN, ROOM, S, erro, join, msg, next_frame, ok, refused, roomack, roomlist, rooms, who,
};
use crate::util::*;
use evchat::proto::ClientId;
use std::time::{Duration, Instant};

/// How long a killed node may hold its deliveries (its lease, then a
/// reap; the bound for ids).
pub(crate) const FAILED_WITHIN: Duration = Duration::from_secs(10);

/// Asks ROOMS through `member` until `room` is listed with `count`
/// members: the node's replica has heard every JOIN made elsewhere.
pub(crate) fn wait_members(member: &mut Member, room: &[u8], count: u16) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seq = member.next_seq();
        member.em.send(&rooms(member.em_id, seq));
        let list = next_frame(&mut member.em);
        let mut entry = Vec::new();
        entry.extend_from_slice(&count.to_be_bytes());
        entry.push(room.len() as u8);
        entry.extend_from_slice(room);
        if list.windows(entry.len()).any(|w| w == entry.as_slice()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never listed with {count} members",
            String::from_utf8_lossy(room)
        );
        // Polling, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends what `request` makes (for the writer's id and a seq) until it
/// is delivered to `member`'s exhibitor (bytes arrive there) rather than
/// refused (ERRO: no target known yet); returns the delivered one's seq.
/// Polls both connections without blocking, with a deadline.
pub(crate) fn send_until_delivered(
    writer: &mut Member,
    member: &mut Member,
    request: impl Fn(ClientId, u16) -> Vec<u8>,
) -> u16 {
    let deadline = Instant::now() + TIMEOUT;
    'send: loop {
        let seq = writer.next_seq();
        writer.em.send(&request(writer.em_id, seq));
        loop {
            if member.ex.bytes_ready() {
                return seq;
            }
            if let Some(reply) = writer.em.try_frame() {
                let reply = reply.expect("the writer is still connected");
                assert_eq!(reply.to_bytes().to_vec(), erro(writer.em_id, seq));
                assert!(Instant::now() < deadline, "never delivered");
                // Polling, bounded by the deadline above.
                std::thread::sleep(Duration::from_millis(20));
                continue 'send;
            }
            assert!(Instant::now() < deadline, "neither delivered nor refused");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A ROOMACK's code and room id, from its bytes.
fn ack_code_and_room(ack: &[u8]) -> (u8, ClientId) {
    assert_eq!(&ack[..2], &[0, 15], "a ROOMACK: {ack:?}");
    (ack[10], u16::from_be_bytes([ack[12], ack[13]]))
}

#[test]
fn a_room_message_reaches_members_on_three_nodes_and_its_ok_waits_for_all_three() {
    let redis = Redis::start("crooms-three");
    let nodes = [redis.node("a"), redis.node("b"), redis.node("c")];
    let names = ["alice", "bob", "carol"];
    let mut members: Vec<Member> = nodes
        .iter()
        .zip(names)
        .map(|(node, name)| Member::new(node, name))
        .collect();
    // One id on every node; the count is the system's.
    for (count, m) in members.iter_mut().enumerate() {
        let count = count as u16 + 1;
        m.join("ops", false, |d, s| {
            roomack(d, s, 0, (ROOM, 0, count, b"ops"))
        });
    }
    let mut writer = Member::new(&nodes[0], "dave");
    wait_members(&mut writer, b"ops", 3);
    let seq = writer.next_seq();
    let text = b"deploy done";
    writer.em.send(&msg(writer.em_id, ROOM, seq, text));
    for m in &mut members {
        // Told who the writer is, then the MSG as it was sent.
        expect_exact(&mut m.ex, &who(m.ex_id, 0, writer.em_id, PLAIN, b"dave"));
        expect_exact(&mut m.ex, &msg(writer.em_id, ROOM, seq, text));
    }
    writer.ex.expect_silence();
    for m in &mut members[..2] {
        m.ex.send(&ok(m.ex_id, S, 0));
        m.ex.send(&ok(m.ex_id, writer.em_id, seq));
    }
    // Two of three acknowledged: the emitter still waits.
    writer.em.expect_silence();
    let carol = &mut members[2];
    carol.ex.send(&ok(carol.ex_id, S, 0));
    carol.ex.send(&ok(carol.ex_id, writer.em_id, seq));
    expect_exact(&mut writer.em, &ok(S, writer.em_id, seq));
}

#[test]
fn one_room_name_joined_on_two_nodes_at_once_has_one_id() {
    let redis = Redis::start("crooms-race");
    let a = redis.node("a");
    let b = redis.node("b");
    for round in 0..8 {
        let mut on_a = Member::new(&a, &format!("ann{round}"));
        let mut on_b = Member::new(&b, &format!("ben{round}"));
        // The same room in two spellings, sent at once to the two nodes.
        let (seq_a, seq_b) = (on_a.next_seq(), on_b.next_seq());
        let room = format!("race{round}");
        on_a.em
            .send(&join(on_a.em_id, seq_a, false, room.as_bytes()));
        on_b.em.send(&join(
            on_b.em_id,
            seq_b,
            false,
            room.to_uppercase().as_bytes(),
        ));
        let (ack_a, ack_b) = (next_frame(&mut on_a.em), next_frame(&mut on_b.em));
        let (code_a, id_a) = ack_code_and_room(&ack_a);
        let (code_b, id_b) = ack_code_and_room(&ack_b);
        assert_eq!((code_a, code_b), (0, 0), "round {round}: both joined");
        assert_eq!(id_a, id_b, "round {round}: one id for one name");
        // Rounds keep their rooms: each new one takes the next free id.
        assert_eq!(
            id_a,
            ROOM + round as u16,
            "round {round}: the lowest free id"
        );
        // The first JOIN the script ran spelled it; both say so.
        assert_eq!(ack_a[17..], ack_b[17..], "round {round}: one spelling");
        // Counts 1 and 2, in the order the script ran them.
        let mut counts = [ack_a[15], ack_b[15]];
        counts.sort_unstable();
        assert_eq!(counts, [1, 2], "round {round}");

        // A room and a queue of one name raced: one wins, the other is
        // told the room is of the other kind (code 8), as on one node.
        let (seq_a, seq_b) = (on_a.next_seq(), on_b.next_seq());
        let kind = format!("kind{round}");
        on_a.em
            .send(&join(on_a.em_id, seq_a, false, kind.as_bytes()));
        on_b.em
            .send(&join(on_b.em_id, seq_b, true, kind.as_bytes()));
        let (ack_a, ack_b) = (next_frame(&mut on_a.em), next_frame(&mut on_b.em));
        let mut codes = [ack_code_and_room(&ack_a).0, ack_code_and_room(&ack_b).0];
        codes.sort_unstable();
        assert_eq!(codes, [0, 8], "round {round}: one kind wins");
        let loser = if ack_a[10] == 8 {
            (ack_a, on_a.em_id, seq_a)
        } else {
            (ack_b, on_b.em_id, seq_b)
        };
        assert_eq!(loser.0, refused(loser.1, loser.2, 8));
        // Both leave the queue or room they are in: the kind room is
        // gone (its id is free), the race room stays for the next round.
        for m in [&mut on_a, &mut on_b] {
            let seq = m.next_seq();
            m.em.send(&crate::rooms::leave(m.em_id, seq, kind.as_bytes()));
            let (code, _) = ack_code_and_room(&next_frame(&mut m.em));
            assert!(code == 0 || code == 4, "round {round}: LEAVE code {code}");
        }
    }
}

#[test]
fn a_member_gone_from_one_node_and_signed_in_on_another_is_still_a_member() {
    let redis = Redis::start("crooms-move");
    let a = redis.node("a");
    let b = redis.node("b");
    let c = redis.node("c");
    let mut alice = Member::new(&a, "alice");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut writer = Member::new(&b, "walt");
    // alice's sessions leave node a (she is still a member) ...
    drop(alice);
    // ... and she signs in on node c, once her name is free again.
    let mut alice = Member::reclaim(&c, "alice");
    // Writing on node b reaches her on c once b has heard she is online
    // there (her exhibitor's name, on the change channel): until then the
    // MSG has no target and is answered ERRO at once, and is sent again.
    let room_msg = |id, seq| msg(id, ROOM, seq, b"hello alice");
    let seq = send_until_delivered(&mut writer, &mut alice, room_msg);
    expect_exact(
        &mut alice.ex,
        &who(alice.ex_id, 0, writer.em_id, PLAIN, b"walt"),
    );
    expect_exact(&mut alice.ex, &msg(writer.em_id, ROOM, seq, b"hello alice"));
    alice.ex.send(&ok(alice.ex_id, S, 0));
    alice.ex.send(&ok(alice.ex_id, writer.em_id, seq));
    expect_exact(&mut writer.em, &ok(S, writer.em_id, seq));
    // She leaves the room on node c: code 0, no member left.
    let leave_seq = alice.next_seq();
    alice
        .em
        .send(&crate::rooms::leave(alice.em_id, leave_seq, b"ops"));
    expect_exact(
        &mut alice.em,
        &roomack(alice.em_id, leave_seq, 0, (ROOM, 0, 0, b"ops")),
    );
}

#[test]
fn a_member_s_node_killed_during_a_room_delivery_gives_erro_never_ok() {
    let redis = Redis::start("crooms-kill");
    let a = redis.node("a");
    let mut b = redis.node("b");
    let mut bob = Member::new(&b, "bob");
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut writer = Member::new(&a, "walt");
    wait_members(&mut writer, b"ops", 1);
    let seq = writer.next_seq();
    writer
        .em
        .send(&msg(writer.em_id, ROOM, seq, b"are you there"));
    // Delivered on node b, never acknowledged.
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 0, writer.em_id, PLAIN, b"walt"),
    );
    expect_exact(&mut bob.ex, &msg(writer.em_id, ROOM, seq, b"are you there"));
    b.proc.signal(libc::SIGKILL);
    b.proc.wait();
    let got = writer
        .em
        .frame_within(FAILED_WITHIN)
        .expect("still connected");
    assert_eq!(
        got.to_bytes().to_vec(),
        erro(writer.em_id, seq),
        "ERRO, never OK, once the member's node is gone"
    );
    drop(bob);
}

#[test]
fn with_redis_gone_a_join_is_refused_as_a_full_table_is() {
    let redis = Redis::start("crooms-down");
    let a = redis.node("a");
    let mut alice = Member::new(&a, "alice");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    redis.proc.signal(libc::SIGKILL);
    // A room no node has made: the engine cannot be asked (code 7).
    let seq = alice.next_seq();
    alice.em.send(&join(alice.em_id, seq, false, b"news"));
    expect_exact(&mut alice.em, &refused(alice.em_id, seq, 7));
    // A JOIN of a room she is in is answered here, without the engine.
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    // A LEAVE is the engine's to decide: code 7 too, and she stays in.
    let seq = alice.next_seq();
    alice
        .em
        .send(&crate::rooms::leave(alice.em_id, seq, b"ops"));
    expect_exact(&mut alice.em, &refused(alice.em_id, seq, 7));
    // Traffic within the node goes on: the room's local member gets it.
    let seq = alice.next_seq();
    alice.em.send(&msg(alice.em_id, ROOM, seq, b"local"));
    expect_exact(
        &mut alice.ex,
        &who(alice.ex_id, 0, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut alice.ex, &msg(alice.em_id, ROOM, seq, b"local"));
}

/// TELL(`name`, `text`) from `origin` (PROTOCOL.md, "Waiting messages").
fn tell(origin: ClientId, seq: u16, name: &[u8], text: &[u8]) -> Vec<u8> {
    let mut wire = crate::identity::header(17, origin, S, seq);
    wire.extend_from_slice(&((1 + name.len() + text.len()) as u16).to_be_bytes());
    wire.push(name.len() as u8);
    wire.extend_from_slice(name);
    wire.extend_from_slice(text);
    wire
}

#[test]
fn a_tell_reaches_its_addressee_online_on_another_node_answered_like_a_msg() {
    let redis = Redis::start("crooms-tell");
    let a = redis.node("a");
    let b = redis.node("b");
    let mut bob = Member::new(&b, "bob");
    let mut alice = Member::new(&a, "alice");
    // Until node a has heard bob's exhibitor show his name, bob is offline
    // there (no history: ERRO) and the TELL is sent again.
    let to_bob = |id, seq| tell(id, seq, b"BOB", b"hi");
    let seq = send_until_delivered(&mut alice, &mut bob, to_bob);
    // As on one node: WHO, then MSG(teller, bob's exhibitor, the TELL's seq).
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 0, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut bob.ex, &msg(alice.em_id, bob.ex_id, seq, b"hi"));
    alice.em.expect_silence();
    bob.ex.send(&ok(bob.ex_id, S, 0));
    bob.ex.send(&ok(bob.ex_id, alice.em_id, seq));
    expect_exact(&mut alice.em, &ok(S, alice.em_id, seq));
    // Refused on node b: ERRO, as a MSG refused.
    let seq = alice.next_seq();
    alice.em.send(&tell(alice.em_id, seq, b"bob", b"again"));
    expect_exact(&mut bob.ex, &msg(alice.em_id, bob.ex_id, seq, b"again"));
    bob.ex.send(&header_erro(bob.ex_id, alice.em_id, seq));
    expect_exact(&mut alice.em, &erro(alice.em_id, seq));
}

/// On node `a` (with history): alice online, bob known there and then
/// offline everywhere, and alice's TELL of `text` to `spelled` (bob's name
/// in some case) stored for him (ROOMACK code 9). Returns alice.
fn told_while_away(a: &Server, spelled: &[u8], text: &[u8]) -> Member {
    let mut alice = Member::new(a, "alice");
    let bob = Member::new(a, "bob");
    let mut writer = a.raw();
    let writer_id = writer.identify_emitter(1);
    crate::rooms::away(&mut writer, writer_id, bob);
    let seq = alice.next_seq();
    alice.em.send(&tell(alice.em_id, seq, spelled, text));
    expect_exact(
        &mut alice.em,
        &roomack(alice.em_id, seq, 9, (0, 0, 0, spelled)),
    );
    alice
}

#[test]
fn a_waiting_message_is_delivered_when_its_name_comes_online_on_another_node() {
    let redis = Redis::start("crooms-waiting");
    let dir = TempDir::new("crooms-waiting-a");
    // Node a keeps what is told on it (history); node b keeps nothing.
    let a = redis.node_with("a", &["--history", dir.arg(), "--fsync", "always"]);
    let b = redis.node("b");
    // bob is known on node a (seen there), then offline everywhere.
    let alice = told_while_away(&a, b"Bob", b"see you");
    // bob signs in on node b: node a sends what waits for him there, as
    // one node would: WAITING, WHO, the MSG, numbered by b.
    let mut bob = Member::reclaim(&b, "bob");
    let frame = next_frame(&mut bob.ex);
    let mut want = crate::identity::header(18, S, bob.ex_id, 0);
    want.extend_from_slice(&[0, 8]);
    assert_eq!(frame[..10], want[..], "a WAITING frame: {frame:?}");
    let stored_ms = u64::from_be_bytes(frame[10..18].try_into().unwrap());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        stored_ms <= now_ms && now_ms - stored_ms < 60_000,
        "{stored_ms}"
    );
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 1, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut bob.ex, &msg(alice.em_id, bob.ex_id, 2, b"see you"));
    for seq in 0..=2 {
        bob.ex.send(&ok(bob.ex_id, S, seq));
    }
    bob.ex.expect_silence();
    // Settled on node a by bob's answer on b: back on a, he gets nothing.
    drop(bob);
    let mut bob = Member::reclaim(&a, "bob");
    bob.ex.expect_silence();
}

/// The addressee answering a waiting message ERRO on another node than the
/// one keeping it settles the message there, as one node's ERRO does: its
/// node tells the ERRO back as a REFUSED ACK. Before, the ACK told no ERRO
/// from a departure, and the message waited again (issue 25).
#[test]
fn a_waiting_message_answered_erro_on_another_node_is_settled_as_on_one_node() {
    let redis = Redis::start("crooms-waiting-erro");
    let dir = TempDir::new("crooms-waiting-erro-a");
    let a = redis.node_with("a", &["--history", dir.arg(), "--fsync", "always"]);
    let b = redis.node("b");
    let alice = told_while_away(&a, b"bob", b"no thanks");
    let mut bob = Member::reclaim(&b, "bob");
    assert_eq!(next_frame(&mut bob.ex)[..2], [0, 18], "WAITING first");
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 1, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut bob.ex, &msg(alice.em_id, bob.ex_id, 2, b"no thanks"));
    bob.ex.send(&ok(bob.ex_id, S, 0));
    bob.ex.send(&ok(bob.ex_id, S, 1));
    bob.ex.send(&header_erro(bob.ex_id, alice.em_id, 2));
    bob.ex.expect_silence();
    // Settled on node a: back there, bob is sent nothing.
    drop(bob);
    let mut bob = Member::reclaim(&a, "bob");
    bob.ex.expect_silence();
}

#[test]
fn a_waiting_message_held_on_a_killed_node_waits_again_and_is_delivered_back_home() {
    let redis = Redis::start("crooms-waiting-kill");
    let dir = TempDir::new("crooms-waiting-kill-a");
    let a = redis.node_with("a", &["--history", dir.arg(), "--fsync", "always"]);
    let mut b = redis.node("b");
    let alice = told_while_away(&a, b"bob", b"are you there");
    // Sent to bob on node b, which dies before he answers.
    let mut bob = Member::reclaim(&b, "bob");
    assert_eq!(next_frame(&mut bob.ex)[..2], [0, 18], "WAITING first");
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 1, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(
        &mut bob.ex,
        &msg(alice.em_id, bob.ex_id, 2, b"are you there"),
    );
    b.proc.signal(libc::SIGKILL);
    b.proc.wait();
    drop(bob);
    // Not lost (at-least-once): bob back on node a gets it there, once
    // his name is free again (the reap) and node a has heard b is down,
    // in either order.
    let mut bob = Member::reclaim(&a, "bob");
    let frame = next_frame(&mut bob.ex);
    let mut want = crate::identity::header(18, S, bob.ex_id, 0);
    want.extend_from_slice(&[0, 8]);
    assert_eq!(frame[..10], want[..], "a WAITING frame: {frame:?}");
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 1, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(
        &mut bob.ex,
        &msg(alice.em_id, bob.ex_id, 2, b"are you there"),
    );
    for seq in 0..=2 {
        bob.ex.send(&ok(bob.ex_id, S, seq));
    }
    bob.ex.expect_silence();
}

/// A node that stays up but never answers a waiting message it was sent
/// (stopped, its lease still held) fails it at the relay's deadline, as
/// any relay fails: the message does not stay away until that node's
/// lease runs out.
#[test]
fn a_waiting_message_sent_to_a_silent_node_fails_at_the_relay_deadline() {
    let redis = Redis::start("crooms-waiting-silent");
    let dir = TempDir::new("crooms-waiting-silent-a");
    // Relays from node a wait --ack-timeout + 2 s: 3 s here.
    let a = redis.node_with(
        "a",
        &[
            "--history",
            dir.arg(),
            "--fsync",
            "always",
            "--ack-timeout",
            "1",
        ],
    );
    let b = redis.node_with("b", &["--cluster-lease", "60"]);
    let alice = told_while_away(&a, b"bob", b"hello?");
    let mut bob = Member::reclaim(&b, "bob");
    assert_eq!(next_frame(&mut bob.ex)[..2], [0, 18], "WAITING first");
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 1, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut bob.ex, &msg(alice.em_id, bob.ex_id, 2, b"hello?"));
    // Node b goes silent before bob answers, and keeps its lease.
    b.proc.signal(libc::SIGSTOP);
    let (_, line) = a
        .proc
        .stderr
        .skip_until("the relay's deadline", TIMEOUT, |line| {
            line.contains("no ACK from the node in time")
        });
    b.proc.signal(libc::SIGCONT);
    assert!(!line.is_empty());
}

/// ERRO from an exhibitor to `dest`.
fn header_erro(origin: ClientId, dest: ClientId, seq: u16) -> Vec<u8> {
    crate::identity::header(2, origin, dest, seq)
}

#[test]
fn malformed_or_out_of_bounds_room_changes_are_dropped_and_rooms_stay_right() {
    let redis = Redis::start("crooms-garbage");
    let a = redis.node("a");
    // Node b is run with a smaller bound than a (CLUSTER.md: give every
    // node the same bounds): its replica keeps to its own.
    let b = redis.node_with("b", &["--room-members", "1"]);
    let mut alice = Member::new(&a, "alice");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut bert = Member::new(&b, "bert");
    wait_members(&mut bert, b"ops", 1);
    let mut con = redis.client();
    let bad = [
        "j 16384 0 ops al!ce",
        "j 99999 0 far bob",
        "j 16384 2 ops bob",
        "j 16384 0 ops",
        "j 16384 0 ops bob extra",
        "l 16384",
        "l 16383 alice",
        "l 16384 al ice",
    ];
    for change in bad {
        let heard: i64 = redis::cmd("PUBLISH")
            .arg("evchat:chg")
            .arg(change)
            .query(&mut con)
            .unwrap();
        assert_eq!(heard, 2, "{change}");
    }
    for node in [&a, &b] {
        for change in bad {
            node.proc.stderr.skip_until(change, TIMEOUT, |line| {
                line.contains("malformed change dropped")
            });
        }
    }
    // Well-formed, but past the ids a node may hold: both refuse it.
    let far: i64 = redis::cmd("PUBLISH")
        .arg("evchat:chg")
        .arg("j 18432 0 far bob")
        .query(&mut con)
        .unwrap();
    assert_eq!(far, 2);
    for node in [&a, &b] {
        node.proc
            .stderr
            .skip_until("the far room", TIMEOUT, |line| {
                line.contains("a room past the ids a node may hold ignored")
            });
    }
    // A second member joined through a (its bound is 1024): b's replica
    // keeps to its own bound of 1 and says so.
    let mut carol = Member::new(&a, "carol");
    carol.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    b.proc
        .stderr
        .skip_until("carol's membership", TIMEOUT, |line| {
            line.contains("a membership past this node's bounds ignored")
        });
    // Each node lists exactly what it holds: nothing of the garbage.
    let seq = alice.next_seq();
    alice.em.send(&rooms(alice.em_id, seq));
    expect_exact(
        &mut alice.em,
        &roomlist(alice.em_id, seq, &[(ROOM, 0, 2, b"ops")]),
    );
    let seq = bert.next_seq();
    bert.em.send(&rooms(bert.em_id, seq));
    expect_exact(
        &mut bert.em,
        &roomlist(bert.em_id, seq, &[(ROOM, 0, 1, b"ops")]),
    );
}

mod simulation {
    //! Three `Router`s on the in-memory engine, each with named emitter
    //! sessions (the same names on every node, as one account signed in on
    //! several), driven by seeded random JOINs and LEAVEs of a few rooms and
    //! queues, in any case, while nodes crash and are fenced. The glue does
    //! what the loop's does for rooms (`server/cluster.rs`, through its own
    //! conversions). Asserted whenever everything in flight has arrived:
    //! every node's rooms are the engine's (one id per name, one name per
    //! id, the same kind and members everywhere), every JOIN and LEAVE of a
    //! session still there got exactly one ROOMACK, and each router's
    //! invariants hold.

    use crate::util::Rng;
    use evchat::cluster::memory::{MemoryEngine, MemoryHub};
    use evchat::cluster::{Engine, Event, Request};
    use evchat::proto::ext::ExtFrame;
    use evchat::proto::{ClientId, Frame, Header, Kind, SERVER_ID};
    use evchat::server::Limits;
    use evchat::testing::cluster_glue::{room_answer, room_request};
    use evchat::testing::{CloseReason, ConnId, Outbox, RoomClaim, RoomEvent, RoomFacts, Router};
    use std::collections::{BTreeMap, BTreeSet, HashMap};
    use std::time::Instant;

    const NAMES: [&str; 3] = ["ann", "bob", "cat"];
    const ROOMS: [(&str, bool); 4] = [
        ("ops", false),
        ("news", false),
        ("jobs", true),
        ("OPS", true),
    ];

    #[derive(Default)]
    struct Recorder {
        closed: Vec<ConnId>,
        id_claims: Vec<ConnId>,
        room_claims: Vec<RoomClaim>,
        /// ROOMACKs sent, by connection: (seq, code).
        acks: Vec<(ConnId, u16, u8)>,
    }

    impl Outbox for Recorder {
        fn send(&mut self, _to: ConnId, _frame: &Frame) {}
        fn send_ext(&mut self, to: ConnId, frame: &ExtFrame) {
            if let ExtFrame::RoomAck(ack) = frame {
                self.acks.push((to, ack.seq, ack.code));
            }
        }
        fn close(&mut self, conn: ConnId, _id: ClientId, _reason: CloseReason) {
            self.closed.push(conn);
        }
        fn resume_input(&mut self, _conn: ConnId) {}
        fn claim_id(&mut self, conn: ConnId, _exhibitor: bool) {
            self.id_claims.push(conn);
        }
        fn room_claim(&mut self, claim: &RoomClaim) {
            self.room_claims.push(claim.clone());
        }
    }

    /// A named emitter session: its id once identified, its next seq, the
    /// seqs of its JOINs and LEAVEs not yet answered, and whether a fence
    /// dismissed it (it asks no more, and is still answered).
    struct Session {
        id: Option<ClientId>,
        seq: u16,
        asked: BTreeSet<u16>,
        dismissed: bool,
    }

    struct Node {
        router: Router,
        engine: MemoryEngine,
        out: Recorder,
        next_claim: u64,
        id_claims: HashMap<u64, ConnId>,
        sessions: BTreeMap<ConnId, Session>,
        next_conn: ConnId,
    }

    impl Node {
        fn new(hub: &MemoryHub, now: Instant) -> Node {
            let mut router = Router::new(Limits::default());
            router.enable_cluster();
            let mut node = Node {
                router,
                engine: hub.join(|| {}),
                out: Recorder::default(),
                next_claim: 0,
                id_claims: HashMap::new(),
                sessions: BTreeMap::new(),
                next_conn: 0,
            };
            node.sign_in(now);
            node
        }

        /// A session of each name, identified as an emitter.
        fn sign_in(&mut self, now: Instant) {
            for name in NAMES {
                let conn = self.next_conn;
                self.next_conn += 1;
                self.router.connected(conn, now);
                self.router
                    .hello_accepted(conn, Some(name), 7, false, &mut self.out)
                    .unwrap();
                let oi = Frame::bare(Kind::Oi, 1, SERVER_ID, 0);
                self.router.on_frame(conn, oi, now, &mut self.out);
                let session = Session {
                    id: None,
                    seq: 1,
                    asked: BTreeSet::new(),
                    dismissed: false,
                };
                self.sessions.insert(conn, session);
            }
        }

        fn request(&mut self, rng: &mut Rng, now: Instant) {
            let ready: Vec<ConnId> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.id.is_some() && !s.dismissed)
                .map(|(&c, _)| c)
                .collect();
            if ready.is_empty() {
                return;
            }
            let conn = ready[(rng.next() % ready.len() as u64) as usize];
            let (room, queue) = ROOMS[(rng.next() % ROOMS.len() as u64) as usize];
            let session = self.sessions.get_mut(&conn).expect("ready");
            let seq = session.seq;
            session.seq += 1;
            session.asked.insert(seq);
            let header = Header {
                kind: 12,
                origin: session.id.expect("ready"),
                dest: SERVER_ID,
                seq,
            };
            if rng.next().is_multiple_of(3) {
                let header = Header { kind: 13, ..header };
                self.router
                    .leave(conn, header, Some(room), now, &mut self.out);
            } else {
                self.router
                    .join(conn, header, queue, 1, Some(room), now, &mut self.out);
            }
            self.answered();
        }

        /// ROOMACKs and closes the router sent: each ROOMACK answers one
        /// request still waiting, never one twice.
        fn answered(&mut self) {
            for (conn, seq, code) in std::mem::take(&mut self.out.acks) {
                let Some(session) = self.sessions.get_mut(&conn) else {
                    panic!(
                        "a ROOMACK to conn {conn} (seq {seq}, code {code}), no session of {:?}",
                        self.sessions.keys().collect::<Vec<_>>()
                    );
                };
                assert!(
                    session.asked.remove(&seq),
                    "conn {conn}: a ROOMACK (code {code}) for seq {seq}, not waiting"
                );
            }
            for conn in std::mem::take(&mut self.out.closed) {
                self.sessions.remove(&conn);
            }
        }

        /// Engine events to the router, its requests to the engine; true if
        /// anything happened.
        fn pump(&mut self, now: Instant) -> bool {
            let mut events = Vec::new();
            self.engine.drain(&mut events);
            let busy = !events.is_empty();
            for event in events {
                let (router, out) = (&mut self.router, &mut self.out);
                match event {
                    Event::Joined { held, .. } => router.cluster_joined(&held, now),
                    Event::Claimed { claim, id } => {
                        let conn = self.id_claims.remove(&claim).expect("a claim asked");
                        if router.id_claimed(conn, id, now, out)
                            && let Some(session) = self.sessions.get_mut(&conn)
                        {
                            session.id = id;
                        }
                    }
                    Event::RoomAnswered { claim, outcome } => {
                        router.room_answered(claim, outcome.map(room_answer), now, out)
                    }
                    Event::RoomJoined {
                        id,
                        queue,
                        spelling,
                        member,
                        prefetch,
                    } => {
                        router.remote_room_joined(id, queue, &spelling, &member, prefetch, now, out)
                    }
                    Event::RoomLeft { id, member } => {
                        router.remote_room_left(id, &member, now, out)
                    }
                    Event::Rooms { rooms } => {
                        let rooms: Vec<(RoomFacts, Vec<String>)> = rooms
                            .into_iter()
                            .map(|r| {
                                let facts = RoomFacts {
                                    id: r.id,
                                    queue: r.queue,
                                    spelling: r.spelling,
                                    members: r.members.len() as u32,
                                };
                                (facts, r.members)
                            })
                            .collect();
                        router.rooms_read(&rooms, now, out);
                    }
                    Event::Down { node } => router.node_down(node, now, out),
                    Event::Fenced => router.fence(now, out),
                    _ => {}
                }
                self.answered();
            }
            let outgoing = !self.out.id_claims.is_empty() || !self.out.room_claims.is_empty();
            for conn in std::mem::take(&mut self.out.id_claims) {
                let claim = self.next_claim;
                self.next_claim += 1;
                self.id_claims.insert(claim, conn);
                let request = Request::Claim {
                    claim,
                    exhibitor: false,
                };
                self.engine.submit(request).unwrap();
            }
            for claim in std::mem::take(&mut self.out.room_claims) {
                let (_, request) = room_request(claim);
                self.engine.submit(request).unwrap();
            }
            busy || outgoing
        }

        /// This node's rooms: id → (name in lower case, queue, members).
        fn rooms(&self) -> BTreeMap<ClientId, (String, bool, BTreeSet<String>)> {
            let mut rooms: BTreeMap<ClientId, (String, bool, BTreeSet<String>)> = BTreeMap::new();
            self.router.room_snapshot(&mut |event| {
                if let RoomEvent::Joined {
                    room,
                    room_name,
                    queue,
                    member,
                    ..
                } = event
                {
                    let entry = rooms.entry(*room).or_insert_with(|| {
                        (room_name.to_ascii_lowercase(), *queue, BTreeSet::new())
                    });
                    entry.2.insert(member.to_string());
                }
            });
            rooms
        }
    }

    fn engine_rooms(hub: &MemoryHub) -> BTreeMap<ClientId, (String, bool, BTreeSet<String>)> {
        hub.rooms()
            .into_iter()
            .map(|r| {
                let members = r.members.into_iter().collect();
                (r.id, (r.spelling.to_ascii_lowercase(), r.queue, members))
            })
            .collect()
    }

    #[test]
    fn every_node_s_rooms_are_the_engine_s_through_races_crashes_and_fences() {
        for seed in 1..=12u64 {
            let mut rng = Rng(seed);
            let hub = MemoryHub::new();
            let now = Instant::now();
            let mut nodes: Vec<Node> = (0..3).map(|_| Node::new(&hub, now)).collect();
            for step in 0..400 {
                let at = (rng.next() % 3) as usize;
                match rng.next() % 100 {
                    0..=91 => nodes[at].request(&mut rng, now),
                    92..=95 => {
                        // Fenced: its sessions are dismissed, new ones sign in.
                        nodes[at].engine.fence();
                        nodes[at].pump(now);
                        for session in nodes[at].sessions.values_mut() {
                            session.dismissed = true;
                        }
                        nodes[at].sign_in(now);
                    }
                    _ => {
                        hub.crash(nodes[at].engine.node());
                        nodes[at] = Node::new(&hub, now);
                    }
                }
                // Some nodes hear what is in flight, so JOINs race.
                for node in nodes.iter_mut() {
                    if rng.next().is_multiple_of(2) {
                        node.pump(now);
                    }
                }
                if step % 10 == 9 {
                    while nodes.iter_mut().fold(false, |busy, n| n.pump(now) | busy) {}
                    let engine = engine_rooms(&hub);
                    let names: BTreeSet<&String> = engine.values().map(|(n, ..)| n).collect();
                    assert_eq!(names.len(), engine.len(), "seed {seed}: one id per name");
                    for (i, node) in nodes.iter().enumerate() {
                        assert_eq!(node.rooms(), engine, "seed {seed} step {step} node {i}");
                        node.router.check_invariants().unwrap();
                        for (conn, session) in &node.sessions {
                            assert!(
                                session.asked.is_empty(),
                                "seed {seed} step {step}: conn {conn} unanswered {:?}",
                                session.asked
                            );
                        }
                    }
                }
            }
        }
    }
}
