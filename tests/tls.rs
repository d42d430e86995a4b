//! TLS on the server's port (PROTOCOL.md, "TLS transport"), against the
//! real `server` binary: foreign clients (the openssl binary, Python's ssl
//! module) carry a protocol session, rustls clients drive the handshake
//! byte by byte, and each bad input has its test: garbage after 0x16, a
//! handshake cut short or abandoned, plain clients where TLS is required,
//! a key that does not match, a certificate replaced by garbage before
//! SIGHUP. Every wait is a read with a deadline or a log line.
//!
//! The openssl binary is required (.ci/run installs it): without it these
//! tests fail with the command that installs it, never skip.

use crate::check::evchat;
use crate::util::*;
use evchat::auth::Roles;
use evchat::proto::*;
use evchat::tls::generate::throwaway;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant, SystemTime};

const S: ClientId = SERVER_ID;
const OPENSSL: &str = "/usr/bin/openssl";

/// A throwaway CA and server certificate for localhost and 127.0.0.1, in
/// a directory of their own.
pub struct Certs {
    pub dir: TempDir,
}

impl Certs {
    pub fn new(name: &str) -> Certs {
        Certs::valid_between(
            name,
            &["localhost", "127.0.0.1"],
            SystemTime::now() - Duration::from_secs(3600),
            SystemTime::now() + Duration::from_secs(86_400),
        )
    }

    pub fn valid_between(
        name: &str,
        hosts: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Certs {
        let dir = TempDir::new(name);
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        let made = throwaway(&hosts, not_before, not_after).unwrap();
        std::fs::write(dir.path().join("ca.pem"), made.ca_pem).unwrap();
        std::fs::write(dir.path().join("cert.pem"), made.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), made.key_pem).unwrap();
        Certs { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn arg(&self, file: &str) -> String {
        self.path(file).to_str().unwrap().to_string()
    }

    /// The server's flags for this pair.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.arg("cert.pem"),
            "--tls-key".into(),
            self.arg("key.pem"),
        ]
    }

    /// A rustls client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        // As the server's (src/tls.rs says why it is allowed).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// A server with TLS and `extra` flags.
pub fn tls_server(certs: &Certs, extra: &[&str]) -> Server {
    let mut args: Vec<String> = certs.server_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// A protocol client over TLS (rustls), byte-exact like `Raw`.
pub struct TlsRaw {
    stream: StreamOwned<ClientConnection, TcpStream>,
}

impl TlsRaw {
    pub fn connect(server: &Server, certs: &Certs) -> TlsRaw {
        TlsRaw::connect_to(server.addr, certs)
    }

    /// TLS to `addr` (from a thread that holds no `Server`).
    pub fn connect_to(addr: std::net::SocketAddr, certs: &Certs) -> TlsRaw {
        TlsRaw::over(TcpStream::connect(addr).unwrap(), certs)
    }

    /// TLS over a socket already connected.
    pub fn over(tcp: TcpStream, certs: &Certs) -> TlsRaw {
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(certs.client_config(), name).unwrap();
        TlsRaw {
            stream: StreamOwned::new(conn, tcp),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    /// Exactly `n` bytes, within the usual deadline.
    pub fn expect_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        let mut got = vec![0u8; n];
        let mut at = 0;
        while at < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{at} of {n} bytes within {TIMEOUT:?}");
            self.stream.sock.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut got[at..]) {
                Ok(0) => panic!("closed after {at} of {n} bytes"),
                Ok(k) => at += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("read after {at} of {n} bytes: {e}"),
            }
        }
        got
    }

    pub fn expect_exact(&mut self, want: &[u8]) {
        assert_bytes(want, &self.expect_bytes(want.len()));
    }

    /// OI as `origin` (0: an exhibitor); the id the OK assigns.
    pub fn identify(&mut self, origin: ClientId) -> ClientId {
        self.send(&hdr(Kind::Oi, origin, 0, 0));
        let ok = self.expect_bytes(8);
        assert_eq!(
            ok[..4],
            hdr(Kind::Ok, S, 0, 0)[..4],
            "not an OK: {}",
            hex(&ok)
        );
        u16::from_be_bytes([ok[4], ok[5]])
    }
}

/// The openssl binary, or a failure that says how to install it.
pub fn openssl() -> &'static str {
    assert!(
        Path::new(OPENSSL).exists(),
        "{OPENSSL} not found: the TLS tests need it \
         (`apt-get install -y --no-install-recommends openssl`; .ci/run does this)"
    );
    OPENSSL
}

