//! `soak`: the long-running load client behind `scripts/soak.sh`.
//!
//! `soak <host:port> <server-pid>` keeps `CLIENTS` clients (half emitters,
//! half exhibitors, each emitter paired with its own exhibitor) connected to
//! a running server for `DURATION` seconds. Each emitter sends `RATE`
//! messages a second and waits for each reply; one in `BROADCAST_EVERY` goes
//! to every exhibitor, the others to its own exhibitor (alternately by the
//! exhibitor's id and by the emitter's own id). Every text names its intended
//! recipient, and every exhibitor checks that each message it got was meant
//! for it. Once a second one pair leaves (FLW) and reconnects with fresh ids.
//!
//! Every `SAMPLE` seconds it prints the server's resident memory
//! (`/proc/PID/status` VmRSS), its open descriptors (`/proc/PID/fd`) and the
//! message counters; at the end, a verdict: memory flat after the warm-up
//! (`WARMUP` seconds, default a fifth of the run), descriptors flat and back
//! to their starting count once every client has left, zero errors. The exit
//! status is 0 only if all three hold.
//!
//! Errors are anything but the expected: an ERRO reply, a message for someone
//! else, a reply or frame that does not come within 15 s, an unexpected frame
//! or close, a refused connection.

use bytes::BytesMut;
use evchat::proto::{ClientId, Frame, Kind, SERVER_ID};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long any expected frame may take before it counts as an error.
const PATIENCE: Duration = Duration::from_secs(15);

/// Counters shared by every client thread.
#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    ok: AtomicU64,
    /// ERRO replies.
    erro: AtomicU64,
    /// Messages that reached an exhibitor they did not name.
    misrouted: AtomicU64,
    /// Timeouts, unexpected frames or closes, failed connects.
    failures: AtomicU64,
    /// Messages exhibitors received and acknowledged.
    shown: AtomicU64,
    reconnects: AtomicU64,
    /// Largest reply latency since the last sample, in microseconds.
    max_latency_us: AtomicU64,
}

impl Stats {
    fn errors(&self) -> u64 {
        self.erro.load(Ordering::Relaxed)
            + self.misrouted.load(Ordering::Relaxed)
            + self.failures.load(Ordering::Relaxed)
    }

    fn fail(&self, what: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        eprintln!("soak: error: {what}");
    }
}

/// A blocking framed connection.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
        })
    }

    fn send(&mut self, frame: &Frame) -> io::Result<()> {
        self.stream.write_all(&frame.to_bytes())
    }

    /// The next frame; `Ok(None)` on close; an error on timeout.
    fn next(&mut self, wait: Duration) -> io::Result<Option<Frame>> {
        let deadline = Instant::now() + wait;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match Frame::decode(&mut self.buf) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// OI with `origin`; the id from the OK.
    fn identify(&mut self, origin: ClientId) -> io::Result<ClientId> {
        self.send(&Frame::bare(Kind::Oi, origin, SERVER_ID, 0))?;
        match self.next(PATIENCE)? {
            Some(f) if f.kind == Kind::Ok => Ok(f.dest),
            other => Err(io::Error::other(format!("OI answered with {other:?}"))),
        }
    }
}

/// Settings from the environment.
struct Settings {
    duration: Duration,
    warmup: Duration,
    sample: Duration,
    pairs: usize,
    rate: f64,
    broadcast_every: u64,
}

fn env_num(name: &str, default: f64) -> f64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let duration = env_num("DURATION", 600.0);
        Settings {
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_secs_f64(env_num("WARMUP", duration / 5.0)),
            sample: Duration::from_secs_f64(env_num("SAMPLE", 10.0)),
            pairs: (env_num("CLIENTS", 100.0) as usize / 2).max(1),
            rate: env_num("RATE", 10.0),
            broadcast_every: (env_num("BROADCAST_EVERY", 20.0) as u64).max(1),
        }
    }
}

/// One emitter/exhibitor pair, reconnecting whenever `reconnect` is set.
fn run_pair(
    index: usize,
    addr: SocketAddr,
    settings: Arc<Settings>,
    stats: Arc<Stats>,
    reconnect: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let period = Duration::from_secs_f64(1.0 / settings.rate);
    // Spread the pairs' send times over one period.
    thread::sleep(period.mul_f64(index as f64 / settings.pairs as f64));
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = one_generation(addr, &settings, &stats, &reconnect, &stop, period) {
            stats.fail(&format!("pair {index}: {e}"));
            // Back off a little before reconnecting after a failure.
            thread::sleep(Duration::from_millis(500));
        }
        reconnect.store(false, Ordering::Relaxed);
    }
}

