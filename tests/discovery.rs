//! LAN discovery (`server --announce`, `evchat find`; PROTOCOL.md,
//! "Discovery") between network namespaces that each test makes: the
//! finder's, with a bridge at 169.254.77.2/24, and one a server, each
//! joined to that bridge by a veth pair (169.254.77.1, .3, ...). Nothing is
//! sent anywhere else: the broadcasts stay on that bridge. The
//! namespaces are named after the process and the test, and removed by a
//! guard however the test ends. Without `ip netns` (not root, no
//! iproute2) these tests fail; outside CI, `EVCHAT_SKIP_NETNS=1` skips them.

use crate::util::{Proc, bin, listening_addr};
use evchat::discovery::{Answer, Query};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FINDER_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);
const PORT: u16 = 5000;

/// Namespaces for one finder and `n` servers, each server joined to a
/// bridge in the finder's namespace by a veth pair; removed when dropped.
struct Lan {
    servers: Vec<String>,
    finder: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Server `i`'s address: 169.254.77.1, .3, .5 ...
fn server_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 77, 1 + 2 * i as u8)
}

impl Lan {
    /// The namespaces, or why they cannot be made here.
    fn new(servers: usize) -> Result<Lan, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let base = format!("evchat-{}-{n}", std::process::id());
        let mut lan = Lan {
            servers: Vec::new(),
            finder: format!("{base}-f"),
        };
        ip(&["netns", "add", &lan.finder])?;
        // From here on the guard removes what was made.
        let f = lan.finder.clone();
        let finder_cidr = format!("{FINDER_IP}/24");
        ip(&["-n", &f, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            &f,
            "addr",
            "add",
            &finder_cidr,
            "broadcast",
            "+",
            "dev",
            "br0",
        ])?;
        ip(&["-n", &f, "link", "set", "lo", "up"])?;
        ip(&["-n", &f, "link", "set", "br0", "up"])?;
        for i in 0..servers {
            let s = format!("{base}-s{i}");
            ip(&["netns", "add", &s])?;
            lan.servers.push(s.clone());
            let port = format!("p{i}");
            ip(&[
                "-n", &s, "link", "add", "v0", "type", "veth", "peer", "name", &port, "netns", &f,
            ])?;
            let cidr = format!("{}/24", server_ip(i));
            ip(&[
                "-n",
                &s,
                "addr",
                "add",
                &cidr,
                "broadcast",
                "+",
                "dev",
                "v0",
            ])?;
            ip(&["-n", &s, "link", "set", "lo", "up"])?;
            ip(&["-n", &s, "link", "set", "v0", "up"])?;
            ip(&["-n", &f, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &f, "link", "set", &port, "up"])?;
        }
        Ok(lan)
    }

    /// `server PORT --bind 0.0.0.0 EXTRA...` in the first server's
    /// namespace.
    fn server(&self, extra: &[&str]) -> (Proc, SocketAddr) {
        self.server_in(0, extra)
    }

    /// `server PORT --bind 0.0.0.0 EXTRA...` in server `i`'s namespace.
    fn server_in(&self, i: usize, extra: &[&str]) -> (Proc, SocketAddr) {
        server_in_namespace(&self.servers[i], "0.0.0.0", extra)
    }

    /// `server PORT --bind BIND EXTRA...` in the finder's own namespace: a
    /// server on the finder's machine.
    fn server_beside_finder(&self, bind: &str, extra: &[&str]) -> (Proc, SocketAddr) {
        server_in_namespace(&self.finder, bind, extra)
    }

    /// `evchat find ARGS` in the finder's namespace: (exit code, stdout,
    /// stderr).
    fn find(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.finder, bin("evchat"), "find"])
            .args(args)
            .output()
            .expect("ip netns exec evchat find");
        (
            out.status.code().expect("exit code"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `work` on a thread inside the finder's namespace (sockets it
    /// opens are that namespace's).
    fn in_finder<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.finder);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("the namespace's file");
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on an open namespace file; it moves this
            // thread only, which ends with `work`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .expect("the finder's thread")
    }
}

/// `server PORT --bind BIND EXTRA...` in the namespace `ns`, once it
/// listens.
fn server_in_namespace(ns: &str, bind: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let port = PORT.to_string();
    let mut args = vec!["netns", "exec", ns, bin("server"), &port, "--bind", bind];
    args.extend_from_slice(extra);
    let proc = Proc::spawn_with("ip", &args);
    let addr = listening_addr(&proc.stdout);
    (proc, addr)
}

