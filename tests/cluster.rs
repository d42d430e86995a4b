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

/// A `redis-server` of the test's own, with no persistence (shared with
/// `cluster_names.rs`).
pub(crate) struct Redis {
    /// Killed when the test ends (dropped), or by the test.
    pub(crate) proc: Proc,
    pub(crate) url: String,
    /// The persistence flags it was started with, for a restart.
    persistence: Vec<String>,
    _dir: TempDir,
    _port: ReservedPort,
}

impl Redis {
    pub(crate) fn start(name: &str) -> Redis {
        Redis::start_with(name, &["--appendonly", "no"])
    }

    /// One that keeps every write in its append-only file, synced before
    /// each answer, so that `kill -9` and a restart lose nothing.
    pub(crate) fn start_durable(name: &str) -> Redis {
        Redis::start_with(name, &["--appendonly", "yes", "--appendfsync", "always"])
    }

    fn start_with(name: &str, persistence: &[&str]) -> Redis {
        let port = ReservedPort::new();
        let dir = TempDir::new(name);
        let port_arg = port.addr().port().to_string();
        let proc = Redis::spawn(&port_arg, &dir, persistence);
        Redis {
            proc,
            url: format!("redis://127.0.0.1:{port_arg}"),
            persistence: persistence.iter().map(|s| s.to_string()).collect(),
            _dir: dir,
            _port: port,
        }
    }

    fn spawn(port: &str, dir: &TempDir, persistence: &[&str]) -> Proc {
        let mut args = vec!["--port", port, "--bind", "127.0.0.1", "--save", ""];
        args.extend_from_slice(persistence);
        args.extend_from_slice(&["--dir", dir.arg()]);
        let proc = Proc::spawn_with("redis-server", &args);
        proc.stdout.skip_until("redis ready", TIMEOUT, |line| {
            line.contains("Ready to accept connections")
        });
        proc
    }

    /// `kill -9`, then the same server again on the same port and directory.
    fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// `kill -9`.
    pub(crate) fn kill(&mut self) {
        self.proc.signal(libc::SIGKILL);
        self.proc.wait();
    }

    /// The same server again on the same port and directory, once killed.
    pub(crate) fn restart(&mut self) {
        let port = self._port.addr().port().to_string();
        let persistence: Vec<&str> = self.persistence.iter().map(String::as_str).collect();
        self.proc = Redis::spawn(&port, &self._dir, &persistence);
    }

    pub(crate) fn node(&self, name: &str) -> Server {
        self.node_with(name, &[])
    }

