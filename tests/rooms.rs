//! Rooms and work queues (PROTOCOL.md, "Extension: rooms and queues")
//! against the real `server` binary, byte for byte over raw TCP: JOIN,
//! LEAVE, ROOMS and every ROOMACK code, a MSG to a room and to a queue room,
//! membership that belongs to a name, and each bad input of issue 23.

use crate::identity::{accounts_file, header, hello, helloack, roles, token};
use crate::util::*;
use evchat::proto::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(crate) const S: ClientId = SERVER_ID;
/// The first room id (PROTOCOL.md, "Room ids").
pub(crate) const ROOM: ClientId = 0x4000;
/// The roles without accounts.
pub(crate) const PLAIN: u8 = 7;

pub(crate) fn ok(origin: ClientId, dest: ClientId, seq: u16) -> Vec<u8> {
    header(1, origin, dest, seq)
}

pub(crate) fn erro(dest: ClientId, seq: u16) -> Vec<u8> {
    header(2, S, dest, seq)
}

pub(crate) fn msg(origin: ClientId, dest: ClientId, seq: u16, text: &[u8]) -> Vec<u8> {
    let mut wire = header(5, origin, dest, seq);
    wire.extend_from_slice(&(text.len() as u16).to_be_bytes());
    wire.extend_from_slice(text);
    wire
}