impl Drop for Lan {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each pair, and so the
        // pair.
        for ns in self.servers.iter().chain([&self.finder]) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A LAN of one server, or `None` (after saying why) where namespaces
/// cannot be made and CI is not set.
fn lan() -> Option<Lan> {
    lan_of(1)
}

fn lan_of(servers: usize) -> Option<Lan> {
    match Lan::new(servers) {
        Ok(lan) => Some(lan),
        // A developer who cannot make namespaces says so; nothing skips
        // by itself, and under CI nothing skips at all.
        Err(why)
            if std::env::var("CI").as_deref() != Ok("true")
                && std::env::var("EVCHAT_SKIP_NETNS").as_deref() == Ok("1") =>
        {
            eprintln!("skipped (EVCHAT_SKIP_NETNS=1): cannot make network namespaces: {why}");
            None
        }
        Err(why) => panic!(
            "the discovery tests need network namespaces (root and iproute2; .ci/run installs \
             it): {why}. Outside CI, EVCHAT_SKIP_NETNS=1 skips them."
        ),
    }
}

/// Answers read on `socket` until `quiet` passes without one (or `limit`
/// overall): (answers, other datagrams).
fn collect(socket: &UdpSocket, quiet: Duration, limit: Duration) -> (Vec<Answer>, usize) {
    let end = Instant::now() + limit;
    let mut answers = Vec::new();
    let mut other = 0;
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        socket.set_read_timeout(Some(quiet)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => match Answer::decode(&buf[..n]) {
                Ok(answer) => answers.push(answer),
                Err(_) => other += 1,
            },
            Err(_) => break,
        }
    }
    (answers, other)
}

/// The value of `evchat_discovery_queries_total{outcome=...}` on the
/// server, read over HTTP from the finder's namespace.
fn discovery_counts(lan: &Lan) -> [u64; 3] {
    lan.in_finder(|| {
        use std::io::{Read, Write};
        let mut http =
            std::net::TcpStream::connect((server_ip(0), PORT)).expect("connect /metrics");
        http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).unwrap();
        let count = |outcome: &str| {
            let key = format!("evchat_discovery_queries_total{{outcome=\"{outcome}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&key))
                .unwrap_or_else(|| panic!("no {key} in {text}"))
                .parse()
                .unwrap()
        };
        [count("answered"), count("rate_limited"), count("ignored")]
    })
}

/// `evchat find --port 5000` in the finder's namespace exits 0 and lists
/// exactly `lines`.
fn assert_found(lan: &Lan, lines: &str) {
    let (code, out, err) = lan.find(&["--port", "5000"]);
    assert_eq!((code, out.as_str()), (0, lines), "{err}");
}

#[test]
fn a_server_with_announce_is_found_from_another_namespace() {
    let Some(lan) = lan() else { return };
    let (_server, addr) = lan.server(&["--announce", "--name", "lab-a"]);
    assert_eq!(addr, SocketAddr::from(([0, 0, 0, 0], PORT)));
    assert_found(&lan, "169.254.77.1:5000  lab-a  plain  open\n");
}

#[test]
fn a_server_on_this_machine_bound_to_loopback_is_found() {
    let Some(lan) = lan() else { return };
    let (_server, addr) = lan.server_beside_finder("127.0.0.1", &["--announce", "--name", "here"]);
    assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], PORT)));
    assert_found(&lan, "127.0.0.1:5000  here  plain  open\n");
}

#[test]
fn a_server_on_this_machine_bound_to_every_address_is_listed_once() {
    let Some(lan) = lan() else { return };
    let (_here, _) = lan.server_beside_finder("0.0.0.0", &["--announce", "--name", "here"]);
    let (_there, _) = lan.server(&["--announce", "--name", "lab-a"]);
    assert_found(
        &lan,
        "169.254.77.1:5000  lab-a  plain  open\n169.254.77.2:5000  here  plain  open\n",
    );
}

#[test]
fn a_server_with_accounts_and_tls_says_so() {
    let Some(lan) = lan() else { return };
    let dir = crate::util::TempDir::new("discovery-auth");
    let accounts = dir.path().join("accounts");
    let made = Command::new(bin("evchat"))
        .args([
            "user",
            "add",
            accounts.to_str().unwrap(),
            "alice",
            "--roles",
            "view,emit",
        ])
        .args(["--token"])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // Accounts beyond loopback need TLS (the server refuses to start
    // without it): the answer says both.
    let tls = dir.path().join("tls");
    let certs = Command::new(bin("evchat"))
        .args(["cert", "--out", tls.to_str().unwrap(), "169.254.77.1"])
        .output()
        .unwrap();
    assert!(
        certs.status.success(),
        "{}",
        String::from_utf8_lossy(&certs.stderr)
    );
    let (_server, _) = lan.server(&[
        "--announce",
        "--name",
        "lab-b",
        "--auth",
        accounts.to_str().unwrap(),
        "--tls-cert",
        tls.join("cert.pem").to_str().unwrap(),
        "--tls-key",
        tls.join("key.pem").to_str().unwrap(),
    ]);
    let (code, out, err) = lan.find(&[]);
    assert_eq!(
        (code, out.as_str()),
        (0, "169.254.77.1:5000  lab-b  TLS  accounts\n"),
        "{err}"
    );
}

