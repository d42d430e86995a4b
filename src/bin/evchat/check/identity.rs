//! The `identity` level: the identity extension's rules (PROTOCOL.md,
//! "Extension: identity"), one function per rule, on a server without
//! accounts (names are claimed, so every check can make its own). The
//! first, `identity-hello`, decides whether the level runs at all: a
//! server that answers HELLO with ERRO does not speak the extension, which
//! is reported as "not spoken", never as a failure.

use super::catalogue::{Done, Outcome};
use super::wire::{Conn, Ctx, Failure, RecvError, UNUSED_EXHIBITOR, broadcast_text};
use evchat::client::Incoming;
use evchat::proto::ext::{Code, ExtFrame, HelloAck, KICK, SecretBytes, VERSION, Who};
use evchat::proto::{BROADCAST, ClientId, Frame, Kind, SERVER_ID};
use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other session of this run holds: the checks claim names, and
/// a session of an earlier check may not have ended yet.
pub(super) fn fresh_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("chk{}n{n}", std::process::id() % 10_000_000)
}

/// HELLO(0, 65535, seq 0), version 1, with `name` and no secret.
pub(super) fn hello(name: &str) -> Vec<u8> {
    ExtFrame::Hello(evchat::proto::ext::Hello {
        origin: 0,
        dest: SERVER_ID,
        seq: 0,
        version: VERSION,
        name: name.as_bytes().to_vec(),
        secret: SecretBytes::default(),
    })
    .to_bytes()
    .to_vec()
}

/// Sends HELLO claiming `name` (empty: none) and expects HELLOACK with
/// `code`, from 65535 with seq 0.
fn hello_answered(conn: &mut Conn, name: &str, code: Code) -> Result<HelloAck, Failure> {
    conn.send_bytes(&hello(name))?;
    let want = format!(
        "HELLOACK(origin 65535, dest 0, seq 0) with code {}",
        code as u8
    );
    let ack = match conn.recv_any() {
        Ok(Incoming::Ext(ExtFrame::HelloAck(ack))) => ack,
        Ok(_) => return Err(conn.unexpected("the answer to HELLO is not HELLOACK", &want)),
        Err(e) => return Err(conn.recv_failure(e, &want)),
    };
    if ack.code != code as u8 {
        return Err(conn.unexpected(format!("HELLOACK code {}", ack.code), &want));
    }
    if ack.origin != SERVER_ID || ack.seq != 0 {
        return Err(conn.unexpected("the HELLOACK's header is wrong", &want));
    }
    Ok(ack)
}

/// A connection that opted in (claiming `name`, or none) and sent OI with
/// `origin` as `role`.
pub(super) fn opted_in(
    ctx: &Ctx,
    name: &str,
    origin: ClientId,
    role: &str,
) -> Result<Conn, Failure> {
    let mut conn = Conn::open(ctx)?;
    hello_answered(&mut conn, name, Code::Accepted)?;
    conn.identify(origin, role)?;
    Ok(conn)
}

/// The next frame on an opted-in exhibitor, which must be WHO.
fn expect_who(conn: &mut Conn, want: &str) -> Result<Who, Failure> {
    match conn.recv_any() {
        Ok(Incoming::Ext(ExtFrame::Who(who))) => Ok(who),
        Ok(_) => Err(conn.unexpected("expected WHO first", want)),
        Err(e) => Err(conn.recv_failure(e, want)),
    }
}

/// The next frame on an opted-in exhibitor, which must be a plain one.
fn expect_plain(conn: &mut Conn, want: &str) -> Result<Frame, Failure> {
    match conn.recv_any() {
        Ok(Incoming::Plain(frame)) => Ok(frame),
        Ok(_) => Err(conn.unexpected("expected a frame of the plain protocol", want)),
        Err(e) => Err(conn.recv_failure(e, want)),
    }
}

/// Acknowledges a WHO as PROTOCOL.md says: OK(own id, 65535, its seq).
pub(super) fn ack_who(conn: &mut Conn, who: &Who) -> Result<(), Failure> {
    conn.send(&Frame::bare(Kind::Ok, conn.me(), SERVER_ID, who.seq))
}

/// Expects the reply to a request, which must be `kind`.
fn expect_answer(conn: &mut Conn, kind: Kind, what: &str) -> Result<(), Failure> {
    let reply = conn.expect_reply(what)?;
    if reply.kind != kind {
        return Err(conn.unexpected(format!("answered {}", reply.kind), what));
    }
    Ok(())
}

fn pass() -> Outcome {
    Ok(Done::Pass)
}

