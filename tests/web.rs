//! The web transport against the real `server` binary: the page and its
//! HTTP answers, the WebSocket upgrade, and WebSocket clients (driven frame
//! by frame, see `ws_client.rs`) mixed with raw TCP clients under the same
//! rules. Protocol frames are written out by hand and every answer is
//! compared byte for byte, WebSocket framing included. Every wait is a read
//! with a deadline; what must not happen is a short bounded read.

use crate::util::*;
use evchat::proto::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The server's id, short.
const S: ClientId = SERVER_ID;

// ---- clients -------------------------------------------------------------------

fn tcp_exhibitor(server: &Server) -> (Raw, ClientId) {
    let mut raw = server.raw();
    let id = raw.identify_exhibitor();
    (raw, id)
}

fn tcp_emitter(server: &Server, origin: ClientId) -> (Raw, ClientId) {
    let mut raw = server.raw();
    let id = raw.identify_emitter(origin);
    (raw, id)
}

fn ws_exhibitor(server: &Server) -> (Ws, ClientId) {
    let mut ws = Ws::connect(server.addr);
    let id = ws.identify(0);
    assert!(is_exhibitor_id(id), "exhibitor got id {id}");
    (ws, id)
}

fn ws_emitter(server: &Server, origin: ClientId) -> (Ws, ClientId) {
    let mut ws = Ws::connect(server.addr);
    let id = ws.identify(origin);
    assert!(is_emitter_id(id), "emitter got id {id}");
    (ws, id)
}

/// Waits for a server log line that contains every one of `needles`.
fn expect_log(server: &Server, needles: &[&str]) -> String {
    let what = format!("log line with {needles:?}");
    let wanted = |line: &str| needles.iter().all(|n| line.contains(n));
    server.proc.stderr.skip_until(&what, TIMEOUT, wanted).1
}

/// A message through `em` to `ex` and back, both TCP: the server still
/// serves others.
fn tcp_round_trip(em: &mut Raw, em_id: ClientId, ex: &mut Raw, ex_id: ClientId, seq: u16) {
    let m = msg(em_id, ex_id, seq, b"still here");
    em.send(&m);
    expect_exact(ex, &m);
    ex.send(&hdr(Kind::Ok, ex_id, em_id, seq));
    expect_exact(em, &hdr(Kind::Ok, S, em_id, seq));
}

// ---- the upgrade ------------------------------------------------------------------

#[test]
fn upgrade_answer_is_the_rfc_accept_and_oi_is_answered_in_one_binary_message() {
    let server = Server::start(&[]);
    let mut ws = Ws::connect(server.addr);
    ws.send_binary(b"\x00\x03\x00\x00\xff\xff\x00\x00");
    ws.expect_binary_exact(b"\x00\x01\xff\xff\x10\x00\x00\x00");
    let mut em = Ws::connect(server.addr);
    em.send_binary(b"\x00\x03\x10\x00\xff\xff\x00\x07");
    em.expect_binary_exact(b"\x00\x01\xff\xff\x00\x01\x00\x07");
}