pub(crate) fn join(origin: ClientId, seq: u16, queue: bool, name: &[u8]) -> Vec<u8> {
    let mut wire = header(12, origin, S, seq);
    wire.extend_from_slice(&((2 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&[u8::from(queue), name.len() as u8]);
    wire.extend_from_slice(name);
    wire
}

/// JOIN with the raw `flags` byte and, after the name, `tail` (the
/// prefetch byte when flag 2 is set): L counts whatever is given.
pub(crate) fn join_raw(origin: ClientId, seq: u16, flags: u8, name: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut wire = header(12, origin, S, seq);
    wire.extend_from_slice(&((2 + name.len() + tail.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&[flags, name.len() as u8]);
    wire.extend_from_slice(name);
    wire.extend_from_slice(tail);
    wire
}

pub(crate) fn leave(origin: ClientId, seq: u16, name: &[u8]) -> Vec<u8> {
    let mut wire = header(13, origin, S, seq);
    wire.extend_from_slice(&((1 + name.len()) as u16).to_be_bytes());
    wire.push(name.len() as u8);
    wire.extend_from_slice(name);
    wire
}

pub(crate) fn rooms(origin: ClientId, seq: u16) -> Vec<u8> {
    let mut wire = header(14, origin, S, seq);
    wire.extend_from_slice(&[0, 0]);
    wire
}

/// ROOMACK(65535, `dest`, `seq`) with `code` and, for code 0, the room.
pub(crate) fn roomack(
    dest: ClientId,
    seq: u16,
    code: u8,
    room: (ClientId, u8, u16, &[u8]),
) -> Vec<u8> {
    let (id, flags, members, name) = room;
    let mut wire = header(15, S, dest, seq);
    wire.extend_from_slice(&((7 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&[code, flags]);
    wire.extend_from_slice(&id.to_be_bytes());
    wire.extend_from_slice(&members.to_be_bytes());
    wire.push(name.len() as u8);
    wire.extend_from_slice(name);
    wire
}

pub(crate) fn refused(dest: ClientId, seq: u16, code: u8) -> Vec<u8> {
    roomack(dest, seq, code, (0, 0, 0, b""))
}

pub(crate) fn roomlist(
    dest: ClientId,
    seq: u16,
    entries: &[(ClientId, u8, u16, &[u8])],
) -> Vec<u8> {
    let mut body = (entries.len() as u16).to_be_bytes().to_vec();
    for (id, flags, members, name) in entries {
        body.extend_from_slice(&id.to_be_bytes());
        body.push(*flags);
        body.extend_from_slice(&members.to_be_bytes());
        body.push(name.len() as u8);
        body.extend_from_slice(name);
    }
    let mut wire = header(16, S, dest, seq);
    wire.extend_from_slice(&(body.len() as u16).to_be_bytes());
    wire.extend_from_slice(&body);
    wire
}

pub(crate) fn who(dest: ClientId, seq: u16, id: ClientId, roles: u8, name: &[u8]) -> Vec<u8> {
    let mut wire = header(10, S, dest, seq);
    wire.extend_from_slice(&((4 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&id.to_be_bytes());
    wire.extend_from_slice(&[roles, name.len() as u8]);
    wire.extend_from_slice(name);
    wire
}

/// A named pair: an exhibitor that claimed `name` and an emitter paired
/// with it (its HELLO carries no name: it takes the exhibitor's).
pub(crate) struct Member {
    pub(crate) ex: Raw,
    pub(crate) ex_id: ClientId,
    pub(crate) em: Raw,
    pub(crate) em_id: ClientId,
    /// The emitter's next seq.
    seq: u16,
}

impl Member {
    pub(crate) fn new(server: &Server, name: &str) -> Member {
        let mut ex = server.raw();
        ex.send(&hello(name.as_bytes(), b""));
        expect_exact(&mut ex, &helloack(0, PLAIN, name.as_bytes()));
        let ex_id = ex.identify_exhibitor();
        let mut em = server.raw();
        em.send(&hello(b"", b""));
        expect_exact(&mut em, &helloack(0, PLAIN, b""));
        let em_id = em.identify_emitter(ex_id);
        Member {
            ex,
            ex_id,
            em,
            em_id,
            seq: 1,
        }
    }

    /// As [`Member::new`], once the name's previous session has let it go
    /// (HELLO code 3 until then).
    pub(crate) fn reclaim(server: &Server, name: &str) -> Member {
        let mut ex = loop {
            let mut ex = server.raw();
            ex.send(&hello(name.as_bytes(), b""));
            let want = helloack(0, PLAIN, name.as_bytes());
            let got = ex.expect_bytes(14);
            if got == helloack(3, 0, b"") {
                continue;
            }
            assert_eq!(got, want[..14]);
            expect_exact(&mut ex, &want[14..]);
            break ex;
        };
        let ex_id = ex.identify_exhibitor();
        let mut em = server.raw();
        em.send(&hello(b"", b""));
        expect_exact(&mut em, &helloack(0, PLAIN, b""));
        let em_id = em.identify_emitter(ex_id);
        Member {
            ex,
            ex_id,
            em,
            em_id,
            seq: 1,
        }
    }

    /// A pair signed in to the account `name` (token secret) on a server
    /// with `--auth`; `bits` is its roles byte.
    pub(crate) fn signed_in(server: &Server, name: &str, bits: u8) -> Member {
        let hello_bytes = hello(name.as_bytes(), token(name).as_bytes());
        let ack = helloack(0, bits, name.as_bytes());
        let mut ex = server.raw();
        ex.send(&hello_bytes);
        expect_exact(&mut ex, &ack);
        let ex_id = ex.identify_exhibitor();
        let mut em = server.raw();
        em.send(&hello_bytes);
        expect_exact(&mut em, &ack);
        let em_id = em.identify_emitter(ex_id);
        Member {
            ex,
            ex_id,
            em,
            em_id,
            seq: 1,
        }
    }

    pub(crate) fn next_seq(&mut self) -> u16 {
        self.seq += 1;
        self.seq - 1
    }

    /// JOIN `room`; asserts the ROOMACK is `want` (built for this seq).
    pub(crate) fn join(
        &mut self,
        room: &str,
        queue: bool,
        want: impl FnOnce(ClientId, u16) -> Vec<u8>,
    ) {
        let seq = self.next_seq();
        self.em.send(&join(self.em_id, seq, queue, room.as_bytes()));
        expect_exact(&mut self.em, &want(self.em_id, seq));
    }

    /// JOIN the queue room `room` with `prefetch`; asserts the ROOMACK is
    /// `want`.
    pub(crate) fn join_prefetch(
        &mut self,
        room: &str,
        prefetch: u8,
        want: impl FnOnce(ClientId, u16) -> Vec<u8>,
    ) {
        let seq = self.next_seq();
        let wire = join_raw(self.em_id, seq, 3, room.as_bytes(), &[prefetch]);
        self.em.send(&wire);
        expect_exact(&mut self.em, &want(self.em_id, seq));
    }

    fn leave(&mut self, room: &str, want: impl FnOnce(ClientId, u16) -> Vec<u8>) {
        let seq = self.next_seq();
        self.em.send(&leave(self.em_id, seq, room.as_bytes()));
        expect_exact(&mut self.em, &want(self.em_id, seq));
    }

    /// MSG to `dest`; returns its seq.
    fn say(&mut self, dest: ClientId, text: &[u8]) -> u16 {
        let seq = self.next_seq();
        self.em.send(&msg(self.em_id, dest, seq, text));
        seq
    }
}

/// Drops `member`'s connections and waits until the server no longer
/// sends it anything: a MSG to its exhibitor gets ERRO once the session
/// is gone or being dismissed (when it was still there, only then).
pub(crate) fn away(writer: &mut Raw, writer_id: ClientId, member: Member) {
    let ex_id = member.ex_id;
    drop(member);
    writer.send(&msg(writer_id, ex_id, 0xfff0, b"ping"));
    expect_exact(writer, &erro(writer_id, 0xfff0));
}

/// The whole next frame, of either codec, as bytes.
pub(crate) fn next_frame(raw: &mut Raw) -> Vec<u8> {
    let mut wire = raw.expect_bytes(8);
    let kind = u16::from_be_bytes([wire[0], wire[1]]);
    let count = match kind {
        5 | 7 | 8.. => {
            let n = raw.expect_bytes(2);
            wire.extend_from_slice(&n);
            let n = u16::from_be_bytes([n[0], n[1]]) as usize;
            if kind == 7 { 2 * n } else { n }
        }
        _ => 0,
    };
    wire.extend_from_slice(&raw.expect_bytes(count));
    wire
}

#[test]
fn join_creates_a_room_rooms_lists_it_and_a_second_join_is_counted() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    alice.join("Ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"Ops")));
    // Joining again is done, not counted twice.
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"Ops")));
    let mut bob = Member::new(&server, "bob");
    bob.join("OPS", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"Ops")));
    bob.join("jobs", true, |d, s| {
        roomack(d, s, 0, (ROOM + 1, 1, 1, b"jobs"))
    });
    let seq = bob.next_seq();
    bob.em.send(&rooms(bob.em_id, seq));
    expect_exact(
        &mut bob.em,
        &roomlist(
            bob.em_id,
            seq,
            &[(ROOM, 0, 2, b"Ops"), (ROOM + 1, 1, 1, b"jobs")],
        ),
    );
    // A JOIN of an existing room with the other kind: code 8.
    alice.join("jobs", false, |d, s| refused(d, s, 8));
    alice.ex.expect_silence();
}

#[test]
fn a_room_message_reaches_every_member_and_its_ok_waits_for_all() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    // A name with capitals is a member under its lower-case form.
    let mut bob = Member::new(&server, "Bob");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    // A plain emitter, no member, writes to the room by its number.
    let mut carol = server.raw();
    let carol_id = carol.identify_emitter(1);
    carol.send(&msg(carol_id, ROOM, 1, b"deploy done"));
    for m in [&mut alice, &mut bob] {
        // Opted-in exhibitors are told who carol is (no name) first.
        expect_exact(&mut m.ex, &who(m.ex_id, 0, carol_id, PLAIN, b""));
        expect_exact(&mut m.ex, &msg(carol_id, ROOM, 1, b"deploy done"));
    }
    alice.ex.send(&ok(alice.ex_id, S, 0));
    alice.ex.send(&ok(alice.ex_id, carol_id, 1));
    bob.ex.send(&ok(bob.ex_id, S, 0));
    // One member has acknowledged: the emitter still waits.
    carol.expect_silence();
    bob.ex.send(&ok(bob.ex_id, carol_id, 1));
    expect_exact(&mut carol, &ok(S, carol_id, 1));
}

#[test]
fn a_member_who_writes_gets_its_own_copy_and_a_non_member_does_not() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let seq = alice.say(ROOM, b"mine");
    expect_exact(
        &mut alice.ex,
        &who(alice.ex_id, 0, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut alice.ex, &msg(alice.em_id, ROOM, seq, b"mine"));
    alice.ex.send(&ok(alice.ex_id, S, 0));
    alice.ex.send(&ok(alice.ex_id, alice.em_id, seq));
    expect_exact(&mut alice.em, &ok(S, alice.em_id, seq));
    // bob is no member: he writes, alice shows it, he does not.
    let seq = bob.say(ROOM, b"hello ops");
    expect_exact(
        &mut alice.ex,
        &who(alice.ex_id, 1, bob.em_id, PLAIN, b"bob"),
    );
    expect_exact(&mut alice.ex, &msg(bob.em_id, ROOM, seq, b"hello ops"));
    alice.ex.send(&ok(alice.ex_id, S, 1));
    alice.ex.send(&ok(alice.ex_id, bob.em_id, seq));
    expect_exact(&mut bob.em, &ok(S, bob.em_id, seq));
    bob.ex.expect_silence();
}

#[test]
fn membership_belongs_to_the_name_and_survives_a_reconnect() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut writer = server.raw();
    let writer_id = writer.identify_emitter(1);
    drop(alice);
    // Away: nobody shows it (sent to a closing session or to none).
    writer.send(&msg(writer_id, ROOM, 1, b"x"));
    expect_exact(&mut writer, &erro(writer_id, 1));
    // Back under the same name, without a JOIN: still a member.
    let mut alice = Member::reclaim(&server, "alice");
    writer.send(&msg(writer_id, ROOM, 2, b"welcome back"));
    expect_exact(&mut alice.ex, &who(alice.ex_id, 0, writer_id, PLAIN, b""));
    expect_exact(&mut alice.ex, &msg(writer_id, ROOM, 2, b"welcome back"));
    alice.ex.send(&ok(alice.ex_id, S, 0));
    alice.ex.send(&ok(alice.ex_id, writer_id, 2));
    expect_exact(&mut writer, &ok(S, writer_id, 2));
}

#[test]
fn a_room_nobody_belongs_to_disappears() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    alice.leave("OPS", |d, s| roomack(d, s, 0, (ROOM, 0, 0, b"ops")));
    let seq = alice.next_seq();
    alice.em.send(&rooms(alice.em_id, seq));
    expect_exact(&mut alice.em, &roomlist(alice.em_id, seq, &[]));
    // Its id names nothing now: a MSG to it has no target.
    let seq = alice.say(ROOM, b"anyone?");
    expect_exact(&mut alice.em, &erro(alice.em_id, seq));
    // Leave of a room one is not in (it does not exist either): code 4.
    alice.leave("ops", |d, s| refused(d, s, 4));
    // A new room takes the lowest free id again.
    alice.join("dev", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"dev")));
}

