//! `evchat find`: asks the LAN which evchat servers answer discovery
//! (`server --announce`; PROTOCOL.md, "Discovery") and lists them. The
//! query goes to 255.255.255.255, to the broadcast address of each
//! interface that has one and to 127.0.0.1 (a server on this machine bound
//! to loopback hears no broadcast), on the servers' port number; answers
//! are taken for `--timeout` and kept only if they carry the query's nonce.
//! `evchat chat` without an address uses [`find`] too.

use evchat::discovery::{Answer, MAX_ANSWER_LEN, Query};
use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The port asked on unless told: the one the README's examples use.
pub const DEFAULT_PORT: u16 = 5000;
/// How long answers are waited for unless told.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// Answers taken from one run at most: memory stays bounded whatever
/// answers.
const MAX_FOUND: usize = 256;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Servers answer only when started with --announce (off by default), and only to
queries from private, link-local or loopback IPv4 addresses: discovery is for the
LAN. The query is a UDP broadcast, and goes to 127.0.0.1 too for a server on this
machine; nothing beyond the local network receives it.

Each server found is one line: ADDRESS  NAME  TLS-or-plain  accounts-or-open.
Exit status: 0 when some server answered, 1 when none did.

Examples:
  evchat find                  servers answering on port 5000, within 1 s
  evchat find --port 6000 --timeout 3")]
pub struct FindArgs {
    /// The port number the servers listen on (discovery asks on UDP, same number)
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// How long to wait for answers
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = evchat::cli::parse_secs)]
    timeout: Duration,
}

/// A server that answered.
#[derive(Debug, Clone)]
pub struct Found {
    /// Where it answered from, with the TCP port it gave.
    pub addr: SocketAddr,
    pub name: String,
    pub tls: bool,
    pub accounts: bool,
}

impl Found {
    /// Its line in the list: `ADDRESS  NAME  TLS|plain  accounts|open`.
    /// The address to connect to: `tls://` first when the server speaks TLS.
    pub fn endpoint(&self) -> String {
        if self.tls {
            format!("tls://{}", self.addr)
        } else {
            self.addr.to_string()
        }
    }

    pub fn line(&self) -> String {
        format!(
            "{}  {}  {}  {}",
            self.addr,
            self.name,
            if self.tls { "TLS" } else { "plain" },
            if self.accounts { "accounts" } else { "open" }
        )
    }
}

pub fn run(args: FindArgs) -> ExitCode {
    match find(args.port, args.timeout) {
        Ok(found) if found.is_empty() => {
            eprintln!("{}", nothing_found(args.port, args.timeout));
            ExitCode::FAILURE
        }
        Ok(found) => {
            for server in &found {
                println!("{}", server.line());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("evchat find: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What to say when no server answered.
pub fn nothing_found(port: u16, wait: Duration) -> String {
    format!(
        "evchat find: no server answered on UDP port {port} within {wait:?} (a server answers \
         only with --announce)"
    )
}

/// The servers that answer a query on UDP `port` within `wait`, in address
/// order, each once.
pub fn find(port: u16, wait: Duration) -> io::Result<Vec<Found>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_broadcast(true)?;
    let mut nonce = [0u8; 4];
    getrandom::fill(&mut nonce).map_err(io::Error::other)?;
    let nonce = u32::from_be_bytes(nonce);
    let query = Query { nonce }.encode();
    let mut sent = 0;
    let mut last_error = None;
    for to in query_addresses() {
        match socket.send_to(&query, SocketAddrV4::new(to, port)) {
            Ok(_) => sent += 1,
            Err(e) => last_error = Some(e),
        }
    }
    if sent == 0 {
        let e = last_error.unwrap_or_else(|| io::Error::other("no address to send to"));
        return Err(io::Error::new(e.kind(), format!("cannot broadcast: {e}")));
    }
    let deadline = Instant::now() + wait;
    let mut found = BTreeMap::new();
    // One byte more than the longest answer: a longer datagram is cut to
    // this and refused.
    let mut buf = [0u8; MAX_ANSWER_LEN + 1];
    while found.len() < MAX_FOUND {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket.set_read_timeout(Some(left))?;
        let (len, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // An ICMP error for one of the broadcasts: others may answer.
            Err(_) => continue,
        };
        let Ok(answer) = Answer::decode(&buf[..len]) else {
            continue;
        };
        if answer.nonce != nonce {
            continue;
        }
        let addr = SocketAddr::new(from.ip(), answer.port);
        found.entry(addr).or_insert(Found {
            addr,
            name: answer.name,
            tls: answer.tls,
            accounts: answer.accounts,
        });
    }
    Ok(without_loopback_twins(found.into_values().collect()))
}

/// A server on this machine bound to every address answers both the
/// broadcast (from a LAN address) and the loopback query: it is listed once,
/// at its LAN address, which other machines can use too.
fn without_loopback_twins(found: Vec<Found>) -> Vec<Found> {
    let twin = |loopback: &Found| {
        found.iter().any(|other| {
            !other.addr.ip().is_loopback()
                && other.addr.port() == loopback.addr.port()
                && other.name == loopback.name
        })
    };
    let keep: Vec<bool> = found
        .iter()
        .map(|server| !server.addr.ip().is_loopback() || !twin(server))
        .collect();
    found
        .into_iter()
        .zip(keep)
        .filter_map(|(server, keep)| keep.then_some(server))
        .collect()
}

/// 255.255.255.255, the broadcast address of every interface that is up and
/// has one (getifaddrs(3)), each once, and 127.0.0.1.
fn query_addresses() -> Vec<Ipv4Addr> {
    let mut addresses = vec![Ipv4Addr::BROADCAST, Ipv4Addr::LOCALHOST];
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list freed below; each entry
    // and its address pointers are valid until then, and are only read.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return addresses;
        }
        let mut entry = list;
        while !entry.is_null() {
            let ifa = &*entry;
            let flags = ifa.ifa_flags as libc::c_int;
            let broadcast = ifa.ifa_ifu;
            if flags & libc::IFF_UP != 0
                && flags & libc::IFF_BROADCAST != 0
                && !broadcast.is_null()
                && i32::from((*broadcast).sa_family) == libc::AF_INET
            {
                let sin = &*(broadcast as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !addresses.contains(&ip) {
                    addresses.push(ip);
                }
            }
            entry = ifa.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    addresses
}