/// A foreign program as a protocol client: bytes go to its stdin, and its
/// stdout comes back through a channel.
struct Foreign {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Foreign {
    fn spawn(mut command: Command) -> Foreign {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn foreign client");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = channel();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut chunk) {
                if tx.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Foreign {
            stdin: child.stdin.take(),
            child,
            out,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn expect_bytes(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        while self.buf.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => self.buf.extend(chunk),
                Err(_) => {
                    let mut err = String::new();
                    let _ = self.child.kill();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    panic!(
                        "{} of {n} bytes ({}); its stderr: {err}",
                        self.buf.len(),
                        hex(&self.buf)
                    );
                }
            }
        }
        self.buf.drain(..n).collect()
    }

    fn expect_exact(&mut self, want: &[u8]) {
        assert_bytes(want, &self.expect_bytes(want.len()));
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s_client(server: &Server, ca: &Path) -> Foreign {
    let mut command = Command::new(openssl());
    command.args([
        "s_client",
        "-connect",
        &server.target(),
        "-CAfile",
        ca.to_str().unwrap(),
        "-verify_return_error",
        "-verify_ip",
        "127.0.0.1",
        "-quiet",
    ]);
    Foreign::spawn(command)
}

/// OI, then the OK that assigns an id.
fn foreign_identify(client: &mut Foreign, origin: ClientId) -> ClientId {
    client.send(&hdr(Kind::Oi, origin, 0, 0));
    let ok = client.expect_bytes(8);
    assert_eq!(
        ok[..4],
        hdr(Kind::Ok, S, 0, 0)[..4],
        "not an OK: {}",
        hex(&ok)
    );
    u16::from_be_bytes([ok[4], ok[5]])
}

#[test]
fn openssl_s_client_carries_a_protocol_session_over_tls() {
    let certs = Certs::new("tls-openssl");
    let server = tls_server(&certs, &[]);
    let mut ex = s_client(&server, &certs.path("ca.pem"));
    let ex_id = foreign_identify(&mut ex, 0);
    assert!(is_exhibitor_id(ex_id), "exhibitor got {ex_id}");
    let mut em = s_client(&server, &certs.path("ca.pem"));
    let em_id = foreign_identify(&mut em, ex_id);
    assert!(is_emitter_id(em_id), "emitter got {em_id}");
    let m = msg(em_id, ex_id, 1, "over TLS, é".as_bytes());
    em.send(&m);
    ex.expect_exact(&m);
    ex.send(&hdr(Kind::Ok, ex_id, em_id, 1));
    em.expect_exact(&hdr(Kind::Ok, S, em_id, 1));
    // A plain exhibitor on the same port takes a message from a TLS emitter.
    let mut plain = server.raw();
    let plain_id = plain.identify_exhibitor();
    let m = msg(em_id, plain_id, 2, b"to a plain exhibitor");
    em.send(&m);
    expect_exact(&mut plain, &m);
    plain.send(&hdr(Kind::Ok, plain_id, em_id, 2));
    em.expect_exact(&hdr(Kind::Ok, S, em_id, 2));
    expect_log(&server, &["disconnected", "transport=tls+tcp"], || drop(em));
}

#[test]
fn pythons_ssl_module_carries_a_protocol_session_over_tls() {
    let certs = Certs::new("tls-python");
    let server = tls_server(&certs, &[]);
    let mut ex = TlsRaw::connect(&server, &certs);
    let ex_id = ex.identify(0);
    // One thread: stdin to the socket, the socket to stdout.
    let script = r#"
import os, select, socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[3])
raw = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
s = ctx.wrap_socket(raw, server_hostname=sys.argv[1])
while True:
    ready = [s] if s.pending() else select.select([0, s], [], [])[0]
    if 0 in ready:
        data = os.read(0, 65536)
        if not data:
            break
        s.sendall(data)
    if s in ready:
        data = s.recv(65536)
        if not data:
            break
        os.write(1, data)
"#;
    let mut command = Command::new("python3");
    command.args([
        "-c",
        script,
        "localhost",
        &server.addr.port().to_string(),
        &certs.arg("ca.pem"),
    ]);
    let mut em = Foreign::spawn(command);
    let em_id = foreign_identify(&mut em, ex_id);
    let m = msg(em_id, ex_id, 1, b"from python");
    em.send(&m);
    ex.expect_exact(&m);
    ex.send(&hdr(Kind::Ok, ex_id, em_id, 1));
    em.expect_exact(&hdr(Kind::Ok, S, em_id, 1));
}

/// Waits for a server log line with every one of `needles`, after `cause`.
fn expect_log(server: &Server, needles: &[&str], cause: impl FnOnce()) -> String {
    cause();
    let what = format!("log line with {needles:?}");
    let wanted = |line: &str| needles.iter().all(|n| line.contains(n));
    server.proc.stderr.skip_until(&what, TIMEOUT, wanted).1
}

/// A ClientHello as rustls writes it for `certs`' CA.
fn client_hello(certs: &Certs) -> (ClientConnection, Vec<u8>) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = ClientConnection::new(certs.client_config(), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], 0x16, "a handshake record");
    (conn, hello)
}

