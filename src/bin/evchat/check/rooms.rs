//! The `rooms` level: rooms and work queues (PROTOCOL.md, "Extension: rooms
//! and queues"), one function per rule, on a server without accounts (the
//! members claim names, as in the identity level). The first, `rooms-join`,
//! decides whether the level runs at all: a server that answers JOIN with
//! ERRO or a close does not speak rooms, which is reported as "not spoken".
//!
//! Where a rule says a client must *not* receive something, the check sends
//! a marker after it on the same connection (so the server reads it later)
//! and expects the marker as the client's next message: no silence is
//! waited out.

use super::catalogue::{Done, Outcome};
use super::identity::{ack_who, fresh_name, hello, opted_in};
use super::wire::{Conn, Ctx, Failure, RecvError};
use evchat::client::Incoming;
use evchat::proto::ext::{Code, ExtFrame, FLAG_QUEUE, Join, Leave, RoomAck, RoomList, Tell};
use evchat::proto::{ClientId, Frame, Header, Kind, SERVER_ID};
use std::time::{Duration, Instant};

/// The room ids (PROTOCOL.md, "Room ids").
const ROOM_IDS: std::ops::RangeInclusive<ClientId> = 0x4000..=0x7fff;
/// ROOMACK codes the checks expect.
const JOINED: u8 = 0;
const BAD_NAME: u8 = 1;
const NOT_MEMBER: u8 = 4;
const STORED: u8 = 9;
const NO_SUCH_NAME: u8 = 10;
/// More WHO before one MSG than the checker's few clients could need.
const MAX_WHOS: usize = 64;

/// A named member: an exhibitor that claimed a fresh name and an emitter
/// paired with it (its HELLO names nobody: it takes the exhibitor's).
struct Member {
    ex: Conn,
    em: Conn,
    name: String,
}

impl Member {
    fn new(ctx: &Ctx) -> Result<Member, Failure> {
        let name = fresh_name();
        let ex = opted_in(ctx, &name, 0, "exhibitor")?;
        let em = opted_in(ctx, "", ex.me(), "emitter")?;
        Ok(Member { ex, em, name })
    }
}

/// A room name no other check of this run uses.
fn fresh_room() -> String {
    format!("r{}", fresh_name())
}

fn join_bytes(conn: &mut Conn, room: &str, flags: u8) -> Vec<u8> {
    join_prefetch_bytes(conn, room, flags, None)
}

/// JOIN with `prefetch` (Some: flag 2 and its byte; a queue's only).
fn join_prefetch_bytes(conn: &mut Conn, room: &str, flags: u8, prefetch: Option<u8>) -> Vec<u8> {
    let seq = conn.next_seq();
    ExtFrame::Join(Join {
        origin: conn.me(),
        dest: SERVER_ID,
        seq,
        flags,
        name: room.as_bytes().to_vec(),
        prefetch,
    })
    .to_bytes()
    .to_vec()
}

/// The ROOMACK for the request sent last on `conn` (its seq is `seq`).
fn expect_roomack(conn: &mut Conn, seq: u16, want: &str) -> Result<RoomAck, Failure> {
    let ack = match conn.recv_any() {
        Ok(Incoming::Ext(ExtFrame::RoomAck(ack))) => ack,
        Ok(_) => return Err(conn.unexpected("the answer is not ROOMACK", want)),
        Err(e) => return Err(conn.recv_failure(e, want)),
    };
    if ack.origin != SERVER_ID || ack.dest != conn.me() || ack.seq != seq {
        return Err(conn.unexpected("the ROOMACK's header is wrong", want));
    }
    Ok(ack)
}

/// JOIN `room` (a queue room when `queue`); the answer must have `code`.
fn join(conn: &mut Conn, room: &str, queue: bool, code: u8) -> Result<RoomAck, Failure> {
    let flags = if queue { FLAG_QUEUE } else { 0 };
    let bytes = join_bytes(conn, room, flags);
    let seq = Header::peek(&bytes).map_or(0, |h| h.seq);
    conn.send_bytes(&bytes)?;
    let want = format!(
        "ROOMACK(origin 65535, dest {}, seq {seq}) code {code}",
        conn.me()
    );
    let ack = expect_roomack(conn, seq, &want)?;
    if ack.code != code {
        return Err(conn.unexpected(format!("ROOMACK code {}", ack.code), &want));
    }
    let right = if code == JOINED {
        ROOM_IDS.contains(&ack.room)
            && ack.flags == flags
            && ack.name.eq_ignore_ascii_case(room.as_bytes())
    } else {
        ack.room == 0 && ack.flags == 0 && ack.members == 0 && ack.name.is_empty()
    };
    if !right {
        let what = if code == JOINED {
            "the ROOMACK does not carry the room (an id in 16384..=32767, its flags and name)"
        } else {
            "a refusing ROOMACK carries a room (its id, flags, count and name must be 0)"
        };
        return Err(conn.unexpected(what, &want));
    }
    Ok(ack)
}

