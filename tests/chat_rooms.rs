//! Rooms in `evchat chat`, through the real binaries (PROTOCOL.md,
//! "Extension: rooms and queues"; README, "Rooms"): `/join`, `/leave`,
//! `/rooms`, `/to #room`, messages shown with their room, each ROOMACK
//! code as its sentence, and the sentence for a chat without a name.
//! Piped chats, so every line is exact; every wait is for a line or an
//! exit, with a deadline.

use crate::util::*;

/// `evchat chat ADDR --name NAME`, piped, once it has said who it is.
fn named(server: &Server, name: &str) -> Proc {
    let chat = Proc::spawn("evchat", &["chat", &server.target(), "--name", name]);
    let said = chat.stdout.expect_prefixed(&format!("you are {name}, "));
    assert!(said.ends_with(" (exhibitor)"), "{said}");
    chat
}

fn type_line(chat: &mut Proc, line: &str) {
    chat.input(&format!("{line}\n"));
}

/// Ends a chat's input and checks it left cleanly, saying nothing more.
fn leave_quietly(mut chat: Proc) {
    chat.close_input();
    assert_eq!(chat.wait().code(), Some(0));
    assert_eq!(chat.stdout.rest(), Vec::<String>::new());
    assert_eq!(chat.stderr.rest(), Vec::<String>::new());
}

#[test]
fn two_named_chats_talk_in_a_room_and_one_leaves_it() {
    let server = Server::start(&[]);
    let mut alice = named(&server, "alice");
    let mut bob = named(&server, "bob");

    type_line(&mut alice, "/join #ops");
    alice.stdout.expect_line("joined #ops (1 member)");
    // Any case finds the room; the server's spelling is shown.
    type_line(&mut bob, "/join #OPS");
    bob.stdout.expect_line("joined #ops (2 members)");
    type_line(&mut bob, "/rooms");
    bob.stdout.expect_line("rooms (1): #ops (2 members)");

    type_line(&mut alice, "/to #ops");
    alice.stdout.expect_line("now talking to #ops");
    type_line(&mut alice, "deploy done");
    bob.stdout.expect_line("alice in #ops: deploy done");
    // Our own copy (alice is a member) is shown once, with its mark.
    alice.stdout.expect_line("you to #ops: deploy done ✓");
    type_line(&mut bob, "/msg #ops thanks");
    alice.stdout.expect_line("bob in #ops: thanks");
    bob.stdout.expect_line("you to #ops: thanks ✓");

    type_line(&mut bob, "/leave #ops");
    bob.stdout.expect_line("left #ops");
    type_line(&mut bob, "/rooms");
    bob.stdout.expect_line("rooms (1): #ops (1 member)");
    // Sent to the room after bob left: alice (a member) still gets it, bob
    // does not; the next line bob shows is the one sent to him after it.
    type_line(&mut alice, "after you left");
    alice.stdout.expect_line("you to #ops: after you left ✓");
    type_line(&mut alice, "/msg bob just you");
    bob.stdout.expect_line("alice to you: just you");
    alice.stdout.expect_line("you to bob: just you ✓");

    // The last member leaving ends the room.
    type_line(&mut alice, "/leave #ops");
    alice.stdout.expect_line("left #ops");
    type_line(&mut alice, "/rooms");
    alice
        .stdout
        .expect_line("rooms (0): none; /join #room creates one");
    leave_quietly(alice);
    leave_quietly(bob);
}

#[test]
fn a_queue_room_gives_each_message_to_one_member() {
    let server = Server::start(&[]);
    let mut alice = named(&server, "alice");
    let mut bob = named(&server, "bob");
    let mut carol = named(&server, "carol");
    type_line(&mut alice, "/join #jobs --queue");
    alice.stdout.expect_line("joined queue #jobs (1 member)");
    type_line(&mut bob, "/join #jobs --queue");
    bob.stdout.expect_line("joined queue #jobs (2 members)");
    type_line(&mut carol, "/rooms");
    carol
        .stdout
        .expect_line("rooms (1): #jobs (queue, 2 members)");

    // carol is no member: a room is an address anyone may write to.
    type_line(&mut carol, "/to #jobs");
    carol.stdout.expect_line("now talking to #jobs");
    let jobs: Vec<String> = (1..=6).map(|n| format!("job {n}")).collect();
    for job in &jobs {
        type_line(&mut carol, job);
    }
    for job in &jobs {
        carol.stdout.expect_line(&format!("you to #jobs: {job} ✓"));
    }
    // Each OK came after the one member that took the job showed it.
    let mut taken: Vec<String> = Vec::new();
    let mut each = [0; 2];
    for (n, member) in [alice, bob].into_iter().enumerate() {
        let mut member = member;
        member.close_input();
        assert_eq!(member.wait().code(), Some(0));
        for line in member.stdout.rest() {
            let job = line
                .strip_prefix("carol in #jobs: ")
                .unwrap_or_else(|| panic!("unexpected line {line:?}"));
            taken.push(job.to_string());
            each[n] += 1;
        }
        assert_eq!(member.stderr.rest(), Vec::<String>::new());
    }
    taken.sort();
    assert_eq!(taken, jobs, "each job exactly once");
    // In turn: the second job went to the member the first did not.
    assert!(each[0] > 0 && each[1] > 0, "shared out: {each:?}");
    leave_quietly(carol);
}

