//! `server <port>`: the evchat relay. Parses flags (loopback unless `--bind`
//! says otherwise; zero limits refused), raises the descriptor limit, binds,
//! logs what it runs with, prints `listening on <addr>` (and tells a
//! `Type=notify` service manager `READY=1`) and runs the event loop until
//! SIGINT/SIGTERM (`STOPPING=1`) has drained every client.

use clap::Parser;
use evchat::cli::parse_secs;
use evchat::server::{
    AuthConfig, Cidr, ClusterConfig, Config, HistoryConfig, Limits, Server, TlsConfig, WebConfig,
};
use evchat::server::{MAX_ROOMS_CEILING, RoomLimits, StartError, TellLimits};
use evchat::store::Fsync;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "evchat server: relays messages from emitters to exhibitors",
    long_about = "\
evchat server: relays messages from emitters to exhibitors.

It listens on loopback (127.0.0.1) unless --bind says otherwise, prints
'listening on ADDR' on stdout and logs to stderr (no colour if NO_COLOR is set). The
same port serves a browser client at http://ADDR/ (WebSocket on /ws) unless --no-web. Without
--auth it has no authentication: anyone who can reach the port can chat (a client may claim a
name with HELLO). With --auth FILE every client signs in to an account of FILE (see
`evchat user`) before its OI. With --tls-cert and --tls-key the same port also speaks TLS
(https://, wss://, tls:// for the clients); --require-tls refuses plain connections, and is
implied by --auth on an address beyond loopback, where --auth without TLS is refused. SIGHUP
reloads the accounts and the certificate. Ctrl-C or SIGTERM says goodbye (FLW) to every client
and exits 0.",
    after_help = "Examples:\n  \
server 5000                        this machine only (127.0.0.1:5000)\n  \
server 5000 --auth accounts        sign-in required (evchat user add accounts NAME --roles R)\n  \
server 5000 --tls-cert cert.pem --tls-key key.pem   TLS too (evchat cert makes a test pair)"
)]
struct Args {
    /// TCP port to listen on (0 picks a free one)
    port: u16,
    /// Address or host name to listen on: 0.0.0.0 (or ::) serves the network
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1", value_parser = parse_bind)]
    bind: IpAddr,
    /// Seconds an exhibitor may take to acknowledge a frame before it is dropped (at most
    /// 12 days: a longer wait counts as 12 days)
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Secs(defaults().limits.ack_timeout),
        value_parser = parse_positive_secs
    )]
    ack_timeout: Secs,
    /// Seconds a new connection may take to send OI
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Secs(defaults().limits.handshake_timeout),
        value_parser = parse_positive_secs
    )]
    handshake_timeout: Secs,
    /// Seconds shutdown waits for clients to acknowledge FLW
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Secs(defaults().drain_timeout),
        value_parser = parse_positive_secs
    )]
    drain_timeout: Secs,
    /// Unsent bytes per connection past which it is dropped as a slow consumer
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = defaults().max_queue,
        value_parser = parse_queue_bytes
    )]
    max_queue: usize,
    /// Unsettled requests per emitter before the server stops reading it
    #[arg(
        long,
        value_name = "N",
        default_value_t = defaults().limits.max_inflight as u32,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_inflight: u32,
    /// Keep every accepted message in a durable log in DIR (see HISTORY.md)
    #[arg(long, value_name = "DIR")]
    history: Option<PathBuf>,
    /// With --history: send each exhibitor that identifies the last N
    /// broadcasts first (0: none)
    #[arg(
        long,
        value_name = "N",
        default_value_t = history_defaults().replay as u16,
        requires = "history",
        value_parser = clap::value_parser!(u16).range(..=10_000)
    )]
    replay: u16,
    /// With --history: always (an OK waits for the disk), everysec, or no
    #[arg(
        long,
        value_name = "MODE",
        default_value_t = history_defaults().fsync,
        requires = "history",
        value_parser = parse_fsync
    )]
    fsync: Fsync,
    /// With --history: past this many bytes the oldest part of the log is deleted
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = history_defaults().max_bytes,
        requires = "history",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    history_max_bytes: u64,
    /// With --history: cut the log where it is corrupt instead of refusing to start
    #[arg(long, requires = "history")]
    history_repair: bool,
    /// With --history: messages that may wait for one offline name (TELL)
    #[arg(
        long,
        value_name = "N",
        default_value_t = history_defaults().tells.max as u32,
        requires = "history",
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    tell_max: u32,
    /// With --history: bytes of text that may wait for one offline name (TELL)
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = history_defaults().tells.max_bytes as u64,
        requires = "history",
        value_parser = clap::value_parser!(u64).range(1..=1 << 30)
    )]
    tell_max_bytes: u64,
    /// With --history, without --auth: names seen (signed in with, or in the
    /// log) that a TELL may be stored for, the one seen longest ago
    /// forgotten first (with --auth every account's name counts)
    #[arg(
        long,
        value_name = "N",
        default_value_t = history_defaults().tells.names as u32,
        requires = "history",
        value_parser = clap::value_parser!(u32).range(1..=10_000_000)
    )]
    tell_names: u32,
    /// Microseconds the loop keeps polling before it sleeps while it is busy
    /// (working at least half the time, input coming within that long): more
    /// throughput and less latency under load, for some CPU; an idle or
    /// lightly loaded server never spins (0: never)
    #[arg(
        long,
        value_name = "MICROS",
        default_value_t = defaults().spin.as_micros() as u64,
        value_parser = clap::value_parser!(u64).range(..=10_000)
    )]
    spin_us: u64,
    /// Require a sign-in (HELLO) to an account of FILE before OI; FILE must
    /// be private (chmod 600); see `evchat user` and PROTOCOL.md
    #[arg(long, value_name = "FILE")]
    auth: Option<PathBuf>,
    /// With --auth: refused sign-ins per address (IPv6: /64) within
    /// --auth-window before its sign-ins are refused unchecked
    #[arg(
        long,
        value_name = "N",
        default_value_t = auth_defaults().failures,
        requires = "auth",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    auth_failures: u32,
    /// With --auth: the window of --auth-failures, in seconds
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Secs(auth_defaults().window),
        requires = "auth",
        value_parser = parse_positive_secs
    )]
    auth_window: Secs,
    /// With --auth: a refused sign-in (wrong secret, unknown account, or too
    /// many refused) is answered no sooner than SECS after its HELLO, as
    /// login programs do, so that guessing one connection after another
    /// gets one guess a delay (0: at once; fractions such as 0.25 work)
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Secs(auth_defaults().refusal_delay),
        requires = "auth",
        value_parser = parse_delay_secs
    )]
    auth_delay: Secs,
    /// With --auth: sign-ins waiting to be checked; one more is answered "busy"
    #[arg(
        long,
        value_name = "N",
        default_value_t = auth_defaults().queue as u32,
        requires = "auth",
        value_parser = clap::value_parser!(u32).range(1..=65_536)
    )]
    auth_queue: u32,
    /// With --auth: connections from one address (IPv6: /64) that have not
    /// yet signed in and sent OI; one more is closed at once
    #[arg(
        long,
        value_name = "N",
        default_value_t = auth_defaults().max_unidentified as u32,
        requires = "auth",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    max_unidentified: u32,
    /// Serve only the binary protocol: no page, no WebSocket on this port
    #[arg(long)]
    no_web: bool,
    /// Also accept WebSocket connections from pages served at this origin
    /// (e.g. https://chat.example.com); repeatable. The server's own origin
    /// is always accepted.
    // The doc is the --help text, so its URL stays plain.
    #[allow(rustdoc::bare_urls)]
    #[arg(long, value_name = "URL")]
    allow_origin: Vec<String>,
    /// Addresses that may read /metrics and /stats without a token, as
    /// ADDR/BITS (e.g. 10.0.0.0/8); repeatable. Without it and without
    /// --auth, loopback only; with --auth, an admin's token otherwise
    #[arg(long, value_name = "CIDR")]
    metrics_allow: Vec<Cidr>,
    /// Answer LAN discovery (`evchat find`) on UDP, same port number: LAN only, off by
    /// default; broadcasts reach the server only with --bind 0.0.0.0
    #[arg(long)]
    announce: bool,
    /// The name --announce gives (at most 63 bytes; default: the host name)
    #[arg(long, value_name = "NAME", requires = "announce")]
    name: Option<String>,
    /// Join the nodes sharing this Redis as one system (CLUSTER.md): one id
    /// space, messages routed to clients on any node
    #[arg(long, value_name = "redis://HOST:PORT")]
    cluster: Option<String>,
    /// This node's name in the cluster (default: HOST:PORT)
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node: Option<String>,
    /// Seconds a node's lease lives unless renewed (every third of it); a node that
    /// cannot renew for two thirds of it stops serving (CLUSTER.md)
    #[arg(
        long,
        value_name = "SECS",
        requires = "cluster",
        default_value_t = Secs(cluster_defaults().lease),
        value_parser = parse_lease_secs
    )]
    cluster_lease: Secs,
    /// Requests to Redis the loop may queue (claims, releases, batches of relays);
    /// past it an OI or HELLO name is refused and relays fail, and releases wait
    #[arg(
        long,
        value_name = "N",
        requires = "cluster",
        default_value_t = cluster_defaults().queue as u32,
        value_parser = clap::value_parser!(u32).range(1..=1_048_576)
    )]
    cluster_queue: u32,
    /// Rooms the server holds at most (PROTOCOL.md, rooms and queues)
    #[arg(
        long,
        value_name = "N",
        default_value_t = defaults().rooms.max_rooms as u16,
        value_parser = clap::value_parser!(u16).range(1..=MAX_ROOMS_CEILING as i64)
    )]
    max_rooms: u16,
    /// Rooms one name may be a member of
    #[arg(
        long,
        value_name = "N",
        default_value_t = defaults().rooms.rooms_per_name as u16,
        value_parser = clap::value_parser!(u16).range(1..=MAX_ROOMS_CEILING as i64)
    )]
    rooms_per_name: u16,
    /// Members (names) one room may have
    #[arg(
        long,
        value_name = "N",
        default_value_t = defaults().rooms.room_members as u16,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    room_members: u16,
    /// Messages that may wait in one queue room for a free member
    #[arg(
        long,
        value_name = "N",
        default_value_t = defaults().rooms.queue_depth as u32,
        value_parser = clap::value_parser!(u32).range(1..=1_000_000)
    )]
    queue_depth: u32,
    /// Seconds a queue message may wait for a free member before its sender gets ERRO
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = Secs(defaults().rooms.queue_wait),
        value_parser = parse_positive_secs
    )]
    queue_wait: Secs,
    /// Log lines as text, or as one JSON object a line (for log shippers)
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
    /// TLS on the same port: the certificate chain, PEM (server first);
    /// SIGHUP reloads it
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Refuse unencrypted connections (rule 1's ERRO for the binary
    /// protocol, 403 for HTTP); implied by --auth beyond loopback
    #[arg(long, requires = "tls_cert")]
    require_tls: bool,
    /// With TLS required: still serve unencrypted connections from this
    /// machine (a TLS proxy in front, local tools)
    #[arg(long, requires = "tls_cert")]
    allow_plain_loopback: bool,
    /// Threads that run TLS handshakes (the certificate's signature, the
    /// key exchange) beside the event loop, in the idle scheduling class
    /// (on CPU the loop leaves); 0 runs them on the loop
    #[arg(
        long,
        value_name = "N",
        default_value_t = TlsConfig::new(PathBuf::new(), PathBuf::new()).workers as u32,
        requires = "tls_cert",
        value_parser = clap::value_parser!(u32).range(0..=64)
    )]
    tls_workers: u32,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only)
    #[arg(short, long, action = clap::ArgAction::Count)]
    quiet: u8,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// `TIME LEVEL target: message field=value ...`
    Text,
    /// `{"timestamp":...,"level":...,"fields":{"message":...,...},"target":...}`
    Json,
}

