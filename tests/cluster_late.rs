//! A call to Redis that runs late (CLUSTER.md, "The lease and fencing"): the node gave
//! up waiting for its answer and hung up, but its bytes were still on the
//! way (a partition held them; TCP sends them again once it heals). Real
//! `redis-server`s and nodes: four tests put a proxy of their own between
//! a node and Redis, holding one call's bytes until it is handed on (a
//! release, an id's claim, a name's claim, a room's JOIN); one restarts
//! Redis under a stopped node.

use crate::cluster::{Redis, joined};
use crate::util::*;
use evchat::proto::{Frame, Kind, SERVER_ID};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What Redis did with the held call once it reached it.
#[derive(Debug, PartialEq, Eq)]
enum Late {
    /// It ran the call and answered this.
    Ran(Vec<u8>),
    /// It had closed the connection: the call never ran.
    Closed,
}

/// A connection whose client hung up while its call was held: the side
/// towards Redis, the held bytes, and what Redis does next on it.
struct Held {
    to_redis: TcpStream,
    bytes: Vec<u8>,
    outcome: Receiver<Late>,
}

/// How the proxy is armed: the pattern to hold a call at, and whether to
/// hand the held bytes to Redis as soon as the node hangs up.
struct Arm {
    pattern: Vec<u8>,
    run_on_hang_up: bool,
}

/// A TCP proxy in front of Redis that forwards every byte both ways, except
/// that once armed with a pattern, the first chunk a node sends containing
/// it, and everything after it on that connection, is held back. When the
/// node hangs up on that connection, the proxy keeps its side towards
/// Redis open, as a partition's retransmission would, and either waits for
/// the test or (`run_on_hang_up`, a stopped Redis resuming) hands the bytes
/// on at once, forwarding nothing else until Redis has answered them.
struct LateProxy {
    url: String,
    arm: Arc<Mutex<Option<Arm>>>,
    held: Receiver<Held>,
}

impl LateProxy {
    fn start(redis_url: &str) -> LateProxy {
        let redis = redis_url.trim_start_matches("redis://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let arm = Arc::new(Mutex::new(None));
        let (held_tx, held) = channel();
        let armed = Arc::clone(&arm);
        // Taken for every chunk forwarded, and held while a late call runs.
        let gate = Arc::new(Mutex::new(()));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&redis) else {
                    return;
                };
                let (tx, outcome) = channel();
                let gone = Arc::new(AtomicBool::new(false));
                let (from, to) = (server.try_clone().unwrap(), client.try_clone().unwrap());
                answers(from, to, Arc::clone(&gone), tx);
                let (armed, held_tx) = (Arc::clone(&armed), held_tx.clone());
                let gate = Arc::clone(&gate);
                std::thread::spawn(move || {
                    let ends = Ends {
                        outcome,
                        held_tx,
                        gone,
                        gate,
                    };
                    calls(client, server, &armed, ends)
                });
            }
        });
        LateProxy { url, arm, held }
    }

    /// Holds the next call whose bytes contain `pattern`.
    fn hold_call_with(&self, pattern: &[u8]) {
        self.arm(pattern, false);
    }

    /// Holds the next call whose bytes contain `pattern`, and hands it to
    /// Redis the moment the node hangs up, before anything else.
    fn run_late_call_with(&self, pattern: &[u8]) {
        self.arm(pattern, true);
    }

    fn arm(&self, pattern: &[u8], run_on_hang_up: bool) {
        let pattern = pattern.to_vec();
        *self.arm.lock().unwrap() = Some(Arm {
            pattern,
            run_on_hang_up,
        });
    }

    /// Once the node has hung up on the held call's connection, hands the
    /// held bytes to Redis: what Redis did with them.
    fn deliver_held(&self) -> Late {
        let held = self
            .held
            .recv_timeout(TIMEOUT)
            .expect("no call held and hung up on");
        let mut to_redis = held.to_redis;
        // Redis may have closed it already: the write then fails, or is
        // answered with a reset; either way the outcome says.
        let _ = to_redis.write_all(&held.bytes);
        held.outcome
            .recv_timeout(TIMEOUT)
            .expect("Redis neither answered nor closed")
    }
}