#[test]
fn frames_sent_with_the_upgrade_request_are_served_after_the_101() {
    let server = Server::start(&[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let mut bytes = upgrade_request(server.addr, &[]).into_bytes();
    bytes.extend(client_frame(true, OP_BINARY, &hdr(Kind::Oi, 0, S, 3)));
    stream.write_all(&bytes).unwrap();
    let mut ws = Ws::over(stream);
    ws.expect_upgraded();
    ws.expect_binary_exact(&hdr(Kind::Ok, S, 4096, 3));
    // A bad message in the same write: the 101, then the close.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let mut bytes = upgrade_request(server.addr, &[]).into_bytes();
    bytes.extend(client_frame(true, OP_TEXT, b"hi"));
    stream.write_all(&bytes).unwrap();
    let mut ws = Ws::over(stream);
    ws.expect_upgraded();
    ws.expect_close(1003);
}

#[test]
fn upgrade_request_dribbled_byte_by_byte_is_served() {
    // Regression: a head that took more than one read was parsed as
    // protocol frames and got the binary path's ERRO for "GET /ws ".
    let server = Server::start(&[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    for byte in upgrade_request(server.addr, &[]).bytes() {
        stream.write_all(&[byte]).unwrap();
    }
    let mut ws = Ws::over(stream);
    ws.expect_upgraded();
    assert_eq!(ws.identify(0), 4096);
}

#[test]
fn browser_upgrade_headers_are_accepted_and_no_extension_is_negotiated() {
    let server = Server::start(&[]);
    let addr = server.addr;
    // As Firefox sends it: token lists, mixed case, an extension offer.
    let request = format!(
        "GET /ws?client=page HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: Mozilla/5.0\r\n\
         Accept: */*\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate\r\n\
         Sec-WebSocket-Version: 13\r\nOrigin: http://{addr}\r\n\
         Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
         Sec-WebSocket-Key: {WS_KEY}\r\nConnection: keep-alive, Upgrade\r\n\
         Pragma: no-cache\r\nCache-Control: no-cache\r\nUpgrade: WebSocket\r\n\r\n"
    );
    let mut ws = Ws::over(TcpStream::connect(addr).unwrap());
    ws.send_raw(request.as_bytes());
    // Exactly the 101: no Sec-WebSocket-Extensions, no subprotocol.
    ws.expect_upgraded();
    assert_eq!(ws.identify(0), 4096);
}

#[test]
fn a_tungstenite_client_chats_with_a_tcp_client() {
    let server = Server::start(&[]);
    let (mut ex, ex_id) = tcp_exhibitor(&server);
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let url = format!("ws://{}/ws", server.addr);
    let (mut client, response) =
        tungstenite::client::client_with_config(url.as_str(), stream, None).unwrap();
    assert_eq!(response.status(), 101);
    let send = |client: &mut tungstenite::WebSocket<TcpStream>, bytes: Vec<u8>| {
        client.send(tungstenite::Message::binary(bytes)).unwrap();
    };
    let recv = |client: &mut tungstenite::WebSocket<TcpStream>| match client.read().unwrap() {
        tungstenite::Message::Binary(bytes) => bytes.to_vec(),
        other => panic!("expected a binary message, got {other:?}"),
    };
    send(&mut client, hdr(Kind::Oi, 1, S, 0));
    assert_eq!(recv(&mut client), hdr(Kind::Ok, S, 1, 0));
    let m = msg(1, ex_id, 1, "olá, navegador".as_bytes());
    send(&mut client, m.clone());
    expect_exact(&mut ex, &m);
    ex.send(&hdr(Kind::Ok, ex_id, 1, 1));
    assert_eq!(recv(&mut client), hdr(Kind::Ok, S, 1, 1));
    send(&mut client, hdr(Kind::Flw, 1, S, 2));
    assert_eq!(recv(&mut client), hdr(Kind::Ok, S, 1, 2));
    match client.read() {
        Ok(tungstenite::Message::Close(Some(frame))) => assert_eq!(u16::from(frame.code), 1000),
        other => panic!("expected the close, got {other:?}"),
    }
}

// ---- rule tests, WebSocket mixed with TCP ----------------------------------------

#[test]
fn unicast_and_broadcast_from_tcp_reach_ws_with_end_to_end_acks() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut em, em_id) = tcp_emitter(&server, 1);
    // Unicast: the emitter hears nothing until the WebSocket exhibitor acks.
    let m = msg(em_id, wex_id, 1, b"to the browser");
    em.send(&m);
    wex.expect_binary_exact(&m);
    em.expect_silence();
    wex.send_binary(&hdr(Kind::Ok, wex_id, em_id, 1));
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 1));
    tex.expect_silence();
    // Broadcast: both exhibitors get the same bytes; the OK waits for both.
    let b = msg(em_id, 0, 2, b"to everyone");
    em.send(&b);
    wex.expect_binary_exact(&b);
    expect_exact(&mut tex, &b);
    tex.send(&hdr(Kind::Ok, tex_id, em_id, 2));
    em.expect_silence();
    wex.send_binary(&hdr(Kind::Ok, wex_id, em_id, 2));
    expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, 2));
    // Frames of every length form: 126..65535 (16-bit) and over (64-bit).
    for (seq, len) in [(3u16, 300usize), (4, 65_535)] {
        let big = msg(em_id, wex_id, seq, &vec![b'z'; len]);
        em.send(&big);
        wex.expect_binary_exact(&big);
        wex.send_binary(&hdr(Kind::Ok, wex_id, em_id, seq));
        expect_exact(&mut em, &hdr(Kind::Ok, S, em_id, seq));
    }
}

#[test]
fn unicast_and_broadcast_from_ws_reach_tcp_with_end_to_end_acks() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, 1);
    let m = msg(em_id, tex_id, 1, b"from the browser");
    em.send_binary(&m);
    expect_exact(&mut tex, &m);
    em.expect_silence();
    tex.send(&hdr(Kind::Ok, tex_id, em_id, 1));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 1));
    wex.expect_silence();
    let b = msg(em_id, 0, 2, b"from the browser to all");
    em.send_binary(&b);
    expect_exact(&mut tex, &b);
    wex.expect_binary_exact(&b);
    wex.send_binary(&hdr(Kind::Ok, wex_id, em_id, 2));
    em.expect_silence();
    tex.send(&hdr(Kind::Ok, tex_id, em_id, 2));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 2));
    // The largest MSG, WebSocket to WebSocket (64-bit length both ways).
    let big = msg(em_id, wex_id, 3, &vec![0xa5; MAX_TEXT_LEN]);
    em.send_binary(&big);
    wex.expect_binary_exact(&big);
    wex.send_binary(&hdr(Kind::Ok, wex_id, em_id, 3));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 3));
    // A target that answers ERRO: the emitter is told "not delivered".
    let m = msg(em_id, tex_id, 4, b"refused");
    em.send_binary(&m);
    expect_exact(&mut tex, &m);
    tex.send(&hdr(Kind::Erro, tex_id, em_id, 4));
    em.expect_binary_exact(&hdr(Kind::Erro, S, em_id, 4));
}