/// Connects a pair, sends until told to reconnect or stop, then leaves with FLW.
fn one_generation(
    addr: SocketAddr,
    settings: &Settings,
    stats: &Arc<Stats>,
    reconnect: &AtomicBool,
    stop: &AtomicBool,
    period: Duration,
) -> io::Result<()> {
    let mut ex = Conn::connect(addr)?;
    let ex_id = ex.identify(0)?;
    let mut em = Conn::connect(addr)?;
    let em_id = em.identify(ex_id)?;
    let ex_stats = stats.clone();
    let exhibitor = thread::spawn(move || exhibit(ex, ex_id, em_id, &ex_stats));

    let mut seq: u16 = 0;
    let mut next = Instant::now();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) && !reconnect.load(Ordering::Relaxed) {
        n += 1;
        seq = seq.wrapping_add(1);
        let (dest, text) = if n.is_multiple_of(settings.broadcast_every) {
            (0, format!("to all from {em_id} #{n}"))
        } else if n.is_multiple_of(2) {
            (ex_id, format!("to {ex_id} from {em_id} #{n}"))
        } else {
            (em_id, format!("to {ex_id} from {em_id} #{n}"))
        };
        let frame = Frame::msg(em_id, dest, seq, text.into_bytes()).expect("short text");
        let sent = Instant::now();
        em.send(&frame)?;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        match em.next(PATIENCE)? {
            Some(f) if f.kind == Kind::Ok && f.seq == seq => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(f) if f.kind == Kind::Erro && f.seq == seq => {
                stats.erro.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: error: emitter {em_id}: ERRO for #{n} to {dest}");
            }
            other => {
                return Err(io::Error::other(format!(
                    "emitter {em_id}: expected the reply to seq {seq}, got {other:?}"
                )));
            }
        }
        let latency = sent.elapsed().as_micros() as u64;
        stats.max_latency_us.fetch_max(latency, Ordering::Relaxed);
        next += period;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else {
            next = now; // fell behind: do not burst to catch up
        }
    }
    // Leave: FLW, its OK, then the server closes us; our exhibitor gets FLW.
    seq = seq.wrapping_add(1);
    em.send(&Frame::bare(Kind::Flw, em_id, SERVER_ID, seq))?;
    match em.next(PATIENCE)? {
        Some(f) if f.kind == Kind::Ok && f.seq == seq => {}
        other => {
            return Err(io::Error::other(format!(
                "emitter {em_id}: FLW answered with {other:?}"
            )));
        }
    }
    if let Some(f) = em.next(PATIENCE)? {
        return Err(io::Error::other(format!(
            "emitter {em_id}: frame after FLW's OK: {f}"
        )));
    }
    drop(em);
    exhibitor
        .join()
        .map_err(|_| io::Error::other("exhibitor thread panicked"))??;
    if !stop.load(Ordering::Relaxed) {
        stats.reconnects.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// An exhibitor: acknowledges everything, checks each MSG names it, and
/// leaves on the server's FLW.
fn exhibit(mut ex: Conn, ex_id: ClientId, em_id: ClientId, stats: &Stats) -> io::Result<()> {
    loop {
        let Some(frame) = ex.next(PATIENCE)? else {
            return Err(io::Error::other(format!(
                "exhibitor {ex_id}: closed before FLW"
            )));
        };
        match frame.kind {
            Kind::Msg => {
                let text = String::from_utf8_lossy(frame.text().expect("a MSG has text"));
                let named = text
                    .strip_prefix("to ")
                    .and_then(|rest| rest.split(' ').next());
                let for_me = match named {
                    Some("all") => frame.dest == 0,
                    Some(id) => {
                        id == ex_id.to_string() && (frame.dest == ex_id || frame.dest == em_id)
                    }
                    None => false,
                };
                if !for_me {
                    stats.misrouted.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "soak: error: exhibitor {ex_id} got {frame} {text:?}, meant for someone else"
                    );
                }
                stats.shown.fetch_add(1, Ordering::Relaxed);
                ex.send(&Frame::bare(Kind::Ok, ex_id, frame.origin, frame.seq))?;
            }
            Kind::Clist => ex.send(&Frame::bare(Kind::Ok, ex_id, frame.origin, frame.seq))?,
            Kind::Flw => {
                ex.send(&Frame::bare(Kind::Ok, ex_id, SERVER_ID, frame.seq))?;
                return match ex.next(PATIENCE)? {
                    None => Ok(()),
                    Some(f) => Err(io::Error::other(format!(
                        "exhibitor {ex_id}: frame after FLW: {f}"
                    ))),
                };
            }
            _ => {
                return Err(io::Error::other(format!(
                    "exhibitor {ex_id}: unexpected {frame}"
                )));
            }
        }
    }
}