#[test]
fn a_client_hello_split_at_every_byte_completes_the_handshake() {
    let certs = Certs::new("tls-split");
    let server = tls_server(&certs, &[]);
    let (conn, hello) = client_hello(&certs);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.set_nodelay(true).unwrap();
    for byte in &hello {
        tcp.write_all(std::slice::from_ref(byte)).unwrap();
    }
    let mut client = TlsRaw {
        stream: StreamOwned::new(conn, tcp),
    };
    let id = client.identify(0);
    assert!(is_exhibitor_id(id));
    assert!(!client.stream.conn.is_handshaking());
}

#[test]
fn garbage_after_a_0x16_byte_closes_that_connection_only() {
    let certs = Certs::new("tls-garbage");
    let server = tls_server(&certs, &[]);
    let mut rng = Rng(22);
    let mut bad = TcpStream::connect(server.addr).unwrap();
    let mut garbage = vec![0x16];
    garbage.extend(rng.bytes(300));
    bad.write_all(&garbage).unwrap();
    let answer = read_to_end_within(&mut bad, TIMEOUT);
    // At most a fatal alert record (type 21), then the close.
    if !answer.is_empty() {
        assert_eq!(answer[0], 0x15, "an alert: {}", hex(&answer));
        assert!(answer.len() <= 7 + 32, "{}", hex(&answer));
    }
    expect_log(&server, &["closing", "TLS:"], || {});
    let mut good = TlsRaw::connect(&server, &certs);
    assert!(is_exhibitor_id(good.identify(0)));
}

#[test]
fn a_handshake_that_stops_halfway_is_cut_by_the_handshake_timeout() {
    let certs = Certs::new("tls-halfway");
    let server = tls_server(&certs, &["--handshake-timeout", "0.3"]);
    let (_conn, hello) = client_hello(&certs);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(&hello[..hello.len() / 2]).unwrap();
    read_to_end_within(&mut tcp, TIMEOUT);
    expect_log(
        &server,
        &["disconnected", "transport=tls+unknown", "handshake timeout"],
        || {},
    );
}

#[test]
fn a_client_that_closes_during_the_handshake_leaves_the_server_serving() {
    let certs = Certs::new("tls-abandon");
    let server = tls_server(&certs, &[]);
    let (_conn, hello) = client_hello(&certs);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(&hello[..hello.len() / 3]).unwrap();
    expect_log(&server, &["disconnected", "peer closed"], || drop(tcp));
    // Whole, then closed before any answer is read.
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(&hello).unwrap();
    drop(tcp);
    let mut good = TlsRaw::connect(&server, &certs);
    assert!(is_exhibitor_id(good.identify(0)));
}

#[test]
fn a_plain_protocol_client_on_a_require_tls_server_gets_rule_1s_refusal() {
    let certs = Certs::new("tls-require-binary");
    let server = tls_server(&certs, &["--require-tls"]);
    let mut raw = server.raw();
    raw.send(&hdr(Kind::Oi, 0, 0, 7));
    expect_exact(&mut raw, &[0, 2, 0xff, 0xff, 0, 0, 0, 7]);
    raw.expect_closed();
    expect_log(&server, &["TLS is required"], || {});
    let mut good = TlsRaw::connect(&server, &certs);
    assert!(is_exhibitor_id(good.identify(0)));
}

/// A newcomer who forgets `tls://` is told to write it: the plain clients'
/// OI and the chat's HELLO get rule 1's ERRO, which alone would read as
/// full id ranges or a server without the identity extension.
#[test]
fn a_plain_client_on_a_require_tls_server_is_told_to_try_tls() {
    let certs = Certs::new("tls-require-clients");
    let server = tls_server(&certs, &["--require-tls"]);
    let addr = server.target();
    let mut ex = Proc::spawn("exhibitor", &[&addr]);
    assert_eq!(ex.wait().code(), Some(1));
    assert_eq!(
        ex.stderr.rest(),
        [format!(
            "exhibitor: the server refused the exhibitor: all exhibitor ids (4096-8191) are in \
             use, or the server admits signed-in clients only (server --auth: evchat chat \
             --user NAME signs in) or TLS ones only (try tls://{addr})"
        )]
    );
    let mut chat = Proc::spawn("evchat", &["chat", &addr, "--name", "alice"]);
    assert_eq!(chat.wait().code(), Some(1));
    assert_eq!(
        chat.stderr.rest(),
        [format!(
            "evchat chat: {addr} answered HELLO with ERRO: it does not speak the identity \
             extension, which --user and --name need, or it takes TLS only (try tls://{addr})"
        )]
    );
    // Over TLS, refused for want of a sign-in, the sentence leaves TLS out.
    let dir = TempDir::new("tls-require-clients-accounts");
    let accounts = crate::identity::accounts_file(&dir, &[("alice", Roles::ALL)]);
    let server = tls_server(&certs, &["--auth", &accounts]);
    let target = tls_target(&server);
    let mut ex = Proc::spawn("exhibitor", &[&target, "--ca", &certs.arg("ca.pem")]);
    assert_eq!(ex.wait().code(), Some(1));
    assert_eq!(
        ex.stderr.rest(),
        [
            "exhibitor: the server refused the exhibitor: all exhibitor ids (4096-8191) are in \
             use, or the server admits signed-in clients only (server --auth: evchat chat \
             --user NAME signs in)"
        ]
    );
}

