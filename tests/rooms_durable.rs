//! Rooms, work queues and waiting messages across a restart of the real
//! `server` (PROTOCOL.md, "With history" and "Waiting messages";
//! HISTORY.md, "Rooms and waiting messages"), byte for byte over raw TCP:
//! the server is killed with SIGKILL and started again on the same
//! history, and what it promised comes back, once, in order, and never to
//! a name that is not a member. TELL's bad inputs, and which offline names
//! a TELL may wait for, are here too.

use crate::identity::{accounts_file, header, hello, helloack, roles};
use crate::rooms::{Member, PLAIN, ROOM, S, away, erro, msg, next_frame, ok, roomack, who};
use crate::util::*;
use evchat::proto::ClientId;
use evchat::store::Reader;
use evchat::store::rooms::RoomRecord;
use std::time::{SystemTime, UNIX_EPOCH};

fn tell(origin: ClientId, seq: u16, name: &[u8], text: &[u8]) -> Vec<u8> {
    let mut wire = header(17, origin, S, seq);
    wire.extend_from_slice(&((1 + name.len() + text.len()) as u16).to_be_bytes());
    wire.push(name.len() as u8);
    wire.extend_from_slice(name);
    wire.extend_from_slice(text);
    wire
}

/// ROOMACK(65535, `dest`, `seq`) code 9, "stored", for `name`.
fn stored(dest: ClientId, seq: u16, name: &[u8]) -> Vec<u8> {
    roomack(dest, seq, 9, (0, 0, 0, name))
}