#[test]
fn ws_emitter_pairs_with_a_ws_exhibitor_and_with_a_tcp_exhibitor() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, wex_id);
    // Addressed to the emitter's own id: its paired exhibitor takes it.
    let m = msg(em_id, em_id, 1, b"to my own exhibitor");
    em.send_binary(&m);
    wex.expect_binary_exact(&m);
    wex.send_binary(&hdr(Kind::Ok, wex_id, em_id, 1));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 1));
    // That exhibitor is taken: a second emitter is refused and closed.
    let mut late = Ws::connect(server.addr);
    late.send_binary(&hdr(Kind::Oi, wex_id, S, 0));
    late.expect_binary_exact(&hdr(Kind::Erro, S, 0, 0));
    late.expect_close(1008);
    // A WebSocket emitter paired with a TCP exhibitor.
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut em2, em2_id) = ws_emitter(&server, tex_id);
    let m = msg(em2_id, em2_id, 1, b"to my TCP exhibitor");
    em2.send_binary(&m);
    expect_exact(&mut tex, &m);
    tex.send(&hdr(Kind::Ok, tex_id, em2_id, 1));
    em2.expect_binary_exact(&hdr(Kind::Ok, S, em2_id, 1));
    // And a TCP emitter paired with a WebSocket exhibitor.
    let (mut wex2, wex2_id) = ws_exhibitor(&server);
    let (mut tem, tem_id) = tcp_emitter(&server, wex2_id);
    let m = msg(tem_id, tem_id, 1, b"to my browser");
    tem.send(&m);
    wex2.expect_binary_exact(&m);
    wex2.send_binary(&hdr(Kind::Ok, wex2_id, tem_id, 1));
    expect_exact(&mut tem, &hdr(Kind::Ok, S, tem_id, 1));
    wex.expect_silence();
    tex.expect_silence();
}

#[test]
fn creq_from_ws_gets_clist_to_tcp_and_ws_exhibitors() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, 1);
    assert_eq!((wex_id, tex_id, em_id), (4096, 4097, 1));
    em.send_binary(&hdr(Kind::Creq, em_id, 0, 1));
    let list = clist(S, 0, 0, &[em_id, wex_id, tex_id]);
    wex.expect_binary_exact(&list);
    expect_exact(&mut tex, &list);
    wex.send_binary(&hdr(Kind::Ok, wex_id, S, 0));
    tex.send(&hdr(Kind::Ok, tex_id, S, 0));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 1));
    // From a TCP emitter to the WebSocket exhibitor only; its counter moved.
    let (mut tem, tem_id) = tcp_emitter(&server, 1);
    tem.send(&hdr(Kind::Creq, tem_id, wex_id, 1));
    wex.expect_binary_exact(&clist(S, wex_id, 1, &[em_id, tem_id, wex_id, tex_id]));
    wex.send_binary(&hdr(Kind::Ok, wex_id, S, 1));
    expect_exact(&mut tem, &hdr(Kind::Ok, S, tem_id, 1));
    tex.expect_silence();
}

#[test]
fn spoofed_origin_from_ws_gets_erro_then_close_1002_and_is_not_forwarded() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (_honest, honest_id) = ws_emitter(&server, 1);
    let (mut liar, liar_id) = ws_emitter(&server, 1);
    liar.send_binary(&msg(honest_id, 0, 5, b"I am emitter 1"));
    liar.expect_binary_exact(&hdr(Kind::Erro, S, liar_id, 5));
    liar.expect_close_saying(1002, "spoofed origin");
    // An exhibitor acking in another's name.
    let (mut em, em_id) = tcp_emitter(&server, 1);
    let m = msg(em_id, wex_id, 1, b"ack me");
    em.send(&m);
    wex.expect_binary_exact(&m);
    wex.send_binary(&hdr(Kind::Ok, tex_id, em_id, 1));
    wex.expect_binary_exact(&hdr(Kind::Erro, S, wex_id, 1));
    wex.expect_close(1002);
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 1));
    tex.expect_silence();
}

#[test]
fn a_message_that_is_not_exactly_one_frame_closes_1002_and_routes_nothing() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let one = msg(1, 0, 1, b"one");
    let two = msg(1, 0, 2, b"two");
    let cases: [(&str, Vec<u8>); 5] = [
        ("two frames", [one.clone(), two.clone()].concat()),
        ("half a frame", one[..one.len() / 2].to_vec()),
        ("half a header", one[..4].to_vec()),
        ("trailing bytes", [one.clone(), vec![0]].concat()),
        ("empty", Vec::new()),
    ];
    for (what, payload) in cases {
        let (mut em, em_id) = ws_emitter(&server, 1);
        assert_eq!(em_id, 1, "{what}: the last one's id was freed");
        em.send_binary(&payload);
        em.expect_close(1002);
        tex.expect_silence();
    }
    // Before OI too.
    let mut anon = Ws::connect(server.addr);
    anon.send_binary(&[hdr(Kind::Oi, 0, S, 0), hdr(Kind::Oi, 0, S, 1)].concat());
    anon.expect_close(1002);
    // The server still routes whole frames.
    let (mut em, em_id) = ws_emitter(&server, 1);
    let m = msg(em_id, 0, 1, b"whole");
    em.send_binary(&m);
    expect_exact(&mut tex, &m);
    tex.send(&hdr(Kind::Ok, tex_id, em_id, 1));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 1));
}