    pub(crate) fn node_with(&self, name: &str, extra: &[&str]) -> Server {
        let mut args = vec!["--cluster", &self.url, "--node", name];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    pub(crate) fn client(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// The channels the nodes subscribe to, one a node (`PUBSUB CHANNELS`).
    pub(crate) fn node_channels(&self, con: &mut redis::Connection) -> Vec<String> {
        redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .arg("evchat:node:*")
            .query(con)
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

/// An emitter on `a` and an exhibitor on `b` (with their ids), once one
/// MSG between them went across and its OK came back after the
/// exhibitor's: the two nodes see each other.
fn one_message_across(a: &Server, b: &Server) -> (Raw, ClientId, Raw, ClientId) {
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
    (emitter, e, on_b, x)
}

/// An exhibitor that answers every frame it receives with OK, echoing its seq.
pub(crate) fn acknowledge(exhibitor: &mut Raw) -> Frame {
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
    let (mut emitter, e, mut on_b, x) = one_message_across(&a, &b);

    let mut con = redis.client();
    let channels = redis.node_channels(&mut con);
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
    // Two threads log these (the change on the bridge's subscriber, the
    // batch on the loop): in either order.
    for node in [&a, &b] {
        let mut seen = (false, false);
        while seen != (true, true) {
            let (_, line) = node
                .proc
                .stderr
                .skip_until("the dropped messages", TIMEOUT, |line| {
                    line.contains("malformed batch dropped")
                        || line.contains("malformed change dropped")
                });
            seen.0 |= line.contains("malformed batch dropped");
            seen.1 |= line.contains("malformed change dropped");
        }
    }
    routing_goes_on(&mut emitter, e, &mut on_b, x);
}

/// The second message of [`one_message_across`]'s pair crosses as the
/// first did, and nothing else is delivered or said on either side.
fn routing_goes_on(emitter: &mut Raw, e: ClientId, on_b: &mut Raw, x: ClientId) {
    let after = Frame::msg(e, x, 2, bytes::Bytes::from_static(b"after")).unwrap();
    emitter.send_frame(&after);
    assert_bytes(&after.to_bytes(), &acknowledge(on_b).to_bytes());
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 2)
    );
    on_b.expect_silence();
    emitter.expect_silence();
}

/// Waits until each of `nodes` logs a line containing `needle`.
fn each_logs(nodes: &[&Server], needle: &str) {
    for node in nodes {
        node.proc
            .stderr
            .skip_until(needle, TIMEOUT, |line| line.contains(needle));
    }
}

/// A run of acks is 14 bytes whatever its count: a batch of three runs
/// each claiming 2^32 - 1 acks (from any publisher on a node's channel) is
/// settled no further than the relays the node awaits (none: 1,024 of
/// slack), with one warning for the batch, and routing goes on in both
/// directions. Before, the loop looked up every one of them: eleven seconds
/// in which the node answered nobody (found in review); then it warned once
/// per run, which a 1 MiB batch turns into some 75,000 lines.
#[test]
fn a_run_of_acks_past_the_relays_awaited_is_cut_short_and_routing_goes_on() {
    let redis = Redis::start("cluster-acks-run");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let (mut emitter, e, mut on_b, x) = one_message_across(&a, &b);
    let mut con = redis.client();
    let channels = redis.node_channels(&mut con);
    assert_eq!(channels.len(), 2, "{channels:?}");
    // 'E' 1 | incarnation 99 | three times ACKS relay 0, count 2^32 - 1, OK.
    let mut run: Vec<u8> = b"E\x01\0\0\0\0\0\0\0\x63".to_vec();
    for _ in 0..3 {
        run.push(10);
        run.extend_from_slice(&0u64.to_be_bytes());
        run.extend_from_slice(&u32::MAX.to_be_bytes());
        run.push(1);
    }
    for channel in &channels {
        let heard: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(&run)
            .query(&mut con)
            .unwrap();
        assert_eq!(heard, 1);
    }
    let ignored = 3 * u64::from(u32::MAX) - 1024;
    for node in [&a, &b] {
        let (before, warning) =
            node.proc
                .stderr
                .skip_until("the runs cut short", TIMEOUT, |line| {
                    line.contains("runs of acks past the relays awaited")
                });
        assert!(
            warning.contains(&format!("runs_cut=3 acks_ignored={ignored}")),
            "{warning}"
        );
        assert!(
            !before.iter().any(|line| line.contains("acks past")),
            "{before:?}"
        );
    }
    routing_goes_on(&mut emitter, e, &mut on_b, x);
}

/// A node publishes on a connection of its loop's own (CLUSTER.md,
/// "Publishing from the loop"). Killed, it is given up with a warning,
/// publishing goes on by the command thread at once, and a new connection
/// takes over: messages cross the whole time.
#[test]
fn a_killed_publishing_connection_is_replaced_and_routing_goes_on() {
    let redis = Redis::start("cluster-publisher-killed");
    let (a, b) = (redis.node("a"), redis.node("b"));
    each_logs(&[&a, &b], "cluster: publishing from the loop");
    let (mut emitter, e, mut on_b, x) = one_message_across(&a, &b);
    let mut con = redis.client();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut con).unwrap();
    let ids: Vec<u64> = list
        .lines()
        .filter(|line| line.contains(" name=evchat-publisher "))
        .map(|line| {
            let id = line.strip_prefix("id=").unwrap().split(' ').next().unwrap();
            id.parse().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 2, "{list}");
    for id in ids {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query(&mut con)
            .unwrap();
        assert_eq!(killed, 1);
    }
    each_logs(&[&a, &b], "cluster: publishing connection lost");
    // By the command thread, then again on a new connection of the loop's.
    routing_goes_on(&mut emitter, e, &mut on_b, x);
    each_logs(&[&a], "cluster: publishing from the loop");
    let again = Frame::msg(e, x, 3, bytes::Bytes::from_static(b"again")).unwrap();
    emitter.send_frame(&again);
    assert_bytes(&again.to_bytes(), &acknowledge(&mut on_b).to_bytes());
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 3)
    );
}