/// LEAVE `room`; the answer must have `code`.
fn leave(conn: &mut Conn, room: &str, code: u8) -> Result<RoomAck, Failure> {
    let seq = conn.next_seq();
    let bytes = ExtFrame::Leave(Leave {
        origin: conn.me(),
        dest: SERVER_ID,
        seq,
        name: room.as_bytes().to_vec(),
    })
    .to_bytes();
    conn.send_bytes(&bytes)?;
    let want = format!(
        "ROOMACK(origin 65535, dest {}, seq {seq}) code {code}",
        conn.me()
    );
    let ack = expect_roomack(conn, seq, &want)?;
    if ack.code != code {
        return Err(conn.unexpected(format!("ROOMACK code {}", ack.code), &want));
    }
    Ok(ack)
}

/// ROOMS; the ROOMLIST that answers it.
fn list(conn: &mut Conn) -> Result<RoomList, Failure> {
    let seq = conn.next_seq();
    let mut bytes = Vec::new();
    for field in [evchat::proto::ext::ROOMS, conn.me(), SERVER_ID, seq, 0] {
        bytes.extend_from_slice(&field.to_be_bytes());
    }
    conn.send_bytes(&bytes)?;
    let want = format!("ROOMLIST(origin 65535, dest {}, seq {seq})", conn.me());
    let listed = match conn.recv_any() {
        Ok(Incoming::Ext(ExtFrame::RoomList(listed))) => listed,
        Ok(_) => return Err(conn.unexpected("the answer to ROOMS is not ROOMLIST", &want)),
        Err(e) => return Err(conn.recv_failure(e, &want)),
    };
    if listed.origin != SERVER_ID || listed.dest != conn.me() || listed.seq != seq {
        return Err(conn.unexpected("the ROOMLIST's header is wrong", &want));
    }
    Ok(listed)
}

/// The next MSG on an opted-in exhibitor, each WHO before it acknowledged.
fn next_msg(conn: &mut Conn, want: &str) -> Result<Frame, Failure> {
    for _ in 0..=MAX_WHOS {
        match conn.recv_any() {
            Ok(Incoming::Ext(ExtFrame::Who(who))) => ack_who(conn, &who)?,
            Ok(Incoming::Plain(frame)) if frame.kind == Kind::Msg => return Ok(frame),
            Ok(_) => return Err(conn.unexpected("expected a MSG (after any WHO)", want)),
            Err(e) => return Err(conn.recv_failure(e, want)),
        }
    }
    Err(conn.unexpected("WHO after WHO, and no MSG", want))
}

/// Expects `sent` on `conn` (an opted-in exhibitor) as it arrived at the
/// server, without acknowledging it; `sender` is blamed on a failure.
fn expect_msg(conn: &mut Conn, sent: &Frame, sender: &Conn) -> Result<Frame, Failure> {
    let want = format!("the MSG {}", super::wire::describe_frame(sent));
    let got = next_msg(conn, &want).map_err(|f| sender.blame(f))?;
    if got != *sent {
        return Err(conn.unexpected("not the message sent, unchanged", &want));
    }
    Ok(got)
}

/// [`expect_msg`], then OK for it.
fn receive(conn: &mut Conn, sent: &Frame, sender: &Conn) -> Result<(), Failure> {
    let got = expect_msg(conn, sent, sender)?;
    conn.ack(&got)
}

/// Expects the reply to the oldest request of `conn`, which must be `kind`.
fn expect_answer(conn: &mut Conn, kind: Kind, what: &str) -> Result<(), Failure> {
    let reply = conn.expect_reply(what)?;
    if reply.kind != kind {
        return Err(conn.unexpected(format!("answered {}", reply.kind), what));
    }
    Ok(())
}

