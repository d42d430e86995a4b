//! `relay`: the load generator behind `scripts/bench-compare.sh`.
//!
//! One single-threaded mio loop (pinned with `--cpu`) plays every publisher
//! and every subscriber of a workload against one server on loopback:
//! evchat (emitters and exhibitors, each exhibitor acking every frame as the
//! real one does), Redis pub/sub, NATS core (plain or `verbose`) and MQTT
//! 3.1.1 (QoS 0 or 1), each spoken by a few dozen lines of hand-written
//! protocol code over plain sockets. The `*-ws` targets speak the same
//! protocols over WebSocket (evchat's `/ws`, nats-server's and Mosquitto's
//! WebSocket listeners), framed by hand in `ws.rs`. Two durable targets
//! stand beside evchat's `--history`: Redis Streams (`XADD` / `XREAD`,
//! `streams.rs`) and NATS JetStream (publish with ack, `nats.rs`); how the
//! server is made durable is the compare script's business, not theirs.
//! `raw` drives `benches/raw_forwarder.rs`, a bare forwarder with no
//! protocol (`raw.rs`): the machine's forwarding limit beside the servers.
//!
//! Every payload starts with a 16-byte head — send time in nanoseconds since
//! this process's clock base, publisher index, publisher sequence number —
//! padded to `--size`, so a subscriber measures latency and a publisher's
//! window is settled by delivery without any shared state beyond the bytes.
//! Publishers keep up to `--window` messages outstanding (see `flow.rs` for
//! what settles one on each target) and optionally follow a fixed `--rate`:
//! open loop, as wrk2 does: message k of a publisher is due at start + k /
//! its rate and carries that due time in its head, so latency counts from
//! the schedule and a send held back by the generator or a full window is
//! not hidden (coordinated omission).
//! The slowest deliveries are also kept one by one (`--slowest`, `tail.rs`):
//! due time on `CLOCK_MONOTONIC`, how late the generator sent each, and the
//! rest of its trip, to lay beside a scheduler trace of the same run.
//! Counting starts after `--warmup` and lasts `--duration`; then the process
//! prints its figures (one JSON line with `--json`) and exits, closing every
//! connection. `--idle N` instead opens N identified connections, holds them
//! for `--duration` and reports the server's resident memory per connection.
//!
//! The generator must never be the bottleneck, so the hot path does no
//! allocation and no per-message syscall: one 256 KiB scratch buffer for all
//! reads, frames parsed in place, and each publisher's frames for a turn
//! written with one `write`. With `--server-pid` it also reports the CPU time
//! the server and the generator used over the measured window, so a run shows
//! which side was saturated.
//!
//! `cargo bench --bench relay -- --target evchat --addr 127.0.0.1:PORT ...`

#[path = "relay/conn.rs"]
mod conn;
#[path = "relay/driver.rs"]
mod driver;
#[path = "relay/evchat.rs"]
mod evchat;
#[path = "relay/flow.rs"]
mod flow;
#[path = "relay/idle.rs"]
mod idle;
#[path = "relay/mqtt.rs"]
mod mqtt;
#[path = "relay/nats.rs"]
mod nats;
#[path = "relay/raw.rs"]
mod raw;
#[path = "relay/redis.rs"]
mod redis;
#[path = "relay/report.rs"]
mod report;
#[path = "relay/setup.rs"]
mod setup;
#[path = "relay/signin.rs"]
mod signin;
#[path = "relay/signin_events.rs"]
mod signin_events;
#[path = "relay/streams.rs"]
mod streams;
#[path = "relay/sys.rs"]
mod sys;
#[path = "relay/tail.rs"]
mod tail;
#[path = "relay/tls.rs"]
mod tls;
#[path = "relay/ws.rs"]
mod ws;

use clap::{Parser, ValueEnum};
use report::Outcome;
use std::net::SocketAddr;
use std::process::ExitCode;

