//! TLS as the clients see it: where to connect (`tls://HOST:PORT`, or a
//! plain address with `--tls`), which CAs to trust (`--ca FILE`, else the
//! system's), `--insecure` (no check, a warning on every start), the
//! handshake over a blocking socket, and certificate errors as sentences a
//! user can act on. The connected stream is [`ClientStream`].

use super::stream::ClientStream;
use super::{provider, read_pem_file};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct};
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::fmt;
use std::io;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The clients' TLS flags, the same in every client.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// Speak TLS to a plain HOST:PORT (the same as tls://HOST:PORT)
    #[arg(long)]
    pub tls: bool,
    /// With TLS: trust this CA (PEM; evchat cert writes one) instead of
    /// the system's
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// With TLS: do not check the server's certificate (anyone on the way
    /// can read and change everything; a warning says so on every start)
    #[arg(long, conflicts_with = "ca")]
    pub insecure: bool,
}

/// The warning `--insecure` prints on every start.
pub const INSECURE_WARNING: &str = "warning: --insecure: the server's certificate is not \
     checked, so anyone between here and the server can read and change everything";

/// Where a client connects, and how: `HOST:PORT` as typed, with TLS or
/// without. Shown as the user would type it (`tls://` when encrypted).
#[derive(Clone)]
pub struct Endpoint {
    /// `HOST:PORT`, without the scheme.
    pub addr: String,
    tls: Option<TlsClient>,
}

#[derive(Clone)]
struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls.is_some() {
            f.write_str("tls://")?;
        }
        f.write_str(&self.addr)
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a client cannot set up TLS before connecting.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("--ca {}: {reason}", path.display())]
    Ca { path: PathBuf, reason: String },
    #[error("--ca and --insecure need TLS: write tls://{0} or add --tls")]
    NotTls(String),
    #[error("no trusted CA found on this system: give the server's CA with --ca FILE")]
    NoSystemRoots,
    #[error("'{0}' is not HOST:PORT (a host name or address, then a port: 127.0.0.1:5000)")]
    BadAddress(String),
    /// The page's address (`http://`, `https://`) or its WebSocket's, which
    /// a newcomer copies from the browser.
    #[error("'{0}' is a web address, for a browser; give HOST:PORT, or tls://HOST:PORT for TLS")]
    WebAddress(String),
    #[error("'{0}' has a scheme other than tls://; give HOST:PORT, or tls://HOST:PORT for TLS")]
    Scheme(String),
}

impl EndpointError {
    /// Whether the command line is at fault (exit status 2), not a file or
    /// the system's CAs.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            EndpointError::NotTls(_)
                | EndpointError::BadAddress(_)
                | EndpointError::WebAddress(_)
                | EndpointError::Scheme(_)
        )
    }
}

impl Endpoint {
    /// The server argument (`HOST:PORT` or `tls://HOST:PORT`) with the TLS
    /// flags. Prints [`INSECURE_WARNING`] to stderr with `--insecure`.
    pub fn parse(server: &str, args: &TlsArgs) -> Result<Endpoint, EndpointError> {
        let (addr, tls) = match server.split_once("://") {
            Some(("tls", addr)) => (addr, true),
            Some(("http" | "https" | "ws" | "wss", _)) => {
                return Err(EndpointError::WebAddress(server.to_string()));
            }
            Some(_) => return Err(EndpointError::Scheme(server.to_string())),
            None => (server, args.tls),
        };
        let addr = addr.trim_end_matches('/').to_string();
        if !tls {
            if args.ca.is_some() || args.insecure {
                return Err(EndpointError::NotTls(addr));
            }
            host_and_port(&addr)?;
            return Ok(Endpoint { addr, tls: None });
        }
        let name = server_name(&addr)?;
        let config = if args.insecure {
            eprintln!("{INSECURE_WARNING}");
            insecure_config()
        } else {
            checking_config(roots(args.ca.as_ref())?)
        };
        Ok(Endpoint {
            addr,
            tls: Some(TlsClient { config, name }),
        })
    }

    /// A plain target (tests, tools that speak TLS elsewhere).
    pub fn plain(addr: &str) -> Endpoint {
        Endpoint {
            addr: addr.to_string(),
            tls: None,
        }
    }

    /// Connects, and with TLS finishes the handshake within `timeout`; a
    /// certificate error is returned as a sentence ([`ConnectError`]).
    pub fn connect(&self, timeout: Duration) -> Result<ClientStream, ConnectError> {
        let socket = TcpStream::connect(&self.addr).map_err(ConnectError::Io)?;
        let _ = socket.set_nodelay(true);
        self.handshake(socket, timeout)
    }

    /// With TLS, the handshake over a socket already connected (within
    /// `timeout`); without, the socket as it is.
    pub fn handshake(
        &self,
        socket: TcpStream,
        timeout: Duration,
    ) -> Result<ClientStream, ConnectError> {
        let Some(tls) = &self.tls else {
            return Ok(ClientStream::plain(socket));
        };
        let mut conn = ClientConnection::new(tls.config.clone(), tls.name.clone())
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        socket
            .set_read_timeout(Some(timeout))
            .map_err(ConnectError::Io)?;
        let mut io_socket = &socket;
        while conn.is_handshaking() {
            if let Err(e) = conn.complete_io(&mut io_socket) {
                return Err(handshake_error(e, &tls.name));
            }
        }
        socket.set_read_timeout(None).map_err(ConnectError::Io)?;
        Ok(ClientStream::tls(socket, conn))
    }