/// Sends a MSG with `text` to `dest` on `conn`; the frame sent.
fn say(conn: &mut Conn, dest: ClientId, text: &str) -> Result<Frame, Failure> {
    let msg = conn.msg(dest, text);
    conn.send(&msg)?;
    Ok(msg)
}

/// Ends both sessions of `member` as the protocol does: its emitter says
/// FLW (OK, close), and the server's FLW to the exhibitor is acknowledged
/// (close). From then on the name has no session online.
fn go_offline(member: Member) -> Result<String, Failure> {
    let Member {
        mut ex,
        mut em,
        name,
    } = member;
    let seq = em.next_seq();
    em.send(&Frame::bare(Kind::Flw, em.me(), SERVER_ID, seq))?;
    expect_answer(&mut em, Kind::Ok, "OK for FLW")?;
    em.expect_close("the emitter's connection closed after the OK for FLW")?;
    let flw = ex
        .expect_kind(Kind::Flw, "FLW(65535, exhibitor): its emitter left")
        .map_err(|f| em.blame(f))?;
    ex.ack(&flw)?;
    ex.expect_close("the exhibitor's connection closed after its OK for FLW")?;
    Ok(name)
}

/// Claims `name` again, once the server let it go (code 3 until then), as
/// a new exhibitor: the name is still a member of its rooms.
fn come_back(ctx: &Ctx, name: &str) -> Result<Conn, Failure> {
    let deadline = Instant::now() + ctx.timeout;
    loop {
        let mut conn = Conn::open(ctx)?;
        conn.send_bytes(&hello(name))?;
        let want = "HELLOACK code 0 (or 3 until the name's sessions are gone)";
        let ack = match conn.recv_any() {
            Ok(Incoming::Ext(ExtFrame::HelloAck(ack))) => ack,
            Ok(_) => return Err(conn.unexpected("the answer to HELLO is not HELLOACK", want)),
            Err(e) => return Err(conn.recv_failure(e, want)),
        };
        if ack.code == Code::Accepted as u8 {
            conn.identify(0, "exhibitor")?;
            return Ok(conn);
        }
        if ack.code != Code::NameTaken as u8 || Instant::now() >= deadline {
            return Err(conn.unexpected(format!("HELLOACK code {}", ack.code), want));
        }
        // The emitter's FLW is on its way: ask again shortly.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn pass() -> Outcome {
    Ok(Done::Pass)
}

pub fn join_counts(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let mut b = Member::new(ctx)?;
    let room = fresh_room();
    let bytes = join_bytes(&mut a.em, &room, 0);
    let seq = Header::peek(&bytes).map_or(0, |h| h.seq);
    a.em.send_bytes(&bytes)?;
    let want = format!(
        "ROOMACK(origin 65535, dest {}, seq {seq}) code 0",
        a.em.me()
    );
    let first = match a.em.recv_any() {
        Ok(Incoming::Ext(ExtFrame::RoomAck(ack))) => ack,
        Ok(Incoming::Plain(frame)) if frame.kind == Kind::Erro => {
            return Ok(Done::NotSpoken(
                "the server answers JOIN with ERRO: it does not speak rooms".to_string(),
            ));
        }
        Err(RecvError::Closed(partial)) if partial.is_empty() => {
            return Ok(Done::NotSpoken(
                "the server closes the connection on JOIN: it does not speak rooms".to_string(),
            ));
        }
        Ok(_) => return Err(a.em.unexpected("the answer to JOIN is not ROOMACK", &want)),
        Err(e) => return Err(a.em.recv_failure(e, &want)),
    };
    let right = first.origin == SERVER_ID
        && first.dest == a.em.me()
        && first.seq == seq
        && first.code == JOINED
        && ROOM_IDS.contains(&first.room)
        && first.flags == 0
        && first.members == 1
        && first.name == room.as_bytes();
    if !right {
        return Err(a.em.unexpected(
            "the ROOMACK does not say: joined, an id in 16384..=32767, 1 member, the name",
            &want,
        ));
    }
    let second = join(&mut b.em, &room.to_ascii_uppercase(), false, JOINED)?;
    if second.room != first.room || second.members != 2 || second.name != room.as_bytes() {
        return Err(b.em.unexpected(
            format!(
                "the second member's ROOMACK does not say: room {}, 2 members, spelt {room}",
                first.room
            ),
            "ROOMACK code 0 for the same room, now with 2 members",
        ));
    }
    pass()
}

pub fn bad_name(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    // A digit first: not a name.
    join(&mut a.em, "1room", false, BAD_NAME)?;
    // Kept: the next JOIN is answered.
    join(&mut a.em, &fresh_room(), false, JOINED)?;
    pass()
}

pub fn leave_twice(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let room = fresh_room();
    let joined = join(&mut a.em, &room, false, JOINED)?;
    let left = leave(&mut a.em, &room, JOINED)?;
    if left.room != joined.room || left.name != room.as_bytes() {
        return Err(a.em.unexpected(
            "the ROOMACK to LEAVE does not carry the room left",
            "ROOMACK code 0 with the room's id and name",
        ));
    }
    let again = leave(&mut a.em, &room, NOT_MEMBER)?;
    if again.room != 0 || !again.name.is_empty() {
        return Err(a.em.unexpected(
            "a refusing ROOMACK carries a room",
            "ROOMACK code 4 with id 0 and no name",
        ));
    }
    pass()
}

pub fn list_counts(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let mut b = Member::new(ctx)?;
    let room = fresh_room();
    let joined = join(&mut a.em, &room, false, JOINED)?;
    join(&mut b.em, &room, false, JOINED)?;
    let listed = list(&mut a.em)?;
    let want = format!(
        "ROOMLIST with room {} (flags 0, 2 members, \"{room}\"), rooms in ascending id",
        joined.room
    );
    let found = listed.rooms.iter().any(|r| {
        r.room == joined.room && r.flags == 0 && r.members == 2 && r.name == room.as_bytes()
    });
    let ascending = listed.rooms.windows(2).all(|w| w[0].room < w[1].room);
    if !found || !ascending {
        return Err(a
            .em
            .unexpected("the ROOMLIST does not list the room as it is", &want));
    }
    pass()
}

/// Two members of a fresh room (not a queue), and its id.
fn room_of_two(ctx: &Ctx, queue: bool) -> Result<(Member, Member, ClientId), Failure> {
    let mut a = Member::new(ctx)?;
    let mut b = Member::new(ctx)?;
    let room = fresh_room();
    let joined = join(&mut a.em, &room, queue, JOINED)?;
    join(&mut b.em, &room, queue, JOINED)?;
    Ok((a, b, joined.room))
}

pub fn msg_reaches_members(ctx: &Ctx) -> Outcome {
    let (mut a, mut b, room) = room_of_two(ctx, false)?;
    let msg = say(&mut a.em, room, "evchat check: to the room")?;
    // The sender's own exhibitor too: its name is a member.
    receive(&mut a.ex, &msg, &a.em)?;
    receive(&mut b.ex, &msg, &a.em)?;
    expect_answer(&mut a.em, Kind::Ok, "OK: every member showed it")?;
    pass()
}

pub fn ok_after_all(ctx: &Ctx) -> Outcome {
    let (mut a, mut b, room) = room_of_two(ctx, false)?;
    let msg = say(
        &mut a.em,
        room,
        "evchat check: refused by one, shown by the other",
    )?;
    expect_msg(&mut a.ex, &msg, &a.em)?;
    // a's exhibitor refuses it, and its next request (a MSG from an
    // exhibitor: ERRO, kept) shows the server has read that refusal before
    // b's OK is sent.
    a.ex.send(&Frame::bare(Kind::Erro, a.ex.me(), msg.origin, msg.seq))?;
    say(
        &mut a.ex,
        a.em.me(),
        "evchat check: an exhibitor may not send",
    )?;
    expect_answer(&mut a.ex, Kind::Erro, "ERRO for the exhibitor's MSG")?;
    receive(&mut b.ex, &msg, &a.em)?;
    expect_answer(
        &mut a.em,
        Kind::Ok,
        "OK, after both members answered (one refused, one showed it)",
    )
    .map_err(|f| {
        f.with_hint(
            "answer a room's MSG once every member settled, OK if any showed it: not at the \
             first answer",
        )
    })?;
    pass()
}

pub fn not_to_non_members(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let mut other = Member::new(ctx)?;
    let room = join(&mut a.em, &fresh_room(), false, JOINED)?.room;
    let msg = say(&mut a.em, room, "evchat check: members only")?;
    receive(&mut a.ex, &msg, &a.em)?;
    expect_answer(&mut a.em, Kind::Ok, "OK for the room's MSG")?;
    // The next message an opted-in non-member gets must be this one.
    let marker = say(&mut a.em, other.ex.me(), "evchat check: for the non-member")?;
    receive(&mut other.ex, &marker, &a.em).map_err(|f| {
        f.with_hint("a room's MSG goes to its members' exhibitors only, not to every named one")
    })?;
    expect_answer(&mut a.em, Kind::Ok, "OK for the MSG to the non-member")?;
    pass()
}

pub fn plain_sees_nothing_new(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let mut plain = Conn::exhibitor(ctx)?;
    let room = join(&mut a.em, &fresh_room(), false, JOINED)?.room;
    let msg = say(&mut a.em, room, "evchat check: not for plain clients")?;
    receive(&mut a.ex, &msg, &a.em)?;
    expect_answer(&mut a.em, Kind::Ok, "OK for the room's MSG")?;
    // recv takes only plain frames; the next must be this MSG, unchanged.
    let marker = say(
        &mut a.em,
        plain.me(),
        "evchat check: for the plain exhibitor",
    )?;
    plain
        .expect_forward(&marker, true)
        .map_err(|f| a.em.blame(f))?;
    expect_answer(&mut a.em, Kind::Ok, "OK for the MSG to the plain exhibitor")?;
    // A plain emitter's JOIN is an unknown type: ERRO, then a close.
    let mut emitter = Conn::emitter(ctx, 1)?;
    let bytes = join_bytes(&mut emitter, &fresh_room(), 0);
    emitter.send_bytes(&bytes)?;
    let want = "ERRO(origin 65535): JOIN from a client that never sent HELLO is an unknown type";
    let erro = emitter.expect(want)?;
    if erro.kind != Kind::Erro {
        return Err(emitter.unexpected(format!("answered {}", erro.kind), want));
    }
    emitter.expect_close("the connection closed after the ERRO (rule 7)")?;
    pass()
}

pub fn non_member_writes(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let room = join(&mut a.em, &fresh_room(), false, JOINED)?.room;
    // A plain emitter, which knows the number.
    let mut writer = Conn::emitter(ctx, 1)?;
    let msg = say(&mut writer, room, "evchat check: from outside the room")?;
    receive(&mut a.ex, &msg, &writer)?;
    expect_answer(
        &mut writer,
        Kind::Ok,
        "OK: a non-member may write to a room",
    )?;
    pass()
}

pub fn missing_room(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let held = list(&mut a.em)?;
    let Some(free) = ROOM_IDS
        .rev()
        .find(|id| held.rooms.iter().all(|r| r.room != *id))
    else {
        return Err(a
            .em
            .unexpected("every room id is taken", "a ROOMLIST leaving some id free"));
    };
    let mut writer = Conn::emitter(ctx, 1)?;
    say(&mut writer, free, "evchat check: to no room")?;
    expect_answer(
        &mut writer,
        Kind::Erro,
        "ERRO: no room holds that id, nobody can receive it",
    )?;
    pass()
}

pub fn queue_one_member(ctx: &Ctx) -> Outcome {
    let (mut a, mut b, room) = room_of_two(ctx, true)?;
    let mut writer = Conn::emitter(ctx, 1)?;
    // Members are served in turn from the first online: a, then b.
    let first = say(&mut writer, room, "evchat check: queue message 1")?;
    receive(&mut a.ex, &first, &writer)?;
    expect_answer(&mut writer, Kind::Ok, "OK: the member showed it")?;
    let marker = say(&mut writer, b.ex.me(), "evchat check: for the other member")?;
    receive(&mut b.ex, &marker, &writer).map_err(|f| {
        f.with_hint("a queue room's MSG goes to exactly one member session, not to each")
    })?;
    expect_answer(&mut writer, Kind::Ok, "OK for the MSG to the other member")?;
    let second = say(&mut writer, room, "evchat check: queue message 2")?;
    receive(&mut b.ex, &second, &writer)
        .map_err(|f| f.with_hint("members take a queue's messages in turn"))?;
    expect_answer(&mut writer, Kind::Ok, "OK for the second queue message")?;
    pass()
}

pub fn queue_prefetch_one(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let room = join(&mut a.em, &fresh_room(), true, JOINED)?.room;
    let mut writer = Conn::emitter(ctx, 1)?;
    let first = say(&mut writer, room, "evchat check: held")?;
    let held = expect_msg(&mut a.ex, &first, &writer)?;
    // Not acknowledged yet: the second must wait, so the marker sent after
    // it is the next MSG the member gets.
    let second = say(&mut writer, room, "evchat check: waits for the first's ack")?;
    let marker = say(&mut writer, a.ex.me(), "evchat check: while one is held")?;
    let marked = expect_msg(&mut a.ex, &marker, &writer).map_err(|f| {
        f.with_hint("one unacknowledged queue message per member session (prefetch 1)")
    })?;
    // OKs settle the oldest first: the held message, then the marker.
    a.ex.ack(&held)?;
    a.ex.ack(&marked)?;
    receive(&mut a.ex, &second, &writer)?;
    for what in ["OK for the first", "OK for the second", "OK for the marker"] {
        expect_answer(&mut writer, Kind::Ok, what)?;
    }
    pass()
}

/// A member whose JOIN asked a prefetch of 2 holds two unacknowledged
/// messages at once, and not a third.
pub fn queue_prefetch_asked(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let room = fresh_room();
    let bytes = join_prefetch_bytes(&mut a.em, &room, FLAG_QUEUE, Some(2));
    let seq = Header::peek(&bytes).map_or(0, |h| h.seq);
    a.em.send_bytes(&bytes)?;
    let want = format!(
        "ROOMACK(origin 65535, dest {}, seq {seq}) code 0 to JOIN with prefetch 2",
        a.em.me()
    );
    let ack = expect_roomack(&mut a.em, seq, &want)?;
    if ack.code != JOINED || ack.flags != FLAG_QUEUE || !ROOM_IDS.contains(&ack.room) {
        return Err(a.em.unexpected(
            format!("ROOMACK code {}, flags {}", ack.code, ack.flags),
            &want,
        ));
    }
    let mut writer = Conn::emitter(ctx, 1)?;
    let first = say(&mut writer, ack.room, "evchat check: prefetch 1 of 2")?;
    let second = say(&mut writer, ack.room, "evchat check: prefetch 2 of 2")?;
    let third = say(&mut writer, ack.room, "evchat check: over the prefetch")?;
    let marker = say(&mut writer, a.ex.me(), "evchat check: while two are held")?;
    let held = [
        expect_msg(&mut a.ex, &first, &writer)?,
        expect_msg(&mut a.ex, &second, &writer).map_err(|f| {
            f.with_hint(
                "a member whose JOIN carried prefetch P holds up to P unacknowledged messages \
                 of the queue: give it the second before the first's OK",
            )
        })?,
    ];
    // Two held: the third waits, so the marker is the next MSG.
    let marked = expect_msg(&mut a.ex, &marker, &writer)
        .map_err(|f| f.with_hint("no more than the prefetch asked: the third waits for an OK"))?;
    for msg in held.iter().chain([&marked]) {
        a.ex.ack(msg)?;
    }
    receive(&mut a.ex, &third, &writer)?;
    for what in [
        "OK for the first",
        "OK for the second",
        "OK for the third",
        "OK for the marker",
    ] {
        expect_answer(&mut writer, Kind::Ok, what)?;
    }
    pass()
}

pub fn queue_redelivers(ctx: &Ctx) -> Outcome {
    let (a, mut b, room) = room_of_two(ctx, true)?;
    let Member { ex: mut holder, .. } = a;
    let mut writer = Conn::emitter(ctx, 1)?;
    let msg = say(&mut writer, room, "evchat check: passed on")?;
    expect_msg(&mut holder, &msg, &writer)?;
    // The holder vanishes without acknowledging: the message goes on.
    holder.vanish();
    receive(&mut b.ex, &msg, &writer).map_err(|f| {
        f.with_hint("a queue message whose holder left unacknowledged goes to the next member")
    })?;
    expect_answer(&mut writer, Kind::Ok, "OK: the next member showed it")?;
    pass()
}

pub fn queue_waits(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let room = join(&mut a.em, &fresh_room(), true, JOINED)?.room;
    let name = go_offline(a)?;
    // The writer's paired exhibitor receiving a MSG sent after the queue's
    // shows the server has taken the queue message before the member is
    // back (the writer's own replies wait behind it).
    let mut watcher = Conn::exhibitor(ctx)?;
    let mut writer = Conn::emitter(ctx, watcher.me())?;
    let msg = say(&mut writer, room, "evchat check: waits for a member")?;
    let marker = say(
        &mut writer,
        watcher.me(),
        "evchat check: after the queue message",
    )?;
    watcher
        .expect_forward(&marker, true)
        .map_err(|f| writer.blame(f))?;
    let mut back = come_back(ctx, &name)?;
    receive(&mut back, &msg, &writer).map_err(|f| {
        f.with_hint(
            "with no member online a queue message waits (up to --queue-wait) for one to come",
        )
    })?;
    expect_answer(
        &mut writer,
        Kind::Ok,
        "OK: the member that came back showed it",
    )?;
    expect_answer(
        &mut writer,
        Kind::Ok,
        "OK for the MSG to the writer's exhibitor",
    )?;
    pass()
}

pub fn queue_gives_up(ctx: &Ctx) -> Outcome {
    let Some(wait) = ctx.queue_wait else {
        return Ok(Done::NotAsked(
            "give --queue-wait SECS (the server's) to wait a queue message out".to_string(),
        ));
    };
    let mut a = Member::new(ctx)?;
    let room = join(&mut a.em, &fresh_room(), true, JOINED)?.room;
    go_offline(a)?;
    let mut writer = Conn::emitter(ctx, 1)?;
    say(&mut writer, room, "evchat check: nobody takes this")?;
    writer.set_timeout(wait + ctx.timeout);
    expect_answer(
        &mut writer,
        Kind::Erro,
        "ERRO once the message waited --queue-wait with no member online",
    )?;
    pass()
}

/// TELL from `conn` to `name`; the frame's seq.
fn tell(conn: &mut Conn, name: &str, text: &str) -> Result<u16, Failure> {
    let seq = conn.next_seq();
    let bytes = ExtFrame::Tell(Tell {
        origin: conn.me(),
        dest: SERVER_ID,
        seq,
        name: name.as_bytes().to_vec(),
        text: text.as_bytes().to_vec().into(),
    })
    .to_bytes();
    conn.send_bytes(&bytes)?;
    Ok(seq)
}

/// The MSG a TELL from `teller` (its `seq`) with `text` is shown as on the
/// exhibitor `to`.
fn told(teller: &Conn, to: ClientId, seq: u16, text: &str) -> Frame {
    Frame::msg(teller.me(), to, seq, text.as_bytes().to_vec()).expect("short text")
}

pub fn tell_online(ctx: &Ctx) -> Outcome {
    let mut a = Member::new(ctx)?;
    let mut b = Member::new(ctx)?;
    // The name in another case: names are unique ignoring case.
    let text = "evchat check: told to a name online";
    let seq = tell(&mut a.em, &b.name.to_ascii_uppercase(), text)?;
    let marker = say(&mut a.em, b.ex.me(), "evchat check: after the TELL")?;
    let want = told(&a.em, b.ex.me(), seq, text);
    let shown = expect_msg(&mut b.ex, &want, &a.em).map_err(|f| {
        f.with_hint(
            "a TELL to a name online is MSG(teller, exhibitor, the TELL's seq, text) to each \
             exhibitor showing the name",
        )
    })?;
    b.ex.ack(&shown)?;
    receive(&mut b.ex, &marker, &a.em)?;
    let want = format!("OK(65535, {}, {seq}): the TELL was shown", a.em.me());
    let reply = a.em.expect_reply(&want)?;
    if reply.kind != Kind::Ok || reply.seq != seq {
        return Err(a
            .em
            .unexpected(format!("{} seq {}", reply.kind, reply.seq), &want));
    }
    expect_answer(&mut a.em, Kind::Ok, "OK for the MSG after the TELL")?;
    pass()
}

pub fn tell_waits(ctx: &Ctx) -> Outcome {
    if !ctx.history {
        return Ok(Done::NotAsked(
            "give --history when the server keeps history: only then is a TELL to an offline \
             name stored"
                .to_string(),
        ));
    }
    // b's name is a member of a room, then offline: known to any server.
    let mut b = Member::new(ctx)?;
    join(&mut b.em, &fresh_room(), false, JOINED)?;
    let name = go_offline(b)?;
    let mut a = Member::new(ctx)?;
    let text = "evchat check: waits for its name";
    let before = wall_clock_ms();
    let seq = tell(&mut a.em, &name, text)?;
    let want = format!(
        "ROOMACK(65535, {}, {seq}) code 9 for \"{name}\": stored, never OK (OK means shown)",
        a.em.me()
    );
    let ack = tell_answer(
        &mut a.em,
        &want,
        "store a TELL to an offline name the server knows and answer ROOMACK code 9",
    )?;
    let right = ack.origin == SERVER_ID
        && ack.dest == a.em.me()
        && ack.seq == seq
        && ack.code == STORED
        && (ack.flags, ack.room, ack.members) == (0, 0, 0)
        && ack.name == name.as_bytes();
    if !right {
        return Err(a.em.unexpected(format!("ROOMACK code {}", ack.code), &want));
    }
    let after = wall_clock_ms();
    let mut back = come_back(ctx, &name)?;
    let want = format!(
        "WAITING(65535, {}, server seq, time_ms in {before}..={after}) before the MSG",
        back.me()
    );
    let waiting = match back.recv_any() {
        Ok(Incoming::Ext(ExtFrame::Waiting(waiting))) => waiting,
        Ok(_) => {
            return Err(back
                .unexpected("not WAITING", &want)
                .with_hint("a message that waited for a name goes behind WAITING(time stored)"));
        }
        Err(e) => return Err(back.recv_failure(e, &want)),
    };
    if waiting.origin != SERVER_ID
        || waiting.dest != back.me()
        || !(before..=after).contains(&waiting.time_ms)
    {
        return Err(back.unexpected(format!("WAITING time_ms {}", waiting.time_ms), &want));
    }
    back.send(&Frame::bare(Kind::Ok, back.me(), SERVER_ID, waiting.seq))?;
    let want = format!("the MSG from {} with the text told", a.em.me());
    let msg = next_msg(&mut back, &want)?;
    if msg.origin != a.em.me()
        || msg.dest != back.me()
        || msg.text().map(|t| &t[..]) != Some(text.as_bytes())
    {
        return Err(back.unexpected("not the message told", &want));
    }
    back.ack(&msg)?;
    pass()
}

/// The ROOMACK that answers a TELL (`want` says which, `hint` how to send it).
fn tell_answer(conn: &mut Conn, want: &str, hint: &str) -> Result<RoomAck, Failure> {
    match conn.recv_any() {
        Ok(Incoming::Ext(ExtFrame::RoomAck(ack))) => Ok(ack),
        Ok(_) => Err(conn
            .unexpected(
                "the answer to a TELL to an offline name is not ROOMACK",
                want,
            )
            .with_hint(hint)),
        Err(e) => Err(conn.recv_failure(e, want)),
    }
}

pub fn tell_unknown(ctx: &Ctx) -> Outcome {
    if !ctx.history {
        return Ok(Done::NotAsked(
            "give --history when the server keeps history: without it a TELL to any offline \
             name is refused with ERRO, known or not"
                .to_string(),
        ));
    }
    let mut a = Member::new(ctx)?;
    // A name nobody has used: not an account, not a member, never seen.
    let name = fresh_name();
    let seq = tell(&mut a.em, &name, "evchat check: to nobody")?;
    let want = format!(
        "ROOMACK(65535, {}, {seq}) code 10 with room 0, flags 0, members 0 and no name: \
         \"{name}\" is not known, so nothing is stored",
        a.em.me()
    );
    let hint = "answer a TELL to a name that is neither online nor known (an account, a room's \
                member, a name seen) with ROOMACK code 10, and store nothing";
    let ack = tell_answer(&mut a.em, &want, hint)?;
    let right = ack.origin == SERVER_ID
        && ack.dest == a.em.me()
        && ack.seq == seq
        && ack.code == NO_SUCH_NAME
        && (ack.flags, ack.room, ack.members) == (0, 0, 0)
        && ack.name.is_empty();
    if !right {
        return Err(a
            .em
            .unexpected(format!("ROOMACK code {}", ack.code), &want)
            .with_hint(hint));
    }
    pass()
}

/// Now, in ms since the Unix epoch, as WAITING carries it.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
