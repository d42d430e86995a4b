//! Rooms and waiting messages in `evchat chat`, through the real binary
//! (PROTOCOL.md, "Extension: rooms and queues" and "Waiting messages";
//! README, "Rooms"): `/join`, `/leave`, `/rooms`, `/to #room`, messages
//! shown with their room, each ROOMACK code as its sentence, the sentence
//! for a chat without a name; TELL to a name not online and a waiting
//! message shown as such, against a scripted server, which can give every
//! answer in one run (`chat_tell.rs` has the real server's). Piped chats,
//! so every line is exact; every wait is for a line or an exit, with a
//! deadline.

use crate::util::*;
use evchat::proto::ext::{ExtFrame, HelloAck, ROOMS, RoomAck, RoomList, Tell, Waiting, Who};
use evchat::proto::{Frame, Header, Kind, SERVER_ID};
use std::process::{Command, Stdio};

/// `evchat chat ADDR --name NAME`, piped, once it has said who it is.
fn named(server: &Server, name: &str) -> Proc {
    named_with(server, name, &[])
}

/// `evchat chat ADDR --name NAME EXTRA...`, piped, in UTC, once it has
/// said who it is.
pub(crate) fn named_with(server: &Server, name: &str, extra: &[&str]) -> Proc {
    let mut command = Command::new(bin("evchat"));
    command
        .args(["chat", &server.target(), "--name", name])
        .args(extra)
        .env("TZ", "UTC")
        .stdin(Stdio::piped());
    let chat = Proc::spawn_command(command, &format!("evchat chat {name}"));
    let said = chat.stdout.expect_prefixed(&format!("you are {name}, "));
    assert!(said.ends_with(" (exhibitor)"), "{said}");
    chat
}

pub(crate) fn type_line(chat: &mut Proc, line: &str) {
    chat.input(&format!("{line}\n"));
}

