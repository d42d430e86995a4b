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
        let config = ServerConfig::builder_with_provider(provider())
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
        Ok(TlsAcceptor {
            config: Arc::new(config),
        })
    }
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
