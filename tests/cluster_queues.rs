//! Work queues across nodes (CLUSTER.md, "Queues across nodes"): real
//! `server` processes with `--cluster` over a real `redis-server`, byte for
//! byte over raw TCP. A queue has one turn system-wide, kept by its home
//! (the lowest incarnation with a member online): messages sent on any
//! node go there and each reaches exactly one member session, on any node,
//! in turn; a member's node killed passes what its member held on to the
//! others (at-least-once); the home killed fails what it held with ERRO,
//! never OK, and the queue goes on at the next home.

use crate::cluster::Redis;
use crate::cluster_rooms::{FAILED_WITHIN, wait_members};
use crate::identity::header;
use crate::rooms::{Member, PLAIN, ROOM, S, erro, msg, next_msg, ok, roomack, who};
use crate::util::*;
use std::collections::BTreeMap;

/// The incarnation the node named `node` serves as (its lease key holds
/// its name), once it has joined: a node just started may not have yet.
fn incarnation(redis: &Redis, node: &str) -> u64 {
    let mut db = redis.client();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("evchat:lease:*")
            .query(&mut db)
            .expect("KEYS");
        for key in keys {
            let name: Option<String> = redis::cmd("GET").arg(&key).query(&mut db).expect("GET");
            if name.as_deref() == Some(node) {
                return key.rsplit(':').next().unwrap().parse().expect("a number");
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {node} holds no lease"
        );
        // Polling, bounded by the deadline above.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The text of queue message number `n`.
fn job(n: u16) -> Vec<u8> {
    format!("job {n}").into_bytes()
}

/// Member `name` on `node` joins the queue "jobs" as its `count`th member.
fn worker(node: &Server, name: &str, count: u16) -> Member {
    let mut member = Member::new(node, name);
    member.join("jobs", true, |d, s| {
        roomack(d, s, 0, (ROOM, 1, count, b"jobs"))
    });
    member
}

/// The first queue message `member` receives from `boss`: the WHO telling
/// who the boss is (acknowledged), then the MSG; returns the MSG's bytes.
fn first_job(member: &mut Member, boss: &Member) -> Vec<u8> {
    expect_exact(
        &mut member.ex,
        &who(member.ex_id, 0, boss.em_id, PLAIN, b"boss"),
    );
    member.ex.send(&ok(member.ex_id, S, 0));
    next_msg(&mut member.ex, member.ex_id)
}

/// Sends jobs 1..=n to the queue from `boss`; returns their seqs by number.
fn send_jobs(boss: &mut Member, n: u16) -> BTreeMap<u16, u16> {
    (1..=n)
        .map(|number| {
            let seq = boss.next_seq();
            boss.em.send(&msg(boss.em_id, ROOM, seq, &job(number)));
            (number, seq)
        })
        .collect()
}

#[test]
fn a_queue_with_members_on_two_nodes_shares_a_third_node_s_messages_in_turn() {
    let redis = Redis::start("cqueue-share");
    let (a, b, c) = (redis.node("a"), redis.node("b"), redis.node("c"));
    let mut members = [worker(&a, "w1", 1), worker(&b, "w2", 2)];
    let mut boss = Member::new(&c, "boss");
    wait_members(&mut boss, b"jobs", 2);
    const N: u16 = 20;
    let seqs = send_jobs(&mut boss, N);
    // Jobs 1 and 2 go out at once, one to each member (the home's own
    // member first): each holds one, as prefetch 1 allows.
    let mut held = [
        first_job(&mut members[0], &boss),
        first_job(&mut members[1], &boss),
    ];
    let first = if held[0] == msg(boss.em_id, ROOM, seqs[&1], &job(1)) {
        0
    } else {
        1
    };
    // Then in turn: the member that acknowledges is the only one free, so
    // it takes the next job; odd jobs to one, even jobs to the other.
    for n in 1..=N {
        let at = if n % 2 == 1 { first } else { 1 - first };
        let seq = seqs[&n];
        assert_eq!(
            held[at],
            msg(boss.em_id, ROOM, seq, &job(n)),
            "job {n} to member {at}"
        );
        let member = &mut members[at];
        member.ex.send(&ok(member.ex_id, boss.em_id, seq));
        // The OK only once the member acknowledged, across two nodes.
        expect_exact(&mut boss.em, &ok(S, boss.em_id, seq));
        if n + 2 <= N {
            held[at] = next_msg(&mut member.ex, member.ex_id);
        }
    }
    for member in &mut members {
        member.ex.expect_silence();
    }
    boss.em.expect_silence();
}

#[test]
fn a_queue_message_on_a_node_with_no_member_reaches_a_member_on_another() {
    let redis = Redis::start("cqueue-elsewhere");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let mut boss = Member::new(&a, "boss");
    let mut w = worker(&b, "w", 1);
    wait_members(&mut boss, b"jobs", 1);
    let seqs = send_jobs(&mut boss, 1);
    assert_eq!(
        first_job(&mut w, &boss),
        msg(boss.em_id, ROOM, seqs[&1], &job(1))
    );
    // Not answered yet: the emitter waits.
    boss.em.expect_silence();
    w.ex.send(&ok(w.ex_id, boss.em_id, seqs[&1]));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&1]));
}