fn refused(dest: ClientId, seq: u16, code: u8) -> Vec<u8> {
    roomack(dest, seq, code, (0, 0, 0, b""))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Reads WAITING(65535, `own`, `seq`, time_ms) from `raw`; returns the time.
fn expect_waiting(raw: &mut crate::util::Raw, own: ClientId, seq: u16) -> u64 {
    let frame = next_frame(raw);
    let mut want = header(18, S, own, seq);
    want.extend_from_slice(&[0, 8]);
    assert_eq!(frame[..10], want[..], "a WAITING frame: {frame:?}");
    u64::from_be_bytes(frame[10..18].try_into().unwrap())
}

/// Kills `server` (no chance to write anything more) and starts another on
/// the same history.
fn restart(server: Server, dir: &TempDir, extra: &[&str]) -> Server {
    server.proc.signal(libc::SIGKILL);
    drop(server);
    let mut args = vec!["--history", dir.arg(), "--fsync", "always"];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// The waiting messages the log at `dir` holds a record of so far.
fn waiting_records(dir: &TempDir) -> usize {
    let mut reader = Reader::open(dir.path()).unwrap();
    let mut count = 0;
    while let Ok(Some(evchat::store::Item::Record(entry))) = reader.next_item() {
        let record = &entry.record;
        if let Some(RoomRecord::Waiting { .. }) = RoomRecord::read(&record.view()) {
            count += 1;
        }
    }
    count
}

#[test]
fn a_member_away_across_a_restart_gets_the_rooms_messages_once_in_order() {
    let dir = TempDir::new("durable-catch-up");
    let server = Server::start(&["--history", dir.arg(), "--fsync", "always"]);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let mut writer = server.raw();
    let writer_id = writer.identify_emitter(1);
    away(&mut writer, writer_id, bob);
    // alice shows two messages while bob is away; each OK means on disk.
    for (seq, text) in [(1u16, &b"one"[..]), (2, b"two")] {
        writer.send(&msg(writer_id, ROOM, seq, text));
        let got = crate::rooms::next_msg(&mut alice.ex, alice.ex_id);
        assert_eq!(got, msg(writer_id, ROOM, seq, text));
        alice.ex.send(&ok(alice.ex_id, writer_id, seq));
        expect_exact(&mut writer, &ok(S, writer_id, seq));
    }
    drop((alice, writer));
    let server = restart(server, &dir, &[]);
    // bob is back after the restart: what he missed, in order, numbered by
    // the server, told the sender (now no one's id) as it was recorded.
    let mut bob = Member::new(&server, "bob");
    expect_exact(&mut bob.ex, &who(bob.ex_id, 0, writer_id, PLAIN, b""));
    expect_exact(&mut bob.ex, &msg(writer_id, ROOM, 1, b"one"));
    expect_exact(&mut bob.ex, &msg(writer_id, ROOM, 2, b"two"));
    for seq in 0..=2 {
        bob.ex.send(&ok(bob.ex_id, S, seq));
    }
    bob.ex.expect_silence();
    // alice was online when the server died: she had both already.
    let mut alice = Member::new(&server, "alice");
    alice.ex.expect_silence();
    // The membership survived: a new message reaches both.
    let mut writer = server.raw();
    let writer_id = writer.identify_emitter(1);
    writer.send(&msg(writer_id, ROOM, 1, b"three"));
    for m in [&mut alice, &mut bob] {
        assert_eq!(
            crate::rooms::next_msg(&mut m.ex, m.ex_id),
            msg(writer_id, ROOM, 1, b"three")
        );
        m.ex.send(&ok(m.ex_id, writer_id, 1));
    }
    expect_exact(&mut writer, &ok(S, writer_id, 1));
    // Once: bob back again after another restart gets nothing twice.
    drop((alice, bob, writer));
    let server = restart(server, &dir, &[]);
    let mut bob = Member::new(&server, "bob");
    bob.ex.expect_silence();
    // A replay never reaches a name that is not a member.
    let mut carol = Member::new(&server, "carol");
    carol.ex.expect_silence();
}

#[test]
fn a_tell_to_an_offline_name_arrives_after_a_restart_under_fsync_always() {
    let dir = TempDir::new("durable-tell");
    let server = Server::start(&["--history", dir.arg(), "--fsync", "always"]);
    let mut bob = Member::new(&server, "bob");
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut alice = Member::new(&server, "alice");
    let alice_id = alice.em_id;
    away(&mut alice.em, alice_id, bob);
    let before = now_ms();
    let seq = alice.next_seq();
    alice.em.send(&tell(alice_id, seq, b"Bob", b"see you"));
    // Stored (on disk, under always), never OK.
    expect_exact(&mut alice.em, &stored(alice_id, seq, b"Bob"));
    let after = now_ms();
    drop(alice);
    let server = restart(server, &dir, &[]);
    let mut bob = Member::new(&server, "bob");
    let time = expect_waiting(&mut bob.ex, bob.ex_id, 0);
    assert!(
        (before..=after).contains(&time),
        "{before} <= {time} <= {after}"
    );
    expect_exact(&mut bob.ex, &who(bob.ex_id, 1, alice_id, PLAIN, b"alice"));
    expect_exact(&mut bob.ex, &msg(alice_id, bob.ex_id, 2, b"see you"));
    for seq in 0..=2 {
        bob.ex.send(&ok(bob.ex_id, S, seq));
    }
    bob.ex.expect_silence();
    // Answered, it is settled: not sent again, even after a restart.
    drop(bob);
    let server = restart(server, &dir, &[]);
    let mut bob = Member::new(&server, "bob");
    bob.ex.expect_silence();
    let mut carol = Member::new(&server, "carol");
    carol.ex.expect_silence();
}

#[test]
fn a_waiting_message_not_answered_before_the_session_ends_is_sent_again() {
    let dir = TempDir::new("durable-tell-again");
    let server = Server::start(&["--history", dir.arg()]);
    let mut bob = Member::new(&server, "bob");
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut alice = Member::new(&server, "alice");
    let alice_id = alice.em_id;
    away(&mut alice.em, alice_id, bob);
    let seq = alice.next_seq();
    alice.em.send(&tell(alice_id, seq, b"bob", b"twice?"));
    expect_exact(&mut alice.em, &stored(alice_id, seq, b"bob"));
    // bob's session ends holding it, unanswered: at-least-once.
    let mut bob = Member::new(&server, "bob");
    expect_waiting(&mut bob.ex, bob.ex_id, 0);
    expect_exact(&mut bob.ex, &who(bob.ex_id, 1, alice_id, PLAIN, b"alice"));
    expect_exact(&mut bob.ex, &msg(alice_id, bob.ex_id, 2, b"twice?"));
    away(&mut alice.em, alice_id, bob);
    let mut bob = Member::reclaim(&server, "bob");
    expect_waiting(&mut bob.ex, bob.ex_id, 0);
    expect_exact(&mut bob.ex, &who(bob.ex_id, 1, alice_id, PLAIN, b"alice"));
    expect_exact(&mut bob.ex, &msg(alice_id, bob.ex_id, 2, b"twice?"));
}

#[test]
fn a_restart_with_waiting_queue_messages_under_fsync_always_loses_none() {
    const JOBS: u16 = 50;
    let dir = TempDir::new("durable-queue");
    let server = Server::start(&["--history", dir.arg(), "--fsync", "always"]);
    let mut w1 = Member::new(&server, "w1");
    w1.join("jobs", true, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    away(&mut boss, boss_id, w1);
    for seq in 1..=JOBS {
        boss.send(&msg(boss_id, ROOM, seq, format!("job {seq}").as_bytes()));
    }
    // No member online: they wait (no reply yet); once all are in the log
    // the server dies.
    wait_until("the jobs are recorded", || {
        waiting_records(&dir) == JOBS as usize
    });
    let server = restart(server, &dir, &[]);
    let mut w1 = Member::new(&server, "w1");
    for seq in 1..=JOBS {
        // As they arrived, one at a time (prefetch 1).
        let got = crate::rooms::next_msg(&mut w1.ex, w1.ex_id);
        assert_eq!(
            got,
            msg(boss_id, ROOM, seq, format!("job {seq}").as_bytes())
        );
        w1.ex.send(&ok(w1.ex_id, boss_id, seq));
    }
    w1.ex.expect_silence();
    // Each acknowledged job is settled: none comes back after a restart.
    drop(w1);
    let server = restart(server, &dir, &[]);
    let mut w1 = Member::new(&server, "w1");
    w1.ex.expect_silence();
}

#[test]
fn tell_to_an_online_name_is_a_msg_to_its_exhibitor_answered_like_one() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    let seq = alice.next_seq();
    alice.em.send(&tell(alice.em_id, seq, b"BOB", b"hi"));
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 0, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut bob.ex, &msg(alice.em_id, bob.ex_id, seq, b"hi"));
    alice.em.expect_silence();
    bob.ex.send(&ok(bob.ex_id, S, 0));
    bob.ex.send(&ok(bob.ex_id, alice.em_id, seq));
    expect_exact(&mut alice.em, &ok(S, alice.em_id, seq));
}

#[test]
fn tell_bad_inputs_each_get_their_answer() {
    let dir = TempDir::new("tell-bad");
    let server = Server::start(&[
        "--history",
        dir.arg(),
        "--tell-max",
        "2",
        "--tell-max-bytes",
        "10",
    ]);
    let mut bob = Member::new(&server, "bob");
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut alice = Member::new(&server, "alice");
    let id = alice.em_id;
    away(&mut alice.em, id, bob);
    // A name that breaks the rule: code 1.
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"1bob", b"x"));
    expect_exact(&mut alice.em, &refused(id, seq, 1));
    // A name no session holds and no room has: code 10.
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"nobody", b"x"));
    expect_exact(&mut alice.em, &refused(id, seq, 10));
    // Over the bytes bound (11 > 10): code 11, nothing stored.
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"bob", b"0123456789a"));
    expect_exact(&mut alice.em, &refused(id, seq, 11));
    // Two fit; the third is over --tell-max: code 11.
    for text in [&b"one"[..], b"two"] {
        let seq = alice.next_seq();
        alice.em.send(&tell(id, seq, b"bob", text));
        expect_exact(&mut alice.em, &stored(id, seq, b"bob"));
    }
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"bob", b"three"));
    expect_exact(&mut alice.em, &refused(id, seq, 11));
    // From an exhibitor: ERRO, kept.
    alice.ex.send(&tell(alice.ex_id, 9, b"bob", b"x"));
    expect_exact(&mut alice.ex, &erro(alice.ex_id, 9));
    // From a plain client: an unknown type, ERRO and a close.
    let mut plain = server.raw();
    let plain_id = plain.identify_emitter(1);
    plain.send(&tell(plain_id, 1, b"bob", b"x"));
    expect_exact(&mut plain, &erro(plain_id, 1));
    plain.expect_closed();
    // A name over 64 bytes is malformed: ERRO and a close.
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, &[b'b'; 65], b"x"));
    expect_exact(&mut alice.em, &erro(id, seq));
    alice.em.expect_closed();
    // Only the two stored wait for bob, in order.
    let mut bob = Member::reclaim(&server, "bob");
    expect_waiting(&mut bob.ex, bob.ex_id, 0);
    expect_exact(&mut bob.ex, &who(bob.ex_id, 1, id, PLAIN, b"alice"));
    expect_exact(&mut bob.ex, &msg(id, bob.ex_id, 2, b"one"));
    expect_waiting(&mut bob.ex, bob.ex_id, 3);
    expect_exact(&mut bob.ex, &msg(id, bob.ex_id, 4, b"two"));
    bob.ex.expect_silence();
}