/// The loop reads its node's subscription itself once the subscriber
/// thread has made it (CLUSTER.md, "Reading from the loop"). Killed, it is
/// given up with a warning, made again at the next renewal (the id table
/// read again), and messages cross again.
#[test]
fn a_killed_subscription_is_made_again_and_routing_goes_on() {
    let redis = Redis::start("cluster-subscription-killed");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let (mut emitter, e, mut on_b, x) = one_message_across(&a, &b);
    let mut con = redis.client();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut con)
        .unwrap();
    assert_eq!(killed, 2);
    each_logs(&[&a, &b], "cluster: subscription lost");
    each_logs(&[&a, &b], "cluster: resubscribed");
    routing_goes_on(&mut emitter, e, &mut on_b, x);
}

/// The loop reads at most `--cluster-queue` messages off its subscription
/// a turn, so what Redis holds for a node never all sits in its memory at
/// once; the rest is read in the next turns, without waiting for more to
/// come. Twenty malformed batches to a node whose queue holds one are all
/// read (each warned of), and routing goes on.
#[test]
fn a_flood_on_a_nodes_channel_is_read_a_bounded_number_at_a_time_and_all_of_it() {
    let redis = Redis::start("cluster-sub-bound");
    let a = redis.node("a");
    let b = redis.node_with("b", &["--cluster-queue", "1"]);
    let (mut emitter, e, mut on_b, x) = one_message_across(&a, &b);
    let mut con = redis.client();
    let channels = redis.node_channels(&mut con);
    let mut pipe = redis::pipe();
    for channel in &channels {
        for _ in 0..20 {
            pipe.cmd("PUBLISH")
                .arg(channel)
                .arg(b"not a batch")
                .ignore();
        }
    }
    let () = pipe.query(&mut con).unwrap();
    for _ in 0..20 {
        each_logs(&[&a, &b], "cluster: malformed batch dropped");
    }
    routing_goes_on(&mut emitter, e, &mut on_b, x);
}

