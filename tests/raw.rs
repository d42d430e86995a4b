//! Byte-level tests against the real `server` binary over raw TCP sockets.
//! Frames are written out by hand (`frames.rs`) and compared byte for byte
//! with what the server sends. Every wait is a read with a deadline; what
//! must not happen is checked with a short bounded read (`expect_silence`).

use crate::util::*;
use evchat::proto::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The server's id, short.
const S: ClientId = SERVER_ID;

// ---- connection helpers ----------------------------------------------------

/// Exact bytes, then the server closes the connection.
fn expect_exact_then_closed(raw: &mut Raw, want: &[u8]) {
    expect_exact(raw, want);
    raw.expect_closed();
}

fn exhibitor(server: &Server) -> (Raw, ClientId) {
    let mut raw = server.raw();
    let id = raw.identify_exhibitor();
    assert!(is_exhibitor_id(id), "exhibitor got id {id}");
    (raw, id)
}

fn emitter(server: &Server, origin: ClientId) -> (Raw, ClientId) {
    let mut raw = server.raw();
    let id = raw.identify_emitter(origin);
    assert!(is_emitter_id(id), "emitter got id {id}");
    (raw, id)
}

/// The exhibitor `ex_id` acknowledges a frame with `OK(ex_id, to, seq)`.
fn ack(ex: &mut Raw, ex_id: ClientId, to: ClientId, seq: u16) {
    ex.send(&hdr(Kind::Ok, ex_id, to, seq));
}

/// The exhibitor `ex_id` expects exactly the MSG `bytes` and acknowledges it.
fn receive_and_ack(ex: &mut Raw, ex_id: ClientId, bytes: &[u8]) {
    expect_exact(ex, bytes);
    let header = Header::peek(bytes).unwrap();
    ack(ex, ex_id, header.origin, header.seq);
}

// ---- rule 1: OI --------------------------------------------------------------

#[test]
fn oi_issue_examples_exact_bytes() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let mut ex = server.raw();
    ex.send(b"\x00\x03\x00\x00\xff\xff\x00\x00");
    expect_exact(&mut ex, b"\x00\x01\xff\xff\x10\x00\x00\x00");
    let mut em = server.raw();
    em.send(b"\x00\x03\x10\x00\xff\xff\x00\x00");
    expect_exact(&mut em, b"\x00\x01\xff\xff\x00\x01\x00\x00");
    // The OK echoes the OI's sequence number.
    let mut em2 = server.raw();
    em2.send(&hdr(Kind::Oi, 1, S, 0x1234));
    expect_exact(&mut em2, &hdr(Kind::Ok, S, 2, 0x1234));
    let mut ex2 = server.raw();
    ex2.send(&hdr(Kind::Oi, 0, S, 0xbeef));
    expect_exact(&mut ex2, &hdr(Kind::Ok, S, 4097, 0xbeef));
}

#[test]
fn oi_any_nonzero_origin_outside_exhibitor_range_is_an_unpaired_emitter() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let mut emitters = Vec::new();
    for (origin, want_id) in [(1u16, 1u16), (4095, 2), (8192, 3), (0xffff, 4)] {
        let mut em = server.raw();
        em.send(&hdr(Kind::Oi, origin, S, 0));
        expect_exact(&mut em, &hdr(Kind::Ok, S, want_id, 0));
        // Unpaired: a MSG to its own id has no target.
        em.send(&msg(want_id, want_id, 1, b"me?"));
        expect_exact(&mut em, &hdr(Kind::Erro, S, want_id, 1));
        emitters.push(em);
    }
    // And since none of them paired, the exhibitor is still free to pair.
    let (_em, em_id) = emitter(&server, ex_id);
    assert_eq!(em_id, 5);
    ex.expect_silence();
}

#[test]
fn bad_oi_pairing_with_absent_exhibitor_is_refused_and_closed() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let mut em = server.raw();
    em.send(&hdr(Kind::Oi, 4100, S, 7));
    expect_exact_then_closed(&mut em, &hdr(Kind::Erro, S, 0, 7));
    // With one exhibitor present, pairing with a different (absent) one fails too.
    let (_ex, ex_id) = exhibitor(&server);
    assert_eq!(ex_id, 4096);
    for absent in [4097u16, 8191] {
        let mut em = server.raw();
        em.send(&hdr(Kind::Oi, absent, S, 3));
        expect_exact_then_closed(&mut em, &hdr(Kind::Erro, S, 0, 3));
    }
    // No emitter id was used up by the refusals.
    let (_em, em_id) = emitter(&server, ex_id);
    assert_eq!(em_id, 1);
}

#[test]
fn bad_oi_pairing_with_already_paired_exhibitor_is_refused_and_closed() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut first, first_id) = emitter(&server, ex_id);
    assert_eq!(first_id, 1);
    let mut second = server.raw();
    second.send(&hdr(Kind::Oi, ex_id, S, 9));
    expect_exact_then_closed(&mut second, &hdr(Kind::Erro, S, 0, 9));
    // The existing pair is untouched: the first emitter still reaches it.
    let m = msg(first_id, first_id, 1, b"still paired");
    first.send(&m);
    receive_and_ack(&mut ex, ex_id, &m);
    expect_exact(&mut first, &hdr(Kind::Ok, S, first_id, 1));
    // The refused emitter took no id: the next one gets 2.
    let (_third, third_id) = emitter(&server, 1);
    assert_eq!(third_id, 2);
}