#[test]
fn unknown_frame_type_in_a_message_gets_erro_echoing_seq_then_close_1002() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, _) = tcp_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, 1);
    em.send_binary(&raw_hdr(8, em_id, 0, 0x0a0b));
    em.expect_binary_exact(&hdr(Kind::Erro, S, em_id, 0x0a0b));
    em.expect_close(1002);
    // Before OI: the ERRO's destination is 0.
    let mut anon = Ws::connect(server.addr);
    anon.send_binary(&raw_hdr(0x0100, 0, S, 0x0c0d));
    anon.expect_binary_exact(&hdr(Kind::Erro, S, 0, 0x0c0d));
    anon.expect_close(1002);
    // A frame before OI (a known type).
    let mut anon = Ws::connect(server.addr);
    anon.send_binary(&msg(1, 0, 9, b"who am I"));
    anon.expect_binary_exact(&hdr(Kind::Erro, S, 0, 9));
    anon.expect_close(1002);
    tex.expect_silence();
}

#[test]
fn text_message_closes_1003() {
    let server = Server::start(&[]);
    let (mut tex, _) = tcp_exhibitor(&server);
    let (mut em, _) = ws_emitter(&server, 1);
    em.send_frame(true, OP_TEXT, b"hello");
    em.expect_close_saying(1003, "WebSocket text message (the protocol is binary)");
    // Text that is not even UTF-8.
    let (mut em, _) = ws_emitter(&server, 1);
    em.send_frame(true, OP_TEXT, b"\xff\xfe");
    em.expect_close(1003);
    tex.expect_silence();
}

#[test]
fn oversized_frame_or_message_closes_1009_and_the_largest_frame_passes() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    // A header announcing one byte over the largest protocol frame is
    // refused before its payload arrives.
    let (mut em, _) = ws_emitter(&server, 1);
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(MAX_FRAME_LEN as u64 + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    em.send_raw(&header);
    em.expect_close(1009);
    // Fragments, each small enough, that add up to more.
    let (mut em, _) = ws_emitter(&server, 1);
    let half = vec![0u8; MAX_FRAME_LEN / 2 + 1];
    em.send_frame(false, OP_BINARY, &half);
    em.send_frame(true, OP_CONTINUATION, &half);
    em.expect_close(1009);
    // A message of exactly the largest frame passes the WebSocket layer:
    // it is a CLIST (65535 ids), which a client may not send: ERRO, 1002.
    let (mut em, em_id) = ws_emitter(&server, 1);
    let ids = vec![1u16; u16::MAX as usize];
    let big = clist(em_id, 0, 7, &ids);
    assert_eq!(big.len(), MAX_FRAME_LEN);
    em.send_binary(&big);
    em.expect_binary_exact(&hdr(Kind::Erro, S, em_id, 7));
    em.expect_close(1002);
    tex.expect_silence();
    tcp_round_trip(&mut tcp_emitter(&server, 1).0, 1, &mut tex, tex_id, 1);
}

#[test]
fn fragmented_binary_message_is_reassembled_and_routed() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, 1);
    let m = msg(em_id, 0, 1, b"sent in three fragments");
    // Split inside the header and inside the text, with a ping (legal
    // between fragments) in the middle.
    em.send_frame(false, OP_BINARY, &m[..5]);
    em.send_frame(false, OP_CONTINUATION, &m[5..14]);
    em.send_frame(true, OP_PING, b"mid");
    em.send_frame(true, OP_CONTINUATION, &m[14..]);
    assert_eq!(em.expect_frame().payload, b"mid");
    expect_exact(&mut tex, &m);
    wex.expect_binary_exact(&m);
    tex.send(&hdr(Kind::Ok, tex_id, em_id, 1));
    // An ack may be fragmented too, down to one byte per fragment.
    let ack = hdr(Kind::Ok, wex_id, em_id, 1);
    for (i, byte) in ack.iter().enumerate() {
        let opcode = if i == 0 { OP_BINARY } else { OP_CONTINUATION };
        wex.send_frame(i == ack.len() - 1, opcode, &[*byte]);
    }
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 1));
}

#[test]
fn a_ping_is_answered_with_its_pong() {
    // Regression: the pong waited in the output until some frame for the
    // same client happened to be flushed.
    let server = Server::start(&[]);
    let (mut ws, _) = ws_exhibitor(&server);
    ws.send_frame(true, OP_PING, b"are you there?");
    let want = server_frame(OP_PONG, b"are you there?");
    assert_eq!(hex(&ws.expect_bytes(want.len())), hex(&want));
    // Before OI as well.
    let mut anon = Ws::connect(server.addr);
    anon.send_frame(true, OP_PING, b"");
    assert_eq!(anon.expect_bytes(2), server_frame(OP_PONG, b""));
    // An unsolicited pong is ignored: the OI after it is answered.
    anon.send_frame(true, OP_PONG, b"heartbeat");
    assert_eq!(anon.identify(0), 4097);
}

#[test]
fn ping_flood_gets_pongs_and_leaves_others_unaffected() {
    const PINGS: u32 = 5_000;
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut tem, tem_id) = tcp_emitter(&server, 1);
    let (mut flood, flood_id) = ws_emitter(&server, 1);
    let pings: Vec<u8> = (0..PINGS)
        .flat_map(|i| client_frame(true, OP_PING, &i.to_be_bytes()))
        .collect();
    // Written by a thread: the flood is larger than the socket buffers and
    // the pongs come back while it is still being sent.
    let mut writer = flood.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&pings).unwrap());
    tcp_round_trip(&mut tem, tem_id, &mut tex, tex_id, 1);
    for i in 0..PINGS {
        let pong = flood.expect_frame();
        assert_eq!(
            (pong.opcode, pong.payload),
            (OP_PONG, i.to_be_bytes().to_vec())
        );
    }
    sender.join().unwrap();
    // The flooder is still a client, and the others are still served.
    let m = msg(flood_id, tex_id, 1, b"after the flood");
    flood.send_binary(&m);
    expect_exact(&mut tex, &m);
    tex.send(&hdr(Kind::Ok, tex_id, flood_id, 1));
    flood.expect_binary_exact(&hdr(Kind::Ok, S, flood_id, 1));
    tcp_round_trip(&mut tem, tem_id, &mut tex, tex_id, 2);
}