#[test]
fn a_plain_http_request_on_a_require_tls_server_gets_a_403_that_says_why() {
    let certs = Certs::new("tls-require-http");
    let server = tls_server(&certs, &["--require-tls"]);
    let mut tcp = TcpStream::connect(server.addr).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost:5000\r\n\r\n")
        .unwrap();
    let answer = String::from_utf8(read_to_end_within(&mut tcp, TIMEOUT)).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        body,
        "this server requires TLS: open https://localhost:5000/ instead\n"
    );
}

#[test]
fn allow_plain_loopback_serves_plain_clients_from_this_machine() {
    let certs = Certs::new("tls-loopback");
    let server = tls_server(&certs, &["--require-tls", "--allow-plain-loopback"]);
    let mut raw = server.raw();
    assert!(is_exhibitor_id(raw.identify_exhibitor()));
}

#[test]
fn a_key_that_does_not_match_the_certificate_refuses_start() {
    let certs = Certs::new("tls-mismatch");
    let other = Certs::new("tls-mismatch-other");
    let mut server = Proc::spawn(
        "server",
        &[
            "0",
            "--tls-cert",
            &certs.arg("cert.pem"),
            "--tls-key",
            &other.arg("key.pem"),
        ],
    );
    assert!(!server.wait().success());
    assert_eq!(
        server.stderr.expect(),
        format!(
            "server: TLS: the key in {} does not match the certificate in {}",
            other.arg("key.pem"),
            certs.arg("cert.pem")
        )
    );
}

#[test]
fn auth_beyond_loopback_without_tls_refuses_start() {
    let mut server = Proc::spawn(
        "server",
        &["0", "--bind", "0.0.0.0", "--auth", "/nonexistent/accounts"],
    );
    assert!(!server.wait().success());
    assert_eq!(
        server.stderr.expect(),
        "server: --auth on 0.0.0.0 (beyond loopback) needs TLS: give --tls-cert and --tls-key, \
         or bind to 127.0.0.1 behind a TLS proxy; sign-in secrets would cross the network in \
         clear"
    );
}

#[test]
fn a_certificate_replaced_by_garbage_before_sighup_is_refused_and_the_old_one_kept() {
    let certs = Certs::new("tls-reload-garbage");
    let server = tls_server(&certs, &[]);
    std::fs::write(certs.path("cert.pem"), b"not a certificate\n").unwrap();
    expect_log(
        &server,
        &["the old one stays", "holds no PEM certificate"],
        || server.proc.signal(libc::SIGHUP),
    );
    let mut client = TlsRaw::connect(&server, &certs);
    assert!(is_exhibitor_id(client.identify(0)));
}

#[test]
fn sighup_serves_new_handshakes_with_the_new_certificate() {
    let certs = Certs::new("tls-reload-new");
    let server = tls_server(&certs, &[]);
    let mut before = TlsRaw::connect(&server, &certs);
    let before_id = before.identify(0);
    let fresh = Certs::new("tls-reload-fresh");
    for file in ["cert.pem", "key.pem"] {
        std::fs::copy(fresh.path(file), certs.path(file)).unwrap();
    }
    expect_log(&server, &["TLS certificate reloaded"], || {
        server.proc.signal(libc::SIGHUP)
    });
    let mut after = TlsRaw::connect(&server, &fresh);
    let em = after.identify(before_id);
    // The connection made before the reload goes on with its session.
    let m = msg(em, before_id, 1, b"after the reload");
    after.send(&m);
    before.expect_exact(&m);
}