#[test]
fn frames_before_oi_get_erro_with_dest_zero_and_close() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, _ex_id) = exhibitor(&server);
    let frames: Vec<(&str, Vec<u8>, u16)> = vec![
        ("MSG", msg(1, 0, 11, b"hello"), 11),
        ("CREQ", hdr(Kind::Creq, 1, 0, 12), 12),
        ("FLW", hdr(Kind::Flw, 1, S, 13), 13),
        ("OK", hdr(Kind::Ok, 0, S, 14), 14),
        ("ERRO", hdr(Kind::Erro, 0, S, 15), 15),
        ("CLIST", clist(0, S, 16, &[1, 2]), 16),
    ];
    for (name, bytes, seq) in frames {
        let mut anon = server.raw();
        anon.send(&bytes);
        let got = anon.expect_bytes(8);
        assert_eq!(
            hex(&got),
            hex(&hdr(Kind::Erro, S, 0, seq)),
            "{name} before OI"
        );
        anon.expect_closed();
    }
    // Nothing was forwarded to the exhibitor.
    ex.expect_silence();
}

#[test]
fn second_oi_is_refused_but_connection_kept() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    ex.send(&hdr(Kind::Oi, 0, S, 5));
    expect_exact(&mut ex, &hdr(Kind::Erro, S, ex_id, 5));
    ex.expect_silence();
    let (mut em, em_id) = emitter(&server, ex_id);
    em.send(&hdr(Kind::Oi, 1, S, 6));
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 6));
    // Both keep their ids and their pairing.
    let m = msg(em_id, em_id, 7, b"after the second OI");
    em.send(&m);
    receive_and_ack(&mut ex, ex_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 7));
    // The ids were not handed out again.
    let (_ex2, ex2_id) = exhibitor(&server);
    assert_eq!(ex2_id, ex_id + 1);
}

// ---- rule 2: anti-spoofing -------------------------------------------------

#[test]
fn spoofing_msg_with_another_clients_origin_is_refused_closed_and_not_forwarded() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut honest, honest_id) = emitter(&server, 1);
    let (mut liar, liar_id) = emitter(&server, 1);
    assert_eq!((honest_id, liar_id), (1, 2));
    // Claims to be the other emitter.
    liar.send(&msg(honest_id, 0, 3, b"I am emitter 1"));
    expect_exact_then_closed(&mut liar, &hdr(Kind::Erro, S, liar_id, 3));
    // Claims to be the exhibitor.
    let (mut liar2, liar2_id) = emitter(&server, 1);
    liar2.send(&msg(ex_id, 0, 4, b"I am the exhibitor"));
    expect_exact_then_closed(&mut liar2, &hdr(Kind::Erro, S, liar2_id, 4));
    ex.expect_silence();
    // The first frame the exhibitor ever sees is the honest one.
    let m = msg(honest_id, 0, 1, b"honest");
    honest.send(&m);
    receive_and_ack(&mut ex, ex_id, &m);
    expect_exact(&mut honest, &hdr(Kind::Ok, S, honest_id, 1));
}

#[test]
fn spoofing_msg_with_origin_zero_is_refused_closed_and_not_forwarded() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut liar, liar_id) = emitter(&server, 1);
    liar.send(&msg(0, 0, 1, b"from nobody"));
    expect_exact_then_closed(&mut liar, &hdr(Kind::Erro, S, liar_id, 1));
    // Also with a paired emitter (its exhibitor then gets the server's FLW,
    // never the spoofed MSG).
    let (mut ex2, ex2_id) = exhibitor(&server);
    let (mut liar2, liar2_id) = emitter(&server, ex2_id);
    liar2.send(&msg(0, liar2_id, 2, b"from nobody, paired"));
    expect_exact_then_closed(&mut liar2, &hdr(Kind::Erro, S, liar2_id, 2));
    expect_exact(&mut ex2, &hdr(Kind::Flw, S, ex2_id, 0));
    ex.expect_silence();
    // The first frame the exhibitor ever sees is an honest one.
    let (mut honest, honest_id) = emitter(&server, 1);
    let m = msg(honest_id, ex_id, 1, b"honest");
    honest.send(&m);
    receive_and_ack(&mut ex, ex_id, &m);
    expect_exact(&mut honest, &hdr(Kind::Ok, S, honest_id, 1));
}

#[test]
fn spoofing_ack_from_exhibitor_is_refused_and_closed() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let m = msg(em_id, ex_id, 1, b"ack me");
    em.send(&m);
    expect_exact(&mut ex, &m);
    // Acks in another's name.
    ex.send(&hdr(Kind::Ok, ex_id + 1, em_id, 1));
    expect_exact_then_closed(&mut ex, &hdr(Kind::Erro, S, ex_id, 1));
    // Its delivery fails with it: the emitter's only target is gone.
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 1));
}