/// The nodes a, b and c, members w1 on a and w2 on b, and the boss on c
/// who writes to the queue; and which of a and b is the queue's home
/// (0: a, 1: b), the lower incarnation of the two.
fn two_members_and_a_boss(redis: &Redis) -> ([Server; 3], [Member; 2], Member, usize) {
    let nodes = [redis.node("a"), redis.node("b"), redis.node("c")];
    let members = [worker(&nodes[0], "w1", 1), worker(&nodes[1], "w2", 2)];
    let mut boss = Member::new(&nodes[2], "boss");
    wait_members(&mut boss, b"jobs", 2);
    let home = usize::from(incarnation(redis, "a") > incarnation(redis, "b"));
    (nodes, members, boss, home)
}

/// A member's node killed while its member holds a message: that message
/// goes to the other member, every other message is shown once, and the
/// emitter gets OK for all of them (at-least-once: the one held when the
/// node died is shown twice, once on each node).
#[test]
fn a_member_s_node_killed_halfway_passes_its_message_on_and_loses_none() {
    let redis = Redis::start("cqueue-member-kill");
    let (mut nodes, mut members, mut boss, home) = two_members_and_a_boss(&redis);
    let other = 1 - home;
    const N: u16 = 10;
    let seqs = send_jobs(&mut boss, N);
    // The home's own member takes odd jobs, the other even ones.
    let mut held = [Vec::new(), Vec::new()];
    held[home] = first_job(&mut members[home], &boss);
    held[other] = first_job(&mut members[other], &boss);
    for n in 1..=5u16 {
        let at = if n % 2 == 1 { home } else { other };
        let seq = seqs[&n];
        assert_eq!(held[at], msg(boss.em_id, ROOM, seq, &job(n)), "job {n}");
        let member = &mut members[at];
        member.ex.send(&ok(member.ex_id, boss.em_id, seq));
        expect_exact(&mut boss.em, &ok(S, boss.em_id, seq));
        held[at] = next_msg(&mut member.ex, member.ex_id);
    }
    // The home's member holds job 7, the other's job 6 (shown, never
    // acknowledged): its node dies.
    assert_eq!(held[home], msg(boss.em_id, ROOM, seqs[&7], &job(7)));
    assert_eq!(held[other], msg(boss.em_id, ROOM, seqs[&6], &job(6)));
    nodes[other].proc.signal(libc::SIGKILL);
    nodes[other].proc.wait();
    // Everything left reaches the home's member, job 6 included, each
    // once, in whatever order the reap lets job 6 back in.
    let member = &mut members[home];
    let mut shown: Vec<u16> = vec![7];
    member.ex.send(&ok(member.ex_id, boss.em_id, seqs[&7]));
    while shown.len() < 5 {
        let frame = member
            .ex
            .frame_within(FAILED_WITHIN)
            .expect("the home's member still connected")
            .to_bytes()
            .to_vec();
        let n = (6..=N)
            .find(|&n| frame == msg(boss.em_id, ROOM, seqs[&n], &job(n)))
            .unwrap_or_else(|| panic!("not a job left: {frame:?}"));
        assert!(!shown.contains(&n), "job {n} shown twice on the home");
        shown.push(n);
        member.ex.send(&ok(member.ex_id, boss.em_id, seqs[&n]));
    }
    shown.sort_unstable();
    assert_eq!(shown, vec![6, 7, 8, 9, 10]);
    // OK for every job, in request order, never ERRO.
    for n in 6..=N {
        expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&n]));
    }
    member.ex.expect_silence();
    boss.em.expect_silence();
}

