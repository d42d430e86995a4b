//! The server's TLS identity: a certificate chain and its private key read
//! from PEM files (`--tls-cert`, `--tls-key`), checked to belong together,
//! and the rustls configuration every new TLS connection starts from. A
//! reload (SIGHUP) builds a new one; connections already open keep theirs.

use super::{provider, read_pem_file};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What new TLS connections are served with: the certificate chain, the
/// key and the protocol settings, shared by every connection that starts
/// while it is current.
#[derive(Clone)]
pub struct TlsAcceptor {
    pub(super) config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Nothing of the key is ever shown.
        f.write_str("TlsAcceptor")
    }
}

/// Why a certificate and key cannot serve, in a sentence for the operator.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is not valid PEM: {why}", path.display())]
    BadPem { path: PathBuf, why: String },
    #[error("{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {} or the key in {} cannot be used: {why}", cert.display(), key.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        why: String,
    },
}

impl TlsAcceptor {
    /// Reads the chain (the server's certificate first) and the key, and
    /// checks that the key is the certificate's.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsAcceptor, IdentityError> {
        let chain = read_chain(cert)?;
        let private_key = read_key(key)?;
        let mut config = ServerConfig::builder_with_provider(server_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable(cert, key, e))?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => IdentityError::Mismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                },
                other => unusable(cert, key, other),
            })?;
        // The server's order of suites, not the client's: rustls' clients
        // and OpenSSL's ask for AES-256 first (see `server_provider`).
        config.ignore_client_order = true;
        Ok(TlsAcceptor {
            config: Arc::new(config),
        })
    }
}

/// The crypto provider with the server's order of cipher suites: AES-128-GCM,
/// then AES-256-GCM, then ChaCha20-Poly1305, in TLS 1.3 and then in 1.2.
///
/// Every record the server sends is sealed, so the bulk cipher is most of
/// what TLS costs a delivery: AES-128 runs 10 rounds a block against
/// AES-256's 14 (on this machine, `openssl speed` with VAES: 4.4 GB/s
/// against 4.0, ChaCha20-Poly1305 3.8; under callgrind, with AES-NI, the
/// sealing instructions fall by about a quarter). The security of the
/// session does not fall with it: the X25519 exchange and the P-256
/// signature (`evchat cert`'s) stand at about 128 bits, which AES-128
/// matches, and it is the suite browsers and Go (so nats-server) pick
/// first. Nothing is
/// dropped: a client that offers only AES-256 or ChaCha20 gets it.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as S;
    let mut provider = (*provider()).clone();
    provider.cipher_suites.sort_by_key(|suite| {
        let bulk = match suite.suite() {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        };
        (suite.tls13().is_none(), bulk)
    });
    Arc::new(provider)
}

fn unusable(cert: &Path, key: &Path, why: impl std::fmt::Display) -> IdentityError {
    IdentityError::Unusable {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        why: why.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    read_pem_file(path).map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn bad_pem(path: &Path, error: rustls_pki_types::pem::Error) -> IdentityError {
    IdentityError::BadPem {
        path: path.to_path_buf(),
        why: error.to_string(),
    }
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
pub(super) fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let bytes = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if chain.is_empty() {
        return Err(IdentityError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => IdentityError::NoKey {
            path: path.to_path_buf(),
        },
        other => bad_pem(path, other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::crypto::ring::cipher_suite as suites;
    use rustls::{CipherSuite, ClientConfig, ClientConnection, RootCertStore, ServerConnection};
    use std::time::{Duration, SystemTime};

    /// The server's identity, from a throwaway CA, and that CA as a root.
    fn identity() -> (TlsAcceptor, RootCertStore) {
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let made =
            super::super::generate::throwaway(&["localhost".into()], now - day, now + day).unwrap();
        // One directory per call: the tests run in parallel in one process.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("evchat-identity-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), &made.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &made.key_pem).unwrap();
        let acceptor = TlsAcceptor::load(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(made.ca_pem.as_bytes()).unwrap())
            .unwrap();
        (acceptor, roots)
    }

    /// The suite a TLS 1.3 handshake settles on when the client offers
    /// `offered`, in its order of preference.
    fn negotiated(offered: &[rustls::SupportedCipherSuite]) -> CipherSuite {
        let (acceptor, roots) = identity();
        let mut provider = (*super::super::provider()).clone();
        provider.cipher_suites = offered.to_vec();
        let client = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut server = ServerConnection::new(acceptor.config.clone()).unwrap();
        while client.is_handshaking() || server.is_handshaking() {
            let mut records = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut records).unwrap();
            }
            server.read_tls(&mut &records[..]).unwrap();
            server.process_new_packets().unwrap();
            let mut records = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut records).unwrap();
            }
            client.read_tls(&mut &records[..]).unwrap();
            client.process_new_packets().unwrap();
        }
        server.negotiated_cipher_suite().unwrap().suite()
    }

    #[test]
    fn the_server_picks_aes_128_gcm_over_a_clients_first_choice_of_aes_256() {
        // rustls' and OpenSSL's clients put AES-256-GCM first.
        let offered = [
            suites::TLS13_AES_256_GCM_SHA384,
            suites::TLS13_AES_128_GCM_SHA256,
            suites::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        assert_eq!(negotiated(&offered), CipherSuite::TLS13_AES_128_GCM_SHA256);
    }

    #[test]
    fn a_client_without_aes_128_still_gets_what_it_offers() {
        assert_eq!(
            negotiated(&[suites::TLS13_AES_256_GCM_SHA384]),
            CipherSuite::TLS13_AES_256_GCM_SHA384
        );
        assert_eq!(
            negotiated(&[suites::TLS13_CHACHA20_POLY1305_SHA256]),
            CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
    }
}
