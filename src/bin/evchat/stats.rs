//! `evchat stats HOST:PORT`: a server's `/stats` (README, "Running it in
//! production") as a screen that refreshes, like `top`: the totals, with
//! rates since the last refresh, and the busiest clients. `--once` prints
//! one screen, `--json` the server's JSON as it came, for scripts.
//!
//! One HTTP/1.1 request per refresh, on a connection of its own (over TLS
//! with `tls://HOST:PORT` or `--tls`, as the other clients):
//!
//! ```text
//! GET /stats HTTP/1.1\r\nHost: HOST:PORT\r\nUser-Agent: evchat-stats\r\n
//! [Authorization: Bearer evt_...\r\n]Connection: close\r\n\r\n
//! ```
//!
//! The token (`--token-file`, or `EVCHAT_TOKEN`) is needed by a server with
//! `--auth` (an admin account's); it is sent in that header only, and
//! never printed. The answer is read to its end, at most [`MAX_ANSWER`]
//! bytes, within [`TIMEOUT`].

use crate::history::civil_from_days;
use evchat::tls::client::{ConnectError, Endpoint, TlsArgs};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The largest answer read: `/stats` lists at most 8192 clients.
const MAX_ANSWER: usize = 16 << 20;
/// How long connecting, and then reading the whole answer, may take.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
evchat stats 127.0.0.1:5000                  live view, redrawn every second; Ctrl-C ends it\n  \
evchat stats 127.0.0.1:5000 --once           one screen\n  \
evchat stats 127.0.0.1:5000 --json | jq .    the server's /stats JSON\n  \
evchat stats tls://HOST:5000 --ca ca.pem      a server with TLS (its CA from evchat cert)\n  \
EVCHAT_TOKEN=evt_... evchat stats HOST:PORT  a server with --auth (an admin's token)")]
pub struct StatsArgs {
    /// The server's address (its port serves /stats unless --no-web;
    /// tls://HOST:PORT for TLS)
    addr: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// Print one screen and exit
    #[arg(long)]
    once: bool,
    /// Print the server's /stats JSON as it came, once, and exit
    #[arg(long, conflicts_with = "once")]
    json: bool,
    /// Seconds between refreshes of the live view
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    interval: Duration,
    /// Clients shown, the busiest first
    #[arg(long, value_name = "N", default_value_t = 20)]
    top: usize,
    /// A file holding an admin account's token (evt_...), for a server with
    /// --auth; EVCHAT_TOKEN is read when this is not given
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let secs = evchat::cli::parse_secs(text)?;
    if secs < Duration::from_millis(100) {
        return Err("the interval is at least 0.1 seconds".into());
    }
    Ok(secs)
}

