//! The identity extension (PROTOCOL.md, "Extension: identity") against the
//! real `server` binary, byte for byte over raw TCP: HELLO and every
//! HELLOACK code, names without accounts, sign-ins with `--auth` (token
//! secrets, so no argon2 cost), the failure budget, roles, and what a plain
//! client sees (nothing new).

use crate::util::*;
use evchat::auth::{Account, Accounts, Credential, Name, Roles, Secret};
use evchat::proto::*;
use std::time::Duration;

const S: ClientId = SERVER_ID;

pub(crate) fn header(kind: u16, origin: u16, dest: u16, seq: u16) -> Vec<u8> {
    [kind, origin, dest, seq]
        .iter()
        .flat_map(|f| f.to_be_bytes())
        .collect()
}

/// HELLO(origin 0, dest 65535, seq 0): version 1, `name`, `secret`.
pub(crate) fn hello(name: &[u8], secret: &[u8]) -> Vec<u8> {
    hello_v(1, name, secret)
}

fn hello_v(version: u8, name: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut wire = header(8, 0, S, 0);
    wire.extend_from_slice(&((4 + name.len() + secret.len()) as u16).to_be_bytes()); // L
    wire.push(version);
    wire.push(name.len() as u8); // NL
    wire.extend_from_slice(name);
    wire.extend_from_slice(&(secret.len() as u16).to_be_bytes()); // SL
    wire.extend_from_slice(secret);
    wire
}