/// The name `--announce` answers with: `--name`, else the host name;
/// `None` without `--announce`.
fn announced_name(args: &Args) -> Result<Option<String>, String> {
    if !args.announce {
        return Ok(None);
    }
    if args.bind.is_ipv6() {
        return Err("--announce: discovery is IPv4; --bind an IPv4 address".to_string());
    }
    let wanted = match &args.name {
        Some(name) => name.clone(),
        None => host_name().map_err(|e| format!("--announce: no host name ({e}): give --name"))?,
    };
    evchat::discovery::server_name(&wanted)
        .map(Some)
        .ok_or_else(|| format!("--name '{wanted}': nothing printable left to announce"))
}

/// This machine's host name (gethostname(2)).
fn host_name() -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// The library's defaults, which the flags' defaults are read from.
fn defaults() -> Config {
    Config::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
}

fn auth_defaults() -> AuthConfig {
    AuthConfig::new(PathBuf::new())
}

fn cluster_defaults() -> ClusterConfig {
    ClusterConfig::new(String::new(), String::new())
}

/// A lease in seconds: at least 1.5, so that a renewal every third of it
/// is not below half a second; at most a day.
fn parse_lease_secs(text: &str) -> Result<Secs, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(1.5..=86_400.0).contains(&secs) {
        return Err(format!("'{text}': a lease is 1.5 to 86400 seconds"));
    }
    Ok(Secs(Duration::from_secs_f64(secs)))
}