/// The server under test and, where it has one, its delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// evchat: MSG frames, exhibitor OKs, the server's OK/ERRO per request.
    #[value(name = "evchat")]
    Evchat,
    /// Redis pub/sub over RESP (PUBLISH's integer reply counts as the ack).
    #[value(name = "redis")]
    Redis,
    /// NATS core, fire and forget.
    #[value(name = "nats")]
    Nats,
    /// NATS core with `"verbose":true`: a `+OK` per PUB.
    #[value(name = "nats-verbose")]
    NatsVerbose,
    /// MQTT 3.1.1 at QoS 0.
    #[value(name = "mqtt0")]
    Mqtt0,
    /// MQTT 3.1.1 at QoS 1: PUBACK from the broker and from each subscriber.
    #[value(name = "mqtt1")]
    Mqtt1,
    /// evchat over WebSocket (`/ws`): one frame per binary message.
    #[value(name = "evchat-ws")]
    EvchatWs,
    /// NATS core over nats-server's WebSocket listener.
    #[value(name = "nats-ws")]
    NatsWs,
    /// NATS core with `"verbose":true` over WebSocket.
    #[value(name = "nats-verbose-ws")]
    NatsVerboseWs,
    /// MQTT 3.1.1 at QoS 0 over Mosquitto's WebSocket listener.
    #[value(name = "mqtt0-ws")]
    Mqtt0Ws,
    /// MQTT 3.1.1 at QoS 1 over Mosquitto's WebSocket listener.
    #[value(name = "mqtt1-ws")]
    Mqtt1Ws,
    /// Redis Streams: pipelined XADD (its reply is the ack), XREAD consumers.
    #[value(name = "redis-streams")]
    RedisStreams,
    /// NATS JetStream: PUB with a reply inbox (the PubAck is the ack), core
    /// subscribers on the stream's subject.
    #[value(name = "jetstream")]
    JetStream,
    /// `benches/raw_forwarder.rs`: bytes copied to every subscriber, no
    /// protocol; settled by delivery, like `nats`. The machine's limit.
    #[value(name = "raw")]
    Raw,
    /// evchat over TLS on its one port (`--tls-cert`): the plain protocol inside.
    #[value(name = "evchat-tls")]
    EvchatTls,
    /// NATS core over TLS (nats-server's `tls {}` block; INFO in clear, then the handshake).
    #[value(name = "nats-tls")]
    NatsTls,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Evchat => "evchat",
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::NatsVerbose => "nats-verbose",
            Target::Mqtt0 => "mqtt0",
            Target::Mqtt1 => "mqtt1",
            Target::EvchatWs => "evchat-ws",
            Target::NatsWs => "nats-ws",
            Target::NatsVerboseWs => "nats-verbose-ws",
            Target::Mqtt0Ws => "mqtt0-ws",
            Target::Mqtt1Ws => "mqtt1-ws",
            Target::RedisStreams => "redis-streams",
            Target::JetStream => "jetstream",
            Target::Raw => "raw",
            Target::EvchatTls => "evchat-tls",
            Target::NatsTls => "nats-tls",
        }
    }

    /// The same protocol and guarantee over plain TCP: what the protocol
    /// code dispatches on.
    pub fn plain(self) -> Target {
        match self {
            Target::EvchatWs => Target::Evchat,
            Target::NatsWs => Target::Nats,
            Target::NatsVerboseWs => Target::NatsVerbose,
            Target::Mqtt0Ws => Target::Mqtt0,
            Target::Mqtt1Ws => Target::Mqtt1,
            Target::EvchatTls => Target::Evchat,
            Target::NatsTls => Target::Nats,
            t => t,
        }
    }

    /// Whether the connections speak TLS (see `tls.rs`).
    pub fn tls(self) -> bool {
        matches!(self, Target::EvchatTls | Target::NatsTls)
    }

    /// Where a WebSocket target takes the upgrade; `None` for plain TCP.
    pub fn websocket(self) -> Option<ws::Endpoint> {
        let (path, protocol, aligned) = match self {
            Target::EvchatWs => ("/ws", None, true),
            // nats-server upgrades on any path and negotiates no subprotocol.
            Target::NatsWs | Target::NatsVerboseWs => ("/", None, false),
            // Mosquitto (libwebsockets) serves the `mqtt` subprotocol.
            Target::Mqtt0Ws | Target::Mqtt1Ws => ("/mqtt", Some("mqtt"), false),
            _ => return None,
        };
        Some(ws::Endpoint {
            path,
            protocol,
            aligned,
        })
    }
}