pub fn hello_then_oi(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    conn.send_bytes(&hello(""))?;
    let want = "HELLOACK(origin 65535, dest 0, seq 0): code 0, version 1";
    let ack = match conn.recv_any() {
        Ok(Incoming::Ext(ExtFrame::HelloAck(ack))) => ack,
        // Any frame of the plain protocol: HELLO was taken for something
        // else (rule 7 says ERRO; a wrong answer is the robust level's).
        Ok(Incoming::Plain(frame)) => {
            return Ok(Done::NotSpoken(format!(
                "the server answers HELLO with {}: it does not speak the identity extension",
                frame.kind
            )));
        }
        Err(RecvError::Closed(partial)) if partial.is_empty() => {
            return Ok(Done::NotSpoken(
                "the server closes the connection on HELLO: it does not speak the identity \
                 extension"
                    .to_string(),
            ));
        }
        Ok(_) => return Err(conn.unexpected("the answer to HELLO is not HELLOACK", want)),
        Err(e) => return Err(conn.recv_failure(e, want)),
    };
    if ack.code == Code::AccountsRequired as u8 {
        return Ok(Done::NotSpoken(
            "the server requires accounts (server --auth): these checks claim names, which \
             needs a server without"
                .to_string(),
        ));
    }
    if ack.code != Code::Accepted as u8 {
        return Err(conn.unexpected(format!("HELLOACK code {}", ack.code), want));
    }
    if ack.origin != SERVER_ID || ack.dest != BROADCAST || ack.seq != 0 || ack.version != VERSION {
        return Err(conn.unexpected("the HELLOACK's header or version is wrong", want));
    }
    conn.identify(0, "exhibitor")?;
    pass()
}

pub fn bad_name(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    // A digit first: not a name.
    hello_answered(&mut conn, "1chk", Code::BadName)?;
    // Kept: another HELLO may follow, and is answered.
    hello_answered(&mut conn, &fresh_name(), Code::Accepted)?;
    conn.identify(0, "exhibitor")?;
    pass()
}

pub fn name_taken(ctx: &Ctx) -> Outcome {
    let name = fresh_name();
    let _holder = opted_in(ctx, &name, 0, "exhibitor")?;
    let mut conn = Conn::open(ctx)?;
    hello_answered(&mut conn, &name.to_ascii_uppercase(), Code::NameTaken)?;
    hello_answered(&mut conn, &fresh_name(), Code::Accepted)?;
    conn.identify(0, "exhibitor")?;
    pass()
}

pub fn second_hello(ctx: &Ctx) -> Outcome {
    let mut conn = Conn::open(ctx)?;
    hello_answered(&mut conn, &fresh_name(), Code::Accepted)?;
    hello_answered(&mut conn, &fresh_name(), Code::Malformed)?;
    conn.expect_close("the connection closed after HELLOACK code 8")
        .map(|()| Done::Pass)
}

pub fn hello_after_oi(ctx: &Ctx) -> Outcome {
    let mut conn = opted_in(ctx, &fresh_name(), 1, "emitter")?;
    conn.send_bytes(&hello(&fresh_name()))?;
    let want = format!("ERRO(origin 65535, dest {}, seq 0)", conn.me());
    let erro = expect_plain(&mut conn, &want)?;
    if erro.kind != Kind::Erro || erro.origin != SERVER_ID || erro.dest != conn.me() {
        return Err(conn.unexpected(format!("answered {}", erro.kind), &want));
    }
    // Kept: a request is still answered (nobody to reach: ERRO).
    let msg = conn.msg(UNUSED_EXHIBITOR, "evchat check: still here");
    conn.send(&msg)?;
    expect_answer(
        &mut conn,
        Kind::Erro,
        "ERRO for the MSG: the connection is kept",
    )?;
    pass()
}