/// The server's resident memory in KiB and open descriptor count.
fn server_usage(pid: u32) -> io::Result<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values[values.len() / 2]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(pid)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|p| p.parse::<u32>().ok()),
    ) else {
        eprintln!(
            "usage: soak <host:port> <server-pid>   (env: DURATION WARMUP SAMPLE CLIENTS RATE BROADCAST_EVERY)"
        );
        return ExitCode::FAILURE;
    };
    let settings = Arc::new(Settings::from_env());
    let (rss0, fds0) = match server_usage(pid) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("soak: cannot read /proc/{pid}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "soak: {} clients ({} pairs), {} msg/s each, 1 in {} broadcast, 1 reconnect/s, {:.0} s (warm-up {:.0} s)",
        settings.pairs * 2,
        settings.pairs,
        settings.rate,
        settings.broadcast_every,
        settings.duration.as_secs_f64(),
        settings.warmup.as_secs_f64()
    );
    println!(
        "soak: server before clients: rss {:.1} MB, {fds0} fds",
        rss0 as f64 / 1024.0
    );
    println!(
        "{:>6}  {:>8}  {:>4}  {:>10}  {:>10}  {:>6}  {:>5}  {:>10}",
        "t(s)", "rss(MB)", "fds", "ok", "shown", "errors", "reco", "max lat"
    );

    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flags: Vec<Arc<AtomicBool>> = (0..settings.pairs)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let threads: Vec<_> = flags
        .iter()
        .enumerate()
        .map(|(i, flag)| {
            let (settings, stats, flag, stop) =
                (settings.clone(), stats.clone(), flag.clone(), stop.clone());
            thread::spawn(move || run_pair(i, addr, settings, stats, flag, stop))
        })
        .collect();

    let start = Instant::now();
    let mut samples = Vec::new();
    let mut next_sample = settings.sample;
    let mut next_reconnect = Duration::from_secs(1);
    let mut turn = 0usize;
    while start.elapsed() < settings.duration {
        // The pacing of reconnects and samples; the clients run on their own.
        thread::sleep(Duration::from_millis(50));
        let at = start.elapsed();
        if at >= next_reconnect {
            flags[turn % flags.len()].store(true, Ordering::Relaxed);
            turn += 1;
            next_reconnect += Duration::from_secs(1);
        }
        if at >= next_sample {
            next_sample += settings.sample;
            let (rss_kib, fds) = match server_usage(pid) {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("soak: server gone? {e}");
                    stats.fail("server /proc unreadable");
                    break;
                }
            };
            println!(
                "{:>6.0}  {:>8.2}  {:>4}  {:>10}  {:>10}  {:>6}  {:>5}  {:>8.1}ms",
                at.as_secs_f64(),
                rss_kib as f64 / 1024.0,
                fds,
                stats.ok.load(Ordering::Relaxed),
                stats.shown.load(Ordering::Relaxed),
                stats.errors(),
                stats.reconnects.load(Ordering::Relaxed),
                stats.max_latency_us.swap(0, Ordering::Relaxed) as f64 / 1000.0
            );
            samples.push(Sample { at, rss_kib, fds });
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Every client has left with FLW; give the server a moment to reap the
    // last lingering closes (bounded: it closes each within 2 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (rss_end, fds_end) = loop {
        let usage = server_usage(pid).unwrap_or((0, 0));
        if usage.1 <= fds0 || Instant::now() >= deadline {
            break usage;
        }
        thread::sleep(Duration::from_millis(100));
    };

    let errors = stats.errors();
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= settings.warmup).collect();
    let third = (steady.len() / 3).max(1);
    let (rss_flat, rss_growth_kib) = if steady.len() >= 3 {
        let early = median(
            &mut steady[..third]
                .iter()
                .map(|s| s.rss_kib)
                .collect::<Vec<_>>(),
        );
        let late = median(
            &mut steady[steady.len() - third..]
                .iter()
                .map(|s| s.rss_kib)
                .collect::<Vec<_>>(),
        );
        let growth = late as i64 - early as i64;
        // Flat: the late median within 5% + 512 KiB of the early one.
        (growth <= (early as i64) / 20 + 512, growth)
    } else {
        (true, 0)
    };
    let fd_min = steady.iter().map(|s| s.fds).min().unwrap_or(0);
    let fd_max = steady.iter().map(|s| s.fds).max().unwrap_or(0);
    // One pair may be between generations at a sample: up to 4 fds of jitter.
    let fds_flat = fd_max - fd_min <= 4 && fds_end <= fds0;
    let rss_max = steady.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "soak: {} sent, {} ok, {} shown, {} ERRO, {} misrouted, {} other failures, {} reconnects",
        stats.sent.load(Ordering::Relaxed),
        stats.ok.load(Ordering::Relaxed),
        stats.shown.load(Ordering::Relaxed),
        stats.erro.load(Ordering::Relaxed),
        stats.misrouted.load(Ordering::Relaxed),
        stats.failures.load(Ordering::Relaxed),
        stats.reconnects.load(Ordering::Relaxed)
    );
    println!(
        "soak: rss after warm-up: max {:.2} MB, late-vs-early median growth {:+} KiB ({}); \
         fds after warm-up {fd_min}..={fd_max}, after all left {fds_end} (before: {fds0}) ({}); \
         rss after all left {:.2} MB",
        rss_max as f64 / 1024.0,
        rss_growth_kib,
        if rss_flat { "flat" } else { "GROWING" },
        if fds_flat { "flat" } else { "NOT FLAT" },
        rss_end as f64 / 1024.0
    );
    let pass = rss_flat && fds_flat && errors == 0 && !samples.is_empty();
    println!(
        "soak: verdict: {} (memory {}, descriptors {}, {errors} errors)",
        if pass { "PASS" } else { "FAIL" },
        if rss_flat { "flat" } else { "growing" },
        if fds_flat { "flat" } else { "not flat" },
    );
    if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