#[test]
fn leave_of_a_room_one_is_not_in_is_code_4() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    bob.leave("ops", |d, s| refused(d, s, 4));
    // The room is untouched.
    let seq = bob.next_seq();
    bob.em.send(&rooms(bob.em_id, seq));
    expect_exact(
        &mut bob.em,
        &roomlist(bob.em_id, seq, &[(ROOM, 0, 1, b"ops")]),
    );
}

#[test]
fn a_msg_to_a_room_id_that_does_not_exist_is_erro() {
    let server = Server::start(&[]);
    let mut plain = server.raw();
    let id = plain.identify_emitter(1);
    for (seq, dest) in [(1, ROOM), (2, 0x7fff), (3, 0x5000)] {
        plain.send(&msg(id, dest, seq, b"hi"));
        expect_exact(&mut plain, &erro(id, seq));
    }
}

#[test]
fn a_bad_or_over_long_room_name() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    for name in [
        "1ops",
        "ops room",
        "ops\u{202e}",
        &"r".repeat(25), // one over the rule's 24
        &"r".repeat(64), // the frame's limit, still no name
    ] {
        alice.join(name, false, |d, s| refused(d, s, 1));
        alice.leave(name, |d, s| refused(d, s, 1));
    }
    // 65 bytes: the frame is malformed; ERRO and close.
    let seq = alice.next_seq();
    alice.em.send(&join(alice.em_id, seq, false, &[b'r'; 65]));
    expect_exact(&mut alice.em, &erro(alice.em_id, seq));
    alice.em.expect_closed();
}