/// The home killed while its member holds a message from another node:
/// the emitter gets ERRO (never OK) once the home is reaped, and the next
/// message goes to the member on the node that is home now.
#[test]
fn the_home_killed_fails_what_it_held_with_erro_and_the_queue_goes_on() {
    let redis = Redis::start("cqueue-home-kill");
    let (mut nodes, mut members, mut boss, home) = two_members_and_a_boss(&redis);
    let survivor = 1 - home;
    let seqs = send_jobs(&mut boss, 1);
    assert_eq!(
        first_job(&mut members[home], &boss),
        msg(boss.em_id, ROOM, seqs[&1], &job(1))
    );
    nodes[home].proc.signal(libc::SIGKILL);
    nodes[home].proc.wait();
    let got = boss
        .em
        .frame_within(FAILED_WITHIN)
        .expect("the boss still connected");
    assert_eq!(
        got.to_bytes().to_vec(),
        erro(boss.em_id, seqs[&1]),
        "ERRO, never OK, once the home is gone"
    );
    // Node c heard the home go: the survivor's node is the home now.
    let seq = boss.next_seq();
    boss.em.send(&msg(boss.em_id, ROOM, seq, &job(2)));
    let member = &mut members[survivor];
    assert_eq!(
        first_job(member, &boss),
        msg(boss.em_id, ROOM, seq, &job(2))
    );
    member.ex.send(&ok(member.ex_id, boss.em_id, seq));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seq));
}

/// One turn system-wide: a member with prefetch 1 holds one message at a
/// time even when two nodes' emitters write to the queue (with a turn per
/// node, each node would give it one).
#[test]
fn a_member_holds_one_message_at_a_time_from_emitters_on_two_nodes() {
    let redis = Redis::start("cqueue-one-turn");
    let (a, b, c) = (redis.node("a"), redis.node("b"), redis.node("c"));
    let mut w = worker(&b, "w", 1);
    let mut boss = Member::new(&a, "boss");
    let mut chief = Member::new(&c, "chief");
    wait_members(&mut boss, b"jobs", 1);
    wait_members(&mut chief, b"jobs", 1);
    let first = send_jobs(&mut boss, 1)[&1];
    assert_eq!(
        first_job(&mut w, &boss),
        msg(boss.em_id, ROOM, first, &job(1))
    );
    let second = chief.next_seq();
    chief.em.send(&msg(chief.em_id, ROOM, second, &job(2)));
    // w holds job 1: job 2 waits at the home until w acknowledges it.
    w.ex.expect_silence();
    w.ex.send(&ok(w.ex_id, boss.em_id, first));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, first));
    expect_exact(&mut w.ex, &who(w.ex_id, 1, chief.em_id, PLAIN, b"chief"));
    w.ex.send(&ok(w.ex_id, S, 1));
    expect_exact(&mut w.ex, &msg(chief.em_id, ROOM, second, &job(2)));
    chief.em.expect_silence();
    w.ex.send(&ok(w.ex_id, chief.em_id, second));
    expect_exact(&mut chief.em, &ok(S, chief.em_id, second));
}

/// No member online anywhere: the message waits (on the node it was sent
/// to, or on the home it was relayed to before the member's node heard it
/// go), and reaches the member once it signs in again on a third node.
#[test]
fn a_message_waits_while_no_member_is_online_and_reaches_one_signing_in_elsewhere() {
    let redis = Redis::start("cqueue-wait");
    let (a, b, c) = (redis.node("a"), redis.node("b"), redis.node("c"));
    let mut boss = Member::new(&a, "boss");
    let w = worker(&b, "w", 1);
    wait_members(&mut boss, b"jobs", 1);
    drop(w);
    let seqs = send_jobs(&mut boss, 1);
    boss.em.expect_silence();
    let mut w = Member::reclaim(&c, "w");
    assert_eq!(
        first_job(&mut w, &boss),
        msg(boss.em_id, ROOM, seqs[&1], &job(1))
    );
    w.ex.send(&ok(w.ex_id, boss.em_id, seqs[&1]));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&1]));
}