/// Redis → node: forwarded until the node has hung up (`gone`); what comes
/// after that, or Redis closing, is told on `outcome`.
fn answers(mut from: TcpStream, mut to: TcpStream, gone: Arc<AtomicBool>, outcome: Sender<Late>) {
    std::thread::spawn(move || {
        let mut buf = vec![0; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = outcome.send(Late::Closed);
                    return;
                }
                Ok(n) => {
                    if gone.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                        let _ = outcome.send(Late::Ran(buf[..n].to_vec()));
                    }
                }
            }
        }
    });
}

/// What one connection's node → Redis side reports to, and shares.
struct Ends {
    outcome: Receiver<Late>,
    held_tx: Sender<Held>,
    gone: Arc<AtomicBool>,
    gate: Arc<Mutex<()>>,
}

/// Node → Redis: forwarded, but from the armed pattern on, held; a held
/// connection the node hangs up on is passed to the test (run first if so
/// armed).
fn calls(mut from: TcpStream, mut to: TcpStream, arm: &Mutex<Option<Arm>>, ends: Ends) {
    let mut holding: Option<(Vec<u8>, bool)> = None;
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if holding.is_none() {
            let mut armed = arm.lock().unwrap();
            let hit = armed.as_ref().is_some_and(|arm| {
                let pattern = &arm.pattern;
                chunk.windows(pattern.len()).any(|w| w == pattern)
            });
            if hit {
                let run = armed.take().expect("hit above").run_on_hang_up;
                holding = Some((Vec::new(), run));
            }
        }
        match &mut holding {
            Some((bytes, _)) => bytes.extend_from_slice(chunk),
            None => {
                let _open = ends.gate.lock().unwrap();
                if to.write_all(chunk).is_err() {
                    break;
                }
            }
        }
    }
    ends.gone.store(true, Ordering::SeqCst);
    match holding {
        Some((bytes, true)) => {
            // Run now, before any other connection's bytes go on.
            let _shut = ends.gate.lock().unwrap();
            let _ = to.write_all(&bytes);
            let ran = ends
                .outcome
                .recv_timeout(TIMEOUT)
                .expect("Redis never answered");
            let (told, outcome) = channel();
            told.send(ran).unwrap();
            let _ = ends.held_tx.send(Held {
                to_redis: to,
                bytes: Vec::new(),
                outcome,
            });
        }
        Some((bytes, false)) => {
            let _ = ends.held_tx.send(Held {
                to_redis: to,
                bytes,
                outcome: ends.outcome,
            });
        }
        None => {
            let _ = to.shutdown(Shutdown::Write);
        }
    }
}

/// A Redis of the test's own, node A on it through a [`LateProxy`] (once
/// joined), and node B straight on it.
fn behind_a_proxy(name: &str) -> (Redis, LateProxy, Server, Server) {
    let redis = Redis::start(name);
    let proxy = LateProxy::start(&redis.url);
    let a = Server::start(&["--cluster", &proxy.url, "--node", "a"]);
    joined(&a);
    let b = redis.node("b");
    (redis, proxy, a, b)
}

/// Whether Redis's id bitmap has `id` held.
fn held_in_redis(redis: &Redis, id: u16) -> bool {
    let mut con = redis.client();
    let bit: u8 = redis::cmd("GETBIT")
        .arg("evchat:ids")
        .arg(id)
        .query(&mut con)
        .unwrap();
    bit == 1
}

