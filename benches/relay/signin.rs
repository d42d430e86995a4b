//! The identity workloads (PROTOCOL.md, "Extension: identity").
//!
//! `--signins T`: T threads, each repeating a whole short session as fast as
//! it can (connect, HELLO with `--sign-in`'s account, OI as an exhibitor,
//! FLW, the server's OK, close) and counting those completed within
//! `--duration` after `--warmup`. The figure is sign-ins per second. With
//! `--signins-inflight N` the T threads are event-driven instead, each
//! keeping N sessions in flight (`signin_events.rs`).
//!
//! `--storm`: during an ordinary run, one more thread plays an attacker
//! sending HELLOs with a wrong secret for `--sign-in`'s name as fast as one
//! client can (a new connection for each, since a refusal closes it), so the
//! run's throughput can be set beside the same run without it;
//! `--storm-connections N` keeps N such guesses in flight instead of one.
//!
//! On a TLS target (`evchat-tls`) each session above starts with a TLS
//! handshake, and `--handshake-storm` is the attacker's TLS counterpart:
//! `--storm-connections` threads, each sending one recorded ClientHello over
//! a new connection, reading the server's first flight (its key share, its
//! certificate and the signature over them: all of the server's work) and
//! hanging up, as fast as it can. Such an attacker spends a connection and a
//! few system calls a handshake where the server spends its key exchange
//! and a signature, as a flood from other machines would; with
//! `--full-handshakes` each thread completes real handshakes instead
//! (verifying the certificate, exchanging keys), which on a two-core
//! machine measures the attacker's crypto on the generator's core as much
//! as the server.

use crate::Target;
use crate::evchat::{self, SignIn};
use crate::setup::{Link, Opener, connect, read_until};
use ::evchat::proto::{Frame, HEADER_LEN, Header, Kind, SERVER_ID};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One connection of `target` (TCP, or TLS with its handshake done).
fn open(target: Target, addr: SocketAddr) -> Result<Link, String> {
    Opener::new(target, addr, 1).next_link()
}

/// One whole session; Ok(()) once the server's OK to FLW arrived.
fn one_session(target: Target, addr: SocketAddr, account: Option<&SignIn>) -> Result<(), String> {
    let mut stream = open(target, addr)?;
    let (id, rest) = evchat::identify(&mut stream, 0, account)?;
    if !rest.is_empty() {
        return Err("bytes after the OK to OI".into());
    }
    let flw = Frame::bare(Kind::Flw, id, SERVER_ID, 1).to_bytes();
    stream.write_all(&flw).map_err(|e| format!("FLW: {e}"))?;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |b| {
        Ok((b.len() >= HEADER_LEN).then_some(HEADER_LEN))
    })?;
    let reply = Header::peek(&buf).expect("8 bytes read");
    if reply.kind != Kind::Ok as u16 || reply.seq != 1 {
        return Err(format!(
            "FLW answered with type {} seq {}",
            reply.kind, reply.seq
        ));
    }
    Ok(())
}

/// CPU seconds used so far by the server (when its pid is known) and by
/// this process, all threads of each.
fn cpu_now(server_pid: Option<u32>) -> (Option<f64>, f64) {
    (
        server_pid.and_then(crate::sys::process_cpu_secs),
        crate::sys::own_cpu_secs(),
    )
}

/// Runs `threads` sign-in loops (blocking, or with `inflight` > 0 each an
/// event loop with that many sessions in flight); prints and returns
/// sign-ins per second, with the CPU each side used in the counted window
/// (a share of one core, and microseconds a sign-in): the side near a
/// whole core is the one that sets the figure.
#[allow(clippy::too_many_arguments)]
pub fn run_signins(
    target: Target,
    addr: SocketAddr,
    account: Option<&SignIn>,
    threads: usize,
    inflight: usize,
    warmup: f64,
    duration: f64,
    json: bool,
    server_pid: Option<u32>,
) -> Result<f64, String> {
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (counting, stop, done, account) = (
                counting.clone(),
                stop.clone(),
                done.clone(),
                account.cloned(),
            );
            std::thread::spawn(move || -> Result<(), String> {
                if inflight > 0 {
                    let account = account.ok_or("--signins-inflight needs --sign-in")?;
                    return crate::signin_events::run_thread(
                        addr, account, inflight, counting, stop, done,
                    );
                }
                while !stop.load(Ordering::Relaxed) {
                    one_session(target, addr, account.as_ref())?;
                    if counting.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let cpu_before = cpu_now(server_pid);
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(duration));
    counting.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let count = done.load(Ordering::Relaxed);
    let cpu_after = cpu_now(server_pid);
    let server_cpu = cpu_after.0.zip(cpu_before.0).map(|(a, b)| a - b);
    let client_cpu = cpu_after.1 - cpu_before.1;
    let share = |cpu: f64| cpu / secs;
    let per_signin_us = |cpu: f64| cpu * 1e6 / count.max(1) as f64;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| "a sign-in thread panicked".to_owned())??;
    }
    let rate = count as f64 / secs;
    if json {
        let opt = |v: Option<f64>| v.map_or("null".to_owned(), |v| format!("{v:.3}"));
        println!(
            "{{\"target\":\"{}\",\"threads\":{threads},\"inflight\":{inflight},\"secs\":{secs:.4},\"signins\":{count},\"signins_per_s\":{rate:.1},\
             \"server_cpu\":{},\"client_cpu\":{:.3},\"server_us_per_signin\":{},\"client_us_per_signin\":{:.1}}}",
            target.name(),
            opt(server_cpu.map(share)),
            share(client_cpu),
            opt(server_cpu.map(per_signin_us)),
            per_signin_us(client_cpu),
        );
    } else {
        println!(
            "signins    {threads} threads, {inflight} in flight each (0: blocking), {secs:.2} s: {count} sessions, {rate:.0} sign-ins/s"
        );
        let server = server_cpu.map_or("?".to_owned(), |c| {
            format!(
                "{:.0}% ({:.1} us a sign-in)",
                share(c) * 100.0,
                per_signin_us(c)
            )
        });
        println!(
            "  cpu        server {server}  load generator {:.0}% ({:.1} us a sign-in)",
            share(client_cpu) * 100.0,
            per_signin_us(client_cpu)
        );
    }
    Ok(rate)
}