#[test]
fn join_beyond_the_rooms_per_name_and_members_limits() {
    let server = Server::start(&["--rooms-per-name", "2", "--room-members", "2"]);
    let mut alice = Member::new(&server, "alice");
    alice.join("a", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"a")));
    alice.join("b", false, |d, s| roomack(d, s, 0, (ROOM + 1, 0, 1, b"b")));
    alice.join("c", false, |d, s| refused(d, s, 2));
    let mut bob = Member::new(&server, "bob");
    bob.join("a", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"a")));
    let mut carol = Member::new(&server, "carol");
    carol.join("a", false, |d, s| refused(d, s, 3));
    // Leaving makes room.
    bob.leave("a", |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"a")));
    carol.join("a", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"a")));
}

#[test]
fn the_server_holds_at_most_max_rooms() {
    let server = Server::start(&["--max-rooms", "1"]);
    let mut alice = Member::new(&server, "alice");
    alice.join("a", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"a")));
    alice.join("b", false, |d, s| refused(d, s, 7));
}

#[test]
fn a_session_without_a_name_cannot_join() {
    let server = Server::start(&[]);
    let mut em = server.raw();
    em.send(&hello(b"", b""));
    expect_exact(&mut em, &helloack(0, PLAIN, b""));
    let id = em.identify_emitter(1);
    em.send(&join(id, 1, false, b"ops"));
    expect_exact(&mut em, &refused(id, 1, 5));
    em.send(&leave(id, 2, b"ops"));
    expect_exact(&mut em, &refused(id, 2, 5));
}

#[test]
fn room_frames_from_an_exhibitor_or_a_plain_client() {
    let server = Server::start(&[]);
    let alice = Member::new(&server, "alice");
    let mut ex = alice.ex;
    // From an opted-in exhibitor: ERRO, kept.
    ex.send(&join(alice.ex_id, 1, false, b"ops"));
    expect_exact(&mut ex, &erro(alice.ex_id, 1));
    ex.send(&rooms(alice.ex_id, 2));
    expect_exact(&mut ex, &erro(alice.ex_id, 2));
    ex.expect_silence();
    // From a client that never opted in: an unknown type, ERRO and close.
    let mut plain = server.raw();
    let id = plain.identify_emitter(1);
    plain.send(&join(id, 1, false, b"ops"));
    expect_exact(&mut plain, &erro(id, 1));
    plain.expect_closed();
}

#[test]
fn room_answers_keep_their_place_among_replies() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    // A MSG to bob, unacknowledged, then a JOIN: the ROOMACK waits for
    // the MSG's OK (rule 4's order).
    let first = alice.say(bob.ex_id, b"one");
    let seq = alice.next_seq();
    alice.em.send(&join(alice.em_id, seq, false, b"ops"));
    expect_exact(
        &mut bob.ex,
        &who(bob.ex_id, 0, alice.em_id, PLAIN, b"alice"),
    );
    expect_exact(&mut bob.ex, &msg(alice.em_id, bob.ex_id, first, b"one"));
    alice.em.expect_silence();
    bob.ex.send(&ok(bob.ex_id, S, 0));
    bob.ex.send(&ok(bob.ex_id, alice.em_id, first));
    expect_exact(&mut alice.em, &ok(S, alice.em_id, first));
    expect_exact(
        &mut alice.em,
        &roomack(alice.em_id, seq, 0, (ROOM, 0, 1, b"ops")),
    );
}

#[test]
fn a_spoofed_origin_in_a_join_closes() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    alice.em.send(&join(alice.em_id + 1, 1, false, b"ops"));
    expect_exact(&mut alice.em, &erro(alice.em_id, 1));
    alice.em.expect_closed();
}