// ---- rule 3: MSG routing ---------------------------------------------------

#[test]
fn msg_is_forwarded_by_destination_and_refused_without_target() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut em, em_id) = emitter(&server, 1);
    // No exhibitor at all: a broadcast has no target.
    em.send(&msg(em_id, 0, 1, b"anyone?"));
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 1));
    let (mut a, a_id) = exhibitor(&server);
    let (mut b, b_id) = exhibitor(&server);
    let (mut paired, paired_id) = emitter(&server, b_id);

    // dest 0: every exhibitor, byte-identical.
    let m = msg(em_id, 0, 2, b"to all");
    em.send(&m);
    receive_and_ack(&mut a, a_id, &m);
    receive_and_ack(&mut b, b_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 2));

    // dest = an exhibitor: only that one.
    let m = msg(em_id, a_id, 3, b"to a");
    em.send(&m);
    receive_and_ack(&mut a, a_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 3));

    // dest = an emitter: its paired exhibitor (from another emitter and itself).
    let m = msg(em_id, paired_id, 4, b"to paired's exhibitor");
    em.send(&m);
    receive_and_ack(&mut b, b_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 4));
    let m = msg(paired_id, paired_id, 1, b"to my own exhibitor");
    paired.send(&m);
    receive_and_ack(&mut b, b_id, &m);
    expect_exact(&mut paired, &hdr(Kind::Ok, S, paired_id, 1));

    // No target: absent exhibitor, unpaired emitter (itself), absent emitter, the server.
    for (seq, dest) in [(5u16, 4500u16), (6, em_id), (7, 77), (8, S)] {
        em.send(&msg(em_id, dest, seq, b"nowhere"));
        expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, seq));
    }
    a.expect_silence();
    b.expect_silence();
}

#[test]
fn msg_from_exhibitor_is_refused_but_connection_kept() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut other, other_id) = exhibitor(&server);
    ex.send(&msg(ex_id, 0, 4, b"exhibitors do not talk"));
    expect_exact(&mut ex, &hdr(Kind::Erro, S, ex_id, 4));
    ex.send(&hdr(Kind::Creq, ex_id, 0, 5));
    expect_exact(&mut ex, &hdr(Kind::Erro, S, ex_id, 5));
    other.expect_silence();
    // Still connected and still a target.
    let (mut em, em_id) = emitter(&server, 1);
    let m = msg(em_id, 0, 1, b"still there?");
    em.send(&m);
    receive_and_ack(&mut ex, ex_id, &m);
    receive_and_ack(&mut other, other_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 1));
}

// ---- rule 4: replies ---------------------------------------------------------

#[test]
fn reply_is_ok_when_any_target_said_ok_and_erro_when_none_did() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut a, a_id) = exhibitor(&server);
    let (mut b, b_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);

    let m = msg(em_id, 0, 1, b"one says no");
    em.send(&m);
    expect_exact(&mut a, &m);
    expect_exact(&mut b, &m);
    a.send(&hdr(Kind::Erro, a_id, em_id, 1));
    em.expect_silence();
    ack(&mut b, b_id, em_id, 1);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 1));

    let m = msg(em_id, 0, 2, b"both say no");
    em.send(&m);
    expect_exact(&mut a, &m);
    expect_exact(&mut b, &m);
    b.send(&hdr(Kind::Erro, b_id, em_id, 2));
    a.send(&hdr(Kind::Erro, a_id, em_id, 2));
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 2));
}

#[test]
fn reply_ordering_follows_requests_when_first_target_acks_late() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut late, late_id) = exhibitor(&server);
    let (mut quick, quick_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let first = msg(em_id, 0, 1, b"to both");
    let second = msg(em_id, quick_id, 2, b"to quick only");
    let mut both = first.clone();
    both.extend_from_slice(&second);
    em.send(&both);
    expect_exact(&mut late, &first);
    expect_exact(&mut quick, &first);
    expect_exact(&mut quick, &second);
    ack(&mut quick, quick_id, em_id, 1);
    ack(&mut quick, quick_id, em_id, 2);
    // Request 2 is settled but request 1 is not: nothing may go out yet.
    em.expect_silence();
    ack(&mut late, late_id, em_id, 1);
    let mut want = hdr(Kind::Ok, S, em_id, 1);
    want.extend_from_slice(&hdr(Kind::Ok, S, em_id, 2));
    expect_exact(&mut em, &want);
    late.expect_silence();
}

#[test]
fn immediate_replies_wait_behind_pending_ones() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let m = msg(em_id, ex_id, 1, b"pending");
    let mut bytes = m.clone();
    // No target, then a second OI: both are refused, but only after reply 1.
    bytes.extend_from_slice(&msg(em_id, 4500, 2, b"nowhere"));
    bytes.extend_from_slice(&hdr(Kind::Oi, 1, S, 3));
    em.send(&bytes);
    expect_exact(&mut ex, &m);
    em.expect_silence();
    ack(&mut ex, ex_id, em_id, 1);
    let want = [
        hdr(Kind::Ok, S, em_id, 1),
        hdr(Kind::Erro, S, em_id, 2),
        hdr(Kind::Erro, S, em_id, 3),
    ]
    .concat();
    expect_exact(&mut em, &want);
}