/// With accounts every account's name is known (PROTOCOL.md, "Waiting
/// messages"): a TELL to one that never signed in nor joined a room waits
/// for its first sign-in, across a restart; a reload makes a new account's
/// name known; a name with no account is code 10.
#[test]
fn with_accounts_a_tell_to_an_account_never_seen_waits_for_its_first_sign_in() {
    let dir = TempDir::new("tell-accounts");
    let history = TempDir::new("tell-accounts-log");
    let file = accounts_file(
        &dir,
        &[
            ("alice", roles("view,emit,broadcast")),
            ("bob", roles("view,emit")),
        ],
    );
    let auth = ["--auth", file.as_str()];
    let mut args = vec!["--history", history.arg(), "--fsync", "always"];
    args.extend_from_slice(&auth);
    let server = Server::start(&args);
    let mut alice = Member::signed_in(&server, "alice", PLAIN);
    let id = alice.em_id;
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"Bob", b"welcome"));
    expect_exact(&mut alice.em, &stored(id, seq, b"Bob"));
    for name in [&b"nobody"[..], b"dave"] {
        let seq = alice.next_seq();
        alice.em.send(&tell(id, seq, name, b"x"));
        expect_exact(&mut alice.em, &refused(id, seq, 10));
    }
    // dave's account is added: after the reload a TELL to him is stored.
    accounts_file(
        &dir,
        &[
            ("alice", roles("view,emit,broadcast")),
            ("bob", roles("view,emit")),
            ("dave", roles("view")),
        ],
    );
    server.proc.signal(libc::SIGHUP);
    server
        .proc
        .stderr
        .skip_until("the reload", std::time::Duration::from_secs(10), |l| {
            l.contains("SIGHUP: accounts reloaded")
        });
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"dave", b"hi dave"));
    expect_exact(&mut alice.em, &stored(id, seq, b"dave"));
    drop(alice);
    let server = restart(server, &history, &auth);
    // bob signs in for the first time, after the restart: his message.
    let mut bob = Member::signed_in(&server, "bob", 3);
    expect_waiting(&mut bob.ex, bob.ex_id, 0);
    expect_exact(&mut bob.ex, &who(bob.ex_id, 1, id, PLAIN, b"alice"));
    expect_exact(&mut bob.ex, &msg(id, bob.ex_id, 2, b"welcome"));
    for seq in 0..=2 {
        bob.ex.send(&ok(bob.ex_id, S, seq));
    }
    bob.ex.expect_silence();
    // The accounts are known after the restart too: bob, offline again.
    drop(bob);
    let mut alice = Member::signed_in(&server, "alice", PLAIN);
    let (id, seq) = (alice.em_id, alice.next_seq());
    alice.em.send(&tell(id, seq, b"bob", b"again"));
    expect_exact(&mut alice.em, &stored(id, seq, b"bob"));
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"nobody", b"x"));
    expect_exact(&mut alice.em, &refused(id, seq, 10));
}