/// A member's prefetch reaches the home on another node (the `j` change
/// carries it): w4, on the node that is not home, joined with prefetch 4
/// and holds four unacknowledged jobs from the home, as it would on one
/// node; the sixth job waits until a member acknowledges one. Before the
/// prefetch was carried, w4 held one and jobs 3–6 all waited.
#[test]
fn a_member_on_another_node_than_the_home_holds_up_to_its_prefetch() {
    let redis = Redis::start("cqueue-prefetch");
    let nodes = [redis.node("a"), redis.node("b")];
    let home = usize::from(incarnation(&redis, "a") > incarnation(&redis, "b"));
    let mut w1 = worker(&nodes[home], "w1", 1);
    let mut w4 = Member::new(&nodes[1 - home], "w4");
    w4.join_prefetch("jobs", 4, |d, s| roomack(d, s, 0, (ROOM, 1, 2, b"jobs")));
    // The boss on the home: once it lists two members, the home heard w4's
    // join (and, before it on the same channel, what w4 shows).
    let mut boss = Member::new(&nodes[home], "boss");
    wait_members(&mut boss, b"jobs", 2);
    let seqs = send_jobs(&mut boss, 6);
    // The home's own member first, then w4 up to its prefetch.
    assert_eq!(
        first_job(&mut w1, &boss),
        msg(boss.em_id, ROOM, seqs[&1], &job(1))
    );
    assert_eq!(
        first_job(&mut w4, &boss),
        msg(boss.em_id, ROOM, seqs[&2], &job(2))
    );
    for n in 3..=5 {
        assert_eq!(
            next_msg(&mut w4.ex, w4.ex_id),
            msg(boss.em_id, ROOM, seqs[&n], &job(n)),
            "job {n} held by w4 unacknowledged"
        );
    }
    // Both full: job 6 waits, and nobody is answered yet.
    w4.ex.expect_silence();
    w1.ex.expect_silence();
    boss.em.expect_silence();
    // w4 acknowledges job 3: it has room again and takes job 6 (w1 is
    // still full); the OK for job 3 waits behind job 1 and 2's (rule 4
    // keeps the emitter's replies in order).
    w4.ex.send(&ok(w4.ex_id, boss.em_id, seqs[&3]));
    assert_eq!(
        next_msg(&mut w4.ex, w4.ex_id),
        msg(boss.em_id, ROOM, seqs[&6], &job(6))
    );
    w1.ex.send(&ok(w1.ex_id, boss.em_id, seqs[&1]));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&1]));
    for n in [2, 4, 5, 6] {
        w4.ex.send(&ok(w4.ex_id, boss.em_id, seqs[&n]));
    }
    for n in 2..=6 {
        expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&n]));
    }
    w1.ex.expect_silence();
    w4.ex.expect_silence();
    boss.em.expect_silence();
}

/// A member session on another node than the queue's home answers ERRO:
/// the emitter gets ERRO, as on one node, and the message goes to no other
/// member (the member's node tells the ERRO back as a REFUSED ACK). Before,
/// the ACK told no ERRO from a departure, and the message was passed on
/// (here: to w2 itself again, the only member with room) (issue 25).
#[test]
fn a_member_s_erro_on_another_node_than_the_home_answers_the_emitter_erro() {
    let redis = Redis::start("cqueue-erro");
    let nodes = [redis.node("a"), redis.node("b")];
    let home = usize::from(incarnation(&redis, "a") > incarnation(&redis, "b"));
    let mut w1 = worker(&nodes[home], "w1", 1);
    let mut w2 = worker(&nodes[1 - home], "w2", 2);
    let mut boss = Member::new(&nodes[home], "boss");
    wait_members(&mut boss, b"jobs", 2);
    let seqs = send_jobs(&mut boss, 3);
    assert_eq!(
        first_job(&mut w1, &boss),
        msg(boss.em_id, ROOM, seqs[&1], &job(1))
    );
    assert_eq!(
        first_job(&mut w2, &boss),
        msg(boss.em_id, ROOM, seqs[&2], &job(2))
    );
    // w2 answers job 2 ERRO.
    w2.ex.send(&header(2, w2.ex_id, boss.em_id, seqs[&2]));
    // Job 3 goes to w2, free again; job 2 to nobody.
    assert_eq!(
        next_msg(&mut w2.ex, w2.ex_id),
        msg(boss.em_id, ROOM, seqs[&3], &job(3))
    );
    // Rule 4 keeps the emitter's replies in order: job 1's first.
    boss.em.expect_silence();
    w1.ex.send(&ok(w1.ex_id, boss.em_id, seqs[&1]));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&1]));
    expect_exact(&mut boss.em, &erro(boss.em_id, seqs[&2]));
    w2.ex.send(&ok(w2.ex_id, boss.em_id, seqs[&3]));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&3]));
    w1.ex.expect_silence();
    w2.ex.expect_silence();
    boss.em.expect_silence();
}