/// Why no screen could be shown.
#[derive(Debug, thiserror::Error)]
enum StatsError {
    #[error("cannot connect to {addr}: {}", evchat::client::connect_reason(source))]
    Connect { addr: String, source: io::Error },
    #[error("{addr}: {source}")]
    Io { addr: String, source: io::Error },
    #[error("{addr} answered {status}: {why}")]
    Refused {
        addr: String,
        status: u16,
        why: &'static str,
    },
    #[error("{addr}: {detail}")]
    Answer { addr: String, detail: String },
    #[error("cannot connect to {addr}: {detail}")]
    Tls { addr: String, detail: String },
    #[error("{0}")]
    Endpoint(#[from] evchat::tls::client::EndpointError),
    #[error("{origin}: {detail}")]
    Token { origin: String, detail: String },
}

pub fn run(args: StatsArgs) -> ExitCode {
    match show(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(Failure::Output(e)) => {
            eprintln!("evchat stats: writing the output: {e}");
            ExitCode::FAILURE
        }
        Err(Failure::Stats(StatsError::Endpoint(e))) => {
            eprintln!("evchat stats: {e}");
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
        Err(Failure::Stats(e)) => {
            eprintln!("evchat stats: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Stats(StatsError),
    Output(io::Error),
}

impl From<StatsError> for Failure {
    fn from(e: StatsError) -> Failure {
        Failure::Stats(e)
    }
}

fn show(args: &StatsArgs) -> Result<(), Failure> {
    let endpoint = Endpoint::parse(&args.addr, &args.tls).map_err(StatsError::from)?;
    let token = token(args)?;
    let mut out = io::stdout().lock();
    if args.json {
        let body = fetch(&endpoint, token.as_deref())?;
        out.write_all(body.as_bytes()).map_err(Failure::Output)?;
        return out.flush().map_err(Failure::Output);
    }
    let live = !args.once;
    let clear = live && io::stdout().is_terminal();
    let mut previous: Option<(Value, Instant)> = None;
    loop {
        let body = fetch(&endpoint, token.as_deref())?;
        let fetched = Instant::now();
        let stats = parse(&args.addr, &body)?;
        let rates = previous
            .as_ref()
            .map(|(before, at)| (before, fetched.duration_since(*at)));
        let mut screen = String::new();
        if clear {
            // Home, then clear the screen: the next frame of the view.
            screen.push_str("\x1b[H\x1b[2J");
        }
        render(&mut screen, &args.addr, &stats, rates, args.top);
        out.write_all(screen.as_bytes()).map_err(Failure::Output)?;
        out.flush().map_err(Failure::Output)?;
        if !live {
            return Ok(());
        }
        previous = Some((stats, fetched));
        std::thread::sleep(args.interval);
        if !clear {
            out.write_all(b"\n").map_err(Failure::Output)?;
        }
    }
}

/// The token to send: `--token-file`'s, else `EVCHAT_TOKEN`'s, else none.
fn token(args: &StatsArgs) -> Result<Option<String>, StatsError> {
    let (text, path) = match &args.token_file {
        Some(path) => {
            let shown = format!("--token-file {}", path.display());
            let mut text = String::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(1024).read_to_string(&mut text))
                .map_err(|e| StatsError::Token {
                    origin: shown.clone(),
                    detail: e.to_string(),
                })?;
            (text, Some(shown))
        }
        None => match std::env::var("EVCHAT_TOKEN") {
            Ok(text) => (text, None),
            Err(_) => return Ok(None),
        },
    };
    let token = text.trim();
    let valid = token.starts_with("evt_")
        && token.len() <= 256
        && token.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        let detail = "not a token (evt_ and hex digits; a password is not taken here)".into();
        return Err(StatsError::Token {
            origin: path.unwrap_or_else(|| "EVCHAT_TOKEN".into()),
            detail,
        });
    }
    Ok(Some(token.to_string()))
}

/// GET /stats: the body of a 200 answer.
fn fetch(endpoint: &Endpoint, token: Option<&str>) -> Result<String, StatsError> {
    let shown = endpoint.to_string();
    let addr = shown.as_str();
    let connect = |source| StatsError::Connect {
        addr: addr.to_string(),
        source,
    };
    let io_error = |source| StatsError::Io {
        addr: addr.to_string(),
        source,
    };
    let target = endpoint
        .addr
        .to_socket_addrs()
        .map_err(connect)?
        .next()
        .ok_or_else(|| connect(io::Error::other("no address")))?;
    let socket = TcpStream::connect_timeout(&target, TIMEOUT).map_err(connect)?;
    let mut stream = endpoint.handshake(socket, TIMEOUT).map_err(|e| match e {
        ConnectError::Io(source) => connect(source),
        ConnectError::Tls(detail) => StatsError::Tls {
            addr: addr.to_string(),
            detail,
        },
    })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_error)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_error)?;
    stream
        .write_all(request(&endpoint.addr, token).as_bytes())
        .map_err(io_error)?;
    let deadline = Instant::now() + TIMEOUT;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        if Instant::now() > deadline {
            return Err(io_error(io::ErrorKind::TimedOut.into()));
        }
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) if answer.len() + n > MAX_ANSWER => {
                return Err(StatsError::Answer {
                    addr: addr.to_string(),
                    detail: format!("answer over {MAX_ANSWER} bytes"),
                });
            }
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(e)),
        }
    }
    let bad = |detail: &str| StatsError::Answer {
        addr: addr.to_string(),
        detail: detail.to_string(),
    };
    let head_end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("not an HTTP answer (is this an evchat server's port?)"))?;
    let head = String::from_utf8_lossy(&answer[..head_end]);
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("not an HTTP/1.1 status line"))?;
    let refused = |why| StatsError::Refused {
        addr: addr.to_string(),
        status,
        why,
    };
    match status {
        200 => {}
        401 if token.is_some() => return Err(refused("the token is not an admin account's")),
        401 => {
            return Err(refused(
                "the server has --auth: give an admin account's token with --token-file or \
                 EVCHAT_TOKEN",
            ));
        }
        // The server's --require-tls answers a plain request so; anything
        // else refused is its --metrics-allow.
        403 if answer[head_end + 4..].starts_with(b"this server requires TLS") => {
            return Err(refused(
                "the server requires TLS: write tls://HOST:PORT (and --ca FILE unless this \
                 system trusts its CA)",
            ));
        }
        403 => {
            return Err(refused(
                "this address may not read /stats (the server's --metrics-allow)",
            ));
        }
        404 => {
            return Err(refused(
                "no /stats here: an evchat server older than this tool?",
            ));
        }
        _ => return Err(refused("not a statistics answer")),
    }
    String::from_utf8(answer[head_end + 4..].to_vec()).map_err(|_| bad("the body is not UTF-8"))
}