#[test]
fn every_roomack_refusal_the_server_gives_is_one_sentence() {
    let server = Server::start(&[
        "--rooms-per-name",
        "2",
        "--room-members",
        "2",
        "--max-rooms",
        "3",
    ]);
    let mut alice = named(&server, "alice");
    let mut bob = named(&server, "bob");
    let mut carol = named(&server, "carol");

    // Code 1: judged by the server.
    type_line(&mut alice, "/join #9lives");
    alice.stdout.expect_line(
        "'#9lives' is not a room name: a letter, then up to 23 letters, digits, '.', '_' or '-'",
    );
    // Code 4: leaving a room one is not in, or one that does not exist.
    type_line(&mut alice, "/leave #nowhere");
    alice
        .stdout
        .expect_line("you are not in #nowhere (or it does not exist)");
    type_line(&mut alice, "/join #ops");
    alice.stdout.expect_line("joined #ops (1 member)");
    type_line(&mut bob, "/leave #ops");
    bob.stdout
        .expect_line("you are not in #ops (or it does not exist)");
    // Code 8, both ways.
    type_line(&mut bob, "/join #ops --queue");
    bob.stdout
        .expect_line("#ops is an ordinary room, not a queue: /join #ops without --queue");
    type_line(&mut alice, "/join #jobs --queue");
    alice.stdout.expect_line("joined queue #jobs (1 member)");
    type_line(&mut bob, "/join #jobs");
    bob.stdout
        .expect_line("#jobs is a queue room: /join #jobs --queue");
    // Code 2: alice is in --rooms-per-name 2 rooms.
    type_line(&mut alice, "/join #more");
    alice.stdout.expect_line(
        "cannot join #more: you are in as many rooms as the server allows; /leave one first",
    );
    // Code 3: #ops has --room-members 2.
    type_line(&mut bob, "/join #ops");
    bob.stdout.expect_line("joined #ops (2 members)");
    type_line(&mut carol, "/join #ops");
    carol
        .stdout
        .expect_line("cannot join #ops: it has as many members as the server allows");
    // Code 7: --max-rooms 3, with #ops, #jobs and this one.
    type_line(&mut carol, "/join #third");
    carol.stdout.expect_line("joined #third (1 member)");
    type_line(&mut carol, "/join #fourth");
    carol
        .stdout
        .expect_line("cannot create #fourth: the server has as many rooms as it allows");
    // A room nobody created cannot be talked to: said, nothing sent.
    type_line(&mut carol, "/to #fourth");
    carol.stderr.expect_line(
        "evchat chat: line 4: no room '#fourth' exists; /join #fourth creates it, /rooms \
         lists them; nothing sent",
    );
    leave_quietly(alice);
    leave_quietly(bob);
    leave_quietly(carol);
}

#[test]
fn room_commands_without_a_name_say_why_and_send_nothing() {
    let server = Server::start(&[]);
    let mut chat = Proc::spawn("evchat", &["chat", &server.target()]);
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    for line in [
        "/join #ops",
        "/leave #ops",
        "/rooms",
        "/to #ops",
        "/msg #ops hi",
    ] {
        type_line(&mut chat, line);
    }
    for n in 1..=5 {
        chat.stderr.expect_line(&format!(
            "evchat chat: line {n}: rooms belong to names: start evchat chat with --name NAME \
             (or --user NAME on a server with accounts); nothing sent"
        ));
    }
    // Typing errors are caught before anything is sent, name or not.
    type_line(&mut chat, "/join ops");
    chat.stderr.expect_line(
        "evchat chat: line 6: 'ops' is not a room: rooms are written #name; nothing sent",
    );
    type_line(&mut chat, "/join #ops --fast");
    chat.stderr
        .expect_line("evchat chat: line 7: usage: /join #room [--queue]; nothing sent");
    type_line(&mut chat, &format!("/join #{}", "a".repeat(65)));
    chat.stderr.expect_line(&format!(
        "evchat chat: line 8: a room's name is at most 64 bytes; '#{}…' is longer; nothing sent",
        "a".repeat(24)
    ));
    leave_quietly(chat);
}

/// A member away and back (a new chat with the same name, on a server with
/// `--history`) is shown what its room said meanwhile, with the room's
/// name, though this chat never joined it itself.
#[test]
fn a_member_back_from_away_is_shown_what_its_room_said() {
    let dir = TempDir::new("chat-rooms-away");
    let server = Server::start(&["--history", dir.arg()]);
    let mut alice = named(&server, "alice");
    let mut bob = named(&server, "bob");
    type_line(&mut alice, "/join #ops");
    alice.stdout.expect_line("joined #ops (1 member)");
    type_line(&mut bob, "/join #ops");
    bob.stdout.expect_line("joined #ops (2 members)");
    leave_quietly(bob);

    type_line(&mut alice, "/msg #ops while you were out");
    alice
        .stdout
        .expect_line("you to #ops: while you were out ✓");
    type_line(&mut alice, "/msg #ops and this");
    alice.stdout.expect_line("you to #ops: and this ✓");

    let bob = named(&server, "bob");
    bob.stdout.expect_line("alice in #ops: while you were out");
    bob.stdout.expect_line("alice in #ops: and this");
    leave_quietly(bob);
    leave_quietly(alice);
}