#[test]
fn with_redis_gone_local_traffic_goes_on_remote_targets_fail_and_ois_are_refused() {
    let mut redis = Redis::start("cluster-engine-down");
    // A long lease, so that the node is still serving (not yet fenced)
    // while the test looks: it fences after 20 s without a renewal.
    let lease = ["--cluster-lease", "30"];
    let (a, b) = (redis.node_with("a", &lease), redis.node_with("b", &lease));
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    let mut on_a = a.raw();
    let y = on_a.identify_exhibitor();
    let mut emitter = a.raw();
    let e = emitter.identify_emitter(1);
    let remote = Frame::msg(e, x, 1, bytes::Bytes::from_static(b"while up")).unwrap();
    deliver(&mut emitter, &mut on_b, &remote);
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 1));
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 1)
    );

    redis.proc.signal(libc::SIGKILL);
    // Gone, sockets and all, before anything is sent.
    redis.proc.wait();
    // Between two clients of one node: as before.
    let local = Frame::msg(e, y, 2, bytes::Bytes::from_static(b"still here")).unwrap();
    emitter.send_frame(&local);
    assert_bytes(&local.to_bytes(), &acknowledge(&mut on_a).to_bytes());
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 2)
    );
    // To another node: ERRO (once the node has noticed; never an OK, and
    // nothing reaches the other node).
    let deadline = Instant::now() + TIMEOUT;
    for seq in 3.. {
        emitter.send_frame(&Frame::msg(e, x, seq, bytes::Bytes::from_static(b"gone")).unwrap());
        assert_eq!(
            emitter.expect_frame(),
            Frame::bare(Kind::Erro, SERVER_ID, e, seq)
        );
        // The first attempts may be published before the bridge sees Redis
        // gone: they fail as unreachable all the same. Wait for the OI.
        let mut newcomer = a.raw();
        newcomer.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
        let answer = newcomer.expect_frame();
        if answer == Frame::bare(Kind::Erro, SERVER_ID, 0, 0) {
            newcomer.expect_closed();
            break;
        }
        // Claimed before Redis went: a real id, then it leaves.
        assert_eq!(answer.kind, Kind::Ok, "{answer}");
        assert!(Instant::now() < deadline, "OIs never refused");
    }
    on_b.expect_silence();
}

/// Redis killed with `kill -9` and started again on its port well within
/// the lease (its data kept in its append-only file): the nodes subscribe
/// again and read the id table again, traffic between them flows again, no
/// node fences itself (no client is sent FLW), and no id is held twice.
#[test]
fn redis_restarted_within_the_lease_is_rejoined_without_a_fence() {
    let mut redis = Redis::start_durable("cluster-redis-restart");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let (mut emitter, e, mut on_b, x) = one_message_across(&a, &b);

    redis.kill_and_restart();

    // Relays fail (ERRO) until node B has subscribed again; then they
    // arrive, byte for byte, and the OK waits for the exhibitor's.
    let after = Frame::msg(e, x, 2, bytes::Bytes::from_static(b"after")).unwrap();
    let got = deliver(&mut emitter, &mut on_b, &after);
    assert_bytes(&after.to_bytes(), &got.to_bytes());
    emitter.expect_silence();
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 2));
    assert_eq!(
        emitter.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 2)
    );
    // And the other way: a new emitter on B reaches a new exhibitor on A.
    let mut on_a = a.raw();
    let y = on_a.identify_exhibitor();
    let mut from_b = b.raw();
    let f = from_b.identify_emitter(1);
    assert!(x != y && e != f, "new ids are fresh: {x} {y} {e} {f}");
    let back = Frame::msg(f, y, 1, bytes::Bytes::from_static(b"back")).unwrap();
    deliver(&mut from_b, &mut on_a, &back);
    on_a.send_frame(&Frame::bare(Kind::Ok, y, SERVER_ID, 1));
    assert_eq!(
        from_b.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, f, 1)
    );
    // Neither node fenced itself: the first clients were never sent FLW,
    // and Redis shows each id held once, by the node that gave it out.
    on_b.expect_silence();
    emitter.expect_silence();
    let owners: std::collections::HashMap<ClientId, u64> = redis::Cmd::hgetall("evchat:owner")
        .query(&mut redis.client())
        .unwrap();
    assert_eq!(owners.len(), 4, "{owners:?}");
    assert_eq!(owners[&x], owners[&f], "{owners:?}");
    assert_eq!(owners[&e], owners[&y], "{owners:?}");
    assert_ne!(owners[&x], owners[&e], "{owners:?}");
}