#[test]
fn evchat_cert_writes_a_ca_a_chain_and_a_private_key() {
    let dir = TempDir::new("tls-evchat-cert");
    let out = dir.path().join("made");
    let out_arg = out.to_str().unwrap();
    let mut cert = Proc::spawn(
        "evchat",
        &["cert", "--out", out_arg, "localhost", "127.0.0.1"],
    );
    assert!(cert.wait().success());
    let printed = cert.stdout.rest().join("\n");
    assert!(
        printed.contains(&format!("--ca {out_arg}/ca.pem")),
        "{printed}"
    );
    assert!(printed.contains("update-ca-certificates"), "{printed}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let verify = Command::new(openssl())
        .args(["verify", "-CAfile"])
        .arg(out.join("ca.pem"))
        .arg(out.join("cert.pem"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout),
        format!("{}: OK\n", out.join("cert.pem").display())
    );
    // The pair it wrote serves.
    let server = Server::start(&[
        "--tls-cert",
        &format!("{out_arg}/cert.pem"),
        "--tls-key",
        &format!("{out_arg}/key.pem"),
    ]);
    let mut ex = s_client(&server, &out.join("ca.pem"));
    assert!(is_exhibitor_id(foreign_identify(&mut ex, 0)));
    // Never over files that exist.
    let mut again = Proc::spawn("evchat", &["cert", "--out", out_arg, "localhost"]);
    assert!(!again.wait().success());
    assert_eq!(
        again.stderr.expect(),
        format!("evchat cert: {out_arg}/ca.pem exists: remove it or choose another --out")
    );
}

// The files are written before the advice is printed: a reader that stops
// early (`evchat cert ... | head`) costs only the advice, not a panic.
#[test]
fn evchat_cert_into_a_closed_pipe_writes_its_files_and_succeeds() {
    let dir = TempDir::new("tls-evchat-cert-pipe");
    let out = dir.path().join("made");
    let mut cert = Command::new(bin("evchat"))
        .args(["cert", "--out", out.to_str().unwrap(), "localhost"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reading end closed before anything is written.
    drop(cert.stdout.take());
    let done = cert.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{:?}: {}",
        done.status,
        String::from_utf8_lossy(&done.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&done.stderr), "");
    for name in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(out.join(name).is_file(), "{name} written");
    }
}

// ---- the clients -----------------------------------------------------------------

fn tls_target(server: &Server) -> String {
    format!("tls://localhost:{}", server.addr.port())
}

#[test]
fn exhibitor_and_emitter_speak_tls_with_tls_urls_and_the_tls_flag() {
    let certs = Certs::new("tls-clients");
    let server = tls_server(&certs, &["--require-tls"]);
    let ca = certs.arg("ca.pem");
    let ex = Proc::spawn("exhibitor", &[&tls_target(&server), "--ca", &ca]);
    ex.stdout.expect_line("exhibitor 4096");
    // --tls with a plain address: the certificate names 127.0.0.1 too.
    let plain_addr = server.target();
    let mut em = Proc::spawn("emitter", &[&plain_addr, "--tls", "--ca", &ca]);
    em.stdout.expect_line("emitter 1");
    em.input("(4096) hello over TLS\n");
    ex.stdout.expect_line("Message from 1: hello over TLS");
    em.stdout.expect_line("delivered #1");
}

#[test]
fn evchat_chat_speaks_tls_and_sees_its_message_delivered() {
    let certs = Certs::new("tls-chat");
    let server = tls_server(&certs, &[]);
    let mut chat = Proc::spawn(
        "evchat",
        &["chat", &tls_target(&server), "--ca", &certs.arg("ca.pem")],
    );
    chat.stdout
        .expect_line("you are 1 (emitter) / 4096 (exhibitor)");
    chat.input("over TLS\n");
    chat.stdout.expect_line("you to all: over TLS ✓");
    chat.close_input();
    assert!(chat.wait().success());
}

/// What `evchat chat` says when it cannot connect to `server`: its
/// stderr, whole.
fn chat_refusal(server: &Server, extra: &[&str]) -> String {
    let target = tls_target(server);
    let mut args = vec!["chat", target.as_str()];
    args.extend_from_slice(extra);
    let mut chat = Proc::spawn("evchat", &args);
    assert!(!chat.wait().success());
    chat.stderr.rest().join("\n")
}

#[test]
fn an_expired_certificate_is_a_plain_sentence_in_evchat_chat() {
    let day = Duration::from_secs(86_400);
    let jan_2_2020 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_577_923_200);
    let certs = Certs::valid_between("tls-expired", &["localhost"], jan_2_2020 - day, jan_2_2020);
    let server = tls_server(&certs, &[]);
    assert_eq!(
        chat_refusal(&server, &["--ca", &certs.arg("ca.pem")]),
        format!(
            "evchat chat: cannot connect to {}: the server's certificate expired on 2020-01-02",
            tls_target(&server)
        )
    );
}