#[test]
fn ack_timeout_disconnects_exhibitor_that_never_acks() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut mute, mute_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);

    // Its only target never acks: ERRO, no sooner than the ack timeout.
    let m = msg(em_id, mute_id, 1, b"hello?");
    let sent = Instant::now();
    em.send(&m);
    expect_exact(&mut mute, &m);
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 1));
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "ERRO before the ack timeout"
    );
    mute.expect_closed();

    // A broadcast where one target acks and the other never does: OK, once
    // the silent one has timed out.
    let (mut mute2, mute2_id) = exhibitor(&server);
    let (mut good, good_id) = exhibitor(&server);
    let m = msg(em_id, 0, 2, b"anyone?");
    let sent = Instant::now();
    em.send(&m);
    expect_exact(&mut mute2, &m);
    receive_and_ack(&mut good, good_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 2));
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "OK before every target settled"
    );
    mute2.expect_closed();

    // The acking exhibitor stays and is now the only target.
    let m = msg(em_id, 0, 3, b"just you");
    em.send(&m);
    receive_and_ack(&mut good, good_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 3));
    assert_ne!(mute2_id, good_id);
}

#[test]
fn max_inflight_holds_back_the_third_request_until_acks_arrive() {
    let server = Server::start(&["--ack-timeout", "30", "--max-inflight", "2"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let frames: Vec<Vec<u8>> = (1..=3u16)
        .map(|seq| msg(em_id, ex_id, seq, format!("request {seq}").as_bytes()))
        .collect();
    em.send(&frames.concat());
    expect_exact(&mut ex, &frames[0]);
    expect_exact(&mut ex, &frames[1]);
    // Two requests unsettled: the third is not read.
    ex.expect_silence();
    em.expect_silence();
    ack(&mut ex, ex_id, em_id, 1);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 1));
    // One slot free: the third is processed now.
    expect_exact(&mut ex, &frames[2]);
    ack(&mut ex, ex_id, em_id, 2);
    ack(&mut ex, ex_id, em_id, 3);
    let mut want = hdr(Kind::Ok, S, em_id, 2);
    want.extend_from_slice(&hdr(Kind::Ok, S, em_id, 3));
    expect_exact(&mut em, &want);
}

// ---- rule 5: CREQ / CLIST ----------------------------------------------------

#[test]
fn creq_gets_clist_exact_bytes() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut a, a_id) = exhibitor(&server);
    let (mut b, b_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, a_id);
    let (_lone, lone_id) = emitter(&server, 1);
    assert_eq!((a_id, b_id, em_id, lone_id), (4096, 4097, 1, 2));

    // To all: each exhibitor gets CLIST(65535, 0, its own counter = 0, ids ascending).
    em.send(b"\x00\x06\x00\x01\x00\x00\x00\x01");
    let want = b"\x00\x07\xff\xff\x00\x00\x00\x00\x00\x04\x00\x01\x00\x02\x10\x00\x10\x01";
    assert_eq!(&clist(S, 0, 0, &[1, 2, 4096, 4097])[..], &want[..]);
    expect_exact(&mut a, want);
    expect_exact(&mut b, want);
    ack(&mut a, a_id, S, 0);
    em.expect_silence();
    ack(&mut b, b_id, S, 0);
    expect_exact(&mut em, b"\x00\x01\xff\xff\x00\x01\x00\x01");

    // To exhibitor b: dest echoed, b's counter is now 1.
    em.send(&hdr(Kind::Creq, em_id, b_id, 2));
    expect_exact(&mut b, &clist(S, b_id, 1, &[1, 2, 4096, 4097]));
    ack(&mut b, b_id, S, 1);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 2));

    // To its own id: its paired exhibitor a, whose counter is 1 too.
    em.send(&hdr(Kind::Creq, em_id, em_id, 3));
    expect_exact(
        &mut a,
        b"\x00\x07\xff\xff\x00\x01\x00\x01\x00\x04\x00\x01\x00\x02\x10\x00\x10\x01",
    );
    ack(&mut a, a_id, S, 1);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 3));

    // No target: ERRO.
    em.send(&hdr(Kind::Creq, em_id, 5000, 4));
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 4));
    em.send(&hdr(Kind::Creq, em_id, lone_id, 5));
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 5));
    a.expect_silence();
    b.expect_silence();
}

// ---- rule 6: FLW -------------------------------------------------------------

#[test]
fn flw_cascade_exact_bytes() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, ex_id);
    assert_eq!((ex_id, em_id), (4096, 1));
    em.send(b"\x00\x04\x00\x01\xff\xff\x00\x03");
    expect_exact_then_closed(&mut em, b"\x00\x01\xff\xff\x00\x01\x00\x03");
    // The paired exhibitor is told to leave with the server's first seq.
    expect_exact(&mut ex, b"\x00\x04\xff\xff\x10\x00\x00\x00");
    ex.send(b"\x00\x01\x10\x00\xff\xff\x00\x00");
    ex.expect_closed();
    // Both ids are free again.
    let (_ex2, ex2_id) = exhibitor(&server);
    let (_em2, em2_id) = emitter(&server, ex2_id);
    assert_eq!((ex2_id, em2_id), (4096, 1));
}