fn history_defaults() -> HistoryConfig {
    HistoryConfig::new(PathBuf::new())
}

/// A duration given in seconds; shown (as a flag's default) the way it is
/// typed.
#[derive(Debug, Clone, Copy)]
struct Secs(Duration);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

/// A host name or address for `--bind`, resolved once at start.
fn parse_bind(text: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = text.parse() {
        return Ok(ip);
    }
    let mut found = (text, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve '{text}': {e}"))?;
    found
        .next()
        .map(|addr| addr.ip())
        .ok_or_else(|| format!("'{text}' has no address"))
}

/// A duration in seconds that must not be zero (a zero timeout would drop
/// every client at once).
fn parse_delay_secs(text: &str) -> Result<Secs, String> {
    parse_secs(text).map(Secs)
}

fn parse_positive_secs(text: &str) -> Result<Secs, String> {
    let secs = parse_secs(text)?;
    if secs.is_zero() {
        return Err(
            "0 is not allowed: the allowed range is above 0 seconds (fractions such as 0.5 work)"
                .into(),
        );
    }
    Ok(Secs(secs))
}

/// A per-connection queue size in bytes, 1 or more.
fn parse_queue_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of bytes"))?;
    if bytes == 0 {
        return Err(format!(
            "0 is not allowed: the allowed range is 1..={} bytes",
            usize::MAX
        ));
    }
    Ok(bytes)
}