#[test]
fn a_certificate_for_another_name_is_a_plain_sentence_in_evchat_chat() {
    let certs = Certs::valid_between(
        "tls-wrong-name",
        &["chat.example"],
        SystemTime::now() - Duration::from_secs(3600),
        SystemTime::now() + Duration::from_secs(3600),
    );
    let server = tls_server(&certs, &[]);
    assert_eq!(
        chat_refusal(&server, &["--ca", &certs.arg("ca.pem")]),
        format!(
            "evchat chat: cannot connect to {}: the server's certificate is not for localhost \
             (it is for chat.example)",
            tls_target(&server)
        )
    );
}

#[test]
fn a_certificate_from_an_untrusted_ca_is_a_plain_sentence_in_evchat_chat() {
    let certs = Certs::new("tls-unknown-issuer");
    let other = Certs::new("tls-unknown-issuer-other");
    let server = tls_server(&certs, &[]);
    assert_eq!(
        chat_refusal(&server, &["--ca", &other.arg("ca.pem")]),
        format!(
            "evchat chat: cannot connect to {}: the server's certificate is signed by a CA this \
             client does not trust: give that CA with --ca FILE (evchat cert wrote ca.pem)",
            tls_target(&server)
        )
    );
}

#[test]
fn a_plain_server_met_with_tls_is_a_plain_sentence() {
    let server = Server::start(&[]);
    assert_eq!(
        chat_refusal(&server, &["--insecure"]),
        format!(
            "warning: --insecure: the server's certificate is not checked, so anyone between \
             here and the server can read and change everything\n\
             evchat chat: cannot connect to {}: the server does not speak TLS there (a plain \
             server? drop tls:// and --tls)",
            tls_target(&server)
        )
    );
}

#[test]
fn insecure_warns_on_every_start_and_connects() {
    let certs = Certs::new("tls-insecure");
    let server = tls_server(&certs, &[]);
    let ex = Proc::spawn("exhibitor", &[&tls_target(&server), "--insecure"]);
    assert_eq!(
        ex.stderr.expect(),
        "warning: --insecure: the server's certificate is not checked, so anyone between here \
         and the server can read and change everything"
    );
    ex.stdout.expect_line("exhibitor 4096");
}

impl TlsRaw {
    /// Reads to the end of the session, which must be a clean one
    /// (close_notify): what came before it.
    fn expect_clean_end(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + TIMEOUT;
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no end within {TIMEOUT:?}");
            self.stream.sock.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return all,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("not a clean end (close_notify) after {}: {e}", hex(&all)),
            }
        }
    }
}

#[test]
fn a_refused_tls_client_gets_its_erro_then_close_notify() {
    let certs = Certs::new("tls-erro-notify");
    let server = tls_server(&certs, &[]);
    let mut client = TlsRaw::connect(&server, &certs);
    client.send(&msg(1, 4096, 9, b"before OI"));
    assert_bytes(&hdr(Kind::Erro, S, 0, 9), &client.expect_clean_end());
}

#[test]
fn the_page_over_tls_is_answered_then_close_notify() {
    let certs = Certs::new("tls-http-notify");
    let server = tls_server(&certs, &[]);
    let mut client = TlsRaw::connect(&server, &certs);
    client.send(b"GET /nowhere HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let answer = String::from_utf8(client.expect_clean_end()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nnot found\n"), "{answer}");
}

