//! The three real binaries talking to each other: what a user sees on the
//! exhibitor's and emitter's stdout, their exit codes, and the farewell
//! cascade. Every wait is a read of an expected line (bounded by the
//! harness's timeout); order is only asserted within one process's output.

use crate::util::*;
use evchat::proto::{Body, Frame, Kind, SERVER_ID};
use std::io::Write;
use std::process::ExitStatus;

/// Writes each line, newline-terminated, to the child's stdin.
fn send_lines(p: &mut Proc, lines: &[&str]) {
    let mut text = lines.join("\n");
    text.push('\n');
    p.input(&text);
}

/// Writes raw bytes (possibly invalid UTF-8) to the child's stdin.
fn send_bytes(p: &mut Proc, bytes: &[u8]) {
    let stdin = p.stdin.as_mut().expect("stdin still open");
    stdin.write_all(bytes).unwrap();
    stdin.flush().unwrap();
}

/// Waits for the process to exit and asserts its exit code.
pub(crate) fn assert_exit(p: &mut Proc, code: i32) {
    let status: ExitStatus = p.wait();
    if status.code() != Some(code) {
        panic!(
            "expected exit code {code}, got {status}; stderr: {:?}",
            p.stderr.rest()
        );
    }
}

/// Waits for the process to exit with `code` and asserts it printed nothing
/// more on stdout.
fn assert_exit_quietly(p: &mut Proc, code: i32) {
    assert_exit(p, code);
    assert_eq!(p.stdout.rest(), Vec::<String>::new(), "unexpected stdout");
}

/// A client that must fail before printing anything: exit 1, nothing on
/// stdout, exactly one stderr line (returned).
fn assert_fails_with_one_line(p: &mut Proc) -> String {
    assert_exit(p, 1);
    assert_eq!(p.stdout.rest(), Vec::<String>::new(), "unexpected stdout");
    let errors = p.stderr.rest();
    assert_eq!(errors.len(), 1, "expected one stderr line: {errors:?}");
    errors.into_iter().next().unwrap()
}

/// Asserts `p` exits 2 (a usage error) with one line on stderr, which it returns.
fn fails_as_usage_with_one_line(p: &mut Proc) -> String {
    assert_exit(p, 2);
    assert_eq!(p.stdout.rest(), Vec::<String>::new(), "unexpected stdout");
    let errors = p.stderr.rest();
    assert_eq!(errors.len(), 1, "expected one stderr line: {errors:?}");
    errors.into_iter().next().unwrap()
}

/// Asserts a bad-input report for input line `number`, whatever the reason.
fn assert_bad_line(line: &str, number: usize) {
    let prefix = format!("emitter: line {number}: ");
    assert!(
        line.starts_with(&prefix) && line.ends_with("; nothing sent"),
        "bad-line report for line {number}: {line:?}"
    );
    assert!(
        line.len() > prefix.len() + "; nothing sent".len(),
        "no reason given: {line:?}"
    );
}

#[test]
fn banners_show_ids_lowest_first_and_pairing() {
    let server = Server::start(&[]);
    let target = server.target();
    let ex1 = Proc::spawn("exhibitor", &[&target]);
    ex1.stdout.expect_line("exhibitor 4096");
    let ex2 = Proc::spawn("exhibitor", &[&target]);
    ex2.stdout.expect_line("exhibitor 4097");
    let em1 = Proc::spawn("emitter", &[&target, "4097"]);
    em1.stdout
        .expect_line("emitter 1 paired with exhibitor 4097");
    let em2 = Proc::spawn("emitter", &[&target]);
    em2.stdout.expect_line("emitter 2");
    let em3 = Proc::spawn("emitter", &[&target, "4096"]);
    em3.stdout
        .expect_line("emitter 3 paired with exhibitor 4096");
}

#[test]
fn unicast_reaches_only_the_named_exhibitor() {
    let server = Server::start(&[]);
    let (ex1, id1) = server.exhibitor();
    let (ex2, id2) = server.exhibitor();
    assert_eq!((id1, id2), (4096, 4097));
    let (mut em, em_id) = server.emitter(None);
    assert_eq!(em_id, 1);

    send_lines(&mut em, &["(4097) hello 4097"]);
    ex2.stdout.expect_line("Message from 1: hello 4097");
    em.stdout.expect_line("delivered #1");

    // 4096's first line after its banner is its own message: the first one
    // did not reach it.
    send_lines(&mut em, &["(4096) hello 4096"]);
    ex1.stdout.expect_line("Message from 1: hello 4096");
    em.stdout.expect_line("delivered #2");
}

#[test]
fn broadcast_reaches_every_exhibitor_marked_to_all() {
    let server = Server::start(&[]);
    let exhibitors: Vec<_> = (0..3).map(|_| server.exhibitor()).collect();
    // Being paired with one exhibitor does not narrow a broadcast.
    let (mut em, _) = server.emitter(Some(4097));

    send_lines(&mut em, &["(0) hello everyone"]);
    for (ex, _) in &exhibitors {
        ex.stdout
            .expect_line("Message from 1 to all: hello everyone");
    }
    em.stdout.expect_line("delivered #1");
}