#[test]
fn with_history_a_member_back_from_away_gets_what_it_missed_once_in_order() {
    let dir = TempDir::new("rooms-catch-up");
    let server = Server::start(&["--history", dir.arg()]);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let mut writer = server.raw();
    let writer_id = writer.identify_emitter(1);
    away(&mut writer, writer_id, bob);
    // While bob is away alice shows two messages.
    for (seq, text) in [(1u16, &b"one"[..]), (2, b"two")] {
        writer.send(&msg(writer_id, ROOM, seq, text));
        let got = next_msg(&mut alice.ex, alice.ex_id);
        assert_eq!(got, msg(writer_id, ROOM, seq, text));
        alice.ex.send(&ok(alice.ex_id, writer_id, seq));
        expect_exact(&mut writer, &ok(S, writer_id, seq));
    }
    // bob is back: what the room said while away comes first, in order,
    // numbered by the server, before anything new.
    let mut bob = Member::reclaim(&server, "bob");
    writer.send(&msg(writer_id, ROOM, 3, b"three"));
    expect_exact(&mut bob.ex, &who(bob.ex_id, 0, writer_id, PLAIN, b""));
    expect_exact(&mut bob.ex, &msg(writer_id, ROOM, 1, b"one"));
    expect_exact(&mut bob.ex, &msg(writer_id, ROOM, 2, b"two"));
    expect_exact(&mut bob.ex, &msg(writer_id, ROOM, 3, b"three"));
    for seq in 0..=3 {
        let to = if seq == 0 { S } else { writer_id };
        bob.ex.send(&ok(bob.ex_id, to, seq));
    }
    assert_eq!(
        next_msg(&mut alice.ex, alice.ex_id),
        msg(writer_id, ROOM, 3, b"three")
    );
    alice.ex.send(&ok(alice.ex_id, writer_id, 3));
    expect_exact(&mut writer, &ok(S, writer_id, 3));
    // Back again at once: nothing missed, nothing sent twice.
    drop(bob);
    let mut bob = Member::reclaim(&server, "bob");
    bob.ex.expect_silence();
    // A replay never reaches a non-member.
    let mut carol = Member::new(&server, "carol");
    carol.ex.expect_silence();
    let seq = carol.next_seq();
    carol.em.send(&rooms(carol.em_id, seq));
    expect_exact(
        &mut carol.em,
        &roomlist(carol.em_id, seq, &[(ROOM, 0, 2, b"ops")]),
    );
}

#[test]
fn without_history_nothing_is_kept_for_a_member_away() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    let mut bob = Member::new(&server, "bob");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let mut writer = server.raw();
    let writer_id = writer.identify_emitter(1);
    away(&mut writer, writer_id, bob);
    writer.send(&msg(writer_id, ROOM, 1, b"one"));
    assert_eq!(
        next_msg(&mut alice.ex, alice.ex_id),
        msg(writer_id, ROOM, 1, b"one")
    );
    alice.ex.send(&ok(alice.ex_id, writer_id, 1));
    expect_exact(&mut writer, &ok(S, writer_id, 1));
    let mut bob = Member::reclaim(&server, "bob");
    bob.ex.expect_silence();
}

#[test]
fn with_accounts_creating_a_room_needs_broadcast_and_joining_needs_view() {
    let dir = TempDir::new("rooms-auth");
    let file = accounts_file(
        &dir,
        &[
            ("alice", roles("view,emit,broadcast")),
            ("talker", roles("view,emit")),
        ],
    );
    let server = Server::start(&["--auth", &file]);
    let mut alice = Member::signed_in(&server, "alice", 7);
    let mut talker = Member::signed_in(&server, "talker", 3);
    // talker may not create a room (either kind) ...
    talker.join("mine", false, |d, s| refused(d, s, 6));
    talker.join("jobs", true, |d, s| refused(d, s, 6));
    // ... but joins one alice made, and writes to it with emit.
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    talker.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
    let seq = talker.say(ROOM, b"hi");
    expect_exact(
        &mut alice.ex,
        &who(alice.ex_id, 0, talker.em_id, 3, b"talker"),
    );
    expect_exact(&mut alice.ex, &msg(talker.em_id, ROOM, seq, b"hi"));
}

// ---- work queues -----------------------------------------------------------

/// Reads `raw` until the MSG, acknowledging any WHO on the way; returns the
/// MSG's bytes.
pub(crate) fn next_msg(raw: &mut Raw, own: ClientId) -> Vec<u8> {
    loop {
        let frame = next_frame(raw);
        let seq = u16::from_be_bytes([frame[6], frame[7]]);
        match u16::from_be_bytes([frame[0], frame[1]]) {
            10 => raw.send(&ok(own, S, seq)),
            5 => return frame,
            other => panic!("unexpected frame type {other}: {frame:?}"),
        }
    }
}