#[test]
fn flw_from_emitter_is_answered_after_its_pending_replies() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let m = msg(em_id, ex_id, 1, b"before leaving");
    let mut bytes = m.clone();
    bytes.extend_from_slice(&hdr(Kind::Flw, em_id, S, 2));
    em.send(&bytes);
    expect_exact(&mut ex, &m);
    em.expect_silence();
    ack(&mut ex, ex_id, em_id, 1);
    let mut want = hdr(Kind::Ok, S, em_id, 1);
    want.extend_from_slice(&hdr(Kind::Ok, S, em_id, 2));
    expect_exact_then_closed(&mut em, &want);
    // Unpaired, so the exhibitor gets no FLW.
    ex.expect_silence();
}

#[test]
fn flw_from_exhibitor_gets_ok_and_close_and_unpairs_its_emitter() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, ex_id);
    ex.send(b"\x00\x04\x10\x00\xff\xff\x00\x09");
    expect_exact_then_closed(&mut ex, b"\x00\x01\xff\xff\x10\x00\x00\x09");
    // The emitter stays, unpaired: its own id is no target any more.
    em.send(&msg(em_id, em_id, 1, b"anyone?"));
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 1));
    // A new exhibitor gets the freed id and nothing else.
    let (mut ex2, ex2_id) = exhibitor(&server);
    assert_eq!(ex2_id, ex_id);
    ex2.expect_silence();
}

#[test]
fn flw_from_exhibitor_with_a_pending_delivery_fails_that_delivery() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let m = msg(em_id, ex_id, 1, b"leaving before acking");
    em.send(&m);
    expect_exact(&mut ex, &m);
    ex.send(&hdr(Kind::Flw, ex_id, S, 0));
    expect_exact_then_closed(&mut ex, &hdr(Kind::Ok, S, ex_id, 0));
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 1));
}

#[test]
fn emitter_disconnecting_without_flw_sends_flw_to_paired_exhibitor() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (em, _em_id) = emitter(&server, ex_id);
    drop(em);
    expect_exact(&mut ex, &hdr(Kind::Flw, S, ex_id, 0));
    ack(&mut ex, ex_id, S, 0);
    ex.expect_closed();

    // An exhibitor that does not acknowledge the FLW is closed at the ack timeout.
    let (mut ex2, ex2_id) = exhibitor(&server);
    let (em2, _) = emitter(&server, ex2_id);
    drop(em2);
    expect_exact(&mut ex2, &hdr(Kind::Flw, S, ex2_id, 0));
    ex2.expect_closed();

    // The FLW's seq is the server's counter for that connection, shared with CLIST.
    let (mut ex3, ex3_id) = exhibitor(&server);
    let (mut em3, em3_id) = emitter(&server, ex3_id);
    em3.send(&hdr(Kind::Creq, em3_id, em3_id, 1));
    expect_exact(&mut ex3, &clist(S, em3_id, 0, &[em3_id, ex3_id]));
    ack(&mut ex3, ex3_id, S, 0);
    expect_exact(&mut em3, &hdr(Kind::Ok, S, em3_id, 1));
    drop(em3);
    expect_exact(&mut ex3, &hdr(Kind::Flw, S, ex3_id, 1));
    ack(&mut ex3, ex3_id, S, 1);
    ex3.expect_closed();
}

// ---- rule 7: bad frames --------------------------------------------------------

#[test]
fn clist_from_client_is_refused_and_closed() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    em.send(&clist(em_id, 0, 4, &[1, 4096]));
    expect_exact_then_closed(&mut em, &hdr(Kind::Erro, S, em_id, 4));
    ex.send(&clist(ex_id, S, 8, &[]));
    expect_exact_then_closed(&mut ex, &hdr(Kind::Erro, S, ex_id, 8));
}

#[test]
fn garbage_bytes_get_erro_then_close() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    // Before OI: the header is still read, its seq echoed.
    let mut anon = server.raw();
    anon.send(&[0xff; 16]);
    expect_exact_then_closed(&mut anon, b"\x00\x02\xff\xff\x00\x00\xff\xff");
    // (Not 8: before OI that is a HELLO, which waits for its length.)
    for kind in [0u16, 12, 0x0100] {
        let mut anon = server.raw();
        anon.send(&raw_hdr(kind, 0, S, 0x0a0b));
        expect_exact_then_closed(&mut anon, &hdr(Kind::Erro, S, 0, 0x0a0b));
    }
    // After OI: the ERRO carries the client's id.
    let (mut em, em_id) = emitter(&server, 1);
    em.send(&raw_hdr(8, em_id, S, 5));
    expect_exact_then_closed(&mut em, &hdr(Kind::Erro, S, em_id, 5));
    let (mut ex, ex_id) = exhibitor(&server);
    ex.send(&[0xff; 8]);
    expect_exact_then_closed(&mut ex, &hdr(Kind::Erro, S, ex_id, 0xffff));
    // Fewer bytes than a header, then the client hangs up: nothing to answer.
    let mut short = server.raw();
    short.send(b"\xff\xff\xff");
    short.stream.shutdown(std::net::Shutdown::Write).unwrap();
    short.expect_closed();
    // The server is fine.
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, ex_id);
    let m = msg(em_id, 0, 1, b"after the garbage");
    em.send(&m);
    receive_and_ack(&mut ex, ex_id, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 1));
}