/// The request for `/stats` (the module's doc shows it).
fn request(addr: &str, token: Option<&str>) -> String {
    let mut request =
        format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: evchat-stats\r\n");
    if let Some(token) = token {
        let _ = write!(request, "Authorization: Bearer {token}\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    request
}

fn parse(addr: &str, body: &str) -> Result<Value, StatsError> {
    let value: Value = serde_json::from_str(body).map_err(|e| StatsError::Answer {
        addr: addr.to_string(),
        detail: format!("the /stats JSON does not parse: {e}"),
    })?;
    if !value["totals"].is_object() || !value["clients"].is_array() {
        return Err(StatsError::Answer {
            addr: addr.to_string(),
            detail: "the /stats JSON has no totals or clients".into(),
        });
    }
    Ok(value)
}

/// Frame types in wire order, as `/stats` names them; a type this list
/// does not know (a newer server's) is counted in the total and shown after
/// them.
const FRAME_TYPES: [&str; 18] = [
    "OK", "ERRO", "OI", "FLW", "MSG", "CREQ", "CLIST", "HELLO", "HELLOACK", "WHO", "KICK", "JOIN",
    "LEAVE", "ROOMS", "ROOMACK", "ROOMLIST", "TELL", "WAITING",
];

/// One screen: the totals (with rates per second since `before`, in the
/// live view), then the busiest `top` clients.
fn render(
    out: &mut String,
    addr: &str,
    stats: &Value,
    before: Option<(&Value, Duration)>,
    top: usize,
) {
    let t = &stats["totals"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let rate = |path: &[&str]| -> String {
        let Some((before, elapsed)) = before else {
            return String::new();
        };
        let now = path.iter().fold(t, |v, key| &v[*key]);
        let then = path.iter().fold(&before["totals"], |v, key| &v[*key]);
        let per_sec = n(now).saturating_sub(n(then)) as f64 / elapsed.as_secs_f64().max(1e-3);
        format!(" ({per_sec:.0}/s)")
    };
    let _ = writeln!(
        out,
        "evchat {} at {addr}, started {}",
        stats["version"].as_str().unwrap_or("?"),
        utc(n(&stats["start_time"]))
    );
    let clients = &t["clients"];
    let transports = &t["transports"];
    let _ = writeln!(
        out,
        "clients     {} (emitters {}, exhibitors {}, unidentified {}; tcp {}, ws {}, tls {}, wss {})",
        n(&clients["emitter"]) + n(&clients["exhibitor"]) + n(&clients["unidentified"]),
        n(&clients["emitter"]),
        n(&clients["exhibitor"]),
        n(&clients["unidentified"]),
        n(&transports["tcp"]),
        n(&transports["ws"]),
        n(&transports["tls"]),
        n(&transports["wss"]),
    );
    let _ = writeln!(
        out,
        "delivered   {}{}, acks pending {}, queued {} bytes",
        n(&t["deliveries"]),
        rate(&["deliveries"]),
        n(&t["acks_pending"]),
        n(&t["output_queue_bytes"]),
    );
    for (label, key) in [
        ("frames in ", "frames_received"),
        ("frames out", "frames_sent"),
    ] {
        let by_type = &t[key];
        let others = by_type
            .as_object()
            .into_iter()
            .flatten()
            .map(|(kind, _)| kind.as_str())
            .filter(|kind| !FRAME_TYPES.contains(kind));
        let kinds: Vec<&str> = FRAME_TYPES.into_iter().chain(others).collect();
        // Every type the server counted, as the rate's earlier total is.
        let total: u64 = kinds.iter().map(|k| n(&by_type[*k])).sum();
        let _ = write!(out, "{label}  {total}{}", rate_of_sum(before, key, total));
        let mut first = true;
        for kind in kinds {
            let count = n(&by_type[kind]);
            if count > 0 {
                let _ = write!(out, "{} {kind} {count}", if first { ":" } else { "," });
                first = false;
            }
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "bytes       in {}{}, out {}{}",
        n(&t["received_bytes"]),
        rate(&["received_bytes"]),
        n(&t["sent_bytes"]),
        rate(&["sent_bytes"]),
    );
    let closed = &t["connections_closed"];
    let closed_total: u64 = closed
        .as_object()
        .map_or(0, |reasons| reasons.values().map(n).sum());
    let _ = writeln!(
        out,
        "connections opened {}, closed {closed_total}; slow consumers {}, ack timeouts {}; \
         sign-ins {}, refused {}",
        n(&t["connections_opened"]),
        n(&t["slow_consumer_disconnects"]),
        n(&t["ack_timeouts"]),
        n(&t["sign_ins"]),
        n(&t["sign_in_failures"]),
    );
    let listed = stats["clients"].as_array().map_or(&[][..], Vec::as_slice);
    let shown = listed.len().min(top);
    let _ = writeln!(
        out,
        "\n{shown} of {} clients, busiest first",
        n(&stats["clients_total"])
    );
    let _ = writeln!(
        out,
        "{:>5} {:>5} {:<16} {:<12} {:<4} {:<21} {:<19} {:>9} {:>7}",
        "CONN", "ID", "NAME", "KIND", "VIA", "PEER", "SINCE (UTC)", "QUEUE", "PENDING"
    );
    for client in &listed[..shown] {
        let _ = writeln!(
            out,
            "{:>5} {:>5} {:<16} {:<12} {:<4} {:<21} {:<19} {:>9} {:>7}",
            n(&client["conn"]),
            n(&client["id"]),
            printable(client["name"].as_str().unwrap_or("-")),
            client["kind"].as_str().unwrap_or("?"),
            client["transport"].as_str().unwrap_or("?"),
            client["peer"].as_str().unwrap_or("?"),
            utc(n(&client["since"])),
            n(&client["queue_bytes"]),
            n(&client["pending_acks"]),
        );
    }
}

/// The rate of a sum over frame types, as [`render`]'s rates.
fn rate_of_sum(before: Option<(&Value, Duration)>, key: &str, total: u64) -> String {
    let Some((before, elapsed)) = before else {
        return String::new();
    };
    let then: u64 = before["totals"][key]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, count)| count.as_u64().unwrap_or(0))
        .sum();
    let per_sec = total.saturating_sub(then) as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(" ({per_sec:.0}/s)")
}

/// A peer's name, with anything that would move the cursor or change
/// colours escaped.
fn printable(name: &str) -> String {
    evchat::cli::escape_text(name.as_bytes())
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS`.
fn utc(secs: u64) -> String {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}