/// Who receives a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Publisher i sends to subscriber i only (evchat: a paired emitter).
    Unicast,
    /// Every publisher sends to every subscriber (evchat: destination 0).
    Broadcast,
    /// Every publisher sends to one room all subscribers belong to (evchat:
    /// a room's id, each exhibitor a member by name; other targets: as
    /// broadcast).
    Room,
    /// Each message goes to one subscriber in turn (evchat: a queue room;
    /// NATS: one queue group).
    Queue,
}

/// Bytes at the start of every payload: send time, publisher, sequence.
pub const HEAD_LEN: usize = 16;

#[derive(Parser, Debug)]
#[command(
    about = "Relay load generator: evchat vs Redis, NATS and MQTT on loopback, over TCP or WebSocket, durable or not"
)]
pub struct Args {
    /// Server to drive
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    /// Server address (for `*-ws` targets, the WebSocket listener's); loopback only (127.0.0.0/8 or ::1)
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// evchat, unicast, broadcast, room or queue: the exhibitors (and a room's members) connect here instead of --addr (another node of one cluster: CLUSTER.md); loopback only
    #[arg(long)]
    pub exhibitor_addr: Option<SocketAddr>,
    /// Publishers (evchat emitters)
    #[arg(long, default_value_t = 1)]
    pub emitters: usize,
    /// Subscribers (evchat exhibitors)
    #[arg(long, default_value_t = 1)]
    pub exhibitors: usize,
    /// unicast (pairs, needs as many emitters as exhibitors) or broadcast
    #[arg(long, value_enum, default_value = "unicast")]
    pub mode: Mode,
    /// Payload bytes per message (at least 16: the timestamp head)
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Messages each publisher may have outstanding
    #[arg(long, default_value_t = 1024)]
    pub window: u32,
    /// Queue mode on evchat: each member joins with this prefetch (unacknowledged messages it may hold, 1..=255; 1 sends the JOIN without one, as before prefetch existed)
    #[arg(long, default_value_t = 1)]
    pub prefetch: u8,
    /// Fixed offered rate in messages/s over all publishers, open loop: latency counts from each message's scheduled time (default: as fast as the window allows)
    #[arg(long)]
    pub rate: Option<f64>,
    /// Report the N slowest deliveries one by one: when each was due, how late the generator sent it, how long it then took, on CLOCK_MONOTONIC (to lay beside `perf sched`); at most 1000
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub slowest: usize,
    /// Seconds of load before counting starts
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds counted (with --idle: seconds the connections are held)
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Pin this process to CPU K
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Open N idle identified connections instead, hold them and report the server's RSS per connection
    #[arg(long, default_value_t = 0)]
    pub idle: usize,
    /// evchat targets: every connection signs in first with the identity extension's HELLO, as NAME with SECRET (a token or password; `:` alone opts in with no name on a server without accounts)
    #[arg(long, value_name = "NAME:SECRET")]
    pub sign_in: Option<evchat::SignIn>,
    /// Instead of messages: T threads each repeating connect, HELLO (--sign-in), OI, FLW, close; reports sign-ins per second
    #[arg(long, value_name = "T", default_value_t = 0)]
    pub signins: usize,
    /// With --signins: each of the T threads an event loop keeping N sessions in flight (many clients arriving at once) instead of one blocking session after another; 0 keeps the blocking driver
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub signins_inflight: usize,
    /// During the run, one more client sends HELLOs with a wrong secret for --sign-in's name as fast as it can; reports how they were answered
    #[arg(long)]
    pub storm: bool,
    /// With --storm: the attacker keeps N guesses in flight (N connections from this one address, each guessing again as soon as answered) instead of waiting for each answer; with --handshake-storm, N handshakes in flight
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub storm_connections: usize,
    /// TLS targets: the CA (PEM) that signed the server's certificate
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
    /// TLS targets: the name the server's certificate must carry
    #[arg(long, default_value = "localhost")]
    pub tls_name: String,
    /// evchat-tls: during the run, --storm-connections attackers each send a recorded ClientHello over a new connection, read the server's first flight and hang up, as fast as they can; reports how many
    #[arg(long)]
    pub handshake_storm: bool,
    /// With --handshake-storm: complete real handshakes (certificate checked, keys exchanged) instead of replaying the ClientHello
    #[arg(long)]
    pub full_handshakes: bool,
    /// Server process id, to report its CPU time (and RSS with --idle)
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print one JSON line of results
    #[arg(long)]
    pub json: bool,
    /// Print a free TCP port on 127.0.0.1 and exit (for the compare script)
    #[arg(long)]
    pub free_port: bool,
    /// Passed by `cargo bench`; ignored
    #[arg(long, hide = true)]
    pub bench: bool,
}