/// A queue member's prefetch is kept in Redis with its membership: a node
/// started after the JOIN (it reads the rooms whole and hears no `j` line
/// of it) lets the member's session there hold as many as it asked.
/// Before, it counted prefetch 1 until the member's next JOIN (issue 25).
#[test]
fn a_node_started_after_a_join_learns_the_member_s_prefetch_from_redis() {
    let redis = Redis::start("cqueue-prefetch-read");
    let b = redis.node("b");
    let mut w4 = Member::new(&b, "w4");
    w4.join_prefetch("jobs", 4, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    drop(w4);
    let c = redis.node("c");
    let mut w4 = Member::reclaim(&c, "w4");
    let mut boss = Member::new(&c, "boss");
    wait_members(&mut boss, b"jobs", 1);
    let seqs = send_jobs(&mut boss, 5);
    assert_eq!(
        first_job(&mut w4, &boss),
        msg(boss.em_id, ROOM, seqs[&1], &job(1))
    );
    for n in 2..=4 {
        assert_eq!(
            next_msg(&mut w4.ex, w4.ex_id),
            msg(boss.em_id, ROOM, seqs[&n], &job(n)),
            "job {n} held by w4 unacknowledged"
        );
    }
    // Four held: job 5 waits until w4 acknowledges one.
    w4.ex.expect_silence();
    boss.em.expect_silence();
    w4.ex.send(&ok(w4.ex_id, boss.em_id, seqs[&1]));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&1]));
    assert_eq!(
        next_msg(&mut w4.ex, w4.ex_id),
        msg(boss.em_id, ROOM, seqs[&5], &job(5))
    );
    for n in 2..=5 {
        w4.ex.send(&ok(w4.ex_id, boss.em_id, seqs[&n]));
        expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&n]));
    }
    w4.ex.expect_silence();
    boss.em.expect_silence();
}

/// A member JOINs again with a new prefetch on a node that is not the
/// queue's home: answered there at once, as before, and the engine tells
/// every node the new prefetch (the `j` line again), so the home lets its
/// session hold three. A later JOIN from the same node ("sync", a member
/// too, prefetch 1) goes through Redis after it: once the home lists it,
/// the home heard the new prefetch.
#[test]
fn a_member_joining_again_with_a_new_prefetch_elsewhere_holds_that_many_from_the_home() {
    let redis = Redis::start("cqueue-prefetch-again");
    let nodes = [redis.node("a"), redis.node("b")];
    let home = usize::from(incarnation(&redis, "a") > incarnation(&redis, "b"));
    let mut w1 = worker(&nodes[home], "w1", 1);
    let mut w3 = worker(&nodes[1 - home], "w3", 2);
    w3.join_prefetch("jobs", 3, |d, s| roomack(d, s, 0, (ROOM, 1, 2, b"jobs")));
    let mut sync = worker(&nodes[1 - home], "sync", 3);
    let mut boss = Member::new(&nodes[home], "boss");
    wait_members(&mut boss, b"jobs", 3);
    let seqs = send_jobs(&mut boss, 6);
    // The turn: w1 (the home's own), then w3 and sync, then round again:
    // sync is full at one, w3 takes jobs 4 and 5 too (three held).
    assert_eq!(
        first_job(&mut w1, &boss),
        msg(boss.em_id, ROOM, seqs[&1], &job(1))
    );
    assert_eq!(
        first_job(&mut w3, &boss),
        msg(boss.em_id, ROOM, seqs[&2], &job(2))
    );
    assert_eq!(
        first_job(&mut sync, &boss),
        msg(boss.em_id, ROOM, seqs[&3], &job(3))
    );
    for n in 4..=5 {
        assert_eq!(
            next_msg(&mut w3.ex, w3.ex_id),
            msg(boss.em_id, ROOM, seqs[&n], &job(n)),
            "job {n} held by w3 unacknowledged"
        );
    }
    // Everyone full: job 6 waits until w1 acknowledges job 1.
    w3.ex.expect_silence();
    w1.ex.expect_silence();
    sync.ex.expect_silence();
    w1.ex.send(&ok(w1.ex_id, boss.em_id, seqs[&1]));
    expect_exact(&mut boss.em, &ok(S, boss.em_id, seqs[&1]));
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss.em_id, ROOM, seqs[&6], &job(6))
    );
}