/// Members w1 and w2 of the queue room "jobs" (created by w1), and an
/// unpaired emitter, the boss, who writes to it: what each queue test starts from.
fn queue_of_two(server: &Server) -> (Member, Member, Raw, ClientId) {
    let mut w1 = Member::new(server, "w1");
    let mut w2 = Member::new(server, "w2");
    w1.join("jobs", true, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    w2.join("jobs", true, |d, s| roomack(d, s, 0, (ROOM, 1, 2, b"jobs")));
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    (w1, w2, boss, boss_id)
}

#[test]
fn a_queue_gives_each_message_to_one_member_in_turn_one_at_a_time() {
    let server = Server::start(&[]);
    let (mut w1, mut w2, mut boss, boss_id) = queue_of_two(&server);
    for seq in 1..=3 {
        boss.send(&msg(boss_id, ROOM, seq, format!("job {seq}").as_bytes()));
    }
    // Round robin, prefetch 1: job 1 to w1, job 2 to w2, job 3 waits.
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 1, b"job 1")
    );
    assert_eq!(
        next_msg(&mut w2.ex, w2.ex_id),
        msg(boss_id, ROOM, 2, b"job 2")
    );
    w1.ex.expect_silence();
    w2.ex.expect_silence();
    // w2 is done first: job 3 is its; job 1's reply still holds job 2's back.
    w2.ex.send(&ok(w2.ex_id, boss_id, 2));
    assert_eq!(
        next_msg(&mut w2.ex, w2.ex_id),
        msg(boss_id, ROOM, 3, b"job 3")
    );
    boss.expect_silence();
    w1.ex.send(&ok(w1.ex_id, boss_id, 1));
    expect_exact(&mut boss, &ok(S, boss_id, 1));
    expect_exact(&mut boss, &ok(S, boss_id, 2));
    // An ERRO from a member is a refusal, not a loss: the sender gets ERRO.
    w2.ex.send(&header(2, w2.ex_id, boss_id, 3));
    expect_exact(&mut boss, &erro(boss_id, 3));
    w1.ex.expect_silence();
}

#[test]
fn a_queue_member_that_disconnects_holding_a_message_passes_it_on() {
    let server = Server::start(&[]);
    let (mut w1, mut w2, mut boss, boss_id) = queue_of_two(&server);
    boss.send(&msg(boss_id, ROOM, 1, b"job"));
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 1, b"job")
    );
    drop(w1);
    assert_eq!(
        next_msg(&mut w2.ex, w2.ex_id),
        msg(boss_id, ROOM, 1, b"job")
    );
    w2.ex.send(&ok(w2.ex_id, boss_id, 1));
    expect_exact(&mut boss, &ok(S, boss_id, 1));
}

#[test]
fn a_queue_member_that_leaves_the_room_holding_a_message_passes_it_on() {
    let server = Server::start(&[]);
    let (mut w1, mut w2, mut boss, boss_id) = queue_of_two(&server);
    boss.send(&msg(boss_id, ROOM, 1, b"job"));
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 1, b"job")
    );
    w1.leave("jobs", |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    assert_eq!(
        next_msg(&mut w2.ex, w2.ex_id),
        msg(boss_id, ROOM, 1, b"job")
    );
    // w1's late OK settles nothing: the message is w2's now.
    w1.ex.send(&ok(w1.ex_id, boss_id, 1));
    boss.expect_silence();
    w2.ex.send(&ok(w2.ex_id, boss_id, 1));
    expect_exact(&mut boss, &ok(S, boss_id, 1));
}

#[test]
fn a_queue_member_that_never_acknowledges_is_dropped_and_the_message_goes_on() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut w1, mut w2, mut boss, boss_id) = queue_of_two(&server);
    boss.send(&msg(boss_id, ROOM, 1, b"job"));
    // w1 takes it and stays silent: at the ack timeout it is closed as
    // unresponsive and w2 gets the message.
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 1, b"job")
    );
    assert_eq!(
        next_msg(&mut w2.ex, w2.ex_id),
        msg(boss_id, ROOM, 1, b"job")
    );
    w1.ex.expect_closed();
    w2.ex.send(&ok(w2.ex_id, boss_id, 1));
    expect_exact(&mut boss, &ok(S, boss_id, 1));
}