    /// Whether this endpoint speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The socket: refused, unreachable, timed out.
    #[error("{0}")]
    Io(io::Error),
    /// The TLS handshake, in a sentence.
    #[error("{0}")]
    Tls(String),
}

/// The host part of `HOST:PORT` (`[v6]:PORT` too), as the certificate
/// must name it.
fn server_name(addr: &str) -> Result<ServerName<'static>, EndpointError> {
    let host = host_and_port(addr)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| EndpointError::BadAddress(addr.to_string()))
}

/// The host part of `HOST:PORT`, once the port is a port number: a
/// missing or mistyped port is a usage error before any connection.
fn host_and_port(addr: &str) -> Result<&str, EndpointError> {
    let bad = || EndpointError::BadAddress(addr.to_string());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok(host)
}

/// The CAs trusted: the file given, else the system's.
fn roots(ca: Option<&PathBuf>) -> Result<RootCertStore, EndpointError> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca {
        let ca_error = |reason: String| EndpointError::Ca {
            path: path.clone(),
            reason,
        };
        let bytes = read_pem_file(path).map_err(|e| ca_error(e.to_string()))?;
        for cert in CertificateDer::pem_slice_iter(&bytes) {
            let cert = cert.map_err(|e| ca_error(format!("not valid PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ca_error(format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ca_error(
                "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        return Ok(roots);
    }
    // Certificates the store holds that rustls cannot use are skipped, as
    // every other program on the system skips them.
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(EndpointError::NoSystemRoots);
    }
    Ok(roots)
}

fn checking_config(roots: RootCertStore) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn insecure_config() -> Arc<ClientConfig> {
    let verifier = Arc::new(NoCheck(provider()));
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    )
}

/// `--insecure`: any certificate passes; the handshake's signatures are
/// still checked, so the session is at least with the certificate's key.
#[derive(Debug)]
struct NoCheck(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A failed handshake in words a user can act on.
fn handshake_error(error: io::Error, name: &ServerName<'_>) -> ConnectError {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ConnectError::Tls("no TLS answer in time — is the server serving TLS?".into())
            }
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => ConnectError::Tls(
                "the server closed the connection during the TLS handshake — does it serve \
                 TLS (server --tls-cert)?"
                    .into(),
            ),
            _ => ConnectError::Io(error),
        };
    };
    ConnectError::Tls(match tls {
        rustls::Error::InvalidCertificate(cert) => certificate_sentence(cert, name),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server does not speak TLS there (a plain server? drop tls:// and --tls)".into()
        }
        other => format!("the TLS handshake failed: {other}"),
    })
}

fn certificate_sentence(error: &CertificateError, name: &ServerName<'_>) -> String {
    let host = name.to_str();
    match error {
        CertificateError::Expired => "the server's certificate has expired".into(),
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the server's certificate expired on {}",
            day(not_after.as_secs())
        ),
        CertificateError::NotValidYet => "the server's certificate is not valid yet \
             (is this machine's clock right?)"
            .into(),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the server's certificate is not valid before {} (is this machine's clock right?)",
            day(not_before.as_secs())
        ),
        CertificateError::NotValidForName => {
            format!("the server's certificate is not for {host}")
        }
        CertificateError::NotValidForNameContext { presented, .. } => format!(
            "the server's certificate is not for {host} (it is for {})",
            presented
                .iter()
                .map(|name| bare_name(name))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        CertificateError::UnknownIssuer => "the server's certificate is signed by a CA this \
             client does not trust: give that CA with --ca FILE (evchat cert wrote ca.pem)"
            .into(),
        other => format!("the server's certificate is refused: {other:?}"),
    }
}

/// A presented name without the form rustls shows it in
/// (`DnsName("chat.example")`: `chat.example`).
fn bare_name(presented: &str) -> &str {
    match presented.split_once('(') {
        Some((_, inner)) => inner.trim_end_matches(')').trim_matches('"'),
        None => presented,
    }
}

/// A UTC day, `YYYY-MM-DD`, from seconds since 1970 (civil from days,
/// H. Hinnant's algorithm).
fn day(secs: u64) -> String {
    let days = (secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_written_as_utc_dates() {
        assert_eq!(day(0), "1970-01-01");
        assert_eq!(day(951_782_400), "2000-02-29");
        assert_eq!(day(1_796_428_799), "2026-12-04");
    }

    #[test]
    fn presented_names_are_shown_bare() {
        assert_eq!(bare_name("DnsName(\"chat.example\")"), "chat.example");
        assert_eq!(bare_name("IpAddress(127.0.0.1)"), "127.0.0.1");
        assert_eq!(bare_name("chat.example"), "chat.example");
    }

    #[test]
    fn the_server_name_is_the_host_part() {
        let name = |addr| server_name(addr).map(|n| n.to_str().into_owned());
        assert_eq!(name("localhost:5000").unwrap(), "localhost");
        assert_eq!(name("127.0.0.1:5000").unwrap(), "127.0.0.1");
        assert_eq!(name("[::1]:5000").unwrap(), "::1");
        assert!(name("localhost").is_err());
        assert!(name("localhost:http").is_err());
    }

    #[test]
    fn ca_and_insecure_without_tls_are_refused() {
        let args = TlsArgs {
            insecure: true,
            ..TlsArgs::default()
        };
        let e = Endpoint::parse("localhost:5000", &args).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--ca and --insecure need TLS: write tls://localhost:5000 or add --tls"
        );
    }
}
