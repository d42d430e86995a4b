//! The memory workload: N identified connections that send nothing more.
//!
//! evchat: exhibitors first (ids 4096..=8191), then unpaired emitters, so up
//! to 8191 connections. Redis, NATS and MQTT: one subscriber per connection,
//! each on a channel of its own; raw: one subscriber per connection. On a `*-ws` target each connection is
//! upgraded to WebSocket first and identified through it. The server's resident memory is read before
//! the first connection and again at the end of the hold; the difference over
//! N is the cost of a connection. The server's CPU time over the hold shows
//! that idle connections cost it no work.

use crate::Args;
use crate::Target;
use crate::report::{IdleFigures, Outcome};
use crate::setup::{Link, Opener, connect};
use crate::{HEAD_LEN, Mode, evchat, mqtt, nats, raw, redis, sys};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// evchat assigns ids 4096..=8191 to exhibitors and 1..=4095 to emitters.
const EVCHAT_EXHIBITOR_IDS: usize = 4096;
const EVCHAT_IDS: usize = 8191;
/// Pause before the baseline reading, for the server to finish starting.
const SETTLE: Duration = Duration::from_millis(500);

fn open(opener: &mut Opener, target: Target, k: usize, args: &Args) -> Result<Link, String> {
    let mut stream = opener.next_link()?;
    let target = target.plain();
    match target {
        Target::Evchat => {
            let origin = if k < EVCHAT_EXHIBITOR_IDS { 0 } else { 1 };
            evchat::identify(&mut stream, origin, args.sign_in.as_ref())?;
        }
        Target::Redis => {
            redis::subscribe(&mut stream, &format!("i{k}"))?;
        }
        Target::Nats | Target::NatsVerbose => {
            nats::connect(
                &mut stream,
                target == Target::NatsVerbose,
                Some(&format!("i.{k}")),
            )?;
        }
        Target::Mqtt0 | Target::Mqtt1 => {
            mqtt::connect(&mut stream, &format!("relay-i{k}-{}", std::process::id()))?;
            mqtt::subscribe(
                &mut stream,
                &format!("i/{k}"),
                u8::from(target == Target::Mqtt1),
            )?;
        }
        Target::Raw => {
            raw::hello(&mut stream, raw::SUBSCRIBER, HEAD_LEN)?;
        }
        t => unreachable!("{t:?} is not a plain target"),
    }
    Ok(stream)
}

pub fn run(target: Target, addr: SocketAddr, args: &Args) -> Result<Outcome, String> {
    let n = args.idle;
    if target.plain() == Target::Evchat && n > EVCHAT_IDS {
        return Err(format!(
            "evchat identifies at most {EVCHAT_IDS} clients at once; --idle {n} is more"
        ));
    }
    let rss = || args.server_pid.and_then(sys::rss_kib);
    // The baseline is read once the server is up and settled: a probe
    // connection proves it listens (and is closed again before identifying).
    drop(connect(addr)?);
    std::thread::sleep(SETTLE);
    let rss_before_kib = rss();
    let opened = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut opener = Opener::new(target, addr, n);
    for k in 0..n {
        held.push(
            open(&mut opener, target, k, args).map_err(|e| format!("idle connection {k}: {e}"))?,
        );
    }
    let secs = opened.elapsed().as_secs_f64();
    eprintln!(
        "relay: {n} idle {} connections open in {secs:.2} s; holding",
        target.name()
    );
    let cpu = || args.server_pid.and_then(sys::process_cpu_secs);
    let cpu_before = cpu();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let hold_server_cpu_secs = cpu().zip(cpu_before).map(|(after, before)| after - before);
    let rss_after_kib = rss();
    Ok(Outcome {
        slowest: Vec::new(),
        target,
        mode: Mode::Unicast,
        emitters: 0,
        exhibitors: 0,
        size: 0,
        window: 0,
        rate: None,
        secs: args.duration,
        sent: 0,
        delivered: 0,
        acked: 0,
        refused: 0,
        garbled: 0,
        wire_bytes: 0,
        latency: None,
        server_cpu: None,
        client_cpu: None,
        server_wait: None,
        client_wait: None,
        server_core_idle: None,
        server_core_steal: None,
        client_core_steal: None,
        client_core_idle: None,
        idle: Some(IdleFigures {
            conns: held.len(),
            rss_before_kib,
            rss_after_kib,
            hold_server_cpu_secs,
        }),
    })
}