/// Upper bounds that keep a mistyped command line from running away.
const MAX_SECS: f64 = 3600.0;
const MAX_CONNS: usize = 20_000;
const MAX_SLOWEST: usize = 1000;

fn main() -> ExitCode {
    let args = Args::parse();
    if args.free_port {
        return match crate::sys::free_port() {
            Ok(port) => {
                println!("{port}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay: no free port: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(target) = args.target else {
        // A bare `cargo bench` runs every bench: nothing to drive without a server.
        eprintln!("relay: no --target given, nothing to do (see --help)");
        return ExitCode::SUCCESS;
    };
    match run(target, &args) {
        Ok(Measured::Messages(outcome)) => {
            outcome.print(args.json);
            ExitCode::SUCCESS
        }
        Ok(Measured::SignIns) => ExitCode::SUCCESS,
        Err(e) => {
            if args.json {
                println!(
                    "{{\"target\":\"{}\",\"error\":\"{}\"}}",
                    target.name(),
                    crate::report::json_escape(&e)
                );
            }
            eprintln!("relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a run measured: messages (and memory), or sign-ins (printed as they
/// are counted).
enum Measured {
    Messages(Box<Outcome>),
    SignIns,
}

fn run(target: Target, args: &Args) -> Result<Measured, String> {
    let addr = args.addr.ok_or("--addr is required")?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{addr} is not a loopback address; refusing to connect"
        ));
    }
    check_args(target, args)?;
    if let Some(other) = args.exhibitor_addr
        && !other.ip().is_loopback()
    {
        return Err(format!(
            "{other} is not a loopback address; refusing to connect"
        ));
    }
    if let Some(cpu) = args.cpu {
        crate::sys::pin_to_cpu(cpu).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))?;
    }
    if target.tls() {
        let ca = args.ca.as_deref().ok_or("TLS targets need --ca FILE")?;
        crate::tls::configure(ca, &args.tls_name)?;
    }
    crate::sys::raise_descriptor_limit();
    crate::sys::tighten_timer_slack();
    if args.signins > 0 {
        crate::signin::run_signins(
            target,
            addr,
            args.sign_in.as_ref(),
            args.signins,
            args.signins_inflight,
            args.warmup,
            args.duration,
            args.json,
            args.server_pid,
        )?;
        return Ok(Measured::SignIns);
    }
    if args.idle > 0 {
        return crate::idle::run(target, addr, args).map(|o| Measured::Messages(Box::new(o)));
    }
    let plan = crate::setup::Plan::new(target, addr, args);
    let conns = crate::setup::connect_all(&plan)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = match (&args.sign_in, args.storm) {
        (Some(account), true) => Some(signin::start_storm(
            addr,
            account.name.clone(),
            args.storm_connections,
            stop.clone(),
        )),
        _ => None,
    };
    let handshakes = if args.handshake_storm {
        Some(signin::start_handshake_storm(
            target,
            addr,
            args.storm_connections,
            args.full_handshakes,
            stop.clone(),
        )?)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let outcome = crate::driver::Driver::new(plan, conns, args)?.run();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some((done, worker)) = handshakes {
        let _ = worker.join();
        let n = done.load(std::sync::atomic::Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "relay: handshake storm: {n} TLS {} in {secs:.2} s ({:.0}/s), {} in flight",
            if args.full_handshakes {
                "handshakes completed"
            } else {
                "server flights to a replayed ClientHello"
            },
            n as f64 / secs,
            args.storm_connections,
        );
    }
    if let Some((figures, worker)) = storm {
        let _ = worker.join();
        let secs = started.elapsed().as_secs_f64();
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        // On stderr, so the JSON line stays the run's own.
        eprintln!(
            "relay: storm: {} wrong-secret HELLOs in {secs:.2} s ({:.0}/s): {} refused after a check, {} throttled (code 5), {} busy (code 6)",
            get(&figures.attempts),
            get(&figures.attempts) as f64 / secs,
            get(&figures.refused),
            get(&figures.throttled),
            get(&figures.busy),
        );
    }
    outcome.map(|o| Measured::Messages(Box::new(o)))
}

fn check_args(target: Target, args: &Args) -> Result<(), String> {
    let secs_ok = |s: f64| s.is_finite() && (0.0..=MAX_SECS).contains(&s);
    if !secs_ok(args.warmup) || !secs_ok(args.duration) || args.duration <= 0.0 {
        return Err(format!(
            "--warmup and --duration must lie in 0..={MAX_SECS} s, duration above 0"
        ));
    }
    if args.slowest > MAX_SLOWEST {
        return Err(format!("--slowest keeps at most {MAX_SLOWEST} deliveries"));
    }
    if args.storm_connections == 0 || args.storm_connections > 1024 {
        return Err("--storm-connections is 1 to 1024".into());
    }
    if args.storm && args.sign_in.is_none() {
        return Err("--storm needs --sign-in NAME:SECRET".into());
    }
    if args.signins > 0 && args.sign_in.is_none() && !target.tls() {
        return Err("--signins needs --sign-in NAME:SECRET (or a TLS target: handshakes)".into());
    }
    if args.handshake_storm && target != Target::EvchatTls {
        return Err("--handshake-storm is for the evchat-tls target".into());
    }
    if args.full_handshakes && !args.handshake_storm {
        return Err("--full-handshakes is for --handshake-storm".into());
    }
    if (args.signins > 0 || args.storm || args.sign_in.is_some())
        && target.plain() != Target::Evchat
    {
        return Err("--sign-in, --signins and --storm are for evchat targets".into());
    }
    if args.exhibitor_addr.is_some()
        && (target != Target::Evchat
            || !matches!(
                args.mode,
                Mode::Unicast | Mode::Broadcast | Mode::Room | Mode::Queue
            )
            || args.idle > 0
            || args.signins > 0)
    {
        return Err(
            "--exhibitor-addr is for the evchat target in unicast, broadcast, room or queue mode"
                .into(),
        );
    }
    if args.signins_inflight > 0 && (args.signins == 0 || target.tls()) {
        return Err("--signins-inflight is for --signins on a plain TCP evchat target".into());
    }
    if args.signins.saturating_mul(args.signins_inflight) > MAX_CONNS {
        return Err(format!(
            "--signins times --signins-inflight is at most {MAX_CONNS}"
        ));
    }
    if args.signins > MAX_CONNS {
        return Err(format!("--signins is at most {MAX_CONNS} threads"));
    }
    if args.idle > 0 {
        if matches!(target, Target::RedisStreams | Target::JetStream) {
            return Err(format!(
                "--idle measures pub/sub connections; use the plain {} target",
                if target == Target::JetStream {
                    "nats"
                } else {
                    "redis"
                }
            ));
        }
        if args.idle > MAX_CONNS {
            return Err(format!("--idle is at most {MAX_CONNS}"));
        }
        return Ok(());
    }
    if !(HEAD_LEN..=u16::MAX as usize).contains(&args.size) {
        return Err(format!("--size must lie in {HEAD_LEN}..=65535"));
    }
    if args.window == 0 || args.window > 65_535 {
        return Err("--window must lie in 1..=65535".into());
    }
    if args.prefetch == 0 {
        return Err("--prefetch must lie in 1..=255".into());
    }
    if args.prefetch != 1 && args.mode != Mode::Queue {
        return Err("--prefetch is a queue's: give it with --mode queue".into());
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err("--rate must be a positive number of messages/s".into());
    }
    if args.emitters == 0 || args.exhibitors == 0 {
        return Err("need at least one emitter and one exhibitor".into());
    }
    if args.emitters + args.exhibitors > MAX_CONNS {
        return Err(format!("at most {MAX_CONNS} connections in all"));
    }
    if args.mode == Mode::Unicast && args.emitters != args.exhibitors {
        return Err("unicast pairs emitter i with exhibitor i: give as many of each".into());
    }
    if target == Target::Raw && args.mode == Mode::Unicast && args.emitters > 1 {
        return Err("raw copies every publisher's bytes to every subscriber: \
                    unicast takes one pair (use broadcast for more)"
            .into());
    }
    if target.plain() == Target::Evchat && (args.emitters > 4095 || args.exhibitors > 4096) {
        return Err("evchat has ids for 4095 emitters and 4096 exhibitors".into());
    }
    Ok(())
}