/// TELL from `id` to `name`; asserts the ROOMACK has `code` (9 or a
/// refusal).
fn tell_answered(raw: &mut Raw, id: ClientId, seq: u16, name: &[u8], code: u8) {
    raw.send(&tell(id, seq, name, b"hi"));
    let answer = match code {
        9 => stored(id, seq, name),
        code => refused(id, seq, code),
    };
    expect_exact(raw, &answer);
}

/// Without accounts a name is known once a session signed in with it since
/// the start, or when the log holds it (a sender's name), at most
/// `--tell-names` of them, the one seen longest ago forgotten first.
#[test]
fn without_accounts_names_seen_since_the_start_or_in_the_log_are_known() {
    let dir = TempDir::new("tell-seen");
    let extra = ["--tell-names", "2"];
    let mut args = vec!["--history", dir.arg(), "--fsync", "always"];
    args.extend_from_slice(&extra);
    let server = Server::start(&args);
    // An opted-in emitter without a name tells: it adds no name itself.
    let teller = |server: &Server| {
        let mut raw = server.raw();
        raw.send(&hello(b"", b""));
        expect_exact(&mut raw, &helloack(0, PLAIN, b""));
        let id = raw.identify_emitter(1);
        (raw, id)
    };
    let (mut t, t_id) = teller(&server);
    let mut seq = 0;
    let mut tell_to = |t: &mut Raw, name: &[u8], code: u8| {
        seq += 1;
        tell_answered(t, t_id, seq, name, code);
    };
    tell_to(&mut t, b"bob", 10);
    for name in ["bob", "carol", "dave"] {
        let member = Member::new(&server, name);
        away(&mut t, t_id, member);
    }
    // Three names seen, two kept: bob, seen first, is forgotten.
    tell_to(&mut t, b"bob", 10);
    tell_to(&mut t, b"carol", 9);
    tell_to(&mut t, b"dave", 9);
    // erin tells, so the log holds her name as a sender's.
    let mut erin = server.raw();
    erin.send(&hello(b"erin", b""));
    expect_exact(&mut erin, &helloack(0, PLAIN, b"erin"));
    let erin_id = erin.identify_emitter(1);
    erin.send(&tell(erin_id, 1, b"carol", b"from erin"));
    expect_exact(&mut erin, &stored(erin_id, 1, b"carol"));
    drop((t, erin));
    let server = restart(server, &dir, &extra);
    let (mut t, t_id) = teller(&server);
    let mut seq = 0;
    let mut tell_to = |t: &mut Raw, name: &[u8], code: u8| {
        seq += 1;
        tell_answered(t, t_id, seq, name, code);
    };
    // erin from the log; carol and dave have messages waiting; bob was
    // seen by the old server only.
    tell_to(&mut t, b"erin", 9);
    tell_to(&mut t, b"dave", 9);
    tell_to(&mut t, b"bob", 10);
}