#[test]
fn random_garbage_never_crashes_the_server() {
    let server = Server::start(&["--ack-timeout", "0.5", "--handshake-timeout", "1"]);
    // An exhibitor is present so that random MSGs and CREQs could reach one.
    let (_watcher, _) = exhibitor(&server);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut kept = Vec::new();
    for round in 0..60 {
        let len = 1 + (rng.next() % 700) as usize;
        let bytes = rng.bytes(len);
        let mut raw = server.raw();
        if round % 3 == 1 {
            // Identified first, as an unpaired emitter.
            raw.identify_emitter(1);
        }
        // The server may already have closed on an early bad frame.
        let _ = raw.stream.write_all(&bytes);
        if round % 2 == 0 {
            drop(raw);
        } else {
            kept.push(raw);
        }
    }
    // With the garbage senders still around, new clients are served normally.
    let mut fresh = server.raw();
    fresh.send(&hdr(Kind::Oi, 0, S, 42));
    let ok = fresh.expect_frame();
    assert_eq!((ok.kind, ok.origin, ok.seq), (Kind::Ok, S, 42), "{ok}");
    let (mut em, em_id) = emitter(&server, ok.dest);
    let m = msg(em_id, em_id, 1, b"served after the garbage");
    em.send(&m);
    receive_and_ack(&mut fresh, ok.dest, &m);
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 1));
    drop(kept);
    let (_again, again_id) = exhibitor(&server);
    assert!(is_exhibitor_id(again_id));
}

// ---- rule 8 (handshake timeout) --------------------------------------------------

#[test]
fn handshake_timeout_closes_silent_and_half_header_connections() {
    let server = Server::start(&["--ack-timeout", "0.5", "--handshake-timeout", "0.5"]);
    let started = Instant::now();
    let mut silent = server.raw();
    let mut half = server.raw();
    half.send(b"\x00\x03\x00\x00");
    let (mut ex, _ex_id) = exhibitor(&server);
    silent.expect_closed();
    half.expect_closed();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed before the timeout"
    );
    // An identified client is not subject to the handshake timeout.
    for _ in 0..3 {
        ex.expect_silence();
    }
    // A client that completes OI byte by byte in time is served too.
    let mut slow = server.raw();
    for byte in hdr(Kind::Oi, 0, S, 1) {
        slow.send(&[byte]);
    }
    let ok = slow.expect_frame();
    assert_eq!((ok.kind, ok.seq), (Kind::Ok, 1), "{ok}");
}

// ---- framing ---------------------------------------------------------------------

/// Sends `bytes` one per write, each flushed.
fn dribble(raw: &mut Raw, bytes: &[u8]) {
    for byte in bytes {
        raw.send(&[*byte]);
        raw.stream.flush().unwrap();
    }
}

#[test]
fn frame_sent_byte_by_byte_is_answered_correctly() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let mut ex = server.raw();
    dribble(&mut ex, b"\x00\x03\x00\x00\xff\xff\x00\x00");
    expect_exact(&mut ex, b"\x00\x01\xff\xff\x10\x00\x00\x00");
    let mut em = server.raw();
    dribble(&mut em, b"\x00\x03\x10\x00\xff\xff\x00\x00");
    expect_exact(&mut em, b"\x00\x01\xff\xff\x00\x01\x00\x00");
    let m = msg(1, 0, 1, b"one byte at a time");
    dribble(&mut em, &m);
    expect_exact(&mut ex, &m);
    dribble(&mut ex, &hdr(Kind::Ok, 4096, 1, 1));
    expect_exact(&mut em, &hdr(Kind::Ok, S, 1, 1));
    dribble(&mut em, &hdr(Kind::Creq, 1, 0, 2));
    expect_exact(&mut ex, &clist(S, 0, 0, &[1, 4096]));
}

#[test]
fn two_hundred_frames_in_one_write() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let frames: Vec<Vec<u8>> = (1..=200u16)
        .map(|seq| msg(em_id, 0, seq, format!("message number {seq}").as_bytes()))
        .collect();
    let all = frames.concat();
    em.stream.write_all(&all).unwrap();
    // The exhibitor gets the same 200 frames, byte for byte, in order.
    expect_exact(&mut ex, &all);
    // All acks in one write too.
    let acks: Vec<u8> = (1..=200u16)
        .flat_map(|seq| hdr(Kind::Ok, ex_id, em_id, seq))
        .collect();
    ex.stream.write_all(&acks).unwrap();
    let oks: Vec<u8> = (1..=200u16)
        .flat_map(|seq| hdr(Kind::Ok, S, em_id, seq))
        .collect();
    expect_exact(&mut em, &oks);
    ex.expect_silence();
    em.expect_silence();
}