/// `evchat stats` speaks TLS as the other clients do, and against a server
/// that requires it, a plain request is told so (not `--metrics-allow`).
#[test]
fn evchat_stats_reads_a_server_that_requires_tls() {
    let certs = Certs::new("tls-stats");
    let server = tls_server(&certs, &["--require-tls"]);
    let target = tls_target(&server);
    let (code, text, _) = evchat(&["stats", &target, "--ca", &certs.arg("ca.pem"), "--once"]);
    assert_eq!(code, 0, "{text}");
    let first = text.lines().next().unwrap_or_default();
    assert!(
        first.starts_with(&format!(
            "evchat {} at {target}, started ",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let plain = format!("localhost:{}", server.addr.port());
    let (code, _, err) = evchat(&["stats", &plain, "--once"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        format!(
            "evchat stats: {plain} answered 403: the server requires TLS: write tls://HOST:PORT \
             (and --ca FILE unless this system trusts its CA)\n"
        )
    );
}

/// `evchat check` over TLS against `server` (whose `--queue-wait` is 1),
/// trusting `certs`' CA, with `extra` flags: how it exited, and its lines.
fn check_over_tls(
    server: &Server,
    certs: &Certs,
    extra: &[&str],
) -> (std::process::ExitStatus, Vec<String>) {
    let target = tls_target(server);
    let ca = certs.arg("ca.pem");
    let mut args = vec!["check", &target, "--ca", &ca, "--queue-wait", "1"];
    args.extend_from_slice(extra);
    let mut check = Proc::spawn("evchat", &args);
    let status = check.wait();
    (status, check.stdout.rest())
}

/// The checker over TLS against a server with history: every check passes,
/// and again on a second run, which meets the first run's broadcasts
/// replayed (a long replay split across reads is `check.rs`'s).
#[test]
fn evchat_check_passes_every_check_over_tls_against_a_server_with_history() {
    let certs = Certs::new("tls-check-history");
    let dir = TempDir::new("tls-check-history-log");
    let server = tls_server(
        &certs,
        &["--require-tls", "--queue-wait", "1", "--history", dir.arg()],
    );
    for run in 1..=2 {
        let (status, lines) = check_over_tls(&server, &certs, &["--history"]);
        assert!(status.success(), "run {run}: {lines:#?}");
        assert_eq!(
            lines.last().map(String::as_str),
            Some("check: 56 passed, 0 failed, 0 notes, 0 skipped"),
            "run {run}"
        );
    }
}

#[test]
fn evchat_check_passes_every_check_over_tls() {
    let certs = Certs::new("tls-check");
    // The queue's give-up check runs only when told the server's wait.
    let server = tls_server(&certs, &["--require-tls", "--queue-wait", "1"]);
    let (status, lines) = check_over_tls(&server, &certs, &[]);
    assert!(status.success());
    let last = lines.last().unwrap();
    // The offline TELL's checks need a server with history, told --history.
    assert!(
        last.starts_with("check: ") && last.ends_with(" passed, 0 failed, 0 notes, 2 skipped"),
        "{lines:#?}"
    );
    for id in ["tell-waits", "tell-unknown"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("  skip  {id} "))),
            "{lines:#?}"
        );
    }
}

#[test]
fn auth_beyond_loopback_with_tls_refuses_plain_connections_by_default() {
    let certs = Certs::new("tls-auth-implied");
    let accounts = certs.path("accounts");
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&accounts)
            .unwrap();
    }
    let server = Proc::spawn(
        "server",
        &[
            "0",
            "--bind",
            "0.0.0.0",
            "--auth",
            accounts.to_str().unwrap(),
            "--tls-cert",
            &certs.arg("cert.pem"),
            "--tls-key",
            &certs.arg("key.pem"),
        ],
    );
    let port = listening_addr(&server.stdout).port();
    let mut raw = Raw::connect(([127, 0, 0, 1], port).into());
    raw.send(&hdr(Kind::Oi, 0, 0, 3));
    expect_exact(&mut raw, &[0, 2, 0xff, 0xff, 0, 0, 0, 3]);
    raw.expect_closed();
    // --auth alone refuses a plain OI the same way: the log says which rule.
    let what = "the refusal's log line";
    let line = server
        .stderr
        .skip_until(what, TIMEOUT, |line| line.contains("refused"))
        .1;
    assert!(line.contains("TLS is required (--require-tls)"), "{line}");
}

#[test]
fn a_tls_client_that_never_reads_is_cut_off_as_a_slow_consumer() {
    let certs = Certs::new("tls-slow");
    let server = tls_server(&certs, &["--max-queue", "65536", "--max-inflight", "65535"]);
    let mut slow = TlsRaw::over(connect_with_small_rcvbuf(server.addr, 4096), &certs);
    let slow_id = slow.identify(0);
    let mut em = server.raw();
    let em_id = em.identify_emitter(slow_id);
    let text = [b'x'; 1000];
    let mut frames = Vec::new();
    for seq in 1..=3000u16 {
        frames.extend(msg(em_id, slow_id, seq, &text));
    }
    // The server reads the emitter while the exhibitor's queue grows, and
    // cuts the exhibitor off well before the 3 MB are through.
    let writer = std::thread::spawn(move || {
        let _ = em.stream.write_all(&frames);
        em
    });
    let line = expect_log(&server, &["slow consumer"], || {});
    assert!(line.contains("output queue full"), "{line}");
    let _em = writer.join().unwrap();
    let mut other = TlsRaw::connect(&server, &certs);
    assert!(is_exhibitor_id(other.identify(0)));
}

// ---- handshakes on worker threads (--tls-workers) --------------------------

/// `/stats` as JSON, asked over a plain connection.
fn stats(server: &Server) -> serde_json::Value {
    let request = b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = http_exchange(server.addr, request);
    serde_json::from_slice(&answer.body).expect("/stats is JSON")
}