#[test]
fn a_server_without_announce_is_not_found() {
    let Some(lan) = lan() else { return };
    let (_server, _) = lan.server(&[]);
    let (code, out, err) = lan.find(&["--timeout", "0.5"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "evchat find: no server answered on UDP port 5000 within 500ms (a server answers only \
         with --announce)\n"
    );
}

/// Forged and truncated queries get no answer (the server counts them as
/// ignored); the valid query sent after them is the first thing answered.
#[test]
fn a_forged_or_truncated_query_gets_no_answer() {
    let Some(lan) = lan() else { return };
    let (_server, _) = lan.server(&[
        "--announce",
        "--name",
        "lab-c",
        "--metrics-allow",
        "169.254.77.0/24",
    ]);
    let (answers, other) = lan.in_finder(|| {
        let socket = UdpSocket::bind((FINDER_IP, 0)).unwrap();
        let to = (server_ip(0), PORT);
        let good = Query { nonce: 42 }.encode();
        let mut forged: Vec<Vec<u8>> = vec![
            good[..127].to_vec(),
            good[..12].to_vec(),
            [&good[..], &[0]].concat(),
            Vec::new(),
        ];
        for (at, value) in [(0, b'X'), (4, 2), (5, 2), (6, 1), (100, 1)] {
            let mut bytes = good.to_vec();
            bytes[at] = value;
            forged.push(bytes);
        }
        for bytes in &forged {
            socket.send_to(bytes, to).unwrap();
        }
        socket.send_to(&good, to).unwrap();
        collect(&socket, Duration::from_millis(500), Duration::from_secs(5))
    });
    assert_eq!(other, 0);
    let nonces: Vec<u32> = answers.iter().map(|a| a.nonce).collect();
    assert_eq!(nonces, [42], "{answers:?}");
    assert_eq!(discovery_counts(&lan), [1, 0, 9]);
}

/// A flood of queries from one source: at most two answers a second
/// reach it, every query is counted, and a chat over TCP during the flood
/// loses nothing.
#[test]
fn a_flood_of_queries_is_rate_limited_and_the_chat_goes_on() {
    let Some(lan) = lan() else { return };
    let (_server, _) = lan.server(&[
        "--announce",
        "--name",
        "lab-d",
        "--metrics-allow",
        "169.254.77.0/24",
    ]);
    const QUERIES: usize = 5000;
    const MESSAGES: u16 = 50;
    let (answers, elapsed, delivered) = lan.in_finder(|| {
        use evchat::testing::raw_client::Raw;
        let server = SocketAddr::from((server_ip(0), PORT));
        let mut exhibitor = Raw::connect(server);
        let x = exhibitor.identify_exhibitor();
        let mut emitter = Raw::connect(server);
        let e = emitter.identify_emitter(1);
        let socket = UdpSocket::bind((FINDER_IP, 0)).unwrap();
        let flooding = socket.try_clone().unwrap();
        let start = Instant::now();
        let flood = std::thread::spawn(move || {
            for n in 0..QUERIES {
                let _ = flooding.send_to(&Query { nonce: n as u32 }.encode(), server);
            }
        });
        // The chat goes on meanwhile: every MSG reaches the exhibitor and
        // its OK the emitter.
        let mut delivered = 0;
        for seq in 0..MESSAGES {
            emitter.send(&crate::util::msg(e, x, seq, b"during the flood"));
            let got = exhibitor.expect_frame();
            assert_eq!((got.origin, got.seq), (e, seq));
            exhibitor.send(&crate::util::hdr(evchat::proto::Kind::Ok, x, e, seq));
            let ok = emitter.expect_frame();
            assert_eq!((ok.kind, ok.seq), (evchat::proto::Kind::Ok, seq));
            delivered += 1;
        }
        flood.join().unwrap();
        let (answers, _) = collect(&socket, Duration::from_millis(500), Duration::from_secs(10));
        (answers, start.elapsed(), delivered)
    });
    assert_eq!(delivered, MESSAGES);
    // Two a window of 1 s, in each window the flood and its reading spanned.
    let windows = elapsed.as_secs() + 1;
    assert!(!answers.is_empty());
    assert!(
        answers.len() as u64 <= 2 * windows,
        "{} answers in {elapsed:?}",
        answers.len()
    );
    let [answered, limited, ignored] = discovery_counts(&lan);
    assert_eq!(answered, answers.len() as u64);
    assert_eq!(ignored, 0);
    // The kernel may drop datagrams of a flood; what arrived was counted.
    assert!(answered + limited <= QUERIES as u64);
    assert!(limited > 0);
}

/// `evchat chat` without an address joins the one server that answers.
#[test]
fn chat_without_an_address_joins_the_server_found() {
    let Some(lan) = lan() else { return };
    let (_server, _) = lan.server(&["--announce", "--name", "lab-e"]);
    let mut chat = Proc::spawn_with(
        "ip",
        &[
            "netns",
            "exec",
            &lan.finder,
            bin("evchat"),
            "chat",
            "--timestamps",
            "never",
        ],
    );
    chat.stderr
        .expect_line("evchat chat: joining 169.254.77.1:5000  lab-e  plain  open");
    let _ = &mut chat;
}

/// No server: `evchat chat` without an address says so and exits 1.
#[test]
fn chat_without_an_address_and_no_server_says_so() {
    let Some(lan) = lan() else { return };
    let out = Command::new("ip")
        .args(["netns", "exec", &lan.finder, bin("evchat"), "chat"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "evchat chat: no server answered on UDP port 5000 within 1s (a server answers only with \
         --announce); give HOST:PORT\n"
    );
}

/// Two servers answer: `evchat find` lists both; `evchat chat` without an
/// address lists them and joins the one chosen.
#[test]
fn chat_with_several_servers_found_asks_which() {
    let Some(lan) = lan_of(2) else { return };
    let (_one, _) = lan.server_in(0, &["--announce", "--name", "lab-1"]);
    let (two, _) = lan.server_in(1, &["--announce", "--name", "lab-2"]);
    let (code, out, err) = lan.find(&[]);
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "169.254.77.1:5000  lab-1  plain  open\n169.254.77.3:5000  lab-2  plain  open\n"
        ),
        "{err}"
    );
    let mut chat = Proc::spawn_with(
        "ip",
        &[
            "netns",
            "exec",
            &lan.finder,
            bin("evchat"),
            "chat",
            "--timestamps",
            "never",
        ],
    );
    chat.stderr.expect_line("evchat chat: 2 servers answered:");
    chat.stderr
        .expect_line("  1  169.254.77.1:5000  lab-1  plain  open");
    chat.stderr
        .expect_line("  2  169.254.77.3:5000  lab-2  plain  open");
    chat.input("2\n");
    // The second server sees the chat's two connections.
    two.stderr.skip_until(
        "a connection from the finder",
        Duration::from_secs(10),
        |l| l.contains("connected") && l.contains("169.254.77.2:"),
    );
}