// ---- many clients, id reuse --------------------------------------------------------

#[test]
fn three_hundred_concurrent_clients_are_all_served() {
    const PAIRS: usize = 150;
    let server = Server::start(&["--ack-timeout", "10"]);
    let mut exhibitors: Vec<(Raw, ClientId)> = (0..PAIRS).map(|_| exhibitor(&server)).collect();
    let ex_ids: Vec<ClientId> = exhibitors.iter().map(|(_, id)| *id).collect();
    assert_eq!(ex_ids, (4096..4096 + PAIRS as u16).collect::<Vec<_>>());
    let mut emitters: Vec<(Raw, ClientId)> = ex_ids
        .iter()
        .map(|&ex_id| emitter(&server, ex_id))
        .collect();
    let em_ids: Vec<ClientId> = emitters.iter().map(|(_, id)| *id).collect();
    assert_eq!(em_ids, (1..=PAIRS as u16).collect::<Vec<_>>());
    // Every emitter sends before anyone reads: half address their exhibitor
    // by its id, half by their own id.
    let messages: Vec<Vec<u8>> = (0..PAIRS)
        .map(|i| {
            let em_id = em_ids[i];
            let dest = if i % 2 == 0 { ex_ids[i] } else { em_id };
            msg(
                em_id,
                dest,
                1,
                format!("from {em_id} to {}", ex_ids[i]).as_bytes(),
            )
        })
        .collect();
    for (i, (em, _)) in emitters.iter_mut().enumerate() {
        em.send(&messages[i]);
    }
    for (i, (ex, ex_id)) in exhibitors.iter_mut().enumerate() {
        receive_and_ack(ex, *ex_id, &messages[i]);
    }
    for (em, em_id) in emitters.iter_mut() {
        expect_exact(em, &hdr(Kind::Ok, S, *em_id, 1));
    }
    // Each exhibitor got exactly its one message.
    for (ex, _) in exhibitors.iter_mut().step_by(15) {
        ex.expect_silence();
    }
}

#[test]
fn lowest_free_id_is_reused() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (_a, a_id) = exhibitor(&server);
    let (mut b, b_id) = exhibitor(&server);
    let (_c, c_id) = exhibitor(&server);
    assert_eq!((a_id, b_id, c_id), (4096, 4097, 4098));

    // Emitters 1, 2, 3; 2 is paired with a fourth exhibitor so that its
    // disconnection can be observed (that exhibitor gets FLW).
    let (mut e1, e1_id) = emitter(&server, 1);
    let (mut d, d_id) = exhibitor(&server);
    assert_eq!(d_id, 4099);
    let (e2, e2_id) = emitter(&server, d_id);
    let (_e3, e3_id) = emitter(&server, 1);
    assert_eq!((e1_id, e2_id, e3_id), (1, 2, 3));

    // 4097 drops with a delivery outstanding; the emitter's ERRO shows the
    // server has forgotten it.
    let m = msg(e1_id, b_id, 1, b"to 4097");
    e1.send(&m);
    expect_exact(&mut b, &m);
    drop(b);
    expect_exact(&mut e1, &hdr(Kind::Erro, S, e1_id, 1));
    let (_b2, b2_id) = exhibitor(&server);
    assert_eq!(b2_id, 4097);
    let (_f, f_id) = exhibitor(&server);
    assert_eq!(f_id, 4100);

    // Emitter 2 drops; its exhibitor's FLW shows the server has forgotten it.
    drop(e2);
    expect_exact(&mut d, &hdr(Kind::Flw, S, d_id, 0));
    let (_e2b, e2b_id) = emitter(&server, 1);
    assert_eq!(e2b_id, 2);
    let (_e4, e4_id) = emitter(&server, 1);
    assert_eq!(e4_id, 4);
}

// ---- rule 9: slow consumer -----------------------------------------------------------

#[test]
fn slow_consumer_is_disconnected_while_others_keep_receiving() {
    const MAX_MESSAGES: u16 = 600;
    let server = Server::start(&["--ack-timeout", "60", "--max-queue", "65536"]);

    // The exhibitor that never reads: identify by hand, then stop reading.
    let mut slow = connect_with_small_rcvbuf(server.addr, 4096);
    slow.set_nodelay(true).unwrap();
    slow.write_all(&hdr(Kind::Oi, 0, S, 0)).unwrap();
    slow.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut ok = [0u8; 8];
    slow.read_exact(&mut ok).unwrap();
    assert_eq!(hex(&ok), hex(&hdr(Kind::Ok, S, 4096, 0)));

    let (mut reader, reader_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let text = vec![b'x'; 60_000];
    let mut sent = 0u16;
    let mut dropped = false;
    while !dropped {
        assert!(
            sent < MAX_MESSAGES,
            "no slow-consumer disconnect after {sent} messages of 60 KB"
        );
        sent += 1;
        let m = msg(em_id, 0, sent, &text);
        em.send(&m);
        receive_and_ack(&mut reader, reader_id, &m);
        let log = server.proc.stderr.drain();
        dropped |= log.iter().any(|line| line.contains("slow consumer"));
    }
    eprintln!("slow consumer dropped after {sent} messages");
    // The slow one's deliveries failed, the reader's succeeded: all OK, in order.
    let oks: Vec<u8> = (1..=sent)
        .flat_map(|seq| hdr(Kind::Ok, S, em_id, seq))
        .collect();
    expect_exact(&mut em, &oks);

    // The slow exhibitor's connection ends (after whatever was already in flight).
    let drained = read_to_end_within(&mut slow, TIMEOUT).len();
    assert!(
        drained < sent as usize * m_len(&text),
        "the slow exhibitor received every message ({drained} bytes)"
    );

    // The reader keeps receiving, and is now the only target.
    for seq in sent + 1..=sent + 3 {
        let m = msg(em_id, 0, seq, &text);
        em.send(&m);
        receive_and_ack(&mut reader, reader_id, &m);
        expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, seq));
    }
}

