//! Waiting messages end to end: two real `evchat chat` processes and the
//! real `server` with `--history` (PROTOCOL.md, "Waiting messages", and
//! "evchat chat" item 8; README, "Rooms"). What the chat shows for each
//! answer the server gives a TELL, and a message told to a member who is
//! away shown to them once, marked, across a restart (SIGKILL) of the
//! server. Piped chats, so every line is exact; every wait is for a line
//! or an exit, with a deadline.

use crate::chat_rooms::{leave_quietly, named_with as named, type_line};
use crate::util::*;
use std::time::{SystemTime, UNIX_EPOCH};

/// Kills `server` (SIGKILL: it writes nothing more) and starts another on
/// the same history.
fn restart(server: Server, dir: &TempDir) -> Server {
    server.proc.signal(libc::SIGKILL);
    drop(server);
    Server::start(&["--history", dir.arg(), "--fsync", "always"])
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// "HH:MM:SS " in UTC for each second from `from` to `to`: the times a
/// line stamped within them may carry.
fn utc_times(from: u64, to: u64) -> Vec<String> {
    (from..=to)
        .map(|s| {
            let day = s % 86_400;
            format!("{:02}:{:02}:{:02} ", day / 3600, day / 60 % 60, day % 60)
        })
        .collect()
}

/// bob is a member of #ops and leaves; alice's `/to bob` then leaves a
/// message waiting, which the server keeps across a SIGKILL. bob back is
/// shown it once, marked, with the time it was stored; back a second time
/// he is not shown it again: the next line he shows is a live message.
#[test]
fn a_message_told_to_an_away_member_is_shown_once_after_a_restart() {
    let dir = TempDir::new("chat-tell-restart");
    let server = Server::start(&["--history", dir.arg(), "--fsync", "always"]);
    let mut bob = named(&server, "bob", &[]);
    type_line(&mut bob, "/join #ops");
    bob.stdout.expect_line("joined #ops (1 member)");
    leave_quietly(bob);

    let mut alice = named(&server, "alice", &[]);
    type_line(&mut alice, "/to bob");
    alice.stdout.expect_line(
        "now talking to bob, who is not online here: the server keeps messages for \
         them if it runs with --history",
    );
    let before = now_secs();
    type_line(&mut alice, "see you after the deploy");
    alice
        .stdout
        .expect_line("you to bob: see you after the deploy ⏳ stored for bob");
    let after = now_secs();
    leave_quietly(alice);

    let server = restart(server, &dir);
    let bob = named(&server, "bob", &["--timestamps", "always"]);
    let line = bob.stdout.expect();
    let (time, rest) = line.split_at(9);
    assert_eq!(
        rest,
        "alice (while you were away): see you after the deploy"
    );
    assert!(
        utc_times(before, after).iter().any(|t| t == time),
        "{line:?}: stamped with the time the server stored it, between {before} and {after}"
    );
    leave_quietly(bob);

    // Settled by bob's OK: back again, he is not shown it a second time.
    // Waiting messages come before any new one, so a live message being
    // the next line proves none came.
    let bob = named(&server, "bob", &[]);
    let mut alice = named(&server, "alice", &[]);
    type_line(&mut alice, "/msg bob welcome back");
    bob.stdout.expect_line("alice to you: welcome back");
    alice.stdout.expect_line("you to bob: welcome back ✓");
    assert_eq!(bob.stdout.next_within(QUIET), None);
    leave_quietly(alice);
    leave_quietly(bob);
}

/// The answers a TELL gets from the real server, each shown as its
/// sentence: code 10 for a name the server does not know (offline, in no
/// room), code 11 once the name has `--tell-max` messages waiting.
#[test]
fn the_servers_refusals_of_a_tell_are_each_one_sentence() {
    let dir = TempDir::new("chat-tell-refusals");
    let server = Server::start(&["--history", dir.arg(), "--tell-max", "1"]);
    let mut bob = named(&server, "bob", &[]);
    type_line(&mut bob, "/join #ops");
    bob.stdout.expect_line("joined #ops (1 member)");
    leave_quietly(bob);

    let mut alice = named(&server, "alice", &[]);
    type_line(&mut alice, "/msg nobody are you there?");
    alice.stdout.expect_line(
        "you to nobody: are you there? ✗ not delivered: no one named nobody is known to the \
         server",
    );
    type_line(&mut alice, "/msg bob first");
    alice
        .stdout
        .expect_line("you to bob: first ⏳ stored for bob");
    type_line(&mut alice, "/msg bob second");
    alice.stdout.expect_line(
        "you to bob: second ✗ not stored: bob has as many messages waiting as the server allows",
    );
    leave_quietly(alice);

    // Only the one stored was kept.
    let bob = named(&server, "bob", &[]);
    bob.stdout.expect_line("alice (while you were away): first");
    assert_eq!(bob.stdout.next_within(QUIET), None);
    leave_quietly(bob);
}

/// Without `--history` a TELL gets ERRO (nothing is stored): the chat says
/// why rather than a bare "not delivered", which read as a fault.
#[test]
fn a_tell_to_a_server_without_history_says_it_keeps_no_messages() {
    let server = Server::start(&[]);
    let mut alice = named(&server, "alice", &[]);
    type_line(&mut alice, "/msg bob are you there?");
    alice.stdout.expect_line(
        "you to bob: are you there? ✗ not delivered: bob is not online (a server keeps \
         messages for later only with --history)",
    );
    leave_quietly(alice);
}

/// Regression: after a restart, the WHO before a waiting message names the
/// teller's id then, which may be anyone's now, our own emitter's even
/// (bob, first back, is given id 1, alice's before). bob's chat took that
/// WHO as who holds id 1, and his `/to alice` sent his answer to himself
/// ("you to bob: ... ✓"). Now it is a TELL, stored for alice, and shown
/// to her when she is back.
#[test]
fn an_answer_to_a_waiting_message_after_a_restart_reaches_its_teller() {
    let dir = TempDir::new("chat-tell-answer");
    let server = Server::start(&["--history", dir.arg(), "--fsync", "always"]);
    let mut alice = named(&server, "alice", &[]);
    let mut bob = named(&server, "bob", &[]);
    type_line(&mut alice, "/join #ops");
    alice.stdout.expect_line("joined #ops (1 member)");
    type_line(&mut bob, "/join #ops");
    bob.stdout.expect_line("joined #ops (2 members)");
    leave_quietly(bob);
    type_line(&mut alice, "/msg bob call me");
    alice
        .stdout
        .expect_line("you to bob: call me ⏳ stored for bob");
    leave_quietly(alice);

    let server = restart(server, &dir);
    let mut bob = named(&server, "bob", &[]);
    bob.stdout
        .expect_line("alice (while you were away): call me");
    type_line(&mut bob, "/to alice");
    bob.stdout.expect_line(
        "now talking to alice, who is not online here: the server keeps messages for \
         them if it runs with --history",
    );
    type_line(&mut bob, "calling now");
    bob.stdout
        .expect_line("you to alice: calling now ⏳ stored for alice");
    leave_quietly(bob);
    let alice = named(&server, "alice", &[]);
    alice
        .stdout
        .expect_line("bob (while you were away): calling now");
    leave_quietly(alice);
}

/// Regression: a chat learns a name's id when its holder speaks and
/// forgets it only at a CLIST, so after bob left, alice's `/to bob` meant
/// his old id: the MSG got ERRO ("✗ not delivered") though the server
/// would have kept it for him. A named chat now sends TELL to a name it
/// knows too; the server finds it online or keeps the message waiting.
#[test]
fn a_name_that_left_since_it_spoke_is_told_not_sent_to_its_old_id() {
    let dir = TempDir::new("chat-tell-left");
    let server = Server::start(&["--history", dir.arg()]);
    let mut alice = named(&server, "alice", &[]);
    let mut bob = named(&server, "bob", &[]);
    type_line(&mut bob, "/join #ops");
    bob.stdout.expect_line("joined #ops (1 member)");
    type_line(&mut bob, "/msg alice back in five");
    alice.stdout.expect_line("bob to you: back in five");
    bob.stdout.expect_line("you to alice: back in five ✓");
    // Online: the TELL is shown by bob, and alice gets OK.
    type_line(&mut alice, "/to BOB");
    let bob_id = alice.stdout.expect_prefixed("now talking to bob (");
    assert!(bob_id.ends_with(')'), "{bob_id}");
    type_line(&mut alice, "ok");
    bob.stdout.expect_line("alice to you: ok");
    alice.stdout.expect_line("you to bob: ok ✓");
    leave_quietly(bob);

    type_line(&mut alice, "the meeting moved to three");
    alice
        .stdout
        .expect_line("you to bob: the meeting moved to three ⏳ stored for bob");
    leave_quietly(alice);
    let bob = named(&server, "bob", &[]);
    bob.stdout
        .expect_line("alice (while you were away): the meeting moved to three");
    leave_quietly(bob);
}