/// The opcodes of the whole server frames at the start of `bytes` (a cut
/// stream may end inside a frame).
fn whole_frame_opcodes(mut bytes: &[u8]) -> Vec<u8> {
    let mut opcodes = Vec::new();
    while bytes.len() >= 2 {
        let (len, at) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => (
                u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        if bytes.len() < at + len {
            break;
        }
        opcodes.push(bytes[0] & 0x0f);
        bytes = &bytes[at + len..];
    }
    opcodes
}

#[test]
fn ws_client_that_never_reads_is_cut_at_max_queue_and_others_keep_receiving() {
    const MAX_MESSAGES: u16 = 600;
    let server = Server::start(&["--ack-timeout", "60", "--max-queue", "65536"]);
    let mut slow = Ws::over(connect_with_small_rcvbuf(server.addr, 4096));
    slow.send_raw(upgrade_request(server.addr, &[]).as_bytes());
    slow.expect_upgraded();
    let slow_id = slow.identify(0);
    let (mut reader, reader_id) = tcp_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, 1);
    let text = vec![b'x'; 60_000];
    let mut sent = 0u16;
    let mut dropped = false;
    while !dropped {
        assert!(sent < MAX_MESSAGES, "no cut-off after {sent} messages");
        sent += 1;
        let m = msg(em_id, 0, sent, &text);
        em.send_binary(&m);
        expect_exact(&mut reader, &m);
        reader.send(&hdr(Kind::Ok, reader_id, em_id, sent));
        let log = server.proc.stderr.drain();
        dropped |= log.iter().any(|line| line.contains("slow consumer"));
    }
    // Every request was delivered to the reader: all OK, in order.
    for seq in 1..=sent {
        em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, seq));
    }
    // The slow client's stream ends without every message in it, and
    // without a close frame: its queued output was discarded, not written.
    slow.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let rest = read_to_end_within(&mut slow.stream, TIMEOUT);
    let drained = rest.len();
    assert!(
        drained < sent as usize * text.len(),
        "the slow client received every message ({drained} bytes)"
    );
    assert!(
        !whole_frame_opcodes(&rest).contains(&OP_CLOSE),
        "a slow consumer is cut without a close frame"
    );
    // Its id is free again; the reader is the only target now.
    let (_ex, ex_id) = ws_exhibitor(&server);
    assert_eq!(ex_id, slow_id);
    tcp_round_trip(&mut tcp_emitter(&server, 1).0, 2, &mut reader, reader_id, 1);
}

#[test]
fn flw_cascade_from_a_ws_emitter_reaches_its_paired_exhibitor() {
    let server = Server::start(&["--ack-timeout", "5"]);
    // FLW from the WebSocket emitter: OK, close 1000; its WebSocket
    // exhibitor gets the server's FLW, acks it, and is closed 1000.
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, wex_id);
    em.send_binary(&hdr(Kind::Flw, em_id, S, 3));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 3));
    em.expect_close(1000);
    wex.expect_binary_exact(&hdr(Kind::Flw, S, wex_id, 0));
    wex.send_binary(&hdr(Kind::Ok, wex_id, S, 0));
    wex.expect_close(1000);
    // A WebSocket emitter that just drops its TCP connection, paired with a
    // TCP exhibitor.
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (em, _) = ws_emitter(&server, tex_id);
    drop(em);
    expect_exact(&mut tex, &hdr(Kind::Flw, S, tex_id, 0));
    tex.send(&hdr(Kind::Ok, tex_id, S, 0));
    tex.expect_closed();
    // One that sends a WebSocket close instead of FLW: its close is
    // answered with the same code, and its exhibitor is told.
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, _) = ws_emitter(&server, wex_id);
    em.send_frame(true, OP_CLOSE, &1000u16.to_be_bytes());
    em.expect_close(1000);
    wex.expect_binary_exact(&hdr(Kind::Flw, S, wex_id, 0));
    wex.send_binary(&hdr(Kind::Ok, wex_id, S, 0));
    wex.expect_close(1000);
}

#[test]
fn ws_client_that_ends_its_stream_without_a_close_frame_is_sent_none() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, _) = ws_emitter(&server, wex_id);
    // End of stream, no close frame: a disconnect, told to its exhibitor;
    // nothing is written to a peer that has gone.
    em.stream.shutdown(std::net::Shutdown::Write).unwrap();
    wex.expect_binary_exact(&hdr(Kind::Flw, S, wex_id, 0));
    assert_eq!(em.next_frame(), None, "a close frame to a peer that left");
}