fn m_len(text: &[u8]) -> usize {
    HEADER_LEN + 2 + text.len()
}

/// The router test `rule4_an_ack_for_the_previous_occupant_of_a_reused_slot_
/// settles_nothing`, from the wire: an emitter leaves with a delivery still
/// unacknowledged; the next connection takes its freed slot and its freed
/// id; the exhibitor's late ack for the old delivery must not answer the new
/// emitter's request of the same number.
#[test]
fn rule4_a_late_ack_for_a_departed_emitter_does_not_answer_the_next_holder_of_its_slot() {
    let server = Server::start(&[]);
    let (mut x, x_id) = exhibitor(&server);
    let (mut y, y_id) = exhibitor(&server);
    let (mut e, e_id) = emitter(&server, 1);
    let (mut w, w_id) = emitter(&server, 1);
    let for_x = msg(e_id, x_id, 1, b"for X");
    e.send(&for_x);
    expect_exact(&mut x, &for_x);
    drop(e);
    // The server has seen the emitter go once a client list leaves it out.
    w.send(&hdr(Kind::Creq, w_id, y_id, 1));
    let list = y.expect_frame();
    let Body::Clients(ids) = &list.body else {
        panic!("expected CLIST, got {list}");
    };
    assert_eq!(ids, &[w_id, x_id, y_id], "{list}");
    ack(&mut y, y_id, SERVER_ID, list.seq);
    assert_eq!(w.expect_frame(), Frame::bare(Kind::Ok, SERVER_ID, w_id, 1));

    // The next connection: the freed slot (the server's slab reuses the
    // last one freed) and the freed id.
    let (mut e2, e2_id) = emitter(&server, 1);
    assert_eq!(e2_id, e_id, "the new emitter takes the freed id");
    let for_y = msg(e2_id, y_id, 1, b"for Y");
    e2.send(&for_y);
    expect_exact(&mut y, &for_y);
    ack(&mut x, x_id, e_id, 1);
    e2.expect_silence();
    ack(&mut y, y_id, e2_id, 1);
    assert_eq!(
        e2.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e2_id, 1)
    );
    e2.expect_silence();
}

#[test]
fn buffers_a_burst_left_behind_are_released_when_the_connections_go_idle() {
    let server = Server::start(&["-v"]);
    let (mut ex, ex_id) = exhibitor(&server);
    let (mut em, em_id) = emitter(&server, 1);
    let m = msg(em_id, ex_id, 1, &[b'x'; 60_000]);
    em.send(&m);
    expect_exact(&mut ex, &m);
    ex.send(&hdr(Kind::Ok, ex_id, em_id, 1));
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 1));
    // A trim (every 5 s) frees what the burst made the server hold; one
    // that ran before the burst may have freed less, never nothing.
    let freed_the_burst = |line: &str| {
        if !line.contains("released idle connection buffers") {
            return false;
        }
        let bytes: usize = line
            .rsplit_once("bytes=")
            .and_then(|(_, n)| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no byte count in {line:?}"));
        assert!(bytes > 0, "a trim that freed nothing is logged: {line:?}");
        bytes >= 60_000
    };
    let what = "idle buffers released";
    server
        .proc
        .stderr
        .skip_until(what, TIMEOUT, freed_the_burst);
}

#[test]
fn output_larger_than_the_socket_takes_is_written_as_the_reader_drains_it() {
    // Nothing but the reader's own reads may move the rest: no more input
    // arrives for the server once the burst is queued.
    // 12 MB: more than the kernel buffers on the server's side (they grow
    // to 4 MiB), less than the output cap.
    let server = Server::start(&["--ack-timeout", "60", "--max-queue", "16777216"]);
    let mut ex = Raw::over(connect_with_small_rcvbuf(server.addr, 4096));
    let ex_id = ex.identify_exhibitor();
    let (mut em, em_id) = emitter(&server, 1);
    let texts: Vec<Vec<u8>> = (0..200u8).map(|i| vec![b'a' + i % 26; 60_000]).collect();
    for (seq, text) in (1..).zip(&texts) {
        em.send(&msg(em_id, ex_id, seq, text));
    }
    for (seq, text) in (1..).zip(&texts) {
        expect_exact(&mut ex, &msg(em_id, ex_id, seq, text));
    }
}