#[test]
fn the_tell_names_bound_refuses_zero_and_needs_history() {
    let mut server = Proc::spawn("server", &["0", "--tell-names", "5"]);
    crate::cli::assert_exit(&mut server, 2);
    assert_eq!(
        server.stderr.expect(),
        "error: the following required arguments were not provided:"
    );
    assert_eq!(server.stderr.expect(), "  --history <DIR>");
    let dir = TempDir::new("tell-names-flag");
    let mut server = Proc::spawn(
        "server",
        &["0", "--history", dir.arg(), "--tell-names", "0"],
    );
    crate::cli::assert_exit(&mut server, 2);
    assert_eq!(
        server.stderr.expect(),
        "error: invalid value '0' for '--tell-names <N>': 0 is not in 1..=10000000"
    );
}

#[test]
fn without_history_a_tell_to_an_offline_name_is_erro() {
    let server = Server::start(&[]);
    let mut bob = Member::new(&server, "bob");
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut alice = Member::new(&server, "alice");
    let id = alice.em_id;
    away(&mut alice.em, id, bob);
    let seq = alice.next_seq();
    alice.em.send(&tell(id, seq, b"bob", b"x"));
    expect_exact(&mut alice.em, &erro(id, seq));
    let mut bob = Member::reclaim(&server, "bob");
    bob.ex.expect_silence();
}