#[test]
fn a_flood_into_a_queue_with_no_member_online_is_bounded() {
    let server = Server::start(&["--queue-depth", "3", "--queue-wait", "0.5"]);
    let mut w1 = Member::new(&server, "w1");
    w1.join("jobs", true, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    let mut other = Member::new(&server, "other");
    // Gone, or about to be: a message it was given would be passed on and
    // wait like the rest.
    drop(w1.ex);
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    // 3 wait; the 4th and later are refused at once, in reply order after
    // the waiting ones, which are given up on after --queue-wait.
    let started = Instant::now();
    for seq in 1..=50 {
        boss.send(&msg(boss_id, ROOM, seq, b"job"));
    }
    for seq in 1..=50 {
        expect_exact(&mut boss, &erro(boss_id, seq));
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    // Meanwhile others are served as usual.
    let seq = other.say(other.ex_id, b"still here");
    expect_exact(
        &mut other.ex,
        &who(other.ex_id, 0, other.em_id, PLAIN, b"other"),
    );
    expect_exact(
        &mut other.ex,
        &msg(other.em_id, other.ex_id, seq, b"still here"),
    );
}

#[test]
fn a_queue_message_waits_for_a_member_to_come_online() {
    let server = Server::start(&[]);
    let mut w1 = Member::new(&server, "w1");
    w1.join("jobs", true, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    drop(w1);
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    // Sent while w1 may still be closing: it is delivered either way.
    boss.send(&msg(boss_id, ROOM, 1, b"job"));
    let mut w1 = Member::reclaim(&server, "w1");
    let got = next_msg(&mut w1.ex, w1.ex_id);
    assert_eq!(got, msg(boss_id, ROOM, 1, b"job"));
    w1.ex.send(&ok(w1.ex_id, boss_id, 1));
    expect_exact(&mut boss, &ok(S, boss_id, 1));
}

#[test]
fn a_queue_shares_1000_messages_among_3_members_one_killed_halfway() {
    const MESSAGES: u16 = 1000;
    let server = Server::start(&[]);
    let mut members: Vec<Member> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| Member::new(&server, name))
        .collect();
    for (n, m) in members.iter_mut().enumerate() {
        let count = n as u16 + 1;
        m.join("jobs", true, |d, s| {
            roomack(d, s, 0, (ROOM, 1, count, b"jobs"))
        });
    }
    // Each member acknowledges what it gets and returns the numbers it
    // acknowledged. The victim is killed holding its 101st, unacknowledged;
    // the others stop at the text "stop", acknowledged and not counted.
    let handles: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(n, m)| {
            std::thread::spawn(move || {
                let Member {
                    mut ex, ex_id, em, ..
                } = m;
                let mut acked = Vec::new();
                loop {
                    let frame = next_msg(&mut ex, ex_id);
                    let text = std::str::from_utf8(&frame[10..]).unwrap().to_string();
                    if n == 0 && acked.len() == 100 {
                        drop((ex, em));
                        return acked;
                    }
                    let origin = u16::from_be_bytes([frame[2], frame[3]]);
                    let seq = u16::from_be_bytes([frame[6], frame[7]]);
                    ex.send(&ok(ex_id, origin, seq));
                    if text == "stop" {
                        return acked;
                    }
                    acked.push(text.parse::<u16>().unwrap());
                }
            })
        })
        .collect();
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    for number in 1..=MESSAGES {
        boss.send(&msg(boss_id, ROOM, number, number.to_string().as_bytes()));
    }
    for seq in 1..=MESSAGES {
        expect_exact(&mut boss, &ok(S, boss_id, seq));
    }
    // Both survivors are free now: one "stop" each, in turn.
    for seq in MESSAGES + 1..=MESSAGES + 2 {
        boss.send(&msg(boss_id, ROOM, seq, b"stop"));
    }
    for seq in MESSAGES + 1..=MESSAGES + 2 {
        expect_exact(&mut boss, &ok(S, boss_id, seq));
    }
    let acked: Vec<Vec<u16>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut count: HashMap<u16, usize> = HashMap::new();
    for number in acked.iter().flatten() {
        *count.entry(*number).or_default() += 1;
    }
    assert_eq!(count.len(), MESSAGES as usize, "a message was lost");
    assert!(
        count.values().all(|&c| c == 1),
        "a message was acknowledged twice"
    );
    assert_eq!(acked[0].len(), 100);
    assert!(
        !acked[1].is_empty() && !acked[2].is_empty(),
        "{:?}",
        acked.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

// ---- prefetch ---------------------------------------------------------------

/// The boss sends "job N" (seq N) for each N of `jobs` to the queue room.
fn send_jobs(boss: &mut Raw, boss_id: ClientId, jobs: std::ops::RangeInclusive<u16>) {
    for seq in jobs {
        boss.send(&msg(boss_id, ROOM, seq, format!("job {seq}").as_bytes()));
    }
}

#[test]
fn a_member_with_prefetch_3_holds_3_before_acking_and_each_ack_frees_one() {
    let server = Server::start(&[]);
    let mut w1 = Member::new(&server, "w1");
    // The ROOMACK's flags are the room's kind: 1, not the JOIN's 3.
    w1.join_prefetch("jobs", 3, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    send_jobs(&mut boss, boss_id, 1..=5);
    for seq in 1..=3 {
        let want = msg(boss_id, ROOM, seq, format!("job {seq}").as_bytes());
        assert_eq!(next_msg(&mut w1.ex, w1.ex_id), want);
    }
    w1.ex.expect_silence();
    // Each OK settles the oldest held and lets one more through.
    w1.ex.send(&ok(w1.ex_id, boss_id, 1));
    expect_exact(&mut boss, &ok(S, boss_id, 1));
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 4, b"job 4")
    );
    w1.ex.expect_silence();
    w1.ex.send(&ok(w1.ex_id, boss_id, 2));
    expect_exact(&mut boss, &ok(S, boss_id, 2));
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 5, b"job 5")
    );
    for seq in 3..=5 {
        w1.ex.send(&ok(w1.ex_id, boss_id, seq));
        expect_exact(&mut boss, &ok(S, boss_id, seq));
    }
    boss.expect_silence();
}