/// A choice that is no server's number: said, exit 1.
#[test]
fn chat_with_several_servers_refuses_a_bad_choice() {
    let Some(lan) = lan_of(2) else { return };
    let (_one, _) = lan.server_in(0, &["--announce", "--name", "lab-1"]);
    let (_two, _) = lan.server_in(1, &["--announce", "--name", "lab-2"]);
    let mut chat = Proc::spawn_with("ip", &["netns", "exec", &lan.finder, bin("evchat"), "chat"]);
    chat.input("3\n");
    chat.close_input();
    assert_eq!(chat.wait().code(), Some(1));
    let said = chat.stderr.rest();
    assert_eq!(
        said.last().map(String::as_str),
        Some("which one (1-2)? evchat chat: '3' is not a number from 1 to 2"),
        "{said:?}"
    );
}

/// `server` with `--announce` where it cannot work: exit 2, saying why,
/// before anything is bound.
#[test]
fn announce_refuses_an_ipv6_bind_and_an_empty_name() {
    for (args, want) in [
        (
            &["0", "--bind", "::1", "--announce"][..],
            "server: --announce: discovery is IPv4; --bind an IPv4 address\n",
        ),
        (
            &["0", "--announce", "--name", "   "][..],
            "server: --name '   ': nothing printable left to announce\n",
        ),
    ] {
        let out = Command::new(bin("server")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), want, "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
    }
    let out = Command::new(bin("server"))
        .args(["0", "--name", "lab"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--announce"),
        "--name needs --announce"
    );
}