/// What a newcomer can do about the commonest ways of failing to listen,
/// after the system's own words.
fn what_to_do(e: &StartError) -> String {
    let StartError::Listen { addr, source } = e else {
        return String::new();
    };
    match source.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "; another program (another server?) listens on port {}: stop it, or give \
             another port",
            addr.port()
        ),
        std::io::ErrorKind::AddrNotAvailable => format!(
            "; {} is not an address of this machine: give --bind one of its addresses, or \
             0.0.0.0 (or ::) for all of them",
            addr.ip()
        ),
        _ => String::new(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose, args.quiet, args.log_format);
    // Secrets never cross the network in clear: a server open beyond this
    // machine with accounts must encrypt (or sit behind a TLS proxy that
    // reaches it on loopback).
    let beyond_loopback = !args.bind.to_canonical().is_loopback();
    if args.auth.is_some() && beyond_loopback && args.tls_cert.is_none() {
        eprintln!(
            "server: --auth on {} (beyond loopback) needs TLS: give --tls-cert and --tls-key, \
             or bind to 127.0.0.1 behind a TLS proxy; sign-in secrets would cross the network \
             in clear",
            args.bind
        );
        return ExitCode::FAILURE;
    }
    if args.auth.is_some() && args.auth_delay.0 >= args.handshake_timeout.0 {
        eprintln!(
            "server: --auth-delay ({} s) must be shorter than --handshake-timeout ({} s): \
             a refused client would be closed before its answer",
            args.auth_delay, args.handshake_timeout
        );
        return ExitCode::FAILURE;
    }
    let reloads = args.auth.is_some() || args.tls_cert.is_some();
    // Before any thread starts, so that every thread inherits the mask and
    // only the waiting thread below takes SIGHUP.
    if reloads && let Err(e) = block_reload_signal() {
        eprintln!("server: cannot set up SIGHUP: {e}");
        return ExitCode::FAILURE;
    }
    raise_descriptor_limit();
    if args.history.is_some() {
        ignore_file_size_signal();
    }
    let config = Config {
        addr: SocketAddr::new(args.bind, args.port),
        limits: Limits {
            ack_timeout: args.ack_timeout.0,
            handshake_timeout: args.handshake_timeout.0,
            max_inflight: args.max_inflight as usize,
        },
        max_queue: args.max_queue,
        drain_timeout: args.drain_timeout.0,
        web: (!args.no_web).then(|| WebConfig {
            allowed_origins: args.allow_origin.clone(),
        }),
        spin: Duration::from_micros(args.spin_us),
        history: args.history.clone().map(|dir| HistoryConfig {
            dir,
            replay: usize::from(args.replay),
            fsync: args.fsync,
            max_bytes: args.history_max_bytes,
            repair: args.history_repair,
            tells: TellLimits {
                max: args.tell_max as usize,
                max_bytes: args.tell_max_bytes as usize,
                names: args.tell_names as usize,
            },
        }),
        auth: args.auth.clone().map(|file| AuthConfig {
            file,
            failures: args.auth_failures,
            window: args.auth_window.0,
            queue: args.auth_queue as usize,
            max_unidentified: args.max_unidentified as usize,
            refusal_delay: args.auth_delay.0,
        }),
        metrics_allow: args.metrics_allow.clone(),
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| TlsConfig {
                require: args.require_tls || (args.auth.is_some() && beyond_loopback),
                allow_plain_loopback: args.allow_plain_loopback,
                workers: args.tls_workers as usize,
                ..TlsConfig::new(cert, key)
            }),
        announce: match announced_name(&args) {
            Ok(name) => name,
            Err(message) => {
                eprintln!("server: {message}");
                return ExitCode::from(2);
            }
        },
        rooms: RoomLimits {
            max_rooms: usize::from(args.max_rooms),
            rooms_per_name: usize::from(args.rooms_per_name),
            room_members: usize::from(args.room_members),
            queue_depth: args.queue_depth as usize,
            queue_wait: args.queue_wait.0,
        },
        cluster: args.cluster.clone().map(|url| ClusterConfig {
            url,
            node: args.node.clone().unwrap_or_else(|| {
                let host = host_name().unwrap_or_else(|_| "localhost".into());
                format!("{host}:{}", args.port)
            }),
            lease: args.cluster_lease.0,
            queue: args.cluster_queue as usize,
        }),
    };
    let server = match Server::bind(config.clone()) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("server: {e}{}", what_to_do(&e));
            return ExitCode::FAILURE;
        }
    };
    if reloads {
        let reload = server.reload_handle();
        let spawned = std::thread::Builder::new()
            .name("evchat-sighup".to_string())
            .spawn(move || wait_for_reload_signals(|| reload.trigger()));
        if let Err(e) = spawned {
            eprintln!("server: cannot set up SIGHUP: {e}");
            return ExitCode::FAILURE;
        }
    }
    let handle = server.shutdown_handle();
    let signals = AtomicUsize::new(0);
    if let Err(e) = ctrlc::set_handler(move || {
        if signals.fetch_add(1, Ordering::SeqCst) == 0 {
            // A service manager waiting on us learns the drain has begun.
            if let Err(e) = evchat::sd_notify::notify("STOPPING=1") {
                tracing::warn!(error = %e, "cannot tell the service manager STOPPING=1");
            }
            handle.trigger();
        } else {
            eprintln!("server: second signal, exiting without draining");
            std::process::exit(1);
        }
    }) {
        eprintln!("server: cannot install the signal handler: {e}");
        return ExitCode::FAILURE;
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        addr = %server.local_addr(),
        ack_timeout = ?config.limits.ack_timeout,
        handshake_timeout = ?config.limits.handshake_timeout,
        drain_timeout = ?config.drain_timeout,
        max_queue = config.max_queue,
        max_inflight = config.limits.max_inflight,
        web = config.web.is_some(),
        spin = ?config.spin,
        "evchat server starting"
    );
    if let Some(auth) = &config.auth {
        tracing::info!(
            file = %auth.file.display(),
            failures = auth.failures,
            window = ?auth.window,
            queue = auth.queue,
            max_unidentified = auth.max_unidentified,
            "accounts required (--auth)"
        );
    }
    if let Some(name) = &config.announce {
        tracing::info!(name = %name, "answering LAN discovery on UDP (--announce)");
        if !server.local_addr().ip().is_unspecified() {
            tracing::warn!(
                "--announce with --bind {}: only queries sent to that address are heard; \
                 broadcasts need --bind 0.0.0.0",
                server.local_addr().ip()
            );
        }
    }
    if let Some(tls) = &config.tls {
        tracing::info!(
            cert = %tls.cert.display(),
            require = tls.require,
            allow_plain_loopback = tls.allow_plain_loopback,
            workers = tls.workers,
            "TLS on the same port"
        );
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on {}", server.local_addr());
    let _ = stdout.flush();
    drop(stdout);
    // Type=notify: the unit is started once the port accepts connections.
    if let Err(e) = evchat::sd_notify::notify("READY=1") {
        tracing::warn!(error = %e, "cannot tell the service manager READY=1");
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: event loop failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP (reload the accounts, `--auth`, and the certificate) is taken by one thread that
/// waits for it with sigwait(2) and asks the loop to reload (a flag and its
/// waker): nothing runs in a signal handler. The signal is blocked in
/// every thread first, so that it is only ever delivered to that wait.
fn block_reload_signal() -> std::io::Result<()> {
    // SAFETY: the sigset is initialised by sigemptyset before use, and
    // pthread_sigmask only reads it.
    let rc = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits for SIGHUP forever, calling `reload` for each.
fn wait_for_reload_signals(reload: impl Fn()) {
    loop {
        let mut signal = 0;
        // SAFETY: as above; sigwait writes the signal number it took.
        let rc = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::sigwait(&set, &mut signal)
        };
        if rc == 0 && signal == libc::SIGHUP {
            tracing::info!("SIGHUP: reloading");
            reload();
        }
    }
}

fn parse_fsync(text: &str) -> Result<Fsync, String> {
    text.parse()
}

/// Past the file-size limit (RLIMIT_FSIZE) a history write must fail with
/// EFBIG, which the history handles like a full disk, rather than raise
/// SIGXFSZ, which would end the server.
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN touches no memory.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn init_logging(verbose: u8, quiet: u8, format: LogFormat) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr()) && !evchat::cli::no_color(),
            )
            .init(),
        // The same fields as the text lines, one object a line; no colour.
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

/// Lifts the open-file soft limit to the hard limit so that every id (8191
/// clients) can be connected at once where the system allows it.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        // The soft limit is never above the hard one.
        if limit.rlim_cur != limit.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) != 0 {
                tracing::warn!("could not raise the open-file limit");
                return;
            }
            limit = wanted;
        }
    }
    if limit.rlim_cur < 8192 + 16 {
        tracing::warn!(
            limit = limit.rlim_cur,
            "open-file limit is below what 8191 clients need"
        );
    }
}