/// An id (and a HELLO name) whose release Redis could not take (it was
/// down as the client left) is released once Redis is back within the
/// lease: another node's OI is given the id, the lowest free, and its HELLO
/// the name. Before, both stayed held system-wide until the node's
/// incarnation ended (issue 25).
#[test]
fn an_id_released_while_redis_is_down_is_free_again_when_it_returns() {
    use crate::identity::{hello, helloack};
    let mut redis = Redis::start_durable("cluster-release-retry");
    let (a, b) = (redis.node("a"), redis.node("b"));
    let mut on_a = a.raw();
    on_a.send(&hello(b"carol", b""));
    expect_exact(&mut on_a, &helloack(0, crate::rooms::PLAIN, b"carol"));
    let x = on_a.identify_exhibitor();
    redis.kill();
    drop(on_a);
    // Node A's release meets no Redis.
    a.proc
        .stderr
        .skip_until("the refused release", TIMEOUT, |line| {
            line.contains("engine call failed")
        });
    redis.restart();
    let back = Instant::now();
    loop {
        let mut on_b = b.raw();
        on_b.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
        let answer = on_b.expect_frame();
        if answer.kind == Kind::Ok && answer.dest == x {
            break;
        }
        assert!(
            back.elapsed() < IDS_FREED_WITHIN,
            "id {x} still held after Redis returned: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The name was released in the same retry, before the id.
    carol_is_free_on(&b, &a, "releases refused earlier went through");
}

/// Node `b` gives the name carol to a HELLO, and node `a` logged `line`
/// (the releases that freed it).
fn carol_is_free_on(b: &Server, a: &Server, line: &str) {
    use crate::identity::{hello, helloack};
    let mut carol = b.raw();
    carol.send(&hello(b"carol", b""));
    expect_exact(&mut carol, &helloack(0, crate::rooms::PLAIN, b"carol"));
    a.proc
        .stderr
        .skip_until(line, TIMEOUT, |logged| logged.contains(line));
}

/// Waits until `node` has joined the system: a node listens before its
/// bridge joins, and one still joining when Redis is stopped refuses
/// every claim until Redis is back and it has joined.
pub(crate) fn joined(node: &Server) {
    node.proc
        .stderr
        .skip_until("the join", TIMEOUT, |line| line.contains("cluster: joined"));
}

/// An exhibitor of `node` (whose bridge queue holds one request) that
/// claimed `name` first if given, with its id. A claim may meet the queue
/// still holding the one before it (refused, as it should be): each is
/// asked until taken.
pub(crate) fn claimed_through_a_queue_of_one(
    node: &Server,
    name: Option<&[u8]>,
) -> (Raw, ClientId) {
    use crate::identity::{hello, helloack};
    for _ in 0..100 {
        let mut client = node.raw();
        if let Some(name) = name {
            client.send(&hello(name, b""));
            let want = helloack(0, crate::rooms::PLAIN, name);
            if client.expect_bytes(want.len()) != want {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        client.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
        let answer = client.expect_frame();
        if answer.kind == Kind::Ok {
            return (client, answer.dest);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the node refused every claim");
}

/// A full bridge queue delays a release but never drops it: node A's
/// queue holds one request, Redis is stopped while four of its clients
/// (one named) leave, so the command thread blocks on the first release
/// and the queue turns the rest away. Once Redis runs again, node B's
/// OIs get exactly those four ids and its HELLO the name. (Before, the
/// releases the queue turned away were given up: their ids stayed held
/// until node A's incarnation ended.)
#[test]
fn releases_a_full_bridge_queue_turned_away_go_through_once_it_drains() {
    let redis = Redis::start("cluster-release-queue");
    // A lease long enough that nobody is fenced while Redis is stopped.
    let a = redis.node_with("a", &["--cluster-queue", "1", "--cluster-lease", "30"]);
    let b = redis.node_with("b", &["--cluster-lease", "30"]);
    joined(&b);
    let mut leaving = Vec::new();
    let mut ids = BTreeSet::new();
    for name in [Some(&b"carol"[..]), None, None, None] {
        let (client, id) = claimed_through_a_queue_of_one(&a, name);
        ids.insert(id);
        leaving.push(client);
    }
    releases_outrun_a_stopped_redis(&redis, &a, leaving);
    redis.proc.signal(libc::SIGCONT);
    let _held = given_all(&b, &ids);
    carol_is_free_on(
        &b,
        &a,
        "releases that waited for the engine's queue went through",
    );
}

/// Stops Redis, then `leaving` hang up on `node` (with a bridge queue of
/// one): returns once the queue has turned a release away, so releases
/// wait in the loop. The line is matched whole: the set-up's claims
/// through the same queue log "engine queue full" too (an OI refused), and
/// stopping at one of those let the departures, carol's among them, come
/// in one turn with her release first into the queue.
pub(crate) fn releases_outrun_a_stopped_redis(redis: &Redis, node: &Server, leaving: Vec<Raw>) {
    redis.proc.signal(libc::SIGSTOP);
    drop(leaving);
    node.proc
        .stderr
        .skip_until("the queue turning a release away", TIMEOUT, |line| {
            line.contains("engine queue full; releases wait for room")
        });
}

/// Exhibitors of `node` until it has given out every one of `ids` (once
/// their releases elsewhere went through), within [`IDS_FREED_WITHIN`];
/// returns the clients holding them.
pub(crate) fn given_all(node: &Server, ids: &BTreeSet<ClientId>) -> Vec<Raw> {
    let since = Instant::now();
    let mut held = Vec::new();
    let mut got = BTreeSet::new();
    while got != *ids {
        let mut client = node.raw();
        let id = client.identify_exhibitor();
        if ids.contains(&id) {
            got.insert(id);
            held.push(client);
            continue;
        }
        // Not one of them: released elsewhere not yet (or never).
        drop(client);
        assert!(
            since.elapsed() < IDS_FREED_WITHIN,
            "ids {:?} of {ids:?} still held (the node gave out {id})",
            ids.difference(&got).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    held
}

#[test]
fn a_node_stopped_past_its_lease_is_reaped_and_fences_itself_when_it_wakes() {
    let redis = Redis::start("cluster-sigstop");
    let a = redis.node("a");
    let b = redis.node("b");
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    b.proc.signal(libc::SIGSTOP);
    // Its lease runs out and node A's reap frees its id: an OI on A
    // is given it (polled, within the bound).
    let stopped = Instant::now();
    // Kept open: A holds the id while B wakes.
    let _holder = loop {
        let mut again = a.raw();
        if again.identify_exhibitor() == x {
            break again;
        }
        assert!(
            stopped.elapsed() < IDS_FREED_WITHIN,
            "id {x} not freed in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    b.proc.signal(libc::SIGCONT);
    // On waking it learns it was reaped and stops serving: FLW to its
    // client, as at shutdown.
    let flw = on_b.expect_frame();
    assert_eq!(
        (flw.kind, flw.origin, flw.dest),
        (Kind::Flw, SERVER_ID, x),
        "{flw}"
    );
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, flw.seq));
    on_b.expect_closed();
    b.proc
        .stderr
        .skip_until("the fence", TIMEOUT, |line| line.contains("fenced"));
    // It joins again as a new incarnation and serves new clients. It
    // fences twice: when its subscription says it was reaped, and when its
    // renewal fails; a connection made between the two is dismissed by the
    // second (whatever the old incarnation's thread did meanwhile ends with
    // it), so a closed connection is tried again, as an ERRO is.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut fresh = b.raw();
        fresh.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
        let answer = fresh.frame_within(TIMEOUT);
        if let Some(answer) = answer
            && answer.kind == Kind::Ok
        {
            assert_ne!(answer.dest, x, "id {x} held twice");
            break;
        }
        assert!(Instant::now() < deadline, "the node never rejoined");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_cluster_flags_are_refused_with_a_clear_error() {
    for (args, want) in [
        (&["--cluster", "http://127.0.0.1:1"][..], "--cluster: "),
        (
            &["--cluster", "redis+unix:///tmp/evchat-no-such.sock"][..],
            "--cluster: a TCP address is needed",
        ),
        (
            &["--cluster", "redis://127.0.0.1:1", "--cluster-lease", "0"][..],
            "1.5 to 86400",
        ),
        (&["--node", "a"][..], "--cluster"),
    ] {
        let mut all = vec!["0"];
        all.extend_from_slice(args);
        let mut server = Proc::spawn("server", &all);
        assert!(!server.wait().success(), "{args:?}");
        let (_, line) = server
            .stderr
            .skip_until("the error", TIMEOUT, |line| line.contains(want));
        assert!(!line.is_empty());
    }
}

#[test]
fn evchat_check_passes_against_every_node() {
    use crate::check::{
        CHECK_TIMEOUT, HISTORY_ONLY, check_json_with, ids_with, listed_ids, queue_wait,
    };
    let redis = Redis::start("cluster-check");
    // The queue's give-up check waits out the server's --queue-wait.
    let wait = queue_wait();
    let nodes = [
        redis.node_with("a", &["--queue-wait", &wait]),
        redis.node_with("b", &["--queue-wait", &wait]),
    ];
    // The nodes keep no history: the offline TELL's checks are not asked.
    let mut listed: BTreeSet<String> = listed_ids().into_iter().collect();
    for id in HISTORY_ONLY {
        listed.remove(*id);
    }
    let mut con = redis.client();
    for node in &nodes {
        // The last run's clients are gone and their ids released, so that
        // `lowest-free-id` sees the whole system free.
        wait_until("every id released", || {
            let held: i64 = redis::cmd("BITCOUNT")
                .arg("evchat:ids")
                .query(&mut con)
                .unwrap();
            held == 0
        });
        let (code, seen, report) = check_json_with(&node.target(), CHECK_TIMEOUT, false);
        assert_eq!(ids_with(&seen, "pass"), listed, "{report:#}");
        assert_eq!(
            ids_with(&seen, "skip"),
            HISTORY_ONLY.iter().map(|id| id.to_string()).collect()
        );
        assert_eq!(code, 0);
    }
}

/// OI with `origin` (an exhibitor id) on `node` until it is answered OK
/// (the node learns of an exhibitor on another node a moment after its
/// claim; until then the OI is refused, as for no such exhibitor, and
/// closed). Polls with a deadline; returns the connection and its id.
fn pair_with(node: &Server, exhibitor: ClientId) -> (Raw, ClientId) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut raw = node.raw();
        raw.send_frame(&Frame::bare(Kind::Oi, exhibitor, SERVER_ID, 0));
        let answer = raw.expect_frame();
        if answer.kind == Kind::Ok {
            return (raw, evchat::testing::raw_client::assigned_id(&answer));
        }
        assert_eq!(answer, Frame::bare(Kind::Erro, SERVER_ID, 0, 0));
        raw.expect_closed();
        assert!(Instant::now() < deadline, "never paired with {exhibitor}");
        // Polling for the replica, bounded by the deadline above.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_pair_may_straddle_nodes_route_through_a_third_and_its_flw_cascades() {
    let redis = Redis::start("cluster-pairs");
    let (a, b, c) = (redis.node("a"), redis.node("b"), redis.node("c"));
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    let (mut paired, e) = pair_with(&a, x);

    // To its own id: its exhibitor on the other node, byte for byte, and
    // the OK after that exhibitor's.
    let own = Frame::msg(e, e, 1, bytes::Bytes::from_static(b"to mine")).unwrap();
    paired.send_frame(&own);
    assert_bytes(&own.to_bytes(), &on_b.expect_frame().to_bytes());
    paired.expect_silence();
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 1));
    assert_eq!(
        paired.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 1)
    );

    // From the exhibitor's node, and from a third node (through the
    // emitter's node), to the emitter's id: the same exhibitor.
    for node in [&b, &c] {
        let mut other = node.raw();
        let o = other.identify_emitter(1);
        let to_pair = Frame::msg(o, e, 2, bytes::Bytes::from_static(b"via the pair")).unwrap();
        let got = deliver(&mut other, &mut on_b, &to_pair);
        assert_bytes(&to_pair.to_bytes(), &got.to_bytes());
        on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 2));
        assert_eq!(other.expect_frame(), Frame::bare(Kind::Ok, SERVER_ID, o, 2));
    }

    // Taken: a second emitter, on a third node, is refused.
    let mut late = c.raw();
    late.send_frame(&Frame::bare(Kind::Oi, x, SERVER_ID, 0));
    assert_eq!(
        late.expect_frame(),
        Frame::bare(Kind::Erro, SERVER_ID, 0, 0)
    );
    late.expect_closed();

    // Rule 6 across nodes: the emitter's FLW gets its OK, then its
    // exhibitor is dismissed on its own node.
    paired.send_frame(&Frame::bare(Kind::Flw, e, SERVER_ID, 3));
    assert_eq!(
        paired.expect_frame(),
        Frame::bare(Kind::Ok, SERVER_ID, e, 3)
    );
    paired.expect_closed();
    let flw = on_b.expect_frame();
    assert_eq!(
        (flw.kind, flw.origin, flw.dest),
        (Kind::Flw, SERVER_ID, x),
        "{flw}"
    );
    on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, flw.seq));
    on_b.expect_closed();
}

#[test]
fn a_pairing_race_from_two_nodes_has_exactly_one_winner() {
    let redis = Redis::start("cluster-pair-race");
    let (a, b, c) = (redis.node("a"), redis.node("b"), redis.node("c"));
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    // Both nodes know of the exhibitor before the race: each routes to it.
    for node in [&a, &c] {
        let mut probe = node.raw();
        let p = probe.identify_emitter(1);
        let hello = Frame::msg(p, x, 1, bytes::Bytes::from_static(b"probe")).unwrap();
        deliver(&mut probe, &mut on_b, &hello);
        on_b.send_frame(&Frame::bare(Kind::Ok, x, SERVER_ID, 1));
        assert_eq!(probe.expect_frame(), Frame::bare(Kind::Ok, SERVER_ID, p, 1));
    }
    let answers: Vec<(Frame, Raw)> = std::thread::scope(|scope| {
        let racers: Vec<_> = [&a, &c]
            .into_iter()
            .map(|node| {
                let addr = node.addr;
                scope.spawn(move || {
                    let mut raw = Raw::connect(addr);
                    raw.send_frame(&Frame::bare(Kind::Oi, x, SERVER_ID, 0));
                    (raw.expect_frame(), raw)
                })
            })
            .collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let winners = answers.iter().filter(|(f, _)| f.kind == Kind::Ok).count();
    assert_eq!(
        winners,
        1,
        "{:?}",
        answers
            .iter()
            .map(|(f, _)| f.to_string())
            .collect::<Vec<_>>()
    );
    for (answer, mut raw) in answers {
        if answer.kind == Kind::Erro {
            assert_eq!(answer, Frame::bare(Kind::Erro, SERVER_ID, 0, 0));
            raw.expect_closed();
        }
    }
}

#[test]
fn when_the_emitter_s_node_is_killed_its_exhibitor_on_another_node_is_dismissed() {
    let redis = Redis::start("cluster-pair-kill");
    let mut a = redis.node("a");
    let b = redis.node("b");
    let mut on_b = b.raw();
    let x = on_b.identify_exhibitor();
    let (_paired, _e) = pair_with(&a, x);
    a.proc.signal(libc::SIGKILL);
    a.proc.wait();
    // Rule 6: an emitter gone without FLW dismisses its exhibitor.
    let flw = on_b
        .frame_within(IDS_FREED_WITHIN)
        .expect("the exhibitor is still connected");
    assert_eq!(
        (flw.kind, flw.origin, flw.dest),
        (Kind::Flw, SERVER_ID, x),
        "{flw}"
    );
}