/// Wrong-secret HELLOs sent and how they were answered, while the storm ran.
#[derive(Debug, Default)]
pub struct StormFigures {
    pub attempts: AtomicU64,
    /// HELLOACK code 2 (checked and refused).
    pub refused: AtomicU64,
    /// Code 5 (the address's failure budget is spent).
    pub throttled: AtomicU64,
    /// Code 6 (the verifier's queue is full).
    pub busy: AtomicU64,
}

/// Starts the attacker: `connections` threads on this one address, each
/// guessing over a new connection as soon as its last one was answered
/// (one thread: the attacker that waits for each answer; more: one that
/// keeps that many guesses in flight, up to the server's
/// `--max-unidentified`, beyond which its connections are closed at
/// accept). Stops when `stop` is set.
pub fn start_storm(
    addr: SocketAddr,
    name: String,
    connections: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<StormFigures>, std::thread::JoinHandle<()>) {
    let figures = Arc::new(StormFigures::default());
    let counts = figures.clone();
    let worker = std::thread::spawn(move || {
        let guessers: Vec<_> = (0..connections.max(1))
            .map(|_| {
                let (counts, stop, name) = (counts.clone(), stop.clone(), name.clone());
                std::thread::spawn(move || guess_until(addr, &name, &counts, &stop))
            })
            .collect();
        for guesser in guessers {
            let _ = guesser.join();
        }
    });
    (figures, worker)
}

/// One guessing connection after another until `stop`.
fn guess_until(addr: SocketAddr, name: &str, counts: &StormFigures, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut stream) = connect(addr) else {
            continue;
        };
        let Ok((code, _)) = evchat::hello(&mut stream, name, b"not the password") else {
            continue;
        };
        counts.attempts.fetch_add(1, Ordering::Relaxed);
        let bucket = match code {
            2 => &counts.refused,
            5 => &counts.throttled,
            6 => &counts.busy,
            _ => continue,
        };
        bucket.fetch_add(1, Ordering::Relaxed);
    }
}

/// Starts the TLS attacker (see the module's paragraph): `connections`
/// threads, each one handshake after another until `stop`; counts the
/// server flights read (or handshakes completed, `full`).
pub fn start_handshake_storm(
    target: Target,
    addr: SocketAddr,
    connections: usize,
    full: bool,
    stop: Arc<AtomicBool>,
) -> Result<(Arc<AtomicU64>, std::thread::JoinHandle<()>), String> {
    let hello = Arc::new(crate::tls::client_hello()?);
    let done = Arc::new(AtomicU64::new(0));
    let count = done.clone();
    let worker = std::thread::spawn(move || {
        let attackers: Vec<_> = (0..connections.max(1))
            .map(|_| {
                let (count, stop, hello) = (count.clone(), stop.clone(), hello.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let handshaken = if full {
                            open(target, addr).map(drop)
                        } else {
                            server_flight(addr, &hello)
                        };
                        if handshaken.is_ok() {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for attacker in attackers {
            let _ = attacker.join();
        }
    });
    Ok((done, worker))
}

/// Sends `hello` over a new connection and reads until a whole encrypted
/// record (TLS record type 23) arrived: the server sends its flight's
/// encrypted part only once its key exchange and signature are done.
fn server_flight(addr: SocketAddr, hello: &[u8]) -> Result<(), String> {
    const APPLICATION_DATA: u8 = 23;
    const ALERT: u8 = 21;
    let mut stream = connect(addr)?;
    stream
        .write_all(hello)
        .map_err(|e| format!("ClientHello: {e}"))?;
    let mut buf = Vec::new();
    read_until(&mut stream, &mut buf, |b| {
        let mut at = 0;
        while let Some(header) = b.get(at..at + 5) {
            let end = at + 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
            if b.len() < end {
                break;
            }
            match header[0] {
                APPLICATION_DATA => return Ok(Some(end)),
                ALERT => return Err("the server answered with an alert".into()),
                _ => at = end,
            }
        }
        Ok(None)
    })
    .map(drop)
}