/// Polls until Redis has `id` free (bounded).
fn freed_in_redis(redis: &Redis, id: u16) {
    let since = Instant::now();
    while held_in_redis(redis, id) {
        assert!(
            since.elapsed() < TIMEOUT * 2,
            "id {id} never freed in Redis"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A release the node gave up on (no answer in time) but that reached
/// Redis only after the node had released the id again on a new
/// connection and given it to a new client: the late release must not
/// free the id under its new holder, or another node would be given the
/// same id (rule 1). The node kills its abandoned connection before using
/// a new one, so the late call never runs.
#[test]
fn a_release_that_reaches_redis_late_never_frees_an_id_given_again() {
    let (redis, proxy, a, b) = behind_a_proxy("cluster-late-release");
    let mut kept = a.raw();
    let first = kept.identify_exhibitor();
    let mut leaving = a.raw();
    let x = leaving.identify_exhibitor();
    assert_eq!(x, first + 1);
    // One release first, so that Redis has the release script and would
    // run the late call rather than answer that it lacks it.
    let mut once = a.raw();
    let y = once.identify_exhibitor();
    drop(once);
    freed_in_redis(&redis, y);

    let id = x.to_string();
    proxy.hold_call_with(format!("${}\r\n{id}\r\n", id.len()).as_bytes());
    drop(leaving);
    a.proc
        .stderr
        .skip_until("the release given up", TIMEOUT, |line| {
            line.contains("engine call failed")
        });
    // Retried on a new connection, it frees the id, and the node gives it
    // to its next OI (the lowest free).
    freed_in_redis(&redis, x);
    let mut again = a.raw();
    assert_eq!(again.identify_exhibitor(), x);

    // Now the abandoned call reaches Redis.
    assert_eq!(proxy.deliver_held(), Late::Closed);
    assert!(held_in_redis(&redis, x), "the late release freed id {x}");
    let mut on_b = b.raw();
    assert_ne!(on_b.identify_exhibitor(), x, "two nodes gave out id {x}");
}

/// A connection given up on a Redis that was then restarted is not killed
/// on the new one: client ids start again there, and the old one's id may
/// name another client's connection. Node A loses its connection to a
/// killed Redis, is stopped while Redis starts again empty and other
/// clients connect (taking the low ids), and then rejoins: every one of
/// those clients is still connected.
#[test]
fn a_connection_given_up_on_a_restarted_redis_is_not_killed_on_the_new_one() {
    let mut redis = Redis::start("cluster-late-restart");
    let a = redis.node("a");
    joined(&a);
    redis.kill();
    a.proc
        .stderr
        .skip_until("the renewal given up", TIMEOUT, |line| {
            line.contains("lease renewal failed")
        });
    a.proc.signal(libc::SIGSTOP);
    redis.restart();
    let mut others: Vec<redis::Connection> = (0..32).map(|_| redis.client()).collect();
    a.proc.signal(libc::SIGCONT);
    // Redis came back empty: the node's lease is gone, so it fences
    // itself and joins again, each through a new connection.
    joined(&a);
    for (at, con) in others.iter_mut().enumerate() {
        let pong: redis::RedisResult<String> = redis::cmd("PING").query(con);
        assert_eq!(
            pong.ok().as_deref(),
            Some("PONG"),
            "connection {at} was killed"
        );
    }
}

/// The incarnation node `name` joined as (its lease holds its name).
fn incarnation_of(redis: &Redis, name: &str) -> String {
    let mut con = redis.client();
    let leases: Vec<String> = redis::cmd("KEYS")
        .arg("evchat:lease:*")
        .query(&mut con)
        .unwrap();
    let lease = leases
        .into_iter()
        .find(|lease| {
            redis::cmd("GET")
                .arg(lease)
                .query::<String>(&mut con)
                .unwrap()
                == name
        })
        .expect("the node's lease");
    lease.trim_start_matches("evchat:lease:").to_string()
}

/// An exhibitor OI on node A whose claim Redis ran only after the node had
/// given up on it (ERRO to the OI): Redis records the id as node A's, but
/// no client there holds it. At its next renewal node A finds the id it
/// does not know and releases it: node B's next OI is given it. Without
/// that, it stayed held (a phantom in every node's CLIST) until node A's
/// incarnation ended. Members of node A's held set that are no ids (text,
/// bytes that are not UTF-8) are told and left alone, and the comparison
/// goes on.
#[test]
fn an_id_claimed_by_a_call_that_ran_late_is_released() {
    let (redis, proxy, a, b) = behind_a_proxy("cluster-late-claim");
    let held = format!("evchat:held:{}", incarnation_of(&redis, "a"));
    let _: i64 = redis::cmd("SADD")
        .arg(&held)
        .arg("x")
        .arg(&b"\xff\xfe"[..])
        .query(&mut redis.client())
        .unwrap();
    let mut kept = a.raw();
    let first = kept.identify_exhibitor();
    // The claim script's highest exhibitor id: an exhibitor's claim.
    proxy.run_late_call_with(b"$4\r\n8191\r\n");
    let mut refused = a.raw();
    refused.send_frame(&Frame::bare(Kind::Oi, 0, SERVER_ID, 0));
    assert_eq!(
        refused.expect_frame(),
        Frame::bare(Kind::Erro, SERVER_ID, 0, 0)
    );
    let x = first + 1;
    let claimed = format!(":{x}\r\n").into_bytes();
    assert_eq!(
        proxy.deliver_held(),
        Late::Ran(claimed),
        "the late claim ran"
    );
    freed_in_redis(&redis, x);
    let mut on_b = b.raw();
    assert_eq!(on_b.identify_exhibitor(), x);
    let (before, _) = a.proc.stderr.skip_until("the release", TIMEOUT, |line| {
        line.contains("claims that ran after they failed are released")
    });
    let told = |member: &str| {
        before
            .iter()
            .any(|line| line.contains("held set that is no id is ignored") && line.contains(member))
    };
    assert!(told("member=x"), "{before:?}");
    assert!(told("member=\u{fffd}\u{fffd}"), "{before:?}");
}

/// The same for a HELLO's name: refused with code 6 on node A (Redis did
/// not answer in time), claimed by the late call all the same, then
/// released at the next renewal: node B's HELLO for it gets code 0.
#[test]
fn a_name_claimed_by_a_call_that_ran_late_is_released() {
    use crate::cluster_names::hello_code;
    let (_redis, proxy, a, b) = behind_a_proxy("cluster-late-name");
    // One name claimed first, so that Redis has the script and runs the
    // late call rather than answer that it lacks it.
    let mut dave = a.raw();
    assert_eq!(hello_code(&mut dave, b"dave"), 0);
    proxy.run_late_call_with(b"$5\r\ncarol\r\n");
    let mut refused = a.raw();
    assert_eq!(hello_code(&mut refused, b"carol"), 6);
    let ran = proxy.deliver_held();
    assert_eq!(ran, Late::Ran(b":1\r\n".to_vec()), "the late claim ran");
    let since = Instant::now();
    loop {
        let mut carol = b.raw();
        match hello_code(&mut carol, b"carol") {
            0 => break,
            code => assert_eq!(code, 3, "carol on node B"),
        }
        assert!(since.elapsed() < TIMEOUT * 2, "carol never released");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A JOIN whose call Redis ran only after node A had given up on it
/// (ROOMACK code 7): its change line reaches every node, so the name is a
/// member system-wide, as a success would have made it (CLUSTER.md, "Rooms
/// across nodes"): node B lists the room with the member, a room message
/// sent on node B reaches the member on node A, and a JOIN again answers
/// code 0.
#[test]
fn a_join_that_ran_late_makes_a_member_on_every_node() {
    use crate::cluster_rooms::{send_until_delivered, wait_members};
    use crate::rooms::{Member, PLAIN, ROOM, msg, refused, roomack, who};
    let (_redis, proxy, a, b) = behind_a_proxy("cluster-late-join");
    let mut erin = Member::new(&a, "erin");
    // A JOIN first, so that Redis has the script and runs the late call
    // rather than answer that it lacks it.
    erin.join("warm", false, |d, s| {
        roomack(d, s, 0, (ROOM, 0, 1, b"warm"))
    });
    proxy.run_late_call_with(b"$8\r\nlatejoin\r\n");
    erin.join("latejoin", false, |d, s| refused(d, s, 7));
    assert!(
        matches!(proxy.deliver_held(), Late::Ran(_)),
        "the late JOIN ran"
    );
    let mut frank = Member::new(&b, "frank");
    wait_members(&mut frank, b"latejoin", 1);
    let text = b"you are in after all";
    let seq = send_until_delivered(&mut frank, &mut erin, |id, seq| {
        msg(id, ROOM + 1, seq, text)
    });
    expect_exact(
        &mut erin.ex,
        &who(erin.ex_id, 0, frank.em_id, PLAIN, b"frank"),
    );
    expect_exact(&mut erin.ex, &msg(frank.em_id, ROOM + 1, seq, text));
    erin.join("latejoin", false, |d, s| {
        roomack(d, s, 0, (ROOM + 1, 0, 1, b"latejoin"))
    });
}