#[test]
fn the_tell_bounds_refuse_zero_and_need_history() {
    let dir = TempDir::new("tell-flags");
    for (flag, want) in [
        (
            "--tell-max",
            "error: invalid value '0' for '--tell-max <N>': 0 is not in 1..=100000",
        ),
        (
            "--tell-max-bytes",
            "error: invalid value '0' for '--tell-max-bytes <BYTES>': 0 is not in 1..=1073741824",
        ),
    ] {
        let mut server = Proc::spawn("server", &["0", "--history", dir.arg(), flag, "0"]);
        crate::cli::assert_exit(&mut server, 2);
        assert_eq!(server.stderr.expect(), want);
    }
    let mut server = Proc::spawn("server", &["0", "--tell-max", "5"]);
    crate::cli::assert_exit(&mut server, 2);
    assert_eq!(
        server.stderr.expect(),
        "error: the following required arguments were not provided:"
    );
    assert_eq!(server.stderr.expect(), "  --history <DIR>");
}

/// Checkpoints let retention go past room records (HISTORY.md, "Rooms and
/// waiting messages"): once the segments holding the JOINs and the TELL are
/// deleted, a restart still has the membership, what bob missed and the
/// message waiting for him, from the checkpoint's copies alone.
#[test]
fn retention_takes_segments_with_room_records_once_a_checkpoint_covers_them() {
    let dir = TempDir::new("durable-checkpoint");
    // Segments of 256 KiB, at most 2 MiB kept.
    let limit = ["--history-max-bytes", "2097152"];
    let mut args = vec!["--history", dir.arg()];
    args.extend_from_slice(&limit);
    let server = Server::start(&args);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let mut writer = server.raw();
    let writer_id = writer.identify_emitter(1);
    away(&mut writer, writer_id, bob);
    writer.send(&msg(writer_id, ROOM, 1, b"first"));
    let got = crate::rooms::next_msg(&mut alice.ex, alice.ex_id);
    assert_eq!(got, msg(writer_id, ROOM, 1, b"first"));
    alice.ex.send(&ok(alice.ex_id, writer_id, 1));
    expect_exact(&mut writer, &ok(S, writer_id, 1));
    let seq = alice.next_seq();
    alice.em.send(&tell(alice.em_id, seq, b"bob", b"see you"));
    expect_exact(&mut alice.em, &stored(alice.em_id, seq, b"bob"));
    // 2.4 MB of messages to alice alone: segments fill, checkpoints follow
    // each, and retention deletes the first segments.
    let big = vec![b'x'; 60_000];
    let mut seq = 2;
    while std::fs::metadata(crate::store::segment_path(dir.path(), 0)).is_ok() {
        assert!(
            seq < 200,
            "the first segment is still there after {seq} messages"
        );
        writer.send(&msg(writer_id, alice.ex_id, seq, &big));
        let got = crate::rooms::next_msg(&mut alice.ex, alice.ex_id);
        assert_eq!(got.len(), 10 + big.len());
        alice.ex.send(&ok(alice.ex_id, writer_id, seq));
        expect_exact(&mut writer, &ok(S, writer_id, seq));
        seq += 1;
    }
    let alice_em = alice.em_id;
    drop((alice, writer));
    server.proc.signal(libc::SIGKILL);
    drop(server);
    let server = Server::start(&args);
    let mut bob = Member::new(&server, "bob");
    expect_exact(&mut bob.ex, &who(bob.ex_id, 0, writer_id, PLAIN, b""));
    expect_exact(&mut bob.ex, &msg(writer_id, ROOM, 1, b"first"));
    expect_waiting(&mut bob.ex, bob.ex_id, 2);
    expect_exact(&mut bob.ex, &who(bob.ex_id, 3, alice_em, PLAIN, b"alice"));
    expect_exact(&mut bob.ex, &msg(alice_em, bob.ex_id, 4, b"see you"));
    bob.ex.expect_silence();
}
