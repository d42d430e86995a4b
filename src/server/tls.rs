//! TLS in the event loop: the identity new connections are served with
//! (`--tls-cert`, `--tls-key`), its reload on SIGHUP, and which peers may
//! speak without it (`--require-tls`, `--allow-plain-loopback`). Refusing a
//! plain connection is here too: the binary protocol's first frame gets
//! rule 1's refusal, ERRO(65535, 0, seq); an HTTP request a 403 that says
//! why. The connections themselves do the TLS (see `connection.rs`).

use super::Server;
use super::wire::Departure;
use crate::connection::{Accepts, PlainRefusal};
use crate::proto::{Frame, Kind, SERVER_ID};
use crate::router::ConnId;
use crate::tls::TlsAcceptor;
use std::net::SocketAddr;
use std::path::PathBuf;
use tracing::{info, warn};

/// TLS on the server's port (`server --tls-cert FILE --tls-key FILE`).
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The certificate chain, PEM, the server's own certificate first.
    pub cert: PathBuf,
    /// The certificate's private key, PEM.
    pub key: PathBuf,
    /// Unencrypted connections are refused (`--require-tls`).
    pub require: bool,
    /// With `require`: unencrypted connections from loopback are still
    /// served (`--allow-plain-loopback`), for a TLS proxy on this machine
    /// or local tools.
    pub allow_plain_loopback: bool,
    /// Threads that run handshakes off the event loop (`--tls-workers`);
    /// 0: the loop runs them itself.
    pub workers: usize,
    /// Handshake steps the workers take at once; a connection past them
    /// waits in line, its input paused (see `server/handshakes.rs`).
    pub queue: usize,
}

impl TlsConfig {
    /// TLS with this certificate and key; plain connections still served.
    pub fn new(cert: PathBuf, key: PathBuf) -> TlsConfig {
        TlsConfig {
            cert,
            key,
            require: false,
            allow_plain_loopback: false,
            workers: 1,
            queue: 64,
        }
    }

    /// Reads the certificate and key.
    pub(super) fn load(&self) -> Result<TlsAcceptor, crate::tls::IdentityError> {
        TlsAcceptor::load(&self.cert, &self.key)
    }

    /// Whether a plain connection from `peer` is refused.
    fn refuses_plain_from(&self, peer: SocketAddr) -> bool {
        self.require && !(self.allow_plain_loopback && peer.ip().to_canonical().is_loopback())
    }
}

impl Server {
    /// What a connection from `peer` may speak.
    pub(super) fn accepts_from(&self, peer: SocketAddr) -> Accepts {
        let mut accepts = self.accepts.clone();
        if let Some(tls) = &self.config.tls {
            accepts.plain_refused = tls.refuses_plain_from(peer);
        }
        accepts
    }

    /// SIGHUP: reads the certificate and key again; new handshakes use
    /// them, connections already open keep theirs. A pair that does not
    /// load is refused with a log line, and the old one kept.
    pub(super) fn reload_tls(&mut self) {
        let Some(config) = &self.config.tls else {
            return;
        };
        match config.load() {
            Ok(acceptor) => {
                self.accepts.tls = Some(acceptor);
                info!(cert = %config.cert.display(), "SIGHUP: TLS certificate reloaded");
            }
            Err(e) => warn!(
                error = %e,
                "SIGHUP: the TLS certificate or key is refused; the old one stays"
            ),
        }
    }

    /// Refuses `conn`, unencrypted on a server that requires TLS, once
    /// its first frame header or request head is in. Returns false once it
    /// is closing.
    pub(super) fn refuse_plain(&mut self, conn: ConnId) -> bool {
        let Some(slot) = self.wire.conns.get_mut(conn) else {
            return false;
        };
        let peer = slot.peer;
        let departure = match slot.conn.refuse_plain() {
            PlainRefusal::Incomplete => return true,
            PlainRefusal::Binary { seq } => {
                warn!(conn, %peer, "plain connection refused: TLS is required (--require-tls)");
                self.wire
                    .queue_for(conn, &Frame::bare(Kind::Erro, SERVER_ID, 0, seq));
                Departure::TlsRequired
            }
            PlainRefusal::Http => {
                warn!(conn, %peer, "plain HTTP request refused: TLS is required (--require-tls)");
                Departure::Served(403)
            }
            PlainRefusal::BadHttp(error) => {
                warn!(conn, %peer, %error, "HTTP request refused");
                Departure::BadRequest(error)
            }
        };
        self.wire.drop_conn(conn, departure);
        self.settle_dropped();
        false
    }
}