#[test]
fn shutdown_flw_reaches_ws_clients() {
    let mut server = Server::start(&["--drain-timeout", "5"]);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, wex_id);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let mut anon = Ws::connect(server.addr);
    server.proc.signal(libc::SIGTERM);
    // Not identified: closed at once, "going away".
    anon.expect_close(1001);
    for (ws, id) in [(&mut wex, wex_id), (&mut em, em_id)] {
        ws.expect_binary_exact(&hdr(Kind::Flw, S, id, 0));
        ws.send_binary(&hdr(Kind::Ok, id, S, 0));
        // It acknowledged the server's FLW: a normal closure.
        ws.expect_close(1000);
    }
    expect_exact(&mut tex, &hdr(Kind::Flw, S, tex_id, 0));
    tex.send(&hdr(Kind::Ok, tex_id, S, 0));
    tex.expect_closed();
    assert!(server.proc.wait().success());
}

#[test]
fn ping_flooder_that_never_reads_is_cut_at_max_queue() {
    // Regression: past the cap, tungstenite held one pong and the server
    // read pings forever (222 MB in 10 s) without cutting the client off.
    let server = Server::start(&["--max-queue", "65536"]);
    let (mut tex, tex_id) = tcp_exhibitor(&server);
    let (mut tem, tem_id) = tcp_emitter(&server, 1);
    let mut flood = Ws::over(connect_with_small_rcvbuf(server.addr, 4096));
    flood.send_raw(upgrade_request(server.addr, &[]).as_bytes());
    flood.expect_upgraded();
    flood.identify(1);
    // Pings until the server cuts the connection; their pongs are never read.
    let ping = client_frame(true, OP_PING, &[7; 125]);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 512)
        .collect();
    let started = Instant::now();
    flood.stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let mut sent = 0usize;
    while flood.stream.write_all(&batch).is_ok() {
        sent += batch.len();
        assert!(
            started.elapsed() < TIMEOUT,
            "not cut after {sent} bytes of pings"
        );
    }
    expect_log(&server, &["slow consumer"]);
    tcp_round_trip(&mut tem, tem_id, &mut tex, tex_id, 1);
}

#[test]
fn websocket_framing_breaches_close_1002_and_route_nothing() {
    let server = Server::start(&["--ack-timeout", "5"]);
    let (mut tex, _) = tcp_exhibitor(&server);
    let m = msg(1, 0, 1, b"x");
    let mut reserved_bit = client_frame(true, OP_BINARY, &m);
    reserved_bit[0] |= 0x40;
    let cases: [(&str, Vec<u8>); 8] = [
        ("unmasked", server_frame(OP_BINARY, &m)),
        ("reserved bit", reserved_bit),
        ("reserved data opcode", client_frame(true, 0x3, &m)),
        ("reserved control opcode", client_frame(true, 0xb, b"")),
        (
            "continuation first",
            client_frame(true, OP_CONTINUATION, &m),
        ),
        (
            "new message inside a fragmented one",
            [
                client_frame(false, OP_BINARY, &m[..4]),
                client_frame(true, OP_BINARY, &m),
            ]
            .concat(),
        ),
        ("fragmented ping", client_frame(false, OP_PING, b"x")),
        (
            "ping over 125 bytes",
            client_frame(true, OP_PING, &[0; 126]),
        ),
    ];
    for (what, bytes) in cases {
        let (mut em, em_id) = ws_emitter(&server, 1);
        assert_eq!(em_id, 1, "{what}");
        em.send_raw(&bytes);
        let code = em.expect_any_close();
        assert_eq!(code, 1002, "{what}");
        tex.expect_silence();
    }
}

#[test]
fn ws_client_without_oi_is_closed_1008_at_the_handshake_timeout() {
    let server = Server::start(&["--handshake-timeout", "0.5"]);
    let started = Instant::now();
    let mut ws = Ws::connect(server.addr);
    ws.expect_close(1008);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed early"
    );
}

#[test]
fn ws_exhibitor_that_never_acks_is_closed_1008_and_the_delivery_fails() {
    let server = Server::start(&["--ack-timeout", "0.5"]);
    let (mut wex, wex_id) = ws_exhibitor(&server);
    let (mut em, em_id) = tcp_emitter(&server, 1);
    let m = msg(em_id, wex_id, 1, b"ack me");
    em.send(&m);
    wex.expect_binary_exact(&m);
    wex.expect_close(1008);
    expect_exact(&mut em, &hdr(Kind::Erro, S, em_id, 1));
}

#[test]
fn max_inflight_holds_back_a_ws_emitter_until_acks_arrive() {
    let server = Server::start(&["--ack-timeout", "30", "--max-inflight", "2"]);
    let (mut ex, ex_id) = tcp_exhibitor(&server);
    let (mut em, em_id) = ws_emitter(&server, 1);
    let frames: Vec<Vec<u8>> = (1..=3u16)
        .map(|seq| msg(em_id, ex_id, seq, format!("request {seq}").as_bytes()))
        .collect();
    let messages: Vec<u8> = frames
        .iter()
        .flat_map(|f| client_frame(true, OP_BINARY, f))
        .collect();
    em.send_raw(&messages);
    expect_exact(&mut ex, &frames[0]);
    expect_exact(&mut ex, &frames[1]);
    ex.expect_silence();
    em.expect_silence();
    ex.send(&hdr(Kind::Ok, ex_id, em_id, 1));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 1));
    expect_exact(&mut ex, &frames[2]);
    ex.send(&hdr(Kind::Ok, ex_id, em_id, 2));
    ex.send(&hdr(Kind::Ok, ex_id, em_id, 3));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 2));
    em.expect_binary_exact(&hdr(Kind::Ok, S, em_id, 3));
}