/// HELLOACK(65535, 0, seq 0) with `code`, version 1, `roles`, `name`.
pub(crate) fn helloack(code: u8, roles: u8, name: &[u8]) -> Vec<u8> {
    let mut wire = header(9, S, 0, 0);
    wire.extend_from_slice(&((4 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&[code, 1, roles, name.len() as u8]);
    wire.extend_from_slice(name);
    wire
}

fn oi(origin: ClientId) -> Vec<u8> {
    header(3, origin, S, 0)
}

fn ok(dest: ClientId, seq: u16) -> Vec<u8> {
    header(1, S, dest, seq)
}

fn erro(dest: ClientId, seq: u16) -> Vec<u8> {
    header(2, S, dest, seq)
}

fn msg(origin: ClientId, dest: ClientId, seq: u16, text: &[u8]) -> Vec<u8> {
    let mut wire = header(5, origin, dest, seq);
    wire.extend_from_slice(&(text.len() as u16).to_be_bytes());
    wire.extend_from_slice(text);
    wire
}

/// HELLO, its HELLOACK as expected, then OI; returns the id.
pub(crate) fn opt_in(raw: &mut Raw, hello_bytes: &[u8], ack: &[u8], origin: ClientId) -> ClientId {
    raw.send(hello_bytes);
    expect_exact(raw, ack);
    if origin == 0 {
        raw.identify_exhibitor()
    } else {
        raw.identify_emitter(origin)
    }
}

/// The roles without accounts: view, emit, broadcast.
pub(crate) const PLAIN: u8 = 7;

/// A new client of a server without accounts that claimed `name` and
/// registered with `origin` (0: an exhibitor), with the id it got.
fn claimed(server: &Server, name: &[u8], origin: ClientId) -> (Raw, ClientId) {
    let mut raw = server.raw();
    let id = opt_in(
        &mut raw,
        &hello(name, b""),
        &helloack(0, PLAIN, name),
        origin,
    );
    (raw, id)
}

// ---- without accounts --------------------------------------------------

#[test]
fn without_auth_a_hello_claims_a_name() {
    let server = Server::start(&[]);
    let mut raw = server.raw();
    raw.send(&hello(b"alice", b""));
    expect_exact(&mut raw, &helloack(0, PLAIN, b"alice"));
    raw.send(&oi(0));
    expect_exact(&mut raw, &ok(4096, 0));
    // NL = 0: opted in without a name.
    let mut anon = server.raw();
    anon.send(&hello(b"", b""));
    expect_exact(&mut anon, &helloack(0, PLAIN, b""));
}

#[test]
fn names_are_unique_ignoring_case_while_held() {
    let server = Server::start(&[]);
    let mut first = server.raw();
    opt_in(
        &mut first,
        &hello(b"Alice", b""),
        &helloack(0, PLAIN, b"Alice"),
        0,
    );
    let mut second = server.raw();
    second.send(&hello(b"aLICE", b""));
    // Code 3, connection kept: another HELLO may follow.
    expect_exact(&mut second, &helloack(3, 0, b""));
    second.send(&hello(b"bob", b""));
    expect_exact(&mut second, &helloack(0, PLAIN, b"bob"));
    // Once the holder is gone, the name is free again.
    drop(first);
    let mut third = server.raw();
    wait_until("the name is released", || {
        third.send(&hello(b"ALICE", b""));
        let got = third.expect_bytes(14);
        if got == helloack(3, 0, b"") {
            return false;
        }
        assert_eq!(&got[..], &helloack(0, PLAIN, b"ALICE")[..14]);
        expect_exact(&mut third, b"ALICE");
        true
    });
}

#[test]
fn bad_names_get_code_4_and_keep_the_connection() {
    let server = Server::start(&[]);
    let mut raw = server.raw();
    for name in [
        &b"1abc"[..],
        b"al ice",
        "alice\u{202e}txt".as_bytes(), // a bidi override
        b"ali\xffce",                  // not UTF-8
        &[b'a'; 25],                   // one over the rule's 24
        &[b'a'; 64],                   // the frame's limit, still no name
    ] {
        raw.send(&hello(name, b""));
        expect_exact(&mut raw, &helloack(4, 0, b""));
    }
    raw.send(&hello(b"zed", b""));
    expect_exact(&mut raw, &helloack(0, PLAIN, b"zed"));
}

#[test]
fn a_secret_without_accounts_gets_code_7_and_keeps_the_connection() {
    let server = Server::start(&[]);
    let mut raw = server.raw();
    raw.send(&hello(b"alice", b"pw"));
    expect_exact(&mut raw, &helloack(7, 0, b""));
    raw.send(&hello(b"alice", b""));
    expect_exact(&mut raw, &helloack(0, PLAIN, b"alice"));
}

#[test]
fn a_hello_split_at_every_byte_is_read_whole() {
    let server = Server::start(&[]);
    let name = b"splitter";
    let wire = hello(name, b"");
    for cut in 1..wire.len() {
        let mut raw = server.raw();
        raw.send(&wire[..cut]);
        // Nothing comes back before the HELLO is whole.
        raw.expect_silence();
        raw.send(&wire[cut..]);
        expect_exact(&mut raw, &helloack(0, PLAIN, name));
        raw.send(&oi(0));
        let ok = raw.expect_frame();
        assert_eq!(ok.kind, Kind::Ok, "cut at {cut}");
        // Gone before the next one claims the same name.
        raw.send(&header(4, ok.dest, S, 1));
        expect_exact(&mut raw, &ok_from_flw(ok.dest));
        raw.expect_closed();
    }
}

fn ok_from_flw(id: ClientId) -> Vec<u8> {
    ok(id, 1)
}

#[test]
fn malformed_hellos_get_code_8_and_close() {
    let server = Server::start(&[]);
    // L = 325, one over the limit: refused from the first 10 bytes alone.
    let mut raw = server.raw();
    let mut over = header(8, 0, S, 0);
    over.extend_from_slice(&325u16.to_be_bytes());
    raw.send(&over);
    expect_exact(&mut raw, &helloack(8, 0, b""));
    raw.expect_closed();
    // NL = 65 within an L that would hold it.
    let mut raw = server.raw();
    raw.send(&hello(&[b'a'; 65], b""));
    expect_exact(&mut raw, &helloack(8, 0, b""));
    raw.expect_closed();
    // SL = 257.
    let mut raw = server.raw();
    raw.send(&hello(b"a", &[b's'; 257]));
    expect_exact(&mut raw, &helloack(8, 0, b""));
    raw.expect_closed();
    // Fields that do not add up to L (NL says 6, L says 11).
    let mut raw = server.raw();
    let mut wire = hello(b"alice", b"pw");
    wire[11] = 6;
    raw.send(&wire);
    expect_exact(&mut raw, &helloack(8, 0, b""));
    raw.expect_closed();
}

#[test]
fn an_unsupported_version_gets_code_9_and_close() {
    let server = Server::start(&[]);
    let mut raw = server.raw();
    raw.send(&hello_v(2, b"alice", b""));
    expect_exact(&mut raw, &helloack(9, 0, b""));
    raw.expect_closed();
}

#[test]
fn a_second_hello_after_acceptance_gets_code_8_and_close() {
    let server = Server::start(&[]);
    let mut raw = server.raw();
    raw.send(&hello(b"alice", b""));
    expect_exact(&mut raw, &helloack(0, PLAIN, b"alice"));
    raw.send(&hello(b"bob", b""));
    expect_exact(&mut raw, &helloack(8, 0, b""));
    raw.expect_closed();
}

#[test]
fn a_hello_after_oi_is_refused_like_a_second_oi() {
    let server = Server::start(&[]);
    // Opted in: ERRO(65535, id, seq), kept.
    let (mut raw, id) = claimed(&server, b"alice", 0);
    raw.send(&hello(b"alice", b""));
    expect_exact(&mut raw, &erro(id, 0));
    raw.send(&header(4, id, S, 1));
    expect_exact(&mut raw, &ok(id, 1));
    // A plain client never opted in: an unknown type (rule 7), closed.
    let mut plain = server.raw();
    let id = plain.identify_exhibitor();
    plain.send(&hello(b"bob", b""));
    expect_exact(&mut plain, &erro(id, 0));
    plain.expect_closed();
}

#[test]
fn plain_clients_are_unchanged_and_never_see_an_extension_frame() {
    let server = Server::start(&[]);
    // An opted-in emitter next to plain ones changes nothing they see.
    let (mut named, em) = claimed(&server, b"alice", 1);
    let mut ex = server.raw();
    let ex_id = ex.identify_exhibitor();
    let mut plain_em = server.raw();
    let plain_id = plain_em.identify_emitter(1);
    named.send(&msg(em, 0, 1, b"hi"));
    expect_exact(&mut ex, &msg(em, 0, 1, b"hi"));
    ex.send(&header(1, ex_id, em, 1));
    expect_exact(&mut named, &ok(em, 1));
    plain_em.send(&msg(plain_id, ex_id, 1, b"yo"));
    expect_exact(&mut ex, &msg(plain_id, ex_id, 1, b"yo"));
    ex.send(&header(1, ex_id, plain_id, 1));
    expect_exact(&mut plain_em, &ok(plain_id, 1));
    ex.expect_silence();
}

// ---- with accounts -----------------------------------------------------

/// A token for `name`: `evt_` and 64 hex digits, varied by the name.
pub(crate) fn token(name: &str) -> Credential {
    let digits: String = (0..64)
        .map(|i| {
            let b = name.as_bytes()[i % name.len()] as usize + i;
            char::from_digit((b % 16) as u32, 16).unwrap()
        })
        .collect();
    Credential::new(format!("evt_{digits}").into_bytes())
}

/// An accounts file (mode 0600) with these accounts, token secrets.
pub(crate) fn accounts_file(dir: &TempDir, accounts: &[(&str, Roles)]) -> String {
    let mut all = Accounts::default();
    for (name, roles) in accounts {
        all.upsert(Account {
            name: Name::new(name).unwrap(),
            roles: *roles,
            secret: Secret::for_token(&token(name)),
            expires: None,
        });
    }
    let path = dir.path().join("accounts");
    all.save(&path).unwrap();
    path.to_str().unwrap().to_string()
}

pub(crate) fn roles(list: &str) -> Roles {
    Roles::parse(list).unwrap()
}

fn auth_server(dir: &TempDir, extra: &[&str]) -> Server {
    let file = accounts_file(
        dir,
        &[
            ("Alice", roles("view,emit,broadcast")),
            ("viewer", roles("view")),
            ("talker", roles("view,emit")),
            ("boss", roles("view,emit,broadcast,admin")),
        ],
    );
    let mut args = vec!["--auth", file.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn sign_in(name: &str) -> Vec<u8> {
    hello(name.as_bytes(), token(name).as_bytes())
}

#[test]
fn with_auth_a_right_token_signs_in_with_the_accounts_spelling_and_roles() {
    let dir = TempDir::new("ident-signin");
    let server = auth_server(&dir, &[]);
    let mut raw = server.raw();
    // Any case names the account; the answer spells it as the file does.
    raw.send(&hello(b"alice", token("Alice").as_bytes()));
    expect_exact(&mut raw, &helloack(0, 7, b"Alice"));
    raw.send(&oi(0));
    expect_exact(&mut raw, &ok(4096, 0));
    // One account, several sessions.
    let mut again = server.raw();
    again.send(&sign_in("Alice"));
    expect_exact(&mut again, &helloack(0, 7, b"Alice"));
    let mut boss = server.raw();
    boss.send(&sign_in("boss"));
    expect_exact(&mut boss, &helloack(0, 15, b"boss"));
}

#[test]
fn with_auth_refusals_get_one_answer_and_close() {
    let dir = TempDir::new("ident-refused");
    let server = auth_server(&dir, &[]);
    for wire in [
        hello(b"Alice", token("boss").as_bytes()), // wrong secret
        hello(b"nobody", token("nobody").as_bytes()), // no such account
        hello(b"Alice", b"a password"),            // wrong password
    ] {
        let mut raw = server.raw();
        raw.send(&wire);
        expect_exact(&mut raw, &helloack(2, 0, b""));
        raw.expect_closed();
    }
    // No secret: code 1, closed.
    let mut raw = server.raw();
    raw.send(&hello(b"Alice", b""));
    expect_exact(&mut raw, &helloack(1, 0, b""));
    raw.expect_closed();
    // A bad name is code 4, kept.
    let mut raw = server.raw();
    raw.send(&hello("Al\u{202e}ice".as_bytes(), b"x"));
    expect_exact(&mut raw, &helloack(4, 0, b""));
    raw.send(&sign_in("Alice"));
    expect_exact(&mut raw, &helloack(0, 7, b"Alice"));
}

#[test]
fn with_auth_a_plain_oi_is_refused_and_logged_naming_auth() {
    let dir = TempDir::new("ident-plain");
    let server = auth_server(&dir, &[]);
    let mut raw = server.raw();
    raw.send(&oi(0));
    expect_exact(&mut raw, &erro(0, 0));
    raw.expect_closed();
    let (_, line) =
        server
            .proc
            .stderr
            .skip_until("the refusal's log line", Duration::from_secs(10), |l| {
                l.contains("OI refused") && l.contains("--auth")
            });
    assert!(!line.contains("evt_"), "{line}");
}

#[test]
fn too_many_refusals_from_one_address_get_code_5_unchecked() {
    let dir = TempDir::new("ident-budget");
    let server = auth_server(&dir, &["--auth-failures", "2"]);
    for _ in 0..2 {
        let mut raw = server.raw();
        raw.send(&hello(b"Alice", b"wrong"));
        expect_exact(&mut raw, &helloack(2, 0, b""));
        raw.expect_closed();
    }
    // Even the right secret is not checked now.
    let mut raw = server.raw();
    raw.send(&sign_in("Alice"));
    expect_exact(&mut raw, &helloack(5, 0, b""));
    raw.expect_closed();
}

#[test]
fn roles_decide_what_a_session_may_do() {
    let dir = TempDir::new("ident-roles");
    let server = auth_server(&dir, &[]);
    // view only: no emitter.
    let mut viewer = server.raw();
    viewer.send(&sign_in("viewer"));
    expect_exact(&mut viewer, &helloack(0, 1, b"viewer"));
    viewer.send(&oi(1));
    expect_exact(&mut viewer, &erro(0, 0));
    viewer.expect_closed();
    // An exhibitor, and an emitter without broadcast paired with it.
    let mut ex = server.raw();
    let ex_id = opt_in(&mut ex, &sign_in("talker"), &helloack(0, 3, b"talker"), 0);
    let mut em = server.raw();
    let em_id = opt_in(
        &mut em,
        &sign_in("talker"),
        &helloack(0, 3, b"talker"),
        ex_id,
    );
    // To everyone: ERRO(65535, own id, seq), kept, nothing forwarded.
    em.send(&msg(em_id, 0, 1, b"to all"));
    expect_exact(&mut em, &erro(em_id, 1));
    // To one client: delivered.
    em.send(&msg(em_id, ex_id, 2, b"to you"));
    // (The exhibitor opted in: it is told its emitter's name, the pair's.)
    expect_exact(&mut ex, &who(ex_id, 0, em_id, 3, b"talker"));
    expect_exact(&mut ex, &msg(em_id, ex_id, 2, b"to you"));
    ex.send(&header(1, ex_id, S, 0));
    ex.send(&header(1, ex_id, em_id, 2));
    expect_exact(&mut em, &ok(em_id, 2));
    ex.expect_silence();
    // Pairing with another account's exhibitor is refused as in rule 1.
    let mut other = server.raw();
    other.send(&sign_in("Alice"));
    expect_exact(&mut other, &helloack(0, 7, b"Alice"));
    let mut ex2 = server.raw();
    let ex2_id = opt_in(&mut ex2, &sign_in("talker"), &helloack(0, 3, b"talker"), 0);
    other.send(&oi(ex2_id));
    expect_exact(&mut other, &erro(0, 0));
    other.expect_closed();
}

#[test]
fn a_bad_accounts_file_refuses_start_with_the_loaders_reason() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("ident-badfile");
    let good = accounts_file(&dir, &[("Alice", roles("view"))]);
    let refused = |path: &std::path::Path, want: &str| {
        let mut proc = Proc::spawn("server", &["0", "--auth", path.to_str().unwrap()]);
        assert_eq!(proc.wait().code(), Some(1), "{want}");
        let line = proc.stderr.expect();
        assert!(line.starts_with("server: --auth: "), "{line}");
        assert!(line.contains(want), "want {want:?} in {line}");
        assert!(!line.contains("deadbeef"), "a field's content in {line}");
    };
    // Readable by group and others.
    let open = dir.path().join("open");
    std::fs::copy(&good, &open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(&open, "mode 0644");
    // A symbolic link to a good file.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    refused(&link, "a symbolic link");
    // A bad second line: its number, never its content.
    let bad = dir.path().join("bad");
    let mut text = std::fs::read_to_string(&good).unwrap();
    text.push_str("bob view sha256:deadbeef\n");
    evchat::auth::write_private(&bad, text.as_bytes()).unwrap();
    let lines = text.lines().count();
    refused(&bad, &format!("line {lines}: "));
    // A missing file.
    refused(&dir.path().join("missing"), "missing");
}

#[test]
fn over_a_websocket_hello_is_the_first_message_and_a_refusal_closes_1008() {
    let dir = TempDir::new("ident-ws");
    let server = auth_server(&dir, &[]);
    let mut ws = Ws::connect(server.addr);
    ws.send_binary(&sign_in("Alice"));
    ws.expect_binary_exact(&helloack(0, 7, b"Alice"));
    ws.send_binary(&oi(0));
    ws.expect_binary_exact(&ok(4096, 0));
    let mut refused = Ws::connect(server.addr);
    refused.send_binary(&hello(b"Alice", b"wrong"));
    refused.expect_binary_exact(&helloack(2, 0, b""));
    refused.expect_close(1008);
    // A HELLO with more bytes after it is not one frame.
    let mut two = Ws::connect(server.addr);
    let mut wire = sign_in("Alice");
    wire.extend_from_slice(&oi(0));
    two.send_binary(&wire);
    two.expect_close(1002);
}

// ---- WHO ---------------------------------------------------------------

/// WHO(65535, to, seq): `id` is `name`, with `roles`.
pub(crate) fn who(to: ClientId, seq: u16, id: ClientId, roles: u8, name: &[u8]) -> Vec<u8> {
    let mut wire = header(10, S, to, seq);
    wire.extend_from_slice(&((4 + name.len()) as u16).to_be_bytes());
    wire.extend_from_slice(&id.to_be_bytes());
    wire.extend_from_slice(&[roles, name.len() as u8]);
    wire.extend_from_slice(name);
    wire
}

fn clist(to: ClientId, seq: u16, ids: &[ClientId]) -> Vec<u8> {
    let mut wire = header(7, S, to, seq);
    wire.extend_from_slice(&(ids.len() as u16).to_be_bytes());
    for id in ids {
        wire.extend_from_slice(&id.to_be_bytes());
    }
    wire
}

#[test]
fn an_opted_in_exhibitor_is_told_names_before_messages_and_lists() {
    let server = Server::start(&[]);
    let (mut eve, eve_id) = claimed(&server, b"eve", 0);
    let mut plain_ex = server.raw();
    let plain_ex_id = plain_ex.identify_exhibitor();
    let (mut alice, alice_id) = claimed(&server, b"alice", 1);
    let mut plain_em = server.raw();
    let plain_id = plain_em.identify_emitter(1);

    // The first MSG from alice: WHO first, to eve only.
    let hi = msg(alice_id, 0, 1, b"hi");
    alice.send(&hi);
    expect_exact(&mut eve, &who(eve_id, 0, alice_id, PLAIN, b"alice"));
    expect_exact(&mut eve, &hi);
    eve.send(&header(1, eve_id, S, 0)); // acks the WHO
    eve.send(&header(1, eve_id, alice_id, 1)); // acks the MSG
    expect_exact(&mut plain_ex, &hi);
    plain_ex.send(&header(1, plain_ex_id, alice_id, 1));
    expect_exact(&mut alice, &ok(alice_id, 1));

    // Told once: the next MSG comes alone.
    let again = msg(alice_id, eve_id, 2, b"again");
    alice.send(&again);
    expect_exact(&mut eve, &again);
    eve.send(&header(1, eve_id, alice_id, 2));
    expect_exact(&mut alice, &ok(alice_id, 2));

    // A plain sender: WHO with NL = 0 (an id without a name).
    let yo = msg(plain_id, eve_id, 1, b"yo");
    plain_em.send(&yo);
    expect_exact(&mut eve, &who(eve_id, 1, plain_id, PLAIN, b""));
    expect_exact(&mut eve, &yo);
    eve.send(&header(1, eve_id, S, 1));
    eve.send(&header(1, eve_id, plain_id, 1));
    expect_exact(&mut plain_em, &ok(plain_id, 1));

    // CREQ: WHO for each listed id not yet told, then the CLIST.
    alice.send(&header(6, alice_id, eve_id, 3));
    expect_exact(&mut eve, &who(eve_id, 2, eve_id, PLAIN, b"eve"));
    expect_exact(&mut eve, &who(eve_id, 3, plain_ex_id, PLAIN, b""));
    expect_exact(
        &mut eve,
        &clist(eve_id, 4, &[alice_id, plain_id, eve_id, plain_ex_id]),
    );
    for seq in 2..=4 {
        eve.send(&header(1, eve_id, S, seq));
    }
    expect_exact(&mut alice, &ok(alice_id, 3));

    // The plain exhibitor never saw anything but the plain protocol.
    plain_ex.expect_silence();
    eve.expect_silence();
}

/// A broadcast from alice to two opted-in exhibitors, acknowledged; the
/// WHO, when one comes, first.
fn broadcast_seen(
    alice: &mut Raw,
    alice_id: ClientId,
    seq: u16,
    tellers: &mut [(&mut Raw, ClientId, Option<u16>)],
) {
    let hi = msg(alice_id, 0, seq, b"hi");
    alice.send(&hi);
    for (raw, id, who_seq) in tellers.iter_mut() {
        if let Some(who_seq) = who_seq {
            expect_exact(raw, &who(*id, *who_seq, alice_id, PLAIN, b"alice"));
            raw.send(&header(1, *id, S, *who_seq));
        }
        expect_exact(raw, &hi);
        raw.send(&header(1, *id, alice_id, seq));
    }
    expect_exact(alice, &ok(alice_id, seq));
}

#[test]
fn a_broadcast_tells_each_opted_in_exhibitor_a_name_once_newcomers_included() {
    let server = Server::start(&[]);
    let (mut eve, eve_id) = claimed(&server, b"eve", 0);
    let (mut alice, alice_id) = claimed(&server, b"alice", 1);
    broadcast_seen(&mut alice, alice_id, 1, &mut [(&mut eve, eve_id, Some(0))]);
    broadcast_seen(&mut alice, alice_id, 2, &mut [(&mut eve, eve_id, None)]);

    // A newcomer is told; the one told already is not told again.
    let (mut frank, frank_id) = claimed(&server, b"frank", 0);
    broadcast_seen(
        &mut alice,
        alice_id,
        3,
        &mut [(&mut eve, eve_id, None), (&mut frank, frank_id, Some(0))],
    );
    broadcast_seen(
        &mut alice,
        alice_id,
        4,
        &mut [(&mut eve, eve_id, None), (&mut frank, frank_id, None)],
    );
    eve.expect_silence();
    frank.expect_silence();
}

// ---- KICK and reload -----------------------------------------------------

fn kick(origin: ClientId, dest: ClientId, seq: u16) -> Vec<u8> {
    let mut wire = header(11, origin, dest, seq);
    wire.extend_from_slice(&[0, 0]); // L = 0
    wire
}

fn flw(to: ClientId, seq: u16) -> Vec<u8> {
    header(4, S, to, seq)
}

#[test]
fn an_admin_kicks_a_pair_and_others_may_not() {
    let dir = TempDir::new("ident-kick");
    let server = auth_server(&dir, &[]);
    let mut ex = server.raw();
    let ex_id = opt_in(&mut ex, &sign_in("talker"), &helloack(0, 3, b"talker"), 0);
    let mut em = server.raw();
    let em_id = opt_in(
        &mut em,
        &sign_in("talker"),
        &helloack(0, 3, b"talker"),
        ex_id,
    );
    let mut boss = server.raw();
    let boss_id = opt_in(&mut boss, &sign_in("boss"), &helloack(0, 15, b"boss"), 1);
    let mut alice = server.raw();
    let alice_id = opt_in(&mut alice, &sign_in("Alice"), &helloack(0, 7, b"Alice"), 1);

    // Without admin: ERRO, kept; nobody is told anything.
    alice.send(&kick(alice_id, ex_id, 1));
    expect_exact(&mut alice, &erro(alice_id, 1));
    // Oneself, or an id nobody holds: ERRO, kept.
    boss.send(&kick(boss_id, boss_id, 1));
    expect_exact(&mut boss, &erro(boss_id, 1));
    boss.send(&kick(boss_id, 4999, 2));
    expect_exact(&mut boss, &erro(boss_id, 2));
    ex.expect_silence();
    em.expect_silence();

    // The emitter is kicked: both halves of the pair get FLW, the kicker OK.
    boss.send(&kick(boss_id, em_id, 3));
    expect_exact(&mut em, &flw(em_id, 0));
    expect_exact(&mut ex, &flw(ex_id, 0));
    expect_exact(&mut boss, &ok(boss_id, 3));
    em.send(&header(1, em_id, S, 0));
    em.expect_closed();
    ex.send(&header(1, ex_id, S, 0));
    ex.expect_closed();
    let (_, line) =
        server
            .proc
            .stderr
            .skip_until("the KICK log line", Duration::from_secs(10), |l| {
                l.contains("KICK") && l.contains("kicked_name=\"talker\"")
            });
    assert!(line.contains("kicker_name=\"boss\""), "{line}");

    // A KICK from an exhibitor: ERRO, kept (as MSG).
    let mut viewer = server.raw();
    let viewer_id = opt_in(
        &mut viewer,
        &sign_in("viewer"),
        &helloack(0, 1, b"viewer"),
        0,
    );
    viewer.send(&kick(viewer_id, alice_id, 1));
    expect_exact(&mut viewer, &erro(viewer_id, 1));
}

#[test]
fn without_auth_nobody_may_kick_and_a_plain_client_s_kick_is_unknown() {
    let server = Server::start(&[]);
    let (mut named, id) = claimed(&server, b"alice", 1);
    let mut other = server.raw();
    let other_id = other.identify_exhibitor();
    named.send(&kick(id, other_id, 1));
    expect_exact(&mut named, &erro(id, 1));
    other.expect_silence();
    let mut plain = server.raw();
    let plain_id = plain.identify_emitter(1);
    plain.send(&kick(plain_id, other_id, 1));
    expect_exact(&mut plain, &erro(plain_id, 1));
    plain.expect_closed();
}

#[test]
fn sighup_reloads_the_accounts_and_ends_revoked_sessions() {
    let dir = TempDir::new("ident-reload");
    let server = auth_server(&dir, &[]);
    let file = dir.path().join("accounts");
    let mut ex = server.raw();
    let ex_id = opt_in(&mut ex, &sign_in("talker"), &helloack(0, 3, b"talker"), 0);
    let mut alice = server.raw();
    let alice_id = opt_in(&mut alice, &sign_in("Alice"), &helloack(0, 7, b"Alice"), 0);

    // A bad new file: logged, the old accounts stay.
    std::fs::write(&file, "this is not an accounts line\n").unwrap();
    server.proc.signal(libc::SIGHUP);
    server.proc.stderr.skip_until(
        "the refusal of the new file",
        Duration::from_secs(10),
        |l| l.contains("old accounts stay"),
    );
    let mut again = server.raw();
    again.send(&sign_in("talker"));
    expect_exact(&mut again, &helloack(0, 3, b"talker"));
    drop(again);

    // talker removed: its session gets FLW; Alice's stays.
    std::fs::remove_file(&file).unwrap();
    accounts_file(&dir, &[("Alice", roles("view,emit,broadcast"))]);
    server.proc.signal(libc::SIGHUP);
    expect_exact(&mut ex, &flw(ex_id, 0));
    ex.send(&header(1, ex_id, S, 0));
    ex.expect_closed();
    alice.expect_silence();
    let _ = alice_id;
    let mut gone = server.raw();
    gone.send(&sign_in("talker"));
    expect_exact(&mut gone, &helloack(2, 0, b""));
    gone.expect_closed();
}

#[test]
fn a_full_verifier_queue_answers_busy_and_closes() {
    // A password account: argon2id, checked on the verifier thread for
    // long enough (m=64 MiB, t=3: about a second here) that a second
    // sign-in arrives while the first is checked. The hash is made up: a
    // wrong password costs what a right one does.
    let dir = TempDir::new("ident-busy");
    let path = dir.path().join("accounts");
    let line = format!(
        "slow view $argon2id$v=19$m=65536,t=3,p=1$c2FsdHNhbHRzYWx0c2FsdA${}\n",
        "A".repeat(43)
    );
    evchat::auth::write_private(&path, line.as_bytes()).unwrap();
    // The check runs at nice 10: on a loaded machine it may outlast the
    // default handshake timeout, which is not what this test is about.
    let server = Server::start(&[
        "--auth",
        path.to_str().unwrap(),
        "--auth-queue",
        "1",
        "--handshake-timeout",
        "120",
        "-v",
    ]);
    let mut first = server.raw();
    first.send(&hello(b"slow", b"a password"));
    // Queued for the verifier before the second arrives.
    server
        .proc
        .stderr
        .skip_until("the first sign-in queued", TIMEOUT, |line| {
            line.contains("sign-in queued for the verifier")
        });
    let mut second = server.raw();
    second.send(&hello(b"slow", b"another one"));
    expect_exact(&mut second, &helloack(6, 0, b""));
    second.expect_closed();
    // The first is answered once checked.
    expect_exact(&mut first, &helloack(2, 0, b""));
    first.expect_closed();
}

#[test]
fn a_session_ends_when_its_secret_expires() {
    let dir = TempDir::new("ident-expiry");
    let mut all = Accounts::default();
    all.upsert(Account {
        name: Name::new("brief").unwrap(),
        roles: roles("view"),
        secret: Secret::for_token(&token("brief")),
        // Rounded down to the second: one to two seconds from now.
        expires: Some(evchat::auth::Expiry::after(
            std::time::SystemTime::now(),
            Duration::from_secs(2),
        )),
    });
    let path = dir.path().join("accounts");
    all.save(&path).unwrap();
    let server = Server::start(&["--auth", path.to_str().unwrap()]);
    let mut raw = server.raw();
    let id = opt_in(&mut raw, &sign_in("brief"), &helloack(0, 1, b"brief"), 0);
    expect_exact(&mut raw, &flw(id, 0));
    raw.send(&header(1, id, S, 0));
    raw.expect_closed();
    server
        .proc
        .stderr
        .skip_until("the expiry's log line", Duration::from_secs(10), |l| {
            l.contains("secret expired") && l.contains("brief")
        });
}

#[test]
fn connections_that_have_not_identified_are_capped_per_address() {
    let dir = TempDir::new("ident-unidentified");
    let server = auth_server(&dir, &["--max-unidentified", "2"]);
    let mut a = server.raw();
    let b = server.raw();
    // A third, while two have not identified: closed at accept, unanswered.
    let mut c = server.raw();
    c.expect_closed();
    // One identifies: room for one more.
    opt_in(&mut a, &sign_in("Alice"), &helloack(0, 7, b"Alice"), 0);
    let mut d = server.raw();
    d.send(&sign_in("Alice"));
    expect_exact(&mut d, &helloack(0, 7, b"Alice"));
    // One leaves before identifying: room again.
    drop(b);
    wait_until("the cap has room again", || {
        let mut e = server.raw();
        e.send(&sign_in("Alice"));
        answered(&mut e)
    });
}

/// Whether the server answers (true) or closes (false) within TIMEOUT.
fn answered(raw: &mut Raw) -> bool {
    use std::io::Read;
    raw.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut byte = [0u8; 1];
    match raw.stream.read(&mut byte) {
        Ok(n) => n == 1,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
        Err(e) => panic!("read: {e}"),
    }
}

// ---- the router alone --------------------------------------------------

mod rules {
    //! The router's part, without a loop: what it is told (names, roles)
    //! and what it sends, with its invariants checked after each step.

    use super::{PLAIN, header, msg, who};
    use evchat::proto::FrameView;
    use evchat::proto::ext::ExtFrame;
    use evchat::proto::{ClientId, Frame, Kind, SERVER_ID};
    use evchat::server::Limits;
    use evchat::testing::{CloseReason, ConnId, Outbox, Router, Sender};
    use std::time::Instant;

    #[derive(Default)]
    struct Recorded {
        sent: Vec<(ConnId, Vec<u8>)>,
        closed: Vec<(ConnId, ClientId, CloseReason)>,
        resumed: Vec<ConnId>,
        /// The sender of each accepted MSG, as a history would keep it.
        accepted: Vec<(Option<String>, u8)>,
    }

    impl Outbox for Recorded {
        fn send(&mut self, to: ConnId, frame: &Frame) {
            self.sent.push((to, frame.to_bytes().to_vec()));
        }
        fn send_ext(&mut self, to: ConnId, frame: &ExtFrame) {
            self.sent.push((to, frame.to_bytes().to_vec()));
        }
        fn close(&mut self, conn: ConnId, id: ClientId, reason: CloseReason) {
            self.closed.push((conn, id, reason));
        }
        fn resume_input(&mut self, conn: ConnId) {
            self.resumed.push(conn);
        }
        fn accepted<'s>(
            &mut self,
            _: &FrameView<'_>,
            sender: impl FnOnce() -> Sender<'s>,
        ) -> Option<u64> {
            let sender = sender();
            self.accepted
                .push((sender.name.map(String::from), sender.roles));
            None
        }
    }

    /// A sender as a history recovered it.
    fn recorded(name: Option<&str>, roles: u8) -> Sender<'_> {
        Sender { name, roles }
    }

    /// Connects `conn`, accepts its HELLO with `name` and `roles` (None: a
    /// plain client, no HELLO), and identifies it with OI(`origin`);
    /// returns what it was sent.
    fn join_named(
        r: &mut Router,
        out: &mut Recorded,
        conn: ConnId,
        name: Option<&str>,
        roles: u8,
        origin: ClientId,
    ) -> Vec<Vec<u8>> {
        let now = Instant::now();
        r.connected(conn, now);
        if name.is_some() {
            r.hello_accepted(conn, name, roles, true, out).unwrap();
        }
        r.on_frame(conn, Frame::bare(Kind::Oi, origin, SERVER_ID, 0), now, out);
        checked(r);
        let sent = std::mem::take(&mut out.sent);
        sent.into_iter()
            .map(|(to, bytes)| {
                assert_eq!(to, conn);
                bytes
            })
            .collect()
    }

    /// PROTOCOL.md, "WHO": replay tells an opted-in exhibitor the recorded
    /// name before a replayed message whose origin id is now someone
    /// else's or no one's, the holder's when it has the recorded name, and
    /// each only when it changes; a plain exhibitor gets the plain replay.
    #[test]
    fn replay_tells_an_opted_in_exhibitor_the_recorded_names() {
        let mut r = Router::new(Limits::default());
        let mut out = Recorded::default();
        r.set_replay(10, 100_000);
        for (origin, sender, text) in [
            (1, recorded(Some("alice"), 15), "hi"),
            (1, recorded(Some("alice"), 15), "again"),
            (2, recorded(None, 0), "from a log before names"),
            (3, recorded(Some("carol"), PLAIN), "c"),
            (1, recorded(Some("dave"), PLAIN), "d"),
        ] {
            r.recall_broadcast(origin, sender, text.as_bytes());
        }
        // Now alice holds id 1 (with other roles), bob id 2, no one id 3.
        join_named(&mut r, &mut out, 0, Some("alice"), PLAIN, 1);
        join_named(&mut r, &mut out, 1, Some("bob"), PLAIN, 1);
        assert_eq!(r.client_id(1), Some(2));
        let eve = join_named(&mut r, &mut out, 2, Some("eve"), PLAIN, 0);
        assert_eq!(
            eve,
            [
                header(1, SERVER_ID, 4096, 0),
                // The holder has the recorded name: the holder, as live.
                who(4096, 0, 1, PLAIN, b"alice"),
                msg(1, 0, 1, b"hi"),
                msg(1, 0, 2, b"again"),
                // Held by another name: the recorded one (none, roles 0).
                who(4096, 3, 2, 0, b""),
                msg(2, 0, 4, b"from a log before names"),
                // Held by no one: the recorded name.
                who(4096, 5, 3, PLAIN, b"carol"),
                msg(3, 0, 6, b"c"),
                who(4096, 7, 1, PLAIN, b"dave"),
                msg(1, 0, 8, b"d"),
            ]
        );
        let plain = join_named(&mut r, &mut out, 3, None, PLAIN, 0);
        assert_eq!(
            plain,
            [
                header(1, SERVER_ID, 4097, 0),
                msg(1, 0, 0, b"hi"),
                msg(1, 0, 1, b"again"),
                msg(2, 0, 2, b"from a log before names"),
                msg(3, 0, 3, b"c"),
                msg(1, 0, 4, b"d"),
            ]
        );
        // The replay's WHOs and MSGs are acked like live ones.
        let now = Instant::now();
        for seq in 0..9 {
            r.on_frame(
                2,
                Frame::bare(Kind::Ok, 4096, SERVER_ID, seq),
                now,
                &mut out,
            );
        }
        for seq in 0..5 {
            r.on_frame(
                3,
                Frame::bare(Kind::Ok, 4097, SERVER_ID, seq),
                now,
                &mut out,
            );
        }
        assert_eq!(out.sent, []);
        // alice speaks: eve was last told id 1 is dave, so she is told again.
        let live = Frame::msg(1, 0, 1, &b"it is alice now"[..]).unwrap();
        r.on_frame(0, live, now, &mut out);
        assert_eq!(
            out.sent,
            [
                (2, who(4096, 9, 1, PLAIN, b"alice")),
                (2, msg(1, 0, 1, b"it is alice now")),
                (3, msg(1, 0, 1, b"it is alice now")),
            ]
        );
        // And what a history keeps of it: her name and roles.
        assert_eq!(out.accepted, [(Some("alice".to_string()), PLAIN)]);
        checked(&r);
    }

    /// The replay's bound holds with the WHOs: for an opted-in exhibitor
    /// each message counts a WHO with the longest name on a WebSocket
    /// (8 + 2 + 28 + 10 = 48 bytes) besides its own framing (20).
    #[test]
    fn an_opted_in_replay_counts_a_who_per_message_against_the_cap() {
        // Five 10-byte broadcasts take 5 * 30 bytes plainly; with a WHO
        // each, 78 bytes. Two fit in 156 (exactly: a byte more counted per
        // message leaves one) and in 233 (a byte less lets three in).
        for cap in [156, 233] {
            let mut r = Router::new(Limits::default());
            let mut out = Recorded::default();
            r.set_replay(10, cap);
            for text in [
                "0000000000",
                "1111111111",
                "2222222222",
                "3333333333",
                "4444444444",
            ] {
                r.recall_broadcast(1, recorded(Some("alice"), PLAIN), text.as_bytes());
            }
            let plain = join_named(&mut r, &mut out, 0, None, PLAIN, 0);
            assert_eq!(plain.len(), 1 + 5, "the OK and all five: {plain:?}");
            let eve = join_named(&mut r, &mut out, 1, Some("eve"), PLAIN, 0);
            assert_eq!(
                eve,
                [
                    header(1, SERVER_ID, 4097, 0),
                    who(4097, 0, 1, PLAIN, b"alice"),
                    msg(1, 0, 1, b"3333333333"),
                    msg(1, 0, 2, b"4444444444"),
                ],
                "cap {cap}"
            );
        }
    }

    fn checked(router: &Router) {
        router.check_invariants().unwrap();
    }

    #[test]
    fn names_roles_who_and_kick_in_the_router() {
        let mut r = Router::new(Limits::default());
        let mut out = Recorded::default();
        let now = Instant::now();
        for conn in 0..4 {
            r.connected(conn, now);
        }
        // A claim, and a clash ignoring case.
        r.hello_accepted(0, Some("Alice"), PLAIN, true, &mut out)
            .unwrap();
        assert!(
            r.hello_accepted(1, Some("alice"), PLAIN, true, &mut out)
                .is_err()
        );
        checked(&r);
        // A HELLO being checked holds the input; the verdict resumes it.
        r.hello_checking(2);
        assert!(!r.accepts_input(2));
        r.hello_accepted(2, Some("bob"), PLAIN, true, &mut out)
            .unwrap();
        assert!(r.accepts_input(2));
        assert_eq!(out.resumed, [2]);
        checked(&r);

        // Alice an exhibitor (opted in), bob an emitter, conn 3 plain.
        r.on_frame(0, Frame::bare(Kind::Oi, 0, SERVER_ID, 0), now, &mut out);
        r.on_frame(2, Frame::bare(Kind::Oi, 1, SERVER_ID, 0), now, &mut out);
        r.on_frame(3, Frame::bare(Kind::Oi, 1, SERVER_ID, 0), now, &mut out);
        assert_eq!(r.client_id(0), Some(4096));
        assert_eq!(r.client_id(2), Some(1));
        assert_eq!(r.client_id(3), Some(2));
        checked(&r);
        out.sent.clear();

        // bob's MSG to everyone: WHO to Alice first, nothing new to conn 3.
        let hi = Frame::msg(1, 0, 1, &b"hi"[..]).unwrap();
        r.on_frame(2, hi.clone(), now, &mut out);
        assert_eq!(
            out.sent,
            [
                (0, who(4096, 0, 1, PLAIN, b"bob")),
                (0, msg(1, 0, 1, b"hi")),
            ]
        );
        checked(&r);
        out.sent.clear();
        // Acks settle the WHO, then the MSG: bob gets his OK.
        r.on_frame(0, Frame::bare(Kind::Ok, 4096, SERVER_ID, 0), now, &mut out);
        r.on_frame(0, Frame::bare(Kind::Ok, 4096, 1, 1), now, &mut out);
        assert_eq!(out.sent, [(2, header(1, SERVER_ID, 1, 1))]);
        out.sent.clear();

        // No admin without accounts: a KICK gets ERRO, kept.
        r.kick(2, kick_header(1, 2, 2), now, &mut out);
        assert_eq!(out.sent, [(2, header(2, SERVER_ID, 1, 2))]);
        assert!(out.closed.is_empty());
        out.sent.clear();

        // An admin (as with accounts) kicks the plain emitter: FLW, then OK.
        r.hello_accepted(1, Some("root"), 15, true, &mut out)
            .unwrap();
        r.on_frame(1, Frame::bare(Kind::Oi, 1, SERVER_ID, 0), now, &mut out);
        out.sent.clear();
        r.kick(1, kick_header(3, 2, 1), now, &mut out);
        assert_eq!(
            out.sent,
            [
                (3, header(4, SERVER_ID, 2, 0)),
                (1, header(1, SERVER_ID, 3, 1))
            ]
        );
        checked(&r);

        // Alice leaves: her name is free again, and no exhibitor is told.
        r.disconnected(0, now, &mut out);
        checked(&r);
        r.connected(0, now);
        r.hello_accepted(0, Some("ALICE"), PLAIN, true, &mut out)
            .unwrap();
        // Revoking an account ends its sessions (here: the one before OI).
        assert_eq!(r.revoke("alice", now, &mut out), 1);
        assert!(out.closed.contains(&(0, 0, CloseReason::Revoked)));
        checked(&r);
    }

    fn kick_header(origin: ClientId, dest: ClientId, seq: u16) -> evchat::proto::Header {
        evchat::proto::Header {
            kind: 11,
            origin,
            dest,
            seq,
        }
    }
}

#[test]
fn no_secret_reaches_the_log_even_at_trace_level() {
    let dir = TempDir::new("ident-log");
    let file = accounts_file(&dir, &[("Alice", roles("view,emit,broadcast"))]);
    let server = Server::start(&["--auth", &file, "-vv"]);
    let right = token("Alice");
    let wrong = token("Mallory");
    let right_text = String::from_utf8(right.as_bytes().to_vec()).unwrap();
    let wrong_text = String::from_utf8(wrong.as_bytes().to_vec()).unwrap();
    let mut ok = server.raw();
    ok.send(&hello(b"Alice", right.as_bytes()));
    expect_exact(&mut ok, &helloack(0, 7, b"Alice"));
    for secret in [wrong.as_bytes(), b"hunter2-password"] {
        let mut refused = server.raw();
        refused.send(&hello(b"Alice", secret));
        expect_exact(&mut refused, &helloack(2, 0, b""));
        refused.expect_closed();
    }
    server.proc.signal(libc::SIGTERM);
    let lines = server.proc.stderr.rest();
    assert!(lines.iter().any(|l| l.contains("sign-in refused")));
    for line in &lines {
        for secret in [
            &right_text[..],
            &wrong_text[..],
            "hunter2",
            &right_text[4..20],
        ] {
            assert!(!line.contains(secret), "a secret in the log: {line}");
        }
    }
}