/// Ends a chat's input and checks it left cleanly, saying nothing more.
pub(crate) fn leave_quietly(mut chat: Proc) {
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
    // An explicit id is not the room, though the room is the target.
    type_line(&mut alice, "(0) to everyone");
    bob.stdout.expect_line("alice to all: to everyone");
    alice.stdout.expect_line("you to all: to everyone ✓");
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
    chat.stderr.expect_line(
        "evchat chat: line 7: usage: /join #room [--queue [--prefetch N]]; nothing sent",
    );
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

/// A scripted server for a chat named `name`: it answers both HELLOs with
/// code 0 and the name, the OIs with 4096 (exhibitor) and 1 (emitter), the
/// emitter's first request (ROOMS) with an empty ROOMLIST, and hands the
/// test both connections, exhibitor first.
fn scripted_named_server(name: &'static str) -> (String, std::sync::mpsc::Receiver<(Raw, Raw)>) {
    scripted_named_sessions(name, 1)
}

/// As [`scripted_named_server`], for `sessions` registrations one after
/// the other (a chat reconnecting registers again).
fn scripted_named_sessions(
    name: &'static str,
    sessions: usize,
) -> (String, std::sync::mpsc::Receiver<(Raw, Raw)>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let welcome = ExtFrame::HelloAck(HelloAck {
            origin: SERVER_ID,
            dest: 0,
            seq: 0,
            code: 0,
            version: 1,
            roles: 7,
            name: name.as_bytes().to_vec(),
        });
        let welcomed = |hello_len: usize| {
            let mut client = Raw::over(listener.accept().unwrap().0);
            client.expect_bytes(hello_len);
            client.send(&welcome.to_bytes());
            client
        };
        for session in 0..sessions {
            let first = session == 0;
            // The exhibitor's HELLO claims the name; the emitter's carries
            // none. Both come before either OI.
            let mut exhibitor = welcomed(14 + name.len());
            let mut emitter = welcomed(14);
            crate::chat::identified(&mut exhibitor, 4096);
            crate::chat::identified(&mut emitter, 1);
            let rooms = ExtFrame::Rooms(Header {
                kind: ROOMS,
                origin: 1,
                dest: SERVER_ID,
                seq: 1,
            });
            assert_eq!(emitter.expect_bytes(10), rooms.to_bytes().to_vec());
            let listed = ExtFrame::RoomList(RoomList {
                origin: SERVER_ID,
                dest: 1,
                seq: 1,
                rooms: vec![],
            });
            emitter.send(&listed.to_bytes());
            if first {
                // The first registration's CREQ, after ROOMS; a reconnected
                // chat sends its own after its JOINs, which the test reads.
                crate::chat::answer_registration_list(&mut exhibitor, &mut emitter, 2);
            }
            if tx.send((exhibitor, emitter)).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

fn tell_bytes(seq: u16, name: &str, text: &str) -> Vec<u8> {
    let tell = ExtFrame::Tell(Tell {
        origin: 1,
        dest: SERVER_ID,
        seq,
        name: name.as_bytes().to_vec(),
        text: text.as_bytes().to_vec().into(),
    });
    tell.to_bytes().to_vec()
}

fn tell_answer(seq: u16, code: u8, name: &str) -> Vec<u8> {
    let ack = ExtFrame::RoomAck(RoomAck {
        origin: SERVER_ID,
        dest: 1,
        seq,
        code,
        flags: 0,
        room: 0,
        members: 0,
        name: name.as_bytes().to_vec(),
    });
    ack.to_bytes().to_vec()
}

/// `/to NAME` for a name not online makes a named chat send TELL; each
/// answer is its mark ("stored for alice" on code 9). A message that waited
/// for our name comes after WAITING, is acknowledged like any, and is shown
/// marked, with the time the server stored it.
#[test]
fn a_name_not_online_is_told_and_waiting_messages_are_marked() {
    let (addr, connections) = scripted_named_server("carol");
    let mut chat = Proc::spawn_command(
        {
            let mut command = std::process::Command::new(bin("evchat"));
            command
                .args(["chat", &addr, "--name", "carol", "--timestamps", "always"])
                .env("TZ", "UTC")
                .stdin(std::process::Stdio::piped());
            command
        },
        "evchat",
    );
    chat.stdout
        .expect_line("you are carol, 1 (emitter) / 4096 (exhibitor)");
    let (mut exhibitor, mut emitter) = connections.recv_timeout(TIMEOUT).expect("registered");
    // Chat lines carry the local time first: "HH:MM:SS ".
    let untimed = |line: String| -> String {
        let (time, rest) = line.split_at(9);
        assert!(
            time.as_bytes()[2] == b':' && time.ends_with(' '),
            "{line:?}"
        );
        rest.to_string()
    };

    type_line(&mut chat, "/to alice");
    chat.stdout.expect_line(
        "now talking to alice, who is not online here: the server keeps messages for \
         them if it runs with --history",
    );
    type_line(&mut chat, "hi");
    assert_eq!(emitter.expect_bytes(18), tell_bytes(3, "alice", "hi"));
    emitter.send(&tell_answer(3, 9, "alice"));
    assert_eq!(
        untimed(chat.stdout.expect()),
        "you to alice: hi ⏳ stored for alice"
    );

    type_line(&mut chat, "/msg dave x");
    assert_eq!(emitter.expect_bytes(16), tell_bytes(4, "dave", "x"));
    emitter.send(&tell_answer(4, 10, ""));
    assert_eq!(
        untimed(chat.stdout.expect()),
        "you to dave: x ✗ not delivered: no one named dave is known to the server"
    );
    type_line(&mut chat, "again");
    assert_eq!(emitter.expect_bytes(21), tell_bytes(5, "alice", "again"));
    emitter.send(&tell_answer(5, 11, ""));
    assert_eq!(
        untimed(chat.stdout.expect()),
        "you to alice: again ✗ not stored: alice has as many messages waiting as the server \
         allows"
    );
    // alice came online meanwhile: the server shows it (OK), or refuses it.
    type_line(&mut chat, "seen?");
    assert_eq!(emitter.expect_bytes(21), tell_bytes(6, "alice", "seen?"));
    emitter.send_frame(&Frame::bare(Kind::Ok, SERVER_ID, 1, 6));
    assert_eq!(untimed(chat.stdout.expect()), "you to alice: seen? ✓");
    type_line(&mut chat, "gone");
    assert_eq!(emitter.expect_bytes(20), tell_bytes(7, "alice", "gone"));
    emitter.send_frame(&Frame::bare(Kind::Erro, SERVER_ID, 1, 7));
    assert_eq!(
        untimed(chat.stdout.expect()),
        "you to alice: gone ✗ not delivered: alice is not online (a server keeps messages for \
         later only with --history)"
    );
    // A TELL's L holds the name too: 65535 - 1 - 5 bytes of text at most.
    type_line(&mut chat, &"x".repeat(65_530));
    chat.stderr.expect_line(
        "evchat chat: line 7: text is 65530 bytes; a message to alice, who is not online \
         here, carries at most 65529; nothing sent",
    );

    // A message that waited: WAITING, WHO, MSG, each acknowledged.
    let waiting = ExtFrame::Waiting(Waiting {
        origin: SERVER_ID,
        dest: 4096,
        seq: 1,
        // 2025-12-01T13:45:02.123Z
        time_ms: 1_764_596_702_123,
    });
    exhibitor.send(&waiting.to_bytes());
    assert_eq!(
        exhibitor.expect_frame(),
        Frame::bare(Kind::Ok, 4096, SERVER_ID, 1)
    );
    let who = ExtFrame::Who(Who {
        origin: SERVER_ID,
        dest: 4096,
        seq: 2,
        id: 2,
        roles: 7,
        name: b"bob".to_vec(),
    });
    exhibitor.send(&who.to_bytes());
    assert_eq!(
        exhibitor.expect_frame(),
        Frame::bare(Kind::Ok, 4096, SERVER_ID, 2)
    );
    exhibitor.send_frame(&Frame::msg(2, 4096, 3, b"hi carol".to_vec()).unwrap());
    chat.stdout
        .expect_line("13:45:02 bob (while you were away): hi carol");
    assert_eq!(exhibitor.expect_frame(), Frame::bare(Kind::Ok, 4096, 2, 3));
    // The next one is live: not marked.
    exhibitor.send_frame(&Frame::msg(2, 4096, 4, b"now".to_vec()).unwrap());
    assert_eq!(untimed(chat.stdout.expect()), "bob to you: now");
    assert_eq!(exhibitor.expect_frame(), Frame::bare(Kind::Ok, 4096, 2, 4));
}

/// With accounts, creating a room needs `broadcast` (PROTOCOL.md, "Roles"):
/// an account with view and emit only gets code 6, as a sentence.
#[test]
fn a_join_the_account_may_not_make_is_one_sentence() {
    use evchat::auth::{Account, Accounts, Credential, Name, Roles, Secret};
    let dir = TempDir::new("chat-rooms-roles");
    let token = format!("evt_{}", "0123456789abcdef".repeat(4));
    let mut accounts = Accounts::default();
    accounts.upsert(Account {
        name: Name::new("ann").unwrap(),
        roles: Roles::parse("view,emit").unwrap(),
        secret: Secret::for_token(&Credential::new(token.clone().into_bytes())),
        expires: None,
    });
    let path = dir.path().join("accounts");
    accounts.save(&path).unwrap();
    let server = Server::start(&["--auth", path.to_str().unwrap()]);
    let mut command = std::process::Command::new(bin("evchat"));
    command
        .args(["chat", &server.target(), "--user", "ann"])
        .env("EVCHAT_TOKEN", &token)
        .stdin(std::process::Stdio::piped());
    let mut ann = Proc::spawn_command(command, "evchat");
    ann.stdout
        .expect_line("you are ann, 1 (emitter) / 4096 (exhibitor)");
    type_line(&mut ann, "/join #ops");
    ann.stdout.expect_line(
        "you may not join #ops: joining needs the view role, creating a room broadcast too",
    );
    type_line(&mut ann, "/rooms");
    ann.stdout
        .expect_line("rooms (0): none; /join #room creates one");
    leave_quietly(ann);
}

/// ROOMACK code 0 for the queue room "jobs" (16384, 1 member), to `seq`.
fn jobs_joined(seq: u16) -> Vec<u8> {
    let ack = ExtFrame::RoomAck(RoomAck {
        origin: SERVER_ID,
        dest: 1,
        seq,
        code: 0,
        flags: 1,
        room: 0x4000,
        members: 1,
        name: b"jobs".to_vec(),
    });
    ack.to_bytes().to_vec()
}

/// A queue joined with `--prefetch` is joined again with it after each
/// reconnection, by the bytes (PROTOCOL.md, "Prefetch": a server keeps the
/// membership, never the prefetch, so without this a worker back from a
/// dropped connection takes one message at a time); a JOIN again without
/// `--prefetch` forgets it, and the next reconnection sends no JOIN.
#[test]
fn a_chat_joins_its_queue_again_with_its_prefetch_after_a_reconnect() {
    let (addr, sessions) = scripted_named_sessions("w1", 3);
    let mut command = Command::new(bin("evchat"));
    command
        .args(["chat", &addr, "--name", "w1"])
        .stdin(Stdio::piped());
    let mut chat = Proc::spawn_command(command, "evchat chat w1");
    chat.stdout
        .expect_line("you are w1, 1 (emitter) / 4096 (exhibitor)");
    let (exhibitor, mut emitter) = sessions.recv_timeout(TIMEOUT).expect("registered");
    type_line(&mut chat, "/join #jobs --queue --prefetch 3");
    // JOIN(1, 65535, 2): flags 3 (a queue, a prefetch follows), "jobs", 3.
    let join_with_3 = |seq: u16| {
        let mut wire = vec![0, 12, 0, 1, 0xff, 0xff, 0, seq as u8, 0, 7, 3, 4];
        wire.extend_from_slice(b"jobs");
        wire.push(3);
        wire
    };
    // Its seq is 3: the CREQ sent on registering took 2.
    assert_eq!(emitter.expect_bytes(17), join_with_3(3));
    emitter.send(&jobs_joined(3));
    chat.stdout.expect_line("joined queue #jobs (1 member)");

    drop((exhibitor, emitter));
    chat.stdout
        .expect_line(&format!("connection to {addr} lost; reconnecting"));
    let (exhibitor, mut emitter) = sessions.recv_timeout(TIMEOUT).expect("registered again");
    chat.stdout
        .expect_line("reconnected: you are w1, 1 (emitter) / 4096 (exhibitor)");
    // After ROOMS: the JOIN with its prefetch, then the CREQ that marks the
    // end of the server's replay.
    assert_eq!(emitter.expect_bytes(17), join_with_3(2));
    emitter.send(&jobs_joined(2));
    chat.stdout.expect_line("joined queue #jobs (1 member)");
    let creq = Frame::bare(Kind::Creq, 1, 1, 3);
    assert_eq!(emitter.expect_frame(), creq);
    emitter.send_frame(&Frame::bare(Kind::Ok, SERVER_ID, 1, 3));

    // Joined again without --prefetch: back to 1, nothing to ask again.
    type_line(&mut chat, "/join #jobs --queue");
    let mut plain_join = vec![0, 12, 0, 1, 0xff, 0xff, 0, 4, 0, 6, 1, 4];
    plain_join.extend_from_slice(b"jobs");
    assert_eq!(emitter.expect_bytes(16), plain_join);
    emitter.send(&jobs_joined(4));
    chat.stdout.expect_line("joined queue #jobs (1 member)");
    drop((exhibitor, emitter));
    chat.stdout
        .expect_line(&format!("connection to {addr} lost; reconnecting"));
    let (_exhibitor, mut emitter) = sessions.recv_timeout(TIMEOUT).expect("registered again");
    chat.stdout
        .expect_line("reconnected: you are w1, 1 (emitter) / 4096 (exhibitor)");
    assert_eq!(emitter.expect_frame(), Frame::bare(Kind::Creq, 1, 1, 2));
}