// ---- HTTP ---------------------------------------------------------------------------

/// What every non-upgrade answer carries besides its content type, as
/// PROTOCOL.md ("WebSocket transport") states it.
fn assert_common_headers(answer: &HttpAnswer) {
    assert_eq!(answer.header("X-Content-Type-Options"), "nosniff");
    assert_eq!(answer.header("Cache-Control"), "no-store");
    assert_eq!(answer.header("Connection"), "close");
    assert_eq!(
        answer.header("Content-Security-Policy"),
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
}

#[test]
fn get_root_serves_the_embedded_page_and_its_files() {
    let server = Server::start(&[]);
    let files: [(&str, &str, &str); 6] = [
        (
            "/",
            "text/html; charset=utf-8",
            include_str!("../src/web/page/index.html"),
        ),
        (
            "/index.html",
            "text/html; charset=utf-8",
            include_str!("../src/web/page/index.html"),
        ),
        (
            "/codec.js",
            "text/javascript; charset=utf-8",
            include_str!("../src/web/page/codec.js"),
        ),
        (
            "/app.js",
            "text/javascript; charset=utf-8",
            include_str!("../src/web/page/app.js"),
        ),
        (
            "/style.css",
            "text/css; charset=utf-8",
            include_str!("../src/web/page/style.css"),
        ),
        (
            "/favicon.svg",
            "image/svg+xml; charset=utf-8",
            include_str!("../src/web/page/favicon.svg"),
        ),
    ];
    for (path, content_type, body) in files {
        let answer = http_exchange(server.addr, &get(path));
        assert_eq!(answer.status_line, "HTTP/1.1 200 OK", "{path}");
        assert_eq!(answer.header("Content-Type"), content_type, "{path}");
        assert_common_headers(&answer);
        assert!(answer.body == body.as_bytes(), "{path}: body differs");
    }
    // A query string does not change the file.
    let answer = http_exchange(server.addr, &get("/app.js?v=2"));
    assert!(answer.body == include_str!("../src/web/page/app.js").as_bytes());
}

#[test]
fn page_files_are_served_whole_under_a_small_max_queue() {
    // An answer is sent once and is at most the largest file: a --max-queue
    // below that must not turn it into an empty reply.
    let server = Server::start(&["--max-queue", "1024"]);
    let app = include_str!("../src/web/page/app.js");
    assert!(app.len() > 1024);
    let answer = http_exchange(server.addr, &get("/app.js"));
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert!(answer.body == app.as_bytes(), "body differs");
    let mut ws = Ws::connect(server.addr);
    assert_eq!(ws.identify(0), 4096);
}

#[test]
fn unknown_path_is_404_and_closed() {
    let server = Server::start(&[]);
    for path in ["/nope", "/ws/", "/index.htm", "/../Cargo.toml", "//"] {
        let answer = http_exchange(server.addr, &get(path));
        assert_eq!(answer.status_line, "HTTP/1.1 404 Not Found", "{path}");
        assert_eq!(answer.header("Content-Type"), "text/plain; charset=utf-8");
        assert_common_headers(&answer);
        assert_eq!(answer.body, b"not found\n");
    }
}

#[test]
fn other_methods_are_405() {
    let server = Server::start(&[]);
    let post = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello";
    for request in [
        &post[..],
        b"HEAD / HTTP/1.1\r\n\r\n",
        b"PUT /ws HTTP/1.1\r\n\r\n",
    ] {
        let answer = http_exchange(server.addr, request);
        assert_eq!(answer.status_line, "HTTP/1.1 405 Method Not Allowed");
        assert_eq!(answer.header("Allow"), "GET");
        assert_eq!(answer.header("Content-Type"), "text/plain; charset=utf-8");
        assert_common_headers(&answer);
    }
}

#[test]
fn request_head_over_8_kib_is_closed_without_an_answer() {
    let server = Server::start(&[]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    let mut head = b"GET / HTTP/1.1\r\nX-Padding: ".to_vec();
    head.resize(9000, b'a');
    stream.write_all(&head).unwrap();
    assert_eq!(hex(&read_to_end_within(&mut stream, TIMEOUT)), "");
    expect_log(
        &server,
        &["HTTP request refused", "request head over 8192 bytes"],
    );
    // Complete but too long: the same.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    head.extend_from_slice(b"\r\n\r\n");
    stream.write_all(&head).unwrap();
    assert_eq!(hex(&read_to_end_within(&mut stream, TIMEOUT)), "");
    // Over the limit in two parts: the first waits for more, unanswered.
    let mut raw = server.raw();
    raw.send(&head[..4000]);
    raw.expect_silence();
    raw.send(&head[4000..]);
    assert_eq!(hex(&read_to_end_within(&mut raw.stream, TIMEOUT)), "");
    // A head of exactly 8 KiB is served; one byte more is not.
    let mut head = b"GET / HTTP/1.1\r\nX-Padding: ".to_vec();
    head.resize(8 * 1024 - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), 8 * 1024);
    let answer = http_exchange(server.addr, &head);
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    head.insert(20, b'a');
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.write_all(&head).unwrap();
    assert_eq!(hex(&read_to_end_within(&mut stream, TIMEOUT)), "");
}

#[test]
fn request_head_dribbled_past_the_handshake_timeout_is_closed() {
    let server = Server::start(&["--handshake-timeout", "0.5"]);
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let head = b"GET / HTTP/1.1\r\nX-Slow: ";
    let mut sent = 0usize;
    let mut chunk = [0u8; 64];
    // One byte, then wait up to 50 ms for the close; the head never ends.
    let got = loop {
        assert!(started.elapsed() < TIMEOUT, "not closed within {TIMEOUT:?}");
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if stream.write_all(&[byte]).is_err() {
            break 0;
        }
        sent += 1;
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        match stream.read(&mut chunk) {
            Ok(n) => break n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break 0,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("read: {e}"),
        }
    };
    assert_eq!(got, 0, "an answer came: {}", hex(&chunk[..got]));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed early"
    );
    expect_log(
        &server,
        &["HTTP request head not complete within the handshake timeout"],
    );
}