#[test]
fn a_join_again_without_a_prefetch_is_back_to_prefetch_1() {
    let server = Server::start(&[]);
    let mut w1 = Member::new(&server, "w1");
    w1.join_prefetch("jobs", 3, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    w1.join("jobs", true, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    send_jobs(&mut boss, boss_id, 1..=2);
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 1, b"job 1")
    );
    w1.ex.expect_silence();
    w1.ex.send(&ok(w1.ex_id, boss_id, 1));
    assert_eq!(
        next_msg(&mut w1.ex, w1.ex_id),
        msg(boss_id, ROOM, 2, b"job 2")
    );
}

/// w1 (prefetch 3) holds jobs 1..=3; w2 (prefetch 3) joined after and
/// holds nothing: what the passing-on tests start from.
fn w1_holding_three(server: &Server) -> (Member, Member, Raw, ClientId) {
    let mut w1 = Member::new(server, "w1");
    w1.join_prefetch("jobs", 3, |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    let mut boss = server.raw();
    let boss_id = boss.identify_emitter(1);
    send_jobs(&mut boss, boss_id, 1..=3);
    for seq in 1..=3 {
        let want = msg(boss_id, ROOM, seq, format!("job {seq}").as_bytes());
        assert_eq!(next_msg(&mut w1.ex, w1.ex_id), want);
    }
    let mut w2 = Member::new(server, "w2");
    w2.join_prefetch("jobs", 3, |d, s| roomack(d, s, 0, (ROOM, 1, 2, b"jobs")));
    w2.ex.expect_silence();
    (w1, w2, boss, boss_id)
}

/// w2 gets jobs 1..=3 in order, acknowledges them, and the boss gets its
/// three OKs in order.
fn w2_takes_the_three_over(w2: &mut Member, boss: &mut Raw, boss_id: ClientId) {
    for seq in 1..=3 {
        let want = msg(boss_id, ROOM, seq, format!("job {seq}").as_bytes());
        assert_eq!(next_msg(&mut w2.ex, w2.ex_id), want);
    }
    for seq in 1..=3 {
        w2.ex.send(&ok(w2.ex_id, boss_id, seq));
    }
    for seq in 1..=3 {
        expect_exact(boss, &ok(S, boss_id, seq));
    }
    boss.expect_silence();
}

#[test]
fn a_prefetch_member_leaving_with_3_held_passes_all_3_on_in_order() {
    let server = Server::start(&[]);
    let (mut w1, mut w2, mut boss, boss_id) = w1_holding_three(&server);
    w1.leave("jobs", |d, s| roomack(d, s, 0, (ROOM, 1, 1, b"jobs")));
    w2_takes_the_three_over(&mut w2, &mut boss, boss_id);
    // w1's late OKs settle nothing.
    for seq in 1..=3 {
        w1.ex.send(&ok(w1.ex_id, boss_id, seq));
    }
    boss.expect_silence();
}

#[test]
fn a_prefetch_member_disconnecting_with_3_held_passes_all_3_on_in_order() {
    let server = Server::start(&[]);
    let (w1, mut w2, mut boss, boss_id) = w1_holding_three(&server);
    drop(w1);
    w2_takes_the_three_over(&mut w2, &mut boss, boss_id);
}

/// A JOIN with `flags`, room `name` and `extra` bytes after it, from a
/// fresh member: ERRO and the connection closed (rule 7).
fn join_is_malformed(flags: u8, name: &[u8], extra: &[u8]) {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    let seq = alice.next_seq();
    alice
        .em
        .send(&join_raw(alice.em_id, seq, flags, name, extra));
    expect_exact(&mut alice.em, &erro(alice.em_id, seq));
    alice.em.expect_closed();
}

#[test]
fn a_join_with_prefetch_0_is_malformed() {
    join_is_malformed(3, b"jobs", &[0]);
}

#[test]
fn a_join_with_the_prefetch_flag_but_no_byte_is_malformed() {
    join_is_malformed(3, b"jobs", &[]);
}

#[test]
fn a_join_with_a_prefetch_byte_but_no_flag_is_malformed() {
    join_is_malformed(1, b"jobs", &[4]);
}

#[test]
fn a_prefetch_on_an_ordinary_join_is_malformed() {
    join_is_malformed(2, b"ops", &[4]);
}

#[test]
fn a_prefetch_join_of_an_ordinary_room_is_code_8() {
    let server = Server::start(&[]);
    let mut alice = Member::new(&server, "alice");
    alice.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 1, b"ops")));
    let mut bob = Member::new(&server, "bob");
    bob.join_prefetch("ops", 4, |d, s| refused(d, s, 8));
    // Nothing changed: bob was not made a member (his ordinary JOIN is
    // the second member, not the third).
    bob.join("ops", false, |d, s| roomack(d, s, 0, (ROOM, 0, 2, b"ops")));
}