pub fn who_before_msg(ctx: &Ctx) -> Outcome {
    let mut exhibitor = opted_in(ctx, "", 0, "exhibitor")?;
    let name = fresh_name();
    let mut emitter = opted_in(ctx, &name, 1, "emitter")?;
    let msg = emitter.msg(exhibitor.me(), "evchat check: from a named id");
    emitter.send(&msg)?;
    let want = |exhibitor: &Conn| {
        // 0, unless replays took the server's first numbers (`--history`),
        // counted up to this WHO.
        let first = exhibitor.server_seq_start();
        let want = format!(
            "WHO(origin 65535, dest {}, seq {first}): id {} is {name}",
            exhibitor.me(),
            emitter.me()
        );
        (first, want)
    };
    let (_, asked) = want(&exhibitor);
    let who = expect_who(&mut exhibitor, &asked).map_err(|f| emitter.blame(f))?;
    let (first, want) = want(&exhibitor);
    let right = who.origin == SERVER_ID
        && who.dest == exhibitor.me()
        && who.seq == first
        && who.id == emitter.me()
        && who.name == name.as_bytes();
    if !right {
        return Err(exhibitor.unexpected("the WHO does not say who sent the MSG", &want));
    }
    ack_who(&mut exhibitor, &who)?;
    let forwarded = expect_plain(&mut exhibitor, "the MSG, after its WHO")?;
    if forwarded.kind != Kind::Msg || forwarded.text() != msg.text() {
        return Err(exhibitor.unexpected("did not receive the message", "the MSG, after its WHO"));
    }
    exhibitor.ack(&forwarded)?;
    expect_answer(
        &mut emitter,
        Kind::Ok,
        "OK for the MSG: WHO and MSG acknowledged",
    )?;
    pass()
}

/// More WHO before one CLIST than the checker's few clients could need:
/// a server that sends them is not told apart from one that never stops.
const MAX_WHOS: usize = 64;

pub fn plain_sees_nothing_new(ctx: &Ctx) -> Outcome {
    let mut plain = Conn::exhibitor(ctx)?;
    let mut opted = opted_in(ctx, "", 0, "exhibitor")?;
    let mut emitter = opted_in(ctx, &fresh_name(), 1, "emitter")?;
    let text = broadcast_text(ctx, "to plain and opted-in alike");
    let msg = emitter.msg(BROADCAST, &text);
    emitter.send(&msg)?;
    plain.await_broadcast(&text);
    opted.await_broadcast(&text);
    // recv takes only plain frames: an extension frame fails it.
    plain
        .expect_forward(&msg, true)
        .map_err(|f| emitter.blame(f))?;
    let who = expect_who(&mut opted, "WHO before the broadcast").map_err(|f| emitter.blame(f))?;
    ack_who(&mut opted, &who)?;
    let forwarded = expect_plain(&mut opted, "the broadcast")?;
    opted.ack(&forwarded)?;
    expect_answer(&mut emitter, Kind::Ok, "OK for the broadcast")?;
    // A client list: the plain exhibitor gets the CLIST alone.
    let seq = emitter.next_seq();
    emitter.send(&Frame::bare(Kind::Creq, emitter.me(), BROADCAST, seq))?;
    let clist = plain
        .expect_kind(Kind::Clist, "CLIST, and nothing of the extension before it")
        .map_err(|f| emitter.blame(f))?;
    plain.ack(&clist)?;
    // The opted-in one is told the ids it does not know (at most one WHO
    // for each of the few listed), then gets it.
    let mut whos = 0;
    loop {
        match opted.recv_any() {
            Ok(Incoming::Ext(ExtFrame::Who(who))) if whos < MAX_WHOS => {
                whos += 1;
                ack_who(&mut opted, &who)?
            }
            Ok(Incoming::Plain(frame)) if frame.kind == Kind::Clist => {
                opted.ack(&frame)?;
                break;
            }
            Ok(_) => return Err(opted.unexpected("expected WHO or CLIST", "the CLIST")),
            Err(e) => return Err(opted.recv_failure(e, "the CLIST")),
        }
    }
    expect_answer(&mut emitter, Kind::Ok, "OK for the CREQ")?;
    pass()
}

pub fn kick_without_admin(ctx: &Ctx) -> Outcome {
    let mut target = Conn::exhibitor(ctx)?;
    let mut kicker = opted_in(ctx, &fresh_name(), 1, "emitter")?;
    let seq = kicker.next_seq();
    let mut kick = Vec::new();
    for field in [KICK, kicker.me(), target.me(), seq, 0] {
        kick.extend_from_slice(&field.to_be_bytes());
    }
    kicker.send_bytes(&kick)?;
    let want = format!("ERRO(origin 65535, dest {}, seq {seq})", kicker.me());
    let erro = expect_plain(&mut kicker, &want)?;
    if erro.kind != Kind::Erro || erro.seq != seq || erro.dest != kicker.me() {
        return Err(kicker.unexpected(format!("answered {}", erro.kind), &want));
    }
    // Both kept: the kicker's next MSG reaches the one it tried to close.
    let msg = kicker.msg(target.me(), "evchat check: not kicked");
    kicker.send(&msg)?;
    target
        .expect_forward(&msg, false)
        .map_err(|f| kicker.blame(f))?;
    expect_answer(&mut kicker, Kind::Ok, "OK for the MSG")?;
    pass()
}