#[test]
fn bad_upgrade_requests_are_refused_with_their_status() {
    let server = Server::start(&[]);
    let addr = server.addr;
    let without = |name: &str| -> String {
        upgrade_request(addr, &[])
            .split("\r\n")
            .filter(|line| !line.starts_with(name))
            .collect::<Vec<_>>()
            .join("\r\n")
    };
    let with_key = |key: &str| upgrade_request(addr, &[]).replace(WS_KEY, key);
    let cases: Vec<(&str, String, &str)> = vec![
        ("bad key", with_key("not-a-key"), "HTTP/1.1 400 Bad Request"),
        (
            "key of 15 bytes",
            with_key("dGhlIHNhbXBsZSBub25j"),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "no key",
            without("Sec-WebSocket-Key"),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "no version",
            without("Sec-WebSocket-Version"),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "version 8",
            upgrade_request(addr, &[]).replace("Version: 13", "Version: 8"),
            "HTTP/1.1 426 Upgrade Required",
        ),
        (
            "no Upgrade",
            without("Upgrade:"),
            "HTTP/1.1 426 Upgrade Required",
        ),
        (
            "HTTP/1.0",
            upgrade_request(addr, &[]).replace("HTTP/1.1", "HTTP/1.0"),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            "foreign origin",
            upgrade_request(addr, &["Origin: http://evil.example"]),
            "HTTP/1.1 403 Forbidden",
        ),
        (
            "null origin",
            upgrade_request(addr, &["Origin: null"]),
            "HTTP/1.1 403 Forbidden",
        ),
        (
            "not HTTP",
            "GET /ws HTTP/1.1\r\nno colon here\r\n\r\n".to_string(),
            "HTTP/1.1 400 Bad Request",
        ),
    ];
    for (what, request, status) in cases {
        let answer = http_exchange(addr, request.as_bytes());
        assert_eq!(answer.status_line, status, "{what}");
        assert_eq!(answer.header("Content-Type"), "text/plain; charset=utf-8");
        assert_common_headers(&answer);
    }
    // The page's own origin is allowed.
    let mut ws = Ws::connect_with(addr, &[&format!("Origin: http://{addr}")]);
    assert_eq!(ws.identify(0), 4096);
}

#[test]
fn allow_origin_lets_a_listed_foreign_origin_upgrade() {
    let server = Server::start(&["--allow-origin", "https://chat.example"]);
    let mut ws = Ws::connect_with(server.addr, &["Origin: https://chat.example"]);
    assert_eq!(ws.identify(0), 4096);
    let answer = http_exchange(
        server.addr,
        upgrade_request(server.addr, &["Origin: https://other.example"]).as_bytes(),
    );
    assert_eq!(answer.status_line, "HTTP/1.1 403 Forbidden");
}

#[test]
fn with_no_web_get_is_garbage_on_the_binary_path() {
    let server = Server::start(&["--no-web"]);
    let mut raw = server.raw();
    raw.send(&get("/"));
    // "GET / HT": type 0x4745, origin 0x5420, dest 0x2f20, seq 0x4854.
    expect_exact(&mut raw, &hdr(Kind::Erro, S, 0, 0x4854));
    raw.expect_closed();
    let mut raw = server.raw();
    raw.send(upgrade_request(server.addr, &[]).as_bytes());
    // "GET /ws ": seq 0x7320.
    expect_exact(&mut raw, &hdr(Kind::Erro, S, 0, 0x7320));
    raw.expect_closed();
}

#[test]
fn oi_one_byte_at_a_time_is_binary_with_web_on() {
    let server = Server::start(&[]);
    let mut clients = Vec::new();
    for (oi, ok) in [
        (hdr(Kind::Oi, 0, S, 0), hdr(Kind::Ok, S, 4096, 0)),
        (hdr(Kind::Oi, 4096, S, 0x4745), hdr(Kind::Ok, S, 1, 0x4745)),
    ] {
        let mut raw = server.raw();
        for byte in &oi {
            raw.send(&[*byte]);
        }
        expect_exact(&mut raw, &ok);
        clients.push(raw);
    }
    // A frame whose first bytes spell nothing HTTP stays binary: garbage
    // gets its ERRO exactly as with --no-web.
    let mut raw = server.raw();
    raw.send(b"G\x00\x00\x00\x00\x00\x12\x34");
    expect_exact(&mut raw, &hdr(Kind::Erro, S, 0, 0x1234));
    raw.expect_closed();
}