#[test]
fn message_to_an_emitter_id_reaches_its_paired_exhibitor() {
    let server = Server::start(&[]);
    let (paired_ex, _) = server.exhibitor();
    let (other_ex, _) = server.exhibitor();
    let (mut em_a, a) = server.emitter(Some(4096));
    let (mut em_b, b) = server.emitter(None);
    assert_eq!((a, b), (1, 2));

    // To its own id: the emitter's own exhibitor.
    send_lines(&mut em_a, &["(1) note to self"]);
    paired_ex.stdout.expect_line("Message from 1: note to self");
    em_a.stdout.expect_line("delivered #1");

    // Another emitter's id: that emitter's exhibitor.
    send_lines(&mut em_b, &["(1) via emitter 1"]);
    paired_ex
        .stdout
        .expect_line("Message from 2: via emitter 1");
    em_b.stdout.expect_line("delivered #1");

    // The unpaired exhibitor saw none of it.
    send_lines(&mut em_b, &["(4097) direct"]);
    other_ex.stdout.expect_line("Message from 2: direct");
    em_b.stdout.expect_line("delivered #2");
}

#[test]
fn unpaired_emitter_unknown_exhibitor_and_unused_id_are_not_delivered() {
    let server = Server::start(&[]);
    let (ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(None);
    let (_unpaired, unpaired_id) = server.emitter(None);
    assert_eq!(unpaired_id, 2);

    send_lines(
        &mut em,
        &[
            "(2) to an unpaired emitter",
            "(1) to myself, unpaired",
            "(4097) to an exhibitor nobody holds",
            "(9000) to an id outside both ranges",
            "(CREQ) 4097",
            "(CREQ) 2",
            "(4096) this one arrives",
        ],
    );
    for seq in 1..=6 {
        em.stdout.expect_line(&format!("not delivered #{seq}"));
    }
    em.stdout.expect_line("delivered #7");
    // The exhibitor's first line is the one message that had a target.
    ex.stdout.expect_line("Message from 1: this one arrives");
}

#[test]
fn broadcast_and_creq_to_all_without_exhibitors_are_not_delivered() {
    let server = Server::start(&[]);
    let (mut em, _) = server.emitter(None);
    send_lines(&mut em, &["(0) anyone?", "(CREQ) 0"]);
    em.stdout.expect_line("not delivered #1");
    em.stdout.expect_line("not delivered #2");
}

#[test]
fn creq_sends_the_client_list_to_the_target() {
    let server = Server::start(&[]);
    let (ex1, _) = server.exhibitor();
    let (ex2, _) = server.exhibitor();
    let (_em_a, _) = server.emitter(Some(4096));
    let (mut em_b, _) = server.emitter(None);

    send_lines(&mut em_b, &["(CREQ) 4097"]);
    ex2.stdout.expect_line("Clients (4): 1 2 4096 4097");
    em_b.stdout.expect_line("delivered #1");

    // Targeted through an emitter id, like MSG: emitter 1's exhibitor.
    send_lines(&mut em_b, &["(CREQ) 1"]);
    ex1.stdout.expect_line("Clients (4): 1 2 4096 4097");
    em_b.stdout.expect_line("delivered #2");
}

#[test]
fn creq_to_zero_reaches_every_exhibitor() {
    let server = Server::start(&[]);
    let (ex1, _) = server.exhibitor();
    let (ex2, _) = server.exhibitor();
    let (mut em, _) = server.emitter(None);

    send_lines(&mut em, &["(CREQ) 0"]);
    ex1.stdout.expect_line("Clients (3): 1 4096 4097");
    ex2.stdout.expect_line("Clients (3): 1 4096 4097");
    em.stdout.expect_line("delivered #1");
}

#[test]
fn flw_line_closes_the_emitter_and_its_paired_exhibitor() {
    let server = Server::start(&[]);
    let (mut ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(Some(4096));

    send_lines(&mut em, &["(4096) leaving soon"]);
    ex.stdout.expect_line("Message from 1: leaving soon");
    em.stdout.expect_line("delivered #1");

    // stdin stays open: the (FLW) line alone makes it leave.
    send_lines(&mut em, &["(FLW)"]);
    assert_exit_quietly(&mut em, 0);
    ex.stdout.expect_line("closed by server");
    assert_exit_quietly(&mut ex, 0);

    // The departed emitter's id is the lowest free one again.
    let (_next, next_id) = server.emitter(None);
    assert_eq!(next_id, 1);
}

#[test]
fn end_of_input_waits_for_every_reply_then_leaves() {
    let server = Server::start(&[]);
    let (mut ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(Some(4096));

    send_lines(
        &mut em,
        &["(4096) a", "(9000) b", "(0) c", "(CREQ) 4096", "(1) e"],
    );
    em.close_input();

    em.stdout.expect_line("delivered #1");
    em.stdout.expect_line("not delivered #2");
    em.stdout.expect_line("delivered #3");
    em.stdout.expect_line("delivered #4");
    em.stdout.expect_line("delivered #5");
    assert_exit_quietly(&mut em, 0);

    ex.stdout.expect_line("Message from 1: a");
    ex.stdout.expect_line("Message from 1 to all: c");
    ex.stdout.expect_line("Clients (2): 1 4096");
    ex.stdout.expect_line("Message from 1: e");
    ex.stdout.expect_line("closed by server");
    assert_exit_quietly(&mut ex, 0);
}

#[test]
fn bad_input_lines_are_reported_and_take_no_sequence_number() {
    let server = Server::start(&[]);
    let (mut ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(Some(4096));

    send_lines(
        &mut em,
        &[
            "hello",          // 1: no (ID)
            "(4096)x",        // 2: no space after ')'
            "(4096) first",   // 3: #1
            "(abc) hi",       // 4: not an id
            "(65536) hi",     // 5: id out of range
            "(CREQ) x",       // 6: CREQ with a bad id
            "(CREQ)",         // 7: CREQ without an id
            "(FLW) now",      // 8: text after FLW
            "(4096) second",  // 9: #2
            "(creq) 4096",    // 10: #3, keyword in lower case
            "4096 no parens", // 11: no (ID)
            "(-1) negative",  // 12: not an id
            "(Flw)",          // 13: leave, mixed case
        ],
    );
    for number in [1, 2, 4, 5, 6, 7, 8, 11, 12] {
        assert_bad_line(&em.stderr.expect(), number);
    }

    em.stdout.expect_line("delivered #1");
    em.stdout.expect_line("delivered #2");
    em.stdout.expect_line("delivered #3");
    assert_exit_quietly(&mut em, 0);
    assert_eq!(em.stderr.rest(), Vec::<String>::new(), "unexpected stderr");

    ex.stdout.expect_line("Message from 1: first");
    ex.stdout.expect_line("Message from 1: second");
    ex.stdout.expect_line("Clients (2): 1 4096");
    ex.stdout.expect_line("closed by server");
    assert_exit_quietly(&mut ex, 0);
}

#[test]
fn one_space_after_the_parenthesis_is_syntax_not_text() {
    let server = Server::start(&[]);
    let (ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(None);

    send_lines(&mut em, &["(4096)  two spaces", "(0)   three"]);
    ex.stdout.expect_line("Message from 1:  two spaces");
    ex.stdout.expect_line("Message from 1 to all:   three");
    em.stdout.expect_line("delivered #1");
    em.stdout.expect_line("delivered #2");
}

#[test]
fn exhibitor_escapes_control_characters_and_invalid_utf8() {
    let server = Server::start(&[]);
    let (ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(None);

    send_bytes(
        &mut em,
        b"(4096) tab\there\n\
          (4096) esc\x1b[2Jclear\n\
          (4096) back\\slash\n\
          (4096) cr\rmid\n\
          (4096) bad\xff\xfebytes\n\
          (4096) bell\x07del\x7f\n",
    );
    send_lines(&mut em, &["(4096) Oi, tudo bem? ção"]);
    ex.stdout.expect_line(r"Message from 1: tab\there");
    ex.stdout.expect_line(r"Message from 1: esc\x1b[2Jclear");
    ex.stdout.expect_line(r"Message from 1: back\\slash");
    ex.stdout.expect_line(r"Message from 1: cr\rmid");
    ex.stdout.expect_line(r"Message from 1: bad\xff\xfebytes");
    ex.stdout.expect_line(r"Message from 1: bell\x07del\x7f");
    ex.stdout.expect_line("Message from 1: Oi, tudo bem? ção");
    for seq in 1..=7 {
        em.stdout.expect_line(&format!("delivered #{seq}"));
    }

    // A newline inside a text cannot be typed into the emitter; send it from
    // a raw emitter to check that it cannot forge a second line either.
    let mut raw = server.raw();
    let raw_id = raw.identify_emitter(1);
    assert_eq!(raw_id, 2);
    raw.send_frame(&Frame::msg(raw_id, 4096, 1, &b"one\ntwo\r\n"[..]).unwrap());
    ex.stdout.expect_line(r"Message from 2: one\ntwo\r\n");
    let ok = raw.expect_frame();
    assert_eq!((ok.kind, ok.dest, ok.seq), (Kind::Ok, raw_id, 1), "{ok}");
}

#[test]
fn replies_come_in_request_order() {
    let server = Server::start(&[]);
    // A hand-driven exhibitor that holds its acknowledgement back.
    let mut raw_ex = server.raw();
    assert_eq!(raw_ex.identify_exhibitor(), 4096);
    let (mut em, _) = server.emitter(None);

    send_lines(&mut em, &["(4096) slow", "(9000) fast"]);
    let msg = raw_ex.expect_frame();
    assert_eq!(
        (msg.kind, msg.origin, msg.dest, msg.seq),
        (Kind::Msg, 1, 4096, 1)
    );
    assert_eq!(msg.body, Body::Text(b"slow"[..].into()));
    // #2 has no target, yet its reply waits behind #1's.
    assert_eq!(
        em.stdout.next_within(QUIET),
        None,
        "reply before #1 settled"
    );

    raw_ex.send_frame(&Frame::bare(Kind::Ok, 4096, msg.origin, msg.seq));
    em.stdout.expect_line("delivered #1");
    em.stdout.expect_line("not delivered #2");
}

#[test]
fn pairing_with_an_unknown_exhibitor_is_refused() {
    let server = Server::start(&[]);
    let (_ex, _) = server.exhibitor();
    let mut em = Proc::spawn("emitter", &[&server.target(), "4100"]);
    assert_fails_with_one_line(&mut em);

    // The refusal cost nothing: the next emitter is still number 1.
    let (_next, id) = server.emitter(None);
    assert_eq!(id, 1);
}

#[test]
fn pairing_with_an_already_paired_exhibitor_is_refused() {
    let server = Server::start(&[]);
    let (ex, _) = server.exhibitor();
    let (mut first, _) = server.emitter(Some(4096));

    let mut second = Proc::spawn("emitter", &[&server.target(), "4096"]);
    assert_fails_with_one_line(&mut second);

    // The first pairing is intact.
    send_lines(&mut first, &["(1) still paired"]);
    ex.stdout.expect_line("Message from 1: still paired");
    first.stdout.expect_line("delivered #1");
}

#[test]
fn unreachable_server_makes_clients_exit_1() {
    let unused = ReservedPort::new();
    let addr = unused.target();
    let mut em = Proc::spawn("emitter", &[&addr]);
    assert_fails_with_one_line(&mut em);
    let mut ex = Proc::spawn("exhibitor", &[&addr]);
    assert_fails_with_one_line(&mut ex);
}

#[test]
fn exhibitor_sigint_leaves_and_its_id_is_reused() {
    let server = Server::start(&[]);
    let (mut ex1, _) = server.exhibitor();
    let (ex2, _) = server.exhibitor();

    ex1.signal(libc::SIGINT);
    assert_exit_quietly(&mut ex1, 0);

    // Lowest free id first: 4096 again, not 4098.
    let (ex3, id3) = server.exhibitor();
    assert_eq!(id3, 4096);

    let (mut em, _) = server.emitter(None);
    send_lines(&mut em, &["(CREQ) 0"]);
    ex2.stdout.expect_line("Clients (3): 1 4096 4097");
    ex3.stdout.expect_line("Clients (3): 1 4096 4097");
    em.stdout.expect_line("delivered #1");
}

#[test]
fn emitter_sigint_leaves_and_closes_its_paired_exhibitor() {
    let server = Server::start(&[]);
    let (mut ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(Some(4096));

    // A reply proves the emitter is past its start-up (signal handler set).
    send_lines(&mut em, &["(4096) hi"]);
    ex.stdout.expect_line("Message from 1: hi");
    em.stdout.expect_line("delivered #1");

    em.signal(libc::SIGINT);
    assert_exit_quietly(&mut em, 0);
    ex.stdout.expect_line("closed by server");
    assert_exit_quietly(&mut ex, 0);
}

#[test]
fn server_sigint_closes_every_client_then_exits_0() {
    let mut server = Server::start(&[]);
    let (mut ex1, _) = server.exhibitor();
    let (mut ex2, _) = server.exhibitor();
    let (mut em1, _) = server.emitter(Some(4096));
    let (mut em2, _) = server.emitter(None);

    server.proc.signal(libc::SIGINT);
    for client in [&mut ex1, &mut ex2, &mut em1, &mut em2] {
        client.stdout.expect_line("closed by server");
        assert_exit_quietly(client, 0);
    }
    assert_exit_quietly(&mut server.proc, 0);
}

/// A peer at a fresh address that reads the client's OI, then answers with
/// `reply` and closes, or (`reply` None) says nothing and stays open until
/// the client has gone.
fn fake_peer(reply: Option<&'static [u8]>) -> String {
    peer_after_oi(move |mut stream, _| match reply {
        Some(bytes) => stream.write_all(bytes).unwrap(),
        // Holds the connection open: the read ends when the client exits.
        None => {
            let _ = std::io::Read::read(&mut stream, &mut [0u8; 1]);
        }
    })
}

/// A peer at a fresh address that reads the client's OI, then hands the
/// connection and the OI's sequence number to `then`.
fn peer_after_oi(then: impl FnOnce(std::net::TcpStream, u16) + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut oi = [0u8; 8];
        std::io::Read::read_exact(&mut stream, &mut oi).unwrap();
        then(stream, u16::from_be_bytes([oi[6], oi[7]]));
    });
    addr
}

/// The one line `client` fails with against a peer that answers its OI with
/// `reply`, and the peer's address.
fn failure_against(client: &str, reply: &'static [u8]) -> (String, String) {
    let addr = fake_peer(Some(reply));
    let mut p = Proc::spawn(client, &[&addr]);
    let line = assert_fails_with_one_line(&mut p);
    (addr, line)
}

#[test]
fn refused_pairing_names_the_cause() {
    let server = Server::start(&[]);
    let (_ex, _) = server.exhibitor();
    let mut unknown = Proc::spawn("emitter", &[&server.target(), "4100"]);
    assert_eq!(
        assert_fails_with_one_line(&mut unknown),
        "emitter: exhibitor 4100 is not connected or is already paired with another emitter"
    );
    let (_first, _) = server.emitter(Some(4096));
    let mut second = Proc::spawn("emitter", &[&server.target(), "4096"]);
    assert_eq!(
        assert_fails_with_one_line(&mut second),
        "emitter: exhibitor 4096 is not connected or is already paired with another emitter"
    );
}

#[test]
fn a_peer_that_does_not_speak_the_protocol_is_named_with_what_it_sent() {
    for client in ["emitter", "exhibitor"] {
        let (addr, line) = failure_against(client, b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(
            line,
            format!(
                "{client}: {addr} does not speak this protocol (it sent: `HTTP/1.1 400 Bad \
                 Request…`)"
            )
        );
    }
    // Control bytes in what it sent are escaped, never written raw.
    let (addr, line) = failure_against("exhibitor", b"\x1b[2J\x07junk");
    assert_eq!(
        line,
        format!("exhibitor: {addr} does not speak this protocol (it sent: `\\x1b[2J\\x07junk`)")
    );
}

#[test]
fn a_peer_that_closes_without_answering_is_named() {
    let (addr, line) = failure_against("emitter", b"");
    assert_eq!(
        line,
        format!(
            "emitter: {addr} closed the connection without answering OI — is it an evchat server?"
        )
    );
}

#[test]
fn no_answer_to_oi_within_10_s_is_named() {
    let addr = fake_peer(None);
    let mut p = Proc::spawn("exhibitor", &[&addr]);
    // The client's own 10 s limit, plus room for a slow machine.
    let line = p
        .stderr
        .next_within(std::time::Duration::from_secs(20))
        .expect("an error line");
    assert_eq!(
        line,
        format!(
            "exhibitor: no answer to OI from {addr} within 10 s — is an evchat server listening \
             there?"
        )
    );
    assert_exit(&mut p, 1);
}

#[test]
fn exhausted_ids_are_named() {
    // ERRO(65535, 0, 0): what the server answers when no id is free.
    const ERRO: &[u8] = &[0, 2, 0xff, 0xff, 0, 0, 0, 0];
    // The same ERRO refuses a plain OI on a server that admits signed-in
    // or TLS clients only: the sentence names those causes too.
    let others = |addr: &str| {
        format!(
            ", or the server admits signed-in clients only (server --auth: evchat chat --user \
             NAME signs in) or TLS ones only (try tls://{addr})"
        )
    };
    let addr = fake_peer(Some(ERRO));
    let mut ex = Proc::spawn("exhibitor", &[&addr]);
    assert_eq!(
        assert_fails_with_one_line(&mut ex),
        format!(
            "exhibitor: the server refused the exhibitor: all exhibitor ids (4096-8191) are in \
             use{}",
            others(&addr)
        )
    );
    let addr = fake_peer(Some(ERRO));
    let mut em = Proc::spawn("emitter", &[&addr]);
    assert_eq!(
        assert_fails_with_one_line(&mut em),
        format!(
            "emitter: the server refused the emitter: all emitter ids (1-4095) are in use{}",
            others(&addr)
        )
    );
}

#[test]
fn connection_refused_is_named() {
    let unused = ReservedPort::new();
    let addr = unused.target();
    let mut em = Proc::spawn("emitter", &[&addr]);
    assert_eq!(
        assert_fails_with_one_line(&mut em),
        format!(
            "emitter: cannot connect to {addr}: nothing is listening there (connection \
             refused) — is the server running?"
        )
    );
}

/// A port another program holds, and an address that is not this
/// machine's, refuse start with what to do after the system's words.
#[test]
fn a_server_that_cannot_listen_says_what_to_do() {
    let first = Server::start(&[]);
    let port = first.addr.port().to_string();
    let mut second = Proc::spawn("server", &[&port]);
    assert_eq!(
        assert_fails_with_one_line(&mut second),
        format!(
            "server: cannot listen on 127.0.0.1:{port}: Address already in use (os error 98); \
             another program (another server?) listens on port {port}: stop it, or give another \
             port"
        )
    );
    // 203.0.113.77 is in TEST-NET-3 (RFC 5737): no machine's own address.
    let mut elsewhere = Proc::spawn("server", &["0", "--bind", "203.0.113.77"]);
    assert_eq!(
        assert_fails_with_one_line(&mut elsewhere),
        "server: cannot listen on 203.0.113.77:0: Cannot assign requested address (os error 99); \
         203.0.113.77 is not an address of this machine: give --bind one of its addresses, or \
         0.0.0.0 (or ::) for all of them"
    );
}

/// The page's address pasted where HOST:PORT goes is named as what it is,
/// a usage error before any connection (it used to fail a name lookup of
/// "http").
#[test]
fn a_web_address_or_another_scheme_is_refused_with_what_to_give() {
    let unused = ReservedPort::new();
    let addr = unused.target();
    for (program, given) in [
        ("emitter", format!("http://{addr}/")),
        ("exhibitor", format!("wss://{addr}/ws")),
    ] {
        let mut p = Proc::spawn(program, &[&given]);
        assert_eq!(
            fails_as_usage_with_one_line(&mut p),
            format!(
                "{program}: '{given}' is a web address, for a browser; give HOST:PORT, or \
                 tls://HOST:PORT for TLS"
            )
        );
    }
    let given = format!("tcp://{addr}");
    let mut chat = Proc::spawn("evchat", &["chat", &given]);
    assert_eq!(
        fails_as_usage_with_one_line(&mut chat),
        format!(
            "evchat chat: '{given}' has a scheme other than tls://; give HOST:PORT, or \
             tls://HOST:PORT for TLS"
        )
    );
}

#[test]
fn exhibitor_escapes_bidi_and_invisible_formatting_characters() {
    let server = Server::start(&[]);
    let (ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(None);
    send_bytes(
        &mut em,
        "(4096) a\u{200e}b\u{200f}c\u{202a}\u{202e}d\u{2066}\u{2069}e\n".as_bytes(),
    );
    ex.stdout
        .expect_line(r"Message from 1: a\u{200e}b\u{200f}c\u{202a}\u{202e}d\u{2066}\u{2069}e");
}

#[test]
fn over_long_lines_are_rejected_with_their_size_and_empty_messages_pass() {
    let server = Server::start(&[]);
    let (ex, _) = server.exhibitor();
    let (mut em, _) = server.emitter(Some(4096));
    let huge = format!("(4096) {}", "x".repeat(70_000));
    let long = format!("(4096) {}", "y".repeat(65_536));
    send_lines(&mut em, &[&huge, &long, "", "(4096)", "(4096) after"]);
    em.stderr.expect_line(
        "emitter: line 1: line is 70007 bytes; a message carries at most 65535 bytes of text; \
         nothing sent",
    );
    em.stderr.expect_line(
        "emitter: line 2: text is 65536 bytes; a message carries at most 65535; nothing sent",
    );
    em.stderr
        .expect_line("emitter: line 3: expected '(ID) text', '(CREQ) ID' or '(FLW)'; nothing sent");
    ex.stdout.expect_line("Message from 1: ");
    ex.stdout.expect_line("Message from 1: after");
    em.stdout.expect_line("delivered #1");
    em.stdout.expect_line("delivered #2");
}

#[test]
fn server_listens_on_loopback_by_default_and_takes_a_host_name() {
    let server = Proc::spawn("server", &["0"]);
    let addr = listening_addr(&server.stdout);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");

    let named = Proc::spawn("server", &["0", "--bind", "localhost"]);
    let addr = listening_addr(&named.stdout);
    assert!(addr.ip().is_loopback(), "{addr}");
}

#[test]
fn server_refuses_zero_limits_with_the_allowed_range() {
    for flag in ["--ack-timeout", "--handshake-timeout", "--drain-timeout"] {
        let mut server = Proc::spawn("server", &["0", "--bind", "127.0.0.1", flag, "0"]);
        assert_exit(&mut server, 2);
        assert_eq!(
            server.stderr.expect(),
            format!(
                "error: invalid value '0' for '{flag} <SECS>': 0 is not allowed: the allowed range \
                 is above 0 seconds (fractions such as 0.5 work)"
            )
        );
        assert_eq!(server.stdout.rest(), Vec::<String>::new());
    }
    let mut server = Proc::spawn("server", &["0", "--max-queue", "0"]);
    assert_exit(&mut server, 2);
    assert_eq!(
        server.stderr.expect(),
        format!(
            "error: invalid value '0' for '--max-queue <BYTES>': 0 is not allowed: the allowed \
             range is 1..={} bytes",
            usize::MAX
        )
    );
    // Fractions are still fine.
    let ok = Proc::spawn("server", &["0", "--ack-timeout", "0.5"]);
    assert!(ok.stdout.expect().starts_with("listening on 127.0.0.1:"));
}

#[test]
fn server_refuses_a_spin_budget_over_10_ms_and_takes_zero() {
    let mut server = Proc::spawn("server", &["0", "--spin-us", "10001"]);
    assert_exit(&mut server, 2);
    assert_eq!(
        server.stderr.expect(),
        "error: invalid value '10001' for '--spin-us <MICROS>': 10001 is not in 0..=10000"
    );
    assert_eq!(server.stdout.rest(), Vec::<String>::new());
    let off = Server::start(&["--spin-us", "0"]);
    let line = off.proc.stderr.expect();
    assert!(line.ends_with(" web=true spin=0ns"), "{line:?}");
}

#[test]
fn server_logs_version_address_and_limits_at_start() {
    let server = Server::start(&["--max-queue", "65536", "--ack-timeout", "2.5"]);
    let line = server.proc.stderr.expect();
    let want = format!(
        "INFO server: evchat server starting version=\"{}\" addr={} ack_timeout=2.5s \
         handshake_timeout=10s drain_timeout=3s max_queue=65536 max_inflight=1024 web=true \
         spin=100µs",
        env!("CARGO_PKG_VERSION"),
        server.addr
    );
    assert!(line.ends_with(&want), "{line:?}\nwant the end: {want:?}");
}

#[test]
fn every_binary_explains_itself_with_examples() {
    for name in ["server", "emitter", "exhibitor"] {
        let mut p = Proc::spawn(name, &["--help"]);
        assert_exit(&mut p, 0);
        let lines = p.stdout.rest();
        let examples = lines
            .iter()
            .position(|l| l == "Examples:")
            .unwrap_or_else(|| panic!("{name} --help has no examples: {lines:?}"));
        let after: Vec<_> = lines[examples + 1..].iter().collect();
        assert!(
            (2..=3).contains(&after.len())
                && after
                    .iter()
                    .all(|l| l.starts_with(&format!("  {name} ")) || l.starts_with("  printf ")),
            "{name}: {after:?}"
        );
    }
}

/// Logs and the line editor on a real terminal, through a pseudo-terminal.
mod terminal {
    use super::*;
    use rexpect::session::spawn_command;

    #[test]
    fn server_log_is_coloured_on_a_terminal_unless_no_color_is_set() {
        for (no_color, coloured) in [(Some("1"), false), (None, true)] {
            let mut command = std::process::Command::new(bin("server"));
            command.args(["0", "--bind", "127.0.0.1"]);
            match no_color {
                Some(value) => command.env("NO_COLOR", value),
                None => command.env_remove("NO_COLOR"),
            };
            let mut server = spawn_command(command, Some(TIMEOUT.as_millis() as u64)).expect("pty");
            let before = server.exp_string("listening on ").unwrap();
            assert!(before.contains("evchat server starting"), "{before:?}");
            assert_eq!(before.contains('\x1b'), coloured, "{before:?}");
        }
    }

    #[test]
    fn emitter_edits_lines_on_a_terminal() {
        let server = Server::start(&[]);
        let (ex, _) = server.exhibitor();
        let mut command = std::process::Command::new(bin("emitter"));
        command
            .args([&server.target(), "4096"])
            .env("TERM", "xterm");
        let mut em = spawn_command(command, Some(TIMEOUT.as_millis() as u64)).expect("pty");
        em.exp_string("emitter 1 paired with exhibitor 4096")
            .unwrap();
        // "(4096) helo", left twice, "l", then Enter.
        em.send("(4096) helo\x1b[D\x1b[Dl\r").unwrap();
        em.flush().unwrap();
        ex.stdout.expect_line("Message from 1: hello");
        em.exp_string("delivered #1").unwrap();
        // A pasted over-long text (bracketed paste, as a terminal sends a
        // paste) meets the same size rule as piped input.
        em.send(&format!(
            "(4096) \x1b[200~{}\x1b[201~\r",
            "z".repeat(65_536)
        ))
        .unwrap();
        em.flush().unwrap();
        em.exp_string(
            "emitter: line 2: text is 65536 bytes; a message carries at most 65535; nothing sent",
        )
        .unwrap();
        em.send_control('d').unwrap();
        em.exp_eof().unwrap();
        ex.stdout.expect_line("closed by server");
    }
}

#[test]
fn exhibitor_that_cannot_print_leaves_and_waits_for_its_flw_ok_only_so_long() {
    // A server that registers the exhibitor, then never answers its FLW.
    let (sent, seen) = std::sync::mpsc::channel();
    let addr = registering_peer(4096, move |mut stream| {
        let mut frame = [0u8; 8];
        std::io::Read::read_exact(&mut stream, &mut frame).unwrap();
        sent.send(frame).unwrap();
        // Holds the connection open: the read ends when the client exits.
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 1]);
    });
    // Its standard output is a pipe nobody reads: printing fails at once.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut child = std::process::Command::new(bin("exhibitor"))
        .arg(&addr)
        .stdin(std::process::Stdio::null())
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let flw = seen.recv_timeout(TIMEOUT).expect("no frame after OI");
    assert_eq!(
        flw[..6],
        hdr(Kind::Flw, 4096, SERVER_ID, 0)[..6],
        "FLW expected"
    );
    // The wait for the OK is bounded: it exits without one.
    let status = wait_for_exit(&mut child, "the exhibitor waiting for the OK to its FLW");
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_ok_to_oi_that_is_not_the_servers_answer_is_refused() {
    // OK to OI from a client's id, OK from the server to another number,
    // and ERRO from a client's id (only the server refuses an OI).
    let wrong_origin = hdr(Kind::Ok, 7, 4096, 0);
    let wrong_seq = hdr(Kind::Ok, SERVER_ID, 4096, 5);
    let erro_from_a_client = hdr(Kind::Erro, 7, 0, 0);
    for (reply, shown) in [
        (wrong_origin, r"\x00\x01\x00\x07\x10\x00\x00\x00"),
        (wrong_seq, r"\x00\x01\xff\xff\x10\x00\x00\x05"),
        (erro_from_a_client, r"\x00\x02\x00\x07\x00\x00\x00\x00"),
    ] {
        let (addr, line) = failure_against("exhibitor", Vec::leak(reply));
        assert_eq!(
            line,
            format!("exhibitor: {addr} does not speak this protocol (it sent: `{shown}`)")
        );
    }
}

#[test]
fn a_frame_longer_than_the_shown_prefix_is_cut_with_an_ellipsis() {
    // A whole frame, but not an answer to OI: its first 24 bytes are shown.
    let reply = msg(1, 4096, 0, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ");
    let (addr, line) = failure_against("exhibitor", Vec::leak(reply));
    assert_eq!(
        line,
        format!(
            "exhibitor: {addr} does not speak this protocol (it sent: \
             `\\x00\\x05\\x00\\x01\\x10\\x00\\x00\\x00\\x00\\x1aABCDEFGHIJKLMN…`)"
        )
    );
}

#[test]
fn a_reset_instead_of_an_answer_to_oi_is_named_as_such() {
    // Closing with a zero linger resets the connection.
    let addr = peer_after_oi(|stream, _| {
        socket2::SockRef::from(&stream)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
    });
    let mut p = Proc::spawn("exhibitor", &[&addr]);
    assert_eq!(
        assert_fails_with_one_line(&mut p),
        format!(
            "exhibitor: registration with {addr} failed: Connection reset by peer (os error 104)"
        )
    );
}

#[test]
fn a_foreign_reply_of_exactly_the_shown_prefix_has_no_ellipsis() {
    // 24 bytes, written at once: all of it is shown, and nothing more came.
    let (addr, line) = failure_against("emitter", b"HTTP/1.1 400 Bad Request");
    assert_eq!(
        line,
        format!(
            "emitter: {addr} does not speak this protocol (it sent: `HTTP/1.1 400 Bad Request`)"
        )
    );
}

/// A usage error (status 2), found before connecting: no port, a port
/// that is not a number, no host.
#[test]
fn an_address_without_a_port_is_explained() {
    for client in ["emitter", "exhibitor"] {
        for given in ["nonsense", "localhost:5000x", ":5000"] {
            let mut p = Proc::spawn(client, &[given]);
            assert_exit(&mut p, 2);
            assert_eq!(p.stdout.rest(), Vec::<String>::new());
            assert_eq!(
                p.stderr.rest(),
                [format!(
                    "{client}: '{given}' is not HOST:PORT (a host name or address, then a port: \
                     127.0.0.1:5000)"
                )]
            );
        }
    }
}

/// A server that answers OI with `id`, then hands the connection to `then`.
fn registering_peer(id: u16, then: impl FnOnce(std::net::TcpStream) + Send + 'static) -> String {
    peer_after_oi(move |mut stream, seq| {
        stream
            .write_all(&hdr(Kind::Ok, SERVER_ID, id, seq))
            .unwrap();
        then(stream);
    })
}

#[test]
fn clients_say_when_the_server_goes_away_without_flw() {
    for (client, id) in [("emitter", 1), ("exhibitor", 4096)] {
        let addr = registering_peer(id, drop);
        let mut p = Proc::spawn(client, &[&addr]);
        p.stdout.expect_line(&format!("{client} {id}"));
        assert_exit(&mut p, 1);
        assert_eq!(
            p.stderr.rest(),
            [format!(
                "{client}: the server went away (connection closed without FLW)"
            )]
        );
    }
}

#[test]
fn an_emitter_whose_flw_is_never_answered_says_so_and_leaves() {
    let addr = registering_peer(1, |mut stream| {
        // Reads the FLW and holds the connection without answering.
        let mut flw = [0u8; 8];
        std::io::Read::read_exact(&mut stream, &mut flw).unwrap();
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 1]);
    });
    let mut p = Proc::spawn("emitter", &[&addr]);
    p.stdout.expect_line("emitter 1");
    send_lines(&mut p, &["(FLW)"]);
    assert_exit(&mut p, 0);
    assert_eq!(p.stderr.rest(), ["emitter: no OK to FLW from the server"]);
}

#[test]
fn an_exhibitor_ignores_an_ok_that_is_not_for_its_flw() {
    let addr = registering_peer(4096, |mut stream| {
        stream
            .write_all(&hdr(Kind::Ok, SERVER_ID, 4096, 5))
            .unwrap();
        stream.write_all(&msg(1, 4096, 1, b"still here")).unwrap();
        let _ = std::io::Read::read(&mut stream, &mut [0u8; 64]);
    });
    let p = Proc::spawn("exhibitor", &[&addr]);
    p.stdout.expect_line("exhibitor 4096");
    p.stdout.expect_line("Message from 1: still here");
    let warning = p.stderr.expect();
    assert_eq!(
        warning,
        "exhibitor: ignoring unexpected OK(origin 65535, dest 4096, seq 5)"
    );
}

/// Runs a server with `flags` until it has refused one frame before OI
/// (a warning) and shut down; returns its log lines.
fn server_log_with(flags: &[&str]) -> Vec<String> {
    let mut server = Server::start(flags);
    let mut raw = server.raw();
    raw.send(&hdr(Kind::Creq, 1, 0, 1));
    assert_eq!(raw.expect_frame(), Frame::bare(Kind::Erro, SERVER_ID, 0, 1));
    raw.expect_closed();
    server.proc.signal(libc::SIGTERM);
    assert!(server.proc.wait().success());
    server.proc.stderr.rest()
}

#[test]
fn server_log_level_follows_v_and_q() {
    let has = |lines: &[String], level: &str| lines.iter().any(|l| l.contains(level));
    let quiet = server_log_with(&["-q"]);
    assert!(
        quiet
            .iter()
            .any(|l| l.contains(" WARN ") && l.contains("frame before OI")),
        "{quiet:#?}"
    );
    assert!(
        !has(&quiet, " INFO ") && !has(&quiet, " DEBUG "),
        "{quiet:#?}"
    );
    let quieter = server_log_with(&["-qq"]);
    assert_eq!(quieter, Vec::<String>::new());
    let verbose = server_log_with(&["-vv"]);
    assert!(
        has(&verbose, " INFO ") && has(&verbose, " DEBUG "),
        "{verbose:#?}"
    );
}

/// The server's log lines when started after the shell's `limits` (ulimit).
fn server_log_under_ulimit(limits: &str) -> Vec<String> {
    let script = format!("{limits} && exec {} 0 --bind 127.0.0.1", bin("server"));
    let mut server = Proc::spawn_with("sh", &["-c", &script]);
    let first = server.stdout.expect();
    assert!(first.starts_with("listening on "), "{first}");
    server.signal(libc::SIGTERM);
    assert!(server.wait().success());
    server.stderr.rest()
}

#[test]
fn server_raises_its_open_file_limit_to_the_hard_limit() {
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct passed.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    let warnings = |lines: Vec<String>| -> Vec<String> {
        lines.into_iter().filter(|l| l.contains(" WARN ")).collect()
    };
    // A soft limit of 256, as some systems start with: raised to the hard
    // limit, which here allows every id (or the warning says it does not).
    let raised = warnings(server_log_under_ulimit("ulimit -Sn 256"));
    if hard.rlim_max < 8192 + 16 {
        assert_eq!(raised.len(), 1, "{raised:#?}");
        // The cases below lower the hard limit, which needs no privilege;
        // raising it would.
        return;
    }
    assert_eq!(raised, Vec::<String>::new());
    // Exactly enough: 8191 clients and 16 descriptors to spare.
    let exact = warnings(server_log_under_ulimit("ulimit -Sn 256 && ulimit -Hn 8208"));
    assert_eq!(exact, Vec::<String>::new());
    // One short: raised to it, and said so.
    let low = warnings(server_log_under_ulimit("ulimit -Sn 256 && ulimit -Hn 8207"));
    assert_eq!(low.len(), 1, "{low:#?}");
    assert!(
        low[0].ends_with("open-file limit is below what 8191 clients need limit=8207"),
        "{low:#?}"
    );
}