/// Connections open now, by the server's own count: opened less closed,
/// less the `/stats` request asking.
fn connections_open(server: &Server) -> u64 {
    let stats = stats(server);
    let totals = &stats["totals"];
    let closed: u64 = totals["connections_closed"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    totals["connections_opened"].as_u64().unwrap() - closed - 1
}

#[test]
fn fifty_concurrent_handshakes_complete_and_every_session_carries_a_message() {
    let certs = Certs::new("tls-fifty");
    let server = tls_server(&certs, &[]);
    let start = std::sync::Barrier::new(50);
    // Every handshake at once: 25 exhibitors identify as theirs completes,
    // 25 emitters complete theirs and wait for their exhibitor's id.
    let (exhibitors, emitters) = std::thread::scope(|scope| {
        let connect = |exhibitor: bool| {
            let (certs, start, addr) = (&certs, &start, server.addr);
            scope.spawn(move || {
                start.wait();
                let mut client = TlsRaw::connect_to(addr, certs);
                if exhibitor {
                    let id = client.identify(0);
                    (client, id)
                } else {
                    let TlsRaw { stream } = &mut client;
                    stream.conn.complete_io(&mut stream.sock).unwrap();
                    (client, 0)
                }
            })
        };
        let exhibitors: Vec<_> = (0..25).map(|_| connect(true)).collect();
        let emitters: Vec<_> = (0..25).map(|_| connect(false)).collect();
        let join = |threads: Vec<std::thread::ScopedJoinHandle<'_, (TlsRaw, ClientId)>>| {
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect::<Vec<_>>()
        };
        (join(exhibitors), join(emitters))
    });
    for ((mut ex, ex_id), (mut em, _)) in exhibitors.into_iter().zip(emitters) {
        assert!(is_exhibitor_id(ex_id));
        let em_id = em.identify(ex_id);
        let m = msg(em_id, ex_id, 1, b"after fifty handshakes");
        em.send(&m);
        ex.expect_exact(&m);
        ex.send(&hdr(Kind::Ok, ex_id, em_id, 1));
        em.expect_exact(&hdr(Kind::Ok, S, em_id, 1));
    }
}

#[test]
fn connections_that_close_during_their_handshake_leave_no_connection_behind() {
    let certs = Certs::new("tls-gone");
    let server = tls_server(&certs, &[]);
    let (_conn, hello) = client_hello(&certs);
    // Whole ClientHellos (their step goes to a worker, and the peer is
    // gone when it comes back) and halves (the step waits for more).
    for n in 0..20 {
        let mut tcp = TcpStream::connect(server.addr).unwrap();
        let sent = if n % 2 == 0 {
            hello.len()
        } else {
            hello.len() / 2
        };
        tcp.write_all(&hello[..sent]).unwrap();
    }
    wait_until("every connection closed", || connections_open(&server) == 0);
    let stats = stats(&server);
    assert_eq!(stats["clients_total"], 0, "{stats}");
    let mut good = TlsRaw::connect(&server, &certs);
    assert!(is_exhibitor_id(good.identify(0)));
}

#[test]
fn tls_workers_zero_runs_handshakes_on_the_loop_and_serves_them() {
    let certs = Certs::new("tls-workers0");
    let server = tls_server(&certs, &["--tls-workers", "0"]);
    expect_log(&server, &["TLS on the same port", "workers=0"], || {});
    let mut ex = TlsRaw::connect(&server, &certs);
    let ex_id = ex.identify(0);
    let mut em = TlsRaw::connect(&server, &certs);
    let em_id = em.identify(ex_id);
    let m = msg(em_id, ex_id, 1, b"handshaken on the loop");
    em.send(&m);
    ex.expect_exact(&m);
}

#[test]
fn tls_workers_out_of_range_or_without_tls_is_refused_with_the_reason() {
    let certs = Certs::new("tls-workers-bad");
    let mut args = certs.server_args();
    args.extend(["--tls-workers".to_string(), "65".to_string()]);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.insert(0, "0");
    let mut server = Proc::spawn("server", &args);
    assert_eq!(server.wait().code(), Some(2));
    assert_eq!(
        server.stderr.expect(),
        "error: invalid value '65' for '--tls-workers <N>': 65 is not in 0..=64"
    );
    let mut server = Proc::spawn("server", &["0", "--tls-workers", "2"]);
    assert_eq!(server.wait().code(), Some(2));
    assert_eq!(
        server.stderr.expect(),
        "error: the following required arguments were not provided:"
    );
    assert_eq!(server.stderr.expect(), "  --tls-key <FILE>");
    assert_eq!(server.stderr.expect(), "  --tls-cert <FILE>");
}
