//! Several nodes over one Redis (CLUSTER.md, issue 25): real `server`
//! processes with `--cluster`, and a real `redis-server` each test starts
//! on a port it reserved, in a directory of its own. Asserts one id space
//! (parallel OIs get unique, lowest ids), routing across nodes with exact
//! bytes and OK only after the remote acknowledgement, a killed node's ids
//! freed and its pending deliveries answered ERRO, and malformed messages
//! on the engine's channels dropped without harm.

use crate::util::*;
use evchat::proto::{ClientId, Frame, Kind, SERVER_ID};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long a killed node may hold its ids (the bound).
const IDS_FREED_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` of the test's own, with no persistence.
struct Redis {
    /// Killed when the test ends (dropped).
    _proc: Proc,
    url: String,
    _dir: TempDir,
    _port: ReservedPort,
}

impl Redis {
    fn start(name: &str) -> Redis {
        let port = ReservedPort::new();
        let dir = TempDir::new(name);
        let port_arg = port.addr().port().to_string();
        let proc = Proc::spawn_with(
            "redis-server",
            &[
                "--port",
                &port_arg,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.arg(),
            ],
        );
        proc.stdout.skip_until("redis ready", TIMEOUT, |line| {
            line.contains("Ready to accept connections")
        });
        Redis {
            _proc: proc,
            url: format!("redis://127.0.0.1:{port_arg}"),
            _dir: dir,
            _port: port,
        }
    }

    fn node(&self, name: &str) -> Server {
        Server::start(&["--cluster", &self.url, "--node", name])
    }

    fn client(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// Sends `frame` from `emitter` until `exhibitor` receives it, and
/// returns what it received: a node learns of an id claimed elsewhere a
/// moment after the claim's OK, and until then the MSG has no target and
/// is answered ERRO (nothing delivered), so it is sent again. Polls both
/// connections without blocking, with a deadline.
fn deliver(emitter: &mut Raw, exhibitor: &mut Raw, frame: &Frame) -> Frame {
    let deadline = Instant::now() + TIMEOUT;
    emitter.send_frame(frame);
    loop {
        if let Some(got) = exhibitor.try_frame() {
            return got.expect("the exhibitor is still connected");
        }
        if let Some(reply) = emitter.try_frame() {
            let refused = Frame::bare(Kind::Erro, SERVER_ID, frame.origin, frame.seq);
            assert_eq!(reply.expect("the emitter is still connected"), refused);
            emitter.send_frame(frame);
        }
        assert!(Instant::now() < deadline, "never delivered: {frame}");
        // Polling, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// An exhibitor that answers every frame it receives with OK, echoing its seq.
fn acknowledge(exhibitor: &mut Raw) -> Frame {
    let frame = exhibitor.expect_frame();
    exhibitor.send_frame(&Frame::bare(Kind::Ok, frame.dest, SERVER_ID, frame.seq));
    frame
}

#[test]
fn parallel_ois_on_three_nodes_get_unique_lowest_ids() {
    let redis = Redis::start("cluster-ids");
    let nodes = [redis.node("a"), redis.node("b"), redis.node("c")];
    let per_node = 6;
    let ids: Vec<(ClientId, ClientId)> = std::thread::scope(|scope| {
        let handles: Vec<_> = nodes
            .iter()
            .flat_map(|node| (0..per_node).map(move |_| node.addr))
            .map(|addr| {
                scope.spawn(move || {
                    let mut exhibitor = Raw::connect(addr);
                    let mut emitter = Raw::connect(addr);
                    exhibitor.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
                    emitter.send_frame(&Frame::bare(Kind::Oi, 1, SERVER_ID, 0));
                    let ids = (
                        evchat::testing::raw_client::assigned_id(&exhibitor.expect_frame()),
                        evchat::testing::raw_client::assigned_id(&emitter.expect_frame()),
                    );
                    // Held open until every id is handed out.
                    (ids, exhibitor, emitter)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        results.into_iter().map(|(ids, _, _)| ids).collect()
    });
    let n = nodes.len() * per_node;
    let exhibitors: BTreeSet<ClientId> = ids.iter().map(|&(e, _)| e).collect();
    let emitters: BTreeSet<ClientId> = ids.iter().map(|&(_, m)| m).collect();
    assert_eq!(
        exhibitors,
        (4096..4096 + n as ClientId).collect(),
        "{ids:?}"
    );
    assert_eq!(emitters, (1..=n as ClientId).collect(), "{ids:?}");
}

#[test]
fn unicast_and_broadcast_cross_nodes_byte_for_byte_with_ok_after_the_ack() {
    let redis = Redis::start("cluster-route");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    let mut on_a = a.raw();
    let y = on_a.identify_exhibitor();
    let mut emitter = a.raw();
    let e = emitter.identify_emitter(1);
    assert_ne!(x, y);

    // Unicast to the exhibitor on the other node: the frame arrives as
    // sent, and the emitter's OK waits for that exhibitor's OK.
    let unicast = Frame::msg(e, x, 7, bytes::Bytes::from_static("über".as_bytes())).unwrap();
    let got = deliver(&mut emitter, &mut on_b, &unicast);
    assert_bytes(&unicast.to_bytes(), &got.to_bytes());
    emitter.expect_silence();
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 7));
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 7)
    );

    // Broadcast: both exhibitors, one per node, get the same bytes; the OK
    // waits for both acknowledgements.
    let broadcast = Frame::msg(e, 0, 8, bytes::Bytes::from_static(b"to all")).unwrap();
    emitter.send_frame(&broadcast);
    for exhibitor in [&mut on_a, &mut on_b] {
        let got = exhibitor.expect_frame();
        assert_bytes(&broadcast.to_bytes(), &got.to_bytes());
    }
    on_a.send_frame(&Frame::bare(Kind::Ok, y, SERVER_ID, 8));
    emitter.expect_silence();
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 8));
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 8)
    );

    // A MSG to an emitter on the other node reaches its paired exhibitor
    // there; an ERRO from the target makes the reply ERRO.
    let mut paired = b.raw();
    let p = paired.identify_emitter(x);
    let to_pair = Frame::msg(e, p, 9, bytes::Bytes::from_static(b"pair")).unwrap();
    let got = deliver(&mut emitter, &mut on_b, &to_pair);
    assert_bytes(&to_pair.to_bytes(), &got.to_bytes());
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 9));
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 9)
    );
    let refused = Frame::msg(e, p, 10, bytes::Bytes::from_static(b"no")).unwrap();
    emitter.send_frame(&refused);
    assert_bytes(&refused.to_bytes(), &on_b.expect_frame().to_bytes());
    on_b.send_frame(&Frame::bare(Kind::Erro, x, SERVER_ID, 10));
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Erro, SERVER_ID, e, 10)
    );
    drop(paired);
}

#[test]
fn clist_lists_every_node_s_clients() {
    let redis = Redis::start("cluster-clist");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    let mut emitter_b = b.raw();
    let eb = emitter_b.identify_emitter(1);
    let mut on_a = a.raw();
    let y = on_a.identify_exhibitor();
    let mut emitter = a.raw();
    let e = emitter.identify_emitter(1);
    let mut want: Vec<ClientId> = vec![x, eb, y, e];
    want.sort_unstable();
    // The CLIST is built from what node A knows: poll until it knows all.
    let deadline = Instant::now() + TIMEOUT;
    let mut seq = 0;
    loop {
        seq += 1;
        emitter.send_frame(&Frame::bare(Kind::Creq, e, y, seq));
        let list = acknowledge(&mut on_a);
        assert_eq!(
            emitter.expect_frame(),
            Frame::bare(Kind::Ok, SERVER_ID, e, seq)
        );
        let want_list = Frame::clist(SERVER_ID, y, list.seq, want.clone()).unwrap();
        if list == want_list {
            break;
        }
        assert!(Instant::now() < deadline, "CLIST never whole: {list}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_node_frees_its_ids_in_time_and_its_pending_deliveries_fail() {
    let redis = Redis::start("cluster-kill");
    let a = redis.node("a");
    let mut b = redis.node("b");
    let mut silent = b.raw();
    let x = silent.identify_exhibitor();
    let mut emitter = a.raw();
    let e = emitter.identify_emitter(1);
    // Delivered to B's exhibitor, which never acknowledges.
    let msg = Frame::msg(e, x, 3, bytes::Bytes::from_static(b"are you there")).unwrap();
    let got = deliver(&mut emitter, &mut silent, &msg);
    assert_bytes(&msg.to_bytes(), &got.to_bytes());
    b.proc.signal(libc::SIGKILL);
    b.proc.wait();
    let killed = Instant::now();
    // The delivery pending on the dead node is answered ERRO, never OK.
    assert_eq!(
        emitter
            .frame_within(IDS_FREED_WITHIN)
            .expect("emitter still connected"),
        Frame::bare(Kind::Erro, SERVER_ID, e, 3)
    );
    // Its exhibitor id is free again, for an OI on the surviving node.
    loop {
        let mut again = a.raw();
        if again.identify_exhibitor() == x {
            break;
        }
        assert!(
            killed.elapsed() < IDS_FREED_WITHIN,
            "id {x} not freed in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(killed.elapsed() < IDS_FREED_WITHIN);
    drop(silent);
}

#[test]
fn malformed_messages_from_redis_are_dropped_with_a_log_line_and_nothing_else_changes() {
    let redis = Redis::start("cluster-garbage");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    let mut emitter = a.raw();
    let e = emitter.identify_emitter(1);
    let before = Frame::msg(e, x, 1, bytes::Bytes::from_static(b"before")).unwrap();
    deliver(&mut emitter, &mut on_b, &before);
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 1));
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 1)
    );

    let mut con = redis.client();
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("evchat:node:*")
        .query(&mut con)
        .unwrap();
    assert_eq!(channels.len(), 2, "{channels:?}");
    for channel in &channels {
        let garbage: &[u8] = b"E\x01\0\0\0\0\0\0\0\x01\x09junk";
        let heard: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(garbage)
            .query(&mut con)
            .unwrap();
        assert_eq!(heard, 1);
    }
    let heard: i64 = redis::cmd("PUBLISH")
        .arg("evchat:chg")
        .arg("+99999 nonsense")
        .query(&mut con)
        .unwrap();
    assert_eq!(heard, 2);
    for node in [&a, &b] {
        node.proc
            .stderr
            .skip_until("the dropped batch", TIMEOUT, |line| {
                line.contains("malformed batch dropped")
            });
        node.proc
            .stderr
            .skip_until("the dropped change", TIMEOUT, |line| {
                line.contains("malformed change dropped")
            });
    }
    // Routing goes on as before, in both directions of the same pair.
    let after = Frame::msg(e, x, 2, bytes::Bytes::from_static(b"after")).unwrap();
    emitter.send_frame(&after);
    assert_bytes(&after.to_bytes(), &acknowledge(&mut on_b).to_bytes());
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 2)
    );
    // Nothing else was delivered or said on either side.
    on_b.expect_silence();
    emitter.expect_silence();
}
